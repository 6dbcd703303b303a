//! `overlayd run`: sets up the node (bridge, TUN, NAT, pods), then keeps the kernel's
//! routes and the tunnel's forwarding table in step with the peer set, serves the control
//! API, and on SIGTERM/SIGINT removes or keeps the data path as configured.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ipnet::Ipv4Net;
use overlayd_config::schema::{Config, OnExit};
use overlayd_proto::PeerInfo;
use overlayd_proto::dataplane::{ForwardingTable, LocalVtep};
use overlayd_proto::ipam::PodIpam;
use overlayd_proto::routing::{self, KernelRoute, LocalRouting, PeerPath, RouteKind, RouteOp};
use overlayd_proto::wire::{MacAddr, vxlan};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, watch};

use crate::api::{self, PeerReport, Request, Response, RouteReport};
use crate::datapath::{self, Datapath};
use crate::discovery::{PeerSource, StaticPeers};
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
    pod_subnet: Ipv4Net,
    gateway: Ipv4Addr,
    vtep_mac: MacAddr,
    pod_mtu: u32,
    tunnel_mtu: u32,
}

struct Shared {
    cfg: Config,
    local: Local,
    nl: Netlink,
    dp: Arc<Datapath>,
    pods: Mutex<Pods>,
    peers: std::sync::Mutex<Vec<(PeerInfo, PeerPath)>>,
    ready: AtomicBool,
    started: Instant,
    tun_index: u32,
    bridge_index: u32,
}

pub async fn run(cfg: Config) -> Result<()> {
    netlink::require_net_admin()?;
    crate::netns::find_host_mount_ns();
    let nl = Netlink::connect()?;
    let local = resolve_local(&nl, &cfg).await?;
    tracing::info!(
        node = %local.name, underlay = %local.underlay_addr, dev = %local.underlay.name,
        subnet = %local.pod_subnet, vtep_mac = %local.vtep_mac, "starting"
    );
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;

    let bridge_index = nl.ensure_bridge(&cfg.bridge.name, local.pod_mtu).await?;
    nl.ensure_addr(bridge_index, local.gateway, local.pod_subnet.prefix_len())
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

    if cfg.nat.masquerade {
        nat::install(local.pod_subnet, cfg.cluster.cidr)?;
    } else {
        nat::remove()?;
    }

    let ipam = PodIpam::new(local.pod_subnet);
    let pods = Pods::load(&cfg.daemon.state_dir, ipam, bridge_index, local.pod_mtu)?;
    pods.reattach(&nl).await?;

    let (sock, udp_state) = datapath::bind_udp(cfg.tunnel.port)?;
    let (sock, udp_state) = (Arc::new(sock), Arc::new(udp_state));
    let dp = Arc::new(Datapath::new(ForwardingTable::new(
        local_vtep(&cfg, &local),
        Vec::new(),
    )));

    let listener = bind_api(&cfg.daemon.control_socket)?;
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        local: local.clone(),
        nl: nl.clone(),
        dp: dp.clone(),
        pods: Mutex::new(pods),
        peers: std::sync::Mutex::new(Vec::new()),
        ready: AtomicBool::new(false),
        started: Instant::now(),
        tun_index: tun_link.index,
        bridge_index,
    });

    let source = StaticPeers::new(&cfg.peers);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control_loop(shared.clone(), source.subscribe()));
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
    tasks.spawn(serve_api(shared.clone(), listener));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: stopping"); Ok(()) }
        _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); Ok(()) }
        Some(done) = tasks.join_next() => match done {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(anyhow!("a daemon task ended unexpectedly")),
            Err(e) => Err(anyhow!("a daemon task panicked: {e}")),
        },
    };
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
        pod_subnet: node.pod_subnet,
        gateway: PodIpam::gateway_of(node.pod_subnet),
        vtep_mac: node
            .vtep_mac
            .unwrap_or_else(|| MacAddr::vtep_for_node(&node.name)),
        pod_mtu,
        tunnel_mtu,
        underlay,
    })
}

fn local_vtep(cfg: &Config, local: &Local) -> LocalVtep {
    LocalVtep {
        vni: cfg.tunnel.vni,
        mac: local.vtep_mac,
        pod_subnet: local.pod_subnet,
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
            _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
        }
    }
}

async fn reconcile(shared: &Shared, peers: &[PeerInfo]) -> Result<()> {
    let mut with_paths = Vec::with_capacity(peers.len());
    for peer in peers {
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
        local_vtep(&shared.cfg, &shared.local),
        peers.to_vec(),
    ));

    let desired = routing::plan(&local_routing(shared), &with_paths);
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

fn local_routing(shared: &Shared) -> LocalRouting {
    LocalRouting {
        cluster_cidr: shared.cfg.cluster.cidr,
        tunnel_src: shared.local.gateway,
        tunnel_oif: shared.tun_index,
        underlay_oif: shared.local.underlay.index,
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

fn bind_api(path: &PathBuf) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket file left by a daemon that died; if a live daemon owned it, connecting works.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another overlayd is already serving {}", path.display());
    }
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))
}

async fn serve_api(shared: Arc<Shared>, listener: UnixListener) -> Result<()> {
    loop {
        let (stream, _) = listener
            .accept()
            .await
            .context("accepting on the control socket")?;
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_conn(&shared, stream).await {
                tracing::debug!("control connection: {e:#}");
            }
        });
    }
}

async fn handle_conn(shared: &Shared, stream: UnixStream) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let n = BufReader::new(read)
        .take(api::MAX_REQUEST as u64 + 1)
        .read_line(&mut line)
        .await?;
    let response = if n > api::MAX_REQUEST {
        error_response(anyhow!("request longer than {} bytes", api::MAX_REQUEST))
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(req) => match dispatch(shared, req).await {
                Ok(value) => Response {
                    ok: true,
                    result: Some(value),
                    error: None,
                },
                Err(e) => error_response(e),
            },
            Err(e) => error_response(anyhow!("bad request: {e}")),
        }
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

fn error_response(e: anyhow::Error) -> Response {
    Response {
        ok: false,
        result: None,
        error: Some(format!("{e:#}")),
    }
}

async fn dispatch(shared: &Shared, req: Request) -> Result<serde_json::Value> {
    Ok(match req {
        Request::Status => serde_json::to_value(status(shared).await)?,
        Request::Peers => serde_json::to_value(peers(shared)?)?,
        Request::Routes => serde_json::to_value(routes(shared).await?)?,
        Request::PodAdd { name, ip, netns } => {
            let mut pods = shared.pods.lock().await;
            let record = pods.add(&shared.nl, &name, ip, netns.as_deref()).await?;
            tracing::info!(pod = %record.name, ip = %record.ip, netns = %record.netns.display(), "pod added");
            serde_json::to_value(record)?
        }
        Request::PodDel { name } => {
            let record = shared.pods.lock().await.del(&shared.nl, &name).await?;
            tracing::info!(pod = %record.name, ip = %record.ip, "pod deleted");
            serde_json::to_value(record)?
        }
        Request::PodList => serde_json::to_value(api::PodList {
            pods: shared.pods.lock().await.list(),
        })?,
    })
}

async fn status(shared: &Shared) -> api::Status {
    let l = &shared.local;
    api::Status {
        node: l.name.clone(),
        ready: shared.ready.load(Ordering::Relaxed),
        underlay_interface: l.underlay.name.clone(),
        underlay: l.underlay_addr,
        pod_subnet: l.pod_subnet,
        gateway: l.gateway,
        vtep_mac: l.vtep_mac.to_string(),
        tunnel_port: shared.cfg.tunnel.port,
        vni: shared.cfg.tunnel.vni,
        tunnel_mtu: l.tunnel_mtu,
        pod_mtu: l.pod_mtu,
        peers: shared.peers.lock().map(|p| p.len()).unwrap_or(0),
        pods: shared.pods.lock().await.len(),
        uptime_s: shared.started.elapsed().as_secs(),
        drops: drops_map(shared),
    }
}

fn drops_map(shared: &Shared) -> std::collections::BTreeMap<String, u64> {
    shared
        .dp
        .drops
        .to_map()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn peers(shared: &Shared) -> Result<api::Peers> {
    use std::sync::atomic::Ordering::Relaxed;
    let list = shared
        .peers
        .lock()
        .map_err(|_| anyhow!("peer list lock poisoned"))?
        .clone();
    let peers = list
        .into_iter()
        .map(|(p, path)| {
            let c = shared.dp.counters_of(&p.name);
            PeerReport {
                path: path.as_str().to_owned(),
                vtep_mac: p.vtep_mac.to_string(),
                tx_packets: c.tx_packets.load(Relaxed),
                tx_bytes: c.tx_bytes.load(Relaxed),
                rx_packets: c.rx_packets.load(Relaxed),
                rx_bytes: c.rx_bytes.load(Relaxed),
                drops: c.drops.load(Relaxed),
                name: p.name,
                underlay: p.underlay,
                pod_subnet: p.pod_subnet,
            }
        })
        .collect();
    Ok(api::Peers {
        peers,
        drops: drops_map(shared),
    })
}

async fn routes(shared: &Shared) -> Result<api::Routes> {
    let links = shared.nl.links().await?;
    let name_of = |index: Option<u32>| {
        index
            .and_then(|i| links.iter().find(|l| l.index == i))
            .map(|l| l.name.clone())
    };
    let routes = shared
        .nl
        .owned_routes()
        .await?
        .into_iter()
        .map(|r: KernelRoute| RouteReport {
            dst: r.dst,
            kind: match r.kind {
                RouteKind::Unicast => "unicast".into(),
                RouteKind::Blackhole => "blackhole".into(),
            },
            via: r.gateway,
            dev: name_of(r.oif),
            src: r.pref_src,
        })
        .collect();
    Ok(api::Routes { routes })
}
