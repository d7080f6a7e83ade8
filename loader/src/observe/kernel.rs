//! Facts about the running kernel that the programs need at load time:
//! struct offsets from its BTF (Rust BPF programs get no CO-RE relocations,
//! so nothing about kernel layout is baked in at build time) and the CPU count.
use anyhow::{anyhow, bail, Context as _, Result};
use btf_rs::{Btf, Type};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

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

/// The running kernel's BTF.
pub fn open_btf() -> Result<Btf> {
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

pub fn offsets() -> Result<Offsets> {
    let btf = open_btf()?;
    require_cgroup_iter(&btf)?;
    Ok(Offsets {
        cgroup_kn: member_offset(&btf, "cgroup", "kn")?,
        kernfs_node_id: member_offset(&btf, "kernfs_node", "id")?,
        kernfs_node_parent: member_offset(&btf, "kernfs_node", "__parent")
            .or_else(|_| member_offset(&btf, "kernfs_node", "parent"))?,
        cgroup_root: member_offset(&btf, "cgroup", "root")?,
        cgroup_root_hierarchy_id: member_offset(&btf, "cgroup_root", "hierarchy_id")?,
    })
}

/// cgacct's net.stat files are cgroup iterators (Linux >= 6.1, which also
/// has every helper the programs call). A kernel without them has no
/// `bpf_iter_cgroup` in its BTF; say so instead of failing inside the loader.
fn require_cgroup_iter(btf: &Btf) -> Result<()> {
    match btf.resolve_types_by_name("bpf_iter_cgroup") {
        Ok(types) if !types.is_empty() => Ok(()),
        _ => bail!(
            "this kernel has no cgroup iterator (bpf_iter_cgroup is not in {VMLINUX_BTF}): \
             cgacct's net.stat files need Linux >= 6.1 with CONFIG_CGROUPS and BPF iterators; \
             the kernels cgacct is tested on are listed in README.md (Supported kernels)"
        ),
    }
}

/// Byte offset of `strukt.member`, looking into anonymous structs and unions.
pub fn member_offset(btf: &Btf, strukt: &str, member: &str) -> Result<u32> {
    for ty in btf.resolve_types_by_name(strukt)? {
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
            "this host has {n} possible CPUs; cgacct's iterator sums at most {}",
            cgacct_common::MAX_CPUS
        );
    }
    Ok(n)
}

/// Everything loading the programs needs from the running kernel, checked
/// before anything is changed.
pub fn check() -> Result<()> {
    offsets()?;
    nr_cpus()?;
    Ok(())
}
