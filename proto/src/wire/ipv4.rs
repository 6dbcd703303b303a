//! The few IPv4 header fields the data path decides on, read through etherparse.

use std::net::Ipv4Addr;

use etherparse::Ipv4HeaderSlice;

/// Why bytes are not an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Error {
    /// Not version 4, a header length under 20 bytes, or a total length that the header
    /// does not fit in or the buffer does not hold.
    Malformed,
}

/// A checked view of an IPv4 packet: the header is well formed and the buffer holds
/// `total_len` bytes (trailing bytes, e.g. Ethernet padding, are not part of it).
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<'a> {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    bytes: &'a [u8],
}

impl<'a> Ipv4Packet<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Ipv4Error> {
        let header = Ipv4HeaderSlice::from_slice(bytes).map_err(|_| Ipv4Error::Malformed)?;
        let total = usize::from(header.total_len());
        if total < header.slice().len() || total > bytes.len() {
            return Err(Ipv4Error::Malformed);
        }
        Ok(Ipv4Packet {
            src: header.source_addr(),
            dst: header.destination_addr(),
            bytes: &bytes[..total],
        })
    }

    pub fn src(&self) -> Ipv4Addr {
        self.src
    }

    pub fn dst(&self) -> Ipv4Addr {
        self.dst
    }

    /// The packet, `total_len` bytes long.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Test helper: a minimal valid IPv4/UDP packet with `payload_len` zero bytes.
#[cfg(test)]
pub(crate) fn test_packet(src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize) -> Vec<u8> {
    let total = 20 + payload_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_addresses_and_trims_padding() {
        let mut p = test_packet(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 4);
        p.extend_from_slice(&[0; 10]);
        let packet = Ipv4Packet::parse(&p).unwrap();
        assert_eq!(packet.src(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(packet.dst(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(packet.bytes().len(), 24);
    }

    #[test]
    fn rejects_total_length_beyond_buffer_and_wrong_version() {
        let p = test_packet(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 4);
        assert_eq!(
            Ipv4Packet::parse(&p[..23]).err(),
            Some(Ipv4Error::Malformed)
        );
        let mut v6 = p.clone();
        v6[0] = 0x65;
        assert_eq!(Ipv4Packet::parse(&v6).err(), Some(Ipv4Error::Malformed));
        let mut short_total = p;
        short_total[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::parse(&short_total).err(),
            Some(Ipv4Error::Malformed)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_stays_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(packet) = Ipv4Packet::parse(&bytes) {
                prop_assert!(packet.bytes().len() <= bytes.len());
                prop_assert!(packet.bytes().len() >= 20);
            }
        }
    }
}
