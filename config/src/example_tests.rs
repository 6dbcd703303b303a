//! `overlayd.example.toml` parses, documents every key, and documents the defaults
//! the code applies.

use std::collections::BTreeSet;

use crate::parse;
use crate::schema::{Bridge, Cluster, Daemon, Nat, Tunnel};
use crate::test_support::schema_keys;

const EXAMPLE: &str = include_str!("../overlayd.example.toml");

#[test]
fn example_parses() {
    let config = parse(EXAMPLE, "overlayd.example.toml").unwrap();

    assert_eq!(config.node.name, "node-1");
    assert_eq!(config.peers.len(), 2);
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

/// The example with every commented-out `key = value` line made active.
fn uncomment_keys(example: &str) -> String {
    let uncomment = |line: &str| match line.strip_prefix("# ") {
        Some(rest)
            if rest
                .split_once(" = ")
                .is_some_and(|(key, _)| is_bare_key(key)) =>
        {
            rest.to_owned()
        }
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
