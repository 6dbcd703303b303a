//! Which paths a peer may use, from the config's policy: zones, zone-pair rules and
//! per-peer rules (issue 8, item 3). The config crate maps TOML onto [`PathPolicy`]; the
//! daemon calls [`PathPolicy::resolve`] for every peer and hands the result's
//! `candidates` to that peer's [`Ladder`](super::Ladder).
//!
//! Resolution, field by field (`allow` and `require_encryption` are resolved separately):
//!
//! 1. a [`PeerRule`] naming the peer, if any, else
//! 2. a [`ZonePairRule`] for the two zones (in either order), if any, else
//! 3. the defaults: host-gw when on-link, UDP within a zone, QUIC across zones, so
//!    `[host-gw, udp, quic, relay]` within a zone (host-gw only when on-link) and
//!    `[quic, relay]` across zones; encryption is not required.
//!
//! Then two constraints no rule can lift: host-gw needs the peer on-link, and a pair
//! that requires encryption never gets a cleartext rung (host-gw, udp), not even as a
//! fallback while QUIC is down. The candidates always come in ladder order.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One rung of the path ladder: a way to carry a peer's pod packets. Declared (and
/// ordered) best first: the ladder prefers a lower rung whenever it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// A kernel route via the peer's underlay address; cleartext, on-link only.
    HostGw,
    /// VXLAN over UDP through the daemon; cleartext.
    Udp,
    /// RFC 9221 datagrams on a mutually authenticated QUIC connection; encrypted.
    Quic,
    /// Through one other member that reaches both ends; encrypted end to end when the
    /// pair requires encryption (the shell's duty), at most one hop.
    Relay,
}

impl PathKind {
    /// Every rung, best first.
    pub const LADDER: [PathKind; 4] = [
        PathKind::HostGw,
        PathKind::Udp,
        PathKind::Quic,
        PathKind::Relay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::HostGw => "host-gw",
            PathKind::Udp => "udp",
            PathKind::Quic => "quic",
            PathKind::Relay => "relay",
        }
    }

    /// Whether pod payload on this rung is visible on the underlay. A relay counts as
    /// encrypted here, for a relay over QUIC; the daemon's relay carries VXLAN, so it
    /// never carries the relay for a pair that requires encryption
    /// ([`crate::routing::PeerPath::carried_in`]).
    pub fn is_cleartext(self) -> bool {
        matches!(self, PathKind::HostGw | PathKind::Udp)
    }
}

/// The path policy of the cluster, as the config states it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathPolicy {
    /// Rules for pairs of zones; at most one per pair.
    #[serde(default)]
    pub zone_pairs: Vec<ZonePairRule>,
    /// Rules for single peers, by member name; they beat zone-pair rules.
    #[serde(default)]
    pub peers: Vec<PeerRule>,
}

/// What a zone-pair or per-peer rule says; a field left out falls through to the next
/// level (zone pair, then defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRule {
    /// The rungs allowed, in any order (the ladder order applies).
    #[serde(default)]
    pub allow: Option<Vec<PathKind>>,
    #[serde(default)]
    pub require_encryption: Option<bool>,
}

/// A rule for traffic between two zones (unordered; `[a, a]` is within zone `a`).
/// Written flat in the config (`zones`, `allow`, `require_encryption` side by side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "FlatZonePairRule", into = "FlatZonePairRule")]
pub struct ZonePairRule {
    pub zones: [String; 2],
    pub rule: PathRule,
}

/// A rule for one peer, by its member name. Written flat in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "FlatPeerRule", into = "FlatPeerRule")]
pub struct PeerRule {
    pub peer: String,
    pub rule: PathRule,
}

// The rules' config shape. Not `#[serde(flatten)]`: a flattened field hides where in
// it a bad value is, and the config's errors name the exact key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatZonePairRule {
    zones: [String; 2],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allow: Option<Vec<PathKind>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    require_encryption: Option<bool>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatPeerRule {
    peer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allow: Option<Vec<PathKind>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    require_encryption: Option<bool>,
}

impl From<FlatZonePairRule> for ZonePairRule {
    fn from(f: FlatZonePairRule) -> Self {
        ZonePairRule {
            zones: f.zones,
            rule: PathRule {
                allow: f.allow,
                require_encryption: f.require_encryption,
            },
        }
    }
}

impl From<ZonePairRule> for FlatZonePairRule {
    fn from(r: ZonePairRule) -> Self {
        FlatZonePairRule {
            zones: r.zones,
            allow: r.rule.allow,
            require_encryption: r.rule.require_encryption,
        }
    }
}

impl From<FlatPeerRule> for PeerRule {
    fn from(f: FlatPeerRule) -> Self {
        PeerRule {
            peer: f.peer,
            rule: PathRule {
                allow: f.allow,
                require_encryption: f.require_encryption,
            },
        }
    }
}

impl From<PeerRule> for FlatPeerRule {
    fn from(r: PeerRule) -> Self {
        FlatPeerRule {
            peer: r.peer,
            allow: r.rule.allow,
            require_encryption: r.rule.require_encryption,
        }
    }
}

/// The two ends of a pair as resolution needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairView<'a> {
    pub local_zone: &'a str,
    pub peer_zone: &'a str,
    pub peer_name: &'a str,
    /// The kernel reaches the peer's underlay address without a gateway, through the
    /// underlay interface, and host-gw is enabled ([`crate::routing::choose_path`]).
    pub on_link: bool,
    /// Both ends run a QUIC endpoint (`[quic]` here, the `quic=PORT` capability there).
    pub quic: bool,
}

/// Where a resolved field came from, most specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleSource {
    Peer,
    ZonePair,
    Default,
}

/// A peer's allowed paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// In ladder order, no duplicates. Empty when the rules leave nothing (the config
    /// check, [`PathPolicy::validate`], refuses rules that do so on their own).
    pub candidates: Vec<PathKind>,
    pub require_encryption: bool,
    /// Where `allow` came from.
    pub allow_source: RuleSource,
}

/// A policy that cannot be right whatever the peers are.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("zone pair [{0}, {1}] has two rules; merge them into one `[[path.zone_pairs]]` entry")]
    DuplicateZonePair(String, String),
    #[error("peer {0:?} has two rules; merge them into one `[[path.peers]]` entry")]
    DuplicatePeer(String),
    #[error(
        "{0} requires encryption but allows only cleartext paths (host-gw, udp); allow quic or relay too"
    )]
    NoEncryptedPath(String),
    #[error("{0} allows no path at all; list at least one of host-gw, udp, quic, relay")]
    EmptyAllow(String),
}

impl PathPolicy {
    /// The allowed candidates for one peer, in ladder order.
    pub fn resolve(&self, pair: PairView<'_>) -> Resolved {
        let peer = self
            .peers
            .iter()
            .find(|r| r.peer == pair.peer_name)
            .map(|r| &r.rule);
        let zones = self
            .zone_pairs
            .iter()
            .find(|r| same_pair(&r.zones, pair.local_zone, pair.peer_zone))
            .map(|r| &r.rule);

        let (allow, allow_source) = match (
            peer.and_then(|r| r.allow.as_ref()),
            zones.and_then(|r| r.allow.as_ref()),
        ) {
            (Some(a), _) => (a.clone(), RuleSource::Peer),
            (None, Some(a)) => (a.clone(), RuleSource::ZonePair),
            (None, None) => (default_allow(pair), RuleSource::Default),
        };
        let require_encryption = peer
            .and_then(|r| r.require_encryption)
            .or_else(|| zones.and_then(|r| r.require_encryption))
            .unwrap_or(false);

        let candidates = PathKind::LADDER
            .into_iter()
            .filter(|p| allow.contains(p))
            .filter(|p| *p != PathKind::HostGw || pair.on_link)
            .filter(|p| *p != PathKind::Quic || pair.quic)
            .filter(|p| !(require_encryption && p.is_cleartext()))
            .collect();
        Resolved {
            candidates,
            require_encryption,
            allow_source,
        }
    }

    /// Whether one hop of a relayed path, from a member in `from_zone` to the relay
    /// `relay` in `relay_zone`, may carry the relay's framing (VXLAN over UDP): the policy
    /// allows udp for that pair, judged as if both ends spoke QUIC (so the default keeps
    /// relayed cleartext within a zone), and does not require encryption on it. Only
    /// zones and the relay's name go in, so every node judges a hop alike.
    pub fn relay_hop(&self, from_zone: &str, relay_zone: &str, relay: &str) -> bool {
        self.resolve(PairView {
            local_zone: from_zone,
            peer_zone: relay_zone,
            peer_name: relay,
            on_link: false,
            quic: true,
        })
        .candidates
        .contains(&PathKind::Udp)
    }

    /// Refuses rules that are wrong for every peer: duplicates, an empty `allow`, and an
    /// `allow` with only cleartext rungs on a rule that requires encryption.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (i, r) in self.zone_pairs.iter().enumerate() {
            let [a, b] = &r.zones;
            if self.zone_pairs[..i]
                .iter()
                .any(|o| same_pair(&o.zones, a, b))
            {
                return Err(PolicyError::DuplicateZonePair(a.clone(), b.clone()));
            }
            check_rule(&r.rule, || format!("zone pair [{a}, {b}]"))?;
        }
        for (i, r) in self.peers.iter().enumerate() {
            if self.peers[..i].iter().any(|o| o.peer == r.peer) {
                return Err(PolicyError::DuplicatePeer(r.peer.clone()));
            }
            check_rule(&r.rule, || format!("peer {:?}", r.peer))?;
        }
        Ok(())
    }
}

fn same_pair(zones: &[String; 2], a: &str, b: &str) -> bool {
    (zones[0] == a && zones[1] == b) || (zones[0] == b && zones[1] == a)
}

/// Host-gw when on-link, UDP within a zone, QUIC across zones; QUIC and the relay are
/// the fallbacks everywhere. Cleartext rungs stay within a zone — a zone is where the
/// operator said the underlay is one network — once both ends can speak QUIC. A pair
/// where either end has no QUIC endpoint keeps what it had before QUIC existed (UDP
/// across zones), so upgrading a cluster that set zones cuts no traffic; an operator who
/// needs encryption says so (`require_encryption`), and then no cleartext rung is allowed.
fn default_allow(pair: PairView<'_>) -> Vec<PathKind> {
    if pair.local_zone == pair.peer_zone || !pair.quic {
        PathKind::LADDER.to_vec()
    } else {
        vec![PathKind::Quic, PathKind::Relay]
    }
}

fn check_rule(rule: &PathRule, name: impl Fn() -> String) -> Result<(), PolicyError> {
    let Some(allow) = &rule.allow else {
        return Ok(());
    };
    if allow.is_empty() {
        return Err(PolicyError::EmptyAllow(name()));
    }
    if rule.require_encryption == Some(true) && allow.iter().all(|p| p.is_cleartext()) {
        return Err(PolicyError::NoEncryptedPath(name()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathKind::*;

    fn pair<'a>(local: &'a str, peer_zone: &'a str, on_link: bool) -> PairView<'a> {
        PairView {
            local_zone: local,
            peer_zone,
            peer_name: "n2",
            on_link,
            quic: true,
        }
    }

    fn rule(allow: Option<&[PathKind]>, enc: Option<bool>) -> PathRule {
        PathRule {
            allow: allow.map(<[PathKind]>::to_vec),
            require_encryption: enc,
        }
    }

    fn zone_pair(a: &str, b: &str, r: PathRule) -> ZonePairRule {
        ZonePairRule {
            zones: [a.into(), b.into()],
            rule: r,
        }
    }

    fn peer_rule(name: &str, r: PathRule) -> PeerRule {
        PeerRule {
            peer: name.into(),
            rule: r,
        }
    }

    #[test]
    fn default_within_a_zone_on_link_starts_at_host_gw() {
        let r = PathPolicy::default().resolve(pair("a", "a", true));
        assert_eq!(r.candidates, [HostGw, Udp, Quic, Relay]);
        assert!(!r.require_encryption);
        assert_eq!(r.allow_source, RuleSource::Default);
    }

    #[test]
    fn default_within_a_zone_routed_starts_at_udp() {
        let r = PathPolicy::default().resolve(pair("a", "a", false));
        assert_eq!(r.candidates, [Udp, Quic, Relay]);
    }

    #[test]
    fn a_relay_hop_carries_vxlan_only_where_udp_is_allowed_in_clear() {
        let p = PathPolicy::default();
        assert!(p.relay_hop("a", "a", "c"), "within a zone");
        assert!(
            !p.relay_hop("a", "b", "c"),
            "across zones: quic only by default"
        );
        let encrypted = PathPolicy {
            zone_pairs: vec![zone_pair("a", "a", rule(None, Some(true)))],
            ..PathPolicy::default()
        };
        assert!(!encrypted.relay_hop("a", "a", "c"));
    }

    #[test]
    fn default_across_zones_is_quic_even_when_on_link() {
        let r = PathPolicy::default().resolve(pair("a", "b", true));
        assert_eq!(r.candidates, [Quic, Relay]);
    }

    #[test]
    fn without_quic_at_both_ends_there_is_no_quic_rung_and_zones_keep_udp() {
        let no_quic = |local, peer_zone| PairView {
            quic: false,
            ..pair(local, peer_zone, false)
        };
        let r = PathPolicy::default().resolve(no_quic("a", "b"));
        assert_eq!(r.candidates, [Udp, Relay]);
        assert_eq!(r.allow_source, RuleSource::Default);
        let required = PathPolicy {
            zone_pairs: vec![zone_pair("a", "b", rule(None, Some(true)))],
            ..PathPolicy::default()
        };
        assert_eq!(required.resolve(no_quic("a", "b")).candidates, [Relay]);
        let quic_only = PathPolicy {
            zone_pairs: vec![zone_pair("a", "a", rule(Some(&[Quic]), None))],
            ..PathPolicy::default()
        };
        assert!(quic_only.resolve(no_quic("a", "a")).candidates.is_empty());
    }

    #[test]
    fn host_gw_needs_the_peer_on_link_whatever_a_rule_says() {
        let policy = PathPolicy {
            peers: vec![peer_rule("n2", rule(Some(&[HostGw, Quic]), None))],
            ..PathPolicy::default()
        };
        assert_eq!(policy.resolve(pair("a", "a", false)).candidates, [Quic]);
        assert_eq!(
            policy.resolve(pair("a", "a", true)).candidates,
            [HostGw, Quic]
        );
    }

    #[test]
    fn a_zone_pair_rule_matches_in_either_order_and_sorts_into_ladder_order() {
        let policy = PathPolicy {
            zone_pairs: vec![zone_pair("b", "a", rule(Some(&[Relay, Udp]), None))],
            ..PathPolicy::default()
        };
        for (l, p) in [("a", "b"), ("b", "a")] {
            let r = policy.resolve(pair(l, p, false));
            assert_eq!(r.candidates, [Udp, Relay]);
            assert_eq!(r.allow_source, RuleSource::ZonePair);
        }
        assert_eq!(
            policy.resolve(pair("a", "c", false)).candidates,
            [Quic, Relay],
            "other pairs keep the defaults"
        );
    }

    #[test]
    fn encryption_required_removes_cleartext_rungs_even_as_fallback() {
        let policy = PathPolicy {
            zone_pairs: vec![zone_pair("a", "a", rule(None, Some(true)))],
            ..PathPolicy::default()
        };
        let r = policy.resolve(pair("a", "a", true));
        assert_eq!(r.candidates, [Quic, Relay]);
        assert!(r.require_encryption);
        assert_eq!(r.allow_source, RuleSource::Default);
    }

    #[test]
    fn encryption_required_with_only_cleartext_allowed_leaves_nothing() {
        let policy = PathPolicy {
            zone_pairs: vec![zone_pair("a", "a", rule(Some(&[HostGw, Udp]), Some(true)))],
            ..PathPolicy::default()
        };
        assert!(policy.resolve(pair("a", "a", true)).candidates.is_empty());
        assert_eq!(
            policy.validate(),
            Err(PolicyError::NoEncryptedPath("zone pair [a, a]".into()))
        );
    }

    #[test]
    fn a_peer_rule_beats_the_zone_pair_rule() {
        let policy = PathPolicy {
            zone_pairs: vec![zone_pair("a", "b", rule(Some(&[Quic]), Some(true)))],
            peers: vec![peer_rule("n2", rule(Some(&[Udp, Quic]), Some(false)))],
        };
        let r = policy.resolve(pair("a", "b", false));
        assert_eq!(r.candidates, [Udp, Quic]);
        assert!(!r.require_encryption);
        assert_eq!(r.allow_source, RuleSource::Peer);

        let other = PairView {
            peer_name: "n3",
            ..pair("a", "b", false)
        };
        assert_eq!(policy.resolve(other).candidates, [Quic]);
    }

    #[test]
    fn fields_fall_through_separately() {
        // The peer rule only narrows the paths; the zone pair's encryption still holds.
        let policy = PathPolicy {
            zone_pairs: vec![zone_pair("a", "b", rule(None, Some(true)))],
            peers: vec![peer_rule("n2", rule(Some(&[Udp, Quic, Relay]), None))],
        };
        let r = policy.resolve(pair("a", "b", false));
        assert_eq!(r.candidates, [Quic, Relay]);
        assert!(r.require_encryption);
        assert_eq!(r.allow_source, RuleSource::Peer);
    }

    #[test]
    fn validate_refuses_duplicates_and_empty_allows() {
        let dup_zone = PathPolicy {
            zone_pairs: vec![
                zone_pair("a", "b", PathRule::default()),
                zone_pair("b", "a", PathRule::default()),
            ],
            ..PathPolicy::default()
        };
        assert_eq!(
            dup_zone.validate(),
            Err(PolicyError::DuplicateZonePair("b".into(), "a".into()))
        );
        let dup_peer = PathPolicy {
            peers: vec![
                peer_rule("n2", PathRule::default()),
                peer_rule("n2", PathRule::default()),
            ],
            ..PathPolicy::default()
        };
        assert_eq!(
            dup_peer.validate(),
            Err(PolicyError::DuplicatePeer("n2".into()))
        );
        let empty = PathPolicy {
            peers: vec![peer_rule("n2", rule(Some(&[]), None))],
            ..PathPolicy::default()
        };
        assert!(matches!(empty.validate(), Err(PolicyError::EmptyAllow(_))));
        assert_eq!(PathPolicy::default().validate(), Ok(()));
    }

    #[test]
    fn the_policy_reads_from_json_in_the_config_shape() {
        let policy: PathPolicy = serde_json::from_str(
            r#"{
                "zone_pairs": [{"zones": ["eu", "us"], "allow": ["quic", "relay"], "require_encryption": true}],
                "peers": [{"peer": "n2", "allow": ["host-gw", "udp"]}]
            }"#,
        )
        .expect("valid policy");
        assert_eq!(
            policy.zone_pairs[0].rule,
            rule(Some(&[Quic, Relay]), Some(true))
        );
        assert_eq!(policy.peers[0].rule, rule(Some(&[HostGw, Udp]), None));
        assert_eq!(policy.validate(), Ok(()));
    }

    proptest::proptest! {
        /// Whatever the rules: candidates are in ladder order without duplicates, never
        /// include host-gw off-link, and never a cleartext rung when encryption is required.
        #[test]
        fn candidates_obey_the_hard_constraints(
            zone_allow in proptest::option::of(proptest::sample::subsequence(PathKind::LADDER.to_vec(), 0..=4)),
            zone_enc in proptest::option::of(proptest::bool::ANY),
            peer_allow in proptest::option::of(proptest::sample::subsequence(PathKind::LADDER.to_vec(), 0..=4)),
            peer_enc in proptest::option::of(proptest::bool::ANY),
            same_zone in proptest::bool::ANY,
            on_link in proptest::bool::ANY,
            quic in proptest::bool::ANY,
        ) {
            let policy = PathPolicy {
                zone_pairs: vec![zone_pair("a", "b", PathRule { allow: zone_allow, require_encryption: zone_enc })],
                peers: vec![peer_rule("n2", PathRule { allow: peer_allow, require_encryption: peer_enc })],
            };
            let r = policy.resolve(PairView { quic, ..pair("a", if same_zone { "a" } else { "b" }, on_link) });
            proptest::prop_assert!(r.candidates.windows(2).all(|w| w[0] < w[1]));
            proptest::prop_assert!(on_link || !r.candidates.contains(&HostGw));
            proptest::prop_assert!(quic || !r.candidates.contains(&Quic));
            if r.require_encryption {
                proptest::prop_assert!(r.candidates.iter().all(|p| !p.is_cleartext()));
            }
        }
    }
}
