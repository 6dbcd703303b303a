//! Network namespaces for pods: create a named one the way iproute2 does (a bind mount of
//! the namespace under /run/netns), open an existing one by path or PID, delete ours.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

/// Where named network namespaces live (shared with `ip netns`).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `NS_GET_NSTYPE`, `_IO(0xb7, 0x3)`: which kind of namespace a file is.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Resolves a user's `--netns` argument: a PID (its namespace), a path, or a name under
/// /run/netns.
pub fn resolve(spec: &str) -> PathBuf {
    if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
        PathBuf::from(format!("/proc/{spec}/ns/net"))
    } else if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        Path::new(NETNS_RUN_DIR).join(spec)
    }
}

/// Opens a namespace file and checks that it is a network namespace.
pub fn open(path: &Path) -> Result<File> {
    let file = File::open(path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    // SAFETY: ioctl without an argument on a file descriptor we own.
    let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if nstype != libc::CLONE_NEWNET {
        bail!("{} is not a network namespace", path.display());
    }
    Ok(file)
}

/// The inode of an open namespace file: its identity.
pub fn inode(ns: &File) -> Result<u64> {
    Ok(std::os::unix::fs::MetadataExt::ino(&ns.metadata()?))
}

/// The inode of the network namespace at `path`, checking it is one.
pub fn inode_of(path: &Path) -> Result<u64> {
    inode(&open(path)?)
}

/// Whether a namespace inode is the daemon's own network namespace or init's: never a pod's.
pub fn is_host(ino: u64) -> bool {
    ["/proc/self/ns/net", "/proc/1/ns/net"]
        .iter()
        .any(|p| std::fs::metadata(p).is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == ino))
}

/// Creates `/run/netns/NAME` holding a new, empty network namespace. Fails if it exists.
pub fn create(name: &str) -> Result<PathBuf> {
    let path = Path::new(NETNS_RUN_DIR).join(name);
    let target = path.clone();
    in_own_thread(move || {
        // unshare moves only this thread into the new namespace; the bind mount keeps the
        // namespace alive after the thread ends.
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        let own = File::open(&own).with_context(|| format!("opening {own}"))?;
        join_host_mount_ns();
        ensure_run_dir()?;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                "network namespace {} already exists; pass it with --netns to use it",
                target.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("creating {}", target.display())),
        }
        let source = format!("/proc/self/fd/{}", own.as_raw_fd());
        if let Err(e) = mount(
            Some(source.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ) {
            let _ = std::fs::remove_file(&target);
            return Err(e).with_context(|| {
                format!("bind-mounting the new namespace on {}", target.display())
            });
        }
        Ok(())
    })?;
    Ok(path)
}

/// Unmounts and removes a namespace made by [`create`].
pub fn delete(path: &Path) -> Result<()> {
    let path = path.to_owned();
    in_own_thread(move || {
        join_host_mount_ns();
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e).with_context(|| format!("unmounting {}", path.display())),
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    })
}

/// Runs `f` on a thread of its own, so namespace changes it makes die with the thread.
fn in_own_thread(f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    std::thread::spawn(f)
        .join()
        .map_err(|_| anyhow!("namespace thread panicked"))?
}

/// The mount namespace in which pod namespaces are mounted, when it is not our own.
static HOST_MOUNT_NS: std::sync::OnceLock<Option<File>> = std::sync::OnceLock::new();

/// Finds the mount namespace that named network namespaces should be mounted in. Call at
/// start-up, while the process that started the daemon is still there.
///
/// A daemon started with `ip netns exec` lives in a private mount namespace, a slave of
/// the host's: a bind mount made there never reaches the host, so `ip netns exec POD`
/// would find an empty file. Mounting in the starter's namespace (init's, or else the
/// parent's) propagates to every slave, the daemon's own included.
pub fn find_host_mount_ns() {
    let ours = std::fs::metadata("/proc/self/ns/mnt")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok();
    let parent = format!("/proc/{}/ns/mnt", std::os::unix::process::parent_id());
    let host = ["/proc/1/ns/mnt", parent.as_str()]
        .into_iter()
        .find_map(|path| {
            let file = File::open(path).ok()?;
            let ino = std::os::unix::fs::MetadataExt::ino(&file.metadata().ok()?);
            (Some(ino) != ours).then_some(file)
        });
    if host.is_some() {
        tracing::info!(
            "running in a private mount namespace: pod namespaces are mounted in the host's"
        );
    }
    let _ = HOST_MOUNT_NS.set(host);
}

/// Moves the calling thread into the host mount namespace found by
/// [`find_host_mount_ns`], if any. The thread first unshares its filesystem context,
/// which setns into a mount namespace requires of a thread in a multi-threaded process.
fn join_host_mount_ns() {
    let Some(Some(host)) = HOST_MOUNT_NS.get() else {
        return;
    };
    let joined = unshare(CloneFlags::CLONE_FS)
        .and_then(|()| nix::sched::setns(host.as_fd(), CloneFlags::CLONE_NEWNS));
    if let Err(e) = joined {
        tracing::warn!(
            "cannot join the host mount namespace, pod namespaces stay private to the daemon: {e}"
        );
    }
}

/// Makes /run/netns a shared mount point, as iproute2 does, so namespaces mounted there
/// are seen by every mount namespace that shares it.
fn ensure_run_dir() -> Result<()> {
    std::fs::create_dir_all(NETNS_RUN_DIR).context("creating /run/netns")?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(
        None::<&str>,
        NETNS_RUN_DIR,
        None::<&str>,
        shared,
        None::<&str>,
    )
    .is_err()
    {
        mount(
            Some(NETNS_RUN_DIR),
            NETNS_RUN_DIR,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .context("bind-mounting /run/netns on itself")?;
        mount(
            None::<&str>,
            NETNS_RUN_DIR,
            None::<&str>,
            shared,
            None::<&str>,
        )
        .context("making /run/netns shared")?;
    }
    Ok(())
}
