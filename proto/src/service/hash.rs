//! A 64-bit hash with a fixed specification, for decisions that independently built nodes
//! must take alike (Maglev tables, the client a backend is chosen for). `std`'s
//! `DefaultHasher` may change between Rust releases and is randomly keyed in `HashMap`, so
//! it cannot be used for anything that two nodes compare.
//!
//! # Specification
//!
//! `hash64(seed, bytes)`:
//!
//! 1. `h = 0xcbf29ce484222325 XOR seed` (the FNV-1a 64 offset basis, keyed by the seed);
//! 2. for each byte `b` of `bytes`, in order: `h = (h XOR b) * 0x100000001b3 mod 2^64`
//!    (FNV-1a 64);
//! 3. the result is `fmix64(h)`, MurmurHash3's 64-bit finalizer:
//!    `h ^= h >> 33; h *= 0xff51afd7ed558ccd; h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53;
//!    h ^= h >> 33` (multiplications mod 2^64).
//!
//! FNV-1a alone mixes its last bytes poorly into the high bits (two addresses differing in
//! the last octet differ mostly in low bits); the finalizer spreads every input bit over
//! the whole word, which `hash % M` needs. Not a cryptographic hash: a client that wants a
//! particular backend can find a port that hashes to it, which gives it nothing it could
//! not get by connecting repeatedly.
//!
//! The test vectors below were computed with an independent implementation (a few lines
//! of Python) from this text; a change that breaks them breaks agreement between nodes.

use std::net::{Ipv4Addr, SocketAddrV4};

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Seed of a Maglev backend's offset: `hash64(MAGLEV_OFFSET_SEED, "IP:PORT")`.
pub const MAGLEV_OFFSET_SEED: u64 = 1;
/// Seed of a Maglev backend's skip: `hash64(MAGLEV_SKIP_SEED, "IP:PORT")`.
pub const MAGLEV_SKIP_SEED: u64 = 2;
/// Seed of a client's key: `hash64(CLIENT_SEED, client_key_bytes)`.
pub const CLIENT_SEED: u64 = 3;

/// The hash specified in the module documentation.
pub fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET_BASIS ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h)
}

/// MurmurHash3's 64-bit finalizer.
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The hash of a client for Maglev: `hash64(CLIENT_SEED, octets)` where `octets` are the
/// four address bytes in network order, followed, when `port` is given, by the port's two
/// bytes in network order.
pub fn client_hash(ip: Ipv4Addr, port: Option<u16>) -> u64 {
    let mut key = [0u8; 6];
    key[..4].copy_from_slice(&ip.octets());
    match port {
        Some(p) => {
            key[4..].copy_from_slice(&p.to_be_bytes());
            hash64(CLIENT_SEED, &key)
        }
        None => hash64(CLIENT_SEED, &key[..4]),
    }
}

/// A backend's identity as Maglev hashes it: its `IP:PORT` text (`10.244.1.5:8080`, the
/// form `SocketAddrV4`'s `Display` writes: dotted decimal without leading zeros, a colon,
/// the decimal port). At most 21 bytes, written into `buf`; returns the used part.
pub fn backend_identity(addr: SocketAddrV4, buf: &mut [u8; 21]) -> &[u8] {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // 255.255.255.255:65535 is 21 bytes, so the write cannot run out of room.
    let _ = write!(cursor, "{addr}");
    let len = cursor.position() as usize;
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_vectors() {
        // From the Python reference implementation of the specification above.
        assert_eq!(hash64(0, b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(hash64(0, b"a"), 0x82a2_a958_a9be_ce5b);
        assert_eq!(hash64(0, b"foobar"), 0x2c22_1949_22d1_672b);
        assert_eq!(hash64(1, b"foobar"), 0xc14c_15ff_f008_85ff);
        assert_eq!(hash64(0, b"10.244.1.5:8080"), 0xf66c_9133_a23d_9cef);
        assert_eq!(
            hash64(0x6d61_676c_6576_2d6f, b"10.244.1.5:8080"),
            0x30d7_8e1a_381e_ad40
        );
        assert_eq!(
            hash64(0xdead_beef, &[10, 0, 0, 1, 0x1f, 0x90]),
            0xc5a8_bef4_e21c_b5d9
        );
    }

    #[test]
    fn client_hash_is_the_specified_bytes() {
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(
            client_hash(ip, Some(8080)),
            hash64(CLIENT_SEED, &[10, 0, 0, 1, 0x1f, 0x90])
        );
        assert_eq!(client_hash(ip, None), hash64(CLIENT_SEED, &[10, 0, 0, 1]));
        assert_ne!(client_hash(ip, Some(1)), client_hash(ip, Some(2)));
    }

    #[test]
    fn backend_identity_is_the_display_text() {
        let mut buf = [0u8; 21];
        let longest: SocketAddrV4 = "255.255.255.255:65535".parse().unwrap();
        assert_eq!(
            backend_identity(longest, &mut buf),
            b"255.255.255.255:65535"
        );
        let short: SocketAddrV4 = "10.0.0.1:80".parse().unwrap();
        assert_eq!(backend_identity(short, &mut buf), b"10.0.0.1:80");
    }

    #[test]
    fn the_finalizer_spreads_a_last_octet_change_over_the_high_bits() {
        // Without fmix64, FNV-1a of two addresses one apart differs little in the top
        // bits; with it about half of the 64 bits flip.
        let a = hash64(0, b"10.0.0.1:80");
        let b = hash64(0, b"10.0.0.2:80");
        let flipped = (a ^ b).count_ones();
        assert!((16..=48).contains(&flipped), "{flipped} bits differ");
    }
}
