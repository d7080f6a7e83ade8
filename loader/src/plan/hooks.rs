//! One planner per hook: TC links per interface, cgroup_skb links and
//! stats files per cgroup. `plan` runs them over the whole host; `watch`
//! runs the same ones for the objects a batch of events names, so the two
//! never disagree on an action or its reason.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::{Path, PathBuf},
};

use cgacct_common::programs as prog;

use super::action::Action;
use crate::{
    bpffs::{Direction, Pins},
    observe::{held::HeldProgram, Cgroup, Interface},
    spec::Layout,
    sys::bpf::{self, LinkState, LinkTarget},
};

/// Reasons an existing pin is removed, shared by `plan` and `watch`.
pub mod why {
    pub const INTERFACE_GONE: &str = "its interface is gone";
    pub const INTERFACE_UNMATCHED: &str = "no longer matches tc.interfaces";
    pub const CGROUP_GONE: &str = "its cgroup was removed";
    pub const CGROUP_UNLISTED: &str = "no longer in cgroup_skb.attach";
    pub const STATS_CGROUP_GONE: &str = "its cgroup was removed; the pin holds it";
    pub const STATS_UNLISTED: &str = "no longer in stats.cgroups";
    pub const UNREADABLE: &str = "the pin is not a readable link";
}

/// What the planners compare against.
pub struct Ctx<'a> {
    pub layout: &'a Layout,
    pub pins: &'a Pins,
    /// Link pins with what each holds (see [`crate::observe::Held::links`]).
    pub links: &'a HashMap<PathBuf, Option<LinkState>>,
    pub programs: &'a BTreeMap<&'static str, HeldProgram>,
    /// Whether the programs are loaded again by this plan.
    pub reload: bool,
    /// Whether this kernel gets stats files (cgroup iterators).
    pub stats_files: bool,
}

/// The actions of some planners, and the links they keep: those are moved
/// to the pinned program of their kind where they run another
/// ([`Hooks::finish`]).
#[derive(Default)]
pub struct Hooks {
    pub actions: Vec<Action>,
    keep: Vec<(PathBuf, &'static str)>,
}

/// A pinned link compared with what it should be.
enum Verdict {
    /// Right where it should be; `movable`: a link that can move to another
    /// program in place.
    Keep { movable: bool },
    /// Nothing there (None), or something to replace, and why.
    Attach(Option<String>),
}

/// The one verdict helper: no pin, an unreadable pin, or `judge` on what the
/// pin holds (Ok(movable) to keep it, Err(why) to replace it).
fn verdict(
    held: Option<&Option<LinkState>>,
    judge: impl FnOnce(&LinkState) -> Result<bool, String>,
) -> Verdict {
    match held {
        None => Verdict::Attach(None),
        Some(None) => Verdict::Attach(Some(why::UNREADABLE.into())),
        Some(Some(l)) => match judge(l) {
            Ok(movable) => Verdict::Keep { movable },
            Err(why) => Verdict::Attach(Some(why)),
        },
    }
}

fn unpin(what: &str, pin: &Path, reason: &str) -> Action {
    Action::Unpin {
        what: what.into(),
        pin: pin.to_path_buf(),
        reason: reason.into(),
    }
}

impl Hooks {
    fn judged(
        &mut self,
        v: Verdict,
        pin: &Path,
        program: &'static str,
        attach: impl FnOnce(Option<String>) -> Action,
    ) {
        match v {
            Verdict::Keep { movable: true } => self.keep.push((pin.to_path_buf(), program)),
            Verdict::Keep { movable: false } => {}
            Verdict::Attach(replace) => self.actions.push(attach(replace)),
        }
    }

    /// Both TC links of one interface the layout selects.
    pub fn tc(&mut self, c: &Ctx<'_>, iface: &Interface) {
        for direction in Direction::BOTH {
            let pin = c.pins.tc_link(&iface.name, direction);
            let program = [prog::TC_INGRESS, prog::TC_EGRESS][direction as usize];
            let attach_type = [bpf::TCX_INGRESS, bpf::TCX_EGRESS][direction as usize];
            let v = verdict(c.links.get(&pin), |l| match l.target {
                LinkTarget::Tcx { ifindex: 0, .. } => Err("defunct: its interface was deleted".into()),
                LinkTarget::Tcx { ifindex, .. } if ifindex != iface.ifindex => Err(format!(
                    "attached to ifindex {ifindex}, but {} is ifindex {} now",
                    iface.name, iface.ifindex
                )),
                LinkTarget::Clsact { attached: false } => Err("its clsact filter is gone".into()),
                LinkTarget::Clsact { .. }
                    if !c.reload && c.programs.get(program).map(|p| p.id) == Some(l.prog_id) =>
                {
                    Ok(false)
                }
                LinkTarget::Clsact { .. } => {
                    Err("a clsact filter cannot move to another program in place".into())
                }
                LinkTarget::Tcx { attach_type: t, .. } if t == attach_type => Ok(true),
                _ => Err("attached to another hook".into()),
            });
            self.judged(v, &pin.clone(), program, |replace| Action::AttachTc {
                interface: iface.name.clone(),
                direction,
                pin,
                replace,
            });
        }
    }

    /// Both cgroup_skb links of one cgroup the layout lists.
    pub fn cgroup_skb(&mut self, c: &Ctx<'_>, cg: &Cgroup) {
        for direction in Direction::BOTH {
            let pin = c.pins.cgroup_link(cg.id, direction);
            let program = [prog::CGROUP_INGRESS, prog::CGROUP_EGRESS][direction as usize];
            let attach_type = [bpf::CGROUP_INGRESS, bpf::CGROUP_EGRESS][direction as usize];
            let v = verdict(c.links.get(&pin), |l| match l.target {
                LinkTarget::Cgroup {
                    cgroup_id,
                    attach_type: t,
                } if cgroup_id == cg.id && t == attach_type => Ok(true),
                LinkTarget::Cgroup { cgroup_id: 0, .. } => Err("defunct: its cgroup was removed".into()),
                _ => Err("attached to another hook".into()),
            });
            self.judged(v, &pin.clone(), program, |replace| Action::AttachCgroup {
                cgroup: cg.display(),
                id: cg.id,
                direction,
                pin,
                replace,
            });
        }
    }

    /// The stats file of one cgroup the layout selects.
    pub fn stats(&mut self, c: &Ctx<'_>, cg: &Cgroup) {
        let pin = c.pins.stats_file(&cg.path);
        let v = verdict(c.links.get(&pin), |l| match l.target {
            LinkTarget::CgroupIter { cgroup_id, .. } if cgroup_id == cg.id => Ok(true),
            LinkTarget::CgroupIter { .. } => Err("its cgroup was removed and created again".into()),
            _ => Err("not a cgroup iterator".into()),
        });
        self.judged(v, &pin.clone(), prog::CGROUP_ITER, |replace| Action::PinStats {
            cgroup: cg.display(),
            id: cg.id,
            pin,
            replace,
        });
    }

    /// What one new cgroup calls for: its links and its stats file, as the
    /// layout selects it.
    pub fn cgroup(&mut self, c: &Ctx<'_>, cg: &Cgroup) {
        if c.layout.cgroup_skb_attach.iter().any(|p| p.matches(&cg.path)) {
            self.cgroup_skb(c, cg);
        }
        if c.stats_files && c.layout.stats_cgroups.iter().any(|p| p.matches(&cg.path)) {
            self.stats(c, cg);
        }
    }

    /// Unpins of the pins a removed cgroup left, among those held.
    pub fn cgroup_removed(&mut self, c: &Ctx<'_>, id: u64, path: &str) {
        let stats = c.pins.stats_file(path);
        if c.links.contains_key(&stats) {
            self.actions
                .push(unpin("stats file", &stats, why::STATS_CGROUP_GONE));
        }
        for direction in Direction::BOTH {
            let pin = c.pins.cgroup_link(id, direction);
            if c.links.contains_key(&pin) {
                self.actions
                    .push(unpin("cgroup_skb link", &pin, why::CGROUP_GONE));
            }
        }
    }

    /// Unpins of the TC links of an interface that is gone, among those held.
    pub fn interface_removed(&mut self, c: &Ctx<'_>, name: &str) {
        for direction in Direction::BOTH {
            let pin = c.pins.tc_link(name, direction);
            if c.links.contains_key(&pin) {
                self.actions.push(unpin("tc link", &pin, why::INTERFACE_GONE));
            }
        }
    }

    /// Unpins of every held TC link no selected interface wants.
    pub fn tc_unwanted(&mut self, c: &Ctx<'_>, interfaces: &[Interface], want: &HashSet<PathBuf>) {
        let names: BTreeSet<&str> = interfaces.iter().map(|i| i.name.as_str()).collect();
        for pin in unwanted(c.links, &c.pins.tc_links(), want) {
            let exists = parent_name(pin).and_then(|n| crate::bpffs::names::unescape(&n));
            let reason = match exists {
                Some(n) if names.contains(n.as_str()) => why::INTERFACE_UNMATCHED,
                _ => why::INTERFACE_GONE,
            };
            self.actions.push(unpin("tc link", pin, reason));
        }
    }

    /// Unpins of every held cgroup_skb link no listed cgroup wants.
    pub fn cgroup_skb_unwanted(&mut self, c: &Ctx<'_>, cgroups: &[Cgroup], want: &HashSet<PathBuf>) {
        let ids: BTreeSet<String> = cgroups.iter().map(|c| c.id.to_string()).collect();
        for pin in unwanted(c.links, &c.pins.cgroup_links(), want) {
            let reason = match parent_name(pin) {
                Some(id) if ids.contains(&id) => why::CGROUP_UNLISTED,
                _ => why::CGROUP_GONE,
            };
            self.actions.push(unpin("cgroup_skb link", pin, reason));
        }
    }

    /// Unpins of every held stats file no selected cgroup wants.
    pub fn stats_unwanted(&mut self, c: &Ctx<'_>, cgroups: &[Cgroup], want: &HashSet<PathBuf>) {
        let name = c.pins.stats_file_name();
        let links_dir = c.pins.root.join(crate::bpffs::names::LINKS_DIR);
        // A set: after many cgroups went, each unwanted file is looked up.
        let live: HashSet<u64> = cgroups.iter().map(|c| c.id).collect();
        let mut held: Vec<_> = c
            .links
            .iter()
            .filter(|(pin, _)| {
                pin.file_name()
                    .is_some_and(|n| n.as_encoded_bytes() == name.as_bytes())
                    && !under(pin, &links_dir)
                    && !want.contains(*pin)
            })
            .collect();
        held.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (pin, state) in held {
            let gone = matches!(state, Some(l) if matches!(l.target, LinkTarget::CgroupIter { cgroup_id, .. }
                if !live.contains(&cgroup_id)));
            let reason = if gone {
                why::STATS_CGROUP_GONE
            } else {
                why::STATS_UNLISTED
            };
            self.actions.push(unpin("stats file", pin, reason));
        }
    }

    /// The actions, with an `update_link` for each kept link that does not
    /// run the pinned program of its kind (or all of them when reloading).
    pub fn finish(mut self, c: &Ctx<'_>) -> Vec<Action> {
        for (pin, program) in self.keep {
            let current = c.links.get(&pin).and_then(|l| *l).map(|l| l.prog_id);
            let pinned = c.programs.get(program).map(|p| p.id);
            if c.reload || current != pinned {
                self.actions.push(Action::UpdateLink {
                    pin,
                    program: program.to_string(),
                });
            }
        }
        self.actions
    }
}

/// Held pins below `dir` that are not wanted, in path order.
fn unwanted<'a>(
    links: &'a HashMap<PathBuf, Option<LinkState>>,
    dir: &Path,
    want: &HashSet<PathBuf>,
) -> Vec<&'a PathBuf> {
    let mut out: Vec<_> = links
        .keys()
        .filter(|p| under(p, dir) && !want.contains(*p))
        .collect();
    out.sort_unstable();
    out
}

/// Whether `path` lies below `dir`, both made by joining names to the
/// root (no `.`, `..` or doubled `/`): a byte prefix ending at a `/`.
fn under(path: &Path, dir: &Path) -> bool {
    let (p, d) = (
        path.as_os_str().as_encoded_bytes(),
        dir.as_os_str().as_encoded_bytes(),
    );
    p.len() > d.len() && p.starts_with(d) && p[d.len()] == b'/'
}

/// `<dir>/<name>/<direction>` -> name.
fn parent_name(pin: &Path) -> Option<String> {
    Some(pin.parent()?.file_name()?.to_string_lossy().into_owned())
}
