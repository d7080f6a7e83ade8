//! The bpf(2) calls aya 0.14 does not offer: creating a cgroup iterator
//! link (aya's `Iter::attach` passes no iterator info, which the kernel
//! rejects for cgroup iterators), pinning a raw link fd, probing for TCX,
//! and telling what kind of object a bpffs pin holds. Nothing else in
//! cgacct issues raw syscalls.
use std::{
    ffi::CStr,
    io, mem,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya_obj::generated::{
    bpf_attach_type::{BPF_TCX_INGRESS, BPF_TRACE_ITER},
    bpf_attr, bpf_cmd,
    bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS,
};

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

/// Whether the kernel has TCX (tc programs attached as bpf links through
/// bpf_mprog, Linux >= 6.6 with CONFIG_NET_XGRESS), asked of the kernel
/// itself rather than read from its version: a trivial tc program (`return
/// TC_ACT_UNSPEC`) is loaded and a TCX ingress link is requested for
/// ifindex 0, which names no device. A kernel with TCX looks the device up
/// and answers ENODEV; one without has no link type for tc programs and
/// answers EINVAL. Nothing is ever attached.
pub fn probe_tcx() -> io::Result<bool> {
    // r0 = -1 (TC_ACT_UNSPEC); exit. Little-endian struct bpf_insn.
    const INSNS: [u8; 16] = [
        0xb7, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    const LICENSE: &[u8] = b"GPL\0";
    // SAFETY: a C union of integers: all-zero is valid.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: writing the prog_load member of the zeroed union; the pointers
    // stay valid for the call.
    unsafe {
        let load = &mut attr.__bindgen_anon_3;
        load.prog_type = BPF_PROG_TYPE_SCHED_CLS as u32;
        load.insn_cnt = (INSNS.len() / 8) as u32;
        load.insns = INSNS.as_ptr() as u64;
        load.license = LICENSE.as_ptr() as u64;
    }
    let fd = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: writing the link_create member of the zeroed union.
    unsafe {
        let link = &mut attr.link_create;
        link.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
        link.__bindgen_anon_2.target_ifindex = 0;
        link.attach_type = BPF_TCX_INGRESS as u32;
    }
    match bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr) {
        // Not expected (ifindex 0 is no device), but a link means TCX works.
        Ok(fd) => {
            // SAFETY: a new fd that nothing else owns; dropping it detaches.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            Ok(true)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What a pinned bpffs object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Program,
    Link,
    Map,
    Other,
}

/// Opens the pin at `path` with `BPF_OBJ_GET` and tells its kind from the
/// fd's anon inode name (`anon_inode:bpf-prog`, `bpf_link`, `bpf-map`):
/// bpf's info call does not say, it answers for whatever the fd is.
pub fn object_kind(path: &CStr) -> io::Result<ObjectKind> {
    // SAFETY: a C union of integers: all-zero is valid.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok(match target.to_string_lossy().as_ref() {
        "anon_inode:bpf-prog" => ObjectKind::Program,
        "anon_inode:bpf_link" => ObjectKind::Link,
        "anon_inode:bpf-map" => ObjectKind::Map,
        _ => ObjectKind::Other,
    })
}
