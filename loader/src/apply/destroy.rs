//! Removing everything cgacct made under a root: links detach, programs
//! and maps are freed; entries cgacct did not make are left and reported.
use std::{
    collections::BTreeSet,
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use cgacct_common::programs as prog;

use super::{detach::detach, expedite};
use crate::{
    object,
    observe::Observed,
    sys::bpf::{self, Hook, LinkTarget},
    tc,
};

/// The TCX hooks (ifindex, attach type) our pinned links hold.
pub fn tcx_hooks(o: &Observed) -> Vec<(u32, u32)> {
    o.held
        .links
        .values()
        .flatten()
        .filter_map(|l| match l.target {
            LinkTarget::Tcx { ifindex, attach_type } if ifindex != 0 => Some((ifindex, attach_type)),
            _ => None,
        })
        .collect()
}

/// After the pins of TCX links went: waits, up to `limit`, until the
/// kernel has detached our tc programs from `hooks` (it does so in work
/// items, one grace period each, after `destroy` returns), so that an
/// expedited window covers them. Stops early on a stop signal.
pub fn wait_detached(o: &Observed, mut hooks: Vec<(u32, u32)>, limit: Duration) {
    let ours: BTreeSet<u32> = [prog::TC_INGRESS, prog::TC_EGRESS]
        .iter()
        .filter_map(|p| o.held.programs.get(p).map(|h| h.id))
        .collect();
    let start = Instant::now();
    while !hooks.is_empty() && start.elapsed() < limit && expedite::Window::interrupted().is_none() {
        hooks.retain(|&(ifindex, attach_type)| {
            bpf::prog_query(Hook::Interface(ifindex), attach_type)
                .is_ok_and(|l| l.iter().any(|a| ours.contains(&a.prog_id)))
        });
        if !hooks.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Removes every pin and directory cgacct made under the root. Returns
/// what it removed; entries it does not recognise are left and reported.
pub fn destroy(o: &Observed) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let pins = &o.pins;
    let mut removed = Vec::new();
    if !pins.root.exists() {
        return Ok((removed, Vec::new()));
    }
    // Attachments of our programs that no pin holds would keep them alive.
    for stray in &o.held.strays {
        detach(o, stray)?;
    }
    for stat in o.tree.stats_files(pins) {
        fs::remove_file(&stat)?;
        removed.push(stat);
    }
    for dir in [pins.tc_links(), pins.cgroup_links()] {
        for pin in o.tree.two_level(&dir) {
            tc::attach::release(pins, &pin)?;
            fs::remove_file(&pin)?;
            removed.push(pin);
        }
    }
    for link in [pins.rmdir_link(), pins.release_link()] {
        if link.exists() {
            fs::remove_file(&link)?;
            removed.push(link);
        }
    }
    for p in super::health::pins_of(pins) {
        if p.exists() {
            fs::remove_file(&p)?;
            removed.push(p);
        }
    }
    for name in object::PROGRAMS {
        let p = pins.prog(name);
        if p.exists() {
            fs::remove_file(&p)?;
            removed.push(p);
        }
    }
    for name in object::all_maps().chain(object::RETIRED_MAPS) {
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
