//! The configuration file's shape. Every key, its default and its meaning is also
//! documented in `config/overlayd.example.toml`; keep the two in step (a test checks that
//! the example names every key and shows the defaults below).
//!
//! The types say what a value looks like; the rules across values (names, subnets,
//! ranges, uniqueness) are checked by [`crate::parse`].

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use overlayd_proto::gossip::Timing;
use overlayd_proto::gossip::subnet::SubnetPool;
pub use overlayd_proto::path::PathPolicy;
use overlayd_proto::service::{ServiceSettings, ServiceSpec};
use overlayd_proto::wire::MacAddr;
use serde::{Deserialize, Serialize};

use crate::seed::Seed;

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
    /// `[gossip]`: membership by gossip. `None`: only the static peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip: Option<Gossip>,
    /// Static peers: nodes that do not gossip (a kernel VXLAN node, say). With `[gossip]`
    /// they are used together with the gossip members.
    #[serde(default, rename = "peer")]
    pub peers: Vec<Peer>,
    /// `[services]`: how Services are served.
    #[serde(default)]
    pub services: Services,
    /// `[dns]`: the DNS responder for Service names.
    #[serde(default)]
    pub dns: Dns,
    /// `[[service]]`: Services this node adds to the cluster (by gossip) at start.
    #[serde(default, rename = "service")]
    pub service_specs: Vec<ServiceSpec>,
    /// `[quic]`: encrypted, mutually authenticated tunnels. `None`: no QUIC endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<Quic>,
    /// `[path]`: which paths each pair of zones, or each peer, may use, and whether it
    /// must be encrypted.
    #[serde(default)]
    pub path: PathPolicy,
}

impl Config {
    /// The settings every Service is checked against and allocated from:
    /// `cluster.service_cidr`, `services.node_port_range` and `services.external_pool`.
    /// Every node of a cluster must have the same.
    pub fn service_settings(&self) -> ServiceSettings {
        ServiceSettings {
            service_cidr: self.cluster.service_cidr,
            node_port_range: self.services.node_port_range.lo..=self.services.node_port_range.hi,
            external_pool: self.services.external_pool.clone(),
        }
    }

    /// The gossip address peers reach this node at: `gossip.advertise`, or else
    /// `node.advertise_address` or, without it, `underlay_address` (the daemon's resolved
    /// `node.underlay_address`), with `gossip.bind`'s port. `None` iff `[gossip]` is absent.
    pub fn gossip_advertise(&self, underlay_address: Ipv4Addr) -> Option<SocketAddrV4> {
        let gossip = self.gossip.as_ref()?;
        let default = || {
            let address = self.node.advertise_address.unwrap_or(underlay_address);
            SocketAddrV4::new(address, gossip.bind.port())
        };
        Some(gossip.advertise.unwrap_or_else(default))
    }
}

/// `[node]`: this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique in the cluster; a DNS label (`[a-z0-9-]`, 1..=63 chars).
    pub name: String,
    /// Failure domain (rack, room, site); a DNS label. Announced by gossip. Default
    /// `default`.
    #[serde(default = "Node::default_zone")]
    pub zone: String,
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
    /// Required unless `[gossip]` is set; then `None` means the node claims one of
    /// `cluster.subnet_prefix` from `cluster.cidr`, and a configured one is static and
    /// wins over claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_subnet: Option<Ipv4Net>,
    /// MAC of this node's VXLAN endpoint. Default: derived from `name`
    /// (`MacAddr::vtep_for_node`), so peers can compute it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<MacAddr>,
}

impl Node {
    fn default_zone() -> String {
        "default".into()
    }
}

/// `[cluster]`: what all nodes share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// Every pod subnet lies inside it; traffic inside it is never masqueraded.
    pub cidr: Ipv4Net,
    /// The gossip cluster's name, authenticated in every gossip packet (AEAD associated
    /// data) so that clusters sharing a key do not mix. 1..=64 characters of
    /// `[A-Za-z0-9._-]`. Default `overlayd`.
    pub name: String,
    /// Prefix length of the subnets nodes claim by gossip: at least `cidr`'s, at most 30.
    /// Default 24. Configured pod subnets may have any length.
    pub subnet_prefix: u8,
    /// Cluster IPs of Services come from here; it must not overlap `cidr`. Default
    /// 10.96.0.0/12 (Kubernetes').
    pub service_cidr: Ipv4Net,
    /// The DNS domain of Service names: `<service>.<namespace>.svc.<domain>`. Default
    /// `cluster.local`.
    pub domain: String,
}

impl Cluster {
    /// The pool nodes without a configured pod subnet claim one from.
    pub fn subnet_pool(&self) -> SubnetPool {
        SubnetPool {
            cluster: self.cidr,
            prefix: self.subnet_prefix,
        }
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            cidr: Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).expect("16 is a valid prefix"),
            name: "overlayd".into(),
            subnet_prefix: 24,
            service_cidr: ServiceSettings::default_service_cidr(),
            domain: "cluster.local".into(),
        }
    }
}

/// `[services]`: how this node serves Services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Services {
    /// How Service traffic is balanced. Default `proxy`.
    pub dataplane: Dataplane,
    /// Node ports of NodePort and LoadBalancer Services, `LO-HI`. Default 30000-32767.
    pub node_port_range: PortRange,
    /// LoadBalancer external IPs are allocated from these subnets. Default: none (a
    /// LoadBalancer without `external_ip` waits for one).
    pub external_pool: Vec<Ipv4Net>,
    /// How the proxy moves a TCP connection's bytes. Default `copy`.
    pub relay: Relay,
}

/// How the proxy moves a TCP connection's bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Relay {
    /// Through a per-thread buffer (peek, send, discard): measured at least as fast as
    /// splice on loopback and veths, in throughput and CPU per byte.
    #[default]
    Copy,
    /// `splice(2)` through a pipe per direction, zero-copy.
    Splice,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            dataplane: Dataplane::Proxy,
            node_port_range: PortRange {
                lo: *ServiceSettings::DEFAULT_NODE_PORTS.start(),
                hi: *ServiceSettings::DEFAULT_NODE_PORTS.end(),
            },
            external_pool: Vec::new(),
            relay: Relay::Copy,
        }
    }
}

/// How Service traffic is balanced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    /// The daemon accepts and relays every connection and datagram itself.
    #[default]
    Proxy,
    /// nftables DNAT that the daemon programs (`overlayd_proto::service::kernel`) for the
    /// TCP Service ports the kernel can balance (round_robin, maglev); the proxy keeps
    /// the rest (UDP, least_conn, ClientIP affinity, PROXY protocol).
    Kernel,
}

/// A range of ports written `"LO-HI"`. Parsing only checks the form (two port numbers);
/// [`crate::parse`] checks the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl TryFrom<String> for PortRange {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let parsed = s
            .split_once('-')
            .and_then(|(lo, hi)| Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?)));
        match parsed {
            Some((lo, hi)) => Ok(PortRange { lo, hi }),
            None => Err(format!("{s:?} is not a port range LO-HI")),
        }
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        format!("{}-{}", r.lo, r.hi)
    }
}

/// `[dns]`: the DNS responder on every node's bridge gateway, for
/// `<service>.<namespace>.svc.<cluster.domain>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Answer DNS queries from pods. Default true.
    pub enabled: bool,
    /// Where names outside the cluster domain are forwarded. Empty (default): the
    /// nameservers of the node's /etc/resolv.conf, which the daemon reads.
    pub upstream: Vec<DnsUpstream>,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            enabled: true,
            upstream: Vec::new(),
        }
    }
}

/// A DNS server to forward to: `"IP"` (port 53) or `"IP:PORT"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DnsUpstream(pub SocketAddrV4);

impl DnsUpstream {
    pub const DEFAULT_PORT: u16 = 53;
}

impl TryFrom<String> for DnsUpstream {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if let Ok(ip) = s.parse::<Ipv4Addr>() {
            return Ok(DnsUpstream(SocketAddrV4::new(
                ip,
                DnsUpstream::DEFAULT_PORT,
            )));
        }
        s.parse()
            .map(DnsUpstream)
            .map_err(|_| format!("{s:?} is not IP or IP:PORT"))
    }
}

impl From<DnsUpstream> for String {
    fn from(u: DnsUpstream) -> String {
        if u.0.port() == DnsUpstream::DEFAULT_PORT {
            u.0.ip().to_string()
        } else {
            u.0.to_string()
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
    /// TUN offload: read TSO super-packets and write GRO'd ones (IFF_VNET_HDR with
    /// checksum and TSO offload). Falls back to plain packets where the kernel refuses it.
    /// Default true.
    pub offload: bool,
    /// Send runs of datagrams to one peer as one UDP GSO send. Default true.
    pub udp_gso: bool,
    /// Let the kernel coalesce received tunnel datagrams (UDP GRO). Default true.
    pub udp_gro: bool,
}

impl Default for Tunnel {
    fn default() -> Self {
        Tunnel {
            device: "ovdtun0".into(),
            port: 8472,
            vni: 1,
            host_gw: true,
            mtu: None,
            offload: true,
            udp_gso: true,
            udp_gro: true,
        }
    }
}

/// `[quic]`: this node's QUIC endpoint — pod packets as RFC 9221 datagrams on one
/// mutually authenticated connection per peer, for the peers the path policy sends over
/// QUIC (by default those in another zone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quic {
    /// UDP port of the endpoint, for dialing and accepting. Default 8473.
    #[serde(default = "Quic::default_port")]
    pub port: u16,
    /// The cluster CA's certificate (`overlayd ca init` writes `ca.pem`): every peer's
    /// certificate must chain to it.
    pub ca: PathBuf,
    /// This node's certificate (`overlayd cert issue NODE` writes `NODE.pem`), naming
    /// `node.name`.
    pub cert: PathBuf,
    /// This node's private key (`NODE.key`), readable by its owner only.
    pub key: PathBuf,
}

impl Quic {
    pub const DEFAULT_PORT: u16 = 8473;

    fn default_port() -> u16 {
        Quic::DEFAULT_PORT
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
    /// Every stop is a leave: announce it, remove routes, the TUN device, the bridge and
    /// the NAT table (pods stay).
    Remove,
    /// Leave everything in place and announce nothing, so pods keep talking while it is
    /// down (a restart, an upgrade); `overlayd leave` is how a node leaves.
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
    /// `keep` (default) or `remove`.
    pub on_exit: OnExit,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            state_dir: "/var/lib/overlayd".into(),
            control_socket: "/run/overlayd/overlayd.sock".into(),
            on_exit: OnExit::Keep,
        }
    }
}

/// `[gossip]`: cluster membership by gossip (SWIM with Lifeguard); the node joins through
/// any one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gossip {
    /// Address and port to listen on for gossip (UDP) and full-state sync (TCP).
    /// Default `0.0.0.0:7946`.
    #[serde(default = "Gossip::default_bind")]
    pub bind: SocketAddrV4,
    /// Address and port peers reach us at. Default: `node.advertise_address`, or else the
    /// underlay address, with `bind`'s port (see [`Config::gossip_advertise`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddrV4>,
    /// Seeds to join through: `HOST:PORT` or `HOST` (port: `bind`'s), `HOST` an IPv4
    /// address or a DNS name. May be empty (the first node). See [`Gossip::seed_addrs`].
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Files holding the gossip keys (32 random bytes as 64 hex digits or base64;
    /// `overlayd key generate` writes one). At least one; absolute paths; the first is
    /// the primary (encrypts), all decrypt.
    pub key_files: Vec<PathBuf>,
    /// Timing profile. Default `lan`.
    #[serde(default)]
    pub profile: Profile,
    /// `[gossip.timing]`: overrides of single timers of the profile.
    #[serde(default)]
    pub timing: TimingOverrides,
}

impl Gossip {
    /// The port gossip listens on by default (memberlist's).
    pub const DEFAULT_PORT: u16 = 7946;

    pub(crate) fn default_bind() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, Gossip::DEFAULT_PORT)
    }

    /// The timers to run with: the profile's, with the overrides applied.
    pub fn timing(&self) -> Timing {
        self.timing.apply(self.profile.timing())
    }

    /// The seeds, parsed, in order; a seed without a port gets `bind`'s. Seeds that do
    /// not parse are left out: [`crate::parse`] rejects them, so a parsed config has none.
    pub fn seed_addrs(&self) -> Vec<Seed> {
        self.seeds
            .iter()
            .filter_map(|seed| Seed::parse(seed, self.bind.port()).ok())
            .collect()
    }
}

/// A set of gossip timers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// One data centre: [`Timing::lan`].
    #[default]
    Lan,
    /// Across data centres: [`Timing::wan`].
    Wan,
}

impl Profile {
    /// The profile's timers.
    pub fn timing(self) -> Timing {
        match self {
            Profile::Lan => Timing::lan(),
            Profile::Wan => Timing::wan(),
        }
    }

    /// The name the file uses.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Lan => "lan",
            Profile::Wan => "wan",
        }
    }
}

/// `[gossip.timing]`: timers that replace the profile's; each field is the [`Timing`]
/// field of the same name, durations in milliseconds. Every value is at least 1.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimingOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect_probes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspicion_mult: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspicion_max_mult: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspicion_confirmations: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_fanout: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_pull_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reannounce_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_reap_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tombstone_gc_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmit_mult: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lhm_max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_wait_ms: Option<u64>,
}

impl TimingOverrides {
    /// `base` with every set override in place of its timer.
    pub fn apply(&self, base: Timing) -> Timing {
        let mut t = base;
        let ms = |value: Option<u64>, timer: &mut Duration| {
            if let Some(ms) = value {
                *timer = Duration::from_millis(ms);
            }
        };
        let n = |value: Option<u32>, number: &mut u32| {
            if let Some(value) = value {
                *number = value;
            }
        };
        let count = |value: Option<u32>, number: &mut usize| {
            if let Some(value) = value {
                *number = usize::try_from(value).unwrap_or(usize::MAX);
            }
        };
        ms(self.probe_interval_ms, &mut t.probe_interval);
        ms(self.probe_timeout_ms, &mut t.probe_timeout);
        count(self.indirect_probes, &mut t.indirect_probes);
        n(self.suspicion_mult, &mut t.suspicion_mult);
        n(self.suspicion_max_mult, &mut t.suspicion_max_mult);
        count(self.suspicion_confirmations, &mut t.suspicion_confirmations);
        ms(self.gossip_interval_ms, &mut t.gossip_interval);
        count(self.gossip_fanout, &mut t.gossip_fanout);
        ms(self.push_pull_interval_ms, &mut t.push_pull_interval);
        ms(self.reannounce_interval_ms, &mut t.reannounce_interval);
        ms(self.dead_reap_after_ms, &mut t.dead_reap_after);
        ms(self.tombstone_gc_after_ms, &mut t.tombstone_gc_after);
        n(self.retransmit_mult, &mut t.retransmit_mult);
        n(self.lhm_max, &mut t.lhm_max);
        ms(self.stream_timeout_ms, &mut t.stream_timeout);
        ms(self.claim_wait_ms, &mut t.claim_wait);
        t
    }

    /// Every override by its key, in schema order, as a number.
    pub(crate) fn by_key(&self) -> [(&'static str, Option<u64>); 16] {
        let n = |value: Option<u32>| value.map(u64::from);
        [
            ("probe_interval_ms", self.probe_interval_ms),
            ("probe_timeout_ms", self.probe_timeout_ms),
            ("indirect_probes", n(self.indirect_probes)),
            ("suspicion_mult", n(self.suspicion_mult)),
            ("suspicion_max_mult", n(self.suspicion_max_mult)),
            ("suspicion_confirmations", n(self.suspicion_confirmations)),
            ("gossip_interval_ms", self.gossip_interval_ms),
            ("gossip_fanout", n(self.gossip_fanout)),
            ("push_pull_interval_ms", self.push_pull_interval_ms),
            ("reannounce_interval_ms", self.reannounce_interval_ms),
            ("dead_reap_after_ms", self.dead_reap_after_ms),
            ("tombstone_gc_after_ms", self.tombstone_gc_after_ms),
            ("retransmit_mult", n(self.retransmit_mult)),
            ("lhm_max", n(self.lhm_max)),
            ("stream_timeout_ms", self.stream_timeout_ms),
            ("claim_wait_ms", self.claim_wait_ms),
        ]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::every_override;

    #[test]
    fn overrides_by_key_name_the_toml_keys_in_order() {
        let overrides = every_override();
        // Serialized text keeps the fields in declaration order.
        let text = toml::to_string(&overrides).unwrap();

        let by_key = overrides.by_key();

        let lines: Vec<String> = by_key
            .iter()
            .map(|(key, value)| format!("{key} = {}", value.unwrap()))
            .collect();
        assert_eq!(text.lines().collect::<Vec<_>>(), lines);
    }

    #[test]
    fn every_override_replaces_its_timer() {
        let overrides = every_override();

        let timing = overrides.apply(Timing::wan());

        let expected = Timing {
            probe_interval: Duration::from_millis(1001),
            probe_timeout: Duration::from_millis(2),
            indirect_probes: 3,
            suspicion_mult: 4,
            suspicion_max_mult: 5,
            suspicion_confirmations: 6,
            gossip_interval: Duration::from_millis(1007),
            gossip_fanout: 8,
            push_pull_interval: Duration::from_millis(1009),
            reannounce_interval: Duration::from_millis(1010),
            dead_reap_after: Duration::from_millis(1011),
            tombstone_gc_after: Duration::from_millis(1012),
            retransmit_mult: 13,
            lhm_max: 14,
            stream_timeout: Duration::from_millis(1015),
            claim_wait: Duration::from_millis(1016),
        };
        assert_eq!(timing, expected);
        assert_eq!(
            TimingOverrides::default().apply(Timing::wan()),
            Timing::wan()
        );
    }
}
