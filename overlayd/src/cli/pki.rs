//! What `overlayd ca init` and `overlayd cert issue` print.

use std::time::UNIX_EPOCH;

use crate::pki::Written;

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
    fn dates_print_in_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_764_549_000);
        assert_eq!(utc(t), "2025-12-01 00:30:00");
    }
}
