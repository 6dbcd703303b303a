//! The daemon's nftables table, `ip overlayd`, as a pure plan: [`Ruleset`] holds what the
//! table is made from and [`Ruleset::script`] is the `nft -f -` script that replaces it in
//! one transaction (the shell runs it, as kube-proxy's nftables mode runs knftables'):
//! replacing the table is atomic and touches no other table.
//!
//! - Source NAT for pods reaching beyond the cluster (Flannel's ipMasq).
//! - A guard that keeps pods away from the nodes' tunnel and gossip ports. With masquerade
//!   a pod's packet to a peer's tunnel port leaves with this node's underlay address as its
//!   source, which the peer trusts as this node's VTEP; the pod could then inject frames
//!   "from" any address of this node's pod subnet. So pods may not send to the tunnel or
//!   gossip port of any node (the peers' addresses are a set kept in step with the peer
//!   set; this node's own ports are guarded on input).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The nftables table the daemon owns (`nft list table ip overlayd`).
pub const TABLE: &str = "overlayd";

/// Everything the table is made from; the daemon reinstalls it when this changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub pods: Ipv4Net,
    pub cluster: Ipv4Net,
    pub masquerade: bool,
    pub tunnel_port: u16,
    pub gossip_port: Option<u16>,
    /// The QUIC tunnel port, with `[quic]`.
    pub quic_port: Option<u16>,
    /// Underlay addresses of the peers.
    pub nodes: BTreeSet<Ipv4Addr>,
}

impl Ruleset {
    /// The `nft -f` script that replaces our table with this ruleset.
    pub fn script(&self) -> String {
        let Ruleset {
            pods,
            cluster,
            tunnel_port,
            ..
        } = self;
        let mut ports = vec![format!("udp dport {tunnel_port}")];
        if let Some(g) = self.gossip_port {
            ports.push(format!("meta l4proto {{ tcp, udp }} th dport {g}"));
        }
        if let Some(q) = self.quic_port {
            ports.push(format!("udp dport {q}"));
        }
        let elements = if self.nodes.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = self.nodes.iter().map(Ipv4Addr::to_string).collect();
            format!("\t\telements = {{ {} }}\n", list.join(", "))
        };
        let mut out = format!(
            "add table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n\
             \tset nodes {{\n\t\ttype ipv4_addr\n{elements}\t}}\n\
             \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n"
        );
        for port in &ports {
            out.push_str(&format!(
                "\t\tip saddr {pods} ip daddr @nodes {port} drop comment \"overlayd: pods may not reach peers' tunnel or gossip port\"\n"
            ));
        }
        out.push_str(
            "\t}\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n",
        );
        for port in &ports {
            out.push_str(&format!(
                "\t\tip saddr {pods} {port} drop comment \"overlayd: pods may not reach this node's tunnel or gossip port\"\n"
            ));
        }
        out.push_str("\t}\n");
        if self.masquerade {
            out.push_str(&format!(
                "\tchain postrouting {{\n\
                 \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
                 \t\tip saddr {pods} ip daddr != {cluster} masquerade comment \"overlayd: pods leaving the cluster\"\n\
                 \t}}\n"
            ));
        }
        out.push_str("}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ruleset(masquerade: bool, nodes: &[&str]) -> Ruleset {
        Ruleset {
            pods: "10.244.1.0/24".parse().unwrap(),
            cluster: "10.244.0.0/16".parse().unwrap(),
            masquerade,
            tunnel_port: 8472,
            gossip_port: Some(7946),
            quic_port: Some(8473),
            nodes: nodes.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn masquerades_only_traffic_leaving_the_cluster() {
        let script = ruleset(true, &[]).script();
        assert!(script.starts_with("add table ip overlayd\ndelete table ip overlayd\n"));
        assert!(script.contains("ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 masquerade"));
        assert!(!ruleset(false, &[]).script().contains("masquerade"));
    }

    #[test]
    fn guards_tunnel_and_gossip_ports_of_every_node() {
        let script = ruleset(true, &["10.100.2.11", "10.100.1.12"]).script();
        assert!(
            script.contains("elements = { 10.100.1.12, 10.100.2.11 }"),
            "{script}"
        );
        assert!(script.contains("ip saddr 10.244.1.0/24 ip daddr @nodes udp dport 8472 drop"));
        assert!(script.contains(
            "ip saddr 10.244.1.0/24 ip daddr @nodes meta l4proto { tcp, udp } th dport 7946 drop"
        ));
        assert!(script.contains("ip saddr 10.244.1.0/24 udp dport 8472 drop"));
        assert!(script.contains("ip saddr 10.244.1.0/24 ip daddr @nodes udp dport 8473 drop"));
        assert!(script.contains("ip saddr 10.244.1.0/24 udp dport 8473 drop"));
    }
}
