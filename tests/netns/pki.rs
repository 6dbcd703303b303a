//! `overlayd ca init` and `overlayd cert issue` as a user runs them. Needs no root:
//! nothing touches the system but a temporary directory.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use anyhow::{Result, ensure};

use crate::support::overlayd_bin;

/// A CA and a node certificate with 0600 keys, then each refusal the CLI
/// owes the user: a second `ca init`, a name that is no member name, a loose CA key.
pub(crate) fn ca_init_and_cert_issue_write_private_keys_and_refuse_mistakes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let run = |args: &[&str]| -> Result<Output> {
        Ok(Command::new(overlayd_bin())
            .current_dir(tmp.path())
            .args(args)
            .output()?)
    };
    let mode = |path: &str| -> Result<u32> {
        Ok(std::fs::metadata(tmp.path().join(path))?
            .permissions()
            .mode()
            & 0o777)
    };

    let out = run(&["ca", "init", "--dir", "ca", "--days", "30"])?;
    ensure!(out.status.success(), "ca init: {}", text(&out.stderr));
    ensure!(
        mode("ca/ca.key")? == 0o600,
        "ca.key mode {:o}",
        mode("ca/ca.key")?
    );

    let again = run(&["ca", "init", "--dir", "ca"])?;
    ensure!(!again.status.success(), "a second ca init replaced the CA");
    ensure!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );

    let out = run(&["cert", "issue", "n1", "--ca-dir", "ca", "--out", "certs"])?;
    ensure!(out.status.success(), "cert issue: {}", text(&out.stderr));
    ensure!(
        text(&out.stdout).contains("fingerprint sha256:"),
        "{}",
        text(&out.stdout)
    );
    ensure!(
        mode("certs/n1.key")? == 0o600,
        "n1.key mode {:o}",
        mode("certs/n1.key")?
    );
    let pem = std::fs::read_to_string(tmp.path().join("certs/n1.pem"))?;
    ensure!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");

    let bad = run(&[
        "cert", "issue", "Node_1", "--ca-dir", "ca", "--out", "certs",
    ])?;
    ensure!(
        !bad.status.success(),
        "a certificate for \"Node_1\" was issued"
    );
    ensure!(
        text(&bad.stderr).contains("is not a node name"),
        "{}",
        text(&bad.stderr)
    );

    std::fs::set_permissions(
        tmp.path().join("ca/ca.key"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    let loose = run(&["cert", "issue", "n2", "--ca-dir", "ca", "--out", "certs"])?;
    ensure!(
        !loose.status.success(),
        "signed with a world-readable CA key"
    );
    ensure!(
        text(&loose.stderr).contains("chmod 600 ca/ca.key"),
        "{}",
        text(&loose.stderr)
    );
    Ok(())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
