//! `overlayd.example.toml` parses, documents every key, and documents the defaults
//! the code applies.

use std::collections::BTreeSet;

use overlayd_proto::gossip::Timing;

use crate::parse;
use crate::schema::{Bridge, Cluster, Daemon, Dns, Gossip, Nat, Profile, Services, Tunnel};
use crate::test_support::schema_keys;

const EXAMPLE: &str = include_str!("../overlayd.example.toml");
const GOSSIP_EXAMPLE: &str = include_str!("../overlayd.gossip.example.toml");

#[test]
fn example_parses() {
    let config = parse(EXAMPLE, "overlayd.example.toml").unwrap();

    assert_eq!(config.node.name, "node-1");
    assert_eq!(config.peers.len(), 2);
    assert_eq!(config.gossip, None);
    let names: Vec<&str> = config
        .service_specs
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["web", "api", "db"]);
}

#[test]
fn gossip_example_parses_and_claims_its_subnet() {
    let config = parse(GOSSIP_EXAMPLE, "overlayd.gossip.example.toml").unwrap();

    assert_eq!(config.node.pod_subnet, None);
    let gossip = config.gossip.unwrap();
    assert_eq!(gossip.seeds, ["192.168.1.11"]);
    assert_eq!(gossip.timing(), Timing::lan());
    assert_eq!(config.peers.len(), 1);
}

#[test]
fn example_documents_every_key() {
    let documented = documented_keys(EXAMPLE);

    let missing: Vec<String> = schema_keys()
        .into_iter()
        .filter(|key| !documented.contains(key))
        .collect();

    assert!(
        missing.is_empty(),
        "keys missing from overlayd.example.toml: {missing:?}"
    );
}

#[test]
fn example_values_are_valid_and_defaults_match_the_code() {
    let uncommented = uncomment_keys(EXAMPLE);

    let config = parse(&uncommented, "uncommented.toml").unwrap();

    assert_eq!(config.cluster, Cluster::default());
    assert_eq!(
        Bridge {
            mtu: None,
            ..config.bridge
        },
        Bridge::default()
    );
    assert_eq!(
        Tunnel {
            mtu: None,
            ..config.tunnel
        },
        Tunnel::default()
    );
    assert_eq!(config.nat, Nat::default());
    assert_eq!(config.daemon, Daemon::default());
    assert_eq!(
        Services {
            external_pool: Vec::new(),
            ..config.services
        },
        Services::default()
    );
    assert_eq!(
        Dns {
            upstream: Vec::new(),
            ..config.dns
        },
        Dns::default()
    );
    // The commented-out values of every [[service]] key work together.
    assert_eq!(config.service_specs.len(), 3);
    assert_eq!(
        config.service_specs[1].external_ip,
        Some("192.0.2.10".parse().unwrap())
    );
    assert_eq!(config.service_specs[0].health_check, Default::default());
    assert_eq!(config.node.zone, "default");
    let gossip = config.gossip.unwrap();
    assert_eq!(gossip.bind, Gossip::default_bind());
    assert_eq!(gossip.profile, Profile::default());
    assert_eq!(gossip.timing(), Timing::lan());
}

#[test]
fn example_timing_defaults_match_the_profiles() {
    let (lan, wan) = timing_defaults(EXAMPLE);

    let lan: crate::schema::TimingOverrides = toml::from_str(&lan).unwrap();
    let wan: crate::schema::TimingOverrides = toml::from_str(&wan).unwrap();

    assert!(lan.by_key().iter().all(|(_, value)| value.is_some()));
    assert_eq!(lan.apply(Timing::wan()), Timing::lan());
    assert_eq!(wan.apply(Timing::lan()), Timing::wan());
}

/// The `Default: lan A, wan B.` of every key in `[gossip.timing]`, as two TOML tables.
fn timing_defaults(example: &str) -> (String, String) {
    let (mut lan, mut wan) = (String::new(), String::new());
    let mut defaults: Option<(String, String)> = None;
    for line in example.lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some((_, rest)) = line.split_once("Default: lan ") {
            let (a, b) = rest.split_once(", wan ").expect("`lan A, wan B`");
            let number = |text: &str| text.split([' ', '.', '(']).next().unwrap().to_owned();
            defaults = Some((number(a), number(b)));
        } else if let Some((key, _)) = line.split_once(" = ")
            && let Some((a, b)) = defaults.take()
        {
            lan.push_str(&format!("{key} = {a}\n"));
            wan.push_str(&format!("{key} = {b}\n"));
        }
    }
    (lan, wan)
}

/// Every `table.key` the example sets or shows commented out, tables included.
fn documented_keys(example: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut table = String::new();
    for line in example.lines() {
        let line = line.trim_start_matches('#').trim();
        let header = line
            .strip_prefix("[[")
            .and_then(|rest| rest.strip_suffix("]]"));
        let header = header.or_else(|| line.strip_prefix('[').and_then(|r| r.strip_suffix(']')));
        if let Some(header) = header {
            table = header.to_owned();
            keys.insert(table.clone());
        } else if let Some((key, _)) = line.split_once(" = ") {
            keys.insert(format!("{table}.{key}"));
        }
    }
    keys
}

/// The example with every commented-out `key = value` line and `[table]` header made
/// active.
fn uncomment_keys(example: &str) -> String {
    let uncomment = |line: &str| match line.strip_prefix("# ") {
        Some(rest)
            if rest
                .split_once(" = ")
                .is_some_and(|(key, _)| is_bare_key(key)) =>
        {
            rest.to_owned()
        }
        Some(rest) if is_table_header(rest) => rest.to_owned(),
        _ => line.to_owned(),
    };
    example
        .lines()
        .map(uncomment)
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_bare_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
}

/// `[table]` or `[table.subtable]`, nothing else on the line.
fn is_table_header(line: &str) -> bool {
    line.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .is_some_and(|name| name.split('.').all(is_bare_key))
}
