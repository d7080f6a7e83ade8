//! What the running kernel offers the TCP health and drop programs: the
//! struct offsets they read (from its BTF: no CO-RE), which of their hooks
//! exist, hence which `net.stat` keys are counted, and the names of its
//! drop reasons.
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, Result};
use btf_rs::Type;
use cgacct_common::health::{self, globals as g, programs as prog};

use super::kernel::{kernel_btf, member_offset, KernelBtf};
use crate::object::health::{keys_of, Hook, PROGRAMS};

/// The health programs' view of this kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthKernel {
    /// Globals to set before load, by name.
    pub offsets: Vec<(&'static str, u32)>,
    /// The programs whose hook this kernel has (by its BTF).
    pub programs: BTreeSet<&'static str>,
    /// Why the others cannot run, by program.
    pub why: BTreeMap<&'static str, String>,
    /// Programs the last load tried and the kernel refused (from the pinned
    /// `HEALTH_STATE` map), with bit `i` for `PROGRAMS[i]`.
    pub failed: u32,
}

impl HealthKernel {
    /// Whether the program is to be loaded: its hook exists and the kernel
    /// did not refuse it last time.
    pub fn wanted(&self, name: &str) -> bool {
        let failed = PROGRAMS
            .iter()
            .position(|p| p.name == name)
            .is_some_and(|i| self.failed & (1 << i) != 0);
        self.programs.contains(name) && !failed
    }

    /// The keys counted when the programs for which `loaded` holds run:
    /// a key needs every program that feeds it.
    pub fn keys(&self, loaded: impl Fn(&str) -> bool) -> u32 {
        let mut keys = (1u32 << health::KEYS.len()) - 1;
        for p in PROGRAMS {
            if !loaded(p.name) {
                for k in keys_of(&p) {
                    keys &= !(1 << k);
                }
            }
        }
        keys
    }

    /// One line per absent key, naming the program it lacks and why.
    pub fn absent(&self, loaded: impl Fn(&str) -> bool) -> Vec<String> {
        let keys = self.keys(&loaded);
        let mut out = Vec::new();
        for (k, name) in health::KEYS.iter().enumerate() {
            if keys & (1 << k) != 0 {
                continue;
            }
            let lacking = PROGRAMS
                .iter()
                .find(|p| keys_of(p).contains(&(k as u32)) && !loaded(p.name));
            let why = match lacking {
                Some(p) => match self.why.get(p.name) {
                    Some(w) => format!("{} ({}): {w}", p.name, p.hook.target()),
                    None => format!("{} ({}) did not load on this kernel", p.name, p.hook.target()),
                },
                None => "not counted".to_string(),
            };
            out.push(format!("{name} and self_{name} are absent: {why}"));
        }
        out
    }
}

/// Offsets the health programs read: `(global, struct, member path)`.
const OFFSETS: [(&str, &str, &[&str]); 14] = [
    (g::SOCK_CGRP_DATA_OFFSET, "sock", &["sk_cgrp_data"]),
    (g::SOCK_CGROUP_DATA_CGROUP_OFFSET, "sock_cgroup_data", &["cgroup"]),
    (g::SOCK_STATE_OFFSET, "sock", &["__sk_common", "skc_state"]),
    (g::SOCK_FLAGS_OFFSET, "sock", &["__sk_common", "skc_flags"]),
    (g::SOCK_PROTOCOL_OFFSET, "sock", &["sk_protocol"]),
    (g::SOCK_RTX_QUEUE_OFFSET, "sock", &["tcp_rtx_queue"]),
    (g::TCP_TOTAL_RETRANS_OFFSET, "tcp_sock", &["total_retrans"]),
    (g::TCP_FASTOPEN_RSK_OFFSET, "tcp_sock", &["fastopen_rsk"]),
    (g::TCP_PACKETS_OUT_OFFSET, "tcp_sock", &["packets_out"]),
    (g::TCP_SND_WND_OFFSET, "tcp_sock", &["snd_wnd"]),
    (
        g::REQ_LISTENER_OFFSET,
        "request_sock",
        &["__req_common", "skc_listener"],
    ),
    (g::SKB_SK_OFFSET, "sk_buff", &["sk"]),
    (g::SKB_CB_OFFSET, "sk_buff", &["cb"]),
    (g::TCP_SKB_CB_GSO_SEGS_OFFSET, "tcp_skb_cb", &["tcp_gso_segs"]),
];

/// Byte offset of a member path (`a.b.c`) within `strukt`.
fn path_offset(btf: &KernelBtf, strukt: &str, path: &[&str]) -> Result<u32> {
    let mut off = 0;
    let mut ty = strukt.to_string();
    for (i, m) in path.iter().enumerate() {
        off += member_offset(btf, &ty, m)?;
        if i + 1 < path.len() {
            ty = member_struct(btf, &ty, m)?;
        }
    }
    Ok(off)
}

/// The struct type name of `strukt.member`.
fn member_struct(btf: &KernelBtf, strukt: &str, member: &str) -> Result<String> {
    for ty in btf.types(strukt)? {
        if let Type::Struct(s) = ty {
            for m in &s.members {
                if btf.resolve_name(m).unwrap_or_default() == member {
                    if let Type::Struct(inner) = btf.resolve_chained_type(m)? {
                        return Ok(btf.resolve_name(&inner)?);
                    }
                }
            }
        }
    }
    Err(anyhow!("kernel BTF has no struct member {strukt}.{member}"))
}

/// Whether the kernel has a function `name` that fentry/fexit can attach to.
fn has_func(btf: &KernelBtf, name: &str) -> bool {
    btf.types(name)
        .is_ok_and(|v| v.iter().any(|t| matches!(t, Type::Func(_))))
}

/// Arguments of BTF tracepoint `name` (0 if it does not exist).
fn tracepoint_args(btf: &KernelBtf, name: &str) -> usize {
    let Ok(types) = btf.types(&format!("btf_trace_{name}")) else {
        return 0;
    };
    for t in types {
        let Type::Typedef(td) = t else { continue };
        let Ok(Type::Ptr(ptr)) = btf.resolve_chained_type(&td) else {
            continue;
        };
        if let Ok(Type::FuncProto(fp)) = btf.resolve_chained_type(&ptr) {
            // The first parameter is the tracepoint's private data.
            return fp.parameters.len().saturating_sub(1);
        }
    }
    0
}

/// Why the program cannot run on this kernel, if it cannot.
fn missing(btf: &KernelBtf, name: &str, hook: Hook) -> Option<String> {
    match hook {
        Hook::FEntry(f) if !has_func(btf, f) => Some(format!("the kernel has no traceable function {f}")),
        Hook::Tracepoint("kfree_skb") if name == prog::KFREE_SKB => (tracepoint_args(btf, "kfree_skb") < 4)
            .then(|| {
                "the skb:kfree_skb tracepoint has no receiving socket (rx_sk, Linux >= 6.11), \
                 so receive-side drops cannot be given a cgroup"
                    .to_string()
            }),
        Hook::Tracepoint(t) if tracepoint_args(btf, t) == 0 => {
            Some(format!("the kernel has no tracepoint {t}"))
        }
        _ => None,
    }
}

/// Looks at the running kernel's BTF.
pub fn probe() -> Result<HealthKernel> {
    Ok(probe_btf(kernel_btf()?))
}

/// Every type name [`probe_btf`] looks up, the structs its offsets pass
/// through included: for one scan of the kernel's BTF
/// ([`KernelBtf::prefetch`]). A name missing here costs a scan of its own.
pub fn btf_names() -> Vec<String> {
    let mut names: Vec<String> = OFFSETS.iter().map(|(_, strukt, _)| strukt.to_string()).collect();
    names.extend(
        [
            "sock_common",
            "tcp_skb_cb",
            "skb_drop_reason",
            "btf_trace_tcp_retransmit_skb",
        ]
        .map(String::from),
    );
    names.extend(PROGRAMS.iter().map(|p| match p.hook {
        Hook::FEntry(f) => f.to_string(),
        Hook::Tracepoint(t) => format!("btf_trace_{t}"),
    }));
    names.sort();
    names.dedup();
    names
}

pub fn probe_btf(btf: &KernelBtf) -> HealthKernel {
    let not_specified = drop_reasons(btf)
        .into_iter()
        .find(|(_, n)| n == "not_specified")
        .map(|(v, _)| v);
    let mut k = HealthKernel::default();
    for (global, strukt, path) in OFFSETS {
        match path_offset(btf, strukt, path) {
            Ok(off) => k.offsets.push((global, off)),
            Err(e) => {
                for p in PROGRAMS {
                    k.why.insert(p.name, format!("{e:#}"));
                }
                return k;
            }
        }
    }
    let has_err = u32::from(tracepoint_args(btf, "tcp_retransmit_skb") >= 3);
    k.offsets.push((g::RETRANSMIT_HAS_ERR, has_err));
    k.offsets
        .push((g::DROP_REASON_NOT_SPECIFIED, not_specified.unwrap_or(u32::MAX)));
    for p in PROGRAMS {
        let why = match missing(btf, p.name, p.hook) {
            None if p.name == prog::KFREE_SKB && not_specified.is_none() => {
                Some("the kernel's BTF has no enum skb_drop_reason".to_string())
            }
            other => other,
        };
        match why {
            None => {
                k.programs.insert(p.name);
            }
            Some(why) => {
                k.why.insert(p.name, why);
            }
        }
    }
    k
}

/// The kernel's drop reasons by value: `enum skb_drop_reason` names in
/// lower case, without `SKB_DROP_REASON_` (`SKB_` for the first two).
pub fn drop_reasons(btf: &KernelBtf) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    let Ok(types) = btf.types("skb_drop_reason") else {
        return out;
    };
    for t in types {
        let Type::Enum(e) = t else { continue };
        for m in &e.members {
            let Ok(name) = btf.resolve_name(m) else { continue };
            let short = name
                .strip_prefix("SKB_DROP_REASON_")
                .or_else(|| name.strip_prefix("SKB_"))
                .unwrap_or(&name);
            out.insert(m.val(), short.to_ascii_lowercase());
        }
    }
    out
}

/// [`drop_reasons`] of the running kernel (empty if its BTF cannot be
/// read), read once per process: the exporter names drops at every scrape,
/// and the kernel's enum does not change while it runs.
pub fn running_drop_reasons() -> &'static BTreeMap<u32, String> {
    static NAMES: std::sync::OnceLock<BTreeMap<u32, String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| kernel_btf().map(drop_reasons).unwrap_or_default())
}

/// The programs the last load could not load, from the pinned
/// `HEALTH_STATE` map (0 when it is not pinned or cannot be read).
pub fn failed_programs(pin: &std::path::Path) -> u32 {
    let Ok(map) = aya::maps::MapData::from_pin(pin) else {
        return 0;
    };
    let Ok(array) = aya::maps::Array::<_, u32>::try_from(aya::maps::Map::Array(map)) else {
        return 0;
    };
    array.get(&health::state::FAILED, 0).unwrap_or(0)
}
