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
    iter_ctx::IterCgroupCtx,
    kernel::{self, add_slots, cgroup_id, sum, sum_counters, sum_unrolled},
    maps::{
        CGROUP_SLOTS, CGROUP_STATS, DEPARTED, ITER_SCRATCH, OVERFLOW, TC_CGROUP_SLOTS, TC_CGROUP_STATS,
        VETH_SLOTS, VETH_STATS,
    },
    text::{Key, Out},
};

/// What a read's `ITER_SCRATCH` entry starts from (read-only data).
static ITER_ZERO: IterAcc = IterAcc::ZERO;

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
    let Some([own, own_tc, own_veth]) = sum_counters::<u64, Counters, 3, { sum::AUTO }>(
        [
            ptr::from_ref(&CGROUP_STATS).cast_mut().cast(),
            ptr::from_ref(&TC_CGROUP_STATS).cast_mut().cast(),
            ptr::from_ref(&VETH_STATS).cast_mut().cast(),
        ],
        &id,
    ) else {
        return;
    };
    let mut own3 = [own, own_tc, own_veth];
    if add_slots::<3, { sum::AUTO }, false>(
        [
            ptr::from_ref(&CGROUP_SLOTS).cast_mut().cast(),
            ptr::from_ref(&TC_CGROUP_SLOTS).cast_mut().cast(),
            ptr::from_ref(&VETH_SLOTS).cast_mut().cast(),
        ],
        id,
        &mut own3,
    )
    .is_none()
    {
        return;
    }
    let [own, own_tc, own_veth] = own3;
    // Removed descendants, folded in when each was removed (under the same
    // cgroup_mutex this walk holds): subtree sums never go backwards.
    let gone = match DEPARTED.get_ptr(id) {
        // SAFETY: non-NULL lookup result.
        Some(d) => unsafe { *d },
        None => Departed::default(),
    };
    if seq_num == 0 {
        // The entry is made from a zero template: with its text it is
        // larger than the stack.
        let _ = ITER_SCRATCH.insert(session, &ITER_ZERO, BPF_ANY as u64);
        let Some(acc) = ITER_SCRATCH.get_ptr_mut(session) else {
            return;
        };
        // SAFETY: a session is walked by one reader at a time.
        let acc = unsafe { &mut *acc };
        acc.cgroup_id = id;
        acc.cgroups = 1;
        acc.own = own;
        acc.subtree = own;
        acc.own_tc = own_tc;
        acc.subtree_tc = own_tc;
        acc.own_veth = own_veth;
        acc.subtree_veth = own_veth;
        acc.departed_cgroups = 0;
        add_departed(acc, &gone);
        health::visit(id, &mut acc.health, true);
    } else if let Some(acc) = ITER_SCRATCH.get_ptr_mut(session) {
        // SAFETY: a session is walked by one reader at a time.
        let acc = unsafe { &mut *acc };
        acc.cgroups += 1;
        acc.subtree.add(&own);
        acc.subtree_tc.add(&own_tc);
        acc.subtree_veth.add(&own_veth);
        add_departed(acc, &gone);
        health::visit(id, &mut acc.health, false);
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
    let Some(acc) = ITER_SCRATCH.get_ptr_mut(session) else {
        return; // the cgroup is gone: nothing was walked
    };
    // SAFETY: non-NULL lookup result, private to this session.
    let a = unsafe { &*acc };
    // SAFETY: a field projection of the same value.
    let out = Out::new(seq, unsafe { &raw mut (*acc).text });
    out.line(Key::CGROUP_ID, a.cgroup_id);
    out.line(Key::SUBTREE_CGROUPS, a.cgroups);
    out.line(Key::REMOVED_CGROUPS, a.departed_cgroups);
    counters(&out, &a.subtree, Key::RX_BYTES);
    counters(&out, &a.own, Key::SELF_RX_BYTES);
    counters(&out, &a.subtree_tc, Key::TC_INGRESS_BYTES);
    counters(&out, &a.own_tc, Key::SELF_TC_INGRESS_BYTES);
    counters(&out, &a.subtree_veth, Key::VETH_RX_BYTES);
    counters(&out, &a.own_veth, Key::SELF_VETH_RX_BYTES);
    // Class lines are printed with their names by bpf_seq_printf: what is
    // ready goes first.
    out.flush();
    classes::print(seq, session);
    health::print(&out, &a.health);
    if a.cgroup_id == ROOT_CGROUP {
        print_overflow(&out);
    }
    out.flush();
    let _ = ITER_SCRATCH.remove(session);
}

/// The root cgroup's file also prints what no full map could take, by
/// map: packets and bytes, both directions summed. Unrolled per CPU at
/// any count: the epilogue runs after the walk has let `cgroup_mutex` go,
/// so `SUM_SCRATCH`, which the walk's and the removal programs' loops
/// share under that mutex, is not its to use.
#[inline(always)]
fn print_overflow(out: &Out) {
    let map = ptr::from_ref(&OVERFLOW).cast_mut().cast();
    let mut b = 0u32;
    while b < overflow::BUCKETS {
        let [c] = sum_unrolled::<u32, Counters, 1>([map], &b);
        // Bucket b's packets and bytes keys, in bucket order.
        let k = Key::OVERFLOW_CGROUP_STATS_PACKETS.plus(2 * b as u8);
        out.line_id(k, c.rx_packets + c.tx_packets);
        out.line_id(k + 1, c.rx_bytes + c.tx_bytes);
        b += 1;
    }
}

/// The four lines of `c`: keys `first` (rx bytes) and the three after it
/// (rx packets, tx bytes, tx packets).
#[inline(always)]
fn counters(out: &Out, c: &Counters, first: Key) {
    out.line_id(first.plus(0), c.rx_bytes);
    out.line_id(first.plus(1), c.rx_packets);
    out.line_id(first.plus(2), c.tx_bytes);
    out.line_id(first.plus(3), c.tx_packets);
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
