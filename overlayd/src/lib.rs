//! overlayd: one daemon per node that gives every pod an IP on the node bridge and joins
//! the pod subnets of all nodes into one flat network — host-gw routes between nodes that
//! share an L2 segment, VXLAN over UDP between the rest.
//!
//! The library is the daemon's I/O shell; every decision it acts on comes from
//! `overlayd_proto`. `main.rs` is only the command line.

pub mod api;
pub mod cli;
pub mod daemon;
pub mod datapath;
pub mod discovery;
pub mod gossip;
pub mod keys;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod pods;
