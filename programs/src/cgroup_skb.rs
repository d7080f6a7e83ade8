//! cgroup_skb ingress/egress: counts per socket cgroup.
//!
//! `bpf_skb_cgroup_id` gives the socket's own cgroup even when the program
//! is attached at an ancestor, so one attachment at a subtree root accounts
//! every cgroup below it, present and future. A socket whose cgroup was
//! removed counts in its nearest live ancestor (see [`crate::fold`]).
use aya_ebpf::{helpers::generated::bpf_skb_cgroup_id, macros::cgroup_skb, programs::SkBuffContext};

use crate::{
    account::{add_cgroup, Direction},
    classes,
    fold::Family,
    maps::{CGROUP_SLOTS, CGROUP_STATS},
    measure::measure,
};

/// Let the packet through: accounting never filters.
const PASS: i32 = 1;

#[cgroup_skb(ingress)]
pub fn cgacct_cg_ingress(ctx: SkBuffContext) -> i32 {
    count(&ctx, Direction::Rx);
    PASS
}

#[cgroup_skb(egress)]
pub fn cgacct_cg_egress(ctx: SkBuffContext) -> i32 {
    count(&ctx, Direction::Tx);
    PASS
}

#[inline(always)]
fn count(ctx: &SkBuffContext, dir: Direction) {
    let skb = ctx.skb.skb;
    // SAFETY: helper call on the program's context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    let (bytes, packets) = measure(skb, 0);
    add_cgroup(
        &CGROUP_STATS,
        &CGROUP_SLOTS,
        cgroup_id,
        Family::Socket,
        dir,
        bytes,
        packets,
    );
    classes::count(skb, cgroup_id, dir, bytes, packets);
}
