//! Full maps: with more cgroups sending than `[maps] cgroups` has room
//! for, every packet is still counted once, in its cgroup's entry or in the
//! overflow bucket of the map that was full (the root cgroup's `net.stat`,
//! `status`), and `status` and `apply` warn about the full map, naming the
//! layout key to raise.
use std::{fs, process::Output};

use cgacct_pin::{bpffs::names::Pins, report::read};

use crate::{
    attribution::quiet_link,
    export::{http_get, start_exporter},
    require_kernel,
    world::World,
};

const SIZE: u32 = 16;
const SENDERS: u32 = 24;
const P: u64 = 100;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fills every CPU's every slot of the cgroup slot arrays with ids that
/// name no cgroup (and no counts).
fn take_every_slot(pins: &Pins) {
    use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
    use cgacct_common::{maps, Slot};
    let cpus = cgacct_pin::observe::kernel::nr_cpus().expect("CPUs") as usize;
    for name in [maps::CGROUP_SLOTS, maps::TC_CGROUP_SLOTS, maps::VETH_SLOTS] {
        let data = MapData::from_pin(pins.map(name)).expect("slot array pin");
        let mut array: PerCpuArray<MapData, Slot> = Map::PerCpuArray(data).try_into().expect("per-CPU array");
        for i in 0..array.len() {
            let taken = Slot {
                id: u64::MAX - u64::from(i),
                ..Slot::default()
            };
            let values = PerCpuValues::try_from(vec![taken; cpus]).expect("values");
            array.set(i, values, 0).expect("set slot");
        }
    }
}

#[test]
fn a_full_map_counts_what_it_cannot_hold_as_overflow() {
    require_kernel!();
    let names: Vec<String> = (0..SENDERS).map(|i| format!("c{i}.scope")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let w = World::new(&refs);
    quiet_link(&w);
    w.write_layout();
    // Small maps, and a stats file for the root cgroup: it carries the
    // overflow keys.
    let text = fs::read_to_string(&w.layout).expect("layout");
    let text = text.replace("[tc]\n", &format!("[maps]\ncgroups = {SIZE}\n[tc]\n"));
    let text = text.replace("cgroups = [\"/", "cgroups = [\"/\", \"/");
    fs::write(&w.layout, text).expect("layout");
    w.apply();
    // Every slot in front of the cgroup maps taken by an id of no cgroup,
    // as on a host whose busy cgroups hold them all: the senders' packets
    // go to the maps themselves.
    let pins = Pins::new(&w.root, true);
    take_every_slot(&pins);

    let mut sent = (0u64, 0u64);
    for (i, name) in names.iter().enumerate() {
        let n = i as u64 + 1;
        w.send_udp(name, false, n as u32, P as usize);
        sent.0 += n;
        sent.1 += n * (P + 28);
    }

    let snap = read::snapshot(&pins).expect("snapshot");
    let ids: Vec<u64> = names.iter().map(|c| w.cgroup_id(c)).collect();
    let counted = ids
        .iter()
        .filter_map(|id| snap.cgroups.get(id))
        .fold((0, 0), |(p, b), c| (p + c.tx_packets, b + c.tx_bytes));
    let root = w.root_stat();
    let over = (
        root.get("overflow_cgroup_stats_packets").copied().unwrap_or(0),
        root.get("overflow_cgroup_stats_bytes").copied().unwrap_or(0),
    );
    eprintln!(
        "{SENDERS} cgroups sent {} datagrams ({} bytes) with room for {SIZE}: {} cgroups have \
         entries, {} packets ({} bytes) counted, {} ({} bytes) in overflow",
        sent.0,
        sent.1,
        snap.cgroups.len(),
        counted.0,
        counted.1,
        over.0,
        over.1
    );
    assert_eq!(snap.cgroups.len(), SIZE as usize, "{:?}", snap.cgroups.keys());
    assert!(over.0 > 0, "nothing overflowed: {root:?}");
    assert_eq!(counted.0 + over.0, sent.0, "packets: {root:?}");
    assert_eq!(counted.1 + over.1, sent.1, "bytes: {root:?}");
    // The per-cgroup files agree with the maps: a cgroup without an entry
    // shows zeros, not someone else's counts.
    for (name, id) in names.iter().zip(&ids) {
        let own = snap.cgroups.get(id).map_or(0, |c| c.tx_packets);
        assert_eq!(w.stat(name)["self_tx_packets"], own, "{name}");
    }

    // TC saw every frame on the interface: each is in tc_cgroup_stats or
    // in its overflow.
    let tc = snap.tc_cgroups.values().fold((0, 0), |(p, b), c| {
        (p + c.tx_packets + c.rx_packets, b + c.tx_bytes + c.rx_bytes)
    });
    let iface = snap.interfaces.values().fold((0, 0), |(p, b), c| {
        (p + c.tx_packets + c.rx_packets, b + c.tx_bytes + c.rx_bytes)
    });
    let tc_over = (
        root["overflow_tc_cgroup_stats_packets"],
        root["overflow_tc_cgroup_stats_bytes"],
    );
    assert!(tc_over.0 > 0, "{root:?}");
    assert_eq!(tc.0 + tc_over.0, iface.0, "tc packets: {root:?}");
    assert_eq!(tc.1 + tc_over.1, iface.1, "tc bytes: {root:?}");
    assert_eq!(root["overflow_iface_stats_packets"], 0);

    // status: text and JSON, with the warning naming the key.
    let root_arg = w.root.to_str().expect("utf-8");
    let out = w.cgacct(&["status", "--root", root_arg]);
    let (text, err) = (String::from_utf8_lossy(&out.stdout).into_owned(), stderr(&out));
    assert!(
        err.contains("warning: map cgroup_stats is 100% full") && err.contains("[maps] cgroups"),
        "{err}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("overflow cgroup_stats "))
        .unwrap_or_else(|| panic!("no overflow line in:\n{text}"));
    assert!(line.contains(&format!(" {} packets", over.0)), "{line}");
    let out = w.cgacct(&["status", "--json", "--root", root_arg]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let m = v["maps"]
        .as_array()
        .expect("maps")
        .iter()
        .find(|m| m["name"] == "cgroup_stats")
        .expect("cgroup_stats in maps")
        .clone();
    assert_eq!(m["entries"], SIZE);
    assert_eq!(m["max_entries"], SIZE);
    assert_eq!(m["layout_key"], "[maps] cgroups");
    assert_eq!(m["overflow"]["packets"], over.0);
    assert_eq!(m["overflow"]["bytes"], over.1);

    // The exporter serves the same.
    let (_exporter, addr) = start_exporter(&w);
    let text = http_get(&addr, "/metrics").expect("scrape");
    for want in [
        format!(
            "cgacct_overflow_packets_total{{map=\"cgroup_stats\",family=\"socket\"}} {}",
            over.0
        ),
        format!(
            "cgacct_overflow_bytes_total{{map=\"cgroup_stats\",family=\"socket\"}} {}",
            over.1
        ),
        format!("cgacct_map_entries{{map=\"cgroup_stats\"}} {SIZE}"),
        format!("cgacct_map_max_entries{{map=\"cgroup_stats\"}} {SIZE}"),
    ] {
        assert!(
            text.lines().any(|l| l == want),
            "no {want:?} in the exporter's text"
        );
    }

    // apply warns too (and changes nothing).
    let out = w.cgacct(&["apply", w.layout_arg()]);
    assert!(
        stderr(&out).contains("warning: map cgroup_stats is 100% full"),
        "{}",
        stderr(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to do"));
}

/// `departed` full: more parents of removed cgroups than it has room for.
/// Each removed cgroup's totals are in its parent's subtree keys or in the
/// departed overflow buckets.
#[test]
fn a_full_departed_map_counts_removed_totals_as_overflow() {
    require_kernel!();
    const PARENTS: u64 = 18;
    let w = {
        let mut w = World::new(&[]);
        for i in 0..PARENTS {
            w.add_cgroup(&format!("p{i}.slice"));
            w.add_cgroup(&format!("p{i}.slice/job.scope"));
        }
        w
    };
    w.write_layout();
    let text = fs::read_to_string(&w.layout).expect("layout");
    let text = text.replace("[tc]\n", &format!("[maps]\ncgroups = {SIZE}\n[tc]\n"));
    let text = text.replace("cgroups = [\"/", "cgroups = [\"/\", \"/");
    fs::write(&w.layout, text).expect("layout");
    w.apply();
    // Every slot in front of the cgroup maps taken by an id of no cgroup,
    // as on a host whose busy cgroups hold them all: the senders' packets
    // go to the maps themselves.
    let pins = Pins::new(&w.root, true);
    take_every_slot(&pins);
    let mut sent = (0, 0);
    for i in 0..PARENTS {
        let job = format!("p{i}.slice/job.scope");
        w.send_udp(&job, false, (i + 1) as u32, P as usize);
        sent.0 += i + 1;
        sent.1 += (i + 1) * (P + 28);
        fs::remove_dir(w.cgroup_mount.join(w.cgroup(&job))).expect("rmdir job");
    }
    let root = w.root_stat();
    let mut kept = (0, 0, 0);
    for i in 0..PARENTS {
        let s = w.stat(&format!("p{i}.slice"));
        kept.0 += s["tx_packets"];
        kept.1 += s["tx_bytes"];
        kept.2 += s["tc_egress_packets"];
    }
    let over = (
        root["overflow_departed_packets"],
        root["overflow_departed_bytes"],
        root["overflow_departed_tc_packets"],
    );
    eprintln!(
        "{PARENTS} parents with a removed child, room for {SIZE}: {} of {} packets in parents' \
         subtree keys, {} in overflow",
        kept.0, sent.0, over.0
    );
    assert!(over.0 > 0, "{root:?}");
    assert_eq!(kept.0 + over.0, sent.0, "{root:?}");
    assert_eq!(kept.1 + over.1, sent.1, "{root:?}");
    assert_eq!(kept.2 + over.2, sent.0, "{root:?}");
    let out = w.cgacct(&["status", "--root", w.root.to_str().expect("utf-8")]);
    assert!(
        stderr(&out).contains("warning: map departed is 100% full"),
        "{}",
        stderr(&out)
    );
}
