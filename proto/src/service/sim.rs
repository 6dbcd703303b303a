//! Services over the deterministic gossip simulator: every node builds its catalog from
//! its own objects and members and applies its repairs, as the daemon does, so the
//! tests see what a cluster converges to.
//!
//! `cargo test -p overlayd-proto --release -- --ignored service_report --nocapture`
//! prints the measurements recorded in docs/services.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::catalog::{
    AllocError, Catalog, Housekeeping, delete_service, preferred_cluster_ip, preferred_node_port,
    put_service, put_services, repairs,
};
use super::codec::{ObjectWrite, PodEndpoint};
use super::spec::{ClusterIp, ServiceSettings, ServiceSpec, ServiceType};
use super::table::{ServiceKey, ServiceStatus, ServiceTable};
use super::test_support::{spec, with_backends};
use crate::gossip::sim::{NetConfig, Sim, lan_config};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

pub(crate) struct ServiceSim {
    pub(crate) sim: Sim,
    pub(crate) catalogs: Vec<Catalog>,
    pub(crate) settings: ServiceSettings,
    pub(crate) pods: Vec<BTreeMap<String, PodEndpoint>>,
}

impl ServiceSim {
    /// `n` nodes, joined.
    pub(crate) fn new(seed: u64, n: usize, settings: ServiceSettings) -> ServiceSim {
        let mut sim = Sim::new(seed, n, lan_config(), NetConfig::default(), secs(1.0));
        sim.run_until_pred(secs(60.0), secs(0.1), Sim::converged)
            .expect("join");
        ServiceSim {
            sim,
            catalogs: vec![Catalog::default(); n],
            settings,
            pods: vec![BTreeMap::new(); n],
        }
    }

    /// Names of the members node `i` holds up, itself included.
    pub(crate) fn live(&self, i: usize) -> BTreeSet<String> {
        self.sim
            .gossip(i)
            .members()
            .filter(|m| m.state.is_up())
            .map(|m| m.name.to_owned())
            .collect()
    }

    /// Names of every member node `i` knows, in any state.
    pub(crate) fn members(&self, i: usize) -> BTreeSet<String> {
        self.sim
            .gossip(i)
            .members()
            .map(|m| m.name.to_owned())
            .collect()
    }

    pub(crate) fn rebuild(&mut self, i: usize) {
        let live = self.live(i);
        let catalog = Catalog::build(
            self.sim.gossip(i).objects(),
            &live,
            &self.settings,
            &self.catalogs[i],
        );
        self.catalogs[i] = catalog;
    }

    fn apply(&mut self, i: usize, writes: &[ObjectWrite]) {
        if writes.is_empty() {
            return;
        }
        self.sim.with(i, |g, now| {
            for w in writes {
                g.set_object(now, &w.key, w.value.clone())
                    .expect("valid writes");
            }
        });
    }

    /// What the daemon does after a change: rebuild, then make this node's repairs.
    pub(crate) fn tick_node(&mut self, i: usize) {
        self.rebuild(i);
        let live = self.live(i);
        let members = self.members(i);
        let wall_ms = self.sim.wall_ms(i);
        let name = self.sim.nodes[i].name.clone();
        let stamp = self.sim.with(i, |g, now| g.stamp(now));
        let h = Housekeeping {
            local: &name,
            live: &live,
            members: &members,
            local_pods: &self.pods[i],
            stamp,
            wall_ms,
        };
        let writes = repairs(&self.catalogs[i], &self.settings, &h);
        if !writes.is_empty() {
            self.apply(i, &writes);
            self.rebuild(i);
        }
    }

    /// Runs for `limit` with every node ticking every `step`, until `pred` holds.
    pub(crate) fn run_until(
        &mut self,
        limit: Duration,
        step: Duration,
        mut pred: impl FnMut(&ServiceSim) -> bool,
    ) -> Option<Duration> {
        let start = self.sim.now;
        loop {
            let running: Vec<usize> = self.sim.running().collect();
            for i in running {
                self.tick_node(i);
            }
            if pred(self) {
                return Some(self.sim.now - start);
            }
            if self.sim.now >= start + limit {
                return None;
            }
            let next = self.sim.now + step;
            self.sim.run_until(next);
        }
    }

    pub(crate) fn put(&mut self, i: usize, spec: &ServiceSpec) -> Result<(), AllocError> {
        self.rebuild(i);
        let stamp = self.sim.with(i, |g, now| g.stamp(now));
        let writes = put_service(spec, stamp, &self.catalogs[i], &self.settings)?;
        self.apply(i, &writes);
        self.rebuild(i);
        Ok(())
    }

    pub(crate) fn delete(&mut self, i: usize, key: &ServiceKey) {
        self.rebuild(i);
        let writes = delete_service(key, &self.catalogs[i]);
        self.apply(i, &writes);
    }

    pub(crate) fn table(&self, i: usize) -> &ServiceTable {
        self.catalogs[i].table()
    }

    /// Every running node holds the same table.
    pub(crate) fn tables_agree(&self) -> bool {
        let mut running = self.sim.running();
        let Some(first) = running.next() else {
            return true;
        };
        running.all(|i| self.table(i) == self.table(first))
    }
}

/// Two names whose preferred cluster IP and node port are the same under `settings`.
fn colliding_names(settings: &ServiceSettings) -> (String, String) {
    let mut seen: BTreeMap<(std::net::Ipv4Addr, u16), String> = BTreeMap::new();
    for i in 0.. {
        let name = format!("svc-{i}");
        let key = ServiceKey::new("default", &name);
        let slot = (
            preferred_cluster_ip(&key, settings).expect("hosts"),
            preferred_node_port(&key, settings),
        );
        if let Some(other) = seen.insert(slot, name.clone()) {
            return (other, name);
        }
    }
    unreachable!("the search space is finite")
}

fn node_port(name: &str) -> ServiceSpec {
    ServiceSpec {
        kind: ServiceType::NodePort,
        ..spec(name)
    }
}

/// (a) Two nodes add Services at the same instant whose preferred VIP and node port
/// collide: every node ends with the same table, both Services active with distinct
/// VIPs and node ports, and the older one kept its values.
#[test]
fn concurrent_allocations_that_collide_are_resolved_alike_everywhere() {
    let settings = ServiceSettings {
        service_cidr: "10.96.0.0/24".parse().expect("cidr"),
        node_port_range: 30000..=30009,
        external_pool: Vec::new(),
    };
    let (a, b) = colliding_names(&settings);
    let mut s = ServiceSim::new(50, 5, settings);
    // Nodes 1 and 3 write at the same simulated instant, neither seeing the other's.
    s.put(1, &node_port(&a)).expect("allocates");
    s.put(3, &node_port(&b)).expect("allocates");
    let (ka, kb) = (
        ServiceKey::new("default", &a),
        ServiceKey::new("default", &b),
    );
    let first_a = s.catalogs[1].object(&ka).expect("written").clone();
    let first_b = s.catalogs[3].object(&kb).expect("written").clone();
    assert_eq!(
        first_a.alloc, first_b.alloc,
        "the names were chosen to collide"
    );
    // The same creation stamp (same instant, fresh clocks): the key decides the order.
    let (older, younger, kept) = if (first_a.created, &ka) < (first_b.created, &kb) {
        (ka, kb, first_a)
    } else {
        (kb, ka, first_b)
    };
    let took = s
        .run_until(secs(10.0), secs(0.1), |s| {
            s.tables_agree()
                && s.table(0).len() == 2
                && s.table(0).iter().all(|svc| svc.is_active())
        })
        .expect("converges");
    for i in 0..5 {
        let t = s.table(i);
        let (o, y) = (&t.services[&older], &t.services[&younger]);
        assert_eq!(o.cluster_ip, kept.alloc.cluster_ip, "node {i}");
        assert_eq!(o.ports[0].node_port, kept.alloc.node_ports[0], "node {i}");
        assert_ne!(o.cluster_ip, y.cluster_ip);
        assert_ne!(o.ports[0].node_port, y.ports[0].node_port);
    }
    assert!(took < secs(3.0), "{took:?}");
}

/// (b) Two Services given the same cluster IP and port: the younger is in conflict on
/// every node, naming the older, and becomes active once the older is deleted.
#[test]
fn a_given_address_conflict_holds_until_the_older_service_goes() {
    let mut s = ServiceSim::new(51, 5, ServiceSettings::default());
    let given = |name: &str| ServiceSpec {
        cluster_ip: Some(ClusterIp::Ip("10.96.0.10".parse().expect("ip"))),
        ..spec(name)
    };
    s.put(2, &given("first")).expect("allocates");
    s.sim.run_until(s.sim.now + secs(0.001));
    s.put(4, &given("second"))
        .expect("node 4 has not heard of `first` yet");
    let (first, second) = (
        ServiceKey::new("default", "first"),
        ServiceKey::new("default", "second"),
    );
    let conflict = |s: &ServiceSim, i: usize| {
        matches!(&s.table(i).services.get(&second).map(|x| &x.status),
            Some(ServiceStatus::Conflict(r)) if r.contains("default/first"))
    };
    s.run_until(secs(10.0), secs(0.1), |s| {
        s.tables_agree() && s.table(0).len() == 2
    })
    .expect("converges");
    for i in 0..5 {
        assert!(
            conflict(&s, i),
            "node {i}: {:?}",
            s.table(i).services.get(&second)
        );
        assert!(s.table(i).services[&first].is_active());
    }
    // Nothing changes while both exist.
    s.run_until(secs(2.0), secs(0.1), |_| false);
    assert!((0..5).all(|i| conflict(&s, i)));
    s.delete(0, &first);
    s.run_until(secs(10.0), secs(0.1), |s| {
        s.tables_agree()
            && s.table(0).len() == 1
            && s.table(0)
                .services
                .get(&second)
                .is_some_and(|x| x.is_active())
    })
    .expect("the younger takes over");
}

/// Writes `n` Services of 10 explicit backends each on node 0 of 5 and returns how long
/// until every node holds every object, and that every node then builds the same table.
fn bulk(seed: u64, n: usize) -> Duration {
    let mut s = ServiceSim::new(seed, 5, ServiceSettings::default());
    s.sim.keep_events = false;
    let specs: Vec<ServiceSpec> = (0..n)
        .map(|i| with_backends(&format!("svc-{i}"), 10))
        .collect();
    let stamp = s.sim.with(0, |g, now| g.stamp(now));
    let writes = put_services(&specs, stamp, &s.catalogs[0], &s.settings).expect("allocates");
    assert_eq!(writes.len(), n, "one inline object each");
    s.apply(0, &writes);
    let start = s.sim.now;
    s.sim
        .run_until_pred(secs(1800.0), secs(0.5), |sim| {
            sim.running().all(|i| sim.gossip(i).objects().count() == n)
        })
        .expect("every object everywhere");
    let took = s.sim.now - start;
    for i in 0..5 {
        s.rebuild(i);
    }
    assert!(s.tables_agree());
    assert_eq!(s.table(4).len(), n);
    assert!(
        s.table(4)
            .iter()
            .all(|x| x.is_active() && x.endpoints.len() == 10)
    );
    took
}

/// (c), fast: 1000 Services written on one node reach all five.
#[test]
fn a_thousand_services_written_on_one_node_reach_every_node() {
    let took = bulk(52, 1000);
    assert!(took < secs(30.0), "{took:?}");
}

/// (c): 10 000 Services × 10 endpoints written on one node of 5.
#[test]
#[ignore = "slow in debug builds; run with --release -- --ignored service_report"]
fn service_report() {
    for n in [1000, 10_000] {
        let took = bulk(53, n);
        println!(
            "{n} Services x 10 explicit endpoints from one node of 5: every object on every node after {:.1} s (simulated)",
            took.as_secs_f64()
        );
    }
}
