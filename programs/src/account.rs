//! The packet-path accounting shared by the TC and cgroup_skb programs:
//! one skb's counts into a map entry, or into the overflow bucket of a map
//! that is full.
use aya_ebpf::bindings::BPF_NOEXIST;
use cgacct_common::{Counters, SLOTS};

use crate::{
    fold::{self, Family},
    kernel::shared_counters,
    maps::{CounterMap, SlotArray, OVERFLOW},
};

#[derive(Clone, Copy)]
pub enum Direction {
    Rx,
    Tx,
}

/// Adds one skb to cgroup `id`'s counters on this CPU: in its slot of
/// `slots` where it holds it (no hash lookup), in a free slot it takes,
/// else in `map[id]`, a map keyed by cgroup id (of `family`), on this
/// CPU's value; what a full map cannot take goes to the family's
/// overflow bucket. An id without an entry may be a removed cgroup whose
/// socket lives on, and its traffic then goes to its nearest live ancestor
/// (see [`fold::late`]), never into a new entry under the removed id. When
/// the cgroup counter maps are shared by every CPU ([`shared_counters`])
/// the adds are atomic.
#[inline(always)]
pub fn add_cgroup<const N: usize>(
    map: &CounterMap<u64, N>,
    slots: &SlotArray,
    id: u64,
    family: Family,
    dir: Direction,
    bytes: u64,
    packets: u64,
) {
    let shared = shared_counters();
    let slot = match shared || id == 0 {
        true => None,
        false => slots.get_ptr_mut(id as u32 & (SLOTS - 1)),
    };
    if let Some(s) = slot {
        // SAFETY: this CPU's slot, not preempted while the program runs.
        let s = unsafe { &mut *s };
        if s.id == id {
            bump(&mut s.counters, dir, bytes, packets);
            return;
        }
        // A free slot is taken by a live cgroup (never by a removed one:
        // its traffic goes to its live ancestor), even one with a map
        // entry: its counts are both together.
        if s.id == 0 && fold::dying(id).is_none() {
            s.id = id;
            s.counters = counters(dir, bytes, packets);
            return;
        }
    }
    if let Some(slot) = map.get_ptr_mut(&id) {
        bump_in(slot, shared, dir, bytes, packets);
        return;
    }
    let c = counters(dir, bytes, packets);
    if fold::late(id, family, &c) {
        return;
    }
    if map.insert(&id, &c, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // Another CPU created the entry first, or the map is full.
    if let Some(slot) = map.get_ptr_mut(&id) {
        bump_in(slot, shared, dir, bytes, packets);
        return;
    }
    overflow(family.bucket(), &c);
}

/// Adds one skb to the map value at `slot`: this CPU's own slot, or with
/// atomic adds when the value is shared by every CPU.
#[inline(always)]
pub fn bump_in(slot: *mut Counters, shared: bool, dir: Direction, bytes: u64, packets: u64) {
    if shared {
        fold::add_counters(slot, &counters(dir, bytes, packets));
    } else {
        // SAFETY: a per-CPU slot: only this CPU writes it, and the program
        // is not preempted while it runs.
        bump(unsafe { &mut *slot }, dir, bytes, packets);
    }
}

/// Adds `c` to overflow bucket `bucket` on this CPU's slot.
#[inline(always)]
pub fn overflow(bucket: u32, c: &Counters) {
    if let Some(slot) = OVERFLOW.get_ptr_mut(bucket) {
        // SAFETY: a per-CPU slot, as in `add`.
        unsafe { &mut *slot }.add(c);
    }
}

#[inline(always)]
pub fn counters(dir: Direction, bytes: u64, packets: u64) -> Counters {
    let mut c = Counters::default();
    bump(&mut c, dir, bytes, packets);
    c
}

#[inline(always)]
pub fn bump(c: &mut Counters, dir: Direction, bytes: u64, packets: u64) {
    match dir {
        Direction::Rx => {
            c.rx_bytes += bytes;
            c.rx_packets += packets;
        }
        Direction::Tx => {
            c.tx_bytes += bytes;
            c.tx_packets += packets;
        }
    }
}
