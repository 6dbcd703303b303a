//! The flat pod network of the default lab: host-gw within a segment, VXLAN/UDP across,
//! MTU handling, NAT at the edge, pod addresses.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, ensure};
use overlayd_lab::Lab;

use crate::support::{
    default_lab, df_ping, lab, link_packets, ns_run, ping, quiet_lab, tcp_transfer, two_segments,
};

/// 8a: pods on nodes of one segment talk over host-gw routes: the daemon's peer entry
/// says host-gw, the kernel route goes via the peer's underlay address, and neither the
/// TUN device nor the peer's tunnel counters see a packet.
pub(crate) fn host_gw_within_a_segment_bypasses_the_daemon() -> Result<()> {
    let lab = quiet_lab("hg")?;
    let (src, dst) = (lab.pod("n1-p1")?, lab.pod("n2-p1")?);
    let n1 = lab.node("n1")?.netns();
    let n2 = lab.node("n2")?.netns();
    let tun_before = (link_packets(&n1, "ovdtun0")?, link_packets(&n2, "ovdtun0")?);

    ping(&src.netns, dst.ip, 5)?;
    tcp_transfer(&src.netns, &dst.netns, dst.ip, 5 << 20)?;

    let peer = peer(&lab, "n1", "n2")?;
    ensure!(peer.path == "host-gw", "n1 reaches n2 over {}", peer.path);
    ensure!(
        peer.tx_packets == 0 && peer.rx_packets == 0,
        "tunnel counters moved: {peer:?}"
    );
    let tun_after = (link_packets(&n1, "ovdtun0")?, link_packets(&n2, "ovdtun0")?);
    ensure!(
        tun_before == tun_after,
        "TUN packet counters moved: {tun_before:?} -> {tun_after:?}"
    );
    let n2_subnet = subnet_of(&lab, "n2")?;
    let route = ns_run(&n1, &["ip", "route", "show", &n2_subnet])?;
    ensure!(
        route.contains("via 10.100.1.12 dev eth0") && route.contains("proto 79"),
        "route: {route}"
    );
    Ok(())
}

/// 8b: pods on different segments reach each other through the daemon's VXLAN/UDP
/// tunnel: ping, then 50 MB over TCP with every byte checked; both daemons count it.
pub(crate) fn udp_across_segments_ping_and_50mb_transfer() -> Result<()> {
    let lab = default_lab("ud")?;
    let (src, dst) = (lab.pod("n1-p1")?, lab.pod("n3-p2")?);
    ping(&src.netns, dst.ip, 5)?;
    ping(&dst.netns, src.ip, 5)?;
    let seen = tcp_transfer(&src.netns, &dst.netns, dst.ip, 50 << 20)?;
    ensure!(
        seen.ip() == std::net::IpAddr::V4(src.ip),
        "receiver saw {seen}, not the pod's own address"
    );

    let out = peer(&lab, "n1", "n3")?;
    ensure!(out.path == "udp", "n1 reaches n3 over {}", out.path);
    ensure!(
        out.tx_bytes >= 50 << 20,
        "n1 sent only {} tunnel bytes to n3",
        out.tx_bytes
    );
    let back = peer(&lab, "n3", "n1")?;
    ensure!(
        back.rx_bytes >= 50 << 20,
        "n3 received only {} tunnel bytes from n1",
        back.rx_bytes
    );
    ensure!(
        out.drops == 0 && back.drops == 0,
        "drops on a clean path: {out:?} {back:?}"
    );
    for node in ["n1", "n3"] {
        let status: serde_json::Value =
            serde_json::from_slice(&lab.overlayd(node, &["status", "--json"])?.stdout)?;
        let drops = status["drops"].as_object().context("drops")?;
        ensure!(
            drops.values().all(|v| v == 0),
            "{node} counted drops on a clean run: {drops:?}"
        );
    }
    Ok(())
}

/// Issue 7 items 7–8: two overlayd nodes tunnelling on one link, one with every offload
/// (TUN TSO/GRO, UDP GSO/GRO), the other with none: 20 MB of byte-checked TCP each way,
/// no drops, and the offloading node really read super-packets and wrote coalesced ones.
pub(crate) fn mixed_offloads_on_one_link_carry_tcp_both_ways() -> Result<()> {
    let topology = two_segments(
        r#"
[[node]]
name = "n1"
segment = "a"
pods = 1
[node.config.tunnel]
host_gw = false
[[node]]
name = "n2"
segment = "a"
pods = 1
[node.config.tunnel]
host_gw = false
offload = false
udp_gso = false
udp_gro = false
"#,
    )?;
    let lab = lab("pfm", &topology)?;
    let (a, b) = (lab.pod("n1-p1")?, lab.pod("n2-p1")?);
    ping(&a.netns, b.ip, 3)?;
    tcp_transfer(&a.netns, &b.netns, b.ip, 20 << 20).context("TCP offloading -> plain")?;
    tcp_transfer(&b.netns, &a.netns, a.ip, 20 << 20).context("TCP plain -> offloading")?;
    let (out, back) = (peer(&lab, "n1", "n2")?, peer(&lab, "n2", "n1")?);
    ensure!(out.path == "udp", "n1 reaches n2 over {}", out.path);
    ensure!(
        out.drops == 0 && back.drops == 0,
        "drops on a clean path: {out:?} {back:?}"
    );
    let status: serde_json::Value =
        serde_json::from_slice(&lab.overlayd("n1", &["status", "--json"])?.stdout)?;
    let io = |k: &str| status["io"][k].as_u64().unwrap_or(0);
    ensure!(
        io("tun_gso_reads") > 0 && io("tun_gro_writes") > 0 && io("tun_offload_errors") == 0,
        "n1 with offload: {}",
        status["io"]
    );
    Ok(())
}

/// 8c: pods keep MTU 1500 while the tunnel carries 1450: bulk TCP still completes (path
/// MTU discovery works because the node answers with ICMP), and a DF ping too large for
/// the tunnel gets "fragmentation needed" naming the tunnel MTU instead of silence.
pub(crate) fn mtu_1500_pods_bulk_transfer_and_frag_needed() -> Result<()> {
    let lab = default_lab("mt")?;
    let (src, dst) = (lab.pod("n2-p1")?, lab.pod("n4-p1")?);
    let link = ns_run(&src.netns, &["ip", "-j", "link", "show", "dev", "eth0"])?;
    let link: serde_json::Value = serde_json::from_str(&link)?;
    ensure!(
        link[0]["mtu"] == 1500,
        "pod MTU is {}, expected 1500",
        link[0]["mtu"]
    );
    let tun = ns_run(
        &lab.node("n2")?.netns(),
        &["ip", "-j", "link", "show", "dev", "ovdtun0"],
    )?;
    let tun: serde_json::Value = serde_json::from_str(&tun)?;
    ensure!(
        tun[0]["mtu"] == 1450,
        "tunnel MTU is {}, expected 1450",
        tun[0]["mtu"]
    );

    tcp_transfer(&src.netns, &dst.netns, dst.ip, 20 << 20)
        .context("bulk TCP with MTU 1500 pods")?;
    tcp_transfer(&dst.netns, &src.netns, src.ip, 20 << 20).context("bulk TCP back")?;

    // A fresh destination, so no PMTU is cached yet.
    let fresh = lab.pod("n3-p1")?.ip;
    let (_, text) = df_ping(&src.netns, fresh, 1472)?;
    ensure!(
        text.contains("Frag needed") && text.contains("mtu = 1450"),
        "a 1500-byte DF ping should get ICMP fragmentation needed (mtu 1450):\n{text}"
    );
    // Small enough for the tunnel: crosses.
    let (crossed, text) = df_ping(&src.netns, fresh, 1422)?;
    ensure!(
        crossed,
        "a 1450-byte DF ping did not cross the tunnel:\n{text}"
    );
    Ok(())
}

/// 8g: a pod reaches an underlay host outside the cluster through its node's address
/// (masquerade), while pod-to-pod packets keep the pod's own source address on both paths.
pub(crate) fn masquerade_outside_cluster_pod_source_kept_inside() -> Result<()> {
    let lab = default_lab("nt")?;
    let pod = lab.pod("n1-p1")?;
    let router = lab.router_netns();
    let router_ip = lab
        .topology()
        .segment("a")
        .context("segment a")?
        .router_address();

    let seen = tcp_transfer(&pod.netns, &router, router_ip, 4096)?;
    ensure!(
        seen.ip() == std::net::IpAddr::V4(lab.node("n1")?.underlay()),
        "the router saw {seen}; expected the node's underlay address (masquerade)"
    );
    for peer in ["n2-p1", "n4-p1"] {
        let dst = lab.pod(peer)?;
        let seen = tcp_transfer(&pod.netns, &dst.netns, dst.ip, 4096)?;
        ensure!(
            seen.ip() == std::net::IpAddr::V4(pod.ip),
            "{peer} saw {seen}, expected {}",
            pod.ip
        );
    }
    let rules = ns_run(
        &lab.node("n1")?.netns(),
        &["nft", "list", "table", "ip", "overlayd"],
    )?;
    let masquerade = format!(
        "ip saddr {} ip daddr != 10.244.0.0/16 masquerade",
        subnet_of(&lab, "n1")?
    );
    ensure!(rules.contains(&masquerade), "rules:\n{rules}");
    Ok(())
}

/// Pods: addresses from the node's subnet, never handed out twice, kept across a daemon
/// restart; a namespace the daemon made is usable with `ip netns exec` and removed on
/// `pod del`; bad requests get clear errors.
pub(crate) fn pods_get_persistent_addresses_and_namespaces() -> Result<()> {
    let mut lab = default_lab("pd")?;
    // Names with the lab's prefix: `lab down` removes their namespaces if the test fails.
    let own = overlayd_lab::pod_netns(lab.name(), "own");
    let other = overlayd_lab::pod_netns(lab.name(), "x2");
    let out = lab.overlayd("n1", &["pod", "add", &own, "--json"])?;
    let record: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ip: Ipv4Addr = record["ip"].as_str().context("ip")?.parse()?;
    let netns = format!("/run/netns/{own}");
    ensure!(record["netns"] == netns.as_str(), "{record}");
    // Usable from the host with iproute2, and reachable from another segment.
    let addrs = ns_run(&own, &["ip", "-4", "-br", "addr", "show", "dev", "eth0"])?;
    ensure!(addrs.contains(&ip.to_string()), "{addrs}");
    ping(&lab.pod("n3-p1")?.netns, ip, 2)?;

    let taken = lab.pod("n1-p1")?.ip.to_string();
    let dup = lab.overlayd("n1", &["pod", "add", &other, "--ip", &taken]);
    ensure!(
        format!("{:?}", dup.err()).contains("already held by pod n1-p1"),
        "a held address was handed out again, or refused for another reason"
    );
    let bad = lab.overlayd("n1", &["pod", "add", "Bad/Name"]);
    ensure!(
        format!("{:?}", bad.err()).contains("invalid pod name"),
        "bad name accepted"
    );
    let host = lab.overlayd(
        "n1",
        &["pod", "add", "hostns", "--netns", "/proc/self/ns/net"],
    );
    ensure!(
        format!("{:?}", host.err()).contains("host's own network namespace"),
        "the daemon's own namespace was accepted as a pod's"
    );

    let before = lab.overlayd("n1", &["pod", "list", "--json"])?.stdout;
    lab.kill_daemon("n1")?;
    lab.start_daemon("n1")?;
    let after = lab.overlayd("n1", &["pod", "list", "--json"])?.stdout;
    ensure!(before == after, "pods changed across a restart");
    // Still attached to the bridge and reachable after the restart.
    ping(&lab.pod("n3-p1")?.netns, ip, 2)?;
    ping(&lab.pod("n2-p1")?.netns, lab.pod("n1-p1")?.ip, 2)?;
    let next = lab.overlayd("n1", &["pod", "add", &other, "--json"])?;
    let next: serde_json::Value = serde_json::from_slice(&next.stdout)?;
    let next_ip = next["ip"].as_str().context("ip")?.to_string();
    let list = String::from_utf8_lossy(&after).to_string();
    ensure!(
        !list.contains(&format!("\"{next_ip}\"")),
        "new pod got an address still held: {next_ip}"
    );

    lab.overlayd("n1", &["pod", "del", &own])?;
    lab.overlayd("n1", &["pod", "del", &other])?;
    ensure!(
        !std::path::Path::new(&netns).exists(),
        "{netns} still exists after pod del"
    );
    Ok(())
}

/// `lab check` pings every pair and names the path; `lab ps --json` has the documented shape.
pub(crate) fn lab_check_reports_paths_and_ps_json() -> Result<()> {
    let lab = default_lab("lc")?;
    let report = lab.check()?;
    ensure!(report.ok(), "unreachable pairs:\n{}", report.matrix());
    let path = |a: &str, b: &str| report.pair(a, b).map(|p| p.path.clone());
    ensure!(
        path("n1-p1", "n2-p2").as_deref() == Some("host-gw"),
        "{}",
        report.matrix()
    );
    ensure!(
        path("n1-p1", "n4-p2").as_deref() == Some("udp"),
        "{}",
        report.matrix()
    );
    ensure!(
        path("n1-p1", "n1-p2").as_deref() == Some("bridge"),
        "{}",
        report.matrix()
    );

    let ps = serde_json::to_value(lab.ps())?;
    let nodes = ps["nodes"].as_array().context("nodes")?;
    ensure!(nodes.len() == 4, "{ps}");
    for key in [
        "name", "pid", "segment", "zone", "underlay", "subnet", "pods",
    ] {
        ensure!(nodes[0].get(key).is_some(), "ps node lacks {key}: {ps}");
    }
    ensure!(nodes[0]["pods"][0].get("ip").is_some(), "{ps}");
    Ok(())
}

fn peer(lab: &Lab, on: &str, name: &str) -> Result<overlayd_lab::PeerReport> {
    lab.peers(on)?
        .into_iter()
        .find(|p| p.name == name)
        .with_context(|| format!("{on} has no peer {name}"))
}

/// The pod subnet a node's daemon holds (claimed by gossip in the default lab).
pub(crate) fn subnet_of(lab: &Lab, node: &str) -> Result<String> {
    lab.node(node)?
        .pod_subnet()
        .map(|s| s.to_string())
        .with_context(|| format!("{node} has no pod subnet yet"))
}
