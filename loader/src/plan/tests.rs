//! The planners against observed states built by hand: no kernel, no files.
use std::path::{Path, PathBuf};

use cgacct_common::{maps, programs as prog};

use super::{plan, Action, MapPolicy};
use crate::{
    bpffs::{walk::Entry, walk::Tree, Direction, Pins},
    object::{self, PROGRAMS},
    observe::{held::HeldProgram, kernel::Features, Cgroup, Held, Interface, Observed},
    spec::Layout,
    sys::bpf::{LinkState, LinkTarget, CGROUP_EGRESS, CGROUP_INGRESS, TCX_EGRESS, TCX_INGRESS},
};

const ROOT: &str = "/sys/fs/bpf/t";

fn layout(extra: &str) -> Layout {
    Layout::parse(&format!(
        "root = {ROOT:?}\n[tc]\ninterfaces = [\"veth*\"]\n[cgroup_skb]\nattach = [\"/app\"]\n\
         [stats]\ncgroups = [\"/app/**\"]\n{extra}"
    ))
    .expect("layout")
}

fn pins() -> Pins {
    Pins::new(Path::new(ROOT), true)
}

fn host() -> (Vec<Interface>, Vec<Cgroup>) {
    let veth = Interface {
        name: "veth1".into(),
        ifindex: 7,
    };
    let cgroups = [("", 1), ("app", 10), ("app/web", 11)]
        .map(|(path, id)| Cgroup {
            path: path.into(),
            id,
        })
        .to_vec();
    (vec![veth], cgroups)
}

fn link(id: u32, prog_id: u32, target: LinkTarget) -> Option<LinkState> {
    Some(LinkState { id, prog_id, target })
}

/// What the kernel holds once `layout()` is applied: programs 1..=7, maps
/// of the wanted shapes, every link where it belongs.
fn converged(l: &Layout) -> Held {
    let p = pins();
    let mut held = Held {
        build: Some(object::this_build()),
        ..Held::default()
    };
    for (i, name) in PROGRAMS.iter().enumerate() {
        held.programs.insert(name, HeldProgram { id: i as u32 + 1 });
    }
    let id = |name: &str| held.programs[name].id;
    let (tc_in, tc_eg, cg_in, cg_eg, iter, rmdir, release) = (
        id(prog::TC_INGRESS),
        id(prog::TC_EGRESS),
        id(prog::CGROUP_INGRESS),
        id(prog::CGROUP_EGRESS),
        id(prog::CGROUP_ITER),
        id(prog::CGROUP_RMDIR),
        id(prog::CGROUP_RELEASE),
    );
    held.maps = object::all_wanted_maps(&l.maps, object::Kernel::FULL)
        .into_iter()
        .collect();
    let tcx = |attach_type| LinkTarget::Tcx {
        ifindex: 7,
        attach_type,
    };
    let cg = |attach_type| LinkTarget::Cgroup {
        cgroup_id: 10,
        attach_type,
    };
    let stats = |cgroup_id| LinkTarget::CgroupIter { cgroup_id, order: 2 };
    let links = [
        (
            p.tc_link("veth1", Direction::Ingress),
            link(20, tc_in, tcx(TCX_INGRESS)),
        ),
        (
            p.tc_link("veth1", Direction::Egress),
            link(21, tc_eg, tcx(TCX_EGRESS)),
        ),
        (
            p.cgroup_link(10, Direction::Ingress),
            link(22, cg_in, cg(CGROUP_INGRESS)),
        ),
        (
            p.cgroup_link(10, Direction::Egress),
            link(23, cg_eg, cg(CGROUP_EGRESS)),
        ),
        (p.stats_file("app"), link(24, iter, stats(10))),
        (p.stats_file("app/web"), link(25, iter, stats(11))),
        (
            p.rmdir_link(),
            link(26, rmdir, LinkTarget::Other { link_type: 2 }),
        ),
        (
            p.release_link(),
            link(27, release, LinkTarget::Other { link_type: 2 }),
        ),
    ];
    held.links = links.into_iter().collect();
    held
}

fn observed(held: Held, tree: Tree) -> Observed {
    let (interfaces, cgroups) = host();
    Observed::new(pins(), interfaces, cgroups, tree, held)
}

fn kinds(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| {
            serde_json::to_value(a).expect("json")["action"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

#[test]
fn from_nothing_everything_is_made_in_order() {
    let l = layout("");
    let actions = plan(&l, &observed(Held::default(), Tree::default()), MapPolicy::Refuse).expect("plan");
    assert_eq!(
        kinds(&actions),
        [
            "load_programs",
            "attach_rmdir",
            "attach_release",
            "attach_tc",
            "attach_tc",
            "attach_cgroup",
            "attach_cgroup",
            "pin_stats",
            "pin_stats"
        ]
    );
    assert_eq!(
        actions[0],
        Action::LoadPrograms {
            reason: "programs are missing".into()
        }
    );
    assert!(
        matches!(&actions[8], Action::PinStats { id: 11, pin, replace: None, .. }
        if pin.as_path() == Path::new("/sys/fs/bpf/t/app/web/net.stat"))
    );
}

/// A kernel without cgroup iterators (nor `bpf_map_lookup_percpu_elem`).
const NO_ITER: Features = Features {
    cgroup_iter: false,
    percpu_lookup: false,
};

/// [`converged`] on a kernel without iterators: no iterator program, no
/// stats files, shared counter maps.
fn converged_without_iterators(l: &Layout) -> Held {
    let p = pins();
    let mut held = converged(l);
    held.programs.remove(prog::CGROUP_ITER);
    held.links.remove(&p.stats_file("app"));
    held.links.remove(&p.stats_file("app/web"));
    held.maps = object::all_wanted_maps(&l.maps, NO_ITER.object())
        .into_iter()
        .collect();
    held
}

#[test]
fn without_cgroup_iterators_everything_but_stats_files_is_made() {
    let l = layout("");
    let mut o = observed(Held::default(), Tree::default());
    o.kernel = NO_ITER;
    let actions = plan(&l, &o, MapPolicy::Refuse).expect("plan");
    assert_eq!(
        kinds(&actions),
        [
            "load_programs",
            "attach_rmdir",
            "attach_release",
            "attach_tc",
            "attach_tc",
            "attach_cgroup",
            "attach_cgroup",
        ]
    );
    let mut o = observed(converged_without_iterators(&l), Tree::default());
    o.kernel = NO_ITER;
    assert_eq!(plan(&l, &o, MapPolicy::Refuse).expect("plan"), []);
    // The counter maps are shared hashes there: per-CPU ones would be
    // replaced (refused without a map policy).
    let mut o = observed(converged(&l), Tree::default());
    o.kernel = NO_ITER;
    o.held.links.remove(&pins().stats_file("app"));
    o.held.links.remove(&pins().stats_file("app/web"));
    let err = plan(&l, &o, MapPolicy::Refuse).expect_err("per-CPU maps on a kernel without the helper");
    assert!(format!("{err:#}").contains("cgroup_stats"), "{err:#}");
}

#[test]
fn a_converged_kernel_needs_nothing() {
    let l = layout("");
    let actions = plan(&l, &observed(converged(&l), Tree::default()), MapPolicy::Refuse).expect("plan");
    assert_eq!(actions, []);
}

#[test]
fn drift_is_named_link_by_link() {
    let l = layout("");
    let p = pins();
    let mut held = converged(&l);
    // The veth was deleted (defunct link), a cgroup link runs an old
    // program, a stats file's cgroup is gone, a pin is no link.
    let tc_in = p.tc_link("veth1", Direction::Ingress);
    held.links.insert(
        tc_in.clone(),
        link(
            20,
            3,
            LinkTarget::Tcx {
                ifindex: 0,
                attach_type: TCX_INGRESS,
            },
        ),
    );
    let cg_eg = p.cgroup_link(10, Direction::Egress);
    held.links.insert(
        cg_eg.clone(),
        link(
            23,
            99,
            LinkTarget::Cgroup {
                cgroup_id: 10,
                attach_type: CGROUP_EGRESS,
            },
        ),
    );
    let gone = p.stats_file("app/old");
    held.links.insert(
        gone.clone(),
        link(
            30,
            6,
            LinkTarget::CgroupIter {
                cgroup_id: 12,
                order: 2,
            },
        ),
    );
    held.links.insert(p.stats_file("app/web"), None);
    let actions = plan(&l, &observed(held, Tree::default()), MapPolicy::Refuse).expect("plan");
    let text: Vec<String> = actions.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            format!("replace (defunct: its interface was deleted): attach tc ingress to veth1 -> {}", tc_in.display()),
            "replace (the pin is not a readable link): pin stats of /app/web -> /sys/fs/bpf/t/app/web/net.stat".into(),
            format!("unpin stats file {} (its cgroup was removed; the pin holds it)", gone.display()),
            format!("update link {} to program {}", cg_eg.display(), prog::CGROUP_EGRESS),
        ]
    );
}

#[test]
fn a_new_build_reloads_and_moves_every_movable_link() {
    let l = layout("");
    let mut held = converged(&l);
    held.build = Some(object::this_build() ^ 1);
    let actions = plan(&l, &observed(held, Tree::default()), MapPolicy::Refuse).expect("plan");
    let k = kinds(&actions);
    assert_eq!(k[0], "load_programs");
    // The tracing links cannot move: replaced; the six others move in place.
    assert_eq!(k[1], "attach_rmdir");
    assert_eq!(k[2], "attach_release");
    assert_eq!(k.iter().filter(|k| *k == "update_link").count(), 6, "{k:?}");
    assert_eq!(k.len(), 9, "{k:?}");
}

/// A root made by a build before `cgroup_release`, `DYING` and `OVERFLOW`:
/// one load reuses every pinned map and makes the new ones, every link
/// moves or is replaced, nothing asks about maps.
#[test]
fn an_older_build_without_the_new_program_and_maps_is_upgraded_in_place() {
    let l = layout("");
    let mut held = converged(&l);
    held.build = Some(object::this_build() ^ 1);
    held.programs.remove(prog::CGROUP_RELEASE);
    held.maps.remove(maps::DYING);
    held.maps.remove(maps::OVERFLOW);
    held.links.remove(&pins().release_link());
    let actions = plan(&l, &observed(held, Tree::default()), MapPolicy::Refuse).expect("plan");
    let k = kinds(&actions);
    assert_eq!(
        actions[0],
        Action::LoadPrograms {
            reason: "programs are missing".into()
        }
    );
    assert!(
        matches!(&actions[1], Action::AttachRmdir { replace: Some(_), .. }),
        "{k:?}"
    );
    assert!(
        matches!(&actions[2], Action::AttachRelease { replace: None, .. }),
        "{k:?}"
    );
    assert_eq!(k.iter().filter(|k| *k == "update_link").count(), 6, "{k:?}");
    assert!(!k.iter().any(|k| k == "replace_map"), "{k:?}");
    assert_eq!(k.len(), 9, "{k:?}");
}

#[test]
fn a_map_of_another_shape_is_refused_unless_migrated() {
    let l = layout("[maps]\ncgroups = 128\n");
    let mut held = converged(&l);
    let shape = held.maps[maps::CGROUP_STATS];
    held.maps.insert(
        maps::CGROUP_STATS,
        object::MapShape {
            max_entries: 64,
            ..shape
        },
    );
    let o = observed(held, Tree::default());
    let e = format!("{:#}", plan(&l, &o, MapPolicy::Refuse).expect_err("refused"));
    assert!(e.contains("--migrate-maps") && e.contains("--reset-maps"), "{e}");
    let actions = plan(&l, &o, MapPolicy::Migrate).expect("plan");
    assert_eq!(
        actions[0],
        Action::LoadPrograms {
            reason: "maps are replaced".into()
        }
    );
    assert!(
        matches!(actions.last(), Some(Action::ReplaceMap { keep_counters: true, to, .. }) if to.max_entries == 128)
    );
}

#[test]
fn an_earlier_builds_iface_stats_is_converted_with_its_counters() {
    let l = layout("");
    let mut held = converged(&l);
    let shape = held.maps[maps::IFACE_STATS];
    let earlier = object::MapShape {
        value_size: size_of::<cgacct_common::Counters>() as u32,
        ..shape
    };
    held.maps.insert(maps::IFACE_STATS, earlier);
    let mut resized = converged(&l);
    resized.maps.insert(
        maps::IFACE_STATS,
        object::MapShape {
            max_entries: 64,
            ..earlier
        },
    );
    let o = observed(held, Tree::default());
    for policy in [MapPolicy::Refuse, MapPolicy::Migrate] {
        let actions = plan(&l, &o, policy).expect("an upgrade needs no flag");
        assert!(
            matches!(actions.last(), Some(Action::ReplaceMap { keep_counters: true, from, to, .. })
                if *from == earlier && *to == shape),
            "{actions:?}"
        );
    }
    let actions = plan(&l, &o, MapPolicy::Reset).expect("plan");
    assert!(
        matches!(
            actions.last(),
            Some(Action::ReplaceMap {
                keep_counters: false,
                ..
            })
        ),
        "{actions:?}"
    );
    // Resized as well: the user's choice again.
    let o = observed(resized, Tree::default());
    let e = format!("{:#}", plan(&l, &o, MapPolicy::Refuse).expect_err("refused"));
    assert!(e.contains("--migrate-maps"), "{e}");
}

#[test]
fn access_drift_comes_from_the_tree_not_the_disk() {
    let l = layout("");
    let entry = |path: &str, is_dir, mode| Entry {
        path: PathBuf::from(path),
        is_dir,
        uid: 0,
        gid: 0,
        mode,
    };
    let tree = Tree {
        entries: vec![
            entry(ROOT, true, 0o755),
            entry("/sys/fs/bpf/t/app", true, 0o755),
            entry("/sys/fs/bpf/t/app/net.stat", false, 0o644),
            entry("/sys/fs/bpf/t/maps", true, 0o700),
        ],
    };
    let actions = plan(&l, &observed(converged(&l), tree), MapPolicy::Refuse).expect("plan");
    assert_eq!(
        actions,
        [Action::SetAccess {
            path: "/sys/fs/bpf/t/app/net.stat".into(),
            uid: 0,
            gid: 0,
            mode: "0444".into()
        }]
    );
}

#[test]
fn class_tables_are_written_when_they_differ_and_only_then() {
    use crate::spec::classes::ClassTable;
    let l = layout("[classes]\ncluster = [\"10.0.0.0/8\", \"fd00::/8\"]\n");
    let (interfaces, cgroups) = host();
    let mut held = converged(&l);
    held.classes = Some(ClassTable::default());
    let o = Observed::new(pins(), interfaces.clone(), cgroups.clone(), Tree::default(), held);
    let actions = plan(&l, &o, MapPolicy::Refuse).expect("plan");
    let [Action::SetClasses { from, to }] = actions.as_slice() else {
        panic!("{actions:#?}");
    };
    assert_eq!(*from, ClassTable::default());
    assert_eq!(
        (to.indices, to.names[&1].as_str(), to.prefixes.len()),
        (2, "cluster", 2)
    );
    let text = actions[0].to_string();
    assert!(text.contains("new cluster [10.0.0.0/8, fd00::/8]"), "{text}");
    // Once written, nothing to do; without [classes], the tables are cleared.
    let mut held = converged(&l);
    held.classes = Some(to.clone());
    let o = Observed::new(pins(), interfaces, cgroups, Tree::default(), held);
    assert!(plan(&l, &o, MapPolicy::Refuse).expect("plan").is_empty());
    let off = plan(&layout(""), &o, MapPolicy::Refuse).expect("plan");
    assert!(off[0].to_string().contains("off"), "{off:?}");
}
