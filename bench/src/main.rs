//! `cgacct-bench`: cgacct's costs measured against the floor and against
//! what operators would otherwise run, side by side in one run. See
//! BENCHMARKS.md for the method and the latest results; run it with
//! `scripts/bench.sh` (`--smoke` for the short CI mode).
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};

mod cgroups;
mod live;
mod memory;
mod packet;
mod reads;
mod report;
mod scale;
mod throughput;
mod traffic;
mod watch;
mod world;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Section {
    Packet,
    Throughput,
    Attach,
    Reads,
    Watch,
    Memory,
    Live,
    Cgroups,
}

#[derive(Parser)]
#[command(
    name = "cgacct-bench",
    about = "Benchmarks cgacct against the floor and the alternatives, and prints a table",
    after_help = "Example:\n  scripts/bench.sh\n  scripts/bench.sh --smoke\n  scripts/bench.sh --only packet --only reads"
)]
struct Cli {
    /// Tiny sizes and few repetitions: checks that every measurement runs (CI).
    #[arg(long)]
    smoke: bool,
    /// Run only these sections (repeatable); default: all.
    #[arg(long, value_enum)]
    only: Vec<Section>,
    /// The cgacct-pin binary under test (default: next to this binary).
    #[arg(long)]
    cgacct_pin: Option<PathBuf>,
    /// Name prefix of every kernel object the run creates (default: cgb<pid>).
    #[arg(long)]
    prefix: Option<String>,
    /// Interfaces and cgroups of section 3, attach at scale (repeatable:
    /// each size is measured in turn); default 1000 (10 with --smoke).
    #[arg(long, value_name = "N")]
    attach_n: Vec<usize>,
    /// Cgroups of section 8, cgroups at scale; default 100000 (1000 with
    /// --smoke).
    #[arg(long, value_name = "N")]
    scale_cgroups: Option<usize>,
    /// Remove everything a run with this prefix created, then exit.
    #[arg(long, value_name = "PREFIX")]
    cleanup: Option<String>,
    /// Section 7's sink (started by the benchmark itself in its netns).
    #[arg(long, value_name = "ADDR", hide = true)]
    sink: Option<std::net::SocketAddr>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cgacct-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let cgacct_pin = match cli.cgacct_pin {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("cgacct-pin"),
    };
    if let Some(addr) = cli.sink {
        traffic::sink(addr)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(prefix) = cli.cleanup {
        world::cleanup(&prefix, Some(&cgacct_pin));
        return Ok(ExitCode::SUCCESS);
    }
    world::catch_signals();
    let want = |s: Section| cli.only.is_empty() || cli.only.contains(&s);
    let mut report = report::Report::default();
    if want(Section::Packet) {
        eprintln!("== 1. packet path");
        let o = if cli.smoke {
            packet::Options {
                repeat: 10_000,
                rounds: 3,
            }
        } else {
            packet::Options {
                repeat: 1_000_000,
                rounds: 11,
            }
        };
        packet::run(&mut report, &o)?;
    }
    let needs_world = [
        Section::Throughput,
        Section::Attach,
        Section::Reads,
        Section::Watch,
        Section::Memory,
        Section::Live,
        Section::Cgroups,
    ]
    .into_iter()
    .any(want);
    if needs_world {
        let prefix = cli
            .prefix
            .unwrap_or_else(|| format!("cgb{}", std::process::id() % 100_000));
        let mut w = world::World::new(&prefix, &cgacct_pin)?;
        if want(Section::Throughput) {
            eprintln!("== 2. throughput");
            let o = if cli.smoke {
                throughput::Options {
                    seconds: 1,
                    rounds: 1,
                }
            } else {
                throughput::Options {
                    seconds: 5,
                    rounds: 10,
                }
            };
            throughput::run_section(&mut report, &w, &o)?;
        }
        if want(Section::Attach) {
            eprintln!("== 3. attach at scale");
            let sizes = match (&cli.attach_n[..], cli.smoke) {
                ([], true) => vec![10],
                ([], false) => vec![1000],
                (n, _) => n.to_vec(),
            };
            for n in sizes {
                let o = if cli.smoke {
                    scale::Options {
                        n,
                        rounds: 1,
                        reapplies: 2,
                        profile: true,
                    }
                } else {
                    scale::Options {
                        n,
                        rounds: 3,
                        reapplies: 5,
                        profile: true,
                    }
                };
                scale::run_section(&mut report, &mut w, &o)?;
            }
        }
        if want(Section::Reads) {
            eprintln!("== 4. reads");
            let o = if cli.smoke {
                reads::Options {
                    children: 20,
                    dump_keys: 1000,
                    rounds: 3,
                    reads: 200,
                }
            } else {
                reads::Options {
                    children: 1000,
                    dump_keys: 10_000,
                    rounds: 11,
                    reads: 5000,
                }
            };
            reads::run_section(&mut report, &w, &o)?;
        }
        if want(Section::Watch) {
            eprintln!("== 5. watch latency");
            let o = watch::Options {
                cgroups: if cli.smoke { 10 } else { 1000 },
            };
            watch::run_section(&mut report, &w, &o)?;
        }
        if want(Section::Memory) {
            eprintln!("== 6. memory");
            let o = if cli.smoke {
                memory::Options {
                    n: 10,
                    rounds: 1,
                    rss_cgroups: 100,
                }
            } else {
                memory::Options {
                    n: 1000,
                    rounds: 3,
                    rss_cgroups: 10_000,
                }
            };
            memory::run_section(&mut report, &mut w, &o)?;
        }
        if want(Section::Live) {
            eprintln!("== 7. live traffic");
            let o = if cli.smoke {
                live::Options {
                    seconds: 1,
                    rounds: 1,
                }
            } else {
                live::Options {
                    seconds: 5,
                    rounds: 5,
                }
            };
            live::run_section(&mut report, &w, &o)?;
        }
        if want(Section::Cgroups) {
            eprintln!("== 8. cgroups at scale");
            let o = cgroups::Options {
                cgroups: cli
                    .scale_cgroups
                    .unwrap_or(if cli.smoke { 1000 } else { 100_000 }),
                rounds: if cli.smoke { 1 } else { 3 },
                churn_rate: 1000,
                churn_seconds: if cli.smoke { 1 } else { 10 },
            };
            cgroups::run_section(&mut report, &w, &o)?;
        }
        drop(w);
    }
    println!("{}", report.table());
    if cli.smoke {
        println!(
            "smoke mode: sizes far below the goals' own; this run only shows that every measurement works."
        );
        return Ok(ExitCode::SUCCESS);
    }
    Ok(if report.missed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
