//! Semantic checks on a decoded [`Config`]: what the types alone cannot say.

use overlayd_proto::overlaps;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::path::Path;

use ipnet::Ipv4Net;
use overlayd_proto::gossip::ConfigError as TimingError;
use overlayd_proto::wire::MacAddr;

use crate::document::Document;
use crate::error::ConfigError;
use crate::expected::expected;
use crate::key_path::KeyPath;
use crate::schema::{
    Bridge, Cluster, Config, Daemon, Dns, Gossip, Node, PathPolicy, Peer, Quic, Services, Tunnel,
};
use crate::seed::Seed;
use overlayd_proto::service::spec::dns_name_problem;
use overlayd_proto::service::{FieldSegment, Protocol, ServiceSpec};

/// Longest Linux interface name in bytes (`IFNAMSIZ` less the terminating NUL).
const MAX_INTERFACE_NAME_BYTES: usize = 15;
/// Longest DNS label.
const MAX_DNS_LABEL_CHARS: usize = 63;
/// Longest cluster name.
const MAX_CLUSTER_NAME_CHARS: usize = 64;
/// Longest pod subnet prefix: a /31 or /32 leaves no address for a pod after the bridge's.
const MAX_POD_PREFIX_LEN: u8 = 30;
/// UDP ports a VXLAN endpoint can listen on: any but 0.
const PORTS: RangeInclusive<u32> = 1..=65535;
/// VXLAN network identifiers: 24 bits.
const VNIS: RangeInclusive<u32> = 0..=(1 << 24) - 1;
/// MTUs: from the IPv4 minimum every host must accept to the IPv4 maximum.
const MTUS: RangeInclusive<u32> = 576..=65535;
/// Longest service CIDR prefix: a /30 has two addresses for Services.
const MAX_SERVICE_PREFIX_LEN: u8 = 30;

/// A key whose value breaks a rule, and the message saying so.
struct Invalid {
    path: KeyPath,
    message: String,
}

type Check = Result<(), Invalid>;

/// Checks every rule the schema's types cannot express. Returns `Err` with the first
/// broken rule: a missing `node.pod_subnet` first (a missing key, as decoding reports
/// them), then per-key rules in schema order, then rules across keys.
pub(crate) fn validate(config: &Config, doc: &Document<'_>) -> Result<(), ConfigError> {
    check(config, doc).map_err(|invalid| doc.error(&invalid.path, invalid.message))
}

fn check(config: &Config, doc: &Document<'_>) -> Check {
    check_pod_subnet_present(config)?;
    check_keys(config)?;
    check_subnets_inside_cluster(config, doc)?;
    check_subnets_disjoint(config, doc)?;
    check_names_unique(config, doc)?;
    check_addresses_unique(config, doc)?;
    check_service_ranges(config, doc)?;
    check_upstreams_unique(&config.dns, doc)?;
    check_service_specs(config, doc)?;
    check_udp_ports_distinct(config, doc)?;
    check_path_policy(config)?;
    if let Some(gossip) = &config.gossip {
        check_claims_fit_cluster(&config.cluster, doc)?;
        check_seeds_unique(gossip, doc)?;
        check_timers_work_together(gossip, doc)?;
    }
    Ok(())
}

/// Without gossip there is no claiming: the node's subnet must be configured.
fn check_pod_subnet_present(config: &Config) -> Check {
    if config.gossip.is_some() || config.node.pod_subnet.is_some() {
        return Ok(());
    }
    Err(Invalid {
        path: KeyPath::root().key("node").key("pod_subnet"),
        message: "missing key pod_subnet; required unless [gossip] is set, in which case the \
                  node claims one from cluster.cidr"
            .to_owned(),
    })
}

/// The rules about one key at a time.
fn check_keys(config: &Config) -> Check {
    check_node(&config.node)?;
    check_cluster(&config.cluster)?;
    check_bridge(&config.bridge)?;
    check_tunnel(&config.tunnel)?;
    check_daemon(&config.daemon)?;
    if let Some(gossip) = &config.gossip {
        check_gossip(gossip)?;
    }
    check_services(&config.services)?;
    check_dns(&config.dns)?;
    if let Some(quic) = &config.quic {
        check_quic(quic)?;
    }
    for (i, peer) in config.peers.iter().enumerate() {
        check_peer(&KeyPath::root().key("peer").index(i), peer)?;
    }
    Ok(())
}

fn check_node(node: &Node) -> Check {
    let path = KeyPath::root().key("node");
    dns_label(&path.key("name"), &node.name)?;
    dns_label(&path.key("zone"), &node.zone)?;
    if let Some(interface) = &node.underlay_interface {
        interface_name(&path.key("underlay_interface"), interface)?;
    }
    if let Some(address) = node.underlay_address {
        host_address(&path.key("underlay_address"), address)?;
    }
    if let Some(address) = node.advertise_address {
        host_address(&path.key("advertise_address"), address)?;
    }
    if let Some(subnet) = node.pod_subnet {
        pod_subnet(&path.key("pod_subnet"), subnet)?;
    }
    if let Some(mac) = node.vtep_mac {
        vtep_mac(&path.key("vtep_mac"), mac)?;
    }
    Ok(())
}

fn check_cluster(cluster: &Cluster) -> Check {
    let path = KeyPath::root().key("cluster");
    network_address(&path.key("cidr"), cluster.cidr)?;
    cluster_name(&path.key("name"), &cluster.name)?;
    within(
        &path.key("subnet_prefix"),
        u32::from(cluster.subnet_prefix),
        0..=u32::from(MAX_POD_PREFIX_LEN),
    )?;
    let service_cidr = path.key("service_cidr");
    network_address(&service_cidr, cluster.service_cidr)?;
    if cluster.service_cidr.prefix_len() > MAX_SERVICE_PREFIX_LEN {
        let message = format!(
            "{} leaves no room for Services; expected a prefix length of at most \
             /{MAX_SERVICE_PREFIX_LEN}, like 10.96.0.0/12",
            cluster.service_cidr
        );
        return Err(Invalid {
            path: service_cidr,
            message,
        });
    }
    if let Some(problem) = dns_name_problem(&cluster.domain) {
        return Err(problem_with(
            &path.key("domain"),
            &format!("{:?}", cluster.domain),
            &problem,
        ));
    }
    Ok(())
}

fn check_services(services: &Services) -> Check {
    let path = KeyPath::root().key("services");
    let range = services.node_port_range;
    let range_path = path.key("node_port_range");
    let text = format!("\"{}-{}\"", range.lo, range.hi);
    if range.lo == 0 {
        return Err(problem_with(&range_path, &text, "starts at port 0"));
    }
    if range.lo > range.hi {
        return Err(problem_with(&range_path, &text, "is backwards"));
    }
    for (i, net) in services.external_pool.iter().enumerate() {
        network_address(&path.key("external_pool").index(i), *net)?;
    }
    Ok(())
}

fn check_dns(dns: &Dns) -> Check {
    let path = KeyPath::root().key("dns").key("upstream");
    for (i, upstream) in dns.upstream.iter().enumerate() {
        let address = upstream.0;
        let at = path.index(i);
        if address.ip().is_unspecified()
            || address.ip().is_multicast()
            || address.ip().is_broadcast()
        {
            let problem = unicast_problem(*address.ip()).unwrap_or("is not unicast");
            return Err(problem_with(
                &at,
                &format!("\"{}\"", String::from(*upstream)),
                problem,
            ));
        }
        port_not_zero(&at, address)?;
    }
    Ok(())
}

fn check_bridge(bridge: &Bridge) -> Check {
    let path = KeyPath::root().key("bridge");
    interface_name(&path.key("name"), &bridge.name)?;
    if let Some(mtu) = bridge.mtu {
        within(&path.key("mtu"), mtu, MTUS)?;
    }
    Ok(())
}

fn check_tunnel(tunnel: &Tunnel) -> Check {
    let path = KeyPath::root().key("tunnel");
    interface_name(&path.key("device"), &tunnel.device)?;
    within(&path.key("port"), u32::from(tunnel.port), PORTS)?;
    within(&path.key("vni"), tunnel.vni, VNIS)?;
    if let Some(mtu) = tunnel.mtu {
        within(&path.key("mtu"), mtu, MTUS)?;
    }
    Ok(())
}

fn check_daemon(daemon: &Daemon) -> Check {
    let path = KeyPath::root().key("daemon");
    absolute_path(&path.key("state_dir"), &daemon.state_dir)?;
    absolute_path(&path.key("control_socket"), &daemon.control_socket)
}

fn check_gossip(gossip: &Gossip) -> Check {
    let path = KeyPath::root().key("gossip");
    port_not_zero(&path.key("bind"), gossip.bind)?;
    if let Some(advertise) = gossip.advertise {
        host_socket_address(&path.key("advertise"), advertise)?;
    }
    for (i, text) in gossip.seeds.iter().enumerate() {
        seed(&path.key("seeds").index(i), text, gossip.bind.port())?;
    }
    let key_files = path.key("key_files");
    if gossip.key_files.is_empty() {
        return Err(problem_with(&key_files, "[]", "is empty"));
    }
    for (i, file) in gossip.key_files.iter().enumerate() {
        absolute_path(&key_files.index(i), file)?;
    }
    let timing = path.key("timing");
    for (key, value) in gossip.timing.by_key() {
        if let Some(value) = value {
            at_least_one(&timing.key(key), value)?;
        }
    }
    Ok(())
}

fn check_peer(path: &KeyPath, peer: &Peer) -> Check {
    dns_label(&path.key("name"), &peer.name)?;
    host_address(&path.key("underlay_address"), peer.underlay_address)?;
    pod_subnet(&path.key("pod_subnet"), peer.pod_subnet)?;
    if let Some(mac) = peer.vtep_mac {
        vtep_mac(&path.key("vtep_mac"), mac)?;
    }
    Ok(())
}

/// Every node's pod subnet lies inside `cluster.cidr`.
fn check_subnets_inside_cluster(config: &Config, doc: &Document<'_>) -> Check {
    let cidr_path = KeyPath::root().key("cluster").key("cidr");
    let cidr = config.cluster.cidr;
    for (path, subnet) in pod_subnets(config) {
        if !cidr.contains(&subnet) {
            let message = format!(
                "{subnet} is outside {cidr_path} {cidr} ({}); expected a subnet inside the \
                 cluster CIDR",
                doc.whereabouts(&cidr_path)
            );
            return Err(Invalid { path, message });
        }
    }
    Ok(())
}

/// No two nodes' pod subnets overlap. Each subnet is reported against the first earlier
/// one it overlaps.
fn check_subnets_disjoint(config: &Config, doc: &Document<'_>) -> Check {
    let subnets = pod_subnets(config);
    for (later, (path, subnet)) in subnets.iter().enumerate() {
        let earlier = subnets[..later].iter();
        if let Some((other_path, other)) = earlier.into_iter().find(|(_, o)| overlaps(*o, *subnet))
        {
            let message = format!(
                "{subnet} overlaps {other_path} {other} ({}); every node needs a subnet of its own",
                doc.whereabouts(other_path)
            );
            return Err(Invalid {
                path: path.clone(),
                message,
            });
        }
    }
    Ok(())
}

/// Peer names differ from each other and from this node's.
fn check_names_unique(config: &Config, doc: &Document<'_>) -> Check {
    let mut names = vec![(
        KeyPath::root().key("node").key("name"),
        config.node.name.as_str(),
    )];
    for (i, peer) in config.peers.iter().enumerate() {
        let path = KeyPath::root().key("peer").index(i).key("name");
        if let Some((other_path, _)) = names.iter().find(|(_, name)| *name == peer.name) {
            let message = format!(
                "{:?} is also {other_path} ({}); every node needs a name of its own",
                peer.name,
                doc.whereabouts(other_path)
            );
            return Err(Invalid { path, message });
        }
        names.push((path, &peer.name));
    }
    Ok(())
}

/// Peer underlay addresses differ from each other and from this node's addresses.
fn check_addresses_unique(config: &Config, doc: &Document<'_>) -> Check {
    let node = KeyPath::root().key("node");
    let mut addresses: Vec<(KeyPath, Ipv4Addr)> = [
        (node.key("underlay_address"), config.node.underlay_address),
        (node.key("advertise_address"), config.node.advertise_address),
    ]
    .into_iter()
    .filter_map(|(path, address)| Some((path, address?)))
    .collect();
    for (i, peer) in config.peers.iter().enumerate() {
        let path = KeyPath::root().key("peer").index(i).key("underlay_address");
        let address = peer.underlay_address;
        if let Some((other_path, _)) = addresses.iter().find(|(_, other)| *other == address) {
            let message = format!(
                "{address} is also {other_path} ({}); every node needs an underlay address of \
                 its own",
                doc.whereabouts(other_path)
            );
            return Err(Invalid { path, message });
        }
        addresses.push((path, address));
    }
    Ok(())
}

/// Subnets claimed by gossip lie inside `cluster.cidr` and leave room for pods.
/// Configured pod subnets may have any length: they are checked on their own.
fn check_claims_fit_cluster(cluster: &Cluster, doc: &Document<'_>) -> Check {
    let cidr_path = KeyPath::root().key("cluster").key("cidr");
    let cidr = cluster.cidr;
    let prefix = cluster.subnet_prefix;
    if prefix >= cidr.prefix_len() {
        return Ok(());
    }
    let message = format!(
        "/{prefix} is shorter than {cidr_path} {cidr} ({}); expected a prefix length between \
         {} and {MAX_POD_PREFIX_LEN}, so that claimed subnets lie inside the cluster CIDR",
        doc.whereabouts(&cidr_path),
        cidr.prefix_len()
    );
    Err(Invalid {
        path: KeyPath::root().key("cluster").key("subnet_prefix"),
        message,
    })
}

/// No seed is listed twice, counting a missing port as `bind`'s and names in any case.
fn check_seeds_unique(gossip: &Gossip, doc: &Document<'_>) -> Check {
    let seeds_path = KeyPath::root().key("gossip").key("seeds");
    let mut seen: Vec<(KeyPath, &str, Seed)> = Vec::new();
    for (i, text) in gossip.seeds.iter().enumerate() {
        // Each seed parses: the per-key rules ran first.
        let Ok(seed) = Seed::parse(text, gossip.bind.port()) else {
            continue;
        };
        let path = seeds_path.index(i);
        if let Some((other_path, other_text, _)) = seen.iter().find(|(_, _, s)| *s == seed) {
            let message = format!(
                "{text:?} is the same seed as {other_path} {other_text:?} ({}); list every \
                 seed once",
                doc.whereabouts(other_path)
            );
            return Err(Invalid { path, message });
        }
        seen.push((path, text, seed));
    }
    Ok(())
}

/// The profile with the overrides applied passes [`Timing::validate`]; its error is
/// reported at the override that caused it.
///
/// [`Timing::validate`]: overlayd_proto::gossip::Timing::validate
fn check_timers_work_together(gossip: &Gossip, doc: &Document<'_>) -> Check {
    let Err(error) = gossip.timing().validate() else {
        return Ok(());
    };
    let timing_path = KeyPath::root().key("gossip").key("timing");
    match error {
        TimingError::ProbeTimeoutTooLong => Err(probe_timeout_too_long(gossip, doc)),
        // The profiles are within the bounds: an override went beyond one.
        TimingError::TimerTooLong { timer, value, max } => Err(Invalid {
            path: timing_path.key(&format!("{timer}_ms")),
            message: format!(
                "{} ms is longer than {} days; expected a whole number of milliseconds \
                 between 1 and {}",
                value.as_millis(),
                max.as_secs() / 86_400,
                max.as_millis()
            ),
        }),
        TimingError::TooLarge {
            setting,
            value,
            max,
        } => Err(Invalid {
            path: timing_path.key(setting),
            message: format!(
                "{value} is more than {max}; expected a whole number between 1 and {max}"
            ),
        }),
        // Overrides are positive and the profiles valid, so only a rule `Timing` gains
        // after this was written lands here.
        other => Err(Invalid {
            path: timing_path,
            message: format!(
                "{other}; expected timers that work together, as those of the lan and wan \
                 profiles do"
            ),
        }),
    }
}

/// The error for a probe timeout not shorter than the probe interval: at the timeout,
/// unless only the interval is overridden.
fn probe_timeout_too_long(gossip: &Gossip, doc: &Document<'_>) -> Invalid {
    let timing = gossip.timing();
    let (timeout, interval) = (
        timing.probe_timeout.as_millis(),
        timing.probe_interval.as_millis(),
    );
    let profile = gossip.profile.name();
    let path = KeyPath::root().key("gossip").key("timing");
    let interval_path = path.key("probe_interval_ms");
    let overrides = &gossip.timing;
    if overrides.probe_timeout_ms.is_none() && overrides.probe_interval_ms.is_some() {
        let message = format!(
            "{interval} ms is not longer than the {profile} profile's probe timeout of \
             {timeout} ms; expected a probe interval longer than the probe timeout"
        );
        return Invalid {
            path: interval_path,
            message,
        };
    }
    let interval_source = if overrides.probe_interval_ms.is_some() {
        let line = doc.whereabouts(&interval_path);
        format!("{interval_path} {interval} ({line})")
    } else {
        format!("the {profile} profile's probe interval of {interval} ms")
    };
    let message = format!(
        "{timeout} ms is not shorter than {interval_source}; expected a probe timeout shorter \
         than the probe interval"
    );
    Invalid {
        path: path.key("probe_timeout_ms"),
        message,
    }
}

/// The service CIDR and the external pool stay clear of the pod CIDR and of each other,
/// and the node port range of the ports the node itself listens on.
fn check_service_ranges(config: &Config, doc: &Document<'_>) -> Check {
    let cidr_path = KeyPath::root().key("cluster").key("cidr");
    let service_path = KeyPath::root().key("cluster").key("service_cidr");
    let (cidr, service_cidr) = (config.cluster.cidr, config.cluster.service_cidr);
    if overlaps(cidr, service_cidr) {
        let message = format!(
            "{service_cidr} overlaps {cidr_path} {cidr} ({}); expected a subnet of its own for \
             Service addresses, like 10.96.0.0/12",
            doc.whereabouts(&cidr_path)
        );
        return Err(Invalid {
            path: service_path,
            message,
        });
    }
    let pool_path = KeyPath::root().key("services").key("external_pool");
    let pool = &config.services.external_pool;
    for (i, net) in pool.iter().enumerate() {
        let earlier = pool[..i]
            .iter()
            .enumerate()
            .map(|(j, n)| (pool_path.index(j), *n));
        let others = [
            (cidr_path.clone(), cidr),
            (service_path.clone(), service_cidr),
        ]
        .into_iter()
        .chain(earlier);
        for (other_path, other) in others {
            if overlaps(*net, other) {
                let message = format!(
                    "{net} overlaps {other_path} {other} ({}); expected external addresses \
                     outside the pod and service CIDRs, each listed once",
                    doc.whereabouts(&other_path)
                );
                return Err(Invalid {
                    path: pool_path.index(i),
                    message,
                });
            }
        }
    }
    let range = config.services.node_port_range;
    let own_ports = [
        (
            KeyPath::root().key("tunnel").key("port"),
            Some(config.tunnel.port),
        ),
        (
            KeyPath::root().key("gossip").key("bind"),
            config.gossip.as_ref().map(|g| g.bind.port()),
        ),
        (
            KeyPath::root().key("quic").key("port"),
            config.quic.as_ref().map(|q| q.port),
        ),
    ];
    for (path, port) in own_ports {
        if let Some(port) = port
            && (range.lo..=range.hi).contains(&port)
        {
            let message = format!(
                "\"{}-{}\" contains {path}'s port {port} ({}); expected a range clear of the \
                 ports overlayd itself listens on",
                range.lo,
                range.hi,
                doc.whereabouts(&path)
            );
            return Err(Invalid {
                path: KeyPath::root().key("services").key("node_port_range"),
                message,
            });
        }
    }
    Ok(())
}

/// The tunnel, gossip and QUIC sockets are all UDP: each needs a port of its own.
fn check_udp_ports_distinct(config: &Config, doc: &Document<'_>) -> Check {
    let Some(quic) = &config.quic else {
        return Ok(());
    };
    let others = [
        (
            KeyPath::root().key("tunnel").key("port"),
            Some(config.tunnel.port),
        ),
        (
            KeyPath::root().key("gossip").key("bind"),
            config.gossip.as_ref().map(|g| g.bind.port()),
        ),
    ];
    for (path, port) in others {
        if port == Some(quic.port) {
            return Err(Invalid {
                path: KeyPath::root().key("quic").key("port"),
                message: format!(
                    "{} is taken by {path} ({}); expected a UDP port of its own, like 8473",
                    quic.port,
                    doc.whereabouts(&path)
                ),
            });
        }
    }
    Ok(())
}

/// Path rules that are wrong for every peer (`PathPolicy::validate`), and zone names
/// that no node could have.
fn check_path_policy(config: &Config) -> Check {
    let path = KeyPath::root().key("path");
    for (i, rule) in config.path.zone_pairs.iter().enumerate() {
        let zones = path.key("zone_pairs").index(i).key("zones");
        for (j, zone) in rule.zones.iter().enumerate() {
            dns_label(&zones.index(j), zone)?;
        }
    }
    for (i, rule) in config.path.peers.iter().enumerate() {
        dns_label(&path.key("peers").index(i).key("peer"), &rule.peer)?;
    }
    // Each rule on its own first, so an error points at the rule, then duplicates (at the
    // second of the two).
    let policy = &config.path;
    let single = |zone_pairs, peers| PathPolicy { zone_pairs, peers }.validate();
    let located = (0..policy.zone_pairs.len())
        .map(|i| {
            let prefix = PathPolicy {
                zone_pairs: policy.zone_pairs[..=i].to_vec(),
                peers: Vec::new(),
            };
            let own = single(vec![policy.zone_pairs[i].clone()], Vec::new());
            (path.key("zone_pairs").index(i), own.and(prefix.validate()))
        })
        .chain((0..policy.peers.len()).map(|i| {
            let prefix = PathPolicy {
                zone_pairs: Vec::new(),
                peers: policy.peers[..=i].to_vec(),
            };
            let own = single(Vec::new(), vec![policy.peers[i].clone()]);
            (path.key("peers").index(i), own.and(prefix.validate()))
        }));
    for (at, result) in located {
        if let Err(e) = result {
            return Err(Invalid {
                path: at,
                message: e.to_string(),
            });
        }
    }
    Ok(())
}

fn check_quic(quic: &Quic) -> Check {
    let path = KeyPath::root().key("quic");
    within(&path.key("port"), u32::from(quic.port), PORTS)?;
    absolute_path(&path.key("ca"), &quic.ca)?;
    absolute_path(&path.key("cert"), &quic.cert)?;
    absolute_path(&path.key("key"), &quic.key)
}

/// No DNS upstream is listed twice.
fn check_upstreams_unique(dns: &Dns, doc: &Document<'_>) -> Check {
    let path = KeyPath::root().key("dns").key("upstream");
    for (i, upstream) in dns.upstream.iter().enumerate() {
        if let Some(j) = dns.upstream[..i].iter().position(|u| u == upstream) {
            let message = format!(
                "\"{}\" is also {} ({}); list every upstream once",
                String::from(*upstream),
                path.index(j),
                doc.whereabouts(&path.index(j))
            );
            return Err(Invalid {
                path: path.index(i),
                message,
            });
        }
    }
    Ok(())
}

/// Every `[[service]]` validates under the settings of this file, and no two name the
/// same Service or give the same address or node port.
fn check_service_specs(config: &Config, doc: &Document<'_>) -> Check {
    let settings = config.service_settings();
    let services = KeyPath::root().key("service");
    for (i, spec) in config.service_specs.iter().enumerate() {
        if let Err(error) = spec.validate(&settings) {
            let mut path = services.index(i);
            for segment in &error.path {
                path = match segment {
                    FieldSegment::Key(key) => path.key(key),
                    FieldSegment::Index(index) => path.index(*index),
                };
            }
            return Err(Invalid {
                path,
                message: error.message,
            });
        }
    }
    let mut names: Vec<(usize, &ServiceSpec)> = Vec::new();
    let mut claims: Vec<(Claim, KeyPath)> = Vec::new();
    for (i, spec) in config.service_specs.iter().enumerate() {
        let at = services.index(i);
        if let Some((j, _)) = names
            .iter()
            .find(|(_, o)| o.name == spec.name && o.namespace == spec.namespace)
        {
            let other = services.index(*j).key("name");
            let message = format!(
                "{:?} in namespace {:?} is also {other} ({}); every Service needs a name of its \
                 own within its namespace",
                spec.name,
                spec.namespace,
                doc.whereabouts(&other)
            );
            return Err(Invalid {
                path: at.key("name"),
                message,
            });
        }
        names.push((i, spec));
        for (claim, path) in given_claims(spec, &at) {
            if let Some((_, other)) = claims.iter().find(|(c, _)| *c == claim) {
                let message = format!(
                    "{} is also given in {other} ({}); two Services cannot share it",
                    claim.describe(),
                    doc.whereabouts(other)
                );
                return Err(Invalid { path, message });
            }
            claims.push((claim, path));
        }
    }
    Ok(())
}

/// An address or port a Service's spec gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    ClusterIp(Ipv4Addr, Protocol, u16),
    NodePort(u16, Protocol),
    ExternalIp(Ipv4Addr, Protocol, u16),
}

impl Claim {
    fn describe(self) -> String {
        match self {
            Claim::ClusterIp(ip, proto, port) => format!("cluster IP {ip}:{port}/{proto}"),
            Claim::NodePort(port, proto) => format!("node port {port}/{proto}"),
            Claim::ExternalIp(ip, proto, port) => format!("external IP {ip}:{port}/{proto}"),
        }
    }
}

/// What `spec` (at `at`) gives, each with the key that gives it.
fn given_claims(spec: &ServiceSpec, at: &KeyPath) -> Vec<(Claim, KeyPath)> {
    let mut out = Vec::new();
    for (k, port) in spec.ports.iter().enumerate() {
        if let Some(ip) = spec.given_cluster_ip() {
            out.push((
                Claim::ClusterIp(ip, port.protocol, port.port),
                at.key("cluster_ip"),
            ));
        }
        if let Some(np) = port.node_port {
            out.push((
                Claim::NodePort(np, port.protocol),
                at.key("ports").index(k).key("node_port"),
            ));
        }
        if let Some(ip) = spec.external_ip {
            out.push((
                Claim::ExternalIp(ip, port.protocol, port.port),
                at.key("external_ip"),
            ));
        }
    }
    out
}

/// Every configured pod subnet with its key: this node's first, then the peers' in order.
fn pod_subnets(config: &Config) -> Vec<(KeyPath, Ipv4Net)> {
    let node = config
        .node
        .pod_subnet
        .map(|subnet| (KeyPath::root().key("node").key("pod_subnet"), subnet));
    let peers = config.peers.iter().enumerate().map(|(i, peer)| {
        (
            KeyPath::root().key("peer").index(i).key("pod_subnet"),
            peer.pod_subnet,
        )
    });
    node.into_iter().chain(peers).collect()
}

fn dns_label(path: &KeyPath, name: &str) -> Check {
    let problem = if name.is_empty() {
        "is empty".to_owned()
    } else if name.chars().count() > MAX_DNS_LABEL_CHARS {
        format!("is {} characters long", name.chars().count())
    } else if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
    {
        format!("contains {c:?}")
    } else if name.starts_with('-') {
        "starts with '-'".to_owned()
    } else if name.ends_with('-') {
        "ends with '-'".to_owned()
    } else {
        return Ok(());
    };
    Err(problem_with(path, &format!("{name:?}"), &problem))
}

/// The kernel's rules for a network device name (`dev_valid_name`), and no control
/// characters: a NUL would silently cut the name short.
fn interface_name(path: &KeyPath, name: &str) -> Check {
    let problem = if name.is_empty() {
        "is empty".to_owned()
    } else if name.len() > MAX_INTERFACE_NAME_BYTES {
        format!("is {} bytes long", name.len())
    } else if name == "." || name == ".." {
        "is reserved".to_owned()
    } else if let Some(c) = name.chars().find(|c| matches!(c, '/' | ':')) {
        format!("contains {c:?}")
    } else if name.chars().any(char::is_whitespace) {
        "contains whitespace".to_owned()
    } else if name.chars().any(char::is_control) {
        "contains a control character".to_owned()
    } else {
        return Ok(());
    };
    Err(problem_with(path, &format!("{name:?}"), &problem))
}

/// 1..=64 characters of `[A-Za-z0-9._-]`.
fn cluster_name(path: &KeyPath, name: &str) -> Check {
    let problem = if name.is_empty() {
        "is empty".to_owned()
    } else if name.chars().count() > MAX_CLUSTER_NAME_CHARS {
        format!("is {} characters long", name.chars().count())
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        format!("contains {c:?}")
    } else {
        return Ok(());
    };
    Err(problem_with(path, &format!("{name:?}"), &problem))
}

/// An address a node can be reached at on the underlay.
fn host_address(path: &KeyPath, address: Ipv4Addr) -> Check {
    match unicast_problem(address) {
        Some(problem) => Err(problem_with(path, &address.to_string(), problem)),
        None => Ok(()),
    }
}

/// Why no other node could send to `address`, if it cannot.
fn unicast_problem(address: Ipv4Addr) -> Option<&'static str> {
    if address.is_unspecified() {
        Some("is the unspecified address")
    } else if address.is_loopback() {
        Some("is a loopback address")
    } else if address.is_multicast() {
        Some("is a multicast address")
    } else if address.is_broadcast() {
        Some("is the broadcast address")
    } else {
        None
    }
}

/// A socket address other nodes can send to.
fn host_socket_address(path: &KeyPath, address: SocketAddrV4) -> Check {
    if let Some(problem) = unicast_problem(*address.ip()) {
        return Err(problem_with(path, &address.to_string(), problem));
    }
    port_not_zero(path, address)
}

fn seed(path: &KeyPath, text: &str, default_port: u16) -> Check {
    match Seed::parse(text, default_port) {
        Ok(_) => Ok(()),
        Err(error) => Err(problem_with(path, &format!("{text:?}"), &error.to_string())),
    }
}

/// A socket address to listen on or send to: port 0 would mean "any".
fn port_not_zero(path: &KeyPath, address: SocketAddrV4) -> Check {
    if address.port() != 0 {
        return Ok(());
    }
    Err(problem_with(path, &address.to_string(), "has port 0"))
}

fn network_address(path: &KeyPath, subnet: Ipv4Net) -> Check {
    if subnet.addr() == subnet.network() {
        return Ok(());
    }
    let message = format!(
        "{subnet} has host bits set; did you mean {}?",
        subnet.trunc()
    );
    Err(Invalid {
        path: path.clone(),
        message,
    })
}

fn pod_subnet(path: &KeyPath, subnet: Ipv4Net) -> Check {
    network_address(path, subnet)?;
    if subnet.prefix_len() > MAX_POD_PREFIX_LEN {
        let message = format!(
            "{subnet} leaves no addresses for pods; expected a prefix length of at most \
             /{MAX_POD_PREFIX_LEN}"
        );
        return Err(Invalid {
            path: path.clone(),
            message,
        });
    }
    Ok(())
}

/// A VTEP MAC is the destination of unicast frames, so it must be one.
fn vtep_mac(path: &KeyPath, mac: MacAddr) -> Check {
    let problem = if mac.is_zero() {
        "is all zeros"
    } else if mac == MacAddr::BROADCAST {
        "is the broadcast address"
    } else if mac.is_multicast() {
        "is a multicast address (the first octet is odd)"
    } else {
        return Ok(());
    };
    Err(problem_with(path, &mac.to_string(), problem))
}

/// `value` lies in `range`; the key's expectation states the range in words.
fn within(path: &KeyPath, value: u32, range: RangeInclusive<u32>) -> Check {
    if range.contains(&value) {
        return Ok(());
    }
    let message = format!("expected {}, found {value}", expected(path));
    Err(Invalid {
        path: path.clone(),
        message,
    })
}

/// A timer override: zero would stop the timer or the thing it counts.
fn at_least_one(path: &KeyPath, value: u64) -> Check {
    if value >= 1 {
        return Ok(());
    }
    let message = format!("expected {}, found {value}", expected(path));
    Err(Invalid {
        path: path.clone(),
        message,
    })
}

fn absolute_path(path: &KeyPath, value: &Path) -> Check {
    if value.is_absolute() {
        return Ok(());
    }
    Err(problem_with(
        path,
        &format!("{value:?}"),
        "is a relative path",
    ))
}

/// `<value> <problem>; expected <what the key expects>`.
fn problem_with(path: &KeyPath, value: &str, problem: &str) -> Invalid {
    let message = format!("{value} {problem}; expected {}", expected(path));
    Invalid {
        path: path.clone(),
        message,
    }
}
