//! The maps every program of one load shares. They are BTF maps, so
//! `bpftool map dump` prints named fields. `max_entries` here are defaults:
//! the loader sets the real sizes from the layout before loading.
use aya_ebpf::{
    btf_maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    macros::btf_map,
};
use cgacct_common::{overflow, Counters, Departed, Dying, IterAcc, Removed};

/// cgroup id -> counters from the cgroup_skb hooks.
#[btf_map]
pub static CGROUP_STATS: PerCpuHashMap<u64, Counters, 16384> = PerCpuHashMap::new();

/// socket cgroup id (0: no socket) -> counters from the TC hooks.
#[btf_map]
pub static TC_CGROUP_STATS: PerCpuHashMap<u64, Counters, 16384> = PerCpuHashMap::new();

/// ifindex -> counters from the TC hooks.
#[btf_map]
pub static IFACE_STATS: PerCpuHashMap<u32, Counters, 4096> = PerCpuHashMap::new();

/// iterator session id -> running sums of one read of a stats file.
#[btf_map]
pub static ITER_SCRATCH: LruHashMap<u64, IterAcc, 1024> = LruHashMap::new();

/// ifindex -> id of the cgroup behind that interface (set by the loader).
#[btf_map]
pub static IFACE_OWNER: HashMap<u32, u64, 4096> = HashMap::new();

/// owner cgroup id -> counters of every frame through its interfaces, from
/// the owner's side (rx = towards it, tx = from it).
#[btf_map]
pub static VETH_STATS: PerCpuHashMap<u64, Counters, 16384> = PerCpuHashMap::new();

/// cgroup id -> totals of its removed descendants (folded in at removal).
#[btf_map]
pub static DEPARTED: HashMap<u64, Departed, 16384> = HashMap::new();

/// removed cgroup id -> its final totals (the newest kept when full).
#[btf_map]
pub static REMOVED: LruHashMap<u64, Removed, 16384> = LruHashMap::new();

/// Where a `Removed` record is built (too big for the BPF stack).
#[btf_map]
pub static REMOVED_SCRATCH: PerCpuArray<Removed, 1> = PerCpuArray::new();

/// removed cgroup id -> where its late traffic goes and how much came;
/// from its removal until the kernel releases it (longer only as a record
/// of late traffic).
#[btf_map]
pub static DYING: LruHashMap<u64, Dying, 16384> = LruHashMap::new();

/// overflow bucket -> what no full map could take.
#[btf_map]
pub static OVERFLOW: PerCpuArray<Counters, { overflow::BUCKETS as usize }> = PerCpuArray::new();
