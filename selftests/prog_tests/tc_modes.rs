//! The two ways TC programs attach: TCX links where the kernel has TCX,
//! clsact bpf filters where it does not (or when CGACCT_TC_ATTACH=clsact
//! forces them). Either way counting survives cgacct-pin's exit, re-apply
//! adds nothing, and destroy removes every attachment.
use std::process::Command;

use cgacct_pin::{
    bpffs::names::{Direction, Pins},
    tc::{self as tc_attach, Attached, Mode},
};

use crate::{
    require_kernel,
    world::{self, World},
};

fn apply_with(w: &World, env: Option<&str>) -> String {
    let mut cmd = Command::new(world::BIN);
    cmd.arg("apply").arg(&w.layout);
    match env {
        Some(v) => cmd.env(tc_attach::ENV, v),
        None => cmd.env_remove(tc_attach::ENV),
    };
    String::from_utf8_lossy(&world::run(&mut cmd).stdout).into_owned()
}

fn ifindex(name: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .expect("ifindex")
        .trim()
        .parse()
        .expect("number")
}

#[test]
fn the_probed_mode_is_the_one_used() {
    require_kernel!();
    let w = World::new(&["a.scope"]);
    w.write_layout();
    let out = apply_with(&w, None);
    let probed = tc_attach::choose(tc_attach::Preference::Auto).expect("probe");
    let status = String::from_utf8_lossy(
        &w.cgacct(&["status", "--root", w.root.to_str().expect("utf-8")])
            .stdout,
    )
    .into_owned();
    let found = tc_attach::attached_programs(&w.host_if).expect("query");
    match probed.mode {
        Mode::Tcx => {
            assert_eq!(found, Attached { tcx: 2, clsact: 0 });
            assert!(status.contains("attach as TCX links"), "{status}");
            assert!(!out.contains("clsact"), "{out}");
        }
        Mode::Clsact => {
            assert_eq!(found, Attached { tcx: 0, clsact: 2 });
            assert!(status.contains("attach as clsact bpf filters"), "{status}");
            assert!(
                out.contains("note: tc programs attach as clsact bpf filters"),
                "{out}"
            );
        }
    }
    eprintln!("tc attach on this kernel: {}", probed.describe());
}

#[test]
fn clsact_filters_count_after_exit_are_planned_and_destroyed() {
    require_kernel!();
    const N: u64 = 11;
    const P: u64 = 300;
    let w = World::new(&["a.scope"]);
    w.write_layout();
    let out = apply_with(&w, Some("clsact"));
    assert!(out.contains("clsact bpf filters"), "{out}");
    assert_eq!(
        tc_attach::attached_programs(&w.host_if).expect("query"),
        Attached { tcx: 0, clsact: 2 }
    );
    // The filters run the pinned programs, and the markers pin exactly them.
    let pins = Pins::new(&w.root, true);
    for (direction, prog) in [
        (Direction::Ingress, cgacct_common::programs::TC_INGRESS),
        (Direction::Egress, cgacct_common::programs::TC_EGRESS),
    ] {
        let id = aya::programs::ProgramInfo::from_pin(pins.prog(prog))
            .expect("pinned program")
            .id();
        let marker = aya::programs::ProgramInfo::from_pin(pins.tc_link(&w.host_if, direction))
            .expect("marker")
            .id();
        assert_eq!(marker, id);
        let filters = tc_attach::bpf_filters(ifindex(&w.host_if), direction).expect("filters");
        assert_eq!(filters.len(), 1, "{filters:?}");
        assert_eq!(filters[0].prog_id, Some(id));
    }

    // cgacct-pin has exited: the filters count.
    w.send_udp("a.scope", false, N as u32, P as usize);
    let s = w.stat("a.scope");
    assert_eq!(s["self_tc_egress_packets"], N, "{s:?}");
    assert_eq!(s["self_tc_egress_bytes"], N * (P + 28), "{s:?}");
    assert_eq!(s["self_tx_packets"], N, "{s:?}");

    // Re-apply: nothing to do, whatever the mode the process would pick.
    let again = apply_with(&w, Some("clsact"));
    assert!(again.contains("nothing to do"), "{again}");
    assert!(apply_with(&w, None).contains("nothing to do"));
    assert_eq!(tc_attach::attached_programs(&w.host_if).expect("query").clsact, 2);

    // A filter removed behind cgacct's back is planned again and restored.
    world::run(Command::new("tc").args(["filter", "del", "dev", &w.host_if, "egress"]));
    assert_eq!(tc_attach::attached_programs(&w.host_if).expect("query").clsact, 1);
    let plan =
        String::from_utf8_lossy(&w.cgacct(&["plan", w.layout.to_str().expect("utf-8")]).stdout).into_owned();
    assert!(
        plan.contains(&format!("attach tc egress to {}", w.host_if)),
        "{plan}"
    );
    assert!(!plan.contains("tc ingress"), "{plan}");
    apply_with(&w, Some("clsact"));
    assert_eq!(tc_attach::attached_programs(&w.host_if).expect("query").clsact, 2);
    w.send_udp("a.scope", false, 1, P as usize);
    assert_eq!(w.stat("a.scope")["self_tc_egress_packets"], N + 1);

    // Destroy (without the override: the pins say what they are).
    w.cgacct(&["destroy", "--root", w.root.to_str().expect("utf-8")]);
    assert!(!w.root.exists());
    assert_eq!(
        tc_attach::attached_programs(&w.host_if).expect("query"),
        Attached::default()
    );
}

#[test]
fn the_layout_key_selects_clsact_filters() {
    require_kernel!();
    const N: u64 = 7;
    const P: u64 = 200;
    let w = World::new(&["a.scope"]);
    w.write_layout();
    let mut text = std::fs::read_to_string(&w.layout).expect("layout");
    text = text.replacen("[tc]\n", "[tc]\nattach = \"clsact\"\n", 1);
    std::fs::write(&w.layout, text).expect("write layout");
    // No override in the environment: the layout alone chooses.
    let out = apply_with(&w, None);
    assert!(
        out.contains("clsact bpf filters (the layout's [tc] attach = \"clsact\")"),
        "{out}"
    );
    assert_eq!(
        tc_attach::attached_programs(&w.host_if).expect("query"),
        Attached { tcx: 0, clsact: 2 }
    );
    w.send_udp("a.scope", false, N as u32, P as usize);
    let s = w.stat("a.scope");
    assert_eq!(s["self_tc_egress_packets"], N, "{s:?}");
    assert_eq!(s["self_tc_egress_bytes"], N * (P + 28), "{s:?}");
    assert!(apply_with(&w, None).contains("nothing to do"));
    // `status LAYOUT` reports the layout's mode, not the probe's.
    let status = w.cgacct(&["status", "--json", w.layout_arg()]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert_eq!(status["tc_attach"]["mode"], "clsact", "{status}");
    let text = String::from_utf8_lossy(&w.cgacct(&["status", w.layout_arg()]).stdout).into_owned();
    assert!(
        text.contains("attach as clsact bpf filters (the layout's"),
        "{text}"
    );
    // The environment overrides the layout: a TCX apply on the same pins
    // keeps the clsact filters (the pins say what they are).
    if world::tcx() {
        assert!(apply_with(&w, Some("tcx")).contains("nothing to do"));
    }
    w.cgacct(&["destroy", "--root", w.root.to_str().expect("utf-8")]);
    assert!(!w.root.exists());
    assert_eq!(
        tc_attach::attached_programs(&w.host_if).expect("query"),
        Attached::default()
    );
}
