//! The kernel references of the data-path bench: two reference "pods" (namespaces) behind
//! two lab nodes, plumbed like overlayd's pods (a veth to a bridge on the node that holds
//! the gateway address, the same pod MTU), connected either by plain kernel routes or by a
//! Linux vxlan device pair (as Flannel's vxlan backend does it: onlink route via the peer's
//! VTEP address, permanent neighbour, FDB entry; the same MTU as overlayd's TUN device).
//!
//! Reference `k` uses addresses outside the cluster CIDR: pods in 10.254.(10k+1).0/24 and
//! 10.254.(10k+2).0/24, VTEPs 10.254.(10k).1 and .2; VNI 4240+k on UDP port 4790 (overlayd
//! keeps VNI 1 and 8472); devices `ovbb{k}` (bridge), `ovbv{k}` (veth), `ovbx{k}` (vxlan)
//! on the nodes; namespaces `NODE_NETNS-ref{k}`, which start with the lab's prefix, so
//! `lab down` removes them too. Dropping a [`Reference`] removes all of it, best effort,
//! also when the bench fails half-way.

use std::net::Ipv4Addr;

use crate::lab::{LabError, Node};
use crate::netns;

const REF_PORT: &str = "4790";

/// How the two reference pods are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Kernel routes: `peer_pod_subnet via peer_underlay` on one segment (host-gw), or via
    /// the router (with routes for both pod subnets in the router namespace) across it.
    Routes,
    /// A kernel vxlan device on each node.
    Vxlan,
}

/// One side of a reference: a node and the reference pod behind it.
#[derive(Debug, Clone)]
struct Side {
    node_ns: String,
    underlay: Ipv4Addr,
    /// The node's segment: (router address on it, segment name).
    router_addr: Ipv4Addr,
    segment: String,
    pod_ns: String,
}

/// A built reference; removed when dropped.
#[derive(Debug)]
pub(super) struct Reference {
    id: u8,
    kind: Kind,
    sides: [Side; 2],
    router_ns: String,
    routed: bool,
}

/// MTUs the reference copies from overlayd's node (`overlayd status`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Mtus {
    pub(super) pod: u32,
    pub(super) tunnel: u32,
}

impl Reference {
    /// Builds reference `id` (1..=24) of `kind` between nodes `a` and `b` of the lab whose
    /// router namespace is `router_ns`. On failure whatever was built is removed.
    pub(super) fn build(
        id: u8,
        kind: Kind,
        a: &Node<'_>,
        b: &Node<'_>,
        router_ns: &str,
        mtus: Mtus,
    ) -> Result<Reference, LabError> {
        assert!((1..=24).contains(&id), "reference ids are 1..=24");
        let side = |n: &Node<'_>| Side {
            node_ns: n.netns(),
            underlay: n.underlay(),
            router_addr: n.segment().router_address(),
            segment: n.segment().name.clone(),
            pod_ns: format!("{}-ref{id}", n.netns()),
        };
        let sides = [side(a), side(b)];
        let me = Reference {
            id,
            kind,
            routed: sides[0].segment != sides[1].segment,
            sides,
            router_ns: router_ns.into(),
        };
        // On failure `me` is dropped here, which removes what was built.
        me.plumb(mtus)?;
        Ok(me)
    }

    /// The client's namespace (the reference pod behind the first node).
    pub(super) fn src_ns(&self) -> &str {
        &self.sides[0].pod_ns
    }

    /// The server's namespace (the reference pod behind the second node).
    pub(super) fn dst_ns(&self) -> &str {
        &self.sides[1].pod_ns
    }

    /// The address of the reference pod behind the second node.
    pub(super) fn dst_ip(&self) -> Ipv4Addr {
        self.pod_ip(2)
    }

    fn net(&self, third: u32) -> String {
        format!("10.254.{}", u32::from(self.id) * 10 + third)
    }

    /// The pod subnet of side `i` (1 or 2).
    fn pod_subnet(&self, i: u32) -> String {
        format!("{}.0/24", self.net(i))
    }

    fn gateway(&self, i: u32) -> String {
        format!("{}.1", self.net(i))
    }

    fn pod_ip(&self, i: u32) -> Ipv4Addr {
        format!("{}.2", self.net(i))
            .parse()
            .expect("reference addresses are valid")
    }

    fn vtep(&self, i: u32) -> String {
        format!("{}.{i}", self.net(0))
    }

    fn mac(&self, i: u32) -> String {
        format!("0e:00:00:fe:{:02x}:{i:02x}", self.id)
    }

    fn plumb(&self, mtus: Mtus) -> Result<(), LabError> {
        let bridge = format!("ovbb{}", self.id);
        let veth = format!("ovbv{}", self.id);
        let pod_mtu = mtus.pod.to_string();
        for (index, side) in self.sides.iter().enumerate() {
            let i = index as u32 + 1;
            let other = 3 - i;
            let peer = &self.sides[2 - i as usize];
            let n = |args: &[&str]| netns::run_in(&side.node_ns, args).map(drop);
            // The pod, on a bridge like overlayd's pods.
            netns::add(&side.pod_ns)?;
            n(&["ip", "link", "add", &bridge, "type", "bridge"])?;
            n(&["ip", "link", "set", &bridge, "mtu", &pod_mtu, "up"])?;
            n(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", self.gateway(i)),
                "dev",
                &bridge,
            ])?;
            n(&[
                "ip",
                "link",
                "add",
                &veth,
                "mtu",
                &pod_mtu,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "mtu",
                &pod_mtu,
                "netns",
                &side.pod_ns,
            ])?;
            n(&["ip", "link", "set", &veth, "master", &bridge, "up"])?;
            let p = |args: &[&str]| netns::run_in(&side.pod_ns, args).map(drop);
            p(&["ip", "link", "set", "lo", "up"])?;
            p(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", self.pod_ip(i)),
                "dev",
                "eth0",
            ])?;
            p(&["ip", "link", "set", "eth0", "up"])?;
            p(&["ip", "route", "add", "default", "via", &self.gateway(i)])?;
            // The way to the other side.
            match self.kind {
                Kind::Routes => {
                    let via = if self.routed {
                        side.router_addr
                    } else {
                        peer.underlay
                    };
                    n(&[
                        "ip",
                        "route",
                        "add",
                        &self.pod_subnet(other),
                        "via",
                        &via.to_string(),
                        "dev",
                        "eth0",
                    ])?;
                    if self.routed {
                        netns::run_in(
                            &self.router_ns,
                            &[
                                "ip",
                                "route",
                                "add",
                                &self.pod_subnet(i),
                                "via",
                                &side.underlay.to_string(),
                            ],
                        )?;
                    }
                }
                Kind::Vxlan => self.plumb_vxlan(side, peer, i, mtus.tunnel)?,
            }
        }
        Ok(())
    }

    fn plumb_vxlan(&self, side: &Side, peer: &Side, i: u32, mtu: u32) -> Result<(), LabError> {
        let other = 3 - i;
        let dev = format!("ovbx{}", self.id);
        let n = |args: &[&str]| netns::run_in(&side.node_ns, args).map(drop);
        n(&[
            "ip",
            "link",
            "add",
            &dev,
            "type",
            "vxlan",
            "id",
            &(4240 + u32::from(self.id)).to_string(),
            "local",
            &side.underlay.to_string(),
            "dev",
            "eth0",
            "dstport",
            REF_PORT,
            "nolearning",
        ])?;
        n(&[
            "ip",
            "link",
            "set",
            &dev,
            "address",
            &self.mac(i),
            "mtu",
            &mtu.to_string(),
            "up",
        ])?;
        n(&[
            "ip",
            "addr",
            "add",
            &format!("{}/32", self.vtep(i)),
            "dev",
            &dev,
        ])?;
        n(&[
            "ip",
            "neigh",
            "replace",
            &self.vtep(other),
            "lladdr",
            &self.mac(other),
            "dev",
            &dev,
            "nud",
            "permanent",
        ])?;
        n(&[
            "bridge",
            "fdb",
            "append",
            &self.mac(other),
            "dev",
            &dev,
            "dst",
            &peer.underlay.to_string(),
        ])?;
        n(&[
            "ip",
            "route",
            "add",
            &self.pod_subnet(other),
            "via",
            &self.vtep(other),
            "dev",
            &dev,
            "onlink",
        ])?;
        Ok(())
    }

    /// Removes the devices, routes and namespaces; best effort, idempotent.
    fn remove(&self) {
        for (index, side) in self.sides.iter().enumerate() {
            let i = index as u32 + 1;
            let n = |args: &[&str]| {
                let _ = netns::run_in(&side.node_ns, args);
            };
            n(&["ip", "link", "del", &format!("ovbx{}", self.id)]);
            n(&["ip", "link", "del", &format!("ovbv{}", self.id)]);
            n(&["ip", "link", "del", &format!("ovbb{}", self.id)]);
            n(&["ip", "route", "del", &self.pod_subnet(3 - i)]);
            if self.kind == Kind::Routes && self.routed {
                let _ = netns::run_in(
                    &self.router_ns,
                    &["ip", "route", "del", &self.pod_subnet(i)],
                );
            }
            if netns::exists(&side.pod_ns) {
                let _ = netns::delete(&side.pod_ns);
            }
        }
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        self.remove();
    }
}
