//! The resolved Services: what every node computes from the gossip objects (Service
//! specs with their allocations, and the pods each node publishes) and what the proxy,
//! the DNS responder and `overlayd services` read. Every node that holds the same
//! objects and members computes the same table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use super::spec::{Algorithm, HealthCheck, Protocol, ServiceType, SessionAffinity};

/// A Service's identity: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    /// `namespace/name`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One port of a resolved Service, with its allocated node port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: u16,
    /// NodePort and LoadBalancer Services: the port on every node's underlay address.
    pub node_port: Option<u16>,
    pub proxy_protocol: bool,
}

/// One backend of a Service: a pod selected by its labels, or an address listed in the
/// spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// An explicit `IP:PORT` backend's port, used instead of every port's target port.
    pub port: Option<u16>,
    /// The node that published the pod; `None` for an explicit backend.
    pub node: Option<String>,
    /// The pod's name; `None` for an explicit backend.
    pub pod: Option<String>,
}

impl Endpoint {
    /// Where a connection to `port` of the Service goes on this endpoint.
    pub fn addr(&self, port: &ResolvedPort) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip, self.port.unwrap_or(port.target_port))
    }
}

/// Whether a Service is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum ServiceStatus {
    /// Served as specified.
    Active,
    /// Refused: what it asked for is held by an older Service (the reason names it), and
    /// it cannot be re-allocated (the address or port was given in the spec).
    Conflict(String),
    /// Waiting: an allocation is being redone (it lost a race) or cannot be made yet
    /// (the pool is exhausted); the reason says which.
    Pending(String),
}

/// A Service as every node serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedService {
    pub key: ServiceKey,
    pub kind: ServiceType,
    /// The VIP. `None` for a headless or ExternalName Service.
    pub cluster_ip: Option<Ipv4Addr>,
    /// LoadBalancer: the external address.
    pub external_ip: Option<Ipv4Addr>,
    /// ExternalName: the CNAME target.
    pub external_name: Option<String>,
    pub ports: Vec<ResolvedPort>,
    /// In a stable order (by address, then port): every node lists them alike.
    pub endpoints: Vec<Endpoint>,
    pub algorithm: Algorithm,
    pub affinity: SessionAffinity,
    pub affinity_timeout_s: u32,
    pub health: HealthCheck,
    pub status: ServiceStatus,
}

impl ResolvedService {
    pub fn is_active(&self) -> bool {
        self.status == ServiceStatus::Active
    }
}

/// Every Service, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTable {
    pub services: BTreeMap<ServiceKey, ResolvedService>,
}

impl ServiceTable {
    pub fn get(&self, key: &ServiceKey) -> Option<&ResolvedService> {
        self.services.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ResolvedService> {
        self.services.values()
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The VIPs every node serves: the cluster IPs of the Services the proxy serves
    /// (active, not headless, not ExternalName).
    pub fn vips(&self) -> BTreeSet<Ipv4Addr> {
        self.iter()
            .filter(|s| super::frontend::is_proxied(s))
            .filter_map(|s| s.cluster_ip)
            .collect()
    }
}
