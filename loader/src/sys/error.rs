//! [`SysError`]: which raw call failed, and the kernel's answer.
use std::io;

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
