//! Node config generation: one `overlayd.toml` per daemon node of a lab.
//!
//! Everything a node learns about the others comes from [`node_config`]: with gossip, the
//! seed to join through and the static peers that do not gossip; without, every other
//! node as a static peer.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use overlayd_config::ConfigError;
use overlayd_config::schema::{Config, Daemon, DnsUpstream, Gossip, Node, Peer, Quic};
use overlayd_proto::path::PairView;
use overlayd_proto::routing::PeerPath;

use crate::lab::run_dir;
use crate::topology::{NodeSpec, Topology};

/// Where one node's files live inside the lab's run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    /// `RUN/NODE.toml`
    pub config: PathBuf,
    /// `RUN/NODE/`: the daemon's `state_dir`.
    pub state_dir: PathBuf,
    /// `RUN/NODE/overlayd.sock`
    pub socket: PathBuf,
    /// `RUN/NODE.log`: the daemon's stdout and stderr.
    pub log: PathBuf,
    /// `RUN/NODE.pid`
    pub pid: PathBuf,
}

impl NodePaths {
    pub fn new(run_dir: &Path, node: &str) -> NodePaths {
        let state_dir = run_dir.join(node);
        NodePaths {
            config: run_dir.join(format!("{node}.toml")),
            socket: state_dir.join("overlayd.sock"),
            state_dir,
            log: run_dir.join(format!("{node}.log")),
            pid: run_dir.join(format!("{node}.pid")),
        }
    }
}

/// `RUN/pki/`: the lab's cluster CA (`ca.pem`, `ca.key`, made by `overlayd ca init`) and
/// the certificate and key of every node with `[quic]` (`NODE.pem`, `NODE.key`, made by
/// `overlayd cert issue`).
pub fn pki_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("pki")
}

/// `[quic]` of `node`: the default port and the files of the lab's PKI ([`pki_dir`]).
pub fn quic_section(run_dir: &Path, node: &str) -> Quic {
    let pki = pki_dir(run_dir);
    Quic {
        port: Quic::DEFAULT_PORT,
        ca: pki.join("ca.pem"),
        cert: pki.join(format!("{node}.pem")),
        key: pki.join(format!("{node}.key")),
    }
}

/// `RUN/gossip.key`: the one gossip key every node of the lab shares.
pub fn gossip_key_path(run_dir: &Path) -> PathBuf {
    run_dir.join("gossip.key")
}

/// The Service CIDR of lab nodes, unless the topology's `[config.cluster]` says otherwise.
pub const LAB_SERVICE_CIDR: &str = "10.96.0.0/16";

/// The config of daemon node `node` in lab `lab`: its own identity and paths under
/// [`run_dir`]`(lab)`, how it finds the others, the topology's `[config]` table
/// deep-merged on top, and then the node's own `config` table.
///
/// With gossip: `[gossip]` with the key file [`gossip_key_path`], the seed's underlay
/// address as the only seed (none for the seed itself), `cluster.name = "lab-LAB"`, and
/// static peers only for the nodes with `daemon = false`; `node.pod_subnet` is `None`
/// unless the topology fixes it. Without gossip: every other node as a static peer.
///
/// `node.zone` is the node's zone (its segment's unless it names one); a node with `quic`
/// gets `[quic]` ([`quic_section`]).
///
/// Returns `Err` iff the result does not pass the daemon's config checks (an unknown
/// `[config]` key, a wrong type, values that do not fit together).
pub fn node_config(topology: &Topology, node: &NodeSpec, lab: &str) -> Result<Config, ConfigError> {
    let run_dir = run_dir(lab);
    let paths = NodePaths::new(&run_dir, &node.name);
    let mut config = Config {
        node: Node {
            name: node.name.clone(),
            zone: node.zone.clone(),
            underlay_interface: Some("eth0".into()),
            underlay_address: Some(node.underlay),
            advertise_address: None,
            pod_subnet: node.pod_subnet,
            vtep_mac: node.vtep_mac,
        },
        cluster: Default::default(),
        bridge: Default::default(),
        tunnel: Default::default(),
        nat: Default::default(),
        daemon: Daemon {
            state_dir: paths.state_dir,
            control_socket: paths.socket,
            ..Default::default()
        },
        gossip: gossip(topology, node, &run_dir),
        peers: static_peers(topology, &node.name),
        services: Default::default(),
        dns: Default::default(),
        service_specs: Vec::new(),
        quic: node.quic.then(|| quic_section(&run_dir, &node.name)),
        path: Default::default(),
    };
    config.cluster.cidr = topology.cluster_cidr();
    // Kubernetes' default 10.96.0.0/12 runs to 10.111.255.255 and holds the lab's segments
    // (10.100.x.0/24): a VIP allocated on a node's address would take it on every node.
    config.cluster.service_cidr = LAB_SERVICE_CIDR
        .parse()
        .expect("the lab's Service CIDR is a CIDR");
    // Names outside the cluster go to the lab's stand-in in the router, never to the
    // host's own resolvers.
    let segment = topology.segment(&node.segment);
    config.dns.upstream = segment
        .map(|s| DnsUpstream(SocketAddrV4::new(s.router_address(), 53)))
        .into_iter()
        .collect();
    if topology.gossip() {
        config.cluster.name = format!("lab-{lab}");
    }
    let file = paths.config.display().to_string();
    merge_overrides(config, &[topology.config(), &node.config], &file)
}

/// `[gossip]`: join through the seed (unless this is the seed) with the lab's key.
fn gossip(topology: &Topology, node: &NodeSpec, run_dir: &Path) -> Option<Gossip> {
    let seed = topology.seed()?;
    let seeds = if seed.name == node.name {
        Vec::new()
    } else {
        vec![seed.underlay.to_string()]
    };
    Some(Gossip {
        bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, Gossip::DEFAULT_PORT),
        advertise: None,
        seeds,
        key_files: vec![gossip_key_path(run_dir)],
        profile: Default::default(),
        timing: Default::default(),
    })
}

/// The nodes `me` knows statically: without gossip every other node, with gossip only
/// those that do not gossip (`daemon = false`).
fn static_peers(topology: &Topology, me: &str) -> Vec<Peer> {
    topology
        .nodes()
        .iter()
        .filter(|n| n.name != me && (!topology.gossip() || !n.daemon))
        .filter_map(|n| {
            // Never `None` here: the topology fixes the subnet of every node that does
            // not claim one.
            let pod_subnet = n.pod_subnet?;
            Some(Peer {
                name: n.name.clone(),
                underlay_address: n.underlay,
                pod_subnet,
                vtep_mac: n.vtep_mac,
            })
        })
        .collect()
}

/// The path `from`'s daemon gives its peer `to` under the `[path]` policy of `from`'s
/// config (`None`: no allowed path it can carry, so it gives `to` no route and does not
/// list it in `overlayd peers`), as the daemon decides it before any probing: on-link
/// means the same segment with host-gw on at `from`; QUIC needs `[quic]` at both ends (a
/// `daemon = false` node has none, and no zone: the daemon counts it in its own).
pub fn policy_path(
    topology: &Topology,
    from: &NodeSpec,
    to: &NodeSpec,
    lab: &str,
) -> Result<Option<PeerPath>, ConfigError> {
    let config = node_config(topology, from, lab)?;
    let on_link = from.segment == to.segment && config.tunnel.host_gw;
    let resolved = config.path.resolve(PairView {
        local_zone: &config.node.zone,
        peer_zone: if to.daemon {
            &to.zone
        } else {
            &config.node.zone
        },
        peer_name: &to.name,
        on_link,
        quic: config.quic.is_some() && to.daemon && to.quic,
    });
    Ok(PeerPath::first_carried(&PeerPath::carried_in(
        &resolved.candidates,
        resolved.require_encryption,
    )))
}

/// `config` with `overrides` deep-merged into it in order (later ones win), checked as the daemon checks its file
/// (`file` names it in errors).
fn merge_overrides(
    config: Config,
    overrides: &[&toml::Table],
    file: &str,
) -> Result<Config, ConfigError> {
    let mut table =
        toml::Table::try_from(&config).expect("a Config always serializes to a TOML table");
    for over in overrides {
        deep_merge(&mut table, over);
    }
    let text = toml::to_string(&table).expect("a TOML table always serializes");
    overlayd_config::parse(&text, file)
}

/// Tables merge key by key; any other value in `over` replaces the one in `base`.
fn deep_merge(base: &mut toml::Table, over: &toml::Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => deep_merge(b, o),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::DEFAULT_TOPOLOGY;

    fn config_of(topo: &Topology, node: &str) -> Config {
        node_config(topo, topo.node(node).unwrap(), "x").unwrap()
    }

    #[test]
    fn without_gossip_every_other_node_is_a_static_peer() {
        let topo = Topology::parse(&format!("gossip = false\n{DEFAULT_TOPOLOGY}")).unwrap();

        let config = config_of(&topo, "n1");

        assert_eq!(config.node.name, "n1");
        assert_eq!(config.node.underlay_interface.as_deref(), Some("eth0"));
        assert_eq!(
            config.node.underlay_address.unwrap().to_string(),
            "10.100.1.11"
        );
        assert_eq!(config.node.pod_subnet.unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(
            config.daemon.control_socket,
            Path::new("/run/overlayd-lab/x/n1/overlayd.sock")
        );
        assert_eq!(config.daemon.state_dir, Path::new("/run/overlayd-lab/x/n1"));
        assert_eq!(config.gossip, None);
        assert_eq!(config.cluster.name, "overlayd");
        let peers: Vec<_> = config
            .peers
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.underlay_address.to_string(),
                    p.pod_subnet.to_string(),
                )
            })
            .collect();
        assert_eq!(
            peers,
            [
                ("n2", "10.100.1.12".into(), "10.244.2.0/24".into()),
                ("n3", "10.100.2.11".into(), "10.244.3.0/24".into()),
                ("n4", "10.100.2.12".into(), "10.244.4.0/24".into())
            ]
        );
    }

    #[test]
    fn with_gossip_nodes_claim_subnets_and_join_through_the_seed() {
        let topo = Topology::default();

        let seed = config_of(&topo, "n1");
        let other = config_of(&topo, "n3");

        for config in [&seed, &other] {
            let gossip = config.gossip.as_ref().unwrap();
            assert_eq!(config.node.pod_subnet, None, "{}", config.node.name);
            assert!(config.peers.is_empty(), "{:?}", config.peers);
            assert_eq!(config.cluster.name, "lab-x");
            assert_eq!(
                gossip.key_files,
                [PathBuf::from("/run/overlayd-lab/x/gossip.key")]
            );
            assert_eq!(gossip.bind.to_string(), "0.0.0.0:7946");
        }
        assert!(
            seed.gossip.unwrap().seeds.is_empty(),
            "the seed joins no one"
        );
        assert_eq!(other.gossip.unwrap().seeds, ["10.100.1.11"]);
    }

    #[test]
    fn with_gossip_only_daemonless_nodes_are_static_peers() {
        let topo = Topology::parse(
            r#"
            seed = "n2"
            [[segment]]
            name = "a"
            subnet = "10.100.1.0/24"
            [[node]]
            name = "n1"
            segment = "a"
            pod_subnet = "10.244.50.0/24"
            [[node]]
            name = "n2"
            segment = "a"
            [[node]]
            name = "k"
            segment = "a"
            daemon = false
            vtep_mac = "0e:00:00:00:00:07"
            "#,
        )
        .unwrap();

        let n1 = config_of(&topo, "n1");
        let n2 = config_of(&topo, "n2");

        assert_eq!(
            n1.node.pod_subnet.unwrap().to_string(),
            "10.244.50.0/24",
            "a fixed subnet stays fixed"
        );
        assert_eq!(n2.node.pod_subnet, None);
        assert_eq!(n1.gossip.as_ref().unwrap().seeds, ["10.100.1.12"]);
        assert!(n2.gossip.as_ref().unwrap().seeds.is_empty());
        for config in [&n1, &n2] {
            let peers: Vec<_> = config
                .peers
                .iter()
                .map(|p| (p.name.as_str(), p.pod_subnet.to_string()))
                .collect();
            assert_eq!(peers, [("k", "10.244.3.0/24".to_string())]);
            assert_eq!(
                config.peers[0].vtep_mac.unwrap().to_string(),
                "0e:00:00:00:00:07"
            );
        }
    }

    #[test]
    fn config_table_is_deep_merged_and_round_trips_through_toml() {
        let topo = Topology::parse(
            r#"
            [[segment]]
            name = "a"
            subnet = "10.100.1.0/24"
            [[node]]
            name = "n1"
            segment = "a"
            [[node]]
            name = "n2"
            segment = "a"
            [config.tunnel]
            host_gw = false
            port = 4789
            [config.daemon]
            on_exit = "remove"
            [config.gossip.timing]
            probe_interval_ms = 200
            "#,
        )
        .unwrap();

        let config = config_of(&topo, "n2");
        let text = toml::to_string(&config).unwrap();
        let back = overlayd_config::parse(&text, "n2.toml").unwrap();

        assert!(!config.tunnel.host_gw);
        assert_eq!(config.tunnel.port, 4789);
        assert_eq!(config.tunnel.vni, 1, "untouched keys keep their defaults");
        assert_eq!(
            config.daemon.on_exit,
            overlayd_config::schema::OnExit::Remove
        );
        assert_eq!(
            config.daemon.control_socket,
            Path::new("/run/overlayd-lab/x/n2/overlayd.sock")
        );
        let gossip = config.gossip.as_ref().unwrap();
        assert_eq!(gossip.timing.probe_interval_ms, Some(200));
        assert_eq!(
            gossip.seeds,
            ["10.100.1.11"],
            "merged next to the lab's keys"
        );
        assert_eq!(back, config);
    }

    #[test]
    fn nodes_get_their_segments_zone_and_the_labs_quic_files() {
        let topo = Topology::parse(crate::topology::REMOTE_ZONE_TOPOLOGY).unwrap();

        let n1 = config_of(&topo, "n1");
        let n5 = config_of(&topo, "n5");

        assert_eq!(
            (n1.node.zone.as_str(), n5.node.zone.as_str()),
            ("default", "remote")
        );
        let quic = n5.quic.clone().expect("quic = true gives [quic]");
        assert_eq!(quic.port, 8473);
        assert_eq!(quic.ca, Path::new("/run/overlayd-lab/x/pki/ca.pem"));
        assert_eq!(quic.cert, Path::new("/run/overlayd-lab/x/pki/n5.pem"));
        assert_eq!(quic.key, Path::new("/run/overlayd-lab/x/pki/n5.key"));
        assert_eq!(
            n1.quic.unwrap().cert,
            Path::new("/run/overlayd-lab/x/pki/n1.pem")
        );
        assert_eq!(
            config_of(&Topology::default(), "n1").quic,
            None,
            "no [quic] unless the topology asks"
        );
        let text = toml::to_string(&n5).unwrap();
        assert_eq!(overlayd_config::parse(&text, "n5.toml").unwrap(), n5);
    }

    #[test]
    fn policy_paths_follow_segments_zones_quic_and_path_rules() {
        let topo = Topology::parse(crate::topology::REMOTE_ZONE_TOPOLOGY).unwrap();
        let path = |topo: &Topology, a: &str, b: &str| {
            policy_path(topo, topo.node(a).unwrap(), topo.node(b).unwrap(), "x").unwrap()
        };
        assert_eq!(path(&topo, "n1", "n2"), Some(PeerPath::HostGw));
        assert_eq!(path(&topo, "n1", "n3"), Some(PeerPath::Udp));
        assert_eq!(path(&topo, "n1", "n5"), Some(PeerPath::Quic));
        assert_eq!(path(&topo, "n6", "n4"), Some(PeerPath::Quic));
        assert_eq!(path(&topo, "n5", "n6"), Some(PeerPath::HostGw));

        let strict = Topology::parse(&format!(
            "quic = true\n{}[[segment]]\nname = \"c\"\nsubnet = \"10.100.3.0/24\"\nzone = \"remote\"\n\
             [[node]]\nname = \"n1\"\nsegment = \"a\"\n\
             [[node]]\nname = \"n2\"\nsegment = \"c\"\n\
             [[node]]\nname = \"n3\"\nsegment = \"c\"\nquic = false\n\
             [[config.path.zone_pairs]]\nzones = [\"default\", \"remote\"]\nrequire_encryption = true\n",
            crate::topology::TWO_SEGMENTS
        ))
        .unwrap();
        assert_eq!(path(&strict, "n1", "n2"), Some(PeerPath::Quic));
        assert_eq!(
            path(&strict, "n1", "n3"),
            None,
            "encryption required, n3 has no QUIC"
        );
        assert_eq!(path(&strict, "n3", "n1"), None);
        assert_eq!(path(&strict, "n2", "n3"), Some(PeerPath::HostGw));
    }

    #[test]
    fn a_quic_port_in_config_is_merged_into_the_labs_quic() {
        let topo = Topology::parse(&format!(
            "quic = true\n{}[[node]]\nname = \"n1\"\nsegment = \"a\"\n[config.quic]\nport = 9443\n",
            crate::topology::TWO_SEGMENTS
        ))
        .unwrap();
        let quic = config_of(&topo, "n1").quic.unwrap();
        assert_eq!(quic.port, 9443);
        assert_eq!(quic.key, Path::new("/run/overlayd-lab/x/pki/n1.key"));
    }

    #[test]
    fn a_nodes_own_config_is_merged_after_the_topologys_and_only_into_it() {
        let topo = Topology::parse(
            r#"
            [[segment]]
            name = "a"
            subnet = "10.100.1.0/24"
            [[node]]
            name = "n1"
            segment = "a"
            [[node]]
            name = "n2"
            segment = "a"
            [node.config.tunnel]
            host_gw = false
            [config.tunnel]
            port = 4789
            host_gw = true
            "#,
        )
        .unwrap();

        let n1 = config_of(&topo, "n1");
        let n2 = config_of(&topo, "n2");

        assert!(n1.tunnel.host_gw);
        assert!(!n2.tunnel.host_gw, "the node's table wins over [config]");
        assert_eq!((n1.tunnel.port, n2.tunnel.port), (4789, 4789));
    }
}
