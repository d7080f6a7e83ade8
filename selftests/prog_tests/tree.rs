//! The cgroup tree follows real cgroupfs: `mkdir` and `rmdir` of cgroups
//! arrive as inotify events, with names people know.
use std::{fs, time::Duration, time::Instant};

use cgacct_pin::follow::cgroup_tree::{CgroupTree, Change};

use crate::{require_kernel, world::World};

const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Waits until `pred` holds for the changes seen so far (other tests change
/// the host's tree too: only our own paths are looked at).
fn wait_for(t: &mut CgroupTree, seen: &mut Vec<Change>, pred: impl Fn(&[Change]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pred(seen) {
        assert!(Instant::now() < deadline, "no such change within 5 s: {seen:?}");
        seen.extend(t.wait(Duration::from_millis(100)).expect("wait"));
    }
}

#[test]
fn tree_follows_cgroupfs_with_names() {
    require_kernel!();
    let w = World::new(&["pods.slice"]);
    let mut t = CgroupTree::follow(&w.cgroup_mount).expect("follow cgroupfs");
    let parent = w.cgroup("pods.slice");
    assert_eq!(t.by_path(&parent).map(|e| e.id), Some(w.cgroup_id("pods.slice")));

    let scope = format!("{parent}/docker-{CID}.scope");
    fs::create_dir(w.cgroup_mount.join(&scope)).expect("mkdir cgroup");
    let mut seen = Vec::new();
    wait_for(&mut t, &mut seen, |s| {
        s.iter()
            .any(|c| matches!(c, Change::Created { path, .. } if *path == scope))
    });
    let id = w.cgroup_id(&format!("pods.slice/docker-{CID}.scope"));
    let e = t.get(id).expect("new cgroup known by id");
    assert_eq!(e.path, scope);
    assert_eq!(e.identity.container_id.as_deref(), Some(CID));
    assert_eq!(e.identity.name, "docker:0123456789ab");

    fs::remove_dir(w.cgroup_mount.join(&scope)).expect("rmdir cgroup");
    wait_for(&mut t, &mut seen, |s| {
        s.iter()
            .any(|c| matches!(c, Change::Removed { id: gone, .. } if *gone == id))
    });
    assert!(t.get(id).is_none());
    assert_eq!(t.walks, 1, "followed without walking cgroupfs again");
}
