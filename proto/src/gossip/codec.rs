//! The byte-level reader and writer every gossip message is built from.
//!
//! Integers are big-endian. Strings and byte strings carry a length prefix (`u8` for
//! names, `u16` for values, `u32` only inside streams). The reader checks every length
//! against what is left, so no input can make it read out of bounds or allocate more
//! than the input's own size.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::Ipv4Net;

use crate::wire::MacAddr;

/// Why bytes are not a well-formed gossip message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message truncated")]
    Truncated,
    #[error("invalid field value")]
    Invalid,
}

/// A cursor over untrusted bytes. Every accessor returns `Err` instead of panicking.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.bytes.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid),
        }
    }

    /// A UTF-8 string with a `u8` length prefix.
    pub(crate) fn str8(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u8()?);
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Invalid)
    }

    /// Bytes with a `u16` length prefix.
    pub(crate) fn bytes16(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }

    pub(crate) fn ipv4(&mut self) -> Result<Ipv4Addr, DecodeError> {
        Ok(Ipv4Addr::from(self.array::<4>()?))
    }

    pub(crate) fn ipv4_net(&mut self) -> Result<Ipv4Net, DecodeError> {
        let addr = self.ipv4()?;
        let len = self.u8()?;
        let net = Ipv4Net::new(addr, len).map_err(|_| DecodeError::Invalid)?;
        // Only canonical networks: a host part would make two encodings of one subnet.
        if net.network() != addr {
            return Err(DecodeError::Invalid);
        }
        Ok(net)
    }

    pub(crate) fn mac(&mut self) -> Result<MacAddr, DecodeError> {
        Ok(MacAddr(self.array()?))
    }

    /// Family byte (4 or 6), address, port.
    pub(crate) fn socket_addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(self.ipv4()?),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(DecodeError::Invalid),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }
}

/// Appends encoded fields to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Writer { buf: Vec::new() }
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// # Panics
    /// If `s` is longer than 255 bytes; callers validate lengths before encoding.
    pub(crate) fn str8(&mut self, s: &str) {
        let len = u8::try_from(s.len()).expect("validated: names are at most 255 bytes");
        self.u8(len);
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// # Panics
    /// If `b` is longer than 65535 bytes; callers validate lengths before encoding.
    pub(crate) fn bytes16(&mut self, b: &[u8]) {
        let len = u16::try_from(b.len()).expect("validated: values are at most 65535 bytes");
        self.u16(len);
        self.buf.extend_from_slice(b);
    }

    pub(crate) fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    pub(crate) fn ipv4(&mut self, a: Ipv4Addr) {
        self.raw(&a.octets());
    }

    pub(crate) fn ipv4_net(&mut self, n: Ipv4Net) {
        self.ipv4(n.network());
        self.u8(n.prefix_len());
    }

    pub(crate) fn mac(&mut self, m: MacAddr) {
        self.raw(&m.0);
    }

    pub(crate) fn socket_addr(&mut self, a: SocketAddr) {
        match a.ip() {
            IpAddr::V4(ip) => {
                self.u8(4);
                self.ipv4(ip);
            }
            IpAddr::V6(ip) => {
                self.u8(6);
                self.raw(&ip.octets());
            }
        }
        self.u16(a.port());
    }
}

/// Encoded length of a socket address.
pub(crate) fn socket_addr_len(a: &SocketAddr) -> usize {
    match a {
        SocketAddr::V4(_) => 1 + 4 + 2,
        SocketAddr::V6(_) => 1 + 16 + 2,
    }
}

/// A stable 64-bit hash (never changes between versions or platforms) for preferred
/// subnet indexes, digest buckets and key fingerprints: FNV-1a over the parts, then
/// MurmurHash3's fmix64 finalizer, because FNV's low bits barely mix — names that differ
/// only in their last character would otherwise never share `hash mod 2^k`.
pub(crate) fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_what_it_writes() {
        let mut w = Writer::new();
        w.u8(7);
        w.u16(0x1234);
        w.u32(0xdead_beef);
        w.u64(u64::MAX - 1);
        w.str8("node-a");
        w.bytes16(b"xyz");
        w.ipv4_net("10.1.2.0/24".parse().unwrap());
        w.socket_addr("[::1]:7946".parse().unwrap());
        w.socket_addr("10.0.0.1:7946".parse().unwrap());
        w.mac(MacAddr([1, 2, 3, 4, 5, 6]));
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u16().unwrap(), 0x1234);
        assert_eq!(r.u32().unwrap(), 0xdead_beef);
        assert_eq!(r.u64().unwrap(), u64::MAX - 1);
        assert_eq!(r.str8().unwrap(), "node-a");
        assert_eq!(r.bytes16().unwrap(), b"xyz");
        assert_eq!(
            r.ipv4_net().unwrap(),
            "10.1.2.0/24".parse::<Ipv4Net>().unwrap()
        );
        assert_eq!(
            r.socket_addr().unwrap(),
            "[::1]:7946".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            r.socket_addr().unwrap(),
            "10.0.0.1:7946".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(r.mac().unwrap(), MacAddr([1, 2, 3, 4, 5, 6]));
        assert!(r.is_empty());
        assert_eq!(r.u8(), Err(DecodeError::Truncated));
    }

    #[test]
    fn rejects_non_canonical_subnets_and_bad_utf8() {
        let mut r = Reader::new(&[10, 1, 2, 3, 24]);
        assert_eq!(r.ipv4_net(), Err(DecodeError::Invalid));
        let mut r = Reader::new(&[10, 1, 2, 0, 33]);
        assert_eq!(r.ipv4_net(), Err(DecodeError::Invalid));
        let mut r = Reader::new(&[2, 0xff, 0xfe]);
        assert_eq!(r.str8(), Err(DecodeError::Invalid));
    }

    #[test]
    fn hash_separates_parts_and_mixes_low_bits() {
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        assert_eq!(stable_hash(&[b"node-1"]), stable_hash(&[b"node-1"]));
        // Even spread of similar names over 64 buckets (expected 15.6 each).
        let mut buckets = [0u32; 64];
        for i in 0..1000 {
            buckets[(stable_hash(&[format!("node-{i}").as_bytes()]) % 64) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&c| (4..=32).contains(&c)),
            "{buckets:?}"
        );
        // Pinned: the preferred subnet of a name must not change between versions.
        assert_eq!(stable_hash(&[b"node-1"]), 0xe554_35ae_2194_ce5d);
    }

    proptest! {
        #[test]
        fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&bytes);
            let _ = r.str8();
            let _ = r.socket_addr();
            let _ = r.ipv4_net();
            let _ = r.bytes16();
            let _ = r.u64();
        }
    }
}
