//! Which cgroup is behind each attached interface: the "owner" whose side
//! of the wire the interface is, for traffic that has no socket on the host
//! (frames going into a container at its host-side veth).
//!
//! Owners come from the layout (`[tc] owners`, interface glob -> cgroup) or
//! are discovered (`[tc] discover_owners = true`): for a veth whose peer is
//! in another network namespace, the processes living in that namespace
//! are found in /proc, and the owner is the deepest cgroup holding all of
//! them (a container's scope; a Kubernetes pod's slice when its containers
//! sit in cgroups of their own). A namespace with no process, or whose
//! processes only share the root cgroup, gets no owner. Declared owners win
//! over discovered ones.
//!
//! The result is written to the pinned `IFACE_OWNER` map (ifindex -> cgroup
//! id), then a new generation to `IFACE_OWNER_GEN`: the TC programs cache
//! each interface's owner per CPU and look it up again when the generation
//! moves.
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::MetadataExt as _,
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use cgacct_common::maps;
use serde::Serialize;

use crate::{
    bpffs::Pins,
    observe::{rtnl::Rtnl, Cgroup, Interface, Observed},
    spec::Layout,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum How {
    Declared,
    Discovered,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub ifindex: u32,
    pub interface: String,
    /// Path below the cgroup2 mount ("" for the root).
    pub cgroup: String,
    pub id: u64,
    pub how: How,
}

/// The deepest cgroup path that holds every path of `paths` ("" when they
/// only share the root).
pub fn common_ancestor<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut common: Option<Vec<&str>> = None;
    for p in paths {
        let comps: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
        common = Some(match common {
            None => comps,
            Some(c) => c
                .iter()
                .zip(&comps)
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| *a)
                .collect(),
        });
    }
    common.map(|c| c.join("/"))
}

/// The cgroup v2 path of a process, from /proc/PID/cgroup ("0::/a/b").
fn proc_cgroup(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_matches('/').to_string())
}

/// Network namespace inode -> (one pid in it, cgroups of its processes).
fn processes_by_netns() -> Result<HashMap<u64, (u32, Vec<String>)>> {
    let mut out: HashMap<u64, (u32, Vec<String>)> = HashMap::new();
    for entry in fs::read_dir("/proc").context("listing /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // Processes come and go while we look: skip the ones that went.
        let Ok(ns) = fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let Some(cg) = proc_cgroup(pid) else { continue };
        let slot = out.entry(ns.ino()).or_insert((pid, Vec::new()));
        slot.1.push(cg);
    }
    Ok(out)
}

/// Owners of the attached interfaces that match the layout, declared first.
pub fn desired(layout: &Layout, interfaces: &[Interface], cgroups: &[Cgroup]) -> Result<Vec<Owner>> {
    let ids: HashMap<&str, u64> = cgroups.iter().map(|c| (c.path.as_str(), c.id)).collect();
    let attached: Vec<&Interface> = interfaces
        .iter()
        .filter(|i| layout.tc_interfaces.iter().any(|p| p.matches(&i.name)))
        .collect();
    let mut out: BTreeMap<u32, Owner> = BTreeMap::new();
    for i in &attached {
        if let Some((_, cg)) = layout.tc_owners.iter().find(|(p, _)| p.matches(&i.name)) {
            if let Some(id) = ids.get(cg.as_str()) {
                out.insert(
                    i.ifindex,
                    Owner {
                        ifindex: i.ifindex,
                        interface: i.name.clone(),
                        cgroup: cg.clone(),
                        id: *id,
                        how: How::Declared,
                    },
                );
            }
        }
    }
    if layout.tc_discover_owners && attached.iter().any(|i| !out.contains_key(&i.ifindex)) {
        for (ifindex, cg) in discover()? {
            let Some(i) = attached.iter().find(|i| i.ifindex == ifindex) else {
                continue;
            };
            let Some(id) = ids.get(cg.as_str()) else { continue };
            out.entry(ifindex).or_insert(Owner {
                ifindex,
                interface: i.name.clone(),
                cgroup: cg,
                id: *id,
                how: How::Discovered,
            });
        }
    }
    Ok(out.into_values().collect())
}

/// ifindex (of a link here whose peer is in another namespace) -> cgroup
/// path of the processes in that namespace.
pub fn discover() -> Result<BTreeMap<u32, String>> {
    let mut rtnl = Rtnl::open()?;
    let links: Vec<_> = rtnl
        .links()?
        .into_iter()
        .filter(|l| l.peer_nsid.is_some())
        .collect();
    let mut out = BTreeMap::new();
    if links.is_empty() {
        return Ok(out);
    }
    let own_ns = fs::metadata("/proc/self/ns/net")
        .context("stat /proc/self/ns/net")?
        .ino();
    let mut by_nsid: HashMap<i32, String> = HashMap::new();
    for (ns, (pid, cgroups)) in processes_by_netns()? {
        if ns == own_ns {
            continue;
        }
        let Some(nsid) = rtnl.nsid_of_pid(pid)? else {
            continue; // no link of ours leads there
        };
        if let Some(cg) = common_ancestor(cgroups.iter().map(String::as_str)) {
            if !cg.is_empty() {
                by_nsid.insert(nsid, cg);
            }
        }
    }
    for l in links {
        if let Some(cg) = l.peer_nsid.and_then(|n| by_nsid.get(&n)) {
            out.insert(l.ifindex, cg.clone());
        }
    }
    Ok(out)
}

/// Makes the pinned `IFACE_OWNER` map hold exactly `owners`. Returns the
/// entries it set or changed, and the ifindexes it removed.
pub fn sync(pins: &Pins, owners: &[Owner]) -> Result<(Vec<Owner>, Vec<u32>)> {
    let path = pins.map(maps::IFACE_OWNER);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {} (run `cgacct-pin apply`)", path.display()))?;
    let mut map: BpfHashMap<MapData, u32, u64> = Map::HashMap(data).try_into()?;
    let have: BTreeMap<u32, u64> = map.iter().filter_map(Result::ok).collect();
    let mut set = Vec::new();
    for o in owners {
        if have.get(&o.ifindex) != Some(&o.id) {
            map.insert(o.ifindex, o.id, 0)
                .with_context(|| format!("setting the owner of {}", o.interface))?;
            set.push(o.clone());
        }
    }
    let mut removed = Vec::new();
    for ifindex in have.keys() {
        if !owners.iter().any(|o| o.ifindex == *ifindex) {
            map.remove(ifindex)?;
            removed.push(*ifindex);
        }
    }
    next_generation(pins, !set.is_empty() || !removed.is_empty())?;
    Ok((set, removed))
}

/// Moves `IFACE_OWNER_GEN` on when `changed`, or when no generation is set
/// yet (owners are not cached until one is): past the one before and past
/// the clock in nanoseconds, so that a map made anew never repeats a
/// generation some CPU cached an owner under. Roots of builds without the
/// map are left as they are.
fn next_generation(pins: &Pins, changed: bool) -> Result<()> {
    let path = pins.map(maps::IFACE_OWNER_GEN);
    if !path.exists() {
        return Ok(());
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let mut generation: Array<MapData, u64> = Map::Array(data).try_into()?;
    let cur = generation.get(&0, 0)?;
    if cur != 0 && !changed {
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    generation
        .set(0, now.max(cur + 1), 0)
        .with_context(|| format!("setting the generation in {}", path.display()))?;
    Ok(())
}

/// Finds the owners for `ctx`'s host and writes them, reporting each
/// change. Returns whether anything changed.
pub fn converge(layout: &Layout, ctx: &Observed, mut report: impl FnMut(String)) -> Result<bool> {
    let owners = desired(layout, &ctx.interfaces, &ctx.cgroups)?;
    let (set, removed) = sync(&ctx.pins, &owners)?;
    let changed = !set.is_empty() || !removed.is_empty();
    for o in set {
        let how = match o.how {
            How::Declared => "declared",
            How::Discovered => "discovered",
        };
        report(format!("owner of {} is /{} ({how})", o.interface, o.cgroup));
    }
    for ifindex in removed {
        report(format!("owner of ifindex {ifindex} removed"));
    }
    Ok(changed)
}

/// Reads the pinned owners: ifindex -> cgroup id.
pub fn read(pins: &Pins) -> Result<BTreeMap<u32, u64>> {
    let path = pins.map(maps::IFACE_OWNER);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let map: BpfHashMap<MapData, u32, u64> = Map::HashMap(data).try_into()?;
    Ok(map.iter().filter_map(Result::ok).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deepest_common_cgroup() {
        assert_eq!(common_ancestor(["a/b/c", "a/b/d"]), Some("a/b".into()));
        assert_eq!(common_ancestor(["a/b/c"]), Some("a/b/c".into()));
        assert_eq!(common_ancestor(["a/b", "x/y"]), Some(String::new()));
        assert_eq!(common_ancestor(["a/bc", "a/b"]), Some("a".into()));
        assert_eq!(common_ancestor(Vec::<&str>::new()), None);
    }
}
