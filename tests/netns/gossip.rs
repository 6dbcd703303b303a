//! Gossip in real namespaces: join from one seed, failure detection, restarts that keep
//! their claimed subnet, partitions that heal, graceful leave, keys.
//!
//! Bounds here are generous so a loaded CI machine never flakes; the measured times are
//! printed (run with `--nocapture`) and reported in the issue notes.

use overlayd_proto::overlaps;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use overlayd_lab::{Lab, MemberState, in_netns};

use crate::support::{lab, ns_run, overlayd_bin, ping, two_segments, wait_for};

/// Five gossiping nodes over two segments; n1 is the seed, every node claims its subnet.
const FIVE: &str = r#"
[[node]]
name = "n1"
segment = "a"
pods = 1
[[node]]
name = "n2"
segment = "a"
pods = 1
[[node]]
name = "n3"
segment = "a"
pods = 1
[[node]]
name = "n4"
segment = "b"
pods = 1
[[node]]
name = "n5"
segment = "b"
pods = 1
"#;

const NODES: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

/// The kernel routes the daemon on `on` owns, as `ip route` prints them.
fn routes(lab: &Lab, on: &str) -> Result<String> {
    ns_run(
        &lab.node(on)?.netns(),
        &["ip", "route", "show", "proto", "79"],
    )
}

/// How many members `on` holds alive (itself included).
fn alive_count(lab: &Lab, on: &str) -> Result<usize> {
    Ok(lab
        .members(on)?
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .count())
}

fn state_of(lab: &Lab, on: &str, member: &str) -> Result<Option<MemberState>> {
    Ok(lab
        .members(on)?
        .into_iter()
        .find(|m| m.name == member)
        .map(|m| m.state))
}

fn gossip_drops(lab: &Lab, on: &str) -> Result<serde_json::Value> {
    let status: serde_json::Value =
        serde_json::from_slice(&lab.overlayd(on, &["status", "--json"])?.stdout)?;
    Ok(status["gossip"]["drops"].clone())
}

/// Every node sees all five alive, with five distinct subnets, and pods on every node
/// reach pods on every other.
fn assert_full_mesh(lab: &Lab) -> Result<()> {
    for on in NODES {
        let seen = lab.members(on)?;
        let alive: Vec<_> = seen
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| m.name.as_str())
            .collect();
        ensure!(alive.len() == 5, "{on} sees alive: {alive:?} ({seen:?})");
        let mut subnets: Vec<_> = seen.iter().filter_map(|m| m.subnet).collect();
        subnets.sort();
        subnets.dedup();
        ensure!(subnets.len() == 5, "{on} sees subnets {subnets:?}");
    }
    let report = lab.check()?;
    ensure!(report.ok(), "unreachable pairs:\n{}", report.matrix());
    Ok(())
}

/// 9: five nodes join from one seed, claim disjoint subnets and form a full mesh; a
/// `kill -9`'d node is declared dead by all, yet its routes stay on every peer while its
/// node answers (host-gw to it still works), and leave every peer within 5 s once the node
/// goes silent; restarted, it comes back with the same subnet.
pub(crate) fn five_nodes_join_from_one_seed_and_survive_kill_9() -> Result<()> {
    let mut lab = lab("g5", &two_segments(FIVE)?)?;
    assert_full_mesh(&lab)?;

    let subnet = lab.status("n5")?.pod_subnet;
    for on in &NODES[..4] {
        let routes = routes(&lab, on)?;
        ensure!(
            routes.contains(&subnet.to_string()),
            "{on} has no route to n5's {subnet}:\n{routes}"
        );
    }
    lab.kill_daemon("n5")?;
    let killed = Instant::now();
    wait_for(
        "every peer to declare n5 dead",
        Duration::from_secs(20),
        || {
            for on in &NODES[..4] {
                if state_of(&lab, on, "n5")? != Some(MemberState::Dead) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    let detected = killed.elapsed();
    // Gossip death is not data-path death: n5's kernel still forwards, so every peer
    // keeps its routes, and n4 (on n5's segment, host-gw) still reaches n5's pod.
    let n5_pod = lab.pod("n5-p1")?.ip;
    let n4_pod = lab.pod("n4-p1")?.netns.clone();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(1));
        for on in &NODES[..4] {
            let routes = routes(&lab, on)?;
            ensure!(
                routes.contains(&subnet.to_string()),
                "{on} dropped its route to n5's {subnet} while n5's node still answers:\n{routes}"
            );
        }
    }
    ping(&n4_pod, n5_pod, 3).context("n4's pod to n5's pod (host-gw) with n5's daemon dead")?;
    // Shown as such: `peers` and `members` say its daemon is down.
    let n5_peer = lab
        .peers("n4")?
        .into_iter()
        .find(|p| p.name == "n5")
        .context("n4 no longer lists n5 as a peer")?;
    ensure!(
        n5_peer.daemon_down,
        "n4's peers do not show n5's daemon down: {n5_peer:?}"
    );
    let n5_member = lab
        .members("n4")?
        .into_iter()
        .find(|m| m.name == "n5")
        .context("n4 no longer lists n5 as a member")?;
    ensure!(
        n5_member.daemon_down && n5_member.state == MemberState::Dead,
        "n4's members do not show n5 dead with its daemon down: {n5_member:?}"
    );
    // Now the node itself goes (everything on its underlay dropped): every peer withdraws
    // its routes within 5 s.
    ns_run(
        &lab.node("n5")?.netns(),
        &[
            "nft",
            "add table ip cut; \
             add chain ip cut in { type filter hook input priority -300; policy drop; }; \
             add chain ip cut out { type filter hook output priority -300; policy drop; }",
        ],
    )?;
    let cut = Instant::now();
    wait_for(
        "n5's routes to leave every peer",
        Duration::from_secs(5),
        || {
            for on in &NODES[..4] {
                if routes(&lab, on)?.contains(&subnet.to_string()) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    let routes_gone = cut.elapsed();
    ns_run(&lab.node("n5")?.netns(), &["nft", "delete table ip cut"])?;
    eprintln!(
        "gossip: kill -9 of n5 known to all 4 peers after {detected:?}; its routes kept while \
         its node answered, gone {routes_gone:?} after the node went silent"
    );

    // The tunnel port now refuses the dead member's underlay address.
    let unknown = |lab: &Lab| -> Result<u64> {
        let status: serde_json::Value =
            serde_json::from_slice(&lab.overlayd("n1", &["status", "--json"])?.stdout)?;
        Ok(status["drops"]["unknown_sender"].as_u64().unwrap_or(0))
    };
    let before = unknown(&lab)?;
    let from_dead = in_netns(&lab.node("n5")?.netns(), || UdpSocket::bind("0.0.0.0:0"))?;
    from_dead.send_to(
        &[0x08, 0, 0, 0, 0, 0, 1, 0],
        (lab.node("n1")?.underlay(), 8472),
    )?;
    wait_for(
        "n1 to refuse tunnel traffic from the dead n5",
        Duration::from_secs(5),
        || Ok(unknown(&lab)? > before),
    )?;

    lab.start_daemon("n5")?;
    ensure!(
        lab.status("n5")?.pod_subnet == subnet,
        "n5 came back with another subnet"
    );
    wait_for("n5 alive everywhere again", Duration::from_secs(20), || {
        for on in &NODES[..4] {
            if state_of(&lab, on, "n5")? != Some(MemberState::Alive) {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    assert_full_mesh(&lab)
}

/// 9: a 30 s partition between the two segments: each side declares the other dead;
/// after healing, the full mesh comes back without any restart.
pub(crate) fn partition_for_30s_then_heal_restores_the_mesh() -> Result<()> {
    let lab = lab("gp", &two_segments(FIVE)?)?;
    assert_full_mesh(&lab)?;
    let pids: Vec<_> = NODES
        .iter()
        .map(|n| lab.node(n).map(|n| n.pid()))
        .collect::<Result<_, _>>()?;

    lab.partition("a", "b")?;
    let cut = Instant::now();
    let sides: [(&[&str], &[&str]); 2] = [(&NODES[..3], &NODES[3..]), (&NODES[3..], &NODES[..3])];
    wait_for(
        "each side to declare the other dead",
        Duration::from_secs(25),
        || {
            for (here, there) in sides {
                for on in here {
                    for other in there {
                        if state_of(&lab, on, other)? != Some(MemberState::Dead) {
                            return Ok(false);
                        }
                    }
                }
            }
            Ok(true)
        },
    )?;
    eprintln!(
        "gossip: partition detected on both sides after {:?}",
        cut.elapsed()
    );
    std::thread::sleep(Duration::from_secs(30).saturating_sub(cut.elapsed()));

    lab.heal()?;
    let healed = Instant::now();
    wait_for("the mesh to heal", Duration::from_secs(60), || {
        for on in NODES {
            let alive = alive_count(&lab, on)?;
            if alive != 5 {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    eprintln!(
        "gossip: full membership again {:?} after healing a 30 s partition",
        healed.elapsed()
    );
    wait_for(
        "pods to reach each other again",
        Duration::from_secs(20),
        || Ok(lab.check()?.ok()),
    )?;
    let after: Vec<_> = NODES
        .iter()
        .map(|n| lab.node(n).map(|n| n.pid()))
        .collect::<Result<_, _>>()?;
    ensure!(pids == after, "a daemon restarted: {pids:?} -> {after:?}");
    assert_full_mesh(&lab)
}

/// Leaving (`overlayd leave`) is announced: peers mark the node `left` at once, far
/// sooner than failure detection, and drop its routes.
pub(crate) fn graceful_leave_is_seen_at_once() -> Result<()> {
    let mut lab = lab("gl", &two_segments(FIVE)?)?;
    assert_full_mesh(&lab)?;
    let subnet = lab.status("n3")?.pod_subnet;
    ensure!(
        routes(&lab, "n1")?.contains(&subnet.to_string()),
        "n1 has no route to n3's {subnet}"
    );
    let t = Instant::now();
    lab.leave_daemon("n3")?;
    wait_for("peers to see n3 leave", Duration::from_secs(3), || {
        for on in ["n1", "n2", "n4", "n5"] {
            if state_of(&lab, on, "n3")? != Some(MemberState::Left) {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    eprintln!(
        "gossip: graceful leave of n3 seen by all after {:?}",
        t.elapsed()
    );
    wait_for(
        "n1 to drop its route to n3",
        Duration::from_secs(10),
        || Ok(!routes(&lab, "n1")?.contains(&subnet.to_string())),
    )
}

/// A node holding the wrong key is refused: it never appears among the members and the
/// others count its datagrams as undecryptable. Forged, truncated and replayed gossip
/// datagrams are dropped and counted too, and membership carries on.
pub(crate) fn wrong_key_and_forged_gossip_are_refused_and_counted() -> Result<()> {
    let nodes = format!(
        "{FIVE}\n[[node]]\nname = \"x1\"\nsegment = \"b\"\npods = 0\ndaemon = false\npod_subnet = \"10.244.250.0/24\"\n"
    );
    let lab = lab("gk", &two_segments(&nodes)?)?;
    let n1 = lab.node("n1")?.underlay();
    let before = gossip_drops(&lab, "n1")?;

    // An overlayd with its own key, seeded with n1.
    let dir = lab.run_dir().join("intruder");
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("other.key");
    std::fs::write(&key, overlayd::keys::generate()?)?;
    let config = dir.join("x1.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"x1\"\nunderlay_interface = \"eth0\"\n[cluster]\nname = \"lab-{}\"\n\
             [daemon]\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\n\
             [gossip]\nkey_files = [\"{}\"]\nseeds = [\"{n1}\"]\n",
            lab.name(),
            dir.join("state").display(),
            dir.join("sock").display(),
            key.display()
        ),
    )?;
    let log = std::fs::File::create(dir.join("x1.log"))?;
    let mut intruder =
        overlayd_lab::netns::daemon_command(&lab.node("x1")?.netns(), overlayd_bin())?;
    intruder
        .args(["run", "--config"])
        .arg(&config)
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut intruder = crate::support::KillOnDrop(intruder.spawn()?);

    // Forged datagrams from the intruder's namespace straight at n1's gossip port.
    let target = SocketAddr::from((n1, 7946));
    let sock = in_netns(&lab.node("x1")?.netns(), || UdpSocket::bind("0.0.0.0:0"))?;
    use overlayd_proto::gossip::SEAL_VERSION;
    sock.send_to(&[SEAL_VERSION, 2, 3], target)?; // shorter than the sealing overhead
    let mut junk = vec![0u8; 200];
    junk[0] = SEAL_VERSION;
    sock.send_to(&junk, target)?; // right version byte, wrong everything else
    sock.send_to(&[0xee; 200], target)?; // unknown version

    std::thread::sleep(Duration::from_secs(8));
    // It must have been knocking all along, or "not listed" proves nothing.
    ensure!(
        intruder.0.try_wait()?.is_none(),
        "the intruder daemon exited: {}",
        std::fs::read_to_string(dir.join("x1.log")).unwrap_or_default()
    );
    for on in NODES {
        let names: Vec<_> = lab.members(on)?.into_iter().map(|m| m.name).collect();
        ensure!(
            !names.iter().any(|n| n == "x1"),
            "{on} lists the intruder: {names:?}"
        );
    }
    let after = gossip_drops(&lab, "n1")?;
    let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    ensure!(
        delta("decrypt_failed") >= 2,
        "decrypt_failed did not count the intruder: {before} -> {after}"
    );
    ensure!(delta("truncated") >= 1, "truncated not counted: {after}");
    ensure!(
        delta("unknown_version") >= 1,
        "unknown_version not counted: {after}"
    );
    ping(&lab.pod("n1-p1")?.netns, lab.pod("n5-p1")?.ip, 2)?;

    replay_is_counted(&lab, n1)
}

/// Re-sends a genuine gossip datagram (captured from n2's socket with a packet filter is
/// overkill: a datagram sealed with the lab's key by a gossip core of our own is as
/// genuine) and checks n1 counts the copy as replayed.
fn replay_is_counted(lab: &Lab, n1: Ipv4Addr) -> Result<()> {
    use overlayd_proto::gossip::{Gossip, GossipConfig, Keyring, NodeRecord};
    let key = overlayd::keys::load(&overlayd_lab::config::gossip_key_path(lab.run_dir()))?;
    let n4 = lab.node("n4")?;
    let sock = in_netns(&n4.netns(), || UdpSocket::bind("0.0.0.0:0"))?;
    let me = sock.local_addr()?;
    let record = NodeRecord::new(
        "probe",
        SocketAddr::from((n4.underlay(), me.port())),
        n4.underlay(),
        None,
    );
    let config = GossipConfig::new(
        format!("lab-{}", lab.name()),
        vec![SocketAddr::from((n1, 7946))],
    );
    let now = Instant::now();
    let mut core = Gossip::new(
        config,
        record,
        Keyring::new(key),
        1,
        7,
        now,
        overlayd::gossip::wall_clock_ms(),
    )?;
    let datagram = std::iter::from_fn(|| core.poll_transmit())
        .find(|t| t.dst.port() == 7946 && t.dst.ip() == std::net::IpAddr::V4(n1))
        .context("the probe core sent nothing to n1")?;
    let before = gossip_drops(lab, "n1")?["replayed"].as_u64().unwrap_or(0);
    sock.send_to(&datagram.payload, datagram.dst)?;
    std::thread::sleep(Duration::from_millis(300));
    sock.send_to(&datagram.payload, datagram.dst)?;
    sock.send_to(&datagram.payload, datagram.dst)?;
    wait_for("replays to be counted", Duration::from_secs(5), || {
        Ok(gossip_drops(lab, "n1")?["replayed"].as_u64().unwrap_or(0) >= before + 2)
    })
}

/// Key rotation without downtime: install a new key on every node, make it primary
/// everywhere, remove the old one; members stay alive throughout and pods keep talking.
pub(crate) fn key_rotation_keeps_the_cluster_up() -> Result<()> {
    let lab = lab("gr", &two_segments(FIVE)?)?;
    let dir = lab.run_dir().join("rotation");
    std::fs::create_dir_all(&dir)?;
    let new = dir.join("new.key");
    std::fs::write(&new, overlayd::keys::generate()?)?;
    let old = overlayd_lab::config::gossip_key_path(lab.run_dir());
    let (new, old) = (new.display().to_string(), old.display().to_string());
    let undecryptable = |lab: &Lab| -> Result<Vec<u64>> {
        NODES
            .iter()
            .map(|on| {
                Ok(gossip_drops(lab, on)?["decrypt_failed"]
                    .as_u64()
                    .unwrap_or(0))
            })
            .collect()
    };
    let before = undecryptable(&lab)?;
    for step in [
        ["install", new.as_str()],
        ["use", new.as_str()],
        ["remove", old.as_str()],
    ] {
        for on in NODES {
            lab.overlayd(on, &["key", step[0], step[1]])
                .with_context(|| format!("key {} on {on}", step[0]))?;
        }
        // Longer than failure detection takes: a broken step would have cost a member.
        std::thread::sleep(Duration::from_secs(4));
        for on in NODES {
            let alive = alive_count(&lab, on)?;
            ensure!(
                alive == 5,
                "after `key {}` {on} sees {alive} alive",
                step[0]
            );
        }
    }
    let after = undecryptable(&lab)?;
    ensure!(
        before == after,
        "datagrams failed to decrypt during the rotation: {before:?} -> {after:?}"
    );
    let keys: serde_json::Value =
        serde_json::from_slice(&lab.overlayd("n1", &["key", "list", "--json"])?.stdout)?;
    ensure!(keys["keys"].as_array().map(Vec::len) == Some(1), "{keys}");
    let refused = lab.overlayd("n1", &["key", "remove", &new]);
    ensure!(
        format!("{:?}", refused.err()).contains("is the primary key"),
        "removing the primary key was accepted, or refused for another reason"
    );
    ping(&lab.pod("n1-p1")?.netns, lab.pod("n4-p1")?.ip, 2).map(drop)
}

/// A configured (static) subnet beats a claimed one. n1 is restarted with n2's claimed
/// subnet as its static `pod_subnet`: n2 loses the conflict and moves its bridge address,
/// NAT rule and pods to a new claim; n1 moves its own pods (recorded in its old subnet)
/// into the static one and drops its old bridge address. Pods reach each other after.
pub(crate) fn static_subnet_wins_and_the_claimer_moves_its_pods() -> Result<()> {
    let mut lab = crate::support::default_lab("gs")?;
    let taken = lab.status("n2")?.pod_subnet;
    let n1_old = lab.status("n1")?.pod_subnet;

    lab.kill_daemon("n1")?;
    let path = lab.node("n1")?.config_path();
    let mut config: toml::Table = std::fs::read_to_string(&path)?.parse()?;
    let node = config
        .get_mut("node")
        .and_then(|n| n.as_table_mut())
        .context("[node]")?;
    node.insert("pod_subnet".into(), toml::Value::String(taken.to_string()));
    std::fs::write(&path, toml::to_string(&config)?)?;
    lab.start_daemon("n1")?;

    wait_for("n2 to give up its subnet", Duration::from_secs(20), || {
        Ok(lab.status("n2")?.pod_subnet != taken)
    })?;
    let n2_new = lab.status("n2")?.pod_subnet;
    ensure!(
        lab.status("n1")?.pod_subnet == taken,
        "n1 does not hold its static subnet"
    );
    ensure!(
        !overlaps(n2_new, taken),
        "n2 moved to {n2_new}, which overlaps {taken}"
    );

    // Every pod of both nodes lives in its node's subnet now, and nothing is left behind.
    let mut ips = Vec::new();
    for (node, subnet, gone) in [("n1", taken, n1_old), ("n2", n2_new, taken)] {
        wait_for(
            &format!("{node}'s pods to move into {subnet}"),
            Duration::from_secs(20),
            || {
                let pods = pods_of(&lab, node)?;
                Ok(pods.iter().all(|(_, ip)| subnet.contains(ip)))
            },
        )?;
        for (pod, ip) in pods_of(&lab, node)? {
            let addrs = ns_run(
                &overlayd_lab::pod_netns(lab.name(), &pod),
                &["ip", "-4", "-br", "addr", "show", "dev", "eth0"],
            )?;
            ensure!(addrs.contains(&ip.to_string()), "{pod} lacks {ip}: {addrs}");
            let held = addrs
                .split_whitespace()
                .filter_map(|w| w.split('/').next()?.parse::<Ipv4Addr>().ok());
            ensure!(
                !held.into_iter().any(|a| gone.contains(&a)),
                "{pod} keeps an address of {gone}: {addrs}"
            );
            ips.push((pod, ip));
        }
        let bridge = ns_run(
            &lab.node(node)?.netns(),
            &["ip", "-4", "-br", "addr", "show", "dev", "ovd0"],
        )?;
        let gateway = overlayd_proto::ipam::PodIpam::gateway_of(subnet);
        ensure!(
            bridge.contains(&format!("{gateway}/")) && bridge.matches('/').count() == 1,
            "{node}'s bridge should hold only {gateway}: {bridge}"
        );
        let rules = ns_run(
            &lab.node(node)?.netns(),
            &["nft", "list", "table", "ip", "overlayd"],
        )?;
        ensure!(
            rules.contains(&format!("ip saddr {subnet} ")),
            "{node}'s NAT rule: {rules}"
        );
    }
    let ip_of = |pod: &str| {
        ips.iter()
            .find(|(p, _)| p == pod)
            .map(|(_, ip)| *ip)
            .context("pod")
    };
    let netns = |pod: &str| overlayd_lab::pod_netns(lab.name(), pod);
    wait_for(
        "pods to reach each other in their new subnets",
        Duration::from_secs(20),
        || {
            Ok(ping(&netns("n1-p1"), ip_of("n2-p1")?, 1).is_ok()
                && ping(&netns("n2-p2"), ip_of("n1-p2")?, 1).is_ok()
                && ping(&netns("n3-p1"), ip_of("n2-p1")?, 1).is_ok()
                && ping(&netns("n4-p1"), ip_of("n1-p1")?, 1).is_ok())
        },
    )
}

/// `(pod, ip)` as the node's daemon records them.
fn pods_of(lab: &Lab, node: &str) -> Result<Vec<(String, Ipv4Addr)>> {
    let out = lab.overlayd(node, &["pod", "list", "--json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["pods"]
        .as_array()
        .context("pods")?
        .iter()
        .map(|p| {
            let name = p["name"].as_str().context("name")?.to_owned();
            let ip = p["ip"].as_str().context("ip")?.parse()?;
            Ok((name, ip))
        })
        .collect()
}

/// Issue 9: a node whose underlay link goes down (its daemon running) loses its routes on
/// every peer within 5 s — host-gw peers on its segment and tunnel peers across the
/// router alike — and gets them back once the link returns.
pub(crate) fn a_node_whose_link_goes_down_loses_its_routes_and_gets_them_back() -> Result<()> {
    let lab = lab("ld", &two_segments(FIVE)?)?;
    assert_full_mesh(&lab)?;
    let subnet = lab.status("n2")?.pod_subnet.to_string();
    let others = ["n1", "n3", "n4", "n5"];
    let router = lab.router_netns();
    ns_run(&router, &["ip", "link", "set", "n2", "down"])?;
    let cut = Instant::now();
    wait_for(
        "n2's routes to leave every peer",
        Duration::from_secs(5),
        || {
            for on in others {
                if routes(&lab, on)?.contains(&subnet) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    let gone = cut.elapsed();
    ns_run(&router, &["ip", "link", "set", "n2", "up"])?;
    let back = Instant::now();
    wait_for(
        "n2's routes to come back on every peer",
        Duration::from_secs(30),
        || {
            for on in others {
                if !routes(&lab, on)?.contains(&subnet) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    let returned = back.elapsed();
    // Routes back; the first packet may still wait for a neighbour entry or a path probe.
    let n2_pod = lab.pod("n2-p1")?.ip;
    for from in ["n1-p1", "n4-p1"] {
        let ns = lab.pod(from)?.netns.clone();
        wait_for(
            &format!("{from} to reach n2's pod after the link returned"),
            Duration::from_secs(5),
            || Ok(ping(&ns, n2_pod, 3).is_ok()),
        )?;
    }
    eprintln!(
        "n2's link down: its routes gone from every peer after {gone:?}; back {returned:?} \
         after the link returned"
    );
    Ok(())
}
