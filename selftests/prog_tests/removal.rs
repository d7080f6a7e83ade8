//! Short-lived cgroups: a cgroup that sends and is removed at once keeps its
//! final totals (`cgacct-pin removed`), and its parent's subtree totals do
//! not go backwards when it goes. Removals in cgroup v1 hierarchies, whose
//! ids can equal those of live cgroup2 cgroups, change nothing.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use cgacct_common::{maps, Counters, Departed};
use cgacct_pin::{bpffs::Pins, report::read};

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

/// The programs sum every possible CPU's counters at removal and in the
/// iterator; how hard the kernel's verifier works on them must not grow
/// with that count (unrolled per CPU, the removal programs stopped loading
/// at 64 possible CPUs). Loaded as on a host with 256 possible CPUs (the
/// iterator still sums unrolled, up to 256), removal still folds exactly:
/// the CPUs the host lacks have no slots and add nothing.
#[test]
fn removal_is_exact_with_the_programs_summing_256_cpus() {
    require_kernel!();
    let mut w = World::new(&["jobs.slice"]);
    w.write_layout();
    let bad = w.try_cgacct(&["apply", w.layout_arg()], &[("CGACCT_PROGRAM_CPUS", "0")]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("CGACCT_PROGRAM_CPUS"),
        "{err}"
    );
    assert!(
        !w.root.join("progs").exists(),
        "a refused apply left programs pinned"
    );
    let out = w.try_cgacct(&["apply", w.layout_arg()], &[("CGACCT_PROGRAM_CPUS", "256")]);
    assert!(
        out.status.success(),
        "apply with 256 CPUs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.add_cgroup("jobs.slice/job.scope");
    w.send_udp("jobs.slice/job.scope", false, 9, 100);
    let live = w.stat("jobs.slice");
    assert_eq!(live["tx_packets"], 9);
    fs::remove_dir(w.cgroup_mount.join(w.cgroup("jobs.slice/job.scope"))).expect("rmdir job");
    let after = w.stat("jobs.slice");
    for key in SUBTREE_KEYS {
        assert_eq!(
            after[key], live[key],
            "{key} changed when the child went: {after:?}"
        );
    }
    assert_eq!(after["removed_cgroups"], 1);
    let recs = removed(&w);
    let path = format!("/{}", w.cgroup("jobs.slice/job.scope"));
    let rec = recs
        .iter()
        .find(|r| r["cgroup"] == path.as_str())
        .unwrap_or_else(|| panic!("no record for {path}: {recs:?}"));
    assert_eq!(rec["own"]["socket"]["tx_packets"], 9);
    assert_eq!(rec["own"]["socket"]["tx_bytes"], 9 * 128);
}

/// A named cgroup v1 hierarchy of the test's own, mounted on a directory of
/// its own. Its kernfs ids are its own too, and start low: rmdir in it fires
/// the same `cgroup_rmdir` tracepoint as rmdir in cgroup2. Dropping it
/// removes the directories made in it, unmounts it until the kernel has
/// freed the hierarchy, and removes the mount point.
struct V1Hierarchy {
    /// `name=...` mount option.
    option: String,
    mount: PathBuf,
    /// Live directories made in it, relative to the mount, parents first.
    dirs: Vec<String>,
    mounted: bool,
}

impl V1Hierarchy {
    fn new(name: &str) -> V1Hierarchy {
        let mut h = V1Hierarchy {
            option: format!("name={name}"),
            mount: std::env::temp_dir().join(format!("{name}-v1")),
            dirs: Vec::new(),
            mounted: false,
        };
        // Mounting a name the kernel knows would join that hierarchy.
        assert!(!h.exists(), "a cgroup hierarchy {} exists already", h.option);
        fs::create_dir(&h.mount).expect("mkdir v1 mount point");
        h.mount_it().expect("mount the v1 hierarchy");
        h
    }

    /// Whether the kernel has the hierarchy, mounted or not: every
    /// hierarchy has a line in /proc/PID/cgroup ("ID:name=NAME:/path").
    fn exists(&self) -> bool {
        let text = fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        text.lines()
            .any(|l| l.split(':').nth(1) == Some(self.option.as_str()))
    }

    fn mount_it(&mut self) -> Result<(), String> {
        let out = Command::new("mount")
            .args(["-t", "cgroup", "-o", &format!("none,{}", self.option), "cgroup"])
            .arg(&self.mount)
            .output()
            .map_err(|e| format!("spawning mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        self.mounted = true;
        Ok(())
    }

    fn unmount(&mut self) {
        let done = Command::new("umount").arg(&self.mount).status();
        if !done.is_ok_and(|s| s.success()) {
            // Busy: detach it now; the kernel frees it once unused.
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        self.mounted = false;
    }

    /// Makes a directory; returns its kernfs id (its inode number).
    fn mkdir(&mut self, rel: &str) -> u64 {
        let path = self.mount.join(rel);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        self.dirs.push(rel.to_string());
        fs::metadata(&path).expect("stat v1 cgroup").ino()
    }

    fn rmdir(&mut self, rel: &str) {
        let path = self.mount.join(rel);
        fs::remove_dir(&path).unwrap_or_else(|e| panic!("rmdir {}: {e}", path.display()));
        self.dirs.retain(|d| d != rel);
    }
}

impl Drop for V1Hierarchy {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = fs::remove_dir(self.mount.join(d));
        }
        // The kernel frees a named hierarchy when its last mount goes while
        // it has no cgroups; but a removed cgroup stays a child until it is
        // released (after an RCU grace period), and an unmount before that
        // leaves the hierarchy behind, unmounted, for good. So unmount, and
        // while the hierarchy is still there, mount it again and retry.
        let mut attempts = 0;
        while self.mounted {
            self.unmount();
            attempts += 1;
            let deadline = Instant::now() + Duration::from_millis(500);
            while self.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !self.exists() {
                break;
            }
            if attempts == 20 || self.mount_it().is_err() {
                eprintln!(
                    "cgroup hierarchy {} is left behind after {attempts} unmounts",
                    self.option
                );
                break;
            }
        }
        let _ = fs::remove_dir(&self.mount);
    }
}

/// What the maps hold for one cgroup id: (cgroup_skb, TC) counters and the
/// totals of its removed descendants.
fn map_state(w: &World, id: u64) -> (Option<Counters>, Option<Counters>, Option<Departed>) {
    let pins = Pins::new(&w.root, true);
    let snap = read::snapshot(&pins).expect("snapshot");
    let data = MapData::from_pin(pins.map(maps::DEPARTED)).expect("open DEPARTED");
    let departed: BpfHashMap<MapData, u64, Departed> = Map::HashMap(data).try_into().expect("DEPARTED");
    (
        snap.cgroups.get(&id).copied(),
        snap.tc_cgroups.get(&id).copied(),
        departed.get(&id, 0).ok(),
    )
}

/// Most mkdir/rmdir steps the v1 hierarchy may take to reach the id of a
/// cgroup2 cgroup, about 30 us each here. cgroup2 ids grow with every
/// cgroup the host ever made: a CI machine's were at 855,000 (171,000
/// steps, 5 s), a host after four runs of the benchmark's 100,000 cgroups
/// at 10.8 million (2.2 million steps, about 65 s).
const MAX_V1_STEPS: u64 = 10_000_000;
/// Most cgroup2 cgroups made to find one whose id the v1 hierarchy's ids
/// step onto.
const MAX_CANDIDATES: u32 = 64;

/// Enables and disables the pids controller for the children of one of
/// our cgroups: each enabling makes three files (kernfs nodes) per child,
/// moving the cgroup2 hierarchy's next ids. Only where our subtree root
/// may have the controller (the cgroup2 root enables it, as systemd does);
/// it is enabled in our own cgroups only.
struct PidsShifter {
    /// `cgroup.subtree_control` of the parent whose children get the files.
    control: PathBuf,
}

impl PidsShifter {
    fn new(w: &World, parent: &str) -> Option<PidsShifter> {
        let top = w.cgroup_mount.join(w.cgroup(""));
        let offered = fs::read_to_string(top.join("cgroup.controllers")).ok()?;
        if !offered.split_whitespace().any(|c| c == "pids") {
            return None;
        }
        // Our subtree root passes it down to `parent`.
        fs::write(top.join("cgroup.subtree_control"), "+pids").ok()?;
        Some(PidsShifter {
            control: w
                .cgroup_mount
                .join(w.cgroup(parent))
                .join("cgroup.subtree_control"),
        })
    }

    /// After the `i`th miss: on after even ones, off after odd ones.
    fn toggle(&self, i: u32) {
        let change = if i.is_multiple_of(2) { "+pids" } else { "-pids" };
        fs::write(&self.control, change).expect("pids in cgroup.subtree_control");
    }
}

/// The `cgroup_rmdir` tracepoint fires for every hierarchy, and kernfs ids
/// are per hierarchy: a v1 cgroup with the id of a live cgroup2 cgroup is
/// removed. Nothing about the cgroup2 cgroup may change; removing a cgroup2
/// cgroup that has a v1 twin at the same path (as container runtimes make
/// them) leaves one record, its own.
#[test]
fn rmdir_in_a_v1_hierarchy_leaves_cgroup2_alone() {
    require_kernel!();
    let mut w = World::new(&["jobs.slice"]);
    w.write_layout();
    w.apply();
    let mut v1 = V1Hierarchy::new(&w.prefix);

    // A fresh hierarchy's directory ids step by a fixed stride (the
    // directory and its files): learn the stride, then make a cgroup2
    // cgroup whose id is a later step. The next cgroup2 id is read off
    // short-lived probe directories beside the candidate (same parent, so
    // the same files and the same stride): when the id after a probe lands
    // on the v1 residue, the candidate takes it. Each probe moves the next
    // id by the cgroup2 stride, so within `stride` probes one lands there
    // unless both strides share a factor (or the host makes cgroups
    // meanwhile, which only moves the ids on).
    let first = v1.mkdir(&format!("{}-p0", w.prefix));
    let mut last = v1.mkdir(&format!("{}-p1", w.prefix));
    let stride = last.checked_sub(first).filter(|s| *s > 0).expect("v1 ids grow");
    let mut target = None;
    // Where the strides share a factor (seen on a quiet VM), the pids
    // controller's files, enabled for jobs.slice's children now and then,
    // change the cgroup2 stride.
    let shifter = PidsShifter::new(&w, "jobs.slice");
    let probe = |w: &World, n: u64| -> u64 {
        let dir = w.cgroup_mount.join(w.cgroup(&format!("jobs.slice/probe{n}")));
        std::fs::create_dir(&dir).expect("mkdir a probe cgroup");
        let id = std::fs::metadata(&dir).expect("stat a probe cgroup").ino();
        std::fs::remove_dir(&dir).expect("rmdir a probe cgroup");
        id
    };
    let mut seen = Vec::new();
    let mut probes = 0u64;
    let mut toggles = 0u32;
    'search: for candidate in 0..MAX_CANDIDATES {
        let mut before = probe(&w, probes);
        probes += 1;
        // At most two rounds of residues before the stride is changed.
        for _ in 0..2 * stride {
            let now = probe(&w, probes);
            probes += 1;
            let step = now.saturating_sub(before);
            before = now;
            if step > 0 && (now + step).saturating_sub(last).is_multiple_of(stride) && now + step > last {
                let rel = format!("jobs.slice/c{candidate}.scope");
                w.add_cgroup(&rel);
                let id = w.cgroup_id(&rel);
                seen.push(id);
                if id > last && (id - last).is_multiple_of(stride) {
                    target = Some((rel, id));
                    break 'search;
                }
                continue 'search;
            }
        }
        match &shifter {
            Some(s) => {
                s.toggle(toggles);
                toggles += 1;
            }
            None => break,
        }
    }
    let Some((target, id)) = target else {
        panic!(
            "no cgroup2 id is a v1 step after {probes} probes (v1 stride {stride}, last v1 id \
             {last}, candidates' cgroup2 ids {seen:?}, pids controller to change the cgroup2 \
             stride: {})",
            shifter.is_some()
        );
    };
    let steps = (id - last) / stride;
    if steps > MAX_V1_STEPS {
        let why = format!("cgroup2 ids are at {id}: {steps} v1 steps to reach one, more than {MAX_V1_STEPS}");
        if std::env::var("CGACCT_REQUIRE_KERNEL").as_deref() == Ok("1") {
            panic!("{why}");
        }
        eprintln!("SKIPPED {}: {why}", module_path!());
        return;
    }
    let parent = w.cgroup_id("jobs.slice");
    w.apply(); // stats files for the new cgroups
    w.send_udp(&target, false, 13, 100);

    let stats = |w: &World| (w.stat(&target), w.stat("jobs.slice"), w.stat(""));
    let before = stats(&w);
    let maps_before = (map_state(&w, id), map_state(&w, parent));
    assert_eq!(before.0["tx_packets"], 13, "{:?}", before.0);

    // Step the v1 ids up to the target's (each step's rmdir also runs the
    // tracepoint, with an id no cgroup of ours has), then remove the
    // directory that has it.
    let mut k = 0u64;
    let twin = loop {
        let rel = format!("{}-s{k}", w.prefix);
        let got = v1.mkdir(&rel);
        assert_eq!(got, last + stride, "v1 ids stepped unevenly after {k} steps");
        last = got;
        if got == id {
            break rel;
        }
        v1.rmdir(&rel);
        k += 1;
    };
    let started = Instant::now();
    v1.rmdir(&twin);
    eprintln!(
        "v1 id {id} reached in {k} steps; its rmdir took {:?}",
        started.elapsed()
    );

    // Every deviation is collected, so a failure shows all of them.
    let mut wrong = Vec::new();
    let after = stats(&w);
    let maps_after = (map_state(&w, id), map_state(&w, parent));
    for (what, b, a) in [
        (target.as_str(), &before.0, &after.0),
        ("jobs.slice", &before.1, &after.1),
        ("(our root)", &before.2, &after.2),
    ] {
        for (key, v) in b {
            if a.get(key) != Some(v) {
                wrong.push(format!("net.stat of {what}: {key} {v} -> {:?}", a.get(key)));
            }
        }
    }
    if maps_after != maps_before {
        wrong.push(format!(
            "maps (cgroup_skb, TC, DEPARTED) of {id} and of its parent {parent}: \
             {maps_before:?} -> {maps_after:?}"
        ));
    }
    let v1_paths = format!("/{}-", w.prefix);
    let recs = removed(&w);
    let of_v1: Vec<_> = recs
        .iter()
        .filter(|r| r["id"] == id || r["cgroup"].as_str().is_some_and(|p| p.starts_with(&v1_paths)))
        .collect();
    if !of_v1.is_empty() {
        wrong.push(format!(
            "{} records of v1 cgroups, the first: {:?}",
            of_v1.len(),
            of_v1.first()
        ));
    }

    // A container runtime's layout: the same path in cgroup2 and in v1,
    // both removed.
    let path = w.cgroup(&target);
    let mut twin_path = String::new();
    for part in path.split('/') {
        twin_path = if twin_path.is_empty() {
            part.to_string()
        } else {
            format!("{twin_path}/{part}")
        };
        v1.mkdir(&twin_path);
    }
    v1.rmdir(&twin_path);
    fs::remove_dir(w.cgroup_mount.join(&path)).expect("rmdir cgroup2 target");
    let recs = removed(&w);
    let mine: Vec<_> = recs
        .iter()
        .filter(|r| r["cgroup"] == format!("/{path}").as_str())
        .collect();
    if mine.len() != 1 {
        wrong.push(format!("{} records for /{path}: {mine:?}", mine.len()));
    }
    let own = &before.0;
    let want = [
        ("id", id),
        ("parent_id", parent),
        ("own.socket.tx_packets", own["self_tx_packets"]),
        ("own.socket.tx_bytes", own["self_tx_bytes"]),
        ("own.tc.tx_packets", own["self_tc_egress_packets"]),
    ];
    match mine.iter().find(|r| r["id"] == id) {
        None => wrong.push(format!("no record of cgroup2 id {id}")),
        Some(rec) => {
            for (key, v) in want {
                let got = key.split('.').fold(*rec, |r, k| &r[k]);
                if *got != v {
                    wrong.push(format!("record of {id}: {key} {got} (want {v})"));
                }
            }
        }
    }
    let end = w.stat("jobs.slice");
    for key in SUBTREE_KEYS {
        if end[key] != before.1[key] {
            wrong.push(format!(
                "jobs.slice {key} {} -> {} when /{path} went",
                before.1[key], end[key]
            ));
        }
    }
    if end["removed_cgroups"] != before.1["removed_cgroups"] + 1 {
        wrong.push(format!(
            "jobs.slice removed_cgroups {} -> {} when /{path} went",
            before.1["removed_cgroups"], end["removed_cgroups"]
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Containers come and go while `plan` and `apply` read the host: a cgroup
/// opened and then removed before its hooks are queried is one that is
/// gone, not an error (the kernel answers ENOENT for a dying cgroup).
#[test]
fn plan_and_apply_read_a_host_whose_cgroups_come_and_go() {
    use std::{
        os::fd::AsFd as _,
        sync::{
            atomic::{AtomicBool, Ordering},
            Arc,
        },
    };

    use cgacct_pin::sys::bpf::{self as sys, Hook};

    require_kernel!();
    let w = World::new(&["jobs.slice"]);
    w.write_layout();
    w.apply();
    crate::world::subtest("a_dying_cgroup_answers_enoent", || {
        let path = w.cgroup_mount.join(w.cgroup("dying"));
        fs::create_dir(&path).expect("mkdir");
        let dir = fs::File::open(&path).expect("open cgroup");
        fs::remove_dir(&path).expect("rmdir");
        let err = sys::prog_query(Hook::Cgroup(dir.as_fd()), sys::CGROUP_INGRESS)
            .expect_err("a removed cgroup cannot be queried");
        assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    });
    crate::world::subtest("plans_while_cgroups_churn", || {
        let stop = Arc::new(AtomicBool::new(false));
        let base = w.cgroup_mount.join(w.cgroup("jobs.slice"));
        let churn = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut made = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let dirs: Vec<PathBuf> = (0..32).map(|i| base.join(format!("job{i}"))).collect();
                    for d in &dirs {
                        if fs::create_dir(d).is_ok() {
                            made += 1;
                        }
                    }
                    for d in &dirs {
                        let _ = fs::remove_dir(d);
                    }
                }
                made
            })
        };
        let mut failures = Vec::new();
        let mut skipped = 0;
        let rounds = 40;
        for round in 0..rounds {
            let verb = if round % 2 == 0 { "plan" } else { "apply" };
            let out = w.try_cgacct(&[verb, w.layout_arg()], &[]);
            let said = String::from_utf8_lossy(&out.stdout);
            skipped += said.lines().filter(|l| l.starts_with("skipped: ")).count();
            if !out.status.success() {
                failures.push(format!("{verb}: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        stop.store(true, Ordering::Relaxed);
        let made = churn.join().expect("churn thread");
        eprintln!(
            "{rounds} plans and applies while {made} cgroups came and went: {} failed, {skipped} actions skipped as gone",
            failures.len()
        );
        assert!(made > 0, "no cgroup was made: the churn did not run");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
    w.apply();
    w.assert_converged(2);
}
