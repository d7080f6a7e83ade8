//! Reading the kernel's cgroup structures with offsets the loader took from
//! the running kernel's BTF, and summing per-CPU counters: shared by the
//! iterator and the removal tracepoint.
use core::{ffi::c_void, ptr};

use aya_ebpf::helpers::{
    bpf_probe_read_kernel,
    generated::{bpf_loop, bpf_map_lookup_elem, bpf_map_lookup_percpu_elem},
};
use cgacct_common::{Counters, Health, Slot, MAX_CPUS, SLOTS, SUM_WORDS};

use crate::maps::SUM_SCRATCH;

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

/// 1 where 8-byte stores may start at any byte of a map value (set by the
/// loader from its architecture; the kernel's verifier refuses them where
/// unaligned access is not efficient).
#[unsafe(no_mangle)]
pub static UNALIGNED_STORES: u32 = 0;

/// Whether [`UNALIGNED_STORES`] is set: a constant to the verifier.
#[inline(always)]
pub fn unaligned_stores() -> bool {
    // SAFETY: read-only global.
    unsafe { ptr::read_volatile(&UNALIGNED_STORES) != 0 }
}

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

/// A value of a counter map that sums: [`Counters`], [`Health`].
pub trait Summed: Copy + Default {
    fn plus(&mut self, other: &Self);
}

impl Summed for Counters {
    #[inline(always)]
    fn plus(&mut self, other: &Self) {
        self.add(other);
    }
}

impl Summed for Health {
    #[inline(always)]
    fn plus(&mut self, other: &Self) {
        self.add(other);
    }
}

/// How a program sums per-CPU counters ([`sum_counters`]'s `MODE`).
pub mod sum {
    /// `bpf_loop` over the CPUs ([`super::sum_percpu`]): the removal
    /// programs, whose verification must not grow with the CPU count.
    pub const LOOP: u8 = 0;
    /// Shared maps only: no per-CPU sum in the program's code at all.
    pub const SHARED: u8 = 1;
    /// One unrolled step per CPU ([`super::sum_unrolled`]) where the
    /// loader's CPU count is at most [`UNROLL_MAX`], else [`LOOP`]: the
    /// iterator's walk, which a loop's call per cgroup would slow on
    /// small hosts and whose unrolled code the verifier refuses on large
    /// ones (past 256 CPUs: "The sequence of 8193 jumps is too complex").
    pub const AUTO: u8 = 2;
    /// CPUs up to which [`AUTO`] unrolls.
    pub const UNROLL_MAX: u32 = 64;
}

/// The whole count of `map[key]` for each of the counter maps `maps`: the
/// one shared value when they are shared, else every CPU's slot summed as
/// `MODE` says ([`sum`]). Unless `MODE` is [`sum::SHARED`], the loader's
/// [`SHARED_COUNTERS`] decides, a constant to the verifier, which never
/// looks at the branch not taken. None only where `SUM_SCRATCH` has no
/// slot, which never happens to a loaded object: the caller gives up.
#[inline(always)]
pub fn sum_counters<K: Copy, V: Summed, const M: usize, const MODE: u8>(
    maps: [*mut c_void; M],
    key: &K,
) -> Option<[V; M]> {
    if MODE != sum::SHARED && !shared_counters() {
        // SAFETY: read-only global: a constant to the verifier, which
        // looks only at the branch taken.
        if MODE == sum::AUTO && unsafe { ptr::read_volatile(&NR_CPUS) } <= sum::UNROLL_MAX {
            return Some(sum_unrolled(maps, key));
        }
        return sum_percpu(maps, key);
    }
    let mut total = [V::default(); M];
    let mut i = 0;
    while i < M {
        // SAFETY: helper call with a valid map and key; NULL when absent.
        let v = unsafe { bpf_map_lookup_elem(maps[i], ptr::from_ref(key).cast()) } as *const V;
        if !v.is_null() {
            // SAFETY: non-NULL lookup result points at a `V`.
            total[i].plus(unsafe { &*v });
        }
        i += 1;
    }
    Some(total)
}

/// Sum of every CPU's slot of `map[key]`, for each of `maps`, one
/// unrolled step per CPU: the verifier's work grows with the CPU count.
#[inline(always)]
pub fn sum_unrolled<K, V: Summed, const M: usize>(maps: [*mut c_void; M], key: &K) -> [V; M] {
    // SAFETY: read-only global.
    let nr_cpus = unsafe { ptr::read_volatile(&NR_CPUS) };
    let mut total = [V::default(); M];
    let mut cpu = 0u32;
    while cpu < MAX_CPUS && cpu < nr_cpus {
        let mut i = 0;
        while i < M {
            // SAFETY: helper call with a valid map and key; NULL when absent.
            let slot =
                unsafe { bpf_map_lookup_percpu_elem(maps[i], ptr::from_ref(key).cast(), cpu) } as *const V;
            if !slot.is_null() {
                // SAFETY: non-NULL lookup result points at a `V`.
                total[i].plus(unsafe { &*slot });
            }
            i += 1;
        }
        cpu += 1;
    }
    total
}

/// What one CPU's step of [`sum_percpu`] reads, and where it adds.
#[repr(C)]
struct CpuSum<K, const M: usize> {
    maps: [*mut c_void; M],
    key: K,
    /// `SUM_SCRATCH`'s slot, as `[V; M]`.
    total: *mut c_void,
}

/// One CPU's slots of `ctx.maps[..][ctx.key]`, added to `ctx.total`; 0:
/// go on with the next CPU.
extern "C" fn cpu_step<K, V: Summed, const M: usize>(cpu: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` passes the `CpuSum` that `sum_percpu` gave it.
    let ctx = unsafe { &*ctx.cast::<CpuSum<K, M>>() };
    // SAFETY: `sum_percpu` checked that `[V; M]` fits the slot.
    let total = unsafe { &mut *ctx.total.cast::<[V; M]>() };
    let mut i = 0;
    while i < M {
        // SAFETY: helper call with a valid map and key; NULL when absent
        // (or past the last possible CPU).
        let slot =
            unsafe { bpf_map_lookup_percpu_elem(ctx.maps[i], ptr::from_ref(&ctx.key).cast(), cpu as u32) }
                as *const V;
        if !slot.is_null() {
            // SAFETY: non-NULL lookup result points at a `V`.
            total[i].plus(unsafe { &*slot });
        }
        i += 1;
    }
    0
}

/// Sum of every CPU's slot of `map[key]`, for each of `maps`, by
/// `bpf_loop` (Linux >= 5.17; per-CPU counter maps are used from 5.19 on,
/// where other CPUs' slots can be read), adding up in `SUM_SCRATCH`: the
/// verifier checks one CPU's step once per call, whatever the number of
/// CPUs. Unrolled, the removal programs took the verifier past its million
/// instructions on a host with 64 possible CPUs.
#[inline(always)]
pub fn sum_percpu<K: Copy, V: Summed, const M: usize>(maps: [*mut c_void; M], key: &K) -> Option<[V; M]> {
    const { assert!(size_of::<[V; M]>() <= 8 * SUM_WORDS) };
    let slot = SUM_SCRATCH.get_ptr_mut(0)?.cast::<[V; M]>();
    // SAFETY: this CPU's slot, big enough (above); its users run one at a
    // time (under cgroup_mutex).
    unsafe { *slot = [V::default(); M] };
    // SAFETY: read-only global.
    let nr_cpus = unsafe { ptr::read_volatile(&NR_CPUS) };
    let mut ctx = CpuSum {
        maps,
        key: *key,
        total: slot.cast(),
    };
    let step: extern "C" fn(u64, *mut c_void) -> i64 = cpu_step::<K, V, M>;
    // SAFETY: a static callback of the signature bpf_loop calls, and a
    // context on this stack that outlives the call.
    unsafe {
        bpf_loop(
            nr_cpus.min(MAX_CPUS),
            step as *mut c_void,
            ptr::from_mut(&mut ctx).cast(),
            0,
        );
    }
    // SAFETY: as above.
    Some(unsafe { *slot })
}

/// Adds to `totals` the counts the slot arrays `slots` hold for cgroup
/// `id` (see [`Slot`]): every CPU's slot at `id & (SLOTS - 1)` that holds
/// `id`, for each array; with `FREE`, those slots are freed as they are
/// read (the removal programs). Summed as `MODE` says ([`sum`]); nothing
/// where the counter maps are shared, as slots are then never claimed.
/// None only where `SUM_SCRATCH` has no slot (never, in a loaded object).
#[inline(always)]
pub fn add_slots<const M: usize, const MODE: u8, const FREE: bool>(
    slots: [*mut c_void; M],
    id: u64,
    totals: &mut [Counters; M],
) -> Option<()> {
    if MODE == sum::SHARED || shared_counters() || id == 0 {
        return Some(());
    }
    let index = id as u32 & (SLOTS - 1);
    // SAFETY: read-only global.
    let nr_cpus = unsafe { ptr::read_volatile(&NR_CPUS) };
    if MODE == sum::AUTO && nr_cpus <= sum::UNROLL_MAX {
        let mut cpu = 0u32;
        while cpu < MAX_CPUS && cpu < nr_cpus {
            let mut i = 0;
            while i < M {
                slot_step::<FREE>(slots[i], index, cpu, id, &mut totals[i]);
                i += 1;
            }
            cpu += 1;
        }
        return Some(());
    }
    const { assert!(size_of::<[Counters; M]>() <= 8 * SUM_WORDS) };
    let scratch = SUM_SCRATCH.get_ptr_mut(0)?.cast::<[Counters; M]>();
    // SAFETY: this CPU's slot, big enough (above); its users run one at a
    // time (under cgroup_mutex).
    unsafe { *scratch = *totals };
    let mut ctx = SlotSum {
        slots,
        index,
        id,
        total: scratch.cast(),
    };
    let step: extern "C" fn(u64, *mut c_void) -> i64 = slot_cpu_step::<M, FREE>;
    // SAFETY: a static callback of the signature bpf_loop calls, and a
    // context on this stack that outlives the call.
    unsafe {
        bpf_loop(
            nr_cpus.min(MAX_CPUS),
            step as *mut c_void,
            ptr::from_mut(&mut ctx).cast(),
            0,
        );
        // SAFETY: as above.
        *totals = *scratch;
    }
    Some(())
}

/// CPU `cpu`'s slot `index` of the slot array `map`: added to `total` if
/// it holds `id`, and freed with `FREE`.
#[inline(always)]
fn slot_step<const FREE: bool>(map: *mut c_void, index: u32, cpu: u32, id: u64, total: &mut Counters) {
    // SAFETY: helper call with a valid map and key; NULL past the last
    // possible CPU.
    let slot = unsafe { bpf_map_lookup_percpu_elem(map, ptr::from_ref(&index).cast(), cpu) } as *mut Slot;
    if slot.is_null() {
        return;
    }
    // SAFETY: non-NULL lookup result points at a `Slot`.
    let slot = unsafe { &mut *slot };
    if slot.id != id {
        return;
    }
    total.add(&slot.counters);
    if FREE {
        // Another CPU's slot: its program may be adding one packet to it
        // at this instant, which is then lost, as it would be to an entry
        // deleted from a per-CPU hash.
        slot.counters = Counters::ZERO;
        slot.id = 0;
    }
}

/// What one CPU's step of [`add_slots`] reads, and where it adds.
#[repr(C)]
struct SlotSum<const M: usize> {
    slots: [*mut c_void; M],
    index: u32,
    id: u64,
    /// `SUM_SCRATCH`'s slot, as `[Counters; M]`.
    total: *mut c_void,
}

/// One CPU's slots of [`SlotSum`]; 0: go on with the next CPU.
extern "C" fn slot_cpu_step<const M: usize, const FREE: bool>(cpu: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` passes the `SlotSum` that `add_slots` gave it.
    let ctx = unsafe { &*ctx.cast::<SlotSum<M>>() };
    // SAFETY: `add_slots` checked that `[Counters; M]` fits the slot.
    let total = unsafe { &mut *ctx.total.cast::<[Counters; M]>() };
    let mut i = 0;
    while i < M {
        slot_step::<FREE>(ctx.slots[i], ctx.index, cpu as u32, ctx.id, &mut total[i]);
        i += 1;
    }
    0
}
