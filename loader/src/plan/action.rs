//! The actions of a plan: what `apply` will do, in order, each with the
//! reason it is needed. `plan --json` prints them (a stable schema).
use std::{fmt, path::PathBuf};

use serde::Serialize;

use crate::{bpffs::Direction, object::MapShape, observe::held::Stray, spec::classes::ClassTable};

/// What to do with pinned maps whose shape no longer fits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapPolicy {
    /// Refuse, explaining the way out.
    #[default]
    Refuse,
    /// New maps of the wanted shape, counters copied over.
    Migrate,
    /// New, empty maps.
    Reset,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Load the object, reusing the pinned maps (but those being replaced),
    /// and pin its programs in place of any pinned ones.
    LoadPrograms { reason: String },
    /// Replace a pinned map by a new one of the wanted shape.
    ReplaceMap {
        map: String,
        pin: PathBuf,
        from: MapShape,
        to: MapShape,
        keep_counters: bool,
    },
    /// Move a pinned link to the pinned program of its kind, in place.
    UpdateLink { pin: PathBuf, program: String },
    AttachTc {
        interface: String,
        direction: Direction,
        pin: PathBuf,
        /// Why the pin there is replaced, if one is.
        #[serde(skip_serializing_if = "Option::is_none")]
        replace: Option<String>,
    },
    AttachCgroup {
        cgroup: String,
        id: u64,
        direction: Direction,
        pin: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        replace: Option<String>,
    },
    PinStats {
        cgroup: String,
        id: u64,
        pin: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        replace: Option<String>,
    },
    /// Attach the `cgroup_rmdir` tracepoint program (final totals of
    /// removed cgroups, folded into their parents).
    AttachRmdir {
        pin: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        replace: Option<String>,
    },
    /// Attach the `cgroup_release` tracepoint program (a removed cgroup
    /// released by the kernel: what came late folded, its entries ended).
    AttachRelease {
        pin: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        replace: Option<String>,
    },
    /// Attach a TCP health or drop program to its kernel hook.
    AttachHealth {
        program: String,
        pin: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        replace: Option<String>,
    },
    /// Remove a pin that the layout no longer wants (detaches a link,
    /// releases a removed cgroup held by its stats file).
    Unpin {
        what: String,
        pin: PathBuf,
        reason: String,
    },
    /// Detach an attachment of our programs that no pin of ours holds.
    Detach(Stray),
    /// Write the destination class tables (`[classes]`): names, prefixes
    /// and whether classes count. Counts of a class that stays (by name)
    /// are kept; those of a removed class are dropped.
    SetClasses { from: ClassTable, to: ClassTable },
    /// Set owner, group and mode of an existing pin or directory.
    SetAccess {
        path: PathBuf,
        uid: u32,
        gid: u32,
        mode: String,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = |replace: &Option<String>| match replace {
            Some(why) => format!("replace ({why}): "),
            None => String::new(),
        };
        match self {
            Action::LoadPrograms { reason } => write!(f, "load programs and pin them ({reason})"),
            Action::ReplaceMap {
                map,
                from,
                to,
                keep_counters,
                ..
            } => write!(
                f,
                "replace map {map} ({from} -> {to}), {}",
                if *keep_counters {
                    "copying its counters"
                } else {
                    "counters reset to zero"
                }
            ),
            Action::UpdateLink { pin, program } => {
                write!(f, "update link {} to program {program}", pin.display())
            }
            Action::AttachTc {
                interface,
                direction,
                pin,
                replace,
            } => write!(
                f,
                "{}attach tc {} to {interface} -> {}",
                verb(replace),
                direction.as_str(),
                pin.display()
            ),
            Action::AttachCgroup {
                cgroup,
                direction,
                pin,
                replace,
                ..
            } => write!(
                f,
                "{}attach cgroup_skb {} to {cgroup} -> {}",
                verb(replace),
                direction.as_str(),
                pin.display()
            ),
            Action::PinStats {
                cgroup, pin, replace, ..
            } => write!(f, "{}pin stats of {cgroup} -> {}", verb(replace), pin.display()),
            Action::Unpin { what, pin, reason } => write!(f, "unpin {what} {} ({reason})", pin.display()),
            Action::Detach(s) => write!(
                f,
                "detach program id {} from {} ({})",
                s.prog_id,
                s.hook,
                if s.link_id == 0 {
                    "attached without a link, not by cgacct".to_string()
                } else {
                    format!("held by link id {}, not pinned by cgacct", s.link_id)
                }
            ),
            Action::SetAccess { path, uid, gid, mode } => {
                write!(f, "set owner {uid}:{gid} mode {mode} on {}", path.display())
            }
            Action::SetClasses { from, to } => write!(f, "{}", ClassChange(from, to)),
            Action::AttachRmdir { pin, replace } => write!(
                f,
                "{}attach the cgroup_rmdir tracepoint -> {}",
                verb(replace),
                pin.display()
            ),
            Action::AttachRelease { pin, replace } => write!(
                f,
                "{}attach the cgroup_release tracepoint -> {}",
                verb(replace),
                pin.display()
            ),
            Action::AttachHealth {
                program,
                pin,
                replace,
            } => {
                write!(f, "{}attach {program} -> {}", verb(replace), pin.display())
            }
        }
    }
}

impl Action {
    /// Where the action's result is pinned (or what it changes), if anywhere.
    pub fn pin(&self) -> Option<&PathBuf> {
        match self {
            Action::LoadPrograms { .. } | Action::Detach(_) | Action::SetClasses { .. } => None,
            Action::AttachTc { pin, .. }
            | Action::AttachCgroup { pin, .. }
            | Action::PinStats { pin, .. }
            | Action::AttachRmdir { pin, .. }
            | Action::AttachRelease { pin, .. }
            | Action::AttachHealth { pin, .. }
            | Action::ReplaceMap { pin, .. }
            | Action::UpdateLink { pin, .. }
            | Action::Unpin { pin, .. } => Some(pin),
            Action::SetAccess { path, .. } => Some(path),
        }
    }
}

/// How a class table change reads in a plan.
struct ClassChange<'a>(&'a ClassTable, &'a ClassTable);

impl fmt::Display for ClassChange<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (from, to) = (self.0, self.1);
        if !to.on() {
            return write!(f, "turn destination classes off (their counts are dropped)");
        }
        write!(f, "set destination classes:")?;
        for (i, name) in &to.names {
            let prefixes: Vec<String> = to
                .prefixes
                .iter()
                .filter(|(_, c)| *c == i)
                .map(|(p, _)| p.to_string())
                .collect();
            let new = if from.names.get(i) == Some(name) {
                ""
            } else {
                "new "
            };
            write!(f, " {new}{name} [{}];", prefixes.join(", "))?;
        }
        let gone: Vec<&str> = from
            .names
            .iter()
            .filter(|(i, n)| to.names.get(i) != Some(n))
            .map(|(_, n)| n.as_str())
            .collect();
        if gone.is_empty() {
            Ok(())
        } else {
            write!(f, " removed {} (their counts are dropped)", gone.join(", "))
        }
    }
}
