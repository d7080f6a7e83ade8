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
