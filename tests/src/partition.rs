//! Network faults between segments, injected in the router namespace with nftables:
//! `partition` drops everything routed between two segments, `heal` lifts every partition.

use crate::lab::{Lab, LabError};
use crate::netns;

/// The nftables table the lab's partitions live in (router namespace only).
const TABLE: &str = "ovl_partition";

impl Lab {
    /// Cuts segments `a` and `b` apart: the router drops every packet between their
    /// subnets, both ways, until [`Lab::heal`]. Partitioning the same pair twice is harmless.
    pub fn partition(&self, a: &str, b: &str) -> Result<(), LabError> {
        let subnet = |name: &str| {
            self.topology()
                .segment(name)
                .map(|s| s.subnet)
                .ok_or_else(|| LabError::Partition(format!("no segment named {name:?}")))
        };
        let (sa, sb) = (subnet(a)?, subnet(b)?);
        if sa == sb {
            return Err(LabError::Partition(format!(
                "cannot partition segment {a:?} from itself"
            )));
        }
        let script = format!(
            "add table inet {TABLE}\n\
             add chain inet {TABLE} forward {{ type filter hook forward priority -10; policy accept; }}\n\
             add rule inet {TABLE} forward ip saddr {sa} ip daddr {sb} drop comment \"{a}-{b}\"\n\
             add rule inet {TABLE} forward ip saddr {sb} ip daddr {sa} drop comment \"{b}-{a}\"\n"
        );
        nft(&self.router_netns(), &script)
    }

    /// Lifts every partition.
    pub fn heal(&self) -> Result<(), LabError> {
        nft(
            &self.router_netns(),
            &format!("add table inet {TABLE}\ndelete table inet {TABLE}\n"),
        )
    }
}

fn nft(ns: &str, script: &str) -> Result<(), LabError> {
    use std::io::Write;
    let mut cmd = netns::command(ns, "nft")?;
    cmd.args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| LabError::Partition(format!("running nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| LabError::Partition(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::Partition(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        return Err(LabError::Partition(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
