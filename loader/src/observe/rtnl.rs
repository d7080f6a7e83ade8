//! rtnetlink requests, through the netlink-packet-route and netlink-sys
//! crates: link dumps with each veth's peer namespace, the namespace id of
//! a process, and creating and deleting veths (for tests and benchmarks).
use std::io;

use anyhow::{Context as _, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A link of this network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `veth`, `bridge`, … when the driver says.
    pub kind: Option<String>,
    /// For a veth: the peer's ifindex, in the peer's namespace.
    pub peer_ifindex: Option<u32>,
    /// For a link whose peer is in another namespace: that namespace's id
    /// as seen from here.
    pub peer_nsid: Option<i32>,
}

pub fn link_of(m: &LinkMessage) -> Link {
    let mut l = Link {
        ifindex: m.header.index,
        name: String::new(),
        kind: None,
        peer_ifindex: None,
        peer_nsid: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Link(i) => l.peer_ifindex = Some(*i),
            LinkAttribute::LinkNetNsId(id) => l.peer_nsid = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(match k {
                            InfoKind::Veth => "veth".to_string(),
                            other => format!("{other:?}").to_ascii_lowercase(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    /// The kernel answered with an error.
    #[error("netlink request refused")]
    Refused(#[source] io::Error),
    #[error("netlink {0}")]
    Socket(&'static str, #[source] io::Error),
    #[error("parsing a netlink message: {0}")]
    Parse(String),
}

/// A request/response rtnetlink socket.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE).context("opening a NETLINK_ROUTE socket")?;
        socket.bind_auto().context("binding the netlink socket")?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .context("connecting the netlink socket")?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends one request and collects the answers until done or acknowledged.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        self.seq = self.seq.wrapping_add(1);
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = NLM_F_REQUEST | flags;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf[..]);
        self.socket
            .send(&buf, 0)
            .map_err(|e| RtnlError::Socket("send", e))?;
        let mut out = Vec::new();
        let mut rbuf = vec![0u8; 64 * 1024];
        loop {
            let n = self
                .socket
                .recv(&mut &mut rbuf[..], 0)
                .map_err(|e| RtnlError::Socket("recv", e))?;
            let mut off = 0;
            while off < n {
                let m: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(&rbuf[off..n])
                    .map_err(|e| RtnlError::Parse(e.to_string()))?;
                let len = m.header.length as usize;
                if m.header.sequence_number == self.seq {
                    match m.payload {
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(out), // the ACK
                                Some(code) => {
                                    Err(RtnlError::Refused(io::Error::from_raw_os_error(-code.get())))
                                }
                            };
                        }
                        NetlinkPayload::InnerMessage(inner) => {
                            out.push(inner);
                            // A request that is no dump has one answer.
                            if flags & NLM_F_DUMP == 0 {
                                return Ok(out);
                            }
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    /// Every link of this namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let answers = self.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a veth pair `name` <-> `peer` in this namespace (what
    /// `ip link add NAME type veth peer name PEER` does), returning once the
    /// kernel acknowledged it.
    pub fn add_veth(&mut self, name: &str, peer: &str) -> Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes.push(LinkAttribute::IfName(peer.to_string()));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
        )
        .with_context(|| format!("creating veth {name}"))?;
        Ok(())
    }

    /// Deletes the link with this index (a veth takes its peer with it).
    pub fn del_link(&mut self, ifindex: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = ifindex;
        self.request(RouteNetlinkMessage::DelLink(m), NLM_F_ACK)
            .with_context(|| format!("deleting link {ifindex}"))?;
        Ok(())
    }

    /// The id this namespace gives the network namespace of process `pid`
    /// (None when it has none, which means no link of ours points there).
    pub fn nsid_of_pid(&mut self, pid: u32) -> Result<Option<i32>> {
        let mut m = NsidMessage::default();
        m.attributes.push(NsidAttribute::Pid(pid));
        let answers = match self.request(RouteNetlinkMessage::GetNsId(m), 0) {
            Ok(a) => a,
            // The process is gone, or its namespace is.
            Err(RtnlError::Refused(e))
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ESRCH) | Some(libc::ENOENT) | Some(libc::EINVAL)
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        for a in answers {
            if let RouteNetlinkMessage::NewNsId(m) = a {
                for attr in m.attributes {
                    if let NsidAttribute::Id(id) = attr {
                        return Ok((id >= 0).then_some(id));
                    }
                }
            }
        }
        Ok(None)
    }
}
