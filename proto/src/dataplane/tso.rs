//! Splitting a TUN super-packet (TSO/USO, read with a virtio-net header) into the packets
//! that go on the wire, in place.
//!
//! The shell reads the packet to `buf[headroom..]` (the VXLAN headers go into the
//! headroom later). [`split`] lays the segments out at `k * stride`, each with its own
//! `headroom` in front, so they are back to back and go out as one UDP GSO send. The
//! segments are written last to first: a segment's place never overlaps the payload of
//! an earlier segment still to be moved (its place starts at `k * stride`, beyond where
//! payload `k - 1` ends), and `copy_within` handles the overlap with its own payload.
//!
//! Per segment, as the kernel's own TSO does: IPv4 total length, ID (+k), header checksum;
//! TCP sequence number (+k·mss), FIN and PSH only on the last segment, CWR only on the
//! first; UDP length; a full TCP/UDP checksum. A non-GSO packet whose checksum the kernel
//! left to us (`NEEDS_CSUM`) gets it completed.

use super::partial::{L4Checksum, PROTO_TCP, PROTO_UDP};
use crate::wire::checksum::{Sum, fill_ipv4_header_checksum};
use crate::wire::vnet::{F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_UDP_L4, VnetHdr};

/// Largest IPv4 + TCP header with options (60 + 60).
const MAX_HEADERS: usize = 120;

/// Where [`split`] put the packets: `count` frames at `k * stride`, each `stride` bytes
/// (headroom included) but the last, which is `last_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub count: usize,
    pub stride: usize,
    pub last_len: usize,
}

impl Segments {
    /// Total bytes the frames take from the start of the buffer.
    pub fn bytes(&self) -> usize {
        (self.count - 1) * self.stride + self.last_len
    }
}

/// Why a super-packet was not split (it is dropped and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitError {
    /// Headers that do not parse or disagree with the virtio-net header.
    Malformed,
    /// A GSO type the tunnel does not carry (IPv6, UFO).
    Unsupported,
    /// The segments would not fit the buffer.
    NoRoom,
}

/// Splits the packet at `buf[headroom..headroom + len]`, described by `hdr`, into wire
/// packets in place (see the module doc). Returns `Err` iff the packet is malformed,
/// of an unsupported GSO type, or its segments do not fit `buf`.
pub fn split(
    buf: &mut [u8],
    headroom: usize,
    len: usize,
    hdr: &VnetHdr,
) -> Result<Segments, SplitError> {
    if headroom + len > buf.len() {
        return Err(SplitError::Malformed);
    }
    match hdr.gso() {
        GSO_NONE => {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                complete_at(&mut buf[headroom..headroom + len], hdr)?;
            }
            Ok(Segments {
                count: 1,
                stride: headroom + len,
                last_len: headroom + len,
            })
        }
        GSO_TCPV4 => split_l4(buf, headroom, len, hdr, PROTO_TCP),
        GSO_UDP_L4 => split_l4(buf, headroom, len, hdr, PROTO_UDP),
        _ => Err(SplitError::Unsupported),
    }
}

/// Completes a partial checksum where the virtio-net header says it is.
fn complete_at(packet: &mut [u8], hdr: &VnetHdr) -> Result<(), SplitError> {
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > packet.len() {
        return Err(SplitError::Malformed);
    }
    let c = Sum::default().add_bytes(&packet[start..]).checksum();
    // UDP sends a computed zero as all ones (RFC 768); for TCP both mean the same.
    let c = if c == 0 { 0xffff } else { c };
    packet[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

fn split_l4(
    buf: &mut [u8],
    headroom: usize,
    len: usize,
    hdr: &VnetHdr,
    protocol: u8,
) -> Result<Segments, SplitError> {
    let packet = &buf[headroom..headroom + len];
    if packet.len() < 20 || packet[0] >> 4 != 4 || packet[9] != protocol {
        return Err(SplitError::Malformed);
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let l4_header = if protocol == PROTO_TCP {
        packet
            .get(ihl + 12)
            .map(|b| usize::from(b >> 4) * 4)
            .ok_or(SplitError::Malformed)?
    } else {
        8
    };
    let headers = ihl + l4_header;
    let mss = usize::from(hdr.gso_size);
    if ihl < 20 || l4_header < 8 || headers > MAX_HEADERS || headers > len || mss == 0 {
        return Err(SplitError::Malformed);
    }
    let payload = len - headers;
    let count = payload.div_ceil(mss).max(1);
    let stride = headroom + headers + mss;
    let last_payload = payload - (count - 1) * mss;
    let segments = Segments {
        count,
        stride,
        last_len: headroom + headers + last_payload,
    };
    if segments.bytes() > buf.len() {
        return Err(SplitError::NoRoom);
    }
    let mut template = [0u8; MAX_HEADERS];
    template[..headers].copy_from_slice(&buf[headroom..headroom + headers]);
    let template = &template[..headers];
    let id = u16::from_be_bytes([template[4], template[5]]);
    let seq = u32::from_be_bytes([
        template[ihl + 4],
        template[ihl + 5],
        template[ihl + 6],
        template[ihl + 7],
    ]);
    for k in (0..count).rev() {
        let seg_payload = if k + 1 == count { last_payload } else { mss };
        let from = headroom + headers + k * mss;
        let at = k * stride + headroom;
        buf.copy_within(from..from + seg_payload, at + headers);
        let p = &mut buf[at..at + headers + seg_payload];
        p[..headers].copy_from_slice(template);
        let total = headers + seg_payload;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.wrapping_add(k as u16).to_be_bytes());
        fill_ipv4_header_checksum(&mut p[..ihl]);
        if protocol == PROTO_TCP {
            let seq = seq.wrapping_add((k * mss) as u32);
            p[ihl + 4..ihl + 8].copy_from_slice(&seq.to_be_bytes());
            const FIN: u8 = 0x01;
            const PSH: u8 = 0x08;
            const CWR: u8 = 0x80;
            if k + 1 != count {
                p[ihl + 13] &= !(FIN | PSH);
            }
            if k != 0 {
                p[ihl + 13] &= !CWR;
            }
        } else {
            p[ihl + 4..ihl + 6].copy_from_slice(&((total - ihl) as u16).to_be_bytes());
        }
        let l4 = L4Checksum::of(p).ok_or(SplitError::Malformed)?;
        l4.fill(p, total);
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::super::partial::test_packets::{packet, partial};
    use super::*;
    use crate::wire::vnet::GSO_TCPV6;

    const HEADROOM: usize = 22;

    fn tso(mss: u16) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 40,
            gso_size: mss,
            csum_start: 20,
            csum_offset: 16,
        }
    }

    fn frames(buf: &[u8], s: Segments) -> Vec<&[u8]> {
        (0..s.count)
            .map(|k| {
                let len = if k + 1 == s.count {
                    s.last_len
                } else {
                    s.stride
                };
                &buf[k * s.stride + HEADROOM..k * s.stride + len]
            })
            .collect()
    }

    #[test]
    fn a_tso_packet_splits_into_mss_segments_with_their_own_headers() {
        let payload: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let big = partial(packet(PROTO_TCP, 1000, 0x18, &payload)); // ACK|PSH
        let mut buf = vec![0u8; 8192];
        buf[HEADROOM..HEADROOM + big.len()].copy_from_slice(&big);

        let s = split(&mut buf, HEADROOM, big.len(), &tso(1000)).unwrap();

        assert_eq!((s.count, s.stride), (3, HEADROOM + 40 + 1000));
        let f = frames(&buf, s);
        for (k, seg) in f.iter().enumerate() {
            let want_len = if k == 2 { 500 } else { 1000 };
            let want = packet(
                PROTO_TCP,
                1000 + 1000 * k as u32,
                if k == 2 { 0x18 } else { 0x10 },
                &payload[k * 1000..k * 1000 + want_len],
            );
            // The ID goes up by one per segment, as the kernel's TSO does.
            let mut want = want;
            want[4..6].copy_from_slice(&(0x1234u16 + k as u16).to_be_bytes());
            fill_ipv4_header_checksum(&mut want[..20]);
            assert_eq!(seg, &want.as_slice(), "segment {k}");
        }
    }

    #[test]
    fn a_plain_packet_gets_its_partial_checksum_completed() {
        let good = packet(PROTO_UDP, 0, 0, b"a datagram");
        let p = partial(good.clone());
        let mut buf = vec![0u8; 256];
        buf[HEADROOM..HEADROOM + p.len()].copy_from_slice(&p);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 6,
            ..VnetHdr::default()
        };

        let s = split(&mut buf, HEADROOM, p.len(), &hdr).unwrap();

        assert_eq!(s.count, 1);
        assert_eq!(&buf[HEADROOM..s.last_len], good.as_slice());
    }

    #[test]
    fn ipv6_and_short_buffers_are_refused() {
        let big = packet(PROTO_TCP, 0, 0x10, &[7; 3000]);
        let mut buf = vec![0u8; HEADROOM + big.len()];
        buf[HEADROOM..].copy_from_slice(&big);
        let v6 = VnetHdr {
            gso_type: GSO_TCPV6,
            ..tso(1000)
        };
        assert_eq!(
            split(&mut buf, HEADROOM, big.len(), &v6),
            Err(SplitError::Unsupported)
        );
        assert_eq!(
            split(&mut buf, HEADROOM, big.len(), &tso(1000)),
            Err(SplitError::NoRoom)
        );
        assert_eq!(
            split(&mut buf, HEADROOM, big.len(), &tso(0)),
            Err(SplitError::Malformed)
        );
    }
}
