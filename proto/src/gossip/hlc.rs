//! Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", OPODIS 2014).
//!
//! A timestamp is wall-clock milliseconds in the upper 48 bits and a logical counter in
//! the lower 16, so it orders like a `u64`, stays close to wall time, and still orders
//! causally related writes when clocks are skewed: a node that has seen a timestamp
//! never issues a smaller one.

use std::fmt;

/// One HLC timestamp. `Hlc(0)` is "never".
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc(pub u64);

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

/// How far ahead of our wall clock a remote timestamp may pull our clock. A peer with a
/// clock years ahead would otherwise drag every later write of ours with it.
pub(crate) const MAX_DRIFT_MS: u64 = 60_000;

impl Hlc {
    pub fn new(physical_ms: u64, logical: u16) -> Self {
        Hlc((physical_ms << LOGICAL_BITS) | u64::from(logical))
    }

    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    pub fn logical(self) -> u16 {
        (self.0 & LOGICAL_MASK) as u16
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical_ms(), self.logical())
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The local clock: the last timestamp issued or seen.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A timestamp for a local event at wall time `wall_ms`, greater than every
    /// timestamp issued or observed before.
    pub(crate) fn tick(&mut self, wall_ms: u64) -> Hlc {
        let wall = Hlc::new(wall_ms, 0);
        // The logical counter overflowing into the physical part is still monotonic.
        self.last = if wall > self.last {
            wall
        } else {
            Hlc(self.last.0 + 1)
        };
        self.last
    }

    /// A timestamp for a local event at `wall_ms` that is also above `floor` (a write
    /// already held for the key about to be written): the local write must win. `None`
    /// iff `floor` is the last timestamp there is.
    pub(crate) fn tick_after(&mut self, wall_ms: u64, floor: Hlc) -> Option<Hlc> {
        let t = self.tick(wall_ms);
        if t > floor {
            return Some(t);
        }
        self.last = Hlc(floor.0.checked_add(1)?);
        Some(self.last)
    }

    /// Merges a remote timestamp, unless it is more than [`MAX_DRIFT_MS`] ahead of our
    /// wall clock (then only the object carries it; our clock does not follow).
    pub(crate) fn observe(&mut self, remote: Hlc, wall_ms: u64) {
        if remote.physical_ms() > wall_ms.saturating_add(MAX_DRIFT_MS) {
            return;
        }
        if remote > self.last {
            self.last = remote;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_follows_wall_clock_and_stays_monotonic() {
        let mut c = HlcClock::default();
        let a = c.tick(1000);
        assert_eq!(a, Hlc::new(1000, 0));
        let b = c.tick(1000);
        assert_eq!(b, Hlc::new(1000, 1));
        // Wall clock steps back: still increasing.
        let d = c.tick(900);
        assert!(d > b);
        let e = c.tick(2000);
        assert_eq!(e, Hlc::new(2000, 0));
    }

    #[test]
    fn observe_orders_after_remote_but_bounds_drift() {
        let mut c = HlcClock::default();
        c.observe(Hlc::new(5000, 3), 1000);
        assert!(c.tick(1000) > Hlc::new(5000, 3));
        let mut c = HlcClock::default();
        c.observe(Hlc::new(1000 + MAX_DRIFT_MS + 1, 0), 1000);
        assert_eq!(c.tick(1000), Hlc::new(1000, 0));
    }

    #[test]
    fn tick_after_passes_the_floor() {
        let mut c = HlcClock::default();
        assert_eq!(
            c.tick_after(1000, Hlc::new(5000, 7)),
            Some(Hlc::new(5000, 8))
        );
        assert!(c.tick(1000) > Hlc::new(5000, 8));
        assert_eq!(
            c.tick_after(9000, Hlc::new(5000, 0)),
            Some(Hlc::new(9000, 0))
        );
        assert_eq!(c.tick_after(1, Hlc(u64::MAX)), None);
    }
}
