//! `overlayd lab bench services`: what a Service VIP costs, against the direct path, with
//! the same client pod, backend pod and links in one run.
//!
//! The bench brings up a lab of its own with the default topology's nodes (n1, n2 on
//! segment a, n3, n4 on b; `DEFAULT_NODES`, without the Service `hello`, so nothing but
//! the bench makes traffic or Services). The client is pod n1-p1, the backend pod n2-p1
//! (host-gw between them); iperf3's server and the pod's HTTP server (`overlayd lab
//! serve`, port 8081) run in the backend. Four ways from the client to the backend:
//!
//! | path | the client connects to | what forwards |
//! |---|---|---|
//! | `direct` | the backend pod's IP | nothing (host-gw routes) |
//! | `vip` | the Service VIP (`overlayd service add bench --backend POD`, no health checks) | the overlayd daemon's proxy on n1 |
//! | `haproxy` | 10.254.200.1, an address on n1's `lo` | HAProxy in TCP mode with `option splice-auto` in n1's namespace, one server: the backend pod (config `RUN/haproxy.cfg`, log `RUN/haproxy.log`) |
//! | `nft-dnat` | 10.254.201.1 | a DNAT in n1's prerouting, in a table of its own (`ip ovlbench`) shaped like kube-proxy's nftables mode: a `service-ips` verdict map, a service chain that picks an endpoint by `numgen`, an endpoint chain with the hairpin masquerade mark and the `dnat` |
//!
//! Per path and repeat (every repeat runs every path once, in that order): iperf3 TCP with
//! one stream (Gbit/s at the receiver), and wrk with `Connection: close` against port 8081
//! for new short connections per second and their p50/p99 latency. wrk times a request
//! from its write to the response, so the latency leaves the TCP handshake out; the
//! connection rate includes it. Figures are medians over the repeats; ratios are against
//! `direct` (for latency the ratio is the path's over `direct`'s: above 1 is slower).
//!
//! Then, through the daemons' control sockets (from Rust, one JSON request per line, so the
//! CLI's start-up is not what is measured):
//!
//! - propagation: a Service (a given VIP, port 80 to the backend pod's echo port 8080)
//!   added on n1, and on every other node the time until `service get` answers for it
//!   (`get`) and until a connection to its VIP from the node's namespace gets the
//!   backend's greeting through that node's proxy (`served`); both polled every 5 ms,
//!   from the moment the add was sent; median and max over the repeats of the slowest
//!   node, and per node;
//! - memory: every daemon's VmRSS idle (before the bench made any Service) and after
//!   `--services` Services with `--endpoints` explicit endpoints each were added on n1
//!   (one `ServiceAdd` request each, or with `--batch N` `ServiceApply` requests of N;
//!   4 clients in parallel; the time it took, with a mark every 1 %), once every node has
//!   them all (its `overlayd status` counts them; polled every 250 ms) or after a timeout,
//!   which the report says.
//!
//! Connection-rate runs leave TIME_WAIT sockets and conntrack entries that slow the runs
//! after them (see `tune_for_connection_rates`), so the client pod, the backend pod and
//! n1 keep no TIME_WAIT sockets, and conntrack's TIME_WAIT is 10 s on every node. The
//! plumbing (HAProxy, its address, the nftables table, the Service) is removed when the
//! bench ends, also on failure.

use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use overlayd_proto::api::{Request, ServiceInfo, Status};
use overlayd_proto::service::ServiceSpec;
use serde::Serialize;

use super::api::{self, ApiError};
use super::datapath::{finish, num, ratio};
use super::measure::{self, ChildGuard, Iperf, median};
use crate::hello::{HELLO_PORT, HTTP_PORT};
use crate::lab::{Lab, LabError, Pod};
use crate::netns;
use crate::topology::{DEFAULT_NODES, Topology};

const CLIENT_NODE: &str = "n1";
const CLIENT_POD: &str = "n1-p1";
const BACKEND_POD: &str = "n2-p1";
const IPERF_PORT: u16 = 5201;
const HAPROXY_VIP: Ipv4Addr = Ipv4Addr::new(10, 254, 200, 1);
const NFT_VIP: Ipv4Addr = Ipv4Addr::new(10, 254, 201, 1);
const NFT_TABLE: &str = "ovlbench";
/// The Service the `vip` path uses.
const BENCH_SERVICE: &str = "bench";
/// How long a new Service may take to be served on its node before the path is skipped.
const SERVICE_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a Service may take to reach every node before propagation gives up.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long loaded Services may take to reach every node once the last add returned.
const LOAD_CONVERGE_TIMEOUT: Duration = Duration::from_secs(300);
/// Parallel clients loading Services.
const LOAD_CLIENTS: usize = 4;

/// What to measure and how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Seconds per iperf3 or wrk run.
    pub seconds: u32,
    /// Runs of every path; figures are medians over them.
    pub repeat: u32,
    /// wrk connections, and its threads.
    pub connections: u32,
    pub threads: u32,
    /// Services added and timed for the propagation figure.
    pub propagation_repeat: u32,
    /// Services loaded for the memory figure (0: skip it), and endpoints each.
    pub services: u32,
    pub endpoints: u32,
    /// 0: load with one `ServiceAdd` request per Service; N: with `ServiceApply`
    /// requests of N Services each.
    pub batch: u32,
    /// `services.relay` of every node (`copy` or `splice`); `None`: the daemon's default.
    pub relay: Option<String>,
    /// `services.dataplane` of every node (`proxy` or `kernel`): what serves the `vip`
    /// path; `None`: the daemon's default (the proxy).
    pub dataplane: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seconds: 5,
            repeat: 3,
            connections: 16,
            threads: 2,
            propagation_repeat: 10,
            services: 10_000,
            endpoints: 10,
            batch: 0,
            relay: None,
            dataplane: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub suite: &'static str,
    /// The proxy's `services.relay`, as the bench set it (`default`: not set).
    pub relay: String,
    /// Every node's `services.dataplane`, as the bench set it (`default`: not set).
    pub dataplane: String,
    pub seconds: u32,
    pub repeat: u32,
    pub connections: u32,
    pub threads: u32,
    /// `NAME (IP)` of the client and the backend pod.
    pub client: String,
    pub backend: String,
    pub paths: Vec<PathReport>,
    /// `None` when the daemon serves no Services (see `notes`).
    pub propagation: Option<Propagation>,
    pub memory: Option<Memory>,
    /// What could not be measured, and why.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathReport {
    pub name: String,
    /// What the client connected to.
    pub target: String,
    /// iperf3 TCP, 1 stream, Gbit/s at the receiver.
    pub gbps: Option<f64>,
    /// New connections (one request each) per second.
    pub conn_per_s: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// wrk's socket errors and non-2xx answers, summed over the repeats.
    pub errors: u64,
    /// `gbps` / direct's.
    pub ratio: Option<f64>,
    /// `conn_per_s` / direct's.
    pub conn_ratio: Option<f64>,
    /// `p99_ms` / direct's (above 1: slower).
    pub p99_ratio: Option<f64>,
    pub runs: Vec<Sample>,
    /// Why the path was not measured.
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub gbps: f64,
    pub conn_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// How long a Service added on one node takes to reach every other.
#[derive(Debug, Clone, Serialize)]
pub struct Propagation {
    /// Services added (one at a time).
    pub repeat: u32,
    /// Until `service get` answered for it on the last node.
    pub get: Spread,
    /// Until a connection to its VIP reached the backend through the last node's proxy.
    pub served: Spread,
    pub per_node: Vec<NodePropagation>,
}

/// Per repeat the time until the slowest node had it, ms; their median and max.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub every_node_median_ms: f64,
    pub every_node_max_ms: f64,
    pub samples_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodePropagation {
    pub node: String,
    pub get_median_ms: f64,
    pub get_max_ms: f64,
    pub served_median_ms: f64,
    pub served_max_ms: f64,
}

/// Daemon memory idle and with many Services.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub services: u32,
    pub endpoints: u32,
    /// 0: one `ServiceAdd` request per Service; N: `ServiceApply` requests of N.
    pub batch: u32,
    /// From the first add request to the last answer (parallel clients).
    pub load_seconds: f64,
    /// When every 1 % of the adds had been answered, from the first add: how the add
    /// rate changes as the catalog grows.
    pub load_marks: Vec<LoadMark>,
    /// From the first add until every node's catalog had them all (`overlayd status`
    /// polled every 250 ms); `None` on a timeout.
    pub converge_seconds: Option<f64>,
    pub nodes: Vec<NodeMemory>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct LoadMark {
    pub services: u32,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeMemory {
    pub node: String,
    pub idle_rss_kib: u64,
    pub loaded_rss_kib: u64,
    /// Services the node's catalog had (`overlayd status`) when the loaded RSS was read.
    pub services_listed: usize,
}

/// Brings up lab `name` with the default topology's nodes (`DEFAULT_NODES`: without its
/// Service `hello`, whose health checks would add traffic), runs the bench and tears the lab down
/// (unless `keep`). `log` gets one line per step.
pub fn run(
    name: &str,
    overlayd_bin: &Path,
    options: &Options,
    keep: bool,
    log: &mut dyn FnMut(&str),
) -> Result<Report, LabError> {
    log(&format!(
        "bringing up lab {name:?} (the default nodes: 4 nodes, 2 pods each, no Service)"
    ));
    let topology = Topology::parse(&topology_text(
        options.relay.as_deref(),
        options.dataplane.as_deref(),
    ))
    .map_err(|e| LabError::Bench(format!("the bench's topology: {e}")))?;
    let lab = Lab::up(name, &topology, overlayd_bin)?;
    let result = measure_lab(&lab, options, log);
    finish(lab, keep, log);
    result
}

/// `DEFAULT_NODES`, with `[config.services] relay` and `dataplane` when asked for.
fn topology_text(relay: Option<&str>, dataplane: Option<&str>) -> String {
    let mut services = String::new();
    if let Some(relay) = relay {
        let _ = writeln!(services, "relay = {relay:?}");
    }
    if let Some(dataplane) = dataplane {
        let _ = writeln!(services, "dataplane = {dataplane:?}");
    }
    if services.is_empty() {
        DEFAULT_NODES.to_string()
    } else {
        format!("{DEFAULT_NODES}\n[config.services]\n{services}")
    }
}

/// One way from the client to the backend.
struct Target {
    name: &'static str,
    ip: Ipv4Addr,
    describe: String,
}

fn measure_lab(lab: &Lab, o: &Options, log: &mut dyn FnMut(&str)) -> Result<Report, LabError> {
    let client = lab.pod(CLIENT_POD)?.clone();
    let backend = lab.pod(BACKEND_POD)?.clone();
    let idle_rss = rss_of_daemons(lab)?;
    let mut notes = Vec::new();
    let node_ns = lab.node(CLIENT_NODE)?.netns();
    tune_for_connection_rates(lab, &client, &backend)?;
    measure::wait_listening(&backend.netns, HTTP_PORT, Duration::from_secs(10))?;

    let mut targets = vec![Target {
        name: "direct",
        ip: backend.ip,
        describe: format!("{} ({BACKEND_POD})", backend.ip),
    }];
    log("adding the Service for the vip path");
    let mut vip_skipped = None;
    let vip = match add_bench_service(lab, &backend) {
        Ok(vip) => {
            targets.push(Target {
                name: "vip",
                ip: vip,
                describe: format!(
                    "{vip} (Service default/{BENCH_SERVICE}, overlayd {})",
                    match o.dataplane.as_deref() {
                        Some("kernel") => "kernel DNAT",
                        _ => "proxy",
                    }
                ),
            });
            Some(vip)
        }
        Err(e) => {
            notes.push(format!("vip: not measured: {e}"));
            vip_skipped = Some(e.to_string());
            None
        }
    };
    log("starting HAProxy and loading the nftables DNAT");
    let haproxy = Haproxy::start(lab, &node_ns, backend.ip)?;
    targets.push(Target {
        name: "haproxy",
        ip: HAPROXY_VIP,
        describe: format!(
            "{HAPROXY_VIP} (HAProxy on {CLIENT_NODE}, pid {})",
            haproxy.pid()
        ),
    });
    let nft = NftDnat::load(&node_ns, backend.ip, &client)?;
    targets.push(Target {
        name: "nft-dnat",
        ip: NFT_VIP,
        describe: format!("{NFT_VIP} (nftables DNAT on {CLIENT_NODE})"),
    });

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); targets.len()];
    for r in 1..=o.repeat {
        for (t, runs) in targets.iter().zip(&mut samples) {
            log(&format!("repeat {r}/{}: {}", o.repeat, t.name));
            runs.push(measure_target(t, &client, &backend, o)?);
        }
    }
    drop(nft);
    drop(haproxy);
    let mut paths: Vec<PathReport> = targets
        .iter()
        .zip(samples)
        .map(|(t, runs)| summarize(t, runs))
        .collect();
    if vip.is_none() {
        paths.insert(
            1,
            PathReport {
                skipped: vip_skipped,
                ..summarize(
                    &Target {
                        name: "vip",
                        ip: Ipv4Addr::UNSPECIFIED,
                        describe: "the Service VIP (overlayd proxy)".into(),
                    },
                    Vec::new(),
                )
            },
        );
    }
    let direct = paths[0].clone();
    for p in &mut paths {
        p.ratio = ratio(p.gbps, direct.gbps);
        p.conn_ratio = ratio(p.conn_per_s, direct.conn_per_s);
        p.p99_ratio = ratio(p.p99_ms, direct.p99_ms);
    }

    let (propagation, memory) = if vip.is_some() {
        let _ = api::call(
            &lab.node(CLIENT_NODE)?.socket_path(),
            &Request::ServiceDel {
                namespace: "default".into(),
                name: BENCH_SERVICE.into(),
            },
        );
        log(&format!(
            "propagation: {} Services added on {CLIENT_NODE}, one at a time",
            o.propagation_repeat
        ));
        let propagation = match propagation(lab, o.propagation_repeat, &backend) {
            Ok(p) => Some(p),
            Err(e) => {
                notes.push(format!("propagation: not measured: {e}"));
                None
            }
        };
        let memory = if o.services == 0 {
            None
        } else {
            log(&format!(
                "memory: loading {} Services x {} endpoints on {CLIENT_NODE}",
                o.services, o.endpoints
            ));
            match memory(lab, o, idle_rss, log) {
                Ok(m) => Some(m),
                Err(e) => {
                    notes.push(format!("memory: not measured: {e}"));
                    None
                }
            }
        };
        (propagation, memory)
    } else {
        notes.push("propagation and memory: not measured: the daemon serves no Services".into());
        (None, None)
    };
    Ok(Report {
        suite: "services",
        relay: o.relay.clone().unwrap_or_else(|| "default".into()),
        dataplane: o.dataplane.clone().unwrap_or_else(|| "default".into()),
        seconds: o.seconds,
        repeat: o.repeat,
        connections: o.connections,
        threads: o.threads,
        client: format!("{CLIENT_POD} ({})", client.ip),
        backend: format!("{BACKEND_POD} ({})", backend.ip),
        paths,
        propagation,
        memory,
        notes,
    })
}

/// Keeps one connection-rate run from slowing the next: a run opens tens of thousands of
/// connections between the same two addresses, and with the defaults their TIME_WAIT
/// sockets (60 s, at the backend, which closes first, and at n1 for the proxies' client
/// sides) make later SYNs on reused ports fail PAWS and wait a 1 s retransmit (measured:
/// `direct` fell from 7 200 to 720 connections/s over six 5-second runs), and their
/// conntrack entries (TIME_WAIT 120 s, on the nodes the traffic crosses) can fill the
/// table. So: no TIME_WAIT sockets (`tcp_max_tw_buckets = 0`) in the client pod, the
/// backend pod and n1, the widest ephemeral port range in the client pod and n1, and
/// conntrack's TIME_WAIT at 10 s on every node. All are per-namespace settings of the
/// bench's own lab.
fn tune_for_connection_rates(lab: &Lab, client: &Pod, backend: &Pod) -> Result<(), LabError> {
    let node_ns = lab.node(CLIENT_NODE)?.netns();
    for ns in [&client.netns, &backend.netns, &node_ns] {
        set_sysctl(ns, "net/ipv4/tcp_max_tw_buckets", "0")?;
    }
    for ns in [&client.netns, &node_ns] {
        set_sysctl(ns, "net/ipv4/ip_local_port_range", "1024 65000")?;
    }
    for node in lab.nodes().filter(|n| n.pid().is_some()) {
        set_sysctl(
            &node.netns(),
            "net/netfilter/nf_conntrack_tcp_timeout_time_wait",
            "10",
        )?;
    }
    Ok(())
}

/// Writes `/proc/sys/KEY` from a thread inside `ns` (network sysctls are per namespace:
/// the file is the opening thread's namespace's), so no `sysctl` binary is needed.
fn set_sysctl(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let path = format!("/proc/sys/{key}");
    netns::try_in_netns(ns, || fs::write(&path, value))?.map_err(|source| LabError::Io {
        path: format!("{path} in {ns}"),
        source,
    })
}

fn measure_target(
    t: &Target,
    client: &Pod,
    backend: &Pod,
    o: &Options,
) -> Result<Sample, LabError> {
    let tcp = Iperf {
        client_ns: &client.netns,
        server_ns: &backend.netns,
        dst: t.ip,
        port: IPERF_PORT,
        seconds: o.seconds,
    }
    .tcp(1)?;
    let wrk = measure::wrk_close(
        &client.netns,
        &format!("http://{}:{HTTP_PORT}/", t.ip),
        o.seconds,
        o.threads,
        o.connections,
    )?;
    Ok(Sample {
        gbps: tcp.gbps,
        conn_per_s: wrk.requests_per_s,
        p50_ms: wrk.p50_ms,
        p99_ms: wrk.p99_ms,
        errors: wrk.errors,
    })
}

fn summarize(t: &Target, runs: Vec<Sample>) -> PathReport {
    let m = |f: fn(&Sample) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    PathReport {
        name: t.name.into(),
        target: t.describe.clone(),
        gbps: m(|s| s.gbps),
        conn_per_s: m(|s| s.conn_per_s),
        p50_ms: m(|s| s.p50_ms),
        p99_ms: m(|s| s.p99_ms),
        errors: runs.iter().map(|s| s.errors).sum(),
        ratio: None,
        conn_ratio: None,
        p99_ratio: None,
        runs,
        skipped: None,
    }
}

/// Adds Service `default/bench` on the client's node (ports 5201 and 8081, the backend
/// pod as its one explicit backend, no active health checks, which would count as
/// iperf3 clients) and waits until it is served there. Returns its VIP.
fn add_bench_service(lab: &Lab, backend: &Pod) -> Result<Ipv4Addr, LabError> {
    let ip = backend.ip.to_string();
    let added = lab.service(
        CLIENT_NODE,
        &[
            "add",
            BENCH_SERVICE,
            "--port",
            &format!("iperf={IPERF_PORT}/tcp"),
            "--port",
            &format!("http={HTTP_PORT}/tcp"),
            "--backend",
            &ip,
            "--no-health-check",
        ],
    )?;
    let deadline = Instant::now() + SERVICE_READY_TIMEOUT;
    let mut info = added;
    loop {
        if let (Some(vip), true) = (info.service.cluster_ip, info.service.is_active()) {
            let node_ns = lab.node(CLIENT_NODE)?.netns();
            let left = deadline.saturating_duration_since(Instant::now());
            measure::wait_listening(&node_ns, HTTP_PORT, left)?;
            measure::wait_listening(&node_ns, IPERF_PORT, left)?;
            return Ok(vip);
        }
        if Instant::now() >= deadline {
            return Err(LabError::Bench(format!(
                "Service default/{BENCH_SERVICE} is not active with a VIP after {:?}: {:?}",
                SERVICE_READY_TIMEOUT, info.service.status
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
        info = lab.service(CLIENT_NODE, &["get", BENCH_SERVICE])?;
    }
}

/// HAProxy in the client's node namespace, serving the two ports on [`HAPROXY_VIP`]
/// (added to `lo`); stopped by PID and the address removed when dropped.
struct Haproxy {
    child: Option<ChildGuard>,
    node_ns: String,
}

impl Haproxy {
    fn start(lab: &Lab, node_ns: &str, backend: Ipv4Addr) -> Result<Haproxy, LabError> {
        let config = lab.run_dir().join("haproxy.cfg");
        let log = lab.run_dir().join("haproxy.log");
        fs::write(&config, haproxy_config(HAPROXY_VIP, backend)).map_err(|source| {
            LabError::Io {
                path: config.display().to_string(),
                source,
            }
        })?;
        let cfg = config.display().to_string();
        netns::run_in(node_ns, &["haproxy", "-c", "-q", "-f", &cfg])?;
        let mut me = Haproxy {
            child: None,
            node_ns: node_ns.into(),
        };
        netns::run_in(
            node_ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{HAPROXY_VIP}/32"),
                "dev",
                "lo",
            ],
        )?;
        let out = open_log(&log)?;
        let err = out.try_clone().map_err(|source| LabError::Io {
            path: log.display().to_string(),
            source,
        })?;
        let mut cmd = netns::daemon_command(node_ns, "haproxy")?;
        // -db: stay in the foreground, so the PID we hold is HAProxy's.
        cmd.args(["-db", "-f", &cfg])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let describe = netns::describe(&cmd);
        let child = cmd.spawn().map_err(|source| netns::NetnsError::Spawn {
            command: describe,
            source,
        })?;
        me.child = Some(ChildGuard(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [HTTP_PORT, IPERF_PORT] {
            while measure::wait_listening(node_ns, port, Duration::ZERO).is_err() {
                let exited = me
                    .child
                    .as_mut()
                    .and_then(|c| c.0.try_wait().ok().flatten());
                if exited.is_some() || Instant::now() >= deadline {
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    return Err(LabError::Bench(format!(
                        "HAProxy does not listen on {HAPROXY_VIP}:{port} ({}); {}:\n{text}",
                        exited.map_or_else(|| "still starting".into(), |s| s.to_string()),
                        log.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(me)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, ChildGuard::pid)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        drop(self.child.take());
        let _ = netns::run_in(
            &self.node_ns,
            &[
                "ip",
                "addr",
                "del",
                &format!("{HAPROXY_VIP}/32"),
                "dev",
                "lo",
            ],
        );
    }
}

fn open_log(path: &Path) -> Result<fs::File, LabError> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LabError::Io {
            path: path.display().to_string(),
            source,
        })
}

/// HAProxy's config: TCP mode, splice where it helps, one frontend and one server per
/// port, no health checks.
pub fn haproxy_config(vip: Ipv4Addr, backend: Ipv4Addr) -> String {
    let mut cfg = String::from(
        "# overlayd lab bench services: HAProxy as a Service proxy (TCP mode)\n\
         global\n    maxconn 4000\n\n\
         defaults\n    mode tcp\n    option splice-auto\n    timeout connect 5s\n    \
         timeout client 60s\n    timeout server 60s\n",
    );
    for (name, port) in [("iperf", IPERF_PORT), ("http", HTTP_PORT)] {
        let _ = write!(
            cfg,
            "\nfrontend {name}\n    bind {vip}:{port}\n    default_backend {name}\n\n\
             backend {name}\n    server pod {backend}:{port}\n"
        );
    }
    cfg
}

/// The nftables DNAT of [`NFT_VIP`] to the backend in the client's node namespace; the
/// table is deleted when dropped.
struct NftDnat {
    node_ns: String,
}

impl NftDnat {
    fn load(node_ns: &str, backend: Ipv4Addr, client: &Pod) -> Result<NftDnat, LabError> {
        let me = NftDnat {
            node_ns: node_ns.into(),
        };
        let ruleset = nft_dnat_ruleset(NFT_VIP, backend);
        let path = std::env::temp_dir().join(format!(
            "overlayd-lab-bench-{}-{}.nft",
            std::process::id(),
            client.name
        ));
        fs::write(&path, &ruleset).map_err(|source| LabError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let loaded = netns::run_in(node_ns, &["nft", "-f", &path.display().to_string()]);
        let _ = fs::remove_file(&path);
        loaded?;
        Ok(me)
    }
}

impl Drop for NftDnat {
    fn drop(&mut self) {
        let _ = netns::run_in(&self.node_ns, &["nft", "delete", "table", "ip", NFT_TABLE]);
    }
}

/// kube-proxy's nftables shape for one ClusterIP Service with two TCP ports and one
/// endpoint: `services` looks VIP . proto . port up in a verdict map, the service chain
/// picks an endpoint with `numgen random`, the endpoint chain marks hairpin traffic for
/// masquerade and DNATs.
pub fn nft_dnat_ruleset(vip: Ipv4Addr, backend: Ipv4Addr) -> String {
    let mut elements = Vec::new();
    let mut chains = String::new();
    for (name, port) in [("iperf", IPERF_PORT), ("http", HTTP_PORT)] {
        elements.push(format!("{vip} . tcp . {port} : goto service-bench-{name}"));
        let _ = write!(
            chains,
            "\tchain service-bench-{name} {{\n\
             \t\tnumgen random mod 1 vmap {{ 0 : goto endpoint-bench-{name} }}\n\t}}\n\
             \tchain endpoint-bench-{name} {{\n\
             \t\tip saddr {backend} jump mark-for-masquerade\n\
             \t\tmeta l4proto tcp dnat to {backend}:{port}\n\t}}\n"
        );
    }
    format!(
        "table ip {NFT_TABLE} {{\n\
         \tmap service-ips {{\n\
         \t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\
         \t\telements = {{ {} }}\n\t}}\n\
         \tchain nat-prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tjump services\n\t}}\n\
         \tchain nat-output {{\n\t\ttype nat hook output priority -100; policy accept;\n\
         \t\tjump services\n\t}}\n\
         \tchain nat-postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tjump masquerading\n\t}}\n\
         \tchain services {{\n\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\t}}\n\
         \tchain mark-for-masquerade {{\n\t\tmeta mark set meta mark | 0x4000\n\t}}\n\
         \tchain masquerading {{\n\t\tmeta mark & 0x4000 == 0 return\n\
         \t\tmeta mark set meta mark ^ 0x4000\n\t\tmasquerade fully-random\n\t}}\n\
         {chains}}}\n",
        elements.join(", ")
    )
}

/// VmRSS of every running daemon, by node.
fn rss_of_daemons(lab: &Lab) -> Result<Vec<(String, u64)>, LabError> {
    lab.nodes()
        .filter_map(|n| Some((n.name().to_string(), n.pid()?)))
        .map(|(node, pid)| {
            let rss = measure::rss_kib(pid)
                .ok_or_else(|| LabError::Bench(format!("cannot read /proc/{pid}/status")))?;
            Ok((node, rss))
        })
        .collect()
}

fn get_service(socket: &Path, name: &str) -> Result<ServiceInfo, ApiError> {
    api::call_as(
        socket,
        &Request::ServiceGet {
            namespace: "default".into(),
            name: name.into(),
        },
    )
}

/// How many Services the node's catalog has (`overlayd status`).
fn services_count(socket: &Path) -> Result<usize, ApiError> {
    api::call_as::<Status>(socket, &Request::Status).map(|s| s.services)
}

fn spec(value: serde_json::Value) -> ServiceSpec {
    serde_json::from_value(value).expect("the bench's Service specs are valid JSON specs")
}

/// Adds `repeat` Services on the client's node, one at a time, each with a given VIP and
/// the backend pod's echo port as its backend, and times on every other node until
/// `service get` answers for it (`get`) and until a connection to its VIP from the node's
/// namespace reaches the backend through that node's proxy (`served`).
fn propagation(lab: &Lab, repeat: u32, backend: &Pod) -> Result<Propagation, LabError> {
    let origin = lab.node(CLIENT_NODE)?.socket_path();
    let others: Vec<(String, PathBuf, String)> = lab
        .nodes()
        .filter(|n| n.name() != CLIENT_NODE && n.pid().is_some())
        .map(|n| (n.name().to_string(), n.socket_path(), n.netns()))
        .collect();
    let mut get_times: Vec<Vec<f64>> = vec![Vec::new(); others.len()];
    let mut served_times: Vec<Vec<f64>> = vec![Vec::new(); others.len()];
    let greeting = format!("{}\n", backend.name);
    for i in 0..repeat {
        let name = format!("prop-{i}");
        let vip = Ipv4Addr::new(10, 96, 250, 1 + (i % 250) as u8);
        let request = Request::ServiceAdd {
            spec: spec(serde_json::json!({
                "name": name,
                "cluster_ip": vip.to_string(),
                "ports": [{"port": 80, "target_port": HELLO_PORT}],
                "backends": [backend.ip.to_string()],
                "health_check": {"enabled": false},
            })),
        };
        let start = Instant::now();
        let elapsed_ms = || start.elapsed().as_secs_f64() * 1e3;
        let timeout = |node: &str, what: &str| {
            LabError::Bench(format!(
                "{node}: Service default/{name} not {what} within {PROPAGATION_TIMEOUT:?}"
            ))
        };
        let (added, times) = std::thread::scope(|scope| {
            let pollers: Vec<_> = others
                .iter()
                .map(|(node, socket, ns)| {
                    let get = scope.spawn(|| {
                        while get_service(socket, &name).is_err() {
                            if start.elapsed() > PROPAGATION_TIMEOUT {
                                return Err(timeout(node, "shown by service get"));
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Ok(elapsed_ms())
                    });
                    let served = scope.spawn(|| {
                        netns::try_in_netns(ns, || {
                            while !greets(vip, &greeting) {
                                if start.elapsed() > PROPAGATION_TIMEOUT {
                                    return Err(timeout(node, "served on its VIP"));
                                }
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            Ok(elapsed_ms())
                        })?
                    });
                    (get, served)
                })
                .collect();
            let added = api::call(&origin, &request);
            let times: Vec<_> = pollers
                .into_iter()
                .map(|(g, s)| {
                    let g = g.join().expect("a poller does not panic");
                    let s = s.join().expect("a poller does not panic");
                    (g, s)
                })
                .collect();
            (added, times)
        });
        added.map_err(|e| LabError::Bench(format!("service add on {CLIENT_NODE}: {e}")))?;
        for (k, (g, s)) in times.into_iter().enumerate() {
            get_times[k].push(g?);
            served_times[k].push(s?);
        }
        let _ = api::call(
            &origin,
            &Request::ServiceDel {
                namespace: "default".into(),
                name,
            },
        );
    }
    Ok(Propagation {
        repeat,
        get: Spread::of_slowest(&get_times),
        served: Spread::of_slowest(&served_times),
        per_node: others
            .iter()
            .zip(get_times.iter().zip(&served_times))
            .map(|((node, _, _), (get, served))| NodePropagation {
                node: node.clone(),
                get_median_ms: median(get).unwrap_or(f64::NAN),
                get_max_ms: max(get),
                served_median_ms: median(served).unwrap_or(f64::NAN),
                served_max_ms: max(served),
            })
            .collect(),
    })
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

impl Spread {
    /// `times[node][repeat]` → per repeat the slowest node's time, and their median/max.
    fn of_slowest(times: &[Vec<f64>]) -> Spread {
        let repeats = times.iter().map(Vec::len).max().unwrap_or(0);
        let samples_ms: Vec<f64> = (0..repeats)
            .map(|r| {
                max(&times
                    .iter()
                    .filter_map(|t| t.get(r).copied())
                    .collect::<Vec<_>>())
            })
            .collect();
        Spread {
            every_node_median_ms: median(&samples_ms).unwrap_or(f64::NAN),
            every_node_max_ms: max(&samples_ms),
            samples_ms,
        }
    }
}

/// Whether a connection to `vip:80` from this thread's namespace answers with `greeting`
/// (the backend's echo server's first line).
fn greets(vip: Ipv4Addr, greeting: &str) -> bool {
    use std::io::Read;
    let addr = std::net::SocketAddr::from((vip, 80));
    // Short: before the node serves the VIP it has no local route for it, and the SYN may
    // be lost rather than refused (a lost SYN would wait out TCP's 1 s retransmit).
    let Ok(mut conn) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(10))
    else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let mut got = vec![0u8; greeting.len()];
    conn.read_exact(&mut got).is_ok() && got == greeting.as_bytes()
}

/// The spec of loaded Service `i`: one port, `endpoints` explicit backends.
fn load_spec(i: u32, endpoints: u32) -> ServiceSpec {
    let backends: Vec<String> = (0..endpoints)
        .map(|e| {
            let n = i * endpoints + e;
            format!("172.{}.{}.{}", 16 + n / 65_536 % 16, n / 256 % 256, n % 256)
        })
        .collect();
    spec(serde_json::json!({
        "name": format!("load-{i}"),
        "ports": [{"port": 80, "target_port": 8080}],
        "backends": backends,
        "health_check": {"enabled": false},
    }))
}

fn memory(
    lab: &Lab,
    o: &Options,
    idle: Vec<(String, u64)>,
    log: &mut dyn FnMut(&str),
) -> Result<Memory, LabError> {
    let origin = lab.node(CLIENT_NODE)?.socket_path();
    let sockets: Vec<(String, PathBuf, u32)> = lab
        .nodes()
        .filter_map(|n| Some((n.name().to_string(), n.socket_path(), n.pid()?)))
        .collect();
    // Start from an empty catalog everywhere (the bench's earlier Services deleted), so a
    // node's count is the loaded Services alone.
    let deadline = Instant::now() + PROPAGATION_TIMEOUT;
    while sockets
        .iter()
        .any(|(_, s, _)| services_count(s).map_or(true, |c| c > 0))
    {
        if Instant::now() >= deadline {
            return Err(LabError::Bench(format!(
                "the bench's earlier Services were still listed after {PROPAGATION_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let done = AtomicU32::new(0);
    let marks = Mutex::new(Vec::new());
    // A mark every 1 % of the load (at least every Service).
    let step = (o.services / 100).max(1);
    let start = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..LOAD_CLIENTS)
            .map(|w| {
                let (origin, done, marks) = (&origin, &done, &marks);
                scope.spawn(move || {
                    let per_request = o.batch.max(1);
                    let requests = o.services.div_ceil(per_request);
                    for r in (w as u32..requests).step_by(LOAD_CLIENTS) {
                        let first = r * per_request;
                        let last = (first + per_request).min(o.services);
                        let request = if o.batch == 0 {
                            Request::ServiceAdd {
                                spec: load_spec(first, o.endpoints),
                            }
                        } else {
                            Request::ServiceApply {
                                specs: (first..last).map(|i| load_spec(i, o.endpoints)).collect(),
                            }
                        };
                        api::call(origin, &request).map_err(|e| {
                            LabError::Bench(format!(
                                "adding Services load-{first}..load-{} on n1: {e}",
                                last - 1
                            ))
                        })?;
                        let before = done.fetch_add(last - first, Ordering::Relaxed);
                        let count = before + last - first;
                        if count / step > before / step || count == o.services {
                            let mut marks = marks.lock().expect("no loader panics");
                            marks.push(LoadMark {
                                services: count,
                                seconds: start.elapsed().as_secs_f64(),
                            });
                        }
                    }
                    Ok::<(), LabError>(())
                })
            })
            .collect();
        let mut logged = 0;
        while !workers.iter().all(|w| w.is_finished()) {
            std::thread::sleep(Duration::from_millis(200));
            let tenth = done.load(Ordering::Relaxed) * 10 / o.services.max(1);
            if tenth > logged && tenth < 10 {
                logged = tenth;
                log(&format!(
                    "memory: {}0 % added after {:.0} s",
                    tenth,
                    start.elapsed().as_secs_f64()
                ));
            }
        }
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a loader does not panic"))
    })?;
    let load_seconds = start.elapsed().as_secs_f64();
    let converge_deadline = Instant::now() + LOAD_CONVERGE_TIMEOUT;
    log(&format!(
        "memory: loaded in {load_seconds:.1} s; waiting until every node has them"
    ));
    let mut counts: Vec<usize>;
    let converge_seconds = loop {
        counts = sockets
            .iter()
            .map(|(_, s, _)| services_count(s).unwrap_or(0))
            .collect();
        if counts.iter().all(|&c| c >= o.services as usize) {
            break Some(start.elapsed().as_secs_f64());
        }
        if Instant::now() >= converge_deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let nodes = sockets
        .iter()
        .zip(counts)
        .map(|((node, _, pid), services_listed)| {
            let idle_rss_kib = idle
                .iter()
                .find(|(n, _)| n == node)
                .map_or(0, |(_, rss)| *rss);
            let loaded_rss_kib = measure::rss_kib(*pid)
                .ok_or_else(|| LabError::Bench(format!("cannot read /proc/{pid}/status")))?;
            Ok(NodeMemory {
                node: node.clone(),
                idle_rss_kib,
                loaded_rss_kib,
                services_listed,
            })
        })
        .collect::<Result<_, LabError>>()?;
    let mut load_marks = marks.into_inner().expect("no loader panics");
    load_marks.sort_by_key(|m| m.services);
    Ok(Memory {
        services: o.services,
        endpoints: o.endpoints,
        batch: o.batch,
        load_seconds,
        load_marks,
        converge_seconds,
        nodes,
    })
}

impl Memory {
    /// Adds per second over the first tenth of the load and over its last tenth (from the
    /// last mark at or below 90 % to the end), from the marks.
    pub fn add_rates(&self) -> Option<(f64, f64)> {
        let tenth = (self.services / 10).max(1);
        let first = self.load_marks.iter().find(|m| m.services >= tenth)?;
        let end = self.load_marks.last()?;
        let before_end = self
            .load_marks
            .iter()
            .rev()
            .find(|m| m.services <= self.services - tenth)
            .copied()
            .unwrap_or(LoadMark {
                services: 0,
                seconds: 0.0,
            });
        let rate = |services: u32, seconds: f64| f64::from(services) / seconds.max(1e-9);
        Some((
            rate(first.services, first.seconds),
            rate(
                end.services - before_end.services,
                end.seconds - before_end.seconds,
            ),
        ))
    }
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = format!(
            "client {} -> backend {}\n{:<10} {:>7} {:>7} {:>9} {:>7} {:>8} {:>8} {:>9}  {}\n",
            self.client,
            self.backend,
            "PATH",
            "GBPS",
            "RATIO",
            "CONN/S",
            "RATIO",
            "P50_MS",
            "P99_MS",
            "P99_RATIO",
            "TARGET"
        );
        for p in &self.paths {
            if let Some(why) = &p.skipped {
                let _ = writeln!(out, "{:<10} (not measured: {why})", p.name);
                continue;
            }
            let _ = writeln!(
                out,
                "{:<10} {:>7} {:>7} {:>9} {:>7} {:>8} {:>8} {:>9}  {}{}",
                p.name,
                num(p.gbps, 2),
                num(p.ratio, 2),
                num(p.conn_per_s, 0),
                num(p.conn_ratio, 2),
                num(p.p50_ms, 3),
                num(p.p99_ms, 3),
                num(p.p99_ratio, 2),
                p.target,
                if p.errors > 0 {
                    format!(" ({} wrk errors)", p.errors)
                } else {
                    String::new()
                }
            );
        }
        let _ = writeln!(
            out,
            "(medians of {} repeats; iperf3 -t {}, 1 stream; wrk -t {} -c {} -d {}s with \
             Connection: close; RATIO against direct; overlayd services.dataplane: {}, proxy \
             relay: {})",
            self.repeat,
            self.seconds,
            self.threads,
            self.connections,
            self.seconds,
            self.dataplane,
            self.relay
        );
        if let Some(p) = &self.propagation {
            let _ = writeln!(
                out,
                "propagation of a new Service to every other node ({} adds): service get \
                 median {:.0} ms, max {:.0} ms; VIP served median {:.0} ms, max {:.0} ms",
                p.repeat,
                p.get.every_node_median_ms,
                p.get.every_node_max_ms,
                p.served.every_node_median_ms,
                p.served.every_node_max_ms
            );
            for n in &p.per_node {
                let _ = writeln!(
                    out,
                    "  {}: get median {:.0} ms, max {:.0} ms; served median {:.0} ms, max {:.0} ms",
                    n.node, n.get_median_ms, n.get_max_ms, n.served_median_ms, n.served_max_ms
                );
            }
        }
        if let Some(m) = &self.memory {
            let converge = m
                .converge_seconds
                .map_or_else(|| "not within the timeout".into(), |s| format!("{s:.1} s"));
            let _ = writeln!(
                out,
                "memory: {} Services x {} endpoints loaded ({}) in {:.1} s ({:.0}/s), on every node after {converge}",
                m.services,
                m.endpoints,
                if m.batch == 0 {
                    "one service add each".to_string()
                } else {
                    format!("service apply, {} per request", m.batch)
                },
                m.load_seconds,
                f64::from(m.services) / m.load_seconds.max(1e-9)
            );
            if let Some((first, last)) = m.add_rates() {
                let _ = writeln!(
                    out,
                    "  adds per second: {first:.0} over the first 10 %, {last:.0} over the last 10 %"
                );
            }
            for n in &m.nodes {
                let _ = writeln!(
                    out,
                    "  {}: RSS idle {:.1} MiB, loaded {:.1} MiB ({} Services listed)",
                    n.node,
                    n.idle_rss_kib as f64 / 1024.0,
                    n.loaded_rss_kib as f64 / 1024.0,
                    n.services_listed
                );
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_goes_into_every_nodes_config() {
        let topo = Topology::parse(&topology_text(Some("splice"), Some("kernel"))).unwrap();
        let config = crate::config::node_config(&topo, topo.node("n3").unwrap(), "b").unwrap();
        assert_eq!(
            config.services.relay,
            overlayd_config::schema::Relay::Splice
        );
        assert_eq!(
            config.services.dataplane,
            overlayd_config::schema::Dataplane::Kernel
        );
        assert!(Topology::parse(&topology_text(Some("bogus"), None)).is_err());
        assert_eq!(topology_text(None, None), DEFAULT_NODES);
    }

    #[test]
    fn haproxy_config_has_a_tcp_frontend_and_one_server_per_port() {
        let cfg = haproxy_config(HAPROXY_VIP, Ipv4Addr::new(10, 244, 2, 2));
        assert!(cfg.contains("mode tcp") && cfg.contains("option splice-auto"));
        assert!(cfg.contains("bind 10.254.200.1:5201"), "{cfg}");
        assert!(cfg.contains("server pod 10.244.2.2:8081"), "{cfg}");
        assert!(!cfg.contains(" check"), "no health checks: {cfg}");
    }

    #[test]
    fn nft_ruleset_is_kube_proxy_shaped_and_in_a_table_of_its_own() {
        let rules = nft_dnat_ruleset(NFT_VIP, Ipv4Addr::new(10, 244, 2, 2));
        assert!(rules.starts_with("table ip ovlbench {"), "{rules}");
        assert!(
            rules.contains("10.254.201.1 . tcp . 8081 : goto service-bench-http"),
            "{rules}"
        );
        assert!(rules.contains("dnat to 10.244.2.2:5201"), "{rules}");
        assert!(rules.contains("type nat hook prerouting priority dstnat"));
        assert_eq!(rules.matches('{').count(), rules.matches('}').count());
    }

    #[test]
    fn load_specs_are_valid_with_distinct_backends() {
        let a = load_spec(0, 10);
        let b = load_spec(9_999, 10);
        assert_eq!(a.backends.len(), 10);
        assert_eq!(b.name, "load-9999");
        let settings = overlayd_proto::service::spec::ServiceSettings::unrestricted();
        assert!(a.validate(&settings).is_ok() && b.validate(&settings).is_ok());
        assert!(!a.health_check.enabled);
        let all: std::collections::HashSet<_> = (0..10_000)
            .flat_map(|i| load_spec(i, 10).backends)
            .collect();
        assert_eq!(all.len(), 100_000);
    }

    #[test]
    fn add_rates_compare_the_first_and_the_last_tenth_of_the_load() {
        let marks = (1..=100)
            .map(|k| LoadMark {
                services: k * 10,
                // 100 adds/s for the first half, 10 adds/s after.
                seconds: if k <= 50 {
                    k as f64 * 0.1
                } else {
                    5.0 + (k - 50) as f64
                },
            })
            .collect();
        let memory = Memory {
            services: 1000,
            endpoints: 10,
            batch: 0,
            load_seconds: 55.0,
            load_marks: marks,
            converge_seconds: None,
            nodes: Vec::new(),
        };
        let (first, last) = memory.add_rates().unwrap();
        assert!((first - 100.0).abs() < 1e-6, "{first}");
        assert!((last - 10.0).abs() < 1e-6, "{last}");
        // Batches: a mark per 500 of 2000.
        let batched = Memory {
            services: 2000,
            load_marks: [(500, 1.0), (1000, 2.0), (1500, 4.0), (2000, 9.0)]
                .map(|(services, seconds)| LoadMark { services, seconds })
                .to_vec(),
            ..memory
        };
        assert_eq!(batched.add_rates(), Some((500.0, 100.0)));
    }
}
