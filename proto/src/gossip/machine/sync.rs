//! Anti-entropy and full-state streams.
//!
//! Push-pull: every `push_pull_interval` a node sends one random member a digest —
//! per-bucket XOR of hashes of `(name, generation, incarnation)` for up members and of
//! `(key, hlc, writer)` for live objects, 64 + 32 buckets, 771 bytes. The receiver sends
//! back everything it holds in buckets that differ, plus its own digest, and the first
//! node does the same in return. A datagram-sized digest keeps the exchange bounded at
//! any cluster size; only what differs travels.
//!
//! Streams: a fresh joiner, or a node cut off for longer than the GC horizon, pulls
//! everything (members, objects, tombstones) once over TCP, sealed like datagrams.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

use rand::RngExt;

use super::super::codec::{Reader, Writer, stable_hash};
use super::super::members::MemberState;
use super::super::message::{ANYONE, recipient_id};
use super::super::message::{
    Channel, Decoded, MEMBER_BUCKETS, Message, OBJECT_BUCKETS, decode_compound,
};
use super::super::objects::ObjectEntry;
use super::super::stats::GossipDrop;
use super::{Dest, Event, Gossip, StreamError, StreamRequest, Via};

/// Most message bytes one push-pull answer carries; the rest waits for the next round.
const MAX_SYNC_BYTES: usize = 32 * 1024;
/// When at least this many object buckets differ, anti-entropy pulls full state over a
/// stream instead (both sides: each sees the same differing buckets in the other's
/// digest). That many buckets mean at least as many objects differ, in stores of any
/// size; 32 KiB answers every push-pull interval would take minutes to repair what a
/// stream carries at once (measured: 10 000 Services written on one node of 5 were not
/// everywhere after 30 min; with the pull, after about 20 s).
const PULL_WHEN_BUCKETS_DIFFER: usize = OBJECT_BUCKETS / 2;
/// Largest stream request accepted (it carries one record).
const MAX_STREAM_REQUEST: usize = 64 * 1024;

fn member_bucket(name: &str) -> usize {
    (stable_hash(&[name.as_bytes()]) % MEMBER_BUCKETS as u64) as usize
}

impl Gossip {
    fn member_digest(&self) -> Vec<u64> {
        let mut buckets = vec![0u64; MEMBER_BUCKETS];
        let mut add = |name: &str, generation: u64, incarnation: u64| {
            buckets[member_bucket(name)] ^= stable_hash(&[
                name.as_bytes(),
                &generation.to_be_bytes(),
                &incarnation.to_be_bytes(),
            ]);
        };
        if !self.left {
            add(
                &self.local.name,
                self.local_inc.generation,
                self.local_inc.incarnation,
            );
        }
        for (name, m) in &self.members {
            if m.state.is_up() {
                add(name, m.inc.generation, m.inc.incarnation);
            }
        }
        buckets
    }

    fn sync_message(&self, reply: bool) -> Message {
        Message::Sync {
            reply,
            members: self.member_digest(),
            objects: self.objects.digest(),
        }
    }

    /// What we know about one member (ourselves included), as a message.
    fn member_messages(&self, bucket: Option<usize>) -> Vec<Message> {
        let mut out = Vec::new();
        let in_bucket = |name: &str| bucket.is_none_or(|b| member_bucket(name) == b);
        if in_bucket(&self.local.name) {
            out.push(if self.left {
                Message::Left {
                    name: self.local.name.clone(),
                    inc: self.local_inc,
                }
            } else {
                self.local_alive()
            });
        }
        for (name, m) in &self.members {
            if !in_bucket(name) {
                continue;
            }
            out.push(match m.state {
                MemberState::Alive | MemberState::Suspect => Message::Alive {
                    inc: m.inc,
                    version: m.version,
                    record: m.record.clone(),
                },
                MemberState::Dead => Message::Dead {
                    name: name.clone(),
                    inc: m.inc,
                    from: self.local.name.clone(),
                },
                MemberState::Left => Message::Left {
                    name: name.clone(),
                    inc: m.inc,
                },
            });
        }
        out
    }

    fn object_message(key: &str, e: &ObjectEntry) -> Message {
        Message::Object {
            key: key.to_owned(),
            hlc: e.hlc,
            writer: e.writer.clone(),
            value: e.value.clone(),
        }
    }

    pub(super) fn push_pull_tick(&mut self, _now: Instant) {
        if self.left {
            return;
        }
        let Some(target) = self.random_live(1, None).pop() else {
            return;
        };
        let Some(dest) = self.member_dest(&target) else {
            return;
        };
        let sync = self.sync_message(true);
        self.send(dest, &[sync], false);
    }

    /// A digest arrived: send what we hold in differing buckets, and our digest if asked —
    /// last, so the peer applies the differences before comparing and answers only with
    /// what still differs.
    pub(super) fn on_sync(
        &mut self,
        now: Instant,
        to: Dest,
        reply: bool,
        members: &[u64],
        objects: &[u64],
    ) {
        let mine_members = self.member_digest();
        let mine_objects = self.objects.digest();
        let differing = |mine: &[u64], theirs: &[u64]| -> Vec<usize> {
            if mine.len() != theirs.len() {
                return (0..mine.len()).collect();
            }
            (0..mine.len()).filter(|&i| mine[i] != theirs[i]).collect()
        };
        let mut member_buckets = differing(&mine_members, members);
        let mut object_buckets = differing(&mine_objects, objects);
        if member_buckets.is_empty() && object_buckets.is_empty() {
            return;
        }
        if object_buckets.len() >= PULL_WHEN_BUCKETS_DIFFER && self.pull_from(now, to) {
            // Far apart: we pull the peer's full state, and our digest makes the peer
            // find the same and pull ours. Nothing else is worth sending.
            if reply {
                let sync = Message::Sync {
                    reply: false,
                    members: mine_members,
                    objects: mine_objects,
                };
                self.send(to, &[sync], false);
            }
            return;
        }
        // Random bucket order, so a capped answer repairs different buckets each round.
        shuffle(&mut member_buckets, &mut self.rng);
        shuffle(&mut object_buckets, &mut self.rng);
        let mut out = Vec::new();
        let mut bytes = 0;
        'members: for b in member_buckets {
            for m in self.member_messages(Some(b)) {
                bytes += m.encoded_len();
                out.push(m);
                if bytes > MAX_SYNC_BYTES {
                    break 'members;
                }
            }
        }
        'objects: for b in object_buckets {
            // From a random entry on: a bucket larger than one answer would otherwise
            // send the same first entries every round and never the rest.
            let count = self.objects.bucket_entries(b).count();
            let start = if count == 0 {
                0
            } else {
                self.rng.random_range(0..count)
            };
            let rotated = self
                .objects
                .bucket_entries(b)
                .skip(start)
                .chain(self.objects.bucket_entries(b).take(start));
            for (key, e) in rotated {
                let m = Self::object_message(key, e);
                bytes += m.encoded_len();
                out.push(m);
                if bytes > MAX_SYNC_BYTES {
                    break 'objects;
                }
            }
        }
        if reply {
            out.push(Message::Sync {
                reply: false,
                members: mine_members,
                objects: mine_objects,
            });
        }
        self.send(to, &out, false);
    }

    /// Wants a full-state pull from `from`, a live member anti-entropy found far apart
    /// from us. Returns `false` iff `from` is no live member (then the caller repairs by
    /// datagrams). A pull already wanted or in flight is left as it is; a new one starts
    /// when the last attempt's timeout allows (at most one per `stream_timeout`).
    fn pull_from(&mut self, now: Instant, from: Dest) -> bool {
        let member = self
            .members
            .iter()
            .any(|(name, m)| m.state.is_up() && Dest::named(m.record.gossip_addr, name) == from);
        if !member {
            return false;
        }
        if !self.pull.needed {
            self.pull.needed = true;
            self.pull.prefer = Some(from);
            self.pull_tick(now);
        }
        true
    }

    /// Starts a full-state pull when one is needed and none is in flight; times out the
    /// one in flight.
    pub(super) fn pull_tick(&mut self, now: Instant) {
        if !self.pull.needed {
            return;
        }
        if let Some((_, _, deadline)) = self.pull.outstanding {
            if deadline > now {
                return;
            }
            self.pull.outstanding = None;
            self.pull.next_attempt = now;
        }
        if now < self.pull.next_attempt {
            return;
        }
        let member = self.pull.prefer.take().or_else(|| {
            self.random_live(1, None)
                .pop()
                .and_then(|name| self.member_dest(&name))
        });
        let dest = member
            .or_else(|| {
                let seeds: Vec<SocketAddr> = self.other_seeds().collect();
                if seeds.is_empty() {
                    return None;
                }
                self.seed_pos = (self.seed_pos + 1) % seeds.len();
                Some(Dest::anyone(seeds[self.seed_pos]))
            })
            .or(self.pull.hint);
        let Some(Dest {
            addr: to,
            recipient,
        }) = dest
        else {
            self.pull.next_attempt = now + self.config.timing.reannounce_interval;
            return;
        };
        self.pull.next_id += 1;
        let id = self.pull.next_id;
        let mut w = Writer::new();
        w.u64(id);
        // Our own validated record always fits.
        let _ = self.local_alive().encode(&mut w);
        let request = self.seal_stream(Channel::StreamRequest, recipient, &w.buf);
        self.streams.push_back(StreamRequest { to, request });
        self.stats.streams_requested += 1;
        let timeout = self.config.timing.stream_timeout;
        self.pull.outstanding = Some((id, to, now + timeout));
        self.pull.next_attempt = now + timeout;
    }

    /// The shell could not complete the stream to `to` (connect refused, reset, timeout).
    /// The pull is retried, with another member or seed, a probe interval later.
    pub fn handle_stream_failed(&mut self, now: Instant, to: SocketAddr) {
        if self.pull.outstanding.is_some_and(|(_, addr, _)| addr == to) {
            self.pull.outstanding = None;
            self.pull.next_attempt = now + self.config.timing.probe_interval;
        }
    }

    /// Serves a full-state pull read from a TCP connection: returns the sealed response
    /// to write back. Learns the requester (a joiner) on the way.
    ///
    /// Returns `Err` iff the request does not authenticate, is replayed, malformed or
    /// sealed for another node; the drop is counted.
    pub fn serve_stream(&mut self, now: Instant, request: &[u8]) -> Result<Vec<u8>, StreamError> {
        if request.len() > MAX_STREAM_REQUEST {
            self.stats.count_drop(GossipDrop::Oversized);
            return Err(StreamError::Dropped(GossipDrop::Oversized));
        }
        let (header, body) = self
            .open(now, request, Channel::StreamRequest)
            .map_err(StreamError::Dropped)?;
        let mut r = Reader::new(&body);
        let Ok(id) = r.u64() else {
            self.stats.count_drop(GossipDrop::Malformed);
            return Err(StreamError::Dropped(GossipDrop::Malformed));
        };
        let Ok(messages) = decode_compound(&body[8..]) else {
            self.stats.count_drop(GossipDrop::Malformed);
            return Err(StreamError::Dropped(GossipDrop::Malformed));
        };
        // A joiner pulls from a seed whose name it may not know yet.
        if header.recipient != self.local_id && header.recipient != ANYONE {
            self.stats.count_drop(GossipDrop::Misdirected);
            return Err(StreamError::Dropped(GossipDrop::Misdirected));
        }
        self.accept_seq(&header, &messages);
        self.process(
            now,
            Via {
                reply: None,
                rebroadcast: true,
            },
            &header,
            messages,
        );
        self.stats.streams_served += 1;
        let mut w = Writer::new();
        w.u64(id);
        // What does not encode (nothing the decoder accepted) is left out, never misframed.
        for m in self.member_messages(None) {
            let _ = m.encode(&mut w);
        }
        for (key, e) in self.objects.entries() {
            let _ = Self::object_message(key, e).encode(&mut w);
        }
        let requester = recipient_id(&header.sender);
        Ok(self.seal_stream(Channel::StreamResponse, requester, &w.buf))
    }

    /// Applies the full state a pull returned. Responses nobody is waiting for are
    /// counted as `unexpected_stream` and ignored.
    pub fn handle_stream_response(&mut self, now: Instant, response: &[u8]) {
        // Nothing to decrypt (or to spend work on) when no pull is waiting.
        if self.pull.outstanding.is_none() {
            self.stats.count_drop(GossipDrop::UnexpectedStream);
            return;
        }
        let Ok((header, body)) = self.open(now, response, Channel::StreamResponse) else {
            return;
        };
        let mut r = Reader::new(&body);
        let Ok(id) = r.u64() else {
            self.stats.count_drop(GossipDrop::Malformed);
            return;
        };
        if self.pull.outstanding.map(|(i, _, _)| i) != Some(id) {
            self.stats.count_drop(GossipDrop::UnexpectedStream);
            return;
        }
        let Ok(messages) = decode_compound(&body[8..]) else {
            self.stats.count_drop(GossipDrop::Malformed);
            return;
        };
        if header.recipient != self.local_id {
            self.stats.count_drop(GossipDrop::Misdirected);
            return;
        }
        self.accept_seq(&header, &messages);
        let served_keys: BTreeSet<String> = messages
            .iter()
            .filter_map(|d| match d {
                Decoded::Message(Message::Object { key, .. }) => Some(key.clone()),
                _ => None,
            })
            .collect();
        self.process(
            now,
            Via {
                reply: None,
                rebroadcast: false,
            },
            &header,
            messages,
        );
        if self.pull.behind {
            // Objects older than the horizon that the cluster no longer has were deleted
            // while we were away and their tombstones collected: zombies.
            let horizon = self.gc_horizon(now);
            let zombies: Vec<String> = self
                .objects
                .entries()
                .filter(|(k, e)| e.hlc < horizon && !served_keys.contains(*k))
                .map(|(k, _)| k.to_owned())
                .collect();
            for key in zombies {
                if self.objects.forget(&key) {
                    self.events
                        .push_back(Event::ObjectChanged { key, value: None });
                }
            }
        }
        self.pull.needed = false;
        self.pull.behind = false;
        self.pull.outstanding = None;
        self.pull.hint = None;
        self.pull.prefer = None;
        self.stats.streams_completed += 1;
        self.check_subnet(now);
    }
}

fn shuffle<T>(items: &mut [T], rng: &mut rand::rngs::StdRng) {
    for i in (1..items.len()).rev() {
        let j = rng.random_range(0..=i);
        items.swap(i, j);
    }
}
