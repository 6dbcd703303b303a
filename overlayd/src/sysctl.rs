//! Kernel settings under /proc/sys, read first and written only when they must change:
//! in a container /proc/sys is read-only unless the engine is told otherwise, and a
//! setting the engine already made (`docker run --sysctl …`, compose `sysctls:`) must not
//! stop the daemon. A setting that is wrong and cannot be written is an error that names
//! the option that sets it.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// What [`Sysctls::ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// It already had the value.
    Already,
    /// It was written.
    Written,
}

/// /proc/sys, or a directory standing in for it in tests.
#[derive(Debug, Clone)]
pub struct Sysctls {
    root: PathBuf,
}

impl Sysctls {
    /// The kernel's, as this process's network namespace sees them.
    pub fn kernel() -> Self {
        Sysctls::at("/proc/sys")
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Sysctls { root: root.into() }
    }

    fn path(&self, key: &[&str]) -> PathBuf {
        key.iter().fold(self.root.clone(), |p, part| p.join(part))
    }

    /// The value of `key` (its path segments: `["net", "ipv4", "ip_forward"]`), trimmed.
    pub fn get(&self, key: &[&str]) -> io::Result<String> {
        Ok(std::fs::read_to_string(self.path(key))?.trim().to_owned())
    }

    /// Makes `key` hold `want`: nothing is written when it already does. When it does not
    /// and cannot be written, the error says what to set and how (`how`, e.g. the
    /// container option), and why writing failed.
    pub fn ensure(&self, key: &[&str], want: &str, how: &str) -> Result<Ensured> {
        let name = key.join(".");
        let current = self.get(key);
        if current.as_deref().ok() == Some(want) {
            return Ok(Ensured::Already);
        }
        match std::fs::write(self.path(key), want) {
            Ok(()) => Ok(Ensured::Written),
            Err(e) => {
                let is = match &current {
                    Ok(v) => format!("is {v}"),
                    Err(r) => format!("cannot be read ({r})"),
                };
                bail!(
                    "{name} {is} and must be {want}, but it cannot be written ({e}{}): {how}",
                    read_only_hint(&self.root, &e)
                )
            }
        }
    }
}

/// Why a write to /proc/sys fails in a container.
fn read_only_hint(root: &Path, e: &io::Error) -> &'static str {
    let read_only =
        e.raw_os_error() == Some(libc::EROFS) || e.kind() == io::ErrorKind::PermissionDenied;
    if read_only && root == Path::new("/proc/sys") {
        "; /proc/sys is read-only in a container unless the engine sets the value"
    } else {
        ""
    }
}

/// How to give a container the IPv4 forwarding the daemon needs.
pub const IP_FORWARD_HOW: &str = "run the container with `--sysctl net.ipv4.ip_forward=1` \
     (docker-compose: `sysctls: [net.ipv4.ip_forward=1]`), or set it on the host";

/// How to give a container reverse-path filtering on the bridge.
pub const RP_FILTER_HOW: &str = "run the container with `--sysctl \
     net.ipv4.conf.all.rp_filter=1` (docker-compose: `sysctls: \
     [net.ipv4.conf.all.rp_filter=1]`): the bridge is then filtered whatever its own value";

/// Makes strict reverse-path filtering apply to `dev`. The kernel uses the larger of
/// `conf.all.rp_filter` and the device's own (0 off, 1 strict, 2 loose), so nothing is
/// written when the two already give 1 (`all` at 1 covers the bridge, which is what a
/// container can be started with). Loose is not enough: a pod's packet with a node's
/// underlay address as its source passes a loose check (the address is reachable, through
/// the underlay); but `all` at 2 is many distributions' default (systemd's sysctl.d), which
/// the device cannot override: the daemon then says so and runs (the nftables guard on the
/// tunnel and gossip ports still holds), rather than refusing to start on a stock host.
pub fn ensure_rp_filter(sysctls: &Sysctls, dev: &str) -> Result<Ensured> {
    let value = |key: &[&str]| {
        sysctls
            .get(key)
            .ok()
            .and_then(|v| v.parse::<u8>().ok())
            .unwrap_or(0)
    };
    let all = value(&["net", "ipv4", "conf", "all", "rp_filter"]);
    let own = value(&["net", "ipv4", "conf", dev, "rp_filter"]);
    if all.max(own) == 1 {
        return Ok(Ensured::Already);
    }
    if all == 2 {
        tracing::warn!(
            bridge = dev,
            "net.ipv4.conf.all.rp_filter is 2 (loose), which makes every device's reverse-path \
             filter loose: pods can send with source addresses routed elsewhere; set it to 1 \
             (or 0, and the daemon makes the bridge's own strict)"
        );
        if own == 1 {
            return Ok(Ensured::Already);
        }
    }
    sysctls.ensure(
        &["net", "ipv4", "conf", dev, "rp_filter"],
        "1",
        RP_FILTER_HOW,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A /proc/sys stand-in with `values`, every file last modified at a fixed time in
    /// the past (so a write shows).
    fn tree(values: &[(&str, &str)]) -> (tempfile::TempDir, Sysctls) {
        let dir = tempfile::tempdir().unwrap();
        for (key, value) in values {
            let path = dir.path().join(key.replace('.', "/"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, format!("{value}\n")).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(PAST)
                .unwrap();
        }
        let sysctls = Sysctls::at(dir.path());
        (dir, sysctls)
    }

    const PAST: std::time::SystemTime = std::time::UNIX_EPOCH;

    fn written(s: &Sysctls, key: &[&str]) -> bool {
        std::fs::metadata(s.path(key)).unwrap().modified().unwrap() != PAST
    }

    #[test]
    fn a_value_already_set_is_not_written() {
        let (_dir, s) = tree(&[("net.ipv4.ip_forward", "1")]);
        let key = ["net", "ipv4", "ip_forward"];
        assert_eq!(
            s.ensure(&key, "1", IP_FORWARD_HOW).unwrap(),
            Ensured::Already
        );
        assert!(!written(&s, &key));
    }

    #[test]
    fn a_wrong_value_is_written() {
        let (_dir, s) = tree(&[("net.ipv4.ip_forward", "0")]);
        let key = ["net", "ipv4", "ip_forward"];
        assert_eq!(
            s.ensure(&key, "1", IP_FORWARD_HOW).unwrap(),
            Ensured::Written
        );
        assert_eq!(s.get(&key).unwrap(), "1");
    }

    /// A wrong value that cannot be written (here: the path is a directory) is an error
    /// that names the setting, its value and the option that sets it.
    #[test]
    fn a_wrong_value_that_cannot_be_written_names_the_option() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net/ipv4/ip_forward")).unwrap();
        let s = Sysctls::at(dir.path());
        let err = s
            .ensure(&["net", "ipv4", "ip_forward"], "1", IP_FORWARD_HOW)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("net.ipv4.ip_forward cannot be read"),
            "{err}"
        );
        assert!(err.contains("--sysctl net.ipv4.ip_forward=1"), "{err}");
    }

    #[test]
    fn strict_rp_filter_on_all_covers_the_bridge_without_a_write() {
        let (_dir, s) = tree(&[
            ("net.ipv4.conf.all.rp_filter", "1"),
            ("net.ipv4.conf.ovl0.rp_filter", "0"),
        ]);
        assert_eq!(ensure_rp_filter(&s, "ovl0").unwrap(), Ensured::Already);
        assert!(!written(&s, &["net", "ipv4", "conf", "ovl0", "rp_filter"]));

        let (_dir, s) = tree(&[
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.ovl0.rp_filter", "0"),
        ]);
        assert_eq!(ensure_rp_filter(&s, "ovl0").unwrap(), Ensured::Written);
        assert_eq!(
            s.get(&["net", "ipv4", "conf", "ovl0", "rp_filter"])
                .unwrap(),
            "1"
        );
    }

    /// Loose filtering on `all` (many distributions' default) cannot be made strict from
    /// the device: the daemon runs on (with a warning), the device's own value set.
    #[test]
    fn loose_rp_filter_on_all_is_not_fatal() {
        let (_dir, s) = tree(&[
            ("net.ipv4.conf.all.rp_filter", "2"),
            ("net.ipv4.conf.ovl0.rp_filter", "0"),
        ]);
        assert_eq!(ensure_rp_filter(&s, "ovl0").unwrap(), Ensured::Written);
        assert_eq!(
            s.get(&["net", "ipv4", "conf", "ovl0", "rp_filter"])
                .unwrap(),
            "1"
        );
    }
}
