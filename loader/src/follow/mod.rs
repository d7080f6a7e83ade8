//! Following the host as it changes: the cgroup tree kept by inotify
//! ([`cgroup_tree`]), link events ([`link_events`]), and the watcher that
//! turns them into actions through the same planners as `plan`
//! ([`watch`]).
pub mod cgroup_tree;
pub mod link_events;
pub mod watch;
