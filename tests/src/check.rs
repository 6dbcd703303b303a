//! `overlayd lab check`: ping between every ordered pair of pods, and which path each
//! pair's traffic takes.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::lab::{Lab, LabError, Pod};
use crate::netns;

/// Attempts per pair before it counts as failed.
const PING_ATTEMPTS: usize = 3;

/// The result for one ordered pair of pods.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairResult {
    pub src: String,
    pub dst: String,
    pub ok: bool,
    /// `bridge` (same node), else the `path` the source node's `overlayd peers` shows for
    /// the destination node (`host-gw`, `udp`, …), or `unknown` if it could not be read.
    pub path: String,
    /// Round-trip time of the successful ping.
    pub rtt_ms: Option<f64>,
}

/// All pairs, in source-major order of the lab's pods.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pods: Vec<String>,
    pub results: Vec<PairResult>,
}

impl Lab {
    /// Pings (`ping -c 1 -W 2`, up to 3 attempts) from every pod to every other pod's IP,
    /// all sources in parallel. Returns `Err` only if the lab cannot be inspected; failed
    /// pings are results with `ok: false`.
    pub fn check(&self) -> Result<CheckReport, LabError> {
        let pods: Vec<&Pod> = self.pods().collect();
        let paths = self.peer_paths();
        let results = std::thread::scope(|scope| {
            let workers: Vec<_> = pods
                .iter()
                .map(|&src| {
                    let pods = &pods;
                    let paths = &paths;
                    scope.spawn(move || {
                        pods.iter()
                            .filter(|dst| dst.name != src.name)
                            .map(|dst| check_pair(src, dst, paths))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        });
        Ok(CheckReport {
            pods: pods.iter().map(|p| p.name.clone()).collect(),
            results,
        })
    }

    /// `(source node, destination node) -> path` from each daemon node's `overlayd peers`.
    fn peer_paths(&self) -> HashMap<(String, String), String> {
        let mut paths = HashMap::new();
        for node in self
            .nodes()
            .filter(|n| n.spec().daemon && !n.pods().is_empty())
        {
            let Ok(peers) = self.peers(node.name()) else {
                continue;
            };
            for peer in peers {
                paths.insert((node.name().to_string(), peer.name), peer.path);
            }
        }
        paths
    }
}

fn check_pair(src: &Pod, dst: &Pod, paths: &HashMap<(String, String), String>) -> PairResult {
    let path = if src.node == dst.node {
        "bridge".to_string()
    } else {
        paths
            .get(&(src.node.clone(), dst.node.clone()))
            .cloned()
            .unwrap_or_else(|| "unknown".into())
    };
    let rtt_ms = (0..PING_ATTEMPTS).find_map(|_| ping(&src.netns, &dst.ip.to_string()));
    PairResult {
        src: src.name.clone(),
        dst: dst.name.clone(),
        ok: rtt_ms.is_some(),
        path,
        rtt_ms,
    }
}

/// One echo request from namespace `ns`; the RTT in ms if a reply came.
fn ping(ns: &str, ip: &str) -> Option<f64> {
    let mut cmd = netns::command(ns, "ping").ok()?;
    cmd.args(["-n", "-c", "1", "-W", "2", ip]);
    let output = netns::output_with_timeout(cmd, Duration::from_secs(5)).ok()?;
    if !output.status.success() {
        return None;
    }
    // A successful ping without a parsable time still counts; report 0.
    Some(parse_rtt(&String::from_utf8_lossy(&output.stdout)).unwrap_or(0.0))
}

/// The `time=0.123 ms` of a ping reply line.
fn parse_rtt(stdout: &str) -> Option<f64> {
    let rest = &stdout[stdout.find("time=")? + "time=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

impl CheckReport {
    /// Whether every pair got a reply.
    pub fn ok(&self) -> bool {
        self.results.iter().all(|r| r.ok)
    }

    pub fn failures(&self) -> impl Iterator<Item = &PairResult> {
        self.results.iter().filter(|r| !r.ok)
    }

    /// The result for `src -> dst`.
    pub fn pair(&self, src: &str, dst: &str) -> Option<&PairResult> {
        self.results.iter().find(|r| r.src == src && r.dst == dst)
    }

    /// `[{"src","dst","ok","path","rtt_ms"}, …]`
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.results).expect("check results always serialize")
    }

    /// Rows are source pods, columns destination pods; a cell is the path (`bridge`,
    /// `host-gw`, `udp`, …) or `FAIL`.
    pub fn matrix(&self) -> String {
        let corner = "src\\dst";
        let first = self
            .pods
            .iter()
            .map(String::len)
            .chain([corner.len()])
            .max()
            .unwrap_or(0);
        let cell = |src: &str, dst: &str| -> String {
            match self.pair(src, dst) {
                _ if src == dst => "-".into(),
                Some(r) if r.ok => r.path.clone(),
                Some(_) => "FAIL".into(),
                None => "?".into(),
            }
        };
        let width = self
            .pods
            .iter()
            .flat_map(|s| self.pods.iter().map(move |d| (s, d)))
            .map(|(s, d)| cell(s, d).len())
            .chain(self.pods.iter().map(String::len))
            .max()
            .unwrap_or(0);
        let mut out = format!("{corner:<first$}");
        for dst in &self.pods {
            out.push_str(&format!("  {dst:<width$}"));
        }
        out = out.trim_end().to_string();
        out.push('\n');
        for src in &self.pods {
            let mut line = format!("{src:<first$}");
            for dst in &self.pods {
                line.push_str(&format!("  {:<width$}", cell(src, dst)));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(src: &str, dst: &str, ok: bool, path: &str) -> PairResult {
        PairResult {
            src: src.into(),
            dst: dst.into(),
            ok,
            path: path.into(),
            rtt_ms: ok.then_some(0.05),
        }
    }

    #[test]
    fn parses_rtt_from_ping_output() {
        let out = "PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.\n64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.087 ms\n";
        assert_eq!(parse_rtt(out), Some(0.087));
        assert_eq!(parse_rtt("no reply"), None);
    }

    #[test]
    fn matrix_shows_paths_and_failures() {
        let report = CheckReport {
            pods: vec!["n1-p1".into(), "n2-p1".into()],
            results: vec![
                result("n1-p1", "n2-p1", true, "host-gw"),
                result("n2-p1", "n1-p1", false, "udp"),
            ],
        };

        let matrix = report.matrix();

        assert_eq!(
            matrix,
            "src\\dst  n1-p1    n2-p1\nn1-p1    -        host-gw\nn2-p1    FAIL     -\n"
        );
        assert!(!report.ok());
        assert_eq!(report.failures().count(), 1);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json[0]["path"], "host-gw");
        assert_eq!(json[1]["rtt_ms"], serde_json::Value::Null);
    }
}
