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
use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{seq_file, BPF_ANY},
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_map_lookup_percpu_elem, bpf_seq_printf},
    },
};
use cgacct_common::{Counters, IterAcc, MAX_CPUS};

use crate::maps::{CGROUP_STATS, ITER_SCRATCH, TC_CGROUP_STATS, VETH_STATS};

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

// Set by the loader before load (read-only data: the verifier sees them as
// constants). The defaults only matter if the loader forgot to set them.
#[unsafe(no_mangle)]
static NR_CPUS: u32 = 1;
#[unsafe(no_mangle)]
static CGROUP_KN_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static KERNFS_NODE_ID_OFFSET: u32 = 0;

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
    let [own, own_tc, own_veth] = sum_percpu(
        [
            ptr::from_ref(&CGROUP_STATS).cast_mut().cast(),
            ptr::from_ref(&TC_CGROUP_STATS).cast_mut().cast(),
            ptr::from_ref(&VETH_STATS).cast_mut().cast(),
        ],
        &id,
    );
    if seq_num == 0 {
        let acc = IterAcc {
            cgroup_id: id,
            cgroups: 1,
            own,
            subtree: own,
            own_tc,
            subtree_tc: own_tc,
            own_veth,
            subtree_veth: own_veth,
        };
        let _ = ITER_SCRATCH.insert(session, acc, BPF_ANY as u64);
    } else if let Some(acc) = ITER_SCRATCH.get_ptr_mut(session) {
        // SAFETY: a session is walked by one reader at a time.
        let acc = unsafe { &mut *acc };
        acc.cgroups += 1;
        acc.subtree.add(&own);
        acc.subtree_tc.add(&own_tc);
        acc.subtree_veth.add(&own_veth);
    }
}

/// `cgroup->kn->id`, with offsets taken from the running kernel's BTF by
/// the loader: nothing about kernel struct layout is baked in.
#[inline(always)]
unsafe fn cgroup_id(cgroup: *const u8) -> Option<u64> {
    // SAFETY: read-only globals.
    let (kn_off, id_off) = unsafe {
        (
            ptr::read_volatile(&CGROUP_KN_OFFSET) as usize,
            ptr::read_volatile(&KERNFS_NODE_ID_OFFSET) as usize,
        )
    };
    let kn_slot = (cgroup as usize).wrapping_add(kn_off) as *const usize;
    // SAFETY: probe reads are checked by the kernel.
    let kn = unsafe { bpf_probe_read_kernel(kn_slot) }.ok()?;
    if kn == 0 {
        return None;
    }
    let id_slot = kn.wrapping_add(id_off) as *const u64;
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel(id_slot) }.ok()
}

/// Sum of every CPU's slot of `map[key]`, for each of `maps`: one loop
/// over the CPUs for all of them keeps the verifier's work small.
#[inline(always)]
fn sum_percpu<const M: usize>(maps: [*mut c_void; M], key: &u64) -> [Counters; M] {
    // SAFETY: read-only global.
    let nr_cpus = unsafe { ptr::read_volatile(&NR_CPUS) };
    let mut total = [Counters::default(); M];
    let mut cpu = 0u32;
    while cpu < MAX_CPUS && cpu < nr_cpus {
        let mut i = 0;
        while i < M {
            // SAFETY: helper call with a valid map and key; NULL when absent.
            let slot = unsafe { bpf_map_lookup_percpu_elem(maps[i], ptr::from_ref(key).cast(), cpu) }
                as *const Counters;
            if !slot.is_null() {
                // SAFETY: non-NULL lookup result points at a `Counters`.
                total[i].add(unsafe { &*slot });
            }
            i += 1;
        }
        cpu += 1;
    }
    total
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
        b"cgroup_id %llu\nsubtree_cgroups %llu\n\0",
        &[a.cgroup_id, a.cgroups],
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
}

#[inline(always)]
fn counters(c: &Counters) -> [u64; 4] {
    [c.rx_bytes, c.rx_packets, c.tx_bytes, c.tx_packets]
}

#[inline(always)]
fn print<const F: usize, const N: usize>(seq: *mut seq_file, fmt: &[u8; F], args: &[u64; N]) {
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
