//! Detaching attachments of our programs that no pin of ours holds (made by
//! hand, or left by an older run).
use std::{fs, os::fd::AsFd as _, path::Path};

use anyhow::{anyhow, Context as _, Result};
use aya::programs::loaded_programs;

use crate::{
    observe::{
        held::{Stray, StrayTarget},
        Observed,
    },
    sys::{
        self,
        bpf::{self, Hook},
    },
};

/// Detaches an attachment of our programs that no pin of ours holds.
pub fn detach(o: &Observed, stray: &Stray) -> Result<()> {
    sys::fault::step();
    if stray.link_id != 0 {
        return bpf::link_detach_by_id(stray.link_id)
            .with_context(|| format!("detaching link {}", stray.link_id));
    }
    let prog = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == stray.prog_id)
        .ok_or_else(|| anyhow!("program id {} is gone", stray.prog_id))?
        .fd()?;
    match &stray.target {
        StrayTarget::Interface { ifindex } => {
            let t = [bpf::TCX_INGRESS, bpf::TCX_EGRESS][stray.direction as usize];
            bpf::prog_detach(Hook::Interface(*ifindex), prog.as_fd(), t).context("BPF_PROG_DETACH")
        }
        StrayTarget::Cgroup { path } => {
            let t = [bpf::CGROUP_INGRESS, bpf::CGROUP_EGRESS][stray.direction as usize];
            let dir = open_cgroup(&o.cgroup_mount, path)?;
            match bpf::prog_detach(Hook::Cgroup(dir.as_fd()), prog.as_fd(), t) {
                Ok(()) => Ok(()),
                // Not a plain attachment: a link nobody pinned under our root.
                Err(_) => {
                    let id = bpf::link_ids()
                        .into_iter()
                        .filter(|id| !held_by_us(o, *id))
                        .find(|id| {
                            bpf::link_state_by_id(*id).is_ok_and(|l| {
                                l.prog_id == stray.prog_id
                                    && matches!(l.target, bpf::LinkTarget::Cgroup { attach_type, .. } if attach_type == t)
                            })
                        })
                        .ok_or_else(|| anyhow!("no attachment of program {} found to detach", stray.prog_id))?;
                    bpf::link_detach_by_id(id).with_context(|| format!("detaching link {id}"))
                }
            }
        }
    }
}

fn held_by_us(o: &Observed, link_id: u32) -> bool {
    o.held.links.values().flatten().any(|l| l.id == link_id)
}

pub(super) fn open_cgroup(mount: &Path, display_path: &str) -> Result<fs::File> {
    let path = mount.join(display_path.trim_start_matches('/'));
    fs::File::open(&path).with_context(|| format!("opening cgroup {}", path.display()))
}
