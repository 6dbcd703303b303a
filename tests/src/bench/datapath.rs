//! `overlayd lab bench` (suite `datapath`): every overlayd path next to its kernel
//! reference **on the same two nodes, in the same run**.
//!
//! The bench brings up a lab of its own ([`BENCH_TOPOLOGY`]), because the pairs it needs
//! do not exist in the default one: two nodes on one segment that use host-gw, and two
//! nodes on the *same* segment that tunnel. The second pair gets `[node.config.tunnel]
//! host_gw = false` (a node's own config table), so overlayd's UDP tunnel and the kernel
//! vxlan reference cross exactly the same veths and segment bridge; a fifth node across the
//! router gives the routed pairs. A third pair on segment a, n6 and n7, has `[quic]`
//! (certificates from the lab's CA) and n7 is in a zone of its own (`zone = "far"`), so
//! the default path policy carries n6–n7 over QUIC — on the same link as `udp` and
//! `kernel-vxlan`. Nodes have one pod each and nothing else runs there.
//!
//! | path | between | what carries it |
//! |---|---|---|
//! | `kernel-hostgw` | n1 → n2 (segment a) | reference pods, plain kernel routes via the peer's underlay |
//! | `hostgw` | n1-p1 → n2-p1 | overlayd host-gw routes |
//! | `kernel-vxlan` | n3 → n4 (segment a) | reference pods, Linux vxlan devices |
//! | `udp` | n3-p1 → n4-p1 | overlayd's VXLAN/UDP tunnel (host-gw off on n3 and n4) |
//! | `quic` | n6-p1 → n7-p1 (segment a) | overlayd's QUIC tunnel (n6, n7 in two zones, both with `[quic]`); ratio against `kernel-vxlan` |
//! | `kernel-hostgw-routed` | n1 → n5 (segment b) | reference pods, kernel routes through the router |
//! | `kernel-vxlan-routed` | n1 → n5 | reference pods, Linux vxlan devices through the router |
//! | `udp-routed` | n1-p1 → n5-p1 | overlayd's tunnel through the router |
//!
//! There is no `hostgw-routed`: host-gw needs the peer on-link, so across the router
//! overlayd always tunnels. `kernel-hostgw-routed` is plain routing through the router
//! (what the traffic would cost without any encapsulation) and has no overlayd
//! counterpart; `udp-routed` is compared with `kernel-vxlan-routed`.
//!
//! The reference pods are plumbed like overlayd's (veth to a bridge holding the gateway,
//! the same pod MTU; the vxlan device has the TUN device's MTU), see [`super::reference`].
//!
//! Every repeat runs every path once, in the order above, so slow phases of a noisy
//! machine hit all paths alike; a figure is the median over the repeats. Per path and
//! repeat: `count` pings 10 ms apart (RTT: their median), iperf3 TCP with 1 and with 4
//! streams, and iperf3 UDP at a fixed offered load (loss at the receiver). For overlayd's
//! paths the CPU time (utime + stime from /proc/PID/stat) of the sending and the receiving
//! daemon is read before and after the 1-stream TCP run and divided by the bytes received.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::Serialize;

use super::measure::{self, Iperf, median};
use super::reference::{self, Reference};
use crate::lab::{Lab, LabError, LabGuard};
use crate::topology::Topology;

/// The bench's own lab: n1, n2 on segment a use host-gw between them; n3, n4 on segment a
/// tunnel (host-gw off); n5 on segment b is across the router; n6, n7 on segment a have
/// `[quic]` and two zones, so they use QUIC.
pub const BENCH_TOPOLOGY: &str = r#"
# overlayd lab bench: same-link pairs n1-n2 (host-gw), n3-n4 (tunnel) and n6-n7 (QUIC:
# two zones, both with [quic]), routed n1-n5.
[[segment]]
name = "a"
subnet = "10.100.1.0/24"

[[segment]]
name = "b"
subnet = "10.100.2.0/24"

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
[node.config.tunnel]
host_gw = false

[[node]]
name = "n4"
segment = "a"
pods = 1
[node.config.tunnel]
host_gw = false

[[node]]
name = "n5"
segment = "b"
pods = 1

[[node]]
name = "n6"
segment = "a"
pods = 1
quic = true

[[node]]
name = "n7"
segment = "a"
pods = 1
quic = true
zone = "far"
"#;

/// TCP port of the iperf3 servers.
const IPERF_PORT: u16 = 5299;

/// What to measure and how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// Runs of every path; figures are medians over them.
    pub repeat: u32,
    /// Offered load of the UDP run (iperf3 `-b`, e.g. `1G`).
    pub udp_rate: String,
    /// UDP payload bytes per datagram; fits every path's MTU (the tunnel's is 1450).
    pub udp_len: u32,
    /// Pings per path and repeat.
    pub pings: u32,
    /// `[tunnel]` switches set on every node (`offload`, `udp_gso`, `udp_gro`), for A/B
    /// runs of each technique; empty: the daemon's defaults.
    pub tunnel: Vec<(String, bool)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seconds: 5,
            repeat: 3,
            udp_rate: "1G".into(),
            udp_len: 1400,
            pings: 50,
            tunnel: Vec::new(),
        }
    }
}

/// One path's figures: medians over the repeats, and every repeat's own.
#[derive(Debug, Clone, Serialize)]
pub struct PathReport {
    pub name: String,
    /// `kernel` (a reference) or `overlayd`.
    pub kind: &'static str,
    /// Source and destination namespace and address.
    pub src: String,
    pub dst: String,
    /// The path `ratio` divides by.
    pub reference: Option<String>,
    /// iperf3 TCP, 1 stream, Gbit/s at the receiver.
    pub gbps_1: Option<f64>,
    /// iperf3 TCP, 4 streams.
    pub gbps_4: Option<f64>,
    /// UDP at the offered load: fraction of datagrams lost (0..1).
    pub udp_loss: Option<f64>,
    /// UDP at the offered load: Gbit/s at the receiver.
    pub udp_gbps: Option<f64>,
    /// UDP: Gbit/s the sender managed to offer (below `udp_rate` when it ran out of CPU).
    pub udp_sent_gbps: Option<f64>,
    /// Median ping RTT, ms.
    pub rtt_ms: Option<f64>,
    /// CPU seconds of the sending + receiving daemon per GB (1e9 bytes) received in the
    /// 1-stream TCP run; `None` for kernel paths.
    pub cpu_s_per_gb: Option<f64>,
    /// `gbps_1` / the reference's `gbps_1`.
    pub ratio: Option<f64>,
    /// `gbps_4` / the reference's `gbps_4`.
    pub ratio_4: Option<f64>,
    pub runs: Vec<Sample>,
}

/// One repeat of one path.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub gbps_1: f64,
    pub gbps_4: f64,
    pub udp_loss: f64,
    pub udp_gbps: f64,
    pub udp_sent_gbps: f64,
    pub rtt_ms: f64,
    pub cpu_s_per_gb: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub suite: &'static str,
    pub seconds: u32,
    pub repeat: u32,
    pub udp_rate: String,
    pub udp_len: u32,
    pub pings: u32,
    /// The `[tunnel]` switches of the run (`KEY=true|false`), if any.
    pub tunnel: Vec<String>,
    pub paths: Vec<PathReport>,
}

/// Brings up lab `name` with [`BENCH_TOPOLOGY`], runs the bench and tears the lab down
/// (unless `keep`). `log` gets one line per step.
pub fn run(
    name: &str,
    overlayd_bin: &Path,
    options: &Options,
    keep: bool,
    log: &mut dyn FnMut(&str),
) -> Result<Report, LabError> {
    let mut text = BENCH_TOPOLOGY.to_owned();
    if !options.tunnel.is_empty() {
        text.push_str("\n[config.tunnel]\n");
        for (key, value) in &options.tunnel {
            text.push_str(&format!("{key} = {value}\n"));
        }
    }
    let topology = Topology::parse(&text)
        .map_err(|e| LabError::Bench(format!("the bench topology with --tunnel switches: {e}")))?;
    log(&format!(
        "bringing up lab {name:?} ({} nodes, one pod each)",
        topology.nodes().len()
    ));
    let lab = Lab::up(name, &topology, overlayd_bin)?;
    let result = measure_lab(&lab, options, log);
    finish(lab, keep, log);
    result
}

/// Keeps or drops (tears down) the bench's lab.
pub(super) fn finish(lab: LabGuard, keep: bool, log: &mut dyn FnMut(&str)) {
    if keep {
        let lab = lab.keep();
        log(&format!(
            "lab {:?} kept; remove it with `overlayd lab down --name {}`",
            lab.name(),
            lab.name()
        ));
    } else {
        log(&format!("tearing down lab {:?}", lab.name()));
        drop(lab);
    }
}

/// A path to measure.
struct PathDef {
    name: &'static str,
    src_ns: String,
    dst_ns: String,
    dst: Ipv4Addr,
    /// The sending and receiving daemons (overlayd paths).
    daemons: Option<[u32; 2]>,
    reference: Option<&'static str>,
}

fn measure_lab(lab: &Lab, o: &Options, log: &mut dyn FnMut(&str)) -> Result<Report, LabError> {
    expect_path(lab, "n1", "n2", "host-gw")?;
    expect_path(lab, "n3", "n4", "udp")?;
    expect_path(lab, "n1", "n5", "udp")?;
    expect_path(lab, "n6", "n7", "quic")?;
    let status = lab.status("n1")?;
    let mtus = reference::Mtus {
        pod: status.pod_mtu,
        tunnel: status.tunnel_mtu,
    };
    let router = lab.router_netns();
    let node = |n: &str| lab.node(n);
    log("building the kernel references");
    let refs = [
        Reference::build(
            1,
            reference::Kind::Routes,
            &node("n1")?,
            &node("n2")?,
            &router,
            mtus,
        )?,
        Reference::build(
            2,
            reference::Kind::Vxlan,
            &node("n3")?,
            &node("n4")?,
            &router,
            mtus,
        )?,
        Reference::build(
            3,
            reference::Kind::Routes,
            &node("n1")?,
            &node("n5")?,
            &router,
            mtus,
        )?,
        Reference::build(
            4,
            reference::Kind::Vxlan,
            &node("n1")?,
            &node("n5")?,
            &router,
            mtus,
        )?,
    ];
    let kernel = |name: &'static str, r: &Reference| PathDef {
        name,
        src_ns: r.src_ns().into(),
        dst_ns: r.dst_ns().into(),
        dst: r.dst_ip(),
        daemons: None,
        reference: None,
    };
    let overlayd = |name: &'static str, src: &str, dst: &str, reference: &'static str| {
        let (sp, dp) = (
            lab.pod(&format!("{src}-p1"))?,
            lab.pod(&format!("{dst}-p1"))?,
        );
        let pid = |n: &str| {
            lab.node(n)?
                .pid()
                .ok_or_else(|| LabError::NotRunning { node: n.into() })
        };
        Ok::<_, LabError>(PathDef {
            name,
            src_ns: sp.netns.clone(),
            dst_ns: dp.netns.clone(),
            dst: dp.ip,
            daemons: Some([pid(src)?, pid(dst)?]),
            reference: Some(reference),
        })
    };
    let paths = [
        kernel("kernel-hostgw", &refs[0]),
        overlayd("hostgw", "n1", "n2", "kernel-hostgw")?,
        kernel("kernel-vxlan", &refs[1]),
        overlayd("udp", "n3", "n4", "kernel-vxlan")?,
        overlayd("quic", "n6", "n7", "kernel-vxlan")?,
        kernel("kernel-hostgw-routed", &refs[2]),
        kernel("kernel-vxlan-routed", &refs[3]),
        overlayd("udp-routed", "n1", "n5", "kernel-vxlan-routed")?,
    ];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); paths.len()];
    for r in 1..=o.repeat {
        for (path, runs) in paths.iter().zip(&mut samples) {
            log(&format!("repeat {r}/{}: {}", o.repeat, path.name));
            runs.push(measure_path(path, o)?);
        }
    }
    drop(refs);
    let mut reports: Vec<PathReport> = paths
        .iter()
        .zip(samples)
        .map(|(p, runs)| summarize(p, runs))
        .collect();
    let by_name: Vec<(String, Option<f64>, Option<f64>)> = reports
        .iter()
        .map(|r| (r.name.clone(), r.gbps_1, r.gbps_4))
        .collect();
    for report in &mut reports {
        let Some(reference) = &report.reference else {
            continue;
        };
        if let Some((_, g1, g4)) = by_name.iter().find(|(n, _, _)| n == reference) {
            report.ratio = ratio(report.gbps_1, *g1);
            report.ratio_4 = ratio(report.gbps_4, *g4);
        }
    }
    Ok(Report {
        suite: "datapath",
        seconds: o.seconds,
        repeat: o.repeat,
        udp_rate: o.udp_rate.clone(),
        udp_len: o.udp_len,
        pings: o.pings,
        tunnel: o.tunnel.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        paths: reports,
    })
}

pub(super) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Fails unless `a`'s daemon reaches `b` by `path` and `b`'s reaches `a` by it too.
fn expect_path(lab: &Lab, a: &str, b: &str, path: &str) -> Result<(), LabError> {
    for (from, to) in [(a, b), (b, a)] {
        let peers = lab.peers(from)?;
        let got = peers.iter().find(|p| p.name == to).map(|p| p.path.as_str());
        if got != Some(path) {
            return Err(LabError::Bench(format!(
                "{from} reaches {to} by {got:?}, but the bench needs {path:?}"
            )));
        }
    }
    Ok(())
}

fn measure_path(p: &PathDef, o: &Options) -> Result<Sample, LabError> {
    let iperf = Iperf {
        client_ns: &p.src_ns,
        server_ns: &p.dst_ns,
        dst: p.dst,
        port: IPERF_PORT,
        seconds: o.seconds,
    };
    let rtts = measure::ping_rtts(&p.src_ns, p.dst, o.pings)?;
    let cpu = |pids: &[u32; 2]| -> Result<f64, LabError> {
        pids.iter()
            .map(|&pid| {
                measure::cpu_seconds(pid)
                    .ok_or_else(|| LabError::Bench(format!("cannot read /proc/{pid}/stat")))
            })
            .sum()
    };
    let before = p.daemons.as_ref().map(cpu).transpose()?;
    let tcp1 = iperf.tcp(1)?;
    let after = p.daemons.as_ref().map(cpu).transpose()?;
    let tcp4 = iperf.tcp(4)?;
    let udp = iperf.udp(&o.udp_rate, o.udp_len)?;
    let cpu_s_per_gb = match (before, after) {
        (Some(b), Some(a)) if tcp1.bytes > 0 => Some((a - b) / (tcp1.bytes as f64 / 1e9)),
        _ => None,
    };
    Ok(Sample {
        gbps_1: tcp1.gbps,
        gbps_4: tcp4.gbps,
        udp_loss: udp.loss,
        udp_gbps: udp.gbps,
        udp_sent_gbps: udp.sent_gbps,
        rtt_ms: median(&rtts).unwrap_or(f64::NAN),
        cpu_s_per_gb,
    })
}

fn summarize(p: &PathDef, runs: Vec<Sample>) -> PathReport {
    let m = |f: fn(&Sample) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let cpu: Vec<f64> = runs.iter().filter_map(|s| s.cpu_s_per_gb).collect();
    PathReport {
        name: p.name.into(),
        kind: if p.daemons.is_some() {
            "overlayd"
        } else {
            "kernel"
        },
        src: p.src_ns.clone(),
        dst: format!("{} in {}", p.dst, p.dst_ns),
        reference: p.reference.map(String::from),
        gbps_1: m(|s| s.gbps_1),
        gbps_4: m(|s| s.gbps_4),
        udp_loss: m(|s| s.udp_loss),
        udp_gbps: m(|s| s.udp_gbps),
        udp_sent_gbps: m(|s| s.udp_sent_gbps),
        rtt_ms: m(|s| s.rtt_ms),
        cpu_s_per_gb: median(&cpu),
        ratio: None,
        ratio_4: None,
        runs,
    }
}

pub(super) fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.digits$}"))
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<22} {:>7} {:>7} {:>7} {:>8} {:>11} {:>8} {:>6} {:>7}  {}\n",
            "PATH",
            "GBPS_1",
            "GBPS_4",
            "RTT_MS",
            "UDP_LOSS",
            "UDP_RX/TX",
            "CPU_S/GB",
            "RATIO",
            "RATIO_4",
            "REFERENCE"
        );
        for p in &self.paths {
            let _ = writeln!(
                out,
                "{:<22} {:>7} {:>7} {:>7} {:>8} {:>11} {:>8} {:>6} {:>7}  {}",
                p.name,
                num(p.gbps_1, 2),
                num(p.gbps_4, 2),
                num(p.rtt_ms, 3),
                p.udp_loss
                    .map_or_else(|| "n/a".into(), |l| format!("{:.1}%", l * 100.0)),
                format!("{}/{}", num(p.udp_gbps, 2), num(p.udp_sent_gbps, 2)),
                num(p.cpu_s_per_gb, 2),
                num(p.ratio, 2),
                num(p.ratio_4, 2),
                p.reference.as_deref().unwrap_or("-"),
            );
        }
        let _ = writeln!(
            out,
            "(medians of {} repeats; iperf3 -t {} per run, Gbit/s at the receiver; RTT: median \
             of {} pings 10 ms apart; UDP: {}-byte datagrams offered at {}bit/s, loss and \
             Gbit/s received/sent; CPU: sending + receiving daemon per GB in the 1-stream run; \
             RATIO(_4): GBPS_1 (GBPS_4) / the reference's)",
            self.repeat, self.seconds, self.pings, self.udp_len, self.udp_rate
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_topology_has_a_tunnelling_pair_on_one_segment() {
        let topo = Topology::parse(BENCH_TOPOLOGY).unwrap();
        let config = |n: &str| {
            crate::config::node_config(&topo, topo.node(n).unwrap(), "b")
                .unwrap()
                .tunnel
                .host_gw
        };
        assert_eq!(
            ["n1", "n2", "n3", "n4", "n5"].map(config),
            [true, true, false, false, true]
        );
        let seg = |n: &str| topo.node(n).unwrap().segment.clone();
        assert_eq!([seg("n1"), seg("n3"), seg("n4")], ["a", "a", "a"]);
        assert_eq!(seg("n5"), "b");
    }

    #[test]
    fn the_quic_pair_shares_the_link_but_not_the_zone() {
        let topo = Topology::parse(BENCH_TOPOLOGY).unwrap();
        let config =
            |n: &str| crate::config::node_config(&topo, topo.node(n).unwrap(), "b").unwrap();
        let (n6, n7) = (config("n6"), config("n7"));
        let seg = |n: &str| topo.node(n).unwrap().segment.clone();
        assert_eq!([seg("n3"), seg("n6"), seg("n7")], ["a", "a", "a"]);
        assert_eq!(
            (n6.node.zone.as_str(), n7.node.zone.as_str()),
            ("default", "far")
        );
        assert!(n6.quic.is_some() && n7.quic.is_some());
        assert!(
            ["n1", "n2", "n3", "n4", "n5"]
                .iter()
                .all(|n| config(n).quic.is_none() && config(n).node.zone == "default"),
            "the other pairs keep their paths"
        );
    }

    #[test]
    fn table_shows_na_for_missing_figures_and_percent_loss() {
        let path = |name: &str, cpu: Option<f64>| PathReport {
            name: name.into(),
            kind: "kernel",
            src: "a".into(),
            dst: "b".into(),
            reference: None,
            gbps_1: Some(1.5),
            gbps_4: Some(2.0),
            udp_loss: Some(0.125),
            udp_gbps: Some(0.9),
            udp_sent_gbps: Some(1.0),
            rtt_ms: Some(0.05),
            cpu_s_per_gb: cpu,
            ratio: None,
            ratio_4: None,
            runs: Vec::new(),
        };
        let report = Report {
            suite: "datapath",
            seconds: 5,
            repeat: 3,
            udp_rate: "1G".into(),
            udp_len: 1400,
            pings: 50,
            tunnel: Vec::new(),
            paths: vec![path("kernel-vxlan", None), path("udp", Some(3.25))],
        };
        let table = report.table();
        assert!(
            table.contains("12.5%") && table.contains("0.90/1.00"),
            "{table}"
        );
        assert!(table.lines().nth(1).unwrap().contains("n/a"), "{table}");
        assert!(table.lines().nth(2).unwrap().contains("3.25"), "{table}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["paths"][1]["cpu_s_per_gb"], 3.25);
        assert_eq!(json["paths"][0]["cpu_s_per_gb"], serde_json::Value::Null);
        assert!(json["paths"][0]["gbps_1"].is_number());
    }

    #[test]
    fn ratio_needs_both_figures_and_a_positive_reference() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }
}
