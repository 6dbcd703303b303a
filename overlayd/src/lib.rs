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
pub mod echo;
pub mod gossip;
pub mod keys;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod paths;
pub mod pki;
pub mod pmtu;
pub mod pods;
pub mod proxy;
pub mod quic;
pub mod services;
pub mod sysctl;

/// Replaces `path` with `bytes` so that a crash leaves the old or the new contents, never
/// a mix: a temporary file next to it, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic_mode(path, bytes, 0o666)
}

/// [`write_atomic`] into an existing directory, the file created with `mode` (less the
/// umask) from the start: a key file is never readable by others, not even briefly.
pub fn write_atomic_mode(path: &std::path::Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the stale {}", tmp.display()));
        }
        _ => {}
    }
    // create_new (O_EXCL) also refuses to follow a symlink planted at the temporary name.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
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
