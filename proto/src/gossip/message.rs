//! Gossip messages and the plaintext envelope they travel in (inside the AEAD seal of
//! [`super::crypto`]).
//!
//! ```text
//! envelope:  kind u8 | sender str8 | recipient u64 | generation u64 | seq u64 | body
//! datagram body (kind 0):   { type u8 | len u16 | message[len] }*     (a compound)
//! stream request (kind 1):  request_id u64 | { type u8 | len u16 | message[len] }*
//! stream response (kind 2): request_id u64 | { type u8 | len u16 | message[len] }*
//! ```
//! Each message is length-prefixed so a receiver skips types it does not know (newer
//! peers) instead of dropping the whole datagram.

use std::net::SocketAddr;

use super::codec::{DecodeError, Reader, Writer, socket_addr_len};
use super::hlc::Hlc;
use super::objects::{MAX_KEY_LEN, MAX_VALUE_LEN};
use super::record::{MAX_NAME_LEN, NodeRecord};

/// A message whose body does not fit the `u16` length prefix; nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLong;

/// Which channel an envelope belongs to; each has its own replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Channel {
    Datagram = 0,
    StreamRequest = 1,
    StreamResponse = 2,
}

impl Channel {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Channel::Datagram),
            1 => Some(Channel::StreamRequest),
            2 => Some(Channel::StreamResponse),
            _ => None,
        }
    }
}

/// The recipient of an envelope sealed for whoever listens at an address (a seed whose
/// name is not known yet); see [`recipient_id`].
pub(crate) const ANYONE: u64 = 0;

/// The recipient identifier of the node named `name`: a hash of the name, never
/// [`ANYONE`]. Sealed in every envelope, so a packet captured on its way to one node is
/// refused by every other.
pub(crate) fn recipient_id(name: &str) -> u64 {
    super::codec::stable_hash(&[b"overlayd-recipient", name.as_bytes()]).max(1)
}

/// Who sent an envelope, and for whom, authenticated by the seal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) channel: Channel,
    pub(crate) sender: String,
    /// [`recipient_id`] of the node it is for, or [`ANYONE`].
    pub(crate) recipient: u64,
    /// The sender's boot generation.
    pub(crate) generation: u64,
    /// Per-boot sequence number for the replay window.
    pub(crate) seq: u64,
}

impl Header {
    #[cfg(test)]
    pub(crate) fn encoded_len(&self) -> usize {
        1 + 1 + self.sender.len() + 8 + 8 + 8
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u8(self.channel as u8);
        w.str8(&self.sender);
        w.u64(self.recipient);
        w.u64(self.generation);
        w.u64(self.seq);
    }

    /// `Err` iff truncated, the channel is unknown or the sender is not a valid name.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let channel = Channel::from_u8(r.u8()?).ok_or(DecodeError::Invalid)?;
        Ok(Header {
            channel,
            sender: name(r)?,
            recipient: r.u64()?,
            generation: r.u64()?,
            seq: r.u64()?,
        })
    }
}

/// A member's liveness claim: `(generation, incarnation)` orders claims about one member.
/// A new boot (higher generation) overrides everything said about the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Incarnation {
    pub generation: u64,
    pub incarnation: u64,
}

/// Buckets in a membership digest.
pub(crate) const MEMBER_BUCKETS: usize = 64;
/// Buckets in an object digest.
pub(crate) const OBJECT_BUCKETS: usize = 32;

/// One gossip message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// Probe: "are you `target`?". Answered with `Ack { seq }`.
    Ping {
        seq: u32,
        target: String,
    },
    Ack {
        seq: u32,
    },
    /// Ask the receiver to probe `target` for us and relay its ack (or a nack).
    PingReq {
        seq: u32,
        target: String,
        target_addr: SocketAddr,
    },
    /// The intermediate of a `PingReq` got no ack in time (Lifeguard: tells the requester
    /// that the intermediate, and so the requester's own network, works).
    Nack {
        seq: u32,
    },
    /// A member is alive at `inc`, with its record at `version`.
    Alive {
        inc: Incarnation,
        version: u64,
        record: NodeRecord,
    },
    Suspect {
        name: String,
        inc: Incarnation,
        from: String,
    },
    Dead {
        name: String,
        inc: Incarnation,
        from: String,
    },
    /// The member left gracefully; drop it at once.
    Left {
        name: String,
        inc: Incarnation,
    },
    /// A cluster object write (value) or delete (`None`).
    Object {
        key: String,
        hlc: Hlc,
        writer: String,
        value: Option<Vec<u8>>,
    },
    /// Anti-entropy digest: per-bucket hashes of members and objects. `reply` asks the
    /// receiver to answer with its own digest.
    Sync {
        reply: bool,
        members: Vec<u64>,
        objects: Vec<u64>,
    },
}

const PING: u8 = 1;
const ACK: u8 = 2;
const PING_REQ: u8 = 3;
const NACK: u8 = 4;
const ALIVE: u8 = 5;
const SUSPECT: u8 = 6;
const DEAD: u8 = 7;
const LEFT: u8 = 8;
const OBJECT: u8 = 9;
const SYNC: u8 = 10;

/// Bytes a message takes in a compound besides its body: type and length.
pub(crate) const MESSAGE_OVERHEAD: usize = 3;

/// What decoding one compound entry gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decoded {
    Message(Message),
    /// A type this version does not know; skipped.
    Unknown(u8),
}

impl Message {
    /// Encoded length including [`MESSAGE_OVERHEAD`].
    pub(crate) fn encoded_len(&self) -> usize {
        MESSAGE_OVERHEAD
            + match self {
                Message::Ping { target, .. } => 4 + 1 + target.len(),
                Message::Ack { .. } | Message::Nack { .. } => 4,
                Message::PingReq {
                    target,
                    target_addr,
                    ..
                } => 4 + 1 + target.len() + socket_addr_len(target_addr),
                Message::Alive { record, .. } => 16 + 8 + record.encoded_len(),
                Message::Suspect { name, from, .. } | Message::Dead { name, from, .. } => {
                    1 + name.len() + 16 + 1 + from.len()
                }
                Message::Left { name, .. } => 1 + name.len() + 16,
                Message::Object {
                    key, writer, value, ..
                } => {
                    1 + key.len()
                        + 8
                        + 1
                        + writer.len()
                        + 1
                        + value.as_ref().map_or(0, |v| 2 + v.len())
                }
                Message::Sync {
                    members, objects, ..
                } => 1 + 1 + 8 * members.len() + 1 + 8 * objects.len(),
            }
    }

    /// Appends type, length and body. Callers keep names, keys and values within the
    /// bounds [`super::record::NodeRecord::validate`] and `set_object` enforce (decoding
    /// enforces them too). Returns `Err` iff the body is longer than the `u16` length
    /// prefix can say; then nothing is appended.
    pub(crate) fn encode(&self, w: &mut Writer) -> Result<(), TooLong> {
        let start = w.len();
        w.u8(self.type_code());
        w.u16(0);
        match self {
            Message::Ping { seq, target } => {
                w.u32(*seq);
                w.str8(target);
            }
            Message::Ack { seq } | Message::Nack { seq } => w.u32(*seq),
            Message::PingReq {
                seq,
                target,
                target_addr,
            } => {
                w.u32(*seq);
                w.str8(target);
                w.socket_addr(*target_addr);
            }
            Message::Alive {
                inc,
                version,
                record,
            } => {
                encode_inc(w, *inc);
                w.u64(*version);
                record.encode(w);
            }
            Message::Suspect { name, inc, from } | Message::Dead { name, inc, from } => {
                w.str8(name);
                encode_inc(w, *inc);
                w.str8(from);
            }
            Message::Left { name, inc } => {
                w.str8(name);
                encode_inc(w, *inc);
            }
            Message::Object {
                key,
                hlc,
                writer,
                value,
            } => {
                w.str8(key);
                w.u64(hlc.0);
                w.str8(writer);
                match value {
                    None => w.u8(0),
                    Some(v) if v.len() <= usize::from(u16::MAX) => {
                        w.u8(1);
                        w.bytes16(v);
                    }
                    Some(_) => {
                        w.buf.truncate(start);
                        return Err(TooLong);
                    }
                }
            }
            Message::Sync {
                reply,
                members,
                objects,
            } => {
                w.bool(*reply);
                for hashes in [members, objects] {
                    let Ok(count) = u8::try_from(hashes.len()) else {
                        w.buf.truncate(start);
                        return Err(TooLong);
                    };
                    w.u8(count);
                    for h in hashes {
                        w.u64(*h);
                    }
                }
            }
        }
        let Ok(body_len) = u16::try_from(w.len() - start - MESSAGE_OVERHEAD) else {
            w.buf.truncate(start);
            return Err(TooLong);
        };
        w.buf[start + 1..start + 3].copy_from_slice(&body_len.to_be_bytes());
        Ok(())
    }

    fn type_code(&self) -> u8 {
        match self {
            Message::Ping { .. } => PING,
            Message::Ack { .. } => ACK,
            Message::PingReq { .. } => PING_REQ,
            Message::Nack { .. } => NACK,
            Message::Alive { .. } => ALIVE,
            Message::Suspect { .. } => SUSPECT,
            Message::Dead { .. } => DEAD,
            Message::Left { .. } => LEFT,
            Message::Object { .. } => OBJECT,
            Message::Sync { .. } => SYNC,
        }
    }

    /// Decodes one compound entry. `Err` iff the entry is truncated, or a known type's body
    /// is malformed, has trailing bytes or a field out of bounds: names 1 to
    /// [`MAX_NAME_LEN`] bytes, keys 1 to [`MAX_KEY_LEN`], values up to [`MAX_VALUE_LEN`].
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Decoded, DecodeError> {
        let ty = r.u8()?;
        let len = usize::from(r.u16()?);
        let mut body = Reader::new(r.take(len)?);
        let b = &mut body;
        let message = match ty {
            PING => Message::Ping {
                seq: b.u32()?,
                target: name(b)?,
            },
            ACK => Message::Ack { seq: b.u32()? },
            NACK => Message::Nack { seq: b.u32()? },
            PING_REQ => Message::PingReq {
                seq: b.u32()?,
                target: name(b)?,
                target_addr: b.socket_addr()?,
            },
            ALIVE => Message::Alive {
                inc: decode_inc(b)?,
                version: b.u64()?,
                record: NodeRecord::decode(b)?,
            },
            SUSPECT => Message::Suspect {
                name: name(b)?,
                inc: decode_inc(b)?,
                from: name(b)?,
            },
            DEAD => Message::Dead {
                name: name(b)?,
                inc: decode_inc(b)?,
                from: name(b)?,
            },
            LEFT => Message::Left {
                name: name(b)?,
                inc: decode_inc(b)?,
            },
            OBJECT => Message::Object {
                key: bounded_str(b, MAX_KEY_LEN)?,
                hlc: Hlc(b.u64()?),
                writer: name(b)?,
                value: match b.u8()? {
                    0 => None,
                    1 => Some(object_value(b)?),
                    _ => return Err(DecodeError::Invalid),
                },
            },
            SYNC => {
                let reply = b.bool()?;
                let members = decode_hashes(b)?;
                let objects = decode_hashes(b)?;
                Message::Sync {
                    reply,
                    members,
                    objects,
                }
            }
            other => return Ok(Decoded::Unknown(other)),
        };
        if !body.is_empty() {
            return Err(DecodeError::Invalid);
        }
        Ok(Decoded::Message(message))
    }
}

/// A node name: 1 to [`MAX_NAME_LEN`] bytes, as [`NodeRecord::validate`] requires.
fn name(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    bounded_str(r, MAX_NAME_LEN)
}

/// A `str8` of 1 to `max` bytes.
fn bounded_str(r: &mut Reader<'_>, max: usize) -> Result<String, DecodeError> {
    let s = r.str8()?;
    if s.is_empty() || s.len() > max {
        return Err(DecodeError::Invalid);
    }
    Ok(s)
}

/// An object value: at most [`MAX_VALUE_LEN`] bytes.
fn object_value(r: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    let v = r.bytes16()?;
    if v.len() > MAX_VALUE_LEN {
        return Err(DecodeError::Invalid);
    }
    Ok(v.to_vec())
}

fn encode_inc(w: &mut Writer, inc: Incarnation) {
    w.u64(inc.generation);
    w.u64(inc.incarnation);
}

fn decode_inc(r: &mut Reader<'_>) -> Result<Incarnation, DecodeError> {
    Ok(Incarnation {
        generation: r.u64()?,
        incarnation: r.u64()?,
    })
}

fn decode_hashes(r: &mut Reader<'_>) -> Result<Vec<u64>, DecodeError> {
    let count = usize::from(r.u8()?);
    if count * 8 > r.remaining() {
        return Err(DecodeError::Truncated);
    }
    (0..count).map(|_| r.u64()).collect()
}

/// Decodes every entry of a compound body. `Err` iff any entry is malformed; unknown
/// types are returned as [`Decoded::Unknown`].
pub(crate) fn decode_compound(bytes: &[u8]) -> Result<Vec<Decoded>, DecodeError> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(Message::decode(&mut r)?);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gossip::record::tests::arb_record;
    use proptest::prelude::*;

    fn arb_inc() -> impl Strategy<Value = Incarnation> {
        (any::<u64>(), any::<u64>()).prop_map(|(generation, incarnation)| Incarnation {
            generation,
            incarnation,
        })
    }

    pub(crate) fn arb_message() -> impl Strategy<Value = Message> {
        let name = "[a-z0-9-]{1,20}";
        prop_oneof![
            (any::<u32>(), name).prop_map(|(seq, target)| Message::Ping { seq, target }),
            any::<u32>().prop_map(|seq| Message::Ack { seq }),
            any::<u32>().prop_map(|seq| Message::Nack { seq }),
            (any::<u32>(), name, any::<([u8; 4], u16)>()).prop_map(|(seq, target, a)| {
                Message::PingReq {
                    seq,
                    target,
                    target_addr: SocketAddr::from(a),
                }
            }),
            (arb_inc(), any::<u64>(), arb_record()).prop_map(|(inc, version, record)| {
                Message::Alive {
                    inc,
                    version,
                    record,
                }
            }),
            (name, arb_inc(), name).prop_map(|(name, inc, from)| Message::Suspect {
                name,
                inc,
                from
            }),
            (name, arb_inc(), name).prop_map(|(name, inc, from)| Message::Dead { name, inc, from }),
            (name, arb_inc()).prop_map(|(name, inc)| Message::Left { name, inc }),
            (
                name,
                any::<u64>(),
                name,
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))
            )
                .prop_map(|(key, hlc, writer, value)| Message::Object {
                    key,
                    hlc: Hlc(hlc),
                    writer,
                    value
                }),
            (
                any::<bool>(),
                proptest::collection::vec(any::<u64>(), 0..8),
                proptest::collection::vec(any::<u64>(), 0..8)
            )
                .prop_map(|(reply, members, objects)| Message::Sync {
                    reply,
                    members,
                    objects
                }),
        ]
    }

    proptest! {
        #[test]
        fn compound_roundtrip(messages in proptest::collection::vec(arb_message(), 0..6)) {
            let mut w = Writer::new();
            for m in &messages {
                let before = w.len();
                m.encode(&mut w).unwrap();
                prop_assert_eq!(w.len() - before, m.encoded_len());
            }
            let decoded = decode_compound(&w.buf).unwrap();
            let expect: Vec<Decoded> = messages.into_iter().map(Decoded::Message).collect();
            prop_assert_eq!(decoded, expect);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_compound(&bytes);
            let _ = Header::decode(&mut Reader::new(&bytes));
        }

        #[test]
        fn mutated_messages_never_panic(message in arb_message(), at in any::<usize>(), byte in any::<u8>()) {
            let mut w = Writer::new();
            message.encode(&mut w).unwrap();
            let i = at % w.buf.len();
            w.buf[i] = byte;
            let _ = decode_compound(&w.buf);
            let _ = decode_compound(&w.buf[..i]);
        }

        #[test]
        fn header_roundtrip(sender in "[a-z]{1,63}", recipient: u64, generation: u64, seq: u64, channel in 0u8..3) {
            let header = Header { channel: Channel::from_u8(channel).unwrap(), sender, recipient, generation, seq };
            let mut w = Writer::new();
            header.encode(&mut w);
            prop_assert_eq!(w.len(), header.encoded_len());
            prop_assert_eq!(Header::decode(&mut Reader::new(&w.buf)).unwrap(), header);
        }
    }

    /// Every variable field is bounded on decode as on encode: a key holder cannot make a
    /// node store (and later re-serve) what it would never have built itself.
    #[test]
    fn out_of_bounds_fields_are_malformed() {
        use crate::gossip::objects::{MAX_KEY_LEN, MAX_VALUE_LEN};
        use crate::gossip::record::MAX_NAME_LEN;
        let long = "n".repeat(MAX_NAME_LEN + 1);
        let inc = Incarnation::default();
        let object = |key: &str, writer: &str, len: usize| Message::Object {
            key: key.into(),
            hlc: Hlc(1),
            writer: writer.into(),
            value: Some(vec![0; len]),
        };
        let bad = [
            object("", "w", 1),
            object("k", "", 1),
            object("k", &long, 1),
            object("k", "w", MAX_VALUE_LEN + 1),
            Message::Ping {
                seq: 1,
                target: long.clone(),
            },
            Message::Ping {
                seq: 1,
                target: String::new(),
            },
            Message::PingReq {
                seq: 1,
                target: long.clone(),
                target_addr: SocketAddr::from(([10, 0, 0, 1], 1)),
            },
            Message::Suspect {
                name: long.clone(),
                inc,
                from: "a".into(),
            },
            Message::Suspect {
                name: "a".into(),
                inc,
                from: long.clone(),
            },
            Message::Dead {
                name: long.clone(),
                inc,
                from: "a".into(),
            },
            Message::Dead {
                name: "a".into(),
                inc,
                from: String::new(),
            },
            Message::Left {
                name: long.clone(),
                inc,
            },
            Message::Left {
                name: String::new(),
                inc,
            },
        ];
        for m in bad {
            let mut w = Writer::new();
            m.encode(&mut w).unwrap();
            assert_eq!(decode_compound(&w.buf), Err(DecodeError::Invalid), "{m:?}");
        }
        // At the bounds: fine.
        let mut w = Writer::new();
        object(
            &"k".repeat(MAX_KEY_LEN),
            &"w".repeat(MAX_NAME_LEN),
            MAX_VALUE_LEN,
        )
        .encode(&mut w)
        .unwrap();
        assert!(decode_compound(&w.buf).is_ok());
        for sender in [long, String::new()] {
            let mut w = Writer::new();
            w.u8(0);
            w.str8(&sender);
            w.u64(1);
            w.u64(1);
            w.u64(1);
            assert_eq!(
                Header::decode(&mut Reader::new(&w.buf)),
                Err(DecodeError::Invalid)
            );
        }
    }

    /// A body longer than the `u16` length prefix is refused whole, never written with a
    /// truncated length that would misframe every message after it.
    #[test]
    fn bodies_beyond_the_length_prefix_are_refused() {
        let mut w = Writer::new();
        Message::Ack { seq: 1 }.encode(&mut w).unwrap();
        let before = w.buf.clone();
        let huge = Message::Object {
            key: "k".into(),
            hlc: Hlc(1),
            writer: "w".into(),
            value: Some(vec![0; 65_530]),
        };
        assert!(huge.encode(&mut w).is_err());
        assert_eq!(w.buf, before, "nothing of it was written");
    }

    #[test]
    fn unknown_types_are_skipped_not_fatal() {
        let mut w = Writer::new();
        w.u8(200);
        w.u16(3);
        w.raw(&[1, 2, 3]);
        Message::Ack { seq: 9 }.encode(&mut w).unwrap();
        assert_eq!(
            decode_compound(&w.buf).unwrap(),
            vec![
                Decoded::Unknown(200),
                Decoded::Message(Message::Ack { seq: 9 })
            ]
        );
    }

    #[test]
    fn trailing_bytes_in_a_known_body_are_malformed() {
        let mut w = Writer::new();
        w.u8(ACK);
        w.u16(5);
        w.raw(&[0, 0, 0, 1, 0]);
        assert_eq!(decode_compound(&w.buf), Err(DecodeError::Invalid));
    }
}
