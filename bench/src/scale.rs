//! Section 3, attach at scale: from nothing to N veths and N cgroups attached, with
//! their stats files, by `cgacct-pin apply`, against the same attachments
//! made the way operators script them today: a shell loop of `tc qdisc add
//! ... clsact` and `tc filter add ... bpf da pinned ...` per interface and
//! `bpftool cgroup attach` per cgroup. cgacct-pin runs twice per round, with
//! `[tc] attach = "auto"` (TCX links on kernels that have TCX) and with
//! `"clsact"` (clsact filters). Rounds rotate which of the three goes first;
//! the interfaces and cgroups are made afresh before each (untimed).
//!
//! The shell loop is given every advantage: its programs are loaded and
//! pinned beforehand (cgacct's time includes loading them), and it makes no
//! stats files: bpftool 7.1's `iter pin` takes no cgroup or walk order, so
//! a cgroup iterator cannot be pinned from the shell at all.
use std::{path::Path, process::Command, time::Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use cgacct_common::programs as prog;
use cgacct_pin::bpffs::names::Pins;

use crate::{
    report::{Report, Summary, Unit, Verdict},
    world::{check_interrupted, run, World},
};

const SECTION: &str = "3 attach at scale";

pub struct Options {
    pub n: usize,
    pub rounds: usize,
    pub reapplies: usize,
    /// Profile one more apply under strace.
    pub profile: bool,
}

fn summary(v: &[f64]) -> Result<Summary> {
    Summary::of(v).ok_or_else(|| anyhow!("no samples"))
}

/// Wall time of one command, in ms; fails if the command fails.
fn timed(cmd: &mut Command) -> Result<(f64, String)> {
    let start = Instant::now();
    let out = run(cmd)?;
    Ok((start.elapsed().as_secs_f64() * 1e3, out))
}

fn shell_loop(w: &World, n: usize, progs: &Path, cgroups: &Path) -> String {
    let p = progs.display();
    format!(
        r#"set -euo pipefail
for i in $(seq 0 {last}); do
  dev={prefix}h$i
  tc qdisc add dev "$dev" clsact
  tc filter add dev "$dev" ingress bpf da pinned {p}/{tci}
  tc filter add dev "$dev" egress bpf da pinned {p}/{tce}
done
for cg in {cgroups}/c[0-9]*/; do
  bpftool cgroup attach "$cg" cgroup_inet_ingress pinned {p}/{cgi} multi
  bpftool cgroup attach "$cg" cgroup_inet_egress pinned {p}/{cge} multi
done
"#,
        last = n - 1,
        prefix = w.prefix,
        cgroups = cgroups.display(),
        tci = prog::TC_INGRESS,
        tce = prog::TC_EGRESS,
        cgi = prog::CGROUP_INGRESS,
        cge = prog::CGROUP_EGRESS,
    )
}

/// Fresh interfaces and cgroups: nothing attached to them.
fn fresh(w: &mut World, n: usize) -> Result<()> {
    w.del_veths()?;
    w.remove_cgroups("scale")?;
    w.add_veths(n)?;
    w.add_cgroups("scale", n)?;
    Ok(())
}

pub fn run_section(report: &mut Report, w: &mut World, o: &Options) -> Result<()> {
    let n = o.n;
    let scale_rel = w.cgroup_rel("scale");
    let cgroups = w.cgroup_mount.join(&scale_rel);
    // The shell loop's programs: loaded and pinned once, outside the timing.
    let shell_root = w.root("shell");
    let shell_layout = w.layout("shell", &format!("root = {shell_root:?}\n"))?;
    run(Command::new(&w.cgacct_pin).arg("apply").arg(&shell_layout))?;
    let shell_progs = Pins::new(&shell_root, true).prog(prog::TC_INGRESS);
    let shell_progs = shell_progs
        .parent()
        .ok_or_else(|| anyhow!("no progs directory"))?
        .to_path_buf();
    let script = shell_loop(w, n, &shell_progs, &cgroups);

    let (mut ours, mut theirs, mut ratio, mut reapply) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ours_clsact, mut ratio_clsact, mut reapply_clsact) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ours_slow, mut reapply_slow) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        // `[tc] attach`: "auto" (TCX on this kernel), "clsact", and "auto"
        // with `expedite_rcu = false` (TCX links, grace periods not expedited).
        let layouts = [("auto", true), ("clsact", true), ("auto", false)].map(
            |(mode, expedite)| -> Result<(std::path::PathBuf, std::path::PathBuf)> {
                let name = format!("scale{round}{mode}{expedite}");
                let root = w.root(&name);
                let layout = w.layout(
                    &name,
                    &format!(
                        "root = {root:?}\n[tc]\nattach = {mode:?}\nexpedite_rcu = {expedite}\n\
                         interfaces = [{:?}]\n[cgroup_skb]\nattach = [\"/{scale_rel}/*\"]\n[stats]\n\
                         cgroups = [\"/{scale_rel}/*\"]\n",
                        w.host_if_glob()
                    ),
                )?;
                Ok((root, layout))
            },
        );
        let [auto, clsact, slow] = layouts;
        let (auto, clsact, slow) = (auto?, clsact?, slow?);
        let cgacct = |w: &mut World,
                      (root, layout): &(std::path::PathBuf, std::path::PathBuf),
                      reapply: &mut Vec<f64>|
         -> Result<f64> {
            check_interrupted()?;
            fresh(w, n)?;
            let (t, out) = timed(Command::new(&w.cgacct_pin).arg("apply").arg(layout))?;
            let made = out
                .lines()
                .filter(|l| {
                    ["attach tc ", "attach cgroup_skb ", "pin stats "]
                        .iter()
                        .any(|p| l.starts_with(p))
                })
                .count();
            if made != 5 * n {
                bail!(
                    "cgacct-pin apply made {made} attachments and stats files, expected {}",
                    5 * n
                );
            }
            for _ in 0..o.reapplies {
                let (t, out) = timed(Command::new(&w.cgacct_pin).arg("apply").arg(layout))?;
                if !out.contains("nothing to do") {
                    bail!("re-apply on a converged host did something:\n{out}");
                }
                reapply.push(t);
            }
            w.destroy_root(root)?;
            Ok(t)
        };
        let shell = |w: &mut World| -> Result<f64> {
            check_interrupted()?;
            fresh(w, n)?;
            let (t, _) = timed(Command::new("bash").arg("-c").arg(&script)).context("the shell loop")?;
            Ok(t)
        };
        // Each of the four goes first in turn.
        let (mut a, mut c, mut b, mut s) = (0.0, 0.0, 0.0, 0.0);
        for k in 0..4 {
            match (round + k) % 4 {
                0 => a = cgacct(w, &auto, &mut reapply)?,
                1 => c = cgacct(w, &clsact, &mut reapply_clsact)?,
                2 => s = cgacct(w, &slow, &mut reapply_slow)?,
                _ => b = shell(w)?,
            }
        }
        eprintln!(
            "   round {round}: apply (auto) {a:.0} ms, apply (clsact) {c:.0} ms, apply (auto, \
             expedite_rcu = false) {s:.0} ms, shell loop {b:.0} ms"
        );
        ours_slow.push(s);
        ours.push(a);
        ours_clsact.push(c);
        theirs.push(b);
        ratio.push(b / a);
        ratio_clsact.push(b / c);
    }
    let profile = if o.profile {
        tcx_profile(w, n, &scale_rel)?
    } else {
        None
    };
    w.del_veths()?;
    w.remove_cgroups("scale")?;
    w.destroy_root(&shell_root)?;

    report.figure(
        SECTION,
        format!("cgacct-pin apply: {n} veths + {n} cgroups + {n} stats files, from nothing"),
        summary(&ours)?,
        Unit::Ms,
        "",
        Verdict::Info,
    );
    report.figure(
        SECTION,
        format!("shell loop: tc clsact + 2 filters per veth, 2 bpftool attach per cgroup (no stats files) (N = {n})"),
        summary(&theirs)?,
        Unit::Ms,
        "",
        Verdict::Info,
    );
    let r = summary(&ratio)?;
    report.figure(
        SECTION,
        format!("shell loop / cgacct-pin apply (N = {n})"),
        r,
        Unit::Ratio,
        ">= 20x",
        Verdict::from_goal(r.median >= 20.0),
    );
    let r = summary(&reapply)?;
    report.figure(
        SECTION,
        format!("re-apply on the converged host (nothing to do) (N = {n})"),
        r,
        Unit::Ms,
        "<= 200 ms",
        Verdict::from_goal(r.median <= 200.0),
    );
    report.figure(
        SECTION,
        format!("cgacct-pin apply, [tc] attach = \"clsact\": the same, TC as clsact filters (N = {n})"),
        summary(&ours_clsact)?,
        Unit::Ms,
        "",
        Verdict::Info,
    );
    let r = summary(&ratio_clsact)?;
    report.figure(
        SECTION,
        format!("shell loop / cgacct-pin apply (clsact) (N = {n})"),
        r,
        Unit::Ratio,
        ">= 20x",
        Verdict::from_goal(r.median >= 20.0),
    );
    let r = summary(&reapply_clsact)?;
    report.figure(
        SECTION,
        format!("re-apply on the converged host, clsact (nothing to do) (N = {n})"),
        r,
        Unit::Ms,
        "<= 200 ms",
        Verdict::from_goal(r.median <= 200.0),
    );
    report.figure(
        SECTION,
        format!("cgacct-pin apply, [tc] expedite_rcu = false: the same, TCX grace periods not expedited (N = {n})"),
        summary(&ours_slow)?,
        Unit::Ms,
        "",
        Verdict::Info,
    );
    report.figure(
        SECTION,
        format!("re-apply on the converged host, expedite_rcu = false (N = {n})"),
        summary(&reapply_slow)?,
        Unit::Ms,
        "",
        Verdict::Info,
    );
    match profile {
        Some(p) => {
            report.figure(
                SECTION,
                format!(
                    "where apply's time goes: TCX link creation, per call ({} calls, {:.0} of {:.0} ms under strace)",
                    p.calls, p.tcx_total_ms, p.apply_ms
                ),
                p.per_call,
                Unit::Ms,
                "",
                Verdict::Info,
            );
            report.figure(
                SECTION,
                format!("every other bpf() call of the same apply, per call (N = {n})"),
                p.other_per_call,
                Unit::Ms,
                "",
                Verdict::Info,
            );
        }
        None => report.note(
            SECTION,
            "apply profile",
            "strace not installed: not measured",
            Verdict::NotAvailable,
        ),
    }
    Ok(())
}

pub struct Profile {
    calls: usize,
    per_call: Summary,
    other_per_call: Summary,
    tcx_total_ms: f64,
    apply_ms: f64,
}

/// One more apply from nothing under `strace -T -e trace=bpf`: how long
/// each TCX `BPF_LINK_CREATE` takes (attach types 46 and 47) against every
/// other bpf() call. `None` when strace is missing.
fn tcx_profile(w: &mut World, n: usize, scale_rel: &str) -> Result<Option<Profile>> {
    if Command::new("strace").arg("-V").output().is_err() {
        return Ok(None);
    }
    fresh(w, n)?;
    let root = w.root("profile");
    let layout = w.layout(
        "profile",
        &format!(
            "root = {root:?}\n[tc]\ninterfaces = [{:?}]\n[cgroup_skb]\nattach = [\"/{scale_rel}/*\"]\n\
             [stats]\ncgroups = [\"/{scale_rel}/*\"]\n",
            w.host_if_glob()
        ),
    )?;
    // apply runs its attachments on more than one thread: `-ff` writes one
    // file per thread, so no call is split into "unfinished" and "resumed"
    // lines.
    let dir = std::env::temp_dir().join(format!("{}-strace", w.prefix));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir)?;
    let (apply_ms, _) = timed(
        Command::new("strace")
            .env_remove("CGACCT_TC_ATTACH")
            .args(["-ff", "-T", "-e", "trace=bpf", "-o"])
            .arg(dir.join("t"))
            .arg(&w.cgacct_pin)
            .arg("apply")
            .arg(&layout),
    )?;
    let mut text = String::new();
    for entry in std::fs::read_dir(&dir)? {
        text.push_str(&std::fs::read_to_string(entry?.path())?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    w.destroy_root(&root)?;
    let (mut tcx, mut other) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Some(t) = line
            .rsplit_once('<')
            .and_then(|(_, t)| t.strip_suffix('>'))
            .and_then(|t| t.parse::<f64>().ok())
        else {
            continue;
        };
        // The TCX probe (ifindex 0) fails by design: not an attachment.
        let is_tcx = line.contains("BPF_LINK_CREATE")
            && !line.contains("= -1 ")
            && [
                "attach_type=0x2e",
                "attach_type=0x2f",
                "BPF_TCX_INGRESS",
                "BPF_TCX_EGRESS",
            ]
            .iter()
            .any(|k| line.contains(k));
        if is_tcx {
            tcx.push(t * 1e3);
        } else {
            other.push(t * 1e3);
        }
    }
    if tcx.len() != 2 * n {
        bail!("strace saw {} TCX link creations, expected {}", tcx.len(), 2 * n);
    }
    Ok(Some(Profile {
        calls: tcx.len(),
        tcx_total_ms: tcx.iter().sum(),
        per_call: summary(&tcx)?,
        other_per_call: summary(&other)?,
        apply_ms,
    }))
}
