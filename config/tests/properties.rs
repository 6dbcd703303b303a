//! Properties over generated input: valid configurations survive a TOML round trip,
//! and no input makes `parse` panic.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use overlayd_config::{Bridge, Cluster, Config, Daemon, Nat, Node, OnExit, Peer, Tunnel, parse};
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

/// Valid configurations: every name, address and subnet distinct and well formed.
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
                    Just(cidr),
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
                cidr,
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
                        pod_subnet: subnet[0],
                        vtep_mac: macs[0],
                    },
                    cluster: Cluster { cidr },
                    bridge: Bridge {
                        name: bridge_name,
                        mtu: bridge_mtu,
                    },
                    tunnel,
                    nat: Nat { masquerade },
                    daemon,
                    peers,
                }
            },
        )
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
    )
        .prop_map(|(device, port, vni, host_gw, mtu)| Tunnel {
            device,
            port,
            vni,
            host_gw,
            mtu,
        })
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
