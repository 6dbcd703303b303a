//! What each key expects, in words: the second half of every message about a bad value.

use crate::key_path::KeyPath;

/// What the key at `path` expects, e.g. "an IPv4 subnet like 10.244.1.0/24".
pub(crate) fn expected(path: &KeyPath) -> &'static str {
    if path.is_element() {
        return "a [[peer]] table with `name`, `underlay_address` and `pod_subnet`";
    }
    for_schema_key(&path.schema_key())
        .unwrap_or("a value of the type documented in overlayd.example.toml")
}

/// What the key at `schema_key` (a path without array indices, such as
/// `peer.pod_subnet`) expects; `None` for keys the schema does not have.
pub(crate) fn for_schema_key(schema_key: &str) -> Option<&'static str> {
    let expected = match schema_key {
        "" => "a TOML document with a [node] table",
        "node" => "a [node] table with at least `name` and `pod_subnet`",
        "cluster" => "a [cluster] table",
        "bridge" => "a [bridge] table",
        "tunnel" => "a [tunnel] table",
        "nat" => "a [nat] table",
        "daemon" => "a [daemon] table",
        "peer" => "[[peer]] tables, each with `name`, `underlay_address` and `pod_subnet`",
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
        "tunnel.host_gw" | "nat.masquerade" => "true or false",
        "daemon.state_dir" => "an absolute path like /var/lib/overlayd",
        "daemon.control_socket" => "an absolute path like /run/overlayd/overlayd.sock",
        "daemon.on_exit" => "\"remove\" or \"keep\"",
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
