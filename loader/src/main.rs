//! `cgacct-pin`: per-cgroup network accounting pinned on bpffs.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use cgacct_pin::{
    apply::{self, Context},
    host,
    layout::{Layout, DEFAULT_ROOT},
    names::Pins,
    plan::{self, MapPolicy},
    read,
};
use clap::{Parser, Subcommand};

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
    Apply {
        /// The layout file (TOML), e.g. pin-layout.toml.
        layout: PathBuf,
        #[command(flatten)]
        opts: PlanOpts,
        /// Print the actions without changing anything (same as `plan`).
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: print JSON for scripts.
        #[arg(long, requires = "dry_run")]
        json: bool,
        /// Wait this long for another cgacct-pin working on the same root.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        lock_timeout: u64,
    },
    /// Print the actions `apply` would take, changing nothing.
    #[command(
        after_help = "Example:\n  cgacct-pin plan pin-layout.toml\n  cgacct-pin plan --json pin-layout.toml | jq .\n\n\
Exit status as for apply; with --detailed-exitcode, 0 means the kernel matches the layout and 4 \
means apply has work to do."
    )]
    Plan {
        layout: PathBuf,
        #[command(flatten)]
        opts: PlanOpts,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show what is pinned and attached, and the counters of every cgroup.
    #[command(
        after_help = "Example:\n  cgacct-pin status\n  cgacct-pin status --json --root /sys/fs/bpf/cgacct"
    )]
    Status {
        #[command(flatten)]
        at: RootArg,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Remove every pin and link cgacct made under the root, and detach
    /// its programs wherever else they are attached: programs and maps are
    /// freed. Counters are lost.
    #[command(
        after_help = "Example:\n  cgacct-pin destroy pin-layout.toml\n  cgacct-pin destroy --root /sys/fs/bpf/cgacct"
    )]
    Destroy {
        #[command(flatten)]
        at: RootArg,
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        lock_timeout: u64,
    },
    /// Live per-cgroup rates (bytes/s, packets/s, each direction), sorted,
    /// refreshed in place.
    #[command(
        after_help = "Example:\n  cgacct-pin top\n  cgacct-pin top --once --interval 5\n  cgacct-pin top --json --once | jq '.cgroups[0]'\n\n\
Rates are each cgroup's own traffic. Names: systemd units, docker:<id>, containerd:<id>, pod:<uid>."
    )]
    Top {
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
        source: cgacct_pin::top::Source,
        #[arg(long, value_enum, default_value = "total")]
        sort: cgacct_pin::top::SortBy,
    },
    /// Keep the kernel converged to the layout as cgroups and interfaces
    /// come and go (runs until stopped; see deploy/cgacct-watch.service).
    #[command(
        after_help = "Example:\n  cgacct-pin watch pin-layout.toml\n  cgacct-pin watch --reconcile-every 30 --keep-removed 600 pin-layout.toml\n\n\
Driven by inotify on cgroupfs and rtnetlink link events, with a full reconcile at start, after \
lost events and periodically. Everything is pinned: stopping or killing it loses no count."
    )]
    Watch {
        layout: PathBuf,
        #[arg(long)]
        root: Option<PathBuf>,
        /// Seconds between full reconciles (the safety net).
        #[arg(long, default_value_t = 60)]
        reconcile_every: u64,
        /// Seconds to keep the final totals of removed cgroups.
        #[arg(long, default_value_t = 3600)]
        keep_removed: u64,
    },
    /// Final totals of removed cgroups (recorded at rmdir, kept until
    /// pruned by `watch --keep-removed` or displaced when the map is full).
    #[command(
        after_help = "Example:\n  cgacct-pin removed\n  cgacct-pin removed --json | jq '.[0].own.socket'"
    )]
    Removed {
        #[command(flatten)]
        at: RootArg,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Serve the counters as Prometheus text at http://ADDR/metrics.
    #[command(
        after_help = "Example:\n  cgacct-pin export --listen 127.0.0.1:9465\n  curl -s 127.0.0.1:9465/metrics\n\n\
Per-cgroup series carry the cgroup's own counts and labels cgroup, name, and unit, container_id, \
pod_uid where known. Port 0 picks a free port; the bound address is printed."
    )]
    Export {
        #[command(flatten)]
        at: RootArg,
        /// Address to listen on, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:9465")]
        listen: String,
    },
}

/// Which root a reading command works on: `--root`, else the layout's,
/// else the default.
#[derive(clap::Args)]
struct RootArg {
    /// The layout file; its root is used when --root is not given.
    layout: Option<PathBuf>,
    /// The root on bpffs.
    #[arg(long)]
    root: Option<PathBuf>,
}

impl RootArg {
    fn resolve(self) -> Result<PathBuf, Failure> {
        match (self.root, self.layout) {
            (Some(r), _) => Ok(r),
            (None, Some(l)) => Ok(Layout::from_path(&l).map_err(invalid)?.root),
            (None, None) => Ok(PathBuf::from(DEFAULT_ROOT)),
        }
    }
}

#[derive(clap::Args)]
struct PlanOpts {
    /// Override the layout's root on bpffs.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Exit 0 when nothing changes (or would change) and 4 when something does.
    #[arg(long)]
    detailed_exitcode: bool,
    /// Replace pinned maps whose shape no longer fits by new ones, copying
    /// the counters (only a change of size can be copied).
    #[arg(long, conflicts_with = "reset_maps")]
    migrate_maps: bool,
    /// Replace pinned maps whose shape no longer fits by new, empty ones.
    #[arg(long)]
    reset_maps: bool,
}

impl PlanOpts {
    fn maps(&self) -> MapPolicy {
        if self.migrate_maps {
            MapPolicy::Migrate
        } else if self.reset_maps {
            MapPolicy::Reset
        } else {
            MapPolicy::Refuse
        }
    }
}

/// Exit statuses scripts can rely on (README, `apply --help`).
mod exit {
    pub const REFUSED: u8 = 1;
    pub const INVALID: u8 = 2;
    pub const PARTIAL: u8 = 3;
    pub const CHANGED: u8 = 4;
}

/// Why a command failed, which decides its exit status.
enum Failure {
    /// Bad command line or layout: nothing changed.
    Invalid(anyhow::Error),
    /// The host, kernel, privileges, lock or pinned state refuse: nothing changed.
    Refused(anyhow::Error),
    /// Some actions were done.
    Partial(apply::Partial),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Refused(e.into())
    }
}

fn invalid(e: anyhow::Error) -> Failure {
    Failure::Invalid(e)
}

/// What a successful command did.
enum Done {
    Unchanged,
    Changed,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let detailed = match &cli.command {
        Command::Apply { opts, .. } | Command::Plan { opts, .. } => opts.detailed_exitcode,
        _ => false,
    };
    match run(cli) {
        Ok(Done::Changed) if detailed => ExitCode::from(exit::CHANGED),
        Ok(_) => ExitCode::SUCCESS,
        Err(Failure::Invalid(e)) => {
            eprintln!("cgacct-pin: error: {e:#}");
            ExitCode::from(exit::INVALID)
        }
        Err(Failure::Refused(e)) => {
            eprintln!("cgacct-pin: error: {e:#}");
            eprintln!("cgacct-pin: nothing was changed");
            ExitCode::from(exit::REFUSED)
        }
        Err(Failure::Partial(p)) => {
            eprintln!("cgacct-pin: error: {p}");
            eprintln!(
                "cgacct-pin: the kernel holds part of the plan; fix the cause and run apply again: \
                 it continues from where this run stopped"
            );
            ExitCode::from(exit::PARTIAL)
        }
    }
}

fn load_layout(path: &std::path::Path, root: Option<PathBuf>) -> Result<Layout, Failure> {
    let mut layout = Layout::from_path(path).map_err(invalid)?;
    if let Some(root) = root {
        if !root.is_absolute() {
            return Err(invalid(anyhow::anyhow!(
                "--root {} must be an absolute path on bpffs",
                root.display()
            )));
        }
        layout.root = root;
    }
    cgacct_pin::tc_attach::prefer(layout.tc_attach);
    Ok(layout)
}

/// Discovers, plans and checks the plan; the caller decides whether to run it.
fn make_plan(layout: &Layout, maps: MapPolicy) -> Result<(Context, Vec<plan::Action>), Failure> {
    let ctx = Context::discover(layout)?;
    for u in plan::unmatched(layout, &ctx.interfaces, &ctx.cgroups) {
        if u.required {
            return Err(invalid(anyhow::anyhow!(
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
    let actions = ctx.plan(layout, maps)?;
    plan::check_names(&actions).map_err(invalid)?;
    if actions
        .iter()
        .any(|a| matches!(a, plan::Action::LoadPrograms { .. }))
    {
        cgacct_pin::kernel::check()?;
    }
    Ok((ctx, actions))
}

fn run(cli: Cli) -> Result<Done, Failure> {
    match cli.command {
        Command::Apply {
            layout,
            opts,
            dry_run,
            json,
            lock_timeout,
        } => {
            let layout = load_layout(&layout, opts.root.clone())?;
            host::check_privileges()?;
            if dry_run {
                let (_, actions) = make_plan(&layout, opts.maps())?;
                print_plan(&actions, json)?;
                return Ok(done(&actions));
            }
            host::check_on_bpffs(&layout.root)?;
            let created = apply::create_root(&layout.root)?;
            let planned = apply::RootLock::take(&layout.root, Duration::from_secs(lock_timeout))
                .map_err(Failure::from)
                .and_then(|lock| Ok((lock, make_plan(&layout, opts.maps())?)));
            let (_lock, (ctx, actions)) = match planned {
                Ok(p) => p,
                Err(e) => {
                    if created {
                        let _ = std::fs::remove_dir(&layout.root);
                    }
                    return Err(e);
                }
            };
            if actions.is_empty() {
                println!("nothing to do: {} matches the layout", layout.root.display());
            }
            if !ctx.pins.dots {
                println!("note: this kernel's bpffs refuses '.' in names: dots are written %2e");
            }
            if let Some(note) = cgacct_pin::tc_attach::apply_note(&actions)? {
                println!("note: {note}");
            }
            apply::execute(&layout, &ctx, &actions, |a| println!("{a}")).map_err(Failure::Partial)?;
            let owners =
                cgacct_pin::owners::converge(&layout, &ctx, |line| println!("{line}")).map_err(|e| {
                    Failure::Partial(apply::Partial {
                        done: actions.len(),
                        total: actions.len() + 1,
                        source: e.context("setting the owners of attached interfaces"),
                    })
                })?;
            Ok(if owners { Done::Changed } else { done(&actions) })
        }
        Command::Plan { layout, opts, json } => {
            let layout = load_layout(&layout, opts.root.clone())?;
            host::check_privileges()?;
            let (_, actions) = make_plan(&layout, opts.maps())?;
            print_plan(&actions, json)?;
            Ok(done(&actions))
        }
        Command::Top {
            at,
            interval,
            once,
            json,
            limit,
            source,
            sort,
        } => {
            if !(interval.is_finite() && interval > 0.0 && interval < 86400.0) {
                return Err(invalid(anyhow::anyhow!(
                    "--interval {interval} is out of range: give seconds, e.g. 1 or 0.5"
                )));
            }
            let o = cgacct_pin::top::Options {
                interval: std::time::Duration::from_secs_f64(interval),
                once,
                json,
                limit,
                source,
                sort,
            };
            cgacct_pin::top::run(&at.resolve()?, &o)?;
            Ok(Done::Unchanged)
        }
        Command::Watch {
            layout,
            root,
            reconcile_every,
            keep_removed,
        } => {
            if reconcile_every == 0 {
                return Err(invalid(anyhow::anyhow!(
                    "--reconcile-every must be at least 1 second"
                )));
            }
            let opts = cgacct_pin::watch::Options {
                reconcile_every: std::time::Duration::from_secs(reconcile_every),
                keep_removed: std::time::Duration::from_secs(keep_removed),
            };
            cgacct_pin::watch::run(&layout, root, opts)?;
            Ok(Done::Unchanged)
        }
        Command::Removed { at, json } => {
            cgacct_pin::removed::show(&at.resolve()?, json)?;
            Ok(Done::Unchanged)
        }
        Command::Export { at, listen } => {
            cgacct_pin::metrics::serve(&at.resolve()?, &listen)?;
            Ok(Done::Unchanged)
        }
        Command::Status { at, json } => {
            let root = at.resolve()?;
            host::check_privileges()?;
            status(&root, json)?;
            Ok(Done::Unchanged)
        }
        Command::Destroy { at, lock_timeout } => {
            let root = at.resolve()?;
            host::check_privileges()?;
            host::check_on_bpffs(&root)?;
            if !root.is_dir() {
                println!("{} does not exist: nothing to destroy", root.display());
                return Ok(Done::Unchanged);
            }
            let _lock = apply::RootLock::take(&root, Duration::from_secs(lock_timeout))?;
            let mut l = Layout::parse("").map_err(invalid)?;
            l.root = root.clone();
            let ctx = Context::discover(&l)?;
            let (removed, left) = apply::destroy(&ctx)?;
            for s in &ctx.held.strays {
                println!("detached program id {} from {}", s.prog_id, s.hook);
            }
            for p in &removed {
                println!("unpinned {}", p.display());
            }
            if left.is_empty() {
                println!("{} removed ({} pins)", root.display(), removed.len());
                Ok(Done::Changed)
            } else {
                for p in &left {
                    eprintln!("left in place (not made by cgacct): {}", p.display());
                }
                Err(Failure::Partial(apply::Partial {
                    done: removed.len(),
                    total: removed.len() + left.len(),
                    source: anyhow::anyhow!(
                        "{} still holds entries cgacct did not make; they are left as they are",
                        root.display()
                    ),
                }))
            }
        }
    }
}

fn done(actions: &[plan::Action]) -> Done {
    if actions.is_empty() {
        Done::Unchanged
    } else {
        Done::Changed
    }
}

fn print_plan(actions: &[plan::Action], json: bool) -> Result<()> {
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

fn status(root: &std::path::Path, json: bool) -> Result<()> {
    if !root.is_dir() {
        anyhow::bail!(
            "{} does not exist: nothing is applied there (run `cgacct-pin apply LAYOUT`)",
            root.display()
        );
    }
    let dots = cgacct_pin::names::probe_dots(root)?;
    let pins = Pins::new(root, dots);
    let names = host::cgroup_names(&host::cgroup2_mount()?)?;
    let ifnames: std::collections::BTreeMap<u32, String> = host::interfaces()?
        .into_iter()
        .map(|i| (i.ifindex, i.name))
        .collect();
    let snap = read::snapshot(&pins).context("reading the pinned maps")?;
    let programs: Vec<_> = plan::PROGRAMS
        .iter()
        .map(|p| (p, pins.prog(p).exists()))
        .collect();
    let iter_pin = pins.prog(cgacct_common::programs::CGROUP_ITER);
    let build = if iter_pin.exists() {
        cgacct_pin::build_id::running_build(&iter_pin)?
    } else {
        None
    };
    let this_build = format!("{:016x}", cgacct_pin::build_id::this_build());
    let build = build.map(|b| format!("{b:016x}"));
    let tc = plan::two_level_pins(&pins.tc_links())?;
    let cg = plan::two_level_pins(&pins.cgroup_links())?;
    let stats = plan::stats_files(&pins)?;
    let cg_name = |id: &u64| match *id {
        0 => "(no socket)".to_string(),
        id => names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("(removed cgroup {id})")),
    };
    if json {
        let counters = |c: &cgacct_common::Counters| {
            serde_json::json!({"rx_bytes": c.rx_bytes, "rx_packets": c.rx_packets,
                               "tx_bytes": c.tx_bytes, "tx_packets": c.tx_packets})
        };
        let v = serde_json::json!({
            "root": root,
            "build": build, "this_build": this_build,
            "programs": programs.iter().map(|(p, ok)| serde_json::json!({"name": p, "pinned": ok})).collect::<Vec<_>>(),
            "tc_links": tc, "cgroup_links": cg, "stats_files": stats,
            "tc_attach": cgacct_pin::tc_attach::choice()?,
            "cgroups": snap.cgroups.iter().map(|(id, c)| serde_json::json!({"id": id, "path": cg_name(id), "counters": counters(c)})).collect::<Vec<_>>(),
            "tc_cgroups": snap.tc_cgroups.iter().map(|(id, c)| serde_json::json!({"id": id, "path": cg_name(id), "counters": counters(c)})).collect::<Vec<_>>(),
            "interfaces": snap.interfaces.iter().map(|(i, c)| serde_json::json!({"ifindex": i, "name": ifnames.get(i), "counters": counters(c)})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("root {}", root.display());
    match &build {
        Some(b) if *b == this_build => println!("build {b} (this binary's)"),
        Some(b) => println!("build {b} (this binary is {this_build}: `apply` upgrades in place)"),
        None => println!("build unknown (this binary is {this_build})"),
    }
    println!("{}", cgacct_pin::tc_attach::choice()?.describe());
    for (p, ok) in &programs {
        println!("program {p} {}", if *ok { "pinned" } else { "MISSING" });
    }
    for l in tc.iter().chain(&cg) {
        println!("link {}", l.display());
    }
    println!("stats files: {}", stats.len());
    let cgroups = |m: &std::collections::BTreeMap<u64, cgacct_common::Counters>| -> Vec<_> {
        m.iter()
            .map(|(id, c)| (id.to_string(), *c, cg_name(id)))
            .collect()
    };
    table(
        [
            "id",
            "rx_bytes",
            "rx_pkts",
            "tx_bytes",
            "tx_pkts",
            "cgroup (cgroup_skb)",
        ],
        cgroups(&snap.cgroups),
    );
    let tc_head = [
        "id",
        "in_bytes",
        "in_pkts",
        "out_bytes",
        "out_pkts",
        "cgroup of socket (tc)",
    ];
    table(tc_head, cgroups(&snap.tc_cgroups));
    let ifaces = snap.interfaces.iter().map(|(i, c)| {
        (
            i.to_string(),
            *c,
            ifnames.get(i).cloned().unwrap_or_else(|| "(gone)".into()),
        )
    });
    table(
        [
            "ifindex",
            "in_bytes",
            "in_pkts",
            "out_bytes",
            "out_pkts",
            "interface (tc)",
        ],
        ifaces.collect(),
    );
    Ok(())
}

/// One status table: key, four counters, name.
fn table(head: [&str; 6], rows: Vec<(String, cgacct_common::Counters, String)>) {
    let [k, a, b, c, d, n] = head;
    println!("\n{k:<10} {a:>14} {b:>10} {c:>14} {d:>10}  {n}");
    for (key, x, name) in rows {
        println!(
            "{key:<10} {:>14} {:>10} {:>14} {:>10}  {name}",
            x.rx_bytes, x.rx_packets, x.tx_bytes, x.tx_packets
        );
    }
}
