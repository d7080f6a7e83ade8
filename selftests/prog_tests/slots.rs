//! Slots: where a cgroup holds the slot at `id & (SLOTS - 1)` on a CPU, its
//! packets there are counted without a hash lookup; a second cgroup at the
//! same index counts in the map behind it. Each cgroup's counts are its
//! slots' and its entry's together, exact either way, and a removed
//! cgroup's slot is folded into its parent and freed for the next one.
use std::collections::HashMap;

use cgacct_common::{maps, SLOTS};
use cgacct_pin::{bpffs::names::Pins, report::read};

use crate::{
    require_kernel,
    world::{stats_files, subtest, World},
};

/// Runs `f` with the calling thread (and so every process it starts) on
/// CPU 0 only: the two cgroups' packets meet on one CPU's slots.
fn on_cpu0<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: a zeroed cpu_set_t is the empty set; the calls take valid
    // pointers to it and act on the calling thread (pid 0).
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut old),
            0
        );
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut one);
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one), 0);
        let out = f();
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &old), 0);
        out
    }
}

#[test]
fn cgroups_sharing_a_slot_are_counted_apart_and_a_removed_one_frees_it() {
    require_kernel!();
    let mut w = World::new(&[]);
    // Cgroups until two share a slot index: at most SLOTS + 1 of them.
    let mut at: HashMap<u64, String> = HashMap::new();
    let mut pair = None;
    for i in 0..=SLOTS {
        let name = format!("s{i}.scope");
        w.add_cgroup(&name);
        let index = w.cgroup_id(&name) & u64::from(SLOTS - 1);
        if let Some(first) = at.insert(index, name.clone()) {
            pair = Some((first, name));
            break;
        }
    }
    let (a, b) = pair.expect("SLOTS + 1 cgroups share an index");
    let (id_a, id_b) = (w.cgroup_id(&a), w.cgroup_id(&b));
    eprintln!(
        "{a} (id {id_a}) and {b} (id {id_b}) share slot {}",
        id_a & u64::from(SLOTS - 1)
    );
    let layout = format!(
        "root = {:?}\n[tc]\ninterfaces = [{:?}]\n[cgroup_skb]\nattach = [\"/{r}\"]\n\
         [stats]\ncgroups = [\"/{r}\", \"/{r}/{a}\", \"/{r}/{b}\"]\n",
        w.root,
        w.host_if,
        r = w.cgroup_root
    );
    std::fs::write(&w.layout, layout).expect("layout");
    w.apply();
    let pins = Pins::new(&w.root, true);
    let slots = || read::slot_totals(&pins.map(maps::CGROUP_SLOTS)).expect("slots");
    let entries = || read::map_totals::<u64>(&pins.map(maps::CGROUP_STATS)).expect("map");
    // Below 5.19 the cgroup maps are shared hashes and no slot is taken:
    // the counts must be exact all the same.
    let shared = aya::maps::MapInfo::from_pin(pins.map(maps::CGROUP_STATS))
        .expect("map info")
        .map_type()
        .expect("map type")
        == aya::maps::MapType::Hash;
    if shared {
        eprintln!("note: shared counter maps on this kernel: no cgroup slots, counts checked alone");
    }
    const P: u64 = 64 + 28;

    subtest("first_holds_the_slot_second_counts_in_the_map", || {
        on_cpu0(|| {
            w.send_udp(&a, false, 5, 64);
            w.send_udp(&b, false, 7, 64);
        });
        assert_eq!(w.stat(&a)["self_tx_packets"], 5);
        assert_eq!(w.stat(&a)["self_tx_bytes"], 5 * P);
        assert_eq!(w.stat(&b)["self_tx_packets"], 7);
        assert_eq!(w.stat(&b)["self_tx_bytes"], 7 * P);
        assert_eq!(w.status_stat(&a)["self_tx_packets"], 5);
        assert_eq!(w.status_stat(&b)["self_tx_packets"], 7);
        if shared {
            return;
        }
        // Where the counts are: a in its slot, b in the map (on CPU 0).
        let (s, e) = (slots(), entries());
        assert_eq!(s.get(&id_a).map(|c| c.tx_packets), Some(5), "slots {s:?}");
        assert_eq!(s.get(&id_b), None, "slots {s:?}");
        assert_eq!(e.get(&id_b).map(|c| c.tx_packets), Some(7), "entries {e:?}");
        assert_eq!(e.get(&id_a).map_or(0, |c| c.tx_packets), 0, "entries {e:?}");
    });

    subtest("a_removed_holder_is_folded_and_frees_the_slot", || {
        std::fs::remove_dir(w.cgroup_mount.join(w.cgroup(&a))).expect("rmdir");
        let parent = w.stat("");
        assert_eq!(parent["tx_packets"], 12, "{parent:?}");
        assert_eq!(parent["tx_bytes"], 12 * P, "{parent:?}");
        assert_eq!(parent["removed_cgroups"], 1, "{parent:?}");
        assert_eq!(slots().get(&id_a), None);
        // The next packet of b on CPU 0 takes the freed slot.
        on_cpu0(|| w.send_udp(&b, false, 8, 64));
        if !shared {
            assert_eq!(slots().get(&id_b).map(|c| c.tx_packets), Some(8));
        }
        assert_eq!(w.stat(&b)["self_tx_packets"], 15);
        assert_eq!(w.stat(&b)["self_tx_bytes"], 15 * P);
        assert_eq!(w.stat("")["tx_packets"], 20);
    });
    if !stats_files() {
        eprintln!("note: no cgroup iterators here: net.stat keys came from status --json");
    }
}
