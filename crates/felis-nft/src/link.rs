//! Device groups of workload interfaces over rtnetlink (`NETLINK_ROUTE`): the key the policy
//! dispatch maps are looked up by (`meta iifgroup` / `oifgroup`, see [`crate::render`]).
//!
//! Setting a group is one `RTM_NEWLINK` per interface, by name (`ip link set caliX group N`);
//! a batch of them goes out in one `sendmsg`. Reading them is one `RTM_GETLINK` dump.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_ROUTE;

use crate::error::Error;
use crate::netlink::open_socket;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_IFNAME: u16 = 3;
const IFLA_GROUP: u16 = 27;
const ENODEV: i32 = 19;
/// `nlmsghdr` plus `ifinfomsg`.
const HEADERS: usize = 32;
/// Messages per `sendmsg`.
const CHUNK: usize = 512;

/// A route-netlink socket in the network namespace it was opened in.
#[derive(Debug)]
pub struct LinkSession {
    socket: Socket,
    seq: u32,
    buffer: Vec<u8>,
}

impl LinkSession {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<LinkSession, Error> {
        Ok(LinkSession {
            socket: open_socket(NETLINK_ROUTE)?,
            seq: 1,
            buffer: Vec::with_capacity(64 * 1024),
        })
    }

    /// Sets the device group of each interface; returns the names of those that do not exist.
    pub fn set_groups(&mut self, links: &[(String, u32)]) -> Result<Vec<String>, Error> {
        let mut missing = Vec::new();
        for chunk in links.chunks(CHUNK) {
            let first = self.seq;
            let mut bytes = Vec::with_capacity(chunk.len() * 64);
            for (ifname, group) in chunk {
                let start = bytes.len();
                header(&mut bytes, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, self.seq);
                let mut name = ifname.as_bytes().to_vec();
                name.push(0);
                attr(&mut bytes, IFLA_IFNAME, &name);
                attr(&mut bytes, IFLA_GROUP, &group.to_ne_bytes());
                patch_length(&mut bytes, start);
                self.seq = self.seq.wrapping_add(1);
            }
            self.send(&bytes)?;
            let mut pending = chunk.len();
            let mut errors = Vec::new();
            self.receive(|message_type, body, seq| {
                if message_type != NLMSG_ERROR {
                    return false;
                }
                let Some(index) = seq
                    .checked_sub(first)
                    .and_then(|i| usize::try_from(i).ok())
                    .filter(|i| *i < chunk.len())
                else {
                    return false;
                };
                pending -= 1;
                let errno = parse_error(body).unwrap_or(0);
                let ifname = &chunk[index].0;
                match errno {
                    0 => {}
                    ENODEV => missing.push(ifname.clone()),
                    errno => errors.push(format!(
                        "setting the group of {ifname}: {}",
                        std::io::Error::from_raw_os_error(errno)
                    )),
                }
                pending == 0
            })?;
            if !errors.is_empty() {
                return Err(Error::Refused(errors.join("; ")));
            }
        }
        Ok(missing)
    }

    /// Every interface whose name starts with `prefix`, with its device group.
    pub fn groups(&mut self, prefix: &str) -> Result<BTreeMap<String, u32>, Error> {
        let mut bytes = Vec::with_capacity(HEADERS);
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        header(&mut bytes, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq);
        patch_length(&mut bytes, 0);
        self.send(&bytes)?;
        let mut links = BTreeMap::new();
        let mut failure = None;
        self.receive(|message_type, body, reply_seq| {
            if reply_seq != seq {
                return false;
            }
            match message_type {
                NLMSG_DONE => true,
                NLMSG_ERROR => {
                    if let Some(reply) = parse_error(body) {
                        failure = Some(reply);
                    }
                    true
                }
                RTM_NEWLINK => {
                    let (mut name, mut group) = (None, 0);
                    for (kind, value) in attributes(body.get(HEADERS - 16..).unwrap_or(&[])) {
                        match kind {
                            IFLA_IFNAME => {
                                let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
                                name = Some(String::from_utf8_lossy(&value[..end]).into_owned());
                            }
                            IFLA_GROUP => {
                                group = value
                                    .get(..4)
                                    .and_then(|b| b.try_into().ok())
                                    .map_or(0, u32::from_ne_bytes);
                            }
                            _ => {}
                        }
                    }
                    if let Some(name) = name.filter(|n| n.starts_with(prefix)) {
                        links.insert(name, group);
                    }
                    false
                }
                _ => false,
            }
        })?;
        match failure {
            Some(errno) if errno != 0 => {
                Err(Error::Netlink(std::io::Error::from_raw_os_error(errno)))
            }
            _ => Ok(links),
        }
    }

    fn send(&self, bytes: &[u8]) -> Result<(), Error> {
        let sent = self.socket.send(bytes, 0).map_err(Error::Netlink)?;
        if sent != bytes.len() {
            return Err(Error::Netlink(std::io::Error::other(format!(
                "sent {sent} of {} bytes",
                bytes.len()
            ))));
        }
        Ok(())
    }

    /// Reads replies, handing each message (type, body after the header, sequence number) to
    /// `each` until it returns `true`.
    fn receive(&mut self, mut each: impl FnMut(u16, &[u8], u32) -> bool) -> Result<(), Error> {
        #[allow(clippy::disallowed_methods)] // a kernel reply deadline needs the real clock
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            self.buffer.clear();
            match self.socket.recv(&mut self.buffer, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    #[allow(clippy::disallowed_methods)]
                    if Instant::now() > deadline {
                        return Err(Error::Netlink(std::io::Error::other(
                            "rtnetlink replies never came",
                        )));
                    }
                    std::thread::sleep(Duration::from_micros(20));
                    continue;
                }
                Err(e) => return Err(Error::Netlink(e)),
            }
            let mut at = 0;
            while at + 16 <= self.buffer.len() {
                let length = u32_at(&self.buffer, at) as usize;
                if length < 16 || at + length > self.buffer.len() {
                    break;
                }
                let message_type = u16::from_ne_bytes([self.buffer[at + 4], self.buffer[at + 5]]);
                let seq = u32_at(&self.buffer, at + 8);
                if each(message_type, &self.buffer[at + 16..at + length], seq) {
                    return Ok(());
                }
                at += (length + 3) & !3;
            }
        }
    }
}

/// The errno of an `NLMSG_ERROR` body (0: an ack), positive.
fn parse_error(body: &[u8]) -> Option<i32> {
    body.get(..4)
        .and_then(|b| b.try_into().ok())
        .map(|b| -i32::from_ne_bytes(b))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

/// `nlmsghdr` (length patched later) and an empty `ifinfomsg`.
fn header(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32) {
    out.extend(0u32.to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend(flags.to_ne_bytes());
    out.extend(seq.to_ne_bytes());
    out.extend(0u32.to_ne_bytes());
    out.extend([0u8; 16]);
}

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let length = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
    out.extend(length.to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend(payload);
    out.resize((out.len() + 3) & !3, 0);
}

fn patch_length(out: &mut [u8], start: usize) {
    let length = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&length.to_ne_bytes());
}

/// The attributes (type, value) of a message body after its fixed header.
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let length = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & 0x3fff;
        if length < 4 || length > bytes.len() {
            return None;
        }
        let value = &bytes[4..length];
        bytes = bytes.get((length + 3) & !3..).unwrap_or(&[]);
        Some((kind, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_walk_aligned_tlvs() {
        let mut body = Vec::new();
        attr(&mut body, IFLA_IFNAME, b"cali1\0");
        attr(&mut body, IFLA_GROUP, &7u32.to_ne_bytes());
        let found: Vec<(u16, Vec<u8>)> = attributes(&body).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(
            found,
            [
                (IFLA_IFNAME, b"cali1\0".to_vec()),
                (IFLA_GROUP, 7u32.to_ne_bytes().to_vec())
            ]
        );
    }
}
