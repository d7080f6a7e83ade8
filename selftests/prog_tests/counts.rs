//! Exact packet and byte counts from real traffic, read three ways: `cat`
//! of `net.stat`, the pinned maps through the library, and `bpftool map
//! dump -j`.
use std::{collections::BTreeMap, process::Command};

use cgacct_common::Counters;
use cgacct_pin::{bpffs::names::Pins, report::read};

use crate::{
    require_kernel,
    world::{subtest, World},
};

const N4: u64 = 37;
const P4: u64 = 200; // IPv4 datagram: 20 IP + 8 UDP + payload
const N6: u64 = 23;
const P6: u64 = 1000; // IPv6 datagram: 40 IP + 8 UDP + payload

/// Per-CPU values summed, as bpftool prints them with BTF.
fn bpftool_totals(path: &std::path::Path) -> BTreeMap<u64, Counters> {
    let v = bpftool_dump(path);
    let mut totals = BTreeMap::new();
    for entry in v.as_array().expect("array") {
        let f = &entry["formatted"];
        let key = f["key"].as_u64().expect("formatted key: the map must carry BTF");
        let mut c = Counters::default();
        // Per-CPU maps print each CPU's value; shared ones (kernels without
        // bpf_map_lookup_percpu_elem) their one value.
        let slots = match f["values"].as_array() {
            Some(cpus) => cpus.iter().map(|cpu| &cpu["value"]).collect(),
            None => vec![&f["value"]],
        };
        for val in slots {
            c.add(&named_counters(val));
        }
        totals.insert(key, c);
    }
    totals
}

/// A `Counters` value as bpftool prints it from BTF.
fn named_counters(val: &serde_json::Value) -> Counters {
    let get = |k: &str| val[k].as_u64().expect("named field");
    Counters {
        rx_bytes: get("rx_bytes"),
        rx_packets: get("rx_packets"),
        tx_bytes: get("tx_bytes"),
        tx_packets: get("tx_packets"),
    }
}

/// cgroup id -> counters of a slot array as bpftool dumps it: every CPU's
/// slot added to the cgroup id it holds (0: free).
fn bpftool_slot_totals(path: &std::path::Path) -> BTreeMap<u64, Counters> {
    let mut totals: BTreeMap<u64, Counters> = BTreeMap::new();
    for entry in bpftool_dump(path).as_array().expect("array") {
        for cpu in entry["formatted"]["values"].as_array().expect("per-CPU values") {
            let slot = &cpu["value"];
            let id = slot["id"].as_u64().expect("named field id");
            if id != 0 {
                totals
                    .entry(id)
                    .or_default()
                    .add(&named_counters(&slot["counters"]));
            }
        }
    }
    totals
}

fn bpftool_dump(path: &std::path::Path) -> serde_json::Value {
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(path)
        .arg("-j")
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bpftool json")
}

#[test]
fn udp_ipv4_and_ipv6_counted_exactly_three_ways() {
    require_kernel!();
    let w = World::new(&[
        "web.slice",
        "web.slice/v4.scope",
        "web.slice/v6.scope",
        "idle.scope",
    ]);
    w.write_layout();
    w.apply();
    // cgacct-pin has exited: everything below counts through pinned links.
    w.send_udp("web.slice/v4.scope", false, N4 as u32, P4 as usize);
    w.send_udp("web.slice/v6.scope", true, N6 as u32, P6 as usize);

    let v4 = Counters {
        tx_bytes: N4 * (P4 + 28),
        tx_packets: N4,
        ..Default::default()
    };
    let v6 = Counters {
        tx_bytes: N6 * (P6 + 48),
        tx_packets: N6,
        ..Default::default()
    };

    // 1. cat net.stat
    let s4 = w.stat("web.slice/v4.scope");
    let s6 = w.stat("web.slice/v6.scope");
    subtest("net_stat_of_each_sender", || {
        for (s, c, id) in [
            (&s4, &v4, w.cgroup_id("web.slice/v4.scope")),
            (&s6, &v6, w.cgroup_id("web.slice/v6.scope")),
        ] {
            assert_eq!(s["cgroup_id"], id);
            assert_eq!(s["subtree_cgroups"], 1);
            assert_eq!(s["self_tx_packets"], c.tx_packets, "{s:?}");
            assert_eq!(s["self_tx_bytes"], c.tx_bytes, "{s:?}");
            assert_eq!(s["self_rx_packets"], 0, "{s:?}");
            assert_eq!(s["tx_bytes"], c.tx_bytes, "{s:?}");
            // The datagrams leave through our host veth: TC egress, same socket cgroup.
            assert_eq!(s["self_tc_egress_packets"], c.tx_packets, "{s:?}");
            assert_eq!(s["self_tc_egress_bytes"], c.tx_bytes, "{s:?}");
            assert_eq!(s["self_tc_ingress_packets"], 0, "{s:?}");
        }
    });
    subtest("subtree_totals_are_sums", || {
        // Subtree totals: the parent's file is the sum of its children.
        let parent = w.stat("web.slice");
        assert_eq!(parent["subtree_cgroups"], 3);
        assert_eq!(parent["self_tx_packets"], 0);
        for key in [
            "tx_bytes",
            "tx_packets",
            "rx_bytes",
            "rx_packets",
            "tc_egress_bytes",
            "tc_egress_packets",
        ] {
            assert_eq!(parent[key], s4[key] + s6[key], "{key}: {parent:?}");
        }
        assert_eq!(parent["tx_packets"], N4 + N6);
        let top = w.stat("");
        assert_eq!(top["subtree_cgroups"], 5);
        assert_eq!(top["tx_bytes"], v4.tx_bytes + v6.tx_bytes);
        let idle = w.stat("idle.scope");
        assert_eq!((idle["tx_packets"], idle["rx_packets"]), (0, 0));
    });

    // 2. the pinned maps through the library
    let pins = Pins::new(&w.root, true);
    subtest("pinned_maps", || {
        let snap = read::snapshot(&pins).expect("snapshot");
        assert_eq!(snap.cgroups[&w.cgroup_id("web.slice/v4.scope")], v4);
        assert_eq!(snap.cgroups[&w.cgroup_id("web.slice/v6.scope")], v6);
        let tc4 = Counters {
            rx_bytes: 0,
            rx_packets: 0,
            tx_bytes: v4.tx_bytes,
            tx_packets: N4,
        };
        assert_eq!(snap.tc_cgroups[&w.cgroup_id("web.slice/v4.scope")], tc4);
        let ifindex: u32 = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", w.host_if))
            .expect("ifindex")
            .trim()
            .parse()
            .expect("number");
        let iface = snap.interfaces[&ifindex];
        // The interface also carries ARP/ND; our datagrams are a lower bound.
        assert!(iface.tx_packets >= N4 + N6, "{iface:?}");
        assert!(iface.tx_bytes >= v4.tx_bytes + v6.tx_bytes, "{iface:?}");
    });

    // 3. bpftool
    subtest("bpftool_dump", || {
        // A cgroup's counts are its map entry's and its slots' together.
        let mut dumped = bpftool_totals(&pins.map("CGROUP_STATS"));
        for (id, c) in bpftool_slot_totals(&pins.map("CGROUP_SLOTS")) {
            dumped.entry(id).or_default().add(&c);
        }
        assert_eq!(dumped[&w.cgroup_id("web.slice/v4.scope")], v4);
        assert_eq!(dumped[&w.cgroup_id("web.slice/v6.scope")], v6);
    });
}

#[test]
fn reads_are_live() {
    require_kernel!();
    let w = World::new(&["a.scope"]);
    w.write_layout();
    w.apply();
    assert_eq!(w.stat("a.scope")["tx_packets"], 0);
    w.send_udp("a.scope", false, 5, 64);
    assert_eq!(w.stat("a.scope")["tx_packets"], 5);
    w.send_udp("a.scope", false, 7, 64);
    let s = w.stat("a.scope");
    assert_eq!(s["tx_packets"], 12);
    assert_eq!(s["tx_bytes"], 12 * (64 + 28));
}

/// The whole `net.stat` text of a cgroup and of its parent after known
/// traffic: every key, in order, with the value it must have; and the same
/// keys and values from `status --json`.
#[test]
fn net_stat_of_a_known_state_is_exactly_this_text() {
    require_kernel!();
    const N: u64 = 9;
    const P: u64 = 300;
    let w = World::new(&["a.scope"]);
    w.write_layout();
    w.apply();
    w.send_udp("a.scope", false, N as u32, P as usize);
    let pins = Pins::new(&w.root, true);
    let text = |rel: &str| std::fs::read_to_string(pins.stats_file(&w.cgroup(rel))).expect("read net.stat");
    let (packets, bytes) = (N, N * (P + 28));
    // UDP to a listening peer: no TCP event, no drop. The TCP health keys
    // follow the traffic keys, each with its self_ key, all but those apply
    // said this kernel cannot count.
    let absent = crate::health::absent_keys(&w);
    let health: String = cgacct_common::health::KEYS
        .iter()
        .filter(|k| !absent.iter().any(|a| a == *k))
        .map(|k| format!("{k} 0\nself_{k} 0\n"))
        .collect();
    let expected = |id: u64, cgroups: u64, own: bool| {
        let own = |v: u64| if own { v } else { 0 };
        format!(
            "cgroup_id {id}\nsubtree_cgroups {cgroups}\nremoved_cgroups 0\n\
             rx_bytes 0\nrx_packets 0\ntx_bytes {bytes}\ntx_packets {packets}\n\
             self_rx_bytes 0\nself_rx_packets 0\nself_tx_bytes {}\nself_tx_packets {}\n\
             tc_ingress_bytes 0\ntc_ingress_packets 0\ntc_egress_bytes {bytes}\ntc_egress_packets {packets}\n\
             self_tc_ingress_bytes 0\nself_tc_ingress_packets 0\nself_tc_egress_bytes {}\nself_tc_egress_packets {}\n\
             veth_rx_bytes 0\nveth_rx_packets 0\nveth_tx_bytes 0\nveth_tx_packets 0\n\
             self_veth_rx_bytes 0\nself_veth_rx_packets 0\nself_veth_tx_bytes 0\nself_veth_tx_packets 0\n{health}",
            own(bytes),
            own(packets),
            own(bytes),
            own(packets),
        )
    };
    let cases = [
        ("a.scope", expected(w.cgroup_id("a.scope"), 1, true)),
        ("", expected(w.cgroup_id(""), 2, false)),
    ];
    for (rel, want) in cases {
        // The file where the kernel has cgroup iterators; `status --json`,
        // which sums the maps over the cgroup tree itself, on every kernel.
        if crate::world::stats_files() {
            assert_eq!(text(rel), want, "net.stat of {rel:?}");
        }
        let keys = read::parse_stat(&want).expect("parse");
        assert_eq!(w.status_stat(rel), keys, "status --json stats of {rel:?}");
    }
}

/// Counters of every width `net.stat` can print, from 0 to `u64::MAX` and
/// on both sides of each place where the iterator's number formatting
/// changes (10^8 and 10^16), written into the pinned counter maps of one
/// cgroup: each line of its file is the key and the value's decimal text,
/// exactly, as `u64::to_string` makes it.
#[test]
fn net_stat_prints_every_width_of_counter_exactly() {
    use aya::maps::{HashMap, Map, MapData, PerCpuHashMap, PerCpuValues};
    require_kernel!();
    if !crate::world::stats_files() {
        eprintln!(
            "SKIPPED net_stat_prints_every_width_of_counter_exactly: no cgroup iterators, no net.stat text"
        );
        return;
    }
    let w = World::new(&["a.scope"]);
    w.write_layout();
    w.apply();
    let pins = Pins::new(&w.root, true);
    let id = w.cgroup_id("a.scope");
    let values: [u64; 12] = [
        0,
        7,
        10,
        99_999_999,
        100_000_000,
        100_000_001,
        1_234_567_890_123,
        9_999_999_999_999_999,
        10_000_000_000_000_000,
        10_000_000_000_000_001,
        u64::MAX - 1,
        u64::MAX,
    ];
    let cpus = cgacct_pin::observe::kernel::nr_cpus().expect("CPUs") as usize;
    let maps = [
        cgacct_common::maps::CGROUP_STATS,
        cgacct_common::maps::TC_CGROUP_STATS,
        cgacct_common::maps::VETH_STATS,
    ];
    for (m, name) in maps.iter().enumerate() {
        let v = &values[4 * m..4 * m + 4];
        let c = Counters {
            rx_bytes: v[0],
            rx_packets: v[1],
            tx_bytes: v[2],
            tx_packets: v[3],
        };
        let data = MapData::from_pin(pins.map(name)).expect("pinned counter map");
        match Map::from_map_data(data).expect("map") {
            // All on one CPU: the sum of the others is 0.
            Map::PerCpuHashMap(d) => {
                let mut per_cpu = vec![Counters::default(); cpus];
                per_cpu[cpus - 1] = c;
                let mut map: PerCpuHashMap<MapData, u64, Counters> =
                    Map::PerCpuHashMap(d).try_into().expect("per-CPU map");
                map.insert(id, PerCpuValues::try_from(per_cpu).expect("values"), 0)
                    .expect("insert");
            }
            Map::HashMap(d) => {
                let mut map: HashMap<MapData, u64, Counters> = Map::HashMap(d).try_into().expect("map");
                map.insert(id, c, 0).expect("insert");
            }
            _ => panic!("{name} is neither a per-CPU nor a shared hash"),
        }
    }
    let text = std::fs::read_to_string(pins.stats_file(&w.cgroup("a.scope"))).expect("read net.stat");
    let keys = [
        "self_rx_bytes",
        "self_rx_packets",
        "self_tx_bytes",
        "self_tx_packets",
        "self_tc_ingress_bytes",
        "self_tc_ingress_packets",
        "self_tc_egress_bytes",
        "self_tc_egress_packets",
        "self_veth_rx_bytes",
        "self_veth_rx_packets",
        "self_veth_tx_bytes",
        "self_veth_tx_packets",
    ];
    for (key, v) in keys.iter().zip(values) {
        let line = format!("\n{key} {v}\n");
        assert!(text.contains(&line), "{line:?} not in net.stat:\n{text}");
        let subtree = format!("\n{} {v}\n", &key["self_".len()..]);
        assert!(text.contains(&subtree), "{subtree:?} not in net.stat:\n{text}");
    }
    assert!(text.ends_with('\n') && !text.contains("\n\n"), "{text}");
}
