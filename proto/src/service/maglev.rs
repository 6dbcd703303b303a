//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, §3.4): a lookup table of M slots, each naming a
//! backend, filled so that every backend holds M/N slots (±1) and removing one backend
//! moves few slots besides its own. Every node builds the same table from the same
//! backends, so every node sends a client to the same backend.
//!
//! Table size: M is the first of the primes [`TABLE_SIZES`] (16381, 65521, 262139, …)
//! that is ≥ `ENTRIES_PER_BACKEND` × N. A prime makes every skip coprime with M, so each
//! backend's preference list is a permutation of all slots; ≥ 100 slots per backend keeps
//! each backend's share within 1 % of even (the paper's "M ≫ N").
//!
//! *Why a ladder and not "the smallest prime ≥ 100 N":* a client's slot is `hash mod M`,
//! so a change of M sends almost every client elsewhere. With M following N, scaling a
//! Service from 3 backends to 2 moved 67 % of clients instead of 33 %
//! (`a_change_of_table_size_moves_almost_every_client`). With the ladder, M changes only
//! when N crosses 163, 655, 2621, … backends; below 164 backends every table has 16381
//! slots (64 KB, built in well under a millisecond), the size Cilium uses by default.
//!
//! A backend's offset and skip come from [`super::hash::hash64`] of its `IP:PORT` text, and
//! backends are sorted and de-duplicated before the table is filled (the fill order
//! decides ties), so the table depends only on the set of backends, never on the order
//! in which they were given.

use std::net::SocketAddrV4;

use super::hash::{MAGLEV_OFFSET_SEED, MAGLEV_SKIP_SEED, backend_identity, hash64};

/// Slots per backend at least: keeps every backend's share within 1 % of even.
pub const ENTRIES_PER_BACKEND: usize = 100;
/// The table sizes, smallest first: primes, each about four times the last. Beyond the
/// last, M is the smallest prime ≥ 100 N.
pub const TABLE_SIZES: [usize; 5] = [16_381, 65_521, 262_139, 1_048_573, 4_194_301];

/// A filled Maglev lookup table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevTable {
    /// Sorted, distinct.
    backends: Vec<SocketAddrV4>,
    /// Slot → index into `backends`. Empty iff there are no backends.
    entries: Vec<u32>,
    size: usize,
}

impl MaglevTable {
    /// Builds the table for a set of backends (order and duplicates do not matter).
    pub fn new(backends: impl IntoIterator<Item = SocketAddrV4>) -> Self {
        let mut backends: Vec<SocketAddrV4> = backends.into_iter().collect();
        backends.sort_unstable();
        backends.dedup();
        let size = table_size(backends.len());
        let entries = populate(&backends, size);
        MaglevTable {
            backends,
            entries,
            size,
        }
    }

    /// The backends, sorted: [`MaglevTable::lookup`] returns indices into this.
    pub fn backends(&self) -> &[SocketAddrV4] {
        &self.backends
    }

    /// M, the number of slots.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Slot → index into [`MaglevTable::backends`]; empty without backends.
    pub fn entries(&self) -> &[u32] {
        &self.entries
    }

    /// The backend (index into [`MaglevTable::backends`]) for a key's hash; `None` iff
    /// there are no backends.
    pub fn lookup(&self, key_hash: u64) -> Option<usize> {
        self.lookup_usable(key_hash, |_| true)
    }

    /// Like [`MaglevTable::lookup`], but a slot whose backend is not `usable` falls to the
    /// next slot (cyclically) whose backend is. The walk is the same on every node that
    /// agrees on which backends are usable, and since slots interleave backends, the
    /// clients of an unusable backend spread over the others rather than landing on one
    /// neighbour. `None` iff no backend is usable.
    pub fn lookup_usable(&self, key_hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let start = (key_hash % self.size as u64) as usize;
        let (after, before) = self.entries.split_at(start);
        before
            .iter()
            .chain(after)
            .map(|&b| b as usize)
            .find(|&b| usable(b))
    }
}

/// M for `n` backends: the first of [`TABLE_SIZES`] ≥ 100 n, else the smallest prime
/// ≥ 100 n.
pub fn table_size(n: usize) -> usize {
    let want = n.saturating_mul(ENTRIES_PER_BACKEND);
    match TABLE_SIZES.iter().find(|&&m| m >= want) {
        Some(&m) => m,
        None => next_prime(want),
    }
}

fn next_prime(mut n: usize) -> usize {
    while !is_prime(n) {
        n += 1;
    }
    n
}

fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// The paper's Pseudocode 1: backends take turns claiming the next free slot of their
/// own permutation `(offset + j × skip) mod M` until every slot is taken.
fn populate(backends: &[SocketAddrV4], size: usize) -> Vec<u32> {
    if backends.is_empty() {
        return Vec::new();
    }
    let m = size as u64;
    let mut buf = [0u8; 21];
    // (offset, skip) per backend: skip in 1..M, so with M prime it is coprime with M.
    let perms: Vec<(u64, u64)> = backends
        .iter()
        .map(|&b| {
            let id = backend_identity(b, &mut buf);
            let offset = hash64(MAGLEV_OFFSET_SEED, id) % m;
            let skip = hash64(MAGLEV_SKIP_SEED, id) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut entries = vec![u32::MAX; size];
    let mut filled = 0;
    loop {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            // Each backend's permutation visits every slot, so a free one is found
            // within M steps while any remain.
            let mut slot = ((offset + next[i] * skip) % m) as usize;
            while entries[slot] != u32::MAX {
                next[i] += 1;
                slot = ((offset + next[i] * skip) % m) as usize;
            }
            // Backends number far below u32::MAX (M = 100 N slots must fit in memory).
            entries[slot] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == size {
                return entries;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::hash::client_hash;
    use proptest::prelude::*;
    use rand::{RngExt, SeedableRng, rngs::StdRng};
    use std::net::Ipv4Addr;

    fn backends(n: usize) -> Vec<SocketAddrV4> {
        (0..n)
            .map(|i| {
                SocketAddrV4::new(
                    Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250) as u8 + 2),
                    8080,
                )
            })
            .collect()
    }

    fn shares(t: &MaglevTable) -> Vec<usize> {
        let mut count = vec![0; t.backends().len()];
        for &e in t.entries() {
            count[e as usize] += 1;
        }
        count
    }

    #[test]
    fn sizes_are_primes_of_at_least_100_per_backend() {
        for m in TABLE_SIZES {
            assert!(is_prime(m), "{m} is not prime");
        }
        assert_eq!(table_size(0), 16_381);
        assert_eq!(table_size(163), 16_381);
        assert_eq!(table_size(164), 65_521);
        assert_eq!(table_size(655), 65_521);
        assert_eq!(table_size(656), 262_139);
        assert_eq!(table_size(50_000), 5_000_011);
        for n in [1, 163, 164, 2000, 41_943, 41_944, 60_000] {
            assert!(table_size(n) >= 100 * n);
        }
        assert!(is_prime(65_537) && !is_prime(65_535) && !is_prime(1));
    }

    #[test]
    fn every_backend_holds_its_share_within_one_percent() {
        for n in [1, 2, 3, 5, 7, 10, 33, 100] {
            let t = MaglevTable::new(backends(n));
            let even = t.size() as f64 / n as f64;
            for (i, &c) in shares(&t).iter().enumerate() {
                let dev = (c as f64 - even).abs() / even;
                assert!(
                    dev <= 0.01,
                    "n={n}: backend {i} holds {c} of {} slots ({:.2} % off even)",
                    t.size(),
                    dev * 100.0
                );
            }
        }
    }

    #[test]
    fn no_backends_no_answer() {
        let t = MaglevTable::new([]);
        assert_eq!(t.lookup(12345), None);
        assert!(t.entries().is_empty());
    }

    #[test]
    fn duplicates_count_once() {
        let b = backends(3);
        let dup = [b[0], b[1], b[2], b[1], b[0]];
        assert_eq!(MaglevTable::new(dup), MaglevTable::new(b));
    }

    /// The address each slot names: comparable across tables with different backend
    /// lists.
    fn slot_addrs(t: &MaglevTable) -> Vec<SocketAddrV4> {
        t.entries()
            .iter()
            .map(|&e| t.backends()[e as usize])
            .collect()
    }

    #[test]
    fn removing_one_of_n_moves_little_besides_its_own_slots() {
        for n in [3, 5, 10, 20, 50] {
            let all = backends(n);
            let before = MaglevTable::new(all.clone());
            for gone in [0, n / 2, n - 1] {
                let rest: Vec<_> = all.iter().copied().filter(|&b| b != all[gone]).collect();
                let after = MaglevTable::new(rest);
                // Tables differ in size (M depends on N): compare where keys go.
                let mut rng = StdRng::seed_from_u64(n as u64);
                let keys = 50_000;
                let moved = (0..keys)
                    .filter(|_| {
                        let h: u64 = rng.random();
                        let b = before.backends()[before.lookup(h).unwrap()];
                        let a = after.backends()[after.lookup(h).unwrap()];
                        a != b
                    })
                    .count();
                let frac = moved as f64 / keys as f64;
                // Measured: 33.2-33.7 % for n=3, 10.4-10.7 % for 10, 3.0-3.1 % for 50.
                let bound = 1.0 / n as f64 + 0.02;
                assert!(
                    frac <= bound,
                    "n={n}, removing #{gone}: {:.1} % of keys moved (bound {:.1} %)",
                    frac * 100.0,
                    bound * 100.0
                );
                assert!(
                    frac >= 1.0 / n as f64 * 0.9,
                    "the removed backend's keys must move"
                );
            }
        }
    }

    #[test]
    fn removal_moves_few_slots_besides_the_removed_backends() {
        // The paper's disruption bound, on the slots themselves (same M before and after).
        let all = backends(10);
        let before = MaglevTable::new(all.clone());
        let after = MaglevTable::new(all[1..].to_vec());
        assert_eq!(before.size(), after.size());
        let (b, a) = (slot_addrs(&before), slot_addrs(&after));
        let moved = b.iter().zip(&a).filter(|(x, y)| x != y).count();
        let own = b.iter().filter(|&&x| x == all[0]).count();
        let extra = (moved - own) as f64 / before.size() as f64;
        assert!(
            extra <= 0.03,
            "{:.2} % of slots moved beyond the removed backend's",
            extra * 100.0
        );
    }

    #[test]
    fn a_change_of_table_size_moves_almost_every_client() {
        // Why the sizes are a ladder: the same two backends in tables of two sizes (as
        // "smallest prime ≥ 100 N" would give for 2 and for 3 backends) agree on about
        // half of the clients, the rate of two unrelated tables.
        let two = backends(2);
        let mut small = MaglevTable::new(two.clone());
        small.size = 211;
        small.entries = populate(small.backends(), 211);
        let large = MaglevTable::new(two);
        let mut rng = StdRng::seed_from_u64(1);
        let keys = 20_000;
        let moved = (0..keys)
            .filter(|_| {
                let h: u64 = rng.random();
                small.lookup(h) != large.lookup(h)
            })
            .count();
        let frac = moved as f64 / keys as f64;
        assert!((0.4..0.6).contains(&frac), "{:.1} % moved", frac * 100.0);
    }

    #[test]
    fn random_clients_spread_within_a_few_percent() {
        let n = 7;
        let t = MaglevTable::new(backends(n));
        let mut rng = StdRng::seed_from_u64(7);
        let mut count = vec![0usize; n];
        let clients = 100_000;
        for _ in 0..clients {
            let ip = Ipv4Addr::from(rng.random::<u32>());
            let port: u16 = rng.random();
            count[t.lookup(client_hash(ip, Some(port))).unwrap()] += 1;
        }
        let even = clients as f64 / n as f64;
        for (i, &c) in count.iter().enumerate() {
            let dev = (c as f64 - even).abs() / even;
            assert!(
                dev <= 0.03,
                "backend {i}: {c} clients, {:.2} % off even",
                dev * 100.0
            );
        }
    }

    #[test]
    fn an_unusable_backends_clients_go_to_the_next_usable_slot_and_spread() {
        let n = 5;
        let t = MaglevTable::new(backends(n));
        let down = 2;
        let mut rng = StdRng::seed_from_u64(3);
        let mut count = vec![0usize; n];
        for _ in 0..50_000 {
            let h: u64 = rng.random();
            let healthy = t.lookup(h).unwrap();
            let picked = t.lookup_usable(h, |b| b != down).unwrap();
            if healthy != down {
                assert_eq!(picked, healthy, "clients of usable backends stay put");
            } else {
                count[picked] += 1;
                // Deterministic: the first usable slot at or after the key's slot.
                let start = (h % t.size() as u64) as usize;
                let expect = (0..t.size())
                    .map(|k| t.entries()[(start + k) % t.size()] as usize)
                    .find(|&b| b != down)
                    .unwrap();
                assert_eq!(picked, expect);
            }
        }
        assert_eq!(count[down], 0);
        let moved: usize = count.iter().sum();
        for (i, &c) in count.iter().enumerate().filter(|&(i, _)| i != down) {
            let share = c as f64 / moved as f64;
            assert!(
                (0.10..=0.40).contains(&share),
                "backend {i} took {:.0} % of the down backend's clients",
                share * 100.0
            );
        }
        assert_eq!(t.lookup_usable(1, |_| false), None);
    }

    proptest! {
        #[test]
        fn the_order_of_backends_never_matters(
            ips in proptest::collection::btree_set(any::<u32>(), 1..20),
            seed in any::<u64>(),
        ) {
            let list: Vec<SocketAddrV4> =
                ips.iter().map(|&ip| SocketAddrV4::new(Ipv4Addr::from(ip), 80)).collect();
            let mut shuffled = list.clone();
            let mut rng = StdRng::seed_from_u64(seed);
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.random_range(0..=i));
            }
            let a = MaglevTable::new(list);
            let b = MaglevTable::new(shuffled);
            prop_assert_eq!(slot_addrs(&a), slot_addrs(&b));
        }
    }
}
