//! TC: how the programs attach on this kernel ([`mode`]), attaching and
//! releasing ([`attach`]), and what is attached ([`filters`]).
//!
//! - **TCX** (Linux >= 6.6 with CONFIG_NET_XGRESS): each attachment is a
//!   bpf link, pinned at `links/tc/<ifname>/<direction>`. Removing the pin
//!   detaches it.
//! - **clsact** (kernels without TCX): a `clsact` qdisc is added to the
//!   interface (kept if present) and the program becomes a direct-action
//!   `bpf` filter on its ingress or egress hook. Such a filter is not a bpf
//!   link and cannot be pinned; it stays in the kernel after cgacct-pin
//!   exits because cgacct never detaches it on exit. What cgacct pins at
//!   `links/tc/<ifname>/<direction>` is then the attached program itself: a
//!   marker that `plan` checks against the interface's filters (a filter
//!   running that program id must be there, or the attachment is made
//!   again) and that `apply`/`destroy` remove together with the filter. The
//!   clsact qdisc is left in place when the filter goes: other tools may
//!   have filters on it. `tc filter show dev IF ingress` lists the filters;
//!   `bpftool link` does not.
//!
//! Counting is the same either way. The layout's `[tc] attach` chooses:
//! `auto` (the default) probes, `tcx` requires TCX links, `clsact` makes
//! clsact filters even where the kernel has TCX: to run next to tools that
//! order tc filters themselves, or to attach to thousands of interfaces
//! fast (each TCX link creation waits for an RCU grace period under the
//! RTNL lock, about 15 ms; a clsact filter costs well under 1 ms). The
//! environment variable `CGACCT_TC_ATTACH` (same values) overrides the
//! layout.
pub mod attach;
pub mod filters;
pub mod mode;

pub use filters::{attached_programs, bpf_filters, Attached, Filter};
pub use mode::{choose, Choice, Mode, Preference, ENV};
