//! `overlayd run`: sets up the node (bridge, TUN, NAT, pods), then keeps the kernel's
//! routes and the tunnel's forwarding table in step with the peer set — from the static
//! `[[peer]]` list and, with `[gossip]`, from the cluster's members — serves the control
//! API, and on SIGTERM/SIGINT leaves the cluster and removes or keeps the data path.

mod api;
mod gossip_setup;
mod serving;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ipnet::Ipv4Net;
use overlayd_config::schema::{Config, OnExit};
use overlayd_proto::PeerInfo;
use overlayd_proto::dataplane::{ForwardingTable, LocalVtep};
use overlayd_proto::ipam::PodIpam;
use overlayd_proto::path::PathKind;
use overlayd_proto::routing::{self, LocalRouting, PeerPath, RouteOp};
use overlayd_proto::wire::{MacAddr, vxlan};
use tokio::sync::{Mutex, Notify, watch};

use crate::datapath::{self, Datapath};
use crate::discovery::{PeerSource, StaticPeers};
use crate::dns::{DnsServer, DnsSettings};
use crate::gossip::GossipHandle;
use crate::netlink::{self, Link, Netlink};
use crate::nft;
use crate::paths::{LadderPeer, PathsHandle};
use crate::pmtu::{self, PathMtuHandle};
use crate::pods::{PodDns, Pods};
use crate::proxy::{Proxy, ProxyConfig};
use crate::quic::{QuicConfig, QuicTransport};
use crate::services::{LocalPods, LocalStore, ServiceState, ServicesHandle};

/// How often routes are re-read and repaired even when no peer changed: a route someone
/// deleted by hand, or a peer that moved on or off our L2 segment, is fixed within this.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);

/// This node, with every default resolved against the running system.
#[derive(Debug, Clone)]
struct Local {
    name: String,
    underlay: Link,
    underlay_addr: Ipv4Addr,
    vtep_mac: MacAddr,
    pod_mtu: u32,
    tunnel_mtu: u32,
    /// The loopback interface, which the Service CIDR's local route names.
    loopback_index: u32,
}

/// The pod subnet in force and its gateway (the bridge's address). Changes only when a
/// claimed subnet loses a conflict.
#[derive(Debug, Clone, Copy)]
struct Subnet {
    net: Ipv4Net,
    gateway: Ipv4Addr,
}

impl Subnet {
    fn new(net: Ipv4Net) -> Self {
        Subnet {
            net,
            gateway: PodIpam::gateway_of(net),
        }
    }
}

struct Shared {
    cfg: Config,
    config_path: PathBuf,
    local: Local,
    subnet: RwLock<Subnet>,
    nl: Netlink,
    dp: Arc<Datapath>,
    /// Each tunnel peer's path MTU, and the `mtu` its route carries.
    pmtu: Arc<PathMtuHandle>,
    pods: Mutex<Pods>,
    peers: std::sync::Mutex<PeerState>,
    gossip: Option<GossipHandle>,
    /// Our nftables table as last installed.
    nft: std::sync::Mutex<nft::Ruleset>,
    /// Wakes the control loop (the local subnet changed).
    reconcile_now: Notify,
    /// The Services: the resolved table and the API's commands.
    services: ServicesHandle,
    /// This node's pods as Service endpoints (`None` until they are loaded).
    pods_published: watch::Sender<LocalPods>,
    proxy: Proxy,
    /// The cluster DNS responder on the bridge gateway, unless `dns.enabled = false`.
    dns: Option<DnsServer>,
    /// The holder of each LoadBalancer IP, as this node last decided it (`None`: the IP
    /// is not on this node's segment).
    lb_holders: std::sync::Mutex<BTreeMap<Ipv4Addr, Option<String>>>,
    /// Wakes the Services loop (the peers on our segment changed).
    services_now: Notify,
    ready: AtomicBool,
    started: Instant,
    /// The peer routes found in the kernel at the first reconcile (a restart's), which
    /// are not deleted for [`ADOPT_GRACE`] while their peers are learned again.
    adopted: std::sync::Mutex<Option<std::collections::BTreeSet<Ipv4Net>>>,
    tun_index: u32,
    bridge_index: u32,
    /// The QUIC endpoint, with `[quic]`.
    quic: Option<Arc<QuicTransport>>,
    /// Every peer's path ladder.
    paths: Arc<PathsHandle>,
    /// `overlayd leave` asked the daemon to leave the cluster for good.
    leave: Notify,
    /// A new process took the data path over (`run --takeover`): stop, keeping it.
    hand_over: Notify,
    /// The peers the process before this one carried (a hand-over, or a stop moments
    /// ago): routed and forwarded to from the first reconcile, until gossip has them (see
    /// `routing::with_handed`).
    handed: Vec<PeerInfo>,
}

impl Shared {
    fn subnet(&self) -> Subnet {
        *self.subnet.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the Services what pods this node has now.
    fn publish_pods(&self, pods: &Pods) {
        self.pods_published.send_replace(Some(pods.endpoints()));
    }

    /// What this node's pods are told about DNS.
    fn pod_dns(&self, subnet: Subnet) -> Option<PodDns> {
        self.dns.as_ref().map(|_| PodDns {
            nameserver: subnet.gateway,
            domain: self.cfg.cluster.domain.clone(),
        })
    }
}

pub async fn run(cfg: Config, config_path: PathBuf, takeover: bool) -> Result<()> {
    netlink::require_net_admin()?;
    // Before anything is made or waited for: until a handler is installed, SIGTERM, SIGINT
    // and SIGHUP kill the process outright, which would leave whatever start-up had made
    // so far (bridge, NAT table, re-attached pods) whatever `on_exit` says.
    let mut signals = StopSignals::new()?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    // A hand-over: the running daemon answers with what its data path carries and stops
    // (keeping it); its state-directory lock, ports and TUN queue are free once it exited.
    let taken_over = match takeover {
        true => Some(take_over(&cfg.daemon.control_socket).await?),
        false => None,
    };
    // Before touching anything: a second daemon on the same state would fight the first.
    let _lock = match &taken_over {
        Some(h) => wait_for_lock(&cfg.daemon.state_dir, h.pid).await?,
        None => lock_state_dir(&cfg.daemon.state_dir)?,
    };
    let handed = match taken_over {
        Some(h) => h.peers,
        None => saved_peers(&cfg.daemon.state_dir),
    };
    raise_open_files_limit();
    crate::netns::find_host_mount_ns();
    let nl = Netlink::connect()?;
    let local = resolve_local(&nl, &cfg).await?;
    tracing::info!(
        node = %local.name, underlay = %local.underlay_addr, dev = %local.underlay.name,
        vtep_mac = %local.vtep_mac, "starting"
    );
    let sysctls = crate::sysctl::Sysctls::kernel();
    sysctls
        .ensure(
            &["net", "ipv4", "ip_forward"],
            "1",
            crate::sysctl::IP_FORWARD_HOW,
        )
        .context("enabling IPv4 forwarding")?;

    let (pods_published, pods_rx) = watch::channel::<LocalPods>(None);
    let (service_state, services, service_commands) = ServiceState::new(
        &cfg.node.name,
        cfg.service_settings(),
        cfg.service_specs.clone(),
        cfg.gossip.as_ref().is_some_and(|g| !g.seeds.is_empty()),
        pods_rx,
    );
    // Without gossip the Services live in a store of this node's own.
    let mut service_parts = Some((service_state, service_commands));

    // Resolving seeds and claiming a subnet can take a while and make nothing in the
    // kernel: a stop signal meanwhile ends start-up at once.
    let joining = async {
        let (gossip, gossip_task) = match &cfg.gossip {
            Some(g) => {
                let parts = service_parts
                    .take()
                    .ok_or_else(|| anyhow!("the Services were handed out twice"))?;
                let (handle, task) = gossip_setup::start(&cfg, g, &local, parts).await?;
                (Some(handle), Some(task))
            }
            None => (None, None),
        };
        let subnet = match (&cfg.node.pod_subnet, &gossip) {
            (Some(net), _) => *net,
            (None, Some(handle)) => gossip_setup::wait_for_subnet(&cfg, handle).await?,
            (None, None) => bail!("node.pod_subnet is required without [gossip]"),
        };
        Ok((gossip, gossip_task, subnet))
    };
    let (gossip, gossip_task, subnet) = tokio::select! {
        joined = joining => joined?,
        signal = signals.stop() => {
            tracing::info!("{signal} during start-up: stopping; nothing was set up yet");
            return Ok(());
        }
    };
    let subnet = Subnet::new(subnet);
    tracing::info!(pod_subnet = %subnet.net, "pod subnet");

    let bridge_index = nl.ensure_bridge(&cfg.bridge.name, local.pod_mtu).await?;
    set_bridge_gateway(&nl, bridge_index, &subnet).await?;
    // Pods may send only from addresses routed back through the bridge (their own): a pod
    // cannot put a node's underlay address on a packet to a peer's tunnel port, say.
    crate::sysctl::ensure_rp_filter(&sysctls, &cfg.bridge.name)
        .context("enabling reverse-path filtering on the bridge")?;

    let (tun, tun_offload) = create_tun(&cfg.tunnel.device, local.tunnel_mtu, cfg.tunnel.offload)?;
    // The device, and the routes into it, outlive the process: while no daemon runs,
    // tunnel traffic is dropped at the device (not sent elsewhere), and the next start
    // attaches to it without a route being deleted and added again.
    if let Err(e) = tun.persist() {
        tracing::warn!(
            "could not make {} persistent ({e}); it goes away with the daemon",
            cfg.tunnel.device
        );
    }
    let tun = Arc::new(tun);
    let tun_link = nl
        .link_by_name(&cfg.tunnel.device)
        .await?
        .ok_or_else(|| anyhow!("TUN device {} did not appear", cfg.tunnel.device))?;
    // IPv6 is not carried yet: keep the kernel from sending router solicitations and MLD
    // reports into the tunnel, where they would only be counted as drops. Before the
    // device goes up, or the first ones slip through.
    // Best effort: a kernel without IPv6 has no such key.
    let _ = sysctls.ensure(
        &["net", "ipv6", "conf", &cfg.tunnel.device, "disable_ipv6"],
        "1",
        "",
    );
    nl.set_link(tun_link.index, Some(local.tunnel_mtu), None, true)
        .await?;

    let initial = ruleset(
        &cfg,
        subnet.net,
        cfg.peers.iter().map(|p| p.underlay_address).collect(),
    );
    nft::install(&initial)?;

    let ipam = PodIpam::new(subnet.net);
    let mut pods = Pods::load(&cfg.daemon.state_dir, ipam, bridge_index, local.pod_mtu)?;
    pods.reattach(&nl).await?;

    let dns = if cfg.dns.enabled {
        Some(start_dns(&cfg, subnet, services.table().borrow().clone()).await?)
    } else {
        None
    };
    let proxy = Proxy::new(ProxyConfig {
        relay: match cfg.services.relay {
            overlayd_config::schema::Relay::Copy => crate::proxy::RelayMode::Copy,
            overlayd_config::schema::Relay::Splice => crate::proxy::RelayMode::Splice,
        },
        ..ProxyConfig::default()
    });

    let (sock, udp_state) = datapath::bind_udp(cfg.tunnel.port, cfg.tunnel.udp_gro)?;
    pmtu::enable_icmp_errors(&sock)?;
    let path_mtus = Arc::new(PathMtuHandle::new(local.underlay.mtu));
    let offloads = datapath::Offloads {
        tun: tun_offload,
        udp_gso: cfg.tunnel.udp_gso,
    };
    let (sock, udp_state) = (Arc::new(sock), Arc::new(udp_state));
    let paths = Arc::new(PathsHandle::default());
    let dp = Arc::new(Datapath::new(ForwardingTable::new(
        local_vtep(&cfg, &local, subnet),
        Vec::new(),
    )));
    let quic = match &cfg.quic {
        Some(q) => {
            let sink = datapath::QuicToTun::new(
                dp.clone(),
                tun.clone(),
                paths.clone(),
                local.tunnel_mtu as usize,
                offloads,
            );
            Some(Arc::new(start_quic(&cfg, q, &local, Arc::new(sink))?))
        }
        None => None,
    };

    let listener = api::bind(&cfg.daemon.control_socket)?;
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        config_path,
        local: local.clone(),
        subnet: RwLock::new(subnet),
        nl: nl.clone(),
        dp: dp.clone(),
        pmtu: path_mtus.clone(),
        pods: Mutex::new(pods),
        peers: std::sync::Mutex::new(PeerState::default()),
        gossip: gossip.clone(),
        nft: std::sync::Mutex::new(initial),
        reconcile_now: Notify::new(),
        services: services.clone(),
        pods_published,
        proxy,
        dns,
        lb_holders: std::sync::Mutex::new(BTreeMap::new()),
        services_now: Notify::new(),
        ready: AtomicBool::new(false),
        started: Instant::now(),
        adopted: std::sync::Mutex::new(None),
        tun_index: tun_link.index,
        bridge_index,
        quic: quic.clone(),
        paths: paths.clone(),
        leave: Notify::new(),
        hand_over: Notify::new(),
        handed,
    });

    let peer_source: Box<dyn PeerSource> = match &gossip {
        Some(handle) => Box::new(handle.clone()),
        None => Box::new(StaticPeers::new(&cfg.peers)),
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control_loop(shared.clone(), peer_source.subscribe()));
    let mtu = local.tunnel_mtu as usize;
    let udp = datapath::UdpTunnel {
        sock: sock.clone(),
        state: udp_state.clone(),
    };
    tasks.spawn(datapath::tun_to_udp(
        dp.clone(),
        tun.clone(),
        udp.clone(),
        mtu,
        cfg.tunnel.port,
        offloads,
        quic.clone(),
    ));
    tasks.spawn(datapath::udp_to_tun(
        dp.clone(),
        tun.clone(),
        udp,
        mtu,
        cfg.tunnel.port,
        paths.clone(),
        offloads,
    ));
    tasks.spawn(pmtu::run(
        path_mtus,
        dp.clone(),
        paths.clone(),
        sock.clone(),
        cfg.tunnel.port,
    ));
    tasks.spawn(crate::paths::run(
        paths,
        dp.clone(),
        sock.clone(),
        cfg.tunnel.port,
        quic.clone(),
    ));
    tasks.spawn(api::serve(shared.clone(), listener));
    {
        let mut pods = shared.pods.lock().await;
        if let Err(e) = pods.set_dns(shared.pod_dns(subnet)) {
            tracing::warn!("pointing pods at the cluster DNS: {e:#}");
        }
        shared.publish_pods(&pods);
    }
    tasks.spawn(serving::serve(shared.clone(), services.table()));
    if let Some((state, commands)) = service_parts.take() {
        let store = LocalStore::new(&cfg.node.name);
        tasks.spawn(async move {
            crate::services::run_local(state, store, commands).await;
            Ok(())
        });
    }
    if let Some(handle) = &gossip {
        tasks.spawn(follow_subnet(shared.clone(), handle.subnet()));
        tasks.spawn(follow_revocations(shared.clone(), handle.revoked()));
    }
    if let Some(task) = gossip_task {
        tasks.spawn(async move {
            task.await
                .map_err(|e| anyhow!("gossip task: {e}"))?
                .context("gossip")
        });
    }

    // A stop signal that came during the rest of start-up is waiting here: it stops the
    // daemon now, removing what start-up made.
    let mut leaving = cfg.daemon.on_exit == OnExit::Remove;
    let outcome = loop {
        tokio::select! {
            signal = signals.stop() => { tracing::info!("{signal}: stopping"); break Ok(()) }
            _ = shared.leave.notified() => { leaving = true; break Ok(()) }
            _ = shared.hand_over.notified() => {
                tracing::info!("handed over to a new process: stopping");
                leaving = false;
                break Ok(())
            }
            _ = hup.recv() => {
                reload_keys(&shared).await;
                reload_quic(&shared).await;
            }
            Some(done) = tasks.join_next() => break match done {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => Err(anyhow!("a daemon task ended unexpectedly")),
                Err(e) => Err(anyhow!("a daemon task panicked: {e}")),
            },
        }
    };
    // A stop is a restart (an upgrade, say): no leave, so peers keep their routes to us
    // (while our node answers them: gossip death is not data-path death). Leaving is
    // `overlayd leave`, or every stop with `on_exit = "remove"`.
    if let Some(handle) = gossip.as_ref().filter(|_| leaving) {
        match tokio::time::timeout(Duration::from_secs(2), handle.leave()).await {
            Ok(Ok(())) => tracing::info!("left the cluster"),
            _ => tracing::warn!("could not announce leaving the cluster; peers will detect it"),
        }
    }
    // Cancel the tasks and wait until they are gone, so none still programs routes or
    // nftables while the data path is removed below.
    tasks.shutdown().await;
    shared.proxy.shutdown();
    if let Some(dns) = &shared.dns {
        dns.stop();
    }
    let _ = std::fs::remove_file(&cfg.daemon.control_socket);
    let saved = cfg.daemon.state_dir.join(SAVED_PEERS);
    if leaving {
        let _ = std::fs::remove_file(&saved);
    } else if let Err(e) = save_peers(&saved, carried_peers(&shared)) {
        // The next start learns them from gossip instead, a moment later.
        tracing::warn!("saving the peers for the next start: {e:#}");
    }
    if leaving {
        if let Err(e) = remove_datapath(&shared).await {
            tracing::warn!("removing the data path: {e:#}");
        }
    } else {
        tracing::info!(
            "stopped: routes, TUN, bridge and NAT stay in place (`overlayd leave` removes them)"
        );
    }
    outcome
}

/// SIGTERM and SIGINT, handled from the start of `run`; a signal that arrives before it
/// is waited for is kept until then.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Waits for SIGTERM or SIGINT; returns its name.
    async fn stop(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Raises the soft limit of open files to the hard limit: the proxy holds a socket per
/// listener (one per Service port and VIP), two per relayed connection and one per UDP
/// flow, and the usual soft limit of 1024 would refuse them long before the machine must.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open files limit"),
            Err(e) => tracing::warn!("raising the open files limit from {soft}: {e}"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!("reading the open files limit: {e}"),
    }
}

/// Takes an exclusive lock on `state_dir/lock` for the daemon's lifetime.
fn lock_state_dir(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow!(
            "another overlayd uses {} ({e}); stop it first",
            dir.display()
        )
    })
}

async fn resolve_local(nl: &Netlink, cfg: &Config) -> Result<Local> {
    let node = &cfg.node;
    let addrs = nl.ipv4_addrs(None).await?;
    let underlay = if let Some(name) = &node.underlay_interface {
        nl.link_by_name(name)
            .await?
            .ok_or_else(|| anyhow!("node.underlay_interface {name} does not exist"))?
    } else if let Some(addr) = node.underlay_address {
        let index = addrs
            .iter()
            .find(|(_, a, _)| *a == addr)
            .map(|(i, _, _)| *i)
            .ok_or_else(|| anyhow!("no interface holds node.underlay_address {addr}"))?;
        nl.link_by_index(index)
            .await?
            .ok_or_else(|| anyhow!("interface #{index} vanished"))?
    } else {
        let index = nl.default_route_oif().await?.ok_or_else(|| {
            anyhow!("no default route to find the underlay by; set node.underlay_interface")
        })?;
        nl.link_by_index(index)
            .await?
            .ok_or_else(|| anyhow!("interface #{index} vanished"))?
    };
    let underlay_addr = match node.underlay_address {
        Some(a) => a,
        None => addrs
            .iter()
            .find(|(i, a, _)| *i == underlay.index && !a.is_link_local())
            .map(|(_, a, _)| *a)
            .ok_or_else(|| {
                anyhow!(
                    "{} has no IPv4 address; set node.underlay_address",
                    underlay.name
                )
            })?,
    };
    let pod_mtu = cfg.bridge.mtu.unwrap_or(underlay.mtu);
    let tunnel_mtu = cfg
        .tunnel
        .mtu
        .unwrap_or(underlay.mtu.saturating_sub(vxlan::IPV4_OVERHEAD as u32));
    if tunnel_mtu < 576 {
        bail!(
            "tunnel MTU {tunnel_mtu} is too small (underlay {} has MTU {})",
            underlay.name,
            underlay.mtu
        );
    }
    let loopback_index = nl
        .link_by_name("lo")
        .await?
        .ok_or_else(|| anyhow!("this network namespace has no loopback interface lo"))?
        .index;
    Ok(Local {
        loopback_index,
        name: node.name.clone(),
        underlay_addr,
        vtep_mac: node
            .vtep_mac
            .unwrap_or_else(|| MacAddr::vtep_for_node(&node.name)),
        pod_mtu,
        tunnel_mtu,
        underlay,
    })
}

fn local_vtep(cfg: &Config, local: &Local, subnet: Subnet) -> LocalVtep {
    LocalVtep {
        vni: cfg.tunnel.vni,
        mac: local.vtep_mac,
        pod_subnet: subnet.net,
    }
}

/// Our nftables table for this pod subnet and these peer addresses.
fn ruleset(
    cfg: &Config,
    pods: Ipv4Net,
    nodes: std::collections::BTreeSet<Ipv4Addr>,
) -> nft::Ruleset {
    nft::Ruleset {
        pods,
        cluster: cfg.cluster.cidr,
        masquerade: cfg.nat.masquerade,
        tunnel_port: cfg.tunnel.port,
        gossip_port: cfg.gossip.as_ref().map(|g| g.bind.port()),
        quic_port: cfg.quic.as_ref().map(|q| q.port),
        nodes,
    }
}

/// Installs our nftables table unless it is already exactly `want`.
fn sync_nft(shared: &Shared, want: nft::Ruleset) -> Result<()> {
    let mut installed = shared.nft.lock().unwrap_or_else(|e| e.into_inner());
    if *installed != want {
        nft::install(&want)?;
        *installed = want;
    }
    Ok(())
}

/// Creates the TUN device; with `offload`, with a virtio-net header and checksum and TSO
/// offload (and USO where the kernel has it). Returns whether offload is on: a kernel that
/// refuses it gets a plain device, with a warning.
fn create_tun(name: &str, mtu: u32, offload: bool) -> Result<(tun_rs::AsyncDevice, bool)> {
    let mtu = u16::try_from(mtu).map_err(|_| anyhow!("tunnel MTU {mtu} exceeds 65535"))?;
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .offload(offload)
            // Not `enable(false)`: a persistent device left by the last run is up, and
            // taking it down would flush every route into it. A new one starts down.
            .inherit_enable_state()
            .build_async()
    };
    if offload {
        match build(true) {
            // tun-rs sets IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|TSO6) or fails; `tcp_gso`
            // says the virtio-net header is on, which is what the data path relies on.
            Ok(dev) if dev.tcp_gso() => {
                tracing::info!(
                    device = name,
                    uso = dev.udp_gso(),
                    "TUN offload on (virtio-net header, checksum, TSO)"
                );
                return Ok((dev, true));
            }
            Ok(_) => tracing::warn!(
                device = name,
                "TUN offload did not take; using plain packets (tunnel.offload = false silences this)"
            ),
            Err(e) => tracing::warn!(
                device = name,
                "TUN offload refused ({e}); using plain packets (tunnel.offload = false silences this)"
            ),
        }
    }
    let dev = build(false).with_context(|| format!("creating TUN device {name}"))?;
    Ok((dev, false))
}

/// Keeps routes and the forwarding table in step with the peers, on every change and
/// every [`RECONCILE_INTERVAL`].
async fn control_loop(
    shared: Arc<Shared>,
    mut peers: watch::Receiver<Vec<PeerInfo>>,
) -> Result<()> {
    loop {
        let current = routing::with_handed(
            peers.borrow_and_update().clone(),
            &shared.handed,
            adopting(&shared),
        );
        let routed = match reconcile(&shared, &current).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("reconciling routes: {e:#}");
                false
            }
        };
        let ready = routed && joined(&shared).await;
        if ready != shared.ready.swap(ready, Ordering::Relaxed) {
            match ready {
                true => tracing::info!(
                    peers = current.len(),
                    "routes to every peer programmed: ready"
                ),
                false => tracing::warn!("not ready: routes failed or the cluster is out of reach"),
            }
        }
        tokio::select! {
            changed = peers.changed() => if changed.is_err() { return Ok(()) },
            _ = shared.reconcile_now.notified() => {}
            _ = shared.pmtu.routes_changed.notified() => {}
            _ = shared.paths.changed.notified() => {}
            _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
        }
    }
}

/// The peers the data path carries now: what a hand-over passes on and a stop saves.
fn carried_peers(shared: &Shared) -> Vec<PeerInfo> {
    shared
        .peers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admitted
        .iter()
        .map(|a| a.peer.clone())
        .collect()
}

/// The file in the state directory a stop saves the carried peers in, for a start moments
/// later (`systemctl restart`, a crash loop's next start has none): it forwards to them
/// at once instead of after gossip's first exchange.
const SAVED_PEERS: &str = "peers.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPeers {
    /// Unix ms when the stop wrote it.
    written_ms: u64,
    peers: Vec<PeerInfo>,
}

fn save_peers(path: &std::path::Path, peers: Vec<PeerInfo>) -> Result<()> {
    let saved = SavedPeers {
        written_ms: crate::gossip::wall_clock_ms(),
        peers,
    };
    crate::write_atomic(path, &serde_json::to_vec(&saved)?)
}

/// The peers the last stop saved, if it was less than [`ADOPT_GRACE`] ago (older ones
/// may have moved; gossip tells). Anything unreadable counts as none.
fn saved_peers(dir: &std::path::Path) -> Vec<PeerInfo> {
    let path = dir.join(SAVED_PEERS);
    let Ok(bytes) = std::fs::read(&path) else {
        return Vec::new();
    };
    match serde_json::from_slice::<SavedPeers>(&bytes) {
        Ok(saved)
            if crate::gossip::wall_clock_ms().saturating_sub(saved.written_ms)
                < ADOPT_GRACE.as_millis() as u64 =>
        {
            tracing::info!(
                peers = saved.peers.len(),
                "forwarding to the peers the last stop saved until gossip has them"
            );
            saved.peers
        }
        Ok(_) => Vec::new(),
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", path.display());
            Vec::new()
        }
    }
}

/// Asks the daemon on `socket` to hand over ([`Request::HandOver`]).
async fn take_over(socket: &std::path::Path) -> Result<overlayd_proto::api::HandOver> {
    let started = Instant::now();
    let handed: overlayd_proto::api::HandOver =
        crate::api::call(socket, &overlayd_proto::api::Request::HandOver)
            .await
            .with_context(|| {
                format!(
                    "--takeover: no daemon answered on {} (start without --takeover)",
                    socket.display()
                )
            })?;
    tracing::info!(
        pid = handed.pid,
        peers = handed.peers.len(),
        took = ?started.elapsed(),
        "taking over from the running daemon"
    );
    Ok(handed)
}

/// Waits until the process that handed over (`pid`) has let go of the state directory's
/// lock — it exited, closing its sockets and TUN queue — then holds it.
async fn wait_for_lock(
    dir: &std::path::Path,
    pid: u32,
) -> Result<nix::fcntl::Flock<std::fs::File>> {
    const HAND_OVER_WAIT: Duration = Duration::from_secs(10);
    let deadline = Instant::now() + HAND_OVER_WAIT;
    loop {
        match lock_state_dir(dir) {
            Ok(lock) => return Ok(lock),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "--takeover: the old daemon (pid {pid}) did not exit within {HAND_OVER_WAIT:?}"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// With gossip and seeds, a node is part of the cluster once it sees another member alive;
/// without seeds (the first node) or without gossip, it is from the start.
async fn joined(shared: &Shared) -> bool {
    let (Some(handle), Some(g)) = (&shared.gossip, &shared.cfg.gossip) else {
        return true;
    };
    if g.seeds.is_empty() {
        return true;
    }
    handle.report().await.is_ok_and(|r| r.members_alive > 1)
}

/// How long after start a gossiping node keeps the peer routes it found but has not
/// learned the peers of yet (a restart: gossip brings them back within a few seconds; a
/// peer that really left while this node was down keeps its route this long at most).
const ADOPT_GRACE: Duration = Duration::from_secs(10);

/// Whether the peer routes found at start are still being adopted: with gossip, for
/// [`ADOPT_GRACE`] after start. A member being alive is not enough — its record, and the
/// others', may still be on the way. Static peers are known at once. Routes this run
/// made itself are never held back.
fn adopting(shared: &Shared) -> bool {
    shared.gossip.is_some() && shared.started.elapsed() < ADOPT_GRACE
}

/// The peer set as the data path last applied it.
#[derive(Debug, Default)]
struct PeerState {
    admitted: Vec<AdmittedPeer>,
    rejected: Vec<routing::Rejected>,
}

/// A peer in routes and the tunnel.
#[derive(Debug)]
struct AdmittedPeer {
    peer: PeerInfo,
    path: PeerPath,
    /// Its underlay address is on-link through our underlay interface (our L2 segment),
    /// whatever path it takes: it may hold this segment's LoadBalancer IPs.
    on_link: bool,
    /// Why the kernel refused its route, if it did.
    route_error: Option<String>,
}

async fn reconcile(shared: &Shared, peers: &[PeerInfo]) -> Result<()> {
    let subnet = shared.subnet();
    let view = routing::LocalView {
        cluster_cidr: shared.cfg.cluster.cidr,
        pod_subnet: subnet.net,
        underlay: shared.local.underlay_addr,
    };
    let (peers, rejected) = routing::admit(&view, peers);
    // Every peer's address, admitted or not, is a node whose tunnel port pods must not reach.
    let nodes = peers
        .iter()
        .chain(rejected.iter().map(|r| &r.peer))
        .map(|p| p.underlay)
        .collect();
    if let Err(e) = sync_nft(shared, ruleset(&shared.cfg, subnet.net, nodes)) {
        tracing::warn!("updating the nftables table: {e:#}");
    }
    for r in &rejected {
        tracing::warn!(peer = %r.peer.name, subnet = %r.peer.pod_subnet, underlay = %r.peer.underlay, "peer left out: {}", r.reason);
    }
    let mut with_paths = Vec::with_capacity(peers.len());
    let mut on_link = Vec::with_capacity(peers.len());
    let mut encrypted_only = Vec::new();
    let mut ladder_peers = Vec::with_capacity(peers.len());
    let mut linked_by_name = BTreeMap::new();
    let relays = relay_plan(shared, &peers);
    for peer in &peers {
        let (path, linked) = match shared.nl.route_get(peer.underlay).await {
            Ok(lookup) => (
                routing::choose_path(
                    shared.cfg.tunnel.host_gw,
                    lookup,
                    shared.local.underlay.index,
                ),
                lookup.gateway.is_none() && lookup.oif == shared.local.underlay.index,
            ),
            Err(e) => {
                tracing::warn!(peer = %peer.name, "no route to its underlay address, using the tunnel: {e:#}");
                (PeerPath::Udp, false)
            }
        };
        let (candidates, encrypted) = policy_candidates(shared, peer, path);
        if encrypted {
            encrypted_only.push(peer.name.clone());
        }
        let relay = candidates
            .contains(&PathKind::Relay)
            .then(|| relays.relays.get(&peer.name).cloned())
            .flatten();
        ladder_peers.push(LadderPeer {
            name: peer.name.clone(),
            underlay: peer.underlay,
            candidates,
            relay,
        });
        linked_by_name.insert(peer.name.clone(), linked);
    }
    // The ladder picks among the candidates (the policy's first at once; later what its
    // probes find working).
    let chosen = shared.paths.set_peers(&ladder_peers);
    for peer in &peers {
        let Some(path) = chosen
            .get(&peer.name)
            .copied()
            .flatten()
            .and_then(PeerPath::carrying)
        else {
            continue;
        };
        with_paths.push((peer.clone(), path));
        on_link.push(linked_by_name.get(&peer.name).copied().unwrap_or(false));
    }
    let over_quic: Vec<&str> = with_paths
        .iter()
        .filter(|(_, path)| *path == PeerPath::Quic)
        .map(|(peer, _)| peer.name.as_str())
        .collect();
    if let Some(quic) = &shared.quic {
        // Every peer with a quic rung keeps a connection: the ladder probes it, and a
        // fall-back onto it needs no handshake.
        let wanted: Vec<(String, std::net::SocketAddr)> = ladder_peers
            .iter()
            .filter(|l| l.candidates.contains(&PathKind::Quic))
            .filter_map(|l| {
                let peer = peers.iter().find(|p| p.name == l.name)?;
                Some((peer.name.clone(), (peer.underlay, peer.quic_port?).into()))
            })
            .collect();
        quic.set_advertised(
            peers
                .iter()
                .filter_map(|p| Some((p.name.clone(), p.cert_fingerprint?)))
                .collect(),
        );
        quic.set_peers(&wanted);
    }
    // A relayed peer's frames are taken from its relay (whether or not the rung is
    // chosen: the two ends switch at slightly different moments), and sent there once the
    // rung is chosen.
    let relayed: Vec<(&str, &str, bool)> = ladder_peers
        .iter()
        .filter_map(|l| {
            let relay = l.relay.as_deref()?;
            let chosen = with_paths
                .iter()
                .any(|(p, path)| p.name == l.name && *path == PeerPath::Relay);
            Some((l.name.as_str(), relay, chosen))
        })
        .collect();
    shared.dp.install(
        ForwardingTable::new(
            local_vtep(&shared.cfg, &shared.local, subnet),
            peers.clone(),
        )
        .with_quic(over_quic)
        .with_encryption_required(encrypted_only.iter().map(String::as_str))
        .with_relays(relayed.iter().copied())
        .with_relaying(relays.relay_hops.iter().map(String::as_str)),
    );
    let mut route_mtus = path_mtus(shared, &with_paths).await;
    // The relay's frames are the udp path's, sent to the relay: the relay's path MTU
    // (where narrower than the tunnel device's) is the relayed route's. The relay's own
    // hop onward is not measured from here.
    let udp_mtus = route_mtus.clone();
    for (peer, path) in &with_paths {
        match path {
            PeerPath::Quic => {
                route_mtus.insert(peer.underlay, quic_route_mtu(shared, &peer.name));
            }
            PeerPath::Relay => {
                let relay_mtu = relayed
                    .iter()
                    .find(|(name, _, _)| *name == peer.name)
                    .and_then(|(_, relay, _)| peers.iter().find(|p| p.name == *relay))
                    .and_then(|p| udp_mtus.get(&p.underlay).copied());
                match relay_mtu {
                    Some(mtu) => route_mtus.insert(peer.underlay, mtu),
                    None => route_mtus.remove(&peer.underlay),
                };
            }
            PeerPath::HostGw | PeerPath::Udp => {}
        }
    }

    let vips = shared.services.table().borrow().vips();
    let desired = routing::plan(
        &local_routing(shared, subnet),
        &with_paths,
        &vips,
        &route_mtus,
    );
    let current = shared.nl.owned_routes().await?;
    let mut ops = routing::reconcile(&desired, &current);
    {
        // A start adopts what is there: peers not learned yet are not gone, and the routes
        // to them found at start (kept from before a restart) stay for ADOPT_GRACE.
        let mut adopted = shared.adopted.lock().unwrap_or_else(|e| e.into_inner());
        let found = adopted.get_or_insert_with(|| {
            current
                .iter()
                .filter(|r| r.kind == routing::RouteKind::Unicast)
                .map(|r| r.dst)
                .collect()
        });
        if adopting(shared) {
            ops.retain(|op| !matches!(op, RouteOp::Delete(r) if found.contains(&r.dst)));
        }
    }
    let mut errors: Vec<(Ipv4Net, String)> = Vec::new();
    for op in &ops {
        tracing::info!("route change: {op:?}");
        if let Err(e) = shared.nl.apply(op).await {
            let dst = match op {
                RouteOp::Add(r) | RouteOp::Replace(r) | RouteOp::Delete(r) => r.dst,
            };
            errors.push((dst, format!("{e:#}")));
        }
    }
    let admitted: Vec<AdmittedPeer> = with_paths
        .into_iter()
        .zip(on_link)
        .map(|((peer, path), on_link)| {
            let route_error = errors
                .iter()
                .find(|(dst, _)| *dst == peer.pod_subnet)
                .map(|(_, e)| e.clone());
            AdmittedPeer {
                peer,
                path,
                on_link,
                route_error,
            }
        })
        .collect();
    let on_link_before: Vec<String> = {
        let mut state = shared
            .peers
            .lock()
            .map_err(|_| anyhow!("peer list lock poisoned"))?;
        let before = on_link_names(&state.admitted);
        *state = PeerState { admitted, rejected };
        before
    };
    // The segment's live members decide who holds LoadBalancer IPs.
    if on_link_before
        != on_link_names(
            &shared
                .peers
                .lock()
                .map_err(|_| anyhow!("peer list lock poisoned"))?
                .admitted,
        )
    {
        shared.services_now.notify_one();
    }
    match errors.first() {
        None => Ok(()),
        Some((dst, e)) => Err(anyhow!(
            "{} route changes failed, first for {dst}: {e}",
            errors.len()
        )),
    }
}

/// Who relays for whom as this node sees it: among the live members (gossip's peers
/// without those whose daemon is down, and this node), hops judged by the `[path]`
/// policy ([`PathPolicy::relay_hop`](overlayd_proto::path::PathPolicy::relay_hop)).
fn relay_plan(shared: &Shared, peers: &[PeerInfo]) -> overlayd_proto::path::RelayPlan {
    let local_zone = shared.cfg.node.zone.as_str();
    let mut members: Vec<overlayd_proto::path::Member<'_>> = peers
        .iter()
        .filter(|p| {
            !shared
                .gossip
                .as_ref()
                .is_some_and(|g| g.daemon_down(&p.name))
        })
        .map(|p| overlayd_proto::path::Member {
            name: &p.name,
            zone: if p.zone.is_empty() {
                local_zone
            } else {
                &p.zone
            },
            relays: p.relay,
        })
        .collect();
    members.push(overlayd_proto::path::Member {
        name: &shared.cfg.node.name,
        zone: local_zone,
        relays: true,
    });
    overlayd_proto::path::relay_plan(&shared.cfg.node.name, &members, |from, relay| {
        shared.cfg.path.relay_hop(from.zone, relay.zone, relay.name)
    })
}

/// A peer's candidate paths under the `[path]` policy — the allowed ones this node
/// carries (all, but never the relay for a pair that requires encryption:
/// [`PeerPath::carried_in`]), in ladder order; `kernel` is what the
/// kernel's route lookup allows (host-gw or the tunnel) — and whether the pair requires
/// encryption. None (logged): the peer gets no route, so the cluster blackhole drops its
/// traffic rather than sending it on a path the policy refuses.
fn policy_candidates(shared: &Shared, peer: &PeerInfo, kernel: PeerPath) -> (Vec<PathKind>, bool) {
    let local_zone = shared.cfg.node.zone.as_str();
    let peer_zone = if peer.zone.is_empty() {
        local_zone
    } else {
        peer.zone.as_str()
    };
    let resolved = shared.cfg.path.resolve(overlayd_proto::path::PairView {
        local_zone,
        peer_zone,
        peer_name: &peer.name,
        on_link: kernel == PeerPath::HostGw,
        quic: shared.quic.is_some() && peer.quic_port.is_some(),
    });
    let carried = PeerPath::carried_in(&resolved.candidates, resolved.require_encryption);
    if carried.is_empty() {
        tracing::warn!(
            peer = %peer.name, zone = peer_zone, allowed = ?resolved.candidates,
            require_encryption = resolved.require_encryption,
            "no allowed path can be carried to this peer (does it and this node have [quic]?); its pods are unreachable"
        );
    }
    (carried, resolved.require_encryption)
}

/// Tells the path-MTU machine which peers the tunnel carries and what our underlay
/// device's MTU is now (it may have changed since start), and returns the `mtu` each of
/// their routes must carry.
async fn path_mtus(
    shared: &Shared,
    with_paths: &[(PeerInfo, PeerPath)],
) -> BTreeMap<Ipv4Addr, u32> {
    let tunnel_peers: Vec<Ipv4Addr> = with_paths
        .iter()
        .filter(|(_, path)| *path == PeerPath::Udp)
        .map(|(peer, _)| peer.underlay)
        .collect();
    let ceiling = match shared.nl.link_by_index(shared.local.underlay.index).await {
        Ok(Some(link)) => link.mtu,
        _ => shared.local.underlay.mtu,
    };
    shared
        .pmtu
        .update(&tunnel_peers, ceiling, shared.local.tunnel_mtu)
}

fn on_link_names(peers: &[AdmittedPeer]) -> Vec<String> {
    peers
        .iter()
        .filter(|p| p.on_link)
        .map(|p| p.peer.name.clone())
        .collect()
}

fn local_routing(shared: &Shared, subnet: Subnet) -> LocalRouting {
    LocalRouting {
        cluster_cidr: shared.cfg.cluster.cidr,
        tunnel_src: subnet.gateway,
        tunnel_oif: shared.tun_index,
        underlay_oif: shared.local.underlay.index,
        loopback_oif: shared.local.loopback_index,
    }
}

/// Puts the subnet's gateway address on the bridge and removes every other address. The
/// bridge is ours (`ensure_bridge` checked): an address left from an earlier subnet (one
/// that changed while the daemon was down, or a move that failed half-way before the
/// subnet changed again) would keep a connected route that shadows its new owner.
async fn set_bridge_gateway(nl: &Netlink, bridge_index: u32, subnet: &Subnet) -> Result<()> {
    nl.set_only_addr(bridge_index, subnet.gateway, subnet.net.prefix_len())
        .await
}

/// Moves the node to a new claimed subnet when gossip says so (a conflict was lost):
/// bridge address, NAT, pods, then routes and the forwarding table. A step that fails is
/// retried (every step is idempotent) until it succeeds or the subnet changes again.
async fn follow_subnet(
    shared: Arc<Shared>,
    mut subnet: watch::Receiver<Option<Ipv4Net>>,
) -> Result<()> {
    let mut pending: Option<Ipv4Net> = None;
    loop {
        if pending.is_none() && subnet.changed().await.is_err() {
            return Ok(());
        }
        let Some(new) = *subnet.borrow_and_update() else {
            continue;
        };
        match move_subnet(&shared, Subnet::new(new)).await {
            Ok(()) => pending = None,
            Err(e) => {
                tracing::error!(subnet = %new, "moving to the new pod subnet failed, retrying: {e:#}");
                pending = Some(new);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

async fn move_subnet(shared: &Shared, new: Subnet) -> Result<()> {
    let mut pods = shared.pods.lock().await;
    let old = shared.subnet();
    if new.net != old.net {
        tracing::warn!(old = %old.net, new = %new.net, "pod subnet changed; moving the bridge and pods");
    }
    set_bridge_gateway(&shared.nl, shared.bridge_index, &new).await?;
    let nodes = shared
        .nft
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .nodes
        .clone();
    sync_nft(shared, ruleset(&shared.cfg, new.net, nodes))?;
    *shared.subnet.write().unwrap_or_else(|e| e.into_inner()) = new;
    shared.reconcile_now.notify_one();
    if let Some(dns) = &shared.dns {
        dns.move_to(SocketAddrV4::new(new.gateway, DNS_PORT))?;
    }
    // Pods that find no address wait, recorded, for a deletion to make room (logged); pods
    // that could not be re-addressed are retried.
    let left = pods.renumber(new.net).await;
    shared.publish_pods(&pods);
    let left = left?;
    pods.set_dns(shared.pod_dns(new))?;
    if left.failed > 0 {
        bail!("{} pods could not be moved into {}", left.failed, new.net);
    }
    Ok(())
}

/// The port pods ask the cluster DNS on.
const DNS_PORT: u16 = 53;

/// Starts the cluster DNS on the bridge gateway (port 53, UDP and TCP), forwarding other
/// names to `dns.upstream` or the node's own resolvers.
async fn start_dns(
    cfg: &Config,
    subnet: Subnet,
    table: Arc<overlayd_proto::service::ServiceTable>,
) -> Result<DnsServer> {
    let configured: Vec<SocketAddrV4> = cfg.dns.upstream.iter().map(|u| u.0).collect();
    let upstreams =
        crate::dns::node_upstreams(&configured, std::path::Path::new("/etc/resolv.conf"))
            .unwrap_or_else(|e| {
                tracing::warn!(
                    "no upstream resolvers ({e:#}): names outside {} will not resolve",
                    cfg.cluster.domain
                );
                Vec::new()
            });
    let mut settings = DnsSettings::new(SocketAddrV4::new(subnet.gateway, DNS_PORT), upstreams);
    settings.domain = cfg.cluster.domain.clone();
    DnsServer::start(settings, table).await.with_context(|| {
        format!(
            "starting the cluster DNS on {}:{DNS_PORT}; free the port or set dns.enabled = false",
            subnet.gateway
        )
    })
}

/// Loads the CA and this node's certificate (refused at start when the key's mode is
/// loose or the certificate would be refused by the peers) and binds the QUIC endpoint,
/// which delivers the datagrams it receives to `sink`.
fn start_quic(
    cfg: &Config,
    q: &overlayd_config::schema::Quic,
    local: &Local,
    sink: Arc<dyn crate::quic::Sink>,
) -> Result<QuicTransport> {
    let ca = crate::pki::Ca::load(&q.ca).context("[quic] ca")?;
    let identity = crate::pki::NodeIdentity::load(
        &ca,
        &cfg.node.name,
        &q.cert,
        &q.key,
        std::time::SystemTime::now(),
    )
    .context("[quic] cert and key")?;
    let mut config = QuicConfig::new(
        std::net::SocketAddr::from((Ipv4Addr::UNSPECIFIED, q.port)),
        ca,
        identity,
    );
    config.underlay_mtu = u16::try_from(local.underlay.mtu).unwrap_or(u16::MAX);
    let started = QuicTransport::bind_with(config, sink)
        .with_context(|| format!("starting the QUIC endpoint on UDP port {}", q.port))?;
    tracing::info!(port = q.port, "QUIC endpoint up");
    Ok(started)
}

/// The `mtu` of the route of a peer reached over QUIC: the largest pod packet one
/// datagram carries — over our underlay device, and on the peer's connection as it is
/// now (quinn lowers it when its black-hole detection finds a narrower path, e.g. a
/// 1400-byte link; the control loop's 5 s pass follows).
fn quic_route_mtu(shared: &Shared, peer: &str) -> u32 {
    let underlay = u16::try_from(shared.local.underlay.mtu).unwrap_or(u16::MAX);
    let device = u32::from(crate::quic::max_datagram_payload(underlay, false));
    let connection = shared
        .quic
        .as_ref()
        .and_then(|q| q.max_datagram_size(peer))
        .map_or(device, |n| u32::try_from(n).unwrap_or(device));
    device.min(connection)
}

/// SIGHUP: the QUIC endpoint takes the CA and certificate files as they are now (a
/// renewed certificate, a new CA); live tunnels whose peer certificate still passes stay
/// up, the others are closed. A file that does not load keeps the running ones.
async fn reload_quic(shared: &Shared) {
    let Some(quic) = &shared.quic else {
        return;
    };
    let mut advertise = None;
    let loaded = overlayd_config::load(&shared.config_path)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| {
            let q = cfg
                .quic
                .ok_or_else(|| anyhow!("[quic] was removed; restart to turn QUIC off"))?;
            let ca = crate::pki::Ca::load(&q.ca)?;
            let identity = crate::pki::NodeIdentity::load(
                &ca,
                &shared.cfg.node.name,
                &q.cert,
                &q.key,
                std::time::SystemTime::now(),
            )?;
            advertise = Some(identity.fingerprint);
            quic.reload(ca, &identity, revocation_list(shared))
        });
    match loaded {
        Ok(closed) => tracing::info!(?closed, "SIGHUP: QUIC CA and certificate reloaded"),
        Err(e) => {
            tracing::error!("SIGHUP: keeping the current QUIC certificates: {e:#}");
            return;
        }
    }
    // Peers refuse a certificate other than the one our record advertises: advertise the
    // new one. Until the record reaches a peer, a new handshake with it is refused and
    // retried (live tunnels stay up).
    if let (Some(handle), Some(fp)) = (&shared.gossip, advertise) {
        match handle.advertise_cert(Some(fp)).await {
            Ok(()) => tracing::info!(fingerprint = %fp, "SIGHUP: advertising the new certificate"),
            Err(e) => tracing::error!("SIGHUP: {e:#}"),
        }
    }
}

/// The revocations gossip holds, as the QUIC verifiers take them.
fn revocation_list(shared: &Shared) -> overlayd_proto::pki::RevocationList {
    shared
        .gossip
        .as_ref()
        .map(|g| g.revoked().borrow().keys().copied().collect())
        .unwrap_or_default()
}

/// Hands every new revocation from gossip to the QUIC endpoint: live tunnels to a
/// revoked certificate close, new handshakes presenting one are refused
/// (`cert_revoked`).
async fn follow_revocations(
    shared: Arc<Shared>,
    mut revoked: watch::Receiver<crate::gossip::Revoked>,
) -> Result<()> {
    loop {
        let list: overlayd_proto::pki::RevocationList =
            revoked.borrow_and_update().keys().copied().collect();
        if let Some(quic) = &shared.quic
            && quic.revoked() != list
        {
            if let Some(own) = quic.own_fingerprint().filter(|f| list.is_revoked(f)) {
                tracing::error!(
                    fingerprint = %own,
                    "this node's own QUIC certificate is revoked: every peer refuses it; issue \
                     a new one (`overlayd cert issue`) and send SIGHUP"
                );
            }
            let closed = quic.set_revoked(list);
            if !closed.is_empty() {
                tracing::warn!(
                    ?closed,
                    "QUIC tunnels closed: the peer's certificate is revoked"
                );
            }
        }
        if revoked.changed().await.is_err() {
            return Ok(());
        }
    }
}

/// SIGHUP: make the running keyring what the config's key files say now.
async fn reload_keys(shared: &Shared) {
    let Some(handle) = &shared.gossip else {
        tracing::info!("SIGHUP: no [gossip], nothing to reload");
        return;
    };
    let reloaded = overlayd_config::load(&shared.config_path)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| {
            cfg.gossip
                .ok_or_else(|| anyhow!("[gossip] was removed; restart to turn gossip off"))
        })
        .and_then(|g| crate::keys::load_all(&g.key_files));
    let result = match reloaded {
        Ok(keys) => handle.keys(crate::gossip::KeyOp::Replace(keys)).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(fingerprints) => {
            tracing::info!(keys = ?fingerprints, "SIGHUP: gossip keys reloaded (primary first)")
        }
        Err(e) => tracing::error!("SIGHUP: keeping the current keys: {e:#}"),
    }
}

/// Every step runs even if one before it failed; the first failure is returned.
async fn remove_datapath(shared: &Shared) -> Result<()> {
    let mut results = Vec::new();
    match shared.nl.owned_routes().await {
        Ok(routes) => {
            for route in routes {
                results.push(shared.nl.apply(&RouteOp::Delete(route)).await);
            }
        }
        Err(e) => results.push(Err(e)),
    }
    results.push(serving::release_lb(shared).await);
    results.push(nft::remove());
    results.push(shared.nl.delete_link(shared.tun_index).await);
    results.push(shared.nl.delete_link(shared.bridge_index).await);
    let failed: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    match failed.into_iter().next() {
        None => {
            tracing::info!(
                "data path removed (routes, TUN, bridge, NAT table); pods keep their namespaces"
            );
            Ok(())
        }
        Some(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str) -> PeerInfo {
        PeerInfo {
            name: name.to_owned(),
            underlay: Ipv4Addr::new(10, 100, 1, 12),
            pod_subnet: "10.244.7.0/24".parse().unwrap(),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, 7]),
            zone: String::new(),
            quic_port: None,
            cert_fingerprint: None,
            relay: false,
        }
    }

    /// A stop's saved peers are taken by a start moments later, not by one after the
    /// adoption grace, and a damaged file is no peers at all.
    #[test]
    fn saved_peers_are_taken_only_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SAVED_PEERS);
        assert!(saved_peers(dir.path()).is_empty(), "no file, no peers");
        save_peers(&path, vec![peer("n2")]).unwrap();
        assert_eq!(saved_peers(dir.path()), vec![peer("n2")]);

        let stale = SavedPeers {
            written_ms: crate::gossip::wall_clock_ms() - ADOPT_GRACE.as_millis() as u64 - 1,
            peers: vec![peer("n2")],
        };
        std::fs::write(&path, serde_json::to_vec(&stale).unwrap()).unwrap();
        assert!(saved_peers(dir.path()).is_empty(), "too old to trust");

        std::fs::write(&path, b"{not json").unwrap();
        assert!(saved_peers(dir.path()).is_empty(), "damaged");
    }
}
