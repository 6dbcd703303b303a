//! The gossip shell: owns the UDP socket and TCP listener of the gossip port and drives
//! `overlayd_proto::gossip::Gossip` — datagrams in, timers, transmits out, full-state
//! streams over TCP — and turns its events into the daemon's peer set and local subnet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use ipnet::Ipv4Net;
use overlayd_proto::PeerInfo;
use overlayd_proto::gossip::{DownReason, Event, Gossip, MemberState, SecretKey};
use overlayd_proto::pki::{
    Fingerprint, Revocation, RevocationChange, parse_revoked_key, revocation_change, revoked_key,
};
use overlayd_proto::routing::liveness::KeptPeers;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};

use crate::discovery::PeerSource;
use crate::services::{Commands, ServiceState};

pub use overlayd_proto::api::{GossipReport, MemberReport};

/// Largest full-state request a peer may send us over TCP.
const MAX_STREAM_REQUEST: usize = 64 * 1024;
/// Largest full-state response we accept.
const MAX_STREAM_RESPONSE: usize = 64 * 1024 * 1024;
/// Full-state streams served at once; further connections are closed at once.
const MAX_STREAMS: usize = 32;
/// Pause after a failed accept (out of file descriptors), instead of spinning.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A full-state request from a peer's TCP connection, and where to send the answer
/// (`None`: refused, the connection is closed).
type ServeRequest = (Vec<u8>, oneshot::Sender<Option<Vec<u8>>>);

/// The claimed pod subnet, persisted so a restarted node gets it back.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubnetClaim {
    pub subnet: Ipv4Net,
    pub claimed_at: u64,
}

impl SubnetClaim {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("subnet.json")
    }

    /// The claim persisted in `state_dir`, if any.
    pub fn load(state_dir: &Path) -> Result<Option<SubnetClaim>> {
        match std::fs::read(Self::path(state_dir)) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is corrupt; remove it to claim a new subnet",
                    Self::path(state_dir).display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading the persisted subnet claim"),
        }
    }

    fn save(&self, state_dir: &Path) -> Result<()> {
        crate::write_atomic(&Self::path(state_dir), &serde_json::to_vec(self)?)
    }
}

/// Persists subnet claims off the gossip loop (fsync is slow). Writes run one at a time
/// and each writes the newest claim not yet written, so two quick changes can never leave
/// the older claim on disk, whatever order the blocking pool runs them in.
#[derive(Clone, Default)]
struct ClaimWriter {
    pending: Arc<Mutex<Option<SubnetClaim>>>,
    writing: Arc<Mutex<()>>,
}

impl ClaimWriter {
    /// Records `claim` as the newest; the next [`ClaimWriter::flush`] writes it.
    fn stage(&self, claim: SubnetClaim) {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = Some(claim);
    }

    /// Writes the newest staged claim, if any is left to write.
    fn flush(&self, state_dir: &Path) -> Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let claim = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        claim.map_or(Ok(()), |claim| claim.save(state_dir))
    }

    fn save_in_background(&self, state_dir: PathBuf, claim: SubnetClaim) {
        self.stage(claim);
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = this.flush(&state_dir) {
                tracing::error!("persisting the subnet claim: {e:#}; a restart may claim another");
            }
        });
    }
}

/// Changes to the running keyring.
#[derive(Debug, Clone)]
pub enum KeyOp {
    List,
    Install(SecretKey),
    Use(SecretKey),
    Remove(SecretKey),
    /// Make the keyring exactly these keys, the first primary (config reload).
    Replace(Vec<SecretKey>),
}

enum Command {
    Members(oneshot::Sender<Vec<MemberReport>>),
    Report(oneshot::Sender<GossipReport>),
    Keys(KeyOp, oneshot::Sender<Result<Vec<String>>>),
    Leave(oneshot::Sender<()>),
    Revoke(Revocation, oneshot::Sender<Result<()>>),
    AdvertiseCert(Option<Fingerprint>, oneshot::Sender<Result<()>>),
}

/// Every revocation seen in gossip state, by fingerprint. Only ever grows while the
/// daemon runs: a deletion of a revocation object (no command writes one) is refused by
/// writing the revocation again, so a stale or rogue delete cannot un-revoke.
pub type Revoked = BTreeMap<Fingerprint, Revocation>;

/// Where a node keeps every revocation it has seen, so that a restart — of this node or
/// of every node at once — forgets none: at start they are applied before gossip has
/// synced and written into gossip state again.
const REVOKED_FILE: &str = "revoked.json";

/// The revocations persisted in `state_dir`. A file that does not parse is moved aside
/// (`revoked.json.corrupt`) with an error: the node starts with what gossip brings back.
fn load_revoked(state_dir: &Path) -> Revoked {
    let path = state_dir.join(REVOKED_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Revoked::new(),
        Err(e) => {
            tracing::error!(path = %path.display(), "reading the persisted revocations: {e}");
            return Revoked::new();
        }
    };
    match serde_json::from_slice::<Vec<Revocation>>(&bytes) {
        Ok(list) => list.into_iter().map(|r| (r.fingerprint, r)).collect(),
        Err(e) => {
            let aside = state_dir.join(format!("{REVOKED_FILE}.corrupt"));
            let moved = std::fs::rename(&path, &aside);
            tracing::error!(
                path = %path.display(),
                moved_to = %aside.display(),
                moved = moved.is_ok(),
                "the persisted revocations do not parse ({e}); starting with those gossip brings"
            );
            Revoked::new()
        }
    }
}

fn save_revoked(state_dir: &Path, revoked: &Revoked) -> Result<()> {
    let list: Vec<&Revocation> = revoked.values().collect();
    crate::write_atomic(
        &state_dir.join(REVOKED_FILE),
        &serde_json::to_vec_pretty(&list)?,
    )
}

/// The daemon's handle on the running gossip task.
#[derive(Clone)]
pub struct GossipHandle {
    commands: mpsc::Sender<Command>,
    peers: watch::Sender<Vec<PeerInfo>>,
    subnet: watch::Receiver<Option<Ipv4Net>>,
    /// The dead members whose routes are kept (their daemons are down).
    daemon_down: watch::Receiver<BTreeSet<String>>,
    revoked: watch::Receiver<Revoked>,
}

impl PeerSource for GossipHandle {
    fn subscribe(&self) -> watch::Receiver<Vec<PeerInfo>> {
        self.peers.subscribe()
    }
}

impl GossipHandle {
    pub async fn members(&self) -> Result<Vec<MemberReport>> {
        self.ask(Command::Members).await
    }

    pub async fn report(&self) -> Result<GossipReport> {
        self.ask(Command::Report).await
    }

    /// Applies a keyring change; returns the fingerprints installed afterwards, primary first.
    pub async fn keys(&self, op: KeyOp) -> Result<Vec<String>> {
        self.ask(|tx| Command::Keys(op, tx)).await?
    }

    /// Announces a graceful leave and waits until it has been sent.
    pub async fn leave(&self) -> Result<()> {
        self.ask(Command::Leave).await
    }

    /// Whether gossip declared `member` dead while its node still answers (its routes
    /// are kept: its daemon is down).
    pub fn daemon_down(&self, member: &str) -> bool {
        self.daemon_down.borrow().contains(member)
    }

    /// Publishes a revocation as the cluster object `pki/revoked/<fingerprint>`; one
    /// already held is left as it is (the first revocation's time and author stay).
    pub async fn revoke(&self, revocation: Revocation) -> Result<()> {
        self.ask(|tx| Command::Revoke(revocation, tx)).await?
    }

    /// Advertises `fingerprint` as this node's QUIC certificate in its record (the
    /// capability `cert=…`), replacing the one advertised before.
    pub async fn advertise_cert(&self, fingerprint: Option<Fingerprint>) -> Result<()> {
        self.ask(|tx| Command::AdvertiseCert(fingerprint, tx))
            .await?
    }

    /// Every revocation known, growing as gossip brings more.
    pub fn revoked(&self) -> watch::Receiver<Revoked> {
        self.revoked.clone()
    }

    /// The local pod subnet: `None` until claimed; changes if a conflict is lost.
    pub fn subnet(&self) -> watch::Receiver<Option<Ipv4Net>> {
        self.subnet.clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| anyhow!("the gossip task has stopped"))?;
        rx.await.map_err(|_| anyhow!("the gossip task has stopped"))
    }
}

/// Everything the gossip task needs.
pub struct GossipSetup {
    pub gossip: Gossip,
    pub bind: SocketAddr,
    pub state_dir: PathBuf,
    /// Configured `[[peer]]`s (nodes that do not gossip), always part of the peer set.
    pub static_peers: Vec<PeerInfo>,
    pub stream_timeout: Duration,
    /// The Services, whose objects live in this core.
    pub services: (ServiceState, Commands),
}

/// Binds the gossip port (UDP and TCP) and starts the task.
pub async fn start(
    setup: GossipSetup,
) -> Result<(GossipHandle, tokio::task::JoinHandle<Result<()>>)> {
    let udp = UdpSocket::bind(setup.bind)
        .await
        .with_context(|| format!("binding the gossip UDP port {}", setup.bind))?;
    let tcp = TcpListener::bind(setup.bind)
        .await
        .with_context(|| format!("binding the gossip TCP port {}", setup.bind))?;
    let (commands, rx) = mpsc::channel(16);
    let initial_subnet = setup.gossip.local().pod_subnet;
    let peers = watch::Sender::new(setup.static_peers.clone());
    let (subnet_tx, subnet) = watch::channel(initial_subnet);
    let (daemon_down_tx, daemon_down) = watch::channel(BTreeSet::new());
    let (revoked_tx, revoked) = watch::channel(load_revoked(&setup.state_dir));
    let handle = GossipHandle {
        commands,
        peers: peers.clone(),
        subnet,
        daemon_down,
        revoked,
    };
    let (services, service_commands) = setup.services;
    let setup = GossipSetupCore {
        gossip: setup.gossip,
        state_dir: setup.state_dir,
        static_peers: setup.static_peers,
        stream_timeout: setup.stream_timeout,
    };
    let task = tokio::spawn(
        Driver {
            setup,
            services,
            service_commands,
            udp,
            tcp,
            commands: rx,
            peers,
            subnet: subnet_tx,
            claims: ClaimWriter::default(),
            liveness: Liveness::new(),
            daemon_down: daemon_down_tx,
            revoked: revoked_tx,
            revoked_writing: Arc::default(),
        }
        .run(),
    );
    Ok((handle, task))
}

/// [`GossipSetup`] without the Services, which the driver keeps apart.
struct GossipSetupCore {
    gossip: Gossip,
    state_dir: PathBuf,
    static_peers: Vec<PeerInfo>,
    stream_timeout: Duration,
}

struct Driver {
    setup: GossipSetupCore,
    services: ServiceState,
    service_commands: Commands,
    udp: UdpSocket,
    tcp: TcpListener,
    commands: mpsc::Receiver<Command>,
    peers: watch::Sender<Vec<PeerInfo>>,
    subnet: watch::Sender<Option<Ipv4Net>>,
    claims: ClaimWriter,
    liveness: Liveness,
    daemon_down: watch::Sender<BTreeSet<String>>,
    revoked: watch::Sender<Revoked>,
    /// Held while `revoked.json` is written (off the loop: fsync is slow).
    revoked_writing: Arc<Mutex<()>>,
}

/// How often a dead member's node is pinged while its routes are kept.
const LIVENESS_PROBE: Duration = Duration::from_millis(250);

/// Gossip death is not data-path death: the members gossip declared dead whose nodes
/// still answer ICMP echo (their kernels; the daemon may be restarting) keep their routes
/// (`proto::routing::liveness`).
struct Liveness {
    kept: KeptPeers,
    /// `None` without CAP_NET_RAW: dead members are withdrawn at once, as before.
    echo: Option<crate::echo::Echo>,
    /// When the kept members are probed and decided on next.
    next: Instant,
}

impl Liveness {
    fn new() -> Self {
        let echo = match crate::echo::Echo::open() {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(
                    "{e:#}: a member gossip declares dead loses its routes at once, even while its node forwards"
                );
                None
            }
        };
        Liveness {
            kept: KeptPeers::default(),
            echo,
            next: Instant::now(),
        }
    }

    /// Pings every kept member's node and reads the answers.
    fn probe(&mut self, now: Instant) {
        let Some(echo) = self.echo.as_mut() else {
            return;
        };
        for addr in echo.replies() {
            self.kept.probe_answered(now, addr);
        }
        for addr in self.kept.to_probe() {
            if echo.send(addr).is_ok() {
                self.kept.probe_sent(now, addr);
            }
        }
    }
}

pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Driver {
    async fn run(mut self) -> Result<()> {
        // The persisted revocations go into gossip state again: the cluster may have
        // forgotten them (every node restarted), and a copy already there stays as it was.
        let persisted: Vec<Revocation> = self.revoked.borrow().values().cloned().collect();
        for revocation in &persisted {
            if let Err(e) = self.write_revocation(revocation) {
                tracing::error!(fingerprint = %revocation.fingerprint, "re-publishing a persisted revocation: {e:#}");
            }
        }
        let (stream_done_tx, mut stream_done) = mpsc::channel::<(SocketAddr, Result<Vec<u8>>)>(8);
        let (serve_tx, mut serve) = mpsc::channel::<ServeRequest>(8);
        let mut buf = vec![0u8; 65_536];
        let streams = Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS));
        loop {
            self.flush(&stream_done_tx).await;
            self.services.tick(&mut self.setup.gossip, Instant::now());
            let deadline = self
                .setup
                .gossip
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            let services_due = self
                .services
                .deadline()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            // A fixed schedule (not "250 ms from now" each pass: gossip wakes the loop
            // more often than that, and the tick would never come).
            let liveness_due = if self.liveness.kept.to_probe().is_empty() {
                Instant::now() + Duration::from_secs(3600)
            } else {
                self.liveness.next
            };
            tokio::select! {
                _ = tokio::time::sleep_until(liveness_due.into()) => {
                    let now = Instant::now();
                    self.liveness.next = now + LIVENESS_PROBE;
                    self.liveness.probe(now);
                    self.publish_peers();
                }
                _ = tokio::time::sleep_until(services_due.into()) => {}
                _ = self.services.pods_changed() => self.services.mark_dirty(),
                Some(command) = self.service_commands.recv() => {
                    self.services.command(&mut self.setup.gossip, Instant::now(), command);
                }
                received = self.udp.recv_from(&mut buf) => {
                    // A failing receive (ICMP port unreachable surfacing, say) is not fatal.
                    if let Ok((n, from)) = received {
                        self.setup.gossip.handle_datagram(Instant::now(), from, &buf[..n]);
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = Instant::now();
                    self.setup.gossip.set_wall_clock(now, wall_clock_ms());
                    self.setup.gossip.handle_timeout(now);
                }
                Some((to, result)) = stream_done.recv() => match result {
                    Ok(bytes) => self.setup.gossip.handle_stream_response(Instant::now(), &bytes),
                    Err(e) => {
                        tracing::debug!(%to, "full-state pull failed: {e:#}");
                        self.setup.gossip.handle_stream_failed(Instant::now(), to);
                    }
                },
                accepted = self.tcp.accept() => match accepted {
                    Ok((conn, from)) => {
                        // Anyone can connect before authenticating: bound what they hold.
                        let Ok(permit) = streams.clone().try_acquire_owned() else {
                            tracing::debug!(%from, "refusing a full-state stream: {MAX_STREAMS} in flight");
                            continue;
                        };
                        let serve_tx = serve_tx.clone();
                        let timeout = self.setup.stream_timeout;
                        tokio::spawn(async move {
                            let served = tokio::time::timeout(timeout, serve_conn(conn, serve_tx)).await;
                            if let Err(e) = served.map_err(anyhow::Error::from).and_then(|r| r) {
                                tracing::debug!(%from, "full-state stream: {e:#}");
                            }
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors, say: wait instead of spinning on it.
                        tracing::warn!("accepting on the gossip TCP port: {e}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some((request, reply)) = serve.recv() => {
                    let _ = reply.send(self.setup.gossip.serve_stream(Instant::now(), &request).ok());
                }
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => return Ok(()),
                },
            }
        }
    }

    /// Sends what the core queued and acts on its events.
    async fn flush(&mut self, stream_done: &mpsc::Sender<(SocketAddr, Result<Vec<u8>>)>) {
        while let Some(t) = self.setup.gossip.poll_transmit() {
            if let Err(e) = self.udp.send_to(&t.payload, t.dst).await {
                tracing::debug!(dst = %t.dst, "gossip send: {e}");
            }
        }
        while let Some(req) = self.setup.gossip.poll_stream() {
            let done = stream_done.clone();
            let timeout = self.setup.stream_timeout;
            tokio::spawn(async move {
                let result = tokio::time::timeout(timeout, pull(req.to, req.request))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r);
                let _ = done.send((req.to, result)).await;
            });
        }
        let mut changed = false;
        while let Some(event) = self.setup.gossip.poll_event() {
            if matches!(
                event,
                Event::ObjectChanged { .. }
                    | Event::MemberUp(_)
                    | Event::MemberUpdated(_)
                    | Event::MemberDown { .. }
            ) {
                self.services.mark_dirty();
            }
            changed |= self.event(event);
        }
        if changed {
            self.publish_peers();
        }
    }

    /// Publishes the peer set: gossip's up members (and the static peers), plus the dead
    /// members whose nodes still answer.
    fn publish_peers(&mut self) {
        // Reaped by gossip: forgotten, and its routes go.
        let forgotten: Vec<String> = self
            .liveness
            .kept
            .names()
            .filter(|n| self.setup.gossip.member(n).is_none())
            .map(str::to_owned)
            .collect();
        for name in forgotten {
            tracing::info!(member = %name, "routes of a member gossip forgot withdrawn");
            self.liveness.kept.member_gone(&name);
        }
        let mut peers = self.setup.gossip.peers(&self.setup.static_peers);
        let (kept, gone) = self.liveness.kept.decide(Instant::now(), &peers);
        for (name, reason) in gone {
            tracing::info!(member = %name, ?reason, "routes of a dead member withdrawn");
        }
        for info in kept {
            if !peers.iter().any(|p| p.name == info.name) {
                peers.push(info);
            }
        }
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let down: BTreeSet<String> = self.liveness.kept.names().map(str::to_owned).collect();
        self.services.set_daemon_down(&down);
        self.daemon_down.send_if_modified(|current| {
            let differs = *current != down;
            if differs {
                *current = down;
            }
            differs
        });
        self.peers.send_if_modified(|current| {
            let differs = *current != peers;
            if differs {
                *current = peers;
            }
            differs
        });
    }

    /// Returns whether the peer set may have changed.
    fn event(&mut self, event: Event) -> bool {
        match event {
            Event::MemberUp(record) | Event::MemberUpdated(record) => {
                tracing::info!(member = %record.name, underlay = %record.underlay, subnet = ?record.pod_subnet, "member up or updated");
                self.liveness.kept.member_gone(&record.name);
                true
            }
            Event::MemberDown { name, reason } => {
                let last = self.peers.borrow().iter().find(|p| p.name == name).cloned();
                match (reason, last) {
                    (DownReason::Dead, Some(info)) if self.liveness.echo.is_some() => {
                        tracing::info!(member = %name, "member dead by gossip; its routes stay while its node answers");
                        self.liveness.kept.member_dead(Instant::now(), info);
                    }
                    _ => {
                        tracing::info!(member = %name, ?reason, "member down");
                        self.liveness.kept.member_gone(&name);
                    }
                }
                true
            }
            Event::LocalSubnetChanged { subnet, claimed_at } => {
                tracing::info!(%subnet, "claimed pod subnet");
                let claim = SubnetClaim {
                    subnet,
                    claimed_at: claimed_at.0,
                };
                self.claims
                    .save_in_background(self.setup.state_dir.clone(), claim);
                self.subnet.send_replace(Some(subnet));
                false
            }
            Event::SubnetPoolExhausted => {
                tracing::error!(
                    "every subnet of cluster.cidr is taken; this node has no pod subnet until one frees up"
                );
                false
            }
            Event::NameConflict { addr } => {
                tracing::error!(%addr, "another node gossips under this node's name; node names must be unique");
                false
            }
            Event::ObjectChanged { key, value } => {
                tracing::debug!(%key, deleted = value.is_none(), "cluster object changed");
                if let Some(fingerprint) = parse_revoked_key(&key) {
                    self.revocation_changed(fingerprint, value);
                }
                false
            }
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Members(reply) => {
                let now = Instant::now();
                let members = self
                    .setup
                    .gossip
                    .members()
                    .map(|m| MemberReport {
                        name: m.name.to_owned(),
                        address: m.addr,
                        subnet: m.record.and_then(|r| r.pod_subnet),
                        state: m.state,
                        incarnation: m.incarnation.incarnation,
                        generation: m.incarnation.generation,
                        last_heard_ms: m
                            .last_heard
                            .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                        daemon_down: self.liveness.kept.is_kept(m.name),
                        cert_fingerprint: m
                            .record
                            .and_then(|r| r.cert_fingerprint())
                            .map(|f| f.to_string()),
                    })
                    .collect();
                let _ = reply.send(members);
            }
            Command::Report(reply) => {
                let g = &self.setup.gossip;
                let count = |s: MemberState| g.members().filter(|m| m.state == s).count();
                let stats = g.stats();
                let _ = reply.send(GossipReport {
                    members_alive: count(MemberState::Alive),
                    members_suspect: count(MemberState::Suspect),
                    members_dead: count(MemberState::Dead) + count(MemberState::Left),
                    local_health: g.health_score(),
                    datagrams_sent: stats.datagrams_sent,
                    bytes_sent: stats.bytes_sent,
                    datagrams_received: stats.datagrams_received,
                    bytes_received: stats.bytes_received,
                    drops: stats
                        .drops_by_name()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                    key_fingerprints: fingerprints(g),
                });
            }
            Command::Keys(op, reply) => {
                let _ = reply.send(self.keys(op));
            }
            Command::Revoke(revocation, reply) => {
                let held = self
                    .setup
                    .gossip
                    .object(&revoked_key(&revocation.fingerprint));
                let result = if held.is_some() {
                    Ok(())
                } else {
                    self.write_revocation(&revocation)
                };
                let _ = reply.send(result);
            }
            Command::AdvertiseCert(fingerprint, reply) => {
                let result = self
                    .setup
                    .gossip
                    .update_local(Instant::now(), |r| r.set_cert_fingerprint(fingerprint))
                    .map_err(|e| anyhow!("advertising the certificate's fingerprint: {e}"));
                let _ = reply.send(result);
            }
            Command::Leave(reply) => {
                self.setup.gossip.leave(Instant::now());
                while let Some(t) = self.setup.gossip.poll_transmit() {
                    let _ = self.udp.send_to(&t.payload, t.dst).await;
                }
                let _ = reply.send(());
            }
        }
    }

    /// A revocation object was written or deleted: a new one joins the list; a deleted
    /// one stays on it and is written again (revocations are never undone).
    fn revocation_changed(&mut self, fingerprint: Fingerprint, value: Option<Vec<u8>>) {
        let held = self.revoked.borrow().get(&fingerprint).cloned();
        match revocation_change(fingerprint, held.as_ref(), value.as_deref()) {
            RevocationChange::Add(revocation) => {
                tracing::warn!(%fingerprint, by = %revocation.by, "certificate revoked");
                self.revoked.send_modify(|r| {
                    r.insert(fingerprint, revocation);
                });
                self.persist_revoked();
            }
            RevocationChange::Reassert(held) => {
                tracing::warn!(%fingerprint, "a revocation was deleted; writing it again (revocations are never undone)");
                if let Err(e) = self.write_revocation(&held) {
                    tracing::error!(%fingerprint, "re-asserting a revocation: {e:#}");
                }
            }
            RevocationChange::Nothing => {}
        }
    }

    /// Writes the revocations to `revoked.json` in the background. Each write takes the
    /// list as it is when it runs, one at a time, so the newest list is the last written.
    fn persist_revoked(&self) {
        let revoked = self.revoked.subscribe();
        let writing = self.revoked_writing.clone();
        let dir = self.setup.state_dir.clone();
        tokio::task::spawn_blocking(move || {
            let _writing = writing.lock().unwrap_or_else(PoisonError::into_inner);
            let list = revoked.borrow().clone();
            if let Err(e) = save_revoked(&dir, &list) {
                tracing::error!("persisting the revocations: {e:#}");
            }
        });
    }

    fn write_revocation(&mut self, revocation: &Revocation) -> Result<()> {
        let value = serde_json::to_vec(revocation)?;
        self.setup
            .gossip
            .set_object(
                Instant::now(),
                &revoked_key(&revocation.fingerprint),
                Some(value),
            )
            .map_err(|e| anyhow!("{e}"))
    }

    fn keys(&mut self, op: KeyOp) -> Result<Vec<String>> {
        let ring = self.setup.gossip.keyring_mut();
        match op {
            KeyOp::List => {}
            KeyOp::Install(key) => ring.install(key),
            KeyOp::Use(key) => ring.use_primary(&key)?,
            KeyOp::Remove(key) => ring.remove(&key)?,
            KeyOp::Replace(keys) => ring.replace(&keys)?,
        }
        Ok(fingerprints(&self.setup.gossip))
    }
}

fn fingerprints(g: &Gossip) -> Vec<String> {
    g.keyring()
        .keys()
        .map(|k| format!("{:016x}", k.fingerprint()))
        .collect()
}

/// Client side of a full-state pull: length-prefixed request, length-prefixed response.
async fn pull(to: SocketAddr, request: Vec<u8>) -> Result<Vec<u8>> {
    let mut conn = TcpStream::connect(to)
        .await
        .with_context(|| format!("connecting to {to}"))?;
    write_frame(&mut conn, &request).await?;
    read_frame(&mut conn, MAX_STREAM_RESPONSE).await
}

/// Server side: one request, one response, then close.
async fn serve_conn(mut conn: TcpStream, serve: mpsc::Sender<ServeRequest>) -> Result<()> {
    let request = read_frame(&mut conn, MAX_STREAM_REQUEST).await?;
    let (tx, rx) = oneshot::channel();
    serve
        .send((request, tx))
        .await
        .map_err(|_| anyhow!("gossip stopped"))?;
    let response = rx
        .await?
        .ok_or_else(|| anyhow!("request refused (counted in gossip drops)"))?;
    write_frame(&mut conn, &response).await
}

async fn write_frame(conn: &mut TcpStream, bytes: &[u8]) -> Result<()> {
    let len = u32::try_from(bytes.len()).context("frame too large")?;
    conn.write_all(&len.to_be_bytes()).await?;
    conn.write_all(bytes).await?;
    conn.flush().await?;
    Ok(())
}

async fn read_frame(conn: &mut TcpStream, max: usize) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        bail!("frame of {len} bytes exceeds {max}");
    }
    // Grow with what actually arrives: a peer announcing a large frame and sending
    // nothing does not get us to allocate it.
    let mut buf = Vec::with_capacity(len.min(64 * 1024));
    (&mut *conn).take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        bail!("connection closed after {} of {len} bytes", buf.len());
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(third_octet: u8, claimed_at: u64) -> SubnetClaim {
        SubnetClaim {
            subnet: Ipv4Net::new([10, 244, third_octet, 0].into(), 24).unwrap(),
            claimed_at,
        }
    }

    /// Two quick subnet changes each start a background write; whichever order they run
    /// in, the newer claim is what a restart finds.
    #[test]
    fn the_newest_claim_is_persisted_whatever_order_the_writes_run_in() {
        let dir = std::env::temp_dir().join(format!("overlayd-claims-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let writer = ClaimWriter::default();
        writer.stage(claim(1, 10));
        writer.stage(claim(2, 20));
        // Both writes run after both changes: the first writes the newest, the second
        // finds nothing left (before, each wrote the claim it was spawned with, so the
        // older one could land last).
        writer.flush(&dir).unwrap();
        writer.flush(&dir).unwrap();
        assert_eq!(SubnetClaim::load(&dir).unwrap(), Some(claim(2, 20)));

        writer.stage(claim(3, 30));
        writer.flush(&dir).unwrap();
        assert_eq!(SubnetClaim::load(&dir).unwrap(), Some(claim(3, 30)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What a node has seen revoked survives its restart; a file that does not parse is
    /// moved aside and said, not taken as "nothing revoked" in silence or kept in the way.
    #[test]
    fn revocations_are_persisted_and_a_corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_revoked(dir.path()).is_empty());
        let revocation = |byte: u8, by: &str| Revocation {
            fingerprint: Fingerprint([byte; 32]),
            by: by.to_owned(),
            at_ms: 1_700_000_000_000 + u64::from(byte),
        };
        let revoked: Revoked = [revocation(1, "n1"), revocation(2, "n3")]
            .into_iter()
            .map(|r| (r.fingerprint, r))
            .collect();
        save_revoked(dir.path(), &revoked).unwrap();
        assert_eq!(load_revoked(dir.path()), revoked);

        std::fs::write(dir.path().join(REVOKED_FILE), b"[{\"fingerprint\": 12").unwrap();
        assert!(load_revoked(dir.path()).is_empty());
        assert!(!dir.path().join(REVOKED_FILE).exists());
        assert!(dir.path().join("revoked.json.corrupt").exists());
    }
}
