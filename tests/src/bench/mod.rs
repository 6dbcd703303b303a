//! `overlayd lab bench [datapath|services]`: benchmarks that bring up a lab of their own,
//! measure every overlayd path next to its reference in the same run, and tear it down.
//!
//! - [`datapath`]: host-gw and the UDP tunnel against plain kernel routes and a kernel
//!   vxlan device on the same two nodes, on one segment and across the router.
//! - [`services`]: a Service VIP through the daemon's proxy, HAProxy and an nftables DNAT
//!   against the direct pod-to-pod path, Service propagation time and daemon memory.

mod api;
pub mod datapath;
pub mod measure;
mod reference;
pub mod services;
