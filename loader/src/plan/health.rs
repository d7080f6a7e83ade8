//! The TCP health and drop programs' links: one tracing link per program
//! the running kernel can run, pinned under `links/tracing/<program>`.
use super::action::Action;
use crate::{bpffs::Pins, observe::Held};

/// Health programs this kernel runs that are not pinned.
pub fn missing(held: &Held) -> bool {
    held.health
        .programs
        .iter()
        .any(|p| held.health.wanted(p) && !held.programs.contains_key(p))
}

/// A tracing link cannot move to another program in place: a new build
/// replaces them, as for the cgroup tracepoints.
pub fn links(pins: &Pins, held: &Held, reload: bool) -> Vec<Action> {
    let mut out = Vec::new();
    for program in held
        .health
        .programs
        .iter()
        .filter(|p| held.programs.contains_key(*p) || reload)
    {
        if !held.health.wanted(program) {
            continue;
        }
        let pin = pins.tracing_link(program);
        let replace = match held.links.get(&pin) {
            None => None,
            Some(Some(l)) if !reload && held.programs.get(program).map(|p| p.id) == Some(l.prog_id) => {
                continue
            }
            Some(Some(_)) => Some("a tracing link cannot move to another program in place".to_string()),
            Some(None) => Some("the pin is not a readable link".to_string()),
        };
        out.push(Action::AttachHealth {
            program: program.to_string(),
            pin,
            replace,
        });
    }
    out
}
