//! The bpf(2) calls aya 0.14 does not offer: creating a cgroup iterator
//! link (aya's `Iter::attach` passes no iterator info, which the kernel
//! rejects for cgroup iterators), pinning a raw link fd, and reading a map
//! in batches (`BPF_MAP_LOOKUP_BATCH`). Nothing else in cgacct issues raw
//! syscalls.
use std::{
    ffi::CStr,
    io, mem,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya_obj::generated::{bpf_attach_type::BPF_TRACE_ITER, bpf_attr, bpf_cmd};

/// The cgroup member of `union bpf_iter_link_info`.
#[repr(C)]
struct CgroupIterInfo {
    order: u32,
    cgroup_fd: u32,
    cgroup_id: u64,
}

/// Walk orders of `enum bpf_cgroup_iter_order`.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum CgroupIterOrder {
    SelfOnly = 1,
    DescendantsPre = 2,
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-initialised bpf_attr of the size given.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `BPF_LINK_CREATE` of an `iter/cgroup` program for one cgroup.
pub fn cgroup_iter_link(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    order: CgroupIterOrder,
) -> io::Result<OwnedFd> {
    let info = CgroupIterInfo {
        order: order as u32,
        cgroup_fd: cgroup.as_raw_fd() as u32,
        cgroup_id: 0,
    };
    // SAFETY: a C union of integers: all-zero is valid.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: writing the link_create member of the zeroed union.
    unsafe {
        let link = &mut attr.link_create;
        link.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
        link.attach_type = BPF_TRACE_ITER as u32;
        link.__bindgen_anon_3.__bindgen_anon_1.iter_info = std::ptr::from_ref(&info) as u64;
        link.__bindgen_anon_3.__bindgen_anon_1.iter_info_len = mem::size_of::<CgroupIterInfo>() as u32;
    }
    let fd = bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_OBJ_PIN` of any bpf object fd at `path` (on bpffs).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &CStr) -> io::Result<()> {
    // SAFETY: a C union of integers: all-zero is valid.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = fd.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// One `BPF_MAP_LOOKUP_BATCH` of a hash map: copies up to `count` entries
/// into `keys` (`count * key_size` bytes) and `values` (`count * value_size`
/// bytes, per-CPU values as the kernel lays them out: each CPU's value
/// rounded up to 8 bytes). `token` carries the position between calls
/// (`None` for the first). Returns how many entries were copied and whether
/// the map has more.
pub fn map_lookup_batch(
    map: BorrowedFd<'_>,
    token: &mut Option<u32>,
    keys: &mut [u8],
    values: &mut [u8],
    count: u32,
) -> io::Result<(u32, bool)> {
    let mut out_token = 0u32;
    let in_token = token.unwrap_or(0);
    // SAFETY: a C union of integers: all-zero is valid.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: writing the batch member of the zeroed union; the buffers
    // outlive the call and hold `count` entries (checked by the callers).
    unsafe {
        let b = &mut attr.batch;
        b.map_fd = map.as_raw_fd() as u32;
        if token.is_some() {
            b.in_batch = std::ptr::from_ref(&in_token) as u64;
        }
        b.out_batch = std::ptr::from_mut(&mut out_token) as u64;
        b.keys = keys.as_mut_ptr() as u64;
        b.values = values.as_mut_ptr() as u64;
        b.count = count;
    }
    let result = bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
    // SAFETY: the kernel wrote the count back into the same member.
    let copied = unsafe { attr.batch.count };
    match result {
        Ok(_) => {
            *token = Some(out_token);
            Ok((copied, true))
        }
        // ENOENT: the walk reached the end; `copied` entries are valid.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((copied, false)),
        Err(e) => Err(e),
    }
}
