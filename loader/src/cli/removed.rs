//! `cgacct-pin removed`.
use super::{Done, Failure, RootArg};
use crate::report::removed;

#[derive(clap::Args)]
#[command(after_help = "Example:\n  cgacct-pin removed\n  cgacct-pin removed --json | jq '.[0].own.socket'")]
pub struct Args {
    #[command(flatten)]
    at: RootArg,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Done, Failure> {
    removed::show(&a.at.resolve()?, a.json)?;
    Ok(Done::Unchanged)
}
