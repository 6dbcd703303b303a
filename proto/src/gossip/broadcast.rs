//! The piggyback queue: membership updates and state deltas waiting to be gossiped.
//!
//! Each item is sent in up to `limit` datagrams (λ·⌈log10(n+1)⌉, as in memberlist, so
//! with high probability every member hears it) and then dropped; an item about the
//! same member or key replaces the older one. Datagrams take the least-sent items first
//! and, among those, the newest: fresh news spreads fastest.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::codec::Writer;
use super::message::Message;

/// What an item is about; a newer item about the same thing replaces the older.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Topic {
    Member(String),
    Object(String),
}

#[derive(Debug)]
struct Item {
    encoded: Vec<u8>,
    transmits: u32,
    id: u64,
}

/// Most items held; beyond it the most-sent are dropped (anti-entropy repairs the rest).
const MAX_ITEMS: usize = 4096;
/// Smallest message worth looking for when a datagram is nearly full.
const MIN_MESSAGE: usize = 7;

#[derive(Debug, Default)]
pub(crate) struct BroadcastQueue {
    items: BTreeMap<Topic, Item>,
    order: BTreeSet<(u32, Reverse<u64>, Topic)>,
    next_id: u64,
}

impl BroadcastQueue {
    /// Queues `message`, replacing any item about `topic`. A message too long to encode
    /// (never built by the core) is not queued.
    pub(crate) fn push(&mut self, topic: Topic, message: &Message) {
        let mut w = Writer::new();
        if message.encode(&mut w).is_err() {
            return;
        }
        self.remove(&topic);
        self.next_id += 1;
        let id = self.next_id;
        self.order.insert((0, Reverse(id), topic.clone()));
        self.items.insert(
            topic,
            Item {
                encoded: w.buf,
                transmits: 0,
                id,
            },
        );
        while self.items.len() > MAX_ITEMS {
            let Some((_, _, worst)) = self.order.last().cloned() else {
                break;
            };
            self.remove(&worst);
        }
    }

    pub(crate) fn remove(&mut self, topic: &Topic) {
        if let Some(old) = self.items.remove(topic) {
            self.order
                .remove(&(old.transmits, Reverse(old.id), topic.clone()));
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Appends as many items as fit in `budget` bytes to `out`, least-sent and newest
    /// first, counts the transmission, and drops items sent `limit` times. Returns how
    /// many were appended.
    pub(crate) fn fill(&mut self, budget: usize, limit: u32, out: &mut Writer) -> usize {
        let mut left = budget;
        let mut picked = Vec::new();
        for (_, _, topic) in &self.order {
            if left < MIN_MESSAGE {
                break;
            }
            let Some(item) = self.items.get(topic) else {
                continue;
            };
            if item.encoded.len() <= left {
                left -= item.encoded.len();
                out.raw(&item.encoded);
                picked.push(topic.clone());
            }
        }
        for topic in &picked {
            let Some(item) = self.items.get_mut(topic) else {
                continue;
            };
            self.order
                .remove(&(item.transmits, Reverse(item.id), topic.clone()));
            item.transmits += 1;
            if item.transmits >= limit {
                self.items.remove(topic);
            } else {
                self.order
                    .insert((item.transmits, Reverse(item.id), topic.clone()));
            }
        }
        picked.len()
    }
}

/// Retransmit limit for a cluster of `n` members: `mult · ⌈log10(n + 1)⌉`, at least 1.
pub(crate) fn retransmit_limit(mult: u32, n: usize) -> u32 {
    // ⌈log10(n + 1)⌉ without floats is the number of decimal digits of n.
    let mut digits = 0u32;
    let mut rest = n;
    while rest > 0 {
        digits += 1;
        rest /= 10;
    }
    mult.saturating_mul(digits.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::message::{Decoded, decode_compound};

    fn ack(seq: u32) -> Message {
        Message::Ack { seq }
    }

    #[test]
    fn newest_least_sent_first_and_dropped_at_limit() {
        let mut q = BroadcastQueue::default();
        q.push(Topic::Member("a".into()), &ack(1));
        q.push(Topic::Member("b".into()), &ack(2));
        let mut w = Writer::new();
        // Room for one: the newest goes first.
        assert_eq!(q.fill(7, 2, &mut w), 1);
        assert_eq!(
            decode_compound(&w.buf).unwrap(),
            vec![Decoded::Message(ack(2))]
        );
        // Now "a" is least sent.
        let mut w = Writer::new();
        q.fill(7, 2, &mut w);
        assert_eq!(
            decode_compound(&w.buf).unwrap(),
            vec![Decoded::Message(ack(1))]
        );
        let mut w = Writer::new();
        assert_eq!(q.fill(100, 2, &mut w), 2);
        assert!(q.is_empty());
    }

    #[test]
    fn newer_item_replaces_older_about_the_same_topic() {
        let mut q = BroadcastQueue::default();
        q.push(Topic::Member("a".into()), &ack(1));
        q.push(Topic::Member("a".into()), &ack(2));
        q.push(Topic::Object("a".into()), &ack(3));
        assert_eq!(q.len(), 2);
        let mut w = Writer::new();
        q.fill(100, 5, &mut w);
        assert_eq!(
            decode_compound(&w.buf).unwrap(),
            vec![Decoded::Message(ack(3)), Decoded::Message(ack(2))]
        );
    }

    #[test]
    fn limit_grows_with_log_of_cluster_size() {
        assert_eq!(retransmit_limit(4, 0), 4);
        assert_eq!(retransmit_limit(4, 5), 4);
        assert_eq!(retransmit_limit(4, 9), 4);
        assert_eq!(retransmit_limit(4, 10), 8);
        assert_eq!(retransmit_limit(4, 99), 8);
        assert_eq!(retransmit_limit(4, 100), 12);
        assert_eq!(retransmit_limit(4, 1000), 16);
    }
}
