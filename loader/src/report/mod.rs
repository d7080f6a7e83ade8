//! Reading counters back and showing them: the pinned maps and `net.stat`
//! text ([`read`]), how full the maps are and what overflowed
//! ([`capacity`]), `status` ([`status`]), live rates ([`top`]), Prometheus
//! text ([`metrics`]), the final totals of removed cgroups
//! ([`removed`]) and `net.stat`'s sums computed from the maps
//! ([`subtree`], for kernels without cgroup iterators).
pub mod capacity;
pub mod health;
pub mod metrics;
pub mod read;
pub mod removed;
pub mod status;
pub mod subtree;
pub mod top;
