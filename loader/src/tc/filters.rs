//! What is attached at TC: clsact bpf filters (read over rtnetlink), clsact
//! markers under `links/tc`, and cgacct's programs on an interface.
use std::{fs, io, os::fd::AsFd as _, path::Path};

use anyhow::{anyhow, Context as _, Result};
use aya::programs::SchedClassifier;
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::attach::attach_type;
use crate::{
    bpffs::names::{self, Direction, Pins},
    sys::{
        self,
        bpf::{LinkState, LinkTarget, ObjectKind},
    },
};

/// What the clsact marker at `pin` (under `links/tc`, pinning program
/// `prog_id`) holds, for `observe`: its program and whether its filter is
/// in place.
pub fn marker_state(
    pins: &Pins,
    pin: &Path,
    prog_id: u32,
    ifindex_of: impl Fn(&str) -> Option<u32>,
) -> Result<LinkState> {
    let mut attached = false;
    if let Some((name, direction)) = hook_of(pins, pin) {
        if let Some(ifindex) = ifindex_of(&name) {
            attached = bpf_filters(ifindex, direction)?
                .iter()
                .any(|f| f.prog_id == Some(prog_id));
        }
    }
    Ok(LinkState {
        id: 0,
        prog_id,
        target: LinkTarget::Clsact { attached },
    })
}

/// The program id of a clsact marker at `pin`; None for anything else.
pub(super) fn marker_program(pin: &Path) -> Result<Option<u32>> {
    let fd = sys::bpf::obj_get(pin).with_context(|| format!("opening pin {}", pin.display()))?;
    match sys::bpf::fd_kind(fd.as_fd())? {
        ObjectKind::Program => {
            Ok(Some(sys::bpf::prog_id(fd.as_fd()).with_context(|| {
                format!("reading pinned program {}", pin.display())
            })?))
        }
        _ => Ok(None),
    }
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
    let has_tcx = sys::bpf::probe_tcx().context("probing the kernel for TCX")?;
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
pub(super) fn ifindex(interface: &str) -> Result<Option<u32>> {
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
pub(super) fn hook_of(pins: &Pins, pin: &Path) -> Option<(String, Direction)> {
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

    // One socket per thread for every dump: an observe of a thousand
    // clsact interfaces makes two thousand. A socket is kept only after a
    // dump read to its end, so no reply of one dump is read by the next.
    thread_local! {
        static SOCKET: std::cell::RefCell<Option<Socket>> = const { std::cell::RefCell::new(None) };
    }
    let socket = match SOCKET.with_borrow_mut(Option::take) {
        Some(socket) => socket,
        None => {
            let mut socket = Socket::new(NETLINK_ROUTE).map_err(netlink)?;
            socket.bind_auto().map_err(netlink)?;
            socket.connect(&SocketAddr::new(0, 0)).map_err(netlink)?;
            socket
        }
    };
    socket.send(&buf, 0).map_err(netlink)?;
    let (out, ended) = read_dump(&socket)?;
    if ended {
        SOCKET.set(Some(socket));
    }
    Ok(out)
}

/// The bpf filters of one dump's replies on `socket`, and whether the
/// dump was read to its end.
fn read_dump(socket: &Socket) -> Result<(Vec<Filter>, bool)> {
    let mut out = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full().map_err(netlink)?;
        let mut offset = 0;
        while offset < data.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| anyhow!("decoding an rtnetlink reply: {e}"))?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok((out, offset + len >= data.len())),
                NetlinkPayload::Error(e) if e.code.is_none() => {}
                NetlinkPayload::Error(e) => {
                    let err = e.to_io();
                    // No clsact qdisc (or no such hook): no filters.
                    if matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
                        return Ok((out, offset + len >= data.len()));
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

fn netlink(e: io::Error) -> anyhow::Error {
    anyhow!("listing tc filters over rtnetlink: {e}")
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
