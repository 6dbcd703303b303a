//! Every way `parse` rejects a file, with the exact message a user sees.

use overlayd_config::parse;

/// A valid `[node]` table on lines 1 to 4; tests append the part under test from line 5.
const NODE: &str = r#"[node]
name = "node-1"
pod_subnet = "10.244.1.0/24"
underlay_address = "192.168.1.10"
"#;

/// The error `parse` gives for `source`, as displayed.
fn error(source: &str) -> String {
    match parse(source, "o.toml") {
        Ok(config) => panic!("expected an error, parsed {config:?}"),
        Err(error) => error.to_string(),
    }
}

/// The error for the valid `[node]` table followed by `rest`.
fn error_after_node(rest: &str) -> String {
    error(&format!("{NODE}{rest}"))
}

/// The error for a `[node]` table with the extra key line `line` (on line 5).
fn error_in_node(line: &str) -> String {
    error_after_node(&format!("{line}\n"))
}

/// The error for the valid `[node]` table, a `[gossip]` table with one key file on lines 5
/// and 6, and `rest` from line 7.
fn error_in_gossip(rest: &str) -> String {
    error_after_node(&format!("[gossip]\nkey_files = [\"/k\"]\n{rest}"))
}

/// The error for the valid `[node]` table and one `[[peer]]` (header on line 5) with
/// `overrides` replacing its default keys.
fn error_in_peer(overrides: &str) -> String {
    let mut peer = vec![
        ("name", r#""node-2""#),
        ("underlay_address", r#""192.168.1.11""#),
        ("pod_subnet", r#""10.244.2.0/24""#),
    ];
    for line in overrides.lines() {
        let (key, value) = line
            .split_once(" = ")
            .expect("overrides are `key = value` lines");
        match peer.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => peer.push((key, value)),
        }
    }
    let lines: Vec<String> = peer.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    error_after_node(&format!("[[peer]]\n{}", lines.concat()))
}

// ---- syntax ----

#[test]
fn syntax_error() {
    assert_eq!(
        error_after_node("[tunnel\n"),
        "o.toml:5:8: (top level): unclosed table; expected `]`"
    );
}

#[test]
fn duplicate_key() {
    assert_eq!(
        error_after_node("[tunnel]\nport = 1\nport = 2\n"),
        "o.toml:7:1: (top level): duplicate key `port`; expected every key and table to be \
         defined only once"
    );
}

#[test]
fn duplicate_table() {
    assert_eq!(
        error_after_node("[node]\n"),
        "o.toml:5:2: (top level): duplicate key `node`; expected every key and table to be \
         defined only once"
    );
}

// ---- types and keys ----

#[test]
fn wrong_type() {
    assert_eq!(
        error_after_node("[tunnel]\nport = \"x\"\n"),
        r#"o.toml:6:8: tunnel.port: expected a UDP port between 1 and 65535, found "x""#
    );
}

#[test]
fn integer_out_of_type_range() {
    assert_eq!(
        error_after_node("[tunnel]\nport = 70000\n"),
        "o.toml:6:8: tunnel.port: expected a UDP port between 1 and 65535, found 70000"
    );
}

#[test]
fn negative_vni() {
    assert_eq!(
        error_after_node("[tunnel]\nvni = -1\n"),
        "o.toml:6:7: tunnel.vni: expected a VXLAN network identifier between 0 and 16777215, \
         found -1"
    );
}

#[test]
fn unparsable_subnet() {
    let source = format!(
        "{NODE}[[peer]]\nname = \"b\"\nunderlay_address = \"10.0.0.2\"\npod_subnet = \"10.244.2.0/24\"\n\
         [[peer]]\nname = \"c\"\nunderlay_address = \"10.0.0.3\"\npod_subnet = \"10.244.1\"\n"
    );

    assert_eq!(
        error(&source),
        r#"o.toml:12:14: peer[1].pod_subnet: expected an IPv4 subnet like 10.244.1.0/24, found "10.244.1""#
    );
}

#[test]
fn unparsable_address() {
    assert_eq!(
        error(
            r#"[node]
name = "node-1"
pod_subnet = "10.244.1.0/24"
underlay_address = "192.168.1"
"#
        ),
        r#"o.toml:4:20: node.underlay_address: expected a unicast IPv4 address like 192.168.1.10, found "192.168.1""#
    );
}

#[test]
fn unparsable_mac() {
    assert_eq!(
        error_in_node(r#"vtep_mac = "0e:12:34""#),
        r#"o.toml:5:12: node.vtep_mac: expected a unicast MAC address like 0e:12:34:56:78:9a, found "0e:12:34""#
    );
}

#[test]
fn unknown_on_exit() {
    assert_eq!(
        error_after_node("[daemon]\non_exit = \"stop\"\n"),
        r#"o.toml:6:11: daemon.on_exit: expected "remove" or "keep", found "stop""#
    );
}

#[test]
fn table_where_a_value_belongs() {
    assert_eq!(
        error_after_node("[peer]\nname = \"b\"\n"),
        "o.toml:5:1: peer: expected [[peer]] tables, each with `name`, `underlay_address` and \
         `pod_subnet`, found [peer]"
    );
}

#[test]
fn unknown_key() {
    assert_eq!(
        error_after_node("[tunnel]\nprot = 8472\n"),
        "o.toml:6:1: tunnel.prot: unknown key `prot`; expected one of: device, port, vni, \
         host_gw, mtu, offload, udp_gso, udp_gro"
    );
}

#[test]
fn unknown_top_level_key() {
    assert_eq!(
        error(&format!("log_level = \"debug\"\n{NODE}")),
        "o.toml:1:1: log_level: unknown key `log_level`; expected one of: node, cluster, \
         bridge, tunnel, nat, daemon, gossip, peer, services, dns, service, quic, path"
    );
}

const QUIC: &str =
    "[quic]\nca = \"/pki/ca.pem\"\ncert = \"/pki/node-1.pem\"\nkey = \"/pki/node-1.key\"\n";

#[test]
fn quic_needs_absolute_files_and_a_udp_port_of_its_own() {
    assert_eq!(
        error_after_node("[quic]\nca = \"/pki/ca.pem\"\ncert = \"/pki/node-1.pem\"\n"),
        "o.toml:5:1: quic.key: missing required key `key`; expected an absolute path like \
         /etc/overlayd/pki/node-1.key"
    );
    assert_eq!(
        error_after_node("[quic]\nca = \"pki/ca.pem\"\ncert = \"/c\"\nkey = \"/k\"\n"),
        "o.toml:6:6: quic.ca: \"pki/ca.pem\" is a relative path; expected an absolute path like \
         /etc/overlayd/pki/ca.pem"
    );
    assert_eq!(
        error_after_node(&format!("{QUIC}port = 8472\n")),
        "o.toml:9:8: quic.port: 8472 is taken by tunnel.port (the default); expected a UDP port \
         of its own, like 8473"
    );
    assert_eq!(
        error_in_gossip(&format!("bind = \"0.0.0.0:8473\"\n{QUIC}")),
        "o.toml:8:1: quic.port: 8473 is taken by gossip.bind (line 7); expected a UDP port of \
         its own, like 8473"
    );
}

#[test]
fn path_rules_wrong_for_every_peer_are_refused() {
    assert_eq!(
        error_after_node(
            "[[path.zone_pairs]]\nzones = [\"a\", \"b\"]\nallow = [\"udp\"]\nrequire_encryption = true\n"
        ),
        "o.toml:5:1: path.zone_pairs[0]: zone pair [a, b] requires encryption but allows only cleartext paths \
         (host-gw, udp); allow quic or relay too"
    );
    assert_eq!(
        error_after_node("[[path.peers]]\npeer = \"node-2\"\nallow = [\"tcp\"]\n"),
        "o.toml:7:10: path.peers[0].allow[0]: expected one of \"host-gw\", \"udp\", \"quic\" and \
         \"relay\", found \"tcp\""
    );
    assert_eq!(
        error_after_node(
            "[[path.peers]]\npeer = \"n2\"\n[[path.peers]]\npeer = \"n2\"\nallow = [\"udp\"]\n"
        ),
        "o.toml:7:1: path.peers[1]: peer \"n2\" has two rules; merge them into one \
         `[[path.peers]]` entry"
    );
    assert_eq!(
        error_after_node("[[path.zone_pairs]]\nzones = [\"a\", \"B\"]\n"),
        "o.toml:6:15: path.zone_pairs[0].zones[1]: \"B\" contains 'B'; expected a zone name like \
         dc-a (1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-')"
    );
}

#[test]
fn missing_required_key_points_at_its_table() {
    assert_eq!(
        error_after_node("[[peer]]\nname = \"node-2\"\npod_subnet = \"10.244.2.0/24\"\n"),
        "o.toml:5:1: peer[0].underlay_address: missing required key `underlay_address`; \
         expected a unicast IPv4 address like 192.168.1.10"
    );
}

#[test]
fn missing_node_table() {
    assert_eq!(
        error("# nothing here\n"),
        "o.toml:1:1: node: missing required key `node`; expected a [node] table with at least \
         `name`, and `pod_subnet` unless [gossip] is set"
    );
}

#[test]
fn missing_pod_subnet_without_gossip() {
    assert_eq!(
        error("# One node.\n[node]\nname = \"node-1\"\n"),
        "o.toml:2:1: node.pod_subnet: missing key pod_subnet; required unless [gossip] is set, \
         in which case the node claims one from cluster.cidr"
    );
}

#[test]
fn missing_key_files() {
    assert_eq!(
        error_after_node("[gossip]\nseeds = [\"10.0.0.1\"]\n"),
        r#"o.toml:5:1: gossip.key_files: missing required key `key_files`; expected a list of at least one absolute path, like ["/etc/overlayd/gossip.key"]"#
    );
}

#[test]
fn unknown_timing_key() {
    assert_eq!(
        error_in_gossip("[gossip.timing]\nprobe_intervall_ms = 100\n"),
        "o.toml:8:1: gossip.timing.probe_intervall_ms: unknown key `probe_intervall_ms`; \
         expected one of: probe_interval_ms, probe_timeout_ms, indirect_probes, suspicion_mult, \
         suspicion_max_mult, suspicion_confirmations, gossip_interval_ms, gossip_fanout, \
         push_pull_interval_ms, reannounce_interval_ms, dead_reap_after_ms, \
         tombstone_gc_after_ms, retransmit_mult, lhm_max, stream_timeout_ms, claim_wait_ms"
    );
}

#[test]
fn unknown_profile() {
    assert_eq!(
        error_in_gossip("profile = \"metro\"\n"),
        r#"o.toml:7:11: gossip.profile: expected "lan" or "wan", found "metro""#
    );
}

#[test]
fn bind_without_port() {
    assert_eq!(
        error_in_gossip("bind = \"0.0.0.0\"\n"),
        r#"o.toml:7:8: gossip.bind: expected an IPv4 address and port to listen on, like 0.0.0.0:7946, found "0.0.0.0""#
    );
}

#[test]
fn negative_timing_override() {
    assert_eq!(
        error_in_gossip("[gossip.timing]\ngossip_fanout = -1\n"),
        "o.toml:8:17: gossip.timing.gossip_fanout: expected a whole number between 1 and \
         4294967295, found -1"
    );
}

#[test]
fn seed_of_the_wrong_type() {
    assert_eq!(
        error_in_gossip("seeds = [\"10.0.0.1\", 7946]\n"),
        "o.toml:7:22: gossip.seeds[1]: expected a seed like 192.168.1.11 or \
         seed.example.com:7946 (HOST or HOST:PORT; HOST an IPv4 address or a DNS name, PORT 1 \
         to 65535, default gossip.bind's), found 7946"
    );
}

// ---- names ----

#[test]
fn node_name_with_uppercase() {
    assert_eq!(
        error(
            r#"[node]
name = "Node-1"
pod_subnet = "10.244.1.0/24"
"#
        ),
        r#"o.toml:2:8: node.name: "Node-1" contains 'N'; expected a DNS label like node-1 (1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-')"#
    );
}

#[test]
fn node_name_empty() {
    assert_eq!(
        error("[node]\nname = \"\"\npod_subnet = \"10.244.1.0/24\"\n"),
        r#"o.toml:2:8: node.name: "" is empty; expected a DNS label like node-1 (1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-')"#
    );
}

#[test]
fn node_name_too_long() {
    let name = "a".repeat(64);

    assert_eq!(
        error(&format!(
            "[node]\nname = \"{name}\"\npod_subnet = \"10.244.1.0/24\"\n"
        )),
        format!(
            "o.toml:2:8: node.name: \"{name}\" is 64 characters long; expected a DNS label like \
             node-1 (1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-')"
        )
    );
}

#[test]
fn peer_name_starting_with_hyphen() {
    assert_eq!(
        error_in_peer("name = \"-node-2\""),
        r#"o.toml:6:8: peer[0].name: "-node-2" starts with '-'; expected a DNS label like node-1 (1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-')"#
    );
}

#[test]
fn peer_name_ending_with_hyphen() {
    assert_eq!(
        error_in_peer("name = \"node-\""),
        r#"o.toml:6:8: peer[0].name: "node-" ends with '-'; expected a DNS label like node-1 (1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-')"#
    );
}

#[test]
fn zone_with_uppercase() {
    assert_eq!(
        error_in_node(r#"zone = "Rack-1""#),
        r#"o.toml:5:8: node.zone: "Rack-1" contains 'R'; expected a DNS label like rack-1 (1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-')"#
    );
}

#[test]
fn cluster_name_empty() {
    assert_eq!(
        error_after_node("[cluster]\nname = \"\"\n"),
        r#"o.toml:6:8: cluster.name: "" is empty; expected a cluster name like overlayd (1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-')"#
    );
}

#[test]
fn cluster_name_too_long() {
    let name = "c".repeat(65);

    assert_eq!(
        error_after_node(&format!("[cluster]\nname = \"{name}\"\n")),
        format!(
            "o.toml:6:8: cluster.name: \"{name}\" is 65 characters long; expected a cluster name \
             like overlayd (1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-')"
        )
    );
}

#[test]
fn cluster_name_with_space() {
    assert_eq!(
        error_after_node("[cluster]\nname = \"prod eu\"\n"),
        r#"o.toml:6:8: cluster.name: "prod eu" contains ' '; expected a cluster name like overlayd (1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-')"#
    );
}

#[test]
fn bridge_name_too_long() {
    assert_eq!(
        error_after_node("[bridge]\nname = \"overlayd-bridge0\"\n"),
        r#"o.toml:6:8: bridge.name: "overlayd-bridge0" is 16 bytes long; expected a Linux interface name like ovd0 (1 to 15 bytes without '/', ':' or whitespace, not "." or "..")"#
    );
}

#[test]
fn tunnel_device_with_slash() {
    assert_eq!(
        error_after_node("[tunnel]\ndevice = \"ovd/tun\"\n"),
        r#"o.toml:6:10: tunnel.device: "ovd/tun" contains '/'; expected a Linux interface name like ovdtun0 (1 to 15 bytes without '/', ':' or whitespace, not "." or "..")"#
    );
}

#[test]
fn underlay_interface_alias() {
    assert_eq!(
        error_in_node(r#"underlay_interface = "eth0:1""#),
        r#"o.toml:5:22: node.underlay_interface: "eth0:1" contains ':'; expected a Linux interface name like eth0 (1 to 15 bytes without '/', ':' or whitespace, not "." or "..")"#
    );
}

#[test]
fn interface_name_with_whitespace() {
    assert_eq!(
        error_after_node("[bridge]\nname = \"ovd 0\"\n"),
        r#"o.toml:6:8: bridge.name: "ovd 0" contains whitespace; expected a Linux interface name like ovd0 (1 to 15 bytes without '/', ':' or whitespace, not "." or "..")"#
    );
}

#[test]
fn interface_name_dot_dot() {
    assert_eq!(
        error_after_node("[tunnel]\ndevice = \"..\"\n"),
        r#"o.toml:6:10: tunnel.device: ".." is reserved; expected a Linux interface name like ovdtun0 (1 to 15 bytes without '/', ':' or whitespace, not "." or "..")"#
    );
}

#[test]
fn interface_name_empty() {
    assert_eq!(
        error_after_node("[bridge]\nname = \"\"\n"),
        r#"o.toml:6:8: bridge.name: "" is empty; expected a Linux interface name like ovd0 (1 to 15 bytes without '/', ':' or whitespace, not "." or "..")"#
    );
}

// ---- subnets ----

#[test]
fn cluster_cidr_with_host_bits() {
    assert_eq!(
        error_after_node("[cluster]\ncidr = \"10.244.1.0/16\"\n"),
        "o.toml:6:8: cluster.cidr: 10.244.1.0/16 has host bits set; did you mean 10.244.0.0/16?"
    );
}

#[test]
fn pod_subnet_with_host_bits() {
    assert_eq!(
        error("[node]\nname = \"node-1\"\npod_subnet = \"10.244.1.1/24\"\n"),
        "o.toml:3:14: node.pod_subnet: 10.244.1.1/24 has host bits set; did you mean \
         10.244.1.0/24?"
    );
}

#[test]
fn peer_pod_subnet_too_small() {
    assert_eq!(
        error_in_peer("pod_subnet = \"10.244.2.0/31\""),
        "o.toml:8:14: peer[0].pod_subnet: 10.244.2.0/31 leaves no addresses for pods; expected \
         a prefix length of at most /30"
    );
}

#[test]
fn pod_subnet_outside_default_cluster_cidr() {
    assert_eq!(
        error("[node]\nname = \"node-1\"\npod_subnet = \"10.10.1.0/24\"\n"),
        "o.toml:3:14: node.pod_subnet: 10.10.1.0/24 is outside cluster.cidr 10.244.0.0/16 (the \
         default); expected a subnet inside the cluster CIDR"
    );
}

#[test]
fn peer_pod_subnet_outside_cluster_cidr() {
    let source = format!("{NODE}[cluster]\ncidr = \"10.244.0.0/20\"\n");
    let source = format!(
        "{source}[[peer]]\nname = \"node-2\"\nunderlay_address = \"10.0.0.2\"\n\
         pod_subnet = \"10.244.16.0/24\"\n"
    );

    assert_eq!(
        error(&source),
        "o.toml:10:14: peer[0].pod_subnet: 10.244.16.0/24 is outside cluster.cidr 10.244.0.0/20 \
         (line 6); expected a subnet inside the cluster CIDR"
    );
}

#[test]
fn overlapping_peer_subnets() {
    let source = r#"# Two racks.
[node]
name = "node-1"
pod_subnet = "10.244.8.0/24"

[cluster]
cidr = "10.244.0.0/16"

# Rack one.
[[peer]]
name = "node-2"
underlay_address = "192.168.1.11"
# The whole first /23.
pod_subnet = "10.244.0.0/23"

[[peer]]
name = "node-3"
underlay_address = "192.168.1.12"
pod_subnet = "10.244.1.0/24"
"#;

    assert_eq!(
        error(source),
        "o.toml:19:14: peer[1].pod_subnet: 10.244.1.0/24 overlaps peer[0].pod_subnet \
         10.244.0.0/23 (line 14); every node needs a subnet of its own"
    );
}

#[test]
fn peer_subnet_overlapping_the_node_subnet() {
    assert_eq!(
        error_in_peer("pod_subnet = \"10.244.0.0/23\""),
        "o.toml:8:14: peer[0].pod_subnet: 10.244.0.0/23 overlaps node.pod_subnet 10.244.1.0/24 \
         (line 3); every node needs a subnet of its own"
    );
}

#[test]
fn subnet_prefix_too_long() {
    assert_eq!(
        error_after_node("[cluster]\nsubnet_prefix = 31\n"),
        "o.toml:6:17: cluster.subnet_prefix: expected a prefix length of at most 30, like 24, \
         found 31"
    );
}

#[test]
fn subnet_prefix_shorter_than_the_cluster_cidr() {
    assert_eq!(
        error_in_gossip("[cluster]\ncidr = \"10.244.0.0/16\"\nsubnet_prefix = 12\n"),
        "o.toml:9:17: cluster.subnet_prefix: /12 is shorter than cluster.cidr 10.244.0.0/16 \
         (line 8); expected a prefix length between 16 and 30, so that claimed subnets lie \
         inside the cluster CIDR"
    );
}

#[test]
fn default_subnet_prefix_in_a_small_cluster_cidr() {
    let source = "[node]\nname = \"node-1\"\n[cluster]\ncidr = \"10.244.0.0/26\"\n\
                  [gossip]\nkey_files = [\"/k\"]\n";

    assert_eq!(
        error(source),
        "o.toml:3:1: cluster.subnet_prefix: /24 is shorter than cluster.cidr 10.244.0.0/26 \
         (line 4); expected a prefix length between 26 and 30, so that claimed subnets lie \
         inside the cluster CIDR"
    );
}

#[test]
fn static_pod_subnet_with_gossip_still_inside_the_cluster() {
    let source = "[node]\nname = \"node-1\"\npod_subnet = \"10.10.0.0/22\"\n\
                  [gossip]\nkey_files = [\"/k\"]\n";

    assert_eq!(
        error(source),
        "o.toml:3:14: node.pod_subnet: 10.10.0.0/22 is outside cluster.cidr 10.244.0.0/16 (the \
         default); expected a subnet inside the cluster CIDR"
    );
}

// ---- peers: unique names and addresses ----

#[test]
fn peer_named_like_this_node() {
    assert_eq!(
        error_in_peer("name = \"node-1\""),
        r#"o.toml:6:8: peer[0].name: "node-1" is also node.name (line 2); every node needs a name of its own"#
    );
}

#[test]
fn duplicate_peer_names() {
    let source = format!(
        "{NODE}[[peer]]\nname = \"node-2\"\nunderlay_address = \"10.0.0.2\"\npod_subnet = \"10.244.2.0/24\"\n\
         [[peer]]\nname = \"node-2\"\nunderlay_address = \"10.0.0.3\"\npod_subnet = \"10.244.3.0/24\"\n"
    );

    assert_eq!(
        error(&source),
        r#"o.toml:10:8: peer[1].name: "node-2" is also peer[0].name (line 6); every node needs a name of its own"#
    );
}

#[test]
fn duplicate_peer_addresses() {
    let source = format!(
        "{NODE}[[peer]]\nname = \"node-2\"\nunderlay_address = \"10.0.0.2\"\npod_subnet = \"10.244.2.0/24\"\n\
         [[peer]]\nname = \"node-3\"\nunderlay_address = \"10.0.0.2\"\npod_subnet = \"10.244.3.0/24\"\n"
    );

    assert_eq!(
        error(&source),
        "o.toml:11:20: peer[1].underlay_address: 10.0.0.2 is also peer[0].underlay_address \
         (line 7); every node needs an underlay address of its own"
    );
}

#[test]
fn peer_address_of_this_node() {
    assert_eq!(
        error_in_peer("underlay_address = \"192.168.1.10\""),
        "o.toml:7:20: peer[0].underlay_address: 192.168.1.10 is also node.underlay_address \
         (line 4); every node needs an underlay address of its own"
    );
}

#[test]
fn peer_address_of_this_nodes_advertise_address() {
    let source = format!(
        "{NODE}advertise_address = \"203.0.113.10\"\n[[peer]]\nname = \"node-2\"\n\
         underlay_address = \"203.0.113.10\"\npod_subnet = \"10.244.2.0/24\"\n"
    );

    assert_eq!(
        error(&source),
        "o.toml:8:20: peer[0].underlay_address: 203.0.113.10 is also node.advertise_address \
         (line 5); every node needs an underlay address of its own"
    );
}

// ---- numbers ----

#[test]
fn tunnel_port_zero() {
    assert_eq!(
        error_after_node("[tunnel]\nport = 0\n"),
        "o.toml:6:8: tunnel.port: expected a UDP port between 1 and 65535, found 0"
    );
}

#[test]
fn vni_too_large() {
    assert_eq!(
        error_after_node("[tunnel]\nvni = 16777216\n"),
        "o.toml:6:7: tunnel.vni: expected a VXLAN network identifier between 0 and 16777215, \
         found 16777216"
    );
}

#[test]
fn bridge_mtu_too_small() {
    assert_eq!(
        error_after_node("[bridge]\nmtu = 575\n"),
        "o.toml:6:7: bridge.mtu: expected an MTU between 576 and 65535, found 575"
    );
}

#[test]
fn tunnel_mtu_too_large() {
    assert_eq!(
        error_after_node("[tunnel]\nmtu = 65536\n"),
        "o.toml:6:7: tunnel.mtu: expected an MTU between 576 and 65535, found 65536"
    );
}

#[test]
fn timing_override_zero() {
    assert_eq!(
        error_in_gossip("[gossip.timing]\nprobe_interval_ms = 0\n"),
        "o.toml:8:21: gossip.timing.probe_interval_ms: expected a whole number of \
         milliseconds, at least 1, found 0"
    );
}

#[test]
fn count_override_zero() {
    assert_eq!(
        error_in_gossip("[gossip.timing]\nindirect_probes = 0\n"),
        "o.toml:8:19: gossip.timing.indirect_probes: expected a whole number between 1 and \
         4294967295, found 0"
    );
}

#[test]
fn timer_override_too_long() {
    assert_eq!(
        error_in_gossip("[gossip.timing]\ndead_reap_after_ms = 604800001\n"),
        "o.toml:8:22: gossip.timing.dead_reap_after_ms: 604800001 ms is longer than 7 days; \
         expected a whole number of milliseconds between 1 and 604800000"
    );
    assert_eq!(
        error_in_gossip("[gossip.timing]\ntombstone_gc_after_ms = 31536000001\n"),
        "o.toml:8:25: gossip.timing.tombstone_gc_after_ms: 31536000001 ms is longer than 365 \
         days; expected a whole number of milliseconds between 1 and 31536000000"
    );
}

#[test]
fn count_override_too_large() {
    assert_eq!(
        error_in_gossip("[gossip.timing]\nlhm_max = 65\n"),
        "o.toml:8:11: gossip.timing.lhm_max: 65 is more than 64; expected a whole number \
         between 1 and 64"
    );
    assert_eq!(
        error_in_gossip("[gossip.timing]\nsuspicion_mult = 4294967295\n"),
        "o.toml:8:18: gossip.timing.suspicion_mult: 4294967295 is more than 100; expected a \
         whole number between 1 and 100"
    );
}

#[test]
fn probe_timeout_not_shorter_than_the_profiles_interval() {
    assert_eq!(
        error_in_gossip("[gossip.timing]\nprobe_timeout_ms = 500\n"),
        "o.toml:8:20: gossip.timing.probe_timeout_ms: 500 ms is not shorter than the lan \
         profile's probe interval of 400 ms; expected a probe timeout shorter than the probe \
         interval"
    );
}

#[test]
fn probe_timeout_not_shorter_than_the_overridden_interval() {
    assert_eq!(
        error_in_gossip("[gossip.timing]\nprobe_interval_ms = 1000\nprobe_timeout_ms = 1500\n"),
        "o.toml:9:20: gossip.timing.probe_timeout_ms: 1500 ms is not shorter than \
         gossip.timing.probe_interval_ms 1000 (line 8); expected a probe timeout shorter than \
         the probe interval"
    );
}

#[test]
fn probe_interval_not_longer_than_the_profiles_timeout() {
    assert_eq!(
        error_in_gossip("profile = \"wan\"\n[gossip.timing]\nprobe_interval_ms = 2000\n"),
        "o.toml:9:21: gossip.timing.probe_interval_ms: 2000 ms is not longer than the wan \
         profile's probe timeout of 3000 ms; expected a probe interval longer than the probe \
         timeout"
    );
}

// ---- MACs ----

#[test]
fn multicast_vtep_mac() {
    assert_eq!(
        error_in_node(r#"vtep_mac = "01:00:5e:00:00:01""#),
        "o.toml:5:12: node.vtep_mac: 01:00:5e:00:00:01 is a multicast address (the first octet \
         is odd); expected a unicast MAC address like 0e:12:34:56:78:9a"
    );
}

#[test]
fn broadcast_vtep_mac() {
    assert_eq!(
        error_in_peer(r#"vtep_mac = "ff:ff:ff:ff:ff:ff""#),
        "o.toml:9:12: peer[0].vtep_mac: ff:ff:ff:ff:ff:ff is the broadcast address; expected a \
         unicast MAC address like 0e:12:34:56:78:9a"
    );
}

#[test]
fn zero_vtep_mac() {
    assert_eq!(
        error_in_peer(r#"vtep_mac = "00:00:00:00:00:00""#),
        "o.toml:9:12: peer[0].vtep_mac: 00:00:00:00:00:00 is all zeros; expected a unicast MAC \
         address like 0e:12:34:56:78:9a"
    );
}

// ---- paths ----

#[test]
fn relative_state_dir() {
    assert_eq!(
        error_after_node("[daemon]\nstate_dir = \"var/lib/overlayd\"\n"),
        r#"o.toml:6:13: daemon.state_dir: "var/lib/overlayd" is a relative path; expected an absolute path like /var/lib/overlayd"#
    );
}

#[test]
fn relative_control_socket() {
    assert_eq!(
        error_after_node("[daemon]\ncontrol_socket = \"overlayd.sock\"\n"),
        r#"o.toml:6:18: daemon.control_socket: "overlayd.sock" is a relative path; expected an absolute path like /run/overlayd/overlayd.sock"#
    );
}

#[test]
fn no_key_files() {
    assert_eq!(
        error_after_node("[gossip]\nkey_files = []\n"),
        r#"o.toml:6:13: gossip.key_files: [] is empty; expected a list of at least one absolute path, like ["/etc/overlayd/gossip.key"]"#
    );
}

#[test]
fn relative_key_file() {
    assert_eq!(
        error_after_node("[gossip]\nkey_files = [\"/etc/overlayd/a.key\", \"b.key\"]\n"),
        r#"o.toml:6:37: gossip.key_files[1]: "b.key" is a relative path; expected an absolute path like /etc/overlayd/gossip.key"#
    );
}

// ---- seeds ----

#[test]
fn seed_with_port_zero() {
    assert_eq!(
        error_in_gossip("seeds = [\"10.0.0.1:0\"]\n"),
        r#"o.toml:7:10: gossip.seeds[0]: "10.0.0.1:0" has port 0; expected a seed like 192.168.1.11 or seed.example.com:7946 (HOST or HOST:PORT; HOST an IPv4 address or a DNS name, PORT 1 to 65535, default gossip.bind's)"#
    );
}

#[test]
fn seed_with_a_port_that_is_not_a_number() {
    assert_eq!(
        error_in_gossip("seeds = [\"seed:gossip\"]\n"),
        r#"o.toml:7:10: gossip.seeds[0]: "seed:gossip" has port "gossip", which is not a number; expected a seed like 192.168.1.11 or seed.example.com:7946 (HOST or HOST:PORT; HOST an IPv4 address or a DNS name, PORT 1 to 65535, default gossip.bind's)"#
    );
}

#[test]
fn seed_without_host() {
    assert_eq!(
        error_in_gossip("seeds = [\":7946\"]\n"),
        r#"o.toml:7:10: gossip.seeds[0]: ":7946" has an empty host; expected a seed like 192.168.1.11 or seed.example.com:7946 (HOST or HOST:PORT; HOST an IPv4 address or a DNS name, PORT 1 to 65535, default gossip.bind's)"#
    );
}

#[test]
fn seed_with_an_ipv6_address() {
    assert_eq!(
        error_in_gossip("seeds = [\"[fd00::1]:7946\"]\n"),
        r#"o.toml:7:10: gossip.seeds[0]: "[fd00::1]:7946" has more than one ':' (IPv6 addresses are not supported); expected a seed like 192.168.1.11 or seed.example.com:7946 (HOST or HOST:PORT; HOST an IPv4 address or a DNS name, PORT 1 to 65535, default gossip.bind's)"#
    );
}

#[test]
fn seed_with_a_bad_ipv4_address() {
    assert_eq!(
        error_in_gossip("seeds = [\"10.0.0.256\"]\n"),
        r#"o.toml:7:10: gossip.seeds[0]: "10.0.0.256" has host 10.0.0.256, which is not an IPv4 address (a DNS name cannot be all digits); expected a seed like 192.168.1.11 or seed.example.com:7946 (HOST or HOST:PORT; HOST an IPv4 address or a DNS name, PORT 1 to 65535, default gossip.bind's)"#
    );
}

#[test]
fn seed_with_a_bad_dns_character() {
    assert_eq!(
        error_in_gossip("seeds = [\"seed_1.example.com\"]\n"),
        r#"o.toml:7:10: gossip.seeds[0]: "seed_1.example.com" has host "seed_1.example.com", which contains '_'; expected a seed like 192.168.1.11 or seed.example.com:7946 (HOST or HOST:PORT; HOST an IPv4 address or a DNS name, PORT 1 to 65535, default gossip.bind's)"#
    );
}

#[test]
fn seed_with_an_empty_label() {
    assert_eq!(
        error_in_gossip("seeds = [\"seed..example.com\"]\n"),
        r#"o.toml:7:10: gossip.seeds[0]: "seed..example.com" has host "seed..example.com", which has an empty label; expected a seed like 192.168.1.11 or seed.example.com:7946 (HOST or HOST:PORT; HOST an IPv4 address or a DNS name, PORT 1 to 65535, default gossip.bind's)"#
    );
}

#[test]
fn multicast_seed() {
    assert_eq!(
        error_in_gossip("seeds = [\"224.0.0.1\"]\n"),
        r#"o.toml:7:10: gossip.seeds[0]: "224.0.0.1" has host 224.0.0.1, a multicast address; expected a seed like 192.168.1.11 or seed.example.com:7946 (HOST or HOST:PORT; HOST an IPv4 address or a DNS name, PORT 1 to 65535, default gossip.bind's)"#
    );
}

#[test]
fn duplicate_seed_by_default_port() {
    assert_eq!(
        error_in_gossip("seeds = [\n  \"10.0.0.1\",\n  \"10.0.0.2\",\n  \"10.0.0.1:7946\",\n]\n"),
        r#"o.toml:10:3: gossip.seeds[2]: "10.0.0.1:7946" is the same seed as gossip.seeds[0] "10.0.0.1" (line 8); list every seed once"#
    );
}

#[test]
fn duplicate_seed_by_case() {
    assert_eq!(
        error_in_gossip(
            "bind = \"0.0.0.0:8000\"\nseeds = [\"seed.example.com:8000\", \"Seed.Example.com\"]\n"
        ),
        r#"o.toml:8:35: gossip.seeds[1]: "Seed.Example.com" is the same seed as gossip.seeds[0] "seed.example.com:8000" (line 8); list every seed once"#
    );
}

// ---- gossip addresses ----

#[test]
fn bind_port_zero() {
    assert_eq!(
        error_in_gossip("bind = \"0.0.0.0:0\"\n"),
        "o.toml:7:8: gossip.bind: 0.0.0.0:0 has port 0; expected an IPv4 address and port to \
         listen on, like 0.0.0.0:7946"
    );
}

#[test]
fn loopback_gossip_advertise() {
    assert_eq!(
        error_in_gossip("advertise = \"127.0.0.1:7946\"\n"),
        "o.toml:7:13: gossip.advertise: 127.0.0.1:7946 is a loopback address; expected a \
         unicast IPv4 address and port like 203.0.113.10:7946"
    );
}

#[test]
fn unspecified_gossip_advertise() {
    assert_eq!(
        error_in_gossip("advertise = \"0.0.0.0:7946\"\n"),
        "o.toml:7:13: gossip.advertise: 0.0.0.0:7946 is the unspecified address; expected a \
         unicast IPv4 address and port like 203.0.113.10:7946"
    );
}

#[test]
fn gossip_advertise_port_zero() {
    assert_eq!(
        error_in_gossip("advertise = \"203.0.113.10:0\"\n"),
        "o.toml:7:13: gossip.advertise: 203.0.113.10:0 has port 0; expected a unicast IPv4 \
         address and port like 203.0.113.10:7946"
    );
}

// ---- addresses ----

#[test]
fn unspecified_underlay_address() {
    assert_eq!(
        error(
            "[node]\nname = \"node-1\"\npod_subnet = \"10.244.1.0/24\"\nunderlay_address = \"0.0.0.0\"\n"
        ),
        "o.toml:4:20: node.underlay_address: 0.0.0.0 is the unspecified address; expected a \
         unicast IPv4 address like 192.168.1.10"
    );
}

#[test]
fn loopback_advertise_address() {
    assert_eq!(
        error_in_node(r#"advertise_address = "127.0.0.1""#),
        "o.toml:5:21: node.advertise_address: 127.0.0.1 is a loopback address; expected a \
         unicast IPv4 address like 192.168.1.10"
    );
}

#[test]
fn multicast_peer_address() {
    assert_eq!(
        error_in_peer(r#"underlay_address = "239.1.1.1""#),
        "o.toml:7:20: peer[0].underlay_address: 239.1.1.1 is a multicast address; expected a \
         unicast IPv4 address like 192.168.1.10"
    );
}

#[test]
fn broadcast_peer_address() {
    assert_eq!(
        error_in_peer(r#"underlay_address = "255.255.255.255""#),
        "o.toml:7:20: peer[0].underlay_address: 255.255.255.255 is the broadcast address; \
         expected a unicast IPv4 address like 192.168.1.10"
    );
}

// ---- the error value ----

#[test]
fn error_parts_are_accessible() {
    let error = parse(&format!("{NODE}[tunnel]\nport = 0\n"), "o.toml").unwrap_err();

    assert_eq!(error.file(), "o.toml");
    assert_eq!((error.line(), error.column()), (6, 8));
    assert_eq!(error.key(), "tunnel.port");
    assert_eq!(
        error.message(),
        "expected a UDP port between 1 and 65535, found 0"
    );
}
