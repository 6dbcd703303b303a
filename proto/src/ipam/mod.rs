//! Pod address allocation within the node's pod subnet.
//!
//! The network address, the gateway (first host, held by the bridge) and the broadcast
//! address are never handed out. Allocation continues after the last address handed out
//! and wraps, so a released address is the last to be reused — a stale peer that still
//! holds a dead pod's address in its caches rarely meets a new pod on it. The shell
//! persists the allocations (the pod records) and rebuilds the allocator from them, so an
//! address still held is never handed out again across restarts either.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Why an address cannot be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("pod subnet {0} is full: every pod address is held; delete a pod first")]
    Exhausted(Ipv4Net),
    #[error(
        "{addr} is not a pod address of {subnet} (network, gateway and broadcast are reserved)"
    )]
    OutOfRange { addr: Ipv4Addr, subnet: Ipv4Net },
    #[error("{addr} is already held by pod {holder}")]
    InUse { addr: Ipv4Addr, holder: String },
}

/// Where each pod goes when the node's pod subnet changes: see [`PodIpam::renumber`].
#[derive(Debug, Clone)]
pub struct Renumbering {
    /// The allocator for the new subnet, holding every address below.
    pub ipam: PodIpam,
    /// `(index into the pods given, new address)` of each pod that moves.
    pub moves: Vec<(usize, Ipv4Addr)>,
    /// Indices of the pods that found no free address; they keep theirs, outside.
    pub stuck: Vec<usize>,
}

/// Allocator for one pod subnet.
#[derive(Debug, Clone)]
pub struct PodIpam {
    subnet: Ipv4Net,
    held: BTreeMap<Ipv4Addr, String>,
    /// The last address handed out; the next search starts after it.
    cursor: u32,
}

impl PodIpam {
    pub fn new(subnet: Ipv4Net) -> Self {
        PodIpam {
            subnet,
            held: BTreeMap::new(),
            cursor: u32::from(Self::gateway_of(subnet)),
        }
    }

    /// The bridge's address: the first host of the subnet.
    pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Self::gateway_of(self.subnet)
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// Records an address held by `pod`, when rebuilding from persisted pod records.
    pub fn restore(&mut self, addr: Ipv4Addr, pod: &str) -> Result<(), IpamError> {
        self.claim(addr, pod)
    }

    /// Resumes the search after `addr` (the last address handed out before a restart).
    pub fn set_cursor(&mut self, addr: Ipv4Addr) {
        if self.is_pod_address(addr) {
            self.cursor = u32::from(addr);
        }
    }

    pub fn cursor(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.cursor)
    }

    /// Allocates `requested`, or the next free address after the cursor.
    pub fn allocate(
        &mut self,
        pod: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
        if let Some(addr) = requested {
            self.claim(addr, pod)?;
            return Ok(addr);
        }
        let first = u32::from(self.gateway()) + 1;
        let last = u32::from(self.subnet.broadcast()) - 1;
        let span = last.saturating_sub(first) + 1;
        for step in 1..=span {
            let offset = (self.cursor.wrapping_sub(first).wrapping_add(step)) % span;
            let addr = Ipv4Addr::from(first + offset);
            if let std::collections::btree_map::Entry::Vacant(slot) = self.held.entry(addr) {
                slot.insert(pod.to_owned());
                self.cursor = u32::from(addr);
                return Ok(addr);
            }
        }
        Err(IpamError::Exhausted(self.subnet))
    }

    /// Plans moving `pods` (`(name, address)`) into `subnet` (a lost subnet conflict, or
    /// a subnet changed while the daemon was down). A pod already inside keeps its address
    /// (of two claiming one, the first); the others get free addresses of `subnet` in
    /// order, and those that find none are `stuck`. Within the same subnet the search
    /// resumes at this allocator's cursor.
    pub fn renumber(&self, subnet: Ipv4Net, pods: &[(&str, Ipv4Addr)]) -> Renumbering {
        let mut ipam = PodIpam::new(subnet);
        if subnet == self.subnet {
            ipam.cursor = self.cursor;
        }
        // Every pod that stays is restored before any is moved, so none is moved onto an
        // address a later one still holds.
        let outside: Vec<usize> = (0..pods.len())
            .filter(|&i| ipam.restore(pods[i].1, pods[i].0).is_err())
            .collect();
        let (mut moves, mut stuck) = (Vec::new(), Vec::new());
        for i in outside {
            match ipam.allocate(pods[i].0, None) {
                Ok(addr) => moves.push((i, addr)),
                Err(_) => stuck.push(i),
            }
        }
        Renumbering { ipam, moves, stuck }
    }

    /// Frees `addr`; returns the pod that held it.
    pub fn release(&mut self, addr: Ipv4Addr) -> Option<String> {
        self.held.remove(&addr)
    }

    pub fn holder(&self, addr: Ipv4Addr) -> Option<&str> {
        self.held.get(&addr).map(String::as_str)
    }

    fn is_pod_address(&self, addr: Ipv4Addr) -> bool {
        self.subnet.contains(&addr)
            && addr != self.subnet.network()
            && addr != self.gateway()
            && addr != self.subnet.broadcast()
    }

    fn claim(&mut self, addr: Ipv4Addr, pod: &str) -> Result<(), IpamError> {
        if !self.is_pod_address(addr) {
            return Err(IpamError::OutOfRange {
                addr,
                subnet: self.subnet,
            });
        }
        match self.held.get(&addr) {
            Some(holder) if holder != pod => Err(IpamError::InUse {
                addr,
                holder: holder.clone(),
            }),
            _ => {
                self.held.insert(addr, pod.to_owned());
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ipam(s: &str) -> PodIpam {
        PodIpam::new(s.parse().unwrap())
    }

    #[test]
    fn skips_reserved_and_moves_on_after_release() {
        let mut a = ipam("10.244.1.0/29");
        assert_eq!(a.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        let got: Vec<_> = (0..5)
            .map(|i| a.allocate(&format!("p{i}"), None).unwrap())
            .collect();
        assert_eq!(got.first(), Some(&Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 244, 1, 6)));
        assert_eq!(
            a.allocate("p5", None),
            Err(IpamError::Exhausted("10.244.1.0/29".parse().unwrap()))
        );
        assert_eq!(
            a.release(Ipv4Addr::new(10, 244, 1, 3)).as_deref(),
            Some("p1")
        );
        assert_eq!(a.allocate("p6", None), Ok(Ipv4Addr::new(10, 244, 1, 3)));
    }

    #[test]
    fn renumber_keeps_those_inside_moves_the_rest_and_reports_who_finds_no_room() {
        let a = ipam("10.244.1.0/24");
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        // A /29 has pod addresses .2-.6; .3 is taken by a pod already inside.
        let pods = [
            ("a", ip("10.244.1.2")),
            ("b", ip("10.244.9.3")),
            ("c", ip("10.244.1.3")),
            ("d", ip("10.244.1.4")),
            ("e", ip("10.244.1.5")),
            ("f", ip("10.244.1.6")),
            ("g", ip("10.244.1.7")),
        ];
        let plan = a.renumber("10.244.9.0/29".parse().unwrap(), &pods);
        // b keeps .3; the others move into .2, .4, .5, .6 in order; two find no room.
        assert_eq!(
            plan.moves,
            [
                (0, ip("10.244.9.2")),
                (2, ip("10.244.9.4")),
                (3, ip("10.244.9.5")),
                (4, ip("10.244.9.6")),
            ]
        );
        assert_eq!(plan.stuck, [5, 6]);
        assert_eq!(plan.ipam.holder(ip("10.244.9.3")), Some("b"));
        assert_eq!(plan.ipam.holder(ip("10.244.9.6")), Some("e"));

        // Within the same subnet, pods inside stay and the cursor carries over.
        let mut same = ipam("10.244.1.0/24");
        same.allocate("x", Some(ip("10.244.1.9"))).unwrap();
        same.set_cursor(ip("10.244.1.9"));
        let plan = same.renumber(
            same.subnet(),
            &[("x", ip("10.244.1.9")), ("y", ip("10.1.1.1"))],
        );
        assert_eq!(plan.moves, [(1, ip("10.244.1.10"))]);
        assert!(plan.stuck.is_empty());
    }

    #[test]
    fn released_address_is_reused_last() {
        let mut a = ipam("10.244.1.0/24");
        let first = a.allocate("a", None).unwrap();
        a.release(first);
        assert_ne!(a.allocate("b", None).unwrap(), first);
    }

    #[test]
    fn requested_addresses_are_checked() {
        let mut a = ipam("10.244.1.0/24");
        assert_eq!(
            a.allocate("a", Some(Ipv4Addr::new(10, 244, 1, 50))),
            Ok(Ipv4Addr::new(10, 244, 1, 50))
        );
        assert!(matches!(
            a.allocate("b", Some(Ipv4Addr::new(10, 244, 1, 50))),
            Err(IpamError::InUse { .. })
        ));
        for reserved in [
            [10, 244, 1, 0],
            [10, 244, 1, 1],
            [10, 244, 1, 255],
            [10, 244, 2, 5],
        ] {
            assert!(matches!(
                a.allocate("c", Some(Ipv4Addr::from(reserved))),
                Err(IpamError::OutOfRange { .. })
            ));
        }
    }

    #[test]
    fn restored_state_is_never_handed_out_again() {
        let mut a = ipam("10.244.1.0/24");
        a.restore(Ipv4Addr::new(10, 244, 1, 2), "old").unwrap();
        a.restore(Ipv4Addr::new(10, 244, 1, 3), "old2").unwrap();
        a.set_cursor(Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(a.allocate("new", None), Ok(Ipv4Addr::new(10, 244, 1, 4)));
    }

    proptest! {
        /// Whatever sequence of allocations and releases, no address is ever held twice
        /// and no reserved address is ever handed out.
        #[test]
        fn never_double_allocates(ops in proptest::collection::vec((any::<bool>(), 0usize..16), 1..200)) {
            let mut a = ipam("10.244.1.0/28");
            let mut live: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
            for (i, (alloc, pick)) in ops.into_iter().enumerate() {
                if alloc {
                    let pod = format!("p{i}");
                    if let Ok(addr) = a.allocate(&pod, None) {
                        prop_assert!(live.insert(addr, pod).is_none());
                        prop_assert!(a.is_pod_address(addr));
                    } else {
                        prop_assert_eq!(live.len(), 13);
                    }
                } else if let Some(addr) = live.keys().nth(pick % live.len().max(1)).copied() {
                    live.remove(&addr);
                    a.release(addr);
                }
            }
        }
    }
}
