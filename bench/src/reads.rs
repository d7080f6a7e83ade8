//! Section 4, reads: one `net.stat` beside a cgroupfs stat file of the same cgroup,
//! a subtree total over many descendants, and the full dump of the maps
//! that `status` (and any metrics exporter) does, by batch and key by key.
use std::{
    ffi::CString,
    fs,
    io::Read as _,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Map, MapData, PerCpuHashMap, PerCpuValues},
    programs::Iter,
    Btf, EbpfLoader,
};
use cgacct_common::{maps, Counters, IfaceCounters};
use cgacct_pin::{
    bpffs::names::Pins,
    report::read,
    sys::bpf::{self, CgroupIterOrder},
};

use crate::{
    packet::BENCH_OBJECT,
    report::{Report, Summary, Unit, Verdict},
    world::{check_interrupted, run, World},
};

const SECTION: &str = "4 reads";

pub struct Options {
    /// Children of the subtree whose total is read.
    pub children: usize,
    /// Keys in each cgroup map for the dump.
    pub dump_keys: usize,
    pub rounds: usize,
    /// Single-file reads timed per round.
    pub reads: usize,
}

/// open, read to the end, close: what `cat` does, without the process.
fn read_file(path: &Path, buf: &mut Vec<u8>) -> Result<usize> {
    buf.clear();
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.read_to_end(buf)
        .with_context(|| format!("reading {}", path.display()))
}

/// Mean µs per read over `n` reads.
fn time_reads(path: &Path, n: usize) -> Result<f64> {
    let mut buf = Vec::with_capacity(4096);
    let start = Instant::now();
    for _ in 0..n {
        if read_file(path, &mut buf)? == 0 {
            bail!("{} read empty", path.display());
        }
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
}

fn summary(v: &[f64]) -> Result<Summary> {
    Summary::of(v).ok_or_else(|| anyhow!("no samples"))
}

/// The benchmark's `floor_iter` pinned at `pin` as an iterator on `cgroup`
/// with `net.stat`'s walk order: reading it costs what the kernel's
/// iterator file costs before any program work. Removed on drop.
struct FloorIter {
    pin: PathBuf,
}

impl FloorIter {
    fn pin(w: &World, cgroup_rel: &str, pin: PathBuf) -> Result<FloorIter> {
        let mut ebpf = EbpfLoader::new()
            .load(BENCH_OBJECT)
            .context("loading the benchmark's BPF object")?;
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let p: &mut Iter = ebpf
            .program_mut("floor_iter")
            .ok_or_else(|| anyhow!("floor_iter missing from the benchmark's object"))?
            .try_into()?;
        p.load("cgroup", &btf).context("loading floor_iter")?;
        let dir = fs::File::open(w.cgroup_mount.join(cgroup_rel))
            .with_context(|| format!("opening cgroup {cgroup_rel}"))?;
        let link = bpf::cgroup_iter_link(p.fd()?.as_fd(), dir.as_fd(), CgroupIterOrder::DescendantsPre)?;
        let c = CString::new(pin.as_os_str().as_encoded_bytes())?;
        bpf::obj_pin(link.as_fd(), &c).with_context(|| format!("pinning {}", pin.display()))?;
        Ok(FloorIter { pin })
    }
}

impl Drop for FloorIter {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.pin);
    }
}

pub fn run_section(report: &mut Report, w: &World, o: &Options) -> Result<()> {
    let parent_rel = w.cgroup_rel("reads");
    w.add_cgroups("reads", o.children)?;
    let root = w.root("reads");
    let layout = w.layout(
        "reads",
        &format!(
            "root = {root:?}\n[cgroup_skb]\nattach = [\"/{parent_rel}\"]\n[stats]\ncgroups = [\"/{parent_rel}/**\"]\n"
        ),
    )?;
    run(std::process::Command::new(&w.cgacct_pin)
        .arg("apply")
        .arg(&layout))?;
    let pins = Pins::new(&root, true);
    let leaf_rel = format!("{parent_rel}/c0");
    let leaf_stat = pins.stats_file(&leaf_rel);
    let leaf_cpu = w.cgroup_mount.join(&leaf_rel).join("cpu.stat");
    let parent_stat = pins.stats_file(&parent_rel);
    let parent_cpu = w.cgroup_mount.join(&parent_rel).join("cpu.stat");
    let floor = FloorIter::pin(w, &leaf_rel, w.bpf_dir.join("reads-floor-iter"))?;
    let walked = read::read_stat(&parent_stat)?
        .get("subtree_cgroups")
        .copied()
        .unwrap_or(0);
    if walked != o.children as u64 + 1 {
        bail!(
            "{} summed {walked} cgroups, expected {}",
            parent_stat.display(),
            o.children + 1
        );
    }

    let (mut ours, mut theirs, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let (mut floors, mut above, mut floor_ratio) = (Vec::new(), Vec::new(), Vec::new());
    let (mut sub, mut sub_cpu) = (Vec::new(), Vec::new());
    let sub_reads = (o.reads / 50).max(2);
    for round in 0..o.rounds {
        check_interrupted()?;
        // The three files in a rotating order, so none always goes first.
        let files = [&leaf_stat, &leaf_cpu, &floor.pin];
        let mut t = [0.0; 3];
        for k in 0..3 {
            let i = (round + k) % 3;
            t[i] = time_reads(files[i], o.reads)?;
        }
        let [a, b, f] = t;
        ours.push(a);
        theirs.push(b);
        ratio.push(a / b);
        floors.push(f);
        above.push(a - f);
        floor_ratio.push(f / b);
        sub.push(time_reads(&parent_stat, sub_reads)?);
        sub_cpu.push(time_reads(&parent_cpu, sub_reads)?);
    }
    report.figure(
        SECTION,
        "net.stat of one cgroup (open, read, close)",
        summary(&ours)?,
        Unit::Us,
        "",
        Verdict::Info,
    );
    report.figure(
        SECTION,
        "cpu.stat of the same cgroup (cgroupfs)",
        summary(&theirs)?,
        Unit::Us,
        "",
        Verdict::Info,
    );
    let r = summary(&ratio)?;
    report.figure(
        SECTION,
        "net.stat / cpu.stat",
        r,
        Unit::Ratio,
        "<= 1.00x",
        Verdict::from_goal(r.median <= 1.0),
    );
    report.figure(
        SECTION,
        "floor: an iterator file that writes one line and does no work",
        summary(&floors)?,
        Unit::Us,
        "",
        Verdict::Info,
    );
    report.figure(
        SECTION,
        "floor / cpu.stat",
        summary(&floor_ratio)?,
        Unit::Ratio,
        "",
        Verdict::Info,
    );
    report.figure(
        SECTION,
        "net.stat above the floor (cgacct's program work)",
        summary(&above)?,
        Unit::Us,
        "",
        Verdict::Info,
    );
    drop(floor);
    report.figure(
        SECTION,
        format!("net.stat subtree total over {} descendants", o.children),
        summary(&sub)?,
        Unit::Us,
        "",
        Verdict::Info,
    );
    report.figure(
        SECTION,
        "cpu.stat of the same parent (cgroupfs)",
        summary(&sub_cpu)?,
        Unit::Us,
        "",
        Verdict::Info,
    );
    w.destroy_root(&root)?;
    w.remove_cgroups("reads")?;
    dump(report, w, o)
}

/// Per-CPU counters for key `k` on `cpus` CPUs, each CPU's different, for
/// maps filled from the benchmark.
pub fn made_up_counters(k: u64, cpus: usize) -> Result<PerCpuValues<Counters>> {
    let per_cpu: Vec<Counters> = (0..cpus as u64)
        .map(|c| Counters {
            rx_bytes: k * 1000 + c,
            rx_packets: k + c,
            tx_bytes: k * 2000 + c,
            tx_packets: 2 * k + c,
        })
        .collect();
    PerCpuValues::try_from(per_cpu).map_err(|e| anyhow!("per-CPU values: {e}"))
}

/// Fills the pinned maps of a fresh root with `dump_keys` cgroups (both
/// cgroup maps) and a tenth as many interfaces, then reads them all back
/// the way `status` does, by batch and key by key, interleaved.
fn dump(report: &mut Report, w: &World, o: &Options) -> Result<()> {
    let root = w.root("dump");
    let layout = w.layout("dump", &format!("root = {root:?}\n"))?;
    run(std::process::Command::new(&w.cgacct_pin)
        .arg("apply")
        .arg(&layout))?;
    let pins = Pins::new(&root, true);
    let cpus = cgacct_pin::observe::kernel::nr_cpus()? as usize;
    let value = |k: u64| made_up_counters(k, cpus);
    for name in [maps::CGROUP_STATS, maps::TC_CGROUP_STATS] {
        let data = MapData::from_pin(pins.map(name))?;
        let mut m: PerCpuHashMap<MapData, u64, Counters> = Map::PerCpuHashMap(data).try_into()?;
        for k in 1..=o.dump_keys as u64 {
            m.insert(k, value(k)?, 0)?;
        }
    }
    let data = MapData::from_pin(pins.map(maps::IFACE_STATS))?;
    let mut m: PerCpuHashMap<MapData, u32, IfaceCounters> = Map::PerCpuHashMap(data).try_into()?;
    for k in 1..=(o.dump_keys / 10) as u32 {
        let v: Vec<IfaceCounters> = value(u64::from(k))?
            .iter()
            .map(|&counters| IfaceCounters {
                counters,
                ..IfaceCounters::default()
            })
            .collect();
        m.insert(
            k,
            PerCpuValues::try_from(v).map_err(|e| anyhow!("per-CPU values: {e}"))?,
            0,
        )?;
    }

    let by_key = |pins: &Pins| -> Result<read::Snapshot> {
        Ok(read::Snapshot {
            cgroups: read::map_totals_by_key(&pins.map(maps::CGROUP_STATS))?,
            tc_cgroups: read::map_totals_by_key(&pins.map(maps::TC_CGROUP_STATS))?,
            interfaces: read::totals_by_key::<u32, IfaceCounters>(&pins.map(maps::IFACE_STATS))?,
            veth: read::map_totals_by_key(&pins.map(maps::VETH_STATS))?,
            classes: Default::default(),
        })
    };
    // Both ways must read the same numbers.
    let a = read::snapshot(&pins)?;
    let b = by_key(&pins)?;
    if a.cgroups != b.cgroups
        || a.tc_cgroups != b.tc_cgroups
        || a.interfaces != b.interfaces
        || a.veth != b.veth
    {
        bail!("batch and key-by-key reads of {} differ", root.display());
    }
    if a.cgroups.len() != o.dump_keys
        || a.cgroups.get(&7).map(|c| c.rx_packets) != Some(7 * cpus as u64 + (0..cpus as u64).sum::<u64>())
    {
        bail!("the dump read {} cgroups or wrong sums", a.cgroups.len());
    }

    let (mut batch, mut keyed, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..o.rounds {
        check_interrupted()?;
        let time = |f: &dyn Fn() -> Result<read::Snapshot>| -> Result<f64> {
            let start = Instant::now();
            let s = f()?;
            let t = start.elapsed().as_secs_f64() * 1e3;
            std::hint::black_box(s);
            Ok(t)
        };
        let (x, y) = if round % 2 == 0 {
            let x = time(&|| read::snapshot(&pins))?;
            (x, time(&|| by_key(&pins))?)
        } else {
            let y = time(&|| by_key(&pins))?;
            (time(&|| read::snapshot(&pins))?, y)
        };
        batch.push(x);
        keyed.push(y);
        ratio.push(y / x);
    }
    let n = o.dump_keys;
    let s = summary(&batch)?;
    report.figure(
        SECTION,
        format!(
            "dump of {n} cgroups x 2 maps + {} interfaces, batch (status)",
            n / 10
        ),
        s,
        Unit::Ms,
        "<= 50 ms",
        Verdict::from_goal(s.median <= 50.0),
    );
    report.figure(
        SECTION,
        "the same dump key by key (aya iteration)",
        summary(&keyed)?,
        Unit::Ms,
        "",
        Verdict::Info,
    );
    report.figure(
        SECTION,
        "key by key / batch",
        summary(&ratio)?,
        Unit::Ratio,
        "",
        Verdict::Info,
    );
    w.destroy_root(&root)
}
