//! ICMP echo (ping) as the liveness prober sends and reads it: a request with an id and
//! a sequence number, and the reply a node's kernel sends back (no daemon involved).
//! Built and read with etherparse.

use std::net::Ipv4Addr;

use etherparse::{IcmpEchoHeader, Icmpv4Header, Icmpv4Slice, Icmpv4Type};

use super::Ipv4Packet;

/// The payload every request carries (a reply echoes it).
pub const PAYLOAD: &[u8; 8] = b"overlayd";

/// Writes an echo request with `id` and `seq` into `out` (at least 16 bytes); returns its
/// length. For a raw ICMP socket: the kernel adds the IPv4 header.
pub fn request(id: u16, seq: u16, out: &mut [u8]) -> usize {
    let header =
        Icmpv4Header::with_checksum(Icmpv4Type::EchoRequest(IcmpEchoHeader { id, seq }), PAYLOAD);
    let bytes = header.to_bytes();
    out[..bytes.len()].copy_from_slice(&bytes);
    out[bytes.len()..bytes.len() + PAYLOAD.len()].copy_from_slice(PAYLOAD);
    bytes.len() + PAYLOAD.len()
}

/// An echo reply read from a raw ICMP socket (an IPv4 packet): `(source, id, seq)`;
/// `None` for anything else (other ICMP, malformed, a reply to someone else's payload).
pub fn reply(packet: &[u8]) -> Option<(Ipv4Addr, u16, u16)> {
    let ip = Ipv4Packet::parse(packet).ok()?;
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let icmp = Icmpv4Slice::from_slice(ip.bytes().get(ihl..)?).ok()?;
    match icmp.icmp_type() {
        Icmpv4Type::EchoReply(IcmpEchoHeader { id, seq }) if icmp.payload() == PAYLOAD => {
            Some((ip.src(), id, seq))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_to_our_request_is_read_back_and_nothing_else_is() {
        let mut req = [0u8; 32];
        let n = request(0x1234, 7, &mut req);
        assert_eq!(n, 16);
        assert_eq!(&req[..2], &[8, 0], "type 8 code 0");
        // The kernel's reply: type 0, same id/seq/payload, checksum adjusted.
        let mut icmp = req[..n].to_vec();
        icmp[0] = 0;
        icmp[2..4].copy_from_slice(&[0, 0]);
        let sum = crate::wire::checksum::Sum::default()
            .add_bytes(&icmp)
            .checksum();
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut packet = crate::wire::ipv4::test_packet(
            Ipv4Addr::new(10, 100, 1, 12),
            Ipv4Addr::new(10, 100, 1, 11),
            icmp.len(),
        );
        packet[9] = 1;
        packet[20..].copy_from_slice(&icmp);
        assert_eq!(
            reply(&packet),
            Some((Ipv4Addr::new(10, 100, 1, 12), 0x1234, 7))
        );
        // Our own request (seen on a raw socket too), someone else's ping, garbage.
        let mut own = packet.clone();
        own[20] = 8;
        assert_eq!(reply(&own), None);
        let mut other = packet.clone();
        other[28] = b'X';
        assert_eq!(reply(&other), None);
        assert_eq!(reply(&packet[..24]), None);
    }
}
