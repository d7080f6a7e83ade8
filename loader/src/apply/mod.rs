//! Executes a plan: the only layer that changes kernel state. Each action
//! is one function; every state-changing step is preceded by a fault point
//! (`sys::fault`), so a test can stop apply anywhere and check that the
//! next apply converges.
use std::{collections::BTreeSet, ffi::CString, fs, io, os::fd::AsFd as _, path::Path};

use anyhow::{anyhow, Context as _, Result};
use aya::programs::{
    links::CgroupAttachMode, links::FdLink, BtfTracePoint, CgroupSkb, CgroupSkbAttachType, Iter,
    SchedClassifier,
};
use cgacct_common::programs as prog;

use crate::{
    bpffs::{
        access,
        names::{self, LINKS_DIR, MAPS_DIR, PROGS_DIR},
        Direction, Pins,
    },
    observe::Observed,
    plan::Action,
    spec::Layout,
    sys::{
        self,
        bpf::{self, CgroupIterOrder},
    },
    tc,
};

pub mod classes;
pub mod destroy;
pub mod detach;
pub mod expedite;
pub mod gone;
pub mod health;
pub mod load;
pub mod owners;
pub mod prune;
pub mod replace;

pub use destroy::destroy;
pub use gone::Outcome;

/// How far `execute` got when an action failed.
#[derive(Debug, thiserror::Error)]
#[error("{done} of {total} actions done, then: {source:#}")]
pub struct Partial {
    pub done: usize,
    pub total: usize,
    pub source: anyhow::Error,
}

/// Runs `actions` in order, calling `report` after each one ends (done, or
/// skipped because its cgroup or interface went away meanwhile) and
/// `note` with a line about how they run (expedited grace periods);
/// `prefetch`: the kernel's BTF, parsed since before the plan.
pub fn execute(
    layout: &Layout,
    o: &Observed,
    actions: &[Action],
    prefetch: Option<load::Prefetch>,
    mut report: impl FnMut(&Action, &Outcome),
    mut note: impl FnMut(&str),
) -> Result<(), Partial> {
    let total = actions.len();
    let partial = |done, source| Partial { done, total, source };
    if actions.is_empty() {
        return Ok(());
    }
    let pins = &o.pins;
    let mut s = Session {
        replaced: actions
            .iter()
            .filter_map(|a| match a {
                Action::ReplaceMap { map, .. } => Some(map.clone()),
                _ => None,
            })
            .collect(),
        prefetch,
        ..Session::default()
    };
    for dir in [
        pins.root.join(PROGS_DIR),
        pins.root.join(MAPS_DIR),
        pins.tc_links(),
        pins.cgroup_links(),
    ] {
        names::create_dirs(&pins.root, &dir)
            .and_then(|()| access::settle(&layout.access, pins, &dir))
            .map_err(|e| partial(0, anyhow!("creating {}: {e}", dir.display())))?;
    }
    std::thread::scope(|scope| {
        let sh = Shared {
            layout,
            o,
            scope,
            load: load::Pending::default(),
        };
        // Opened at the first TCX attachment, closed (dropped) at the first
        // action after the TC attachments, and on every return.
        let mut window: Option<Option<expedite::Window>> = None;
        let mut done = 0;
        while done < total {
            let action = &actions[done];
            let tc = matches!(action, Action::AttachTc { .. });
            match &mut window {
                None if tc => window = Some(expedite_window(layout, o, &actions[done..], &mut note)),
                Some(w) if !tc => *w = None,
                _ => {}
            }
            if let Some((tc, cg)) = side_by_side(&actions[done..]) {
                let (first, second) = actions[done..done + cg].split_at(tc);
                let (n, failed) = run_side_by_side(&mut s, &sh, first, second, &mut report);
                if let Some(e) = failed {
                    return Err(partial(done + n, e));
                }
                done += cg;
                continue;
            }
            let outcome = step(&mut s, &sh, action).map_err(|e| partial(done, e))?;
            report(action, &outcome);
            done += 1;
        }
        sh.load.wait().map_err(|e| partial(done, e))
    })
}

/// What the threads of one `execute` share: the layout, what was
/// observed, the scope the program load runs on, and that load.
struct Shared<'scope, 'env> {
    layout: &'env Layout,
    o: &'env Observed,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    load: load::Pending<'scope>,
}

/// One action, unless a signal asked to stop. A failed action whose
/// cgroup or interface is gone is skipped ([`gone`]).
fn step(s: &mut Session, sh: &Shared<'_, '_>, action: &Action) -> Result<Outcome> {
    if let Some(sig) = expedite::Window::interrupted() {
        return Err(anyhow!("stopped by signal {sig}"));
    }
    let Err(e) = run(s, sh, action) else {
        return Ok(Outcome::Done);
    };
    let Some(why) = gone::why(sh.o, action) else {
        return Err(e.context(format!("failed to {action}")));
    };
    if let Action::AttachCgroup { pin, .. } | Action::PinStats { pin, .. } = action {
        remove_empty_parents(&sh.o.pins.root, pin);
    }
    Ok(Outcome::Gone(why))
}

/// Whether `action` can run while the last program still loads: it needs
/// only programs pinned before it.
fn runs_beside_load(action: &Action) -> bool {
    matches!(
        action,
        Action::LoadPrograms { .. }
            | Action::AttachTc { .. }
            | Action::AttachCgroup { .. }
            | Action::AttachRmdir { .. }
            | Action::AttachRelease { .. }
    )
}

/// Where `actions` start with TC attachments followed by cgroup
/// attachments and stats files: the ends of the two runs. The first waits
/// on the kernel (RTNL and a grace period per TCX link), the second takes
/// the cgroup mutex: each can go on while the other waits.
fn side_by_side(actions: &[Action]) -> Option<(usize, usize)> {
    let tc = actions
        .iter()
        .take_while(|a| matches!(a, Action::AttachTc { .. }))
        .count();
    let cg = actions[tc..]
        .iter()
        .take_while(|a| matches!(a, Action::AttachCgroup { .. } | Action::PinStats { .. }))
        .count();
    (tc > 0 && cg > 0).then_some((tc, tc + cg))
}

/// Runs `first` here and `second` on a thread beside it, each in order,
/// and reports those done, `first`'s as they are done, then `second`'s. A
/// failure on either side stops both after their current action: the
/// number done and the first error.
fn run_side_by_side(
    s: &mut Session,
    sh: &Shared<'_, '_>,
    first: &[Action],
    second: &[Action],
    report: &mut impl FnMut(&Action, &Outcome),
) -> (usize, Option<anyhow::Error>) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
    let stop_both = || stop.store(true, std::sync::atomic::Ordering::Relaxed);
    std::thread::scope(|scope| {
        let beside = scope.spawn(|| {
            // Programs opened from their pins, apart from this thread's.
            let mut s = Session::default();
            let mut outcomes = Vec::new();
            for a in second {
                if stopped() {
                    return (outcomes, None);
                }
                match step(&mut s, sh, a) {
                    Ok(o) => outcomes.push(o),
                    Err(e) => {
                        stop_both();
                        return (outcomes, Some(e));
                    }
                }
            }
            (outcomes, None)
        });
        let (mut n, mut failed) = (0, None);
        for a in first {
            if stopped() {
                break;
            }
            match step(s, sh, a) {
                Ok(o) => report(a, &o),
                Err(e) => {
                    stop_both();
                    failed = Some(e);
                    break;
                }
            }
            n += 1;
        }
        let (outcomes, beside_failed) = beside.join().unwrap_or_else(|_| {
            (
                Vec::new(),
                Some(anyhow!("the thread attaching to cgroups panicked")),
            )
        });
        second.iter().zip(&outcomes).for_each(|(a, o)| report(a, o));
        (n + outcomes.len(), failed.or(beside_failed))
    })
}

/// Expedited grace periods for a bulk TCX attach ([`expedite`]), unless
/// the layout turns them off; a failure to set them up only slows the
/// attach down.
fn expedite_window(
    layout: &Layout,
    o: &Observed,
    actions: &[Action],
    note: &mut impl FnMut(&str),
) -> Option<expedite::Window> {
    let n = actions
        .iter()
        .filter(|a| matches!(a, Action::AttachTc { .. }))
        .count();
    if n < expedite::BULK || !layout.tc_expedite_rcu || !o.tc().is_ok_and(|t| t.mode == tc::Mode::Tcx) {
        return None;
    }
    match expedite::Window::open(n, "attachments") {
        Ok(Some((w, line))) => {
            note(&line);
            Some(w)
        }
        Ok(None) => None,
        Err(e) => {
            note(&format!(
                "warning: not expediting RCU grace periods: {e:#} (the TCX attachments take longer)"
            ));
            None
        }
    }
}

/// State carried from one action to the next within one `execute`.
#[derive(Default)]
struct Session {
    /// Programs opened from their pins.
    tc: [Option<SchedClassifier>; 2],
    cg: [Option<CgroupSkb>; 2],
    iter: Option<Iter>,
    /// Maps being replaced: not reused at load.
    replaced: BTreeSet<String>,
    /// The kernel's BTF, parsed ahead for the load.
    prefetch: Option<load::Prefetch>,
}

fn run(s: &mut Session, sh: &Shared<'_, '_>, action: &Action) -> Result<()> {
    let (layout, o) = (sh.layout, sh.o);
    let pins = &o.pins;
    if !runs_beside_load(action) {
        sh.load.wait()?;
    }
    match action {
        Action::LoadPrograms { .. } => {
            let replaced = s.replaced.clone();
            let prefetch = s.prefetch.take();
            sh.load.start(sh.scope, move |ready| {
                load::load_programs(layout, pins, &replaced, &o.held.health, prefetch, ready)
            })
        }
        Action::ReplaceMap {
            map,
            pin,
            keep_counters,
            ..
        } => {
            sh.load.with_object(|ebpf| {
                let new = ebpf
                    .map_mut(map)
                    .ok_or_else(|| anyhow!("map {map} missing from the object"))?;
                replace::replace_map(map, pin, new, *keep_counters)
            })?;
            Ok(access::settle(&layout.access, pins, pin)?)
        }
        Action::UpdateLink { pin, program } => update_link(pins, pin, program),
        Action::AttachTc {
            interface,
            direction,
            pin,
            replace,
        } => attach_tc(layout, o, s, (interface, *direction, pin), replace.is_some()),
        Action::AttachCgroup {
            cgroup,
            direction,
            pin,
            replace,
            ..
        } => attach_cgroup(layout, o, s, (cgroup, *direction, pin), replace.is_some()),
        Action::PinStats {
            cgroup, pin, replace, ..
        } => pin_stats(layout, o, s, cgroup, pin, replace.is_some()),
        Action::AttachRmdir { pin, replace } => {
            attach_tracing(layout, pins, prog::CGROUP_RMDIR, pin, replace.is_some())
        }
        Action::AttachRelease { pin, replace } => {
            attach_tracing(layout, pins, prog::CGROUP_RELEASE, pin, replace.is_some())
        }
        Action::AttachHealth {
            program,
            pin,
            replace,
        } => {
            remove_old(pins, pin, replace.is_some())?;
            let mut attached = health::attach(pins, program)?;
            if let health::Attached::UsedUp = attached {
                load::reload_health(layout, pins, &o.held.health, program)?;
                attached = health::attach(pins, program)?;
            }
            match attached {
                health::Attached::Link(link) => pin_link(layout, pins, pin, link),
                health::Attached::NotLoaded => Ok(()),
                health::Attached::UsedUp => Err(anyhow!(
                    "{program} cannot be attached again after loading it anew"
                )),
            }
        }
        Action::Unpin { pin, .. } => {
            sys::fault::step();
            tc::attach::release(pins, pin)?;
            fs::remove_file(pin)?;
            remove_empty_parents(&pins.root, pin);
            Ok(())
        }
        Action::Detach(stray) => detach::detach(o, stray),
        Action::SetClasses { from, to } => classes::set(pins, from, to),
        Action::SetAccess { path, .. } => {
            sys::fault::step();
            Ok(access::settle(&layout.access, pins, path)?)
        }
    }
}

fn update_link(pins: &Pins, pin: &Path, program: &str) -> Result<()> {
    let link = bpf::obj_get(pin).with_context(|| format!("opening {}", pin.display()))?;
    let prog_pin = pins.prog(program);
    let p = bpf::obj_get(&prog_pin).with_context(|| format!("opening {}", prog_pin.display()))?;
    sys::fault::step();
    bpf::link_update(link.as_fd(), p.as_fd())?;
    Ok(())
}

fn attach_tc(
    layout: &Layout,
    o: &Observed,
    s: &mut Session,
    (interface, direction, pin): (&str, Direction, &Path),
    replace: bool,
) -> Result<()> {
    let pins = &o.pins;
    remove_old(pins, pin, replace)?;
    let i = direction as usize;
    if s.tc[i].is_none() {
        let name = [prog::TC_INGRESS, prog::TC_EGRESS][i];
        s.tc[i] = Some(SchedClassifier::from_pin(pins.prog(name))?);
    }
    let p = s.tc[i].as_mut().ok_or_else(|| anyhow!("tc program not open"))?;
    sys::fault::step();
    sys::fault::fail_tc()?;
    tc::attach::attach(pins, o.tc()?.mode, p, interface, direction, pin)?;
    Ok(access::settle(&layout.access, pins, pin)?)
}

fn attach_cgroup(
    layout: &Layout,
    o: &Observed,
    s: &mut Session,
    (cgroup, direction, pin): (&str, Direction, &Path),
    replace: bool,
) -> Result<()> {
    let pins = &o.pins;
    remove_old(pins, pin, replace)?;
    let i = direction as usize;
    let kind = [CgroupSkbAttachType::Ingress, CgroupSkbAttachType::Egress][i];
    if s.cg[i].is_none() {
        let name = [prog::CGROUP_INGRESS, prog::CGROUP_EGRESS][i];
        s.cg[i] = Some(CgroupSkb::from_pin(pins.prog(name), kind)?);
    }
    let p = s.cg[i]
        .as_mut()
        .ok_or_else(|| anyhow!("cgroup_skb program not open"))?;
    let dir = detach::open_cgroup(&o.cgroup_mount, cgroup)?;
    sys::fault::step();
    let id = p.attach(&dir, kind, CgroupAttachMode::Single)?;
    let link: FdLink = p.take_link(id)?.try_into()?;
    pin_link(layout, pins, pin, link)
}

fn pin_stats(
    layout: &Layout,
    o: &Observed,
    s: &mut Session,
    cgroup: &str,
    pin: &Path,
    replace: bool,
) -> Result<()> {
    let pins = &o.pins;
    remove_old(pins, pin, replace)?;
    if s.iter.is_none() {
        s.iter = Some(Iter::from_pin(pins.prog(prog::CGROUP_ITER))?);
    }
    let p = s
        .iter
        .as_ref()
        .ok_or_else(|| anyhow!("iterator program not open"))?;
    let dir = detach::open_cgroup(&o.cgroup_mount, cgroup)?;
    sys::fault::step();
    let link = bpf::cgroup_iter_link(p.fd()?.as_fd(), dir.as_fd(), CgroupIterOrder::DescendantsPre)?;
    if let Some(parent) = pin.parent() {
        names::create_dirs(&pins.root, parent)?;
    }
    let c = CString::new(pin.as_os_str().as_encoded_bytes())?;
    sys::fault::step();
    names::create_with_dots(pin, || bpf::obj_pin(link.as_fd(), &c).map_err(|e| e.io_error))?;
    Ok(access::settle(&layout.access, pins, pin)?)
}

fn attach_tracing(layout: &Layout, pins: &Pins, program: &str, pin: &Path, replace: bool) -> Result<()> {
    remove_old(pins, pin, replace)?;
    let mut p = BtfTracePoint::from_pin(pins.prog(program))?;
    sys::fault::step();
    let id = p.attach().with_context(|| {
        format!("attaching {program} to its tracepoint (needs BTF and CAP_BPF + CAP_PERFMON)")
    })?;
    let link: FdLink = p.take_link(id)?.into();
    pin_link(layout, pins, pin, link)
}

/// Removes the pin an attach action replaces (and a clsact filter it
/// stands for).
fn remove_old(pins: &Pins, pin: &Path, replace: bool) -> Result<()> {
    if replace {
        sys::fault::step();
        tc::attach::release(pins, pin)?;
        match fs::remove_file(pin) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", pin.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

fn pin_link(layout: &Layout, pins: &Pins, pin: &Path, link: FdLink) -> Result<()> {
    if let Some(parent) = pin.parent() {
        names::create_dirs(&pins.root, parent)?;
    }
    sys::fault::step();
    names::create_with_dots(pin, || link.pin(pin).map(drop).map_err(io::Error::other))?;
    access::settle(&layout.access, pins, pin)?;
    Ok(())
}

/// Removes directories left empty below `root`, from `path`'s parent up.
fn remove_empty_parents(root: &Path, path: &Path) {
    let keep = [
        root.join(LINKS_DIR).join("tc"),
        root.join(LINKS_DIR).join("cgroup"),
    ];
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || keep.iter().any(|k| k == d) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}
