//! Kernel selftests: each test builds its own world (netns, veths, cgroups,
//! a layout root on bpffs), sends known traffic, and asserts exact counts.
//! Run as root: `cargo test` (see README). Without root or BPF they skip and
//! say why; with CGACCT_REQUIRE_KERNEL=1 they fail instead.
#[path = "../world.rs"]
mod world;

mod access;
mod attribution;
mod bad_input;
mod capacity;
mod classes;
mod cli;
mod containers;
mod counts;
mod daemonset;
mod declarative;
mod export;
mod faults;
mod health;
mod late;
mod latency;
mod lifecycle;
mod rcu;
mod removal;
mod slots;
mod tc_modes;
mod top;
mod tree;
mod watch;
