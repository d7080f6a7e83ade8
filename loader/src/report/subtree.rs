//! What a `net.stat` file prints, computed from the pinned maps and the
//! cgroup tree instead of by the iterator: for kernels without cgroup
//! iterators, where `status --json` shows it (and anywhere, to compare).
//!
//! The sums are the iterator's: a cgroup's own counters from each family,
//! its live descendants' and the totals of removed descendants folded into
//! each of them (`DEPARTED`), and for the root the overflow buckets; the
//! same for each destination class in use (`CLASS_STATS`,
//! `CLASS_DEPARTED`) and each TCP health key counted (`HEALTH_STATS`,
//! `HEALTH_DEPARTED`). The
//! iterator reads everything under `cgroup_mutex` in one walk; these reads
//! are map by map, so a cgroup removed meanwhile can be missing from one
//! read or counted twice in another (re-read to settle).
use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use cgacct_common::{health as hkeys, maps, ClassKey, Counters, Departed, Health, Totals, ROOT_CGROUP};

use super::{capacity::Bucket, health::HealthSnap, read::Snapshot};
use crate::{
    bpffs::Pins,
    observe::{classes, Cgroup},
};

/// The destination classes in use and what removed cgroups counted in
/// them, by the ancestor that took it.
#[derive(Debug, Default)]
pub struct Classes {
    /// Names of the classes in use, in index order (`other` first).
    pub names: Vec<String>,
    /// cgroup id -> class name -> counts of its removed descendants.
    pub gone: BTreeMap<u64, BTreeMap<String, Counters>>,
}

/// Reads [`Classes`]; empty for a root without class maps or classes off.
pub fn classes(pins: &Pins) -> Result<Classes> {
    let mut out = Classes::default();
    let Some(table) = classes::read(pins)? else {
        return Ok(out);
    };
    out.names = table
        .names
        .iter()
        .filter(|(i, _)| **i < table.indices)
        .map(|(_, n)| n.clone())
        .collect();
    let pin = pins.map(maps::CLASS_DEPARTED);
    if out.names.is_empty() || !pin.exists() {
        return Ok(out);
    }
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let map: HashMap<MapData, ClassKey, Counters> = Map::HashMap(data).try_into()?;
    for entry in map.iter() {
        let (k, c) = entry.with_context(|| format!("reading {}", pin.display()))?;
        if let Some(name) = table.names.get(&k.class).filter(|_| k.class < table.indices) {
            out.gone.entry(k.cgroup_id).or_default().insert(name.clone(), c);
        }
    }
    Ok(out)
}

/// What a `net.stat` file adds to the packet counters: destination
/// classes and TCP health.
#[derive(Clone, Copy)]
pub struct Extra<'a> {
    pub classes: &'a Classes,
    /// None where the root has no health maps.
    pub health: Option<&'a HealthSnap>,
}

/// `DEPARTED`: cgroup id -> totals of its removed descendants.
pub fn departed(pins: &Pins) -> Result<BTreeMap<u64, Departed>> {
    let pin = pins.map(maps::DEPARTED);
    let mut out = BTreeMap::new();
    if !pin.exists() {
        return Ok(out);
    }
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let map: HashMap<MapData, u64, Departed> = Map::HashMap(data).try_into()?;
    for entry in map.iter() {
        let (id, d) = entry.with_context(|| format!("reading {}", pin.display()))?;
        out.insert(id, d);
    }
    Ok(out)
}

/// One cgroup's sums, as the iterator gathers them.
#[derive(Clone, Default)]
struct Acc {
    cgroups: u64,
    departed_cgroups: u64,
    own: Totals,
    subtree: Totals,
    /// By class, in [`Classes::names`] order.
    class_own: Vec<Counters>,
    class_subtree: Vec<Counters>,
    health_own: Health,
    health_subtree: Health,
}

/// What every cgroup's `net.stat` would print, as sums; each cgroup's keys
/// are made when asked for ([`Stats::iter`]): at 100,000 cgroups, 37 keys
/// each held at once took hundreds of megabytes.
pub struct Stats {
    ids: Vec<u64>,
    acc: Vec<Acc>,
    overflow: Vec<Bucket>,
    class_names: Vec<String>,
    /// The health keys counted (None where the root has no health maps).
    health_keys: Option<u32>,
}

impl Stats {
    /// Each cgroup's id and the keys and values of its `net.stat`, in the
    /// order of the cgroups given to [`stats`].
    pub fn iter(&self) -> impl Iterator<Item = (u64, BTreeMap<String, u64>)> + '_ {
        self.ids.iter().zip(&self.acc).map(|(id, a)| {
            let mut k = keys(*id, a, &self.overflow);
            extra_keys(&mut k, a, &self.class_names, self.health_keys);
            (*id, k)
        })
    }

    /// [`Stats::iter`], by id.
    #[cfg(test)]
    pub fn to_map(&self) -> BTreeMap<u64, BTreeMap<String, u64>> {
        self.iter().collect()
    }
}

/// Every cgroup of `cgroups` (parents before children, as
/// `observe::host::cgroups` lists them), with the sums its `net.stat`
/// would print.
pub fn stats(
    cgroups: &[Cgroup],
    snap: &Snapshot,
    departed: &BTreeMap<u64, Departed>,
    overflow: &[Bucket],
    extra: Extra<'_>,
) -> Stats {
    let index: BTreeMap<&str, usize> = cgroups
        .iter()
        .enumerate()
        .map(|(i, c)| (c.path.as_str(), i))
        .collect();
    let parent = |path: &str| -> Option<usize> {
        match path {
            "" => None,
            p => index.get(p.rsplit_once('/').map_or("", |(up, _)| up)).copied(),
        }
    };
    let get = |m: &BTreeMap<u64, Counters>, id| m.get(&id).copied().unwrap_or_default();
    let n = extra.classes.names.len();
    let empty = Acc {
        class_own: vec![Counters::default(); n],
        class_subtree: vec![Counters::default(); n],
        ..Acc::default()
    };
    let mut acc = vec![empty; cgroups.len()];
    for (i, cg) in cgroups.iter().enumerate() {
        let (class_own, class_sub) = class_counts(extra, snap, cg.id);
        let (health_own, health_sub) = health_counts(extra, cg.id);
        let own = Totals {
            socket: get(&snap.cgroups, cg.id),
            tc: get(&snap.tc_cgroups, cg.id),
            veth: get(&snap.veth, cg.id),
        };
        let gone = departed.get(&cg.id).copied().unwrap_or_default();
        acc[i].own = own;
        acc[i].class_own.clone_from(&class_own);
        acc[i].health_own = health_own;
        let mut at = Some(i);
        while let Some(a) = at {
            acc[a].cgroups += 1;
            acc[a].departed_cgroups += gone.cgroups;
            acc[a].subtree.add(&own);
            acc[a].subtree.add(&gone.totals);
            for (s, c) in acc[a].class_subtree.iter_mut().zip(&class_sub) {
                s.add(c);
            }
            acc[a].health_subtree.add(&health_sub);
            at = parent(&cgroups[a].path);
        }
    }
    Stats {
        ids: cgroups.iter().map(|c| c.id).collect(),
        acc,
        overflow: overflow.to_vec(),
        class_names: extra.classes.names.clone(),
        health_keys: extra.health.map(|h| h.keys),
    }
}

/// A cgroup's own counts of each class in use, and with its removed
/// descendants' (what it adds to each ancestor's subtree).
fn class_counts(extra: Extra<'_>, snap: &Snapshot, id: u64) -> (Vec<Counters>, Vec<Counters>) {
    let names = &extra.classes.names;
    let of = |m: Option<&BTreeMap<String, Counters>>, name: &String| {
        m.and_then(|m| m.get(name)).copied().unwrap_or_default()
    };
    let own: Vec<Counters> = names.iter().map(|n| of(snap.classes.get(&id), n)).collect();
    let mut sub = own.clone();
    for (s, n) in sub.iter_mut().zip(names) {
        s.add(&of(extra.classes.gone.get(&id), n));
    }
    (own, sub)
}

/// A cgroup's own health counts, and with its removed descendants'.
fn health_counts(extra: Extra<'_>, id: u64) -> (Health, Health) {
    let Some(h) = extra.health else {
        return Default::default();
    };
    let own = h.own.get(&id).copied().unwrap_or_default();
    let mut sub = own;
    sub.add(&h.departed.get(&id).copied().unwrap_or_default());
    (own, sub)
}

/// The class and health keys, as the iterator prints them.
fn extra_keys(out: &mut BTreeMap<String, u64>, a: &Acc, names: &[String], health_keys: Option<u32>) {
    for (i, name) in names.iter().enumerate() {
        for (prefix, c) in [("", &a.class_subtree[i]), ("self_", &a.class_own[i])] {
            out.insert(format!("{prefix}class_{name}_rx_bytes"), c.rx_bytes);
            out.insert(format!("{prefix}class_{name}_rx_packets"), c.rx_packets);
            out.insert(format!("{prefix}class_{name}_tx_bytes"), c.tx_bytes);
            out.insert(format!("{prefix}class_{name}_tx_packets"), c.tx_packets);
        }
    }
    let Some(counted) = health_keys else {
        return;
    };
    let (sub, own) = (a.health_subtree.values(), a.health_own.values());
    for (i, key) in hkeys::KEYS.iter().enumerate() {
        if counted & (1 << i) != 0 {
            out.insert(key.to_string(), sub[i]);
            out.insert(format!("self_{key}"), own[i]);
        }
    }
}

/// A family of counters in `net.stat`: its key prefix, its two directions'
/// names and where its counters are.
type Family = (&'static str, [&'static str; 2], fn(&Totals) -> Counters);

/// The keys of `net.stat`, in the iterator's terms.
fn keys(id: u64, a: &Acc, overflow: &[Bucket]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut put = |k: String, v: u64| {
        out.insert(k, v);
    };
    put("cgroup_id".into(), id);
    put("subtree_cgroups".into(), a.cgroups);
    put("removed_cgroups".into(), a.departed_cgroups);
    let families: [Family; 3] = [
        ("", ["rx", "tx"], |t| t.socket),
        ("tc_", ["ingress", "egress"], |t| t.tc),
        ("veth_", ["rx", "tx"], |t| t.veth),
    ];
    for (family, [rx, tx], of) in families {
        for (prefix, t) in [("", &a.subtree), ("self_", &a.own)] {
            let c = of(t);
            put(format!("{prefix}{family}{rx}_bytes"), c.rx_bytes);
            put(format!("{prefix}{family}{rx}_packets"), c.rx_packets);
            put(format!("{prefix}{family}{tx}_bytes"), c.tx_bytes);
            put(format!("{prefix}{family}{tx}_packets"), c.tx_packets);
        }
    }
    if id == ROOT_CGROUP {
        for b in overflow {
            put(format!("overflow_{}_packets", b.bucket), b.packets);
            put(format!("overflow_{}_bytes", b.bucket), b.bytes);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(rx: u64, tx: u64) -> Counters {
        Counters {
            rx_bytes: rx * 100,
            rx_packets: rx,
            tx_bytes: tx * 100,
            tx_packets: tx,
        }
    }

    #[test]
    fn subtree_sums_follow_the_tree_and_include_departed() {
        let cg = |path: &str, id| Cgroup {
            path: path.into(),
            id,
        };
        let tree = [cg("", 1), cg("a", 10), cg("a/b", 11), cg("ab", 12)];
        let mut snap = Snapshot::default();
        snap.cgroups.insert(10, c(1, 2));
        snap.cgroups.insert(11, c(3, 4));
        snap.cgroups.insert(12, c(5, 6));
        snap.cgroups.insert(99, c(7, 7)); // not a live cgroup: not walked
        snap.tc_cgroups.insert(11, c(0, 1));
        snap.veth.insert(10, c(2, 0));
        let mut departed = BTreeMap::new();
        let mut gone = Departed {
            cgroups: 2,
            ..Departed::default()
        };
        gone.totals.socket = c(10, 20);
        departed.insert(11, gone);
        let overflow = [Bucket {
            bucket: "cgroup_stats",
            map: "cgroup_stats".into(),
            family: "socket",
            packets: 3,
            bytes: 30,
        }];
        let classes = Classes::default();
        let extra = Extra {
            classes: &classes,
            health: None,
        };
        let s = stats(&tree, &snap, &departed, &overflow, extra).to_map();
        let a = &s[&10];
        assert_eq!(a["subtree_cgroups"], 2);
        assert_eq!(a["removed_cgroups"], 2);
        assert_eq!(a["tx_packets"], 2 + 4 + 20);
        assert_eq!(a["self_tx_packets"], 2);
        assert_eq!(a["rx_bytes"], 100 + 300 + 1000);
        assert_eq!(a["tc_egress_packets"], 1);
        assert_eq!(a["self_tc_egress_packets"], 0);
        assert_eq!(a["veth_rx_packets"], 2);
        assert_eq!(a["self_veth_rx_packets"], 2);
        assert!(!a.contains_key("overflow_cgroup_stats_packets"));
        // "ab" is not below "a".
        assert_eq!(s[&12]["tx_packets"], 6);
        assert_eq!(s[&12]["subtree_cgroups"], 1);
        let root = &s[&1];
        assert_eq!(root["subtree_cgroups"], 4);
        assert_eq!(root["tx_packets"], 2 + 4 + 6 + 20);
        assert_eq!(root["self_tx_packets"], 0);
        assert_eq!(root["overflow_cgroup_stats_packets"], 3);
        assert_eq!(root["overflow_cgroup_stats_bytes"], 30);
        assert_eq!(root["cgroup_id"], 1);
    }

    #[test]
    fn class_and_health_keys_sum_like_the_iterator() {
        let cg = |path: &str, id| Cgroup {
            path: path.into(),
            id,
        };
        let tree = [cg("", 1), cg("a", 10), cg("a/b", 11)];
        let mut snap = Snapshot::default();
        snap.classes.entry(11).or_default().insert("lan".into(), c(2, 3));
        snap.classes
            .entry(10)
            .or_default()
            .insert("other".into(), c(1, 0));
        // A class no longer in use: not printed.
        snap.classes.entry(10).or_default().insert("old".into(), c(9, 9));
        let mut classes = Classes {
            names: vec!["other".into(), "lan".into()],
            ..Classes::default()
        };
        classes.gone.entry(10).or_default().insert("lan".into(), c(4, 0));
        let mut health = HealthSnap {
            keys: 1 << hkeys::ACTIVE_OPENS | 1 << hkeys::OUT_RSTS,
            ..HealthSnap::default()
        };
        let h = |opens, rsts| Health {
            tcp_active_opens: opens,
            tcp_out_rsts: rsts,
            ..Health::default()
        };
        health.own.insert(11, h(2, 1));
        health.departed.insert(10, h(5, 0));
        let extra = Extra {
            classes: &classes,
            health: Some(&health),
        };
        let s = stats(&tree, &snap, &BTreeMap::new(), &[], extra).to_map();
        let a = &s[&10];
        assert_eq!(a["class_lan_rx_packets"], 2 + 4);
        assert_eq!(a["self_class_lan_rx_packets"], 0);
        assert_eq!(a["class_lan_tx_bytes"], 300);
        assert_eq!(a["class_other_rx_packets"], 1);
        assert_eq!(a["self_class_other_rx_packets"], 1);
        assert!(!a.contains_key("class_old_rx_packets"));
        assert_eq!(a["tcp_active_opens"], 2 + 5);
        assert_eq!(a["self_tcp_active_opens"], 0);
        assert_eq!(a["tcp_out_rsts"], 1);
        assert!(!a.contains_key("tcp_retrans_segs"), "a key not counted here");
        let b = &s[&11];
        assert_eq!(b["self_class_lan_tx_packets"], 3);
        assert_eq!(b["self_tcp_active_opens"], 2);
        assert_eq!(s[&1]["tcp_active_opens"], 7);
        assert_eq!(s[&1]["class_lan_rx_packets"], 6);
    }
}
