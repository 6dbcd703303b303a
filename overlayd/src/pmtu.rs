//! Path MTU in the shell: feeds `overlayd_proto::dataplane::pmtu::PathMtus` with what
//! the kernel and the peers say, sends its probes, answers the peers' probes, and wakes
//! the control loop when a peer's route must carry another `mtu`.
//!
//! ICMP reaches us through `IP_RECVERR` on the tunnel's own UDP socket (no raw socket):
//! the kernel matches "fragmentation needed" to the socket whose datagram it quotes and
//! queues it on the socket's error queue with the MTU and the datagram's destination (the
//! peer). A send larger than our own device queues a local `EMSGSIZE` the same way. The
//! socket keeps quinn-udp's `IP_PMTUDISC_PROBE` (DF set, the kernel's cached PMTU not
//! enforced): under `IP_PMTUDISC_DO` an oversized GSO send fails with EINVAL, after
//! which quinn-udp stops using GSO for good; the route's `mtu` keeps packets in size
//! instead.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, setsockopt, sockopt};
use overlayd_proto::dataplane::pmtu::{PathMtu, PathMtus, PmtuConfig};
use overlayd_proto::wire::probe::{MIN_SIZE, ProbeMessage};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};

/// Probes and acks the data path received, waiting for the path-MTU task.
const INBOX: usize = 256;
/// How often the error queue is read even without a wake-up, in case one was missed.
const ERROR_SWEEP: Duration = Duration::from_secs(1);

/// Probes and acks handed over by the UDP receive loop. A full inbox drops (counted):
/// probes are retried, and the hot path never waits.
pub struct ProbeInbox {
    tx: mpsc::Sender<(Ipv4Addr, ProbeMessage)>,
    rx: Mutex<Option<mpsc::Receiver<(Ipv4Addr, ProbeMessage)>>>,
    pub dropped: AtomicU64,
}

impl Default for ProbeInbox {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(INBOX);
        ProbeInbox {
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
        }
    }
}

impl ProbeInbox {
    pub fn deliver(&self, from: Ipv4Addr, msg: ProbeMessage) {
        if self.tx.try_send((from, msg)).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    fn take(&self) -> Option<mpsc::Receiver<(Ipv4Addr, ProbeMessage)>> {
        self.rx.lock().ok()?.take()
    }
}

/// Path-MTU counters (`overlayd status` io map).
#[derive(Debug, Default)]
pub struct PmtuCounters {
    pub too_big: AtomicU64,
    pub probes_sent: AtomicU64,
    pub acks_sent: AtomicU64,
    pub acks_received: AtomicU64,
    pub send_errors: AtomicU64,
}

/// Shared between the path-MTU task, the control loop and the API.
pub struct PathMtuHandle {
    machine: Mutex<PathMtus>,
    /// Wakes the path-MTU task: peers or ceiling changed, probes are queued.
    wake: Notify,
    /// Wakes the control loop: some peer's route needs another `mtu`.
    pub routes_changed: Notify,
    pub counters: PmtuCounters,
}

impl PathMtuHandle {
    /// `ceiling`: the underlay device's MTU.
    pub fn new(ceiling: u32) -> Self {
        PathMtuHandle {
            machine: Mutex::new(PathMtus::new(PmtuConfig::default(), clamp_u16(ceiling))),
            wake: Notify::new(),
            routes_changed: Notify::new(),
            counters: PmtuCounters::default(),
        }
    }

    fn machine(&self) -> std::sync::MutexGuard<'_, PathMtus> {
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tunnel peers and the underlay device's MTU now; returns the `mtu` each peer's
    /// route must carry (by underlay address; absent: none).
    pub fn update(
        &self,
        tunnel_peers: &[Ipv4Addr],
        ceiling: u32,
        tunnel_mtu: u32,
    ) -> std::collections::BTreeMap<Ipv4Addr, u32> {
        let now = Instant::now();
        let routes = {
            let mut m = self.machine();
            m.set_ceiling(now, clamp_u16(ceiling));
            m.set_peers(now, tunnel_peers);
            m.route_mtus(tunnel_mtu)
        };
        self.wake.notify_one();
        routes
    }

    pub fn path_mtu(&self, peer: Ipv4Addr) -> Option<PathMtu> {
        self.machine().path_mtu(peer)
    }

    pub fn to_map(&self) -> std::collections::BTreeMap<String, u64> {
        let c = &self.counters;
        [
            ("pmtu_too_big", &c.too_big),
            ("pmtu_probes_sent", &c.probes_sent),
            ("pmtu_acks_sent", &c.acks_sent),
            ("pmtu_acks_received", &c.acks_received),
            ("pmtu_send_errors", &c.send_errors),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.load(Relaxed)))
        .collect()
    }
}

fn clamp_u16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// Turns on `IP_RECVERR` on the tunnel socket, so ICMP errors for what it sent are
/// queued for [`run`] to read.
pub fn enable_icmp_errors(sock: &UdpSocket) -> Result<()> {
    setsockopt(sock, sockopt::Ipv4RecvErr, &true)
        .context("enabling IP_RECVERR on the tunnel's UDP socket")
}

/// Whether a receive or send error on the tunnel socket is an ICMP error the kernel
/// reported once (with `IP_RECVERR` every one is), not a failure of the socket: the
/// loops count it and carry on; its details are on the error queue.
pub fn is_icmp_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMSGSIZE
                | libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::ENETDOWN
                | libc::EPROTO
                | libc::ENOPROTOOPT
        )
    )
}

/// The path-MTU task: until the socket fails.
pub async fn run(
    pm: Arc<PathMtuHandle>,
    dp: Arc<crate::datapath::Datapath>,
    paths: Arc<crate::paths::PathsHandle>,
    sock: Arc<UdpSocket>,
    port: u16,
) -> Result<()> {
    let mut inbox = dp
        .probes
        .take()
        .context("the probe inbox was handed out twice")?;
    let mut buf = vec![0u8; 65_536];
    // The error queue's control messages: the extended error with the offender, and
    // whatever quinn-udp asked for on receipt (packet info, TOS, GRO), all copied.
    let mut cmsg = vec![0u8; 1024];
    loop {
        let mut changed = false;
        let deadline = pm.machine().poll_timeout();
        let sleep_for = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(ERROR_SWEEP)
            .min(ERROR_SWEEP);
        tokio::select! {
            _ = sock.ready(Interest::ERROR) => {}
            received = inbox.recv() => {
                let Some((from, msg)) = received else { return Ok(()) };
                match msg {
                    ProbeMessage::Probe { .. } => {
                        if let Some(ack) = msg.ack() {
                            send(&pm, &sock, &mut buf, from, port, ack).await;
                            pm.counters.acks_sent.fetch_add(1, Relaxed);
                        }
                    }
                    // The path ladder's probes are the smallest there are; path-MTU ones
                    // never are (they start at the floor).
                    ProbeMessage::Ack { size, .. } if size == MIN_SIZE => {
                        paths.deliver(crate::paths::Via::Tunnel(from), msg);
                    }
                    ProbeMessage::Ack { id, size } => {
                        pm.counters.acks_received.fetch_add(1, Relaxed);
                        changed |= pm.machine().handle_ack(Instant::now(), from, id, size);
                    }
                }
            }
            _ = tokio::time::sleep(sleep_for) => {}
            _ = pm.wake.notified() => {}
        }
        for (peer, mtu) in read_errors(&sock, port, &mut cmsg) {
            pm.counters.too_big.fetch_add(1, Relaxed);
            let lowered = pm.machine().handle_too_big(Instant::now(), peer, mtu);
            if lowered {
                tracing::info!(%peer, mtu, "path MTU lowered by ICMP fragmentation needed");
            }
            changed |= lowered;
        }
        let transmits: Vec<_> = {
            let mut m = pm.machine();
            changed |= !m.handle_timeout(Instant::now()).is_empty();
            std::iter::from_fn(|| m.poll_transmit()).collect()
        };
        for t in transmits {
            send(&pm, &sock, &mut buf, t.dst, port, t.probe).await;
            pm.counters.probes_sent.fetch_add(1, Relaxed);
        }
        if changed {
            pm.routes_changed.notify_one();
        }
    }
}

/// Sends one datagram on the tunnel socket; a send failed by an ICMP error for an
/// earlier datagram (which sent nothing) is tried once more.
pub async fn send_to(sock: &UdpSocket, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
    match sock.send_to(datagram, to).await {
        Err(e) if is_icmp_error(&e) => sock.send_to(datagram, to).await,
        sent => sent,
    }
}

async fn send(
    pm: &PathMtuHandle,
    sock: &UdpSocket,
    buf: &mut [u8],
    dst: Ipv4Addr,
    port: u16,
    msg: ProbeMessage,
) {
    let len = msg.emit(buf);
    if let Err(e) = send_to(sock, &buf[..len], SocketAddr::from((dst, port))).await {
        // A probe larger than our device, or an ICMP error reported on both sends.
        tracing::debug!(%dst, "sending {msg:?}: {e}");
        pm.counters.send_errors.fetch_add(1, Relaxed);
    }
}

/// Drains the socket's error queue: the (peer, MTU) of every "fragmentation needed" (and
/// local EMSGSIZE) for a datagram we sent to a tunnel port. Other errors are dropped.
fn read_errors(sock: &UdpSocket, port: u16, cmsg: &mut [u8]) -> Vec<(Ipv4Addr, u32)> {
    // Clear tokio's error readiness first, then read until empty: an error queued after
    // the clear wakes the task again, so none waits for the sweep.
    let _ = sock.try_io(Interest::ERROR, || {
        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
    });
    let mut found = Vec::new();
    loop {
        match read_error(sock, cmsg) {
            Ok(Some((peer, dst_port, mtu))) if dst_port.is_none_or(|p| p == port) => {
                found.push((peer, mtu))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return found,
            Err(e) => {
                // The entry is gone either way; ICMP is only a hint, probes still run.
                tracing::debug!("reading the tunnel socket's error queue: {e}");
            }
        }
    }
}

/// One entry of the error queue: `Some((destination, its port, MTU))` for a too-big
/// error, `None` for any other; `WouldBlock` when the queue is empty. The port is known
/// only for ICMP (quoted from our datagram); a local EMSGSIZE names the socket's
/// connected port, which an unconnected socket has none of.
type TooBig = (Ipv4Addr, Option<u16>, u32);

fn read_error(sock: &UdpSocket, cmsg: &mut [u8]) -> io::Result<Option<TooBig>> {
    // The queued datagram itself is not needed: one byte, the rest is truncated.
    let mut data = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut data)];
    let msg = recvmsg::<SockaddrIn>(
        sock.as_raw_fd(),
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let Some(dst) = msg.address else {
        return Ok(None);
    };
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::Ipv4RecvErr(ee, _offender) = c {
            match ee.ee_origin {
                libc::SO_EE_ORIGIN_ICMP if ee.ee_type == 3 && ee.ee_code == 4 => {
                    return Ok(Some((dst.ip(), Some(dst.port()), ee.ee_info)));
                }
                libc::SO_EE_ORIGIN_LOCAL if ee.ee_errno == libc::EMSGSIZE as u32 => {
                    return Ok(Some((dst.ip(), None, ee.ee_info)));
                }
                _ => {}
            }
        }
    }
    Ok(None)
}
