//! Talking to a lab node's daemon through the `overlayd` CLI, as a user would.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::netns::{self, NetnsError};

/// How long one CLI call may take before it counts as hung.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// `overlayd status --json`, the fields the lab reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Status {
    pub node: String,
    pub ready: bool,
    /// The pod subnet in force: configured or claimed by gossip.
    pub pod_subnet: Ipv4Net,
}

/// One entry of `overlayd members --json`: a gossip member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// Its gossip address.
    pub address: SocketAddr,
    /// Its pod subnet; `None` while it has not claimed one.
    pub subnet: Option<Ipv4Net>,
    pub state: MemberState,
    pub incarnation: u64,
    /// Changes each time the member's daemon starts.
    pub generation: u64,
    /// Milliseconds since this node last heard from it directly; `None` for itself and
    /// for members only heard of through others.
    pub last_heard_ms: Option<u64>,
}

/// A gossip member's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    /// Failed a probe; declared dead unless it refutes in time.
    Suspect,
    Dead,
    /// Left gracefully (its daemon was stopped).
    Left,
}

#[derive(Deserialize)]
struct Members {
    members: Vec<Member>,
}

/// One entry of `overlayd peers --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    pub name: String,
    #[serde(default)]
    pub underlay: String,
    #[serde(default)]
    pub pod_subnet: String,
    /// `host-gw`, `udp`, …
    pub path: String,
    #[serde(default)]
    pub tx_packets: u64,
    #[serde(default)]
    pub tx_bytes: u64,
    #[serde(default)]
    pub rx_packets: u64,
    #[serde(default)]
    pub rx_bytes: u64,
    #[serde(default)]
    pub drops: u64,
}

#[derive(Deserialize)]
struct Peers {
    peers: Vec<PeerReport>,
}

/// `overlayd pod add --json`, the fields the lab reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PodAdded {
    pub name: String,
    pub ip: Ipv4Addr,
}

/// Why a CLI call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Run(#[from] NetnsError),
    #[error("`overlayd {args}` printed output that is not the expected JSON ({source}): {stdout}")]
    Json {
        args: String,
        source: serde_json::Error,
        stdout: String,
    },
}

/// Runs `overlayd ARGS` inside node namespace `ns` with `OVERLAYD_SOCKET=socket`.
/// Returns `Err` iff it cannot start, hangs, or exits non-zero.
pub fn overlayd(bin: &Path, ns: &str, socket: &Path, args: &[&str]) -> Result<Output, NetnsError> {
    let mut cmd = netns::command(ns, bin)?;
    cmd.args(args).env("OVERLAYD_SOCKET", socket);
    netns::output_checked(cmd, CLI_TIMEOUT)
}

fn json<T: serde::de::DeserializeOwned>(
    bin: &Path,
    ns: &str,
    socket: &Path,
    args: &[&str],
) -> Result<T, ClientError> {
    let output = overlayd(bin, ns, socket, args)?;
    serde_json::from_slice(&output.stdout).map_err(|source| ClientError::Json {
        args: args.join(" "),
        source,
        stdout: String::from_utf8_lossy(&output.stdout).trim().to_string(),
    })
}

pub fn status(bin: &Path, ns: &str, socket: &Path) -> Result<Status, ClientError> {
    json(bin, ns, socket, &["status", "--json"])
}

pub fn peers(bin: &Path, ns: &str, socket: &Path) -> Result<Vec<PeerReport>, ClientError> {
    json::<Peers>(bin, ns, socket, &["peers", "--json"]).map(|p| p.peers)
}

pub fn members(bin: &Path, ns: &str, socket: &Path) -> Result<Vec<Member>, ClientError> {
    json::<Members>(bin, ns, socket, &["members", "--json"]).map(|m| m.members)
}

/// `overlayd pod add NAME --netns NETNS_PATH --json`.
pub fn pod_add(
    bin: &Path,
    ns: &str,
    socket: &Path,
    pod: &str,
    pod_netns: &Path,
) -> Result<PodAdded, ClientError> {
    let netns_path = pod_netns.to_string_lossy();
    json(
        bin,
        ns,
        socket,
        &["pod", "add", pod, "--netns", &netns_path, "--json"],
    )
}

/// `overlayd pod del NAME`.
pub fn pod_del(bin: &Path, ns: &str, socket: &Path, pod: &str) -> Result<(), ClientError> {
    overlayd(bin, ns, socket, &["pod", "del", pod])?;
    Ok(())
}
