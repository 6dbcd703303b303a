//! Pod subnet claims: which subnet of the cluster CIDR a node without a configured one
//! takes, and who yields when two claims overlap. Pure functions; the gossip core calls
//! them whenever its view of other members' subnets changes.

pub use crate::overlaps;
use std::cmp::Ordering;

use ipnet::Ipv4Net;

use super::codec::stable_hash;
use super::hlc::Hlc;

/// The pool claims are cut from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetPool {
    /// The cluster CIDR, e.g. 10.244.0.0/16.
    pub cluster: Ipv4Net,
    /// Prefix length of one node's subnet, e.g. 24.
    pub prefix: u8,
}

/// One side of a possible conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    pub owner: &'a str,
    pub subnet: Ipv4Net,
    /// Configured rather than claimed: never yields to a claim.
    pub is_static: bool,
    /// When it was claimed; ignored for static subnets.
    pub claimed_at: Hlc,
}

/// Which claim of a conflicting pair has to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loser {
    A,
    B,
}

/// The subnet a node named `name` claims: the one at the stable preferred index
/// `stable_hash(name) mod count`, or the next free one after it (wrapping), where `count` is
/// how many `/prefix` subnets the cluster CIDR holds.
///
/// Returns `None` iff every subnet overlaps one in `taken`, or `prefix` is shorter than
/// the cluster's prefix or longer than 32.
pub fn choose_subnet(
    name: &str,
    cluster: Ipv4Net,
    prefix: u8,
    taken: &[Ipv4Net],
) -> Option<Ipv4Net> {
    let cluster = cluster.trunc();
    if prefix < cluster.prefix_len() || prefix > 32 {
        return None;
    }
    let bits = u32::from(prefix - cluster.prefix_len());
    let count: u64 = 1 << bits;
    let size: u64 = 1 << (32 - u32::from(prefix));
    let base = u64::from(u32::from(cluster.network()));
    let taken = merged_ranges(taken);
    let preferred = stable_hash(&[name.as_bytes()]) % count;
    (0..count)
        .map(|i| (preferred + i) % count)
        .map(|index| base + index * size)
        .find(|start| !overlaps_any(&taken, *start, *start + size - 1))
        .and_then(|start| Ipv4Net::new(std::net::Ipv4Addr::from(start as u32), prefix).ok())
}

/// Decides an overlap between two claims deterministically, so both owners (and every
/// observer) agree without talking: a static subnet beats a claimed one; between claims
/// the older one — lower `(claimed_at, owner)` — wins.
///
/// Returns `None` iff the subnets do not overlap, both are static (a configuration error
/// no claim can fix) or both claims have the same owner.
pub fn conflict_loser(a: &Claim<'_>, b: &Claim<'_>) -> Option<Loser> {
    if !overlaps(a.subnet, b.subnet) || a.owner == b.owner {
        return None;
    }
    match (a.is_static, b.is_static) {
        (true, true) => None,
        (true, false) => Some(Loser::B),
        (false, true) => Some(Loser::A),
        (false, false) => match (a.claimed_at, a.owner).cmp(&(b.claimed_at, b.owner)) {
            Ordering::Less => Some(Loser::B),
            _ => Some(Loser::A),
        },
    }
}

/// `taken` as sorted, disjoint, inclusive `[start, end]` ranges.
fn merged_ranges(taken: &[Ipv4Net]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = taken
        .iter()
        .map(|n| {
            let n = n.trunc();
            (
                u64::from(u32::from(n.network())),
                u64::from(u32::from(n.broadcast())),
            )
        })
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 + 1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

fn overlaps_any(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    // First range that ends at or after `start`; it overlaps iff it begins by `end`.
    let i = ranges.partition_point(|r| r.1 < start);
    ranges.get(i).is_some_and(|r| r.0 <= end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn preferred_index_is_stable_and_inside_the_cluster() {
        let cluster = net("10.244.0.0/16");
        let a = choose_subnet("node-1", cluster, 24, &[]).unwrap();
        assert_eq!(a, choose_subnet("node-1", cluster, 24, &[]).unwrap());
        assert!(cluster.contains(&a));
        assert_eq!(a.prefix_len(), 24);
    }

    #[test]
    fn probes_linearly_past_taken_subnets_and_wraps() {
        let cluster = net("10.0.0.0/22");
        let first = choose_subnet("n", cluster, 24, &[]).unwrap();
        let second = choose_subnet("n", cluster, 24, &[first]).unwrap();
        let expect = u32::from(first.network()).wrapping_add(256);
        let expect = if cluster.contains(&std::net::Ipv4Addr::from(expect)) {
            expect
        } else {
            u32::from(cluster.network())
        };
        assert_eq!(u32::from(second.network()), expect);
        let all: Vec<Ipv4Net> = cluster.subnets(24).unwrap().collect();
        assert_eq!(choose_subnet("n", cluster, 24, &all), None);
        // A wider taken range covers several candidates.
        assert_eq!(choose_subnet("n", cluster, 24, &[cluster]), None);
    }

    #[test]
    fn rejects_impossible_prefixes() {
        assert_eq!(choose_subnet("n", net("10.0.0.0/16"), 8, &[]), None);
        assert_eq!(choose_subnet("n", net("10.0.0.0/16"), 33, &[]), None);
        assert_eq!(
            choose_subnet("n", net("10.0.0.0/16"), 16, &[]),
            Some(net("10.0.0.0/16"))
        );
    }

    #[test]
    fn static_beats_claimed_and_older_claim_wins() {
        let s = net("10.0.1.0/24");
        let claim = |owner, is_static, at| Claim {
            owner,
            subnet: s,
            is_static,
            claimed_at: Hlc(at),
        };
        assert_eq!(
            conflict_loser(&claim("a", true, 9), &claim("b", false, 1)),
            Some(Loser::B)
        );
        assert_eq!(
            conflict_loser(&claim("a", false, 1), &claim("b", true, 9)),
            Some(Loser::A)
        );
        assert_eq!(
            conflict_loser(&claim("a", true, 1), &claim("b", true, 1)),
            None
        );
        assert_eq!(
            conflict_loser(&claim("a", false, 1), &claim("b", false, 2)),
            Some(Loser::B)
        );
        assert_eq!(
            conflict_loser(&claim("b", false, 1), &claim("a", false, 1)),
            Some(Loser::A)
        );
        let other = Claim {
            subnet: net("10.0.2.0/24"),
            ..claim("b", false, 0)
        };
        assert_eq!(conflict_loser(&claim("a", false, 1), &other), None);
    }

    proptest! {
        #[test]
        fn chosen_subnet_never_overlaps_taken(
            name in "[a-z]{1,8}",
            taken in proptest::collection::vec((0u32..64, 22u8..=26), 0..40),
        ) {
            let cluster = net("10.0.0.0/18");
            let taken: Vec<Ipv4Net> = taken
                .into_iter()
                .map(|(i, len)| Ipv4Net::new(std::net::Ipv4Addr::from(u32::from(cluster.network()) + i * 256), len).unwrap().trunc())
                .collect();
            if let Some(chosen) = choose_subnet(&name, cluster, 24, &taken) {
                prop_assert!(cluster.contains(&chosen));
                prop_assert!(taken.iter().all(|t| !overlaps(*t, chosen)));
            } else {
                let free = cluster.subnets(24).unwrap().any(|c| taken.iter().all(|t| !overlaps(*t, c)));
                prop_assert!(!free);
            }
        }

        #[test]
        fn conflict_loser_is_antisymmetric(a_at in 0u64..4, b_at in 0u64..4, a_static: bool, b_static: bool) {
            let s = net("10.0.1.0/24");
            let a = Claim { owner: "a", subnet: s, is_static: a_static, claimed_at: Hlc(a_at) };
            let b = Claim { owner: "b", subnet: s, is_static: b_static, claimed_at: Hlc(b_at) };
            let flip = |l: Option<Loser>| l.map(|l| if l == Loser::A { Loser::B } else { Loser::A });
            prop_assert_eq!(conflict_loser(&a, &b), flip(conflict_loser(&b, &a)));
        }
    }
}
