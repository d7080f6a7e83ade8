//! Pruning the records of removed cgroups older than a retention time
//! (`cgacct-pin watch --keep-removed`).
use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use cgacct_common::{maps, Removed};

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

/// Removes records older than `keep`; returns how many.
pub fn prune(pins: &Pins, keep: Duration) -> Result<usize> {
    let mut map = open(pins)?;
    let boot = clock_ns(libc::CLOCK_BOOTTIME);
    let old: Vec<u64> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, r)| boot.saturating_sub(r.removed_at_ns) > keep.as_nanos() as u64)
        .map(|(id, _)| id)
        .collect();
    for id in &old {
        // Another pruner may have taken it first.
        let _ = map.remove(id);
    }
    Ok(old.len())
}
