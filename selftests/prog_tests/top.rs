//! `cgacct-pin top --once --json`: exact counts over the interval, rates
//! from them, and names of cgroups made after it started (followed with
//! inotify, no second walk).
use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Stdio},
};

use crate::{export::Reaped, require_kernel, world::World};

const CID: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

#[test]
fn top_once_json_counts_and_names_new_cgroups() {
    require_kernel!();
    let mut w = World::new(&["apps.slice"]);
    w.write_layout();
    w.apply();
    let mut child = Command::new(crate::world::BIN)
        .args(["top", "--once", "--json", "--interval", "8", "--root"])
        .arg(&w.root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn top");
    let stderr = child.stderr.take().expect("stderr");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut top = Reaped(child);
    let mut line = String::new();
    BufReader::new(stderr)
        .read_line(&mut line)
        .expect("top starts sampling");
    assert!(line.starts_with("sampling"), "{line:?}");

    // Made after top walked cgroupfs: top must learn it by following.
    let scope = format!("apps.slice/docker-{CID}.scope");
    w.add_cgroup(&scope);
    w.send_udp(&scope, false, 41, 250);

    let mut out = String::new();
    stdout.read_to_string(&mut out).expect("top output");
    let status = top.0.wait().expect("top exits");
    assert!(status.success(), "top failed: {out}");
    let frame: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(frame["tree_walks"], 1, "{frame}");
    let path = format!("/{}", w.cgroup(&scope));
    let rows = frame["cgroups"].as_array().expect("cgroups");
    let row = rows
        .iter()
        .find(|r| r["cgroup"] == path.as_str())
        .unwrap_or_else(|| panic!("no row for {path}: {frame}"));
    assert_eq!(row["name"], "docker:fedcba987654");
    assert_eq!(row["container_id"], CID);
    assert_eq!(row["tx_packets"], 41);
    assert_eq!(row["tx_bytes"], 41 * (250 + 28));
    assert_eq!(row["rx_packets"], 0);
    let secs = frame["interval_seconds"].as_f64().expect("seconds");
    assert!((7.9..12.0).contains(&secs), "{secs}");
    let rate = row["tx_bytes_per_sec"].as_f64().expect("rate");
    assert!((rate - (41.0 * 278.0) / secs).abs() < 1e-6, "{rate}");
    // The busiest cgroup of our world comes first among ours.
    let ours: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| {
            r["cgroup"]
                .as_str()
                .is_some_and(|c| c.starts_with(&format!("/{}", w.prefix)))
        })
        .collect();
    assert_eq!(ours[0]["cgroup"], path.as_str());
}
