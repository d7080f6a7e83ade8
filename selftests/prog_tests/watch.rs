//! `cgacct-pin watch`: stats files follow cgroup creation and removal, TC
//! follows veth churn, and a watcher killed and started again loses nothing.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cgacct_pin::{bpffs::names::Pins, observe::rtnl::Rtnl};

use crate::{export::Reaped, require_kernel, world::World};

/// A running watcher, its output in a file; killed by PID and the file
/// removed on every exit path.
pub struct Watcher {
    child: Option<Reaped>,
    pub log: PathBuf,
}

impl Watcher {
    pub fn start(w: &World, extra: &[&str]) -> Watcher {
        let log = std::env::temp_dir().join(format!("{}-watch-{}.log", w.prefix, std::process::id()));
        let mut watcher = Watcher { child: None, log };
        watcher.spawn(w, extra);
        watcher
    }

    fn spawn(&mut self, w: &World, extra: &[&str]) {
        let out = fs::File::create(&self.log).expect("watch log");
        let err = out.try_clone().expect("log fd");
        let child = Command::new(crate::world::BIN)
            .arg("watch")
            .arg(&w.layout)
            .args(extra)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn cgacct-pin watch");
        self.child = Some(Reaped(child));
        // Its start reconcile is a whole apply: over 30 s in a VM under TCG.
        wait_until("the watcher to start", Duration::from_secs(180), || {
            self.assert_running();
            self.output().contains(" watching ")
        });
    }

    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(c) = &mut self.child {
            if let Ok(Some(status)) = c.0.try_wait() {
                panic!("watcher exited with {status}:\n{}", self.output());
            }
        }
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        self.child = None; // Reaped's Drop kills by PID and reaps
    }

    pub fn restart(&mut self, w: &World) {
        self.kill();
        self.spawn(w, &[]);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.child = None;
        let _ = fs::remove_file(&self.log);
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn pins(w: &World) -> Pins {
    Pins::new(&w.root, true)
}

/// `nr_dying_descendants` of one of our cgroups.
fn dying(w: &World, rel: &str) -> u64 {
    let text =
        fs::read_to_string(w.cgroup_mount.join(w.cgroup(rel)).join("cgroup.stat")).expect("cgroup.stat");
    text.lines()
        .find_map(|l| l.strip_prefix("nr_dying_descendants "))
        .and_then(|v| v.parse().ok())
        .expect("nr_dying_descendants")
}

#[test]
fn watch_follows_cgroup_creation_and_removal() {
    require_kernel!();
    let mut w = World::new(&["apps.slice"]);
    w.write_layout();
    let watcher = Watcher::start(&w, &[]);
    let p = pins(&w);
    // Without cgroup iterators there are no files to follow: the counts,
    // the removal and the release are checked all the same.
    let files = crate::world::stats_files();
    // The start reconcile did what apply does.
    assert_eq!(p.stats_file(&w.cgroup("apps.slice")).exists(), files);

    w.add_cgroup("apps.slice/new.scope");
    let stats = p.stats_file(&w.cgroup("apps.slice/new.scope"));
    wait_until("net.stat of the new cgroup", Duration::from_secs(5), || {
        stats.exists() || !files
    });
    assert_eq!(
        w.stat("apps.slice/new.scope")["cgroup_id"],
        w.cgroup_id("apps.slice/new.scope")
    );
    // Counted through the cgroup_skb attachment at our root, read through
    // the file the watcher pinned.
    w.send_udp("apps.slice/new.scope", false, 9, 10);
    assert_eq!(w.stat("apps.slice/new.scope")["self_tx_packets"], 9);

    let baseline = dying(&w, "apps.slice");
    fs::remove_dir(w.cgroup_mount.join(w.cgroup("apps.slice/new.scope"))).expect("rmdir");
    wait_until(
        "the removed cgroup's net.stat to go",
        Duration::from_secs(5),
        || !stats.exists(),
    );
    // The emptied mirror directory goes right after the file.
    wait_until("the empty mirror directory to go", Duration::from_secs(5), || {
        !stats.parent().is_some_and(|d| d.exists())
    });
    // With its stats file gone nothing holds the cgroup: it is released.
    wait_until(
        "the removed cgroup to be released",
        Duration::from_secs(10),
        || dying(&w, "apps.slice") <= baseline.saturating_sub(1),
    );
    assert_eq!(w.stat("apps.slice")["removed_cgroups"], 1);
    assert_eq!(
        watcher.output().contains("pin stats of"),
        files,
        "{}",
        watcher.output()
    );
}

/// Veths we make, deleted on every exit path.
pub struct Veths(pub Vec<String>);

impl Drop for Veths {
    fn drop(&mut self) {
        for v in &self.0 {
            if Path::new("/sys/class/net").join(v).exists() {
                let _ = Command::new("ip").args(["link", "del", v]).output();
            }
        }
    }
}

fn ifindex(name: &str) -> Option<u32> {
    fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// TC programs on `iface`, both directions: TCX links or clsact filters,
/// whichever this kernel uses.
fn tc_programs(iface: &str) -> usize {
    cgacct_pin::tc::attached_programs(iface).map_or(0, |a| a.tcx + a.clsact)
}

#[test]
fn watch_attaches_and_cleans_up_veth_churn() {
    require_kernel!();
    let _rcu = crate::world::host_rcu();
    let w = World::new(&[]);
    w.write_layout_tc(&format!("{}v*", w.prefix));
    let _watcher = Watcher::start(&w, &[]);
    let p = pins(&w);
    let names: Vec<String> = (0..12).map(|i| format!("{}v{i}", w.prefix)).collect();
    let peers: Vec<String> = (0..12).map(|i| format!("{}w{i}", w.prefix)).collect();
    let mut guard = Veths(names.clone());
    guard.0.extend(peers.iter().cloned());
    let mut rtnl = Rtnl::open().expect("rtnetlink");

    // One at a time: attached, then cleaned up.
    rtnl.add_veth(&names[0], &peers[0]).expect("add veth");
    let pin = |n: &str, d| p.tc_link(n, d);
    use cgacct_pin::bpffs::names::Direction::{Egress, Ingress};
    wait_until("tc links on the new veth", Duration::from_secs(5), || {
        pin(&names[0], Ingress).exists() && pin(&names[0], Egress).exists()
    });
    // A clsact marker is pinned just before its filter is added.
    wait_until("both tc programs attached", Duration::from_secs(5), || {
        tc_programs(&names[0]) == 2
    });
    // The peer does not match the pattern: left alone.
    assert_eq!(tc_programs(&peers[0]), 0);
    rtnl.del_link(ifindex(&names[0]).expect("ifindex"))
        .expect("del veth");
    wait_until(
        "tc links of the removed veth to go",
        Duration::from_secs(5),
        || !pin(&names[0], Ingress).exists() && !pin(&names[0], Egress).exists(),
    );

    // Churn: create them all, delete every other one at once.
    for (n, peer) in names.iter().zip(&peers) {
        rtnl.add_veth(n, peer).expect("add veth");
    }
    for n in names.iter().step_by(2) {
        rtnl.del_link(ifindex(n).expect("ifindex")).expect("del veth");
    }
    wait_until("the churn to settle", Duration::from_secs(10), || {
        names.iter().enumerate().all(|(i, n)| {
            let want = i % 2 == 1;
            pin(n, Ingress).exists() == want && pin(n, Egress).exists() == want
        })
    });
    wait_until("tc programs on the kept veths", Duration::from_secs(5), || {
        names.iter().skip(1).step_by(2).all(|n| tc_programs(n) == 2)
    });
    let left = cgacct_pin::bpffs::walk::Tree::read(&p)
        .expect("walk the root")
        .two_level(&p.tc_links());
    assert_eq!(left.len(), 12, "{left:?}");
}

#[test]
fn watch_restart_loses_nothing() {
    require_kernel!();
    let mut w = World::new(&["a.scope", "old.scope"]);
    w.write_layout();
    let mut watcher = Watcher::start(&w, &[]);
    let p = pins(&w);
    w.send_udp("a.scope", false, 5, 20);
    assert_eq!(w.stat("a.scope")["tx_packets"], 5);

    watcher.kill();
    // While it is away: traffic keeps counting through the pins, a cgroup
    // comes, another goes.
    w.send_udp("a.scope", false, 6, 20);
    assert_eq!(w.stat("a.scope")["tx_packets"], 11);
    w.add_cgroup("new.scope");
    let old = p.stats_file(&w.cgroup("old.scope"));
    // No stats files to catch up with on a kernel without cgroup iterators.
    let files = crate::world::stats_files();
    assert_eq!(old.exists(), files);
    fs::remove_dir(w.cgroup_mount.join(w.cgroup("old.scope"))).expect("rmdir");
    let new = p.stats_file(&w.cgroup("new.scope"));
    assert!(!new.exists());

    watcher.restart(&w);
    // The start reconcile caught up with both.
    assert_eq!(new.exists(), files, "{}", watcher.output());
    assert!(!old.exists(), "{}", watcher.output());
    let s = w.stat("a.scope");
    assert_eq!((s["tx_packets"], s["tx_bytes"]), (11, 11 * 48));
    if !files {
        w.send_udp("new.scope", false, 3, 20);
        assert_eq!(w.stat("new.scope")["self_tx_packets"], 3);
        return;
    }
    // And it follows again.
    w.add_cgroup("newer.scope");
    let newer = p.stats_file(&w.cgroup("newer.scope"));
    wait_until(
        "net.stat of a cgroup made after the restart",
        Duration::from_secs(5),
        || newer.exists(),
    );
}
