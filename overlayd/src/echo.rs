//! ICMP echo to other nodes' underlay addresses, answered by their kernels: whether a node
//! whose daemon gossip declared dead still forwards (`proto::routing::liveness`). A raw
//! ICMP socket (root, or CAP_NET_RAW, which docker grants by default); the messages are
//! `proto::wire::echo`'s.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use overlayd_proto::wire::echo;
use socket2::{Domain, Protocol, Socket, Type};

/// A raw ICMP socket sending echo requests with one id and reading the replies.
pub struct Echo {
    /// Non-blocking: requests go out and replies are drained on the prober's tick.
    sock: Socket,
    id: u16,
    seq: u16,
}

impl Echo {
    pub fn open() -> Result<Self> {
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .context("opening a raw ICMP socket (needs CAP_NET_RAW)")?;
        sock.set_nonblocking(true)?;
        Ok(Echo {
            sock,
            // Told apart from other pingers on the host by the process's id.
            id: std::process::id() as u16,
            seq: 0,
        })
    }

    /// Sends one echo request to `dst`; `Err` when the kernel refused it (no route).
    pub fn send(&mut self, dst: Ipv4Addr) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut buf = [0u8; 32];
        let n = echo::request(self.id, self.seq, &mut buf);
        self.sock
            .send_to(&buf[..n], &SocketAddr::from((dst, 0)).into())
            .map(|_| ())
    }

    /// The sources of every echo reply to us waiting on the socket; never waits.
    pub fn replies(&self) -> Vec<Ipv4Addr> {
        let mut from = Vec::new();
        let mut buf = [0u8; 1500];
        loop {
            match (&mut &self.sock).read(&mut buf) {
                Ok(n) => {
                    if let Some((src, id, _)) = echo::reply(&buf[..n])
                        && id == self.id
                    {
                        from.push(src);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return from,
                Err(_) => return from,
            }
        }
    }
}
