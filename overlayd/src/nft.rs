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

/// Installs (replaces) the Services' kernel data path table
/// (`overlayd_proto::service::kernel::plan`).
pub fn install_services(script: &str) -> Result<()> {
    nft(script)
}

/// Removes our tables if they exist. Without nft installed there is no table to remove.
pub fn remove() -> Result<()> {
    let script = format!(
        "add table ip {TABLE}\ndelete table ip {TABLE}\n{}",
        overlayd_proto::service::kernel::remove_script()
    );
    match nft(&script) {
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
    run_nft(&["-f", "-"], script)
}

/// Runs `nft ARGS` with `script` on its stdin.
fn run_nft(args: &[&str], script: &str) -> Result<()> {
    let mut child = match Command::new("nft")
        .args(args)
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

    /// Runs `nft -c -f -` (check only) on `script`; `Err` with nft's complaint.
    fn nft_check(script: &str) -> std::result::Result<(), String> {
        run_nft(&["-c", "-f", "-"], script).map_err(|e| format!("{e:#}\n{script}"))
    }

    /// The Services' kernel data path plan (round robin and Maglev, VIP and node port,
    /// local and remote backends) is a script the real `nft` accepts.
    #[test]
    fn nft_accepts_the_services_kernel_plan() {
        use overlayd_proto::service::frontend::{LocalNode, frontends};
        use overlayd_proto::service::kernel::{Network, plan};
        use overlayd_proto::service::{
            Algorithm, Endpoint, HealthCheck, Protocol, ResolvedPort, ResolvedService, ServiceKey,
            ServiceStatus, ServiceTable, ServiceType, SessionAffinity,
        };
        if !nix::unistd::geteuid().is_root() {
            let _ = std::io::stderr()
                .write_all(b"\n*** nft test SKIPPED: `nft -c` needs root (CI runs it as root)\n");
            return;
        }
        let mut table = ServiceTable::default();
        for (name, algorithm, vip) in [
            ("rr", Algorithm::RoundRobin, [10, 96, 0, 1]),
            ("mg", Algorithm::Maglev, [10, 96, 0, 2]),
        ] {
            let svc = ResolvedService {
                key: ServiceKey::new("default", name),
                kind: ServiceType::NodePort,
                cluster_ip: Some(vip.into()),
                external_ip: None,
                external_name: None,
                ports: vec![ResolvedPort {
                    name: String::new(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    target_port: 8080,
                    node_port: Some(30000 + u16::from(vip[3])),
                    proxy_protocol: false,
                }],
                endpoints: [[10, 244, 1, 2], [10, 244, 2, 2]]
                    .into_iter()
                    .map(|ip| Endpoint {
                        ip: ip.into(),
                        port: None,
                        node: None,
                        pod: None,
                    })
                    .collect(),
                algorithm,
                affinity: SessionAffinity::None,
                affinity_timeout_s: 10,
                health: HealthCheck::default(),
                status: ServiceStatus::Active,
            };
            table.services.insert(svc.key.clone(), svc);
        }
        let fe = frontends(
            &table,
            &LocalNode {
                underlay: "192.168.1.10".parse().unwrap(),
            },
        );
        let net = Network {
            local_pods: "10.244.1.0/24".parse().unwrap(),
            cluster: "10.244.0.0/16".parse().unwrap(),
        };
        let p = plan(&table, &fe, &net, |_| true);
        assert_eq!(p.served.len(), 2);
        nft_check(&p.script).unwrap();
        nft_check(&plan(&ServiceTable::default(), &fe, &net, |_| true).script).unwrap();
    }

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
                quic_port: Some(8473),
                nodes: ["10.100.1.12".parse().unwrap()].into_iter().collect(),
            };
            nft_check(&ruleset.script()).unwrap();
        }
    }
}
