//! TC classifiers for veths (TCX links, or clsact filters on old kernels):
//! count per cgroup of the skb's socket and per interface.
//!
//! Traffic without a socket (forwarded, or made by the kernel) is counted
//! under cgroup id 0, the unattributed bucket: never dropped from totals.
//!
//! An interface with an owner (the cgroup behind it, in `IFACE_OWNER`) also
//! counts every frame, whatever its socket, in `VETH_STATS` under the owner,
//! from the owner's side: leaving the host through the interface (TC egress)
//! is the owner's rx, arriving from it (TC ingress) the owner's tx. Each map
//! counts a frame once. A removed socket cgroup or owner counts in its
//! nearest live ancestor (see [`crate::fold`]).
use aya_ebpf::{helpers::generated::bpf_skb_cgroup_id, macros::classifier, programs::TcContext};
use cgacct_common::overflow;

use crate::{
    account::{add, add_cgroup, Direction},
    fold::Family,
    maps::{IFACE_OWNER, IFACE_STATS, TC_CGROUP_STATS, VETH_STATS},
    measure::measure,
};

/// `TC_ACT_UNSPEC` / `TCX_NEXT`: let the next program or the default
/// action decide; accounting never ends the chain.
const NEXT: i32 = -1;
/// Ethernet header length: veths are Ethernet devices.
const ETH_HLEN: u32 = 14;

#[classifier]
pub fn cgacct_tc_ingress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Rx);
    NEXT
}

#[classifier]
pub fn cgacct_tc_egress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Tx);
    NEXT
}

#[inline(always)]
fn count(ctx: &TcContext, dir: Direction) {
    let skb = ctx.skb.skb;
    // SAFETY: helper call and field read on the program's context.
    let (cgroup_id, ifindex) = unsafe { (bpf_skb_cgroup_id(skb), (*skb).ifindex) };
    let (bytes, packets) = measure(skb, ETH_HLEN);
    add_cgroup(&TC_CGROUP_STATS, cgroup_id, Family::Tc, dir, bytes, packets);
    add(&IFACE_STATS, &ifindex, overflow::IFACE_STATS, dir, bytes, packets);
    // SAFETY: a plain lookup; the value is copied out at once.
    if let Some(owner) = unsafe { IFACE_OWNER.get(&ifindex) } {
        let owner = *owner;
        let owner_dir = match dir {
            Direction::Rx => Direction::Tx,
            Direction::Tx => Direction::Rx,
        };
        add_cgroup(&VETH_STATS, owner, Family::Veth, owner_dir, bytes, packets);
    }
}
