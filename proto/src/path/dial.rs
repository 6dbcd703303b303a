//! Which side of a pair dials the QUIC connection, and which of two connections a
//! simultaneous dial keeps (issue 8, item 1). Both ends decide alone from the two member
//! names, so they always agree.
//!
//! The dialer: `h = hash64(DIAL_SEED, lower ‖ 0x00 ‖ higher)` over the two names sorted
//! bytewise; the lower name dials iff `h` is even. Hashing the pair (instead of "the lower
//! name always dials") spreads dialing evenly, so no node dials the whole cluster.
//!
//! A simultaneous dial (the other side dialed too, say after a restart, or because it
//! could not wait for us) converges on one connection: both ends keep the connection the
//! designated dialer opened; between two opened by the same side (a redial while the old
//! one lingers) both keep the newer one, which the dialer numbered higher.

use std::cmp::Ordering;

use crate::service::hash::hash64;

/// Seed of the dial hash, distinct from the Maglev seeds (1–3) and the relay's.
pub const DIAL_SEED: u64 = 0x6469_616c; // "dial"

/// One side of a pair as seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Local,
    Peer,
}

/// Which side dials the connection between `local` and `peer` (member names). Both ends
/// compute the same answer, mirrored: `dialer(a, b) == Local` iff `dialer(b, a) == Peer`.
pub fn dialer(local: &str, peer: &str) -> Side {
    let (lower, higher, local_is_lower) = match local.as_bytes().cmp(peer.as_bytes()) {
        Ordering::Less | Ordering::Equal => (local, peer, true),
        Ordering::Greater => (peer, local, false),
    };
    let mut key = Vec::with_capacity(lower.len() + 1 + higher.len());
    key.extend_from_slice(lower.as_bytes());
    key.push(0);
    key.extend_from_slice(higher.as_bytes());
    let lower_dials = hash64(DIAL_SEED, &key).is_multiple_of(2);
    if lower_dials == local_is_lower {
        Side::Local
    } else {
        Side::Peer
    }
}

/// A QUIC connection to the peer, as far as convergence cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Who opened it (sent the Initial).
    pub opened_by: Side,
    /// The opener's dial attempt number, carried in the handshake (for example in the
    /// client's transport parameters), so both ends see the same value.
    pub attempt: u64,
}

/// Which of two connections to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    First,
    Second,
}

/// Of two live connections between `local` and `peer`, the one both ends keep: the one
/// the designated dialer opened; of two opened by the same side, the later attempt (the
/// first on a tie, which cannot happen between honest peers).
pub fn keep(local: &str, peer: &str, first: ConnectionInfo, second: ConnectionInfo) -> Keep {
    let designated = dialer(local, peer);
    match (
        first.opened_by == designated,
        second.opened_by == designated,
    ) {
        (true, false) => Keep::First,
        (false, true) => Keep::Second,
        _ if second.attempt > first.attempt => Keep::Second,
        _ => Keep::First,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(opened_by: Side, attempt: u64) -> ConnectionInfo {
        ConnectionInfo { opened_by, attempt }
    }

    fn mirror(s: Side) -> Side {
        match s {
            Side::Local => Side::Peer,
            Side::Peer => Side::Local,
        }
    }

    #[test]
    fn exactly_one_side_dials() {
        for (a, b) in [("n1", "n2"), ("node-a", "node-b"), ("x", "y"), ("a", "ab")] {
            assert_eq!(dialer(a, b), mirror(dialer(b, a)), "{a} {b}");
        }
    }

    #[test]
    fn dialing_is_spread_over_both_names() {
        let names: Vec<String> = (0..20).map(|i| format!("node-{i}")).collect();
        let lower_dials = names
            .iter()
            .flat_map(|a| names.iter().map(move |b| (a, b)))
            .filter(|(a, b)| a < b)
            .filter(|(a, b)| dialer(a, b) == Side::Local)
            .count();
        // 190 pairs; a fair coin lands far from both ends.
        assert!((60..130).contains(&lower_dials), "{lower_dials} of 190");
    }

    #[test]
    fn the_designated_dialers_connection_wins_a_simultaneous_dial() {
        let (a, b) = ("n1", "n2");
        let d = dialer(a, b);
        let ours = conn(d, 1);
        let theirs = conn(mirror(d), 7);
        assert_eq!(keep(a, b, ours, theirs), Keep::First);
        assert_eq!(keep(a, b, theirs, ours), Keep::Second);
        // The other end sees the same two connections with the sides swapped.
        let ours_there = conn(mirror(ours.opened_by), ours.attempt);
        let theirs_there = conn(mirror(theirs.opened_by), theirs.attempt);
        assert_eq!(keep(b, a, theirs_there, ours_there), Keep::Second);
        assert_eq!(keep(b, a, ours_there, theirs_there), Keep::First);
    }

    #[test]
    fn of_two_from_the_same_side_the_newer_attempt_wins() {
        let d = dialer("n1", "n2");
        assert_eq!(keep("n1", "n2", conn(d, 3), conn(d, 4)), Keep::Second);
        assert_eq!(keep("n1", "n2", conn(d, 4), conn(d, 3)), Keep::First);
        let o = mirror(d);
        assert_eq!(keep("n1", "n2", conn(o, 9), conn(o, 2)), Keep::First);
    }

    proptest::proptest! {
        /// Both ends, given the same two connections in any order, keep the same one.
        #[test]
        fn both_ends_keep_the_same_connection(
            a in "[a-z0-9-]{1,12}", b in "[a-z0-9-]{1,12}",
            first_local in proptest::bool::ANY, second_local in proptest::bool::ANY,
            first_attempt in 0u64..4, second_attempt in 0u64..4,
            swap in proptest::bool::ANY,
        ) {
            proptest::prop_assume!(a != b);
            proptest::prop_assume!(first_local != second_local || first_attempt != second_attempt);
            let side = |l: bool| if l { Side::Local } else { Side::Peer };
            let c1 = conn(side(first_local), first_attempt);
            let c2 = conn(side(second_local), second_attempt);
            let here = keep(&a, &b, c1, c2);
            let there = |c: ConnectionInfo| conn(mirror(c.opened_by), c.attempt);
            let (x, y) = if swap { (there(c2), there(c1)) } else { (there(c1), there(c2)) };
            let kept_there = keep(&b, &a, x, y);
            let same = matches!(
                (here, kept_there, swap),
                (Keep::First, Keep::First, false)
                    | (Keep::Second, Keep::Second, false)
                    | (Keep::First, Keep::Second, true)
                    | (Keep::Second, Keep::First, true)
            );
            proptest::prop_assert!(same);
        }
    }
}
