//! BTF tracepoint `cgroup_rmdir`: the last word of a removed cgroup.
//!
//! It runs inside `rmdir`, under the `cgroup_mutex` that every `net.stat`
//! read (the cgroup iterator) also holds, right after the cgroup went dead
//! (from then on iterators skip it). In one step for any reader it: adds the
//! cgroup's own totals and those of its own removed descendants to its
//! parent's `DEPARTED` entry; records them, with the path and the time, in
//! `REMOVED`; and deletes its entries from the counter maps and frees its
//! slots in the slot arrays in front of them. So a parent's
//! subtree totals never go backwards when a child goes, and a cgroup that
//! lived for a moment still has its final totals afterwards.
//!
//! The removed cgroup lives on in the kernel while a socket made in it does
//! (a TCP connection closing, a socket held by a process elsewhere). From
//! the removal on, its `DYING` entry sends that socket's traffic to its
//! nearest live ancestor ([`crate::fold`]). The `cgroup_release` tracepoint
//! fires when the kernel lets the cgroup go (its last reference gone, so
//! no packet can carry its id again, also under `cgroup_mutex`): it folds
//! whatever still sits under the id (counted while no `DYING` entry could
//! route it) and ends the `DYING` entry, kept as a record only if traffic
//! came late. So no entry under a removed id outlives the kernel's own
//! hold on that cgroup.
//!
//! Both tracepoints fire in every cgroup hierarchy, v1 ones
//! included (hybrid hosts, container runtimes with the cgroupfs driver),
//! and kernfs ids are unique within one hierarchy only: a v1 cgroup can have
//! the id of a live cgroup2 cgroup. Every id in the maps is a cgroup2 id
//! (`bpf_skb_cgroup_id` and the iterator both see cgroup2 only), so
//! cgroups of any other hierarchy are ignored.
use core::ptr;

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_probe_read_kernel_str_bytes, generated::bpf_ktime_get_boot_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use cgacct_common::{Counters, Dying, Totals};

use crate::{
    classes,
    fold::{add_totals, into_departed, live_ancestor},
    health,
    kernel::{
        add_slots, cgroup_hierarchy_id, cgroup_kn, kn_id, kn_parent, sum, sum_counters, CGROUP2_HIERARCHY_ID,
    },
    maps::{
        CGROUP_SLOTS, CGROUP_STATS, DEPARTED, DYING, REMOVED, REMOVED_SCRATCH, TC_CGROUP_SLOTS,
        TC_CGROUP_STATS, VETH_SLOTS, VETH_STATS,
    },
};

#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgacct_cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct cgroup *cgrp, const char *path)
    let cgrp: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    // SAFETY: kernel pointers are only read through probe helpers.
    unsafe { fold::<{ sum::LOOP }>(cgrp, path) };
    0
}

/// [`cgacct_cgroup_rmdir`] for kernels whose counter maps are shared
/// (before 5.19): no per-CPU sum in its code, so no `bpf_loop` callback,
/// which kernels before 5.13 cannot load at all. The loader loads one of
/// the two and pins it under the first one's name.
#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgacct_cgroup_rmdir_shared(ctx: BtfTracePointContext) -> i32 {
    let cgrp: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    // SAFETY: as above.
    unsafe { fold::<{ sum::SHARED }>(cgrp, path) };
    0
}

#[inline(always)]
unsafe fn fold<const MODE: u8>(cgrp: *const u8, path: *const u8) -> Option<()> {
    // SAFETY: probe reads. A hierarchy that cannot be read is not taken
    // for cgroup2.
    if unsafe { cgroup_hierarchy_id(cgrp) }? != CGROUP2_HIERARCHY_ID {
        return None;
    }
    // SAFETY: probe reads.
    let kn = unsafe { cgroup_kn(cgrp) }?;
    let id = unsafe { kn_id(kn) }?;
    let parent = unsafe { kn_id(kn_parent(kn)?) }?;
    // From now on its sockets' traffic goes to the parent: the entry is
    // made before the counters are summed and deleted below.
    let dying = Dying {
        parent_id: parent,
        ..Dying::default()
    };
    let _ = DYING.insert(id, dying, BPF_ANY as u64);
    // The record is built in a per-CPU slot (too big for the BPF stack).
    let rec = REMOVED_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, not preempted while the program runs.
    let rec = unsafe { &mut *rec };
    let [socket, tc, veth] = counter_totals::<MODE>(id)?;
    rec.id = id;
    rec.parent_id = parent;
    // SAFETY: helper without arguments.
    rec.removed_at_ns = unsafe { bpf_ktime_get_boot_ns() };
    rec.own = Totals { socket, tc, veth };
    rec.subtree = rec.own;
    rec.descendants = 0;
    if let Some(d) = DEPARTED.get_ptr(id) {
        // SAFETY: non-NULL lookup result.
        let d = unsafe { &*d };
        rec.descendants = d.cgroups;
        rec.subtree.add(&d.totals);
    }

    // The parent gains what this cgroup and its removed descendants counted.
    into_departed(Some(parent), rec.descendants + 1, &rec.subtree);

    // The path as the kernel printed it (NUL-terminated, truncated).
    // SAFETY: reads a NUL-terminated kernel string into the buffer.
    if unsafe { bpf_probe_read_kernel_str_bytes(path, &mut rec.path) }.is_err() {
        rec.path[0] = 0;
    }
    let _ = REMOVED.insert(id, &*rec, BPF_ANY as u64);
    health::removed::<MODE>(id, parent);

    classes::fold::<MODE>(id, Some(parent));

    // Its counters live on in the record: free the map space.
    let _ = DEPARTED.remove(id);
    let _ = CGROUP_STATS.remove(id);
    let _ = TC_CGROUP_STATS.remove(id);
    let _ = VETH_STATS.remove(id);
    Some(())
}

#[btf_tracepoint(function = "cgroup_release")]
pub fn cgacct_cgroup_release(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct cgroup *cgrp, const char *path)
    let cgrp: *const u8 = ctx.arg(0);
    // SAFETY: kernel pointers are only read through probe helpers.
    unsafe { release::<{ sum::LOOP }>(cgrp) };
    0
}

/// [`cgacct_cgroup_release`] for shared counter maps (see
/// [`cgacct_cgroup_rmdir_shared`]).
#[btf_tracepoint(function = "cgroup_release")]
pub fn cgacct_cgroup_release_shared(ctx: BtfTracePointContext) -> i32 {
    let cgrp: *const u8 = ctx.arg(0);
    // SAFETY: as above.
    unsafe { release::<{ sum::SHARED }>(cgrp) };
    0
}

/// The three cgroup counter maps' whole counts of `id`, their slots
/// included; the slots that held `id` are freed.
#[inline(always)]
fn counter_totals<const MODE: u8>(id: u64) -> Option<[Counters; 3]> {
    let mut totals = sum_counters::<u64, Counters, 3, MODE>(
        [
            ptr::from_ref(&CGROUP_STATS).cast_mut().cast(),
            ptr::from_ref(&TC_CGROUP_STATS).cast_mut().cast(),
            ptr::from_ref(&VETH_STATS).cast_mut().cast(),
        ],
        &id,
    )?;
    add_slots::<3, MODE, true>(
        [
            ptr::from_ref(&CGROUP_SLOTS).cast_mut().cast(),
            ptr::from_ref(&TC_CGROUP_SLOTS).cast_mut().cast(),
            ptr::from_ref(&VETH_SLOTS).cast_mut().cast(),
        ],
        id,
        &mut totals,
    )?;
    Some(totals)
}

/// The kernel lets a removed cgroup go: no socket refers to it any more.
#[inline(always)]
unsafe fn release<const MODE: u8>(cgrp: *const u8) -> Option<()> {
    // SAFETY: probe reads, as in `fold`.
    if unsafe { cgroup_hierarchy_id(cgrp) }? != CGROUP2_HIERARCHY_ID {
        return None;
    }
    // SAFETY: probe reads.
    let kn = unsafe { cgroup_kn(cgrp) }?;
    let id = unsafe { kn_id(kn) }?;
    // What still sits under its id: counted after its removal while no
    // DYING entry routed it (that map full, or cgacct not loaded yet when
    // it was removed).
    let [socket, tc, veth] = counter_totals::<MODE>(id)?;
    let mut left = Totals { socket, tc, veth };
    let mut cgroups = 0;
    if let Some(d) = DEPARTED.get_ptr(id) {
        // SAFETY: non-NULL lookup result.
        let d = unsafe { &*d };
        cgroups = d.cgroups;
        left.add(&d.totals);
    }
    // Where it all goes: the nearest live ancestor of its parent (the
    // parent its `DYING` entry names, or the kernel's when it has none).
    // Found once; the `DYING` entry is looked up again at the end, so the
    // verifier walks the code between once, not once per case.
    let parent = match DYING.get_ptr(id) {
        // SAFETY: non-NULL lookup result.
        Some(d) => Some(unsafe { (*d).parent_id }),
        // SAFETY: probe reads.
        None => unsafe { kn_parent(kn).and_then(|p| kn_id(p)) },
    };
    let to = parent.and_then(live_ancestor);
    health::released::<MODE>(id, to);
    let late = cgroups | left.any() != 0;
    if late {
        into_departed(to, cgroups, &left);
    }
    classes::fold::<MODE>(id, to);
    let _ = CGROUP_STATS.remove(id);
    let _ = TC_CGROUP_STATS.remove(id);
    let _ = VETH_STATS.remove(id);
    let _ = DEPARTED.remove(id);
    if let Some(d) = DYING.get_ptr_mut(id) {
        // SAFETY: non-NULL lookup result; no packet can reach this entry
        // any more.
        let d = unsafe { &mut *d };
        if late {
            add_totals(&raw mut d.late, &left);
        }
        if d.late.any() == 0 {
            let _ = DYING.remove(id);
        } else {
            // SAFETY: helper without arguments.
            d.released_at_ns = unsafe { bpf_ktime_get_boot_ns() };
        }
    }
    Some(())
}
