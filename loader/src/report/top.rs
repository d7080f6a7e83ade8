//! `cgacct-pin top`: live per-cgroup rates, sorted, refreshed in place.
//!
//! Every refresh reads the pinned maps once and subtracts the previous
//! reading; cgroups are named from a [`CgroupTree`] that follows cgroupfs
//! (walked once at start). A cgroup's rates are its own traffic (its own
//! sockets, or frames of its sockets at TC), never its subtree's, so rows
//! never count a packet twice.
use std::{
    collections::BTreeMap,
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use cgacct_common::{Counters, UNATTRIBUTED_CGROUP};
use serde::Serialize;

use super::read::{self, Snapshot};
use crate::{
    bpffs::Pins,
    follow::cgroup_tree::CgroupTree,
    observe::{
        host,
        runtime::{self, Known, Table},
    },
};

/// Which counters the rates come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// cgroup_skb: the cgroup's own sockets (rx received, tx sent).
    Socket,
    /// TC on attached interfaces, by the frame's socket cgroup (rx = ingress, tx = egress).
    Tc,
    /// Owned interfaces (a container's veth), every frame, from the owner's side.
    Veth,
}

/// Sort key, highest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// rx + tx bytes/s.
    Total,
    Rx,
    Tx,
    /// rx + tx packets/s.
    Packets,
}

pub struct Options {
    pub interval: Duration,
    pub once: bool,
    pub json: bool,
    pub limit: Option<usize>,
    pub source: Source,
    pub sort: SortBy,
}

/// One cgroup's traffic over one interval.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub id: u64,
    pub cgroup: String,
    /// The identity from the path, and the container runtimes' names.
    #[serde(flatten)]
    pub known: Known,
    /// Counted during the interval (exact, from the maps).
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// The same per second.
    pub rx_bytes_per_sec: f64,
    pub rx_packets_per_sec: f64,
    pub tx_bytes_per_sec: f64,
    pub tx_packets_per_sec: f64,
    /// TCP health and drops counted during the interval (the keys this
    /// kernel counts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<serde_json::Value>,
    /// Counted during the interval by destination class (cgroup_skb,
    /// `--source socket`, with `[classes]` only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<String, ClassCounts>,
}

/// One class's counts over one interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClassCounts {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// What each class of cgroup `id` counted between two snapshots.
pub fn class_deltas(before: &Snapshot, now: &Snapshot, id: u64) -> BTreeMap<String, ClassCounts> {
    let Some(by_class) = now.classes.get(&id) else {
        return BTreeMap::new();
    };
    let old = before.classes.get(&id);
    by_class
        .iter()
        .map(|(name, c)| {
            let d = delta(c, old.and_then(|o| o.get(name)));
            let counts = ClassCounts {
                rx_bytes: d.rx_bytes,
                rx_packets: d.rx_packets,
                tx_bytes: d.tx_bytes,
                tx_packets: d.tx_packets,
            };
            (name.clone(), counts)
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct Frame {
    pub interval_seconds: f64,
    pub source: &'static str,
    /// Full walks of cgroupfs since start: 1 unless inotify overflowed.
    pub tree_walks: u64,
    pub cgroups: Vec<Row>,
}

/// What changed between two readings of one map. A counter lower than
/// before means the entry was removed and made again: it counts from zero.
fn delta(now: &Counters, before: Option<&Counters>) -> Counters {
    let Some(b) = before else { return *now };
    let d = |n: u64, b: u64| if n >= b { n - b } else { n };
    Counters {
        rx_bytes: d(now.rx_bytes, b.rx_bytes),
        rx_packets: d(now.rx_packets, b.rx_packets),
        tx_bytes: d(now.tx_bytes, b.tx_bytes),
        tx_packets: d(now.tx_packets, b.tx_packets),
    }
}

/// Rows for the cgroups that exist now, sorted, highest first.
pub fn rows(
    before: &BTreeMap<u64, Counters>,
    now: &BTreeMap<u64, Counters>,
    secs: f64,
    tree: &CgroupTree,
    names: &Table,
    sort: SortBy,
) -> Vec<Row> {
    let per_sec = |v: u64| if secs > 0.0 { v as f64 / secs } else { 0.0 };
    let mut out: Vec<Row> = now
        .iter()
        .filter(|(id, _)| **id != UNATTRIBUTED_CGROUP)
        .filter_map(|(id, c)| {
            let e = tree.get(*id)?;
            let d = delta(c, before.get(id));
            Some(Row {
                id: *id,
                cgroup: e.display(),
                known: names.known(&e.identity),
                rx_bytes: d.rx_bytes,
                rx_packets: d.rx_packets,
                tx_bytes: d.tx_bytes,
                tx_packets: d.tx_packets,
                rx_bytes_per_sec: per_sec(d.rx_bytes),
                rx_packets_per_sec: per_sec(d.rx_packets),
                tx_bytes_per_sec: per_sec(d.tx_bytes),
                tx_packets_per_sec: per_sec(d.tx_packets),
                classes: BTreeMap::new(),
                health: None,
            })
        })
        .collect();
    let key = |r: &Row| match sort {
        SortBy::Total => r.rx_bytes + r.tx_bytes,
        SortBy::Rx => r.rx_bytes,
        SortBy::Tx => r.tx_bytes,
        SortBy::Packets => r.rx_packets + r.tx_packets,
    };
    out.sort_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.cgroup.cmp(&b.cgroup)));
    out
}

/// 1234567 -> "1.2M", with 1024 steps.
pub fn human(v: f64) -> String {
    let units = ["", "K", "M", "G", "T"];
    let mut v = v;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}{}", units[i])
    }
}

pub fn table(frame: &Frame) -> String {
    let mut s = format!(
        "cgacct top: {} counters over {:.1}s, {} cgroups active\n\n{:>9} {:>9} {:>9} {:>9}  {:<28} {}\n",
        frame.source,
        frame.interval_seconds,
        frame.cgroups.len(),
        "RX B/s",
        "TX B/s",
        "RX pkt/s",
        "TX pkt/s",
        "NAME",
        "CGROUP"
    );
    for r in &frame.cgroups {
        s.push_str(&format!(
            "{:>9} {:>9} {:>9} {:>9}  {:<28} {}\n",
            human(r.rx_bytes_per_sec),
            human(r.tx_bytes_per_sec),
            human(r.rx_packets_per_sec),
            human(r.tx_packets_per_sec),
            r.known.identity.name,
            r.cgroup
        ));
    }
    s
}

fn pick(snap: &Snapshot, source: Source) -> &BTreeMap<u64, Counters> {
    match source {
        Source::Socket => &snap.cgroups,
        Source::Tc => &snap.tc_cgroups,
        Source::Veth => &snap.veth,
    }
}

pub fn run(root: &Path, o: &Options) -> Result<()> {
    if !root.is_dir() {
        bail!(
            "{} does not exist: nothing is applied there (run `cgacct-pin apply LAYOUT` first)",
            root.display()
        );
    }
    if o.interval.is_zero() {
        bail!("--interval must be more than 0 seconds");
    }
    let pins = Pins::new(root, crate::bpffs::names::probe_dots(root)?);
    let mut tree = CgroupTree::follow(&host::cgroup2_mount()?)?;
    // Asked in a thread of its own: a runtime that does not answer never
    // delays a refresh; new containers are looked up as they appear.
    let names = runtime::resolver_for(root);
    let mut before = read::snapshot(&pins).context("reading the pinned maps")?;
    let mut health_before = super::health::read(&pins).ok().flatten();
    let mut at = Instant::now();
    if o.once {
        eprintln!("sampling for {:.1}s", o.interval.as_secs_f64());
    }
    let stdout = std::io::stdout();
    loop {
        // Follow cgroupfs while waiting: new cgroups are named by the time
        // their traffic shows.
        let until = at + o.interval;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let changes = tree.wait(left)?;
            crate::follow::look_for(&names, &tree, &changes);
        }
        let changes = tree.drain()?;
        crate::follow::look_for(&names, &tree, &changes);
        let now = read::snapshot(&pins).context("reading the pinned maps")?;
        let secs = at.elapsed().as_secs_f64();
        at = Instant::now();
        let known = names.table();
        let mut cgroups = rows(
            pick(&before, o.source),
            pick(&now, o.source),
            secs,
            &tree,
            &known,
            o.sort,
        );
        if o.source == Source::Socket {
            for r in &mut cgroups {
                r.classes = class_deltas(&before, &now, r.id);
            }
        }
        let health_now = super::health::read(&pins).ok().flatten();
        if let Some(h) = &health_now {
            for r in &mut cgroups {
                r.health = Some(super::health::interval(health_before.as_ref(), h, r.id));
            }
        }
        health_before = health_now;
        if let Some(n) = o.limit {
            cgroups.truncate(n);
        } else if !o.once && !o.json {
            cgroups.retain(|r| r.rx_packets + r.tx_packets > 0);
        }
        let frame = Frame {
            interval_seconds: secs,
            source: match o.source {
                Source::Socket => "socket",
                Source::Tc => "tc",
                Source::Veth => "veth",
            },
            tree_walks: tree.walks,
            cgroups,
        };
        let mut out = stdout.lock();
        if o.json {
            writeln!(out, "{}", serde_json::to_string(&frame)?)?;
        } else if o.once {
            write!(out, "{}", table(&frame))?;
        } else {
            // Home, clear, redraw: the table refreshes in place.
            write!(out, "\x1b[H\x1b[2J{}", table(&frame))?;
        }
        out.flush()?;
        if o.once {
            return Ok(());
        }
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_sorted_and_resets_handled() {
        let d = std::env::temp_dir().join(format!("cgacct-top-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("a.service")).expect("mkdir");
        std::fs::create_dir_all(d.join("b.service")).expect("mkdir");
        let tree = CgroupTree::scan(&d).expect("scan");
        let a = tree.by_path("a.service").expect("a").id;
        let b = tree.by_path("b.service").expect("b").id;
        let c = |rx: u64, tx: u64| Counters {
            rx_bytes: rx,
            rx_packets: rx / 100,
            tx_bytes: tx,
            tx_packets: tx / 100,
        };
        let before = BTreeMap::from([(a, c(1000, 0)), (b, c(5000, 5000))]);
        // b went back to a lower value: removed and made again.
        let now = BTreeMap::from([(a, c(21000, 400)), (b, c(300, 100)), (42, c(9, 9))]);
        let names = Table::default();
        let r = rows(&before, &now, 2.0, &tree, &names, SortBy::Total);
        assert_eq!(r.len(), 2, "unknown id 42 has no row");
        assert_eq!((r[0].id, r[0].rx_bytes, r[0].tx_bytes), (a, 20000, 400));
        assert_eq!(r[0].rx_bytes_per_sec, 10000.0);
        assert_eq!((r[1].id, r[1].rx_bytes, r[1].tx_bytes), (b, 300, 100));
        let r = rows(&before, &now, 2.0, &tree, &names, SortBy::Tx);
        assert_eq!(r[0].id, a);
        assert_eq!(human(512.0), "512");
        assert_eq!(human(1536.0), "1.5K");
        assert_eq!(human(3.0 * 1024.0 * 1024.0), "3.0M");
        let t = table(&Frame {
            interval_seconds: 2.0,
            source: "socket",
            tree_walks: 1,
            cgroups: rows(&before, &now, 2.0, &tree, &names, SortBy::Total),
        });
        assert!(t.lines().nth(3).is_some_and(|l| l.contains("a.service")), "{t}");
        std::fs::remove_dir_all(&d).expect("cleanup");
    }
}
