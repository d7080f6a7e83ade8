//! Final totals of removed cgroups, as the `cgroup_rmdir` tracepoint
//! recorded them in the pinned `REMOVED` map (an LRU hash: when full, the
//! oldest records go first; `watch --keep-removed` prunes old ones), with
//! what their sockets counted after the removal (`DYING`).
use std::{collections::BTreeMap, path::Path};

use anyhow::Result;
use cgacct_common::{Counters, Dying, Totals};
use serde::Serialize;

use crate::{
    apply::prune,
    bpffs::Pins,
    observe::{
        identity::identify,
        runtime::{self, Known, Table},
    },
    sys::os::clock_ns,
};

#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub id: u64,
    pub parent_id: u64,
    /// "/a/b", as the kernel printed it at removal.
    pub cgroup: String,
    /// What the path says (`name`, `container_id`, ...) and what the
    /// runtimes said of its container while it lived (`container_name`, ...).
    #[serde(flatten)]
    pub known: Known,
    /// Seconds since the epoch (from CLOCK_BOOTTIME at removal).
    pub removed_at: f64,
    /// Seconds since removal.
    pub age_seconds: f64,
    /// Removed descendants included in `subtree`.
    pub descendants: u64,
    pub own: TotalsOut,
    pub subtree: TotalsOut,
    /// Counted after the removal, by sockets made in the cgroup that lived
    /// on (added to the nearest live ancestor's subtree keys).
    pub late: TotalsOut,
    /// The kernel still holds the cgroup: a socket made in it lives.
    pub dying: bool,
    /// TCP health and drops (the keys this kernel counts), `own` and
    /// `subtree`; absent in a root without the health maps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CountersOut {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

impl From<Counters> for CountersOut {
    fn from(c: Counters) -> Self {
        CountersOut {
            rx_bytes: c.rx_bytes,
            rx_packets: c.rx_packets,
            tx_bytes: c.tx_bytes,
            tx_packets: c.tx_packets,
        }
    }
}

/// The three families, named as in net.stat (`tc` rx = ingress).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TotalsOut {
    pub socket: CountersOut,
    pub tc: CountersOut,
    pub veth: CountersOut,
}

impl From<Totals> for TotalsOut {
    fn from(t: Totals) -> Self {
        TotalsOut {
            socket: t.socket.into(),
            tc: t.tc.into(),
            veth: t.veth.into(),
        }
    }
}

/// Every record, newest first, named from `names`.
pub fn list(pins: &Pins, names: &Table) -> Result<Vec<Record>> {
    let map = prune::open(pins)?;
    let dying: BTreeMap<u64, Dying> = match prune::open_dying(pins)? {
        Some(d) => d.iter().filter_map(Result::ok).collect(),
        None => BTreeMap::new(),
    };
    let health = super::health::removed(pins)?;
    let health_of = |id: u64| {
        let (snap, recs) = health.as_ref()?;
        let h = recs.get(&id).copied().unwrap_or_default();
        Some(serde_json::json!({"own": snap.values(&h.own), "subtree": snap.values(&h.subtree)}))
    };
    let boot = clock_ns(libc::CLOCK_BOOTTIME);
    let real = clock_ns(libc::CLOCK_REALTIME);
    let mut out = Vec::new();
    for entry in map.iter() {
        let (id, r) = entry?;
        let end = r.path.iter().position(|b| *b == 0).unwrap_or(r.path.len());
        let age = boot.saturating_sub(r.removed_at_ns);
        let cgroup = String::from_utf8_lossy(&r.path[..end]).into_owned();
        let d = dying.get(&id).copied().unwrap_or_default();
        out.push(Record {
            id,
            parent_id: r.parent_id,
            known: names.known(&identify(&cgroup)),
            cgroup,
            removed_at: real.saturating_sub(age) as f64 / 1e9,
            age_seconds: age as f64 / 1e9,
            descendants: r.descendants,
            own: r.own.into(),
            subtree: r.subtree.into(),
            late: d.late.into(),
            dying: dying.contains_key(&id) && d.released_at_ns == 0,
            health: health_of(id),
        });
    }
    out.sort_by(|a, b| a.age_seconds.total_cmp(&b.age_seconds));
    Ok(out)
}

/// `cgacct-pin removed`: prints the records.
pub fn show(root: &Path, json: bool) -> Result<()> {
    if !root.is_dir() {
        anyhow::bail!(
            "{} does not exist: nothing is applied there (run `cgacct-pin apply LAYOUT`)",
            root.display()
        );
    }
    let pins = Pins::new(root, crate::bpffs::names::probe_dots(root)?);
    // The runtimes still list stopped containers; removed ones are named
    // from what was remembered while they lived.
    let records = list(&pins, &runtime::ask_for(root))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    println!(
        "{:>8} {:>12} {:>8} {:>12} {:>8} {:>5} {:>8} {:>8}  {:<28} cgroup",
        "age_s", "rx_bytes", "rx_pkts", "tx_bytes", "tx_pkts", "desc", "late_rx", "late_tx", "name"
    );
    for r in records {
        let (s, l) = (&r.subtree.socket, &r.late.socket);
        println!(
            "{:>8.1} {:>12} {:>8} {:>12} {:>8} {:>5} {:>8} {:>8}  {:<28} {}{}",
            r.age_seconds,
            s.rx_bytes,
            s.rx_packets,
            s.tx_bytes,
            s.tx_packets,
            r.descendants,
            l.rx_packets,
            l.tx_packets,
            r.known.identity.name,
            r.cgroup,
            if r.dying {
                " (dying: a socket lives on)"
            } else {
                ""
            }
        );
    }
    Ok(())
}
