//! `overlayd lab check`: ping between every ordered pair of pods, and which path each
//! pair's traffic takes; and every Service the cluster has, from one pod on every node:
//! connections to its VIP (which backends answered) and its DNS name.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Serialize;

use crate::lab::{Lab, LabError, Pod};
use crate::netns;

/// The path of a pair the source's `[path]` policy leaves without one: no reply expected.
const NO_PATH: &str = "none";

/// Attempts per pair before it counts as failed.
const PING_ATTEMPTS: usize = 3;

/// The result for one ordered pair of pods.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairResult {
    pub src: String,
    pub dst: String,
    /// The pair behaved as its path says: a reply came, or, on path `none`, none did.
    pub ok: bool,
    /// `bridge` (same node), else the `path` the source node's `overlayd peers` shows for
    /// the destination node (`host-gw`, `udp`, `quic`, …), `none` when the source node's
    /// `[path]` policy leaves it no path it carries (the daemon then lists no such peer
    /// and drops the pair's packets), or `unknown` if it could not be read.
    pub path: String,
    /// Round-trip time of the successful ping.
    pub rtt_ms: Option<f64>,
}

/// The pairs that take one path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PathCount {
    /// Ordered pod pairs whose traffic takes the path.
    pub pairs: usize,
    /// Of those, the ones without a reply.
    pub failed: usize,
}

/// One Service as one pod reaches it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceResult {
    /// `namespace/name`.
    pub service: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    /// The client pod.
    pub from: String,
    /// Every connection was answered by a backend.
    pub ok: bool,
    /// Connections made.
    pub connections: usize,
    /// The backend pods that answered (their greeting), each once, sorted.
    pub backends: Vec<String>,
    /// Backends the Service has.
    pub endpoints: usize,
    /// The address its DNS name resolved to inside the pod (`getent hosts`).
    pub dns: Option<Ipv4Addr>,
}

/// All pairs, in source-major order of the lab's pods, and the Services.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pods: Vec<String>,
    pub results: Vec<PairResult>,
    pub services: Vec<ServiceResult>,
}

impl Lab {
    /// Pings (`ping -c 1 -W 2`, up to 3 attempts) from every pod to every other pod's IP,
    /// all sources in parallel; a pair on path `none` passes when no reply comes. Returns `Err` only if the lab cannot be inspected; failed
    /// pings are results with `ok: false`.
    pub fn check(&self) -> Result<CheckReport, LabError> {
        let pods: Vec<&Pod> = self.pods().collect();
        let mut paths = self.peer_paths();
        for pair in self.pathless_pairs() {
            paths.entry(pair).or_insert_with(|| NO_PATH.into());
        }
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
            services: self.check_services()?,
        })
    }

    /// Every active TCP Service with a VIP, from the first pod of every node with pods.
    fn check_services(&self) -> Result<Vec<ServiceResult>, LabError> {
        let Some(asked) = self
            .nodes()
            .find(|n| n.spec().daemon && n.pid().is_some() && !n.pods().is_empty())
        else {
            return Ok(Vec::new());
        };
        let services = self.service_list(asked.name())?;
        let clients: Vec<&Pod> = self.nodes().filter_map(|n| n.pods().first()).collect();
        let domain = self.cluster_domain();
        let mut results = Vec::new();
        for info in &services {
            let s = &info.service;
            let (Some(vip), Some(port)) = (s.cluster_ip, s.ports.first()) else {
                continue;
            };
            if !s.is_active() || port.protocol != overlayd_proto::service::Protocol::Tcp {
                continue;
            }
            let name = format!("{}.{}.svc.{domain}", s.key.name, s.key.namespace);
            let connections = SERVICE_CONNECTIONS.max(3 * s.endpoints.len());
            let found: Vec<ServiceResult> = std::thread::scope(|scope| {
                let workers: Vec<_> = clients
                    .iter()
                    .map(|&client| {
                        let name = &name;
                        scope.spawn(move || {
                            let answers: Vec<Option<String>> = (0..connections)
                                .map(|_| greeting(&client.netns, vip, port.port))
                                .collect();
                            let mut backends: Vec<String> =
                                answers.iter().flatten().cloned().collect();
                            backends.sort();
                            backends.dedup();
                            ServiceResult {
                                service: s.key.to_string(),
                                vip,
                                port: port.port,
                                from: client.name.clone(),
                                ok: answers.iter().all(Option::is_some),
                                connections,
                                backends,
                                endpoints: s.endpoints.len(),
                                dns: resolve(&client.netns, name),
                            }
                        })
                    })
                    .collect();
                workers.into_iter().filter_map(|w| w.join().ok()).collect()
            });
            results.extend(found);
        }
        Ok(results)
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
        ok: rtt_ms.is_some() != (path == NO_PATH),
        path,
        rtt_ms,
    }
}

/// Connections per Service and client pod in `check`, at least (3 per endpoint if more).
const SERVICE_CONNECTIONS: usize = 8;

/// Connects from namespace `ns` to `vip:port` and reads the backend's greeting line (the
/// lab's pod server sends its pod name first).
fn greeting(ns: &str, vip: Ipv4Addr, port: u16) -> Option<String> {
    netns::try_in_netns(ns, || {
        let timeout = Duration::from_secs(3);
        let addr = std::net::SocketAddr::from((vip, port));
        let conn = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
        conn.set_read_timeout(Some(timeout)).ok()?;
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(conn), &mut line).ok()?;
        let name = line.trim_end();
        (!name.is_empty()).then(|| name.to_string())
    })
    .ok()
    .flatten()
}

/// `getent hosts NAME` in pod namespace `ns` as a user would run it there (`ip netns
/// exec`, so the pod's /etc/netns/NS/resolv.conf applies): the first address.
fn resolve(ns: &str, name: &str) -> Option<Ipv4Addr> {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, "getent", "hosts", name]);
    let output = netns::output_with_timeout(cmd, Duration::from_secs(10)).ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
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
    /// Whether every pair got a reply, and every Service answered every connection with
    /// all of its backends and resolved to its VIP.
    pub fn ok(&self) -> bool {
        self.results.iter().all(|r| r.ok) && self.services.iter().all(ServiceResult::passed)
    }

    pub fn failures(&self) -> impl Iterator<Item = &PairResult> {
        self.results.iter().filter(|r| !r.ok)
    }

    /// The result for `src -> dst`.
    pub fn pair(&self, src: &str, dst: &str) -> Option<&PairResult> {
        self.results.iter().find(|r| r.src == src && r.dst == dst)
    }

    /// Per path (`bridge`, `host-gw`, `udp`, `quic`, …, `unknown`): how many ordered pod
    /// pairs take it, and how many of those failed.
    pub fn paths(&self) -> BTreeMap<String, PathCount> {
        let mut paths = BTreeMap::<String, PathCount>::new();
        for r in &self.results {
            let count = paths.entry(r.path.clone()).or_default();
            count.pairs += 1;
            count.failed += usize::from(!r.ok);
        }
        paths
    }

    /// `paths: bridge 12, host-gw 16, quic 64 (2 FAILED), udp 40`: [`CheckReport::paths`]
    /// in one line.
    pub fn paths_text(&self) -> String {
        let parts: Vec<String> = self
            .paths()
            .iter()
            .map(|(path, c)| match c.failed {
                0 => format!("{path} {}", c.pairs),
                failed => format!("{path} {} ({failed} FAILED)", c.pairs),
            })
            .collect();
        format!("paths: {}\n", parts.join(", "))
    }

    /// `{"pairs":[{"src","dst","ok","path","rtt_ms"}, …],
    ///   "paths":{"PATH":{"pairs","failed"}, …},
    ///   "services":[{"service","vip","port","from","ok","connections","backends","endpoints","dns"}, …]}`
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&serde_json::json!({
            "pairs": self.results,
            "paths": self.paths(),
            "services": self.services,
        }))
        .expect("check results always serialize")
    }

    /// One block per Service: from each client pod, how many backends answered and what
    /// its name resolved to.
    pub fn services_text(&self) -> String {
        let mut out = String::new();
        let mut last = "";
        for r in &self.services {
            if r.service != last {
                out.push_str(&format!(
                    "service {} {}:{} ({} endpoints)\n",
                    r.service, r.vip, r.port, r.endpoints
                ));
                last = &r.service;
            }
            let dns = r.dns.map_or("FAIL".into(), |ip| ip.to_string());
            out.push_str(&format!(
                "  from {}: {} {} of {} connections, {} of {} backends ({}), DNS {dns}\n",
                r.from,
                if r.passed() { "ok" } else { "FAIL" },
                if r.ok { r.connections } else { 0 },
                r.connections,
                r.backends.len(),
                r.endpoints,
                r.backends.join(" "),
            ));
        }
        out
    }

    /// Rows are source pods, columns destination pods; a cell is the path (`bridge`,
    /// `host-gw`, `udp`, `quic`, `none`, …) or `FAIL` (no reply, or one on path `none`).
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

impl ServiceResult {
    /// Every connection answered, every backend seen, and the name resolved to the VIP.
    pub fn passed(&self) -> bool {
        self.ok && self.backends.len() == self.endpoints && self.dns == Some(self.vip)
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
            services: Vec::new(),
        };

        let matrix = report.matrix();

        assert_eq!(
            matrix,
            "src\\dst  n1-p1    n2-p1\nn1-p1    -        host-gw\nn2-p1    FAIL     -\n"
        );
        assert!(!report.ok());
        assert_eq!(report.failures().count(), 1);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["pairs"][0]["path"], "host-gw");
        assert_eq!(json["pairs"][1]["rtt_ms"], serde_json::Value::Null);
    }

    #[test]
    fn paths_are_counted_with_their_failures() {
        let report = CheckReport {
            pods: vec!["n1-p1".into(), "n1-p2".into(), "n5-p1".into()],
            results: vec![
                result("n1-p1", "n1-p2", true, "bridge"),
                result("n1-p1", "n5-p1", true, "quic"),
                result("n1-p2", "n5-p1", false, "quic"),
                result("n5-p1", "n1-p1", true, "quic"),
                result("n5-p1", "n1-p2", true, "udp"),
            ],
            services: Vec::new(),
        };

        assert_eq!(
            report.paths_text(),
            "paths: bridge 1, quic 3 (1 FAILED), udp 1\n"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["paths"]["quic"]["pairs"], 3);
        assert_eq!(json["paths"]["quic"]["failed"], 1);
        assert_eq!(json["paths"]["bridge"]["failed"], 0);
        assert!(report.matrix().contains("quic"), "{}", report.matrix());
    }

    #[test]
    fn a_pair_without_a_path_passes_without_a_reply() {
        let pods = |a: &str, b: &str| Pod {
            name: a.into(),
            node: b.into(),
            ip: "10.244.9.9".parse().unwrap(),
            netns: "ovl-none-such-namespace".into(),
        };
        let paths: HashMap<(String, String), String> =
            [(("n1".to_string(), "n3".to_string()), NO_PATH.to_string())].into();

        // No such namespace: no reply, as on a path the policy refuses.
        let r = check_pair(&pods("n1-p1", "n1"), &pods("n3-p1", "n3"), &paths);

        assert_eq!((r.path.as_str(), r.ok, r.rtt_ms), ("none", true, None));
    }

    #[test]
    fn a_service_passes_only_with_every_backend_and_its_dns_name() {
        let mut r = ServiceResult {
            service: "default/hello".into(),
            vip: "10.96.0.10".parse().unwrap(),
            port: 80,
            from: "n1-p1".into(),
            ok: true,
            connections: 8,
            backends: vec!["n1-p1".into(), "n3-p1".into()],
            endpoints: 2,
            dns: Some("10.96.0.10".parse().unwrap()),
        };
        assert!(r.passed());
        let report = CheckReport {
            pods: Vec::new(),
            results: Vec::new(),
            services: vec![r.clone()],
        };
        assert!(report.ok());
        assert_eq!(
            report.services_text(),
            "service default/hello 10.96.0.10:80 (2 endpoints)\n  from n1-p1: ok 8 of 8 \
             connections, 2 of 2 backends (n1-p1 n3-p1), DNS 10.96.0.10\n"
        );

        r.backends.pop();
        assert!(!r.passed(), "a backend never answered");
        r.backends.push("n3-p1".into());
        r.dns = None;
        assert!(!r.passed(), "the name did not resolve");
        r.dns = Some(r.vip);
        r.ok = false;
        assert!(!r.passed(), "a connection failed");
    }
}
