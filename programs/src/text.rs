//! `net.stat` lines formatted by the iterator itself and written to the
//! reader in blocks of up to [`TEXT_LEN`] bytes with `bpf_seq_write`.
//!
//! `bpf_seq_printf` parses its format string on every call, checks every
//! argument and formats again with `bstr_printf`: about a third of a
//! `net.stat` read went there. Here the epilogue queues its lines as (key,
//! value) pairs; one `bpf_loop` callback formats each: the key copied from
//! a table in read-only data, the number turned into digits with
//! multiplications (the BPF instruction set has no multiply-high, so a
//! `u64` is cut into base-10^8 chunks with at most two divisions, and each
//! chunk's digits come from a 64-bit multiply and shift).
//!
//! The callback is verified once for all the lines it formats, whatever
//! the number of CPUs the sums before it are unrolled for. The text lives
//! in the read's own `ITER_SCRATCH` entry ([`Text`]), never in memory
//! shared with another read.
use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::seq_file,
    helpers::generated::{bpf_loop, bpf_seq_write},
};
use cgacct_common::{Text, TEXT_LEN, TEXT_LINES};

use crate::kernel::unaligned_stores;

/// Longest key, its trailing space included (a multiple of 8: keys are
/// copied 8 bytes at a time).
const KEY_MAX: usize = 48;
/// Digits of the largest `u64`.
const DIGITS_MAX: usize = 20;
/// A key's length as the verifier sees it: masked with `KEY_LEN_MASK`, so
/// that every kernel's verifier knows its bound (Linux 6.1's loses bounds
/// that LLVM proves on a copy of the value).
const KEY_LEN_MASK: usize = 63;
/// Longest line as the verifier bounds it: key, number, newline.
const LINE_MAX: usize = KEY_LEN_MASK + DIGITS_MAX + 1;
const _: () = assert!(LINE_MAX < TEXT_LEN && KEY_MAX % 8 == 0 && KEY_MAX <= KEY_LEN_MASK);

/// A key as the table holds it: its bytes, zero-padded, and their length.
#[repr(C)]
struct KeyText {
    len: u64,
    name: [u8; KEY_MAX],
}

const fn key_text(name: &[u8]) -> KeyText {
    assert!(name.len() <= KEY_MAX);
    let mut k = KeyText {
        len: name.len() as u64,
        name: [0; KEY_MAX],
    };
    let mut i = 0;
    while i < name.len() {
        k.name[i] = name[i];
        i += 1;
    }
    k
}

/// Slots of the key table (a power of two: ids are masked).
const KEY_SLOTS: usize = 64;

macro_rules! keys {
    ($($id:ident = $name:literal,)*) => {
        /// The keys of `net.stat`, by id: their text is in [`KEYS`]. Most
        /// are reached by their offset from the first of a group
        /// ([`Key::plus`]), never by name.
        #[allow(non_camel_case_types, clippy::upper_case_acronyms, dead_code)]
        #[derive(Clone, Copy)]
        #[repr(u8)]
        pub enum Key {
            $($id,)*
        }

        const NAMES: &[&[u8]] = &[$($name,)*];
    };
}

keys! {
    CGROUP_ID = b"cgroup_id ",
    SUBTREE_CGROUPS = b"subtree_cgroups ",
    REMOVED_CGROUPS = b"removed_cgroups ",
    RX_BYTES = b"rx_bytes ",
    RX_PACKETS = b"rx_packets ",
    TX_BYTES = b"tx_bytes ",
    TX_PACKETS = b"tx_packets ",
    SELF_RX_BYTES = b"self_rx_bytes ",
    SELF_RX_PACKETS = b"self_rx_packets ",
    SELF_TX_BYTES = b"self_tx_bytes ",
    SELF_TX_PACKETS = b"self_tx_packets ",
    TC_INGRESS_BYTES = b"tc_ingress_bytes ",
    TC_INGRESS_PACKETS = b"tc_ingress_packets ",
    TC_EGRESS_BYTES = b"tc_egress_bytes ",
    TC_EGRESS_PACKETS = b"tc_egress_packets ",
    SELF_TC_INGRESS_BYTES = b"self_tc_ingress_bytes ",
    SELF_TC_INGRESS_PACKETS = b"self_tc_ingress_packets ",
    SELF_TC_EGRESS_BYTES = b"self_tc_egress_bytes ",
    SELF_TC_EGRESS_PACKETS = b"self_tc_egress_packets ",
    VETH_RX_BYTES = b"veth_rx_bytes ",
    VETH_RX_PACKETS = b"veth_rx_packets ",
    VETH_TX_BYTES = b"veth_tx_bytes ",
    VETH_TX_PACKETS = b"veth_tx_packets ",
    SELF_VETH_RX_BYTES = b"self_veth_rx_bytes ",
    SELF_VETH_RX_PACKETS = b"self_veth_rx_packets ",
    SELF_VETH_TX_BYTES = b"self_veth_tx_bytes ",
    SELF_VETH_TX_PACKETS = b"self_veth_tx_packets ",
    TCP_ACTIVE_OPENS = b"tcp_active_opens ",
    SELF_TCP_ACTIVE_OPENS = b"self_tcp_active_opens ",
    TCP_PASSIVE_OPENS = b"tcp_passive_opens ",
    SELF_TCP_PASSIVE_OPENS = b"self_tcp_passive_opens ",
    TCP_RETRANS_SEGS = b"tcp_retrans_segs ",
    SELF_TCP_RETRANS_SEGS = b"self_tcp_retrans_segs ",
    TCP_TIMEOUTS = b"tcp_timeouts ",
    SELF_TCP_TIMEOUTS = b"self_tcp_timeouts ",
    TCP_OUT_RSTS = b"tcp_out_rsts ",
    SELF_TCP_OUT_RSTS = b"self_tcp_out_rsts ",
    DROP_PACKETS = b"drop_packets ",
    SELF_DROP_PACKETS = b"self_drop_packets ",
    OVERFLOW_CGROUP_STATS_PACKETS = b"overflow_cgroup_stats_packets ",
    OVERFLOW_CGROUP_STATS_BYTES = b"overflow_cgroup_stats_bytes ",
    OVERFLOW_TC_CGROUP_STATS_PACKETS = b"overflow_tc_cgroup_stats_packets ",
    OVERFLOW_TC_CGROUP_STATS_BYTES = b"overflow_tc_cgroup_stats_bytes ",
    OVERFLOW_IFACE_STATS_PACKETS = b"overflow_iface_stats_packets ",
    OVERFLOW_IFACE_STATS_BYTES = b"overflow_iface_stats_bytes ",
    OVERFLOW_VETH_STATS_PACKETS = b"overflow_veth_stats_packets ",
    OVERFLOW_VETH_STATS_BYTES = b"overflow_veth_stats_bytes ",
    OVERFLOW_DEPARTED_PACKETS = b"overflow_departed_packets ",
    OVERFLOW_DEPARTED_BYTES = b"overflow_departed_bytes ",
    OVERFLOW_DEPARTED_TC_PACKETS = b"overflow_departed_tc_packets ",
    OVERFLOW_DEPARTED_TC_BYTES = b"overflow_departed_tc_bytes ",
    OVERFLOW_DEPARTED_VETH_PACKETS = b"overflow_departed_veth_packets ",
    OVERFLOW_DEPARTED_VETH_BYTES = b"overflow_departed_veth_bytes ",
}

const fn key_table() -> [KeyText; KEY_SLOTS] {
    assert!(NAMES.len() <= KEY_SLOTS);
    let mut t = [const { key_text(b"") }; KEY_SLOTS];
    let mut i = 0;
    while i < NAMES.len() {
        t[i] = key_text(NAMES[i]);
        i += 1;
    }
    t
}

/// Every key's text, by [`Key`] (read-only data).
static KEYS: [KeyText; KEY_SLOTS] = key_table();

impl Key {
    /// The key `n` places after this one in the table (the `self_` key
    /// after its subtree key, the next health key).
    #[inline(always)]
    pub fn plus(self, n: u8) -> u8 {
        self as u8 + n
    }
}

/// The text of one read, and the reader it goes to.
pub struct Out {
    seq: *mut seq_file,
    text: *mut Text,
}

/// What the callback of `bpf_loop` gets.
#[repr(C)]
struct Lines {
    seq: *mut seq_file,
    text: *mut Text,
}

impl Out {
    /// Starts empty on `text`, a part of the read's own scratch entry.
    #[inline(always)]
    pub fn new(seq: *mut seq_file, text: *mut Text) -> Out {
        let out = Out { seq, text };
        out.set_queued(0);
        // SAFETY: `text` points into a live map value.
        unsafe { (*text).len = 0 };
        out
    }

    /// Lines queued and not yet formatted. Kept in the map value and read
    /// back, volatile: to the verifier a number known only by its bounds,
    /// so the ways the lines before were queued (health keys on or off)
    /// lead to one state, not one each, through the code after them.
    #[inline(always)]
    fn queued(&self) -> usize {
        // SAFETY: `text` points into a live map value.
        unsafe { ptr::read_volatile(&raw const (*self.text).queued) as usize }
    }

    #[inline(always)]
    fn set_queued(&self, n: usize) {
        // SAFETY: as in `queued`.
        unsafe { ptr::write_volatile(&raw mut (*self.text).queued, n as u64) };
    }

    /// Queues the line `key value`; [`Out::flush`] formats and writes it.
    #[inline(always)]
    pub fn line(&self, key: Key, value: u64) {
        self.line_id(key as u8, value);
    }

    /// [`Out::line`] by a key's id.
    #[inline(always)]
    pub fn line_id(&self, key: u8, value: u64) {
        let n = self.queued();
        let i = n & (TEXT_LINES - 1);
        // SAFETY: `text` points into a live map value; `i` is in bounds.
        unsafe {
            (*self.text).keys[i] = key;
            (*self.text).values[i] = value;
        }
        self.set_queued(n + 1);
    }

    /// Formats the queued lines and writes all the text to the reader.
    #[inline(always)]
    pub fn flush(&self) {
        let n = self.queued().min(TEXT_LINES);
        self.set_queued(0);
        let mut ctx = Lines {
            seq: self.seq,
            text: self.text,
        };
        if n > 0 {
            let f: extern "C" fn(u64, *mut c_void) -> i64 = format_line;
            // SAFETY: a static callback of the signature bpf_loop calls,
            // and a context on this stack that outlives the call.
            unsafe {
                bpf_loop(n as u32, f as *mut c_void, ptr::from_mut(&mut ctx).cast(), 0);
            }
        }
        write_out(&ctx);
    }
}

/// Writes what is ready to the reader and starts empty again.
#[inline(always)]
fn write_out(ctx: &Lines) {
    // SAFETY: `text` points into a live map value.
    let len = unsafe { (*ctx.text).len } as usize;
    // One bound only (a zero-length write is allowed): Linux 6.1's
    // verifier loses the bounds of `len` that LLVM proves with
    // `len - 1 <= 511` for `len > 0 && len <= 512`.
    if len <= TEXT_LEN {
        // SAFETY: `len` bytes of the buffer are formatted text.
        unsafe {
            bpf_seq_write(ctx.seq, (&raw const (*ctx.text).buf).cast(), len as u32);
        }
    }
    // SAFETY: as above.
    unsafe { (*ctx.text).len = 0 };
}

/// Line `i` of the queue, appended to the text (written out first when a
/// longest line might not fit); 0: go on with the next line.
extern "C" fn format_line(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` passes the `Lines` that `Out::flush` gave it.
    let ctx = unsafe { &*ctx.cast::<Lines>() };
    let text = ctx.text;
    let i = i as usize & (TEXT_LINES - 1);
    // SAFETY: `text` points into a live map value; `i` is in bounds.
    let (key, value) = unsafe { ((*text).keys[i] as usize, (*text).values[i]) };
    let key = &KEYS[key & (KEY_SLOTS - 1)];
    // SAFETY: as above.
    let mut at = unsafe { (*text).len } as usize;
    if at > TEXT_LEN - LINE_MAX {
        write_out(ctx);
        at = 0;
    }
    // SAFETY: at <= TEXT_LEN - LINE_MAX: the line's LINE_MAX bytes are in
    // the buffer; every write below is at an offset below LINE_MAX.
    let line = unsafe { (&raw mut (*text).buf).cast::<u8>().add(at) };
    // The key's whole slot, 8 bytes at a time, whatever its length: the
    // number overwrites the padding after the key. A copy that stopped at
    // the key's end would give the verifier one way through the rest of
    // the line per block.
    let len = key.len as usize & KEY_LEN_MASK;
    let name = key.name.as_ptr();
    let mut block = 0;
    if unaligned_stores() {
        while block < KEY_MAX {
            // SAFETY: block is a multiple of 8 below KEY_MAX, itself a
            // multiple of 8: the read is 8-aligned (`name` follows a u64
            // in a `#[repr(C)]` struct) and inside `name`; the store is at
            // an offset below LINE_MAX of the line, one instruction at any
            // byte offset, which this kernel's verifier takes (the loader
            // sets UNALIGNED_STORES only where it does).
            unsafe {
                let word = ptr::read(name.add(block).cast::<u64>());
                core::arch::asm!(
                    "*(u64 *)({p} + 0) = {w}",
                    p = in(reg) line.add(block),
                    w = in(reg) word,
                );
            }
            block += 8;
        }
    } else {
        while block < KEY_MAX {
            // SAFETY: block < KEY_MAX < LINE_MAX.
            unsafe { *line.add(block) = *name.add(block) };
            block += 1;
        }
    }
    let end = len + number(line, len, value);
    // SAFETY: end <= KEY_LEN_MASK + DIGITS_MAX < LINE_MAX.
    unsafe { *line.add(end) = b'\n' };
    // SAFETY: as above.
    unsafe { (*text).len = (at + end + 1) as u64 };
    0
}

const E8: u64 = 100_000_000;

/// The decimal digits of `v` at `line + at` (at <= KEY_LEN_MASK); returns
/// how many (at most DIGITS_MAX).
#[inline(always)]
fn number(line: *mut u8, at: usize, v: u64) -> usize {
    if v < E8 {
        return digits(line, at, v as u32);
    }
    let hi = v / E8;
    let lo = (v - hi * E8) as u32;
    if hi < E8 {
        let n = digits(line, at, hi as u32);
        digits8(line, at + n, lo);
        return n + 8;
    }
    let top = hi / E8;
    let mid = (hi - top * E8) as u32;
    let n = digits(line, at, top as u32);
    digits8(line, at + n, mid);
    digits8(line, at + n + 8, lo);
    n + 16
}

/// The digits of `c` (< 10^8) without leading zeros; returns how many.
#[inline(always)]
fn digits(line: *mut u8, at: usize, c: u32) -> usize {
    let n = if c < 10 {
        1
    } else if c < 100 {
        2
    } else if c < 1_000 {
        3
    } else if c < 10_000 {
        4
    } else if c < 100_000 {
        5
    } else if c < 1_000_000 {
        6
    } else if c < 10_000_000 {
        7
    } else {
        8
    };
    put_digits(line, at, c, n);
    n
}

/// The 8 digits of `c` (< 10^8), leading zeros included.
#[inline(always)]
fn digits8(line: *mut u8, at: usize, c: u32) {
    put_digits(line, at, c, 8);
}

/// The last `n` decimal digits of `c` at `line + at`.
#[inline(always)]
fn put_digits(line: *mut u8, at: usize, c: u32, n: usize) {
    let mut x = c;
    let mut i = n;
    while i > 0 {
        i -= 1;
        let q = div10(x);
        // SAFETY: at + i < KEY_LEN_MASK + DIGITS_MAX (see `number`).
        unsafe { *line.add(at + i) = b'0' + (x - q * 10) as u8 };
        x = q;
    }
}

/// `x / 10` for any `u32`, by multiplying with 2^35 / 10 rounded up
/// (exact over the whole range; the product fits in 64 bits).
#[inline(always)]
fn div10(x: u32) -> u32 {
    ((u64::from(x) * 0xCCCC_CCCD) >> 35) as u32
}
