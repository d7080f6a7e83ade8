//! Loading the object against the pinned maps and pinning its programs.
use std::{collections::BTreeSet, fs, io::Write as _};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{Btf, Ebpf, EbpfLoader};
use cgacct_common::globals;

use crate::{
    bpffs::Pins,
    object,
    observe::{health::HealthKernel, kernel},
    spec::Layout,
    sys,
};

/// Loads the object: pinned maps are reused, but those being replaced,
/// which are created new. Programs are pinned in place of the pinned ones,
/// the iterator last (see [`object::PROGRAMS`]).
pub fn load_programs(
    layout: &Layout,
    pins: &Pins,
    replaced: &BTreeSet<String>,
    health: &HealthKernel,
) -> Result<Ebpf> {
    let offsets = kernel::offsets()?;
    let nr_cpus = kernel::nr_cpus()?;
    let build = object::this_build();
    let mut loader = EbpfLoader::new();
    loader
        .override_global(globals::NR_CPUS, &nr_cpus, true)
        .override_global(globals::CGROUP_KN_OFFSET, &offsets.cgroup_kn, true)
        .override_global(globals::KERNFS_NODE_ID_OFFSET, &offsets.kernfs_node_id, true)
        .override_global(
            globals::KERNFS_NODE_PARENT_OFFSET,
            &offsets.kernfs_node_parent,
            true,
        )
        .override_global(globals::CGROUP_ROOT_OFFSET, &offsets.cgroup_root, true)
        .override_global(
            globals::CGROUP_ROOT_HIERARCHY_ID_OFFSET,
            &offsets.cgroup_root_hierarchy_id,
            true,
        )
        .override_global(globals::BUILD_ID, &build, true);
    for (name, shape) in object::wanted_maps(&layout.maps) {
        loader.map_max_entries(name, shape.max_entries);
        if !replaced.contains(name) {
            loader.map_pin_path(name, pins.map(name));
        }
    }
    super::health::configure(&mut loader, health, layout, pins, replaced);
    sys::fault::step();
    let mut ebpf = loader.load(object::OBJECT).context("loading the BPF object")?;
    let btf = Btf::from_sys_fs().context("reading kernel BTF")?;
    // Before the iterator, which is pinned last.
    for line in super::health::load(&mut ebpf, health, pins, &btf)? {
        // As `cli::say`: a closed output must not stop an apply half-way.
        let _ = writeln!(std::io::stdout().lock(), "note: {line}");
    }
    for name in object::PROGRAMS {
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
        let pin = pins.prog(name);
        match program {
            aya::programs::Program::SchedClassifier(p) => p.load()?,
            aya::programs::Program::CgroupSkb(p) => p.load()?,
            aya::programs::Program::Iter(p) => p.load("cgroup", &btf)?,
            aya::programs::Program::BtfTracePoint(p) => {
                let (_, tracepoint) = object::TRACEPOINTS
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .ok_or_else(|| anyhow!("program {name} has no tracepoint"))?;
                p.load(tracepoint, &btf)?
            }
            _ => bail!("program {name} has an unexpected type"),
        }
        sys::fault::step();
        if pin.exists() {
            fs::remove_file(&pin)?;
        }
        sys::fault::step();
        program
            .pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
    }
    Ok(ebpf)
}
