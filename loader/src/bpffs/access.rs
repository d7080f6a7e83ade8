//! Owner, group and mode of what cgacct makes under a root: what the layout
//! wants for a path ([`wanted`], pure), whether an entry has it, and making
//! it so ([`settle`]).
use std::{
    fs, io,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
};

use super::{
    names::{Pins, LINKS_DIR, MAPS_DIR, PROGS_DIR},
    walk::Entry,
};
use crate::spec::layout::{Access, AccessRules};

/// Owner, group and mode `path` must have, if it is ours: the private
/// trees (progs/, maps/, links/) take `[access]`, the mirrored stats tree
/// `[access.stats]`; directories get x where files get r.
pub fn wanted(rules: &AccessRules, pins: &Pins, path: &Path, is_dir: bool) -> Option<Access> {
    if path == pins.root {
        // Stats readers pass through the root (its group is theirs); the
        // private directories below it stay closed to them.
        let mut a = rules.private;
        a.gid = rules.stats.gid;
        a.mode = rules.root_dir_mode();
        return Some(a);
    }
    let rel = path.strip_prefix(&pins.root).ok()?;
    let top = rel.components().next()?.as_os_str();
    let private = [PROGS_DIR, MAPS_DIR, LINKS_DIR].iter().any(|d| top == *d);
    let class = if private { rules.private } else { rules.stats };
    if !is_dir && !private && path.file_name()?.to_string_lossy() != pins.stats_file_name() {
        return None; // not ours
    }
    let mut a = class;
    if is_dir {
        a.mode = class.dir_mode();
    }
    Some(a)
}

/// Whether `e` has the owner, group and mode `a`.
pub fn has(e: &Entry, a: &Access) -> bool {
    e.uid == a.uid && e.gid == a.gid && e.mode == a.mode
}

/// Gives `path` and its directories the owner, group and mode the layout
/// wants, up to the root or the first directory that has them already:
/// what cgacct makes is settled as it is made, so one that is right has
/// right ones above it (and a plan finds any that are not: `SetAccess`).
pub fn settle(rules: &AccessRules, pins: &Pins, path: &Path) -> io::Result<()> {
    let _modes = super::names::lock_modes();
    let mut cur = Some(path);
    while let Some(p) = cur {
        let mut fixed = false;
        // A path that is not there (yet) has nothing to settle.
        if let Ok(meta) = fs::symlink_metadata(p) {
            if let Some(a) = wanted(rules, pins, p, meta.is_dir()) {
                let mode = meta.permissions().mode() & 0o7777;
                if (meta.uid(), meta.gid(), mode) != (a.uid, a.gid, a.mode) {
                    std::os::unix::fs::lchown(p, Some(a.uid), Some(a.gid))?;
                    fs::set_permissions(p, fs::Permissions::from_mode(a.mode))?;
                    fixed = true;
                }
            }
        }
        if p == pins.root || (p != path && !fixed) {
            break;
        }
        cur = p.parent();
    }
    Ok(())
}
