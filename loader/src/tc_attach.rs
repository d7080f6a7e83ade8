//! How the TC programs attach on this kernel, chosen by probing the kernel,
//! never by comparing version numbers.
//!
//! - **TCX** (Linux >= 6.6 with CONFIG_NET_XGRESS): each attachment is a
//!   bpf link, pinned at `links/tc/<ifname>/<direction>`. Removing the pin
//!   detaches it.
//! - **clsact** (kernels without TCX): a `clsact` qdisc is added to the
//!   interface (kept if present) and the program becomes a direct-action
//!   `bpf` filter on its ingress or egress hook. Such a filter is not a bpf
//!   link and cannot be pinned; it stays in the kernel after cgacct-pin
//!   exits because cgacct never detaches it on exit. What cgacct pins at
//!   `links/tc/<ifname>/<direction>` is then the attached program itself: a
//!   marker that `plan` checks against the interface's filters (a filter
//!   running that program id must be there, or the attachment is made
//!   again) and that `apply`/`destroy` remove together with the filter. The
//!   clsact qdisc is left in place when the filter goes: other tools may
//!   have filters on it. `tc filter show dev IF ingress` lists the filters;
//!   `bpftool link` does not.
//!
//! Counting is the same either way. The layout's `[tc] attach` chooses:
//! `auto` (the default) probes, `tcx` requires TCX links, `clsact` makes
//! clsact filters even where the kernel has TCX: to run next to tools that
//! order tc filters themselves, or to attach to thousands of interfaces
//! fast (each TCX link creation waits for an RCU grace period under the
//! RTNL lock, about 15 ms; a clsact filter costs well under 1 ms). The
//! environment variable `CGACCT_TC_ATTACH` (same values) overrides the
//! layout.
use std::{ffi::CString, fs, io, os::fd::AsFd as _, path::Path, sync::OnceLock};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::programs::{
    links::{FdLink, Link as _},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError},
    LinkOrder, ProgramError, ProgramInfo, SchedClassifier, TcAttachType,
};
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::{
    host,
    names::{self, Direction, Pins},
    plan::Action,
    sys::{self, ObjectKind},
};

/// The environment variable that overrides the probe.
pub const ENV: &str = "CGACCT_TC_ATTACH";

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Tcx,
    Clsact,
}

/// What the layout's `[tc] attach` asks for (defined with the layout).
pub use crate::layout::TcAttach as Preference;

static PREFERENCE: OnceLock<Preference> = OnceLock::new();

/// Records the layout's `[tc] attach` for [`choice`]; call it before the
/// first [`choice`]. The first call wins (one layout per process).
pub fn prefer(p: Preference) {
    let _ = PREFERENCE.set(p);
}

/// The mode and why it was chosen.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Choice {
    pub mode: Mode,
    pub why: String,
}

impl Choice {
    /// One line for `apply` and `status`.
    pub fn describe(&self) -> String {
        match self.mode {
            Mode::Tcx => format!("tc programs attach as TCX links ({})", self.why),
            Mode::Clsact => format!(
                "tc programs attach as clsact bpf filters ({}); they are not bpf links, so \
                 links/tc/<interface>/<direction> pins the attached program as a marker, and \
                 `tc filter show dev <interface> ingress|egress` lists them",
                self.why
            ),
        }
    }
}

/// Decides once per process: `CGACCT_TC_ATTACH` when set, else the
/// layout's `[tc] attach` (see [`prefer`]); `auto` probes the kernel.
pub fn choice() -> Result<&'static Choice> {
    static CHOICE: OnceLock<Choice> = OnceLock::new();
    if let Some(c) = CHOICE.get() {
        return Ok(c);
    }
    let (preference, source) = match std::env::var(ENV).as_deref() {
        Ok("clsact") => (Preference::Clsact, format!("{ENV}=clsact")),
        Ok("tcx") => (Preference::Tcx, format!("{ENV}=tcx")),
        Ok("auto") => (Preference::Auto, String::new()),
        Ok("") | Err(std::env::VarError::NotPresent) => {
            let p = PREFERENCE.get().copied().unwrap_or_default();
            (p, format!("the layout's [tc] attach = \"{}\"", p.as_str()))
        }
        Ok(other) => bail!("{ENV}={other:?} is not one of auto, tcx, clsact"),
        Err(e) => bail!("{ENV}: {e}"),
    };
    let c = match preference {
        Preference::Clsact => Choice {
            mode: Mode::Clsact,
            why: source,
        },
        Preference::Tcx => Choice {
            mode: Mode::Tcx,
            why: source,
        },
        Preference::Auto => {
            match sys::probe_tcx().context("probing the kernel for TCX (BPF_PROG_LOAD, BPF_LINK_CREATE)")? {
                true => Choice {
                    mode: Mode::Tcx,
                    why: "the kernel has TCX".into(),
                },
                false => Choice {
                    mode: Mode::Clsact,
                    why: "this kernel has no TCX: it needs Linux >= 6.6 with CONFIG_NET_XGRESS".into(),
                },
            }
        }
    };
    Ok(CHOICE.get_or_init(|| c))
}

/// A note for `apply` to print when the plan attaches TC programs as
/// clsact filters.
pub fn apply_note(actions: &[Action]) -> Result<Option<String>> {
    if !actions.iter().any(|a| matches!(a, Action::AttachTc { .. })) {
        return Ok(None);
    }
    let c = choice()?;
    Ok((c.mode == Mode::Clsact).then(|| c.describe()))
}

fn attach_type(direction: Direction) -> TcAttachType {
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
    prog: &mut SchedClassifier,
    interface: &str,
    direction: Direction,
    pin: &Path,
) -> Result<()> {
    let choice = choice()?;
    let kind = attach_type(direction);
    if let Some(parent) = pin.parent() {
        names::create_dirs(&pins.root, parent)?;
    }
    match choice.mode {
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
            names::create_with_dots(pin, || sys::obj_pin(fd.as_fd(), &c))
                .with_context(|| format!("pinning {}", pin.display()))?;
            crate::fault::step();
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

/// Whether the attachment recorded at `pin` is in place: a TCX link pin
/// (or anything else there) counts as attached; a clsact marker counts only
/// while interface `ifindex` has a bpf filter running the marker's program.
pub fn is_attached(pin: &Path, ifindex: u32, direction: Direction) -> Result<bool> {
    if !pin.exists() {
        return Ok(false);
    }
    let Some(prog_id) = marker_program(pin)? else {
        return Ok(true);
    };
    Ok(bpf_filters(ifindex, direction)?
        .iter()
        .any(|f| f.prog_id == Some(prog_id)))
}

/// What the clsact marker at `pin` (under `links/tc`) holds, for
/// [`crate::held`]: its program and whether its filter is in place. None
/// when the pin is not a marker.
pub fn marker_state(
    pins: &Pins,
    pin: &Path,
    interfaces: &[host::Interface],
) -> Result<Option<sys::LinkState>> {
    let Some(prog_id) = marker_program(pin)? else {
        return Ok(None);
    };
    let mut attached = false;
    if let Some((name, direction)) = hook_of(pins, pin) {
        if let Some(iface) = interfaces.iter().find(|i| i.name == name) {
            attached = bpf_filters(iface.ifindex, direction)?
                .iter()
                .any(|f| f.prog_id == Some(prog_id));
        }
    }
    Ok(Some(sys::LinkState {
        id: 0,
        prog_id,
        target: sys::LinkTarget::Clsact { attached },
    }))
}

/// The program id of a clsact marker at `pin`; None for anything else.
fn marker_program(pin: &Path) -> Result<Option<u32>> {
    let c = CString::new(pin.as_os_str().as_encoded_bytes())?;
    match sys::object_kind(&c).with_context(|| format!("opening pin {}", pin.display()))? {
        ObjectKind::Program => Ok(Some(
            ProgramInfo::from_pin(pin)
                .with_context(|| format!("reading pinned program {}", pin.display()))?
                .id(),
        )),
        _ => Ok(None),
    }
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

/// Programs of cgacct's kind attached to `interface`, both directions:
/// TCX programs (where the kernel has TCX) and bpf filters on its clsact
/// hooks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attached {
    pub tcx: usize,
    pub clsact: usize,
}

pub fn attached_programs(interface: &str) -> Result<Attached> {
    let mut out = Attached::default();
    let ifindex = ifindex(interface)?.ok_or_else(|| anyhow!("no interface {interface}"))?;
    let has_tcx = sys::probe_tcx().context("probing the kernel for TCX")?;
    for direction in Direction::BOTH {
        if has_tcx {
            let (_, progs) = SchedClassifier::query_tcx(interface, attach_type(direction))
                .map_err(|e| anyhow!("querying TCX programs of {interface}: {e}"))?;
            out.tcx += progs.len();
        }
        out.clsact += bpf_filters(ifindex, direction)?.len();
    }
    Ok(out)
}

/// The index of `interface` in this network namespace (one
/// `/sys/class/net/<name>/ifindex` read, not a scan); None when there is no
/// such interface.
fn ifindex(interface: &str) -> Result<Option<u32>> {
    if interface.is_empty() || interface.contains('/') || interface == "." || interface == ".." {
        return Ok(None);
    }
    let path = Path::new("/sys/class/net").join(interface).join("ifindex");
    match fs::read_to_string(&path) {
        Ok(s) => {
            Ok(Some(s.trim().parse().with_context(|| {
                format!("reading {}: not a number", path.display())
            })?))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The interface name and direction a pin under `links/tc` stands for
/// (`links/tc/<escaped name>/<direction>`), found from the pin's own path
/// rather than by trying every interface; None for any other path.
fn hook_of(pins: &Pins, pin: &Path) -> Option<(String, Direction)> {
    let direction = match pin.file_name()?.to_str()? {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        _ => return None,
    };
    let name = names::unescape(pin.parent()?.file_name()?.to_str()?)?;
    (pins.tc_link(&name, direction) == pin).then_some((name, direction))
}

/// A bpf filter on a clsact hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    pub prog_id: Option<u32>,
    pub prog_name: Option<String>,
}

/// The bpf filters on `ifindex`'s clsact ingress or egress hook
/// (RTM_GETTFILTER dump); none when it has no clsact qdisc.
pub fn bpf_filters(ifindex: u32, direction: Direction) -> Result<Vec<Filter>> {
    let minor = match direction {
        Direction::Ingress => TcHandle::MIN_INGRESS,
        Direction::Egress => TcHandle::MIN_EGRESS,
    };
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TcHandle {
        major: TcHandle::CLSACT.major,
        minor,
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetTrafficFilter(msg)),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);

    let netlink = |e: io::Error| anyhow!("listing tc filters over rtnetlink: {e}");
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(netlink)?;
    socket.bind_auto().map_err(netlink)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(netlink)?;
    socket.send(&buf, 0).map_err(netlink)?;

    let mut out = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full().map_err(netlink)?;
        let mut offset = 0;
        while offset < data.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| anyhow!("decoding an rtnetlink reply: {e}"))?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.code.is_none() => {}
                NetlinkPayload::Error(e) => {
                    let err = e.to_io();
                    // No clsact qdisc (or no such hook): no filters.
                    if matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
                        return Ok(out);
                    }
                    return Err(netlink(err));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(m)) => {
                    if let Some(f) = bpf_filter(&m) {
                        out.push(f);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

fn bpf_filter(m: &TcMessage) -> Option<Filter> {
    let mut is_bpf = false;
    let mut f = Filter {
        priority: (m.header.info >> 16) as u16,
        handle: u32::from(m.header.handle),
        prog_id: None,
        prog_name: None,
    };
    for attr in &m.attributes {
        match attr {
            TcAttribute::Kind(k) => is_bpf = k == "bpf",
            TcAttribute::Options(opts) => {
                for o in opts {
                    match o {
                        TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => f.prog_id = Some(*id),
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => f.prog_name = Some(n.clone()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // The dump also reports each hook's chain head without options.
    (is_bpf && f.prog_id.is_some()).then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: &str, options: Vec<TcOption>, info: u32, handle: u32) -> TcMessage {
        let mut m = TcMessage::with_index(7);
        m.header.info = info;
        m.header.handle = TcHandle::from(handle);
        m.attributes.push(TcAttribute::Kind(kind.into()));
        m.attributes.push(TcAttribute::Options(options));
        m
    }

    #[test]
    fn bpf_filters_are_read_from_dump_messages() {
        // Priority in the upper 16 bits of info, protocol (ETH_P_ALL, big
        // endian) in the lower.
        let m = message(
            "bpf",
            vec![
                TcOption::Bpf(TcFilterBpfOption::ProgName("cgacct_tc_egress".into())),
                TcOption::Bpf(TcFilterBpfOption::ProgId(42)),
            ],
            (49152 << 16) | 0x0300,
            1,
        );
        assert_eq!(
            bpf_filter(&m),
            Some(Filter {
                priority: 49152,
                handle: 1,
                prog_id: Some(42),
                prog_name: Some("cgacct_tc_egress".into()),
            })
        );
        // A chain head without a program, and filters of other kinds, are not ours.
        assert_eq!(bpf_filter(&message("bpf", vec![], 49152 << 16, 0)), None);
        assert_eq!(bpf_filter(&message("u32", vec![], 49152 << 16, 0x800)), None);
    }
}
