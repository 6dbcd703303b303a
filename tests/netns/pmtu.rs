//! Path MTU of the tunnel: a 1400-byte link on the underlay path between two nodes, pods
//! at 1500. The node learns the path's MTU (from the router's ICMP, or from its probes
//! when the router's ICMP is dropped), puts it on the peer's route, and bulk TCP between
//! pods completes.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use overlayd_lab::{Lab, PeerReport};

use crate::support::{TestLab, df_ping, lab, ns_run, tcp_transfer, two_segments_with, wait_for};

/// n1 on segment a, n2 on segment b: every n1–n2 packet crosses the router.
const ACROSS: &str = r#"
[[node]]
name = "n1"
segment = "a"
pods = 1
[[node]]
name = "n2"
segment = "b"
pods = 2
"#;

/// The MTU of segment b's link, as a cloud VPC or a tunnel underneath might have it.
const LINK_MTU: u32 = 1400;
/// What VXLAN over IPv4 costs (outer IPv4 + UDP + VXLAN + inner Ethernet).
const OVERHEAD: u32 = 50;
/// How long a node may take to show the path MTU.
const LEARN_WITHIN: Duration = Duration::from_secs(10);

/// A lab of `ACROSS` whose segment b runs at [`LINK_MTU`]: the router's side of it (the
/// bridge and n2's port) and n2's eth0. The daemons started at 1500; pods stay at 1500.
fn narrow_link_lab(tag: &str) -> Result<TestLab> {
    let lab = lab(tag, &two_segments_with("gossip = false", ACROSS)?)?;
    let mtu = LINK_MTU.to_string();
    let router = lab.router_netns();
    for dev in ["n2", "seg-b"] {
        ns_run(&router, &["ip", "link", "set", dev, "mtu", &mtu])?;
    }
    ns_run(
        &lab.node("n2")?.netns(),
        &["ip", "link", "set", "eth0", "mtu", &mtu],
    )?;
    Ok(lab)
}

fn peer(lab: &Lab, on: &str, name: &str) -> Result<PeerReport> {
    lab.peers(on)?
        .into_iter()
        .find(|p| p.name == name)
        .with_context(|| format!("{on} has no peer {name}"))
}

/// Waits until `on` shows the narrow link's MTU for `name` in `overlayd peers --json`,
/// and its kernel route to `name`'s pods carries the inner MTU; returns the report and
/// how long it took.
fn wait_for_path_mtu(lab: &Lab, on: &str, name: &str) -> Result<(PeerReport, Duration)> {
    let start = Instant::now();
    wait_for(
        &format!("{on} to show path MTU {LINK_MTU} for {name}"),
        LEARN_WITHIN,
        || {
            let p = peer(lab, on, name)?;
            Ok(p.path_mtu == Some(LINK_MTU) && p.inner_mtu == Some(LINK_MTU - OVERHEAD))
        },
    )
    .with_context(|| format!("last report: {:?}", peer(lab, on, name)))?;
    let took = start.elapsed();
    let report = peer(lab, on, name)?;
    let subnet = report.pod_subnet.to_string();
    let route = ns_run(&lab.node(on)?.netns(), &["ip", "route", "show", &subnet])?;
    ensure!(
        route.contains(&format!("mtu {}", LINK_MTU - OVERHEAD)),
        "{on}'s route to {name}'s pods lacks the path MTU: {route}"
    );
    let text = String::from_utf8(lab.overlayd(on, &["peers"])?.stdout)?;
    ensure!(
        text.contains(&format!("{LINK_MTU}/{}", LINK_MTU - OVERHEAD)),
        "`overlayd peers` does not show the path MTU:\n{text}"
    );
    Ok((report, took))
}

/// Issue 7's black hole, with ICMP working: the router answers n1's oversized outer
/// packets with "fragmentation needed"; 50 MB pod to pod completes both ways, both nodes
/// show path MTU 1400 (1350 inner) for each other, and a pod's oversized DF ping to a
/// pod it never talked to gets "fragmentation needed" naming 1350 instead of silence.
pub(crate) fn a_1400_byte_link_is_learned_and_bulk_tcp_completes() -> Result<()> {
    let lab = narrow_link_lab("pm1")?;
    let (a, b) = (lab.pod("n1-p1")?, lab.pod("n2-p1")?);

    let start = Instant::now();
    tcp_transfer(&a.netns, &b.netns, b.ip, 50 << 20).context("50 MB n1-p1 -> n2-p1")?;
    let forth = start.elapsed();
    let start = Instant::now();
    tcp_transfer(&b.netns, &a.netns, a.ip, 50 << 20).context("50 MB n2-p1 -> n1-p1")?;
    let back = start.elapsed();

    let (n1, took1) = wait_for_path_mtu(&lab, "n1", "n2")?;
    let (n2, took2) = wait_for_path_mtu(&lab, "n2", "n1")?;
    eprintln!(
        "50 MB over the 1400-byte link: {forth:?} there, {back:?} back; path MTU shown \
         {took1:?} / {took2:?} after: n1 sees n2 via {:?}, n2 sees n1 via {:?}",
        n1.path_mtu_source, n2.path_mtu_source
    );
    // A fresh destination, so the pod has no PMTU cached for it yet.
    let fresh = lab.pod("n2-p2")?.ip;
    let inner = LINK_MTU - OVERHEAD;
    let (_, text) = df_ping(&a.netns, fresh, (inner + 1 - 28) as u16)?;
    ensure!(
        text.contains("Frag needed") && text.contains(&format!("mtu = {inner}")),
        "a DF ping one byte over the path should get fragmentation needed (mtu {inner}):\n{text}"
    );
    let (crossed, text) = df_ping(&a.netns, fresh, (inner - 28) as u16)?;
    ensure!(
        crossed,
        "a DF ping of the path's size did not cross:\n{text}"
    );
    for node in ["n1", "n2"] {
        eprintln!("{node} tunnel I/O: {:?}", lab.status(node)?.io);
    }
    Ok(())
}

/// The same link behind a router whose ICMP is dropped (nftables on the router): only
/// n1's probes can find the path MTU. n1 (re)starts after the path narrowed, probes,
/// shows 1400 learned by probe, and 50 MB pod to pod completes.
pub(crate) fn icmp_dropped_path_mtu_is_found_by_probes() -> Result<()> {
    let mut lab = narrow_link_lab("pm2")?;
    let router = lab.router_netns();
    let rules = "table ip pmtest { chain out { type filter hook output priority 0; \
                 icmp type destination-unreachable counter drop; }; }";
    ns_run(&router, &["nft", rules])?;
    lab.stop_daemon("n1")?;
    lab.start_daemon("n1")?;
    let started = Instant::now();

    let (report, took) = wait_for_path_mtu(&lab, "n1", "n2")?;
    ensure!(
        report.path_mtu_source.as_deref() == Some("probe"),
        "n1 learned the path MTU by {:?}, not by probes",
        report.path_mtu_source
    );
    let (a, b) = (lab.pod("n1-p1")?, lab.pod("n2-p1")?);
    tcp_transfer(&a.netns, &b.netns, b.ip, 50 << 20).context("50 MB n1-p1 -> n2-p1")?;
    let counted = ns_run(&router, &["nft", "list", "table", "ip", "pmtest"])?;
    eprintln!(
        "probes found path MTU {:?} {took:?} after the wait began ({:?} after start); \
         router: {}",
        report.path_mtu,
        started.elapsed(),
        counted.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    Ok(())
}
