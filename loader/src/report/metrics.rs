//! `cgacct-pin export`: the pinned counters as Prometheus text
//! (exposition format 0.0.4, which Prometheus and OpenMetrics scrapers
//! read), served over HTTP at `/metrics`.
//!
//! Every scrape reads the pinned maps once (one pass over each map, no
//! `net.stat` walk) and names cgroups from a [`CgroupTree`] that follows
//! cgroupfs: the tree is walked once at start, never per scrape.
//!
//! Per-cgroup series carry the cgroup's own counts (its own sockets, never
//! its subtree), so `sum()` over any set of cgroups counts each packet once.
//! Series of a removed cgroup end when it is removed. What full maps could
//! not take, and how full each map is, are series of their own
//! (`cgacct_overflow_*_total`, `cgacct_map_*entries`).
use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use anyhow::{anyhow, Context as _, Result};
use cgacct_common::{Counters, UNATTRIBUTED_CGROUP};

use super::{
    capacity::{self, Capacity},
    read::{self, Snapshot},
};
use crate::{
    bpffs::Pins,
    follow::cgroup_tree::{CgroupTree, Entry},
    observe::{
        host,
        runtime::{self, resolver::Resolver, Table},
    },
};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Label values escape backslash, double quote and newline.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Labels naming one cgroup: `cgroup` (its path), `name`, and `unit`,
/// `container_id`, `pod_uid`, and the runtimes' `container_name`,
/// `compose_project`, `compose_service`, `pod_namespace`, `pod_name` where
/// known.
fn cgroup_labels(e: &Entry, names: &Table) -> Vec<(&'static str, String)> {
    let k = names.known(&e.identity);
    let mut l = vec![("cgroup", e.display()), ("name", k.identity.name)];
    let n = k.names;
    for (key, v) in [
        ("unit", k.identity.unit),
        ("container_id", k.identity.container_id),
        ("pod_uid", k.identity.pod_uid),
        ("container_name", n.container_name),
        ("compose_project", n.compose_project),
        ("compose_service", n.compose_service),
        ("pod_namespace", n.pod_namespace),
        ("pod_name", n.pod_name),
    ] {
        if let Some(v) = v {
            l.push((key, v));
        }
    }
    l
}

/// Writes one bytes/packets pair of counter families from a cgroup-keyed
/// map, each direction a `direction` label value.
fn cgroup_families(
    out: &mut String,
    prefix: &str,
    what: &str,
    dirs: [&str; 2],
    map: &BTreeMap<u64, Counters>,
    tree: &CgroupTree,
    names: &Table,
) {
    let rows: Vec<(Vec<(&str, String)>, &Counters)> = map
        .iter()
        .filter(|(id, _)| **id != UNATTRIBUTED_CGROUP)
        .filter_map(|(id, c)| tree.get(*id).map(|e| (cgroup_labels(e, names), c)))
        .collect();
    for (unit, pick) in [
        (
            "bytes",
            (|c: &Counters| [c.rx_bytes, c.tx_bytes]) as fn(&Counters) -> [u64; 2],
        ),
        ("packets", |c: &Counters| [c.rx_packets, c.tx_packets]),
    ] {
        let name = format!("{prefix}_{unit}_total");
        let help = format!(
            "Network-layer {unit} {what}, by cgroup; direction {} or {}.",
            dirs[0], dirs[1]
        );
        let mut f = Family::new(out, &name, "counter", &help);
        for (labels, c) in &rows {
            for (dir, v) in dirs.iter().zip(pick(c)) {
                let mut l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                l.push(("direction", dir));
                f.sample(&name, &l, v);
            }
        }
    }
}

/// `cgacct_class_{bytes,packets}_total`: the cgroup_skb counts of each
/// cgroup's own sockets by destination class (labels `class`,
/// `direction`); no family at all while no class has counted.
fn class_families(out: &mut String, snap: &Snapshot, tree: &CgroupTree, names: &Table) {
    if snap.classes.is_empty() {
        return;
    }
    type ByClass = BTreeMap<String, Counters>;
    let rows: Vec<(Vec<(&str, String)>, &ByClass)> = snap
        .classes
        .iter()
        .filter_map(|(id, m)| tree.get(*id).map(|e| (cgroup_labels(e, names), m)))
        .collect();
    for (unit, pick) in [
        (
            "bytes",
            (|c: &Counters| [c.rx_bytes, c.tx_bytes]) as fn(&Counters) -> [u64; 2],
        ),
        ("packets", |c: &Counters| [c.rx_packets, c.tx_packets]),
    ] {
        let name = format!("cgacct_class_{unit}_total");
        let help = format!(
            "Network-layer {unit} of the cgroup's own sockets (cgroup_skb hooks) by destination \
             class of the peer address ([classes]): rx received, tx sent."
        );
        let mut f = Family::new(out, &name, "counter", &help);
        for (labels, by_class) in &rows {
            for (class, c) in *by_class {
                for (dir, v) in ["rx", "tx"].iter().zip(pick(c)) {
                    let mut l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    l.push(("class", class));
                    l.push(("direction", dir));
                    f.sample(&name, &l, v);
                }
            }
        }
    }
}

/// The exposition text of one scrape.
pub fn render(snap: &Snapshot, tree: &CgroupTree, names: &Table, ifnames: &BTreeMap<u32, String>) -> String {
    let mut out = String::new();
    cgroup_families(
        &mut out,
        "cgacct_socket",
        "of the cgroup's own sockets (cgroup_skb hooks): rx received, tx sent",
        ["rx", "tx"],
        &snap.cgroups,
        tree,
        names,
    );
    class_families(&mut out, snap, tree, names);
    cgroup_families(
        &mut out,
        "cgacct_tc",
        "crossing attached interfaces (TC hooks) whose skb belongs to a socket of the cgroup: \
         ingress arriving at the interface, egress leaving it",
        ["ingress", "egress"],
        &snap.tc_cgroups,
        tree,
        names,
    );
    cgroup_families(
        &mut out,
        "cgacct_veth",
        "crossing the attached interfaces the cgroup owns (the cgroup behind a veth), every \
         frame whatever its socket: rx towards the cgroup, tx from it",
        ["rx", "tx"],
        &snap.veth,
        tree,
        names,
    );
    let none = snap
        .tc_cgroups
        .get(&UNATTRIBUTED_CGROUP)
        .copied()
        .unwrap_or_default();
    for (unit, v) in [
        ("bytes", [none.rx_bytes, none.tx_bytes]),
        ("packets", [none.rx_packets, none.tx_packets]),
    ] {
        let name = format!("cgacct_tc_unattributed_{unit}_total");
        let help = format!(
            "Network-layer {unit} crossing attached interfaces (TC hooks) with no socket and no \
             owning cgroup: ingress or egress."
        );
        let mut f = Family::new(&mut out, &name, "counter", &help);
        f.sample(&name, &[("direction", "ingress")], v[0]);
        f.sample(&name, &[("direction", "egress")], v[1]);
    }
    for (unit, pick) in [
        (
            "bytes",
            (|c: &Counters| [c.rx_bytes, c.tx_bytes]) as fn(&Counters) -> [u64; 2],
        ),
        ("packets", |c: &Counters| [c.rx_packets, c.tx_packets]),
    ] {
        let name = format!("cgacct_interface_{unit}_total");
        let help = format!(
            "Network-layer {unit} crossing an attached interface (TC hooks), every frame: \
             ingress or egress."
        );
        let mut f = Family::new(&mut out, &name, "counter", &help);
        for (ifindex, c) in &snap.interfaces {
            let Some(ifname) = ifnames.get(ifindex) else {
                continue; // the interface is gone
            };
            for (dir, v) in ["ingress", "egress"].iter().zip(pick(c)) {
                f.sample(&name, &[("interface", ifname), ("direction", dir)], v);
            }
        }
    }
    let name = "cgacct_cgroups";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "Cgroups known to the exporter (followed in cgroupfs).",
    );
    f.sample(name, &[], tree.len() as u64);
    out
}

/// The overflow buckets and the maps' fill.
pub fn render_capacity(out: &mut String, cap: &Capacity) {
    for (unit, pick) in [
        (
            "packets",
            (|b: &capacity::Bucket| b.packets) as fn(&capacity::Bucket) -> u64,
        ),
        ("bytes", |b: &capacity::Bucket| b.bytes),
    ] {
        let name = format!("cgacct_overflow_{unit}_total");
        let help = format!(
            "Network-layer {unit} counted in no cgroup because a map was full (no entry could be \
             made), by map and counter family (socket, tc, veth, iface)."
        );
        let mut f = Family::new(out, &name, "counter", &help);
        for b in &cap.overflow {
            f.sample(&name, &[("map", &b.map), ("family", b.family)], pick(b));
        }
    }
    for (name, help, pick) in [
        (
            "cgacct_map_entries",
            "Entries in use in a fixed-size map (dying: removed cgroups the kernel still holds).",
            (|m: &capacity::MapUse| m.entries) as fn(&capacity::MapUse) -> u32,
        ),
        (
            "cgacct_map_max_entries",
            "Size of a fixed-size map, set by the layout's [maps] keys.",
            |m: &capacity::MapUse| m.max_entries,
        ),
    ] {
        let mut f = Family::new(out, name, "gauge", help);
        for m in &cap.maps {
            f.sample(name, &[("map", &m.name)], u64::from(pick(m)));
        }
    }
}

/// What one scrape reads. Names are the resolver's latest: a scrape never
/// waits for a runtime.
pub fn scrape(pins: &Pins, tree: &mut CgroupTree, names: &Resolver) -> Result<String> {
    let changes = tree.drain().context("following cgroupfs")?;
    crate::follow::look_for(names, tree, &changes);
    let snap = read::snapshot(pins).context("reading the pinned maps")?;
    let cap = capacity::read(pins).context("reading how full the maps are")?;
    let ifnames = host::interfaces()?
        .into_iter()
        .map(|i| (i.ifindex, i.name))
        .collect();
    let table = names.table();
    let mut out = render(&snap, tree, &table, &ifnames);
    if let Some(h) = super::health::read(pins).context("reading the health maps")? {
        for fam in super::health::families(&h, |id| tree.get(id).map(|e| cgroup_labels(e, &table))) {
            let mut f = Family::new(&mut out, &fam.name, "counter", &fam.help);
            for (labels, v) in &fam.samples {
                let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                f.sample(&fam.name, &l, *v);
            }
        }
    }
    render_capacity(&mut out, &cap);
    Ok(out)
}

/// Serves `/metrics` on `listen` until killed. Prints the bound address
/// (useful with port 0) once listening.
pub fn serve(root: &Path, listen: &str) -> Result<()> {
    if !root.is_dir() {
        anyhow::bail!(
            "{} does not exist: nothing is applied there (run `cgacct-pin apply LAYOUT` first)",
            root.display()
        );
    }
    let dots = crate::bpffs::names::probe_dots(root)?;
    let pins = Pins::new(root, dots);
    let mut tree = CgroupTree::follow(&host::cgroup2_mount()?)?;
    let names = runtime::resolver_for(root);
    // Fail now, not at the first scrape, if the maps cannot be read.
    read::snapshot(&pins).context("reading the pinned maps")?;
    let server = tiny_http::Server::http(listen)
        .map_err(|e| anyhow!("cannot listen on {listen}: {e} (use HOST:PORT, e.g. 127.0.0.1:9465)"))?;
    println!("listening on {}", server.server_addr());
    use std::io::Write as _;
    std::io::stdout().flush()?;
    loop {
        let Some(req) = server.recv_timeout(Duration::from_secs(1))? else {
            // Keep the inotify queue short between scrapes; look new
            // containers up before they are scraped.
            let changes = tree.drain().context("following cgroupfs")?;
            crate::follow::look_for(&names, &tree, &changes);
            continue;
        };
        let path = req.url().split('?').next().unwrap_or("");
        let response =
            match (req.method(), path) {
                (tiny_http::Method::Get, "/metrics") => match scrape(&pins, &mut tree, &names) {
                    Ok(text) => tiny_http::Response::from_string(text)
                        .with_header(header("Content-Type", CONTENT_TYPE)),
                    Err(e) => tiny_http::Response::from_string(format!("scrape failed: {e:#}\n"))
                        .with_status_code(500),
                },
                (tiny_http::Method::Get, "/") => tiny_http::Response::from_string(
                    "cgacct-pin export: per-cgroup network counters at /metrics\n",
                ),
                _ => tiny_http::Response::from_string("not found: try /metrics\n").with_status_code(404),
            };
        if let Err(e) = req.respond(response) {
            eprintln!("cgacct-pin export: writing a response: {e}");
        }
    }
}

fn header(k: &str, v: &str) -> tiny_http::Header {
    // Both are fixed ASCII strings of this module.
    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap_or_else(|()| unreachable!())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }

    #[test]
    fn runtime_names_become_labels() {
        const CID: &str = "4c4367d78267a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607182930";
        let d = std::env::temp_dir().join(format!("cgacct-metrics-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("docker").join(CID)).expect("mkdir");
        let tree = CgroupTree::scan(&d).expect("scan");
        let id = tree.by_path(&format!("docker/{CID}")).expect("entry").id;
        let mut snap = Snapshot::default();
        snap.veth.insert(
            id,
            Counters {
                rx_bytes: 7,
                ..Counters::default()
            },
        );
        let mut names = Table::default();
        names.containers.insert(
            CID.into(),
            runtime::Names {
                container_name: Some("hd-web".into()),
                compose_project: Some("hd".into()),
                compose_service: Some("web".into()),
                ..runtime::Names::default()
            },
        );
        let text = render(&snap, &tree, &names, &BTreeMap::new());
        let want = format!(
            "cgacct_veth_bytes_total{{cgroup=\"/docker/{CID}\",name=\"hd-web\",container_id=\"{CID}\",\
             container_name=\"hd-web\",compose_project=\"hd\",compose_service=\"web\",direction=\"rx\"}} 7"
        );
        assert!(text.lines().any(|l| l == want), "missing {want:?} in\n{text}");
        // Without the runtime's answer: the name from the path, no runtime labels.
        let text = render(&snap, &tree, &Table::default(), &BTreeMap::new());
        let want = format!(
            "cgacct_veth_bytes_total{{cgroup=\"/docker/{CID}\",name=\"docker:4c4367d78267\",\
             container_id=\"{CID}\",direction=\"rx\"}} 7"
        );
        assert!(text.lines().any(|l| l == want), "missing {want:?} in\n{text}");
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn exposition_of_a_snapshot() {
        let d = std::env::temp_dir().join(format!("cgacct-metrics-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let svc = d.join("system.slice/web.service");
        std::fs::create_dir_all(&svc).expect("mkdir");
        let tree = CgroupTree::scan(&d).expect("scan");
        let id = tree.by_path("system.slice/web.service").expect("entry").id;
        let mut snap = Snapshot::default();
        let c = Counters {
            rx_bytes: 10,
            rx_packets: 1,
            tx_bytes: 20,
            tx_packets: 2,
        };
        snap.cgroups.insert(id, c);
        snap.cgroups.insert(999_999_999, c); // a removed cgroup: no series
        snap.tc_cgroups.insert(UNATTRIBUTED_CGROUP, c);
        snap.interfaces.insert(7, c);
        snap.classes
            .insert(id, BTreeMap::from([("cluster".to_string(), c)]));
        let ifnames = BTreeMap::from([(7, "veth0".to_string())]);
        let text = render(&snap, &tree, &Table::default(), &ifnames);
        let l = r#"cgroup="/system.slice/web.service",name="web.service",unit="web.service""#;
        for want in [
            "# TYPE cgacct_socket_bytes_total counter".to_string(),
            format!("cgacct_socket_bytes_total{{{l},direction=\"rx\"}} 10"),
            format!("cgacct_socket_bytes_total{{{l},direction=\"tx\"}} 20"),
            format!("cgacct_socket_packets_total{{{l},direction=\"tx\"}} 2"),
            "cgacct_tc_unattributed_bytes_total{direction=\"egress\"} 20".to_string(),
            "cgacct_interface_packets_total{interface=\"veth0\",direction=\"ingress\"} 1".to_string(),
            "cgacct_cgroups 3".to_string(),
            format!("cgacct_class_bytes_total{{{l},class=\"cluster\",direction=\"tx\"}} 20"),
            format!("cgacct_class_packets_total{{{l},class=\"cluster\",direction=\"rx\"}} 1"),
        ] {
            assert!(text.lines().any(|x| x == want), "missing {want:?} in\n{text}");
        }
        assert_eq!(text.matches("cgacct_socket_bytes_total{").count(), 2, "{text}");
        let mut text = text;
        let cap = Capacity {
            maps: vec![capacity::MapUse {
                name: "cgroup_stats".into(),
                entries: 16,
                max_entries: 16,
                full_percent: 100,
                layout_key: Some("[maps] cgroups"),
                overflow: None,
                warns: true,
            }],
            overflow: vec![capacity::Bucket {
                bucket: "departed_tc",
                map: "departed".into(),
                family: "tc",
                packets: 3,
                bytes: 300,
            }],
        };
        render_capacity(&mut text, &cap);
        for want in [
            "cgacct_overflow_packets_total{map=\"departed\",family=\"tc\"} 3",
            "cgacct_overflow_bytes_total{map=\"departed\",family=\"tc\"} 300",
            "cgacct_map_entries{map=\"cgroup_stats\"} 16",
            "cgacct_map_max_entries{map=\"cgroup_stats\"} 16",
        ] {
            assert!(text.lines().any(|x| x == want), "missing {want:?} in\n{text}");
        }
        // Every family has HELP and TYPE before its samples.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().expect("name");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
        std::fs::remove_dir_all(&d).expect("cleanup");
    }
}
