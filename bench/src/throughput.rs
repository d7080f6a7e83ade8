//! Section 2, throughput: one TCP stream (iperf3) through a veth pair, the client
//! in this network namespace, the server in the benchmark's own, each in
//! its own cgroup, with and without every cgacct program attached: both TC
//! programs on the host-side veth, both cgroup_skb programs at the parent
//! of the two cgroups (so every segment and ACK passes four of cgacct's
//! programs: cgroup_skb on both ends, TC once), stats files pinned. Runs
//! alternate (without, with, with, without, ...); the ratio of each
//! adjacent pair is one sample.
use std::process::Command;

use anyhow::{anyhow, bail, Result};
use cgacct_pin::{bpffs::names::Pins, report::read};

use crate::{
    report::{Report, Summary, Unit, Verdict},
    traffic::{iperf3_present, Pair},
    world::{run, World},
};

const SECTION: &str = "2 throughput";

pub struct Options {
    pub seconds: u32,
    pub rounds: usize,
}

fn summary(v: &[f64]) -> Result<Summary> {
    Summary::of(v).ok_or_else(|| anyhow!("no samples"))
}

pub fn run_section(report: &mut Report, w: &World, o: &Options) -> Result<()> {
    if !iperf3_present(report, SECTION, "TCP through a veth, with / without cgacct") {
        return Ok(());
    }
    let pair = Pair::new(w, "tp", 251)?;
    let port = 20000 + std::process::id() % 10000;
    let server = pair.iperf_server(port)?;
    let root = w.root("tp");
    let layout = pair.layout(&root)?;
    let client = |seconds: u32| -> Result<f64> {
        let v = pair.iperf_client(port, seconds, "")?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|bps| bps / 1e9)
            .ok_or_else(|| anyhow!("iperf3 said no sum_received"))
    };
    let attach = || -> Result<()> {
        run(Command::new(&w.cgacct_pin).arg("apply").arg(&layout))?;
        Ok(())
    };
    let detach = || w.destroy_root(&root);

    let (mut without, mut with, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    // A warm-up run: the first connection pays for neighbour discovery.
    client(1)?;
    for round in 0..o.rounds {
        let (a, b) = if round % 2 == 0 {
            let a = client(o.seconds)?;
            attach()?;
            let b = client(o.seconds)?;
            check_counted(&root, &pair.cgroup)?;
            detach()?;
            (a, b)
        } else {
            attach()?;
            let b = client(o.seconds)?;
            check_counted(&root, &pair.cgroup)?;
            detach()?;
            (client(o.seconds)?, b)
        };
        without.push(a);
        with.push(b);
        ratio.push(b / a);
    }
    drop(server);
    drop(pair);

    let secs = o.seconds;
    report.figure(
        SECTION,
        format!("iperf3 TCP, {secs} s, without cgacct"),
        summary(&without)?,
        Unit::Gbps,
        "",
        Verdict::Info,
    );
    report.figure(
        SECTION,
        format!("iperf3 TCP, {secs} s, with every cgacct program attached"),
        summary(&with)?,
        Unit::Gbps,
        "",
        Verdict::Info,
    );
    let r = summary(&ratio)?;
    report.figure(
        SECTION,
        "with / without",
        r,
        Unit::Ratio,
        ">= 0.97x",
        Verdict::from_goal(r.median >= 0.97),
    );
    Ok(())
}

/// The run with cgacct attached must have been counted, by both hooks.
fn check_counted(root: &std::path::Path, tp: &str) -> Result<()> {
    let pins = Pins::new(root, true);
    let s = read::read_stat(&pins.stats_file(&format!("{tp}/client")))?;
    let get = |k: &str| s.get(k).copied().unwrap_or(0);
    if get("tx_bytes") < 1_000_000 || get("tc_egress_bytes") < 1_000_000 {
        bail!("the attached run was not counted: client net.stat {s:?}");
    }
    Ok(())
}
