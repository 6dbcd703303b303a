//! Builders and proptest strategies shared by the service tests.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::codec::{Allocation, PodEndpoint, ServiceObject};
use super::spec::{
    Algorithm, ClusterIp, DEFAULT_AFFINITY_TIMEOUT_S, ExplicitBackend, HealthCheck, Protocol,
    ServicePort, ServiceSpec, ServiceType, SessionAffinity,
};
use crate::gossip::Hlc;

pub(crate) fn port(p: u16) -> ServicePort {
    ServicePort {
        name: String::new(),
        protocol: Protocol::Tcp,
        port: p,
        target_port: None,
        node_port: None,
        proxy_protocol: false,
    }
}

#[allow(dead_code)]
pub(crate) fn named_port(name: &str, p: u16) -> ServicePort {
    ServicePort {
        name: name.into(),
        ..port(p)
    }
}

/// `default/<name>`, ClusterIP, port 80, selecting `app=<name>`.
pub(crate) fn spec(name: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        namespace: "default".into(),
        kind: ServiceType::ClusterIp,
        ports: vec![port(80)],
        selector: BTreeMap::from([("app".to_owned(), name.to_owned())]),
        backends: Vec::new(),
        cluster_ip: None,
        session_affinity: SessionAffinity::None,
        affinity_timeout_s: DEFAULT_AFFINITY_TIMEOUT_S,
        algorithm: Algorithm::RoundRobin,
        health_check: HealthCheck::default(),
        external_ip: None,
        external_name: None,
    }
}

/// `spec(name)` with `n` explicit backends 10.1.x.y instead of a selector.
pub(crate) fn with_backends(name: &str, n: u32) -> ServiceSpec {
    ServiceSpec {
        selector: BTreeMap::new(),
        backends: (0..n)
            .map(|i| ExplicitBackend {
                ip: Ipv4Addr::from(0x0a01_0000 + i + 1),
                port: None,
            })
            .collect(),
        ..spec(name)
    }
}

pub(crate) fn pod(ip: [u8; 4], labels: &[(&str, &str)]) -> PodEndpoint {
    PodEndpoint {
        ip: Ipv4Addr::from(ip),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,14}[a-z0-9]"
}

/// Valid Service objects of every type, with allocations that fit their specs.
pub(crate) fn service_object() -> impl Strategy<Value = ServiceObject> {
    (
        (label(), label(), 0u8..4, 1usize..5),
        (
            proptest::collection::vec(
                (
                    any::<bool>(),
                    1u16..=u16::MAX,
                    proptest::option::of(1u16..=u16::MAX),
                    any::<bool>(),
                    any::<bool>(),
                ),
                4,
            ),
            any::<bool>(),
            0usize..40,
            proptest::collection::btree_map("[a-z]{1,8}(\\.io/[a-z]{1,5})?", "[a-z0-9]{0,8}", 0..4),
        ),
        (
            0u8..3,
            any::<u32>(),
            any::<u64>(),
            1u32..=86_400,
            0u8..3,
            any::<bool>(),
        ),
        (
            100u32..10_000,
            1u32..=100,
            1u32..=100,
            "[a-z]{1,10}\\.example\\.com\\.?",
        ),
    )
        .prop_map(
            |(
                (name, namespace, kind, nports),
                (port_bits, use_backends, nbackends, selector),
                (cip, ip_bits, created, affinity_s, algo, client_ip),
                (interval, rise, fall, external_name),
            )| {
                let kind = match kind {
                    0 => ServiceType::ClusterIp,
                    1 => ServiceType::NodePort,
                    2 => ServiceType::LoadBalancer,
                    _ => ServiceType::ExternalName,
                };
                let external = kind == ServiceType::ExternalName;
                let ports: Vec<ServicePort> = port_bits
                    .iter()
                    .take(if external { nports - 1 } else { nports })
                    .enumerate()
                    .map(|(i, &(udp, p, target, give_np, proxy))| ServicePort {
                        name: format!("p{i}"),
                        protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                        // Distinct per index.
                        port: (p / 8) * 8 + i as u16 + 1,
                        target_port: target,
                        node_port: (kind.has_node_ports() && give_np).then_some(30_000 + i as u16),
                        proxy_protocol: proxy && !udp,
                    })
                    .collect();
                let single = ports.len() == 1;
                let (selector, backends) = if external {
                    (BTreeMap::new(), Vec::new())
                } else if use_backends {
                    let backends = (0..nbackends as u32)
                        .map(|i| ExplicitBackend {
                            ip: Ipv4Addr::from(0x0a02_0000 + i * 7 + 1),
                            port: (single && i % 2 == 1).then_some(9000 + i as u16),
                        })
                        .collect();
                    (BTreeMap::new(), backends)
                } else {
                    (selector, Vec::new())
                };
                let vip = Ipv4Addr::from(0x0a60_0001 + (ip_bits & 0xffff));
                let cluster_ip = match (external, cip) {
                    (true, _) => None,
                    (false, 0) => None,
                    (false, 1) if !kind.has_node_ports() => Some(ClusterIp::Headless),
                    _ => Some(ClusterIp::Ip(vip)),
                };
                let lb = kind == ServiceType::LoadBalancer;
                let external_ip = (lb && ip_bits % 2 == 0)
                    .then(|| Ipv4Addr::new(192, 0, 2, 1 + (ip_bits % 200) as u8));
                let spec = ServiceSpec {
                    name,
                    namespace,
                    kind,
                    ports,
                    selector,
                    backends,
                    cluster_ip,
                    session_affinity: if client_ip {
                        SessionAffinity::ClientIp
                    } else {
                        SessionAffinity::None
                    },
                    affinity_timeout_s: affinity_s,
                    algorithm: match algo {
                        0 => Algorithm::RoundRobin,
                        1 => Algorithm::LeastConn,
                        _ => Algorithm::Maglev,
                    },
                    health_check: HealthCheck {
                        enabled: client_ip,
                        interval_ms: interval,
                        timeout_ms: interval / 2,
                        rise,
                        fall,
                    },
                    external_ip,
                    external_name: external.then_some(external_name),
                };
                let alloc = Allocation {
                    cluster_ip: spec
                        .has_cluster_ip()
                        .then(|| spec.given_cluster_ip().unwrap_or(vip)),
                    node_ports: spec
                        .ports
                        .iter()
                        .enumerate()
                        .map(|(i, p)| {
                            kind.has_node_ports()
                                .then(|| p.node_port.unwrap_or(31_000 + i as u16))
                        })
                        .collect(),
                    external_ip: if lb && ip_bits % 3 != 0 {
                        Some(external_ip.unwrap_or(Ipv4Addr::new(198, 51, 100, 9)))
                    } else {
                        external_ip
                    },
                };
                ServiceObject {
                    spec,
                    alloc,
                    created: Hlc(created),
                }
            },
        )
}
