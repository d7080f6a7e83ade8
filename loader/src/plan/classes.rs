//! The destination class tables: written when the layout's `[classes]`
//! differ from what the kernel holds.
use super::action::Action;
use crate::{observe::Held, spec::classes::ClassTable, spec::Layout};

/// The class tables to write, if they differ from the pinned ones.
pub fn plan(layout: &Layout, held: &Held) -> Option<Action> {
    let have = held.classes.clone().unwrap_or_default();
    let want = ClassTable::wanted(layout.classes.as_deref(), held.classes.as_ref());
    (have != want).then_some(Action::SetClasses { from: have, to: want })
}
