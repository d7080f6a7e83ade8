//! Section 1, packet path: per-run cost of each counting program with
//! `BPF_PROG_TEST_RUN`, beside the floor (an empty program of the same
//! type) and the naive design (one shared hash map with atomic adds).
//!
//! cgacct's programs are the production ones: the object embedded in
//! cgacct-pin, loaded without pinning, globals set as `apply` sets them.
//! The floor and naive programs come from bench/progs.
//!
//! What the kernel's test run does (net/bpf/test_run.c,
//! `bpf_prog_test_run_skb`): it builds one skb from `data_in` (an Ethernet
//! frame for both types; for cgroup_skb the Ethernet header is pulled, so
//! the program sees the IP header first, as on a real socket), gives it a
//! dummy socket allocated by the calling thread (so `bpf_skb_cgroup_id`
//! returns the benchmark's own cgroup and every run updates a real map
//! entry), copies `gso_segs`/`gso_size` from `ctx_in`, and runs the program
//! `repeat` times, returning the mean time per run in ns, time spent
//! rescheduled excluded. `data_in` is limited to one page minus skb
//! overhead (about 3.7 KB): a GSO-sized packet here is a 3000-byte TCP frame
//! with `gso_segs` 44, `gso_size` 1448, the metadata of a 64 KB TSO skb.
//! The programs' cost does not depend on the length, only on the header
//! reads GSO needs.
use std::{sync::Barrier, thread};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData},
    programs::{Program, TestRun as _, TestRunOptions},
    Ebpf, EbpfLoader,
};
use cgacct_common::{globals, maps, programs as prog, ClassConfig};

use crate::{
    report::{Report, Summary, Unit, Verdict},
    world::check_interrupted,
};

pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cgacct-bench-progs"));

const SECTION: &str = "1 packet path";

/// `struct __sk_buff` of the BPF UAPI (stable ABI), as `ctx_in`.
#[repr(C)]
#[derive(Default)]
struct SkBuffCtx {
    // len .. wire_len: fields test_run wants zero here (41 u32s).
    head: [u32; 32],
    head_rest: [u32; 9],
    gso_segs: u32,
    sk: u64,
    gso_size: u32,
    tstamp_type_and_pad: u32,
    hwtstamp: u64,
}

const _: () = assert!(size_of::<SkBuffCtx>() == 192);
const _: () = assert!(std::mem::offset_of!(SkBuffCtx, gso_segs) == 164);
const _: () = assert!(std::mem::offset_of!(SkBuffCtx, gso_size) == 176);

impl SkBuffCtx {
    fn bytes(&self) -> &[u8] {
        // SAFETY: repr(C), no padding (checked above), plain integers.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(self).cast(), size_of::<SkBuffCtx>()) }
    }
}

pub struct Packet {
    pub name: &'static str,
    frame: Vec<u8>,
    ctx: SkBuffCtx,
}

/// An Ethernet frame with an IPv4 or IPv6 header, then UDP (small) or TCP
/// (GSO), padded to `len` bytes.
fn frame(v6: bool, tcp: bool, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    let proto = if tcp { 6u8 } else { 17u8 };
    let l3 = 14;
    let l4 = if v6 {
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f[l3] = 0x60;
        f[l3 + 4..l3 + 6].copy_from_slice(&((len - l3 - 40) as u16).to_be_bytes());
        f[l3 + 6] = proto;
        f[l3 + 7] = 64;
        f[l3 + 8..l3 + 24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f[l3 + 24..l3 + 40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        l3 + 40
    } else {
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[l3] = 0x45;
        f[l3 + 2..l3 + 4].copy_from_slice(&((len - l3) as u16).to_be_bytes());
        f[l3 + 8] = 64;
        f[l3 + 9] = proto;
        f[l3 + 12..l3 + 16].copy_from_slice(&[10, 0, 0, 1]);
        f[l3 + 16..l3 + 20].copy_from_slice(&[10, 0, 0, 2]);
        l3 + 20
    };
    f[l4..l4 + 2].copy_from_slice(&40000u16.to_be_bytes());
    f[l4 + 2..l4 + 4].copy_from_slice(&5201u16.to_be_bytes());
    if tcp {
        f[l4 + 12] = 8 << 4; // 32-byte TCP header (timestamps)
        f[l4 + 13] = 0x10; // ACK
    } else {
        f[l4 + 4..l4 + 6].copy_from_slice(&((len - l4) as u16).to_be_bytes());
    }
    f
}

pub fn packets() -> Vec<Packet> {
    let gso = || SkBuffCtx {
        gso_segs: 44,
        gso_size: 1448,
        ..SkBuffCtx::default()
    };
    vec![
        Packet {
            name: "IPv4 UDP 64 B",
            frame: frame(false, false, 64),
            ctx: SkBuffCtx::default(),
        },
        Packet {
            name: "IPv6 UDP 86 B",
            frame: frame(true, false, 86),
            ctx: SkBuffCtx::default(),
        },
        Packet {
            name: "IPv4 TCP GSO 44x1448",
            frame: frame(false, true, 3000),
            ctx: gso(),
        },
        Packet {
            name: "IPv6 TCP GSO 44x1448",
            frame: frame(true, true, 3000),
            ctx: gso(),
        },
    ]
}

/// The production object, loaded as `cgacct-pin apply` loads it but
/// without pins: only the packet-path programs are loaded.
pub fn load_production() -> Result<Ebpf> {
    let offsets = cgacct_pin::observe::kernel::offsets()?;
    let nr_cpus = cgacct_pin::observe::kernel::nr_cpus()?;
    let mut ebpf = EbpfLoader::new()
        .override_global(globals::NR_CPUS, &nr_cpus, true)
        .override_global(globals::CGROUP_KN_OFFSET, &offsets.cgroup_kn, true)
        .override_global(globals::KERNFS_NODE_ID_OFFSET, &offsets.kernfs_node_id, true)
        .load(cgacct_pin::object::OBJECT)
        .context("loading cgacct's BPF object")?;
    for name in [prog::CGROUP_INGRESS, prog::TC_INGRESS] {
        load(&mut ebpf, name)?;
    }
    // Owners have a generation, as every apply sets one: the TC programs
    // cache the test interface's owner (none) as they do on a host.
    let map = ebpf
        .map_mut(maps::IFACE_OWNER_GEN)
        .ok_or_else(|| anyhow!("map {} missing from cgacct's object", maps::IFACE_OWNER_GEN))?;
    let mut generation: Array<&mut MapData, u64> = map.try_into()?;
    generation.set(0, 1, 0)?;
    Ok(ebpf)
}

/// [`load_production`] with destination classes on, as `apply` writes them
/// for `[classes] cluster = ["10.0.0.0/8", "fd00::/8"]`: the test packets'
/// peers (10.0.0.1, fd00::1 as source at ingress) fall in class 1.
pub fn load_production_with_classes() -> Result<Ebpf> {
    let mut ebpf = load_production()?;
    let map = |e: &mut Ebpf, name: &str| {
        e.take_map(name)
            .ok_or_else(|| anyhow!("map {name} missing from cgacct's object"))
    };
    let mut v4: LpmTrie<MapData, [u8; 4], u32> = map(&mut ebpf, maps::CLASS_PREFIXES_V4)?.try_into()?;
    v4.insert(&Key::new(8, [10, 0, 0, 0]), 1, 0)?;
    let mut v6: LpmTrie<MapData, [u8; 16], u32> = map(&mut ebpf, maps::CLASS_PREFIXES_V6)?.try_into()?;
    let mut fd00 = [0u8; 16];
    fd00[0] = 0xfd;
    v6.insert(&Key::new(8, fd00), 1, 0)?;
    let mut config: Array<MapData, ClassConfig> = map(&mut ebpf, maps::CLASS_CONFIG)?.try_into()?;
    config.set(0, ClassConfig { indices: 2, pad: 0 }, 0)?;
    Ok(ebpf)
}

pub fn load_bench() -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .load(BENCH_OBJECT)
        .context("loading the benchmark's BPF object")?;
    for name in ["floor_cg", "floor_tc", "naive_cg", "naive_tc"] {
        load(&mut ebpf, name)?;
    }
    Ok(ebpf)
}

fn load(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    match ebpf.program_mut(name) {
        Some(Program::CgroupSkb(p)) => p.load()?,
        Some(Program::SchedClassifier(p)) => p.load()?,
        Some(_) => bail!("program {name} has an unexpected type"),
        None => bail!("program {name} missing from its object"),
    }
    Ok(())
}

/// Mean ns per run of `repeat` runs of `p` on `pkt`.
fn test_run(p: &Program, pkt: &Packet, repeat: u32) -> Result<f64> {
    let opts = TestRunOptions {
        data_in: Some(&pkt.frame),
        ctx_in: Some(pkt.ctx.bytes()),
        repeat,
        ..TestRunOptions::default()
    };
    let r = match p {
        Program::CgroupSkb(p) => p.test_run(opts)?,
        Program::SchedClassifier(p) => p.test_run(opts)?,
        _ => bail!("not a packet program"),
    };
    let expected = match p {
        Program::CgroupSkb(_) => 1,
        _ => u32::MAX, // -1: TC_ACT_UNSPEC / TCX_NEXT
    };
    if r.return_value != expected {
        bail!("program returned {} instead of {expected}", r.return_value as i32);
    }
    Ok(r.duration.as_nanos() as f64)
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

/// The same `repeat` runs on each CPU at once; the mean of the CPUs' ns/run.
fn test_run_parallel(p: &Program, pkt: &Packet, repeat: u32, cpus: usize) -> Result<f64> {
    let barrier = Barrier::new(cpus);
    let results: Vec<Result<f64>> = thread::scope(|s| {
        let handles: Vec<_> = (0..cpus)
            .map(|cpu| {
                let barrier = &barrier;
                s.spawn(move || {
                    pin_to_cpu(cpu)?;
                    barrier.wait();
                    test_run(p, pkt, repeat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("test-run thread panicked")))
            })
            .collect()
    });
    let mut sum = 0.0;
    for r in results {
        sum += r?;
    }
    Ok(sum / cpus as f64)
}

fn get<'a>(e: &'a Ebpf, name: &str) -> Result<&'a Program> {
    e.program(name).ok_or_else(|| anyhow!("program {name} not found"))
}

pub struct Options {
    pub repeat: u32,
    pub rounds: usize,
}

/// cgroup_skb with destination classes off (no `[classes]`: one array
/// lookup more than before the feature) and on (an LPM trie lookup and a
/// per-class counter), in alternating order.
fn classes_figures(
    report: &mut Report,
    o: &Options,
    pkt: &Packet,
    off: &Program,
    on: &Program,
) -> Result<()> {
    let (mut a, mut b, mut d) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..o.rounds {
        check_interrupted()?;
        let (x, y) = if round % 2 == 0 {
            let x = test_run(off, pkt, o.repeat)?;
            (x, test_run(on, pkt, o.repeat)?)
        } else {
            let y = test_run(on, pkt, o.repeat)?;
            (test_run(off, pkt, o.repeat)?, y)
        };
        a.push(x);
        b.push(y);
        d.push(y - x);
    }
    let s = |v: &[f64]| Summary::of(v).ok_or_else(|| anyhow!("no samples"));
    let name = |what: &str| format!("cgroup_skb {}: {what}", pkt.name);
    for (what, v) in [
        ("cgacct, classes off", &a),
        ("cgacct, classes on", &b),
        ("classes on above off", &d),
    ] {
        report.figure(SECTION, name(what), s(v)?, Unit::Ns, "", Verdict::Info);
    }
    Ok(())
}

pub fn run(report: &mut Report, o: &Options) -> Result<()> {
    let prod = load_production()?;
    let with_classes = load_production_with_classes()?;
    let classes_on = get(&with_classes, prog::CGROUP_INGRESS)?;
    let bench = load_bench()?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(2);
    let types = [
        (
            "cgroup_skb",
            get(&prod, prog::CGROUP_INGRESS)?,
            get(&bench, "floor_cg")?,
            get(&bench, "naive_cg")?,
        ),
        (
            "tc",
            get(&prod, prog::TC_INGRESS)?,
            get(&bench, "floor_tc")?,
            get(&bench, "naive_tc")?,
        ),
    ];
    for pkt in packets() {
        classes_figures(report, o, &pkt, types[0].1, classes_on)?;
        for (ty, ours, floor, naive) in &types {
            let mut above = Vec::new();
            let (mut f, mut c, mut n) = (Vec::new(), Vec::new(), Vec::new());
            let (mut c2, mut n2, mut ratio2) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..o.rounds {
                check_interrupted()?;
                // One CPU: floor, ours, naive, in a rotating order.
                let progs = [*floor, *ours, *naive];
                let mut t = [0.0; 3];
                for k in 0..3 {
                    let i = (k + round) % 3;
                    t[i] = test_run(progs[i], &pkt, o.repeat)
                        .with_context(|| format!("test run of {ty} on {}", pkt.name))?;
                }
                f.push(t[0]);
                c.push(t[1]);
                n.push(t[2]);
                above.push(t[1] - t[0]);
                // Every CPU at once: ours and naive, alternating first.
                if cpus > 1 {
                    let (a, b) = if round % 2 == 0 {
                        let a = test_run_parallel(ours, &pkt, o.repeat, cpus)?;
                        (a, test_run_parallel(naive, &pkt, o.repeat, cpus)?)
                    } else {
                        let b = test_run_parallel(naive, &pkt, o.repeat, cpus)?;
                        (test_run_parallel(ours, &pkt, o.repeat, cpus)?, b)
                    };
                    c2.push(a);
                    n2.push(b);
                    ratio2.push(b / a);
                }
            }
            let name = |what: &str| format!("{ty} {}: {what}", pkt.name);
            let s = |v: &[f64]| Summary::of(v).ok_or_else(|| anyhow!("no samples"));
            report.figure(
                SECTION,
                name("floor (empty program)"),
                s(&f)?,
                Unit::Ns,
                "",
                Verdict::Info,
            );
            report.figure(SECTION, name("cgacct"), s(&c)?, Unit::Ns, "", Verdict::Info);
            report.figure(
                SECTION,
                name("naive shared hash"),
                s(&n)?,
                Unit::Ns,
                "",
                Verdict::Info,
            );
            let a = s(&above)?;
            report.figure(
                SECTION,
                name("cgacct above floor"),
                a,
                Unit::Ns,
                "<= 25 ns",
                Verdict::from_goal(a.median <= 25.0),
            );
            if cpus > 1 {
                report.figure(
                    SECTION,
                    name(&format!("cgacct, {cpus} CPUs at once")),
                    s(&c2)?,
                    Unit::Ns,
                    "",
                    Verdict::Info,
                );
                report.figure(
                    SECTION,
                    name(&format!("naive, {cpus} CPUs at once")),
                    s(&n2)?,
                    Unit::Ns,
                    "",
                    Verdict::Info,
                );
                let r = s(&ratio2)?;
                report.figure(
                    SECTION,
                    name(&format!("naive / cgacct, {cpus} CPUs")),
                    r,
                    Unit::Ratio,
                    "> 1.00x",
                    Verdict::from_goal(r.median > 1.0),
                );
            } else {
                report.note(
                    SECTION,
                    name("concurrent"),
                    "one CPU: not measured",
                    Verdict::NotAvailable,
                );
            }
        }
    }
    Ok(())
}
