//! `cgacct-pin watch`: keeps the kernel converged to the layout while
//! cgroups and interfaces come and go.
//!
//! Events drive it: cgroup `mkdir`/`rmdir` through inotify on cgroupfs
//! ([`CgroupTree`]), link creation and removal through rtnetlink
//! ([`LinkEvents`]). Each batch of events becomes the few actions it calls
//! for, from the same per-hook planners as `plan` ([`hooks`]), run through
//! [`apply::execute`]. A full reconcile (the same plan `apply` makes,
//! against the followed tree: no cgroupfs walk) runs at start, after lost
//! events, and periodically as a safety net. Owners of interfaces are
//! looked for again shortly after each change, and records of removed
//! cgroups older than `keep_removed` are pruned at each full reconcile.
//!
//! Nothing lives only in this process: everything is pinned, so killing it
//! loses no count, and a new watcher reconciles whatever changed meanwhile.
use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    cgroup_tree::{CgroupTree, Change},
    link_events::{LinkEvent, LinkEvents},
};
use crate::{
    apply::{self, owners, prune},
    bpffs::{self, root::RootLock, Direction},
    observe::{held, host, runtime, Cgroup, Interface, Observed},
    plan::{
        self,
        hooks::{Ctx, Hooks},
        Action, MapPolicy,
    },
    spec::Layout,
    sys,
};

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

pub struct Watcher {
    layout: Layout,
    obs: Observed,
    tree: CgroupTree,
    links: LinkEvents,
    opts: Options,
    owners_due: Option<Instant>,
    /// Names of containers, asked when their cgroups appear and
    /// remembered for the records of removed cgroups.
    names: runtime::resolver::Resolver,
}

impl Watcher {
    /// Opens the event sources first, so nothing between them and the
    /// first reconcile is missed, then checks the host and looks at what
    /// the kernel holds. Changes nothing but creating the root.
    pub fn start(layout: Layout, opts: Options) -> Result<Watcher> {
        let mount = host::cgroup2_mount()?;
        let tree = CgroupTree::follow(&mount)?;
        let links = LinkEvents::open()?;
        host::check_privileges()?;
        bpffs::root::check_on_bpffs(&layout.root)?;
        bpffs::root::create(&layout.root)?;
        let obs = Observed::discover(&layout)?;
        let names = runtime::resolver_for(&layout.root);
        Ok(Watcher {
            names,
            layout,
            obs,
            tree,
            links,
            opts,
            owners_due: None,
        })
    }

    /// Reconciles, then follows events until an error stops it.
    pub fn run(mut self) -> Result<()> {
        self.full_reconcile("start")?;
        log(&format!(
            "watching {} cgroups below {} and this namespace's links; full reconcile every {}s",
            self.tree.len(),
            self.tree.mount().display(),
            self.opts.reconcile_every.as_secs()
        ));
        let mut next_full = Instant::now() + self.opts.reconcile_every;
        loop {
            let now = Instant::now();
            if now >= next_full {
                self.full_reconcile("periodic")?;
                next_full = Instant::now() + self.opts.reconcile_every;
                continue;
            }
            if self.owners_due.is_some_and(|t| now >= t) {
                self.refresh()?;
                self.converge_owners();
            }
            let mut wait = next_full - now;
            if let Some(t) = self.owners_due {
                wait = wait.min(t.saturating_duration_since(now));
            }
            self.step(wait)?;
        }
    }

    /// Refreshes the host lists from the followed tree and /sys/class/net
    /// (no cgroupfs walk).
    fn refresh(&mut self) -> Result<()> {
        self.obs.cgroups = self.tree.cgroups();
        self.obs.interfaces = host::interfaces()?;
        Ok(())
    }

    /// The root's lock, shared with `apply` and `destroy`: one of them
    /// changes the root at a time.
    fn lock(&self) -> Result<RootLock> {
        RootLock::take(&self.layout.root, LOCK_WAIT)
    }

    /// Runs `actions`; if the batch fails, runs them one by one so one
    /// failure (a cgroup gone meanwhile) does not hold back the others.
    fn run_actions(&self, actions: &[Action]) {
        if actions.is_empty() {
            return;
        }
        let report = |a: &Action, out: &apply::Outcome| log(&out.line(a));
        if apply::execute(&self.layout, &self.obs, actions, None, report, log).is_ok() {
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
            other => other.pin().is_some_and(|p| p.exists()),
        };
        if done {
            return;
        }
        let report = |a: &Action, out: &apply::Outcome| log(&out.line(a));
        if let Err(e) = apply::execute(
            &self.layout,
            &self.obs,
            std::slice::from_ref(a),
            None,
            report,
            log,
        ) {
            log(&format!("warning: {e:#} (the next reconcile retries)"));
        }
    }

    fn full_reconcile(&mut self, why: &str) -> Result<()> {
        let _lock = self.lock()?;
        self.refresh()?;
        // What the kernel holds, read again: a full reconcile repairs drift
        // as `apply` does.
        self.obs.read_held()?;
        let actions = plan::plan(&self.layout, &self.obs, MapPolicy::Refuse)?;
        if !actions.is_empty() {
            log(&format!("reconcile ({why}): {} actions", actions.len()));
        }
        self.run_actions(&actions);
        self.converge_owners();
        // Containers made while events were lost, or while no one watched.
        self.names.refresh();
        match prune::prune(&self.obs.pins, self.opts.keep_removed) {
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
        if let Err(e) = owners::converge(&self.layout, &self.obs, |l| log(&l)) {
            log(&format!("warning: interface owners: {e:#}"));
        }
    }

    /// The pins a batch of events concerns, with what each holds now.
    fn held_for(
        &self,
        cgroups: &[Change],
        links: &[LinkEvent],
    ) -> Result<std::collections::HashMap<PathBuf, Option<sys::bpf::LinkState>>> {
        let pins = &self.obs.pins;
        let mut concerned = Vec::new();
        for c in cgroups {
            let (Change::Created { id, path } | Change::Removed { id, path }) = c;
            concerned.push(pins.stats_file(path));
            concerned.extend(Direction::BOTH.map(|d| pins.cgroup_link(*id, d)));
        }
        for ev in links {
            if let LinkEvent::New(l) | LinkEvent::Del(l) = ev {
                concerned.extend(Direction::BOTH.map(|d| pins.tc_link(&l.name, d)));
            }
        }
        let mut out = std::collections::HashMap::new();
        let root = crate::sys::bpf::PinRoot::open(&pins.root);
        for pin in concerned.into_iter().filter(|p| p.exists()) {
            let state = held::read_pin(pins, &root, &pin, &self.obs.interfaces)?;
            out.insert(pin, state);
        }
        Ok(out)
    }

    /// The actions a batch of events calls for, from the planners `plan` uses.
    fn actions_for(&self, cgroups: &[Change], links: &[LinkEvent]) -> Result<Vec<Action>> {
        let held = self.held_for(cgroups, links)?;
        let c = Ctx {
            layout: &self.layout,
            pins: &self.obs.pins,
            links: &held,
            programs: &self.obs.held.programs,
            reload: false,
            stats_files: self.obs.kernel.stats_files(),
        };
        let mut h = Hooks::default();
        for change in cgroups {
            match change {
                // Only if it still exists now (made and removed within the batch).
                Change::Created { id, path } if self.tree.get(*id).is_some() => h.cgroup(
                    &c,
                    &Cgroup {
                        path: path.clone(),
                        id: *id,
                    },
                ),
                // A cgroup of the same path made again meanwhile keeps its file.
                Change::Removed { id, path } if self.tree.by_path(path).is_none() => {
                    h.cgroup_removed(&c, *id, path)
                }
                _ => {}
            }
        }
        for ev in links {
            match ev {
                LinkEvent::New(l) => {
                    let iface = Interface {
                        name: l.name.clone(),
                        ifindex: l.ifindex,
                    };
                    // Renamed or gone since the event: the next reconcile sees.
                    let exists = self.obs.interfaces.contains(&iface);
                    if exists && self.layout.tc_interfaces.iter().any(|p| p.matches(&l.name)) {
                        h.tc(&c, &iface);
                    }
                }
                // Unless a new interface took the name.
                LinkEvent::Del(l) if !self.obs.interfaces.iter().any(|i| i.name == l.name) => {
                    h.interface_removed(&c, &l.name)
                }
                _ => {}
            }
        }
        let mut seen = BTreeSet::new();
        let mut actions = h.finish(&c);
        actions.retain(|a| a.pin().is_none_or(|p| seen.insert(p.clone())));
        Ok(actions)
    }

    fn step(&mut self, wait: Duration) -> Result<()> {
        let fds = [self.tree.raw_fd().unwrap_or(-1), self.links.raw_fd()];
        if !sys::os::poll_readable(&fds, wait)? {
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
        super::look_for(&self.names, &self.tree, &cgroups);
        let lock = self.lock()?;
        // Not the whole cgroup list: a batch's actions read only the tree,
        // and at 100,000 cgroups making the list took most of each batch.
        // Owners and full reconciles make it where they read it.
        self.obs.interfaces = host::interfaces()?;
        let actions = self.actions_for(&cgroups, &links)?;
        self.run_actions(&actions);
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
