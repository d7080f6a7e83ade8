//! Reading counters back: from the pinned maps (summing per-CPU slots) and
//! from `net.stat` text.
use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, PerCpuHashMap};
use cgacct_common::{maps, Counters};

use crate::names::Pins;

/// Every key of a pinned per-CPU counters map, with its CPU slots summed.
pub fn map_totals<K: aya::Pod + Ord>(path: &Path) -> Result<BTreeMap<K, Counters>> {
    let data = MapData::from_pin(path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let map: PerCpuHashMap<MapData, K, Counters> = Map::PerCpuHashMap(data).try_into()?;
    let mut out = BTreeMap::new();
    for entry in map.iter() {
        let (key, values) = entry?;
        let mut total = Counters::default();
        for v in values.iter() {
            total.add(v);
        }
        out.insert(key, total);
    }
    Ok(out)
}

/// The counters of one root, read from its maps.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// cgroup id -> counters of the cgroup_skb hooks.
    pub cgroups: BTreeMap<u64, Counters>,
    /// socket cgroup id (0: none) -> counters of the TC hooks.
    pub tc_cgroups: BTreeMap<u64, Counters>,
    /// ifindex -> counters of the TC hooks.
    pub interfaces: BTreeMap<u32, Counters>,
    /// owner cgroup id -> frames through its interfaces (rx towards it).
    pub veth: BTreeMap<u64, Counters>,
}

pub fn snapshot(pins: &Pins) -> Result<Snapshot> {
    Ok(Snapshot {
        cgroups: map_totals(&pins.map(maps::CGROUP_STATS))?,
        tc_cgroups: map_totals(&pins.map(maps::TC_CGROUP_STATS))?,
        interfaces: map_totals(&pins.map(maps::IFACE_STATS))?,
        // Roots made before owners existed have no such map yet.
        veth: if pins.map(maps::VETH_STATS).exists() {
            map_totals(&pins.map(maps::VETH_STATS))?
        } else {
            BTreeMap::new()
        },
    })
}

/// Parses flat keyed `key value` text such as `net.stat`.
pub fn parse_stat(text: &str) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let (k, v) = line
            .split_once(' ')
            .with_context(|| format!("line {}: no space in {line:?}", n + 1))?;
        out.insert(
            k.to_string(),
            v.parse()
                .with_context(|| format!("line {}: {v:?} is not a number", n + 1))?,
        );
    }
    Ok(out)
}

/// Reads and parses a `net.stat` file.
pub fn read_stat(path: &Path) -> Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_stat(&text)
}
