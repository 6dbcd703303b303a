//! The control socket: one JSON request per connection line, answered from the daemon's
//! shared state.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow, bail};
use overlayd_proto::routing::{KernelRoute, PeerPath, RouteKind};
use overlayd_proto::service::ServiceKey;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Shared;
use crate::api::{self, KeyAction, PeerReport, Request, Response, RouteReport};
use crate::gossip::KeyOp;

pub(super) fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket file left by a daemon that died; if a live daemon owned it, connecting works.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another overlayd is already serving {}", path.display());
    }
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    // The API adds pods and reads key files: root only, whatever the umask.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

pub(super) async fn serve(shared: Arc<Shared>, listener: UnixListener) -> Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: the daemon carries on, the API waits.
                tracing::warn!("accepting on the control socket: {e}");
                tokio::time::sleep(crate::gossip::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, read_request(stream)).await {
                Ok(Ok((line, write))) => {
                    if let Err(e) = answer(&shared, line, write).await {
                        tracing::debug!("control connection: {e:#}");
                    }
                }
                Ok(Err(e)) => tracing::debug!("control connection: {e:#}"),
                Err(_) => {
                    tracing::debug!("control connection sent no request within {REQUEST_TIMEOUT:?}")
                }
            }
        });
    }
}

/// How long a client has to send its request line, and to read the response.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads one request line (at most [`api::MAX_REQUEST`] bytes, plus one to tell).
async fn read_request(stream: UnixStream) -> Result<(String, tokio::net::unix::OwnedWriteHalf)> {
    let (read, write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read)
        .take(api::MAX_REQUEST as u64 + 1)
        .read_line(&mut line)
        .await?;
    Ok((line, write))
}

async fn answer(
    shared: &Shared,
    line: String,
    mut write: tokio::net::unix::OwnedWriteHalf,
) -> Result<()> {
    let mut hand_over = false;
    let response = if line.len() > api::MAX_REQUEST {
        error_response(anyhow!("request longer than {} bytes", api::MAX_REQUEST))
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                hand_over = matches!(req, Request::HandOver);
                match dispatch(shared, req).await {
                    Ok(value) => Response {
                        ok: true,
                        result: Some(value),
                        error: None,
                    },
                    Err(e) => {
                        hand_over = false;
                        error_response(e)
                    }
                }
            }
            Err(e) => error_response(anyhow!("bad request: {e}")),
        }
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    // A client that stops reading must not hold its task (and the response) forever.
    tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(&out))
        .await
        .map_err(|_| anyhow!("the client read no response within {REQUEST_TIMEOUT:?}"))??;
    // Only once the new process has its answer: stopping first could cut it off.
    if hand_over {
        shared.hand_over.notify_one();
    }
    Ok(())
}

fn error_response(e: anyhow::Error) -> Response {
    Response {
        ok: false,
        result: None,
        error: Some(crate::error_text(&e)),
    }
}

async fn dispatch(shared: &Shared, req: Request) -> Result<serde_json::Value> {
    Ok(match req {
        Request::Status => serde_json::to_value(status(shared).await)?,
        Request::Peers => serde_json::to_value(peers(shared)?)?,
        Request::Routes => serde_json::to_value(routes(shared).await?)?,
        Request::PodAdd {
            name,
            ip,
            netns,
            labels,
        } => {
            let mut pods = shared.pods.lock().await;
            let record = pods
                .add(&shared.nl, &name, ip, netns.as_deref(), labels)
                .await?;
            shared.publish_pods(&pods);
            tracing::info!(pod = %record.name, ip = %record.ip, netns = %record.netns.display(), "pod added");
            serde_json::to_value(record)?
        }
        Request::PodDel { name } => {
            let mut pods = shared.pods.lock().await;
            let record = pods.del(&shared.nl, &name).await;
            shared.publish_pods(&pods);
            let record = record?;
            tracing::info!(pod = %record.name, ip = %record.ip, "pod deleted");
            serde_json::to_value(record)?
        }
        Request::PodList => serde_json::to_value(api::PodList {
            pods: shared.pods.lock().await.list(),
        })?,
        Request::ServiceAdd { spec } => serde_json::to_value(shared.services.put(spec).await?)?,
        Request::ServiceApply { specs } => serde_json::to_value(api::ServiceList {
            services: shared.services.apply(specs).await?,
        })?,
        Request::ServiceDel { namespace, name } => serde_json::to_value(
            shared
                .services
                .delete(ServiceKey::new(namespace, name))
                .await?,
        )?,
        Request::ServiceGet { namespace, name } => serde_json::to_value(
            shared
                .services
                .get(ServiceKey::new(namespace, name))
                .await?,
        )?,
        Request::ServiceList => serde_json::to_value(api::ServiceList {
            services: shared.services.list().await?,
        })?,
        Request::Services => serde_json::to_value(super::serving::report(shared))?,
        Request::HandOver => {
            let peers = super::carried_peers(shared);
            tracing::info!("hand-over requested: stopping once answered; the data path stays");
            serde_json::to_value(api::HandOver {
                pid: std::process::id(),
                peers,
            })?
        }
        Request::Leave => {
            tracing::info!("leave requested: announcing it and removing the data path");
            shared.leave.notify_one();
            serde_json::json!({ "leaving": shared.cfg.node.name })
        }
        Request::Members => {
            let members = gossip(shared)?.members().await?;
            serde_json::to_value(api::Members { members })?
        }
        Request::Key { action, file } => {
            let key = || -> Result<_> {
                let file = file
                    .as_ref()
                    .ok_or_else(|| anyhow!("this key action needs a key file"))?;
                crate::keys::load(file)
            };
            let op = match action {
                KeyAction::List => KeyOp::List,
                KeyAction::Install => KeyOp::Install(key()?),
                KeyAction::Use => KeyOp::Use(key()?),
                KeyAction::Remove => KeyOp::Remove(key()?),
            };
            let keys = gossip(shared)?.keys(op).await?;
            tracing::info!(?action, keys = ?keys, "gossip keyring changed (primary first)");
            serde_json::to_value(api::Keys { keys })?
        }
        Request::CertRevoke { fingerprint } => {
            let fingerprint: overlayd_proto::pki::Fingerprint = fingerprint.parse()?;
            let handle = shared.gossip.as_ref().ok_or_else(|| {
                anyhow!(
                    "this node runs without [gossip]: a revocation lives in gossip state \
                     (ask a node with [gossip])"
                )
            })?;
            let at_ms = crate::gossip::wall_clock_ms();
            handle
                .revoke(overlayd_proto::pki::Revocation {
                    fingerprint,
                    by: shared.cfg.node.name.clone(),
                    at_ms,
                })
                .await?;
            tracing::warn!(%fingerprint, "revocation published");
            // The local list follows the object at once (the gossip task applied it).
            let mut rx = handle.revoked();
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                rx.wait_for(|r| r.contains_key(&fingerprint)),
            )
            .await;
            serde_json::to_value(revocations(shared))?
        }
        Request::CertRevoked => serde_json::to_value(revocations(shared))?,
    })
}

fn revocations(shared: &Shared) -> api::Revocations {
    api::Revocations {
        revoked: shared
            .gossip
            .as_ref()
            .map(|g| g.revoked().borrow().values().cloned().collect())
            .unwrap_or_default(),
    }
}

fn gossip(shared: &Shared) -> Result<&crate::gossip::GossipHandle> {
    match &shared.gossip {
        Some(handle) => Ok(handle),
        None => bail!("this node runs without [gossip]: there are no members or keys"),
    }
}

async fn status(shared: &Shared) -> api::Status {
    let l = &shared.local;
    let subnet = shared.subnet();
    let gossip = match &shared.gossip {
        Some(handle) => handle.report().await.ok(),
        None => None,
    };
    api::Status {
        io: {
            let mut io = shared.dp.io.to_map();
            io.extend(shared.pmtu.to_map());
            io.insert(
                "pmtu_inbox_dropped".to_owned(),
                shared.dp.probes.dropped.load(Ordering::Relaxed),
            );
            if let Some(g) = &shared.gossip {
                io.insert(
                    "pki_revoked_certificates".to_owned(),
                    g.revoked().borrow().len() as u64,
                );
            }
            if let Some(quic) = &shared.quic {
                io.extend(
                    quic.to_map()
                        .into_iter()
                        .map(|(k, v)| (format!("quic_{k}"), v)),
                );
            }
            io
        },
        gossip,
        node: l.name.clone(),
        ready: shared.ready.load(Ordering::Relaxed),
        underlay_interface: l.underlay.name.clone(),
        underlay: l.underlay_addr,
        pod_subnet: subnet.net,
        gateway: subnet.gateway,
        vtep_mac: l.vtep_mac.to_string(),
        tunnel_port: shared.cfg.tunnel.port,
        vni: shared.cfg.tunnel.vni,
        tunnel_mtu: l.tunnel_mtu,
        pod_mtu: l.pod_mtu,
        peers: shared.peers.lock().map(|p| p.admitted.len()).unwrap_or(0),
        pods: shared.pods.lock().await.len(),
        services: shared.services.table().borrow().len(),
        dns: shared
            .dns
            .as_ref()
            .map(|d| d.counters())
            .unwrap_or_default(),
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

fn ladder_report(l: &overlayd_proto::path::LadderStatus) -> api::LadderReport {
    api::LadderReport {
        reason: l.reason.as_str().to_owned(),
        on_path_ms: l.on_path_for.as_millis() as u64,
        switches: l.switches,
        relay: l.relay.clone(),
        rungs: l
            .rungs
            .iter()
            .map(|r| api::RungReport {
                path: r.path.as_str().to_owned(),
                health: match r.health {
                    overlayd_proto::path::Health::Up => "up",
                    overlayd_proto::path::Health::Down => "down",
                    overlayd_proto::path::Health::Unknown => "unknown",
                }
                .to_owned(),
                rtt_us: r.rtt.map(|d| d.as_micros() as u64),
                loss_percent: (r.loss * 100.0).round() as u32,
            })
            .collect(),
    }
}

fn quic_report(s: &crate::quic::PeerStatus) -> api::QuicReport {
    api::QuicReport {
        state: s.state.as_str().to_owned(),
        rtt_us: s.rtt.map(|d| d.as_micros() as u64),
        max_datagram: s.max_datagram_size.map(|n| n as u32),
        cert_not_after: s
            .cert_not_after
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
        reconnects: s.reconnects,
        last_error: s.last_error.clone(),
        cert_fingerprint: s.cert_fingerprint.clone(),
    }
}

fn peers(shared: &Shared) -> Result<api::Peers> {
    use std::sync::atomic::Ordering::Relaxed;
    let state = shared
        .peers
        .lock()
        .map_err(|_| anyhow!("peer list lock poisoned"))?;
    let quic: std::collections::BTreeMap<String, crate::quic::PeerStatus> = shared
        .quic
        .as_ref()
        .map(|q| {
            q.status()
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect()
        })
        .unwrap_or_default();
    let ladders = shared.paths.status();
    let peers = state
        .admitted
        .iter()
        .map(|a| {
            let p = &a.peer;
            let c = shared.dp.counters_of(&p.name);
            // A relayed peer's frames go over the udp path to its relay.
            let mtu = match a.path {
                PeerPath::Udp => shared.pmtu.path_mtu(p.underlay),
                PeerPath::Relay => ladders
                    .get(&p.name)
                    .and_then(|l| l.relay.as_deref())
                    .and_then(|r| state.admitted.iter().find(|x| x.peer.name == r))
                    .and_then(|r| shared.pmtu.path_mtu(r.peer.underlay)),
                PeerPath::HostGw | PeerPath::Quic => None,
            };
            PeerReport {
                name: p.name.clone(),
                underlay: p.underlay,
                pod_subnet: p.pod_subnet,
                path: a.path.as_str().to_owned(),
                route_error: a.route_error.clone(),
                vtep_mac: p.vtep_mac.to_string(),
                path_mtu: mtu.map(|m| u32::from(m.outer)),
                inner_mtu: mtu.map(|m| u32::from(m.inner)),
                path_mtu_source: mtu.map(|m| m.source.as_str().to_owned()),
                tx_packets: c.tx_packets.load(Relaxed),
                tx_bytes: c.tx_bytes.load(Relaxed),
                rx_packets: c.rx_packets.load(Relaxed),
                rx_bytes: c.rx_bytes.load(Relaxed),
                drops: c.drops.load(Relaxed),
                quic: quic.get(&p.name).map(quic_report),
                ladder: ladders.get(&p.name).map(ladder_report),
                daemon_down: shared
                    .gossip
                    .as_ref()
                    .is_some_and(|g| g.daemon_down(&p.name)),
                cert_fingerprint: p.cert_fingerprint.map(|f| f.to_string()),
            }
        })
        .collect();
    let rejected = state
        .rejected
        .iter()
        .map(|r| api::RejectedPeer {
            name: r.peer.name.clone(),
            underlay: r.peer.underlay,
            pod_subnet: r.peer.pod_subnet,
            reason: r.reason.to_string(),
        })
        .collect();
    Ok(api::Peers {
        peers,
        rejected,
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
                RouteKind::Local => "local".into(),
            },
            via: r.gateway,
            dev: name_of(r.oif),
            src: r.pref_src,
        })
        .collect();
    Ok(api::Routes { routes })
}
