//! Section 2, throughput: one TCP stream (iperf3) through a veth pair, the client
//! in this network namespace, the server in the benchmark's own, each in
//! its own cgroup, with and without every cgacct program attached: both TC
//! programs on the host-side veth, both cgroup_skb programs at the parent
//! of the two cgroups (so every segment and ACK passes four of cgacct's
//! programs: cgroup_skb on both ends, TC once), stats files pinned. Runs
//! alternate (without, with, with, without, ...); the ratio of each
//! adjacent pair is one sample.
use std::{
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use cgacct_pin::{bpffs::names::Pins, report::read};

use crate::{
    report::{Report, Summary, Unit, Verdict},
    world::{check_interrupted, run, sh, World},
};

const SECTION: &str = "2 throughput";

pub struct Options {
    pub seconds: u32,
    pub rounds: usize,
}

/// The iperf3 server; killed (by its pid) when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn summary(v: &[f64]) -> Result<Summary> {
    Summary::of(v).ok_or_else(|| anyhow!("no samples"))
}

pub fn run_section(report: &mut Report, w: &World, o: &Options) -> Result<()> {
    if Command::new("iperf3").arg("--version").output().is_err() {
        report.note(
            SECTION,
            "TCP through a veth, with / without cgacct",
            "iperf3 not installed (scripts/bench.sh installs it): not measured",
            Verdict::NotAvailable,
        );
        return Ok(());
    }
    let ns = format!("{}-tp", w.prefix);
    let (host, peer) = (format!("{}ta", w.prefix), format!("{}tb", w.prefix));
    let net = 1 + std::process::id() % 250;
    let (host_ip, peer_ip) = (format!("10.251.{net}.1"), format!("10.251.{net}.2"));
    let port = 20000 + std::process::id() % 10000;
    sh(&format!(
        "ip netns add {ns}
         ip link add {host} type veth peer name {peer} netns {ns}
         ip addr add {host_ip}/30 dev {host}
         ip link set {host} up
         ip -n {ns} addr add {peer_ip}/30 dev {peer}
         ip -n {ns} link set {peer} up
         ip -n {ns} link set lo up"
    ))?;
    let tp = w.cgroup_rel("tp");
    w.add_cgroups("tp", 0)?;
    for c in ["client", "server"] {
        std::fs::create_dir(w.cgroup_mount.join(&tp).join(c))?;
    }
    let procs = |c: &str| w.cgroup_mount.join(&tp).join(c).join("cgroup.procs");
    let server = Server(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}; exec ip netns exec {ns} iperf3 -s -B {peer_ip} -p {port}",
                procs("server").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the iperf3 server")?,
    );
    let root = w.root("tp");
    let layout = w.layout(
        "tp",
        &format!(
            "root = {root:?}\n[tc]\ninterfaces = [{host:?}]\n[cgroup_skb]\nattach = [\"/{tp}\"]\n\
             [stats]\ncgroups = [\"/{tp}/**\"]\n"
        ),
    )?;
    let client = |seconds: u32| -> Result<f64> {
        check_interrupted()?;
        // The server may still be starting: retry a refused connection.
        let mut last = String::new();
        for _ in 0..50 {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {}; exec iperf3 -c {peer_ip} -p {port} -t {seconds} -J",
                    procs("client").display()
                ))
                .output()
                .context("running the iperf3 client")?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
                return Ok(bps / 1e9);
            }
            last = v["error"].as_str().unwrap_or("no JSON output").to_string();
            thread::sleep(Duration::from_millis(100));
        }
        bail!("iperf3 client failed: {last}")
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
            check_counted(&root, &tp)?;
            detach()?;
            (a, b)
        } else {
            attach()?;
            let b = client(o.seconds)?;
            check_counted(&root, &tp)?;
            detach()?;
            (client(o.seconds)?, b)
        };
        without.push(a);
        with.push(b);
        ratio.push(b / a);
    }
    drop(server);
    let _ = run(Command::new("ip").args(["netns", "del", &ns]));
    w.remove_cgroups("tp")?;

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
