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
    DropReason, ForwardingTable, InnerChecksum, complete_partial, gso_runs,
};
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
    /// Inner TCP/UDP checksums a peer left partial (a kernel vxlan peer with offloads).
    pub inner_checksums_completed: AtomicU64,
}

impl IoCounters {
    pub fn to_map(&self) -> std::collections::BTreeMap<String, u64> {
        [
            ("tun_read_packets", &self.tun_read_packets),
            ("tun_write_errors", &self.tun_write_errors),
            ("udp_send_batches", &self.udp_send_batches),
            ("udp_send_errors", &self.udp_send_errors),
            ("inner_checksums_completed", &self.inner_checksums_completed),
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

    /// Counts a drop by reason and, where the sender is known, against that peer.
    fn drop_packet(&self, snap: &Snapshot, reason: DropReason, peer: Option<usize>) {
        self.drops.count(reason);
        if let Some(c) = peer.and_then(|p| snap.counters.get(p)) {
            c.drops.fetch_add(1, Relaxed);
        }
    }
}

/// Opens the tunnel's UDP socket on `0.0.0.0:port` with large buffers.
pub fn bind_udp(port: u16) -> Result<(UdpSocket, UdpSocketState)> {
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
    let sock = UdpSocket::from_std(std::net::UdpSocket::from(sock))?;
    Ok((sock, state))
}

/// TUN → encapsulate → UDP, until an I/O error.
pub async fn tun_to_udp(
    dp: Arc<Datapath>,
    tun: Arc<AsyncDevice>,
    sock: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
    tun_mtu: usize,
    port: u16,
) -> Result<()> {
    let stride = ENCAP_LEN + tun_mtu;
    let mut arena = vec![0u8; stride * TUN_BATCH];
    // (destination, length of slot contents) of every slot that is to be sent.
    let mut slots: Vec<Option<(Ipv4Addr, usize)>> = Vec::with_capacity(TUN_BATCH);
    loop {
        slots.clear();
        let n = read_tun_batch(&tun, &mut arena, stride)
            .await
            .context("reading the TUN device")?;
        dp.io.tun_read_packets.fetch_add(n.len() as u64, Relaxed);
        let snap = dp.snapshot.load();
        for (i, len) in n.iter().enumerate() {
            let frame = &mut arena[i * stride..i * stride + ENCAP_LEN + len];
            match snap.table.encap(frame) {
                Ok(encap) => {
                    let c = &snap.counters[encap.peer];
                    c.tx_packets.fetch_add(1, Relaxed);
                    c.tx_bytes.fetch_add(*len as u64, Relaxed);
                    slots.push(Some((encap.dst, ENCAP_LEN + len)));
                }
                Err(reason) => {
                    dp.drop_packet(&snap, reason, None);
                    slots.push(None);
                }
            }
        }
        drop(snap);
        let udp = QuinnUdp {
            sock: &sock,
            state: &state,
        };
        send_runs(&dp, &udp, &arena, stride, &slots, port).await;
    }
}

/// Waits for one TUN packet, then takes whatever else is ready, up to a batch. Packet `i`
/// lands at `arena[i * stride + ENCAP_LEN..]`, leaving room for the VXLAN headers.
async fn read_tun_batch(
    tun: &AsyncDevice,
    arena: &mut [u8],
    stride: usize,
) -> io::Result<Vec<usize>> {
    let mut lens = Vec::with_capacity(TUN_BATCH);
    let first = tun.recv(&mut arena[ENCAP_LEN..stride]).await?;
    lens.push(first);
    while lens.len() < TUN_BATCH {
        let at = lens.len() * stride;
        match tun.try_recv(&mut arena[at + ENCAP_LEN..at + stride]) {
            Ok(len) => lens.push(len),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(lens)
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
}

impl UdpSend for QuinnUdp<'_> {
    fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    async fn send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        // Only WouldBlock waits; any other error is the caller's to count.
        self.sock
            .async_io(Interest::WRITABLE, || {
                match self.state.try_send(self.sock.into(), transmit) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
                    other => Ok(other),
                }
            })
            .await?
    }
}

/// Whether a failed GSO send failed because the kernel refused segmentation offload (the
/// route's device has no checksum offload, IPsec on the path): quinn-udp then stops using
/// GSO, and the segments can still go out one by one.
fn gso_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
}

/// Sends the encapsulated slots, grouped into GSO sends by `gso_runs`. Any error but
/// WouldBlock (no route to the peer, say) is counted and the batch moves on: UDP is lossy
/// and the inner protocol retransmits.
async fn send_runs(
    dp: &Datapath,
    udp: &impl UdpSend,
    arena: &[u8],
    stride: usize,
    slots: &[Option<(Ipv4Addr, usize)>],
    port: u16,
) {
    let max_segments = udp.max_gso_segments().min(MAX_GSO_BYTES / stride);
    let count = |sent: &io::Result<()>| match sent {
        Ok(()) => dp.io.udp_send_batches.fetch_add(1, Relaxed),
        Err(_) => dp.io.udp_send_errors.fetch_add(1, Relaxed),
    };
    for run in gso_runs(slots, stride, max_segments) {
        let destination = SocketAddr::V4(SocketAddrV4::new(run.dst, port));
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: &arena[run.bytes(stride)],
            segment_size: run.segment_size(stride),
            src_ip: None,
        };
        match udp.send(&transmit).await {
            Err(e) if transmit.segment_size.is_some() && gso_refused(&e) => {
                // The whole run would be lost with the GSO send: send it datagram by
                // datagram instead (later batches no longer use GSO).
                tracing::debug!(dst = %run.dst, "GSO send refused ({e}); sending the run singly");
                for segment in run.segments(stride) {
                    let single = Transmit {
                        destination,
                        ecn: None,
                        contents: &arena[segment],
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

/// UDP → decapsulate → TUN, until an I/O error.
pub async fn udp_to_tun(
    dp: Arc<Datapath>,
    tun: Arc<AsyncDevice>,
    sock: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
) -> Result<()> {
    let batch = quinn_udp::BATCH_SIZE;
    let mut storage = vec![0u8; RECV_SLOT * batch];
    let mut metas = vec![RecvMeta::default(); batch];
    loop {
        let n = {
            let mut iovs: Vec<IoSliceMut<'_>> =
                storage.chunks_mut(RECV_SLOT).map(IoSliceMut::new).collect();
            sock.async_io(Interest::READABLE, || {
                state.recv((&*sock).into(), &mut iovs, &mut metas)
            })
            .await
            .context("receiving from the tunnel's UDP socket")?
        };
        let snap = dp.snapshot.load();
        for (meta, slot) in metas[..n].iter().zip(storage.chunks_mut(RECV_SLOT)) {
            let sender = match meta.addr.ip() {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(ip) => ip.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
            };
            // GRO may have coalesced several datagrams of one sender into the slot, each
            // `stride` long but the last. An empty datagram is still a datagram to count.
            let stride = meta.stride.max(1);
            let data = &mut slot[..meta.len];
            let mut empty = [0u8; 0];
            let empty: &mut [&mut [u8]] = if data.is_empty() {
                &mut [&mut empty[..]]
            } else {
                &mut []
            };
            for datagram in data
                .chunks_mut(stride)
                .chain(empty.iter_mut().map(|e| &mut **e))
            {
                match snap.table.decap(sender, datagram) {
                    Ok(decap) => {
                        let inner = &mut datagram[decap.inner];
                        // A kernel peer's offloaded checksums arrive unfinished.
                        if complete_partial(inner) == InnerChecksum::Completed {
                            dp.io.inner_checksums_completed.fetch_add(1, Relaxed);
                        }
                        let inner = &*inner;
                        let c = &snap.counters[decap.peer];
                        c.rx_packets.fetch_add(1, Relaxed);
                        c.rx_bytes.fetch_add(inner.len() as u64, Relaxed);
                        if tun.send(inner).await.is_err() {
                            dp.io.tun_write_errors.fetch_add(1, Relaxed);
                        }
                    }
                    Err((reason, peer)) => dp.drop_packet(&snap, reason, peer),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlayd_proto::dataplane::LocalVtep;
    use overlayd_proto::wire::MacAddr;
    use std::sync::Mutex;

    /// A socket whose kernel refuses GSO: every multi-segment send fails with EIO.
    struct NoGso {
        sent: Mutex<Vec<(SocketAddr, Vec<u8>)>>,
    }

    impl UdpSend for NoGso {
        fn max_gso_segments(&self) -> usize {
            64
        }

        async fn send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
            if transmit.segment_size.is_some() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let mut sent = self.sent.lock().unwrap();
            sent.push((transmit.destination, transmit.contents.to_vec()));
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_gso_send_the_kernel_refuses_goes_out_datagram_by_datagram() {
        let dp = Datapath::new(ForwardingTable::new(
            LocalVtep {
                vni: 1,
                mac: MacAddr::vtep_for_node("n1"),
                pod_subnet: "10.244.1.0/24".parse().unwrap(),
            },
            Vec::new(),
        ));
        let stride = 100;
        let peer = Ipv4Addr::new(10, 100, 2, 11);
        // Three frames to one peer, the first two filling their slots: one GSO run.
        let mut arena = vec![0u8; stride * 3];
        for (i, byte) in arena.iter_mut().enumerate() {
            *byte = (i / stride) as u8 + 1;
        }
        let slots = [Some((peer, stride)), Some((peer, stride)), Some((peer, 60))];
        let udp = NoGso {
            sent: Mutex::new(Vec::new()),
        };
        send_runs(&dp, &udp, &arena, stride, &slots, 8472).await;

        let sent = udp.sent.into_inner().unwrap();
        let to = SocketAddr::from((peer, 8472));
        assert_eq!(
            sent,
            vec![
                (to, vec![1; stride]),
                (to, vec![2; stride]),
                (to, vec![3; 60]),
            ],
            "every frame of the refused run is sent on its own"
        );
        assert_eq!(dp.io.udp_send_batches.load(Relaxed), 3);
    }
}
