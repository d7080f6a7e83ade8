//! What this binary carries: the BPF object built from programs/, the
//! programs and maps it holds and the shapes this build needs, and its build
//! id. The loader writes the build id (a hash of the object) into the
//! programs' read-only data (`BUILD_ID`); `observe` reads it back from the
//! pinned programs to tell which build the kernel runs.
use std::sync::OnceLock;

use anyhow::{anyhow, Context as _, Result};
use aya::maps::MapType;
use cgacct_common::{
    classes, globals, maps, overflow, programs as prog, ClassConfig, ClassKey, ClassName, Counters, Departed,
    Dying, IfaceCounters, IfaceSlot, IterAcc, Removed, Slot, SLOTS,
};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use serde::Serialize;

use crate::spec::layout::MapSizes;

pub mod health;

/// What the running kernel offers, as far as the object's programs and maps
/// are concerned: the iterator needs cgroup iterators and
/// `bpf_map_lookup_percpu_elem`; the cgroup counter maps are per-CPU only
/// with that helper. (Probed in `observe::kernel`, which comes later.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// The iterator program (`net.stat` files) can be loaded.
    pub stats_files: bool,
    /// The cgroup counter maps are plain hashes shared by every CPU.
    pub shared_counters: bool,
}

impl Kernel {
    /// A kernel with everything (6.1 and later).
    pub const FULL: Kernel = Kernel {
        stats_files: true,
        shared_counters: false,
    };
}

/// The BPF object built from programs/ by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cgacct-programs"));

/// FNV-1a over the embedded object: equal objects, equal ids.
pub fn this_build() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in OBJECT {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Tests of the upgrade path stand for "a new build" with a salt.
        if let Some(salt) = std::env::var_os("CGACCT_PIN_BUILD_SALT") {
            for b in salt.as_encoded_bytes() {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    })
}

/// Where `BUILD_ID` sits in the object's `.rodata`: (offset, section size).
pub fn build_id_place() -> Result<(usize, usize)> {
    let file = object::File::parse(OBJECT).context("parsing the embedded BPF object")?;
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(globals::BUILD_ID))
        .ok_or_else(|| anyhow!("the embedded object has no {} symbol", globals::BUILD_ID))?;
    let index = sym
        .section_index()
        .ok_or_else(|| anyhow!("{} is not in a section", globals::BUILD_ID))?;
    let section = file.section_by_index(index)?;
    let offset = usize::try_from(sym.address() - section.address())?;
    Ok((offset, usize::try_from(section.size())?))
}

/// Every program the object holds, with the name it is pinned under. The
/// iterator comes last: it is pinned last, so a pinned iterator of a build
/// means every program of that build is pinned.
pub const PROGRAMS: [&str; 7] = [
    prog::CGROUP_INGRESS,
    prog::CGROUP_EGRESS,
    prog::TC_INGRESS,
    prog::TC_EGRESS,
    prog::CGROUP_RMDIR,
    prog::CGROUP_RELEASE,
    prog::CGROUP_ITER,
];

/// The programs loaded and pinned on kernel `k`, in pinning order: all of
/// [`PROGRAMS`] but the iterator where it cannot load. The last one is
/// pinned last and carries the build id that `observe` reads back.
pub fn programs(k: Kernel) -> &'static [&'static str] {
    if k.stats_files {
        &PROGRAMS
    } else {
        &PROGRAMS[..PROGRAMS.len() - 1]
    }
}

/// The program of the object loaded on kernel `k` for the one pinned as
/// `name`: the removal programs have a build for shared counter maps,
/// whose code holds no per-CPU sum (a `bpf_loop` callback, which kernels
/// before 5.13 refuse to load even where it is never called).
pub fn object_program(name: &str, k: Kernel) -> &str {
    match (name, k.shared_counters) {
        (prog::CGROUP_RMDIR, true) => prog::CGROUP_RMDIR_SHARED,
        (prog::CGROUP_RELEASE, true) => prog::CGROUP_RELEASE_SHARED,
        _ => name,
    }
}

/// The BTF tracepoint programs, with the tracepoint each attaches to.
pub const TRACEPOINTS: [(&str, &str); 2] = [
    (prog::CGROUP_RMDIR, "cgroup_rmdir"),
    (prog::CGROUP_RELEASE, "cgroup_release"),
];

/// The shape of a map: what the programs of this build expect.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MapShape {
    #[serde(skip)]
    pub kind: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} key {} value {} max_entries {}",
            self.kind, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// The maps of the cgroup counters, per-CPU or shared by kernel.
pub const COUNTER_MAPS: [&str; 3] = [maps::CGROUP_STATS, maps::TC_CGROUP_STATS, maps::VETH_STATS];

/// Every map that is per-CPU where the kernel has `bpf_map_lookup_percpu_elem`
/// and a plain hash shared by every CPU (atomic adds) where it has not: the
/// cgroup counter maps, the class counts and the health counts, whose
/// removal programs must read a cgroup's whole count.
pub const SHARED_MAPS: [&str; 5] = [
    maps::CGROUP_STATS,
    maps::TC_CGROUP_STATS,
    maps::VETH_STATS,
    maps::CLASS_STATS,
    cgacct_common::health::maps::HEALTH_STATS,
];

/// The type of the maps in [`SHARED_MAPS`] on kernel `k`.
pub fn counter_kind(k: Kernel) -> MapType {
    match k.shared_counters {
        true => MapType::Hash,
        false => MapType::PerCpuHash,
    }
}

/// Entries of `CLASS_STATS` and `CLASS_DEPARTED`: four classes per cgroup
/// of `[maps] cgroups` on average.
pub fn class_entries(sizes: &MapSizes) -> u32 {
    sizes.cgroups.saturating_mul(4).min(1 << 24)
}

/// The maps this build and layout need on kernel `k`, by name.
pub fn wanted_maps(sizes: &MapSizes, k: Kernel) -> [(&'static str, MapShape); 25] {
    let shape = |kind, key_size, value_size: usize, max_entries| MapShape {
        kind,
        key_size,
        value_size: value_size as u32,
        max_entries,
    };
    let c = size_of::<Counters>();
    let ck = size_of::<ClassKey>() as u32;
    let m = sizes;
    let counters = counter_kind(k);
    let slots = shape(MapType::PerCpuArray, 4, size_of::<Slot>(), SLOTS);
    [
        (maps::CGROUP_STATS, shape(counters, 8, c, m.cgroups)),
        (maps::TC_CGROUP_STATS, shape(counters, 8, c, m.cgroups)),
        (
            maps::IFACE_STATS,
            shape(MapType::PerCpuHash, 4, size_of::<IfaceCounters>(), m.interfaces),
        ),
        (
            maps::ITER_SCRATCH,
            shape(MapType::LruHash, 8, size_of::<IterAcc>(), m.readers),
        ),
        (maps::IFACE_OWNER, shape(MapType::Hash, 4, 8, m.interfaces)),
        (maps::IFACE_OWNER_GEN, shape(MapType::Array, 4, 8, 1)),
        (maps::VETH_STATS, shape(counters, 8, c, m.cgroups)),
        (
            maps::DEPARTED,
            shape(MapType::Hash, 8, size_of::<Departed>(), m.cgroups),
        ),
        (
            maps::REMOVED,
            shape(MapType::LruHash, 8, size_of::<Removed>(), m.cgroups),
        ),
        (
            maps::REMOVED_SCRATCH,
            shape(MapType::PerCpuArray, 4, size_of::<Removed>(), 1),
        ),
        (
            maps::DYING,
            shape(MapType::LruHash, 8, size_of::<Dying>(), m.cgroups),
        ),
        (
            maps::OVERFLOW,
            shape(MapType::PerCpuArray, 4, c, overflow::BUCKETS),
        ),
        (
            maps::CLASS_PREFIXES_V4,
            shape(MapType::LpmTrie, 8, 4, classes::MAX_PREFIXES),
        ),
        (
            maps::CLASS_PREFIXES_V6,
            shape(MapType::LpmTrie, 20, 4, classes::MAX_PREFIXES),
        ),
        (
            maps::CLASS_NAMES,
            shape(MapType::Array, 4, size_of::<ClassName>(), classes::MAX),
        ),
        (
            maps::CLASS_CONFIG,
            shape(MapType::Array, 4, size_of::<ClassConfig>(), 1),
        ),
        (maps::CLASS_STATS, shape(counters, ck, c, class_entries(m))),
        (
            maps::CLASS_DEPARTED,
            shape(MapType::Hash, ck, c, class_entries(m)),
        ),
        (
            maps::CLASS_SCRATCH,
            shape(
                MapType::LruHash,
                ck,
                c,
                m.readers.saturating_mul(2 * classes::MAX).min(1 << 24),
            ),
        ),
        (maps::CLASS_OVERFLOW, shape(MapType::PerCpuArray, 4, c, 1)),
        (
            maps::SUM_SCRATCH,
            shape(MapType::PerCpuArray, 4, 8 * cgacct_common::SUM_WORDS, 1),
        ),
        (maps::CGROUP_SLOTS, slots),
        (maps::TC_CGROUP_SLOTS, slots),
        (maps::VETH_SLOTS, slots),
        (
            maps::IFACE_SLOTS,
            shape(MapType::PerCpuArray, 4, size_of::<IfaceSlot>(), SLOTS),
        ),
    ]
}

/// Whether the pinned map `name` of shape `have` is of an earlier build's
/// value layout that converts to `want` with its counters kept:
/// `IFACE_STATS` of plain [`Counters`], from before owners were cached in
/// it ([`IfaceCounters`]).
pub fn upgrades(name: &str, have: MapShape, want: MapShape) -> bool {
    name == maps::IFACE_STATS
        && (have.kind, have.key_size) == (want.kind, want.key_size)
        && have.value_size as usize == size_of::<Counters>()
        && want.value_size as usize == size_of::<IfaceCounters>()
}

/// Every map this build and layout need: [`wanted_maps`] and the health maps.
pub fn all_wanted_maps(sizes: &MapSizes, k: Kernel) -> Vec<(&'static str, MapShape)> {
    let mut all = wanted_maps(sizes, k).to_vec();
    all.extend(health::wanted_maps(sizes, k));
    all
}

/// Every map name, in the order the loader pins them.
pub fn all_maps() -> impl Iterator<Item = &'static str> {
    maps::ALL.into_iter().chain(cgacct_common::health::maps::ALL)
}

/// The `[maps]` key that sizes a map, if one does.
pub fn layout_key(map: &str) -> Option<&'static str> {
    match map {
        maps::CGROUP_STATS
        | maps::TC_CGROUP_STATS
        | maps::VETH_STATS
        | maps::DEPARTED
        | maps::REMOVED
        | maps::DYING
        | maps::CLASS_STATS
        | maps::CLASS_DEPARTED => Some("[maps] cgroups"),
        cgacct_common::health::maps::HEALTH_STATS
        | cgacct_common::health::maps::HEALTH_DEPARTED
        | cgacct_common::health::maps::HEALTH_REMOVED => Some("[maps] cgroups"),
        maps::IFACE_STATS | maps::IFACE_OWNER => Some("[maps] interfaces"),
        maps::ITER_SCRATCH | maps::CLASS_SCRATCH => Some("[maps] readers"),
        _ => None,
    }
}

/// Maps of earlier builds that this one no longer has.
pub const RETIRED_MAPS: [&str; 1] = cgacct_common::health::maps::RETIRED;

/// Maps whose content is rebuilt (scratch space, interface owners set by
/// every apply): replaced without asking when their shape changes.
pub const REBUILT_MAPS: [&str; 7] = [
    maps::ITER_SCRATCH,
    maps::REMOVED_SCRATCH,
    maps::SUM_SCRATCH,
    maps::IFACE_OWNER,
    maps::IFACE_OWNER_GEN,
    maps::CLASS_SCRATCH,
    cgacct_common::health::maps::RETRANS_SEEN,
];

/// A BTF blob describing a cgroup counter map's key (`u64`, type 1) and
/// value (`struct Counters`, type 2), for the shared counter maps the
/// loader creates itself, so that `bpftool map dump` prints named fields
/// for them too.
pub fn counter_btf() -> Vec<u8> {
    const KIND_INT: u32 = 1;
    const KIND_STRUCT: u32 = 4;
    let mut strings = vec![0u8];
    let mut name = |n: &str| {
        let off = strings.len() as u32;
        strings.extend_from_slice(n.as_bytes());
        strings.push(0);
        off
    };
    let (u64_name, counters_name) = (name("u64"), name("Counters"));
    let fields = ["rx_bytes", "rx_packets", "tx_bytes", "tx_packets"].map(&mut name);
    let mut types: Vec<u32> = vec![
        // [1] u64: btf_type, then the int encoding (unsigned, 64 bits).
        u64_name,
        KIND_INT << 24,
        8,
        64,
        // [2] struct Counters, its four u64 members.
        counters_name,
        KIND_STRUCT << 24 | fields.len() as u32,
        size_of::<Counters>() as u32,
    ];
    for (i, f) in fields.iter().enumerate() {
        types.extend([*f, 1, i as u32 * 64]);
    }
    let types: Vec<u8> = types.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut out = Vec::new();
    out.extend(0xeb9f_u16.to_ne_bytes()); // magic
    out.extend([1, 0]); // version, flags
    let header = [
        24u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ];
    out.extend(header.iter().flat_map(|w| w.to_ne_bytes()));
    out.extend(types);
    out.extend(strings);
    out
}
