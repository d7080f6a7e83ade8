//! cgacct's kernel-side programs: one module per program type, all sharing
//! the maps in [`maps`].
//!
//! - [`cgroup_skb`]: ingress/egress per socket cgroup, attached at a cgroup
//!   (usually a subtree root).
//! - [`tc`]: ingress/egress classifiers for (host-side) veths, per socket
//!   cgroup and per interface.
//! - [`cgroup_iter`]: prints one cgroup's counters, subtree included, as
//!   flat `key value` text when its pinned link is read.
//! - [`classes`]: the cgroup_skb hooks' counts by class of the peer
//!   address (destination classes), when the layout has `[classes]`.
//! - [`health`]: TCP health and drops per socket cgroup, beside the
//!   kernel's own MIB counters.
//! - [`removal`]: on `rmdir` of a cgroup, folds its totals into its parent
//!   and keeps them as its last word; on its release, folds what came
//!   after.
#![no_std]
#![no_main]
// Inline BPF assembly for atomic adds to map values shared by CPUs (see
// fold::atomic_add); aya-ebpf uses the same feature.
#![feature(asm_experimental_arch)]

mod account;
mod cgroup_iter;
mod cgroup_skb;
mod classes;
mod fold;
mod health;
mod iter_ctx;
mod kernel;
mod maps;
mod measure;
mod removal;
mod tc;
mod text;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: the iterator needs the GPL-only `bpf_seq_printf`.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
