//! The root on bpffs: where each pin lives and how names bpffs refuses are
//! still made ([`names`]), what is under the root ([`walk`]), owners and
//! modes ([`access`]), and the root itself: on bpffs, created, locked
//! ([`root`]).
pub mod access;
pub mod names;
pub mod root;
pub mod walk;

pub use names::{Direction, Pins};
