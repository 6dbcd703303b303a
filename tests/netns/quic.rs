//! QUIC across zones (issue 8 item 7): a remote datacenter — segment c, zone `remote`,
//! reachable only through the router — whose pods reach the pods of zone `default` over
//! the daemons' QUIC tunnels, with no pod payload in clear on the underlay between the
//! zones. The router counts what crosses it with nftables (no tcpdump): VXLAN (the
//! tunnel port), QUIC (the QUIC port), and pod-addressed packets in clear.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ipnet::Ipv4Net;
use overlayd_config::schema::{Quic, Tunnel};
use overlayd_lab::{Lab, REMOTE_ZONE_TOPOLOGY, Topology};

use crate::support::{lab, ns_cmd, ns_run, ping, tcp_transfer, wait_for};

/// How long the daemons may take, after the lab converged, to carry every pair on the
/// path its policy gives it (QUIC handshakes included).
const PATHS_WITHIN: Duration = Duration::from_secs(30);

/// The nftables table of the router's counters.
const TABLE: &str = "quictest";

/// The remote-zone topology: zone `default` (segments a, b: n1–n4), zone `remote`
/// (segment c: n5, n6), every node with `[quic]`. n5 sees n6 over host-gw, n1–n4 over
/// QUIC; n1 sees n2 over host-gw, n3 and n4 over udp, n5 and n6 over QUIC. Pings both
/// ways, 50 MB byte-checked TCP each way between n5-p1 and n1-p1, and on the router: no
/// VXLAN packet between segment c and the others, the QUIC port carried at least the
/// 100 MB, no pod-addressed packet in clear; n5 shows its tunnel to n1 `connected` with
/// the peer certificate's expiry. `lab check` then shows every pair reachable and counts
/// bridge, host-gw, udp and quic pairs, still with nothing in clear between the zones.
pub(crate) fn remote_zone_pods_reach_the_others_over_quic() -> Result<()> {
    let topology = Topology::parse(REMOTE_ZONE_TOPOLOGY)?;
    let lab = lab("qz", &topology)?;
    let remote = segment_subnet(&lab, "c")?;
    let others = [segment_subnet(&lab, "a")?, segment_subnet(&lab, "b")?];
    wait_for_paths(
        &lab,
        "n5",
        &[
            ("n1", "quic"),
            ("n2", "quic"),
            ("n3", "quic"),
            ("n4", "quic"),
            ("n6", "host-gw"),
        ],
    )?;
    wait_for_paths(
        &lab,
        "n1",
        &[
            ("n2", "host-gw"),
            ("n3", "udp"),
            ("n4", "udp"),
            ("n5", "quic"),
            ("n6", "quic"),
        ],
    )?;
    wait_for_paths(&lab, "n3", &[("n5", "quic"), ("n6", "quic")])?;
    let counters = RouterCounters::install(&lab, remote, &others)?;

    let (far, near) = (lab.pod("n5-p1")?, lab.pod("n1-p1")?);
    let other = lab.pod("n3-p2")?;
    first_reply(&far.netns, near.ip)?;
    ping(&far.netns, near.ip, 5).context("n5-p1 -> n1-p1")?;
    ping(&near.netns, far.ip, 5).context("n1-p1 -> n5-p1")?;
    first_reply(&other.netns, far.ip)?;
    ping(&other.netns, far.ip, 5).context("n3-p2 -> n5-p1 (across the router)")?;
    tcp_transfer(&far.netns, &near.netns, near.ip, 50 << 20).context("50 MB n5-p1 -> n1-p1")?;
    tcp_transfer(&near.netns, &far.netns, far.ip, 50 << 20).context("50 MB n1-p1 -> n5-p1")?;

    let vxlan = counters.vxlan()?;
    let quic = counters.quic()?;
    let clear = counters.pods_in_clear()?;
    eprintln!(
        "quic: between segment c and the others: VXLAN {vxlan:?}, QUIC {quic:?} (packets, \
         bytes); pod-addressed packets in clear: {clear:?}"
    );
    ensure!(
        vxlan.0 == 0,
        "{} VXLAN packets ({} bytes) crossed between the remote zone and the others: \
         pod payload in clear\n{}",
        vxlan.0,
        vxlan.1,
        counters.listing()
    );
    ensure!(
        clear.0 == 0,
        "{} pod-addressed packets crossed the router unencapsulated\n{}",
        clear.0,
        counters.listing()
    );
    ensure!(
        quic.1 >= 100 << 20,
        "only {} bytes crossed on the QUIC port for 2 x 50 MB\n{}",
        quic.1,
        counters.listing()
    );
    // n5 shows the tunnel to n1 up, with the certificate it checked.
    let tunnel = lab
        .peers("n5")?
        .into_iter()
        .find(|p| p.name == "n1")
        .and_then(|p| p.quic)
        .context("n5 shows no QUIC tunnel to n1")?;
    ensure!(
        tunnel.state == "connected" && tunnel.cert_not_after.is_some(),
        "n5's tunnel to n1: {tunnel:?}"
    );
    // The paths still hold after the load (no fallback to a cleartext rung under it).
    for (peer, path) in [("n1", "quic"), ("n6", "host-gw")] {
        let got = path_of(&lab, "n5", peer)?;
        ensure!(
            got == path,
            "after the transfers n5 reaches {peer} by {got}"
        );
    }

    let report = lab.check()?;
    eprint!("{}{}", report.matrix(), report.paths_text());
    ensure!(report.ok(), "unreachable pairs:\n{}", report.matrix());
    let paths = report.paths();
    for path in ["bridge", "host-gw", "udp", "quic"] {
        ensure!(
            paths.get(path).is_some_and(|c| c.pairs > 0),
            "lab check shows no {path} pair: {}",
            report.paths_text()
        );
    }
    let pair = |a: &str, b: &str| report.pair(a, b).map(|p| p.path.as_str());
    ensure!(
        pair("n5-p2", "n4-p1") == Some("quic"),
        "{}",
        report.matrix()
    );
    ensure!(
        pair("n6-p1", "n5-p2") == Some("host-gw"),
        "{}",
        report.matrix()
    );
    ensure!(pair("n2-p1", "n3-p1") == Some("udp"), "{}", report.matrix());
    // Every pod pinged every other, and the Service was reached from every node: still
    // nothing in clear between the zones.
    let (vxlan, clear) = (counters.vxlan()?, counters.pods_in_clear()?);
    ensure!(
        vxlan.0 == 0 && clear.0 == 0,
        "after lab check: VXLAN {vxlan:?}, pods in clear {clear:?}\n{}",
        counters.listing()
    );
    Ok(())
}

/// Zone `default` (segment a: n1) and zone `remote` (segment c: n2 with `[quic]`, n3
/// without), and a `[path]` rule requiring encryption between the two zones. n1 and n3
/// have no path they may use: their pods' pings fail both ways and the router counts no
/// VXLAN packet (nor any pod-addressed packet in clear) between n3 and segment a. The
/// controls: n1–n2 (both with `[quic]`) reach each other over QUIC, and n2–n3 (one zone)
/// over host-gw. `lab check` shows n1–n3 as path `none` and passes.
pub(crate) fn pair_requiring_encryption_without_quic_gets_no_cleartext() -> Result<()> {
    let topology = Topology::parse(
        r#"
quic = true

[[segment]]
name = "a"
subnet = "10.100.1.0/24"

[[segment]]
name = "c"
subnet = "10.100.3.0/24"
zone = "remote"

[[node]]
name = "n1"
segment = "a"
pods = 1

[[node]]
name = "n2"
segment = "c"
pods = 1

[[node]]
name = "n3"
segment = "c"
pods = 1
quic = false

[[config.path.zone_pairs]]
zones = ["default", "remote"]
require_encryption = true
"#,
    )?;
    let lab = lab("qe", &topology)?;
    let n3_underlay = lab.node("n3")?.underlay();
    let counters = RouterCounters::install(
        &lab,
        Ipv4Net::from(n3_underlay),
        &[segment_subnet(&lab, "a")?],
    )?;
    wait_for_paths(&lab, "n1", &[("n2", "quic")])?;
    wait_for_paths(&lab, "n2", &[("n1", "quic"), ("n3", "host-gw")])?;
    let (p1, p2, p3) = (lab.pod("n1-p1")?, lab.pod("n2-p1")?, lab.pod("n3-p1")?);

    first_reply(&p1.netns, p2.ip)?;
    ping(&p1.netns, p2.ip, 3).context("control: n1-p1 -> n2-p1 over QUIC")?;
    ping(&p3.netns, p2.ip, 3).context("control: n3-p1 -> n2-p1 within the zone")?;
    for (from, to) in [(p1, p3), (p3, p1)] {
        let out = ns_cmd(
            &from.netns,
            &[
                "ping",
                "-c",
                "5",
                "-i",
                "0.2",
                "-W",
                "1",
                &to.ip.to_string(),
            ],
        )?;
        ensure!(
            !out.status.success(),
            "{} reached {} though the pair requires encryption and n3 has no QUIC:\n{}",
            from.name,
            to.name,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Nor does a TCP connection get through (nor send anything in clear).
    ensure!(
        tcp_transfer(&p1.netns, &p3.netns, p3.ip, 1 << 20).is_err(),
        "TCP n1-p1 -> n3-p1 went through"
    );

    let vxlan = counters.vxlan()?;
    let clear = counters.pods_in_clear()?;
    eprintln!(
        "quic: between n3 and segment a: VXLAN {vxlan:?}, QUIC {:?}; pod-addressed packets \
         in clear: {clear:?}",
        counters.quic()?
    );
    ensure!(
        vxlan.0 == 0 && clear.0 == 0,
        "cleartext crossed between n3 and zone default: VXLAN {vxlan:?}, pods {clear:?}\n{}",
        counters.listing()
    );
    for (on, peer) in [("n1", "n3"), ("n3", "n1")] {
        if let Ok(path) = path_of(&lab, on, peer) {
            ensure!(
                path != "udp" && path != "host-gw",
                "{on} shows a cleartext path to {peer}: {path}"
            );
        }
    }
    // `lab check` calls the refused pairs `none` and passes them because nothing came back.
    let report = lab.check()?;
    eprint!("{}{}", report.matrix(), report.paths_text());
    ensure!(report.ok(), "lab check:\n{}", report.matrix());
    let pair = |a: &str, b: &str| report.pair(a, b).map(|p| p.path.as_str());
    ensure!(
        pair("n1-p1", "n3-p1") == Some("none") && pair("n3-p1", "n1-p1") == Some("none"),
        "{}",
        report.matrix()
    );
    ensure!(
        pair("n1-p1", "n2-p1") == Some("quic"),
        "{}",
        report.matrix()
    );
    ensure!(
        counters.vxlan()?.0 == 0,
        "VXLAN after lab check:\n{}",
        counters.listing()
    );
    Ok(())
}

/// Counters in the router namespace (table [`TABLE`]) for what crosses between `inside`
/// (a segment's subnet, or one node's address) and `outside` (other segments): UDP to the tunnel
/// port (VXLAN) and UDP to the QUIC port; and, between any two segments, packets from pod
/// addresses to pod addresses (pod payload routed in clear).
struct RouterCounters {
    ns: String,
    segments: Vec<String>,
}

impl RouterCounters {
    fn install(lab: &Lab, inside: Ipv4Net, outside: &[Ipv4Net]) -> Result<RouterCounters> {
        let ns = lab.router_netns();
        let outside = format!(
            "{{ {} }}",
            outside
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let pods = lab.topology().cluster_cidr();
        let vxlan = Tunnel::default().port;
        let quic = Quic::DEFAULT_PORT;
        // Routed pod packets, between two segments: with br_netfilter the router's hooks
        // also see what its bridges forward within a segment (host-gw there), which comes
        // in and goes out through the same bridge.
        let clear: String = lab
            .topology()
            .segments()
            .iter()
            .map(|seg| {
                let bridge = seg.bridge();
                format!(
                    "ip saddr {pods} ip daddr {pods} iifname \"{bridge}\" oifname != \"{bridge}\" \
                     counter comment \"pods-in-clear-{}\"\n",
                    seg.name
                )
            })
            .collect();
        let rules = format!(
            "table ip {TABLE} {{\n\
               chain crossing {{ type filter hook forward priority -20; policy accept;\n\
                 ip saddr {inside} ip daddr {outside} udp dport {vxlan} counter comment \"vxlan-out\"\n\
                 ip saddr {outside} ip daddr {inside} udp dport {vxlan} counter comment \"vxlan-in\"\n\
                 ip saddr {inside} ip daddr {outside} udp dport {quic} counter comment \"quic-out\"\n\
                 ip saddr {outside} ip daddr {inside} udp dport {quic} counter comment \"quic-in\"\n\
                 {clear}\
               }}\n\
             }}\n"
        );
        let path = std::env::temp_dir().join(format!("{ns}-{TABLE}.nft"));
        std::fs::write(&path, rules)?;
        let added = ns_run(&ns, &["nft", "-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        added.context("adding the router's counters")?;
        // The router namespace goes with the lab, and the table with it.
        let segments = lab
            .topology()
            .segments()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        Ok(RouterCounters { ns, segments })
    }

    fn listing(&self) -> String {
        ns_run(&self.ns, &["nft", "list", "table", "ip", TABLE]).unwrap_or_else(|e| e.to_string())
    }

    /// (packets, bytes) of the rule with this comment.
    fn counter(&self, comment: &str) -> Result<(u64, u64)> {
        let listing = ns_run(&self.ns, &["nft", "list", "table", "ip", TABLE])?;
        parse_counter(&listing, comment)
            .with_context(|| format!("no counter {comment:?} in:\n{listing}"))
    }

    fn sum(&self, a: &str, b: &str) -> Result<(u64, u64)> {
        let (x, y) = (self.counter(a)?, self.counter(b)?);
        Ok((x.0 + y.0, x.1 + y.1))
    }

    fn vxlan(&self) -> Result<(u64, u64)> {
        self.sum("vxlan-out", "vxlan-in")
    }

    fn quic(&self) -> Result<(u64, u64)> {
        self.sum("quic-out", "quic-in")
    }

    /// Pod-addressed packets the router routed from one segment to another.
    fn pods_in_clear(&self) -> Result<(u64, u64)> {
        let mut sum = (0, 0);
        for segment in &self.segments {
            let (p, b) = self.counter(&format!("pods-in-clear-{segment}"))?;
            sum = (sum.0 + p, sum.1 + b);
        }
        Ok(sum)
    }
}

/// `… counter packets 12 bytes 3400 comment "NAME"` → (12, 3400).
fn parse_counter(listing: &str, comment: &str) -> Option<(u64, u64)> {
    let line = listing
        .lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))?;
    let after = |word: &str| -> Option<u64> {
        let rest = &line[line.find(word)? + word.len()..];
        rest.split_whitespace().next()?.parse().ok()
    };
    Some((after("packets ")?, after("bytes ")?))
}

fn segment_subnet(lab: &Lab, name: &str) -> Result<Ipv4Net> {
    lab.topology()
        .segment(name)
        .map(|s| s.subnet)
        .with_context(|| format!("no segment {name}"))
}

/// The `path` `on`'s `overlayd peers --json` shows for `peer`.
fn path_of(lab: &Lab, on: &str, peer: &str) -> Result<String> {
    lab.peers(on)?
        .into_iter()
        .find(|p| p.name == peer)
        .map(|p| p.path)
        .with_context(|| format!("{on} lists no peer {peer}"))
}

/// Waits until `on` shows each `(peer, path)`.
pub(crate) fn wait_for_paths(lab: &Lab, on: &str, want: &[(&str, &str)]) -> Result<()> {
    wait_for_paths_within(lab, on, want, PATHS_WITHIN)
}

/// Waits (10 s) for a first echo reply: a tunnel may carry its first packet only once
/// its connection is up, which `peers` can report a moment earlier.
fn first_reply(ns: &str, dst: std::net::Ipv4Addr) -> Result<()> {
    wait_for(
        &format!("a first reply from {dst} in {ns}"),
        Duration::from_secs(10),
        || Ok(ping(ns, dst, 1).is_ok()),
    )
}

/// The path ladder (issue 8 item 4): two on-link nodes of one zone, both with `[quic]`,
/// start on host-gw. The tunnel port between them is blocked with nftables (in n2, from
/// n1): their probes on host-gw and udp go unanswered, and both move onto QUIC within
/// 3 s — pods keep talking throughout (host-gw itself still works; only the port is cut).
/// The block lifted, they return to host-gw once it has been good for its hysteresis
/// (10 s), and `overlayd peers` shows why: `probe` while on QUIC, one switch each way.
pub(crate) fn ladder_moves_to_quic_when_the_tunnel_port_is_blocked_and_returns() -> Result<()> {
    let topology = Topology::parse(
        r#"
quic = true

[[segment]]
name = "a"
subnet = "10.100.1.0/24"

[[node]]
name = "n1"
segment = "a"
pods = 1

[[node]]
name = "n2"
segment = "a"
pods = 1
"#,
    )?;
    let lab = lab("ql", &topology)?;
    wait_for_paths(&lab, "n1", &[("n2", "host-gw")])?;
    wait_for_paths(&lab, "n2", &[("n1", "host-gw")])?;
    let (a, b) = (lab.pod("n1-p1")?, lab.pod("n2-p1")?);
    let n1 = lab.node("n1")?.underlay().to_string();
    let n2_ns = lab.node("n2")?.netns();
    // Pods talk all along: 100 pings/s for the whole test, counted at the end.
    let pinger = {
        let (ns, dst) = (a.netns.clone(), b.ip.to_string());
        std::thread::spawn(move || {
            ns_cmd(&ns, &["ping", "-i", "0.01", "-c", "2500", "-W", "1", &dst])
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    ns_run(
        &n2_ns,
        &[
            "nft",
            &format!(
                "add table ip ladder; \
                 add chain ip ladder in {{ type filter hook input priority -300; }}; \
                 add rule ip ladder in ip saddr {n1} udp dport 8472 drop"
            ),
        ],
    )?;
    let blocked = std::time::Instant::now();
    wait_for_paths_within(&lab, "n1", &[("n2", "quic")], Duration::from_secs(3))
        .context("n1 onto QUIC within 3 s")?;
    wait_for_paths_within(&lab, "n2", &[("n1", "quic")], Duration::from_secs(3))
        .context("n2 onto QUIC within 3 s")?;
    let moved = blocked.elapsed();
    let report = lab
        .peers("n1")?
        .into_iter()
        .find(|p| p.name == "n2")
        .context("n1 has no peer n2")?;
    let ladder = report.ladder.context("no ladder in n1's report of n2")?;
    ensure!(
        ladder.reason == "probe" && ladder.switches == 1,
        "n1's ladder for n2: {ladder:?}"
    );
    ns_run(&n2_ns, &["nft", "delete table ip ladder"])?;
    let lifted = std::time::Instant::now();
    wait_for_paths_within(&lab, "n1", &[("n2", "host-gw")], Duration::from_secs(20))
        .context("n1 back on host-gw")?;
    wait_for_paths_within(&lab, "n2", &[("n1", "host-gw")], Duration::from_secs(20))
        .context("n2 back on host-gw")?;
    let back = lifted.elapsed();
    ensure!(
        back >= Duration::from_secs(10),
        "returned after {back:?}, before the 10 s hysteresis"
    );
    let out = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("pinger panicked"))??;
    let (_, stats) = crate::support::ping_stats(&out)?;
    eprintln!(
        "ladder: onto quic {moved:?} after the tunnel port was blocked, back on host-gw \
         {back:?} after it was lifted; pings meanwhile: {stats}"
    );
    ensure!(
        stats.contains(" 0% packet loss"),
        "pods lost packets while the pair moved: {stats}"
    );
    Ok(())
}

/// [`wait_for_paths`] with its own bound; the error shows the paths last seen.
pub(crate) fn wait_for_paths_within(
    lab: &Lab,
    on: &str,
    want: &[(&str, &str)],
    within: Duration,
) -> Result<()> {
    let show = || -> String {
        lab.peers(on).map_or_else(
            |e| e.to_string(),
            |peers| {
                peers
                    .iter()
                    .map(|p| format!("{}={}", p.name, p.path))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        )
    };
    wait_for(&format!("{on} to show paths {want:?}"), within, || {
        let peers = lab.peers(on)?;
        Ok(want
            .iter()
            .all(|(peer, path)| peers.iter().any(|p| p.name == *peer && p.path == *path)))
    })
    .with_context(|| format!("{on} shows {}", show()))
}

/// MTU on the QUIC path (issue 8 item 5): n1 (zone default) and n2 (zone remote, across
/// the router) talk over QUIC; then the router's side of n2's segment and n2's eth0 go
/// down to 1400 bytes. quinn loses its full-size packets until its black-hole detection
/// settles on a smaller size, the route's `mtu` follows the datagram size, and a pod with
/// MTU 1500 still completes 50 MB of TCP each way, byte-checked.
pub(crate) fn a_1400_byte_link_on_the_quic_path_still_carries_bulk_tcp() -> Result<()> {
    let topology = Topology::parse(
        r#"
quic = true

[[segment]]
name = "a"
subnet = "10.100.1.0/24"

[[segment]]
name = "b"
subnet = "10.100.2.0/24"
zone = "remote"

[[node]]
name = "n1"
segment = "a"
pods = 1

[[node]]
name = "n2"
segment = "b"
pods = 1
"#,
    )?;
    let lab = lab("qm", &topology)?;
    wait_for_paths(&lab, "n1", &[("n2", "quic")])?;
    wait_for_paths(&lab, "n2", &[("n1", "quic")])?;
    let (a, b) = (lab.pod("n1-p1")?, lab.pod("n2-p1")?);
    first_reply(&a.netns, b.ip)?;
    crate::pmtu::narrow_link(&lab)?;
    let start = std::time::Instant::now();
    tcp_transfer(&a.netns, &b.netns, b.ip, 50 << 20).context("50 MB n1-p1 -> n2-p1")?;
    let there = start.elapsed();
    let start = std::time::Instant::now();
    tcp_transfer(&b.netns, &a.netns, a.ip, 50 << 20).context("50 MB n2-p1 -> n1-p1")?;
    let back = start.elapsed();
    let route = |on: &str, to: &str| -> Result<String> {
        let subnet = crate::cluster::subnet_of(&lab, to)?.to_string();
        ns_run(&lab.node(on)?.netns(), &["ip", "route", "show", &subnet])
    };
    eprintln!(
        "quic over a 1400-byte link: 50 MB in {there:?} there, {back:?} back; routes: n1 {} | n2 {}",
        route("n1", "n2")?.trim(),
        route("n2", "n1")?.trim()
    );
    Ok(())
}

/// Zone `default`: n1 (segment a) and n2 (segment b), udp between them; zone `remote`:
/// n3 (segment c), QUIC to both, with encryption required between the zones (so n3's
/// pods have no cleartext fallback). One pod each.
const CERT_TOPOLOGY: &str = r#"
quic = true

[[segment]]
name = "a"
subnet = "10.100.1.0/24"

[[segment]]
name = "b"
subnet = "10.100.2.0/24"

[[segment]]
name = "c"
subnet = "10.100.3.0/24"
zone = "remote"

[[node]]
name = "n1"
segment = "a"
pods = 1

[[node]]
name = "n2"
segment = "b"
pods = 1

[[node]]
name = "n3"
segment = "c"
pods = 1

[[config.path.zone_pairs]]
zones = ["default", "remote"]
require_encryption = true
"#;

/// How long the refusal of a bad certificate may take to be counted after the bad node
/// started (its first handshakes, or its peers' redials after their backoff, ≤ 5 s).
const REFUSED_WITHIN: Duration = Duration::from_secs(20);

/// The bound on a revocation: from `overlayd cert revoke` on n1 to the tunnels of n1 and
/// n2 to the revoked n3 being closed (gossip spreads the object in a few rounds of
/// 200 ms; each daemon then closes the tunnel at once).
const REVOKED_WITHIN: Duration = Duration::from_secs(5);

/// A counter of `node`'s `overlayd status` (`io`), 0 when absent.
fn io_counter(lab: &Lab, node: &str, name: &str) -> Result<u64> {
    Ok(lab.status(node)?.io.get(name).copied().unwrap_or(0))
}

/// `on`'s QUIC state for `peer` (`overlayd peers`), if it lists one.
fn quic_state(lab: &Lab, on: &str, peer: &str) -> Result<Option<String>> {
    Ok(lab
        .peers(on)?
        .into_iter()
        .find(|p| p.name == peer)
        .and_then(|p| p.quic)
        .map(|q| q.state))
}

/// Pings that must all go unanswered.
fn no_reply(ns: &str, dst: std::net::Ipv4Addr, what: &str) -> Result<()> {
    let out = ns_cmd(
        ns,
        &["ping", "-c", "3", "-i", "0.3", "-W", "1", &dst.to_string()],
    )?;
    ensure!(
        !out.status.success(),
        "{what}: {dst} answered from {ns}:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

/// Issue 8's refusals in namespaces: n3 is restarted three times with a certificate its
/// peers must refuse — from another cluster's CA, expired, naming another node — each time with
/// `OVERLAYD_TEST_UNCHECKED_CERT` so that it starts at all (a daemon refuses to start
/// with a certificate its peers would refuse). Each time a peer counts the refusal in
/// `overlayd status` (n1: `quic_cert_foreign_ca`, `quic_cert_expired`; for the
/// certificate naming another node, the node n3 dials: `quic_cert_fingerprint_mismatch`
/// — taken for the node named, it is not the certificate that node's gossip record
/// advertises — or, if n3 dials neither, n1: `quic_cert_name_mismatch`), never shows a
/// connected tunnel to n3, and n3's pod cannot reach n1's (no cleartext fallback: the
/// zones require encryption). Before, with its own
/// certificate, n3's pod reached n1's over QUIC.
pub(crate) fn a_node_with_a_bad_certificate_cannot_bring_up_a_tunnel_and_is_counted() -> Result<()>
{
    use overlayd::pki::{Validity, init_ca, issue_cert};
    use overlayd_proto::path::dial::{Side, dialer};
    use std::time::SystemTime;

    let mut lab = lab("qb", &Topology::parse(CERT_TOPOLOGY)?)?;
    wait_for_paths(&lab, "n1", &[("n2", "udp"), ("n3", "quic")])?;
    let (p1_ip, p1_ns) = (lab.pod("n1-p1")?.ip, lab.pod("n1-p1")?.netns.clone());
    let p3_ns = lab.pod("n3-p1")?.netns.clone();
    first_reply(&p3_ns, p1_ip).context("control: n3-p1 -> n1-p1 with n3's own certificate")?;

    let pki = overlayd_lab::config::pki_dir(lab.run_dir());
    let tmp = tempfile::tempdir()?;
    let now = SystemTime::now();
    let valid = Validity::days_from(now, 10);
    let other_ca = tmp.path().join("other-ca");
    init_ca(&other_ca, Validity::days_from(now, 30), false)?;
    let expired = Validity {
        not_before: now - Duration::from_secs(10 * 86_400),
        not_after: now - Duration::from_secs(86_400),
    };
    // A certificate naming another node: the observer is a node n3 dials, if there is
    // one — it takes n3 for the node named, whose gossip record advertises another
    // fingerprint; else n1, which dials n3 and finds another name than the one dialed.
    let (observer, named, naming_counter) = match ["n1", "n2"]
        .into_iter()
        .find(|o| dialer("n3", o) == Side::Local)
    {
        Some("n1") => ("n1", "n2", "quic_cert_fingerprint_mismatch"),
        Some(_) => ("n2", "n1", "quic_cert_fingerprint_mismatch"),
        None => ("n1", "n2", "quic_cert_name_mismatch"),
    };
    let naming = format!("naming {named}");
    let cases = [
        (
            "from another CA",
            issue_cert("n3", &other_ca, &tmp.path().join("foreign"), valid)?,
            "n1",
            "quic_cert_foreign_ca",
        ),
        (
            "expired",
            issue_cert("n3", &pki, &tmp.path().join("expired"), expired)?,
            "n1",
            "quic_cert_expired",
        ),
        (
            naming.as_str(),
            issue_cert(named, &pki, &tmp.path().join("naming"), valid)?,
            observer,
            naming_counter,
        ),
    ];
    for (what, written, observer, counter) in cases {
        lab.stop_daemon("n3")?;
        std::fs::copy(&written.cert, pki.join("n3.pem"))?;
        std::fs::copy(&written.key, pki.join("n3.key"))?;
        let before = io_counter(&lab, observer, counter)?;
        lab.start_daemon_with_env("n3", &[(overlayd::pki::UNCHECKED_CERT_ENV, "1")])
            .with_context(|| format!("starting n3 with a certificate {what}"))?;
        wait_for(
            &format!("{observer} counting n3's certificate {what} as {counter}"),
            REFUSED_WITHIN,
            || Ok(io_counter(&lab, observer, counter)? > before),
        )?;
        // Refused at every attempt: never connected at n1, and n3's pod gets nothing
        // through (nor in clear).
        for _ in 0..10 {
            let state = quic_state(&lab, observer, "n3")?;
            ensure!(
                state.as_deref() != Some("connected"),
                "{observer} shows a connected tunnel to n3 whose certificate is {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        no_reply(&p3_ns, p1_ip, &format!("n3 with a certificate {what}"))?;
        no_reply(
            &p1_ns,
            lab.pod("n3-p1")?.ip,
            &format!("to n3 with a certificate {what}"),
        )?;
        eprintln!(
            "quic: n3 with a certificate {what}: {observer} counted {counter} = {}",
            io_counter(&lab, observer, counter)?
        );
    }
    Ok(())
}

/// Waits until n1, n2 and n3 each hold exactly one revocation (`when` names the moment).
fn every_node_holds_the_revocation(lab: &Lab, when: &str) -> Result<()> {
    for on in ["n1", "n2", "n3"] {
        wait_for(
            &format!("{on} holding the revocation{when}"),
            REVOKED_WITHIN,
            || Ok(io_counter(lab, on, "pki_revoked_certificates")? == 1),
        )?;
    }
    Ok(())
}

/// `overlayd cert revoke RUN/pki/n3.pem` on n1: within [`REVOKED_WITHIN`] both n1 and n2
/// have closed their QUIC tunnels to n3 and count it (`quic_cert_revoked`); n3's pod
/// reaches neither n1's nor n2's afterwards (and, the zones requiring encryption, the
/// router sees no VXLAN and no pod packet in clear between n3 and the others); every
/// node lists the revocation (`cert list-revoked`, `pki_revoked_certificates` in
/// `status`), n3 included; a revoke of something that is no fingerprint is refused with
/// a message saying what is expected. Then every daemon is stopped at once and started
/// again — no node left to gossip the revocation — and every node still holds it from
/// its own `revoked.json` and n1 still refuses n3.
pub(crate) fn a_revocation_closes_the_revoked_nodes_tunnels_within_the_bound() -> Result<()> {
    let mut lab = lab("qr", &Topology::parse(CERT_TOPOLOGY)?)?;
    wait_for_paths(&lab, "n1", &[("n2", "udp"), ("n3", "quic")])?;
    wait_for_paths(&lab, "n2", &[("n3", "quic")])?;
    let (p1, p2, p3) = (lab.pod("n1-p1")?, lab.pod("n2-p1")?, lab.pod("n3-p1")?);
    first_reply(&p3.netns, p1.ip)?;
    first_reply(&p3.netns, p2.ip)?;
    for on in ["n1", "n2"] {
        wait_for(
            &format!("{on}'s tunnel to n3 connected"),
            PATHS_WITHIN,
            || Ok(quic_state(&lab, on, "n3")?.as_deref() == Some("connected")),
        )?;
    }
    let counters = RouterCounters::install(
        &lab,
        Ipv4Net::from(lab.node("n3")?.underlay()),
        &[segment_subnet(&lab, "a")?, segment_subnet(&lab, "b")?],
    )?;

    let cert = overlayd_lab::config::pki_dir(lab.run_dir()).join("n3.pem");
    let fingerprint = overlayd::pki::cert_file_fingerprint(&cert)?.to_string();
    let start = std::time::Instant::now();
    let out = lab.overlayd("n1", &["cert", "revoke", &cert.to_string_lossy()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.contains(&fingerprint), "cert revoke printed:\n{text}");
    wait_for(
        "n1 and n2 closing their tunnels to the revoked n3",
        REVOKED_WITHIN,
        || {
            Ok(
                quic_state(&lab, "n1", "n3")?.as_deref() != Some("connected")
                    && quic_state(&lab, "n2", "n3")?.as_deref() != Some("connected"),
            )
        },
    )?;
    eprintln!(
        "quic: tunnels to the revoked n3 closed {} ms after `cert revoke`",
        start.elapsed().as_millis()
    );
    every_node_holds_the_revocation(&lab, "")?;
    for on in ["n1", "n2"] {
        ensure!(
            io_counter(&lab, on, "quic_cert_revoked")? >= 1,
            "{on} did not count the revoked certificate"
        );
    }
    // n3 itself says why nobody takes its tunnels any more.
    let n3_log = lab.node("n3")?.log_path();
    wait_for(
        "n3 logging that its certificate is revoked",
        REVOKED_WITHIN,
        || Ok(std::fs::read_to_string(&n3_log)?.contains("own QUIC certificate is revoked")),
    )?;
    let listed = lab.overlayd("n2", &["cert", "list-revoked", "--json"])?;
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    ensure!(
        listed["revoked"][0]["fingerprint"] == fingerprint.as_str()
            && listed["revoked"][0]["by"] == "n1",
        "n2 lists {listed}"
    );

    no_reply(&p3.netns, p1.ip, "revoked n3 -> n1")?;
    no_reply(&p3.netns, p2.ip, "revoked n3 -> n2")?;
    no_reply(&p1.netns, p3.ip, "n1 -> revoked n3")?;
    // It stays refused: redials are refused and counted again, never connected.
    let before =
        io_counter(&lab, "n1", "quic_cert_revoked")? + io_counter(&lab, "n3", "quic_cert_revoked")?;
    wait_for("another refused handshake", REFUSED_WITHIN, || {
        Ok(io_counter(&lab, "n1", "quic_cert_revoked")?
            + io_counter(&lab, "n3", "quic_cert_revoked")?
            + io_counter(&lab, "n3", "quic_handshake_failures")?
            > before)
    })?;
    ensure!(
        quic_state(&lab, "n1", "n3")?.as_deref() != Some("connected"),
        "n1 reconnected to the revoked n3"
    );
    let (vxlan, clear) = (counters.vxlan()?, counters.pods_in_clear()?);
    ensure!(
        vxlan.0 == 0 && clear.0 == 0,
        "cleartext between the revoked n3 and the others: VXLAN {vxlan:?}, pods {clear:?}\n{}",
        counters.listing()
    );

    let bad = std::process::Command::new(crate::support::overlayd_bin())
        .args(["cert", "revoke", "not-a-fingerprint"])
        .output()?;
    let err = String::from_utf8_lossy(&bad.stderr);
    ensure!(
        !bad.status.success() && err.contains("neither a certificate fingerprint"),
        "cert revoke not-a-fingerprint: {err}"
    );

    // The whole cluster restarts: the revocation lives only in the nodes' state dirs.
    for node in ["n1", "n2", "n3"] {
        lab.stop_daemon(node)?;
    }
    for node in ["n1", "n2", "n3"] {
        lab.start_daemon(node)?;
    }
    every_node_holds_the_revocation(&lab, " after the restart")?;
    wait_for_paths(&lab, "n1", &[("n2", "udp")])?;
    wait_for("n1 refusing the revoked n3 again", REFUSED_WITHIN, || {
        Ok(io_counter(&lab, "n1", "quic_cert_revoked")?
            + io_counter(&lab, "n3", "quic_cert_revoked")?
            + io_counter(&lab, "n3", "quic_handshake_failures")?
            > 0)
    })?;
    ensure!(
        quic_state(&lab, "n1", "n3")?.as_deref() != Some("connected"),
        "n1 connected to the revoked n3 after the restart"
    );
    let (p1, p3) = (lab.pod("n1-p1")?, lab.pod("n3-p1")?);
    no_reply(&p3.netns, p1.ip, "revoked n3 -> n1 after the restart")?;
    Ok(())
}

/// tcpdump on n1's underlay device while a pod pings n1-p1 with a marker pattern in its
/// payload: from n3-p1 (a QUIC path) the capture holds QUIC packets and never the
/// marker; from n2-p1 (a udp path, VXLAN) it holds the marker — the check can fail.
pub(crate) fn tcpdump_sees_no_pod_payload_on_a_quic_path_but_sees_it_on_udp() -> Result<()> {
    const MARKER: &[u8] = b"OVLMARK!";
    let lab = lab("qt", &Topology::parse(CERT_TOPOLOGY)?)?;
    wait_for_paths(&lab, "n1", &[("n2", "udp"), ("n3", "quic")])?;
    let p1 = lab.pod("n1-p1")?;
    let tmp = tempfile::tempdir()?;
    let pattern: String = MARKER.iter().map(|b| format!("{b:02x}")).collect();
    for (from, path, port, marker_expected) in [
        ("n3-p1", "quic", Quic::DEFAULT_PORT, false),
        ("n2-p1", "udp", Tunnel::default().port, true),
    ] {
        let pod = lab.pod(from)?;
        first_reply(&pod.netns, p1.ip)?;
        let file = tmp.path().join(format!("{path}.pcap"));
        let mut cmd = lab.command("n1", "tcpdump")?;
        cmd.args(["-i", "eth0", "-U", "-n", "-w"])
            .arg(&file)
            .arg("udp")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut tcpdump = cmd.spawn().context("starting tcpdump")?;
        // tcpdump is listening once it created the file.
        let waited = wait_for("tcpdump to start", Duration::from_secs(5), || {
            Ok(file.exists())
        });
        let pinged = waited.and_then(|()| {
            std::thread::sleep(Duration::from_millis(300));
            ns_run(
                &pod.netns,
                &[
                    "ping",
                    "-c",
                    "10",
                    "-i",
                    "0.2",
                    "-W",
                    "1",
                    "-p",
                    &pattern,
                    &p1.ip.to_string(),
                ],
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling the tcpdump this test started, by its PID.
        unsafe {
            libc::kill(tcpdump.id() as libc::pid_t, libc::SIGTERM);
        }
        let status = tcpdump.wait()?;
        pinged.with_context(|| format!("{from} -> n1-p1 with the marker ({path})"))?;
        let capture =
            std::fs::read(&file).with_context(|| format!("tcpdump ({status}) wrote no capture"))?;
        let read = std::process::Command::new("tcpdump")
            .args(["-r"])
            .arg(&file)
            .args(["-n", "udp", "port", &port.to_string()])
            .output()?;
        let packets = String::from_utf8_lossy(&read.stdout).lines().count();
        let seen = capture.windows(MARKER.len()).any(|w| w == MARKER);
        eprintln!(
            "quic: tcpdump on n1's eth0 while {from} pinged n1-p1 ({path}): {packets} packets \
             on port {port}, marker seen: {seen}"
        );
        ensure!(
            packets >= 10,
            "{path}: only {packets} packets on port {port} in the capture"
        );
        ensure!(
            seen == marker_expected,
            "{path}: the marker was {} in the capture of n1's underlay",
            if seen { "seen" } else { "not seen" }
        );
    }
    Ok(())
}

/// `on`'s QUIC tunnel to `peer`: its state and the fingerprint of the certificate the
/// peer presented on it.
fn quic_tunnel(lab: &Lab, on: &str, peer: &str) -> Result<(String, Option<String>)> {
    let q = lab
        .peers(on)?
        .into_iter()
        .find(|p| p.name == peer)
        .and_then(|p| p.quic)
        .with_context(|| format!("{on} shows no QUIC tunnel to {peer}"))?;
    Ok((q.state, q.cert_fingerprint))
}

/// The fingerprint `member`'s gossip record advertises, as `on` sees it.
fn advertised(lab: &Lab, on: &str, member: &str) -> Result<Option<String>> {
    Ok(lab
        .members(on)?
        .into_iter()
        .find(|m| m.name == member)
        .and_then(|m| m.cert_fingerprint))
}

/// Certificate rotation: n3's certificate is renewed (`cert issue` again) and n3 gets
/// SIGHUP. n1's tunnel to n3 stays up on the old certificate (not redialed: it still
/// shows the old fingerprint) while n3's record, as n1 sees it, now advertises the new
/// one; pods keep talking. n1 restarted then brings the tunnel up on the new certificate.
pub(crate) fn a_renewed_certificate_is_advertised_after_sighup_and_keeps_the_tunnel() -> Result<()>
{
    let mut lab = lab("qh", &Topology::parse(CERT_TOPOLOGY)?)?;
    wait_for_paths(&lab, "n1", &[("n3", "quic")])?;
    let (p1_ip, p3_ns) = (lab.pod("n1-p1")?.ip, lab.pod("n3-p1")?.netns.clone());
    first_reply(&p3_ns, p1_ip)?;
    let pki = overlayd_lab::config::pki_dir(lab.run_dir());
    let old = overlayd::pki::cert_file_fingerprint(&pki.join("n3.pem"))?.to_string();
    wait_for(
        "n1's tunnel to n3 on n3's certificate",
        PATHS_WITHIN,
        || Ok(quic_tunnel(&lab, "n1", "n3")? == ("connected".into(), Some(old.clone()))),
    )?;
    ensure!(
        advertised(&lab, "n1", "n3")?.as_deref() == Some(old.as_str()),
        "n1 sees n3 advertising {:?}, not {old}",
        advertised(&lab, "n1", "n3")?
    );

    let renewed = overlayd::pki::issue_cert(
        "n3",
        &pki,
        &pki,
        overlayd::pki::Validity::days_from(std::time::SystemTime::now(), 20),
    )?;
    let new = renewed.fingerprint.to_string();
    let pid = lab.node("n3")?.pid().context("n3 has no daemon")?;
    // SAFETY: signalling the lab's n3 daemon, by its PID.
    ensure!(
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) } == 0,
        "SIGHUP to n3's daemon"
    );
    wait_for(
        "n1 seeing n3's record advertise the renewed certificate",
        Duration::from_secs(10),
        || Ok(advertised(&lab, "n1", "n3")?.as_deref() == Some(new.as_str())),
    )?;
    ensure!(
        quic_tunnel(&lab, "n1", "n3")? == ("connected".into(), Some(old.clone())),
        "n1's tunnel to n3 after n3's reload: {:?} (it should stay up on the old certificate)",
        quic_tunnel(&lab, "n1", "n3")?
    );
    ping(&p3_ns, p1_ip, 3).context("n3-p1 -> n1-p1 after n3's reload")?;

    lab.kill_daemon("n1")?;
    lab.start_daemon("n1")?;
    wait_for(
        "n1's new tunnel to n3 on the renewed certificate",
        PATHS_WITHIN,
        || Ok(quic_tunnel(&lab, "n1", "n3")? == ("connected".into(), Some(new.clone()))),
    )?;
    first_reply(&p3_ns, p1_ip).context("n3-p1 -> n1-p1 on the renewed certificate")?;
    eprintln!(
        "quic: n3's certificate renewed {old} -> {new}; n1's tunnel kept it until n1 restarted"
    );
    Ok(())
}
