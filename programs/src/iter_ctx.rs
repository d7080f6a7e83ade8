//! The kernel's context of a cgroup iterator program, shared with the
//! benchmark's floor iterator (bench/progs), which compiles this file.
use aya_ebpf::bindings::seq_file;

/// `struct bpf_iter_meta`.
#[repr(C)]
pub struct IterMeta {
    pub seq: *mut seq_file,
    pub session_id: u64,
    pub seq_num: u64,
}

/// `struct bpf_iter__cgroup`.
#[repr(C)]
pub struct IterCgroupCtx {
    pub meta: *mut IterMeta,
    pub cgroup: *const u8,
}
