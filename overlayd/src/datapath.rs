//! The tunnel data path: IPv4 packets from the TUN device go out as VXLAN over UDP, VXLAN
//! datagrams from peers go into the TUN device. Two tasks, each working in batches: the
//! TUN side drains up to a batch of packets and sends runs to the same peer as one UDP GSO
//! send; the UDP side takes a batch per recvmmsg (with UDP GRO). Decisions come from the
//! current [`ForwardingTable`] snapshot; this file only moves bytes and counts.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use dashmap::DashMap;
use overlayd_proto::dataplane::{
    DropReason, ForwardingTable, Frame, GRO_BUF_LEN, Gro, GsoRun, InnerChecksum, Push, Received,
    Segments, complete_partial, gso_runs, oversize_tcp, split,
};
use overlayd_proto::wire::probe;
use overlayd_proto::wire::too_big::frag_needed;
use overlayd_proto::wire::vnet::{F_NEEDS_CSUM, VNET_HDR_LEN, VnetHdr};
use overlayd_proto::wire::vxlan::ENCAP_LEN;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tun_rs::AsyncDevice;

/// How many TUN packets one pass of the send loop takes at most.
const TUN_BATCH: usize = 64;
/// Largest UDP payload one GSO send may carry.
const MAX_GSO_BYTES: usize = 65_000;
/// Receive buffer per recvmmsg slot: room for a full GRO batch.
const RECV_SLOT: usize = 65_536;
/// With TUN offload: the send arena, and the room one read needs in it (a 64 KiB
/// super-packet with its virtio-net header, plus the headers of its segments at an MSS
/// down to about 500 bytes; a smaller MSS is dropped as `tun_offload_errors`).
const TX_ARENA_VNET: usize = 512 << 10;
const VNET_READ_ROOM: usize = 96 << 10;

/// Per-peer traffic counters. They outlive forwarding-table snapshots, so a peer's
/// counters carry on when the peer set changes.
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub drops: AtomicU64,
}

/// Drops by reason, for the whole node.
#[derive(Debug, Default)]
pub struct DropCounters([AtomicU64; DropReason::ALL.len()]);

impl DropCounters {
    pub fn count(&self, reason: DropReason) {
        self.0[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()].load(Relaxed)
    }

    /// `{reason: count}` for every reason, zeros included, so scrapers see every key.
    pub fn to_map(&self) -> std::collections::BTreeMap<&'static str, u64> {
        DropReason::ALL
            .iter()
            .map(|r| (r.as_str(), self.get(*r)))
            .collect()
    }
}

/// Counters of the TUN/UDP I/O itself (not of decisions).
#[derive(Debug, Default)]
pub struct IoCounters {
    pub tun_read_packets: AtomicU64,
    pub tun_write_errors: AtomicU64,
    pub udp_send_batches: AtomicU64,
    pub udp_send_errors: AtomicU64,
    /// ICMP errors the kernel reported on a receive (`IP_RECVERR`; read by `pmtu`).
    pub udp_recv_icmp_errors: AtomicU64,
    /// Inner TCP/UDP checksums a peer left partial (a kernel vxlan peer with offloads).
    pub inner_checksums_completed: AtomicU64,
    /// TSO super-packets read from the TUN device (with offload).
    pub tun_gso_reads: AtomicU64,
    /// Coalesced packets written to the TUN device (with offload).
    pub tun_gro_writes: AtomicU64,
    /// Super-packets that could not be split (malformed, IPv6, too small an MSS).
    pub tun_offload_errors: AtomicU64,
    /// Inner TCP super-packets a peer sent unsegmented (a kernel vxlan peer on a veth).
    pub rx_super_packets: AtomicU64,
    /// Packets for a peer whose path is QUIC while this node has no `[quic]` (cannot
    /// happen unless the path choice and the transport disagree; dropped, never sent in
    /// clear).
    pub quic_unconfigured: AtomicU64,
    /// ICMP "fragmentation needed" answers written to pods whose packet was above the
    /// QUIC datagram size.
    pub frag_needed_sent: AtomicU64,
    /// Packets above the QUIC datagram size that may not be answered (no DF, a later
    /// fragment, an ICMP error: RFC 1122) — dropped.
    pub too_big_unanswered: AtomicU64,
    /// Frames this node forwarded as a relay, and those whose send failed.
    pub relay_forwarded: AtomicU64,
    pub relay_forward_errors: AtomicU64,
    /// Relay-rung probes of the path ladder answered (the ack goes back through the relay).
    pub relay_probe_acks_sent: AtomicU64,
    /// Relay-rung probes or acks this node could neither forward nor take (a member not
    /// known here yet, a relay that just changed): lost probes, not drops.
    pub relay_probes_stray: AtomicU64,
}

impl IoCounters {
    pub fn to_map(&self) -> std::collections::BTreeMap<String, u64> {
        [
            ("tun_read_packets", &self.tun_read_packets),
            ("tun_write_errors", &self.tun_write_errors),
            ("udp_send_batches", &self.udp_send_batches),
            ("udp_send_errors", &self.udp_send_errors),
            ("udp_recv_icmp_errors", &self.udp_recv_icmp_errors),
            ("inner_checksums_completed", &self.inner_checksums_completed),
            ("tun_gso_reads", &self.tun_gso_reads),
            ("tun_gro_writes", &self.tun_gro_writes),
            ("tun_offload_errors", &self.tun_offload_errors),
            ("rx_super_packets", &self.rx_super_packets),
            ("quic_unconfigured", &self.quic_unconfigured),
            ("frag_needed_sent", &self.frag_needed_sent),
            ("too_big_unanswered", &self.too_big_unanswered),
            ("relay_forwarded", &self.relay_forwarded),
            ("relay_forward_errors", &self.relay_forward_errors),
            ("relay_probe_acks_sent", &self.relay_probe_acks_sent),
            ("relay_probes_stray", &self.relay_probes_stray),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.load(Relaxed)))
        .collect()
    }
}

/// What the hot path reads: the table and each peer's counters, by `PeerIndex`.
pub struct Snapshot {
    pub table: ForwardingTable,
    pub counters: Vec<Arc<PeerCounters>>,
}

/// Shared between the data-path tasks and the control plane.
pub struct Datapath {
    snapshot: ArcSwap<Snapshot>,
    by_name: DashMap<String, Arc<PeerCounters>>,
    pub drops: DropCounters,
    pub io: IoCounters,
    /// Path-MTU probes and acks for the `pmtu` task.
    pub probes: crate::pmtu::ProbeInbox,
}

impl Datapath {
    pub fn new(table: ForwardingTable) -> Self {
        let dp = Datapath {
            snapshot: ArcSwap::from_pointee(Snapshot {
                table: table.clone(),
                counters: Vec::new(),
            }),
            by_name: DashMap::new(),
            drops: DropCounters::default(),
            io: IoCounters::default(),
            probes: crate::pmtu::ProbeInbox::default(),
        };
        dp.install(table);
        dp
    }

    /// Swaps in a new table; built off the hot path, never blocks it.
    pub fn install(&self, table: ForwardingTable) {
        // Counters of peers that are gone go with them (names churn as nodes come and go).
        let current: std::collections::HashSet<&str> =
            table.peers().iter().map(|p| p.name.as_str()).collect();
        self.by_name
            .retain(|name, _| current.contains(name.as_str()));
        let counters = table
            .peers()
            .iter()
            .map(|p| self.counters_of(&p.name))
            .collect();
        self.snapshot.store(Arc::new(Snapshot { table, counters }));
    }

    /// The counters kept for a peer name (created on first use).
    pub fn counters_of(&self, peer: &str) -> Arc<PeerCounters> {
        self.by_name.entry(peer.to_owned()).or_default().clone()
    }

    /// A relay-rung probe or ack for peer `name` as the path ladder sends it (see
    /// [`ForwardingTable::relay_probe`]): written into `out`, with the relay's underlay
    /// address it goes to. `None` when `name` has no relay in the current table.
    pub fn relay_probe(
        &self,
        name: &str,
        msg: probe::ProbeMessage,
        out: &mut [u8],
    ) -> Option<(Ipv4Addr, usize)> {
        let snap = self.snapshot.load();
        let peer = snap.table.peer_named(name)?;
        snap.table.relay_probe(peer, msg, out)
    }

    /// Counts a drop by reason and, where the sender is known, against that peer.
    fn drop_packet(&self, snap: &Snapshot, reason: DropReason, peer: Option<usize>) {
        self.drops.count(reason);
        if let Some(c) = peer.and_then(|p| snap.counters.get(p)) {
            c.drops.fetch_add(1, Relaxed);
        }
    }
}

/// Opens the tunnel's UDP socket on `0.0.0.0:port` with large buffers; `gro` false turns
/// off the UDP GRO quinn-udp asks for (`tunnel.udp_gro`).
pub fn bind_udp(port: u16, gro: bool) -> Result<(UdpSocket, UdpSocketState)> {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    sock.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .with_context(|| {
            format!("binding the tunnel's UDP port {port}; is another VXLAN endpoint using it?")
        })?;
    let state =
        UdpSocketState::new((&sock).into()).context("setting up the tunnel's UDP socket")?;
    for (what, r) in [
        ("send", state.set_send_buffer_size((&sock).into(), 4 << 20)),
        (
            "receive",
            state.set_recv_buffer_size((&sock).into(), 4 << 20),
        ),
    ] {
        if let Err(e) = r {
            tracing::warn!("could not raise the tunnel socket's {what} buffer: {e}");
        }
    }
    if !gro {
        set_udp_gro(&sock, false).context("turning UDP GRO off on the tunnel socket")?;
    }
    let sock = UdpSocket::from_std(std::net::UdpSocket::from(sock))?;
    Ok((sock, state))
}

/// `setsockopt(UDP_GRO)`.
fn set_udp_gro(sock: &socket2::Socket, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = on.into();
    // SAFETY: a live socket, a c_int option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The tunnel's UDP socket and quinn-udp's state for it, shared by the send and receive
/// loops.
#[derive(Clone)]
pub struct UdpTunnel {
    pub sock: Arc<UdpSocket>,
    pub state: Arc<UdpSocketState>,
}

/// Which offloads the data path uses; each can be switched off in config (`[tunnel]`) and
/// is checked at run time (a refused one falls back to plain packets or single sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// The TUN device has a virtio-net header: TSO super-packets in, GRO'd packets out.
    pub tun: bool,
    /// Runs of datagrams to one peer go out as one UDP GSO send.
    pub udp_gso: bool,
}

/// TUN → encapsulate → UDP, until an I/O error.
pub async fn tun_to_udp(
    dp: Arc<Datapath>,
    tun: Arc<AsyncDevice>,
    UdpTunnel { sock, state }: UdpTunnel,
    tun_mtu: usize,
    port: u16,
    offloads: Offloads,
    quic: Option<Arc<crate::quic::QuicTransport>>,
) -> Result<()> {
    let udp = QuinnUdp {
        sock: &sock,
        state: &state,
        gso: offloads.udp_gso,
    };
    let mut tx = TxArena::new(tun_mtu, offloads.tun);
    let mut too_big = Vec::new();
    loop {
        tx_batch(&dp, &*tun, &udp, &mut tx, port)
            .await
            .context("reading the TUN device")?;
        if !tx.quic_frames.is_empty() {
            send_quic(&dp, quic.as_deref(), &tx, &mut too_big);
            for answer in too_big.drain(..) {
                let written = write_packet(&*tun, offloads.tun, &answer).await;
                let counter = match written {
                    Ok(_) => &dp.io.frag_needed_sent,
                    Err(_) => &dp.io.tun_write_errors,
                };
                counter.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Writes one plain packet to the TUN device (behind an empty virtio-net header when the
/// device has one).
async fn write_packet(tun: &impl TunDevice, vnet_hdr: bool, packet: &[u8]) -> io::Result<usize> {
    if !vnet_hdr {
        return tun.send(packet).await;
    }
    let mut buf = vec![0u8; VNET_HDR_LEN + packet.len()];
    buf[VNET_HDR_LEN..].copy_from_slice(packet);
    tun.send(&buf).await
}

/// Sends the batch's packets for peers reached over QUIC, one datagram each. Never waits:
/// a peer without a connection yet is counted by the transport and dropped, as a lossy
/// link would. A packet above the connection's datagram size (the route's `mtu` keeps
/// pods below it, but a path can shrink) is answered: an ICMP "fragmentation needed" from
/// the pod gateway naming the size that fits goes into `too_big`, for the TUN device.
fn send_quic(
    dp: &Datapath,
    quic: Option<&crate::quic::QuicTransport>,
    tx: &TxArena,
    too_big: &mut Vec<Vec<u8>>,
) {
    let Some(quic) = quic else {
        dp.io
            .quic_unconfigured
            .fetch_add(tx.quic_frames.len() as u64, Relaxed);
        return;
    };
    let Some(snap) = tx.snap.as_ref() else {
        return;
    };
    let gateway = overlayd_proto::ipam::PodIpam::gateway_of(snap.table.local().pod_subnet);
    // quinn takes each datagram as `Bytes`: one buffer for the batch, sliced per packet,
    // rather than an allocation per packet.
    let total = tx.quic_frames.iter().map(|f| f.len).sum();
    let mut batch = bytes::BytesMut::with_capacity(total);
    for f in &tx.quic_frames {
        batch.extend_from_slice(&tx.buf[f.start..f.start + f.len]);
    }
    let batch = batch.freeze();
    let mut at = 0;
    for f in &tx.quic_frames {
        let name = &snap.table.peers()[f.peer].name;
        let sent = quic.send_bytes(name, batch.slice(at..at + f.len));
        if let Err(crate::quic::SendError::TooBig { max }) = sent {
            let mtu = u16::try_from(max).unwrap_or(u16::MAX);
            match frag_needed(&batch[at..at + f.len], gateway, mtu) {
                Some(answer) => too_big.push(answer),
                None => {
                    dp.io.too_big_unanswered.fetch_add(1, Relaxed);
                }
            }
        }
        at += f.len;
    }
}

/// The TUN device as the data path uses it (a fake in tests).
trait TunDevice {
    /// Waits for one packet.
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// One packet if one is ready, else `WouldBlock`.
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one packet, waiting while the device is full.
    async fn send(&self, buf: &[u8]) -> io::Result<usize>;
}

impl TunDevice for AsyncDevice {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        AsyncDevice::recv(self, buf).await
    }

    fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        AsyncDevice::try_recv(self, buf)
    }

    async fn send(&self, buf: &[u8]) -> io::Result<usize> {
        AsyncDevice::send(self, buf).await
    }
}

/// The send side's buffers, allocated once: the arena the frames of a batch lie in back
/// to back (each with the VXLAN headers in front of its packet), the frame list and the
/// GSO runs.
struct TxArena {
    buf: Vec<u8>,
    cursor: usize,
    frames: Vec<Option<Frame>>,
    /// The batch's packets for peers reached over QUIC (their `frames` entry is `None`),
    /// and the snapshot their peer indexes belong to.
    quic_frames: Vec<QuicFrame>,
    snap: Option<Arc<Snapshot>>,
    runs: Vec<GsoRun>,
    /// Room one more read needs (a super-packet and its segments' headers, or one packet).
    read_room: usize,
    vnet: bool,
}

impl TxArena {
    fn new(tun_mtu: usize, vnet: bool) -> Self {
        let (len, read_room) = if vnet {
            (TX_ARENA_VNET, ENCAP_LEN + VNET_READ_ROOM)
        } else {
            ((ENCAP_LEN + tun_mtu) * TUN_BATCH, ENCAP_LEN + tun_mtu)
        };
        TxArena {
            buf: vec![0u8; len],
            cursor: 0,
            frames: Vec::with_capacity(TUN_BATCH * 4),
            quic_frames: Vec::with_capacity(TUN_BATCH * 4),
            snap: None,
            runs: Vec::with_capacity(TUN_BATCH),
            read_room,
            vnet,
        }
    }

    fn has_room(&self) -> bool {
        self.buf.len() - self.cursor >= self.read_room
    }

    /// Where the next read goes: its packet lands after the VXLAN headroom (the
    /// virtio-net header, if any, in the headroom's end).
    fn read_slot(&mut self) -> &mut [u8] {
        let hdr = if self.vnet { VNET_HDR_LEN } else { 0 };
        let end = (self.cursor + self.read_room).min(self.buf.len());
        &mut self.buf[self.cursor + ENCAP_LEN - hdr..end]
    }

    /// Takes a read of `n` bytes at the cursor: splits a super-packet, encapsulates every
    /// packet and records its frame.
    fn take(&mut self, dp: &Datapath, n: usize) {
        let snap = self
            .snap
            .get_or_insert_with(|| dp.snapshot.load_full())
            .clone();
        let at = self.cursor;
        let segments = if self.vnet {
            let hdr =
                VnetHdr::parse(&self.buf[at + ENCAP_LEN - VNET_HDR_LEN..]).unwrap_or_default();
            let len = n.saturating_sub(VNET_HDR_LEN);
            match split(&mut self.buf[at..], ENCAP_LEN, len, &hdr) {
                Ok(s) => {
                    if s.count > 1 {
                        dp.io.tun_gso_reads.fetch_add(1, Relaxed);
                    }
                    s
                }
                Err(_) => {
                    dp.io.tun_offload_errors.fetch_add(1, Relaxed);
                    return;
                }
            }
        } else {
            let len = ENCAP_LEN + n;
            Segments {
                count: 1,
                stride: len,
                last_len: len,
            }
        };
        for k in 0..segments.count {
            let start = at + k * segments.stride;
            let len = if k + 1 == segments.count {
                segments.last_len
            } else {
                segments.stride
            };
            let frame = match snap.table.encap(&mut self.buf[start..start + len]) {
                Ok(encap) if snap.table.uses_quic(encap.peer) => {
                    let c = &snap.counters[encap.peer];
                    c.tx_packets.fetch_add(1, Relaxed);
                    c.tx_bytes.fetch_add((len - ENCAP_LEN) as u64, Relaxed);
                    self.quic_frames.push(QuicFrame {
                        peer: encap.peer,
                        start: start + ENCAP_LEN,
                        len: len - ENCAP_LEN,
                    });
                    None
                }
                Ok(encap) => {
                    let c = &snap.counters[encap.peer];
                    c.tx_packets.fetch_add(1, Relaxed);
                    c.tx_bytes.fetch_add((len - ENCAP_LEN) as u64, Relaxed);
                    Some(Frame {
                        dst: encap.dst,
                        start,
                        len,
                    })
                }
                Err(reason) => {
                    dp.drop_packet(&snap, reason, None);
                    None
                }
            };
            self.frames.push(frame);
        }
        dp.io.tun_read_packets.fetch_add(1, Relaxed);
        self.cursor += segments.bytes();
    }
}

/// A packet of the send arena that goes out over QUIC.
struct QuicFrame {
    peer: usize,
    start: usize,
    len: usize,
}

/// One pass of the send loop: waits for one TUN read, takes whatever else is ready (up to
/// a batch, while the arena has room), and sends the frames grouped into GSO runs.
async fn tx_batch(
    dp: &Datapath,
    tun: &impl TunDevice,
    udp: &impl UdpSend,
    tx: &mut TxArena,
    port: u16,
) -> io::Result<()> {
    tx.cursor = 0;
    tx.frames.clear();
    tx.quic_frames.clear();
    tx.snap = None;
    let n = tun.recv(tx.read_slot()).await?;
    tx.take(dp, n);
    let mut reads = 1;
    while reads < TUN_BATCH && tx.has_room() {
        match tun.try_recv(tx.read_slot()) {
            Ok(n) => tx.take(dp, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
        reads += 1;
    }
    send_runs(dp, udp, &tx.buf, &tx.frames, &mut tx.runs, port).await;
    Ok(())
}

/// The tunnel's UDP socket as the send loop uses it (a fake in tests).
trait UdpSend {
    /// Segments one GSO send may carry now.
    fn max_gso_segments(&self) -> usize;
    /// Sends one transmit, waiting while the socket is full; `Err` is any other failure.
    async fn send(&self, transmit: &Transmit<'_>) -> io::Result<()>;
}

struct QuinnUdp<'a> {
    sock: &'a UdpSocket,
    state: &'a UdpSocketState,
    /// `tunnel.udp_gso`: false sends every datagram on its own.
    gso: bool,
}

impl UdpSend for QuinnUdp<'_> {
    fn max_gso_segments(&self) -> usize {
        if self.gso {
            self.state.max_gso_segments()
        } else {
            1
        }
    }

    async fn send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        // Only WouldBlock waits; any other error is the caller's to count.
        let send = || {
            self.sock.async_io(Interest::WRITABLE, || {
                match self.state.try_send(self.sock.into(), transmit) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
                    other => Ok(other),
                }
            })
        };
        match send().await? {
            // With IP_RECVERR (`pmtu`) an ICMP error for an earlier datagram fails the
            // next call, which sends nothing: once more.
            Err(e) if crate::pmtu::is_icmp_error(&e) => send().await?,
            sent => sent,
        }
    }
}

/// Whether a failed GSO send failed because the kernel refused segmentation offload (the
/// route's device has no checksum offload, IPsec on the path): quinn-udp then stops using
/// GSO, and the segments can still go out one by one.
fn gso_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
}

/// Sends the encapsulated frames, grouped into GSO sends by `gso_runs`. Any error but
/// WouldBlock (no route to the peer, say) is counted and the batch moves on: UDP is lossy
/// and the inner protocol retransmits.
async fn send_runs(
    dp: &Datapath,
    udp: &impl UdpSend,
    arena: &[u8],
    frames: &[Option<Frame>],
    runs: &mut Vec<GsoRun>,
    port: u16,
) {
    let count = |sent: &io::Result<()>| match sent {
        Ok(()) => dp.io.udp_send_batches.fetch_add(1, Relaxed),
        Err(_) => dp.io.udp_send_errors.fetch_add(1, Relaxed),
    };
    gso_runs(frames, udp.max_gso_segments(), MAX_GSO_BYTES, runs);
    for run in runs.iter() {
        let destination = SocketAddr::V4(SocketAddrV4::new(run.dst, port));
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: &arena[run.bytes.clone()],
            segment_size: run.segment_size,
            src_ip: None,
        };
        match udp.send(&transmit).await {
            Err(e) if transmit.segment_size.is_some() && gso_refused(&e) => {
                // The whole run would be lost with the GSO send: send it datagram by
                // datagram instead (later batches no longer use GSO).
                tracing::debug!(dst = %run.dst, "GSO send refused ({e}); sending the run singly");
                for f in frames[run.frames.clone()].iter().flatten() {
                    let single = Transmit {
                        destination,
                        ecn: None,
                        contents: &arena[f.start..f.start + f.len],
                        segment_size: None,
                        src_ip: None,
                    };
                    count(&udp.send(&single).await);
                }
            }
            sent => {
                count(&sent);
            }
        }
    }
}

/// What the receive side does besides writing to the TUN device: forwarding the frames
/// this node relays, and handing relay-rung probe acks to the path ladder.
trait RelayOut {
    /// Sends `datagram` as it is to `dst`'s tunnel port, without waiting; whether it went.
    fn forward(&self, dst: Ipv4Addr, datagram: &[u8]) -> bool;
    /// A relay-rung ack from peer `peer`.
    fn ack(&self, peer: &str, msg: probe::ProbeMessage);
}

/// The tunnel socket and the ladder, as the receive loop relays with them.
struct SocketRelay<'a> {
    sock: &'a UdpSocket,
    port: u16,
    paths: &'a crate::paths::PathsHandle,
}

impl RelayOut for SocketRelay<'_> {
    fn forward(&self, dst: Ipv4Addr, datagram: &[u8]) -> bool {
        let to = SocketAddr::from((dst, self.port));
        match self.sock.try_send_to(datagram, to) {
            Err(e) if crate::pmtu::is_icmp_error(&e) => self.sock.try_send_to(datagram, to).is_ok(),
            sent => sent.is_ok(),
        }
    }

    fn ack(&self, peer: &str, msg: probe::ProbeMessage) {
        self.paths
            .deliver(crate::paths::Via::Relay(Arc::from(peer)), msg);
    }
}

/// UDP → decapsulate → TUN, until an I/O error; frames this node relays go back out on
/// the same socket to `port` of their destination.
pub async fn udp_to_tun(
    dp: Arc<Datapath>,
    tun: Arc<AsyncDevice>,
    UdpTunnel { sock, state }: UdpTunnel,
    tun_mtu: usize,
    port: u16,
    paths: Arc<crate::paths::PathsHandle>,
    offloads: Offloads,
) -> Result<()> {
    const BATCH: usize = quinn_udp::BATCH_SIZE;
    let mut storage = vec![0u8; RECV_SLOT * BATCH];
    let mut metas = [RecvMeta::default(); BATCH];
    let mut rx = RxState::new(offloads.tun, tun_mtu);
    let relay = SocketRelay {
        sock: &sock,
        port,
        paths: &paths,
    };
    loop {
        let received = {
            // On the stack: no allocation per receive call.
            let mut slots = storage.chunks_mut(RECV_SLOT);
            let mut iovs: [IoSliceMut<'_>; BATCH] = std::array::from_fn(|_| {
                IoSliceMut::new(slots.next().expect("BATCH slots of storage"))
            });
            sock.async_io(Interest::READABLE, || {
                state.recv((&*sock).into(), &mut iovs, &mut metas)
            })
            .await
        };
        let n = match received {
            Ok(n) => n,
            Err(e) if crate::pmtu::is_icmp_error(&e) => {
                dp.io.udp_recv_icmp_errors.fetch_add(1, Relaxed);
                continue;
            }
            Err(e) => return Err(e).context("receiving from the tunnel's UDP socket"),
        };
        for (meta, slot) in metas[..n].iter().zip(storage.chunks_mut(RECV_SLOT)) {
            let sender = match meta.addr.ip() {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(ip) => ip.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
            };
            deliver(
                &dp,
                &*tun,
                &mut rx,
                sender,
                &mut slot[..meta.len],
                meta.stride,
                &relay,
            )
            .await;
        }
        rx.flush(&dp, &*tun).await;
    }
}

/// The receive side's state: with TUN offload, the coalescer and its buffer; without,
/// a buffer to split a peer's unsegmented super-packets in.
struct RxState {
    gro: Option<Coalescing>,
    tun_mtu: usize,
    split_buf: Vec<u8>,
}

struct Coalescing {
    gro: Gro,
    out: Vec<u8>,
}

impl RxState {
    fn new(vnet: bool, tun_mtu: usize) -> Self {
        RxState {
            gro: vnet.then(|| Coalescing {
                gro: Gro::new(),
                out: vec![0u8; GRO_BUF_LEN],
            }),
            tun_mtu,
            split_buf: if vnet {
                Vec::new()
            } else {
                vec![0u8; VNET_READ_ROOM]
            },
        }
    }

    /// Writes an inner TCP super-packet (`datagram[inner]`, see [`oversize_tcp`]): with
    /// offload for the kernel to segment, else split here.
    async fn write_oversize(
        &mut self,
        dp: &Datapath,
        tun: &impl TunDevice,
        datagram: &mut [u8],
        inner: std::ops::Range<usize>,
        hdr: VnetHdr,
    ) {
        dp.io.rx_super_packets.fetch_add(1, Relaxed);
        if let Some(c) = self.gro.as_mut() {
            c.flush(dp, tun).await;
            let with_hdr = inner.start - VNET_HDR_LEN..inner.end;
            hdr.emit(&mut datagram[with_hdr.clone()]);
            if tun.send(&datagram[with_hdr]).await.is_err() {
                dp.io.tun_write_errors.fetch_add(1, Relaxed);
            }
            return;
        }
        let len = inner.len();
        let buf = &mut self.split_buf;
        if len > buf.len() {
            dp.io.tun_offload_errors.fetch_add(1, Relaxed);
            return;
        }
        buf[..len].copy_from_slice(&datagram[inner]);
        let Ok(s) = split(buf, 0, len, &hdr) else {
            dp.io.tun_offload_errors.fetch_add(1, Relaxed);
            return;
        };
        for k in 0..s.count {
            let seg_len = if k + 1 == s.count {
                s.last_len
            } else {
                s.stride
            };
            let at = k * s.stride;
            if tun.send(&buf[at..at + seg_len]).await.is_err() {
                dp.io.tun_write_errors.fetch_add(1, Relaxed);
            }
        }
    }

    /// Writes the super-packet being built, if any.
    async fn flush(&mut self, dp: &Datapath, tun: &impl TunDevice) {
        if let Some(c) = self.gro.as_mut() {
            c.flush(dp, tun).await;
        }
    }
}

impl Coalescing {
    async fn flush(&mut self, dp: &Datapath, tun: &impl TunDevice) {
        dp.io
            .inner_checksums_completed
            .fetch_add(self.gro.take_partials(), Relaxed);
        let segments = self.gro.held_segments();
        if let Some(packet) = self.gro.flush(&mut self.out) {
            if segments > 1 {
                dp.io.tun_gro_writes.fetch_add(1, Relaxed);
            }
            if tun.send(packet).await.is_err() {
                dp.io.tun_write_errors.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Decapsulates the datagrams of one receive slot (several of one sender when UDP GRO
/// coalesced them, each `stride` long but the last) and writes what is accepted to the
/// TUN device: with offload through the coalescer, else one by one with partial
/// checksums completed. Frames this node relays are forwarded as they are; relay-rung
/// probes are answered back through the relay, their acks go to the ladder.
async fn deliver(
    dp: &Datapath,
    tun: &impl TunDevice,
    rx: &mut RxState,
    sender: Ipv4Addr,
    data: &mut [u8],
    stride: usize,
    relay: &impl RelayOut,
) {
    let snap = dp.snapshot.load();
    // An empty datagram is still a datagram to count.
    let mut empty = [0u8; 0];
    let stride = stride.max(1);
    let empty: &mut [&mut [u8]] = if data.is_empty() {
        &mut [&mut empty[..]]
    } else {
        &mut []
    };
    for datagram in data
        .chunks_mut(stride)
        .chain(empty.iter_mut().map(|e| &mut **e))
    {
        if probe::is_probe(datagram) {
            match snap.table.probe(sender, datagram) {
                Ok(msg) => dp.probes.deliver(sender, msg),
                Err((reason, peer)) => dp.drop_packet(&snap, reason, peer),
            }
            continue;
        }
        let decap = match snap.table.receive(sender, datagram) {
            Ok(Received::Deliver(decap)) => decap,
            Ok(Received::Forward { dst, .. }) => {
                let counter = if relay.forward(dst, datagram) {
                    &dp.io.relay_forwarded
                } else {
                    &dp.io.relay_forward_errors
                };
                counter.fetch_add(1, Relaxed);
                continue;
            }
            Ok(Received::StrayRelayProbe { .. }) => {
                dp.io.relay_probes_stray.fetch_add(1, Relaxed);
                continue;
            }
            Ok(Received::RelayProbe { peer, msg, .. }) => {
                match msg.ack() {
                    Some(ack) => {
                        let mut buf = [0u8; 128];
                        if let Some((to, len)) = snap.table.relay_probe(peer, ack, &mut buf)
                            && relay.forward(to, &buf[..len])
                        {
                            dp.io.relay_probe_acks_sent.fetch_add(1, Relaxed);
                        }
                    }
                    None => relay.ack(&snap.table.peers()[peer].name, msg),
                }
                continue;
            }
            Err((reason, peer)) => {
                dp.drop_packet(&snap, reason, peer);
                continue;
            }
        };
        let c = &snap.counters[decap.peer];
        c.rx_packets.fetch_add(1, Relaxed);
        c.rx_bytes.fetch_add(decap.inner.len() as u64, Relaxed);
        rx.write_inner(dp, tun, datagram, decap.inner).await;
    }
}

impl RxState {
    /// Writes an accepted inner packet (`datagram[inner]`, with at least
    /// `VNET_HDR_LEN` bytes of headroom before it) to the TUN device: a peer's
    /// unsegmented TCP super-packet as such, else through the coalescer with offload, or
    /// alone with partial checksums completed without.
    async fn write_inner(
        &mut self,
        dp: &Datapath,
        tun: &impl TunDevice,
        datagram: &mut [u8],
        inner: std::ops::Range<usize>,
    ) {
        if inner.len() > self.tun_mtu
            && let Some(hdr) = oversize_tcp(&datagram[inner.clone()], self.tun_mtu)
        {
            self.write_oversize(dp, tun, datagram, inner, hdr).await;
            return;
        }
        let Some(c) = self.gro.as_mut() else {
            let inner = &mut datagram[inner];
            // A kernel peer's offloaded checksums arrive unfinished.
            if complete_partial(inner) == InnerChecksum::Completed {
                dp.io.inner_checksums_completed.fetch_add(1, Relaxed);
            }
            if tun.send(inner).await.is_err() {
                dp.io.tun_write_errors.fetch_add(1, Relaxed);
            }
            return;
        };
        loop {
            match c.gro.push(&mut c.out, &datagram[inner.clone()]) {
                Push::Held => break,
                Push::FlushFirst => c.flush(dp, tun).await,
                Push::Alone(hdr) => {
                    c.flush(dp, tun).await;
                    if hdr.flags & F_NEEDS_CSUM != 0 {
                        dp.io.inner_checksums_completed.fetch_add(1, Relaxed);
                    }
                    // The virtio-net header goes in the headroom (where the VXLAN
                    // headers were).
                    let with_hdr = inner.start - VNET_HDR_LEN..inner.end;
                    hdr.emit(&mut datagram[with_hdr.clone()]);
                    if tun.send(&datagram[with_hdr]).await.is_err() {
                        dp.io.tun_write_errors.fetch_add(1, Relaxed);
                    }
                    break;
                }
            }
        }
    }
}

/// The receive side of the QUIC tunnels, a [`crate::quic::Sink`]: each connection's
/// reader delivers its batches here. Every datagram is checked as the VXLAN path checks
/// its inner packet ([`ForwardingTable::accept_quic`]) or is a path-ladder probe, and is
/// written through the same coalescing writer; one batch at a time (the writer's state
/// is shared by all connections).
pub struct QuicToTun {
    dp: Arc<Datapath>,
    tun: Arc<AsyncDevice>,
    paths: Arc<crate::paths::PathsHandle>,
    state: tokio::sync::Mutex<(RxState, Vec<u8>)>,
}

impl QuicToTun {
    pub fn new(
        dp: Arc<Datapath>,
        tun: Arc<AsyncDevice>,
        paths: Arc<crate::paths::PathsHandle>,
        tun_mtu: usize,
        offloads: Offloads,
    ) -> Self {
        QuicToTun {
            dp,
            tun,
            paths,
            // One packet with headroom for the virtio-net header, reused.
            state: tokio::sync::Mutex::new((
                RxState::new(offloads.tun, tun_mtu),
                vec![0u8; VNET_HDR_LEN + 65_536],
            )),
        }
    }
}

impl crate::quic::Sink for QuicToTun {
    fn deliver<'a>(
        &'a self,
        peer: &'a Arc<str>,
        batch: &'a mut Vec<bytes::Bytes>,
    ) -> futures_util::future::BoxFuture<'a, usize> {
        Box::pin(async move {
            let dp = &*self.dp;
            let mut state = self.state.lock().await;
            let (rx, buf) = &mut *state;
            for packet in batch.drain(..) {
                if probe::is_probe(&packet) {
                    // The path ladder's probes and acks on the quic rung.
                    match probe::ProbeMessage::parse(&packet) {
                        Ok(msg) => self
                            .paths
                            .deliver(crate::paths::Via::Quic(peer.clone()), msg),
                        Err(_) => dp.drops.count(DropReason::MalformedProbe),
                    }
                    continue;
                }
                let snap = dp.snapshot.load();
                match snap.table.accept_quic(peer, &packet) {
                    Ok((index, len)) => {
                        let c = &snap.counters[index];
                        c.rx_packets.fetch_add(1, Relaxed);
                        c.rx_bytes.fetch_add(len as u64, Relaxed);
                        let inner = VNET_HDR_LEN..VNET_HDR_LEN + len;
                        buf[inner.clone()].copy_from_slice(&packet[..len]);
                        rx.write_inner(dp, &*self.tun, buf, inner).await;
                    }
                    Err((reason, index)) => dp.drop_packet(&snap, reason, index),
                }
            }
            rx.flush(dp, &*self.tun).await;
            0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlayd_proto::PeerInfo;
    use overlayd_proto::dataplane::{L4Checksum, LocalVtep};
    use overlayd_proto::wire::MacAddr;
    use overlayd_proto::wire::checksum::fill_ipv4_header_checksum;
    use overlayd_proto::wire::vnet::{GSO_TCPV4, VnetHdr};
    use std::collections::VecDeque;
    use std::sync::Mutex;

    const N1_UNDERLAY: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 11);
    const N2_UNDERLAY: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 12);

    /// Node `me`'s table (subnet 10.244.me.0/24) with the other of n1, n2 as its peer.
    fn table(me: u8) -> ForwardingTable {
        let other = 3 - me;
        let underlay = [N1_UNDERLAY, N2_UNDERLAY];
        ForwardingTable::new(
            LocalVtep {
                vni: 1,
                mac: MacAddr::vtep_for_node(&format!("n{me}")),
                pod_subnet: format!("10.244.{me}.0/24").parse().unwrap(),
            },
            vec![PeerInfo {
                name: format!("n{other}"),
                underlay: underlay[usize::from(other) - 1],
                pod_subnet: format!("10.244.{other}.0/24").parse().unwrap(),
                vtep_mac: MacAddr::vtep_for_node(&format!("n{other}")),
                zone: String::new(),
                quic_port: None,
                cert_fingerprint: None,
                relay: false,
            }],
        )
    }

    /// An IPv4 TCP packet (ACK) from pod 10.244.`from`.2 to 10.244.`to`.2 with right checksums.
    fn tcp(from: u8, to: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
        let total = 40 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 244, from, 2]);
        p[16..20].copy_from_slice(&[10, 244, to, 2]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = 0x10;
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        p[40..].copy_from_slice(payload);
        fill_ipv4_header_checksum(&mut p[..20]);
        L4Checksum::of(&p).unwrap().fill(&mut p, total);
        p
    }

    /// A TUN device: reads come from a queue (then WouldBlock), writes are recorded.
    #[derive(Default)]
    struct FakeTun {
        reads: Mutex<VecDeque<Vec<u8>>>,
        writes: Mutex<Vec<Vec<u8>>>,
    }

    impl TunDevice for FakeTun {
        async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            self.try_recv(buf)
        }

        fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            let p = self.reads.lock().unwrap().pop_front();
            let p = p.ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
            buf[..p.len()].copy_from_slice(&p);
            Ok(p.len())
        }

        async fn send(&self, buf: &[u8]) -> io::Result<usize> {
            self.writes.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
    }

    /// Records what the receive side forwards and hands to the ladder.
    #[derive(Default)]
    struct NoRelay {
        forwarded: Mutex<Vec<(Ipv4Addr, Vec<u8>)>>,
        acks: Mutex<Vec<String>>,
    }

    impl RelayOut for NoRelay {
        fn forward(&self, dst: Ipv4Addr, datagram: &[u8]) -> bool {
            self.forwarded
                .lock()
                .unwrap()
                .push((dst, datagram.to_vec()));
            true
        }

        fn ack(&self, peer: &str, _msg: probe::ProbeMessage) {
            self.acks.lock().unwrap().push(peer.to_owned());
        }
    }

    /// Node `me` of n1..n3 (underlay 10.100.1.1i, pods 10.244.i.0/24) with the others.
    fn three(me: u8) -> ForwardingTable {
        let info = |i: u8| PeerInfo {
            name: format!("n{i}"),
            underlay: Ipv4Addr::new(10, 100, 1, 10 + i),
            pod_subnet: format!("10.244.{i}.0/24").parse().unwrap(),
            vtep_mac: MacAddr::vtep_for_node(&format!("n{i}")),
            zone: String::new(),
            quic_port: None,
            cert_fingerprint: None,
            relay: false,
        };
        ForwardingTable::new(
            LocalVtep {
                vni: 1,
                mac: MacAddr::vtep_for_node(&format!("n{me}")),
                pod_subnet: format!("10.244.{me}.0/24").parse().unwrap(),
            },
            (1..=3).filter(|i| *i != me).map(info).collect(),
        )
    }

    /// n1 → n2 relayed through n3: n3 forwards the frame as it is, n2 writes its packet;
    /// the same frame from n3 at a node that does not relay n1 through n3 is a forgery:
    /// dropped, counted as `not_our_relay` and against the sender. A relay probe is answered back through the relay, and its ack reaches the ladder.
    #[tokio::test]
    async fn relayed_frames_are_forwarded_delivered_or_dropped_as_forged() {
        let under = |i: u8| Ipv4Addr::new(10, 100, 1, 10 + i);
        let n1 = three(1).with_relays([("n2", "n3", true)]);
        let packet = tcp(1, 2, 1, &[5; 100]);
        let mut frame = vec![0u8; ENCAP_LEN];
        frame.extend(&packet);
        assert_eq!(n1.encap(&mut frame).unwrap().dst, under(3));

        let relay = NoRelay::default();
        let dp3 = Datapath::new(three(3).with_relaying(["n1", "n2"]));
        let mut rx = RxState::new(false, 1450);
        let tun = FakeTun::default();
        let mut data = frame.clone();
        let len = data.len();
        deliver(&dp3, &tun, &mut rx, under(1), &mut data, len, &relay).await;
        assert_eq!(
            relay.forwarded.lock().unwrap()[0],
            (under(2), frame.clone())
        );
        assert_eq!(dp3.io.relay_forwarded.load(Relaxed), 1);
        assert!(tun.writes.lock().unwrap().is_empty(), "not for n3's pods");

        let dp2 = Datapath::new(three(2).with_relays([("n1", "n3", true)]));
        let mut data = frame.clone();
        deliver(&dp2, &tun, &mut rx, under(3), &mut data, len, &relay).await;
        assert_eq!(tun.writes.lock().unwrap().as_slice(), [packet]);
        assert_eq!(dp2.counters_of("n1").rx_packets.load(Relaxed), 1);

        // The same frame straight from n1 is n1's own.
        let mut direct = frame.clone();
        deliver(&dp2, &tun, &mut rx, under(1), &mut direct, len, &relay).await;
        assert_eq!(tun.writes.lock().unwrap().len(), 2);
        // Forged: n3 sends a frame from n1's VTEP MAC and pod subnet to a node that does
        // not relay n1 through n3. Dropped, counted by reason and against n3.
        let dp_plain = Datapath::new(three(2));
        let mut forged = frame.clone();
        deliver(&dp_plain, &tun, &mut rx, under(3), &mut forged, len, &relay).await;
        assert_eq!(dp_plain.drops.get(DropReason::NotOurRelay), 1);
        assert_eq!(dp_plain.counters_of("n3").drops.load(Relaxed), 1);
        assert_eq!(dp_plain.counters_of("n1").rx_packets.load(Relaxed), 0);
        assert_eq!(tun.writes.lock().unwrap().len(), 2, "nothing written");

        // The relay rung's probe: n2 answers through n3; the ack reaches n1's ladder.
        let mut buf = [0u8; 128];
        let probe = probe::ProbeMessage::Probe {
            id: 9,
            size: probe::MIN_SIZE,
        };
        let (to, plen) = n1
            .relay_probe(n1.peer_named("n2").unwrap(), probe, &mut buf)
            .unwrap();
        assert_eq!(to, under(3));
        deliver(
            &dp2,
            &tun,
            &mut rx,
            under(3),
            &mut buf[..plen],
            plen,
            &relay,
        )
        .await;
        assert_eq!(dp2.io.relay_probe_acks_sent.load(Relaxed), 1);
        let (to, mut ack) = relay.forwarded.lock().unwrap().last().cloned().unwrap();
        assert_eq!(to, under(3), "the ack goes back through the relay");
        let dp1 = Datapath::new(n1);
        let alen = ack.len();
        deliver(&dp1, &tun, &mut rx, under(3), &mut ack, alen, &relay).await;
        assert_eq!(relay.acks.lock().unwrap().as_slice(), ["n2".to_owned()]);
    }

    /// A recorded transmit: destination, contents, GSO segment size.
    type Sent = (SocketAddr, Vec<u8>, Option<usize>);

    /// A socket that records every transmit; with `gso_refused` every multi-segment send
    /// fails with EIO, as where the kernel refuses GSO.
    #[derive(Default)]
    struct FakeUdp {
        gso_refused: bool,
        sent: Mutex<Vec<Sent>>,
    }

    impl UdpSend for FakeUdp {
        fn max_gso_segments(&self) -> usize {
            64
        }

        async fn send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
            if self.gso_refused && transmit.segment_size.is_some() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let mut sent = self.sent.lock().unwrap();
            sent.push((
                transmit.destination,
                transmit.contents.to_vec(),
                transmit.segment_size,
            ));
            Ok(())
        }
    }

    /// A pod packet above the QUIC datagram size (1434 on loopback's 1500-byte path) is
    /// answered with ICMP "fragmentation needed" from the pod gateway naming 1434, for
    /// the TUN device; one without DF is dropped and counted; one that fits is sent.
    #[tokio::test]
    async fn a_packet_too_big_for_quic_is_answered_with_frag_needed() {
        let (quic, _, _peer_end, peer_name, _pki) =
            crate::quic::tests::connected_pair("a", "b").await;
        let mut table = table(1);
        let mut peer = table.peers()[0].clone();
        peer.name = peer_name;
        table = ForwardingTable::new(table.local().clone(), vec![peer]);
        let dp = Datapath::new(table);
        let mut tx = TxArena::new(1500, false);
        tx.snap = Some(dp.snapshot.load_full());
        let put = |packet: &[u8], tx: &mut TxArena| {
            let start = tx.cursor;
            tx.buf[start..start + packet.len()].copy_from_slice(packet);
            tx.cursor += packet.len();
            tx.quic_frames.push(QuicFrame {
                peer: 0,
                start,
                len: packet.len(),
            });
        };
        let big = tcp(1, 2, 1, &[7; 1460]);
        let mut no_df = tcp(1, 2, 2, &[7; 1460]);
        no_df[6] = 0;
        let fits = tcp(1, 2, 3, &[7; 1000]);
        for p in [&big, &no_df, &fits] {
            put(p, &mut tx);
        }
        let mut answers = Vec::new();
        send_quic(&dp, Some(&quic), &tx, &mut answers);

        assert_eq!(answers.len(), 1, "one answer, for the DF packet");
        let answer = &answers[0];
        assert_eq!(&answer[12..16], &[10, 244, 1, 1], "from the pod gateway");
        assert_eq!(&answer[16..20], &[10, 244, 1, 2], "to the sender");
        assert_eq!((answer[20], answer[21]), (3, 4), "fragmentation needed");
        assert_eq!(&answer[26..28], &1434u16.to_be_bytes(), "names what fits");
        assert_eq!(&answer[28..48], &big[..20], "quotes the packet");
        assert_eq!(
            dp.io.too_big_unanswered.load(Relaxed),
            1,
            "the one without DF"
        );
        assert_eq!(quic.to_map()["tx_too_big"], 2);

        // Written to the TUN device behind an empty virtio-net header when it has one.
        let tun = FakeTun::default();
        write_packet(&tun, true, answer).await.unwrap();
        let written = tun.writes.into_inner().unwrap();
        assert_eq!(written[0][..VNET_HDR_LEN], [0; VNET_HDR_LEN]);
        assert_eq!(written[0][VNET_HDR_LEN..], answer[..]);
    }

    #[tokio::test]
    async fn a_gso_send_the_kernel_refuses_goes_out_datagram_by_datagram() {
        let dp = Datapath::new(table(1));
        let peer = Ipv4Addr::new(10, 100, 2, 11);
        // Three frames to one peer, the first two of one length: one GSO run.
        let mut arena = vec![0u8; 260];
        for (i, byte) in arena.iter_mut().enumerate() {
            *byte = (i / 100) as u8 + 1;
        }
        let frame = |start, len| {
            Some(Frame {
                dst: peer,
                start,
                len,
            })
        };
        let frames = [frame(0, 100), frame(100, 100), frame(200, 60)];
        let udp = FakeUdp {
            gso_refused: true,
            ..FakeUdp::default()
        };
        send_runs(&dp, &udp, &arena, &frames, &mut Vec::new(), 8472).await;

        let sent = udp.sent.into_inner().unwrap();
        let to = SocketAddr::from((peer, 8472));
        assert_eq!(
            sent,
            vec![
                (to, vec![1; 100], None),
                (to, vec![2; 100], None),
                (to, vec![3; 60], None),
            ],
            "every frame of the refused run is sent on its own"
        );
        assert_eq!(dp.io.udp_send_batches.load(Relaxed), 3);
    }

    #[tokio::test]
    async fn a_tso_super_packet_goes_out_as_one_gso_send_of_vxlan_segments() {
        let dp = Datapath::new(table(1));
        let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let mut read = vec![0u8; VNET_HDR_LEN];
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1400,
            csum_start: 20,
            csum_offset: 16,
        }
        .emit(&mut read);
        read.extend(tcp(1, 2, 77, &payload));
        let tun = FakeTun::default();
        tun.reads.lock().unwrap().push_back(read);
        let udp = FakeUdp::default();
        let mut tx = TxArena::new(1450, true);

        tx_batch(&dp, &tun, &udp, &mut tx, 8472).await.unwrap();

        let sent = udp.sent.into_inner().unwrap();
        assert_eq!(sent.len(), 1, "one GSO send");
        let (to, contents, segment) = &sent[0];
        assert_eq!(*to, SocketAddr::from((N2_UNDERLAY, 8472)));
        let segment = segment.expect("a GSO send");
        assert_eq!(segment, ENCAP_LEN + 40 + 1400);
        // The peer decapsulates three packets, each with the right checksums.
        let n2 = table(2);
        let mut got = Vec::new();
        for (k, datagram) in contents.chunks(segment).enumerate() {
            let decap = n2.decap(N1_UNDERLAY, datagram).expect("n2 accepts it");
            let inner = &datagram[decap.inner];
            let l4 = L4Checksum::of(inner).unwrap();
            assert!(l4.verifies(inner, inner.len()), "segment {k}");
            got.extend_from_slice(&inner[40..]);
        }
        assert_eq!(got, payload);
        assert_eq!(dp.io.tun_gso_reads.load(Relaxed), 1);
    }

    /// Encapsulates `packets` at n2 for n1, back to back as UDP GRO hands them over.
    fn datagrams_from_n2(packets: &[Vec<u8>]) -> (Vec<u8>, usize) {
        let n2 = table(2);
        let mut data = Vec::new();
        let stride = ENCAP_LEN + packets[0].len();
        for p in packets {
            let mut frame = vec![0u8; ENCAP_LEN];
            frame.extend(p);
            n2.encap(&mut frame).unwrap();
            data.extend(frame);
        }
        (data, stride)
    }

    #[tokio::test]
    async fn received_segments_are_coalesced_and_a_bad_checksum_goes_alone() {
        let dp = Datapath::new(table(1));
        let mut bad = tcp(2, 1, 3000, &[3; 1000]);
        bad[100] ^= 1;
        let packets = [
            tcp(2, 1, 1000, &[1; 1000]),
            tcp(2, 1, 2000, &[2; 1000]),
            bad,
        ];
        let (mut data, stride) = datagrams_from_n2(&packets);
        let tun = FakeTun::default();
        let mut rx = RxState::new(true, 1450);

        deliver(
            &dp,
            &tun,
            &mut rx,
            N2_UNDERLAY,
            &mut data,
            stride,
            &NoRelay::default(),
        )
        .await;
        rx.flush(&dp, &tun).await;

        let writes = tun.writes.into_inner().unwrap();
        assert_eq!(writes.len(), 2);
        let hdr = VnetHdr::parse(&writes[0]).unwrap();
        assert_eq!((hdr.gso_type, hdr.gso_size), (GSO_TCPV4, 1000));
        assert_eq!(writes[0].len(), VNET_HDR_LEN + 40 + 2000);
        // The corrupted one goes alone, with no checksum flag: the stack checks and drops it.
        assert_eq!(VnetHdr::parse(&writes[1]).unwrap(), VnetHdr::default());
        assert_eq!(&writes[1][VNET_HDR_LEN..], packets[2].as_slice());
        assert_eq!(dp.io.tun_gro_writes.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn without_offload_or_udp_gro_every_packet_is_written_as_it_came() {
        let dp = Datapath::new(table(1));
        let packets = [tcp(2, 1, 1000, &[1; 1000]), tcp(2, 1, 2000, &[2; 1000])];
        let tun = FakeTun::default();
        let mut rx = RxState::new(false, 1450);

        // Without UDP GRO every datagram comes in its own receive slot.
        for p in &packets {
            let (mut data, stride) = datagrams_from_n2(std::slice::from_ref(p));
            deliver(
                &dp,
                &tun,
                &mut rx,
                N2_UNDERLAY,
                &mut data,
                stride,
                &NoRelay::default(),
            )
            .await;
        }
        rx.flush(&dp, &tun).await;

        assert_eq!(tun.writes.into_inner().unwrap(), packets.to_vec());
    }

    /// What a kernel vxlan peer on a veth sends: one datagram holding a whole TSO packet
    /// with its checksum partial.
    fn unsegmented_from_n2(payload_len: usize) -> (Vec<u8>, usize) {
        let mut p = tcp(2, 1, 1, &vec![7; payload_len]);
        let l4 = L4Checksum::of(&p).unwrap();
        p[36..38].copy_from_slice(&l4.pseudo.fold().to_be_bytes());
        datagrams_from_n2(&[p])
    }

    #[tokio::test]
    async fn a_peers_unsegmented_tso_packet_is_segmented_by_the_kernel_or_here() {
        // With offload: one write, a TSO packet for the kernel to segment at the TUN MTU.
        let dp = Datapath::new(table(1));
        let tun = FakeTun::default();
        let (mut data, stride) = unsegmented_from_n2(4000);
        let mut rx = RxState::new(true, 1450);
        deliver(
            &dp,
            &tun,
            &mut rx,
            N2_UNDERLAY,
            &mut data,
            stride,
            &NoRelay::default(),
        )
        .await;
        let writes = tun.writes.into_inner().unwrap();
        assert_eq!(writes.len(), 1);
        let hdr = VnetHdr::parse(&writes[0]).unwrap();
        assert_eq!((hdr.gso_type, hdr.gso_size), (GSO_TCPV4, 1410));

        // Without: split here into packets that fit, each with its checksum finished.
        let tun = FakeTun::default();
        let (mut data, stride) = unsegmented_from_n2(4000);
        let mut rx = RxState::new(false, 1450);
        deliver(
            &dp,
            &tun,
            &mut rx,
            N2_UNDERLAY,
            &mut data,
            stride,
            &NoRelay::default(),
        )
        .await;
        let writes = tun.writes.into_inner().unwrap();
        assert_eq!(writes.len(), 3);
        let mut payload = 0;
        for w in &writes {
            assert!(w.len() <= 1450);
            assert!(L4Checksum::of(w).unwrap().verifies(w, w.len()));
            payload += w.len() - 40;
        }
        assert_eq!(payload, 4000);
        assert_eq!(dp.io.rx_super_packets.load(Relaxed), 2);
    }
}
