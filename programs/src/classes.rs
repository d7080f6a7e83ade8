//! Destination classes: the cgroup_skb hooks count each packet once more,
//! under the class of its peer address (the destination of what a socket
//! sends, the source of what it receives), picked by longest prefix match
//! in `CLASS_PREFIXES_V4`/`_V6` (no match: class 0, `other`).
//!
//! `CLASS_CONFIG` says how many class indices are in use; 0 (no
//! `[classes]` in the layout) turns all of this off: the packet path then
//! costs one array lookup more than without the feature.
//!
//! Counts live in `CLASS_STATS` by (cgroup id, class): per CPU, or one
//! value shared by every CPU with atomic adds where the cgroup counter
//! maps are shared ([`shared_counters`]). A removed cgroup's
//! class counts are folded into its parent's `CLASS_DEPARTED` entries, as
//! its other counts are into `DEPARTED` (see [`crate::fold`]).
use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{__sk_buff, seq_file, BPF_ANY, BPF_NOEXIST},
    btf_maps::lpm_trie::Key,
    helpers::generated::{bpf_loop, bpf_skb_load_bytes},
};
use cgacct_common::{classes, ClassKey, Counters};

use crate::{
    account::{bump_in, counters, Direction},
    fold::{add_counters, dying, live_ancestor},
    kernel::{shared_counters, sum, sum_counters},
    maps::{
        CLASS_CONFIG, CLASS_DEPARTED, CLASS_NAMES, CLASS_OVERFLOW, CLASS_PREFIXES_V4, CLASS_PREFIXES_V6,
        CLASS_SCRATCH, CLASS_STATS,
    },
};

/// `ETH_P_IP` and `ETH_P_IPV6` as `__sk_buff.protocol` holds them
/// (network byte order in the low 16 bits).
const PROTO_IP: u32 = (0x0800u16).to_be() as u32;
const PROTO_IPV6: u32 = (0x86ddu16).to_be() as u32;

/// Class indices in use; 0 when classes are off.
#[inline(always)]
pub fn indices() -> u32 {
    match CLASS_CONFIG.get(0) {
        Some(c) => c.indices,
        None => 0,
    }
}

#[inline(always)]
fn key(cgroup_id: u64, class: u32) -> ClassKey {
    ClassKey {
        cgroup_id,
        class,
        pad: 0,
    }
}

/// Loads `N` bytes at `off` of the skb's data (the IP header first).
#[inline(always)]
fn load<const N: usize>(skb: *mut __sk_buff, off: u32, prefix_len: u32) -> Option<Key<[u8; N]>> {
    let mut k = Key::new(prefix_len, [0u8; N]);
    // SAFETY: N bytes into the key's data (a byte array: no alignment); the
    // helper checks the skb's bounds.
    let ret = unsafe { bpf_skb_load_bytes(skb.cast(), off, (&raw mut k.data).cast(), N as u32) };
    (ret == 0).then_some(k)
}

/// The class of the skb's peer address: destination when sent, source
/// when received.
#[inline(always)]
fn peer_class(skb: *mut __sk_buff, dir: Direction) -> u32 {
    // SAFETY: a field of the program's context.
    let proto = unsafe { (*skb).protocol };
    let tx = matches!(dir, Direction::Tx);
    let class = if proto == PROTO_IP {
        load::<4>(skb, if tx { 16 } else { 12 }, 32).and_then(|k| CLASS_PREFIXES_V4.get(&k).copied())
    } else if proto == PROTO_IPV6 {
        load::<16>(skb, if tx { 24 } else { 8 }, 128).and_then(|k| CLASS_PREFIXES_V6.get(&k).copied())
    } else {
        None
    };
    match class {
        Some(c) if c < classes::MAX => c,
        _ => classes::OTHER,
    }
}

/// Counts one skb of `cgroup_id` under its peer's class, if classes are on.
#[inline(always)]
pub fn count(skb: *mut __sk_buff, cgroup_id: u64, dir: Direction, bytes: u64, packets: u64) {
    if indices() == 0 {
        return;
    }
    let k = key(cgroup_id, peer_class(skb, dir));
    let shared = shared_counters();
    if let Some(slot) = CLASS_STATS.get_ptr_mut(&k) {
        bump_in(slot, shared, dir, bytes, packets);
        return;
    }
    let c = counters(dir, bytes, packets);
    if let Some(d) = dying(cgroup_id) {
        // A removed cgroup's socket: to its nearest live ancestor.
        // SAFETY: non-NULL lookup result.
        let parent = unsafe { (*d).parent_id };
        into_departed(live_ancestor(parent), k.class, &c);
        return;
    }
    if CLASS_STATS.insert(&k, &c, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    if let Some(slot) = CLASS_STATS.get_ptr_mut(&k) {
        bump_in(slot, shared, dir, bytes, packets);
        return;
    }
    overflow(&c);
}

#[inline(always)]
fn overflow(c: &Counters) {
    if let Some(slot) = CLASS_OVERFLOW.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, as in `count`.
        unsafe { &mut *slot }.add(c);
    }
}

/// Adds `c` to `ancestor`'s `CLASS_DEPARTED` entry of `class` (made if
/// missing); to `CLASS_OVERFLOW` if none can be made.
#[inline(always)]
fn into_departed(ancestor: Option<u64>, class: u32, c: &Counters) {
    let Some(id) = ancestor else {
        overflow(c);
        return;
    };
    let k = key(id, class);
    if let Some(p) = CLASS_DEPARTED.get_ptr_mut(&k) {
        add_counters(p, c);
        return;
    }
    if CLASS_DEPARTED.insert(&k, c, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // Another CPU made it first, or the map is full.
    match CLASS_DEPARTED.get_ptr_mut(&k) {
        Some(p) => add_counters(p, c),
        None => overflow(c),
    }
}

/// A cgroup's own and removed descendants' counts of `class`
/// (`MODE`: see [`sum_counters`]).
#[inline(always)]
pub fn totals<const MODE: u8>(id: u64, class: u32) -> Option<(Counters, Counters)> {
    let k = key(id, class);
    let [own] =
        sum_counters::<ClassKey, Counters, 1, MODE>([ptr::from_ref(&CLASS_STATS).cast_mut().cast()], &k)?;
    let gone = match CLASS_DEPARTED.get_ptr(&k) {
        // SAFETY: non-NULL lookup result.
        Some(d) => unsafe { *d },
        None => Counters::default(),
    };
    Some((own, gone))
}

/// Folds every class count under `id` (its own and its removed
/// descendants') into `to`'s `CLASS_DEPARTED` entries and deletes them:
/// the removal and release tracepoints' part for classes. With per-CPU
/// sums (`MODE` [`sum::LOOP`]) the classes are a `bpf_loop` too, so the
/// verifier checks one class's step once, not once per class: unrolled,
/// this loop was nine tenths of `cgroup_release`'s verification.
#[inline(always)]
pub fn fold<const MODE: u8>(id: u64, to: Option<u64>) {
    let n = indices().min(classes::MAX);
    if MODE == sum::LOOP {
        let mut ctx = FoldCtx {
            id,
            to: to.unwrap_or(0),
            has_to: u64::from(to.is_some()),
        };
        let step: extern "C" fn(u64, *mut c_void) -> i64 = fold_step;
        // SAFETY: a static callback of the signature bpf_loop calls, and a
        // context on this stack that outlives the call.
        unsafe { bpf_loop(n, step as *mut c_void, ptr::from_mut(&mut ctx).cast(), 0) };
        return;
    }
    let mut class = 0;
    while class < n {
        if fold_one::<MODE>(id, class, to).is_none() {
            return;
        }
        class += 1;
    }
}

/// What one class's step of [`fold`] reads.
#[repr(C)]
struct FoldCtx {
    id: u64,
    to: u64,
    /// 1 when `to` holds the ancestor, 0 when there is none.
    has_to: u64,
}

/// One class of [`fold`] by `bpf_loop`; 1 (stop) where its sum cannot be
/// taken.
extern "C" fn fold_step(class: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` passes the `FoldCtx` that `fold` gave it.
    let ctx = unsafe { &*ctx.cast::<FoldCtx>() };
    let to = (ctx.has_to != 0).then_some(ctx.to);
    match fold_one::<{ sum::LOOP }>(ctx.id, class as u32, to) {
        Some(()) => 0,
        None => 1,
    }
}

/// Folds `class` of `id` into `to` and deletes its entries.
#[inline(always)]
fn fold_one<const MODE: u8>(id: u64, class: u32, to: Option<u64>) -> Option<()> {
    let (mut t, gone) = totals::<MODE>(id, class)?;
    t.add(&gone);
    if t.any() != 0 {
        into_departed(to, class, &t);
    }
    let k = key(id, class);
    let _ = CLASS_STATS.remove(&k);
    let _ = CLASS_DEPARTED.remove(&k);
    Some(())
}

/// The iterator's part: adds one walked cgroup's class counts to the
/// session's sums in `CLASS_SCRATCH` (the first cgroup, `seq_num` 0, sets
/// them, and its own counts too).
#[inline(always)]
pub fn visit(id: u64, session: u64, seq_num: u64) {
    let n = indices();
    let mut class = 0;
    while class < classes::MAX && class < n {
        let Some((own, gone)) = totals::<{ sum::AUTO }>(id, class) else {
            return;
        };
        let mut sub = own;
        sub.add(&gone);
        let k = key(session, class);
        if seq_num == 0 {
            let _ = CLASS_SCRATCH.insert(&k, &sub, BPF_ANY as u64);
            let _ = CLASS_SCRATCH.insert(&key(session, classes::MAX + class), &own, BPF_ANY as u64);
        } else if let Some(acc) = CLASS_SCRATCH.get_ptr_mut(&k) {
            // SAFETY: a session is walked by one reader at a time.
            unsafe { &mut *acc }.add(&sub);
        }
        class += 1;
    }
}

/// The session's sum under `k`, taken out of `CLASS_SCRATCH`.
#[inline(always)]
fn take(k: &ClassKey) -> Counters {
    let c = match CLASS_SCRATCH.get_ptr(k) {
        // SAFETY: non-NULL lookup result.
        Some(p) => unsafe { *p },
        None => Counters::default(),
    };
    let _ = CLASS_SCRATCH.remove(k);
    c
}

/// After the walk: `class_<name>_*` (subtree) and `self_class_<name>_*`
/// lines for every class in use, in index order (`other` first).
#[inline(always)]
pub fn print(seq: *mut seq_file, session: u64) {
    let n = indices();
    let mut class = 0;
    while class < classes::MAX && class < n {
        let sub = take(&key(session, class));
        let own = take(&key(session, classes::MAX + class));
        if let Some(name) = CLASS_NAMES.get(class) {
            if name.name[0] != 0 {
                let s = name.name.as_ptr() as u64;
                crate::cgroup_iter::print(
                    seq,
                    b"class_%s_rx_bytes %llu\nclass_%s_rx_packets %llu\n\
class_%s_tx_bytes %llu\nclass_%s_tx_packets %llu\n\0",
                    &[
                        s,
                        sub.rx_bytes,
                        s,
                        sub.rx_packets,
                        s,
                        sub.tx_bytes,
                        s,
                        sub.tx_packets,
                    ],
                );
                crate::cgroup_iter::print(
                    seq,
                    b"self_class_%s_rx_bytes %llu\nself_class_%s_rx_packets %llu\n\
self_class_%s_tx_bytes %llu\nself_class_%s_tx_packets %llu\n\0",
                    &[
                        s,
                        own.rx_bytes,
                        s,
                        own.rx_packets,
                        s,
                        own.tx_bytes,
                        s,
                        own.tx_packets,
                    ],
                );
            }
        }
        class += 1;
    }
}
