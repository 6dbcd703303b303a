//! The cluster DNS server: UDP and TCP on the node's bridge gateway (port 53), answering
//! from the Service table the daemon swaps in and forwarding other names to the node's
//! resolvers. Every answer is decided by [`overlayd_proto::service::dns`]; this module
//! only moves bytes, keeps time and counts.
//!
//! - UDP: one socket; a query answered from the table is answered inline, a forwarded
//!   one gets its own task (at most [`DnsSettings::max_forwards`] at once; beyond that
//!   queries are dropped, counted, and the client retries) and its own ephemeral
//!   connected socket per upstream try, so the kernel only delivers datagrams from that
//!   upstream to a random port, and the reply must also carry the query's id and question.
//! - TCP: length-prefixed messages, several per connection, answered in order; at most
//!   [`DnsSettings::max_tcp_connections`] at once (more are closed at once), each closed
//!   after [`DnsSettings::tcp_idle_timeout`] without a complete query. Forwarded TCP
//!   queries go upstream over TCP.
//! - Upstreams are tried in order, each for [`DnsSettings::forward_timeout`]; a timeout,
//!   a refused port or a SERVFAIL/REFUSED answer moves to the next. When none answers
//!   the client gets SERVFAIL (`forward_failed`). The listen address itself is never an
//!   upstream (a node whose resolv.conf names the gateway would loop).
//! - Sockets are bound with `IP_FREEBIND`, so the server can start before the bridge has
//!   its address, and [`DnsServer::move_to`] rebinds when the node's subnet changes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use arc_swap::ArcSwap;
use overlayd_proto::service::dns::{
    Answer, DropReason, Responder, Transport, UpstreamReply, check_upstream_reply,
    resolv_conf_nameservers, upstreams,
};
use overlayd_proto::service::{Endpoint, ServiceKey, ServiceTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};

/// Which endpoints of a headless Service are ready (the proxy's health state). Asked for
/// every headless answer, so it may read live state.
pub type Readiness = Arc<dyn Fn(&ServiceKey, &Endpoint) -> bool + Send + Sync>;

/// Readiness when nothing checks health: every endpoint is ready.
pub fn all_ready() -> Readiness {
    Arc::new(|_, _| true)
}

/// The largest DNS message: TCP frames carry a 16-bit length, and a UDP datagram cannot
/// be larger either.
const MAX_MESSAGE: usize = 65_535;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// Where to listen, UDP and TCP: the bridge gateway and 53. Port 0 picks one free
    /// port for both (tests).
    pub listen: SocketAddrV4,
    /// The cluster domain, `cluster.local` by default.
    pub domain: String,
    /// Resolvers for names outside the domain, tried in order.
    pub upstreams: Vec<SocketAddrV4>,
    /// How long one upstream has to answer before the next is tried. Default 2 s: with
    /// two upstreams the client (glibc: 5 s) still gets our SERVFAIL before it gives up.
    pub forward_timeout: Duration,
    /// Forwarded UDP queries in flight at once. Default 256.
    pub max_forwards: usize,
    /// TCP connections at once. Default 64.
    pub max_tcp_connections: usize,
    /// A TCP connection that sends no complete query for this long is closed. Default
    /// 10 s (RFC 7766 asks for seconds, not minutes, so idle clients don't pin slots).
    pub tcp_idle_timeout: Duration,
}

impl DnsSettings {
    pub fn new(listen: SocketAddrV4, upstreams: Vec<SocketAddrV4>) -> Self {
        DnsSettings {
            listen,
            domain: overlayd_proto::service::dns::DEFAULT_DOMAIN.to_owned(),
            upstreams,
            forward_timeout: Duration::from_secs(2),
            max_forwards: 256,
            max_tcp_connections: 64,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// The upstreams for a node: `configured` (`dns.upstream`) if any, else the IPv4
/// nameservers of `resolv_conf` (the node's /etc/resolv.conf) on port 53. The server
/// leaves out its own address whatever this returns.
pub fn node_upstreams(
    configured: &[SocketAddrV4],
    resolv_conf: &Path,
) -> Result<Vec<SocketAddrV4>> {
    if !configured.is_empty() {
        return Ok(configured.to_vec());
    }
    let text = std::fs::read_to_string(resolv_conf)
        .with_context(|| format!("reading {}", resolv_conf.display()))?;
    Ok(resolv_conf_nameservers(&text)
        .into_iter()
        .map(|ip| SocketAddrV4::new(ip, 53))
        .collect())
}

/// What the server counts; see [`DnsServer::counters`].
#[derive(Debug, Default)]
struct Counters {
    queries: AtomicU64,
    answered: AtomicU64,
    nxdomain: AtomicU64,
    truncated: AtomicU64,
    forwarded: AtomicU64,
    forward_failed: AtomicU64,
    tcp_connections: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    dropped_forward_busy: AtomicU64,
    dropped_tcp_busy: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    fn drop_reason(&self, reason: DropReason) {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == reason) {
            Self::bump(&self.dropped[i]);
        }
    }

    fn to_map(&self) -> BTreeMap<String, u64> {
        let mut map: BTreeMap<String, u64> = [
            ("queries", &self.queries),
            ("answered", &self.answered),
            ("nxdomain", &self.nxdomain),
            ("truncated", &self.truncated),
            ("forwarded", &self.forwarded),
            ("forward_failed", &self.forward_failed),
            ("tcp_connections", &self.tcp_connections),
            ("dropped_forward_busy", &self.dropped_forward_busy),
            ("dropped_tcp_busy", &self.dropped_tcp_busy),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.load(Relaxed)))
        .collect();
        for (reason, count) in DropReason::ALL.iter().zip(&self.dropped) {
            map.insert(format!("dropped_{}", reason.as_str()), count.load(Relaxed));
        }
        map
    }
}

/// What answers are made from; swapped whole so an answer never mixes two tables.
struct View {
    table: Arc<ServiceTable>,
    ready: Readiness,
}

/// Shared by the listener tasks and every query task.
struct Inner {
    responder: Responder,
    view: ArcSwap<View>,
    upstreams: ArcSwap<Vec<SocketAddrV4>>,
    listen: ArcSwap<SocketAddrV4>,
    forward_timeout: Duration,
    tcp_idle_timeout: Duration,
    forward_slots: Arc<Semaphore>,
    tcp_slots: Arc<Semaphore>,
    counters: Counters,
    /// Set on stop: connection tasks end instead of waiting out their idle timeout.
    stop: watch::Sender<bool>,
}

/// The listener tasks of the current address.
struct Listeners {
    addr: SocketAddrV4,
    udp: JoinHandle<()>,
    tcp: JoinHandle<()>,
}

impl Listeners {
    fn abort(&self) {
        self.udp.abort();
        self.tcp.abort();
    }
}

/// A running DNS server. Dropping it stops it.
pub struct DnsServer {
    inner: Arc<Inner>,
    listeners: Mutex<Listeners>,
}

impl DnsServer {
    /// Binds `settings.listen` (UDP and TCP, with `IP_FREEBIND`) and serves `table`, every
    /// endpoint ready until [`DnsServer::set_readiness`] says otherwise. Must be called
    /// within a Tokio runtime.
    pub async fn start(settings: DnsSettings, table: Arc<ServiceTable>) -> Result<DnsServer> {
        let responder = Responder::new(&settings.domain)?;
        let (udp, tcp, addr) = bind_pair(settings.listen)?;
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            responder,
            view: ArcSwap::from_pointee(View {
                table,
                ready: all_ready(),
            }),
            upstreams: ArcSwap::from_pointee(settings.upstreams),
            listen: ArcSwap::from_pointee(addr),
            forward_timeout: settings.forward_timeout,
            tcp_idle_timeout: settings.tcp_idle_timeout,
            forward_slots: Arc::new(Semaphore::new(settings.max_forwards.max(1))),
            tcp_slots: Arc::new(Semaphore::new(settings.max_tcp_connections.max(1))),
            counters: Counters::default(),
            stop,
        });
        let listeners = spawn_listeners(&inner, udp, tcp, addr);
        tracing::info!(%addr, domain = %inner.responder.domain(), "cluster DNS listening");
        Ok(DnsServer {
            inner,
            listeners: Mutex::new(listeners),
        })
    }

    /// Where the server listens now (UDP and TCP share the port).
    pub fn local_addr(&self) -> SocketAddrV4 {
        **self.inner.listen.load()
    }

    /// Answers from `table` from the next query on.
    pub fn set_table(&self, table: Arc<ServiceTable>) {
        let ready = self.inner.view.load().ready.clone();
        self.inner.view.store(Arc::new(View { table, ready }));
    }

    /// Gives headless answers only the endpoints `ready` accepts.
    pub fn set_readiness(&self, ready: Readiness) {
        let table = self.inner.view.load().table.clone();
        self.inner.view.store(Arc::new(View { table, ready }));
    }

    /// Replaces the upstream resolvers (a config reload, a changed resolv.conf).
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddrV4>) {
        self.inner.upstreams.store(Arc::new(upstreams));
    }

    /// Moves the server to `addr` (the node's new gateway after a subnet change): binds
    /// there first, and only then stops listening on the old address, so a failure leaves
    /// it serving where it was. Queries in flight on the old address are still answered.
    pub fn move_to(&self, addr: SocketAddrV4) -> Result<()> {
        let mut current = self
            .listeners
            .lock()
            .map_err(|_| anyhow!("DNS listener lock poisoned"))?;
        if addr == current.addr {
            return Ok(());
        }
        let (udp, tcp, bound) = bind_pair(addr)?;
        let next = spawn_listeners(&self.inner, udp, tcp, bound);
        current.abort();
        tracing::info!(from = %current.addr, to = %bound, "cluster DNS moved");
        *current = next;
        self.inner.listen.store(Arc::new(bound));
        Ok(())
    }

    /// Counters for `overlayd status`: `queries` (messages received), `answered` (from the
    /// table, any rcode), `nxdomain` and `truncated` (of those), `forwarded` (sent
    /// upstream, ExternalName chases included), `forward_failed` (no upstream answered:
    /// SERVFAIL), `tcp_connections` (accepted), `dropped_<reason>`.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.inner.counters.to_map()
    }

    /// Stops listening and ends open TCP connections. Forwarded queries in flight finish
    /// within their timeouts.
    pub fn stop(&self) {
        if let Ok(l) = self.listeners.lock() {
            l.abort();
        }
        self.inner.stop.send_replace(true);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_listeners(
    inner: &Arc<Inner>,
    udp: UdpSocket,
    tcp: TcpListener,
    addr: SocketAddrV4,
) -> Listeners {
    Listeners {
        addr,
        udp: tokio::spawn(serve_udp(inner.clone(), Arc::new(udp))),
        tcp: tokio::spawn(serve_tcp(inner.clone(), tcp)),
    }
}

/// Binds UDP and TCP on `addr`. With port 0, one port free for both (a few tries: the
/// kernel picks the UDP port, and TCP may hold it already).
fn bind_pair(addr: SocketAddrV4) -> Result<(UdpSocket, TcpListener, SocketAddrV4)> {
    let mut last = None;
    for _ in 0..16 {
        let udp = bind_socket(addr, socket2::Type::DGRAM)
            .with_context(|| format!("binding DNS UDP {addr}"))?;
        let port = match udp.local_addr()?.as_socket() {
            Some(SocketAddr::V4(a)) => a.port(),
            _ => return Err(anyhow!("DNS UDP socket has no IPv4 address")),
        };
        let bound = SocketAddrV4::new(*addr.ip(), port);
        match bind_socket(bound, socket2::Type::STREAM) {
            Ok(tcp) => {
                tcp.listen(128)?;
                let udp = UdpSocket::from_std(udp.into())?;
                let tcp = TcpListener::from_std(tcp.into())?;
                return Ok((udp, tcp, bound));
            }
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
                last = Some(e);
            }
            Err(e) => return Err(e).with_context(|| format!("binding DNS TCP {bound}")),
        }
    }
    Err(anyhow!(
        "no port free for both UDP and TCP on {}: {last:?}",
        addr.ip()
    ))
}

fn bind_socket(addr: SocketAddrV4, ty: socket2::Type) -> std::io::Result<socket2::Socket> {
    let proto = if ty == socket2::Type::DGRAM {
        socket2::Protocol::UDP
    } else {
        socket2::Protocol::TCP
    };
    let sock = socket2::Socket::new(socket2::Domain::IPV4, ty, Some(proto))?;
    // The bridge gateway may not exist yet (the daemon starts DNS before the bridge is
    // addressed, or moves it before the new address is set).
    sock.set_freebind_v4(true)?;
    if ty == socket2::Type::STREAM {
        // A restarted daemon must get port 53 back while old connections sit in TIME_WAIT.
        sock.set_reuse_address(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddr::V4(addr).into())?;
    Ok(sock)
}

async fn serve_udp(inner: Arc<Inner>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, client) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("DNS UDP receive: {e}");
                tokio::time::sleep(crate::gossip::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        Counters::bump(&inner.counters.queries);
        let query = &buf[..n];
        match inner.decide(query, Transport::Udp) {
            Answer::Reply(reply) => {
                send_udp(&sock, &reply.bytes, client).await;
            }
            Answer::Drop(reason) => inner.counters.drop_reason(reason),
            answer @ (Answer::Forward | Answer::Chase(_)) => {
                let Ok(permit) = inner.forward_slots.clone().try_acquire_owned() else {
                    Counters::bump(&inner.counters.dropped_forward_busy);
                    continue;
                };
                let (inner, sock, query) = (inner.clone(), sock.clone(), query.to_vec());
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(bytes) = inner.complete(answer, &query, Transport::Udp).await {
                        send_udp(&sock, &bytes, client).await;
                    }
                });
            }
        }
    }
}

async fn send_udp(sock: &UdpSocket, bytes: &[u8], client: SocketAddr) {
    if let Err(e) = sock.send_to(bytes, client).await {
        tracing::debug!(%client, "DNS UDP send: {e}");
    }
}

async fn serve_tcp(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!("accepting DNS TCP: {e}");
                tokio::time::sleep(crate::gossip::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = inner.tcp_slots.clone().try_acquire_owned() else {
            Counters::bump(&inner.counters.dropped_tcp_busy);
            continue;
        };
        Counters::bump(&inner.counters.tcp_connections);
        let inner = inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut stop = inner.stop.subscribe();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                r = tcp_connection(&inner, stream) => {
                    if let Err(e) = r {
                        tracing::debug!("DNS TCP connection: {e:#}");
                    }
                }
            }
        });
    }
}

/// Answers length-prefixed queries on one connection, in order, until the client closes,
/// idles or errs.
async fn tcp_connection(inner: &Inner, mut stream: TcpStream) -> Result<()> {
    loop {
        let Some(query) = read_frame(&mut stream, inner.tcp_idle_timeout).await? else {
            return Ok(());
        };
        Counters::bump(&inner.counters.queries);
        let reply = match inner.decide(&query, Transport::Tcp) {
            Answer::Reply(reply) => Some(reply.bytes),
            Answer::Drop(reason) => {
                inner.counters.drop_reason(reason);
                None
            }
            answer => inner.complete(answer, &query, Transport::Tcp).await,
        };
        if let Some(reply) = reply {
            timeout(inner.tcp_idle_timeout, write_frame(&mut stream, &reply))
                .await
                .map_err(|_| {
                    anyhow!("client read no reply within {:?}", inner.tcp_idle_timeout)
                })??;
        }
    }
}

/// One length-prefixed message; `None` when the client closed (or idled) between
/// messages. The length is read first and the body as it arrives, within the timeout.
async fn read_frame(stream: &mut TcpStream, idle: Duration) -> Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + idle;
    let len = match timeout_at(deadline, stream.read_u16()).await {
        Ok(Ok(len)) => usize::from(len),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Ok(None),
    };
    let mut body = vec![0u8; len];
    timeout_at(deadline, stream.read_exact(&mut body))
        .await
        .map_err(|_| anyhow!("no complete message within {idle:?}"))??;
    Ok(Some(body))
}

async fn write_frame(stream: &mut TcpStream, message: &[u8]) -> Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| anyhow!("message over 65535 bytes"))?;
    let mut frame = Vec::with_capacity(2 + message.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    stream.write_all(&frame).await?;
    Ok(())
}

impl Inner {
    /// The responder's decision, counting local answers.
    fn decide(&self, query: &[u8], transport: Transport) -> Answer {
        let view = self.view.load();
        let answer =
            self.responder
                .answer(query, &view.table, |k, e| (view.ready)(k, e), transport);
        if let Answer::Reply(reply) = &answer {
            self.count_reply(reply);
        }
        answer
    }

    fn count_reply(&self, reply: &overlayd_proto::service::dns::Reply) {
        Counters::bump(&self.counters.answered);
        if reply.rcode == hickory_proto::op::ResponseCode::NXDomain {
            Counters::bump(&self.counters.nxdomain);
        }
        if reply.truncated {
            Counters::bump(&self.counters.truncated);
        }
    }

    /// Carries out a `Forward` or `Chase`: the bytes to send back to the client, if any.
    async fn complete(
        &self,
        answer: Answer,
        query: &[u8],
        transport: Transport,
    ) -> Option<Vec<u8>> {
        match answer {
            Answer::Forward => {
                Counters::bump(&self.counters.forwarded);
                match self.forward(query, transport, false).await {
                    Some(reply) => Some(reply),
                    None => {
                        Counters::bump(&self.counters.forward_failed);
                        self.responder.servfail(query, transport).map(|r| r.bytes)
                    }
                }
            }
            Answer::Chase(chase) => {
                Counters::bump(&self.counters.forwarded);
                // Asked over UDP first, whatever the client used: the upstream's answer
                // for one name is small, and a truncated one is asked again over TCP.
                let upstream = self.forward(&chase.query, Transport::Udp, true).await;
                if upstream.is_none() {
                    Counters::bump(&self.counters.forward_failed);
                }
                match self.responder.finish_chase(*chase, upstream.as_deref()) {
                    Some(reply) => Some(reply.bytes),
                    None => {
                        self.counters.drop_reason(DropReason::Unencodable);
                        None
                    }
                }
            }
            Answer::Reply(reply) => Some(reply.bytes),
            Answer::Drop(reason) => {
                self.counters.drop_reason(reason);
                None
            }
        }
    }

    /// Sends `query` to each upstream in turn until one answers; `None` if none did.
    /// Over UDP a truncated answer is passed back as it is (the client retries over TCP)
    /// unless the query is our `own` (a chase): then the same upstream is asked over TCP.
    async fn forward(&self, query: &[u8], transport: Transport, own: bool) -> Option<Vec<u8>> {
        let listen = **self.listen.load();
        let candidates = upstreams(self.upstreams.load().iter().copied(), listen);
        let mut fallback = None;
        for upstream in candidates {
            let attempt = match transport {
                Transport::Udp => self.ask_udp(query, upstream).await,
                Transport::Tcp => self.ask_tcp(query, upstream).await,
            };
            let reply = match attempt {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::debug!(%upstream, "DNS upstream failed: {e:#}");
                    continue;
                }
            };
            match check_upstream_reply(query, &reply) {
                UpstreamReply::Answer => return Some(reply),
                UpstreamReply::Truncated if own && transport == Transport::Udp => {
                    // Our own query (a chase): nobody else will retry it over TCP.
                    return match self.ask_tcp(query, upstream).await {
                        Ok(full) if check_upstream_reply(query, &full) == UpstreamReply::Answer => {
                            Some(full)
                        }
                        _ => Some(reply),
                    };
                }
                UpstreamReply::Truncated => return Some(reply),
                UpstreamReply::TryNext => fallback = Some(reply),
                UpstreamReply::Ignore => {}
            }
        }
        fallback
    }

    /// One UDP exchange with `upstream` from a fresh connected socket: its first datagram
    /// that is a reply to `query` (others are ignored), within the forward timeout.
    async fn ask_udp(&self, query: &[u8], upstream: SocketAddrV4) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.forward_timeout;
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).await?;
        sock.connect(upstream).await?;
        sock.send(query).await?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let n = timeout_at(deadline, sock.recv(&mut buf))
                .await
                .map_err(|_| anyhow!("no answer within {:?}", self.forward_timeout))??;
            let reply = &buf[..n];
            if check_upstream_reply(query, reply) != UpstreamReply::Ignore {
                return Ok(reply.to_vec());
            }
        }
    }

    /// One TCP exchange with `upstream`, all of it within the forward timeout.
    async fn ask_tcp(&self, query: &[u8], upstream: SocketAddrV4) -> Result<Vec<u8>> {
        let exchange = async {
            let mut stream = TcpStream::connect(upstream).await?;
            write_frame(&mut stream, query).await?;
            loop {
                let len = usize::from(stream.read_u16().await?);
                let mut body = vec![0u8; len];
                stream.read_exact(&mut body).await?;
                if check_upstream_reply(query, &body) != UpstreamReply::Ignore {
                    return Ok::<_, anyhow::Error>(body);
                }
            }
        };
        timeout(self.forward_timeout, exchange)
            .await
            .map_err(|_| anyhow!("no answer within {:?}", self.forward_timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use overlayd_proto::service::spec::{
        Algorithm, HealthCheck, Protocol, ServiceType, SessionAffinity,
    };
    use overlayd_proto::service::{ResolvedPort, ResolvedService, ServiceStatus};
    use std::time::Instant as StdInstant;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    /// What the fake upstream answers for `example.com`.
    const EXAMPLE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    fn service(name: &str, cluster_ip: Option<Ipv4Addr>, endpoints: u8) -> ResolvedService {
        ResolvedService {
            key: ServiceKey::new("default", name),
            kind: ServiceType::ClusterIp,
            cluster_ip,
            external_ip: None,
            external_name: None,
            ports: vec![ResolvedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: 8080,
                node_port: None,
                proxy_protocol: false,
            }],
            endpoints: (1..=endpoints)
                .map(|i| Endpoint {
                    ip: Ipv4Addr::new(10, 244, 0, i),
                    port: None,
                    node: None,
                    pod: None,
                })
                .collect(),
            algorithm: Algorithm::RoundRobin,
            affinity: SessionAffinity::None,
            affinity_timeout_s: 10_800,
            health: HealthCheck::default(),
            status: ServiceStatus::Active,
        }
    }

    /// web.default (VIP), big.default (headless, 60 endpoints), ext.default
    /// (ExternalName example.com).
    fn table() -> Arc<ServiceTable> {
        let mut t = ServiceTable::default();
        let mut ext = service("ext", None, 0);
        ext.kind = ServiceType::ExternalName;
        ext.external_name = Some("example.com".into());
        for s in [service("web", Some(VIP), 1), service("big", None, 60), ext] {
            t.services.insert(s.key.clone(), s);
        }
        Arc::new(t)
    }

    fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        m.to_vec().expect("encode")
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    async fn udp_ask(server: SocketAddrV4, bytes: &[u8], wait: Duration) -> Option<Message> {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        sock.send_to(bytes, server).await.expect("send");
        let mut buf = vec![0u8; MAX_MESSAGE];
        let n = timeout(wait, sock.recv(&mut buf)).await.ok()?.ok()?;
        Some(Message::from_vec(&buf[..n]).expect("reply parses"))
    }

    /// Sends every query on one TCP connection, then reads as many replies.
    async fn tcp_ask(server: SocketAddrV4, queries: &[Vec<u8>]) -> Vec<Message> {
        let mut stream = TcpStream::connect(server).await.expect("connect");
        let mut out = Vec::new();
        for q in queries {
            write_frame(&mut stream, q).await.expect("write");
        }
        for _ in queries {
            let body = read_frame(&mut stream, Duration::from_secs(5))
                .await
                .expect("read")
                .expect("a reply");
            out.push(Message::from_vec(&body).expect("reply parses"));
        }
        out
    }

    fn settings(upstreams: Vec<SocketAddrV4>) -> DnsSettings {
        let mut s = DnsSettings::new(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 0), upstreams);
        s.forward_timeout = Duration::from_millis(300);
        s
    }

    /// A resolver on loopback, UDP and TCP on one port: `example.com` A is [`EXAMPLE`],
    /// everything else NXDOMAIN. Counts the queries it got.
    struct FakeUpstream {
        addr: SocketAddrV4,
        queries: Arc<AtomicU64>,
        tasks: [JoinHandle<()>; 2],
    }

    impl Drop for FakeUpstream {
        fn drop(&mut self) {
            self.tasks.iter().for_each(JoinHandle::abort);
        }
    }

    fn upstream_answer(query: &[u8]) -> Vec<u8> {
        let q = Message::from_vec(query).expect("upstream got a query");
        let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        r.metadata.recursion_desired = q.metadata.recursion_desired;
        r.metadata.recursion_available = true;
        r.queries = q.queries.clone();
        let question = &q.queries[0];
        if question
            .name()
            .to_ascii()
            .eq_ignore_ascii_case("example.com.")
            && question.query_type() == RecordType::A
        {
            r.add_answer(Record::from_rdata(
                question.name().clone(),
                60,
                RData::A(A(EXAMPLE)),
            ));
        } else {
            r.metadata.response_code = ResponseCode::NXDomain;
        }
        r.to_vec().expect("encode")
    }

    fn fake_upstream() -> FakeUpstream {
        let (udp, tcp, addr) =
            bind_pair(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind upstream");
        let queries = Arc::new(AtomicU64::new(0));
        let count = queries.clone();
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_MESSAGE];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                count.fetch_add(1, Relaxed);
                let _ = udp.send_to(&upstream_answer(&buf[..n]), from).await;
            }
        });
        let count = queries.clone();
        let tcp_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    while let Ok(Some(q)) = read_frame(&mut stream, Duration::from_secs(5)).await {
                        count.fetch_add(1, Relaxed);
                        if write_frame(&mut stream, &upstream_answer(&q))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        FakeUpstream {
            addr,
            queries,
            tasks: [udp_task, tcp_task],
        }
    }

    /// A UDP port that takes queries and never answers (its socket stays open, so no
    /// ICMP error hurries the forwarder along).
    async fn silent_upstream() -> (SocketAddrV4, UdpSocket) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = match sock.local_addr().expect("addr") {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        };
        (addr, sock)
    }

    #[tokio::test]
    async fn answers_services_over_udp_and_several_queries_per_tcp_connection() {
        let server = DnsServer::start(settings(vec![]), table())
            .await
            .expect("start");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        let m = udp_ask(
            addr,
            &query(7, "web.default.svc.cluster.local.", RecordType::A),
            Duration::from_secs(3),
        )
        .await
        .expect("UDP reply");
        assert_eq!(m.metadata.id, 7);
        assert_eq!(a_records(&m), vec![VIP]);

        let replies = tcp_ask(
            addr,
            &[
                query(8, "web.default.svc.cluster.local.", RecordType::A),
                query(9, "nosuch.default.svc.cluster.local.", RecordType::A),
                query(
                    10,
                    "_http._tcp.web.default.svc.cluster.local.",
                    RecordType::SRV,
                ),
            ],
        )
        .await;
        assert_eq!(
            replies.iter().map(|m| m.metadata.id).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert_eq!(a_records(&replies[0]), vec![VIP]);
        assert_eq!(replies[1].metadata.response_code, ResponseCode::NXDomain);
        assert!(matches!(&replies[2].answers[0].data, RData::SRV(s) if s.port == 80));

        let c = server.counters();
        assert_eq!(c["queries"], 4);
        assert_eq!(c["answered"], 4);
        assert_eq!(c["nxdomain"], 1);
        assert_eq!(c["tcp_connections"], 1);
        assert_eq!(c["forwarded"], 0);
    }

    #[tokio::test]
    async fn forwards_other_names_to_the_next_upstream_that_answers() {
        let up = fake_upstream();
        let (silent, _keep) = silent_upstream().await;
        // The silent one first: the forwarder must give up on it and try the next.
        let server = DnsServer::start(settings(vec![silent, up.addr]), table())
            .await
            .expect("start");
        let addr = server.local_addr();

        let m = udp_ask(
            addr,
            &query(21, "example.com.", RecordType::A),
            Duration::from_secs(3),
        )
        .await
        .expect("UDP reply");
        assert_eq!(m.metadata.id, 21);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_records(&m), vec![EXAMPLE]);

        // Over TCP the forwarder asks over TCP too; the upstream's NXDOMAIN comes back.
        let replies = tcp_ask(
            addr,
            &[
                query(22, "example.com.", RecordType::A),
                query(23, "nosuch.example.", RecordType::A),
            ],
        )
        .await;
        assert_eq!(a_records(&replies[0]), vec![EXAMPLE]);
        assert_eq!(replies[1].metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(up.queries.load(Relaxed), 3);

        let c = server.counters();
        assert_eq!(c["forwarded"], 3);
        assert_eq!(c["forward_failed"], 0);
        assert_eq!(c["answered"], 0);
    }

    #[tokio::test]
    async fn external_name_is_answered_with_the_upstreams_address() {
        let up = fake_upstream();
        let server = DnsServer::start(settings(vec![up.addr]), table())
            .await
            .expect("start");
        let m = udp_ask(
            server.local_addr(),
            &query(31, "ext.default.svc.cluster.local.", RecordType::A),
            Duration::from_secs(3),
        )
        .await
        .expect("reply");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(matches!(&m.answers[0].data, RData::CNAME(c) if c.0.to_ascii() == "example.com."));
        assert_eq!(a_records(&m), vec![EXAMPLE]);
    }

    #[tokio::test]
    async fn servfail_within_the_timeout_when_no_upstream_answers() {
        let (silent_a, _keep_a) = silent_upstream().await;
        let (silent_b, _keep_b) = silent_upstream().await;
        let server = DnsServer::start(settings(vec![silent_a, silent_b]), table())
            .await
            .expect("start");
        let started = StdInstant::now();
        let m = udp_ask(
            server.local_addr(),
            &query(41, "example.com.", RecordType::A),
            Duration::from_secs(5),
        )
        .await
        .expect("a SERVFAIL, not silence");
        let took = started.elapsed();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(m.metadata.id, 41);
        // Two upstreams of 300 ms each, and not much more.
        assert!(took >= Duration::from_millis(600), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        let c = server.counters();
        assert_eq!((c["forwarded"], c["forward_failed"]), (1, 1));
    }

    #[tokio::test]
    async fn never_forwards_to_itself() {
        // Bind first to learn the port, then name the server itself as its only upstream.
        let mut s = settings(vec![]);
        s.forward_timeout = Duration::from_secs(3);
        let server = DnsServer::start(s, table()).await.expect("start");
        server.set_upstreams(vec![server.local_addr()]);
        let started = StdInstant::now();
        let m = udp_ask(
            server.local_addr(),
            &query(51, "example.com.", RecordType::A),
            Duration::from_secs(3),
        )
        .await
        .expect("reply");
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        // No upstream left to try: at once, not after a forward timeout.
        assert!(started.elapsed() < Duration::from_secs(1));
        let c = server.counters();
        assert_eq!(c["queries"], 1, "the server never sent itself the query");
    }

    #[tokio::test]
    async fn large_udp_answer_is_truncated_and_tcp_gives_it_whole() {
        let server = DnsServer::start(settings(vec![]), table())
            .await
            .expect("start");
        let q = query(61, "big.default.svc.cluster.local.", RecordType::A);
        let m = udp_ask(server.local_addr(), &q, Duration::from_secs(3))
            .await
            .expect("reply");
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        let replies = tcp_ask(server.local_addr(), &[q]).await;
        assert!(!replies[0].metadata.truncation);
        assert_eq!(a_records(&replies[0]).len(), 60);
        assert_eq!(server.counters()["truncated"], 1);

        // A client offering EDNS gets the 60 records over UDP.
        let mut with_edns =
            Message::from_vec(&query(62, "big.default.svc.cluster.local.", RecordType::A))
                .expect("parse");
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        with_edns.set_edns(edns);
        let m = udp_ask(
            server.local_addr(),
            &with_edns.to_vec().expect("encode"),
            Duration::from_secs(3),
        )
        .await
        .expect("reply");
        assert!(!m.metadata.truncation);
        assert_eq!(a_records(&m).len(), 60);
    }

    #[tokio::test]
    async fn swapped_table_and_readiness_are_served_at_once() {
        let server = DnsServer::start(settings(vec![]), Arc::new(ServiceTable::default()))
            .await
            .expect("start");
        let ask = |id| query(id, "big.default.svc.cluster.local.", RecordType::A);
        let m = udp_ask(server.local_addr(), &ask(71), Duration::from_secs(3))
            .await
            .expect("reply");
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

        server.set_table(table());
        server.set_readiness(Arc::new(|_, e: &Endpoint| e.ip.octets()[3] <= 2));
        let m = udp_ask(server.local_addr(), &ask(72), Duration::from_secs(3))
            .await
            .expect("reply");
        assert_eq!(
            a_records(&m),
            vec![Ipv4Addr::new(10, 244, 0, 1), Ipv4Addr::new(10, 244, 0, 2)]
        );
    }

    #[tokio::test]
    async fn moves_to_a_new_address() {
        let mut s = settings(vec![]);
        s.listen = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 0);
        let server = DnsServer::start(s, table()).await.expect("start");
        let old = server.local_addr();
        let q = query(81, "web.default.svc.cluster.local.", RecordType::A);
        assert!(udp_ask(old, &q, Duration::from_secs(3)).await.is_some());

        server
            .move_to(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 3), 0))
            .expect("move");
        let new = server.local_addr();
        assert_eq!(*new.ip(), Ipv4Addr::new(127, 0, 0, 3));
        let m = udp_ask(new, &q, Duration::from_secs(3))
            .await
            .expect("reply at the new address");
        assert_eq!(a_records(&m), vec![VIP]);
        assert_eq!(
            a_records(&tcp_ask(new, std::slice::from_ref(&q)).await[0]),
            vec![VIP]
        );
        // The old address is let go.
        tokio::task::yield_now().await;
        assert!(udp_ask(old, &q, Duration::from_millis(300)).await.is_none());
        assert!(TcpStream::connect(old).await.is_err());
    }

    #[tokio::test]
    async fn binds_an_address_the_node_does_not_have_yet() {
        // 192.0.2.1 (TEST-NET-1) is on no interface here: IP_FREEBIND lets the server
        // start anyway, as it must before the bridge gets its gateway. Nothing is sent.
        let mut s = settings(vec![]);
        s.listen = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 0);
        let server = DnsServer::start(s, table())
            .await
            .expect("start on a missing address");
        assert_eq!(*server.local_addr().ip(), Ipv4Addr::new(192, 0, 2, 1));
    }

    #[tokio::test]
    async fn garbage_is_dropped_and_counted_and_idle_tcp_is_closed() {
        let mut s = settings(vec![]);
        s.tcp_idle_timeout = Duration::from_millis(200);
        let server = DnsServer::start(s, table()).await.expect("start");
        assert!(
            udp_ask(server.local_addr(), &[1, 2, 3], Duration::from_millis(300))
                .await
                .is_none()
        );
        let c = server.counters();
        assert_eq!((c["queries"], c["dropped_short"]), (1, 1));

        let mut stream = TcpStream::connect(server.local_addr())
            .await
            .expect("connect");
        let started = StdInstant::now();
        let mut byte = [0u8; 1];
        let n = timeout(Duration::from_secs(3), stream.read(&mut byte))
            .await
            .expect("closed by the server, not by our timeout")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn tcp_connections_beyond_the_limit_are_closed() {
        let mut s = settings(vec![]);
        s.max_tcp_connections = 1;
        let server = DnsServer::start(s, table()).await.expect("start");
        let q = query(91, "web.default.svc.cluster.local.", RecordType::A);
        let mut first = TcpStream::connect(server.local_addr())
            .await
            .expect("connect");
        write_frame(&mut first, &q).await.expect("write");
        assert!(
            read_frame(&mut first, Duration::from_secs(3))
                .await
                .expect("read")
                .is_some()
        );

        let mut second = TcpStream::connect(server.local_addr())
            .await
            .expect("connect");
        let _ = write_frame(&mut second, &q).await;
        let got = read_frame(&mut second, Duration::from_secs(3)).await;
        assert!(
            !matches!(got, Ok(Some(_))),
            "the second connection got an answer"
        );
        assert_eq!(server.counters()["dropped_tcp_busy"], 1);

        // The first one is still served.
        write_frame(&mut first, &q).await.expect("write");
        assert!(
            read_frame(&mut first, Duration::from_secs(3))
                .await
                .expect("read")
                .is_some()
        );
    }

    #[test]
    fn node_upstreams_prefer_the_configured_ones() {
        let dir = std::env::temp_dir().join(format!("ovd-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("resolv.conf");
        std::fs::write(&path, "nameserver 192.0.2.53\nnameserver ::1\n").expect("write");
        let configured = [SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 5353)];
        assert_eq!(
            node_upstreams(&configured, &path).expect("ok"),
            configured.to_vec()
        );
        assert_eq!(
            node_upstreams(&[], &path).expect("ok"),
            vec![SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 53), 53)]
        );
        assert!(node_upstreams(&[], &dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
