//! Each test makes a CA and node certificates in a temporary directory, then checks one
//! way a peer certificate is accepted or refused.

use super::*;

use std::os::unix::fs::PermissionsExt;

const DAY: Duration = Duration::from_secs(86_400);

/// A CA in `dir/name` valid around `now`.
fn ca(dir: &Path, name: &str, now: SystemTime) -> (PathBuf, Ca) {
    let ca_dir = dir.join(name);
    init_ca(&ca_dir, Validity::days_from(now, 30), false).unwrap();
    let ca = Ca::load(&ca_dir.join(CA_CERT_FILE)).unwrap();
    (ca_dir, ca)
}

fn cert_der(written: &Written) -> Vec<u8> {
    let pem = std::fs::read(&written.cert).unwrap();
    CertificateDer::from_pem_slice(&pem).unwrap().to_vec()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn an_issued_certificate_verifies_for_its_node() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let (ca_dir, ca) = ca(tmp.path(), "ca", now);
    let out = tmp.path().join("certs");

    let n1 = issue_cert("n1", &ca_dir, &out, Validity::days_from(now, 10)).unwrap();

    assert_eq!(n1.cert, out.join("n1.pem"));
    assert_eq!(mode(&n1.key), 0o600);
    assert_eq!(mode(&ca_dir.join(CA_KEY_FILE)), 0o600);
    let der = cert_der(&n1);
    assert_eq!(fingerprint(&der), n1.fingerprint);
    assert_eq!(
        verify_peer(&ca, &RevocationList::new(), &der, "n1", now),
        Ok(())
    );
    let identity = NodeIdentity::load(&ca, "n1", &n1.cert, &n1.key, now).unwrap();
    assert_eq!(identity.fingerprint, n1.fingerprint);
}

#[test]
fn a_certificate_from_another_ca_is_foreign() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let (_, ours) = ca(tmp.path(), "ours", now);
    let (theirs_dir, _) = ca(tmp.path(), "theirs", now);
    let n1 = issue_cert(
        "n1",
        &theirs_dir,
        &tmp.path().join("out"),
        Validity::days_from(now, 10),
    )
    .unwrap();

    let result = verify_peer(&ours, &RevocationList::new(), &cert_der(&n1), "n1", now);

    // Both CAs have the same subject name: the signature, not the name, tells them apart.
    assert_eq!(result, Err(PeerCertError::ForeignCa));
}

#[test]
fn a_certificate_for_another_node_is_a_name_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let (ca_dir, ca) = ca(tmp.path(), "ca", now);
    let n2 = issue_cert(
        "n2",
        &ca_dir,
        &tmp.path().join("out"),
        Validity::days_from(now, 10),
    )
    .unwrap();

    let result = verify_peer(&ca, &RevocationList::new(), &cert_der(&n2), "n1", now);

    assert_eq!(result, Err(PeerCertError::NameMismatch));
}

#[test]
fn certificates_outside_their_validity_are_expired_or_not_yet_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let (ca_dir, ca) = ca(tmp.path(), "ca", now);
    let out = tmp.path().join("out");
    let past = Validity {
        not_before: now - 20 * DAY,
        not_after: now - 10 * DAY,
    };
    let future = Validity {
        not_before: now + 10 * DAY,
        not_after: now + 20 * DAY,
    };

    let old = cert_der(&issue_cert("n1", &ca_dir, &out, past).unwrap());
    let early = cert_der(&issue_cert("n2", &ca_dir, &out, future).unwrap());

    let none = RevocationList::new();
    assert_eq!(
        verify_peer(&ca, &none, &old, "n1", now),
        Err(PeerCertError::Expired)
    );
    assert_eq!(
        verify_peer(&ca, &none, &early, "n2", now),
        Err(PeerCertError::NotYetValid)
    );
    assert_eq!(verify_peer(&ca, &none, &old, "n1", now - 15 * DAY), Ok(()));
}

#[test]
fn a_revoked_fingerprint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let (ca_dir, ca) = ca(tmp.path(), "ca", now);
    let validity = Validity::days_from(now, 10);
    let old = issue_cert("n1", &ca_dir, &tmp.path().join("old"), validity).unwrap();
    let renewed = issue_cert("n1", &ca_dir, &tmp.path().join("new"), validity).unwrap();
    let revoked: RevocationList = [old.fingerprint].into_iter().collect();

    let result = verify_peer(&ca, &revoked, &cert_der(&old), "n1", now);

    assert_eq!(result, Err(PeerCertError::Revoked));
    // Another certificate of the same node is not affected.
    assert_eq!(
        verify_peer(&ca, &revoked, &cert_der(&renewed), "n1", now),
        Ok(())
    );
}

#[test]
fn the_ca_certificate_itself_is_not_a_node_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let (_, ca) = ca(tmp.path(), "ca", now);

    let result = verify_peer(&ca, &RevocationList::new(), ca.cert_der(), "n1", now);

    assert_eq!(result, Err(PeerCertError::NotANodeCert));
    assert_eq!(
        verify_peer(&ca, &RevocationList::new(), b"not a certificate", "n1", now),
        Err(PeerCertError::Malformed)
    );
}

#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let (ca_dir, ca) = ca(tmp.path(), "ca", now);
    let n1 = issue_cert(
        "n1",
        &ca_dir,
        &tmp.path().join("out"),
        Validity::days_from(now, 10),
    )
    .unwrap();
    std::fs::set_permissions(&n1.key, std::fs::Permissions::from_mode(0o644)).unwrap();

    let err = NodeIdentity::load(&ca, "n1", &n1.cert, &n1.key, now).unwrap_err();

    let text = crate::error_text(&err);
    let key = n1.key.display().to_string();
    assert!(text.contains(&key), "{text}");
    assert!(text.contains("mode 0644"), "{text}");
    assert!(text.contains(&format!("chmod 600 {key}")), "{text}");
    // The CA key is held to the same rule when signing.
    let ca_key = ca_dir.join(CA_KEY_FILE);
    std::fs::set_permissions(&ca_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = issue_cert("n2", &ca_dir, tmp.path(), Validity::days_from(now, 1)).unwrap_err();
    assert!(crate::error_text(&err).contains("chmod 600"), "{err:#}");
}

#[test]
fn ca_init_twice_is_refused_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let dir = tmp.path().join("ca");
    let first = init_ca(&dir, Validity::days_from(now, 30), false).unwrap();

    let err = init_ca(&dir, Validity::days_from(now, 30), false).unwrap_err();

    assert!(crate::error_text(&err).contains("--force"), "{err:#}");
    assert_eq!(
        Ca::load(&first.cert).unwrap().fingerprint(),
        first.fingerprint,
        "the refused init left the CA alone"
    );
    let second = init_ca(&dir, Validity::days_from(now, 30), true).unwrap();
    assert_ne!(second.fingerprint, first.fingerprint);
    assert_eq!(mode(&second.key), 0o600);
}

#[test]
fn a_node_name_that_is_not_a_member_name_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let (ca_dir, _) = ca(tmp.path(), "ca", now);

    for bad in ["N1", "a.b", "../n1", ""] {
        let err = issue_cert(bad, &ca_dir, tmp.path(), Validity::days_from(now, 1)).unwrap_err();
        assert!(
            crate::error_text(&err).contains("is not a node name"),
            "{err:#}"
        );
    }
}

#[test]
fn every_member_name_form_round_trips_through_a_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let (ca_dir, ca) = ca(tmp.path(), "ca", now);
    let longest = "a".repeat(63);

    for name in ["0", "123", "0x1f", "n-1", "1n", longest.as_str()] {
        let w = issue_cert(name, &ca_dir, tmp.path(), Validity::days_from(now, 1)).unwrap();
        let der = cert_der(&w);
        assert_eq!(
            verify_peer(&ca, &RevocationList::new(), &der, name, now),
            Ok(()),
            "{name}"
        );
        assert_eq!(member_name(&der).as_deref(), Ok(name));
    }
    assert_eq!(
        member_name(ca.cert_der()),
        Err(PeerCertError::NameMismatch),
        "the CA certificate names no member"
    );
}

#[test]
fn a_node_certificate_never_outlives_its_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let (ca_dir, ca) = ca(tmp.path(), "ca", now);

    let w = issue_cert("n1", &ca_dir, tmp.path(), Validity::days_from(now, 365)).unwrap();

    let ca_end = now + 30 * DAY;
    let slack = Duration::from_secs(2);
    assert!(w.validity.not_after <= ca_end + slack && w.validity.not_after + slack >= ca_end);
    let der = cert_der(&w);
    assert_eq!(not_after(&der), not_after(ca.cert_der()));
    let none = RevocationList::new();
    assert_eq!(verify_peer(&ca, &none, &der, "n1", now + 29 * DAY), Ok(()));
    assert_eq!(
        verify_peer(&ca, &none, &der, "n1", now + 31 * DAY),
        Err(PeerCertError::Expired)
    );
}

#[test]
fn a_ca_key_that_does_not_belong_to_the_ca_certificate_is_caught_at_issue() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let (ours, _) = ca(tmp.path(), "ours", now);
    let (theirs, _) = ca(tmp.path(), "theirs", now);
    std::fs::copy(theirs.join(CA_KEY_FILE), ours.join(CA_KEY_FILE)).unwrap();

    let err = issue_cert("n1", &ours, tmp.path(), Validity::days_from(now, 1)).unwrap_err();

    let text = crate::error_text(&err);
    assert!(text.contains("does not belong to it"), "{text}");
    assert!(!tmp.path().join("n1.pem").exists());
}
