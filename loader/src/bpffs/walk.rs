//! What is under a root: one walk of the tree, in a fixed order (each
//! directory's entries sorted by name, parents before children), from which
//! the stats files, the link pins and the access state are all taken.
use std::{
    io,
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
        if !pins.root.is_dir() {
            return Ok(Tree { entries });
        }
        for entry in walkdir::WalkDir::new(&pins.root).sort_by_file_name() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.io_error().map(io::Error::kind) == Some(io::ErrorKind::NotFound) => continue,
                Err(e) => return Err(e).with_context(|| format!("walking {}", pins.root.display())),
            };
            let Ok(meta) = entry.metadata() else { continue };
            entries.push(Entry {
                is_dir: meta.is_dir(),
                uid: meta.uid(),
                gid: meta.gid(),
                mode: meta.permissions().mode() & 0o7777,
                path: entry.into_path(),
            });
        }
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
