//! The bpf(2) calls aya 0.14 does not offer: creating a
//! cgroup iterator link (aya's `Iter::attach` passes no iterator info, which
//! the kernel rejects for cgroup iterators), pinning a raw link fd, reading
//! a link's target (aya's `LinkInfo` has only ids and type), updating and
//! detaching a link, querying and detaching what is attached to a cgroup or
//! interface hook, reading a map value of a size known only at run time,
//! reading a map in batches (`BPF_MAP_LOOKUP_BATCH`), counting a map's
//! keys of a size known only at run time, creating a hash map of a type the
//! object does not declare, probing for TCX,
//! and telling what kind of object a bpffs pin holds. Every error names the
//! command that failed ([`SysError`]).
use std::{
    ffi::CStr,
    io, mem,
    os::fd::{AsFd as _, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use super::SysError;
use aya_obj::generated::{
    bpf_attach_type::{self, BPF_TCX_INGRESS, BPF_TRACE_ITER},
    bpf_attr, bpf_cmd, bpf_link_info,
    bpf_link_type::{BPF_LINK_TYPE_CGROUP, BPF_LINK_TYPE_ITER, BPF_LINK_TYPE_TCX},
    bpf_prog_info,
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

/// The name of a bpf(2) command, for errors.
fn name(cmd: bpf_cmd) -> &'static str {
    match cmd {
        bpf_cmd::BPF_LINK_CREATE => "bpf(BPF_LINK_CREATE)",
        bpf_cmd::BPF_OBJ_PIN => "bpf(BPF_OBJ_PIN)",
        bpf_cmd::BPF_OBJ_GET => "bpf(BPF_OBJ_GET)",
        bpf_cmd::BPF_OBJ_GET_INFO_BY_FD => "bpf(BPF_OBJ_GET_INFO_BY_FD)",
        bpf_cmd::BPF_LINK_UPDATE => "bpf(BPF_LINK_UPDATE)",
        bpf_cmd::BPF_LINK_GET_FD_BY_ID => "bpf(BPF_LINK_GET_FD_BY_ID)",
        bpf_cmd::BPF_LINK_GET_NEXT_ID => "bpf(BPF_LINK_GET_NEXT_ID)",
        bpf_cmd::BPF_LINK_DETACH => "bpf(BPF_LINK_DETACH)",
        bpf_cmd::BPF_PROG_QUERY => "bpf(BPF_PROG_QUERY)",
        bpf_cmd::BPF_PROG_DETACH => "bpf(BPF_PROG_DETACH)",
        bpf_cmd::BPF_PROG_LOAD => "bpf(BPF_PROG_LOAD)",
        bpf_cmd::BPF_MAP_LOOKUP_ELEM => "bpf(BPF_MAP_LOOKUP_ELEM)",
        bpf_cmd::BPF_MAP_LOOKUP_BATCH => "bpf(BPF_MAP_LOOKUP_BATCH)",
        bpf_cmd::BPF_MAP_GET_NEXT_KEY => "bpf(BPF_MAP_GET_NEXT_KEY)",
        bpf_cmd::BPF_MAP_CREATE => "bpf(BPF_MAP_CREATE)",
        bpf_cmd::BPF_BTF_LOAD => "bpf(BPF_BTF_LOAD)",
        _ => "bpf",
    }
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> Result<i64, SysError> {
    #[cfg(test)]
    if let Some(result) = super::fake::bpf(cmd, attr) {
        return result.map_err(|e| SysError::new(name(cmd), e));
    }
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
        Err(SysError::last(name(cmd)))
    } else {
        Ok(ret)
    }
}

/// `BPF_LINK_CREATE` of an `iter/cgroup` program for one cgroup.
pub fn cgroup_iter_link(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    order: CgroupIterOrder,
) -> Result<OwnedFd, SysError> {
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

/// `BPF_BTF_LOAD` of a BTF blob.
pub fn btf_load(btf: &[u8]) -> Result<OwnedFd, SysError> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_7.btf = btf.as_ptr() as u64;
    attr.__bindgen_anon_7.btf_size = btf.len() as u32;
    let fd = bpf(bpf_cmd::BPF_BTF_LOAD, &mut attr)?;
    Ok(owned(fd))
}

/// Sizes, and the BTF types of key and value, of a map to create.
pub struct MapSpec<'a> {
    pub name: &'a str,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// A loaded BTF object with the key's and the value's type ids.
    pub btf: Option<(BorrowedFd<'a>, u32, u32)>,
}

/// `BPF_MAP_CREATE` of a plain hash map (`BPF_MAP_TYPE_HASH`) whose
/// entries are allocated on demand (`BPF_F_NO_PREALLOC`), named `name`
/// (cut to the kernel's 15 bytes). For a map whose type the object's own
/// definition does not give (see `apply::load`).
pub fn hash_map_create(spec: &MapSpec<'_>) -> Result<OwnedFd, SysError> {
    let MapSpec {
        name,
        key_size,
        value_size,
        max_entries,
        btf,
    } = *spec;
    let mut attr = zeroed_attr();
    // SAFETY: writing the map-create member of the zeroed union.
    unsafe {
        let m = &mut attr.__bindgen_anon_1;
        m.map_type = aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_HASH as u32;
        m.key_size = key_size;
        m.value_size = value_size;
        m.max_entries = max_entries;
        m.map_flags = aya_obj::generated::BPF_F_NO_PREALLOC;
        for (dst, src) in m.map_name.iter_mut().zip(name.bytes().take(15)) {
            *dst = src as _;
        }
        if let Some((fd, key, value)) = btf {
            m.btf_fd = fd.as_raw_fd() as u32;
            m.btf_key_type_id = key;
            m.btf_value_type_id = value;
        }
    }
    let fd = bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr)?;
    Ok(owned(fd))
}

/// `BPF_OBJ_PIN` of any bpf object fd at `path` (on bpffs).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &CStr) -> Result<(), SysError> {
    // SAFETY: a C union of integers: all-zero is valid.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = fd.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(|_| ())
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: a C union of integers: all-zero is valid.
    unsafe { mem::zeroed() }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel returned a new fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// What a link is attached to, from `bpf_link_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkTarget {
    /// A TCX link; `ifindex` 0 once its interface is gone (defunct).
    Tcx {
        ifindex: u32,
        attach_type: u32,
    },
    /// A cgroup link; `cgroup_id` 0 once its cgroup is gone (defunct).
    Cgroup {
        cgroup_id: u64,
        attach_type: u32,
    },
    /// A cgroup iterator link.
    CgroupIter {
        cgroup_id: u64,
        order: u32,
    },
    /// Not a link: a pinned tc program standing for a clsact filter on a
    /// kernel without TCX (see `tc_attach`); `attached` while the filter is
    /// on its interface.
    Clsact {
        attached: bool,
    },
    Other {
        link_type: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub id: u32,
    pub prog_id: u32,
    pub target: LinkTarget,
}

pub const TCX_INGRESS: u32 = bpf_attach_type::BPF_TCX_INGRESS as u32;
pub const TCX_EGRESS: u32 = bpf_attach_type::BPF_TCX_EGRESS as u32;
pub const CGROUP_INGRESS: u32 = bpf_attach_type::BPF_CGROUP_INET_INGRESS as u32;
pub const CGROUP_EGRESS: u32 = bpf_attach_type::BPF_CGROUP_INET_EGRESS as u32;

/// `BPF_OBJ_GET_INFO_BY_FD` into `info` (the kernel's info struct for
/// the kind of object `fd` is).
fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> Result<(), SysError> {
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = mem::size_of::<T>() as u32;
    attr.info.info = std::ptr::from_mut(info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
}

/// `BPF_OBJ_GET_INFO_BY_FD` of a link.
pub fn link_state(link: BorrowedFd<'_>) -> Result<LinkState, SysError> {
    // SAFETY: a C struct of integers and unions of integers: all-zero is valid.
    let mut info: bpf_link_info = unsafe { mem::zeroed() };
    obj_info(link, &mut info)?;
    // SAFETY: reading the union member that `type_` says the kernel filled.
    let target = unsafe {
        let u = &info.__bindgen_anon_1;
        match info.type_ {
            t if t == BPF_LINK_TYPE_TCX as u32 => LinkTarget::Tcx {
                ifindex: u.tcx.ifindex,
                attach_type: u.tcx.attach_type,
            },
            t if t == BPF_LINK_TYPE_CGROUP as u32 => LinkTarget::Cgroup {
                cgroup_id: u.cgroup.cgroup_id,
                attach_type: u.cgroup.attach_type,
            },
            t if t == BPF_LINK_TYPE_ITER as u32 => LinkTarget::CgroupIter {
                cgroup_id: u.iter.__bindgen_anon_2.cgroup.cgroup_id,
                order: u.iter.__bindgen_anon_2.cgroup.order,
            },
            t => LinkTarget::Other { link_type: t },
        }
    };
    Ok(LinkState {
        id: info.id,
        prog_id: info.prog_id,
        target,
    })
}

/// The id of program `prog` (`BPF_OBJ_GET_INFO_BY_FD`).
pub fn prog_id(prog: BorrowedFd<'_>) -> Result<u32, SysError> {
    // SAFETY: a C struct of integers: all-zero is valid.
    let mut info: bpf_prog_info = unsafe { mem::zeroed() };
    obj_info(prog, &mut info)?;
    Ok(info.id)
}

/// `BPF_OBJ_GET`: opens a pinned object (read-only use; changes nothing).
pub fn obj_get(path: &std::path::Path) -> Result<OwnedFd, SysError> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| SysError::new("bpf(BPF_OBJ_GET)", io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    bpf(bpf_cmd::BPF_OBJ_GET, &mut attr).map(owned)
}

/// A directory on bpffs (a root) whose pins are opened from inside it:
/// `BPF_OBJ_GET` relative to its fd (`BPF_F_PATH_FD`, Linux >= 6.5). An
/// absolute lookup below `/sys/fs/bpf` passes through sysfs, whose
/// dentries are checked again at every lookup; from the root's fd only the
/// names below it are looked up. Kernels without the flag, or a root that
/// cannot be opened, get the absolute lookup.
pub struct PinRoot {
    path: std::path::PathBuf,
    fd: Option<OwnedFd>,
}

/// Set once a kernel refused `BPF_F_PATH_FD`: absolute lookups from then on.
static PATH_FD_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl PinRoot {
    pub fn open(path: &std::path::Path) -> PinRoot {
        let fd = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .ok()
            .and_then(|c| {
                // SAFETY: a valid C string; the fd returned is ours alone.
                let fd =
                    unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
                // SAFETY: a new fd that nothing else owns.
                (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
            });
        PinRoot {
            path: path.to_path_buf(),
            fd,
        }
    }

    /// [`obj_get`] of `pin`, a path below the root.
    pub fn obj_get(&self, pin: &std::path::Path) -> Result<OwnedFd, SysError> {
        let relative = pin
            .strip_prefix(&self.path)
            .ok()
            .filter(|r| !r.as_os_str().is_empty());
        let (Some(dir), Some(rel)) = (&self.fd, relative) else {
            return obj_get(pin);
        };
        if PATH_FD_REFUSED.load(std::sync::atomic::Ordering::Relaxed) {
            return obj_get(pin);
        }
        let c = std::ffi::CString::new(rel.as_os_str().as_encoded_bytes())
            .map_err(|e| SysError::new("bpf(BPF_OBJ_GET)", io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_4.pathname = c.as_ptr() as u64;
        attr.__bindgen_anon_4.file_flags = aya_obj::generated::BPF_F_PATH_FD;
        attr.__bindgen_anon_4.path_fd = dir.as_raw_fd();
        match bpf(bpf_cmd::BPF_OBJ_GET, &mut attr) {
            Ok(fd) => Ok(owned(fd)),
            // Before 6.5 an unknown flag is EINVAL: the same lookup from
            // `/` tells that apart from a pin that is not a bpf object.
            Err(e) if e.errno() == Some(libc::EINVAL) => {
                let absolute = obj_get(pin)?;
                PATH_FD_REFUSED.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(absolute)
            }
            Err(e) => Err(e),
        }
    }
}

/// `BPF_LINK_UPDATE`: moves a link to another program in place; the hook
/// never runs without a program.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> Result<(), SysError> {
    let mut attr = zeroed_attr();
    attr.link_update.link_fd = link.as_raw_fd() as u32;
    attr.link_update.__bindgen_anon_1.new_prog_fd = prog.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(drop)
}

fn link_fd_by_id(id: u32) -> Result<OwnedFd, SysError> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_6.__bindgen_anon_1.link_id = id;
    bpf(bpf_cmd::BPF_LINK_GET_FD_BY_ID, &mut attr).map(owned)
}

/// Ids of every link in the kernel (`BPF_LINK_GET_NEXT_ID`).
pub fn link_ids() -> Vec<u32> {
    let mut out = Vec::new();
    let mut id = 0;
    loop {
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_6.__bindgen_anon_1.start_id = id;
        if bpf(bpf_cmd::BPF_LINK_GET_NEXT_ID, &mut attr).is_err() {
            return out;
        }
        // SAFETY: the kernel wrote next_id.
        id = unsafe { attr.__bindgen_anon_6.next_id };
        out.push(id);
    }
}

/// What the link with this id is attached to.
pub fn link_state_by_id(id: u32) -> Result<LinkState, SysError> {
    link_state(link_fd_by_id(id)?.as_fd())
}

/// `BPF_LINK_DETACH` of a link that someone else holds (the link object
/// lives on, attached to nothing, until its last holder lets go).
pub fn link_detach_by_id(id: u32) -> Result<(), SysError> {
    let fd = link_fd_by_id(id)?;
    let mut attr = zeroed_attr();
    attr.link_detach.link_fd = fd.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr).map(drop)
}

/// The target of a hook query: a cgroup directory fd or an interface index.
#[derive(Clone, Copy)]
pub enum Hook<'a> {
    Cgroup(BorrowedFd<'a>),
    Interface(u32),
}

impl Hook<'_> {
    fn raw(self) -> u32 {
        match self {
            Hook::Cgroup(fd) => fd.as_raw_fd() as u32,
            Hook::Interface(ifindex) => ifindex,
        }
    }
}

/// One program attached directly at a hook; `link_id` is 0 for a plain
/// attachment, or when the kernel does not report links for this hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    pub prog_id: u32,
    pub link_id: u32,
}

/// `BPF_PROG_QUERY`: the programs attached at one hook (not inherited ones).
pub fn prog_query(hook: Hook<'_>, attach_type: u32) -> Result<Vec<Attached>, SysError> {
    let mut cap = 8usize;
    loop {
        let mut progs = vec![0u32; cap];
        let mut links = vec![0u32; cap];
        let mut attr = zeroed_attr();
        attr.query.__bindgen_anon_1.target_fd = hook.raw();
        attr.query.attach_type = attach_type;
        attr.query.prog_ids = progs.as_mut_ptr() as u64;
        attr.query.__bindgen_anon_2.prog_cnt = cap as u32;
        if matches!(hook, Hook::Interface(_)) {
            attr.query.link_ids = links.as_mut_ptr() as u64;
        }
        let res = bpf(bpf_cmd::BPF_PROG_QUERY, &mut attr);
        // SAFETY: reading back the count the kernel wrote.
        let count = unsafe { attr.query.__bindgen_anon_2.prog_cnt } as usize;
        match res {
            Ok(_) => {
                return Ok(progs
                    .iter()
                    .zip(&links)
                    .take(count.min(cap))
                    .map(|(&prog_id, &link_id)| Attached { prog_id, link_id })
                    .collect())
            }
            Err(e) if e.errno() == Some(libc::ENOSPC) && count > cap => cap = count,
            Err(e) => return Err(e),
        }
    }
}

/// `BPF_PROG_DETACH` of one plainly attached program from a hook.
pub fn prog_detach(hook: Hook<'_>, prog: BorrowedFd<'_>, attach_type: u32) -> Result<(), SysError> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_5.__bindgen_anon_1.target_fd = hook.raw();
    attr.__bindgen_anon_5.attach_bpf_fd = prog.as_raw_fd() as u32;
    attr.__bindgen_anon_5.attach_type = attach_type;
    bpf(bpf_cmd::BPF_PROG_DETACH, &mut attr).map(drop)
}

/// `BPF_MAP_LOOKUP_ELEM` of key 0 in an array map whose value size is
/// known only at run time (a program's read-only data).
pub fn array_value(map: BorrowedFd<'_>, value_size: usize) -> Result<Vec<u8>, SysError> {
    let key = 0u32;
    let mut value = vec![0u8; value_size];
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_2.map_fd = map.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = std::ptr::from_ref(&key) as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = value.as_mut_ptr() as u64;
    bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr)?;
    Ok(value)
}

/// How many keys of `key_size` bytes a hash map holds, walked with
/// `BPF_MAP_GET_NEXT_KEY`, at most `limit` (a walk that meets a deleted key
/// starts over, so a map that changes meanwhile can count some twice).
pub fn map_key_count(map: BorrowedFd<'_>, key_size: usize, limit: u32) -> Result<u32, SysError> {
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut n = 0;
    while n < limit {
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_2.map_fd = map.as_raw_fd() as u32;
        // NULL key: the first one.
        if n > 0 {
            attr.__bindgen_anon_2.key = key.as_ptr() as u64;
        }
        attr.__bindgen_anon_2.__bindgen_anon_1.next_key = next.as_mut_ptr() as u64;
        match bpf(bpf_cmd::BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(e) if e.errno() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        std::mem::swap(&mut key, &mut next);
        n += 1;
    }
    Ok(n)
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
) -> Result<(u32, bool), SysError> {
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
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok((copied, false)),
        Err(e) => Err(e),
    }
}

/// Whether the kernel has TCX (tc programs attached as bpf links through
/// bpf_mprog, Linux >= 6.6 with CONFIG_NET_XGRESS), asked of the kernel
/// itself rather than read from its version: a trivial tc program (`return
/// TC_ACT_UNSPEC`) is loaded and a TCX ingress link is requested for
/// ifindex 0, which names no device. A kernel with TCX looks the device up
/// and answers ENODEV; one without has no link type for tc programs and
/// answers EINVAL. Nothing is ever attached.
pub fn probe_tcx() -> Result<bool, SysError> {
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
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(true),
        Err(e) if e.errno() == Some(libc::EINVAL) => Ok(false),
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

/// What kind of bpf object `fd` is, from its anon inode name.
pub fn fd_kind(fd: BorrowedFd<'_>) -> Result<ObjectKind, SysError> {
    let target = fd_target(fd)?;
    Ok(match target.as_slice() {
        b"anon_inode:bpf-prog" => ObjectKind::Program,
        b"anon_inode:bpf_link" | b"anon_inode:bpf-link" => ObjectKind::Link,
        b"anon_inode:bpf-map" => ObjectKind::Map,
        _ => ObjectKind::Other,
    })
}

/// What `/proc/self/fd/<fd>` points to: `readlinkat` on `/proc/self/fd`,
/// opened once (a read of thousands of pins would otherwise walk the whole
/// path for each).
fn fd_target(fd: BorrowedFd<'_>) -> Result<Vec<u8>, SysError> {
    static DIR: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        // SAFETY: a constant C string; the fd returned is ours alone.
        let fd = unsafe {
            libc::open(
                c"/proc/self/fd".as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        // SAFETY: a new fd that nothing else owns.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    });
    let Some(dir) = dir else {
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| SysError::new("readlink(/proc/self/fd)", e))?;
        return Ok(target.into_os_string().into_encoded_bytes());
    };
    let name = std::ffi::CString::new(fd.as_raw_fd().to_string())
        .map_err(|e| SysError::new("readlinkat", io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let mut buf = [0u8; 64];
    // SAFETY: a valid directory fd, a C string and a buffer of the length given.
    let n = unsafe { libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(SysError::last("readlinkat(/proc/self/fd)"));
    }
    Ok(buf[..n as usize].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake;

    #[test]
    fn tcx_is_probed_from_the_kernels_answer() {
        for (answer, has_tcx) in [(libc::ENODEV, true), (libc::EINVAL, false)] {
            let _fake = fake::install(move |cmd, _| match cmd {
                bpf_cmd::BPF_PROG_LOAD => fake::fd(),
                bpf_cmd::BPF_LINK_CREATE => fake::errno(answer),
                _ => fake::errno(libc::ENOSYS),
            });
            assert_eq!(probe_tcx().ok(), Some(has_tcx), "errno {answer}");
        }
        // Any other answer is an error that names the call.
        let _fake = fake::install(|cmd, _| match cmd {
            bpf_cmd::BPF_PROG_LOAD => fake::fd(),
            _ => fake::errno(libc::EPERM),
        });
        let e = probe_tcx().expect_err("EPERM is no answer");
        assert_eq!((e.call, e.errno()), ("bpf(BPF_LINK_CREATE)", Some(libc::EPERM)));
        assert_eq!(e.to_string(), "`bpf(BPF_LINK_CREATE)` failed");
    }

    #[test]
    fn link_targets_are_read_from_link_info() {
        let _fake = fake::install(|cmd, attr| {
            assert_eq!(cmd, bpf_cmd::BPF_OBJ_GET_INFO_BY_FD);
            // SAFETY: the caller passed a bpf_link_info of info_len bytes.
            unsafe {
                assert_eq!(attr.info.info_len as usize, mem::size_of::<bpf_link_info>());
                let info = &mut *(attr.info.info as *mut bpf_link_info);
                info.type_ = BPF_LINK_TYPE_TCX as u32;
                info.id = 7;
                info.prog_id = 9;
                info.__bindgen_anon_1.tcx.ifindex = 3;
                info.__bindgen_anon_1.tcx.attach_type = TCX_EGRESS;
            }
            Ok(0)
        });
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        let state = link_state(null.as_fd()).expect("fake info");
        assert_eq!(
            state,
            LinkState {
                id: 7,
                prog_id: 9,
                target: LinkTarget::Tcx {
                    ifindex: 3,
                    attach_type: TCX_EGRESS
                }
            }
        );
    }

    #[test]
    fn a_query_grows_its_buffer_when_the_kernel_has_more() {
        let calls = std::rc::Rc::new(std::cell::Cell::new(0));
        let seen = calls.clone();
        let _fake = fake::install(move |cmd, attr| {
            assert_eq!(cmd, bpf_cmd::BPF_PROG_QUERY);
            seen.set(seen.get() + 1);
            // SAFETY: the query member, with prog_cnt slots at prog_ids.
            unsafe {
                let cap = attr.query.__bindgen_anon_2.prog_cnt as usize;
                attr.query.__bindgen_anon_2.prog_cnt = 12;
                if cap < 12 {
                    return fake::errno(libc::ENOSPC);
                }
                let ids = std::slice::from_raw_parts_mut(attr.query.prog_ids as *mut u32, cap);
                for (i, id) in ids.iter_mut().take(12).enumerate() {
                    *id = 100 + i as u32;
                }
            }
            Ok(0)
        });
        let list = prog_query(Hook::Interface(5), TCX_INGRESS).expect("fake query");
        assert_eq!(list.len(), 12);
        assert_eq!(list[11].prog_id, 111);
        assert_eq!(calls.get(), 2);
    }
}
