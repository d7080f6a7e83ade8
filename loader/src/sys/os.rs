//! The libc calls cgacct makes, each behind a safe function whose error
//! names the call.
use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd, FromRawFd as _},
        unix::net::UnixStream,
    },
    path::Path,
    time::Duration,
};

use super::SysError;

/// `flock(LOCK_EX | LOCK_NB)`: Ok(true) when taken, Ok(false) when another
/// holder has it.
pub fn try_lock_exclusive(file: &impl AsRawFd) -> Result<bool, SysError> {
    // SAFETY: flock on an fd the caller owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = SysError::last("flock");
    if e.errno() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// `flock(LOCK_EX)`, waiting for other holders.
pub fn lock_exclusive(file: &impl AsRawFd) -> Result<(), SysError> {
    loop {
        // SAFETY: flock on an fd the caller owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = SysError::last("flock");
        if e.errno() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// `statfs(path).f_type`: the magic number of the filesystem holding `path`.
pub fn fs_type(path: &Path) -> Result<i64, SysError> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| SysError::new("statfs", std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: a C struct of integers: all-zero is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and an out-parameter of the right type.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(SysError::last("statfs"));
    }
    Ok(st.f_type as i64)
}

/// `poll` for input on any of `fds` (negative ones are ignored), up to
/// `timeout`. Ok(false) on timeout or EINTR.
pub fn poll_readable(fds: &[i32], timeout: Duration) -> Result<bool, SysError> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Round up: a wait of 0.4 ms must not become a busy loop of 0 ms polls.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: a valid array of pollfd of the length given.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = SysError::last("poll");
        return if e.errno() == Some(libc::EINTR) {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(n > 0)
}

/// Nanoseconds of `clock` (CLOCK_BOOTTIME, CLOCK_REALTIME, ...).
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-parameter; these clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The uid of user `name` (`getpwnam`); None when there is no such user.
pub fn user_id(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: getpwnam returns NULL or a pointer to static storage, read at once.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    // SAFETY: non-NULL result of getpwnam.
    (!pw.is_null()).then(|| unsafe { (*pw).pw_uid })
}

/// The gid of group `name` (`getgrnam`); None when there is no such group.
pub fn group_id(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: getgrnam returns NULL or a pointer to static storage, read at once.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    // SAFETY: non-NULL result of getgrnam.
    (!gr.is_null()).then(|| unsafe { (*gr).gr_gid })
}

/// Connects a stream socket to the unix socket at `path` without waiting:
/// a server whose listen queue is full answers EAGAIN at once instead of
/// blocking the caller. The stream returned blocks (set timeouts on it).
pub fn connect_unix(path: &Path) -> Result<UnixStream, SysError> {
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: a C struct of integers and a byte array: all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(SysError::new(
            "connect",
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "socket path too long or not a path",
            ),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(SysError::last("socket"));
    }
    // SAFETY: fd is a new socket that nothing else owns; the stream closes it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: a valid socket and an address of the length given.
    let r = unsafe { libc::connect(fd, std::ptr::from_ref(&addr).cast(), len) };
    if r != 0 {
        return Err(SysError::last("connect"));
    }
    stream
        .set_nonblocking(false)
        .map_err(|e| SysError::new("fcntl", e))?;
    Ok(stream)
}

/// The kernel's switch that makes every RCU grace period expedited
/// (Documentation/RCU: `rcupdate.rcu_expedited`).
pub const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";

/// A sysfs switch (a file holding 0 or 1): true when it holds non-zero.
pub fn read_switch(path: &Path) -> Result<bool, SysError> {
    let text = std::fs::read_to_string(path).map_err(|e| SysError::new("read", e))?;
    text.trim()
        .parse::<i64>()
        .map(|v| v != 0)
        .map_err(|e| SysError::new("read", std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// Writes 1 or 0 to a sysfs switch.
pub fn write_switch(path: &Path, on: bool) -> Result<(), SysError> {
    std::fs::write(path, if on { "1" } else { "0" }).map_err(|e| SysError::new("write", e))
}

/// SIGKILL to this process (the test kill points).
pub fn kill_self() {
    // SAFETY: raising a signal at ourselves.
    unsafe {
        libc::raise(libc::SIGKILL);
    }
}

/// Raises `sig` at this process.
pub fn raise(sig: libc::c_int) {
    // SAFETY: raising a signal at ourselves.
    unsafe {
        libc::raise(sig);
    }
}

/// Restores SIGPIPE's default action, so that a command whose output is
/// closed (`cgacct-pin status | head -1`) ends quietly, as Unix tools do,
/// instead of failing on the write.
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to its default.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: plain getter.
    unsafe { libc::geteuid() }
}

/// Raises `RLIMIT_MEMLOCK` as far as allowed: to unlimited, else the soft
/// limit to the hard one. Kernels before 5.11 charge BPF maps and programs
/// to it (later ones to the memory cgroup, where this changes nothing).
/// Best effort: without CAP_SYS_RESOURCE only the soft limit can rise.
pub fn raise_memlock() {
    let inf = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &inf) } == 0 {
        return;
    }
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid out-parameter.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) } == 0 && cur.rlim_cur < cur.rlim_max {
        cur.rlim_cur = cur.rlim_max;
        // SAFETY: setrlimit with a valid struct.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &cur) };
    }
}
