//! The keyring every datagram and stream payload is sealed with.
//!
//! ```text
//! sealed: version u8 (=2) | nonce [24] | XChaCha20-Poly1305(plaintext) | tag [16]
//! associated data: "overlayd-gossip" | version | cluster name
//! nonce: per-boot random salt [16] | send counter u64
//! ```
//! XChaCha20-Poly1305 because every node encrypts under the same cluster key: nonces
//! must be unique across all nodes and boots, not just within one sender. The 192-bit
//! nonce has room for a 128-bit per-boot salt (random, from the seeded RNG, with the
//! boot generation mixed in) plus a counter that never repeats within a boot, so no
//! coordination is needed and a collision needs two boots to draw the same salt. With
//! ChaCha20-Poly1305's 96-bit nonce, a counter alone would collide across nodes and a
//! random nonce would reach the birthday bound far sooner.
//!
//! The primary key seals; every installed key opens, primary first. Rotation without
//! downtime: install the new key everywhere, make it primary everywhere, remove the old.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

/// Version of the sealed format, the first byte of every datagram and stream payload.
/// 2: the envelope names its recipient (version 1 nodes and this one cannot talk).
pub const SEAL_VERSION: u8 = 2;
/// Bytes sealing adds to a plaintext: version, nonce and tag.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const AAD_PREFIX: &[u8] = b"overlayd-gossip";

/// A 256-bit cluster key.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub [u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material: a short fingerprint names the key in logs.
        write!(f, "SecretKey({:016x})", self.fingerprint())
    }
}

impl SecretKey {
    /// A non-secret identifier of the key (a hash), for logs and the API.
    pub fn fingerprint(&self) -> u64 {
        super::codec::stable_hash(&[b"overlayd-key-fingerprint", &self.0])
    }
}

/// Why a keyring operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("key {0:016x} is not installed; install it on this node first")]
    NotInstalled(u64),
    #[error(
        "key {0:016x} is the primary key; make another key primary (use_primary) before removing it"
    )]
    RemovePrimary(u64),
    #[error("a keyring needs at least one key")]
    Empty,
}

/// Why sealed bytes could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Shorter than version, nonce and tag.
    Truncated,
    /// First byte is not a version we speak.
    UnknownVersion,
    /// No installed key opens it, or it was sealed for another cluster name.
    DecryptFailed,
}

/// The installed keys; the primary one seals.
#[derive(Clone)]
pub struct Keyring {
    /// Index 0 is the primary.
    keys: Vec<(SecretKey, Cipher)>,
    /// Test-only: keys added later use the fast insecure stand-in too.
    #[cfg(test)]
    insecure: bool,
}

/// The AEAD behind one key.
#[derive(Clone)]
enum Cipher {
    XChaCha(XChaCha20Poly1305),
    /// Simulation stand-in for long runs in debug builds, where ChaCha dominates the run
    /// time: authenticates with a keyed hash (same overhead, same key semantics) but
    /// neither encrypts nor resists an attacker. Never compiled outside tests.
    #[cfg(test)]
    Insecure([u8; 32]),
}

impl Cipher {
    fn new(key: &SecretKey, _insecure: bool) -> Self {
        #[cfg(test)]
        if _insecure {
            return Cipher::Insecure(key.0);
        }
        Cipher::XChaCha(XChaCha20Poly1305::new(&Key::from(key.0)))
    }

    fn seal(&self, nonce: &XNonce, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        match self {
            // Encryption only fails for plaintexts beyond 2^38 bytes.
            Cipher::XChaCha(c) => c
                .encrypt(
                    nonce,
                    Payload {
                        msg: plaintext,
                        aad,
                    },
                )
                .unwrap_or_default(),
            #[cfg(test)]
            Cipher::Insecure(key) => {
                let mut out = plaintext.to_vec();
                out.extend_from_slice(&insecure_tag(key, nonce, aad, plaintext));
                out
            }
        }
    }

    fn open(&self, nonce: &XNonce, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        match self {
            Cipher::XChaCha(c) => c.decrypt(nonce, Payload { msg: sealed, aad }).ok(),
            #[cfg(test)]
            Cipher::Insecure(key) => {
                let (plaintext, tag) = sealed.split_at(sealed.len().checked_sub(TAG_LEN)?);
                (insecure_tag(key, nonce, aad, plaintext)[..] == *tag).then(|| plaintext.to_vec())
            }
        }
    }
}

#[cfg(test)]
fn insecure_tag(key: &[u8; 32], nonce: &XNonce, aad: &[u8], plaintext: &[u8]) -> [u8; TAG_LEN] {
    let a = super::codec::stable_hash(&[b"a", key, nonce, aad, plaintext]);
    let b = super::codec::stable_hash(&[b"b", key, nonce, aad, plaintext]);
    let mut tag = [0u8; TAG_LEN];
    tag[..8].copy_from_slice(&a.to_be_bytes());
    tag[8..].copy_from_slice(&b.to_be_bytes());
    tag
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Keyring {
    /// A keyring holding only `primary`.
    pub fn new(primary: SecretKey) -> Self {
        let cipher = Cipher::new(&primary, false);
        Keyring {
            keys: vec![(primary, cipher)],
            #[cfg(test)]
            insecure: false,
        }
    }

    /// Test-only keyring with the fast insecure stand-in cipher (see `Cipher::Insecure`).
    #[cfg(test)]
    pub(crate) fn insecure_for_tests(primary: SecretKey) -> Self {
        let cipher = Cipher::new(&primary, true);
        Keyring {
            keys: vec![(primary, cipher)],
            insecure: true,
        }
    }

    fn is_insecure(&self) -> bool {
        #[cfg(test)]
        return self.insecure;
        #[cfg(not(test))]
        false
    }

    pub fn primary(&self) -> &SecretKey {
        &self.keys[0].0
    }

    /// Every installed key, primary first.
    pub fn keys(&self) -> impl Iterator<Item = &SecretKey> {
        self.keys.iter().map(|(k, _)| k)
    }

    /// Installs `key` for opening; installing a key twice is a no-op.
    pub fn install(&mut self, key: SecretKey) {
        if !self.keys.iter().any(|(k, _)| *k == key) {
            let cipher = Cipher::new(&key, self.is_insecure());
            self.keys.push((key, cipher));
        }
    }

    /// Makes an installed key the one that seals. Returns `Err` iff `key` is not installed.
    pub fn use_primary(&mut self, key: &SecretKey) -> Result<(), KeyringError> {
        let i = self
            .keys
            .iter()
            .position(|(k, _)| k == key)
            .ok_or(KeyringError::NotInstalled(key.fingerprint()))?;
        self.keys.swap(0, i);
        Ok(())
    }

    /// Removes `key`. Returns `Err` iff it is the primary or not installed.
    pub fn remove(&mut self, key: &SecretKey) -> Result<(), KeyringError> {
        if self.keys[0].0 == *key {
            return Err(KeyringError::RemovePrimary(key.fingerprint()));
        }
        let i = self
            .keys
            .iter()
            .position(|(k, _)| k == key)
            .ok_or(KeyringError::NotInstalled(key.fingerprint()))?;
        self.keys.remove(i);
        Ok(())
    }

    /// Makes the keyring exactly `keys`, the first primary (a reloaded key list). Keys
    /// kept across the change keep working throughout. Returns `Err` iff `keys` is empty,
    /// leaving the keyring as it was.
    pub fn replace(&mut self, keys: &[SecretKey]) -> Result<(), KeyringError> {
        let Some(primary) = keys.first() else {
            return Err(KeyringError::Empty);
        };
        for key in keys {
            self.install(key.clone());
        }
        self.use_primary(primary)?;
        let stale: Vec<SecretKey> = self.keys().filter(|k| !keys.contains(k)).cloned().collect();
        for key in stale {
            self.remove(&key)?;
        }
        Ok(())
    }

    /// Seals `plaintext` with the primary key.
    pub(crate) fn seal(&self, cluster: &str, nonce: [u8; NONCE_LEN], plaintext: &[u8]) -> Vec<u8> {
        let aad = associated_data(cluster);
        let nonce = XNonce::from(nonce);
        let sealed = self.keys[0].1.seal(&nonce, &aad, plaintext);
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens `bytes` with the first installed key that authenticates them.
    pub(crate) fn open(&self, cluster: &str, bytes: &[u8]) -> Result<Vec<u8>, OpenError> {
        let Some((&version, rest)) = bytes.split_first() else {
            return Err(OpenError::Truncated);
        };
        if version != SEAL_VERSION {
            return Err(OpenError::UnknownVersion);
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Truncated);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| OpenError::Truncated)?;
        let aad = associated_data(cluster);
        self.keys
            .iter()
            .find_map(|(_, cipher)| cipher.open(&nonce, &aad, ciphertext))
            .ok_or(OpenError::DecryptFailed)
    }
}

fn associated_data(cluster: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + 1 + cluster.len());
    aad.extend_from_slice(AAD_PREFIX);
    aad.push(SEAL_VERSION);
    aad.extend_from_slice(cluster.as_bytes());
    aad
}

/// Unique nonces for one boot: a random salt and a counter. The counter doubles as the
/// envelope's replay sequence number.
#[derive(Debug, Clone)]
pub(crate) struct NonceSource {
    salt: [u8; 16],
    counter: u64,
}

impl NonceSource {
    pub(crate) fn new(salt: [u8; 16]) -> Self {
        NonceSource { salt, counter: 0 }
    }

    /// The next sequence number and the nonce built from it; never repeats.
    pub(crate) fn next(&mut self) -> (u64, [u8; NONCE_LEN]) {
        self.counter += 1;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..16].copy_from_slice(&self.salt);
        nonce[16..].copy_from_slice(&self.counter.to_be_bytes());
        (self.counter, nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey([b; 32])
    }

    #[test]
    fn seal_open_roundtrip_and_overhead() {
        let ring = Keyring::new(key(1));
        let sealed = ring.seal("c", [7; 24], b"hello");
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(ring.open("c", &sealed).unwrap(), b"hello");
    }

    #[test]
    fn wrong_key_wrong_cluster_tampering_fail() {
        let ring = Keyring::new(key(1));
        let sealed = ring.seal("c", [7; 24], b"hello");
        assert_eq!(
            Keyring::new(key(2)).open("c", &sealed),
            Err(OpenError::DecryptFailed)
        );
        assert_eq!(ring.open("other", &sealed), Err(OpenError::DecryptFailed));
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(ring.open("c", &bad), Err(OpenError::DecryptFailed));
        bad[0] = 9;
        assert_eq!(ring.open("c", &bad), Err(OpenError::UnknownVersion));
        assert_eq!(ring.open("c", &sealed[..20]), Err(OpenError::Truncated));
        assert_eq!(ring.open("c", &[]), Err(OpenError::Truncated));
    }

    #[test]
    fn rotation_without_downtime() {
        let mut a = Keyring::new(key(1));
        let mut b = Keyring::new(key(1));
        // 1. install the new key everywhere: both still seal with the old one.
        a.install(key(2));
        b.install(key(2));
        // 2. switch primaries one node at a time: each opens the other's packets.
        a.use_primary(&key(2)).unwrap();
        assert_eq!(b.open("c", &a.seal("c", [1; 24], b"x")).unwrap(), b"x");
        assert_eq!(a.open("c", &b.seal("c", [2; 24], b"y")).unwrap(), b"y");
        b.use_primary(&key(2)).unwrap();
        // 3. remove the old key.
        assert_eq!(
            a.remove(&key(2)),
            Err(KeyringError::RemovePrimary(key(2).fingerprint()))
        );
        a.remove(&key(1)).unwrap();
        b.remove(&key(1)).unwrap();
        assert_eq!(a.open("c", &b.seal("c", [3; 24], b"z")).unwrap(), b"z");
        assert_eq!(
            a.use_primary(&key(1)),
            Err(KeyringError::NotInstalled(key(1).fingerprint()))
        );
        assert_eq!(
            a.remove(&key(1)),
            Err(KeyringError::NotInstalled(key(1).fingerprint()))
        );
    }

    #[test]
    fn nonces_never_repeat_within_a_boot() {
        let mut n = NonceSource::new([9; 16]);
        let (s1, n1) = n.next();
        let (s2, n2) = n.next();
        assert_eq!((s1, s2), (1, 2));
        assert_ne!(n1, n2);
    }

    #[test]
    fn insecure_test_cipher_keeps_key_semantics() {
        let a = Keyring::insecure_for_tests(key(1));
        let sealed = a.seal("c", [7; 24], b"hello");
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(a.open("c", &sealed).unwrap(), b"hello");
        assert_eq!(
            Keyring::insecure_for_tests(key(2)).open("c", &sealed),
            Err(OpenError::DecryptFailed)
        );
        assert_eq!(a.open("d", &sealed), Err(OpenError::DecryptFailed));
    }

    #[test]
    fn debug_never_prints_key_material() {
        let s = format!("{:?}", Keyring::new(key(0xab)));
        assert!(!s.contains("171"), "{s}");
        assert!(!s.to_lowercase().contains("abab"), "{s}");
    }

    #[test]
    fn replace_makes_the_keyring_exactly_the_list() {
        let mut ring = Keyring::new(key(1));
        ring.install(key(2));
        ring.replace(&[key(3), key(2)]).unwrap();
        assert_eq!(ring.primary(), &key(3));
        assert_eq!(
            ring.keys().cloned().collect::<Vec<_>>(),
            vec![key(3), key(2)]
        );
        assert_eq!(ring.replace(&[]), Err(KeyringError::Empty));
        assert_eq!(ring.primary(), &key(3), "a refused replace changes nothing");
    }
}
