//! Coalescing decapsulated TCP segments into one super-packet for the TUN device (GRO),
//! so the kernel takes one packet where the wire carried dozens.
//!
//! [`Gro`] builds the super-packet in a caller-owned buffer (virtio-net header, then the
//! packet). A segment joins the packet being built iff it continues it exactly as the
//! kernel's own GRO would accept: same addresses, ports, TOS, TTL, DF, ACK number, window
//! and TCP options; sequence number where the last one ended; flags ACK or ACK|PSH; a
//! payload no longer than the first one's; and the packet so far ended neither with PSH
//! nor with a short segment. The result is written with `NEEDS_CSUM`, so the kernel will
//! not look at the checksum again: a segment therefore only joins if its own checksum
//! verifies, or is partial by the rule of [`super::complete_partial`]. Anything else
//! goes to the TUN on its own with no checksum flag, and the pod's stack checks it, so a
//! wrong checksum is dropped there, not "fixed" by coalescing.

use super::partial::{L4Checksum, PROTO_TCP};
use crate::wire::checksum::fill_ipv4_header_checksum;
use crate::wire::vnet::{F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, VNET_HDR_LEN, VnetHdr};

/// The largest IPv4 packet, and so the largest super-packet.
pub const MAX_SUPER_PACKET: usize = 65_535;
/// The buffer a [`Gro`] needs: the virtio-net header and the largest super-packet.
pub const GRO_BUF_LEN: usize = VNET_HDR_LEN + MAX_SUPER_PACKET;

const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// What to do with a packet given to [`Gro::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Held in the buffer, to go out with the super-packet.
    Held,
    /// It cannot join the packet being built: [`Gro::flush`] that, then push again.
    FlushFirst,
    /// Not something to coalesce: flush what is held, then write this packet on its own
    /// behind this virtio-net header.
    Alone(VnetHdr),
}

/// The super-packet being built, described by its first segment.
#[derive(Debug, Clone, Copy)]
struct Building {
    /// Bytes of IPv4 + TCP header.
    headers: usize,
    ihl: usize,
    /// Payload of the first segment: every segment but the last has exactly this.
    mss: usize,
    /// Bytes of packet in the buffer after the virtio-net header.
    len: usize,
    next_seq: u32,
    segments: usize,
    /// The last segment had PSH or was short: nothing may follow.
    closed: bool,
}

/// A TCP coalescer over a caller-owned buffer of at least [`GRO_BUF_LEN`] bytes.
#[derive(Debug, Default)]
pub struct Gro {
    building: Option<Building>,
    /// Segments taken with a partial checksum since the last [`Gro::take_partials`].
    partials: u64,
}

impl Gro {
    pub fn new() -> Self {
        Gro::default()
    }

    /// Offers `packet` (one IPv4 packet, `total_len` long) to the super-packet in `out`.
    pub fn push(&mut self, out: &mut [u8], packet: &[u8]) -> Push {
        let Some(seg) = Segment::of(packet) else {
            return Push::Alone(alone_hdr(packet));
        };
        let Some(b) = self.building.as_mut() else {
            self.start(out, packet, &seg);
            self.partials += u64::from(seg.partial);
            return Push::Held;
        };
        let held = &out[VNET_HDR_LEN..VNET_HDR_LEN + b.headers];
        let fits = !b.closed
            && seg.headers == b.headers
            && seg.payload <= b.mss
            && seg.seq == b.next_seq
            && b.len + seg.payload <= MAX_SUPER_PACKET
            && same_flow(held, packet, b.ihl, b.headers);
        if !fits {
            return Push::FlushFirst;
        }
        let at = VNET_HDR_LEN + b.len;
        out[at..at + seg.payload].copy_from_slice(&packet[seg.headers..seg.headers + seg.payload]);
        b.len += seg.payload;
        b.next_seq = b.next_seq.wrapping_add(seg.payload as u32);
        b.segments += 1;
        self.partials += u64::from(seg.partial);
        b.closed = seg.flags & PSH != 0 || seg.payload < b.mss;
        if seg.flags & PSH != 0 {
            out[VNET_HDR_LEN + b.ihl + 13] |= PSH;
        }
        Push::Held
    }

    /// Whether a packet is held.
    pub fn is_empty(&self) -> bool {
        self.building.is_none()
    }

    /// How many segments the held packet has (0 if none).
    pub fn held_segments(&self) -> usize {
        self.building.map_or(0, |b| b.segments)
    }

    /// Segments with a partial checksum taken since the last call (the kernel completes
    /// them, through `NEEDS_CSUM`).
    pub fn take_partials(&mut self) -> u64 {
        std::mem::take(&mut self.partials)
    }

    /// Finishes the packet held in `out` and returns it with its virtio-net header, ready
    /// for the TUN device; `None` if nothing is held.
    pub fn flush<'a>(&mut self, out: &'a mut [u8]) -> Option<&'a [u8]> {
        let b = self.building.take()?;
        let end = VNET_HDR_LEN + b.len;
        let packet = &mut out[VNET_HDR_LEN..end];
        let hdr = if b.segments == 1 {
            alone_hdr(packet)
        } else {
            packet[2..4].copy_from_slice(&(b.len as u16).to_be_bytes());
            fill_ipv4_header_checksum(&mut packet[..b.ihl]);
            let l4 = L4Checksum::of(packet)?;
            // Partial: the pseudo-header sum for the whole length; the kernel adds the rest.
            let at = b.ihl + 16;
            packet[at..at + 2].copy_from_slice(&l4.pseudo.fold().to_be_bytes());
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: b.headers as u16,
                gso_size: b.mss as u16,
                csum_start: b.ihl as u16,
                csum_offset: 16,
            }
        };
        hdr.emit(&mut out[..VNET_HDR_LEN]);
        Some(&out[..end])
    }

    fn start(&mut self, out: &mut [u8], packet: &[u8], seg: &Segment) {
        let len = seg.headers + seg.payload;
        out[VNET_HDR_LEN..VNET_HDR_LEN + len].copy_from_slice(&packet[..len]);
        self.building = Some(Building {
            headers: seg.headers,
            ihl: seg.ihl,
            mss: seg.payload,
            len,
            next_seq: seg.seq.wrapping_add(seg.payload as u32),
            segments: 1,
            closed: seg.flags & PSH != 0,
        });
    }
}

/// The virtio-net header for a packet written on its own: a partial checksum (by the
/// rule of [`super::complete_partial`]) for the kernel to complete, otherwise none, so
/// the kernel checks the checksum as it came.
pub fn alone_hdr(packet: &[u8]) -> VnetHdr {
    match L4Checksum::of(packet) {
        Some(l4) if l4.is_partial(packet) => VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_NONE,
            hdr_len: 0,
            gso_size: 0,
            csum_start: l4.start as u16,
            csum_offset: l4.offset as u16,
        },
        _ => VnetHdr::default(),
    }
}

/// The virtio-net header that lets the kernel segment an inner TCP packet longer than
/// `mtu`: a TSO super-packet a kernel vxlan peer sent unsegmented (a veth or bridge
/// carries GSO packets whole, and a UDP socket receives a UDP-tunnel GSO packet as one
/// datagram). `Some` iff it is an unfragmented IPv4 TCP packet longer than `mtu` whose
/// checksum is partial (the kernel left it for the segmentation to finish); TCP is a byte
/// stream, so any segment size is right, and `mtu` minus the headers is the largest.
/// UDP is not re-segmented: the sender's datagram boundaries are not in the bytes.
pub fn oversize_tcp(packet: &[u8], mtu: usize) -> Option<VnetHdr> {
    let l4 = L4Checksum::of(packet)?;
    if packet[9] != PROTO_TCP || packet.len() <= mtu || !l4.is_partial(packet) {
        return None;
    }
    let headers = l4.start + usize::from(packet[l4.start + 12] >> 4) * 4;
    let mss = mtu.checked_sub(headers).filter(|m| *m > 0)?;
    Some(VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: headers as u16,
        gso_size: mss as u16,
        csum_start: l4.start as u16,
        csum_offset: 16,
    })
}

/// A TCP segment that may be coalesced.
struct Segment {
    ihl: usize,
    headers: usize,
    payload: usize,
    seq: u32,
    flags: u8,
    partial: bool,
}

impl Segment {
    /// `Some` iff `packet` is an unfragmented IPv4 TCP segment without IP options,
    /// carrying data, with flags ACK or ACK|PSH, and a checksum that verifies or is partial.
    fn of(packet: &[u8]) -> Option<Segment> {
        let l4 = L4Checksum::of(packet)?;
        if packet[9] != PROTO_TCP || l4.start != 20 {
            return None;
        }
        let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        let ihl = l4.start;
        let headers = ihl + usize::from(packet[ihl + 12] >> 4) * 4;
        let flags = packet[ihl + 13];
        if headers < ihl + 20 || headers >= total || (flags != ACK && flags != ACK | PSH) {
            return None;
        }
        let partial = l4.is_partial(packet);
        if !partial && !l4.verifies(packet, total) {
            return None;
        }
        Some(Segment {
            ihl,
            headers,
            payload: total - headers,
            seq: u32::from_be_bytes([
                packet[ihl + 4],
                packet[ihl + 5],
                packet[ihl + 6],
                packet[ihl + 7],
            ]),
            flags,
            partial,
        })
    }
}

/// Whether `packet` belongs to the same flow as the `held` headers, as far as the kernel's
/// GRO requires: IP version/IHL/TOS, DF, TTL, protocol, addresses; TCP ports, ACK number,
/// data offset, window and options (flags are checked by the caller).
fn same_flow(held: &[u8], packet: &[u8], ihl: usize, headers: usize) -> bool {
    held[..2] == packet[..2]
        && held[6] == packet[6]
        && held[8..10] == packet[8..10]
        && held[12..20] == packet[12..20]
        && held[ihl..ihl + 4] == packet[ihl..ihl + 4]
        && held[ihl + 8..ihl + 13] == packet[ihl + 8..ihl + 13]
        && held[ihl + 14..ihl + 16] == packet[ihl + 14..ihl + 16]
        && held[ihl + 20..headers] == packet[ihl + 20..headers]
}

#[cfg(test)]
mod tests {
    use super::super::partial::test_packets::{packet, partial};
    use super::super::partial::{InnerChecksum, PROTO_UDP, complete_partial};
    use super::*;
    use crate::wire::vnet::GSO_NONE;

    fn seg(seq: u32, payload: &[u8]) -> Vec<u8> {
        packet(PROTO_TCP, seq, ACK, payload)
    }

    #[test]
    fn consecutive_segments_become_one_tso_packet() {
        let mut gro = Gro::new();
        let mut out = vec![0u8; GRO_BUF_LEN];
        assert_eq!(gro.push(&mut out, &seg(100, &[1; 1000])), Push::Held);
        assert_eq!(gro.push(&mut out, &seg(1100, &[2; 1000])), Push::Held);
        let last = packet(PROTO_TCP, 2100, ACK | PSH, &[3; 10]);
        assert_eq!(gro.push(&mut out, &last), Push::Held);
        // After PSH nothing may join.
        assert_eq!(gro.push(&mut out, &seg(2110, &[4; 10])), Push::FlushFirst);

        let written = gro.flush(&mut out).unwrap();

        let hdr = VnetHdr::parse(written).unwrap();
        assert_eq!(
            (hdr.gso_type, hdr.gso_size, hdr.hdr_len),
            (GSO_TCPV4, 1000, 40)
        );
        assert_eq!(hdr.flags, F_NEEDS_CSUM);
        let p = &written[VNET_HDR_LEN..];
        assert_eq!(p.len(), 40 + 2010);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len());
        assert_eq!(p[33], ACK | PSH);
        assert!(gro.is_empty());
    }

    #[test]
    fn an_oversized_partial_tcp_packet_is_handed_to_the_kernel_to_segment() {
        let big = partial(seg(1, &[5; 4000]));
        let hdr = oversize_tcp(&big, 1450).unwrap();
        assert_eq!(
            (hdr.gso_type, hdr.gso_size, hdr.hdr_len),
            (GSO_TCPV4, 1410, 40)
        );
        // Not partial (a final checksum), not oversized, or UDP: left alone.
        assert_eq!(oversize_tcp(&seg(1, &[5; 4000]), 1450), None);
        assert_eq!(oversize_tcp(&partial(seg(1, &[5; 1000])), 1450), None);
        assert_eq!(
            oversize_tcp(&partial(packet(PROTO_UDP, 0, 0, &[1; 3000])), 1450),
            None
        );
    }

    #[test]
    fn a_wrong_checksum_is_not_coalesced_but_left_for_the_stack() {
        let mut gro = Gro::new();
        let mut out = vec![0u8; GRO_BUF_LEN];
        let mut bad = seg(100, &[1; 500]);
        bad[60] ^= 1;
        assert_eq!(gro.push(&mut out, &bad), Push::Alone(VnetHdr::default()));
        assert!(gro.flush(&mut out).is_none());
    }

    #[test]
    fn a_lone_partial_packet_is_handed_to_the_kernel_to_complete() {
        let p = partial(packet(PROTO_UDP, 0, 0, b"x"));
        let hdr = alone_hdr(&p);
        assert_eq!(
            (hdr.flags, hdr.gso_type, hdr.csum_start, hdr.csum_offset),
            (F_NEEDS_CSUM, GSO_NONE, 20, 6)
        );
        let mut gro = Gro::new();
        let mut out = vec![0u8; GRO_BUF_LEN];
        // A partial TCP segment on its own goes out as it came, NEEDS_CSUM set.
        let tcp = partial(seg(5, &[9; 100]));
        assert_eq!(gro.push(&mut out, &tcp), Push::Held);
        let written = gro.flush(&mut out).unwrap();
        assert_eq!(VnetHdr::parse(written).unwrap().flags, F_NEEDS_CSUM);
        assert_eq!(&written[VNET_HDR_LEN..], tcp.as_slice());
        let mut done = written[VNET_HDR_LEN..].to_vec();
        assert_eq!(complete_partial(&mut done), InnerChecksum::Completed);
    }

    proptest::proptest! {
        /// A TSO super-packet split for the wire and coalesced again is the packet the
        /// kernel gave us; every wire segment carries correct checksums.
        #[test]
        fn split_then_coalesce_roundtrips(
            payload_len in 1usize..6000,
            mss in 64u16..1500,
            seq in proptest::prelude::any::<u32>(),
            psh in proptest::prelude::any::<bool>(),
        ) {
            use crate::wire::checksum::Sum;
            use crate::dataplane::tso::split;
            let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7 + 3) as u8).collect();
            let flags = if psh { ACK | PSH } else { ACK };
            let big = partial(packet(PROTO_TCP, seq, flags, &payload));
            let headroom = 22;
            let mut buf = vec![0u8; 2 * (headroom + big.len()) + 200 * 64];
            buf[headroom..headroom + big.len()].copy_from_slice(&big);
            let hdr = VnetHdr { flags: F_NEEDS_CSUM, gso_type: GSO_TCPV4, hdr_len: 40, gso_size: mss, csum_start: 20, csum_offset: 16 };

            let s = split(&mut buf, headroom, big.len(), &hdr).unwrap();
            proptest::prop_assert_eq!(s.count, payload_len.div_ceil(usize::from(mss)));
            let mut gro = Gro::new();
            let mut out = vec![0u8; GRO_BUF_LEN];
            for k in 0..s.count {
                let len = if k + 1 == s.count { s.last_len } else { s.stride };
                let wire = &buf[k * s.stride + headroom..k * s.stride + len];
                proptest::prop_assert_eq!(Sum::default().add_bytes(&wire[..20]).fold(), 0xffff);
                let l4 = L4Checksum::of(wire).unwrap();
                proptest::prop_assert!(l4.verifies(wire, wire.len()), "segment {} checksum", k);
                proptest::prop_assert_eq!(gro.push(&mut out, wire), Push::Held);
            }
            let written = gro.flush(&mut out).unwrap();
            let back = &written[VNET_HDR_LEN..];
            let got = VnetHdr::parse(written).unwrap();
            if s.count > 1 {
                proptest::prop_assert_eq!(back, big.as_slice());
                proptest::prop_assert_eq!((got.gso_type, got.gso_size), (GSO_TCPV4, mss));
            } else {
                let mut want = big.clone();
                complete_partial(&mut want);
                proptest::prop_assert_eq!(back, want.as_slice());
                proptest::prop_assert_eq!(got, VnetHdr::default());
            }
        }
    }
}
