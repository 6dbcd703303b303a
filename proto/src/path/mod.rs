//! Per-peer path selection (issue 8): which paths a peer may take ([`policy`]), which of
//! them it takes now ([`ladder`]), which member relays when no direct path works
//! ([`choose_relay`]), and which side dials the QUIC connection ([`dial`]).
//!
//! The ladder, best rung first: host-gw → udp → quic → relay. The daemon resolves each
//! peer's candidates from the policy, feeds them with probe acks and timers into the
//! peer's [`Ladder`] (every peer's in one [`PathLadders`]), and carries the peer's
//! traffic on [`Ladder::chosen`].

pub mod dial;
pub mod ladder;
mod ladders;
pub mod policy;

pub use dial::{ConnectionInfo, Keep, Side, dialer, keep};
pub use ladder::{
    Health, Ladder, LadderConfig, LadderStatus, PathReason, Probe, ProbeId, RungStatus, Switch,
};
pub use ladders::PathLadders;
pub use policy::{
    PairView, PathKind, PathPolicy, PathRule, PeerRule, PolicyError, Resolved, RuleSource,
    ZonePairRule,
};

use crate::service::hash::hash64;

/// Seed of the relay hash, distinct from the Maglev seeds (1–3) and the dial seed.
pub const RELAY_SEED: u64 = 0x72_656c_6179; // "relay"

/// The member that relays between `a` and `b`: of `members` (live members the caller
/// knows have a direct, non-relayed working path to both ends; `a` and `b` themselves
/// are skipped), the one with the lowest `hash64(RELAY_SEED, lower ‖ 0 ‖ higher ‖ 0 ‖
/// member)`, the pair's names sorted bytewise. Both ends, seeing the same members, pick
/// the same relay; hashing the pair with the member (rendezvous hashing) spreads pairs
/// over relays and moves only the pairs of a relay that leaves. Relaying is one hop: a
/// relay forwards only to its own direct paths.
pub fn choose_relay<'m>(a: &str, b: &str, members: &[&'m str]) -> Option<&'m str> {
    let (lower, higher) = if a <= b { (a, b) } else { (b, a) };
    members
        .iter()
        .copied()
        .filter(|m| *m != a && *m != b)
        .min_by_key(|m| {
            let mut key = Vec::with_capacity(lower.len() + higher.len() + m.len() + 2);
            key.extend_from_slice(lower.as_bytes());
            key.push(0);
            key.extend_from_slice(higher.as_bytes());
            key.push(0);
            key.extend_from_slice(m.as_bytes());
            (hash64(RELAY_SEED, &key), *m)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_choose_the_same_relay_whatever_the_order() {
        let members = ["c", "d", "e", "f"];
        let mut reversed = members;
        reversed.reverse();
        let here = choose_relay("a", "b", &members);
        assert!(here.is_some());
        assert_eq!(choose_relay("b", "a", &reversed), here);
    }

    #[test]
    fn the_ends_never_relay_for_themselves() {
        assert_eq!(choose_relay("a", "b", &["a", "b"]), None);
        assert_eq!(choose_relay("a", "b", &["b", "c"]), Some("c"));
        assert_eq!(choose_relay("a", "b", &[]), None);
    }

    #[test]
    fn only_pairs_of_a_departed_relay_move() {
        let members: Vec<String> = (0..8).map(|i| format!("relay-{i}")).collect();
        let all: Vec<&str> = members.iter().map(String::as_str).collect();
        let pairs: Vec<(String, String)> = (0..40)
            .map(|i| (format!("a{i}"), format!("b{i}")))
            .collect();
        let before: Vec<&str> = pairs
            .iter()
            .filter_map(|(a, b)| choose_relay(a, b, &all))
            .collect();
        let used: std::collections::BTreeSet<&&str> = before.iter().collect();
        assert!(used.len() >= 4, "pairs spread over relays: {used:?}");

        let gone = before[0];
        let rest: Vec<&str> = all.iter().copied().filter(|m| *m != gone).collect();
        for ((a, b), old) in pairs.iter().zip(&before) {
            let new = choose_relay(a, b, &rest);
            if *old != gone {
                assert_eq!(new, Some(*old), "{a}-{b} kept its relay");
            }
        }
    }
}
