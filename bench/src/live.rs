//! Section 7, cost under real traffic: what each program costs per run
//! while real packets pass, from the kernel's own accounting
//! (`BPF_ENABLE_STATS`: `run_time_ns` and `run_cnt` of every program,
//! kept while the returned fd is open), and what cgacct costs workloads
//! that make the health programs run: drops and connections.
//!
//! 1. iperf3 through a veth pair (TCP both ways, UDP 64 B) with cgacct
//!    applied ([`Pair::layout`]) and, on the same hooks, the floor and the
//!    naive programs of section 1 (cgroup_skb ingress at the cgroups'
//!    parent, TCX ingress on the host-side veth): per program, the growth
//!    of `run_time_ns / run_cnt` over the run.
//! 2. A flood of 64 B UDP datagrams into a socket whose receive buffer is
//!    full (the sink, never read): nearly every datagram is dropped with
//!    `SOCKET_RCVBUFF` and passes `cgacct_kfree_skb`. Datagrams sent per
//!    second without and with cgacct applied, alternating; a third run per
//!    round, with stats on, gives each program's cost per run and checks
//!    the sink cgroup's `drop_packets` against the netns's Udp RcvbufErrors.
//! 3. TCP connection churn (connect, close with a reset) to the sink: the
//!    same figures for `inet_sock_set_state` and `tcp_send_reset`, and
//!    `tcp_passive_opens` against the netns's Tcp PassiveOpens.
//!
//! With stats on, each run of every program is timed (two clock reads
//! around it, in the kernel's `bpf_prog_run`): the floor's figure is that
//! overhead plus an empty program, so "above floor" is what cgacct adds.
use std::{
    collections::BTreeMap,
    fs,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::OwnedFd,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    programs::{
        cgroup_skb::CgroupSkbLinkId, links::CgroupAttachMode, tc::SchedClassifierLinkId,
        tp_btf::BtfTracePointLinkId, BtfTracePoint, CgroupSkb, CgroupSkbAttachType, Program, ProgramInfo,
        SchedClassifier, TcAttachType,
    },
    sys::{enable_stats, Stats},
    Btf, Ebpf,
};
use cgacct_pin::{
    bpffs::names::{Pins, PROGS_DIR},
    report::read,
};

use crate::{
    packet,
    report::{fmt, Report, Summary, Unit, Verdict},
    traffic::{iperf3_present, setsockopt, Pair},
    world::{check_interrupted, run, World},
};

const SECTION: &str = "7 live traffic";

pub struct Options {
    pub seconds: u32,
    pub rounds: usize,
}

/// A workload against the sink: what it makes, the netns counter and the
/// sink cgroup's key that must count the same.
struct Workload {
    kind: &'static str,
    unit: &'static str,
    work: fn(SocketAddr, Duration) -> Result<u64>,
    kernel: (&'static str, &'static str),
    key: &'static str,
}

/// Every program's (`run_time_ns`, `run_cnt`) now, by name.
type Snapshot = BTreeMap<String, (u64, u64)>;

/// cgacct's programs (pinned below the root) and the benchmark's.
struct Programs<'a> {
    root: &'a Path,
    bench: &'a Ebpf,
}

impl Programs<'_> {
    fn snapshot(&self) -> Result<Snapshot> {
        let mut s = Snapshot::new();
        let dir = self.root.join(PROGS_DIR);
        for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let info =
                ProgramInfo::from_pin(e.path()).with_context(|| format!("reading {}", e.path().display()))?;
            s.insert(
                e.file_name().to_string_lossy().into_owned(),
                (info.run_time().as_nanos() as u64, info.run_count()),
            );
        }
        for (name, p) in self.bench.programs() {
            let info = match p {
                Program::CgroupSkb(p) => p.info(),
                Program::SchedClassifier(p) => p.info(),
                Program::BtfTracePoint(p) => p.info(),
                _ => continue,
            };
            // A program of the object that was not loaded has no info.
            if let Ok(info) = info {
                s.insert(
                    name.to_string(),
                    (info.run_time().as_nanos() as u64, info.run_count()),
                );
            }
        }
        Ok(s)
    }
}

/// Per program that ran between the two snapshots: (ns per run, runs).
fn per_run(before: &Snapshot, after: &Snapshot) -> BTreeMap<String, (f64, u64)> {
    after
        .iter()
        .filter_map(|(name, &(ns, cnt))| {
            let &(ns0, cnt0) = before.get(name)?;
            let runs = cnt.checked_sub(cnt0).filter(|&r| r > 0)?;
            Some((name.clone(), (ns.saturating_sub(ns0) as f64 / runs as f64, runs)))
        })
        .collect()
}

/// Samples of one program across rounds: ns per run, runs per second.
#[derive(Default)]
struct Costs {
    ns: Vec<f64>,
    rate: Vec<f64>,
}

#[derive(Default)]
struct Table {
    by_prog: BTreeMap<String, Costs>,
    /// "cgacct above floor" and the like: per-round differences.
    above: BTreeMap<&'static str, Vec<f64>>,
}

impl Table {
    fn add(&mut self, runs: &BTreeMap<String, (f64, u64)>, seconds: f64) {
        for (name, &(ns, n)) in runs {
            let c = self.by_prog.entry(name.clone()).or_default();
            c.ns.push(ns);
            c.rate.push(n as f64 / seconds);
        }
        let ns = |p: &str| runs.get(p).map(|r| r.0);
        for (label, ours, floor) in [
            (
                "cgacct cgroup_skb ingress above floor",
                "cgacct_cg_ingress",
                "floor_cg",
            ),
            ("naive cgroup_skb ingress above floor", "naive_cg", "floor_cg"),
            ("cgacct tc ingress above floor", "cgacct_tc_ingress", "floor_tc"),
            ("naive tc ingress above floor", "naive_tc", "floor_tc"),
            (
                "cgacct kfree_skb above floor",
                "cgacct_kfree_skb",
                "floor_kfree_skb",
            ),
            (
                "cgacct inet_sock_set_state above floor",
                "cgacct_sock_state",
                "floor_sock_state",
            ),
        ] {
            if let (Some(a), Some(b)) = (ns(ours), ns(floor)) {
                self.above.entry(label).or_default().push(a - b);
            }
        }
    }

    fn report(&self, report: &mut Report, kind: &str) -> Result<()> {
        for (name, c) in &self.by_prog {
            let rate = Summary::of(&c.rate).map_or(0.0, |s| s.median);
            report.figure(
                SECTION,
                format!("{kind}: {name}, per run ({})", fmt(rate, Unit::PerSec)),
                summary(&c.ns)?,
                Unit::Ns,
                "",
                Verdict::Info,
            );
        }
        for (label, v) in &self.above {
            report.figure(
                SECTION,
                format!("{kind}: {label}"),
                summary(v)?,
                Unit::Ns,
                "",
                Verdict::Info,
            );
        }
        Ok(())
    }
}

fn summary(v: &[f64]) -> Result<Summary> {
    Summary::of(v).ok_or_else(|| anyhow!("no samples"))
}

/// Kernel-wide run-time statistics, on while this lives.
fn stats_on() -> Result<OwnedFd> {
    enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS (kernel.bpf_stats_enabled)")
}

pub fn run_section(report: &mut Report, w: &World, o: &Options) -> Result<()> {
    if !iperf3_present(
        report,
        SECTION,
        "programs' cost under iperf3, drops and connections",
    ) {
        return Ok(());
    }
    let pair = Pair::new(w, "lv", 252)?;
    let root = w.root("lv");
    let layout = pair.layout(&root)?;
    let apply = || -> Result<()> {
        run(Command::new(&w.cgacct_pin).arg("apply").arg(&layout))?;
        Ok(())
    };
    let port = 30000 + std::process::id() % 10000;

    // 1. iperf3 with cgacct, the floor and the naive programs side by side.
    apply()?;
    let mut bench = packet::load_bench()?;
    let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
    for (name, tp) in TRACING_FLOORS {
        let p: &mut BtfTracePoint = program(&mut bench, name)?.try_into()?;
        p.load(tp, &btf).with_context(|| format!("loading {name}"))?;
    }
    {
        let links = attach_packet_floors(&mut bench, &pair)?;
        let floors = attach_tracing_floors(&mut bench)?;
        let progs = Programs {
            root: &root,
            bench: &bench,
        };
        let _server = pair.iperf_server(port)?;
        pair.iperf_client(port, 1, "")?; // warm-up: neighbour discovery
        let kinds = [
            ("TCP to the netns", ""),
            ("TCP from the netns", "-R"),
            ("UDP 64 B to the netns", "-u -b 0 -l 64"),
        ];
        for (kind, extra) in kinds {
            let mut t = Table::default();
            let mut rate = Vec::new();
            for _ in 0..o.rounds {
                let stats = stats_on()?;
                let before = progs.snapshot()?;
                let start = Instant::now();
                let v = pair.iperf_client(port, o.seconds, extra)?;
                let secs = start.elapsed().as_secs_f64();
                let after = progs.snapshot()?;
                drop(stats);
                t.add(&per_run(&before, &after), secs);
                let end = &v["end"];
                let bps = end["sum_received"]["bits_per_second"]
                    .as_f64()
                    .or_else(|| end["sum"]["bits_per_second"].as_f64())
                    .ok_or_else(|| anyhow!("iperf3 said no throughput"))?;
                rate.push(bps / 1e9);
            }
            report.figure(
                SECTION,
                format!("{kind}: iperf3, {} s, everything attached, stats on", o.seconds),
                summary(&rate)?,
                Unit::Gbps,
                "",
                Verdict::Info,
            );
            t.report(report, kind)?;
        }
        detach_tracing_floors(&mut bench, floors)?;
        detach_packet_floors(&mut bench, links)?;
    }

    // 2. and 3.: the sink, without and with cgacct.
    let sink = pair.sink(port)?;
    let dst: SocketAddr = format!("{}:{port}", pair.peer_ip).parse()?;
    let server_stat = Pins::new(&root, true).stats_file(&format!("{}/server", pair.cgroup));
    let stat =
        |key: &str| -> Result<u64> { Ok(read::read_stat(&server_stat)?.get(key).copied().unwrap_or(0)) };
    let workloads = [
        Workload {
            kind: "UDP flood into a full receive buffer",
            unit: "datagrams",
            work: flood,
            kernel: ("Udp", "RcvbufErrors"),
            key: "drop_packets",
        },
        Workload {
            kind: "TCP connect + reset",
            unit: "connections",
            work: churn,
            kernel: ("Tcp", "PassiveOpens"),
            key: "tcp_passive_opens",
        },
    ];
    let dur = Duration::from_secs(o.seconds.into());
    for Workload {
        kind,
        unit,
        work,
        kernel: (group, counter),
        key,
    } in workloads
    {
        let (mut without, mut with, mut ratio, mut counted) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut t = Table::default();
        for round in 0..o.rounds {
            check_interrupted()?;
            // Alternate which goes first; cgacct is applied on entry.
            let (a, b) = if round % 2 == 0 {
                w.destroy_root(&root)?;
                let a = work(dst, dur)?;
                apply()?;
                (a, work(dst, dur)?)
            } else {
                let b = work(dst, dur)?;
                w.destroy_root(&root)?;
                let a = work(dst, dur)?;
                apply()?;
                (a, b)
            };
            let secs = dur.as_secs_f64();
            without.push(a as f64 / secs);
            with.push(b as f64 / secs);
            ratio.push(b as f64 / a as f64);
            // With stats on: each program's cost, and the count checked.
            let (k0, c0) = (pair.snmp(group, counter)?, stat(key)?);
            let floors = attach_tracing_floors(&mut bench)?;
            let progs = Programs {
                root: &root,
                bench: &bench,
            };
            let stats = stats_on()?;
            let before = progs.snapshot()?;
            let start = Instant::now();
            work(dst, dur)?;
            let secs = start.elapsed().as_secs_f64();
            let after = progs.snapshot()?;
            drop(stats);
            detach_tracing_floors(&mut bench, floors)?;
            t.add(&per_run(&before, &after), secs);
            let (k, c) = (pair.snmp(group, counter)? - k0, stat(key)? - c0);
            if c == 0 {
                bail!(
                    "{kind}: the sink's cgroup counted no {key} (the netns's {group} {counter} grew by {k})"
                );
            }
            counted.push(c as f64 / k as f64);
        }
        let s = |v: &[f64]| summary(v);
        report.figure(
            SECTION,
            format!("{kind}: {unit} without cgacct"),
            s(&without)?,
            Unit::PerSec,
            "",
            Verdict::Info,
        );
        report.figure(
            SECTION,
            format!("{kind}: {unit} with cgacct"),
            s(&with)?,
            Unit::PerSec,
            "",
            Verdict::Info,
        );
        report.figure(
            SECTION,
            format!("{kind}: with / without"),
            s(&ratio)?,
            Unit::Ratio,
            "",
            Verdict::Info,
        );
        report.figure(
            SECTION,
            format!("{kind}: the sink cgroup's {key} / the netns's {group} {counter}"),
            s(&counted)?,
            Unit::Ratio,
            "1.00x",
            Verdict::from_goal(counted.iter().all(|&r| r == 1.0)),
        );
        t.report(report, kind)?;
    }
    drop(sink);
    w.destroy_root(&root)?;
    drop(pair);
    Ok(())
}

/// The floors of the health programs, and their tracepoints.
const TRACING_FLOORS: [(&str, &str); 2] = [
    ("floor_kfree_skb", "kfree_skb"),
    ("floor_sock_state", "inet_sock_set_state"),
];

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the benchmark's object"))
}

struct PacketLinks {
    cg: Vec<(&'static str, CgroupSkbLinkId)>,
    tc: Vec<(&'static str, SchedClassifierLinkId)>,
}

/// The floor and naive programs of section 1 on the pair's hooks: the
/// cgroup_skb ones (ingress) at the cgroups' parent, the tc ones on the
/// host-side veth's ingress (after cgacct's: each returns "next").
fn attach_packet_floors(ebpf: &mut Ebpf, pair: &Pair) -> Result<PacketLinks> {
    let cg = fs::File::open(pair.cgroup_dir()).context("opening the pair's cgroup")?;
    let mut links = PacketLinks {
        cg: Vec::new(),
        tc: Vec::new(),
    };
    for name in ["floor_cg", "naive_cg"] {
        let p: &mut CgroupSkb = program(ebpf, name)?.try_into()?;
        // A link: one of many on the cgroup, whatever the mode.
        let id = p
            .attach(&cg, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name}"))?;
        links.cg.push((name, id));
    }
    for name in ["floor_tc", "naive_tc"] {
        let p: &mut SchedClassifier = program(ebpf, name)?.try_into()?;
        let id = p
            .attach(&pair.host, TcAttachType::Ingress)
            .with_context(|| format!("attaching {name} to {}", pair.host))?;
        links.tc.push((name, id));
    }
    Ok(links)
}

fn detach_packet_floors(ebpf: &mut Ebpf, links: PacketLinks) -> Result<()> {
    for (name, id) in links.cg {
        let p: &mut CgroupSkb = program(ebpf, name)?.try_into()?;
        p.detach(id)?;
    }
    for (name, id) in links.tc {
        let p: &mut SchedClassifier = program(ebpf, name)?.try_into()?;
        p.detach(id)?;
    }
    Ok(())
}

fn attach_tracing_floors(ebpf: &mut Ebpf) -> Result<Vec<(&'static str, BtfTracePointLinkId)>> {
    let mut links = Vec::new();
    for (name, _) in TRACING_FLOORS {
        let p: &mut BtfTracePoint = program(ebpf, name)?.try_into()?;
        links.push((name, p.attach().with_context(|| format!("attaching {name}"))?));
    }
    Ok(links)
}

fn detach_tracing_floors(ebpf: &mut Ebpf, links: Vec<(&'static str, BtfTracePointLinkId)>) -> Result<()> {
    for (name, id) in links {
        let p: &mut BtfTracePoint = program(ebpf, name)?.try_into()?;
        p.detach(id)?;
    }
    Ok(())
}

/// Datagrams of 64 B sent to `dst` for `dur`, as fast as one socket can;
/// the number sent. A full queue (`ENOBUFS`) is not an
/// error: the datagram is lost before the receiver, as on a real host.
fn flood(dst: SocketAddr, dur: Duration) -> Result<u64> {
    let s = UdpSocket::bind("0.0.0.0:0").context("binding the flood's socket")?;
    let buf = [0u8; 64];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        for _ in 0..256 {
            match s.send_to(&buf, dst) {
                Ok(_) => n += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) => return Err(e).context("sending the flood"),
            }
        }
    }
    Ok(n)
}

/// Connections to `dst` for `dur`, each closed with a reset (`SO_LINGER`
/// 0: no TIME_WAIT to run out of ports with); the number made.
fn churn(dst: SocketAddr, dur: Duration) -> Result<u64> {
    let start = Instant::now();
    let mut n = 0u64;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    while start.elapsed() < dur {
        let s = TcpStream::connect(dst).with_context(|| format!("connecting to {dst}"))?;
        setsockopt(&s, libc::SO_LINGER, &linger).context("setsockopt SO_LINGER")?;
        n += 1;
    }
    Ok(n)
}
