//! Relaying one TCP connection both ways, with TCP's semantics carried through:
//!
//! - half-close: one side's FIN (read returns 0) becomes `shutdown(SHUT_WR)` on the other
//!   while the other direction keeps flowing, so request/response protocols that signal
//!   the end of a request with FIN work;
//! - reset: a reset from one side (ECONNRESET on read or write, or a socket error after
//!   its FIN) resets the other (`SO_LINGER` 0, then close), so a peer that aborts is seen
//!   to abort, not to finish cleanly.
//!
//! Bytes move with `splice(2)` through a pipe (socket → pipe → socket, no copy into user
//! space) or, with [`RelayMode::Copy`], through one buffer per direction allocated once
//! per connection. Neither allocates per packet.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// How bytes move between the two sockets of a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayMode {
    /// `splice(2)` through a pipe per direction (zero-copy). Measured faster on
    /// loopback; see docs/services.md.
    #[default]
    Splice,
    /// `read`/`write` through a buffer per direction.
    Copy,
}

/// Bytes one splice into the pipe may move: the pipe's default capacity (16 pages).
/// Larger pipes measured no faster (docs/services.md).
const PIPE_CHUNK: usize = 64 * 1024;
/// The copy buffer of one direction.
const COPY_BUF: usize = 64 * 1024;

/// How a relayed connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RelayEnd {
    /// Both sides finished with FIN.
    Closed,
    /// One side failed (reset, most often); both were reset.
    ResetBy(Side),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Client,
    Backend,
}

/// Sets `SO_LINGER` 0 so that closing the socket sends RST instead of FIN.
pub(super) fn set_reset_on_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// Relays until both directions have ended, counting bytes as they pass. Consumes the
/// sockets: on return they are closed (normally, or with RST after a reset).
pub(super) async fn relay(
    client: TcpStream,
    backend: TcpStream,
    mode: RelayMode,
    to_backend: &AtomicU64,
    from_backend: &AtomicU64,
) -> RelayEnd {
    let pipes = match mode {
        RelayMode::Splice => match (Pipe::new(), Pipe::new()) {
            (Ok(a), Ok(b)) => Some((a, b)),
            // Out of file descriptors, say: this connection copies instead.
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!("no pipe for splice ({e}); copying instead");
                None
            }
        },
        RelayMode::Copy => None,
    };
    let end = match &pipes {
        Some((up, down)) => {
            both_ways(
                &client,
                &backend,
                pump_splice(&client, &backend, up, to_backend),
                pump_splice(&backend, &client, down, from_backend),
            )
            .await
        }
        None => {
            let mut up = vec![0u8; COPY_BUF];
            let mut down = vec![0u8; COPY_BUF];
            both_ways(
                &client,
                &backend,
                pump_copy(&client, &backend, &mut up, to_backend),
                pump_copy(&backend, &client, &mut down, from_backend),
            )
            .await
        }
    };
    if let RelayEnd::ResetBy(_) = end {
        set_reset_on_close(&client);
        set_reset_on_close(&backend);
    }
    end
}

/// Runs both directions to their end. A direction that ends with FIN is done while the
/// other goes on; any error ends both (the caller resets the sockets). After one side's
/// FIN, a socket error on that side (it reset the half-closed connection) still counts:
/// no pump reads it any more, so it is watched for.
async fn both_ways(
    client: &TcpStream,
    backend: &TcpStream,
    up: impl Future<Output = io::Result<()>>,
    down: impl Future<Output = io::Result<()>>,
) -> RelayEnd {
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => up_done = true,
                Err(_) => return RelayEnd::ResetBy(Side::Client),
            },
            r = &mut down, if !down_done => match r {
                Ok(()) => down_done = true,
                Err(_) => return RelayEnd::ResetBy(Side::Backend),
            },
            true = socket_failed(client), if up_done => return RelayEnd::ResetBy(Side::Client),
            true = socket_failed(backend), if down_done => return RelayEnd::ResetBy(Side::Backend),
        }
    }
    RelayEnd::Closed
}

/// Resolves true once the socket has a pending error (a reset); never resolves
/// otherwise.
async fn socket_failed(s: &TcpStream) -> bool {
    loop {
        match s.ready(Interest::ERROR).await {
            Ok(r) if r.is_error() => match s.take_error() {
                Ok(Some(_)) | Err(_) => return true,
                // The error was reported elsewhere already: forget the readiness, or
                // this would return at once forever.
                Ok(None) => {
                    let _ = s.try_io(Interest::ERROR, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
            },
            Ok(_) => {}
            Err(_) => return true,
        }
    }
}

/// Closes the write side after the source's FIN.
fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write)
}

/// Writes all of `buf`, waiting for room.
pub(super) async fn write_all(dst: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = dst
            .async_io(Interest::WRITABLE, || dst.try_write(buf))
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

async fn pump_copy(
    src: &TcpStream,
    dst: &TcpStream,
    buf: &mut [u8],
    count: &AtomicU64,
) -> io::Result<()> {
    loop {
        let n = src
            .async_io(Interest::READABLE, || src.try_read(buf))
            .await?;
        if n == 0 {
            return shutdown_write(dst);
        }
        write_all(dst, &buf[..n]).await?;
        count.fetch_add(n as u64, Relaxed);
    }
}

async fn pump_splice(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    count: &AtomicU64,
) -> io::Result<()> {
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    loop {
        // The pipe is empty here: fill it from the socket, then drain it completely.
        let n = src
            .async_io(Interest::READABLE, || {
                splice(src_fd, pipe.write.as_raw_fd(), PIPE_CHUNK)
            })
            .await?;
        if n == 0 {
            return shutdown_write(dst);
        }
        let mut left = n;
        while left > 0 {
            let m = dst
                .async_io(Interest::WRITABLE, || {
                    splice(pipe.read.as_raw_fd(), dst_fd, left)
                })
                .await?;
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= m;
        }
        count.fetch_add(n as u64, Relaxed);
    }
}

/// A pipe, both ends non-blocking.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { read, write })
    }
}

/// One non-blocking `splice(2)` of up to `len` bytes; `WouldBlock` when nothing can move.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors the caller keeps open for the call; null offsets (both
    // are a socket or a pipe, which have no offset).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
