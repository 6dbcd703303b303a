//! Anti-replay: a sliding window of sequence numbers per sender, as in IPsec (RFC 4303
//! §3.4.3) and WireGuard. Every sealed envelope carries its sender's boot generation and a
//! per-boot sequence number; a copy replayed by an attacker (or duplicated by the network)
//! is dropped, and so is anything from an earlier boot once a later one was heard.

use std::cmp::Ordering;

/// How far behind the highest sequence number a late packet is still accepted.
pub(crate) const WINDOW: u64 = 64;

/// The verdict on one envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Fresh,
    /// Seen before, or older than the window.
    Replayed,
    /// From an earlier boot of the sender than one already heard.
    StaleGeneration,
}

/// One sender's window on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplayWindow {
    generation: u64,
    /// Highest sequence number accepted.
    top: u64,
    /// Bit `i` set: `top - i` was accepted.
    bitmap: u64,
}

impl ReplayWindow {
    /// The window after accepting the first envelope `(generation, seq)`.
    pub(crate) fn new(generation: u64, seq: u64) -> Self {
        ReplayWindow {
            generation,
            top: seq,
            bitmap: 1,
        }
    }

    /// Checks `(generation, seq)` without recording it (the caller records it only once
    /// the envelope turned out well-formed).
    pub(crate) fn check(&self, generation: u64, seq: u64) -> Verdict {
        match generation.cmp(&self.generation) {
            Ordering::Less => Verdict::StaleGeneration,
            Ordering::Greater => Verdict::Fresh,
            Ordering::Equal if seq > self.top => Verdict::Fresh,
            Ordering::Equal => {
                let behind = self.top - seq;
                if behind >= WINDOW || self.bitmap & (1 << behind) != 0 {
                    Verdict::Replayed
                } else {
                    Verdict::Fresh
                }
            }
        }
    }

    /// Records a `Fresh` envelope. A newer generation resets the window.
    pub(crate) fn accept(&mut self, generation: u64, seq: u64) {
        if generation > self.generation {
            *self = ReplayWindow::new(generation, seq);
        } else if seq > self.top {
            let shift = seq - self.top;
            self.bitmap = if shift >= WINDOW {
                0
            } else {
                self.bitmap << shift
            };
            self.bitmap |= 1;
            self.top = seq;
        } else {
            self.bitmap |= 1 << (self.top - seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn duplicates_and_too_old_are_replays() {
        let mut w = ReplayWindow::new(1, 100);
        assert_eq!(w.check(1, 100), Verdict::Replayed);
        assert_eq!(w.check(1, 99), Verdict::Fresh);
        w.accept(1, 99);
        assert_eq!(w.check(1, 99), Verdict::Replayed);
        assert_eq!(w.check(1, 101), Verdict::Fresh);
        w.accept(1, 200);
        assert_eq!(w.check(1, 100), Verdict::Replayed);
        assert_eq!(w.check(1, 137), Verdict::Fresh);
        assert_eq!(w.check(1, 136), Verdict::Replayed);
    }

    #[test]
    fn newer_generation_resets_older_is_stale() {
        let mut w = ReplayWindow::new(5, 1000);
        assert_eq!(w.check(4, 5000), Verdict::StaleGeneration);
        assert_eq!(w.check(6, 1), Verdict::Fresh);
        w.accept(6, 1);
        assert_eq!(w.check(6, 2), Verdict::Fresh);
        assert_eq!(w.check(5, 2000), Verdict::StaleGeneration);
    }

    proptest! {
        /// Model check: within a generation, a sequence number is accepted iff it was never
        /// accepted before and is within the window of the highest accepted.
        #[test]
        fn matches_a_set_model(seqs in proptest::collection::vec(1u64..300, 1..200)) {
            let mut w = ReplayWindow::new(1, seqs[0]);
            let mut seen = std::collections::BTreeSet::from([seqs[0]]);
            for &s in &seqs[1..] {
                let top = *seen.iter().next_back().unwrap();
                let expect_fresh = !seen.contains(&s) && (s > top || top - s < WINDOW);
                let fresh = w.check(1, s) == Verdict::Fresh;
                prop_assert_eq!(fresh, expect_fresh, "seq {} top {}", s, top);
                if fresh {
                    w.accept(1, s);
                    seen.insert(s);
                }
            }
        }
    }
}
