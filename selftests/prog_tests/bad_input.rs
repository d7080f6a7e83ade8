//! Bad input and a hostile environment: a clear error naming the problem
//! and the fix, the documented exit status, and nothing created.
use std::{fs, process::Output};

use crate::{
    require_kernel,
    world::{World, BIN},
};

/// Runs `apply` on `text` as the layout; asserts the exit status, that
/// stderr holds every one of `needles`, and that nothing was created.
fn refused(w: &World, text: &str, status: i32, needles: &[&str]) -> String {
    fs::write(&w.layout, text).expect("layout");
    let out = w.try_cgacct(&["apply", w.layout_arg()], &[]);
    check(w, &out, status, needles)
}

fn check(w: &World, out: &Output, status: i32, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(status), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    assert!(!w.root.exists(), "{} was created: {err}", w.root.display());
    err
}

fn good(w: &World) -> String {
    format!(
        "root = {:?}\n[tc]\ninterfaces = [{:?}]\n[stats]\ncgroups = [\"/{}\"]\n",
        w.root, w.host_if, w.cgroup_root
    )
}

#[test]
fn layout_errors_exit_2_and_change_nothing() {
    require_kernel!();
    let w = World::new(&[]);
    let root = format!("root = {:?}\n", w.root);
    // TOML syntax: line and column.
    refused(
        &w,
        &format!("{root}[tc\ninterfaces = []\n"),
        2,
        &["line 2, column 4"],
    );
    // Unknown keys, at every level.
    refused(&w, &format!("{root}rooot = 1\n"), 2, &["unknown field `rooot`"]);
    refused(
        &w,
        &format!("{root}[stats]\ncgroup = []\n"),
        2,
        &["unknown field `cgroup`", "expected"],
    );
    // A map name the object does not have.
    refused(
        &w,
        &format!("{root}[maps]\nflows = 10\n"),
        2,
        &["unknown field `flows`", "`cgroups`, `interfaces`, `readers`"],
    );
    // Wrong types and values.
    refused(
        &w,
        &format!("{root}[tc]\ninterfaces = \"veth*\"\n"),
        2,
        &["invalid type", "line 3"],
    );
    refused(&w, &format!("{root}[maps]\ncgroups = 0\n"), 2, &["maps.cgroups"]);
    refused(&w, "root = \"relative\"\n", 2, &["absolute"]);
    refused(
        &w,
        &format!("{root}[stats]\ncgroups = [\"a/b\"]\n"),
        2,
        &["stats.cgroups"],
    );
    refused(
        &w,
        &format!("{root}[access.stats]\nmode = \"0888\"\n"),
        2,
        &["access.stats.mode", "octal"],
    );
    refused(
        &w,
        &format!("{root}[access]\nowner = \"no-such-user-x\"\n"),
        2,
        &["access.owner", "no such user"],
    );
    // A pattern that matches nothing: a warning, or an error when required.
    let none = format!("{root}[tc]\ninterfaces = [\"{}zz*\"]\n", w.prefix);
    refused(
        &w,
        &format!("{none}required = true\n"),
        2,
        &["matches nothing", "required = true"],
    );
    fs::write(&w.layout, &none).expect("layout");
    let out = w.try_cgacct(&["apply", w.layout_arg()], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: tc.interfaces pattern"));
    w.cgacct(&["destroy", "--root", w.root.to_str().expect("utf-8")]);
    // The file itself.
    let out = w.try_cgacct(&["apply", "/nonexistent/cgacct.toml"], &[]);
    check(&w, &out, 2, &["cannot read layout file /nonexistent/cgacct.toml"]);
}

#[test]
fn environment_errors_exit_1_and_change_nothing() {
    require_kernel!();
    let w = World::new(&["x"]);
    // A root that is not on bpffs.
    let tmp = std::env::temp_dir().join(&w.prefix);
    fs::write(&w.layout, good(&w)).expect("layout");
    let out = w.try_cgacct(
        &["apply", "--root", tmp.to_str().expect("utf-8"), w.layout_arg()],
        &[],
    );
    check(&w, &out, 1, &["is not on a BPF filesystem", "mount -t bpf"]);
    assert!(!tmp.exists());
    // A name bpffs refuses.
    let dotted = format!("{}.d", w.root.display());
    let out = w.try_cgacct(&["apply", "--root", &dotted, w.layout_arg()], &[]);
    check(&w, &out, 1, &["refuses '.'", "choose a root without dots"]);
    assert!(!std::path::Path::new(&dotted).exists());
    // No privileges: an ordinary user.
    let out = sh_out(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups {BIN} apply {}",
        w.layout_arg()
    ));
    check(&w, &out, 1, &["lacks CAP_SYS_ADMIN", "run it as root"]);
    // bpffs not mounted, no cgroup2 (a cgroup-v1-only host), no kernel BTF:
    // each in a private mount namespace, so the host is untouched.
    let cg = w.cgroup_mount.display().to_string();
    let cases = [
        (
            "umount -l /sys/fs/bpf",
            vec![
                "no BPF filesystem (bpffs) is mounted",
                "mount -t bpf bpf /sys/fs/bpf",
            ],
        ),
        (
            &*format!("umount -l {cg}"),
            vec!["no cgroup2 mount", "cgroup-v1-only"],
        ),
        (
            "mount --bind /dev/null /sys/kernel/btf/vmlinux",
            vec!["cannot read kernel BTF", "CONFIG_DEBUG_INFO_BTF"],
        ),
    ];
    for (setup, needles) in cases {
        let out = sh_out(&format!(
            "unshare -m --propagation private sh -c '{setup} && exec {BIN} apply {}'",
            w.layout_arg()
        ));
        let err = check(&w, &out, 1, &needles);
        assert!(err.contains("nothing was changed"), "{err}");
    }
    // A name longer than bpffs allows once escaped ('%' is written %25):
    // the stats file's, which a kernel without cgroup iterators never pins.
    crate::require_stats_files!();
    let long = "%".repeat(100);
    let long_dir = w.cgroup_mount.join(w.cgroup("x")).join(&long);
    fs::create_dir(&long_dir).expect("mkdir long cgroup");
    fs::write(
        &w.layout,
        format!(
            "root = {:?}\n[stats]\ncgroups = [\"/{}/**\"]\n",
            w.root, w.cgroup_root
        ),
    )
    .expect("layout");
    let out = w.try_cgacct(&["apply", w.layout_arg()], &[]);
    let _ = fs::remove_dir(&long_dir);
    check(&w, &out, 2, &["longer than the 255 bytes", "exclude it"]);
}

fn sh_out(script: &str) -> Output {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh")
}
