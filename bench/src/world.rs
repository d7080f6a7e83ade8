//! Everything the benchmark creates in the kernel, under one prefix:
//!
//! - network namespaces `<prefix>-ns` (peer ends of the attach-at-scale
//!   veths) and `<prefix>-tp` (the throughput server),
//! - veth pairs `<prefix>h<i>` (this namespace) / `<prefix>p<i>` (in the netns),
//! - cgroups below `<cgroup2 mount>/<prefix>/`,
//! - layout roots below `/sys/fs/bpf/<prefix>/`,
//! - layout files `<tmp>/<prefix>-*.toml`.
//!
//! [`cleanup`] removes all of them and is safe to run again: the `World`
//! runs it on drop (panics included), and scripts/bench.sh runs it from its
//! exit trap (`cgacct-bench --cleanup PREFIX`) in case the process was killed.
use std::{
    fs, io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Context as _, Result};
use cgacct_pin::observe::host;

pub const BPFFS: &str = "/sys/fs/bpf";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set a flag that long loops check, so the `World`
/// is dropped (and cleans up) instead of the process dying mid-way.
pub fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs a command, failing with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sh -c script` (the scripts are the benchmark's own, never user input).
pub fn sh(script: &str) -> Result<String> {
    run(Command::new("sh").arg("-euc").arg(script))
}

/// `ip -batch` of the given lines (much faster than one `ip` per line).
pub fn ip_batch(lines: &str, force: bool) -> Result<()> {
    let mut cmd = Command::new("ip");
    if force {
        cmd.arg("-force");
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning ip -batch")?;
    {
        use io::Write as _;
        let mut stdin = child.stdin.take().context("ip -batch stdin")?;
        stdin
            .write_all(lines.as_bytes())
            .context("writing to ip -batch")?;
    }
    let out = child.wait_with_output().context("waiting for ip -batch")?;
    if !out.status.success() && !force {
        bail!(
            "ip -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub struct World {
    pub prefix: String,
    pub netns: String,
    pub cgroup_mount: PathBuf,
    /// `<mount>/<prefix>`: every cgroup of the benchmark is below it.
    pub cgroup_dir: PathBuf,
    /// `/sys/fs/bpf/<prefix>`: every layout root of the benchmark is below it.
    pub bpf_dir: PathBuf,
    /// The cgacct-pin binary under test.
    pub cgacct_pin: PathBuf,
    veths: usize,
}

impl World {
    pub fn new(prefix: &str, cgacct_pin: &Path) -> Result<World> {
        let cgroup_mount = host::cgroup2_mount()?;
        cgacct_pin::bpffs::root::check_on_bpffs(Path::new(BPFFS))?;
        let w = World {
            prefix: prefix.to_string(),
            netns: format!("{prefix}-ns"),
            cgroup_dir: cgroup_mount.join(prefix),
            cgroup_mount,
            bpf_dir: Path::new(BPFFS).join(prefix),
            cgacct_pin: cgacct_pin.to_path_buf(),
            veths: 0,
        };
        if w.cgroup_dir.exists() || w.bpf_dir.exists() {
            bail!(
                "{} or {} already exists: another run with prefix {prefix} is active or was killed \
                 (remove it with `cgacct-bench --cleanup {prefix}`)",
                w.cgroup_dir.display(),
                w.bpf_dir.display()
            );
        }
        fs::create_dir(&w.cgroup_dir).with_context(|| format!("mkdir {}", w.cgroup_dir.display()))?;
        fs::create_dir(&w.bpf_dir).with_context(|| format!("mkdir {}", w.bpf_dir.display()))?;
        run(Command::new("ip").args(["netns", "add", &w.netns]))?;
        Ok(w)
    }

    pub fn host_if(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    pub fn peer_if(&self, i: usize) -> String {
        format!("{}p{i}", self.prefix)
    }

    /// Shell glob matching every host-side veth of the benchmark.
    pub fn host_if_glob(&self) -> String {
        format!("{}h*", self.prefix)
    }

    /// Creates veth pairs `0..n` (host side up, peer in the netns), one `ip -batch`.
    pub fn add_veths(&mut self, n: usize) -> Result<()> {
        let mut batch = String::new();
        for i in 0..n {
            batch.push_str(&format!(
                "link add {} up type veth peer name {} netns {}\n",
                self.host_if(i),
                self.peer_if(i),
                self.netns
            ));
        }
        ip_batch(&batch, false)?;
        self.veths = self.veths.max(n);
        Ok(())
    }

    /// Deletes every veth pair at once (by deleting the netns that holds
    /// the peers), waits until the host sides are gone, and makes a fresh
    /// netns: attachments and filters go with the interfaces.
    pub fn del_veths(&mut self) -> Result<()> {
        run(Command::new("ip").args(["netns", "del", &self.netns]))?;
        let start = std::time::Instant::now();
        while self.host_ifs_left()? > 0 {
            if start.elapsed().as_secs() > 120 {
                bail!(
                    "veths {} still present 120 s after deleting their netns",
                    self.host_if_glob()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        run(Command::new("ip").args(["netns", "add", &self.netns]))?;
        self.veths = 0;
        Ok(())
    }

    fn host_ifs_left(&self) -> Result<usize> {
        let host = format!("{}h", self.prefix);
        Ok(fs::read_dir("/sys/class/net")?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&host))
            .count())
    }

    /// A cgroup below our directory (`rel` relative to it), as a path below the mount.
    pub fn cgroup_rel(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// Creates `<dir>/<rel>/c0 .. c<n-1>` (and `<rel>` itself when missing).
    pub fn add_cgroups(&self, rel: &str, n: usize) -> Result<PathBuf> {
        let parent = self.cgroup_mount.join(self.cgroup_rel(rel));
        if !parent.exists() {
            fs::create_dir_all(&parent).with_context(|| format!("mkdir {}", parent.display()))?;
        }
        for i in 0..n {
            let d = parent.join(format!("c{i}"));
            fs::create_dir(&d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        Ok(parent)
    }

    /// Removes a cgroup subtree we made (children first).
    pub fn remove_cgroups(&self, rel: &str) -> Result<()> {
        remove_cgroup_tree(&self.cgroup_mount, &self.cgroup_mount.join(self.cgroup_rel(rel)))
    }

    /// A fresh layout root below our bpffs directory (`name` must be new).
    pub fn root(&self, name: &str) -> PathBuf {
        self.bpf_dir.join(name)
    }

    /// Writes a layout file and returns its path.
    pub fn layout(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = std::env::temp_dir().join(format!("{}-{name}.toml", self.prefix));
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// `cgacct-pin destroy --root` (quiet), then removes the directory.
    pub fn destroy_root(&self, root: &Path) -> Result<()> {
        if !root.exists() {
            return Ok(());
        }
        let out = Command::new(&self.cgacct_pin)
            .args(["destroy", "--root"])
            .arg(root)
            .output()
            .context("running cgacct-pin destroy")?;
        if !out.status.success() {
            bail!(
                "cgacct-pin destroy --root {} failed: {}",
                root.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let _ = fs::remove_dir(root);
        Ok(())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        cleanup(&self.prefix, Some(&self.cgacct_pin));
    }
}

/// Removes a cgroup directory and its descendants, moving any process left
/// inside to the root cgroup first.
pub fn remove_cgroup_tree(mount: &Path, dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup_tree(mount, &entry.path())?;
        }
    }
    if let Ok(pids) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in pids.lines() {
            let _ = fs::write(mount.join("cgroup.procs"), pid);
        }
    }
    fs::remove_dir(dir).with_context(|| format!("rmdir {}", dir.display()))
}

/// Removes everything with this prefix (see the module doc). Best effort:
/// reports what it could not remove on stderr.
pub fn cleanup(prefix: &str, cgacct_pin: Option<&Path>) {
    // The peers live in our netns: deleting them deletes every veth pair.
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{prefix}-")) {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/sys/class/net") {
        let mut batch = String::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                batch.push_str(&format!("link del {name}\n"));
            }
        }
        if !batch.is_empty() {
            let _ = ip_batch(&batch, true);
        }
    }
    let bpf_dir = Path::new(BPFFS).join(prefix);
    if bpf_dir.exists() {
        if let (Some(bin), Ok(entries)) = (cgacct_pin, fs::read_dir(&bpf_dir)) {
            for e in entries.flatten() {
                let _ = Command::new(bin)
                    .args(["destroy", "--root"])
                    .arg(e.path())
                    .output();
            }
        }
        // Anything left (pins made by the shell baseline): bpffs allows rm.
        if let Err(e) = remove_bpffs_tree(&bpf_dir) {
            eprintln!("cleanup: could not remove {}: {e}", bpf_dir.display());
        }
    }
    if let Ok(mount) = host::cgroup2_mount() {
        let dir = mount.join(prefix);
        if let Err(e) = remove_cgroup_tree(&mount, &dir) {
            eprintln!("cleanup: could not remove {}: {e:#}", dir.display());
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{prefix}-")) && name.ends_with(".toml") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// `rm -r` on bpffs; restores directory modes first (cgacct clears them
/// only for a moment, but a killed run may have left one at 000).
fn remove_bpffs_tree(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_bpffs_tree(&entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    fs::remove_dir(dir)
}

/// Runs `cmd` (its output discarded) and returns (wall ms, peak RSS in
/// KiB); fails if it fails, with its standard error.
pub fn run_rusage(cmd: &mut Command) -> Result<(f64, f64)> {
    use std::os::unix::process::ExitStatusExt as _;
    let start = std::time::Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 on our own child's pid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the child is reaped here and never waited on again.
    let ret = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if ret != pid {
        return Err(io::Error::last_os_error()).context("wait4");
    }
    let st = std::process::ExitStatus::from_raw(status);
    if !st.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr {
            use std::io::Read as _;
            let _ = e.read_to_string(&mut err);
        }
        bail!("{cmd:?} failed ({st}): {}", err.trim());
    }
    Ok((ms, usage.ru_maxrss as f64))
}
