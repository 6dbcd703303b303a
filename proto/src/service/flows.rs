//! The UDP flow table of one frontend: which backend each client address's datagrams go
//! to, so replies and follow-up datagrams of one exchange stay on one backend.
//!
//! - A flow idle (no datagram either way) for the idle timeout is gone ([`FlowTable::expire`]).
//! - The table is bounded: a flood of source addresses evicts the least recently used
//!   flow rather than growing memory (or file descriptors, in the shell, which keeps a
//!   socket per flow).
//! - [`FlowTable::retain`] drops every flow whose backend left the Service or went down,
//!   at once: the next datagram of that client picks a backend again. kube-proxy's UDP
//!   conntrack entries outliving their endpoint (datagrams blackholed to a deleted pod
//!   until the entry times out — kubernetes#59368) is the bug this prevents.
//!
//! Generic over what the shell keeps per flow (its socket and reply task), which is
//! dropped when the flow is.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use super::aging::AgingMap;

/// Default idle timeout of a UDP flow, as conntrack's `nf_conntrack_udp_timeout_stream`
/// (two-way UDP traffic; 30 s for one-way).
pub const UDP_IDLE: Duration = Duration::from_secs(30);
/// Default bound of flows per frontend. The shell holds a socket per flow: 16384 file
/// descriptors per frontend at most.
pub const UDP_MAX_FLOWS: usize = 16_384;

/// One flow: the backend it goes to, and the shell's state for it.
#[derive(Debug)]
pub struct Flow<T> {
    pub backend: SocketAddrV4,
    pub value: T,
}

/// Client address → flow.
#[derive(Debug)]
pub struct FlowTable<T> {
    flows: AgingMap<SocketAddrV4, Flow<T>>,
}

impl<T> FlowTable<T> {
    pub fn new(capacity: usize, idle: Duration) -> Self {
        FlowTable {
            flows: AgingMap::new(capacity, idle),
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.len() == 0
    }

    /// The client's flow if it is live at `now`, marked used (a datagram either way).
    /// Does not allocate.
    pub fn touch(&mut self, client: SocketAddrV4, now: Instant) -> Option<&mut Flow<T>> {
        self.flows.touch(&client, now)
    }

    /// The client's live flow, not marked used.
    pub fn get(&self, client: SocketAddrV4, now: Instant) -> Option<&Flow<T>> {
        self.flows.get(&client, now)
    }

    /// Starts a flow; returns the one it displaced (the client's previous, idle flow, or
    /// the least recently used one if the table was full).
    pub fn insert(
        &mut self,
        client: SocketAddrV4,
        backend: SocketAddrV4,
        value: T,
        now: Instant,
    ) -> Option<(SocketAddrV4, Flow<T>)> {
        self.flows.insert(client, Flow { backend, value }, now)
    }

    pub fn remove(&mut self, client: SocketAddrV4) -> Option<Flow<T>> {
        self.flows.remove(&client)
    }

    /// Ends every flow idle for the idle timeout at `now`, handing each to `removed`.
    pub fn expire(&mut self, now: Instant, removed: impl FnMut(SocketAddrV4, Flow<T>)) {
        self.flows.expire(now, removed)
    }

    /// Ends every flow whose backend `valid` rejects (left the Service, or down), handing
    /// each to `removed`.
    pub fn retain(
        &mut self,
        mut valid: impl FnMut(SocketAddrV4) -> bool,
        removed: impl FnMut(SocketAddrV4, Flow<T>),
    ) {
        self.flows.retain(|_, f| valid(f.backend), removed)
    }

    /// (client, backend) of every flow, live or not yet expired.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddrV4, SocketAddrV4)> + '_ {
        self.flows.iter().map(|(c, f)| (*c, f.backend))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::net::Ipv4Addr;
    use std::rc::Rc;

    fn c(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 1), port)
    }

    fn b(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, last), 53)
    }

    /// Counts how many flow values are alive: dropping a flow must drop its value (the
    /// shell's socket).
    struct Live(Rc<Cell<usize>>);
    impl Live {
        fn new(n: &Rc<Cell<usize>>) -> Self {
            n.set(n.get() + 1);
            Live(n.clone())
        }
    }
    impl Drop for Live {
        fn drop(&mut self) {
            self.0.set(self.0.get() - 1);
        }
    }

    #[test]
    fn a_flow_lives_while_datagrams_flow_and_expires_when_idle() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let live = Rc::new(Cell::new(0));
        let mut t = FlowTable::new(100, UDP_IDLE);
        t.insert(c(1), b(1), Live::new(&live), s(0));
        t.insert(c(2), b(2), Live::new(&live), s(0));
        for n in (5..=60).step_by(5) {
            assert_eq!(t.touch(c(1), s(n)).map(|f| f.backend), Some(b(1)));
            t.expire(s(n), |_, _| {});
        }
        assert_eq!(t.len(), 1, "c(2) idle 30 s: gone; c(1) kept alive");
        assert_eq!(live.get(), 1, "the expired flow's socket is dropped");
        assert!(t.get(c(2), s(60)).is_none());
        assert!(t.touch(c(1), s(90)).is_none(), "30 s idle at 90");
    }

    #[test]
    fn flows_to_a_backend_that_left_or_went_down_end_at_once() {
        let now = Instant::now();
        let live = Rc::new(Cell::new(0));
        let mut t = FlowTable::new(100, UDP_IDLE);
        for port in 1..=10 {
            let backend = b(1 + (port % 2) as u8);
            t.insert(c(port), backend, Live::new(&live), now);
        }
        let mut ended = Vec::new();
        t.retain(
            |backend| backend != b(2),
            |client, flow| ended.push((client, flow.backend)),
        );
        assert_eq!(ended.len(), 5);
        assert!(ended.iter().all(|&(_, backend)| backend == b(2)));
        assert_eq!(live.get(), 5);
        // The next datagram of an ended flow finds no flow, so it picks again.
        let (client, _) = ended[0];
        assert!(t.touch(client, now).is_none());
        assert!(t.iter().all(|(_, backend)| backend == b(1)));
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_least_recently_used() {
        let t0 = Instant::now();
        let live = Rc::new(Cell::new(0));
        let mut t = FlowTable::new(3, UDP_IDLE);
        for port in 1..=3 {
            t.insert(
                c(port),
                b(1),
                Live::new(&live),
                t0 + Duration::from_millis(u64::from(port)),
            );
        }
        t.touch(c(1), t0 + Duration::from_millis(10));
        let evicted = t.insert(c(4), b(1), Live::new(&live), t0 + Duration::from_millis(11));
        assert_eq!(evicted.map(|(client, _)| client), Some(c(2)));
        assert_eq!(t.len(), 3);
        assert_eq!(live.get(), 3);
        for port in 100..10_000 {
            t.insert(
                c(port),
                b(1),
                Live::new(&live),
                t0 + Duration::from_millis(u64::from(port)),
            );
        }
        assert_eq!(t.len(), 3);
        assert_eq!(live.get(), 3);
    }
}
