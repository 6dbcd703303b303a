//! Which listeners a node must have for a [`ServiceTable`]: every address and port on
//! which the proxy accepts connections or datagrams for a Service, and which Service port
//! each one serves.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use super::spec::{Protocol, ServiceType};
use super::table::{ResolvedService, ServiceKey, ServiceTable};

/// What the proxy needs to know about this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalNode {
    /// The node's underlay address: NodePorts listen here.
    pub underlay: Ipv4Addr,
}

/// A listening address: protocol, IP and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FrontendAddr {
    pub protocol: Protocol,
    pub addr: SocketAddrV4,
}

impl fmt::Display for FrontendAddr {
    /// `10.96.0.10:80/TCP`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.protocol)
    }
}

/// Which of a Service's addresses a frontend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrontendKind {
    /// The VIP and the Service port.
    ClusterIp,
    /// The node's underlay address and the node port.
    NodePort,
    /// A LoadBalancer's external IP and the Service port.
    External,
}

/// One listener and the Service port behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontend {
    pub kind: FrontendKind,
    pub service: ServiceKey,
    /// Index into the Service's `ports`.
    pub port: usize,
    /// Bind with `IP_FREEBIND`: the address need not be on this node. An external IP is
    /// on the underlay interface of its holder only; every node listens on it, so the
    /// holder is ready the moment the address moves to it. A VIP becomes local through a
    /// route the daemon adds when the Service appears, which may come just after.
    pub freebind: bool,
}

/// Whether the proxy serves the Service: active, with a VIP (headless and ExternalName
/// Services have none and are served by DNS alone).
pub fn is_proxied(svc: &ResolvedService) -> bool {
    svc.is_active() && svc.cluster_ip.is_some() && svc.kind != ServiceType::ExternalName
}

/// Every listener this node must have: for each port of each proxied Service, the VIP
/// and port; for NodePort and LoadBalancer Services, the node port on the underlay
/// address; for LoadBalancer Services with an external IP, that IP and the port. If two
/// Services claim one listener (the catalog prevents it; a table in transition might
/// not), the first by key keeps it.
pub fn frontends(table: &ServiceTable, local: &LocalNode) -> BTreeMap<FrontendAddr, Frontend> {
    let mut out = BTreeMap::new();
    for svc in table.iter().filter(|s| is_proxied(s)) {
        for (index, port) in svc.ports.iter().enumerate() {
            let mut add = |ip: Ipv4Addr, number: u16, kind: FrontendKind| {
                let addr = FrontendAddr {
                    protocol: port.protocol,
                    addr: SocketAddrV4::new(ip, number),
                };
                out.entry(addr).or_insert_with(|| Frontend {
                    kind,
                    service: svc.key.clone(),
                    port: index,
                    // A VIP is local through its route, which the control loop may add
                    // a moment after the listener is bound; an external IP is on the
                    // holder only. A node port is on the node's own address.
                    freebind: kind != FrontendKind::NodePort,
                });
            };
            if let Some(vip) = svc.cluster_ip {
                add(vip, port.port, FrontendKind::ClusterIp);
            }
            if svc.kind.has_node_ports()
                && let Some(node_port) = port.node_port
            {
                add(local.underlay, node_port, FrontendKind::NodePort);
            }
            if svc.kind == ServiceType::LoadBalancer
                && let Some(ip) = svc.external_ip
            {
                add(ip, port.port, FrontendKind::External);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::spec::{Algorithm, HealthCheck, SessionAffinity};
    use crate::service::table::{ResolvedPort, ServiceStatus};

    fn port(name: &str, protocol: Protocol, port: u16, node_port: Option<u16>) -> ResolvedPort {
        ResolvedPort {
            name: name.into(),
            protocol,
            port,
            target_port: port,
            node_port,
            proxy_protocol: false,
        }
    }

    fn svc(
        name: &str,
        kind: ServiceType,
        vip: Option<[u8; 4]>,
        ports: Vec<ResolvedPort>,
    ) -> ResolvedService {
        ResolvedService {
            key: ServiceKey::new("default", name),
            kind,
            cluster_ip: vip.map(Ipv4Addr::from),
            external_ip: None,
            external_name: None,
            ports,
            endpoints: Vec::new(),
            algorithm: Algorithm::RoundRobin,
            affinity: SessionAffinity::None,
            affinity_timeout_s: 10,
            health: HealthCheck::default(),
            status: ServiceStatus::Active,
        }
    }

    fn fa(protocol: Protocol, s: &str) -> FrontendAddr {
        FrontendAddr {
            protocol,
            addr: s.parse().unwrap(),
        }
    }

    #[test]
    fn every_type_gets_the_listeners_it_should() {
        let local = LocalNode {
            underlay: Ipv4Addr::new(192, 168, 1, 10),
        };
        let mut lb = svc(
            "lb",
            ServiceType::LoadBalancer,
            Some([10, 96, 0, 3]),
            vec![
                port("http", Protocol::Tcp, 80, Some(30080)),
                port("dns", Protocol::Udp, 53, Some(30053)),
            ],
        );
        lb.external_ip = Some(Ipv4Addr::new(192, 168, 1, 200));
        let mut external = svc("ext", ServiceType::ExternalName, None, vec![]);
        external.external_name = Some("example.com".into());
        let mut conflict = svc(
            "conflict",
            ServiceType::ClusterIp,
            Some([10, 96, 0, 9]),
            vec![port("", Protocol::Tcp, 80, None)],
        );
        conflict.status = ServiceStatus::Conflict("held by default/a".into());
        let mut table = ServiceTable::default();
        for s in [
            svc(
                "a",
                ServiceType::ClusterIp,
                Some([10, 96, 0, 1]),
                vec![port("", Protocol::Tcp, 80, None)],
            ),
            svc(
                "np",
                ServiceType::NodePort,
                Some([10, 96, 0, 2]),
                vec![port("", Protocol::Tcp, 8080, Some(30001))],
            ),
            lb,
            svc(
                "headless",
                ServiceType::ClusterIp,
                None,
                vec![port("", Protocol::Tcp, 80, None)],
            ),
            external,
            conflict,
        ] {
            table.services.insert(s.key.clone(), s);
        }
        let f = frontends(&table, &local);
        let got: Vec<(FrontendAddr, FrontendKind, &str, usize, bool)> = f
            .iter()
            .map(|(a, f)| (*a, f.kind, f.service.name.as_str(), f.port, f.freebind))
            .collect();
        use FrontendKind::*;
        use Protocol::*;
        assert_eq!(
            got,
            vec![
                (fa(Tcp, "10.96.0.1:80"), ClusterIp, "a", 0, true),
                (fa(Tcp, "10.96.0.2:8080"), ClusterIp, "np", 0, true),
                (fa(Tcp, "10.96.0.3:80"), ClusterIp, "lb", 0, true),
                (fa(Tcp, "192.168.1.10:30001"), NodePort, "np", 0, false),
                (fa(Tcp, "192.168.1.10:30080"), NodePort, "lb", 0, false),
                (fa(Tcp, "192.168.1.200:80"), External, "lb", 0, true),
                (fa(Udp, "10.96.0.3:53"), ClusterIp, "lb", 1, true),
                (fa(Udp, "192.168.1.10:30053"), NodePort, "lb", 1, false),
                (fa(Udp, "192.168.1.200:53"), External, "lb", 1, true),
            ]
        );
    }

    #[test]
    fn a_contested_listener_goes_to_the_first_service_by_key() {
        let local = LocalNode {
            underlay: Ipv4Addr::new(192, 168, 1, 10),
        };
        let mut table = ServiceTable::default();
        for name in ["b", "a"] {
            let s = svc(
                name,
                ServiceType::ClusterIp,
                Some([10, 96, 0, 1]),
                vec![port("", Protocol::Tcp, 80, None)],
            );
            table.services.insert(s.key.clone(), s);
        }
        let f = frontends(&table, &local);
        assert_eq!(f.len(), 1);
        assert_eq!(f[&fa(Protocol::Tcp, "10.96.0.1:80")].service.name, "a");
    }
}
