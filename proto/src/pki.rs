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
}

impl PeerCertError {
    /// Every reason, in a fixed order, for counters that report zeros too.
    pub const ALL: [PeerCertError; 7] = [
        PeerCertError::Malformed,
        PeerCertError::ForeignCa,
        PeerCertError::Expired,
        PeerCertError::NotYetValid,
        PeerCertError::NameMismatch,
        PeerCertError::Revoked,
        PeerCertError::NotANodeCert,
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
    fn every_reason_has_its_own_counter() {
        let names: BTreeSet<_> = PeerCertError::ALL.iter().map(|e| e.reason()).collect();
        assert_eq!(names.len(), PeerCertError::ALL.len());
    }
}
