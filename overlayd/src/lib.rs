//! overlayd: one daemon per node that gives every pod an IP on the node bridge and joins
//! the pod subnets of all nodes into one flat network — host-gw routes between nodes that
//! share an L2 segment, VXLAN over UDP between the rest.
//!
//! The library is the daemon's I/O shell; every decision it acts on comes from
//! `overlayd_proto`. `main.rs` is only the command line.

pub mod api;
pub mod arp;
pub mod cli;
pub mod daemon;
pub mod datapath;
pub mod discovery;
pub mod dns;
pub mod gossip;
pub mod keys;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod pki;
pub mod pmtu;
pub mod pods;
pub mod proxy;
pub mod services;
pub mod sysctl;

/// Replaces `path` with `bytes` so that a crash leaves the old or the new contents, never
/// a mix: a temporary file next to it, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// An error and its causes on one line, `outer: cause: root`, with each cause left out
/// when the text before it already says it. Many error types print their source in their
/// own message and also return it from `source()`; anyhow's `{:#}` would then repeat it.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(part.trim()) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_text;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read topology file x.toml: {source}")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn error_text_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Outer { source: io }).context("lab up");
        assert_eq!(
            error_text(&e),
            "lab up: cannot read topology file x.toml: no such file"
        );
        let plain = anyhow::anyhow!("root").context("middle").context("top");
        assert_eq!(error_text(&plain), "top: middle: root");
    }
}
