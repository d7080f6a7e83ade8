//! What the kernel holds under a root: the pinned programs (and the build
//! they come from), what each pinned link is really attached to, and any
//! attachment of our programs that no pin of ours accounts for (made by
//! hand, or left by an older run). Only reads: `BPF_OBJ_GET`, info and
//! query calls, `lstat`.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::{maps::MapInfo, programs::ProgramInfo};
use cgacct_common::{maps, programs as prog};

use crate::{
    build_id,
    host::{Cgroup, Interface},
    names::{Direction, Pins},
    plan::{self, MapShape, PROGRAMS},
    sys::{self, Attached, Hook, LinkState},
    tc_attach,
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
    /// when the pin cannot be opened as a link.
    pub links: BTreeMap<PathBuf, Option<LinkState>>,
    pub strays: Vec<Stray>,
}

/// Reads a pinned link; `None` if the pin is not a link we can read.
pub fn read_link(pin: &Path) -> Result<Option<LinkState>> {
    let Ok(fd) = sys::obj_get(pin) else {
        return Ok(None);
    };
    // The info call answers for any kind of object: ask for links only.
    if sys::fd_kind(fd.as_fd())? != sys::ObjectKind::Link {
        return Ok(None);
    }
    Ok(sys::link_state(fd.as_fd()).ok())
}

pub fn read(pins: &Pins, interfaces: &[Interface], cgroups: &[Cgroup], cgroup_mount: &Path) -> Result<Held> {
    let mut held = Held::default();
    for name in PROGRAMS {
        let pin = pins.prog(name);
        if !pin.exists() {
            continue;
        }
        let info = ProgramInfo::from_pin(&pin).with_context(|| format!("reading {}", pin.display()))?;
        held.programs.insert(name, HeldProgram { id: info.id() });
    }
    for name in maps::ALL {
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
    if held.programs.contains_key(prog::CGROUP_ITER) {
        held.build = build_id::running_build(&pins.prog(prog::CGROUP_ITER))?;
    }
    let mut link_pins = plan::two_level_pins(&pins.tc_links())?;
    link_pins.extend(plan::two_level_pins(&pins.cgroup_links())?);
    link_pins.extend(plan::stats_files(pins)?);
    link_pins.push(pins.rmdir_link());
    for pin in link_pins.into_iter().filter(|p| p.exists()) {
        let mut state = read_link(&pin)?;
        if state.is_none() && pin.starts_with(pins.tc_links()) {
            state = tc_attach::marker_state(pins, &pin, interfaces)?;
        }
        held.links.insert(pin, state);
    }
    held.strays = strays(&held, interfaces, cgroups, cgroup_mount)?;
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
    let mut out = Vec::new();
    if ours.is_empty() {
        return Ok(out);
    }
    for iface in interfaces {
        for (direction, attach_type) in [
            (Direction::Ingress, sys::TCX_INGRESS),
            (Direction::Egress, sys::TCX_EGRESS),
        ] {
            // Interfaces without TCX support answer with an error: nothing there.
            let Ok(list) = sys::prog_query(Hook::Interface(iface.ifindex), attach_type) else {
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
    }
    // Cgroup queries report programs, not links: count ours against the
    // links we hold on that cgroup and hook.
    let mut held_at: BTreeMap<(u64, u32), usize> = BTreeMap::new();
    for l in held.links.values().flatten() {
        if let sys::LinkTarget::Cgroup {
            cgroup_id,
            attach_type,
        } = l.target
        {
            *held_at.entry((cgroup_id, attach_type)).or_default() += 1;
        }
    }
    for cg in cgroups {
        let Ok(dir) = fs::File::open(cg.fs_path(cgroup_mount)) else {
            continue; // removed meanwhile
        };
        for (direction, attach_type) in [
            (Direction::Ingress, sys::CGROUP_INGRESS),
            (Direction::Egress, sys::CGROUP_EGRESS),
        ] {
            let list = sys::prog_query(Hook::Cgroup(dir.as_fd()), attach_type)
                .with_context(|| format!("querying cgroup {}", cg.display()))?;
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
    }
    Ok(out)
}
