//! Reading the kernel's cgroup structures with offsets the loader took from
//! the running kernel's BTF, and summing per-CPU counters: shared by the
//! iterator and the removal tracepoint.
use core::{ffi::c_void, ptr};

use aya_ebpf::helpers::{
    bpf_probe_read_kernel,
    generated::{bpf_map_lookup_elem, bpf_map_lookup_percpu_elem},
};
use cgacct_common::{Counters, MAX_CPUS};

// Set by the loader before load (read-only data: the verifier sees them as
// constants). The defaults only matter if the loader forgot to set them.
#[unsafe(no_mangle)]
pub static NR_CPUS: u32 = 1;
#[unsafe(no_mangle)]
pub static CGROUP_KN_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static KERNFS_NODE_ID_OFFSET: u32 = 0;

#[unsafe(no_mangle)]
pub static KERNFS_NODE_PARENT_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static CGROUP_ROOT_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static CGROUP_ROOT_HIERARCHY_ID_OFFSET: u32 = 0;
/// 1 when the cgroup counter maps (`CGROUP_STATS`, `TC_CGROUP_STATS`,
/// `VETH_STATS`) are plain hashes shared by every CPU, updated with atomic
/// adds: on kernels without `bpf_map_lookup_percpu_elem` (< 5.19) no
/// program can read another CPU's slot of a per-CPU map, and the removal
/// programs must read a cgroup's whole count. The loader probes the helper
/// and creates the maps of the matching type.
#[unsafe(no_mangle)]
pub static SHARED_COUNTERS: u32 = 0;

/// Whether the cgroup counter maps are shared (see [`SHARED_COUNTERS`]).
#[inline(always)]
pub fn shared_counters() -> bool {
    // SAFETY: read-only global.
    unsafe { ptr::read_volatile(&SHARED_COUNTERS) != 0 }
}

/// Identity of this build, read back by the loader from the program's
/// read-only data to tell whether the running programs are its own.
#[unsafe(no_mangle)]
pub static BUILD_ID: u64 = 0;

/// `cgroup->kn`.
#[inline(always)]
pub unsafe fn cgroup_kn(cgroup: *const u8) -> Option<usize> {
    // SAFETY: read-only global.
    let kn_off = unsafe { ptr::read_volatile(&CGROUP_KN_OFFSET) } as usize;
    let kn_slot = (cgroup as usize).wrapping_add(kn_off) as *const usize;
    // SAFETY: probe reads are checked by the kernel.
    let kn = unsafe { bpf_probe_read_kernel(kn_slot) }.ok()?;
    (kn != 0).then_some(kn)
}

/// `kn->id`.
#[inline(always)]
pub unsafe fn kn_id(kn: usize) -> Option<u64> {
    // SAFETY: read-only global.
    let id_off = unsafe { ptr::read_volatile(&KERNFS_NODE_ID_OFFSET) } as usize;
    // SAFETY: probe reads are checked by the kernel.
    unsafe { bpf_probe_read_kernel(kn.wrapping_add(id_off) as *const u64) }.ok()
}

/// `kn->__parent`.
#[inline(always)]
pub unsafe fn kn_parent(kn: usize) -> Option<usize> {
    // SAFETY: read-only global.
    let off = unsafe { ptr::read_volatile(&KERNFS_NODE_PARENT_OFFSET) } as usize;
    // SAFETY: probe reads are checked by the kernel.
    let p = unsafe { bpf_probe_read_kernel(kn.wrapping_add(off) as *const usize) }.ok()?;
    (p != 0).then_some(p)
}

/// `hierarchy_id` of the default hierarchy (`cgrp_dfl_root`, cgroup2): it
/// takes id 0 at boot, before any v1 hierarchy exists, and keeps it.
pub const CGROUP2_HIERARCHY_ID: i32 = 0;

/// `cgroup->root->hierarchy_id`: which hierarchy the cgroup is in. Kernfs
/// ids (cgroup ids) are unique within one hierarchy only.
#[inline(always)]
pub unsafe fn cgroup_hierarchy_id(cgroup: *const u8) -> Option<i32> {
    // SAFETY: read-only globals.
    let (root_off, id_off) = unsafe {
        (
            ptr::read_volatile(&CGROUP_ROOT_OFFSET) as usize,
            ptr::read_volatile(&CGROUP_ROOT_HIERARCHY_ID_OFFSET) as usize,
        )
    };
    let root_slot = (cgroup as usize).wrapping_add(root_off) as *const usize;
    // SAFETY: probe reads are checked by the kernel.
    let root = unsafe { bpf_probe_read_kernel(root_slot) }.ok()?;
    if root == 0 {
        return None;
    }
    // SAFETY: probe reads are checked by the kernel.
    unsafe { bpf_probe_read_kernel(root.wrapping_add(id_off) as *const i32) }.ok()
}

/// `cgroup->kn->id`: nothing about kernel struct layout is baked in.
#[inline(always)]
pub unsafe fn cgroup_id(cgroup: *const u8) -> Option<u64> {
    // SAFETY: as above.
    unsafe { kn_id(cgroup_kn(cgroup)?) }
}

/// The whole count of `map[key]` for each of the cgroup counter maps
/// `maps`: the one shared value when they are shared (the verifier sees
/// the constant and never looks at the per-CPU branch, so kernels without
/// `bpf_map_lookup_percpu_elem` load it), else every CPU's slot summed.
#[inline(always)]
pub fn sum_counters<K, const M: usize>(maps: [*mut c_void; M], key: &K) -> [Counters; M] {
    if !shared_counters() {
        return sum_percpu(maps, key);
    }
    let mut total = [Counters::default(); M];
    let mut i = 0;
    while i < M {
        // SAFETY: helper call with a valid map and key; NULL when absent.
        let v = unsafe { bpf_map_lookup_elem(maps[i], ptr::from_ref(key).cast()) } as *const Counters;
        if !v.is_null() {
            // SAFETY: non-NULL lookup result points at a `Counters`.
            total[i].add(unsafe { &*v });
        }
        i += 1;
    }
    total
}

/// Sum of every CPU's slot of `map[key]`, for each of `maps`: one loop
/// over the CPUs for all of them keeps the verifier's work small.
#[inline(always)]
pub fn sum_percpu<K, const M: usize>(maps: [*mut c_void; M], key: &K) -> [Counters; M] {
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
