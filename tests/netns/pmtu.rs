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
/// How long a node may take to show the path MTU when ICMP reaches it.
const LEARN_WITHIN: Duration = Duration::from_secs(10);
/// How long probes may take to find a path that narrowed behind a router whose ICMP is
/// dropped: the daemon's 15 s confirmation interval, two lost confirmations and a search
/// round (2 s each), and slack for a loaded machine.
const PROBES_FIND_WITHIN: Duration = Duration::from_secs(30);

/// A lab of `ACROSS`: the daemons start on a 1500-byte path; pods are at 1500.
fn across_lab(tag: &str) -> Result<TestLab> {
    lab(tag, &two_segments_with("gossip = false", ACROSS)?)
}

/// Narrows segment b to [`LINK_MTU`] under the running daemons: the router's side of it
/// (the bridge and n2's port) and n2's eth0.
pub(crate) fn narrow_link(lab: &Lab) -> Result<()> {
    let mtu = LINK_MTU.to_string();
    let router = lab.router_netns();
    for dev in ["n2", "seg-b"] {
        ns_run(&router, &["ip", "link", "set", dev, "mtu", &mtu])?;
    }
    ns_run(
        &lab.node("n2")?.netns(),
        &["ip", "link", "set", "eth0", "mtu", &mtu],
    )?;
    Ok(())
}

/// Drops the router's ICMP "destination unreachable" (nftables table `pmtest`).
fn drop_router_icmp(lab: &Lab) -> Result<()> {
    let rules = "table ip pmtest { chain out { type filter hook output priority 0; \
                 icmp type destination-unreachable counter drop; }; }";
    ns_run(&lab.router_netns(), &["nft", rules])?;
    Ok(())
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
fn wait_for_path_mtu(
    lab: &Lab,
    on: &str,
    name: &str,
    within: Duration,
) -> Result<(PeerReport, Duration)> {
    let start = Instant::now();
    wait_for(
        &format!("{on} to show path MTU {LINK_MTU} for {name}"),
        within,
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
    let lab = across_lab("pm1")?;
    narrow_link(&lab)?;
    let (a, b) = (lab.pod("n1-p1")?, lab.pod("n2-p1")?);

    let start = Instant::now();
    tcp_transfer(&a.netns, &b.netns, b.ip, 50 << 20).context("50 MB n1-p1 -> n2-p1")?;
    let forth = start.elapsed();
    let start = Instant::now();
    tcp_transfer(&b.netns, &a.netns, a.ip, 50 << 20).context("50 MB n2-p1 -> n1-p1")?;
    let back = start.elapsed();

    let (n1, took1) = wait_for_path_mtu(&lab, "n1", "n2", LEARN_WITHIN)?;
    let (n2, took2) = wait_for_path_mtu(&lab, "n2", "n1", LEARN_WITHIN)?;
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

/// The same link behind a router whose ICMP is dropped (nftables on the router),
/// narrowed while the daemons run, after n1 confirmed the full-size path by probe: only
/// n1's probes can find it. n1 shows 1400 learned by probe within the bound, and 50 MB
/// pod to pod completes.
pub(crate) fn icmp_dropped_path_mtu_is_found_by_probes() -> Result<()> {
    let lab = across_lab("pm2")?;
    drop_router_icmp(&lab)?;
    wait_for(
        "n1 to confirm the full-size path to n2",
        LEARN_WITHIN,
        || {
            let p = peer(&lab, "n1", "n2")?;
            Ok(p.path_mtu == Some(1500) && p.path_mtu_source.as_deref() == Some("probe"))
        },
    )?;
    narrow_link(&lab)?;
    let narrowed = Instant::now();

    let (report, took) = wait_for_path_mtu(&lab, "n1", "n2", PROBES_FIND_WITHIN)?;
    ensure!(
        report.path_mtu_source.as_deref() == Some("probe"),
        "n1 learned the path MTU by {:?}, not by probes",
        report.path_mtu_source
    );
    let (a, b) = (lab.pod("n1-p1")?, lab.pod("n2-p1")?);
    let start = Instant::now();
    tcp_transfer(&a.netns, &b.netns, b.ip, 50 << 20).context("50 MB n1-p1 -> n2-p1")?;
    let counted = ns_run(
        &lab.router_netns(),
        &["nft", "list", "table", "ip", "pmtest"],
    )?;
    eprintln!(
        "probes found path MTU {:?} {took:?} after the link narrowed ({:?} with the \
         checks); 50 MB then took {:?}; router: {}",
        report.path_mtu,
        narrowed.elapsed(),
        start.elapsed(),
        counted.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    eprintln!("n1 tunnel I/O: {:?}", lab.status("n1")?.io);
    Ok(())
}
