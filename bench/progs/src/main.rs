//! Programs the benchmark compares cgacct's against; built by bench/build.rs,
//! never embedded in cgacct-pin.
//!
//! - `floor_cg`, `floor_tc`: empty programs of the two packet-path types.
//!   What any program of that type costs: the floor.
//! - `floor_kfree_skb`, `floor_sock_state`: empty BTF tracepoint programs
//!   on the two tracepoints cgacct's busiest health programs use.
//! - `floor_iter`: a cgroup iterator that writes one fixed line at the end
//!   of its walk and does nothing else: what any `net.stat`-like file costs
//!   a reader before its program does any work.
//! - `naive_cg`, `naive_tc`: the design cgacct avoids, one shared hash map
//!   per key kind, updated with atomic adds. They measure a packet exactly
//!   as cgacct does (the same `measure`, compiled from programs/src), so the
//!   comparison is about the map design alone.
#![no_std]
#![no_main]
// Inline BPF assembly for the atomic add (the BPF target has no
// compare-and-swap, so core's `fetch_add` is not offered); aya-ebpf uses
// the same feature.
#![feature(asm_experimental_arch)]

use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST},
    btf_maps::HashMap,
    helpers::generated::{bpf_seq_write, bpf_skb_cgroup_id},
    macros::{btf_map, btf_tracepoint, cgroup_skb, classifier},
    programs::{BtfTracePointContext, SkBuffContext, TcContext},
};
use cgacct_common::Counters;

// The production packet measurement, compiled here unchanged.
#[path = "../../../programs/src/measure.rs"]
mod measure;

const PASS: i32 = 1;
const NEXT: i32 = -1;
const ETH_HLEN: u32 = 14;

#[btf_map]
static NAIVE_CGROUP_STATS: HashMap<u64, Counters, 16384> = HashMap::new();
#[btf_map]
static NAIVE_TC_CGROUP_STATS: HashMap<u64, Counters, 16384> = HashMap::new();
#[btf_map]
static NAIVE_IFACE_STATS: HashMap<u32, Counters, 4096> = HashMap::new();

#[cgroup_skb(ingress)]
pub fn floor_cg(_ctx: SkBuffContext) -> i32 {
    PASS
}

#[classifier]
pub fn floor_tc(_ctx: TcContext) -> i32 {
    NEXT
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn floor_kfree_skb(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn floor_sock_state(_ctx: BtfTracePointContext) -> i32 {
    0
}

// The kernel's iterator context, as cgacct's iterator declares it.
#[path = "../../../programs/src/iter_ctx.rs"]
mod iter_ctx;
use iter_ctx::IterCgroupCtx;

const FLOOR_LINE: &[u8; 8] = b"floor 0\n";

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/cgroup")]
pub extern "C" fn floor_iter(ctx: *mut IterCgroupCtx) -> i32 {
    // SAFETY: the kernel passes a valid context; meta is never NULL. The
    // line is read-only data of the length passed.
    unsafe {
        if (*ctx).cgroup.is_null() {
            bpf_seq_write(
                (*(*ctx).meta).seq,
                FLOOR_LINE.as_ptr().cast(),
                FLOOR_LINE.len() as u32,
            );
        }
    }
    0
}

#[cgroup_skb(ingress)]
pub fn naive_cg(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: helper call on the program's context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    let (bytes, packets) = measure::measure(skb, 0);
    shared_add(&NAIVE_CGROUP_STATS, &cgroup_id, bytes, packets);
    PASS
}

#[classifier]
pub fn naive_tc(ctx: TcContext) -> i32 {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: helper call and field read on the program's context.
    let (cgroup_id, ifindex) = unsafe { (bpf_skb_cgroup_id(skb), (*skb).ifindex) };
    let (bytes, packets) = measure::measure(skb, ETH_HLEN);
    shared_add(&NAIVE_TC_CGROUP_STATS, &cgroup_id, bytes, packets);
    shared_add(&NAIVE_IFACE_STATS, &ifindex, bytes, packets);
    NEXT
}

/// One value shared by every CPU, bumped with atomic adds (rx side only:
/// the direction does not change the cost).
#[inline(always)]
fn shared_add<K, const N: usize>(map: &HashMap<K, Counters, N>, key: &K, bytes: u64, packets: u64) {
    let slot = match map.get_ptr_mut(key) {
        Some(slot) => slot,
        None => {
            let fresh = Counters {
                rx_bytes: bytes,
                rx_packets: packets,
                ..Counters::default()
            };
            if map.insert(key, &fresh, BPF_NOEXIST as u64).is_ok() {
                return;
            }
            match map.get_ptr_mut(key) {
                Some(slot) => slot,
                None => return,
            }
        }
    };
    // SAFETY: a map value lives as long as the program runs; the fields are
    // only ever updated atomically.
    unsafe {
        atomic_add(&raw mut (*slot).rx_bytes, bytes);
        atomic_add(&raw mut (*slot).rx_packets, packets);
    }
}

/// `lock *(u64 *)(p + 0) += v`: BPF_ATOMIC | BPF_ADD, what C's
/// `__sync_fetch_and_add` compiles to when the result is unused.
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: the caller passes a valid, 8-byte aligned map value field.
    unsafe {
        core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) v);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
