//! From the cluster view to the kernel routes this node should have, and from the routes
//! it has to the changes that make them so. The shell reads routes over netlink, calls
//! [`plan`] and [`reconcile`], and carries out the returned [`RouteOp`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::path::PathKind;
use crate::peer::PeerInfo;

mod admission;
pub mod liveness;

pub use admission::{LocalView, RejectReason, Rejected, admit};

/// How packets reach one peer's pod subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerPath {
    /// A kernel route via the peer's underlay address; packets never reach the daemon.
    HostGw,
    /// A kernel route into the TUN device; the daemon sends VXLAN over UDP.
    Udp,
    /// A kernel route into the TUN device; the daemon sends the packets as QUIC datagrams.
    Quic,
    /// A kernel route into the TUN device; the daemon sends VXLAN over UDP to the pair's
    /// relay, addressed to the peer's VTEP MAC, and the relay forwards it to the peer.
    Relay,
}

impl PeerPath {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerPath::HostGw => "host-gw",
            PeerPath::Udp => "udp",
            PeerPath::Quic => "quic",
            PeerPath::Relay => "relay",
        }
    }

    /// How the daemon carries a ladder rung (every rung has its path). Whether the relay
    /// may be a candidate for a pair is the daemon's question ([`PeerPath::carried_in`]).
    pub fn carrying(kind: PathKind) -> Option<PeerPath> {
        match kind {
            PathKind::HostGw => Some(PeerPath::HostGw),
            PathKind::Udp => Some(PeerPath::Udp),
            PathKind::Quic => Some(PeerPath::Quic),
            PathKind::Relay => Some(PeerPath::Relay),
        }
    }

    /// The policy's candidates the daemon carries for a pair, in ladder order: all of
    /// them, except the relay for a pair that requires encryption. The relay's hops are
    /// VXLAN over UDP (cleartext); end-to-end or hop-by-hop QUIC through a relay is not
    /// built, so such a pair is never relayed rather than relayed in clear.
    pub fn carried_in(candidates: &[PathKind], require_encryption: bool) -> Vec<PathKind> {
        candidates
            .iter()
            .copied()
            .filter(|k| PeerPath::carrying(*k).is_some())
            .filter(|k| !(require_encryption && *k == PathKind::Relay))
            .collect()
    }

    /// A peer's first path, before any probe: the first of the policy's candidates
    /// ([`crate::path::Resolved::candidates`], ladder order) that the daemon carries.
    /// `None` when none is: the peer gets no route and the cluster CIDR's blackhole drops
    /// its traffic, so a pair that requires encryption is never sent in clear while QUIC
    /// is missing.
    pub fn first_carried(candidates: &[PathKind]) -> Option<PeerPath> {
        candidates.iter().copied().find_map(PeerPath::carrying)
    }
}

/// What the kernel says about reaching a peer's underlay address (`ip route get`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnderlayLookup {
    /// The gateway of the route the kernel picked; `None` when the peer is on-link.
    pub gateway: Option<Ipv4Addr>,
    /// The interface that route leaves through.
    pub oif: u32,
}

/// Picks a peer's path: host-gw iff it is enabled, the peer's underlay address is
/// on-link (the kernel's route to it has no gateway, as Flannel's DirectRouting decides)
/// and that route leaves through the underlay interface; the tunnel otherwise.
pub fn choose_path(host_gw_enabled: bool, lookup: UnderlayLookup, underlay_oif: u32) -> PeerPath {
    if host_gw_enabled && lookup.gateway.is_none() && lookup.oif == underlay_oif {
        PeerPath::HostGw
    } else {
        PeerPath::Udp
    }
}

/// The kind of a route the daemon owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Unicast,
    /// Drops silently-unknown destinations inside the cluster CIDR instead of letting
    /// them follow the default route out of the node un-encapsulated.
    Blackhole,
    /// The destination is this node's own (`local VIP/32 dev lo` in the local table): a
    /// Service VIP, which the proxy serves on every node. A route rather than an address,
    /// so nothing else (ARP, source selection, `ip addr`) sees it.
    Local,
}

/// A route in the main table (the local table for [`RouteKind::Local`]), as far as the
/// daemon cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelRoute {
    pub dst: Ipv4Net,
    pub kind: RouteKind,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub pref_src: Option<Ipv4Addr>,
    /// The route's `mtu` metric: set on a tunnel route whose path is narrower than the
    /// tunnel device, so the node answers oversized DF packets with ICMP "fragmentation
    /// needed" naming the path's MTU and fragments the others before the tunnel.
    pub mtu: Option<u32>,
}

/// Everything [`plan`] needs about this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalRouting {
    pub cluster_cidr: Ipv4Net,
    /// Source address for packets this node itself sends into the tunnel: the bridge
    /// gateway, which lies in our pod subnet, so replies come back through the tunnel.
    pub tunnel_src: Ipv4Addr,
    pub tunnel_oif: u32,
    pub underlay_oif: u32,
    /// The loopback interface, which local routes name.
    pub loopback_oif: u32,
}

/// The routes this node should have, sorted by destination: the cluster CIDR's
/// blackhole, a route to each peer's pod subnet, and a local route for each Service VIP
/// (`vips`). A tunnel route carries the `mtu` that `path_mtus` gives for the peer's
/// underlay address (the inner path MTU where it is below the tunnel device's); a host-gw
/// route never does (the kernel runs path MTU discovery on it itself).
pub fn plan(
    local: &LocalRouting,
    peers: &[(PeerInfo, PeerPath)],
    vips: &BTreeSet<Ipv4Addr>,
    path_mtus: &BTreeMap<Ipv4Addr, u32>,
) -> Vec<KernelRoute> {
    let mut routes = vec![KernelRoute {
        dst: local.cluster_cidr,
        kind: RouteKind::Blackhole,
        gateway: None,
        oif: None,
        pref_src: None,
        mtu: None,
    }];
    routes.extend(vips.iter().map(|vip| KernelRoute {
        dst: Ipv4Net::from(*vip),
        kind: RouteKind::Local,
        gateway: None,
        oif: Some(local.loopback_oif),
        pref_src: None,
        mtu: None,
    }));
    routes.extend(peers.iter().map(|(peer, path)| match path {
        PeerPath::HostGw => KernelRoute {
            dst: peer.pod_subnet,
            kind: RouteKind::Unicast,
            gateway: Some(peer.underlay),
            oif: Some(local.underlay_oif),
            pref_src: None,
            mtu: None,
        },
        PeerPath::Udp | PeerPath::Quic | PeerPath::Relay => KernelRoute {
            dst: peer.pod_subnet,
            kind: RouteKind::Unicast,
            gateway: None,
            oif: Some(local.tunnel_oif),
            pref_src: Some(local.tunnel_src),
            mtu: path_mtus.get(&peer.underlay).copied(),
        },
    }));
    routes.sort();
    routes
}

/// One change to the kernel's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOp {
    Add(KernelRoute),
    /// A route to the same destination exists with other attributes.
    Replace(KernelRoute),
    Delete(KernelRoute),
}

/// The changes that turn `current` (the routes tagged as ours) into `desired`.
/// Adds and replaces come before deletes, so traffic never loses a route it keeps.
pub fn reconcile(desired: &[KernelRoute], current: &[KernelRoute]) -> Vec<RouteOp> {
    let current: BTreeMap<Ipv4Net, &KernelRoute> = current.iter().map(|r| (r.dst, r)).collect();
    let desired_map: BTreeMap<Ipv4Net, &KernelRoute> = desired.iter().map(|r| (r.dst, r)).collect();
    let mut ops = Vec::new();
    for (dst, want) in &desired_map {
        match current.get(dst) {
            None => ops.push(RouteOp::Add(**want)),
            Some(have) if have != want => ops.push(RouteOp::Replace(**want)),
            Some(_) => {}
        }
    }
    for (dst, have) in &current {
        if !desired_map.contains_key(dst) {
            ops.push(RouteOp::Delete(**have));
        }
    }
    ops
}

/// The peers to route to at a start that follows another process (a hand-over, or a stop
/// moments ago): the peer source's, plus those `handed` over that it does not name yet —
/// while `adopting` (the routes found at start are still held, gossip may not have told
/// of every member yet). Afterwards the source alone.
pub fn with_handed(mut peers: Vec<PeerInfo>, handed: &[PeerInfo], adopting: bool) -> Vec<PeerInfo> {
    if !adopting {
        return peers;
    }
    let missing: Vec<PeerInfo> = handed
        .iter()
        .filter(|h| !peers.iter().any(|p| p.name == h.name))
        .cloned()
        .collect();
    peers.extend(missing);
    peers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MacAddr;
    use proptest::prelude::*;

    /// Handed-over peers fill in for gossip while adopting; gossip's own record of a peer
    /// wins (it may have moved), and after the adoption they are gone.
    #[test]
    fn handed_peers_fill_in_until_gossip_names_them_and_only_while_adopting() {
        let handed = [
            peer("n2", [10, 100, 1, 12], 2),
            peer("n3", [10, 100, 2, 11], 3),
        ];
        assert_eq!(with_handed(Vec::new(), &handed, true), handed.to_vec());
        let moved = peer("n2", [10, 100, 1, 99], 2);
        assert_eq!(
            with_handed(vec![moved.clone()], &handed, true),
            vec![moved.clone(), handed[1].clone()]
        );
        assert_eq!(
            with_handed(vec![moved.clone()], &handed, false),
            vec![moved]
        );
    }

    fn peer(name: &str, underlay: [u8; 4], third: u8) -> PeerInfo {
        PeerInfo {
            name: name.into(),
            underlay: Ipv4Addr::from(underlay),
            pod_subnet: Ipv4Net::new(Ipv4Addr::new(10, 244, third, 0), 24).unwrap(),
            vtep_mac: MacAddr::vtep_for_node(name),
            zone: String::new(),
            quic_port: None,
            cert_fingerprint: None,
            relay: false,
        }
    }

    fn local() -> LocalRouting {
        LocalRouting {
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            tunnel_src: Ipv4Addr::new(10, 244, 1, 1),
            tunnel_oif: 7,
            underlay_oif: 2,
            loopback_oif: 1,
        }
    }

    #[test]
    fn on_link_peers_get_host_gw_others_the_tunnel() {
        let on_link = UnderlayLookup {
            gateway: None,
            oif: 2,
        };
        let routed = UnderlayLookup {
            gateway: Some(Ipv4Addr::new(10, 100, 1, 1)),
            oif: 2,
        };
        assert_eq!(choose_path(true, on_link, 2), PeerPath::HostGw);
        assert_eq!(choose_path(true, routed, 2), PeerPath::Udp);
        assert_eq!(choose_path(false, on_link, 2), PeerPath::Udp);
        // On-link, but through some other interface than the underlay: not ours to use.
        assert_eq!(
            choose_path(
                true,
                UnderlayLookup {
                    gateway: None,
                    oif: 9
                },
                2
            ),
            PeerPath::Udp
        );
    }

    #[test]
    fn the_first_carried_candidate_is_the_path_and_an_encrypted_pair_is_never_relayed() {
        use PathKind::*;
        assert_eq!(
            PeerPath::first_carried(&[HostGw, Udp, Quic]),
            Some(PeerPath::HostGw)
        );
        assert_eq!(
            PeerPath::first_carried(&[Quic, Relay]),
            Some(PeerPath::Quic)
        );
        assert_eq!(
            PeerPath::first_carried(&[Relay, Udp]),
            Some(PeerPath::Relay)
        );
        assert_eq!(PeerPath::first_carried(&[]), None);
        assert_eq!(PeerPath::carrying(Relay), Some(PeerPath::Relay));
        // The relay's hops are cleartext VXLAN: an encryption-required pair without QUIC
        // gets no path at all, never a relayed one.
        assert_eq!(
            PeerPath::carried_in(&[Udp, Quic, Relay], false),
            [Udp, Quic, Relay]
        );
        assert_eq!(PeerPath::carried_in(&[Quic, Relay], true), [Quic]);
        assert!(PeerPath::carried_in(&[Relay], true).is_empty());
    }

    #[test]
    fn plan_has_blackhole_host_gw_and_tunnel_routes() {
        let routes = plan(
            &local(),
            &[
                (peer("n2", [10, 100, 1, 12], 2), PeerPath::HostGw),
                (peer("n3", [10, 100, 2, 11], 3), PeerPath::Udp),
            ],
            &BTreeSet::new(),
            &BTreeMap::new(),
        );
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[0].kind, RouteKind::Blackhole);
        assert_eq!(routes[0].dst.to_string(), "10.244.0.0/16");
        assert_eq!(routes[1].gateway, Some(Ipv4Addr::new(10, 100, 1, 12)));
        assert_eq!(routes[1].oif, Some(2));
        assert_eq!(routes[2].oif, Some(7));
        assert_eq!(routes[2].pref_src, Some(Ipv4Addr::new(10, 244, 1, 1)));
    }

    #[test]
    fn a_narrow_path_puts_its_mtu_on_the_tunnel_route_only() {
        let peers = [
            (peer("n2", [10, 100, 1, 12], 2), PeerPath::HostGw),
            (peer("n3", [10, 100, 2, 11], 3), PeerPath::Udp),
            (peer("n4", [10, 100, 2, 12], 4), PeerPath::Udp),
        ];
        let mtus = BTreeMap::from([
            (Ipv4Addr::new(10, 100, 1, 12), 1350),
            (Ipv4Addr::new(10, 100, 2, 11), 1350),
        ]);

        let routes = plan(&local(), &peers, &BTreeSet::new(), &mtus);

        let mtu_of = |third: u8| {
            routes
                .iter()
                .find(|r| r.dst.network() == Ipv4Addr::new(10, 244, third, 0))
                .map(|r| r.mtu)
        };
        assert_eq!(mtu_of(2), Some(None), "host-gw: the kernel's own PMTU");
        assert_eq!(mtu_of(3), Some(Some(1350)));
        assert_eq!(mtu_of(4), Some(None), "a full-size path needs none");
        // A path MTU that changes is one replace of that route.
        let before = plan(&local(), &peers, &BTreeSet::new(), &BTreeMap::new());
        let ops = reconcile(&routes, &before);
        assert_eq!(ops.len(), 1);
        assert!(matches!(ops[0], RouteOp::Replace(r) if r.mtu == Some(1350)));
    }

    #[test]
    fn a_relayed_peer_gets_a_tunnel_route_with_its_relays_mtu() {
        let relayed = peer("n3", [10, 100, 2, 11], 3);
        let mtus = BTreeMap::from([(relayed.underlay, 1350)]);
        let routes = plan(
            &local(),
            &[(relayed, PeerPath::Relay)],
            &BTreeSet::new(),
            &mtus,
        );
        assert_eq!(routes[1].oif, Some(7), "into the TUN device");
        assert_eq!(routes[1].gateway, None);
        assert_eq!(routes[1].pref_src, Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(routes[1].mtu, Some(1350));
        assert_eq!(PeerPath::Relay.as_str(), "relay");
    }

    #[test]
    fn every_vip_is_made_local_on_loopback() {
        let vips: BTreeSet<Ipv4Addr> =
            ["10.96.0.10".parse().unwrap(), "10.96.7.1".parse().unwrap()]
                .into_iter()
                .collect();

        let routes = plan(&local(), &[], &vips, &BTreeMap::new());

        let local_routes: Vec<String> = routes
            .iter()
            .filter(|r| r.kind == RouteKind::Local)
            .map(|r| format!("{} {:?}", r.dst, r.oif))
            .collect();
        assert_eq!(
            local_routes,
            ["10.96.0.10/32 Some(1)", "10.96.7.1/32 Some(1)"]
        );
        assert!(
            !plan(&local(), &[], &BTreeSet::new(), &BTreeMap::new())
                .iter()
                .any(|r| r.kind == RouteKind::Local)
        );
    }

    #[test]
    fn reconcile_adds_replaces_and_deletes_stale() {
        let before = plan(
            &local(),
            &[
                (peer("n2", [10, 100, 1, 12], 2), PeerPath::HostGw),
                (peer("n3", [10, 100, 2, 11], 3), PeerPath::Udp),
            ],
            &BTreeSet::new(),
            &BTreeMap::new(),
        );
        // n2 moved behind a router; n3 died; n4 joined.
        let after = plan(
            &local(),
            &[
                (peer("n2", [10, 100, 1, 12], 2), PeerPath::Udp),
                (peer("n4", [10, 100, 2, 12], 4), PeerPath::Udp),
            ],
            &BTreeSet::new(),
            &BTreeMap::new(),
        );
        let ops = reconcile(&after, &before);
        assert_eq!(
            ops,
            vec![
                RouteOp::Replace(after[1]),
                RouteOp::Add(after[2]),
                RouteOp::Delete(before[2]),
            ]
        );
        assert!(reconcile(&after, &after).is_empty());
    }

    proptest! {
        /// Applying the ops to `current` always yields exactly `desired`.
        #[test]
        fn reconcile_converges(
            want in proptest::collection::btree_map(0u8..16, (any::<bool>(), 1u8..4), 0..10),
            have in proptest::collection::btree_map(0u8..16, (any::<bool>(), 1u8..4), 0..10),
        ) {
            let route = |third: u8, (udp, gw): (bool, u8)| KernelRoute {
                dst: Ipv4Net::new(Ipv4Addr::new(10, 244, third, 0), 24).unwrap(),
                kind: RouteKind::Unicast,
                gateway: (!udp).then(|| Ipv4Addr::new(10, 100, 1, gw)),
                oif: Some(if udp { 7 } else { 2 }),
                pref_src: None,
                mtu: (udp && gw == 3).then_some(1350),
            };
            let desired: Vec<_> = want.iter().map(|(k, v)| route(*k, *v)).collect();
            let current: Vec<_> = have.iter().map(|(k, v)| route(*k, *v)).collect();
            let mut state: BTreeMap<Ipv4Net, KernelRoute> = current.iter().map(|r| (r.dst, *r)).collect();
            for op in reconcile(&desired, &current) {
                match op {
                    RouteOp::Add(r) => { prop_assert!(state.insert(r.dst, r).is_none()); }
                    RouteOp::Replace(r) => { prop_assert!(state.insert(r.dst, r).is_some()); }
                    RouteOp::Delete(r) => { prop_assert!(state.remove(&r.dst).is_some()); }
                }
            }
            let result: Vec<_> = state.into_values().collect();
            prop_assert_eq!(result, desired);
        }
    }
}
