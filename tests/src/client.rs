//! Talking to a lab node's daemon through the `overlayd` CLI, as a user would.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::netns::{self, NetnsError};

/// How long one CLI call may take before it counts as hung.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);

pub use overlayd_proto::api::{
    MemberReport as Member, PeerReport, PodRecord, ServiceInfo, ServiceList, ServiceReport,
    ServicesReport, Status,
};
use overlayd_proto::api::{Members, Peers};
pub use overlayd_proto::gossip::MemberState;

/// Why a CLI call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Run(#[from] NetnsError),
    #[error("`overlayd {args}` printed output that is not the expected JSON ({source}): {stdout}")]
    Json {
        args: String,
        source: serde_json::Error,
        stdout: String,
    },
}

/// Runs `overlayd ARGS` inside node namespace `ns` with `OVERLAYD_SOCKET=socket`.
/// Returns `Err` iff it cannot start, hangs, or exits non-zero.
pub fn overlayd(bin: &Path, ns: &str, socket: &Path, args: &[&str]) -> Result<Output, NetnsError> {
    let mut cmd = netns::command(ns, bin)?;
    cmd.args(args).env("OVERLAYD_SOCKET", socket);
    netns::output_checked(cmd, CLI_TIMEOUT)
}

fn json<T: serde::de::DeserializeOwned>(
    bin: &Path,
    ns: &str,
    socket: &Path,
    args: &[&str],
) -> Result<T, ClientError> {
    let output = overlayd(bin, ns, socket, args)?;
    serde_json::from_slice(&output.stdout).map_err(|source| ClientError::Json {
        args: args.join(" "),
        source,
        stdout: String::from_utf8_lossy(&output.stdout).trim().to_string(),
    })
}

pub fn status(bin: &Path, ns: &str, socket: &Path) -> Result<Status, ClientError> {
    json(bin, ns, socket, &["status", "--json"])
}

pub fn peers(bin: &Path, ns: &str, socket: &Path) -> Result<Vec<PeerReport>, ClientError> {
    json::<Peers>(bin, ns, socket, &["peers", "--json"]).map(|p| p.peers)
}

pub fn members(bin: &Path, ns: &str, socket: &Path) -> Result<Vec<Member>, ClientError> {
    json::<Members>(bin, ns, socket, &["members", "--json"]).map(|m| m.members)
}

/// `overlayd pod add NAME --netns NETNS_PATH --json --label K=V…`.
pub fn pod_add(
    bin: &Path,
    ns: &str,
    socket: &Path,
    pod: &str,
    pod_netns: &Path,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<PodRecord, ClientError> {
    let netns_path = pod_netns.to_string_lossy();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec!["pod", "add", pod, "--netns", &netns_path, "--json"];
    for label in &labels {
        args.extend(["--label", label]);
    }
    json(bin, ns, socket, &args)
}

/// `overlayd pod del NAME`.
pub fn pod_del(bin: &Path, ns: &str, socket: &Path, pod: &str) -> Result<(), ClientError> {
    overlayd(bin, ns, socket, &["pod", "del", pod])?;
    Ok(())
}

/// `overlayd service list --json`.
pub fn service_list(bin: &Path, ns: &str, socket: &Path) -> Result<Vec<ServiceInfo>, ClientError> {
    json::<ServiceList>(bin, ns, socket, &["service", "list", "--json"]).map(|l| l.services)
}

/// `overlayd services --json`.
pub fn services(bin: &Path, ns: &str, socket: &Path) -> Result<Vec<ServiceReport>, ClientError> {
    json::<ServicesReport>(bin, ns, socket, &["services", "--json"]).map(|r| r.services)
}

/// `overlayd service ARGS… --json` (add, get, del), which answer one Service.
pub fn service(
    bin: &Path,
    ns: &str,
    socket: &Path,
    args: &[&str],
) -> Result<ServiceInfo, ClientError> {
    let mut all = vec!["service"];
    all.extend_from_slice(args);
    all.push("--json");
    json(bin, ns, socket, &all)
}
