//! Helpers shared by the crate's unit tests.

use std::net::{Ipv4Addr, SocketAddrV4};

use std::collections::BTreeMap;

use overlayd_proto::service::{
    Algorithm, ClusterIp, HealthCheck, Protocol, ServicePort, ServiceSpec, ServiceType,
    SessionAffinity,
};

use overlayd_proto::path::{PathKind, PathRule, PeerRule, ZonePairRule};

use crate::schema::{
    Bridge, Cluster, Config, Daemon, Dataplane, Dns, DnsUpstream, Gossip, Nat, Node, OnExit,
    PathPolicy, Peer, PortRange, Profile, Quic, Relay, Services, TimingOverrides, Tunnel,
};

/// A configuration with every optional key set and one peer, so that serializing it
/// names every key of the schema.
pub(crate) fn full_config() -> Config {
    Config {
        node: Node {
            name: "node-1".into(),
            zone: "rack-1".into(),
            underlay_interface: Some("eth0".into()),
            underlay_address: Some(Ipv4Addr::new(192, 168, 1, 10)),
            advertise_address: Some(Ipv4Addr::new(203, 0, 113, 10)),
            pod_subnet: Some("10.244.1.0/24".parse().unwrap()),
            vtep_mac: Some("0e:00:00:00:00:01".parse().unwrap()),
        },
        cluster: Cluster {
            cidr: "10.244.0.0/16".parse().unwrap(),
            name: "overlayd".into(),
            subnet_prefix: 24,
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            domain: "cluster.local".into(),
        },
        bridge: Bridge {
            name: "ovd0".into(),
            mtu: Some(1500),
        },
        tunnel: Tunnel {
            device: "ovdtun0".into(),
            port: 8472,
            vni: 1,
            host_gw: true,
            mtu: Some(1450),
            offload: true,
            udp_gso: true,
            udp_gro: true,
        },
        nat: Nat { masquerade: true },
        daemon: Daemon {
            state_dir: "/var/lib/overlayd".into(),
            control_socket: "/run/overlayd/overlayd.sock".into(),
            on_exit: OnExit::Keep,
        },
        gossip: Some(full_gossip()),
        peers: vec![Peer {
            name: "node-2".into(),
            underlay_address: Ipv4Addr::new(192, 168, 1, 11),
            pod_subnet: "10.244.2.0/24".parse().unwrap(),
            vtep_mac: Some("0e:00:00:00:00:02".parse().unwrap()),
        }],
        services: Services {
            dataplane: Dataplane::Proxy,
            node_port_range: PortRange {
                lo: 30000,
                hi: 32767,
            },
            external_pool: vec!["192.0.2.0/28".parse().unwrap()],
            relay: Relay::Splice,
        },
        dns: Dns {
            enabled: true,
            upstream: vec![DnsUpstream("192.0.2.53:53".parse().unwrap())],
        },
        service_specs: vec![full_service()],
        quic: Some(Quic {
            port: 8473,
            ca: "/etc/overlayd/pki/ca.pem".into(),
            cert: "/etc/overlayd/pki/node-1.pem".into(),
            key: "/etc/overlayd/pki/node-1.key".into(),
        }),
        path: PathPolicy {
            zone_pairs: vec![ZonePairRule {
                zones: ["rack-1".into(), "dc-2".into()],
                rule: PathRule {
                    allow: Some(vec![PathKind::Quic, PathKind::Relay]),
                    require_encryption: Some(true),
                },
            }],
            peers: vec![PeerRule {
                peer: "node-2".into(),
                rule: PathRule {
                    allow: Some(vec![PathKind::Udp, PathKind::Quic]),
                    require_encryption: Some(false),
                },
            }],
        },
    }
}

/// A Service with every key set (valid with `full_config`'s settings).
fn full_service() -> ServiceSpec {
    ServiceSpec {
        name: "web".into(),
        namespace: "default".into(),
        kind: ServiceType::LoadBalancer,
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: Some(8080),
            node_port: Some(30080),
            proxy_protocol: true,
        }],
        selector: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
        backends: vec!["192.0.2.100".parse().unwrap()],
        cluster_ip: Some(ClusterIp::Ip("10.96.0.10".parse().unwrap())),
        session_affinity: SessionAffinity::ClientIp,
        affinity_timeout_s: 600,
        algorithm: Algorithm::Maglev,
        health_check: HealthCheck::default(),
        external_ip: Some("192.0.2.1".parse().unwrap()),
        external_name: Some("db.example.com".into()),
    }
}

fn full_gossip() -> Gossip {
    Gossip {
        bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7946),
        advertise: Some(SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 7946)),
        seeds: vec!["192.168.1.11".into()],
        key_files: vec!["/etc/overlayd/gossip.key".into()],
        profile: Profile::Lan,
        timing: every_override(),
    }
}

/// Every timer overridden, each with a distinct value; valid together.
pub(crate) fn every_override() -> TimingOverrides {
    TimingOverrides {
        probe_interval_ms: Some(1001),
        probe_timeout_ms: Some(2),
        indirect_probes: Some(3),
        suspicion_mult: Some(4),
        suspicion_max_mult: Some(5),
        suspicion_confirmations: Some(6),
        gossip_interval_ms: Some(1007),
        gossip_fanout: Some(8),
        push_pull_interval_ms: Some(1009),
        reannounce_interval_ms: Some(1010),
        dead_reap_after_ms: Some(1011),
        tombstone_gc_after_ms: Some(1012),
        retransmit_mult: Some(13),
        lhm_max: Some(14),
        stream_timeout_ms: Some(1015),
        claim_wait_ms: Some(1016),
    }
}

/// Every key of the schema as a path without array indices: `node`, `node.name`, …,
/// `peer`, `peer.name`, …
pub(crate) fn schema_keys() -> Vec<String> {
    let value = toml::Value::try_from(full_config()).unwrap();
    let mut keys = Vec::new();
    collect_keys(&value, "", &mut keys);
    keys
}

fn collect_keys(value: &toml::Value, prefix: &str, keys: &mut Vec<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                keys.push(path.clone());
                // A selector's keys are labels, not schema keys.
                if path != "service.selector" {
                    collect_keys(value, &path, keys);
                }
            }
        }
        toml::Value::Array(array) => {
            for element in array {
                collect_keys(element, prefix, keys);
            }
        }
        _ => {}
    }
}
