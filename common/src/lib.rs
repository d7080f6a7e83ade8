//! Types shared by the kernel-side programs and `cgacct-pin`.
//!
//! Everything here is `#[repr(C)]` and laid out identically on both sides:
//! the programs write these values into BPF maps, the loader reads them back.
#![no_std]

/// Byte and packet counters for one key (a cgroup or an interface).
///
/// A byte is a network-layer byte: the IP header and everything after it,
/// never the link-layer header. A GSO/GRO packet counts as `gso_segs`
/// packets, and its bytes are those of the segments it stands for (the
/// headers of every segment included), so the counts match what crosses the
/// wire one IP packet at a time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

impl Counters {
    pub const ZERO: Counters = Counters {
        rx_bytes: 0,
        rx_packets: 0,
        tx_bytes: 0,
        tx_packets: 0,
    };

    /// Adds `other` into `self`, wrapping like the kernel's own counters.
    #[inline(always)]
    pub fn add(&mut self, other: &Counters) {
        self.rx_bytes = self.rx_bytes.wrapping_add(other.rx_bytes);
        self.rx_packets = self.rx_packets.wrapping_add(other.rx_packets);
        self.tx_bytes = self.tx_bytes.wrapping_add(other.tx_bytes);
        self.tx_packets = self.tx_packets.wrapping_add(other.tx_packets);
    }

    /// Nonzero when any field is: one test where `!=` makes one branch
    /// per field, each a state of its own for the BPF verifier.
    #[inline(always)]
    pub fn any(&self) -> u64 {
        self.rx_bytes | self.rx_packets | self.tx_bytes | self.tx_packets
    }
}

/// One entry of a slot array in front of a per-CPU counter map: the
/// counters of the cgroup `id` on one CPU; `id` 0: free. A cgroup's slot is
/// at index `id & (SLOTS - 1)`, claimed on a CPU by the first packet of a
/// live cgroup that finds it free there, and freed when the cgroup goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub id: u64,
    pub counters: Counters,
}

/// One entry of `IFACE_SLOTS`, in front of `IFACE_STATS` as [`Slot`] is
/// in front of the cgroup maps: interface `ifindex`'s value on one CPU;
/// `ifindex` 0: free. Interfaces keep their slot as they keep their entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceSlot {
    pub ifindex: u64,
    pub value: IfaceCounters,
}

/// Entries of each slot array (a power of two).
pub const SLOTS: u32 = 1024;

/// A value of `IFACE_STATS`: one interface's counters on one CPU, and the
/// owner (`IFACE_OWNER`) this CPU last looked up for it. The cached owner
/// is valid while `owner_gen` equals the generation the loader keeps in
/// `IFACE_OWNER_GEN` (bumped at every change of `IFACE_OWNER`), so a frame
/// costs an array read instead of a second hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    pub counters: Counters,
    /// Owner cgroup id, 0 for none.
    pub owner: u64,
    /// Generation `owner` was looked up in; 0: never.
    pub owner_gen: u64,
}

/// Bytes of `net.stat` text an iterator formats before it writes them to
/// the reader in one `bpf_seq_write` (a power of two: indexes are masked).
pub const TEXT_LEN: usize = 512;
/// Lines an iterator queues before it formats them (a power of two).
pub const TEXT_LINES: usize = 64;

/// `net.stat` text being made by the iterator's epilogue: `queued` lines
/// as (key, value), formatted into `buf`, of which `len` bytes are ready
/// to be written. Private to one read, as part of its [`IterAcc`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Text {
    pub len: u64,
    pub queued: u64,
    pub keys: [u8; TEXT_LINES],
    pub values: [u64; TEXT_LINES],
    pub buf: [u8; TEXT_LEN],
}

/// What a cgroup iterator gathers while it walks one stats file's subtree.
/// Lives in [`maps::ITER_SCRATCH`] for the duration of one read.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IterAcc {
    /// Id of the cgroup the stats file belongs to (the first one walked).
    pub cgroup_id: u64,
    /// Number of cgroups walked: the cgroup itself and its descendants.
    pub cgroups: u64,
    /// The cgroup's own counts from the cgroup_skb hooks.
    pub own: Counters,
    /// Subtree counts from the cgroup_skb hooks.
    pub subtree: Counters,
    /// The cgroup's own counts from the TC hooks.
    pub own_tc: Counters,
    /// Subtree counts from the TC hooks.
    pub subtree_tc: Counters,
    /// The cgroup's own counts through the interfaces it owns.
    pub own_veth: Counters,
    /// Subtree counts through owned interfaces.
    pub subtree_veth: Counters,
    /// Removed descendants whose totals the subtree counts include.
    pub departed_cgroups: u64,
    /// The TCP health and drop counts, own and subtree.
    pub health: HealthAcc,
    /// The text of the read, formatted after the walk.
    pub text: Text,
}

impl IterAcc {
    /// All zero: what a read's entry starts from.
    pub const ZERO: IterAcc = IterAcc {
        cgroup_id: 0,
        cgroups: 0,
        own: Counters::ZERO,
        subtree: Counters::ZERO,
        own_tc: Counters::ZERO,
        subtree_tc: Counters::ZERO,
        own_veth: Counters::ZERO,
        subtree_veth: Counters::ZERO,
        departed_cgroups: 0,
        health: HealthAcc {
            own: Health::ZERO,
            subtree: Health::ZERO,
        },
        text: Text {
            len: 0,
            queued: 0,
            keys: [0; TEXT_LINES],
            values: [0; TEXT_LINES],
            buf: [0; TEXT_LEN],
        },
    };
}

/// One cgroup's counters from every hook family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// cgroup_skb (sockets).
    pub socket: Counters,
    /// TC, by the frame's socket cgroup.
    pub tc: Counters,
    /// TC on owned interfaces.
    pub veth: Counters,
}

impl Totals {
    #[inline(always)]
    pub fn add(&mut self, other: &Totals) {
        self.socket.add(&other.socket);
        self.tc.add(&other.tc);
        self.veth.add(&other.veth);
    }

    /// Nonzero when any field is (see [`Counters::any`]).
    #[inline(always)]
    pub fn any(&self) -> u64 {
        self.socket.any() | self.tc.any() | self.veth.any()
    }
}

/// What removed descendants of a cgroup counted, folded into it when each
/// was removed, so subtree totals never go backwards.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Departed {
    /// Removed descendants folded in.
    pub cgroups: u64,
    pub totals: Totals,
}

/// Length of the path kept for a removed cgroup (NUL-padded, truncated).
pub const REMOVED_PATH_LEN: usize = 256;

/// The last word of a removed cgroup, written when it is removed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Removed {
    pub id: u64,
    pub parent_id: u64,
    /// CLOCK_BOOTTIME nanoseconds at removal.
    pub removed_at_ns: u64,
    /// Removed descendants whose totals `subtree` includes.
    pub descendants: u64,
    /// The cgroup's own final counts.
    pub own: Totals,
    /// Own plus those of its removed descendants: what its parent gained.
    pub subtree: Totals,
    /// Its path below the cgroup2 mount, as the kernel printed it.
    pub path: [u8; REMOVED_PATH_LEN],
}

/// A removed cgroup the kernel still holds (a socket made in it lives on):
/// where its traffic goes, and how much came after its removal. Written at
/// removal; at release (the last reference gone) the entry is deleted, or
/// kept as a record if traffic came late.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dying {
    /// Its parent at removal (live then: a cgroup with live children
    /// cannot be removed).
    pub parent_id: u64,
    /// CLOCK_BOOTTIME nanoseconds at release; 0 while the kernel holds it.
    pub released_at_ns: u64,
    /// Counted after its removal, and added to its nearest live ancestor's
    /// `DEPARTED` entry.
    pub late: Totals,
}

/// Destination classes (`[classes]` of the layout): a packet's peer address
/// picks a class by longest prefix match; per-cgroup counters per class.
pub mod classes {
    /// Class indices, `other` (index 0) included: at most 15 named classes.
    pub const MAX: u32 = 16;
    /// Index of the class of addresses no prefix matches.
    pub const OTHER: u32 = 0;
    /// Name of class [`OTHER`].
    pub const OTHER_NAME: &str = "other";
    /// Bytes of a class name in the name table (NUL-padded; names are at
    /// most `NAME_LEN - 1` bytes).
    pub const NAME_LEN: usize = 32;
    /// Prefixes per address family (entries of each LPM trie).
    pub const MAX_PREFIXES: u32 = 1024;
}

/// Key of the per-class counter maps: one cgroup's counts in one class.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClassKey {
    pub cgroup_id: u64,
    /// Class index ([`classes`]); 0 is `other`.
    pub class: u32,
    pub pad: u32,
}

/// A class's name in the name table, NUL-padded; all zero: index unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassName {
    pub name: [u8; classes::NAME_LEN],
}

/// Whether classes count, read by the packet path on every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassConfig {
    /// Class indices in use: the highest index in use plus one (every
    /// index below it may hold a class); 0: classes are off.
    pub indices: u32,
    pub pad: u32,
}

/// Cgroup id under which TC counts traffic whose skb has no socket.
pub const UNATTRIBUTED_CGROUP: u64 = 0;

/// Id of the cgroup2 root cgroup (a kernfs root's first id on 64-bit).
pub const ROOT_CGROUP: u64 = 1;

/// Buckets of the `OVERFLOW` map: traffic counted nowhere else because a
/// map was full (an insert failed). Each bucket holds [`Counters`]
/// (rx and tx as in the map it stands for).
pub mod overflow {
    /// cgroup_skb counts of a cgroup with no `CGROUP_STATS` entry.
    pub const CGROUP_STATS: u32 = 0;
    /// TC counts of a socket cgroup with no `TC_CGROUP_STATS` entry.
    pub const TC_CGROUP_STATS: u32 = 1;
    /// TC counts of an interface with no `IFACE_STATS` entry.
    pub const IFACE_STATS: u32 = 2;
    /// Owner counts of a cgroup with no `VETH_STATS` entry.
    pub const VETH_STATS: u32 = 3;
    /// cgroup_skb totals of removed cgroups (final or late) that no
    /// `DEPARTED` entry could take.
    pub const DEPARTED: u32 = 4;
    /// The same, TC totals.
    pub const DEPARTED_TC: u32 = 5;
    /// The same, owner totals.
    pub const DEPARTED_VETH: u32 = 6;
    /// Number of buckets.
    pub const BUCKETS: u32 = 7;
    /// Bucket names as `net.stat` (`overflow_<name>_packets`), `status` and
    /// the exporter print them, by index.
    pub const NAMES: [&str; BUCKETS as usize] = [
        "cgroup_stats",
        "tc_cgroup_stats",
        "iface_stats",
        "veth_stats",
        "departed",
        "departed_tc",
        "departed_veth",
    ];
}

/// Names of the maps in the BPF object, as the loader finds and pins them.
pub mod maps {
    /// Per-CPU hash: cgroup id (`u64`) -> [`crate::Counters`], from the
    /// cgroup_skb programs (rx = ingress, tx = egress).
    pub const CGROUP_STATS: &str = "CGROUP_STATS";
    /// Per-CPU hash: cgroup id (`u64`) of the skb's socket -> [`crate::Counters`],
    /// from the TC programs (rx = TC ingress, tx = TC egress). Key
    /// [`crate::UNATTRIBUTED_CGROUP`] holds traffic without a socket.
    pub const TC_CGROUP_STATS: &str = "TC_CGROUP_STATS";
    /// Per-CPU hash: ifindex (`u32`) -> [`crate::IfaceCounters`], from the
    /// TC programs (rx = TC ingress, tx = TC egress).
    pub const IFACE_STATS: &str = "IFACE_STATS";
    /// LRU hash: iterator session id (`u64`) -> [`crate::IterAcc`].
    pub const ITER_SCRATCH: &str = "ITER_SCRATCH";
    /// Hash: ifindex (`u32`) -> id (`u64`) of the cgroup behind that
    /// interface (a container behind its host-side veth). Filled by the loader.
    pub const IFACE_OWNER: &str = "IFACE_OWNER";
    /// Array of one `u64`: the generation of `IFACE_OWNER`, set by the
    /// loader after each change to it; 0: owners are not cached.
    pub const IFACE_OWNER_GEN: &str = "IFACE_OWNER_GEN";
    /// Per-CPU hash: owner cgroup id (`u64`) -> [`crate::Counters`] of every
    /// frame crossing its interfaces at TC, whatever the frame's socket,
    /// from the owner's side: rx = towards the owner (TC egress), tx = from
    /// the owner (TC ingress).
    pub const VETH_STATS: &str = "VETH_STATS";
    /// Hash: cgroup id (`u64`) -> [`crate::Departed`]: totals of its
    /// removed descendants, folded in at each removal.
    pub const DEPARTED: &str = "DEPARTED";
    /// LRU hash: id (`u64`) of a removed cgroup -> [`crate::Removed`].
    pub const REMOVED: &str = "REMOVED";
    /// Per-CPU array of one [`crate::Removed`]: where a record is built.
    pub const REMOVED_SCRATCH: &str = "REMOVED_SCRATCH";
    /// LRU hash: id (`u64`) of a removed cgroup the kernel still holds ->
    /// [`crate::Dying`].
    pub const DYING: &str = "DYING";
    /// Per-CPU array: bucket ([`crate::overflow`]) -> [`crate::Counters`]
    /// that no full map could take.
    pub const OVERFLOW: &str = "OVERFLOW";
    /// LPM trie: IPv4 prefix (prefix length `u32` + 4 address bytes) ->
    /// class index (`u32`). Written by the loader.
    pub const CLASS_PREFIXES_V4: &str = "CLASS_PREFIXES_V4";
    /// LPM trie: IPv6 prefix (prefix length `u32` + 16 address bytes) ->
    /// class index (`u32`). Written by the loader.
    pub const CLASS_PREFIXES_V6: &str = "CLASS_PREFIXES_V6";
    /// Array: class index -> [`crate::ClassName`] (the iterator prints
    /// these names). Written by the loader.
    pub const CLASS_NAMES: &str = "CLASS_NAMES";
    /// Array of one [`crate::ClassConfig`]: 0 indices means classes are off.
    pub const CLASS_CONFIG: &str = "CLASS_CONFIG";
    /// Per-CPU hash: [`crate::ClassKey`] -> [`crate::Counters`] from the
    /// cgroup_skb programs, per class of the peer address.
    pub const CLASS_STATS: &str = "CLASS_STATS";
    /// Hash: [`crate::ClassKey`] -> [`crate::Counters`] of removed
    /// descendants, per class (as `DEPARTED`).
    pub const CLASS_DEPARTED: &str = "CLASS_DEPARTED";
    /// LRU hash: (iterator session id, class) -> [`crate::Counters`]: the
    /// per-class sums of one read, the subtree's under `class`, the
    /// cgroup's own under `classes::MAX + class`.
    pub const CLASS_SCRATCH: &str = "CLASS_SCRATCH";
    /// Per-CPU array of one [`crate::Counters`]: class counts that no full
    /// `CLASS_STATS` or `CLASS_DEPARTED` could take.
    pub const CLASS_OVERFLOW: &str = "CLASS_OVERFLOW";
    /// Per-CPU array of one [`crate::SUM_WORDS`] `u64`s: where a program
    /// adds up every CPU's slots of a per-CPU map.
    pub const SUM_SCRATCH: &str = "SUM_SCRATCH";
    /// Per-CPU arrays of [`crate::SLOTS`] [`crate::Slot`]s in front of
    /// `CGROUP_STATS`, `TC_CGROUP_STATS` and `VETH_STATS`: a cgroup's
    /// counters on a CPU where it holds the slot at `id & (SLOTS - 1)`,
    /// found without a hash lookup; its counts are those of its slots and
    /// its map entry together.
    pub const CGROUP_SLOTS: &str = "CGROUP_SLOTS";
    pub const TC_CGROUP_SLOTS: &str = "TC_CGROUP_SLOTS";
    pub const VETH_SLOTS: &str = "VETH_SLOTS";
    /// Per-CPU array of [`crate::SLOTS`] [`crate::IfaceSlot`]s in front of
    /// `IFACE_STATS`, at `ifindex & (SLOTS - 1)`.
    pub const IFACE_SLOTS: &str = "IFACE_SLOTS";
    /// Every map, in the order the loader pins them.
    pub const ALL: [&str; 25] = [
        CGROUP_STATS,
        TC_CGROUP_STATS,
        IFACE_STATS,
        ITER_SCRATCH,
        IFACE_OWNER,
        IFACE_OWNER_GEN,
        VETH_STATS,
        DEPARTED,
        REMOVED,
        REMOVED_SCRATCH,
        DYING,
        OVERFLOW,
        CLASS_PREFIXES_V4,
        CLASS_PREFIXES_V6,
        CLASS_NAMES,
        CLASS_CONFIG,
        CLASS_STATS,
        CLASS_DEPARTED,
        CLASS_SCRATCH,
        CLASS_OVERFLOW,
        SUM_SCRATCH,
        CGROUP_SLOTS,
        TC_CGROUP_SLOTS,
        VETH_SLOTS,
        IFACE_SLOTS,
    ];
}

/// Names of the programs in the BPF object.
pub mod programs {
    pub const CGROUP_INGRESS: &str = "cgacct_cg_ingress";
    pub const CGROUP_EGRESS: &str = "cgacct_cg_egress";
    pub const TC_INGRESS: &str = "cgacct_tc_ingress";
    pub const TC_EGRESS: &str = "cgacct_tc_egress";
    pub const CGROUP_ITER: &str = "cgacct_net_stat";
    /// BTF tracepoint `cgroup_rmdir`: folds a removed cgroup's totals into
    /// its parent and records them.
    pub const CGROUP_RMDIR: &str = "cgacct_cgroup_rmdir";
    /// BTF tracepoint `cgroup_release`: a removed cgroup's last reference
    /// is gone; folds what is left under its id and ends its `DYING` entry.
    pub const CGROUP_RELEASE: &str = "cgacct_cgroup_release";
    /// [`CGROUP_RMDIR`] and [`CGROUP_RELEASE`] built for shared counter
    /// maps only (kernels before 5.19), loaded in their place there and
    /// pinned under their names.
    pub const CGROUP_RMDIR_SHARED: &str = "cgacct_cgroup_rmdir_shared";
    pub const CGROUP_RELEASE_SHARED: &str = "cgacct_cgroup_release_shared";
}

/// Read-only globals the loader sets before the object is loaded.
pub mod globals {
    /// Number of possible CPUs (`u32`): how many per-CPU slots to sum.
    pub const NR_CPUS: &str = "NR_CPUS";
    /// `offsetof(struct cgroup, kn)` on the running kernel (`u32`).
    pub const CGROUP_KN_OFFSET: &str = "CGROUP_KN_OFFSET";
    /// `offsetof(struct kernfs_node, id)` on the running kernel (`u32`).
    pub const KERNFS_NODE_ID_OFFSET: &str = "KERNFS_NODE_ID_OFFSET";
    /// Identity of the object's build (`u64`): how a later `apply` tells
    /// whether the running programs are the ones it carries.
    pub const BUILD_ID: &str = "BUILD_ID";
    /// `offsetof(struct kernfs_node, __parent)` (`parent` before 6.15) (`u32`).
    pub const KERNFS_NODE_PARENT_OFFSET: &str = "KERNFS_NODE_PARENT_OFFSET";
    /// `offsetof(struct cgroup, root)` (`u32`): the hierarchy a cgroup is in.
    pub const CGROUP_ROOT_OFFSET: &str = "CGROUP_ROOT_OFFSET";
    /// `offsetof(struct cgroup_root, hierarchy_id)` (`u32`).
    pub const CGROUP_ROOT_HIERARCHY_ID_OFFSET: &str = "CGROUP_ROOT_HIERARCHY_ID_OFFSET";
    /// 1 when the cgroup counter maps are plain hashes shared by every CPU
    /// (kernels without `bpf_map_lookup_percpu_elem`), 0 for per-CPU (`u32`).
    pub const SHARED_COUNTERS: &str = "SHARED_COUNTERS";
    /// 1 where the verifier takes 8-byte stores at any byte offset of a
    /// map value (architectures with efficient unaligned access: x86-64,
    /// arm64, powerpc64, s390x), 0 elsewhere (`u32`).
    pub const UNALIGNED_STORES: &str = "UNALIGNED_STORES";
}

/// Upper bound on CPUs the iterator sums over; the loader refuses hosts with more.
pub const MAX_CPUS: u32 = 1024;

/// `u64`s in a `SUM_SCRATCH` value: room for three [`Counters`] or one
/// [`Health`].
pub const SUM_WORDS: usize = 12;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IfaceCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Slot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IfaceSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IterAcc {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Totals {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Departed {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Removed {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Dying {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClassKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClassName {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClassConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Health {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HealthAcc {}
}

/// TCP health and drops of one cgroup's sockets: what the kernel's
/// per-network-namespace MIB counters of the same names count, restricted
/// to the sockets of that cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Tcp ActiveOpens: `connect()`s that sent their SYN.
    pub tcp_active_opens: u64,
    /// Tcp PassiveOpens: children made by a listener from a completed
    /// handshake.
    pub tcp_passive_opens: u64,
    /// Tcp RetransSegs: segments retransmitted (SYN-ACKs included).
    pub tcp_retrans_segs: u64,
    /// TcpExt TCPTimeouts: retransmission timeouts (SYN-ACK ones included).
    pub tcp_timeouts: u64,
    /// Tcp OutRsts: resets sent by or on behalf of a socket.
    pub tcp_out_rsts: u64,
    /// Packets to or from a socket that the kernel dropped with a reason.
    pub drop_packets: u64,
}

impl Health {
    pub const ZERO: Health = Health {
        tcp_active_opens: 0,
        tcp_passive_opens: 0,
        tcp_retrans_segs: 0,
        tcp_timeouts: 0,
        tcp_out_rsts: 0,
        drop_packets: 0,
    };

    /// Nonzero when any field is (see [`Counters::any`]).
    #[inline(always)]
    pub fn any(&self) -> u64 {
        self.tcp_active_opens
            | self.tcp_passive_opens
            | self.tcp_retrans_segs
            | self.tcp_timeouts
            | self.tcp_out_rsts
            | self.drop_packets
    }

    #[inline(always)]
    pub fn add(&mut self, o: &Health) {
        self.tcp_active_opens = self.tcp_active_opens.wrapping_add(o.tcp_active_opens);
        self.tcp_passive_opens = self.tcp_passive_opens.wrapping_add(o.tcp_passive_opens);
        self.tcp_retrans_segs = self.tcp_retrans_segs.wrapping_add(o.tcp_retrans_segs);
        self.tcp_timeouts = self.tcp_timeouts.wrapping_add(o.tcp_timeouts);
        self.tcp_out_rsts = self.tcp_out_rsts.wrapping_add(o.tcp_out_rsts);
        self.drop_packets = self.drop_packets.wrapping_add(o.drop_packets);
    }

    /// The counters in [`health::KEYS`] order.
    #[inline(always)]
    pub fn values(&self) -> [u64; health::KEYS.len()] {
        [
            self.tcp_active_opens,
            self.tcp_passive_opens,
            self.tcp_retrans_segs,
            self.tcp_timeouts,
            self.tcp_out_rsts,
            self.drop_packets,
        ]
    }
}

/// One read of a stats file: the health counters of its cgroup and of its
/// subtree (removed descendants included).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HealthAcc {
    pub own: Health,
    pub subtree: Health,
}

/// The TCP health and drop counters: keys, maps, programs, globals.
pub mod health {
    /// The `net.stat` keys in [`crate::Health`] field order (subtree; the
    /// cgroup alone is `self_<key>`). Bit `i` of [`globals::HEALTH_KEYS`]
    /// says whether key `i` is counted on the running kernel.
    pub const KEYS: [&str; 6] = [
        "tcp_active_opens",
        "tcp_passive_opens",
        "tcp_retrans_segs",
        "tcp_timeouts",
        "tcp_out_rsts",
        "drop_packets",
    ];
    pub const ACTIVE_OPENS: u32 = 0;
    pub const PASSIVE_OPENS: u32 = 1;
    pub const RETRANS_SEGS: u32 = 2;
    pub const TIMEOUTS: u32 = 3;
    pub const OUT_RSTS: u32 = 4;
    pub const DROP_PACKETS: u32 = 5;

    /// Slots of [`maps::DROP_REASONS`]: a reason below the last slot has
    /// its own; the last takes the rest (subsystem reasons).
    pub const DROP_REASON_SLOTS: u32 = 1024;

    /// Slots of [`maps::HEALTH_STATE`] (`u32` each), written by the loader
    /// after it loaded the health programs.
    pub mod state {
        /// Bit `i`: key `KEYS[i]` is counted on this kernel.
        pub const KEYS: u32 = 0;
        /// Bit `i`: health program `i` (the loader's list) could not load.
        pub const FAILED: u32 = 1;
    }

    /// Map names.
    pub mod maps {
        /// Per-CPU hash: cgroup id (`u64`) -> [`crate::Health`].
        pub const HEALTH_STATS: &str = "HEALTH_STATS";
        /// Hash: cgroup id (`u64`) -> [`crate::Health`] of its removed
        /// descendants (folded at removal; atomic adds).
        pub const HEALTH_DEPARTED: &str = "HEALTH_DEPARTED";
        /// Per-CPU array of 1 [`crate::Health`]: events no full
        /// `HEALTH_STATS` or `HEALTH_DEPARTED` could take.
        pub const HEALTH_OVERFLOW: &str = "HEALTH_OVERFLOW";
        /// LRU hash: removed cgroup id (`u64`) -> [`crate::HealthAcc`]:
        /// its final health counts (own, subtree), beside its `REMOVED`
        /// record.
        pub const HEALTH_REMOVED: &str = "HEALTH_REMOVED";
        /// Socket storage: a TCP socket's `total_retrans` when last taken.
        pub const RETRANS_SEEN: &str = "RETRANS_SEEN";
        /// Array of 2 `u32`: see [`super::state`].
        pub const HEALTH_STATE: &str = "HEALTH_STATE";
        /// Per-CPU array: drop reason (`u32`) -> packets (`u64`) counted in
        /// some cgroup's `drop_packets`.
        pub const DROP_REASONS: &str = "DROP_REASONS";
        pub const ALL: [&str; 7] = [
            HEALTH_STATS,
            HEALTH_DEPARTED,
            HEALTH_OVERFLOW,
            HEALTH_REMOVED,
            RETRANS_SEEN,
            HEALTH_STATE,
            DROP_REASONS,
        ];
        /// Maps whose content is rebuilt: replaced without asking.
        pub const REBUILT: [&str; 2] = [RETRANS_SEEN, HEALTH_STATE];
        /// Maps of earlier builds that this one no longer has: unpinned
        /// when the programs are replaced, and by `destroy`.
        pub const RETIRED: [&str; 1] = [
            // The iterator's health sums, now in `ITER_SCRATCH`.
            "HEALTH_SCRATCH",
        ];
    }

    /// Program names.
    pub mod programs {
        /// BTF tracepoint `inet_sock_set_state`: Tcp ActiveOpens,
        /// PassiveOpens; where RetransSegs starts and ends per socket.
        pub const SOCK_STATE: &str = "cgacct_sock_state";
        /// BTF tracepoint `tcp_retransmit_skb`: Tcp RetransSegs.
        pub const RETRANSMIT: &str = "cgacct_tcp_rtx";
        /// BTF tracepoint `tcp_retransmit_synack`: Tcp RetransSegs.
        pub const RETRANSMIT_SYNACK: &str = "cgacct_tcp_rtx_synack";
        /// fentry `tcp_retransmit_timer`: TcpExt TCPTimeouts.
        pub const RTO: &str = "cgacct_tcp_rto";
        /// fentry `tcp_syn_ack_timeout`: TcpExt TCPTimeouts.
        pub const SYNACK_TIMEOUT: &str = "cgacct_tcp_synack_rto";
        /// BTF tracepoint `tcp_send_reset`: Tcp OutRsts.
        pub const SEND_RESET: &str = "cgacct_tcp_rst";
        /// BTF tracepoint `kfree_skb`: drops with a reason.
        pub const KFREE_SKB: &str = "cgacct_kfree_skb";
    }

    /// Read-only globals (all `u32`) the loader sets before load: struct
    /// offsets from the running kernel's BTF.
    pub mod globals {
        pub const SOCK_CGRP_DATA_OFFSET: &str = "SOCK_CGRP_DATA_OFFSET";
        pub const SOCK_CGROUP_DATA_CGROUP_OFFSET: &str = "SOCK_CGROUP_DATA_CGROUP_OFFSET";
        pub const SOCK_STATE_OFFSET: &str = "SOCK_STATE_OFFSET";
        pub const SOCK_FLAGS_OFFSET: &str = "SOCK_FLAGS_OFFSET";
        pub const SOCK_PROTOCOL_OFFSET: &str = "SOCK_PROTOCOL_OFFSET";
        pub const SOCK_RTX_QUEUE_OFFSET: &str = "SOCK_RTX_QUEUE_OFFSET";
        pub const TCP_TOTAL_RETRANS_OFFSET: &str = "TCP_TOTAL_RETRANS_OFFSET";
        pub const TCP_FASTOPEN_RSK_OFFSET: &str = "TCP_FASTOPEN_RSK_OFFSET";
        pub const TCP_PACKETS_OUT_OFFSET: &str = "TCP_PACKETS_OUT_OFFSET";
        pub const TCP_SND_WND_OFFSET: &str = "TCP_SND_WND_OFFSET";
        pub const REQ_LISTENER_OFFSET: &str = "REQ_LISTENER_OFFSET";
        pub const SKB_SK_OFFSET: &str = "SKB_SK_OFFSET";
        pub const SKB_CB_OFFSET: &str = "SKB_CB_OFFSET";
        pub const TCP_SKB_CB_GSO_SEGS_OFFSET: &str = "TCP_SKB_CB_GSO_SEGS_OFFSET";
        /// 1 where the `tcp_retransmit_skb` tracepoint passes `err`.
        pub const RETRANSMIT_HAS_ERR: &str = "RETRANSMIT_HAS_ERR";
        /// `SKB_DROP_REASON_NOT_SPECIFIED`: reasons above it are counted.
        pub const DROP_REASON_NOT_SPECIFIED: &str = "DROP_REASON_NOT_SPECIFIED";
    }
}
