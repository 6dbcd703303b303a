//! The proxy over real sockets on loopback, without root: 127.0.0.0/8 is all local, so
//! each test serves its Services on VIPs of its own (127.77.TEST.x) and runs its backends
//! on 127.0.0.1 with kernel-chosen ports.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use overlayd_proto::service::frontend::{LocalNode, frontends};
use overlayd_proto::service::proxy_protocol;
use overlayd_proto::service::{
    Algorithm, Endpoint, HealthCheck, Protocol, ResolvedPort, ResolvedService, ServiceKey,
    ServiceStatus, ServiceTable, ServiceType, SessionAffinity,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::*;

const PORT: u16 = 8080;

/// The Service address of test `n`: its own /24, so parallel tests never share one.
fn vip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 77, n, 1)
}

fn front(n: u8) -> SocketAddrV4 {
    SocketAddrV4::new(vip(n), PORT)
}

fn no_checks() -> HealthCheck {
    HealthCheck {
        enabled: false,
        ..HealthCheck::default()
    }
}

fn service(name: &str, n: u8, protocol: Protocol, backends: &[SocketAddrV4]) -> ResolvedService {
    ResolvedService {
        key: ServiceKey::new("default", name),
        kind: ServiceType::ClusterIp,
        cluster_ip: Some(vip(n)),
        external_ip: None,
        external_name: None,
        ports: vec![ResolvedPort {
            name: String::new(),
            protocol,
            port: PORT,
            target_port: PORT,
            node_port: None,
            proxy_protocol: false,
        }],
        endpoints: backends
            .iter()
            .map(|b| Endpoint {
                ip: *b.ip(),
                port: Some(b.port()),
                node: None,
                pod: None,
            })
            .collect(),
        algorithm: Algorithm::RoundRobin,
        affinity: SessionAffinity::None,
        affinity_timeout_s: 10_800,
        health: no_checks(),
        status: ServiceStatus::Active,
    }
}

fn table(services: impl IntoIterator<Item = ResolvedService>) -> Arc<ServiceTable> {
    let mut t = ServiceTable::default();
    for s in services {
        t.services.insert(s.key.clone(), s);
    }
    Arc::new(t)
}

/// Updates the proxy as the daemon will: frontends computed for the node.
fn apply(proxy: &Proxy, table: Arc<ServiceTable>) -> UpdateOutcome {
    let local = LocalNode {
        underlay: Ipv4Addr::new(127, 77, 0, 1),
    };
    let f = frontends(&table, &local);
    let outcome = proxy.update(table, f);
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    outcome
}

fn proxy_with(relay: RelayMode) -> Proxy {
    Proxy::new(ProxyConfig {
        relay,
        ..ProxyConfig::default()
    })
}

/// A TCP backend on 127.0.0.1 that echoes every connection (and closes its write side at
/// the client's FIN). Counts accepted connections, and (echo) those that carried bytes:
/// health checks connect too, but send nothing.
struct Backend {
    addr: SocketAddrV4,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Backend {
    async fn echo() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::echo_on(listener)
    }

    fn echo_on(listener: TcpListener) -> Backend {
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let mut backend = Self::serve_on(listener, move |mut s| {
            let count = count.clone();
            async move {
                let (mut r, mut w) = s.split();
                if let Ok(n) = tokio::io::copy(&mut r, &mut w).await
                    && n > 0
                {
                    count.fetch_add(1, Relaxed);
                }
                let _ = w.shutdown().await;
            }
        });
        backend.requests = requests;
        backend
    }

    async fn serve<F, Fut>(handler: F) -> Backend
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_on(listener, handler)
    }

    fn serve_on<F, Fut>(listener: TcpListener, handler: F) -> Backend
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let addr = match listener.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        };
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Relaxed);
                tokio::spawn(handler(s));
            }
        });
        Backend {
            addr,
            accepted,
            requests: Arc::new(AtomicUsize::new(0)),
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Relaxed)
    }

    /// Echo backends: connections that carried bytes.
    fn requests(&self) -> usize {
        self.requests.load(Relaxed)
    }
}

/// An address on which connects are refused: a port just bound and released.
fn refused_addr() -> SocketAddrV4 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    match l.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!(),
    }
}

/// Fails a test that would otherwise hang (a FIN that never comes, say).
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn echo_once(addr: SocketAddrV4, msg: &[u8]) -> io::Result<Vec<u8>> {
    bounded("an echo", async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(msg).await?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await?;
        Ok(back)
    })
    .await
}

/// Polls `cond` every 10 ms for up to 5 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn backend_report(proxy: &Proxy, name: &str, addr: SocketAddrV4) -> Option<BackendReport> {
    proxy
        .report()
        .ports
        .into_iter()
        .filter(|p| p.key.service.name == name)
        .flat_map(|p| p.backends)
        .find(|b| b.addr == addr)
}

/// A deterministic byte stream (xorshift64), to send and to check what arrives.
struct Stream(u64);

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_through_the_proxy() {
    let backend = Backend::echo().await;
    let proxy = proxy_with(RelayMode::default());
    let outcome = apply(
        &proxy,
        table([service("echo", 1, Protocol::Tcp, &[backend.addr])]),
    );
    assert_eq!(
        outcome.bound,
        vec![FrontendAddr {
            protocol: Protocol::Tcp,
            addr: front(1)
        }]
    );
    assert_eq!(echo_once(front(1), b"hello").await.unwrap(), b"hello");
    assert_eq!(backend.accepted(), 1);
    eventually("the connection is counted and closed", || {
        backend_report(&proxy, "echo", backend.addr).is_some_and(|b| {
            b.connections == 1
                && b.active == 0
                && b.bytes_to_backend == 5
                && b.bytes_from_backend == 5
        })
    })
    .await;
}

/// 50 MB each way at once through an echo backend, every byte checked in order.
async fn transfer_intact(n: u8, mode: RelayMode) {
    const TOTAL: usize = 50 << 20;
    let backend = Backend::echo().await;
    let proxy = proxy_with(mode);
    apply(
        &proxy,
        table([service("bulk", n, Protocol::Tcp, &[backend.addr])]),
    );
    let s = TcpStream::connect(front(n)).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut generator = Stream(0x9e37_79b9_7f4a_7c15);
        let mut buf = vec![0u8; 64 << 10];
        let mut sent = 0;
        while sent < TOTAL {
            generator.fill(&mut buf);
            w.write_all(&buf).await.unwrap();
            sent += buf.len();
        }
        w.shutdown().await.unwrap();
    });
    let mut expect = Stream(0x9e37_79b9_7f4a_7c15);
    let mut want = vec![0u8; 64 << 10];
    let mut got = vec![0u8; 64 << 10];
    let mut received = 0;
    bounded("50 MB back", async {
        while received < TOTAL {
            r.read_exact(&mut got).await.unwrap();
            expect.fill(&mut want);
            assert!(
                got == want,
                "{mode:?}: bytes differ within {received}..+64K"
            );
            received += got.len();
        }
        assert_eq!(r.read(&mut got).await.unwrap(), 0, "then EOF");
    })
    .await;
    writer.await.unwrap();
    eventually("50 MB counted each way", || {
        backend_report(&proxy, "bulk", backend.addr).is_some_and(|b| {
            b.bytes_to_backend == TOTAL as u64 && b.bytes_from_backend == TOTAL as u64
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_intact_both_ways_with_splice() {
    transfer_intact(2, RelayMode::Splice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_intact_both_ways_with_copy() {
    transfer_intact(3, RelayMode::Copy).await;
}

async fn half_close(n: u8, mode: RelayMode) {
    // Client closes first: the backend reads to EOF, then answers.
    let counter = Backend::serve(|mut s| async move {
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        s.write_all(format!("got {}", all.len()).as_bytes())
            .await
            .unwrap();
    })
    .await;
    // Backend closes first: the client reads to EOF, then still sends.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let greeter = Backend::serve(move |mut s| {
        let tx = tx.clone();
        async move {
            s.write_all(b"hello").await.unwrap();
            s.shutdown().await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            tx.send(all).unwrap();
        }
    })
    .await;
    let proxy = proxy_with(mode);
    apply(
        &proxy,
        table([
            service("counter", n, Protocol::Tcp, &[counter.addr]),
            service("greeter", n + 100, Protocol::Tcp, &[greeter.addr]),
        ]),
    );

    let mut s = TcpStream::connect(front(n)).await.unwrap();
    s.write_all(&vec![7u8; 1 << 20]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    bounded("the answer after our FIN", s.read_to_string(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer, format!("got {}", 1 << 20), "{mode:?}");

    let mut s = TcpStream::connect(front(n + 100)).await.unwrap();
    let mut greeting = Vec::new();
    bounded("the backend's FIN", s.read_to_end(&mut greeting))
        .await
        .unwrap();
    assert_eq!(greeting, b"hello");
    s.write_all(b"still here").await.unwrap();
    s.shutdown().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        rx.lock().await.recv().await
    })
    .await
    .unwrap();
    assert_eq!(got.as_deref(), Some(&b"still here"[..]), "{mode:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_keeps_the_other_direction_flowing() {
    half_close(4, RelayMode::Splice).await;
    half_close(5, RelayMode::Copy).await;
}

fn is_reset(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::ConnectionReset
}

async fn resets(n: u8, mode: RelayMode) {
    // A backend that answers once and then aborts.
    let aborting = Backend::serve(|mut s| async move {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(b"y").await.unwrap();
        s.set_zero_linger().unwrap();
        drop(s);
    })
    .await;
    // A backend that reports how its connection ended, and, after an EOF, whether a
    // reset followed.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<io::Result<usize>>();
    let watching = Backend::serve(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut b = [0u8; 16];
            s.read_exact(&mut b[..1]).await.unwrap();
            s.write_all(b"y").await.unwrap();
            // Whatever comes next: the client's reset, or bytes, or EOF.
            let mut sum = 0;
            let end = loop {
                match s.read(&mut b).await {
                    Ok(0) => break Ok(sum),
                    Ok(k) => sum += k,
                    Err(e) => break Err(e),
                }
            };
            let eof = end.is_ok();
            tx.send(end).unwrap();
            if eof {
                // Idle, half-closed: does a reset arrive?
                let deadline = Instant::now() + Duration::from_secs(3);
                let after = loop {
                    if let Ok(Some(e)) = s.take_error() {
                        break Err(e);
                    }
                    if Instant::now() > deadline {
                        break Ok(999);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                };
                tx.send(after).unwrap();
            }
        }
    })
    .await;
    let proxy = proxy_with(mode);
    apply(
        &proxy,
        table([
            service("aborting", n, Protocol::Tcp, &[aborting.addr]),
            service("watching", n + 100, Protocol::Tcp, &[watching.addr]),
        ]),
    );

    // Backend resets → the client sees a reset, not EOF.
    let mut s = TcpStream::connect(front(n)).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    let err = bounded("the reset", s.read(&mut b))
        .await
        .expect_err("reset, not EOF");
    assert!(is_reset(&err), "{mode:?}: {err}");

    // Client resets → the backend sees a reset.
    let mut s = TcpStream::connect(front(n + 100)).await.unwrap();
    s.write_all(b"x").await.unwrap();
    s.read_exact(&mut b).await.unwrap();
    s.set_zero_linger().unwrap();
    drop(s);
    let end = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        end.as_ref().is_err_and(is_reset),
        "{mode:?}: backend saw {end:?}"
    );

    // Client half-closes, then resets while the backend is idle: still a reset.
    let mut s = TcpStream::connect(front(n + 100)).await.unwrap();
    s.write_all(b"x").await.unwrap();
    s.read_exact(&mut b).await.unwrap();
    s.shutdown().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        end.as_ref().ok(),
        Some(&0),
        "{mode:?}: the FIN arrives as EOF"
    );
    s.set_zero_linger().unwrap();
    drop(s);
    let after = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    // Linux reports an RST that arrives after the peer's FIN (in CLOSE_WAIT) as EPIPE.
    assert!(
        after
            .as_ref()
            .is_err_and(|e| is_reset(e) || e.kind() == io::ErrorKind::BrokenPipe),
        "{mode:?}: after the half-closed client reset, the backend saw {after:?}"
    );
    eventually("the reset connection is no longer active", || {
        backend_report(&proxy, "watching", watching.addr).is_some_and(|b| b.active == 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_on_one_side_resets_the_other() {
    resets(6, RelayMode::Splice).await;
    resets(7, RelayMode::Copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_backend_is_retried_on_the_next_and_counted() {
    let good = Backend::echo().await;
    let bad = refused_addr();
    let proxy = proxy_with(RelayMode::default());
    apply(
        &proxy,
        table([service("retry", 8, Protocol::Tcp, &[good.addr, bad])]),
    );
    for i in 0..10u8 {
        let msg = [i; 3];
        assert_eq!(
            echo_once(front(8), &msg).await.unwrap(),
            msg,
            "connection {i}"
        );
    }
    assert_eq!(
        good.accepted(),
        10,
        "every connection reached the good backend"
    );
    let bad_report = backend_report(&proxy, "retry", bad).unwrap();
    assert!(bad_report.failed_connects >= 3, "{bad_report:?}");
    assert_eq!(bad_report.connections, 0);
    // Three refusals in a row (fall = 3) took it down; with no active checks it is
    // retried after the interval, so it may also show as retrying.
    assert!(
        matches!(
            bad_report.state,
            BackendState::Down | BackendState::Retrying
        ),
        "{bad_report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_no_backend_answers_the_client_is_reset() {
    let proxy = proxy_with(RelayMode::default());
    let (a, b) = (refused_addr(), refused_addr());
    apply(&proxy, table([service("dead", 9, Protocol::Tcp, &[a, b])]));
    assert_reset(front(9)).await;
    // No backends at all: reset too.
    apply(&proxy, table([service("dead", 9, Protocol::Tcp, &[])]));
    assert_reset(front(9)).await;
}

/// The connection is accepted and then reset, not closed: the reset shows on the first
/// read, or already when connect returns if it came that fast.
async fn assert_reset(addr: SocketAddrV4) {
    let mut s = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) if is_reset(&e) => return,
        Err(e) => panic!("connect: {e}"),
    };
    let mut buf = [0u8; 1];
    let err = bounded("the reset", s.read(&mut buf))
        .await
        .expect_err("reset, not EOF");
    assert!(is_reset(&err), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_over_three_backends() {
    let backends = [
        Backend::echo().await,
        Backend::echo().await,
        Backend::echo().await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let proxy = proxy_with(RelayMode::default());
    apply(&proxy, table([service("rr", 10, Protocol::Tcp, &addrs)]));
    for i in 0..300u16 {
        echo_once(front(10), &i.to_be_bytes()).await.unwrap();
    }
    for b in &backends {
        let n = b.accepted();
        assert!(
            (90..=110).contains(&n),
            "a backend got {n} of 300 connections"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_prefers_the_idle_backend() {
    let busy = Backend::echo().await;
    let idle = Backend::echo().await;
    let proxy = proxy_with(RelayMode::default());
    let mut svc = service("lc", 11, Protocol::Tcp, &[busy.addr]);
    svc.algorithm = Algorithm::LeastConn;
    apply(&proxy, table([svc.clone()]));
    // Four long connections on the only backend.
    let mut long = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(front(11)).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        long.push(s);
    }
    // A second backend joins: new connections go to it while it has fewer.
    svc.endpoints.push(Endpoint {
        ip: *idle.addr.ip(),
        port: Some(idle.addr.port()),
        node: None,
        pod: None,
    });
    apply(&proxy, table([svc]));
    for i in 0..6u8 {
        echo_once(front(11), &[i]).await.unwrap();
        // The short connection's end reaches the proxy before the next starts.
        eventually("the short connection ends", || {
            backend_report(&proxy, "lc", idle.addr).is_some_and(|b| b.active == 0)
        })
        .await;
    }
    assert_eq!(
        busy.accepted(),
        4,
        "round robin would have sent 3 of 6 here"
    );
    assert_eq!(idle.accepted(), 6);
    // The long ones are still relayed.
    for s in &mut long {
        s.write_all(b"z").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"z");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vip_and_the_node_port_share_one_balancer() {
    let a = Backend::echo().await;
    let b = Backend::echo().await;
    let proxy = proxy_with(RelayMode::default());
    let mut svc = service("np", 19, Protocol::Tcp, &[a.addr, b.addr]);
    svc.kind = ServiceType::NodePort;
    svc.ports[0].node_port = Some(31_080);
    let outcome = apply(&proxy, table([svc]));
    let node_port = SocketAddrV4::new(Ipv4Addr::new(127, 77, 0, 1), 31_080);
    assert_eq!(outcome.bound.len(), 2);
    // Round robin goes in address order.
    let (first, second) = if a.addr < b.addr { (&a, &b) } else { (&b, &a) };
    // One round robin across both entry points: VIP, node port, VIP, node port go to
    // the backends in turn (two balancers would send each entry point's first
    // connection to the same backend).
    for (i, to) in [front(19), node_port, front(19), node_port]
        .into_iter()
        .enumerate()
    {
        echo_once(to, &[i as u8]).await.unwrap();
        assert_eq!(
            (first.accepted(), second.accepted()),
            (i / 2 + 1, i.div_ceil(2)),
            "after connection {i}"
        );
    }
    let report = proxy.report();
    let port = report
        .ports
        .iter()
        .find(|p| p.key.service.name == "np")
        .unwrap();
    assert_eq!(port.frontends.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_drains() {
    let old = Backend::echo().await;
    let new = Backend::echo().await;
    let proxy = proxy_with(RelayMode::default());
    apply(
        &proxy,
        table([service("drain", 12, Protocol::Tcp, &[old.addr])]),
    );
    let mut s = TcpStream::connect(front(12)).await.unwrap();
    s.write_all(b"1").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();

    apply(
        &proxy,
        table([service("drain", 12, Protocol::Tcp, &[new.addr])]),
    );
    let draining = backend_report(&proxy, "drain", old.addr).unwrap();
    assert_eq!(draining.state, BackendState::Draining);
    assert_eq!(draining.active, 1);
    for i in 0..5u8 {
        echo_once(front(12), &[i]).await.unwrap();
    }
    assert_eq!(new.accepted(), 5, "new connections go to the new backend");
    assert_eq!(old.accepted(), 1);
    // The old connection still works both ways.
    for i in 0..10u8 {
        s.write_all(&[i]).await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(b, [i]);
    }
    drop(s);
    eventually("the drained backend leaves the report", || {
        backend_report(&proxy, "drain", old.addr).is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_receives_a_proxy_v2_header_with_the_client_address() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let backend = Backend::serve(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut header = [0u8; proxy_protocol::V2_TCP4_LEN];
            s.read_exact(&mut header).await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            tx.send((header, rest)).unwrap();
        }
    })
    .await;
    let proxy = proxy_with(RelayMode::default());
    let mut svc = service("pp", 13, Protocol::Tcp, &[backend.addr]);
    svc.ports[0].proxy_protocol = true;
    apply(&proxy, table([svc]));
    let mut s = TcpStream::connect(front(13)).await.unwrap();
    let client = match s.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!(),
    };
    s.write_all(b"payload").await.unwrap();
    s.shutdown().await.unwrap();
    let (header, rest) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        proxy_protocol::parse_v2_tcp4(&header),
        Some((client, front(13))),
        "header {header:02x?}"
    );
    assert_eq!(rest, b"payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_follow_table_updates() {
    let backend = Backend::echo().await;
    let proxy = proxy_with(RelayMode::default());
    apply(
        &proxy,
        table([service("come-and-go", 14, Protocol::Tcp, &[backend.addr])]),
    );
    let mut established = TcpStream::connect(front(14)).await.unwrap();
    established.write_all(b"a").await.unwrap();
    let mut b = [0u8; 1];
    established.read_exact(&mut b).await.unwrap();

    let outcome = apply(&proxy, table([]));
    assert_eq!(outcome.closed.len(), 1);
    let err = TcpStream::connect(front(14))
        .await
        .expect_err("nobody listens");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    // The established connection was not cut with its listener.
    established.write_all(b"b").await.unwrap();
    established.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"b");
    assert!(proxy.report().listeners.is_empty());

    // Back again, on the same address at once.
    apply(
        &proxy,
        table([service("come-and-go", 14, Protocol::Tcp, &[backend.addr])]),
    );
    assert_eq!(echo_once(front(14), b"again").await.unwrap(), b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_dead_backend_out_and_bring_it_back() {
    let steady = Backend::echo().await;
    let flaky = Backend::echo().await;
    let flaky_addr = flaky.addr;
    let proxy = proxy_with(RelayMode::default());
    let mut svc = service("checked", 15, Protocol::Tcp, &[steady.addr, flaky.addr]);
    svc.health = HealthCheck {
        enabled: true,
        interval_ms: 200,
        timeout_ms: 150,
        rise: 2,
        fall: 2,
    };
    apply(&proxy, table([svc]));
    flaky.task.abort();
    eventually("the stopped backend is down", || {
        backend_report(&proxy, "checked", flaky_addr).is_some_and(|b| b.state == BackendState::Down)
    })
    .await;
    let before = steady.requests();
    for i in 0..10u8 {
        echo_once(front(15), &[i]).await.unwrap();
    }
    // The echo counts a request when its connection ends.
    eventually("all ten served by the healthy backend", || {
        steady.requests() - before == 10
    })
    .await;
    let report = backend_report(&proxy, "checked", flaky_addr).unwrap();
    assert_eq!(report.failed_connects, 0, "checks kept connections off it");

    // Back on the same port: up after `rise` checks.
    let listener = TcpListener::bind(SocketAddr::V4(flaky_addr)).await.unwrap();
    let revived = Backend::echo_on(listener);
    eventually("the backend is up again", || {
        backend_report(&proxy, "checked", flaky_addr).is_some_and(|b| b.state == BackendState::Up)
    })
    .await;
    for i in 0..10u8 {
        echo_once(front(15), &[i]).await.unwrap();
    }
    eventually("round robin uses it again", || revived.requests() >= 3).await;
}

/// A UDP backend that answers every datagram with `tag` and the datagram.
async fn udp_backend(tag: &'static [u8]) -> (SocketAddrV4, JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = match sock.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!(),
    };
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, from) = sock.recv_from(&mut buf).await.unwrap();
            let mut reply = tag.to_vec();
            reply.extend_from_slice(&buf[..n]);
            sock.send_to(&reply, from).await.unwrap();
        }
    });
    (addr, task)
}

async fn udp_ask(sock: &UdpSocket, msg: &[u8]) -> Vec<u8> {
    sock.send(msg).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("a reply")
        .unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_through_the_proxy() {
    let (backend, _task) = udp_backend(b"A:").await;
    let proxy = proxy_with(RelayMode::default());
    apply(
        &proxy,
        table([service("dns", 16, Protocol::Udp, &[backend])]),
    );
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Connected: only replies from the Service address are received.
    client.connect(front(16)).await.unwrap();
    assert_eq!(udp_ask(&client, b"ping").await, b"A:ping");
    let big = vec![0xabu8; 60_000];
    let reply = udp_ask(&client, &big).await;
    assert_eq!(reply.len(), 60_002);
    assert!(reply[2..] == big[..], "a 60 kB datagram arrives intact");
    let report = backend_report(&proxy, "dns", backend).unwrap();
    assert_eq!(report.connections, 1, "one flow for both datagrams");
    assert_eq!(report.active, 1);
    assert_eq!(report.bytes_to_backend, 60_004);
    // A second client gets a flow of its own.
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    other.connect(front(16)).await.unwrap();
    assert_eq!(udp_ask(&other, b"pong").await, b"A:pong");
    assert_eq!(backend_report(&proxy, "dns", backend).unwrap().active, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flow_follows_a_backend_change_at_once() {
    let (a, _ta) = udp_backend(b"A:").await;
    let (b, _tb) = udp_backend(b"B:").await;
    let proxy = proxy_with(RelayMode::default());
    apply(&proxy, table([service("stats", 17, Protocol::Udp, &[a])]));
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(front(17)).await.unwrap();
    assert_eq!(udp_ask(&client, b"1").await, b"A:1");
    assert_eq!(udp_ask(&client, b"2").await, b"A:2");
    // A leaves, B joins: the very next datagram of the same flow goes to B.
    apply(&proxy, table([service("stats", 17, Protocol::Udp, &[b])]));
    assert_eq!(udp_ask(&client, b"3").await, b"B:3");
    assert!(
        backend_report(&proxy, "stats", a).is_none(),
        "no flow left on A"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_backend_that_refuses_is_left_for_another() {
    let (good, _t) = udp_backend(b"G:").await;
    let gone = refused_addr(); // no UDP socket there either: ICMP port unreachable
    let proxy = proxy_with(RelayMode::default());
    apply(
        &proxy,
        table([service("udp-retry", 18, Protocol::Udp, &[gone, good])]),
    );
    // Each client's first datagram may be lost to the refusing backend; a client that
    // retries (as UDP clients do) gets through, and after `fall` refusals the backend
    // is out.
    for i in 0..6u16 {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(front(18)).await.unwrap();
        let mut answered = None;
        for _ in 0..5 {
            client.send(&i.to_be_bytes()).await.unwrap();
            let mut buf = [0u8; 16];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(200), client.recv(&mut buf)).await
            {
                answered = Some(buf[..n].to_vec());
                break;
            }
        }
        let mut want = b"G:".to_vec();
        want.extend_from_slice(&i.to_be_bytes());
        assert_eq!(answered, Some(want));
    }
    let report = backend_report(&proxy, "udp-retry", gone).unwrap();
    assert!(report.failed_connects >= 1, "{report:?}");
}

/// CPU seconds this process has used (user + system), all threads.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Splice against copy: 1 GB from a client through the proxy into a sink, on loopback,
/// for each relay mode and buffer size; prints the median of five runs of throughput and
/// of the CPU the whole process spent per GB (client and sink cost the same in every
/// configuration, so the differences are the proxy's; CPU time also suffers less from
/// other work on the machine than throughput).
/// Run: cargo test --release -p overlayd --lib proxy::tests::relay_throughput -- --ignored --nocapture
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it by hand in release mode"]
async fn relay_throughput() {
    const TOTAL: u64 = 1 << 30;
    const RUNS: usize = 5;
    let sink = Backend::serve(|mut s| async move {
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
        let _ = s.write_all(&n.to_be_bytes()).await;
    })
    .await;
    /// (Gbit/s, CPU seconds per GB)
    async fn send(to: SocketAddrV4) -> (f64, f64) {
        let buf = vec![0x5au8; 256 << 10];
        let (start, cpu) = (Instant::now(), cpu_seconds());
        let mut s = TcpStream::connect(to).await.unwrap();
        let mut sent = 0u64;
        while sent < TOTAL {
            s.write_all(&buf).await.unwrap();
            sent += buf.len() as u64;
        }
        s.shutdown().await.unwrap();
        let mut ack = [0u8; 8];
        s.read_exact(&mut ack).await.unwrap();
        assert_eq!(u64::from_be_bytes(ack), TOTAL);
        let gbps = (TOTAL * 8) as f64 / start.elapsed().as_secs_f64() / 1e9;
        let cpu_per_gb = (cpu_seconds() - cpu) / (TOTAL as f64 / 1e9);
        (gbps, cpu_per_gb)
    }
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    }
    // (mode, chunk, fixed socket buffers); None: straight to the sink.
    let mut configs: Vec<Option<(RelayMode, usize, Option<usize>)>> = vec![None];
    for chunk in [64 << 10, 256 << 10, 1 << 20] {
        configs.push(Some((RelayMode::Splice, chunk, None)));
        configs.push(Some((RelayMode::Copy, chunk, None)));
    }
    configs.push(Some((RelayMode::Copy, 256 << 10, Some(4 << 20))));
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); configs.len()];
    let mut n = 20;
    // Interleaved, so that a busy moment on the machine hits every configuration alike.
    for _ in 0..RUNS {
        for (config, result) in configs.iter().zip(&mut results) {
            let (gbps, cpu) = match config {
                None => send(sink.addr).await,
                Some((mode, chunk, socket_buffer)) => {
                    let proxy = Proxy::new(ProxyConfig {
                        relay: *mode,
                        relay_chunk: *chunk,
                        socket_buffer: *socket_buffer,
                        ..ProxyConfig::default()
                    });
                    n += 1;
                    apply(
                        &proxy,
                        table([service("bench", n, Protocol::Tcp, &[sink.addr])]),
                    );
                    let r = send(front(n)).await;
                    proxy.shutdown();
                    r
                }
            };
            result.0.push(gbps);
            result.1.push(cpu);
        }
    }
    for (config, (gbps, cpu)) in configs.iter().zip(results) {
        let name = match config {
            None => "direct (no proxy)".to_owned(),
            Some((mode, chunk, None)) => format!("{mode:?} {} KB", chunk >> 10),
            Some((mode, chunk, Some(b))) => {
                format!("{mode:?} {} KB, {} MB sockbuf", chunk >> 10, b >> 20)
            }
        };
        println!(
            "{name:>20}: {:5.1} Gbit/s, {:.2} CPU s/GB  (runs: {})",
            median(gbps.clone()),
            median(cpu),
            gbps.iter()
                .map(|g| format!("{g:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}

#[test]
fn config_defaults_are_what_the_docs_say() {
    let c = ProxyConfig::default();
    assert_eq!(c.relay, RelayMode::Copy);
    assert_eq!(c.relay_chunk, 256 << 10);
    assert_eq!(c.connect_tries, 3);
    assert_eq!(c.udp_idle, Duration::from_secs(30));
}
