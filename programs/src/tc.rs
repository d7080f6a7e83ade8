//! TC classifiers for veths (TCX links, or clsact filters on old kernels):
//! count per cgroup of the skb's socket and per interface.
//!
//! Traffic without a socket (forwarded, or made by the kernel) is counted
//! under cgroup id 0, the unattributed bucket: never dropped from totals.
//!
//! An interface with an owner (the cgroup behind it, in `IFACE_OWNER`, cached
//! in the interface's `IFACE_STATS` slot) also
//! counts every frame, whatever its socket, in `VETH_STATS` under the owner,
//! from the owner's side: leaving the host through the interface (TC egress)
//! is the owner's rx, arriving from it (TC ingress) the owner's tx. Each map
//! counts a frame once. A removed socket cgroup or owner counts in its
//! nearest live ancestor (see [`crate::fold`]).
use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::generated::bpf_skb_cgroup_id, macros::classifier, programs::TcContext,
};
use cgacct_common::{overflow, IfaceCounters, SLOTS};

use crate::{
    account::{add_cgroup, bump, counters, overflow as add_overflow, Direction},
    fold::Family,
    maps::{
        IFACE_OWNER, IFACE_OWNER_GEN, IFACE_SLOTS, IFACE_STATS, TC_CGROUP_SLOTS, TC_CGROUP_STATS, VETH_SLOTS,
        VETH_STATS,
    },
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
    add_cgroup(
        &TC_CGROUP_STATS,
        &TC_CGROUP_SLOTS,
        cgroup_id,
        Family::Tc,
        dir,
        bytes,
        packets,
    );
    let owner = add_iface(ifindex, dir, bytes, packets);
    if owner != 0 {
        let owner_dir = match dir {
            Direction::Rx => Direction::Tx,
            Direction::Tx => Direction::Rx,
        };
        add_cgroup(
            &VETH_STATS,
            &VETH_SLOTS,
            owner,
            Family::Veth,
            owner_dir,
            bytes,
            packets,
        );
    }
}

/// Adds one skb to interface `ifindex`'s value on this CPU: its slot of
/// `IFACE_SLOTS` where it holds one or takes a free one, else
/// `IFACE_STATS[ifindex]` (or the overflow bucket when that map is full),
/// and returns the interface's
/// owner, 0 for none: the one cached in the slot while the loader has not
/// changed `IFACE_OWNER` since, else looked up and cached again.
#[inline(always)]
fn add_iface(ifindex: u32, dir: Direction, bytes: u64, packets: u64) -> u64 {
    let generation = owner_generation();
    let slot = match iface_slot(ifindex).or_else(|| IFACE_STATS.get_ptr_mut(&ifindex)) {
        Some(slot) => slot,
        None => {
            let fresh = IfaceCounters {
                counters: counters(dir, bytes, packets),
                owner: lookup_owner(ifindex),
                owner_gen: generation,
            };
            if IFACE_STATS.insert(&ifindex, &fresh, BPF_NOEXIST as u64).is_ok() {
                return fresh.owner;
            }
            // Another CPU created the entry first, or the map is full.
            match IFACE_STATS.get_ptr_mut(&ifindex) {
                Some(slot) => slot,
                None => {
                    add_overflow(overflow::IFACE_STATS, &fresh.counters);
                    return fresh.owner;
                }
            }
        }
    };
    // SAFETY: a per-CPU slot: only this CPU writes it, and the program is
    // not preempted while it runs.
    let slot = unsafe { &mut *slot };
    bump(&mut slot.counters, dir, bytes, packets);
    if generation == 0 || slot.owner_gen != generation {
        slot.owner = lookup_owner(ifindex);
        slot.owner_gen = generation;
    }
    slot.owner
}

/// This CPU's value of `ifindex` in `IFACE_SLOTS`: the slot it holds, or
/// the free slot it takes now (its owner not looked up yet: generation 0).
#[inline(always)]
fn iface_slot(ifindex: u32) -> Option<*mut IfaceCounters> {
    if ifindex == 0 {
        return None;
    }
    let s = IFACE_SLOTS.get_ptr_mut(ifindex & (SLOTS - 1))?;
    // SAFETY: this CPU's slot, not preempted while the program runs.
    let s = unsafe { &mut *s };
    if s.ifindex != u64::from(ifindex) {
        if s.ifindex != 0 {
            return None;
        }
        s.ifindex = u64::from(ifindex);
        s.value = IfaceCounters::default();
    }
    Some(&raw mut s.value)
}

/// The generation of `IFACE_OWNER` (see [`IfaceCounters`]); 0 before the
/// loader set one: nothing is cached then.
#[inline(always)]
fn owner_generation() -> u64 {
    IFACE_OWNER_GEN.get(0).copied().unwrap_or(0)
}

/// `IFACE_OWNER[ifindex]`, 0 for none.
#[inline(always)]
fn lookup_owner(ifindex: u32) -> u64 {
    // SAFETY: a plain lookup; the value is copied out at once.
    unsafe { IFACE_OWNER.get(&ifindex) }.copied().unwrap_or(0)
}
