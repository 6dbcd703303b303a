use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::*;
use crate::gossip::config::{MAX_PACKET, MIN_PACKET};
use crate::gossip::crypto::SecretKey;
use crate::gossip::message::Message;
use crate::gossip::record::MAX_NAME_LEN;

fn key() -> SecretKey {
    SecretKey([1; 32])
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 7946))
}

/// A core with the test key and wall clock: `generation` and `rng_seed` as given.
fn gossip_with(
    config: GossipConfig,
    record: NodeRecord,
    generation: u64,
    rng_seed: u64,
    now: Instant,
) -> Result<Gossip, NewError> {
    Gossip::new(
        config,
        record,
        Keyring::new(key()),
        generation,
        rng_seed,
        now,
        1_700_000_000_000,
    )
}

fn node(i: u8, seeds: Vec<SocketAddr>, now: Instant) -> Gossip {
    let record = NodeRecord::new(
        format!("n{i}"),
        addr(i),
        Ipv4Addr::new(192, 168, 0, i),
        None,
    );
    let config = GossipConfig::new("test", seeds);
    gossip_with(config, record, 1000 + u64::from(i), u64::from(i), now).expect("valid")
}

/// Moves every datagram between `a` and `b` until both are quiet; returns how many.
fn pump(now: Instant, a: &mut Gossip, b: &mut Gossip) -> usize {
    let mut moved = 0;
    loop {
        let mut any = false;
        while let Some(t) = a.poll_transmit() {
            if t.dst == b.local().gossip_addr {
                b.handle_datagram(now, a.local().gossip_addr, &t.payload);
                moved += 1;
                any = true;
            }
        }
        while let Some(t) = b.poll_transmit() {
            if t.dst == a.local().gossip_addr {
                a.handle_datagram(now, b.local().gossip_addr, &t.payload);
                moved += 1;
                any = true;
            }
        }
        if !any {
            return moved;
        }
    }
}

fn join_pair(now: Instant) -> (Gossip, Gossip) {
    let mut a = node(1, vec![], now);
    let mut b = node(2, vec![addr(1)], now);
    pump(now, &mut a, &mut b);
    // The stream pull, carried by hand.
    let req = b.poll_stream().expect("joiner pulls full state");
    assert_eq!(req.to, addr(1));
    let resp = a.serve_stream(now, &req.request).expect("served");
    b.handle_stream_response(now, &resp);
    assert_eq!(b.stats().streams_completed, 1);
    (a, b)
}

#[test]
fn peers_are_the_static_list_overridden_by_up_members_with_a_subnet() {
    let now = Instant::now();
    let mut a = node(1, vec![], now);
    let subnet: ipnet::Ipv4Net = "10.244.2.0/24".parse().unwrap();
    let mut record = NodeRecord::new("n2", addr(2), Ipv4Addr::new(192, 168, 0, 2), Some(subnet));
    record.subnet_static = true;
    let mut b = gossip_with(
        GossipConfig::new("test", vec![addr(1)]),
        record,
        1002,
        2,
        now,
    )
    .expect("valid");
    // n3 gossips but has no subnet yet: no peer.
    let mut c = node(3, vec![addr(1)], now);
    pump(now, &mut a, &mut b);
    pump(now, &mut a, &mut c);
    let peer = |name: &str, underlay: [u8; 4], subnet: &str| crate::PeerInfo {
        name: name.into(),
        underlay: underlay.into(),
        pod_subnet: subnet.parse().unwrap(),
        vtep_mac: crate::wire::MacAddr::vtep_for_node(name),
        zone: String::new(),
        quic_port: None,
        cert_fingerprint: None,
        relay: false,
    };
    let stale_n2 = peer("n2", [10, 9, 9, 2], "10.244.9.0/24");
    let k1 = peer("k1", [10, 9, 9, 1], "10.244.8.0/24");
    let statics = [stale_n2.clone(), k1.clone()];
    let peers = a.peers(&statics);
    let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["k1", "n2"]);
    assert_eq!(peers[0], k1);
    assert_eq!(
        peers[1].pod_subnet, subnet,
        "gossip's n2 wins over the static one"
    );
    assert!(b.peers(&[]).iter().all(|p| p.name != "n2"), "never itself");

    // n2 leaves: the static entry is what is left of it.
    b.leave(now);
    pump(now, &mut a, &mut b);
    assert_eq!(a.peers(&statics), [k1, stale_n2]);
}

#[test]
fn two_nodes_join_and_see_each_other() {
    let now = Instant::now();
    let (mut a, mut b) = join_pair(now);
    assert_eq!(a.member("n2").map(|m| m.state), Some(MemberState::Alive));
    assert_eq!(b.member("n1").map(|m| m.state), Some(MemberState::Alive));
    assert!(matches!(a.poll_event(), Some(Event::MemberUp(r)) if r.name == "n2"));
    assert!(matches!(b.poll_event(), Some(Event::MemberUp(r)) if r.name == "n1"));
}

#[test]
fn replays_stale_generations_and_misdirected_streams_are_counted() {
    let now = Instant::now();
    let (mut a, mut b) = join_pair(now);
    // Capture one datagram from b to a.
    b.update_local(now, |r| r.zone = "z".into()).expect("valid");
    b.handle_timeout(now + Duration::from_secs(1));
    let t = std::iter::from_fn(|| b.poll_transmit())
        .find(|t| t.dst == addr(1))
        .expect("b gossips to a");
    a.handle_datagram(now, addr(2), &t.payload);
    a.handle_datagram(now, addr(2), &t.payload);
    assert_eq!(a.stats().drop_count(GossipDrop::Replayed), 1);
    // b restarts (new generation); its old datagrams are then stale.
    let mut b2 = {
        let record = b.local().clone();
        gossip_with(
            GossipConfig::new("test", vec![addr(1)]),
            record,
            5000,
            9,
            now,
        )
        .expect("valid")
    };
    pump(now, &mut a, &mut b2);
    assert_eq!(a.member("n2").map(|m| m.incarnation.generation), Some(5000));
    a.handle_datagram(now, addr(2), &t.payload);
    assert_eq!(a.stats().drop_count(GossipDrop::StaleGeneration), 1);
    // A stream request served twice is a replay; a response nobody asked for is dropped.
    let req = b2.poll_stream().expect("pull");
    let resp = a.serve_stream(now, &req.request).expect("served");
    assert_eq!(
        a.serve_stream(now, &req.request),
        Err(StreamError::Dropped(GossipDrop::Replayed))
    );
    b2.handle_stream_response(now, &resp);
    b2.handle_stream_response(now, &resp);
    assert_eq!(b2.stats().drop_count(GossipDrop::UnexpectedStream), 1);
    // A datagram is not a stream request, nor the reverse.
    assert_eq!(
        a.serve_stream(now, &t.payload),
        Err(StreamError::Dropped(GossipDrop::Malformed))
    );
    // Oversized datagrams are refused before any work.
    a.handle_datagram(now, addr(2), &vec![1u8; MAX_PACKET + 1]);
    assert_eq!(a.stats().drop_count(GossipDrop::Oversized), 1);
}

/// Streams are sealed for their recipient: a pull addressed to one node is refused by
/// another, and so is a response served to another joiner, even one whose own pull
/// carries the same id.
#[test]
fn streams_sealed_for_another_node_are_misdirected() {
    let now = Instant::now();
    let mut a = node(1, vec![], now);
    let mut b = node(2, vec![addr(1)], now);
    pump(now, &mut a, &mut b);
    // The first pull went to the seed address (name unknown then); its retry goes to n1,
    // alive by now, by name.
    b.poll_stream().expect("joiner pulls full state");
    b.handle_stream_failed(now, addr(1));
    b.handle_timeout(now + Duration::from_secs(1));
    let req = b.poll_stream().expect("retried pull");
    assert_eq!(a.serve_stream(now, &req.request).map(|_| ()), Ok(()));
    let mut c = node(3, vec![], now);
    assert_eq!(
        c.serve_stream(now, &req.request),
        Err(StreamError::Dropped(GossipDrop::Misdirected))
    );
    assert_eq!(c.stats().drop_count(GossipDrop::Misdirected), 1);

    // Two joiners pull from the same seed; both pulls have id 1.
    let mut seed = node(1, vec![], now);
    let mut d = node(4, vec![addr(1)], now);
    let mut e = node(5, vec![addr(1)], now);
    let for_d = d.poll_stream().expect("d pulls");
    e.poll_stream().expect("e pulls");
    let resp = seed.serve_stream(now, &for_d.request).expect("served");
    e.handle_stream_response(now, &resp);
    assert_eq!(e.stats().drop_count(GossipDrop::Misdirected), 1);
    assert_eq!(e.stats().streams_completed, 0);
    d.handle_stream_response(now, &resp);
    assert_eq!(d.stats().streams_completed, 1);
}

#[test]
fn unanswered_probes_raise_local_health() {
    let now = Instant::now();
    let (mut a, _b) = join_pair(now);
    // b is silent from here on: a's probes fail, with nobody to ask indirectly.
    let mut t = now;
    for _ in 0..40 {
        t += Duration::from_millis(50);
        a.handle_timeout(t);
        while a.poll_transmit().is_some() {}
    }
    assert!(a.health_score() >= 1, "score {}", a.health_score());
    assert!(a.stats().probes_failed >= 1);
    assert!(
        a.member("n2")
            .is_some_and(|m| !m.state.is_up() || m.state == MemberState::Suspect)
    );
}

#[test]
fn answered_probes_keep_local_health_at_zero() {
    let now = Instant::now();
    let (mut a, mut b) = join_pair(now);
    let mut t = now;
    for _ in 0..100 {
        t += Duration::from_millis(50);
        a.handle_timeout(t);
        b.handle_timeout(t);
        pump(t, &mut a, &mut b);
    }
    assert!(a.stats().probes_sent > 5);
    assert_eq!(a.stats().probes_failed, 0);
    assert_eq!((a.health_score(), b.health_score()), (0, 0));
    assert_eq!(a.member("n2").map(|m| m.last_heard.is_some()), Some(true));
}

#[test]
fn a_duplicate_name_is_reported_not_fought_over() {
    let now = Instant::now();
    let mut a = node(1, vec![], now);
    let mut impostor = {
        let record = NodeRecord::new("n1", addr(7), Ipv4Addr::new(192, 168, 0, 7), None);
        Gossip::new(
            GossipConfig::new("test", vec![addr(1)]),
            record,
            Keyring::new(key()),
            99,
            7,
            now,
            0,
        )
        .expect("valid")
    };
    let t = impostor
        .poll_transmit()
        .expect("announces itself to the seed");
    a.handle_datagram(now, addr(7), &t.payload);
    // The envelope's sender is "n1" too: dropped as our own. Deliver the claim via a third party.
    let mut c = node(3, vec![addr(7)], now);
    pump(now, &mut c, &mut impostor);
    let before = a.member("n1").map(|m| m.incarnation);
    let gossip = impostor_alive_via(&mut c, now);
    a.handle_datagram(now, addr(3), &gossip);
    assert_eq!(a.stats().name_conflicts, 1);
    assert_eq!(a.poll_event(), Some(Event::NameConflict { addr: addr(7) }));
    assert_eq!(
        a.member("n1").map(|m| m.incarnation),
        before,
        "no refutation war"
    );
}

/// A datagram from `c` carrying the impostor's Alive (c learned it when the impostor
/// announced itself).
fn impostor_alive_via(c: &mut Gossip, now: Instant) -> Vec<u8> {
    c.handle_timeout(now);
    while c.poll_transmit().is_some() {}
    let alive = c
        .members
        .get("n1")
        .map(|m| Message::Alive {
            inc: m.inc,
            version: m.version,
            record: m.record.clone(),
        })
        .expect("c knows the impostor");
    c.send(Dest::named(addr(1), "n1"), &[alive], false);
    c.poll_transmit().expect("sent").payload
}

#[test]
fn local_updates_and_objects_are_validated() {
    let now = Instant::now();
    let mut a = node(1, vec![], now);
    assert_eq!(
        a.update_local(now, |r| r.name = "other".into()),
        Err(RecordError::NameChanged)
    );
    assert_eq!(
        a.update_local(now, |r| r.zone = "z".repeat(MAX_NAME_LEN + 1)),
        Err(RecordError::BadZone)
    );
    assert!(a.local().zone.is_empty(), "unchanged on error");
    let v = a.member("n1").map(|m| m.version);
    a.update_local(now, |r| r.zone = "eu".into())
        .expect("valid");
    assert_eq!(a.member("n1").map(|m| m.version), v.map(|v| v + 1));
    assert_eq!(
        a.set_object(now, "", Some(vec![])),
        Err(ObjectError::BadKey)
    );
    assert_eq!(
        a.set_object(now, &"k".repeat(MAX_KEY_LEN + 1), None),
        Err(ObjectError::BadKey)
    );
    assert_eq!(
        a.set_object(now, "k", Some(vec![0; MAX_VALUE_LEN + 1])),
        Err(ObjectError::TooLarge)
    );
    a.set_object(now, "k", Some(vec![1])).expect("valid");
    assert_eq!(a.object("k"), Some(&[1u8][..]));
    assert_eq!(
        a.poll_event(),
        Some(Event::ObjectChanged {
            key: "k".into(),
            value: Some(vec![1])
        })
    );
    let primary = a.keyring().primary().clone();
    assert!(a.keyring_mut().remove(&primary).is_err());
}

#[test]
fn the_largest_messages_fit_one_datagram() {
    let name = "n".repeat(MAX_NAME_LEN);
    let header = Header {
        channel: Channel::Datagram,
        sender: name.clone(),
        recipient: 1,
        generation: 1,
        seq: 1,
    };
    let object = Message::Object {
        key: "k".repeat(MAX_KEY_LEN),
        hlc: Hlc(1),
        writer: name.clone(),
        value: Some(vec![0; MAX_VALUE_LEN]),
    };
    let mut record = NodeRecord::new(
        name.clone(),
        "[::1]:1".parse().expect("addr"),
        Ipv4Addr::LOCALHOST,
        None,
    );
    record.zone = "z".repeat(MAX_NAME_LEN);
    record.capabilities = vec!["c".repeat(MAX_NAME_LEN); crate::gossip::record::MAX_CAPABILITIES];
    let alive = Message::Alive {
        inc: Incarnation::default(),
        version: 1,
        record,
    };
    for m in [object, alive] {
        let total = SEAL_OVERHEAD + header.encoded_len() + m.encoded_len();
        assert!(total <= MIN_PACKET, "{total} bytes: {m:?}");
    }
}

#[test]
fn poll_timeout_is_always_set_and_handle_timeout_advances_it() {
    let now = Instant::now();
    let mut a = node(1, vec![addr(9)], now);
    let t = a.poll_timeout().expect("periodic timers");
    assert!(t >= now);
    a.handle_timeout(t);
    assert!(
        a.poll_timeout().expect("still") > t,
        "handle_timeout left a timer due"
    );
    // A seed that never answers: the pull is retried after the stream timeout.
    assert!(a.poll_stream().is_some());
    a.handle_stream_failed(t, addr(9));
    let retry = t + Duration::from_secs(1);
    a.handle_timeout(retry);
    assert!(a.poll_stream().is_some(), "retried after a failure");
}

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let now = Instant::now();
        let mut a = node(1, vec![], now);
        a.handle_datagram(now, addr(2), &bytes);
        let _ = a.serve_stream(now, &bytes);
        a.handle_stream_response(now, &bytes);
        let dropped: u64 = a.stats().drops.iter().sum();
        prop_assert_eq!(dropped, 3);
    }

    /// Authenticated garbage (a keyholder with a bug) is malformed, never a panic.
    #[test]
    fn sealed_garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..600), channel in 0u8..3) {
        let now = Instant::now();
        let mut a = node(1, vec![], now);
        let mut w = crate::gossip::codec::Writer::new();
        w.u8(channel);
        w.str8("n2");
        w.u64(crate::gossip::message::recipient_id("n1"));
        w.u64(1);
        w.u64(1);
        w.raw(&body);
        let sealed = Keyring::new(key()).seal("test", [3; 24], &w.buf);
        a.handle_datagram(now, addr(2), &sealed);
        let _ = a.serve_stream(now, &sealed);
        a.handle_stream_response(now, &sealed);
        while a.poll_transmit().is_some() {}
    }
}

#[test]
fn claims_avoid_subnets_reserved_for_static_peers() {
    let now = Instant::now();
    let pool = crate::gossip::SubnetPool {
        cluster: "10.244.0.0/16".parse().unwrap(),
        prefix: 24,
    };
    let preferred =
        crate::gossip::subnet::choose_subnet("n1", pool.cluster, pool.prefix, &[]).unwrap();
    let mut config = GossipConfig::new("test", Vec::new());
    config.subnet_pool = Some(pool);
    config.reserved = vec![preferred];
    let record = NodeRecord::new("n1", addr(1), Ipv4Addr::new(192, 168, 0, 1), None);
    let mut g = gossip_with(config, record, 1, 1, now).unwrap();
    g.handle_timeout(now + Duration::from_secs(10));
    let claimed = std::iter::from_fn(|| g.poll_event()).find_map(|e| match e {
        Event::LocalSubnetChanged { subnet, .. } => Some(subnet),
        _ => None,
    });
    let claimed = claimed.expect("a subnet is claimed");
    assert_ne!(claimed, preferred);
    assert!(!crate::gossip::subnet::overlaps(claimed, preferred));

    // A persisted claim that a static peer now holds is moved too.
    let mut config = GossipConfig::new("test", Vec::new());
    config.subnet_pool = Some(pool);
    config.reserved = vec![claimed];
    let mut record = NodeRecord::new("n1", addr(1), Ipv4Addr::new(192, 168, 0, 1), Some(claimed));
    record.subnet_claimed_at = Hlc::new(1_700_000_000_000, 0);
    let mut g = gossip_with(config, record, 2, 1, now).unwrap();
    g.handle_timeout(now + Duration::from_secs(10));
    let moved = std::iter::from_fn(|| g.poll_event()).find_map(|e| match e {
        Event::LocalSubnetChanged { subnet, .. } => Some(subnet),
        _ => None,
    });
    assert!(
        moved.is_some_and(|s| !crate::gossip::subnet::overlaps(s, claimed)),
        "{moved:?}"
    );
}

/// A seed node (no seeds of its own) restarts faster than failure detection in a settled
/// cluster: nobody re-announces to it, since nobody thinks it died, and there is no news
/// left to piggyback. The pings it gets from members must be enough for it to learn the
/// cluster again (found in the lab: a restarted seed stayed alone).
#[test]
fn a_restarted_seed_without_seeds_rejoins_from_members_pings() {
    let start = Instant::now();
    let (mut old_a, mut b) = join_pair(start);
    // Let the pair go quiet: no broadcast left to piggyback, as in a settled cluster.
    let mut t0 = start;
    for _ in 0..600 {
        t0 += Duration::from_millis(100);
        old_a.handle_timeout(t0);
        b.handle_timeout(t0);
        pump(t0, &mut old_a, &mut b);
    }
    assert_eq!(b.pending_broadcasts(), 0, "the pair did not settle");
    let mut a = node(1, vec![], t0);
    // `node()` gives generation 1001 again; a real restart has a newer one.
    a = {
        let record = a.local().clone();
        gossip_with(GossipConfig::new("test", vec![]), record, 5000, 9, t0).expect("valid")
    };
    assert!(
        a.members().all(|m| m.is_local),
        "the restarted seed starts alone"
    );

    // b's probes reach the new a; a answers, greets b and pulls from it.
    let mut now = t0;
    for _ in 0..20 {
        now += Duration::from_millis(100);
        b.handle_timeout(now);
        a.handle_timeout(now);
        pump(now, &mut a, &mut b);
        while let Some(req) = a.poll_stream() {
            assert_eq!(req.to, addr(2));
            let resp = b.serve_stream(now, &req.request).expect("served");
            a.handle_stream_response(now, &resp);
        }
        if a.member("n2")
            .is_some_and(|m| m.state == MemberState::Alive)
        {
            return;
        }
    }
    panic!(
        "the restarted seed never learned n2: {:?}",
        a.members()
            .map(|m| (m.name.to_owned(), m.state))
            .collect::<Vec<_>>()
    );
}

/// An envelope from `sender` to n1 carrying `messages`, sealed with the test key: what
/// any key holder can send.
fn forged(sender: &str, generation: u64, seq: u64, messages: &[Message]) -> Vec<u8> {
    forged_to("n1", sender, generation, seq, messages)
}

fn forged_to(to: &str, sender: &str, generation: u64, seq: u64, messages: &[Message]) -> Vec<u8> {
    let header = Header {
        channel: Channel::Datagram,
        sender: sender.into(),
        recipient: crate::gossip::message::recipient_id(to),
        generation,
        seq,
    };
    let mut w = crate::gossip::codec::Writer::new();
    header.encode(&mut w);
    for m in messages {
        m.encode(&mut w).expect("fits");
    }
    let mut nonce = [7u8; 24];
    nonce[16..].copy_from_slice(&seq.to_be_bytes());
    Keyring::new(key()).seal("test", nonce, &w.buf)
}

#[test]
fn out_of_bounds_messages_are_dropped_and_counted() {
    let now = Instant::now();
    let mut a = node(1, vec![], now);
    let too_big = Message::Object {
        key: "k".into(),
        hlc: Hlc::new(1_700_000_000_000, 0),
        writer: "n2".into(),
        value: Some(vec![0; MAX_VALUE_LEN + 1]),
    };
    a.handle_datagram(now, addr(2), &forged("n2", 1, 1, &[too_big]));
    let unnamed = Message::Object {
        key: String::new(),
        hlc: Hlc::new(1_700_000_000_000, 0),
        writer: "n2".into(),
        value: Some(vec![1]),
    };
    a.handle_datagram(now, addr(2), &forged("n2", 1, 2, &[unnamed]));
    assert_eq!(a.stats().drop_count(GossipDrop::Malformed), 2);
    assert_eq!(a.objects().count(), 0);
    assert_eq!(a.tombstones(), 0);
}

const DAY_US: u64 = 86_400_000_000;
const WALL_US: u64 = 1_700_000_000_000_000;

/// Claims an authenticated peer controls must never overflow our arithmetic, nor move
/// us (or anyone) past what a real clock could reach.
#[test]
fn implausible_incarnations_are_ignored_and_counted() {
    let now = Instant::now();
    let mut a = node(1, vec![], now);
    let before = a.member("n1").map(|m| m.incarnation);
    let me = |generation, incarnation| Incarnation {
        generation,
        incarnation,
    };
    let claims = [
        Message::Suspect {
            name: "n1".into(),
            inc: me(1001, u64::MAX),
            from: "n2".into(),
        },
        Message::Dead {
            name: "n1".into(),
            inc: me(u64::MAX, 0),
            from: "n2".into(),
        },
        Message::Suspect {
            name: "n1".into(),
            inc: me(WALL_US + 2 * DAY_US, 0),
            from: "n2".into(),
        },
    ];
    for (i, claim) in claims.into_iter().enumerate() {
        a.handle_datagram(now, addr(2), &forged("n2", 1, i as u64 + 1, &[claim]));
    }
    assert_eq!(a.member("n1").map(|m| m.incarnation), before);
    assert_eq!(a.stats().refutations, 0);
    assert_eq!(a.stats().implausible_claims, 3);

    // About others: an Alive from the far future or at the last incarnation is not taken.
    let mut far = NodeRecord::new("n3", addr(3), Ipv4Addr::new(192, 168, 0, 3), None);
    let alive = |inc, record: &NodeRecord| Message::Alive {
        inc,
        version: 1,
        record: record.clone(),
    };
    a.handle_datagram(
        now,
        addr(2),
        &forged("n2", 1, 10, &[alive(me(WALL_US + 2 * DAY_US, 0), &far)]),
    );
    far.name = "n4".into();
    a.handle_datagram(
        now,
        addr(2),
        &forged("n2", 1, 11, &[alive(me(5, u64::MAX), &far)]),
    );
    assert!(a.member("n3").is_none() && a.member("n4").is_none());
    assert_eq!(a.stats().implausible_claims, 5);

    // A later boot of ourselves within a day (our clock stepped back) is still moved past.
    let near = WALL_US + DAY_US / 2;
    a.handle_datagram(
        now,
        addr(2),
        &forged(
            "n2",
            1,
            12,
            &[Message::Suspect {
                name: "n1".into(),
                inc: me(near, 3),
                from: "n2".into(),
            }],
        ),
    );
    assert!(
        a.member("n1")
            .is_some_and(|m| m.incarnation.generation > near)
    );
}

/// An envelope from a sender generation far in the future would make every real packet
/// of that sender stale for as long: dropped instead.
#[test]
fn envelopes_from_the_far_future_are_dropped() {
    let now = Instant::now();
    let mut a = node(1, vec![], now);
    let record = NodeRecord::new("n2", addr(2), Ipv4Addr::new(192, 168, 0, 2), None);
    let hello = |generation| Message::Alive {
        inc: Incarnation {
            generation,
            incarnation: 0,
        },
        version: 1,
        record: record.clone(),
    };
    let future = WALL_US + 2 * DAY_US;
    a.handle_datagram(now, addr(2), &forged("n2", future, 1, &[hello(future)]));
    assert_eq!(a.stats().drop_count(GossipDrop::Implausible), 1);
    a.handle_datagram(now, addr(2), &forged("n2", 2000, 2, &[hello(2000)]));
    assert_eq!(
        a.member("n2").map(|m| m.state),
        Some(MemberState::Alive),
        "the real boot is not stale"
    );
}

/// Our incarnation pushed to its maximum by a (plausible) claim: the next record change
/// moves to the next generation instead of overflowing.
#[test]
fn the_local_incarnation_never_overflows() {
    let now = Instant::now();
    let mut a = node(1, vec![], now);
    let claim = Message::Suspect {
        name: "n1".into(),
        inc: Incarnation {
            generation: 1001,
            incarnation: u64::MAX - 1,
        },
        from: "n2".into(),
    };
    a.handle_datagram(now, addr(2), &forged("n2", 1, 1, &[claim]));
    let refuted = a.member("n1").map(|m| m.incarnation).unwrap();
    assert_eq!(refuted.incarnation, u64::MAX);
    a.update_local(now, |r| r.zone = "z".into()).unwrap();
    let bumped = a.member("n1").map(|m| m.incarnation).unwrap();
    assert!(bumped > refuted, "{bumped:?}");
    a.leave(now);
    assert!(a.member("n1").map(|m| m.incarnation).unwrap() > bumped);
}

/// Every timer and count at its bound: the core schedules, probes, suspects, scales by
/// local health and collects without overflowing anything.
#[test]
fn timing_at_its_bounds_never_panics() {
    use crate::gossip::config::{MAX_COUNT, MAX_MULTIPLIER, MAX_TIMER, MAX_TOMBSTONE_GC, Timing};
    let timing = Timing {
        probe_interval: MAX_TIMER,
        probe_timeout: MAX_TIMER - Duration::from_millis(1),
        indirect_probes: MAX_COUNT,
        suspicion_mult: MAX_MULTIPLIER,
        suspicion_max_mult: MAX_MULTIPLIER,
        suspicion_confirmations: MAX_COUNT,
        gossip_interval: MAX_TIMER,
        gossip_fanout: MAX_COUNT,
        push_pull_interval: MAX_TIMER,
        reannounce_interval: MAX_TIMER,
        dead_reap_after: MAX_TIMER,
        tombstone_gc_after: MAX_TOMBSTONE_GC,
        retransmit_mult: MAX_MULTIPLIER,
        lhm_max: MAX_COUNT as u32,
        stream_timeout: MAX_TIMER,
        claim_wait: MAX_TIMER,
    };
    let start = Instant::now();
    let make = |i: u8, seeds: Vec<SocketAddr>| {
        let mut config = GossipConfig::new("test", seeds);
        config.timing = timing.clone();
        let record = NodeRecord::new(
            format!("n{i}"),
            addr(i),
            Ipv4Addr::new(192, 168, 0, i),
            None,
        );
        gossip_with(config, record, 1000 + u64::from(i), 1, start).expect("valid at the bounds")
    };
    let mut a = make(1, vec![]);
    let mut b = make(2, vec![addr(1)]);
    pump(start, &mut a, &mut b);
    // b falls silent; a (at the worst health score) probes, fails, suspects and declares
    // b dead, reaps it, collects tombstones.
    a.lhm = MAX_COUNT as u32;
    let mut now = start;
    for _ in 0..300 {
        now = a.poll_timeout().expect("timers").max(now);
        a.handle_timeout(now);
        while a.poll_transmit().is_some() {}
        while a.poll_stream().is_some() {}
    }
    assert_eq!(a.health_score(), MAX_COUNT as u32);
    assert!(a.stats().probes_failed > 0);
    // Suspected; its suspicion (10⁴ weeks at these bounds) has not run out.
    assert_eq!(a.member("n2").map(|m| m.state), Some(MemberState::Suspect));
    // Far past it: declared dead, then reaped.
    for step in [Duration::from_secs(400 * 365 * 24 * 3600), 2 * MAX_TIMER] {
        now += step;
        a.handle_timeout(now);
        a.handle_timeout(now + MAX_TIMER);
        now += MAX_TIMER;
    }
    assert!(a.member("n2").is_none(), "declared dead and reaped");
}

fn me_at(g: &Gossip) -> Incarnation {
    g.member(&g.local().name).map(|m| m.incarnation).unwrap()
}

/// A forged (or stale) `Left` about a live node is refuted, as a `Dead` is.
#[test]
fn a_left_about_a_live_node_is_refuted() {
    let now = Instant::now();
    let (mut a, mut b) = join_pair(now);
    let inc = me_at(&a);
    let left = Message::Left {
        name: "n1".into(),
        inc,
    };
    a.handle_datagram(now, addr(3), &forged("n3", 1, 1, &[left]));
    assert_eq!(a.stats().refutations, 1);
    assert!(me_at(&a) > inc);

    // Told only to others: b holds a as left, and tells a so as soon as a talks to it.
    let left = Message::Left {
        name: "n1".into(),
        inc: me_at(&a),
    };
    b.handle_datagram(now, addr(3), &forged_to("n2", "n3", 1, 2, &[left]));
    assert_eq!(b.member("n1").map(|m| m.state), Some(MemberState::Left));
    let mut t = now;
    for _ in 0..20 {
        t += Duration::from_millis(100);
        a.handle_timeout(t);
        b.handle_timeout(t);
        pump(t, &mut a, &mut b);
    }
    assert_eq!(b.member("n1").map(|m| m.state), Some(MemberState::Alive));
}

/// "No death on hearsay" holds for suspects too: a `Dead` about a member we suspect
/// confirms the suspicion (shortening it) but does not end it.
#[test]
fn a_dead_about_a_suspect_confirms_instead_of_killing() {
    let now = Instant::now();
    let (mut a, _b) = join_pair(now);
    let inc = a.member("n2").map(|m| m.incarnation).unwrap();
    let suspect = Message::Suspect {
        name: "n2".into(),
        inc,
        from: "n3".into(),
    };
    a.handle_datagram(now, addr(3), &forged("n3", 1, 1, &[suspect]));
    assert_eq!(a.member("n2").map(|m| m.state), Some(MemberState::Suspect));
    let dead = Message::Dead {
        name: "n2".into(),
        inc,
        from: "n4".into(),
    };
    a.handle_datagram(now, addr(4), &forged("n4", 1, 1, &[dead]));
    assert_eq!(a.member("n2").map(|m| m.state), Some(MemberState::Suspect));
    // Unrefuted, it dies when the (shortened) suspicion runs out.
    let mut t = now;
    for _ in 0..40 {
        t += Duration::from_millis(100);
        a.handle_timeout(t);
        while a.poll_transmit().is_some() {}
    }
    assert_eq!(a.member("n2").map(|m| m.state), Some(MemberState::Dead));
}

/// A claimed (not configured) subnet without its claim time would be the oldest claim
/// of all and win every conflict: refused at start.
#[test]
fn a_claimed_subnet_without_its_claim_time_is_refused() {
    let now = Instant::now();
    let mut record = NodeRecord::new(
        "n1",
        addr(1),
        Ipv4Addr::new(192, 168, 0, 1),
        Some("10.244.1.0/24".parse().unwrap()),
    );
    let start =
        |record: NodeRecord| gossip_with(GossipConfig::new("test", vec![]), record, 1, 1, now);
    assert_eq!(
        start(record.clone()).err(),
        Some(NewError::Record(RecordError::ClaimTimeMissing))
    );
    record.subnet_claimed_at = Hlc(1);
    assert!(start(record.clone()).is_ok());
    record.subnet_claimed_at = Hlc(0);
    record.subnet_static = true;
    assert!(
        start(record).is_ok(),
        "a configured subnet needs no claim time"
    );
}

/// A write stamped far in the future would win against every write for as long: it is
/// dropped and counted, and a local write always wins over what is held.
#[test]
fn far_future_objects_are_dropped_and_local_writes_win() {
    let now = Instant::now();
    let mut a = node(1, vec![], now);
    let wall = 1_700_000_000_000u64;
    let write = |ms: u64, value: &[u8]| Message::Object {
        key: "svc".into(),
        hlc: Hlc::new(ms, 0),
        writer: "zz".into(),
        value: Some(value.to_vec()),
    };
    let year = 365 * 24 * 3600 * 1000;
    a.handle_datagram(
        now,
        addr(2),
        &forged("n2", 1, 1, &[write(wall + year, b"x")]),
    );
    assert_eq!(a.object("svc"), None);
    assert_eq!(a.stats().implausible_claims, 1);
    a.set_object(now, "svc", Some(b"mine".to_vec())).unwrap();
    assert_eq!(a.object("svc"), Some(&b"mine"[..]));
    // Slightly ahead (within the drift bound) is taken, and still overwritten locally.
    a.handle_datagram(
        now,
        addr(2),
        &forged("n2", 1, 2, &[write(wall + 30_000, b"y")]),
    );
    assert_eq!(a.object("svc"), Some(&b"y"[..]));
    a.set_object(now, "svc", Some(b"mine again".to_vec()))
        .unwrap();
    assert_eq!(a.object("svc"), Some(&b"mine again"[..]));
}

/// Opens a datagram `g` sent and returns its messages.
fn opened(payload: &[u8]) -> (Header, Vec<Message>) {
    let plain = Keyring::new(key()).open("test", payload).expect("opens");
    let mut r = crate::gossip::codec::Reader::new(&plain);
    let header = Header::decode(&mut r).expect("header");
    let rest = &plain[plain.len() - r.remaining()..];
    let messages = crate::gossip::message::decode_compound(rest)
        .expect("well-formed")
        .into_iter()
        .filter_map(|d| match d {
            crate::gossip::message::Decoded::Message(m) => Some(m),
            crate::gossip::message::Decoded::Unknown(_) => None,
        })
        .collect();
    (header, messages)
}

/// Nothing is decrypted for a stream response nobody waits for.
#[test]
fn unexpected_stream_responses_are_not_even_opened() {
    let now = Instant::now();
    let mut a = node(1, vec![], now);
    a.handle_stream_response(now, &[1u8; 100]);
    assert_eq!(a.stats().drop_count(GossipDrop::UnexpectedStream), 1);
    assert_eq!(a.stats().drop_count(GossipDrop::DecryptFailed), 0);
}

#[test]
fn a_node_that_left_cannot_announce_a_new_record() {
    let now = Instant::now();
    let (mut a, _b) = join_pair(now);
    a.leave(now);
    let before = me_at(&a);
    assert_eq!(
        a.update_local(now, |r| r.zone = "back".into()),
        Err(RecordError::Left)
    );
    assert_eq!(me_at(&a), before);
    assert!(a.local().zone.is_empty());
}

/// The answer to a digest applies the differences first and compares last, so the
/// peer's own answer only carries what still differs.
#[test]
fn a_sync_answer_puts_its_digest_last() {
    let now = Instant::now();
    let (mut a, _b) = join_pair(now);
    a.set_object(now, "k", Some(vec![1])).unwrap();
    while a.poll_transmit().is_some() {}
    let sync = Message::Sync {
        reply: true,
        members: vec![0; 64],
        objects: vec![0; 32],
    };
    a.handle_datagram(now, addr(2), &forged("n2", 1001 + 1, 1000, &[sync]));
    let sent: Vec<Message> = std::iter::from_fn(|| a.poll_transmit())
        .filter(|t| t.dst == addr(2))
        .flat_map(|t| opened(&t.payload).1)
        .collect();
    assert!(sent.len() > 1, "{sent:?}");
    assert!(
        matches!(sent.last(), Some(Message::Sync { reply: false, .. })),
        "{sent:?}"
    );
}

/// Replay windows are kept only for members (and forgotten members), or for a sender
/// whose envelope announces it: thousands of made-up sender names leave nothing behind.
#[test]
fn made_up_senders_leave_no_replay_windows() {
    let now = Instant::now();
    let (mut a, _b) = join_pair(now);
    let windows = a.windows.len();
    for i in 0..2000u64 {
        let ack = Message::Ack { seq: i as u32 };
        a.handle_datagram(now, addr(9), &forged(&format!("ghost-{i}"), 1, 1, &[ack]));
    }
    assert_eq!(a.windows.len(), windows);
    // An announcement does get one (a joiner's first datagram).
    let record = NodeRecord::new("n3", addr(3), Ipv4Addr::new(192, 168, 0, 3), None);
    let alive = Message::Alive {
        inc: Incarnation {
            generation: 7,
            incarnation: 0,
        },
        version: 1,
        record,
    };
    let hello = forged("n3", 7, 1, &[alive]);
    a.handle_datagram(now, addr(3), &hello);
    a.handle_datagram(now, addr(3), &hello);
    assert_eq!(a.windows.len(), windows + 1);
    assert_eq!(a.stats().drop_count(GossipDrop::Replayed), 1);
}

/// A datagram is sealed for one recipient: captured on its way to a and replayed at c,
/// it is dropped there.
#[test]
fn a_datagram_sealed_for_one_node_is_refused_by_another() {
    let now = Instant::now();
    let (mut a, mut b) = join_pair(now);
    let mut c = node(3, vec![], now);
    b.set_object(now, "k", Some(vec![1])).unwrap();
    b.handle_timeout(now + Duration::from_secs(1));
    let t = std::iter::from_fn(|| b.poll_transmit())
        .find(|t| t.dst == addr(1))
        .expect("b gossips to a");
    c.handle_datagram(now, addr(2), &t.payload);
    assert_eq!(c.stats().drop_count(GossipDrop::Misdirected), 1);
    assert!(c.member("n2").is_none() && c.object("k").is_none());
    assert!(c.poll_transmit().is_none(), "no answer to a replay");
    a.handle_datagram(now, addr(2), &t.payload);
    assert_eq!(a.object("k"), Some(&[1u8][..]));
}

/// Replies go to where a known member says it listens, not to a packet's (spoofable)
/// source address.
#[test]
fn replies_go_to_the_recorded_address() {
    let now = Instant::now();
    let (mut a, b) = join_pair(now);
    let generation = b.generation();
    while a.poll_transmit().is_some() {}
    let ping = Message::Ping {
        seq: 77,
        target: "n1".into(),
    };
    a.handle_datagram(now, addr(99), &forged("n2", generation, 1_000_000, &[ping]));
    let sent: Vec<SocketAddr> = std::iter::from_fn(|| a.poll_transmit())
        .map(|t| t.dst)
        .collect();
    assert_eq!(sent, vec![addr(2)]);
}

/// `stamp` orders after everything the node has issued or seen: a Service stamped on a
/// node whose clock is behind is still newer than the writes it already received.
#[test]
fn stamps_grow_and_pass_every_timestamp_seen() {
    let now = Instant::now();
    let (mut a, mut b) = join_pair(now);
    // b's wall clock is 5 s behind a's.
    b.set_wall_clock(now, 1_700_000_000_000 - 5_000);
    let first = b.stamp(now);
    let second = b.stamp(now);
    assert!(second > first);
    assert_eq!(first.physical_ms(), 1_700_000_000_000 - 5_000);
    a.set_object(now, "k", Some(vec![1])).expect("valid");
    a.handle_timeout(now + Duration::from_secs(1));
    pump(now, &mut a, &mut b);
    let seen = b.objects.entry("k").expect("gossiped").hlc;
    assert!(seen > second);
    assert!(b.stamp(now) > seen);
}
