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
//!   (8) losses in a row mark it **down**; so does a loss of `max_loss_percent` (50 %)
//!   or more over the last `window` (50) probes, once `min_window` (20) are in. A rung
//!   that just broke is thus down within `probe_interval + 2 × probe_timeout +
//!   (down_after − 2) × suspect_interval` = 2.3 s, and 20 % random loss needs 8 losses
//!   in a row (p = 0.2⁸ ≈ 2.6·10⁻⁶) to fake a break.
//! - A rung that is not up and has an ack in hand is probed every `suspect_interval`
//!   too; `up_after` (3) acks in a row mark it **up**, and its loss window starts afresh.
//! - **Choice**: at first, the first usable candidate, on the policy's word, before any
//!   probe answered. A chosen rung that goes down is left at once for the first rung in
//!   ladder order that is up (so the fallback lands ≤ 3 s after the break); with none up
//!   the ladder stays (nothing known is better). A rung better than the chosen one is
//!   returned to only once it has been up for `hysteresis` (10 s) without going down.
//!   A peer that answers no probe at all (an older node) stays on its first candidate.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::PathKind;

/// Timing and thresholds of the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LadderConfig {
    /// How often every usable rung is probed while nothing is in doubt.
    pub probe_interval: Duration,
    /// How often a suspect rung (a loss not yet answered by an ack) or a promising one
    /// (an ack on a rung not yet up) is probed.
    pub suspect_interval: Duration,
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
}

impl Default for LadderConfig {
    fn default() -> Self {
        LadderConfig {
            probe_interval: Duration::from_secs(1),
            suspect_interval: Duration::from_millis(50),
            probe_timeout: Duration::from_millis(500),
            down_after: 8,
            up_after: 3,
            window: 50,
            min_window: 20,
            max_loss_percent: 50,
            hysteresis: Duration::from_secs(10),
        }
    }
}

/// Identifies a probe within one ladder; the shell carries it in the probe datagram and
/// the peer echoes it in the ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProbeId(pub u64);

/// A probe the shell must send now, on `path` (through [`Ladder::relay`] for a relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub path: PathKind,
    pub id: ProbeId,
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
    /// Latest outcomes, oldest first, `true` for acked; cleared when it comes up.
    outcomes: VecDeque<bool>,
    lost_in_row: u32,
    acked_in_row: u32,
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
    next_id: u64,
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
            self.rungs.entry(*kind).or_insert_with(|| Rung::new(now));
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
            *rung = Rung::new(now);
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
        rung.record_ack(&config, now, now.saturating_duration_since(sent));
        self.decide(now);
        true
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
            let expired: Vec<ProbeId> = rung
                .in_flight
                .iter()
                .filter(|(_, sent)| **sent + config.probe_timeout <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                rung.in_flight.remove(&id);
                rung.record_loss(config, now);
            }
            if rung.next_probe <= now {
                let id = ProbeId(*next_id);
                *next_id += 1;
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
                .filter_map(|k| self.rungs.get(&k)?.up_since)
                .map(|since| since + self.config.hysteresis)
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
        let health = |k: PathKind| self.rungs.get(&k).map_or(Health::Unknown, |r| r.health);
        let current_ok = self
            .chosen
            .is_some_and(|c| self.usable(c) && health(c) != Health::Down);
        let up = self.usable_candidates().find(|k| health(*k) == Health::Up);
        let target = match self.chosen {
            Some(current) if current_ok => {
                let hysteresis = self.config.hysteresis;
                let better = self
                    .usable_candidates()
                    .take_while(|k| *k < current)
                    .find(|k| {
                        self.rungs.get(k).is_some_and(|r| {
                            r.health == Health::Up
                                && r.up_since.is_some_and(|since| since + hysteresis <= now)
                        })
                    });
                Some(better.unwrap_or(current))
            }
            // Down: the first rung that is up, else stay (nothing known is better).
            Some(current) if self.usable(current) => Some(up.unwrap_or(current)),
            // First choice, or the chosen rung is no longer allowed.
            _ => up
                .or_else(|| {
                    self.usable_candidates()
                        .find(|k| health(*k) != Health::Down)
                })
                .or_else(|| self.usable_candidates().next()),
        };
        if target == self.chosen {
            return;
        }
        let from = self.chosen;
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
    fn new(now: Instant) -> Self {
        Rung {
            health: Health::Unknown,
            up_since: None,
            outcomes: VecDeque::new(),
            lost_in_row: 0,
            acked_in_row: 0,
            srtt: None,
            in_flight: BTreeMap::new(),
            last_sent: None,
            next_probe: now,
        }
    }

    /// Fast while in doubt: a loss on a rung not down yet, or an ack on one not up yet.
    fn interval(&self, config: &LadderConfig) -> Duration {
        let suspect = self.lost_in_row > 0 && self.health != Health::Down;
        let promising = self.acked_in_row > 0 && self.health != Health::Up;
        if suspect || promising {
            config.suspect_interval
        } else {
            config.probe_interval
        }
    }

    fn record_ack(&mut self, config: &LadderConfig, now: Instant, rtt: Duration) {
        self.srtt = Some(self.srtt.map_or(rtt, |s| (s * 7 + rtt) / 8));
        self.lost_in_row = 0;
        self.acked_in_row += 1;
        if self.health != Health::Up && self.acked_in_row >= config.up_after {
            self.health = Health::Up;
            self.up_since = Some(now);
            self.outcomes.clear();
        }
        self.push_outcome(config, true);
        let interval = self.interval(config);
        self.next_probe = self.last_sent.map_or(now, |sent| sent + interval);
    }

    fn record_loss(&mut self, config: &LadderConfig, now: Instant) {
        self.acked_in_row = 0;
        self.lost_in_row += 1;
        self.push_outcome(config, false);
        if self.health == Health::Down {
            return;
        }
        if self.lost_in_row >= config.down_after || self.window_bad(config) {
            self.health = Health::Down;
            self.up_since = None;
            self.next_probe = self
                .last_sent
                .map_or(now, |sent| sent + config.probe_interval);
        } else {
            // Suspect: look again at once rather than a whole interval later.
            self.next_probe = self.next_probe.min(now);
        }
    }

    fn push_outcome(&mut self, config: &LadderConfig, acked: bool) {
        self.outcomes.push_back(acked);
        while self.outcomes.len() > config.window {
            self.outcomes.pop_front();
        }
    }

    fn window_bad(&self, config: &LadderConfig) -> bool {
        let n = self.outcomes.len();
        let lost = self.outcomes.iter().filter(|a| !**a).count();
        n >= config.min_window && lost * 100 >= config.max_loss_percent as usize * n
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
