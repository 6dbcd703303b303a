use super::*;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

const STEP: Duration = Duration::from_millis(10);

fn joined(seed: u64, n: usize) -> Sim {
    let mut sim = Sim::new(seed, n, lan_config(), NetConfig::default(), secs(2.0));
    let t = sim.run_until_pred(secs(60.0), secs(0.1), Sim::converged);
    assert!(
        t.is_some(),
        "{n} nodes did not converge in 60 s (seed {seed})"
    );
    sim
}

#[test]
fn five_nodes_join_from_one_seed() {
    let sim = joined(1, 5);
    assert!(sim.elapsed() < secs(10.0), "took {:?}", sim.elapsed());
}

fn names(sim: &Sim) -> Vec<String> {
    sim.nodes.iter().map(|n| n.name.clone()).collect()
}

/// Regression (seed 101): a 100-node join storm once needed push-pull (17.6 s) because
/// the retransmit limit was computed from a stale (empty) member count — 4 sends per
/// item, so some node missed some joiner. With anti-entropy off, gossip alone must
/// converge right after the last join.
#[test]
fn hundred_nodes_join_from_one_seed() {
    let mut config = lan_config();
    config.timing.push_pull_interval = secs(3600.0);
    let mut sim = Sim::new(101, 100, config, NetConfig::default(), secs(5.0));
    let t = sim
        .run_until_pred(secs(60.0), secs(0.1), Sim::converged)
        .expect("join");
    eprintln!("100 nodes converged after {t:?} (joins spread over 5 s)");
    assert!(t <= secs(8.0), "{t:?}");
}

#[test]
fn crashed_node_is_declared_dead_everywhere_within_3s() {
    let mut sim = joined(3, 5);
    sim.run_until(sim.now + secs(5.0));
    let victim = names(&sim)[3].clone();
    sim.crash(3);
    let t = sim
        .run_until_pred(secs(30.0), STEP, |s| {
            s.all_see(&victim, &[MemberState::Dead])
        })
        .expect("crash never detected");
    eprintln!("N=5 failure known to all after {t:?}");
    assert!(t <= secs(3.0), "detection took {t:?}");
    assert!(sim.converged(), "the others still see each other");
}

#[test]
fn partition_heals_by_itself() {
    let n = 10;
    let mut sim = joined(4, n);
    sim.run_until(sim.now + secs(3.0));
    sim.partition(|i| (i % 2) as u32);
    sim.run_until(sim.now + secs(30.0));
    for i in 0..n {
        for j in 0..n {
            if i % 2 != j % 2 {
                let m = sim
                    .gossip(i)
                    .member(&sim.nodes[j].name)
                    .expect("still known");
                assert_eq!(m.state, MemberState::Dead, "{i} sees {j}");
            }
        }
    }
    assert!(
        (0..n).all(|i| sim.sees_exactly(i, &(0..n).filter(|j| j % 2 == i % 2).collect::<Vec<_>>()))
    );
    sim.heal();
    let t = sim
        .run_until_pred(secs(60.0), secs(0.1), Sim::converged)
        .expect("partition never healed");
    eprintln!("N={n} full mesh again {t:?} after the partition healed");
}

#[test]
fn graceful_leave_is_seen_at_once() {
    let mut sim = joined(5, 5);
    sim.run_until(sim.now + secs(3.0));
    let leaver = names(&sim)[2].clone();
    sim.with(2, |g, now| g.leave(now));
    let t = sim
        .run_until_pred(secs(10.0), STEP, |s| {
            s.all_see(&leaver, &[MemberState::Left])
        })
        .expect("leave never seen");
    eprintln!("N=5 leave known to all after {t:?}");
    // The minimum suspicion timeout alone is 1 s.
    assert!(t <= secs(0.3), "leave took {t:?}");
    assert_eq!(
        sim.gossip(2).pending_broadcasts(),
        0,
        "the leaver drained its broadcasts"
    );
    sim.crash(2);
    sim.run_until(sim.now + secs(10.0));
    // Nobody calls it dead afterwards: left stays left.
    assert!(sim.all_see(&leaver, &[MemberState::Left]));
    assert_eq!(sim.false_downs(), 0);
}

fn propagation(seed: u64, n: usize) -> Duration {
    let mut sim = joined(seed, n);
    sim.run_until(sim.now + secs(5.0));
    let origin = n / 2;
    sim.with(origin, |g, now| {
        g.update_local(now, |r| r.zone = "moved".into())
            .expect("valid")
    });
    let name = sim.nodes[origin].name.clone();
    sim.run_until_pred(secs(30.0), Duration::from_millis(5), |s| {
        s.running().all(|i| {
            s.gossip(i)
                .member(&name)
                .and_then(|m| m.record)
                .is_some_and(|r| r.zone == "moved")
        })
    })
    .expect("update never reached everyone")
}

#[test]
fn state_change_reaches_five_nodes_within_half_a_second() {
    let t = propagation(6, 5);
    eprintln!("N=5 update on all after {t:?}");
    assert!(t <= secs(0.5), "{t:?}");
}

#[test]
fn state_change_reaches_hundred_nodes_within_two_seconds() {
    let t = propagation(7, 100);
    eprintln!("N=100 update on all after {t:?}");
    assert!(t <= secs(2.0), "{t:?}");
}

#[test]
#[ignore = "slow in debug builds; run with --release -- --ignored"]
fn state_change_reaches_thousand_nodes_within_two_seconds() {
    let t = propagation(8, 1000);
    eprintln!("N=1000 update on all after {t:?}");
    assert!(t <= secs(2.0), "{t:?}");
}

#[test]
fn no_false_positives_over_ten_minutes_at_five_percent_loss() {
    let n = 20;
    let net = NetConfig {
        loss: 0.05,
        ..NetConfig::default()
    };
    let mut sim = Sim::new(9, n, lan_config(), net, secs(2.0));
    // 10 simulated minutes: ChaCha in a debug build would dominate the run time.
    for node in &mut sim.nodes {
        node.keyring = Keyring::insecure_for_tests(cluster_key());
    }
    sim.run_until_pred(secs(60.0), secs(0.1), Sim::converged)
        .expect("join under loss");
    sim.run_until(sim.now + secs(600.0));
    let suspicions: u64 = sim
        .running()
        .map(|i| sim.gossip(i).stats().probes_failed)
        .sum();
    let refutations: u64 = sim
        .running()
        .map(|i| sim.gossip(i).stats().refutations)
        .sum();
    let packets: u64 = sim.nodes.iter().map(|n| n.tx_packets).sum();
    let bytes: u64 = sim.nodes.iter().map(|n| n.tx_bytes).sum();
    eprintln!(
        "N={n} 10 min at 5% loss: {suspicions} failed probes, {refutations} refutations, {} false downs, {packets} packets {bytes} bytes",
        sim.false_downs()
    );
    assert_eq!(sim.false_downs(), 0);
    assert!(sim.converged());
}

/// Lifeguard's scenario: one node's receive path is degraded (it loses 60% of what is
/// sent to it), so its probes "fail" and it accuses healthy members. Its local health
/// score rises and stretches its probing; the accused refute. No healthy member is ever
/// declared dead by a healthy one.
#[test]
fn a_degraded_node_does_not_take_healthy_members_down() {
    let n = 10;
    let degraded = 3;
    let mut sim = Sim::new(19, n, lan_config(), NetConfig::default(), secs(1.0));
    for node in &mut sim.nodes {
        node.keyring = Keyring::insecure_for_tests(cluster_key());
    }
    sim.run_until_pred(secs(30.0), secs(0.1), Sim::converged)
        .expect("join");
    sim.net.inbound_loss.insert(degraded, 0.6);
    let mut max_score = 0;
    for _ in 0..180 {
        sim.run_until(sim.now + secs(1.0));
        max_score = max_score.max(sim.gossip(degraded).health_score());
    }
    let accused: u64 = sim.gossip(degraded).stats().probes_failed;
    eprintln!("degraded node: {accused} failed probes, max health score {max_score}");
    assert!(max_score >= 2, "local health never rose: {max_score}");
    let healthy: Vec<String> = (0..n).filter(|&i| i != degraded).map(node_name).collect();
    for i in (0..n).filter(|&i| i != degraded) {
        for (_, seen) in &sim.nodes[i].seen {
            if let Seen::Down(name, DownReason::Dead) = seen {
                assert!(!healthy.contains(name), "{i} declared healthy {name} dead");
            }
        }
    }
}

/// The wan profile across continents: 80–120 ms one-way, 2% loss. No false positives
/// over 5 minutes; a crash is known everywhere well within a minute.
#[test]
fn wan_profile_survives_latency_and_detects_failures() {
    let n = 8;
    let mut config = lan_config();
    config.timing = Timing::wan();
    let net = NetConfig {
        loss: 0.02,
        delay: Duration::from_millis(80),
        jitter: Duration::from_millis(40),
        ..NetConfig::default()
    };
    let mut sim = Sim::new(20, n, config, net, secs(5.0));
    for node in &mut sim.nodes {
        node.keyring = Keyring::insecure_for_tests(cluster_key());
    }
    sim.run_until_pred(secs(120.0), secs(0.5), Sim::converged)
        .expect("join");
    sim.run_until(sim.now + secs(300.0));
    assert_eq!(sim.false_downs(), 0);
    let victim = node_name(5);
    sim.crash(5);
    let t = sim
        .run_until_pred(secs(120.0), secs(0.1), |s| {
            s.all_see(&victim, &[MemberState::Dead])
        })
        .expect("crash never detected");
    eprintln!("wan: failure known to all after {t:?}");
    assert!(t <= secs(60.0), "{t:?}");
}

#[test]
fn objects_converge_under_concurrent_writes_and_tombstones_are_collected() {
    let mut config = lan_config();
    config.timing.tombstone_gc_after = secs(20.0);
    let mut sim = Sim::new(10, 5, config, NetConfig::default(), secs(1.0));
    // Skewed wall clocks: HLC still orders writes.
    for (i, skew) in [0i64, 400, -300, 50, -1000].into_iter().enumerate() {
        sim.nodes[i].skew_ms = skew;
    }
    sim.run_until_pred(secs(30.0), secs(0.1), Sim::converged)
        .expect("join");
    // Everyone writes the same key at the same instant.
    for i in 0..5 {
        sim.with(i, |g, now| {
            g.set_object(now, "svc/web", Some(vec![i as u8]))
                .expect("valid")
        });
    }
    sim.run_until(sim.now + secs(3.0));
    let values: BTreeSet<Option<Vec<u8>>> = sim
        .running()
        .map(|i| sim.gossip(i).object("svc/web").map(<[u8]>::to_vec))
        .collect();
    assert_eq!(values.len(), 1, "diverged: {values:?}");
    // The highest clock wins: node 1 is 400 ms ahead.
    assert_eq!(values.into_iter().next(), Some(Some(vec![1])));
    // A write causally after the winner wins even from a node whose clock is behind.
    sim.with(4, |g, now| {
        g.set_object(now, "svc/web", Some(b"late".to_vec()))
            .expect("valid")
    });
    sim.run_until(sim.now + secs(2.0));
    assert!(
        sim.running()
            .all(|i| sim.gossip(i).object("svc/web") == Some(&b"late"[..]))
    );
    // Delete; every node drops it, then collects the tombstone.
    sim.with(2, |g, now| {
        g.set_object(now, "svc/web", None).expect("valid")
    });
    sim.run_until(sim.now + secs(2.0));
    assert!(
        sim.running()
            .all(|i| sim.gossip(i).object("svc/web").is_none())
    );
    assert!(sim.running().all(|i| sim.gossip(i).tombstones() == 1));
    sim.run_until(sim.now + secs(30.0));
    assert!(sim.running().all(|i| sim.gossip(i).tombstones() == 0));
    assert!(
        sim.running()
            .all(|i| sim.gossip(i).object("svc/web").is_none())
    );
    // Everyone saw the object change and go away.
    assert!(sim.running().all(|i| {
        sim.nodes[i]
            .seen
            .iter()
            .any(|(_, s)| *s == Seen::Object("svc/web".into(), None))
    }));
}

#[test]
fn missed_writes_are_repaired_by_anti_entropy() {
    let mut config = lan_config();
    config.timing.push_pull_interval = secs(5.0);
    let mut sim = Sim::new(11, 6, config, NetConfig::default(), secs(1.0));
    sim.run_until_pred(secs(30.0), secs(0.1), Sim::converged)
        .expect("join");
    // Node 5 is cut off while 30 objects are written (short enough not to be declared dead
    // is not needed: it may be, and must come back).
    sim.partition(|i| u32::from(i == 5));
    for k in 0..30 {
        sim.with(k % 5, |g, now| {
            g.set_object(now, &format!("obj/{k}"), Some(vec![k as u8; 100]))
                .expect("valid")
        });
    }
    sim.run_until(sim.now + secs(3.0));
    sim.heal();
    let t = sim
        .run_until_pred(secs(60.0), secs(0.1), |s| {
            s.converged() && s.gossip(5).objects().count() == 30
        })
        .expect("node 5 never caught up");
    eprintln!("anti-entropy repaired 30 objects after {t:?}");
}

/// A node far behind (more objects missed than the broadcast queue holds, in most
/// digest buckets) is repaired by a full-state pull that anti-entropy starts, not by
/// 32 KiB answers every push-pull interval.
#[test]
fn anti_entropy_pulls_full_state_from_a_member_far_apart() {
    let mut sim = joined(13, 4);
    sim.keep_events = false;
    sim.partition(|i| u32::from(i == 3));
    // More than the piggyback queue holds (4096): most never go out as broadcasts.
    sim.with(0, |g, now| {
        for k in 0..5000 {
            g.set_object(now, &format!("obj/{k}"), Some(vec![1; 100]))
                .expect("valid");
        }
    });
    sim.run_until(sim.now + secs(1.0));
    sim.heal();
    let pulls_before: u64 = (0..4)
        .map(|i| sim.gossip(i).stats().streams_completed)
        .sum();
    let t = sim
        .run_until_pred(secs(120.0), secs(0.5), |s| {
            s.running().all(|i| s.gossip(i).objects().count() == 5000)
        })
        .expect("every node catches up");
    let pulls: u64 = (0..4)
        .map(|i| sim.gossip(i).stats().streams_completed)
        .sum();
    assert!(pulls > pulls_before, "caught up without a pull");
    // Two push-pull intervals (15 s) at most, not the minutes of 32 KiB answers.
    assert!(t < secs(35.0), "{t:?}");
}

/// A digest bucket holding more than one 32 KiB answer: a missed write sorting last in
/// it is still repaired (each answer starts at a random entry of the bucket).
#[test]
fn anti_entropy_repairs_entries_at_the_end_of_large_buckets() {
    let mut config = lan_config();
    config.timing.push_pull_interval = secs(1.0);
    let mut sim = Sim::new(14, 3, config, NetConfig::default(), secs(1.0));
    sim.run_until_pred(secs(30.0), secs(0.1), Sim::converged)
        .expect("join");
    sim.keep_events = false;
    // About 94 objects of 700 B in each of the 32 buckets: ~66 KiB per bucket.
    sim.with(0, |g, now| {
        for k in 0..3000 {
            g.set_object(now, &format!("obj/{k:05}"), Some(vec![1; 700]))
                .expect("valid");
        }
    });
    sim.run_until_pred(secs(120.0), secs(0.5), |s| {
        s.running().all(|i| s.gossip(i).objects().count() == 3000)
    })
    .expect("loaded");
    // Node 2 misses three writes whose keys sort after every other key of their bucket.
    sim.partition(|i| u32::from(i == 2));
    for k in 0..3 {
        sim.with(k % 2, |g, now| {
            g.set_object(now, &format!("zzz/{k}"), Some(vec![2; 700]))
                .expect("valid")
        });
    }
    // The three are the least-sent broadcasts: they are sent their 6 times (to node 0
    // or 1, or lost towards node 2) within a few gossip rounds — and before node 2
    // declares anyone dead (then, alone, it would pull full state on the heal).
    sim.run_until(sim.now + secs(1.0));
    assert!(sim.running().all(|i| {
        sim.gossip(i)
            .member(&sim.nodes[(i + 1) % 3].name)
            .is_some_and(|m| m.state.is_up())
    }));
    sim.heal();
    let pulls_before = sim.gossip(2).stats().streams_completed;
    sim.run_until_pred(secs(60.0), secs(0.5), |s| {
        s.gossip(2).objects().count() == 3003
    })
    .expect("node 2 repaired");
    assert_eq!(
        sim.gossip(2).stats().streams_completed,
        pulls_before,
        "repaired by datagrams, not a pull"
    );
}

#[test]
fn a_restarted_node_replaces_its_old_record() {
    let mut sim = joined(12, 5);
    sim.run_until(sim.now + secs(2.0));
    sim.crash(3);
    sim.run_until(sim.now + secs(0.2));
    let mut record = sim.nodes[3].initial.clone();
    record.underlay = Ipv4Addr::new(192, 168, 99, 99);
    sim.boot(3, record);
    let old_gen = sim
        .gossip(0)
        .member(&sim.nodes[3].name)
        .expect("known")
        .incarnation
        .generation;
    let t = sim
        .run_until_pred(secs(10.0), STEP, Sim::converged)
        .expect("restart never seen");
    eprintln!("restart seen everywhere after {t:?}");
    let m = sim.gossip(0).member(&sim.nodes[3].name).expect("known");
    assert!(m.incarnation.generation >= old_gen);
    assert_eq!(
        m.record.map(|r| r.underlay),
        Some(Ipv4Addr::new(192, 168, 99, 99))
    );
    sim.run_until(sim.now + secs(10.0));
    assert!(sim.converged());
    assert_eq!(
        sim.false_downs(),
        0,
        "a quick restart is an update, not a death"
    );
}

#[test]
fn wrong_key_cannot_join_read_or_inject() {
    let n = 5;
    let mut sim = Sim::new(13, n, lan_config(), NetConfig::default(), secs(1.0));
    sim.nodes[4].keyring = Keyring::new(SecretKey([7; 32]));
    let expected: Vec<usize> = (0..4).collect();
    sim.run_until(sim.now + secs(20.0));
    for &i in &expected {
        assert!(sim.sees_exactly(i, &expected), "{i}");
        assert!(sim.gossip(i).member(&sim.nodes[4].name).is_none());
    }
    assert_eq!(
        sim.gossip(4).members().count(),
        1,
        "the outsider learned nobody"
    );
    // It announced itself to the seed, which could not open a single packet.
    assert!(sim.gossip(0).stats().drop_count(GossipDrop::DecryptFailed) > 0);
    // Nor can it read the cluster's traffic.
    sim.capture = Some(Vec::new());
    sim.run_until(sim.now + secs(2.0));
    let captured = sim.capture.take().unwrap_or_default();
    let from = sim.nodes[0].addr;
    for (_, _, bytes) in captured.iter().take(20) {
        sim.with(4, |g, now| g.handle_datagram(now, from, bytes));
    }
    assert_eq!(
        sim.gossip(4).stats().drop_count(GossipDrop::DecryptFailed),
        20
    );
    assert_eq!(sim.gossip(4).members().count(), 1);
}

#[test]
fn replayed_datagrams_are_dropped() {
    let mut sim = joined(14, 3);
    sim.capture = Some(Vec::new());
    sim.run_until(sim.now + secs(2.0));
    let captured = sim.capture.take().unwrap_or_default();
    assert!(!captured.is_empty());
    let before: u64 = sim.total_drops(GossipDrop::Replayed);
    let mut replayed = 0;
    for (src, dst, bytes) in captured.iter().take(50) {
        let Some(&to) = sim.by_addr.get(dst) else {
            continue;
        };
        let from = sim.nodes[*src].addr;
        sim.with(to, |g, now| g.handle_datagram(now, from, bytes));
        replayed += 1;
    }
    let after = sim.total_drops(GossipDrop::Replayed);
    // Every copy is dropped: either seen already, or older than the window.
    assert_eq!(after - before, replayed, "every replay counted");
    sim.run_until(sim.now + secs(5.0));
    assert!(sim.converged());
}

#[test]
fn keys_rotate_without_downtime() {
    let mut sim = joined(15, 5);
    let new = SecretKey([9; 32]);
    for i in 0..5 {
        sim.with(i, |g, _| g.keyring_mut().install(new.clone()));
        sim.run_until(sim.now + secs(0.5));
    }
    for i in 0..5 {
        sim.with(i, |g, _| {
            g.keyring_mut().use_primary(&new).expect("installed")
        });
        sim.run_until(sim.now + secs(0.5));
    }
    for i in 0..5 {
        sim.with(i, |g, _| {
            g.keyring_mut().remove(&cluster_key()).expect("not primary")
        });
        sim.run_until(sim.now + secs(0.5));
    }
    sim.run_until(sim.now + secs(5.0));
    assert!(sim.converged());
    assert_eq!(sim.false_downs(), 0);
    assert_eq!(sim.total_drops(GossipDrop::DecryptFailed), 0);
}

fn subnet_config(cluster: &str) -> GossipConfig {
    let mut config = lan_config();
    config.subnet_pool = Some(SubnetPool {
        cluster: cluster.parse().expect("cidr"),
        prefix: 24,
    });
    config
}

fn subnets(sim: &Sim) -> Vec<(usize, Ipv4Net)> {
    sim.running()
        .filter_map(|i| Some((i, sim.gossip(i).local().pod_subnet?)))
        .collect()
}

fn assert_disjoint(claims: &[(usize, Ipv4Net)]) {
    for (a, (i, x)) in claims.iter().enumerate() {
        for (j, y) in &claims[a + 1..] {
            assert!(!subnet::overlaps(*x, *y), "{i} {x} overlaps {j} {y}");
        }
    }
}

#[test]
fn nodes_without_subnets_claim_disjoint_ones() {
    let n = 30;
    // 32 subnets for 30 nodes: plenty of hash collisions to probe past.
    let mut sim = Sim::new(
        16,
        n,
        subnet_config("10.244.0.0/19"),
        NetConfig::default(),
        secs(3.0),
    );
    sim.run_until_pred(secs(60.0), secs(0.1), |s| {
        s.converged() && subnets(s).len() == n && {
            let c = subnets(s);
            c.iter()
                .enumerate()
                .all(|(a, (_, x))| c[a + 1..].iter().all(|(_, y)| !subnet::overlaps(*x, *y)))
        }
    })
    .expect("claims never settled");
    assert_disjoint(&subnets(&sim));
    // Every node's view of every other node's subnet matches.
    assert!(sim.converged());
}

/// A pool and the first node index `j` whose preferred subnet is node 0's, with room
/// for everyone: a partition that cuts `j` off makes both claim the same subnet. (The
/// preferred index is `hash(name) mod count`, so only the pool's size matters.)
fn colliding_pool() -> (String, usize) {
    for len in (16..=22u8).rev() {
        let pool = format!("10.0.0.0/{len}");
        let cluster: Ipv4Net = pool.parse().expect("cidr");
        let count = 1usize << (24 - len);
        let first = subnet::choose_subnet(&node_name(0), cluster, 24, &[]);
        let last = 6.min(count - 2);
        if let Some(j) =
            (1..=last).find(|&j| subnet::choose_subnet(&node_name(j), cluster, 24, &[]) == first)
        {
            return (pool, j);
        }
    }
    panic!("no colliding pool");
}

#[test]
fn conflicting_claims_from_a_partition_resolve_after_heal() {
    let (pool, j) = colliding_pool();
    let n = j + 1;
    let mut sim = Sim::new(17, n, subnet_config(&pool), NetConfig::default(), secs(0.5));
    // Node j cannot reach the seed: it claims blind after claim_wait, and picks node 0's.
    sim.partition(|i| u32::from(i == j));
    sim.run_until(sim.now + secs(20.0));
    let before: BTreeMap<usize, Ipv4Net> = subnets(&sim).into_iter().collect();
    assert_eq!(before.len(), n, "{before:?}");
    assert_eq!(before[&0], before[&j], "the partition made a conflict");
    sim.heal();
    let t = sim
        .run_until_pred(secs(60.0), secs(0.1), |s| {
            let c = subnets(s);
            s.converged()
                && c.len() == n
                && c.iter()
                    .enumerate()
                    .all(|(a, (_, x))| c[a + 1..].iter().all(|(_, y)| !subnet::overlaps(*x, *y)))
        })
        .expect("conflict never resolved");
    let after: BTreeMap<usize, Ipv4Net> = subnets(&sim).into_iter().collect();
    eprintln!("conflict resolved {t:?} after heal: before {before:?}, after {after:?}");
    // Node 0 claimed at boot, node j only after claim_wait: the older claim stays, the
    // newer one moves, and nobody else is disturbed.
    for i in 0..j {
        assert_eq!(after[&i], before[&i], "node {i} kept its claim");
    }
    assert_ne!(after[&j], before[&j]);
    let changes = sim.nodes[j]
        .seen
        .iter()
        .filter(|(_, s)| matches!(s, Seen::Subnet(_)))
        .count();
    assert_eq!(changes, 2, "claimed blind once, re-claimed once");
}

#[test]
fn a_restart_with_the_persisted_claim_keeps_it() {
    let mut sim = Sim::new(
        18,
        5,
        subnet_config("10.244.0.0/16"),
        NetConfig::default(),
        secs(1.0),
    );
    sim.run_until_pred(secs(30.0), secs(0.1), |s| {
        s.converged() && subnets(s).len() == 5
    })
    .expect("claims");
    let persisted = sim.gossip(2).local().clone();
    let subnet = persisted.pod_subnet.expect("claimed");
    sim.crash(2);
    sim.run_until(sim.now + secs(10.0));
    sim.nodes[2].seen.clear();
    let mut record = sim.nodes[2].initial.clone();
    record.pod_subnet = persisted.pod_subnet;
    record.subnet_claimed_at = persisted.subnet_claimed_at;
    sim.boot(2, record);
    sim.run_until_pred(secs(30.0), secs(0.1), Sim::converged)
        .expect("rejoin");
    sim.run_until(sim.now + secs(5.0));
    assert_eq!(sim.gossip(2).local().pod_subnet, Some(subnet));
    assert!(
        !sim.nodes[2]
            .seen
            .iter()
            .any(|(_, s)| matches!(s, Seen::Subnet(_)))
    );
    assert_disjoint(&subnets(&sim));
}

/// Measured figures for docs/gossip.md:
/// `cargo test -p overlayd-proto --release -- --ignored gossip_report --nocapture`
#[test]
#[ignore = "measurement report; run in release with --nocapture"]
fn gossip_report() {
    println!(
        "| N | join converged | broadcasts drained after | update on all | failure on all | false downs | B/s per node (payload) | B/s per node (+IP/UDP) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (seed, n, spread) in [(100u64, 5usize, 1.0), (101, 100, 5.0), (102, 1000, 10.0)] {
        let mut sim = Sim::new(seed, n, lan_config(), NetConfig::default(), secs(spread));
        sim.keep_events = n <= 100;
        let join = sim
            .run_until_pred(secs(300.0), secs(0.1), Sim::converged)
            .expect("join");
        // Steady state: traffic over 60 s with nothing changing, once the join storm's
        // broadcasts have drained.
        let drained = sim
            .run_until_pred(secs(300.0), secs(1.0), |s| {
                s.running().all(|i| s.gossip(i).pending_broadcasts() == 0)
            })
            .expect("queues drain");
        sim.run_until(sim.now + secs(10.0));
        let (b0, p0): (u64, u64) = (
            sim.nodes.iter().map(|x| x.tx_bytes).sum(),
            sim.nodes.iter().map(|x| x.tx_packets).sum(),
        );
        sim.run_until(sim.now + secs(60.0));
        let (b1, p1): (u64, u64) = (
            sim.nodes.iter().map(|x| x.tx_bytes).sum(),
            sim.nodes.iter().map(|x| x.tx_packets).sum(),
        );
        let per_node = (b1 - b0) as f64 / n as f64 / 60.0;
        let with_headers = ((b1 - b0) + 28 * (p1 - p0)) as f64 / n as f64 / 60.0;
        let downs = if sim.keep_events {
            sim.false_downs().to_string()
        } else {
            "n/a".into()
        };
        // One state change.
        let origin = n / 2;
        let name = sim.nodes[origin].name.clone();
        sim.with(origin, |g, now| {
            g.update_local(now, |r| r.zone = "moved".into())
                .expect("valid")
        });
        let update = sim
            .run_until_pred(secs(30.0), Duration::from_millis(5), |s| {
                s.running().all(|i| {
                    s.gossip(i)
                        .member(&name)
                        .and_then(|m| m.record)
                        .is_some_and(|r| r.zone == "moved")
                })
            })
            .expect("update");
        sim.run_until(sim.now + secs(5.0));
        // One crash.
        let victim = sim.nodes[1].name.clone();
        sim.crash(1);
        let detect = sim
            .run_until_pred(secs(60.0), STEP, |s| {
                s.all_see(&victim, &[MemberState::Dead])
            })
            .expect("detection");
        println!(
            "| {n} | {:.1} s | {:.0} s | {:.0} ms | {:.2} s | {downs} | {per_node:.0} | {with_headers:.0} |",
            join.as_secs_f64(),
            drained.as_secs_f64(),
            update.as_secs_f64() * 1000.0,
            detect.as_secs_f64()
        );
        let replays =
            sim.total_drops(GossipDrop::Replayed) + sim.total_drops(GossipDrop::StaleGeneration);
        if replays > 0 {
            println!("  (N={n}: {replays} datagrams dropped by replay windows)");
        }
    }
    // Failure detection spread at N=5 over many seeds.
    let mut times = Vec::new();
    for seed in 200..230 {
        let mut sim = Sim::new(seed, 5, lan_config(), NetConfig::default(), secs(1.0));
        sim.run_until_pred(secs(30.0), secs(0.1), Sim::converged)
            .expect("join");
        sim.run_until(sim.now + secs(5.0));
        let victim = sim.nodes[4].name.clone();
        sim.crash(4);
        times.push(
            sim.run_until_pred(secs(30.0), STEP, |s| {
                s.all_see(&victim, &[MemberState::Dead])
            })
            .expect("detect"),
        );
    }
    times.sort();
    let mean = times.iter().map(Duration::as_secs_f64).sum::<f64>() / times.len() as f64;
    println!(
        "\nN=5 failure known to all over 30 seeds: min {:.2} s, median {:.2} s, mean {mean:.2} s, max {:.2} s",
        times[0].as_secs_f64(),
        times[times.len() / 2].as_secs_f64(),
        times[times.len() - 1].as_secs_f64()
    );
    // False positives under loss.
    for (n, minutes, loss) in [(20usize, 10u64, 0.05), (100, 10, 0.05)] {
        let net = NetConfig {
            loss,
            ..NetConfig::default()
        };
        let mut sim = Sim::new(300 + n as u64, n, lan_config(), net, secs(5.0));
        sim.run_until_pred(secs(120.0), secs(0.1), Sim::converged)
            .expect("join under loss");
        sim.run_until(sim.now + secs(60.0 * minutes as f64));
        let failed: u64 = sim
            .running()
            .map(|i| sim.gossip(i).stats().probes_failed)
            .sum();
        let refuted: u64 = sim
            .running()
            .map(|i| sim.gossip(i).stats().refutations)
            .sum();
        println!(
            "N={n}, {minutes} min at {:.0}% loss: {failed} failed probes, {refuted} refutations, {} false downs, converged: {}",
            loss * 100.0,
            sim.false_downs(),
            sim.converged()
        );
    }
}

/// A misconfigured node announces the whole cluster CIDR as its static subnet. Claims
/// yield only to subnets no wider than one pool slot: nobody's claim is taken away, and
/// a node joining afterwards still finds a slot.
#[test]
fn a_supernet_static_subnet_takes_no_ones_claim() {
    let n = 7;
    let (wide, late) = (n - 2, n - 1);
    let mut sim = Sim::new(
        21,
        n,
        subnet_config("10.244.0.0/16"),
        NetConfig::default(),
        secs(1.0),
    );
    sim.nodes[wide].initial.pod_subnet = Some("10.244.0.0/16".parse().expect("cidr"));
    sim.nodes[wide].initial.subnet_static = true;
    for (i, at) in [(wide, 8.0), (late, 12.0)] {
        sim.nodes[i].start_at = sim.base + secs(at);
        sim.set_timer(i, Some(sim.nodes[i].start_at));
    }
    sim.run_until(sim.base + secs(25.0));
    assert!(sim.converged());
    let honest: Vec<(usize, Ipv4Net)> = subnets(&sim)
        .into_iter()
        .filter(|(i, _)| *i != wide)
        .collect();
    assert_eq!(honest.len(), n - 1, "{honest:?}");
    assert_disjoint(&honest);
    for i in (0..n).filter(|&i| i != wide) {
        let changes: Vec<&Seen> = sim.nodes[i]
            .seen
            .iter()
            .map(|(_, s)| s)
            .filter(|s| matches!(s, Seen::Subnet(_) | Seen::Exhausted))
            .collect();
        assert_eq!(changes.len(), 1, "node {i}: {changes:?}");
    }
}

/// Two slots, three nodes: the third waits without a subnet, and claims the slot a
/// departed node held once that node is forgotten.
#[test]
fn an_exhausted_node_claims_a_slot_freed_by_a_reaped_member() {
    let mut config = subnet_config("10.0.0.0/23");
    config.timing.dead_reap_after = secs(5.0);
    let mut sim = Sim::new(22, 3, config, NetConfig::default(), secs(0.5));
    sim.run_until(sim.base + secs(10.0));
    let before = subnets(&sim);
    assert_eq!(before.len(), 2, "{before:?}");
    let waiting = (0..3)
        .find(|i| !before.iter().any(|(j, _)| j == i))
        .expect("one node without a subnet");
    assert!(
        sim.nodes[waiting]
            .seen
            .iter()
            .any(|(_, s)| *s == Seen::Exhausted)
    );
    let leaver = (0..3).find(|&i| i != waiting && i != 0).expect("a leaver");
    let freed = sim.gossip(leaver).local().pod_subnet;
    sim.with(leaver, |g, now| g.leave(now));
    sim.run_until(sim.now + secs(1.0));
    sim.crash(leaver);
    sim.run_until(sim.now + secs(15.0));
    assert_eq!(sim.gossip(waiting).local().pod_subnet, freed);
}

/// Replays every datagram `src` sent (as captured) to every other running node, from
/// `src`'s address; returns how many copies were delivered.
fn replay_from(sim: &mut Sim, captured: &[(usize, SocketAddr, Vec<u8>)], src: usize) -> usize {
    let from = sim.nodes[src].addr;
    let targets: Vec<usize> = sim.running().filter(|&i| i != src).collect();
    let mut delivered = 0;
    for (_, _, bytes) in captured.iter().filter(|(s, _, _)| *s == src) {
        for &to in &targets {
            sim.with(to, |g, now| g.handle_datagram(now, from, bytes));
            delivered += 1;
        }
    }
    delivered
}

/// Datagrams of a node captured while it lived, replayed after it was forgotten, must
/// not bring it back: each node keeps what it last knew of a forgotten member (its
/// generation and replay windows) for the tombstone horizon.
#[test]
fn replays_after_a_member_is_forgotten_do_not_resurrect_it() {
    let mut config = lan_config();
    config.timing.dead_reap_after = secs(5.0);
    let mut sim = Sim::new(23, 5, config, NetConfig::default(), secs(1.0));
    sim.capture = Some(Vec::new());
    sim.run_until_pred(secs(30.0), secs(0.1), Sim::converged)
        .expect("join");
    sim.run_until(sim.now + secs(2.0));
    let gone = 3;
    let name = sim.nodes[gone].name.clone();
    sim.with(gone, |g, now| g.leave(now));
    sim.run_until(sim.now + secs(1.0));
    sim.crash(gone);
    let captured = sim.capture.take().unwrap_or_default();
    // Past dead_reap_after and the next re-announce tick: forgotten everywhere.
    sim.run_until(sim.now + secs(8.0));
    assert!(sim.running().all(|i| sim.gossip(i).member(&name).is_none()));
    let mark = sim.now;
    let delivered = replay_from(&mut sim, &captured, gone);
    assert!(delivered > 0);
    sim.run_until(sim.now + secs(3.0));
    for i in sim.running().collect::<Vec<_>>() {
        assert!(
            sim.gossip(i).member(&name).is_none_or(|m| !m.state.is_up()),
            "{i} holds {name} up again"
        );
        let since: Vec<&Seen> = sim.nodes[i]
            .seen
            .iter()
            .filter(|(t, s)| *t >= mark && matches!(s, Seen::Up(n) if *n == name))
            .map(|(_, s)| s)
            .collect();
        assert!(since.is_empty(), "{i}: {since:?}");
    }
}

/// A partition that outlasts `dead_reap_after`: both sides forget each other (and keep
/// refusing the claims they forgot them with), yet find each other again through the
/// seed once it heals.
#[test]
fn a_partition_longer_than_the_reap_time_heals() {
    let mut config = lan_config();
    config.timing.dead_reap_after = secs(5.0);
    let n = 6;
    let mut sim = Sim::new(24, n, config, NetConfig::default(), secs(1.0));
    sim.run_until_pred(secs(30.0), secs(0.1), Sim::converged)
        .expect("join");
    sim.partition(|i| u32::from(i >= 3));
    sim.run_until(sim.now + secs(20.0));
    assert!(
        (0..3).all(|i| sim.gossip(i).member(&node_name(4)).is_none()),
        "forgotten"
    );
    sim.heal();
    let t = sim
        .run_until_pred(secs(60.0), secs(0.1), Sim::converged)
        .expect("never healed");
    eprintln!("partition longer than the reap time healed {t:?} after");
}

/// A node declared dead (or that left) restarts with a *lower* generation — its clock
/// stepped back. Everyone drops its packets as stale; the ones holding it down tell it
/// so, it moves past its old generation and rejoins at once rather than after the reap.
#[test]
fn a_restart_with_a_lower_generation_rejoins() {
    for leave in [false, true] {
        let mut sim = joined(25, 5);
        sim.run_until(sim.now + secs(2.0));
        let node = 3;
        let name = sim.nodes[node].name.clone();
        let old = sim.gossip(node).generation();
        if leave {
            sim.with(node, |g, now| g.leave(now));
            sim.run_until(sim.now + secs(1.0));
        }
        sim.crash(node);
        sim.run_until_pred(secs(10.0), STEP, |s| {
            s.all_see(&name, &[MemberState::Dead, MemberState::Left])
        })
        .expect("down everywhere");
        sim.nodes[node].skew_ms = -60_000;
        let record = sim.nodes[node].initial.clone();
        sim.boot(node, record);
        assert!(sim.gossip(node).generation() < old);
        let t = sim
            .run_until_pred(secs(20.0), secs(0.1), Sim::converged)
            .unwrap_or_else(|| panic!("never rejoined (left: {leave})"));
        eprintln!("restart with a lower generation (left: {leave}) rejoined after {t:?}");
        assert!(sim.gossip(node).generation() > old);
    }
}

/// Every datagram of a busy cluster (joins with their announcements to the seed,
/// subnet claims, object writes, a record update, a leave) captured and replayed to
/// every node from a spoofed source — once right away, once after the leaver was
/// forgotten: nothing changes anywhere, and nothing is sent to the spoofed source.
#[test]
fn replays_to_any_node_from_spoofed_sources_change_nothing() {
    let mut config = subnet_config("10.244.0.0/16");
    config.timing.dead_reap_after = secs(5.0);
    let n = 5;
    let mut sim = Sim::new(26, n, config, NetConfig::default(), secs(1.0));
    sim.capture = Some(Vec::new());
    sim.run_until_pred(secs(30.0), secs(0.1), |s| {
        s.converged() && subnets(s).len() == n
    })
    .expect("join and claims");
    for i in 0..n {
        sim.with(i, |g, now| {
            g.set_object(now, &format!("obj/{i}"), Some(vec![i as u8]))
                .expect("valid")
        });
    }
    sim.with(2, |g, now| {
        g.update_local(now, |r| r.zone = "z".into()).expect("valid")
    });
    sim.run_until(sim.now + secs(3.0));
    let leaver = n - 1;
    sim.with(leaver, |g, now| g.leave(now));
    sim.run_until(sim.now + secs(1.0));
    sim.crash(leaver);
    let captured = sim.capture.take().unwrap_or_default();
    assert!(!captured.is_empty(), "nothing captured to replay");
    let spoofed = SocketAddr::from(([10, 9, 9, 9], 7946));
    let replay_all = |sim: &mut Sim| {
        let mark = sim.now;
        sim.capture = Some(Vec::new());
        let targets: Vec<usize> = sim.running().collect();
        for (_, _, bytes) in &captured {
            for &to in &targets {
                sim.with(to, |g, now| g.handle_datagram(now, spoofed, bytes));
            }
        }
        sim.run_until(sim.now + secs(3.0));
        let sent = sim.capture.take().unwrap_or_default();
        assert!(
            sent.iter().all(|(_, dst, _)| *dst != spoofed),
            "answered a spoofed source"
        );
        for i in targets {
            let events: Vec<&Seen> = sim.nodes[i]
                .seen
                .iter()
                .filter(|(t, _)| *t >= mark)
                .map(|(_, s)| s)
                .collect();
            assert!(events.is_empty(), "node {i}: {events:?}");
        }
    };
    sim.run_until(sim.now + secs(2.0));
    replay_all(&mut sim);
    // Past dead_reap_after and a re-announce tick: the leaver is forgotten everywhere.
    sim.run_until(sim.now + secs(8.0));
    let name = node_name(leaver);
    assert!(sim.running().all(|i| sim.gossip(i).member(&name).is_none()));
    replay_all(&mut sim);
    assert!(sim.converged());
}

/// A key holder turns malicious for a while: well-formed but extreme claims — maximal
/// incarnations, generations from the far future, 255-byte names, objects stamped a
/// year ahead, a static supernet record, `Left` and `Dead` about live nodes, thousands
/// of made-up sender names — then stops. Nothing panics; within a few suspicion
/// timeouts every honest node sees every other alive; no honest subnet is lost or
/// changed; tables stay bounded; an honest write wins.
#[test]
fn a_malicious_key_holder_does_no_lasting_harm() {
    use message::Message;
    let n = 8;
    let mut sim = Sim::new(
        27,
        n,
        subnet_config("10.244.0.0/16"),
        NetConfig::default(),
        secs(1.0),
    );
    sim.run_until_pred(secs(30.0), secs(0.1), |s| {
        s.converged() && subnets(s).len() == n
    })
    .expect("join and claims");
    sim.run_until(sim.now + secs(2.0));
    let before: BTreeMap<usize, Ipv4Net> = subnets(&sim).into_iter().collect();
    let mark = sim.now;
    let wall_ms = WALL0 + (sim.now - sim.base).as_millis() as u64;
    let far_gen = (wall_ms + 2 * 86_400_000) * 1000;
    let year_ms = 365 * 86_400_000;
    let mut seq = 1u64;
    let fake_alive = |name: String, subnet: Option<(&str, bool)>| {
        let mut record = NodeRecord::new(
            name,
            SocketAddr::from(([10, 66, 0, 1], 7946)),
            Ipv4Addr::new(192, 168, 66, 1),
            None,
        );
        if let Some((net, is_static)) = subnet {
            record.pod_subnet = Some(net.parse().expect("cidr"));
            record.subnet_static = is_static;
            record.subnet_claimed_at = Hlc::new(wall_ms, 0);
        }
        Message::Alive {
            inc: Incarnation {
                generation: wall_ms * 1000,
                incarnation: 0,
            },
            version: 1,
            record,
        }
    };
    for round in 0..20u64 {
        for to in 0..n {
            let victim = (to + 1 + round as usize) % n;
            let vname = node_name(victim);
            let vinc = sim.gossip(victim).member(&vname).expect("self").incarnation;
            let evil = format!("evil-{round}");
            let mut batches: Vec<(String, u64, Vec<Message>)> = Vec::new();
            // Claims about a live node: maximal, from the future, and a plausible Left
            // and Dead that only a refutation can undo.
            let inc_max = Incarnation {
                incarnation: u64::MAX,
                ..vinc
            };
            let inc_far = Incarnation {
                generation: far_gen,
                incarnation: 0,
            };
            let inc_next = Incarnation {
                incarnation: vinc.incarnation + 1,
                ..vinc
            };
            batches.push((
                evil.clone(),
                wall_ms * 1000,
                vec![
                    Message::Suspect {
                        name: vname.clone(),
                        inc: inc_max,
                        from: evil.clone(),
                    },
                    Message::Dead {
                        name: vname.clone(),
                        inc: inc_far,
                        from: evil.clone(),
                    },
                    Message::Dead {
                        name: vname.clone(),
                        inc: inc_next,
                        from: evil.clone(),
                    },
                ],
            ));
            batches.push((
                evil.clone(),
                wall_ms * 1000,
                vec![Message::Left {
                    name: vname.clone(),
                    inc: inc_next,
                }],
            ));
            // Made-up members: one with the longest name, one with a static supernet.
            batches.push((
                evil.clone(),
                wall_ms * 1000,
                vec![
                    fake_alive(format!("{}{round:02}", "x".repeat(61)), None),
                    fake_alive(format!("supernet-{round}"), Some(("10.244.0.0/16", true))),
                ],
            ));
            // 255-byte names (out of bounds: the whole datagram is malformed).
            batches.push((
                evil.clone(),
                wall_ms * 1000,
                vec![Message::Ping {
                    seq: 1,
                    target: "y".repeat(255),
                }],
            ));
            // Objects from a year ahead, and just within the drift bound.
            batches.push((
                evil.clone(),
                wall_ms * 1000,
                vec![
                    Message::Object {
                        key: "svc/web".into(),
                        hlc: Hlc::new(wall_ms + year_ms, 0),
                        writer: evil.clone(),
                        value: Some(b"evil".to_vec()),
                    },
                    Message::Object {
                        key: "svc/db".into(),
                        hlc: Hlc::new(wall_ms + 50_000, 0),
                        writer: evil.clone(),
                        value: Some(b"evil".to_vec()),
                    },
                ],
            ));
            // An envelope from the far future, and thousands of sender names.
            batches.push((evil.clone(), far_gen, vec![Message::Ack { seq: 1 }]));
            for k in 0..100 {
                batches.push((
                    format!("ghost-{round}-{k}"),
                    1,
                    vec![Message::Ack { seq: k }],
                ));
            }
            for (sender, generation, messages) in batches {
                seq += 1;
                let bytes = sim.forge(to, &sender, generation, seq, &messages);
                let spoofed = SocketAddr::from(([10, 66, 0, 2], 7946));
                sim.with(to, |g, now| g.handle_datagram(now, spoofed, &bytes));
            }
        }
        sim.run_until(sim.now + secs(0.25));
    }
    // The attacker stops. Its made-up members stop answering and die.
    let honest: Vec<usize> = (0..n).collect();
    let all_alive = |s: &Sim| {
        honest.iter().all(|&i| {
            honest.iter().filter(|&&j| j != i).all(|&j| {
                s.gossip(i).member(&node_name(j)).is_some_and(|m| {
                    m.state == MemberState::Alive && m.record == Some(s.gossip(j).local())
                })
            })
        })
    };
    let t = sim.run_until_pred(secs(30.0), secs(0.1), all_alive);
    if t.is_none() {
        for i in 0..n {
            let view: Vec<String> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let m = sim.gossip(i).member(&node_name(j));
                    format!(
                        "{j}:{:?}/{:?}/rec={}",
                        m.map(|m| m.state),
                        m.map(|m| m.incarnation),
                        m.is_some_and(|m| m.record == Some(sim.gossip(j).local()))
                    )
                })
                .collect();
            eprintln!(
                "node {i} (inc {:?}, sizes {:?}): {view:?}",
                sim.gossip(i).member(&node_name(i)).map(|m| m.incarnation),
                sim.gossip(i).table_sizes()
            );
        }
    }
    let t = t.expect("honest nodes never all alive again");
    eprintln!("after the attack: honest nodes all alive again after {t:?}");
    sim.run_until(sim.now + secs(10.0));
    assert!(all_alive(&sim));
    // No honest subnet lost or changed.
    let after: BTreeMap<usize, Ipv4Net> = subnets(&sim).into_iter().collect();
    assert_eq!(after, before);
    for i in 0..n {
        assert!(
            !sim.nodes[i]
                .seen
                .iter()
                .any(|(t, s)| *t >= mark && matches!(s, Seen::Subnet(_) | Seen::Exhausted)),
            "node {i} changed its subnet"
        );
    }
    // Bounded tables: the made-up sender names left nothing behind.
    for i in 0..n {
        let [
            members,
            forgotten,
            windows,
            relays,
            greeted,
            suspects,
            broadcasts,
        ] = sim.gossip(i).table_sizes();
        let known = members + forgotten;
        assert!(members <= n + 40, "node {i}: {members} members");
        assert!(
            windows <= 3 * known,
            "node {i}: {windows} windows for {known} known"
        );
        assert!(relays + greeted + suspects <= 3 * known, "node {i}");
        assert!(broadcasts <= 4096, "node {i}");
    }
    // Objects: the year-ahead write was dropped everywhere; an honest write wins over
    // the one within the drift bound.
    assert!(
        sim.running()
            .all(|i| sim.gossip(i).object("svc/web").is_none())
    );
    sim.with(3, |g, now| {
        g.set_object(now, "svc/db", Some(b"honest".to_vec()))
            .expect("valid")
    });
    sim.run_until(sim.now + secs(3.0));
    assert!(
        sim.running()
            .all(|i| sim.gossip(i).object("svc/db") == Some(&b"honest"[..]))
    );
    assert!(sim.total_drops(GossipDrop::Malformed) > 0);
    assert!(sim.total_drops(GossipDrop::Implausible) > 0);
}

/// An asymmetric partition: for 20 s nothing gets from one half to the other, while the
/// reverse direction works. The cut-off side is suspected and declared dead by the
/// side it cannot reach, keeps hearing accusations it can refute only one way… and
/// once the link heals everyone is alive in everyone's view again.
#[test]
fn an_asymmetric_partition_heals() {
    let n = 6;
    let mut sim = joined(28, n);
    sim.run_until(sim.now + secs(2.0));
    for a in 0..3 {
        for b in 3..n {
            sim.one_way.insert((a, b));
        }
    }
    sim.run_until(sim.now + secs(20.0));
    assert!(!sim.converged(), "the one-way cut changed nothing");
    sim.one_way.clear();
    let t = sim
        .run_until_pred(secs(60.0), secs(0.1), Sim::converged)
        .expect("never healed");
    eprintln!("asymmetric partition: full mesh {t:?} after the heal");
    sim.run_until(sim.now + secs(10.0));
    assert!(sim.converged());
}
