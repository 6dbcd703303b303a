//! The relay rung of the path ladder (issue 8, item 4): when the router cuts two segments
//! apart while a third reaches both, the pairs across the cut move onto a relay through
//! the third and come back after the heal.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use overlayd_lab::{Lab, THREE_SEGMENTS_TOPOLOGY, Topology};

use crate::quic::{wait_for_paths, wait_for_paths_within};
use crate::support::{lab, ns_cmd, tcp_transfer, wait_for};

/// How much the test moves over the relay, byte-checked.
const TRANSFER: usize = 20 << 20;

/// Waits until `on`'s ladder for `peer` has a relay rung through `relay` that is up.
fn wait_for_relay_rung(lab: &Lab, on: &str, peer: &str, relay: &str) -> Result<()> {
    wait_for(
        &format!("{on}'s relay rung to {peer} through {relay} up"),
        Duration::from_secs(20),
        || {
            let peers = lab.peers(on)?;
            let Some(ladder) = peers
                .iter()
                .find(|p| p.name == peer)
                .and_then(|p| p.ladder.as_ref())
            else {
                return Ok(false);
            };
            Ok(ladder.relay.as_deref() == Some(relay)
                && ladder
                    .rungs
                    .iter()
                    .any(|r| r.path == "relay" && r.health == "up"))
        },
    )
}

/// The largest gap between two successive ping replies (`ping -D` timestamps), and the
/// summary line.
fn largest_reply_gap(out: &std::process::Output) -> Result<(Duration, String)> {
    let text = String::from_utf8_lossy(&out.stdout);
    let stamps: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    ensure!(stamps.len() > 10, "too few ping replies:\n{text}");
    let gap = stamps
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0f64, f64::max);
    let (_, stats) = crate::support::ping_stats(out)?;
    Ok((Duration::from_secs_f64(gap), stats))
}

/// Segments a, b, c (n1, n2, n3), one router. The router drops a↔b only: gossip keeps
/// every member alive through n3, and the a–b pair must not stay black-holed. A pod on n1
/// pings a pod on n2 100 times a second throughout. Within 3 s of the cut both ends show
/// the path `relay` (through n3, the only member that reaches both) and the pings resume
/// (the largest gap between replies is under 3 s); 20 MB of TCP from a 1500-MTU pod go
/// over the relay byte-identical both ways, and n3 counts the frames it forwarded. After
/// the heal both ends return to udp once the direct path has served its hysteresis.
pub(crate) fn a_cut_pair_moves_onto_a_relay_and_back_after_the_heal() -> Result<()> {
    let lab = lab("rl", &Topology::parse(THREE_SEGMENTS_TOPOLOGY)?)?;
    for (on, others) in [
        ("n1", ["n2", "n3"]),
        ("n2", ["n1", "n3"]),
        ("n3", ["n1", "n2"]),
    ] {
        wait_for_paths(&lab, on, &[(others[0], "udp"), (others[1], "udp")])?;
    }
    // The relay rung is probed all along, so it is up before it is needed.
    wait_for_relay_rung(&lab, "n1", "n2", "n3")?;
    wait_for_relay_rung(&lab, "n2", "n1", "n3")?;
    let (a, b) = (lab.pod("n1-p1")?.clone(), lab.pod("n2-p1")?.clone());
    let forwarded_before = lab.status("n3")?.io.get("relay_forwarded").copied();

    let pinger = {
        let (ns, dst) = (a.netns.clone(), b.ip.to_string());
        std::thread::spawn(move || {
            ns_cmd(
                &ns,
                &["ping", "-D", "-i", "0.01", "-w", "40", "-W", "1", &dst],
            )
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    lab.partition("a", "b")?;
    let cut = Instant::now();
    wait_for_paths_within(&lab, "n1", &[("n2", "relay")], Duration::from_secs(5))
        .context("n1 onto the relay")?;
    let n1_moved = cut.elapsed();
    wait_for_paths_within(&lab, "n2", &[("n1", "relay")], Duration::from_secs(5))
        .context("n2 onto the relay")?;
    let n2_moved = cut.elapsed();
    ensure!(
        n1_moved <= Duration::from_secs(3) && n2_moved <= Duration::from_secs(3),
        "onto the relay after {n1_moved:?} (n1) and {n2_moved:?} (n2), not within 3 s"
    );
    // What a user checks: the path, why, and through whom.
    let report = lab
        .peers("n1")?
        .into_iter()
        .find(|p| p.name == "n2")
        .context("n1 has no peer n2")?;
    let ladder = report.ladder.context("no ladder in n1's report of n2")?;
    ensure!(
        ladder.reason == "probe" && ladder.relay.as_deref() == Some("n3"),
        "n1's ladder for n2: {ladder:?}"
    );
    let table = String::from_utf8_lossy(&lab.overlayd("n1", &["peers"])?.stdout).into_owned();
    ensure!(
        table
            .lines()
            .any(|l| l.starts_with("n2 ") && l.contains(" relay ") && l.contains("relay:up@n3")),
        "overlayd peers on n1 does not show n2 relayed through n3:\n{table}"
    );
    // The direct pair stays apart, and n3 still reaches both directly.
    for (on, peer) in [("n1", "n3"), ("n2", "n3"), ("n3", "n1"), ("n3", "n2")] {
        wait_for_paths_within(&lab, on, &[(peer, "udp")], Duration::from_secs(1))?;
    }

    let started = Instant::now();
    tcp_transfer(&a.netns, &b.netns, b.ip, TRANSFER).context("n1-p1 → n2-p1 over the relay")?;
    let there = started.elapsed();
    let started = Instant::now();
    tcp_transfer(&b.netns, &a.netns, a.ip, TRANSFER).context("n2-p1 → n1-p1 over the relay")?;
    let back = started.elapsed();
    let forwarded = lab.status("n3")?.io.get("relay_forwarded").copied();
    ensure!(
        forwarded.unwrap_or(0) > forwarded_before.unwrap_or(0) + 2 * (TRANSFER as u64 / 1500),
        "n3 forwarded {forwarded:?} frames (before {forwarded_before:?})"
    );
    let pods = [&a, &b];
    for pod in pods {
        let link = String::from_utf8_lossy(
            &ns_cmd(&pod.netns, &["ip", "-j", "link", "show", "dev", "eth0"])?.stdout,
        )
        .into_owned();
        ensure!(link.contains("\"mtu\":1500"), "{} MTU: {link}", pod.name);
    }

    lab.heal()?;
    let healed = Instant::now();
    wait_for_paths_within(&lab, "n1", &[("n2", "udp")], Duration::from_secs(25))
        .context("n1 back on udp")?;
    wait_for_paths_within(&lab, "n2", &[("n1", "udp")], Duration::from_secs(25))
        .context("n2 back on udp")?;
    let returned = healed.elapsed();
    ensure!(
        returned >= Duration::from_secs(10),
        "back on udp {returned:?} after the heal, before the 10 s hysteresis"
    );
    let out = pinger
        .join()
        .map_err(|_| anyhow::anyhow!("pinger panicked"))??;
    let (gap, stats) = largest_reply_gap(&out)?;
    eprintln!(
        "relay: n1 on the relay {n1_moved:?}, n2 {n2_moved:?} after the cut; largest gap \
         between ping replies {gap:?}; {} MB over the relay in {there:?} (n1→n2) and \
         {back:?} (n2→n1); back on udp {returned:?} after the heal; pings: {stats}",
        TRANSFER >> 20
    );
    ensure!(
        gap < Duration::from_secs(3),
        "pod traffic stopped for {gap:?} around the cut ({stats})"
    );
    Ok(())
}
