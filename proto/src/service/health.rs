//! Backend health: rise/fall thresholds over the results of active checks (a TCP connect
//! from this node) and passive observations (the proxy's own connects), per backend.
//!
//! - A backend starts up, so traffic flows before the first check is done.
//! - `fall` consecutive failures take it down, `rise` consecutive successes bring it back;
//!   a result of the other kind resets the streak. A refused or timed-out connect of the
//!   proxy counts as a failed check, a connect that worked as a successful one.
//! - Without active checks (disabled, or a UDP port, which a TCP connect cannot check),
//!   only passive failures take a backend down, and nothing would ever bring it back
//!   (a down backend gets no connections to succeed with). So a passively downed backend
//!   is *retried* after the check interval: it becomes usable again while still down, and
//!   either its connects succeed `rise` times (up) or one fails and it is out for another
//!   interval (nginx's `max_fails`/`fail_timeout` behave alike).
//!
//! Health is kept per backend address and protocol, shared by every Service that has the
//! backend: one check per backend, however many Services point at it.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use super::spec::{HealthCheck, Protocol};
use super::table::ServiceTable;

/// A backend as health sees it: health is per address and protocol (a UDP port and a
/// TCP port of one pod are different services).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub protocol: Protocol,
    pub addr: SocketAddrV4,
}

/// The result of one check or one connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// A change of a backend's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// One backend's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendHealth {
    params: HealthCheck,
    up: bool,
    successes: u32,
    failures: u32,
    /// When the backend last changed state (or was first seen).
    since: Instant,
    /// Without active checks: when a down backend may be tried again.
    retry_at: Option<Instant>,
}

/// What `overlayd services` shows of a backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthStatus {
    pub up: bool,
    /// Down, but being retried by real connections (no active checks).
    pub retrying: bool,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    /// In this state since.
    pub since: Instant,
    /// Whether active checks run for it.
    pub checked: bool,
}

impl BackendHealth {
    fn new(params: HealthCheck, now: Instant) -> Self {
        BackendHealth {
            params,
            up: true,
            successes: 0,
            failures: 0,
            since: now,
            retry_at: None,
        }
    }

    fn retry_after(&self) -> Duration {
        Duration::from_millis(u64::from(self.params.interval_ms.max(1)))
    }

    fn record(&mut self, outcome: Outcome, now: Instant) -> Option<Transition> {
        match outcome {
            Outcome::Success => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if !self.up && self.successes >= self.params.rise.max(1) {
                    self.up = true;
                    self.since = now;
                    self.retry_at = None;
                    return Some(Transition::Up);
                }
            }
            Outcome::Failure => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if !self.params.enabled {
                    // Whenever a passive-only backend fails while down (or goes down now),
                    // its next retry is an interval away.
                    self.retry_at = Some(now + self.retry_after());
                }
                if self.up && self.failures >= self.params.fall.max(1) {
                    self.up = false;
                    self.since = now;
                    return Some(Transition::Down);
                }
            }
        }
        None
    }

    fn usable(&self, now: Instant) -> bool {
        self.up || (!self.params.enabled && self.retry_at.is_some_and(|at| now >= at))
    }

    fn status(&self, now: Instant) -> HealthStatus {
        HealthStatus {
            up: self.up,
            retrying: !self.up && self.usable(now),
            consecutive_successes: self.successes,
            consecutive_failures: self.failures,
            since: self.since,
            checked: self.params.enabled,
        }
    }
}

/// The health of every backend of the proxied Services.
#[derive(Debug, Clone, Default)]
pub struct HealthTable {
    backends: BTreeMap<BackendKey, BackendHealth>,
}

impl HealthTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the table hold exactly `targets` (from [`health_targets`]): new backends
    /// start up, backends no longer proxied are forgotten, and the others keep their
    /// state under their (possibly new) parameters.
    pub fn sync(&mut self, targets: &BTreeMap<BackendKey, HealthCheck>, now: Instant) {
        self.backends.retain(|k, _| targets.contains_key(k));
        for (key, params) in targets {
            match self.backends.get_mut(key) {
                Some(h) => {
                    if !params.enabled {
                        // Checks just turned off on a down backend: retry it soon.
                        if h.params.enabled && !h.up {
                            h.retry_at = Some(now);
                        }
                    } else {
                        h.retry_at = None;
                    }
                    h.params = *params;
                }
                None => {
                    self.backends.insert(*key, BackendHealth::new(*params, now));
                }
            }
        }
    }

    /// Records a check result or a connect's outcome; returns the transition it caused.
    /// A backend not in the table (gone since the check started) is ignored.
    pub fn record(
        &mut self,
        key: &BackendKey,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Transition> {
        self.backends.get_mut(key)?.record(outcome, now)
    }

    /// Whether new connections may go to the backend. A backend the table does not know
    /// (a table update not yet synced) is usable: health only ever takes backends out.
    pub fn usable(&self, key: &BackendKey, now: Instant) -> bool {
        self.backends.get(key).is_none_or(|h| h.usable(now))
    }

    pub fn status(&self, key: &BackendKey, now: Instant) -> Option<HealthStatus> {
        self.backends.get(key).map(|h| h.status(now))
    }

    /// Backends to check actively, with their parameters.
    pub fn checked(&self) -> impl Iterator<Item = (&BackendKey, &HealthCheck)> {
        self.backends
            .iter()
            .filter(|(_, h)| h.params.enabled)
            .map(|(k, h)| (k, &h.params))
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
}

/// Every backend the proxy may send to, with the health parameters it is judged by: each
/// endpoint of each port of each proxied Service (active, with a cluster IP). UDP ports
/// get no active checks (a TCP connect says nothing about a UDP service). When Services
/// share a backend, the checked parameters win over the unchecked, then the shortest
/// interval, then the first Service by key, so every node judges a backend alike.
pub fn health_targets(table: &ServiceTable) -> BTreeMap<BackendKey, HealthCheck> {
    let mut targets: BTreeMap<BackendKey, HealthCheck> = BTreeMap::new();
    for svc in table.iter().filter(|s| super::frontend::is_proxied(s)) {
        for port in &svc.ports {
            let mut params = svc.health;
            if port.protocol == Protocol::Udp {
                params.enabled = false;
            }
            for ep in &svc.endpoints {
                let key = BackendKey {
                    protocol: port.protocol,
                    addr: ep.addr(port),
                };
                let better = |old: &HealthCheck| {
                    (params.enabled, std::cmp::Reverse(params.interval_ms))
                        > (old.enabled, std::cmp::Reverse(old.interval_ms))
                };
                match targets.get_mut(&key) {
                    Some(old) if better(old) => *old = params,
                    Some(_) => {}
                    None => {
                        targets.insert(key, params);
                    }
                }
            }
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::spec::{Algorithm, ServiceType, SessionAffinity};
    use crate::service::table::{
        Endpoint, ResolvedPort, ResolvedService, ServiceKey, ServiceStatus,
    };
    use std::net::Ipv4Addr;

    fn key(last: u8) -> BackendKey {
        BackendKey {
            protocol: Protocol::Tcp,
            addr: SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, last), 80),
        }
    }

    fn params(enabled: bool) -> HealthCheck {
        HealthCheck {
            enabled,
            interval_ms: 2000,
            timeout_ms: 1000,
            rise: 2,
            fall: 3,
        }
    }

    fn table_with(k: BackendKey, p: HealthCheck, now: Instant) -> HealthTable {
        let mut t = HealthTable::new();
        t.sync(&BTreeMap::from([(k, p)]), now);
        t
    }

    #[test]
    fn a_new_backend_is_up_before_any_check() {
        let now = Instant::now();
        let t = table_with(key(1), params(true), now);
        assert!(t.usable(&key(1), now));
        assert!(t.status(&key(1), now).unwrap().up);
        assert!(t.usable(&key(2), now), "unknown backends are not taken out");
    }

    #[test]
    fn fall_consecutive_failures_take_it_down_and_rise_successes_bring_it_back() {
        let now = Instant::now();
        let k = key(1);
        let mut t = table_with(k, params(true), now);
        assert_eq!(t.record(&k, Outcome::Failure, now), None);
        assert_eq!(t.record(&k, Outcome::Failure, now), None);
        assert!(t.usable(&k, now), "two of three failures: still up");
        assert_eq!(t.record(&k, Outcome::Failure, now), Some(Transition::Down));
        assert!(!t.usable(&k, now));
        assert_eq!(
            t.record(&k, Outcome::Failure, now),
            None,
            "down once, not again"
        );
        assert_eq!(t.record(&k, Outcome::Success, now), None);
        assert!(!t.usable(&k, now), "one of two successes: still down");
        assert_eq!(t.record(&k, Outcome::Success, now), Some(Transition::Up));
        assert!(t.usable(&k, now));
        // Active checks: a down backend is never retried by time alone.
        for _ in 0..3 {
            t.record(&k, Outcome::Failure, now);
        }
        assert!(!t.usable(&k, now + Duration::from_secs(3600)));
    }

    #[test]
    fn a_result_of_the_other_kind_resets_the_streak() {
        let now = Instant::now();
        let k = key(1);
        let mut t = table_with(k, params(true), now);
        for _ in 0..10 {
            t.record(&k, Outcome::Failure, now);
            t.record(&k, Outcome::Failure, now);
            t.record(&k, Outcome::Success, now);
        }
        assert!(t.usable(&k, now), "never three failures in a row");
        for _ in 0..3 {
            t.record(&k, Outcome::Failure, now);
        }
        for _ in 0..10 {
            t.record(&k, Outcome::Success, now);
            t.record(&k, Outcome::Failure, now);
        }
        assert!(!t.usable(&k, now), "never two successes in a row");
    }

    #[test]
    fn without_active_checks_a_downed_backend_is_retried_after_the_interval() {
        let t0 = Instant::now();
        let k = key(1);
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut t = table_with(k, params(false), t0);
        for _ in 0..3 {
            t.record(&k, Outcome::Failure, s(0));
        }
        assert!(!t.usable(&k, s(1)), "out for the interval (2 s)");
        assert!(t.usable(&k, s(2)), "then retried");
        assert!(t.status(&k, s(2)).unwrap().retrying);
        // A retry fails: out for another interval.
        assert_eq!(t.record(&k, Outcome::Failure, s(2)), None);
        assert!(!t.usable(&k, s(3)));
        assert!(t.usable(&k, s(4)));
        // Retries succeed `rise` times: up.
        assert_eq!(t.record(&k, Outcome::Success, s(4)), None);
        assert_eq!(t.record(&k, Outcome::Success, s(4)), Some(Transition::Up));
        assert!(t.usable(&k, s(4)));
        assert!(!t.status(&k, s(4)).unwrap().retrying);
    }

    #[test]
    fn sync_adds_up_forgets_gone_and_keeps_the_state_of_the_rest() {
        let now = Instant::now();
        let mut t = table_with(key(1), params(true), now);
        for _ in 0..3 {
            t.record(&key(1), Outcome::Failure, now);
        }
        t.sync(
            &BTreeMap::from([(key(1), params(true)), (key(2), params(true))]),
            now,
        );
        assert!(!t.usable(&key(1), now), "state kept");
        assert!(t.usable(&key(2), now));
        t.sync(&BTreeMap::from([(key(2), params(true))]), now);
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.record(&key(1), Outcome::Success, now),
            None,
            "gone: ignored"
        );
        // Back again: a fresh start, up.
        t.sync(&BTreeMap::from([(key(1), params(true))]), now);
        assert!(t.usable(&key(1), now));
    }

    fn svc(
        name: &str,
        proto: Protocol,
        health: HealthCheck,
        status: ServiceStatus,
    ) -> ResolvedService {
        ResolvedService {
            key: ServiceKey::new("default", name),
            kind: ServiceType::ClusterIp,
            cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 10)),
            external_ip: None,
            external_name: None,
            ports: vec![ResolvedPort {
                name: String::new(),
                protocol: proto,
                port: 80,
                target_port: 80,
                node_port: None,
                proxy_protocol: false,
            }],
            endpoints: vec![Endpoint {
                ip: Ipv4Addr::new(10, 244, 1, 1),
                port: None,
                node: None,
                pod: None,
            }],
            algorithm: Algorithm::RoundRobin,
            affinity: SessionAffinity::None,
            affinity_timeout_s: 10,
            health,
            status,
        }
    }

    #[test]
    fn targets_merge_shared_backends_alike_and_never_check_udp_actively() {
        let slow = HealthCheck {
            interval_ms: 5000,
            ..params(true)
        };
        let fast = HealthCheck {
            interval_ms: 500,
            ..params(true)
        };
        let mut table = ServiceTable::default();
        for s in [
            svc("a", Protocol::Tcp, slow, ServiceStatus::Active),
            svc("b", Protocol::Tcp, params(false), ServiceStatus::Active),
            svc("c", Protocol::Tcp, fast, ServiceStatus::Active),
            svc("d", Protocol::Udp, fast, ServiceStatus::Active),
        ] {
            table.services.insert(s.key.clone(), s);
        }
        let targets = health_targets(&table);
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[&key(1)], fast, "checked, shortest interval");
        let udp = BackendKey {
            protocol: Protocol::Udp,
            ..key(1)
        };
        assert!(!targets[&udp].enabled);

        let mut headless = svc("e", Protocol::Tcp, params(true), ServiceStatus::Active);
        headless.cluster_ip = None;
        headless.endpoints[0].ip = Ipv4Addr::new(10, 244, 1, 9);
        let mut pending = svc(
            "f",
            Protocol::Tcp,
            params(true),
            ServiceStatus::Pending("x".into()),
        );
        pending.endpoints[0].ip = Ipv4Addr::new(10, 244, 1, 8);
        let mut t = ServiceTable::default();
        t.services.insert(headless.key.clone(), headless);
        t.services.insert(pending.key.clone(), pending);
        assert!(health_targets(&t).is_empty(), "not proxied: not checked");
    }
}
