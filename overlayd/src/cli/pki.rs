//! What `overlayd ca init` and `overlayd cert issue` print.

use std::time::UNIX_EPOCH;

use anyhow::{Result, bail};

use crate::api::Revocations;
use crate::pki::{Fingerprint, Written};

/// What `overlayd cert revoke ARG` revokes: ARG as a fingerprint, else as a certificate
/// file; neither is an error saying both.
pub fn revocation_target(arg: &str) -> Result<Fingerprint> {
    let parsed = arg.parse::<Fingerprint>();
    if let Ok(fp) = parsed {
        return Ok(fp);
    }
    let path = std::path::Path::new(arg);
    if path.exists() {
        return crate::pki::cert_file_fingerprint(path);
    }
    bail!(
        "{arg:?} is neither a certificate fingerprint (64 hex digits, SHA-256 of the DER, as \
         `overlayd cert issue` prints it) nor a certificate file"
    )
}

/// The revocations list; with `revoked`, a first line saying it is in force.
pub fn revoked_text(revoked: Option<&Fingerprint>, r: &Revocations) -> String {
    let mut out = String::new();
    if let Some(fp) = revoked {
        out.push_str(&format!(
            "revoked sha256:{fp} cluster-wide (every daemon closes its tunnels to it and refuses it)\n"
        ));
    }
    if r.revoked.is_empty() {
        out.push_str("no revoked certificates\n");
        return out;
    }
    out.push_str(&format!("{:<64}  {:<16}  AT (UTC)\n", "FINGERPRINT", "BY"));
    for rev in &r.revoked {
        let at = UNIX_EPOCH + std::time::Duration::from_millis(rev.at_ms);
        out.push_str(&format!(
            "{:<64}  {:<16}  {}\n",
            rev.fingerprint.to_string(),
            if rev.by.is_empty() { "-" } else { &rev.by },
            utc(at)
        ));
    }
    out
}

/// The files written, the fingerprint (what a revocation names) and the validity.
pub fn written_text(what: &str, w: &Written) -> String {
    format!(
        "wrote the {what} certificate {} and key {} (mode 0600)\n\
         fingerprint sha256:{}\n\
         valid from {} to {} UTC\n",
        w.cert.display(),
        w.key.display(),
        w.fingerprint,
        utc(w.validity.not_before),
        utc(w.validity.not_after),
    )
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
fn utc(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .try_into()
        .unwrap_or(i64::MAX);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{secs} s after 1970"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_revocation_names_a_fingerprint_or_a_certificate_file() {
        let fp = "ab".repeat(32);
        assert_eq!(revocation_target(&fp).unwrap().to_string(), fp);
        assert_eq!(
            revocation_target(&format!("sha256:{}", fp.to_uppercase()))
                .unwrap()
                .to_string(),
            fp
        );
        for bad in ["abc", "/nonexistent/n1.pem", ""] {
            let e = revocation_target(bad).unwrap_err().to_string();
            assert!(e.contains("neither a certificate fingerprint"), "{e}");
        }
        // A file that is no certificate says so.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.pem");
        std::fs::write(&file, "hello").unwrap();
        let e = format!(
            "{:#}",
            revocation_target(file.to_str().unwrap()).unwrap_err()
        );
        assert!(e.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn dates_print_in_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_764_549_000);
        assert_eq!(utc(t), "2025-12-01 00:30:00");
    }
}
