//! Membership: SWIM (Das, Gupta, Motivala, "SWIM: Scalable Weakly-consistent
//! Infection-style Process Group Membership Protocol", DSN 2002) with suspicion and
//! incarnation numbers, plus Lifeguard (Dadgar, Phillips, Currey, 2018): local health
//! scaling of probe timing, nacks from ping-req intermediates, and dynamic suspicion
//! timeouts.
//!
//! Claims about a member are ordered by `(generation, incarnation)`; only the member
//! itself raises its incarnation (to refute, or when its record changes). One deviation
//! from plain SWIM, for healing partitions without flapping: a `Dead` claim about a
//! member we consider alive only makes it *suspect* here, and about a suspect it only
//! confirms the suspicion. It is declared dead by our own suspicion timer unless it
//! refutes first — stale or forged death notices never take live members down.

use std::time::{Duration, Instant};

use rand::RngExt;

use super::super::broadcast::Topic;
use super::super::config::after;
use super::super::members::{DownReason, Member, MemberState, Suspicion};
use super::super::message::{Decoded, Header, Incarnation, Message};
use super::super::objects::ObjectEntry;
use super::super::record::NodeRecord;
use super::{Dest, Event, Gossip, Probe, Relay, Via};

/// Most ping-reqs relayed at once (each waits `probe_timeout`); more are ignored. An
/// honest cluster asks a node for a handful per probe interval.
const MAX_RELAYS: usize = 1024;
/// Most addresses reported as name conflicts; the count goes on in the stats.
const MAX_CONFLICTS_REPORTED: usize = 64;

impl Gossip {
    /// Applies every message of an accepted envelope.
    /// A node we do not know as up talks to us. In a settled cluster that is how a
    /// restarted node without seeds (a seed itself) hears of the others: they keep probing
    /// it, unaware it restarted, with no news left to piggyback. We answer with our own
    /// record and, knowing no live member at all, pull the cluster's state from the sender.
    /// Greetings per address are rate-limited to one per re-announce interval.
    fn greet_stranger(&mut self, now: Instant, to: Dest, sender: &str) {
        if sender == self.local.name || self.left {
            return;
        }
        if self.members.get(sender).is_some_and(|m| m.state.is_up()) {
            return;
        }
        if !self.send_alive_rate_limited(now, to) {
            return;
        }
        if self.live_names().is_empty() {
            self.pull.hint = Some(to);
            self.pull.needed = true;
            self.pull_tick(now);
        }
    }

    pub(super) fn process(
        &mut self,
        now: Instant,
        via: Via,
        header: &Header,
        messages: Vec<Decoded>,
    ) {
        if let Some(reply) = via.reply {
            self.greet_stranger(now, reply, &header.sender);
        }
        for decoded in messages {
            let Decoded::Message(message) = decoded else {
                self.stats.unknown_messages += 1;
                continue;
            };
            if let Message::Alive { inc, .. }
            | Message::Suspect { inc, .. }
            | Message::Dead { inc, .. }
            | Message::Left { inc, .. } = &message
                && !self.plausible(now, *inc)
            {
                self.stats.implausible_claims += 1;
                continue;
            }
            match message {
                Message::Ping { seq, target } => {
                    let Some(reply) = via.reply else { continue };
                    if target == self.local.name {
                        self.send(reply, &[Message::Ack { seq }], true);
                    } else {
                        self.stats.wrong_target_pings += 1;
                    }
                }
                Message::Ack { seq } => self.on_ack(seq),
                Message::Nack { seq } => {
                    if let Some(p) = self.probe.as_mut()
                        && p.seq == seq
                    {
                        p.nacks += 1;
                    }
                }
                Message::PingReq {
                    seq,
                    target,
                    target_addr,
                } => {
                    let Some(reply) = via.reply else { continue };
                    if self.relays.len() >= MAX_RELAYS {
                        continue;
                    }
                    let relay_seq = self.next_seq();
                    let nack_at = now + self.config.timing.probe_timeout;
                    self.relays.insert(
                        relay_seq,
                        Relay {
                            requester: reply,
                            requester_seq: seq,
                            nack_at,
                        },
                    );
                    self.send(
                        Dest::named(target_addr, &target),
                        &[Message::Ping {
                            seq: relay_seq,
                            target,
                        }],
                        false,
                    );
                }
                Message::Alive {
                    inc,
                    version,
                    record,
                } => {
                    self.on_alive(now, via, &header.sender, inc, version, record);
                }
                Message::Suspect { name, inc, from } => {
                    self.on_suspect(now, via, &name, inc, &from);
                }
                Message::Dead { name, inc, from } => self.on_dead(now, via, &name, inc, &from),
                Message::Left { name, inc } => self.on_left(now, via, &name, inc),
                Message::Object {
                    key,
                    hlc,
                    writer,
                    value,
                } => {
                    let entry = ObjectEntry { value, hlc, writer };
                    self.apply_object(now, &key, entry, via.rebroadcast);
                }
                Message::Sync {
                    reply,
                    members,
                    objects,
                } => {
                    if let Some(to) = via.reply {
                        self.on_sync(now, to, reply, &members, &objects);
                    }
                }
            }
        }
    }

    /// After an accepted datagram: note that its sender is alive, and if we hold it
    /// dead (or left), or forgot it, tell it so it refutes — with re-announcement, this
    /// is how both sides of a healed partition find each other again, and how a node
    /// about which a forged `Left` went round learns of it.
    pub(super) fn heard_from(&mut self, now: Instant, header: &Header) {
        match self.members.get_mut(&header.sender) {
            Some(m) => {
                m.last_heard = Some(now);
                if m.state.is_up() || header.generation != m.inc.generation {
                    return;
                }
            }
            // A partition outlasted `dead_reap_after`: its `Alive` at the claim we forgot
            // it with is refused as a replay until it refutes.
            None => {
                if self
                    .forgotten
                    .get(&header.sender)
                    .is_none_or(|f| f.inc.generation != header.generation)
                {
                    return;
                }
            }
        }
        self.tell_down(now, &header.sender);
    }

    /// A datagram from an earlier boot than the one we know of `sender` arrived. If we
    /// hold that boot down (or forgot it), the sender probably restarted with a lower
    /// generation (its clock stepped back): everything it sends is stale to us until it
    /// moves past the boot we know, so tell it what we hold.
    pub(super) fn heard_from_stale_boot(&mut self, now: Instant, header: &Header) {
        if self
            .members
            .get(&header.sender)
            .is_some_and(|m| m.state.is_up())
        {
            return;
        }
        self.tell_down(now, &header.sender);
    }

    /// Sends `name`, held dead or left (or forgotten), "you are down to me" with the
    /// claim we hold, and our own `Alive` — to its recorded address, never to a packet's
    /// (spoofable) source, and at most once per probe interval.
    fn tell_down(&mut self, now: Instant, name: &str) {
        if self.left {
            return;
        }
        let interval = self.config.timing.probe_interval;
        let due = |last: Option<Instant>| {
            last.is_none_or(|t| now.saturating_duration_since(t) >= interval)
        };
        let me = self.local.name.clone();
        let (notice, addr) = if let Some(m) = self.members.get_mut(name) {
            if m.state.is_up() || !due(m.last_dead_notice) {
                return;
            }
            m.last_dead_notice = Some(now);
            (down_notice(m, name, &me), m.record.gossip_addr)
        } else if let Some(f) = self.forgotten.get_mut(name) {
            if !due(f.last_notice) {
                return;
            }
            f.last_notice = Some(now);
            let dead = Message::Dead {
                name: name.to_owned(),
                inc: f.inc,
                from: me,
            };
            (dead, f.addr)
        } else {
            return;
        };
        let alive = self.local_alive();
        self.send(Dest::named(addr, name), &[notice, alive], false);
    }

    pub(super) fn next_seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    /// `d` stretched by the local health multiplier.
    fn scaled(&self, d: Duration) -> Duration {
        d.saturating_mul(self.lhm.saturating_add(1))
    }

    fn raise_lhm(&mut self, by: u32) {
        self.lhm = self.lhm.saturating_add(by).min(self.config.timing.lhm_max);
    }

    /// Ends the previous probe (a failure if still unanswered) and starts the next.
    pub(super) fn probe_tick(&mut self, now: Instant) {
        if let Some(p) = self.probe.take() {
            self.probe_failed(now, p);
        }
        self.next_probe = after(now, self.scaled(self.config.timing.probe_interval));
        if self.left {
            return;
        }
        let Some(target) = self.next_probe_target() else {
            return;
        };
        let Some(dest) = self.member_dest(&target) else {
            return;
        };
        let seq = self.next_seq();
        self.send(
            dest,
            &[Message::Ping {
                seq,
                target: target.clone(),
            }],
            true,
        );
        self.stats.probes_sent += 1;
        self.probe = Some(Probe {
            target,
            seq,
            timeout_at: after(now, self.scaled(self.config.timing.probe_timeout)),
            indirect_sent: false,
            expected_nacks: 0,
            nacks: 0,
        });
    }

    /// The direct ping timed out: ask `indirect_probes` others to try.
    pub(super) fn probe_timeout(&mut self, _now: Instant) {
        let Some(p) = self.probe.as_mut() else { return };
        p.indirect_sent = true;
        let (target, seq) = (p.target.clone(), p.seq);
        let Some(target_addr) = self.members.get(&target).map(|m| m.record.gossip_addr) else {
            return;
        };
        let helpers = self.random_live(self.config.timing.indirect_probes, Some(&target));
        let mut sent = 0;
        for helper in helpers {
            let Some(dest) = self.member_dest(&helper) else {
                continue;
            };
            let req = Message::PingReq {
                seq,
                target: target.clone(),
                target_addr,
            };
            self.send(dest, &[req], false);
            sent += 1;
        }
        if let Some(p) = self.probe.as_mut() {
            p.expected_nacks = sent;
        }
    }

    fn probe_failed(&mut self, now: Instant, p: Probe) {
        self.stats.probes_failed += 1;
        // Lifeguard: intermediates that could not reach the target either send nacks. Nacks
        // we expected but never got mean *our* network or process is the slow one.
        let missed = if p.expected_nacks > 0 {
            p.expected_nacks.saturating_sub(p.nacks)
        } else {
            1
        };
        self.raise_lhm(missed);
        let Some(m) = self.members.get(&p.target) else {
            return;
        };
        // Alive: we start a suspicion. Suspect: our failed probe is an independent
        // confirmation (Lifeguard), which shortens everyone's timer.
        if !m.state.is_up() {
            return;
        }
        let (inc, dest) = (m.inc, Dest::named(m.record.gossip_addr, &p.target));
        let me = self.local.name.clone();
        self.on_suspect(
            now,
            Via {
                reply: None,
                rebroadcast: true,
            },
            &p.target,
            inc,
            &me,
        );
        // Tell the suspect directly too: it refutes without waiting for gossip to reach it.
        let suspect = Message::Suspect {
            name: p.target.clone(),
            inc,
            from: me,
        };
        self.send(dest, &[suspect], false);
    }

    fn on_ack(&mut self, seq: u32) {
        if self.probe.as_ref().is_some_and(|p| p.seq == seq) {
            self.probe = None;
            self.lhm = self.lhm.saturating_sub(1);
            return;
        }
        if let Some(r) = self.relays.remove(&seq) {
            self.send(
                r.requester,
                &[Message::Ack {
                    seq: r.requester_seq,
                }],
                false,
            );
        }
    }

    /// Randomised round-robin (SWIM §4.3): every member is probed once per round, in an
    /// order reshuffled each round, so detection time is bounded.
    fn next_probe_target(&mut self) -> Option<String> {
        for _ in 0..=self.probe_ring.len() {
            if self.probe_pos >= self.probe_ring.len() {
                self.probe_ring = self.live_names().to_vec();
                shuffle(&mut self.probe_ring, &mut self.rng);
                self.probe_pos = 0;
                if self.probe_ring.is_empty() {
                    return None;
                }
            }
            let name = self.probe_ring[self.probe_pos].clone();
            self.probe_pos += 1;
            if self.members.get(&name).is_some_and(|m| m.state.is_up()) {
                return Some(name);
            }
        }
        None
    }

    /// A new member joins this round at a random place after the cursor.
    fn add_to_probe_ring(&mut self, name: &str) {
        let at = self
            .rng
            .random_range(self.probe_pos..=self.probe_ring.len());
        self.probe_ring.insert(at, name.to_owned());
    }

    fn suspicion_for(&mut self, now: Instant, from: &str) -> Suspicion {
        let n = self.live_names().len() + 1;
        let t = &self.config.timing;
        let scale = (n as f64).log10().max(1.0);
        // Bounded timing keeps these far from overflowing; saturate all the same.
        let min = Duration::try_from_secs_f64(
            t.probe_interval.as_secs_f64() * f64::from(t.suspicion_mult) * scale,
        )
        .unwrap_or(Duration::MAX);
        let max = min.saturating_mul(t.suspicion_max_mult);
        // Confirmations can only come from members other than the suspect and us.
        let k = t.suspicion_confirmations.min(n.saturating_sub(2));
        Suspicion::new(now, from, min, max, k)
    }

    fn on_alive(
        &mut self,
        now: Instant,
        via: Via,
        sender: &str,
        inc: Incarnation,
        version: u64,
        record: NodeRecord,
    ) {
        let name = record.name.clone();
        if name == self.local.name {
            if record.gossip_addr != self.local.gossip_addr {
                // Another node uses our name. Refuting would start an incarnation war
                // neither side can win; report it instead (memberlist does the same).
                self.stats.name_conflicts += 1;
                if self.conflicts_reported.len() < MAX_CONFLICTS_REPORTED
                    && self.conflicts_reported.insert(record.gossip_addr)
                {
                    self.events.push_back(Event::NameConflict {
                        addr: record.gossip_addr,
                    });
                }
            } else if !self.left && inc > self.local_inc {
                self.refute(inc, via.reply);
            }
            return;
        }
        let direct = sender == name;
        let came_up;
        let mut changed = false;
        match self.members.get_mut(&name) {
            None => {
                // A forgotten member comes back only with a newer claim than the last one
                // we held: anything else is a replay of what it said before.
                if self.forgotten.get(&name).is_some_and(|f| inc <= f.inc) {
                    return;
                }
                self.forgotten.remove(&name);
                self.members.insert(
                    name.clone(),
                    Member {
                        record,
                        version,
                        inc,
                        state: MemberState::Alive,
                        state_since: now,
                        last_heard: direct.then_some(now),
                        suspicion: None,
                        last_dead_notice: None,
                    },
                );
                came_up = true;
            }
            Some(m) => {
                if inc <= m.inc {
                    return;
                }
                let was_up = m.state.is_up();
                let newer_record = inc.generation > m.inc.generation || version > m.version;
                if newer_record {
                    changed = record != m.record;
                    m.record = record;
                    m.version = version;
                }
                m.inc = inc;
                m.state = MemberState::Alive;
                m.suspicion = None;
                if !was_up {
                    m.state_since = now;
                }
                came_up = !was_up;
            }
        }
        self.suspects.remove(&name);
        let Some(m) = self.members.get(&name) else {
            return;
        };
        let message = Message::Alive {
            inc: m.inc,
            version: m.version,
            record: m.record.clone(),
        };
        let record = m.record.clone();
        if came_up {
            self.live = None;
            self.add_to_probe_ring(&name);
            self.events.push_back(Event::MemberUp(record.clone()));
            // Welcome a node that announced itself to us: it learns us at once.
            if direct
                && !self.left
                && let Some(reply) = via.reply
            {
                let alive = self.local_alive();
                self.send(reply, &[alive], true);
            }
        } else if changed {
            self.events.push_back(Event::MemberUpdated(record.clone()));
        }
        if via.rebroadcast {
            self.broadcasts.push(Topic::Member(name), &message);
        }
        if (came_up || changed)
            && (self.local.pod_subnet.is_none() || self.subnet_conflicts_possible(&record))
        {
            self.check_subnet(now);
        }
    }

    fn on_suspect(&mut self, now: Instant, via: Via, name: &str, inc: Incarnation, accuser: &str) {
        if name == self.local.name {
            self.accused(now, via, inc);
            return;
        }
        let fresh = self.suspicion_for(now, accuser);
        let Some(m) = self.members.get_mut(name) else {
            return;
        };
        if inc < m.inc || !m.state.is_up() {
            return;
        }
        let news = match m.state {
            MemberState::Suspect => {
                m.inc = m.inc.max(inc);
                m.suspicion.as_mut().is_some_and(|s| s.confirm(accuser))
            }
            _ => {
                m.state = MemberState::Suspect;
                m.inc = inc;
                m.suspicion = Some(fresh);
                self.suspects.insert(name.to_owned());
                true
            }
        };
        let inc = m.inc;
        if news && via.rebroadcast {
            let message = Message::Suspect {
                name: name.to_owned(),
                inc,
                from: accuser.to_owned(),
            };
            self.broadcasts
                .push(Topic::Member(name.to_owned()), &message);
        }
    }

    fn on_dead(&mut self, now: Instant, via: Via, name: &str, inc: Incarnation, accuser: &str) {
        if name == self.local.name {
            self.accused(now, via, inc);
            return;
        }
        // No death on hearsay: about an alive member a `Dead` starts a suspicion, about a
        // suspect it is one more confirmation (shortening the suspicion toward its
        // minimum). Only our own timer declares a member dead.
        self.on_suspect(now, via, name, inc, accuser);
    }

    fn on_left(&mut self, now: Instant, via: Via, name: &str, inc: Incarnation) {
        if name == self.local.name {
            // Forged, or stale news of an earlier leave: we are here.
            self.accused(now, via, inc);
            return;
        }
        let Some(m) = self.members.get_mut(name) else {
            return;
        };
        if inc < m.inc || m.state == MemberState::Left {
            return;
        }
        let was_up = m.state.is_up();
        m.state = MemberState::Left;
        m.inc = inc;
        m.state_since = now;
        m.suspicion = None;
        self.suspects.remove(name);
        self.live = None;
        if was_up {
            self.member_down(name, DownReason::Left);
        }
        if via.rebroadcast {
            let message = Message::Left {
                name: name.to_owned(),
                inc,
            };
            self.broadcasts
                .push(Topic::Member(name.to_owned()), &message);
        }
    }

    fn declare_dead(&mut self, now: Instant, name: &str, inc: Incarnation, accuser: &str) {
        let Some(m) = self.members.get_mut(name) else {
            return;
        };
        m.state = MemberState::Dead;
        m.inc = m.inc.max(inc);
        m.state_since = now;
        m.suspicion = None;
        let inc = m.inc;
        self.suspects.remove(name);
        self.live = None;
        self.member_down(name, DownReason::Dead);
        let message = Message::Dead {
            name: name.to_owned(),
            inc,
            from: accuser.to_owned(),
        };
        self.broadcasts
            .push(Topic::Member(name.to_owned()), &message);
    }

    /// Declares dead every suspect whose suspicion timed out.
    pub(super) fn expire_suspicions(&mut self, now: Instant) {
        let due: Vec<(String, Incarnation)> = self
            .suspects
            .iter()
            .filter_map(|name| {
                let m = self.members.get(name)?;
                let s = m.suspicion.as_ref()?;
                (m.state == MemberState::Suspect && s.deadline() <= now)
                    .then(|| (name.clone(), m.inc))
            })
            .collect();
        // Drop stale entries (members that recovered or went away meanwhile).
        self.suspects.retain(|n| {
            self.members
                .get(n)
                .is_some_and(|m| m.state == MemberState::Suspect)
        });
        let me = self.local.name.clone();
        for (name, inc) in due {
            self.stats.declared_dead += 1;
            self.declare_dead(now, &name, inc, &me);
        }
    }

    /// A claim that we are suspect, dead or gone arrived. At or above our incarnation we
    /// refute it. Below, whoever sent it holds news older than ours (it missed our last
    /// refutation, which gossip does not repeat forever): answer it with our current
    /// `Alive`, rate-limited per address like a greeting.
    fn accused(&mut self, now: Instant, via: Via, inc: Incarnation) {
        if self.left {
            return;
        }
        if inc >= self.local_inc {
            self.refute(inc, via.reply);
            return;
        }
        if let Some(to) = via.reply {
            self.send_alive_rate_limited(now, to);
        }
    }

    /// Sends our own `Alive` to `to` unless that address got one within the re-announce
    /// interval; returns whether it was sent.
    fn send_alive_rate_limited(&mut self, now: Instant, to: Dest) -> bool {
        let interval = self.config.timing.reannounce_interval;
        if self
            .greeted
            .get(&to.addr)
            .is_some_and(|t| now < *t + interval)
        {
            return false;
        }
        self.greeted.retain(|_, t| now < *t + interval);
        self.greeted.insert(to.addr, now);
        let alive = self.local_alive();
        self.send(to, &[alive], false);
        true
    }

    /// Someone suspects us, holds us dead, or holds a newer claim about us: take an
    /// incarnation above theirs and say we are alive — to everyone, and straight back
    /// to the accuser.
    fn refute(&mut self, accused: Incarnation, accuser: Option<Dest>) {
        // A later boot of "us" is known (our clock stepped back): move past it.
        self.local_inc = self.incarnation_above(accused);
        self.stats.refutations += 1;
        self.raise_lhm(1);
        let alive = self.local_alive();
        self.broadcasts
            .push(Topic::Member(self.local.name.clone()), &alive);
        if let Some(addr) = accuser {
            self.send(addr, &[alive], false);
        }
    }
}

/// "You are dead (or left) to me", about a member that is down, with what we hold.
fn down_notice(m: &Member, name: &str, me: &str) -> Message {
    if m.state == MemberState::Left {
        Message::Left {
            name: name.to_owned(),
            inc: m.inc,
        }
    } else {
        Message::Dead {
            name: name.to_owned(),
            inc: m.inc,
            from: me.to_owned(),
        }
    }
}

fn shuffle<T>(items: &mut [T], rng: &mut rand::rngs::StdRng) {
    for i in (1..items.len()).rev() {
        let j = rng.random_range(0..=i);
        items.swap(i, j);
    }
}
