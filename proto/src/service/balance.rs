//! The balancing decision of one Service port: which backend a new connection (TCP) or a
//! new flow (UDP) goes to.
//!
//! A [`Balancer`] is built from a [`ResolvedService`] and one of its ports whenever the
//! table changes, carrying over what it can from the balancer it replaces (the
//! round-robin position, affinity entries of backends still present, the Maglev table if
//! the backends did not change), so a table update that did not touch a Service changes
//! nothing about where its clients go.
//!
//! Health and the count of active connections live in the shell (they change per
//! connection, outside the table's life); `pick` asks for them through closures.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::aging::AgingMap;
use super::hash::client_hash;
use super::maglev::MaglevTable;
use super::spec::{Algorithm, SessionAffinity};
use super::table::ResolvedService;

/// Index of a backend in [`Balancer::backends`].
pub type BackendIndex = usize;

/// Most ClientIP affinity entries one Service port keeps. Each entry is a client IP; a
/// flood of source addresses evicts the least recently used instead of growing memory
/// (about 100 bytes an entry: 6.5 MB at most per port). Clients evicted early simply pick
/// again.
pub const AFFINITY_CAPACITY: usize = 65_536;

/// Balancing state of one port of one Service.
#[derive(Debug, Clone)]
pub struct Balancer {
    algorithm: Algorithm,
    /// Maglev hashes the client IP alone under ClientIP affinity, IP and port otherwise.
    hash_port: bool,
    /// Sorted, distinct.
    backends: Vec<SocketAddrV4>,
    /// Index of the backend round robin considers first.
    rr_next: usize,
    /// `Algorithm::Maglev` only, built on the first pick; shared with the balancer it was
    /// carried over from when the backends did not change.
    maglev: Option<Arc<MaglevTable>>,
    /// ClientIP affinity for round robin and least connections (Maglev is sticky by
    /// itself): client IP → its backend, forgotten after the Service's timeout.
    affinity: Option<AgingMap<Ipv4Addr, SocketAddrV4>>,
}

impl Balancer {
    /// The balancer of `service.ports[port]`, carrying state over from `previous` (the
    /// balancer of the same Service port in the table before). `None` if there is no
    /// such port.
    pub fn new(
        service: &ResolvedService,
        port: usize,
        previous: Option<&Balancer>,
    ) -> Option<Self> {
        Self::with_capacity(service, port, previous, AFFINITY_CAPACITY)
    }

    /// [`Balancer::new`] with an affinity table of `capacity` entries.
    pub fn with_capacity(
        service: &ResolvedService,
        port: usize,
        previous: Option<&Balancer>,
        capacity: usize,
    ) -> Option<Self> {
        let port = service.ports.get(port)?;
        let mut backends: Vec<SocketAddrV4> =
            service.endpoints.iter().map(|e| e.addr(port)).collect();
        backends.sort_unstable();
        backends.dedup();
        let client_ip = service.affinity == SessionAffinity::ClientIp;
        let algorithm = service.algorithm;
        let same_backends = previous.is_some_and(|p| p.backends == backends);

        // A Maglev table costs ~0.5 ms and tens of kB: it is carried over while the
        // backends stay, and otherwise built on the first pick, so a rebuild of ten
        // thousand Services costs nothing for those no client uses.
        let maglev = previous
            .filter(|_| algorithm == Algorithm::Maglev && same_backends)
            .and_then(|p| p.maglev.clone());

        let timeout = Duration::from_secs(u64::from(service.affinity_timeout_s));
        let affinity = (client_ip && algorithm != Algorithm::Maglev).then(|| {
            let mut table = match previous.and_then(|p| p.affinity.clone()) {
                Some(old) if old.capacity() == capacity => old,
                _ => AgingMap::new(capacity, timeout),
            };
            table.set_idle(timeout);
            if !same_backends {
                table.retain(|_, b| backends.binary_search(b).is_ok(), |_, _| {});
            }
            table
        });

        // Round robin continues with the backend that was next, or the first after it in
        // address order if it is gone.
        let rr_next = match previous {
            Some(p) if same_backends => p.rr_next,
            Some(p) => match p.backends.get(p.rr_next) {
                Some(next) => match backends.binary_search(next) {
                    Ok(i) | Err(i) => i,
                },
                None => 0,
            },
            None => 0,
        };
        let rr_next = if backends.is_empty() {
            0
        } else {
            rr_next % backends.len()
        };
        Some(Balancer {
            algorithm,
            hash_port: !client_ip,
            backends,
            rr_next,
            maglev,
            affinity,
        })
    }

    /// The backends of this port (each endpoint's address for the port), sorted and
    /// distinct. Indices in and out of `pick` refer to this.
    pub fn backends(&self) -> &[SocketAddrV4] {
        &self.backends
    }

    pub fn index_of(&self, backend: SocketAddrV4) -> Option<BackendIndex> {
        self.backends.binary_search(&backend).ok()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Client IPs with a live affinity entry.
    pub fn affinity_entries(&self) -> usize {
        self.affinity.as_ref().map_or(0, |a| a.len())
    }

    /// The Maglev table, for `Algorithm::Maglev`, once built (by the first pick, or
    /// [`Balancer::maglev_table`]).
    pub fn maglev(&self) -> Option<&Arc<MaglevTable>> {
        self.maglev.as_ref()
    }

    /// The Maglev table of these backends, built now if it was not yet.
    pub fn maglev_table(&mut self) -> &Arc<MaglevTable> {
        let backends = &self.backends;
        self.maglev
            .get_or_insert_with(|| Arc::new(MaglevTable::new(backends.iter().copied())))
    }

    /// Picks a backend for a new connection or flow from `client`, among the backends
    /// for which `usable` is true; `active` gives a backend's active connections (for
    /// least connections). `None` iff no backend is usable.
    ///
    /// - Round robin: the first usable backend at or after the round-robin position.
    /// - Least connections: the usable backend with the fewest active connections; ties
    ///   go to the first in round-robin order.
    /// - Maglev: the client's slot (hash of IP, or IP and port); an unusable backend's
    ///   slot falls to the next usable one, the same way on every node.
    /// - ClientIP affinity (round robin and least connections): a client IP whose last
    ///   pick was less than the timeout ago gets the same backend if it is still usable;
    ///   otherwise it picks as above and the new backend is remembered.
    pub fn pick(
        &mut self,
        client: SocketAddrV4,
        now: Instant,
        usable: impl Fn(BackendIndex) -> bool,
        active: impl Fn(BackendIndex) -> u64,
    ) -> Option<BackendIndex> {
        if let Some(table) = &mut self.affinity {
            // Cheap when nothing is due (one look at the oldest entry), so expired
            // entries leave as time passes rather than only when the table is full.
            table.expire(now, |_, _| {});
        }
        if let Some(table) = &mut self.affinity
            && let Some(&mut backend) = table.touch(client.ip(), now)
            && let Ok(i) = self.backends.binary_search(&backend)
            && usable(i)
        {
            return Some(i);
        }
        let picked = match self.algorithm {
            Algorithm::RoundRobin => self.round_robin(&usable, |_| 0),
            Algorithm::LeastConn => self.round_robin(&usable, &active),
            Algorithm::Maglev => {
                let port = self.hash_port.then_some(client.port());
                let hash = client_hash(*client.ip(), port);
                self.maglev_table().lookup_usable(hash, &usable)
            }
        }?;
        if let Some(table) = &mut self.affinity {
            table.insert(*client.ip(), self.backends[picked], now);
        }
        Some(picked)
    }

    /// Picks with the proxy's retry and fail-open policy: among `healthy` backends not in
    /// `tried` (the backends this connection already failed to reach); if no backend is
    /// healthy at all, among every backend not tried. Health can be wrong (a check port
    /// blocked, every pod slow to start at once), and trying a backend believed down
    /// costs one refused connect, where refusing the client is a certain failure (Envoy's
    /// "panic mode" reasons the same way).
    pub fn choose(
        &mut self,
        client: SocketAddrV4,
        now: Instant,
        healthy: impl Fn(BackendIndex) -> bool,
        tried: &[BackendIndex],
        active: impl Fn(BackendIndex) -> u64,
    ) -> Option<BackendIndex> {
        let any_healthy = (0..self.backends.len()).any(&healthy);
        if any_healthy {
            self.pick(client, now, |i| healthy(i) && !tried.contains(&i), active)
        } else {
            self.pick(client, now, |i| !tried.contains(&i), active)
        }
    }

    /// Round robin, or, with real `load`, least connections with round-robin ties: the
    /// first usable backend of least load, scanning from the round-robin position.
    fn round_robin(
        &mut self,
        usable: impl Fn(BackendIndex) -> bool,
        load: impl Fn(BackendIndex) -> u64,
    ) -> Option<BackendIndex> {
        let n = self.backends.len();
        let mut best: Option<(u64, BackendIndex)> = None;
        for k in 0..n {
            let i = (self.rr_next + k) % n;
            if !usable(i) {
                continue;
            }
            let l = load(i);
            if best.is_none_or(|(b, _)| l < b) {
                best = Some((l, i));
                if l == 0 {
                    break;
                }
            }
        }
        let (_, i) = best?;
        self.rr_next = (i + 1) % n;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::spec::{HealthCheck, Protocol, ServiceType};
    use crate::service::table::{Endpoint, ResolvedPort, ServiceKey, ServiceStatus};
    use std::collections::BTreeMap;

    fn ep(last: u8) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(10, 244, 1, last),
            port: None,
            node: Some("n1".into()),
            pod: Some(format!("p{last}")),
        }
    }

    fn svc(algorithm: Algorithm, affinity: SessionAffinity, eps: &[u8]) -> ResolvedService {
        ResolvedService {
            key: ServiceKey::new("default", "web"),
            kind: ServiceType::ClusterIp,
            cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 10)),
            external_ip: None,
            external_name: None,
            ports: vec![ResolvedPort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: 8080,
                node_port: None,
                proxy_protocol: false,
            }],
            endpoints: eps.iter().map(|&l| ep(l)).collect(),
            algorithm,
            affinity,
            affinity_timeout_s: 60,
            health: HealthCheck::default(),
            status: ServiceStatus::Active,
        }
    }

    fn client(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, last), port)
    }

    fn addr(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, last), 8080)
    }

    fn all(_: BackendIndex) -> bool {
        true
    }

    fn idle(_: BackendIndex) -> u64 {
        0
    }

    #[test]
    fn backends_are_each_endpoints_address_for_the_port() {
        let mut s = svc(Algorithm::RoundRobin, SessionAffinity::None, &[3, 2]);
        s.endpoints.push(Endpoint {
            ip: Ipv4Addr::new(192, 0, 2, 1),
            port: Some(9000),
            node: None,
            pod: None,
        });
        let b = Balancer::new(&s, 0, None).unwrap();
        assert_eq!(
            b.backends(),
            &[addr(2), addr(3), "192.0.2.1:9000".parse().unwrap()]
        );
        assert!(Balancer::new(&s, 1, None).is_none(), "no second port");
    }

    #[test]
    fn round_robin_takes_turns_and_skips_unusable_backends() {
        let s = svc(Algorithm::RoundRobin, SessionAffinity::None, &[1, 2, 3]);
        let mut b = Balancer::new(&s, 0, None).unwrap();
        let now = Instant::now();
        let picks: Vec<_> = (0..6)
            .map(|i| b.pick(client(1, i), now, all, idle).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        let picks: Vec<_> = (0..4)
            .map(|i| b.pick(client(1, i), now, |i| i != 1, idle).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
        assert_eq!(b.pick(client(1, 9), now, |_| false, idle), None);
    }

    #[test]
    fn least_conn_prefers_the_fewest_active_and_breaks_ties_in_turn() {
        let s = svc(Algorithm::LeastConn, SessionAffinity::None, &[1, 2, 3]);
        let mut b = Balancer::new(&s, 0, None).unwrap();
        let now = Instant::now();
        let mut active = [5u64, 0, 0];
        let mut picks = Vec::new();
        for i in 0..4 {
            let p = b.pick(client(1, i), now, all, |k| active[k]).unwrap();
            active[p] += 1;
            picks.push(p);
        }
        // 1 and 2 tie at 0, then at 1, alternating; 0 holds 5 and is never chosen.
        assert_eq!(picks, vec![1, 2, 1, 2]);
        let p = b
            .pick(client(1, 9), now, |k| k == 0, |k| active[k])
            .unwrap();
        assert_eq!(p, 0, "the only usable backend, however loaded");
    }

    #[test]
    fn maglev_sends_a_client_to_the_same_backend_every_time_and_on_every_node() {
        let s = svc(Algorithm::Maglev, SessionAffinity::None, &[1, 2, 3, 4]);
        let mut node1 = Balancer::new(&s, 0, None).unwrap();
        let mut shuffled = s.clone();
        shuffled.endpoints.reverse();
        let mut node2 = Balancer::new(&shuffled, 0, None).unwrap();
        let now = Instant::now();
        let mut seen = [0usize; 4];
        for port in 0..2000 {
            let c = client(7, port);
            let a = node1.pick(c, now, all, idle).unwrap();
            assert_eq!(node1.pick(c, now, all, idle), Some(a));
            assert_eq!(node2.pick(c, now, all, idle), Some(a));
            seen[a] += 1;
        }
        // Without ClientIP affinity the port is part of the key: one IP spreads.
        assert!(seen.iter().all(|&n| n > 350), "{seen:?}");
    }

    #[test]
    fn maglev_with_client_ip_affinity_hashes_the_ip_alone() {
        let s = svc(Algorithm::Maglev, SessionAffinity::ClientIp, &[1, 2, 3, 4]);
        let mut b = Balancer::new(&s, 0, None).unwrap();
        let now = Instant::now();
        for ip in 1..50 {
            let first = b.pick(client(ip, 1000), now, all, idle);
            for port in 1001..1010 {
                assert_eq!(b.pick(client(ip, port), now, all, idle), first);
            }
        }
        assert_eq!(b.affinity_entries(), 0, "Maglev needs no affinity table");
    }

    #[test]
    fn maglev_moves_an_unusable_backends_clients_and_only_those() {
        let s = svc(Algorithm::Maglev, SessionAffinity::None, &[1, 2, 3]);
        let mut b = Balancer::new(&s, 0, None).unwrap();
        let now = Instant::now();
        for port in 0..500 {
            let c = client(9, port);
            let before = b.pick(c, now, all, idle).unwrap();
            let after = b.pick(c, now, |i| i != 1, idle).unwrap();
            assert_ne!(after, 1);
            if before != 1 {
                assert_eq!(after, before);
            }
        }
    }

    #[test]
    fn client_ip_affinity_sticks_until_the_timeout_or_the_backend_is_unusable() {
        let s = svc(Algorithm::RoundRobin, SessionAffinity::ClientIp, &[1, 2, 3]);
        let mut b = Balancer::new(&s, 0, None).unwrap();
        let t = Instant::now();
        let s1 = Duration::from_secs(1);
        let first = b.pick(client(1, 1000), t, all, idle).unwrap();
        let other = b.pick(client(2, 1000), t, all, idle).unwrap();
        assert_ne!(first, other);
        // Every connection within 60 s of the last keeps the backend.
        for k in 1..5 {
            assert_eq!(
                b.pick(client(1, 1000 + k), t + 50 * s1 * k as u32, all, idle),
                Some(first)
            );
        }
        // The backend goes down: the client moves, and stays on the new one.
        let moved = b
            .pick(client(1, 2000), t + 201 * s1, |i| i != first, idle)
            .unwrap();
        assert_ne!(moved, first);
        assert_eq!(
            b.pick(client(1, 2001), t + 202 * s1, all, idle),
            Some(moved)
        );
        // 60 s idle: round robin again.
        let rr_next = b.rr_next;
        assert_eq!(
            b.pick(client(1, 2002), t + 262 * s1, all, idle),
            Some(rr_next)
        );
    }

    #[test]
    fn affinity_memory_is_bounded_under_a_flood_of_client_ips() {
        let s = svc(Algorithm::LeastConn, SessionAffinity::ClientIp, &[1, 2]);
        let mut b = Balancer::with_capacity(&s, 0, None, 1000).unwrap();
        let t = Instant::now();
        let regular = SocketAddrV4::new(Ipv4Addr::new(172, 16, 0, 1), 1);
        let home = b.pick(regular, t, all, idle).unwrap();
        for i in 0..100_000u32 {
            let now = t + Duration::from_micros(u64::from(i));
            let flood = SocketAddrV4::new(Ipv4Addr::from(0x0b00_0000 + i), 1);
            b.pick(flood, now, all, idle);
            if i % 500 == 0 {
                assert_eq!(b.pick(regular, now, all, idle), Some(home));
            }
        }
        assert_eq!(b.affinity_entries(), 1000);
    }

    #[test]
    fn choose_retries_elsewhere_and_fails_open_only_when_nothing_is_healthy() {
        let s = svc(Algorithm::RoundRobin, SessionAffinity::None, &[1, 2, 3]);
        let mut b = Balancer::new(&s, 0, None).unwrap();
        let now = Instant::now();
        let c = client(1, 1);
        // 0 is down; 1 was tried and failed: 2.
        assert_eq!(b.choose(c, now, |i| i != 0, &[1], idle), Some(2));
        // Every healthy backend tried: no fail-open to the down one.
        assert_eq!(b.choose(c, now, |i| i != 0, &[1, 2], idle), None);
        // Nothing healthy: every untried backend is a candidate.
        assert_eq!(b.choose(c, now, |_| false, &[0], idle), Some(1));
        assert_eq!(b.choose(c, now, |_| false, &[0, 1, 2], idle), None);
    }

    #[test]
    fn an_update_that_keeps_the_backends_keeps_every_decision() {
        let now = Instant::now();
        let s = svc(Algorithm::RoundRobin, SessionAffinity::ClientIp, &[1, 2, 3]);
        let mut old = Balancer::new(&s, 0, None).unwrap();
        let a = old.pick(client(1, 1), now, all, idle).unwrap();
        old.pick(client(2, 1), now, all, idle);
        let mut new = Balancer::new(&s, 0, Some(&old)).unwrap();
        assert_eq!(new.rr_next, old.rr_next);
        assert_eq!(new.pick(client(1, 2), now, all, idle), Some(a));
        assert_eq!(
            new.pick(client(3, 1), now, all, idle),
            old.clone().pick(client(3, 1), now, all, idle)
        );

        let m = svc(Algorithm::Maglev, SessionAffinity::None, &[1, 2, 3]);
        let mut old = Balancer::new(&m, 0, None).unwrap();
        assert!(old.maglev().is_none(), "built before any client needs it");
        let first = old.pick(client(1, 1), now, all, idle);
        assert!(old.maglev().is_some(), "the first pick builds the table");
        let mut new = Balancer::new(&m, 0, Some(&old)).unwrap();
        assert!(
            Arc::ptr_eq(old.maglev().unwrap(), new.maglev().unwrap()),
            "the Maglev table is reused, not rebuilt"
        );
        assert_eq!(new.pick(client(1, 1), now, all, idle), first);
        let changed = svc(Algorithm::Maglev, SessionAffinity::None, &[1, 2]);
        let mut rebuilt = Balancer::new(&changed, 0, Some(&old)).unwrap();
        assert!(
            rebuilt.maglev().is_none(),
            "other backends: a table of its own"
        );
        assert_eq!(rebuilt.maglev_table().backends(), &[addr(1), addr(2)]);
    }

    #[test]
    fn an_update_that_removes_a_backend_forgets_only_its_clients() {
        let now = Instant::now();
        let s = svc(Algorithm::RoundRobin, SessionAffinity::ClientIp, &[1, 2, 3]);
        let mut old = Balancer::new(&s, 0, None).unwrap();
        let mut home = BTreeMap::new();
        for c in 1..=6 {
            let i = old.pick(client(c, 1), now, all, idle).unwrap();
            home.insert(c, old.backends()[i]);
        }
        // Round robin is at backend 0 (10.244.1.1) next; remove 10.244.1.2.
        let smaller = svc(Algorithm::RoundRobin, SessionAffinity::ClientIp, &[1, 3]);
        let mut new = Balancer::new(&smaller, 0, Some(&old)).unwrap();
        assert_eq!(
            new.affinity_entries(),
            4,
            "the two clients of .2 are forgotten"
        );
        for (c, was) in &home {
            let i = new.pick(client(*c, 2), now, all, idle).unwrap();
            let now_at = new.backends()[i];
            if *was != addr(2) {
                assert_eq!(now_at, *was, "client {c} keeps its backend");
            }
        }
    }

    #[test]
    fn round_robin_resumes_at_the_backend_that_was_next() {
        let now = Instant::now();
        let s = svc(Algorithm::RoundRobin, SessionAffinity::None, &[1, 2, 3, 4]);
        let mut old = Balancer::new(&s, 0, None).unwrap();
        old.pick(client(1, 1), now, all, idle);
        old.pick(client(1, 2), now, all, idle);
        // Next is .3; .1 leaves, .5 joins: the next pick is still .3.
        let changed = svc(Algorithm::RoundRobin, SessionAffinity::None, &[2, 3, 4, 5]);
        let mut new = Balancer::new(&changed, 0, Some(&old)).unwrap();
        let next = new.pick(client(1, 3), now, all, idle).unwrap();
        assert_eq!(new.backends()[next], addr(3));
        // .3 itself leaves: the first after it in address order, .4.
        let mut old = new;
        old.rr_next = old.index_of(addr(3)).unwrap();
        let changed = svc(Algorithm::RoundRobin, SessionAffinity::None, &[2, 4, 5]);
        let mut new = Balancer::new(&changed, 0, Some(&old)).unwrap();
        let next = new.pick(client(1, 4), now, all, idle).unwrap();
        assert_eq!(new.backends()[next], addr(4));
    }

    #[test]
    fn no_backends_no_pick() {
        let now = Instant::now();
        for alg in [
            Algorithm::RoundRobin,
            Algorithm::LeastConn,
            Algorithm::Maglev,
        ] {
            let s = svc(alg, SessionAffinity::ClientIp, &[]);
            let mut b = Balancer::new(&s, 0, None).unwrap();
            assert_eq!(b.pick(client(1, 1), now, all, idle), None);
            assert_eq!(b.choose(client(1, 1), now, all, &[], idle), None);
        }
    }
}
