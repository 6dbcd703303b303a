//! What the data path needs to know about another node, whoever told us (the static
//! config or gossip).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::wire::MacAddr;

/// One remote node as the data path sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerInfo {
    pub name: String,
    /// Where its VXLAN endpoint listens (and where host-gw routes point).
    pub underlay: Ipv4Addr,
    pub pod_subnet: Ipv4Net,
    pub vtep_mac: MacAddr,
    /// Its zone (`node.zone`), which the path policy reads; empty when unknown (a static
    /// `[[peer]]`), which counts as this node's own zone.
    #[serde(default)]
    pub zone: String,
    /// The UDP port of its QUIC endpoint; `None` when it has none (it announces one as the
    /// capability `quic=PORT`).
    #[serde(default)]
    pub quic_port: Option<u16>,
    /// The fingerprint of its QUIC certificate, from its gossip record (the capability
    /// `cert=…`); `None` when it advertises none. A QUIC peer presenting another
    /// certificate is refused ([`crate::pki::check_advertised`]).
    #[serde(default)]
    pub cert_fingerprint: Option<crate::pki::Fingerprint>,
    /// It forwards relayed frames (it announces the capability `relay`); a static
    /// `[[peer]]` (a kernel vxlan node, say) and a node of an earlier version do not, and
    /// are never chosen as a relay.
    #[serde(default)]
    pub relay: bool,
}
