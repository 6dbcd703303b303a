use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::*;
use crate::service::frontend::{LocalNode, frontends};
use crate::service::spec::{HealthCheck, ServiceType};
use crate::service::table::{Endpoint, ServiceStatus};

const UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);

fn net() -> Network {
    Network {
        local_pods: "10.244.1.0/24".parse().unwrap(),
        cluster: "10.244.0.0/16".parse().unwrap(),
    }
}

fn tcp(port: u16, node_port: Option<u16>) -> ResolvedPort {
    ResolvedPort {
        name: String::new(),
        protocol: Protocol::Tcp,
        port,
        target_port: 8080,
        node_port,
        proxy_protocol: false,
    }
}

fn ep(ip: [u8; 4]) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::from(ip),
        port: None,
        node: None,
        pod: None,
    }
}

fn svc(name: &str, vip: [u8; 4], ports: Vec<ResolvedPort>, eps: &[[u8; 4]]) -> ResolvedService {
    ResolvedService {
        key: ServiceKey::new("default", name),
        kind: ServiceType::ClusterIp,
        cluster_ip: Some(Ipv4Addr::from(vip)),
        external_ip: None,
        external_name: None,
        ports,
        endpoints: eps.iter().map(|&ip| ep(ip)).collect(),
        algorithm: Algorithm::RoundRobin,
        affinity: SessionAffinity::None,
        affinity_timeout_s: 10,
        health: HealthCheck::default(),
        status: ServiceStatus::Active,
    }
}

fn plan_of(services: Vec<ResolvedService>, usable: impl Fn(&BackendKey) -> bool) -> KernelPlan {
    let mut table = ServiceTable::default();
    for s in services {
        table.services.insert(s.key.clone(), s);
    }
    let fe = frontends(&table, &LocalNode { underlay: UNDERLAY });
    plan(&table, &fe, &net(), usable)
}

fn all_up(_: &BackendKey) -> bool {
    true
}

/// The lines of the chain named `name`, without the braces.
fn chain<'a>(script: &'a str, name: &str) -> Vec<&'a str> {
    let head = format!("\tchain {name} {{");
    let start = script
        .lines()
        .position(|l| l == head)
        .unwrap_or_else(|| panic!("no chain {name} in\n{script}"));
    script
        .lines()
        .skip(start + 1)
        .take_while(|l| *l != "\t}")
        .map(str::trim)
        .collect()
}

fn backends(plan: &KernelPlan, name: &str, port: u16) -> Vec<String> {
    plan.served[&(ServiceKey::new("default", name), port)]
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// A round-robin Service: its VIP and node port lead to one chain that takes the backends
/// in turn; a backend on this node's bridge is always masqueraded (its reply would not
/// cross this node's IP layer), a remote one only for clients outside the cluster.
#[test]
fn a_round_robin_service_is_dnatted_in_turn_to_every_backend() {
    let mut web = svc(
        "web",
        [10, 96, 0, 10],
        vec![tcp(80, Some(30080))],
        &[[10, 244, 1, 2], [10, 244, 2, 3]],
    );
    web.kind = ServiceType::NodePort;
    let plan = plan_of(vec![web], all_up);

    assert_eq!(
        backends(&plan, "web", 80),
        ["10.244.1.2:8080", "10.244.2.3:8080"]
    );
    assert!(plan.proxied.is_empty(), "{:?}", plan.proxied);
    assert!(
        plan.script.contains("10.96.0.10 . tcp . 80 : goto svc0"),
        "{}",
        plan.script
    );
    assert!(
        plan.script
            .contains("192.168.1.10 . tcp . 30080 : goto svc0"),
        "{}",
        plan.script
    );
    let svc0 = chain(&plan.script, "svc0");
    assert_eq!(
        svc0,
        [
            "numgen inc mod 2 vmap { 0 : goto svc0_ep0, 1 : goto svc0_ep1 } \
             comment \"default/web 80/TCP\""
        ]
    );
    assert_eq!(
        chain(&plan.script, "svc0_ep0"),
        [
            "meta mark set meta mark | 0x4000",
            "meta l4proto tcp dnat to 10.244.1.2:8080"
        ]
    );
    assert_eq!(
        chain(&plan.script, "svc0_ep1"),
        [
            "ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000",
            "meta l4proto tcp dnat to 10.244.2.3:8080"
        ]
    );
}

/// A backend the health checks find down leaves the map; while none is up, every one is
/// kept (the proxy's balancer fails open alike).
#[test]
fn backends_found_down_leave_the_map_until_none_is_up() {
    let web = || {
        svc(
            "web",
            [10, 96, 0, 10],
            vec![tcp(80, None)],
            &[[10, 244, 1, 2], [10, 244, 2, 3], [10, 244, 3, 4]],
        )
    };
    let down: Ipv4Addr = "10.244.2.3".parse().unwrap();
    let plan = plan_of(vec![web()], |k| *k.addr.ip() != down);
    assert_eq!(
        backends(&plan, "web", 80),
        ["10.244.1.2:8080", "10.244.3.4:8080"]
    );
    assert!(!plan.script.contains("10.244.2.3"), "{}", plan.script);

    let plan = plan_of(vec![web()], |_| false);
    assert_eq!(backends(&plan, "web", 80).len(), 3, "fail open");
}

/// What the kernel cannot do stays with the proxy, and the map has no entry for it: the
/// proxy's listener gets those connections.
#[test]
fn what_the_kernel_cannot_do_is_left_to_the_proxy() {
    let eps = [[10, 244, 1, 2]];
    let mut udp = svc("dns", [10, 96, 0, 1], vec![tcp(53, None)], &eps);
    udp.ports[0].protocol = Protocol::Udp;
    let mut least = svc("least", [10, 96, 0, 2], vec![tcp(80, None)], &eps);
    least.algorithm = Algorithm::LeastConn;
    let mut sticky = svc("sticky", [10, 96, 0, 3], vec![tcp(80, None)], &eps);
    sticky.affinity = SessionAffinity::ClientIp;
    let mut pp = svc("pp", [10, 96, 0, 4], vec![tcp(80, None)], &eps);
    pp.ports[0].proxy_protocol = true;
    let empty = svc("empty", [10, 96, 0, 5], vec![tcp(80, None)], &[]);
    let ok = svc("ok", [10, 96, 0, 6], vec![tcp(80, None)], &eps);
    let plan = plan_of(vec![udp, least, sticky, pp, empty, ok], all_up);

    let why = |name: &str, port: u16| plan.proxied.get(&(ServiceKey::new("default", name), port));
    assert_eq!(why("dns", 53), Some(&ProxyOnly::Udp));
    assert_eq!(why("least", 80), Some(&ProxyOnly::LeastConn));
    assert_eq!(why("sticky", 80), Some(&ProxyOnly::ClientIpAffinity));
    assert_eq!(why("pp", 80), Some(&ProxyOnly::ProxyProtocol));
    assert_eq!(why("empty", 80), Some(&ProxyOnly::NoBackend));
    assert_eq!(plan.served.len(), 1);
    for vip in [
        "10.96.0.1",
        "10.96.0.2",
        "10.96.0.3",
        "10.96.0.4",
        "10.96.0.5",
    ] {
        assert!(!plan.script.contains(vip), "{vip} in\n{}", plan.script);
    }
    assert!(plan.script.contains("10.96.0.6 . tcp . 80"));
}

/// Maglev: the map is the Service's Maglev table (every slot, each to the chain of the
/// backend the table holds there), so every node picks alike for a client.
#[test]
fn a_maglev_service_maps_every_slot_of_its_table() {
    let eps = [[10, 244, 1, 2], [10, 244, 2, 3], [10, 244, 3, 4]];
    let mut web = svc("web", [10, 96, 0, 10], vec![tcp(80, None)], &eps);
    web.algorithm = Algorithm::Maglev;
    let plan = plan_of(vec![web.clone()], all_up);
    let table = MaglevTable::new(web.endpoints.iter().map(|e| e.addr(&web.ports[0])));
    let line = chain(&plan.script, "svc0").join("\n");
    assert!(
        line.starts_with(&format!(
            "jhash ip saddr . th sport mod {} seed 0x0 vmap {{ ",
            table.size()
        )),
        "{line}"
    );
    let slots: Vec<&str> = line
        .split(" vmap { ")
        .nth(1)
        .unwrap()
        .split(" }")
        .next()
        .unwrap()
        .split(", ")
        .collect();
    assert_eq!(slots.len(), table.size());
    for (slot, entry) in slots.iter().enumerate() {
        assert_eq!(
            *entry,
            format!("{slot} : goto svc0_ep{}", table.entries()[slot]),
        );
    }
    let used: BTreeSet<&str> = slots
        .iter()
        .map(|s| s.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(used.len(), 3, "every backend has slots");
    // Built again (another node): the same script, byte for byte.
    assert_eq!(plan_of(vec![web], all_up), plan);
}

/// No Service: an empty map, still a table that replaces the old one.
#[test]
fn no_service_is_an_empty_table() {
    let plan = plan_of(vec![], all_up);
    assert!(plan.served.is_empty());
    assert!(plan.script.starts_with(&remove_script()));
    assert!(plan.script.contains("map frontends"));
}
