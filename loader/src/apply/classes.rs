//! Writing the destination class tables (`CLASS_NAMES`, `CLASS_CONFIG`,
//! `CLASS_PREFIXES_V4`/`_V6`) from one table to another, in an order that
//! never counts a packet under a wrong name:
//!
//! 1. indices given to a name for the first time lose whatever sits under
//!    them (counts of a class removed by an earlier apply, or of a packet
//!    that was counted while that class was being removed);
//! 2. names are written, then the prefixes, then the programs look at the
//!    new indices;
//! 3. prefixes no class wants are deleted, then the names of removed
//!    classes, then their counts (dropped: a removed class's counts are
//!    gone, and for the traffic it counted the classes no longer sum to
//!    `rx_*`/`tx_*`).
//!
//! Classes turned off stop counting first. Counts of every class that
//! stays (same name) are kept, whatever its prefixes become.
use std::collections::BTreeSet;

use anyhow::{Context as _, Result};
use aya::maps::{lpm_trie::Key, lpm_trie::LpmTrie, Array, HashMap, Map, MapData, MapType, PerCpuHashMap};
use cgacct_common::{classes, maps, ClassConfig, ClassKey, ClassName, Counters};

use crate::{
    bpffs::Pins,
    spec::classes::{ClassTable, Prefix},
    sys,
};

fn open(pins: &Pins, name: &str) -> Result<MapData> {
    let path = pins.map(name);
    MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
}

fn set_config(pins: &Pins, indices: u32) -> Result<()> {
    let mut a: Array<MapData, ClassConfig> = Map::Array(open(pins, maps::CLASS_CONFIG)?).try_into()?;
    sys::fault::step();
    a.set(0, ClassConfig { indices, pad: 0 }, 0)
        .context("writing CLASS_CONFIG")?;
    Ok(())
}

fn set_name(pins: &Pins, index: u32, name: &str) -> Result<()> {
    let mut a: Array<MapData, ClassName> = Map::Array(open(pins, maps::CLASS_NAMES)?).try_into()?;
    let mut n = ClassName {
        name: [0; classes::NAME_LEN],
    };
    let bytes = name.as_bytes();
    let len = bytes.len().min(classes::NAME_LEN - 1);
    n.name[..len].copy_from_slice(&bytes[..len]);
    sys::fault::step();
    a.set(index, n, 0)
        .with_context(|| format!("writing class name {index}"))?;
    Ok(())
}

/// Deletes every count (own and of removed descendants) under `indices`.
/// A key gone already was removed by the removal program meanwhile.
pub fn clear(pins: &Pins, indices: &BTreeSet<u32>) -> Result<()> {
    if indices.is_empty() {
        return Ok(());
    }
    let stats = open(pins, maps::CLASS_STATS)?;
    if stats.info()?.map_type()? == MapType::Hash {
        // Shared by every CPU (kernels without bpf_map_lookup_percpu_elem).
        let mut stats: HashMap<MapData, ClassKey, Counters> = Map::HashMap(stats).try_into()?;
        for k in of_classes(stats.keys(), indices)? {
            sys::fault::step();
            let _ = stats.remove(&k);
        }
    } else {
        let mut stats: PerCpuHashMap<MapData, ClassKey, Counters> = Map::PerCpuHashMap(stats).try_into()?;
        for k in of_classes(stats.keys(), indices)? {
            sys::fault::step();
            let _ = stats.remove(&k);
        }
    }
    let mut gone: HashMap<MapData, ClassKey, Counters> =
        Map::HashMap(open(pins, maps::CLASS_DEPARTED)?).try_into()?;
    for k in of_classes(gone.keys(), indices)? {
        sys::fault::step();
        let _ = gone.remove(&k);
    }
    Ok(())
}

/// The keys of a class map whose class is one of `indices`.
fn of_classes(
    keys: impl Iterator<Item = Result<ClassKey, aya::maps::MapError>>,
    indices: &BTreeSet<u32>,
) -> Result<Vec<ClassKey>> {
    let mut out = Vec::new();
    for k in keys {
        let k = k.context("listing the keys of a class map")?;
        if indices.contains(&k.class) {
            out.push(k);
        }
    }
    Ok(out)
}

/// Inserts or deletes the trie entry of `p`.
fn trie_entry(pins: &Pins, p: &Prefix, class: Option<u32>) -> Result<()> {
    let len = u32::from(p.len);
    sys::fault::step();
    let r = match p.addr {
        std::net::IpAddr::V4(a) => {
            let mut t: LpmTrie<MapData, [u8; 4], u32> =
                Map::LpmTrie(open(pins, maps::CLASS_PREFIXES_V4)?).try_into()?;
            let k = Key::new(len, a.octets());
            match class {
                Some(c) => t.insert(&k, c, 0),
                None => t.remove(&k),
            }
        }
        std::net::IpAddr::V6(a) => {
            let mut t: LpmTrie<MapData, [u8; 16], u32> =
                Map::LpmTrie(open(pins, maps::CLASS_PREFIXES_V6)?).try_into()?;
            let k = Key::new(len, a.octets());
            match class {
                Some(c) => t.insert(&k, c, 0),
                None => t.remove(&k),
            }
        }
    };
    r.with_context(|| format!("writing class prefix {p}"))
}

/// Brings the pinned tables from `from` to `to` (see the module's order).
pub fn set(pins: &Pins, from: &ClassTable, to: &ClassTable) -> Result<()> {
    let differs = |a: &ClassTable, b: &ClassTable| -> BTreeSet<u32> {
        a.names
            .iter()
            .filter(|(i, n)| b.names.get(i) != Some(n))
            .map(|(i, _)| *i)
            .collect()
    };
    let (fresh, gone) = (differs(to, from), differs(from, to));
    if !to.on() && from.indices != 0 {
        set_config(pins, 0)?;
    }
    clear(pins, &fresh)?;
    for i in &fresh {
        set_name(pins, *i, &to.names[i])?;
    }
    for (p, c) in &to.prefixes {
        if from.prefixes.get(p) != Some(c) {
            trie_entry(pins, p, Some(*c))?;
        }
    }
    if to.indices > from.indices {
        set_config(pins, to.indices)?;
    }
    for p in from.prefixes.keys().filter(|p| !to.prefixes.contains_key(p)) {
        trie_entry(pins, p, None)?;
    }
    for i in gone.iter().filter(|i| !to.names.contains_key(i)) {
        set_name(pins, *i, "")?;
    }
    clear(pins, &gone)?;
    if to.on() && to.indices < from.indices {
        set_config(pins, to.indices)?;
    }
    Ok(())
}
