//! `cgacct-pin`: loads cgacct's BPF programs once, pins them and the shared
//! maps on bpffs as a layout file says, attaches them by reference, and pins
//! one cgroup iterator per cgroup as a readable `net.stat` file.
//!
//! The data flows one way, and so do the imports: each layer below uses
//! only the layers listed before it (a unit test, `layers`, checks this on
//! every `cargo test`).
//!
//! 1. [`sys`]: every raw call (bpf(2) commands aya lacks, libc), errors
//!    naming the call, the test kill points.
//! 2. [`spec`]: what the user asked for: the layout and its patterns.
//! 3. [`object`]: what this binary carries: the BPF object, its programs
//!    and map shapes, its build id.
//! 4. [`bpffs`]: the root on bpffs: pin names and escaping, the walk of the
//!    tree, access modes, the root lock.
//! 5. [`tc`]: how TC attaches on this kernel (TCX or clsact), returned, not
//!    global; attaching, and reading clsact filters.
//! 6. [`observe`]: what is: host, kernel facts, what the kernel holds.
//! 7. [`plan`]: the difference, as actions; pure.
//! 8. [`apply`]: the actions, executed: the only layer that changes state.
//! 9. [`follow`]: events (inotify, rtnetlink) and the watcher.
//! 10. [`report`]: maps and text: status, top, metrics, removed.
//! 11. [`cli`]: one file per command; exit status decided in one place.
pub mod apply;
pub mod bpffs;
pub mod cli;
pub mod follow;
pub mod object;
pub mod observe;
pub mod plan;
pub mod report;
pub mod spec;
pub mod sys;
pub mod tc;

/// The layers in order; each may import only from those before it.
pub const LAYERS: [&str; 11] = [
    "sys", "spec", "object", "bpffs", "tc", "observe", "plan", "apply", "follow", "report", "cli",
];

#[cfg(test)]
mod layers;
