//! Which peers the data path may use. A peer's pod subnet turns into kernel routes on
//! every node, so a wrong one (a typo in a static peer, a member of another cluster CIDR,
//! a buggy or hostile key holder) could capture host traffic or loop the tunnel into
//! itself. Every node applies the same rules to the same peer set in name order, so all
//! pick the same winner when two peers collide.

use crate::overlaps;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::peer::PeerInfo;

/// Why a peer is left out of the routes and the forwarding table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// Its pod subnet is not inside the cluster CIDR.
    OutsideCluster,
    /// Its pod subnet overlaps ours.
    OverlapsLocal,
    /// Its pod subnet overlaps that of the named peer, which comes first by name.
    OverlapsPeer(String),
    /// Its underlay address lies inside the cluster CIDR: tunnel packets to it would be
    /// routed into the tunnel again.
    UnderlayInCluster,
    /// Its underlay address is ours.
    UnderlayIsLocal,
    /// The named peer, first by name, has the same underlay address.
    DuplicateUnderlay(String),
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectReason::OutsideCluster => write!(f, "pod subnet outside the cluster CIDR"),
            RejectReason::OverlapsLocal => write!(f, "pod subnet overlaps ours"),
            RejectReason::OverlapsPeer(p) => write!(f, "pod subnet overlaps that of {p}"),
            RejectReason::UnderlayInCluster => {
                write!(f, "underlay address inside the cluster CIDR")
            }
            RejectReason::UnderlayIsLocal => write!(f, "underlay address is ours"),
            RejectReason::DuplicateUnderlay(p) => write!(f, "same underlay address as {p}"),
        }
    }
}

/// A peer left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub peer: PeerInfo,
    pub reason: RejectReason,
}

/// What this node is, for [`admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalView {
    pub cluster_cidr: Ipv4Net,
    pub pod_subnet: Ipv4Net,
    pub underlay: Ipv4Addr,
}

/// Splits `peers` into those the data path may use (sorted by name) and those it must not.
/// A peer is admitted iff its pod subnet lies inside the cluster CIDR and overlaps neither
/// ours nor an admitted peer's, and its underlay address is outside the cluster CIDR, not
/// ours, and not an admitted peer's. Conflicts go to the peer first by name.
pub fn admit(local: &LocalView, peers: &[PeerInfo]) -> (Vec<PeerInfo>, Vec<Rejected>) {
    let mut sorted: Vec<&PeerInfo> = peers.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut admitted: Vec<PeerInfo> = Vec::with_capacity(peers.len());
    let mut rejected = Vec::new();
    for peer in sorted {
        match check(local, &admitted, peer) {
            Ok(()) => admitted.push(peer.clone()),
            Err(reason) => rejected.push(Rejected {
                peer: peer.clone(),
                reason,
            }),
        }
    }
    (admitted, rejected)
}

fn check(local: &LocalView, admitted: &[PeerInfo], peer: &PeerInfo) -> Result<(), RejectReason> {
    let subnet = peer.pod_subnet;
    if !local.cluster_cidr.contains(&subnet) {
        return Err(RejectReason::OutsideCluster);
    }
    if overlaps(subnet, local.pod_subnet) {
        return Err(RejectReason::OverlapsLocal);
    }
    if local.cluster_cidr.contains(&peer.underlay) {
        return Err(RejectReason::UnderlayInCluster);
    }
    if peer.underlay == local.underlay {
        return Err(RejectReason::UnderlayIsLocal);
    }
    if let Some(other) = admitted.iter().find(|o| overlaps(o.pod_subnet, subnet)) {
        return Err(RejectReason::OverlapsPeer(other.name.clone()));
    }
    if let Some(other) = admitted.iter().find(|o| o.underlay == peer.underlay) {
        return Err(RejectReason::DuplicateUnderlay(other.name.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MacAddr;
    use proptest::prelude::*;

    fn peer(name: &str, underlay: &str, subnet: &str) -> PeerInfo {
        PeerInfo {
            name: name.into(),
            underlay: underlay.parse().unwrap(),
            pod_subnet: subnet.parse().unwrap(),
            vtep_mac: MacAddr::vtep_for_node(name),
            zone: String::new(),
            quic_port: None,
            cert_fingerprint: None,
            relay: false,
        }
    }

    fn local() -> LocalView {
        LocalView {
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            pod_subnet: "10.244.1.0/24".parse().unwrap(),
            underlay: "10.100.1.11".parse().unwrap(),
        }
    }

    #[test]
    fn each_bad_peer_is_rejected_with_its_reason() {
        let peers = [
            peer("ok", "10.100.1.12", "10.244.2.0/24"),
            peer("wide", "10.100.1.13", "128.0.0.0/1"),
            peer("mine", "10.100.1.14", "10.244.1.128/25"),
            peer("loop", "10.244.9.1", "10.244.9.0/24"),
            peer("me", "10.100.1.11", "10.244.3.0/24"),
            peer("over", "10.100.1.15", "10.244.2.0/23"),
            peer("twin", "10.100.1.12", "10.244.4.0/24"),
        ];
        let (admitted, rejected) = admit(&local(), &peers);
        assert_eq!(
            admitted.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["ok"]
        );
        let reasons: Vec<_> = rejected
            .iter()
            .map(|r| (r.peer.name.as_str(), r.reason.clone()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("loop", RejectReason::UnderlayInCluster),
                ("me", RejectReason::UnderlayIsLocal),
                ("mine", RejectReason::OverlapsLocal),
                ("over", RejectReason::OverlapsPeer("ok".into())),
                ("twin", RejectReason::DuplicateUnderlay("ok".into())),
                ("wide", RejectReason::OutsideCluster),
            ]
        );
    }

    proptest! {
        /// Whatever the input, admitted subnets are inside the cluster, pairwise disjoint
        /// and disjoint from ours, underlays are distinct and outside the cluster, and the
        /// result does not depend on the order peers arrive in.
        #[test]
        fn admitted_peers_are_consistent_and_order_independent(
            raw in proptest::collection::vec((0u8..8, 0u8..6, 14u8..26, any::<bool>()), 0..12),
            seed in any::<u64>(),
        ) {
            let peers: Vec<PeerInfo> = raw.iter().enumerate().map(|(i, (u, third, len, inside))| {
                let base = if *inside { Ipv4Addr::new(10, 244, *third, 0) } else { Ipv4Addr::new(10, 99, *third, 0) };
                let subnet = Ipv4Net::new(base, *len).unwrap().trunc();
                let underlay = if *u == 7 { Ipv4Addr::new(10, 244, 5, 5) } else { Ipv4Addr::new(10, 100, 1, *u) };
                PeerInfo { name: format!("p{i:02}"), underlay, pod_subnet: subnet, vtep_mac: MacAddr::vtep_for_node("x"), zone: String::new(), quic_port: None, cert_fingerprint: None, relay: false }
            }).collect();
            let (admitted, rejected) = admit(&local(), &peers);
            prop_assert_eq!(admitted.len() + rejected.len(), peers.len());
            let l = local();
            for (i, a) in admitted.iter().enumerate() {
                prop_assert!(l.cluster_cidr.contains(&a.pod_subnet));
                prop_assert!(!overlaps(a.pod_subnet, l.pod_subnet));
                prop_assert!(!l.cluster_cidr.contains(&a.underlay));
                for b in &admitted[i + 1..] {
                    prop_assert!(!overlaps(a.pod_subnet, b.pod_subnet));
                    prop_assert_ne!(a.underlay, b.underlay);
                }
            }
            let mut shuffled = peers.clone();
            let n = shuffled.len();
            if n > 1 {
                shuffled.rotate_left((seed as usize) % n);
            }
            prop_assert_eq!(admit(&l, &shuffled).0, admitted);
        }
    }
}
