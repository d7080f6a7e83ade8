//! `cgacct-pin apply`.
use std::{path::PathBuf, time::Duration};

use super::{done, load_layout, make_plan, print_plan, say, Done, Failure, PlanOpts};
use crate::{
    apply::{self, owners, Partial},
    bpffs::{
        root::{self, RootLock},
        Pins,
    },
    observe::host,
    plan::Action,
    report::capacity,
    tc::Mode,
};

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  cgacct-pin apply pin-layout.toml\n  cgacct-pin apply --dry-run pin-layout.toml\n\n\
Running apply again reuses the pinned maps (counters are kept), changes nothing that matches, and \
makes no bpf() call that changes state. A new build moves the running links to its programs in \
place (BPF_LINK_UPDATE).\n\n\
Exit status: 0 success (with --detailed-exitcode: nothing to change), 1 refused before any change \
(environment, privileges, kernel, lock, incompatible maps), 2 invalid input (command line or layout; \
nothing changed), 3 partial failure (some actions done; fix the cause and run apply again), 4 \
success with changes (only with --detailed-exitcode)."
)]
pub struct Args {
    /// The layout file (TOML), e.g. pin-layout.toml.
    layout: PathBuf,
    #[command(flatten)]
    pub opts: PlanOpts,
    /// Print the actions without changing anything (same as `plan`).
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: print JSON for scripts.
    #[arg(long, requires = "dry_run")]
    json: bool,
    /// Wait this long for another cgacct-pin working on the same root.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    lock_timeout: u64,
}

pub fn run(a: Args) -> Result<Done, Failure> {
    let layout = load_layout(&a.layout, a.opts.root.clone())?;
    host::check_privileges()?;
    if a.dry_run {
        let (_, actions) = make_plan(&layout, a.opts.maps())?;
        print_plan(&actions, a.json)?;
        return Ok(done(&actions));
    }
    root::check_on_bpffs(&layout.root)?;
    super::restore_rcu();
    // Names with dots do not matter here: program pins have none.
    let prefetch = apply::load::Prefetch::for_root(&Pins::new(&layout.root, true));
    let created = root::create(&layout.root)?;
    let planned = RootLock::take(&layout.root, Duration::from_secs(a.lock_timeout))
        .map_err(Failure::from)
        .and_then(|lock| Ok((lock, make_plan(&layout, a.opts.maps())?)));
    let (_lock, (o, actions)) = match planned {
        Ok(p) => p,
        Err(e) => {
            if created {
                let _ = std::fs::remove_dir(&layout.root);
            }
            return Err(e);
        }
    };
    if actions.is_empty() {
        say(format_args!(
            "nothing to do: {} matches the layout",
            layout.root.display()
        ));
    }
    if let Some(note) = super::no_stats_files_note(&o.kernel) {
        say(note);
    }
    if !o.pins.dots {
        say("note: this kernel's bpffs refuses '.' in names: dots are written %2e");
    }
    let health = &o.held.health;
    for line in health.absent(|p| health.wanted(p)) {
        say(format_args!("note: {line}"));
    }
    if actions.iter().any(|a| matches!(a, Action::AttachTc { .. })) && o.tc()?.mode == Mode::Clsact {
        say(format_args!("note: {}", o.tc()?.describe()));
    }
    apply::execute(
        &layout,
        &o,
        &actions,
        prefetch,
        |a, out| say(out.line(a)),
        |l| say(l),
    )
    .map_err(Failure::Partial)?;
    let owners = owners::converge(&layout, &o, say).map_err(|e| {
        Failure::Partial(Partial {
            done: actions.len(),
            total: actions.len() + 1,
            source: e.context("setting the owners of attached interfaces"),
        })
    })?;
    // Counting goes on whatever this says: a warning, never a failure.
    match capacity::read(&o.pins) {
        Ok(cap) => cap
            .warnings()
            .iter()
            .for_each(|w| eprintln!("cgacct-pin: warning: {w}")),
        Err(e) => eprintln!("cgacct-pin: warning: reading how full the maps are: {e:#}"),
    }
    Ok(if owners { Done::Changed } else { done(&actions) })
}
