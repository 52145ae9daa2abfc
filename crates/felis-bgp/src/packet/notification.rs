//! NOTIFICATION message (RFC 4271 §4.5, §6; Cease subcodes RFC 4486).
//!
//! ```text
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Error code    | Error subcode |   Data (variable)         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use serde::Deserialize;
use serde::Serialize;

use crate::error::DecodeError;
use crate::packet::Reader;

/// Error codes (RFC 4271 §4.5).
pub mod code {
    /// Message Header Error.
    pub const HEADER: u8 = 1;
    /// OPEN Message Error.
    pub const OPEN: u8 = 2;
    /// UPDATE Message Error.
    pub const UPDATE: u8 = 3;
    /// Hold Timer Expired.
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    /// Finite State Machine Error.
    pub const FSM: u8 = 5;
    /// Cease.
    pub const CEASE: u8 = 6;
}

/// OPEN Message Error subcodes (RFC 4271 §6.2, RFC 5492).
pub mod open_subcode {
    /// Unsupported Version Number.
    pub const UNSUPPORTED_VERSION: u8 = 1;
    /// Bad Peer AS.
    pub const BAD_PEER_AS: u8 = 2;
    /// Bad BGP Identifier.
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    /// Unsupported Optional Parameter.
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    /// Unacceptable Hold Time.
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    /// Unsupported Capability (RFC 5492).
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;
}

/// Cease subcodes (RFC 4486).
pub mod cease_subcode {
    /// Maximum Number of Prefixes Reached.
    pub const MAX_PREFIXES: u8 = 1;
    /// Administrative Shutdown.
    pub const ADMIN_SHUTDOWN: u8 = 2;
    /// Peer De-configured.
    pub const PEER_DECONFIGURED: u8 = 3;
    /// Administrative Reset.
    pub const ADMIN_RESET: u8 = 4;
    /// Connection Rejected.
    pub const CONNECTION_REJECTED: u8 = 5;
    /// Other Configuration Change.
    pub const CONFIGURATION_CHANGE: u8 = 6;
    /// Connection Collision Resolution.
    pub const CONNECTION_COLLISION: u8 = 7;
}

/// A NOTIFICATION: the reason a session is closed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Notification {
    /// Error code.
    pub code: u8,
    /// Error subcode.
    pub subcode: u8,
    /// Diagnostic data.
    pub data: Vec<u8>,
}

impl Notification {
    /// A notification without data.
    pub fn new(code: u8, subcode: u8) -> Self {
        Notification {
            code,
            subcode,
            data: Vec::new(),
        }
    }

    /// Hold Timer Expired (4/0).
    pub fn hold_timer_expired() -> Self {
        Notification::new(code::HOLD_TIMER_EXPIRED, 0)
    }

    /// Cease with a subcode (RFC 4486).
    pub fn cease(subcode: u8) -> Self {
        Notification::new(code::CEASE, subcode)
    }

    /// Finite State Machine Error (RFC 6608 subcodes: 1 OpenSent, 2 OpenConfirm, 3 Established).
    pub fn fsm(subcode: u8) -> Self {
        Notification::new(code::FSM, subcode)
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let (Some(code), Some(subcode)) = (r.u8(), r.u8()) else {
            return Err(DecodeError::MalformedMessage("NOTIFICATION"));
        };
        Ok(Notification {
            code,
            subcode,
            data: r.rest().to_vec(),
        })
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(self.code);
        out.push(self.subcode);
        out.extend_from_slice(&self.data);
    }

    /// Human-readable name of the code and subcode, as BIRD prints them.
    pub fn describe(&self) -> &'static str {
        match (self.code, self.subcode) {
            (1, 1) => "Connection not synchronized",
            (1, 2) => "Bad message length",
            (1, 3) => "Bad message type",
            (1, _) => "Message header error",
            (2, 1) => "Unsupported version number",
            (2, 2) => "Bad peer AS",
            (2, 3) => "Bad BGP identifier",
            (2, 4) => "Unsupported optional parameter",
            (2, 6) => "Unacceptable hold time",
            (2, 7) => "Unsupported capability",
            (2, _) => "OPEN message error",
            (3, 1) => "Malformed attribute list",
            (3, 2) => "Unrecognized well-known attribute",
            (3, 3) => "Missing mandatory attribute",
            (3, 4) => "Attribute flags error",
            (3, 5) => "Attribute length error",
            (3, 6) => "Invalid ORIGIN attribute",
            (3, 8) => "Invalid NEXT_HOP attribute",
            (3, 9) => "Optional attribute error",
            (3, 10) => "Invalid network field",
            (3, 11) => "Malformed AS_PATH",
            (3, _) => "UPDATE message error",
            (4, _) => "Hold timer expired",
            (5, _) => "Finite state machine error",
            (6, 1) => "Maximum number of prefixes reached",
            (6, 2) => "Administrative shutdown",
            (6, 3) => "Peer de-configured",
            (6, 4) => "Administrative reset",
            (6, 5) => "Connection rejected",
            (6, 6) => "Configuration change",
            (6, 7) => "Connection collision resolution",
            (6, 8) => "Out of resources",
            (6, _) => "Cease",
            _ => "Unknown error",
        }
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}/{})", self.describe(), self.code, self.subcode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::CodecOptions;
    use crate::packet::Message;

    #[test]
    fn cease_admin_shutdown_round_trips() {
        // NOTIFICATION Cease / Administrative Shutdown, as BIRD sends on `disable`.
        let bytes = crate::packet::tests::hex("ffffffffffffffffffffffffffffffff 0015 03 06 02");
        let msg = Message::Notification(Notification::cease(cease_subcode::ADMIN_SHUTDOWN));
        assert_eq!(
            Message::decode(&bytes, &CodecOptions::FOUR_OCTET),
            Ok(msg.clone())
        );
        assert_eq!(msg.to_bytes(&CodecOptions::FOUR_OCTET).unwrap(), bytes);
    }

    #[test]
    fn data_is_kept() {
        let bytes =
            crate::packet::tests::hex("ffffffffffffffffffffffffffffffff 0017 03 02 02 fde8");
        let Ok(Message::Notification(n)) = Message::decode(&bytes, &CodecOptions::FOUR_OCTET)
        else {
            panic!("not a notification")
        };
        assert_eq!(n.data, vec![0xfd, 0xe8]);
        assert_eq!(n.to_string(), "Bad peer AS (2/2)");
    }
}
