//! UDP frontends: one socket per frontend; per client address a flow with its own
//! connected socket to the chosen backend. Datagrams from the client go out on the flow's
//! socket; replies come back on it and are sent to the client from the frontend socket,
//! so the client sees them from the address it sent to.
//!
//! Flows live in a [`FlowTable`] (proto): they end when idle, when the table is full (the
//! least recently used), and at once when their backend leaves the Service or goes down
//! (`Inner::prune_udp_flows`), so the next datagram picks again.
//!
//! Datagrams are received into a buffer on the stack of a synchronous function, after the
//! socket reports readable: no buffer per flow, no allocation per datagram.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use overlayd_proto::service::flows::FlowTable;
use overlayd_proto::service::frontend::FrontendAddr;
use overlayd_proto::service::health::{BackendKey, Outcome};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use super::{ActiveGuard, BackendCounters, Inner, lock};

/// Largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;
/// Datagrams handled per wake-up before yielding to other tasks.
const BATCH: usize = 64;
/// How often idle flows are swept.
const SWEEP: Duration = Duration::from_secs(1);

/// What the send and reply paths of a flow share.
struct FlowIo {
    sock: UdpSocket,
    backend: BackendKey,
    counters: Arc<BackendCounters>,
}

/// A flow's state in the flow table; dropping it ends the flow (its reply task, its
/// socket, its count as active).
pub(super) struct UdpFlow {
    id: u64,
    io: Arc<FlowIo>,
    reply: AbortHandle,
    _active: ActiveGuard,
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        self.reply.abort();
    }
}

pub(super) struct UdpFrontend {
    addr: FrontendAddr,
    sock: UdpSocket,
    pub(super) flows: std::sync::Mutex<FlowTable<UdpFlow>>,
    next_id: AtomicU64,
}

impl UdpFrontend {
    pub(super) fn flow_count(&self) -> usize {
        lock(&self.flows).len()
    }

    /// Ends every flow (the frontend is going away).
    pub(super) fn end_flows(&self) {
        lock(&self.flows).retain(|_| false, |_, _| {});
    }
}

/// Binds the frontend socket and starts serving it.
pub(super) fn listen(
    inner: &Arc<Inner>,
    addr: FrontendAddr,
    freebind: bool,
) -> io::Result<(AbortHandle, Arc<UdpFrontend>)> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    sock.set_reuse_address(true)?;
    if freebind {
        sock.set_freebind_v4(true)?;
    }
    // Bursts from many clients queue here while the task catches up.
    let _ = sock.set_recv_buffer_size(4 << 20);
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddr::V4(addr.addr).into())?;
    let fe = Arc::new(UdpFrontend {
        addr,
        sock: UdpSocket::from_std(sock.into())?,
        flows: std::sync::Mutex::new(FlowTable::new(inner.cfg.udp_max_flows, inner.cfg.udp_idle)),
        next_id: AtomicU64::new(0),
    });
    let task = inner.runtime.spawn(serve(inner.clone(), fe.clone()));
    Ok((task.abort_handle(), fe))
}

async fn serve(inner: Arc<Inner>, fe: Arc<UdpFrontend>) {
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = fe.sock.readable() => {
                if let Err(e) = ready {
                    tracing::warn!(frontend = %fe.addr, "UDP frontend: {e}");
                    tokio::time::sleep(SWEEP).await;
                    continue;
                }
                receive_batch(&inner, &fe);
            }
            _ = sweep.tick() => lock(&fe.flows).expire(Instant::now(), |_, _| {}),
        }
    }
}

/// Takes up to a batch of datagrams off the frontend socket and forwards each.
fn receive_batch(inner: &Arc<Inner>, fe: &Arc<UdpFrontend>) {
    let mut buf = [0u8; MAX_DATAGRAM];
    for _ in 0..BATCH {
        match fe.sock.try_recv_from(&mut buf) {
            Ok((n, SocketAddr::V4(client))) => forward(inner, fe, client, &buf[..n]),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::debug!(frontend = %fe.addr, "receiving: {e}");
                return;
            }
        }
    }
}

/// One datagram from a client: to its flow's backend, starting a flow if it has none.
fn forward(inner: &Arc<Inner>, fe: &Arc<UdpFrontend>, client: SocketAddrV4, datagram: &[u8]) {
    let now = Instant::now();
    let existing = lock(&fe.flows)
        .touch(client, now)
        .map(|f| (f.value.id, f.value.io.clone()));
    let (id, io) = match existing {
        Some(flow) => flow,
        None => match start_flow(inner, fe, client, now) {
            Ok(Some(flow)) => flow,
            Ok(None) => return, // no backend: dropped, as by a port nobody serves
            Err(e) => {
                tracing::debug!(frontend = %fe.addr, "starting a UDP flow: {e}");
                return;
            }
        },
    };
    match send(&io.sock, datagram, None) {
        Ok(n) => {
            io.counters.bytes_to_backend.fetch_add(n as u64, Relaxed);
        }
        // The socket's buffer is full: dropped, as a router would.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => flow_failed(inner, fe, client, id, &io, &e),
    }
}

fn start_flow(
    inner: &Arc<Inner>,
    fe: &Arc<UdpFrontend>,
    client: SocketAddrV4,
    now: Instant,
) -> io::Result<Option<(u64, Arc<FlowIo>)>> {
    let Some(port) = inner.snapshot.load().frontends.get(&fe.addr).cloned() else {
        return Ok(None);
    };
    let Some((i, active)) = port.pick(&inner.health, client, &[]) else {
        return Ok(None);
    };
    let backend = port.backend_key(i);
    let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.connect(backend.addr)?;
    sock.set_nonblocking(true)?;
    let io = Arc::new(FlowIo {
        sock: UdpSocket::from_std(sock)?,
        backend,
        counters: port.counters[i].clone(),
    });
    io.counters.connections.fetch_add(1, Relaxed);
    let id = fe.next_id.fetch_add(1, Relaxed);
    let reply = inner
        .runtime
        .spawn(replies(inner.clone(), fe.clone(), client, id, io.clone()))
        .abort_handle();
    let flow = UdpFlow {
        id,
        io: io.clone(),
        reply,
        _active: active,
    };
    // A displaced flow (the table was full) is dropped here, ending it.
    drop(lock(&fe.flows).insert(client, backend.addr, flow, now));
    Ok(Some((id, io)))
}

/// The backend's replies to the client, from the frontend's address, until the flow
/// ends (its task is aborted) or the backend refuses. An ICMP port unreachable for one of
/// the flow's datagrams sets an error on the socket without making it readable, so
/// errors are waited for too: the flow ends as soon as the refusal arrives, not at the
/// client's next datagram.
async fn replies(
    inner: Arc<Inner>,
    fe: Arc<UdpFrontend>,
    client: SocketAddrV4,
    id: u64,
    io: Arc<FlowIo>,
) {
    loop {
        let ready = match io.sock.ready(Interest::READABLE | Interest::ERROR).await {
            Ok(r) => r,
            Err(_) => return,
        };
        if ready.is_error() {
            match io.sock.take_error() {
                Ok(Some(e)) => {
                    flow_failed(&inner, &fe, client, id, &io, &e);
                    return;
                }
                // Reported and taken already (by a send): forget the readiness, or the
                // wait above would return at once forever.
                _ => {
                    let _ = io.sock.try_io(Interest::ERROR, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
            }
        }
        if ready.is_readable()
            && let Err(e) = relay_replies(&fe, client, &io)
        {
            flow_failed(&inner, &fe, client, id, &io, &e);
            return;
        }
    }
}

/// Forwards the replies waiting on a flow's socket. `Err` is a failure of the flow (the
/// backend's port refused).
fn relay_replies(fe: &UdpFrontend, client: SocketAddrV4, io: &FlowIo) -> io::Result<()> {
    let mut buf = [0u8; MAX_DATAGRAM];
    for _ in 0..BATCH {
        match io.sock.try_recv(&mut buf) {
            Ok(n) => {
                // A full frontend socket drops the reply, as a router would.
                let _ = send(&fe.sock, &buf[..n], Some(client));
                io.counters.bytes_from_backend.fetch_add(n as u64, Relaxed);
                lock(&fe.flows).touch(client, Instant::now());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One non-blocking send(2), straight to the kernel. tokio's `try_send` answers
/// WouldBlock without trying while it has not seen the socket writable, which a socket
/// made for a new flow has not; for UDP, WouldBlock only ever means a full buffer, and
/// the datagram is dropped as a router would.
fn send(sock: &UdpSocket, datagram: &[u8], to: Option<SocketAddrV4>) -> io::Result<usize> {
    let sock = socket2::SockRef::from(sock);
    match to {
        Some(to) => sock.send_to(datagram, &SocketAddr::V4(to).into()),
        None => sock.send(datagram),
    }
}

/// A flow's socket failed (ICMP port unreachable comes back as ECONNREFUSED): counted
/// against the backend, and the flow ends so the next datagram picks again.
fn flow_failed(
    inner: &Arc<Inner>,
    fe: &UdpFrontend,
    client: SocketAddrV4,
    id: u64,
    io: &FlowIo,
    e: &io::Error,
) {
    tracing::debug!(frontend = %fe.addr, backend = %io.backend.addr, "UDP flow failed: {e}");
    if e.kind() == io::ErrorKind::ConnectionRefused {
        io.counters.failed_connects.fetch_add(1, Relaxed);
        inner.passive(io.backend, Outcome::Failure);
    }
    let mut flows = lock(&fe.flows);
    // Only this flow: the client may already have a new one.
    if flows
        .get(client, Instant::now())
        .is_some_and(|f| f.value.id == id)
    {
        drop(flows.remove(client));
    }
}
