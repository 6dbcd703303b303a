//! `overlayd lab …`: the subcommands and what they print.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::lab::{Lab, validate_lab_name};
use crate::topology::Topology;

/// A whole cluster in network namespaces on this host (needs root).
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum LabCommand {
    /// Build the lab: router, segments, nodes, daemons and pods.
    Up {
        /// Topology file (TOML); default: tests/topologies/remote-zone.toml — segments a
        /// and b (nodes n1 n2 on a, n3 n4 on b) and segment c in zone "remote" (n5, n6),
        /// reached over QUIC, so `lab check` shows host-gw, udp and quic pairs.
        topology: Option<PathBuf>,
        #[arg(long, default_value = "lab", value_parser = lab_name)]
        name: String,
    },
    /// Stop the lab's processes and delete its namespaces and files; safe to repeat.
    Down {
        #[arg(long, default_value = "lab", value_parser = lab_name)]
        name: String,
    },
    /// List nodes, their daemons and pods.
    Ps {
        #[arg(long, default_value = "lab", value_parser = lab_name)]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a node's or pod's namespace (in a node, OVERLAYD_SOCKET is set).
    Exec {
        /// Node (`n1`), pod (`n1-p1`) or `router`.
        target: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
        #[arg(long, default_value = "lab", value_parser = lab_name)]
        name: String,
    },
    /// Kill a node's daemon with SIGKILL (its kernel state stays, as after a crash).
    Kill {
        node: String,
        #[arg(long, default_value = "lab", value_parser = lab_name)]
        name: String,
    },
    /// Stop a node's daemon with SIGTERM: a stop, not a leave — its data path stays and
    /// peers keep their routes to it while its node answers.
    Stop {
        node: String,
        #[arg(long, default_value = "lab", value_parser = lab_name)]
        name: String,
    },
    /// Start a node's daemon again with the same config and wait until it is ready and,
    /// with gossip, every node lists every other one as a peer.
    Start {
        node: String,
        #[arg(long, default_value = "lab", value_parser = lab_name)]
        name: String,
    },
    /// Cut two segments apart: the router drops all traffic between them.
    Partition {
        segment_a: String,
        segment_b: String,
        #[arg(long, default_value = "lab", value_parser = lab_name)]
        name: String,
    },
    /// Lift every partition.
    Heal {
        #[arg(long, default_value = "lab", value_parser = lab_name)]
        name: String,
    },
    /// Benchmark overlayd against its references in a lab of the bench's own (`--name`,
    /// brought up and torn down by the bench): `datapath` (default) measures host-gw and
    /// the UDP tunnel next to kernel routes and a kernel vxlan device on the same nodes;
    /// `services` measures a Service VIP (overlayd's proxy, HAProxy, nftables DNAT)
    /// against direct pod-to-pod, Service propagation and the daemon's memory.
    Bench {
        #[arg(value_enum, default_value_t = BenchSuite::Datapath)]
        suite: BenchSuite,
        /// The bench's lab; it must not exist yet.
        #[arg(long, default_value = "bench", value_parser = lab_name)]
        name: String,
        /// Seconds per iperf3 or wrk run.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600))]
        seconds: u32,
        /// Runs of every path; figures are medians over them.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        repeat: u32,
        /// datapath: offered load of the UDP run (iperf3 -b: 500M, 1G, …).
        #[arg(long, default_value = "1G", value_parser = udp_rate)]
        udp_rate: String,
        /// services: wrk connections (each request opens a new one).
        #[arg(long, default_value_t = 16)]
        connections: u32,
        /// services: how many Services to load for the memory figure (0: skip it).
        #[arg(long, default_value_t = 10_000)]
        services: u32,
        /// services: explicit endpoints per loaded Service.
        #[arg(long, default_value_t = 10)]
        endpoints: u32,
        /// services: load with `service apply` requests of N Services (0: one `service
        /// add` request per Service).
        #[arg(long, default_value_t = 0)]
        batch: u32,
        /// services: the proxy's TCP relay on every node (`services.relay`); default: the
        /// daemon's.
        #[arg(long, value_parser = ["copy", "splice"])]
        relay: Option<String>,
        /// services: what serves the `vip` path on every node (`services.dataplane`):
        /// the daemon's proxy or the kernel's nftables DNAT; default: the daemon's.
        #[arg(long, value_parser = ["proxy", "kernel"])]
        dataplane: Option<String>,
        /// datapath: a `[tunnel]` switch on every node, `offload|udp_gso|udp_gro=true|false`
        /// (repeatable), for A/B runs of each technique.
        #[arg(long = "tunnel", value_parser = tunnel_switch)]
        tunnel: Vec<(String, bool)>,
        /// Leave the bench's lab up afterwards (`overlayd lab down --name NAME` removes it).
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run the pod server (TCP and UDP echo with a greeting, HTTP) as POD, in the foreground;
    /// `lab up` starts one in every pod.
    #[command(hide = true)]
    Serve { pod: String },
    /// Run the lab's stand-in for outside DNS (every A question: 192.0.2.53) on UDP 53, in
    /// the foreground; `lab up` starts one in the router.
    #[command(hide = true)]
    Resolve,
    /// Ping between every pair of pods and show which path each pair takes (bridge,
    /// host-gw, udp, quic, …) and how many pairs take each.
    Check {
        #[arg(long, default_value = "lab", value_parser = lab_name)]
        name: String,
        #[arg(long)]
        json: bool,
    },
}

/// What `overlayd lab bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchSuite {
    /// host-gw and the UDP tunnel against kernel routes and kernel vxlan.
    Datapath,
    /// Service VIPs (proxy, HAProxy, nftables) against direct; propagation; memory.
    Services,
}

/// An iperf3 `-b` rate: a number with an optional K, M or G suffix.
/// `KEY=true|false` for a `[tunnel]` switch of the datapath bench.
fn tunnel_switch(s: &str) -> Result<(String, bool), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=true|false, found {s:?}"))?;
    if !["offload", "udp_gso", "udp_gro"].contains(&key) {
        return Err(format!(
            "unknown switch {key:?}: offload, udp_gso or udp_gro"
        ));
    }
    let value = value
        .parse()
        .map_err(|_| format!("{key}: expected true or false, found {value:?}"))?;
    Ok((key.to_owned(), value))
}

fn udp_rate(rate: &str) -> Result<String, String> {
    let digits = rate.trim_end_matches(['K', 'M', 'G', 'k', 'm', 'g']);
    match digits.parse::<f64>() {
        Ok(r) if r > 0.0 && digits.len() + 1 >= rate.len() => Ok(rate.to_string()),
        _ => Err(format!(
            "{rate:?} is not a rate; use bits per second with an optional K, M or G suffix, e.g. 500M or 1G"
        )),
    }
}

fn lab_name(name: &str) -> Result<String, String> {
    validate_lab_name(name)
        .map(|()| name.to_string())
        .map_err(|e| e.to_string())
}

/// Carries out `cmd`, running `overlayd_bin` as the daemon and CLI of every node.
/// The exit code is non-zero when `check` finds a failed pair, or is `exec`'s own.
pub fn run(cmd: LabCommand, overlayd_bin: PathBuf) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCommand::Resolve => {
            crate::resolver::serve().context("serving the lab's outside DNS")?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Serve { pod } => {
            crate::hello::serve(&pod).with_context(|| format!("serving as pod {pod}"))?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Kill { node, name } => {
            Lab::open(&name)?.kill_daemon(&node)?;
            println!("killed the daemon of {node} (SIGKILL)");
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Stop { node, name } => {
            Lab::open(&name)?.stop_daemon(&node)?;
            println!("stopped the daemon of {node} (SIGTERM)");
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Start { node, name } => {
            let mut lab = Lab::open(&name)?;
            lab.start_daemon(&node)?;
            let node = lab.node(&node)?;
            let pid = node.pid().map_or("?".into(), |p| p.to_string());
            let subnet = node.pod_subnet().map_or("?".into(), |s| s.to_string());
            println!(
                "started the daemon of {} (pid {pid}, pod subnet {subnet}); it is ready",
                node.name()
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Partition {
            segment_a,
            segment_b,
            name,
        } => {
            Lab::open(&name)?.partition(&segment_a, &segment_b)?;
            println!(
                "segments {segment_a} and {segment_b} are cut apart; `overlayd lab heal` lifts it"
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Heal { name } => {
            Lab::open(&name)?.heal()?;
            println!("all partitions lifted");
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Up { topology, name } => {
            let topology = match &topology {
                Some(path) => Topology::from_file(path)?,
                None => Topology::parse(crate::REMOTE_ZONE_TOPOLOGY)?,
            };
            let lab = Lab::up(&name, &topology, &overlayd_bin)?.keep();
            println!("lab {name:?} is up ({}):", lab.run_dir().display());
            print!("{}", lab.ps());
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down { name } => {
            Lab::down(&name)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Ps { name, json } => {
            let ps = Lab::open(&name)?.ps();
            if json {
                println!("{}", serde_json::to_string(&ps).context("serializing ps")?);
            } else {
                print!("{ps}");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec { target, cmd, name } => {
            let status = Lab::open(&name)?.exec(&target, &cmd)?;
            Ok(exit_code(status))
        }
        LabCommand::Bench {
            suite,
            name,
            seconds,
            repeat,
            udp_rate,
            connections,
            services,
            endpoints,
            batch,
            relay,
            dataplane,
            tunnel,
            keep,
            json,
        } => {
            let mut log = |line: &str| eprintln!("bench: {line}");
            let (json_text, table) = match suite {
                BenchSuite::Datapath => {
                    let options = crate::bench::datapath::Options {
                        seconds,
                        repeat,
                        udp_rate,
                        tunnel,
                        ..Default::default()
                    };
                    let report = crate::bench::datapath::run(
                        &name,
                        &overlayd_bin,
                        &options,
                        keep,
                        &mut log,
                    )?;
                    (serde_json::to_string_pretty(&report), report.table())
                }
                BenchSuite::Services => {
                    let options = crate::bench::services::Options {
                        seconds,
                        repeat,
                        connections,
                        services,
                        endpoints,
                        batch,
                        relay,
                        dataplane,
                        ..Default::default()
                    };
                    let report = crate::bench::services::run(
                        &name,
                        &overlayd_bin,
                        &options,
                        keep,
                        &mut log,
                    )?;
                    (serde_json::to_string_pretty(&report), report.table())
                }
            };
            if json {
                println!("{}", json_text.context("serializing the report")?);
            } else {
                print!("{table}");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Check { name, json } => {
            let report = Lab::open(&name)?.check()?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", report.to_json())?;
            } else {
                write!(out, "{}", report.matrix())?;
                write!(out, "{}", report.paths_text())?;
                let failed = report.failures().count();
                if failed > 0 {
                    writeln!(out, "{failed} of {} pairs FAILED", report.results.len())?;
                }
                write!(out, "{}", report.services_text())?;
                let failed = report.services.iter().filter(|s| !s.passed()).count();
                if failed > 0 {
                    writeln!(
                        out,
                        "{failed} of {} Service checks FAILED",
                        report.services.len()
                    )?;
                }
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// The child's code, or 128 + signal like a shell when a signal ended it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        lab: LabCommand,
    }

    fn parse(args: &[&str]) -> Result<LabCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("lab").chain(args.iter().copied())).map(|c| c.lab)
    }

    #[test]
    fn parses_every_subcommand() {
        assert_eq!(
            parse(&["up", "topo.toml", "--name", "x1"]).unwrap(),
            LabCommand::Up {
                topology: Some("topo.toml".into()),
                name: "x1".into()
            }
        );
        assert_eq!(
            parse(&["up"]).unwrap(),
            LabCommand::Up {
                topology: None,
                name: "lab".into()
            }
        );
        assert_eq!(
            parse(&["down"]).unwrap(),
            LabCommand::Down { name: "lab".into() }
        );
        assert_eq!(
            parse(&["ps", "--json"]).unwrap(),
            LabCommand::Ps {
                name: "lab".into(),
                json: true
            }
        );
        assert_eq!(
            parse(&["exec", "n1", "--name", "t", "--", "ip", "-br", "addr"]).unwrap(),
            LabCommand::Exec {
                target: "n1".into(),
                cmd: vec!["ip".into(), "-br".into(), "addr".into()],
                name: "t".into()
            }
        );
        assert_eq!(
            parse(&["stop", "n2", "--name", "t"]).unwrap(),
            LabCommand::Stop {
                node: "n2".into(),
                name: "t".into()
            }
        );
        assert_eq!(
            parse(&["check", "--json"]).unwrap(),
            LabCommand::Check {
                name: "lab".into(),
                json: true
            }
        );
    }

    #[test]
    fn bench_defaults_to_the_datapath_suite_in_a_lab_named_bench() {
        let LabCommand::Bench {
            suite,
            name,
            seconds,
            repeat,
            udp_rate,
            keep,
            ..
        } = parse(&["bench"]).unwrap()
        else {
            panic!("not bench");
        };
        assert_eq!(
            (
                suite,
                name.as_str(),
                seconds,
                repeat,
                udp_rate.as_str(),
                keep
            ),
            (BenchSuite::Datapath, "bench", 5, 3, "1G", false)
        );
        let LabCommand::Bench {
            suite, services, ..
        } = parse(&["bench", "services", "--services", "0", "--name", "b1"]).unwrap()
        else {
            panic!("not bench");
        };
        assert_eq!((suite, services), (BenchSuite::Services, 0));
        assert!(parse(&["bench", "--repeat", "0"]).is_err());
        assert!(
            parse(&[
                "bench",
                "--tunnel",
                "offload=false",
                "--tunnel",
                "udp_gro=true"
            ])
            .is_ok()
        );
        for bad in ["offload", "offload=maybe", "host_gw=false"] {
            assert!(parse(&["bench", "--tunnel", bad]).is_err(), "{bad}");
        }
        assert!(parse(&["bench", "--udp-rate", "2.5G"]).is_ok());
        for bad in ["bogus", "1GG", "0", "-1G", ""] {
            assert!(parse(&["bench", "--udp-rate", bad]).is_err(), "{bad}");
        }
        assert!(parse(&["bench", "bogus"]).is_err());
    }

    #[test]
    fn rejects_bad_lab_names_and_missing_exec_command() {
        let err = parse(&["down", "--name", "Bad-Name"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 to 8 characters"), "{err}");
        assert!(parse(&["exec", "n1"]).is_err());
    }
}
