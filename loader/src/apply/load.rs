//! Loading the object against the pinned maps and pinning its programs.
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    fs,
    io::Write as _,
    os::fd::AsFd as _,
    path::Path,
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    programs::{Program, ProgramError},
    Btf, Ebpf, EbpfLoader,
};
use cgacct_common::globals;

use super::replace;
use crate::{
    bpffs::{access, Pins},
    object,
    observe::{health::HealthKernel, kernel},
    spec::Layout,
    sys,
};

/// Loads the object: pinned maps are reused, but those being replaced,
/// which are created new. Programs are pinned in place of the pinned ones,
/// the last of [`object::programs`] (the iterator) last; on a kernel
/// without cgroup iterators the iterator is not loaded. `ready` is called
/// once every program but the last is pinned: the iterator takes the
/// verifier longest, and what needs only the others can go on meanwhile.
pub fn load_programs(
    layout: &Layout,
    pins: &Pins,
    replaced: &BTreeSet<String>,
    health: &HealthKernel,
    prefetch: Option<Prefetch>,
    ready: impl FnOnce(),
) -> Result<Ebpf> {
    let k = kernel::features().object();
    let (loader, btf) = prefetch.unwrap_or_else(Prefetch::start).join()?;
    let mut ebpf = against_pins(loader, layout, pins, replaced, health)?;
    let btf = btf.context("reading kernel BTF")?;
    let order = object::programs(k);
    let (&last, early) = order
        .split_last()
        .ok_or_else(|| anyhow!("the object has no programs"))?;
    let last_from = object::object_program(last, k);
    let mut jobs: Vec<(&str, Job)> = object::health::PROGRAMS
        .iter()
        .filter(|p| health.programs.contains(p.name))
        .map(|p| (p.name, Job::Health(p.hook)))
        .collect();
    for &name in order {
        jobs.push((object::object_program(name, k), Job::Object(name)));
    }
    let (refused, last_loaded) = std::thread::scope(|scope| -> Result<_> {
        let mut threads = Vec::new();
        let mut last_thread = None;
        for (name, job, program) in programs_of(&mut ebpf, &jobs)? {
            let btf = &btf;
            let t = scope.spawn(move || (load_one(program, job, btf), program));
            match name == last_from {
                true => last_thread = Some(t),
                false => threads.push((name, t)),
            }
        }
        let mut loaded = Loaded::new();
        let mut programs = BTreeMap::new();
        for (name, t) in threads {
            let (r, program) = t
                .join()
                .map_err(|_| anyhow!("the thread loading program {name} panicked"))?;
            loaded.insert(name, r);
            programs.insert(name, program);
        }
        // Before the iterator, which is pinned last.
        let refused = super::health::pin(health, pins, &mut loaded, |n| programs.remove(n))?;
        for &name in early {
            let from = object::object_program(name, k);
            loaded_ok(loaded.remove(from), from)?;
            let program = programs
                .remove(from)
                .ok_or_else(|| anyhow!("program {from} missing from the object"))?;
            pin_program(program, pins, name)?;
        }
        let early_pins = early.iter().chain(health.programs.iter());
        for pin in early_pins
            .map(|p| pins.prog(p))
            .chain(object::all_maps().map(|m| pins.map(m)))
        {
            access::settle(&layout.access, pins, &pin)?;
        }
        ready();
        let last_loaded = match last_thread {
            Some(t) => Some(
                t.join()
                    .map_err(|_| anyhow!("the thread loading program {last_from} panicked"))?
                    .0,
            ),
            None => None,
        };
        Ok((refused, last_loaded))
    })?;
    for line in super::health::record(&mut ebpf, health, &refused)? {
        // As `cli::say`: a closed output must not stop an apply half-way.
        let _ = writeln!(std::io::stdout().lock(), "note: {line}");
    }
    loaded_ok(last_loaded, last_from)?;
    let program = ebpf
        .program_mut(last_from)
        .ok_or_else(|| anyhow!("program {last_from} missing from the object"))?;
    pin_program(program, pins, last)?;
    access::settle(&layout.access, pins, &pins.prog(last))?;
    unpin_retired(pins)?;
    Ok(ebpf)
}

/// What loading program `from` gave, as an error where it did not load.
fn loaded_ok(r: Option<Result<(), ProgramError>>, from: &str) -> Result<()> {
    match r {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(anyhow::Error::from(e).context(format!("loading program {from}"))),
        None => bail!("program {from} was not loaded"),
    }
}

/// Unpins the maps of earlier builds that this one no longer has (the
/// replaced programs keep theirs until their links move to the new ones).
fn unpin_retired(pins: &Pins) -> Result<()> {
    for name in object::RETIRED_MAPS {
        let pin = pins.map(name);
        if pin.exists() {
            sys::fault::step();
            fs::remove_file(&pin)
                .with_context(|| format!("unpinning {}, a map of an earlier build", pin.display()))?;
        }
    }
    Ok(())
}

/// The kernel's BTF parsed on threads of their own: aya parses it for the
/// loader and again for the program loads, each parse about 20 ms. Started
/// before the host is read when a load is sure (a root without programs),
/// or at the load.
pub struct Prefetch {
    loader: std::thread::JoinHandle<EbpfLoader<'static>>,
    btf: std::thread::JoinHandle<Result<Btf, aya::BtfError>>,
}

impl Prefetch {
    pub fn start() -> Prefetch {
        Prefetch {
            loader: std::thread::spawn(EbpfLoader::new),
            btf: std::thread::spawn(Btf::from_sys_fs),
        }
    }

    /// Started when the root under `pins` holds no programs: its apply
    /// loads them.
    pub fn for_root(pins: &Pins) -> Option<Prefetch> {
        (!pins.prog(object::PROGRAMS[0]).exists()).then(Prefetch::start)
    }

    fn join(self) -> Result<(EbpfLoader<'static>, Result<Btf, aya::BtfError>)> {
        let panicked = |_| anyhow!("the thread reading kernel BTF panicked");
        Ok((
            self.loader.join().map_err(panicked)?,
            self.btf.join().map_err(panicked)?,
        ))
    }
}

/// How a program of the object is loaded.
#[derive(Clone, Copy)]
pub enum Job {
    /// A program of [`object::PROGRAMS`], by the name it is pinned as.
    Object(&'static str),
    /// A health program, at its hook.
    Health(object::health::Hook),
}

/// What loading each program gave, by its name in the object.
pub type Loaded<'a> = BTreeMap<&'a str, Result<(), ProgramError>>;

/// The programs of `jobs` (name in the object, how), each with its job,
/// to be loaded at once, one thread each: as root the kernel verifies
/// programs in parallel (the verifier's mutex is for unprivileged loads
/// only), and `cgroup_release` alone is half the verifier's time of an
/// apply.
fn programs_of<'a, 'e>(
    ebpf: &'e mut Ebpf,
    jobs: &[(&'a str, Job)],
) -> Result<Vec<(&'a str, Job, &'e mut Program)>> {
    let mut programs: Vec<(&'a str, Job, &mut Program)> = Vec::new();
    for (from, program) in ebpf.programs_mut() {
        if let Some(&(name, job)) = jobs.iter().find(|(n, _)| *n == from) {
            programs.push((name, job, program));
        }
    }
    if let Some((missing, _)) = jobs
        .iter()
        .find(|(n, _)| !programs.iter().any(|(p, _, _)| p == n))
    {
        bail!("program {missing} missing from the object");
    }
    Ok(programs)
}

/// Loads one program as `job` says.
pub fn load_one(program: &mut Program, job: Job, btf: &Btf) -> Result<(), ProgramError> {
    use object::health::Hook;
    match (program, job) {
        (Program::SchedClassifier(p), Job::Object(_)) => p.load(),
        (Program::CgroupSkb(p), Job::Object(_)) => p.load(),
        (Program::Iter(p), Job::Object(_)) => p.load("cgroup", btf),
        (Program::BtfTracePoint(p), Job::Object(name)) => {
            match object::TRACEPOINTS.into_iter().find(|(n, _)| *n == name) {
                Some((_, tracepoint)) => p.load(tracepoint, btf),
                None => Err(ProgramError::UnexpectedProgramType),
            }
        }
        (Program::FEntry(x), Job::Health(Hook::FEntry(f))) => x.load(f, btf),
        (Program::BtfTracePoint(x), Job::Health(Hook::Tracepoint(t))) => x.load(t, btf),
        _ => Err(ProgramError::UnexpectedProgramType),
    }
}

/// Loads the health program `name` anew and pins it in place of the
/// pinned one (an fentry program whose first link is gone, on kernels
/// that cannot attach it again).
pub fn reload_health(layout: &Layout, pins: &Pins, health: &HealthKernel, name: &str) -> Result<()> {
    let (loader, btf) = Prefetch::start().join()?;
    let mut ebpf = against_pins(loader, layout, pins, &BTreeSet::new(), health)?;
    let btf = btf.context("reading kernel BTF")?;
    super::health::reload(&mut ebpf, pins, name, &btf)
}

/// The object with its globals set and its maps taken from their pins
/// (those being `replaced` made new); no program loaded yet.
fn against_pins(
    loader: EbpfLoader<'static>,
    layout: &Layout,
    pins: &Pins,
    replaced: &BTreeSet<String>,
    health: &HealthKernel,
) -> Result<Ebpf> {
    let offsets = kernel::offsets()?;
    let nr_cpus = kernel::program_cpus()?;
    let k = kernel::features().object();
    let shared = u32::from(k.shared_counters);
    let unaligned = u32::from(kernel::unaligned_stores());
    let build = object::this_build();
    sys::os::raise_memlock();
    // Borrowing the globals above for as long as the load.
    let mut loader: EbpfLoader<'_> = loader;
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
        .override_global(globals::SHARED_COUNTERS, &shared, true)
        .override_global(globals::UNALIGNED_STORES, &unaligned, true)
        .override_global(globals::BUILD_ID, &build, true);
    pin_maps(&mut loader, layout, pins, replaced, k)?;
    super::health::configure(&mut loader, health);
    sys::fault::step();
    loader.load(object::OBJECT).context("loading the BPF object")
}

/// Pins the loaded `program` as `name`, in place of the pinned one.
pub fn pin_program(program: &mut Program, pins: &Pins, name: &str) -> Result<()> {
    let pin = pins.prog(name);
    sys::fault::step();
    if pin.exists() {
        fs::remove_file(&pin)?;
    }
    sys::fault::step();
    program
        .pin(&pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

/// Sizes every map and pins those kept at their pins. On a kernel with
/// shared counter maps ([`object::SHARED_MAPS`]) those are made here first:
/// the object declares per-CPU hashes, and aya takes a pinned map as it is.
fn pin_maps(
    loader: &mut EbpfLoader<'_>,
    layout: &Layout,
    pins: &Pins,
    replaced: &BTreeSet<String>,
    k: object::Kernel,
) -> Result<()> {
    for (name, shape) in object::all_wanted_maps(&layout.maps, k) {
        loader.map_max_entries(name, shape.max_entries);
        let pin = pins.map(name);
        if k.shared_counters && object::SHARED_MAPS.contains(&name) {
            let at = match replaced.contains(name) {
                true => replace::next_pin(name, &pin),
                false => pin,
            };
            shared_map(name, &at, shape, replaced.contains(name))?;
            loader.map_pin_path(name, at);
        } else if !replaced.contains(name) {
            loader.map_pin_path(name, pin);
        }
    }
    Ok(())
}

/// Makes the shared counter map `name` (a plain hash of `shape`) pinned at
/// `at`, unless one is pinned there already; `fresh`: a map left there by
/// an earlier run is replaced (a map being replaced starts empty).
fn shared_map(name: &str, at: &Path, shape: object::MapShape, fresh: bool) -> Result<()> {
    if at.exists() {
        if !fresh {
            return Ok(());
        }
        fs::remove_file(at).with_context(|| format!("removing {}", at.display()))?;
    }
    sys::fault::step();
    // Without BTF the map would work the same, but bpftool would print it
    // in hex; a kernel refusing this small BTF gets the map without it. The
    // blob describes a `u64` key and `Counters` (the cgroup counter maps).
    let counters = shape.key_size == 8 && shape.value_size as usize == size_of::<cgacct_common::Counters>();
    let btf = match counters {
        true => sys::bpf::btf_load(&object::counter_btf()).ok(),
        false => None,
    };
    let fd = sys::bpf::hash_map_create(&sys::bpf::MapSpec {
        name,
        key_size: shape.key_size,
        value_size: shape.value_size,
        max_entries: shape.max_entries,
        btf: btf.as_ref().map(|b| (b.as_fd(), 1, 2)),
    })?;
    let c = CString::new(at.as_os_str().as_encoded_bytes())?;
    sys::bpf::obj_pin(fd.as_fd(), &c).with_context(|| format!("pinning {}", at.display()))?;
    Ok(())
}

/// A load of the programs on a thread of its own: started by the
/// `LoadPrograms` action, which returns once every program but the last
/// is pinned; what needs the last one (the stats files) or the loaded
/// object waits for it. Shared by the threads of one `execute`.
#[derive(Default)]
pub struct Pending<'scope> {
    state: std::sync::Mutex<State<'scope>>,
}

#[derive(Default)]
enum State<'scope> {
    #[default]
    Idle,
    Running(std::thread::ScopedJoinHandle<'scope, Result<Ebpf>>),
    Loaded(Ebpf),
    /// Its error went to the first to wait.
    Failed,
}

impl<'scope> Pending<'scope> {
    fn state(&self) -> std::sync::MutexGuard<'_, State<'scope>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `load` (given the function it calls when the early programs
    /// are pinned) on a thread of `scope`; returns when that function is
    /// called, or with the error of a load that stopped before it.
    pub fn start<'env>(
        &self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        load: impl FnOnce(&dyn Fn()) -> Result<Ebpf> + Send + 'scope,
    ) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = scope.spawn(move || {
            load(&|| {
                // The receiver waits until this is sent or the thread ends.
                let _ = tx.send(());
            })
        });
        if rx.recv().is_ok() {
            *self.state() = State::Running(t);
            return Ok(());
        }
        match t.join() {
            Ok(Ok(ebpf)) => {
                *self.state() = State::Loaded(ebpf);
                Ok(())
            }
            Ok(Err(e)) => {
                *self.state() = State::Failed;
                Err(e)
            }
            Err(_) => {
                *self.state() = State::Failed;
                Err(anyhow!("the thread loading the programs panicked"))
            }
        }
    }

    /// Waits for a load in progress to end: its error, the first time.
    pub fn wait(&self) -> Result<()> {
        let mut state = self.state();
        match std::mem::take(&mut *state) {
            State::Running(t) => {
                let r = t
                    .join()
                    .map_err(|_| anyhow!("the thread loading the programs panicked"))
                    .and_then(|r| r);
                match r {
                    Ok(ebpf) => *state = State::Loaded(ebpf),
                    Err(e) => {
                        *state = State::Failed;
                        return Err(e);
                    }
                }
            }
            State::Failed => {
                *state = State::Failed;
                bail!("the programs did not load (see the error above)");
            }
            other => *state = other,
        }
        Ok(())
    }

    /// `f` on the object this run loaded, once its load has ended.
    pub fn with_object<R>(&self, f: impl FnOnce(&mut Ebpf) -> Result<R>) -> Result<R> {
        self.wait()?;
        match &mut *self.state() {
            State::Loaded(ebpf) => f(ebpf),
            _ => bail!("the programs are not loaded yet"),
        }
    }
}
