//! The layout's access keys: an unprivileged user reads its cgroup's
//! `net.stat` when the layout allows it and is refused when it does not;
//! programs, maps and links stay root's.
use std::{fs, os::unix::fs::MetadataExt as _, process::Output};

use crate::{require_kernel, world::World};

/// Runs `cmd` as user nobody (65534) with primary group 65533 (no group
/// of this host) and the given supplementary groups.
fn as_nobody(groups: &str, cmd: &str) -> Output {
    let groups = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!("--groups={groups}")
    };
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("setpriv --reuid=65534 --regid=65533 {groups} {cmd}"))
        .output()
        .expect("setpriv")
}

fn layout(w: &World, access: &str) {
    let text = format!(
        "root = {:?}\n[tc]\ninterfaces = [{:?}]\n[cgroup_skb]\nattach = [\"/{}\"]\n[stats]\ncgroups = [\"/{}/**\"]\n{access}",
        w.root, w.host_if, w.cgroup_root, w.cgroup_root
    );
    fs::write(&w.layout, text).expect("layout");
}

#[test]
fn unprivileged_reads_follow_the_layout() {
    require_kernel!();
    let w = World::new(&["app.scope"]);
    let stat = w.root.join(format!("{}/app.scope/net.stat", w.cgroup_root));
    let stat_arg = stat.to_str().expect("utf-8");
    let progs = w.root.join("progs");

    // Default: stats files world-readable, the rest root's only.
    layout(&w, "");
    w.apply();
    w.send_udp("app.scope", false, 4, 10);
    let out = as_nobody("", &format!("ls {}", progs.display()));
    assert!(!out.status.success(), "nobody listed the programs");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let m = fs::metadata(w.root.join("maps/cgroup_stats")).expect("map pin");
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o600, 0));
    // The rest is about the stats files' own modes.
    crate::require_stats_files!();
    let out = as_nobody("", &format!("cat {stat_arg}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("self_tx_packets 4\n"), "{text}");

    // Stats readable by group nogroup only.
    layout(&w, "[access.stats]\ngroup = \"nogroup\"\nmode = \"0440\"\n");
    let plan = w.plan();
    assert!(plan.iter().all(|a| a["action"] == "set_access"), "{plan:?}");
    w.apply();
    let out = as_nobody("", &format!("cat {stat_arg}"));
    assert!(!out.status.success(), "nobody read the stats without the group");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let out = as_nobody("nogroup", &format!("cat {stat_arg}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("self_tx_packets 4\n"));

    // Root only.
    layout(&w, "[access.stats]\nmode = 0o400\n");
    w.apply();
    let out = as_nobody("nogroup", &format!("cat {stat_arg}"));
    assert!(!out.status.success(), "nobody read a root-only stats file");
    let m = fs::metadata(&stat).expect("stats pin");
    assert_eq!((m.mode() & 0o7777, m.gid()), (0o400, 0));
    w.assert_converged(2);
}
