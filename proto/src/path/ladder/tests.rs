//! The ladder on a fake clock: a simulated link per rung (up or cut, random loss, RTT)
//! answering the ladder's probes, with a seeded xorshift for the loss.

use std::collections::BTreeMap;

use super::*;
use crate::path::PathKind::{HostGw, Quic, Relay, Udp};
use crate::path::{PairView, PathPolicy, PathRule, PeerRule, ZonePairRule};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// xorshift64*: enough randomness for probe loss, reproducible from its seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// 0..100
    fn percent(&mut self) -> u32 {
        (self.next() % 100) as u32
    }
}

#[derive(Debug, Clone, Copy)]
struct Link {
    up: bool,
    /// Percent of probes (or their acks) lost.
    loss: u32,
    rtt: Duration,
}

const CLEAN: Link = Link {
    up: true,
    loss: 0,
    rtt: Duration::from_millis(1),
};

struct Sim {
    ladder: Ladder,
    t0: Instant,
    now: Instant,
    links: BTreeMap<PathKind, Link>,
    /// Acks on their way back: when they arrive, on which rung, for which probe.
    acks: Vec<(Instant, PathKind, ProbeId)>,
    rng: XorShift,
    /// Every switch, with when it happened.
    log: Vec<(Instant, Switch)>,
    probes_sent: u64,
}

impl Sim {
    fn new(candidates: &[PathKind], seed: u64) -> Self {
        Sim::with_config(LadderConfig::default(), candidates, seed)
    }

    fn with_config(config: LadderConfig, candidates: &[PathKind], seed: u64) -> Self {
        let t0 = Instant::now();
        let mut sim = Sim {
            ladder: Ladder::new(config),
            t0,
            now: t0,
            links: PathKind::LADDER.iter().map(|k| (*k, CLEAN)).collect(),
            acks: Vec::new(),
            rng: XorShift(seed | 1),
            log: Vec::new(),
            probes_sent: 0,
        };
        sim.ladder.set_candidates(t0, candidates);
        sim.drain();
        sim
    }

    fn link(&mut self, path: PathKind) -> &mut Link {
        self.links.get_mut(&path).expect("every rung has a link")
    }

    fn drain(&mut self) {
        while let Some(p) = self.ladder.poll_probe() {
            self.probes_sent += 1;
            let link = self.links[&p.path];
            if link.up && self.rng.percent() >= link.loss {
                self.acks.push((self.now + link.rtt, p.path, p.id));
            }
        }
        while let Some(s) = self.ladder.poll_switch() {
            self.log.push((self.now, s));
        }
    }

    /// Runs every timer and ack due up to `end`, then stops at `end`.
    fn run_until(&mut self, end: Instant) {
        for _ in 0..10_000_000 {
            let timer = self.ladder.poll_timeout();
            let ack = self.acks.iter().map(|a| a.0).min();
            let next = match (timer, ack) {
                (Some(t), Some(a)) => t.min(a),
                (t, a) => match t.or(a) {
                    Some(n) => n,
                    None => break,
                },
            };
            if next > end {
                break;
            }
            assert!(next >= self.now, "time runs forward");
            self.now = next;
            let (due, later): (Vec<_>, Vec<_>) = self.acks.drain(..).partition(|a| a.0 <= next);
            self.acks = later;
            for (_, path, id) in due {
                self.ladder.handle_ack(next, path, id);
            }
            if timer.is_some_and(|t| t <= next) {
                self.ladder.handle_timeout(next);
            }
            self.drain();
        }
        self.now = end;
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end);
    }

    fn chosen(&self) -> Option<PathKind> {
        self.ladder.chosen()
    }

    /// When the ladder switched to `to` at or after `since`.
    fn switched_to(&self, to: PathKind, since: Instant) -> Option<Instant> {
        self.log
            .iter()
            .find(|(at, s)| *at >= since && s.to == Some(to))
            .map(|(at, _)| *at)
    }
}

#[test]
fn the_first_choice_is_the_policys_before_any_probe_answers() {
    let mut sim = Sim::new(&[Relay, Quic, Udp], 1);
    assert_eq!(sim.chosen(), Some(Udp));
    assert_eq!(sim.ladder.reason(), PathReason::Policy);
    assert_eq!(
        sim.log,
        [(
            sim.t0,
            Switch {
                from: None,
                to: Some(Udp),
                reason: PathReason::Policy
            }
        )]
    );
    // Both direct rungs were probed at once; the relay has no member to go through.
    assert_eq!(sim.probes_sent, 2);
    sim.run_for(secs(5));
    assert_eq!(sim.ladder.health(Udp), Some(Health::Up));
    assert_eq!(sim.ladder.health(Quic), Some(Health::Up));
    assert_eq!(sim.ladder.switches(), 0);
}

#[test]
fn a_new_rung_is_up_after_three_acks_in_quick_succession() {
    let mut sim = Sim::new(&[Udp], 1);
    sim.run_for(ms(99));
    assert_eq!(sim.ladder.health(Udp), Some(Health::Unknown));
    sim.run_for(ms(2));
    assert_eq!(
        sim.ladder.health(Udp),
        Some(Health::Up),
        "acks at 1, 51, 101 ms"
    );
}

#[test]
fn a_healthy_rung_is_probed_once_a_second() {
    let mut sim = Sim::new(&[Udp], 1);
    sim.run_for(secs(10));
    let before = sim.probes_sent;
    sim.run_for(secs(60));
    assert_eq!(sim.probes_sent - before, 60);
}

#[test]
fn rtt_is_smoothed_and_loss_counted_over_the_window() {
    let mut sim = Sim::new(&[Udp], 1);
    sim.link(Udp).rtt = ms(8);
    sim.run_for(secs(60));
    let near = |d: Option<Duration>, want: Duration| {
        d.is_some_and(|d| d.abs_diff(want) < Duration::from_micros(10))
    };
    let status = sim.ladder.status(sim.now);
    assert!(
        near(status.rungs[0].rtt, ms(8)),
        "{:?}",
        status.rungs[0].rtt
    );
    assert_eq!(status.rungs[0].loss, 0.0);

    sim.link(Udp).rtt = ms(16);
    sim.run_for(secs(1));
    let rtt = sim.ladder.status(sim.now).rungs[0].rtt;
    assert!(
        near(rtt, ms(9)),
        "one 16 ms sample moves 8 ms by 1/8: {rtt:?}"
    );

    sim.link(Udp).loss = 30;
    sim.run_for(secs(600));
    let loss = sim.ladder.status(sim.now).rungs[0].loss;
    assert!((0.15..0.45).contains(&loss), "{loss}");
}

#[test]
fn a_break_falls_back_within_3_seconds_whenever_it_happens() {
    // The break at every 50 ms phase of the probe interval.
    for phase in 0..20 {
        let mut sim = Sim::new(&[Udp, Quic, Relay], 7);
        sim.run_for(secs(30) + ms(50 * phase));
        assert_eq!(sim.chosen(), Some(Udp));

        let cut = sim.now;
        sim.link(Udp).up = false;
        sim.run_for(secs(3));
        let at = sim.switched_to(Quic, cut).expect("fell back");
        assert!(at - cut <= secs(3), "phase {phase}: {:?}", at - cut);
        assert_eq!(sim.chosen(), Some(Quic));
        assert_eq!(sim.ladder.reason(), PathReason::Probe);
        assert_eq!(sim.ladder.health(Udp), Some(Health::Down));
        assert_eq!(sim.ladder.switches(), 1);
    }
}

#[test]
fn a_recovered_rung_is_returned_to_after_the_hysteresis_not_before() {
    let mut sim = Sim::new(&[Udp, Quic], 7);
    sim.run_for(secs(30));
    sim.link(Udp).up = false;
    sim.run_for(secs(30));
    assert_eq!(sim.chosen(), Some(Quic));

    let heal = sim.now;
    sim.link(Udp).up = true;
    sim.run_for(secs(10));
    assert_eq!(sim.chosen(), Some(Quic), "not before 10 s of good probes");
    assert_eq!(sim.ladder.health(Udp), Some(Health::Up));

    sim.run_for(secs(2));
    let back = sim.switched_to(Udp, heal).expect("returned");
    // Up after the first ack (≤ 1 s) and two more 50 ms apart, then 10 s.
    assert!(
        back - heal >= secs(10) && back - heal <= ms(11_200),
        "{:?}",
        back - heal
    );
    assert_eq!(sim.ladder.reason(), PathReason::Policy);
    assert_eq!(sim.ladder.switches(), 2);
}

#[test]
fn a_rung_that_fails_during_its_hysteresis_starts_it_again() {
    let mut sim = Sim::new(&[Udp, Quic], 7);
    sim.run_for(secs(5));
    sim.link(Udp).up = false;
    sim.run_for(secs(10));
    sim.link(Udp).up = true;
    sim.run_for(secs(8));
    sim.link(Udp).up = false;
    sim.run_for(secs(4));
    sim.link(Udp).up = true;
    let heal = sim.now;
    sim.run_for(secs(9));
    assert_eq!(
        sim.chosen(),
        Some(Quic),
        "the clock restarted at the second heal"
    );
    sim.run_for(secs(3));
    assert!(sim.switched_to(Udp, heal).is_some());
}

#[test]
fn no_flapping_under_20_percent_random_probe_loss_for_an_hour() {
    for seed in [1, 2, 3] {
        let mut sim = Sim::new(&[HostGw, Udp, Quic], seed);
        for link in sim.links.values_mut() {
            link.loss = 20;
        }
        sim.run_for(secs(3600));
        assert_eq!(sim.chosen(), Some(HostGw), "seed {seed}");
        assert_eq!(sim.ladder.switches(), 0, "seed {seed}: {:?}", sim.log);
        let status = sim.ladder.status(sim.now);
        assert_eq!(status.on_path_for, secs(3600));
        assert!(status.rungs.iter().all(|r| r.health == Health::Up));
    }
}

#[test]
fn a_rung_losing_most_probes_is_left_and_rarely_tried_again() {
    for loss in [50, 70] {
        let mut sim = Sim::new(&[Udp, Quic], 5);
        sim.run_for(secs(10));
        sim.link(Udp).loss = loss;
        sim.run_for(secs(3600));
        assert_eq!(sim.chosen(), Some(Quic), "{loss} %");
        // Now and then it looks good for 10 s and is tried again; each failure soon
        // after a return doubles the wait, up to 320 s.
        assert!(sim.ladder.switches() <= 12, "{loss} %: {:?}", sim.log);
    }
}

#[test]
fn a_lossy_chosen_rung_is_left_only_for_a_good_one_but_a_cut_one_for_any() {
    // At 65 % loss, 8 losses in a row are common enough to look like a cut now and
    // then; 30 in a row are not, so only the loss rate marks it down here.
    let config = LadderConfig {
        down_after: 30,
        ..LadderConfig::default()
    };
    let mut sim = Sim::with_config(config, &[Udp, Quic], 5);
    sim.link(Quic).loss = 45;
    sim.run_for(secs(120));
    sim.link(Udp).loss = 65;
    sim.run_for(secs(600));
    assert_eq!(sim.ladder.health(Udp), Some(Health::Down));
    assert_eq!(sim.chosen(), Some(Udp), "quic is no better: stay");
    assert_eq!(sim.ladder.switches(), 0);

    let cut = sim.now;
    sim.link(Udp).up = false;
    sim.run_for(secs(10));
    let at = sim
        .switched_to(Quic, cut)
        .expect("cut: any rung that is up");
    assert!(at - cut <= secs(3), "{:?}", at - cut);
}

#[test]
fn a_rung_that_fails_soon_after_the_return_must_wait_twice_as_long() {
    let mut sim = Sim::new(&[Udp, Quic], 7);
    sim.run_for(secs(10));
    sim.link(Udp).up = false;
    sim.run_for(secs(10));
    sim.link(Udp).up = true;
    sim.run_for(secs(15));
    assert_eq!(sim.chosen(), Some(Udp), "returned after 10 s");

    sim.link(Udp).up = false;
    sim.run_for(secs(10));
    assert_eq!(sim.chosen(), Some(Quic));
    let heal = sim.now;
    sim.link(Udp).up = true;
    sim.run_for(secs(19));
    assert_eq!(sim.chosen(), Some(Quic), "flapped: 20 s now");
    assert_eq!(sim.ladder.status(sim.now).rungs[0].hysteresis, secs(20));
    sim.run_for(secs(3));
    assert!(sim.switched_to(Udp, heal).is_some());

    // Up for 5 minutes: the next break is not a flap, the wait is back to 10 s.
    sim.run_for(secs(300));
    sim.link(Udp).up = false;
    sim.run_for(secs(10));
    let heal = sim.now;
    sim.link(Udp).up = true;
    sim.run_for(secs(12));
    let back = sim.switched_to(Udp, heal).expect("returned");
    assert!(back - heal <= ms(11_200), "{:?}", back - heal);
}

#[test]
fn a_preferred_rung_dead_from_the_start_is_left_within_3_seconds() {
    let t0 = Instant::now();
    let mut sim = Sim::new(&[], 3);
    sim.link(Udp).up = false;
    sim.ladder.set_candidates(t0, &[Udp, Quic]);
    sim.drain();
    assert_eq!(sim.chosen(), Some(Udp));
    sim.run_for(secs(3));
    let at = sim.switched_to(Quic, t0).expect("fell back");
    assert!(at - t0 <= secs(3), "{:?}", at - t0);
}

#[test]
fn a_peer_that_answers_nothing_stays_on_its_first_candidate() {
    let mut sim = Sim::new(&[], 3);
    for link in sim.links.values_mut() {
        link.up = false;
    }
    sim.ladder.set_candidates(sim.t0, &[HostGw, Udp, Quic]);
    sim.drain();
    sim.run_for(secs(60));
    let before = sim.probes_sent;
    sim.run_for(secs(60));
    assert_eq!(sim.chosen(), Some(HostGw));
    assert_eq!(sim.ladder.switches(), 0);
    assert_eq!(sim.ladder.health(HostGw), Some(Health::Down));
    assert_eq!(
        sim.probes_sent - before,
        3 * 60,
        "down rungs are re-probed every second"
    );
}

#[test]
fn when_every_rung_breaks_the_ladder_stays_and_takes_the_first_that_returns() {
    let mut sim = Sim::new(&[Udp, Quic], 3);
    sim.run_for(secs(10));
    sim.link(Udp).up = false;
    sim.link(Quic).up = false;
    sim.run_for(secs(10));
    assert_eq!(sim.chosen(), Some(Udp), "nothing known is better");
    let heal = sim.now;
    sim.link(Quic).up = true;
    sim.run_for(secs(2));
    let at = sim
        .switched_to(Quic, heal)
        .expect("the working rung at once");
    assert!(at - heal <= ms(1200), "{:?}", at - heal);
}

/// A peer whose daemon stops: every rung goes silent at once, whatever the phase of the
/// probes. The ladder stays on host-gw (which needs no daemon on the far end) instead of
/// falling back to a rung that was up only because its once-a-second probe had not yet
/// been missed; a rung that does answer after the break is still taken.
#[test]
fn when_every_rung_goes_silent_at_once_the_ladder_does_not_move() {
    for offset in (0..1000).step_by(50) {
        // The relay comes later than the peer (members learn of each other one by one):
        // its probes run at another phase than host-gw's.
        let mut sim = Sim::new(&[HostGw, Relay], 9);
        sim.run_for(ms(offset));
        sim.ladder.set_relay(sim.now, Some("c"));
        sim.drain();
        sim.run_for(secs(10));
        assert_eq!(sim.chosen(), Some(HostGw));
        let cut = sim.now;
        sim.link(HostGw).up = false;
        sim.link(Relay).up = false;
        sim.run_for(secs(10));
        assert_eq!(
            sim.switched_to(Relay, cut),
            None,
            "cut {offset} ms into a second: moved to a relay that was silent too"
        );
        assert_eq!(sim.chosen(), Some(HostGw));
    }
    // Only host-gw breaks: the relay answers after the break and is taken within 3 s.
    let mut sim = Sim::new(&[HostGw, Relay], 9);
    sim.ladder.set_relay(sim.now, Some("c"));
    sim.drain();
    sim.run_for(secs(10) + ms(300));
    let cut = sim.now;
    sim.link(HostGw).up = false;
    sim.run_for(secs(3));
    assert!(
        sim.switched_to(Relay, cut).is_some(),
        "a working rung is taken"
    );
}

#[test]
fn the_relay_is_probed_only_with_a_member_to_relay_through() {
    let mut sim = Sim::new(&[Udp, Relay], 3);
    sim.run_for(secs(5));
    assert_eq!(sim.ladder.status(sim.now).rungs.len(), 1);
    sim.link(Udp).up = false;
    sim.run_for(secs(5));
    assert_eq!(sim.chosen(), Some(Udp), "no relay: nowhere to go");

    let now = sim.now;
    sim.ladder.set_relay(now, Some("c"));
    sim.drain();
    sim.run_for(secs(1));
    assert_eq!(sim.chosen(), Some(Relay));
    let status = sim.ladder.status(sim.now);
    assert_eq!(status.relay.as_deref(), Some("c"));
    assert_eq!(status.reason, PathReason::Probe);

    // The relay leaves and no other member reaches both ends: back to the only rung.
    let now = sim.now;
    sim.ladder.set_relay(now, None);
    sim.drain();
    assert_eq!(sim.chosen(), Some(Udp));
}

/// The three-segment lab in small: a and b lose each other (direct rungs cut on
/// both ends) while c and d still reach both; both ends pick the same relay on their
/// own, move onto it within 3 s, and return after the heal and the hysteresis.
#[test]
fn a_cut_pair_moves_both_ends_onto_the_same_relay_and_back() {
    let members = ["a", "b", "c", "d"];
    let relay = crate::path::choose_relay("a", "b", &members);
    assert_eq!(crate::path::choose_relay("b", "a", &members), relay);
    let mut ends = [
        Sim::new(&[Udp, Quic, Relay], 1),
        Sim::new(&[Udp, Quic, Relay], 2),
    ];
    for sim in &mut ends {
        let now = sim.now;
        sim.ladder.set_relay(now, relay);
        sim.drain();
        sim.run_for(secs(30));
        assert_eq!(sim.chosen(), Some(Udp));
    }

    let cut: Vec<Instant> = ends.iter().map(|s| s.now).collect();
    for sim in &mut ends {
        sim.link(Udp).up = false;
        sim.link(Quic).up = false;
        sim.run_for(secs(3));
    }
    for (sim, cut) in ends.iter().zip(&cut) {
        let at = sim.switched_to(Relay, *cut).expect("onto the relay");
        assert!(at - *cut <= secs(3), "{:?}", at - *cut);
        assert_eq!(sim.ladder.relay(), relay);
    }

    for sim in &mut ends {
        sim.link(Udp).up = true;
        sim.link(Quic).up = true;
        sim.run_for(secs(10));
        assert_eq!(sim.chosen(), Some(Relay), "not before the hysteresis");
        sim.run_for(secs(2));
        assert_eq!(sim.chosen(), Some(Udp));
    }
}

#[test]
fn a_new_relay_is_a_new_path_probed_afresh() {
    let mut sim = Sim::new(&[Relay], 3);
    let t0 = sim.t0;
    sim.ladder.set_relay(t0, Some("c"));
    sim.drain();
    sim.run_for(secs(5));
    assert_eq!(sim.ladder.health(Relay), Some(Health::Up));
    let now = sim.now;
    sim.ladder.set_relay(now, Some("d"));
    assert_eq!(sim.ladder.health(Relay), Some(Health::Unknown));
    assert_eq!(sim.ladder.poll_probe().map(|p| p.path), Some(Relay));
}

#[test]
fn a_chosen_rung_the_policy_withdraws_is_left_at_once() {
    let mut sim = Sim::new(&[Udp, Quic], 3);
    sim.run_for(secs(5));
    let now = sim.now;
    sim.ladder.set_candidates(now, &[Quic]);
    sim.drain();
    assert_eq!(sim.chosen(), Some(Quic));
    assert_eq!(sim.ladder.reason(), PathReason::Policy);
    assert!(sim.ladder.health(Udp).is_none(), "forgotten");

    sim.ladder.set_candidates(now, &[]);
    sim.drain();
    assert_eq!(sim.chosen(), None);
    assert_eq!(sim.ladder.poll_timeout(), None);
    assert_eq!(
        sim.ladder.switches(),
        1,
        "losing every candidate is no switch"
    );
}

#[test]
fn a_better_rung_added_later_earns_its_place_by_the_hysteresis() {
    let mut sim = Sim::new(&[Quic], 3);
    sim.run_for(secs(5));
    let added = sim.now;
    sim.ladder.set_candidates(added, &[Udp, Quic]);
    sim.drain();
    sim.run_for(secs(9));
    assert_eq!(sim.chosen(), Some(Quic));
    sim.run_for(secs(2));
    assert_eq!(sim.chosen(), Some(Udp));
}

#[test]
fn late_duplicate_and_foreign_acks_are_ignored() {
    let t0 = Instant::now();
    let mut ladder = Ladder::new(LadderConfig::default());
    ladder.set_candidates(t0, &[Udp, Quic]);
    let udp = ladder.poll_probe().expect("udp probe");
    let quic = ladder.poll_probe().expect("quic probe");
    assert_eq!((udp.path, quic.path), (Udp, Quic));

    assert_eq!(ladder.awaited(udp.id), Some(Udp));
    assert_eq!(ladder.awaited(quic.id), Some(Quic));
    assert!(!ladder.handle_ack(t0, Quic, udp.id), "ack on another rung");
    assert!(!ladder.handle_ack(t0, Udp, ProbeId(999)), "unknown id");
    assert!(ladder.handle_ack(t0 + ms(2), Udp, udp.id));
    assert!(!ladder.handle_ack(t0 + ms(3), Udp, udp.id), "duplicate");
    assert_eq!(ladder.awaited(udp.id), None);
    ladder.handle_timeout(t0 + ms(500));
    assert!(
        !ladder.handle_ack(t0 + ms(600), Quic, quic.id),
        "late: already lost"
    );
}

#[test]
fn a_probe_is_the_smallest_tunnel_port_probe() {
    use crate::wire::probe::{MIN_SIZE, ProbeMessage};
    let t0 = Instant::now();
    let mut ladder = Ladder::new(LadderConfig::default());
    ladder.set_candidates(t0, &[Udp]);
    let p = ladder.poll_probe().expect("probe");
    assert_eq!(
        p.message(),
        ProbeMessage::Probe {
            id: p.id.0,
            size: MIN_SIZE
        }
    );
}

#[test]
fn poll_timeout_names_the_next_probe_and_the_next_loss() {
    let t0 = Instant::now();
    let mut ladder = Ladder::new(LadderConfig::default());
    ladder.set_candidates(t0, &[Udp]);
    let p = ladder.poll_probe().expect("probe");
    assert_eq!(
        ladder.poll_timeout(),
        Some(t0 + ms(500)),
        "its timeout first"
    );
    ladder.handle_ack(t0 + ms(1), Udp, p.id);
    assert_eq!(
        ladder.poll_timeout(),
        Some(t0 + ms(50)),
        "promising: soon again"
    );
}

#[test]
fn status_shows_time_on_path_and_switches() {
    let mut sim = Sim::new(&[Udp, Quic], 3);
    sim.run_for(secs(20));
    sim.link(Udp).up = false;
    sim.run_for(secs(5));
    let since = sim.switched_to(Quic, sim.t0).expect("fell back");
    sim.run_for(secs(5));
    let status = sim.ladder.status(sim.now);
    assert_eq!(status.chosen, Some(Quic));
    assert_eq!(status.reason, PathReason::Probe);
    assert_eq!(status.switches, 1);
    assert_eq!(status.on_path_for, sim.now - since);
    assert_eq!(status.rungs[0].health, Health::Down);
    assert!(status.rungs[0].loss > 0.0);
    let json = serde_json::to_value(&status).expect("serializes");
    assert_eq!(json["chosen"], "quic");
    assert_eq!(json["reason"], "probe");
}

#[derive(Debug, Clone)]
enum Event {
    Cut(PathKind),
    Heal(PathKind),
    Loss(PathKind, u32),
    Relay(bool),
    /// Re-resolve the policy with these rule bits.
    Policy {
        allow: Vec<PathKind>,
        encrypt: bool,
        on_link: bool,
    },
    Wait(u64),
}

fn event() -> impl proptest::strategy::Strategy<Value = Event> {
    use proptest::prelude::*;
    let rung = proptest::sample::select(PathKind::LADDER.to_vec());
    prop_oneof![
        rung.clone().prop_map(Event::Cut),
        rung.clone().prop_map(Event::Heal),
        (rung, 0u32..100).prop_map(|(r, l)| Event::Loss(r, l)),
        any::<bool>().prop_map(Event::Relay),
        (
            proptest::sample::subsequence(PathKind::LADDER.to_vec(), 0..=4),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(allow, encrypt, on_link)| Event::Policy {
                allow,
                encrypt,
                on_link
            }),
        (0u64..40_000).prop_map(Event::Wait),
    ]
}

fn resolve(allow: Vec<PathKind>, encrypt: bool, on_link: bool) -> crate::path::Resolved {
    let policy = PathPolicy {
        zone_pairs: vec![ZonePairRule {
            zones: ["a".into(), "a".into()],
            rule: PathRule {
                allow: None,
                require_encryption: Some(encrypt),
            },
        }],
        peers: vec![PeerRule {
            peer: "n2".into(),
            rule: PathRule {
                allow: Some(allow),
                require_encryption: None,
            },
        }],
    };
    policy.resolve(PairView {
        local_zone: "a",
        peer_zone: "a",
        peer_name: "n2",
        on_link,
        quic: true,
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever the links, the policy and time do: the chosen rung is always a usable
    /// candidate (some rung is chosen whenever one is usable), an encryption-required
    /// pair is never on a cleartext rung, and the ladder always has a next step.
    #[test]
    fn the_chosen_rung_is_always_an_allowed_candidate(
        seed in 1u64..u64::MAX,
        events in proptest::collection::vec(event(), 1..40),
    ) {
        let first = resolve(PathKind::LADDER.to_vec(), false, true);
        let mut sim = Sim::new(&first.candidates, seed);
        let mut resolved = first;
        for e in events {
            match e {
                Event::Cut(k) => sim.link(k).up = false,
                Event::Heal(k) => sim.link(k).up = true,
                Event::Loss(k, l) => sim.link(k).loss = l,
                Event::Relay(on) => {
                    let now = sim.now;
                    sim.ladder.set_relay(now, on.then_some("c"));
                }
                Event::Policy { allow, encrypt, on_link } => {
                    resolved = resolve(allow, encrypt, on_link);
                    let now = sim.now;
                    sim.ladder.set_candidates(now, &resolved.candidates);
                }
                Event::Wait(m) => sim.run_for(ms(m)),
            }
            sim.drain();
            let usable: Vec<PathKind> = resolved
                .candidates
                .iter()
                .copied()
                .filter(|k| *k != Relay || sim.ladder.relay().is_some())
                .collect();
            match sim.chosen() {
                Some(c) => {
                    proptest::prop_assert!(usable.contains(&c), "{c:?} not in {usable:?}");
                    proptest::prop_assert!(!(resolved.require_encryption && c.is_cleartext()));
                    proptest::prop_assert!(sim.ladder.poll_timeout().is_some());
                }
                None => proptest::prop_assert!(usable.is_empty()),
            }
        }
    }
}
