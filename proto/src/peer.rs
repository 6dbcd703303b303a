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
}
