//! A fake bpf(2) for unit tests: a test installs a handler for its thread,
//! every [`super::bpf`] call of that thread goes to it, and tests of the
//! code above the raw calls need no kernel.
use std::{cell::RefCell, io, os::fd::IntoRawFd as _};

use aya_obj::generated::{bpf_attr, bpf_cmd};

type Handler = Box<dyn FnMut(bpf_cmd, &mut bpf_attr) -> io::Result<i64>>;

thread_local! {
    static HANDLER: RefCell<Option<Handler>> = const { RefCell::new(None) };
}

/// Sends this thread's bpf(2) calls to `handler` until the guard drops.
pub fn install(handler: impl FnMut(bpf_cmd, &mut bpf_attr) -> io::Result<i64> + 'static) -> Guard {
    HANDLER.with(|h| *h.borrow_mut() = Some(Box::new(handler)));
    Guard
}

/// Removes the handler when dropped.
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        HANDLER.with(|h| *h.borrow_mut() = None);
    }
}

/// The fake's answer, or None when no handler is installed.
pub(super) fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> Option<io::Result<i64>> {
    HANDLER.with(|h| h.borrow_mut().as_mut().map(|f| f(cmd, attr)))
}

/// A real file descriptor (of /dev/null) for a fake to return where the
/// kernel returns a new fd: the caller owns and closes it.
pub fn fd() -> io::Result<i64> {
    Ok(i64::from(std::fs::File::open("/dev/null")?.into_raw_fd()))
}

/// An error as the kernel returns it.
pub fn errno(e: i32) -> io::Result<i64> {
    Err(io::Error::from_raw_os_error(e))
}
