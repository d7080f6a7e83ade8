//! What the kernel should hold for a layout, what it holds ([`held`]), and
//! the actions between the two. Computing a plan changes nothing.
use std::{
    collections::BTreeSet,
    fmt, fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};
use aya::maps::MapType;
use cgacct_common::{maps, programs as prog, Counters, Departed, IterAcc, Removed};
use serde::Serialize;

use crate::{
    build_id,
    held::{Held, Stray},
    host::{Cgroup, Interface},
    layout::{Access, Layout},
    names::{Direction, Pins, LINKS_DIR, MAPS_DIR, PROGS_DIR},
    sys::{self, LinkTarget},
};

/// Every program the object holds, with the name it is pinned under. The
/// iterator comes last: it is pinned last, so a pinned iterator of a build
/// means every program of that build is pinned.
pub const PROGRAMS: [&str; 6] = [
    prog::CGROUP_INGRESS,
    prog::CGROUP_EGRESS,
    prog::TC_INGRESS,
    prog::TC_EGRESS,
    prog::CGROUP_RMDIR,
    prog::CGROUP_ITER,
];

/// The shape of a map: what the programs of this build expect.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MapShape {
    #[serde(skip)]
    pub kind: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl fmt::Display for MapShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} key {} value {} max_entries {}",
            self.kind, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// The maps this build and layout need, by name.
pub fn wanted_maps(layout: &Layout) -> [(&'static str, MapShape); 9] {
    let shape = |kind, key_size, value_size: usize, max_entries| MapShape {
        kind,
        key_size,
        value_size: value_size as u32,
        max_entries,
    };
    let c = size_of::<Counters>();
    let m = &layout.maps;
    [
        (maps::CGROUP_STATS, shape(MapType::PerCpuHash, 8, c, m.cgroups)),
        (maps::TC_CGROUP_STATS, shape(MapType::PerCpuHash, 8, c, m.cgroups)),
        (maps::IFACE_STATS, shape(MapType::PerCpuHash, 4, c, m.interfaces)),
        (
            maps::ITER_SCRATCH,
            shape(MapType::LruHash, 8, size_of::<IterAcc>(), m.readers),
        ),
        (maps::IFACE_OWNER, shape(MapType::Hash, 4, 8, m.interfaces)),
        (maps::VETH_STATS, shape(MapType::PerCpuHash, 8, c, m.cgroups)),
        (
            maps::DEPARTED,
            shape(MapType::Hash, 8, size_of::<Departed>(), m.cgroups),
        ),
        (
            maps::REMOVED,
            shape(MapType::LruHash, 8, size_of::<Removed>(), m.cgroups),
        ),
        (
            maps::REMOVED_SCRATCH,
            shape(MapType::PerCpuArray, 4, size_of::<Removed>(), 1),
        ),
    ]
}

/// Maps whose content is rebuilt (scratch space, interface owners set by
/// every apply): replaced without asking when their shape changes.
pub const REBUILT_MAPS: [&str; 3] = [maps::ITER_SCRATCH, maps::REMOVED_SCRATCH, maps::IFACE_OWNER];

/// What to do with pinned maps whose shape no longer fits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapPolicy {
    /// Refuse, explaining the way out.
    #[default]
    Refuse,
    /// New maps of the wanted shape, counters copied over.
    Migrate,
    /// New, empty maps.
    Reset,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Load the object, reusing the pinned maps (but those being replaced),
    /// and pin its programs in place of any pinned ones.
    LoadPrograms { reason: String },
    /// Replace a pinned map by a new one of the wanted shape.
    ReplaceMap {
        map: String,
        pin: PathBuf,
        from: MapShape,
        to: MapShape,
        keep_counters: bool,
    },
    /// Move a pinned link to the pinned program of its kind, in place.
    UpdateLink { pin: PathBuf, program: String },
    AttachTc {
        interface: String,
        direction: Direction,
        pin: PathBuf,
        /// Why the pin there is replaced, if one is.
        #[serde(skip_serializing_if = "Option::is_none")]
        replace: Option<String>,
    },
    AttachCgroup {
        cgroup: String,
        id: u64,
        direction: Direction,
        pin: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        replace: Option<String>,
    },
    PinStats {
        cgroup: String,
        id: u64,
        pin: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        replace: Option<String>,
    },
    /// Attach the `cgroup_rmdir` tracepoint program (final totals of
    /// removed cgroups, folded into their parents).
    AttachRmdir {
        pin: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        replace: Option<String>,
    },
    /// Remove a pin that the layout no longer wants (detaches a link,
    /// releases a removed cgroup held by its stats file).
    Unpin {
        what: String,
        pin: PathBuf,
        reason: String,
    },
    /// Detach an attachment of our programs that no pin of ours holds.
    Detach(Stray),
    /// Set owner, group and mode of an existing pin or directory.
    SetAccess {
        path: PathBuf,
        uid: u32,
        gid: u32,
        mode: String,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = |replace: &Option<String>| match replace {
            Some(why) => format!("replace ({why}): "),
            None => String::new(),
        };
        match self {
            Action::LoadPrograms { reason } => write!(f, "load programs and pin them ({reason})"),
            Action::ReplaceMap {
                map,
                from,
                to,
                keep_counters,
                ..
            } => write!(
                f,
                "replace map {map} ({from} -> {to}), {}",
                if *keep_counters {
                    "copying its counters"
                } else {
                    "counters reset to zero"
                }
            ),
            Action::UpdateLink { pin, program } => {
                write!(f, "update link {} to program {program}", pin.display())
            }
            Action::AttachTc {
                interface,
                direction,
                pin,
                replace,
            } => write!(
                f,
                "{}attach tc {} to {interface} -> {}",
                verb(replace),
                direction.as_str(),
                pin.display()
            ),
            Action::AttachCgroup {
                cgroup,
                direction,
                pin,
                replace,
                ..
            } => write!(
                f,
                "{}attach cgroup_skb {} to {cgroup} -> {}",
                verb(replace),
                direction.as_str(),
                pin.display()
            ),
            Action::PinStats {
                cgroup, pin, replace, ..
            } => write!(f, "{}pin stats of {cgroup} -> {}", verb(replace), pin.display()),
            Action::Unpin { what, pin, reason } => write!(f, "unpin {what} {} ({reason})", pin.display()),
            Action::Detach(s) => write!(
                f,
                "detach program id {} from {} ({})",
                s.prog_id,
                s.hook,
                if s.link_id == 0 {
                    "attached without a link, not by cgacct".to_string()
                } else {
                    format!("held by link id {}, not pinned by cgacct", s.link_id)
                }
            ),
            Action::SetAccess { path, uid, gid, mode } => {
                write!(f, "set owner {uid}:{gid} mode {mode} on {}", path.display())
            }
            Action::AttachRmdir { pin, replace } => write!(
                f,
                "{}attach the cgroup_rmdir tracepoint -> {}",
                verb(replace),
                pin.display()
            ),
        }
    }
}

/// The world a plan is made against.
pub struct World<'a> {
    pub layout: &'a Layout,
    pub pins: &'a Pins,
    pub interfaces: &'a [Interface],
    pub cgroups: &'a [Cgroup],
    pub held: &'a Held,
    pub maps: MapPolicy,
}

/// A pattern of the layout that selects nothing on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmatched {
    pub key: &'static str,
    pub pattern: String,
    pub required: bool,
}

/// Patterns that match nothing; with `required = true` in their section
/// `apply` refuses to run.
pub fn unmatched(layout: &Layout, interfaces: &[Interface], cgroups: &[Cgroup]) -> Vec<Unmatched> {
    let mut out = Vec::new();
    for p in &layout.tc_interfaces {
        if !interfaces.iter().any(|i| p.matches(&i.name)) {
            out.push(Unmatched {
                key: "tc.interfaces",
                pattern: p.as_str().to_string(),
                required: layout.required.tc,
            });
        }
    }
    for (key, list, required) in [
        (
            "cgroup_skb.attach",
            &layout.cgroup_skb_attach,
            layout.required.cgroup_skb,
        ),
        ("stats.cgroups", &layout.stats_cgroups, layout.required.stats),
    ] {
        for p in list {
            if !cgroups.iter().any(|c| p.matches(&c.path)) {
                out.push(Unmatched {
                    key,
                    pattern: p.as_str().to_string(),
                    required,
                });
            }
        }
    }
    out
}

pub fn plan(w: &World<'_>) -> Result<Vec<Action>> {
    let mut actions = Vec::new();
    let replace_maps = map_actions(w)?;
    let upgrade = match w.held.build {
        Some(b) if b != build_id::this_build() => Some(format!(
            "upgrade: the kernel runs build {b:016x}, this is build {:016x}; links move in place",
            build_id::this_build()
        )),
        None if !w.held.programs.is_empty() => Some("upgrade: the pinned programs carry no build id".into()),
        _ => None,
    };
    let reason = if PROGRAMS.iter().any(|p| !w.held.programs.contains_key(p)) {
        Some("programs are missing".to_string())
    } else if maps::ALL.iter().any(|m| !w.held.maps.contains_key(m)) {
        Some("maps are missing: they start from zero".to_string())
    } else if !replace_maps.is_empty() {
        Some("maps are replaced".to_string())
    } else {
        upgrade
    };
    let reload = reason.is_some();
    if let Some(reason) = reason {
        actions.push(Action::LoadPrograms { reason });
    }
    // The cgroup_rmdir tracepoint: a tracing link cannot move to another
    // program in place, so a new build replaces it.
    let rmdir = w.pins.rmdir_link();
    let replace = match w.held.links.get(&rmdir) {
        None => Some(None),
        Some(Some(l))
            if !reload && w.held.programs.get(prog::CGROUP_RMDIR).map(|p| p.id) == Some(l.prog_id) =>
        {
            None
        }
        Some(Some(_)) => Some(Some(
            "a tracing link cannot move to another program in place".to_string(),
        )),
        Some(None) => Some(Some("the pin is not a readable link".to_string())),
    };
    if let Some(replace) = replace {
        actions.push(Action::AttachRmdir { pin: rmdir, replace });
    }
    let mut keep = Vec::new();

    // TC links: one per matching interface and direction.
    let mut want = BTreeSet::new();
    for iface in w
        .interfaces
        .iter()
        .filter(|i| w.layout.tc_interfaces.iter().any(|p| p.matches(&i.name)))
    {
        for direction in Direction::BOTH {
            let pin = w.pins.tc_link(&iface.name, direction);
            want.insert(pin.clone());
            let attach_type = [sys::TCX_INGRESS, sys::TCX_EGRESS][direction as usize];
            let replace = match w.held.links.get(&pin) {
                None => None,
                Some(None) => Some("the pin is not a readable link".to_string()),
                Some(Some(l)) => match l.target {
                    LinkTarget::Tcx { ifindex: 0, .. } => {
                        Some("defunct: its interface was deleted".to_string())
                    }
                    LinkTarget::Tcx { ifindex, .. } if ifindex != iface.ifindex => Some(format!(
                        "attached to ifindex {ifindex}, but {} is ifindex {} now",
                        iface.name, iface.ifindex
                    )),
                    LinkTarget::Clsact { attached: false } => Some("its clsact filter is gone".to_string()),
                    LinkTarget::Clsact { .. } => {
                        let name = [prog::TC_INGRESS, prog::TC_EGRESS][direction as usize];
                        if !reload && w.held.programs.get(name).map(|p| p.id) == Some(l.prog_id) {
                            continue;
                        }
                        Some("a clsact filter cannot move to another program in place".to_string())
                    }
                    LinkTarget::Tcx { attach_type: t, .. } if t == attach_type => {
                        keep.push((
                            pin.clone(),
                            [prog::TC_INGRESS, prog::TC_EGRESS][direction as usize],
                        ));
                        continue;
                    }
                    _ => Some("attached to another hook".to_string()),
                },
            };
            actions.push(Action::AttachTc {
                interface: iface.name.clone(),
                direction,
                pin,
                replace,
            });
        }
    }
    let ifnames: BTreeSet<&str> = w.interfaces.iter().map(|i| i.name.as_str()).collect();
    unpin_extra(
        &mut actions,
        &want,
        w.held.links.keys(),
        &w.pins.tc_links(),
        |name| {
            let why = if ifnames.contains(name) {
                "no longer matches tc.interfaces"
            } else {
                "its interface is gone"
            };
            ("tc link", why)
        },
    );

    // cgroup_skb links: one per listed cgroup and direction.
    let mut want = BTreeSet::new();
    for cg in w
        .cgroups
        .iter()
        .filter(|c| w.layout.cgroup_skb_attach.iter().any(|p| p.matches(&c.path)))
    {
        for direction in Direction::BOTH {
            let pin = w.pins.cgroup_link(cg.id, direction);
            want.insert(pin.clone());
            let attach_type = [sys::CGROUP_INGRESS, sys::CGROUP_EGRESS][direction as usize];
            let replace = match w.held.links.get(&pin) {
                None => None,
                Some(None) => Some("the pin is not a readable link".to_string()),
                Some(Some(l)) => match l.target {
                    LinkTarget::Cgroup {
                        cgroup_id,
                        attach_type: t,
                    } if cgroup_id == cg.id && t == attach_type => {
                        keep.push((
                            pin.clone(),
                            [prog::CGROUP_INGRESS, prog::CGROUP_EGRESS][direction as usize],
                        ));
                        continue;
                    }
                    LinkTarget::Cgroup { cgroup_id: 0, .. } => Some("defunct: its cgroup was removed".into()),
                    _ => Some("attached to another hook".to_string()),
                },
            };
            actions.push(Action::AttachCgroup {
                cgroup: cg.display(),
                id: cg.id,
                direction,
                pin,
                replace,
            });
        }
    }
    let ids: BTreeSet<String> = w.cgroups.iter().map(|c| c.id.to_string()).collect();
    unpin_extra(
        &mut actions,
        &want,
        w.held.links.keys(),
        &w.pins.cgroup_links(),
        |id| {
            let why = if ids.contains(id) {
                "no longer in cgroup_skb.attach"
            } else {
                "its cgroup was removed"
            };
            ("cgroup_skb link", why)
        },
    );

    // Stats files: one per selected cgroup.
    let mut want = BTreeSet::new();
    for cg in w
        .cgroups
        .iter()
        .filter(|c| w.layout.stats_cgroups.iter().any(|p| p.matches(&c.path)))
    {
        let pin = w.pins.stats_file(&cg.path);
        want.insert(pin.clone());
        let replace = match w.held.links.get(&pin) {
            None => None,
            Some(None) => Some("the pin is not a readable link".to_string()),
            Some(Some(l)) => match l.target {
                LinkTarget::CgroupIter { cgroup_id, .. } if cgroup_id == cg.id => {
                    keep.push((pin.clone(), prog::CGROUP_ITER));
                    continue;
                }
                LinkTarget::CgroupIter { .. } => Some("its cgroup was removed and created again".into()),
                _ => Some("not a cgroup iterator".to_string()),
            },
        };
        actions.push(Action::PinStats {
            cgroup: cg.display(),
            id: cg.id,
            pin,
            replace,
        });
    }
    let stats_name = w.pins.stats_file_name();
    for pin in w.held.links.keys() {
        let is_stats = pin.file_name().is_some_and(|n| n.to_string_lossy() == stats_name)
            && !pin.starts_with(w.pins.root.join(LINKS_DIR));
        if is_stats && !want.contains(pin) {
            let why = match w.held.links.get(pin) {
                Some(Some(l))
                    if matches!(l.target, LinkTarget::CgroupIter { cgroup_id, .. }
                    if !w.cgroups.iter().any(|c| c.id == cgroup_id)) =>
                {
                    "its cgroup was removed; the pin holds it"
                }
                _ => "no longer in stats.cgroups",
            };
            actions.push(Action::Unpin {
                what: "stats file".into(),
                pin: pin.clone(),
                reason: why.into(),
            });
        }
    }

    // Links that stay: on the pinned program of their kind, or moved there.
    for (pin, program) in keep {
        let current = w.held.links.get(&pin).and_then(|l| *l).map(|l| l.prog_id);
        let pinned = w.held.programs.get(program).map(|p| p.id);
        if reload || current != pinned {
            actions.push(Action::UpdateLink {
                pin,
                program: program.to_string(),
            });
        }
    }
    actions.extend(w.held.strays.iter().cloned().map(Action::Detach));
    // Replaced maps are swapped in once every link runs the new programs.
    actions.extend(replace_maps);
    actions.extend(access_drift(w.layout, w.pins)?);
    Ok(actions)
}

/// Pinned maps whose shape differs from what this build and layout need.
fn map_actions(w: &World<'_>) -> Result<Vec<Action>> {
    let mut out = Vec::new();
    for (name, want) in wanted_maps(w.layout) {
        let Some(have) = w.held.maps.get(name).copied() else {
            continue;
        };
        if have == want {
            continue;
        }
        let pin = w.pins.map(name);
        let scratch = REBUILT_MAPS.contains(&name);
        let resize_only =
            (have.kind, have.key_size, have.value_size) == (want.kind, want.key_size, want.value_size);
        match w.maps {
            MapPolicy::Refuse if scratch => {}
            MapPolicy::Refuse => bail!(
                "pinned map {} is {have}, but this build and layout need {want}. Its counters are \
                 kept as they are and nothing was changed. Choose: restore the layout's [maps] \
                 sizes; or `apply --migrate-maps` to move to new maps{}; or `apply --reset-maps` to \
                 start those maps from zero",
                pin.display(),
                if resize_only {
                    " and copy the counters over"
                } else {
                    " (the value layout changed: counters cannot be copied, --migrate-maps will refuse)"
                }
            ),
            MapPolicy::Migrate if !resize_only && !scratch => bail!(
                "pinned map {} is {have}, this build needs {want}: its entries cannot be converted, \
                 so --migrate-maps cannot keep them. Use `apply --reset-maps` to start it from zero",
                pin.display()
            ),
            _ => {}
        }
        out.push(Action::ReplaceMap {
            map: name.to_string(),
            pin,
            from: have,
            to: want,
            keep_counters: w.maps == MapPolicy::Migrate && !scratch,
        });
    }
    Ok(out)
}

fn unpin_extra<'a>(
    actions: &mut Vec<Action>,
    want: &BTreeSet<PathBuf>,
    have: impl Iterator<Item = &'a PathBuf>,
    dir: &Path,
    why: impl Fn(&str) -> (&'static str, &'static str),
) {
    for pin in have.filter(|p| p.starts_with(dir) && !want.contains(*p)) {
        let name = pin
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (what, reason) = why(&name);
        actions.push(Action::Unpin {
            what: what.into(),
            pin: pin.clone(),
            reason: reason.into(),
        });
    }
}

/// Owner, group and mode a path under the root must have, if it is ours.
pub fn wanted_access(layout: &Layout, pins: &Pins, path: &Path) -> Option<(Access, bool)> {
    let rules = &layout.access;
    if path == pins.root {
        // Stats readers pass through the root (its group is theirs); the
        // private directories below it stay closed to them.
        let mut a = rules.private;
        a.gid = rules.stats.gid;
        a.mode = rules.root_dir_mode();
        return Some((a, true));
    }
    let rel = path.strip_prefix(&pins.root).ok()?;
    let top = rel.components().next()?.as_os_str();
    let private = [PROGS_DIR, MAPS_DIR, LINKS_DIR].iter().any(|d| top == *d);
    let meta = fs::symlink_metadata(path).ok()?;
    let is_dir = meta.is_dir();
    let class = if private { rules.private } else { rules.stats };
    if !is_dir && !private && path.file_name()?.to_string_lossy() != pins.stats_file_name() {
        return None; // not ours
    }
    let mut a = class;
    if is_dir {
        a.mode = class.dir_mode();
    }
    Some((a, is_dir))
}

/// Whether `path` has the owner, group and mode `a`.
pub fn has_access(path: &Path, a: &Access) -> bool {
    fs::symlink_metadata(path)
        .is_ok_and(|m| m.uid() == a.uid && m.gid() == a.gid && m.permissions().mode() & 0o7777 == a.mode)
}

/// Existing pins and directories whose owner, group or mode drifted.
fn access_drift(layout: &Layout, pins: &Pins) -> Result<Vec<Action>> {
    let mut out = Vec::new();
    if !pins.root.is_dir() {
        return Ok(out);
    }
    for entry in walkdir::WalkDir::new(&pins.root).sort_by_file_name() {
        let Ok(entry) = entry else { continue };
        let Some((a, _)) = wanted_access(layout, pins, entry.path()) else {
            continue;
        };
        if !has_access(entry.path(), &a) {
            out.push(Action::SetAccess {
                path: entry.into_path(),
                uid: a.uid,
                gid: a.gid,
                mode: format!("{:04o}", a.mode),
            });
        }
    }
    Ok(out)
}

/// `<dir>/<name>/<direction>` pins.
pub fn two_level_pins(dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(out);
    };
    for entry in entries {
        for inner in fs::read_dir(entry?.path())? {
            out.push(inner?.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Every stats file in the mirrored tree.
pub fn stats_files(pins: &Pins) -> Result<Vec<PathBuf>> {
    let name = pins.stats_file_name();
    let mut out = Vec::new();
    let walk = walkdir::WalkDir::new(&pins.root)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            !(e.depth() == 1
                && [PROGS_DIR, MAPS_DIR, LINKS_DIR]
                    .iter()
                    .any(|n| e.file_name() == *n))
        });
    for entry in walk {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.io_error().map(|x| x.kind()) == Some(std::io::ErrorKind::NotFound) => continue,
            Err(e) => return Err(e.into()),
        };
        if !entry.file_type().is_dir() && entry.file_name().to_string_lossy() == name {
            out.push(entry.into_path());
        }
    }
    Ok(out)
}

/// Fails if an action would create a name longer than bpffs accepts.
pub fn check_names(actions: &[Action]) -> Result<()> {
    for a in actions {
        let (Action::PinStats { pin, cgroup, .. }
        | Action::AttachTc {
            pin,
            interface: cgroup,
            ..
        }) = a
        else {
            continue;
        };
        if let Some(c) = pin.components().find(|c| c.as_os_str().len() > 255) {
            bail!(
                "{cgroup} would be mirrored as {:?}, longer than the 255 bytes bpffs allows in a \
                 name (escapes included); exclude it from the layout's patterns",
                c.as_os_str()
            );
        }
    }
    Ok(())
}
