//! A lab: the namespaces, daemons and pods of one cluster on this host, keyed by the lab's
//! name so several labs (and several test processes) can run side by side.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::client::{self, ClientError, Member, PeerReport, ServiceInfo, ServiceReport, Status};
use crate::config::{NodePaths, gossip_key_path, node_config, pki_dir};
use crate::netns::{self, NetnsError};
use crate::process;
use crate::topology::{NodeSpec, Segment, Topology};

/// Every lab keeps its files in `RUN_ROOT/NAME/`.
pub const RUN_ROOT: &str = "/run/overlayd-lab";

/// How long [`Lab::up`] and [`Lab::start_daemon`] wait for daemons to report ready, and
/// then (with gossip) for every node to list every other one as a peer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Lab::stop_daemon`] waits for a daemon to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Pause between two looks at the daemons while waiting for them.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How long one `overlayd ca init` or `cert issue` may take.
const PKI_TIMEOUT: Duration = Duration::from_secs(30);

/// Log lines quoted in an error about a daemon.
const LOG_TAIL_LINES: usize = 15;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("lab bench: {0}")]
    Bench(String),
    #[error("lab partition: {0}")]
    Partition(String),
    #[error("lab name {0:?} is not valid: use 1 to 8 characters of [a-z0-9]")]
    BadName(String),
    #[error(
        "lab {name:?} already exists ({what}); remove it with `overlayd lab down --name {name}` \
         or pick another --name"
    )]
    AlreadyExists { name: String, what: String },
    #[error(
        "no lab named {name:?} is up (no {path}); start one with `overlayd lab up --name {name}`"
    )]
    NotFound { name: String, path: String },
    #[error(
        "lab {lab:?} has no {what} named {target:?}; `overlayd lab ps --name {lab}` lists them"
    )]
    UnknownTarget {
        lab: String,
        what: &'static str,
        target: String,
    },
    #[error("node {node:?} runs no daemon (daemon = false in the topology)")]
    NoDaemon { node: String },
    #[error("the daemon of node {node:?} is not running; start it first")]
    NotRunning { node: String },
    #[error("the daemon of node {node:?} is already running (pid {pid})")]
    AlreadyRunning { node: String, pid: u32 },
    #[error("no command given; put it after `--`")]
    NoCommand,
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("node {node:?}: {source}")]
    Client { node: String, source: ClientError },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("lab state {path} is unreadable ({source}); remove the lab with `overlayd lab down`")]
    State {
        path: String,
        source: serde_json::Error,
    },
    #[error("cannot make the lab's PKI (topology has quic): {0}")]
    Pki(String),
    #[error("cannot write the config of node {node:?}: {reason}")]
    Config { node: String, reason: String },
    #[error(
        "node {node:?}: {reason}; see its log {log}{}",
        if tail.is_empty() { String::new() } else { format!(", which ends with:\n{tail}") }
    )]
    NotReady {
        node: String,
        reason: String,
        log: String,
        tail: String,
    },
    #[error(
        "the daemon of node {node:?} (pid {pid}) did not exit within {} s of SIGTERM; \
         see its log {log}, or end it with `overlayd lab kill {node}`",
        STOP_TIMEOUT.as_secs()
    )]
    DidNotExit { node: String, pid: u32, log: String },
    #[error("processes {pids:?} of lab {name:?} survived SIGKILL; its namespaces may linger")]
    Survivors { name: String, pids: Vec<u32> },
}

/// A pod the lab added through a node's daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// `NODE-pN`
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    /// `ovl-LAB-NODE-pN`
    pub netns: String,
}

/// What `lab.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LabState {
    name: String,
    overlayd_bin: PathBuf,
    topology: Topology,
    nodes: Vec<NodeState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeState {
    name: String,
    pid: Option<u32>,
    /// The pod subnet the daemon reported when it last became ready (claimed or
    /// configured); `None` before that.
    #[serde(default)]
    pod_subnet: Option<Ipv4Net>,
    pods: Vec<Pod>,
}

/// A lab that is up. Obtained from [`Lab::up`] (wrapped in a [`LabGuard`]) or
/// [`Lab::open`]; changes are saved to `lab.json` as they happen.
#[derive(Debug)]
pub struct Lab {
    run_dir: PathBuf,
    state: LabState,
}

/// One node of a lab, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    lab: &'a Lab,
    spec: &'a NodeSpec,
    state: &'a NodeState,
}

/// Tears the lab down when dropped (also while a test panics), unless [`LabGuard::keep`].
#[derive(Debug)]
pub struct LabGuard {
    lab: Option<Lab>,
}

/// `overlayd lab ps`: what runs where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ps {
    pub nodes: Vec<PsNode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PsNode {
    pub name: String,
    /// `None` when the daemon is not running (or the node has none).
    pub pid: Option<u32>,
    pub segment: String,
    /// `node.zone` (the segment's unless the node names its own).
    pub zone: String,
    pub underlay: Ipv4Addr,
    /// [`Node::pod_subnet`]: `None` while a claiming node's daemon has not reported one.
    pub subnet: Option<Ipv4Net>,
    pub pods: Vec<PsPod>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PsPod {
    pub name: String,
    pub ip: Ipv4Addr,
}

/// `/run/overlayd-lab/LAB`
pub fn run_dir(lab: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(lab)
}

/// `ovl-LAB-`: every namespace of the lab starts with it, and no other lab's does.
pub fn netns_prefix(lab: &str) -> String {
    format!("ovl-{lab}-")
}

/// `ovl-LAB-router`
pub fn router_netns(lab: &str) -> String {
    format!("ovl-{lab}-router")
}

/// `ovl-LAB-NODE`
pub fn node_netns(lab: &str, node: &str) -> String {
    format!("ovl-{lab}-{node}")
}

/// `ovl-LAB-POD`, where pod names are `NODE-pN`.
pub fn pod_netns(lab: &str, pod: &str) -> String {
    format!("ovl-{lab}-{pod}")
}

/// The namespaces of lab `lab` that exist now (whatever state its files are in).
pub fn lab_namespaces(lab: &str) -> io::Result<Vec<String>> {
    let prefix = netns_prefix(lab);
    Ok(netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect())
}

/// Returns `Err` unless `name` is 1 to 8 characters of `[a-z0-9]`.
pub fn validate_lab_name(name: &str) -> Result<(), LabError> {
    let valid = (1..=8).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(LabError::BadName(name.into()))
    }
}

/// `cluster.domain` when the config does not set it.
const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

impl Lab {
    /// Builds lab `name` from `topology`: namespaces, segments, node configs (and with
    /// gossip the key `RUN/gossip.key`), daemons and pods. Before it adds pods it waits up
    /// to [`READY_TIMEOUT`] until every daemon reports ready and then, with gossip, up to
    /// as long again until they have converged ([`Lab::wait_converged`]), so pods can
    /// talk at once.
    ///
    /// Returns `Err` if a lab of that name exists or any step fails; the half-built lab
    /// is then torn down, keeping only the daemons' logs and configs in its run dir.
    pub fn up(name: &str, topology: &Topology, overlayd_bin: &Path) -> Result<LabGuard, LabError> {
        validate_lab_name(name)?;
        let run_dir = run_dir(name);
        let state_file = run_dir.join("lab.json");
        if state_file.exists() {
            return Err(LabError::AlreadyExists {
                name: name.into(),
                what: format!("{} exists", state_file.display()),
            });
        }
        let leftover = lab_namespaces(name).map_err(io_err(netns::NETNS_DIR))?;
        if !leftover.is_empty() {
            return Err(LabError::AlreadyExists {
                name: name.into(),
                what: format!("namespaces {leftover:?} exist"),
            });
        }
        // Only logs of an earlier failed `up` can be here; start afresh.
        remove_dir_if_exists(&run_dir)?;
        fs::create_dir_all(&run_dir).map_err(io_err(&run_dir))?;
        let overlayd_bin = std::path::absolute(overlayd_bin).map_err(io_err(overlayd_bin))?;
        let nodes = topology
            .nodes()
            .iter()
            .map(|n| NodeState {
                name: n.name.clone(),
                pid: None,
                pod_subnet: None,
                pods: Vec::new(),
            })
            .collect();
        let mut lab = Lab {
            run_dir,
            state: LabState {
                name: name.into(),
                overlayd_bin,
                topology: topology.clone(),
                nodes,
            },
        };
        match lab.build() {
            Ok(()) => Ok(LabGuard { lab: Some(lab) }),
            Err(e) => {
                if let Err(cleanup) = teardown(name, true) {
                    eprintln!(
                        "overlayd-lab: cleaning up after the failed `up` of lab {name:?}: {cleanup}"
                    );
                }
                Err(e)
            }
        }
    }

    /// Opens lab `name` from its `lab.json`.
    pub fn open(name: &str) -> Result<Lab, LabError> {
        validate_lab_name(name)?;
        let run_dir = run_dir(name);
        let path = run_dir.join("lab.json");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LabError::NotFound {
                    name: name.into(),
                    path: path.display().to_string(),
                });
            }
            Err(e) => {
                return Err(LabError::Io {
                    path: path.display().to_string(),
                    source: e,
                });
            }
        };
        let state = serde_json::from_str(&text).map_err(|source| LabError::State {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Lab { run_dir, state })
    }

    /// Removes lab `name` entirely; a lab that does not exist is not an error.
    ///
    /// Needs nothing but the name, so it also cleans up after a crashed or killed `up`:
    /// it terminates (SIGTERM, SIGKILL after 5 s) every process inside an `ovl-NAME-*`
    /// namespace and every daemon whose pid file and command line match the lab, deletes
    /// those namespaces and removes the run dir. Processes found that are children of the
    /// caller are reaped here, so stop (and wait for) your own helpers before calling it.
    pub fn down(name: &str) -> Result<(), LabError> {
        teardown(name, false)
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// `/run/overlayd-lab/LAB`
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The cluster's DNS domain: `[config.cluster] domain` of the topology, or the
    /// daemon's default.
    pub fn cluster_domain(&self) -> String {
        self.topology()
            .config()
            .get("cluster")
            .and_then(|c| c.get("domain"))
            .and_then(|d| d.as_str())
            .unwrap_or(DEFAULT_CLUSTER_DOMAIN)
            .to_string()
    }

    pub fn topology(&self) -> &Topology {
        &self.state.topology
    }

    /// The `overlayd` binary the lab runs.
    pub fn overlayd_bin(&self) -> &Path {
        &self.state.overlayd_bin
    }

    /// `ovl-LAB-router`
    pub fn router_netns(&self) -> String {
        router_netns(self.name())
    }

    /// Returns `Err` iff the lab has no node `name`.
    pub fn node(&self, name: &str) -> Result<Node<'_>, LabError> {
        self.nodes()
            .find(|n| n.name() == name)
            .ok_or_else(|| self.unknown("node", name))
    }

    /// The nodes in topology order.
    pub fn nodes(&self) -> impl Iterator<Item = Node<'_>> {
        self.state
            .topology
            .nodes()
            .iter()
            .zip(&self.state.nodes)
            .map(|(spec, state)| Node {
                lab: self,
                spec,
                state,
            })
    }

    /// Returns `Err` iff the lab has no pod `name`.
    pub fn pod(&self, name: &str) -> Result<&Pod, LabError> {
        self.pods()
            .find(|p| p.name == name)
            .ok_or_else(|| self.unknown("pod", name))
    }

    /// All pods, node by node.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.state.nodes.iter().flat_map(|n| &n.pods)
    }

    /// The namespace of a node, a pod, or `router`.
    pub fn netns_of(&self, target: &str) -> Result<String, LabError> {
        if target == "router" {
            return Ok(self.router_netns());
        }
        if let Ok(node) = self.node(target) {
            return Ok(node.netns());
        }
        if let Ok(pod) = self.pod(target) {
            return Ok(pod.netns.clone());
        }
        Err(self.unknown("node or pod", target))
    }

    /// A command that runs `program` in the namespace of `target` (node, pod or `router`);
    /// inside a node with a daemon, `OVERLAYD_SOCKET` points at that daemon.
    pub fn command(
        &self,
        target: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<Command, LabError> {
        let mut cmd = netns::command(&self.netns_of(target)?, program)?;
        // `overlayd` inside the lab is the binary that runs the lab's daemons.
        if let Some(dir) = self.overlayd_bin().parent() {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let joined = std::env::join_paths(
                std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path)),
            );
            if let Ok(joined) = joined {
                cmd.env("PATH", joined);
            }
        }
        if let Ok(node) = self.node(target)
            && node.spec.daemon
        {
            cmd.env("OVERLAYD_SOCKET", node.socket_path());
        }
        Ok(cmd)
    }

    /// Runs `cmd` (program and arguments) in `target` as [`Lab::command`] does, with
    /// this process's stdin, stdout and stderr, and returns its exit status.
    pub fn exec(&self, target: &str, cmd: &[String]) -> Result<ExitStatus, LabError> {
        let (program, args) = cmd.split_first().ok_or(LabError::NoCommand)?;
        let mut command = self.command(target, program)?;
        command.args(args);
        let describe = netns::describe(&command);
        command.status().map_err(|source| {
            LabError::Netns(NetnsError::Spawn {
                command: describe,
                source,
            })
        })
    }

    /// Runs `overlayd ARGS` against the daemon of `node`. Returns `Err` iff it fails.
    pub fn overlayd(&self, node: &str, args: &[&str]) -> Result<Output, LabError> {
        let node = self.daemon_node(node)?;
        client::overlayd(
            self.overlayd_bin(),
            &node.netns(),
            &node.socket_path(),
            args,
        )
        .map_err(|e| node.client_error(e.into()))
    }

    /// `overlayd status --json` of `node`.
    pub fn status(&self, node: &str) -> Result<Status, LabError> {
        let node = self.daemon_node(node)?;
        client::status(self.overlayd_bin(), &node.netns(), &node.socket_path())
            .map_err(|e| node.client_error(e))
    }

    /// `overlayd peers --json` of `node`: the peers its data path uses.
    pub fn peers(&self, node: &str) -> Result<Vec<PeerReport>, LabError> {
        let node = self.daemon_node(node)?;
        client::peers(self.overlayd_bin(), &node.netns(), &node.socket_path())
            .map_err(|e| node.client_error(e))
    }

    /// `overlayd members --json` of `node`: the gossip members it knows, itself included.
    /// Returns `Err` if the node runs no daemon, it runs without gossip, or the call fails.
    pub fn members(&self, node: &str) -> Result<Vec<Member>, LabError> {
        let node = self.daemon_node(node)?;
        client::members(self.overlayd_bin(), &node.netns(), &node.socket_path())
            .map_err(|e| node.client_error(e))
    }

    /// `overlayd service list --json` on `node`: every Service the cluster has.
    pub fn service_list(&self, node: &str) -> Result<Vec<ServiceInfo>, LabError> {
        let node = self.daemon_node(node)?;
        client::service_list(self.overlayd_bin(), &node.netns(), &node.socket_path())
            .map_err(|e| node.client_error(e))
    }

    /// `overlayd services --json` on `node`: its proxy's view, backends and counters.
    pub fn services(&self, node: &str) -> Result<Vec<ServiceReport>, LabError> {
        let node = self.daemon_node(node)?;
        client::services(self.overlayd_bin(), &node.netns(), &node.socket_path())
            .map_err(|e| node.client_error(e))
    }

    /// `overlayd service ARGS… --json` on `node` (`add …`, `get NAME`, `del NAME`).
    pub fn service(&self, node: &str, args: &[&str]) -> Result<ServiceInfo, LabError> {
        let node = self.daemon_node(node)?;
        client::service(
            self.overlayd_bin(),
            &node.netns(),
            &node.socket_path(),
            args,
        )
        .map_err(|e| node.client_error(e))
    }

    /// Adds the next pod `NODE-pN` of `node`: creates its namespace and asks the daemon to
    /// attach it (`overlayd pod add NODE-pN --netns /run/netns/ovl-LAB-NODE-pN --json`).
    pub fn add_pod(&mut self, node: &str) -> Result<Pod, LabError> {
        let index = self.node_index(node)?;
        let n = self.state.nodes[index].pods.len() + 1;
        let pod = self.attach_pod(index, n)?;
        self.state.nodes[index].pods.push(pod.clone());
        self.save()?;
        Ok(pod)
    }

    /// What runs where.
    pub fn ps(&self) -> Ps {
        let nodes = self
            .nodes()
            .map(|n| PsNode {
                name: n.name().into(),
                pid: n.pid(),
                segment: n.spec.segment.clone(),
                zone: n.spec.zone.clone(),
                underlay: n.underlay(),
                subnet: n.pod_subnet(),
                pods: n
                    .pods()
                    .iter()
                    .map(|p| PsPod {
                        name: p.name.clone(),
                        ip: p.ip,
                    })
                    .collect(),
            })
            .collect();
        Ps { nodes }
    }

    /// Kills the daemon of `node` with SIGKILL and waits until it is gone, as in a crash:
    /// it leaves its kernel state behind and does not leave the gossip cluster.
    pub fn kill_daemon(&mut self, node: &str) -> Result<(), LabError> {
        let pid = self.running_pid(node)?;
        if !process::kill_now(pid) {
            return Err(LabError::Survivors {
                name: self.name().into(),
                pids: vec![pid],
            });
        }
        self.forget_daemon(node)
    }

    /// Makes `node` leave the cluster for good with `overlayd leave`: it announces it,
    /// removes its data path and exits. Waits up to [`STOP_TIMEOUT`] for it to exit.
    pub fn leave_daemon(&mut self, node: &str) -> Result<(), LabError> {
        let pid = self.running_pid(node)?;
        let out = self.overlayd(node, &["leave"])?;
        if !out.status.success() {
            return Err(LabError::Io {
                path: format!("overlayd leave on {node}"),
                source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
            });
        }
        self.wait_exited(node, pid)
    }

    /// Waits up to [`STOP_TIMEOUT`] for the daemon `pid` of `node` to exit, then forgets it.
    fn wait_exited(&mut self, node: &str, pid: u32) -> Result<(), LabError> {
        self.await_exit(node, pid)?;
        self.forget_daemon(node)
    }

    /// Waits up to [`STOP_TIMEOUT`] for the daemon `pid` of `node` to exit.
    fn await_exit(&self, node: &str, pid: u32) -> Result<(), LabError> {
        if !process::wait_gone(&[pid], STOP_TIMEOUT).is_empty() {
            return Err(LabError::DidNotExit {
                node: node.into(),
                pid,
                log: self.node(node)?.log_path().display().to_string(),
            });
        }
        Ok(())
    }

    /// Stops the daemon of `node` with SIGTERM, as an operator would: a stop, not a
    /// leave — with the default `daemon.on_exit = "keep"` its data path stays and nothing
    /// is announced. Waits up to [`STOP_TIMEOUT`] for it to exit.
    pub fn stop_daemon(&mut self, node: &str) -> Result<(), LabError> {
        let pid = self.running_pid(node)?;
        process::signal(pid, nix::sys::signal::Signal::SIGTERM).map_err(|e| LabError::Io {
            path: format!("/proc/{pid}"),
            source: e.into(),
        })?;
        self.wait_exited(node, pid)
    }

    /// Hands the data path of `node` over to a new daemon process (`overlayd run
    /// --takeover`, an upgrade): the running one answers and exits, the new one starts in
    /// its place. Waits up to [`STOP_TIMEOUT`] for the old one to exit, then as
    /// [`Lab::start_daemon`] for the new one to be ready and converged.
    pub fn hand_over_daemon(&mut self, node: &str) -> Result<(), LabError> {
        let old = self.running_pid(node)?;
        let index = self.node_index(node)?;
        self.spawn_daemon_with(index, &["--takeover"], &[])?;
        self.await_exit(node, old)?;
        self.save()?;
        self.settle(&[node.to_string()])
    }

    /// Starts the daemon of `node` again with the same config and waits until it is ready
    /// and, with gossip, until every running daemon lists every other one as a peer
    /// ([`Lab::wait_converged`]); each wait is bounded by [`READY_TIMEOUT`].
    pub fn start_daemon(&mut self, node: &str) -> Result<(), LabError> {
        self.start_daemon_with_env(node, &[])
    }

    /// [`Lab::start_daemon`] with extra environment variables for this one start (a test
    /// hook, e.g. `OVERLAYD_TEST_UNCHECKED_CERT=1` to start a node with a certificate its
    /// peers refuse).
    pub fn start_daemon_with_env(
        &mut self,
        node: &str,
        env: &[(&str, &str)],
    ) -> Result<(), LabError> {
        if let Some(pid) = self.daemon_node(node)?.pid() {
            return Err(LabError::AlreadyRunning {
                node: node.into(),
                pid,
            });
        }
        let index = self.node_index(node)?;
        self.spawn_daemon_with(index, &[], env)?;
        self.save()?;
        self.settle(&[node.to_string()])
    }

    /// Waits until every node in `nodes` reports `ready: true`. Returns `Err` naming the
    /// first node whose daemon exits or is not ready within `timeout`.
    pub fn wait_ready(&self, nodes: &[String], timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let mut last_error = std::collections::HashMap::new();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for name in pending {
                let node = self.daemon_node(name)?;
                if node.pid().is_none() {
                    return Err(node.not_ready("its daemon exited during startup".into()));
                }
                match self.status(name) {
                    Ok(status) if status.ready => continue,
                    Ok(_) => {
                        last_error.insert(name, "it reports ready=false".to_string());
                    }
                    Err(e) => {
                        last_error.insert(name, e.to_string());
                    }
                }
                still.push(name);
            }
            pending = still;
            if let Some(&name) = pending.first() {
                if Instant::now() >= deadline {
                    let node = self.daemon_node(name)?;
                    let why = last_error.remove(name).unwrap_or_default();
                    return Err(node.not_ready(format!(
                        "daemon not ready after {} s ({why})",
                        timeout.as_secs()
                    )));
                }
                std::thread::sleep(POLL_INTERVAL);
            }
        }
        Ok(())
    }

    fn build(&mut self) -> Result<(), LabError> {
        self.save()?;
        self.build_network()?;
        if self.topology().seed().is_some() {
            write_gossip_key(&gossip_key_path(&self.run_dir))?;
        }
        if self.topology().quic() {
            self.make_pki()?;
        }
        let mut daemons = Vec::new();
        for index in 0..self.state.nodes.len() {
            let spec = &self.state.topology.nodes()[index];
            if !spec.daemon {
                continue;
            }
            let name = spec.name.clone();
            self.write_config(index)?;
            self.spawn_daemon(index)?;
            daemons.push(name);
        }
        self.save()?;
        self.settle(&daemons)?;
        for index in 0..self.state.nodes.len() {
            for n in 1..=self.state.topology.nodes()[index].pods as usize {
                let pod = self.attach_pod(index, n)?;
                self.state.nodes[index].pods.push(pod);
            }
        }
        self.save()?;
        // Pods reach the Services that select them through gossip: up means they have.
        self.wait_services(READY_TIMEOUT)
    }

    /// The lab's cluster CA and a certificate for every node with `[quic]`, in
    /// [`pki_dir`] (`RUN/pki`), made by the lab's own `overlayd` binary as an operator
    /// would: `overlayd ca init --dir RUN/pki`, then `overlayd cert issue NODE --ca-dir
    /// RUN/pki --out RUN/pki` per node (keys 0600, written by the CLI).
    fn make_pki(&self) -> Result<(), LabError> {
        let dir = pki_dir(&self.run_dir);
        let dir_text = dir.to_string_lossy().into_owned();
        let run = |args: &[&str]| -> Result<(), LabError> {
            let mut cmd = Command::new(self.overlayd_bin());
            cmd.args(args);
            netns::output_checked(cmd, PKI_TIMEOUT)
                .map(drop)
                .map_err(|e| LabError::Pki(e.to_string()))
        };
        run(&["ca", "init", "--dir", &dir_text])?;
        for node in self.topology().nodes().iter().filter(|n| n.quic) {
            run(&[
                "cert", "issue", &node.name, "--ca-dir", &dir_text, "--out", &dir_text,
            ])?;
        }
        Ok(())
    }

    /// Waits until the daemons of `nodes`, just started, are ready, records their pod
    /// subnets and, with gossip, waits until the lab has converged and records the
    /// subnets of all running daemons again.
    fn settle(&mut self, nodes: &[String]) -> Result<(), LabError> {
        self.wait_ready(nodes, READY_TIMEOUT)?;
        self.record_subnets(nodes)?;
        if self.topology().gossip() {
            self.wait_converged(READY_TIMEOUT)?;
            // A claim that lost a conflict while converging has moved, on any node.
            let running: Vec<String> = self
                .nodes()
                .filter(|n| n.spec.daemon && n.pid().is_some())
                .map(|n| n.name().to_string())
                .collect();
            self.record_subnets(&running)?;
        }
        Ok(())
    }

    /// Saves the pod subnet each daemon of `nodes` reports in `overlayd status`.
    fn record_subnets(&mut self, nodes: &[String]) -> Result<(), LabError> {
        for name in nodes {
            let subnet = self.status(name)?.pod_subnet;
            let index = self.node_index(name)?;
            self.state.nodes[index].pod_subnet = Some(subnet);
        }
        self.save()
    }

    /// The PID of the running daemon of `node`.
    fn running_pid(&self, node: &str) -> Result<u32, LabError> {
        self.daemon_node(node)?
            .pid()
            .ok_or_else(|| LabError::NotRunning { node: node.into() })
    }

    /// Notes that the daemon of `node` is gone: no PID in the state, no pid file.
    fn forget_daemon(&mut self, node: &str) -> Result<(), LabError> {
        let pid_file = self.node(node)?.paths().pid;
        let index = self.node_index(node)?;
        self.state.nodes[index].pid = None;
        remove_file_if_exists(&pid_file)?;
        self.save()
    }

    /// Router namespace with one bridge per segment, then one namespace per node whose
    /// `eth0` is a veth to its segment's bridge.
    fn build_network(&self) -> Result<(), LabError> {
        let router = self.router_netns();
        create_netns(&router)?;
        netns::run_in(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        // The daemons' DNS upstream (see `config::node_config`); ended by `lab down` with
        // every other process in the lab's namespaces.
        if self.topology().nodes().iter().any(|n| n.daemon) {
            netns::spawn_in(&router, self.overlayd_bin(), &["lab", "resolve"])?;
        }
        for segment in self.topology().segments() {
            let bridge = segment.bridge();
            let address = format!(
                "{}/{}",
                segment.router_address(),
                segment.subnet.prefix_len()
            );
            netns::run_in(&router, &["ip", "link", "add", &bridge, "type", "bridge"])?;
            netns::run_in(&router, &["ip", "addr", "add", &address, "dev", &bridge])?;
            netns::run_in(&router, &["ip", "link", "set", &bridge, "up"])?;
        }
        for node in self.nodes() {
            let segment = node.segment();
            let ns = node.netns();
            create_netns(&ns)?;
            // Made from inside the router so no end ever appears in the host namespace.
            netns::run_in(
                &router,
                &[
                    "ip",
                    "link",
                    "add",
                    node.name(),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    &ns,
                ],
            )?;
            netns::run_in(
                &router,
                &[
                    "ip",
                    "link",
                    "set",
                    node.name(),
                    "master",
                    &segment.bridge(),
                    "up",
                ],
            )?;
            let address = format!("{}/{}", node.underlay(), segment.subnet.prefix_len());
            netns::run_in(&ns, &["ip", "addr", "add", &address, "dev", "eth0"])?;
            netns::run_in(&ns, &["ip", "link", "set", "eth0", "up"])?;
            netns::run_in(
                &ns,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &segment.router_address().to_string(),
                ],
            )?;
            // A node routes for its pods, as a Kubernetes node does.
            netns::run_in(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        }
        Ok(())
    }

    fn write_config(&self, index: usize) -> Result<(), LabError> {
        let spec = &self.topology().nodes()[index];
        let paths = NodePaths::new(&self.run_dir, &spec.name);
        let config_error = |reason: String| LabError::Config {
            node: spec.name.clone(),
            reason,
        };
        let config = node_config(self.topology(), spec, self.name())
            .map_err(|e| config_error(e.to_string()))?;
        let text = toml::to_string(&config).map_err(|e| config_error(e.to_string()))?;
        fs::create_dir_all(&paths.state_dir).map_err(io_err(&paths.state_dir))?;
        fs::write(&paths.config, text).map_err(io_err(&paths.config))
    }

    /// Starts `overlayd run --config RUN/NODE.toml` in the node's namespace, in its own
    /// session and in the host mount namespace, output appended to `RUN/NODE.log`.
    fn spawn_daemon(&mut self, index: usize) -> Result<(), LabError> {
        self.spawn_daemon_with(index, &[], &[])
    }

    /// [`Lab::spawn_daemon`] with extra arguments to `overlayd run` and extra environment.
    fn spawn_daemon_with(
        &mut self,
        index: usize,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<(), LabError> {
        let name = self.state.nodes[index].name.clone();
        let paths = NodePaths::new(&self.run_dir, &name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&paths.log)
            .map_err(io_err(&paths.log))?;
        let log2 = log.try_clone().map_err(io_err(&paths.log))?;
        let mut cmd = netns::daemon_command(&node_netns(self.name(), &name), self.overlayd_bin())?;
        cmd.arg("run")
            .arg("--config")
            .arg(&paths.config)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log)
            .envs(env.iter().copied());
        let describe = netns::describe(&cmd);
        // The child is not waited for here: it outlives `lab up`. When this process is its
        // parent, `process::is_alive` reaps it once it exits.
        let child = cmd.spawn().map_err(|source| NetnsError::Spawn {
            command: describe,
            source,
        })?;
        let pid = child.id();
        fs::write(&paths.pid, format!("{pid}\n")).map_err(io_err(&paths.pid))?;
        self.state.nodes[index].pid = Some(pid);
        Ok(())
    }

    /// Creates the namespace of pod `NODE-pN` and has the node's daemon attach it.
    fn attach_pod(&self, index: usize, n: usize) -> Result<Pod, LabError> {
        let node = self.daemon_node(&self.state.nodes[index].name)?;
        let name = format!("{}-p{n}", node.name());
        let ns = pod_netns(self.name(), &name);
        create_netns(&ns)?;
        let added = client::pod_add(
            self.overlayd_bin(),
            &node.netns(),
            &node.socket_path(),
            &name,
            &netns::path(&ns),
            &node.spec().pod_labels,
        );
        match added {
            Ok(added) => {
                // The pod's server (`overlayd lab serve`); `lab down` ends it with every
                // other process in the lab's namespaces.
                netns::spawn_in(&ns, self.overlayd_bin(), &["lab", "serve", &name])?;
                Ok(Pod {
                    name,
                    node: node.name().into(),
                    ip: added.ip,
                    netns: ns,
                })
            }
            Err(e) => {
                let _ = netns::delete(&ns);
                Err(node.client_error(e))
            }
        }
    }

    fn save(&self) -> Result<(), LabError> {
        let path = self.run_dir.join("lab.json");
        let tmp = self.run_dir.join("lab.json.tmp");
        let text = serde_json::to_string_pretty(&self.state).expect("lab state always serializes");
        fs::write(&tmp, text).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    fn node_index(&self, node: &str) -> Result<usize, LabError> {
        self.state
            .nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| self.unknown("node", node))
    }

    fn daemon_node(&self, node: &str) -> Result<Node<'_>, LabError> {
        let node = self.node(node)?;
        if !node.spec.daemon {
            return Err(LabError::NoDaemon {
                node: node.name().into(),
            });
        }
        Ok(node)
    }

    fn unknown(&self, what: &'static str, target: &str) -> LabError {
        LabError::UnknownTarget {
            lab: self.name().into(),
            what,
            target: target.into(),
        }
    }
}

impl<'a> Node<'a> {
    pub fn name(&self) -> &'a str {
        &self.spec.name
    }

    /// The node as the topology resolved it.
    pub fn spec(&self) -> &'a NodeSpec {
        self.spec
    }

    pub fn segment(&self) -> &'a Segment {
        self.lab
            .topology()
            .segment(&self.spec.segment)
            .expect("a validated topology's nodes are on known segments")
    }

    /// `ovl-LAB-NODE`
    pub fn netns(&self) -> String {
        node_netns(self.lab.name(), self.name())
    }

    /// The address of the node's `eth0`.
    pub fn underlay(&self) -> Ipv4Addr {
        self.spec.underlay
    }

    /// The node's pod subnet: for a daemon node the one its daemon reported (claimed or
    /// configured) when it last became ready, else the topology's. `None` iff the node
    /// claims its subnet and its daemon has not reported one yet. It stays known while the
    /// daemon is down.
    pub fn pod_subnet(&self) -> Option<Ipv4Net> {
        self.state.pod_subnet.or(self.spec.pod_subnet)
    }

    pub fn pods(&self) -> &'a [Pod] {
        &self.state.pods
    }

    /// The daemon's PID while it runs (checked against /proc), else `None`.
    pub fn pid(&self) -> Option<u32> {
        let pid = self.state.pid?;
        process::cmdline_mentions(pid, &self.config_path()).then_some(pid)
    }

    pub fn paths(&self) -> NodePaths {
        NodePaths::new(self.lab.run_dir(), self.name())
    }

    /// `RUN/NODE/overlayd.sock`
    pub fn socket_path(&self) -> PathBuf {
        self.paths().socket
    }

    /// `RUN/NODE.toml`
    pub fn config_path(&self) -> PathBuf {
        self.paths().config
    }

    /// `RUN/NODE.log`
    pub fn log_path(&self) -> PathBuf {
        self.paths().log
    }

    fn client_error(&self, source: ClientError) -> LabError {
        LabError::Client {
            node: self.name().into(),
            source,
        }
    }

    pub(crate) fn not_ready(&self, reason: String) -> LabError {
        let log = self.log_path();
        LabError::NotReady {
            node: self.name().into(),
            reason,
            tail: log_tail(&log, LOG_TAIL_LINES),
            log: log.display().to_string(),
        }
    }
}

impl LabGuard {
    /// Disarms the guard: the lab stays up after this process ends (`overlayd lab up`).
    pub fn keep(mut self) -> Lab {
        self.lab
            .take()
            .expect("the guard holds its lab until dropped or kept")
    }
}

impl Deref for LabGuard {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        self.lab
            .as_ref()
            .expect("the guard holds its lab until dropped or kept")
    }
}

impl DerefMut for LabGuard {
    fn deref_mut(&mut self) -> &mut Lab {
        self.lab
            .as_mut()
            .expect("the guard holds its lab until dropped or kept")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.lab.take()
            && let Err(e) = Lab::down(lab.name())
        {
            eprintln!("overlayd-lab: tearing down lab {:?}: {e}", lab.name());
        }
    }
}

impl fmt::Display for Ps {
    /// A table: one row per node, pods listed as `name=ip`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<[String; 7]> = self
            .nodes
            .iter()
            .map(|n| {
                let pods: Vec<String> = n
                    .pods
                    .iter()
                    .map(|p| format!("{}={}", p.name, p.ip))
                    .collect();
                [
                    n.name.clone(),
                    n.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                    n.segment.clone(),
                    n.zone.clone(),
                    n.underlay.to_string(),
                    n.subnet.map_or_else(|| "-".into(), |s| s.to_string()),
                    pods.join(" "),
                ]
            })
            .collect();
        let header = [
            "NODE", "PID", "SEGMENT", "ZONE", "UNDERLAY", "SUBNET", "PODS",
        ]
        .map(String::from);
        let mut widths = header.clone().map(|h| h.len());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            writeln!(f, "{}", line.join("  ").trim_end())?;
        }
        Ok(())
    }
}

/// Kills the lab's processes, deletes its namespaces and removes its run dir (or, with
/// `keep_logs`, everything in it but `*.log` and `*.toml`).
fn teardown(name: &str, keep_logs: bool) -> Result<(), LabError> {
    validate_lab_name(name)?;
    let run_dir = run_dir(name);
    let namespaces = lab_namespaces(name).map_err(io_err(netns::NETNS_DIR))?;
    let inodes: HashSet<u64> = namespaces
        .iter()
        .filter_map(|ns| netns::inode(ns).ok())
        .collect();
    let mut pids = process::pids_in_namespaces(&inodes);
    pids.extend(daemons_from_pid_files(&run_dir));
    pids.sort_unstable();
    pids.dedup();
    let survivors = process::terminate(&pids);
    let mut first_error = None;
    for ns in &namespaces {
        if let Err(e) = netns::delete(ns) {
            first_error.get_or_insert(LabError::Netns(e));
        }
    }
    if keep_logs {
        remove_all_but_logs(&run_dir)?;
    } else {
        remove_dir_if_exists(&run_dir)?;
    }
    if !survivors.is_empty() {
        return Err(LabError::Survivors {
            name: name.into(),
            pids: survivors,
        });
    }
    first_error.map_or(Ok(()), Err)
}

/// PIDs from `RUN/NODE.pid` files whose process still runs with `RUN/NODE.toml`.
fn daemons_from_pid_files(run_dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "pid") {
            continue;
        }
        let Some(pid) = fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if process::cmdline_mentions(pid, &path.with_extension("toml")) {
            pids.push(pid);
        }
    }
    pids
}

fn remove_all_but_logs(run_dir: &Path) -> Result<(), LabError> {
    let Ok(entries) = fs::read_dir(run_dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log" || e == "toml") {
            continue;
        }
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(io_err(&path))?;
    }
    Ok(())
}

/// Writes a new gossip key, 32 random bytes as 64 lowercase hex digits, readable only by
/// its owner (as `overlayd key generate` makes one).
fn write_gossip_key(path: &Path) -> Result<(), LabError> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(io_err("/dev/urandom"))?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{hex}\n").as_bytes()))
        .map_err(io_err(path))
}

fn create_netns(name: &str) -> Result<(), LabError> {
    netns::add(name)?;
    netns::run_in(name, &["ip", "link", "set", "lo", "up"])?;
    Ok(())
}

fn remove_dir_if_exists(path: &Path) -> Result<(), LabError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LabError::Io {
            path: path.display().to_string(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn remove_file_if_exists(path: &Path) -> Result<(), LabError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LabError::Io {
            path: path.display().to_string(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn io_err(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> LabError {
    let path = path.as_ref().display().to_string();
    move |source| LabError::Io { path, source }
}

/// The last `lines` lines of a log file, indented, or "" if it is empty or unreadable.
fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(text) = fs::read_to_string(path) else {
        return String::new();
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_are_short_lowercase_alphanumerics() {
        for good in ["lab", "t1", "abcdefgh"] {
            assert!(validate_lab_name(good).is_ok(), "{good}");
        }
        for bad in ["", "abcdefghi", "Lab", "a-b", "a/b", "a b"] {
            assert!(validate_lab_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn namespace_names_follow_the_layout() {
        assert_eq!(router_netns("lab"), "ovl-lab-router");
        assert_eq!(node_netns("lab", "n1"), "ovl-lab-n1");
        assert_eq!(pod_netns("lab", "n1-p2"), "ovl-lab-n1-p2");
        assert!(!node_netns("lab2", "n1").starts_with(&netns_prefix("lab")));
    }

    #[test]
    fn ps_json_has_exactly_the_documented_shape() {
        let ps = Ps {
            nodes: vec![PsNode {
                name: "n1".into(),
                pid: None,
                segment: "a".into(),
                zone: "default".into(),
                underlay: Ipv4Addr::new(10, 100, 1, 11),
                subnet: Some("10.244.1.0/24".parse().unwrap()),
                pods: vec![PsPod {
                    name: "n1-p1".into(),
                    ip: Ipv4Addr::new(10, 244, 1, 2),
                }],
            }],
        };

        let json = serde_json::to_string(&ps).unwrap();

        assert_eq!(
            json,
            r#"{"nodes":[{"name":"n1","pid":null,"segment":"a","zone":"default","underlay":"10.100.1.11","subnet":"10.244.1.0/24","pods":[{"name":"n1-p1","ip":"10.244.1.2"}]}]}"#
        );
        let table = ps.to_string();
        assert!(
            table.starts_with("NODE  PID  SEGMENT  ZONE     UNDERLAY"),
            "{table}"
        );
        assert!(table.contains("n1-p1=10.244.1.2"), "{table}");
    }
}
