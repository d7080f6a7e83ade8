//! Loading, pinning and attaching the TCP health and drop programs: only
//! those the running kernel can run (`observe::health`), with the struct
//! offsets they read set from its BTF first.
use std::{fs, path::Path};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    programs::{links::FdLink, BtfTracePoint, FEntry, Program, ProgramError},
    sys::SyscallError,
    Btf, Ebpf, EbpfLoader,
};
use cgacct_common::health;

use super::load::{load_one, pin_program, Job, Loaded};
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

/// Pins the health programs this kernel has hooks for, as loaded (by
/// `load::load_programs`, which takes their results out of `loaded`;
/// `program` finds a loaded one); one the kernel refused (fentry where the
/// kernel allows no trampolines) is left out, its keys absent. Returns the
/// refused ones, for [`record`].
pub fn pin<'p>(
    k: &HealthKernel,
    pins: &Pins,
    loaded: &mut Loaded<'_>,
    mut program: impl FnMut(&str) -> Option<&'p mut Program>,
) -> Result<Refused> {
    let mut refused = Refused {
        failed: 0,
        kernel: k.clone(),
    };
    for (i, p) in object::health::PROGRAMS.into_iter().enumerate() {
        if !k.programs.contains(p.name) {
            continue;
        }
        let pin = pins.prog(p.name);
        match loaded.remove(p.name) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                // A hook this kernel lists but refuses: the key goes absent.
                refused.failed |= 1 << i;
                refused
                    .kernel
                    .why
                    .insert(p.name, format!("the kernel refused it: {}", refusal(&e)));
                if pin.exists() {
                    fs::remove_file(&pin)?;
                }
                continue;
            }
            None => return Err(anyhow!("program {} was not loaded", p.name)),
        }
        let program = program(p.name).ok_or_else(|| anyhow!("program {} missing from the object", p.name))?;
        pin_program(program, pins, p.name)?;
    }
    Ok(refused)
}

/// The health programs the kernel refused at load ([`pin`]): bit `i` for
/// `PROGRAMS[i]`, and the kernel's view with the reasons added.
pub struct Refused {
    failed: u32,
    kernel: HealthKernel,
}

/// Records the keys and the refused programs in `HEALTH_STATE` for the
/// iterator, `status` and later applies. Returns a line for each key
/// absent by a refusal that `apply` has not said yet.
pub fn record(ebpf: &mut Ebpf, k: &HealthKernel, refused: &Refused) -> Result<Vec<String>> {
    let failed = refused.failed;
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
        .kernel
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

/// Loads the health program `name` anew from `ebpf` (an object loaded
/// against the pinned maps) and pins it in place of the pinned one.
pub fn reload(ebpf: &mut Ebpf, pins: &Pins, name: &str, btf: &Btf) -> Result<()> {
    let p = object::health::program(name).ok_or_else(|| anyhow!("{name} is not a health program"))?;
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    load_one(program, Job::Health(p.hook), btf)
        .map_err(|e| anyhow!("loading {name} again: {}", refusal(&e)))?;
    pin_program(program, pins, name)
}

/// Why the kernel refused to load a program, in one line: the syscall's
/// error and the verifier's last word (`bpftool prog load` shows the log).
fn refusal(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => match last_word(&verifier_log.to_string()) {
            Some(line) => format!("{io_error}: {line}"),
            None => io_error.to_string(),
        },
        e => e.to_string(),
    }
}

/// The verifier log's last line that is not its statistics.
fn last_word(log: &str) -> Option<&str> {
    const STATS: [&str; 3] = ["verification time", "processed ", "stack depth"];
    log.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !STATS.iter().any(|s| l.starts_with(s)))
}

/// What attaching a pinned health program gave.
pub enum Attached {
    Link(FdLink),
    /// Refused at load by this kernel (said then): nothing to attach.
    NotLoaded,
    /// An fentry program whose first link is gone: kernels before 5.12
    /// cannot attach it again (its trampoline target is used up), it must
    /// be loaded anew.
    UsedUp,
}

/// Attaches the pinned health program `name`.
pub fn attach(pins: &Pins, name: &str) -> Result<Attached> {
    let p = object::health::program(name).ok_or_else(|| anyhow!("{name} is not a health program"))?;
    let pin = pins.prog(name);
    if !pin.exists() {
        return Ok(Attached::NotLoaded);
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
            let id = match x.attach() {
                Ok(id) => id,
                Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
                    if io_error.raw_os_error() == Some(libc::ENOENT) =>
                {
                    return Ok(Attached::UsedUp)
                }
                Err(e) => return Err(anyhow::Error::from(e).context(ctx())),
            };
            x.take_link(id)?.into()
        }
        Hook::Tracepoint(_) => {
            let mut x = BtfTracePoint::from_pin(&pin)?;
            let id = x.attach().with_context(ctx)?;
            x.take_link(id)?.into()
        }
    };
    Ok(Attached::Link(link))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_one_line_with_the_verifiers_last_word() {
        let log = "0: (79) r6 = *(u64 *)(r1 +0)\n88: (85) call bpf_sk_storage_get#107\n\
                   unknown func bpf_sk_storage_get#107\nverification time 4197 usec\n\
                   stack depth 56+0\nprocessed 83 insns (limit 1000000) max_states_per_insn 0\n\n";
        let e = ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EINVAL),
            verifier_log: aya_obj::VerifierLog::new(log.to_string()),
        };
        let line = refusal(&e);
        assert!(line.ends_with(": unknown func bpf_sk_storage_get#107"), "{line}");
        assert!(!line.contains('\n'), "{line}");
        let empty = ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EPERM),
            verifier_log: aya_obj::VerifierLog::new(String::new()),
        };
        assert!(!refusal(&empty).contains("Verifier"), "{}", refusal(&empty));
    }
}
