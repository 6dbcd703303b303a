//! ICMP "fragmentation needed" (type 3 code 4, RFC 792 / RFC 1191) for a pod packet too
//! big for its path — a QUIC datagram smaller than the route's MTU said, say: the daemon
//! answers the pod with this instead of dropping the packet silently, and the pod's
//! kernel lowers its path MTU at once (TCP re-segments, as behind any router). Built and
//! read with etherparse.

use std::net::Ipv4Addr;

use etherparse::icmpv4::DestUnreachableHeader;
use etherparse::{Icmpv4Header, Icmpv4Slice, Icmpv4Type, IpNumber, Ipv4Header, Ipv4HeaderSlice};

/// Most bytes of the offending packet quoted back: an answer of at most 576 bytes, as
/// routers send (RFC 1812 4.3.2.3); the IPv4 header and the first 8 bytes of its payload
/// are the minimum (RFC 792).
const MAX_QUOTED: usize = 576 - 20 - 8;

/// The smallest MTU an answer may name (RFC 791's 68; the pod clamps higher anyway).
const MIN_MTU: u16 = 68;

/// The ICMP "fragmentation needed" packet (a whole IPv4 packet, from `from` to the
/// offending packet's source) that tells the sender of `packet` that `mtu` bytes fit.
///
/// `None` when no answer may be sent (RFC 1122 3.2.2 and RFC 1812 4.3.2.7): the packet is
/// not IPv4, is not the first fragment, may be fragmented (no DF: whoever forwards it may
/// fragment instead), is itself an ICMP error, or comes from an address no one can answer
/// (unspecified, broadcast, multicast). Also `None` when `packet` fits `mtu` after all.
pub fn frag_needed(packet: &[u8], from: Ipv4Addr, mtu: u16) -> Option<Vec<u8>> {
    let ip = Ipv4HeaderSlice::from_slice(packet).ok()?;
    let total = usize::from(ip.total_len());
    if total <= usize::from(mtu) || total > packet.len() {
        return None;
    }
    if !ip.dont_fragment() || ip.fragments_offset().value() != 0 {
        return None;
    }
    let src = ip.source_addr();
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() {
        return None;
    }
    let header_len = ip.slice().len();
    if ip.protocol() == IpNumber::ICMP {
        let icmp = Icmpv4Slice::from_slice(packet.get(header_len..total)?).ok()?;
        let informational = matches!(
            icmp.icmp_type(),
            Icmpv4Type::EchoRequest(_) | Icmpv4Type::EchoReply(_)
        );
        if !informational {
            return None;
        }
    }
    let quoted = &packet[..total.min(MAX_QUOTED)];
    let icmp = Icmpv4Header::with_checksum(
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: mtu.max(MIN_MTU),
        }),
        quoted,
    );
    let icmp_bytes = icmp.to_bytes();
    let payload_len = u16::try_from(icmp_bytes.len() + quoted.len()).ok()?;
    let mut header =
        Ipv4Header::new(payload_len, 64, IpNumber::ICMP, from.octets(), src.octets()).ok()?;
    header.header_checksum = header.calc_header_checksum();
    let mut out = Vec::with_capacity(20 + usize::from(payload_len));
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(&icmp_bytes);
    out.extend_from_slice(quoted);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum::Sum;

    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

    /// An IPv4 packet of `total` bytes from the pod, protocol `proto`, DF as given.
    fn packet(total: usize, proto: u8, df: bool) -> Vec<u8> {
        let mut p = crate::wire::ipv4::test_packet(POD, Ipv4Addr::new(10, 244, 9, 3), total - 20);
        p[9] = proto;
        if df {
            p[6] = 0x40;
        }
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    #[test]
    fn a_df_packet_too_big_gets_an_answer_the_pods_kernel_reads() {
        let big = packet(1500, 6, true);
        let answer = frag_needed(&big, GATEWAY, 1434).expect("an answer");
        let ip = Ipv4HeaderSlice::from_slice(&answer).unwrap();
        assert_eq!(ip.source_addr(), GATEWAY);
        assert_eq!(ip.destination_addr(), POD);
        assert_eq!(ip.protocol(), IpNumber::ICMP);
        assert_eq!(usize::from(ip.total_len()), answer.len());
        assert_eq!(ip.to_header().calc_header_checksum(), ip.header_checksum());
        assert!(answer.len() <= 576);
        let icmp = Icmpv4Slice::from_slice(&answer[20..]).unwrap();
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1434
            })
        );
        assert_eq!(
            Sum::default().add_bytes(&answer[20..]).checksum(),
            0,
            "ICMP checksum"
        );
        // The offending header and the start of its payload, as sent.
        assert_eq!(&answer[28..28 + 28], &big[..28]);
    }

    #[test]
    fn no_answer_where_rfc_1122_forbids_one_or_nothing_is_too_big() {
        assert_eq!(
            frag_needed(&packet(1400, 6, true), GATEWAY, 1434),
            None,
            "fits"
        );
        assert_eq!(
            frag_needed(&packet(1500, 6, false), GATEWAY, 1434),
            None,
            "no DF: may be fragmented"
        );
        let mut later = packet(1500, 17, true);
        later[7] = 0x10; // fragment offset 16 × 8
        assert_eq!(
            frag_needed(&later, GATEWAY, 1434),
            None,
            "not the first fragment"
        );
        let mut error = packet(1500, 1, true);
        error[20] = 3; // an ICMP error itself
        error[21] = 1;
        assert_eq!(frag_needed(&error, GATEWAY, 1434), None, "ICMP error");
        let mut echo = packet(1500, 1, true);
        echo[20] = 8; // echo request: may be answered
        echo[21] = 0;
        assert!(frag_needed(&echo, GATEWAY, 1434).is_some(), "ping -M do");
        let mut multicast = packet(1500, 17, true);
        multicast[12..16].copy_from_slice(&[224, 0, 0, 1]);
        assert_eq!(
            frag_needed(&multicast, GATEWAY, 1434),
            None,
            "multicast source"
        );
        assert_eq!(frag_needed(&[0x45, 0, 1], GATEWAY, 1434), None, "truncated");
        let mut short = packet(1500, 6, true);
        short.truncate(1000);
        assert_eq!(
            frag_needed(&short, GATEWAY, 900),
            None,
            "shorter than it says"
        );
    }

    #[test]
    fn a_tiny_mtu_is_named_as_at_least_68() {
        let answer = frag_needed(&packet(1500, 6, true), GATEWAY, 10).unwrap();
        assert_eq!(&answer[26..28], &68u16.to_be_bytes());
    }
}
