//! The `overlayd` command line.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use overlayd::api::{self, KeyAction, Request};
use overlayd::{cli, daemon, pods};

#[derive(Parser)]
#[command(
    name = "overlayd",
    version,
    about = "Overlay network daemon: pods, host-gw and VXLAN/UDP between nodes"
)]
struct Cli {
    /// Control socket of the daemon to talk to (default /run/overlayd/overlayd.sock, the
    /// default of daemon.control_socket).
    #[arg(long, global = true, env = "OVERLAYD_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Take over from the daemon running on this node (an upgrade): it hands over its
        /// peers and stops, keeping the data path; this one starts at once in its place.
        #[arg(long)]
        takeover: bool,
    },
    /// Validate a config file without touching the system.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// This node: addresses, readiness, drop counters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Every peer with its path, addresses and counters.
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// The kernel routes the daemon owns.
    Routes {
        #[arg(long)]
        json: bool,
    },
    /// Leave the cluster for good: the daemon announces it, removes its routes, TUN,
    /// bridge and NAT table (pods keep their namespaces) and exits. Stopping the daemon
    /// (SIGTERM) is not leaving: it keeps the data path and peers keep their routes.
    Leave,
    /// Cluster members as gossip sees them.
    Members {
        #[arg(long)]
        json: bool,
    },
    /// Gossip keys: `generate` prints a new one; the others change the running keyring
    /// (install a key everywhere, then `use` it everywhere, then `remove` the old one).
    Key {
        action: KeyCommand,
        /// The key file (install, use, remove); read by the daemon.
        #[arg(required_if_eq_any([("action", "install"), ("action", "use"), ("action", "remove")]))]
        file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Add, delete or list pods.
    Pod {
        #[command(subcommand)]
        command: PodCommand,
    },
    /// Add, delete, show or list Services (any node; the change reaches every node).
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Every Service as this node serves it: VIP, ports, each backend's health and
    /// connections.
    Services {
        #[arg(long)]
        json: bool,
    },
    /// The cluster CA that signs node certificates for the QUIC tunnels' mutual TLS.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Node certificates signed by the cluster CA.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// A whole cluster in network namespaces on this host: up, check, ps, exec, down.
    Lab {
        #[command(subcommand)]
        command: overlayd_lab::LabCommand,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KeyCommand {
    /// Print a new random key (64 hex digits) to put in a key file.
    Generate,
    List,
    Install,
    Use,
    Remove,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Make a cluster CA (ECDSA P-256): DIR/ca.pem (the certificate every node needs) and
    /// DIR/ca.key (mode 0600; keep it off the nodes, it signs certificates only).
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// How long the CA is valid.
        #[arg(long, default_value_t = overlayd::pki::DEFAULT_CA_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
        /// Replace an existing CA; every certificate it signed stops being trusted.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Issue a certificate for the node NODE (its gossip member name, `node.name` in its
    /// config), good for TLS client and server: OUT/NODE.pem and OUT/NODE.key (0600).
    /// An existing pair of that name is replaced (renewal).
    Issue {
        node: String,
        /// The directory of `overlayd ca init`.
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// How long the certificate is valid.
        #[arg(long, default_value_t = overlayd::pki::DEFAULT_CERT_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Revoke a node certificate in the whole cluster, for good: its fingerprint (64 hex
    /// digits, as `cert issue` prints it; `sha256:` and colons allowed) or its PEM file.
    /// Published into gossip state through this node's daemon; every daemon then closes
    /// its tunnels to that certificate and refuses it at every handshake.
    Revoke {
        /// FINGERPRINT or CERTFILE.
        certificate: String,
        #[arg(long)]
        json: bool,
    },
    /// The revoked certificates this node knows, by fingerprint, with who revoked them
    /// and when.
    ListRevoked {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PodCommand {
    /// Create a pod: a network namespace attached to the node bridge.
    Add {
        name: String,
        /// Address to take (default: the next free one of the pod subnet).
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// Use this existing namespace (a path, a name under /run/netns, or a PID)
        /// instead of creating /run/netns/NAME.
        #[arg(long)]
        netns: Option<String>,
        /// A label KEY=VALUE that Services select the pod by; repeat for more.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = cli::parse_label)]
        labels: Vec<(String, String)>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a pod: its veth, its address and the namespace if the daemon made it.
    Del { name: String },
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Add a Service, or replace the one of that name: flags, or a TOML/JSON --file.
    Add {
        #[command(flatten)]
        args: cli::service::AddArgs,
        #[arg(long)]
        json: bool,
    },
    /// Add or replace every Service of a file at once: TOML with `[[service]]` tables (as
    /// in the config), or JSON (an array of specs).
    Apply {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Delete a Service.
    Del {
        #[command(flatten)]
        service: cli::service::NameArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show one Service.
    Get {
        #[command(flatten)]
        service: cli::service::NameArgs,
        #[arg(long)]
        json: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // A CLI piped into `head` should end quietly when the pipe closes, as Unix tools do,
        // instead of panicking in println!. The daemon keeps Rust's default (EPIPE errors).
        // SAFETY: resetting a signal's disposition before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("overlayd: {}", overlayd::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { config } => {
            let cfg = overlayd_config::load(&config)?;
            let subnet = cfg.node.pod_subnet.map_or_else(
                || format!("claimed from {} by gossip", cfg.cluster.cidr),
                |s| s.to_string(),
            );
            let discovery = match &cfg.gossip {
                Some(g) => format!("gossip with {} seeds", g.seeds.len()),
                None => "no gossip".into(),
            };
            println!(
                "{}: ok (node {}, pod subnet {subnet}, {discovery}, {} static peers)",
                config.display(),
                cfg.node.name,
                cfg.peers.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Key {
            action: KeyCommand::Generate,
            ..
        } => {
            println!("{}", overlayd::keys::generate()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca {
            command: CaCommand::Init { dir, days, force },
        } => {
            let validity = overlayd::pki::Validity::days_from(std::time::SystemTime::now(), days);
            let w = overlayd::pki::init_ca(&dir, validity, force)?;
            print!("{}", cli::pki::written_text("CA", &w));
            Ok(ExitCode::SUCCESS)
        }
        Command::Cert {
            command: CertCommand::Revoke { certificate, json },
        } => {
            // Checked here, so a typo gets its message before any daemon is asked.
            let fingerprint = cli::pki::revocation_target(&certificate)?;
            runtime()?.block_on(cli::show(
                &socket_path(cli.socket),
                Request::CertRevoke {
                    fingerprint: fingerprint.to_string(),
                },
                json,
                |r: &api::Revocations| cli::pki::revoked_text(Some(&fingerprint), r),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cert {
            command: CertCommand::ListRevoked { json },
        } => {
            runtime()?.block_on(cli::show(
                &socket_path(cli.socket),
                Request::CertRevoked,
                json,
                |r: &api::Revocations| cli::pki::revoked_text(None, r),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cert {
            command:
                CertCommand::Issue {
                    node,
                    ca_dir,
                    out,
                    days,
                },
        } => {
            let validity = overlayd::pki::Validity::days_from(std::time::SystemTime::now(), days);
            let w = overlayd::pki::issue_cert(&node, &ca_dir, &out, validity)?;
            print!("{}", cli::pki::written_text(&format!("node {node}"), &w));
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab { command } => {
            let me = std::env::current_exe()
                .context("finding the overlayd binary for the lab's daemons")?;
            overlayd_lab::run(command, me)
        }
        Command::Run { config, takeover } => {
            init_logging();
            let cfg = overlayd_config::load(&config)?;
            runtime()?.block_on(daemon::run(cfg, config, takeover))?;
            Ok(ExitCode::SUCCESS)
        }
        command => {
            let socket = socket_path(cli.socket);
            runtime()?.block_on(client(command, &socket))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn socket_path(socket: Option<PathBuf>) -> PathBuf {
    socket.unwrap_or_else(|| PathBuf::from("/run/overlayd/overlayd.sock"))
}

async fn client(command: Command, socket: &std::path::Path) -> Result<()> {
    match command {
        Command::Status { json } => {
            cli::show(socket, Request::Status, json, cli::status_table).await
        }
        Command::Peers { json } => cli::show(socket, Request::Peers, json, cli::peers_table).await,
        Command::Routes { json } => {
            cli::show(socket, Request::Routes, json, cli::routes_table).await
        }
        Command::Members { json } => {
            cli::show(socket, Request::Members, json, cli::members_table).await
        }
        Command::Leave => {
            let result: serde_json::Value = overlayd::api::call(socket, &Request::Leave).await?;
            println!(
                "{} is leaving the cluster and removing its data path",
                result["leaving"].as_str().unwrap_or("this node")
            );
            Ok(())
        }
        Command::Key { action, file, json } => {
            let action = match action {
                KeyCommand::List => KeyAction::List,
                KeyCommand::Install => KeyAction::Install,
                KeyCommand::Use => KeyAction::Use,
                KeyCommand::Remove => KeyAction::Remove,
                KeyCommand::Generate => unreachable!("handled before connecting"),
            };
            // The daemon reads the file: give it a path that means the same there.
            let file = file.map(std::path::absolute).transpose()?;
            cli::show(socket, Request::Key { action, file }, json, cli::keys_table).await?;
            if action != KeyAction::List {
                eprintln!(
                    "note: this changed the running keyring only; make gossip.key_files say the \
                     same (the first file is the primary) before the daemon restarts"
                );
            }
            Ok(())
        }
        Command::Pod { command } => match command {
            PodCommand::Add {
                name,
                ip,
                netns,
                labels,
                json,
            } => {
                cli::show(
                    socket,
                    Request::PodAdd {
                        name,
                        ip,
                        netns,
                        labels: labels.into_iter().collect(),
                    },
                    json,
                    cli::pod_line,
                )
                .await
            }
            PodCommand::Del { name } => {
                cli::show(
                    socket,
                    Request::PodDel { name },
                    false,
                    |p: &pods::PodRecord| format!("deleted pod {} ({})\n", p.name, p.ip),
                )
                .await
            }
            PodCommand::List { json } => {
                cli::show(socket, Request::PodList, json, cli::pods_table).await
            }
        },
        Command::Service { command } => match command {
            ServiceCommand::Add { args, json } => {
                let spec = args.spec()?;
                cli::show(
                    socket,
                    Request::ServiceAdd { spec },
                    json,
                    cli::service::info_text,
                )
                .await
            }
            ServiceCommand::Apply { file, json } => {
                let specs = cli::service::read_specs(&file)?;
                cli::show(
                    socket,
                    Request::ServiceApply { specs },
                    json,
                    cli::service::list_table,
                )
                .await
            }
            ServiceCommand::Del { service, json } => {
                let (namespace, name) = service.key()?;
                cli::show(
                    socket,
                    Request::ServiceDel { namespace, name },
                    json,
                    |i: &api::ServiceInfo| format!("deleted service {}\n", i.service.key),
                )
                .await
            }
            ServiceCommand::Get { service, json } => {
                let (namespace, name) = service.key()?;
                cli::show(
                    socket,
                    Request::ServiceGet { namespace, name },
                    json,
                    cli::service::info_text,
                )
                .await
            }
            ServiceCommand::List { json } => {
                cli::show(socket, Request::ServiceList, json, cli::service::list_table).await
            }
        },
        Command::Services { json } => {
            cli::show(socket, Request::Services, json, cli::service::report_table).await
        }
        Command::Run { .. }
        | Command::Check { .. }
        | Command::Ca { .. }
        | Command::Cert { .. }
        | Command::Lab { .. } => {
            unreachable!("handled before connecting")
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
