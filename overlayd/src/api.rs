//! The control API: one JSON request per line over a Unix socket, one JSON response line
//! back. The CLI is its only client today; the types are the contract.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use ipnet::Ipv4Net;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::pods::PodRecord;

/// Largest request line the daemon reads; anything longer is refused.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Peers,
    Routes,
    PodAdd {
        name: String,
        #[serde(default)]
        ip: Option<Ipv4Addr>,
        #[serde(default)]
        netns: Option<String>,
    },
    PodDel {
        name: String,
    },
    PodList,
    Members,
    Key {
        action: KeyAction,
        /// The key file, for install/use/remove (read by the daemon).
        #[serde(default)]
        file: Option<std::path::PathBuf>,
    },
}

/// What `overlayd key` does to the running keyring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyAction {
    /// Show the installed keys' fingerprints, primary first.
    List,
    /// Add a key: it decrypts from now on.
    Install,
    /// Make an installed key the primary: it encrypts from now on.
    Use,
    /// Remove a key that is not the primary.
    Remove,
}

/// Every response: `{"ok":true,"result":…}` or `{"ok":false,"error":"…"}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub ready: bool,
    pub underlay_interface: String,
    pub underlay: Ipv4Addr,
    pub pod_subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub vtep_mac: String,
    pub tunnel_port: u16,
    pub vni: u32,
    pub tunnel_mtu: u32,
    pub pod_mtu: u32,
    pub peers: usize,
    pub pods: usize,
    pub uptime_s: u64,
    /// Tunnel drops by reason, every reason listed.
    pub drops: BTreeMap<String, u64>,
    /// Tunnel I/O: TUN packets read, TUN write errors, UDP sends and send errors.
    #[serde(default)]
    pub io: BTreeMap<String, u64>,
    /// With `[gossip]`: membership counts, traffic, drops by reason, key fingerprints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip: Option<crate::gossip::GossipReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Members {
    pub members: Vec<crate::gossip::MemberReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Keys {
    /// Fingerprints of the installed keys, primary first.
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerReport {
    pub name: String,
    pub underlay: Ipv4Addr,
    pub pod_subnet: Ipv4Net,
    pub path: String,
    /// Why the kernel refused this peer's route, if it did (a foreign route in the way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_error: Option<String>,
    pub vtep_mac: String,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub drops: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peers {
    pub peers: Vec<PeerReport>,
    /// Peers left out of routes and the tunnel, with the reason.
    #[serde(default)]
    pub rejected: Vec<RejectedPeer>,
    /// Drops by reason for the node, including those no peer can be blamed for.
    pub drops: BTreeMap<String, u64>,
}

/// A peer the data path does not use: its subnet or address would collide or capture
/// traffic that is not its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RejectedPeer {
    pub name: String,
    pub underlay: Ipv4Addr,
    pub pod_subnet: Ipv4Net,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteReport {
    pub dst: Ipv4Net,
    pub kind: String,
    pub via: Option<Ipv4Addr>,
    pub dev: Option<String>,
    pub src: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Routes {
    pub routes: Vec<RouteReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodList {
    pub pods: Vec<PodRecord>,
}

/// How long the CLI waits for the daemon (pod add does netlink work; it is quick).
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends one request and returns the result, or the daemon's error as `Err`.
pub async fn call<T: DeserializeOwned>(socket: &Path, request: &Request) -> Result<T> {
    tokio::time::timeout(CALL_TIMEOUT, call_inner(socket, request))
        .await
        .map_err(|_| {
            anyhow!(
                "the daemon at {} did not answer within {CALL_TIMEOUT:?}",
                socket.display()
            )
        })?
}

async fn call_inner<T: DeserializeOwned>(socket: &Path, request: &Request) -> Result<T> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot reach the daemon at {}; is `overlayd run` running? (set --socket or OVERLAYD_SOCKET)",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut reply = String::new();
    BufReader::new(read)
        .read_line(&mut reply)
        .await
        .context("reading the daemon's reply")?;
    let response: Response =
        serde_json::from_str(&reply).context("the daemon's reply is not valid JSON")?;
    if !response.ok {
        return Err(anyhow!(
            response
                .error
                .unwrap_or_else(|| "the daemon reported an error".into())
        ));
    }
    Ok(serde_json::from_value(
        response.result.unwrap_or(serde_json::Value::Null),
    )?)
}
