//! What the user asked for: the layout file, parsed and validated
//! ([`layout`]), with its patterns ([`select`]) and destination classes
//! ([`classes`]). Nothing here reads the
//! kernel.
pub mod classes;
pub mod layout;
pub mod select;

pub use layout::Layout;
