//! `cgacct-pin destroy`.
use std::time::Duration;

use super::{invalid, say, Done, Failure, RootArg};
use crate::{
    apply::{self, Partial},
    bpffs::root::{self, RootLock},
    observe::{host, runtime::memory, Observed},
    spec::Layout,
};

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  cgacct-pin destroy pin-layout.toml\n  cgacct-pin destroy --root /sys/fs/bpf/cgacct"
)]
pub struct Args {
    #[command(flatten)]
    at: RootArg,
    /// Wait this long for another cgacct-pin working on the same root.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    lock_timeout: u64,
}

pub fn run(a: Args) -> Result<Done, Failure> {
    let root = a.at.resolve()?;
    host::check_privileges()?;
    root::check_on_bpffs(&root)?;
    super::restore_rcu();
    if !root.is_dir() {
        say(format_args!(
            "{} does not exist: nothing to destroy",
            root.display()
        ));
        return Ok(Done::Unchanged);
    }
    let _lock = RootLock::take(&root, Duration::from_secs(a.lock_timeout))?;
    let expedite_rcu = a.at.layout()?.tc_expedite_rcu;
    let mut l = Layout::parse("").map_err(invalid)?;
    l.root = root.clone();
    let o = Observed::discover(&l)?;
    let hooks = apply::destroy::tcx_hooks(&o);
    let window = if expedite_rcu && hooks.len() >= apply::expedite::BULK {
        match apply::expedite::Window::open(hooks.len(), "detachments") {
            Ok(w) => w.map(|(w, line)| {
                say(line);
                w
            }),
            Err(e) => {
                eprintln!("cgacct-pin: warning: not expediting RCU grace periods: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let (removed, left) = apply::destroy(&o)?;
    if window.is_some() {
        apply::destroy::wait_detached(&o, hooks, Duration::from_secs(60));
    }
    drop(window);
    // The names remembered for the root's records of removed cgroups.
    if let Err(e) = memory::forget(&root) {
        eprintln!(
            "cgacct-pin: warning: removing {}: {e}",
            memory::path(&root).display()
        );
    }
    for s in &o.held.strays {
        say(format_args!("detached program id {} from {}", s.prog_id, s.hook));
    }
    for p in &removed {
        say(format_args!("unpinned {}", p.display()));
    }
    if left.is_empty() {
        say(format_args!(
            "{} removed ({} pins)",
            root.display(),
            removed.len()
        ));
        return Ok(Done::Changed);
    }
    for p in &left {
        eprintln!("left in place (not made by cgacct): {}", p.display());
    }
    Err(Failure::Partial(Partial {
        done: removed.len(),
        total: removed.len() + left.len(),
        source: anyhow::anyhow!(
            "{} still holds entries cgacct did not make; they are left as they are",
            root.display()
        ),
    }))
}
