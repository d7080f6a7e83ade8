//! Link events of this network namespace (rtnetlink, RTMGRP_LINK), for the
//! watcher.
use std::{io, os::fd::AsRawFd as _};

use anyhow::{bail, Context as _, Result};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::observe::rtnl::{link_of, Link};

/// `RTMGRP_LINK` from linux/rtnetlink.h.
const RTMGRP_LINK: u32 = 1;

/// A link appeared or changed, or went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    New(Link),
    Del(Link),
    /// Events were lost (the socket's buffer overflowed): look at everything again.
    Overflow,
}

/// A socket subscribed to link events of this namespace.
pub struct LinkEvents {
    socket: Socket,
    buf: Vec<u8>,
}

impl LinkEvents {
    pub fn open() -> Result<LinkEvents> {
        let mut socket = Socket::new(NETLINK_ROUTE).context("opening a NETLINK_ROUTE socket")?;
        socket
            .bind(&SocketAddr::new(0, RTMGRP_LINK))
            .context("subscribing to link events (RTMGRP_LINK)")?;
        socket.set_non_blocking(true)?;
        let _ = socket.set_rx_buf_sz(4 * 1024 * 1024);
        Ok(LinkEvents {
            socket,
            buf: vec![0; 256 * 1024],
        })
    }

    pub fn raw_fd(&self) -> i32 {
        self.socket.as_raw_fd()
    }

    /// Every event queued now, without waiting.
    pub fn drain(&mut self) -> Result<Vec<LinkEvent>> {
        let mut out = Vec::new();
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    out.push(LinkEvent::Overflow);
                    continue;
                }
                Err(e) => bail!("reading link events: {e}"),
            };
            let mut off = 0;
            while off < n {
                let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n]) else {
                    break;
                };
                let len = m.header.length as usize;
                if let NetlinkPayload::InnerMessage(inner) = m.payload {
                    match inner {
                        RouteNetlinkMessage::NewLink(l) => out.push(LinkEvent::New(link_of(&l))),
                        RouteNetlinkMessage::DelLink(l) => out.push(LinkEvent::Del(link_of(&l))),
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
}
