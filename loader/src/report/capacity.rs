//! How full the fixed-size maps are, and what the programs could not count
//! because a map was full: the `OVERFLOW` map's buckets (also printed by
//! the root cgroup's `net.stat`). `status` shows both, `status` and `apply`
//! warn about a map more than 80% full or with overflow, naming the
//! `[maps]` key that sizes it, and the exporter serves them.
use std::os::fd::AsFd as _;

use anyhow::{Context as _, Result};
use aya::maps::{MapData, PerCpuArray};
use cgacct_common::{health::maps as health_maps, maps, overflow, Counters, Health};
use serde::Serialize;
use serde_json::json;

use crate::{apply::prune, bpffs::Pins, object, sys};

/// Overflow buckets by index: (`net.stat` name, map, counter family).
pub const BUCKETS: [(&str, &str, &str); overflow::BUCKETS as usize] = [
    ("cgroup_stats", maps::CGROUP_STATS, "socket"),
    ("tc_cgroup_stats", maps::TC_CGROUP_STATS, "tc"),
    ("iface_stats", maps::IFACE_STATS, "iface"),
    ("veth_stats", maps::VETH_STATS, "veth"),
    ("departed", maps::DEPARTED, "socket"),
    ("departed_tc", maps::DEPARTED, "tc"),
    ("departed_veth", maps::DEPARTED, "veth"),
];

/// Maps whose entries a full map displaces by design (LRU records and
/// scratch space): listed, never warned about.
const DISPLACING: [&str; 4] = [
    maps::ITER_SCRATCH,
    maps::REMOVED,
    health_maps::HEALTH_REMOVED,
    maps::CLASS_SCRATCH,
];

/// Arrays (always "full"), overflow buckets and socket storage (no keys to
/// count): not listed.
const UNLISTED: [&str; 11] = [
    maps::IFACE_OWNER_GEN,
    maps::REMOVED_SCRATCH,
    maps::SUM_SCRATCH,
    maps::OVERFLOW,
    maps::CLASS_NAMES,
    maps::CLASS_CONFIG,
    maps::CLASS_OVERFLOW,
    health_maps::HEALTH_OVERFLOW,
    health_maps::HEALTH_STATE,
    health_maps::DROP_REASONS,
    health_maps::RETRANS_SEEN,
];

/// One overflow bucket's totals.
#[derive(Clone, Debug, Serialize)]
pub struct Bucket {
    /// As in `net.stat`'s `overflow_<bucket>_packets`.
    pub bucket: &'static str,
    /// The map that was full, as pinned (lower case).
    pub map: String,
    pub family: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// How full one map is.
#[derive(Clone, Debug, Serialize)]
pub struct MapUse {
    /// As pinned under `maps/` (lower case).
    pub name: String,
    /// Entries in use (for `dying`: cgroups the kernel still holds).
    pub entries: u32,
    pub max_entries: u32,
    pub full_percent: u32,
    /// The `[maps]` key that sizes it.
    pub layout_key: Option<&'static str>,
    /// What it could not take, all its buckets summed; None for maps that
    /// have no bucket.
    pub overflow: Option<Lost>,
    /// Whether a full map loses counts (else it displaces old entries).
    #[serde(skip)]
    pub warns: bool,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Lost {
    pub packets: u64,
    pub bytes: u64,
    /// TCP health and drop events (`health_stats`): each key's events.
    #[serde(skip_serializing_if = "is_zero")]
    pub events: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Default)]
pub struct Capacity {
    pub maps: Vec<MapUse>,
    pub overflow: Vec<Bucket>,
}

/// Reads every pinned map's fill and the overflow buckets. Maps a root
/// made by an older build lacks are left out.
pub fn read(pins: &Pins) -> Result<Capacity> {
    let mut cap = Capacity::default();
    let buckets = overflow_totals(pins)?;
    if let Some(totals) = &buckets {
        for ((bucket, map, family), c) in BUCKETS.iter().zip(totals) {
            cap.overflow.push(Bucket {
                bucket,
                map: map.to_ascii_lowercase(),
                family,
                packets: c.rx_packets + c.tx_packets,
                bytes: c.rx_bytes + c.tx_bytes,
            });
        }
    }
    for name in object::all_maps() {
        let pin = pins.map(name);
        if UNLISTED.contains(&name) || !pin.exists() {
            continue;
        }
        let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
        let info = data.info()?;
        let max = info.max_entries();
        let entries = if name == maps::DYING {
            dying_entries(pins)?
        } else {
            sys::bpf::map_key_count(data.fd().as_fd(), info.key_size() as usize, max)
                .with_context(|| format!("counting the entries of {}", pin.display()))?
        };
        let lower = name.to_ascii_lowercase();
        let class_lost = match name {
            maps::CLASS_STATS => class_overflow(pins)?,
            health_maps::HEALTH_STATS => health_overflow(pins)?,
            _ => None,
        };
        let lost = cap
            .overflow
            .iter()
            .filter(|b| b.map == lower)
            .fold(class_lost, |l, b| {
                let l: Lost = l.unwrap_or_default();
                Some(Lost {
                    packets: l.packets + b.packets,
                    bytes: l.bytes + b.bytes,
                    events: l.events,
                })
            });
        cap.maps.push(MapUse {
            name: lower,
            entries,
            max_entries: max,
            full_percent: (u64::from(entries) * 100 / u64::from(max.max(1))) as u32,
            layout_key: object::layout_key(name),
            overflow: lost,
            warns: !DISPLACING.contains(&name),
        });
    }
    Ok(cap)
}

/// The overflow buckets, CPU slots summed; None for a root without them.
fn overflow_totals(pins: &Pins) -> Result<Option<Vec<Counters>>> {
    let pin = pins.map(maps::OVERFLOW);
    if !pin.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let array: PerCpuArray<MapData, Counters> = aya::maps::Map::PerCpuArray(data).try_into()?;
    let mut out = Vec::new();
    for i in 0..overflow::BUCKETS {
        let slots = array
            .get(&i, 0)
            .with_context(|| format!("reading {} bucket {i}", pin.display()))?;
        let mut c = Counters::default();
        slots.iter().for_each(|s| c.add(s));
        out.push(c);
    }
    Ok(Some(out))
}

/// Slot 0 of the per-CPU array pinned as `name`, every CPU's value added
/// with `add`; None for a root without it.
pub fn slot_sum<V: aya::Pod + Default>(pins: &Pins, name: &str, add: fn(&mut V, &V)) -> Result<Option<V>> {
    let pin = pins.map(name);
    if !pin.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let array: PerCpuArray<MapData, V> = aya::maps::Map::PerCpuArray(data).try_into()?;
    let mut sum = V::default();
    array
        .get(&0, 0)
        .with_context(|| format!("reading {}", pin.display()))?
        .iter()
        .for_each(|v| add(&mut sum, v));
    Ok(Some(sum))
}

/// What no full `CLASS_STATS` or `CLASS_DEPARTED` could take (both
/// directions); None when nothing was lost or the root has no such map.
fn class_overflow(pins: &Pins) -> Result<Option<Lost>> {
    let c = slot_sum(pins, maps::CLASS_OVERFLOW, Counters::add)?.unwrap_or_default();
    let lost = Lost {
        packets: c.rx_packets + c.tx_packets,
        bytes: c.rx_bytes + c.tx_bytes,
        events: 0,
    };
    Ok((lost.packets > 0).then_some(lost))
}

/// The TCP health and drop events no full `HEALTH_STATS` or
/// `HEALTH_DEPARTED` could take; None when none were lost or the root has
/// no such map.
fn health_overflow(pins: &Pins) -> Result<Option<Lost>> {
    let h = slot_sum(pins, health_maps::HEALTH_OVERFLOW, Health::add)?.unwrap_or_default();
    let events = h.values().iter().sum();
    Ok((events > 0).then_some(Lost {
        events,
        ..Lost::default()
    }))
}

/// Removed cgroups the kernel still holds (records of released ones with
/// late traffic do not count: they are displaced first).
fn dying_entries(pins: &Pins) -> Result<u32> {
    let Some(map) = prune::open_dying(pins)? else {
        return Ok(0);
    };
    let n = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, d)| d.released_at_ns == 0)
        .count();
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

impl Capacity {
    /// One line per map more than 80% full or with overflow.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.maps.iter().filter(|m| m.warns) {
            let lost = m.overflow.unwrap_or_default();
            let full = u64::from(m.entries) * 5 > u64::from(m.max_entries) * 4;
            if !full && lost.packets == 0 && lost.events == 0 {
                continue;
            }
            let what = if full {
                format!(
                    "map {} is {}% full ({} of {} entries)",
                    m.name, m.full_percent, m.entries, m.max_entries
                )
            } else {
                format!("map {} was full", m.name)
            };
            let lost = match (lost.packets, lost.events) {
                (0, 0) => String::new(),
                (0, e) => format!(
                    "; {e} TCP health and drop events found no entry and are counted only in \
                     health_overflow"
                ),
                (p, _) => format!(
                    "; {p} packets ({} bytes) found no entry and are counted only in its overflow \
                     bucket",
                    lost.bytes
                ),
            };
            let fix = match m.layout_key {
                Some(key) => format!(
                    ": raise {key} in the layout and run `apply --migrate-maps` (the counters are \
                     copied)"
                ),
                None => String::new(),
            };
            out.push(format!("{what}{lost}{fix}"));
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({"maps": self.maps, "overflow": self.overflow, "warnings": self.warnings()})
    }

    /// `status` text: one line per map and per non-empty bucket.
    pub fn print(&self) {
        println!();
        for m in &self.maps {
            println!(
                "map {} {}/{} entries ({}%){}",
                m.name,
                m.entries,
                m.max_entries,
                m.full_percent,
                m.layout_key
                    .map(|k| format!(", sized by {k}"))
                    .unwrap_or_default()
            );
        }
        for m in &self.maps {
            if let Some(Lost { events: e @ 1.., .. }) = m.overflow {
                println!(
                    "overflow {} {e} events (TCP health and drops counted in no cgroup: the map was full)",
                    m.name
                );
            }
        }
        for b in &self.overflow {
            println!(
                "overflow {} {} packets {} bytes{}",
                b.bucket,
                b.packets,
                b.bytes,
                if b.packets == 0 {
                    ""
                } else {
                    " (counted in no cgroup: the map was full)"
                }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_programs_names() {
        // The iterator's key table holds every key at a fixed stride, and
        // the iterator finds bucket b's keys at 2b and 2b + 1 places after
        // the first: each bucket's keys must sit there, under its name.
        let at = |key: &str| {
            let key = format!("{key} ");
            object::OBJECT
                .windows(key.len())
                .position(|w| w == key.as_bytes())
                .unwrap_or_else(|| panic!("the BPF object has no key {key:?}"))
        };
        let first = at("overflow_cgroup_stats_packets");
        let stride = at("overflow_cgroup_stats_bytes") - first;
        for (i, (bucket, _, _)) in BUCKETS.iter().enumerate() {
            assert_eq!(overflow::NAMES[i], *bucket);
            for (u, unit) in ["packets", "bytes"].into_iter().enumerate() {
                let key = format!("overflow_{bucket}_{unit}");
                assert_eq!(at(&key), first + (2 * i + u) * stride, "{key} is out of place");
            }
        }
    }

    #[test]
    fn full_maps_and_overflow_warn_with_the_key_to_raise() {
        let m = |name: &str, entries, max, packets, warns| MapUse {
            name: name.to_string(),
            entries,
            max_entries: max,
            full_percent: entries * 100 / max,
            layout_key: Some("[maps] cgroups"),
            overflow: Some(Lost {
                packets,
                bytes: packets * 100,
                events: 0,
            }),
            warns,
        };
        let mut health = m("health_stats", 3, 16, 0, true);
        health.overflow = Some(Lost {
            events: 7,
            ..Lost::default()
        });
        let cap = Capacity {
            maps: vec![
                m("cgroup_stats", 16, 16, 5, true),
                m("tc_cgroup_stats", 12, 16, 0, true),
                m("veth_stats", 13, 16, 0, true),
                m("departed", 2, 16, 3, true),
                m("removed", 16, 16, 0, false),
                health,
            ],
            overflow: Vec::new(),
        };
        let w = cap.warnings();
        assert_eq!(w.len(), 4, "{w:#?}");
        assert!(
            w[0].starts_with("map cgroup_stats is 100% full (16 of 16 entries); 5 packets"),
            "{}",
            w[0]
        );
        assert!(w[0].contains("raise [maps] cgroups"), "{}", w[0]);
        assert!(w[1].starts_with("map veth_stats is 81% full"), "{}", w[1]);
        assert!(w[2].starts_with("map departed was full; 3 packets"), "{}", w[2]);
        assert!(
            w[3].starts_with("map health_stats was full; 7 TCP health and drop events"),
            "{}",
            w[3]
        );
    }
}
