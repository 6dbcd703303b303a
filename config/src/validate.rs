//! Semantic checks on a decoded [`Config`]: what the types alone cannot say.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::Path;

use ipnet::Ipv4Net;
use overlayd_proto::wire::MacAddr;

use crate::document::Document;
use crate::error::ConfigError;
use crate::expected::expected;
use crate::key_path::KeyPath;
use crate::schema::{Bridge, Config, Daemon, Node, Peer, Tunnel};

/// Longest Linux interface name in bytes (`IFNAMSIZ` less the terminating NUL).
const MAX_INTERFACE_NAME_BYTES: usize = 15;
/// Longest DNS label.
const MAX_DNS_LABEL_CHARS: usize = 63;
/// Longest pod subnet prefix: a /31 or /32 leaves no address for a pod after the bridge's.
const MAX_POD_PREFIX_LEN: u8 = 30;
/// UDP ports a VXLAN endpoint can listen on: any but 0.
const PORTS: RangeInclusive<u32> = 1..=65535;
/// VXLAN network identifiers: 24 bits.
const VNIS: RangeInclusive<u32> = 0..=(1 << 24) - 1;
/// MTUs: from the IPv4 minimum every host must accept to the IPv4 maximum.
const MTUS: RangeInclusive<u32> = 576..=65535;

/// A key whose value breaks a rule, and the message saying so.
struct Invalid {
    path: KeyPath,
    message: String,
}

type Check = Result<(), Invalid>;

/// Checks every rule the schema's types cannot express. Returns `Err` with the first
/// broken rule: per-key rules in schema order first, then rules across keys.
pub(crate) fn validate(config: &Config, doc: &Document<'_>) -> Result<(), ConfigError> {
    check(config, doc).map_err(|invalid| doc.error(&invalid.path, invalid.message))
}

fn check(config: &Config, doc: &Document<'_>) -> Check {
    check_keys(config)?;
    check_subnets_inside_cluster(config, doc)?;
    check_subnets_disjoint(config, doc)?;
    check_names_unique(config, doc)?;
    check_addresses_unique(config, doc)
}

/// The rules about one key at a time.
fn check_keys(config: &Config) -> Check {
    check_node(&config.node)?;
    network_address(
        &KeyPath::root().key("cluster").key("cidr"),
        config.cluster.cidr,
    )?;
    check_bridge(&config.bridge)?;
    check_tunnel(&config.tunnel)?;
    check_daemon(&config.daemon)?;
    for (i, peer) in config.peers.iter().enumerate() {
        check_peer(&KeyPath::root().key("peer").index(i), peer)?;
    }
    Ok(())
}

fn check_node(node: &Node) -> Check {
    let path = KeyPath::root().key("node");
    dns_label(&path.key("name"), &node.name)?;
    if let Some(interface) = &node.underlay_interface {
        interface_name(&path.key("underlay_interface"), interface)?;
    }
    if let Some(address) = node.underlay_address {
        host_address(&path.key("underlay_address"), address)?;
    }
    if let Some(address) = node.advertise_address {
        host_address(&path.key("advertise_address"), address)?;
    }
    pod_subnet(&path.key("pod_subnet"), node.pod_subnet)?;
    if let Some(mac) = node.vtep_mac {
        vtep_mac(&path.key("vtep_mac"), mac)?;
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

/// Every configured pod subnet with its key: this node's first, then the peers' in order.
fn pod_subnets(config: &Config) -> Vec<(KeyPath, Ipv4Net)> {
    let node = (
        KeyPath::root().key("node").key("pod_subnet"),
        config.node.pod_subnet,
    );
    let peers = config.peers.iter().enumerate().map(|(i, peer)| {
        (
            KeyPath::root().key("peer").index(i).key("pod_subnet"),
            peer.pod_subnet,
        )
    });
    std::iter::once(node).chain(peers).collect()
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b) || b.contains(&a)
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

/// An address a node can be reached at on the underlay.
fn host_address(path: &KeyPath, address: Ipv4Addr) -> Check {
    let problem = if address.is_unspecified() {
        "is the unspecified address"
    } else if address.is_loopback() {
        "is a loopback address"
    } else if address.is_multicast() {
        "is a multicast address"
    } else if address.is_broadcast() {
        "is the broadcast address"
    } else {
        return Ok(());
    };
    Err(problem_with(path, &address.to_string(), problem))
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
