//! Attaching a TC program to an interface so that it outlives this
//! process, and releasing it: a pinned TCX link, or a clsact filter with its
//! program pinned as a marker.
use std::{ffi::CString, fs, io, os::fd::AsFd as _, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::programs::{
    links::{FdLink, Link as _},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError},
    LinkOrder, ProgramError, SchedClassifier, TcAttachType,
};

use super::{
    filters::{bpf_filters, hook_of, ifindex, marker_program},
    mode::Mode,
};
use crate::{
    bpffs::names::{self, Direction, Pins},
    sys,
};

pub(super) fn attach_type(direction: Direction) -> TcAttachType {
    match direction {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    }
}

/// Attaches `prog` (the pinned tc program of `direction`) to `interface`,
/// so that it stays attached after this process exits, and records the
/// attachment at `pin`.
pub fn attach(
    pins: &Pins,
    mode: Mode,
    prog: &mut SchedClassifier,
    interface: &str,
    direction: Direction,
    pin: &Path,
) -> Result<()> {
    let kind = attach_type(direction);
    if let Some(parent) = pin.parent() {
        names::create_dirs(&pins.root, parent)?;
    }
    match mode {
        Mode::Tcx => {
            let id = prog
                .attach_with_options(interface, kind, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .map_err(|e| anyhow!("attaching to {interface} with a TCX link: {e}"))?;
            let link: FdLink = prog.take_link(id)?.try_into()?;
            names::create_with_dots(pin, || link.pin(pin).map(drop).map_err(io::Error::other))?;
        }
        Mode::Clsact => {
            match tc::qdisc_add_clsact(interface) {
                Ok(()) => {}
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => bail!(
                    "adding a clsact qdisc to {interface}: {e} (the kernel needs CONFIG_NET_SCH_INGRESS, \
                     module sch_ingress)"
                ),
            }
            // A marker left by an attachment whose filter is gone (the plan
            // found no filter for it): replaced below.
            if pin.exists() {
                fs::remove_file(pin).with_context(|| format!("removing stale {}", pin.display()))?;
            }
            // The marker is pinned before the filter is added, so a crash in
            // between leaves a marker without a filter (found and replaced by
            // the next plan), never a filter that no pin accounts for.
            let c = CString::new(pin.as_os_str().as_encoded_bytes())?;
            let fd = prog.fd()?;
            names::create_with_dots(pin, || sys::bpf::obj_pin(fd.as_fd(), &c).map_err(|e| e.io_error))
                .with_context(|| format!("pinning {}", pin.display()))?;
            sys::fault::step();
            let attached = prog
                .attach_with_options(interface, kind, TcAttachOptions::Netlink(NlOptions::default()))
                .map_err(|e| {
                    anyhow!(
                        "attaching to {interface} as a clsact bpf filter: {e} (the kernel needs \
                         CONFIG_NET_CLS_BPF, module cls_bpf)"
                    )
                })
                .and_then(|id| Ok(prog.take_link(id)?));
            match attached {
                // Dropping the link would detach the filter: it must outlive
                // this process, and is found again by program id.
                Ok(link) => std::mem::forget(link),
                Err(e) => {
                    let _ = fs::remove_file(pin);
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Before `pin` under `links/tc` is removed: if it is a clsact marker,
/// detaches the filters running its program from the interface the pin
/// names (TCX links detach when their pin goes). Other pins: nothing to do.
pub fn release(pins: &Pins, pin: &Path) -> Result<()> {
    if !pin.starts_with(pins.tc_links()) || !pin.exists() {
        return Ok(());
    }
    let Some(prog_id) = marker_program(pin)? else {
        return Ok(());
    };
    let Some((name, direction)) = hook_of(pins, pin) else {
        return Ok(());
    };
    let Some(ifindex) = ifindex(&name)? else {
        return Ok(());
    };
    for f in bpf_filters(ifindex, direction)? {
        if f.prog_id != Some(prog_id) {
            continue;
        }
        let link = SchedClassifierLink::attached(
            &name,
            attach_type(direction),
            f.priority,
            tc::TcHandle::from(f.handle),
            None,
        )
        .with_context(|| format!("finding the filter on {name}"))?;
        link.detach()
            .map_err(|e: ProgramError| anyhow!("detaching the clsact filter from {name}: {e}"))?;
    }
    // No interface of that name: it is gone, and its filters with it.
    Ok(())
}
