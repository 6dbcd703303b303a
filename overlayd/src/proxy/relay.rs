//! Relaying one TCP connection both ways, with TCP's semantics carried through:
//!
//! - half-close: one side's FIN (read returns 0) becomes `shutdown(SHUT_WR)` on the other
//!   while the other direction keeps flowing, so request/response protocols that signal
//!   the end of a request with FIN work;
//! - reset: a reset from one side (ECONNRESET on read or write, or a socket error after
//!   its FIN) resets the other (`SO_LINGER` 0, then close), so a peer that aborts is seen
//!   to abort, not to finish cleanly.
//!
//! Bytes move in one of two ways ([`RelayMode`]; measured in docs/services.md):
//!
//! - **copy** (the default): `recv(MSG_PEEK)` into a scratch buffer of the worker thread,
//!   `send` to the other socket, then `recv(MSG_TRUNC)` to discard from the source exactly
//!   what was sent. Bytes the destination has no room for stay in the source socket's
//!   receive buffer, where TCP flow control already holds them, so a connection owns no
//!   buffer of its own: an idle connection costs nothing beyond its sockets, and the
//!   scratch buffer (one per thread) stays in cache. The price is a third system call per
//!   chunk, and when the destination is nearly full, a peek that copies more than is
//!   sent (the rest is peeked again later).
//! - **splice**: `splice(2)` socket → pipe → socket, no copy through user space; a pipe
//!   per direction (two descriptors each) for the connection's life.
//!
//! Neither allocates per packet or per connection.

use std::cell::RefCell;
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
    /// Peek, send, discard through a per-thread buffer. Measured faster than splice on
    /// loopback, in throughput and in CPU per byte; see docs/services.md.
    #[default]
    Copy,
    /// `splice(2)` through a pipe per direction (zero-copy).
    Splice,
}

/// A pipe's capacity unless raised with F_SETPIPE_SZ (16 pages).
const DEFAULT_PIPE: usize = 64 * 1024;

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

/// Relays until both directions have ended, counting bytes as they pass. `chunk` is the
/// most one step moves: the copy's scratch buffer, or the pipe's capacity. Consumes the
/// sockets: on return they are closed (normally, or with RST after a reset).
pub(super) async fn relay(
    client: TcpStream,
    backend: TcpStream,
    mode: RelayMode,
    chunk: usize,
    to_backend: &AtomicU64,
    from_backend: &AtomicU64,
) -> RelayEnd {
    let chunk = chunk.max(4096);
    let pipes = match mode {
        RelayMode::Splice => match (Pipe::new(chunk), Pipe::new(chunk)) {
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
            both_ways(
                &client,
                &backend,
                pump_copy(&client, &backend, chunk, to_backend),
                pump_copy(&backend, &client, chunk, from_backend),
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

thread_local! {
    /// The copy's scratch buffer: one per worker thread, used only between two awaits,
    /// so never by two connections at once.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What one copy step did.
enum Step {
    Moved(usize),
    Eof,
    /// The destination had no room: nothing was consumed.
    DstFull,
}

async fn pump_copy(
    src: &TcpStream,
    dst: &TcpStream,
    chunk: usize,
    count: &AtomicU64,
) -> io::Result<()> {
    loop {
        src.readable().await?;
        // Through src's readiness: nothing to peek clears it, and the next readable()
        // waits for data.
        match src.try_io(Interest::READABLE, || copy_step(src, dst, chunk)) {
            Ok(Step::Moved(n)) => {
                count.fetch_add(n as u64, Relaxed);
            }
            Ok(Step::Eof) => return shutdown_write(dst),
            Ok(Step::DstFull) => dst.writable().await?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Peek up to `chunk` bytes from `src`, send what `dst` takes, discard that from `src`.
fn copy_step(src: &TcpStream, dst: &TcpStream, chunk: usize) -> io::Result<Step> {
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    SCRATCH.with_borrow_mut(|buf| {
        if buf.len() < chunk {
            buf.resize(chunk, 0);
        }
        // SAFETY: `buf` has room for `chunk` bytes.
        let peeked = unsafe {
            libc::recv(
                src_fd,
                buf.as_mut_ptr().cast(),
                chunk,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let peeked = usize::try_from(peeked).map_err(|_| io::Error::last_os_error())?;
        if peeked == 0 {
            return Ok(Step::Eof);
        }
        // Through dst's readiness, so a full socket clears exactly the readiness seen
        // before the send and no wake-up is lost.
        let sent = dst.try_io(Interest::WRITABLE, || {
            // SAFETY: the first `peeked` bytes of `buf` were written by recv.
            let n = unsafe {
                libc::send(
                    dst_fd,
                    buf.as_ptr().cast(),
                    peeked,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        });
        let sent = match sent {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::DstFull),
            Err(e) => return Err(e),
        };
        // SAFETY: with MSG_TRUNC, TCP discards the bytes without writing to the buffer.
        let discarded = unsafe {
            libc::recv(
                src_fd,
                std::ptr::null_mut(),
                sent,
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        };
        // The peeked bytes are in the receive queue and only this task reads it.
        if usize::try_from(discarded).ok() != Some(sent) {
            return Err(io::Error::other(format!(
                "discarding {sent} sent bytes took {discarded}"
            )));
        }
        Ok(Step::Moved(sent))
    })
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
                splice(src_fd, pipe.write.as_raw_fd(), pipe.capacity)
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
    /// Bytes it holds at most.
    capacity: usize,
}

impl Pipe {
    /// A pipe of `capacity` bytes if the kernel allows (rounded up to pages), else of the
    /// default 64 KB.
    fn new(capacity: usize) -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut pipe = Pipe {
            read,
            write,
            capacity: DEFAULT_PIPE,
        };
        if capacity != DEFAULT_PIPE {
            let want = libc::c_int::try_from(capacity).unwrap_or(libc::c_int::MAX);
            // SAFETY: F_SETPIPE_SZ on a pipe we own; it returns the size set, or -1 (over
            // pipe-max-size or the user's pipe quota), which leaves the pipe as it was.
            let set = unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
            if let Ok(size) = usize::try_from(set) {
                pipe.capacity = size;
            }
        }
        Ok(pipe)
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
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
