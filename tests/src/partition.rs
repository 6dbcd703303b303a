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

    /// The pairs of segments cut apart now, each once, as [`Lab::partition`] was called.
    pub fn partitions(&self) -> Result<Vec<(String, String)>, LabError> {
        let ruleset = netns::run_in(&self.router_netns(), &["nft", "list", "ruleset"])?;
        let is_segment = |name: &str| self.topology().segment(name).is_some();
        let mut pairs: Vec<(String, String)> = cut_pairs(&ruleset)
            .filter(|(a, b)| is_segment(a) && is_segment(b))
            .map(|(a, b)| if a < b { (a, b) } else { (b, a) })
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        pairs.sort();
        pairs.dedup();
        Ok(pairs)
    }

    /// Lifts every partition.
    pub fn heal(&self) -> Result<(), LabError> {
        nft(
            &self.router_netns(),
            &format!("add table inet {TABLE}\ndelete table inet {TABLE}\n"),
        )
    }
}

/// The `A-B` comments [`Lab::partition`] puts on its drop rules, as `(A, B)`. Segment
/// names hold no `-`, so the split is unambiguous.
fn cut_pairs(ruleset: &str) -> impl Iterator<Item = (&str, &str)> {
    ruleset.lines().filter_map(|line| {
        let rest = &line[line.find("comment \"")? + "comment \"".len()..];
        let comment = &rest[..rest.find('"')?];
        comment.split_once('-')
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_pairs_come_from_the_rule_comments() {
        let ruleset = r#"table inet ovl_partition {
	chain forward {
		type filter hook forward priority -10; policy accept;
		ip saddr 10.100.1.0/24 ip daddr 10.100.2.0/24 drop comment "a-b"
		ip saddr 10.100.2.0/24 ip daddr 10.100.1.0/24 drop comment "b-a"
		counter packets 0 bytes 0
	}
}"#;

        let pairs: Vec<_> = cut_pairs(ruleset).collect();

        assert_eq!(pairs, [("a", "b"), ("b", "a")]);
        assert_eq!(cut_pairs("").count(), 0);
    }
}
