//! The cluster PKI's decisions that need no cryptography: which names a node certificate
//! may carry, what a certificate fingerprint is and how it is written, the revocation
//! list, the reasons a peer's certificate is refused, and which key-file modes are private.
//!
//! The shell (`overlayd::pki`) parses and verifies certificates; it reports every
//! refusal as a [`PeerCertError`] so that each reason gets its own counter.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::gossip::MAX_NAME_LEN;
use crate::service::spec::dns_label_problem;

/// Why `name` cannot be a node certificate's name, if it cannot: the rules of a node
/// name in the config (`node.name`, `peer.name`), which is also the gossip member name
/// — one DNS label of 1 to 63 characters of a-z, 0-9 and '-', not starting or ending
/// with '-'. Such a name is always a valid DNS SAN, so the certificate can carry it.
pub fn member_name_problem(name: &str) -> Option<String> {
    dns_label_problem(name, MAX_NAME_LEN)
        .map(|p| format!("{name:?} is not a node name: it {p}; node names are DNS labels"))
}

/// Whether a key file with these `st_mode` bits is private: no permission bit for the
/// group or for others (0600 and 0400 are; 0640 and 0644 are not).
pub fn key_mode_is_private(mode: u32) -> bool {
    mode & 0o077 == 0
}

/// SHA-256 of a certificate's DER: what the revocation list and (later) the gossip
/// record name a certificate by. Written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The capability a node's gossip record carries its QUIC certificate's fingerprint in:
/// `cert=` and the SHA-256 in unpadded base64url (43 characters; 48 in all, within the
/// record's 63-byte capability limit, where 64 hex digits would not fit).
pub const CERT_CAPABILITY: &str = "cert=";

impl Fingerprint {
    /// The record capability `cert=<base64url>` naming this fingerprint.
    pub fn to_capability(&self) -> String {
        format!(
            "{CERT_CAPABILITY}{}",
            data_encoding::BASE64URL_NOPAD.encode(&self.0)
        )
    }

    /// The fingerprint of a `cert=` capability; `None` iff `cap` is not one, or its
    /// value is not 43 base64url characters (whose 2 spare bits must be zero: one
    /// spelling only, which `BASE64URL_NOPAD` checks).
    pub fn from_capability(cap: &str) -> Option<Fingerprint> {
        let text = cap.strip_prefix(CERT_CAPABILITY)?.as_bytes();
        if text.len() != 43 {
            return None;
        }
        let bytes = data_encoding::BASE64URL_NOPAD.decode(text).ok()?;
        Some(Fingerprint(bytes.try_into().ok()?))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether a peer may present the certificate with fingerprint `presented`, given the
/// fingerprint its gossip record advertises (`None`: no record, a record without one —
/// an older node, a static peer — or not learned yet). A refusal is
/// [`PeerCertError::FingerprintMismatch`].
///
/// Rotation: after a peer reloads a new certificate (SIGHUP) it advertises the new
/// fingerprint, but its next handshake may reach us before that record does. That
/// handshake is refused and counted, the dialer backs off (100 ms doubling to 5 s) and
/// redials, and the record, arriving within a gossip round or two, heals it. Connections
/// that are up are not closed when a record's fingerprint changes: the certificate was
/// the advertised one when the connection was made, it still passes every other check,
/// and a certificate that must stop working is revoked instead.
pub fn check_advertised(
    advertised: Option<&Fingerprint>,
    presented: &Fingerprint,
) -> Result<(), PeerCertError> {
    match advertised {
        Some(a) if a != presented => Err(PeerCertError::FingerprintMismatch),
        _ => Ok(()),
    }
}

/// The cluster-object key prefix of revocations: `pki/revoked/<64 hex digits>`.
pub const REVOKED_PREFIX: &str = "pki/revoked/";

/// The cluster-object key that revokes `fingerprint`.
pub fn revoked_key(fingerprint: &Fingerprint) -> String {
    format!("{REVOKED_PREFIX}{fingerprint}")
}

/// The fingerprint a revocation key names; `None` iff `key` is not one (another prefix,
/// or not exactly 64 lowercase hex digits after it).
pub fn parse_revoked_key(key: &str) -> Option<Fingerprint> {
    let hex = key.strip_prefix(REVOKED_PREFIX)?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    hex.parse().ok()
}

/// What a revocation object holds: who revoked and when (for `overlayd cert
/// list-revoked`). The key is what revokes; a value that does not decode still does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revocation {
    pub fingerprint: Fingerprint,
    /// The node whose API published it.
    #[serde(default)]
    pub by: String,
    /// Unix time in milliseconds when it was published.
    #[serde(default)]
    pub at_ms: u64,
}

/// What a node does when the revocation object of `fingerprint` changes in gossip state
/// (`value`: the new value, `None` for a delete), given the revocation it holds for that
/// fingerprint, if any: revocations only ever accumulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationChange {
    /// A new revocation: add it to the list (and close tunnels presenting it).
    Add(Revocation),
    /// A revocation it holds was deleted: write it again (a newer write wins LWW), so no
    /// delete — stale, mistaken or hostile — undoes a revocation.
    Reassert(Revocation),
    /// Nothing to do (a rewrite of one it holds, a delete of one it never had).
    Nothing,
}

/// See [`RevocationChange`]. A value that does not decode, or names another fingerprint
/// than its key, still revokes the key's fingerprint (author and time unknown).
pub fn revocation_change(
    fingerprint: Fingerprint,
    held: Option<&Revocation>,
    value: Option<&[u8]>,
) -> RevocationChange {
    match (value, held) {
        (Some(bytes), None) => RevocationChange::Add(
            serde_json::from_slice::<Revocation>(bytes)
                .ok()
                .filter(|r| r.fingerprint == fingerprint)
                .unwrap_or(Revocation {
                    fingerprint,
                    by: String::new(),
                    at_ms: 0,
                }),
        ),
        (None, Some(held)) => RevocationChange::Reassert(held.clone()),
        _ => RevocationChange::Nothing,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a certificate fingerprint: expected 64 hex digits (SHA-256 of the DER), \
     as `overlayd cert issue` prints"
)]
pub struct FingerprintParseError(pub String);

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;

    /// 64 hex digits, either case; `sha256:` before them and ':' between bytes (as
    /// `openssl x509 -fingerprint -sha256` prints) are accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FingerprintParseError(s.to_owned());
        let t = s.trim();
        let t = t.strip_prefix("sha256:").unwrap_or(t);
        let t = t.strip_prefix("SHA256 Fingerprint=").unwrap_or(t);
        let digits: Vec<u8> = t.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(err());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| err())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(Fingerprint(out))
    }
}

/// The certificates no peer may present any more, by fingerprint. Revoking by
/// fingerprint needs no CRL signed by the CA: whoever may change cluster state may
/// revoke, and the list travels in gossip state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    revoked: BTreeSet<Fingerprint>,
}

impl RevocationList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a fingerprint; returns `false` iff it was already revoked.
    pub fn revoke(&mut self, fingerprint: Fingerprint) -> bool {
        self.revoked.insert(fingerprint)
    }

    pub fn is_revoked(&self, fingerprint: &Fingerprint) -> bool {
        self.revoked.contains(fingerprint)
    }

    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }

    /// In fingerprint order.
    pub fn iter(&self) -> impl Iterator<Item = &Fingerprint> {
        self.revoked.iter()
    }
}

impl FromIterator<Fingerprint> for RevocationList {
    fn from_iter<I: IntoIterator<Item = Fingerprint>>(iter: I) -> Self {
        RevocationList {
            revoked: iter.into_iter().collect(),
        }
    }
}

/// Why a peer's certificate is refused: one variant per reason, each counted on its own
/// (see [`PeerCertError::reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PeerCertError {
    #[error("the certificate cannot be parsed as an X.509 node certificate")]
    Malformed,
    #[error(
        "the certificate is not signed by this cluster's CA (another cluster's, or self-signed); \
         issue one with `overlayd cert issue` from this cluster's CA directory"
    )]
    ForeignCa,
    #[error("the certificate has expired; issue a new one with `overlayd cert issue`")]
    Expired,
    #[error(
        "the certificate is not valid yet (its clock or ours is wrong, or it was issued for later)"
    )]
    NotYetValid,
    #[error("the certificate names another node than the gossip member presenting it")]
    NameMismatch,
    #[error("the certificate is revoked (its fingerprint is on the cluster's revocation list)")]
    Revoked,
    #[error(
        "the certificate is signed by the cluster CA but is not a node certificate usable for \
         both TLS client and server (a CA certificate, or missing extended key usages)"
    )]
    NotANodeCert,
    #[error(
        "the certificate is not the one the peer's gossip record advertises (another \
         certificate for that name, or the peer's new one before its record arrived)"
    )]
    FingerprintMismatch,
}

impl PeerCertError {
    /// Every reason, in a fixed order, for counters that report zeros too.
    pub const ALL: [PeerCertError; 8] = [
        PeerCertError::Malformed,
        PeerCertError::ForeignCa,
        PeerCertError::Expired,
        PeerCertError::NotYetValid,
        PeerCertError::NameMismatch,
        PeerCertError::Revoked,
        PeerCertError::NotANodeCert,
        PeerCertError::FingerprintMismatch,
    ];

    /// The counter's name: short, stable, snake_case.
    pub fn reason(self) -> &'static str {
        match self {
            PeerCertError::Malformed => "malformed",
            PeerCertError::ForeignCa => "foreign_ca",
            PeerCertError::Expired => "expired",
            PeerCertError::NotYetValid => "not_yet_valid",
            PeerCertError::NameMismatch => "name_mismatch",
            PeerCertError::Revoked => "revoked",
            PeerCertError::NotANodeCert => "not_a_node_cert",
            PeerCertError::FingerprintMismatch => "fingerprint_mismatch",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_config_node_names() {
        for good in ["n1", "node-a", "0", &"a".repeat(63)] {
            assert_eq!(member_name_problem(good), None, "{good}");
        }
        for bad in ["", "N1", "-a", "a-", "a.b", "a_b", "a b", &"a".repeat(64)] {
            let problem = member_name_problem(bad).expect(bad);
            assert!(problem.contains("is not a node name"), "{problem}");
        }
    }

    #[test]
    fn only_owner_only_modes_are_private() {
        for mode in [0o600, 0o400, 0o100600, 0o700] {
            assert!(key_mode_is_private(mode), "{mode:o}");
        }
        for mode in [0o644, 0o640, 0o604, 0o100660, 0o601] {
            assert!(!key_mode_is_private(mode), "{mode:o}");
        }
    }

    #[test]
    fn fingerprints_print_and_parse_as_hex() {
        let fp = Fingerprint(std::array::from_fn(|i| i as u8 * 7));
        let text = fp.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<Fingerprint>(), Ok(fp));
        assert_eq!(format!("sha256:{}", text.to_uppercase()).parse(), Ok(fp));
        let colons: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(
            format!("SHA256 Fingerprint={}", colons.join(":")).parse(),
            Ok(fp)
        );
        assert!("abc".parse::<Fingerprint>().is_err());
        assert!("g".repeat(64).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn revocation_list_holds_fingerprints() {
        let (a, b) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        let mut list: RevocationList = [a].into_iter().collect();
        assert!(list.is_revoked(&a) && !list.is_revoked(&b));
        assert!(list.revoke(b));
        assert!(!list.revoke(b));
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn fingerprint_capabilities_fit_a_record_and_round_trip() {
        for fp in [
            Fingerprint([0; 32]),
            Fingerprint([0xff; 32]),
            Fingerprint(std::array::from_fn(|i| {
                (i as u8).wrapping_mul(37).wrapping_add(1)
            })),
        ] {
            let cap = fp.to_capability();
            assert!(cap.starts_with(CERT_CAPABILITY), "{cap}");
            assert_eq!(cap.len(), 48, "{cap}");
            assert!(cap.len() <= MAX_NAME_LEN);
            assert_eq!(Fingerprint::from_capability(&cap), Some(fp), "{cap}");
        }
        assert_eq!(
            Fingerprint([0; 32]).to_capability(),
            format!("cert={}", "A".repeat(43))
        );
        let good = Fingerprint([7; 32]).to_capability();
        for bad in [
            "quic=8473".to_owned(),
            "cert=".to_owned(),
            good[..good.len() - 1].to_owned(),
            format!("{good}A"),
            good.replace('H', "+"),
            // The last character's two spare bits set: a second spelling, refused.
            format!("cert={}B", "A".repeat(42)),
        ] {
            assert_eq!(Fingerprint::from_capability(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_advertised_fingerprint_must_match_when_there_is_one() {
        let (old, new) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        // No record, or a record without one (an older node, a static peer): accepted.
        assert_eq!(check_advertised(None, &new), Ok(()));
        assert_eq!(check_advertised(Some(&new), &new), Ok(()));
        // Another certificate for that name, or a rotated one before its record came:
        // refused (the dialer retries after its backoff, and the record heals it).
        assert_eq!(
            check_advertised(Some(&old), &new),
            Err(PeerCertError::FingerprintMismatch)
        );
    }

    #[test]
    fn revocation_keys_name_one_fingerprint_each() {
        let fp = Fingerprint(std::array::from_fn(|i| i as u8));
        let key = revoked_key(&fp);
        assert_eq!(key.len(), REVOKED_PREFIX.len() + 64);
        assert_eq!(parse_revoked_key(&key), Some(fp));
        for bad in [
            "svc/default/x".to_owned(),
            REVOKED_PREFIX.to_owned(),
            key.to_uppercase(),
            format!("{key}0"),
            key.replace(REVOKED_PREFIX, "pki/revoke/"),
        ] {
            assert_eq!(parse_revoked_key(&bad), None, "{bad}");
        }
        let r = Revocation {
            fingerprint: fp,
            by: "n1".into(),
            at_ms: 5,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(&fp.to_string()), "{json}");
        assert_eq!(serde_json::from_str::<Revocation>(&json).unwrap(), r);
    }

    #[test]
    fn revocations_only_accumulate() {
        let fp = Fingerprint([3; 32]);
        let r = Revocation {
            fingerprint: fp,
            by: "n1".into(),
            at_ms: 7,
        };
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(
            revocation_change(fp, None, Some(&bytes)),
            RevocationChange::Add(r.clone())
        );
        // Written again (or by someone else): already held, nothing changes.
        assert_eq!(
            revocation_change(fp, Some(&r), Some(b"{}")),
            RevocationChange::Nothing
        );
        // Deleted: written again.
        assert_eq!(
            revocation_change(fp, Some(&r), None),
            RevocationChange::Reassert(r.clone())
        );
        assert_eq!(revocation_change(fp, None, None), RevocationChange::Nothing);
        // The key revokes, whatever the value says.
        let other = Revocation {
            fingerprint: Fingerprint([4; 32]),
            ..r
        };
        for value in [b"junk".to_vec(), serde_json::to_vec(&other).unwrap()] {
            assert_eq!(
                revocation_change(fp, None, Some(&value)),
                RevocationChange::Add(Revocation {
                    fingerprint: fp,
                    by: String::new(),
                    at_ms: 0
                })
            );
        }
    }

    #[test]
    fn every_reason_has_its_own_counter() {
        let names: BTreeSet<_> = PeerCertError::ALL.iter().map(|e| e.reason()).collect();
        assert_eq!(names.len(), PeerCertError::ALL.len());
    }
}
