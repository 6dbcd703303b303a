//! Wire formats. Each is a checked view over bytes plus an `emit`; accessors never panic
//! once `parse` has succeeded.

pub mod arp;
pub mod checksum;
pub mod echo;
pub(crate) mod ipv4;
mod mac;
pub mod probe;
pub mod too_big;
pub mod vnet;
pub mod vxlan;

pub use ipv4::{Ipv4Error, Ipv4Packet};
pub use mac::{MacAddr, ParseMacError};
