//! `cgacct-pin`: loads cgacct's BPF programs once, pins them and the shared
//! maps on bpffs as a layout file says, attaches them by reference, and pins
//! one cgroup iterator per cgroup as a readable `net.stat` file.
//!
//! The data flows one way, one module per step:
//! [`layout`] (file -> validated layout, with [`select`] patterns) ->
//! [`plan`] (what the kernel should hold, from [`host`] and [`names`], vs
//! what it holds, from [`held`] and [`build_id`]) -> [`apply`] (kernel
//! operations, with [`kernel`] facts and the raw calls of [`sys`]; TCX or
//! clsact by [`tc_attach`]; [`fault`] lets tests stop it anywhere) ->
//! [`read`] (maps and text).
pub mod apply;
pub mod build_id;
pub mod cgroup_tree;
pub mod fault;
pub mod held;
pub mod host;
pub mod identity;
pub mod kernel;
pub mod layout;
pub mod metrics;
pub mod names;
pub mod netlink;
pub mod owners;
pub mod plan;
pub mod read;
pub mod removed;
pub mod select;
pub mod sys;
pub mod tc_attach;
pub mod top;
pub mod watch;
