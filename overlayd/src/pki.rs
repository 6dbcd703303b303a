//! The cluster PKI: `overlayd ca init` makes the cluster CA, `overlayd cert issue` signs
//! a node certificate with it, and the QUIC tunnels load a node's identity
//! ([`NodeIdentity::load`]) and check every peer's certificate with [`verify_peer`].
//!
//! Files: `ca.pem` + `ca.key` in the CA directory, `NODE.pem` + `NODE.key` for a node. Keys
//! are PKCS#8 PEM, written with mode 0600 from the moment they exist and refused when
//! their mode lets the group or others in. The decisions that need no cryptography (node
//! names, fingerprints, the revocation list, refusal reasons) live in
//! [`overlayd_proto::pki`].

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime,
};

pub use overlayd_proto::pki::{Fingerprint, PeerCertError, RevocationList};
use overlayd_proto::pki::{key_mode_is_private, member_name_problem};

/// The CA certificate's file name in the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name in the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Default lifetime of a cluster CA.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default lifetime of a node certificate.
pub const DEFAULT_CERT_DAYS: u32 = 365;

/// The CA's subject common name; every node certificate names it as its issuer.
const CA_COMMON_NAME: &str = "overlayd cluster CA";
/// Certificates start this long before they are made, so that a peer whose clock is a
/// little behind does not refuse a fresh certificate as not yet valid.
const CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Largest key or certificate file read; a P-256 key or certificate is under 1 KiB.
const MAX_PEM_FILE: u64 = 64 * 1024;
/// The signature algorithms a node certificate may be signed with. `ca init` makes
/// P-256 keys; P-384 and Ed25519 are accepted for CAs made with other tools.
static SIGNATURE_ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
];

/// A test hook: with this variable set in its environment, a daemon starts (and reloads)
/// with a certificate its peers will refuse — another CA's, an expired one, one naming
/// another node — instead of failing, so that the namespace tests can show the peers
/// refusing and counting it. It weakens nothing: every peer still checks the
/// certificate; the key file's mode is still checked.
pub const UNCHECKED_CERT_ENV: &str = "OVERLAYD_TEST_UNCHECKED_CERT";

/// When a certificate is valid, both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From a few minutes before `now` (clock skew between nodes) to `days` after it.
    pub fn days_from(now: SystemTime, days: u32) -> Self {
        Validity {
            not_before: now - CLOCK_SKEW,
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }
}

/// A certificate and key written to disk.
#[derive(Debug, Clone)]
pub struct Written {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub fingerprint: Fingerprint,
    pub validity: Validity,
}

/// Makes a cluster CA (ECDSA P-256, self-signed, allowed to sign node certificates
/// only) in `dir`: `ca.pem` and `ca.key` (0600). Returns `Err` if either file exists and
/// `force` is not set: replacing the CA invalidates every node certificate it signed.
pub fn init_ca(dir: &Path, validity: Validity, force: bool) -> Result<Written> {
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    if !force {
        for existing in [&cert_path, &key_path] {
            if existing.symlink_metadata().is_ok() {
                bail!(
                    "{} already exists: {} holds a CA, and every node certificate it signed \
                     depends on it; pass --force to replace it (then issue every node \
                     certificate again)",
                    existing.display(),
                    dir.display()
                );
            }
        }
    }
    let key = KeyPair::generate().context("generating the CA key")?;
    let cert = ca_params(validity)?
        .self_signed(&key)
        .context("signing the CA certificate")?;
    create_dir_private(dir)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    crate::write_atomic(&cert_path, cert.pem().as_bytes())?;
    Ok(Written {
        cert: cert_path,
        key: key_path,
        fingerprint: fingerprint(cert.der()),
        validity,
    })
}

/// Issues a certificate for the node `node` (its gossip member name, as SAN DNS name and
/// common name; good for TLS server and client auth) signed by the CA in `ca_dir`, and
/// writes `out/NODE.pem` and `out/NODE.key` (0600), replacing an older pair (renewal).
/// The certificate ends with the CA at the latest, whatever `validity` asks for.
pub fn issue_cert(node: &str, ca_dir: &Path, out: &Path, validity: Validity) -> Result<Written> {
    if let Some(problem) = member_name_problem(node) {
        bail!("{problem}");
    }
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_pem = read_pem_file(&ca_cert_path)?;
    let ca_key = String::from_utf8(read_private_key(&ca_key_path)?)
        .ok()
        .and_then(|pem| KeyPair::from_pem(&pem).ok())
        .with_context(|| format!("{} is not a PEM private key", ca_key_path.display()))?;
    let ca_pem = String::from_utf8(ca_pem)
        .with_context(|| format!("{} is not PEM text", ca_cert_path.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .with_context(|| format!("{} is not a CA certificate", ca_cert_path.display()))?;
    // Peers check a trust anchor's signature, not its dates: a node certificate that
    // outlived its CA would stay valid, so none may.
    let ca = Ca::load(&ca_cert_path)?;
    let ca_not_after = not_after(ca.cert_der())
        .with_context(|| format!("{} has no readable expiry", ca_cert_path.display()))?;
    let validity = Validity {
        not_after: validity.not_after.min(ca_not_after),
        ..validity
    };
    if validity.not_after <= validity.not_before {
        bail!(
            "the CA {} has expired; make a new one with `overlayd ca init --force`",
            ca_cert_path.display()
        );
    }

    let key = KeyPair::generate().context("generating the node key")?;
    let cert = node_params(node, validity)?
        .signed_by(&key, &issuer)
        .context("signing the node certificate")?;

    // A check of what was just made: a ca.key that does not belong to ca.pem would
    // otherwise surface only as refused tunnels.
    verify_peer(
        &ca,
        &RevocationList::new(),
        cert.der(),
        node,
        validity.not_before,
    )
    .map_err(|e| match e {
        PeerCertError::ForeignCa => anyhow::anyhow!(
            "the new certificate does not verify against {}: {} does not belong to it",
            ca_cert_path.display(),
            ca_key_path.display()
        ),
        e => anyhow::anyhow!(
            "the new certificate would be refused by peers: {e} (CA {})",
            ca_cert_path.display()
        ),
    })?;

    create_dir_private(out)?;
    let cert_path = out.join(format!("{node}.pem"));
    let key_path = out.join(format!("{node}.key"));
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    crate::write_atomic(&cert_path, cert.pem().as_bytes())?;
    Ok(Written {
        cert: cert_path,
        key: key_path,
        fingerprint: fingerprint(cert.der()),
        validity,
    })
}

/// The cluster CA as a trust anchor: what every peer certificate must chain to.
#[derive(Debug, Clone)]
pub struct Ca {
    cert: CertificateDer<'static>,
    anchor: TrustAnchor<'static>,
}

impl Ca {
    /// Reads the CA certificate (PEM, one certificate) from `path`. The CA key is not
    /// needed to verify peers and should not be on every node.
    pub fn load(path: &Path) -> Result<Self> {
        let pem = read_pem_file(path)?;
        let cert = CertificateDer::from_pem_slice(&pem)
            .map_err(|e| anyhow::anyhow!("{}: no PEM certificate in it ({e})", path.display()))?;
        Ca::from_der(cert).with_context(|| format!("CA certificate {}", path.display()))
    }

    /// Returns `Err` iff `cert` cannot serve as a trust anchor.
    pub fn from_der(cert: CertificateDer<'static>) -> Result<Self> {
        let anchor = webpki::anchor_from_trusted_cert(&cert)
            .map_err(|e| anyhow::anyhow!("not a usable CA certificate: {e}"))?
            .to_owned();
        Ok(Ca { cert, anchor })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.cert)
    }
}

/// This node's certificate and key, as the QUIC endpoint presents them.
#[derive(Debug)]
pub struct NodeIdentity {
    pub name: String,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub fingerprint: Fingerprint,
}

impl NodeIdentity {
    /// Reads `cert_path` and `key_path` (refused when the key's mode lets the group or
    /// others in), and checks the certificate as every peer will: signed by `ca`, valid
    /// at `now`, naming `name`. A node that would be refused by all its peers fails here,
    /// at start-up or reload, with the reason.
    pub fn load(
        ca: &Ca,
        name: &str,
        cert_path: &Path,
        key_path: &Path,
        now: SystemTime,
    ) -> Result<Self> {
        let key_pem = read_private_key(key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            anyhow::anyhow!("{}: no PEM private key in it ({e})", key_path.display())
        })?;
        let cert_pem = read_pem_file(cert_path)?;
        let cert = CertificateDer::from_pem_slice(&cert_pem).map_err(|e| {
            anyhow::anyhow!("{}: no PEM certificate in it ({e})", cert_path.display())
        })?;
        if std::env::var_os(UNCHECKED_CERT_ENV).is_some() {
            tracing::warn!(
                "{UNCHECKED_CERT_ENV} is set: {} is not checked; peers will refuse it if it is bad",
                cert_path.display()
            );
        } else {
            verify_peer(ca, &RevocationList::new(), &cert, name, now).map_err(|e| {
                anyhow::anyhow!(
                    "{}: this node's own certificate would be refused by its peers: {e}",
                    cert_path.display()
                )
            })?;
        }
        Ok(NodeIdentity {
            name: name.to_owned(),
            fingerprint: fingerprint(&cert),
            cert,
            key,
        })
    }
}

/// The fingerprint of the certificate in a PEM file (`overlayd cert revoke CERTFILE`, and
/// the `cert=` capability the daemon advertises).
pub fn cert_file_fingerprint(path: &Path) -> Result<Fingerprint> {
    let pem = read_pem_file(path)?;
    let cert = CertificateDer::from_pem_slice(&pem)
        .map_err(|e| anyhow::anyhow!("{}: no PEM certificate in it ({e})", path.display()))?;
    Ok(fingerprint(&cert))
}

/// SHA-256 of a certificate's DER.
pub fn fingerprint(cert_der: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Fingerprint(out)
}

/// When a certificate (DER) expires; `None` iff it cannot be parsed. For showing
/// expiry (`overlayd peers`, reload warnings); [`verify_peer`] does the checking.
pub fn not_after(cert_der: &[u8]) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let secs = cert.validity().not_after.timestamp();
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Checks the certificate a peer presented (DER): `Ok` iff it is a node certificate
/// signed by `ca`, valid at `now`, usable for TLS client and server auth (either side of
/// a pair may dial), not on `revoked`, and naming `expected_name` — the gossip member
/// the connection is for. Each refusal is its own [`PeerCertError`] variant.
///
/// This checks the certificate only; that the peer holds its key is the TLS handshake's
/// signature check.
pub fn verify_peer(
    ca: &Ca,
    revoked: &RevocationList,
    cert_der: &[u8],
    expected_name: &str,
    now: SystemTime,
) -> Result<(), PeerCertError> {
    let der = CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|_| PeerCertError::Malformed)?;
    let time = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    let anchors = std::slice::from_ref(&ca.anchor);
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        cert.verify_for_usage(SIGNATURE_ALGS, anchors, &[], time, usage, None, None)
            .map_err(refusal)?;
    }
    if revoked.is_revoked(&fingerprint(cert_der)) {
        return Err(PeerCertError::Revoked);
    }
    if !names_member(cert_der, expected_name)? {
        return Err(PeerCertError::NameMismatch);
    }
    Ok(())
}

/// Reads a private key file: a regular file, at most 64 KiB, whose mode gives the group
/// and others no permission at all. The mode is read from the open file, so the file
/// checked is the file read.
pub fn read_private_key(path: &Path) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    let mode = file
        .metadata()
        .with_context(|| format!("reading the mode of {}", path.display()))?
        .mode();
    if !key_mode_is_private(mode) {
        bail!(
            "{} has permissions for its group or others (mode {:04o}); a private key must be \
             readable by its owner only: run `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    read_bounded(file, path)
}

/// The member a certificate names: its one DNS subject alternative name, when that is a
/// valid node name. For the accepting side of a connection, which learns who dials only
/// from the certificate: take this name, then [`verify_peer`] with it, then check that
/// the member is live (and, once gossip carries it, that its record's fingerprint is
/// this certificate's).
pub fn member_name(cert_der: &[u8]) -> Result<String, PeerCertError> {
    match dns_names(cert_der)?.as_slice() {
        [name] if member_name_problem(name).is_none() => Ok(name.clone()),
        _ => Err(PeerCertError::NameMismatch),
    }
}

/// Whether the certificate's subject alternative names hold `name` as a DNS name,
/// compared whole (ASCII case-insensitively, as DNS does; no wildcards). webpki's own
/// name check cannot serve: it refuses reference names whose last label is all digits
/// or looks like a hex number (IPv4 look-alikes), and "123" is a valid node name.
fn names_member(cert_der: &[u8], name: &str) -> Result<bool, PeerCertError> {
    Ok(dns_names(cert_der)?
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name)))
}

/// The DNS names among the certificate's subject alternative names.
fn dns_names(cert_der: &[u8]) -> Result<Vec<String>, PeerCertError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|_| PeerCertError::Malformed)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| PeerCertError::Malformed)?;
    Ok(san
        .into_iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|g| match g {
            GeneralName::DNSName(n) => Some((*n).to_owned()),
            _ => None,
        })
        .collect())
}

/// Maps webpki's reasons onto the ones counted.
fn refusal(e: webpki::Error) -> PeerCertError {
    use webpki::Error as E;
    match e {
        E::CertExpired { .. } => PeerCertError::Expired,
        E::CertNotValidYet { .. } => PeerCertError::NotYetValid,
        E::CertNotValidForName(_) => PeerCertError::NameMismatch,
        // No path to the anchor: another issuer, or the issuer's name with another key
        // (two clusters' CAs share a subject name).
        E::UnknownIssuer
        | E::InvalidSignatureForPublicKey
        | E::SignatureAlgorithmMismatch
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => PeerCertError::ForeignCa,
        E::CaUsedAsEndEntity | E::EndEntityUsedAsCa | E::RequiredEkuNotFoundContext(_) => {
            PeerCertError::NotANodeCert
        }
        _ => PeerCertError::Malformed,
    }
}

fn ca_params(validity: Validity) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    // Path length 0: the CA signs node certificates, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, validity)?;
    Ok(params)
}

fn node_params(node: &str, validity: Validity) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(vec![node.to_owned()])
        .with_context(|| format!("{node:?} as a certificate name"))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity)?;
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, validity: Validity) -> Result<()> {
    params.not_before = date_time(validity.not_before)?;
    params.not_after = date_time(validity.not_after)?;
    Ok(())
}

fn date_time(t: SystemTime) -> Result<time::OffsetDateTime> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .context("a certificate time before 1970")?
        .as_secs();
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .context("a certificate time out of range")
}

/// Creates `dir` (and its parents) as 0700 if it does not exist; an existing directory is
/// left as it is.
fn create_dir_private(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Replaces `path` with `bytes` through a temporary file created with mode 0600 (never
/// readable by anyone else, not even before a chmod), fsync, rename, fsync of the
/// directory.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::write_atomic_mode(path, bytes, 0o600)
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>> {
    read_bounded(open_regular(path)?, path)
}

/// Opens a regular file without blocking on a FIFO.
fn open_regular(path: &Path) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if !file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .is_file()
    {
        bail!("{} is not a regular file", path.display());
    }
    Ok(file)
}

fn read_bounded(file: std::fs::File, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        bail!(
            "{} is longer than {MAX_PEM_FILE} bytes; it should hold one PEM key or certificate",
            path.display()
        );
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
