//! `overlayd lab bench`: pod-to-pod TCP throughput (iperf3) and ping RTT over host-gw and
//! over overlayd's VXLAN/UDP tunnel, each next to its kernel reference measured in the
//! same run on the same namespaces:
//!
//! - host-gw against the underlay itself (node to node on one segment);
//! - overlayd's tunnel against a Linux kernel vxlan device between the same two nodes,
//!   carrying traffic between two reference "pods" (namespaces routed through the nodes)
//!   with the same MTU as overlayd's pods.
//!
//! The reference plumbing uses addresses outside the cluster CIDR (10.254.0.0/16), a VNI
//! and port of its own, and is removed when the bench ends, also on failure.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::Child;
use std::time::Duration;

use serde::Serialize;

use crate::lab::{Lab, LabError};
use crate::netns;

/// VNI and UDP port of the kernel reference tunnel (overlayd's own stay on 1 and 8472).
const REF_VNI: &str = "4242";
const REF_PORT: &str = "4790";
const IPERF_PORT: u16 = 5299;

/// One measured path.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub path: String,
    pub src: String,
    pub dst: String,
    /// iperf3 TCP throughput at the receiver, Mbit/s.
    pub mbit_s: f64,
    /// Average ping RTT, ms.
    pub rtt_ms: f64,
    /// For overlayd's paths: throughput divided by its kernel reference's.
    pub ratio_to_reference: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub seconds: u32,
    pub rows: Vec<BenchRow>,
}

impl BenchReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<34} {:>12} {:>10} {:>14}\n",
            "PATH", "TCP Mbit/s", "RTT ms", "vs REFERENCE"
        );
        for r in &self.rows {
            let ratio = r
                .ratio_to_reference
                .map_or(String::from("(reference)"), |x| format!("{:.2}x", x));
            let _ = writeln!(
                out,
                "{:<34} {:>12.0} {:>10.3} {:>14}",
                r.path, r.mbit_s, r.rtt_ms, ratio
            );
        }
        let _ = writeln!(
            out,
            "(iperf3 -t {} per path; RTT: average of 20 pings)",
            self.seconds
        );
        out
    }
}

/// Runs the bench on a lab that is up. Needs two daemon nodes on one segment and one on
/// another, each with at least one pod (the default topology has them).
pub fn bench(lab: &Lab, seconds: u32) -> Result<BenchReport, LabError> {
    let plan = Plan::find(lab)?;
    let reference = KernelVxlan::build(lab, &plan)?;
    let result = measure(lab, &plan, &reference, seconds);
    reference.remove();
    result
}

/// Which nodes and pods the bench uses.
struct Plan {
    /// (node, its first pod) for: the source, a same-segment peer, an other-segment peer.
    src: (String, String),
    near: (String, String),
    far: (String, String),
}

impl Plan {
    fn find(lab: &Lab) -> Result<Plan, LabError> {
        let candidates: Vec<_> = lab
            .nodes()
            .filter(|n| !n.pods().is_empty() && n.pid().is_some())
            .map(|n| {
                (
                    n.name().to_string(),
                    n.segment().name.clone(),
                    n.pods()[0].name.clone(),
                )
            })
            .collect();
        for (sn, sseg, spod) in &candidates {
            let near = candidates.iter().find(|(n, seg, _)| n != sn && seg == sseg);
            let far = candidates.iter().find(|(_, seg, _)| seg != sseg);
            if let (Some(near), Some(far)) = (near, far) {
                return Ok(Plan {
                    src: (sn.clone(), spod.clone()),
                    near: (near.0.clone(), near.2.clone()),
                    far: (far.0.clone(), far.2.clone()),
                });
            }
        }
        Err(LabError::Bench(
            "needs two running nodes with pods on one segment and one on another (the default topology has them)".into(),
        ))
    }
}

fn measure(
    lab: &Lab,
    plan: &Plan,
    reference: &KernelVxlan,
    seconds: u32,
) -> Result<BenchReport, LabError> {
    let ns = |node: &str| lab.node(node).map(|n| n.netns());
    let pod = |name: &str| lab.pod(name).cloned();
    let (src_node, src_pod) = (&plan.src.0, pod(&plan.src.1)?);
    let near_pod = pod(&plan.near.1)?;
    let far_pod = pod(&plan.far.1)?;

    let underlay = run_path(
        "underlay node-to-node (kernel)",
        &ns(src_node)?,
        &ns(&plan.near.0)?,
        lab.node(&plan.near.0)?.underlay(),
        seconds,
    )?;
    let host_gw = run_path(
        "host-gw pod-to-pod (overlayd)",
        &src_pod.netns,
        &near_pod.netns,
        near_pod.ip,
        seconds,
    )?;
    let vxlan = run_path(
        "vxlan pod-to-pod (kernel vxlan)",
        &reference.src_pod,
        &reference.dst_pod,
        reference.dst_ip,
        seconds,
    )?;
    let udp = run_path(
        "udp pod-to-pod (overlayd)",
        &src_pod.netns,
        &far_pod.netns,
        far_pod.ip,
        seconds,
    )?;
    let ratio = |a: &BenchRow, b: &BenchRow| (b.mbit_s > 0.0).then(|| a.mbit_s / b.mbit_s);
    let host_gw = BenchRow {
        ratio_to_reference: ratio(&host_gw, &underlay),
        ..host_gw
    };
    let udp = BenchRow {
        ratio_to_reference: ratio(&udp, &vxlan),
        ..udp
    };
    Ok(BenchReport {
        seconds,
        rows: vec![underlay, host_gw, vxlan, udp],
    })
}

fn run_path(
    path: &str,
    src_ns: &str,
    dst_ns: &str,
    dst: Ipv4Addr,
    seconds: u32,
) -> Result<BenchRow, LabError> {
    let rtt_ms = ping_avg(src_ns, dst)?;
    let mbit_s = iperf3(src_ns, dst_ns, dst, seconds)?;
    Ok(BenchRow {
        path: path.into(),
        src: src_ns.into(),
        dst: format!("{dst} in {dst_ns}"),
        mbit_s,
        rtt_ms,
        ratio_to_reference: None,
    })
}

fn ping_avg(ns: &str, dst: Ipv4Addr) -> Result<f64, LabError> {
    let out = netns::run_in(
        ns,
        &[
            "ping",
            "-q",
            "-c",
            "20",
            "-i",
            "0.05",
            "-W",
            "2",
            &dst.to_string(),
        ],
    )?;
    // rtt min/avg/max/mdev = 0.041/0.058/0.099/0.013 ms
    out.lines()
        .find_map(|l| {
            l.split_once(" = ")
                .filter(|(k, _)| k.starts_with("rtt"))
                .map(|(_, v)| v.to_string())
        })
        .and_then(|v| v.split('/').nth(1).and_then(|avg| avg.parse().ok()))
        .ok_or_else(|| LabError::Bench(format!("no RTT in ping output from {ns} to {dst}:\n{out}")))
}

fn iperf3(src_ns: &str, dst_ns: &str, dst: Ipv4Addr, seconds: u32) -> Result<f64, LabError> {
    let port = IPERF_PORT.to_string();
    // One-off server (`-1`): it exits after the test; the guard kills it if we fail first.
    let _server = ChildGuard(netns::spawn_in(
        dst_ns,
        "iperf3",
        &["-s", "-1", "-p", &port],
    )?);
    for _ in 0..20 {
        // iperf3 does not retry a refused connection while the server starts listening.
        std::thread::sleep(Duration::from_millis(150));
        let mut cmd = netns::command(src_ns, "iperf3")?;
        cmd.args([
            "-c",
            &dst.to_string(),
            "-p",
            &port,
            "-t",
            &seconds.to_string(),
            "-J",
        ]);
        let out = netns::output_with_timeout(cmd, Duration::from_secs(u64::from(seconds) + 20))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.contains("Connection refused") {
            return parse_iperf3(&text);
        }
    }
    Err(LabError::Bench(format!(
        "the iperf3 server in {dst_ns} never accepted a connection"
    )))
}

fn parse_iperf3(json: &str) -> Result<f64, LabError> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| LabError::Bench(format!("iperf3 -J output is not JSON: {e}")))?;
    if let Some(err) = v["error"].as_str() {
        return Err(LabError::Bench(format!("iperf3: {err}")));
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e6)
        .ok_or_else(|| LabError::Bench("iperf3 reported no received throughput".into()))
}

/// Kills the child when dropped (an iperf3 server left behind by a failed run).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The kernel reference: a vxlan device in each of two nodes and a reference pod behind
/// each, routed (like Flannel's vxlan backend: onlink route via the peer's VTEP address,
/// permanent neighbour, FDB entry).
struct KernelVxlan {
    lab_nodes: [String; 2],
    src_pod: String,
    dst_pod: String,
    dst_ip: Ipv4Addr,
}

impl KernelVxlan {
    fn build(lab: &Lab, plan: &Plan) -> Result<KernelVxlan, LabError> {
        let a = lab.node(&plan.src.0)?;
        let b = lab.node(&plan.far.0)?;
        let me = KernelVxlan {
            lab_nodes: [a.netns(), b.netns()],
            src_pod: format!("{}-bench-ref1", a.netns()),
            dst_pod: format!("{}-bench-ref2", b.netns()),
            dst_ip: Ipv4Addr::new(10, 254, 2, 2),
        };
        let ends = [
            (a.netns(), a.underlay(), b.underlay(), 1u8),
            (b.netns(), b.underlay(), a.underlay(), 2u8),
        ];
        let built = ends.iter().try_for_each(|(node, local, remote, i)| {
            let other = 3 - i;
            let mac = format!("0e:00:00:fe:00:{i:02x}");
            let other_mac = format!("0e:00:00:fe:00:{other:02x}");
            let pod = if *i == 1 { &me.src_pod } else { &me.dst_pod };
            let n = |args: &[&str]| netns::run_in(node, args).map(drop);
            n(&[
                "ip",
                "link",
                "add",
                "ovbx0",
                "type",
                "vxlan",
                "id",
                REF_VNI,
                "local",
                &local.to_string(),
                "dev",
                "eth0",
                "dstport",
                REF_PORT,
                "nolearning",
            ])?;
            n(&[
                "ip", "link", "set", "ovbx0", "address", &mac, "mtu", "1450", "up",
            ])?;
            n(&[
                "ip",
                "addr",
                "add",
                &format!("10.254.0.{i}/32"),
                "dev",
                "ovbx0",
            ])?;
            n(&[
                "ip",
                "neigh",
                "replace",
                &format!("10.254.0.{other}"),
                "lladdr",
                &other_mac,
                "dev",
                "ovbx0",
                "nud",
                "permanent",
            ])?;
            n(&[
                "bridge",
                "fdb",
                "append",
                &other_mac,
                "dev",
                "ovbx0",
                "dst",
                &remote.to_string(),
            ])?;
            n(&[
                "ip",
                "route",
                "add",
                &format!("10.254.{other}.0/24"),
                "via",
                &format!("10.254.0.{other}"),
                "dev",
                "ovbx0",
                "onlink",
            ])?;
            netns::add(pod)?;
            n(&[
                "ip", "link", "add", "ovbr0", "type", "veth", "peer", "name", "eth0", "netns", pod,
            ])?;
            n(&[
                "ip",
                "addr",
                "add",
                &format!("10.254.{i}.1/24"),
                "dev",
                "ovbr0",
            ])?;
            n(&["ip", "link", "set", "ovbr0", "up"])?;
            let p = |args: &[&str]| netns::run_in(pod, args).map(drop);
            p(&["ip", "link", "set", "lo", "up"])?;
            p(&[
                "ip",
                "addr",
                "add",
                &format!("10.254.{i}.2/24"),
                "dev",
                "eth0",
            ])?;
            p(&["ip", "link", "set", "eth0", "up"])?;
            p(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.254.{i}.1"),
            ])
        });
        match built {
            Ok(()) => Ok(me),
            Err(e) => {
                me.remove();
                Err(e.into())
            }
        }
    }

    /// Removes the reference devices and namespaces; best effort, idempotent.
    fn remove(&self) {
        for node in &self.lab_nodes {
            let _ = netns::run_in(node, &["ip", "link", "del", "ovbx0"]);
            let _ = netns::run_in(node, &["ip", "link", "del", "ovbr0"]);
        }
        let _ = netns::delete(&self.src_pod);
        let _ = netns::delete(&self.dst_pod);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iperf3_json() {
        let json = r#"{"end":{"sum_received":{"bits_per_second":2.5e9}}}"#;
        assert!((parse_iperf3(json).unwrap() - 2500.0).abs() < 1e-6);
        assert!(parse_iperf3(r#"{"error":"unable to connect"}"#).is_err());
        assert!(parse_iperf3("not json").is_err());
    }
}
