//! Names remembered for containers and pods seen earlier: a removed cgroup's
//! record (`cgacct-pin removed`) holds its path, so its container id, but
//! the runtime forgets the container when it is removed. Every command that
//! asks the runtimes for a root (`status`, `top`, `export`, `watch`) adds
//! what it learnt to one small JSON file per root,
//! `/run/cgacct/names-<root, escaped>.json` (`$CGACCT_STATE_DIR` instead of
//! `/run/cgacct`), written whole to a temporary file and renamed over the
//! old one. Entries not seen for [`REMEMBER`] go; `destroy` removes the
//! file. /run is memory, as bpffs is: both go at reboot.
use std::{
    collections::BTreeMap,
    fs, io,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{Names, Table};

/// How long a container or pod not seen again is remembered.
pub const REMEMBER: Duration = Duration::from_secs(7 * 24 * 3600);

/// An entry seen within this long is not written again only to say so.
const TOUCH: u64 = 3600;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    #[serde(flatten)]
    names: Names,
    /// Seconds since the epoch when a runtime last listed it.
    seen: u64,
}

/// The remembered names of one root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    #[serde(default)]
    containers: BTreeMap<String, Seen>,
    #[serde(default)]
    pods: BTreeMap<String, Seen>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Where cgacct keeps its small state files: `/run/cgacct`, or
/// `$CGACCT_STATE_DIR`.
pub fn state_dir() -> PathBuf {
    std::env::var_os("CGACCT_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/cgacct"))
}

/// The file of the root at `root`.
pub fn path(root: &Path) -> PathBuf {
    let dir = state_dir();
    let mut name = String::from("names-");
    for c in root.to_string_lossy().chars() {
        match c {
            '%' => name.push_str("%25"),
            '/' => name.push_str("%2f"),
            c => name.push(c),
        }
    }
    name.push_str(".json");
    dir.join(name)
}

/// Removes the file of `root`, if there is one.
pub fn forget(root: &Path) -> io::Result<()> {
    match fs::remove_file(path(root)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Memory {
    /// What `file` holds; nothing when it is missing or unreadable (it is
    /// only a cache of what runtimes said).
    pub fn load(file: &Path) -> Memory {
        fs::read(file)
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default()
    }

    /// Takes in what `t` names, at time `now`. True when the file should
    /// be written: something new or changed, an entry last written long
    /// ago, or one forgotten.
    pub fn learn(&mut self, t: &Table, now: u64) -> bool {
        let mut changed = false;
        for (mine, theirs) in [(&mut self.containers, &t.containers), (&mut self.pods, &t.pods)] {
            for (id, names) in theirs.iter().filter(|(_, n)| !n.is_empty()) {
                let fresh = Seen {
                    names: names.clone(),
                    seen: now,
                };
                match mine.get_mut(id) {
                    Some(old) if old.names == *names && now.saturating_sub(old.seen) < TOUCH => {}
                    Some(old) => {
                        *old = fresh;
                        changed = true;
                    }
                    None => {
                        mine.insert(id.clone(), fresh);
                        changed = true;
                    }
                }
            }
            let before = mine.len();
            mine.retain(|_, s| now.saturating_sub(s.seen) < REMEMBER.as_secs());
            changed |= mine.len() != before;
        }
        changed
    }

    /// Adds to `t` the names it lacks.
    pub fn fill(&self, t: &mut Table) {
        for (mine, theirs) in [(&self.containers, &mut t.containers), (&self.pods, &mut t.pods)] {
            for (id, s) in mine {
                theirs.entry(id.clone()).or_insert_with(|| s.names.clone());
            }
        }
    }

    /// Writes the file whole (a temporary file renamed over it).
    pub fn save(&self, file: &Path) -> io::Result<()> {
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        let result = (|| {
            // Root's alone, as the runtimes' own records are.
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec(self)?)?;
            f.sync_data()?;
            fs::rename(&tmp, file)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// Loads the file, learns `t`, writes the file when that changed it, and
/// fills `t` with what was remembered. Failing to write only loses memory.
pub fn remember(file: &Path, t: &mut Table) -> io::Result<()> {
    let mut m = Memory::load(file);
    let result = if m.learn(t, now()) { m.save(file) } else { Ok(()) };
    m.fill(t);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "4c4367d78267a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607182930";

    fn named(n: &str) -> Names {
        Names {
            container_name: Some(n.into()),
            ..Names::default()
        }
    }

    #[test]
    fn learns_writes_only_news_and_forgets_old_entries() {
        let d = std::env::temp_dir().join(format!("cgacct-mem-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let file = d.join("sub/names.json");
        let mut t = Table::default();
        t.containers.insert(A.into(), named("hd-web"));
        t.containers.insert("b".repeat(64), Names::default());
        let t0 = now();
        let mut m = Memory::load(&file);
        assert!(m.learn(&t, t0), "new");
        assert_eq!(m.containers.len(), 1, "entries without names are not kept");
        m.save(&file).expect("save");
        let mut again = Memory::load(&file);
        assert_eq!(again, m);
        assert!(!again.learn(&t, t0 + 10), "nothing new");
        assert!(again.learn(&t, t0 + TOUCH), "seen again after long");
        // The runtime forgot it (removed): the memory still names it.
        let mut empty = Table::default();
        remember(&file, &mut empty).expect("remember");
        assert_eq!(empty.containers[A], named("hd-web"));
        // Not seen for REMEMBER: forgotten.
        assert!(again.learn(&Table::default(), t0 + TOUCH + REMEMBER.as_secs()));
        assert!(again.containers.is_empty());
        // A corrupt file is an empty memory.
        fs::write(&file, "{not json").expect("write");
        assert_eq!(Memory::load(&file), Memory::default());
        let p = path(Path::new("/sys/fs/bpf/a%b"));
        assert!(p.ends_with("names-%2fsys%2ffs%2fbpf%2fa%25b.json"), "{p:?}");
        fs::remove_dir_all(&d).expect("cleanup");
    }
}
