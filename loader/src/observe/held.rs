//! What the kernel holds under a root: the pinned programs (and the build
//! they come from), what each pinned link is really attached to, and any
//! attachment of our programs that no pin of ours accounts for (made by
//! hand, or left by an older run). Only reads: `BPF_OBJ_GET`, info and
//! query calls, `lstat`.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _, Result};
use aya::{maps::MapInfo, programs::ProgramInfo};

use super::host::{Cgroup, Interface};
use crate::{
    bpffs::{walk::Tree, Direction, Pins},
    object::{self, MapShape, PROGRAMS},
    sys::{
        self,
        bpf::{Attached, Hook, LinkState},
    },
    tc,
};

/// A pinned program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldProgram {
    pub id: u32,
}

/// An attachment of one of our programs that no pin of ours holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Stray {
    /// `tc <ifname> <direction>` or `cgroup <path> <direction>`.
    pub hook: String,
    pub target: StrayTarget,
    pub direction: Direction,
    pub prog_id: u32,
    /// The link holding it, or 0 for a plain (non-link) attachment.
    pub link_id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrayTarget {
    Interface { ifindex: u32 },
    Cgroup { path: String },
}

#[derive(Debug, Default)]
pub struct Held {
    /// Pinned programs by name; missing ones are absent.
    pub programs: BTreeMap<&'static str, HeldProgram>,
    /// Pinned maps by name, with their shape.
    pub maps: BTreeMap<&'static str, MapShape>,
    /// Build id of the pinned programs, if they carry one.
    pub build: Option<u64>,
    /// Every link pin (TC, cgroup, stats file), with what it holds; `None`
    /// when the pin cannot be opened as a link. Hashed: with thousands of
    /// pins, each path compared in a tree costs more than its hash.
    pub links: HashMap<PathBuf, Option<LinkState>>,
    pub strays: Vec<Stray>,
    /// The class tables (None: the root has no class maps).
    pub classes: Option<crate::spec::classes::ClassTable>,
    /// What the running kernel offers the health programs.
    pub health: super::health::HealthKernel,
}

/// What the link pin at `pin` holds: a link, or under `links/tc` a clsact
/// marker with its filter's state; None for anything else. The pin is
/// opened once, from `root` (the root of `pins`, opened).
pub fn read_pin(
    pins: &Pins,
    root: &sys::bpf::PinRoot,
    pin: &Path,
    interfaces: &[Interface],
) -> Result<Option<LinkState>> {
    let Ok(fd) = root.obj_get(pin) else {
        return Ok(None);
    };
    match sys::bpf::fd_kind(fd.as_fd())? {
        sys::bpf::ObjectKind::Link => Ok(sys::bpf::link_state(fd.as_fd()).ok()),
        sys::bpf::ObjectKind::Program if pin.starts_with(pins.tc_links()) => {
            let prog_id = sys::bpf::prog_id(fd.as_fd())
                .with_context(|| format!("reading pinned program {}", pin.display()))?;
            let ifindex_of = |name: &str| interfaces.iter().find(|i| i.name == name).map(|i| i.ifindex);
            tc::filters::marker_state(pins, pin, prog_id, ifindex_of).map(Some)
        }
        _ => Ok(None),
    }
}

/// What the kernel holds under the root, from the walk `tree` of it;
/// `health`, what the kernel offers the health programs, is probed by the
/// caller (beside the walks).
pub fn read(
    pins: &Pins,
    tree: &Tree,
    interfaces: &[Interface],
    cgroups: &[Cgroup],
    cgroup_mount: &Path,
    k: object::Kernel,
    health: super::health::HealthKernel,
) -> Result<Held> {
    let mut held = Held::default();
    let health_programs = object::health::PROGRAMS.iter().map(|p| p.name);
    for name in PROGRAMS.into_iter().chain(health_programs) {
        let pin = pins.prog(name);
        if !pin.exists() {
            continue;
        }
        let info = ProgramInfo::from_pin(&pin).with_context(|| format!("reading {}", pin.display()))?;
        held.programs.insert(name, HeldProgram { id: info.id() });
    }
    for name in object::all_maps() {
        let pin = pins.map(name);
        if !pin.exists() {
            continue;
        }
        let info =
            MapInfo::from_pin(&pin).with_context(|| format!("reading pinned map {}", pin.display()))?;
        held.maps.insert(
            name,
            MapShape {
                kind: info.map_type()?,
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
            },
        );
    }
    // The program pinned last carries the build (the iterator, where this
    // kernel has it).
    if let Some(last) = object::programs(k).last() {
        if held.programs.contains_key(last) {
            held.build = running_build(&pins.prog(last))?;
        }
    }
    // The walk just saw these: no stat of each again. One removed since
    // reads as no link, and is dropped if it is gone.
    let mut link_pins = tree.two_level(&pins.tc_links());
    link_pins.extend(tree.two_level(&pins.cgroup_links()));
    link_pins.extend(tree.stats_files(pins));
    link_pins.extend(
        [pins.rmdir_link(), pins.release_link()]
            .into_iter()
            .chain(object::health::PROGRAMS.iter().map(|p| pins.tracing_link(p.name)))
            .filter(|p| p.exists()),
    );
    let root = sys::bpf::PinRoot::open(&pins.root);
    let states = super::par_map(&link_pins, |pin| read_pin(pins, &root, pin, interfaces))?;
    for (pin, state) in link_pins.into_iter().zip(states) {
        if state.is_none() && !pin.exists() {
            continue;
        }
        held.links.insert(pin, state);
    }
    held.strays = strays(&held, interfaces, cgroups, cgroup_mount)?;
    held.classes = super::classes::read(pins).context("reading the class tables")?;
    held.health = health;
    held.health.failed = super::health::failed_programs(&pins.map(cgacct_common::health::maps::HEALTH_STATE));
    Ok(held)
}

/// Attachments of our programs at TC and cgroup hooks beyond our pinned links.
fn strays(
    held: &Held,
    interfaces: &[Interface],
    cgroups: &[Cgroup],
    cgroup_mount: &Path,
) -> Result<Vec<Stray>> {
    let ours: BTreeSet<u32> = held
        .programs
        .values()
        .map(|p| p.id)
        .chain(held.links.values().flatten().map(|l| l.prog_id))
        .collect();
    let our_links: BTreeSet<u32> = held.links.values().flatten().map(|l| l.id).collect();
    if ours.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<Stray> = super::par_map(interfaces, |iface| {
        let mut out = Vec::new();
        for (direction, attach_type) in [
            (Direction::Ingress, sys::bpf::TCX_INGRESS),
            (Direction::Egress, sys::bpf::TCX_EGRESS),
        ] {
            // Interfaces without TCX support answer with an error: nothing there.
            let Ok(list) = sys::bpf::prog_query(Hook::Interface(iface.ifindex), attach_type) else {
                continue;
            };
            for a in list {
                if ours.contains(&a.prog_id) && !our_links.contains(&a.link_id) {
                    out.push(Stray {
                        hook: format!("tc {} {}", iface.name, direction.as_str()),
                        target: StrayTarget::Interface {
                            ifindex: iface.ifindex,
                        },
                        direction,
                        prog_id: a.prog_id,
                        link_id: a.link_id,
                    });
                }
            }
        }
        Ok(out)
    })?
    .into_iter()
    .flatten()
    .collect();
    // Cgroup queries report programs, not links: count ours against the
    // links we hold on that cgroup and hook.
    let mut held_at: BTreeMap<(u64, u32), usize> = BTreeMap::new();
    for l in held.links.values().flatten() {
        if let sys::bpf::LinkTarget::Cgroup {
            cgroup_id,
            attach_type,
        } = l.target
        {
            *held_at.entry((cgroup_id, attach_type)).or_default() += 1;
        }
    }
    let at_cgroups = super::par_map(cgroups, |cg| {
        let mut out = Vec::new();
        let Ok(dir) = fs::File::open(cg.fs_path(cgroup_mount)) else {
            return Ok(out); // removed meanwhile
        };
        for (direction, attach_type) in [
            (Direction::Ingress, sys::bpf::CGROUP_INGRESS),
            (Direction::Egress, sys::bpf::CGROUP_EGRESS),
        ] {
            let list = match sys::bpf::prog_query(Hook::Cgroup(dir.as_fd()), attach_type) {
                Ok(list) => list,
                // Opened, then removed: the kernel refuses a dying cgroup
                // with ENOENT. What it held went with it.
                Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(Vec::new()),
                Err(e) => return Err(e).with_context(|| format!("querying cgroup {}", cg.display())),
            };
            let mine: Vec<&Attached> = list.iter().filter(|a| ours.contains(&a.prog_id)).collect();
            let expected = held_at.get(&(cg.id, attach_type)).copied().unwrap_or(0);
            for a in mine.iter().skip(expected) {
                out.push(Stray {
                    hook: format!("cgroup {} {}", cg.display(), direction.as_str()),
                    target: StrayTarget::Cgroup { path: cg.display() },
                    direction,
                    prog_id: a.prog_id,
                    link_id: 0,
                });
            }
        }
        Ok(out)
    })?;
    out.extend(at_cgroups.into_iter().flatten());
    Ok(out)
}

/// The build id of the program pinned at `prog_pin`, read from its
/// `.rodata` map; `None` when it has none (a build before build ids).
pub fn running_build(prog_pin: &Path) -> Result<Option<u64>> {
    let (offset, size) = object::build_id_place()?;
    let info =
        ProgramInfo::from_pin(prog_pin).with_context(|| format!("reading program {}", prog_pin.display()))?;
    for id in info.map_ids()?.unwrap_or_default() {
        let map = MapInfo::from_id(id)?;
        if map.name() != b".rodata" || map.value_size() as usize != size {
            continue;
        }
        let fd = map.fd()?;
        let value = sys::bpf::array_value(fd.as_fd(), size).context("reading the program's .rodata")?;
        let bytes = value
            .get(offset..offset + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .ok_or_else(|| anyhow!(".rodata is shorter than expected"))?;
        return Ok(Some(u64::from_ne_bytes(bytes)));
    }
    Ok(None)
}
