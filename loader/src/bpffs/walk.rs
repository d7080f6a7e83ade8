//! What is under a root: one walk of the tree, in a fixed order (each
//! directory's entries sorted by name, parents before children), from which
//! the stats files, the link pins and the access state are all taken.
use std::{
    ffi::OsString,
    fs, io,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use super::names::{Pins, LINKS_DIR, MAPS_DIR, PROGS_DIR};

/// One file or directory under the root, as `lstat` saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub is_dir: bool,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
}

fn entry(path: PathBuf, meta: &fs::Metadata) -> Entry {
    Entry {
        is_dir: meta.is_dir(),
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.permissions().mode() & 0o7777,
        path,
    }
}

/// Walks below `dir` depth first, each directory's entries sorted by name
/// (parents before children), calling `visit` with the path and `lstat`
/// of every entry whose file type (from the directory listing, no stat)
/// `wanted` accepts, and descending into the directories among them. Each
/// `lstat` is relative to its directory, not a walk of the whole path.
/// Entries removed meanwhile are skipped.
pub fn walk_sorted(
    dir: &Path,
    wanted: &mut impl FnMut(&fs::FileType) -> bool,
    visit: &mut impl FnMut(PathBuf, &fs::Metadata),
) -> io::Result<()> {
    let found = listing(dir, |e| {
        let kind = e.file_type().ok()?;
        if !wanted(&kind) {
            return None;
        }
        e.metadata().ok()
    })?;
    for (name, meta) in found {
        let path = dir.join(name);
        let is_dir = meta.is_dir();
        visit(path.clone(), &meta);
        if is_dir {
            walk_sorted(&path, wanted, visit)?;
        }
    }
    Ok(())
}

/// Every directory below `dir` in name order (parents before children),
/// with its inode number from the directory listing: no stat at all. On
/// cgroupfs (kernfs) a directory's inode number is its cgroup id.
/// Directories removed meanwhile are skipped.
pub fn walk_dirs(dir: &Path, visit: &mut impl FnMut(PathBuf, u64)) -> io::Result<()> {
    use std::os::unix::fs::DirEntryExt as _;
    let found = listing(dir, |e| e.file_type().is_ok_and(|t| t.is_dir()).then(|| e.ino()))?;
    for (name, ino) in found {
        let path = dir.join(name);
        visit(path.clone(), ino);
        walk_dirs(&path, visit)?;
    }
    Ok(())
}

/// The entries of `dir` that `keep` gives something for, by name; none
/// when `dir` is gone, and entries removed meanwhile are skipped.
fn listing<T>(
    dir: &Path,
    mut keep: impl FnMut(&fs::DirEntry) -> Option<T>,
) -> io::Result<Vec<(OsString, T)>> {
    let list = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for e in list {
        let e = match e {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(t) = keep(&e) {
            found.push((e.file_name(), t));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Every entry under a root, the root first.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    pub entries: Vec<Entry>,
}

impl Tree {
    /// Walks `pins.root`; an empty tree when the root does not exist.
    /// Entries removed while walking are skipped.
    pub fn read(pins: &Pins) -> Result<Tree> {
        let mut entries = Vec::new();
        let Ok(meta) = fs::symlink_metadata(&pins.root) else {
            return Ok(Tree { entries });
        };
        if !meta.is_dir() {
            return Ok(Tree { entries });
        }
        entries.push(entry(pins.root.clone(), &meta));
        walk_sorted(&pins.root, &mut |_| true, &mut |path, meta| {
            entries.push(entry(path, meta));
        })
        .with_context(|| format!("walking {}", pins.root.display()))?;
        Ok(Tree { entries })
    }

    /// Every stats file of the mirrored tree (not under progs/, maps/ or
    /// links/).
    pub fn stats_files(&self, pins: &Pins) -> Vec<PathBuf> {
        let name = pins.stats_file_name();
        let private = [PROGS_DIR, MAPS_DIR, LINKS_DIR].map(|d| pins.root.join(d));
        self.entries
            .iter()
            .filter(|e| !e.is_dir && e.path.file_name().is_some_and(|n| n.to_string_lossy() == name))
            .filter(|e| !private.iter().any(|p| e.path.starts_with(p)))
            .map(|e| e.path.clone())
            .collect()
    }

    /// The `<dir>/<name>/<direction>` pins below `dir` (links/tc, links/cgroup).
    pub fn two_level(&self, dir: &Path) -> Vec<PathBuf> {
        self.entries
            .iter()
            .filter(|e| e.path.parent().and_then(Path::parent) == Some(dir))
            .map(|e| e.path.clone())
            .collect()
    }
}
