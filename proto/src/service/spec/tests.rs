//! One test per rule of `ServiceSpec::validate`: each breaks one rule of an otherwise
//! valid spec and checks the field the error names (and that the message says what to
//! do).

use super::*;

fn port(p: u16) -> ServicePort {
    ServicePort {
        name: String::new(),
        protocol: Protocol::Tcp,
        port: p,
        target_port: None,
        node_port: None,
        proxy_protocol: false,
    }
}

fn named(name: &str, p: u16) -> ServicePort {
    ServicePort {
        name: name.into(),
        ..port(p)
    }
}

fn web() -> ServiceSpec {
    ServiceSpec {
        name: "web".into(),
        namespace: "default".into(),
        kind: ServiceType::ClusterIp,
        ports: vec![port(80)],
        selector: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
        backends: Vec::new(),
        cluster_ip: None,
        session_affinity: SessionAffinity::None,
        affinity_timeout_s: DEFAULT_AFFINITY_TIMEOUT_S,
        algorithm: Algorithm::RoundRobin,
        health_check: HealthCheck::default(),
        external_ip: None,
        external_name: None,
    }
}

fn backend(s: &str) -> ExplicitBackend {
    s.parse().unwrap()
}

/// The error for `spec` under default settings.
fn refused(spec: &ServiceSpec) -> SpecError {
    refused_with(spec, &ServiceSettings::default())
}

fn refused_with(spec: &ServiceSpec, settings: &ServiceSettings) -> SpecError {
    match spec.validate(settings) {
        Ok(()) => panic!("accepted {spec:?}"),
        Err(e) => e,
    }
}

fn field(spec: &ServiceSpec) -> String {
    refused(spec).field
}

#[test]
fn a_plain_spec_of_every_type_is_accepted() {
    let settings = ServiceSettings {
        external_pool: vec!["192.0.2.0/24".parse().unwrap()],
        ..ServiceSettings::default()
    };
    let mut s = web();
    assert_eq!(s.validate(&settings), Ok(()));
    s.kind = ServiceType::NodePort;
    s.ports[0].node_port = Some(30080);
    assert_eq!(s.validate(&settings), Ok(()));
    s.kind = ServiceType::LoadBalancer;
    s.external_ip = Some(Ipv4Addr::new(192, 0, 2, 10));
    assert_eq!(s.validate(&settings), Ok(()));
    let external = ServiceSpec {
        kind: ServiceType::ExternalName,
        ports: Vec::new(),
        selector: BTreeMap::new(),
        external_name: Some("db.example.com".into()),
        ..web()
    };
    assert_eq!(external.validate(&settings), Ok(()));
    let headless = ServiceSpec {
        cluster_ip: Some(ClusterIp::Headless),
        ..web()
    };
    assert_eq!(headless.validate(&settings), Ok(()));
    let explicit = ServiceSpec {
        selector: BTreeMap::new(),
        backends: vec![backend("192.0.2.1"), backend("192.0.2.2:8080")],
        ..web()
    };
    assert_eq!(explicit.validate(&settings), Ok(()));
}

#[test]
fn name_must_be_a_dns_label() {
    for bad in ["", "Web", "web_1", "-web", "web-", &"a".repeat(64)] {
        let s = ServiceSpec {
            name: bad.into(),
            ..web()
        };
        let e = refused(&s);
        assert_eq!(e.field, "name", "{bad:?}");
        assert!(e.message.contains("DNS label"), "{}", e.message);
    }
    let s = ServiceSpec {
        name: "a".repeat(63),
        ..web()
    };
    assert_eq!(s.validate(&ServiceSettings::default()), Ok(()));
}

#[test]
fn namespace_must_be_a_dns_label() {
    let s = ServiceSpec {
        namespace: "kube.system".into(),
        ..web()
    };
    assert_eq!(field(&s), "namespace");
}

#[test]
fn a_service_needs_a_port_unless_it_is_an_external_name() {
    let s = ServiceSpec {
        ports: Vec::new(),
        ..web()
    };
    let e = refused(&s);
    assert_eq!(e.field, "ports");
    assert!(e.message.contains("at least one port"), "{}", e.message);
}

#[test]
fn ports_are_capped() {
    let s = ServiceSpec {
        ports: (1..=65).map(|p| named(&format!("p{p}"), p)).collect(),
        ..web()
    };
    assert_eq!(field(&s), "ports");
}

#[test]
fn several_ports_need_names() {
    let s = ServiceSpec {
        ports: vec![named("http", 80), port(443)],
        ..web()
    };
    let e = refused(&s);
    assert_eq!(e.field, "ports[1].name");
    assert_eq!(
        e.path,
        vec![
            FieldSegment::Key("ports".into()),
            FieldSegment::Index(1),
            FieldSegment::Key("name".into())
        ]
    );
}

#[test]
fn port_names_are_unique() {
    let s = ServiceSpec {
        ports: vec![named("http", 80), named("http", 443)],
        ..web()
    };
    let e = refused(&s);
    assert_eq!(e.field, "ports[1].name");
    assert!(e.message.contains("ports[0]"), "{}", e.message);
}

#[test]
fn port_names_are_short_dns_labels() {
    for bad in ["HTTP", "a-very-long-port-name", "-x"] {
        let s = ServiceSpec {
            ports: vec![named(bad, 80)],
            ..web()
        };
        assert_eq!(field(&s), "ports[0].name", "{bad:?}");
    }
}

#[test]
fn port_zero_is_refused() {
    let s = ServiceSpec {
        ports: vec![port(0)],
        ..web()
    };
    assert_eq!(field(&s), "ports[0].port");
}

#[test]
fn target_port_zero_is_refused() {
    let mut s = web();
    s.ports[0].target_port = Some(0);
    assert_eq!(field(&s), "ports[0].target_port");
}

#[test]
fn protocol_and_port_are_unique() {
    let mut s = ServiceSpec {
        ports: vec![named("a", 53), named("b", 53)],
        ..web()
    };
    assert_eq!(field(&s), "ports[1].port");
    // The same port over UDP is another port.
    s.ports[1].protocol = Protocol::Udp;
    assert_eq!(s.validate(&ServiceSettings::default()), Ok(()));
}

#[test]
fn node_ports_only_on_node_port_and_load_balancer() {
    let mut s = web();
    s.ports[0].node_port = Some(30080);
    let e = refused(&s);
    assert_eq!(e.field, "ports[0].node_port");
    assert!(e.message.contains("ClusterIP"), "{}", e.message);
    let external = ServiceSpec {
        kind: ServiceType::ExternalName,
        selector: BTreeMap::new(),
        external_name: Some("db.example.com".into()),
        ..s
    };
    assert_eq!(field(&external), "ports[0].node_port");
}

#[test]
fn node_ports_lie_in_the_range() {
    let mut s = ServiceSpec {
        kind: ServiceType::NodePort,
        ..web()
    };
    s.ports[0].node_port = Some(8080);
    let e = refused(&s);
    assert_eq!(e.field, "ports[0].node_port");
    assert!(e.message.contains("30000-32767"), "{}", e.message);
    let narrow = ServiceSettings {
        node_port_range: 31000..=31010,
        ..ServiceSettings::default()
    };
    s.ports[0].node_port = Some(30080);
    assert_eq!(refused_with(&s, &narrow).field, "ports[0].node_port");
}

#[test]
fn node_ports_are_unique_within_the_spec() {
    let mut s = ServiceSpec {
        kind: ServiceType::NodePort,
        ports: vec![named("a", 80), named("b", 81)],
        ..web()
    };
    s.ports[0].node_port = Some(30080);
    s.ports[1].node_port = Some(30080);
    assert_eq!(field(&s), "ports[1].node_port");
}

#[test]
fn proxy_protocol_is_tcp_only() {
    let mut s = web();
    s.ports[0].protocol = Protocol::Udp;
    s.ports[0].proxy_protocol = true;
    assert_eq!(field(&s), "ports[0].proxy_protocol");
}

#[test]
fn selector_keys_and_values_follow_label_syntax() {
    let s = ServiceSpec {
        selector: BTreeMap::from([("app!".to_owned(), "web".to_owned())]),
        ..web()
    };
    assert_eq!(field(&s), "selector.\"app!\"");
    let s = ServiceSpec {
        selector: BTreeMap::from([("app".to_owned(), "web app".to_owned())]),
        ..web()
    };
    let e = refused(&s);
    assert_eq!(e.field, "selector.app");
    assert_eq!(
        e.path,
        vec![
            FieldSegment::Key("selector".into()),
            FieldSegment::Key("app".into())
        ]
    );
    for bad in [
        "/app",
        "Example.com/app",
        "example.com/",
        &"a".repeat(64),
        "-app",
    ] {
        assert!(label_key_problem(bad).is_some(), "{bad:?}");
    }
    for good in ["app", "app.kubernetes.io/name", "A_b.c-9", &"a".repeat(63)] {
        assert_eq!(label_key_problem(good), None, "{good:?}");
    }
    assert_eq!(label_value_problem(""), None);
    assert!(label_value_problem("x.").is_some());
}

#[test]
fn selector_size_is_capped() {
    let s = ServiceSpec {
        selector: (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
        ..web()
    };
    assert_eq!(field(&s), "selector");
}

#[test]
fn selector_and_backends_are_exclusive() {
    let s = ServiceSpec {
        backends: vec![backend("192.0.2.1")],
        ..web()
    };
    let e = refused(&s);
    assert_eq!(e.field, "backends");
    assert!(e.message.contains("not both"), "{}", e.message);
}

#[test]
fn ip_port_backends_need_a_single_port_service() {
    let s = ServiceSpec {
        ports: vec![named("http", 80), named("https", 443)],
        selector: BTreeMap::new(),
        backends: vec![backend("192.0.2.1"), backend("192.0.2.2:8080")],
        ..web()
    };
    assert_eq!(field(&s), "backends[1]");
}

#[test]
fn backend_port_zero_is_refused() {
    let s = ServiceSpec {
        selector: BTreeMap::new(),
        backends: vec![backend("192.0.2.1:0")],
        ..web()
    };
    assert_eq!(field(&s), "backends[0]");
}

#[test]
fn backends_are_listed_once() {
    let s = ServiceSpec {
        selector: BTreeMap::new(),
        backends: vec![
            backend("192.0.2.1"),
            backend("192.0.2.2"),
            backend("192.0.2.1"),
        ],
        ..web()
    };
    let e = refused(&s);
    assert_eq!(e.field, "backends[2]");
    assert!(e.message.contains("backends[0]"), "{}", e.message);
    // The bare address of a one-port Service and the same address with its target port
    // are the same backend.
    let s = ServiceSpec {
        selector: BTreeMap::new(),
        backends: vec![backend("192.0.2.1:80"), backend("192.0.2.1")],
        ..web()
    };
    assert_eq!(field(&s), "backends[1]");
    // Two ports of one address are two backends.
    let s = ServiceSpec {
        selector: BTreeMap::new(),
        backends: vec![backend("192.0.2.1:8080"), backend("192.0.2.1:8081")],
        ..web()
    };
    assert_eq!(s.validate(&ServiceSettings::default()), Ok(()));
}

#[test]
fn unusable_backend_addresses_are_refused() {
    for bad in ["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255"] {
        let s = ServiceSpec {
            selector: BTreeMap::new(),
            backends: vec![backend("192.0.2.1"), backend(bad)],
            ..web()
        };
        assert_eq!(field(&s), "backends[1]", "{bad}");
    }
}

#[test]
fn backends_are_capped() {
    let s = ServiceSpec {
        selector: BTreeMap::new(),
        backends: (0..1001u32)
            .map(|i| ExplicitBackend {
                ip: Ipv4Addr::from(0x0a00_0000 + i + 1),
                port: None,
            })
            .collect(),
        ..web()
    };
    assert_eq!(field(&s), "backends");
}

#[test]
fn cluster_ip_lies_in_the_service_cidr() {
    let s = ServiceSpec {
        cluster_ip: Some(ClusterIp::Ip(Ipv4Addr::new(10, 0, 0, 10))),
        ..web()
    };
    let e = refused(&s);
    assert_eq!(e.field, "cluster_ip");
    assert!(e.message.contains("10.96.0.0/12"), "{}", e.message);
}

#[test]
fn cluster_ip_is_not_the_network_or_broadcast_address() {
    for edge in [
        Ipv4Addr::new(10, 96, 0, 0),
        Ipv4Addr::new(10, 111, 255, 255),
    ] {
        let s = ServiceSpec {
            cluster_ip: Some(ClusterIp::Ip(edge)),
            ..web()
        };
        assert_eq!(field(&s), "cluster_ip", "{edge}");
    }
}

#[test]
fn headless_services_have_no_node_ports() {
    let s = ServiceSpec {
        kind: ServiceType::NodePort,
        cluster_ip: Some(ClusterIp::Headless),
        ..web()
    };
    assert_eq!(field(&s), "cluster_ip");
}

fn external_name() -> ServiceSpec {
    ServiceSpec {
        kind: ServiceType::ExternalName,
        ports: Vec::new(),
        selector: BTreeMap::new(),
        external_name: Some("db.example.com".into()),
        ..web()
    }
}

#[test]
fn external_name_is_required_and_a_dns_name() {
    let s = ServiceSpec {
        external_name: None,
        ..external_name()
    };
    let e = refused(&s);
    assert_eq!(e.field, "external_name");
    assert!(e.message.contains("required"), "{}", e.message);
    for bad in [
        "",
        "db..example.com",
        "db_1.example.com",
        "10.0.0.1",
        "-db.example",
    ] {
        let s = ServiceSpec {
            external_name: Some(bad.into()),
            ..external_name()
        };
        assert_eq!(field(&s), "external_name", "{bad:?}");
    }
    let s = ServiceSpec {
        external_name: Some("db.example.com.".into()),
        ..external_name()
    };
    assert_eq!(s.validate(&ServiceSettings::default()), Ok(()));
}

#[test]
fn external_name_services_have_no_selector_backends_cluster_ip_or_external_ip() {
    let s = ServiceSpec {
        selector: web().selector,
        ..external_name()
    };
    assert_eq!(field(&s), "selector");
    let s = ServiceSpec {
        backends: vec![backend("192.0.2.1")],
        ..external_name()
    };
    assert_eq!(field(&s), "backends");
    let s = ServiceSpec {
        cluster_ip: Some(ClusterIp::Ip(Ipv4Addr::new(10, 96, 0, 10))),
        ..external_name()
    };
    assert_eq!(field(&s), "cluster_ip");
    let s = ServiceSpec {
        external_ip: Some(Ipv4Addr::new(192, 0, 2, 1)),
        ..external_name()
    };
    assert_eq!(field(&s), "external_ip");
}

#[test]
fn external_name_is_only_for_external_name_services() {
    let s = ServiceSpec {
        external_name: Some("db.example.com".into()),
        ..web()
    };
    assert_eq!(field(&s), "external_name");
}

#[test]
fn external_ip_is_only_for_load_balancers() {
    let s = ServiceSpec {
        kind: ServiceType::NodePort,
        external_ip: Some(Ipv4Addr::new(192, 0, 2, 1)),
        ..web()
    };
    let e = refused(&s);
    assert_eq!(e.field, "external_ip");
    assert!(e.message.contains("LoadBalancer"), "{}", e.message);
}

#[test]
fn external_ip_lies_in_the_pool_when_there_is_one() {
    let mut s = ServiceSpec {
        kind: ServiceType::LoadBalancer,
        external_ip: Some(Ipv4Addr::new(198, 51, 100, 7)),
        ..web()
    };
    // No pool: any usable address.
    assert_eq!(s.validate(&ServiceSettings::default()), Ok(()));
    let pool = ServiceSettings {
        external_pool: vec!["192.0.2.0/24".parse().unwrap()],
        ..ServiceSettings::default()
    };
    let e = refused_with(&s, &pool);
    assert_eq!(e.field, "external_ip");
    assert!(e.message.contains("192.0.2.0/24"), "{}", e.message);
    s.external_ip = Some(Ipv4Addr::new(127, 0, 0, 1));
    assert_eq!(field(&s), "external_ip");
}

#[test]
fn affinity_timeout_is_between_a_second_and_a_day() {
    for bad in [0, 86_401] {
        let s = ServiceSpec {
            affinity_timeout_s: bad,
            ..web()
        };
        assert_eq!(field(&s), "affinity_timeout_s", "{bad}");
    }
}

#[test]
fn health_interval_is_at_least_100_ms() {
    let mut s = web();
    s.health_check.interval_ms = 99;
    s.health_check.timeout_ms = 50;
    assert_eq!(field(&s), "health_check.interval_ms");
}

#[test]
fn health_timeout_is_shorter_than_the_interval() {
    let mut s = web();
    s.health_check.timeout_ms = s.health_check.interval_ms;
    let e = refused(&s);
    assert_eq!(e.field, "health_check.timeout_ms");
    assert_eq!(
        e.to_string(),
        format!("health_check.timeout_ms: {}", e.message)
    );
}

#[test]
fn health_rise_and_fall_are_between_1_and_100() {
    let mut s = web();
    s.health_check.rise = 0;
    assert_eq!(field(&s), "health_check.rise");
    let mut s = web();
    s.health_check.fall = 101;
    assert_eq!(field(&s), "health_check.fall");
}
