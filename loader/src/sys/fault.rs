//! Fault injection for the crash-convergence selftests: with
//! `CGACCT_PIN_KILL_AT=N` in the environment, the N-th step that changes
//! kernel or bpffs state is preceded by SIGKILL of this process, so a test
//! can stop `apply` at every point and check that the next `apply`
//! converges. Without the variable, a step costs one relaxed load. With
//! `CGACCT_PIN_FAIL_TC_AT=N`, the N-th TC attachment fails with an error
//! instead ([`fail_tc`]): the tests of apply's error path.
use std::sync::{
    atomic::{AtomicU64, Ordering},
    OnceLock,
};

static STEP: AtomicU64 = AtomicU64::new(0);

fn kill_at() -> Option<u64> {
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    *AT.get_or_init(|| std::env::var("CGACCT_PIN_KILL_AT").ok()?.parse().ok())
}

/// Marks a step that is about to change state.
pub fn step() {
    let Some(at) = kill_at() else { return };
    if STEP.fetch_add(1, Ordering::Relaxed) + 1 == at {
        super::os::kill_self();
    }
}

/// Marks a named point: `CGACCT_PIN_KILL_AT=<name>` sends SIGKILL to this
/// process there, `CGACCT_PIN_KILL_AT=<name>:TERM` SIGTERM.
pub fn point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let Some(at) = AT.get_or_init(|| std::env::var("CGACCT_PIN_KILL_AT").ok()) else {
        return;
    };
    match at.strip_prefix(name) {
        Some("") => super::os::kill_self(),
        Some(":TERM") => super::os::raise(libc::SIGTERM),
        _ => {}
    }
}

/// Fails the N-th call when `CGACCT_PIN_FAIL_TC_AT=N` is set.
pub fn fail_tc() -> Result<(), super::SysError> {
    static FAIL_AT: OnceLock<Option<u64>> = OnceLock::new();
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let at = *FAIL_AT.get_or_init(|| std::env::var("CGACCT_PIN_FAIL_TC_AT").ok()?.parse().ok());
    let Some(at) = at else { return Ok(()) };
    if CALLS.fetch_add(1, Ordering::Relaxed) + 1 == at {
        return Err(super::SysError::new(
            "CGACCT_PIN_FAIL_TC_AT",
            std::io::Error::other("failed on purpose (CGACCT_PIN_FAIL_TC_AT)"),
        ));
    }
    Ok(())
}
