//! How long `cgacct-pin watch` takes to follow the host: from `mkdir` of a
//! cgroup to a readable `net.stat`, from `rmdir` to the file gone, from a
//! veth's creation (from the kernel's acknowledgement of the rtnetlink
//! request) to both TC links pinned, and from its deletion (acknowledged)
//! to the links unpinned. A measurement, not a test: it
//! asserts nothing about time and is ignored by default.
//!
//!   scripts/watch-latency.sh            # 1000 events of each kind
//!   CGACCT_WATCH_EVENTS=200 scripts/watch-latency.sh
use std::{
    fs,
    time::{Duration, Instant},
};

use cgacct_pin::{
    bpffs::names::{Direction, Pins},
    observe::rtnl::Rtnl,
};

use crate::{
    require_kernel,
    watch::{Veths, Watcher},
    world::World,
};

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{what:<34} n={:<5} median {:>7.3} ms  p90 {:>7.3} ms  p99 {:>7.3} ms  worst {:>8.3} ms",
        v.len(),
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(v[v.len() - 1])
    );
}

/// Polls `pred` every 50 µs; returns the time from `t0` to success.
fn time_until(t0: Instant, what: &str, mut pred: impl FnMut() -> bool) -> Duration {
    let deadline = t0 + Duration::from_secs(10);
    loop {
        if pred() {
            return t0.elapsed();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(50));
    }
}

#[test]
#[ignore = "measurement: run scripts/watch-latency.sh"]
fn watch_latency() {
    require_kernel!();
    let n: usize = std::env::var("CGACCT_WATCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let w = World::new(&["lat.slice"]);
    w.write_layout_tc(&format!("{}v*", w.prefix));
    let watcher = Watcher::start(&w, &[]);
    let pins = Pins::new(&w.root, true);

    let (mut mk, mut rm) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // The stats files' latencies need them (cgroup iterators).
    let files = crate::world::stats_files();
    if !files {
        eprintln!(
            "SKIPPED {} (its net.stat part): this kernel has no cgroup iterators \
             (bpf_iter_cgroup, Linux >= 6.1): no net.stat files to time",
            module_path!()
        );
    }
    for i in (0..n).filter(|_| files) {
        let rel = w.cgroup(&format!("lat.slice/c{i}.scope"));
        let dir = w.cgroup_mount.join(&rel);
        let stats = pins.stats_file(&rel);
        let t0 = Instant::now();
        fs::create_dir(&dir).expect("mkdir");
        mk.push(time_until(t0, "net.stat", || {
            fs::read_to_string(&stats).is_ok_and(|s| s.starts_with("cgroup_id "))
        }));
        let t0 = Instant::now();
        fs::remove_dir(&dir).expect("rmdir");
        rm.push(time_until(t0, "net.stat removal", || !stats.exists()));
    }

    let mut rtnl = Rtnl::open().expect("rtnetlink");
    let _veths = Veths(
        (0..n)
            .flat_map(|i| [format!("{}v{i}", w.prefix), format!("{}w{i}", w.prefix)])
            .collect(),
    );
    let (mut up, mut down) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut add_call, mut del_call) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let (name, peer) = (format!("{}v{i}", w.prefix), format!("{}w{i}", w.prefix));
        let (ing, eg) = (
            pins.tc_link(&name, Direction::Ingress),
            pins.tc_link(&name, Direction::Egress),
        );
        let t0 = Instant::now();
        rtnl.add_veth(&name, &peer).expect("add veth");
        // The kernel acknowledged: the veth exists from here on.
        let t1 = Instant::now();
        add_call.push(t1 - t0);
        up.push(time_until(t1, "tc links", || ing.exists() && eg.exists()));
        let ifindex: u32 = fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
            .expect("ifindex")
            .trim()
            .parse()
            .expect("number");
        let t0 = Instant::now();
        rtnl.del_link(ifindex).expect("del veth");
        let t1 = Instant::now();
        del_call.push(t1 - t0);
        down.push(time_until(t1, "tc unpin", || !ing.exists() && !eg.exists()));
    }
    drop(watcher);
    println!(
        "\ncgacct-pin watch latency ({} CPUs, load average {}):",
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    if files {
        report("mkdir -> readable net.stat", mk);
        report("rmdir -> net.stat removed", rm);
    }
    report("veth created -> tc links pinned", up);
    report("veth deleted -> tc links unpinned", down);
    println!("for comparison, the kernel's own time for the requests (not watcher latency):");
    report("  RTM_NEWLINK veth until ACK", add_call);
    report("  RTM_DELLINK veth until ACK", del_call);
}
