//! One peer's path ladder (issue 8, item 4): probes every allowed rung, keeps each one's
//! RTT and loss, and chooses the first rung in ladder order that works.
//!
//! Sans-IO, as [`PathMtus`](crate::dataplane::pmtu::PathMtus): the shell feeds the
//! candidates ([`set_candidates`](Ladder::set_candidates), from
//! [`PathPolicy::resolve`](super::PathPolicy::resolve)), the relay
//! ([`set_relay`](Ladder::set_relay), from [`choose_relay`](super::choose_relay)) and
//! probe acks with the time they arrived; it sends what
//! [`poll_probe`](Ladder::poll_probe) returns at once, wakes the machine at
//! [`poll_timeout`](Ladder::poll_timeout), and moves the peer's traffic when
//! [`poll_switch`](Ladder::poll_switch) says so. Numbers (see docs/architecture.md,
//! "Path ladder"):
//!
//! - Every usable rung is probed every `probe_interval` (1 s); a probe unanswered after
//!   `probe_timeout` (500 ms) is lost.
//! - A lost probe on a rung that is not down makes it **suspect**: probes go out at
//!   once and then every `suspect_interval` (50 ms) until one is acked. `down_after`
//!   (8) losses in a row mark it down as **cut**. A rung that just broke is thus down
//!   within `probe_interval + 2 × probe_timeout + (down_after − 2) × suspect_interval`
//!   = 2.3 s; at 20 % random loss a run of losses that starts reaches 8 with
//!   p = 0.2⁷ ≈ 1.3·10⁻⁵, one false cut per rung in ~6 days.
//! - A loss of `max_loss_percent` (50 %) or more over the last `window` (50) probes,
//!   once `min_window` (20) are in, marks a rung down as **lossy**.
//! - A rung that is not up and has an ack in hand is probed every `suspect_interval`
//!   too; `up_after` (3) acks in a row mark it **up**, and its loss window starts afresh.
//! - A rung is **good** (settled) when it has been up for its hysteresis (10 s), has at
//!   least `min_window` outcomes since, and lost under `return_loss_percent` (25 %) of
//!   them. A rung better than the chosen one is probed every `verify_interval` (250 ms)
//!   while it serves its hysteresis, so those 10 s hold ~40 probes.
//! - **Choice**: at first, the first usable candidate, on the policy's word, before any
//!   probe answered. A chosen rung that is cut is left at once for the first good rung
//!   in ladder order, else the first that is up (so the fallback lands ≤ 3 s after the
//!   break); with none up the ladder stays (nothing known is better). A chosen rung
//!   that is lossy still carries most packets: it is left only for a good rung. A
//!   rung better than the chosen one is returned to once it is good.
//! - **Damping**: a rung that goes down within `flap_window` (5 min) of the ladder
//!   returning to it flapped, and its hysteresis doubles, up to `max_hysteresis`
//!   (320 s); one that was up for `flap_window` before going down is back to 10 s.
//! - A peer that answers no probe at all (an older node) stays on its first candidate.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::PathKind;
use crate::wire::probe::{MIN_SIZE, ProbeMessage};

// A ladder probe's ack must never be taken for a path-MTU one (see [`Probe::message`]).
const _: () = assert!(MIN_SIZE < crate::dataplane::pmtu::FLOOR);

/// Timing and thresholds of the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LadderConfig {
    /// How often every usable rung is probed while nothing is in doubt.
    pub probe_interval: Duration,
    /// How often a suspect rung (a loss not yet answered by an ack) or a promising one
    /// (an ack on a rung not yet up) is probed.
    pub suspect_interval: Duration,
    /// How often a rung better than the chosen one is probed while it serves its
    /// hysteresis, so the return rests on many probes.
    pub verify_interval: Duration,
    /// How long a probe may go unanswered before it counts as lost.
    pub probe_timeout: Duration,
    /// Losses in a row that mark a rung down.
    pub down_after: u32,
    /// Acks in a row that mark a rung up.
    pub up_after: u32,
    /// How many of the latest probe outcomes the loss rate is taken over.
    pub window: usize,
    /// Outcomes needed before the loss rate may mark a rung down.
    pub min_window: usize,
    /// A loss rate at or above this (percent) marks a rung down.
    pub max_loss_percent: u32,
    /// How long a better rung must stay up before the ladder returns to it.
    pub hysteresis: Duration,
    /// A better rung is returned to only while its loss since it came up is below this
    /// (percent): "up" says it is not broken, this says it is good.
    pub return_loss_percent: u32,
    /// A rung that goes down within this long of the ladder returning to it flapped:
    /// its hysteresis doubles. One that was up this long before going down starts again
    /// from `hysteresis`.
    pub flap_window: Duration,
    /// The most a rung's hysteresis grows to by flapping.
    pub max_hysteresis: Duration,
}

impl Default for LadderConfig {
    fn default() -> Self {
        LadderConfig {
            probe_interval: Duration::from_secs(1),
            suspect_interval: Duration::from_millis(50),
            verify_interval: Duration::from_millis(250),
            probe_timeout: Duration::from_millis(500),
            down_after: 8,
            up_after: 3,
            window: 50,
            min_window: 20,
            max_loss_percent: 50,
            hysteresis: Duration::from_secs(10),
            return_loss_percent: 25,
            flap_window: Duration::from_secs(300),
            max_hysteresis: Duration::from_secs(320),
        }
    }
}

/// Identifies a probe within one ladder; the peer echoes it in the ack. 32 bits, as the
/// tunnel port's probe format carries (wrapping: at 4 probes a second, 34 years).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProbeId(pub u32);

/// A probe the shell must send now, on `path` (through [`Ladder::relay`] for a relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub path: PathKind,
    pub id: ProbeId,
}

impl Probe {
    /// The probe as the tunnel port's probe message: the smallest probe there is, so it
    /// tests reachability, not size. Peers that answer path-MTU probes answer it as they
    /// are; its acks are told apart from path-MTU ones by their size ([`MIN_SIZE`],
    /// which path-MTU probes never use: they start at
    /// [`FLOOR`](crate::dataplane::pmtu::FLOOR)). On QUIC and relay rungs the same
    /// bytes travel inside the rung's own framing.
    pub fn message(self) -> ProbeMessage {
        ProbeMessage::Probe {
            id: self.id.0,
            size: MIN_SIZE,
        }
    }
}

/// What a rung's probes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Not enough answers yet either way.
    Unknown,
    Up,
    Down,
}

/// Why the chosen rung is the one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathReason {
    /// It is the first usable candidate the policy allows.
    Policy,
    /// Probes found better candidates not working.
    Probe,
}

impl PathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PathReason::Policy => "policy",
            PathReason::Probe => "probe",
        }
    }
}

/// The chosen rung changed: the shell moves the peer's traffic to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    /// `None` for the first choice.
    pub from: Option<PathKind>,
    /// `None` when no candidate is left.
    pub to: Option<PathKind>,
    pub reason: PathReason,
}

/// One rung as `overlayd peers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RungStatus {
    pub path: PathKind,
    pub health: Health,
    /// Smoothed RTT of acked probes (RFC 6298's 1/8 EWMA).
    pub rtt: Option<Duration>,
    /// Lost probes over the window, 0.0..=1.0.
    pub loss: f64,
    /// How long it must stay up before the ladder returns to it (grows when it flaps).
    pub hysteresis: Duration,
}

/// A peer's ladder as `overlayd peers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LadderStatus {
    pub chosen: Option<PathKind>,
    pub reason: PathReason,
    /// Time on the chosen rung.
    pub on_path_for: Duration,
    /// Switches from one rung to another (the first choice is not one).
    pub switches: u64,
    pub relay: Option<String>,
    /// Every usable candidate, in ladder order.
    pub rungs: Vec<RungStatus>,
}

#[derive(Debug, Clone)]
struct Rung {
    health: Health,
    /// When it last came up; the hysteresis runs from here.
    up_since: Option<Instant>,
    /// Its hysteresis now: `config.hysteresis`, doubled for every flap.
    hold: Duration,
    /// When the ladder last returned to it from a worse rung, while it stays up.
    returned_at: Option<Instant>,
    /// Down by its loss rate, not by losses in a row: lossy rather than cut.
    lossy: bool,
    /// Up, better than the chosen rung, and serving its hysteresis.
    verifying: bool,
    /// Latest outcomes, oldest first, `true` for acked; cleared when it comes up.
    outcomes: VecDeque<bool>,
    lost_in_row: u32,
    acked_in_row: u32,
    /// When the latest acked probe was sent.
    last_acked_sent: Option<Instant>,
    /// When the first probe of the current run of losses was sent (`None` after an ack).
    losing_since: Option<Instant>,
    srtt: Option<Duration>,
    /// Probes awaiting an ack, with when they were sent.
    in_flight: BTreeMap<ProbeId, Instant>,
    last_sent: Option<Instant>,
    next_probe: Instant,
}

/// One peer's path ladder.
#[derive(Debug, Clone)]
pub struct Ladder {
    config: LadderConfig,
    /// Allowed rungs in ladder order; each has an entry in `rungs`.
    candidates: Vec<PathKind>,
    rungs: BTreeMap<PathKind, Rung>,
    relay: Option<String>,
    chosen: Option<PathKind>,
    chosen_since: Option<Instant>,
    switches: u64,
    next_id: u32,
    /// The latest time fed in.
    now: Option<Instant>,
    probes: VecDeque<Probe>,
    events: VecDeque<Switch>,
}

impl Ladder {
    pub fn new(config: LadderConfig) -> Self {
        Ladder {
            config,
            candidates: Vec::new(),
            rungs: BTreeMap::new(),
            relay: None,
            chosen: None,
            chosen_since: None,
            switches: 0,
            next_id: 1,
            now: None,
            probes: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The allowed rungs now (any order; the ladder's applies). New ones are probed at
    /// once; gone ones are forgotten, and if the chosen one went the ladder moves on.
    pub fn set_candidates(&mut self, now: Instant, candidates: &[PathKind]) {
        let mut list = candidates.to_vec();
        list.sort_unstable();
        list.dedup();
        self.rungs.retain(|kind, _| list.contains(kind));
        self.probes.retain(|p| list.contains(&p.path));
        for kind in &list {
            self.rungs
                .entry(*kind)
                .or_insert_with(|| Rung::new(&self.config, now));
        }
        self.candidates = list;
        self.handle_timeout(now);
    }

    /// The member relayed traffic goes through, `None` when no member reaches both ends.
    /// A different relay is a different path: its rung starts afresh.
    pub fn set_relay(&mut self, now: Instant, relay: Option<&str>) {
        if self.relay.as_deref() == relay {
            return;
        }
        self.relay = relay.map(str::to_owned);
        if let Some(rung) = self.rungs.get_mut(&PathKind::Relay) {
            *rung = Rung::new(&self.config, now);
        }
        self.probes.retain(|p| p.path != PathKind::Relay);
        self.handle_timeout(now);
    }

    /// An ack for probe `id`, received over `path`. Returns whether it answered a probe
    /// still awaited on that path (late, duplicate and foreign acks are ignored).
    pub fn handle_ack(&mut self, now: Instant, path: PathKind, id: ProbeId) -> bool {
        self.now = Some(now);
        if !self.usable(path) {
            return false;
        }
        let config = self.config;
        let Some(rung) = self.rungs.get_mut(&path) else {
            return false;
        };
        let Some(sent) = rung.in_flight.remove(&id) else {
            return false;
        };
        rung.record_ack(&config, now, sent);
        self.decide(now);
        true
    }

    /// The rung probe `id` was sent on, while its ack is awaited. Host-gw and udp probes
    /// both travel on the tunnel port, so their acks name their rung only by id.
    pub fn awaited(&self, id: ProbeId) -> Option<PathKind> {
        self.rungs
            .iter()
            .find(|(_, r)| r.in_flight.contains_key(&id))
            .map(|(k, _)| *k)
    }

    /// Counts timed-out probes as lost, sends due probes and switches when the evidence
    /// says so.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        let usable: Vec<PathKind> = self.usable_candidates().collect();
        let Ladder {
            config,
            rungs,
            next_id,
            probes,
            ..
        } = self;
        for kind in usable {
            let Some(rung) = rungs.get_mut(&kind) else {
                continue;
            };
            let expired: Vec<(ProbeId, Instant)> = rung
                .in_flight
                .iter()
                .filter(|(_, sent)| **sent + config.probe_timeout <= now)
                .map(|(id, sent)| (*id, *sent))
                .collect();
            for (id, sent) in expired {
                rung.in_flight.remove(&id);
                rung.record_loss(config, now, sent);
            }
            if rung.next_probe <= now {
                let id = ProbeId(*next_id);
                *next_id = next_id.wrapping_add(1);
                rung.in_flight.insert(id, now);
                rung.last_sent = Some(now);
                rung.next_probe = now + rung.interval(config);
                probes.push_back(Probe { path: kind, id });
            }
        }
        self.decide(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due: a probe to send, one to
    /// give up on, or a better rung's hysteresis running out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hysteresis = self.chosen.into_iter().flat_map(|chosen| {
            self.usable_candidates()
                .take_while(move |k| *k < chosen)
                .filter_map(|k| {
                    let r = self.rungs.get(&k)?;
                    Some(r.up_since? + r.hold)
                })
                .filter(|at| self.now.is_none_or(|now| *at > now))
        });
        self.usable_candidates()
            .filter_map(|k| self.rungs.get(&k))
            .flat_map(|r| {
                let oldest = r
                    .in_flight
                    .values()
                    .min()
                    .map(|s| *s + self.config.probe_timeout);
                [Some(r.next_probe), oldest]
            })
            .flatten()
            .chain(hysteresis)
            .min()
    }

    /// The next probe to send, now.
    pub fn poll_probe(&mut self) -> Option<Probe> {
        self.probes.pop_front()
    }

    /// The next change of the chosen rung.
    pub fn poll_switch(&mut self) -> Option<Switch> {
        self.events.pop_front()
    }

    /// The rung the peer's traffic should take; `None` without candidates.
    pub fn chosen(&self) -> Option<PathKind> {
        self.chosen
    }

    pub fn reason(&self) -> PathReason {
        match (self.chosen, self.usable_candidates().next()) {
            (Some(c), Some(first)) if c != first => PathReason::Probe,
            _ => PathReason::Policy,
        }
    }

    pub fn relay(&self) -> Option<&str> {
        self.relay.as_deref()
    }

    pub fn switches(&self) -> u64 {
        self.switches
    }

    pub fn health(&self, path: PathKind) -> Option<Health> {
        self.rungs.get(&path).map(|r| r.health)
    }

    pub fn status(&self, now: Instant) -> LadderStatus {
        LadderStatus {
            chosen: self.chosen,
            reason: self.reason(),
            on_path_for: self
                .chosen_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since)),
            switches: self.switches,
            relay: self.relay.clone(),
            rungs: self
                .usable_candidates()
                .filter_map(|k| {
                    let r = self.rungs.get(&k)?;
                    Some(RungStatus {
                        path: k,
                        health: r.health,
                        rtt: r.srtt,
                        loss: r.loss(),
                        hysteresis: r.hold,
                    })
                })
                .collect(),
        }
    }

    /// Candidates that can carry traffic: all but a relay with no member to relay.
    fn usable_candidates(&self) -> impl Iterator<Item = PathKind> + '_ {
        self.candidates.iter().copied().filter(|k| self.usable(*k))
    }

    fn usable(&self, kind: PathKind) -> bool {
        self.candidates.contains(&kind) && (kind != PathKind::Relay || self.relay.is_some())
    }

    fn decide(&mut self, now: Instant) {
        let config = self.config;
        let health = |k: PathKind| self.rungs.get(&k).map_or(Health::Unknown, |r| r.health);
        let settled = |k: &PathKind| self.rungs.get(k).is_some_and(|r| r.settled(&config, now));
        let current_ok = self
            .chosen
            .is_some_and(|c| self.usable(c) && health(c) != Health::Down);
        // Where to go when the chosen rung fails: a rung that earned a return beats one
        // that is merely up, so a flapping rung is not taken back through the fallback.
        let good = self.usable_candidates().find(settled);
        let fallback = good.or_else(|| self.usable_candidates().find(|k| health(*k) == Health::Up));
        // A chosen rung down by its loss rate still carries most packets: leave it only
        // for a good one, not for another that is merely up (and likely as lossy).
        let lossy = |k: PathKind| self.rungs.get(&k).is_some_and(|r| r.lossy);
        let target = match self.chosen {
            Some(current) if current_ok => {
                let better = self
                    .usable_candidates()
                    .take_while(|k| *k < current)
                    .find(settled);
                Some(better.unwrap_or(current))
            }
            // Down: stay when nothing known is better.
            Some(current) if self.usable(current) && lossy(current) => {
                Some(good.unwrap_or(current))
            }
            // Cut. Every rung of a peer going silent at once is its daemon (or node) going,
            // not a path: a rung is a way out only if it answered a probe sent since the
            // chosen one began losing. (A daemon-down peer keeps its host-gw route, which
            // needs no daemon, rather than moving to a rung that was merely not yet
            // found out — the relay, say, probed once a second.)
            Some(current) if self.usable(current) => {
                let since = self.rungs.get(&current).and_then(|r| r.losing_since);
                let answered = |k: &PathKind| {
                    since.is_none_or(|since| {
                        self.rungs
                            .get(k)
                            .and_then(|r| r.last_acked_sent)
                            .is_some_and(|at| at >= since)
                    })
                };
                let way_out = self
                    .usable_candidates()
                    .filter(answered)
                    .find(settled)
                    .or_else(|| {
                        self.usable_candidates()
                            .filter(answered)
                            .find(|k| health(*k) == Health::Up)
                    });
                Some(way_out.unwrap_or(current))
            }
            // First choice, or the chosen rung is no longer allowed.
            _ => fallback
                .or_else(|| {
                    self.usable_candidates()
                        .find(|k| health(*k) != Health::Down)
                })
                .or_else(|| self.usable_candidates().next()),
        };
        for (kind, rung) in self.rungs.iter_mut() {
            rung.verifying = target.is_some_and(|t| *kind < t)
                && rung.health == Health::Up
                && !rung.settled(&config, now);
        }
        if target == self.chosen {
            return;
        }
        let from = self.chosen;
        if let (Some(f), Some(t)) = (from, target)
            && t < f
            && let Some(r) = self.rungs.get_mut(&t)
        {
            r.returned_at = Some(now);
        }
        self.chosen = target;
        self.chosen_since = Some(now);
        if from.is_some() && target.is_some() {
            self.switches += 1;
        }
        let reason = self.reason();
        self.events.push_back(Switch {
            from,
            to: target,
            reason,
        });
    }
}

impl Rung {
    fn new(config: &LadderConfig, now: Instant) -> Self {
        Rung {
            health: Health::Unknown,
            up_since: None,
            hold: config.hysteresis,
            returned_at: None,
            lossy: false,
            verifying: false,
            outcomes: VecDeque::new(),
            lost_in_row: 0,
            acked_in_row: 0,
            last_acked_sent: None,
            losing_since: None,
            srtt: None,
            in_flight: BTreeMap::new(),
            last_sent: None,
            next_probe: now,
        }
    }

    /// Fast while in doubt: a loss on a rung not cut yet, or an ack on one not up yet.
    fn interval(&self, config: &LadderConfig) -> Duration {
        let suspect = self.lost_in_row > 0 && (self.health != Health::Down || self.lossy);
        let promising = self.acked_in_row > 0 && self.health != Health::Up;
        if suspect || promising {
            config.suspect_interval
        } else if self.verifying {
            config.verify_interval
        } else {
            config.probe_interval
        }
    }

    /// An ack of the probe sent at `sent`.
    fn record_ack(&mut self, config: &LadderConfig, now: Instant, sent: Instant) {
        let rtt = now.saturating_duration_since(sent);
        self.srtt = Some(self.srtt.map_or(rtt, |s| (s * 7 + rtt) / 8));
        self.last_acked_sent = self.last_acked_sent.max(Some(sent));
        self.losing_since = None;
        self.lost_in_row = 0;
        self.acked_in_row += 1;
        if self.health != Health::Up && self.acked_in_row >= config.up_after {
            self.health = Health::Up;
            self.lossy = false;
            self.up_since = Some(now);
            self.outcomes.clear();
        }
        self.push_outcome(config, true);
        let interval = self.interval(config);
        self.next_probe = self.last_sent.map_or(now, |sent| sent + interval);
    }

    /// The probe sent at `sent` went unanswered.
    fn record_loss(&mut self, config: &LadderConfig, now: Instant, sent: Instant) {
        self.losing_since = Some(self.losing_since.map_or(sent, |s| s.min(sent)));
        self.acked_in_row = 0;
        self.lost_in_row += 1;
        self.push_outcome(config, false);
        let cut = self.lost_in_row >= config.down_after;
        match self.health {
            Health::Down if self.lossy && cut => {
                // Lossy, and now cut as well: any rung that is up is better.
                self.lossy = false;
                self.next_probe = self
                    .last_sent
                    .map_or(now, |sent| sent + config.probe_interval);
            }
            Health::Down if self.lossy => self.next_probe = self.next_probe.min(now),
            Health::Down => {}
            _ if cut || self.window_bad(config) => {
                self.damp(config, now);
                self.lossy = !cut;
                self.health = Health::Down;
                self.up_since = None;
                self.returned_at = None;
                self.next_probe = if self.lossy {
                    self.next_probe.min(now)
                } else {
                    self.last_sent
                        .map_or(now, |sent| sent + config.probe_interval)
                };
            }
            // Suspect: look again at once rather than a whole interval later.
            _ => self.next_probe = self.next_probe.min(now),
        }
    }

    /// Up long enough, and good enough, for the ladder to return to it.
    fn settled(&self, config: &LadderConfig, now: Instant) -> bool {
        self.health == Health::Up
            && self.up_since.is_some_and(|since| since + self.hold <= now)
            && self.outcomes.len() >= config.min_window
            && !self.loss_at_least(config.return_loss_percent)
    }

    /// Going down: a rung that fails soon after the ladder returned to it flapped and must
    /// prove itself longer next time; one that was up a good while earns the base back.
    fn damp(&mut self, config: &LadderConfig, now: Instant) {
        let recent = |at: Option<Instant>| at.is_some_and(|at| now < at + config.flap_window);
        if recent(self.returned_at) {
            self.hold = (self.hold * 2).min(config.max_hysteresis);
        } else if !recent(self.up_since) {
            self.hold = config.hysteresis;
        }
    }

    fn push_outcome(&mut self, config: &LadderConfig, acked: bool) {
        self.outcomes.push_back(acked);
        while self.outcomes.len() > config.window {
            self.outcomes.pop_front();
        }
    }

    fn window_bad(&self, config: &LadderConfig) -> bool {
        self.outcomes.len() >= config.min_window && self.loss_at_least(config.max_loss_percent)
    }

    /// Whether `percent` % or more of the window's probes were lost.
    fn loss_at_least(&self, percent: u32) -> bool {
        let lost = self.outcomes.iter().filter(|a| !**a).count();
        lost * 100 >= percent as usize * self.outcomes.len()
    }

    fn loss(&self) -> f64 {
        let n = self.outcomes.len();
        if n == 0 {
            return 0.0;
        }
        let lost = self.outcomes.iter().filter(|a| !**a).count();
        lost as f64 / n as f64
    }
}

#[cfg(test)]
mod tests;
