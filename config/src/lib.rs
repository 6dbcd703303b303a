//! overlayd's configuration file, `overlayd.toml`: its schema with defaults
//! ([`schema`]), and [`load`]/[`parse`], which turn TOML into a checked [`Config`].
//!
//! Checking happens in two steps. Decoding rejects TOML syntax errors, unknown keys,
//! missing required keys and values of the wrong type or form. Validation then
//! rejects what the types cannot: names that are not DNS labels or interface names,
//! subnets with host bits set, outside `cluster.cidr` or overlapping another node's,
//! duplicate peers, out-of-range ports, VNIs and MTUs, non-unicast MACs and addresses,
//! relative paths, malformed or duplicate gossip seeds, gossip timers that cannot work
//! together, a service CIDR or external pool overlapping the pod CIDR, a node port range
//! holding the node's own ports, and `[[service]]` tables that do not pass
//! `ServiceSpec::validate` (reported at the field, `service[1].ports[0].node_port`) or
//! clash with each other.
//!
//! Every rejection is one [`ConfigError`] that reads
//! `FILE:LINE:COLUMN: KEY: MESSAGE`, for example
//!
//! ```text
//! overlayd.toml:12:14: peer[1].pod_subnet: 10.244.1.0/24 overlaps node.pod_subnet 10.244.0.0/23 (line 3); every node needs a subnet of its own
//! ```
//!
//! The crate touches nothing beyond the one file [`load`] reads: defaults that depend
//! on the host, such as the underlay interface, stay `None` for the daemon to resolve.
//! `config/overlayd.example.toml` documents every key.

mod decode;
mod document;
mod error;
#[cfg(test)]
mod example_tests;
mod expected;
mod key_path;
pub mod schema;
mod seed;
#[cfg(test)]
mod test_support;
mod validate;

use std::path::Path;

pub use error::ConfigError;
pub use schema::{
    Bridge, Cluster, Config, Daemon, Dataplane, Dns, DnsUpstream, Gossip, Nat, Node, OnExit, Peer,
    PortRange, Profile, Services, TimingOverrides, Tunnel,
};
pub use seed::{Seed, SeedError};

use document::Document;

/// Reads the configuration file at `path` and [`parse`]s it, naming it in errors as
/// `path` displays.
///
/// Returns `Err` iff the file cannot be read, is not UTF-8, or [`parse`] rejects it.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| ConfigError::unreadable(&file, error))?;
    match std::str::from_utf8(&bytes) {
        Ok(source) => parse(source, &file),
        Err(error) => Err(not_utf8(&file, &bytes, &error)),
    }
}

/// Parses and validates the TOML text `source`; `file` names it in error messages.
///
/// Returns `Err` iff `source` is not valid TOML, does not match the schema (unknown
/// key, missing required key, wrong type or unparsable value), or breaks a rule
/// checked on the values (see the crate documentation). Pure: no file or system access.
pub fn parse(source: &str, file: &str) -> Result<Config, ConfigError> {
    let doc = Document::parse(source, file)?;
    let config = decode::decode(&doc)?;
    validate::validate(&config, &doc)?;
    Ok(config)
}

/// The error for a file that is not UTF-8, pointing at the first invalid byte.
fn not_utf8(file: &str, bytes: &[u8], error: &std::str::Utf8Error) -> ConfigError {
    let valid = &bytes[..error.valid_up_to()];
    let valid = std::str::from_utf8(valid).unwrap_or_default();
    let message = "invalid UTF-8; expected a UTF-8 encoded TOML file";
    ConfigError::at(
        file,
        valid,
        valid.len(),
        &key_path::KeyPath::root(),
        message,
    )
}
