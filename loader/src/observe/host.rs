//! What the host has: the cgroup2 and bpffs mounts, network interfaces and
//! the cgroup tree. Discovered every time, never assumed.
use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

use crate::sys::mounts;

/// Mount point of cgroup v2, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf> {
    mounts::of_type("cgroup2")
        .context("reading /proc/self/mountinfo")?
        .into_iter()
        .next()
        .with_context(|| {
            "no cgroup2 mount found in /proc/self/mountinfo: cgacct needs cgroup v2 \
         and does not work on a cgroup-v1-only host (mount it with \
         `mount -t cgroup2 none /sys/fs/cgroup/unified`, or boot with \
         systemd.unified_cgroup_hierarchy=1)"
                .to_string()
        })
}

/// Capabilities cgacct-pin needs, by bit. The kernel lets CAP_SYS_ADMIN do
/// what CAP_BPF and CAP_PERFMON allow (`bpf_capable()`, `perfmon_capable()`),
/// and only CAP_SYS_ADMIN looks BPF objects up by id (the build id of the
/// running programs, attachments made by hand), so CAP_BPF is not asked for:
/// a runtime that cannot grant it (Docker 20.10) still runs cgacct-pin.
const NEEDED_CAPS: [(u32, &str); 2] = [(21, "CAP_SYS_ADMIN"), (12, "CAP_NET_ADMIN")];

/// Fails, naming what is missing, unless this process has the capabilities
/// cgacct-pin needs (root has them).
pub fn check_privileges() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .context("no CapEff line in /proc/self/status")?;
    let missing: Vec<&str> = NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| eff & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        bail!(
            "cgacct-pin needs {} to read and change BPF programs, links and pins, and lacks {}: \
             run it as root, or grant those capabilities (CAP_SYS_ADMIN covers CAP_BPF and \
             CAP_PERFMON). Reading a stats file needs no privilege: \
             `cat <root>/<cgroup>/net.stat`",
            NEEDED_CAPS.map(|(_, n)| n).join(" and "),
            missing.join(", ")
        );
    }
    Ok(())
}

/// A network interface of this network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
}

pub fn interfaces() -> Result<Vec<Interface>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/sys/class/net").context("listing /sys/class/net")? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(idx) = fs::read_to_string(entry.path().join("ifindex")) else {
            continue; // vanished while listing
        };
        if let Ok(ifindex) = idx.trim().parse() {
            out.push(Interface { name, ifindex });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A cgroup: its path below the cgroup2 mount ("" for the root) and its id
/// (the inode number of its directory, what `bpf_skb_cgroup_id` returns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub path: String,
    pub id: u64,
}

impl Cgroup {
    /// The path as operators write it: "/" for the root, "/a/b" below.
    pub fn display(&self) -> String {
        format!("/{}", self.path)
    }

    /// Its directory in cgroupfs.
    pub fn fs_path(&self, mount: &Path) -> PathBuf {
        mount.join(&self.path)
    }
}

/// Every cgroup below `mount`, root first, parents before children.
pub fn cgroups(mount: &Path) -> Result<Vec<Cgroup>> {
    let root = fs::metadata(mount).with_context(|| format!("reading {}", mount.display()))?;
    let mut out = vec![Cgroup {
        path: String::new(),
        id: root.ino(),
    }];
    // Only directories are cgroups: the control files in each are skipped
    // by their type in the listing, never stat'ed or sorted; a cgroup's id
    // is its directory's inode number, which the listing gives.
    crate::bpffs::walk::walk_dirs(mount, &mut |path, ino| {
        let rel = path.strip_prefix(mount).unwrap_or(&path);
        out.push(Cgroup {
            path: rel.to_string_lossy().into_owned(),
            id: ino,
        });
    })
    .with_context(|| format!("walking the cgroup tree at {}", mount.display()))?;
    Ok(out)
}

/// id -> path ("/a/b") of every cgroup, for naming counters.
pub fn cgroup_names(mount: &Path) -> Result<BTreeMap<u64, String>> {
    Ok(cgroups(mount)?.into_iter().map(|c| (c.id, c.display())).collect())
}
