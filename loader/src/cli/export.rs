//! `cgacct-pin export`.
use super::{Done, Failure, RootArg};
use crate::report::metrics;

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  cgacct-pin export --listen 127.0.0.1:9465\n  curl -s 127.0.0.1:9465/metrics\n\n\
Per-cgroup series carry the cgroup's own counts and labels cgroup, name, and unit, container_id, \
pod_uid, container_name, compose_project, compose_service, pod_namespace, pod_name where known. Port 0 picks a free port; the bound address is printed."
)]
pub struct Args {
    #[command(flatten)]
    at: RootArg,
    /// Address to listen on, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:9465")]
    listen: String,
}

pub fn run(a: Args) -> Result<Done, Failure> {
    metrics::serve(&a.at.resolve()?, &a.listen)?;
    Ok(Done::Unchanged)
}
