//! Path MTU of each tunnel peer: the largest outer IPv4 packet that crosses the underlay
//! to it, learned from ICMP "fragmentation needed" and from DF probes, and the inner MTU
//! its route should carry (outer − [`IPV4_OVERHEAD`], the 50 bytes VXLAN over IPv4 costs).
//!
//! Sans-IO, as quinn-proto: the shell feeds events with the time they happened
//! (`handle_*`), drains probes to send (`poll_transmit`), and wakes the machine at
//! `poll_timeout`. Numbers (see docs/architecture.md, "MTU"):
//!
//! - A new peer starts at the **ceiling**, our underlay device's MTU (what the tunnel
//!   assumed before path MTU existed), and is probed at once.
//! - **ICMP** "fragmentation needed" (or the kernel's local EMSGSIZE) for an outer packet
//!   lowers the peer's path MTU at once, to the reported MTU clamped to
//!   [`FLOOR`]..=ceiling; a report of 0 (a pre-RFC 1191 router) means the next
//!   [`PLATEAUS`] value down. ICMP never raises.
//! - A **probe round** sends one DF probe at every candidate size (the plateaus, the
//!   ceiling and the current value) at once; the peer acks each that arrives whole.
//!   Unacked probes larger than the best ack are resent after `probe_timeout`, up to
//!   `probe_tries` sends; then the best ack is the path MTU. This finds a path whose
//!   routers' ICMP is dropped (a black hole) within `probe_tries × probe_timeout`.
//! - A round with no ack at all (a peer that does not speak probes, such as a kernel
//!   vxlan node, or one that is down) changes nothing and is retried after
//!   `unanswered_retry`, doubling up to `raise_interval`.
//! - Every `confirm_interval` a peer that answers probes gets one probe at its current
//!   path MTU (RFC 8899's confirmation). If that is lost (`probe_tries` sends), the path
//!   shrank behind routers whose ICMP is dropped: a full round starts at once. A black
//!   hole that opens later is so found within `confirm_interval` + 2 rounds' timeouts.
//! - Every `raise_interval` a new round re-probes the whole range, so a path that grew
//!   (or an ICMP value a forger sent) is raised again, and one that shrank is found.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::wire::probe::{MIN_SIZE, ProbeMessage};
use crate::wire::vxlan::IPV4_OVERHEAD;

/// The lowest outer path MTU ICMP may set: IPv4's minimum reassembly size. A router may
/// report as little as 68, but a report below 576 is far more likely forged or broken
/// than true, and Linux itself ignores PMTU below 552 (`min_pmtu`). Inner: 526.
pub const FLOOR: u16 = 576;

/// Candidate outer sizes a probe round tries (RFC 1191's plateaus, refined for today's
/// underlays: jumbo, Ethernet, PPPoE, cloud VPCs at 1460/1450, IPsec and GRE below).
pub const PLATEAUS: [u16; 18] = [
    9000, 8950, 4352, 1500, 1492, 1480, 1460, 1450, 1440, 1420, 1400, 1380, 1350, 1300, 1280, 1200,
    1024, FLOOR,
];

/// Timing of probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmtuConfig {
    /// How long a probe may go unanswered before it counts as lost.
    pub probe_timeout: Duration,
    /// How many times a probe is sent before its size counts as not crossing.
    pub probe_tries: u8,
    /// How often every peer's path is probed again (upward and downward).
    pub raise_interval: Duration,
    /// How often a peer that answers probes is sent one at its current path MTU.
    pub confirm_interval: Duration,
    /// After a round with no ack at all, the first retry; doubles up to `raise_interval`.
    pub unanswered_retry: Duration,
}

impl Default for PmtuConfig {
    fn default() -> Self {
        PmtuConfig {
            probe_timeout: Duration::from_secs(1),
            probe_tries: 2,
            raise_interval: Duration::from_secs(600),
            confirm_interval: Duration::from_secs(15),
            unanswered_retry: Duration::from_secs(5),
        }
    }
}

/// What a peer's path MTU rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmtuSource {
    /// Assumed from our own underlay device; nothing confirmed it yet.
    Device,
    /// Lowered by ICMP "fragmentation needed" (or a local EMSGSIZE).
    Icmp,
    /// The largest probe the peer acked in the last round.
    Probe,
}

impl PmtuSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PmtuSource::Device => "device",
            PmtuSource::Icmp => "icmp",
            PmtuSource::Probe => "probe",
        }
    }
}

/// One peer's path MTU as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathMtu {
    /// Largest outer IPv4 packet that crosses the underlay.
    pub outer: u16,
    /// `outer` − 50: the largest inner packet the tunnel carries to this peer.
    pub inner: u16,
    pub source: PmtuSource,
    /// A probe round is running.
    pub probing: bool,
}

/// A probe the shell must send to `dst`'s tunnel port, DF set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTransmit {
    pub dst: Ipv4Addr,
    pub probe: ProbeMessage,
}

#[derive(Debug, Clone)]
struct Round {
    /// One probe at the current path MTU, not a search.
    confirm: bool,
    deadline: Instant,
    tries_left: u8,
    /// Candidate size → id of its probe, until acked or given up.
    pending: BTreeMap<u16, u32>,
    best: Option<u16>,
}

#[derive(Debug, Clone)]
struct Peer {
    mtu: u16,
    source: PmtuSource,
    round: Option<Round>,
    /// When the next round starts, while none runs.
    next_round: Instant,
    /// When the current path MTU is next confirmed (peers that answered a round).
    next_confirm: Option<Instant>,
    /// Rounds in a row without any ack.
    unanswered: u32,
}

/// Every tunnel peer's path MTU.
#[derive(Debug, Clone)]
pub struct PathMtus {
    config: PmtuConfig,
    ceiling: u16,
    peers: BTreeMap<Ipv4Addr, Peer>,
    next_id: u32,
    transmits: VecDeque<ProbeTransmit>,
}

impl PathMtus {
    /// `ceiling`: our underlay device's MTU, which no path MTU exceeds.
    pub fn new(config: PmtuConfig, ceiling: u16) -> Self {
        PathMtus {
            config,
            ceiling,
            peers: BTreeMap::new(),
            next_id: 1,
            transmits: VecDeque::new(),
        }
    }

    pub fn ceiling(&self) -> u16 {
        self.ceiling
    }

    /// The tunnel peers (underlay addresses) now. New ones start at the ceiling and are
    /// probed at once; gone ones are forgotten.
    pub fn set_peers(&mut self, now: Instant, peers: &[Ipv4Addr]) {
        let current: BTreeSet<Ipv4Addr> = peers.iter().copied().collect();
        self.peers.retain(|addr, _| current.contains(addr));
        self.transmits.retain(|t| current.contains(&t.dst));
        for addr in &current {
            if !self.peers.contains_key(addr) {
                self.peers.insert(
                    *addr,
                    Peer {
                        mtu: self.ceiling,
                        source: PmtuSource::Device,
                        round: None,
                        next_round: now,
                        next_confirm: None,
                        unanswered: 0,
                    },
                );
                self.start_round(now, *addr);
            }
        }
    }

    /// Our underlay device's MTU changed: every path is clamped to it at once, and so is
    /// any round in flight (acks for larger probes sent before the change no longer
    /// count); a higher ceiling starts a round for every peer, so paths can grow into it.
    pub fn set_ceiling(&mut self, now: Instant, ceiling: u16) {
        if ceiling == self.ceiling {
            return;
        }
        let raised = ceiling > self.ceiling;
        self.ceiling = ceiling;
        self.transmits.retain(|t| match t.probe {
            ProbeMessage::Probe { size, .. } => size <= ceiling,
            ProbeMessage::Ack { .. } => true,
        });
        let addrs: Vec<Ipv4Addr> = self.peers.keys().copied().collect();
        for addr in addrs {
            let Some(peer) = self.peers.get_mut(&addr) else {
                continue;
            };
            if peer.mtu > ceiling {
                peer.mtu = ceiling;
                peer.source = PmtuSource::Device;
            }
            if let Some(round) = &mut peer.round {
                round.pending.retain(|size, _| *size <= ceiling);
                round.best = round.best.filter(|best| *best <= ceiling);
            }
            if raised && peer.round.is_none() {
                self.start_round(now, addr);
            }
        }
    }

    /// ICMP "fragmentation needed" (or a local EMSGSIZE) for an outer packet to `peer`,
    /// with the MTU it reports. Returns whether the peer's path MTU went down.
    pub fn handle_too_big(&mut self, _now: Instant, peer: Ipv4Addr, reported: u32) -> bool {
        let ceiling = self.ceiling;
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        let mtu = match u16::try_from(reported) {
            Ok(0) => next_plateau_below(p.mtu),
            Ok(m) => m,
            Err(_) => u16::MAX,
        };
        let mtu = mtu.max(FLOOR).min(ceiling);
        if let Some(round) = &mut p.round {
            // Probes larger than the report will not cross; stop waiting for them. An ack
            // above it came for a probe sent before the path narrowed: the report is the
            // newer evidence.
            round.pending.retain(|size, _| *size <= mtu);
            round.best = round.best.filter(|best| *best <= mtu);
        }
        if mtu >= p.mtu {
            return false;
        }
        p.mtu = mtu;
        p.source = PmtuSource::Icmp;
        true
    }

    /// A probe ack from `peer`. Returns whether the peer's path MTU changed (the round
    /// ended with it).
    pub fn handle_ack(&mut self, now: Instant, peer: Ipv4Addr, id: u32, size: u16) -> bool {
        let Some(round) = self.peers.get_mut(&peer).and_then(|p| p.round.as_mut()) else {
            return false;
        };
        if size > self.ceiling || round.pending.get(&size) != Some(&id) {
            return false; // late, duplicate or forged
        }
        round.pending.remove(&size);
        round.best = round.best.max(Some(size));
        let best = round.best.unwrap_or(0);
        if round.pending.keys().any(|s| *s > best) {
            return false;
        }
        self.conclude(now, peer)
    }

    /// Resends lost probes, ends rounds and starts due ones. Returns the peers whose path
    /// MTU changed.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Ipv4Addr> {
        let mut changed = Vec::new();
        let addrs: Vec<Ipv4Addr> = self.peers.keys().copied().collect();
        for addr in addrs {
            let Some(peer) = self.peers.get_mut(&addr) else {
                continue;
            };
            match &mut peer.round {
                Some(round) if round.deadline <= now => {
                    if round.tries_left > 0 {
                        round.tries_left -= 1;
                        round.deadline = now + self.config.probe_timeout;
                        let best = round.best.unwrap_or(0);
                        for (size, id) in round.pending.range(best + 1..) {
                            self.transmits.push_back(ProbeTransmit {
                                dst: addr,
                                probe: ProbeMessage::Probe {
                                    id: *id,
                                    size: *size,
                                },
                            });
                        }
                    } else if self.conclude(now, addr) {
                        changed.push(addr);
                    }
                }
                None if peer.next_round <= now => self.start_round(now, addr),
                None if peer.next_confirm.is_some_and(|at| at <= now) => {
                    self.start_confirm(now, addr)
                }
                _ => {}
            }
        }
        changed
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .map(|p| match &p.round {
                Some(round) => round.deadline,
                None => p.next_confirm.map_or(p.next_round, |c| c.min(p.next_round)),
            })
            .min()
    }

    /// The next probe to send.
    pub fn poll_transmit(&mut self) -> Option<ProbeTransmit> {
        self.transmits.pop_front()
    }

    pub fn path_mtu(&self, peer: Ipv4Addr) -> Option<PathMtu> {
        self.peers.get(&peer).map(|p| PathMtu {
            outer: p.mtu,
            inner: p.mtu.saturating_sub(IPV4_OVERHEAD as u16),
            source: p.source,
            probing: p.round.is_some(),
        })
    }

    /// The `mtu` each peer's route must carry: the inner path MTU of every peer whose
    /// path is narrower than the tunnel device (`tunnel_mtu`) already is. Peers missing
    /// here need no `mtu` on their route.
    pub fn route_mtus(&self, tunnel_mtu: u32) -> BTreeMap<Ipv4Addr, u32> {
        self.peers
            .iter()
            .filter_map(|(addr, p)| {
                let inner = u32::from(p.mtu).saturating_sub(IPV4_OVERHEAD as u32);
                (inner < tunnel_mtu).then_some((*addr, inner))
            })
            .collect()
    }

    fn start_round(&mut self, now: Instant, addr: Ipv4Addr) {
        let ceiling = self.ceiling;
        let Some(peer) = self.peers.get_mut(&addr) else {
            return;
        };
        let mut sizes: Vec<u16> = PLATEAUS
            .iter()
            .copied()
            .chain([ceiling, peer.mtu])
            .filter(|s| *s <= ceiling && *s >= MIN_SIZE)
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        let mut pending = BTreeMap::new();
        for size in sizes.into_iter().rev() {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            pending.insert(size, id);
            self.transmits.push_back(ProbeTransmit {
                dst: addr,
                probe: ProbeMessage::Probe { id, size },
            });
        }
        peer.round = Some(Round {
            confirm: false,
            deadline: now + self.config.probe_timeout,
            tries_left: self.config.probe_tries.saturating_sub(1),
            pending,
            best: None,
        });
    }

    /// One probe at `addr`'s current path MTU.
    fn start_confirm(&mut self, now: Instant, addr: Ipv4Addr) {
        let Some(peer) = self.peers.get_mut(&addr) else {
            return;
        };
        let (id, size) = (self.next_id, peer.mtu);
        self.next_id = self.next_id.wrapping_add(1);
        self.transmits.push_back(ProbeTransmit {
            dst: addr,
            probe: ProbeMessage::Probe { id, size },
        });
        peer.next_confirm = None;
        peer.round = Some(Round {
            confirm: true,
            deadline: now + self.config.probe_timeout,
            tries_left: self.config.probe_tries.saturating_sub(1),
            pending: BTreeMap::from([(size, id)]),
            best: None,
        });
    }

    /// Ends `addr`'s round: the best ack becomes its path MTU; with none, nothing changes
    /// and the next round comes sooner, unless it was a confirmation, whose loss starts
    /// a search at once. Returns whether the path MTU changed.
    fn conclude(&mut self, now: Instant, addr: Ipv4Addr) -> bool {
        let config = self.config;
        let Some(peer) = self.peers.get_mut(&addr) else {
            return false;
        };
        let Some(round) = peer.round.take() else {
            return false;
        };
        match round.best {
            Some(best) => {
                let changed = best != peer.mtu;
                peer.mtu = best;
                peer.source = PmtuSource::Probe;
                peer.unanswered = 0;
                if !round.confirm {
                    peer.next_round = now + config.raise_interval;
                }
                peer.next_confirm = Some(now + config.confirm_interval);
                changed
            }
            None if round.confirm => {
                // The peer answers probes, but not at this size any more: a black hole.
                self.start_round(now, addr);
                false
            }
            None => {
                peer.next_confirm = None;
                peer.unanswered += 1;
                let backoff = config
                    .unanswered_retry
                    .saturating_mul(1 << peer.unanswered.min(16).saturating_sub(1));
                peer.next_round = now + backoff.min(config.raise_interval);
                false
            }
        }
    }
}

fn next_plateau_below(mtu: u16) -> u16 {
    PLATEAUS.iter().copied().find(|p| *p < mtu).unwrap_or(FLOOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 11);
    const OTHER: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 12);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A machine with one peer added at `t0`, its first round's probes drained.
    fn one_peer(ceiling: u16) -> (PathMtus, Instant, Vec<ProbeMessage>) {
        one_peer_with(PmtuConfig::default(), ceiling)
    }

    fn one_peer_with(config: PmtuConfig, ceiling: u16) -> (PathMtus, Instant, Vec<ProbeMessage>) {
        let t0 = Instant::now();
        let mut m = PathMtus::new(config, ceiling);
        m.set_peers(t0, &[PEER]);
        let probes = drain(&mut m);
        (m, t0, probes)
    }

    fn drain(m: &mut PathMtus) -> Vec<ProbeMessage> {
        std::iter::from_fn(|| m.poll_transmit())
            .map(|t| {
                assert_eq!(t.dst, PEER);
                t.probe
            })
            .collect()
    }

    fn sizes(probes: &[ProbeMessage]) -> Vec<u16> {
        probes
            .iter()
            .map(|p| match p {
                ProbeMessage::Probe { size, .. } => *size,
                ProbeMessage::Ack { .. } => panic!("the machine sent an ack"),
            })
            .collect()
    }

    /// The peer acks every probe of `probes` that a path of `path` bytes carries.
    fn ack_up_to(m: &mut PathMtus, now: Instant, probes: &[ProbeMessage], path: u16) {
        for p in probes {
            if let ProbeMessage::Probe { id, size } = *p
                && size <= path
            {
                m.handle_ack(now, PEER, id, size);
            }
        }
    }

    fn mtu(m: &PathMtus) -> (u16, PmtuSource) {
        let p = m.path_mtu(PEER).unwrap();
        (p.outer, p.source)
    }

    #[test]
    fn a_new_peer_starts_at_the_ceiling_and_is_probed_at_every_size_up_to_it() {
        let (m, t0, probes) = one_peer(1500);
        assert_eq!(mtu(&m), (1500, PmtuSource::Device));
        assert_eq!(m.path_mtu(PEER).unwrap().inner, 1450);
        let sizes = sizes(&probes);
        assert_eq!(sizes.first(), Some(&1500), "largest first");
        assert!(sizes.contains(&1400) && sizes.contains(&FLOOR));
        assert!(sizes.iter().all(|s| *s <= 1500), "never above the device");
        assert_eq!(m.poll_timeout(), Some(t0 + secs(1)));
    }

    #[test]
    fn an_odd_device_mtu_is_itself_a_candidate() {
        let (_, _, probes) = one_peer(1410);
        assert_eq!(sizes(&probes)[..2], [1410, 1400]);
    }

    #[test]
    fn frag_needed_lowers_at_once_and_never_raises() {
        let (mut m, t0, _) = one_peer(1500);
        assert!(m.handle_too_big(t0, PEER, 1400));
        assert_eq!(mtu(&m), (1400, PmtuSource::Icmp));
        assert_eq!(m.path_mtu(PEER).unwrap().inner, 1350);
        assert!(!m.handle_too_big(t0, PEER, 1450), "ICMP never raises");
        assert!(!m.handle_too_big(t0, PEER, 9000), "nor beyond the ceiling");
        assert_eq!(mtu(&m).0, 1400);
        assert!(
            !m.handle_too_big(t0, OTHER, 1000),
            "unknown peers are ignored"
        );
    }

    #[test]
    fn frag_needed_is_clamped_to_the_floor_and_zero_means_the_next_plateau() {
        let (mut m, t0, _) = one_peer(1500);
        assert!(m.handle_too_big(t0, PEER, 0));
        assert_eq!(mtu(&m).0, 1492);
        assert!(m.handle_too_big(t0, PEER, 68));
        assert_eq!(mtu(&m).0, FLOOR);
        assert_eq!(m.path_mtu(PEER).unwrap().inner, 526);
    }

    #[test]
    fn an_ack_from_before_the_path_narrowed_does_not_outlive_the_icmp_report() {
        // The round's 1450 probe crossed before a link on the path went down to 1400;
        // the router's report for a later packet arrives before the round ends.
        let (mut m, t0, probes) = one_peer(1500);
        for p in &probes {
            if let ProbeMessage::Probe { id, size: 1450 } = *p {
                assert!(!m.handle_ack(t0, PEER, id, 1450), "1500 still pending");
            }
        }
        assert!(m.handle_too_big(t0, PEER, 1400));
        assert_eq!(mtu(&m), (1400, PmtuSource::Icmp));
        // The sizes up to 1400 are answered: the round ends at 1400, not at 1450.
        ack_up_to(&mut m, t0, &probes, 1400);
        assert_eq!(mtu(&m).0, 1400);
        m.handle_timeout(t0 + secs(5));
        assert_eq!(mtu(&m).0, 1400);
    }

    #[test]
    fn a_clean_path_is_confirmed_by_its_largest_probe_without_waiting() {
        let (mut m, t0, probes) = one_peer(1500);
        // Only the largest answers; nothing larger is pending, so the round ends.
        let ProbeMessage::Probe { id, size } = probes[0] else {
            panic!()
        };
        assert!(!m.handle_ack(t0, PEER, id, size), "same value: no change");
        assert_eq!(mtu(&m), (1500, PmtuSource::Probe));
        assert!(!m.path_mtu(PEER).unwrap().probing);
        assert_eq!(
            m.poll_timeout(),
            Some(t0 + secs(15)),
            "next: a confirmation"
        );
    }

    #[test]
    fn a_confirmation_is_one_probe_at_the_current_size() {
        let (mut m, t0, probes) = one_peer(1500);
        ack_up_to(&mut m, t0, &probes, 1400);
        m.handle_timeout(t0 + secs(1));
        drain(&mut m);
        m.handle_timeout(t0 + secs(2));
        assert_eq!(mtu(&m), (1400, PmtuSource::Probe));

        let at = t0 + secs(17);
        assert_eq!(m.poll_timeout(), Some(at));
        m.handle_timeout(at);
        let probes = drain(&mut m);
        assert_eq!(sizes(&probes), [1400]);
        ack_up_to(&mut m, at, &probes, 1400);
        assert_eq!(mtu(&m), (1400, PmtuSource::Probe));
        assert_eq!(m.poll_timeout(), Some(at + secs(15)));
    }

    #[test]
    fn a_black_hole_that_opens_later_is_found_by_a_lost_confirmation() {
        let (mut m, t0, probes) = one_peer(1500);
        ack_up_to(&mut m, t0, &probes, 1500);
        assert_eq!(mtu(&m), (1500, PmtuSource::Probe));

        // The path shrinks to 1400; its routers' ICMP is dropped.
        let at = t0 + secs(15);
        m.handle_timeout(at);
        assert_eq!(sizes(&drain(&mut m)), [1500]);
        m.handle_timeout(at + secs(1));
        assert_eq!(sizes(&drain(&mut m)), [1500], "sent once more");
        m.handle_timeout(at + secs(2));
        let search = drain(&mut m);
        assert_eq!(sizes(&search)[0], 1500, "lost twice: a full round at once");
        ack_up_to(&mut m, at + secs(2), &search, 1400);
        m.handle_timeout(at + secs(3));
        drain(&mut m);
        assert_eq!(m.handle_timeout(at + secs(4)), vec![PEER]);
        assert_eq!(mtu(&m), (1400, PmtuSource::Probe));
    }

    #[test]
    fn a_peer_that_never_answered_is_not_confirmed() {
        let (mut m, t0, _) = one_peer(1500);
        m.handle_timeout(t0 + secs(1));
        m.handle_timeout(t0 + secs(2));
        drain(&mut m);
        assert_eq!(
            m.poll_timeout(),
            Some(t0 + secs(7)),
            "the retry, no confirmation"
        );
    }

    #[test]
    fn a_black_hole_is_found_by_probes_after_the_retries() {
        let (mut m, t0, probes) = one_peer(1500);
        let t = t0 + Duration::from_millis(5);
        ack_up_to(&mut m, t, &probes, 1400);
        assert_eq!(mtu(&m), (1500, PmtuSource::Device), "larger probes pending");

        // First timeout: only the sizes above the best ack go out again.
        assert!(m.handle_timeout(t0 + secs(1)).is_empty());
        let again = drain(&mut m);
        assert_eq!(sizes(&again), [1420, 1440, 1450, 1460, 1480, 1492, 1500]);
        // Second timeout: they count as lost, the best ack is the path MTU.
        assert_eq!(m.handle_timeout(t0 + secs(2)), vec![PEER]);
        assert_eq!(mtu(&m), (1400, PmtuSource::Probe));
        assert!(drain(&mut m).is_empty());
    }

    #[test]
    fn frag_needed_during_a_round_ends_the_wait_for_larger_probes() {
        let (mut m, t0, probes) = one_peer(1500);
        assert!(m.handle_too_big(t0, PEER, 1400));
        ack_up_to(&mut m, t0, &probes, 1400);
        let p = m.path_mtu(PEER).unwrap();
        assert!(!p.probing, "nothing larger left to wait for");
        assert_eq!((p.outer, p.source), (1400, PmtuSource::Probe));
    }

    #[test]
    fn a_peer_that_never_answers_keeps_its_mtu_and_is_retried_with_backoff() {
        let (mut m, t0, _) = one_peer(1500);
        m.handle_timeout(t0 + secs(1));
        drain(&mut m);
        assert!(m.handle_timeout(t0 + secs(2)).is_empty());
        assert_eq!(mtu(&m), (1500, PmtuSource::Device));
        assert_eq!(m.poll_timeout(), Some(t0 + secs(2 + 5)));
        // The retry round is unanswered too: the wait doubles.
        m.handle_timeout(t0 + secs(7));
        assert!(!drain(&mut m).is_empty());
        m.handle_timeout(t0 + secs(8));
        m.handle_timeout(t0 + secs(9));
        assert_eq!(m.poll_timeout(), Some(t0 + secs(9 + 10)));
    }

    #[test]
    fn the_periodic_round_raises_a_path_that_grew() {
        let config = PmtuConfig {
            confirm_interval: secs(3600),
            ..PmtuConfig::default()
        };
        let (mut m, t0, probes) = one_peer_with(config, 1500);
        m.handle_too_big(t0, PEER, 1400);
        ack_up_to(&mut m, t0, &probes, 1400);
        assert_eq!(mtu(&m).0, 1400);

        let later = t0 + secs(600);
        assert_eq!(m.poll_timeout(), Some(later));
        m.handle_timeout(later);
        let probes = drain(&mut m);
        assert_eq!(sizes(&probes)[0], 1500, "the raise tries the whole range");
        ack_up_to(&mut m, later, &probes, 1500);
        assert_eq!(mtu(&m), (1500, PmtuSource::Probe));
    }

    #[test]
    fn acks_that_match_no_pending_probe_are_ignored() {
        let (mut m, t0, probes) = one_peer(1500);
        let ProbeMessage::Probe { id, size } = probes[0] else {
            panic!()
        };
        assert!(!m.handle_ack(t0, PEER, id + 1000, size), "unknown id");
        assert!(
            !m.handle_ack(t0, PEER, id, size - 100),
            "id of another size"
        );
        assert!(!m.handle_ack(t0, OTHER, id, size), "another peer");
        assert!(m.path_mtu(PEER).unwrap().probing);
    }

    #[test]
    fn the_ceiling_clamps_every_path_and_a_higher_one_is_probed() {
        let (mut m, t0, probes) = one_peer(1500);
        ack_up_to(&mut m, t0, &probes, 1500);
        m.set_ceiling(t0, 1400);
        assert_eq!(mtu(&m), (1400, PmtuSource::Device));
        assert!(drain(&mut m).is_empty(), "a lower ceiling needs no probe");
        m.set_ceiling(t0, 9000);
        let probes = drain(&mut m);
        assert_eq!(sizes(&probes)[0], 9000);
        ack_up_to(&mut m, t0, &probes, 9000);
        assert_eq!(mtu(&m).0, 9000);
    }

    #[test]
    fn a_round_in_flight_when_the_ceiling_drops_never_ends_above_it() {
        let (mut m, t0, probes) = one_peer(1500);
        // Probes went out at 1500; the device shrinks before their acks arrive.
        m.set_ceiling(t0, 1400);
        ack_up_to(&mut m, t0, &probes, 1500);
        assert_eq!(mtu(&m), (1400, PmtuSource::Probe));
        assert!(!m.path_mtu(PEER).unwrap().probing);
    }

    #[test]
    fn route_mtus_name_only_paths_narrower_than_the_tunnel_device() {
        let t0 = Instant::now();
        let mut m = PathMtus::new(PmtuConfig::default(), 1500);
        m.set_peers(t0, &[PEER, OTHER]);
        m.handle_too_big(t0, OTHER, 1400);
        assert_eq!(
            m.route_mtus(1450),
            BTreeMap::from([(OTHER, 1350)]),
            "PEER at 1500 fits the 1450 tunnel device"
        );
        // A tunnel device configured smaller than the path needs no route mtu at all.
        assert!(m.route_mtus(1300).is_empty());
    }

    #[test]
    fn peers_that_leave_are_forgotten_with_their_probes() {
        let t0 = Instant::now();
        let mut m = PathMtus::new(PmtuConfig::default(), 1500);
        m.set_peers(t0, &[PEER, OTHER]);
        m.set_peers(t0, &[PEER]);
        assert!(m.path_mtu(OTHER).is_none());
        assert!(std::iter::from_fn(|| m.poll_transmit()).all(|t| t.dst == PEER));
    }

    #[derive(Debug, Clone)]
    enum Event {
        TooBig(u32),
        /// The path carries this many bytes: every queued probe up to it is acked.
        Path(u16),
        Ceiling(u16),
        Wait(u64),
    }

    fn event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        prop_oneof![
            (0u32..70_000).prop_map(Event::TooBig),
            (500u16..9100).prop_map(Event::Path),
            prop::sample::select(vec![1280u16, 1400, 1500, 9000]).prop_map(Event::Ceiling),
            (0u64..700).prop_map(Event::Wait),
        ]
    }

    proptest::proptest! {
        /// Whatever ICMP, acks, device changes and time do: the path MTU stays within
        /// the floor and our device, probes never exceed the device, and a route's mtu
        /// is always the path less 50.
        #[test]
        fn the_path_mtu_stays_between_the_floor_and_the_device(
            events in proptest::collection::vec(event(), 1..60)
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut m = PathMtus::new(PmtuConfig::default(), 1500);
            m.set_peers(now, &[PEER]);
            for e in events {
                let probes: Vec<ProbeTransmit> = std::iter::from_fn(|| m.poll_transmit()).collect();
                for t in &probes {
                    if let ProbeMessage::Probe { size, .. } = t.probe {
                        proptest::prop_assert!(size <= m.ceiling());
                    }
                }
                match e {
                    Event::TooBig(mtu) => { m.handle_too_big(now, PEER, mtu); }
                    Event::Path(path) => {
                        for t in &probes {
                            if let ProbeMessage::Probe { id, size } = t.probe && size <= path {
                                m.handle_ack(now, PEER, id, size);
                            }
                        }
                    }
                    Event::Ceiling(c) => m.set_ceiling(now, c),
                    Event::Wait(s) => {
                        now += Duration::from_secs(s);
                        m.handle_timeout(now);
                    }
                }
                let p = m.path_mtu(PEER).unwrap();
                proptest::prop_assert!(p.outer <= m.ceiling(), "{p:?} above {}", m.ceiling());
                proptest::prop_assert!(p.outer >= FLOOR.min(m.ceiling()), "{p:?} below the floor");
                proptest::prop_assert_eq!(p.inner + 50, p.outer);
                if let Some(route) = m.route_mtus(u32::MAX).get(&PEER) {
                    proptest::prop_assert_eq!(*route, u32::from(p.inner));
                }
                proptest::prop_assert!(m.poll_timeout().is_some(), "a peer always has a next step");
            }
        }
    }
}
