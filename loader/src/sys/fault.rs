//! Fault injection for the crash-convergence selftests: with
//! `CGACCT_PIN_KILL_AT=N` in the environment, the N-th step that changes
//! kernel or bpffs state is preceded by SIGKILL of this process, so a test
//! can stop `apply` at every point and check that the next `apply`
//! converges. Without the variable, a step costs one relaxed load.
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
