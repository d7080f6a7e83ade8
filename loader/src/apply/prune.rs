//! Pruning the records of removed cgroups older than a retention time
//! (`cgacct-pin watch --keep-removed`): their final totals, and the late
//! traffic of those the kernel has released.
use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use cgacct_common::{health::maps as health_maps, maps, Dying, HealthAcc, Removed};

use crate::{bpffs::Pins, sys::os::clock_ns};

/// The pinned `REMOVED` map.
pub fn open(pins: &Pins) -> Result<BpfHashMap<MapData, u64, Removed>> {
    let path = pins.map(maps::REMOVED);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (run `cgacct-pin apply` with this version)",
            path.display()
        )
    })?;
    Ok(Map::LruHashMap(data).try_into()?)
}

/// The pinned `DYING` map; None in a root made before it existed (the
/// next apply makes it).
pub fn open_dying(pins: &Pins) -> Result<Option<BpfHashMap<MapData, u64, Dying>>> {
    let path = pins.map(maps::DYING);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(Some(Map::LruHashMap(data).try_into()?))
}

/// Removes records older than `keep`; returns how many. Entries of
/// removed cgroups the kernel still holds are never pruned: their sockets'
/// traffic is routed through them.
pub fn prune(pins: &Pins, keep: Duration) -> Result<usize> {
    let mut map = open(pins)?;
    let boot = clock_ns(libc::CLOCK_BOOTTIME);
    let old = |at: u64| at != 0 && boot.saturating_sub(at) > keep.as_nanos() as u64;
    let gone: Vec<u64> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, r)| old(r.removed_at_ns))
        .map(|(id, _)| id)
        .collect();
    for id in &gone {
        // Another pruner may have taken it first.
        let _ = map.remove(id);
    }
    let health = pins.map(health_maps::HEALTH_REMOVED);
    if !gone.is_empty() && health.exists() {
        let data =
            MapData::from_pin(&health).with_context(|| format!("opening pinned map {}", health.display()))?;
        let mut health: BpfHashMap<MapData, u64, HealthAcc> = Map::LruHashMap(data).try_into()?;
        for id in &gone {
            // Absent where the cgroup's sockets counted no health event.
            let _ = health.remove(id);
        }
    }
    if let Some(mut dying) = open_dying(pins)? {
        let released: Vec<u64> = dying
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, d)| old(d.released_at_ns))
            .map(|(id, _)| id)
            .collect();
        for id in &released {
            let _ = dying.remove(id);
        }
    }
    Ok(gone.len())
}
