//! The class tables the kernel holds under a root (`CLASS_NAMES`,
//! `CLASS_CONFIG`, `CLASS_PREFIXES_V4`/`_V6`), as a [`ClassTable`].
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::maps::{lpm_trie::LpmTrie, Array, Map, MapData};
use cgacct_common::{maps, ClassConfig, ClassName};

use crate::{
    bpffs::Pins,
    spec::classes::{ClassTable, Prefix},
};

fn open(path: &Path) -> Result<MapData> {
    MapData::from_pin(path).with_context(|| format!("opening pinned map {}", path.display()))
}

/// A name from the table's NUL-padded bytes; None for an unused index.
pub fn name_of(n: &ClassName) -> Option<String> {
    let end = n.name.iter().position(|b| *b == 0).unwrap_or(n.name.len());
    (end > 0).then(|| String::from_utf8_lossy(&n.name[..end]).into_owned())
}

/// index -> name of the pinned name table.
pub fn names(pins: &Pins) -> Result<BTreeMap<u32, String>> {
    let path = pins.map(maps::CLASS_NAMES);
    let array: Array<MapData, ClassName> = Map::Array(open(&path)?).try_into()?;
    let mut out = BTreeMap::new();
    for i in 0..array.len() {
        let n = array
            .get(&i, 0)
            .with_context(|| format!("reading {}", path.display()))?;
        if let Some(name) = name_of(&n) {
            out.insert(i, name);
        }
    }
    Ok(out)
}

/// Every prefix of one pinned trie, with its class index.
fn trie<const N: usize>(path: &Path, addr: fn([u8; N]) -> IpAddr) -> Result<Vec<(Prefix, u32)>> {
    let trie: LpmTrie<MapData, [u8; N], u32> = Map::LpmTrie(open(path)?).try_into()?;
    let mut out = Vec::new();
    for entry in trie.iter() {
        let (k, v) = entry.with_context(|| format!("reading {}", path.display()))?;
        let len = u8::try_from(k.prefix_len()).unwrap_or(u8::MAX);
        out.push((
            Prefix {
                addr: addr(k.data()),
                len,
            },
            v,
        ));
    }
    Ok(out)
}

/// The pinned tables; None when the root has no class maps (not applied
/// yet, or made by a build without classes).
pub fn read(pins: &Pins) -> Result<Option<ClassTable>> {
    let all = [
        maps::CLASS_NAMES,
        maps::CLASS_CONFIG,
        maps::CLASS_PREFIXES_V4,
        maps::CLASS_PREFIXES_V6,
    ];
    if all.iter().any(|m| !pins.map(m).exists()) {
        return Ok(None);
    }
    let path = pins.map(maps::CLASS_CONFIG);
    let config: Array<MapData, ClassConfig> = Map::Array(open(&path)?).try_into()?;
    let indices = config
        .get(&0, 0)
        .with_context(|| format!("reading {}", path.display()))?
        .indices;
    let mut prefixes = BTreeMap::new();
    let v4 = trie::<4>(&pins.map(maps::CLASS_PREFIXES_V4), |a| {
        IpAddr::V4(Ipv4Addr::from(a))
    })?;
    let v6 = trie::<16>(&pins.map(maps::CLASS_PREFIXES_V6), |a| {
        IpAddr::V6(Ipv6Addr::from(a))
    })?;
    prefixes.extend(v4.into_iter().chain(v6));
    Ok(Some(ClassTable {
        names: names(pins)?,
        prefixes,
        indices,
    }))
}
