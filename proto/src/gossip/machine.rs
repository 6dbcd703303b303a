//! The gossip state machine: [`Gossip`]. Sans-IO in the quinn-proto style — the shell
//! feeds datagrams, stream payloads and time in with `handle_*`, and drains datagrams,
//! stream requests and events with `poll_*`. Nothing here reads a clock or touches a
//! socket, so the simulation in `sim.rs` drives hundreds of nodes deterministically.
//!
//! Membership rules live in `machine/swim.rs`, anti-entropy and streams in
//! `machine/sync.rs`.

mod swim;
mod sync;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::broadcast::{BroadcastQueue, Topic, retransmit_limit};
use super::codec::{Reader, Writer};
use super::config::{ConfigError, GossipConfig};
use super::crypto::{Keyring, NonceSource, OpenError, SEAL_OVERHEAD};
use super::hlc::{Hlc, HlcClock, MAX_DRIFT_MS};
use super::members::{DownReason, Member, MemberState, MemberView};
use super::message::{ANYONE, Channel, Decoded, Header, Incarnation, Message, recipient_id};
use super::objects::{MAX_KEY_LEN, MAX_VALUE_LEN, ObjectEntry, ObjectStore};
use super::record::{NodeRecord, RecordError};
use super::replay::{ReplayWindow, Verdict};
use super::stats::{GossipDrop, GossipStats};
use super::subnet::{Claim, Loser, choose_subnet, conflict_loser, overlaps};
use crate::PeerInfo;

/// How far ahead of this node's wall clock a boot generation (wall-clock µs) may be:
/// clocks of one cluster are never a day apart, so anything further is a forgery or a
/// broken clock, and taking it would move a member (or us) past every real boot.
const MAX_GENERATION_AHEAD_US: u64 = 24 * 3600 * 1_000_000;

/// Most forgotten members remembered (with their replay windows); a few hundred bytes
/// each.
const MAX_FORGOTTEN: usize = 4096;

/// A datagram for the shell to send over UDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    /// Sealed; at most `max_packet` bytes.
    pub payload: Vec<u8>,
}

/// A full-state pull for the shell to carry over TCP: connect to `to`, write `request`
/// (length-prefixed, framing is the shell's), read the response and hand it to
/// [`Gossip::handle_stream_response`] — or report the failure with
/// [`Gossip::handle_stream_failed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    pub to: SocketAddr,
    pub request: Vec<u8>,
}

/// What changed in the cluster view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member came up (joined, restarted after being declared down, or refuted its death).
    MemberUp(NodeRecord),
    /// An up member's record changed (including a restart not noticed as a failure).
    MemberUpdated(NodeRecord),
    /// A member is gone; drop its routes.
    MemberDown { name: String, reason: DownReason },
    /// A cluster object was written (`Some`) or deleted (`None`), by anyone.
    ObjectChanged { key: String, value: Option<Vec<u8>> },
    /// This node claimed a (new) pod subnet. Persist both fields and pass them back in
    /// the local record after a restart.
    LocalSubnetChanged { subnet: Ipv4Net, claimed_at: Hlc },
    /// Every subnet of the pool is taken; this node has none until one frees up.
    SubnetPoolExhausted,
    /// A node at `addr` gossips under this node's name: a configuration error (names must
    /// be unique). Reported once per address.
    NameConflict { addr: SocketAddr },
}

/// Why a [`Gossip`] could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NewError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Why a cluster object cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("object keys must be 1 to {MAX_KEY_LEN} bytes")]
    BadKey,
    #[error(
        "object values must be at most {MAX_VALUE_LEN} bytes (one datagram); split larger objects"
    )]
    TooLarge,
    #[error(
        "the write held for this key carries the last timestamp there is; no later write can win"
    )]
    ClockExhausted,
}

/// Why a stream request was not served; the shell closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("stream payload dropped: {}", .0.as_str())]
    Dropped(GossipDrop),
}

/// Where a datagram goes: an address, and the recipient it is sealed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dest {
    addr: SocketAddr,
    /// [`recipient_id`] of the node expected there, or [`ANYONE`] (a seed whose name we
    /// do not know; only our own announcement may be sent so).
    recipient: u64,
}

impl Dest {
    fn named(addr: SocketAddr, name: &str) -> Self {
        Dest {
            addr,
            recipient: recipient_id(name),
        }
    }

    fn anyone(addr: SocketAddr) -> Self {
        Dest {
            addr,
            recipient: ANYONE,
        }
    }
}

/// How a batch of messages arrived, which decides what we may answer.
#[derive(Debug, Clone, Copy)]
struct Via {
    /// Where answers go: the sender at its recorded address (or, for a stranger, the
    /// address its own `Alive` gives, else the datagram's source). `None` for stream
    /// payloads (no direct replies).
    reply: Option<Dest>,
    /// Re-gossip what was news. Off for bulk full-state transfers: everyone else already
    /// has that state.
    rebroadcast: bool,
}

/// What is kept of a member after it is forgotten (reaped).
#[derive(Debug, Clone)]
struct Forgotten {
    /// The last claim held about it: only a newer one brings it back.
    inc: Incarnation,
    since: Instant,
    /// Its recorded gossip address, for telling it that it was declared down.
    addr: SocketAddr,
    last_notice: Option<Instant>,
}

/// The probe in flight.
#[derive(Debug, Clone)]
struct Probe {
    target: String,
    seq: u32,
    /// When to fall back to indirect probes.
    timeout_at: Instant,
    indirect_sent: bool,
    expected_nacks: u32,
    nacks: u32,
}

/// A ping we send on behalf of a ping-req.
#[derive(Debug, Clone)]
struct Relay {
    requester: Dest,
    requester_seq: u32,
    nack_at: Instant,
}

/// The full-state pull.
#[derive(Debug, Clone)]
struct Pull {
    /// Full state is wanted: a fresh joiner, a node cut off past the GC horizon, or one
    /// whose anti-entropy found too much to repair by datagrams.
    needed: bool,
    /// Drop local objects the server lacks that are older than the GC horizon.
    behind: bool,
    outstanding: Option<(u64, SocketAddr, Instant)>,
    next_attempt: Instant,
    next_id: u64,
    /// A node that contacted us while we knew no live member: pull from it when there is
    /// neither a live member nor a seed to pull from.
    hint: Option<Dest>,
    /// The member anti-entropy found far apart from us: pull from it first.
    prefer: Option<Dest>,
}

/// One node's gossip: SWIM membership with Lifeguard, its own record, cluster objects,
/// anti-entropy, sealing and subnet claims.
#[derive(Debug)]
pub struct Gossip {
    config: GossipConfig,
    keyring: Keyring,
    local: NodeRecord,
    /// [`recipient_id`] of our name: envelopes sealed for anyone else are refused.
    local_id: u64,
    local_version: u64,
    /// Our generation (boot) and incarnation; the generation also goes in every envelope.
    local_inc: Incarnation,
    left: bool,
    rng: StdRng,
    nonces: NonceSource,
    /// Wall-clock ms at an instant: HLC wall time is derived from `now`.
    wall_anchor: (Instant, u64),
    hlc: HlcClock,
    members: BTreeMap<String, Member>,
    /// Names of alive and suspect members (cached for random picks; rebuilt when dirty).
    live: Option<Vec<String>>,
    suspects: BTreeSet<String>,
    probe_ring: Vec<String>,
    probe_pos: usize,
    probe: Option<Probe>,
    next_probe: Instant,
    relays: BTreeMap<u32, Relay>,
    next_seq: u32,
    broadcasts: BroadcastQueue,
    objects: ObjectStore,
    windows: BTreeMap<(String, Channel), ReplayWindow>,
    /// Members forgotten (reaped) less than `tombstone_gc_after` ago: the last claim
    /// held about each and when it was forgotten. Their replay windows are kept as long,
    /// so datagrams captured while they lived cannot bring them back.
    forgotten: BTreeMap<String, Forgotten>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    streams: VecDeque<StreamRequest>,
    pull: Pull,
    next_gossip: Instant,
    next_push_pull: Instant,
    next_reannounce: Instant,
    seed_pos: usize,
    /// Lifeguard local health multiplier score, 0..=lhm_max.
    lhm: u32,
    claim_deadline: Option<Instant>,
    exhausted: bool,
    conflicts_reported: BTreeSet<SocketAddr>,
    /// Since when no other member has been up (for the GC-horizon check).
    alone_since: Option<Instant>,
    /// When each address we did not know as a live member was last greeted (rate limit).
    greeted: BTreeMap<SocketAddr, Instant>,
    stats: GossipStats,
}

impl Gossip {
    /// Starts a node at `now`.
    ///
    /// - `local`: this node's record. A statically configured subnet has
    ///   `subnet_static = true`; a previously persisted claim has `pod_subnet` and
    ///   `subnet_claimed_at` set; `pod_subnet = None` claims one from the pool.
    /// - `generation`: changes every boot and grows (boot wall-clock microseconds). Replay
    ///   windows and restarts key on it.
    /// - `rng_seed`: from the OS's entropy in production (it salts the AEAD nonces);
    ///   fixed in tests.
    /// - `wall_clock_ms`: Unix time in ms at `now`; HLC timestamps are derived from it
    ///   (re-anchor with [`Gossip::set_wall_clock`] if the wall clock steps).
    ///
    /// Returns `Err` iff the config or the record is invalid.
    pub fn new(
        config: GossipConfig,
        local: NodeRecord,
        keyring: Keyring,
        generation: u64,
        rng_seed: u64,
        now: Instant,
        wall_clock_ms: u64,
    ) -> Result<Self, NewError> {
        config.validate()?;
        local.validate_local()?;
        let mut rng = StdRng::seed_from_u64(rng_seed);
        let mut salt = [0u8; 16];
        salt[..8].copy_from_slice(&rng.random::<u64>().to_be_bytes());
        salt[8..].copy_from_slice(&(rng.random::<u64>() ^ generation).to_be_bytes());
        let t = config.timing.clone();
        let jitter = |rng: &mut StdRng, d: Duration| now + d.mul_f64(rng.random::<f64>());
        let next_probe = jitter(&mut rng, t.probe_interval);
        let next_gossip = jitter(&mut rng, t.gossip_interval);
        let next_push_pull = jitter(&mut rng, t.push_pull_interval);
        let next_reannounce = jitter(&mut rng, t.reannounce_interval);
        let own_addr = local.gossip_addr;
        let has_seeds = config.seeds.iter().any(|s| *s != own_addr);
        let needs_claim = config.subnet_pool.is_some() && local.pod_subnet.is_none();
        let mut gossip = Gossip {
            keyring,
            local_id: recipient_id(&local.name),
            local,
            local_version: 1,
            local_inc: Incarnation {
                generation,
                incarnation: 0,
            },
            left: false,
            rng,
            nonces: NonceSource::new(salt),
            wall_anchor: (now, wall_clock_ms),
            hlc: HlcClock::default(),
            members: BTreeMap::new(),
            live: None,
            suspects: BTreeSet::new(),
            probe_ring: Vec::new(),
            probe_pos: 0,
            probe: None,
            next_probe,
            relays: BTreeMap::new(),
            next_seq: 0,
            broadcasts: BroadcastQueue::default(),
            objects: ObjectStore::default(),
            windows: BTreeMap::new(),
            forgotten: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            streams: VecDeque::new(),
            pull: Pull {
                needed: has_seeds,
                behind: false,
                outstanding: None,
                next_attempt: now,
                next_id: 0,
                hint: None,
                prefer: None,
            },
            next_gossip,
            next_push_pull,
            next_reannounce,
            seed_pos: 0,
            lhm: 0,
            claim_deadline: needs_claim.then(|| now + t.claim_wait),
            exhausted: false,
            conflicts_reported: BTreeSet::new(),
            alone_since: Some(now),
            greeted: BTreeMap::new(),
            stats: GossipStats::default(),
            config,
        };
        // Join: announce ourselves to every seed, then pull full state from one.
        let alive = gossip.local_alive();
        let seeds: Vec<SocketAddr> = gossip.other_seeds().collect();
        for seed in seeds {
            gossip.send(Dest::anyone(seed), std::slice::from_ref(&alive), false);
        }
        gossip.pull_tick(now);
        gossip.check_subnet(now);
        Ok(gossip)
    }

    /// Processes one UDP datagram from `from`. Never panics; whatever is dropped is
    /// counted in [`Gossip::stats`].
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        if bytes.len() > self.config.max_packet {
            self.stats.count_drop(GossipDrop::Oversized);
            return;
        }
        let (header, body) = match self.open_or_stale(now, bytes, Channel::Datagram) {
            Ok(opened) => opened,
            Err(Some(stale)) => {
                self.heard_from_stale_boot(now, &stale);
                return;
            }
            Err(None) => return,
        };
        let Ok(messages) = super::message::decode_compound(&body) else {
            self.stats.count_drop(GossipDrop::Malformed);
            return;
        };
        if !self.sealed_for_us(&header, &messages) {
            self.stats.count_drop(GossipDrop::Misdirected);
            return;
        }
        self.accept_seq(&header, &messages);
        let via = Via {
            reply: Some(self.reply_dest(&header, &messages, from)),
            rebroadcast: true,
        };
        self.process(now, via, &header, messages);
        self.heard_from(now, &header);
    }

    /// Runs every timer due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(p) = &self.probe
            && !p.indirect_sent
            && p.timeout_at <= now
        {
            self.probe_timeout(now);
        }
        if self.next_probe <= now {
            self.probe_tick(now);
        }
        self.relay_tick(now);
        if self.next_gossip <= now {
            self.gossip_tick(now);
        }
        if self.next_push_pull <= now {
            self.next_push_pull = now + self.config.timing.push_pull_interval;
            self.push_pull_tick(now);
        }
        if self.next_reannounce <= now {
            self.next_reannounce = now + self.config.timing.reannounce_interval;
            self.reannounce_tick(now);
        }
        self.pull_tick(now);
        if self.claim_deadline.is_some_and(|t| t <= now) {
            self.check_subnet(now);
        }
    }

    /// When [`Gossip::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self
            .next_probe
            .min(self.next_gossip)
            .min(self.next_push_pull)
            .min(self.next_reannounce);
        if let Some(p) = &self.probe
            && !p.indirect_sent
        {
            next = next.min(p.timeout_at);
        }
        if let Some(r) = self.relays.values().map(|r| r.nack_at).min() {
            next = next.min(r);
        }
        if self.pull.needed {
            next = next.min(match self.pull.outstanding {
                Some((_, _, deadline)) => deadline,
                None => self.pull.next_attempt,
            });
        }
        if let Some(t) = self.claim_deadline {
            next = next.min(t);
        }
        Some(next)
    }

    /// The next datagram to send. Drain after every `handle_*` call.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next cluster change.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next full-state pull to carry over TCP.
    pub fn poll_stream(&mut self) -> Option<StreamRequest> {
        self.streams.pop_front()
    }

    /// Changes the local record (`f` may change anything but the name), bumps its
    /// version and gossips it. Returns `Err` iff the node has left (a new record would
    /// announce it alive again) or the result is invalid; the record is then unchanged.
    pub fn update_local(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut NodeRecord),
    ) -> Result<(), RecordError> {
        if self.left {
            return Err(RecordError::Left);
        }
        let mut record = self.local.clone();
        f(&mut record);
        if record.name != self.local.name {
            return Err(RecordError::NameChanged);
        }
        record.validate_local()?;
        if record != self.local {
            self.local = record;
            self.bump_local();
            self.check_subnet(now);
        }
        Ok(())
    }

    /// Writes (`Some`) or deletes (`None`) a cluster object, stamped with the HLC at
    /// `now` — or just past the write held for the key, if that is later: a local write
    /// always wins — and gossips it. Returns `Err` iff the key or value is out of bounds
    /// (or, unreachably, the held write has the last timestamp there is).
    pub fn set_object(
        &mut self,
        now: Instant,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), ObjectError> {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(ObjectError::BadKey);
        }
        if value.as_ref().is_some_and(|v| v.len() > MAX_VALUE_LEN) {
            return Err(ObjectError::TooLarge);
        }
        let held = self.objects.entry(key).map_or(Hlc(0), |e| e.hlc);
        let hlc = self
            .hlc
            .tick_after(self.wall_ms(now), held)
            .ok_or(ObjectError::ClockExhausted)?;
        let entry = ObjectEntry {
            value,
            hlc,
            writer: self.local.name.clone(),
        };
        self.apply_object(now, key, entry, true);
        Ok(())
    }

    /// A fresh HLC timestamp at `now`: above every timestamp this node has issued or
    /// seen. The shell stamps what it writes with it — a Service's creation time, the
    /// version of a split Service — so stamps order like the writes they go with.
    pub fn stamp(&mut self, now: Instant) -> Hlc {
        self.hlc.tick(self.wall_ms(now))
    }

    /// Leaves the cluster: gossips `Left` (peers drop this node at once) and stops
    /// probing. Keep driving the node until [`Gossip::pending_broadcasts`] is 0 or a
    /// second has passed, then drop it.
    pub fn leave(&mut self, now: Instant) {
        if self.left {
            return;
        }
        self.left = true;
        self.probe = None;
        self.local_inc = self.incarnation_above(self.local_inc);
        let left = Message::Left {
            name: self.local.name.clone(),
            inc: self.local_inc,
        };
        self.broadcasts
            .push(Topic::Member(self.local.name.clone()), &left);
        let targets = self.random_live(self.config.timing.gossip_fanout, None);
        for name in targets {
            if let Some(dest) = self.member_dest(&name) {
                self.send(dest, std::slice::from_ref(&left), true);
            }
        }
        self.next_gossip = self.next_gossip.min(now);
    }

    /// Re-anchors HLC wall time: `wall_clock_ms` is Unix time in ms at `now`.
    pub fn set_wall_clock(&mut self, now: Instant, wall_clock_ms: u64) {
        self.wall_anchor = (now, wall_clock_ms);
    }

    /// Every member, the local node first, then by name.
    pub fn members(&self) -> impl Iterator<Item = MemberView<'_>> {
        let local = MemberView {
            name: &self.local.name,
            addr: self.local.gossip_addr,
            state: if self.left {
                MemberState::Left
            } else {
                MemberState::Alive
            },
            incarnation: self.local_inc,
            version: self.local_version,
            last_heard: None,
            record: (!self.left).then_some(&self.local),
            is_local: true,
        };
        std::iter::once(local).chain(self.members.values().map(Member::view))
    }

    /// The peers the data path reaches: `static_peers` (nodes that do not gossip, such as
    /// a kernel vxlan node), each replaced by the up member of the same name, plus every
    /// other up member that has a pod subnet; by name. The local node is never one.
    pub fn peers(&self, static_peers: &[PeerInfo]) -> Vec<PeerInfo> {
        let mut peers: BTreeMap<String, PeerInfo> = static_peers
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        let up = self.members().filter(|m| !m.is_local && m.state.is_up());
        for info in up.filter_map(|m| m.record?.peer_info()) {
            peers.insert(info.name.clone(), info);
        }
        peers.into_values().collect()
    }

    /// One member by name (the local node included).
    pub fn member(&self, name: &str) -> Option<MemberView<'_>> {
        self.members().find(|m| m.name == name)
    }

    /// Live cluster objects in key order.
    pub fn objects(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.objects.live()
    }

    pub fn object(&self, key: &str) -> Option<&[u8]> {
        self.objects.get(key)
    }

    /// Tombstones not yet collected.
    pub fn tombstones(&self) -> usize {
        self.objects.tombstones()
    }

    pub fn local(&self) -> &NodeRecord {
        &self.local
    }

    pub fn generation(&self) -> u64 {
        self.local_inc.generation
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Key rotation: install, switch primary, remove (see [`Keyring`]).
    pub fn keyring_mut(&mut self) -> &mut Keyring {
        &mut self.keyring
    }

    pub fn stats(&self) -> &GossipStats {
        &self.stats
    }

    /// Lifeguard local health score (0 healthy, up to `lhm_max`): how much this node
    /// currently stretches its probe interval and timeout.
    pub fn health_score(&self) -> u32 {
        self.lhm
    }

    /// Broadcasts not yet sent their full number of times (wait for 0 after `leave`).
    pub fn pending_broadcasts(&self) -> usize {
        self.broadcasts.len()
    }

    /// Sizes of every table an authenticated peer can make grow, for tests that bound
    /// them: members, forgotten members, replay windows, relays, greeted addresses,
    /// suspects, broadcasts.
    #[cfg(test)]
    pub(crate) fn table_sizes(&self) -> [usize; 7] {
        [
            self.members.len(),
            self.forgotten.len(),
            self.windows.len(),
            self.relays.len(),
            self.greeted.len(),
            self.suspects.len(),
            self.broadcasts.len(),
        ]
    }

    // ---- helpers -------------------------------------------------------------------

    fn wall_ms(&self, now: Instant) -> u64 {
        let (at, ms) = self.wall_anchor;
        let since = now.saturating_duration_since(at).as_millis() as u64;
        ms.saturating_add(since)
    }

    /// HLC below which tombstones are collected.
    fn gc_horizon(&self, now: Instant) -> Hlc {
        let gc = self.config.timing.tombstone_gc_after.as_millis() as u64;
        Hlc::new(self.wall_ms(now).saturating_sub(gc), 0)
    }

    fn other_seeds(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let own = self.local.gossip_addr;
        self.config.seeds.iter().copied().filter(move |s| *s != own)
    }

    fn local_alive(&self) -> Message {
        Message::Alive {
            inc: self.local_inc,
            version: self.local_version,
            record: self.local.clone(),
        }
    }

    /// A new version of our record: new incarnation too (so it also refutes any
    /// suspicion), gossiped.
    fn bump_local(&mut self) {
        self.local_version += 1;
        self.local_inc = self.incarnation_above(self.local_inc);
        let alive = self.local_alive();
        self.broadcasts
            .push(Topic::Member(self.local.name.clone()), &alive);
    }

    /// The smallest local incarnation above both ours and `claim`: the next incarnation
    /// of this boot, or — if `claim` is about a later boot of ours (our clock stepped
    /// back) or the incarnation is exhausted — the first of the next generation. Claims
    /// are plausible (see [`Gossip::plausible`]), so this never runs out; if it did,
    /// ours is kept.
    fn incarnation_above(&self, claim: Incarnation) -> Incarnation {
        let floor = self.local_inc.max(claim);
        let next = if floor.generation > self.local_inc.generation {
            None
        } else {
            floor.incarnation.checked_add(1)
        };
        match next {
            Some(incarnation) => Incarnation {
                generation: floor.generation,
                incarnation,
            },
            None => floor
                .generation
                .checked_add(1)
                .map_or(self.local_inc, |generation| Incarnation {
                    generation,
                    incarnation: 0,
                }),
        }
    }

    /// Highest boot generation we believe: a day past our own clock (or our own
    /// generation, if that is later).
    fn generation_bound(&self, now: Instant) -> u64 {
        let wall_us = self.wall_ms(now).saturating_mul(1000);
        self.local_inc
            .generation
            .max(wall_us)
            .saturating_add(MAX_GENERATION_AHEAD_US)
    }

    /// Whether a received claim could come from an honest node: an incarnation below
    /// `u64::MAX` (there is always a next one to refute with) and a generation within
    /// [`Gossip::generation_bound`].
    fn plausible(&self, now: Instant, inc: Incarnation) -> bool {
        inc.incarnation < u64::MAX && inc.generation <= self.generation_bound(now)
    }

    fn retransmit_limit(&mut self) -> u32 {
        retransmit_limit(
            self.config.timing.retransmit_mult,
            self.live_names().len() + 1,
        )
    }

    /// Names of up members (cached; rebuilt after membership changes).
    fn live_names(&mut self) -> &[String] {
        self.refresh_live();
        self.live.as_deref().unwrap_or(&[])
    }

    fn refresh_live(&mut self) {
        if self.live.is_none() {
            self.live = Some(
                self.members
                    .iter()
                    .filter(|(_, m)| m.state.is_up())
                    .map(|(n, _)| n.clone())
                    .collect(),
            );
        }
    }

    /// Up to `k` distinct random up members, never `except`.
    fn random_live(&mut self, k: usize, except: Option<&str>) -> Vec<String> {
        self.refresh_live();
        let live = self.live.as_deref().unwrap_or(&[]);
        let mut picked: Vec<String> = Vec::with_capacity(k);
        if live.len() > 4 * (k + 1) {
            // Large cluster: rejection sampling, O(k) expected.
            let mut seen = BTreeSet::new();
            while picked.len() < k {
                let i = self.rng.random_range(0..live.len());
                if seen.insert(i) && except != Some(live[i].as_str()) {
                    picked.push(live[i].clone());
                }
            }
            return picked;
        }
        // Small cluster: partial Fisher–Yates over indexes.
        let mut idx: Vec<usize> = (0..live.len()).collect();
        let mut i = 0;
        while picked.len() < k && i < idx.len() {
            let j = self.rng.random_range(i..idx.len());
            idx.swap(i, j);
            let name = &live[idx[i]];
            if except != Some(name.as_str()) {
                picked.push(name.clone());
            }
            i += 1;
        }
        picked
    }

    /// The member `name` at its recorded address.
    fn member_dest(&self, name: &str) -> Option<Dest> {
        self.members
            .get(name)
            .map(|m| Dest::named(m.record.gossip_addr, name))
    }

    /// Whether an accepted envelope may be processed here: sealed for us, or for anyone
    /// and carrying nothing but its sender's own announcement (a joiner greeting a seed
    /// whose name it does not know). A captured packet replayed at another node than
    /// the one it was sealed for is refused.
    fn sealed_for_us(&self, header: &Header, messages: &[Decoded]) -> bool {
        header.recipient == self.local_id
            || (header.recipient == ANYONE
                && messages.iter().all(|d| is_own_alive(d, &header.sender)))
    }

    /// Where to answer an envelope that came from `from`: the sender's recorded address
    /// if we know this boot of it, else the address its own `Alive` in the envelope
    /// gives, else `from` — the one address anybody can spoof.
    fn reply_dest(&self, header: &Header, messages: &[Decoded], from: SocketAddr) -> Dest {
        let recorded = self
            .members
            .get(&header.sender)
            .filter(|m| m.inc.generation == header.generation)
            .map(|m| m.record.gossip_addr);
        let announced = messages.iter().find_map(|d| match d {
            Decoded::Message(Message::Alive { record, .. }) if record.name == header.sender => {
                Some(record.gossip_addr)
            }
            _ => None,
        });
        Dest::named(recorded.or(announced).unwrap_or(from), &header.sender)
    }

    /// Seals `messages` (and, if `piggyback`, as many pending broadcasts as fit) into
    /// datagrams for `dest`. Messages that do not fit one datagram go in the next.
    /// Nothing is piggybacked on a datagram sealed for anyone.
    fn send(&mut self, dest: Dest, messages: &[Message], piggyback: bool) {
        let piggyback = piggyback && dest.recipient != ANYONE;
        let mut rest = messages;
        loop {
            let (seq, nonce) = self.nonces.next();
            let header = Header {
                channel: Channel::Datagram,
                sender: self.local.name.clone(),
                recipient: dest.recipient,
                generation: self.local_inc.generation,
                seq,
            };
            let mut w = Writer::new();
            header.encode(&mut w);
            let limit = self.config.max_packet - SEAL_OVERHEAD;
            let mut count = 0;
            while let Some((m, tail)) = rest.split_first() {
                if w.len() + m.encoded_len() > limit {
                    if count > 0 {
                        break;
                    }
                    // Cannot happen with validated records and objects (a test checks the
                    // largest of each against MIN_PACKET); never emit an oversized datagram.
                    rest = tail;
                    continue;
                }
                if m.encode(&mut w).is_ok() {
                    count += 1;
                }
                rest = tail;
            }
            if piggyback && rest.is_empty() && w.len() < limit {
                let budget = limit - w.len();
                let retransmits = self.retransmit_limit();
                count += self.broadcasts.fill(budget, retransmits, &mut w);
            }
            if count == 0 {
                return;
            }
            let payload = self.keyring.seal(&self.config.cluster_name, nonce, &w.buf);
            self.stats.datagrams_sent += 1;
            self.stats.bytes_sent += payload.len() as u64;
            self.transmits.push_back(Transmit {
                dst: dest.addr,
                payload,
            });
            if rest.is_empty() {
                return;
            }
        }
    }

    /// Opens sealed bytes on `channel` and checks the replay window (without recording
    /// the sequence number: the caller does once the body decoded). `Err` iff dropped;
    /// the drop is counted.
    fn open(
        &mut self,
        now: Instant,
        bytes: &[u8],
        channel: Channel,
    ) -> Result<(Header, Vec<u8>), GossipDrop> {
        let result = self.open_uncounted(now, bytes, channel);
        if let Err((reason, _)) = &result {
            self.stats.count_drop(*reason);
        }
        result.map_err(|(reason, _)| reason)
    }

    /// As [`Gossip::open`], but a drop for a stale generation comes with the envelope's
    /// header (`Err(Some(header))`) so the sender can be told.
    fn open_or_stale(
        &mut self,
        now: Instant,
        bytes: &[u8],
        channel: Channel,
    ) -> Result<(Header, Vec<u8>), Option<Header>> {
        let result = self.open_uncounted(now, bytes, channel);
        result.map_err(|(reason, header)| {
            self.stats.count_drop(reason);
            header.filter(|_| reason == GossipDrop::StaleGeneration)
        })
    }

    fn open_uncounted(
        &self,
        now: Instant,
        bytes: &[u8],
        channel: Channel,
    ) -> Result<(Header, Vec<u8>), (GossipDrop, Option<Header>)> {
        let plain = self
            .keyring
            .open(&self.config.cluster_name, bytes)
            .map_err(|e| match e {
                OpenError::Truncated => (GossipDrop::Truncated, None),
                OpenError::UnknownVersion => (GossipDrop::UnknownVersion, None),
                OpenError::DecryptFailed => (GossipDrop::DecryptFailed, None),
            })?;
        let mut r = Reader::new(&plain);
        let header = Header::decode(&mut r).map_err(|_| (GossipDrop::Malformed, None))?;
        if header.channel != channel {
            return Err((GossipDrop::Malformed, None));
        }
        if header.sender == self.local.name {
            return Err((GossipDrop::FromSelf, None));
        }
        if header.generation > self.generation_bound(now) {
            return Err((GossipDrop::Implausible, None));
        }
        let known_generation = self
            .members
            .get(&header.sender)
            .map(|m| m.inc.generation)
            .or_else(|| self.forgotten.get(&header.sender).map(|f| f.inc.generation));
        if known_generation.is_some_and(|g| header.generation < g) {
            return Err((GossipDrop::StaleGeneration, Some(header)));
        }
        let key = (header.sender.clone(), channel);
        match self
            .windows
            .get(&key)
            .map(|w| w.check(header.generation, header.seq))
        {
            Some(Verdict::Replayed) => return Err((GossipDrop::Replayed, None)),
            Some(Verdict::StaleGeneration) => {
                return Err((GossipDrop::StaleGeneration, Some(header)));
            }
            Some(Verdict::Fresh) | None => {}
        }
        let body = plain[plain.len() - r.remaining()..].to_vec();
        Ok((header, body))
    }

    /// Records an accepted envelope's sequence number. A window is created only for a
    /// member (or a forgotten one), or for a sender whose envelope carries its own
    /// `Alive` (a joiner announcing itself): made-up sender names leave nothing behind.
    fn accept_seq(&mut self, header: &Header, messages: &[Decoded]) {
        let key = (header.sender.clone(), header.channel);
        if let Some(w) = self.windows.get_mut(&key) {
            w.accept(header.generation, header.seq);
            return;
        }
        let announces = messages.iter().any(|d| is_own_alive(d, &header.sender));
        if announces
            || self.members.contains_key(&header.sender)
            || self.forgotten.contains_key(&header.sender)
        {
            self.windows
                .insert(key, ReplayWindow::new(header.generation, header.seq));
        }
    }

    fn seal_stream(&mut self, channel: Channel, recipient: u64, body: &[u8]) -> Vec<u8> {
        let (seq, nonce) = self.nonces.next();
        let header = Header {
            channel,
            sender: self.local.name.clone(),
            recipient,
            generation: self.local_inc.generation,
            seq,
        };
        let mut w = Writer::new();
        header.encode(&mut w);
        w.raw(body);
        self.keyring.seal(&self.config.cluster_name, nonce, &w.buf)
    }

    fn gossip_tick(&mut self, now: Instant) {
        self.next_gossip = now + self.config.timing.gossip_interval;
        self.expire_suspicions(now);
        if self.broadcasts.is_empty() {
            return;
        }
        let targets = self.random_live(self.config.timing.gossip_fanout, None);
        for name in targets {
            let Some(dest) = self.member_dest(&name) else {
                continue;
            };
            self.send(dest, &[], true);
            if self.broadcasts.is_empty() {
                break;
            }
        }
    }

    fn relay_tick(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .relays
            .iter()
            .filter(|(_, r)| r.nack_at <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in due {
            if let Some(r) = self.relays.remove(&seq) {
                self.send(
                    r.requester,
                    &[Message::Nack {
                        seq: r.requester_seq,
                    }],
                    false,
                );
            }
        }
    }

    fn reannounce_tick(&mut self, now: Instant) {
        self.reap(now);
        let horizon = self.gc_horizon(now);
        self.stats.tombstones_collected += self.objects.gc(horizon) as u64;
        let anyone_up = !self.live_names().is_empty();
        if anyone_up {
            if self
                .alone_since
                .is_some_and(|t| now - t > self.config.timing.tombstone_gc_after)
            {
                // Cut off from everyone for longer than tombstones live: our objects may
                // hold deletes we never heard of. Pull full state and drop zombies.
                self.pull.needed = true;
                self.pull.behind = true;
            }
            self.alone_since = None;
        } else if self.alone_since.is_none() {
            self.alone_since = Some(now);
        }
        if self.left {
            return;
        }
        let alive = self.local_alive();
        // One random dead member: if it is back (a healed partition), it answers.
        let dead: Vec<Dest> = self
            .members
            .iter()
            .filter(|(_, m)| m.state == MemberState::Dead)
            .map(|(name, m)| Dest::named(m.record.gossip_addr, name))
            .collect();
        if !dead.is_empty() {
            let i = self.rng.random_range(0..dead.len());
            self.send(dead[i], std::slice::from_ref(&alive), false);
        }
        // One seed that is not a live member (round-robin).
        let live_addrs: BTreeSet<SocketAddr> = self
            .members
            .values()
            .filter(|m| m.state.is_up())
            .map(|m| m.record.gossip_addr)
            .collect();
        let candidates: Vec<SocketAddr> = self
            .other_seeds()
            .filter(|s| !live_addrs.contains(s))
            .collect();
        if !candidates.is_empty() {
            self.seed_pos = (self.seed_pos + 1) % candidates.len();
            self.send(
                Dest::anyone(candidates[self.seed_pos]),
                std::slice::from_ref(&alive),
                false,
            );
        }
    }

    /// Forgets members dead or left for longer than `dead_reap_after`, keeping their last
    /// claim and replay windows (see `forgotten`) until `tombstone_gc_after`.
    fn reap(&mut self, now: Instant) {
        let after = self.config.timing.dead_reap_after;
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| {
                !m.state.is_up() && now.saturating_duration_since(m.state_since) >= after
            })
            .map(|(n, _)| n.clone())
            .collect();
        let freed = !gone.is_empty();
        for name in gone {
            if let Some(m) = self.members.remove(&name) {
                self.forget(name, &m, now);
            }
        }
        let keep = self.config.timing.tombstone_gc_after;
        self.forgotten
            .retain(|_, f| now.saturating_duration_since(f.since) < keep);
        // Windows of anyone else: forgotten for good, or an announcement we refused.
        let (members, forgotten) = (&self.members, &self.forgotten);
        self.windows.retain(|(sender, _), _| {
            members.contains_key(sender) || forgotten.contains_key(sender)
        });
        // Subnets of forgotten members are free again: a node that found the pool full
        // (with no subnet, or keeping a losing one) tries again.
        if freed && (self.local.pod_subnet.is_none() || self.exhausted) {
            self.check_subnet(now);
        }
    }

    /// Remembers a reaped member's last claim. At most [`MAX_FORGOTTEN`] are kept; beyond,
    /// the longest forgotten goes first.
    fn forget(&mut self, name: String, m: &Member, now: Instant) {
        if self.forgotten.len() >= MAX_FORGOTTEN
            && let Some(oldest) = self
                .forgotten
                .iter()
                .min_by_key(|(_, f)| f.since)
                .map(|(n, _)| n.clone())
        {
            self.forgotten.remove(&oldest);
        }
        let forgotten = Forgotten {
            inc: m.inc,
            since: now,
            addr: m.record.gossip_addr,
            last_notice: None,
        };
        self.forgotten.insert(name, forgotten);
    }

    /// Claims a subnet if we have none (once full state is in or `claim_wait` passed),
    /// or re-claims if ours conflicts with a member whose claim wins.
    fn check_subnet(&mut self, now: Instant) {
        let Some(pool) = self.config.subnet_pool else {
            return;
        };
        if self.local.subnet_static || self.left {
            self.claim_deadline = None;
            return;
        }
        let Some(mine) = self.local.pod_subnet else {
            let waited = self.claim_deadline.is_none_or(|t| t <= now);
            if !self.pull.needed || waited {
                self.claim_deadline = None;
                self.claim(now, pool);
            }
            return;
        };
        self.claim_deadline = None;
        let local = Claim {
            owner: &self.local.name,
            subnet: mine,
            is_static: false,
            claimed_at: self.local.subnet_claimed_at,
        };
        let reserved = self.config.reserved.iter().any(|r| overlaps(*r, mine));
        let loses = reserved
            || self.members.values().filter(|m| m.state.is_up()).any(|m| {
                let Some(subnet) = slot_sized(m.record.pod_subnet, pool) else {
                    return false;
                };
                let other = Claim {
                    owner: &m.record.name,
                    subnet,
                    is_static: m.record.subnet_static,
                    claimed_at: m.record.subnet_claimed_at,
                };
                conflict_loser(&local, &other) == Some(Loser::A)
            });
        if loses {
            self.claim(now, pool);
        }
    }

    fn claim(&mut self, now: Instant, pool: super::subnet::SubnetPool) {
        // Every subnet any member holds, dead ones too: a dead node that comes back with
        // its persisted claim would win it back anyway. Subnets wider than a slot are a
        // misconfiguration nobody yields to (they would take the whole pool).
        let taken: Vec<Ipv4Net> = self
            .members
            .values()
            .filter_map(|m| slot_sized(m.record.pod_subnet, pool))
            .chain(self.config.reserved.iter().copied())
            .collect();
        match choose_subnet(&self.local.name, pool.cluster, pool.prefix, &taken) {
            Some(subnet) => {
                self.exhausted = false;
                let claimed_at = self.hlc.tick(self.wall_ms(now));
                self.local.pod_subnet = Some(subnet);
                self.local.subnet_claimed_at = claimed_at;
                self.bump_local();
                self.events
                    .push_back(Event::LocalSubnetChanged { subnet, claimed_at });
            }
            None => {
                // Keep what we have (if anything): without a subnet our pods lose their
                // routes for sure, with one they may share it until a slot frees up
                // (re-checked whenever a member is forgotten).
                if !self.exhausted {
                    self.exhausted = true;
                    self.events.push_back(Event::SubnetPoolExhausted);
                }
            }
        }
    }

    /// Applies a cluster object write from anywhere; emits and (if `rebroadcast`)
    /// gossips it when it wins. A write stamped more than [`MAX_DRIFT_MS`] ahead of our
    /// clock is dropped and counted: it would beat every write for as long.
    fn apply_object(&mut self, now: Instant, key: &str, entry: ObjectEntry, rebroadcast: bool) {
        use super::objects::Applied;
        let wall = self.wall_ms(now);
        if entry.hlc.physical_ms() > wall.saturating_add(MAX_DRIFT_MS) {
            self.stats.implausible_claims += 1;
            return;
        }
        self.hlc.observe(entry.hlc, wall);
        let message = Message::Object {
            key: key.to_owned(),
            hlc: entry.hlc,
            writer: entry.writer.clone(),
            value: entry.value.clone(),
        };
        let value = entry.value.clone();
        match self.objects.apply(key, entry, self.gc_horizon(now)) {
            Applied::Ignored => return,
            Applied::Stored => {}
            Applied::Changed => self.events.push_back(Event::ObjectChanged {
                key: key.to_owned(),
                value,
            }),
        }
        if rebroadcast {
            self.broadcasts
                .push(Topic::Object(key.to_owned()), &message);
        }
    }

    fn member_down(&mut self, name: &str, reason: DownReason) {
        self.events.push_back(Event::MemberDown {
            name: name.to_owned(),
            reason,
        });
    }

    fn subnet_conflicts_possible(&self, record: &NodeRecord) -> bool {
        match (self.local.pod_subnet, record.pod_subnet) {
            (Some(a), Some(b)) => overlaps(a, b),
            _ => false,
        }
    }
}

/// The sender's own `Alive` (its announcement).
fn is_own_alive(d: &Decoded, sender: &str) -> bool {
    matches!(d, Decoded::Message(Message::Alive { record, .. }) if record.name == sender)
}

/// `subnet`, if it is no wider than one slot of `pool`: only such subnets are yielded to
/// or avoided. A wider one (a static supernet of a misconfigured node) would strip every
/// node of its claim and leave none to take.
fn slot_sized(subnet: Option<Ipv4Net>, pool: super::subnet::SubnetPool) -> Option<Ipv4Net> {
    subnet.filter(|s| s.prefix_len() >= pool.prefix)
}

#[cfg(test)]
mod tests;
