//! Reading counters back and showing them: the pinned maps and `net.stat`
//! text ([`read`]), how full the maps are and what overflowed
//! ([`capacity`]), `status` ([`status`]), live rates ([`top`]), Prometheus
//! text ([`metrics`]) and the final totals of removed cgroups
//! ([`removed`]).
pub mod capacity;
pub mod health;
pub mod metrics;
pub mod read;
pub mod removed;
pub mod status;
pub mod top;
