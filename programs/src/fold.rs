//! Counts of removed cgroups, moved to where a reader finds them: the
//! `DEPARTED` entry of the nearest live ancestor, which the iterator adds
//! into that ancestor's subtree keys (and, when the ancestor goes too, the
//! removal program folds upward).
//!
//! A socket keeps the cgroup it was made in after that cgroup is removed
//! (a TCP connection closing, a socket passed to a process elsewhere), and
//! the kernel keeps the removed cgroup until its last socket is gone. Its
//! packets are counted here, by id, through `DYING` (written at removal,
//! ended at release), never in a new counter entry under the removed id.
//!
//! `DEPARTED` entries are shared by every CPU: adds to them are atomic.
use aya_ebpf::bindings::BPF_NOEXIST;
use cgacct_common::{overflow, Counters, Departed, Dying, Totals};

use crate::{
    account::overflow as add_overflow,
    maps::{DEPARTED, DYING},
};

/// The family of counters a cgroup-keyed map holds.
#[derive(Clone, Copy)]
pub enum Family {
    /// cgroup_skb (`CGROUP_STATS`).
    Socket,
    /// TC by socket cgroup (`TC_CGROUP_STATS`).
    Tc,
    /// TC on owned interfaces (`VETH_STATS`).
    Veth,
}

impl Family {
    /// The overflow bucket of the family's counter map.
    #[inline(always)]
    pub fn bucket(self) -> u32 {
        match self {
            Family::Socket => overflow::CGROUP_STATS,
            Family::Tc => overflow::TC_CGROUP_STATS,
            Family::Veth => overflow::VETH_STATS,
        }
    }

    /// The overflow bucket for the family's part of `DEPARTED`.
    #[inline(always)]
    fn departed_bucket(self) -> u32 {
        match self {
            Family::Socket => overflow::DEPARTED,
            Family::Tc => overflow::DEPARTED_TC,
            Family::Veth => overflow::DEPARTED_VETH,
        }
    }

    /// The family's counters within `t`.
    #[inline(always)]
    fn of(self, t: *mut Totals) -> *mut Counters {
        // SAFETY: field projections of a valid pointer; nothing is read.
        unsafe {
            match self {
                Family::Socket => &raw mut (*t).socket,
                Family::Tc => &raw mut (*t).tc,
                Family::Veth => &raw mut (*t).veth,
            }
        }
    }
}

/// Most removed ancestors passed over to find a live one (a socket whose
/// cgroup and 16 ancestors were all removed counts in overflow).
const MAX_REMOVED_ANCESTORS: u32 = 16;

/// `*p += v` as one atomic instruction: `lock *(u64 *)(p + 0) += v`
/// (BPF_ATOMIC | BPF_ADD without fetch, which every kernel takes). The BPF
/// target has no compare-and-swap, so core offers no `fetch_add`; the
/// benchmark's programs use the same instruction.
#[inline(always)]
fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: `p` points at an 8-aligned u64 in a map value that every
    // writer changes with atomic adds only.
    unsafe {
        core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) v);
    }
}

/// `*dst += c`, atomically per field.
#[inline(always)]
pub fn add_counters(dst: *mut Counters, c: &Counters) {
    // SAFETY: field projections of a valid map value pointer.
    unsafe {
        atomic_add(&raw mut (*dst).rx_bytes, c.rx_bytes);
        atomic_add(&raw mut (*dst).rx_packets, c.rx_packets);
        atomic_add(&raw mut (*dst).tx_bytes, c.tx_bytes);
        atomic_add(&raw mut (*dst).tx_packets, c.tx_packets);
    }
}

/// `*dst += t`, atomically per field.
#[inline(always)]
pub fn add_totals(dst: *mut Totals, t: &Totals) {
    add_counters(Family::Socket.of(dst), &t.socket);
    add_counters(Family::Tc.of(dst), &t.tc);
    add_counters(Family::Veth.of(dst), &t.veth);
}

/// The `DYING` entry of `id` while the kernel still holds that removed
/// cgroup (not yet released).
#[inline(always)]
pub fn dying(id: u64) -> Option<*mut Dying> {
    let d = DYING.get_ptr_mut(id)?;
    // SAFETY: non-NULL lookup result.
    (unsafe { (*d).released_at_ns } == 0).then_some(d)
}

/// The nearest cgroup that is not removed, starting at `id` and going up
/// through removed ones. A removed cgroup's parent was live at its
/// removal; the kernel releases a parent only after its children.
#[inline(always)]
pub fn live_ancestor(mut id: u64) -> Option<u64> {
    let mut i = 0;
    while i < MAX_REMOVED_ANCESTORS {
        match dying(id) {
            // SAFETY: non-NULL lookup result.
            Some(d) => id = unsafe { (*d).parent_id },
            None => return Some(id),
        }
        i += 1;
    }
    None
}

/// The `DEPARTED` entry of `id`, made if missing; None when the map is full.
#[inline(always)]
fn departed(id: u64) -> Option<*mut Departed> {
    if let Some(p) = DEPARTED.get_ptr_mut(id) {
        return Some(p);
    }
    // Another CPU may make it first: then the lookup below finds it.
    let _ = DEPARTED.insert(id, Departed::default(), BPF_NOEXIST as u64);
    DEPARTED.get_ptr_mut(id)
}

/// Counts `c` of a removed cgroup `id` whose socket lives on: in its
/// `DYING` record (`late`) and in its nearest live ancestor's `DEPARTED`
/// entry. False if `id` is not such a cgroup.
#[inline(always)]
pub fn late(id: u64, family: Family, c: &Counters) -> bool {
    let Some(d) = dying(id) else {
        return false;
    };
    // SAFETY: non-NULL lookup result; field projections.
    let (late, parent) = unsafe { (&raw mut (*d).late, (*d).parent_id) };
    add_counters(family.of(late), c);
    match live_ancestor(parent).and_then(departed) {
        // SAFETY: non-NULL lookup result.
        Some(p) => add_counters(family.of(unsafe { &raw mut (*p).totals }), c),
        None => add_overflow(family.departed_bucket(), c),
    }
    true
}

/// Adds the totals `t` of `cgroups` removed cgroups to `ancestor`'s
/// `DEPARTED` entry; into the overflow buckets if none can be made.
#[inline(always)]
pub fn into_departed(ancestor: Option<u64>, cgroups: u64, t: &Totals) {
    match ancestor.and_then(departed) {
        Some(p) => {
            // SAFETY: non-NULL lookup result; field projections.
            let (n, totals) = unsafe { (&raw mut (*p).cgroups, &raw mut (*p).totals) };
            atomic_add(n, cgroups);
            add_totals(totals, t);
        }
        None => {
            add_overflow(overflow::DEPARTED, &t.socket);
            add_overflow(overflow::DEPARTED_TC, &t.tc);
            add_overflow(overflow::DEPARTED_VETH, &t.veth);
        }
    }
}
