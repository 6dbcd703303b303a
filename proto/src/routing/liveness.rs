//! Whether a peer's routes stay when gossip gives up on it (issue 9, "gossip death is not
//! data-path death"): a member that gossip declares dead may only have lost its daemon —
//! a restart, a crash loop, an upgrade — while its kernel forwards perfectly. Its routes
//! then stay while its node still answers on the data path (the shell probes it: neighbour
//! reachability or an ICMP echo to its underlay address for host-gw peers, to its tunnel
//! address for tunnel peers; the kernel answers, not the daemon), and go as soon as the
//! node is really gone: the probes fail, it left for good, gossip forgot it, or another
//! node claimed its pod subnet.
//!
//! A pure function of what gossip says, what the probes say and the time; the shell probes
//! and acts.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::peer::PeerInfo;

/// What gossip says of the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipView {
    /// Alive or suspect: gossip still counts it in.
    Up,
    /// Declared dead (failure detection), at `since`.
    Dead { since: Instant },
    /// It announced leaving: an explicit `overlayd leave`.
    Left,
    /// Gone from gossip's member list altogether (reaped after the dead timeout).
    Forgotten,
}

/// What the data-path probes of the member's node say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeView {
    /// Not probed yet (the shell starts probing when gossip declares the member dead).
    Unknown,
    /// The last probe was answered, at `at`.
    Answered { at: Instant },
    /// Every probe since `since` went unanswered.
    Failing { since: Instant },
}

/// The bounds of the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessSettings {
    /// An answer older than this no longer counts (the shell probes more often).
    pub answer_valid: Duration,
    /// Probes failing this long mean the node is gone. With gossip's ~2 s failure
    /// detection this keeps "a node that is really gone loses its routes on every peer
    /// within 5 s".
    pub fail_after: Duration,
    /// How long a dead member's routes wait for a first probe result.
    pub first_probe_wait: Duration,
}

impl Default for LivenessSettings {
    fn default() -> Self {
        LivenessSettings {
            answer_valid: Duration::from_secs(1),
            fail_after: Duration::from_secs(1),
            first_probe_wait: Duration::from_secs(1),
        }
    }
}

/// What to do with the member's routes and forwarding entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Gossip counts it in: routes as usual.
    Up,
    /// Gossip says dead, the node still answers: keep the routes; `peers` and `members`
    /// show "daemon down".
    DaemonDown,
    /// Gone: withdraw its routes.
    Withdraw(WithdrawReason),
}

/// Why a member's routes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithdrawReason {
    Left,
    Forgotten,
    SubnetClaimedByAnother,
    ProbesFailed,
    NeverAnswered,
}

/// The decision for one member at `now`. `subnet_taken` is whether another live member
/// now claims the pod subnet this one had (its routes would capture that node's traffic).
pub fn decide(
    gossip: GossipView,
    probe: ProbeView,
    subnet_taken: bool,
    now: Instant,
    settings: &LivenessSettings,
) -> Liveness {
    use WithdrawReason::*;
    let since = match gossip {
        GossipView::Up => return Liveness::Up,
        GossipView::Left => return Liveness::Withdraw(Left),
        GossipView::Forgotten => return Liveness::Withdraw(Forgotten),
        GossipView::Dead { since } => since,
    };
    if subnet_taken {
        return Liveness::Withdraw(SubnetClaimedByAnother);
    }
    match probe {
        ProbeView::Answered { at }
            if now.saturating_duration_since(at) <= settings.answer_valid =>
        {
            Liveness::DaemonDown
        }
        // An answer that went stale: as failing since it was fresh.
        ProbeView::Answered { at } => {
            let failing_since = at + settings.answer_valid;
            if now.saturating_duration_since(failing_since) >= settings.fail_after {
                Liveness::Withdraw(ProbesFailed)
            } else {
                Liveness::DaemonDown
            }
        }
        ProbeView::Failing { since: f } => {
            if now.saturating_duration_since(f) >= settings.fail_after {
                Liveness::Withdraw(ProbesFailed)
            } else {
                Liveness::DaemonDown
            }
        }
        ProbeView::Unknown => {
            if now.saturating_duration_since(since) >= settings.first_probe_wait {
                Liveness::Withdraw(NeverAnswered)
            } else {
                Liveness::DaemonDown
            }
        }
    }
}

/// The members gossip declared dead whose routes this node keeps while their nodes answer
/// (the shell's state for [`decide`]): fed with gossip's events and the probes' answers,
/// it says which of them to keep routing to and which to probe.
#[derive(Debug, Clone, Default)]
pub struct KeptPeers {
    settings: LivenessSettings,
    kept: BTreeMap<String, Kept>,
}

#[derive(Debug, Clone)]
struct Kept {
    info: PeerInfo,
    dead_since: Instant,
    first_probe: Option<Instant>,
    last_answer: Option<Instant>,
}

impl KeptPeers {
    pub fn new(settings: LivenessSettings) -> Self {
        KeptPeers {
            settings,
            kept: BTreeMap::new(),
        }
    }

    /// Gossip declared the member dead (failure detection, not leaving); `info` is what
    /// the data path had for it.
    pub fn member_dead(&mut self, now: Instant, info: PeerInfo) {
        self.kept.insert(
            info.name.clone(),
            Kept {
                info,
                dead_since: now,
                first_probe: None,
                last_answer: None,
            },
        );
    }

    /// The member is back (its new record supersedes), left for good, or gossip forgot
    /// it: nothing of it is kept.
    pub fn member_gone(&mut self, name: &str) {
        self.kept.remove(name);
    }

    /// The underlay addresses to probe now.
    pub fn to_probe(&self) -> Vec<Ipv4Addr> {
        self.kept.values().map(|k| k.info.underlay).collect()
    }

    /// A probe went out to `addr`.
    pub fn probe_sent(&mut self, now: Instant, addr: Ipv4Addr) {
        for k in self.kept.values_mut().filter(|k| k.info.underlay == addr) {
            k.first_probe.get_or_insert(now);
        }
    }

    /// `addr` answered a probe.
    pub fn probe_answered(&mut self, now: Instant, addr: Ipv4Addr) {
        for k in self.kept.values_mut().filter(|k| k.info.underlay == addr) {
            k.last_answer = Some(now);
        }
    }

    /// Decides for every kept member at `now` (`up`: the members gossip counts in, whose
    /// subnets no kept one may shadow): returns the peers whose routes stay, and forgets
    /// — returning them with the reason — the ones to withdraw.
    pub fn decide(
        &mut self,
        now: Instant,
        up: &[PeerInfo],
    ) -> (Vec<PeerInfo>, Vec<(String, WithdrawReason)>) {
        let mut keep = Vec::new();
        let mut gone = Vec::new();
        for (name, k) in &self.kept {
            let probe = match (k.last_answer, k.first_probe) {
                (Some(at), _) => ProbeView::Answered { at },
                (None, Some(since)) => ProbeView::Failing { since },
                (None, None) => ProbeView::Unknown,
            };
            let taken = up
                .iter()
                .any(|p| p.name != *name && p.pod_subnet == k.info.pod_subnet);
            let up_again = up.iter().any(|p| p.name == *name);
            let gossip = if up_again {
                GossipView::Up
            } else {
                GossipView::Dead {
                    since: k.dead_since,
                }
            };
            match decide(gossip, probe, taken, now, &self.settings) {
                Liveness::DaemonDown => keep.push(k.info.clone()),
                Liveness::Up => gone.push((name.clone(), None)),
                Liveness::Withdraw(reason) => gone.push((name.clone(), Some(reason))),
            }
        }
        for (name, _) in &gone {
            self.kept.remove(name);
        }
        (
            keep,
            gone.into_iter()
                .filter_map(|(n, r)| Some((n, r?)))
                .collect(),
        )
    }

    /// The members kept now.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.kept.keys().map(String::as_str)
    }

    /// Whether `name` is kept with its daemon down.
    pub fn is_kept(&self, name: &str) -> bool {
        self.kept.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> LivenessSettings {
        LivenessSettings::default()
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn a_member_gossip_counts_in_keeps_its_routes_whatever_the_probes() {
        let t0 = Instant::now();
        for probe in [
            ProbeView::Unknown,
            ProbeView::Failing { since: t0 },
            ProbeView::Answered { at: t0 },
        ] {
            assert_eq!(
                decide(GossipView::Up, probe, false, ms(t0, 60_000), &s()),
                Liveness::Up
            );
        }
    }

    /// A restarted daemon: gossip declares it dead, its kernel answers every probe, so its
    /// routes stay for as long as that holds (no time limit but gossip's reaping).
    #[test]
    fn a_dead_member_whose_node_answers_keeps_its_routes() {
        let t0 = Instant::now();
        let dead = GossipView::Dead { since: t0 };
        for later in [0, 500, 10_000, 600_000] {
            let now = ms(t0, later);
            let probe = ProbeView::Answered {
                at: now - Duration::from_millis(300),
            };
            assert_eq!(decide(dead, probe, false, now, &s()), Liveness::DaemonDown);
        }
    }

    /// A node really gone (its link down): gossip says dead after ~2 s, the probes fail
    /// from then, and its routes go `fail_after` later — within the 5 s.
    #[test]
    fn a_node_that_is_gone_loses_its_routes_within_the_bound() {
        let t0 = Instant::now();
        let gossip_detection = Duration::from_secs(2);
        let dead_at = t0 + gossip_detection;
        let dead = GossipView::Dead { since: dead_at };
        let probe = ProbeView::Failing { since: dead_at };
        let mut withdrawn_at = None;
        for step in 0..100 {
            let now = dead_at + Duration::from_millis(50 * step);
            if let Liveness::Withdraw(why) = decide(dead, probe, false, now, &s()) {
                assert_eq!(why, WithdrawReason::ProbesFailed);
                withdrawn_at = Some(now);
                break;
            }
        }
        let at = withdrawn_at.expect("withdrawn");
        assert!(at - t0 <= Duration::from_secs(5), "{:?}", at - t0);
    }

    /// Answers that stop: the last answer ages out, then counts as failing.
    #[test]
    fn answers_that_stop_count_as_failing_from_when_they_went_stale() {
        let t0 = Instant::now();
        let dead = GossipView::Dead { since: t0 };
        let probe = ProbeView::Answered { at: t0 };
        let s = s();
        assert_eq!(
            decide(dead, probe, false, t0 + s.answer_valid, &s),
            Liveness::DaemonDown
        );
        assert_eq!(
            decide(
                dead,
                probe,
                false,
                t0 + s.answer_valid + s.fail_after - Duration::from_millis(1),
                &s
            ),
            Liveness::DaemonDown
        );
        assert_eq!(
            decide(dead, probe, false, t0 + s.answer_valid + s.fail_after, &s),
            Liveness::Withdraw(WithdrawReason::ProbesFailed)
        );
    }

    #[test]
    fn leaving_forgetting_and_a_claimed_subnet_withdraw_at_once() {
        let t0 = Instant::now();
        let answering = ProbeView::Answered { at: t0 };
        assert_eq!(
            decide(GossipView::Left, answering, false, t0, &s()),
            Liveness::Withdraw(WithdrawReason::Left)
        );
        assert_eq!(
            decide(GossipView::Forgotten, answering, false, t0, &s()),
            Liveness::Withdraw(WithdrawReason::Forgotten)
        );
        assert_eq!(
            decide(GossipView::Dead { since: t0 }, answering, true, t0, &s()),
            Liveness::Withdraw(WithdrawReason::SubnetClaimedByAnother)
        );
    }

    /// A dead member never probed (the shell could not probe it) keeps its routes only for
    /// the first probe's wait.
    #[test]
    fn a_dead_member_with_no_probe_result_goes_after_the_first_probes_wait() {
        let t0 = Instant::now();
        let dead = GossipView::Dead { since: t0 };
        let s = s();
        assert_eq!(
            decide(dead, ProbeView::Unknown, false, t0, &s),
            Liveness::DaemonDown
        );
        assert_eq!(
            decide(dead, ProbeView::Unknown, false, t0 + s.first_probe_wait, &s),
            Liveness::Withdraw(WithdrawReason::NeverAnswered)
        );
    }

    fn info(name: &str, third: u8) -> PeerInfo {
        PeerInfo {
            name: name.into(),
            underlay: Ipv4Addr::new(10, 100, 1, third),
            pod_subnet: format!("10.244.{third}.0/24").parse().unwrap(),
            vtep_mac: crate::wire::MacAddr::vtep_for_node(name),
            zone: String::new(),
            quic_port: None,
            cert_fingerprint: None,
            relay: false,
        }
    }

    /// The shell's sequence: a restarted daemon is kept while its node answers; a node
    /// that stops answering is withdrawn 1 s after its last fresh answer went stale; a
    /// claim of its subnet or its return ends the keeping at once.
    #[test]
    fn kept_peers_follow_gossip_and_the_probes() {
        let t0 = Instant::now();
        let mut k = KeptPeers::new(s());
        k.member_dead(t0, info("n2", 12));
        k.member_dead(t0, info("n3", 13));
        assert_eq!(
            k.to_probe(),
            [Ipv4Addr::new(10, 100, 1, 12), Ipv4Addr::new(10, 100, 1, 13)]
        );
        for addr in k.to_probe() {
            k.probe_sent(t0, addr);
        }
        k.probe_answered(ms(t0, 1), Ipv4Addr::new(10, 100, 1, 12));
        let (keep, gone) = k.decide(ms(t0, 900), &[]);
        assert_eq!(
            keep,
            [info("n2", 12), info("n3", 13)],
            "n3 still within 1 s"
        );
        assert!(gone.is_empty());
        // n3 never answered: withdrawn once its probes failed 1 s.
        let (keep, gone) = k.decide(ms(t0, 1100), &[]);
        assert_eq!(keep, [info("n2", 12)]);
        assert_eq!(gone, [("n3".to_owned(), WithdrawReason::ProbesFailed)]);
        assert!(!k.is_kept("n3") && k.to_probe().len() == 1);
        // n2 answers on; 10 minutes later it is still kept.
        k.probe_answered(ms(t0, 600_000), Ipv4Addr::new(10, 100, 1, 12));
        assert_eq!(k.decide(ms(t0, 600_100), &[]).0, [info("n2", 12)]);
        // Its answers stop: the last goes stale after 1 s, then 1 s of failing.
        assert_eq!(k.decide(ms(t0, 601_900), &[]).0.len(), 1);
        let (keep, gone) = k.decide(ms(t0, 602_100), &[]);
        assert!(keep.is_empty());
        assert_eq!(gone, [("n2".to_owned(), WithdrawReason::ProbesFailed)]);

        // Another node claims a kept member's subnet: withdrawn at once.
        k.member_dead(t0, info("n4", 14));
        k.probe_answered(t0, Ipv4Addr::new(10, 100, 1, 14));
        let mut claimer = info("n9", 14);
        claimer.underlay = Ipv4Addr::new(10, 100, 1, 99);
        let (_, gone) = k.decide(ms(t0, 10), &[claimer]);
        assert_eq!(
            gone,
            [("n4".to_owned(), WithdrawReason::SubnetClaimedByAnother)]
        );
        // Back in gossip: no longer kept, and nothing to withdraw (its record routes).
        k.member_dead(t0, info("n5", 15));
        let (keep, gone) = k.decide(ms(t0, 10), &[info("n5", 15)]);
        assert!(keep.is_empty() && gone.is_empty() && !k.is_kept("n5"));
    }
}
