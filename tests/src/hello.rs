//! The server every lab pod runs (`overlayd lab serve`), so Services have backends that
//! say who answered:
//!
//! - TCP [`HELLO_PORT`]: sends `NAME\n`, then echoes every byte it receives until the
//!   client half-closes, then closes its side (so a transfer can be checked both ways, and
//!   half-close is observable).
//! - UDP [`HELLO_PORT`]: answers every datagram with `NAME\n` followed by the datagram.
//! - TCP [`HTTP_PORT`]: a minimal HTTP/1.1 server answering every request with `NAME\n`
//!   (keep-alive unless the request says `Connection: close`), for connection-rate
//!   benchmarks with wrk.
//!
//! Plain threads: a pod serves a few clients at a time in tests, and the benchmark's load
//! generator, not this server, is meant to be the limit.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream, UdpSocket};
use std::thread;

/// TCP and UDP port of the greeting echo server in every lab pod.
pub const HELLO_PORT: u16 = 8080;
/// TCP port of the HTTP server in every lab pod.
pub const HTTP_PORT: u16 = 8081;

/// Serves the three protocols as `name` on all addresses until the process is killed.
/// Returns `Err` iff a port cannot be bound.
pub fn serve(name: &str) -> io::Result<()> {
    Server::bind(name, Ipv4Addr::UNSPECIFIED, HELLO_PORT, HTTP_PORT)?.run()
}

/// The bound sockets of a hello server.
pub struct Server {
    greeting: &'static [u8],
    pub tcp: TcpListener,
    pub udp: UdpSocket,
    pub http: TcpListener,
}

impl Server {
    /// Binds the echo server's TCP and UDP `hello_port` and the HTTP port on `ip` (port 0:
    /// any free port, each its own).
    pub fn bind(name: &str, ip: Ipv4Addr, hello_port: u16, http_port: u16) -> io::Result<Server> {
        Ok(Server {
            greeting: Box::leak(format!("{name}\n").into_bytes().into_boxed_slice()),
            tcp: TcpListener::bind((ip, hello_port))?,
            udp: UdpSocket::bind((ip, hello_port))?,
            http: TcpListener::bind((ip, http_port))?,
        })
    }

    /// Serves until the process ends; returns only if receiving on UDP fails for good.
    pub fn run(self) -> io::Result<()> {
        let Server {
            greeting,
            tcp,
            udp,
            http,
        } = self;
        thread::spawn(move || accept_loop(&tcp, greeting, echo));
        thread::spawn(move || accept_loop(&http, greeting, http_conn));
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, from) = udp.recv_from(&mut buf[greeting.len()..])?;
            buf[..greeting.len()].copy_from_slice(greeting);
            let _ = udp.send_to(&buf[..greeting.len() + n], from);
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    greeting: &'static [u8],
    handler: fn(TcpStream, &[u8]) -> io::Result<()>,
) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            let _ = handler(conn, greeting);
        });
    }
}

fn echo(mut conn: TcpStream, greeting: &[u8]) -> io::Result<()> {
    conn.write_all(greeting)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return conn.shutdown(Shutdown::Write);
        }
        conn.write_all(&buf[..n])?;
    }
}

fn http_conn(conn: TcpStream, greeting: &[u8]) -> io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        greeting.len()
    );
    let mut line = String::new();
    loop {
        // The request line, then headers up to the blank line.
        let mut close = false;
        let mut first = true;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            if !first && line.to_ascii_lowercase().starts_with("connection: close") {
                close = true;
            }
            first = false;
        }
        let connection = if close { "close" } else { "keep-alive" };
        let mut response = Vec::with_capacity(head.len() + 32 + greeting.len());
        response.extend_from_slice(head.as_bytes());
        response.extend_from_slice(format!("Connection: {connection}\r\n\r\n").as_bytes());
        response.extend_from_slice(greeting);
        writer.write_all(&response)?;
        if close {
            return writer.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> (
        std::net::SocketAddr,
        std::net::SocketAddr,
        std::net::SocketAddr,
    ) {
        let server = Server::bind("pod-x", Ipv4Addr::LOCALHOST, 0, 0).unwrap();
        let addrs = (
            server.tcp.local_addr().unwrap(),
            server.udp.local_addr().unwrap(),
            server.http.local_addr().unwrap(),
        );
        thread::spawn(move || server.run());
        addrs
    }

    #[test]
    fn tcp_greets_echoes_and_closes_after_the_client_half_closes() {
        let (tcp, _, _) = server();
        let mut conn = TcpStream::connect(tcp).unwrap();
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let mut conn = conn.try_clone().unwrap();
            let payload = payload.clone();
            thread::spawn(move || {
                conn.write_all(&payload).unwrap();
                conn.shutdown(Shutdown::Write).unwrap();
            })
        };
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(&got[..6], b"pod-x\n");
        assert!(got[6..] == payload[..], "echo differs");
    }

    #[test]
    fn udp_answers_with_the_name_and_the_datagram() {
        let (_, udp, _) = server();
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        client.send_to(b"ping", udp).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pod-x\nping");
    }

    #[test]
    fn http_keeps_alive_and_closes_when_asked() {
        let (_, _, http) = server();
        let mut conn = TcpStream::connect(http).unwrap();
        conn.write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 2, "{got}");
        assert!(
            got.contains("Connection: keep-alive\r\n\r\npod-x\n"),
            "{got}"
        );
        assert!(got.ends_with("Connection: close\r\n\r\npod-x\n"), "{got}");
    }
}
