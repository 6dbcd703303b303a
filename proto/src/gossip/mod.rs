//! Cluster membership and state by gossip, sans-IO.
//!
//! - Membership: SWIM with suspicion and incarnations, Lifeguard's local health and
//!   dynamic suspicion timeouts, re-announcement to dead members and seeds so
//!   partitions heal by themselves, graceful leave.
//! - State: every node owns a versioned [`NodeRecord`] that dies with it; cluster
//!   objects are last-writer-wins registers on a hybrid logical clock, with tombstones.
//!   Deltas are piggybacked (newest, least-sent first); digest push-pull repairs the
//!   rest; joiners pull full state over a stream.
//! - Security: every datagram and stream payload sealed with an XChaCha20-Poly1305
//!   [`Keyring`], cluster name as associated data, per-sender replay windows.
//! - Subnets: nodes without a configured pod subnet claim one; conflicts resolve
//!   deterministically ([`subnet`]).
//!
//! The shell drives a [`Gossip`]: UDP datagrams in with `handle_datagram`, timers with
//! `handle_timeout`/`poll_timeout`, and drains `poll_transmit`, `poll_stream` and
//! `poll_event`. See docs/gossip.md for the design and measurements.

mod broadcast;
pub(crate) mod codec;
mod config;
mod crypto;
mod hlc;
mod machine;
mod members;
mod message;
mod objects;
mod record;
mod replay;
mod stats;
pub mod subnet;

#[cfg(test)]
pub(crate) mod sim;

pub use codec::DecodeError;
pub use config::{
    ConfigError, GossipConfig, MAX_COUNT, MAX_MULTIPLIER, MAX_PACKET, MAX_TIMER, MAX_TOMBSTONE_GC,
    MIN_PACKET, Timing,
};
pub use crypto::{Keyring, KeyringError, SEAL_OVERHEAD, SEAL_VERSION, SecretKey};
pub use hlc::Hlc;
pub use machine::{Event, Gossip, NewError, ObjectError, StreamError, StreamRequest, Transmit};
pub use members::{DownReason, MemberState, MemberView};
pub use message::Incarnation;
pub use objects::{MAX_KEY_LEN, MAX_VALUE_LEN};
pub use record::{
    MAX_CAPABILITIES, MAX_NAME_LEN, NodeRecord, QUIC_CAPABILITY, RELAY_CAPABILITY, RecordError,
};
pub use stats::{GossipDrop, GossipStats};
pub use subnet::SubnetPool;
