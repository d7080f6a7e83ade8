//! Owners, groups and modes that drifted from the layout's `[access]`.
use super::action::Action;
use crate::{
    bpffs::{access, walk::Tree, Pins},
    spec::Layout,
};

/// A `set_access` for every entry under the root whose owner, group or
/// mode is not what the layout wants, in the tree's order.
pub fn drift(layout: &Layout, pins: &Pins, tree: &Tree) -> Vec<Action> {
    tree.entries
        .iter()
        .filter_map(|e| {
            let a = access::wanted(&layout.access, pins, &e.path, e.is_dir)?;
            (!access::has(e, &a)).then(|| Action::SetAccess {
                path: e.path.clone(),
                uid: a.uid,
                gid: a.gid,
                mode: format!("{:04o}", a.mode),
            })
        })
        .collect()
}
