//! Executes a plan: the only module that changes kernel state.
use std::{
    ffi::CString,
    fs, io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{MapInfo, MapType},
    programs::{
        links::{CgroupAttachMode, FdLink},
        tc::TcAttachOptions,
        BtfTracePoint, CgroupSkb, CgroupSkbAttachType, Iter, LinkOrder, SchedClassifier, TcAttachType,
    },
    Btf, EbpfLoader,
};
use cgacct_common::{globals, maps, programs as prog, Counters, Departed, IterAcc, Removed};

use crate::{
    host, kernel,
    layout::Layout,
    names::{self, Direction, Pins, LINKS_DIR, MAPS_DIR, PROGS_DIR},
    plan::{self, Action, World},
    sys::{self, CgroupIterOrder},
};

/// The BPF object built from programs/ by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cgacct-programs"));

/// Everything `apply` and `plan` need to know about the host.
pub struct Context {
    pub pins: Pins,
    pub cgroup_mount: PathBuf,
    pub interfaces: Vec<host::Interface>,
    pub cgroups: Vec<host::Cgroup>,
}

impl Context {
    /// Discovers the host. Creates the root directory (only) when `create_root`.
    pub fn discover(layout: &Layout, create_root: bool) -> Result<Context> {
        let cgroup_mount = host::cgroup2_mount()?;
        host::check_on_bpffs(&layout.root)?;
        if create_root {
            fs::create_dir_all(&layout.root).map_err(|e| root_error(&layout.root, e))?;
        }
        let dots = if layout.root.is_dir() {
            names::probe_dots(&layout.root).with_context(|| format!("probing {}", layout.root.display()))?
        } else {
            true
        };
        Ok(Context {
            pins: Pins::new(&layout.root, dots),
            interfaces: host::interfaces()?,
            cgroups: host::cgroups(&cgroup_mount)?,
            cgroup_mount,
        })
    }

    pub fn plan(&self, layout: &Layout) -> Result<Vec<Action>> {
        plan::plan(&World {
            layout,
            pins: &self.pins,
            interfaces: &self.interfaces,
            cgroups: &self.cgroups,
        })
    }
}

fn root_error(root: &Path, e: io::Error) -> anyhow::Error {
    if e.raw_os_error() == Some(libc::EPERM) && root.to_string_lossy().contains('.') {
        anyhow!(
            "cannot create {}: bpffs refuses '.' in names; choose a root without dots",
            root.display()
        )
    } else {
        anyhow!("cannot create {}: {e}", root.display())
    }
}

/// Runs `actions` in order, calling `report` after each one succeeds.
pub fn execute(
    layout: &Layout,
    ctx: &Context,
    actions: &[Action],
    mut report: impl FnMut(&Action),
) -> Result<()> {
    let pins = &ctx.pins;
    for dir in [PROGS_DIR, MAPS_DIR, LINKS_DIR] {
        names::create_dirs(&pins.root, &pins.root.join(dir))?;
    }
    names::create_dirs(&pins.root, &pins.tc_links())?;
    names::create_dirs(&pins.root, &pins.cgroup_links())?;
    let mut progs = Handles::default();
    for action in actions {
        run(layout, ctx, &mut progs, action).with_context(|| format!("failed to {action}"))?;
        report(action);
    }
    Ok(())
}

/// Programs opened from their pins, once per apply.
#[derive(Default)]
struct Handles {
    tc: [Option<SchedClassifier>; 2],
    cg: [Option<CgroupSkb>; 2],
    iter: Option<Iter>,
}

fn run(layout: &Layout, ctx: &Context, h: &mut Handles, action: &Action) -> Result<()> {
    let pins = &ctx.pins;
    match action {
        Action::LoadPrograms => load_programs(layout, pins),
        Action::AttachTc {
            interface,
            direction,
            pin,
        } => {
            let i = *direction as usize;
            if h.tc[i].is_none() {
                let name = [prog::TC_INGRESS, prog::TC_EGRESS][i];
                h.tc[i] = Some(SchedClassifier::from_pin(pins.prog(name))?);
            }
            let p = h.tc[i].as_mut().ok_or_else(|| anyhow!("tc program not open"))?;
            let kind = match direction {
                Direction::Ingress => TcAttachType::Ingress,
                Direction::Egress => TcAttachType::Egress,
            };
            let id = p
                .attach_with_options(interface, kind, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .map_err(|e| tc_error(interface, e))?;
            let link: FdLink = p.take_link(id)?.try_into()?;
            pin_link(pins, pin, link)
        }
        Action::AttachCgroup {
            cgroup,
            direction,
            pin,
            ..
        } => {
            let i = *direction as usize;
            let kind = [CgroupSkbAttachType::Ingress, CgroupSkbAttachType::Egress][i];
            if h.cg[i].is_none() {
                let name = [prog::CGROUP_INGRESS, prog::CGROUP_EGRESS][i];
                h.cg[i] = Some(CgroupSkb::from_pin(pins.prog(name), kind)?);
            }
            let p = h.cg[i]
                .as_mut()
                .ok_or_else(|| anyhow!("cgroup_skb program not open"))?;
            let dir = open_cgroup(&ctx.cgroup_mount, cgroup)?;
            let id = p.attach(&dir, kind, CgroupAttachMode::Single)?;
            let link: FdLink = p.take_link(id)?.try_into()?;
            pin_link(pins, pin, link)
        }
        Action::PinStats { cgroup, pin, .. } => {
            if h.iter.is_none() {
                h.iter = Some(Iter::from_pin(pins.prog(prog::CGROUP_ITER))?);
            }
            let p = h
                .iter
                .as_ref()
                .ok_or_else(|| anyhow!("iterator program not open"))?;
            let dir = open_cgroup(&ctx.cgroup_mount, cgroup)?;
            let link = sys::cgroup_iter_link(p.fd()?.as_fd(), dir.as_fd(), CgroupIterOrder::DescendantsPre)
                .context("BPF_LINK_CREATE of the cgroup iterator")?;
            if let Some(parent) = pin.parent() {
                names::create_dirs(&pins.root, parent)?;
            }
            let c = CString::new(pin.as_os_str().as_encoded_bytes())?;
            names::create_with_dots(pin, || sys::obj_pin(link.as_fd(), &c))?;
            Ok(())
        }
        Action::AttachRmdir { pin } => {
            let mut p = BtfTracePoint::from_pin(pins.prog(prog::CGROUP_RMDIR))?;
            let id = p
                .attach()
                .context("attaching to the cgroup_rmdir tracepoint (needs BTF and CAP_BPF + CAP_PERFMON)")?;
            let link: FdLink = p.take_link(id)?.into();
            pin_link(pins, pin, link)
        }
        Action::Unpin { pin, .. } => {
            fs::remove_file(pin)?;
            remove_empty_parents(&pins.root, pin);
            Ok(())
        }
    }
}

fn tc_error(interface: &str, e: aya::programs::ProgramError) -> anyhow::Error {
    let text = format!("{e}");
    if text.contains("Invalid argument") || text.contains("not supported") {
        anyhow!(
            "attaching to {interface} with a TCX link failed ({e}): TCX needs Linux >= 6.6 \
             with CONFIG_NET_XGRESS"
        )
    } else {
        anyhow!("attaching to {interface}: {e}")
    }
}

fn open_cgroup(mount: &Path, display_path: &str) -> Result<fs::File> {
    let path = mount.join(display_path.trim_start_matches('/'));
    fs::File::open(&path).with_context(|| format!("opening cgroup {}", path.display()))
}

fn pin_link(pins: &Pins, pin: &Path, link: FdLink) -> Result<()> {
    if let Some(parent) = pin.parent() {
        names::create_dirs(&pins.root, parent)?;
    }
    names::create_with_dots(pin, || link.pin(pin).map(drop).map_err(io::Error::other))?;
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

/// What each shared map must be for the programs of this build.
fn expected_maps(layout: &Layout) -> [(&'static str, MapType, u32, u32, u32); 9] {
    let c = size_of::<Counters>() as u32;
    [
        (maps::CGROUP_STATS, MapType::PerCpuHash, 8, c, layout.maps.cgroups),
        (
            maps::TC_CGROUP_STATS,
            MapType::PerCpuHash,
            8,
            c,
            layout.maps.cgroups,
        ),
        (
            maps::IFACE_STATS,
            MapType::PerCpuHash,
            4,
            c,
            layout.maps.interfaces,
        ),
        (
            maps::ITER_SCRATCH,
            MapType::LruHash,
            8,
            size_of::<IterAcc>() as u32,
            layout.maps.readers,
        ),
        (maps::IFACE_OWNER, MapType::Hash, 4, 8, layout.maps.interfaces),
        (maps::VETH_STATS, MapType::PerCpuHash, 8, c, layout.maps.cgroups),
        (
            maps::DEPARTED,
            MapType::Hash,
            8,
            size_of::<Departed>() as u32,
            layout.maps.cgroups,
        ),
        (
            maps::REMOVED,
            MapType::LruHash,
            8,
            size_of::<Removed>() as u32,
            layout.maps.cgroups,
        ),
        (
            maps::REMOVED_SCRATCH,
            MapType::PerCpuArray,
            4,
            size_of::<Removed>() as u32,
            1,
        ),
    ]
}

/// Refuses to reuse a pinned map that the programs would misread.
fn check_pinned_maps(layout: &Layout, pins: &Pins) -> Result<()> {
    for (name, ty, key, value, max) in expected_maps(layout) {
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let info =
            MapInfo::from_pin(&path).with_context(|| format!("reading pinned map {}", path.display()))?;
        let found = (
            info.map_type()?,
            info.key_size(),
            info.value_size(),
            info.max_entries(),
        );
        if found != (ty, key, value, max) {
            bail!(
                "pinned map {} is {:?} key {} value {} max_entries {}, but this layout and build need \
                 {ty:?} key {key} value {value} max_entries {max}; its counters are kept as they are. \
                 Restore the layout's map sizes, or run `cgacct-pin destroy` to start from zero",
                path.display(),
                found.0,
                found.1,
                found.2,
                found.3
            );
        }
    }
    Ok(())
}

fn load_programs(layout: &Layout, pins: &Pins) -> Result<()> {
    check_pinned_maps(layout, pins)?;
    let offsets = kernel::offsets()?;
    let nr_cpus = kernel::nr_cpus()?;
    let mut loader = EbpfLoader::new();
    loader
        .override_global(globals::NR_CPUS, &nr_cpus, true)
        .override_global(globals::CGROUP_KN_OFFSET, &offsets.cgroup_kn, true)
        .override_global(globals::KERNFS_NODE_ID_OFFSET, &offsets.kernfs_node_id, true)
        .override_global(
            globals::KERNFS_NODE_PARENT_OFFSET,
            &offsets.kernfs_node_parent,
            true,
        );
    for (name, _, _, _, max) in expected_maps(layout) {
        loader
            .map_max_entries(name, max)
            .map_pin_path(name, pins.map(name));
    }
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
        if pin.exists() {
            fs::remove_file(&pin)?;
        }
        program
            .pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
    }
    Ok(())
}

/// Removes every pin and directory cgacct made under the root. Returns
/// what it removed; entries it does not recognise are left and reported.
pub fn destroy(pins: &Pins) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut removed = Vec::new();
    if !pins.root.exists() {
        return Ok((removed, Vec::new()));
    }
    for stat in plan::stats_files(pins)? {
        fs::remove_file(&stat)?;
        removed.push(stat);
    }
    for dir in [pins.tc_links(), pins.cgroup_links()] {
        for pin in plan::two_level_pins(&dir)? {
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
        if p.exists() {
            fs::remove_file(&p)?;
            removed.push(p);
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
