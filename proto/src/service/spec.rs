//! A Service as the user writes it (in `[[service]]` of the config, or through
//! `overlayd service add` as flags, TOML or JSON): the data types and their serde form.
//! Field names and enum spellings follow Kubernetes where it has the concept
//! (`ClusterIP`, `NodePort`, `session_affinity = "ClientIP"`, `TCP`).
//!
//! [`ServiceSpec::validate`] refuses every spec that cannot work, with a [`SpecError`]
//! naming the field (`ports[1].node_port`) so the config crate can point at its line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The namespace of a Service that names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Kubernetes' default ClientIP affinity timeout: three hours.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// One Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// A DNS label (`[a-z0-9-]`, 1..=63, not starting or ending with `-`).
    pub name: String,
    /// A DNS label. Default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Default `ClusterIP`.
    #[serde(default, rename = "type")]
    pub kind: ServiceType,
    /// At least one, except for `ExternalName`. Names unique; required (non-empty) when
    /// there is more than one port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Backends are the pods whose labels include every one of these. Exclusive with
    /// `backends`; a Service with neither has no endpoints (yet).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// Backends listed explicitly, for backends outside overlayd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<ExplicitBackend>,
    /// `None` (absent): allocated from `cluster.service_cidr`. `"None"`: headless (DNS
    /// returns the endpoints; no VIP, no proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<ClusterIp>,
    /// Default `None`.
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    /// How long a client keeps its backend under `ClientIP` affinity after its last
    /// connection or datagram, in seconds. Default 10800.
    #[serde(default = "default_affinity_timeout")]
    pub affinity_timeout_s: u32,
    /// Default `round_robin`.
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default)]
    pub health_check: HealthCheck,
    /// `LoadBalancer` only: the external address. Absent: allocated from
    /// `services.external_pool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ip: Option<Ipv4Addr>,
    /// `ExternalName` only, and required there: the DNS name the Service is a CNAME for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_owned()
}

fn default_affinity_timeout() -> u32 {
    DEFAULT_AFFINITY_TIMEOUT_S
}

/// The four Service types of Kubernetes.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum ServiceType {
    /// A virtual IP reachable from every pod and node, balanced by every node.
    #[default]
    #[serde(rename = "ClusterIP", alias = "cluster_ip", alias = "clusterip")]
    ClusterIp,
    /// ClusterIP, plus a port on every node's underlay address.
    #[serde(rename = "NodePort", alias = "node_port", alias = "nodeport")]
    NodePort,
    /// NodePort, plus an external IP held by one live node on the segment where it is
    /// on-link.
    #[serde(
        rename = "LoadBalancer",
        alias = "load_balancer",
        alias = "loadbalancer"
    )]
    LoadBalancer,
    /// A DNS CNAME to `external_name`; nothing is proxied.
    #[serde(
        rename = "ExternalName",
        alias = "external_name",
        alias = "externalname"
    )]
    ExternalName,
}

impl ServiceType {
    /// The spelling the config file and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        }
    }

    /// Whether the Service has node ports (NodePort and LoadBalancer).
    pub fn has_node_ports(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::LoadBalancer)
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    /// A DNS label, or empty; names the SRV record `_NAME._PROTO.SERVICE…`. Required when
    /// the Service has more than one port.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Default `TCP`.
    #[serde(default)]
    pub protocol: Protocol,
    /// The port on the VIP (and the external IP), 1..=65535.
    pub port: u16,
    /// The port on the backends. Default: `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    /// NodePort and LoadBalancer: the port on every node's underlay address, inside
    /// `services.node_port_range`. Absent: allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// Send a PROXY protocol v2 header to the backend first, carrying the client's
    /// address. TCP only. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
}

impl ServicePort {
    /// The port on the backends.
    pub fn target(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

/// Transport protocol of a Service port.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP", alias = "tcp")]
    Tcp,
    #[serde(rename = "UDP", alias = "udp")]
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend listed in the spec: `IP` (each Service port's target port) or `IP:PORT`
/// (only for a Service with one port). Written as a string in TOML and JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExplicitBackend {
    pub ip: Ipv4Addr,
    pub port: Option<u16>,
}

impl ExplicitBackend {
    /// The address to connect to for a Service port whose target port is `target`.
    pub fn addr(&self, target: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip, self.port.unwrap_or(target))
    }
}

impl FromStr for ExplicitBackend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<Ipv4Addr>() {
            return Ok(ExplicitBackend { ip, port: None });
        }
        match s.parse::<SocketAddrV4>() {
            Ok(addr) => Ok(ExplicitBackend {
                ip: *addr.ip(),
                port: Some(addr.port()),
            }),
            Err(_) => Err(format!(
                "{s:?} is not a backend; expected IPV4 or IPV4:PORT, e.g. 192.0.2.10:8080"
            )),
        }
    }
}

impl TryFrom<String> for ExplicitBackend {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ExplicitBackend> for String {
    fn from(b: ExplicitBackend) -> String {
        b.to_string()
    }
}

impl fmt::Display for ExplicitBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.ip),
            None => write!(f, "{}", self.ip),
        }
    }
}

/// A cluster IP given in the spec: an address, or `"None"` for a headless Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ClusterIp {
    Headless,
    Ip(Ipv4Addr),
}

impl TryFrom<String> for ClusterIp {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s == "None" {
            return Ok(ClusterIp::Headless);
        }
        s.parse().map(ClusterIp::Ip).map_err(|_| {
            format!("{s:?} is not a cluster IP; expected an IPv4 address or \"None\" (headless)")
        })
    }
}

impl From<ClusterIp> for String {
    fn from(c: ClusterIp) -> String {
        match c {
            ClusterIp::Headless => "None".to_owned(),
            ClusterIp::Ip(ip) => ip.to_string(),
        }
    }
}

/// Kubernetes' `sessionAffinity`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionAffinity {
    #[default]
    #[serde(rename = "None", alias = "none")]
    None,
    /// A client IP keeps its backend for `affinity_timeout_s` after its last use.
    #[serde(rename = "ClientIP", alias = "client_ip", alias = "clientip")]
    ClientIp,
}

/// How a new connection or UDP flow picks its backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    /// The backend with the fewest active connections (of this node's proxy).
    LeastConn,
    /// Maglev consistent hashing of the client address: every node picks the same
    /// backend for a client, and removing one of N backends moves about 1/N of clients.
    Maglev,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastConn => "least_conn",
            Algorithm::Maglev => "maglev",
        }
    }
}

/// Active health checks: a TCP connect to each backend from every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// Default true. Without active checks only failed connects (passive) take a
    /// backend out.
    pub enabled: bool,
    /// Time between checks of one backend. Default 2000.
    pub interval_ms: u32,
    /// A connect not done within this fails. Default 1000; less than `interval_ms`.
    pub timeout_ms: u32,
    /// Consecutive successes that bring a backend back. Default 2.
    pub rise: u32,
    /// Consecutive failures that take a backend out. Default 3.
    pub fall: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            enabled: true,
            interval_ms: 2000,
            timeout_ms: 1000,
            rise: 2,
            fall: 3,
        }
    }
}

/// Why a spec was refused: the field (`ports[1].node_port`, relative to the Service) and
/// what is wrong with it, in words that say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}
