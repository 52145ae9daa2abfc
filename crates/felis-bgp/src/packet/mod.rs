//! BGP-4 wire codec (RFC 4271, 4760, 6793, 2918, 4724, 4456, 1997, 7606).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  Marker (16 octets of 0xff)                   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Length (19..=4096)   |      Type     |   Body ...
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Decoding never panics and never indexes unchecked: every read goes through a bounds-checked `Reader`.
//! UPDATEs can be read without allocating per prefix through [`update::UpdateView`], whose
//! NLRI iterators walk the validated wire bytes.

mod captured;
pub mod notification;
pub mod open;
pub mod update;

use std::net::Ipv4Addr;
use std::net::Ipv6Addr;

use ipnet::Ipv4Net;
use ipnet::Ipv6Net;
use serde::Deserialize;
use serde::Serialize;

use crate::error::DecodeError;
use crate::error::EncodeError;
use crate::packet::notification::Notification;
use crate::packet::open::Open;
use crate::packet::update::Update;

/// Length of the fixed message header.
pub const HEADER_LEN: usize = 19;
/// Largest BGP message (RFC 4271 §4; extended messages of RFC 8654 are not negotiated).
pub const MAX_MESSAGE_LEN: usize = 4096;

/// An autonomous system number (4-octet capable, RFC 6793).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Asn(pub u32);

impl Asn {
    /// AS_TRANS (RFC 6793): stands in for a 4-octet ASN in 2-octet fields.
    pub const TRANS: Asn = Asn(23456);
}

impl std::fmt::Display for Asn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An address family / subsequent address family pair (RFC 4760).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Family {
    /// Address family identifier (1 = IPv4, 2 = IPv6).
    pub afi: u16,
    /// Subsequent address family identifier (1 = unicast).
    pub safi: u8,
}

impl Family {
    /// IPv4 unicast.
    pub const IPV4_UNICAST: Family = Family { afi: 1, safi: 1 };
    /// IPv6 unicast.
    pub const IPV6_UNICAST: Family = Family { afi: 2, safi: 1 };
}

/// Parameters negotiated in the OPEN exchange that change how UPDATEs are read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CodecOptions {
    /// Both sides advertised the 4-octet AS capability (RFC 6793): AS_PATH carries 4-octet ASNs.
    pub four_octet_asn: bool,
}

impl CodecOptions {
    /// Options used when both sides speak 4-octet ASNs (every modern peer).
    pub const FOUR_OCTET: CodecOptions = CodecOptions {
        four_octet_asn: true,
    };
}

/// One BGP message.
#[allow(
    clippy::large_enum_variant,
    reason = "messages are transient; boxing UPDATE would cost an allocation per message"
)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// OPEN (type 1).
    Open(Open),
    /// UPDATE (type 2).
    Update(Update),
    /// NOTIFICATION (type 3).
    Notification(Notification),
    /// KEEPALIVE (type 4).
    Keepalive,
    /// ROUTE-REFRESH (type 5, RFC 2918).
    RouteRefresh(RouteRefresh),
}

/// Message type codes.
pub mod message_type {
    /// OPEN.
    pub const OPEN: u8 = 1;
    /// UPDATE.
    pub const UPDATE: u8 = 2;
    /// NOTIFICATION.
    pub const NOTIFICATION: u8 = 3;
    /// KEEPALIVE.
    pub const KEEPALIVE: u8 = 4;
    /// ROUTE-REFRESH.
    pub const ROUTE_REFRESH: u8 = 5;
}

/// A ROUTE-REFRESH request (RFC 2918; subtype from RFC 7313, 0 = normal request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRefresh {
    /// The family to re-send.
    pub family: Family,
    /// Subtype (0 normal, 1 BoRR, 2 EoRR).
    pub subtype: u8,
}

/// Checks a message header at the start of `buf`.
///
/// Returns `Ok(Some((len, type)))` when a whole message of `len` octets is in `buf`,
/// `Ok(None)` when more bytes are needed, and an error for a bad marker or length.
pub fn frame(buf: &[u8]) -> Result<Option<(usize, u8)>, DecodeError> {
    let mut r = Reader::new(buf);
    let Some(marker) = r.take(16) else {
        return Ok(None);
    };
    if marker.iter().any(|b| *b != 0xff) {
        return Err(DecodeError::ConnectionNotSynchronized);
    }
    let (Some(len), Some(kind)) = (r.u16(), r.u8()) else {
        return Ok(None);
    };
    let min = match kind {
        message_type::OPEN => 29,
        message_type::UPDATE => 23,
        message_type::NOTIFICATION => 21,
        message_type::KEEPALIVE => 19,
        message_type::ROUTE_REFRESH => 23,
        other => return Err(DecodeError::BadMessageType(other)),
    };
    let ulen = usize::from(len);
    // RFC 4271 §6.1: KEEPALIVE must be exactly 19 octets; ROUTE-REFRESH exactly 23 (RFC 2918).
    let exact = matches!(kind, message_type::KEEPALIVE | message_type::ROUTE_REFRESH);
    if ulen < min || ulen > MAX_MESSAGE_LEN || (exact && ulen != min) {
        return Err(DecodeError::BadMessageLength(len));
    }
    if buf.len() < ulen {
        return Ok(None);
    }
    Ok(Some((ulen, kind)))
}

impl Message {
    /// Decodes one whole message (header included) from `buf`, which must hold exactly it.
    pub fn decode(buf: &[u8], opts: &CodecOptions) -> Result<Message, DecodeError> {
        let Some((len, kind)) = frame(buf)? else {
            return Err(DecodeError::MalformedMessage("truncated"));
        };
        if len != buf.len() {
            return Err(DecodeError::BadMessageLength(
                u16::try_from(buf.len()).unwrap_or(0),
            ));
        }
        let body = buf.get(HEADER_LEN..).unwrap_or_default();
        Message::decode_body(kind, body, opts)
    }

    /// Decodes a message body of type `kind` (the bytes after the 19-octet header).
    pub fn decode_body(kind: u8, body: &[u8], opts: &CodecOptions) -> Result<Message, DecodeError> {
        match kind {
            message_type::OPEN => Ok(Message::Open(Open::decode(body)?)),
            message_type::UPDATE => Ok(Message::Update(Update::decode(body, opts)?)),
            message_type::NOTIFICATION => Ok(Message::Notification(Notification::decode(body)?)),
            message_type::KEEPALIVE => {
                if body.is_empty() {
                    Ok(Message::Keepalive)
                } else {
                    Err(DecodeError::BadMessageLength(body_len(body)))
                }
            }
            message_type::ROUTE_REFRESH => {
                let mut r = Reader::new(body);
                let (Some(afi), Some(subtype), Some(safi)) = (r.u16(), r.u8(), r.u8()) else {
                    return Err(DecodeError::BadMessageLength(body_len(body)));
                };
                if !r.is_empty() {
                    return Err(DecodeError::BadMessageLength(body_len(body)));
                }
                Ok(Message::RouteRefresh(RouteRefresh {
                    family: Family { afi, safi },
                    subtype,
                }))
            }
            other => Err(DecodeError::BadMessageType(other)),
        }
    }

    /// The message's type code.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Open(_) => message_type::OPEN,
            Message::Update(_) => message_type::UPDATE,
            Message::Notification(_) => message_type::NOTIFICATION,
            Message::Keepalive => message_type::KEEPALIVE,
            Message::RouteRefresh(_) => message_type::ROUTE_REFRESH,
        }
    }

    /// Appends the encoded message (header included) to `out`.
    pub fn encode(&self, opts: &CodecOptions, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        out.extend_from_slice(&[0xff; 16]);
        out.extend_from_slice(&[0, 0, self.kind()]);
        match self {
            Message::Open(open) => open.encode_body(out)?,
            Message::Update(update) => update.encode_body(opts, out)?,
            Message::Notification(n) => n.encode_body(out),
            Message::Keepalive => {}
            Message::RouteRefresh(rr) => {
                out.extend_from_slice(&rr.family.afi.to_be_bytes());
                out.push(rr.subtype);
                out.push(rr.family.safi);
            }
        }
        let len = out.len() - start;
        if len > MAX_MESSAGE_LEN {
            out.truncate(start);
            return Err(EncodeError::TooLong {
                message: self.name(),
                len,
            });
        }
        let len16 = u16::try_from(len).map_err(|_| EncodeError::FieldTooLong("length"))?;
        if let Some(field) = out.get_mut(start + 16..start + 18) {
            field.copy_from_slice(&len16.to_be_bytes());
        }
        Ok(())
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self, opts: &CodecOptions) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(opts, &mut out)?;
        Ok(out)
    }

    /// Upper-case name of the message type, as in the RFCs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Open(_) => "OPEN",
            Message::Update(_) => "UPDATE",
            Message::Notification(_) => "NOTIFICATION",
            Message::Keepalive => "KEEPALIVE",
            Message::RouteRefresh(_) => "ROUTE-REFRESH",
        }
    }
}

fn body_len(body: &[u8]) -> u16 {
    u16::try_from(body.len() + HEADER_LEN).unwrap_or(u16::MAX)
}

/// A bounds-checked cursor over wire bytes. Every getter returns `None` past the end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (first, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(*first)
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.buf.split_at_checked(n)?;
        self.buf = tail;
        Some(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let bytes = self.take(N)?;
        bytes.try_into().ok()
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn ipv4(&mut self) -> Option<Ipv4Addr> {
        self.array::<4>().map(Ipv4Addr::from)
    }

    pub(crate) fn ipv6(&mut self) -> Option<Ipv6Addr> {
        self.array::<16>().map(Ipv6Addr::from)
    }
}

/// Checks that `buf` is a well-formed sequence of prefixes of at most `max_len` bits
/// (RFC 4271 §4.3 encoding) and returns how many there are.
pub(crate) fn validate_prefixes(buf: &[u8], max_len: u8) -> Option<usize> {
    let mut r = Reader::new(buf);
    let mut count = 0usize;
    while let Some(len) = r.u8() {
        if len > max_len {
            return None;
        }
        r.take(usize::from(len).div_ceil(8))?;
        count += 1;
    }
    Some(count)
}

/// Iterates IPv4 prefixes in wire encoding. The bytes must have passed `validate_prefixes`;
/// a malformed tail simply ends the iteration.
#[derive(Debug, Clone)]
pub struct Ipv4Prefixes<'a> {
    r: Reader<'a>,
}

impl<'a> Ipv4Prefixes<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Ipv4Prefixes {
            r: Reader::new(buf),
        }
    }
}

impl Iterator for Ipv4Prefixes<'_> {
    type Item = Ipv4Net;

    fn next(&mut self) -> Option<Ipv4Net> {
        let len = self.r.u8()?;
        let bytes = self.r.take(usize::from(len).div_ceil(8))?;
        let mut addr = [0u8; 4];
        for (dst, src) in addr.iter_mut().zip(bytes) {
            *dst = *src;
        }
        let raw = u32::from_be_bytes(addr);
        let masked = if len == 0 {
            0
        } else {
            raw & (u32::MAX << (32 - u32::from(len.min(32))))
        };
        Ipv4Net::new(Ipv4Addr::from(masked), len).ok()
    }
}

/// Iterates IPv6 prefixes in wire encoding, like [`Ipv4Prefixes`].
#[derive(Debug, Clone)]
pub struct Ipv6Prefixes<'a> {
    r: Reader<'a>,
}

impl<'a> Ipv6Prefixes<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Ipv6Prefixes {
            r: Reader::new(buf),
        }
    }
}

impl Iterator for Ipv6Prefixes<'_> {
    type Item = Ipv6Net;

    fn next(&mut self) -> Option<Ipv6Net> {
        let len = self.r.u8()?;
        let bytes = self.r.take(usize::from(len).div_ceil(8))?;
        let mut addr = [0u8; 16];
        for (dst, src) in addr.iter_mut().zip(bytes) {
            *dst = *src;
        }
        let raw = u128::from_be_bytes(addr);
        let masked = if len == 0 {
            0
        } else {
            raw & (u128::MAX << (128 - u32::from(len.min(128))))
        };
        Ipv6Net::new(Ipv6Addr::from(masked), len).ok()
    }
}

/// Appends one IPv4 prefix in wire encoding.
pub(crate) fn put_ipv4_prefix(net: &Ipv4Net, out: &mut Vec<u8>) {
    let len = net.prefix_len();
    out.push(len);
    let octets = net.network().octets();
    out.extend_from_slice(
        octets
            .get(..usize::from(len).div_ceil(8))
            .unwrap_or(&octets),
    );
}

/// Appends one IPv6 prefix in wire encoding.
pub(crate) fn put_ipv6_prefix(net: &Ipv6Net, out: &mut Vec<u8>) {
    let len = net.prefix_len();
    out.push(len);
    let octets = net.network().octets();
    out.extend_from_slice(
        octets
            .get(..usize::from(len).div_ceil(8))
            .unwrap_or(&octets),
    );
}

/// Encoded size of an IPv4 prefix.
pub(crate) fn ipv4_prefix_size(net: &Ipv4Net) -> usize {
    1 + usize::from(net.prefix_len()).div_ceil(8)
}

/// Encoded size of an IPv6 prefix.
pub(crate) fn ipv6_prefix_size(net: &Ipv6Net) -> usize {
    1 + usize::from(net.prefix_len()).div_ceil(8)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let clean: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..clean.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&clean[i..i + 2], 16).unwrap())
            .collect()
    }

    const MARKER: &str = "ffffffffffffffffffffffffffffffff";

    #[test]
    fn keepalive_round_trips() {
        let bytes = hex(&format!("{MARKER} 0013 04"));
        assert_eq!(
            Message::decode(&bytes, &CodecOptions::FOUR_OCTET),
            Ok(Message::Keepalive)
        );
        assert_eq!(
            Message::Keepalive
                .to_bytes(&CodecOptions::FOUR_OCTET)
                .unwrap(),
            bytes
        );
    }

    #[test]
    fn route_refresh_round_trips() {
        let bytes = hex(&format!("{MARKER} 0017 05 0002 00 01"));
        let msg = Message::RouteRefresh(RouteRefresh {
            family: Family::IPV6_UNICAST,
            subtype: 0,
        });
        assert_eq!(
            Message::decode(&bytes, &CodecOptions::FOUR_OCTET),
            Ok(msg.clone())
        );
        assert_eq!(msg.to_bytes(&CodecOptions::FOUR_OCTET).unwrap(), bytes);
    }

    #[test]
    fn bad_marker_is_connection_not_synchronized() {
        let bytes = hex("ffffffffffffffffffffffffffffff00 0013 04");
        let err = Message::decode(&bytes, &CodecOptions::FOUR_OCTET).unwrap_err();
        assert_eq!(err, DecodeError::ConnectionNotSynchronized);
        assert_eq!(
            (err.notification().code, err.notification().subcode),
            (1, 1)
        );
    }

    #[test]
    fn keepalive_with_body_is_bad_length_with_length_as_data() {
        let bytes = hex(&format!("{MARKER} 0014 04 00"));
        let err = Message::decode(&bytes, &CodecOptions::FOUR_OCTET).unwrap_err();
        assert_eq!(err, DecodeError::BadMessageLength(20));
        let n = err.notification();
        assert_eq!((n.code, n.subcode, n.data), (1, 2, vec![0, 20]));
    }

    #[test]
    fn unknown_type_is_bad_message_type() {
        let bytes = hex(&format!("{MARKER} 0013 09"));
        let err = Message::decode(&bytes, &CodecOptions::FOUR_OCTET).unwrap_err();
        let n = err.notification();
        assert_eq!((n.code, n.subcode, n.data), (1, 3, vec![9]));
    }

    #[test]
    fn oversized_length_is_rejected_before_the_body_arrives() {
        let bytes = hex(&format!("{MARKER} 1001 02"));
        assert_eq!(frame(&bytes), Err(DecodeError::BadMessageLength(4097)));
    }

    #[test]
    fn partial_header_needs_more_bytes() {
        assert_eq!(frame(&hex(MARKER)), Ok(None));
        assert_eq!(frame(&hex(&format!("{MARKER} 0017 02 0000"))), Ok(None));
    }

    #[test]
    fn prefixes_mask_host_bits() {
        // 10.1.2.3/24 encoded with a stray host octet masked away by length: 24 bits → 3 octets.
        let p: Vec<_> = Ipv4Prefixes::new(&hex("18 0a0102 00")).collect();
        assert_eq!(
            p,
            vec!["10.1.2.0/24".parse().unwrap(), "0.0.0.0/0".parse().unwrap()]
        );
        let p: Vec<_> = Ipv4Prefixes::new(&hex("17 0a0103")).collect();
        assert_eq!(p, vec!["10.1.2.0/23".parse().unwrap()]);
    }

    #[test]
    fn validate_rejects_long_and_truncated_prefixes() {
        assert_eq!(validate_prefixes(&hex("21 0a000001 00"), 32), None);
        assert_eq!(validate_prefixes(&hex("18 0a01"), 32), None);
        assert_eq!(
            validate_prefixes(&hex("18 0a0102 20 0a000001"), 32),
            Some(2)
        );
    }
}
