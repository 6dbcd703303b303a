//! Transports on 127.0.0.1 with CAs and node certificates made by `pki::init_ca` and
//! `pki::issue_cert` in temporary directories. Every wait polls a condition with a
//! deadline; none is an assertion by itself.

use super::*;

use std::path::PathBuf;
use std::time::Instant;

use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::pki::{CA_CERT_FILE, Validity, Written, init_ca, issue_cert};

const DEADLINE: Duration = Duration::from_secs(15);

struct Pki {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        Pki { _dir: dir, root }
    }

    /// A CA named `ca` (its directory), made on first use.
    fn ca(&self, ca: &str) -> Ca {
        let dir = self.root.join(ca);
        if !dir.join(CA_CERT_FILE).exists() {
            init_ca(&dir, Validity::days_from(SystemTime::now(), 30), false).unwrap();
        }
        Ca::load(&dir.join(CA_CERT_FILE)).unwrap()
    }

    /// A certificate naming `cert_name` from CA `ca`, valid `validity`, presented by the
    /// node `node` (no check: the refusal tests present bad ones).
    fn identity_with(
        &self,
        ca: &str,
        node: &str,
        cert_name: &str,
        validity: Validity,
    ) -> NodeIdentity {
        self.ca(ca);
        let out = self.root.join(format!("{ca}-certs-{node}"));
        let written = issue_cert(cert_name, &self.root.join(ca), &out, validity).unwrap();
        load(node, &written)
    }

    fn identity(&self, ca: &str, node: &str) -> NodeIdentity {
        self.identity_with(ca, node, node, Validity::days_from(SystemTime::now(), 10))
    }
}

fn load(node: &str, w: &Written) -> NodeIdentity {
    let cert = CertificateDer::from_pem_slice(&std::fs::read(&w.cert).unwrap()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(&std::fs::read(&w.key).unwrap()).unwrap();
    NodeIdentity {
        name: node.to_owned(),
        fingerprint: pki::fingerprint(&cert),
        cert,
        key,
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn config(bind: SocketAddr, ca: Ca, identity: NodeIdentity) -> QuicConfig {
    let mut cfg = QuicConfig::new(bind, ca, identity);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    cfg
}

fn node(pki: &Pki, name: &str) -> (QuicTransport, mpsc::Receiver<Received>, SocketAddr) {
    let (t, rx) =
        QuicTransport::bind(config(loopback(), pki.ca("ca"), pki.identity("ca", name))).unwrap();
    let addr = t.local_addr().unwrap();
    (t, rx, addr)
}

/// Two member names such that the first dials the pair iff `first_dials`, the second
/// starting with `second`.
fn names(first: &str, second: &str, first_dials: bool) -> (String, String) {
    for i in 0..1000 {
        let b = format!("{second}{i}");
        if (dial::dialer(first, &b) == Side::Local) == first_dials {
            return (first.to_owned(), b);
        }
    }
    unreachable!("the dial hash is a fair coin")
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn state(t: &QuicTransport, peer: &str) -> Option<ConnState> {
    t.status()
        .into_iter()
        .find(|s| s.name == peer)
        .map(|s| s.state)
}

fn connected(t: &QuicTransport, peer: &str) -> bool {
    t.live_ids(peer).is_some()
}

fn counter(t: &QuicTransport, name: &str) -> u64 {
    t.to_map()[name]
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Sends `data` from `from` to `peer` until `rx` yields it (datagrams are unreliable),
/// and checks that it arrives whole and from `from_name`.
async fn deliver(
    from: &QuicTransport,
    peer: &str,
    rx: &mut mpsc::Receiver<Received>,
    from_name: &str,
    data: &[u8],
) {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < DEADLINE, "no datagram reached {peer}");
        from.send(peer, data).unwrap();
        if let Ok(Some((name, got))) =
            tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            assert_eq!(&*name, from_name);
            assert_eq!(got.len(), data.len());
            assert!(got[..] == data[..], "the datagram arrived altered");
            return;
        }
    }
}

/// Tells `a` and `b` about each other and waits until both ends hold the connection.
async fn introduce(
    a: &QuicTransport,
    a_name: &str,
    a_addr: SocketAddr,
    b: &QuicTransport,
    b_name: &str,
    b_addr: SocketAddr,
) {
    a.set_peers(&peers(&[(b_name, b_addr)]));
    b.set_peers(&peers(&[(a_name, a_addr)]));
    until("both ends connected", || {
        connected(a, b_name) && connected(b, a_name)
    })
    .await;
}

/// Two transports on loopback with certificates from one CA, connected to each other:
/// `(a, a's name, b, b's name, the PKI's directory)` (keep the last alive).
pub(crate) async fn connected_pair(
    a: &str,
    b: &str,
) -> (QuicTransport, String, QuicTransport, String, impl Drop) {
    let pki = Pki::new();
    let (a_name, b_name) = names(a, b, true);
    let (ta, _, a_addr) = node(&pki, &a_name);
    let (tb, _, b_addr) = node(&pki, &b_name);
    introduce(&ta, &a_name, a_addr, &tb, &b_name, b_addr).await;
    (ta, a_name, tb, b_name, pki._dir)
}

fn peers(list: &[(&str, SocketAddr)]) -> Vec<(String, SocketAddr)> {
    list.iter().map(|(n, a)| ((*n).to_owned(), *a)).collect()
}

#[test]
fn sizes_follow_the_underlay_mtu() {
    assert_eq!(max_datagram_payload(1500, false), 1434);
    assert_eq!(max_datagram_payload(1500, true), 1414);
    assert_eq!(max_datagram_payload(1566, false), 1500);
    assert_eq!(1500 - IPV4_OVERHEAD, 1434);
    // Below QUIC's minimum the UDP payload stays at 1200.
    assert_eq!(
        max_datagram_payload(576, false),
        1200 - QUIC_DATAGRAM_OVERHEAD
    );
}

#[tokio::test]
async fn an_identity_for_another_name_is_refused_at_bind() {
    let pki = Pki::new();
    let mut cfg = config(loopback(), pki.ca("ca"), pki.identity("ca", "n1"));
    cfg.name = "n2".to_owned();
    let err = QuicTransport::bind(cfg)
        .err()
        .expect("bound with another node's identity");
    assert!(format!("{err:#}").contains("\"n2\""), "{err:#}");
}

#[test]
fn the_attempt_travels_in_the_sni_and_grows() {
    for attempt in [0, 1, 1_764_000_000_000_000, u64::MAX] {
        assert_eq!(tls::attempt_from_sni(&tls::sni(attempt)), Some(attempt));
        rustls_pki_types::ServerName::try_from(tls::sni(attempt)).unwrap();
    }
    for bad in [
        "overlayd",
        "a.overlayd",
        "b1.overlayd",
        "a1.other",
        "a1x.overlayd",
    ] {
        assert_eq!(tls::attempt_from_sni(bad), None, "{bad}");
    }
    let last = AtomicU64::new(u64::MAX - 5);
    let first = tls::next_attempt(&last);
    assert!(tls::next_attempt(&last) > first);
    let fresh = AtomicU64::new(0);
    assert!(
        tls::next_attempt(&fresh) > 1_700_000_000_000_000,
        "microseconds since 1970"
    );
}

#[tokio::test]
async fn datagrams_cross_both_ways_byte_identical() {
    let pki = Pki::new();
    let (a_name, b_name) = names("a", "b", true);
    let (a, mut a_rx, a_addr) = node(&pki, &a_name);
    let (b, mut b_rx, b_addr) = node(&pki, &b_name);
    introduce(&a, &a_name, a_addr, &b, &b_name, b_addr).await;

    deliver(&a, &b_name, &mut b_rx, &a_name, &payload(1400, 1)).await;
    deliver(&b, &a_name, &mut a_rx, &b_name, &payload(1400, 2)).await;

    let st = a.status();
    assert_eq!(st.len(), 1);
    let s = &st[0];
    assert_eq!((s.state, s.we_dial), (ConnState::Connected, true));
    assert!(s.rtt.is_some());
    assert_eq!(s.remote, Some(b_addr));
    let b_cert = b.inner.tls.trust.load().key.cert[0].clone();
    assert_eq!(s.cert_not_after, pki::not_after(&b_cert));
    assert!(s.cert_not_after.unwrap() > SystemTime::now());
    assert_eq!(a.peer_fingerprint(&b_name), Some(pki::fingerprint(&b_cert)));
    assert_eq!(state(&b, &a_name), Some(ConnState::Connected));
    assert!(counter(&a, "tx_datagrams") >= 1 && counter(&b, "rx_datagrams") >= 1);
    assert!(counter(&a, "rx_bytes") >= 1400);
}

#[tokio::test]
async fn a_1500_byte_underlay_carries_1434_and_says_so_for_more() {
    let pki = Pki::new();
    let (a_name, b_name) = names("a", "b", true);
    let (a, _a_rx, a_addr) = node(&pki, &a_name);
    let (b, mut b_rx, b_addr) = node(&pki, &b_name);
    introduce(&a, &a_name, a_addr, &b, &b_name, b_addr).await;

    assert_eq!(a.max_datagram_size(&b_name), Some(1434));
    assert_eq!(b.max_datagram_size(&a_name), Some(1434));
    deliver(&a, &b_name, &mut b_rx, &a_name, &payload(1434, 3)).await;
    assert_eq!(
        a.send(&b_name, &payload(1435, 4)),
        Err(SendError::TooBig { max: 1434 })
    );
    assert_eq!(counter(&a, "tx_too_big"), 1);
    assert_eq!(a.send("nobody", b"x"), Err(SendError::NoConnection));
    assert_eq!(counter(&a, "tx_no_connection"), 1);
}

#[tokio::test]
async fn a_1500_byte_pod_packet_fits_over_a_1566_byte_underlay() {
    let pki = Pki::new();
    let (a_name, b_name) = names("a", "b", true);
    let mk = |name: &str| {
        let mut cfg = config(loopback(), pki.ca("ca"), pki.identity("ca", name));
        cfg.underlay_mtu = 1566;
        QuicTransport::bind(cfg).unwrap()
    };
    let (a, _a_rx) = mk(&a_name);
    let (b, mut b_rx) = mk(&b_name);
    a.set_peers(&peers(&[(&b_name, b.local_addr().unwrap())]));
    b.set_peers(&peers(&[(&a_name, a.local_addr().unwrap())]));
    until("connected", || {
        connected(&a, &b_name) && connected(&b, &a_name)
    })
    .await;
    assert_eq!(a.max_datagram_size(&b_name), Some(1500));
    deliver(&a, &b_name, &mut b_rx, &a_name, &payload(1500, 5)).await;
}

#[tokio::test]
async fn one_connection_when_both_are_told_at_once() {
    let pki = Pki::new();
    let (d_name, w_name) = names("d", "w", true);
    let (d, _d_rx, d_addr) = node(&pki, &d_name);
    let (w, mut w_rx, w_addr) = node(&pki, &w_name);
    introduce(&d, &d_name, d_addr, &w, &w_name, w_addr).await;
    deliver(&d, &w_name, &mut w_rx, &d_name, b"ping").await;

    let (_, at_dialer) = d.live_ids(&w_name).unwrap();
    let (_, at_acceptor) = w.live_ids(&d_name).unwrap();
    assert_eq!(at_dialer.opened_by, Side::Local);
    assert_eq!(at_acceptor.opened_by, Side::Peer);
    assert_eq!(at_dialer.attempt, at_acceptor.attempt);
    assert_eq!(counter(&d, "dials"), 1);
    assert_eq!(counter(&w, "dials"), 0, "the accepting side never dials");
    assert_eq!(counter(&d, "connections_dialed"), 1);
    assert_eq!(counter(&w, "connections_accepted"), 1);
    for t in [&d, &w] {
        assert_eq!(counter(t, "duplicates_closed"), 0);
        assert_eq!(counter(t, "refused_not_dialer"), 0);
    }
    assert_eq!(state(&w, &d_name), Some(ConnState::Connected));
    assert!(!w.status()[0].we_dial);
}

#[tokio::test]
async fn duplicate_connections_converge_on_the_one_the_rule_keeps() {
    let pki = Pki::new();
    let (d_name, w_name) = names("d", "w", true);
    let (d, _d_rx, d_addr) = node(&pki, &d_name);
    let (w, mut w_rx, w_addr) = node(&pki, &w_name);
    introduce(&d, &d_name, d_addr, &w, &w_name, w_addr).await;
    let (_, first) = d.live_ids(&w_name).unwrap();

    // The accepting side dials out of turn: the dialer refuses it, both keep the first.
    let _ = w.dial_once(&d_name, d_addr).await;
    until("the out-of-turn dial refused", || {
        counter(&d, "refused_not_dialer") == 1
    })
    .await;
    assert_eq!(d.live_ids(&w_name).unwrap().1, first);
    assert_eq!(w.live_ids(&d_name).unwrap().1.attempt, first.attempt);

    // The dialer dials again while the first lives: both keep the newer attempt.
    let second = d.dial_once(&w_name, w_addr).await.unwrap();
    let (id, info) = d.live_ids(&w_name).unwrap();
    assert_eq!(id, second.stable_id());
    assert!(info.attempt > first.attempt);
    until("the acceptor on the newer connection", || {
        w.live_ids(&d_name)
            .is_some_and(|(_, i)| i.attempt == info.attempt)
    })
    .await;
    assert_eq!(counter(&d, "duplicates_closed"), 1);
    // w closed its own out-of-turn connection too.
    assert_eq!(counter(&w, "duplicates_closed"), 2);
    deliver(&d, &w_name, &mut w_rx, &d_name, b"after").await;
    // The dial loop watches the replacement instead of redialing.
    assert_eq!(d.live_ids(&w_name).unwrap().0, second.stable_id());
    assert_eq!(counter(&d, "dials"), 2);
}

/// A good node and a rogue one presenting `rogue_identity`; the good node refuses it
/// with `reason`, whichever side dials. Returns the good node's counters per direction.
/// The rogue trusts the cluster CA (its certificate is public), so that it goes on to
/// present its own certificate when it dials.
async fn refused_both_ways(
    pki: &Pki,
    rogue_identity: impl Fn(&str) -> NodeIdentity,
    revoke_rogue: bool,
    counter_name: &str,
) {
    for good_dials in [true, false] {
        let (g_name, r_name) = names("g", "r", good_dials);
        let rogue_id = rogue_identity(&r_name);
        let mut revoked = RevocationList::new();
        if revoke_rogue {
            revoked.revoke(rogue_id.fingerprint);
        }
        let mut cfg = config(loopback(), pki.ca("ca"), pki.identity("ca", &g_name));
        cfg.revoked = revoked;
        let (g, _g_rx) = QuicTransport::bind(cfg).unwrap();
        let (r, _r_rx) = QuicTransport::bind(config(loopback(), pki.ca("ca"), rogue_id)).unwrap();
        g.set_peers(&peers(&[(&r_name, r.local_addr().unwrap())]));
        r.set_peers(&peers(&[(&g_name, g.local_addr().unwrap())]));

        let dir = if good_dials { "dialing" } else { "accepting" };
        until(&format!("{counter_name} counted by the {dir} side"), || {
            counter(&g, counter_name) >= 1
        })
        .await;
        // The rogue keeps trying; none of its attempts brings the tunnel up.
        let tries = counter(&r, "dials") + counter(&g, "dials");
        until("another attempt", || {
            counter(&r, "dials") + counter(&g, "dials") > tries
        })
        .await;
        assert!(!connected(&g, &r_name), "{dir}: the tunnel came up");
        assert_ne!(state(&g, &r_name), Some(ConnState::Connected));
        assert_eq!(counter(&g, "connections_accepted"), 0, "{dir}");
        assert_eq!(g.send(&r_name, b"x"), Err(SendError::NoConnection));
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_cannot_bring_up_a_tunnel() {
    let pki = Pki::new();
    refused_both_ways(&pki, |n| pki.identity("other", n), false, "cert_foreign_ca").await;
}

#[tokio::test]
async fn an_expired_certificate_cannot_bring_up_a_tunnel() {
    let pki = Pki::new();
    let now = SystemTime::now();
    let past = Validity {
        not_before: now - Duration::from_secs(10 * 86_400),
        not_after: now - Duration::from_secs(86_400),
    };
    refused_both_ways(
        &pki,
        |n| pki.identity_with("ca", n, n, past),
        false,
        "cert_expired",
    )
    .await;
}

#[tokio::test]
async fn a_revoked_certificate_cannot_bring_up_a_tunnel() {
    let pki = Pki::new();
    refused_both_ways(&pki, |n| pki.identity("ca", n), true, "cert_revoked").await;
}

#[tokio::test]
async fn a_certificate_naming_another_node_cannot_bring_up_a_tunnel() {
    let pki = Pki::new();
    let valid = Validity::days_from(SystemTime::now(), 10);
    let other = |n: &str| pki.identity_with("ca", n, "someone-else", valid);
    // Dialed, the rogue's certificate does not name the member dialed.
    let (g_name, r_name) = names("g", "r", true);
    {
        let (g, _g_rx) = QuicTransport::bind(config(
            loopback(),
            pki.ca("ca"),
            pki.identity("ca", &g_name),
        ))
        .unwrap();
        let (r, _r_rx) =
            QuicTransport::bind(config(loopback(), pki.ca("ca"), other(&r_name))).unwrap();
        g.set_peers(&peers(&[(&r_name, r.local_addr().unwrap())]));
        r.set_peers(&peers(&[(&g_name, g.local_addr().unwrap())]));
        until("name_mismatch counted", || {
            counter(&g, "cert_name_mismatch") >= 1
        })
        .await;
        assert!(!connected(&g, &r_name));
        assert!(!connected(&r, &g_name));
    }
    // Dialing, the rogue is taken for the member its certificate names, which is no
    // wanted peer.
    let (g_name, r_name) = names("g", "r", false);
    let (g, _g_rx) = QuicTransport::bind(config(
        loopback(),
        pki.ca("ca"),
        pki.identity("ca", &g_name),
    ))
    .unwrap();
    let (r, _r_rx) = QuicTransport::bind(config(loopback(), pki.ca("ca"), other(&r_name))).unwrap();
    g.set_peers(&peers(&[(&r_name, r.local_addr().unwrap())]));
    r.set_peers(&peers(&[(&g_name, g.local_addr().unwrap())]));
    until("refused_unknown_peer counted", || {
        counter(&g, "refused_unknown_peer") >= 1
    })
    .await;
    assert!(!connected(&g, &r_name));
    assert!(!connected(&g, "someone-else"));
    assert_eq!(counter(&g, "connections_accepted"), 0);
}

#[tokio::test]
async fn the_dialer_reconnects_after_the_peer_is_dropped_and_bound_again() {
    let pki = Pki::new();
    let (d_name, w_name) = names("d", "w", true);
    let (d, _d_rx, d_addr) = node(&pki, &d_name);
    let (w, _w_rx, w_addr) = node(&pki, &w_name);
    introduce(&d, &d_name, d_addr, &w, &w_name, w_addr).await;
    // Not the stable id: quinn reuses a freed connection's.
    let (_, old) = d.live_ids(&w_name).unwrap();

    w.shutdown(Duration::from_secs(1)).await;
    until("the dialer sees the loss", || !connected(&d, &w_name)).await;
    // The same port again, once the old socket is gone.
    let start = Instant::now();
    let (w, mut w_rx) = loop {
        match QuicTransport::bind(config(w_addr, pki.ca("ca"), pki.identity("ca", &w_name))) {
            Ok(t) => break t,
            Err(e) => {
                assert!(
                    start.elapsed() < DEADLINE,
                    "cannot bind {w_addr} again: {e:#}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    w.set_peers(&peers(&[(&d_name, d_addr)]));
    let start = Instant::now();
    while !(d
        .live_ids(&w_name)
        .is_some_and(|(_, i)| i.attempt > old.attempt)
        && connected(&w, &d_name))
    {
        assert!(
            start.elapsed() < DEADLINE,
            "no reconnection: {:?} {:?} {:?}",
            d.status(),
            d.to_map(),
            w.to_map()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    deliver(&d, &w_name, &mut w_rx, &d_name, &payload(1000, 6)).await;
    let st = d.status();
    assert!(st[0].reconnects >= 1, "{st:?}");
    assert!(counter(&d, "connections_lost") >= 1);
}

#[tokio::test]
async fn reload_with_a_revocation_closes_that_connection_and_keeps_another() {
    let pki = Pki::new();
    let (x_name, b_name) = names("x", "b", true);
    let (_, c_name) = names("x", "c", false);
    let (x, _x_rx, x_addr) = node(&pki, &x_name);
    let (b, _b_rx, b_addr) = node(&pki, &b_name);
    let (c, mut c_rx, c_addr) = node(&pki, &c_name);
    x.set_peers(&peers(&[(&b_name, b_addr), (&c_name, c_addr)]));
    b.set_peers(&peers(&[(&x_name, x_addr)]));
    c.set_peers(&peers(&[(&x_name, x_addr)]));
    until("x connected to b and c", || {
        connected(&x, &b_name) && connected(&x, &c_name) && connected(&c, &x_name)
    })
    .await;
    let (c_id, _) = x.live_ids(&c_name).unwrap();
    let b_fp = x.peer_fingerprint(&b_name).unwrap();

    let revoked: RevocationList = [b_fp].into_iter().collect();
    let closed = x
        .reload(pki.ca("ca"), &pki.identity("ca", &x_name), revoked)
        .unwrap();

    assert_eq!(closed, vec![b_name.clone()]);
    assert!(!connected(&x, &b_name));
    assert_eq!(counter(&x, "closed_on_reload"), 1);
    assert_eq!(counter(&x, "cert_revoked"), 1);
    until("b sees its tunnel closed", || !connected(&b, &x_name)).await;
    assert_eq!(x.live_ids(&c_name).map(|(id, _)| id), Some(c_id));
    deliver(&x, &c_name, &mut c_rx, &x_name, b"still here").await;
    // x keeps dialing b and keeps refusing it.
    until("b's certificate refused at the next handshake", || {
        counter(&x, "cert_revoked") >= 2
    })
    .await;
    assert!(!connected(&x, &b_name));
    assert_eq!(x.live_ids(&c_name).map(|(id, _)| id), Some(c_id));
}

#[tokio::test]
async fn a_peer_no_longer_wanted_is_disconnected() {
    let pki = Pki::new();
    let (d_name, w_name) = names("d", "w", true);
    let (d, _d_rx, d_addr) = node(&pki, &d_name);
    let (w, _w_rx, w_addr) = node(&pki, &w_name);
    introduce(&d, &d_name, d_addr, &w, &w_name, w_addr).await;
    w.set_peers(&[]);
    assert!(!connected(&w, &d_name));
    until("the dialer sees it closed", || !connected(&d, &w_name)).await;
    // The dialer's redials are now refused as unknown.
    until("refused as unknown", || {
        counter(&w, "refused_unknown_peer") >= 1
    })
    .await;
    assert!(w.status().is_empty());
}

#[tokio::test]
async fn a_new_address_is_dialed_at_once() {
    let pki = Pki::new();
    let (d_name, w_name) = names("d", "w", true);
    let mut cfg = config(loopback(), pki.ca("ca"), pki.identity("ca", &d_name));
    // Long enough that waiting out a handshake with the old address would show.
    cfg.idle_timeout = Duration::from_secs(30);
    let (d, _d_rx) = QuicTransport::bind(cfg).unwrap();
    let d_addr = d.local_addr().unwrap();
    let (w, mut w_rx, w_addr) = node(&pki, &w_name);
    w.set_peers(&peers(&[(&d_name, d_addr)]));
    // A socket that never answers: the handshake with it hangs.
    let silent = std::net::UdpSocket::bind(loopback()).unwrap();
    d.set_peers(&peers(&[(&w_name, silent.local_addr().unwrap())]));
    until("dialing the silent address", || {
        counter(&d, "dials") == 1 && state(&d, &w_name) == Some(ConnState::Connecting)
    })
    .await;

    let moved = Instant::now();
    d.set_peers(&peers(&[(&w_name, w_addr)]));
    until("connected at the new address", || connected(&d, &w_name)).await;
    assert!(
        moved.elapsed() < Duration::from_secs(10),
        "took {:?}: the dial of the old address was waited out",
        moved.elapsed()
    );
    assert_eq!(d.status()[0].remote, Some(w_addr));
    assert_eq!(counter(&d, "dials"), 2);
    deliver(&d, &w_name, &mut w_rx, &d_name, b"moved").await;
}

#[tokio::test]
async fn a_dialer_that_moves_keeps_its_connection() {
    let pki = Pki::new();
    let (d_name, w_name) = names("d", "w", true);
    let (d, mut d_rx, d_addr) = node(&pki, &d_name);
    let (w, mut w_rx, w_addr) = node(&pki, &w_name);
    introduce(&d, &d_name, d_addr, &w, &w_name, w_addr).await;
    let (_, before) = w.live_ids(&d_name).unwrap();

    d.rebind(loopback()).unwrap();
    let new_addr = d.local_addr().unwrap();
    assert_ne!(new_addr, d_addr);
    deliver(&d, &w_name, &mut w_rx, &d_name, b"from the new address").await;
    until("the acceptor follows the dialer", || {
        w.status()[0].remote == Some(new_addr)
    })
    .await;
    deliver(&w, &d_name, &mut d_rx, &w_name, b"to the new address").await;
    // The same connection, migrated; no redial.
    assert_eq!(w.live_ids(&d_name).unwrap().1, before);
    assert_eq!(counter(&d, "dials"), 1);
}

/// A measurement, not a check: 1400-byte datagrams one way for 2 s on loopback.
/// `cargo test -p overlayd --lib quic::tests::loopback_throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn loopback_throughput() {
    let pki = Pki::new();
    let (a_name, b_name) = names("a", "b", true);
    let (a, _a_rx, a_addr) = node(&pki, &a_name);
    let (b, mut b_rx, b_addr) = node(&pki, &b_name);
    introduce(&a, &a_name, a_addr, &b, &b_name, b_addr).await;
    let packet = Bytes::from(payload(1400, 7));
    let run = Duration::from_secs(2);
    let receiver = tokio::spawn(async move {
        let (mut n, mut bytes) = (0u64, 0u64);
        let start = Instant::now();
        while let Ok(Some((_, d))) = tokio::time::timeout(run, b_rx.recv()).await {
            n += 1;
            bytes += d.len() as u64;
            if start.elapsed() > run {
                break;
            }
        }
        (n, bytes, start.elapsed())
    });
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < run {
        for _ in 0..32 {
            let _ = a.send_bytes(&b_name, packet.clone());
            sent += 1;
        }
        tokio::task::yield_now().await;
    }
    let (n, bytes, took) = receiver.await.unwrap();
    let secs = took.as_secs_f64();
    eprintln!(
        "sent {sent}, received {n} ({:.0}/s, {:.0} Mbit/s), rtt {:?}",
        n as f64 / secs,
        bytes as f64 * 8.0 / secs / 1e6,
        a.status()[0].rtt
    );
    assert!(n > 0);
}

#[tokio::test]
async fn a_revocation_from_gossip_closes_the_revoked_peer_only() {
    let pki = Pki::new();
    let (d_name, w_name) = names("d", "w", true);
    let (d, _d_rx, d_addr) = node(&pki, &d_name);
    let (w, _w_rx, w_addr) = node(&pki, &w_name);
    introduce(&d, &d_name, d_addr, &w, &w_name, w_addr).await;

    // Someone else's certificate on the list: nothing closes.
    let unrelated = pki.identity("ca", "unrelated").fingerprint;
    assert!(w.set_revoked([unrelated].into_iter().collect()).is_empty());
    assert!(connected(&w, &d_name));
    let d_fp = w.peer_fingerprint(&d_name).unwrap();
    assert_eq!(
        w.set_revoked([unrelated, d_fp].into_iter().collect()),
        vec![d_name.clone()]
    );
    // The accepting side shows it no longer connected (it waits for the peer to dial).
    assert_eq!(state(&w, &d_name), Some(ConnState::Waiting));
    until("the dialer sees it closed", || !connected(&d, &w_name)).await;
    // Its redials are refused by the acceptor's verifier.
    until("a redial refused as revoked", || {
        counter(&w, "cert_revoked") >= 2
    })
    .await;
    assert!(!connected(&w, &d_name));
    assert_eq!(counter(&w, "closed_on_reload"), 1);
}

/// A peer whose record advertises another certificate's fingerprint (another certificate
/// for its name, or its rotated one before the new record came) is refused and counted
/// as `cert_fingerprint_mismatch`, whichever side dials; once the record advertises the
/// certificate it presents (the late record), the retries bring the tunnel up; a record
/// changing under a live connection leaves it up.
#[tokio::test]
async fn a_certificate_other_than_the_advertised_one_is_refused_until_the_record_matches() {
    let pki = Pki::new();
    for good_dials in [true, false] {
        let (g_name, r_name) = names("g", "r", good_dials);
        let (g, _g_rx, g_addr) = node(&pki, &g_name);
        let (r, mut r_rx, r_addr) = node(&pki, &r_name);
        let advertised = pki.identity("ca", &r_name).fingerprint; // a newer one for r
        g.set_advertised([(r_name.clone(), advertised)].into_iter().collect());
        g.set_peers(&peers(&[(&r_name, r_addr)]));
        r.set_peers(&peers(&[(&g_name, g_addr)]));
        let dir = if good_dials { "dialing" } else { "accepting" };
        until(
            &format!("fingerprint_mismatch counted by the {dir} side"),
            || counter(&g, "cert_fingerprint_mismatch") >= 1,
        )
        .await;
        assert!(!connected(&g, &r_name), "{dir}: the tunnel came up");
        assert_eq!(counter(&g, "connections_accepted"), 0, "{dir}");

        // The record catches up: the next retry is accepted.
        // The certificate r presents is the one its transport was bound with.
        let actual = r.own_fingerprint().expect("r has a certificate");
        g.set_advertised([(r_name.clone(), actual)].into_iter().collect());
        until(
            &format!("{dir}: connected after the record matched"),
            || connected(&g, &r_name) && connected(&r, &g_name),
        )
        .await;
        deliver(&g, &r_name, &mut r_rx, &g_name, b"healed").await;
        // A record advertising yet another certificate does not cut the live tunnel.
        let (id, _) = g.live_ids(&r_name).unwrap();
        g.set_advertised([(r_name.clone(), advertised)].into_iter().collect());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(g.live_ids(&r_name).map(|(id, _)| id), Some(id), "{dir}");
    }
}
