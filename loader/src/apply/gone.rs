//! Actions whose cgroup or interface went away between the plan and the
//! action (a container stopped meanwhile): nothing is left to do for them,
//! so apply says so and goes on instead of failing. Asked only after an
//! action failed, and answered by looking again, not from the error.
use std::{fs, io, os::unix::fs::MetadataExt as _, path::Path};

use crate::{
    observe::{held::StrayTarget, Observed},
    plan::Action,
};

/// How an action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Not done: what it was for is gone (the reason).
    Gone(String),
}

impl Outcome {
    /// The line apply prints for `action`.
    pub fn line(&self, action: &Action) -> String {
        match self {
            Outcome::Done => action.to_string(),
            Outcome::Gone(why) => format!("skipped: {action} ({why})"),
        }
    }
}

/// Why `action` has nothing left to do, if what it was for is gone.
pub fn why(o: &Observed, action: &Action) -> Option<String> {
    match action {
        Action::AttachCgroup { cgroup, id, .. } | Action::PinStats { cgroup, id, .. } => {
            cgroup_gone(&o.cgroup_mount, cgroup, Some(*id))
        }
        Action::Detach(stray) => match &stray.target {
            StrayTarget::Cgroup { path } => cgroup_gone(&o.cgroup_mount, path, None),
            StrayTarget::Interface { ifindex } => interface_index_gone(*ifindex),
        },
        Action::AttachTc { interface, .. } => {
            let dir = Path::new("/sys/class/net").join(interface);
            (!dir.exists()).then(|| format!("interface {interface} was removed meanwhile"))
        }
        Action::SetAccess { path, .. } => {
            (!path.exists()).then(|| format!("{} was removed meanwhile", path.display()))
        }
        _ => None,
    }
}

/// Whether the cgroup at `display_path` (with inode `id`, when known) is gone.
fn cgroup_gone(mount: &Path, display_path: &str, id: Option<u64>) -> Option<String> {
    let path = mount.join(display_path.trim_start_matches('/'));
    match fs::metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Some(format!("cgroup {display_path} was removed meanwhile"))
        }
        Ok(m) if id.is_some_and(|id| m.ino() != id) => Some(format!(
            "cgroup {display_path} was removed and made again meanwhile: the next apply or watch \
             counts the new one"
        )),
        _ => None,
    }
}

/// Whether no interface of this network namespace has `ifindex` any more.
fn interface_index_gone(ifindex: u32) -> Option<String> {
    let entries = fs::read_dir("/sys/class/net").ok()?;
    let present = entries
        .filter_map(Result::ok)
        .any(|e| fs::read_to_string(e.path().join("ifindex")).is_ok_and(|s| s.trim() == ifindex.to_string()));
    (!present).then(|| format!("interface {ifindex} was removed meanwhile"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_is_gone_when_its_directory_is_or_holds_another_inode() {
        let mount = std::env::temp_dir().join(format!("cgacct-gone-{}", std::process::id()));
        fs::create_dir_all(mount.join("a")).expect("mkdir");
        let ino = fs::metadata(mount.join("a")).expect("stat").ino();
        assert_eq!(cgroup_gone(&mount, "/a", Some(ino)), None);
        assert_eq!(cgroup_gone(&mount, "/a", None), None);
        let made_again = cgroup_gone(&mount, "/a", Some(ino + 1)).expect("another inode");
        assert!(made_again.contains("removed and made again"), "{made_again}");
        let removed = cgroup_gone(&mount, "/b", Some(ino)).expect("no directory");
        assert_eq!(removed, "cgroup /b was removed meanwhile");
        fs::remove_dir_all(&mount).expect("cleanup");
    }

    #[test]
    fn a_skipped_action_says_so_and_why() {
        let a = Action::PinStats {
            cgroup: "/a".into(),
            id: 7,
            pin: "/sys/fs/bpf/x/a/net.stat".into(),
            replace: None,
        };
        assert_eq!(Outcome::Done.line(&a), a.to_string());
        assert_eq!(
            Outcome::Gone("cgroup /a was removed meanwhile".into()).line(&a),
            format!("skipped: {a} (cgroup /a was removed meanwhile)")
        );
    }
}
