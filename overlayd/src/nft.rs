//! Installs and removes the daemon's nftables table with `nft -f -`. What the table holds
//! is decided in proto (`overlayd_proto::nft::Ruleset`).

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
pub use overlayd_proto::nft::{Ruleset, TABLE};

/// Installs (replaces) our table.
pub fn install(ruleset: &Ruleset) -> Result<()> {
    nft(&ruleset.script())
}

/// Removes the table if it exists. Without nft installed there is no table to remove.
pub fn remove() -> Result<()> {
    match nft(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n")) {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn nft(script: &str) -> Result<()> {
    let mut child = match Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(anyhow::Error::new(e).context(
                "nft is not installed: install the nftables package (the daemon needs it for NAT and \
                 for the rule that keeps pods off the tunnel and gossip ports)",
            ));
        }
        Err(e) => return Err(e).context("running nft"),
    };
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan proto makes is a script the real `nft` accepts (checked, not applied).
    #[test]
    fn nft_accepts_the_planned_ruleset() {
        if !nix::unistd::geteuid().is_root() {
            let _ = std::io::stderr()
                .write_all(b"\n*** nft test SKIPPED: `nft -c` needs root (CI runs it as root)\n");
            return;
        }
        for masquerade in [true, false] {
            let ruleset = Ruleset {
                pods: "10.244.1.0/24".parse().unwrap(),
                cluster: "10.244.0.0/16".parse().unwrap(),
                masquerade,
                tunnel_port: 8472,
                gossip_port: Some(7946),
                nodes: ["10.100.1.12".parse().unwrap()].into_iter().collect(),
            };
            let mut child = Command::new("nft")
                .args(["-c", "-f", "-"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("nft is installed (CI installs nftables)");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(ruleset.script().as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "nft -c refused:\n{}\n{}",
                ruleset.script(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
