//! What one skb stands for: packets and network-layer bytes. Free of the
//! programs' maps, so the benchmark's programs compile it unchanged.
use aya_ebpf::{bindings::__sk_buff, helpers::generated::bpf_skb_load_bytes};

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

/// One byte at `off` from the skb's data: read in place when it lies in
/// the linear part (direct packet access, no call: this is the common case,
/// a stack's headers are linear), else copied by `bpf_skb_load_bytes`.
#[inline(always)]
fn load_u8(skb: *mut __sk_buff, off: u32) -> Option<u8> {
    // SAFETY: field reads of the program's context; the verifier turns
    // them into packet pointers.
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    let at = data.wrapping_add(off as usize);
    // Checked as "4 bytes fit", not "1 byte fits": LLVM turns `at + 1 <=
    // end` into `at < end`, from which the verifier learns no readable
    // range; with a larger constant the offset stays on the pointer. A byte
    // among the linear data's last three goes the helper's way.
    if at.wrapping_add(4) <= end {
        // SAFETY: `at + 4` lies at or below `data_end`, checked just above
        // (and by the verifier).
        return Some(unsafe { *(at as *const u8) });
    }
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
