//! Plan and apply as a declarative tool: plan changes nothing, apply does
//! exactly the plan, a second apply changes nothing (no state-changing
//! bpf() call at all), drift is found in the kernel and repaired, a new
//! build takes over in place without losing a packet, incompatible maps
//! are refused until the operator chooses, applies are serialized.
use std::{fs, os::unix::fs::PermissionsExt as _, process::Command};

use crate::{
    require_kernel,
    world::{sh, subtest, tcx, World},
};

const CGROUPS: [&str; 2] = ["a.scope", "b.scope"];

fn kinds(plan: &[serde_json::Value]) -> Vec<String> {
    plan.iter()
        .map(|a| a["action"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn plan_changes_nothing_and_apply_does_exactly_the_plan() {
    require_kernel!();
    let w = World::new(&CGROUPS);
    w.write_layout();
    let plan = w.plan();
    assert!(!w.root.exists(), "plan created the root");
    let k = kinds(&plan);
    assert_eq!(k.iter().filter(|a| *a == "load_programs").count(), 1, "{k:?}");
    assert_eq!(k.iter().filter(|a| *a == "attach_tc").count(), 2, "{k:?}");
    assert_eq!(k.iter().filter(|a| *a == "attach_cgroup").count(), 2, "{k:?}");
    // No stats files on a kernel without cgroup iterators.
    let stats = if crate::world::stats_files() { 3 } else { 0 };
    assert_eq!(k.iter().filter(|a| *a == "pin_stats").count(), stats, "{k:?}");
    assert_eq!(k.iter().filter(|a| *a == "attach_rmdir").count(), 1, "{k:?}");
    assert_eq!(k.iter().filter(|a| *a == "attach_release").count(), 1, "{k:?}");
    // One tracing link per health program this kernel has a hook for.
    let health = cgacct_pin::observe::health::probe()
        .expect("kernel BTF")
        .programs
        .len();
    assert_eq!(
        k.iter().filter(|a| *a == "attach_health").count(),
        health,
        "{k:?}"
    );
    assert_eq!(k.len(), 7 + stats + health, "{k:?}");
    let out = w.try_cgacct(&["plan", "--detailed-exitcode", w.layout_arg()], &[]);
    assert_eq!(code(&out), 4, "plan with changes pending");
    let dry = w.try_cgacct(&["apply", "--dry-run", w.layout_arg()], &[]);
    assert_eq!(code(&dry), 0);
    assert!(!w.root.exists(), "apply --dry-run created the root");

    let out = w.try_cgacct(&["apply", "--detailed-exitcode", w.layout_arg()], &[]);
    assert_eq!(code(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));
    // Notes (e.g. how this kernel attaches TC programs) are not actions.
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("note: "))
        .map(str::to_string)
        .collect();
    let would: Vec<String> = String::from_utf8_lossy(&dry.stdout)
        .lines()
        .map(|l| l.trim_start_matches("would ").to_string())
        .collect();
    assert_eq!(printed, would, "apply printed other actions than the plan");
    w.assert_converged(3);

    // The second apply changes nothing and makes no state-changing bpf() call.
    let trace = std::env::temp_dir().join(format!("{}.strace", w.prefix));
    let out = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=bpf", "-o"])
        .arg(&trace)
        .args([crate::world::BIN, "apply", "--detailed-exitcode", w.layout_arg()])
        .output()
        .expect("strace (scripts/setup.sh installs it)");
    let calls = fs::read_to_string(&trace).expect("strace output");
    let _ = fs::remove_file(&trace);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to do"));
    let read_only = [
        "BPF_OBJ_GET,",
        "BPF_OBJ_GET_INFO_BY_FD",
        "BPF_PROG_QUERY",
        "BPF_MAP_GET_FD_BY_ID",
        "BPF_PROG_GET_FD_BY_ID",
        "BPF_MAP_LOOKUP_ELEM",
        "BPF_MAP_LOOKUP_BATCH",
        "BPF_MAP_GET_NEXT_KEY",
    ];
    let cmds: Vec<&str> = calls.lines().filter(|l| l.contains("bpf(")).collect();
    assert!(!cmds.is_empty(), "strace saw no bpf() call at all");
    for l in &cmds {
        assert!(
            read_only.iter().any(|c| l.contains(c)),
            "state-changing call in a no-op apply: {l}"
        );
    }
}

#[test]
fn drift_in_the_kernel_is_reported_and_repaired() {
    require_kernel!();
    let w = World::new(&CGROUPS);
    w.write_layout();
    w.apply();
    w.assert_converged(3);
    let a_stat = w.root.join(format!("{}/a.scope/net.stat", w.cgroup_root));
    let b = w.cgroup_mount.join(w.cgroup("b.scope"));
    // Without cgroup iterators (no stats files) a map pin's mode drifts.
    let stats = crate::world::stats_files();
    let map_pin = w.root.join("maps/cgroup_stats");

    subtest("drift_is_made", || {
        // The veth deleted and created again under the same name: the pinned
        // TCX links are defunct.
        sh(&format!("ip link del {}", w.host_if));
        w.add_veth();
        // A stats file and a cgroup link pin removed by hand, a mode changed.
        if stats {
            fs::remove_file(w.root.join(format!("{}/b.scope/net.stat", w.cgroup_root)))
                .expect("rm stats file");
        }
        let cg_link = w.root.join(format!("links/cgroup/{}/egress", w.cgroup_id("")));
        fs::remove_file(&cg_link).expect("rm link pin");
        let chmod = if stats { &a_stat } else { &map_pin };
        fs::set_permissions(chmod, fs::Permissions::from_mode(0o666)).expect("chmod");
        // Our program attached by hand to the wrong hook of another cgroup.
        let prog = w.root.join("progs/cgacct_cg_ingress");
        sh(&format!(
            "bpftool cgroup attach {} egress pinned {} multi",
            b.display(),
            prog.display()
        ));
    });

    subtest("plan_names_each_drift", || {
        let plan = w.plan();
        let text = serde_json::to_string(&plan).expect("json");
        let k = kinds(&plan);
        let replaced = plan
            .iter()
            .filter(|a| a["action"] == "attach_tc" && a["replace"].is_string())
            .count();
        assert_eq!(
            replaced, 2,
            "TC attachments of the deleted veth not replaced: {text}"
        );
        let why = if tcx() {
            "defunct"
        } else {
            "its clsact filter is gone"
        };
        assert!(text.contains(why), "{text}");
        assert_eq!(
            k.iter().filter(|a| *a == "pin_stats").count(),
            usize::from(stats),
            "{k:?}"
        );
        assert_eq!(k.iter().filter(|a| *a == "attach_cgroup").count(), 1, "{k:?}");
        assert_eq!(k.iter().filter(|a| *a == "detach").count(), 1, "{k:?}");
        assert_eq!(k.iter().filter(|a| *a == "set_access").count(), 1, "{k:?}");
        assert_eq!(k.len(), 5 + usize::from(stats), "{text}");
    });

    subtest("apply_repairs_it_and_counting_goes_on", || {
        w.apply();
        w.assert_converged(3);
        let (pin, mode) = if stats {
            (&a_stat, 0o444)
        } else {
            (&map_pin, 0o600)
        };
        assert_eq!(
            fs::metadata(pin).expect("stat").permissions().mode() & 0o777,
            mode
        );
        let show = sh(&format!("bpftool cgroup show {} -j", b.display()));
        let show = String::from_utf8_lossy(&show.stdout);
        assert!(matches!(show.trim(), "" | "[]"), "hand attachment left: {show}");
        w.send_udp("a.scope", false, 5, 20);
        let s = w.stat("a.scope");
        assert_eq!((s["self_tx_packets"], s["self_tc_egress_packets"]), (5, 5));
    });

    subtest("removed_and_dropped_cgroups_lose_their_files", || {
        // A cgroup removed while its stats file is pinned, and one dropped from
        // the layout: both stats files go.
        fs::remove_dir(&b).expect("rmdir b.scope");
        let text = format!(
        "root = {:?}\n[tc]\ninterfaces = [{:?}]\n[cgroup_skb]\nattach = [\"/{}\"]\n[stats]\ncgroups = [\"/{}\"]\n",
        w.root, w.host_if, w.cgroup_root, w.cgroup_root
    );
        fs::write(&w.layout, text).expect("layout");
        let plan = w.plan();
        let text = serde_json::to_string(&plan).expect("json");
        if !stats {
            // No files to lose.
            assert_eq!(kinds(&plan), Vec::<String>::new(), "{text}");
            w.assert_converged(0);
            return;
        }
        assert_eq!(kinds(&plan), ["unpin", "unpin"], "{text}");
        assert!(text.contains("its cgroup was removed"), "{text}");
        assert!(text.contains("no longer in stats.cgroups"), "{text}");
        w.apply();
        w.assert_converged(1);
    });
}

#[test]
fn a_new_build_takes_over_in_place_without_losing_a_packet() {
    require_kernel!();
    let w = World::new(&CGROUPS);
    w.write_layout();
    w.apply();
    let links_before: Vec<u32> = w.inventory().iter().map(|l| l.id).collect();
    let progs_before = w.program_ids();
    let salt = [("CGACCT_PIN_BUILD_SALT", "next")];
    let plan = w.try_cgacct(&["plan", "--json", w.layout_arg()], &salt);
    let plan: Vec<serde_json::Value> = serde_json::from_slice(&plan.stdout).expect("plan");
    let k = kinds(&plan);
    assert_eq!(k[0], "load_programs", "{k:?}");
    // TCX links move in place; clsact filters (kernels without TCX) are
    // replaced. Stats files' links (none without cgroup iterators) move.
    let stats = if crate::world::stats_files() { 3 } else { 0 };
    let (updated, replaced) = if tcx() { (4 + stats, 0) } else { (2 + stats, 2) };
    assert_eq!(k.iter().filter(|a| *a == "update_link").count(), updated, "{k:?}");
    assert_eq!(k.iter().filter(|a| *a == "attach_tc").count(), replaced, "{k:?}");
    // Tracing links cannot move in place: cgroup_rmdir's and
    // cgroup_release's are replaced.
    assert_eq!(k.iter().filter(|a| *a == "attach_rmdir").count(), 1, "{k:?}");
    assert_eq!(k.iter().filter(|a| *a == "attach_release").count(), 1, "{k:?}");
    // The health programs' links too: those the kernel took at the first load.
    let health = cgacct_pin::object::health::PROGRAMS
        .iter()
        .filter(|p| w.root.join("progs").join(p.name).exists())
        .count();
    assert_eq!(
        k.iter().filter(|a| *a == "attach_health").count(),
        health,
        "{k:?}"
    );
    assert_eq!(k.len(), 7 + stats + health, "{k:?}");
    // 400 datagrams, 1 ms apart, sent while the upgrade runs.
    std::thread::scope(|s| {
        let sender = s.spawn(|| w.send_udp("a.scope", false, 400, 64));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let out = w.try_cgacct(&["apply", w.layout_arg()], &salt);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        sender.join().expect("sender");
    });
    let links_after: Vec<u32> = w.inventory().iter().map(|l| l.id).collect();
    assert_eq!(
        links_before, links_after,
        "links were re-created, not updated in place"
    );
    let progs_after = w.program_ids();
    for (name, id) in &progs_after {
        assert_ne!(progs_before.get(name), Some(id), "{name} was not replaced");
    }
    let s = w.stat("a.scope");
    assert_eq!(s["self_tx_packets"], 400, "packets lost during the upgrade");
    assert_eq!(
        s["self_tc_egress_packets"], 400,
        "packets lost at TC during the upgrade"
    );
    assert_eq!(s["self_tx_bytes"], 400 * (64 + 28));
    let again = w.try_cgacct(&["apply", "--detailed-exitcode", w.layout_arg()], &salt);
    assert_eq!(code(&again), 0, "the new build is not converged");
}

#[test]
fn incompatible_maps_are_refused_until_migrate_or_reset() {
    require_kernel!();
    let w = World::new(&CGROUPS);
    let layout = |cgroups: u32| {
        let text = format!(
            "root = {:?}\n[maps]\ncgroups = {cgroups}\n[tc]\ninterfaces = [{:?}]\n[cgroup_skb]\n\
             attach = [\"/{}\"]\n[stats]\ncgroups = [\"/{}/**\"]\n",
            w.root, w.host_if, w.cgroup_root, w.cgroup_root
        );
        fs::write(&w.layout, text).expect("layout");
    };
    let max_entries = || {
        aya::maps::MapInfo::from_pin(w.root.join("maps/cgroup_stats"))
            .expect("map")
            .max_entries()
    };
    layout(64);
    w.apply();
    w.send_udp("b.scope", false, 7, 10);
    layout(128);
    let out = w.try_cgacct(&["apply", w.layout_arg()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.contains("--migrate-maps") && err.contains("--reset-maps"),
        "{err}"
    );
    assert!(
        err.contains("max_entries 64") && err.contains("max_entries 128"),
        "{err}"
    );
    assert_eq!(max_entries(), 64, "a refused apply changed the map");

    let out = w.try_cgacct(&["apply", "--migrate-maps", w.layout_arg()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(max_entries(), 128);
    assert_eq!(w.stat("b.scope")["self_tx_packets"], 7, "migrate lost counters");
    w.send_udp("b.scope", false, 2, 10);
    assert_eq!(
        w.stat("b.scope")["self_tx_packets"],
        9,
        "not counting into the new map"
    );
    w.assert_converged(3);

    layout(256);
    let out = w.try_cgacct(&["apply", "--reset-maps", w.layout_arg()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(max_entries(), 256);
    assert_eq!(w.stat("b.scope")["self_tx_packets"], 0, "reset kept counters");
    w.assert_converged(3);
}

#[test]
fn concurrent_applies_are_serialized() {
    require_kernel!();
    let w = World::new(&CGROUPS);
    w.write_layout();
    fs::create_dir(&w.root).expect("mkdir root");
    let dir = fs::File::open(&w.root).expect("open root");
    // SAFETY: flock on an fd we own.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&dir), libc::LOCK_EX) },
        0
    );
    let out = w.try_cgacct(&["apply", "--lock-timeout", "0", w.layout_arg()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("another cgacct-pin"), "{err}");
    let stats = if crate::world::stats_files() { 3 } else { 0 };
    let health = cgacct_pin::observe::health::probe()
        .expect("kernel BTF")
        .programs
        .len();
    assert!(
        w.plan().len() == 7 + stats + health,
        "the refused apply changed something"
    );
    drop(dir);
    // Four applies at once: all succeed, the kernel holds the layout once.
    let outs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            // Each waits for the one at work however long it takes (a first
            // apply took over 60 s in a VM under TCG).
            .map(|_| s.spawn(|| w.try_cgacct(&["apply", "--lock-timeout", "900", w.layout_arg()], &[])))
            .collect();
        hs.into_iter().map(|h| h.join().expect("apply thread")).collect()
    });
    for o in &outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let did = outs
        .iter()
        .filter(|o| !String::from_utf8_lossy(&o.stdout).contains("nothing to do"))
        .count();
    assert_eq!(did, 1, "more than one apply did the work");
    w.assert_converged(3);
}
