//! TCP frontends: accept, pick a backend, connect (retrying other backends on refusal or
//! timeout), optionally send a PROXY v2 header, then relay.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use overlayd_proto::service::frontend::FrontendAddr;
use overlayd_proto::service::health::Outcome;
use overlayd_proto::service::proxy_protocol;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::AbortHandle;

use super::relay::{self, RelayEnd};
use super::{Inner, ProxyConfig};

/// After an accept error (out of file descriptors, say), wait this long rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections the kernel completes before we accept them.
const BACKLOG: i32 = 1024;

/// Binds a listener on `addr` and starts accepting on it.
pub(super) fn listen(
    inner: &Arc<Inner>,
    addr: FrontendAddr,
    freebind: bool,
) -> io::Result<(AbortHandle, Arc<TcpListener>)> {
    let listener = Arc::new(bind(addr.addr, freebind, inner.cfg.socket_buffer)?);
    let task = inner
        .runtime
        .spawn(accept_loop(inner.clone(), addr, listener.clone()));
    Ok((task.abort_handle(), listener))
}

fn bind(addr: SocketAddrV4, freebind: bool, buffer: Option<usize>) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    // A Service removed and added again must get its port back at once, whatever
    // TIME_WAIT connections the old listener left.
    sock.set_reuse_address(true)?;
    if freebind {
        sock.set_freebind_v4(true)?;
    }
    if let Some(size) = buffer {
        // Set on the listener so accepted sockets inherit it before the handshake, when
        // the window scale is chosen.
        sock.set_recv_buffer_size(size)?;
        sock.set_send_buffer_size(size)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddr::V4(addr).into())?;
    sock.listen(BACKLOG)?;
    TcpListener::from_std(sock.into())
}

async fn accept_loop(inner: Arc<Inner>, addr: FrontendAddr, listener: Arc<TcpListener>) {
    loop {
        match listener.accept().await {
            Ok((client, SocketAddr::V4(peer))) => {
                inner
                    .runtime
                    .spawn(serve(inner.clone(), addr, client, peer));
            }
            Ok((client, _)) => relay::set_reset_on_close(&client),
            Err(e) => {
                tracing::warn!(frontend = %addr, "accepting: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One client connection, from accept to close.
async fn serve(inner: Arc<Inner>, addr: FrontendAddr, client: TcpStream, peer: SocketAddrV4) {
    let Some(port) = inner.snapshot.load().frontends.get(&addr).cloned() else {
        // The Service left between accept and now: refuse as the closed port will.
        relay::set_reset_on_close(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let tries = inner.cfg.connect_tries.max(1);
    let mut tried = Vec::with_capacity(tries);
    let connected = loop {
        if tried.len() >= tries {
            break None;
        }
        let Some((i, active)) = port.pick(&inner.health, peer, &tried) else {
            break None;
        };
        let key = port.backend_key(i);
        match connect(key.addr, &inner.cfg).await {
            Ok(backend) => {
                inner.passive(key, Outcome::Success);
                break Some((i, backend, active));
            }
            Err(e) => {
                tracing::debug!(frontend = %addr, backend = %key.addr, "connect failed: {e}");
                if counts_against_backend(&e) {
                    port.counters[i].failed_connects.fetch_add(1, Relaxed);
                    inner.passive(key, Outcome::Failure);
                }
                tried.push(i);
            }
        }
    };
    let Some((i, backend, _active)) = connected else {
        // No backend took it: the client sees a reset, as from a port nobody serves.
        tracing::debug!(frontend = %addr, client = %peer, tries = tried.len(), "no backend; resetting the client");
        relay::set_reset_on_close(&client);
        return;
    };
    // From here the connection needs only its backend's counters: the snapshot's port
    // (balancer, affinity table, Maglev table) is let go, so a long-lived connection
    // does not keep an old snapshot alive.
    let counters = port.counters[i].clone();
    let proxy_protocol = port.port.proxy_protocol;
    drop(port);
    counters.connections.fetch_add(1, Relaxed);
    let _ = backend.set_nodelay(true);
    if proxy_protocol {
        // The destination is the address the client connected to (VIP, node port or
        // external IP), as the client saw it.
        let service = match client.local_addr() {
            Ok(SocketAddr::V4(local)) => local,
            _ => addr.addr,
        };
        let header = proxy_protocol::v2_tcp4(peer, service);
        if relay::write_all(&backend, &header).await.is_err() {
            relay::set_reset_on_close(&client);
            relay::set_reset_on_close(&backend);
            return;
        }
    }
    let end = relay::relay(
        client,
        backend,
        inner.cfg.relay,
        inner.cfg.relay_chunk,
        &counters.bytes_to_backend,
        &counters.bytes_from_backend,
    )
    .await;
    if let RelayEnd::ResetBy(side) = end {
        tracing::trace!(frontend = %addr, client = %peer, "reset by {side:?}");
    }
}

/// Connects to a backend within the configured timeout.
async fn connect(addr: SocketAddrV4, cfg: &ProxyConfig) -> io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(size) = cfg.socket_buffer {
        sock.set_recv_buffer_size(size as u32)?;
        sock.set_send_buffer_size(size as u32)?;
    }
    match tokio::time::timeout(cfg.connect_timeout, sock.connect(SocketAddr::V4(addr))).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Whether a failed connect says something about the backend (refused, timed out,
/// unreachable), rather than about this node (out of descriptors or ports).
fn counts_against_backend(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | TimedOut | HostUnreachable | NetworkUnreachable | ConnectionReset
    )
}
