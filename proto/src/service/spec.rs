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
use std::ops::RangeInclusive;
use std::str::FromStr;

use ipnet::Ipv4Net;
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

// ---- validation --------------------------------------------------------------------

/// Most ports of one Service (Kubernetes has no limit; 64 keeps one Service's listeners
/// and its gossip object small).
pub const MAX_PORTS: usize = 64;
/// Most explicit backends of one Service.
pub const MAX_BACKENDS: usize = 1000;
/// Most labels in one selector.
pub const MAX_SELECTOR_LABELS: usize = 16;
/// Longest DNS label (RFC 1123): Service names and namespaces.
pub const MAX_DNS_LABEL_LEN: usize = 63;
/// Longest DNS name, without a trailing dot.
pub const MAX_DNS_NAME_LEN: usize = 253;
/// Longest port name: Kubernetes' IANA service name limit, so `_NAME._PROTO` SRV labels
/// stay short.
pub const MAX_PORT_NAME_LEN: usize = 15;
/// Longest label key prefix (a DNS subdomain) and name part, and label value.
pub const MAX_LABEL_PREFIX_LEN: usize = 253;
pub const MAX_LABEL_NAME_LEN: usize = 63;
/// ClientIP affinity timeouts, seconds: Kubernetes' bounds (1 s to a day).
pub const AFFINITY_TIMEOUTS_S: RangeInclusive<u32> = 1..=86_400;
/// Health check intervals, ms: faster than 100 ms per backend from every node is a
/// probe storm; slower than an hour never notices anything.
pub const HEALTH_INTERVALS_MS: RangeInclusive<u32> = 100..=3_600_000;
/// Health check rise and fall counts.
pub const HEALTH_COUNTS: RangeInclusive<u32> = 1..=100;

/// The cluster-wide settings a spec is checked against and allocated from
/// (`[cluster] service_cidr`, `[services] node_port_range` and `external_pool` of the
/// config). Every node must use the same: allocation and conflicts depend on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSettings {
    /// Cluster IPs are allocated from it (its network and broadcast addresses excluded)
    /// and given ones must lie in it. Default 10.96.0.0/12 (Kubernetes').
    pub service_cidr: Ipv4Net,
    /// Node ports. Default 30000–32767 (Kubernetes').
    pub node_port_range: RangeInclusive<u16>,
    /// LoadBalancer external IPs are allocated from these (network and broadcast
    /// addresses of a /30 or wider excluded). Empty: nothing is allocated, and a given
    /// `external_ip` may be any usable address.
    pub external_pool: Vec<Ipv4Net>,
}

impl ServiceSettings {
    pub fn default_service_cidr() -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12).expect("12 is a valid prefix length")
    }

    pub const DEFAULT_NODE_PORTS: RangeInclusive<u16> = 30000..=32767;

    /// Settings under which only what is wrong in itself is refused: any cluster IP,
    /// any node port, no pool. Decoding uses them (a node checks what it receives against
    /// its own settings when it builds the catalog).
    pub fn unrestricted() -> Self {
        ServiceSettings {
            service_cidr: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("0 is a valid prefix"),
            node_port_range: 1..=u16::MAX,
            external_pool: Vec::new(),
        }
    }

    /// Whether `ip` may be a cluster IP: inside the service CIDR and, for a /30 or wider,
    /// not its network or broadcast address.
    pub fn is_cluster_ip(&self, ip: Ipv4Addr) -> bool {
        self.service_cidr.contains(&ip) && !is_edge(self.service_cidr, ip)
    }

    /// Whether `ip` lies in the external pool (always true when the pool is empty: a
    /// given address is then the user's business). Network and broadcast addresses of a
    /// /30 or wider pool entry are not in it.
    pub fn in_external_pool(&self, ip: Ipv4Addr) -> bool {
        self.external_pool.is_empty()
            || self
                .external_pool
                .iter()
                .any(|net| net.contains(&ip) && !is_edge(*net, ip))
    }

    fn node_ports_text(&self) -> String {
        format!(
            "{}-{}",
            self.node_port_range.start(),
            self.node_port_range.end()
        )
    }
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            service_cidr: ServiceSettings::default_service_cidr(),
            node_port_range: ServiceSettings::DEFAULT_NODE_PORTS,
            external_pool: Vec::new(),
        }
    }
}

/// Whether `ip` is the network or broadcast address of `net` (only a /30 or wider has
/// those; a /31 or /32 is all hosts).
pub(crate) fn is_edge(net: Ipv4Net, ip: Ipv4Addr) -> bool {
    net.prefix_len() <= 30 && (ip == net.network() || ip == net.broadcast())
}

/// One step of a [`SpecError`]'s field path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldSegment {
    /// A key of a table: `ports`, `node_port`, or a selector's label key.
    Key(String),
    /// An element of an array: `ports[1]`.
    Index(usize),
}

/// Why a spec was refused: the field (`ports[1].node_port`, relative to the Service) and
/// what is wrong with it, in words that say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The field as text, e.g. `ports[1].node_port` or `selector."app.kubernetes.io/name"`.
    pub field: String,
    pub message: String,
    /// The same field as segments, for the config crate to point at the key's line.
    pub path: Vec<FieldSegment>,
}

/// A field path under construction.
#[derive(Debug, Clone, Default)]
struct Field(Vec<FieldSegment>);

impl Field {
    fn root() -> Field {
        Field::default()
    }

    fn key(&self, key: &str) -> Field {
        let mut f = self.clone();
        f.0.push(FieldSegment::Key(key.to_owned()));
        f
    }

    fn index(&self, i: usize) -> Field {
        let mut f = self.clone();
        f.0.push(FieldSegment::Index(i));
        f
    }

    fn error(&self, message: impl Into<String>) -> SpecError {
        SpecError {
            field: field_text(&self.0),
            message: message.into(),
            path: self.0.clone(),
        }
    }
}

/// `ports[1].node_port`; keys that are not bare TOML keys are quoted.
fn field_text(path: &[FieldSegment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            FieldSegment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            FieldSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Why `s` is not a DNS label (RFC 1123: `[a-z0-9-]`, 1..=`max` characters, not starting
/// or ending with `-`), if it is not.
pub fn dns_label_problem(s: &str, max: usize) -> Option<String> {
    if s.is_empty() {
        return Some("is empty".to_owned());
    }
    if s.len() > max {
        return Some(format!("is {} characters long (at most {max})", s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
    {
        return Some(format!("contains {c:?} (only a-z, 0-9 and '-')"));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some("starts or ends with '-'".to_owned());
    }
    None
}

/// Why `s` is not a DNS name (dot-separated DNS labels, at most 253 characters, one
/// trailing dot allowed; not an IPv4 address), if it is not.
pub fn dns_name_problem(s: &str) -> Option<String> {
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() {
        return Some("is empty".to_owned());
    }
    if name.len() > MAX_DNS_NAME_LEN {
        return Some(format!(
            "is {} characters long (at most {MAX_DNS_NAME_LEN})",
            name.len()
        ));
    }
    if name.parse::<Ipv4Addr>().is_ok() {
        return Some("is an IPv4 address, not a DNS name".to_owned());
    }
    for label in name.split('.') {
        if let Some(p) = dns_label_problem(label, MAX_DNS_LABEL_LEN) {
            return Some(format!("has a label {label:?} that {p}"));
        }
    }
    None
}

/// Why `s` is not the name part of a Kubernetes label key or a non-empty label value
/// (1..=63 characters of `[A-Za-z0-9-_.]`, starting and ending alphanumeric).
fn label_name_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("is empty".to_owned());
    }
    if s.len() > MAX_LABEL_NAME_LEN {
        return Some(format!(
            "is {} characters long (at most {MAX_LABEL_NAME_LEN})",
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!(
            "contains {c:?} (only A-Z, a-z, 0-9, '-', '_' and '.')"
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(s.chars().next()) || !alnum(s.chars().last()) {
        return Some("does not start and end with a letter or digit".to_owned());
    }
    None
}

/// Why `key` is not a Kubernetes label key (`[prefix/]name`: the prefix a DNS subdomain
/// of at most 253 characters, the name 1..=63 characters of `[A-Za-z0-9-_.]` starting and
/// ending alphanumeric), if it is not.
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.len() > MAX_LABEL_PREFIX_LEN {
            return Some(format!(
                "has a prefix of {} characters (at most {MAX_LABEL_PREFIX_LEN})",
                prefix.len()
            ));
        }
        if prefix.is_empty() || prefix.ends_with('.') {
            return Some("has an empty prefix or a prefix label".to_owned());
        }
        for label in prefix.split('.') {
            if let Some(p) = dns_label_problem(label, MAX_DNS_LABEL_LEN) {
                return Some(format!("has a prefix label {label:?} that {p}"));
            }
        }
    }
    label_name_problem(name).map(|p| format!("has a name part that {p}"))
}

/// Why `value` is not a Kubernetes label value (empty, or as a label key's name part),
/// if it is not.
pub fn label_value_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    label_name_problem(value)
}

/// Why `ip` cannot be a backend or external address (every node must be able to send to
/// it), if it cannot.
pub fn unusable_address(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("is the unspecified address")
    } else if ip.is_loopback() {
        Some("is a loopback address (it would be each node's own)")
    } else if ip.is_multicast() {
        Some("is a multicast address")
    } else if ip.is_broadcast() {
        Some("is the broadcast address")
    } else {
        None
    }
}

impl ServiceSpec {
    /// The Service's identity.
    pub fn key(&self) -> super::table::ServiceKey {
        super::table::ServiceKey::new(&self.namespace, &self.name)
    }

    /// `cluster_ip = "None"`.
    pub fn is_headless(&self) -> bool {
        self.cluster_ip == Some(ClusterIp::Headless)
    }

    /// Whether the Service has a cluster IP (given or allocated): every type but
    /// ExternalName, unless headless.
    pub fn has_cluster_ip(&self) -> bool {
        self.kind != ServiceType::ExternalName && !self.is_headless()
    }

    /// The given cluster IP, if any.
    pub fn given_cluster_ip(&self) -> Option<Ipv4Addr> {
        match self.cluster_ip {
            Some(ClusterIp::Ip(ip)) => Some(ip),
            _ => None,
        }
    }

    /// Checks everything a Service must satisfy to work under `settings`. Returns the
    /// first problem, in field order, naming the field relative to the Service.
    pub fn validate(&self, settings: &ServiceSettings) -> Result<(), SpecError> {
        let root = Field::root();
        if let Some(p) = dns_label_problem(&self.name, MAX_DNS_LABEL_LEN) {
            return Err(root.key("name").error(format!(
                "{:?} {p}; a Service name is a DNS label like \"web\" (a-z, 0-9 and '-', 1 to 63 characters)",
                self.name
            )));
        }
        if let Some(p) = dns_label_problem(&self.namespace, MAX_DNS_LABEL_LEN) {
            return Err(root.key("namespace").error(format!(
                "{:?} {p}; a namespace is a DNS label like \"default\" (a-z, 0-9 and '-', 1 to 63 characters)",
                self.namespace
            )));
        }
        self.validate_ports(settings)?;
        self.validate_selector()?;
        self.validate_backends()?;
        self.validate_cluster_ip(settings)?;
        if !AFFINITY_TIMEOUTS_S.contains(&self.affinity_timeout_s) {
            return Err(root.key("affinity_timeout_s").error(format!(
                "{} is outside {}..={} seconds; pick a timeout between 1 s and a day (default {DEFAULT_AFFINITY_TIMEOUT_S})",
                self.affinity_timeout_s,
                AFFINITY_TIMEOUTS_S.start(),
                AFFINITY_TIMEOUTS_S.end()
            )));
        }
        self.health_check.validate(&root.key("health_check"))?;
        self.validate_external(settings)
    }

    fn validate_ports(&self, settings: &ServiceSettings) -> Result<(), SpecError> {
        let ports = Field::root().key("ports");
        if self.ports.is_empty() && self.kind != ServiceType::ExternalName {
            return Err(ports.error(format!(
                "a {} Service needs at least one port; add one, e.g. {{ port = 80 }}",
                self.kind
            )));
        }
        if self.ports.len() > MAX_PORTS {
            return Err(ports.error(format!(
                "{} ports are more than the {MAX_PORTS} a Service may have; split it into several Services",
                self.ports.len()
            )));
        }
        let many = self.ports.len() > 1;
        for (i, port) in self.ports.iter().enumerate() {
            let at = ports.index(i);
            if port.name.is_empty() {
                if many {
                    return Err(at.key("name").error(
                        "is required when a Service has more than one port; name every port, e.g. \"http\"",
                    ));
                }
            } else if let Some(p) = dns_label_problem(&port.name, MAX_PORT_NAME_LEN) {
                return Err(at.key("name").error(format!(
                    "{:?} {p}; a port name is a DNS label of at most {MAX_PORT_NAME_LEN} characters, like \"http\"",
                    port.name
                )));
            }
            let earlier = &self.ports[..i];
            if let Some(j) = earlier
                .iter()
                .position(|o| !port.name.is_empty() && o.name == port.name)
            {
                return Err(at.key("name").error(format!(
                    "{:?} is also the name of ports[{j}]; give every port a name of its own",
                    port.name
                )));
            }
            if port.port == 0 {
                return Err(at
                    .key("port")
                    .error("is 0; expected the port the Service listens on, 1 to 65535"));
            }
            if port.target_port == Some(0) {
                return Err(at.key("target_port").error(
                    "is 0; expected the backends' port, 1 to 65535, or leave it out to use `port`",
                ));
            }
            if let Some(j) = earlier
                .iter()
                .position(|o| o.protocol == port.protocol && o.port == port.port)
            {
                return Err(at.key("port").error(format!(
                    "{}/{} is also ports[{j}]; every (protocol, port) of a Service must differ",
                    port.port, port.protocol
                )));
            }
            if let Some(np) = port.node_port {
                if !self.kind.has_node_ports() {
                    return Err(at.key("node_port").error(format!(
                        "is only for NodePort and LoadBalancer Services, and this one is {}; remove it or change the type",
                        self.kind
                    )));
                }
                if !settings.node_port_range.contains(&np) {
                    return Err(at.key("node_port").error(format!(
                        "{np} is outside the node port range {}; pick one inside it, or leave node_port out to have one allocated",
                        settings.node_ports_text()
                    )));
                }
                if let Some(j) = earlier
                    .iter()
                    .position(|o| o.node_port == Some(np) && o.protocol == port.protocol)
                {
                    return Err(at.key("node_port").error(format!(
                        "{np}/{} is also the node port of ports[{j}]; give every port a node port of its own",
                        port.protocol
                    )));
                }
            }
            if port.proxy_protocol && port.protocol == Protocol::Udp {
                return Err(at.key("proxy_protocol").error(
                    "is only for TCP ports (a PROXY header opens a connection); remove it or use protocol = \"TCP\"",
                ));
            }
        }
        Ok(())
    }

    fn validate_selector(&self) -> Result<(), SpecError> {
        let selector = Field::root().key("selector");
        if self.selector.is_empty() {
            return Ok(());
        }
        if self.kind == ServiceType::ExternalName {
            return Err(selector.error(
                "an ExternalName Service has no backends (it is a DNS alias); remove the selector",
            ));
        }
        if self.selector.len() > MAX_SELECTOR_LABELS {
            return Err(selector.error(format!(
                "{} labels are more than the {MAX_SELECTOR_LABELS} a selector may have",
                self.selector.len()
            )));
        }
        for (key, value) in &self.selector {
            let at = selector.key(key);
            if let Some(p) = label_key_problem(key) {
                return Err(at.error(format!(
                    "the label key {key:?} {p}; expected a key like \"app\" or \"example.com/tier\""
                )));
            }
            if let Some(p) = label_value_problem(value) {
                return Err(at.error(format!(
                    "the label value {value:?} {p}; expected a value like \"web\" (at most {MAX_LABEL_NAME_LEN} characters of A-Z, a-z, 0-9, '-', '_' and '.')"
                )));
            }
        }
        Ok(())
    }

    fn validate_backends(&self) -> Result<(), SpecError> {
        let backends = Field::root().key("backends");
        if self.backends.is_empty() {
            return Ok(());
        }
        if self.kind == ServiceType::ExternalName {
            return Err(backends.error(
                "an ExternalName Service has no backends (it is a DNS alias); remove them",
            ));
        }
        if !self.selector.is_empty() {
            return Err(backends.error(
                "a Service takes its backends from `selector` or from `backends`, not both; remove one",
            ));
        }
        if self.backends.len() > MAX_BACKENDS {
            return Err(backends.error(format!(
                "{} backends are more than the {MAX_BACKENDS} a Service may list; select pods by label instead",
                self.backends.len()
            )));
        }
        // Where each backend is reached for the first port: two entries reaching the same
        // address are one backend listed twice.
        let target = self.ports.first().map_or(0, ServicePort::target);
        let mut seen: BTreeMap<SocketAddrV4, usize> = BTreeMap::new();
        for (i, b) in self.backends.iter().enumerate() {
            let at = backends.index(i);
            if let Some(p) = unusable_address(b.ip) {
                return Err(at.error(format!(
                    "{} {p}; a backend needs an address every node can connect to",
                    b.ip
                )));
            }
            if let Some(port) = b.port {
                if self.ports.len() > 1 {
                    return Err(at.error(format!(
                        "{b} names a port, but the Service has {} ports; list the address alone ({}) and each port's target_port is used",
                        self.ports.len(),
                        b.ip
                    )));
                }
                if port == 0 {
                    return Err(at.error(format!(
                        "{b} has port 0; expected IP or IP:PORT with a port 1 to 65535"
                    )));
                }
            }
            if let Some(j) = seen.insert(b.addr(target), i) {
                return Err(at.error(format!(
                    "{b} is the same backend as backends[{j}]; list every backend once"
                )));
            }
        }
        Ok(())
    }

    fn validate_cluster_ip(&self, settings: &ServiceSettings) -> Result<(), SpecError> {
        let at = Field::root().key("cluster_ip");
        let Some(cluster_ip) = self.cluster_ip else {
            return Ok(());
        };
        if self.kind == ServiceType::ExternalName {
            return Err(at.error(
                "an ExternalName Service has no cluster IP (it is a DNS alias); remove cluster_ip",
            ));
        }
        match cluster_ip {
            ClusterIp::Headless => {
                if self.kind.has_node_ports() {
                    return Err(at.error(format!(
                        "a headless Service (\"None\") has no virtual IP for a {} Service to lead to; use type = \"ClusterIP\" or leave cluster_ip out",
                        self.kind
                    )));
                }
            }
            ClusterIp::Ip(ip) => {
                let cidr = settings.service_cidr;
                if !cidr.contains(&ip) {
                    return Err(at.error(format!(
                        "{ip} is outside the service CIDR {cidr}; pick an address inside it, or leave cluster_ip out to have one allocated"
                    )));
                }
                if is_edge(cidr, ip) {
                    let which = if ip == cidr.network() {
                        "network"
                    } else {
                        "broadcast"
                    };
                    return Err(at.error(format!(
                        "{ip} is the {which} address of the service CIDR {cidr}; pick another address inside it"
                    )));
                }
            }
        }
        Ok(())
    }

    fn validate_external(&self, settings: &ServiceSettings) -> Result<(), SpecError> {
        if let Some(ip) = self.external_ip {
            let at = Field::root().key("external_ip");
            if self.kind != ServiceType::LoadBalancer {
                return Err(at.error(format!(
                    "is only for LoadBalancer Services, and this one is {}; remove it or use type = \"LoadBalancer\"",
                    self.kind
                )));
            }
            if let Some(p) = unusable_address(ip) {
                return Err(at.error(format!("{ip} {p}; expected an address clients can reach")));
            }
            if !settings.in_external_pool(ip) {
                let pool: Vec<String> = settings
                    .external_pool
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                return Err(at.error(format!(
                    "{ip} is outside the external pool [{}]; pick an address inside it, or leave external_ip out to have one allocated",
                    pool.join(", ")
                )));
            }
        }
        let at = Field::root().key("external_name");
        match (&self.external_name, self.kind) {
            (None, ServiceType::ExternalName) => Err(at.error(
                "is required for an ExternalName Service; set it to the DNS name to alias, e.g. \"db.example.com\"",
            )),
            (Some(name), ServiceType::ExternalName) => match dns_name_problem(name) {
                Some(p) => Err(at.error(format!(
                    "{name:?} {p}; expected a DNS name like \"db.example.com\""
                ))),
                None => Ok(()),
            },
            (Some(_), kind) => Err(at.error(format!(
                "is only for ExternalName Services, and this one is {kind}; remove it or use type = \"ExternalName\""
            ))),
            (None, _) => Ok(()),
        }
    }
}

impl HealthCheck {
    fn validate(&self, at: &Field) -> Result<(), SpecError> {
        if !HEALTH_INTERVALS_MS.contains(&self.interval_ms) {
            return Err(at.key("interval_ms").error(format!(
                "{} ms is outside {}..={} ms; pick an interval of at least 100 ms (default 2000)",
                self.interval_ms,
                HEALTH_INTERVALS_MS.start(),
                HEALTH_INTERVALS_MS.end()
            )));
        }
        if self.timeout_ms == 0 || self.timeout_ms >= self.interval_ms {
            return Err(at.key("timeout_ms").error(format!(
                "{} ms is not between 1 ms and the interval of {} ms; a check must time out before the next one starts",
                self.timeout_ms, self.interval_ms
            )));
        }
        for (name, value) in [("rise", self.rise), ("fall", self.fall)] {
            if !HEALTH_COUNTS.contains(&value) {
                return Err(at.key(name).error(format!(
                    "{value} is outside {}..={}; expected a count of consecutive checks",
                    HEALTH_COUNTS.start(),
                    HEALTH_COUNTS.end()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
