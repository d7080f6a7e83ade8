//! Re-apply keeps counters and adds no attachment; destroy leaves nothing.

use crate::{
    require_kernel,
    world::{eventually, World},
};

/// Number of programs on `iface`'s TC hooks, both directions: TCX links
/// or clsact bpf filters, whichever this kernel uses.
fn tc_programs(iface: &str) -> usize {
    let a = cgacct_pin::tc::attached_programs(iface).expect("query tc attachments");
    a.tcx + a.clsact
}

/// Programs attached at our subtree root's cgroup_skb hooks, as the kernel
/// answers `BPF_PROG_QUERY` (bpftool 7.1's `cgroup show` lists none on
/// Debian 11's 5.10, as the kernel matrix showed, so it is not asked).
fn cgroup_attachments(w: &World) -> usize {
    use cgacct_pin::sys::bpf::{prog_query, Hook, CGROUP_EGRESS, CGROUP_INGRESS};
    use std::os::fd::AsFd as _;
    let dir = std::fs::File::open(w.cgroup_mount.join(w.cgroup(""))).expect("open our cgroup");
    [CGROUP_INGRESS, CGROUP_EGRESS]
        .into_iter()
        .map(|t| {
            prog_query(Hook::Cgroup(dir.as_fd()), t)
                .expect("BPF_PROG_QUERY")
                .len()
        })
        .sum()
}

fn our_program_ids(w: &World) -> Vec<u32> {
    crate::world::programs()
        .iter()
        .map(|p| {
            aya::programs::ProgramInfo::from_pin(w.root.join("progs").join(p))
                .expect("pinned program")
                .id()
        })
        .collect()
}

#[test]
fn reapply_keeps_counters_and_adds_no_attachment() {
    require_kernel!();
    let w = World::new(&["a.scope"]);
    w.write_layout();
    w.apply();
    assert_eq!(tc_programs(&w.host_if), 2);
    assert_eq!(cgroup_attachments(&w), 2);
    w.send_udp("a.scope", false, 9, 100);
    let before = w.stat("a.scope");
    let ids = our_program_ids(&w);

    let out = w.apply();
    assert!(
        out.contains("nothing to do"),
        "second apply changed something:\n{out}"
    );
    assert_eq!(tc_programs(&w.host_if), 2);
    assert_eq!(cgroup_attachments(&w), 2);
    assert_eq!(our_program_ids(&w), ids, "programs were reloaded");
    assert_eq!(w.stat("a.scope"), before);
    w.send_udp("a.scope", false, 1, 100);
    assert_eq!(w.stat("a.scope")["tx_packets"], 10);
}

#[test]
fn destroy_leaves_the_kernel_clean() {
    require_kernel!();
    let w = World::new(&["a.scope"]);
    w.write_layout();
    w.apply();
    let ids = our_program_ids(&w);
    w.cgacct(&["destroy", "--root", w.root.to_str().expect("utf-8")]);
    assert!(!w.root.exists());
    // The kernel releases a link and then its program from a work queue
    // after the last reference goes: wait up to 5 s for each.
    eventually("TC attachments gone", || tc_programs(&w.host_if) == 0);
    eventually("cgroup attachments gone", || cgroup_attachments(&w) == 0);
    eventually("programs freed", || {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .all(|p| !ids.contains(&p.id()))
    });
}

/// A map an earlier build pinned and this one no longer has (its
/// iterator's health scratch): unpinned when apply loads the programs, and
/// by destroy, which otherwise would leave the root behind.
#[test]
fn maps_of_earlier_builds_are_unpinned() {
    require_kernel!();
    let w = World::new(&["a.scope"]);
    w.write_layout();
    w.apply();
    let pins = cgacct_pin::bpffs::names::Pins::new(&w.root, true);
    let retired = pins.map(cgacct_pin::object::RETIRED_MAPS[0]);
    let pin_retired = || {
        let out = std::process::Command::new("bpftool")
            .args(["map", "create"])
            .arg(&retired)
            .args([
                "type", "lru_hash", "key", "8", "value", "96", "entries", "16", "name",
            ])
            .arg(cgacct_pin::object::RETIRED_MAPS[0])
            .output()
            .expect("bpftool");
        assert!(
            out.status.success(),
            "bpftool map create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(retired.exists());
    };

    // As after an upgrade: the programs are loaded again.
    pin_retired();
    let prog = w.root.join("progs").join(crate::world::programs()[0]);
    std::fs::remove_file(&prog).expect("unpin a program");
    let out = w.apply();
    assert!(
        out.contains("load programs"),
        "apply did not load the programs:\n{out}"
    );
    assert!(!retired.exists(), "{} left pinned by apply", retired.display());
    w.send_udp("a.scope", false, 3, 100);
    assert_eq!(w.stat("a.scope")["tx_packets"], 3);

    pin_retired();
    w.cgacct(&["destroy", "--root", w.root.to_str().expect("utf-8")]);
    assert!(!w.root.exists(), "destroy left {}", w.root.display());
}
