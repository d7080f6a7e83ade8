//! `cgacct-pin watch`.
use std::{path::PathBuf, time::Duration};

use anyhow::anyhow;

use super::{invalid, load_layout, Done, Failure};
use crate::follow::watch::{Options, Watcher};

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  cgacct-pin watch pin-layout.toml\n  cgacct-pin watch --reconcile-every 30 --keep-removed 600 pin-layout.toml\n\n\
Driven by inotify on cgroupfs and rtnetlink link events, with a full reconcile at start, after \
lost events and periodically. Everything is pinned: stopping or killing it loses no count.\n\n\
Exit status: 1 refused at start (nothing changed), 2 invalid layout or arguments, 3 stopped by an \
error after it started (what it pinned stays)."
)]
pub struct Args {
    layout: PathBuf,
    /// Override the layout's root on bpffs.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Seconds between full reconciles (the safety net).
    #[arg(long, default_value_t = 60)]
    reconcile_every: u64,
    /// Seconds to keep the final totals of removed cgroups.
    #[arg(long, default_value_t = 3600)]
    keep_removed: u64,
}

pub fn run(a: Args) -> Result<Done, Failure> {
    if a.reconcile_every == 0 {
        return Err(invalid(anyhow!("--reconcile-every must be at least 1 second")));
    }
    let layout = load_layout(&a.layout, a.root)?;
    let opts = Options {
        reconcile_every: Duration::from_secs(a.reconcile_every),
        keep_removed: Duration::from_secs(a.keep_removed),
    };
    super::restore_rcu();
    if let Some(note) = super::no_stats_files_note(&crate::observe::kernel::features()) {
        super::say(note);
    }
    let watcher = Watcher::start(layout, opts)?;
    watcher.run().map_err(Failure::Stopped)?;
    Ok(Done::Unchanged)
}
