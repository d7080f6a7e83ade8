//! Replacing a pinned map by one of a new shape, counters copied over or
//! not.
use std::{fs, path::Path};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap, Map, MapData, PerCpuHashMap, PerCpuValues};
use cgacct_common::{maps, ClassKey, Counters, Departed, Removed};

use crate::sys;

/// Pins `new` in place of the map pinned at `pin` (an atomic rename on
/// bpffs), adding the old counters into it first when `keep`.
pub fn replace_map(name: &str, pin: &Path, new: &mut Map, keep: bool) -> Result<()> {
    let next = pin.with_file_name(format!("{}_next", name.to_ascii_lowercase()));
    if next.exists() {
        fs::remove_file(&next)?;
    }
    if keep {
        match name {
            maps::IFACE_STATS => add_counters::<u32>(pin, new)?,
            maps::CGROUP_STATS | maps::TC_CGROUP_STATS | maps::VETH_STATS => add_counters::<u64>(pin, new)?,
            maps::CLASS_STATS => add_counters::<ClassKey>(pin, new)?,
            maps::DEPARTED => add_departed(pin, new)?,
            maps::CLASS_DEPARTED => add_class_departed(pin, new)?,
            maps::REMOVED => copy_removed(pin, new)?,
            _ => {}
        }
    }
    sys::fault::step();
    let data: &MapData = match new {
        Map::PerCpuHashMap(d)
        | Map::LruHashMap(d)
        | Map::HashMap(d)
        | Map::PerCpuArray(d)
        | Map::Array(d)
        | Map::LpmTrie(d) => d,
        _ => bail!("map {name} has an unexpected type"),
    };
    data.pin(&next)
        .with_context(|| format!("pinning {}", next.display()))?;
    sys::fault::step();
    fs::rename(&next, pin).with_context(|| format!("renaming {} to {}", next.display(), pin.display()))?;
    Ok(())
}

/// Adds the folded totals of removed cgroups pinned at `old` into `new`.
fn add_departed(old: &Path, new: &mut Map) -> Result<()> {
    let old = MapData::from_pin(old).with_context(|| format!("opening {}", old.display()))?;
    let old: HashMap<MapData, u64, Departed> = Map::HashMap(old).try_into()?;
    let mut new: HashMap<&mut MapData, u64, Departed> = new.try_into()?;
    for entry in old.iter() {
        let (key, mut d) = entry?;
        if let Ok(cur) = new.get(&key, 0) {
            d.cgroups += cur.cgroups;
            d.totals.add(&cur.totals);
        }
        sys::fault::step();
        new.insert(key, d, 0)?;
    }
    Ok(())
}

/// Adds the per-class totals of removed cgroups pinned at `old` into `new`.
fn add_class_departed(old: &Path, new: &mut Map) -> Result<()> {
    let old = MapData::from_pin(old).with_context(|| format!("opening {}", old.display()))?;
    let old: HashMap<MapData, ClassKey, Counters> = Map::HashMap(old).try_into()?;
    let mut new: HashMap<&mut MapData, ClassKey, Counters> = new.try_into()?;
    for entry in old.iter() {
        let (key, mut c) = entry?;
        if let Ok(cur) = new.get(&key, 0) {
            c.add(&cur);
        }
        sys::fault::step();
        new.insert(key, c, 0)?;
    }
    Ok(())
}

/// Copies the records of removed cgroups pinned at `old` into `new`.
fn copy_removed(old: &Path, new: &mut Map) -> Result<()> {
    let old = MapData::from_pin(old).with_context(|| format!("opening {}", old.display()))?;
    let old: HashMap<MapData, u64, Removed> = Map::LruHashMap(old).try_into()?;
    let mut new: HashMap<&mut MapData, u64, Removed> = new.try_into()?;
    for entry in old.iter() {
        let (key, r) = entry?;
        if new.get(&key, 0).is_err() {
            sys::fault::step();
            new.insert(key, r, 0)?;
        }
    }
    Ok(())
}

/// Adds every counter of the map pinned at `old` into `new`, CPU by CPU
/// (the new programs may already have counted into it).
fn add_counters<K: aya::Pod + Ord>(old: &Path, new: &mut Map) -> Result<()> {
    let old = MapData::from_pin(old).with_context(|| format!("opening {}", old.display()))?;
    let old: PerCpuHashMap<MapData, K, Counters> = Map::PerCpuHashMap(old).try_into()?;
    let mut new: PerCpuHashMap<&mut MapData, K, Counters> = new.try_into()?;
    for entry in old.iter() {
        let (key, values) = entry?;
        let mut sum: Vec<Counters> = values.iter().copied().collect();
        if let Ok(cur) = new.get(&key, 0) {
            for (s, c) in sum.iter_mut().zip(cur.iter()) {
                s.add(c);
            }
        }
        sys::fault::step();
        new.insert(key, PerCpuValues::try_from(sum)?, 0)?;
    }
    Ok(())
}
