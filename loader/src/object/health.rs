//! The TCP health and drop programs and maps this build carries: each
//! program with the kernel hook it attaches to and the `net.stat` key it
//! feeds. They load and attach where the running kernel has their hook
//! (see `observe::health`); a key whose programs cannot run is absent.
use aya::maps::MapType;
use cgacct_common::{
    health::{self, maps, programs as prog},
    Health, HealthAcc,
};

use super::MapShape;
use crate::spec::layout::MapSizes;

/// Where a health program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    FEntry(&'static str),
    /// A BTF tracepoint.
    Tracepoint(&'static str),
}

impl Hook {
    /// The kernel function or tracepoint.
    pub fn target(self) -> &'static str {
        match self {
            Hook::FEntry(f) | Hook::Tracepoint(f) => f,
        }
    }
}

/// A health program: its name, hook, and the (main) key it feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    pub name: &'static str,
    pub hook: Hook,
    pub key: u32,
}

const fn p(name: &'static str, hook: Hook, key: u32) -> Program {
    Program { name, hook, key }
}

pub const PROGRAMS: [Program; 7] = [
    p(
        prog::SOCK_STATE,
        Hook::Tracepoint("inet_sock_set_state"),
        health::ACTIVE_OPENS,
    ),
    p(
        prog::RETRANSMIT,
        Hook::Tracepoint("tcp_retransmit_skb"),
        health::RETRANS_SEGS,
    ),
    p(
        prog::RETRANSMIT_SYNACK,
        Hook::Tracepoint("tcp_retransmit_synack"),
        health::RETRANS_SEGS,
    ),
    p(prog::RTO, Hook::FEntry("tcp_retransmit_timer"), health::TIMEOUTS),
    p(
        prog::SYNACK_TIMEOUT,
        Hook::FEntry("tcp_syn_ack_timeout"),
        health::TIMEOUTS,
    ),
    p(
        prog::SEND_RESET,
        Hook::Tracepoint("tcp_send_reset"),
        health::OUT_RSTS,
    ),
    p(
        prog::KFREE_SKB,
        Hook::Tracepoint("kfree_skb"),
        health::DROP_PACKETS,
    ),
];

/// The keys each program feeds (the state program feeds two).
pub fn keys_of(p: &Program) -> &'static [u32] {
    match p.name {
        prog::SOCK_STATE => &[health::ACTIVE_OPENS, health::PASSIVE_OPENS, health::RETRANS_SEGS],
        _ => match p.key {
            health::RETRANS_SEGS => &[health::RETRANS_SEGS],
            health::TIMEOUTS => &[health::TIMEOUTS],
            health::OUT_RSTS => &[health::OUT_RSTS],
            _ => &[health::DROP_PACKETS],
        },
    }
}

/// The program named `name`, if it is a health program.
pub fn program(name: &str) -> Option<Program> {
    PROGRAMS.into_iter().find(|p| p.name == name)
}

/// The health maps this build and layout need on kernel `k`.
pub fn wanted_maps(sizes: &MapSizes, k: super::Kernel) -> [(&'static str, MapShape); 7] {
    let shape = |kind, key_size, value_size: usize, max_entries| MapShape {
        kind,
        key_size,
        value_size: value_size as u32,
        max_entries,
    };
    let h = size_of::<Health>();
    [
        (
            maps::HEALTH_STATS,
            shape(super::counter_kind(k), 8, h, sizes.cgroups),
        ),
        (maps::HEALTH_DEPARTED, shape(MapType::Hash, 8, h, sizes.cgroups)),
        (maps::HEALTH_OVERFLOW, shape(MapType::PerCpuArray, 4, h, 1)),
        (
            maps::HEALTH_REMOVED,
            shape(MapType::LruHash, 8, size_of::<HealthAcc>(), sizes.cgroups),
        ),
        (maps::RETRANS_SEEN, shape(MapType::SkStorage, 4, 8, 0)),
        (maps::HEALTH_STATE, shape(MapType::Array, 4, 4, 2)),
        (
            maps::DROP_REASONS,
            shape(MapType::PerCpuArray, 4, 8, health::DROP_REASON_SLOTS),
        ),
    ]
}
