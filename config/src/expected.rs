//! What each key expects, in words: the second half of every message about a bad value.

use crate::key_path::KeyPath;

/// What the key at `path` expects, e.g. "an IPv4 subnet like 10.244.1.0/24".
pub(crate) fn expected(path: &KeyPath) -> &'static str {
    let schema_key = path.schema_key();
    let expected = if path.is_element() {
        for_element(&schema_key)
    } else {
        for_schema_key(&schema_key)
    };
    expected.unwrap_or("a value of the type documented in overlayd.example.toml")
}

/// What one element of the array at `schema_key` expects.
fn for_element(schema_key: &str) -> Option<&'static str> {
    let expected = match schema_key {
        "peer" => "a [[peer]] table with `name`, `underlay_address` and `pod_subnet`",
        "gossip.seeds" => {
            "a seed like 192.168.1.11 or seed.example.com:7946 (HOST or HOST:PORT; HOST an \
             IPv4 address or a DNS name, PORT 1 to 65535, default gossip.bind's)"
        }
        "gossip.key_files" => "an absolute path like /etc/overlayd/gossip.key",
        "service" => "a [[service]] table with at least `name` and `ports`",
        "service.ports" => "a port table with at least `port`, like { name = \"http\", port = 80 }",
        "service.backends" => {
            "a backend like \"192.0.2.10\" or \"192.0.2.10:8080\" (IPV4 or IPV4:PORT)"
        }
        "services.external_pool" => "an IPv4 subnet like 192.0.2.0/28",
        "dns.upstream" => "an IPv4 address or IP:PORT, like 192.0.2.53 or 198.51.100.1:5353",
        "path.zone_pairs" => "a [[path.zone_pairs]] table with `zones = [\"a\", \"b\"]`",
        "path.peers" => "a [[path.peers]] table with `peer = \"NAME\"`",
        "path.zone_pairs.zones" => {
            "a zone name like dc-a (1 to 63 characters of a-z, 0-9 and '-', not starting or \
             ending with '-')"
        }
        "path.zone_pairs.allow" | "path.peers.allow" => {
            "one of \"host-gw\", \"udp\", \"quic\" and \"relay\""
        }
        _ => return None,
    };
    Some(expected)
}

/// What the key at `schema_key` (a path without array indices, such as
/// `peer.pod_subnet`) expects; `None` for keys the schema does not have.
pub(crate) fn for_schema_key(schema_key: &str) -> Option<&'static str> {
    // A selector's keys are the user's labels.
    if schema_key.starts_with("service.selector.") {
        return Some(
            "a label value like \"web\" (at most 63 characters of A-Z, a-z, 0-9, '-', '_' and '.')",
        );
    }
    let expected = match schema_key {
        "" => "a TOML document with a [node] table",
        "node" => "a [node] table with at least `name`, and `pod_subnet` unless [gossip] is set",
        "cluster" => "a [cluster] table",
        "bridge" => "a [bridge] table",
        "tunnel" => "a [tunnel] table",
        "nat" => "a [nat] table",
        "daemon" => "a [daemon] table",
        "gossip" => "a [gossip] table with at least `key_files`",
        "gossip.timing" => "a [gossip.timing] table",
        "peer" => "[[peer]] tables, each with `name`, `underlay_address` and `pod_subnet`",
        "quic" => "a [quic] table with `ca`, `cert` and `key`",
        "quic.port" => "a UDP port between 1 and 65535",
        "quic.ca" => "an absolute path like /etc/overlayd/pki/ca.pem",
        "quic.cert" => "an absolute path like /etc/overlayd/pki/node-1.pem",
        "quic.key" => "an absolute path like /etc/overlayd/pki/node-1.key",
        "path" => "a [path] table",
        "path.zone_pairs" => "[[path.zone_pairs]] tables, each with `zones = [\"a\", \"b\"]`",
        "path.zone_pairs.zones" => "two zone names like [\"dc-a\", \"dc-b\"]",
        "path.peers" => "[[path.peers]] tables, each with `peer = \"NAME\"`",
        "path.peers.peer" => "a node name like node-2",
        "path.zone_pairs.allow" | "path.peers.allow" => {
            "a list of paths among \"host-gw\", \"udp\", \"quic\" and \"relay\""
        }
        "path.zone_pairs.require_encryption" | "path.peers.require_encryption" => "true or false",
        "node.zone" => {
            "a DNS label like rack-1 (1 to 63 characters of a-z, 0-9 and '-', not starting \
             or ending with '-')"
        }
        "cluster.name" => {
            "a cluster name like overlayd (1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and \
             '-')"
        }
        "cluster.subnet_prefix" => "a prefix length of at most 30, like 24",
        "gossip.bind" => "an IPv4 address and port to listen on, like 0.0.0.0:7946",
        "gossip.advertise" => "a unicast IPv4 address and port like 203.0.113.10:7946",
        "gossip.seeds" => "a list of seeds like [\"192.168.1.11\", \"seed.example.com:7946\"]",
        "gossip.key_files" => {
            "a list of at least one absolute path, like [\"/etc/overlayd/gossip.key\"]"
        }
        "gossip.profile" => "\"lan\" or \"wan\"",
        "gossip.timing.probe_interval_ms"
        | "gossip.timing.probe_timeout_ms"
        | "gossip.timing.gossip_interval_ms"
        | "gossip.timing.push_pull_interval_ms"
        | "gossip.timing.reannounce_interval_ms"
        | "gossip.timing.dead_reap_after_ms"
        | "gossip.timing.tombstone_gc_after_ms"
        | "gossip.timing.stream_timeout_ms"
        | "gossip.timing.claim_wait_ms" => "a whole number of milliseconds, at least 1",
        "gossip.timing.indirect_probes"
        | "gossip.timing.suspicion_mult"
        | "gossip.timing.suspicion_max_mult"
        | "gossip.timing.suspicion_confirmations"
        | "gossip.timing.gossip_fanout"
        | "gossip.timing.retransmit_mult"
        | "gossip.timing.lhm_max" => "a whole number between 1 and 4294967295",
        "node.name" | "peer.name" => {
            "a DNS label like node-1 (1 to 63 characters of a-z, 0-9 and '-', \
             not starting or ending with '-')"
        }
        "node.underlay_interface" => {
            "a Linux interface name like eth0 (1 to 15 bytes without '/', ':' or \
             whitespace, not \".\" or \"..\")"
        }
        "bridge.name" => {
            "a Linux interface name like ovd0 (1 to 15 bytes without '/', ':' or \
             whitespace, not \".\" or \"..\")"
        }
        "tunnel.device" => {
            "a Linux interface name like ovdtun0 (1 to 15 bytes without '/', ':' or \
             whitespace, not \".\" or \"..\")"
        }
        "node.underlay_address" | "node.advertise_address" | "peer.underlay_address" => {
            "a unicast IPv4 address like 192.168.1.10"
        }
        "node.pod_subnet" | "peer.pod_subnet" => "an IPv4 subnet like 10.244.1.0/24",
        "cluster.cidr" => "an IPv4 subnet like 10.244.0.0/16",
        "node.vtep_mac" | "peer.vtep_mac" => "a unicast MAC address like 0e:12:34:56:78:9a",
        "bridge.mtu" | "tunnel.mtu" => "an MTU between 576 and 65535",
        "tunnel.port" => "a UDP port between 1 and 65535",
        "tunnel.vni" => "a VXLAN network identifier between 0 and 16777215",
        "tunnel.host_gw" | "tunnel.offload" | "tunnel.udp_gso" | "tunnel.udp_gro"
        | "nat.masquerade" => "true or false",
        "daemon.state_dir" => "an absolute path like /var/lib/overlayd",
        "daemon.control_socket" => "an absolute path like /run/overlayd/overlayd.sock",
        "daemon.on_exit" => "\"remove\" or \"keep\"",
        "cluster.service_cidr" => {
            "an IPv4 subnet for Service addresses like 10.96.0.0/12, outside cluster.cidr"
        }
        "cluster.domain" => "a DNS name like cluster.local",
        "services" => "a [services] table",
        "services.dataplane" => "\"proxy\" or \"kernel\"",
        "services.relay" => "\"copy\" or \"splice\"",
        "services.node_port_range" => {
            "a port range like \"30000-32767\" (LO-HI: ports 1 to 65535, LO at most HI)"
        }
        "services.external_pool" => "a list of IPv4 subnets like [\"192.0.2.0/28\"]",
        "dns" => "a [dns] table",
        "dns.enabled" => "true or false",
        "dns.upstream" => {
            "a list of IPv4 addresses or IP:PORT, like [\"192.0.2.53\", \"198.51.100.1:5353\"]"
        }
        "service" => "[[service]] tables, each with at least `name` and `ports`",
        "service.name" | "service.namespace" => {
            "a DNS label like web (1 to 63 characters of a-z, 0-9 and '-', not starting or \
             ending with '-')"
        }
        "service.type" => "\"ClusterIP\", \"NodePort\", \"LoadBalancer\" or \"ExternalName\"",
        "service.ports" => "a list of ports, like [{ port = 80 }] or [[service.ports]] tables",
        "service.ports.name" => "a port name like http (a DNS label of at most 15 characters)",
        "service.ports.protocol" => "\"TCP\" or \"UDP\"",
        "service.ports.port" | "service.ports.target_port" => "a port between 1 and 65535",
        "service.ports.node_port" => "a node port inside services.node_port_range",
        "service.ports.proxy_protocol" | "service.health_check.enabled" => "true or false",
        "service.selector" => "a table of labels like { app = \"web\" }",
        "service.backends" => "a list of backends like [\"192.0.2.10\", \"192.0.2.11:8080\"]",
        "service.cluster_ip" => {
            "an IPv4 address inside cluster.service_cidr, or \"None\" for a headless Service"
        }
        "service.session_affinity" => "\"None\" or \"ClientIP\"",
        "service.affinity_timeout_s" => "a number of seconds between 1 and 86400",
        "service.algorithm" => "\"round_robin\", \"least_conn\" or \"maglev\"",
        "service.health_check" => "a [service.health_check] table",
        "service.health_check.interval_ms" => {
            "a whole number of milliseconds between 100 and 3600000"
        }
        "service.health_check.timeout_ms" => {
            "a whole number of milliseconds, less than interval_ms"
        }
        "service.health_check.rise" | "service.health_check.fall" => "a count between 1 and 100",
        "service.external_ip" => "a unicast IPv4 address like 192.0.2.10",
        "service.external_name" => "a DNS name like db.example.com",
        _ => return None,
    };
    Some(expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::schema_keys;

    #[test]
    fn every_schema_key_has_its_own_expectation() {
        for key in schema_keys() {
            assert!(for_schema_key(&key).is_some(), "no expectation for `{key}`");
        }
    }
}
