//! Section 6, memory: kernel memory per tracked cgroup and per attached interface,
//! and cgacct-pin's own peak RSS at many cgroups.
//!
//! Kernel memory is measured two ways around each `cgacct-pin apply`:
//! - charged to this process's memory cgroup (BPF maps, programs, links and
//!   bpffs inodes are charged to the memcg of the process that creates
//!   them since Linux 5.11): v2 `memory.stat` `kernel`, or v1
//!   `memory.kmem.usage_in_bytes`. Exact for what is charged, blind to
//!   kernel allocations that are not charged to any memcg.
//! - system-wide, from /proc/meminfo (Slab + Percpu + VmallocUsed +
//!   KernelStack + PageTables): sees everything, including whatever else
//!   the machine is doing at the same time.
//!
//! The counters themselves live in per-CPU hash maps whose entries are
//! allocated when first used: what an empty map costs per slot the layout
//! sizes it for (its buckets) is reported from the maps' own `memlock`
//! (fdinfo), read right after the first apply.
use std::{
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{anyhow, Result};
use aya::maps::MapData;
use cgacct_common::maps;
use cgacct_pin::bpffs::names::Pins;

use crate::{
    report::{Report, Summary, Unit, Verdict},
    world::{check_interrupted, run, run_rusage, World},
};

const SECTION: &str = "6 memory";

pub struct Options {
    /// Cgroups and interfaces added per measurement.
    pub n: usize,
    pub rounds: usize,
    /// Cgroups for the peak RSS figure.
    pub rss_cgroups: usize,
}

fn summary(v: &[f64]) -> Result<Summary> {
    Summary::of(v).ok_or_else(|| anyhow!("no samples"))
}

/// Where this process's kernel memory charge can be read.
pub enum Memcg {
    V2(PathBuf),
    V1(PathBuf),
}

impl Memcg {
    pub fn find() -> Option<Memcg> {
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
        for line in own.lines() {
            let mut f = line.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let rel = path.trim_start_matches('/');
            if controllers.is_empty() {
                let mount = cgacct_pin::observe::host::cgroup2_mount().ok()?;
                let stat = mount.join(rel).join("memory.stat");
                if stat.exists() {
                    return Some(Memcg::V2(stat));
                }
            } else if controllers.split(',').any(|c| c == "memory") {
                for m in info.lines() {
                    let Some((left, right)) = m.split_once(" - ") else {
                        continue;
                    };
                    let mut r = right.split(' ');
                    if r.next() != Some("cgroup")
                        || !r.nth(1).is_some_and(|o| o.split(',').any(|x| x == "memory"))
                    {
                        continue;
                    }
                    let mount = left.split(' ').nth(4)?;
                    let file = Path::new(mount).join(rel).join("memory.kmem.usage_in_bytes");
                    if file.exists() {
                        return Some(Memcg::V1(file));
                    }
                }
            }
        }
        None
    }

    pub fn bytes(&self) -> Result<f64> {
        match self {
            Memcg::V2(stat) => {
                let text = fs::read_to_string(stat)?;
                text.lines()
                    .find_map(|l| l.strip_prefix("kernel ").and_then(|v| v.trim().parse().ok()))
                    .ok_or_else(|| anyhow!("no `kernel` line in {}", stat.display()))
            }
            Memcg::V1(file) => Ok(fs::read_to_string(file)?.trim().parse()?),
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Memcg::V2(_) => "memcg v2 memory.stat kernel",
            Memcg::V1(_) => "memcg v1 memory.kmem.usage_in_bytes",
        }
    }
}

/// Slab + Percpu + VmallocUsed + KernelStack + PageTables, in bytes.
fn meminfo_kernel() -> Result<f64> {
    let text = fs::read_to_string("/proc/meminfo")?;
    let mut sum = 0.0;
    for key in ["Slab:", "Percpu:", "VmallocUsed:", "KernelStack:", "PageTables:"] {
        let kb: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            })
            .ok_or_else(|| anyhow!("no {key} in /proc/meminfo"))?;
        sum += kb * 1024.0;
    }
    Ok(sum)
}

/// Kernel memory (memcg, system-wide) before and after `f`.
fn delta(memcg: Option<&Memcg>, f: impl FnOnce() -> Result<()>) -> Result<(Option<f64>, f64)> {
    let settle = || thread::sleep(Duration::from_millis(300));
    settle();
    let (m0, s0) = (memcg.map(Memcg::bytes).transpose()?, meminfo_kernel()?);
    f()?;
    settle();
    let (m1, s1) = (memcg.map(Memcg::bytes).transpose()?, meminfo_kernel()?);
    Ok((m0.zip(m1).map(|(a, b)| b - a), s1 - s0))
}

/// `memlock` of a pinned map, from its fdinfo.
fn memlock(path: &Path) -> Result<f64> {
    let data = MapData::from_pin(path)?;
    let fd = data.fd().as_fd_raw();
    let text = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:").and_then(|v| v.trim().parse().ok()))
        .ok_or_else(|| anyhow!("no memlock in the fdinfo of {}", path.display()))
}

trait RawFdOf {
    fn as_fd_raw(&self) -> i32;
}

impl RawFdOf for aya::maps::MapFd {
    fn as_fd_raw(&self) -> i32 {
        use std::os::fd::AsFd as _;
        self.as_fd().as_raw_fd()
    }
}

/// Runs `cgacct-pin apply LAYOUT` and returns (wall ms, peak RSS in KiB).
fn apply_rusage(w: &World, layout: &Path) -> Result<(f64, f64)> {
    run_rusage(Command::new(&w.cgacct_pin).arg("apply").arg(layout))
}

pub fn run_section(report: &mut Report, w: &mut World, o: &Options) -> Result<()> {
    let memcg = Memcg::find();
    let n = o.n;
    let mem_rel = w.cgroup_rel("mem");
    let (mut base_m, mut base_s) = (Vec::new(), Vec::new());
    let (mut cg_m, mut cg_s) = (Vec::new(), Vec::new());
    let (mut if_m, mut if_s) = (Vec::new(), Vec::new());
    let mut slot = None;
    for round in 0..o.rounds {
        check_interrupted()?;
        let root = w.root(&format!("mem{round}"));
        let write = |name: &str, body: &str| w.layout(name, &format!("root = {root:?}\n{body}"));
        let base = write("mem-base", "")?;
        let cgroups = write(
            "mem-cgroups",
            &format!("[cgroup_skb]\nattach = [\"/{mem_rel}/*\"]\n[stats]\ncgroups = [\"/{mem_rel}/*\"]\n"),
        )?;
        let all = write(
            "mem-all",
            &format!(
                "[tc]\ninterfaces = [{:?}]\n[cgroup_skb]\nattach = [\"/{mem_rel}/*\"]\n\
                 [stats]\ncgroups = [\"/{mem_rel}/*\"]\n",
                w.host_if_glob()
            ),
        )?;
        w.add_cgroups("mem", n)?;
        w.add_veths(n)?;
        let apply = |layout: &Path| -> Result<()> {
            run(Command::new(&w.cgacct_pin).arg("apply").arg(layout))?;
            Ok(())
        };
        let (m, s) = delta(memcg.as_ref(), || apply(&base))?;
        base_m.extend(m);
        base_s.push(s);
        if slot.is_none() {
            let pins = Pins::new(&root, true);
            let per_slot = (memlock(&pins.map(maps::CGROUP_STATS))?
                + memlock(&pins.map(maps::TC_CGROUP_STATS))?)
                / f64::from(cgacct_pin::spec::layout::MapSizes::default().cgroups);
            slot = Some(per_slot);
        }
        let (m, s) = delta(memcg.as_ref(), || apply(&cgroups))?;
        cg_m.extend(m.map(|m| m / n as f64));
        cg_s.push(s / n as f64);
        let (m, s) = delta(memcg.as_ref(), || apply(&all))?;
        if_m.extend(m.map(|m| m / n as f64));
        if_s.push(s / n as f64);
        w.destroy_root(&root)?;
        w.del_veths()?;
        w.remove_cgroups("mem")?;
    }
    let source = memcg.as_ref().map(Memcg::describe).unwrap_or("no memcg");
    let mut fig = |what: String, v: &[f64], unit: Unit| -> Result<()> {
        if v.is_empty() {
            report.note(
                SECTION,
                what,
                format!("{source}: not measurable here"),
                Verdict::NotAvailable,
            );
        } else {
            report.figure(SECTION, what, summary(v)?, unit, "", Verdict::Info);
        }
        Ok(())
    };
    let kib = |v: &[f64]| v.iter().map(|b| b / 1024.0).collect::<Vec<_>>();
    fig(
        format!("programs + maps, once ({source})"),
        &kib(&base_m),
        Unit::KiB,
    )?;
    fig(
        "programs + maps, once (/proc/meminfo, system-wide)".into(),
        &kib(&base_s),
        Unit::KiB,
    )?;
    if let Some(slot) = slot {
        fig(
            "counters per cgroup slot before use (memlock of both empty cgroup maps / max_entries)".into(),
            &[slot],
            Unit::Bytes,
        )?;
    }
    fig(
        format!("per tracked cgroup: 2 cgroup_skb links + stats file, {n} cgroups ({source})"),
        &cg_m,
        Unit::Bytes,
    )?;
    fig(
        "per tracked cgroup (/proc/meminfo, system-wide)".into(),
        &cg_s,
        Unit::Bytes,
    )?;
    fig(
        format!("per attached interface: 2 TCX links, {n} veths ({source})"),
        &if_m,
        Unit::Bytes,
    )?;
    fig(
        "per attached interface (/proc/meminfo, system-wide)".into(),
        &if_s,
        Unit::Bytes,
    )?;

    // Peak RSS of cgacct-pin at many cgroups, from nothing and converged.
    let big = o.rss_cgroups;
    let rss_rel = w.cgroup_rel("rss");
    w.add_cgroups("rss", big)?;
    let root = w.root("rss");
    let layout = w.layout(
        "rss",
        &format!("root = {root:?}\n[cgroup_skb]\nattach = [\"/{rss_rel}\"]\n[stats]\ncgroups = [\"/{rss_rel}/**\"]\n"),
    )?;
    let (t1, r1) = apply_rusage(w, &layout)?;
    let (t2, r2) = apply_rusage(w, &layout)?;
    w.destroy_root(&root)?;
    w.remove_cgroups("rss")?;
    let one = |v: f64| Summary {
        median: v,
        min: v,
        max: v,
        n: 1,
    };
    report.figure(
        SECTION,
        format!("cgacct-pin apply peak RSS, {} stats files from nothing", big + 1),
        one(r1),
        Unit::KiB,
        "",
        Verdict::Info,
    );
    report.figure(SECTION, "  its wall time", one(t1), Unit::Ms, "", Verdict::Info);
    report.figure(
        SECTION,
        format!("cgacct-pin apply peak RSS, re-apply at {} stats files", big + 1),
        one(r2),
        Unit::KiB,
        "",
        Verdict::Info,
    );
    report.figure(SECTION, "  its wall time", one(t2), Unit::Ms, "", Verdict::Info);
    Ok(())
}
