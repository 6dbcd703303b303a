//! Node config generation: one `overlayd.toml` per daemon node of a lab.
//!
//! Everything a node learns about the others comes from [`node_config`]; when gossip
//! replaces static peers, only that function changes.

use std::path::{Path, PathBuf};

use overlayd_config::schema::{Config, Daemon, Node, Peer};

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

/// The config of `node`: its own identity and paths, every other node of the topology as
/// a static peer, and the topology's `[config]` table deep-merged on top.
///
/// Returns `Err` iff the merged table is not a valid [`Config`] (unknown key, wrong type).
pub fn node_config(
    topology: &Topology,
    node: &NodeSpec,
    run_dir: &Path,
) -> Result<Config, toml::de::Error> {
    let paths = NodePaths::new(run_dir, &node.name);
    let mut config = Config {
        node: Node {
            name: node.name.clone(),
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
        peers: static_peers(topology, &node.name),
    };
    config.cluster.cidr = topology.cluster_cidr();
    merge_overrides(config, topology.config())
}

fn static_peers(topology: &Topology, me: &str) -> Vec<Peer> {
    topology
        .nodes()
        .iter()
        .filter(|n| n.name != me)
        .map(|n| Peer {
            name: n.name.clone(),
            underlay_address: n.underlay,
            pod_subnet: n.pod_subnet,
            vtep_mac: n.vtep_mac,
        })
        .collect()
}

fn merge_overrides(config: Config, overrides: &toml::Table) -> Result<Config, toml::de::Error> {
    if overrides.is_empty() {
        return Ok(config);
    }
    let mut table =
        toml::Table::try_from(&config).expect("a Config always serializes to a TOML table");
    deep_merge(&mut table, overrides);
    toml::Value::Table(table).try_into()
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

    #[test]
    fn node_config_lists_every_other_node_as_peer() {
        let topo = Topology::default();
        let n1 = topo.node("n1").unwrap();

        let config = node_config(&topo, n1, Path::new("/run/overlayd-lab/x")).unwrap();

        assert_eq!(config.node.name, "n1");
        assert_eq!(config.node.underlay_interface.as_deref(), Some("eth0"));
        assert_eq!(
            config.node.underlay_address.unwrap().to_string(),
            "10.100.1.11"
        );
        assert_eq!(config.node.pod_subnet.to_string(), "10.244.1.0/24");
        assert_eq!(
            config.daemon.control_socket,
            Path::new("/run/overlayd-lab/x/n1/overlayd.sock")
        );
        assert_eq!(config.daemon.state_dir, Path::new("/run/overlayd-lab/x/n1"));
        let peers: Vec<_> = config
            .peers
            .iter()
            .map(|p| (p.name.as_str(), p.underlay_address.to_string()))
            .collect();
        assert_eq!(
            peers,
            [
                ("n2", "10.100.1.12".into()),
                ("n3", "10.100.2.11".into()),
                ("n4", "10.100.2.12".into())
            ]
        );
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
            name = "k"
            segment = "a"
            daemon = false
            vtep_mac = "0e:00:00:00:00:07"
            [config.tunnel]
            host_gw = false
            port = 4789
            [config.daemon]
            on_exit = "keep"
            "#,
        )
        .unwrap();

        let config = node_config(&topo, topo.node("n1").unwrap(), Path::new("/r")).unwrap();
        let text = toml::to_string(&config).unwrap();
        let back: Config = toml::from_str(&text).unwrap();

        assert!(!config.tunnel.host_gw);
        assert_eq!(config.tunnel.port, 4789);
        assert_eq!(config.tunnel.vni, 1, "untouched keys keep their defaults");
        assert_eq!(config.daemon.on_exit, overlayd_config::schema::OnExit::Keep);
        assert_eq!(
            config.daemon.control_socket,
            Path::new("/r/n1/overlayd.sock")
        );
        assert_eq!(
            config.peers[0].vtep_mac.unwrap().to_string(),
            "0e:00:00:00:00:07"
        );
        assert_eq!(back, config);
    }
}
