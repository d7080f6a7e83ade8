//! `cgacct-pin`: per-cgroup network accounting pinned on bpffs.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use cgacct_pin::{
    apply::{self, Context},
    host,
    layout::{Layout, DEFAULT_ROOT},
    names::Pins,
    plan, read,
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
    /// attach, pin stats files; remove what the layout no longer wants.
    #[command(
        after_help = "Example:\n  cgacct-pin apply pin-layout.toml\n  cgacct-pin apply --dry-run pin-layout.toml\n\n\
Running apply again reuses the pinned maps (counters are kept) and adds no attachment that exists."
    )]
    Apply {
        /// The layout file (TOML), e.g. pin-layout.toml.
        layout: PathBuf,
        /// Override the layout's root on bpffs.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Print the actions without changing anything (same as `plan`).
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the actions `apply` would take, changing nothing.
    #[command(
        after_help = "Example:\n  cgacct-pin plan pin-layout.toml\n  cgacct-pin plan --json pin-layout.toml | jq ."
    )]
    Plan {
        layout: PathBuf,
        #[arg(long)]
        root: Option<PathBuf>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show what is pinned and attached, and the counters of every cgroup.
    #[command(
        after_help = "Example:\n  cgacct-pin status\n  cgacct-pin status --json --root /sys/fs/bpf/cgacct"
    )]
    Status {
        /// The layout file; its root is used when --root is not given.
        layout: Option<PathBuf>,
        #[arg(long)]
        root: Option<PathBuf>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Remove every pin and link cgacct made under the root: programs
    /// detach and are freed with their maps. Counters are lost.
    #[command(
        after_help = "Example:\n  cgacct-pin destroy pin-layout.toml\n  cgacct-pin destroy --root /sys/fs/bpf/cgacct"
    )]
    Destroy {
        layout: Option<PathBuf>,
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Live per-cgroup rates (bytes/s, packets/s, each direction), sorted,
    /// refreshed in place.
    #[command(
        after_help = "Example:\n  cgacct-pin top\n  cgacct-pin top --once --interval 5\n  cgacct-pin top --json --once | jq '.cgroups[0]'\n\n\
Rates are each cgroup's own traffic. Names: systemd units, docker:<id>, containerd:<id>, pod:<uid>."
    )]
    Top {
        /// The layout file; its root is used when --root is not given.
        layout: Option<PathBuf>,
        #[arg(long)]
        root: Option<PathBuf>,
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
        /// The layout file; its root is used when --root is not given.
        layout: Option<PathBuf>,
        #[arg(long)]
        root: Option<PathBuf>,
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
        /// The layout file; its root is used when --root is not given.
        layout: Option<PathBuf>,
        #[arg(long)]
        root: Option<PathBuf>,
        /// Address to listen on, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:9465")]
        listen: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cgacct-pin: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load_layout(path: &std::path::Path, root: Option<PathBuf>) -> Result<Layout> {
    let mut layout = Layout::from_path(path)?;
    if let Some(root) = root {
        layout.root = root;
    }
    Ok(layout)
}

fn root_of(layout: Option<PathBuf>, root: Option<PathBuf>) -> Result<PathBuf> {
    match (root, layout) {
        (Some(r), _) => Ok(r),
        (None, Some(l)) => Ok(Layout::from_path(&l)?.root),
        (None, None) => Ok(PathBuf::from(DEFAULT_ROOT)),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Apply {
            layout,
            root,
            dry_run,
        } => {
            let layout = load_layout(&layout, root)?;
            let ctx = Context::discover(&layout, !dry_run)?;
            let actions = ctx.plan(&layout)?;
            if dry_run {
                print_plan(&actions);
                return Ok(());
            }
            if actions.is_empty() {
                println!("nothing to do: {} matches the layout", layout.root.display());
            }
            if !ctx.pins.dots {
                println!("note: this kernel's bpffs refuses '.' in names: dots are written %2e");
            }
            apply::execute(&layout, &ctx, &actions, |a| println!("{a}"))?;
            cgacct_pin::owners::converge(&layout, &ctx, |line| println!("{line}"))
        }
        Command::Plan { layout, root, json } => {
            let layout = load_layout(&layout, root)?;
            let ctx = Context::discover(&layout, false)?;
            let actions = ctx.plan(&layout)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&actions)?);
            } else {
                print_plan(&actions);
            }
            Ok(())
        }
        Command::Status { layout, root, json } => status(&root_of(layout, root)?, json),
        Command::Top {
            layout,
            root,
            interval,
            once,
            json,
            limit,
            source,
            sort,
        } => {
            if !(interval.is_finite() && interval > 0.0 && interval < 86400.0) {
                anyhow::bail!("--interval {interval} is out of range: give seconds, e.g. 1 or 0.5");
            }
            let o = cgacct_pin::top::Options {
                interval: std::time::Duration::from_secs_f64(interval),
                once,
                json,
                limit,
                source,
                sort,
            };
            cgacct_pin::top::run(&root_of(layout, root)?, &o)
        }
        Command::Watch {
            layout,
            root,
            reconcile_every,
            keep_removed,
        } => {
            if reconcile_every == 0 {
                anyhow::bail!("--reconcile-every must be at least 1 second");
            }
            let opts = cgacct_pin::watch::Options {
                reconcile_every: std::time::Duration::from_secs(reconcile_every),
                keep_removed: std::time::Duration::from_secs(keep_removed),
            };
            cgacct_pin::watch::run(&layout, root, opts)
        }
        Command::Removed { layout, root, json } => cgacct_pin::removed::show(&root_of(layout, root)?, json),
        Command::Export { layout, root, listen } => {
            cgacct_pin::metrics::serve(&root_of(layout, root)?, &listen)
        }
        Command::Destroy { layout, root } => {
            let root = root_of(layout, root)?;
            host::check_on_bpffs(&root)?;
            let dots = root.is_dir() && cgacct_pin::names::probe_dots(&root)?;
            let (removed, left) = apply::destroy(&Pins::new(&root, dots))?;
            for p in &removed {
                println!("unpinned {}", p.display());
            }
            if left.is_empty() {
                println!("{} removed ({} pins)", root.display(), removed.len());
                Ok(())
            } else {
                for p in &left {
                    eprintln!("left in place (not made by cgacct): {}", p.display());
                }
                anyhow::bail!("{} still holds entries cgacct did not make", root.display())
            }
        }
    }
}

fn print_plan(actions: &[plan::Action]) {
    if actions.is_empty() {
        println!("nothing to do");
    }
    for a in actions {
        println!("would {a}");
    }
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
            "programs": programs.iter().map(|(p, ok)| serde_json::json!({"name": p, "pinned": ok})).collect::<Vec<_>>(),
            "tc_links": tc, "cgroup_links": cg, "stats_files": stats,
            "cgroups": snap.cgroups.iter().map(|(id, c)| serde_json::json!({"id": id, "path": cg_name(id), "counters": counters(c)})).collect::<Vec<_>>(),
            "tc_cgroups": snap.tc_cgroups.iter().map(|(id, c)| serde_json::json!({"id": id, "path": cg_name(id), "counters": counters(c)})).collect::<Vec<_>>(),
            "interfaces": snap.interfaces.iter().map(|(i, c)| serde_json::json!({"ifindex": i, "name": ifnames.get(i), "counters": counters(c)})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("root {}", root.display());
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
