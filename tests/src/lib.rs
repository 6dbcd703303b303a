//! The overlayd lab: a whole cluster in network namespaces on one host.
//!
//! `overlayd lab up|down|ps|exec|check` is [`cli::run`] with a [`LabCommand`]; the
//! integration tests use [`Lab`] directly. A lab named `LAB` consists of
//!
//! - a router namespace `ovl-LAB-router` with one bridge `seg-NAME` per segment, holding
//!   the segment subnet's first address, and IP forwarding on;
//! - per node a namespace `ovl-LAB-NODE` whose `eth0` (a veth to the segment bridge) has
//!   address `.11`, `.12`, … of its segment and a default route via the router, running
//!   `overlayd run --config /run/overlayd-lab/LAB/NODE.toml` (unless `daemon = false`);
//! - per pod a namespace `ovl-LAB-NODE-pN` that the node's daemon attached
//!   (`overlayd pod add NODE-pN --netns /run/netns/ovl-LAB-NODE-pN`);
//! - `/run/overlayd-lab/LAB/`: `lab.json` (state), `NODE.toml`, `NODE.log`, `NODE.pid`,
//!   `NODE/` (the daemon's state dir and control socket `overlayd.sock`), with gossip
//!   `gossip.key`, and with `quic` the lab's CA and node certificates in `pki/`.
//!
//! By default the daemons gossip: each joins through one seed node and claims its pod
//! subnet, and [`Lab::up`] returns once every daemon lists every other one as a peer
//! ([`Lab::wait_converged`]). `gossip = false` in the topology gives static peers.
//!
//! Everything is keyed by the lab's name, so labs with different names run side by side;
//! nothing is created in the host's network namespace. [`Lab::down`] needs only the name
//! and cleans up after crashed runs too.
//!
//! ```no_run
//! use overlayd_lab::{Lab, Topology, in_netns};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // In the overlayd crate's tests: `env!("CARGO_BIN_EXE_overlayd")`.
//! let overlayd_bin = std::path::Path::new("/usr/local/bin/overlayd");
//! let lab = Lab::up("t1", &Topology::default(), overlayd_bin)?;
//! let server = lab.pod("n3-p1")?.ip;
//! in_netns(&lab.pod("n1-p1")?.netns, || std::net::TcpStream::connect((server, 80)).is_ok());
//! assert!(lab.check()?.ok());
//! # Ok(()) }   // dropping `lab` tears it down
//! ```

pub mod bench;
mod check;
pub mod cli;
pub mod client;
pub mod config;
mod converge;
pub mod hello;
mod lab;
pub mod netns;
mod partition;
pub mod process;
pub mod resolver;
pub mod topology;

pub use check::{CheckReport, PairResult, PathCount};
pub use cli::{LabCommand, run};
pub use client::{Member, MemberState, PeerReport, Status};
pub use lab::{
    Lab, LabError, LabGuard, Node, Pod, Ps, PsNode, PsPod, READY_TIMEOUT, RUN_ROOT, STOP_TIMEOUT,
    lab_namespaces, netns_prefix, node_netns, pod_netns, router_netns, run_dir, validate_lab_name,
};
pub use netns::{Netns, NetnsError, in_netns, run_in, try_in_netns};
pub use topology::{
    DEFAULT_NODES, DEFAULT_TOPOLOGY, DEFAULT_ZONE, NodeSpec, REMOTE_ZONE_TOPOLOGY, Segment,
    THREE_SEGMENTS_TOPOLOGY, TWO_SEGMENTS, Topology, TopologyError,
};
