//! Named network namespaces (as `ip netns` makes them: a bind mount of the namespace at
//! `/run/netns/NAME`) and ways to run code and commands inside one.
//!
//! Commands and closures enter only the network namespace (`setns(CLONE_NEWNET)`); unlike
//! `ip netns exec` they stay in the host's mount namespace, so a process that creates a
//! namespace bind mount or a file under `/run` is seen host-wide.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {name:?} does not exist (no {NETNS_DIR}/{name}): {source}")]
    Open { name: String, source: io::Error },
    #[error("cannot enter network namespace {name:?}: {source}")]
    Enter { name: String, source: nix::Error },
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` did not finish within {timeout:?}; it was killed")]
    Timeout { command: String, timeout: Duration },
}

/// A named network namespace. Made with [`Netns::create`] it is deleted on drop unless
/// [`Netns::keep`] is called; [`Netns::open`] borrows an existing one and never deletes it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    /// Creates `/run/netns/NAME` (like `ip netns add`) and brings its `lo` up.
    pub fn create(name: &str) -> Result<Netns, NetnsError> {
        add(name)?;
        let ns = Netns {
            name: name.into(),
            owned: true,
        };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle to an existing namespace; dropping it leaves the namespace alone.
    pub fn open(name: &str) -> Result<Netns, NetnsError> {
        File::open(path(name)).map_err(|source| NetnsError::Open {
            name: name.into(),
            source,
        })?;
        Ok(Netns {
            name: name.into(),
            owned: false,
        })
    }

    /// Takes over an existing namespace that someone else made (a daemon's `pod add`):
    /// deleted on drop, as if [`Netns::create`] had made it.
    pub fn adopt(name: &str) -> Result<Netns, NetnsError> {
        let mut ns = Netns::open(name)?;
        ns.owned = true;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        path(&self.name)
    }

    /// The namespace's inode, as `/proc/PID/ns/net` shows it (`net:[INODE]`).
    pub fn inode(&self) -> io::Result<u64> {
        inode(&self.name)
    }

    /// Disarms deletion on drop and returns the name.
    pub fn keep(mut self) -> String {
        self.owned = false;
        std::mem::take(&mut self.name)
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command, NetnsError> {
        command(&self.name, program)
    }

    /// Runs `args[0]` with `args[1..]` inside this namespace; see [`run_in`].
    pub fn run(&self, args: &[&str]) -> Result<String, NetnsError> {
        run_in(&self.name, args)
    }

    /// Runs `f` on a thread inside this namespace; see [`in_netns`].
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.name, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned
            && let Err(e) = delete(&self.name)
        {
            eprintln!(
                "overlayd-lab: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// `/run/netns/NAME`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Names of all named network namespaces, sorted.
pub fn list() -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// The inode of a named namespace (what `/proc/PID/ns/net` links to).
pub fn inode(name: &str) -> io::Result<u64> {
    Ok(std::fs::metadata(path(name))?.ino())
}

/// Creates a named namespace with `ip netns add NAME` (its `lo` stays down).
pub fn add(name: &str) -> Result<(), NetnsError> {
    run_host(&["ip", "netns", "add", name])
}

/// Deletes a named namespace with `ip netns del NAME`; a missing one is not an error.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    if !exists(name) {
        return Ok(());
    }
    run_host(&["ip", "netns", "del", name])
}

/// A command that runs `program` inside namespace `ns`: the child calls
/// `setns(CLONE_NEWNET)` between fork and exec, and keeps the host's mount namespace.
pub fn command(ns: &str, program: impl AsRef<OsStr>) -> Result<Command, NetnsError> {
    let file = File::open(path(ns)).map_err(|source| NetnsError::Open {
        name: ns.into(),
        source,
    })?;
    let mut cmd = Command::new(program);
    // SAFETY: the closure only makes the async-signal-safe setns(2) call on an fd that
    // `file` (moved into the closure) keeps open.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Like [`command`], and the child also starts a new session (`setsid`), so it survives
/// the caller's terminal and process group: for daemons that must outlive `lab up`.
pub fn daemon_command(ns: &str, program: impl AsRef<OsStr>) -> Result<Command, NetnsError> {
    let mut cmd = command(ns, program)?;
    // SAFETY: setsid(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Starts a long-running process inside `ns` in its own session, with stdin, stdout and
/// stderr on /dev/null (so it holds no pipe of the caller open); for other redirections
/// use [`daemon_command`]. Returns the child; its [`Child::id`] is the process id to record.
pub fn spawn_in(ns: &str, program: impl AsRef<OsStr>, args: &[&str]) -> Result<Child, NetnsError> {
    let mut cmd = daemon_command(ns, program)?;
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let command = describe(&cmd);
    cmd.spawn()
        .map_err(|source| NetnsError::Spawn { command, source })
}

/// Runs `args[0]` with `args[1..]` inside `ns`, waits (at most 30 s) and returns its
/// stdout. Returns `Err` iff it cannot start, times out or exits non-zero (the error
/// carries its stderr).
pub fn run_in(ns: &str, args: &[&str]) -> Result<String, NetnsError> {
    let Some((program, rest)) = args.split_first() else {
        return Ok(String::new());
    };
    let mut cmd = command(ns, program)?;
    cmd.args(rest);
    let output = output_checked(cmd, Duration::from_secs(30))?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `f` on a new thread that has entered namespace `ns`, and returns its result.
/// Sockets `f` opens belong to `ns`. A panic in `f` is resumed on the caller.
///
/// # Panics
/// If `ns` does not exist or cannot be entered; [`try_in_netns`] returns that as `Err`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    match try_in_netns(ns, f) {
        Ok(value) => value,
        Err(e) => panic!("in_netns: {e}"),
    }
}

/// [`in_netns`] that returns `Err` instead of panicking when `ns` cannot be entered.
pub fn try_in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let file = File::open(path(ns)).map_err(|source| NetnsError::Open {
        name: ns.into(),
        source,
    })?;
    let joined = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // Only this thread moves; the namespace dies with it, the caller is untouched.
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| {
                    NetnsError::Enter {
                        name: ns.into(),
                        source,
                    }
                })?;
                Ok(f())
            })
            .join()
    });
    match joined {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `cmd` with captured output and a deadline. Returns `Err` iff it cannot start,
/// outlives `timeout` (it is then killed) or exits non-zero.
pub fn output_checked(cmd: Command, timeout: Duration) -> Result<Output, NetnsError> {
    let command = describe(&cmd);
    let output = output_with_timeout(cmd, timeout)?;
    if !output.status.success() {
        return Err(NetnsError::Failed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// Runs `cmd` with captured output and a deadline, whatever its exit status. Returns `Err`
/// iff it cannot start or outlives `timeout` (it is then killed).
pub fn output_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output, NetnsError> {
    let command = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| NetnsError::Spawn {
        command: command.clone(),
        source,
    })?;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NetnsError::Timeout { command, timeout });
            }
            Err(source) => return Err(NetnsError::Spawn { command, source }),
        }
    };
    let collect = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

fn drain(mut pipe: impl io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Runs a command in the caller's own namespace; for `ip netns add/del`.
fn run_host(args: &[&str]) -> Result<(), NetnsError> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    output_checked(cmd, Duration::from_secs(30)).map(|_| ())
}

/// `program arg arg` for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}
