//! The cgroup iterator behind every `net.stat` file.
//!
//! The loader pins one link of this program per cgroup, with walk order
//! "descendants, pre-order" rooted at that cgroup. Each `read()` of the file
//! runs a fresh walk: the first cgroup visited is the file's own cgroup, the
//! rest are its descendants. Sums are kept per iterator session in
//! `ITER_SCRATCH` and printed at the epilogue (the call with no cgroup), so
//! the subtree is aggregated at read time and the packet path stays flat.
//!
//! aya-ebpf has no macro for iterators: the function is placed in the
//! `iter/cgroup` section by hand, with the kernel's context layout.
use core::ptr;

use aya_ebpf::{
    bindings::{seq_file, BPF_ANY},
    helpers::generated::bpf_seq_printf,
};
use cgacct_common::{overflow, Counters, Departed, IterAcc, ROOT_CGROUP};

use crate::{
    classes, health,
    kernel::{self, cgroup_id, sum, sum_counters, sum_unrolled},
    maps::{CGROUP_STATS, DEPARTED, ITER_SCRATCH, OVERFLOW, TC_CGROUP_STATS, VETH_STATS},
};

/// `struct bpf_iter_meta`.
#[repr(C)]
pub struct IterMeta {
    seq: *mut seq_file,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__cgroup`.
#[repr(C)]
pub struct IterCgroupCtx {
    meta: *mut IterMeta,
    cgroup: *const u8,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/cgroup")]
pub extern "C" fn cgacct_net_stat(ctx: *mut IterCgroupCtx) -> i32 {
    // SAFETY: the kernel passes a valid context; meta is never NULL.
    unsafe {
        let meta = (*ctx).meta;
        let seq = (*meta).seq;
        let session = (*meta).session_id;
        let cgroup = (*ctx).cgroup;
        if cgroup.is_null() {
            // Not used for counting: kept so the loader can read back
            // which build runs (see kernel::BUILD_ID).
            let _ = ptr::read_volatile(&kernel::BUILD_ID);
            epilogue(seq, session);
        } else {
            visit(cgroup, session, (*meta).seq_num);
        }
    }
    0
}

/// One cgroup of the walk: add its counters to the session's sums.
#[inline(always)]
unsafe fn visit(cgroup: *const u8, session: u64, seq_num: u64) {
    let Some(id) = (unsafe { cgroup_id(cgroup) }) else {
        return;
    };
    health::visit(id, session, seq_num);
    let Some([own, own_tc, own_veth]) = sum_counters::<u64, Counters, 3, { sum::UNROLLED }>(
        [
            ptr::from_ref(&CGROUP_STATS).cast_mut().cast(),
            ptr::from_ref(&TC_CGROUP_STATS).cast_mut().cast(),
            ptr::from_ref(&VETH_STATS).cast_mut().cast(),
        ],
        &id,
    ) else {
        return;
    };
    // Removed descendants, folded in when each was removed (under the same
    // cgroup_mutex this walk holds): subtree sums never go backwards.
    let gone = match DEPARTED.get_ptr(id) {
        // SAFETY: non-NULL lookup result.
        Some(d) => unsafe { *d },
        None => Departed::default(),
    };
    if seq_num == 0 {
        let mut acc = IterAcc {
            cgroup_id: id,
            cgroups: 1,
            own,
            subtree: own,
            own_tc,
            subtree_tc: own_tc,
            own_veth,
            subtree_veth: own_veth,
            departed_cgroups: 0,
        };
        add_departed(&mut acc, &gone);
        let _ = ITER_SCRATCH.insert(session, acc, BPF_ANY as u64);
    } else if let Some(acc) = ITER_SCRATCH.get_ptr_mut(session) {
        // SAFETY: a session is walked by one reader at a time.
        let acc = unsafe { &mut *acc };
        acc.cgroups += 1;
        acc.subtree.add(&own);
        acc.subtree_tc.add(&own_tc);
        acc.subtree_veth.add(&own_veth);
        add_departed(acc, &gone);
    }
    classes::visit(id, session, seq_num);
}

#[inline(always)]
fn add_departed(acc: &mut IterAcc, d: &Departed) {
    acc.departed_cgroups += d.cgroups;
    acc.subtree.add(&d.totals.socket);
    acc.subtree_tc.add(&d.totals.tc);
    acc.subtree_veth.add(&d.totals.veth);
}

/// After the walk: print the sums as flat `key value` lines, like cgroupfs
/// `*.stat` files, and drop the session's scratch entry.
#[inline(always)]
unsafe fn epilogue(seq: *mut seq_file, session: u64) {
    let Some(acc) = ITER_SCRATCH.get_ptr(session) else {
        return; // the cgroup is gone: nothing was walked
    };
    // SAFETY: non-NULL lookup result.
    let a = unsafe { *acc };
    let _ = ITER_SCRATCH.remove(session);
    print(
        seq,
        b"cgroup_id %llu\nsubtree_cgroups %llu\nremoved_cgroups %llu\n\0",
        &[a.cgroup_id, a.cgroups, a.departed_cgroups],
    );
    print(
        seq,
        b"rx_bytes %llu\nrx_packets %llu\ntx_bytes %llu\ntx_packets %llu\n\0",
        &counters(&a.subtree),
    );
    print(
        seq,
        b"self_rx_bytes %llu\nself_rx_packets %llu\nself_tx_bytes %llu\nself_tx_packets %llu\n\0",
        &counters(&a.own),
    );
    print(
        seq,
        b"tc_ingress_bytes %llu\ntc_ingress_packets %llu\ntc_egress_bytes %llu\ntc_egress_packets %llu\n\0",
        &counters(&a.subtree_tc),
    );
    print(
        seq,
        b"self_tc_ingress_bytes %llu\nself_tc_ingress_packets %llu\nself_tc_egress_bytes %llu\nself_tc_egress_packets %llu\n\0",
        &counters(&a.own_tc),
    );
    print(
        seq,
        b"veth_rx_bytes %llu\nveth_rx_packets %llu\nveth_tx_bytes %llu\nveth_tx_packets %llu\n\0",
        &counters(&a.subtree_veth),
    );
    print(
        seq,
        b"self_veth_rx_bytes %llu\nself_veth_rx_packets %llu\nself_veth_tx_bytes %llu\nself_veth_tx_packets %llu\n\0",
        &counters(&a.own_veth),
    );
    classes::print(seq, session);
    health::print(seq, session);
    if a.cgroup_id == ROOT_CGROUP {
        print_overflow(seq);
    }
}

/// The root cgroup's file also prints what no full map could take, by
/// map: packets and bytes, both directions summed.
#[inline(always)]
fn print_overflow(seq: *mut seq_file) {
    let map = ptr::from_ref(&OVERFLOW).cast_mut().cast();
    let mut v = [0u64; 2 * overflow::BUCKETS as usize];
    let mut b = 0u32;
    while b < overflow::BUCKETS {
        let [c] = sum_unrolled::<u32, Counters, 1>([map], &b);
        let i = 2 * b as usize;
        if i + 1 < v.len() {
            v[i] = c.rx_packets + c.tx_packets;
            v[i + 1] = c.rx_bytes + c.tx_bytes;
        }
        b += 1;
    }
    let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13] = v;
    print(
        seq,
        b"overflow_cgroup_stats_packets %llu\noverflow_cgroup_stats_bytes %llu\n\
overflow_tc_cgroup_stats_packets %llu\noverflow_tc_cgroup_stats_bytes %llu\n\
overflow_iface_stats_packets %llu\noverflow_iface_stats_bytes %llu\n\0",
        &[a0, a1, a2, a3, a4, a5],
    );
    print(
        seq,
        b"overflow_veth_stats_packets %llu\noverflow_veth_stats_bytes %llu\n\
overflow_departed_packets %llu\noverflow_departed_bytes %llu\n\0",
        &[a6, a7, a8, a9],
    );
    print(
        seq,
        b"overflow_departed_tc_packets %llu\noverflow_departed_tc_bytes %llu\n\
overflow_departed_veth_packets %llu\noverflow_departed_veth_bytes %llu\n\0",
        &[a10, a11, a12, a13],
    );
}

#[inline(always)]
fn counters(c: &Counters) -> [u64; 4] {
    [c.rx_bytes, c.rx_packets, c.tx_bytes, c.tx_packets]
}

#[inline(always)]
pub fn print<const F: usize, const N: usize>(seq: *mut seq_file, fmt: &[u8; F], args: &[u64; N]) {
    // SAFETY: `fmt` is NUL-terminated read-only data, `args` holds N u64s.
    unsafe {
        bpf_seq_printf(
            seq,
            fmt.as_ptr().cast(),
            F as u32,
            args.as_ptr().cast(),
            (N * 8) as u32,
        );
    }
}
