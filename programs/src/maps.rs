//! The maps every program of one load shares. They are BTF maps, so
//! `bpftool map dump` prints named fields. `max_entries` here are defaults:
//! the loader sets the real sizes from the layout before loading.
//!
//! The per-CPU counter maps are not preallocated: a preallocated per-CPU
//! hash costs its full size times the number of CPUs at creation (about
//! 35 MB per map for 16384 entries on 64 CPUs), while an entry of one made
//! on demand costs the same bytes only once used. `max_entries` then is a
//! limit, not a cost; an insert that finds the map at its limit (or no
//! memory) fails and is counted in `OVERFLOW`.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
    macros::btf_map,
};
use cgacct_common::{
    classes, overflow, ClassConfig, ClassKey, ClassName, Counters, Departed, Dying, IfaceCounters, IfaceSlot,
    IterAcc, Removed, Slot, SLOTS, SUM_WORDS,
};

/// Flags of the per-CPU counter maps: entries allocated when first used.
pub const ON_DEMAND: usize = BPF_F_NO_PREALLOC as usize;

/// A per-CPU counter map of `N` entries at most.
pub type CounterMap<K, const N: usize> = PerCpuHashMap<K, Counters, N, ON_DEMAND>;

/// A slot array (see [`Slot`]).
pub type SlotArray = PerCpuArray<Slot, { SLOTS as usize }>;

/// cgroup id -> counters from the cgroup_skb hooks.
#[btf_map]
pub static CGROUP_STATS: CounterMap<u64, 16384> = CounterMap::new();

/// `id & (SLOTS - 1)` -> counters of cgroup `id` from the cgroup_skb hooks,
/// in front of `CGROUP_STATS` (see [`Slot`]).
#[btf_map]
pub static CGROUP_SLOTS: SlotArray = SlotArray::new();

/// socket cgroup id (0: no socket) -> counters from the TC hooks.
#[btf_map]
pub static TC_CGROUP_STATS: CounterMap<u64, 16384> = CounterMap::new();

/// Slots of `TC_CGROUP_STATS` (see [`Slot`]).
#[btf_map]
pub static TC_CGROUP_SLOTS: SlotArray = SlotArray::new();

/// ifindex -> counters from the TC hooks, and the interface's owner as
/// this CPU last looked it up (see [`IfaceCounters`]).
#[btf_map]
pub static IFACE_STATS: PerCpuHashMap<u32, IfaceCounters, 4096, ON_DEMAND> = PerCpuHashMap::new();

/// iterator session id -> running sums of one read of a stats file.
#[btf_map]
pub static ITER_SCRATCH: LruHashMap<u64, IterAcc, 1024> = LruHashMap::new();

/// ifindex -> id of the cgroup behind that interface (set by the loader).
#[btf_map]
pub static IFACE_OWNER: HashMap<u32, u64, 4096> = HashMap::new();

/// [0]: generation of `IFACE_OWNER`, set by the loader after each change;
/// a cached owner from another generation is looked up again.
#[btf_map]
pub static IFACE_OWNER_GEN: Array<u64, 1> = Array::new();

/// owner cgroup id -> counters of every frame through its interfaces, from
/// the owner's side (rx = towards it, tx = from it).
#[btf_map]
pub static VETH_STATS: CounterMap<u64, 16384> = CounterMap::new();

/// Slots of `IFACE_STATS` (see [`IfaceSlot`]).
#[btf_map]
pub static IFACE_SLOTS: PerCpuArray<IfaceSlot, { SLOTS as usize }> = PerCpuArray::new();

/// Slots of `VETH_STATS` (see [`Slot`]).
#[btf_map]
pub static VETH_SLOTS: SlotArray = SlotArray::new();

/// cgroup id -> totals of its removed descendants (folded in at removal).
#[btf_map]
pub static DEPARTED: HashMap<u64, Departed, 16384> = HashMap::new();

/// removed cgroup id -> its final totals (the newest kept when full).
#[btf_map]
pub static REMOVED: LruHashMap<u64, Removed, 16384> = LruHashMap::new();

/// Where a `Removed` record is built (too big for the BPF stack).
#[btf_map]
pub static REMOVED_SCRATCH: PerCpuArray<Removed, 1> = PerCpuArray::new();

/// Where [`crate::kernel::sum_percpu`] adds up: in a map value, which the
/// verifier never tracks, so every way through the sum leaves the same
/// state behind (on the stack, "no CPU had a slot" would be a state of
/// known zeros beside one of unknown sums, doubling the states at each
/// sum of a program). Its users run under `cgroup_mutex`: one at a time.
#[btf_map]
pub static SUM_SCRATCH: PerCpuArray<[u64; SUM_WORDS], 1> = PerCpuArray::new();

/// removed cgroup id -> where its late traffic goes and how much came;
/// from its removal until the kernel releases it (longer only as a record
/// of late traffic).
#[btf_map]
pub static DYING: LruHashMap<u64, Dying, 16384> = LruHashMap::new();

/// overflow bucket -> what no full map could take.
#[btf_map]
pub static OVERFLOW: PerCpuArray<Counters, { overflow::BUCKETS as usize }> = PerCpuArray::new();

/// IPv4 prefix -> class index (set by the loader from `[classes]`).
#[btf_map]
pub static CLASS_PREFIXES_V4: LpmTrie<[u8; 4], u32, { classes::MAX_PREFIXES as usize }> = LpmTrie::new();

/// IPv6 prefix -> class index (set by the loader from `[classes]`).
#[btf_map]
pub static CLASS_PREFIXES_V6: LpmTrie<[u8; 16], u32, { classes::MAX_PREFIXES as usize }> = LpmTrie::new();

/// class index -> its name (set by the loader; all zero: unused).
#[btf_map]
pub static CLASS_NAMES: Array<ClassName, { classes::MAX as usize }> = Array::new();

/// Whether classes count (set by the loader).
#[btf_map]
pub static CLASS_CONFIG: Array<ClassConfig, 1> = Array::new();

/// (cgroup id, class) -> counters from the cgroup_skb hooks.
#[btf_map]
pub static CLASS_STATS: PerCpuHashMap<ClassKey, Counters, 65536, ON_DEMAND> = PerCpuHashMap::new();

/// (cgroup id, class) -> class totals of its removed descendants.
#[btf_map]
pub static CLASS_DEPARTED: HashMap<ClassKey, Counters, 65536, ON_DEMAND> = HashMap::new();

/// (iterator session id, class) -> per-class sums of one read of a stats
/// file: subtree under `class`, own under `classes::MAX + class`.
#[btf_map]
pub static CLASS_SCRATCH: LruHashMap<ClassKey, Counters, 32768> = LruHashMap::new();

/// Class counts no full map could take.
#[btf_map]
pub static CLASS_OVERFLOW: PerCpuArray<Counters, 1> = PerCpuArray::new();
