//! Every peer's [`Ladder`], so the shell has one timer, one probe queue and one switch
//! queue for all of them (as [`PathMtus`](crate::dataplane::pmtu::PathMtus) holds every
//! peer's path MTU). Peers are keyed by member name.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{Ladder, LadderConfig, LadderStatus, PathKind, Probe, ProbeId, Switch};

/// The path ladders of every peer.
#[derive(Debug, Clone)]
pub struct PathLadders {
    config: LadderConfig,
    ladders: BTreeMap<String, Ladder>,
}

impl PathLadders {
    pub fn new(config: LadderConfig) -> Self {
        PathLadders {
            config,
            ladders: BTreeMap::new(),
        }
    }

    /// The peers now, each with its allowed rungs (from
    /// [`PathPolicy::resolve`](super::PathPolicy::resolve)). New peers start a ladder
    /// and are probed at once; gone ones are forgotten with their probes and switches.
    pub fn set_peers(&mut self, now: Instant, peers: &[(&str, &[PathKind])]) {
        self.ladders
            .retain(|name, _| peers.iter().any(|(p, _)| p == name));
        for (name, candidates) in peers {
            let config = self.config;
            self.ladders
                .entry((*name).to_owned())
                .or_insert_with(|| Ladder::new(config))
                .set_candidates(now, candidates);
        }
    }

    /// The member relaying for `peer` ([`choose_relay`](super::choose_relay)).
    pub fn set_relay(&mut self, now: Instant, peer: &str, relay: Option<&str>) {
        if let Some(ladder) = self.ladders.get_mut(peer) {
            ladder.set_relay(now, relay);
        }
    }

    /// An ack from `peer`; see [`Ladder::handle_ack`].
    pub fn handle_ack(&mut self, now: Instant, peer: &str, path: PathKind, id: ProbeId) -> bool {
        self.ladders
            .get_mut(peer)
            .is_some_and(|l| l.handle_ack(now, path, id))
    }

    /// Runs every ladder that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for ladder in self.ladders.values_mut() {
            if ladder.poll_timeout().is_some_and(|at| at <= now) {
                ladder.handle_timeout(now);
            }
        }
    }

    /// The earliest [`Ladder::poll_timeout`] of all.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ladders.values().filter_map(Ladder::poll_timeout).min()
    }

    /// The next probe to send, and to which peer.
    pub fn poll_probe(&mut self) -> Option<(&str, Probe)> {
        self.ladders
            .iter_mut()
            .find_map(|(name, l)| Some((name.as_str(), l.poll_probe()?)))
    }

    /// The next change of a peer's chosen rung.
    pub fn poll_switch(&mut self) -> Option<(&str, Switch)> {
        self.ladders
            .iter_mut()
            .find_map(|(name, l)| Some((name.as_str(), l.poll_switch()?)))
    }

    pub fn ladder(&self, peer: &str) -> Option<&Ladder> {
        self.ladders.get(peer)
    }

    /// Every peer's ladder for `overlayd peers`, by name.
    pub fn status(&self, now: Instant) -> BTreeMap<String, LadderStatus> {
        self.ladders
            .iter()
            .map(|(name, l)| (name.clone(), l.status(now)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathKind::{Quic, Udp};

    #[test]
    fn peers_come_and_go_with_their_probes_and_switches() {
        let t0 = Instant::now();
        let mut all = PathLadders::new(LadderConfig::default());
        all.set_peers(t0, &[("n2", &[Udp, Quic]), ("n3", &[Quic])]);
        let probes: Vec<(String, PathKind)> =
            std::iter::from_fn(|| all.poll_probe().map(|(n, p)| (n.to_owned(), p.path))).collect();
        assert_eq!(
            probes,
            [
                ("n2".to_owned(), Udp),
                ("n2".to_owned(), Quic),
                ("n3".to_owned(), Quic)
            ]
        );
        let first: Vec<(String, Option<PathKind>)> =
            std::iter::from_fn(|| all.poll_switch().map(|(n, s)| (n.to_owned(), s.to))).collect();
        assert_eq!(
            first,
            [("n2".to_owned(), Some(Udp)), ("n3".to_owned(), Some(Quic))]
        );

        all.set_peers(t0, &[("n3", &[Quic])]);
        assert!(all.ladder("n2").is_none());
        assert_eq!(all.status(t0).len(), 1);
        assert!(all.poll_probe().is_none(), "n3's probe went out already");
    }

    #[test]
    fn one_timer_for_all_and_acks_reach_their_peer() {
        let t0 = Instant::now();
        let mut all = PathLadders::new(LadderConfig::default());
        all.set_peers(t0, &[("n2", &[Udp]), ("n3", &[Udp])]);
        let (_, p2) = all.poll_probe().expect("n2 probe");
        all.poll_probe().expect("n3 probe");
        assert!(all.handle_ack(t0, "n2", Udp, p2.id));
        assert!(!all.handle_ack(t0, "n4", Udp, p2.id), "no such peer");
        // n2 is promising (an ack in hand): its next probe is due before n3's timeout.
        assert_eq!(
            all.poll_timeout(),
            Some(t0 + std::time::Duration::from_millis(50))
        );
        all.handle_timeout(t0 + std::time::Duration::from_millis(50));
        let (peer, _) = all.poll_probe().expect("n2 again");
        assert_eq!(peer, "n2");
        assert!(all.poll_probe().is_none(), "n3 was not due");
    }
}
