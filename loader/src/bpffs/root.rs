//! The root itself: it must be on bpffs, is created when missing (every new
//! name one bpffs accepts), and is locked while it changes.
use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::sys::{self, mounts};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Fails unless `path`'s nearest existing ancestor is on bpffs.
pub fn check_on_bpffs(path: &Path) -> Result<()> {
    let mut probe = path;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    let fs_type = sys::os::fs_type(probe).with_context(|| format!("checking {}", probe.display()))?;
    if fs_type != BPF_FS_MAGIC {
        if mounts::of_type("bpf").unwrap_or_default().is_empty() {
            bail!(
                "no BPF filesystem (bpffs) is mounted, so {} cannot hold pins: mount one with \
                 `mount -t bpf bpf /sys/fs/bpf` (scripts/setup.sh does)",
                path.display()
            );
        }
        bail!(
            "{} is not on a BPF filesystem (bpffs): set `root` in the layout to a path under \
             a bpffs mount such as /sys/fs/bpf, or mount one with `mount -t bpf bpf /sys/fs/bpf`",
            path.display()
        );
    }
    Ok(())
}

/// Fails unless `root` can be created on bpffs: every missing component
/// must be a name bpffs accepts, checked before anything is made.
pub fn check_name(root: &Path) -> Result<()> {
    let mut existing = root;
    while !existing.exists() {
        let Some(name) = existing.file_name() else { break };
        if name.as_encoded_bytes().contains(&b'.') {
            bail!(
                "cannot create {}: bpffs refuses '.' in the names of new directories such as {:?}; \
                 choose a root without dots",
                root.display(),
                name
            );
        }
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    Ok(())
}

/// Creates the root if it is missing. Returns whether it did.
pub fn create(root: &Path) -> Result<bool> {
    if root.is_dir() {
        return Ok(false);
    }
    check_name(root)?;
    fs::create_dir_all(root).map_err(|e| anyhow!("cannot create {}: {e}", root.display()))?;
    Ok(true)
}

/// An exclusive lock on a root: one `apply`, `destroy` or `watch` batch at
/// a time. Held until dropped; the kernel releases it if the process dies.
pub struct RootLock(#[allow(dead_code)] fs::File);

impl RootLock {
    /// Takes the lock, waiting up to `timeout` (and saying so) if another
    /// cgacct-pin holds it.
    pub fn take(root: &Path, timeout: Duration) -> Result<RootLock> {
        let dir = fs::File::open(root).with_context(|| format!("opening {} to lock it", root.display()))?;
        let start = Instant::now();
        let mut said = false;
        loop {
            if sys::os::try_lock_exclusive(&dir).with_context(|| format!("locking {}", root.display()))? {
                return Ok(RootLock(dir));
            }
            if start.elapsed() >= timeout {
                bail!(
                    "another cgacct-pin is changing {} (it holds the lock on that directory); \
                     nothing was changed. Run again when it is done, or wait longer with \
                     --lock-timeout SECONDS",
                    root.display()
                );
            }
            if !said {
                eprintln!(
                    "cgacct-pin: waiting for another cgacct-pin to finish with {} (up to {} s)",
                    root.display(),
                    timeout.as_secs()
                );
                said = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
