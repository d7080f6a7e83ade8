//! The layout file: parsed with serde (unknown keys are errors), then
//! validated into a [`Layout`] that the planner can trust.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

use super::{
    classes::{self, Class},
    select::{CgroupPattern, NamePattern},
};

pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/cgacct";

/// What the layout's `[tc] attach` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcAttach {
    /// Probe: TCX where the kernel has it, clsact elsewhere.
    #[default]
    Auto,
    Tcx,
    Clsact,
}

impl TcAttach {
    pub fn as_str(self) -> &'static str {
        match self {
            TcAttach::Auto => "auto",
            TcAttach::Tcx => "tcx",
            TcAttach::Clsact => "clsact",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default = "default_root")]
    root: PathBuf,
    #[serde(default)]
    maps: MapSizes,
    #[serde(default)]
    tc: TcSection,
    #[serde(default)]
    cgroup_skb: CgroupSkbSection,
    #[serde(default)]
    stats: StatsSection,
    #[serde(default)]
    access: AccessSection,
    /// Class name -> prefixes (see [`super::classes`]).
    classes: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

fn default_root() -> PathBuf {
    PathBuf::from(DEFAULT_ROOT)
}

/// `max_entries` of the shared maps.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MapSizes {
    /// Cgroups with counters (CGROUP_STATS and TC_CGROUP_STATS).
    pub cgroups: u32,
    /// Interfaces with counters (IFACE_STATS).
    pub interfaces: u32,
    /// Stats-file reads in flight at once (ITER_SCRATCH).
    pub readers: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            cgroups: 16384,
            interfaces: 4096,
            readers: 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcSection {
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(default)]
    required: bool,
    /// Interface glob -> cgroup path behind it.
    #[serde(default)]
    owners: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    discover_owners: bool,
    /// How TC programs attach: auto (probe), tcx, clsact.
    #[serde(default)]
    attach: TcAttach,
    /// Expedite RCU grace periods host-wide while attaching many TCX links.
    #[serde(default = "yes")]
    expedite_rcu: bool,
}

fn yes() -> bool {
    true
}

impl Default for TcSection {
    fn default() -> Self {
        TcSection {
            interfaces: Vec::new(),
            required: false,
            owners: Default::default(),
            discover_owners: false,
            attach: TcAttach::Auto,
            expedite_rcu: true,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CgroupSkbSection {
    #[serde(default)]
    attach: Vec<String>,
    #[serde(default)]
    required: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsSection {
    #[serde(default)]
    cgroups: Vec<String>,
    #[serde(default)]
    required: bool,
}

/// `[access]`: owner, group and mode of programs, maps and links;
/// `[access.stats]`: the same for the stats files and their directories.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessSection {
    owner: Option<Principal>,
    group: Option<Principal>,
    mode: Option<Mode>,
    #[serde(default)]
    stats: AccessKeys,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessKeys {
    owner: Option<Principal>,
    group: Option<Principal>,
    mode: Option<Mode>,
}

/// A user or group: a name or a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Principal {
    Id(u32),
    Name(String),
}

/// A file mode: `0o440` (TOML octal) or `"0440"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Mode {
    Number(u32),
    Text(String),
}

/// Owner, group and mode of one class of files; directories get an `x`
/// wherever the files get an `r`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Access {
    pub fn dir_mode(&self) -> u32 {
        let r = self.mode & 0o444;
        self.mode | (r >> 2) | 0o700
    }
}

/// What the pins are made to be: private ones (programs, maps, links) and
/// the stats tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessRules {
    pub private: Access,
    pub stats: Access,
}

impl AccessRules {
    /// The root holds both trees: it must let stats readers through (it
    /// takes the stats group).
    pub fn root_dir_mode(&self) -> u32 {
        self.private.dir_mode() | (self.stats.dir_mode() & 0o555)
    }
}

pub const DEFAULT_PRIVATE_MODE: u32 = 0o600;
pub const DEFAULT_STATS_MODE: u32 = 0o444;

/// A layout that passed validation.
#[derive(Debug)]
pub struct Layout {
    pub root: PathBuf,
    pub maps: MapSizes,
    /// Interfaces (this network namespace) that get the TC programs.
    pub tc_interfaces: Vec<NamePattern>,
    /// Cgroups where the cgroup_skb programs are attached.
    pub cgroup_skb_attach: Vec<CgroupPattern>,
    /// Cgroups that get a `net.stat` file.
    pub stats_cgroups: Vec<CgroupPattern>,
    /// Declared owners: interfaces matching the pattern have the cgroup
    /// (its path below the cgroup2 mount, "a/b", "" for the root) behind them.
    pub tc_owners: Vec<(NamePattern, String)>,
    /// Find the cgroup behind each attached veth from the processes in the
    /// veth peer's network namespace.
    pub tc_discover_owners: bool,
    /// How TC programs attach (`[tc] attach`); `CGACCT_TC_ATTACH` overrides.
    pub tc_attach: TcAttach,
    /// `[tc] expedite_rcu`: set `/sys/kernel/rcu_expedited` to 1 while many
    /// TCX links are attached (`apply::expedite`).
    pub tc_expedite_rcu: bool,
    /// Sections whose every pattern must match something (`required = true`).
    pub required: Required,
    pub access: AccessRules,
    /// Destination classes (`[classes]`); None: the section is absent and
    /// classes are off.
    pub classes: Option<Vec<Class>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Required {
    pub tc: bool,
    pub cgroup_skb: bool,
    pub stats: bool,
}

impl Layout {
    pub fn from_path(path: &Path) -> Result<Layout> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read layout file {}", path.display()))?;
        Layout::parse(&text).with_context(|| format!("invalid layout file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Layout> {
        let file: File = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        check_root(&file.root).context("in root")?;
        for (key, v) in [
            ("maps.cgroups", file.maps.cgroups),
            ("maps.interfaces", file.maps.interfaces),
            ("maps.readers", file.maps.readers),
        ] {
            if v == 0 || v > 1 << 24 {
                bail!("{key} = {v} is out of range: use a number from 1 to {}", 1 << 24);
            }
        }
        let tc_interfaces = file
            .tc
            .interfaces
            .iter()
            .map(|p| NamePattern::parse(p).with_context(|| format!("in tc.interfaces: {p:?}")))
            .collect::<Result<_>>()?;
        let cgroups = |key: &str, list: &[String]| -> Result<Vec<CgroupPattern>> {
            list.iter()
                .map(|p| CgroupPattern::parse(p).with_context(|| format!("in {key}: {p:?}")))
                .collect()
        };
        let a = file.access;
        let top = AccessKeys {
            owner: a.owner,
            group: a.group,
            mode: a.mode,
        };
        let private = access("access", &top, None, DEFAULT_PRIVATE_MODE)?;
        let stats = access("access.stats", &a.stats, Some(private), DEFAULT_STATS_MODE)?;
        let tc_owners = file
            .tc
            .owners
            .iter()
            .map(|(pat, cg)| {
                let p = NamePattern::parse(pat).with_context(|| format!("in tc.owners: {pat:?}"))?;
                if !cg.starts_with('/') || cg.contains(['*', '?']) || cg.split('/').any(|c| c == "..") {
                    bail!(
                        "in tc.owners: {pat:?} = {cg:?}: the owner is one cgroup, an absolute path \
                         below the cgroup2 mount without globs, e.g. \"/system.slice/web.service\""
                    );
                }
                Ok((p, cg.trim_matches('/').to_string()))
            })
            .collect::<Result<_>>()?;
        let classes = file.classes.as_ref().map(classes::parse).transpose()?;
        Ok(Layout {
            classes,
            tc_owners,
            tc_discover_owners: file.tc.discover_owners,
            tc_attach: file.tc.attach,
            tc_expedite_rcu: file.tc.expedite_rcu,
            root: file.root,
            maps: file.maps,
            tc_interfaces,
            cgroup_skb_attach: cgroups("cgroup_skb.attach", &file.cgroup_skb.attach)?,
            stats_cgroups: cgroups("stats.cgroups", &file.stats.cgroups)?,
            required: Required {
                tc: file.tc.required,
                cgroup_skb: file.cgroup_skb.required,
                stats: file.stats.required,
            },
            access: AccessRules { private, stats },
        })
    }
}

/// Fails unless `root` is an absolute path without `.` or `..` components:
/// the root is a directory cgacct creates and later removes whole, so it
/// must name one place (`/sys/fs/bpf/a/../b` would create `a` and pin in `b`).
pub fn check_root(root: &Path) -> Result<()> {
    if !root.is_absolute() {
        bail!(
            "{:?} must be an absolute path on bpffs, e.g. {DEFAULT_ROOT:?}",
            root
        );
    }
    let text = root.as_os_str().to_string_lossy();
    if text.split('/').any(|c| c == ".." || c == ".") {
        let clean: PathBuf = root.components().fold(PathBuf::new(), |mut p, c| {
            match c {
                std::path::Component::ParentDir => {
                    p.pop();
                }
                std::path::Component::CurDir => {}
                c => p.push(c),
            }
            p
        });
        bail!(
            "{:?} has '.' or '..' components: write the directory it names, {:?}",
            root,
            clean
        );
    }
    Ok(())
}

/// Resolves one `[access]` table; owner and group default to `inherit`'s
/// (or root), the mode to `default_mode`.
fn access(key: &str, k: &AccessKeys, inherit: Option<Access>, default_mode: u32) -> Result<Access> {
    let uid = match &k.owner {
        None => inherit.map_or(0, |a| a.uid),
        Some(Principal::Id(id)) => *id,
        Some(Principal::Name(n)) => lookup_user(n).with_context(|| format!("{key}.owner = {n:?}"))?,
    };
    let gid = match &k.group {
        None => inherit.map_or(0, |a| a.gid),
        Some(Principal::Id(id)) => *id,
        Some(Principal::Name(n)) => lookup_group(n).with_context(|| format!("{key}.group = {n:?}"))?,
    };
    let mode = match &k.mode {
        None => default_mode,
        Some(Mode::Number(m)) => *m,
        Some(Mode::Text(t)) => u32::from_str_radix(t.trim_start_matches("0o"), 8).map_err(|_| {
            anyhow::anyhow!("{key}.mode = {t:?} is not an octal mode: write it like \"0440\" or 0o440")
        })?,
    };
    if mode & !0o666 != 0 {
        bail!(
            "{key}.mode = {mode:#o}: only read and write bits (0o666) make sense for pinned files; \
             directories get their x bits from the r bits"
        );
    }
    if mode & 0o400 == 0 {
        bail!("{key}.mode = {mode:#o} leaves the owner unable to read: include 0o400");
    }
    Ok(Access { uid, gid, mode })
}

fn lookup_user(name: &str) -> Result<u32> {
    crate::sys::os::user_id(name).ok_or_else(|| {
        anyhow::anyhow!("no such user on this host: use an existing user name or a numeric uid")
    })
}

fn lookup_group(name: &str) -> Result<u32> {
    crate::sys::os::group_id(name).ok_or_else(|| {
        anyhow::anyhow!("no such group on this host: use an existing group name or a numeric gid")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_full_file() {
        let l = Layout::parse("").unwrap();
        assert_eq!(l.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(l.maps, MapSizes::default());
        let l = Layout::parse(
            "root = \"/sys/fs/bpf/x\"\n[maps]\ncgroups = 10\n[tc]\ninterfaces = [\"veth*\"]\n\
             [cgroup_skb]\nattach = [\"/\"]\n[stats]\ncgroups = [\"/a/**\"]\n",
        )
        .unwrap();
        assert_eq!(l.maps.cgroups, 10);
        assert_eq!(l.maps.interfaces, 4096);
        assert_eq!(l.tc_interfaces.len(), 1);
        assert_eq!(l.stats_cgroups.len(), 1);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = format!("{:#}", Layout::parse("rooot = \"/x\"").unwrap_err());
        assert!(e.contains("unknown field `rooot`"), "{e}");
        let e = format!("{:#}", Layout::parse("root = \"rel\"").unwrap_err());
        assert!(e.contains("absolute"), "{e}");
        let e = format!(
            "{:#}",
            Layout::parse("root = \"/sys/fs/bpf/a/../b\"").unwrap_err()
        );
        assert!(e.contains("'..'") && e.contains("\"/sys/fs/bpf/b\""), "{e}");
        assert!(Layout::parse("root = \"/sys/fs/bpf/./b\"").is_err());
        let e = format!("{:#}", Layout::parse("[maps]\ncgroups = 0").unwrap_err());
        assert!(e.contains("maps.cgroups"), "{e}");
        let e = format!("{:#}", Layout::parse("[stats]\ncgroups = [\"a\"]").unwrap_err());
        assert!(e.contains("stats.cgroups"), "{e}");
        let e = format!(
            "{:#}",
            Layout::parse("[tc]\nowners = { \"v*\" = \"/a/*\" }").unwrap_err()
        );
        assert!(e.contains("tc.owners"), "{e}");
        let l =
            Layout::parse("[tc]\ndiscover_owners = true\nowners = { \"vw*\" = \"/web.slice/\" }").unwrap();
        assert!(l.tc_discover_owners);
        assert_eq!(l.tc_attach, TcAttach::Auto);
        assert!(l.tc_expedite_rcu, "on by default");
        assert!(
            !Layout::parse("[tc]\nexpedite_rcu = false")
                .unwrap()
                .tc_expedite_rcu
        );
        assert!(Layout::parse("").unwrap().tc_expedite_rcu);
        let clsact = Layout::parse("[tc]\nattach = \"clsact\"").unwrap();
        assert_eq!(clsact.tc_attach, TcAttach::Clsact);
        let e = format!("{:#}", Layout::parse("[tc]\nattach = \"xdp\"").unwrap_err());
        assert!(e.contains("clsact"), "{e}");
        assert_eq!(l.tc_owners[0].1, "web.slice");
        let e = format!("{:#}", Layout::parse("[tc]\ninterfaces = \"veth*\"").unwrap_err());
        assert!(e.contains("line 2"), "{e}");
    }
}
