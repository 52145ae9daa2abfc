//! Errors of the codec, the session and the speaker.
//!
//! A [`DecodeError`] always knows which NOTIFICATION the peer should get
//! ([`DecodeError::notification`]), so a malformed message ends one session, never the process.

use std::io;
use std::net::IpAddr;

use crate::packet::notification::Notification;
use crate::packet::notification::code;

/// Why bytes from the wire could not be read as a BGP message.
///
/// Each variant maps to the NOTIFICATION code/subcode of RFC 4271 §6 (as amended by RFC 7606).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// RFC 4271 §6.1: the 16-octet marker is not all ones.
    #[error("message header marker is not all ones")]
    ConnectionNotSynchronized,
    /// RFC 4271 §6.1: length field out of range for the message type.
    #[error("bad message length {0}")]
    BadMessageLength(u16),
    /// RFC 4271 §6.1: unknown message type.
    #[error("bad message type {0}")]
    BadMessageType(u8),
    /// RFC 4271 §6.2: OPEN carries a version other than 4.
    #[error("unsupported BGP version {0}")]
    UnsupportedVersion(u8),
    /// RFC 4271 §6.2: an OPEN field could not be read.
    #[error("malformed OPEN: {0}")]
    MalformedOpen(&'static str),
    /// RFC 4271 §6.2: optional parameter of an unknown type.
    #[error("unsupported optional parameter type {0}")]
    UnsupportedOptionalParameter(u8),
    /// RFC 4271 §6.3: withdrawn/attribute lengths overrun the message.
    #[error("malformed attribute list: {0}")]
    MalformedAttributeList(&'static str),
    /// RFC 4271 §6.3: a well-known attribute we do not recognise.
    #[error("unrecognized well-known attribute {code}")]
    UnrecognizedWellKnownAttribute {
        /// Attribute type code.
        code: u8,
        /// The whole attribute (flags, type, length, value) for the NOTIFICATION data.
        data: Vec<u8>,
    },
    /// RFC 4271 §6.3: a mandatory well-known attribute is missing.
    #[error("missing well-known attribute {0}")]
    MissingWellKnownAttribute(u8),
    /// RFC 4271 §6.3: attribute flags conflict with the type code.
    #[error("attribute {code} has flags {flags:#04x} that conflict with its type")]
    AttributeFlags {
        /// Attribute type code.
        code: u8,
        /// Flags as received.
        flags: u8,
    },
    /// RFC 4271 §6.3: attribute length wrong for its type.
    #[error("attribute {code} has bad length {len}")]
    AttributeLength {
        /// Attribute type code.
        code: u8,
        /// Length as received.
        len: usize,
    },
    /// RFC 4271 §6.3: ORIGIN value undefined.
    #[error("invalid ORIGIN value {0}")]
    InvalidOrigin(u8),
    /// RFC 4271 §6.3: NEXT_HOP semantically invalid.
    #[error("invalid NEXT_HOP {0}")]
    InvalidNextHop(IpAddr),
    /// RFC 4271 §6.3 / RFC 4760 §7: an optional attribute (MP_REACH/MP_UNREACH) is malformed.
    #[error("malformed optional attribute {code}: {reason}")]
    OptionalAttribute {
        /// Attribute type code.
        code: u8,
        /// What was wrong.
        reason: &'static str,
    },
    /// RFC 4271 §6.3: NLRI field syntactically incorrect.
    #[error("invalid network field: {0}")]
    InvalidNetworkField(&'static str),
    /// RFC 4271 §6.3: AS_PATH syntactically incorrect.
    #[error("malformed AS_PATH")]
    MalformedAsPath,
    /// RFC 4271 §6 (message header error, subcode 0): a message body too short for its type.
    #[error("malformed {0} message")]
    MalformedMessage(&'static str),
}

impl DecodeError {
    /// The NOTIFICATION a peer that sent these bytes should get (RFC 4271 §6).
    pub fn notification(&self) -> Notification {
        use DecodeError as E;
        let (c, s, data) = match self {
            E::ConnectionNotSynchronized => (code::HEADER, 1, Vec::new()),
            E::BadMessageLength(len) => (code::HEADER, 2, len.to_be_bytes().to_vec()),
            E::BadMessageType(t) => (code::HEADER, 3, vec![*t]),
            E::UnsupportedVersion(_) => (code::OPEN, 1, 4u16.to_be_bytes().to_vec()),
            E::MalformedOpen(_) => (code::OPEN, 0, Vec::new()),
            E::UnsupportedOptionalParameter(_) => (code::OPEN, 4, Vec::new()),
            E::MalformedAttributeList(_) => (code::UPDATE, 1, Vec::new()),
            E::UnrecognizedWellKnownAttribute { data, .. } => (code::UPDATE, 2, data.clone()),
            E::MissingWellKnownAttribute(c) => (code::UPDATE, 3, vec![*c]),
            E::AttributeFlags { code: c, .. } => (code::UPDATE, 4, vec![*c]),
            E::AttributeLength { code: c, .. } => (code::UPDATE, 5, vec![*c]),
            E::InvalidOrigin(_) => (code::UPDATE, 6, Vec::new()),
            E::InvalidNextHop(_) => (code::UPDATE, 8, Vec::new()),
            E::OptionalAttribute { code: c, .. } => (code::UPDATE, 9, vec![*c]),
            E::InvalidNetworkField(_) => (code::UPDATE, 10, Vec::new()),
            E::MalformedAsPath => (code::UPDATE, 11, Vec::new()),
            E::MalformedMessage(_) => (code::HEADER, 2, Vec::new()),
        };
        Notification {
            code: c,
            subcode: s,
            data,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The message would exceed the 4096-octet limit of RFC 4271 §4.
    #[error("{message} message of {len} octets exceeds the 4096-octet limit")]
    TooLong {
        /// Message type name.
        message: &'static str,
        /// Encoded length.
        len: usize,
    },
    /// A field does not fit its wire width.
    #[error("field {0} too long to encode")]
    FieldTooLong(&'static str),
}

/// Errors of the speaker (the tokio shell).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the listening socket failed.
    #[error("failed to listen on {addr}")]
    Listen {
        /// The address we tried to bind.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Setting TCP-MD5 on a socket failed.
    #[error("failed to set TCP-MD5 key for peer {peer}")]
    Md5 {
        /// The peer the key is for.
        peer: IpAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Setting TTL security (GTSM) on a socket failed.
    #[error("failed to set TTL security for peer {peer}")]
    TtlSecurity {
        /// The peer it is for.
        peer: IpAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A peer with this address is already configured.
    #[error("peer {0} already exists")]
    PeerExists(IpAddr),
    /// No peer with this address is configured.
    #[error("peer {0} not found")]
    PeerNotFound(IpAddr),
    /// The speaker task has stopped.
    #[error("speaker has shut down")]
    Shutdown,
}
