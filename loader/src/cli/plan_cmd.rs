//! `cgacct-pin plan`.
use std::path::PathBuf;

use super::{done, load_layout, make_plan, print_plan, Done, Failure, PlanOpts};
use crate::observe::host;

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  cgacct-pin plan pin-layout.toml\n  cgacct-pin plan --json pin-layout.toml | jq .\n\n\
Exit status as for apply; with --detailed-exitcode, 0 means the kernel matches the layout and 4 \
means apply has work to do."
)]
pub struct Args {
    layout: PathBuf,
    #[command(flatten)]
    pub opts: PlanOpts,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Done, Failure> {
    let layout = load_layout(&a.layout, a.opts.root.clone())?;
    host::check_privileges()?;
    let (_, actions) = make_plan(&layout, a.opts.maps())?;
    print_plan(&actions, a.json)?;
    Ok(done(&actions))
}
