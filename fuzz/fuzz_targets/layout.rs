//! Any bytes given to the layout parser: an `Ok` or an error, never a
//! panic; a layout that parses has only what validation allows.
#![no_main]

#[path = "../../loader/src/spec/select.rs"]
mod select;

#[path = "../../loader/src/spec/layout.rs"]
mod layout;

#[path = "../../loader/src/spec/classes.rs"]
mod classes;

// The loader's raw calls that the layout makes (user and group look-ups),
// at the paths the layout names them by (`crate::sys::os`).
#[path = "../../loader/src/sys/error.rs"]
mod error;
#[path = "../../loader/src/sys/os.rs"]
mod os;
use error::SysError;
mod sys {
    pub(crate) use super::os;
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(l) = layout::Layout::parse(text) {
        assert!(l.root.is_absolute());
        assert!(l.maps.cgroups > 0 && l.maps.interfaces > 0 && l.maps.readers > 0);
        assert_eq!(l.access.private.mode & !0o666, 0);
        assert_eq!(l.access.stats.mode & !0o666, 0);
        for p in &l.stats_cgroups {
            let _ = p.matches("a/b.scope/c");
        }
        for p in &l.tc_interfaces {
            let _ = p.matches("veth0");
        }
        if let Some(list) = &l.classes {
            assert!(list.len() <= classes::MAX_NAMED);
            assert!(list.iter().all(|c| c.name != "other" && !c.name.is_empty()));
            let t = classes::ClassTable::wanted(Some(list), None);
            assert!(t.indices <= cgacct_common::classes::MAX);
        }
    }
});
