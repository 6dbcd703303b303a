//! The lab against the real kernel (needs root): namespaces, addresses, routing through
//! the router, teardown after panics and crashes, and the daemon workflow, static and by
//! gossip, against a fake `overlayd` (tests/fake-overlayd.sh) that honours the CLI
//! contract with host-gw routes.

// A test file whose harness is libtest-mimic: clippy cannot see `#[test]` here.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use overlayd_lab::{Lab, MemberState, TWO_SEGMENTS, node_netns};
use overlayd_lab::{
    LabCommand, LabError, Topology, in_netns, lab_namespaces, netns, process, run_dir, run_in,
};

const FAKE_OVERLAYD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake-overlayd.sh");

/// Env var that turns `child_crashes_after_up` from a no-op into the crashing child.
const CRASH_CHILD_ENV: &str = "OVERLAYD_LAB_TEST_CRASH_CHILD";

/// `top_level` keys, segments a and b, then `nodes`.
fn with_segments(top_level: &str, nodes: &str) -> String {
    format!("{top_level}\n{TWO_SEGMENTS}{nodes}")
}

const DAEMONLESS: &str = r#"
[[node]]
name = "n1"
segment = "a"
daemon = false
[[node]]
name = "n2"
segment = "a"
daemon = false
[[node]]
name = "n3"
segment = "b"
daemon = false
"#;

/// n1, n2 with (fake) daemons and two pods each on segment a; n3 without a daemon on b;
/// static peers.
const STATIC_DAEMONS: &str = r#"
[[node]]
name = "n1"
segment = "a"
[[node]]
name = "n2"
segment = "a"
[[node]]
name = "n3"
segment = "b"
daemon = false
"#;

/// Gossip through n1: n1, n2 with two pods each on segment a, n3 without pods on b (the
/// fake has no tunnel), k without a daemon (a static peer, subnet 10.244.4.0/24) on b.
const GOSSIP_DAEMONS: &str = r#"
[[node]]
name = "n1"
segment = "a"
[[node]]
name = "n2"
segment = "a"
[[node]]
name = "n3"
segment = "b"
pods = 0
[[node]]
name = "k"
segment = "b"
daemon = false
"#;

/// A lab name no other test (or test process) uses: a tag letter and this process's id.
fn unique_name(tag: char) -> String {
    let mut pid = std::process::id();
    let mut digits = Vec::new();
    while pid > 0 {
        digits.push(char::from_digit(pid % 36, 36).expect("a digit below 36"));
        pid /= 36;
    }
    let name: String = std::iter::once(tag)
        .chain(digits.into_iter().rev())
        .collect();
    // A crashed earlier run with a recycled pid may have left it behind.
    Lab::down(&name).expect("removing a stale lab of the same name");
    name
}

fn no_daemon() -> &'static Path {
    Path::new("/nonexistent/overlayd")
}

fn daemonless_lab_builds_segments_and_routes_between_them() {
    let name = unique_name('d');
    let topo = Topology::parse(&with_segments("", DAEMONLESS)).unwrap();

    let lab = Lab::up(&name, &topo, no_daemon()).unwrap();

    let ns = |node: &str| node_netns(&name, node);
    let expected: Vec<String> = ["n1", "n2", "n3", "router"].iter().map(|n| ns(n)).collect();
    assert_eq!(lab_namespaces(&name).unwrap(), expected);
    let addr = |node: &str| {
        run_in(
            &ns(node),
            &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
        )
        .unwrap()
    };
    assert!(addr("n1").contains("inet 10.100.1.11/24"), "{}", addr("n1"));
    assert!(addr("n2").contains("inet 10.100.1.12/24"), "{}", addr("n2"));
    assert!(addr("n3").contains("inet 10.100.2.11/24"), "{}", addr("n3"));
    let route = run_in(&ns("n3"), &["ip", "route", "show", "default"]).unwrap();
    assert!(route.contains("via 10.100.2.1 dev eth0"), "{route}");
    let router = lab.router_netns();
    let bridge = run_in(&router, &["ip", "-4", "-o", "addr", "show", "dev", "seg-b"]).unwrap();
    assert!(bridge.contains("inet 10.100.2.1/24"), "{bridge}");
    let port = run_in(&router, &["ip", "-o", "link", "show", "n3"]).unwrap();
    assert!(port.contains("master seg-b"), "{port}");
    for n in ["n1", "n2", "n3", "router"] {
        let lo = run_in(&ns(n), &["ip", "-o", "link", "show", "lo"]).unwrap();
        assert!(lo.contains("UP"), "lo of {n} is down: {lo}");
    }

    // Across the router: n1 (segment a) to n3 (segment b), by ping and by TCP.
    run_in(&ns("n1"), &["ping", "-c", "1", "-W", "2", "10.100.2.11"]).unwrap();
    let n3 = lab.node("n3").unwrap().underlay();
    let listener = in_netns(&ns("n3"), || TcpListener::bind((n3, 0)).unwrap());
    let server_addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        (peer.ip(), text)
    });
    in_netns(&ns("n1"), || {
        TcpStream::connect(server_addr)
            .unwrap()
            .write_all(b"hello")
            .unwrap()
    });
    assert_eq!(
        server.join().unwrap(),
        (Ipv4Addr::new(10, 100, 1, 11).into(), "hello".to_string())
    );

    assert!(lab.exec("n1", &["true".into()]).unwrap().success());
    assert_eq!(
        lab.exec("router", &["false".into()]).unwrap().code(),
        Some(1)
    );
    assert!(matches!(
        lab.exec("n9", &["true".into()]),
        Err(LabError::UnknownTarget { .. })
    ));
    let ps = serde_json::to_value(lab.ps()).unwrap();
    assert_eq!(ps["nodes"][2]["underlay"], "10.100.2.11");
    assert_eq!(ps["nodes"][2]["pid"], serde_json::Value::Null);
    assert_eq!(Lab::open(&name).unwrap().ps(), lab.ps());
    assert!(lab.check().unwrap().results.is_empty());
    let again = Lab::up(&name, &topo, no_daemon()).unwrap_err();
    assert!(matches!(again, LabError::AlreadyExists { .. }), "{again}");

    drop(lab);

    assert_eq!(lab_namespaces(&name).unwrap(), Vec::<String>::new());
    assert!(!run_dir(&name).exists());
    Lab::down(&name).expect("down is idempotent");
}

fn guard_tears_the_lab_down_when_the_test_panics() {
    let name = unique_name('p');
    let topo = Topology::parse(&with_segments("", DAEMONLESS)).unwrap();

    let outcome = std::panic::catch_unwind(|| {
        let _lab = Lab::up(&name, &topo, no_daemon()).unwrap();
        assert_eq!(lab_namespaces(&name).unwrap().len(), 4);
        panic!("a test fails while its lab is up");
    });

    assert!(outcome.is_err());
    assert_eq!(lab_namespaces(&name).unwrap(), Vec::<String>::new());
    assert!(!run_dir(&name).exists());
}

/// Run as a child by `down_cleans_up_after_the_process_that_called_up_was_killed`;
/// a no-op otherwise.
#[expect(
    clippy::zombie_processes,
    reason = "the sleeper must outlive this process"
)]
fn child_crashes_after_up() {
    let Ok(name) = std::env::var(CRASH_CHILD_ENV) else {
        return;
    };
    let lab = Lab::up(
        &name,
        &Topology::parse(&with_segments("", DAEMONLESS)).unwrap(),
        no_daemon(),
    )
    .unwrap()
    .keep();
    let sleeper = netns::spawn_in(&lab.node("n1").unwrap().netns(), "sleep", &["600"]).unwrap();
    println!("sleeper {}", sleeper.id());
    std::io::stdout().flush().unwrap();
    // No unwinding, no destructors: as if `lab up` was killed.
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
}

fn down_cleans_up_after_the_process_that_called_up_was_killed() {
    let name = unique_name('k');

    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_crashes_after_up",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_ENV, &name)
        .output()
        .unwrap();

    assert!(
        !child.status.success(),
        "the child should have died by SIGKILL"
    );
    let stdout = String::from_utf8_lossy(&child.stdout);
    let sleeper: u32 = stdout
        .lines()
        .find_map(|l| l.split("sleeper ").nth(1))
        .unwrap_or_else(|| {
            panic!(
                "child printed no sleeper pid: {stdout}\n{}",
                String::from_utf8_lossy(&child.stderr)
            )
        })
        .parse()
        .unwrap();
    assert!(
        process::is_alive(sleeper),
        "the sleeper outlives its parent"
    );
    assert_eq!(
        lab_namespaces(&name).unwrap().len(),
        4,
        "the killed child left its lab behind"
    );

    Lab::down(&name).unwrap();

    assert!(
        !process::is_alive(sleeper),
        "down kills processes inside the lab's namespaces"
    );
    assert_eq!(lab_namespaces(&name).unwrap(), Vec::<String>::new());
    assert!(!run_dir(&name).exists());
}

fn daemons_become_ready_get_pods_and_check_passes() {
    let name = unique_name('f');
    let topo = Topology::parse(&with_segments("gossip = false", STATIC_DAEMONS)).unwrap();

    let mut lab = Lab::up(&name, &topo, Path::new(FAKE_OVERLAYD)).unwrap();

    let pods: Vec<(String, String)> = lab
        .pods()
        .map(|p| (p.name.clone(), p.ip.to_string()))
        .collect();
    let expected = [
        ("n1-p1", "10.244.1.2"),
        ("n1-p2", "10.244.1.3"),
        ("n2-p1", "10.244.2.2"),
        ("n2-p2", "10.244.2.3"),
    ];
    assert_eq!(pods, expected.map(|(a, b)| (a.to_string(), b.to_string())));
    let n1 = lab.node("n1").unwrap();
    assert!(n1.pid().is_some());
    assert_eq!(n1.socket_path(), run_dir(&name).join("n1/overlayd.sock"));
    let config: overlayd_config::schema::Config =
        toml::from_str(&std::fs::read_to_string(n1.config_path()).unwrap()).unwrap();
    assert_eq!(config.peers.len(), 2);
    assert_eq!(config.gossip, None);
    assert!(!run_dir(&name).join("gossip.key").exists());
    assert!(lab.status("n1").unwrap().ready);
    assert_eq!(
        lab.node("n1").unwrap().pod_subnet().unwrap().to_string(),
        "10.244.1.0/24"
    );
    let paths: Vec<(String, String)> = lab
        .peers("n1")
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.path))
        .collect();
    assert_eq!(
        paths,
        [("n2".into(), "host-gw".into()), ("n3".into(), "udp".into())]
    );
    assert!(lab.node("n3").unwrap().pid().is_none());

    let report = lab.check().unwrap();
    assert!(report.ok(), "{}", report.matrix());
    assert_eq!(report.results.len(), 12);
    assert_eq!(report.pair("n1-p1", "n1-p2").unwrap().path, "bridge");
    assert_eq!(report.pair("n1-p1", "n2-p2").unwrap().path, "host-gw");

    let socket_is_set = format!(
        "test \"$OVERLAYD_SOCKET\" = {}",
        lab.node("n2").unwrap().socket_path().display()
    );
    assert!(
        lab.exec("n2", &["sh".into(), "-c".into(), socket_is_set])
            .unwrap()
            .success()
    );

    let old = lab.node("n1").unwrap().pid().unwrap();
    lab.kill_daemon("n1").unwrap();
    assert!(!process::is_alive(old));
    assert_eq!(lab.node("n1").unwrap().pid(), None);
    lab.start_daemon("n1").unwrap();
    let new = lab.node("n1").unwrap().pid().unwrap();
    assert_ne!(new, old);
    assert!(lab.status("n1").unwrap().ready);
    assert_eq!(
        Lab::open(&name).unwrap().node("n1").unwrap().pid(),
        Some(new)
    );
    let pod = lab.add_pod("n2").unwrap();
    assert_eq!(
        (pod.name.as_str(), pod.ip.to_string()),
        ("n2-p3", "10.244.2.4".to_string())
    );
    let log = std::fs::read_to_string(lab.node("n1").unwrap().log_path()).unwrap();
    assert_eq!(log.matches("node n1 ready").count(), 2, "{log}");

    drop(lab);

    assert!(!process::is_alive(new));
    assert_eq!(lab_namespaces(&name).unwrap(), Vec::<String>::new());
}

fn gossip_daemons_claim_subnets_converge_and_restart() {
    let name = unique_name('g');
    let topo = Topology::parse(&with_segments("", GOSSIP_DAEMONS)).unwrap();

    let mut lab = Lab::up(&name, &topo, Path::new(FAKE_OVERLAYD)).unwrap();

    // Each daemon claimed its own subnet (the fake takes .101 up); k keeps the topology's.
    let subnet = |lab: &Lab, node: &str| lab.node(node).unwrap().pod_subnet().unwrap();
    let mut claimed: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| subnet(&lab, n).to_string())
        .collect();
    claimed.sort();
    assert_eq!(
        claimed,
        ["10.244.101.0/24", "10.244.102.0/24", "10.244.103.0/24"]
    );
    assert_eq!(subnet(&lab, "k").to_string(), "10.244.4.0/24");
    for pod in lab.pods() {
        assert!(subnet(&lab, &pod.node).contains(&pod.ip), "{pod:?}");
    }
    let ps = serde_json::to_value(lab.ps()).unwrap();
    assert_eq!(ps["nodes"][1]["subnet"], subnet(&lab, "n2").to_string());
    assert_eq!(ps["nodes"][3]["subnet"], "10.244.4.0/24");
    assert_eq!(
        Lab::open(&name).unwrap().ps(),
        lab.ps(),
        "saved in lab.json"
    );

    // Configs: join through n1 with the lab's key; k is the only static peer.
    let key = run_dir(&name).join("gossip.key");
    let config = overlayd_config::load(&lab.node("n2").unwrap().config_path()).unwrap();
    let gossip = config.gossip.unwrap();
    assert_eq!(gossip.seeds, ["10.100.1.11"]);
    assert_eq!(gossip.key_files, std::slice::from_ref(&key));
    assert_eq!(config.node.pod_subnet, None);
    assert_eq!(config.cluster.name, format!("lab-{name}"));
    let statics: Vec<&str> = config.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(statics, ["k"]);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let hex = std::fs::read_to_string(&key).unwrap();
    assert!(
        hex.trim().len() == 64 && hex.trim().bytes().all(|b| b.is_ascii_hexdigit()),
        "{hex:?}"
    );

    // Converged: members and the data path's peers.
    let members = |lab: &Lab| {
        let mut m: Vec<(String, MemberState)> = lab
            .members("n1")
            .unwrap()
            .into_iter()
            .map(|m| (m.name, m.state))
            .collect();
        m.sort_by(|a, b| a.0.cmp(&b.0));
        m
    };
    let alive = |n: &str| (n.to_string(), MemberState::Alive);
    assert_eq!(members(&lab), [alive("n1"), alive("n2"), alive("n3")]);
    let mut paths: Vec<(String, String)> = lab
        .peers("n1")
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.path))
        .collect();
    paths.sort();
    let path = |n: &str, p: &str| (n.to_string(), p.to_string());
    assert_eq!(
        paths,
        [path("k", "udp"), path("n2", "host-gw"), path("n3", "udp")]
    );
    let report = lab.check().unwrap();
    assert!(report.ok(), "{}", report.matrix());
    assert_eq!(report.results.len(), 12);

    // A graceful stop leaves; a restart keeps the claimed subnet.
    let n2_subnet = subnet(&lab, "n2");
    lab.stop_daemon("n2").unwrap();
    assert_eq!(lab.node("n2").unwrap().pid(), None);
    assert_eq!(lab.node("n2").unwrap().pod_subnet(), Some(n2_subnet));
    assert_eq!(members(&lab)[1], ("n2".to_string(), MemberState::Left));
    lab.wait_converged(Duration::from_secs(5)).unwrap();
    lab.start_daemon("n2").unwrap();
    assert_eq!(subnet(&lab, "n2"), n2_subnet);
    assert_eq!(members(&lab)[1], alive("n2"));
    lab.kill_daemon("n3").unwrap();
    assert_eq!(members(&lab)[2], ("n3".to_string(), MemberState::Dead));
    lab.start_daemon("n3").unwrap();
    assert!(matches!(
        lab.stop_daemon("k"),
        Err(LabError::NoDaemon { .. })
    ));

    // Convergence wants each member with the subnet it reports; nodes cut apart by a
    // partition need not know each other.
    let n3_record = run_dir(&name).join("n3/member");
    let record = std::fs::read_to_string(&n3_record).unwrap();
    let n3_subnet = subnet(&lab, "n3").to_string();
    std::fs::write(&n3_record, record.replace(&n3_subnet, "10.244.250.0/24")).unwrap();
    // The fakes re-read member records every 0.2 s; until they do, the lab still looks
    // converged.
    std::thread::sleep(Duration::from_millis(800));
    let err = lab
        .wait_converged(Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node \"n1\"")
            && err.contains(&format!("lacks n3 ({n3_subnet})"))
            && err.contains("n3 (10.244.250.0/24)")
            && err.contains("n1.log"),
        "{err}"
    );
    lab.partition("a", "b").unwrap();
    lab.wait_converged(Duration::from_secs(1)).unwrap();
    lab.heal().unwrap();
    assert!(lab.wait_converged(Duration::from_secs(1)).is_err());

    drop(lab);

    assert_eq!(lab_namespaces(&name).unwrap(), Vec::<String>::new());
}

fn up_fails_when_a_claimed_subnet_overlaps_a_static_peer() {
    let name = unique_name('o');
    // The fake's first claim is 10.244.101.0/24.
    let topo = Topology::parse(&with_segments("", GOSSIP_DAEMONS).replace(
        "daemon = false",
        "daemon = false\npod_subnet = \"10.244.101.0/24\"",
    ))
    .unwrap();

    let err = Lab::up(&name, &topo, Path::new(FAKE_OVERLAYD))
        .unwrap_err()
        .to_string();

    assert!(
        err.contains("overlaps 10.244.101.0/24 of static peer k"),
        "{err}"
    );
    assert_eq!(lab_namespaces(&name).unwrap(), Vec::<String>::new());
    Lab::down(&name).unwrap();
}

/// The real `overlayd` for the end-to-end test: `$OVERLAYD_BIN`, else the `overlayd` that
/// `cargo test --workspace` builds beside this test's own executable. This crate cannot
/// depend on the binary (the binary depends on it), so under `cargo test -p overlayd-lab`
/// that one may be stale or missing: build it first, or set `OVERLAYD_BIN`.
fn real_overlayd() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("OVERLAYD_BIN") {
        return Some(bin.into());
    }
    let exe = std::env::current_exe().ok()?;
    // target/debug/deps/lab-HASH -> target/debug/overlayd
    let bin = exe.parent()?.parent()?.join("overlayd");
    bin.is_file().then_some(bin)
}

fn real_daemons_converge_in_the_default_topology() {
    let bin = real_overlayd().expect("main() ignores this test without an overlayd binary");
    let name = unique_name('r');

    let mut lab = Lab::up(&name, &Topology::default(), &bin).unwrap();

    let nodes = ["n1", "n2", "n3", "n4"];
    let subnet = |lab: &Lab, node: &str| lab.node(node).unwrap().pod_subnet().unwrap();
    for node in nodes {
        let mut listed: Vec<(String, ipnet::Ipv4Net)> = lab
            .peers(node)
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.pod_subnet))
            .collect();
        listed.sort();
        let others: Vec<(String, ipnet::Ipv4Net)> = nodes
            .iter()
            .filter(|&&n| n != node)
            .map(|&n| (n.to_string(), subnet(&lab, n)))
            .collect();
        assert_eq!(listed, others, "peers of {node}");
        let members = lab.members(node).unwrap();
        assert_eq!(members.len(), 4, "{members:?}");
        assert!(
            members.iter().all(|m| m.state == MemberState::Alive),
            "{members:?}"
        );
    }
    for pod in lab.pods() {
        assert!(subnet(&lab, &pod.node).contains(&pod.ip), "{pod:?}");
    }
    let report = lab.check().unwrap();
    assert!(report.ok(), "{}", report.matrix());
    assert_eq!(report.results.len(), 56);

    // A crash and a graceful stop: both come back with their subnets, and pods talk. A
    // stop (SIGTERM) is not a leave: it announces nothing, so n1 never sees n2 leave.
    let (n3, n2) = (subnet(&lab, "n3"), subnet(&lab, "n2"));
    lab.kill_daemon("n3").unwrap();
    lab.start_daemon("n3").unwrap();
    lab.stop_daemon("n2").unwrap();
    let n2_state = || {
        let seen_by_n1 = lab.members("n1").unwrap();
        seen_by_n1.iter().find(|m| m.name == "n2").map(|m| m.state)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < deadline {
        assert_ne!(
            n2_state(),
            Some(MemberState::Left),
            "n2 as n1 sees it after a stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.start_daemon("n2").unwrap();
    assert_eq!((subnet(&lab, "n3"), subnet(&lab, "n2")), (n3, n2));
    let report = lab.check().unwrap();
    assert!(report.ok(), "{}", report.matrix());

    drop(lab);

    assert_eq!(lab_namespaces(&name).unwrap(), Vec::<String>::new());
}

fn up_fails_naming_the_node_and_its_log_when_a_daemon_dies() {
    let name = unique_name('b');
    let dir = std::env::temp_dir().join(format!("overlayd-lab-test-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("overlayd");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'boom: cannot open netlink socket' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let topo = Topology::parse(&with_segments("", GOSSIP_DAEMONS)).unwrap();

    let err = Lab::up(&name, &topo, &broken).unwrap_err().to_string();

    assert!(
        err.contains("node \"n1\"") && err.contains("exited"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}/n1.log", run_dir(&name).display())),
        "{err}"
    );
    assert!(err.contains("boom: cannot open netlink socket"), "{err}");
    assert_eq!(lab_namespaces(&name).unwrap(), Vec::<String>::new());
    assert!(
        run_dir(&name).join("n1.log").exists(),
        "the log stays for inspection"
    );
    Lab::down(&name).unwrap();
    assert!(!run_dir(&name).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn cli_commands_drive_a_lab() {
    let name = unique_name('c');
    let file = std::env::temp_dir().join(format!("overlayd-lab-test-{name}.toml"));
    std::fs::write(&file, with_segments("", GOSSIP_DAEMONS)).unwrap();
    let bin = PathBuf::from(FAKE_OVERLAYD);
    let run = |cmd| format!("{:?}", overlayd_lab::run(cmd, bin.clone()).unwrap());
    let ok = format!("{:?}", ExitCode::SUCCESS);

    assert_eq!(
        run(LabCommand::Up {
            topology: Some(file.clone()),
            name: name.clone()
        }),
        ok
    );
    assert!(Lab::open(&name).is_ok(), "up keeps the lab after returning");
    assert_eq!(
        run(LabCommand::Ps {
            name: name.clone(),
            json: true
        }),
        ok
    );
    assert_eq!(
        run(LabCommand::Check {
            name: name.clone(),
            json: false
        }),
        ok
    );
    let node = |node: &str| (node.to_string(), name.clone());
    let (n, lab) = node("n2");
    assert_eq!(run(LabCommand::Stop { node: n, name: lab }), ok);
    let (n, lab) = node("n2");
    assert_eq!(run(LabCommand::Start { node: n, name: lab }), ok);
    let (n, lab) = node("n1");
    assert_eq!(run(LabCommand::Kill { node: n, name: lab }), ok);
    let (n, lab) = node("n1");
    assert_eq!(run(LabCommand::Start { node: n, name: lab }), ok);
    assert_eq!(
        run(LabCommand::Partition {
            segment_a: "a".into(),
            segment_b: "b".into(),
            name: name.clone()
        }),
        ok
    );
    assert_eq!(
        Lab::open(&name).unwrap().partitions().unwrap(),
        [("a".to_string(), "b".to_string())]
    );
    assert_eq!(run(LabCommand::Heal { name: name.clone() }), ok);
    assert_eq!(Lab::open(&name).unwrap().partitions().unwrap(), []);
    let exit_3 = LabCommand::Exec {
        target: "n1-p1".into(),
        cmd: vec!["sh".into(), "-c".into(), "exit 3".into()],
        name: name.clone(),
    };
    assert_eq!(run(exit_3), format!("{:?}", ExitCode::from(3)));
    assert_eq!(run(LabCommand::Down { name: name.clone() }), ok);
    assert_eq!(run(LabCommand::Down { name: name.clone() }), ok);

    assert_eq!(lab_namespaces(&name).unwrap(), Vec::<String>::new());
    std::fs::remove_file(&file).unwrap();
}

fn netns_handle_runs_code_inside_and_deletes_on_drop() {
    let name = format!("ovl-{}-scratch", unique_name('n'));
    let thread_ns = || std::fs::read_link("/proc/thread-self/ns/net").unwrap();

    let ns = overlayd_lab::Netns::create(&name).unwrap();
    let inode = ns.inode().unwrap();
    let inside = ns.enter(thread_ns);
    let bound = in_netns(&name, || std::net::UdpSocket::bind("127.0.0.1:0"));
    let listing = ns.run(&["ip", "-o", "link"]).unwrap();
    let path = ns.path();
    drop(ns);

    assert_eq!(inside, PathBuf::from(format!("net:[{inode}]")));
    assert_ne!(
        thread_ns(),
        inside,
        "the caller's thread stays where it was"
    );
    assert!(bound.is_ok());
    assert_eq!(listing.lines().count(), 1, "only lo: {listing}");
    assert!(
        listing.contains("lo:") && listing.contains("UP"),
        "{listing}"
    );
    assert!(!path.exists(), "dropping the handle deletes the namespace");
    assert!(overlayd_lab::try_in_netns(&name, || ()).is_err());
}

type TestFn = fn();

/// Tests that build namespaces: reported ignored, not passed, without root.
const ROOT_TESTS: &[(&str, TestFn)] = &[
    (
        "daemonless_lab_builds_segments_and_routes_between_them",
        daemonless_lab_builds_segments_and_routes_between_them,
    ),
    (
        "guard_tears_the_lab_down_when_the_test_panics",
        guard_tears_the_lab_down_when_the_test_panics,
    ),
    (
        "down_cleans_up_after_the_process_that_called_up_was_killed",
        down_cleans_up_after_the_process_that_called_up_was_killed,
    ),
    (
        "daemons_become_ready_get_pods_and_check_passes",
        daemons_become_ready_get_pods_and_check_passes,
    ),
    (
        "gossip_daemons_claim_subnets_converge_and_restart",
        gossip_daemons_claim_subnets_converge_and_restart,
    ),
    (
        "up_fails_when_a_claimed_subnet_overlaps_a_static_peer",
        up_fails_when_a_claimed_subnet_overlaps_a_static_peer,
    ),
    (
        "up_fails_naming_the_node_and_its_log_when_a_daemon_dies",
        up_fails_naming_the_node_and_its_log_when_a_daemon_dies,
    ),
    ("cli_commands_drive_a_lab", cli_commands_drive_a_lab),
    (
        "netns_handle_runs_code_inside_and_deletes_on_drop",
        netns_handle_runs_code_inside_and_deletes_on_drop,
    ),
];

/// The lab's own tests run under libtest-mimic, as tests/netns does, so that a test that
/// cannot run here (not root, no overlayd binary) is reported `ignored` with a banner
/// instead of passing without having run.
fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let root = nix::unistd::geteuid().is_root();
    let real = real_overlayd().is_some();
    if !root {
        let _ = std::io::stderr().write_all(
            b"\n*** overlayd-lab namespace tests IGNORED: they need root (run as root; CI does).\n\n",
        );
    } else if !real {
        let _ = std::io::stderr().write_all(
            b"\n*** overlayd-lab end-to-end test IGNORED: no overlayd binary; \
              run `cargo build -p overlayd` or set OVERLAYD_BIN.\n\n",
        );
    }
    let trial = |name: &'static str, f: TestFn| {
        libtest_mimic::Trial::test(name, move || {
            f();
            Ok(())
        })
    };
    let mut trials: Vec<_> = ROOT_TESTS
        .iter()
        .map(|&(name, f)| trial(name, f).with_ignored_flag(!root))
        .collect();
    trials.push(
        trial(
            "real_daemons_converge_in_the_default_topology",
            real_daemons_converge_in_the_default_topology,
        )
        .with_ignored_flag(!root || !real),
    );
    // Not a test: the child that `down_cleans_up_after_the_process_that_called_up_was_killed`
    // runs (a no-op unless that test's environment variable is set).
    trials.push(trial("child_crashes_after_up", child_crashes_after_up));
    libtest_mimic::run(&args, trials).exit();
}
