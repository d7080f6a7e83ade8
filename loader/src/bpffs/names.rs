//! Where everything lives under the layout's root on bpffs, and how names
//! that bpffs refuses are still created.
//!
//! ```text
//! <root>/progs/<program>              pinned programs
//! <root>/maps/<map>                   pinned shared maps (lower-case names)
//! <root>/links/tc/<ifname>/<dir>      TCX links (clsact: the attached program), dir = ingress | egress
//! <root>/links/cgroup/<id>/<dir>      cgroup_skb links, by cgroup id
//! <root>/links/tracing/<tracepoint>   cgroup_rmdir and cgroup_release links
//! <root>/<cgroup path>/net.stat       cgroup iterator links, mirroring cgroupfs
//! ```
//!
//! Mirrored names are the real cgroup names, dots included. bpffs refuses
//! names with '.' in lookups while the parent directory has any permission
//! bit set, so such names are created with the parent's mode briefly cleared
//! (the kernel does the same for `maps.debug`). If the kernel refuses anyway,
//! the root falls back to escaping: '.' is written `%2e`. '%' is always
//! written `%25`. A mirrored name that would equal one of cgacct's own names
//! at that level (`progs`, `maps`, `links` at the top, `net.stat` anywhere)
//! has its first character escaped too, so the two trees never collide.
use std::{
    fs, io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

pub const STATS_FILE: &str = "net.stat";
pub const PROGS_DIR: &str = "progs";
pub const MAPS_DIR: &str = "maps";
pub const LINKS_DIR: &str = "links";
const TOP_RESERVED: [&str; 3] = [PROGS_DIR, MAPS_DIR, LINKS_DIR];

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Paths of one root.
#[derive(Clone, Debug)]
pub struct Pins {
    pub root: PathBuf,
    /// Whether names with dots can be created on this bpffs.
    pub dots: bool,
}

impl Pins {
    pub fn new(root: &Path, dots: bool) -> Pins {
        Pins {
            root: root.to_path_buf(),
            dots,
        }
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.root.join(PROGS_DIR).join(name)
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(MAPS_DIR).join(name.to_ascii_lowercase())
    }

    pub fn tc_links(&self) -> PathBuf {
        self.root.join(LINKS_DIR).join("tc")
    }

    pub fn tc_link(&self, ifname: &str, dir: Direction) -> PathBuf {
        self.tc_links().join(escape(ifname, self.dots)).join(dir.as_str())
    }

    pub fn cgroup_links(&self) -> PathBuf {
        self.root.join(LINKS_DIR).join("cgroup")
    }

    /// The link of the `cgroup_rmdir` tracepoint program.
    pub fn rmdir_link(&self) -> PathBuf {
        self.tracing_link("cgroup_rmdir")
    }

    /// The link of the `cgroup_release` tracepoint program.
    pub fn release_link(&self) -> PathBuf {
        self.tracing_link("cgroup_release")
    }

    /// The link of a BTF tracepoint program, by tracepoint.
    pub fn tracing_link(&self, tracepoint: &str) -> PathBuf {
        self.root.join(LINKS_DIR).join("tracing").join(tracepoint)
    }

    pub fn cgroup_link(&self, id: u64, dir: Direction) -> PathBuf {
        self.cgroup_links().join(id.to_string()).join(dir.as_str())
    }

    pub fn stats_file_name(&self) -> String {
        escape(STATS_FILE, self.dots)
    }

    /// Mirror directory of a cgroup path ("" for the root cgroup).
    pub fn stats_dir(&self, cgroup_path: &str) -> PathBuf {
        let mut p = self.root.clone();
        let stat = self.stats_file_name();
        for (depth, comp) in cgroup_path.split('/').filter(|c| !c.is_empty()).enumerate() {
            let mut name = escape(comp, self.dots);
            if name == stat || (depth == 0 && TOP_RESERVED.contains(&name.as_str())) {
                name = format!("%{:02x}{}", name.as_bytes()[0], &name[1..]);
            }
            p.push(name);
        }
        p
    }

    pub fn stats_file(&self, cgroup_path: &str) -> PathBuf {
        self.stats_dir(cgroup_path).join(self.stats_file_name())
    }
}

/// Escapes '%' always, '.' when the bpffs cannot hold dotted names.
pub fn escape(name: &str, dots: bool) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '.' if !dots => out.push_str("%2e"),
            '\n' => out.push_str("%0a"),
            c => out.push(c),
        }
    }
    out
}

/// The name [`escape`] was given; None when `escaped` is not its output.
pub fn unescape(escaped: &str) -> Option<String> {
    let mut out = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let c = match rest.get(i + 1..i + 3)? {
            "25" => '%',
            "2e" => '.',
            "0a" => '\n',
            _ => return None,
        };
        out.push(c);
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// Held while a directory's permission bits are cleared for a dotted name
/// ([`create_with_dots`]) and while [`super::access::settle`] reads and
/// sets modes: apply pins on several threads, and without it one thread
/// could restore a mode another has just cleared (its pin then fails with
/// `EPERM`), or save the cleared mode as the one to restore.
static MODES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`MODES`], taken (a panic elsewhere while it was held leaves nothing
/// half-done that matters here).
pub fn lock_modes() -> std::sync::MutexGuard<'static, ()> {
    MODES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `op` (which creates `path`) with the parent's permission bits
/// cleared when the last component has a dot, restoring them on every path.
pub fn create_with_dots<T>(path: &Path, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let dotted = path
        .file_name()
        .is_some_and(|n| n.as_encoded_bytes().contains(&b'.'));
    let parent = path.parent().filter(|_| dotted);
    let Some(parent) = parent else {
        return op();
    };
    let _modes = lock_modes();
    let mode = fs::metadata(parent)?.permissions().mode() & 0o7777;
    fs::set_permissions(parent, fs::Permissions::from_mode(0o000))?;
    crate::sys::fault::step();
    let result = op();
    let restored = fs::set_permissions(parent, fs::Permissions::from_mode(mode));
    let value = result?;
    restored?;
    Ok(value)
}

/// `mkdir -p` below `root` (which must exist), dotted names included. The
/// deepest directory is tried first, its parents only when it cannot be
/// made: one mkdir where they exist (every pin after the first of a
/// directory).
pub fn create_dirs(root: &Path, path: &Path) -> io::Result<()> {
    if path == root {
        return Ok(());
    }
    if !path.starts_with(root) {
        return Err(io::Error::other("path outside root"));
    }
    let mkdir = || match create_with_dots(path, || fs::create_dir(path)) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    };
    match mkdir() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = path
                .parent()
                .ok_or_else(|| io::Error::other("path outside root"))?;
            create_dirs(root, parent)?;
            mkdir()
        }
        other => other,
    }
}

/// Whether this bpffs accepts dotted names created as above. Probed on
/// `root` (which must exist) with a throwaway directory.
pub fn probe_dots(root: &Path) -> io::Result<bool> {
    let probe = root.join(format!("probe.{}", std::process::id()));
    match create_with_dots(&probe, || fs::create_dir(&probe)) {
        Ok(()) => {
            fs::remove_dir(&probe)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two threads making dotted names in one directory at once, as apply's
    /// stats and TC threads do in the root: the directory ends with the
    /// mode it had, never the cleared one another thread saved.
    #[test]
    fn dotted_names_made_at_once_restore_the_directory_mode() {
        use std::os::unix::fs::MetadataExt as _;
        // Making a file in a directory of mode 000 needs root's override.
        if fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
            eprintln!("SKIPPED dotted_names_made_at_once_restore_the_directory_mode: not root");
            return;
        }
        let root = std::env::temp_dir().join(format!("cgacct-dots-{}", std::process::id()));
        fs::create_dir_all(&root).expect("temp root");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o750)).expect("chmod");
        std::thread::scope(|s| {
            for t in 0..2 {
                let root = &root;
                s.spawn(move || {
                    for i in 0..500 {
                        let p = root.join(format!("f{t}.{i}"));
                        create_with_dots(&p, || fs::write(&p, b"")).expect("create");
                    }
                });
            }
        });
        let mode = fs::metadata(&root).expect("stat").permissions().mode() & 0o7777;
        let _ = fs::remove_dir_all(&root);
        assert_eq!(mode, 0o750);
    }

    #[test]
    fn create_dirs_makes_missing_parents_and_keeps_existing_ones() {
        let root = std::env::temp_dir().join(format!("cgacct-names-{}", std::process::id()));
        fs::create_dir_all(&root).expect("temp root");
        let deep = root.join("links/tc/eth0");
        create_dirs(&root, &deep).expect("from nothing");
        assert!(deep.is_dir());
        create_dirs(&root, &deep).expect("again");
        create_dirs(&root, &root.join("links/tc/eth1")).expect("a sibling");
        assert!(root.join("links/tc/eth1").is_dir());
        create_dirs(&root, &root).expect("the root itself");
        assert!(create_dirs(&root, Path::new("/elsewhere")).is_err());
        fs::write(root.join("file"), "").expect("a file");
        assert!(create_dirs(&root, &root.join("file/below")).is_err());
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn unescape_inverts_escape() {
        for name in ["veth0", "a.b", "50%.x", "%2e", "new\nline", ""] {
            for dots in [true, false] {
                assert_eq!(
                    unescape(&escape(name, dots)).as_deref(),
                    Some(name),
                    "{name:?} dots={dots}"
                );
            }
        }
        assert_eq!(unescape("a%2"), None);
        assert_eq!(unescape("a%41"), None);
    }

    #[test]
    fn mirror_paths_never_collide_with_internal_names() {
        let p = Pins::new(Path::new("/r"), true);
        assert_eq!(p.stats_file(""), PathBuf::from("/r/net.stat"));
        assert_eq!(
            p.stats_file("system.slice/docker-1a2b.scope"),
            PathBuf::from("/r/system.slice/docker-1a2b.scope/net.stat")
        );
        assert_eq!(p.stats_dir("maps"), PathBuf::from("/r/%6daps"));
        assert_eq!(p.stats_dir("a/maps"), PathBuf::from("/r/a/maps"));
        assert_eq!(p.stats_dir("net.stat/x"), PathBuf::from("/r/%6eet.stat/x"));
        assert_eq!(p.stats_dir("50%"), PathBuf::from("/r/50%25"));
        let q = Pins::new(Path::new("/r"), false);
        assert_eq!(q.stats_file("a.b"), PathBuf::from("/r/a%2eb/net%2estat"));
        assert_eq!(q.stats_dir("net.stat"), PathBuf::from("/r/%6eet%2estat"));
        assert_eq!(p.map("CGROUP_STATS"), PathBuf::from("/r/maps/cgroup_stats"));
    }
}
