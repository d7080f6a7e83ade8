//! The packet-path accounting shared by the TC and cgroup_skb programs.
use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST},
    helpers::generated::bpf_skb_load_bytes,
};
use cgacct_common::Counters;

use crate::{
    fold::{self, Family},
    maps::{CounterMap, OVERFLOW},
};

#[derive(Clone, Copy)]
pub enum Direction {
    Rx,
    Tx,
}

/// Packets and network-layer bytes an skb stands for.
///
/// `l3_offset` is where the IP header starts in the skb's data: 0 for
/// cgroup_skb, the Ethernet header length for TC. A GSO/GRO skb carries
/// `gso_segs` segments but holds the IP and transport headers only once, so
/// `(segs - 1)` more header copies are added: the result is the sum of the
/// IP packet lengths on the wire.
#[inline(always)]
pub fn measure(skb: *mut __sk_buff, l3_offset: u32) -> (u64, u64) {
    // SAFETY: `skb` is the program's context pointer.
    let (len, segs) = unsafe { ((*skb).len, (*skb).gso_segs) };
    let bytes = len.saturating_sub(l3_offset) as u64;
    if segs <= 1 {
        return (bytes, 1);
    }
    let extra = (segs - 1) as u64 * headers_len(skb, l3_offset) as u64;
    (bytes + extra, segs as u64)
}

#[inline(always)]
fn load_u8(skb: *mut __sk_buff, off: u32) -> Option<u8> {
    let mut b = 0u8;
    // SAFETY: one byte into a stack variable; the helper checks bounds.
    let ret = unsafe { bpf_skb_load_bytes(skb.cast(), off, core::ptr::from_mut(&mut b).cast(), 1) };
    (ret == 0).then_some(b)
}

/// Length of the IP header plus the TCP or UDP header of the skb's first
/// segment; 0 when it cannot be read.
#[inline(always)]
fn headers_len(skb: *mut __sk_buff, l3: u32) -> u32 {
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    let Some(first) = load_u8(skb, l3) else {
        return 0;
    };
    let (ip_len, proto) = match first >> 4 {
        4 => ((first & 0x0f) as u32 * 4, load_u8(skb, l3 + 9)),
        6 => (40, load_u8(skb, l3 + 6)),
        _ => return 0,
    };
    let l4 = match proto {
        Some(TCP) => match load_u8(skb, l3 + ip_len + 12) {
            Some(doff) => (doff >> 4) as u32 * 4,
            None => 0,
        },
        Some(UDP) => 8,
        _ => 0,
    };
    ip_len + l4
}

/// Adds one skb to `map[key]` on this CPU's slot; what the map cannot
/// take (full) goes to the overflow bucket `bucket`.
#[inline(always)]
pub fn add<K, const N: usize>(
    map: &CounterMap<K, N>,
    key: &K,
    bucket: u32,
    dir: Direction,
    bytes: u64,
    packets: u64,
) {
    if let Some(slot) = map.get_ptr_mut(key) {
        // SAFETY: a per-CPU slot: only this CPU writes it, and the program
        // is not preempted while it runs.
        bump(unsafe { &mut *slot }, dir, bytes, packets);
        return;
    }
    insert(map, key, bucket, dir, bytes, packets);
}

/// [`add`] for a map keyed by cgroup id (of `family`): an id without an
/// entry may be a removed cgroup whose socket lives on, and its traffic
/// then goes to its nearest live ancestor (see [`fold::late`]), never
/// into a new entry under the removed id. Live cgroups with an entry take
/// the same path as in [`add`].
#[inline(always)]
pub fn add_cgroup<const N: usize>(
    map: &CounterMap<u64, N>,
    id: u64,
    family: Family,
    dir: Direction,
    bytes: u64,
    packets: u64,
) {
    if let Some(slot) = map.get_ptr_mut(&id) {
        // SAFETY: as in `add`.
        bump(unsafe { &mut *slot }, dir, bytes, packets);
        return;
    }
    let c = counters(dir, bytes, packets);
    if fold::late(id, family, &c) {
        return;
    }
    insert(map, &id, family.bucket(), dir, bytes, packets);
}

/// A first packet for `key`: a new entry, or the overflow bucket if the
/// map is full.
#[inline(always)]
fn insert<K, const N: usize>(
    map: &CounterMap<K, N>,
    key: &K,
    bucket: u32,
    dir: Direction,
    bytes: u64,
    packets: u64,
) {
    let fresh = counters(dir, bytes, packets);
    if map.insert(key, &fresh, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // Another CPU created the entry first, or the map is full.
    if let Some(slot) = map.get_ptr_mut(key) {
        // SAFETY: as in `add`.
        bump(unsafe { &mut *slot }, dir, bytes, packets);
        return;
    }
    overflow(bucket, &fresh);
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
fn counters(dir: Direction, bytes: u64, packets: u64) -> Counters {
    let mut c = Counters::default();
    bump(&mut c, dir, bytes, packets);
    c
}

#[inline(always)]
fn bump(c: &mut Counters, dir: Direction, bytes: u64, packets: u64) {
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
