//! Cluster objects: a replicated map `key -> bytes` where each key is a last-writer-wins
//! register ordered by `(HLC timestamp, writer name)`. Deletes are tombstones, kept until
//! every node has had time to learn them (the GC horizon) and then dropped.

use std::collections::BTreeMap;

use super::codec::stable_hash;
use super::hlc::Hlc;
use super::message::OBJECT_BUCKETS;

/// Longest object key, in bytes.
pub const MAX_KEY_LEN: usize = 255;
/// Longest object value, in bytes: one write must fit the smallest datagram with the
/// longest key and writer name (checked by a test against [`super::config::MIN_PACKET`]).
pub const MAX_VALUE_LEN: usize = 768;

/// One register: the winning write so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectEntry {
    /// `None` for a tombstone.
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) hlc: Hlc,
    pub(crate) writer: String,
}

impl ObjectEntry {
    fn order(&self) -> (Hlc, &str) {
        (self.hlc, &self.writer)
    }
}

/// What [`ObjectStore::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Older than or equal to what we hold.
    Ignored,
    /// Won; the visible value (present or absent) did not change (e.g. a tombstone for
    /// a key we never had).
    Stored,
    /// Won and changed the visible value.
    Changed,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ObjectStore {
    map: BTreeMap<String, ObjectEntry>,
}

impl ObjectStore {
    /// Applies a write if it wins LWW. A tombstone that is already past the GC horizon
    /// (`hlc < horizon`) deletes what it beats but is not kept.
    pub(crate) fn apply(&mut self, key: &str, entry: ObjectEntry, horizon: Hlc) -> Applied {
        let was_visible = self.get(key).map(<[u8]>::to_vec);
        if let Some(held) = self.map.get(key)
            && held.order() >= entry.order()
        {
            return Applied::Ignored;
        }
        let now_visible = entry.value.clone();
        if entry.value.is_none() && entry.hlc < horizon {
            if self.map.remove(key).is_none() {
                return Applied::Ignored;
            }
        } else {
            self.map.insert(key.to_owned(), entry);
        }
        if was_visible == now_visible {
            Applied::Stored
        } else {
            Applied::Changed
        }
    }

    /// The entry held for `key`, tombstone or not.
    pub(crate) fn entry(&self, key: &str) -> Option<&ObjectEntry> {
        self.map.get(key)
    }

    /// The live value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&[u8]> {
        self.map.get(key).and_then(|e| e.value.as_deref())
    }

    /// Every entry, tombstones included, in key order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &ObjectEntry)> {
        self.map.iter().map(|(k, e)| (k.as_str(), e))
    }

    /// Live values in key order.
    pub(crate) fn live(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.map
            .iter()
            .filter_map(|(k, e)| Some((k.as_str(), e.value.as_deref()?)))
    }

    pub(crate) fn tombstones(&self) -> usize {
        self.map.values().filter(|e| e.value.is_none()).count()
    }

    /// Drops tombstones older than `horizon`. Returns how many.
    pub(crate) fn gc(&mut self, horizon: Hlc) -> usize {
        let before = self.map.len();
        self.map
            .retain(|_, e| e.value.is_some() || e.hlc >= horizon);
        before - self.map.len()
    }

    /// Removes `key` outright (no tombstone); used when a full-state pull shows it is a
    /// zombie. Returns whether a live value disappeared.
    pub(crate) fn forget(&mut self, key: &str) -> bool {
        self.map.remove(key).is_some_and(|e| e.value.is_some())
    }

    /// Per-bucket digest of live entries. Tombstones are left out so nodes that GC at
    /// slightly different times still agree; a missed delete still shows up, as the live
    /// value the other side lacks.
    pub(crate) fn digest(&self) -> Vec<u64> {
        let mut buckets = vec![0u64; OBJECT_BUCKETS];
        for (key, e) in &self.map {
            if e.value.is_some() {
                buckets[bucket(key)] ^=
                    stable_hash(&[key.as_bytes(), &e.hlc.0.to_be_bytes(), e.writer.as_bytes()]);
            }
        }
        buckets
    }

    /// Entries of one digest bucket.
    pub(crate) fn bucket_entries(&self, b: usize) -> impl Iterator<Item = (&str, &ObjectEntry)> {
        self.entries().filter(move |(k, _)| bucket(k) == b)
    }
}

pub(crate) fn bucket(key: &str) -> usize {
    (stable_hash(&[key.as_bytes()]) % OBJECT_BUCKETS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write(hlc: u64, writer: &str, value: Option<&[u8]>) -> ObjectEntry {
        ObjectEntry {
            value: value.map(<[u8]>::to_vec),
            hlc: Hlc(hlc),
            writer: writer.into(),
        }
    }

    #[test]
    fn last_writer_wins_with_writer_tiebreak() {
        let mut s = ObjectStore::default();
        assert_eq!(
            s.apply("k", write(5, "a", Some(b"1")), Hlc(0)),
            Applied::Changed
        );
        assert_eq!(
            s.apply("k", write(4, "z", Some(b"2")), Hlc(0)),
            Applied::Ignored
        );
        assert_eq!(
            s.apply("k", write(5, "b", Some(b"3")), Hlc(0)),
            Applied::Changed
        );
        assert_eq!(
            s.apply("k", write(5, "b", Some(b"3")), Hlc(0)),
            Applied::Ignored
        );
        assert_eq!(s.get("k"), Some(&b"3"[..]));
        assert_eq!(s.apply("k", write(6, "a", None), Hlc(0)), Applied::Changed);
        assert_eq!(s.get("k"), None);
        assert_eq!(s.tombstones(), 1);
        // An older write cannot resurrect it while the tombstone lives.
        assert_eq!(
            s.apply("k", write(5, "c", Some(b"4")), Hlc(0)),
            Applied::Ignored
        );
    }

    #[test]
    fn tombstones_are_collected_after_the_horizon() {
        let mut s = ObjectStore::default();
        s.apply("k", write(10, "a", None), Hlc(0));
        s.apply("v", write(1, "a", Some(b"x")), Hlc(0));
        assert_eq!(s.gc(Hlc(10)), 0);
        assert_eq!(s.gc(Hlc(11)), 1);
        assert_eq!(s.tombstones(), 0);
        assert_eq!(s.get("v"), Some(&b"x"[..]));
        // A tombstone already past the horizon deletes but is not stored.
        assert_eq!(s.apply("v", write(2, "a", None), Hlc(11)), Applied::Changed);
        assert_eq!(s.entries().count(), 0);
        assert_eq!(s.apply("w", write(2, "a", None), Hlc(11)), Applied::Ignored);
    }

    proptest! {
        /// Any delivery order of the same writes converges to the same map and digest.
        #[test]
        fn order_does_not_matter(
            writes in proptest::collection::vec((0usize..4, 0u64..6, 0usize..3, proptest::option::of(any::<u8>())), 1..30),
            seed in any::<u64>(),
        ) {
            let keys = ["a", "b", "c", "d"];
            let writers = ["x", "y", "z"];
            let ws: Vec<(&str, ObjectEntry)> = writes
                .iter()
                .map(|(k, h, w, v)| (keys[*k], ObjectEntry { value: v.map(|v| vec![v]), hlc: Hlc(*h), writer: writers[*w].into() }))
                // One writer never issues the same timestamp twice.
                .fold(Vec::new(), |mut acc, (k, e)| {
                    if !acc.iter().any(|(k2, e2): &(&str, ObjectEntry)| *k2 == k && e2.hlc == e.hlc && e2.writer == e.writer) {
                        acc.push((k, e));
                    }
                    acc
                });
            let mut a = ObjectStore::default();
            for (k, e) in &ws {
                a.apply(k, e.clone(), Hlc(0));
            }
            let mut shuffled = ws.clone();
            let mut state = seed;
            for i in (1..shuffled.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (state >> 33) as usize % (i + 1));
            }
            let mut b = ObjectStore::default();
            for (k, e) in &shuffled {
                b.apply(k, e.clone(), Hlc(0));
            }
            prop_assert_eq!(a.entries().collect::<Vec<_>>(), b.entries().collect::<Vec<_>>());
            prop_assert_eq!(a.digest(), b.digest());
        }
    }
}
