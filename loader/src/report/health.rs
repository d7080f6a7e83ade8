//! The TCP health and drop counters read back from the pinned maps, for
//! `status --json`, `top --json` and `export`: per cgroup (its own
//! sockets), the totals of removed cgroups by the ancestor that took them,
//! and drops by the kernel's reason.
use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData, MapType, PerCpuArray, PerCpuHashMap};
use cgacct_common::{
    health::{self, maps},
    Health, HealthAcc,
};
use serde_json::json;

use crate::{bpffs::Pins, observe::health::running_drop_reasons};

/// One read of the health maps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HealthSnap {
    /// Bit `i`: key `health::KEYS[i]` is counted.
    pub keys: u32,
    /// By cgroup id: its own sockets.
    pub own: BTreeMap<u64, Health>,
    /// By cgroup id: what its removed descendants counted.
    pub departed: BTreeMap<u64, Health>,
    /// Drops counted in some cgroup's `drop_packets`, by reason name.
    pub reasons: BTreeMap<String, u64>,
    /// Events no full `health_stats` or `health_departed` could take
    /// (counted in no cgroup).
    pub overflow: Health,
}

impl HealthSnap {
    /// The keys this kernel counts.
    pub fn keys(&self) -> Vec<&'static str> {
        health::KEYS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.keys & (1 << i) != 0)
            .map(|(_, k)| *k)
            .collect()
    }

    /// The counted keys of `h`, as a JSON object.
    pub fn values(&self, h: &Health) -> serde_json::Value {
        let v = h.values();
        let mut out = serde_json::Map::new();
        for (i, k) in health::KEYS.iter().enumerate() {
            if self.keys & (1 << i) != 0 {
                out.insert(k.to_string(), json!(v[i]));
            }
        }
        serde_json::Value::Object(out)
    }
}

fn open(path: &Path) -> Result<MapData> {
    MapData::from_pin(path).with_context(|| format!("opening pinned map {}", path.display()))
}

/// Reads the health maps under `pins`; None where they are not pinned (a
/// root applied by an older build).
pub fn read(pins: &Pins) -> Result<Option<HealthSnap>> {
    let state_pin = pins.map(maps::HEALTH_STATE);
    if !state_pin.exists() {
        return Ok(None);
    }
    let state: Array<MapData, u32> = Map::Array(open(&state_pin)?).try_into()?;
    let mut snap = HealthSnap {
        keys: state.get(&health::state::KEYS, 0)?,
        ..HealthSnap::default()
    };
    let own = open(&pins.map(maps::HEALTH_STATS))?;
    if own.info()?.map_type()? == MapType::Hash {
        // Shared by every CPU (kernels without bpf_map_lookup_percpu_elem).
        let own: HashMap<MapData, u64, Health> = Map::HashMap(own).try_into()?;
        for entry in own.iter() {
            let (id, h) = entry?;
            snap.own.insert(id, h);
        }
    } else {
        let own: PerCpuHashMap<MapData, u64, Health> = Map::PerCpuHashMap(own).try_into()?;
        for entry in own.iter() {
            let (id, per_cpu) = entry?;
            let mut total = Health::default();
            per_cpu.iter().for_each(|h| total.add(h));
            snap.own.insert(id, total);
        }
    }
    let departed: HashMap<MapData, u64, Health> =
        Map::HashMap(open(&pins.map(maps::HEALTH_DEPARTED))?).try_into()?;
    for entry in departed.iter() {
        let (id, h) = entry?;
        snap.departed.insert(id, h);
    }
    if snap.keys & (1 << health::DROP_PACKETS) != 0 {
        snap.reasons = reasons(pins)?;
    }
    // None in a root made by a build before the map: nothing lost there.
    snap.overflow = super::capacity::slot_sum(pins, maps::HEALTH_OVERFLOW, Health::add)?.unwrap_or_default();
    Ok(Some(snap))
}

/// The keys counted (as [`HealthSnap::keys`]) and the final health counts
/// of removed cgroups, by id; None where the root has no such maps.
pub fn removed(pins: &Pins) -> Result<Option<(HealthSnap, BTreeMap<u64, HealthAcc>)>> {
    let (state_pin, pin) = (pins.map(maps::HEALTH_STATE), pins.map(maps::HEALTH_REMOVED));
    if !state_pin.exists() || !pin.exists() {
        return Ok(None);
    }
    let state: Array<MapData, u32> = Map::Array(open(&state_pin)?).try_into()?;
    let snap = HealthSnap {
        keys: state.get(&health::state::KEYS, 0)?,
        ..HealthSnap::default()
    };
    let map: HashMap<MapData, u64, HealthAcc> = Map::LruHashMap(open(&pin)?).try_into()?;
    let mut out = BTreeMap::new();
    for entry in map.iter() {
        let (id, h) = entry?;
        out.insert(id, h);
    }
    Ok(Some((snap, out)))
}

/// The per-reason drops, named from the running kernel's BTF.
fn reasons(pins: &Pins) -> Result<BTreeMap<String, u64>> {
    let names = running_drop_reasons();
    let array: PerCpuArray<MapData, u64> =
        Map::PerCpuArray(open(&pins.map(maps::DROP_REASONS))?).try_into()?;
    let last = health::DROP_REASON_SLOTS - 1;
    let mut out = BTreeMap::new();
    for slot in 0..health::DROP_REASON_SLOTS {
        let n: u64 = array.get(&slot, 0)?.iter().sum();
        if n == 0 {
            continue;
        }
        let name = match names.get(&slot) {
            Some(name) if slot < last => name.clone(),
            _ if slot == last => "subsystem".to_string(),
            _ => format!("reason_{slot}"),
        };
        *out.entry(name).or_default() += n;
    }
    Ok(out)
}

/// `status --json`'s `health` object: keys, cgroups (own counts, named by
/// `name`), removed descendants by ancestor, drops by reason.
pub fn to_json(snap: &HealthSnap, name: impl Fn(u64) -> serde_json::Value) -> serde_json::Value {
    let rows = |m: &BTreeMap<u64, Health>| -> Vec<serde_json::Value> {
        m.iter()
            .map(|(id, h)| {
                let mut v = name(*id);
                v["id"] = json!(id);
                v["counters"] = snap.values(h);
                v
            })
            .collect()
    };
    json!({
        "keys": snap.keys(),
        "cgroups": rows(&snap.own),
        "departed": rows(&snap.departed),
        "drop_reasons": snap.reasons,
        "overflow": snap.values(&snap.overflow),
    })
}

/// The counted keys' growth from `before` to `now` for cgroup `id` (an
/// entry made again counts from zero), as JSON for `top --json`.
pub fn interval(before: Option<&HealthSnap>, now: &HealthSnap, id: u64) -> serde_json::Value {
    let n = now.own.get(&id).copied().unwrap_or_default();
    let b = before.and_then(|b| b.own.get(&id)).copied().unwrap_or_default();
    let d = |n: u64, b: u64| if n >= b { n - b } else { n };
    let grown = Health {
        tcp_active_opens: d(n.tcp_active_opens, b.tcp_active_opens),
        tcp_passive_opens: d(n.tcp_passive_opens, b.tcp_passive_opens),
        tcp_retrans_segs: d(n.tcp_retrans_segs, b.tcp_retrans_segs),
        tcp_timeouts: d(n.tcp_timeouts, b.tcp_timeouts),
        tcp_out_rsts: d(n.tcp_out_rsts, b.tcp_out_rsts),
        drop_packets: d(n.drop_packets, b.drop_packets),
    };
    now.values(&grown)
}

/// Label pairs of one sample.
pub type Labels = Vec<(&'static str, String)>;

/// One Prometheus counter family: name, help, samples.
pub struct Family {
    pub name: String,
    pub help: String,
    pub samples: Vec<(Labels, u64)>,
}

/// Prometheus families of the counted keys (each cgroup's own sockets),
/// and `cgacct_drops_total` by reason. `labels` names a cgroup by id
/// (None: not a cgroup the exporter knows).
pub fn families(snap: &HealthSnap, labels: impl Fn(u64) -> Option<Labels>) -> Vec<Family> {
    let rows: Vec<_> = snap
        .own
        .iter()
        .filter_map(|(id, h)| Some((labels(*id)?, h.values())))
        .collect();
    let mut out = Vec::new();
    for (i, key) in health::KEYS.iter().enumerate() {
        if snap.keys & (1 << i) == 0 {
            continue;
        }
        out.push(Family {
            name: format!("cgacct_{key}_total"),
            help: format!(
                "{} of the cgroup's own sockets, as the kernel's per-netns counter of that name counts it.",
                HELP[i]
            ),
            samples: rows.iter().map(|(l, v)| (l.clone(), v[i])).collect(),
        });
    }
    out.push(Family {
        name: "cgacct_health_overflow_total".to_string(),
        help: "TCP health and drop events counted in no cgroup: health_stats or health_departed was full \
               (raise [maps] cgroups)."
            .to_string(),
        samples: health::KEYS
            .iter()
            .zip(snap.overflow.values())
            .enumerate()
            .filter(|(i, _)| snap.keys & (1 << i) != 0)
            .map(|(_, (k, n))| (vec![("key", k.to_string())], n))
            .collect(),
    });
    if snap.keys & (1 << health::DROP_PACKETS) != 0 {
        out.push(Family {
            name: "cgacct_drops_total".to_string(),
            help: "Packets of cgroups' sockets the kernel dropped, by drop reason (enum skb_drop_reason, \
                   lower case)."
                .to_string(),
            samples: snap
                .reasons
                .iter()
                .map(|(r, n)| (vec![("reason", r.clone())], *n))
                .collect(),
        });
    }
    out
}

const HELP: [&str; 6] = [
    "TCP active opens (Tcp ActiveOpens)",
    "TCP passive opens (Tcp PassiveOpens)",
    "TCP segments retransmitted (Tcp RetransSegs)",
    "TCP retransmission timeouts (TcpExt TCPTimeouts)",
    "TCP resets sent (Tcp OutRsts)",
    "Packets dropped with a reason (skb:kfree_skb)",
];
