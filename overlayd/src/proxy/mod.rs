//! The Service proxy: the I/O shell that listens on Service addresses (VIPs, node ports,
//! external IPs) and relays connections and datagrams to backends. Every decision comes
//! from `overlayd_proto::service` (which backend: `balance`; whether it is usable:
//! `health`; which UDP flows live: `flows`; which listeners: `frontend`); this module
//! binds, accepts, connects, splices and counts.
//!
//! The daemon calls [`Proxy::update`] with every new [`ServiceTable`] and the frontends
//! this node must serve. The update builds a new [`Snapshot`] off the hot path (balancers
//! carried over from the old one) and swaps it in whole (arc-swap); then it binds the
//! listeners that are new and closes the ones that are gone. Closing a listener never
//! touches established connections: each lives in its own task with its own sockets, so
//! a removed Service or backend drains.
//!
//! Per-backend counters (active, connections, failed connects, bytes each way) are atomics
//! kept per (Service port, backend) across snapshots, like the tunnel's per-peer counters;
//! [`Proxy::report`] returns them with each backend's health for `overlayd services`.

mod checks;
mod relay;
mod tcp;
mod udp;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use overlayd_proto::service::balance::{BackendIndex, Balancer};
use overlayd_proto::service::flows::{UDP_IDLE, UDP_MAX_FLOWS};
use overlayd_proto::service::frontend::{Frontend, FrontendAddr};
use overlayd_proto::service::health::{
    BackendKey, HealthTable, Outcome, Transition, health_targets,
};
use overlayd_proto::service::{HealthCheck, Protocol, ResolvedPort, ServiceTable};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

pub use overlayd_proto::api::{
    BackendReport, BackendState, ListenerReport, PortKey, PortReport, ProxyReport,
};
pub use relay::RelayMode;

/// How the proxy relays and how patient it is with backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyConfig {
    /// `copy` (the default: measured faster on loopback, see docs/services.md) or
    /// `splice` (zero-copy through a pipe per direction).
    pub relay: RelayMode,
    /// The most bytes one relay step moves: the size of each worker thread's scratch
    /// buffer (copy), or each pipe's capacity (splice, which holds up to this much per
    /// direction of a busy connection).
    pub relay_chunk: usize,
    /// A connect to a backend not done within this fails (and counts against it).
    pub connect_timeout: Duration,
    /// Backends a connection tries before the client is reset.
    pub connect_tries: usize,
    /// SO_RCVBUF/SO_SNDBUF of relayed sockets; `None` leaves Linux's autotuning on (an
    /// explicit size turns it off).
    pub socket_buffer: Option<usize>,
    /// A UDP flow with no datagram either way for this long is ended.
    pub udp_idle: Duration,
    /// UDP flows per frontend at most (each holds a socket).
    pub udp_max_flows: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            relay: RelayMode::default(),
            relay_chunk: 256 * 1024,
            connect_timeout: Duration::from_millis(1500),
            connect_tries: 3,
            socket_buffer: None,
            udp_idle: UDP_IDLE,
            udp_max_flows: UDP_MAX_FLOWS,
        }
    }
}

/// Counters of one backend of one Service port.
#[derive(Debug, Default)]
pub struct BackendCounters {
    /// TCP connections being relayed or connecting, UDP flows open.
    pub active: AtomicU64,
    /// TCP connections established, UDP flows started.
    pub connections: AtomicU64,
    /// Refused or timed-out connects (TCP), ICMP-refused datagrams (UDP).
    pub failed_connects: AtomicU64,
    pub bytes_to_backend: AtomicU64,
    pub bytes_from_backend: AtomicU64,
}

/// Holds one `active` count of a backend while alive.
struct ActiveGuard(Arc<BackendCounters>);

impl ActiveGuard {
    fn new(counters: Arc<BackendCounters>) -> Self {
        counters.active.fetch_add(1, Relaxed);
        ActiveGuard(counters)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// One Service port in a snapshot: its balancer and its backends' counters. Shared by
/// every frontend of the port (VIP, node port, external IP), so they balance as one.
struct PortState {
    key: PortKey,
    port: ResolvedPort,
    balancer: Mutex<Balancer>,
    /// `balancer.backends()`, readable without the lock.
    backends: Vec<SocketAddrV4>,
    /// By backend index.
    counters: Vec<Arc<BackendCounters>>,
}

impl PortState {
    fn backend_key(&self, i: BackendIndex) -> BackendKey {
        BackendKey {
            protocol: self.key.protocol,
            addr: self.backends[i],
        }
    }

    /// Picks a backend for a connection or flow from `client`, none of `tried`, and
    /// counts it active at once, under the balancer's lock, so that least connections
    /// sees a burst of accepts spread rather than all on one backend.
    fn pick(
        &self,
        health: &Mutex<HealthTable>,
        client: SocketAddrV4,
        tried: &[BackendIndex],
    ) -> Option<(BackendIndex, ActiveGuard)> {
        let now = Instant::now();
        let mut balancer = lock(&self.balancer);
        let health = lock(health);
        let picked = balancer.choose(
            client,
            now,
            |i| health.usable(&self.backend_key(i), now),
            tried,
            |i| self.counters[i].active.load(Relaxed),
        )?;
        Some((picked, ActiveGuard::new(self.counters[picked].clone())))
    }
}

/// What the hot path reads: built whole on every update and swapped in.
struct Snapshot {
    ports: BTreeMap<PortKey, Arc<PortState>>,
    frontends: HashMap<FrontendAddr, Arc<PortState>>,
}

/// A listener the proxy holds (or failed to bind).
struct Listener {
    frontend: Frontend,
    /// The accept (TCP) or receive (UDP) task; `None` if binding failed.
    task: Option<AbortHandle>,
    tcp: Option<Arc<tokio::net::TcpListener>>,
    udp: Option<Arc<udp::UdpFrontend>>,
    error: Option<String>,
}

impl Drop for Listener {
    /// Stops serving at once. Aborting the task closes its socket only when the runtime
    /// next polls it; until then the kernel would still complete handshakes that nobody
    /// accepts. `shutdown(SHUT_RD)` on a listening socket stops it listening now (and
    /// resets what waits in its queue), so the port refuses from this moment.
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        if let Some(listener) = &self.tcp {
            let _ = socket2::SockRef::from(&**listener).shutdown(std::net::Shutdown::Read);
        }
        if let Some(udp) = &self.udp {
            // Each flow's reply task holds the frontend: end them, or they (and the
            // frontend's socket) would outlive it.
            udp.end_flows();
        }
    }
}

struct Inner {
    cfg: ProxyConfig,
    runtime: Handle,
    snapshot: ArcSwap<Snapshot>,
    /// Per (port, backend), across snapshots; a backend that left stays while it has
    /// active connections (draining).
    counters: Mutex<BTreeMap<(PortKey, SocketAddrV4), Arc<BackendCounters>>>,
    health: Mutex<HealthTable>,
    listeners: Mutex<BTreeMap<FrontendAddr, Listener>>,
    checks: Mutex<BTreeMap<BackendKey, (HealthCheck, AbortHandle)>>,
    /// Serialises updates (each reads the snapshot it replaces).
    updating: Mutex<()>,
    /// Told of every backend that goes up or down (the kernel data path follows health).
    health_events: tokio::sync::Notify,
}

/// Locks a mutex; a panic elsewhere while it was held leaves the data as it was, which
/// every user here can work with (counters, tables rebuilt on the next update).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The proxy. Cheap to clone; every clone is the same proxy.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

/// What an update did to the listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpdateOutcome {
    pub bound: Vec<FrontendAddr>,
    pub closed: Vec<FrontendAddr>,
    /// Listeners that could not be bound (address in use, say), with why; retried on
    /// the next update.
    pub failed: Vec<(FrontendAddr, String)>,
}

impl Proxy {
    /// A proxy with no Services. Must be called within a tokio runtime, on which it runs
    /// its tasks.
    pub fn new(cfg: ProxyConfig) -> Self {
        Proxy {
            inner: Arc::new(Inner {
                cfg,
                runtime: Handle::current(),
                snapshot: ArcSwap::from_pointee(Snapshot {
                    ports: BTreeMap::new(),
                    frontends: HashMap::new(),
                }),
                counters: Mutex::new(BTreeMap::new()),
                health: Mutex::new(HealthTable::new()),
                listeners: Mutex::new(BTreeMap::new()),
                checks: Mutex::new(BTreeMap::new()),
                updating: Mutex::new(()),
                health_events: tokio::sync::Notify::new(),
            }),
        }
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.inner.cfg
    }

    /// Serves `table` on `frontends` (from `overlayd_proto::service::frontend::frontends`
    /// for this node): swaps in new balancers, syncs health and its checks, binds new
    /// listeners and closes gone ones, and ends UDP flows whose backend left.
    pub fn update(
        &self,
        table: Arc<ServiceTable>,
        frontends: BTreeMap<FrontendAddr, Frontend>,
    ) -> UpdateOutcome {
        let inner = &self.inner;
        let _updating = lock(&inner.updating);
        let now = Instant::now();
        let old = inner.snapshot.load_full();

        // Balancers: one per Service port that has a frontend.
        let mut ports: BTreeMap<PortKey, Arc<PortState>> = BTreeMap::new();
        let mut by_frontend = HashMap::new();
        {
            let mut counters = lock(&inner.counters);
            for (addr, fe) in &frontends {
                let Some(svc) = table.get(&fe.service) else {
                    continue;
                };
                let Some(port) = svc.ports.get(fe.port) else {
                    continue;
                };
                let key = PortKey {
                    service: svc.key.clone(),
                    protocol: port.protocol,
                    port: port.port,
                };
                let state = match ports.get(&key) {
                    Some(state) => state.clone(),
                    None => {
                        let previous = old.ports.get(&key).map(|p| lock(&p.balancer).clone());
                        let Some(balancer) = Balancer::new(svc, fe.port, previous.as_ref()) else {
                            continue;
                        };
                        let backends = balancer.backends().to_vec();
                        let per_backend = backends
                            .iter()
                            .map(|b| counters.entry((key.clone(), *b)).or_default().clone())
                            .collect();
                        let state = Arc::new(PortState {
                            key: key.clone(),
                            port: port.clone(),
                            balancer: Mutex::new(balancer),
                            backends,
                            counters: per_backend,
                        });
                        ports.insert(key, state.clone());
                        state
                    }
                };
                by_frontend.insert(*addr, state);
            }
            // Counters of backends no longer served go once their last connection ends.
            counters.retain(|(key, backend), c| {
                ports
                    .get(key)
                    .is_some_and(|p| p.backends.binary_search(backend).is_ok())
                    || c.active.load(Relaxed) > 0
            });
        }
        inner.snapshot.store(Arc::new(Snapshot {
            ports,
            frontends: by_frontend,
        }));

        lock(&inner.health).sync(&health_targets(&table), now);
        checks::sync(inner);

        let outcome = self.sync_listeners(&frontends);
        inner.prune_udp_flows();
        outcome
    }

    fn sync_listeners(&self, frontends: &BTreeMap<FrontendAddr, Frontend>) -> UpdateOutcome {
        let inner = &self.inner;
        let mut outcome = UpdateOutcome::default();
        let mut listeners = lock(&inner.listeners);
        // Gone, or now bound differently (freebind): closed; dropping a Listener aborts
        // its task, which drops the socket. Accepted connections have their own tasks.
        listeners.retain(|addr, l| {
            let keep = frontends
                .get(addr)
                .is_some_and(|f| f.freebind == l.frontend.freebind);
            if !keep && l.task.is_some() {
                outcome.closed.push(*addr);
            }
            keep
        });
        for (addr, fe) in frontends {
            match listeners.get_mut(addr) {
                Some(l) if l.task.is_some() => {
                    l.frontend = fe.clone();
                    continue;
                }
                _ => {}
            }
            let listener = match addr.protocol {
                Protocol::Tcp => {
                    tcp::listen(inner, *addr, fe.freebind).map(|(task, tcp)| Listener {
                        frontend: fe.clone(),
                        task: Some(task),
                        tcp: Some(tcp),
                        udp: None,
                        error: None,
                    })
                }
                Protocol::Udp => {
                    udp::listen(inner, *addr, fe.freebind).map(|(task, udp)| Listener {
                        frontend: fe.clone(),
                        task: Some(task),
                        tcp: None,
                        udp: Some(udp),
                        error: None,
                    })
                }
            };
            let listener = match listener {
                Ok(l) => {
                    outcome.bound.push(*addr);
                    l
                }
                Err(e) => {
                    let why = format!("binding {addr}: {e}");
                    tracing::warn!(service = %fe.service, "{why}");
                    outcome.failed.push((*addr, why.clone()));
                    Listener {
                        frontend: fe.clone(),
                        task: None,
                        tcp: None,
                        udp: None,
                        error: Some(why),
                    }
                }
            };
            listeners.insert(*addr, listener);
        }
        outcome
    }

    /// Counters and health of every Service port, and the listeners.
    pub fn report(&self) -> ProxyReport {
        let inner = &self.inner;
        let now = Instant::now();
        let snap = inner.snapshot.load();
        let health = lock(&inner.health);
        let counters = lock(&inner.counters);
        let listeners = lock(&inner.listeners);

        let mut ports: BTreeMap<PortKey, PortReport> = BTreeMap::new();
        for (key, state) in &snap.ports {
            let balancer = lock(&state.balancer);
            ports.insert(
                key.clone(),
                PortReport {
                    key: key.clone(),
                    name: state.port.name.clone(),
                    target_port: Some(state.port.target_port),
                    algorithm: Some(balancer.algorithm()),
                    affinity_entries: balancer.affinity_entries(),
                    frontends: Vec::new(),
                    backends: Vec::new(),
                },
            );
        }
        for ((key, addr), c) in counters.iter() {
            let serving = snap
                .ports
                .get(key)
                .is_some_and(|p| p.backends.binary_search(addr).is_ok());
            let active = c.active.load(Relaxed);
            if !serving && active == 0 {
                continue;
            }
            let bkey = BackendKey {
                protocol: key.protocol,
                addr: *addr,
            };
            let status = health.status(&bkey, now);
            let state = match status {
                _ if !serving => BackendState::Draining,
                Some(s) if s.up => BackendState::Up,
                Some(s) if s.retrying => BackendState::Retrying,
                Some(_) => BackendState::Down,
                None => BackendState::Up,
            };
            let report = ports.entry(key.clone()).or_insert_with(|| PortReport {
                key: key.clone(),
                name: String::new(),
                target_port: None,
                algorithm: None,
                affinity_entries: 0,
                frontends: Vec::new(),
                backends: Vec::new(),
            });
            report.backends.push(BackendReport {
                addr: *addr,
                state,
                state_for_s: status.map(|s| now.duration_since(s.since).as_secs_f64()),
                checked: status.is_some_and(|s| s.checked),
                active,
                connections: c.connections.load(Relaxed),
                failed_connects: c.failed_connects.load(Relaxed),
                bytes_to_backend: c.bytes_to_backend.load(Relaxed),
                bytes_from_backend: c.bytes_from_backend.load(Relaxed),
            });
        }
        let mut listener_reports = Vec::new();
        for (addr, l) in listeners.iter() {
            if let Some(state) = snap.frontends.get(addr)
                && let Some(p) = ports.get_mut(&state.key)
            {
                p.frontends.push(*addr);
            }
            listener_reports.push(ListenerReport {
                frontend: *addr,
                kind: l.frontend.kind,
                service: l.frontend.service.clone(),
                error: l.error.clone(),
                udp_flows: l.udp.as_ref().map(|u| u.flow_count()),
            });
        }
        ProxyReport {
            ports: ports.into_values().collect(),
            listeners: listener_reports,
        }
    }

    /// Whether a backend is usable now by its health (unchecked backends are).
    pub fn usable(&self, key: &BackendKey) -> bool {
        lock(&self.inner.health).usable(key, Instant::now())
    }

    /// Resolves at the next backend that goes up or down.
    pub async fn health_changed(&self) {
        self.inner.health_events.notified().await;
    }

    /// Stops listening and checking. Established connections run on until they end.
    pub fn shutdown(&self) {
        lock(&self.inner.listeners).clear();
        for (_, (_, task)) in std::mem::take(&mut *lock(&self.inner.checks)) {
            task.abort();
        }
    }
}

impl Inner {
    /// A connect's outcome, as evidence about the backend's health.
    fn passive(&self, key: BackendKey, outcome: Outcome) {
        let transition = lock(&self.health).record(&key, outcome, Instant::now());
        if let Some(t) = transition {
            self.health_changed(key, t, "connects");
        }
    }

    fn health_changed(&self, key: BackendKey, t: Transition, by: &str) {
        self.health_events.notify_one();
        match t {
            Transition::Up => {
                tracing::info!(backend = %key.addr, protocol = %key.protocol, "backend up ({by})")
            }
            Transition::Down => {
                tracing::warn!(backend = %key.addr, protocol = %key.protocol, "backend down ({by})");
                self.prune_udp_flows();
            }
        }
    }

    /// Ends every UDP flow whose backend left its Service or is down, so the next
    /// datagram of its client picks again. While no backend of a port is healthy, the
    /// balancer fails open, and flows to any present backend are kept alike.
    fn prune_udp_flows(&self) {
        let snap = self.snapshot.load();
        let listeners = lock(&self.listeners);
        let now = Instant::now();
        for (addr, l) in listeners.iter() {
            let Some(udp) = &l.udp else { continue };
            let port = snap.frontends.get(addr);
            let mut flows = lock(&udp.flows);
            let health = lock(&self.health);
            let usable = |b: SocketAddrV4| {
                health.usable(
                    &BackendKey {
                        protocol: Protocol::Udp,
                        addr: b,
                    },
                    now,
                )
            };
            let any_usable = port.is_some_and(|p| p.backends.iter().any(|&b| usable(b)));
            flows.retain(
                |b| {
                    port.is_some_and(|p| p.backends.binary_search(&b).is_ok())
                        && (usable(b) || !any_usable)
                },
                |_, _| {},
            );
        }
    }
}
