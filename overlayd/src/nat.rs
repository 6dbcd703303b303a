//! Source NAT for pods reaching beyond the cluster (Flannel's ipMasq), in an nftables
//! table of our own. Applied with `nft -f -` in one transaction, as kube-proxy's nftables
//! mode (knftables) does: replacing the table is atomic and touches no other table.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;

/// The nftables table the daemon owns (`nft list table ip overlayd`).
pub const TABLE: &str = "overlayd";

/// The ruleset for masquerading `pods` when they talk outside `cluster`.
pub fn ruleset(pods: Ipv4Net, cluster: Ipv4Net) -> String {
    format!(
        "add table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {pods} ip daddr != {cluster} masquerade comment \"overlayd: pods leaving the cluster\"\n\
         \t}}\n\
         }}\n"
    )
}

/// Installs (replaces) the masquerade table.
pub fn install(pods: Ipv4Net, cluster: Ipv4Net) -> Result<()> {
    nft(&ruleset(pods, cluster))
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
                "nft is not installed: install the nftables package, or set nat.masquerade = false",
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

    #[test]
    fn ruleset_masquerades_only_traffic_leaving_the_cluster() {
        let rules = ruleset(
            "10.244.1.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
        );
        assert!(rules.contains("ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 masquerade"));
        assert!(rules.starts_with("add table ip overlayd\ndelete table ip overlayd\n"));
    }
}
