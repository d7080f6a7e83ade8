//! Stop signals held off for a while: between [`catch_stop_signals`] and
//! [`restore`], SIGINT, SIGTERM and SIGHUP only record themselves
//! ([`caught`]), so that the caller can undo a host-wide change before the
//! process ends; [`restore`] puts the previous handlers back and, if one
//! came, raises it again with them.
use std::sync::atomic::{AtomicI32, Ordering};

use super::SysError;

const STOP: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

static CAUGHT: AtomicI32 = AtomicI32::new(0);

extern "C" fn record(sig: libc::c_int) {
    CAUGHT.store(sig, Ordering::SeqCst);
}

/// The handlers in place before [`catch_stop_signals`].
pub struct Saved([libc::sigaction; 3]);

/// Replaces the handlers of SIGINT, SIGTERM and SIGHUP by one that records
/// the signal (SA_RESTART: interrupted calls go on).
pub fn catch_stop_signals() -> Result<Saved, SysError> {
    CAUGHT.store(0, Ordering::SeqCst);
    // SAFETY: a C struct of integers, pointers and a signal set: all-zero is valid.
    let mut saved: [libc::sigaction; 3] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = record as extern "C" fn(libc::c_int) as usize;
    act.sa_flags = libc::SA_RESTART;
    for (i, sig) in STOP.iter().enumerate() {
        // SAFETY: valid sigaction structs; the handler only stores to an atomic.
        if unsafe { libc::sigaction(*sig, &act, &mut saved[i]) } != 0 {
            let e = SysError::last("sigaction");
            restore_handlers(&saved[..i]);
            return Err(e);
        }
    }
    Ok(Saved(saved))
}

/// The stop signal that came since [`catch_stop_signals`], if one did.
pub fn caught() -> Option<i32> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

fn restore_handlers(saved: &[libc::sigaction]) {
    for (sig, old) in STOP.iter().zip(saved) {
        // SAFETY: putting back a handler sigaction returned.
        unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
    }
}

/// Puts the previous handlers back; a stop signal that came meanwhile is
/// raised again, now with them (by default it ends the process).
pub fn restore(saved: Saved) {
    restore_handlers(&saved.0);
    if let Some(sig) = caught() {
        CAUGHT.store(0, Ordering::SeqCst);
        // SAFETY: raising a signal at ourselves.
        unsafe { libc::raise(sig) };
    }
}
