//! What the kernel should hold for a layout, what it holds, and the actions
//! between the two. Computing a plan changes nothing.
use std::{collections::BTreeSet, fmt, fs, path::PathBuf};

use anyhow::Result;
use cgacct_common::programs as prog;
use serde::Serialize;

use crate::{
    host::{Cgroup, Interface},
    layout::Layout,
    names::{Direction, Pins, LINKS_DIR, MAPS_DIR, PROGS_DIR},
};

/// Every program the object holds, with the name it is pinned under.
pub const PROGRAMS: [&str; 6] = [
    prog::CGROUP_INGRESS,
    prog::CGROUP_EGRESS,
    prog::TC_INGRESS,
    prog::TC_EGRESS,
    prog::CGROUP_ITER,
    prog::CGROUP_RMDIR,
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Load the object, reusing (or creating) the pinned maps, and pin its programs.
    LoadPrograms,
    AttachTc {
        interface: String,
        direction: Direction,
        pin: PathBuf,
    },
    AttachCgroup {
        cgroup: String,
        id: u64,
        direction: Direction,
        pin: PathBuf,
    },
    PinStats {
        cgroup: String,
        id: u64,
        pin: PathBuf,
    },
    /// Attach the `cgroup_rmdir` tracepoint program (final totals of
    /// removed cgroups, folded into their parents).
    AttachRmdir {
        pin: PathBuf,
    },
    /// Remove a pin that the layout no longer wants (detaches a link).
    Unpin {
        what: String,
        pin: PathBuf,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::LoadPrograms => write!(f, "load programs and pin them (maps are reused)"),
            Action::AttachTc {
                interface,
                direction,
                pin,
            } => {
                write!(
                    f,
                    "attach tc {} to {interface} -> {}",
                    direction.as_str(),
                    pin.display()
                )
            }
            Action::AttachCgroup {
                cgroup,
                direction,
                pin,
                ..
            } => {
                write!(
                    f,
                    "attach cgroup_skb {} to {cgroup} -> {}",
                    direction.as_str(),
                    pin.display()
                )
            }
            Action::PinStats { cgroup, pin, .. } => write!(f, "pin stats of {cgroup} -> {}", pin.display()),
            Action::Unpin { what, pin } => write!(f, "unpin {what} {}", pin.display()),
            Action::AttachRmdir { pin } => {
                write!(f, "attach the cgroup_rmdir tracepoint -> {}", pin.display())
            }
        }
    }
}

/// The world a plan is made against.
pub struct World<'a> {
    pub layout: &'a Layout,
    pub pins: &'a Pins,
    pub interfaces: &'a [Interface],
    pub cgroups: &'a [Cgroup],
}

pub fn plan(w: &World<'_>) -> Result<Vec<Action>> {
    let mut actions = Vec::new();
    if PROGRAMS.iter().any(|p| !w.pins.prog(p).exists()) {
        actions.push(Action::LoadPrograms);
    }
    if !w.pins.rmdir_link().exists() {
        actions.push(Action::AttachRmdir {
            pin: w.pins.rmdir_link(),
        });
    }

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
            if !pin.exists() {
                actions.push(Action::AttachTc {
                    interface: iface.name.clone(),
                    direction,
                    pin,
                });
            }
        }
    }
    unpin_extra(
        &mut actions,
        &want,
        two_level_pins(&w.pins.tc_links())?,
        "tc link",
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
            if !pin.exists() {
                actions.push(Action::AttachCgroup {
                    cgroup: cg.display(),
                    id: cg.id,
                    direction,
                    pin,
                });
            }
        }
    }
    unpin_extra(
        &mut actions,
        &want,
        two_level_pins(&w.pins.cgroup_links())?,
        "cgroup_skb link",
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
        if !pin.exists() {
            actions.push(Action::PinStats {
                cgroup: cg.display(),
                id: cg.id,
                pin,
            });
        }
    }
    unpin_extra(&mut actions, &want, stats_files(w.pins)?, "stats file");
    Ok(actions)
}

fn unpin_extra(actions: &mut Vec<Action>, want: &BTreeSet<PathBuf>, have: Vec<PathBuf>, what: &str) {
    for pin in have.into_iter().filter(|p| !want.contains(p)) {
        actions.push(Action::Unpin {
            what: what.to_string(),
            pin,
        });
    }
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
