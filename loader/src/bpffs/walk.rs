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

/// How deep [`Tree::read`] lists a root itself before it walks the
/// directories found there side by side: `links/tc`, `links/cgroup` and
/// the stats mirror's second level hold the thousands of entries.
const SPLIT_DEPTH: usize = 2;

/// Walks below `dir` as [`walk_sorted`] does down to `depth` levels,
/// pushing what it finds to `entries`; returns the directories at that
/// depth, in order, whose subtrees are left to walk.
fn walk_split(dir: &Path, depth: usize, entries: &mut Vec<Entry>) -> io::Result<Vec<PathBuf>> {
    let mut subtrees = Vec::new();
    let found = listing(dir, |e| e.metadata().ok())?;
    for (name, meta) in found {
        let path = dir.join(name);
        entries.push(entry(path.clone(), &meta));
        if !meta.is_dir() {
            continue;
        }
        if depth <= 1 {
            subtrees.push(path);
        } else {
            subtrees.extend(walk_split(&path, depth - 1, entries)?);
        }
    }
    Ok(subtrees)
}

/// The entries below each of `dirs` (walked as [`walk_sorted`] does), on
/// up to four threads, in the order of `dirs`.
fn walk_parallel(dirs: &[PathBuf]) -> io::Result<Vec<Vec<Entry>>> {
    let walk_one = |dir: &PathBuf| -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        walk_sorted(dir, &mut |_| true, &mut |path, meta| out.push(entry(path, meta)))?;
        Ok(out)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    if threads < 2 || dirs.len() < 2 {
        return dirs.iter().map(walk_one).collect();
    }
    // Threads take the next directory as they finish one: the subtrees
    // differ in size by thousands of entries.
    let next = std::sync::atomic::AtomicUsize::new(0);
    // Each worker's subtrees, by their index in `dirs`.
    type Share = io::Result<Vec<(usize, Vec<Entry>)>>;
    let results: Vec<Share> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.min(dirs.len()))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(dir) = dirs.get(i) else {
                            return Ok(done);
                        };
                        done.push((i, walk_one(dir)?));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a thread walking the root panicked")))
            })
            .collect()
    });
    let mut out: Vec<Vec<Entry>> = vec![Vec::new(); dirs.len()];
    for r in results {
        for (i, entries) in r? {
            out[i] = entries;
        }
    }
    Ok(out)
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
        let walked = walk_split(&pins.root, SPLIT_DEPTH, &mut entries)
            .and_then(|subtrees| Ok((walk_parallel(&subtrees)?, subtrees)))
            .with_context(|| format!("walking {}", pins.root.display()))?;
        // Each subtree's entries go right after its directory's.
        let (walked, subtrees) = walked;
        let mut out = Vec::with_capacity(entries.len() + walked.iter().map(Vec::len).sum::<usize>());
        let mut below = subtrees.iter().zip(walked).peekable();
        for e in entries {
            let here = below.next_if(|(dir, _)| **dir == e.path);
            out.push(e);
            if let Some((_, walked)) = here {
                out.extend(walked);
            }
        }
        Ok(Tree { entries: out })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk split at [`SPLIT_DEPTH`] and run on threads gives what one
    /// walk in order gives: parents before children, names in order.
    #[test]
    fn the_split_walk_is_the_walk_in_order() {
        let root = std::env::temp_dir().join(format!("cgacct-walk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in [
            "links/tc/eth0",
            "links/tc/veth1",
            "links/cgroup/7",
            "links/tracing",
            "maps",
            "kubepods/pod-a/c1",
            "kubepods/pod-b",
            "system.slice",
        ] {
            fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        for f in [
            "links/tc/eth0/ingress",
            "links/tc/eth0/egress",
            "links/tc/veth1/ingress",
            "links/cgroup/7/egress",
            "links/tracing/cgroup_rmdir",
            "maps/cgroup_stats",
            "kubepods/net.stat",
            "kubepods/pod-a/c1/net.stat",
            "kubepods/pod-a/net.stat",
            "net.stat",
        ] {
            fs::write(root.join(f), b"").expect("write");
        }
        let tree = Tree::read(&Pins::new(&root, true)).expect("walk");
        let mut want = vec![root.clone()];
        walk_sorted(&root, &mut |_| true, &mut |path, _| want.push(path)).expect("walk in order");
        let got: Vec<_> = tree.entries.iter().map(|e| e.path.clone()).collect();
        fs::remove_dir_all(&root).expect("cleanup");
        assert_eq!(got, want);
        assert_eq!(got.len(), 24);
    }
}
