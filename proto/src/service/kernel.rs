//! The kernel data path for Services (`services.dataplane = "kernel"`): an nftables table,
//! `ip overlayd-svc`, that DNATs connections to a Service address straight to a backend,
//! so packets never climb to the daemon. kube-proxy's nftables shape:
//!
//! - a verdict map `frontends` from `address . protocol . port` (VIP and port, the
//!   node's underlay address and node port, a LoadBalancer's external IP and port) to one
//!   chain per Service port, looked up in the `prerouting` (pods, other hosts) and
//!   `output` (this node) NAT hooks;
//! - the Service port's chain picks a backend: round robin with `numgen inc`, Maglev with
//!   the Service's own Maglev table indexed by `jhash` of the client's address and port
//!   (the same seed and table on every node, so every node picks alike);
//! - one chain per backend DNATs to it and marks the packet for source NAT when the reply
//!   would not come back through this node otherwise: always for a backend on this node's
//!   bridge (a pod's reply to a pod on the same bridge never crosses this node's IP
//!   layer), and for any backend when the client is outside the cluster (NodePort,
//!   LoadBalancer: the backend's node would answer the client directly, and masquerade
//!   it). The source becomes this node's bridge address, not the underlay's: it is in the
//!   cluster's pod range, so the reply comes back through the overlay like any pod
//!   traffic. A pod reaching a backend on another node keeps its own address, which the
//!   backend sees. Pods' bridge ports are in hairpin mode, so a client that is its own
//!   backend gets its connection back.
//!
//! What the kernel cannot do stays with the daemon's proxy, which keeps listening on every
//! Service address (the kernel's DNAT comes before the socket lookup, so the proxy sees
//! only what the table does not take): least_conn (the proxy's connection counts),
//! ClientIP affinity with a timeout, PROXY protocol, and UDP (conntrack would keep a
//! flow's datagrams going to a backend that left, kube-proxy's stale-conntrack bug; the
//! proxy's flow table ends such flows). A Service port with no usable backend is left to
//! the proxy, which resets.
//!
//! Backends the health checks find down are left out of the maps (while none is up, all
//! are kept, as the proxy's balancer fails open); every change of the table or of health
//! is a new script that replaces the whole table in one transaction, so established
//! connections keep their conntrack entries and drain.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddrV4;

use ipnet::Ipv4Net;

use super::frontend::{Frontend, FrontendAddr};
use super::health::BackendKey;
use super::maglev::MaglevTable;
use super::spec::{Algorithm, Protocol, SessionAffinity};
use super::table::{ResolvedPort, ResolvedService, ServiceKey, ServiceTable};

/// The nftables table of the kernel data path (`nft list table ip overlayd-svc`).
pub const TABLE: &str = "overlayd-svc";

/// The packet mark bit that asks the `postrouting` chain for source NAT (kube-proxy's).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// Why a Service port is served by the proxy rather than the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProxyOnly {
    Udp,
    LeastConn,
    ClientIpAffinity,
    ProxyProtocol,
    NoBackend,
}

impl ProxyOnly {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyOnly::Udp => "udp",
            ProxyOnly::LeastConn => "least_conn",
            ProxyOnly::ClientIpAffinity => "client_ip_affinity",
            ProxyOnly::ProxyProtocol => "proxy_protocol",
            ProxyOnly::NoBackend => "no_backend",
        }
    }
}

/// What this node's kernel path is made of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Network {
    /// This node's pod subnet: backends in it are on this node's bridge, whose address
    /// (the subnet's first host) is the source of NATed connections.
    pub local_pods: Ipv4Net,
    /// Every pod subnet of the cluster: clients outside it are NATed.
    pub cluster: Ipv4Net,
}

/// The plan: the script that replaces the table, and which Service ports it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelPlan {
    /// `nft -f -` input; replaces the whole table in one transaction.
    pub script: String,
    /// Service ports the kernel serves, with the backends in its maps.
    pub served: BTreeMap<(ServiceKey, u16), Vec<SocketAddrV4>>,
    /// Service ports left to the proxy, and why.
    pub proxied: BTreeMap<(ServiceKey, u16), ProxyOnly>,
}

/// Whether a Service port can be served by the kernel, by its spec alone.
pub fn kernel_capable(svc: &ResolvedService, port: &ResolvedPort) -> Result<(), ProxyOnly> {
    if port.protocol == Protocol::Udp {
        return Err(ProxyOnly::Udp);
    }
    if port.proxy_protocol {
        return Err(ProxyOnly::ProxyProtocol);
    }
    if svc.affinity == SessionAffinity::ClientIp {
        return Err(ProxyOnly::ClientIpAffinity);
    }
    if svc.algorithm == Algorithm::LeastConn {
        return Err(ProxyOnly::LeastConn);
    }
    Ok(())
}

/// The table for `frontends` (this node's, from `frontend::frontends`) of `table`, with the
/// backends `usable` says are up. The same inputs give the same script, byte for byte, so
/// the daemon reinstalls only when something changed.
pub fn plan(
    table: &ServiceTable,
    frontends: &BTreeMap<FrontendAddr, Frontend>,
    net: &Network,
    usable: impl Fn(&BackendKey) -> bool,
) -> KernelPlan {
    let mut out = KernelPlan::default();
    // Service port → its chain's name and the frontends that lead to it.
    let mut ports: BTreeMap<(ServiceKey, usize), Vec<FrontendAddr>> = BTreeMap::new();
    for (addr, fe) in frontends {
        ports
            .entry((fe.service.clone(), fe.port))
            .or_default()
            .push(*addr);
    }
    let mut elements = Vec::new();
    let mut chains = String::new();
    for (n, ((key, index), addrs)) in ports.iter().enumerate() {
        let Some(svc) = table.get(key) else { continue };
        let Some(port) = svc.ports.get(*index) else {
            continue;
        };
        let id = (key.clone(), port.port);
        if let Err(why) = kernel_capable(svc, port) {
            out.proxied.insert(id, why);
            continue;
        }
        let all: Vec<SocketAddrV4> = svc.endpoints.iter().map(|e| e.addr(port)).collect();
        let up: Vec<SocketAddrV4> = all
            .iter()
            .copied()
            .filter(|&addr| {
                usable(&BackendKey {
                    protocol: port.protocol,
                    addr,
                })
            })
            .collect();
        let backends = if up.is_empty() { all } else { up };
        if backends.is_empty() {
            out.proxied.insert(id, ProxyOnly::NoBackend);
            continue;
        }
        let chain = format!("svc{n}");
        for addr in addrs {
            elements.push(format!(
                "{} . tcp . {} : goto {chain}",
                addr.addr.ip(),
                addr.addr.port()
            ));
        }
        let _ = writeln!(chains, "\tchain {chain} {{");
        let comment = format!("comment \"{key} {}/{}\"", port.port, port.protocol);
        let targets = endpoint_chains(&chain, &backends);
        match svc.algorithm {
            Algorithm::Maglev => {
                let maglev = MaglevTable::new(backends.iter().copied());
                let entries: Vec<String> = maglev
                    .entries()
                    .iter()
                    .enumerate()
                    .map(|(slot, &b)| format!("{slot} : goto {}", targets[b as usize]))
                    .collect();
                let _ = writeln!(
                    chains,
                    "\t\tjhash ip saddr . th sport mod {} seed 0x0 vmap {{ {} }} {comment}",
                    maglev.size(),
                    entries.join(", ")
                );
            }
            _ => {
                let entries: Vec<String> = targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("{i} : goto {t}"))
                    .collect();
                let _ = writeln!(
                    chains,
                    "\t\tnumgen inc mod {} vmap {{ {} }} {comment}",
                    backends.len(),
                    entries.join(", ")
                );
            }
        }
        chains.push_str("\t}\n");
        for (target, backend) in targets.iter().zip(&backends) {
            let _ = writeln!(chains, "\tchain {target} {{");
            if net.local_pods.contains(backend.ip()) {
                let _ = writeln!(chains, "\t\tmeta mark set meta mark | {MASQUERADE_MARK:#x}");
            } else {
                let _ = writeln!(
                    chains,
                    "\t\tip saddr != {} meta mark set meta mark | {MASQUERADE_MARK:#x}",
                    net.cluster
                );
            }
            let _ = writeln!(chains, "\t\tmeta l4proto tcp dnat to {backend}\n\t}}");
        }
        out.served.insert(id, backends);
    }
    let elements = if elements.is_empty() {
        String::new()
    } else {
        format!("\t\telements = {{ {} }}\n", elements.join(",\n\t\t\t"))
    };
    let gateway = crate::ipam::PodIpam::gateway_of(net.local_pods);
    out.script = format!(
        "add table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n\
         \tmap frontends {{\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n{elements}\t}}\n\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tip daddr . meta l4proto . th dport vmap @frontends\n\t}}\n\
         \tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\
         \t\tip daddr . meta l4proto . th dport vmap @frontends\n\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & {MASQUERADE_MARK:#x} == 0 return\n\
         \t\tmeta mark set meta mark ^ {MASQUERADE_MARK:#x}\n\
         \t\tsnat to {gateway} fully-random\n\t}}\n\
         {chains}}}\n"
    );
    out
}

/// The script that removes the table (nothing if it is not there).
pub fn remove_script() -> String {
    format!("add table ip {TABLE}\ndelete table ip {TABLE}\n")
}

/// The endpoint chains' names of a Service port's chain.
fn endpoint_chains(chain: &str, backends: &[SocketAddrV4]) -> Vec<String> {
    (0..backends.len())
        .map(|i| format!("{chain}_ep{i}"))
        .collect()
}

#[cfg(test)]
mod tests;
