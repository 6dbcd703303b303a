//! The lab's topology file: segments (L2 networks joined by one router), the nodes on
//! them, and how the nodes find each other (gossip through one seed, or static peers).
//! Parsing resolves every default (addresses, pod subnets, the seed), so a [`Topology`]
//! is always valid and complete.

use overlayd_proto::overlaps;
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use overlayd_proto::wire::MacAddr;
use serde::{Deserialize, Serialize};

/// The text of [`DEFAULT_NODES`], as a macro so [`DEFAULT_TOPOLOGY`] can extend it.
macro_rules! default_nodes {
    () => {
        r#"
cluster_cidr = "10.244.0.0/16"
# gossip = true (the default), seed = the first node with a daemon (n1)

[[segment]]
name = "a"
subnet = "10.100.1.0/24"

[[segment]]
name = "b"
subnet = "10.100.2.0/24"

[[node]]
name = "n1"
segment = "a"

[[node]]
name = "n2"
segment = "a"

[[node]]
name = "n3"
segment = "b"

[[node]]
name = "n4"
segment = "b"

"#
    };
}

/// The default topology without its Service: segments `a` and `b` joined by the router,
/// nodes `n1`, `n2` on `a` and `n3`, `n4` on `b`, two pods each; the nodes gossip, join
/// through `n1` and claim their pod subnets. Nothing talks unless asked (no health checks
/// of Service backends), for tests that count packets.
pub const DEFAULT_NODES: &str = default_nodes!();

/// The topology used when none is given: [`DEFAULT_NODES`] and a Service `hello` that
/// selects every pod.
pub const DEFAULT_TOPOLOGY: &str = concat!(
    default_nodes!(),
    r#"
# A Service in front of every pod: lab pods carry app=hello and run the lab's server
# (TCP and UDP 8080: their name, then an echo). Every node applies it at start.
[[config.service]]
name = "hello"
selector = { app = "hello" }
ports = [
    { name = "tcp", port = 80, target_port = 8080 },
    { name = "udp", protocol = "UDP", port = 80, target_port = 8080 },
]
"#
);

/// A remote datacenter: [`DEFAULT_TOPOLOGY`]'s segments a, b (zone `default`) and nodes
/// n1–n4 with its Service, plus segment c (10.100.3.0/24) in zone `remote` with n5 and n6,
/// reachable only through the router; `quic = true`, so every node has `[quic]` with a
/// certificate from the lab's CA and the default path policy gives host-gw on a link, udp
/// within a zone and quic across zones. The file `tests/topologies/remote-zone.toml`, for
/// `overlayd lab up --topology`.
pub const REMOTE_ZONE_TOPOLOGY: &str = include_str!("../topologies/remote-zone.toml");

/// Three segments a, b, c (10.100.1–3.0/24) with one node each (n1, n2, n3, one pod
/// each), one zone, no QUIC: every pair takes udp, and partitioning a from b moves n1–n2
/// onto a relay through n3. The file `tests/topologies/three-segments.toml`.
pub const THREE_SEGMENTS_TOPOLOGY: &str = include_str!("../topologies/three-segments.toml");

/// Segments a (10.100.1.0/24) and b (10.100.2.0/24), as the default topology has them:
/// tests append their own `[[node]]` tables (top-level keys must come before it).
pub const TWO_SEGMENTS: &str = r#"
[[segment]]
name = "a"
subnet = "10.100.1.0/24"
[[segment]]
name = "b"
subnet = "10.100.2.0/24"
"#;

/// A segment's zone (`node.zone` of its nodes) when the topology does not say; the
/// daemon's default.
pub const DEFAULT_ZONE: &str = "default";

/// Pods per node when the topology does not say.
const DEFAULT_PODS: u32 = 2;

/// A node's underlay address is this host number plus its 1-based position in its segment
/// (.11, .12, …); the router takes host 1.
const FIRST_NODE_HOST: u32 = 10;

/// Prefix length of claimed pod subnets when `[config.cluster]` does not set
/// `subnet_prefix` (the daemon's default).
const DEFAULT_SUBNET_PREFIX: u8 = 24;

/// A validated topology with every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    cluster_cidr: Ipv4Net,
    /// A lab saved before gossip existed ran on static peers.
    #[serde(default)]
    gossip: bool,
    /// The node every other daemon node joins through; `Some` iff `gossip` and some node
    /// runs a daemon.
    #[serde(default)]
    seed: Option<String>,
    segments: Vec<Segment>,
    nodes: Vec<NodeSpec>,
    config: toml::Table,
}

/// An L2 segment: a bridge `seg-NAME` in the router namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub name: String,
    pub subnet: Ipv4Net,
    /// The zone of the segment's nodes (`node.zone`), unless a node names its own; the
    /// path policy's unit (by default udp within a zone, quic across zones).
    #[serde(default = "default_zone")]
    pub zone: String,
}

fn default_zone() -> String {
    DEFAULT_ZONE.into()
}

impl Segment {
    /// The router's address on this segment: the subnet's first host.
    pub fn router_address(&self) -> Ipv4Addr {
        host(self.subnet, 1)
    }

    /// Name of the segment's bridge inside the router namespace.
    pub fn bridge(&self) -> String {
        format!("seg-{}", self.name)
    }
}

/// A node of the lab, with its resolved addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub segment: String,
    /// Address of `eth0` in the node namespace, inside the segment's subnet.
    pub underlay: Ipv4Addr,
    /// The node's configured pod subnet. `None`: its daemon claims one by gossip (see
    /// `Node::pod_subnet` for the one it got). Always `Some` without gossip and for nodes
    /// with `daemon = false`, which are static peers.
    pub pod_subnet: Option<Ipv4Net>,
    /// Pods `NAME-p1` ..= `NAME-pN` the lab adds through the daemon (0 when `daemon` is false).
    pub pods: u32,
    /// Whether the lab runs `overlayd` on this node.
    pub daemon: bool,
    /// The VTEP MAC other nodes' configs get for this node; `None`: derived from the name.
    pub vtep_mac: Option<MacAddr>,
    /// Labels of the node's pods (`pod add --label`), which Services select them by.
    /// Default [`DEFAULT_POD_LABELS`].
    #[serde(default = "default_pod_labels")]
    pub pod_labels: BTreeMap<String, String>,
    /// This node's own `[config]` table, deep-merged into its config after the topology's
    /// `[config]` (the same keys are reserved), e.g. `[node.config.tunnel] host_gw = false`
    /// for one node only.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub config: toml::Table,
    /// `node.zone`: the node's own `zone`, else its segment's.
    #[serde(default = "default_zone")]
    pub zone: String,
    /// Whether the node gets `[quic]` with a certificate from the lab's CA (`RUN/pki`):
    /// the node's own `quic`, else the topology's.
    #[serde(default)]
    pub quic: bool,
}

/// Labels every lab pod gets unless its node's `pod_labels` says otherwise: the default
/// topology's Service `hello` selects them.
pub const DEFAULT_POD_LABELS: &[(&str, &str)] = &[("app", "hello")];

fn default_pod_labels() -> BTreeMap<String, String> {
    DEFAULT_POD_LABELS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Why a topology file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read topology file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("topology file is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("{path}: {source}")]
    InFile {
        path: String,
        source: Box<TopologyError>,
    },
    #[error(
        "segment {segment:?} has subnet {subnet}, too small for a router and nodes; use /28 or larger"
    )]
    SegmentTooSmall { segment: String, subnet: Ipv4Net },
    #[error("the topology has no nodes; add at least one [[node]]")]
    NoNodes,
    #[error("{what} name {name:?} is not valid: use 1 to {max} characters of [a-z0-9]{extra}")]
    BadName {
        what: &'static str,
        name: String,
        max: usize,
        extra: &'static str,
    },
    #[error("duplicate {what} name {name:?}; every {what} needs its own name")]
    Duplicate { what: &'static str, name: String },
    #[error("node {node:?} is on segment {segment:?}, which no [[segment]] defines")]
    UnknownSegment { node: String, segment: String },
    #[error("{what} {a} overlaps {b}; give them disjoint subnets")]
    Overlap {
        what: &'static str,
        a: String,
        b: String,
    },
    #[error(
        "segment {segment:?} ({subnet}) has too few addresses for its {nodes} nodes \
         (nodes take hosts .{first}..); use a larger subnet"
    )]
    SegmentFull {
        segment: String,
        subnet: Ipv4Net,
        nodes: usize,
        first: u32,
    },
    #[error(
        "cannot derive a /24 pod subnet for node {node:?} (node index {index}) from \
         cluster_cidr {cidr}; set pod_subnet for it or use a larger cluster_cidr"
    )]
    NoPodSubnet {
        node: String,
        index: usize,
        cidr: Ipv4Net,
    },
    #[error("pod_subnet {subnet} of node {node:?} lies outside cluster_cidr {cidr}")]
    PodSubnetOutsideCluster {
        node: String,
        subnet: Ipv4Net,
        cidr: Ipv4Net,
    },
    #[error(
        "node {node:?} wants {pods} pods but {subnet} has room for {room}; \
         lower pods or widen the subnet"
    )]
    TooManyPods {
        node: String,
        pods: u32,
        /// `pod_subnet 10.244.9.0/30` or `a claimed /24`.
        subnet: String,
        room: u64,
    },
    #[error("seed {seed:?} names no node; set seed to one of the [[node]] names")]
    UnknownSeed { seed: String },
    #[error(
        "seed {seed:?} has daemon = false, so nothing can join through it; \
         pick a node that runs a daemon"
    )]
    SeedWithoutDaemon { seed: String },
    #[error("seed = {seed:?} needs gossip; remove seed or set gossip = true")]
    SeedWithoutGossip { seed: String },
    #[error(
        "[config.gossip] needs gossip = true (without it nodes use static peers); \
         remove [config.gossip] or set gossip = true"
    )]
    GossipConfigWithoutGossip,
    #[error("[config.cluster] subnet_prefix = {0} is not a prefix length; use 1 to 30")]
    BadSubnetPrefix(i64),
    #[error(
        "node {node:?} has daemon = false, so it cannot have pods (pods = {pods}); set pods = 0"
    )]
    PodsWithoutDaemon { node: String, pods: u32 },
    #[error("{what} zone {zone:?} is not valid: it {problem}; zones are DNS labels")]
    BadZone {
        /// `segment "c"` or `node "n5"`.
        what: String,
        zone: String,
        problem: String,
    },
    #[error(
        "node {node:?} has daemon = false, so it cannot have quic = true (the lab gives \
         [quic] only to the daemons it runs); remove quic from it"
    )]
    QuicWithoutDaemon { node: String },
    #[error(
        "{table} may not set `quic.{key}` for node {node:?}: with quic = true the lab writes \
         [quic] with its own CA's files; set only quic.port, or quic = false for this node"
    )]
    QuicFilesWithLabQuic {
        table: &'static str,
        key: &'static str,
        node: String,
    },
    #[error("node {node:?} has daemon = false, so it has no config; remove its [node.config]")]
    ConfigWithoutDaemon { node: String },
    #[error(
        "[config] may not set `{key}`: the lab writes it for every node; \
         remove it from the topology's [config] table"
    )]
    ReservedConfigKey { key: &'static str },
    #[error(
        "[config] does not merge into a valid config for node {node:?}: {}: {}",
        source.key(),
        source.message()
    )]
    Config {
        node: String,
        #[source]
        source: overlayd_config::ConfigError,
    },
}

/// The file format, exactly as written: unknown keys are errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    #[serde(default = "default_cluster_cidr")]
    cluster_cidr: Ipv4Net,
    #[serde(default = "yes")]
    gossip: bool,
    seed: Option<String>,
    /// Every daemon node gets `[quic]` (nodes may say otherwise). Default false.
    #[serde(default)]
    quic: bool,
    #[serde(default, rename = "segment")]
    segments: Vec<SegmentFile>,
    #[serde(default, rename = "node")]
    nodes: Vec<NodeFile>,
    #[serde(default)]
    config: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentFile {
    name: String,
    subnet: Ipv4Net,
    zone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    name: String,
    segment: String,
    pods: Option<u32>,
    pod_subnet: Option<Ipv4Net>,
    #[serde(default = "yes")]
    daemon: bool,
    vtep_mac: Option<MacAddr>,
    pod_labels: Option<BTreeMap<String, String>>,
    zone: Option<String>,
    quic: Option<bool>,
    #[serde(default)]
    config: toml::Table,
}

fn default_cluster_cidr() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).expect("16 is a valid prefix")
}

fn yes() -> bool {
    true
}

impl Default for Topology {
    fn default() -> Self {
        Topology::parse(DEFAULT_TOPOLOGY).expect("the embedded default topology is valid")
    }
}

impl Topology {
    /// Parses and validates a topology file's text.
    pub fn parse(text: &str) -> Result<Topology, TopologyError> {
        let file: TopologyFile = toml::from_str(text)?;
        resolve(file)
    }

    /// Reads, parses and validates a topology file.
    pub fn from_file(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Topology::parse(&text).map_err(|e| TopologyError::InFile {
            path: path.display().to_string(),
            source: Box::new(e),
        })
    }

    pub fn cluster_cidr(&self) -> Ipv4Net {
        self.cluster_cidr
    }

    /// Whether daemon nodes find each other by gossip (`gossip = true`, the default)
    /// rather than as static peers.
    pub fn gossip(&self) -> bool {
        self.gossip
    }

    /// The node the other daemon nodes join through: `seed`, or the first node with a
    /// daemon. `None` iff the topology has no gossip or no daemon node.
    pub fn seed(&self) -> Option<&NodeSpec> {
        self.node(self.seed.as_deref()?)
    }

    /// Whether some node has `[quic]`, so the lab makes a CA (`RUN/pki`) at `up`.
    pub fn quic(&self) -> bool {
        self.nodes.iter().any(|n| n.quic)
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    /// The `[config]` table deep-merged into every generated node config.
    pub fn config(&self) -> &toml::Table {
        &self.config
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }
}

fn resolve(file: TopologyFile) -> Result<Topology, TopologyError> {
    if file.nodes.is_empty() {
        return Err(TopologyError::NoNodes);
    }
    let mut segments = Vec::with_capacity(file.segments.len());
    for segment in file.segments {
        let zone = segment.zone.unwrap_or_else(default_zone);
        check_zone(&format!("segment {:?}", segment.name), &zone)?;
        segments.push(Segment {
            name: segment.name,
            subnet: segment.subnet.trunc(),
            zone,
        });
    }
    check_segments(&segments, file.cluster_cidr)?;
    check_config_table(&file.config, file.gossip)?;
    let claim_prefix = subnet_prefix(&file.config)?;
    let mut seen = HashSet::new();
    let mut nodes = Vec::with_capacity(file.nodes.len());
    for (index, node) in file.nodes.into_iter().enumerate() {
        check_node_name(&node.name)?;
        if !seen.insert(node.name.clone()) {
            return Err(TopologyError::Duplicate {
                what: "node",
                name: node.name,
            });
        }
        let Some(segment) = segments.iter().find(|s| s.name == node.segment) else {
            return Err(TopologyError::UnknownSegment {
                node: node.name,
                segment: node.segment,
            });
        };
        let position = nodes
            .iter()
            .filter(|n: &&NodeSpec| n.segment == segment.name)
            .count();
        let underlay = node_address(segment, position)?;
        let claims = file.gossip && node.daemon;
        let pod_subnet = match node.pod_subnet {
            Some(subnet) => Some(subnet.trunc()),
            None if claims => None,
            None => Some(default_pod_subnet(file.cluster_cidr, index).ok_or_else(|| {
                TopologyError::NoPodSubnet {
                    node: node.name.clone(),
                    index,
                    cidr: file.cluster_cidr,
                }
            })?),
        };
        if let Some(subnet) = pod_subnet
            && !file.cluster_cidr.contains(&subnet)
        {
            return Err(TopologyError::PodSubnetOutsideCluster {
                node: node.name,
                subnet,
                cidr: file.cluster_cidr,
            });
        }
        let pods = match (node.daemon, node.pods) {
            (true, pods) => pods.unwrap_or(DEFAULT_PODS),
            (false, None | Some(0)) => 0,
            (false, Some(pods)) => {
                return Err(TopologyError::PodsWithoutDaemon {
                    node: node.name,
                    pods,
                });
            }
        };
        check_pod_room(&node.name, pods, pod_subnet, claim_prefix)?;
        if !node.config.is_empty() && !node.daemon {
            return Err(TopologyError::ConfigWithoutDaemon { node: node.name });
        }
        check_config_table(&node.config, file.gossip)?;
        let zone = match node.zone {
            Some(zone) => {
                check_zone(&format!("node {:?}", node.name), &zone)?;
                zone
            }
            None => segment.zone.clone(),
        };
        let quic = match (node.daemon, node.quic) {
            (true, quic) => quic.unwrap_or(file.quic),
            (false, None | Some(false)) => false,
            (false, Some(true)) => {
                return Err(TopologyError::QuicWithoutDaemon { node: node.name });
            }
        };
        if quic {
            check_quic_table(&file.config, "[config]", &node.name)?;
            check_quic_table(&node.config, "[node.config]", &node.name)?;
        }
        nodes.push(NodeSpec {
            name: node.name,
            segment: segment.name.clone(),
            underlay,
            pod_subnet,
            pods,
            daemon: node.daemon,
            vtep_mac: node.vtep_mac,
            pod_labels: node.pod_labels.unwrap_or_else(default_pod_labels),
            config: node.config,
            zone,
            quic,
        });
    }
    check_pod_subnets(&nodes)?;
    let seed = resolve_seed(file.seed, file.gossip, &nodes)?;
    let topology = Topology {
        cluster_cidr: file.cluster_cidr,
        gossip: file.gossip,
        seed,
        segments,
        nodes,
        config: file.config,
    };
    // Catch bad [config] keys and values now rather than when a daemon reads its file.
    for node in topology.nodes.iter().filter(|n| n.daemon) {
        check_node_config(&topology, node)?;
    }
    Ok(topology)
}

/// The seed the file names (a daemon node), else the first daemon node; `None` without
/// gossip or without daemon nodes.
fn resolve_seed(
    seed: Option<String>,
    gossip: bool,
    nodes: &[NodeSpec],
) -> Result<Option<String>, TopologyError> {
    let Some(seed) = seed else {
        let first = nodes.iter().find(|n| n.daemon);
        return Ok(first.filter(|_| gossip).map(|n| n.name.clone()));
    };
    if !gossip {
        return Err(TopologyError::SeedWithoutGossip { seed });
    }
    match nodes.iter().find(|n| n.name == seed) {
        None => Err(TopologyError::UnknownSeed { seed }),
        Some(node) if !node.daemon => Err(TopologyError::SeedWithoutDaemon { seed }),
        Some(_) => Ok(Some(seed)),
    }
}

/// The bridge takes the subnet's first host; pods need one address each after it. A node
/// that claims its subnet gets one of `claim_prefix`.
fn check_pod_room(
    node: &str,
    pods: u32,
    subnet: Option<Ipv4Net>,
    claim_prefix: u8,
) -> Result<(), TopologyError> {
    let (room, describe) = match subnet {
        Some(subnet) => (hosts(subnet.prefix_len()), format!("pod_subnet {subnet}")),
        None => (hosts(claim_prefix), format!("a claimed /{claim_prefix}")),
    };
    let room = room.saturating_sub(1);
    if u64::from(pods) > room {
        return Err(TopologyError::TooManyPods {
            node: node.into(),
            pods,
            subnet: describe,
            room,
        });
    }
    Ok(())
}

/// `cluster.subnet_prefix` as the `[config]` table sets it, else the daemon's default.
fn subnet_prefix(config: &toml::Table) -> Result<u8, TopologyError> {
    let set = config
        .get("cluster")
        .and_then(|c| c.get("subnet_prefix"))
        .and_then(toml::Value::as_integer);
    match set {
        None => Ok(DEFAULT_SUBNET_PREFIX),
        Some(prefix) => u8::try_from(prefix)
            .ok()
            .filter(|p| (1..=30).contains(p))
            .ok_or(TopologyError::BadSubnetPrefix(prefix)),
    }
}

/// Generates the node's config, which runs it through the daemon's own config checks.
fn check_node_config(topology: &Topology, node: &NodeSpec) -> Result<(), TopologyError> {
    crate::config::node_config(topology, node, "check")
        .map(drop)
        .map_err(|source| TopologyError::Config {
            node: node.name.clone(),
            source,
        })
}

fn check_segments(segments: &[Segment], cluster: Ipv4Net) -> Result<(), TopologyError> {
    let mut seen = HashSet::new();
    for (i, segment) in segments.iter().enumerate() {
        // The bridge is `seg-NAME`, and interface names hold at most 15 bytes.
        check_name("segment", &segment.name, 11, "")?;
        if segment.subnet.prefix_len() > 30 {
            return Err(TopologyError::SegmentTooSmall {
                segment: segment.name.clone(),
                subnet: segment.subnet,
            });
        }
        if !seen.insert(segment.name.as_str()) {
            return Err(TopologyError::Duplicate {
                what: "segment",
                name: segment.name.clone(),
            });
        }
        if overlaps(segment.subnet, cluster) {
            return Err(TopologyError::Overlap {
                what: "segment subnet",
                a: format!("{} ({})", segment.subnet, segment.name),
                b: format!("cluster_cidr {cluster}"),
            });
        }
        for other in &segments[..i] {
            if overlaps(segment.subnet, other.subnet) {
                return Err(TopologyError::Overlap {
                    what: "segment subnet",
                    a: format!("{} ({})", segment.subnet, segment.name),
                    b: format!("{} ({})", other.subnet, other.name),
                });
            }
        }
    }
    Ok(())
}

fn check_node_name(name: &str) -> Result<(), TopologyError> {
    // The node's veth end in the router namespace carries the node's name (≤ 15 bytes);
    // `lo` and `router` would collide with the router's own names.
    check_name("node", name, 15, ", not `lo` or `router`")?;
    if name == "lo" || name == "router" {
        return Err(TopologyError::BadName {
            what: "node",
            name: name.into(),
            max: 15,
            extra: ", not `lo` or `router`",
        });
    }
    Ok(())
}

fn check_name(
    what: &'static str,
    name: &str,
    max: usize,
    extra: &'static str,
) -> Result<(), TopologyError> {
    let valid = (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(TopologyError::BadName {
            what,
            name: name.into(),
            max,
            extra,
        })
    }
}

/// Pod subnets the topology fixes must be disjoint; claimed ones are the daemons' job.
fn check_pod_subnets(nodes: &[NodeSpec]) -> Result<(), TopologyError> {
    let fixed: Vec<(&str, Ipv4Net)> = nodes
        .iter()
        .filter_map(|n| Some((n.name.as_str(), n.pod_subnet?)))
        .collect();
    for (i, (node, subnet)) in fixed.iter().enumerate() {
        for (other, other_subnet) in &fixed[..i] {
            if overlaps(*subnet, *other_subnet) {
                return Err(TopologyError::Overlap {
                    what: "pod subnet",
                    a: format!("{subnet} (node {node})"),
                    b: format!("{other_subnet} (node {other})"),
                });
            }
        }
    }
    Ok(())
}

/// A zone must be a DNS label, as `node.zone` must.
fn check_zone(what: &str, zone: &str) -> Result<(), TopologyError> {
    match overlayd_proto::service::spec::dns_label_problem(zone, 63) {
        None => Ok(()),
        Some(problem) => Err(TopologyError::BadZone {
            what: what.into(),
            zone: zone.into(),
            problem,
        }),
    }
}

/// With the lab's `[quic]` on a node, a `[config]` table may tune `quic.port` only: the
/// CA, certificate and key are the lab's.
fn check_quic_table(
    config: &toml::Table,
    table: &'static str,
    node: &str,
) -> Result<(), TopologyError> {
    let Some(toml::Value::Table(quic)) = config.get("quic") else {
        return Ok(());
    };
    for key in ["ca", "cert", "key"] {
        if quic.contains_key(key) {
            return Err(TopologyError::QuicFilesWithLabQuic {
                table,
                key,
                node: node.into(),
            });
        }
    }
    Ok(())
}

fn check_config_table(config: &toml::Table, gossip: bool) -> Result<(), TopologyError> {
    if !gossip && config.contains_key("gossip") {
        return Err(TopologyError::GossipConfigWithoutGossip);
    }
    if config.contains_key("node") {
        return Err(TopologyError::ReservedConfigKey { key: "node" });
    }
    if config.contains_key("peer") {
        return Err(TopologyError::ReservedConfigKey { key: "peer" });
    }
    if let Some(toml::Value::Table(daemon)) = config.get("daemon") {
        if daemon.contains_key("state_dir") {
            return Err(TopologyError::ReservedConfigKey {
                key: "daemon.state_dir",
            });
        }
        if daemon.contains_key("control_socket") {
            return Err(TopologyError::ReservedConfigKey {
                key: "daemon.control_socket",
            });
        }
    }
    Ok(())
}

/// The address of the node at 0-based `position` among its segment's nodes.
fn node_address(segment: &Segment, position: usize) -> Result<Ipv4Addr, TopologyError> {
    let offset = u64::from(FIRST_NODE_HOST) + position as u64 + 1;
    if offset > hosts(segment.subnet.prefix_len()) {
        return Err(TopologyError::SegmentFull {
            segment: segment.name.clone(),
            subnet: segment.subnet,
            nodes: position + 1,
            first: FIRST_NODE_HOST + 1,
        });
    }
    Ok(host(segment.subnet, offset as u32))
}

/// `10.244.(index+1).0/24` for the default cluster CIDR: the (index+1)-th /24 inside it.
fn default_pod_subnet(cluster: Ipv4Net, index: usize) -> Option<Ipv4Net> {
    if cluster.prefix_len() > 24 {
        return None;
    }
    let count = 1u64 << (24 - cluster.prefix_len());
    let slot = index as u64 + 1;
    if slot >= count {
        return None;
    }
    let base = u32::from(cluster.network()) + (slot as u32) * 256;
    Ipv4Net::new(Ipv4Addr::from(base), 24).ok()
}

/// Usable host addresses of a subnet (without network and broadcast addresses).
/// Host addresses in a subnet of this prefix length.
fn hosts(prefix: u8) -> u64 {
    (1u64 << (32 - u32::from(prefix))).saturating_sub(2)
}

fn host(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> String {
        Topology::parse(text)
            .expect_err("topology should be rejected")
            .to_string()
    }

    use crate::topology::TWO_SEGMENTS;

    fn summary(topo: &Topology) -> Vec<(&str, &str, String, Option<String>, u32)> {
        topo.nodes()
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.segment.as_str(),
                    n.underlay.to_string(),
                    n.pod_subnet.map(|s| s.to_string()),
                    n.pods,
                )
            })
            .collect()
    }

    #[test]
    fn default_topology_gossips_through_n1_and_claims_subnets() {
        let topo = Topology::default();

        assert_eq!(
            summary(&topo),
            [
                ("n1", "a", "10.100.1.11".into(), None, 2),
                ("n2", "a", "10.100.1.12".into(), None, 2),
                ("n3", "b", "10.100.2.11".into(), None, 2),
                ("n4", "b", "10.100.2.12".into(), None, 2),
            ]
        );
        assert!(topo.gossip());
        assert_eq!(topo.seed().map(|n| n.name.as_str()), Some("n1"));
        assert_eq!(topo.cluster_cidr().to_string(), "10.244.0.0/16");
        assert_eq!(
            topo.segments()[1].router_address(),
            Ipv4Addr::new(10, 100, 2, 1)
        );
        assert_eq!(topo.segments()[0].bridge(), "seg-a");
    }

    #[test]
    fn without_gossip_subnets_default_to_the_nodes_index() {
        let topo = Topology::parse(&format!("gossip = false\n{DEFAULT_TOPOLOGY}")).unwrap();

        let subnets: Vec<_> = summary(&topo).into_iter().map(|n| n.3).collect();

        assert_eq!(
            subnets,
            [
                "10.244.1.0/24",
                "10.244.2.0/24",
                "10.244.3.0/24",
                "10.244.4.0/24"
            ]
            .map(|s| Some(s.to_string()))
        );
        assert!(!topo.gossip());
        assert_eq!(topo.seed(), None);
    }

    #[test]
    fn seed_names_a_daemon_node_or_defaults_to_the_first_one() {
        let nodes = "[[node]]\nname = \"k\"\nsegment = \"a\"\ndaemon = false\n\
                     [[node]]\nname = \"n1\"\nsegment = \"a\"\n\
                     [[node]]\nname = \"n2\"\nsegment = \"b\"\n";
        let parse = |head: &str| Topology::parse(&format!("{head}\n{TWO_SEGMENTS}\n{nodes}"));

        let first = parse("").unwrap();
        let chosen = parse("seed = \"n2\"").unwrap();
        let daemonless = Topology::parse(&format!(
            "{TWO_SEGMENTS}\n[[node]]\nname = \"k\"\nsegment = \"a\"\ndaemon = false\n"
        ))
        .unwrap();

        assert_eq!(first.seed().unwrap().name, "n1", "k runs no daemon");
        assert_eq!(chosen.seed().unwrap().name, "n2");
        assert_eq!(daemonless.seed(), None);
        let [k, n1, _] = first.nodes() else {
            panic!("three nodes")
        };
        assert_eq!(
            k.pod_subnet.map(|s| s.to_string()).as_deref(),
            Some("10.244.1.0/24"),
            "a static peer always has a subnet"
        );
        assert_eq!(n1.pod_subnet, None);
        let err = parse("seed = \"n9\"").unwrap_err().to_string();
        assert!(err.contains("seed \"n9\" names no node"), "{err}");
        let err = parse("seed = \"k\"").unwrap_err().to_string();
        assert!(err.contains("seed \"k\" has daemon = false"), "{err}");
        let err = parse("gossip = false\nseed = \"n1\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs gossip"), "{err}");
    }

    #[test]
    fn gossip_config_is_checked_against_the_gossip_switch() {
        let node = "[[node]]\nname = \"n1\"\nsegment = \"a\"\n";

        let err = parse_err(&format!(
            "gossip = false\n{TWO_SEGMENTS}\n{node}[config.gossip.timing]\nprobe_interval_ms = 500\n"
        ));
        let typo = parse_err(&format!(
            "{TWO_SEGMENTS}\n{node}[config.gossip.timing]\nprobe_intervall_ms = 500\n"
        ));
        let ok = Topology::parse(&format!(
            "{TWO_SEGMENTS}\n{node}[config.gossip]\nprofile = \"wan\"\n"
        ));

        assert!(err.contains("[config.gossip] needs gossip = true"), "{err}");
        assert!(
            typo.contains("node \"n1\"") && typo.contains("probe_intervall_ms"),
            "{typo}"
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn claiming_nodes_get_room_for_pods_by_subnet_prefix() {
        let node = |pods: u32| {
            format!("{TWO_SEGMENTS}\n[[node]]\nname = \"n1\"\nsegment = \"a\"\npods = {pods}\n")
        };

        let fits = Topology::parse(&node(253));
        let too_many = parse_err(&node(254));
        let small = parse_err(&format!(
            "{}[config.cluster]\nsubnet_prefix = 28\n",
            node(14)
        ));
        let bad = parse_err(&format!(
            "{}[config.cluster]\nsubnet_prefix = 40\n",
            node(1)
        ));

        assert!(fits.is_ok(), "{fits:?}");
        assert!(
            too_many.contains("a claimed /24 has room for 253"),
            "{too_many}"
        );
        assert!(small.contains("a claimed /28 has room for 13"), "{small}");
        assert!(bad.contains("subnet_prefix = 40"), "{bad}");
    }

    #[test]
    fn explicit_values_override_defaults() {
        let topo = Topology::parse(&format!(
            r#"
            cluster_cidr = "10.50.0.0/16"
            {TWO_SEGMENTS}
            [[node]]
            name = "x"
            segment = "b"
            pods = 3
            pod_subnet = "10.50.77.0/24"
            [[node]]
            name = "k"
            segment = "b"
            daemon = false
            vtep_mac = "0e:00:00:00:00:01"
            [config.tunnel]
            host_gw = false
            "#
        ))
        .unwrap();

        let [x, k] = topo.nodes() else {
            panic!("two nodes")
        };
        assert_eq!(
            (x.pods, x.pod_subnet.unwrap().to_string(), x.daemon),
            (3, "10.50.77.0/24".into(), true)
        );
        assert_eq!(
            (k.pods, k.pod_subnet.unwrap().to_string(), k.daemon),
            (0, "10.50.2.0/24".into(), false)
        );
        assert_eq!(k.underlay, Ipv4Addr::new(10, 100, 2, 12));
        assert_eq!(k.vtep_mac.unwrap().to_string(), "0e:00:00:00:00:01");
        assert_eq!(topo.config()["tunnel"]["host_gw"].as_bool(), Some(false));
    }

    #[test]
    fn rejects_unknown_segment() {
        let err = parse_err(&format!(
            "{TWO_SEGMENTS}\n[[node]]\nname = \"n1\"\nsegment = \"c\"\n"
        ));
        assert!(err.contains("segment \"c\""), "{err}");
    }

    #[test]
    fn rejects_duplicate_names() {
        let err = parse_err(&format!(
            "{TWO_SEGMENTS}\n[[node]]\nname = \"n1\"\nsegment = \"a\"\n[[node]]\nname = \"n1\"\nsegment = \"b\"\n"
        ));
        assert!(err.contains("duplicate node name \"n1\""), "{err}");

        let err = parse_err(
            "[[segment]]\nname = \"a\"\nsubnet = \"10.1.0.0/24\"\n[[segment]]\nname = \"a\"\nsubnet = \"10.2.0.0/24\"\n\
             [[node]]\nname = \"n1\"\nsegment = \"a\"\n",
        );
        assert!(err.contains("duplicate segment name \"a\""), "{err}");
    }

    #[test]
    fn rejects_unknown_keys() {
        let err = parse_err(&format!(
            "{TWO_SEGMENTS}\n[[node]]\nname = \"n1\"\nsegment = \"a\"\npod = 3\n"
        ));
        assert!(err.contains("unknown field `pod`"), "{err}");

        let err = parse_err(&format!(
            "bogus = 1\n{TWO_SEGMENTS}\n[[node]]\nname = \"n1\"\nsegment = \"a\"\n"
        ));
        assert!(err.contains("unknown field `bogus`"), "{err}");
    }

    #[test]
    fn rejects_unknown_keys_in_config_table() {
        let err = parse_err(&format!(
            "{TWO_SEGMENTS}\n[[node]]\nname = \"n1\"\nsegment = \"a\"\n[config.tunnel]\nhostgw = false\n"
        ));
        assert!(err.contains("[config]") && err.contains("hostgw"), "{err}");
    }

    #[test]
    fn rejects_config_keys_the_lab_owns() {
        let err = parse_err(&format!(
            "{TWO_SEGMENTS}\n[[node]]\nname = \"n1\"\nsegment = \"a\"\n[config.daemon]\ncontrol_socket = \"/x\"\n"
        ));
        assert!(err.contains("daemon.control_socket"), "{err}");
    }

    #[test]
    fn a_nodes_config_is_checked_like_the_topologys() {
        let node = format!("{TWO_SEGMENTS}\n[[node]]\nname = \"n1\"\nsegment = \"a\"\n");
        let err = parse_err(&format!("{node}[node.config.daemon]\nstate_dir = \"/x\"\n"));
        assert!(err.contains("daemon.state_dir"), "{err}");
        let err = parse_err(&format!("{node}[node.config.tunnel]\nhostgw = false\n"));
        assert!(err.contains("hostgw") && err.contains("n1"), "{err}");
        let err = parse_err(&format!(
            "{node}[[node]]\nname = \"k\"\nsegment = \"a\"\ndaemon = false\n[node.config.tunnel]\nhost_gw = false\n"
        ));
        assert!(err.contains("daemon = false"), "{err}");
        let topo =
            Topology::parse(&format!("{node}[node.config.tunnel]\nhost_gw = false\n")).unwrap();
        assert!(!topo.nodes()[0].config.is_empty());
    }

    #[test]
    fn rejects_segment_overflow() {
        // A /28 has hosts .1-.14: room for nodes .11-.14 only.
        let mut text = String::from("[[segment]]\nname = \"s\"\nsubnet = \"10.9.0.0/28\"\n");
        for i in 1..=5 {
            text.push_str(&format!("[[node]]\nname = \"n{i}\"\nsegment = \"s\"\n"));
        }
        let err = parse_err(&text);
        assert!(err.contains("too few addresses"), "{err}");
    }

    #[test]
    fn rejects_pod_subnet_overflow_and_outside_cluster() {
        let err = parse_err(&format!(
            "cluster_cidr = \"10.244.0.0/24\"\n{TWO_SEGMENTS}\n[[node]]\nname = \"n1\"\nsegment = \"a\"\ndaemon = false\n"
        ));
        assert!(err.contains("cannot derive a /24 pod subnet"), "{err}");

        let err = parse_err(&format!(
            "{TWO_SEGMENTS}\n[[node]]\nname = \"n1\"\nsegment = \"a\"\npod_subnet = \"10.9.0.0/24\"\n"
        ));
        assert!(err.contains("outside cluster_cidr"), "{err}");

        let err = parse_err(&format!(
            "{TWO_SEGMENTS}\n[[node]]\nname = \"n1\"\nsegment = \"a\"\npod_subnet = \"10.244.9.0/30\"\npods = 2\n"
        ));
        assert!(err.contains("room for 1"), "{err}");
    }

    #[test]
    fn rejects_tiny_segments_and_names_the_file() {
        let err = parse_err(
            "[[segment]]\nname = \"a\"\nsubnet = \"10.1.0.0/31\"\n[[node]]\nname = \"n1\"\nsegment = \"a\"\n",
        );
        assert!(err.contains("too small"), "{err}");

        let path = std::env::temp_dir().join(format!("topology-test-{}.toml", std::process::id()));
        std::fs::write(&path, "[[node]]\nname = \"n1\"\n").unwrap();
        let err = Topology::from_file(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn rejects_overlapping_subnets() {
        let err = parse_err(
            "[[segment]]\nname = \"a\"\nsubnet = \"10.1.0.0/16\"\n[[segment]]\nname = \"b\"\nsubnet = \"10.1.2.0/24\"\n\
             [[node]]\nname = \"n1\"\nsegment = \"a\"\n",
        );
        assert!(err.contains("overlaps"), "{err}");

        let err = parse_err(&format!(
            "gossip = false\n{TWO_SEGMENTS}\n[[node]]\nname = \"n1\"\nsegment = \"a\"\npod_subnet = \"10.244.2.0/24\"\n\
             [[node]]\nname = \"n2\"\nsegment = \"a\"\n"
        ));
        assert!(err.contains("pod subnet 10.244.2.0/24"), "{err}");

        let err = parse_err(&format!(
            "{TWO_SEGMENTS}\n[[node]]\nname = \"n1\"\nsegment = \"a\"\npod_subnet = \"10.244.2.0/24\"\n\
             [[node]]\nname = \"n2\"\nsegment = \"a\"\npod_subnet = \"10.244.2.128/25\"\n"
        ));
        assert!(err.contains("pod subnet 10.244.2.128/25"), "{err}");
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["N1", "n-1", "", "router", "lo", "abcdefghijklmnop"] {
            let err = parse_err(&format!(
                "{TWO_SEGMENTS}\n[[node]]\nname = \"{bad}\"\nsegment = \"a\"\n"
            ));
            assert!(err.contains("is not valid"), "{bad}: {err}");
        }
        let err = parse_err(
            "[[segment]]\nname = \"waytoolongname\"\nsubnet = \"10.1.0.0/24\"\n[[node]]\nname = \"n1\"\nsegment = \"waytoolongname\"\n",
        );
        assert!(err.contains("segment name"), "{err}");
    }

    #[test]
    fn remote_zone_topology_puts_segment_c_in_its_own_zone_with_quic() {
        let topo = Topology::parse(REMOTE_ZONE_TOPOLOGY).unwrap();

        let zones: Vec<(&str, &str, &str, bool)> = topo
            .nodes()
            .iter()
            .map(|n| (n.name.as_str(), n.segment.as_str(), n.zone.as_str(), n.quic))
            .collect();

        assert_eq!(
            zones,
            [
                ("n1", "a", "default", true),
                ("n2", "a", "default", true),
                ("n3", "b", "default", true),
                ("n4", "b", "default", true),
                ("n5", "c", "remote", true),
                ("n6", "c", "remote", true),
            ]
        );
        assert!(topo.quic());
        assert_eq!(topo.segment("c").unwrap().zone, "remote");
        assert_eq!(
            topo.node("n5").unwrap().underlay,
            Ipv4Addr::new(10, 100, 3, 11)
        );
        assert!(topo.gossip());
        assert_eq!(topo.seed().unwrap().name, "n1");
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/remote-zone.toml");
        assert_eq!(Topology::from_file(&file).unwrap(), topo);
    }

    #[test]
    fn the_three_segments_file_parses_with_one_node_per_segment() {
        let topo = Topology::parse(THREE_SEGMENTS_TOPOLOGY).unwrap();
        assert_eq!(topo.nodes().len(), 3);
        assert_eq!(
            topo.node("n3").unwrap().underlay,
            Ipv4Addr::new(10, 100, 3, 11)
        );
        assert!(topo.gossip() && !topo.quic());
    }

    #[test]
    fn zones_default_to_the_segments_and_quic_to_off() {
        let topo = Topology::default();
        assert!(topo.nodes().iter().all(|n| n.zone == "default" && !n.quic));
        assert!(!topo.quic());
        assert!(topo.segments().iter().all(|s| s.zone == DEFAULT_ZONE));
    }

    #[test]
    fn a_node_may_name_its_own_zone_and_quic() {
        let topo = Topology::parse(&format!(
            "quic = true
{TWO_SEGMENTS}             [[node]]\nname = \"n1\"\nsegment = \"a\"\nzone = \"x\"\n             [[node]]\nname = \"n2\"\nsegment = \"a\"\nquic = false\n             [[node]]\nname = \"k\"\nsegment = \"b\"\ndaemon = false\n"
        ))
        .unwrap();

        let get = |n: &str| {
            let n = topo.node(n).unwrap();
            (n.zone.as_str(), n.quic)
        };
        assert_eq!(get("n1"), ("x", true));
        assert_eq!(get("n2"), ("default", false));
        assert_eq!(get("k"), ("default", false), "a static peer gets no [quic]");
    }

    #[test]
    fn rejects_bad_zones_and_quic_the_lab_cannot_give() {
        let segment = |zone: &str| {
            format!(
                "[[segment]]\nname = \"a\"\nsubnet = \"10.1.0.0/24\"\nzone = \"{zone}\"\n                 [[node]]\nname = \"n1\"\nsegment = \"a\"\n"
            )
        };
        for bad in ["", "Remote", "dc_1", "-x", &"z".repeat(64)] {
            let err = parse_err(&segment(bad));
            assert!(
                err.contains(&format!("segment \"a\" zone {bad:?} is not valid")),
                "{bad}: {err}"
            );
        }
        assert!(Topology::parse(&segment("dc-1")).is_ok());
        let err = parse_err(&format!(
            "{TWO_SEGMENTS}[[node]]\nname = \"n1\"\nsegment = \"a\"\nzone = \"a.b\"\n"
        ));
        assert!(err.contains("node \"n1\" zone \"a.b\""), "{err}");
        let err = parse_err(&format!(
            "{TWO_SEGMENTS}[[segment]]\nname = \"c\"\nsubnet = \"10.100.3.0/24\"\nzones = \"x\"\n             [[node]]\nname = \"n1\"\nsegment = \"a\"\n"
        ));
        assert!(err.contains("unknown field `zones`"), "{err}");

        let err = parse_err(&format!(
            "{TWO_SEGMENTS}[[node]]\nname = \"k\"\nsegment = \"a\"\ndaemon = false\nquic = true\n"
        ));
        assert!(
            err.contains("node \"k\" has daemon = false") && err.contains("quic"),
            "{err}"
        );
        // With the lab's [quic] on, its files are the lab's; the port is the topology's.
        let node = "[[node]]\nname = \"n1\"\nsegment = \"a\"\n";
        let err = parse_err(&format!(
            "quic = true\n{TWO_SEGMENTS}{node}[config.quic]\nkey = \"/etc/k.key\"\n"
        ));
        assert!(
            err.contains("`quic.key`") && err.contains("[config]"),
            "{err}"
        );
        let err = parse_err(&format!(
            "quic = true\n{TWO_SEGMENTS}{node}[node.config.quic]\nca = \"/etc/ca.pem\"\n"
        ));
        assert!(
            err.contains("`quic.ca`") && err.contains("[node.config]"),
            "{err}"
        );
        let port = Topology::parse(&format!(
            "quic = true\n{TWO_SEGMENTS}{node}[config.quic]\nport = 9443\n"
        ));
        assert!(port.is_ok(), "{port:?}");
        // Without the lab's [quic], a [config.quic] must be complete, as in any config.
        let err = parse_err(&format!("{TWO_SEGMENTS}{node}[config.quic]\nport = 9443\n"));
        assert!(err.contains("n1") && err.contains("quic"), "{err}");
        let err = parse_err(&format!("quic = 1\n{TWO_SEGMENTS}{node}"));
        assert!(err.contains("quic"), "{err}");
    }

    #[test]
    fn rejects_pods_on_daemonless_node_and_empty_topology() {
        let err = parse_err(&format!(
            "{TWO_SEGMENTS}\n[[node]]\nname = \"n1\"\nsegment = \"a\"\ndaemon = false\npods = 1\n"
        ));
        assert!(err.contains("daemon = false"), "{err}");
        assert!(parse_err(TWO_SEGMENTS).contains("no nodes"));
    }
}
