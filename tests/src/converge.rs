//! Convergence: the lab is ready for pods when every running daemon's data path knows
//! every other running daemon node (with the pod subnet that node reports) and every
//! static peer. With gossip that takes longer than each daemon's own `ready`.

use overlayd_proto::overlaps;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::client::PeerReport;
use crate::config::policy_path;
use crate::lab::{Lab, LabError, Node, POLL_INTERVAL};

/// A node whose data path must list `name` with `subnet`.
struct Expected<'a> {
    node: Node<'a>,
    subnet: Ipv4Net,
}

/// Why the lab has not converged yet: which node lacks what.
struct Gap<'a> {
    node: Node<'a>,
    /// How many nodes it lacks; `usize::MAX` when it cannot even be asked.
    missing: usize,
    reason: String,
}

impl Lab {
    /// Waits until every running daemon node serves the same Services, each Service that
    /// selects pods by label with exactly the lab's pods that carry those labels as its
    /// endpoints (pods of nodes whose daemon runs). Without gossip every node has Services
    /// of its own with its own pods only. `Err` naming a node that lacks them if that does
    /// not happen within `timeout`.
    pub fn wait_services(&self, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        let running: Vec<Node<'_>> = self
            .nodes()
            .filter(|n| n.spec().daemon && n.pid().is_some())
            .collect();
        loop {
            let mut gap = None;
            let mut first = None;
            for &node in &running {
                let services = match self.service_list(node.name()) {
                    Ok(s) => s,
                    Err(e) => {
                        gap = Some((node, e.to_string()));
                        break;
                    }
                };
                let pods_of = if self.topology().gossip() {
                    running.clone()
                } else {
                    vec![node]
                };
                if let Some(why) = self.endpoint_gap(&pods_of, &services) {
                    gap = Some((node, why));
                    break;
                }
                if !self.topology().gossip() {
                    continue;
                }
                match &first {
                    None => first = Some(services),
                    Some(f) if *f != services => {
                        gap = Some((node, "its Services differ from the first node's".into()));
                        break;
                    }
                    Some(_) => {}
                }
            }
            let Some((node, why)) = gap else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(node.not_ready(format!(
                    "the Services have not converged after {timeout:?}: {why}"
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Why `services` lack endpoints the lab's pods should give them, if they do.
    fn endpoint_gap(
        &self,
        running: &[Node<'_>],
        services: &[crate::client::ServiceInfo],
    ) -> Option<String> {
        for info in services {
            let selector = &info.spec.selector;
            if selector.is_empty() || !info.service.is_active() {
                continue;
            }
            let mut want: Vec<std::net::Ipv4Addr> = running
                .iter()
                .filter(|n| {
                    selector
                        .iter()
                        .all(|(k, v)| n.spec().pod_labels.get(k) == Some(v))
                })
                .flat_map(|n| n.pods().iter().map(|p| p.ip))
                .collect();
            want.sort();
            let mut have: Vec<std::net::Ipv4Addr> =
                info.service.endpoints.iter().map(|e| e.ip).collect();
            have.sort();
            if have != want {
                return Some(format!(
                    "Service {} has endpoints {have:?}, expected {want:?}",
                    info.service.key
                ));
            }
        }
        None
    }

    /// Waits until every daemon node that runs now lists, in `overlayd peers --json`,
    /// every other one with the pod subnet that node's `overlayd status` reports, and
    /// every `daemon = false` node. Pairs of nodes on segments cut apart by
    /// [`Lab::partition`] need not know each other, nor need a node list a peer its
    /// `[path]` policy allows no path to that it can carry ([`crate::config::policy_path`]:
    /// say, encryption required and one of the two without `[quic]`): the daemon gives
    /// such a peer no route and leaves it out of `overlayd peers`.
    ///
    /// Returns `Err` if that does not happen within `timeout`, naming the node whose view
    /// lacks the most (with what it lacks and its log) and the others still incomplete; at
    /// once if one of those daemons exits, or if a claimed subnet overlaps a static
    /// peer's (no daemon resolves that).
    pub fn wait_converged(&self, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        let running: Vec<Node<'_>> = self
            .nodes()
            .filter(|n| n.spec().daemon && n.pid().is_some())
            .collect();
        // The cut cannot change while we wait: read it once, not on every poll.
        let cut = self.partitions()?;
        let pathless = self.pathless_pairs();
        loop {
            if let Some(gone) = running.iter().find(|n| n.pid().is_none()) {
                return Err(gone.not_ready("its daemon exited while the lab converged".into()));
            }
            let gaps = self.convergence_gaps(&running, &cut, &pathless)?;
            if gaps.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(not_converged(gaps, timeout));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The nodes of `running` whose view is still incomplete, in topology order.
    fn convergence_gaps<'a>(
        &'a self,
        running: &[Node<'a>],
        cut: &[(String, String)],
        pathless: &HashSet<(String, String)>,
    ) -> Result<Vec<Gap<'a>>, LabError> {
        let mut gaps = Vec::new();
        let mut expected = Vec::new();
        for &node in running {
            match self.status(node.name()) {
                Ok(status) => expected.push(Expected {
                    node,
                    subnet: status.pod_subnet,
                }),
                Err(e) => gaps.push(Gap {
                    node,
                    missing: usize::MAX,
                    reason: e.to_string(),
                }),
            }
        }
        let statics: Vec<Expected<'a>> = self
            .nodes()
            .filter(|n| !n.spec().daemon)
            .filter_map(|node| {
                let subnet = node.spec().pod_subnet?;
                Some(Expected { node, subnet })
            })
            .collect();
        check_claims_against_static_peers(&expected, &statics)?;
        for e in &expected {
            let node = e.node;
            let peers = match self.peers(node.name()) {
                Ok(peers) => peers,
                Err(e) => {
                    gaps.push(Gap {
                        node,
                        missing: usize::MAX,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let apart = |other: &Node<'_>| {
                let (a, b) = (&node.spec().segment, &other.spec().segment);
                cut.iter()
                    .any(|(x, y)| (x == a && y == b) || (x == b && y == a))
            };
            let missing: Vec<String> = expected
                .iter()
                .chain(&statics)
                .filter(|e| e.node.name() != node.name() && !apart(&e.node))
                .filter(|e| !pathless.contains(&(node.name().into(), e.node.name().into())))
                .filter(|e| !lists(&peers, e.node.name(), e.subnet))
                .map(|e| format!("{} ({})", e.node.name(), e.subnet))
                .collect();
            if !missing.is_empty() {
                let listed: Vec<String> = peers
                    .iter()
                    .map(|p| format!("{} ({})", p.name, p.pod_subnet))
                    .collect();
                gaps.push(Gap {
                    node,
                    missing: missing.len(),
                    reason: format!(
                        "`overlayd peers` on {} lacks {}; it lists [{}]",
                        node.name(),
                        missing.join(", "),
                        listed.join(", ")
                    ),
                });
            }
        }
        Ok(gaps)
    }
}

impl Lab {
    /// `(from, to)` for every daemon node `from` whose policy gives node `to` no path.
    pub(crate) fn pathless_pairs(&self) -> HashSet<(String, String)> {
        let topology = self.topology();
        let nodes = topology.nodes();
        let mut pairs = HashSet::new();
        for from in nodes.iter().filter(|n| n.daemon) {
            for to in nodes.iter().filter(|n| n.name != from.name) {
                // A config error cannot happen here: the topology checked every config.
                if let Ok(None) = policy_path(topology, from, to, self.name()) {
                    pairs.insert((from.name.clone(), to.name.clone()));
                }
            }
        }
        pairs
    }
}

/// The error for a lab still not converged: about the node that lacks the most (the
/// first of those), naming the others that lack something too. `gaps` is not empty.
fn not_converged(gaps: Vec<Gap<'_>>, timeout: Duration) -> LabError {
    let worst = gaps
        .iter()
        .enumerate()
        .max_by_key(|(i, g)| (g.missing, std::cmp::Reverse(*i)))
        .map_or(0, |(i, _)| i);
    let others: Vec<&str> = gaps
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != worst)
        .map(|(_, g)| g.node.name())
        .collect();
    let gap = &gaps[worst];
    let also = if others.is_empty() {
        String::new()
    } else {
        format!(" (the views of {} are incomplete too)", others.join(", "))
    };
    gap.node.not_ready(format!(
        "the lab has not converged after {} s: {}{also}",
        timeout.as_secs(),
        gap.reason
    ))
}

/// Whether `peers` has `name` with pod subnet `subnet`.
fn lists(peers: &[PeerReport], name: &str, subnet: Ipv4Net) -> bool {
    peers
        .iter()
        .any(|p| p.name == name && p.pod_subnet == subnet)
}

/// Daemons do not count static peers' subnets as taken when they claim one, and ignore
/// a peer whose subnet overlaps their own: such a lab never converges, so say why now.
fn check_claims_against_static_peers(
    claimed: &[Expected<'_>],
    statics: &[Expected<'_>],
) -> Result<(), LabError> {
    for c in claimed
        .iter()
        .filter(|c| c.node.spec().pod_subnet.is_none())
    {
        if let Some(s) = statics.iter().find(|s| overlaps(c.subnet, s.subnet)) {
            return Err(c.node.not_ready(format!(
                "it claimed pod subnet {}, which overlaps {} of static peer {} (daemon = false); \
                 set pod_subnet for {} or for {} in the topology",
                c.subnet,
                s.subnet,
                s.node.name(),
                s.node.name(),
                c.node.name()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn peer(name: &str, subnet: &str) -> PeerReport {
        PeerReport {
            name: name.into(),
            underlay: Ipv4Addr::new(10, 0, 0, 1),
            pod_subnet: subnet.parse().unwrap(),
            path: "udp".into(),
            route_error: None,
            vtep_mac: "02:00:00:00:00:01".into(),
            path_mtu: None,
            inner_mtu: None,
            path_mtu_source: None,
            tx_packets: 0,
            tx_bytes: 0,
            rx_packets: 0,
            rx_bytes: 0,
            drops: 0,
            quic: None,
            ladder: None,
            daemon_down: false,
            cert_fingerprint: None,
        }
    }

    #[test]
    fn a_peer_counts_only_with_the_subnet_its_node_reports() {
        let peers = [peer("n2", "10.244.7.0/24")];
        let subnet = |s: &str| s.parse::<Ipv4Net>().unwrap();

        assert!(lists(&peers, "n2", subnet("10.244.7.0/24")));
        assert!(!lists(&peers, "n2", subnet("10.244.8.0/24")), "stale claim");
        assert!(!lists(&peers, "n3", subnet("10.244.7.0/24")));
    }
}
