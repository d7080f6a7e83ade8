//! Loading, pinning and attaching the TCP health and drop programs: only
//! those the running kernel can run (`observe::health`), with the struct
//! offsets they read set from its BTF first.
use std::{fs, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    programs::{links::FdLink, BtfTracePoint, FEntry, Program},
    Btf, Ebpf, EbpfLoader,
};
use cgacct_common::health;

use crate::{
    bpffs::Pins,
    object::{self, health::Hook},
    observe::health::HealthKernel,
    sys,
};

/// Sets the health programs' globals (their maps are sized and pinned with
/// the others, `load::load_programs`).
pub fn configure<'a>(loader: &mut EbpfLoader<'a>, k: &'a HealthKernel) {
    for (name, off) in &k.offsets {
        loader.override_global(name, off, true);
    }
}

/// Loads and pins the health programs this kernel has hooks for; one the
/// kernel refuses (fentry where the kernel allows no trampolines) is left
/// out, its keys absent. Records the keys and the refused programs in
/// `HEALTH_STATE` for the iterator, `status` and later applies. Returns a
/// line for each key absent by a refusal that `apply` has not said yet.
pub fn load(ebpf: &mut Ebpf, k: &HealthKernel, pins: &Pins, btf: &Btf) -> Result<Vec<String>> {
    let mut failed = 0u32;
    let mut refused = k.clone();
    for (i, p) in object::health::PROGRAMS.into_iter().enumerate() {
        if !k.programs.contains(p.name) {
            continue;
        }
        let program = ebpf
            .program_mut(p.name)
            .ok_or_else(|| anyhow!("program {} missing from the object", p.name))?;
        let loaded = match (&mut *program, p.hook) {
            (Program::FEntry(x), Hook::FEntry(f)) => x.load(f, btf),
            (Program::BtfTracePoint(x), Hook::Tracepoint(t)) => x.load(t, btf),
            _ => bail!("program {} has an unexpected type", p.name),
        };
        let pin = pins.prog(p.name);
        if let Err(e) = loaded {
            // A hook this kernel lists but refuses: the key goes absent.
            failed |= 1 << i;
            refused.why.insert(p.name, format!("the kernel refused it: {e}"));
            if pin.exists() {
                fs::remove_file(&pin)?;
            }
            continue;
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
    let loaded = |name: &str| {
        k.programs.contains(name)
            && object::health::PROGRAMS
                .iter()
                .position(|p| p.name == name)
                .is_some_and(|i| failed & (1 << i) == 0)
    };
    let keys = k.keys(loaded);
    // Said at plan time already: what was absent before this load.
    let before = k.keys(|n| k.wanted(n));
    let said: Vec<String> = refused
        .absent(loaded)
        .into_iter()
        .filter(|line| {
            health::KEYS
                .iter()
                .enumerate()
                .any(|(i, key)| before & !keys & (1 << i) != 0 && line.starts_with(&format!("{key} ")))
        })
        .collect();
    let map = ebpf
        .map_mut(health::maps::HEALTH_STATE)
        .ok_or_else(|| anyhow!("map {} missing from the object", health::maps::HEALTH_STATE))?;
    let mut state: aya::maps::Array<_, u32> = aya::maps::Array::try_from(map)?;
    sys::fault::step();
    state.set(health::state::KEYS, keys, 0)?;
    state.set(health::state::FAILED, failed, 0)?;
    Ok(said)
}

/// Attaches the pinned health program `name`; returns its link.
pub fn attach(pins: &Pins, name: &str) -> Result<Option<FdLink>> {
    let p = object::health::program(name).ok_or_else(|| anyhow!("{name} is not a health program"))?;
    let pin = pins.prog(name);
    if !pin.exists() {
        // Refused at load by this kernel (said then): nothing to attach.
        return Ok(None);
    }
    let ctx = || {
        format!(
            "attaching {name} to {} (needs BTF and CAP_BPF + CAP_PERFMON)",
            p.hook.target()
        )
    };
    sys::fault::step();
    let link: FdLink = match p.hook {
        Hook::FEntry(_) => {
            let mut x = FEntry::from_pin(&pin)?;
            let id = x.attach().with_context(ctx)?;
            x.take_link(id)?.into()
        }
        Hook::Tracepoint(_) => {
            let mut x = BtfTracePoint::from_pin(&pin)?;
            let id = x.attach().with_context(ctx)?;
            x.take_link(id)?.into()
        }
    };
    Ok(Some(link))
}

/// Pins of the health programs and their links, for destroy.
pub fn pins_of(pins: &Pins) -> Vec<std::path::PathBuf> {
    object::health::PROGRAMS
        .iter()
        .flat_map(|p| [pins.tracing_link(p.name), pins.prog(p.name)])
        .collect()
}

/// Whether `path` is the pin of a health program.
pub fn is_program_pin(pins: &Pins, path: &Path) -> bool {
    object::health::PROGRAMS.iter().any(|p| pins.prog(p.name) == path)
}
