//! Inner TCP and UDP checksums a sender left unfinished.
//!
//! A Linux sender with checksum offload (`CHECKSUM_PARTIAL`) puts only the pseudo-header
//! sum into the TCP or UDP checksum field and leaves the rest to the device. A kernel vxlan
//! device on a veth, a Linux bridge or virtio between VMs on one host passes such a packet
//! on unfinished: the receiving kernel is told (out of band, in the skb) that the checksum
//! is to be trusted. A userspace VXLAN endpoint only gets the bytes, and a packet written
//! to a TUN device as it came is dropped by the receiving stack for its "wrong" checksum.
//!
//! The rule (see docs/performance.md, "Inner checksums"): a TCP or UDP checksum field that
//! equals the segment's pseudo-header sum is taken as unfinished and completed; any other
//! value is left alone, so a genuinely wrong checksum still reaches the stack wrong and is
//! dropped there. Completing a *correct* checksum that happens to equal the pseudo-header
//! sum writes back the same value (so the rule never breaks a good packet); what it cannot
//! tell apart is a corrupted packet whose field happens to equal the pseudo-header sum
//! (one field value in 65536) — the same blind spot the kernel has for a partial packet.

use crate::wire::checksum::{Sum, pseudo_header};

/// IP protocol numbers the data path looks into.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// What [`complete_partial`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InnerChecksum {
    /// The field held the pseudo-header sum; it now holds the full checksum.
    Completed,
    /// The field holds something else: left for the receiving stack to check.
    Final,
    /// Not an unfragmented TCP or UDP packet with a checksum (or too short): untouched.
    NotApplicable,
}

/// Where a TCP or UDP checksum lives in an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4Checksum {
    /// Offset of the TCP/UDP header (the IPv4 header length).
    pub start: usize,
    /// Offset of the checksum field from `start` (16 for TCP, 6 for UDP).
    pub offset: usize,
    /// The pseudo-header sum for this segment.
    pub pseudo: Sum,
}

impl L4Checksum {
    /// The checksum of `packet`, an IPv4 packet `total_len` long, if it is an unfragmented
    /// TCP or UDP segment long enough to hold its header.
    pub fn of(packet: &[u8]) -> Option<L4Checksum> {
        if packet.len() < 20 || packet[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0;
        if ihl < 20 || total < ihl || total > packet.len() || fragment {
            return None;
        }
        let protocol = packet[9];
        let (offset, min_len) = match protocol {
            PROTO_TCP => (16, 20),
            PROTO_UDP => (6, 8),
            _ => return None,
        };
        let l4_len = total - ihl;
        if l4_len < min_len {
            return None;
        }
        let src = [packet[12], packet[13], packet[14], packet[15]].into();
        let dst = [packet[16], packet[17], packet[18], packet[19]].into();
        Some(L4Checksum {
            start: ihl,
            offset,
            pseudo: pseudo_header(src, dst, protocol, l4_len as u16),
        })
    }

    fn field(&self, packet: &[u8]) -> u16 {
        let at = self.start + self.offset;
        u16::from_be_bytes([packet[at], packet[at + 1]])
    }

    /// Whether the field holds the pseudo-header sum, i.e. the sender left it unfinished.
    /// A UDP field of zero means "no checksum" and is never partial.
    pub fn is_partial(&self, packet: &[u8]) -> bool {
        let field = self.field(packet);
        let pseudo = self.pseudo.fold();
        let udp = self.offset == 6;
        if udp && field == 0 {
            return false;
        }
        field == pseudo || (!udp && field == 0 && pseudo == 0xffff)
    }

    /// Whether the checksum verifies (a UDP checksum of zero, "none", counts as verified).
    pub fn verifies(&self, packet: &[u8], total: usize) -> bool {
        if self.offset == 6 && self.field(packet) == 0 {
            return true;
        }
        crate::wire::checksum::verifies(self.pseudo, &packet[self.start..total])
    }

    /// Computes the full checksum over `packet[start..total]` with the field zeroed and
    /// writes it (a UDP result of zero is sent as all ones, RFC 768).
    pub fn fill(&self, packet: &mut [u8], total: usize) {
        let at = self.start + self.offset;
        packet[at..at + 2].copy_from_slice(&[0, 0]);
        let mut c = self.pseudo.add_bytes(&packet[self.start..total]).checksum();
        if self.offset == 6 && c == 0 {
            c = 0xffff;
        }
        packet[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// Completes a partial checksum: the sum over the segment with the pseudo-header sum
    /// already in the field, complemented (what the kernel's `skb_checksum_help` does).
    fn complete(&self, packet: &mut [u8], total: usize) {
        let at = self.start + self.offset;
        let mut c = Sum::default()
            .add_bytes(&packet[self.start..total])
            .checksum();
        if self.offset == 6 && c == 0 {
            c = 0xffff;
        }
        packet[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// Completes the TCP or UDP checksum of the IPv4 packet `packet` (`total_len` bytes; more
/// are ignored) iff its field holds the pseudo-header sum. See the module doc for the rule.
pub fn complete_partial(packet: &mut [u8]) -> InnerChecksum {
    let Some(l4) = L4Checksum::of(packet) else {
        return InnerChecksum::NotApplicable;
    };
    if !l4.is_partial(packet) {
        return InnerChecksum::Final;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    l4.complete(packet, total);
    InnerChecksum::Completed
}

/// Test helpers: IPv4 TCP and UDP packets with correct or partial checksums.
#[cfg(test)]
pub(crate) mod test_packets {
    use super::*;
    use crate::wire::checksum::fill_ipv4_header_checksum;
    use std::net::Ipv4Addr;

    pub(crate) const SRC: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 2);
    pub(crate) const DST: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);

    /// An IPv4 packet of `protocol` with a 20-byte TCP or 8-byte UDP header, `payload`,
    /// and a correct checksum.
    pub(crate) fn packet(protocol: u8, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let l4_header = if protocol == PROTO_TCP { 20 } else { 8 };
        let total = 20 + l4_header + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = protocol;
        p[12..16].copy_from_slice(&SRC.octets());
        p[16..20].copy_from_slice(&DST.octets());
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        if protocol == PROTO_TCP {
            p[24..28].copy_from_slice(&seq.to_be_bytes());
            p[28..32].copy_from_slice(&7u32.to_be_bytes());
            p[32] = 5 << 4;
            p[33] = flags;
            p[34..36].copy_from_slice(&512u16.to_be_bytes());
        } else {
            p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        }
        p[20 + l4_header..].copy_from_slice(payload);
        fill_ipv4_header_checksum(&mut p[..20]);
        let l4 = L4Checksum::of(&p).expect("a TCP/UDP packet");
        l4.fill(&mut p, total);
        p
    }

    /// The same packet as its sender leaves it with checksum offload.
    pub(crate) fn partial(mut p: Vec<u8>) -> Vec<u8> {
        let l4 = L4Checksum::of(&p).expect("a TCP/UDP packet");
        let at = l4.start + l4.offset;
        p[at..at + 2].copy_from_slice(&l4.pseudo.fold().to_be_bytes());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::test_packets::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_partial_tcp_checksum_is_completed_to_the_right_one() {
        let good = packet(PROTO_TCP, 1, 0x10, b"hello, kernel vxlan");
        let mut p = partial(good.clone());
        assert_ne!(p, good);

        assert_eq!(complete_partial(&mut p), InnerChecksum::Completed);
        assert_eq!(p, good);
    }

    #[test]
    fn a_wrong_checksum_is_left_wrong() {
        let mut p = packet(PROTO_TCP, 1, 0x10, b"payload");
        p[40] ^= 0xff; // corrupt the payload; the checksum no longer fits
        let before = p.clone();

        assert_eq!(complete_partial(&mut p), InnerChecksum::Final);
        assert_eq!(p, before);
        assert!(!L4Checksum::of(&p).unwrap().verifies(&p, p.len()));
    }

    #[test]
    fn udp_without_a_checksum_and_fragments_are_left_alone() {
        let mut udp = packet(PROTO_UDP, 0, 0, b"datagram");
        udp[26..28].copy_from_slice(&[0, 0]);
        assert_eq!(complete_partial(&mut udp), InnerChecksum::Final);
        assert_eq!(&udp[26..28], &[0, 0]);

        let mut frag = partial(packet(PROTO_UDP, 0, 0, b"datagram"));
        frag[6] |= 0x20; // more fragments
        assert_eq!(complete_partial(&mut frag), InnerChecksum::NotApplicable);
    }

    proptest! {
        /// Partial in, correct out; correct in, unchanged out; for TCP and UDP alike.
        #[test]
        fn completes_partial_and_never_changes_a_correct_checksum(
            payload in proptest::collection::vec(any::<u8>(), 0..400),
            tcp in any::<bool>(),
            seq in any::<u32>(),
        ) {
            let protocol = if tcp { PROTO_TCP } else { PROTO_UDP };
            let good = packet(protocol, seq, 0x18, &payload);
            let mut p = partial(good.clone());
            complete_partial(&mut p);
            prop_assert_eq!(&p, &good);
            let mut again = good.clone();
            complete_partial(&mut again);
            prop_assert_eq!(again, good);
        }
    }
}
