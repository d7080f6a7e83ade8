//! Checks of a layout against the host and of a plan's names, made before
//! anything changes.
use anyhow::{bail, Result};

use super::action::Action;
use crate::{
    observe::{Cgroup, Interface},
    spec::Layout,
};

/// A pattern of the layout that selects nothing on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmatched {
    pub key: &'static str,
    pub pattern: String,
    pub required: bool,
}

/// Patterns that match nothing; with `required = true` in their section
/// `apply` refuses to run.
pub fn unmatched(layout: &Layout, interfaces: &[Interface], cgroups: &[Cgroup]) -> Vec<Unmatched> {
    let mut out = Vec::new();
    for p in &layout.tc_interfaces {
        if !interfaces.iter().any(|i| p.matches(&i.name)) {
            out.push(Unmatched {
                key: "tc.interfaces",
                pattern: p.as_str().to_string(),
                required: layout.required.tc,
            });
        }
    }
    for (key, list, required) in [
        (
            "cgroup_skb.attach",
            &layout.cgroup_skb_attach,
            layout.required.cgroup_skb,
        ),
        ("stats.cgroups", &layout.stats_cgroups, layout.required.stats),
    ] {
        for p in list {
            if !cgroups.iter().any(|c| p.matches(&c.path)) {
                out.push(Unmatched {
                    key,
                    pattern: p.as_str().to_string(),
                    required,
                });
            }
        }
    }
    out
}

/// Fails if an action would create a name longer than bpffs accepts.
pub fn check_names(actions: &[Action]) -> Result<()> {
    for a in actions {
        let (Action::PinStats { pin, cgroup, .. }
        | Action::AttachTc {
            pin,
            interface: cgroup,
            ..
        }) = a
        else {
            continue;
        };
        if let Some(c) = pin.components().find(|c| c.as_os_str().len() > 255) {
            bail!(
                "{cgroup} would be mirrored as {:?}, longer than the 255 bytes bpffs allows in a \
                 name (escapes included); exclude it from the layout's patterns",
                c.as_os_str()
            );
        }
    }
    Ok(())
}
