//! Executes a plan: the only module that changes kernel state.
use std::{
    collections::BTreeSet,
    ffi::CString,
    fs, io,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::PermissionsExt as _,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{HashMap, Map, MapData, PerCpuHashMap, PerCpuValues},
    programs::{
        links::{CgroupAttachMode, FdLink},
        loaded_programs, BtfTracePoint, CgroupSkb, CgroupSkbAttachType, Iter, SchedClassifier,
    },
    Btf, Ebpf, EbpfLoader,
};
use cgacct_common::{globals, maps, programs as prog, Counters, Departed, Removed};

use crate::{
    build_id, fault,
    held::{self, Held, Stray, StrayTarget},
    host, kernel,
    layout::Layout,
    names::{self, Pins, LINKS_DIR, MAPS_DIR, PROGS_DIR},
    plan::{self, Action, MapPolicy, World},
    sys::{self, CgroupIterOrder, Hook},
    tc_attach,
};

/// The BPF object built from programs/ by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cgacct-programs"));

/// Everything `apply` and `plan` need to know about the host and the root.
pub struct Context {
    pub pins: Pins,
    pub cgroup_mount: PathBuf,
    pub interfaces: Vec<host::Interface>,
    pub cgroups: Vec<host::Cgroup>,
    pub held: Held,
}

impl Context {
    /// Discovers the host and what the kernel holds under the root. Reads only.
    pub fn discover(layout: &Layout) -> Result<Context> {
        let cgroup_mount = host::cgroup2_mount()?;
        host::check_on_bpffs(&layout.root)?;
        let dots = if layout.root.is_dir() {
            names::probe_dots(&layout.root).with_context(|| format!("probing {}", layout.root.display()))?
        } else {
            true
        };
        let pins = Pins::new(&layout.root, dots);
        let interfaces = host::interfaces()?;
        let cgroups = host::cgroups(&cgroup_mount)?;
        let held = held::read(&pins, &interfaces, &cgroups, &cgroup_mount)
            .context("reading what the kernel holds under the root")?;
        Ok(Context {
            pins,
            cgroup_mount,
            interfaces,
            cgroups,
            held,
        })
    }

    pub fn plan(&self, layout: &Layout, maps: MapPolicy) -> Result<Vec<Action>> {
        plan::plan(&World {
            layout,
            pins: &self.pins,
            interfaces: &self.interfaces,
            cgroups: &self.cgroups,
            held: &self.held,
            maps,
        })
    }
}

/// Fails unless `root` can be created on bpffs: every missing component
/// must be a name bpffs accepts, checked before anything is made.
pub fn check_root_name(root: &Path) -> Result<()> {
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
pub fn create_root(root: &Path) -> Result<bool> {
    if root.is_dir() {
        return Ok(false);
    }
    check_root_name(root)?;
    fs::create_dir_all(root).map_err(|e| anyhow!("cannot create {}: {e}", root.display()))?;
    Ok(true)
}

/// An exclusive lock on a root: one `apply` (or `destroy`) at a time.
/// Held until dropped; the kernel releases it if the process dies.
pub struct RootLock(#[allow(dead_code)] fs::File);

impl RootLock {
    /// Takes the lock, waiting up to `timeout` (and saying so) if another
    /// cgacct-pin holds it.
    pub fn take(root: &Path, timeout: Duration) -> Result<RootLock> {
        let dir = fs::File::open(root).with_context(|| format!("opening {} to lock it", root.display()))?;
        let start = Instant::now();
        let mut said = false;
        loop {
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(RootLock(dir));
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                bail!("locking {}: {e}", root.display());
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

/// How far `execute` got when an action failed.
#[derive(Debug, thiserror::Error)]
#[error("{done} of {total} actions done, then: {source:#}")]
pub struct Partial {
    pub done: usize,
    pub total: usize,
    pub source: anyhow::Error,
}

/// Runs `actions` in order, calling `report` after each one succeeds.
pub fn execute(
    layout: &Layout,
    ctx: &Context,
    actions: &[Action],
    mut report: impl FnMut(&Action),
) -> Result<(), Partial> {
    let total = actions.len();
    let partial = |done, source| Partial { done, total, source };
    if actions.is_empty() {
        return Ok(());
    }
    let pins = &ctx.pins;
    let mut s = Session {
        replaced: actions
            .iter()
            .filter_map(|a| match a {
                Action::ReplaceMap { map, .. } => Some(map.clone()),
                _ => None,
            })
            .collect(),
        ..Session::default()
    };
    for dir in [
        pins.root.join(PROGS_DIR),
        pins.root.join(MAPS_DIR),
        pins.tc_links(),
        pins.cgroup_links(),
    ] {
        names::create_dirs(&pins.root, &dir)
            .and_then(|()| settle_access(layout, pins, &dir))
            .map_err(|e| partial(0, anyhow!("creating {}: {e}", dir.display())))?;
    }
    for (done, action) in actions.iter().enumerate() {
        run(layout, ctx, &mut s, action)
            .with_context(|| format!("failed to {action}"))
            .map_err(|e| partial(done, e))?;
        report(action);
    }
    Ok(())
}

/// State carried from one action to the next within one `execute`.
#[derive(Default)]
struct Session {
    /// Programs opened from their pins.
    tc: [Option<SchedClassifier>; 2],
    cg: [Option<CgroupSkb>; 2],
    iter: Option<Iter>,
    /// The object loaded by this run, holding the new maps until pinned.
    loaded: Option<Ebpf>,
    /// Maps being replaced: not reused at load.
    replaced: BTreeSet<String>,
}

fn run(layout: &Layout, ctx: &Context, s: &mut Session, action: &Action) -> Result<()> {
    let pins = &ctx.pins;
    match action {
        Action::LoadPrograms { .. } => {
            s.loaded = Some(load_programs(layout, pins, &s.replaced)?);
            for p in plan::PROGRAMS {
                settle_access(layout, pins, &pins.prog(p))?;
            }
            for m in maps::ALL {
                settle_access(layout, pins, &pins.map(m))?;
            }
            Ok(())
        }
        Action::ReplaceMap {
            map,
            pin,
            keep_counters,
            ..
        } => {
            let ebpf = s
                .loaded
                .as_mut()
                .ok_or_else(|| anyhow!("a map is replaced only after the programs are loaded"))?;
            let new = ebpf
                .map_mut(map)
                .ok_or_else(|| anyhow!("map {map} missing from the object"))?;
            replace_map(map, pin, new, *keep_counters)?;
            settle_access(layout, pins, pin)?;
            Ok(())
        }
        Action::UpdateLink { pin, program } => {
            let link = sys::obj_get(pin).with_context(|| format!("opening {}", pin.display()))?;
            let prog_pin = pins.prog(program);
            let p = sys::obj_get(&prog_pin).with_context(|| format!("opening {}", prog_pin.display()))?;
            fault::step();
            sys::link_update(link.as_fd(), p.as_fd()).context("BPF_LINK_UPDATE")?;
            Ok(())
        }
        Action::AttachTc {
            interface,
            direction,
            pin,
            replace,
        } => {
            remove_old(pins, pin, replace.is_some())?;
            let i = *direction as usize;
            if s.tc[i].is_none() {
                let name = [prog::TC_INGRESS, prog::TC_EGRESS][i];
                s.tc[i] = Some(SchedClassifier::from_pin(pins.prog(name))?);
            }
            let p = s.tc[i].as_mut().ok_or_else(|| anyhow!("tc program not open"))?;
            fault::step();
            tc_attach::attach(pins, p, interface, *direction, pin)?;
            settle_access(layout, pins, pin)?;
            Ok(())
        }
        Action::AttachCgroup {
            cgroup,
            direction,
            pin,
            replace,
            ..
        } => {
            remove_old(pins, pin, replace.is_some())?;
            let i = *direction as usize;
            let kind = [CgroupSkbAttachType::Ingress, CgroupSkbAttachType::Egress][i];
            if s.cg[i].is_none() {
                let name = [prog::CGROUP_INGRESS, prog::CGROUP_EGRESS][i];
                s.cg[i] = Some(CgroupSkb::from_pin(pins.prog(name), kind)?);
            }
            let p = s.cg[i]
                .as_mut()
                .ok_or_else(|| anyhow!("cgroup_skb program not open"))?;
            let dir = open_cgroup(&ctx.cgroup_mount, cgroup)?;
            fault::step();
            let id = p.attach(&dir, kind, CgroupAttachMode::Single)?;
            let link: FdLink = p.take_link(id)?.try_into()?;
            pin_link(layout, pins, pin, link)
        }
        Action::PinStats {
            cgroup, pin, replace, ..
        } => {
            remove_old(pins, pin, replace.is_some())?;
            if s.iter.is_none() {
                s.iter = Some(Iter::from_pin(pins.prog(prog::CGROUP_ITER))?);
            }
            let p = s
                .iter
                .as_ref()
                .ok_or_else(|| anyhow!("iterator program not open"))?;
            let dir = open_cgroup(&ctx.cgroup_mount, cgroup)?;
            fault::step();
            let link = sys::cgroup_iter_link(p.fd()?.as_fd(), dir.as_fd(), CgroupIterOrder::DescendantsPre)
                .context("BPF_LINK_CREATE of the cgroup iterator")?;
            if let Some(parent) = pin.parent() {
                names::create_dirs(&pins.root, parent)?;
            }
            let c = CString::new(pin.as_os_str().as_encoded_bytes())?;
            fault::step();
            names::create_with_dots(pin, || sys::obj_pin(link.as_fd(), &c))?;
            settle_access(layout, pins, pin)?;
            Ok(())
        }
        Action::AttachRmdir { pin, replace } => {
            remove_old(pins, pin, replace.is_some())?;
            let mut p = BtfTracePoint::from_pin(pins.prog(prog::CGROUP_RMDIR))?;
            fault::step();
            let id = p
                .attach()
                .context("attaching to the cgroup_rmdir tracepoint (needs BTF and CAP_BPF + CAP_PERFMON)")?;
            let link: FdLink = p.take_link(id)?.into();
            pin_link(layout, pins, pin, link)
        }
        Action::Unpin { pin, .. } => {
            fault::step();
            tc_attach::release(pins, pin)?;
            fs::remove_file(pin)?;
            remove_empty_parents(&pins.root, pin);
            Ok(())
        }
        Action::Detach(stray) => detach(ctx, stray),
        Action::SetAccess { path, .. } => {
            fault::step();
            settle_access(layout, pins, path)?;
            Ok(())
        }
    }
}

/// Removes the pin an attach action replaces (and a clsact filter it
/// stands for).
fn remove_old(pins: &Pins, pin: &Path, replace: bool) -> Result<()> {
    if replace {
        fault::step();
        tc_attach::release(pins, pin)?;
        match fs::remove_file(pin) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", pin.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Gives `path` and its directories up to the root the owner, group and
/// mode the layout wants.
pub fn settle_access(layout: &Layout, pins: &Pins, path: &Path) -> io::Result<()> {
    let mut cur = Some(path);
    while let Some(p) = cur {
        if let Some((a, _)) = plan::wanted_access(layout, pins, p) {
            if !plan::has_access(p, &a) {
                std::os::unix::fs::lchown(p, Some(a.uid), Some(a.gid))?;
                fs::set_permissions(p, fs::Permissions::from_mode(a.mode))?;
            }
        }
        if p == pins.root {
            break;
        }
        cur = p.parent();
    }
    Ok(())
}

/// Detaches an attachment of our programs that no pin of ours holds.
fn detach(ctx: &Context, stray: &Stray) -> Result<()> {
    fault::step();
    if stray.link_id != 0 {
        return sys::link_detach_by_id(stray.link_id)
            .with_context(|| format!("detaching link {}", stray.link_id));
    }
    let prog = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == stray.prog_id)
        .ok_or_else(|| anyhow!("program id {} is gone", stray.prog_id))?
        .fd()?;
    match &stray.target {
        StrayTarget::Interface { ifindex } => {
            let t = [sys::TCX_INGRESS, sys::TCX_EGRESS][stray.direction as usize];
            sys::prog_detach(Hook::Interface(*ifindex), prog.as_fd(), t).context("BPF_PROG_DETACH")
        }
        StrayTarget::Cgroup { path } => {
            let t = [sys::CGROUP_INGRESS, sys::CGROUP_EGRESS][stray.direction as usize];
            let dir = open_cgroup(&ctx.cgroup_mount, path)?;
            match sys::prog_detach(Hook::Cgroup(dir.as_fd()), prog.as_fd(), t) {
                Ok(()) => Ok(()),
                // Not a plain attachment: a link nobody pinned under our root.
                Err(_) => {
                    let id = sys::link_ids()
                        .into_iter()
                        .filter(|id| !held_by_us(ctx, *id))
                        .find(|id| {
                            sys::link_state_by_id(*id).is_ok_and(|l| {
                                l.prog_id == stray.prog_id
                                    && matches!(l.target, sys::LinkTarget::Cgroup { attach_type, .. } if attach_type == t)
                            })
                        })
                        .ok_or_else(|| anyhow!("no attachment of program {} found to detach", stray.prog_id))?;
                    sys::link_detach_by_id(id).with_context(|| format!("detaching link {id}"))
                }
            }
        }
    }
}

fn held_by_us(ctx: &Context, link_id: u32) -> bool {
    ctx.held.links.values().flatten().any(|l| l.id == link_id)
}

fn open_cgroup(mount: &Path, display_path: &str) -> Result<fs::File> {
    let path = mount.join(display_path.trim_start_matches('/'));
    fs::File::open(&path).with_context(|| format!("opening cgroup {}", path.display()))
}

fn pin_link(layout: &Layout, pins: &Pins, pin: &Path, link: FdLink) -> Result<()> {
    if let Some(parent) = pin.parent() {
        names::create_dirs(&pins.root, parent)?;
    }
    fault::step();
    names::create_with_dots(pin, || link.pin(pin).map(drop).map_err(io::Error::other))?;
    settle_access(layout, pins, pin)?;
    Ok(())
}

/// Removes directories left empty below `root`, from `path`'s parent up.
fn remove_empty_parents(root: &Path, path: &Path) {
    let keep = [
        root.join(LINKS_DIR).join("tc"),
        root.join(LINKS_DIR).join("cgroup"),
    ];
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || keep.iter().any(|k| k == d) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// Loads the object: pinned maps are reused, but those being replaced,
/// which are created new. Programs are pinned in place of the pinned ones,
/// the iterator last (see [`plan::PROGRAMS`]).
fn load_programs(layout: &Layout, pins: &Pins, replaced: &BTreeSet<String>) -> Result<Ebpf> {
    let offsets = kernel::offsets()?;
    let nr_cpus = kernel::nr_cpus()?;
    let build = build_id::this_build();
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
    for (name, shape) in plan::wanted_maps(layout) {
        loader.map_max_entries(name, shape.max_entries);
        if !replaced.contains(name) {
            loader.map_pin_path(name, pins.map(name));
        }
    }
    fault::step();
    let mut ebpf = loader.load(OBJECT).context("loading the BPF object")?;
    let btf = Btf::from_sys_fs().context("reading kernel BTF")?;
    for name in plan::PROGRAMS {
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
        let pin = pins.prog(name);
        match program {
            aya::programs::Program::SchedClassifier(p) => p.load()?,
            aya::programs::Program::CgroupSkb(p) => p.load()?,
            aya::programs::Program::Iter(p) => p.load("cgroup", &btf)?,
            aya::programs::Program::BtfTracePoint(p) => p.load("cgroup_rmdir", &btf)?,
            _ => bail!("program {name} has an unexpected type"),
        }
        fault::step();
        if pin.exists() {
            fs::remove_file(&pin)?;
        }
        fault::step();
        program
            .pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
    }
    Ok(ebpf)
}

/// Pins `new` in place of the map pinned at `pin` (an atomic rename on
/// bpffs), adding the old counters into it first when `keep`.
fn replace_map(name: &str, pin: &Path, new: &mut Map, keep: bool) -> Result<()> {
    let next = pin.with_file_name(format!("{}_next", name.to_ascii_lowercase()));
    if next.exists() {
        fs::remove_file(&next)?;
    }
    if keep {
        match name {
            maps::IFACE_STATS => add_counters::<u32>(pin, new)?,
            maps::CGROUP_STATS | maps::TC_CGROUP_STATS | maps::VETH_STATS => add_counters::<u64>(pin, new)?,
            maps::DEPARTED => add_departed(pin, new)?,
            maps::REMOVED => copy_removed(pin, new)?,
            _ => {}
        }
    }
    fault::step();
    let data: &MapData = match new {
        Map::PerCpuHashMap(d) | Map::LruHashMap(d) | Map::HashMap(d) | Map::PerCpuArray(d) => d,
        _ => bail!("map {name} has an unexpected type"),
    };
    data.pin(&next)
        .with_context(|| format!("pinning {}", next.display()))?;
    fault::step();
    fs::rename(&next, pin).with_context(|| format!("renaming {} to {}", next.display(), pin.display()))?;
    Ok(())
}

/// Adds the folded totals of removed cgroups pinned at `old` into `new`.
fn add_departed(old: &Path, new: &mut Map) -> Result<()> {
    let old = MapData::from_pin(old).with_context(|| format!("opening {}", old.display()))?;
    let old: HashMap<MapData, u64, Departed> = Map::HashMap(old).try_into()?;
    let mut new: HashMap<&mut MapData, u64, Departed> = new.try_into()?;
    for entry in old.iter() {
        let (key, mut d) = entry?;
        if let Ok(cur) = new.get(&key, 0) {
            d.cgroups += cur.cgroups;
            d.totals.add(&cur.totals);
        }
        fault::step();
        new.insert(key, d, 0)?;
    }
    Ok(())
}

/// Copies the records of removed cgroups pinned at `old` into `new`.
fn copy_removed(old: &Path, new: &mut Map) -> Result<()> {
    let old = MapData::from_pin(old).with_context(|| format!("opening {}", old.display()))?;
    let old: HashMap<MapData, u64, Removed> = Map::LruHashMap(old).try_into()?;
    let mut new: HashMap<&mut MapData, u64, Removed> = new.try_into()?;
    for entry in old.iter() {
        let (key, r) = entry?;
        if new.get(&key, 0).is_err() {
            fault::step();
            new.insert(key, r, 0)?;
        }
    }
    Ok(())
}

/// Adds every counter of the map pinned at `old` into `new`, CPU by CPU
/// (the new programs may already have counted into it).
fn add_counters<K: aya::Pod + Ord>(old: &Path, new: &mut Map) -> Result<()> {
    let old = MapData::from_pin(old).with_context(|| format!("opening {}", old.display()))?;
    let old: PerCpuHashMap<MapData, K, Counters> = Map::PerCpuHashMap(old).try_into()?;
    let mut new: PerCpuHashMap<&mut MapData, K, Counters> = new.try_into()?;
    for entry in old.iter() {
        let (key, values) = entry?;
        let mut sum: Vec<Counters> = values.iter().copied().collect();
        if let Ok(cur) = new.get(&key, 0) {
            for (s, c) in sum.iter_mut().zip(cur.iter()) {
                s.add(c);
            }
        }
        fault::step();
        new.insert(key, PerCpuValues::try_from(sum)?, 0)?;
    }
    Ok(())
}

/// Removes every pin and directory cgacct made under the root. Returns
/// what it removed; entries it does not recognise are left and reported.
pub fn destroy(ctx: &Context) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let pins = &ctx.pins;
    let mut removed = Vec::new();
    if !pins.root.exists() {
        return Ok((removed, Vec::new()));
    }
    // Attachments of our programs that no pin holds would keep them alive.
    for stray in &ctx.held.strays {
        detach(ctx, stray)?;
    }
    for stat in plan::stats_files(pins)? {
        fs::remove_file(&stat)?;
        removed.push(stat);
    }
    for dir in [pins.tc_links(), pins.cgroup_links()] {
        for pin in plan::two_level_pins(&dir)? {
            tc_attach::release(pins, &pin)?;
            fs::remove_file(&pin)?;
            removed.push(pin);
        }
    }
    let rmdir = pins.rmdir_link();
    if rmdir.exists() {
        fs::remove_file(&rmdir)?;
        removed.push(rmdir);
    }
    for name in plan::PROGRAMS {
        let p = pins.prog(name);
        if p.exists() {
            fs::remove_file(&p)?;
            removed.push(p);
        }
    }
    for name in maps::ALL {
        let p = pins.map(name);
        // A replacement map left by an interrupted apply, then the map.
        let next = p.with_file_name(format!("{}_next", name.to_ascii_lowercase()));
        for p in [next, p] {
            if p.exists() {
                fs::remove_file(&p)?;
                removed.push(p);
            }
        }
    }
    // Directories, deepest first; a non-empty one holds something not ours.
    let mut dirs: Vec<PathBuf> = walkdir::WalkDir::new(&pins.root)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_dir())
        .map(|e| e.into_path())
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = fs::remove_dir(&d);
    }
    let left: Vec<PathBuf> = walkdir::WalkDir::new(&pins.root)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_type().is_dir())
        .map(|e| e.into_path())
        .collect();
    Ok((removed, left))
}
