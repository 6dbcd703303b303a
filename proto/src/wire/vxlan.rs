//! VXLAN (RFC 7348): the 8-byte header and the inner Ethernet header in front of the
//! inner IPv4 packet.
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! | inner destination MAC (6) | inner source MAC (6) | EtherType (2) | inner IP packet ...
//! ```

use super::MacAddr;

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// Length of the inner Ethernet II header (no 802.1Q tag: the kernel does not send one).
pub const INNER_ETHERNET_LEN: usize = 14;
/// Bytes in front of the inner IP packet in a VXLAN UDP payload.
pub const ENCAP_LEN: usize = HEADER_LEN + INNER_ETHERNET_LEN;
/// Outer IPv4 (20) + UDP (8) + `ENCAP_LEN`: what a VXLAN path costs in MTU over IPv4.
pub const IPV4_OVERHEAD: usize = 20 + 8 + ENCAP_LEN;
/// The "I" flag: the VNI is valid. The other flag bits are reserved and ignored on receipt.
pub const FLAG_VNI: u8 = 0x08;
/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Inner EtherType of the path ladder's relay-rung probes and acks (IEEE 802 local
/// experimental EtherType 1): a VXLAN frame from the probing node's VTEP MAC to the far
/// end's, sent to the relay, whose payload is the tunnel port's probe message.
pub const ETHERTYPE_RELAY_PROBE: u16 = 0x88B5;

/// Why bytes are not a VXLAN frame we can decapsulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than the VXLAN header plus the inner Ethernet header.
    Truncated,
    /// The I flag is clear.
    NoVniFlag,
}

/// A checked view of a VXLAN UDP payload: header and inner Ethernet header present.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    bytes: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Returns `Err` iff `bytes` is shorter than [`ENCAP_LEN`] or the I flag is clear.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FrameError> {
        if bytes.len() < ENCAP_LEN {
            return Err(FrameError::Truncated);
        }
        if bytes[0] & FLAG_VNI == 0 {
            return Err(FrameError::NoVniFlag);
        }
        Ok(Frame { bytes })
    }

    pub fn vni(&self) -> u32 {
        u32::from_be_bytes([0, self.bytes[4], self.bytes[5], self.bytes[6]])
    }

    pub fn inner_dst_mac(&self) -> MacAddr {
        MacAddr(mac_at(self.bytes, HEADER_LEN))
    }

    pub fn inner_src_mac(&self) -> MacAddr {
        MacAddr(mac_at(self.bytes, HEADER_LEN + 6))
    }

    pub fn inner_ethertype(&self) -> u16 {
        u16::from_be_bytes([self.bytes[HEADER_LEN + 12], self.bytes[HEADER_LEN + 13]])
    }

    /// Everything after the inner Ethernet header.
    pub fn inner_payload(&self) -> &'a [u8] {
        &self.bytes[ENCAP_LEN..]
    }
}

fn mac_at(bytes: &[u8], at: usize) -> [u8; 6] {
    let mut mac = [0; 6];
    mac.copy_from_slice(&bytes[at..at + 6]);
    mac
}

/// The fields of the 22 bytes that precede an inner IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncapHeader {
    pub vni: u32,
    pub inner_src_mac: MacAddr,
    pub inner_dst_mac: MacAddr,
}

impl EncapHeader {
    /// Writes the header into `out[..ENCAP_LEN]`, for an IPv4 inner packet.
    ///
    /// # Panics
    /// If `out` is shorter than [`ENCAP_LEN`]; callers reserve that headroom.
    pub fn emit(&self, out: &mut [u8]) {
        self.emit_with(out, ETHERTYPE_IPV4);
    }

    /// [`emit`](Self::emit) with another inner EtherType.
    ///
    /// # Panics
    /// If `out` is shorter than [`ENCAP_LEN`].
    pub fn emit_with(&self, out: &mut [u8], ethertype: u16) {
        let vni = self.vni.to_be_bytes();
        out[..HEADER_LEN].copy_from_slice(&[FLAG_VNI, 0, 0, 0, vni[1], vni[2], vni[3], 0]);
        out[HEADER_LEN..HEADER_LEN + 6].copy_from_slice(&self.inner_dst_mac.0);
        out[HEADER_LEN + 6..HEADER_LEN + 12].copy_from_slice(&self.inner_src_mac.0);
        out[HEADER_LEN + 12..ENCAP_LEN].copy_from_slice(&ethertype.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame as Linux's vxlan driver sends it (captured layout, VNI 1).
    const KERNEL_FRAME_HEAD: [u8; 22] = [
        0x08, 0, 0, 0, 0, 0, 1, 0, // flags, VNI 1
        0x0e, 1, 2, 3, 4, 5, // dst
        0x0e, 9, 8, 7, 6, 5, // src
        0x08, 0x00,
    ];

    #[test]
    fn reads_kernel_layout() {
        let frame = Frame::parse(&KERNEL_FRAME_HEAD).unwrap();
        assert_eq!(frame.vni(), 1);
        assert_eq!(frame.inner_dst_mac(), MacAddr([0x0e, 1, 2, 3, 4, 5]));
        assert_eq!(frame.inner_src_mac(), MacAddr([0x0e, 9, 8, 7, 6, 5]));
        assert_eq!(frame.inner_ethertype(), ETHERTYPE_IPV4);
        assert!(frame.inner_payload().is_empty());
    }

    #[test]
    fn emits_kernel_layout() {
        let mut out = [0u8; ENCAP_LEN];
        EncapHeader {
            vni: 1,
            inner_dst_mac: MacAddr([0x0e, 1, 2, 3, 4, 5]),
            inner_src_mac: MacAddr([0x0e, 9, 8, 7, 6, 5]),
        }
        .emit(&mut out);
        assert_eq!(out, KERNEL_FRAME_HEAD);
    }

    #[test]
    fn reserved_flag_bits_are_ignored_but_i_flag_is_required() {
        let mut head = KERNEL_FRAME_HEAD;
        head[0] = 0xff;
        assert!(Frame::parse(&head).is_ok());
        head[0] = 0xf7;
        assert_eq!(Frame::parse(&head).err(), Some(FrameError::NoVniFlag));
        assert_eq!(Frame::parse(&head[..21]).err(), Some(FrameError::Truncated));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(frame) = Frame::parse(&bytes) {
                let _ = (frame.vni(), frame.inner_dst_mac(), frame.inner_ethertype(), frame.inner_payload());
            }
        }

        #[test]
        fn emit_parse_roundtrip(vni in 0..=MAX_VNI, src in any::<[u8; 6]>(), dst in any::<[u8; 6]>()) {
            let header = EncapHeader { vni, inner_src_mac: MacAddr(src), inner_dst_mac: MacAddr(dst) };
            let mut out = [0u8; ENCAP_LEN];
            header.emit(&mut out);
            let frame = Frame::parse(&out).unwrap();
            prop_assert_eq!(frame.vni(), vni);
            prop_assert_eq!(frame.inner_src_mac(), MacAddr(src));
            prop_assert_eq!(frame.inner_dst_mac(), MacAddr(dst));
        }
    }
}
