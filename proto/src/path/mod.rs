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

/// The member that relays between `a` and `b`: of `members` (live members that may relay
/// for both, see [`relay_plan`]; `a` and `b` themselves are skipped; whether the relayed
/// path works is the relay rung's probes' question), the one with the lowest `hash64(RELAY_SEED, lower ‖ 0 ‖ higher ‖ 0 ‖
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

/// A live member as relay selection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    pub name: &'a str,
    pub zone: &'a str,
    /// It forwards relayed frames (announces the `relay` capability).
    pub relays: bool,
}

/// Who relays what, as one node sees it ([`relay_plan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayPlan {
    /// Per peer of this node: the member its traffic is relayed through when the relay
    /// rung is taken. Peers without one have no member both hops may use.
    pub relays: std::collections::BTreeMap<String, String>,
    /// The peers whose frames this node may relay: the hop between them and this node
    /// may carry the relay's framing. It forwards between any two of them; which pairs
    /// do go through it is their ends' choice.
    pub relay_hops: Vec<String>,
}

/// The relays of `me` (one of `members`: the live members, this node included, none
/// whose daemon is down) and the peers it may relay for. A member `m` may relay for
/// `a`–`b` iff `hop(a, m)` and `hop(b, m)` hold (each hop may carry the relay's
/// framing); among those [`choose_relay`] picks. Every input is the same on every node
/// that sees the same members, so both ends of a pair pick the same relay, and that
/// relay forwards for them. `hop` must depend only on the first member's zone and the
/// second member (it is asked once per zone and member); choosing is quadratic in
/// members, once per reconcile.
pub fn relay_plan(
    me: &str,
    members: &[Member<'_>],
    hop: impl Fn(&Member<'_>, &Member<'_>) -> bool,
) -> RelayPlan {
    let Some(local) = members.iter().find(|m| m.name == me && m.relays) else {
        return RelayPlan::default();
    };
    let mut zones: Vec<&str> = members.iter().map(|m| m.zone).collect();
    zones.sort_unstable();
    zones.dedup();
    // hops[z][i]: from a member of zone z to members[i].
    let hops: Vec<Vec<bool>> = zones
        .iter()
        .map(|z| {
            let from = Member {
                name: "",
                zone: z,
                relays: false,
            };
            members.iter().map(|m| m.relays && hop(&from, m)).collect()
        })
        .collect();
    let zone_of = |m: &Member<'_>| zones.binary_search(&m.zone).unwrap_or(0);
    let lhops = &hops[zone_of(local)];
    let mut plan = RelayPlan::default();
    // Both ends of a relayed pair run this plan: a member that does not announce
    // `relay` (a static `[[peer]]` such as a kernel vxlan node, whose zone each node
    // would have to guess, or an older daemon) takes part in none, as end or as relay.
    for peer in members.iter().filter(|m| m.name != me && m.relays) {
        let phops = &hops[zone_of(peer)];
        let eligible: Vec<&str> = members
            .iter()
            .enumerate()
            .filter(|(i, m)| m.name != me && m.name != peer.name && lhops[*i] && phops[*i])
            .map(|(_, m)| m.name)
            .collect();
        if let Some(relay) = choose_relay(me, peer.name, &eligible) {
            plan.relays.insert(peer.name.to_owned(), relay.to_owned());
        }
    }
    let me_index = members.iter().position(|m| m.name == me).unwrap_or(0);
    plan.relay_hops = members
        .iter()
        .filter(|m| m.name != me && m.relays && hops[zone_of(m)][me_index])
        .map(|m| m.name.to_owned())
        .collect();
    plan.relay_hops.sort();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that does not announce `relay` is no end of a relayed pair either: it would
    /// neither send through the relay nor know its frames, and its zone (a static peer
    /// has none) is each node's guess.
    #[test]
    fn a_member_that_does_not_relay_is_in_no_relayed_pair() {
        let m = |name, zone, relays| Member { name, zone, relays };
        let members = [
            m("a", "x", true),
            m("b", "x", true),
            m("c", "x", true),
            m("k", "", false),
        ];
        let plan = relay_plan("a", &members, |_, _| true);
        assert!(plan.relays.contains_key("b"));
        assert!(!plan.relays.contains_key("k"), "{plan:?}");
        assert!(!plan.relay_hops.contains(&"k".to_owned()), "{plan:?}");
        let c = relay_plan("c", &members, |_, _| true);
        assert!(!c.relay_hops.contains(&"k".to_owned()), "{c:?}");
    }

    #[test]
    fn both_ends_and_the_relay_agree_on_the_plan() {
        let zones = [
            ("a", "x"),
            ("b", "x"),
            ("c", "x"),
            ("d", "x"),
            ("k", "x"),
            ("r", "y"),
        ];
        let members: Vec<Member> = zones
            .iter()
            .map(|(name, zone)| Member {
                name,
                zone,
                // k is a kernel vxlan node: a member, never a relay.
                relays: *name != "k",
            })
            .collect();
        // Hops within zone x only.
        let hop = |p: &Member, q: &Member| p.zone == "x" && q.zone == "x";
        let plans: Vec<(&str, RelayPlan)> = members
            .iter()
            .map(|m| (m.name, relay_plan(m.name, &members, hop)))
            .collect();
        let plan = |n: &str| &plans.iter().find(|(m, _)| *m == n).unwrap().1;
        let relay_ab = plan("a").relays["b"].clone();
        assert_eq!(plan("b").relays["a"], relay_ab, "both ends pick the same");
        assert!(relay_ab == "c" || relay_ab == "d");
        let hops = |m: &str| plan(m).relay_hops.clone();
        assert!(
            hops(&relay_ab).contains(&"a".to_owned()) && hops(&relay_ab).contains(&"b".to_owned()),
            "and the relay forwards for both"
        );
        // Nobody relays through r (no hop reaches it), nor for it.
        assert!(plan("r").relays.is_empty() && plan("r").relay_hops.is_empty());
        assert!(
            plans
                .iter()
                .all(|(_, p)| p.relays.values().all(|r| r != "k"))
        );
        assert!(
            !plan("a").relays.contains_key("k"),
            "nor relayed to: it would not answer the relay rung's probes"
        );
        assert!(!plan("a").relays.contains_key("r"));
        assert!(
            plans
                .iter()
                .all(|(_, p)| p.relays.values().all(|r| r != "r"))
        );
        assert!(
            plans
                .iter()
                .all(|(_, p)| !p.relay_hops.contains(&"r".to_owned()))
        );
        // Every relay either end chose forwards for both ends, and both chose it.
        for (me, p) in &plans {
            for (peer, relay) in &p.relays {
                assert_eq!(plan(peer).relays[*me], *relay, "{me}-{peer}");
                assert!(hops(relay).contains(&me.to_string()) && hops(relay).contains(peer));
            }
        }
        // A member not in the list (its daemon is down, say) plans nothing.
        assert_eq!(relay_plan("z", &members, hop), RelayPlan::default());
    }

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
