use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::Range;

use ipnet::Ipv4Net;

use crate::peer::PeerInfo;
use crate::wire::probe::ProbeMessage;
use crate::wire::vxlan::{self, EncapHeader, Frame, FrameError};
use crate::wire::{Ipv4Packet, MacAddr};

/// This node's end of the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalVtep {
    pub vni: u32,
    pub mac: MacAddr,
    pub pod_subnet: Ipv4Net,
}

/// Position of a peer in a [`ForwardingTable`], stable for the table's lifetime; the shell
/// indexes its per-peer counters with it.
pub type PeerIndex = usize;

/// Why a packet was dropped. Every drop is counted under one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Datagram from an address that is not a current peer's underlay address.
    UnknownSender,
    /// Shorter than the VXLAN and inner Ethernet headers.
    Truncated,
    /// VXLAN I flag clear.
    NoVniFlag,
    /// VNI other than ours.
    WrongVni,
    /// Inner Ethernet destination is not our VTEP MAC.
    WrongDstMac,
    /// Inner EtherType is not IPv4 (VXLAN) or the TUN packet is not IPv4 (encap).
    NotIpv4,
    /// The IPv4 header (inner, or of a TUN packet) is malformed or its length disagrees
    /// with the frame: a TUN packet cut short by the read buffer lands here.
    MalformedInner,
    /// Inner destination outside our pod subnet.
    WrongInnerDst,
    /// Inner source outside the sending peer's pod subnet.
    SpoofedSource,
    /// A TUN packet whose destination no peer's pod subnet covers.
    NoRoute,
    /// A path-MTU probe or ack (I flag clear, probe marker) that does not parse.
    MalformedProbe,
    /// A VXLAN datagram from a peer whose pair requires encryption: cleartext the policy
    /// does not allow (or a forgery with its underlay address), never delivered. Also a
    /// frame to relay for a pair where either hop requires encryption.
    NotOverQuic,
    /// A frame from another peer's VTEP MAC (a relayed one) whose sender is not the
    /// relay we use with that peer: a forgery, or a relay we no longer use.
    NotOurRelay,
    /// A frame for another peer's VTEP MAC that we do not relay: not a pair we relay
    /// for, or not from the origin itself (a relay forwards only one hop).
    RelayRefused,
}

impl DropReason {
    pub const ALL: [DropReason; 14] = [
        DropReason::UnknownSender,
        DropReason::Truncated,
        DropReason::NoVniFlag,
        DropReason::WrongVni,
        DropReason::WrongDstMac,
        DropReason::NotIpv4,
        DropReason::MalformedInner,
        DropReason::WrongInnerDst,
        DropReason::SpoofedSource,
        DropReason::NoRoute,
        DropReason::MalformedProbe,
        DropReason::NotOverQuic,
        DropReason::NotOurRelay,
        DropReason::RelayRefused,
    ];

    /// Stable snake_case name, used in counters and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownSender => "unknown_sender",
            DropReason::Truncated => "truncated",
            DropReason::NoVniFlag => "no_vni_flag",
            DropReason::WrongVni => "wrong_vni",
            DropReason::WrongDstMac => "wrong_dst_mac",
            DropReason::NotIpv4 => "not_ipv4",
            DropReason::MalformedInner => "malformed_inner",
            DropReason::WrongInnerDst => "wrong_inner_dst",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NoRoute => "no_route",
            DropReason::MalformedProbe => "malformed_probe",
            DropReason::NotOverQuic => "not_over_quic",
            DropReason::NotOurRelay => "not_our_relay",
            DropReason::RelayRefused => "relay_refused",
        }
    }

    /// Dense index into a per-reason counter array.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Where an encapsulated packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encap {
    pub peer: PeerIndex,
    pub dst: Ipv4Addr,
}

/// A datagram accepted for the TUN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decap {
    pub peer: PeerIndex,
    /// The inner IPv4 packet's bytes within the datagram.
    pub inner: Range<usize>,
}

/// What a datagram received on the tunnel port is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// An inner packet for the TUN device, from `peer` (sent by it, or by its relay).
    Deliver(Decap),
    /// A frame we relay: send the datagram as it is to `dst`, the underlay address of
    /// peer `to` (its origin is `from`, the sender itself).
    Forward {
        from: PeerIndex,
        to: PeerIndex,
        dst: Ipv4Addr,
    },
    /// A relay-rung probe or ack of the path ladder from `peer`, through `via`, the relay
    /// we use with it (an ack to a probe goes back the same way).
    RelayProbe {
        peer: PeerIndex,
        via: PeerIndex,
        msg: ProbeMessage,
    },
    /// A relay-rung probe or ack we can neither forward nor take, for `reason`
    /// (`UnknownSender`, `WrongDstMac`, `NotOurRelay`, `RelayRefused`): a member that
    /// learned of a peer before we did, at start, or a relay that just changed. It is a
    /// probe lost, as on a broken path, and carries no pod traffic: the shell counts it
    /// apart from the drops.
    StrayRelayProbe { reason: DropReason },
}

/// An immutable snapshot of the tunnel peers, built off the hot path whenever peers
/// change and swapped in whole; lookups never lock or allocate.
#[derive(Debug, Clone)]
pub struct ForwardingTable {
    local: LocalVtep,
    peers: Vec<PeerInfo>,
    by_underlay: HashMap<Ipv4Addr, PeerIndex>,
    /// Pod subnets grouped by prefix length, longest first: longest-prefix match is one
    /// hash lookup per distinct prefix length (usually one).
    by_subnet: Vec<(u8, HashMap<u32, PeerIndex>)>,
    by_name: HashMap<String, PeerIndex>,
    /// Per peer: its pod traffic goes over QUIC (the shell sends it there).
    quic: Vec<bool>,
    /// Per peer: the pair requires encryption, so VXLAN from it is refused.
    encrypted_only: Vec<bool>,
    by_mac: HashMap<MacAddr, PeerIndex>,
    /// Per peer: the member we relay its traffic through when the relay rung is chosen
    /// (its frames arriving from that member are accepted as its own).
    relay_via: Vec<Option<PeerIndex>>,
    /// Per peer: where its frames go, its own underlay address or its relay's.
    encap_dst: Vec<Ipv4Addr>,
    /// Per peer: this node may relay its frames (the hop between us may carry them).
    relay_hop: Vec<bool>,
}

impl ForwardingTable {
    pub fn new(local: LocalVtep, peers: Vec<PeerInfo>) -> Self {
        let mut by_underlay = HashMap::with_capacity(peers.len());
        let by_name = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        let quic = vec![false; peers.len()];
        let encrypted_only = vec![false; peers.len()];
        let by_mac = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.vtep_mac, i))
            .collect();
        let encap_dst = peers.iter().map(|p| p.underlay).collect();
        let relay_via = vec![None; peers.len()];
        let relay_via_len = peers.len();
        let mut by_subnet: Vec<(u8, HashMap<u32, PeerIndex>)> = Vec::new();
        for (index, peer) in peers.iter().enumerate() {
            by_underlay.insert(peer.underlay, index);
            let len = peer.pod_subnet.prefix_len();
            let key = u32::from(peer.pod_subnet.network());
            match by_subnet.iter_mut().find(|(l, _)| *l == len) {
                Some((_, map)) => {
                    map.insert(key, index);
                }
                None => by_subnet.push((len, HashMap::from([(key, index)]))),
            }
        }
        by_subnet.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        ForwardingTable {
            local,
            peers,
            by_underlay,
            by_subnet,
            by_name,
            quic,
            encrypted_only,
            by_mac,
            relay_via,
            encap_dst,
            relay_hop: vec![false; relay_via_len],
        }
    }

    /// Each `(peer, relay)`: the member we relay `peer`'s traffic through (the relay rung's
    /// member, whether or not the rung is chosen): frames from `peer`'s VTEP MAC that
    /// `relay` sends us are accepted as `peer`'s, and from no other sender. With
    /// `carried`, `peer`'s frames go to `relay` now (the rung is chosen). Unknown names
    /// and a peer relayed through itself are ignored.
    pub fn with_relays<'a>(
        mut self,
        relays: impl IntoIterator<Item = (&'a str, &'a str, bool)>,
    ) -> Self {
        for (peer, relay, carried) in relays {
            let (Some(&p), Some(&r)) = (self.by_name.get(peer), self.by_name.get(relay)) else {
                continue;
            };
            if p == r {
                continue;
            }
            self.relay_via[p] = Some(r);
            if carried {
                self.encap_dst[p] = self.peers[r].underlay;
            }
        }
        self
    }

    /// The peers whose frames this node may relay (the hop between it and each may carry
    /// them; [`crate::path::RelayPlan::relay_hops`]): a frame from one of them to another's
    /// VTEP MAC is forwarded as it is to the other's underlay address. Which pairs do go
    /// through this node is their ends' choice: each end takes relayed frames only from
    /// the relay it chose.
    pub fn with_relaying<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        mark(&self.by_name, &mut self.relay_hop, names);
        self
    }

    /// The member `peer` is relayed through, if any.
    pub fn relay_of(&self, peer: PeerIndex) -> Option<PeerIndex> {
        self.relay_via.get(peer).copied().flatten()
    }

    /// A relay-rung probe or ack for peer `to` as the ladder sends it: a VXLAN frame from
    /// our VTEP MAC to `to`'s, EtherType [`vxlan::ETHERTYPE_RELAY_PROBE`], written into
    /// `out`. Returns the relay's underlay address (where it goes) and the frame's length;
    /// `None` when `to` is not a peer relayed through some member.
    ///
    /// # Panics
    /// If `out` is shorter than `vxlan::ENCAP_LEN` plus the message.
    pub fn relay_probe(
        &self,
        to: PeerIndex,
        msg: ProbeMessage,
        out: &mut [u8],
    ) -> Option<(Ipv4Addr, usize)> {
        let relay = self.relay_of(to)?;
        EncapHeader {
            vni: self.local.vni,
            inner_src_mac: self.local.mac,
            inner_dst_mac: self.peers[to].vtep_mac,
        }
        .emit_with(out, vxlan::ETHERTYPE_RELAY_PROBE);
        let len = msg.emit(&mut out[vxlan::ENCAP_LEN..]);
        Some((self.peers[relay].underlay, vxlan::ENCAP_LEN + len))
    }

    /// The peer named `name`.
    pub fn peer_named(&self, name: &str) -> Option<PeerIndex> {
        self.by_name.get(name).copied()
    }

    pub fn local(&self) -> &LocalVtep {
        &self.local
    }

    pub fn peers(&self) -> &[PeerInfo] {
        &self.peers
    }

    /// Marks the peers named in `names` as reached over QUIC (all others: VXLAN).
    pub fn with_quic<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        mark(&self.by_name, &mut self.quic, names);
        self
    }

    /// Marks the peers named in `names` as requiring encryption: VXLAN from them is
    /// dropped (`NotOverQuic`). From other peers it is accepted whatever path we send
    /// them on, since the two ends switch paths at slightly different moments.
    pub fn with_encryption_required<'a>(
        mut self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        mark(&self.by_name, &mut self.encrypted_only, names);
        self
    }

    /// Whether `peer`'s pod traffic goes over QUIC.
    pub fn uses_quic(&self, peer: PeerIndex) -> bool {
        self.quic.get(peer).copied().unwrap_or(false)
    }

    /// Decides whether an IPv4 packet that arrived as a QUIC datagram from the member
    /// `name` (the name its certificate proved) goes to the TUN device.
    ///
    /// Returns `Ok` with the peer and the packet's length (trailing bytes beyond the IPv4
    /// total length are not part of it) iff `name` is a peer and the packet is well-formed IPv4 from its pod subnet to ours. A peer whose path is not
    /// QUIC here is accepted too (its certificate proved who sent it, and the two ends
    /// switch paths at slightly different moments).
    pub fn accept_quic(
        &self,
        name: &str,
        packet: &[u8],
    ) -> Result<(PeerIndex, usize), (DropReason, Option<PeerIndex>)> {
        let peer = *self
            .by_name
            .get(name)
            .ok_or((DropReason::UnknownSender, None))?;
        let len = self
            .check_inner(peer, packet)
            .map_err(|r| (r, Some(peer)))?;
        Ok((peer, len))
    }

    /// The checks every inner packet passes, whatever carried it: well-formed IPv4, to our
    /// pod subnet, from `peer`'s. Returns the packet's length.
    fn check_inner(&self, peer: PeerIndex, packet: &[u8]) -> Result<usize, DropReason> {
        let inner = Ipv4Packet::parse(packet).map_err(|_| DropReason::MalformedInner)?;
        if !self.local.pod_subnet.contains(&inner.dst()) {
            return Err(DropReason::WrongInnerDst);
        }
        if !self.peers[peer].pod_subnet.contains(&inner.src()) {
            return Err(DropReason::SpoofedSource);
        }
        Ok(inner.bytes().len())
    }

    /// The peer whose pod subnet holds `addr` (longest prefix wins).
    pub fn peer_for(&self, addr: Ipv4Addr) -> Option<PeerIndex> {
        let addr = u32::from(addr);
        self.by_subnet.iter().find_map(|(len, map)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
            map.get(&(addr & mask)).copied()
        })
    }

    /// Encapsulates the IPv4 packet in `frame[vxlan::ENCAP_LEN..]` (read from the TUN
    /// device) by writing the VXLAN and inner Ethernet headers into `frame[..ENCAP_LEN]`.
    ///
    /// Returns `Err` iff the packet is not IPv4, its header is malformed or claims more
    /// bytes than `frame` holds (a packet cut short by the read buffer), or no peer's pod
    /// subnet covers its destination; `frame` is then unchanged.
    ///
    /// # Panics
    /// If `frame` is shorter than `vxlan::ENCAP_LEN`.
    pub fn encap(&self, frame: &mut [u8]) -> Result<Encap, DropReason> {
        let packet = &frame[vxlan::ENCAP_LEN..];
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            return Err(DropReason::NotIpv4);
        }
        // A packet longer than the read buffer comes off the TUN device cut short (its
        // MTU raised by hand, say): its total length then exceeds what was read, and it
        // is dropped and counted here rather than sent for the peer to refuse.
        let dst = Ipv4Packet::parse(packet)
            .map_err(|_| DropReason::MalformedInner)?
            .dst();
        let peer = self.peer_for(dst).ok_or(DropReason::NoRoute)?;
        let info = &self.peers[peer];
        EncapHeader {
            vni: self.local.vni,
            inner_src_mac: self.local.mac,
            inner_dst_mac: info.vtep_mac,
        }
        .emit(frame);
        Ok(Encap {
            peer,
            dst: self.encap_dst[peer],
        })
    }

    /// Reads a path-MTU probe or ack (a datagram for which `wire::probe::is_probe` holds)
    /// received from `sender` on the tunnel port.
    ///
    /// Returns `Ok` iff the message parses and is a probe, or an ack from a peer. A probe
    /// is answered whoever sent it: its only effect is a smaller ack to its source (like
    /// an ICMP echo; no amplification), and a node that has just learned of us probes
    /// before we have learned of it. The `Err` names the drop's counter
    /// (`MalformedProbe`, `UnknownSender`) and the sender where it is a peer.
    pub fn probe(
        &self,
        sender: Ipv4Addr,
        datagram: &[u8],
    ) -> Result<ProbeMessage, (DropReason, Option<PeerIndex>)> {
        let peer = self.by_underlay.get(&sender).copied();
        let msg = ProbeMessage::parse(datagram).map_err(|_| (DropReason::MalformedProbe, peer))?;
        match (msg, peer) {
            (ProbeMessage::Ack { .. }, None) => Err((DropReason::UnknownSender, None)),
            _ => Ok(msg),
        }
    }

    /// Decides whether a UDP datagram received from `sender` on the tunnel port carries a
    /// packet for the TUN device (see [`receive`](Self::receive)); a frame to relay or a
    /// relay probe is refused here as not ours (`WrongDstMac`) or not IPv4.
    pub fn decap(
        &self,
        sender: Ipv4Addr,
        datagram: &[u8],
    ) -> Result<Decap, (DropReason, Option<PeerIndex>)> {
        match self.receive(sender, datagram)? {
            Received::Deliver(decap) => Ok(decap),
            Received::Forward { from, .. } => Err((DropReason::WrongDstMac, Some(from))),
            Received::RelayProbe { via, .. } => Err((DropReason::NotIpv4, Some(via))),
            Received::StrayRelayProbe { reason } => Err((reason, None)),
        }
    }

    /// What a UDP datagram received from `sender` on the tunnel port is for.
    ///
    /// The sender must be a peer and the VXLAN header valid with our VNI. Then:
    /// - To our VTEP MAC from the sender's (or from a MAC that is no peer's): delivered
    ///   iff it carries a well-formed IPv4 packet from the sender's pod subnet to ours.
    /// - To our VTEP MAC from another peer P's VTEP MAC: relayed. Accepted as P's iff the
    ///   sender is the member we relay P through (`NotOurRelay` otherwise, counted
    ///   against the sender); then an IPv4 packet passes the same checks against P's pod
    ///   subnet, and a relay probe or ack goes to the ladder.
    /// - To another peer Q's VTEP MAC: forwarded to Q iff it comes from the sender's own
    ///   VTEP MAC (one hop: a relayed frame is never relayed again) and we may relay for
    ///   both (`RelayRefused` otherwise).
    ///
    /// Cleartext from, to or through a peer whose pair requires encryption is refused
    /// (`NotOverQuic`). The `Err` names the counter of the drop; where the sender is
    /// known it is given too, so per-peer drop counters stay right.
    pub fn receive(
        &self,
        sender: Ipv4Addr,
        datagram: &[u8],
    ) -> Result<Received, (DropReason, Option<PeerIndex>)> {
        match self.classify(sender, datagram) {
            Err((
                reason @ (DropReason::UnknownSender
                | DropReason::WrongDstMac
                | DropReason::NotOurRelay
                | DropReason::RelayRefused
                | DropReason::NotIpv4),
                _,
            )) if Frame::parse(datagram)
                .is_ok_and(|f| f.inner_ethertype() == vxlan::ETHERTYPE_RELAY_PROBE) =>
            {
                Ok(Received::StrayRelayProbe { reason })
            }
            other => other,
        }
    }

    fn classify(
        &self,
        sender: Ipv4Addr,
        datagram: &[u8],
    ) -> Result<Received, (DropReason, Option<PeerIndex>)> {
        let peer = *self
            .by_underlay
            .get(&sender)
            .ok_or((DropReason::UnknownSender, None))?;
        let drop = |reason| (reason, Some(peer));
        let frame = Frame::parse(datagram).map_err(|e| {
            drop(match e {
                FrameError::Truncated => DropReason::Truncated,
                FrameError::NoVniFlag => DropReason::NoVniFlag,
            })
        })?;
        if frame.vni() != self.local.vni {
            return Err(drop(DropReason::WrongVni));
        }
        // A direct frame (nearly every one) carries its sender's own VTEP MAC: no map
        // lookup on the hot path for it.
        let inner_src = frame.inner_src_mac();
        let src_mac = if self.peers[peer].vtep_mac == inner_src {
            Some(peer)
        } else {
            self.by_mac.get(&inner_src).copied()
        };
        if frame.inner_dst_mac() != self.local.mac {
            let Some(to) = self.by_mac.get(&frame.inner_dst_mac()).copied() else {
                return Err(drop(DropReason::WrongDstMac));
            };
            if to == peer || src_mac != Some(peer) || !self.relay_hop[peer] || !self.relay_hop[to] {
                return Err(drop(DropReason::RelayRefused));
            }
            if self.encrypted_only[peer] || self.encrypted_only[to] {
                return Err(drop(DropReason::NotOverQuic));
            }
            return Ok(Received::Forward {
                from: peer,
                to,
                dst: self.peers[to].underlay,
            });
        }
        let origin = match src_mac {
            Some(origin) if origin != peer => {
                if self.relay_via[origin] != Some(peer) {
                    return Err(drop(DropReason::NotOurRelay));
                }
                origin
            }
            _ => peer,
        };
        let relayed = origin != peer;
        match frame.inner_ethertype() {
            vxlan::ETHERTYPE_IPV4 => {}
            vxlan::ETHERTYPE_RELAY_PROBE if relayed => {
                if self.encrypted_only[origin] || self.encrypted_only[peer] {
                    return Err(drop(DropReason::NotOverQuic));
                }
                let msg = ProbeMessage::parse(frame.inner_payload())
                    .map_err(|_| drop(DropReason::MalformedProbe))?;
                return Ok(Received::RelayProbe {
                    peer: origin,
                    via: peer,
                    msg,
                });
            }
            _ => return Err(drop(DropReason::NotIpv4)),
        }
        let len = self
            .check_inner(origin, frame.inner_payload())
            .map_err(|r| (r, Some(origin)))?;
        if self.encrypted_only[origin] || self.encrypted_only[peer] {
            return Err((DropReason::NotOverQuic, Some(origin)));
        }
        let start = vxlan::ENCAP_LEN;
        Ok(Received::Deliver(Decap {
            peer: origin,
            inner: start..start + len,
        }))
    }
}

/// Sets `flags[i]` for the peers named in `names`, clears the others.
fn mark<'a>(
    by_name: &HashMap<String, PeerIndex>,
    flags: &mut [bool],
    names: impl IntoIterator<Item = &'a str>,
) {
    flags.fill(false);
    for name in names {
        if let Some(&i) = by_name.get(name) {
            flags[i] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::test_packet;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn table() -> ForwardingTable {
        let local = LocalVtep {
            vni: 1,
            mac: MacAddr::vtep_for_node("n1"),
            pod_subnet: net("10.244.1.0/24"),
        };
        let peer = |name: &str, underlay: &str, subnet: &str| PeerInfo {
            name: name.into(),
            underlay: ip(underlay),
            pod_subnet: net(subnet),
            vtep_mac: MacAddr::vtep_for_node(name),
            zone: String::new(),
            quic_port: None,
            cert_fingerprint: None,
            relay: false,
        };
        ForwardingTable::new(
            local,
            vec![
                peer("n2", "10.100.2.11", "10.244.2.0/24"),
                peer("n3", "10.100.2.12", "10.244.3.0/24"),
                peer("big", "10.100.3.11", "10.244.128.0/17"),
            ],
        )
    }

    /// A datagram as peer `from` would send it to n1.
    fn datagram(from: &str, vni: u32, src: &str, dst: &str) -> Vec<u8> {
        let mut frame = vec![0u8; vxlan::ENCAP_LEN];
        EncapHeader {
            vni,
            inner_src_mac: MacAddr::vtep_for_node(from),
            inner_dst_mac: MacAddr::vtep_for_node("n1"),
        }
        .emit(&mut frame);
        frame.extend(test_packet(ip(src), ip(dst), 8));
        frame
    }

    #[test]
    fn probes_are_answered_acks_taken_only_from_peers_and_malformed_ones_counted() {
        let table = table();
        let mut probe = vec![0u8; 100 - crate::wire::probe::OUTER_HEADERS];
        ProbeMessage::Probe { id: 3, size: 100 }.emit(&mut probe);

        let mut ack = [0u8; crate::wire::probe::HEADER_LEN];
        ProbeMessage::Ack { id: 3, size: 100 }.emit(&mut ack);

        assert_eq!(
            table.probe(ip("10.100.2.12"), &probe),
            Ok(ProbeMessage::Probe { id: 3, size: 100 })
        );
        assert_eq!(
            table.probe(ip("10.9.9.9"), &probe),
            Ok(ProbeMessage::Probe { id: 3, size: 100 }),
            "a node that does not know us yet is answered"
        );
        assert_eq!(
            table.probe(ip("10.100.2.12"), &ack),
            Ok(ProbeMessage::Ack { id: 3, size: 100 })
        );
        assert_eq!(
            table.probe(ip("10.9.9.9"), &ack),
            Err((DropReason::UnknownSender, None)),
            "acks count only from peers"
        );
        assert_eq!(
            table.probe(ip("10.100.2.12"), &probe[..50]),
            Err((DropReason::MalformedProbe, Some(1)))
        );
        assert_eq!(
            table.probe(ip("10.9.9.9"), &probe[..50]),
            Err((DropReason::MalformedProbe, None))
        );
        // A probe is never decapsulated: its I flag is clear.
        assert_eq!(
            table.decap(ip("10.100.2.12"), &probe),
            Err((DropReason::NoVniFlag, Some(1)))
        );
    }

    #[test]
    fn encap_picks_peer_by_longest_prefix_and_writes_headers() {
        let t = table();
        let mut frame = vec![0u8; vxlan::ENCAP_LEN];
        frame.extend(test_packet(ip("10.244.1.2"), ip("10.244.3.7"), 8));
        let encap = t.encap(&mut frame).unwrap();
        assert_eq!(
            encap,
            Encap {
                peer: 1,
                dst: ip("10.100.2.12")
            }
        );
        let parsed = Frame::parse(&frame).unwrap();
        assert_eq!(parsed.vni(), 1);
        assert_eq!(parsed.inner_dst_mac(), MacAddr::vtep_for_node("n3"));
        assert_eq!(parsed.inner_src_mac(), MacAddr::vtep_for_node("n1"));
        assert_eq!(t.peer_for(ip("10.244.200.1")), Some(2));
    }

    #[test]
    fn encap_drops_non_ipv4_and_unroutable() {
        let t = table();
        let mut frame = vec![0u8; vxlan::ENCAP_LEN];
        frame.extend(test_packet(ip("10.244.1.2"), ip("10.244.9.7"), 8));
        assert_eq!(t.encap(&mut frame), Err(DropReason::NoRoute));
        frame[vxlan::ENCAP_LEN] = 0x60;
        assert_eq!(t.encap(&mut frame), Err(DropReason::NotIpv4));
        assert_eq!(
            t.encap(&mut [0u8; vxlan::ENCAP_LEN + 3]),
            Err(DropReason::NotIpv4)
        );
    }

    #[test]
    fn encap_drops_a_packet_cut_short_by_the_read_buffer() {
        let t = table();
        let mut frame = vec![0u8; vxlan::ENCAP_LEN];
        frame.extend(test_packet(ip("10.244.1.2"), ip("10.244.2.7"), 100));
        assert!(t.encap(&mut frame.clone()).is_ok());
        frame.truncate(frame.len() - 1);
        assert_eq!(t.encap(&mut frame), Err(DropReason::MalformedInner));
    }

    #[test]
    fn decap_accepts_a_peer_frame() {
        let t = table();
        let d = datagram("n2", 1, "10.244.2.5", "10.244.1.9");
        let decap = t.decap(ip("10.100.2.11"), &d).unwrap();
        assert_eq!(decap.peer, 0);
        assert_eq!(
            &d[decap.inner],
            &test_packet(ip("10.244.2.5"), ip("10.244.1.9"), 8)[..]
        );
    }

    #[test]
    fn decap_drops_each_bad_case_with_its_reason() {
        let t = table();
        let good = datagram("n2", 1, "10.244.2.5", "10.244.1.9");
        let from = ip("10.100.2.11");
        assert_eq!(
            t.decap(ip("10.100.9.9"), &good),
            Err((DropReason::UnknownSender, None))
        );
        assert_eq!(
            t.decap(from, &good[..10]),
            Err((DropReason::Truncated, Some(0)))
        );
        let mut no_flag = good.clone();
        no_flag[0] = 0;
        assert_eq!(
            t.decap(from, &no_flag),
            Err((DropReason::NoVniFlag, Some(0)))
        );
        let wrong_vni = datagram("n2", 2, "10.244.2.5", "10.244.1.9");
        assert_eq!(
            t.decap(from, &wrong_vni),
            Err((DropReason::WrongVni, Some(0)))
        );
        let mut wrong_mac = good.clone();
        wrong_mac[8] ^= 0x10;
        assert_eq!(
            t.decap(from, &wrong_mac),
            Err((DropReason::WrongDstMac, Some(0)))
        );
        let mut arp = good.clone();
        arp[20..22].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(t.decap(from, &arp), Err((DropReason::NotIpv4, Some(0))));
        assert_eq!(
            t.decap(from, &good[..good.len() - 1]),
            Err((DropReason::MalformedInner, Some(0)))
        );
        let elsewhere = datagram("n2", 1, "10.244.2.5", "10.244.3.9");
        assert_eq!(
            t.decap(from, &elsewhere),
            Err((DropReason::WrongInnerDst, Some(0)))
        );
        let spoofed = datagram("n2", 1, "10.244.3.5", "10.244.1.9");
        assert_eq!(
            t.decap(from, &spoofed),
            Err((DropReason::SpoofedSource, Some(0)))
        );
    }

    /// Node `me` of n1..n3 (underlay 10.100.i.11, pods 10.244.i.0/24) with the other two
    /// as peers.
    fn node(me: u8) -> ForwardingTable {
        let info = |i: u8| PeerInfo {
            name: format!("n{i}"),
            underlay: Ipv4Addr::new(10, 100, i, 11),
            pod_subnet: format!("10.244.{i}.0/24").parse().unwrap(),
            vtep_mac: MacAddr::vtep_for_node(&format!("n{i}")),
            zone: String::new(),
            quic_port: None,
            cert_fingerprint: None,
            relay: false,
        };
        ForwardingTable::new(
            LocalVtep {
                vni: 1,
                mac: MacAddr::vtep_for_node(&format!("n{me}")),
                pod_subnet: format!("10.244.{me}.0/24").parse().unwrap(),
            },
            (1..=3).filter(|i| *i != me).map(info).collect(),
        )
    }

    fn under(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 100, i, 11)
    }

    /// A frame from node `from`'s VTEP MAC to node `to`'s, with an inner packet.
    fn frame_between(from: u8, to: u8, src: &str, dst: &str) -> Vec<u8> {
        let mut frame = vec![0u8; vxlan::ENCAP_LEN];
        EncapHeader {
            vni: 1,
            inner_src_mac: MacAddr::vtep_for_node(&format!("n{from}")),
            inner_dst_mac: MacAddr::vtep_for_node(&format!("n{to}")),
        }
        .emit(&mut frame);
        frame.extend(test_packet(ip(src), ip(dst), 8));
        frame
    }

    /// n1 and n2 relay through n3: n1 sends n2's packets to n3 addressed to n2's VTEP MAC,
    /// n3 forwards them as they are, n2 takes them as n1's because n3 is the relay it uses
    /// with n1. The same frame from anyone else is a forgery: dropped as `NotOurRelay`.
    #[test]
    fn a_relayed_packet_is_taken_only_from_the_pairs_relay_and_forgeries_are_dropped() {
        let n1 = node(1).with_relays([("n2", "n3", true)]);
        let n3 = node(3).with_relaying(["n1", "n2"]);
        let n2 = node(2).with_relays([("n1", "n3", true)]);

        let mut frame = vec![0u8; vxlan::ENCAP_LEN];
        frame.extend(test_packet(ip("10.244.1.5"), ip("10.244.2.9"), 8));
        let encap = n1.encap(&mut frame).unwrap();
        assert_eq!(encap.dst, under(3), "to the relay");
        assert_eq!(n1.peers()[encap.peer].name, "n2");

        let fwd = n3.receive(under(1), &frame).unwrap();
        assert_eq!(
            fwd,
            Received::Forward {
                from: n3.peer_named("n1").unwrap(),
                to: n3.peer_named("n2").unwrap(),
                dst: under(2)
            }
        );
        let Received::Deliver(decap) = n2.receive(under(3), &frame).unwrap() else {
            panic!("n2 delivers it");
        };
        assert_eq!(n2.peers()[decap.peer].name, "n1");
        assert_eq!(
            &frame[decap.inner],
            &test_packet(ip("10.244.1.5"), ip("10.244.2.9"), 8)[..]
        );

        // n2 not relaying with n1 (or through another member): the same frame from n3 is
        // forged, counted against n3.
        let n3_at_n2 = Some(node(2).peer_named("n3").unwrap());
        assert_eq!(
            node(2).receive(under(3), &frame),
            Err((DropReason::NotOurRelay, n3_at_n2))
        );
        // Relayed, but its inner source is not n1's: spoofed, counted against n1.
        let spoofed = frame_between(1, 2, "10.244.3.5", "10.244.2.9");
        assert_eq!(
            n2.receive(under(3), &spoofed),
            Err((DropReason::SpoofedSource, n2.peer_named("n1")))
        );
        // Never cleartext through the relay for a pair that requires encryption.
        assert_eq!(
            n2.clone()
                .with_encryption_required(["n1"])
                .receive(under(3), &frame),
            Err((DropReason::NotOverQuic, n2.peer_named("n1")))
        );
        // A direct frame from n1 is still n1's own, relay or not.
        let direct = frame_between(1, 2, "10.244.1.5", "10.244.2.9");
        assert!(matches!(
            n2.receive(under(1), &direct),
            Ok(Received::Deliver(_))
        ));
        // Not carried yet: n1 still sends n2's packets straight to n2.
        let mut frame = vec![0u8; vxlan::ENCAP_LEN];
        frame.extend(test_packet(ip("10.244.1.5"), ip("10.244.2.9"), 8));
        let n1 = node(1).with_relays([("n2", "n3", false)]);
        assert_eq!(n1.encap(&mut frame).unwrap().dst, under(2));
    }

    /// A member forwards only between peers it may relay for, only frames from their
    /// origin (one hop: never a frame another relay forwarded), and never cleartext for a
    /// pair that requires encryption.
    #[test]
    fn a_relay_forwards_one_hop_between_peers_it_may_relay_for() {
        let frame = frame_between(1, 2, "10.244.1.5", "10.244.2.9");
        assert_eq!(
            node(3).receive(under(1), &frame),
            Err((DropReason::RelayRefused, node(3).peer_named("n1")))
        );
        assert_eq!(
            node(3).with_relaying(["n1"]).receive(under(1), &frame),
            Err((DropReason::RelayRefused, node(3).peer_named("n1"))),
            "not for n2"
        );
        let n3 = node(3).with_relaying(["n2", "n1"]);
        assert!(matches!(
            n3.receive(under(1), &frame),
            Ok(Received::Forward { .. })
        ));
        // From n2's underlay, but claiming n1's MAC: relayed once already, or forged.
        assert_eq!(
            n3.receive(under(2), &frame),
            Err((DropReason::RelayRefused, n3.peer_named("n2")))
        );
        assert_eq!(
            n3.clone()
                .with_encryption_required(["n2"])
                .receive(under(1), &frame),
            Err((DropReason::NotOverQuic, n3.peer_named("n1")))
        );
        assert_eq!(
            n3.decap(under(1), &frame),
            Err((DropReason::WrongDstMac, n3.peer_named("n1"))),
            "decap alone never forwards"
        );
    }

    /// The relay rung's probe goes n1 → n3 → n2 and its ack n2 → n3 → n1, each end taking
    /// it as the other's.
    #[test]
    fn relay_probes_travel_through_the_relay_both_ways() {
        let n1 = node(1).with_relays([("n2", "n3", false)]);
        let n3 = node(3).with_relaying(["n1", "n2"]);
        let n2 = node(2).with_relays([("n1", "n3", false)]);
        let mut buf = [0u8; 128];
        let probe = ProbeMessage::Probe {
            id: 7,
            size: crate::wire::probe::MIN_SIZE,
        };
        let (to, len) = n1
            .relay_probe(n1.peer_named("n2").unwrap(), probe, &mut buf)
            .unwrap();
        assert_eq!(to, under(3));
        assert!(
            matches!(n3.receive(under(1), &buf[..len]), Ok(Received::Forward { dst, .. }) if dst == under(2))
        );
        let got = n2.receive(under(3), &buf[..len]).unwrap();
        assert_eq!(
            got,
            Received::RelayProbe {
                peer: n2.peer_named("n1").unwrap(),
                via: n2.peer_named("n3").unwrap(),
                msg: probe
            }
        );
        let ack = probe.ack().unwrap();
        let (to, len) = n2
            .relay_probe(n2.peer_named("n1").unwrap(), ack, &mut buf)
            .unwrap();
        assert_eq!(to, under(3));
        assert!(
            matches!(n3.receive(under(2), &buf[..len]), Ok(Received::Forward { dst, .. }) if dst == under(1))
        );
        assert!(matches!(
            n1.receive(under(3), &buf[..len]),
            Ok(Received::RelayProbe { msg, .. }) if msg == ack
        ));
        // Without a relay for the peer there is nothing to send.
        assert_eq!(node(1).relay_probe(0, probe, &mut buf), None);
        // A relay probe nobody here can place (the sender or the far end not known yet,
        // at start) is a lost probe, not a drop.
        let (_, len) = n1
            .relay_probe(n1.peer_named("n2").unwrap(), probe, &mut buf)
            .unwrap();
        assert_eq!(
            node(3).receive(Ipv4Addr::new(10, 9, 9, 9), &buf[..len]),
            Ok(Received::StrayRelayProbe {
                reason: DropReason::UnknownSender
            })
        );
        assert_eq!(
            node(3).receive(under(1), &buf[..len]),
            Ok(Received::StrayRelayProbe {
                reason: DropReason::RelayRefused
            })
        );
        assert_eq!(
            node(2).receive(under(3), &buf[..len]),
            Ok(Received::StrayRelayProbe {
                reason: DropReason::NotOurRelay
            })
        );
        // Its origin's VTEP MAC not known here yet (at start): it reads as the relay's
        // own frame, which a relay probe never is — stray too, not a not_ipv4 drop.
        let mut unknown_origin = buf[..len].to_vec();
        unknown_origin[14..20].copy_from_slice(&[2, 9, 9, 9, 9, 9]);
        assert_eq!(
            n2.receive(under(3), &unknown_origin),
            Ok(Received::StrayRelayProbe {
                reason: DropReason::NotIpv4
            })
        );
    }

    #[test]
    fn an_encrypted_peer_is_refused_over_vxlan_and_accepted_over_quic_with_the_same_checks() {
        let from = ip("10.100.2.11");
        let good = datagram("n2", 1, "10.244.2.5", "10.244.1.9");
        // Sent over QUIC, but the pair does not require encryption: its VXLAN (a path
        // switch in flight at its end) is still taken.
        let t = table().with_quic(["n2"]);
        assert!(t.uses_quic(0) && t.decap(from, &good).is_ok());
        let t = t.with_encryption_required(["n2"]);
        // Cleartext from (or forged as) a peer whose pair requires encryption.
        assert_eq!(
            t.decap(from, &good),
            Err((DropReason::NotOverQuic, Some(0)))
        );
        let mut packet = test_packet(ip("10.244.2.5"), ip("10.244.1.9"), 8);
        let len = packet.len();
        assert_eq!(t.accept_quic("n2", &packet), Ok((0, len)));
        packet.extend([0u8; 3]); // trailing bytes are not the packet's
        assert_eq!(t.accept_quic("n2", &packet), Ok((0, len)));
        assert_eq!(
            t.accept_quic("n9", &packet),
            Err((DropReason::UnknownSender, None))
        );
        let spoofed = test_packet(ip("10.244.3.5"), ip("10.244.1.9"), 8);
        assert_eq!(
            t.accept_quic("n2", &spoofed),
            Err((DropReason::SpoofedSource, Some(0)))
        );
        let elsewhere = test_packet(ip("10.244.2.5"), ip("10.244.3.9"), 8);
        assert_eq!(
            t.accept_quic("n2", &elsewhere),
            Err((DropReason::WrongInnerDst, Some(0)))
        );
        assert_eq!(
            t.accept_quic("n2", &packet[..10]),
            Err((DropReason::MalformedInner, Some(0)))
        );
        let t = t.with_quic([]).with_encryption_required([]);
        assert!(!t.uses_quic(0) && t.decap(from, &good).is_ok());
    }

    #[test]
    fn drop_reason_indexes_are_dense() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
    }

    proptest! {
        #[test]
        fn decap_never_panics_and_inner_is_in_bounds(
            bytes in proptest::collection::vec(any::<u8>(), 0..120),
            sender in prop::sample::select(vec!["10.100.2.11", "10.100.2.12", "1.2.3.4"]),
        ) {
            let t = table();
            if let Ok(decap) = t.decap(ip(sender), &bytes) {
                prop_assert!(decap.inner.end <= bytes.len());
            }
        }

        #[test]
        fn encap_then_decap_roundtrips(
            src_host in 1u8..255, dst_host in 1u8..255, len in 0usize..64,
        ) {
            // n1 sends to n2; n2's table must accept it.
            let n1 = table();
            let n2 = ForwardingTable::new(
                LocalVtep { vni: 1, mac: MacAddr::vtep_for_node("n2"), pod_subnet: net("10.244.2.0/24") },
                vec![PeerInfo {
                    name: "n1".into(),
                    underlay: ip("10.100.1.11"),
                    pod_subnet: net("10.244.1.0/24"),
                    vtep_mac: MacAddr::vtep_for_node("n1"),
                    zone: String::new(),
                    quic_port: None, cert_fingerprint: None, relay: false,
                }],
            );
            let inner = test_packet(Ipv4Addr::new(10, 244, 1, src_host), Ipv4Addr::new(10, 244, 2, dst_host), len);
            let mut frame = vec![0u8; vxlan::ENCAP_LEN];
            frame.extend(&inner);
            let encap = n1.encap(&mut frame).unwrap();
            prop_assert_eq!(encap.dst, ip("10.100.2.11"));
            let decap = n2.decap(ip("10.100.1.11"), &frame).unwrap();
            prop_assert_eq!(&frame[decap.inner], &inner[..]);
        }
    }
}
