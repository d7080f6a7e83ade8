//! Every raw call cgacct makes, and nothing above it makes one: the bpf(2)
//! commands aya 0.14 lacks ([`bpf`]), the libc calls ([`os`]: flock, statfs,
//! poll, clocks, user and group look-ups, signals), the mount table
//! ([`mounts`]) and the test kill points ([`fault`]). Errors name the call
//! that failed ([`SysError`]), so callers match on errno without
//! downcasting. Unit tests replace bpf(2) with a fake (`fake`), as aya's own
//! tests do, and need no kernel.
use std::io;

pub mod bpf;
#[cfg(test)]
pub mod fake;
pub mod fault;
pub mod mounts;
pub mod os;

/// A raw call that failed: which one, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("`{call}` failed")]
pub struct SysError {
    pub call: &'static str,
    #[source]
    pub io_error: io::Error,
}

impl SysError {
    pub fn new(call: &'static str, io_error: io::Error) -> SysError {
        SysError { call, io_error }
    }

    /// The error of the call that just failed (errno).
    pub fn last(call: &'static str) -> SysError {
        SysError::new(call, io::Error::last_os_error())
    }

    pub fn errno(&self) -> Option<i32> {
        self.io_error.raw_os_error()
    }
}
