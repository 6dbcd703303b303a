//! Finding, signalling and reaping the lab's processes by PID. Nothing here matches
//! processes by name: a process belongs to a lab iff it sits in one of the lab's network
//! namespaces or its command line names the lab's config file.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How long [`terminate`] waits after SIGTERM before it sends SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

/// PIDs of all processes (except this one) whose network namespace is one of `inodes`.
pub fn pids_in_namespaces(inodes: &HashSet<u64>) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| net_ns_inode(pid).is_some_and(|ino| inodes.contains(&ino)))
        .collect();
    pids.sort_unstable();
    pids
}

/// The inode of `pid`'s network namespace, from the `net:[INODE]` link in /proc.
pub fn net_ns_inode(pid: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let text = link.to_str()?;
    text.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Whether `pid` is running and its command line contains `needle` (a config path), so a
/// recycled PID from a stale pid file is never mistaken for the lab's daemon.
pub fn cmdline_mentions(pid: u32, needle: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = needle.as_os_str().as_encoded_bytes();
    is_alive(pid) && raw.split(|&b| b == 0).any(|arg| arg == needle)
}

/// Whether `pid` is running. Reaps it if it is an exited child of ours; a zombie that is
/// someone else's child counts as gone once its last thread has exited.
pub fn is_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => return true,
        Ok(_) => return false,
        // Not our child: ask /proc.
        Err(_) => {}
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold ") ".
        Ok(stat) => {
            let zombie = stat
                .rsplit_once(") ")
                .is_none_or(|(_, rest)| rest.starts_with(['Z', 'X']));
            // A killed multi-threaded process shows its leader as a zombie while its other
            // threads still exit, holding its sockets: a restart could not bind them yet.
            !zombie || threads(pid) > 1
        }
        Err(_) => false,
    }
}

/// How many threads of `pid` remain (entries of /proc/PID/task), 0 if it is gone.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |entries| entries.count())
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: u32, signal: Signal) -> Result<(), Errno> {
    let raw = i32::try_from(pid).map_err(|_| Errno::ESRCH)?;
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Waits until none of `pids` is alive or `timeout` passes; returns those still alive.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| is_alive(p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to every pid, SIGKILL to those still alive after [`TERM_GRACE`], then waits for
/// them. Returns the PIDs that survived even SIGKILL (uninterruptible sleep).
pub fn terminate(pids: &[u32]) -> Vec<u32> {
    for &pid in pids {
        let _ = signal(pid, Signal::SIGTERM);
    }
    let stubborn = wait_gone(pids, TERM_GRACE);
    for &pid in &stubborn {
        let _ = signal(pid, Signal::SIGKILL);
    }
    wait_gone(&stubborn, Duration::from_secs(5))
}

/// SIGKILL and wait (at most 5 s). Returns whether it is gone.
pub fn kill_now(pid: u32) -> bool {
    let _ = signal(pid, Signal::SIGKILL);
    wait_gone(&[pid], Duration::from_secs(5)).is_empty()
}
