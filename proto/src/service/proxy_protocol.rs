//! The PROXY protocol version 2 header (HAProxy, "The PROXY protocol", versions 1 & 2,
//! §2.2): sent first on a connection to a backend so it learns the client's address,
//! which the proxy's own connection otherwise hides.
//!
//! For a TCP connection over IPv4 the header is 28 bytes:
//!
//! | bytes | value |
//! |---|---|
//! | 0..12 | signature `0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A` |
//! | 12 | `0x21`: version 2, command PROXY |
//! | 13 | `0x11`: AF_INET, STREAM |
//! | 14..16 | `00 0C`: 12 address bytes follow (network order) |
//! | 16..20 | source (client) address |
//! | 20..24 | destination address (the Service address the client connected to) |
//! | 24..26 | source port |
//! | 26..28 | destination port |

use std::net::SocketAddrV4;

/// The v2 signature.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Length of an IPv4 TCP header.
pub const V2_TCP4_LEN: usize = 28;

/// The header for a TCP connection from `client` to the Service address `service`.
pub fn v2_tcp4(client: SocketAddrV4, service: SocketAddrV4) -> [u8; V2_TCP4_LEN] {
    let mut h = [0u8; V2_TCP4_LEN];
    h[..12].copy_from_slice(&SIGNATURE);
    h[12] = 0x21;
    h[13] = 0x11;
    h[14..16].copy_from_slice(&12u16.to_be_bytes());
    h[16..20].copy_from_slice(&client.ip().octets());
    h[20..24].copy_from_slice(&service.ip().octets());
    h[24..26].copy_from_slice(&client.port().to_be_bytes());
    h[26..28].copy_from_slice(&service.port().to_be_bytes());
    h
}

/// Reads a v2 IPv4 TCP header from the start of `bytes`: (client, service). For tests and
/// tools; the proxy only writes headers.
pub fn parse_v2_tcp4(bytes: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4)> {
    let h = bytes.get(..V2_TCP4_LEN)?;
    if h[..12] != SIGNATURE || h[12] != 0x21 || h[13] != 0x11 || h[14..16] != [0, 12] {
        return None;
    }
    let ip = |at: usize| std::net::Ipv4Addr::new(h[at], h[at + 1], h[at + 2], h[at + 3]);
    let port = |at: usize| u16::from_be_bytes([h[at], h[at + 1]]);
    Some((
        SocketAddrV4::new(ip(16), port(24)),
        SocketAddrV4::new(ip(20), port(26)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bytes_of_a_tcp4_header() {
        let client: SocketAddrV4 = "192.168.1.7:51234".parse().unwrap();
        let service: SocketAddrV4 = "10.96.0.10:443".parse().unwrap();
        let expected: [u8; 28] = [
            // signature
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
            // v2 PROXY, TCP over IPv4, 12 bytes of addresses
            0x21, 0x11, 0x00, 0x0C, // 192.168.1.7, 10.96.0.10
            192, 168, 1, 7, 10, 96, 0, 10, // 51234 = 0xC822, 443 = 0x01BB
            0xC8, 0x22, 0x01, 0xBB,
        ];
        assert_eq!(v2_tcp4(client, service), expected);
        assert_eq!(&SIGNATURE, b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(parse_v2_tcp4(&expected), Some((client, service)));
        let mut bad = expected;
        bad[12] = 0x20; // LOCAL, not PROXY
        assert_eq!(parse_v2_tcp4(&bad), None);
        assert_eq!(parse_v2_tcp4(&expected[..27]), None);
    }
}
