//! Path-MTU probes between overlayd peers, on the tunnel's UDP port.
//!
//! A probe is a DF datagram padded to the outer IPv4 size it tests; the peer answers each
//! probe it receives whole with a small ack naming the probe and the size that arrived.
//! Both are VXLAN-shaped (RFC 7348's 8-byte header first) with the **I flag clear**, so a
//! plain VXLAN receiver (Linux's vxlan driver, an older overlayd) refuses them as frames
//! with an invalid VNI flag and never decapsulates them. The reserved bits after the flags
//! carry the marker `PMT`, which tells a probe apart from a broken VXLAN frame.
//!
//! ```text
//!  0       1       2       3       4       5       6       7
//! | 0x00  |  'P'  |  'M'  |  'T'  | kind  |   reserved (0)        |   VXLAN header shape
//! |           probe id (u32)      | size (u16)    | reserved (0)  |
//! | padding (probe only) ...
//! ```
//!
//! `size` is the outer IPv4 total length: for a probe the size it was sent at (which must
//! equal what arrived), for an ack the size of the probe that arrived.

use super::vxlan::FLAG_VNI;

/// The marker in the reserved bits after the flags byte.
pub const MAGIC: [u8; 3] = *b"PMT";
/// Bytes of a probe or ack before any padding; an ack is exactly this long.
pub const HEADER_LEN: usize = 16;
/// Outer IPv4 (20) and UDP (8) headers: a probe's UDP payload is `size - OUTER_HEADERS`.
pub const OUTER_HEADERS: usize = 28;
/// The smallest size a probe may claim: the header must fit.
pub const MIN_SIZE: u16 = (OUTER_HEADERS + HEADER_LEN) as u16;

const KIND_PROBE: u8 = 1;
const KIND_ACK: u8 = 2;

/// A probe or an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMessage {
    /// "Did `size` bytes reach you?" The datagram itself is `size - 28` bytes long.
    Probe { id: u32, size: u16 },
    /// "Probe `id` reached me whole at `size` bytes."
    Ack { id: u32, size: u16 },
}

/// Why bytes that carry the probe marker are not a valid probe or ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeError {
    /// Shorter than [`HEADER_LEN`].
    Truncated,
    /// A kind other than probe (1) or ack (2).
    UnknownKind(u8),
    /// A probe whose length is not the size it claims, or an ack with padding or a size
    /// no probe can have.
    BadLength,
}

/// Whether a datagram received on the tunnel port is meant as a probe or ack: I flag clear
/// and the marker present. Such a datagram is never a VXLAN frame; whether it is a *valid*
/// probe is [`ProbeMessage::parse`]'s question.
pub fn is_probe(datagram: &[u8]) -> bool {
    datagram.len() >= 4 && datagram[0] & FLAG_VNI == 0 && datagram[1..4] == MAGIC
}

impl ProbeMessage {
    /// Parses a datagram for which [`is_probe`] holds.
    ///
    /// Returns `Err` iff it is shorter than the header, its kind is unknown, a probe's
    /// length differs from its claimed size, or an ack carries padding or a size below
    /// [`MIN_SIZE`].
    pub fn parse(datagram: &[u8]) -> Result<Self, ProbeError> {
        if datagram.len() < HEADER_LEN {
            return Err(ProbeError::Truncated);
        }
        let id = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
        let size = u16::from_be_bytes([datagram[12], datagram[13]]);
        match datagram[4] {
            KIND_PROBE if usize::from(size) == datagram.len() + OUTER_HEADERS => {
                Ok(ProbeMessage::Probe { id, size })
            }
            KIND_ACK if datagram.len() == HEADER_LEN && size >= MIN_SIZE => {
                Ok(ProbeMessage::Ack { id, size })
            }
            KIND_PROBE | KIND_ACK => Err(ProbeError::BadLength),
            kind => Err(ProbeError::UnknownKind(kind)),
        }
    }

    /// The UDP payload length this message is sent with.
    pub fn payload_len(&self) -> usize {
        match self {
            ProbeMessage::Probe { size, .. } => usize::from(*size) - OUTER_HEADERS,
            ProbeMessage::Ack { .. } => HEADER_LEN,
        }
    }

    /// Writes the message into `out[..self.payload_len()]` (padding zeroed) and returns
    /// that length.
    ///
    /// # Panics
    /// If `out` is shorter than [`Self::payload_len`], or a probe's size is below
    /// [`MIN_SIZE`].
    pub fn emit(&self, out: &mut [u8]) -> usize {
        let len = self.payload_len();
        let (kind, id, size) = match *self {
            ProbeMessage::Probe { id, size } => (KIND_PROBE, id, size),
            ProbeMessage::Ack { id, size } => (KIND_ACK, id, size),
        };
        let out = &mut out[..len];
        out.fill(0);
        out[1..4].copy_from_slice(&MAGIC);
        out[4] = kind;
        out[8..12].copy_from_slice(&id.to_be_bytes());
        out[12..14].copy_from_slice(&size.to_be_bytes());
        len
    }

    /// The answer to a probe that arrived whole; `None` for an ack.
    pub fn ack(&self) -> Option<ProbeMessage> {
        match *self {
            ProbeMessage::Probe { id, size } => Some(ProbeMessage::Ack { id, size }),
            ProbeMessage::Ack { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vxlan::Frame;
    use proptest::prelude::*;

    fn emitted(msg: ProbeMessage) -> Vec<u8> {
        let mut out = vec![0xaa; msg.payload_len()];
        let len = msg.emit(&mut out);
        assert_eq!(len, out.len());
        out
    }

    #[test]
    fn a_probe_is_padded_to_its_size_and_parses_back() {
        let probe = ProbeMessage::Probe { id: 7, size: 1400 };
        let bytes = emitted(probe);
        assert_eq!(bytes.len(), 1400 - 28);
        assert!(is_probe(&bytes));
        assert_eq!(ProbeMessage::parse(&bytes), Ok(probe));
        assert!(
            bytes[HEADER_LEN..].iter().all(|b| *b == 0),
            "padding zeroed"
        );
    }

    #[test]
    fn an_ack_is_sixteen_bytes_and_names_the_probe() {
        let ack = ProbeMessage::Probe { id: 9, size: 1350 }.ack().unwrap();
        let bytes = emitted(ack);
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(
            ProbeMessage::parse(&bytes),
            Ok(ProbeMessage::Ack { id: 9, size: 1350 })
        );
        assert_eq!(ack.ack(), None);
    }

    #[test]
    fn a_vxlan_receiver_refuses_probes_and_overlayd_frames_are_no_probes() {
        let bytes = emitted(ProbeMessage::Probe { id: 1, size: 200 });
        // The I flag is clear: RFC 7348 receivers (and our own decap) drop it.
        assert!(Frame::parse(&bytes).is_err());
        // A VXLAN frame (I flag set), even with the marker in its reserved bits, is none.
        let mut frame = bytes.clone();
        frame[0] = FLAG_VNI;
        assert!(!is_probe(&frame));
        // Without the marker it is a broken VXLAN frame, not a probe.
        let mut unmarked = bytes;
        unmarked[3] = b'X';
        assert!(!is_probe(&unmarked));
        assert!(!is_probe(&[0, b'P', b'M']));
    }

    #[test]
    fn malformed_probes_are_refused_with_a_reason() {
        let probe = emitted(ProbeMessage::Probe { id: 1, size: 300 });
        assert_eq!(
            ProbeMessage::parse(&probe[..HEADER_LEN - 1]),
            Err(ProbeError::Truncated)
        );
        // Cut short on the way (or a lying size field).
        assert_eq!(
            ProbeMessage::parse(&probe[..probe.len() - 1]),
            Err(ProbeError::BadLength)
        );
        let mut kind = probe.clone();
        kind[4] = 9;
        assert_eq!(ProbeMessage::parse(&kind), Err(ProbeError::UnknownKind(9)));
        let mut padded_ack = emitted(ProbeMessage::Ack { id: 1, size: 300 });
        padded_ack.push(0);
        assert_eq!(ProbeMessage::parse(&padded_ack), Err(ProbeError::BadLength));
        let tiny_ack = emitted(ProbeMessage::Ack { id: 1, size: 10 });
        assert_eq!(ProbeMessage::parse(&tiny_ack), Err(ProbeError::BadLength));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = ProbeMessage::parse(&bytes);
            let _ = is_probe(&bytes);
        }

        #[test]
        fn emit_parse_roundtrip(id in any::<u32>(), size in MIN_SIZE..3000, ack in any::<bool>()) {
            let msg = if ack { ProbeMessage::Ack { id, size } } else { ProbeMessage::Probe { id, size } };
            let bytes = emitted(msg);
            prop_assert!(is_probe(&bytes));
            prop_assert_eq!(ProbeMessage::parse(&bytes), Ok(msg));
        }
    }
}
