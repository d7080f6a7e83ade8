//! `cgacct-pin watch`: keeps the kernel converged to the layout while
//! cgroups and interfaces come and go.
//!
//! Events drive it: cgroup `mkdir`/`rmdir` through inotify on cgroupfs
//! ([`CgroupTree`]), link creation and removal through rtnetlink
//! (RTMGRP_LINK). Each batch of events becomes the few actions it calls for
//! (pin the stats file of a new selected cgroup and attach cgroup_skb where
//! the layout says; attach TC to a new matching interface; unpin what a
//! removed cgroup or interface left), run through [`apply::execute`]. A full
//! reconcile (the same plan `apply` makes, against the followed tree: no
//! cgroupfs walk) runs at start, after lost events, and periodically as a
//! safety net. Owners of interfaces are looked for again shortly after each
//! change, and records of removed cgroups older than `keep_removed` are
//! pruned at each full reconcile.
//!
//! Nothing lives only in this process: everything is pinned, so killing it
//! loses no count, and a new watcher reconciles whatever changed meanwhile.
use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    apply::{self, Context},
    cgroup_tree::{poll_readable_any, CgroupTree, Change},
    held, host,
    layout::Layout,
    names::Direction,
    netlink::{LinkEvent, LinkEvents},
    owners,
    plan::{Action, MapPolicy},
    removed,
};

/// Where an action's result is pinned.
fn pin_of(a: &Action) -> Option<&PathBuf> {
    match a {
        Action::LoadPrograms { .. } | Action::Detach(_) => None,
        Action::AttachTc { pin, .. }
        | Action::AttachCgroup { pin, .. }
        | Action::PinStats { pin, .. }
        | Action::AttachRmdir { pin, .. }
        | Action::ReplaceMap { pin, .. }
        | Action::UpdateLink { pin, .. }
        | Action::Unpin { pin, .. } => Some(pin),
        Action::SetAccess { path, .. } => Some(path),
    }
}

/// How long the watcher waits for an `apply` or `destroy` holding the root.
const LOCK_WAIT: Duration = Duration::from_secs(60);

pub struct Options {
    /// Full reconcile at least this often.
    pub reconcile_every: Duration,
    /// Records of removed cgroups older than this are pruned.
    pub keep_removed: Duration,
}

/// Prints one line with a UTC time stamp (journald adds its own; plain
/// stdout readers get one).
fn log(line: &str) {
    use std::io::Write as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}.{:06} {line}", now.as_secs(), now.subsec_micros());
    let _ = out.flush();
}

struct Watcher {
    layout: Layout,
    ctx: Context,
    tree: CgroupTree,
    links: LinkEvents,
    opts: Options,
    owners_due: Option<Instant>,
}

impl Watcher {
    /// Refreshes the context from the followed tree and /sys/class/net (no
    /// cgroupfs walk).
    fn refresh(&mut self) -> Result<()> {
        self.ctx.cgroups = self.tree.cgroups();
        self.ctx.interfaces = host::interfaces()?;
        Ok(())
    }

    /// The root's lock, shared with `apply` and `destroy`: one of them
    /// changes the root at a time.
    fn lock(&self) -> Result<apply::RootLock> {
        apply::RootLock::take(&self.layout.root, LOCK_WAIT)
    }

    /// Runs `actions`; if the batch fails, runs them one by one so one
    /// failure (a cgroup gone meanwhile) does not hold back the others.
    fn run(&self, actions: &[Action]) {
        if actions.is_empty() {
            return;
        }
        let report = |a: &Action| log(&a.to_string());
        if apply::execute(&self.layout, &self.ctx, actions, report).is_ok() {
            return;
        }
        for a in actions {
            self.run_one(a);
        }
    }

    /// One action, unless a batch did it already; failures are logged.
    fn run_one(&self, a: &Action) {
        let done = match a {
            Action::Unpin { pin, .. } => !pin.exists(),
            other => pin_of(other).is_some_and(|p| p.exists()),
        };
        if done {
            return;
        }
        let report = |a: &Action| log(&a.to_string());
        if let Err(e) = apply::execute(&self.layout, &self.ctx, std::slice::from_ref(a), report) {
            log(&format!("warning: {e:#} (the next reconcile retries)"));
        }
    }

    fn full_reconcile(&mut self, why: &str) -> Result<()> {
        let _lock = self.lock()?;
        self.refresh()?;
        // What the kernel holds, read again: a full reconcile repairs drift
        // as `apply` does.
        self.ctx.held = held::read(
            &self.ctx.pins,
            &self.ctx.interfaces,
            &self.ctx.cgroups,
            &self.ctx.cgroup_mount,
        )?;
        let actions = self.ctx.plan(&self.layout, MapPolicy::Refuse)?;
        if !actions.is_empty() {
            log(&format!("reconcile ({why}): {} actions", actions.len()));
        }
        self.run(&actions);
        self.converge_owners();
        match removed::prune(&self.ctx.pins, self.opts.keep_removed) {
            Ok(0) => {}
            Ok(n) => log(&format!("pruned {n} records of removed cgroups")),
            Err(e) => log(&format!("warning: pruning removed records: {e:#}")),
        }
        Ok(())
    }

    fn converge_owners(&mut self) {
        self.owners_due = None;
        if self.layout.tc_owners.is_empty() && !self.layout.tc_discover_owners {
            return;
        }
        if let Err(e) = owners::converge(&self.layout, &self.ctx, |l| log(&l)) {
            log(&format!("warning: interface owners: {e:#}"));
        }
    }

    /// The actions a batch of events calls for.
    fn actions_for(&self, cgroups: &[Change], links: &[LinkEvent]) -> Vec<Action> {
        let (layout, pins) = (&self.layout, &self.ctx.pins);
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        let mut push = |a: Action, out: &mut Vec<Action>| {
            if let Some(p) = pin_of(&a) {
                if !seen.insert(p.clone()) {
                    return;
                }
            }
            out.push(a);
        };
        for c in cgroups {
            match c {
                Change::Created { id, path } => {
                    // Only if it still exists now (made and removed within the batch).
                    if self.tree.get(*id).is_none() {
                        continue;
                    }
                    let display = format!("/{path}");
                    if layout.cgroup_skb_attach.iter().any(|p| p.matches(path)) {
                        for direction in Direction::BOTH {
                            let pin = pins.cgroup_link(*id, direction);
                            if !pin.exists() {
                                push(
                                    Action::AttachCgroup {
                                        cgroup: display.clone(),
                                        id: *id,
                                        direction,
                                        pin,
                                        replace: None,
                                    },
                                    &mut out,
                                );
                            }
                        }
                    }
                    if layout.stats_cgroups.iter().any(|p| p.matches(path)) {
                        let pin = pins.stats_file(path);
                        if !pin.exists() {
                            push(
                                Action::PinStats {
                                    cgroup: display,
                                    id: *id,
                                    pin,
                                    replace: None,
                                },
                                &mut out,
                            );
                        }
                    }
                }
                Change::Removed { id, path } => {
                    // A cgroup of the same path made again meanwhile keeps its file.
                    if self.tree.by_path(path).is_some() {
                        continue;
                    }
                    let stats = pins.stats_file(path);
                    if stats.exists() {
                        push(
                            Action::Unpin {
                                what: "stats file".into(),
                                pin: stats,
                                reason: "its cgroup was removed".into(),
                            },
                            &mut out,
                        );
                    }
                    for direction in Direction::BOTH {
                        let pin = pins.cgroup_link(*id, direction);
                        if pin.exists() {
                            push(
                                Action::Unpin {
                                    what: "cgroup_skb link".into(),
                                    pin,
                                    reason: "its cgroup was removed".into(),
                                },
                                &mut out,
                            );
                        }
                    }
                }
            }
        }
        for ev in links {
            match ev {
                LinkEvent::New(l) => {
                    // Renamed or gone since the event: the next reconcile sees.
                    let exists = self
                        .ctx
                        .interfaces
                        .iter()
                        .any(|i| i.ifindex == l.ifindex && i.name == l.name);
                    if !exists || !layout.tc_interfaces.iter().any(|p| p.matches(&l.name)) {
                        continue;
                    }
                    for direction in Direction::BOTH {
                        let pin = pins.tc_link(&l.name, direction);
                        if !pin.exists() {
                            push(
                                Action::AttachTc {
                                    interface: l.name.clone(),
                                    direction,
                                    pin,
                                    replace: None,
                                },
                                &mut out,
                            );
                        }
                    }
                }
                LinkEvent::Del(l) => {
                    if self.ctx.interfaces.iter().any(|i| i.name == l.name) {
                        continue; // a new interface took the name
                    }
                    for direction in Direction::BOTH {
                        let pin = pins.tc_link(&l.name, direction);
                        if pin.exists() {
                            push(
                                Action::Unpin {
                                    what: "tc link".into(),
                                    pin,
                                    reason: "its interface is gone".into(),
                                },
                                &mut out,
                            );
                        }
                    }
                }
                LinkEvent::Overflow => {}
            }
        }
        out
    }

    fn step(&mut self, wait: Duration) -> Result<()> {
        let fds = [self.tree.raw_fd().unwrap_or(-1), self.links.raw_fd()];
        if !poll_readable_any(&fds, wait)? {
            return Ok(());
        }
        let walks = self.tree.walks;
        let cgroups = self.tree.drain().context("following cgroupfs")?;
        let links = self.links.drain()?;
        if self.tree.walks != walks || links.contains(&LinkEvent::Overflow) {
            return self.full_reconcile("events were lost");
        }
        if cgroups.is_empty() && links.is_empty() {
            return Ok(());
        }
        let lock = self.lock()?;
        self.refresh()?;
        let actions = self.actions_for(&cgroups, &links);
        self.run(&actions);
        drop(lock);
        let discover = self.layout.tc_discover_owners || !self.layout.tc_owners.is_empty();
        let created = cgroups.iter().any(|c| matches!(c, Change::Created { .. }));
        if discover && (!links.is_empty() || created) && self.owners_due.is_none() {
            // Processes join a new container's namespace after its veth
            // exists: look a little later (later events do not postpone it).
            self.owners_due = Some(Instant::now() + Duration::from_millis(500));
        }
        Ok(())
    }
}

pub fn run(layout_path: &std::path::Path, root: Option<PathBuf>, opts: Options) -> Result<()> {
    let mut layout = Layout::from_path(layout_path)?;
    crate::tc_attach::prefer(layout.tc_attach);
    if let Some(r) = root {
        layout.root = r;
    }
    // Event sources first, so nothing between them and the first reconcile is missed.
    let mount = host::cgroup2_mount()?;
    let tree = CgroupTree::follow(&mount)?;
    let links = LinkEvents::open()?;
    host::check_privileges()?;
    host::check_on_bpffs(&layout.root)?;
    apply::create_root(&layout.root)?;
    let ctx = Context::discover(&layout)?;
    let mut w = Watcher {
        layout,
        ctx,
        tree,
        links,
        opts,
        owners_due: None,
    };
    w.full_reconcile("start")?;
    log(&format!(
        "watching {} cgroups below {} and this namespace's links; full reconcile every {}s",
        w.tree.len(),
        mount.display(),
        w.opts.reconcile_every.as_secs()
    ));
    let mut next_full = Instant::now() + w.opts.reconcile_every;
    loop {
        let now = Instant::now();
        if now >= next_full {
            w.full_reconcile("periodic")?;
            next_full = Instant::now() + w.opts.reconcile_every;
            continue;
        }
        if w.owners_due.is_some_and(|t| now >= t) {
            w.refresh()?;
            w.converge_owners();
        }
        let mut wait = next_full - now;
        if let Some(t) = w.owners_due {
            wait = wait.min(t.saturating_duration_since(now));
        }
        w.step(wait)?;
    }
}
