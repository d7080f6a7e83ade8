//! The cgroup tree, by id and by path, with a name people know for each
//! cgroup ([`identity`](crate::observe::identity)): walked once, then kept up to
//! date by following cgroupfs with inotify (or by whoever feeds it changes),
//! never walked again per lookup.
//!
//! inotify sees `mkdir` and `rmdir` in cgroupfs (cgroup v2 creates and
//! removes cgroups only that way). Every directory of the tree gets a watch;
//! a new directory is watched first and listed second, so a child made
//! before its watch existed is still found. A queue overflow or a rename
//! makes the tree walk cgroupfs again and report the difference.
use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use crate::observe::{
    host,
    identity::{identify, Identity},
};

/// One cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    /// Path below the cgroup2 mount, "" for the root.
    pub path: String,
    pub identity: Identity,
}

impl Entry {
    /// The path as operators write it: "/" for the root, "/a/b" below.
    pub fn display(&self) -> String {
        format!("/{}", self.path)
    }
}

/// A change of the tree, after it was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Created { id: u64, path: String },
    Removed { id: u64, path: String },
}

/// The cgroup tree below one cgroup2 mount.
pub struct CgroupTree {
    mount: PathBuf,
    by_id: HashMap<u64, Entry>,
    by_path: BTreeMap<String, u64>,
    follow: Option<Follow>,
    /// Full walks of cgroupfs so far (1 after opening; more only after an
    /// inotify overflow or a rename).
    pub walks: u64,
}

struct Follow {
    inotify: Inotify,
    /// Watch -> path of the watched directory.
    wds: HashMap<WatchDescriptor, String>,
    /// Path -> its watch: a removal finds the watch without a scan of all
    /// of them (at 100,000 cgroups that scan was most of `watch`'s CPU).
    wd_of: HashMap<String, WatchDescriptor>,
    buf: Vec<u8>,
}

const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW);

impl CgroupTree {
    /// Walks the tree once; lookups after that use what this walk saw plus
    /// what [`CgroupTree::insert`] and [`CgroupTree::remove`] are told.
    pub fn scan(mount: &Path) -> Result<CgroupTree> {
        let mut t = CgroupTree::empty(mount, None);
        for cg in host::cgroups(mount)? {
            t.add_entry(cg.id, cg.path);
        }
        t.walks = 1;
        Ok(t)
    }

    /// Walks the tree once, watching every directory, and follows changes
    /// from then on ([`CgroupTree::wait`]).
    pub fn follow(mount: &Path) -> Result<CgroupTree> {
        let inotify = Inotify::init().context("inotify_init1")?;
        let follow = Follow {
            inotify,
            wds: HashMap::new(),
            wd_of: HashMap::new(),
            buf: vec![0; 64 * 1024],
        };
        let mut t = CgroupTree::empty(mount, Some(follow));
        let mut changes = Vec::new();
        t.add_dir("", &mut changes)?;
        t.walks = 1;
        Ok(t)
    }

    fn empty(mount: &Path, follow: Option<Follow>) -> CgroupTree {
        CgroupTree {
            mount: mount.to_path_buf(),
            by_id: HashMap::new(),
            by_path: BTreeMap::new(),
            follow,
            walks: 0,
        }
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    pub fn get(&self, id: u64) -> Option<&Entry> {
        self.by_id.get(&id)
    }

    pub fn by_path(&self, path: &str) -> Option<&Entry> {
        self.by_path
            .get(path.trim_matches('/'))
            .and_then(|id| self.by_id.get(id))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every cgroup, parents before children.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.by_path.values().filter_map(|id| self.by_id.get(id))
    }

    /// Every cgroup in [`host::Cgroup`] form, parents before children.
    pub fn cgroups(&self) -> Vec<host::Cgroup> {
        self.entries()
            .map(|e| host::Cgroup {
                path: e.path.clone(),
                id: e.id,
            })
            .collect()
    }

    fn add_entry(&mut self, id: u64, path: String) -> bool {
        if self.by_path.get(&path) == Some(&id) {
            return false;
        }
        if let Some(old) = self.by_path.insert(path.clone(), id) {
            self.by_id.remove(&old);
        }
        let identity = identify(&path);
        self.by_id.insert(id, Entry { id, path, identity });
        true
    }

    /// Records the cgroup at `path` (below the mount) and, when following,
    /// watches it and records its descendants. Returns what was new.
    pub fn insert(&mut self, path: &str) -> Result<Vec<Change>> {
        let mut changes = Vec::new();
        let path = path.trim_matches('/');
        if self.follow.is_some() {
            self.add_dir(path, &mut changes)?;
        } else if let Ok(meta) = fs::metadata(self.mount.join(path)) {
            if self.add_entry(meta.ino(), path.to_string()) {
                changes.push(Change::Created {
                    id: meta.ino(),
                    path: path.to_string(),
                });
            }
        }
        Ok(changes)
    }

    /// Forgets the cgroup at `path` and every descendant. Returns what went.
    pub fn remove(&mut self, path: &str) -> Vec<Change> {
        let path = path.trim_matches('/').to_string();
        let below = format!("{path}/");
        // The path itself, then its descendants: those sort together after
        // "<path>/" ("a.b" sorts between "a" and "a/b", so not one range).
        let mut gone: Vec<(String, u64)> = Vec::new();
        if let Some(id) = self.by_path.get(&path) {
            gone.push((path.clone(), *id));
        }
        let below = if path.is_empty() { String::new() } else { below };
        gone.extend(
            self.by_path
                .range(below.clone()..)
                .take_while(|(p, _)| p.starts_with(&below))
                .filter(|(p, _)| !p.is_empty())
                .map(|(p, id)| (p.clone(), *id)),
        );
        let mut changes = Vec::new();
        // Children first, as they went.
        for (p, id) in gone.into_iter().rev() {
            self.by_path.remove(&p);
            self.by_id.remove(&id);
            if let Some(f) = &mut self.follow {
                if let Some(wd) = f.wd_of.remove(&p) {
                    f.wds.remove(&wd);
                }
            }
            changes.push(Change::Removed { id, path: p });
        }
        changes
    }

    /// Watches `path` first, lists it second: nothing made in between is missed.
    fn add_dir(&mut self, path: &str, changes: &mut Vec<Change>) -> Result<()> {
        let dir = self.mount.join(path);
        if let Some(f) = &mut self.follow {
            match f.inotify.watches().add(&dir, MASK) {
                Ok(wd) => {
                    // A directory made again at a path: its old watch is gone.
                    if let Some(old) = f.wd_of.insert(path.to_string(), wd.clone()) {
                        if old != wd {
                            f.wds.remove(&old);
                        }
                    }
                    f.wds.insert(wd, path.to_string());
                }
                Err(e) if gone(&e) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    return Err(e).context(
                        "too many inotify watches for the cgroup tree: raise \
                         fs.inotify.max_user_watches (sysctl -w fs.inotify.max_user_watches=1048576)",
                    );
                }
                Err(e) => return Err(e).with_context(|| format!("inotify watch on {}", dir.display())),
            }
        }
        let meta = match fs::metadata(&dir) {
            Ok(m) => m,
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("stat {}", dir.display())),
        };
        if self.add_entry(meta.ino(), path.to_string()) {
            changes.push(Change::Created {
                id: meta.ino(),
                path: path.to_string(),
            });
        }
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        let mut children: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        children.sort();
        for name in children {
            let child = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            self.add_dir(&child, changes)?;
        }
        Ok(())
    }

    /// Walks cgroupfs again and reports the difference to what was known.
    pub fn rescan(&mut self) -> Result<Vec<Change>> {
        let before: HashMap<u64, String> = self.by_id.values().map(|e| (e.id, e.path.clone())).collect();
        self.by_id.clear();
        self.by_path.clear();
        if let Some(f) = &mut self.follow {
            f.wd_of.clear();
            for wd in std::mem::take(&mut f.wds).into_keys() {
                let _ = f.inotify.watches().remove(wd);
            }
        }
        let mut scratch = Vec::new();
        if self.follow.is_some() {
            self.add_dir("", &mut scratch)?;
        } else {
            for cg in host::cgroups(&self.mount)? {
                self.add_entry(cg.id, cg.path);
            }
        }
        self.walks += 1;
        let mut changes: Vec<Change> = before
            .iter()
            .filter(|(id, path)| self.by_id.get(id).is_none_or(|e| e.path != **path))
            .map(|(id, path)| Change::Removed {
                id: *id,
                path: path.clone(),
            })
            .collect();
        changes.extend(
            self.entries()
                .filter(|e| before.get(&e.id) != Some(&e.path))
                .map(|e| Change::Created {
                    id: e.id,
                    path: e.path.clone(),
                }),
        );
        Ok(changes)
    }

    /// The inotify descriptor, to wait on together with other sources.
    pub fn raw_fd(&self) -> Option<i32> {
        self.follow.as_ref().map(|f| f.inotify.as_raw_fd())
    }

    /// Waits up to `timeout` for cgroupfs to change, applies every change
    /// queued by then, and returns them (empty on timeout or when not
    /// following).
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<Change>> {
        let Some(fd) = self.raw_fd() else {
            std::thread::sleep(timeout);
            return Ok(Vec::new());
        };
        if !crate::sys::os::poll_readable(&[fd], timeout)? {
            return Ok(Vec::new());
        }
        self.drain()
    }

    /// Applies every queued change without waiting.
    pub fn drain(&mut self) -> Result<Vec<Change>> {
        let mut changes = Vec::new();
        loop {
            let Some(f) = &mut self.follow else {
                return Ok(changes);
            };
            // (watched dir, name, mask)
            let mut raw: Vec<(Option<String>, String, EventMask)> = Vec::new();
            match f.inotify.read_events(&mut f.buf) {
                Ok(events) => {
                    for ev in events {
                        let dir = f.wds.get(&ev.wd).cloned();
                        let name = ev
                            .name
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        raw.push((dir, name, ev.mask));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(changes),
                Err(e) => return Err(e).context("reading inotify events"),
            }
            if raw.is_empty() {
                return Ok(changes);
            }
            let mut rescan = false;
            for (dir, name, mask) in raw {
                if mask.contains(EventMask::Q_OVERFLOW)
                    || mask.contains(EventMask::MOVED_FROM)
                    || mask.contains(EventMask::MOVED_TO)
                {
                    rescan = true;
                    continue;
                }
                let Some(dir) = dir else { continue };
                if !mask.contains(EventMask::ISDIR) {
                    continue;
                }
                let child = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                if mask.contains(EventMask::CREATE) {
                    self.add_dir(&child, &mut changes)?;
                } else if mask.contains(EventMask::DELETE) {
                    changes.extend(self.remove(&child));
                }
            }
            if rescan {
                changes.extend(self.rescan()?);
            }
        }
    }
}

fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain directory tree stands in for cgroupfs: the tree only needs
    /// directories, inodes and inotify.
    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cgacct-tree-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("tmpdir");
        d
    }

    fn ino(p: &Path) -> u64 {
        fs::metadata(p).expect("stat").ino()
    }

    #[test]
    fn scan_then_told_changes() {
        let d = tmpdir("scan");
        fs::create_dir_all(d.join("system.slice/nginx.service")).expect("mkdir");
        let mut t = CgroupTree::scan(&d).expect("scan");
        assert_eq!(t.len(), 3);
        let id = ino(&d.join("system.slice/nginx.service"));
        let e = t.get(id).expect("entry");
        assert_eq!(e.display(), "/system.slice/nginx.service");
        assert_eq!(e.identity.unit.as_deref(), Some("nginx.service"));
        fs::create_dir(d.join("system.slice/x.scope")).expect("mkdir");
        let ch = t.insert("/system.slice/x.scope").expect("insert");
        assert_eq!(ch.len(), 1);
        assert!(t.insert("system.slice/x.scope").expect("again").is_empty());
        fs::create_dir(d.join("system.slice.x")).expect("mkdir");
        assert_eq!(t.insert("system.slice.x").expect("insert").len(), 1);
        let gone = t.remove("system.slice");
        assert_eq!(gone.len(), 3, "{gone:?}");
        assert_eq!(
            gone.last(),
            Some(&Change::Removed {
                id: ino(&d.join("system.slice")),
                path: "system.slice".into()
            })
        );
        assert_eq!(t.len(), 2, "system.slice.x stays");
        assert_eq!(t.walks, 1);
        fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn follows_mkdir_and_rmdir_without_walking_again() {
        let d = tmpdir("follow");
        fs::create_dir(d.join("a")).expect("mkdir");
        let mut t = CgroupTree::follow(&d).expect("follow");
        assert_eq!(t.len(), 2);
        // A directory and its child made before the first event is read:
        // the child is found by listing the new directory.
        fs::create_dir_all(d.join("a/b.scope/c")).expect("mkdir -p");
        let mut ch = t.wait(Duration::from_secs(2)).expect("wait");
        ch.extend(t.drain().expect("drain"));
        let created: Vec<String> = ch
            .iter()
            .filter_map(|c| match c {
                Change::Created { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(created, ["a/b.scope", "a/b.scope/c"], "{ch:?}");
        let id = ino(&d.join("a/b.scope/c"));
        assert_eq!(t.get(id).map(|e| e.path.as_str()), Some("a/b.scope/c"));
        // Events on the new directory are seen too.
        fs::remove_dir(d.join("a/b.scope/c")).expect("rmdir");
        let ch = t.wait(Duration::from_secs(2)).expect("wait");
        assert_eq!(
            ch,
            [Change::Removed {
                id,
                path: "a/b.scope/c".into()
            }]
        );
        assert!(t.get(id).is_none());
        assert_eq!(t.walks, 1, "no full walk for plain changes");
        // Renames are rare: they make the tree walk again and report the difference.
        fs::rename(d.join("a/b.scope"), d.join("a/r.scope")).expect("rename");
        let mut ch = t.wait(Duration::from_secs(2)).expect("wait");
        ch.extend(t.drain().expect("drain"));
        assert!(t.by_path("a/r.scope").is_some() && t.by_path("a/b.scope").is_none());
        assert_eq!(t.walks, 2);
        fs::remove_dir_all(&d).expect("cleanup");
    }
}
