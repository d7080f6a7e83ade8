//! Every raw call cgacct makes, and nothing above it makes one: the bpf(2)
//! commands aya 0.14 lacks ([`bpf`]), the libc calls ([`os`]: flock, statfs,
//! poll, clocks, user and group look-ups, sysfs switches), stop signals held
//! off ([`signals`]), the mount table ([`mounts`]) and the test kill points
//! ([`fault`]). Errors name the call
//! that failed ([`SysError`]), so callers match on errno without
//! downcasting. Unit tests replace bpf(2) with a fake (`fake`), as aya's own
//! tests do, and need no kernel.
pub mod bpf;
mod error;
#[cfg(test)]
pub mod fake;
pub mod fault;
pub mod mounts;
pub mod os;
pub mod signals;

pub use error::SysError;
