//! `cgacct-pin status`.
use super::{Done, Failure, RootArg};
use crate::{observe::host, report, tc};

#[derive(clap::Args)]
#[command(after_help = "Example:\n  cgacct-pin status\n  cgacct-pin status --json --root /sys/fs/bpf/cgacct")]
pub struct Args {
    #[command(flatten)]
    at: RootArg,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Done, Failure> {
    let layout = a.at.layout()?;
    host::check_privileges()?;
    // How TC attaches there: as the layout's `[tc] attach` says.
    let tc = tc::choose(layout.tc_attach)?;
    report::status::show(&layout.root, &tc, a.json)?;
    Ok(Done::Unchanged)
}
