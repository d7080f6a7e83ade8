//! The programs and maps: load (first time, missing pieces, upgrade),
//! replace maps whose shape no longer fits, and the tracepoint links
//! (cgroup_rmdir, cgroup_release).
use anyhow::{bail, Result};
use cgacct_common::programs as prog;

use super::action::{Action, MapPolicy};
use crate::{
    bpffs::Pins,
    object::{self, all_wanted_maps, Kernel, REBUILT_MAPS, TRACEPOINTS},
    observe::Held,
    spec::Layout,
};

/// Why the programs are loaded again, if they are: missing programs or
/// maps, maps being replaced, or another build running.
pub fn load_reason(held: &Held, replacing_maps: bool, k: Kernel) -> Option<String> {
    let this = object::this_build();
    if object::programs(k).iter().any(|p| !held.programs.contains_key(p)) || super::health::missing(held) {
        Some("programs are missing".to_string())
    } else if object::all_maps().any(|m| !held.maps.contains_key(m)) {
        let missing: Vec<&str> = object::all_maps()
            .filter(|m| !held.maps.contains_key(m))
            .collect();
        Some(format!(
            "maps are missing ({}): they start from zero, the pinned ones keep their counters",
            missing.join(", ")
        ))
    } else if replacing_maps {
        Some("maps are replaced".to_string())
    } else {
        match held.build {
            Some(b) if b != this => Some(format!(
                "upgrade: the kernel runs build {b:016x}, this is build {this:016x}; links move in place"
            )),
            None => Some("upgrade: the pinned programs carry no build id".into()),
            _ => None,
        }
    }
}

/// The tracepoints' links (cgroup_rmdir, cgroup_release): a tracing link
/// cannot move to another program in place, so a new build replaces them.
pub fn tracing_links(pins: &Pins, held: &Held, reload: bool) -> Vec<Action> {
    let mut out = Vec::new();
    for (program, tracepoint) in TRACEPOINTS {
        let pin = pins.tracing_link(tracepoint);
        let replace = match held.links.get(&pin) {
            None => None,
            Some(Some(l)) if !reload && held.programs.get(program).map(|p| p.id) == Some(l.prog_id) => {
                continue
            }
            Some(Some(_)) => Some("a tracing link cannot move to another program in place".to_string()),
            Some(None) => Some("the pin is not a readable link".to_string()),
        };
        out.push(match program {
            prog::CGROUP_RMDIR => Action::AttachRmdir { pin, replace },
            _ => Action::AttachRelease { pin, replace },
        });
    }
    out
}

/// Pinned maps whose shape differs from what this build and layout need.
pub fn replace_maps(
    layout: &Layout,
    pins: &Pins,
    held: &Held,
    policy: MapPolicy,
    k: Kernel,
) -> Result<Vec<Action>> {
    let mut out = Vec::new();
    for (name, want) in all_wanted_maps(&layout.maps, k) {
        let Some(have) = held.maps.get(name).copied() else {
            continue;
        };
        if have == want {
            continue;
        }
        let pin = pins.map(name);
        let scratch = REBUILT_MAPS.contains(&name);
        // A value layout of an earlier build, converted with its counters
        // by any apply: an upgrade is no choice of the user's.
        let upgrade = object::upgrades(name, have, want);
        let resize_only = upgrade
            || (have.kind, have.key_size, have.value_size) == (want.kind, want.key_size, want.value_size);
        let automatic = upgrade && have.max_entries == want.max_entries && policy != MapPolicy::Reset;
        match policy {
            MapPolicy::Refuse if scratch || automatic => {}
            MapPolicy::Refuse => bail!(
                "pinned map {} is {have}, but this build and layout need {want}. Its counters are \
                 kept as they are and nothing was changed. Choose: restore the layout's [maps] \
                 sizes; or `apply --migrate-maps` to move to new maps{}; or `apply --reset-maps` to \
                 start those maps from zero",
                pin.display(),
                if resize_only {
                    " and copy the counters over"
                } else {
                    " (the value layout changed: counters cannot be copied, --migrate-maps will refuse)"
                }
            ),
            MapPolicy::Migrate if !resize_only && !scratch => bail!(
                "pinned map {} is {have}, this build needs {want}: its entries cannot be converted, \
                 so --migrate-maps cannot keep them. Use `apply --reset-maps` to start it from zero",
                pin.display()
            ),
            _ => {}
        }
        out.push(Action::ReplaceMap {
            map: name.to_string(),
            pin,
            from: have,
            to: want,
            keep_counters: (policy == MapPolicy::Migrate || automatic) && !scratch,
        });
    }
    Ok(out)
}
