//! Expedited RCU grace periods around a bulk TCX attach: apply sets the
//! host-wide `/sys/kernel/rcu_expedited` to 1 only while it attaches, says
//! so, and puts the previous value back after a normal run, a failed one,
//! one stopped by SIGTERM, and, at the next run, one killed with SIGKILL;
//! destroy does the same while the kernel detaches the links.
//! The test keeps the host's own value and puts it back on every exit,
//! panics included.
use std::{
    fs,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use cgacct_pin::{observe::runtime::memory, sys::os::RCU_EXPEDITED};

use crate::{
    require_kernel,
    world::{self, World},
};

/// Extra veth pairs: with the world's own, 5 interfaces, 10 TCX attachments.
const EXTRA: usize = 4;

/// The host's value, written back when dropped; 0 meanwhile, so that
/// apply has something to change.
struct HostValue(String);

impl HostValue {
    fn take() -> HostValue {
        let v = fs::read_to_string(RCU_EXPEDITED).expect("read rcu_expedited");
        fs::write(RCU_EXPEDITED, "0").expect("write rcu_expedited");
        HostValue(v.trim().to_string())
    }
}

impl Drop for HostValue {
    fn drop(&mut self) {
        let _ = fs::write(RCU_EXPEDITED, &self.0);
        let _ = fs::remove_file(record());
    }
}

struct Veths(Vec<String>);

impl Drop for Veths {
    fn drop(&mut self) {
        for v in &self.0 {
            let _ = Command::new("ip").args(["link", "del", v]).output();
        }
    }
}

fn record() -> PathBuf {
    memory::state_dir().join("rcu_expedited.json")
}

fn value() -> String {
    fs::read_to_string(RCU_EXPEDITED)
        .expect("read rcu_expedited")
        .trim()
        .to_string()
}

fn cgacct(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(world::BIN);
    cmd.args(args).env_remove("CGACCT_TC_ATTACH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run cgacct-pin");
    eprintln!(
        "cgacct-pin {args:?} {env:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// No program attached at any TCX hook of our interfaces.
fn tc_modes_clean(w: &World) -> bool {
    (0..EXTRA)
        .map(|i| format!("{}h{i}", w.prefix))
        .chain([w.host_if.clone()])
        .all(|name| cgacct_pin::tc::attached_programs(&name).is_ok_and(|a| a.tcx == 0))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const LINE: &str = "expediting RCU grace periods for 10 TCX attachments";

/// Restored, and no record left behind.
fn assert_restored(when: &str) {
    assert_eq!(value(), "0", "{RCU_EXPEDITED} after {when}");
    assert!(!record().exists(), "{} left after {when}", record().display());
}

#[test]
fn rcu_expedited_is_restored_on_every_exit_path() {
    require_kernel!();
    if !Path::new(RCU_EXPEDITED).exists() {
        eprintln!("skipped: this kernel has no {RCU_EXPEDITED}");
        return;
    }
    let _rcu = world::host_rcu();
    let w = World::new(&[]);
    let mut veths = Veths(Vec::new());
    for i in 0..EXTRA {
        let (h, p) = (format!("{}h{i}", w.prefix), format!("{}q{i}", w.prefix));
        world::sh(&format!("ip link add {h} type veth peer name {p}"));
        veths.0.extend([h, p]);
    }
    w.write_layout_tc(&format!("{}h*", w.prefix));
    let _host = HostValue::take();
    let root = w.root.to_str().expect("utf-8");
    let apply = |env: &[(&str, &str)]| cgacct(&["apply", w.layout_arg()], env);
    let destroy = || cgacct(&["destroy", "--root", root], &[]);
    if !world::tcx() {
        // clsact filters wait for no grace period: nothing to expedite.
        let out = apply(&[("CGACCT_PIN_KILL_AT", "rcu-expedited")]);
        assert!(out.status.success());
        assert!(!stdout(&out).contains("expediting"));
        return assert_restored("apply with clsact filters");
    }

    world::subtest("normal", || {
        let out = apply(&[]);
        assert!(out.status.success());
        assert_eq!(stdout(&out).matches(LINE).count(), 1, "one line says it");
        assert_restored("a normal apply");
        // Converged: nothing to attach, nothing expedited.
        let out = apply(&[("CGACCT_PIN_KILL_AT", "rcu-expedited")]);
        assert!(out.status.success() && stdout(&out).contains("nothing to do"));
        // destroy: the kernel detaches the 10 TCX links after their pins go.
        let out = destroy();
        assert!(out.status.success());
        assert!(stdout(&out).contains("expediting RCU grace periods for 10 TCX detachments"));
        assert_restored("a destroy");
        assert!(tc_modes_clean(&w), "every TCX link detached when destroy returns");
    });
    world::subtest("failed", || {
        let out = apply(&[("CGACCT_PIN_FAIL_TC_AT", "3")]);
        assert_eq!(out.status.code(), Some(3), "a partial failure");
        assert!(stdout(&out).contains(LINE));
        assert_restored("a failed apply");
        assert!(destroy().status.success());
    });
    world::subtest("sigterm", || {
        let out = apply(&[("CGACCT_PIN_KILL_AT", "rcu-expedited:TERM")]);
        assert_eq!(out.status.signal(), Some(libc::SIGTERM), "ends by the signal");
        assert!(stdout(&out).contains(LINE));
        assert_restored("an apply stopped by SIGTERM");
        assert!(destroy().status.success());
    });
    world::subtest("sigkill", || {
        let out = apply(&[("CGACCT_PIN_KILL_AT", "rcu-expedited")]);
        assert_eq!(out.status.signal(), Some(libc::SIGKILL));
        // Killed with it on: the record says what to restore.
        assert_eq!(value(), "1", "left on by the killed run");
        assert!(record().exists());
        // The next run, whichever, restores it first.
        let out = destroy();
        assert!(out.status.success());
        assert!(
            stdout(&out).contains(&format!("restored {RCU_EXPEDITED} to 0")),
            "the next run says it restored"
        );
        assert_restored("a SIGKILLed apply and a destroy");
        let out = apply(&[]);
        assert!(out.status.success() && stdout(&out).contains(LINE));
        assert_restored("the apply after");
        assert!(destroy().status.success());
    });
    world::subtest("opt_out", || {
        let text = fs::read_to_string(&w.layout).expect("layout");
        let text = text.replace("[tc]\n", "[tc]\nexpedite_rcu = false\n");
        fs::write(&w.layout, text).expect("layout");
        // The kill point is never reached: the switch is never touched.
        let out = apply(&[("CGACCT_PIN_KILL_AT", "rcu-expedited")]);
        assert!(out.status.success());
        assert!(!stdout(&out).contains("expediting"));
        assert_restored("an apply with expedite_rcu = false");
    });
}
