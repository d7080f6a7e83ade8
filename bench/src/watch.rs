//! Section 5, watch latency: `mkdir` of a cgroup to its `net.stat` being readable,
//! with `cgacct-pin watch` running.
//!
//! Runs `cgacct-pin watch LAYOUT` (in the foreground, stopped with
//! SIGTERM) and times `mkdir` -> first successful read of the new
//! cgroup's `net.stat`, one cgroup at a time. Where `cgacct-pin watch
//! --help` fails (a binary without the command) the section reports "not
//! available".
use std::{
    fs,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use cgacct_pin::bpffs::names::Pins;

use crate::{
    report::{Report, Summary, Unit, Verdict},
    world::{check_interrupted, World},
};

const SECTION: &str = "5 watch latency";

pub struct Options {
    pub cgroups: usize,
}

/// `cgacct-pin watch LAYOUT`, running until dropped.
pub struct Watcher(Child);

impl Watcher {
    pub fn start(w: &World, layout: &std::path::Path) -> Result<Watcher> {
        Ok(Watcher(
            Command::new(&w.cgacct_pin)
                .arg("watch")
                .arg(layout)
                .stdout(Stdio::null())
                .spawn()
                .context("starting cgacct-pin watch")?,
        ))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

pub fn available(w: &World) -> bool {
    Command::new(&w.cgacct_pin)
        .args(["watch", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn run_section(report: &mut Report, w: &World, o: &Options) -> Result<()> {
    if !available(w) {
        report.note(
            SECTION,
            "mkdir -> readable net.stat",
            "not available: this cgacct-pin has no `watch` command",
            Verdict::NotAvailable,
        );
        return Ok(());
    }
    let rel = w.cgroup_rel("watch");
    w.add_cgroups("watch", 0)?;
    let root = w.root("watch");
    let layout = w.layout(
        "watch",
        &format!(
            "root = {root:?}\n[cgroup_skb]\nattach = [\"/{rel}\"]\n[stats]\ncgroups = [\"/{rel}/**\"]\n"
        ),
    )?;
    let watcher = Watcher::start(w, &layout)?;
    let pins = Pins::new(&root, true);
    // Wait for the watcher's first pass.
    let first = pins.stats_file(&rel);
    let start = Instant::now();
    while fs::read(&first).map(|b| b.is_empty()).unwrap_or(true) {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("cgacct-pin watch made no {} within 30 s", first.display());
        }
        thread::sleep(Duration::from_millis(5));
    }
    let mut lat = Vec::with_capacity(o.cgroups);
    for i in 0..o.cgroups {
        check_interrupted()?;
        let cg = format!("{rel}/c{i}");
        let stat = pins.stats_file(&cg);
        let t0 = Instant::now();
        fs::create_dir(w.cgroup_mount.join(&cg))?;
        loop {
            if fs::read(&stat).is_ok_and(|b| !b.is_empty()) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("{} not readable 10 s after mkdir", stat.display());
            }
            std::hint::spin_loop();
        }
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    drop(watcher);
    w.destroy_root(&root)?;
    w.remove_cgroups("watch")?;
    let s = Summary::of(&lat).ok_or_else(|| anyhow!("no samples"))?;
    report.figure(
        SECTION,
        format!("mkdir -> readable net.stat, {} cgroups", o.cgroups),
        s,
        Unit::Ms,
        "",
        Verdict::Info,
    );
    report.note(SECTION, "worst", format!("{:.1} ms", s.max), Verdict::Info);
    Ok(())
}
