//! The command line: flags become validated arguments once, each command
//! is one file, and the exit status is decided here, in one place
//! ([`main`]).
use std::{
    fmt::Display,
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::anyhow;
use clap::{Parser, Subcommand};

use crate::{
    apply::Partial,
    observe::Observed,
    plan::{self, Action, MapPolicy},
    spec::{layout, Layout},
    sys,
};

mod apply;
mod destroy;
mod export;
mod plan_cmd;
mod removed;
mod status;
mod top;
mod watch;

#[derive(Parser)]
#[command(
    name = "cgacct-pin",
    version,
    about = "Per-cgroup network accounting with BPF, pinned on bpffs and readable with cat",
    long_about = "Loads cgacct's BPF programs once, pins them and their shared maps under a root \
on bpffs as a layout file says, attaches them by reference to interfaces and cgroups, and pins \
one cgroup iterator per cgroup so that `cat <root>/<cgroup path>/net.stat` prints that cgroup's \
counters, computed at every read. Everything keeps counting after cgacct-pin exits.",
    after_help = "Example:\n  cgacct-pin apply pin-layout.toml\n  cat /sys/fs/bpf/cgacct/system.slice/net.stat\n  cgacct-pin status\n  cgacct-pin destroy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring the kernel to the layout: load and pin programs and maps,
    /// attach, pin stats files; repair and remove what differs.
    Apply(apply::Args),
    /// Print the actions `apply` would take, changing nothing.
    Plan(plan_cmd::Args),
    /// Show what is pinned and attached, and the counters of every cgroup.
    Status(status::Args),
    /// Remove every pin and link cgacct made under the root, and detach
    /// its programs wherever else they are attached: programs and maps are
    /// freed. Counters are lost.
    Destroy(destroy::Args),
    /// Live per-cgroup rates (bytes/s, packets/s, each direction), sorted,
    /// refreshed in place.
    Top(top::Args),
    /// Keep the kernel converged to the layout as cgroups and interfaces
    /// come and go (runs until stopped; see deploy/cgacct-watch.service).
    Watch(watch::Args),
    /// Final totals of removed cgroups (recorded at rmdir, kept until
    /// pruned by `watch --keep-removed` or displaced when the map is full).
    Removed(removed::Args),
    /// Serve the counters as Prometheus text at http://ADDR/metrics.
    Export(export::Args),
}

/// Exit statuses scripts can rely on (README, `apply --help`).
pub mod exit {
    pub const REFUSED: u8 = 1;
    pub const INVALID: u8 = 2;
    pub const PARTIAL: u8 = 3;
    pub const CHANGED: u8 = 4;
}

/// Why a command failed, which decides its exit status.
pub enum Failure {
    /// Bad command line or layout: nothing changed.
    Invalid(anyhow::Error),
    /// The host, kernel, privileges, lock or pinned state refuse: nothing changed.
    Refused(anyhow::Error),
    /// Some actions were done.
    Partial(Partial),
    /// A long-running command (watch) stopped after it had made changes.
    Stopped(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Refused(e.into())
    }
}

pub fn invalid(e: anyhow::Error) -> Failure {
    Failure::Invalid(e)
}

/// What a successful command did.
pub enum Done {
    Unchanged,
    Changed,
}

impl Failure {
    /// The lines to print and the exit status.
    fn report(&self) -> (Vec<String>, u8) {
        match self {
            Failure::Invalid(e) => (vec![format!("error: {e:#}")], exit::INVALID),
            Failure::Refused(e) => (
                vec![format!("error: {e:#}"), "nothing was changed".into()],
                exit::REFUSED,
            ),
            Failure::Partial(p) => (
                vec![
                    format!("error: {p}"),
                    "the kernel holds part of the plan; fix the cause and run apply again: it \
                     continues from where this run stopped"
                        .into(),
                ],
                exit::PARTIAL,
            ),
            Failure::Stopped(e) => (
                vec![
                    format!("error: {e:#}"),
                    "watch stopped; what it pinned stays in place and keeps counting: start it \
                     again and it reconciles what changed meanwhile"
                        .into(),
                ],
                exit::PARTIAL,
            ),
        }
    }
}

/// Parses the command line, runs the command, and turns its result into
/// the exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that only read die quietly when their output is closed
    // (`status | head -1`), as Unix tools do; those that change state finish
    // their work ([`say`]), and the exporter's sockets keep Rust's default.
    if !matches!(
        cli.command,
        Command::Apply(_) | Command::Destroy(_) | Command::Export(_) | Command::Watch(_)
    ) {
        sys::os::default_sigpipe();
    }
    // Kernels before 5.11 charge BPF objects, the probes' included, to
    // RLIMIT_MEMLOCK.
    sys::os::raise_memlock();
    let detailed = match &cli.command {
        Command::Apply(a) => a.opts.detailed_exitcode,
        Command::Plan(p) => p.opts.detailed_exitcode,
        _ => false,
    };
    let result = match cli.command {
        Command::Apply(a) => apply::run(a),
        Command::Plan(a) => plan_cmd::run(a),
        Command::Status(a) => status::run(a),
        Command::Destroy(a) => destroy::run(a),
        Command::Top(a) => top::run(a),
        Command::Watch(a) => watch::run(a),
        Command::Removed(a) => removed::run(a),
        Command::Export(a) => export::run(a),
    };
    match result {
        Ok(Done::Changed) if detailed => ExitCode::from(exit::CHANGED),
        Ok(_) => ExitCode::SUCCESS,
        Err(f) => {
            let (lines, code) = f.report();
            for l in lines {
                eprintln!("cgacct-pin: {l}");
            }
            ExitCode::from(code)
        }
    }
}

/// Prints one line for a command that changes state: a closed output does
/// not stop its work.
pub fn say(line: impl Display) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// What `apply` and `watch` say once on a kernel without cgroup
/// iterators (or without the helper the iterator needs).
pub fn no_stats_files_note(k: &crate::observe::kernel::Features) -> Option<String> {
    if k.stats_files() {
        return None;
    }
    Some(format!(
        "note: no net.stat files on this kernel: they need Linux >= 6.1 (cgroup iterators{}). \
         Everything else is loaded and attached, and `status`, `top`, `export` and `removed` \
         show the same counters (`status --json`: every cgroup's net.stat keys, subtree \
         included, under \"stats\")",
        match k.percpu_lookup {
            true => "",
            false =>
                ", and bpf_map_lookup_percpu_elem of Linux >= 5.19: the cgroup counter \
                     maps here are shared hashes with atomic adds",
        }
    ))
}

/// Restores `/sys/kernel/rcu_expedited` where a killed run left it on
/// (`apply::expedite`): every command that changes state starts with it.
pub fn restore_rcu() {
    match crate::apply::expedite::recover() {
        Ok(Some(line)) => say(line),
        Ok(None) => {}
        Err(e) => eprintln!("cgacct-pin: warning: {e:#}"),
    }
}

/// Which root a reading command works on: `--root`, else the layout's,
/// else the default.
#[derive(clap::Args)]
pub struct RootArg {
    /// The layout file; its root (and `[tc] attach`) are used when given.
    layout: Option<PathBuf>,
    /// The root on bpffs.
    #[arg(long)]
    root: Option<PathBuf>,
}

impl RootArg {
    /// The layout given (with --root applied), or the default layout with
    /// --root.
    pub fn layout(&self) -> Result<Layout, Failure> {
        match &self.layout {
            Some(l) => load_layout(l, self.root.clone()),
            None => {
                let mut l = Layout::parse("").map_err(invalid)?;
                if let Some(r) = &self.root {
                    set_root(&mut l, r)?;
                }
                Ok(l)
            }
        }
    }

    pub fn resolve(&self) -> Result<PathBuf, Failure> {
        Ok(self.layout()?.root)
    }
}

#[derive(clap::Args)]
pub struct PlanOpts {
    /// Override the layout's root on bpffs.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Exit 0 when nothing changes (or would change) and 4 when something does.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Replace pinned maps whose shape no longer fits by new ones, copying
    /// the counters (only a change of size can be copied).
    #[arg(long, conflicts_with = "reset_maps")]
    migrate_maps: bool,
    /// Replace pinned maps whose shape no longer fits by new, empty ones.
    #[arg(long)]
    reset_maps: bool,
}

impl PlanOpts {
    pub fn maps(&self) -> MapPolicy {
        if self.migrate_maps {
            MapPolicy::Migrate
        } else if self.reset_maps {
            MapPolicy::Reset
        } else {
            MapPolicy::Refuse
        }
    }
}

fn set_root(layout: &mut Layout, root: &Path) -> Result<(), Failure> {
    layout::check_root(root).map_err(|e| invalid(e.context(format!("--root {}", root.display()))))?;
    layout.root = root.to_path_buf();
    Ok(())
}

/// Reads and validates the layout file; `root` overrides its root.
pub fn load_layout(path: &Path, root: Option<PathBuf>) -> Result<Layout, Failure> {
    let mut layout = Layout::from_path(path).map_err(invalid)?;
    if let Some(root) = root {
        set_root(&mut layout, &root)?;
    }
    Ok(layout)
}

/// Observes, plans and checks the plan; the caller decides whether to run it.
pub fn make_plan(layout: &Layout, maps: MapPolicy) -> Result<(Observed, Vec<Action>), Failure> {
    let o = Observed::discover(layout)?;
    for u in plan::unmatched(layout, &o.interfaces, &o.cgroups) {
        if u.required {
            return Err(invalid(anyhow!(
                "{} pattern {:?} matches nothing on this host, and the layout says required = true \
                 in that section: create what it names, fix the pattern, or drop required",
                u.key,
                u.pattern
            )));
        }
        eprintln!(
            "cgacct-pin: warning: {} pattern {:?} matches nothing",
            u.key, u.pattern
        );
    }
    let actions = plan::plan(layout, &o, maps)?;
    plan::check_names(&actions).map_err(invalid)?;
    if actions.iter().any(|a| matches!(a, Action::LoadPrograms { .. })) {
        crate::observe::kernel::check()?;
    }
    Ok((o, actions))
}

pub fn done(actions: &[Action]) -> Done {
    if actions.is_empty() {
        Done::Unchanged
    } else {
        Done::Changed
    }
}

pub fn print_plan(actions: &[Action], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(actions)?);
        return Ok(());
    }
    if actions.is_empty() {
        println!("nothing to do");
    }
    for a in actions {
        println!("would {a}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_watch_does_not_claim_nothing_changed() {
        let (lines, code) = Failure::Stopped(anyhow!("boom")).report();
        assert_eq!(code, exit::PARTIAL);
        assert!(
            lines.iter().all(|l| !l.contains("nothing was changed")),
            "{lines:?}"
        );
        let (lines, code) = Failure::Refused(anyhow!("no")).report();
        assert_eq!(code, exit::REFUSED);
        assert!(lines.iter().any(|l| l.contains("nothing was changed")));
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
