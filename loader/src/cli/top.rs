//! `cgacct-pin top`.
use std::time::Duration;

use anyhow::anyhow;

use super::{invalid, Done, Failure, RootArg};
use crate::report::top::{self, Options, SortBy, Source};

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  cgacct-pin top\n  cgacct-pin top --once --interval 5\n  cgacct-pin top --json --once | jq '.cgroups[0]'\n\n\
Rates are each cgroup's own traffic. Names: what the container runtimes call the container \
(docker, podman, namespace/pod/container from the kubelet), else systemd units, docker:<id>, \
containerd:<id>, pod:<uid>."
)]
pub struct Args {
    #[command(flatten)]
    at: RootArg,
    /// Seconds between refreshes (the averaging window).
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Take one interval, print it, exit.
    #[arg(long)]
    once: bool,
    /// Print one JSON object per refresh.
    #[arg(long)]
    json: bool,
    /// Show at most N cgroups.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, value_enum, default_value = "socket")]
    source: Source,
    #[arg(long, value_enum, default_value = "total")]
    sort: SortBy,
}

pub fn run(a: Args) -> Result<Done, Failure> {
    if !(a.interval.is_finite() && a.interval > 0.0 && a.interval < 86400.0) {
        return Err(invalid(anyhow!(
            "--interval {} is out of range: give seconds, e.g. 1 or 0.5",
            a.interval
        )));
    }
    let o = Options {
        interval: Duration::from_secs_f64(a.interval),
        once: a.once,
        json: a.json,
        limit: a.limit,
        source: a.source,
        sort: a.sort,
    };
    top::run(&a.at.resolve()?, &o)?;
    Ok(Done::Unchanged)
}
