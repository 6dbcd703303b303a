//! `[cluster]` service keys, `[services]`, `[dns]` and `[[service]]`: every way `parse`
//! rejects them, with the exact message a user sees, and the settings they give.

use overlayd_config::parse;
use overlayd_proto::service::{ServiceSettings, ServiceType};

/// A valid `[node]` table on lines 1 to 4; tests append the part under test from line 5.
const NODE: &str = r#"[node]
name = "node-1"
pod_subnet = "10.244.1.0/24"
underlay_address = "192.168.1.10"
"#;

fn error(rest: &str) -> String {
    match parse(&format!("{NODE}{rest}"), "o.toml") {
        Ok(config) => panic!("expected an error, parsed {config:?}"),
        Err(error) => error.to_string(),
    }
}

// ---- [cluster] ----

#[test]
fn service_cidr_with_host_bits() {
    assert_eq!(
        error("[cluster]\nservice_cidr = \"10.96.0.1/12\"\n"),
        "o.toml:6:16: cluster.service_cidr: 10.96.0.1/12 has host bits set; did you mean 10.96.0.0/12?"
    );
}

#[test]
fn service_cidr_too_small() {
    assert_eq!(
        error("[cluster]\nservice_cidr = \"10.96.0.0/31\"\n"),
        "o.toml:6:16: cluster.service_cidr: 10.96.0.0/31 leaves no room for Services; expected a prefix length of at most /30, like 10.96.0.0/12"
    );
}

#[test]
fn service_cidr_overlapping_the_pod_cidr() {
    assert_eq!(
        error("[cluster]\ncidr = \"10.0.0.0/8\"\n"),
        "o.toml:5:1: cluster.service_cidr: 10.96.0.0/12 overlaps cluster.cidr 10.0.0.0/8 (line 6); expected a subnet of its own for Service addresses, like 10.96.0.0/12"
    );
}

#[test]
fn domain_not_a_dns_name() {
    assert_eq!(
        error("[cluster]\ndomain = \"cluster..local\"\n"),
        "o.toml:6:10: cluster.domain: \"cluster..local\" has a label \"\" that is empty; expected a DNS name like cluster.local"
    );
}

// ---- [services] ----

#[test]
fn unknown_dataplane() {
    assert_eq!(
        error("[services]\ndataplane = \"ebpf\"\n"),
        "o.toml:6:13: services.dataplane: expected \"proxy\" or \"kernel\", found \"ebpf\""
    );
}

#[test]
fn kernel_dataplane() {
    let config = parse(
        &format!("{NODE}[services]\ndataplane = \"kernel\"\n"),
        "o.toml",
    )
    .unwrap();
    assert_eq!(
        config.services.dataplane,
        overlayd_config::schema::Dataplane::Kernel
    );
}

#[test]
fn unknown_relay() {
    assert_eq!(
        error("[services]\nrelay = \"sendfile\"\n"),
        "o.toml:6:9: services.relay: expected \"copy\" or \"splice\", found \"sendfile\""
    );
}

#[test]
fn node_port_range_not_a_range() {
    assert_eq!(
        error("[services]\nnode_port_range = \"30000\"\n"),
        "o.toml:6:19: services.node_port_range: expected a port range like \"30000-32767\" (LO-HI: ports 1 to 65535, LO at most HI), found \"30000\""
    );
}

#[test]
fn node_port_range_backwards() {
    assert_eq!(
        error("[services]\nnode_port_range = \"32767-30000\"\n"),
        "o.toml:6:19: services.node_port_range: \"32767-30000\" is backwards; expected a port range like \"30000-32767\" (LO-HI: ports 1 to 65535, LO at most HI)"
    );
}

#[test]
fn node_port_range_from_zero() {
    assert_eq!(
        error("[services]\nnode_port_range = \"0-100\"\n"),
        "o.toml:6:19: services.node_port_range: \"0-100\" starts at port 0; expected a port range like \"30000-32767\" (LO-HI: ports 1 to 65535, LO at most HI)"
    );
}

#[test]
fn node_port_range_holding_the_tunnel_port() {
    assert_eq!(
        error("[services]\nnode_port_range = \"8000-9000\"\n"),
        "o.toml:6:19: services.node_port_range: \"8000-9000\" contains tunnel.port's port 8472 (the default); expected a range clear of the ports overlayd itself listens on"
    );
}

#[test]
fn external_pool_with_host_bits() {
    assert_eq!(
        error("[services]\nexternal_pool = [\"192.0.2.1/28\"]\n"),
        "o.toml:6:18: services.external_pool[0]: 192.0.2.1/28 has host bits set; did you mean 192.0.2.0/28?"
    );
}

#[test]
fn external_pool_overlapping() {
    assert_eq!(
        error("[services]\nexternal_pool = [\"10.244.200.0/24\"]\n"),
        "o.toml:6:18: services.external_pool[0]: 10.244.200.0/24 overlaps cluster.cidr 10.244.0.0/16 (the default); expected external addresses outside the pod and service CIDRs, each listed once"
    );
    assert_eq!(
        error("[services]\nexternal_pool = [\"192.0.2.0/24\", \"192.0.2.64/26\"]\n"),
        "o.toml:6:34: services.external_pool[1]: 192.0.2.64/26 overlaps services.external_pool[0] 192.0.2.0/24 (line 6); expected external addresses outside the pod and service CIDRs, each listed once"
    );
}

// ---- [dns] ----

#[test]
fn dns_upstream_malformed() {
    assert_eq!(
        error("[dns]\nupstream = [\"dns.example.com\"]\n"),
        "o.toml:6:13: dns.upstream[0]: expected an IPv4 address or IP:PORT, like 192.0.2.53 or 198.51.100.1:5353, found \"dns.example.com\""
    );
}

#[test]
fn dns_upstream_not_unicast_or_port_zero() {
    assert_eq!(
        error("[dns]\nupstream = [\"224.0.0.251\"]\n"),
        "o.toml:6:13: dns.upstream[0]: \"224.0.0.251\" is a multicast address; expected an IPv4 address or IP:PORT, like 192.0.2.53 or 198.51.100.1:5353"
    );
    assert_eq!(
        error("[dns]\nupstream = [\"192.0.2.53:0\"]\n"),
        "o.toml:6:13: dns.upstream[0]: 192.0.2.53:0 has port 0; expected an IPv4 address or IP:PORT, like 192.0.2.53 or 198.51.100.1:5353"
    );
}

#[test]
fn dns_upstream_listed_twice() {
    assert_eq!(
        error("[dns]\nupstream = [\"192.0.2.53\", \"192.0.2.53:53\"]\n"),
        "o.toml:6:27: dns.upstream[1]: \"192.0.2.53\" is also dns.upstream[0] (line 6); list every upstream once"
    );
}

// ---- [[service]] ----

/// `[[service]]` tables from line 5.
const WEB: &str =
    "[[service]]\nname = \"web\"\nselector = { app = \"web\" }\nports = [{ port = 80 }]\n";

#[test]
fn service_errors_point_at_the_field() {
    let rest = format!(
        "{WEB}[[service]]\nname = \"api\"\ntype = \"NodePort\"\n[[service.ports]]\nport = 443\nnode_port = 8080\n"
    );
    assert_eq!(
        error(&rest),
        "o.toml:14:13: service[1].ports[0].node_port: 8080 is outside the node port range 30000-32767; pick one inside it, or leave node_port out to have one allocated"
    );
}

#[test]
fn service_selector_labels_are_checked() {
    assert_eq!(
        error(
            "[[service]]\nname = \"web\"\nselector = { app = \"web app\" }\nports = [{ port = 80 }]\n"
        ),
        "o.toml:7:20: service[0].selector.app: the label value \"web app\" contains ' ' (only A-Z, a-z, 0-9, '-', '_' and '.'); expected a value like \"web\" (at most 63 characters of A-Z, a-z, 0-9, '-', '_' and '.')"
    );
}

#[test]
fn service_without_ports() {
    assert_eq!(
        error("[[service]]\nname = \"web\"\n"),
        "o.toml:5:1: service[0].ports: a ClusterIP Service needs at least one port; add one, e.g. { port = 80 }"
    );
}

#[test]
fn service_cluster_ip_outside_the_service_cidr() {
    assert_eq!(
        error(&format!("{WEB}cluster_ip = \"10.0.0.1\"\n")),
        "o.toml:9:14: service[0].cluster_ip: 10.0.0.1 is outside the service CIDR 10.96.0.0/12; pick an address inside it, or leave cluster_ip out to have one allocated"
    );
}

#[test]
fn service_unknown_key_and_bad_type() {
    assert_eq!(
        error(&format!("{WEB}sesion_affinity = \"ClientIP\"\n")),
        "o.toml:9:1: service[0].sesion_affinity: unknown key `sesion_affinity`; expected one of: name, namespace, type, ports, selector, backends, cluster_ip, session_affinity, affinity_timeout_s, algorithm, health_check, external_ip, external_name"
    );
    assert_eq!(
        error(&format!("{WEB}type = \"Ingress\"\n")),
        "o.toml:9:8: service[0].type: expected \"ClusterIP\", \"NodePort\", \"LoadBalancer\" or \"ExternalName\", found \"Ingress\""
    );
    assert_eq!(
        error(
            "[[service]]\nname = \"web\"\nbackends = [\"192.0.2.1:x\"]\nports = [{ port = 80 }]\n"
        ),
        "o.toml:7:13: service[0].backends[0]: expected a backend like \"192.0.2.10\" or \"192.0.2.10:8080\" (IPV4 or IPV4:PORT), found \"192.0.2.1:x\""
    );
}

#[test]
fn services_with_the_same_name() {
    let rest = format!("{WEB}{WEB}");
    assert_eq!(
        error(&rest),
        "o.toml:10:8: service[1].name: \"web\" in namespace \"default\" is also service[0].name (line 6); every Service needs a name of its own within its namespace"
    );
    // Another namespace is another Service.
    let other = format!(
        "{WEB}{}",
        WEB.replace("name = \"web\"", "name = \"web\"\nnamespace = \"shop\"")
    );
    assert!(parse(&format!("{NODE}{other}"), "o.toml").is_ok());
}

#[test]
fn services_given_the_same_cluster_ip_and_port() {
    let a = format!("{WEB}cluster_ip = \"10.96.0.10\"\n");
    let b = a.replace("\"web\"", "\"api\"");
    assert_eq!(
        error(&format!("{a}{b}")),
        "o.toml:14:14: service[1].cluster_ip: cluster IP 10.96.0.10:80/TCP is also given in service[0].cluster_ip (line 9); two Services cannot share it"
    );
    // Another port on the same address is no conflict.
    let c = b.replace("port = 80", "port = 81");
    assert!(parse(&format!("{NODE}{a}{c}"), "o.toml").is_ok());
}

#[test]
fn services_given_the_same_node_port() {
    let a = "[[service]]\nname = \"a\"\ntype = \"NodePort\"\nports = [{ port = 80, node_port = 30080 }]\n";
    let b = a.replace("\"a\"", "\"b\"");
    assert_eq!(
        error(&format!("{a}{b}")),
        "o.toml:12:35: service[1].ports[0].node_port: node port 30080/TCP is also given in service[0].ports[0].node_port (line 8); two Services cannot share it"
    );
}

#[test]
fn service_settings_come_from_the_file() {
    let config = parse(
        &format!(
            "{NODE}[cluster]\nservice_cidr = \"10.100.0.0/16\"\n[services]\nnode_port_range = \"31000-31999\"\nexternal_pool = [\"192.0.2.0/28\"]\n\
             [[service]]\nname = \"lb\"\ntype = \"LoadBalancer\"\nselector = {{ app = \"lb\" }}\nports = [{{ port = 443 }}]\nexternal_ip = \"192.0.2.3\"\n"
        ),
        "o.toml",
    )
    .unwrap();
    assert_eq!(
        config.service_settings(),
        ServiceSettings {
            service_cidr: "10.100.0.0/16".parse().unwrap(),
            node_port_range: 31000..=31999,
            external_pool: vec!["192.0.2.0/28".parse().unwrap()],
        }
    );
    assert_eq!(config.service_specs[0].kind, ServiceType::LoadBalancer);
    // The pool binds given external IPs.
    let outside = format!(
        "{NODE}[services]\nexternal_pool = [\"192.0.2.0/28\"]\n[[service]]\nname = \"lb\"\ntype = \"LoadBalancer\"\nports = [{{ port = 443 }}]\nexternal_ip = \"198.51.100.3\"\n"
    );
    let e = parse(&outside, "o.toml").unwrap_err().to_string();
    assert!(e.starts_with("o.toml:11:15: service[0].external_ip: 198.51.100.3 is outside the external pool [192.0.2.0/28]"), "{e}");
}
