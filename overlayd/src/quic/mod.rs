//! The QUIC tunnel transport (issue 8, item 1): pod IP packets as RFC 9221 datagrams on
//! one mutually authenticated QUIC connection per peer pair, all on one UDP port.
//!
//! - **Who dials**: [`overlayd_proto::path::dial::dialer`] over the two member names; the
//!   other side only accepts. An accepted connection from a member that is not wanted
//!   ([`QuicTransport::set_peers`]) or that the dial rule does not make the dialer is
//!   closed and counted. Two live connections of one pair (a redial while the acceptor
//!   still holds the old one, a peer dialing out of turn) converge on the one
//!   [`overlayd_proto::path::dial::keep`] names, at both ends; the dial attempt it needs
//!   travels in the SNI (`a<attempt>.overlayd`, see [`tls`]).
//! - **Trust**: [`tls`]; [`QuicTransport::reload`] swaps CA, identity and revocation
//!   list and closes exactly the live connections whose peer certificate now fails.
//! - **Liveness**: keepalive every second, idle timeout 5 s; the dialer redials with
//!   exponential backoff (100 ms doubling to 5 s) while the peer is wanted, at once when
//!   the peer's address changes while it is not connected. A live connection survives a
//!   peer address change (quinn migrates a dialer that moved; an acceptor that moved is
//!   redialed at its new address once the old connection times out).
//! - **Sizes**: see [`max_datagram_payload`]; at an underlay MTU of 1500 (IPv4) a
//!   datagram carries at most 1434 bytes, so the inner MTU over QUIC is the underlay's
//!   minus [`IPV4_OVERHEAD`] (66), as the VXLAN path's is the underlay's minus 50.
//!
//! The hot path ([`QuicTransport::send`]) never waits: it looks the peer's connection up,
//! hands quinn the datagram (which drops the oldest queued datagram when its buffer is
//! full) and counts what could not be sent. Received datagrams go to a bounded channel;
//! when it is full they are dropped and counted.

pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use overlayd_proto::path::dial::{self, ConnectionInfo, Keep, Side};
use quinn::{Connection, Endpoint, VarInt};
use rustls_pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::pki::{self, Ca, Fingerprint, NodeIdentity, PeerCertError, RevocationList};
use tls::{Tls, Trust};

/// The UDP port of all QUIC tunnels, dialing and accepting.
pub const DEFAULT_PORT: u16 = 8473;
/// Outer IPv4 + UDP headers.
pub const IPV4_UDP_OVERHEAD: u16 = 28;
/// Outer IPv6 + UDP headers.
pub const IPV6_UDP_OVERHEAD: u16 = 48;
/// What quinn reserves in a UDP payload around one datagram (its conservative bound, the
/// one `Connection::max_datagram_size` uses): short header flags 1, destination
/// connection ID 8 (quinn's default length), packet number 4 (the upper bound), AEAD tag
/// 16, DATAGRAM frame type 1 + length 8 (the bound of a varint).
pub const QUIC_DATAGRAM_OVERHEAD: u16 = 38;
/// Underlay MTU minus the largest pod packet one datagram carries, over IPv4: 66 (VXLAN: 50).
pub const IPV4_OVERHEAD: u16 = IPV4_UDP_OVERHEAD + QUIC_DATAGRAM_OVERHEAD;

/// The largest datagram payload (pod packet) a path of `underlay_mtu` carries in one QUIC
/// packet: 1500 → 1434 over IPv4, 1414 over IPv6. A 1500-byte pod packet needs an
/// underlay MTU of 1566 (IPv4).
pub fn max_datagram_payload(underlay_mtu: u16, ipv6: bool) -> u16 {
    udp_payload(underlay_mtu, ipv6).saturating_sub(QUIC_DATAGRAM_OVERHEAD)
}

/// The UDP payload of a full-size packet at `mtu`, never below QUIC's 1200.
fn udp_payload(mtu: u16, ipv6: bool) -> u16 {
    let ip = if ipv6 {
        IPV6_UDP_OVERHEAD
    } else {
        IPV4_UDP_OVERHEAD
    };
    mtu.saturating_sub(ip).max(1200)
}

/// A connection that lasted this long resets the dialer's backoff.
const LIVED: Duration = Duration::from_secs(2);

/// Application close codes (the peer's `ConnectionError::ApplicationClosed`).
pub mod close_code {
    /// Shutdown, or the peer is no longer wanted.
    pub const GONE: u32 = 0;
    /// The other of two connections of the pair was kept.
    pub const DUPLICATE: u32 = 1;
    /// The dial rule makes us the dialer of this pair, not the peer.
    pub const NOT_DIALER: u32 = 2;
    /// The member the certificate names is not a wanted peer.
    pub const UNKNOWN_PEER: u32 = 3;
    /// The peer's certificate fails the checks after a reload or a revocation.
    pub const CERT_REFUSED: u32 = 4;
    /// The dialer's handshake carried no attempt number.
    pub const BAD_HELLO: u32 = 5;
}

/// Datagrams queued per connection while congestion control holds them back; more drop
/// the oldest (counted by quinn, seen as inner TCP loss). About 30 ms at 1 Gbit/s.
const SEND_BUFFER: usize = 4 << 20;

/// The endpoint's UDP socket, with kernel buffers as large as the tunnel socket's (a
/// burst of a few hundred datagrams otherwise overflows the default 208 KiB).
fn bind_socket(addr: SocketAddr) -> Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    for (what, r) in [
        ("send", sock.set_send_buffer_size(4 << 20)),
        ("receive", sock.set_recv_buffer_size(4 << 20)),
    ] {
        if let Err(e) = r {
            tracing::warn!("could not raise the QUIC socket's {what} buffer: {e}");
        }
    }
    sock.bind(&addr.into())
        .with_context(|| format!("binding the QUIC port {addr}"))?;
    Ok(sock.into())
}

/// How a transport is set up. [`QuicConfig::new`] gives the defaults.
pub struct QuicConfig {
    /// This node's gossip member name; its certificate must name it.
    pub name: String,
    /// The one UDP socket of all tunnels; default port [`DEFAULT_PORT`].
    pub bind: SocketAddr,
    /// The underlay's MTU (the device's, or the path MTU when known): QUIC starts with
    /// full-size packets of this size and MTU discovery never goes above it.
    pub underlay_mtu: u16,
    /// The MTU every path is guaranteed to have: what black-hole detection falls back to
    /// (quinn's floor is a 1200-byte UDP payload). Default 1280.
    pub min_underlay_mtu: u16,
    pub ca: Ca,
    pub identity: NodeIdentity,
    pub revoked: RevocationList,
    /// Received datagrams buffered for the caller; more are dropped and counted.
    pub recv_queue: usize,
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl QuicConfig {
    pub fn new(bind: SocketAddr, ca: Ca, identity: NodeIdentity) -> Self {
        QuicConfig {
            name: identity.name.clone(),
            bind,
            underlay_mtu: 1500,
            min_underlay_mtu: 1280,
            ca,
            identity,
            revoked: RevocationList::new(),
            recv_queue: 4096,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// A datagram from a peer: its member name and the pod packet.
pub type Received = (Arc<str>, Bytes);

/// Most datagrams a connection's reader hands to the [`Sink`] at once.
pub const RX_BATCH: usize = 64;

/// Where the connections' datagrams go. Each connection's reader takes what quinn has
/// received (up to [`RX_BATCH`] datagrams, in arrival order), hands it over and waits
/// until the sink is done with it: the datagrams go from quinn to the sink's work (for
/// the daemon, the TUN write) in the reader's task, without another task's wake-up in
/// between, and a slow sink slows the reading (quinn's per-connection receive buffer
/// takes the burst) instead of filling a queue.
pub trait Sink: Send + Sync + 'static {
    /// Takes `batch` (from `peer`; the sink may drain it). Resolves to the number of
    /// datagrams it dropped for lack of room, counted as `rx_queue_full`.
    fn deliver<'a>(&'a self, peer: &'a Arc<str>, batch: &'a mut Vec<Bytes>)
    -> BoxFuture<'a, usize>;
}

/// The [`Sink`] of [`QuicTransport::bind`]: a bounded queue, full → dropped.
struct ChannelSink(mpsc::Sender<Received>);

impl Sink for ChannelSink {
    fn deliver<'a>(
        &'a self,
        peer: &'a Arc<str>,
        batch: &'a mut Vec<Bytes>,
    ) -> BoxFuture<'a, usize> {
        let mut dropped = 0;
        for data in batch.drain(..) {
            if let Err(mpsc::error::TrySendError::Full(_)) = self.0.try_send((peer.clone(), data)) {
                dropped += 1;
            }
        }
        Box::pin(std::future::ready(dropped))
    }
}

/// Why [`QuicTransport::send`] sent nothing; each is counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no QUIC connection to the peer")]
    NoConnection,
    /// Larger than the connection's current datagram size: answer with ICMP
    /// "fragmentation needed" naming `max` (or less).
    #[error("the packet is larger than the {max} bytes a datagram carries now")]
    TooBig { max: usize },
    #[error("the connection cannot carry datagrams (lost, or datagrams unsupported)")]
    Unusable,
}

/// A peer's connection state, as `overlayd peers` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// We dial: a handshake is under way.
    Connecting,
    /// A connection is up.
    Connected,
    /// We dial: waiting before the next attempt.
    Backoff,
    /// The peer dials: waiting for it.
    Waiting,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Connected => "connected",
            ConnState::Backoff => "backoff",
            ConnState::Waiting => "waiting",
        }
    }
}

/// One wanted peer's tunnel.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    pub name: String,
    /// The address it was given (dialed, when we dial).
    pub addr: SocketAddr,
    /// Whether this node dials the pair.
    pub we_dial: bool,
    pub state: ConnState,
    /// The connection's current remote address (differs from `addr` after migration).
    pub remote: Option<SocketAddr>,
    pub rtt: Option<Duration>,
    /// The largest datagram (pod packet) the connection carries now.
    pub max_datagram_size: Option<usize>,
    pub cert_not_after: Option<SystemTime>,
    /// SHA-256 of the peer's certificate (hex), for comparison with its gossip record.
    pub cert_fingerprint: Option<String>,
    /// Dials after the first (we dial), or connections accepted after the first.
    pub reconnects: u64,
    pub last_error: Option<String>,
}

/// The transport's counters. Refusals of peer certificates are in
/// [`QuicCounters::to_map`] as `cert_<reason>`.
#[derive(Debug, Default)]
pub struct QuicCounters {
    pub tx_datagrams: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_datagrams: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Sends to a peer without a live connection.
    pub tx_no_connection: AtomicU64,
    /// Sends larger than the connection's datagram size.
    pub tx_too_big: AtomicU64,
    /// Sends on a connection that could not take them (lost in between, no datagrams).
    pub tx_unusable: AtomicU64,
    /// Received datagrams dropped because the caller's queue was full.
    pub rx_queue_full: AtomicU64,
    pub dials: AtomicU64,
    /// Handshakes that completed, dialed and accepted.
    pub connections_dialed: AtomicU64,
    pub connections_accepted: AtomicU64,
    /// Handshakes that failed (the certificate refusals among them are counted by reason).
    pub handshake_failures: AtomicU64,
    /// Accepted connections from a member that is not a wanted peer.
    pub refused_unknown_peer: AtomicU64,
    /// Connections the peer opened although the dial rule makes us the dialer.
    pub refused_not_dialer: AtomicU64,
    /// Accepted connections without an attempt number in the handshake.
    pub refused_bad_hello: AtomicU64,
    /// Connections closed as the loser of two of one pair.
    pub duplicates_closed: AtomicU64,
    /// Live connections closed because their certificate failed after a reload.
    pub closed_on_reload: AtomicU64,
    /// Connections that ended while the peer was wanted (timeout, peer closed).
    pub connections_lost: AtomicU64,
}

impl QuicCounters {
    fn fields(&self) -> [(&'static str, &AtomicU64); 18] {
        [
            ("tx_datagrams", &self.tx_datagrams),
            ("tx_bytes", &self.tx_bytes),
            ("rx_datagrams", &self.rx_datagrams),
            ("rx_bytes", &self.rx_bytes),
            ("tx_no_connection", &self.tx_no_connection),
            ("tx_too_big", &self.tx_too_big),
            ("tx_unusable", &self.tx_unusable),
            ("rx_queue_full", &self.rx_queue_full),
            ("dials", &self.dials),
            ("connections_dialed", &self.connections_dialed),
            ("connections_accepted", &self.connections_accepted),
            ("handshake_failures", &self.handshake_failures),
            ("refused_unknown_peer", &self.refused_unknown_peer),
            ("refused_not_dialer", &self.refused_not_dialer),
            ("refused_bad_hello", &self.refused_bad_hello),
            ("duplicates_closed", &self.duplicates_closed),
            ("closed_on_reload", &self.closed_on_reload),
            ("connections_lost", &self.connections_lost),
        ]
    }
}

/// A live connection, as the hot path and the status see it.
#[derive(Clone)]
struct Live {
    conn: Connection,
    info: ConnectionInfo,
    cert: CertificateDer<'static>,
}

/// A wanted peer, as the control plane sees it.
struct Peer {
    addr: SocketAddr,
    we_dial: bool,
    state: ConnState,
    reconnects: u64,
    connections: u64,
    last_error: Option<String>,
    /// We dial: the dial task and the address it dials.
    dialer: Option<(JoinHandle<()>, watch::Sender<SocketAddr>)>,
}

struct Inner {
    name: String,
    endpoint: Endpoint,
    tls: Arc<Tls>,
    transport: Arc<quinn::TransportConfig>,
    backoff: (Duration, Duration),
    peers: Mutex<HashMap<String, Peer>>,
    live: DashMap<String, Live>,
    counters: QuicCounters,
    sink: Arc<dyn Sink>,
    last_attempt: AtomicU64,
}

/// The QUIC tunnels of this node. Dropping it closes the endpoint and every connection.
pub struct QuicTransport {
    inner: Arc<Inner>,
    accept_task: JoinHandle<()>,
}

impl QuicTransport {
    /// Binds the UDP socket and starts accepting. Must run inside a tokio runtime.
    /// Returns the transport and the receiving end of the datagrams from all peers (a
    /// queue of `cfg.recv_queue`; when it is full, datagrams are dropped and counted).
    pub fn bind(cfg: QuicConfig) -> Result<(QuicTransport, mpsc::Receiver<Received>)> {
        let (tx, rx) = mpsc::channel(cfg.recv_queue.max(1));
        Ok((Self::bind_with(cfg, Arc::new(ChannelSink(tx)))?, rx))
    }

    /// [`QuicTransport::bind`] delivering every connection's datagrams to `sink`.
    pub fn bind_with(cfg: QuicConfig, sink: Arc<dyn Sink>) -> Result<QuicTransport> {
        anyhow::ensure!(
            cfg.identity.name == cfg.name,
            "this node is {:?} but its certificate is loaded for {:?}",
            cfg.name,
            cfg.identity.name
        );
        let tls = Tls::new(Trust::new(
            &rustls::crypto::ring::default_provider(),
            cfg.ca,
            &cfg.identity,
            cfg.revoked,
        )?);
        let ipv6 = cfg.bind.is_ipv6();
        let full = udp_payload(cfg.underlay_mtu, ipv6);
        let floor = udp_payload(cfg.min_underlay_mtu, ipv6).min(full);

        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(cfg.keep_alive))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(cfg.idle_timeout).context("QUIC idle timeout")?,
            ))
            .initial_mtu(full)
            .min_mtu(floor)
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            // Per connection: ~15 ms at 1 Gbit/s of received datagrams not yet read.
            .datagram_receive_buffer_size(Some(2 << 20))
            .datagram_send_buffer_size(SEND_BUFFER);
        // MTU discovery never goes above the underlay; it stays on for its black-hole
        // detection, which falls back to `min_mtu` on a narrower path.
        let mut mtud = quinn::MtuDiscoveryConfig::default();
        mtud.upper_bound(full);
        transport.mtu_discovery_config(Some(mtud));
        let transport = Arc::new(transport);

        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.server_config()?)
            .context("QUIC server TLS configuration")?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        let mut endpoint_cfg = quinn::EndpointConfig::default();
        endpoint_cfg
            .max_udp_payload_size(full)
            .context("QUIC max UDP payload")?;

        let socket = bind_socket(cfg.bind)?;
        let endpoint = Endpoint::new(
            endpoint_cfg,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .context("starting the QUIC endpoint")?;

        let inner = Arc::new(Inner {
            name: cfg.name,
            endpoint,
            tls,
            transport,
            backoff: (cfg.backoff_min, cfg.backoff_max.max(cfg.backoff_min)),
            peers: Mutex::new(HashMap::new()),
            live: DashMap::new(),
            counters: QuicCounters::default(),
            sink,
            last_attempt: AtomicU64::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(inner.clone()));
        Ok(QuicTransport { inner, accept_task })
    }

    /// Moves the endpoint to a new UDP socket bound to `addr` (this node's underlay
    /// address changed). The connections this node dialed migrate with it (quinn
    /// validates the new path with the peer); those it accepted die at their idle
    /// timeout, since QUIC does not move a server, and their dialers redial the address
    /// gossip then announces.
    pub fn rebind(&self, addr: SocketAddr) -> Result<()> {
        let socket = std::net::UdpSocket::bind(addr)
            .with_context(|| format!("binding the QUIC port {addr}"))?;
        self.inner
            .endpoint
            .rebind(socket)
            .context("moving the QUIC endpoint")
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.inner.endpoint.local_addr()?)
    }

    /// Sets the wanted peers (member name, tunnel address). Dials those the dial rule
    /// gives us, waits for the others; closes the connections of peers no longer listed.
    /// A changed address is dialed at once when the peer is not connected.
    pub fn set_peers(&self, wanted: &[(String, SocketAddr)]) {
        let inner = &self.inner;
        let mut peers = inner.peers();
        let wanted: HashMap<&str, SocketAddr> =
            wanted.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        peers.retain(|name, peer| {
            if wanted.contains_key(name.as_str()) {
                return true;
            }
            if let Some((task, _)) = peer.dialer.take() {
                task.abort();
            }
            if let Some((_, live)) = inner.live.remove(name) {
                live.conn
                    .close(VarInt::from_u32(close_code::GONE), b"peer removed");
            }
            false
        });
        for (name, addr) in wanted {
            if name == inner.name {
                continue;
            }
            if let Some(peer) = peers.get_mut(name) {
                if peer.addr != addr {
                    peer.addr = addr;
                    if let Some((_, addr_tx)) = &peer.dialer {
                        addr_tx.send_replace(addr);
                    }
                }
                continue;
            }
            let we_dial = dial::dialer(&inner.name, name) == Side::Local;
            let dialer = we_dial.then(|| {
                let (addr_tx, addr_rx) = watch::channel(addr);
                let task = tokio::spawn(dial_loop(inner.clone(), name.to_owned(), addr_rx));
                (task, addr_tx)
            });
            let state = match (inner.live.contains_key(name), we_dial) {
                (true, _) => ConnState::Connected,
                (false, true) => ConnState::Connecting,
                (false, false) => ConnState::Waiting,
            };
            peers.insert(
                name.to_owned(),
                Peer {
                    addr,
                    we_dial,
                    state,
                    reconnects: 0,
                    connections: 0,
                    last_error: None,
                    dialer,
                },
            );
        }
    }

    /// Sends one pod packet to `peer` as one datagram. Never waits; every failure is
    /// counted. On [`SendError::TooBig`] the caller answers with ICMP "fragmentation
    /// needed" naming [`QuicTransport::max_datagram_size`].
    pub fn send(&self, peer: &str, packet: &[u8]) -> Result<(), SendError> {
        self.send_bytes(peer, Bytes::copy_from_slice(packet))
    }

    /// [`QuicTransport::send`] for a packet already in a `Bytes` (no copy).
    pub fn send_bytes(&self, peer: &str, packet: Bytes) -> Result<(), SendError> {
        let c = &self.inner.counters;
        let Some(conn) = self.inner.live.get(peer).map(|l| l.conn.clone()) else {
            c.tx_no_connection.fetch_add(1, Relaxed);
            return Err(SendError::NoConnection);
        };
        let len = packet.len() as u64;
        match conn.send_datagram(packet) {
            Ok(()) => {
                c.tx_datagrams.fetch_add(1, Relaxed);
                c.tx_bytes.fetch_add(len, Relaxed);
                Ok(())
            }
            Err(quinn::SendDatagramError::TooLarge) => {
                c.tx_too_big.fetch_add(1, Relaxed);
                Err(SendError::TooBig {
                    max: conn.max_datagram_size().unwrap_or(0),
                })
            }
            Err(_) => {
                c.tx_unusable.fetch_add(1, Relaxed);
                Err(SendError::Unusable)
            }
        }
    }

    /// The largest pod packet `peer`'s connection carries now; `None` without one.
    pub fn max_datagram_size(&self, peer: &str) -> Option<usize> {
        self.inner
            .live
            .get(peer)
            .and_then(|l| l.conn.max_datagram_size())
    }

    /// Replaces CA, identity and revocation list: new handshakes use them at once, and
    /// every live connection whose peer certificate fails [`pki::verify_peer`] with them
    /// is closed (counted by reason and as `closed_on_reload`). Returns the members whose
    /// connections were closed. `identity` must name this node.
    pub fn reload(
        &self,
        ca: Ca,
        identity: &NodeIdentity,
        revoked: RevocationList,
    ) -> Result<Vec<String>> {
        anyhow::ensure!(
            identity.name == self.inner.name,
            "the new certificate is for {:?}, this node is {:?}",
            identity.name,
            self.inner.name
        );
        let trust = Trust::new(&self.inner.tls.provider, ca, identity, revoked)?;
        self.inner.tls.trust.store(Arc::new(trust));
        Ok(self.inner.recheck())
    }

    /// Replaces the revocation list only (it lives in gossip state) and closes the live
    /// connections whose certificate is now revoked. Returns their members.
    pub fn set_revoked(&self, revoked: RevocationList) -> Vec<String> {
        let tls = &self.inner.tls;
        let old = tls.trust.load_full();
        tls.trust.store(Arc::new(Trust {
            ca: old.ca.clone(),
            revoked,
            key: old.key.clone(),
        }));
        self.inner.recheck()
    }

    /// The certificate fingerprint each member's gossip record advertises. New handshakes
    /// with a member whose certificate has another fingerprint are refused and counted
    /// (`cert_fingerprint_mismatch`); a member absent from `advertised` is not checked
    /// (its record has none). Live connections are left as they are (a rotated
    /// certificate's new record must not cut the tunnel its old one carries; a
    /// certificate that must stop working is revoked).
    pub fn set_advertised(&self, advertised: HashMap<String, Fingerprint>) {
        self.inner.tls.advertised.store(Arc::new(advertised));
    }

    /// The fingerprint of the certificate this node presents.
    pub fn own_fingerprint(&self) -> Option<Fingerprint> {
        let trust = self.inner.tls.trust.load();
        trust.key.cert.first().map(|c| pki::fingerprint(c))
    }

    /// The revocation list in force.
    pub fn revoked(&self) -> RevocationList {
        self.inner.tls.trust.load().revoked.clone()
    }

    /// Every wanted peer's tunnel, by name.
    pub fn status(&self) -> Vec<PeerStatus> {
        let peers = self.inner.peers();
        let mut out: Vec<PeerStatus> = peers
            .iter()
            .map(|(name, p)| {
                let live = self.inner.live.get(name).map(|l| l.clone());
                PeerStatus {
                    name: name.clone(),
                    addr: p.addr,
                    we_dial: p.we_dial,
                    state: if live.is_some() {
                        ConnState::Connected
                    } else {
                        p.state
                    },
                    remote: live.as_ref().map(|l| l.conn.remote_address()),
                    rtt: live.as_ref().map(|l| l.conn.rtt()),
                    max_datagram_size: live.as_ref().and_then(|l| l.conn.max_datagram_size()),
                    cert_not_after: live.as_ref().and_then(|l| pki::not_after(&l.cert)),
                    cert_fingerprint: live.as_ref().map(|l| pki::fingerprint(&l.cert).to_string()),
                    reconnects: p.reconnects,
                    last_error: p.last_error.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The peer certificate's fingerprint of `peer`'s live connection.
    pub fn peer_fingerprint(&self, peer: &str) -> Option<Fingerprint> {
        self.inner.live.get(peer).map(|l| pki::fingerprint(&l.cert))
    }

    pub fn counters(&self) -> &QuicCounters {
        &self.inner.counters
    }

    /// How often a peer certificate was refused for `reason`.
    pub fn refusals(&self, reason: PeerCertError) -> u64 {
        self.inner.tls.refusals.get(reason)
    }

    /// Every counter, zeros included: the [`QuicCounters`] fields and `cert_<reason>`
    /// for every [`PeerCertError::reason`].
    pub fn to_map(&self) -> BTreeMap<String, u64> {
        let mut map: BTreeMap<String, u64> = self
            .inner
            .counters
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.load(Relaxed)))
            .collect();
        for r in PeerCertError::ALL {
            map.insert(format!("cert_{}", r.reason()), self.refusals(r));
        }
        map
    }

    /// Closes every connection and the endpoint, and waits (at most `grace`) until the
    /// peers were told.
    pub async fn shutdown(self, grace: Duration) {
        let endpoint = self.inner.endpoint.clone();
        drop(self);
        let _ = tokio::time::timeout(grace, endpoint.wait_idle()).await;
    }

    #[cfg(test)]
    fn live_ids(&self, peer: &str) -> Option<(usize, ConnectionInfo)> {
        self.inner
            .live
            .get(peer)
            .map(|l| (l.conn.stable_id(), l.info))
    }

    /// Dials `peer` once at `addr`, whatever the dial rule says (tests of convergence).
    #[cfg(test)]
    async fn dial_once(&self, peer: &str, addr: SocketAddr) -> Result<Connection> {
        let attempt = tls::next_attempt(&self.inner.last_attempt);
        let conn = self.inner.dial(peer, addr, attempt).await?;
        self.inner.register(
            peer,
            conn.clone(),
            ConnectionInfo {
                opened_by: Side::Local,
                attempt,
            },
        );
        Ok(conn)
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.accept_task.abort();
        for (_, mut peer) in self.inner.peers().drain() {
            if let Some((task, _)) = peer.dialer.take() {
                task.abort();
            }
        }
        self.inner.live.clear();
        self.inner
            .endpoint
            .close(VarInt::from_u32(close_code::GONE), b"shutdown");
    }
}

impl Inner {
    fn peers(&self) -> MutexGuard<'_, HashMap<String, Peer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(&self, name: &str, state: ConnState, error: Option<String>) {
        if let Some(p) = self.peers().get_mut(name) {
            p.state = state;
            if error.is_some() {
                p.last_error = error;
            }
        }
    }

    /// One dial: the handshake, with the verifier for `member`.
    async fn dial(&self, member: &str, addr: SocketAddr, attempt: u64) -> Result<Connection> {
        self.counters.dials.fetch_add(1, Relaxed);
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(self.tls.client_config(member)?)
                .context("QUIC client TLS configuration")?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(self.transport.clone());
        let connecting = self
            .endpoint
            .connect_with(client, addr, &tls::sni(attempt))
            .with_context(|| format!("dialing {member} at {addr}"))?;
        match connecting.await {
            Ok(conn) => {
                self.counters.connections_dialed.fetch_add(1, Relaxed);
                Ok(conn)
            }
            Err(e) => {
                self.counters.handshake_failures.fetch_add(1, Relaxed);
                Err(anyhow::Error::new(e).context(format!("handshake with {member} at {addr}")))
            }
        }
    }

    /// Makes `conn` the pair's connection, unless the peer is not wanted or the pair's
    /// live connection wins over it ([`dial::keep`]); the loser is closed. Returns whether
    /// `conn` was kept.
    fn register(self: &Arc<Self>, member: &str, conn: Connection, info: ConnectionInfo) -> bool {
        let Some(cert) = peer_cert(&conn) else {
            conn.close(VarInt::from_u32(close_code::BAD_HELLO), b"no certificate");
            return false;
        };
        let mut peers = self.peers();
        let Some(peer) = peers.get_mut(member) else {
            self.counters.refused_unknown_peer.fetch_add(1, Relaxed);
            conn.close(VarInt::from_u32(close_code::UNKNOWN_PEER), b"unknown peer");
            return false;
        };
        if let Some(existing) = self.live.get(member).map(|l| l.clone()) {
            let loser = match dial::keep(&self.name, member, existing.info, info) {
                Keep::First => &conn,
                Keep::Second => &existing.conn,
            };
            self.counters.duplicates_closed.fetch_add(1, Relaxed);
            loser.close(VarInt::from_u32(close_code::DUPLICATE), b"duplicate");
            if loser.stable_id() == conn.stable_id() {
                return false;
            }
        }
        peer.connections += 1;
        if peer.connections > 1 && !peer.we_dial {
            peer.reconnects += 1;
        }
        peer.state = ConnState::Connected;
        self.live.insert(
            member.to_owned(),
            Live {
                conn: conn.clone(),
                info,
                cert,
            },
        );
        drop(peers);
        tokio::spawn(read_loop(self.clone(), Arc::from(member), conn));
        true
    }

    /// Re-checks every live connection's certificate against the current trust; closes
    /// and counts those that fail.
    fn recheck(&self) -> Vec<String> {
        let trust = self.tls.trust.load_full();
        let now = SystemTime::now();
        let mut closed = Vec::new();
        self.live.retain(|member, live| {
            match pki::verify_peer(&trust.ca, &trust.revoked, &live.cert, member, now) {
                Ok(()) => true,
                Err(e) => {
                    self.tls.refusals.count(e);
                    self.counters.closed_on_reload.fetch_add(1, Relaxed);
                    live.conn.close(
                        VarInt::from_u32(close_code::CERT_REFUSED),
                        e.reason().as_bytes(),
                    );
                    closed.push((member.clone(), e));
                    false
                }
            }
        });
        // The read loop finds the connection gone from `live` and leaves the state alone:
        // set it here, or an accepting side would go on showing `connected`.
        let mut peers = self.peers();
        for (member, e) in &closed {
            if let Some(p) = peers.get_mut(member) {
                p.state = if p.we_dial {
                    ConnState::Backoff
                } else {
                    ConnState::Waiting
                };
                p.last_error = Some(format!("closed: {e}"));
            }
        }
        drop(peers);
        let mut closed: Vec<String> = closed.into_iter().map(|(m, _)| m).collect();
        closed.sort();
        closed
    }
}

/// The peer's end-entity certificate of a connection that completed its handshake.
fn peer_cert(conn: &Connection) -> Option<CertificateDer<'static>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?
        .into_iter()
        .next()
}

/// Accepts connections until the endpoint closes.
async fn accept_loop(inner: Arc<Inner>) {
    let endpoint = inner.endpoint.clone();
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(accept(inner.clone(), incoming));
    }
}

/// One incoming connection: the handshake (the verifier checked the certificate for the
/// member it names), then the dial rule and the wanted peers.
async fn accept(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            inner.counters.handshake_failures.fetch_add(1, Relaxed);
            tracing::debug!("QUIC handshake from a peer failed: {e}");
            return;
        }
    };
    let Some(member) = peer_cert(&conn).and_then(|c| pki::member_name(&c).ok()) else {
        conn.close(VarInt::from_u32(close_code::BAD_HELLO), b"no certificate");
        return;
    };
    let attempt = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.server_name)
        .and_then(|sni| tls::attempt_from_sni(&sni));
    let Some(attempt) = attempt else {
        inner.counters.refused_bad_hello.fetch_add(1, Relaxed);
        conn.close(VarInt::from_u32(close_code::BAD_HELLO), b"no attempt");
        return;
    };
    if !inner.peers().contains_key(&member) {
        inner.counters.refused_unknown_peer.fetch_add(1, Relaxed);
        conn.close(VarInt::from_u32(close_code::UNKNOWN_PEER), b"unknown peer");
        return;
    }
    if dial::dialer(&inner.name, &member) != Side::Peer {
        inner.counters.refused_not_dialer.fetch_add(1, Relaxed);
        conn.close(VarInt::from_u32(close_code::NOT_DIALER), b"not the dialer");
        return;
    }
    inner.counters.connections_accepted.fetch_add(1, Relaxed);
    inner.register(
        &member,
        conn,
        ConnectionInfo {
            opened_by: Side::Peer,
            attempt,
        },
    );
}

/// Delivers a connection's datagrams to the sink until it ends, then forgets it: waits
/// for the first, takes what else quinn already holds (up to [`RX_BATCH`]), delivers.
async fn read_loop(inner: Arc<Inner>, member: Arc<str>, conn: Connection) {
    let c = &inner.counters;
    let mut batch = Vec::with_capacity(RX_BATCH);
    let reason = loop {
        let mut end = match conn.read_datagram().await {
            Ok(data) => {
                batch.push(data);
                None
            }
            Err(e) => break e,
        };
        while batch.len() < RX_BATCH {
            match conn.read_datagram().now_or_never() {
                Some(Ok(data)) => batch.push(data),
                Some(Err(e)) => {
                    end = Some(e);
                    break;
                }
                None => break,
            }
        }
        c.rx_datagrams.fetch_add(batch.len() as u64, Relaxed);
        let bytes: usize = batch.iter().map(Bytes::len).sum();
        c.rx_bytes.fetch_add(bytes as u64, Relaxed);
        let dropped = inner.sink.deliver(&member, &mut batch).await;
        c.rx_queue_full.fetch_add(dropped as u64, Relaxed);
        batch.clear();
        if let Some(e) = end {
            break e;
        }
    };
    let ours = inner
        .live
        .remove_if(&*member, |_, l| l.conn.stable_id() == conn.stable_id())
        .is_some();
    if ours {
        inner.counters.connections_lost.fetch_add(1, Relaxed);
        let mut peers = inner.peers();
        if let Some(p) = peers.get_mut(&*member) {
            p.last_error = Some(reason.to_string());
            if !p.we_dial {
                p.state = ConnState::Waiting;
            }
        }
    }
}

/// Dials `member` while it is wanted (the task is aborted when it is not): watches the
/// pair's live connection while there is one, then redials, with exponential backoff
/// after failures and at once on a new address.
async fn dial_loop(inner: Arc<Inner>, member: String, mut addr_rx: watch::Receiver<SocketAddr>) {
    let (min, max) = inner.backoff;
    let mut backoff = min;
    let mut dialed = false;
    loop {
        // A new address while connected: the connection stays (quinn follows a peer
        // that moved when it is the one that moved); the address is dialed once the
        // connection ends.
        let mut ended = None;
        let since = tokio::time::Instant::now();
        loop {
            let current = inner.live.get(&member).map(|l| l.conn.clone());
            let Some(current) = current else { break };
            tokio::select! {
                e = current.closed() => {
                    ended = Some(e.to_string());
                    inner.live.remove_if(&member, |_, l| l.conn.stable_id() == current.stable_id());
                }
                changed = addr_rx.changed() => if changed.is_err() {
                    return;
                },
            }
        }
        if let Some(why) = ended {
            // A connection that lived was a success: redial after the minimum. One the
            // peer closed at once (it refused our certificate after the handshake, or
            // kept another connection) backs off like a failed dial.
            if since.elapsed() >= LIVED {
                backoff = min;
            }
            inner.set_state(&member, ConnState::Backoff, Some(why));
            tokio::select! {
                _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(max),
                changed = addr_rx.changed() => if changed.is_err() { return },
            }
        }

        let addr = *addr_rx.borrow_and_update();
        if dialed && let Some(p) = inner.peers().get_mut(&member) {
            p.reconnects += 1;
        }
        dialed = true;
        inner.set_state(&member, ConnState::Connecting, None);
        let attempt = tls::next_attempt(&inner.last_attempt);
        // A new address ends a handshake with the old one (which could take the idle
        // timeout to fail): the new one is dialed at once.
        let result = tokio::select! {
            r = inner.dial(&member, addr, attempt) => r,
            changed = addr_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                backoff = min;
                continue;
            }
        };
        match result {
            Ok(conn) => {
                let info = ConnectionInfo {
                    opened_by: Side::Local,
                    attempt,
                };
                if inner.register(&member, conn, info) {
                    continue;
                }
            }
            Err(e) => {
                tracing::debug!("QUIC: {e:#}");
                inner.set_state(&member, ConnState::Backoff, Some(format!("{e:#}")));
            }
        }
        inner.set_state(&member, ConnState::Backoff, None);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(max),
            changed = addr_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                backoff = min;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
