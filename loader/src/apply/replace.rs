//! Replacing a pinned map by one of a new shape, counters copied over or
//! not.
use std::{
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap, Map, MapData, MapType, PerCpuArray, PerCpuHashMap, PerCpuValues};
use cgacct_common::{
    health::maps as health_maps, maps, ClassKey, Counters, Departed, Health, HealthAcc, IfaceCounters,
    IfaceSlot, Removed, Slot,
};

use crate::sys;

/// Where the map replacing `name` (pinned at `pin`) is pinned before the
/// rename.
pub fn next_pin(name: &str, pin: &Path) -> PathBuf {
    pin.with_file_name(format!("{}_next", name.to_ascii_lowercase()))
}

/// Pins `new` in place of the map pinned at `pin` (an atomic rename on
/// bpffs), adding the old counters into it first when `keep`.
pub fn replace_map(name: &str, pin: &Path, new: &mut Map, keep: bool) -> Result<()> {
    let next = next_pin(name, pin);
    if next.exists() {
        fs::remove_file(&next)?;
    }
    if keep {
        match name {
            maps::IFACE_STATS => add_iface_counters(pin, new)?,
            maps::CGROUP_STATS | maps::TC_CGROUP_STATS | maps::VETH_STATS => add_counters::<u64>(pin, new)?,
            maps::CLASS_STATS => add_counters::<ClassKey>(pin, new)?,
            maps::DEPARTED => add_departed(pin, new)?,
            maps::CLASS_DEPARTED => add_class_departed(pin, new)?,
            maps::REMOVED => copy_lru::<Removed>(pin, new)?,
            health_maps::HEALTH_REMOVED => copy_lru::<HealthAcc>(pin, new)?,
            health_maps::HEALTH_STATS | health_maps::HEALTH_DEPARTED => add_health(pin, new)?,
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
    if !keep {
        if let Some(slots) = slots_of(name) {
            let slots = pin.with_file_name(slots.to_ascii_lowercase());
            match name {
                maps::IFACE_STATS => clear_slots::<IfaceSlot>(&slots)?,
                _ => clear_slots::<Slot>(&slots)?,
            }
        }
    }
    Ok(())
}

/// The slot array in front of the counter map `name`, if it has one.
fn slots_of(name: &str) -> Option<&'static str> {
    match name {
        maps::CGROUP_STATS => Some(maps::CGROUP_SLOTS),
        maps::TC_CGROUP_STATS => Some(maps::TC_CGROUP_SLOTS),
        maps::VETH_STATS => Some(maps::VETH_SLOTS),
        maps::IFACE_STATS => Some(maps::IFACE_SLOTS),
        _ => None,
    }
}

/// Frees every CPU's every slot of the slot array pinned at `pin` (if the
/// root has it): a map reset without its counters drops theirs too.
fn clear_slots<V: aya::Pod + Default>(pin: &Path) -> Result<()> {
    if !pin.exists() {
        return Ok(());
    }
    let data = MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    let mut slots: PerCpuArray<MapData, V> = Map::PerCpuArray(data).try_into()?;
    let cpus = crate::observe::kernel::nr_cpus()? as usize;
    for i in 0..slots.len() {
        let free = PerCpuValues::try_from((0..cpus).map(|_| V::default()).collect::<Vec<_>>())?;
        slots
            .set(i, free, 0)
            .with_context(|| format!("freeing slot {i} of {}", pin.display()))?;
    }
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

/// Copies the records of removed cgroups pinned at `old` (`REMOVED`,
/// `HEALTH_REMOVED`) into `new`.
fn copy_lru<V: aya::Pod>(old: &Path, new: &mut Map) -> Result<()> {
    let old = MapData::from_pin(old).with_context(|| format!("opening {}", old.display()))?;
    let old: HashMap<MapData, u64, V> = Map::LruHashMap(old).try_into()?;
    let mut new: HashMap<&mut MapData, u64, V> = new.try_into()?;
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
/// (the new programs may already have counted into it); into its one value
/// when `new` is shared by every CPU (a plain hash, see `object::Kernel`).
fn add_counters<K: aya::Pod + Ord>(old: &Path, new: &mut Map) -> Result<()> {
    let old = old_counters::<K>(old)?;
    let data = match new {
        Map::PerCpuHashMap(d) | Map::HashMap(d) => d,
        _ => bail!("a counter map has an unexpected type"),
    };
    if data.info()?.map_type()? == MapType::Hash {
        let fd = data.fd().as_fd().try_clone_to_owned()?;
        let mut new: HashMap<MapData, K, Counters> = Map::HashMap(MapData::from_fd(fd)?).try_into()?;
        for (key, values) in old {
            let mut sum = Counters::default();
            values.iter().for_each(|v| sum.add(v));
            if let Ok(cur) = new.get(&key, 0) {
                sum.add(&cur);
            }
            sys::fault::step();
            new.insert(key, sum, 0)?;
        }
        return Ok(());
    }
    let mut new: PerCpuHashMap<&mut MapData, K, Counters> = new.try_into()?;
    for (key, mut sum) in old {
        if let Ok(cur) = new.get(&key, 0) {
            if sum.len() != cur.len() {
                // From a shared map: all of it on the first CPU.
                let total = sum.iter().fold(Counters::default(), |mut t, v| {
                    t.add(v);
                    t
                });
                sum = vec![Counters::default(); cur.len()];
                sum[0] = total;
            }
            for (s, c) in sum.iter_mut().zip(cur.iter()) {
                s.add(c);
            }
        }
        sys::fault::step();
        new.insert(key, PerCpuValues::try_from(sum)?, 0)?;
    }
    Ok(())
}

/// Adds every counter of the `IFACE_STATS` pinned at `old` into `new`,
/// CPU by CPU: from this build's values or an earlier build's plain
/// [`Counters`]. Cached owners are left behind: each CPU looks its
/// interface's owner up again.
fn add_iface_counters(old: &Path, new: &mut Map) -> Result<()> {
    let data = MapData::from_pin(old).with_context(|| format!("opening {}", old.display()))?;
    let mut entries: Vec<(u32, Vec<Counters>)> = Vec::new();
    if data.info()?.value_size() as usize == size_of::<Counters>() {
        let map: PerCpuHashMap<MapData, u32, Counters> = Map::PerCpuHashMap(data).try_into()?;
        for entry in map.iter() {
            let (key, values) = entry?;
            entries.push((key, values.iter().copied().collect()));
        }
    } else {
        let map: PerCpuHashMap<MapData, u32, IfaceCounters> = Map::PerCpuHashMap(data).try_into()?;
        for entry in map.iter() {
            let (key, values) = entry?;
            entries.push((key, values.iter().map(|v| v.counters).collect()));
        }
    }
    let mut new: PerCpuHashMap<&mut MapData, u32, IfaceCounters> = new.try_into()?;
    for (key, old_values) in entries {
        let mut values: Vec<IfaceCounters> = old_values
            .into_iter()
            .map(|counters| IfaceCounters {
                counters,
                ..IfaceCounters::default()
            })
            .collect();
        if let Ok(cur) = new.get(&key, 0) {
            for (v, c) in values.iter_mut().zip(cur.iter()) {
                v.counters.add(&c.counters);
            }
        }
        sys::fault::step();
        new.insert(key, PerCpuValues::try_from(values)?, 0)?;
    }
    Ok(())
}

/// Every entry of the counter map pinned at `old`: its CPUs' values, or
/// its one value when it is shared.
fn old_counters<K: aya::Pod + Ord>(old: &Path) -> Result<Vec<(K, Vec<Counters>)>> {
    let data = MapData::from_pin(old).with_context(|| format!("opening {}", old.display()))?;
    let mut out = Vec::new();
    if data.info()?.map_type()? == MapType::Hash {
        let map: HashMap<MapData, K, Counters> = Map::HashMap(data).try_into()?;
        for entry in map.iter() {
            let (key, v) = entry?;
            out.push((key, vec![v]));
        }
    } else {
        let map: PerCpuHashMap<MapData, K, Counters> = Map::PerCpuHashMap(data).try_into()?;
        for entry in map.iter() {
            let (key, values) = entry?;
            out.push((key, values.iter().copied().collect()));
        }
    }
    Ok(out)
}

/// Adds every health count of the map pinned at `old` into `new`, of the
/// same type (--migrate-maps refuses a change of type): by CPU
/// (`HEALTH_STATS` per-CPU) or the one value (`HEALTH_DEPARTED`, and
/// `HEALTH_STATS` where shared).
fn add_health(old: &Path, new: &mut Map) -> Result<()> {
    let data = MapData::from_pin(old).with_context(|| format!("opening {}", old.display()))?;
    let new_data = match new {
        Map::PerCpuHashMap(d) | Map::HashMap(d) => d,
        _ => bail!("a health map has an unexpected type"),
    };
    if new_data.info()?.map_type()? == MapType::Hash {
        // A shared map made by the loader: the object calls it per-CPU.
        let fd = new_data.fd().as_fd().try_clone_to_owned()?;
        let mut new: HashMap<MapData, u64, Health> = Map::HashMap(MapData::from_fd(fd)?).try_into()?;
        let old: HashMap<MapData, u64, Health> = Map::HashMap(data).try_into()?;
        let entries: Vec<(u64, Health)> = old.iter().collect::<Result<_, _>>()?;
        for (key, mut sum) in entries {
            if let Ok(cur) = new.get(&key, 0) {
                sum.add(&cur);
            }
            sys::fault::step();
            new.insert(key, sum, 0)?;
        }
        return Ok(());
    }
    let old: PerCpuHashMap<MapData, u64, Health> = Map::PerCpuHashMap(data).try_into()?;
    let mut new: PerCpuHashMap<&mut MapData, u64, Health> = new.try_into()?;
    for entry in old.iter() {
        let (key, values) = entry?;
        let mut sum: Vec<Health> = values.iter().copied().collect();
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
