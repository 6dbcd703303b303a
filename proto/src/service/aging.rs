//! A bounded map whose entries expire after an idle time and whose least recently used
//! entry is evicted when it is full: the shape of both the ClientIP affinity table and the
//! UDP flow table, whose keys a client chooses (so their size must be bounded).
//!
//! Using an entry ([`AgingMap::touch`]) only writes its last-use time; it does not move the
//! entry in the age index, so the per-datagram path of a UDP flow costs one hash lookup and
//! never allocates. The index is corrected lazily: when an entry reaches the front of the
//! index (to be expired or evicted) and turns out to have been used since it was indexed,
//! it is re-indexed under its last use instead. Each use causes at most one re-index, so
//! expiry and eviction stay O(log n) amortised.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Slot<V> {
    value: V,
    last_used: Instant,
    /// Where the entry sits in `index` (its last use when it was indexed, and a sequence
    /// number that keeps equal times apart).
    indexed: (Instant, u64),
}

/// See the module documentation. `HashMap` keeps std's random keys: clients choose the
/// keys, and a keyed hash keeps them from colliding on purpose.
#[derive(Debug, Clone)]
pub(crate) struct AgingMap<K, V> {
    entries: HashMap<K, Slot<V>>,
    index: BTreeMap<(Instant, u64), K>,
    seq: u64,
    capacity: usize,
    idle: Duration,
}

impl<K: Hash + Eq + Clone, V> AgingMap<K, V> {
    /// At most `capacity` entries (at least one); an entry unused for `idle` is gone.
    pub(crate) fn new(capacity: usize, idle: Duration) -> Self {
        AgingMap {
            entries: HashMap::new(),
            index: BTreeMap::new(),
            seq: 0,
            capacity: capacity.max(1),
            idle,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn set_idle(&mut self, idle: Duration) {
        self.idle = idle;
    }

    fn live(&self, slot: &Slot<V>, now: Instant) -> bool {
        now < slot.last_used + self.idle
    }

    /// The entry, if present and not idle for `idle` at `now`. Does not count as a use.
    pub(crate) fn get(&self, key: &K, now: Instant) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|s| self.live(s, now))
            .map(|s| &s.value)
    }

    /// The entry, if live at `now`, marked used at `now`.
    pub(crate) fn touch(&mut self, key: &K, now: Instant) -> Option<&mut V> {
        let idle = self.idle;
        let slot = self.entries.get_mut(key)?;
        if now >= slot.last_used + idle {
            return None;
        }
        slot.last_used = slot.last_used.max(now);
        Some(&mut slot.value)
    }

    /// Inserts or replaces an entry, used at `now`. Returns the entry it displaced: the
    /// previous value under `key`, or the least recently used entry if the map was full.
    pub(crate) fn insert(&mut self, key: K, value: V, now: Instant) -> Option<(K, V)> {
        let displaced = match self.remove(&key) {
            Some(old) => Some((key.clone(), old)),
            None if self.entries.len() >= self.capacity => self.pop_oldest(),
            None => None,
        };
        let indexed = (now, self.next_seq());
        self.index.insert(indexed, key.clone());
        self.entries.insert(
            key,
            Slot {
                value,
                last_used: now,
                indexed,
            },
        );
        displaced
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let slot = self.entries.remove(key)?;
        self.index.remove(&slot.indexed);
        Some(slot.value)
    }

    /// Removes every entry idle for `idle` at `now`, handing each to `removed`.
    pub(crate) fn expire(&mut self, now: Instant, mut removed: impl FnMut(K, V)) {
        while let Some((&(stamp, _), _)) = self.index.first_key_value() {
            if now < stamp + self.idle {
                return;
            }
            if let Some((k, v)) = self.pop_front_if_unused() {
                removed(k, v);
            }
        }
    }

    /// Removes every entry for which `keep` says false, handing each to `removed`. O(n):
    /// for table changes, not per packet.
    pub(crate) fn retain(
        &mut self,
        mut keep: impl FnMut(&K, &V) -> bool,
        mut removed: impl FnMut(K, V),
    ) {
        let gone: Vec<K> = self
            .entries
            .iter()
            .filter(|(k, s)| !keep(k, &s.value))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            if let Some(v) = self.remove(&k) {
                removed(k, v);
            }
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, s)| (k, &s.value))
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The least recently used entry, removed.
    fn pop_oldest(&mut self) -> Option<(K, V)> {
        while !self.index.is_empty() {
            if let Some(found) = self.pop_front_if_unused() {
                return Some(found);
            }
        }
        None
    }

    /// Takes the front of the index: removes and returns its entry if it has not been
    /// used since it was indexed, else re-indexes it under its last use and returns None.
    fn pop_front_if_unused(&mut self) -> Option<(K, V)> {
        let (stamp, key) = self.index.pop_first()?;
        let seq = self.next_seq();
        let slot = self.entries.get_mut(&key)?;
        if slot.last_used > stamp.0 {
            slot.indexed = (slot.last_used, seq);
            self.index.insert(slot.indexed, key);
            return None;
        }
        let slot = self.entries.remove(&key)?;
        Some((key, slot.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn entries_expire_after_idle_unless_used() {
        let now = t0();
        let s = Duration::from_secs(1);
        let mut m = AgingMap::new(10, 10 * s);
        m.insert("a", 1, now);
        m.insert("b", 2, now);
        assert_eq!(m.touch(&"a", now + 9 * s), Some(&mut 1));
        let mut gone = Vec::new();
        m.expire(now + 10 * s, |k, v| gone.push((k, v)));
        assert_eq!(gone, vec![("b", 2)], "b idle 10 s, a used at 9 s");
        assert_eq!(m.get(&"a", now + 18 * s), Some(&1));
        assert_eq!(m.get(&"a", now + 19 * s), None, "idle 10 s again");
        assert_eq!(
            m.touch(&"a", now + 19 * s),
            None,
            "an idle entry is not revived"
        );
        m.expire(now + 19 * s, |k, v| gone.push((k, v)));
        assert_eq!(gone, vec![("b", 2), ("a", 1)]);
        assert_eq!(m.len(), 0);
        assert!(m.index.is_empty());
    }

    #[test]
    fn a_full_map_evicts_the_least_recently_used() {
        let now = t0();
        let ms = Duration::from_millis(1);
        let mut m = AgingMap::new(3, Duration::from_secs(60));
        m.insert(1, "one", now);
        m.insert(2, "two", now + ms);
        m.insert(3, "three", now + 2 * ms);
        m.touch(&1, now + 3 * ms);
        assert_eq!(m.insert(4, "four", now + 4 * ms), Some((2, "two")));
        assert_eq!(m.insert(5, "five", now + 5 * ms), Some((3, "three")));
        assert_eq!(m.insert(6, "six", now + 6 * ms), Some((1, "one")));
        assert_eq!(m.len(), 3);
        assert_eq!(m.index.len(), 3, "the index holds exactly the entries");
    }

    #[test]
    fn replacing_an_entry_returns_the_old_value_and_keeps_one_index_entry() {
        let now = t0();
        let mut m = AgingMap::new(2, Duration::from_secs(60));
        m.insert(1, "a", now);
        assert_eq!(m.insert(1, "b", now), Some((1, "a")));
        assert_eq!(m.len(), 1);
        assert_eq!(m.index.len(), 1);
        assert_eq!(m.insert(2, "c", now), None, "room for a second entry");
    }

    #[test]
    fn a_flood_of_keys_never_grows_past_capacity() {
        let now = t0();
        let mut m = AgingMap::new(100, Duration::from_secs(3600));
        for i in 0..10_000u32 {
            m.insert(i, (), now + Duration::from_micros(u64::from(i)));
            // Keep key 0 in use: it survives the flood.
            m.touch(&0, now + Duration::from_micros(u64::from(i)));
        }
        assert_eq!(m.len(), 100);
        assert!(m.index.len() <= 100);
        assert!(m.get(&0, now).is_some(), "the entry in use is not evicted");
    }

    #[test]
    fn retain_removes_what_it_is_told() {
        let now = t0();
        let mut m = AgingMap::new(10, Duration::from_secs(60));
        for i in 0..6 {
            m.insert(i, i * 10, now);
        }
        let mut gone = Vec::new();
        m.retain(|_, v| v % 20 == 0, |k, _| gone.push(k));
        gone.sort();
        assert_eq!(gone, vec![1, 3, 5]);
        assert_eq!(m.len(), 3);
        assert_eq!(m.index.len(), 3);
    }
}
