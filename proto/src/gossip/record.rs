//! The record every node owns and gossips about itself.

use std::net::{Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;

use super::codec::{DecodeError, Reader, Writer, socket_addr_len};
use super::hlc::Hlc;
use crate::peer::PeerInfo;
use crate::wire::MacAddr;

/// Longest node name, zone or capability, in bytes.
pub const MAX_NAME_LEN: usize = 63;
/// The capability that announces a QUIC endpoint: `quic=PORT`.
pub const QUIC_CAPABILITY: &str = "quic=";
/// The capability of a node that forwards relayed frames (the path ladder's relay rung).
pub const RELAY_CAPABILITY: &str = "relay";
/// Most capabilities a node may advertise.
pub const MAX_CAPABILITIES: usize = 8;

/// What a node tells the cluster about itself. Owned by that node: only it changes it
/// (with [`super::Gossip::update_local`]); everyone else holds a copy that dies with the
/// member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Unique in the cluster; the member's identity.
    pub name: String,
    /// Where its gossip socket listens (UDP datagrams and the TCP stream port).
    pub gossip_addr: SocketAddr,
    /// Where its tunnel endpoint listens and host-gw routes point.
    pub underlay: Ipv4Addr,
    /// The address it advertises to clients (node ports, load balancers).
    pub advertise: Ipv4Addr,
    /// Its pod subnet; `None` while it is still claiming one.
    pub pod_subnet: Option<Ipv4Net>,
    /// The subnet comes from configuration rather than a claim; static beats claimed.
    pub subnet_static: bool,
    /// When the subnet was claimed (ignored when static). Older claims win conflicts, so
    /// the shell persists it with the subnet and passes both back after a restart.
    pub subnet_claimed_at: Hlc,
    pub vtep_mac: MacAddr,
    pub zone: String,
    pub capabilities: Vec<String>,
}

/// Why a record cannot be gossiped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("node name must be 1 to {MAX_NAME_LEN} bytes")]
    BadName,
    #[error("zone must be at most {MAX_NAME_LEN} bytes")]
    BadZone,
    #[error(
        "at most {MAX_CAPABILITIES} capabilities of 1 to {MAX_NAME_LEN} bytes each are allowed"
    )]
    BadCapabilities,
    #[error("the node name cannot change while the daemon runs; restart with the new name")]
    NameChanged,
    #[error(
        "a claimed pod subnet needs the time it was claimed (subnet_claimed_at, persisted with \
         it); set subnet_static for a configured subnet"
    )]
    ClaimTimeMissing,
    #[error("this node has left the cluster; start it again to announce a new record")]
    Left,
}

impl NodeRecord {
    /// A record with the VTEP MAC derived from the name, no zone and no capabilities.
    pub fn new(
        name: impl Into<String>,
        gossip_addr: SocketAddr,
        underlay: Ipv4Addr,
        pod_subnet: Option<Ipv4Net>,
    ) -> Self {
        let name = name.into();
        NodeRecord {
            vtep_mac: MacAddr::vtep_for_node(&name),
            name,
            gossip_addr,
            underlay,
            advertise: underlay,
            pod_subnet,
            subnet_static: false,
            subnet_claimed_at: Hlc(0),
            zone: String::new(),
            capabilities: Vec::new(),
        }
    }

    /// Returns `Err` iff a field is too long to fit the wire format's bounds.
    pub fn validate(&self) -> Result<(), RecordError> {
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(RecordError::BadName);
        }
        if self.zone.len() > MAX_NAME_LEN {
            return Err(RecordError::BadZone);
        }
        if self.capabilities.len() > MAX_CAPABILITIES
            || self
                .capabilities
                .iter()
                .any(|c| c.is_empty() || c.len() > MAX_NAME_LEN)
        {
            return Err(RecordError::BadCapabilities);
        }
        Ok(())
    }

    /// Returns `Err` iff the record cannot be this node's own: it fails
    /// [`NodeRecord::validate`], or it holds a claimed (not static) subnet without its
    /// claim time — `Hlc(0)` would be the oldest claim of all and win every conflict.
    pub fn validate_local(&self) -> Result<(), RecordError> {
        self.validate()?;
        if self.pod_subnet.is_some() && !self.subnet_static && self.subnet_claimed_at == Hlc(0) {
            return Err(RecordError::ClaimTimeMissing);
        }
        Ok(())
    }

    /// The data path's view, once the node has a pod subnet.
    pub fn peer_info(&self) -> Option<PeerInfo> {
        Some(PeerInfo {
            name: self.name.clone(),
            underlay: self.underlay,
            pod_subnet: self.pod_subnet?,
            vtep_mac: self.vtep_mac,
            zone: self.zone.clone(),
            quic_port: self.quic_port(),
            cert_fingerprint: self.cert_fingerprint(),
            relay: self.has_capability(RELAY_CAPABILITY),
        })
    }

    /// Whether it announces the capability `cap` exactly.
    pub fn has_capability(&self, cap: &str) -> bool {
        self.capabilities.iter().any(|c| c == cap)
    }

    /// The port of its QUIC endpoint, from the capability `quic=PORT` (a capability
    /// rather than a field, so nodes of earlier versions still decode the record).
    pub fn quic_port(&self) -> Option<u16> {
        self.capabilities
            .iter()
            .find_map(|c| c.strip_prefix(QUIC_CAPABILITY)?.parse().ok())
            .filter(|port| *port != 0)
    }

    /// The fingerprint of its QUIC certificate, from the capability `cert=<base64url>`
    /// ([`crate::pki::CERT_CAPABILITY`]); `None` when it advertises none.
    pub fn cert_fingerprint(&self) -> Option<crate::pki::Fingerprint> {
        self.capabilities
            .iter()
            .find_map(|c| crate::pki::Fingerprint::from_capability(c))
    }

    /// Advertises `fingerprint` as its QUIC certificate's (or none), in place of any
    /// advertised before.
    pub fn set_cert_fingerprint(&mut self, fingerprint: Option<crate::pki::Fingerprint>) {
        self.capabilities
            .retain(|c| !c.starts_with(crate::pki::CERT_CAPABILITY));
        self.capabilities
            .extend(fingerprint.map(|f| f.to_capability()));
    }

    pub(crate) fn encoded_len(&self) -> usize {
        1 + self.name.len()
            + socket_addr_len(&self.gossip_addr)
            + 4
            + 4
            + 1
            + 5
            + 8
            + 6
            + 1
            + self.zone.len()
            + 1
            + self.capabilities.iter().map(|c| 1 + c.len()).sum::<usize>()
    }

    /// Encodes a validated record.
    pub(crate) fn encode(&self, w: &mut Writer) {
        w.str8(&self.name);
        w.socket_addr(self.gossip_addr);
        w.ipv4(self.underlay);
        w.ipv4(self.advertise);
        // 0: none, 1: claimed, 2: static.
        match self.pod_subnet {
            None => {
                w.u8(0);
                w.ipv4_net(Ipv4Net::default());
            }
            Some(net) => {
                w.u8(if self.subnet_static { 2 } else { 1 });
                w.ipv4_net(net);
            }
        }
        w.u64(self.subnet_claimed_at.0);
        w.mac(self.vtep_mac);
        w.str8(&self.zone);
        w.u8(self.capabilities.len() as u8);
        for c in &self.capabilities {
            w.str8(c);
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let name = r.str8()?;
        let gossip_addr = r.socket_addr()?;
        let underlay = r.ipv4()?;
        let advertise = r.ipv4()?;
        let kind = r.u8()?;
        let net = r.ipv4_net()?;
        let (pod_subnet, subnet_static) = match kind {
            0 => (None, false),
            1 => (Some(net), false),
            2 => (Some(net), true),
            _ => return Err(DecodeError::Invalid),
        };
        let subnet_claimed_at = Hlc(r.u64()?);
        let vtep_mac = r.mac()?;
        let zone = r.str8()?;
        let count = r.u8()?;
        let mut capabilities = Vec::with_capacity(usize::from(count).min(MAX_CAPABILITIES));
        for _ in 0..count {
            capabilities.push(r.str8()?);
        }
        let record = NodeRecord {
            name,
            gossip_addr,
            underlay,
            advertise,
            pod_subnet,
            subnet_static,
            subnet_claimed_at,
            vtep_mac,
            zone,
            capabilities,
        };
        record.validate().map_err(|_| DecodeError::Invalid)?;
        Ok(record)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn arb_record() -> impl Strategy<Value = NodeRecord> {
        (
            "[a-z0-9-]{1,63}",
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            proptest::option::of((any::<[u8; 4]>(), 8u8..=30, any::<bool>())),
            any::<u64>(),
            "[a-z]{0,12}",
            proptest::collection::vec("[a-z]{1,10}", 0..4),
        )
            .prop_map(|(name, ip, port, underlay, subnet, at, zone, caps)| {
                let mut r = NodeRecord::new(
                    name,
                    SocketAddr::from((ip, port)),
                    Ipv4Addr::from(underlay),
                    None,
                );
                if let Some((net, len, stat)) = subnet {
                    r.pod_subnet = Some(Ipv4Net::new(Ipv4Addr::from(net), len).unwrap().trunc());
                    r.subnet_static = stat;
                }
                r.subnet_claimed_at = Hlc(at);
                r.zone = zone;
                r.capabilities = caps;
                r
            })
    }

    proptest! {
        #[test]
        fn record_roundtrip(record in arb_record()) {
            let mut w = Writer::new();
            record.encode(&mut w);
            prop_assert_eq!(w.len(), record.encoded_len());
            let mut r = Reader::new(&w.buf);
            prop_assert_eq!(NodeRecord::decode(&mut r).unwrap(), record);
            prop_assert!(r.is_empty());
        }
    }

    #[test]
    fn validate_bounds_every_variable_field() {
        let mut r = NodeRecord::new(
            "a",
            "10.0.0.1:7946".parse().unwrap(),
            Ipv4Addr::LOCALHOST,
            None,
        );
        assert_eq!(r.validate(), Ok(()));
        r.capabilities = vec!["x".into(); MAX_CAPABILITIES + 1];
        assert_eq!(r.validate(), Err(RecordError::BadCapabilities));
        r.capabilities.clear();
        r.zone = "z".repeat(MAX_NAME_LEN + 1);
        assert_eq!(r.validate(), Err(RecordError::BadZone));
        r.zone.clear();
        r.name = String::new();
        assert_eq!(r.validate(), Err(RecordError::BadName));
    }

    #[test]
    fn quic_port_comes_from_the_capability_and_reaches_the_data_path() {
        let mut r = NodeRecord::new(
            "a",
            "10.0.0.1:7946".parse().unwrap(),
            Ipv4Addr::new(10, 0, 0, 1),
            Some("10.244.1.0/24".parse().unwrap()),
        );
        r.zone = "dc-b".into();
        assert_eq!(r.quic_port(), None);
        for bad in ["quic=", "quic=0", "quic=70000", "quic=x", "quic 8473"] {
            r.capabilities = vec!["vxlan".into(), bad.into()];
            assert_eq!(r.quic_port(), None, "{bad}");
        }
        r.capabilities = vec!["vxlan".into(), format!("{QUIC_CAPABILITY}8473")];
        assert_eq!(r.quic_port(), Some(8473));
        let peer = r.peer_info().unwrap();
        assert_eq!((peer.zone.as_str(), peer.quic_port), ("dc-b", Some(8473)));
    }

    #[test]
    fn the_cert_fingerprint_comes_from_the_capability_and_reaches_the_data_path() {
        use crate::pki::Fingerprint;
        let mut r = NodeRecord::new(
            "a",
            "10.0.0.1:7946".parse().unwrap(),
            Ipv4Addr::new(10, 0, 0, 1),
            Some("10.244.1.0/24".parse().unwrap()),
        );
        assert_eq!(r.cert_fingerprint(), None);
        let fp = Fingerprint([9; 32]);
        r.capabilities = vec![
            "vxlan".into(),
            format!("{QUIC_CAPABILITY}8473"),
            fp.to_capability(),
        ];
        assert_eq!(r.validate(), Ok(()));
        assert_eq!(r.cert_fingerprint(), Some(fp));
        assert_eq!(r.peer_info().unwrap().cert_fingerprint, Some(fp));
        // It survives the wire.
        let mut w = Writer::new();
        r.encode(&mut w);
        let back = NodeRecord::decode(&mut Reader::new(&w.buf)).unwrap();
        assert_eq!(back.cert_fingerprint(), Some(fp));
        // A new certificate replaces the old one's capability; none removes it.
        let renewed = Fingerprint([7; 32]);
        r.set_cert_fingerprint(Some(renewed));
        assert_eq!(r.cert_fingerprint(), Some(renewed));
        assert_eq!(r.capabilities.len(), 3, "{:?}", r.capabilities);
        r.set_cert_fingerprint(None);
        assert_eq!(r.cert_fingerprint(), None);
        assert_eq!(r.capabilities.len(), 2);
    }
}
