//! Following the host as it changes: the cgroup tree kept by inotify
//! ([`cgroup_tree`]), link events ([`link_events`]), and the watcher that
//! turns them into actions through the same planners as `plan`
//! ([`watch`]).
pub mod cgroup_tree;
pub mod link_events;
pub mod watch;

use crate::observe::runtime::resolver::Resolver;

/// Tells `names` of the cgroups just made, so that their containers are
/// named by the time their traffic shows (and remembered while they live).
pub fn look_for(names: &Resolver, tree: &cgroup_tree::CgroupTree, changes: &[cgroup_tree::Change]) {
    for c in changes {
        if let cgroup_tree::Change::Created { id, .. } = c {
            if let Some(e) = tree.get(*id) {
                names.look_for(&e.identity);
            }
        }
    }
}
