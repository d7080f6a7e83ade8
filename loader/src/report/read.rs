//! Reading counters back: from the pinned maps (summing per-CPU slots) and
//! from `net.stat` text.
use std::{collections::BTreeMap, os::fd::AsFd as _, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::{HashMap, Map, MapData, MapType, PerCpuArray, PerCpuHashMap};
use cgacct_common::{maps, ClassKey, Counters, IfaceCounters, IfaceSlot, Slot};

use crate::{
    bpffs::Pins,
    observe::{classes, kernel},
    sys,
};

/// A counter map's value: [`Counters`], or a value that starts with them.
pub trait CounterValue: aya::Pod {
    fn counters(&self) -> Counters;
}

impl CounterValue for Counters {
    fn counters(&self) -> Counters {
        *self
    }
}

impl CounterValue for IfaceCounters {
    fn counters(&self) -> Counters {
        self.counters
    }
}

/// Every key of a pinned counters map, with its CPU slots summed (a
/// per-CPU hash), or its one value (a hash shared by every CPU, on kernels
/// without `bpf_map_lookup_percpu_elem`). Reads the map in batches (a few
/// syscalls for the whole map); kernels without `BPF_MAP_LOOKUP_BATCH`
/// (< 5.6) are read key by key.
pub fn map_totals<K: aya::Pod + Ord>(path: &Path) -> Result<BTreeMap<K, Counters>> {
    totals::<K, Counters>(path)
}

/// [`map_totals`] of `IFACE_STATS`: of this build ([`IfaceCounters`]), or
/// of a build before it ([`Counters`]) until `apply` replaces the map.
pub fn iface_totals(path: &Path) -> Result<BTreeMap<u32, Counters>> {
    let data = MapData::from_pin(path).with_context(|| format!("opening pinned map {}", path.display()))?;
    if data.info()?.value_size() as usize == size_of::<Counters>() {
        totals::<u32, Counters>(path)
    } else {
        totals::<u32, IfaceCounters>(path)
    }
}

/// [`iface_totals`] with the counters of the interfaces' slot array at
/// `slots` added, if the root has it.
pub fn iface_totals_with_slots(path: &Path, slots: &Path) -> Result<BTreeMap<u32, Counters>> {
    let mut totals = iface_totals(path)?;
    if slots.exists() {
        for (ifindex, c) in slot_array::<IfaceSlot>(slots)? {
            totals.entry(ifindex as u32).or_default().add(&c);
        }
    }
    Ok(totals)
}

/// A slot array's entry: the id it is held by (0: free) and its counts.
pub trait SlotValue: aya::Pod {
    fn held(&self) -> (u64, Counters);
}

impl SlotValue for Slot {
    fn held(&self) -> (u64, Counters) {
        (self.id, self.counters)
    }
}

impl SlotValue for IfaceSlot {
    fn held(&self) -> (u64, Counters) {
        (self.ifindex, self.value.counters)
    }
}

fn totals<K: aya::Pod + Ord, V: CounterValue>(path: &Path) -> Result<BTreeMap<K, Counters>> {
    match totals_batch::<K, V>(path)? {
        Some(totals) => Ok(totals),
        None => totals_by_key::<K, V>(path),
    }
}

/// [`map_totals`] with `BPF_MAP_LOOKUP_BATCH`; None when the kernel has
/// no batch reads of this map (EINVAL).
pub fn totals_batch<K: aya::Pod + Ord, V: CounterValue>(
    path: &Path,
) -> Result<Option<BTreeMap<K, Counters>>> {
    let data = MapData::from_pin(path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let info = data.info()?;
    let key_size = size_of::<K>();
    let value_size = size_of::<V>();
    if info.key_size() as usize != key_size || info.value_size() as usize != value_size {
        bail!(
            "map {} has key size {} and value size {}, expected {key_size} and {value_size}",
            path.display(),
            info.key_size(),
            info.value_size()
        );
    }
    let cpus = match info.map_type()? {
        MapType::Hash => 1,
        _ => kernel::nr_cpus()? as usize,
    };
    // Per-CPU values come out as `cpus` values, each padded to 8 bytes
    // (the value types are multiples of 8 bytes: no padding).
    let stride = value_size.next_multiple_of(8) * cpus;
    // A batch never splits a hash bucket: ask for plenty per call.
    let chunk = (info.max_entries() as usize).clamp(1, 4096);
    let mut keys = vec![0u8; chunk * key_size];
    let mut values = vec![0u8; chunk * stride];
    // Gathered, then sorted and built at once: faster than an insert per
    // key (at 100,000 keys a third of the read).
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let batch = sys::bpf::map_lookup_batch(
            data.fd().as_fd(),
            &mut token,
            &mut keys,
            &mut values,
            chunk as u32,
        );
        let (n, more) = match batch {
            Err(e) if e.errno() == Some(libc::EINVAL) && token.is_none() => return Ok(None),
            other => other.with_context(|| format!("reading {}", path.display()))?,
        };
        for i in 0..n as usize {
            // SAFETY: the kernel wrote `n` keys of `key_size` bytes; K is Pod.
            let key: K = unsafe { std::ptr::read_unaligned(keys[i * key_size..].as_ptr().cast()) };
            let mut total = Counters::default();
            for cpu in 0..cpus {
                let off = i * stride + cpu * value_size.next_multiple_of(8);
                // SAFETY: in bounds (stride), V is Pod.
                let v: V = unsafe { std::ptr::read_unaligned(values[off..].as_ptr().cast()) };
                total.add(&v.counters());
            }
            out.push((key, total));
        }
        if !more {
            return Ok(Some(out.into_iter().collect()));
        }
    }
}

/// cgroup id -> counters held in the pinned slot array at `path` (see
/// [`Slot`]): every CPU's slots, each added to the cgroup that holds it.
/// Read in batches where the kernel has them, else index by index.
pub fn slot_totals(path: &Path) -> Result<BTreeMap<u64, Counters>> {
    slot_array::<Slot>(path)
}

/// [`slot_totals`] of a slot array of values `V`.
fn slot_array<V: SlotValue>(path: &Path) -> Result<BTreeMap<u64, Counters>> {
    let data = MapData::from_pin(path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let info = data.info()?;
    let value_size = size_of::<V>();
    if info.key_size() != 4 || info.value_size() as usize != value_size {
        bail!(
            "map {} has key size {} and value size {}, expected 4 and {value_size}",
            path.display(),
            info.key_size(),
            info.value_size()
        );
    }
    let cpus = kernel::nr_cpus()? as usize;
    let entries = info.max_entries() as usize;
    let mut out: BTreeMap<u64, Counters> = BTreeMap::new();
    // A slot without counts adds nothing (and names no cgroup: a slot
    // held by an id of no cgroup never counts).
    let mut add = |s: &V| {
        let (id, c) = s.held();
        if id != 0 && c.any() != 0 {
            out.entry(id).or_default().add(&c);
        }
    };
    let mut keys = vec![0u8; entries * 4];
    let mut values = vec![0u8; entries * value_size * cpus];
    let mut token = None;
    let mut read = 0;
    loop {
        let n = entries - read;
        let batch = sys::bpf::map_lookup_batch(
            data.fd().as_fd(),
            &mut token,
            &mut keys[..n * 4],
            &mut values[..n * value_size * cpus],
            n as u32,
        );
        let (got, more) = match batch {
            Err(e) if e.errno() == Some(libc::EINVAL) && token.is_none() => break,
            other => other.with_context(|| format!("reading {}", path.display()))?,
        };
        for v in values[..got as usize * value_size * cpus].chunks_exact(value_size) {
            // SAFETY: `value_size` bytes the kernel wrote; V is Pod.
            add(&unsafe { std::ptr::read_unaligned(v.as_ptr().cast::<V>()) });
        }
        read += got as usize;
        if !more || read >= entries {
            return Ok(out);
        }
    }
    // No batch reads of arrays (Linux < 5.6): index by index.
    let array: PerCpuArray<MapData, V> = Map::PerCpuArray(data).try_into()?;
    for i in 0..info.max_entries() {
        for s in array.get(&i, 0)?.iter() {
            add(s);
        }
    }
    Ok(out)
}

/// `totals` with the counters of the slot array `slots` added, if the root
/// has that array (roots made before slots existed do not, until `apply`).
fn with_slots(mut totals: BTreeMap<u64, Counters>, slots: &Path) -> Result<BTreeMap<u64, Counters>> {
    if slots.exists() {
        for (id, c) in slot_totals(slots)? {
            totals.entry(id).or_default().add(&c);
        }
    }
    Ok(totals)
}

/// [`map_totals`] key by key (two syscalls per key), as aya iterates.
pub fn map_totals_by_key<K: aya::Pod + Ord>(path: &Path) -> Result<BTreeMap<K, Counters>> {
    totals_by_key::<K, Counters>(path)
}

/// [`map_totals_by_key`] of a map of values `V`.
pub fn totals_by_key<K: aya::Pod + Ord, V: CounterValue>(path: &Path) -> Result<BTreeMap<K, Counters>> {
    let data = MapData::from_pin(path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let mut out = BTreeMap::new();
    if data.info()?.map_type()? == MapType::Hash {
        let map: HashMap<MapData, K, V> = Map::HashMap(data).try_into()?;
        for entry in map.iter() {
            let (key, v) = entry?;
            out.insert(key, v.counters());
        }
        return Ok(out);
    }
    let map: PerCpuHashMap<MapData, K, V> = Map::PerCpuHashMap(data).try_into()?;
    for entry in map.iter() {
        let (key, values) = entry?;
        let mut total = Counters::default();
        for v in values.iter() {
            total.add(&v.counters());
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
    /// cgroup id -> class name -> counts of the cgroup_skb hooks by class
    /// of the peer address (the cgroup's own sockets); empty when classes
    /// are off.
    pub classes: BTreeMap<u64, BTreeMap<String, Counters>>,
}

/// Reads the root's counter maps, the two cgroup maps on threads of their
/// own beside the rest: each map is a walk of the kernel's hash table and
/// a copy-out of every CPU's slots, independent of the others (at 100,000
/// cgroups about half the dump each).
pub fn snapshot(pins: &Pins) -> Result<Snapshot> {
    let panicked = |_| anyhow!("the thread reading a counter map panicked");
    std::thread::scope(|s| {
        let cgroups = s.spawn(|| {
            with_slots(
                map_totals(&pins.map(maps::CGROUP_STATS))?,
                &pins.map(maps::CGROUP_SLOTS),
            )
        });
        let tc_cgroups = s.spawn(|| {
            with_slots(
                map_totals(&pins.map(maps::TC_CGROUP_STATS))?,
                &pins.map(maps::TC_CGROUP_SLOTS),
            )
        });
        let interfaces = iface_totals_with_slots(&pins.map(maps::IFACE_STATS), &pins.map(maps::IFACE_SLOTS))?;
        // Roots made before owners existed have no such map yet.
        let veth = if pins.map(maps::VETH_STATS).exists() {
            with_slots(
                map_totals(&pins.map(maps::VETH_STATS))?,
                &pins.map(maps::VETH_SLOTS),
            )?
        } else {
            BTreeMap::new()
        };
        let classes = class_totals(pins)?;
        Ok(Snapshot {
            cgroups: cgroups.join().map_err(panicked)??,
            tc_cgroups: tc_cgroups.join().map_err(panicked)??,
            interfaces,
            veth,
            classes,
        })
    })
}

/// cgroup id -> class name -> own counts, for the classes in use (the
/// name table's); empty for a root without class maps.
pub fn class_totals(pins: &Pins) -> Result<BTreeMap<u64, BTreeMap<String, Counters>>> {
    let mut out: BTreeMap<u64, BTreeMap<String, Counters>> = BTreeMap::new();
    if !pins.map(maps::CLASS_STATS).exists() || !pins.map(maps::CLASS_NAMES).exists() {
        return Ok(out);
    }
    let names = classes::names(pins)?;
    for (k, c) in map_totals::<ClassKey>(&pins.map(maps::CLASS_STATS))? {
        if let Some(name) = names.get(&k.class) {
            out.entry(k.cgroup_id).or_default().insert(name.clone(), c);
        }
    }
    Ok(out)
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
