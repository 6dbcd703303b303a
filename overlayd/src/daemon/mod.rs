//! `overlayd run`: sets up the node (bridge, TUN, NAT, pods), then keeps the kernel's
//! routes and the tunnel's forwarding table in step with the peer set — from the static
//! `[[peer]]` list and, with `[gossip]`, from the cluster's members — serves the control
//! API, and on SIGTERM/SIGINT leaves the cluster and removes or keeps the data path.

mod api;
mod gossip_setup;

use std::net::Ipv4Addr;
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
use overlayd_proto::routing::{self, LocalRouting, PeerPath, RouteOp};
use overlayd_proto::wire::{MacAddr, vxlan};
use tokio::sync::{Mutex, Notify, watch};

use crate::datapath::{self, Datapath};
use crate::discovery::{PeerSource, StaticPeers};
use crate::gossip::GossipHandle;
use crate::nat;
use crate::netlink::{self, Link, Netlink};
use crate::pods::Pods;

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
    pods: Mutex<Pods>,
    peers: std::sync::Mutex<Vec<(PeerInfo, PeerPath)>>,
    gossip: Option<GossipHandle>,
    /// Wakes the control loop (the local subnet changed).
    reconcile_now: Notify,
    ready: AtomicBool,
    started: Instant,
    tun_index: u32,
    bridge_index: u32,
}

impl Shared {
    fn subnet(&self) -> Subnet {
        *self.subnet.read().unwrap_or_else(|e| e.into_inner())
    }
}

pub async fn run(cfg: Config, config_path: PathBuf) -> Result<()> {
    netlink::require_net_admin()?;
    crate::netns::find_host_mount_ns();
    let nl = Netlink::connect()?;
    let local = resolve_local(&nl, &cfg).await?;
    tracing::info!(
        node = %local.name, underlay = %local.underlay_addr, dev = %local.underlay.name,
        vtep_mac = %local.vtep_mac, "starting"
    );
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;

    let (gossip, gossip_task) = match &cfg.gossip {
        Some(g) => {
            let (handle, task) = gossip_setup::start(&cfg, g, &local).await?;
            (Some(handle), Some(task))
        }
        None => (None, None),
    };
    let subnet = match (&cfg.node.pod_subnet, &gossip) {
        (Some(net), _) => *net,
        (None, Some(handle)) => gossip_setup::wait_for_subnet(&cfg, handle).await?,
        (None, None) => bail!("node.pod_subnet is required without [gossip]"),
    };
    let subnet = Subnet::new(subnet);
    tracing::info!(pod_subnet = %subnet.net, "pod subnet");

    let bridge_index = nl.ensure_bridge(&cfg.bridge.name, local.pod_mtu).await?;
    nl.ensure_addr(bridge_index, subnet.gateway, subnet.net.prefix_len())
        .await?;

    let tun = Arc::new(create_tun(&cfg.tunnel.device, local.tunnel_mtu)?);
    let tun_link = nl
        .link_by_name(&cfg.tunnel.device)
        .await?
        .ok_or_else(|| anyhow!("TUN device {} did not appear", cfg.tunnel.device))?;
    // IPv6 is not carried yet: keep the kernel from sending router solicitations and MLD
    // reports into the tunnel, where they would only be counted as drops. Before the
    // device goes up, or the first ones slip through.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", cfg.tunnel.device),
        "1",
    );
    nl.set_link(tun_link.index, Some(local.tunnel_mtu), None, true)
        .await?;

    apply_nat(&cfg, subnet.net)?;

    let ipam = PodIpam::new(subnet.net);
    let mut pods = Pods::load(&cfg.daemon.state_dir, ipam, bridge_index, local.pod_mtu)?;
    pods.reattach(&nl).await?;

    let (sock, udp_state) = datapath::bind_udp(cfg.tunnel.port)?;
    let (sock, udp_state) = (Arc::new(sock), Arc::new(udp_state));
    let dp = Arc::new(Datapath::new(ForwardingTable::new(
        local_vtep(&cfg, &local, subnet),
        Vec::new(),
    )));

    let listener = api::bind(&cfg.daemon.control_socket)?;
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        config_path,
        local: local.clone(),
        subnet: RwLock::new(subnet),
        nl: nl.clone(),
        dp: dp.clone(),
        pods: Mutex::new(pods),
        peers: std::sync::Mutex::new(Vec::new()),
        gossip: gossip.clone(),
        reconcile_now: Notify::new(),
        ready: AtomicBool::new(false),
        started: Instant::now(),
        tun_index: tun_link.index,
        bridge_index,
    });

    let peer_source: Box<dyn PeerSource> = match &gossip {
        Some(handle) => Box::new(handle.clone()),
        None => Box::new(StaticPeers::new(&cfg.peers)),
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control_loop(shared.clone(), peer_source.subscribe()));
    let mtu = local.tunnel_mtu as usize;
    tasks.spawn(datapath::tun_to_udp(
        dp.clone(),
        tun.clone(),
        sock.clone(),
        udp_state.clone(),
        mtu,
        cfg.tunnel.port,
    ));
    tasks.spawn(datapath::udp_to_tun(
        dp.clone(),
        tun.clone(),
        sock.clone(),
        udp_state.clone(),
    ));
    tasks.spawn(api::serve(shared.clone(), listener));
    if let Some(handle) = &gossip {
        tasks.spawn(follow_subnet(shared.clone(), handle.subnet()));
    }
    if let Some(task) = gossip_task {
        tasks.spawn(async move {
            task.await
                .map_err(|e| anyhow!("gossip task: {e}"))?
                .context("gossip")
        });
    }

    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut hup) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::hangup())?,
    );
    let outcome = loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break Ok(()) }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); break Ok(()) }
            _ = hup.recv() => reload_keys(&shared).await,
            Some(done) = tasks.join_next() => break match done {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => Err(anyhow!("a daemon task ended unexpectedly")),
                Err(e) => Err(anyhow!("a daemon task panicked: {e}")),
            },
        }
    };
    // With `on_exit = "keep"` the stop is a restart (an upgrade, say): no leave, so peers
    // keep their routes to us unless we stay away longer than failure detection takes.
    if let Some(handle) = gossip
        .as_ref()
        .filter(|_| cfg.daemon.on_exit == OnExit::Remove)
    {
        match tokio::time::timeout(Duration::from_secs(2), handle.leave()).await {
            Ok(Ok(())) => tracing::info!("left the cluster"),
            _ => tracing::warn!("could not announce leaving the cluster; peers will detect it"),
        }
    }
    tasks.abort_all();
    let _ = std::fs::remove_file(&cfg.daemon.control_socket);
    if cfg.daemon.on_exit == OnExit::Remove {
        if let Err(e) = remove_datapath(&shared).await {
            tracing::warn!("removing the data path: {e:#}");
        }
    } else {
        tracing::info!("on_exit = keep: leaving routes, bridge and NAT in place");
    }
    outcome
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
    Ok(Local {
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

fn apply_nat(cfg: &Config, pods: Ipv4Net) -> Result<()> {
    if cfg.nat.masquerade {
        nat::install(pods, cfg.cluster.cidr)
    } else {
        nat::remove()
    }
}

fn create_tun(name: &str, mtu: u32) -> Result<tun_rs::AsyncDevice> {
    let mtu = u16::try_from(mtu).map_err(|_| anyhow!("tunnel MTU {mtu} exceeds 65535"))?;
    tun_rs::DeviceBuilder::new()
        .name(name)
        .mtu(mtu)
        .enable(false)
        .build_async()
        .with_context(|| format!("creating TUN device {name}"))
}

/// Keeps routes and the forwarding table in step with the peers, on every change and
/// every [`RECONCILE_INTERVAL`].
async fn control_loop(
    shared: Arc<Shared>,
    mut peers: watch::Receiver<Vec<PeerInfo>>,
) -> Result<()> {
    loop {
        let current = peers.borrow_and_update().clone();
        match reconcile(&shared, &current).await {
            Ok(()) => {
                if !shared.ready.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        peers = current.len(),
                        "routes to every peer programmed: ready"
                    );
                }
            }
            Err(e) => tracing::warn!("reconciling routes: {e:#}"),
        }
        tokio::select! {
            changed = peers.changed() => if changed.is_err() { return Ok(()) },
            _ = shared.reconcile_now.notified() => {}
            _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
        }
    }
}

async fn reconcile(shared: &Shared, peers: &[PeerInfo]) -> Result<()> {
    let subnet = shared.subnet();
    // A peer whose subnet overlaps ours (a conflict gossip is still resolving) must not
    // capture our own pods' traffic.
    let peers: Vec<PeerInfo> = peers
        .iter()
        .filter(|p| {
            let clash = p.pod_subnet.contains(&subnet.net.network()) || subnet.net.contains(&p.pod_subnet.network());
            if clash {
                tracing::warn!(peer = %p.name, subnet = %p.pod_subnet, "peer subnet overlaps ours; ignoring it until the conflict resolves");
            }
            !clash
        })
        .cloned()
        .collect();
    let mut with_paths = Vec::with_capacity(peers.len());
    for peer in &peers {
        let path = match shared.nl.route_get(peer.underlay).await {
            Ok(lookup) => routing::choose_path(
                shared.cfg.tunnel.host_gw,
                lookup,
                shared.local.underlay.index,
            ),
            Err(e) => {
                tracing::warn!(peer = %peer.name, "no route to its underlay address, using the tunnel: {e:#}");
                PeerPath::Udp
            }
        };
        with_paths.push((peer.clone(), path));
    }
    shared.dp.install(ForwardingTable::new(
        local_vtep(&shared.cfg, &shared.local, subnet),
        peers,
    ));

    let desired = routing::plan(&local_routing(shared, subnet), &with_paths);
    let current = shared.nl.owned_routes().await?;
    let ops = routing::reconcile(&desired, &current);
    let mut failed = None;
    for op in &ops {
        tracing::info!("route change: {op:?}");
        if let Err(e) = shared.nl.apply(op).await {
            failed = Some(e);
        }
    }
    *shared
        .peers
        .lock()
        .map_err(|_| anyhow!("peer list lock poisoned"))? = with_paths;
    failed.map_or(Ok(()), Err)
}

fn local_routing(shared: &Shared, subnet: Subnet) -> LocalRouting {
    LocalRouting {
        cluster_cidr: shared.cfg.cluster.cidr,
        tunnel_src: subnet.gateway,
        tunnel_oif: shared.tun_index,
        underlay_oif: shared.local.underlay.index,
    }
}

/// Moves the node to a new claimed subnet when gossip says so (a conflict was lost):
/// bridge address, NAT, pods, then routes and the forwarding table.
async fn follow_subnet(
    shared: Arc<Shared>,
    mut subnet: watch::Receiver<Option<Ipv4Net>>,
) -> Result<()> {
    loop {
        if subnet.changed().await.is_err() {
            return Ok(());
        }
        let Some(new) = *subnet.borrow_and_update() else {
            continue;
        };
        let old = shared.subnet();
        if new == old.net {
            continue;
        }
        tracing::warn!(old = %old.net, %new, "pod subnet changed; moving the bridge and pods");
        let new = Subnet::new(new);
        let mut pods = shared.pods.lock().await;
        shared
            .nl
            .ensure_addr(shared.bridge_index, new.gateway, new.net.prefix_len())
            .await?;
        shared
            .nl
            .delete_addr(shared.bridge_index, old.gateway)
            .await?;
        apply_nat(&shared.cfg, new.net)?;
        *shared.subnet.write().unwrap_or_else(|e| e.into_inner()) = new;
        pods.renumber(new.net).await?;
        shared.reconcile_now.notify_one();
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
        .and_then(|g| {
            g.key_files
                .iter()
                .map(|f| crate::keys::load(f))
                .collect::<Result<Vec<_>>>()
        });
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

async fn remove_datapath(shared: &Shared) -> Result<()> {
    for route in shared.nl.owned_routes().await? {
        shared.nl.apply(&RouteOp::Delete(route)).await?;
    }
    nat::remove()?;
    shared.nl.delete_link(shared.tun_index).await?;
    shared.nl.delete_link(shared.bridge_index).await?;
    tracing::info!(
        "data path removed (routes, TUN, bridge, NAT table); pods keep their namespaces"
    );
    Ok(())
}
