//! The path ladder in the shell: feeds `overlayd_proto::path::PathLadders` with the peers'
//! allowed paths and the acks of its probes, sends the probes, and wakes the control loop
//! when a peer's chosen path changes (the control loop then moves its route and its
//! forwarding entry).
//!
//! Probes are the tunnel port's smallest probe message ([`Probe::message`]): on the
//! host-gw and udp rungs to the peer's underlay address and tunnel port (both rungs send
//! the same datagram; [`Ladder::awaited`] tells whose an ack is), so a firewall between
//! two on-link nodes is noticed; on the quic rung the same bytes as a datagram on the QUIC
//! connection. Every node answers probes on both (the path-MTU task answers the tunnel
//! port's; [`run`] answers QUIC's). On the relay rung the same bytes go in a VXLAN frame
//! from our VTEP MAC to the peer's, EtherType `ETHERTYPE_RELAY_PROBE`, sent to the
//! pair's relay, which forwards it; the peer's receive loop answers it the same way back,
//! so an ack proves the whole relayed path, both hops and both directions.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use overlayd_proto::path::{
    LadderConfig, LadderStatus, PathKind, PathLadders, Probe, ProbeId, Switch,
};
use overlayd_proto::wire::probe::{MIN_SIZE, ProbeMessage};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};

use crate::quic::QuicTransport;

/// Acks waiting for the ladder task; a full inbox drops (counted), probes are retried.
const INBOX: usize = 1024;

/// Where an ack (or a probe) came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The tunnel port, from this underlay address (host-gw and udp rungs).
    Tunnel(Ipv4Addr),
    /// A datagram on the QUIC connection of this member.
    Quic(Arc<str>),
    /// A relay-rung frame from this member, through its relay.
    Relay(Arc<str>),
}

/// One peer as the ladder needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LadderPeer {
    pub name: String,
    pub underlay: Ipv4Addr,
    /// The allowed rungs this node carries, in ladder order.
    pub candidates: Vec<PathKind>,
    /// The member relaying for the pair ([`overlayd_proto::path::relay_plan`]); `None`
    /// leaves the relay rung unusable.
    pub relay: Option<String>,
}

/// Ladder counters (`overlayd status` io map).
#[derive(Debug, Default)]
pub struct LadderCounters {
    pub probes_sent: AtomicU64,
    pub acks_received: AtomicU64,
    pub acks_sent: AtomicU64,
    pub switches: AtomicU64,
    pub inbox_dropped: AtomicU64,
    pub send_errors: AtomicU64,
}

/// Shared between the ladder task, the control loop, the data path and the API.
pub struct PathsHandle {
    ladders: Mutex<PathLadders>,
    by_underlay: Mutex<BTreeMap<Ipv4Addr, String>>,
    underlay_of: Mutex<BTreeMap<String, Ipv4Addr>>,
    wake: Notify,
    /// Wakes the control loop: some peer's chosen path changed.
    pub changed: Notify,
    tx: mpsc::Sender<(Via, ProbeMessage)>,
    rx: Mutex<Option<mpsc::Receiver<(Via, ProbeMessage)>>>,
    pub counters: LadderCounters,
}

impl Default for PathsHandle {
    fn default() -> Self {
        PathsHandle::new(LadderConfig::default())
    }
}

impl PathsHandle {
    pub fn new(config: LadderConfig) -> Self {
        let (tx, rx) = mpsc::channel(INBOX);
        PathsHandle {
            ladders: Mutex::new(PathLadders::new(config)),
            by_underlay: Mutex::new(BTreeMap::new()),
            underlay_of: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            changed: Notify::new(),
            tx,
            rx: Mutex::new(Some(rx)),
            counters: LadderCounters::default(),
        }
    }

    fn ladders(&self) -> std::sync::MutexGuard<'_, PathLadders> {
        self.ladders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The peers now; returns each one's chosen rung (`None`: none chosen, nothing
    /// carried). A new peer's first choice is the policy's first candidate, at once.
    pub fn set_peers(&self, peers: &[LadderPeer]) -> BTreeMap<String, Option<PathKind>> {
        let now = Instant::now();
        let list: Vec<(&str, &[PathKind])> = peers
            .iter()
            .map(|p| (p.name.as_str(), p.candidates.as_slice()))
            .collect();
        let chosen = {
            let mut l = self.ladders();
            l.set_peers(now, &list);
            for p in peers {
                l.set_relay(now, &p.name, p.relay.as_deref());
            }
            peers
                .iter()
                .map(|p| (p.name.clone(), l.ladder(&p.name).and_then(|x| x.chosen())))
                .collect()
        };
        *self.by_underlay.lock().unwrap_or_else(|e| e.into_inner()) =
            peers.iter().map(|p| (p.underlay, p.name.clone())).collect();
        *self.underlay_of.lock().unwrap_or_else(|e| e.into_inner()) =
            peers.iter().map(|p| (p.name.clone(), p.underlay)).collect();
        self.wake.notify_one();
        chosen
    }

    /// A probe or ack for the ladder task (from the path-MTU task or the QUIC receive
    /// loop); never waits.
    pub fn deliver(&self, via: Via, msg: ProbeMessage) {
        if self.tx.try_send((via, msg)).is_err() {
            self.counters.inbox_dropped.fetch_add(1, Relaxed);
        }
    }

    /// Every peer's ladder for `overlayd peers`.
    pub fn status(&self) -> BTreeMap<String, LadderStatus> {
        self.ladders().status(Instant::now())
    }

    pub fn to_map(&self) -> BTreeMap<String, u64> {
        let c = &self.counters;
        [
            ("ladder_probes_sent", &c.probes_sent),
            ("ladder_acks_received", &c.acks_received),
            ("ladder_acks_sent", &c.acks_sent),
            ("ladder_switches", &c.switches),
            ("ladder_inbox_dropped", &c.inbox_dropped),
            ("ladder_send_errors", &c.send_errors),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.load(Relaxed)))
        .collect()
    }

    /// Feeds one ack: on the tunnel port it belongs to whichever of the sender's rungs
    /// awaits it (host-gw and udp send the same probe).
    fn handle_ack(&self, now: Instant, via: &Via, id: u32) {
        let id = ProbeId(id);
        let name = match via {
            Via::Tunnel(addr) => {
                let names = self.by_underlay.lock().unwrap_or_else(|e| e.into_inner());
                let Some(name) = names.get(addr) else {
                    return;
                };
                name.clone()
            }
            Via::Quic(name) | Via::Relay(name) => name.to_string(),
        };
        let mut l = self.ladders();
        let path = match via {
            Via::Tunnel(_) => l.ladder(&name).and_then(|x| x.awaited(id)),
            Via::Quic(_) => Some(PathKind::Quic),
            Via::Relay(_) => Some(PathKind::Relay),
        };
        if let Some(path) = path
            && l.handle_ack(now, &name, path, id)
        {
            self.counters.acks_received.fetch_add(1, Relaxed);
        }
    }
}

/// The ladder task: until the socket fails.
pub async fn run(
    paths: Arc<PathsHandle>,
    dp: Arc<crate::datapath::Datapath>,
    sock: Arc<UdpSocket>,
    port: u16,
    quic: Option<Arc<QuicTransport>>,
) -> Result<()> {
    let mut inbox = paths
        .rx
        .lock()
        .ok()
        .and_then(|mut rx| rx.take())
        .context("the ladder inbox was handed out twice")?;
    let mut buf = [0u8; 128];
    loop {
        let sleep_for = paths
            .ladders()
            .poll_timeout()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1));
        tokio::select! {
            received = inbox.recv() => {
                let Some((via, msg)) = received else { return Ok(()) };
                match msg {
                    ProbeMessage::Ack { id, .. } => paths.handle_ack(Instant::now(), &via, id),
                    ProbeMessage::Probe { .. } => {
                        // Only QUIC's come here: the path-MTU task answers the tunnel port's.
                        if let (Via::Quic(name), Some(quic), Some(ack)) = (&via, &quic, msg.ack()) {
                            let len = ack.emit(&mut buf);
                            if quic.send(name, &buf[..len]).is_ok() {
                                paths.counters.acks_sent.fetch_add(1, Relaxed);
                            }
                        }
                    }
                }
            }
            _ = tokio::time::sleep(sleep_for) => {}
            _ = paths.wake.notified() => {}
        }
        let (probes, switches) = {
            let mut l = paths.ladders();
            l.handle_timeout(Instant::now());
            let probes: Vec<(String, Probe)> =
                std::iter::from_fn(|| l.poll_probe().map(|(n, p)| (n.to_owned(), p))).collect();
            let switches: Vec<(String, Switch)> =
                std::iter::from_fn(|| l.poll_switch().map(|(n, s)| (n.to_owned(), s))).collect();
            (probes, switches)
        };
        for (name, probe) in probes {
            send_probe(
                &paths,
                &dp,
                &sock,
                port,
                quic.as_deref(),
                &name,
                probe,
                &mut buf,
            )
            .await;
        }
        let mut moved = false;
        for (name, s) in switches {
            // The first choice is the policy's and already in place.
            if let Some(from) = s.from {
                paths.counters.switches.fetch_add(1, Relaxed);
                tracing::info!(
                    peer = %name, from = from.as_str(),
                    to = s.to.map_or("none", PathKind::as_str), reason = s.reason.as_str(),
                    "path switch"
                );
                moved = true;
            }
        }
        if moved {
            paths.changed.notify_one();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn send_probe(
    paths: &PathsHandle,
    dp: &crate::datapath::Datapath,
    sock: &UdpSocket,
    port: u16,
    quic: Option<&QuicTransport>,
    name: &str,
    probe: Probe,
    buf: &mut [u8],
) {
    let msg = probe.message();
    debug_assert!(matches!(msg, ProbeMessage::Probe { size, .. } if size == MIN_SIZE));
    let len = msg.emit(buf);
    let sent = match probe.path {
        PathKind::HostGw | PathKind::Udp => {
            let underlay = paths
                .underlay_of
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .copied();
            match underlay {
                Some(addr) => {
                    crate::pmtu::send_to(sock, &buf[..len], SocketAddr::from((addr, port)))
                        .await
                        .is_ok()
                }
                None => false,
            }
        }
        // Without a connection the send fails: the probe is lost, as the rung is.
        PathKind::Quic => quic.is_some_and(|q| q.send(name, &buf[..len]).is_ok()),
        // Through the relay the forwarding table names (set with the ladder's relay):
        // the frame replaces the bare message in `buf`.
        PathKind::Relay => match dp.relay_probe(name, msg, buf) {
            Some((relay, len)) => {
                crate::pmtu::send_to(sock, &buf[..len], SocketAddr::from((relay, port)))
                    .await
                    .is_ok()
            }
            None => false,
        },
    };
    if sent {
        paths.counters.probes_sent.fetch_add(1, Relaxed);
    } else {
        paths.counters.send_errors.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, last: u8, candidates: &[PathKind]) -> LadderPeer {
        LadderPeer {
            name: name.into(),
            underlay: Ipv4Addr::new(10, 100, 1, last),
            candidates: candidates.to_vec(),
            relay: None,
        }
    }

    /// Acks reach the rung that awaits them: on the tunnel port by the sender's underlay
    /// address (host-gw and udp share the probe), on QUIC by the member name; strangers'
    /// and unawaited acks count for nothing.
    #[test]
    fn acks_find_their_peer_and_rung() {
        let paths = PathsHandle::default();
        let chosen = paths.set_peers(&[
            peer("n2", 12, &[PathKind::HostGw, PathKind::Udp]),
            peer("n3", 13, &[PathKind::Quic]),
        ]);
        assert_eq!(
            chosen["n2"],
            Some(PathKind::HostGw),
            "the policy's first, at once"
        );
        assert_eq!(chosen["n3"], Some(PathKind::Quic));
        let probes: Vec<(String, Probe)> = {
            let mut l = paths.ladders();
            std::iter::from_fn(|| l.poll_probe().map(|(n, p)| (n.to_owned(), p))).collect()
        };
        let now = Instant::now();
        for (name, probe) in &probes {
            let via = match probe.path {
                PathKind::Quic => Via::Quic(Arc::from(name.as_str())),
                _ => Via::Tunnel(paths.underlay_of.lock().unwrap()[name]),
            };
            paths.handle_ack(now, &via, probe.id.0);
        }
        assert_eq!(
            paths.counters.acks_received.load(Relaxed),
            probes.len() as u64
        );
        assert_eq!(
            probes.len(),
            3,
            "host-gw, udp and quic each probed: {probes:?}"
        );
        // Again: no longer awaited. From an unknown address or member: nothing.
        let (_, first) = &probes[0];
        paths.handle_ack(now, &Via::Tunnel(Ipv4Addr::new(10, 100, 1, 12)), first.id.0);
        paths.handle_ack(now, &Via::Tunnel(Ipv4Addr::new(10, 100, 1, 99)), first.id.0);
        paths.handle_ack(now, &Via::Quic(Arc::from("n9")), first.id.0);
        assert_eq!(paths.counters.acks_received.load(Relaxed), 3);
    }
}
