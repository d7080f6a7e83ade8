//! Facts about the running kernel that the programs need at load time:
//! struct offsets from its BTF (Rust BPF programs get no CO-RE relocations,
//! so nothing about kernel layout is baked in at build time), the CPU count,
//! and what it offers that cgacct can do without ([`Features`]).
use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
};

use anyhow::{anyhow, bail, Context as _, Result};
use btf_rs::{Btf, Type};
use serde::Serialize;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Names features to treat as missing although the kernel has them
/// (comma-separated: `cgroup_iter`, `percpu_lookup`), so the selftests
/// exercise the paths of older kernels on any kernel. Never adds one.
pub const HIDE_ENV: &str = "CGACCT_HIDE_KERNEL_FEATURES";

/// What the running kernel offers that cgacct can do without, probed in
/// its BTF (what the kernel itself declares), never from its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Features {
    /// Cgroup iterators (`bpf_iter_cgroup`, Linux >= 6.1): the `net.stat`
    /// files.
    pub cgroup_iter: bool,
    /// `bpf_map_lookup_percpu_elem` (Linux >= 5.19): programs can sum a
    /// per-CPU map's slots, so the counter maps can be per-CPU.
    pub percpu_lookup: bool,
}

impl Features {
    /// Everything: what the planners' unit tests assume.
    pub const ALL: Features = Features {
        cgroup_iter: true,
        percpu_lookup: true,
    };

    /// Whether `net.stat` files can be pinned: the iterator program also
    /// sums per-CPU slots.
    pub fn stats_files(&self) -> bool {
        self.cgroup_iter && self.percpu_lookup
    }

    /// Whether the cgroup counter maps are plain hashes shared by every
    /// CPU (atomic adds) instead of per-CPU hashes.
    pub fn shared_counters(&self) -> bool {
        !self.percpu_lookup
    }

    /// What the object's programs and maps are on this kernel.
    pub fn object(&self) -> crate::object::Kernel {
        crate::object::Kernel {
            stats_files: self.stats_files(),
            shared_counters: self.shared_counters(),
        }
    }

    /// What this kernel lacks, for messages; None when nothing.
    pub fn missing(&self) -> Option<String> {
        let mut out = Vec::new();
        if !self.cgroup_iter {
            out.push("cgroup iterators (Linux >= 6.1): no net.stat files");
        }
        if !self.percpu_lookup {
            out.push(
                "bpf_map_lookup_percpu_elem (Linux >= 5.19): the cgroup counter maps are shared \
                 hashes with atomic adds instead of per-CPU hashes",
            );
        }
        (!out.is_empty()).then(|| out.join("; "))
    }
}

/// The running kernel's [`Features`], probed once per process. A kernel
/// whose BTF cannot be read is taken to have none of them (loading then
/// fails on the BTF, with the reason).
pub fn features() -> Features {
    static F: OnceLock<Features> = OnceLock::new();
    *F.get_or_init(|| {
        let probed = match kernel_btf() {
            Ok(btf) => Features {
                cgroup_iter: has_type(btf, "bpf_iter_cgroup"),
                percpu_lookup: has_enum_value(btf, "bpf_func_id", "BPF_FUNC_map_lookup_percpu_elem"),
            },
            Err(_) => Features {
                cgroup_iter: false,
                percpu_lookup: false,
            },
        };
        hide(probed, std::env::var(HIDE_ENV).unwrap_or_default().as_str())
    })
}

/// `f` without the features named in `list` (see [`HIDE_ENV`]).
pub fn hide(mut f: Features, list: &str) -> Features {
    for name in list.split(',').map(str::trim) {
        match name {
            "cgroup_iter" => f.cgroup_iter = false,
            "percpu_lookup" => f.percpu_lookup = false,
            _ => {}
        }
    }
    f
}

fn has_type(btf: &KernelBtf, name: &str) -> bool {
    matches!(btf.types(name), Ok(types) if !types.is_empty())
}

/// Whether enum `enum_name` has a member `member`: a helper the kernel
/// knows has its `BPF_FUNC_*` value in `enum bpf_func_id`.
fn has_enum_value(btf: &KernelBtf, enum_name: &str, member: &str) -> bool {
    let Ok(types) = btf.types(enum_name) else {
        return false;
    };
    types.iter().any(|t| match t {
        Type::Enum(e) => e
            .members
            .iter()
            .any(|m| btf.resolve_name(m).is_ok_and(|n| n == member)),
        _ => false,
    })
}

/// The type names [`features`] and [`offsets`] look up (see
/// [`KernelBtf::prefetch`]).
pub const BTF_NAMES: [&str; 5] = [
    "bpf_iter_cgroup",
    "bpf_func_id",
    "cgroup",
    "kernfs_node",
    "cgroup_root",
];

/// The running kernel's BTF, as opened by [`kernel_btf`].
pub struct KernelBtf {
    btf: Btf,
    /// Types by name, as looked up so far: each lookup scans every type of
    /// the mapped file (about 1 ms), and an apply asks for the same structs
    /// several times.
    by_name: Mutex<HashMap<String, Vec<Type>>>,
}

impl KernelBtf {
    fn new(btf: Btf) -> KernelBtf {
        KernelBtf {
            btf,
            by_name: Mutex::new(HashMap::new()),
        }
    }

    /// The types named `name` (none: an empty list).
    pub fn types(&self, name: &str) -> Result<Vec<Type>> {
        let mut by_name = self
            .by_name
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(types) = by_name.get(name) {
            return Ok(types.clone());
        }
        let types = self.btf.resolve_types_by_name(name)?;
        by_name.insert(name.to_string(), types.clone());
        Ok(types)
    }

    /// Looks up every type of `names` in one scan of the file, for
    /// [`types`](Self::types) to answer from then on: an apply asks for
    /// about twenty, and each scan of its own costs as much as all of
    /// them at once. Where a step fails, nothing is kept: each name is
    /// then looked up by itself.
    pub fn prefetch<S: AsRef<str>>(&self, names: &[S]) {
        let mut by_name = self
            .by_name
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut found: HashMap<String, Vec<Type>> = names
            .iter()
            .map(|n| n.as_ref())
            .filter(|n| !by_name.contains_key(*n))
            .map(|n| (n.to_string(), Vec::new()))
            .collect();
        if found.is_empty() {
            return;
        }
        let alternatives: Vec<String> = found.keys().map(|n| regex::escape(n)).collect();
        let Ok(re) = regex::Regex::new(&format!("^(?:{})$", alternatives.join("|"))) else {
            return;
        };
        let Ok(ids) = self.btf.resolve_ids_by_regex(&re) else {
            return;
        };
        // In the order of their ids, as a lookup of one name gives them.
        for id in ids {
            let Ok(ty) = self.btf.resolve_type_by_id(id) else {
                return;
            };
            let Some(Ok(name)) = ty.as_btf_type().map(|t| self.btf.resolve_name(t)) else {
                return;
            };
            match found.get_mut(&name) {
                Some(types) => types.push(ty),
                None => return,
            }
        }
        by_name.extend(found);
    }
}

impl std::ops::Deref for KernelBtf {
    type Target = Btf;

    fn deref(&self) -> &Btf {
        &self.btf
    }
}

/// The running kernel's BTF, opened once per process (the features, the
/// offsets, the health probe and the exporter's drop reasons all read it).
pub fn kernel_btf() -> Result<&'static KernelBtf> {
    static BTF: OnceLock<Result<KernelBtf, String>> = OnceLock::new();
    BTF.get_or_init(|| open_btf().map(KernelBtf::new).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

/// Opens the running kernel's BTF.
fn open_btf() -> Result<Btf> {
    // Mapped and parsed lazily: the default (parse every type up front,
    // seeking in the file for each) took most of apply's time. Kernels that
    // cannot map the sysfs file (6.1 answers ENODEV) get it read whole and
    // parsed in memory.
    Btf::from_file_with_backend(VMLINUX_BTF, btf_rs::Backend::Mmap)
        .or_else(|_| {
            let bytes = std::fs::read(VMLINUX_BTF)?;
            Btf::from_bytes(&bytes).map_err(anyhow::Error::from)
        })
        .with_context(|| {
            format!(
                "cannot read kernel BTF at {VMLINUX_BTF}: cgacct needs the kernel's BTF, which \
                 Linux >= 5.4 built with CONFIG_DEBUG_INFO_BTF=y provides there (Debian's kernels do)"
            )
        })
}

/// Offsets the programs use to read `cgroup->kn->id`, the parent's id and
/// `cgroup->root->hierarchy_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `kernfs_node.__parent` (named `parent` before Linux 6.15).
    pub kernfs_node_parent: u32,
    /// `cgroup.root`: the `struct cgroup_root` of the cgroup's hierarchy.
    pub cgroup_root: u32,
    /// `cgroup_root.hierarchy_id` (`int`; 0 is cgroup2, the default hierarchy).
    pub cgroup_root_hierarchy_id: u32,
}

pub fn offsets() -> Result<Offsets> {
    let btf = kernel_btf()?;
    Ok(Offsets {
        cgroup_kn: member_offset(btf, "cgroup", "kn")?,
        kernfs_node_id: member_offset(btf, "kernfs_node", "id")?,
        kernfs_node_parent: member_offset(btf, "kernfs_node", "__parent")
            .or_else(|_| member_offset(btf, "kernfs_node", "parent"))?,
        cgroup_root: member_offset(btf, "cgroup", "root")?,
        cgroup_root_hierarchy_id: member_offset(btf, "cgroup_root", "hierarchy_id")?,
    })
}

/// Byte offset of `strukt.member`, looking into anonymous structs and unions.
pub fn member_offset(btf: &KernelBtf, strukt: &str, member: &str) -> Result<u32> {
    for ty in btf.types(strukt)? {
        if let Type::Struct(s) = ty {
            if let Some(bits) = find_member(btf, &s, member)? {
                return Ok(bits / 8);
            }
        }
    }
    Err(anyhow!(
        "kernel BTF has no member {member} in struct {strukt}: this kernel is not supported"
    ))
}

fn find_member(btf: &Btf, s: &btf_rs::Struct, member: &str) -> Result<Option<u32>> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == member {
            return Ok(Some(m.bit_offset()));
        }
        if name.is_empty() {
            let inner = match btf.resolve_chained_type(m)? {
                Type::Struct(x) | Type::Union(x) => x,
                _ => continue,
            };
            if let Some(off) = find_member(btf, &inner, member)? {
                return Ok(Some(m.bit_offset() + off));
            }
        }
    }
    Ok(None)
}

/// Number of possible CPUs: how many per-CPU slots each map value has.
pub fn nr_cpus() -> Result<u32> {
    let n = aya::util::nr_cpus().map_err(|(path, e)| anyhow!("reading {path}: {e}"))? as u32;
    if n > cgacct_common::MAX_CPUS {
        bail!(
            "this host has {n} possible CPUs; cgacct's programs sum at most {}",
            cgacct_common::MAX_CPUS
        );
    }
    Ok(n)
}

/// Makes the programs sum as many CPUs as it says instead of the host's
/// possible CPUs (never fewer, at most [`cgacct_common::MAX_CPUS`]), so the
/// selftests load them as on a host with that many: what the kernel's
/// verifier does with them depends on the count. The extra CPUs have no
/// slot to read and add nothing.
pub const PROGRAM_CPUS_ENV: &str = "CGACCT_PROGRAM_CPUS";

/// Whether this architecture's kernels take 8-byte BPF stores at any byte
/// offset of a map value: those with `CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS`
/// (the verifier is strict about alignment elsewhere).
pub fn unaligned_stores() -> bool {
    cfg!(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "powerpc64",
        target_arch = "s390x"
    ))
}

/// The CPU count the programs are loaded with: [`nr_cpus`], or what
/// [`PROGRAM_CPUS_ENV`] says.
pub fn program_cpus() -> Result<u32> {
    let n = nr_cpus()?;
    let Ok(v) = std::env::var(PROGRAM_CPUS_ENV) else {
        return Ok(n);
    };
    match v.parse::<u32>() {
        Ok(m) if (n..=cgacct_common::MAX_CPUS).contains(&m) => Ok(m),
        _ => bail!(
            "{PROGRAM_CPUS_ENV}={v:?}: give a number of CPUs from this host's {n} to {} (or unset it)",
            cgacct_common::MAX_CPUS
        ),
    }
}

/// Everything loading the programs needs from the running kernel, checked
/// before anything is changed.
pub fn check() -> Result<()> {
    offsets()?;
    program_cpus()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs no privilege, only the running kernel's BTF file.
    #[test]
    fn prefetched_types_are_those_of_lookups_one_by_one() {
        let (Ok(a), Ok(b)) = (open_btf(), open_btf()) else {
            eprintln!("skipped: no kernel BTF at {VMLINUX_BTF}");
            return;
        };
        let (one_by_one, prefetched) = (KernelBtf::new(a), KernelBtf::new(b));
        let mut names: Vec<String> = crate::observe::health::btf_names();
        names.extend(BTF_NAMES.map(String::from));
        names.push("cgacct_no_such_type".into());
        prefetched.prefetch(&names);
        let cached = prefetched.by_name.lock().map(|m| m.len()).unwrap_or(0);
        assert_eq!(cached, names.len(), "one scan answers every name");
        for name in &names {
            let want = one_by_one.types(name).expect("lookup");
            assert_eq!(prefetched.types(name).expect("prefetched"), want, "{name}");
        }
        assert!(prefetched
            .types("cgacct_no_such_type")
            .expect("lookup")
            .is_empty());
        assert!(!prefetched.types("sock").expect("lookup").is_empty());
    }
}
