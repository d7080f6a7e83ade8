//! TCP health and drops per cgroup: programs on the kernel tracepoints
//! (and, for timeouts, functions) beside the increments of the
//! per-network-namespace MIB counters of the same names, each adding one
//! event to the cgroup of the socket it is about (`sk->sk_cgrp_data.cgroup`,
//! a cgroup2 cgroup). Where each sits and what it counts: README.md, "TCP
//! health and drops".
//!
//! - ActiveOpens, PassiveOpens: `inet_sock_set_state` (to `SYN_SENT`;
//!   `LISTEN` -> `SYN_RECV`, the child a listener makes).
//! - RetransSegs: the growth of `tp->total_retrans` (the kernel adds each
//!   retransmission's segments to it and to RetransSegs in one place),
//!   taken at `tcp_retransmit_skb` and when the socket closes; and
//!   `tcp_retransmit_synack`.
//! - TCPTimeouts: fentry `tcp_retransmit_timer()` in the state in which it
//!   counts, and `tcp_syn_ack_timeout()`.
//! - OutRsts: `tcp_send_reset` for a full socket.
//! - drops: `kfree_skb` with a reason, for the receiving socket (`rx_sk`,
//!   Linux >= 6.11) or the skb's own.
//!
//! Counters live in `HEALTH_STATS` (per CPU, by cgroup id; one value
//! shared by every CPU, with atomic adds, where the cgroup counter maps are
//! shared: [`shared_counters`]); a removed
//! cgroup's go to its parent's `HEALTH_DEPARTED` entry at removal, and the
//! events of its sockets that live on go to its nearest live ancestor's
//! (through `DYING`, like the packet counters: [`crate::fold`]).
use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE},
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, SkStorage},
    helpers::{bpf_probe_read_kernel, generated::bpf_sk_storage_get},
    macros::{btf_map, btf_tracepoint, fentry},
    programs::{BtfTracePointContext, FEntryContext},
};
use cgacct_common::{health, Health, HealthAcc};

use crate::{
    fold::{dying, live_ancestor},
    kernel::{cgroup_id, shared_counters, sum, sum_counters},
    maps::ON_DEMAND,
    text::{Key, Out},
};

// Offsets from the running kernel's BTF, set by the loader before load.
#[unsafe(no_mangle)]
pub static SOCK_CGRP_DATA_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static SOCK_CGROUP_DATA_CGROUP_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static SOCK_STATE_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static SOCK_FLAGS_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static SOCK_RTX_QUEUE_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static TCP_TOTAL_RETRANS_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static TCP_FASTOPEN_RSK_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static TCP_PACKETS_OUT_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static TCP_SND_WND_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static REQ_LISTENER_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static SKB_SK_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static SKB_CB_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static TCP_SKB_CB_GSO_SEGS_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
pub static SOCK_PROTOCOL_OFFSET: u32 = 0;
/// 1 where the `tcp_retransmit_skb` tracepoint has its `err` argument.
#[unsafe(no_mangle)]
pub static RETRANSMIT_HAS_ERR: u32 = 0;
#[unsafe(no_mangle)]
pub static DROP_REASON_NOT_SPECIFIED: u32 = u32::MAX;

/// cgroup id -> health counters of its sockets.
#[btf_map]
pub static HEALTH_STATS: PerCpuHashMap<u64, Health, 16384, ON_DEMAND> = PerCpuHashMap::new();

/// cgroup id -> health counters of its removed descendants.
#[btf_map]
pub static HEALTH_DEPARTED: HashMap<u64, Health, 16384> = HashMap::new();

/// removed cgroup id -> its final health counts (own, subtree).
#[btf_map]
pub static HEALTH_REMOVED: LruHashMap<u64, HealthAcc, 16384> = LruHashMap::new();

/// [`health::state`]: the keys counted, the programs that could not load.
#[btf_map]
pub static HEALTH_STATE: Array<u32, 2> = Array::new();

/// What no full `HEALTH_STATS` or `HEALTH_DEPARTED` could take.
#[btf_map]
pub static HEALTH_OVERFLOW: PerCpuArray<Health, 1> = PerCpuArray::new();

/// drop reason -> packets counted in some cgroup's `drop_packets`.
#[btf_map]
pub static DROP_REASONS: PerCpuArray<u64, { health::DROP_REASON_SLOTS as usize }> = PerCpuArray::new();

/// `TCP_TIME_WAIT` and `TCP_NEW_SYN_RECV`: minisockets without the full
/// `struct sock` (no `sk_cgrp_data`).
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;
const TCPF_SYN_SENT_RECV: u32 = (1 << 2) | (1 << 3);
const SOCK_DEAD: u64 = 1;

#[inline(always)]
fn global(g: &u32) -> usize {
    // SAFETY: a read-only global.
    unsafe { ptr::read_volatile(g) as usize }
}

#[inline(always)]
fn read<T>(base: usize, off: &u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: probe reads are checked by the kernel.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(global(off)) as *const T) }.ok()
}

/// The cgroup2 id of a full socket's cgroup; None for a minisocket.
#[inline(always)]
fn sock_cgroup(sk: usize) -> Option<u64> {
    let state: u8 = read(sk, &SOCK_STATE_OFFSET)?;
    if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
        return None;
    }
    let data = sk.wrapping_add(global(&SOCK_CGRP_DATA_OFFSET));
    let cgroup: usize = read(data, &SOCK_CGROUP_DATA_CGROUP_OFFSET)?;
    if cgroup == 0 {
        return None;
    }
    // SAFETY: probe reads.
    unsafe { cgroup_id(cgroup as *const u8) }
}

#[inline(always)]
fn bump(h: &mut Health, key: u32, n: u64) {
    let f = match key {
        health::ACTIVE_OPENS => &mut h.tcp_active_opens,
        health::PASSIVE_OPENS => &mut h.tcp_passive_opens,
        health::RETRANS_SEGS => &mut h.tcp_retrans_segs,
        health::TIMEOUTS => &mut h.tcp_timeouts,
        health::OUT_RSTS => &mut h.tcp_out_rsts,
        _ => &mut h.drop_packets,
    };
    *f = f.wrapping_add(n);
}

/// `*p += v` atomically (see `fold::atomic_add`).
#[inline(always)]
fn atomic_add(p: *mut u64, v: u64) {
    if v == 0 {
        return;
    }
    // SAFETY: `p` points at an 8-aligned u64 in a map value changed by
    // atomic adds only.
    unsafe {
        core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) v);
    }
}

#[inline(always)]
fn add_atomic(dst: *mut Health, h: &Health) {
    // SAFETY: field projections of a valid map value pointer.
    unsafe {
        atomic_add(&raw mut (*dst).tcp_active_opens, h.tcp_active_opens);
        atomic_add(&raw mut (*dst).tcp_passive_opens, h.tcp_passive_opens);
        atomic_add(&raw mut (*dst).tcp_retrans_segs, h.tcp_retrans_segs);
        atomic_add(&raw mut (*dst).tcp_timeouts, h.tcp_timeouts);
        atomic_add(&raw mut (*dst).tcp_out_rsts, h.tcp_out_rsts);
        atomic_add(&raw mut (*dst).drop_packets, h.drop_packets);
    }
}

/// `HEALTH_DEPARTED[id]`, made if missing.
#[inline(always)]
fn departed(id: u64) -> Option<*mut Health> {
    if let Some(p) = HEALTH_DEPARTED.get_ptr_mut(id) {
        return Some(p);
    }
    let _ = HEALTH_DEPARTED.insert(id, Health::default(), BPF_NOEXIST as u64);
    HEALTH_DEPARTED.get_ptr_mut(id)
}

/// Counts `h` in `HEALTH_OVERFLOW` (this CPU's slot): no map had room.
#[inline(always)]
fn lost(h: &Health) {
    if let Some(slot) = HEALTH_OVERFLOW.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the program is not preempted.
        unsafe { (*slot).add(h) };
    }
}

/// Adds `h` to `HEALTH_DEPARTED[id]` (`id` from `to`), or counts it lost.
#[inline(always)]
fn into_departed(to: Option<u64>, h: &Health) {
    match to.and_then(departed) {
        Some(p) => add_atomic(p, h),
        None => lost(h),
    }
}

/// Adds `h` (one event's counts, key `key`) at `slot`: this CPU's own
/// slot, or with atomic adds when the value is shared by every CPU.
#[inline(always)]
fn bump_in(slot: *mut Health, h: &Health, key: u32, n: u64) {
    if shared_counters() {
        add_atomic(slot, h);
    } else {
        // SAFETY: this CPU's slot; the program is not preempted.
        bump(unsafe { &mut *slot }, key, n);
    }
}

/// Counts `n` events of `key` for the cgroup `id`.
#[inline(always)]
fn count(id: u64, key: u32, n: u64) {
    if n == 0 {
        return;
    }
    let mut h = Health::default();
    bump(&mut h, key, n);
    if let Some(slot) = HEALTH_STATS.get_ptr_mut(&id) {
        bump_in(slot, &h, key, n);
        return;
    }
    if let Some(d) = dying(id) {
        // A removed cgroup whose socket lives on: its nearest live ancestor.
        // SAFETY: non-NULL lookup result.
        let parent = unsafe { (*d).parent_id };
        into_departed(live_ancestor(parent), &h);
        return;
    }
    if HEALTH_STATS.insert(&id, &h, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    match HEALTH_STATS.get_ptr_mut(&id) {
        // Made by another CPU in between.
        Some(slot) => bump_in(slot, &h, key, n),
        None => lost(&h),
    }
}

#[inline(always)]
fn count_sock(sk: usize, key: u32, n: u64) {
    if let Some(id) = sock_cgroup(sk) {
        count(id, key, n);
    }
}

// ---- Tcp ActiveOpens, PassiveOpens; socket births and deaths ----

const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn cgacct_sock_state(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let sk: *const c_void = ctx.arg(0);
    let old: i64 = ctx.arg(1);
    let new: i64 = ctx.arg(2);
    let (old, new) = (old as i32, new as i32);
    if read::<u16>(sk as usize, &SOCK_PROTOCOL_OFFSET) != Some(IPPROTO_TCP) {
        return 0;
    }
    match (old, new) {
        // tcp_v4/v6_connect(), right before tcp_connect() counts it.
        (_, TCP_SYN_SENT) => {
            count_sock(sk as usize, health::ACTIVE_OPENS, 1);
            retrans_start(sk);
        }
        // inet_csk_clone_lock(): the child of a listener, which
        // tcp_create_openreq_child() then counts (the child has the
        // listener's cgroup).
        (TCP_LISTEN, TCP_SYN_RECV) => count_sock(sk as usize, health::PASSIVE_OPENS, 1),
        // The child's `total_retrans` starts from its request's SYN-ACK
        // retransmits (counted already, at `tcp_retransmit_synack`).
        (TCP_SYN_RECV, TCP_ESTABLISHED) => retrans_start(sk),
        (_, TCP_CLOSE) => {
            retrans_flush(sk);
        }
        _ => {}
    }
    0
}

// ---- Tcp RetransSegs ----
//
// The kernel adds the segments of each retransmission to RetransSegs and
// to the socket's `tp->total_retrans` in the same place (before trying
// to send them), and to nothing else but a Fast Open child's SYN-ACK
// retransmits. So the growth of `total_retrans`, taken at each
// `tcp_retransmit_skb` event and when the socket closes, is exactly what
// the socket added to RetransSegs; `RETRANS_SEEN` keeps the value last
// taken, per socket.

/// `tp->total_retrans` when last taken.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Seen {
    pub total_retrans: u32,
    pub pad: u32,
}

#[btf_map]
pub static RETRANS_SEEN: SkStorage<Seen> = SkStorage::new();

#[inline(always)]
fn seen(sk: *const c_void, create: bool) -> Option<*mut Seen> {
    let map: *mut c_void = ptr::from_ref(&RETRANS_SEEN).cast_mut().cast();
    let flags = if create {
        BPF_SK_STORAGE_GET_F_CREATE as u64
    } else {
        0
    };
    // SAFETY: `sk` is the tracepoint's socket argument; NULL when absent.
    let p = unsafe { bpf_sk_storage_get(map, sk.cast_mut(), ptr::null_mut(), flags) } as *mut Seen;
    (!p.is_null()).then_some(p)
}

/// A socket starts being followed: from its `total_retrans` now.
#[inline(always)]
fn retrans_start(sk: *const c_void) {
    let Some(total) = read::<u32>(sk as usize, &TCP_TOTAL_RETRANS_OFFSET) else {
        return;
    };
    if let Some(s) = seen(sk, true) {
        // SAFETY: the socket's own storage; its events are serialised by
        // the socket lock.
        unsafe { (*s).total_retrans = total };
    }
}

/// Counts what `total_retrans` grew by since last taken.
#[inline(always)]
fn retrans_flush(sk: *const c_void) -> bool {
    let Some(s) = seen(sk, false) else {
        return false;
    };
    let Some(total) = read::<u32>(sk as usize, &TCP_TOTAL_RETRANS_OFFSET) else {
        return true;
    };
    // SAFETY: as in `retrans_start`.
    let last = unsafe { (*s).total_retrans };
    // SAFETY: as above.
    unsafe { (*s).total_retrans = total };
    count_sock(sk as usize, health::RETRANS_SEGS, total.wrapping_sub(last) as u64);
    true
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn cgacct_tcp_rtx(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const struct sk_buff *skb) (6.1,
    // on success only), (..., int err) (later kernels, every attempt).
    let sk: *const c_void = ctx.arg(0);
    if retrans_flush(sk) {
        return 0;
    }
    // A socket made before cgacct was loaded: this event's own segments
    // (tcp_skb_pcount), if it got as far as counting them, and followed
    // from now on.
    let err: i64 = if global(&RETRANSMIT_HAS_ERR) != 0 {
        ctx.arg(2)
    } else {
        0
    };
    let skb: usize = ctx.arg(1);
    if err as i32 == 0 {
        let cb = skb.wrapping_add(global(&SKB_CB_OFFSET));
        if let Some(segs) = read::<u16>(cb, &TCP_SKB_CB_GSO_SEGS_OFFSET) {
            count_sock(sk as usize, health::RETRANS_SEGS, segs as u64);
        }
    }
    retrans_start(sk);
    0
}

#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn cgacct_tcp_rtx_synack(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const struct request_sock *req):
    // fired exactly when tcp_rtx_synack() counts one segment. A Fast Open
    // child (sk) adds it to its own total_retrans as well.
    let sk: *const c_void = ctx.arg(0);
    count_sock(sk as usize, health::RETRANS_SEGS, 1);
    if let Some(s) = seen(sk, false) {
        // SAFETY: as in `retrans_start`.
        unsafe { (*s).total_retrans = (*s).total_retrans.wrapping_add(1) };
    }
    0
}

// ---- TcpExt TCPTimeouts ----

#[fentry(function = "tcp_retransmit_timer")]
pub fn cgacct_tcp_rto(ctx: FEntryContext) -> i32 {
    // void tcp_retransmit_timer(struct sock *sk), socket locked: counts
    // TCPTimeouts unless a Fast Open request is pending, nothing is out,
    // or the retransmit is a zero-window probe.
    let sk: usize = ctx.arg(0);
    if rto_counts(sk) == Some(true) {
        count_sock(sk, health::TIMEOUTS, 1);
    }
    0
}

#[inline(always)]
fn rto_counts(sk: usize) -> Option<bool> {
    let fastopen: usize = read(sk, &TCP_FASTOPEN_RSK_OFFSET)?;
    let packets_out: u32 = read(sk, &TCP_PACKETS_OUT_OFFSET)?;
    let rtx_head: usize = read(sk, &SOCK_RTX_QUEUE_OFFSET)?;
    if fastopen != 0 || packets_out == 0 || rtx_head == 0 {
        return Some(false);
    }
    let snd_wnd: u32 = read(sk, &TCP_SND_WND_OFFSET)?;
    let flags: u64 = read(sk, &SOCK_FLAGS_OFFSET)?;
    let state: u8 = read(sk, &SOCK_STATE_OFFSET)?;
    let probe = snd_wnd == 0 && flags & (1 << SOCK_DEAD) == 0 && (1u32 << state) & TCPF_SYN_SENT_RECV == 0;
    Some(!probe)
}

#[fentry(function = "tcp_syn_ack_timeout")]
pub fn cgacct_tcp_synack_rto(ctx: FEntryContext) -> i32 {
    // void tcp_syn_ack_timeout(const struct request_sock *req): counts.
    let req: usize = ctx.arg(0);
    if let Some(listener) = read::<usize>(req, &REQ_LISTENER_OFFSET) {
        count_sock(listener, health::TIMEOUTS, 1);
    }
    0
}

// ---- Tcp OutRsts ----

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn cgacct_tcp_rst(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const struct sk_buff *skb, ...):
    // tcp_send_active_reset() (skb NULL) and tcp_v4/v6_send_reset() for a
    // reset sent on behalf of a socket, next to the OutRsts increment. A
    // reset for no socket (a closed port) or a minisocket has no cgroup.
    let sk: usize = ctx.arg(0);
    if sk != 0 {
        count_sock(sk, health::OUT_RSTS, 1);
    }
    0
}

// ---- drops ----

#[btf_tracepoint(function = "kfree_skb")]
pub fn cgacct_kfree_skb(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct sk_buff *skb, void *location,
    //          enum skb_drop_reason reason, struct sock *rx_sk) (>= 6.11)
    let reason: u64 = ctx.arg(2);
    let reason = reason as u32;
    if reason <= global(&DROP_REASON_NOT_SPECIFIED) as u32 {
        return 0;
    }
    let skb: usize = ctx.arg(0);
    let mut sk: usize = ctx.arg(3);
    if sk == 0 {
        sk = read(skb, &SKB_SK_OFFSET).unwrap_or(0);
    }
    if sk == 0 {
        return 0;
    }
    let Some(id) = sock_cgroup(sk) else {
        return 0;
    };
    count(id, health::DROP_PACKETS, 1);
    let slot = if reason < health::DROP_REASON_SLOTS - 1 {
        reason
    } else {
        health::DROP_REASON_SLOTS - 1
    };
    if let Some(n) = DROP_REASONS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot.
        unsafe { *n += 1 };
    }
    0
}

// ---- the iterator and removal ----

/// Sum of every CPU's `HEALTH_STATS[id]`, or its one value when shared
/// (`MODE`: see [`sum_counters`]).
#[inline(always)]
fn own<const MODE: u8>(id: u64) -> Option<Health> {
    let map: *mut c_void = ptr::from_ref(&HEALTH_STATS).cast_mut().cast();
    let [h] = sum_counters::<u64, Health, 1, MODE>([map], &id)?;
    Some(h)
}

#[inline(always)]
fn gone(id: u64) -> Health {
    match HEALTH_DEPARTED.get_ptr(id) {
        // SAFETY: non-NULL lookup result.
        Some(d) => unsafe { *d },
        None => Health::default(),
    }
}

/// One cgroup of an iterator walk, added to the read's sums `acc` (`first`:
/// the file's own cgroup, whose counts are also its `self_` keys).
#[inline(always)]
pub fn visit(id: u64, acc: &mut HealthAcc, first: bool) {
    let Some(mine) = own::<{ sum::AUTO }>(id) else {
        return;
    };
    let mut sub = mine;
    sub.add(&gone(id));
    if first {
        acc.own = mine;
        acc.subtree = sub;
    } else {
        acc.subtree.add(&sub);
    }
}

/// After the walk: the keys this kernel counts, subtree then `self_`.
#[inline(always)]
pub fn print(out: &Out, a: &HealthAcc) {
    let s = a.subtree.values();
    let o = a.own.values();
    // Keys by their bit in the state (health::ACTIVE_OPENS, ...), which
    // is their order in `health::KEYS` and in the text's key table.
    let on = HEALTH_STATE.get(health::state::KEYS).copied().unwrap_or(0);
    let mut h = 0;
    while h < health::KEYS.len() {
        if on & (1u32 << h) != 0 {
            let k = Key::TCP_ACTIVE_OPENS.plus(2 * h as u8);
            out.line_id(k, s[h]);
            out.line_id(k + 1, o[h]);
        }
        h += 1;
    }
}

/// `id` is removed (rmdir, under `cgroup_mutex`): its counters and those of
/// its removed descendants go to `parent`'s `HEALTH_DEPARTED` entry.
#[inline(always)]
pub fn removed<const MODE: u8>(id: u64, parent: u64) {
    let Some(mine) = own::<MODE>(id) else {
        return;
    };
    let mut h = mine;
    h.add(&gone(id));
    if h.any() != 0 {
        into_departed(Some(parent), &h);
        // Beside the `REMOVED` record (an LRU hash of the same size).
        let rec = HealthAcc {
            own: mine,
            subtree: h,
        };
        let _ = HEALTH_REMOVED.insert(id, rec, BPF_ANY as u64);
    }
    let _ = HEALTH_STATS.remove(&id);
    let _ = HEALTH_DEPARTED.remove(id);
}

/// `id` is released by the kernel: what still sits under it goes to `to`,
/// its nearest live ancestor (None: the overflow buckets).
#[inline(always)]
pub fn released<const MODE: u8>(id: u64, to: Option<u64>) {
    let Some(mut h) = own::<MODE>(id) else {
        return;
    };
    h.add(&gone(id));
    if h.any() != 0 {
        into_departed(to, &h);
    }
    let _ = HEALTH_STATS.remove(&id);
    let _ = HEALTH_DEPARTED.remove(id);
}
