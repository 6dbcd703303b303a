//! What one node knows about every other: SWIM member state and Lifeguard suspicion.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::message::Incarnation;
use super::record::NodeRecord;

/// A member's state in the local view.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    /// A probe failed; unless it refutes before the suspicion timeout, it is declared dead.
    /// Its record stays in effect meanwhile.
    Suspect,
    /// Declared dead: its record is gone. Kept for a while to re-announce to (partitions
    /// heal) and to refuse stale news about it.
    Dead,
    /// Left gracefully.
    Left,
}

impl MemberState {
    /// Alive or suspect: its record is in effect.
    pub fn is_up(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }
}

/// Why a member went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DownReason {
    Dead,
    Left,
}

/// A read-only view of one member (the local node included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberView<'a> {
    pub name: &'a str,
    pub addr: SocketAddr,
    pub state: MemberState,
    pub incarnation: Incarnation,
    /// Version of its record.
    pub version: u64,
    /// Last authenticated datagram from it; `None` for the local node and for members
    /// only heard of through others.
    pub last_heard: Option<Instant>,
    /// Its record while it is up; `None` once dead or left.
    pub record: Option<&'a NodeRecord>,
    pub is_local: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// Last record heard; kept while dead so a refutation can bring it back.
    pub(crate) record: NodeRecord,
    pub(crate) version: u64,
    pub(crate) inc: Incarnation,
    pub(crate) state: MemberState,
    pub(crate) state_since: Instant,
    pub(crate) last_heard: Option<Instant>,
    pub(crate) suspicion: Option<Suspicion>,
    /// When we last told it that we consider it dead (rate limit).
    pub(crate) last_dead_notice: Option<Instant>,
}

impl Member {
    pub(crate) fn view(&self) -> MemberView<'_> {
        MemberView {
            name: &self.record.name,
            addr: self.record.gossip_addr,
            state: self.state,
            incarnation: self.inc,
            version: self.version,
            last_heard: self.last_heard,
            record: self.state.is_up().then_some(&self.record),
            is_local: false,
        }
    }
}

/// Lifeguard's dynamic suspicion timeout (Dadgar et al., "Lifeguard: Local Health
/// Awareness for More Accurate Failure Detection", 2018, §IV-B): it starts at `max` and
/// shrinks logarithmically toward `min` as independent members confirm the suspicion,
/// reaching `min` at `k` confirmations:
/// `timeout(c) = max(min, max − (max − min) · ln(c + 1) / ln(k + 1))`.
#[derive(Debug, Clone)]
pub(crate) struct Suspicion {
    start: Instant,
    min: Duration,
    max: Duration,
    k: usize,
    /// Distinct members that suspected it, the first one included.
    confirmers: BTreeSet<String>,
}

impl Suspicion {
    pub(crate) fn new(start: Instant, from: &str, min: Duration, max: Duration, k: usize) -> Self {
        Suspicion {
            start,
            min,
            max: max.max(min),
            k,
            confirmers: BTreeSet::from([from.to_owned()]),
        }
    }

    /// Records an independent confirmation. Returns `true` iff `from` is new (then the
    /// confirmation is worth re-gossiping so others shorten their timers too).
    pub(crate) fn confirm(&mut self, from: &str) -> bool {
        if self.confirmers.len() > self.k || self.confirmers.contains(from) {
            return false;
        }
        self.confirmers.insert(from.to_owned())
    }

    pub(crate) fn timeout(&self) -> Duration {
        let c = self.confirmers.len().saturating_sub(1);
        if self.k == 0 || c >= self.k {
            return self.min;
        }
        let frac = ((c + 1) as f64).ln() / ((self.k + 1) as f64).ln();
        let span = (self.max - self.min).as_secs_f64();
        let shrunk = Duration::try_from_secs_f64((span * (1.0 - frac)).max(0.0));
        self.min.saturating_add(shrunk.unwrap_or(Duration::MAX))
    }

    pub(crate) fn deadline(&self) -> Instant {
        super::config::after(self.start, self.timeout())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspicion_shrinks_from_max_to_min_with_confirmations() {
        let t0 = Instant::now();
        let min = Duration::from_secs(2);
        let max = Duration::from_secs(6);
        let mut s = Suspicion::new(t0, "a", min, max, 3);
        assert_eq!(s.timeout(), max);
        assert!(s.confirm("b"));
        assert!(!s.confirm("b"));
        let one = s.timeout();
        assert!(one < max && one > min, "{one:?}");
        assert!(s.confirm("c"));
        assert!(s.timeout() < one);
        assert!(s.confirm("d"));
        assert_eq!(s.timeout(), min);
        // Beyond k, confirmations no longer count (and are not re-gossiped).
        assert!(!s.confirm("e"));
        assert_eq!(s.deadline(), t0 + min);
    }

    #[test]
    fn no_confirmers_expected_means_min() {
        let s = Suspicion::new(
            Instant::now(),
            "a",
            Duration::from_secs(1),
            Duration::from_secs(5),
            0,
        );
        assert_eq!(s.timeout(), Duration::from_secs(1));
    }
}
