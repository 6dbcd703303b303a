//! overlayd's sans-IO core.
//!
//! Everything here decides and nothing here does I/O: no sockets, no clock reads, no
//! syscalls. The daemon (`overlayd`) feeds bytes, kernel state and time in and carries
//! out what comes back, so every decision is testable with plain unit tests.

pub mod api;
pub mod peer;
pub mod wire;

pub use peer::PeerInfo;
pub mod dataplane;
pub mod gossip;
pub mod ipam;
pub mod nft;
pub mod path;
pub mod pki;
pub mod pod;
pub mod routing;
pub mod service;

/// Whether two subnets share any address (of two CIDR blocks that overlap, one contains
/// the other).
pub fn overlaps(a: ipnet::Ipv4Net, b: ipnet::Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}
