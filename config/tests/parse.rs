//! Valid files: defaults, full configurations, and reading from disk with `load`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use overlayd_config::schema::Relay;
use overlayd_config::{
    Bridge, Cluster, Config, Daemon, Dataplane, Dns, Gossip, Nat, Node, OnExit, Peer, PortRange,
    Profile, Seed, Services, TimingOverrides, Tunnel, load, parse,
};
use overlayd_proto::gossip::Timing;
use overlayd_proto::wire::MacAddr;

#[test]
fn minimal_config_takes_every_documented_default() {
    let source = "[node]\nname = \"node-1\"\npod_subnet = \"10.244.1.0/24\"\n";

    let config = parse(source, "o.toml").unwrap();

    let expected = Config {
        node: Node {
            name: "node-1".into(),
            zone: "default".into(),
            underlay_interface: None,
            underlay_address: None,
            advertise_address: None,
            pod_subnet: Some("10.244.1.0/24".parse().unwrap()),
            vtep_mac: None,
        },
        cluster: Cluster {
            cidr: "10.244.0.0/16".parse().unwrap(),
            name: "overlayd".into(),
            subnet_prefix: 24,
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            domain: "cluster.local".into(),
        },
        bridge: Bridge {
            name: "ovd0".into(),
            mtu: None,
        },
        tunnel: Tunnel {
            device: "ovdtun0".into(),
            port: 8472,
            vni: 1,
            host_gw: true,
            mtu: None,
            offload: true,
            udp_gso: true,
            udp_gro: true,
        },
        nat: Nat { masquerade: true },
        daemon: Daemon {
            state_dir: "/var/lib/overlayd".into(),
            control_socket: "/run/overlayd/overlayd.sock".into(),
            on_exit: OnExit::Keep,
        },
        gossip: None,
        peers: vec![],
        services: Services {
            dataplane: Dataplane::Proxy,
            node_port_range: PortRange {
                lo: 30000,
                hi: 32767,
            },
            external_pool: vec![],
            relay: Relay::Copy,
        },
        dns: Dns {
            enabled: true,
            upstream: vec![],
        },
        service_specs: vec![],
        quic: None,
        path: Default::default(),
    };
    assert_eq!(config, expected);
    assert_eq!(
        config.service_settings(),
        overlayd_proto::service::ServiceSettings::default()
    );
}

#[test]
fn minimal_gossip_config_takes_every_documented_default() {
    let source =
        "[node]\nname = \"node-1\"\n[gossip]\nkey_files = [\"/etc/overlayd/gossip.key\"]\n";

    let config = parse(source, "o.toml").unwrap();

    assert_eq!(config.node.pod_subnet, None);
    let gossip = config.gossip.unwrap();
    assert_eq!(
        gossip,
        Gossip {
            bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7946),
            advertise: None,
            seeds: vec![],
            key_files: vec!["/etc/overlayd/gossip.key".into()],
            profile: Profile::Lan,
            timing: TimingOverrides::default(),
        }
    );
    assert_eq!(gossip.timing(), Timing::lan());
    assert!(gossip.seed_addrs().is_empty());
    assert_eq!(config.cluster.subnet_pool().prefix, 24);
    assert_eq!(
        config.cluster.subnet_pool().cluster,
        "10.244.0.0/16".parse().unwrap()
    );
}

#[test]
fn timing_is_the_profile_with_the_overrides() {
    let source = "[node]\nname = \"node-1\"\n[gossip]\nkey_files = [\"/k\"]\nprofile = \"wan\"\n\
                  [gossip.timing]\nprobe_timeout_ms = 4000\ngossip_fanout = 7\n";

    let config = parse(source, "o.toml").unwrap();

    let timing = config.gossip.unwrap().timing();
    let expected = Timing {
        probe_timeout: Duration::from_millis(4000),
        gossip_fanout: 7,
        ..Timing::wan()
    };
    assert_eq!(timing, expected);
}

#[test]
fn lan_profile_with_one_override() {
    let source = "[node]\nname = \"node-1\"\n[gossip]\nkey_files = [\"/k\"]\n\
                  [gossip.timing]\nclaim_wait_ms = 100\n";

    let config = parse(source, "o.toml").unwrap();

    let gossip = config.gossip.unwrap();
    assert_eq!(gossip.profile, Profile::Lan);
    assert_eq!(
        gossip.timing(),
        Timing {
            claim_wait: Duration::from_millis(100),
            ..Timing::lan()
        }
    );
}

#[test]
fn seeds_get_the_bind_port_unless_they_name_one() {
    let source = "[node]\nname = \"node-1\"\n[gossip]\nkey_files = [\"/k\"]\nbind = \"0.0.0.0:8000\"\n\
                  seeds = [\"10.0.0.1\", \"Seed.Example.com:9000\"]\n";

    let config = parse(source, "o.toml").unwrap();

    let seeds = config.gossip.as_ref().unwrap().seed_addrs();
    let seed = |host: &str, port| Seed {
        host: host.into(),
        port,
    };
    assert_eq!(
        seeds,
        [seed("10.0.0.1", 8000), seed("seed.example.com", 9000)]
    );
    assert_eq!(seeds[1].to_string(), "seed.example.com:9000");
}

#[test]
fn gossip_advertise_defaults_to_the_node_address_and_bind_port() {
    let node = "[node]\nname = \"node-1\"\n";
    let gossip = "[gossip]\nkey_files = [\"/k\"]\nbind = \"0.0.0.0:8000\"\n";
    let underlay = Ipv4Addr::new(192, 168, 1, 10);
    let at = |address: [u8; 4], port| Some(SocketAddrV4::new(address.into(), port));

    let plain = parse(&format!("{node}{gossip}"), "o.toml").unwrap();
    let natted = parse(
        &format!("{node}advertise_address = \"203.0.113.10\"\n{gossip}"),
        "o.toml",
    )
    .unwrap();
    let explicit = parse(
        &format!("{node}{gossip}advertise = \"198.51.100.1:7000\"\n"),
        "o.toml",
    )
    .unwrap();
    let static_only = parse(
        "[node]\nname = \"node-1\"\npod_subnet = \"10.244.1.0/24\"\n",
        "o.toml",
    )
    .unwrap();

    assert_eq!(
        plain.gossip_advertise(underlay),
        at([192, 168, 1, 10], 8000)
    );
    assert_eq!(
        natted.gossip_advertise(underlay),
        at([203, 0, 113, 10], 8000)
    );
    assert_eq!(
        explicit.gossip_advertise(underlay),
        at([198, 51, 100, 1], 7000)
    );
    assert_eq!(static_only.gossip_advertise(underlay), None);
}

#[test]
fn static_pod_subnet_with_gossip_may_have_any_prefix_length() {
    let source = "[node]\nname = \"node-1\"\npod_subnet = \"10.244.4.0/22\"\n\
                  [gossip]\nkey_files = [\"/k\"]\n";

    let config = parse(source, "o.toml").unwrap();

    assert_eq!(
        config.node.pod_subnet,
        Some("10.244.4.0/22".parse().unwrap())
    );
    assert_eq!(config.cluster.subnet_prefix, 24);
}

#[test]
fn subnet_prefix_need_not_fit_the_cluster_without_gossip() {
    let source = "[node]\nname = \"node-1\"\npod_subnet = \"10.244.0.0/27\"\n\
                  [cluster]\ncidr = \"10.244.0.0/26\"\n";

    let config = parse(source, "o.toml").unwrap();

    assert_eq!(config.cluster.subnet_prefix, 24);
}

#[test]
fn every_key_set() {
    let source = r#"
[node]
name = "node-1"
zone = "rack-1"
underlay_interface = "eth0"
underlay_address = "192.168.1.10"
advertise_address = "203.0.113.10"
pod_subnet = "10.244.1.0/24"
vtep_mac = "0e:00:00:00:00:01"

[cluster]
cidr = "10.244.0.0/16"
name = "prod.eu_1"
subnet_prefix = 26

[bridge]
name = "br-pods"
mtu = 9000

[tunnel]
device = "vx0"
port = 4789
vni = 16777215
host_gw = false
mtu = 8950

[nat]
masquerade = false

[daemon]
state_dir = "/srv/overlayd"
control_socket = "/run/ovd.sock"
on_exit = "remove"

[gossip]
bind = "192.168.1.10:7000"
advertise = "203.0.113.10:7001"
seeds = ["192.168.1.11", "seed.example.com:7946"]
key_files = ["/etc/overlayd/new.key", "/etc/overlayd/old.key"]
profile = "wan"

[gossip.timing]
probe_interval_ms = 6000
probe_timeout_ms = 4000
indirect_probes = 4
suspicion_mult = 5
suspicion_max_mult = 6
suspicion_confirmations = 2
gossip_interval_ms = 300
gossip_fanout = 5
push_pull_interval_ms = 30_000
reannounce_interval_ms = 10_000
dead_reap_after_ms = 3_600_000
tombstone_gc_after_ms = 172_800_000
retransmit_mult = 3
lhm_max = 4
stream_timeout_ms = 20_000
claim_wait_ms = 10_000

[[peer]]
name = "node-2"
underlay_address = "192.168.1.11"
pod_subnet = "10.244.2.0/24"
vtep_mac = "0e:00:00:00:00:02"
"#;

    let config = parse(source, "o.toml").unwrap();

    assert_eq!(
        config.node.advertise_address,
        Some(Ipv4Addr::new(203, 0, 113, 10))
    );
    assert_eq!(config.bridge.mtu, Some(9000));
    assert_eq!(config.tunnel.vni, 16_777_215);
    assert!(!config.tunnel.host_gw && !config.nat.masquerade);
    assert_eq!(config.daemon.on_exit, OnExit::Remove);
    assert_eq!(config.node.zone, "rack-1");
    assert_eq!(config.cluster.name, "prod.eu_1");
    assert_eq!(config.cluster.subnet_prefix, 26);
    let gossip = config.gossip.as_ref().unwrap();
    assert_eq!(gossip.key_files.len(), 2);
    assert_eq!(
        gossip.timing(),
        Timing {
            probe_interval: Duration::from_secs(6),
            probe_timeout: Duration::from_secs(4),
            indirect_probes: 4,
            suspicion_mult: 5,
            suspicion_max_mult: 6,
            suspicion_confirmations: 2,
            gossip_interval: Duration::from_millis(300),
            gossip_fanout: 5,
            push_pull_interval: Duration::from_secs(30),
            reannounce_interval: Duration::from_secs(10),
            dead_reap_after: Duration::from_secs(3600),
            tombstone_gc_after: Duration::from_secs(48 * 3600),
            retransmit_mult: 3,
            lhm_max: 4,
            stream_timeout: Duration::from_secs(20),
            claim_wait: Duration::from_secs(10),
        }
    );
    assert_eq!(
        config.peers,
        [Peer {
            name: "node-2".into(),
            underlay_address: Ipv4Addr::new(192, 168, 1, 11),
            pod_subnet: "10.244.2.0/24".parse().unwrap(),
            vtep_mac: Some(MacAddr([0x0e, 0, 0, 0, 0, 2])),
        }]
    );
}

#[test]
fn inline_tables_and_dotted_keys_are_toml_too() {
    let source = "node = { name = \"n\", pod_subnet = \"10.244.1.0/24\" }\ntunnel.port = 4789\n";

    let config = parse(source, "o.toml").unwrap();

    assert_eq!(config.tunnel.port, 4789);
}

#[test]
fn errors_inside_inline_tables_point_at_the_value() {
    let source = "node = { name = \"n\", pod_subnet = \"10.244.1.0/31\" }\n";

    let error = parse(source, "o.toml").unwrap_err();

    assert_eq!(
        error.to_string(),
        "o.toml:1:35: node.pod_subnet: 10.244.1.0/31 leaves no addresses for pods; expected a \
         prefix length of at most /30"
    );
}

/// A file in the system temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!("{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("the temp directory is writable");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn load_reads_and_names_the_file() {
    let file = TempFile::new(
        "load.toml",
        b"[node]\nname = \"n\"\npod_subnet = \"10.244.1.0/24\"\n",
    );

    let config = load(&file.0).unwrap();

    assert_eq!(config.node.name, "n");
}

#[test]
fn load_errors_name_the_path() {
    let file = TempFile::new("bad.toml", b"[node]\nname = \"n\"\n");

    let error = load(&file.0).unwrap_err();

    assert_eq!(
        error.to_string(),
        format!(
            "{}:1:1: node.pod_subnet: missing key pod_subnet; required unless [gossip] is set, \
             in which case the node claims one from cluster.cidr",
            file.0.display()
        )
    );
}

#[test]
fn load_of_a_missing_file() {
    let path = std::env::temp_dir().join("overlayd-config-test-does-not-exist.toml");

    let error = load(&path).unwrap_err();

    assert_eq!(
        error.to_string(),
        format!(
            "{}:1:1: (top level): cannot read the file: No such file or directory (os error 2); \
             expected a readable TOML file",
            path.display()
        )
    );
    assert!(std::error::Error::source(&error).is_some());
}

#[test]
fn load_of_a_file_that_is_not_utf8() {
    let file = TempFile::new("latin1.toml", b"[node]\nname = \"n\xe9\"\n");

    let error = load(&file.0).unwrap_err();

    assert_eq!(
        error.to_string(),
        format!(
            "{}:2:10: (top level): invalid UTF-8; expected a UTF-8 encoded TOML file",
            file.0.display()
        )
    );
}
