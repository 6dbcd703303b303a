//! The control API's schema: one JSON request per line over the daemon's Unix socket, one
//! JSON response line back. The daemon, the CLI and the lab all use these types, so a
//! renamed or retyped field is a compile error on both sides rather than a silently
//! defaulted value.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::gossip::MemberState;
use crate::service::frontend::{FrontendAddr, FrontendKind};
use crate::service::{Algorithm, Protocol, ResolvedService, ServiceKey, ServiceSpec};
use std::net::SocketAddrV4;

/// Largest request line the daemon reads; anything longer is refused. Large enough for
/// `service apply` of ten thousand Services at once (the socket is root's only).
pub const MAX_REQUEST: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        /// Labels Services select pods by.
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
    PodDel {
        name: String,
    },
    PodList,
    /// Add or replace a Service; any node, the change reaches every node.
    ServiceAdd {
        spec: ServiceSpec,
    },
    /// Add or replace many Services at once (allocated together, one write each).
    ServiceApply {
        specs: Vec<ServiceSpec>,
    },
    ServiceDel {
        namespace: String,
        name: String,
    },
    ServiceGet {
        namespace: String,
        name: String,
    },
    ServiceList,
    /// The operator view: every Service with its backends, their health and counters as
    /// this node's proxy sees them.
    Services,
    Members,
    /// Leave the cluster for good: announce it, remove everything the daemon owns (routes,
    /// TUN, bridge, NAT; pods keep their namespaces), exit. A stop signal does neither.
    Leave,
    /// Hand the data path over to a new process (`overlayd run --takeover`): the daemon
    /// answers with its pid and the peers its data path carries ([`HandOver`]), then stops
    /// as on SIGTERM — no leave, nothing removed — so the new process can bind the ports,
    /// attach the TUN device and forward to those peers at once.
    HandOver,
    Key {
        action: KeyAction,
        /// The key file, for install/use/remove (read by the daemon).
        #[serde(default)]
        file: Option<PathBuf>,
    },
    /// Revoke a node certificate cluster-wide, by fingerprint (64 hex digits, SHA-256 of
    /// its DER): a cluster object `pki/revoked/<fingerprint>` in gossip state. Answered
    /// with [`Revocations`].
    CertRevoke {
        fingerprint: String,
    },
    /// The revocations this node holds ([`Revocations`]).
    CertRevoked,
}

/// The certificates revoked in the cluster, as this node knows them, by fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    pub revoked: Vec<crate::pki::Revocation>,
}

/// The answer to [`Request::HandOver`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOver {
    /// The old process: its state-directory lock is free once it has exited.
    pub pid: u32,
    /// The peers its routes and forwarding table carry (gossip's and the daemon-down ones).
    pub peers: Vec<crate::peer::PeerInfo>,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Services the cluster has.
    pub services: usize,
    /// The cluster DNS responder's counters (queries, answered, nxdomain, forwarded, …);
    /// empty with `dns.enabled = false`.
    pub dns: BTreeMap<String, u64>,
    pub uptime_s: u64,
    /// Tunnel drops by reason, every reason listed.
    pub drops: BTreeMap<String, u64>,
    /// Tunnel I/O: TUN packets read, TUN write errors, UDP sends and send errors.
    pub io: BTreeMap<String, u64>,
    /// With `[gossip]`: membership counts, traffic, drops by reason, key fingerprints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip: Option<GossipReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub members: Vec<MemberReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys {
    /// Fingerprints of the installed keys, primary first.
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    pub name: String,
    pub underlay: Ipv4Addr,
    pub pod_subnet: Ipv4Net,
    pub path: String,
    /// Why the kernel refused this peer's route, if it did (a foreign route in the way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_error: Option<String>,
    pub vtep_mac: String,
    /// Tunnel peers: the largest outer IPv4 packet the underlay path to the peer carries
    /// (bytes); `None` on host-gw, where the kernel discovers path MTU itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_mtu: Option<u32>,
    /// `path_mtu` − 50 (VXLAN over IPv4): the largest pod packet the tunnel carries to
    /// the peer. Below the tunnel device's MTU it is the `mtu` on the peer's route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_mtu: Option<u32>,
    /// What `path_mtu` rests on: `device` (our underlay device; not yet confirmed),
    /// `icmp` (fragmentation needed) or `probe` (the largest probe the peer acked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_mtu_source: Option<String>,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub drops: u64,
    /// The QUIC tunnel to the peer, when it has a quic rung.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<QuicReport>,
    /// Why `path` is the path, and what the probes of every rung say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ladder: Option<LadderReport>,
    /// Dead by gossip, but its node still answers: its daemon is down and its routes stay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub daemon_down: bool,
    /// The fingerprint (hex SHA-256) of the QUIC certificate its gossip record
    /// advertises; peers refuse any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_fingerprint: Option<String>,
}

/// A peer's path ladder, as `overlayd peers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LadderReport {
    /// `policy` (the first allowed path) or `probe` (better ones failed their probes).
    pub reason: String,
    /// Time on the current path.
    pub on_path_ms: u64,
    /// Changes of path since the first choice.
    pub switches: u64,
    /// The member the relay rung goes through, when the pair has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Every candidate, in ladder order.
    pub rungs: Vec<RungReport>,
}

/// One candidate path of a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RungReport {
    pub path: String,
    /// `up`, `down` or `unknown` (not enough probe answers yet).
    pub health: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    /// Lost probes over the recent window.
    pub loss_percent: u32,
}

/// One peer's QUIC tunnel, as `overlayd peers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuicReport {
    /// `connecting`, `connected`, `backoff` (we dial, waiting to retry) or `waiting`
    /// (the peer dials).
    pub state: String,
    /// Smoothed RTT of the connection, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    /// The largest pod packet one datagram carries now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_datagram: Option<u32>,
    /// When the peer's certificate expires (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_not_after: Option<u64>,
    pub reconnects: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The fingerprint (hex SHA-256) of the certificate the peer presented on the live
    /// connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_fingerprint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peers {
    pub peers: Vec<PeerReport>,
    /// Peers left out of routes and the tunnel, with the reason.
    pub rejected: Vec<RejectedPeer>,
    /// Drops by reason for the node, including those no peer can be blamed for.
    pub drops: BTreeMap<String, u64>,
}

/// A peer the data path does not use: its subnet or address would collide or capture
/// traffic that is not its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedPeer {
    pub name: String,
    pub underlay: Ipv4Addr,
    pub pod_subnet: Ipv4Net,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteReport {
    pub dst: Ipv4Net,
    pub kind: String,
    pub via: Option<Ipv4Addr>,
    pub dev: Option<String>,
    pub src: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routes {
    pub routes: Vec<RouteReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodList {
    pub pods: Vec<PodRecord>,
}

/// One pod as the daemon persists it and the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: PathBuf,
    /// The daemon created the namespace (and deletes it with the pod).
    pub netns_owned: bool,
    /// The namespace's inode when the pod was added: a path like /proc/PID/ns/net can come
    /// to name another namespace once the PID is reused, and the daemon must then not
    /// touch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_inode: Option<u64>,
    pub veth: String,
    /// Labels Services select the pod by. (Default: none, as in records written before
    /// pods had labels.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The resolv.conf the daemon wrote for the pod (`/etc/netns/NETNS/resolv.conf`,
    /// which `ip netns exec` puts in place), pointing at the node's cluster DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<PathBuf>,
}

/// One gossip member as `overlayd members` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    pub name: String,
    /// Its gossip address.
    pub address: SocketAddr,
    /// Its pod subnet; `None` while it has not claimed one.
    pub subnet: Option<Ipv4Net>,
    pub state: MemberState,
    pub incarnation: u64,
    /// Changes each time the member's daemon starts.
    pub generation: u64,
    /// Milliseconds since we last heard from it directly; `None` for ourselves and for
    /// members only heard of through others.
    pub last_heard_ms: Option<u64>,
    /// Dead by gossip, but its node still answers: its daemon is down (a restart) and
    /// its routes stay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub daemon_down: bool,
    /// The fingerprint (hex SHA-256) of the QUIC certificate its gossip record
    /// advertises; peers refuse any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_fingerprint: Option<String>,
}

/// Gossip counters for `overlayd status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipReport {
    pub members_alive: usize,
    pub members_suspect: usize,
    pub members_dead: usize,
    pub local_health: u32,
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub datagrams_received: u64,
    pub bytes_received: u64,
    pub drops: BTreeMap<String, u64>,
    pub key_fingerprints: Vec<String>,
}

/// One Service: the spec as given, and what the cluster made of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub spec: ServiceSpec,
    /// Allocated addresses and ports, endpoints and whether it is served.
    pub service: ResolvedService,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceList {
    pub services: Vec<ServiceInfo>,
}

/// `overlayd services`: every Service as this node serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicesReport {
    pub services: Vec<ServiceReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    pub service: ResolvedService,
    /// LoadBalancer: the live node that holds the external IP now.
    pub lb_holder: Option<String>,
    /// This node's proxy for each of the Service's ports: backends with health and
    /// counters, and the listeners serving it.
    pub ports: Vec<PortReport>,
}

// ---- the proxy's view, per Service port (built by overlayd's proxy) ------------------

/// A Service port, identified across table updates (a Service's ports may be
/// reordered; protocol and port number stay).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortKey {
    pub service: ServiceKey,
    pub protocol: Protocol,
    pub port: u16,
}

/// Everything `overlayd services` shows of the proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyReport {
    /// By Service, protocol and port; a removed Service port stays while connections
    /// to it drain.
    pub ports: Vec<PortReport>,
    pub listeners: Vec<ListenerReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortReport {
    #[serde(flatten)]
    pub key: PortKey,
    pub name: String,
    /// `None` (like `algorithm`) once the port is gone and only drains.
    pub target_port: Option<u16>,
    pub algorithm: Option<Algorithm>,
    /// Client IPs remembered under ClientIP affinity.
    pub affinity_entries: usize,
    /// Listeners serving this port.
    pub frontends: Vec<FrontendAddr>,
    pub backends: Vec<BackendReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendReport {
    pub addr: SocketAddrV4,
    pub state: BackendState,
    /// Seconds in its health state.
    pub state_for_s: Option<f64>,
    /// Whether active health checks run for it.
    pub checked: bool,
    pub active: u64,
    pub connections: u64,
    pub failed_connects: u64,
    pub bytes_to_backend: u64,
    pub bytes_from_backend: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    Up,
    Down,
    /// Down, and being retried by real connections (no active checks).
    Retrying,
    /// No longer a backend of the port; its connections are finishing.
    Draining,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerReport {
    pub frontend: FrontendAddr,
    pub kind: FrontendKind,
    pub service: ServiceKey,
    /// Why it is not bound.
    pub error: Option<String>,
    /// UDP: flows open.
    pub udp_flows: Option<usize>,
}
