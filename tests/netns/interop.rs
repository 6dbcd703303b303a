//! 8d: a node whose tunnel is a plain Linux kernel vxlan device, set up as Flannel's
//! vxlan backend does, exchanges pod traffic with an overlayd node in both directions:
//! across the router, and on one veth link (where the kernel's offloaded inner checksums
//! arrive unfinished, issue 7 item 6).

use anyhow::{Context, Result, ensure};

use crate::support::{TestLab, lab, ns_run, ping, tcp_transfer, two_segments};

const NODES: &str = r#"
[[node]]
name = "n1"
segment = "a"
pods = 1
[[node]]
name = "k1"
segment = "b"
pods = 0
daemon = false
pod_subnet = "10.244.9.0/24"
vtep_mac = "0e:00:00:00:09:01"
"#;

/// The kernel node on n1's own segment, and n1 tunnelling to it (no host-gw): the VXLAN
/// datagrams cross one veth pair and a bridge, no router, with offloads left on.
const SAME_LINK_NODES: &str = r#"
[[node]]
name = "n1"
segment = "a"
pods = 1
[node.config.tunnel]
host_gw = false
[[node]]
name = "k1"
segment = "a"
pods = 0
daemon = false
pod_subnet = "10.244.9.0/24"
vtep_mac = "0e:00:00:00:09:01"
"#;

pub(crate) fn kernel_vxlan_node_interoperates_both_ways() -> Result<()> {
    let lab = lab("kv", &two_segments(NODES)?)?;
    interoperate(&lab)
}

/// Issue 7 item 6: on one link the kernel's inner TCP/UDP checksums arrive partial
/// (CHECKSUM_PARTIAL survives the veth); overlayd completes them, so TCP works both ways.
pub(crate) fn kernel_vxlan_node_on_the_same_link_with_offloads() -> Result<()> {
    same_link("pfk", "")
}

/// The same with overlayd's own offloads off (no TUN offload, no UDP GRO or GSO): partial
/// checksums are completed and the kernel's unsegmented super-packets split in userspace,
/// and traffic still flows without UDP GRO.
pub(crate) fn kernel_vxlan_node_on_the_same_link_without_our_offloads() -> Result<()> {
    same_link("pfn", "offload = false\nudp_gro = false\nudp_gso = false\n")
}

/// [`SAME_LINK_NODES`] with `tunnel` (TOML lines) added to n1's `[tunnel]`.
fn same_link(tag: &str, tunnel: &str) -> Result<()> {
    let nodes = SAME_LINK_NODES.replace("host_gw = false\n", &format!("host_gw = false\n{tunnel}"));
    let lab = lab(tag, &two_segments(&nodes)?)?;
    // Offloads stay on: check that the kernel side's underlay really checksums late.
    let k1 = lab.node("k1")?.netns();
    let features = ns_run(&k1, &["ethtool", "-k", "eth0"]).unwrap_or_default();
    ensure!(
        !features.contains("tx-checksumming: off"),
        "k1's eth0 has tx checksumming off; the test needs it on:\n{features}"
    );
    interoperate(&lab)?;
    let status: serde_json::Value =
        serde_json::from_slice(&lab.overlayd("n1", &["status", "--json"])?.stdout)?;
    let completed = status
        .pointer("/io/inner_checksums_completed")
        .and_then(serde_json::Value::as_u64);
    ensure!(
        completed.is_some_and(|c| c > 0),
        "no partial inner checksum was completed (or handed to the kernel) on this link: \
         {completed:?} in {status}"
    );
    Ok(())
}

/// Makes `k1` a Flannel-style kernel vxlan node with one pod, then checks ping and a
/// byte-verified 5 MB TCP transfer each way between that pod and n1-p1.
fn interoperate(lab: &TestLab) -> Result<()> {
    let n1 = lab.node("n1")?;
    let k1 = lab.node("k1")?.netns();
    let status: serde_json::Value =
        serde_json::from_slice(&lab.overlayd("n1", &["status", "--json"])?.stdout)?;
    let n1_mac = status["vtep_mac"].as_str().context("vtep_mac")?.to_owned();
    // n1 claimed its subnet by gossip; the kernel side routes it via its network address.
    let n1_pod_subnet = lab.status("n1")?.pod_subnet;
    let (n1_subnet, n1_net) = (
        n1_pod_subnet.to_string(),
        n1_pod_subnet.network().to_string(),
    );
    let (n1_underlay, k1_underlay) = (
        n1.underlay().to_string(),
        lab.node("k1")?.underlay().to_string(),
    );

    // Flannel's vxlan backend, by hand: the device, its address (subnet.0/32), the
    // permanent neighbour and FDB entry for the remote VTEP, and the onlink route.
    let k = |args: &[&str]| ns_run(&k1, args);
    k(&[
        "ip",
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &k1_underlay,
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ])?;
    k(&[
        "ip",
        "link",
        "set",
        "flannel.1",
        "address",
        "0e:00:00:00:09:01",
        "mtu",
        "1450",
        "up",
    ])?;
    k(&["ip", "addr", "add", "10.244.9.0/32", "dev", "flannel.1"])?;
    k(&[
        "ip",
        "neigh",
        "replace",
        &n1_net,
        "lladdr",
        &n1_mac,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ])?;
    k(&[
        "bridge",
        "fdb",
        "append",
        &n1_mac,
        "dev",
        "flannel.1",
        "dst",
        &n1_underlay,
    ])?;
    k(&[
        "ip",
        "route",
        "add",
        &n1_subnet,
        "via",
        &n1_net,
        "dev",
        "flannel.1",
        "onlink",
    ])?;
    // A pod behind it, on a cni0 bridge. Its namespace carries the lab's prefix, so
    // `lab down` removes it with the rest.
    k(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    k(&["ip", "link", "add", "cni0", "type", "bridge"])?;
    k(&["ip", "addr", "add", "10.244.9.1/24", "dev", "cni0"])?;
    k(&["ip", "link", "set", "cni0", "up"])?;
    let pod = format!("{k1}-p1");
    std::process::Command::new("ip")
        .args(["netns", "add", &pod])
        .status()?;
    k(&[
        "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", &pod,
    ])?;
    k(&["ip", "link", "set", "veth0", "master", "cni0", "up"])?;
    let p = |args: &[&str]| ns_run(&pod, args);
    p(&["ip", "link", "set", "lo", "up"])?;
    p(&["ip", "addr", "add", "10.244.9.2/24", "dev", "eth0"])?;
    p(&["ip", "link", "set", "eth0", "mtu", "1450", "up"])?;
    p(&["ip", "route", "add", "default", "via", "10.244.9.1"])?;

    let ours = lab.pod("n1-p1")?;
    let theirs: std::net::Ipv4Addr = "10.244.9.2".parse()?;
    ping(&ours.netns, theirs, 3).context("overlayd pod -> kernel vxlan pod")?;
    ping(&pod, ours.ip, 3).context("kernel vxlan pod -> overlayd pod")?;
    tcp_transfer(&ours.netns, &pod, theirs, 5 << 20).context("TCP overlayd -> kernel")?;
    let seen =
        tcp_transfer(&pod, &ours.netns, ours.ip, 5 << 20).context("TCP kernel -> overlayd")?;
    ensure!(
        seen.ip() == std::net::IpAddr::V4(theirs),
        "source rewritten: {seen}"
    );

    let peer = lab
        .peers("n1")?
        .into_iter()
        .find(|p| p.name == "k1")
        .context("n1 has no peer k1")?;
    ensure!(peer.path == "udp", "n1 reaches k1 over {}", peer.path);
    ensure!(
        peer.tx_bytes >= 5 << 20 && peer.rx_bytes >= 5 << 20,
        "{peer:?}"
    );
    ensure!(peer.drops == 0, "drops from the kernel peer: {peer:?}");
    Ok(())
}
