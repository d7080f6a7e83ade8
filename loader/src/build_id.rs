//! Which build of the programs this binary carries, and which build the
//! kernel runs. The loader writes a hash of the embedded object into the
//! programs' read-only data (`BUILD_ID`); a later `apply` reads it back from
//! the pinned iterator program's `.rodata` map. Reading changes nothing.
use std::{os::fd::AsFd as _, path::Path, sync::OnceLock};

use anyhow::{anyhow, Context as _, Result};
use aya::{maps::MapInfo, programs::ProgramInfo};
use cgacct_common::globals;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use crate::{apply::OBJECT, sys};

/// FNV-1a over the embedded object: equal objects, equal ids.
pub fn this_build() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in OBJECT {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Tests of the upgrade path stand for "a new build" with a salt.
        if let Some(salt) = std::env::var_os("CGACCT_PIN_BUILD_SALT") {
            for b in salt.as_encoded_bytes() {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    })
}

/// Where `BUILD_ID` sits in the object's `.rodata`: (offset, section size).
fn build_id_place() -> Result<(usize, usize)> {
    let file = object::File::parse(OBJECT).context("parsing the embedded BPF object")?;
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(globals::BUILD_ID))
        .ok_or_else(|| anyhow!("the embedded object has no {} symbol", globals::BUILD_ID))?;
    let index = sym
        .section_index()
        .ok_or_else(|| anyhow!("{} is not in a section", globals::BUILD_ID))?;
    let section = file.section_by_index(index)?;
    let offset = usize::try_from(sym.address() - section.address())?;
    Ok((offset, usize::try_from(section.size())?))
}

/// The build id of the program pinned at `prog_pin`, read from its
/// `.rodata` map; `None` when it has none (a build before build ids).
pub fn running_build(prog_pin: &Path) -> Result<Option<u64>> {
    let (offset, size) = build_id_place()?;
    let info =
        ProgramInfo::from_pin(prog_pin).with_context(|| format!("reading program {}", prog_pin.display()))?;
    for id in info.map_ids()?.unwrap_or_default() {
        let map = MapInfo::from_id(id)?;
        if map.name() != b".rodata" || map.value_size() as usize != size {
            continue;
        }
        let fd = map.fd()?;
        let value = sys::array_value(fd.as_fd(), size).context("reading the program's .rodata")?;
        let bytes = value
            .get(offset..offset + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .ok_or_else(|| anyhow!(".rodata is shorter than expected"))?;
        return Ok(Some(u64::from_ne_bytes(bytes)));
    }
    Ok(None)
}
