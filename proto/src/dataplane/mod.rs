//! Data-plane decisions for the VXLAN/UDP tunnel: which peer an IPv4 packet read from the
//! TUN device goes to, and whether a UDP datagram from the underlay may be written to the
//! TUN device. The shell owns the buffers and the sockets; this module fills in headers and
//! says what to do, or which counter a dropped packet belongs to.

mod gro;
mod gso;
mod partial;
pub mod pmtu;
mod table;
mod tso;

pub use gro::{GRO_BUF_LEN, Gro, MAX_SUPER_PACKET, Push, alone_hdr, oversize_tcp};
pub use gso::{Frame, GsoRun, gso_runs};
pub use partial::{InnerChecksum, L4Checksum, PROTO_TCP, PROTO_UDP, complete_partial};
pub use table::{Decap, DropReason, Encap, ForwardingTable, LocalVtep, PeerIndex, Received};
pub use tso::{Segments, SplitError, split};
