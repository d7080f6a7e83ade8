//! Short-lived cgroups: a cgroup that sends and is removed at once keeps its
//! final totals (`cgacct-pin removed`), and its parent's subtree totals do
//! not go backwards when it goes.
use std::{fs, time::Instant};

use crate::{require_kernel, world::World};

const SUBTREE_KEYS: [&str; 8] = [
    "rx_bytes",
    "rx_packets",
    "tx_bytes",
    "tx_packets",
    "tc_egress_bytes",
    "tc_egress_packets",
    "tc_ingress_bytes",
    "tc_ingress_packets",
];

fn removed(w: &World) -> Vec<serde_json::Value> {
    let out = w.cgacct(&["removed", "--json", "--root", w.root.to_str().expect("utf-8")]);
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("json")
}

#[test]
fn short_lived_cgroups_keep_final_totals_and_parents_never_drop() {
    require_kernel!();
    let mut w = World::new(&["jobs.slice"]);
    w.write_layout();
    w.apply();
    let before = w.stat("jobs.slice");
    assert_eq!(before["removed_cgroups"], 0);

    // A job: made, sends, removed, as fast as the test can.
    let started = Instant::now();
    w.add_cgroup("jobs.slice/job1.scope");
    w.send_udp("jobs.slice/job1.scope", false, 20, 100);
    let job_path = w.cgroup_mount.join(w.cgroup("jobs.slice/job1.scope"));
    let live = w.stat("jobs.slice");
    fs::remove_dir(&job_path).expect("rmdir job1");
    let lived = started.elapsed();
    let after = w.stat("jobs.slice");
    for key in SUBTREE_KEYS {
        assert_eq!(
            after[key], live[key],
            "{key} changed when the child went: {after:?}"
        );
    }
    assert_eq!(after["tx_packets"], before["tx_packets"] + 20);
    assert_eq!(after["tx_bytes"], before["tx_bytes"] + 20 * 128);
    assert_eq!(after["removed_cgroups"], 1);
    assert_eq!(after["subtree_cgroups"], 1, "only jobs.slice itself is left");
    eprintln!(
        "job1 lived {:.0} ms (mkdir to rmdir)",
        lived.as_secs_f64() * 1000.0
    );

    // Nested: the grandchild goes first, then its parent; everything lands
    // in jobs.slice and each record tells its own and its subtree's totals.
    w.add_cgroup("jobs.slice/job2.scope");
    w.add_cgroup("jobs.slice/job2.scope/step.scope");
    w.send_udp("jobs.slice/job2.scope/step.scope", true, 7, 52);
    let live = w.stat("jobs.slice");
    fs::remove_dir(w.cgroup_mount.join(w.cgroup("jobs.slice/job2.scope/step.scope"))).expect("rmdir step");
    let mid = w.stat("jobs.slice");
    fs::remove_dir(w.cgroup_mount.join(w.cgroup("jobs.slice/job2.scope"))).expect("rmdir job2");
    let end = w.stat("jobs.slice");
    for key in SUBTREE_KEYS {
        assert_eq!(mid[key], live[key], "{key}");
        assert_eq!(end[key], live[key], "{key}");
    }
    assert_eq!(end["tx_packets"], before["tx_packets"] + 27);
    assert_eq!(end["removed_cgroups"], 3);

    // The final totals are retrievable afterwards.
    let recs = removed(&w);
    let find = |rel: &str| -> serde_json::Value {
        let path = format!("/{}", w.cgroup(rel));
        recs.iter()
            .find(|r| r["cgroup"] == path.as_str())
            .unwrap_or_else(|| panic!("no record for {path}: {recs:?}"))
            .clone()
    };
    let job1 = find("jobs.slice/job1.scope");
    assert_eq!(job1["own"]["socket"]["tx_packets"], 20);
    assert_eq!(job1["own"]["socket"]["tx_bytes"], 20 * 128);
    assert_eq!(job1["own"]["tc"]["tx_packets"], 20, "TC egress at the host veth");
    assert_eq!(job1["parent_id"], w.cgroup_id("jobs.slice"));
    assert_eq!(job1["descendants"], 0);
    let step = find("jobs.slice/job2.scope/step.scope");
    assert_eq!(step["own"]["socket"]["tx_bytes"], 7 * (52 + 48));
    let job2 = find("jobs.slice/job2.scope");
    assert_eq!(job2["own"]["socket"]["tx_packets"], 0);
    assert_eq!(job2["subtree"]["socket"]["tx_packets"], 7);
    assert_eq!(job2["descendants"], 1);
    assert!(job1["age_seconds"].as_f64().expect("age") < 120.0);
}
