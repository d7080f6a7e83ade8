//! Section 8, cgroups at scale: a host with 100,000 cgroups (1000 groups of
//! 1000), every one with a stats file. From nothing to applied, a
//! converged re-apply, `status --json`, the top cgroup's `net.stat` (a walk
//! of the whole subtree), the map dump with every cgroup holding counters,
//! kernel memory per cgroup, cgacct-pin's peak RSS, and `watch` following
//! 1000 mkdir and 1000 rmdir per second. Each figure is one host's; where
//! one stops scaling, the figures say by how much.
use std::{
    fs,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Map, MapData, MapError, PerCpuHashMap, PerCpuValues},
    sys::SyscallError,
};
use cgacct_common::{maps, Counters};
use cgacct_pin::{bpffs::names::Pins, report::read};

use crate::{
    memory::Memcg,
    reads,
    report::{Report, Summary, Unit, Verdict},
    watch,
    world::{check_interrupted, run_rusage, World},
};

const SECTION: &str = "8 cgroups at scale";
/// Cgroups per group directory.
const GROUP: usize = 1000;

pub struct Options {
    /// Cgroups below the top one (a multiple of 1000, or fewer than 1000).
    pub cgroups: usize,
    pub rounds: usize,
    /// mkdir (and as many rmdir) per second while `watch` runs.
    pub churn_rate: usize,
    pub churn_seconds: u64,
}

fn summary(v: &[f64]) -> Result<Summary> {
    Summary::of(v).ok_or_else(|| anyhow!("no samples"))
}

fn one(v: f64) -> Summary {
    Summary {
        median: v,
        min: v,
        max: v,
        n: 1,
    }
}

/// utime + stime of process `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces), from field 3 on.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

pub fn run_section(report: &mut Report, w: &World, o: &Options) -> Result<()> {
    let n = o.cgroups;
    let top = w.cgroup_rel("big");
    let made = Instant::now();
    w.add_cgroups("big", 0)?;
    let groups = n.div_ceil(GROUP);
    for g in 0..groups {
        check_interrupted()?;
        w.add_cgroups(&format!("big/g{g}"), GROUP.min(n - g * GROUP))?;
    }
    w.add_cgroups("big/churn", 0)?;
    let total = n + groups + 2;
    eprintln!("   {total} cgroups made in {:.1} s", made.elapsed().as_secs_f64());
    let root = w.root("big");
    let slots = ((total + total / 4) as u32).next_power_of_two();
    let layout = w.layout(
        "big",
        &format!(
            "root = {root:?}\n[maps]\ncgroups = {slots}\n[cgroup_skb]\nattach = [\"/{top}\"]\n\
             [stats]\ncgroups = [\"/{top}/**\"]\n"
        ),
    )?;
    let result = measure(report, w, o, &root, &layout, &top, total);
    w.destroy_root(&root)?;
    w.remove_cgroups("big")?;
    result
}

fn measure(
    report: &mut Report,
    w: &World,
    o: &Options,
    root: &Path,
    layout: &Path,
    top: &str,
    total: usize,
) -> Result<()> {
    let apply = || run_rusage(Command::new(&w.cgacct_pin).arg("apply").arg(layout));
    let memcg = Memcg::find();
    let before = memcg.as_ref().map(|m| m.bytes()).transpose()?;
    let (t, rss) = apply()?;
    let after = memcg.as_ref().map(|m| m.bytes()).transpose()?;
    report.figure(
        SECTION,
        format!("apply from nothing: {total} cgroups, {total} stats files"),
        one(t),
        Unit::Ms,
        "",
        Verdict::Info,
    );
    report.figure(SECTION, "  its peak RSS", one(rss), Unit::KiB, "", Verdict::Info);
    if let (Some(m), Some(b), Some(a)) = (&memcg, before, after) {
        report.figure(
            SECTION,
            format!(
                "kernel memory per cgroup: its stats file, no counters yet ({})",
                m.describe()
            ),
            one((a - b) / total as f64),
            Unit::Bytes,
            "",
            Verdict::Info,
        );
    }

    timed_rounds(
        report,
        o.rounds,
        "re-apply on the converged host (nothing to do)",
        &apply,
    )?;
    timed_rounds(
        report,
        o.rounds,
        "status --json (every cgroup's net.stat keys)",
        &|| {
            run_rusage(
                Command::new(&w.cgacct_pin)
                    .args(["status", "--json", "--root"])
                    .arg(root),
            )
        },
    )?;

    // The top cgroup's net.stat: the iterator walks its whole subtree.
    let pins = Pins::new(root, true);
    let stat = pins.stats_file(top);
    let mut reads = Vec::new();
    for _ in 0..o.rounds.max(5) {
        let t0 = Instant::now();
        let text = fs::read_to_string(&stat).with_context(|| format!("reading {}", stat.display()))?;
        reads.push(t0.elapsed().as_secs_f64() * 1e3);
        let sub = read::parse_stat(&text)?.get("subtree_cgroups").copied();
        if sub != Some(total as u64) {
            bail!("{} counts {sub:?} cgroups, not {total}", stat.display());
        }
    }
    report.figure(
        SECTION,
        format!("net.stat of the top cgroup ({total} in its subtree)"),
        summary(&reads)?,
        Unit::Ms,
        "",
        Verdict::Info,
    );

    dump(report, o, &pins, total, memcg.as_ref())?;
    churn(report, w, o, layout, &pins, top)
}

/// `rounds` runs of `run` (wall ms, peak RSS KiB): the figures of both.
fn timed_rounds(
    report: &mut Report,
    rounds: usize,
    what: &str,
    run: &dyn Fn() -> Result<(f64, f64)>,
) -> Result<()> {
    let (mut times, mut rsss) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        check_interrupted()?;
        let (t, r) = run()?;
        times.push(t);
        rsss.push(r);
    }
    report.figure(SECTION, what, summary(&times)?, Unit::Ms, "", Verdict::Info);
    report.figure(
        SECTION,
        "  its peak RSS",
        summary(&rsss)?,
        Unit::KiB,
        "",
        Verdict::Info,
    );
    Ok(())
}

/// Every cgroup gets counters in both cgroup maps (made up, written from
/// here), then the maps are read back the way `status` does.
fn dump(report: &mut Report, o: &Options, pins: &Pins, total: usize, memcg: Option<&Memcg>) -> Result<()> {
    let cpus = cgacct_pin::observe::kernel::nr_cpus()? as usize;
    let value = |k: u64| reads::made_up_counters(k, cpus);
    let before = memcg.map(|m| m.bytes()).transpose()?;
    // Ids far above any real cgroup's: these are not cgroups of the host.
    let base = 1u64 << 40;
    for name in [maps::CGROUP_STATS, maps::TC_CGROUP_STATS] {
        let data = MapData::from_pin(pins.map(name))?;
        let mut m: PerCpuHashMap<MapData, u64, Counters> = Map::PerCpuHashMap(data).try_into()?;
        for k in 0..total as u64 {
            insert(&mut m, base + k, || value(k))?;
        }
    }
    let after = memcg.map(|m| m.bytes()).transpose()?;
    if let (Some(m), Some(b), Some(a)) = (memcg, before, after) {
        report.figure(
            SECTION,
            format!(
                "kernel memory per cgroup with counters, both cgroup maps, {cpus} CPUs ({})",
                m.describe()
            ),
            one((a - b) / total as f64),
            Unit::Bytes,
            "",
            Verdict::Info,
        );
    }
    let mut times = Vec::new();
    for _ in 0..o.rounds.max(5) {
        check_interrupted()?;
        let t0 = Instant::now();
        let s = read::snapshot(pins)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        if s.cgroups.len() != total || s.tc_cgroups.len() != total {
            bail!(
                "the dump read {} and {} cgroups, not {total}",
                s.cgroups.len(),
                s.tc_cgroups.len()
            );
        }
    }
    let s = summary(&times)?;
    report.figure(
        SECTION,
        format!("dump of {total} cgroups x 2 maps, batch (status)"),
        s,
        Unit::Ms,
        "<= 100 ms",
        Verdict::from_goal(s.median <= 100.0),
    );
    Ok(())
}

/// Inserts one entry; `ENOMEM` is retried: the kernel refills the
/// allocator of maps without preallocation asynchronously, and a tight
/// loop of inserts from user space can find it empty for a moment.
fn insert(
    m: &mut PerCpuHashMap<MapData, u64, Counters>,
    key: u64,
    value: impl Fn() -> Result<PerCpuValues<Counters>>,
) -> Result<()> {
    for _ in 0..1000 {
        match m.insert(key, value()?, 0) {
            Ok(()) => return Ok(()),
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::ENOMEM) =>
            {
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
    bail!("inserting key {key}: ENOMEM for a second")
}

/// `watch` on the converged host while cgroups come and go at
/// `churn_rate` mkdir and as many rmdir per second (each lives 100 ms):
/// its CPU, and how long after the last rmdir the stats files are those of
/// the live cgroups, no more and no fewer.
fn churn(report: &mut Report, w: &World, o: &Options, layout: &Path, pins: &Pins, top: &str) -> Result<()> {
    let watcher = watch::Watcher::start(w, layout)?;
    let churn = format!("{top}/churn");
    // The first pass is a whole apply; then a new cgroup shows it works.
    let probe = format!("{churn}/ready");
    fs::create_dir(w.cgroup_mount.join(&probe))?;
    let start = Instant::now();
    while !pins.stats_file(&probe).exists() {
        if start.elapsed() > Duration::from_secs(600) {
            bail!(
                "cgacct-pin watch made no {} within 600 s",
                pins.stats_file(&probe).display()
            );
        }
        check_interrupted()?;
        thread::sleep(Duration::from_millis(10));
    }
    fs::remove_dir(w.cgroup_mount.join(&probe))?;
    let ready = start.elapsed().as_secs_f64() * 1e3;
    let live = (o.churn_rate / 10).max(1);
    let events = o.churn_rate * o.churn_seconds as usize;
    let cpu0 = cpu_seconds(watcher.pid())?;
    let t0 = Instant::now();
    let dir = |k: usize| w.cgroup_mount.join(format!("{churn}/x{k}"));
    for k in 0..events {
        let due = Duration::from_secs_f64(k as f64 / o.churn_rate as f64);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            thread::sleep(wait);
        }
        fs::create_dir(dir(k)).with_context(|| format!("mkdir {}", dir(k).display()))?;
        if k >= live {
            fs::remove_dir(dir(k - live)).with_context(|| format!("rmdir {}", dir(k - live).display()))?;
        }
    }
    let churned = t0.elapsed().as_secs_f64();
    for k in events.saturating_sub(live)..events {
        fs::remove_dir(dir(k))?;
    }
    let stop = Instant::now();
    // Converged: no stats file left of any churned cgroup.
    let stats_dir = pins.stats_file(&churn);
    let stats_dir = stats_dir
        .parent()
        .ok_or_else(|| anyhow!("stats file without a directory"))?;
    let left = || -> usize {
        fs::read_dir(stats_dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .count()
            })
            .unwrap_or(0)
    };
    while left() > 0 {
        if stop.elapsed() > Duration::from_secs(600) {
            bail!(
                "{} stats files of removed cgroups left 600 s after the churn",
                left()
            );
        }
        check_interrupted()?;
        thread::sleep(Duration::from_millis(10));
    }
    let settle = stop.elapsed().as_secs_f64() * 1e3;
    let cpu = cpu_seconds(watcher.pid())? - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    drop(watcher);
    report.figure(
        SECTION,
        "watch: its first pass (a whole apply) to following",
        one(ready),
        Unit::Ms,
        "",
        Verdict::Info,
    );
    report.figure(
        SECTION,
        format!("watch: churn made, mkdir + rmdir ({} s)", o.churn_seconds),
        one(events as f64 / churned),
        Unit::PerSec,
        "",
        Verdict::Info,
    );
    report.figure(
        SECTION,
        "watch: after the last rmdir, until no removed cgroup's stats file is left",
        one(settle),
        Unit::Ms,
        "",
        Verdict::Info,
    );
    report.figure(
        SECTION,
        "watch: its CPU over the churn and the settling, of one CPU",
        one(100.0 * cpu / wall),
        Unit::Percent,
        "",
        Verdict::Info,
    );
    Ok(())
}
