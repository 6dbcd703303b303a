//! Mutual TLS for the QUIC tunnels: the verifiers that put every peer certificate through
//! [`pki::verify_peer`], and the certificate resolvers that present this node's identity.
//!
//! Everything reads the [`Trust`] behind one `ArcSwap`, so a reload (new CA, new node
//! certificate, new revocation list) applies to the next handshake without rebuilding the
//! rustls configurations; live connections are re-checked by the transport.
//!
//! - Dialing side: [`DialedPeerVerifier`] (a `ServerCertVerifier`) knows the member it
//!   dialed and checks the certificate for that name. The SNI it sends is not a member
//!   name (rustls refuses names such as `123`); it is `a<attempt>.overlayd`, carrying the
//!   dial attempt to the acceptor, and the verifier ignores it.
//! - Accepting side: [`MemberVerifier`] (a `ClientCertVerifier`) requires a client
//!   certificate, takes the member it names ([`pki::member_name`]) and checks it for that
//!   name. Whether that member is wanted and is the pair's dialer is checked after the
//!   handshake by the transport.
//! - Handshake signatures (the proof that the peer holds the certificate's key): rustls'
//!   ring provider, TLS 1.3 only.
//! - No session resumption: a resumed TLS 1.3 session skips the certificate check, so a
//!   revoked peer could come back on a ticket.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::pki::{self, Ca, Fingerprint, NodeIdentity, PeerCertError, RevocationList};

/// The one application protocol the tunnels speak.
pub const ALPN: &[u8] = b"overlayd/1";
/// The domain of the SNI a dialer sends (`a<attempt>.overlayd`); never a member name.
pub const SNI_DOMAIN: &str = "overlayd";

/// What the verifiers trust and the resolvers present; replaced whole on reload.
pub(crate) struct Trust {
    pub(crate) ca: Ca,
    pub(crate) revoked: RevocationList,
    pub(crate) key: Arc<CertifiedKey>,
}

impl Trust {
    pub(crate) fn new(
        provider: &CryptoProvider,
        ca: Ca,
        identity: &NodeIdentity,
        revoked: RevocationList,
    ) -> Result<Self> {
        let signer = provider
            .key_provider
            .load_private_key(identity.key.clone_key())
            .context("this node's private key cannot sign TLS handshakes")?;
        let key = Arc::new(CertifiedKey::new(vec![identity.cert.clone()], signer));
        Ok(Trust { ca, revoked, key })
    }
}

/// One counter per [`PeerCertError::reason`], in the order of [`PeerCertError::ALL`].
#[derive(Debug, Default)]
pub struct RefusalCounters([AtomicU64; PeerCertError::ALL.len()]);

impl RefusalCounters {
    pub fn count(&self, e: PeerCertError) {
        if let Some(i) = PeerCertError::ALL.iter().position(|r| *r == e) {
            self.0[i].fetch_add(1, Relaxed);
        }
    }

    pub fn get(&self, e: PeerCertError) -> u64 {
        PeerCertError::ALL
            .iter()
            .position(|r| *r == e)
            .map_or(0, |i| self.0[i].load(Relaxed))
    }
}

/// Shared by the verifiers, the resolvers and the transport.
pub(crate) struct Tls {
    pub(crate) trust: ArcSwap<Trust>,
    /// The certificate fingerprint each member's gossip record advertises
    /// ([`overlayd_proto::pki::check_advertised`]); members without one are absent.
    pub(crate) advertised: ArcSwap<HashMap<String, Fingerprint>>,
    pub(crate) provider: Arc<CryptoProvider>,
    pub(crate) refusals: RefusalCounters,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("refusals", &self.refusals)
            .finish_non_exhaustive()
    }
}

impl Tls {
    pub(crate) fn new(trust: Trust) -> Arc<Self> {
        Arc::new(Tls {
            trust: ArcSwap::from_pointee(trust),
            advertised: ArcSwap::from_pointee(HashMap::new()),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            refusals: RefusalCounters::default(),
        })
    }

    /// [`pki::verify_peer`] against the current trust, then the fingerprint the member's
    /// gossip record advertises; a refusal is counted and turned into the TLS error
    /// closest to it (the alert the peer gets).
    fn check(&self, cert: &[u8], member: &str, now: UnixTime) -> Result<(), rustls::Error> {
        let trust = self.trust.load();
        let now = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        pki::verify_peer(&trust.ca, &trust.revoked, cert, member, now)
            .and_then(|()| {
                overlayd_proto::pki::check_advertised(
                    self.advertised.load().get(member),
                    &pki::fingerprint(cert),
                )
            })
            .map_err(|e| self.refuse(e))
    }

    fn refuse(&self, e: PeerCertError) -> rustls::Error {
        self.refusals.count(e);
        rustls::Error::InvalidCertificate(match e {
            PeerCertError::Malformed => CertificateError::BadEncoding,
            PeerCertError::ForeignCa => CertificateError::UnknownIssuer,
            PeerCertError::Expired => CertificateError::Expired,
            PeerCertError::NotYetValid => CertificateError::NotValidYet,
            PeerCertError::NameMismatch => CertificateError::NotValidForName,
            PeerCertError::Revoked => CertificateError::Revoked,
            PeerCertError::NotANodeCert => CertificateError::InvalidPurpose,
            PeerCertError::FingerprintMismatch => CertificateError::ApplicationVerificationFailure,
        })
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    /// The rustls client configuration for one dial to `member`: its verifier checks the
    /// certificate for that name.
    pub(crate) fn client_config(self: &Arc<Self>, member: &str) -> Result<rustls::ClientConfig> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 with the ring provider")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(DialedPeerVerifier {
                tls: self.clone(),
                member: member.to_owned(),
            }))
            .with_client_cert_resolver(Arc::new(IdentityResolver(self.clone())));
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(cfg)
    }

    /// The rustls server configuration of the endpoint: a client certificate is required
    /// and checked for the member it names.
    pub(crate) fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 with the ring provider")?
            .with_client_cert_verifier(Arc::new(MemberVerifier(self.clone())))
            .with_cert_resolver(Arc::new(IdentityResolver(self.clone())));
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        Ok(cfg)
    }
}

/// The dialing side's check of the acceptor's certificate: it must name `member`.
#[derive(Debug)]
struct DialedPeerVerifier {
    tls: Arc<Tls>,
    member: String,
}

impl ServerCertVerifier for DialedPeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.tls.check(end_entity, &self.member, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.tls.schemes()
    }
}

/// The accepting side's check of the dialer's certificate, for the member it names.
#[derive(Debug)]
struct MemberVerifier(Arc<Tls>);

impl ClientCertVerifier for MemberVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let member = pki::member_name(end_entity).map_err(|e| self.0.refuse(e))?;
        self.0.check(end_entity, &member, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// Presents the current identity, as client and as server.
#[derive(Debug)]
struct IdentityResolver(Arc<Tls>);

impl rustls::client::ResolvesClientCert for IdentityResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.trust.load().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for IdentityResolver {
    fn resolve(&self, _client_hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.trust.load().key.clone())
    }
}

/// The SNI a dialer sends for dial attempt `attempt`.
pub(crate) fn sni(attempt: u64) -> String {
    format!("a{attempt}.{SNI_DOMAIN}")
}

/// The dial attempt an acceptor reads from the SNI; `None` iff it is not one of ours.
pub(crate) fn attempt_from_sni(sni: &str) -> Option<u64> {
    let label = sni.strip_suffix(SNI_DOMAIN)?.strip_suffix('.')?;
    let digits = label.strip_prefix('a')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A dial attempt number that grows across restarts of this node: microseconds since the
/// epoch, or one more than the last one handed out. An acceptor keeps the higher attempt
/// of two connections from the same dialer, so a restarted dialer's new connection must
/// win over the dead one the acceptor still holds.
pub(crate) fn next_attempt(last: &AtomicU64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let mut prev = last.load(Relaxed);
    loop {
        let next = now.max(prev + 1);
        match last.compare_exchange_weak(prev, next, Relaxed, Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}
