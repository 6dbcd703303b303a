//! Properties over generated input: valid configurations survive a TOML round trip,
//! and no input makes `parse` panic.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use overlayd_config::{
    Bridge, Cluster, Config, Daemon, Dataplane, Dns, DnsUpstream, Gossip, Nat, Node, OnExit, Peer,
    PortRange, Profile, Services, TimingOverrides, Tunnel, parse,
};
use overlayd_proto::gossip::{MAX_COUNT, MAX_MULTIPLIER, MAX_TIMER, MAX_TOMBSTONE_GC};
use overlayd_proto::service::{
    Algorithm, HealthCheck, Protocol, ServicePort, ServiceSpec, ServiceType, SessionAffinity,
};
use overlayd_proto::wire::MacAddr;
use proptest::collection::{btree_set, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;

proptest! {
    #[test]
    fn valid_configs_round_trip_through_toml(config in config()) {
        let text = toml::to_string(&config).unwrap();

        let parsed = parse(&text, "generated.toml");

        match parsed {
            Ok(parsed) => prop_assert_eq!(parsed, config),
            Err(error) => prop_assert!(false, "{error}\n{text}"),
        }
    }

    #[test]
    fn arbitrary_text_never_panics(source in any::<String>()) {
        let _ = parse(&source, "arbitrary.toml");
    }

    #[test]
    fn mangled_configs_never_panic_and_errors_point_into_the_file(
        config in config(),
        at in any::<Index>(),
        cut in 0usize..40,
        junk in r#"[\[\]{}="'.,#\n a-z0-9_/:-]{0,12}"#,
    ) {
        let mut text = toml::to_string(&config).unwrap();
        let start = text.floor_char_boundary(at.index(text.len() + 1));
        let end = text.floor_char_boundary(start + cut);
        text.replace_range(start..end, &junk);

        let parsed = parse(&text, "mangled.toml");

        if let Err(error) = parsed {
            prop_assert!(error.line() >= 1 && error.column() >= 1, "{error}");
            prop_assert!(error.line() <= text.lines().count() + 1, "{error}\n{text}");
        }
    }
}

/// Valid configurations: every name, address and subnet distinct and well formed; with
/// gossip or without, and with gossip with a static pod subnet or without.
fn config() -> impl Strategy<Value = Config> {
    (0usize..=5, 8u8..=20, any::<u32>())
        .prop_flat_map(|(peer_count, cluster_prefix, bits)| {
            let cidr = Ipv4Net::new(Ipv4Addr::from(bits), cluster_prefix)
                .expect("8..=20 is a valid prefix length")
                .trunc();
            let nodes = peer_count + 1;
            (cluster_prefix + 3..=30).prop_flat_map(move |subnet_prefix| {
                let count = 1u32 << (subnet_prefix - cidr.prefix_len()).min(16);
                (
                    Just(subnet_prefix),
                    btree_set(0..count, nodes),
                    vec(host_address(), nodes + 1).prop_filter("distinct", |a| all_distinct(a)),
                    vec(dns_label(), nodes),
                    vec(option::of(unicast_mac()), nodes),
                    (option::of(interface_name()), any::<bool>(), any::<bool>()),
                    (interface_name(), option::of(mtu())),
                    tunnel(),
                    any::<bool>(),
                    daemon(),
                    (
                        Just(cidr),
                        dns_label(),
                        cluster_name(),
                        0u8..=30,
                        cluster_prefix..=30,
                        option::of(gossip()),
                        any::<bool>(),
                    ),
                    (option::of(dns_label()), 1u16..=u16::MAX, any::<bool>()),
                )
            })
        })
        .prop_map(
            |(
                subnet_prefix,
                subnet_indices,
                addresses,
                labels,
                macs,
                (underlay_interface, has_underlay, has_advertise),
                (bridge_name, bridge_mtu),
                tunnel,
                masquerade,
                daemon,
                (cidr, zone, cluster_name, any_prefix, claim_prefix, gossip, has_static_subnet),
                (service_name, service_port, dns_enabled),
            )| {
                let subnet: Vec<Ipv4Net> = subnet_indices
                    .iter()
                    .map(|&i| nth_subnet(cidr, subnet_prefix, i))
                    .collect();
                // A numeric suffix keeps names distinct: the labels never end in '-'.
                let name = |i: usize| format!("{}-{i}", labels[i]);
                let peers = (1..labels.len())
                    .map(|i| Peer {
                        name: name(i),
                        underlay_address: addresses[i + 1],
                        pod_subnet: subnet[i],
                        vtep_mac: macs[i],
                    })
                    .collect();
                Config {
                    node: Node {
                        name: name(0),
                        underlay_interface,
                        underlay_address: has_underlay.then_some(addresses[0]),
                        advertise_address: has_advertise.then_some(addresses[1]),
                        pod_subnet: (gossip.is_none() || has_static_subnet).then_some(subnet[0]),
                        vtep_mac: macs[0],
                        zone,
                    },
                    services: services(
                        &[Some(tunnel.port), gossip.as_ref().map(|g| g.bind.port())],
                        cidr,
                    ),
                    dns: Dns {
                        enabled: dns_enabled,
                        upstream: vec![DnsUpstream("192.0.2.53:5353".parse().expect("address"))],
                    },
                    service_specs: service_name
                        .into_iter()
                        .map(|name| service(&name, service_port))
                        .collect(),
                    quic: None,
                    path: Default::default(),
                    cluster: Cluster {
                        cidr,
                        service_cidr: service_cidr(cidr),
                        domain: "cluster.local".into(),
                        name: cluster_name,
                        // Only claims need a prefix that fits the cluster CIDR.
                        subnet_prefix: if gossip.is_some() {
                            claim_prefix
                        } else {
                            any_prefix
                        },
                    },
                    bridge: Bridge {
                        name: bridge_name,
                        mtu: bridge_mtu,
                    },
                    tunnel,
                    nat: Nat { masquerade },
                    daemon,
                    gossip,
                    peers,
                }
            },
        )
}

/// A service CIDR clear of the pod CIDR `cidr`.
fn service_cidr(cidr: Ipv4Net) -> Ipv4Net {
    ["10.96.0.0/12", "172.16.0.0/16", "100.64.0.0/16"]
        .iter()
        .map(|s| s.parse::<Ipv4Net>().expect("subnet"))
        .find(|s| !overlayd_proto::overlaps(*s, cidr))
        .expect("three disjoint candidates: a /8 to /20 overlaps at most one")
}

/// `[services]` with a node port range clear of `ports` (the node's own), and a pool
/// clear of the pod CIDR `cidr` and its service CIDR.
fn services(ports: &[Option<u16>], cidr: Ipv4Net) -> Services {
    let range = [(30000, 32767), (40000, 40999), (50000, 50999)]
        .into_iter()
        .find(|(lo, hi)| ports.iter().flatten().all(|p| !(lo..=hi).contains(&p)))
        .expect("two ports leave one of three disjoint ranges free");
    Services {
        dataplane: Dataplane::Proxy,
        node_port_range: PortRange {
            lo: range.0,
            hi: range.1,
        },
        external_pool: ["192.0.2.0/28", "198.51.100.0/28", "203.0.113.0/28"]
            .iter()
            .map(|s| s.parse::<Ipv4Net>().expect("subnet"))
            .filter(|p| {
                !overlayd_proto::overlaps(*p, cidr)
                    && !overlayd_proto::overlaps(*p, service_cidr(cidr))
            })
            .take(1)
            .collect(),
        relay: Default::default(),
    }
}

/// A ClusterIP Service named `name` on `port`, selecting `app=<name>`.
fn service(name: &str, port: u16) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        namespace: "default".into(),
        kind: ServiceType::ClusterIp,
        ports: vec![ServicePort {
            name: String::new(),
            protocol: Protocol::Tcp,
            port,
            target_port: None,
            node_port: None,
            proxy_protocol: false,
        }],
        selector: [("app".to_owned(), name.to_owned())].into(),
        backends: Vec::new(),
        cluster_ip: None,
        session_affinity: SessionAffinity::None,
        affinity_timeout_s: 10_800,
        algorithm: Algorithm::RoundRobin,
        health_check: HealthCheck::default(),
        external_ip: None,
        external_name: None,
    }
}

/// The `index`th subnet of length `prefix` inside `cidr`.
fn nth_subnet(cidr: Ipv4Net, prefix: u8, index: u32) -> Ipv4Net {
    let network = u32::from(cidr.network()) + (index << (32 - prefix));
    Ipv4Net::new(Ipv4Addr::from(network), prefix).expect("prefix is at most 30")
}

fn all_distinct(addresses: &[Ipv4Addr]) -> bool {
    addresses.iter().collect::<BTreeSet<_>>().len() == addresses.len()
}

fn tunnel() -> impl Strategy<Value = Tunnel> {
    (
        interface_name(),
        1u16..=u16::MAX,
        0u32..=16_777_215,
        any::<bool>(),
        option::of(mtu()),
        any::<[bool; 3]>(),
    )
        .prop_map(
            |(device, port, vni, host_gw, mtu, [offload, udp_gso, udp_gro])| Tunnel {
                device,
                port,
                vni,
                host_gw,
                mtu,
                offload,
                udp_gso,
                udp_gro,
            },
        )
}

fn daemon() -> impl Strategy<Value = Daemon> {
    let on_exit = prop_oneof![Just(OnExit::Remove), Just(OnExit::Keep)];
    (absolute_path(), absolute_path(), on_exit).prop_map(|(state_dir, control_socket, on_exit)| {
        Daemon {
            state_dir,
            control_socket,
            on_exit,
        }
    })
}

/// Boxed, as is `timing_overrides`: inline, their value trees overflow the test
/// thread's stack in debug builds.
fn gossip() -> BoxedStrategy<Gossip> {
    let profile = prop_oneof![Just(Profile::Lan), Just(Profile::Wan)];
    (
        (any::<u32>().prop_map(Ipv4Addr::from), 1u16..=u16::MAX),
        option::of((host_address(), 1u16..=u16::MAX)),
        btree_set(seed_host(), 0..4),
        vec(option::of(1u16..=u16::MAX), 4),
        vec(absolute_path(), 1..3),
        profile,
        timing_overrides(),
    )
        .prop_map(
            |(bind, advertise, hosts, ports, key_files, profile, timing)| Gossip {
                bind: SocketAddrV4::new(bind.0, bind.1),
                advertise: advertise.map(|(address, port)| SocketAddrV4::new(address, port)),
                // Distinct hosts make distinct seeds, whatever their ports.
                seeds: hosts
                    .into_iter()
                    .zip(ports)
                    .map(|(host, port)| match port {
                        Some(port) => format!("{host}:{port}"),
                        None => host,
                    })
                    .collect(),
                key_files,
                profile,
                timing,
            },
        )
        .boxed()
}

/// An IPv4 address or a DNS name, lower case so that distinct hosts are distinct seeds.
fn seed_host() -> impl Strategy<Value = String> {
    let dns_name = "[a-z]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}";
    prop_oneof![
        host_address().prop_map(|address| address.to_string()),
        dns_name.prop_map(String::from),
    ]
}

/// Overrides that always work together: a probe timeout shorter than any profile's or
/// overridden probe interval, every value within `Timing::validate`'s bounds.
fn timing_overrides() -> BoxedStrategy<TimingOverrides> {
    let week = MAX_TIMER.as_millis() as u64;
    let ms = move || option::of(1u64..=week);
    let count = || option::of(1u32..=MAX_COUNT as u32);
    let mult = || option::of(1u32..=MAX_MULTIPLIER);
    (
        (
            option::of(3001u64..=600_000),
            option::of(1u64..=100),
            count(),
            mult(),
            mult(),
            count(),
            ms(),
            count(),
        ),
        (
            ms(),
            ms(),
            ms(),
            option::of(1u64..=MAX_TOMBSTONE_GC.as_millis() as u64),
            mult(),
            count(),
            ms(),
            ms(),
        ),
    )
        .prop_map(|(a, b)| TimingOverrides {
            probe_interval_ms: a.0,
            probe_timeout_ms: a.1,
            indirect_probes: a.2,
            suspicion_mult: a.3,
            suspicion_max_mult: a.4,
            suspicion_confirmations: a.5,
            gossip_interval_ms: a.6,
            gossip_fanout: a.7,
            push_pull_interval_ms: b.0,
            reannounce_interval_ms: b.1,
            dead_reap_after_ms: b.2,
            tombstone_gc_after_ms: b.3,
            retransmit_mult: b.4,
            lhm_max: b.5,
            stream_timeout_ms: b.6,
            claim_wait_ms: b.7,
        })
        .boxed()
}

fn cluster_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,64}"
}

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?"
}

fn interface_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.@-]{1,15}".prop_filter("reserved", |name| name != "." && name != "..")
}

fn host_address() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>()
        .prop_map(Ipv4Addr::from)
        .prop_filter("not a host address", |address| {
            !(address.is_unspecified()
                || address.is_loopback()
                || address.is_multicast()
                || address.is_broadcast())
        })
}

fn unicast_mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>()
        .prop_map(|mut bytes| {
            bytes[0] &= 0xfe;
            MacAddr(bytes)
        })
        .prop_filter("all zeros", |mac| !mac.is_zero())
}

fn mtu() -> impl Strategy<Value = u32> {
    576u32..=65535
}

fn absolute_path() -> impl Strategy<Value = PathBuf> {
    r#"/[a-zA-Z0-9 _."'\\/-]{0,30}"#.prop_map(PathBuf::from)
}
