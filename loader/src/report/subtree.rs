//! What a `net.stat` file prints, computed from the pinned maps and the
//! cgroup tree instead of by the iterator: for kernels without cgroup
//! iterators, where `status --json` shows it (and anywhere, to compare).
//!
//! The sums are the iterator's: a cgroup's own counters from each family,
//! its live descendants' and the totals of removed descendants folded into
//! each of them (`DEPARTED`), and for the root the overflow buckets. The
//! iterator reads everything under `cgroup_mutex` in one walk; these reads
//! are map by map, so a cgroup removed meanwhile can be missing from one
//! read or counted twice in another (re-read to settle).
use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use cgacct_common::{maps, Counters, Departed, Totals, ROOT_CGROUP};

use super::{capacity::Bucket, read::Snapshot};
use crate::{bpffs::Pins, observe::Cgroup};

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
#[derive(Clone, Copy, Default)]
struct Acc {
    cgroups: u64,
    departed_cgroups: u64,
    own: Totals,
    subtree: Totals,
}

/// Every cgroup of `cgroups` (parents before children, as
/// `observe::host::cgroups` lists them), with the keys and values its
/// `net.stat` would print, by id.
pub fn stats(
    cgroups: &[Cgroup],
    snap: &Snapshot,
    departed: &BTreeMap<u64, Departed>,
    overflow: &[Bucket],
) -> BTreeMap<u64, BTreeMap<String, u64>> {
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
    let mut acc = vec![Acc::default(); cgroups.len()];
    for (i, cg) in cgroups.iter().enumerate() {
        let own = Totals {
            socket: get(&snap.cgroups, cg.id),
            tc: get(&snap.tc_cgroups, cg.id),
            veth: get(&snap.veth, cg.id),
        };
        let gone = departed.get(&cg.id).copied().unwrap_or_default();
        acc[i].own = own;
        let mut at = Some(i);
        while let Some(a) = at {
            acc[a].cgroups += 1;
            acc[a].departed_cgroups += gone.cgroups;
            acc[a].subtree.add(&own);
            acc[a].subtree.add(&gone.totals);
            at = parent(&cgroups[a].path);
        }
    }
    cgroups
        .iter()
        .zip(acc)
        .map(|(cg, a)| (cg.id, keys(cg.id, &a, overflow)))
        .collect()
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
        let s = stats(&tree, &snap, &departed, &overflow);
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
}
