//! `apply` killed with SIGKILL at every step that changes state, then run
//! again, converges to exactly the layout: no duplicate attachment and no
//! leaked link, program or map. A leaked program or map can only live on
//! through a pin or a link (the killed process's fds are closed), so the
//! check is: our pins hold the five programs, and the links attached to
//! this world's veth and cgroups are exactly the pinned ones
//! (`World::assert_converged` walks every link in the kernel).
use std::os::unix::process::ExitStatusExt as _;

use crate::{require_kernel, world::World};

const CGROUPS: [&str; 2] = ["a.scope", "a.scope/b"];
/// Our subtree root and the two cgroups below it.
const STATS: usize = 3;

/// Runs apply with a kill at step `n`; returns whether it was killed.
fn apply_killed_at(w: &World, n: u32, env: &[(&str, &str)]) -> bool {
    let at = n.to_string();
    let mut env = env.to_vec();
    env.push(("CGACCT_PIN_KILL_AT", &at));
    let out = w.try_cgacct(&["apply", w.layout_arg()], &env);
    match out.status.signal() {
        Some(9) => true,
        None if out.status.success() => false,
        _ => panic!(
            "apply with a kill at step {n} ended with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn sigkill_at_every_step_of_a_first_apply_converges() {
    require_kernel!();
    let w = World::new(&CGROUPS);
    w.write_layout();
    let mut n = 1;
    while apply_killed_at(&w, n, &[]) {
        w.apply();
        w.assert_converged(STATS);
        w.send_udp("a.scope/b", false, 3, 50);
        assert_eq!(
            w.stat("a.scope/b")["self_tx_packets"],
            3,
            "after a kill at step {n}"
        );
        w.cgacct(&["destroy", "--root", w.root.to_str().expect("utf-8")]);
        // Unpinned links are freed by a kernel work item, a moment later:
        // the next round counts links, so it starts once they are gone.
        crate::world::eventually("the destroyed links to be freed", || w.inventory().is_empty());
        n += 1;
    }
    assert!(
        n > 20,
        "apply has {n} steps: the kill points are not where they should be"
    );
    eprintln!("apply killed at each of {} steps, converged every time", n - 1);
}

#[test]
fn sigkill_at_every_step_of_an_upgrade_keeps_counters_and_converges() {
    require_kernel!();
    let w = World::new(&CGROUPS);
    w.write_layout();
    w.apply();
    let mut sent = 0;
    let mut n = 1;
    loop {
        // Each round is a new build, so every round upgrades.
        let salt = format!("round{n}");
        let killed = apply_killed_at(&w, n, &[("CGACCT_PIN_BUILD_SALT", &salt)]);
        let out = w.try_cgacct(&["apply", w.layout_arg()], &[("CGACCT_PIN_BUILD_SALT", &salt)]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let plan = w.try_cgacct(
            &["plan", "--json", w.layout_arg()],
            &[("CGACCT_PIN_BUILD_SALT", &salt)],
        );
        assert_eq!(
            String::from_utf8_lossy(&plan.stdout).trim(),
            "[]",
            "not converged after a kill at {n}"
        );
        w.send_udp("a.scope", true, 2, 10);
        sent += 2;
        assert_eq!(
            w.stat("a.scope")["self_tx_packets"],
            sent,
            "counters lost after a kill at step {n}"
        );
        if !killed {
            break;
        }
        n += 1;
    }
    // Back to this build: converged exactly as the standard layout says.
    w.apply();
    w.assert_converged(STATS);
    assert!(
        n > 10,
        "an upgrade has {n} steps: the kill points are not where they should be"
    );
    eprintln!("upgrade killed at each of {} steps, converged every time", n - 1);
}
