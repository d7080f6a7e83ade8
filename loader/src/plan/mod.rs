//! The difference between what the layout asks for and what was observed:
//! a list of actions. Pure: [`plan`] reads no file and makes no call, so
//! tests build observed states by hand and check the actions.
//!
//! One planner per kind of thing ([`programs`]: programs, maps, the
//! tracepoint links; [`hooks`]: TC, cgroup_skb, stats files; [`access`]:
//! owners and modes), each judging pinned links with one verdict helper.
use std::{collections::HashSet, path::PathBuf};

use anyhow::Result;

use crate::{
    bpffs::Direction,
    observe::{Cgroup, Observed},
    spec::{select::CgroupPattern, Layout},
};

pub mod access;
pub mod action;
pub mod check;
pub mod classes;
pub mod health;
pub mod hooks;
pub mod programs;

pub use action::{Action, MapPolicy};

#[cfg(test)]
mod tests;
pub use check::{check_names, unmatched, Unmatched};

/// The actions that bring what was observed to the layout, in the order
/// `apply` runs them: programs and maps first, then the tracepoint links, TC,
/// cgroup_skb and stats files (attachments, then unpins), links moved to
/// the pinned programs, strays detached, maps swapped, class tables
/// written, access settled.
pub fn plan(layout: &Layout, o: &Observed, maps: MapPolicy) -> Result<Vec<Action>> {
    let k = o.kernel.object();
    let replace_maps = programs::replace_maps(layout, &o.pins, &o.held, maps, k)?;
    let reason = programs::load_reason(&o.held, !replace_maps.is_empty(), k);
    let reload = reason.is_some();
    let mut actions: Vec<Action> = reason
        .map(|reason| Action::LoadPrograms { reason })
        .into_iter()
        .collect();
    actions.extend(programs::tracing_links(&o.pins, &o.held, reload));
    actions.extend(health::links(&o.pins, &o.held, reload));

    let c = hooks::Ctx {
        layout,
        pins: &o.pins,
        links: &o.held.links,
        programs: &o.held.programs,
        reload,
        stats_files: k.stats_files,
    };
    let mut h = hooks::Hooks::default();
    let tc: Vec<_> = o
        .interfaces
        .iter()
        .filter(|i| layout.tc_interfaces.iter().any(|p| p.matches(&i.name)))
        .collect();
    tc.iter().for_each(|i| h.tc(&c, i));
    let want: HashSet<_> = tc
        .iter()
        .flat_map(|i| both(|d| o.pins.tc_link(&i.name, d)))
        .collect();
    h.tc_unwanted(&c, &o.interfaces, &want);

    let listed = |list: &[CgroupPattern]| -> Vec<&Cgroup> {
        o.cgroups
            .iter()
            .filter(|cg| list.iter().any(|p| p.matches(&cg.path)))
            .collect()
    };
    let skb = listed(&layout.cgroup_skb_attach);
    skb.iter().for_each(|cg| h.cgroup_skb(&c, cg));
    let want: HashSet<_> = skb
        .iter()
        .flat_map(|cg| both(|d| o.pins.cgroup_link(cg.id, d)))
        .collect();
    h.cgroup_skb_unwanted(&c, &o.cgroups, &want);

    // Without cgroup iterators there are no stats files: the readers
    // compute the same sums from the maps.
    let stats = match k.stats_files {
        true => listed(&layout.stats_cgroups),
        false => Vec::new(),
    };
    stats.iter().for_each(|cg| h.stats(&c, cg));
    let want: HashSet<_> = stats.iter().map(|cg| o.pins.stats_file(&cg.path)).collect();
    h.stats_unwanted(&c, &o.cgroups, &want);

    actions.extend(h.finish(&c));
    actions.extend(o.held.strays.iter().cloned().map(Action::Detach));
    // Replaced maps are swapped in once every link runs the new programs.
    actions.extend(replace_maps);
    actions.extend(classes::plan(layout, &o.held));
    actions.extend(access::drift(layout, &o.pins, &o.tree));
    Ok(actions)
}

/// The pins of both directions.
fn both(pin: impl Fn(Direction) -> PathBuf) -> [PathBuf; 2] {
    Direction::BOTH.map(pin)
}
