//! The configuration file's shape. Every key, its default and its meaning is also
//! documented in `config/overlayd.example.toml`; keep the two in step (a test checks that
//! the example names every key and shows the defaults below).
//!
//! The types say what a value looks like; the rules across values (names, subnets,
//! ranges, uniqueness) are checked by [`crate::parse`].

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use overlayd_proto::wire::MacAddr;
use serde::{Deserialize, Serialize};

/// A whole `overlayd.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[node]`: required.
    pub node: Node,
    #[serde(default)]
    pub cluster: Cluster,
    #[serde(default)]
    pub bridge: Bridge,
    #[serde(default)]
    pub tunnel: Tunnel,
    #[serde(default)]
    pub nat: Nat,
    #[serde(default)]
    pub daemon: Daemon,
    /// Static peers. Peer discovery sits behind one interface so gossip can replace this list.
    #[serde(default, rename = "peer")]
    pub peers: Vec<Peer>,
}

/// `[node]`: this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique in the cluster; a DNS label (`[a-z0-9-]`, 1..=63 chars).
    pub name: String,
    /// Interface facing the underlay. Default: the interface that holds `underlay_address`,
    /// or else the interface of the default route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_interface: Option<String>,
    /// This node's address on the underlay. Default: the first global IPv4 address of
    /// `underlay_interface`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_address: Option<Ipv4Addr>,
    /// The address peers send tunnel traffic to, when it differs from `underlay_address`
    /// (a node behind 1:1 NAT). Default: `underlay_address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_address: Option<Ipv4Addr>,
    /// This node's pod subnet: the bridge takes its first address, pods the rest.
    pub pod_subnet: Ipv4Net,
    /// MAC of this node's VXLAN endpoint. Default: derived from `name`
    /// (`MacAddr::vtep_for_node`), so peers can compute it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<MacAddr>,
}

/// `[cluster]`: what all nodes share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// Every pod subnet lies inside it; traffic inside it is never masqueraded.
    pub cidr: Ipv4Net,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            cidr: Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).expect("16 is a valid prefix"),
        }
    }
}

/// `[bridge]`: the node bridge the pods attach to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bridge {
    /// Linux interface name (at most 15 bytes). Default `ovd0`.
    pub name: String,
    /// MTU of the bridge and of pod interfaces. Default: the underlay interface's MTU, so
    /// host-gw paths run at full size; tunnel paths send ICMP "fragmentation needed".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

impl Default for Bridge {
    fn default() -> Self {
        Bridge {
            name: "ovd0".into(),
            mtu: None,
        }
    }
}

/// `[tunnel]`: the VXLAN-over-UDP tunnel to peers that are not on this node's L2 segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tunnel {
    /// TUN device name (at most 15 bytes). Default `ovdtun0`.
    pub device: String,
    /// UDP port of the VXLAN endpoint, ours and the peers'. Default 8472 (Linux and Flannel).
    pub port: u16,
    /// VXLAN network identifier, 0..=16777215. Default 1 (Flannel's).
    pub vni: u32,
    /// Use host-gw routes for peers whose underlay address is on-link. Default true.
    pub host_gw: bool,
    /// TUN MTU. Default: underlay MTU minus 50 (VXLAN over IPv4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

impl Default for Tunnel {
    fn default() -> Self {
        Tunnel {
            device: "ovdtun0".into(),
            port: 8472,
            vni: 1,
            host_gw: true,
            mtu: None,
        }
    }
}

/// `[nat]`: source NAT for pod traffic leaving the cluster CIDR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nat {
    /// Masquerade pod traffic to destinations outside `cluster.cidr`. Default true.
    pub masquerade: bool,
}

impl Default for Nat {
    fn default() -> Self {
        Nat { masquerade: true }
    }
}

/// What the daemon does with the data path when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnExit {
    /// Remove routes, the TUN device, the bridge and the NAT table (pods stay).
    Remove,
    /// Leave everything in place, so pods keep talking over host-gw while it is down.
    Keep,
}

/// `[daemon]`: the process itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Daemon {
    /// Absolute path; holds pod IP allocations. Default `/var/lib/overlayd`.
    pub state_dir: PathBuf,
    /// Absolute path of the Unix socket the CLI talks to. Default `/run/overlayd/overlayd.sock`.
    pub control_socket: PathBuf,
    /// `remove` (default) or `keep`.
    pub on_exit: OnExit,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            state_dir: "/var/lib/overlayd".into(),
            control_socket: "/run/overlayd/overlayd.sock".into(),
            on_exit: OnExit::Remove,
        }
    }
}

/// `[[peer]]`: a statically configured remote node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The peer's `node.name`; unique among the peers and different from this node's.
    pub name: String,
    /// Where tunnel traffic and host-gw routes to the peer go: its `node.advertise_address`,
    /// or else its `node.underlay_address`.
    pub underlay_address: Ipv4Addr,
    /// The peer's `node.pod_subnet`.
    pub pod_subnet: Ipv4Net,
    /// Default: derived from `name`, as the peer derives its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<MacAddr>,
}
