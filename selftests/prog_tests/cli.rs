//! The command line as scripts meet it: exit statuses of every command,
//! roots and patterns that would mean something else than they say, and
//! output closed early (`| head`).
use std::{
    fs,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::process::ExitStatusExt as _,
    },
    process::{Command, Output, Stdio},
};

use crate::{
    require_kernel,
    world::{sh, World, BIN},
};

fn code_and_err(out: &Output) -> (Option<i32>, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_root_with_dot_dot_is_refused_and_nothing_is_made() {
    require_kernel!();
    let w = World::new(&[]);
    w.write_layout();
    let detour = format!("{}/../{}b", w.root.display(), w.prefix);
    let text = fs::read_to_string(&w.layout).expect("layout");
    fs::write(
        &w.layout,
        text.replace(&format!("{:?}", w.root), &format!("{detour:?}")),
    )
    .expect("layout");
    let (code, err) = code_and_err(&w.try_cgacct(&["apply", w.layout_arg()], &[]));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("'..'") && err.contains(&format!("/sys/fs/bpf/{}b", w.prefix)),
        "{err}"
    );
    // The same from --root, for every command that takes one.
    w.write_layout();
    for cmd in ["apply", "plan", "status", "destroy", "watch"] {
        let (code, err) = code_and_err(&w.try_cgacct(&[cmd, "--root", &detour, w.layout_arg()], &[]));
        assert_eq!(code, Some(2), "{cmd}: {err}");
        assert!(err.contains("--root") && err.contains("'..'"), "{cmd}: {err}");
    }
    assert!(!w.root.exists(), "{} was made", w.root.display());
    assert!(!std::path::Path::new(&format!("/sys/fs/bpf/{}b", w.prefix)).exists());
}

#[test]
fn patterns_that_other_globs_read_otherwise_are_refused() {
    require_kernel!();
    let w = World::new(&[]);
    for (pattern, needle) in [
        ("/[abc", "character classes"),
        ("/a/b[0-9]", "character classes"),
        ("/a**b", "single *"),
    ] {
        fs::write(
            &w.layout,
            format!("root = {:?}\n[stats]\ncgroups = [{pattern:?}]\n", w.root),
        )
        .expect("layout");
        let (code, err) = code_and_err(&w.try_cgacct(&["apply", w.layout_arg()], &[]));
        assert_eq!(code, Some(2), "{pattern}: {err}");
        assert!(
            err.contains(needle) && err.contains("stats.cgroups"),
            "{pattern}: {err}"
        );
    }
    assert!(!w.root.exists());
}

#[test]
fn a_middle_double_star_selects_every_depth_between() {
    require_kernel!();
    // Which stats files a [stats] pattern makes.
    crate::require_stats_files!();
    let w = World::new(&["a", "a/x", "a/b", "a/b/x", "a/b/c", "a/b/c/x", "x"]);
    fs::write(
        &w.layout,
        format!(
            "root = {:?}\n[stats]\ncgroups = [\"/{}/a/**/x\"]\n",
            w.root, w.cgroup_root
        ),
    )
    .expect("layout");
    w.apply();
    let mut made: Vec<String> =
        cgacct_pin::bpffs::walk::Tree::read(&cgacct_pin::bpffs::Pins::new(&w.root, true))
            .expect("walk")
            .stats_files(&cgacct_pin::bpffs::Pins::new(&w.root, true))
            .iter()
            .map(|p| p.strip_prefix(&w.root).expect("below root").display().to_string())
            .collect();
    made.sort();
    let p = &w.prefix;
    assert_eq!(
        made,
        [
            format!("{p}/a/b/c/x/net.stat"),
            format!("{p}/a/b/x/net.stat"),
            format!("{p}/a/x/net.stat")
        ]
    );
}

#[test]
fn watch_on_an_invalid_layout_exits_2() {
    require_kernel!();
    let w = World::new(&[]);
    fs::write(
        &w.layout,
        format!("root = {:?}\n[tc]\nattach = \"xdp\"\n", w.root),
    )
    .expect("layout");
    let (code, err) = code_and_err(&w.try_cgacct(&["watch", w.layout_arg()], &[]));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("unknown variant `xdp`") && !err.contains("nothing was changed"),
        "{err}"
    );
    assert!(!w.root.exists());
}

#[test]
fn plan_on_a_dotted_root_names_the_problem() {
    require_kernel!();
    let w = World::new(&[]);
    w.write_layout();
    let dotted = format!("{}.d", w.root.display());
    for cmd in ["plan", "apply"] {
        let (code, err) = code_and_err(&w.try_cgacct(&[cmd, "--root", &dotted, w.layout_arg()], &[]));
        assert_eq!(code, Some(1), "{cmd}: {err}");
        assert!(
            err.contains("refuses '.'") && err.contains("choose a root without dots"),
            "{cmd}: {err}"
        );
        assert!(!err.contains("Operation not permitted"), "{cmd}: {err}");
    }
    assert!(!std::path::Path::new(&dotted).exists());
}

/// A pipe whose reading end is already closed: every write to it fails
/// (EPIPE, SIGPIPE), as when `| head -1` has exited.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: an out-array of two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: both fds are new and ours; the read end is closed at once.
    unsafe {
        libc::close(fds[0]);
        Stdio::from(OwnedFd::from_raw_fd(fds[1]))
    }
}

fn with_closed_output(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdout(closed_pipe())
        .output()
        .expect("spawning cgacct-pin")
}

#[test]
fn output_closed_early_ends_quietly_and_apply_still_finishes() {
    require_kernel!();
    let w = World::new(&["a.scope"]);
    w.write_layout();
    let root = w.root.display().to_string();
    let layout = w.layout_arg();
    // apply with its output closed still applies everything and says so
    // through its exit status.
    let out = with_closed_output(&["apply", layout]);
    let (code, err) = code_and_err(&out);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = code_and_err(&w.try_cgacct(&["plan", "--detailed-exitcode", layout], &[]));
    assert_eq!(code, Some(0), "apply stopped early: {err}");
    // Reading commands end quietly, by SIGPIPE as Unix tools do.
    for args in [
        vec!["status", "--root", &root],
        vec!["status", "--json", "--root", &root],
        vec!["plan", layout],
        vec!["removed", "--root", &root],
        vec!["top", "--once", "--interval", "0.1", "--root", &root],
        vec!["--help"],
    ] {
        let out = with_closed_output(&args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        for bad in ["panicked", "Broken pipe", "error"] {
            assert!(!err.contains(bad), "{args:?}: {err}");
        }
        let quiet = out.status.signal() == Some(libc::SIGPIPE) || out.status.success();
        assert!(quiet, "{args:?}: {:?} {err}", out.status);
    }
    // And through a real pipe: one line, nothing else.
    let out = sh(&format!("{BIN} status --root {root} 2>&1 | head -1"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    w.cgacct(&["destroy", "--root", &root]);
}

/// README's quick start is typed as root on a fresh machine, which has no
/// sudo: every command there is a script of this repository, run as is.
#[test]
fn the_quick_start_runs_as_root_without_sudo() {
    use std::os::unix::fs::PermissionsExt as _;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = fs::read_to_string(repo.join("README.md")).expect("README.md");
    let start = readme.find("## Quick start").expect("a Quick start section");
    let block = readme[start..]
        .split("```")
        .nth(1)
        .expect("a code block in Quick start");
    let commands: Vec<&str> = block.lines().skip(1).filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(commands.len(), 2, "two commands: {commands:?}");
    for line in commands {
        let cmd = line.split_whitespace().next().unwrap_or_default();
        assert!(
            cmd.starts_with("scripts/"),
            "{line:?} is not one of our scripts run as is"
        );
        let mode = fs::metadata(repo.join(cmd)).expect(cmd).permissions().mode();
        assert!(mode & 0o100 != 0, "{cmd} is not executable");
        let text = fs::read_to_string(repo.join(cmd)).expect(cmd);
        let runs_sudo = text.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with("sudo ") || l.contains("&& sudo ") || l.contains("| sudo ")
        });
        assert!(!runs_sudo, "{cmd} runs sudo");
    }
}
