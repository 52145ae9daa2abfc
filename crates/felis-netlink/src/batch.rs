//! [`RouteWriter`]: many route changes per `sendmsg`, with the kernel's answer for each.
//!
//! rtnetlink requests are processed by the kernel inside the `sendmsg(2)` that carries them, in
//! order, so a buffer of a couple of thousand `RTM_NEWROUTE`/`RTM_DELROUTE` messages costs one
//! system call instead of one round trip each. Only the last message of a buffer asks for an
//! acknowledgement (`NLM_F_ACK`); the kernel answers every failed message anyway, so reading the
//! socket until the last message's answer gives each route's result:
//!
//! ```text
//!  sendmsg [ NEW seq=s | NEW seq=s+1 | DEL seq=s+2 | ... | NEW seq=s+n ACK ]   (≤ 128 KiB)
//!  recv    [ ERROR seq=s+1 errno=EEXIST ] [ ERROR seq=s+n errno=0 ]          (failures + last)
//! ```
//!
//! `NETLINK_CAP_ACK` keeps error answers to a header (no echo of the request), and the receive
//! buffer is raised so the answers of a whole buffer fit even when every message fails.
//!
//! The socket is synchronous: run a writer on a blocking thread (`spawn_blocking`) or a thread
//! of its own. [`RouteWriter::dump`] streams a table without collecting it, filtered by the
//! kernel (strict checking) on protocol and table, so counting or reconciling a million routes
//! never holds a million [`Route`]s.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::NLM_F_ACK;
use netlink_packet_core::NLM_F_CREATE;
use netlink_packet_core::NLM_F_DUMP;
use netlink_packet_core::NLM_F_EXCL;
use netlink_packet_core::NLM_F_REPLACE;
use netlink_packet_core::NLM_F_REQUEST;
use netlink_packet_core::NetlinkHeader;
use netlink_packet_core::NetlinkMessage;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_sys::Socket;
use netlink_sys::SocketAddr;
use netlink_sys::protocols::NETLINK_ROUTE;

use crate::error::Error;
use crate::error::Result;
use crate::handle::route_from_message;
use crate::handle::route_to_message;
use crate::netns::Netns;
use crate::types::Route;
use crate::types::RouteFilter;

/// Largest request buffer handed to one `sendmsg` (the kernel refuses more than its socket
/// send buffer, 208 KiB by default).
const SEND_BUFFER: usize = 128 * 1024;
/// Receive buffer asked for (the kernel caps it at `net.core.rmem_max` and doubles it).
const RECEIVE_BUFFER: usize = 4 * 1024 * 1024;
/// Most messages per `sendmsg`, so every answer of a buffer fits in the receive buffer.
const MAX_MESSAGES: usize = 2048;
/// `NLMSG_ERROR` / `NLMSG_DONE`.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `struct nlmsghdr` is 16 bytes; an error answer adds a 4-byte errno.
const HEADER_LEN: usize = 16;

/// One change in a [`RouteWriter::write`] batch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteOp {
    /// `ip route add`: create, failing with `EEXIST` if the kernel has a route for the same
    /// destination, table, TOS and metric (whoever installed it).
    Add(Route),
    /// `ip route replace`: create, or replace the route with the same destination, table, TOS
    /// and metric (`NLM_F_CREATE | NLM_F_REPLACE`).
    Replace(Route),
    /// `ip route del`: the route's protocol, when set, must match (the kernel compares it), so
    /// deleting with one's own protocol never removes another owner's route.
    Delete(Route),
}

impl RouteOp {
    /// The route the change is about.
    pub fn route(&self) -> &Route {
        match self {
            RouteOp::Add(r) | RouteOp::Replace(r) | RouteOp::Delete(r) => r,
        }
    }

    fn verb(&self) -> &'static str {
        match self {
            RouteOp::Add(_) => "add",
            RouteOp::Replace(_) => "replace",
            RouteOp::Delete(_) => "delete",
        }
    }
}

/// A change of a batch the kernel refused.
#[derive(Debug)]
pub struct RouteOpFailure {
    /// Its position in the slice given to [`RouteWriter::write`].
    pub index: usize,
    /// The kernel's answer (`raw_os_error()` is the errno).
    pub error: io::Error,
}

impl RouteOpFailure {
    /// The errno.
    pub fn errno(&self) -> Option<i32> {
        self.error.raw_os_error()
    }

    /// True when a delete found nothing (`ENOENT`/`ESRCH`): the route is already gone.
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(2 | 3))
    }

    /// True when an add found a route already there (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(17)
    }
}

/// What one [`RouteWriter::write`] did.
#[derive(Debug, Default)]
pub struct WriteReport {
    /// Changes the kernel refused, by position; every other change was applied.
    pub failures: Vec<RouteOpFailure>,
    /// `sendmsg` calls made.
    pub sends: usize,
}

/// A synchronous rtnetlink socket in one namespace that writes routes in batches.
pub struct RouteWriter {
    socket: Socket,
    netns: String,
    seq: u32,
    send: Vec<u8>,
    receive: Vec<u8>,
}

impl std::fmt::Debug for RouteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteWriter")
            .field("netns", &self.netns)
            .finish()
    }
}

impl RouteWriter {
    /// A writer on the namespace `netns` (the socket is opened on a throwaway thread inside it).
    pub fn open(netns: &Netns) -> Result<RouteWriter> {
        let describe = netns.describe();
        let socket = netns.run(open_socket)?.map_err(|source| Error::Connect {
            netns: describe.clone(),
            source,
        })?;
        Ok(RouteWriter {
            socket,
            netns: describe,
            seq: 1,
            send: Vec::with_capacity(SEND_BUFFER + 4096),
            receive: Vec::with_capacity(64 * 1024),
        })
    }

    /// A writer on the calling thread's namespace.
    pub fn current() -> Result<RouteWriter> {
        RouteWriter::open(&Netns::current()?)
    }

    /// Applies `ops` in order, as few `sendmsg` calls as fit, and reports what the kernel
    /// refused. `Err` only when the socket itself failed (then some changes may be applied and
    /// others not: list the table to find out).
    pub fn write(&mut self, ops: &[RouteOp]) -> Result<WriteReport> {
        let mut report = WriteReport::default();
        let mut start = 0;
        while start < ops.len() {
            self.send.clear();
            let base = self.seq;
            let mut end = start;
            while end < ops.len() && end - start < MAX_MESSAGES && self.send.len() < SEND_BUFFER {
                let op = &ops[end];
                let is_last = end + 1 == ops.len()
                    || end + 1 - start == MAX_MESSAGES
                    || self.send.len() + 512 >= SEND_BUFFER;
                let message = route_to_message(op.route())?;
                let (payload, mut flags) = match op {
                    RouteOp::Add(_) => (
                        RouteNetlinkMessage::NewRoute(message),
                        NLM_F_CREATE | NLM_F_EXCL,
                    ),
                    RouteOp::Replace(_) => (
                        RouteNetlinkMessage::NewRoute(message),
                        NLM_F_CREATE | NLM_F_REPLACE,
                    ),
                    RouteOp::Delete(_) => (RouteNetlinkMessage::DelRoute(message), 0),
                };
                flags |= NLM_F_REQUEST;
                if is_last {
                    flags |= NLM_F_ACK;
                }
                let seq = base.wrapping_add((end - start) as u32);
                append(&mut self.send, payload, flags, seq);
                end += 1;
                if is_last {
                    break;
                }
            }
            self.seq = base.wrapping_add((end - start) as u32);
            self.socket
                .send(&self.send, 0)
                .map_err(|source| self.failed("send", ops[start].verb(), source))?;
            report.sends += 1;
            let last = base.wrapping_add((end - start - 1) as u32);
            self.collect_answers(base, last, start, &mut report.failures, ops)?;
            start = end;
        }
        Ok(report)
    }

    /// Reads answers until the one for `last`; records failures (by position) on the way.
    fn collect_answers(
        &mut self,
        base: u32,
        last: u32,
        offset: usize,
        failures: &mut Vec<RouteOpFailure>,
        ops: &[RouteOp],
    ) -> Result<()> {
        loop {
            self.receive.clear();
            self.receive.reserve(64 * 1024);
            let socket = &self.socket;
            let read = socket
                .recv(&mut self.receive, 0)
                .map_err(|source| self.failed("read answers to", "route batch", source))?;
            let mut at = 0;
            let mut done = false;
            let data = &self.receive[..read.min(self.receive.len())];
            while let Some(header) = data.get(at..at + HEADER_LEN) {
                let length = u32_at(header, 0) as usize;
                let kind = u16::from_ne_bytes([header[4], header[5]]);
                let seq = u32_at(header, 8);
                if length < HEADER_LEN {
                    break;
                }
                if kind == NLMSG_ERROR {
                    let code = data
                        .get(at + HEADER_LEN..at + HEADER_LEN + 4)
                        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    let index = seq.wrapping_sub(base) as usize;
                    if code != 0 && offset + index < ops.len() {
                        failures.push(RouteOpFailure {
                            index: offset + index,
                            error: io::Error::from_raw_os_error(-code),
                        });
                    }
                    if seq == last {
                        done = true;
                    }
                }
                at += (length + 3) & !3;
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Streams the routes matching `filter` to `each`, without collecting them. The kernel
    /// filters on protocol, table and output interface (strict dump checking); the address
    /// family is one of `filter.ipv6` (both when `None`).
    pub fn dump(&mut self, filter: RouteFilter, mut each: impl FnMut(Route)) -> Result<()> {
        let families: &[AddressFamily] = match filter.ipv6 {
            Some(true) => &[AddressFamily::Inet6],
            Some(false) => &[AddressFamily::Inet],
            None => &[AddressFamily::Inet, AddressFamily::Inet6],
        };
        for family in families {
            let mut message = RouteMessage::default();
            message.header.address_family = *family;
            if let Some(protocol) = filter.protocol {
                message.header.protocol = protocol.0.into();
            }
            if let Some(table) = filter.table {
                if let Ok(t) = u8::try_from(table) {
                    message.header.table = t;
                }
                message
                    .attributes
                    .push(netlink_packet_route::route::RouteAttribute::Table(table));
            }
            if let Some(index) = filter.ifindex {
                message
                    .attributes
                    .push(netlink_packet_route::route::RouteAttribute::Oif(index.0));
            }
            self.send.clear();
            let seq = self.seq;
            self.seq = self.seq.wrapping_add(1);
            append(
                &mut self.send,
                RouteNetlinkMessage::GetRoute(message),
                NLM_F_REQUEST | NLM_F_DUMP,
                seq,
            );
            self.socket
                .send(&self.send, 0)
                .map_err(|source| self.failed("send", "route dump", source))?;
            self.read_dump(seq, &filter, &mut each)?;
        }
        Ok(())
    }

    fn read_dump(
        &mut self,
        seq: u32,
        filter: &RouteFilter,
        each: &mut impl FnMut(Route),
    ) -> Result<()> {
        loop {
            self.receive.clear();
            self.receive.reserve(256 * 1024);
            let socket = &self.socket;
            let read = socket
                .recv(&mut self.receive, 0)
                .map_err(|source| self.failed("read", "route dump", source))?;
            let data = &self.receive[..read.min(self.receive.len())];
            let mut at = 0;
            while let Some(header) = data.get(at..at + HEADER_LEN) {
                let length = u32_at(header, 0) as usize;
                let kind = u16::from_ne_bytes([header[4], header[5]]);
                if length < HEADER_LEN || at + length > data.len() {
                    break;
                }
                let answer_seq = u32_at(header, 8);
                if answer_seq == seq {
                    match kind {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => {
                            let code = data
                                .get(at + HEADER_LEN..at + HEADER_LEN + 4)
                                .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                            if code != 0 {
                                return Err(self.failed(
                                    "dump",
                                    "routes",
                                    io::Error::from_raw_os_error(-code),
                                ));
                            }
                            return Ok(());
                        }
                        _ => {
                            let bytes = &data[at..at + length];
                            if let Ok(message) =
                                NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                                && let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(
                                    route,
                                )) = message.payload
                                && let Some(route) = route_from_message(&route)
                                && filter.protocol.is_none_or(|p| route.protocol == p)
                                && filter.table.is_none_or(|t| route.table == t)
                                && filter.ifindex.is_none_or(|i| route.ifindex == Some(i))
                            {
                                each(route);
                            }
                        }
                    }
                }
                at += (length + 3) & !3;
            }
        }
    }

    /// The route the kernel would use toward `addr` (`ip route get ADDR fibmatch`): `None` when
    /// nothing forwards there (no route, or a blackhole, unreachable or prohibit route).
    pub fn lookup(&mut self, addr: IpAddr) -> Result<Option<Route>> {
        let message = crate::handle::fib_match_request(addr)?;
        self.send.clear();
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        append(
            &mut self.send,
            RouteNetlinkMessage::GetRoute(message),
            NLM_F_REQUEST,
            seq,
        );
        let what = format!("route to {addr}");
        self.socket
            .send(&self.send, 0)
            .map_err(|source| self.failed("look up", &what, source))?;
        loop {
            self.receive.clear();
            self.receive.reserve(64 * 1024);
            let socket = &self.socket;
            let read = socket
                .recv(&mut self.receive, 0)
                .map_err(|source| self.failed("look up", &what, source))?;
            let data = &self.receive[..read.min(self.receive.len())];
            let mut at = 0;
            while let Some(header) = data.get(at..at + HEADER_LEN) {
                let length = u32_at(header, 0) as usize;
                let kind = u16::from_ne_bytes([header[4], header[5]]);
                if length < HEADER_LEN || at + length > data.len() {
                    break;
                }
                if u32_at(header, 8) == seq {
                    if kind == NLMSG_ERROR {
                        let code = data
                            .get(at + HEADER_LEN..at + HEADER_LEN + 4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        // ENETUNREACH / EHOSTUNREACH / ENOENT / ESRCH: no route at all.
                        // EINVAL: a blackhole, unreachable or prohibit route covers it.
                        return match -code {
                            0 | 2 | 3 | 22 | 101 | 113 => Ok(None),
                            errno => Err(self.failed(
                                "look up",
                                &what,
                                io::Error::from_raw_os_error(errno),
                            )),
                        };
                    }
                    let bytes = &data[at..at + length];
                    if let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                        && let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) =
                            message.payload
                    {
                        return Ok(route_from_message(&route));
                    }
                    return Ok(None);
                }
                at += (length + 3) & !3;
            }
        }
    }

    /// How many routes match `filter` (a streamed dump: nothing is collected).
    pub fn count(&mut self, filter: RouteFilter) -> Result<usize> {
        let mut n = 0;
        self.dump(filter, |_| n += 1)?;
        Ok(n)
    }

    fn failed(&self, op: &'static str, what: &str, source: io::Error) -> Error {
        Error::Request {
            op,
            object: format!("{what} in network namespace {}", self.netns),
            source,
        }
    }
}

fn open_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // Error answers carry only the request's header, not the whole request.
    socket.set_cap_ack(true)?;
    socket.set_ext_ack(false)?;
    // Dumps filtered by the kernel on protocol and table.
    socket.set_netlink_get_strict_chk(true)?;
    // Best effort: capped by net.core.rmem_max; a smaller buffer only risks ENOBUFS when
    // thousands of changes fail at once, which `write` reports as an error.
    let _ = socket.set_rx_buf_sz(RECEIVE_BUFFER as i32);
    Ok(socket)
}

fn append(buffer: &mut Vec<u8>, payload: RouteNetlinkMessage, flags: u16, seq: u32) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    message.finalize();
    let at = buffer.len();
    buffer.resize(at + message.buffer_len(), 0);
    message.serialize(&mut buffer[at..]);
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}
