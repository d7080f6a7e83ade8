//! `cgacct-pin status`: what is pinned and attached under a root, the
//! counters of every cgroup and interface, named, and how full the maps
//! are (with what full maps could not take).
use std::{collections::BTreeMap, io::Write as _, path::Path};

use anyhow::{Context as _, Result};
use cgacct_common::Counters;
use serde::Serialize;
use serde_json::{json, Value};

use super::{
    capacity::{self, Capacity},
    read::{self, Snapshot},
    subtree,
};
use crate::{
    bpffs::{names, walk::Tree, Pins},
    object,
    observe::{
        held, host,
        identity::identify,
        kernel,
        runtime::{self, Table},
    },
    tc,
};

/// Everything `status` shows, read once.
struct Status {
    root: std::path::PathBuf,
    build: Option<String>,
    this_build: String,
    programs: Vec<(&'static str, bool)>,
    tc_links: Vec<std::path::PathBuf>,
    cgroup_links: Vec<std::path::PathBuf>,
    stats_files: usize,
    /// What the running kernel offers (no stats files without iterators).
    kernel: kernel::Features,
    snap: Snapshot,
    /// Every live cgroup's `net.stat` keys, computed from the maps.
    stats: subtree::Stats,
    capacity: Capacity,
    names: BTreeMap<u64, String>,
    /// What the container runtimes say about the cgroups.
    runtimes: Table,
    ifnames: BTreeMap<u32, String>,
    /// TCP health and drops, where the root has their maps.
    health: Option<super::health::HealthSnap>,
}

impl Status {
    fn read(root: &Path) -> Result<Status> {
        if !root.is_dir() {
            anyhow::bail!(
                "{} does not exist: nothing is applied there (run `cgacct-pin apply LAYOUT`)",
                root.display()
            );
        }
        let pins = Pins::new(root, names::probe_dots(root)?);
        let tree = Tree::read(&pins)?;
        let k = kernel::features();
        let programs = object::programs(k.object());
        // The program pinned last carries the build.
        let build = match programs.last().map(|p| pins.prog(p)) {
            Some(pin) if pin.exists() => held::running_build(&pin)?,
            _ => None,
        };
        let cgroups = host::cgroups(&host::cgroup2_mount()?)?;
        let snap = read::snapshot(&pins).context("reading the pinned maps")?;
        let capacity = capacity::read(&pins).context("reading how full the maps are")?;
        let departed = subtree::departed(&pins).context("reading the totals of removed cgroups")?;
        let health = super::health::read(&pins).context("reading the health maps")?;
        let classes = subtree::classes(&pins).context("reading the class tables")?;
        Ok(Status {
            root: root.to_path_buf(),
            build: build.map(|b| format!("{b:016x}")),
            this_build: format!("{:016x}", object::this_build()),
            programs: programs.iter().map(|p| (*p, pins.prog(p).exists())).collect(),
            tc_links: tree.two_level(&pins.tc_links()),
            cgroup_links: tree.two_level(&pins.cgroup_links()),
            stats_files: tree.stats_files(&pins).len(),
            kernel: k,
            stats: subtree::stats(
                &cgroups,
                &snap,
                &departed,
                &capacity.overflow,
                subtree::Extra {
                    classes: &classes,
                    health: health.as_ref(),
                },
            ),
            snap,
            health,
            capacity,
            names: cgroups.iter().map(|c| (c.id, c.display())).collect(),
            runtimes: runtime::ask_for(root),
            ifnames: host::interfaces()?
                .into_iter()
                .map(|i| (i.ifindex, i.name))
                .collect(),
        })
    }

    fn cgroup_name(&self, id: u64) -> String {
        match id {
            0 => "(no socket)".to_string(),
            id => self
                .names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("(removed cgroup {id})")),
        }
    }

    /// The cgroup's identity and the runtimes' names, as JSON fields.
    fn known(&self, id: u64) -> serde_json::Value {
        let known = self
            .names
            .get(&id)
            .map(|path| self.runtimes.known(&identify(path)));
        match known.and_then(|k| serde_json::to_value(k).ok()) {
            Some(v) => v,
            None => json!({"name": self.cgroup_name(id)}),
        }
    }

    /// The last column of the text tables: the path, and the name people
    /// know when the path's last component is not it.
    fn label(&self, id: u64) -> String {
        let path = self.cgroup_name(id);
        let Some(p) = self.names.get(&id) else { return path };
        let k = self.runtimes.known(&identify(p));
        if p.rsplit('/').next() == Some(k.identity.name.as_str()) || p == "/" {
            path
        } else {
            format!("{path}  {}", k.identity.name)
        }
    }
}

/// Prints the status of `root`; `tc` is how TC attaches there (the
/// layout's `[tc] attach`, or the probe's answer).
pub fn show(root: &Path, tc: &tc::Choice, json: bool) -> Result<()> {
    let s = Status::read(root)?;
    for w in s.capacity.warnings() {
        eprintln!("cgacct-pin: warning: {w}");
    }
    if json {
        // Streamed: at 100,000 cgroups the text is over 100 MB.
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer_pretty(&mut out, &to_json(&s, tc))?;
        writeln!(out)?;
        out.flush()?;
    } else {
        print_text(&s, tc);
    }
    Ok(())
}

fn counters(c: &Counters) -> serde_json::Value {
    json!({"rx_bytes": c.rx_bytes, "rx_packets": c.rx_packets, "tx_bytes": c.tx_bytes, "tx_packets": c.tx_packets})
}

/// `status --json`, its keys in order. Every cgroup's `net.stat` keys
/// (`stats`) are written straight from [`Status`], never copied into a
/// `serde_json::Value`: at 100,000 cgroups that copy alone took hundreds
/// of megabytes.
#[derive(Serialize)]
struct Json<'a> {
    build: &'a Option<String>,
    cgroup_links: &'a [std::path::PathBuf],
    cgroups: Vec<Value>,
    health: Option<Value>,
    interfaces: Vec<Value>,
    kernel: kernel::Features,
    maps: Value,
    overflow: Value,
    programs: Vec<Value>,
    root: &'a Path,
    runtimes: &'a [runtime::Answer],
    stats: Stats<'a>,
    stats_files: usize,
    tc_attach: &'a tc::Choice,
    tc_cgroups: Vec<Value>,
    tc_links: &'a [std::path::PathBuf],
    this_build: &'a str,
    veth_cgroups: Vec<Value>,
    warnings: Value,
}

/// Every cgroup's `net.stat` keys, by cgroup path.
struct Stats<'a>(&'a Status);

impl serde::Serialize for Stats<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let s = self.0;
        ser.collect_map(s.stats.iter().map(|(id, keys)| (s.cgroup_name(id), keys)))
    }
}

fn to_json<'a>(s: &'a Status, tc: &'a tc::Choice) -> Json<'a> {
    let by_cgroup = |m: &BTreeMap<u64, Counters>, classes: bool| -> Vec<Value> {
        m.iter()
            .map(|(id, c)| {
                let mut v = s.known(*id);
                v["id"] = json!(id);
                v["path"] = json!(s.cgroup_name(*id));
                v["counters"] = counters(c);
                if let Some(by_class) = s.snap.classes.get(id).filter(|_| classes) {
                    v["classes"] = by_class.iter().map(|(n, c)| (n.clone(), counters(c))).collect();
                }
                v
            })
            .collect()
    };
    let mut cap = s.capacity.to_json();
    Json {
        root: &s.root,
        build: &s.build,
        this_build: &s.this_build,
        programs: s
            .programs
            .iter()
            .map(|(p, ok)| json!({"name": p, "pinned": ok}))
            .collect(),
        tc_links: &s.tc_links,
        cgroup_links: &s.cgroup_links,
        stats_files: s.stats_files,
        kernel: s.kernel,
        stats: Stats(s),
        tc_attach: tc,
        cgroups: by_cgroup(&s.snap.cgroups, true),
        tc_cgroups: by_cgroup(&s.snap.tc_cgroups, false),
        veth_cgroups: by_cgroup(&s.snap.veth, false),
        runtimes: &s.runtimes.answers,
        interfaces: s
            .snap
            .interfaces
            .iter()
            .map(|(i, c)| json!({"ifindex": i, "name": s.ifnames.get(i), "counters": counters(c)}))
            .collect(),
        maps: cap["maps"].take(),
        overflow: cap["overflow"].take(),
        warnings: cap["warnings"].take(),
        health: s.health.as_ref().map(|h| {
            super::health::to_json(h, |id| {
                let mut v = s.known(id);
                v["path"] = json!(s.cgroup_name(id));
                v
            })
        }),
    }
}

fn print_text(s: &Status, tc: &tc::Choice) {
    println!("root {}", s.root.display());
    match &s.build {
        Some(b) if *b == s.this_build => println!("build {b} (this binary's)"),
        Some(b) => println!(
            "build {b} (this binary is {}: `apply` upgrades in place)",
            s.this_build
        ),
        None => println!("build unknown (this binary is {})", s.this_build),
    }
    println!("{}", tc.describe());
    for (p, ok) in &s.programs {
        println!("program {p} {}", if *ok { "pinned" } else { "MISSING" });
    }
    for l in s.tc_links.iter().chain(&s.cgroup_links) {
        println!("link {}", l.display());
    }
    match s.kernel.stats_files() {
        true => println!("stats files: {}", s.stats_files),
        false => println!(
            "stats files: none on this kernel (net.stat needs Linux >= 6.1: cgroup iterators); \
             `status --json` has every cgroup's net.stat keys under \"stats\""
        ),
    }
    let by_cgroup = |m: &BTreeMap<u64, Counters>| -> Vec<_> {
        m.iter()
            .map(|(id, c)| (id.to_string(), *c, s.label(*id)))
            .collect()
    };
    let head = |a, b, c, d, n| ["id", a, b, c, d, n];
    let rx_tx = |name| head("rx_bytes", "rx_pkts", "tx_bytes", "tx_pkts", name);
    table(rx_tx("cgroup (cgroup_skb)"), by_cgroup(&s.snap.cgroups));
    table(
        head(
            "in_bytes",
            "in_pkts",
            "out_bytes",
            "out_pkts",
            "cgroup of socket (tc)",
        ),
        by_cgroup(&s.snap.tc_cgroups),
    );
    if !s.snap.veth.is_empty() {
        table(
            rx_tx("cgroup behind its interfaces (veth)"),
            by_cgroup(&s.snap.veth),
        );
    }
    if !s.snap.classes.is_empty() {
        let rows = s.snap.classes.iter().flat_map(|(id, by_class)| {
            by_class
                .iter()
                .map(move |(n, c)| (id.to_string(), *c, format!("{}  class {n}", s.label(*id))))
        });
        table(rx_tx("cgroup (cgroup_skb) by destination class"), rows.collect());
    }
    let ifaces = s.snap.interfaces.iter().map(|(i, c)| {
        let name = s.ifnames.get(i).cloned().unwrap_or_else(|| "(gone)".into());
        (i.to_string(), *c, name)
    });
    let mut h = head("in_bytes", "in_pkts", "out_bytes", "out_pkts", "interface (tc)");
    h[0] = "ifindex";
    table(h, ifaces.collect());
    if let Some(h) = &s.health {
        print_health(s, h);
    }
    s.capacity.print();
    print_runtimes(s);
}

/// The health keys this kernel counts, one row per cgroup (own sockets).
fn print_health(s: &Status, h: &super::health::HealthSnap) {
    let keys = h.keys();
    if keys.is_empty() {
        return;
    }
    println!("\n{:<10} {}  cgroup (TCP health and drops)", "id", keys.join(" "));
    for (id, v) in &h.own {
        let vals = h.values(v);
        let cols: Vec<String> = keys
            .iter()
            .map(|k| format!("{:>w$}", vals[*k].as_u64().unwrap_or(0), w = k.len()))
            .collect();
        println!("{:<10} {}  {}", id, cols.join(" "), s.label(*id));
    }
    if !h.reasons.is_empty() {
        let r: Vec<String> = h.reasons.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("drops by reason: {}", r.join(", "));
    }
}

/// Where the names came from.
fn print_runtimes(s: &Status) {
    println!();
    for a in &s.runtimes.answers {
        let from = match a.source {
            "api" => "its API",
            "disk" => "its records on disk",
            "logs" => "the kubelet's log directories",
            _ => "nowhere: not on this host",
        };
        println!(
            "names from {}: {} containers, from {from}",
            a.runtime, a.containers
        );
        if let Some(n) = &a.note {
            println!("  ({n})");
        }
    }
}

/// One status table: key, four counters, name.
fn table(head: [&str; 6], rows: Vec<(String, Counters, String)>) {
    let [k, a, b, c, d, n] = head;
    println!("\n{k:<10} {a:>14} {b:>10} {c:>14} {d:>10}  {n}");
    for (key, x, name) in rows {
        println!(
            "{key:<10} {:>14} {:>10} {:>14} {:>10}  {name}",
            x.rx_bytes, x.rx_packets, x.tx_bytes, x.tx_packets
        );
    }
}
