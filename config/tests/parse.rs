//! Valid files: defaults, full configurations, and reading from disk with `load`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use overlayd_config::{
    Bridge, Cluster, Config, Daemon, Nat, Node, OnExit, Peer, Tunnel, load, parse,
};
use overlayd_proto::wire::MacAddr;

#[test]
fn minimal_config_takes_every_documented_default() {
    let source = "[node]\nname = \"node-1\"\npod_subnet = \"10.244.1.0/24\"\n";

    let config = parse(source, "o.toml").unwrap();

    let expected = Config {
        node: Node {
            name: "node-1".into(),
            underlay_interface: None,
            underlay_address: None,
            advertise_address: None,
            pod_subnet: "10.244.1.0/24".parse().unwrap(),
            vtep_mac: None,
        },
        cluster: Cluster {
            cidr: "10.244.0.0/16".parse().unwrap(),
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
        },
        nat: Nat { masquerade: true },
        daemon: Daemon {
            state_dir: "/var/lib/overlayd".into(),
            control_socket: "/run/overlayd/overlayd.sock".into(),
            on_exit: OnExit::Remove,
        },
        peers: vec![],
    };
    assert_eq!(config, expected);
}

#[test]
fn every_key_set() {
    let source = r#"
[node]
name = "node-1"
underlay_interface = "eth0"
underlay_address = "192.168.1.10"
advertise_address = "203.0.113.10"
pod_subnet = "10.244.1.0/24"
vtep_mac = "0e:00:00:00:00:01"

[cluster]
cidr = "10.244.0.0/16"

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
on_exit = "keep"

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
    assert_eq!(config.daemon.on_exit, OnExit::Keep);
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
            "{}:1:1: node.pod_subnet: missing required key `pod_subnet`; expected an IPv4 \
             subnet like 10.244.1.0/24",
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
