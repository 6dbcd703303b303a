//! The Internet checksum (RFC 1071) over IPv4, TCP and UDP headers and payloads.
//!
//! A [`Sum`] is the one's complement sum of big-endian 16-bit words, kept unfolded so that
//! pieces can be added in any order (each piece but the last must have an even length).
//! `fold` gives the 16-bit sum; the checksum field holds its complement, except where a
//! sender left it *partial* (the pseudo-header sum only, see
//! [`crate::dataplane::complete_partial`]).

use std::net::Ipv4Addr;

/// An unfolded one's complement sum of big-endian 16-bit words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum(u64);

impl Sum {
    /// Adds `bytes`, read as big-endian 16-bit words; an odd last byte is padded with zero.
    ///
    /// The bulk is summed as native-endian 32-bit words into a plain `u64` (no carries to
    /// chase, so the compiler vectorises it), folded to 16 bits and byte-swapped on a
    /// little-endian host: the one's complement sum does not depend on byte order
    /// (RFC 1071 section 2(B)). This is the data path's hottest loop.
    #[must_use]
    pub fn add_bytes(self, bytes: &[u8]) -> Sum {
        let mut chunks = bytes.chunks_exact(4);
        // At most 2^32 - 1 per word: no overflow below 2^34 bytes.
        let mut native: u64 = 0;
        for c in &mut chunks {
            native += u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
        }
        let folded = fold64(native);
        let mut sum = self.add_u16(if cfg!(target_endian = "little") {
            folded.swap_bytes()
        } else {
            folded
        });
        let rest = chunks.remainder();
        let mut pairs = rest.chunks_exact(2);
        for c in &mut pairs {
            sum = sum.add_u16(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = pairs.remainder() {
            sum = sum.add_u16(u16::from(*last) << 8);
        }
        sum
    }

    /// Adds one 16-bit word.
    #[must_use]
    pub fn add_u16(self, word: u16) -> Sum {
        let (s, carry) = self.0.overflowing_add(u64::from(word));
        Sum(s + u64::from(carry))
    }

    /// The 16-bit one's complement sum (not complemented).
    pub fn fold(self) -> u16 {
        fold64(self.0)
    }

    /// The value a checksum field holds for a packet summing to `self` without it.
    pub fn checksum(self) -> u16 {
        !self.fold()
    }
}

/// Folds a sum of 16-bit words (with carries in the high bits) to 16 bits, end-around.
fn fold64(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The IPv4 pseudo-header of a TCP or UDP segment of `len` bytes (header and payload).
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> Sum {
    Sum::default()
        .add_bytes(&src.octets())
        .add_bytes(&dst.octets())
        .add_u16(u16::from(protocol))
        .add_u16(len)
}

/// Whether a received segment's checksum is right: the sum over pseudo-header and segment,
/// checksum field included, is all ones.
pub fn verifies(pseudo: Sum, segment: &[u8]) -> bool {
    pseudo.add_bytes(segment).fold() == 0xffff
}

/// Writes a fresh IPv4 header checksum into `header` (its length in bytes, options included).
pub fn fill_ipv4_header_checksum(header: &mut [u8]) {
    if header.len() < 20 {
        return;
    }
    header[10..12].copy_from_slice(&[0, 0]);
    let c = Sum::default().add_bytes(header).checksum();
    header[10..12].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The RFC 1071 reference: 16-bit words, end-around carry after every add.
    fn reference(bytes: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in bytes.chunks(2) {
            let w = u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
            s += w;
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let b = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(Sum::default().add_bytes(&b).fold(), 0xddf2);
    }

    #[test]
    fn an_ipv4_header_checksum_verifies() {
        let mut h = [
            0x45, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 64, 1, 0xaa, 0xbb, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        fill_ipv4_header_checksum(&mut h);
        assert_eq!(Sum::default().add_bytes(&h).fold(), 0xffff);
    }

    proptest! {
        #[test]
        fn matches_the_reference_and_adds_in_even_pieces(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            cut in 0usize..150,
        ) {
            let whole = Sum::default().add_bytes(&bytes).fold();
            let r = reference(&bytes);
            // 0x0000 and 0xffff are the same number in one's complement.
            prop_assert!(whole == r || (whole == 0xffff && r == 0) || (whole == 0 && r == 0xffff));
            let cut = (cut * 2).min(bytes.len() & !1);
            let pieces = Sum::default().add_bytes(&bytes[..cut]).add_bytes(&bytes[cut..]).fold();
            prop_assert_eq!(pieces, whole);
        }
    }
}
