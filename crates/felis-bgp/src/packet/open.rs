//! OPEN message and capabilities (RFC 4271 §4.2, RFC 5492, 4760, 6793, 2918, 4724, 7911).
//!
//! ```text
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |    Version    |     My Autonomous System      |   Hold Time   :
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! :               |                BGP Identifier                 :
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! :               | Opt Parm Len  | Optional Parameters (type 2 = capabilities) ...
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::net::Ipv4Addr;

use serde::Deserialize;
use serde::Serialize;

use crate::error::DecodeError;
use crate::error::EncodeError;
use crate::packet::Asn;
use crate::packet::Family;
use crate::packet::Reader;

/// Optional parameter type carrying capabilities (RFC 5492).
const PARAM_CAPABILITIES: u8 = 2;

/// Capability codes.
pub mod capability_code {
    /// Multiprotocol extensions (RFC 4760).
    pub const MULTIPROTOCOL: u8 = 1;
    /// Route refresh (RFC 2918).
    pub const ROUTE_REFRESH: u8 = 2;
    /// Graceful restart (RFC 4724).
    pub const GRACEFUL_RESTART: u8 = 64;
    /// 4-octet AS numbers (RFC 6793).
    pub const FOUR_OCTET_AS: u8 = 65;
    /// ADD-PATH (RFC 7911).
    pub const ADD_PATH: u8 = 69;
}

/// An OPEN message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    /// Protocol version; always 4 on encode.
    pub version: u8,
    /// The 2-octet "My Autonomous System" field (AS_TRANS when the ASN needs 4 octets).
    pub my_as: u16,
    /// Proposed hold time in seconds.
    pub hold_time: u16,
    /// BGP identifier (router id).
    pub bgp_id: Ipv4Addr,
    /// Capabilities, in the order received.
    pub capabilities: Vec<Capability>,
}

/// One capability advertised in an OPEN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Capability {
    /// Multiprotocol extensions for one family (RFC 4760).
    Multiprotocol(Family),
    /// Route refresh (RFC 2918).
    RouteRefresh,
    /// Graceful restart (RFC 4724).
    GracefulRestart(GracefulRestart),
    /// 4-octet AS number support, carrying the speaker's ASN (RFC 6793).
    FourOctetAs(Asn),
    /// ADD-PATH families and directions (RFC 7911).
    AddPath(Vec<AddPathFamily>),
    /// Anything else, kept as received.
    Unknown {
        /// Capability code.
        code: u8,
        /// Capability value.
        value: Vec<u8>,
    },
}

/// The graceful restart capability (RFC 4724 §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GracefulRestart {
    /// Restart State (R) bit: the sender has restarted.
    pub restarting: bool,
    /// Graceful Notification (N) bit (RFC 8538).
    pub notification: bool,
    /// Restart time in seconds (12 bits).
    pub restart_time: u16,
    /// Families for which the sender can preserve state.
    pub families: Vec<GracefulRestartFamily>,
}

/// One family in the graceful restart capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GracefulRestartFamily {
    /// The family.
    pub family: Family,
    /// Forwarding State (F) bit: forwarding was preserved across the restart.
    pub forwarding_preserved: bool,
}

/// One family in the ADD-PATH capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddPathFamily {
    /// The family.
    pub family: Family,
    /// 1 = receive, 2 = send, 3 = both.
    pub send_receive: u8,
}

impl Open {
    /// The speaker's ASN: from the 4-octet AS capability if present, else the 2-octet field.
    pub fn asn(&self) -> Asn {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(asn) => Some(*asn),
                _ => None,
            })
            .unwrap_or(Asn(u32::from(self.my_as)))
    }

    /// Whether the 4-octet AS capability is present.
    pub fn has_four_octet_as(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
    }

    /// Families advertised with the multiprotocol capability; IPv4 unicast when none is
    /// (RFC 4760 §8: a speaker without the capability supports only IPv4 unicast).
    pub fn families(&self) -> Vec<Family> {
        let mut fams: Vec<Family> = self
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(f) => Some(*f),
                _ => None,
            })
            .collect();
        if fams.is_empty()
            && !self
                .capabilities
                .iter()
                .any(|c| matches!(c, Capability::Multiprotocol(_)))
        {
            fams.push(Family::IPV4_UNICAST);
        }
        fams
    }

    /// The graceful restart capability, if present.
    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }

    /// Whether route refresh is supported.
    pub fn has_route_refresh(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::RouteRefresh))
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let version = r.u8().ok_or(DecodeError::MalformedOpen("version"))?;
        if version != 4 {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let my_as = r
            .u16()
            .ok_or(DecodeError::MalformedOpen("my autonomous system"))?;
        let hold_time = r.u16().ok_or(DecodeError::MalformedOpen("hold time"))?;
        let bgp_id = r
            .ipv4()
            .ok_or(DecodeError::MalformedOpen("bgp identifier"))?;
        let params_len = r
            .u8()
            .ok_or(DecodeError::MalformedOpen("optional parameters length"))?;
        let params = r
            .take(usize::from(params_len))
            .ok_or(DecodeError::MalformedOpen("optional parameters length"))?;
        if !r.is_empty() {
            return Err(DecodeError::MalformedOpen("optional parameters length"));
        }
        let mut capabilities = Vec::new();
        let mut p = Reader::new(params);
        while !p.is_empty() {
            let kind = p
                .u8()
                .ok_or(DecodeError::MalformedOpen("optional parameter type"))?;
            let len = p
                .u8()
                .ok_or(DecodeError::MalformedOpen("optional parameter length"))?;
            let value = p
                .take(usize::from(len))
                .ok_or(DecodeError::MalformedOpen("optional parameter length"))?;
            if kind != PARAM_CAPABILITIES {
                return Err(DecodeError::UnsupportedOptionalParameter(kind));
            }
            decode_capabilities(value, &mut capabilities)?;
        }
        Ok(Open {
            version,
            my_as,
            hold_time,
            bgp_id,
            capabilities,
        })
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(4);
        out.extend_from_slice(&self.my_as.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.bgp_id.octets());
        let mut caps = Vec::new();
        for cap in &self.capabilities {
            cap.encode(&mut caps)?;
        }
        if caps.is_empty() {
            out.push(0);
            return Ok(());
        }
        let caps_len =
            u8::try_from(caps.len()).map_err(|_| EncodeError::FieldTooLong("capabilities"))?;
        let params_len = caps_len
            .checked_add(2)
            .ok_or(EncodeError::FieldTooLong("optional parameters"))?;
        out.push(params_len);
        out.push(PARAM_CAPABILITIES);
        out.push(caps_len);
        out.extend_from_slice(&caps);
        Ok(())
    }
}

fn decode_capabilities(mut buf: &[u8], out: &mut Vec<Capability>) -> Result<(), DecodeError> {
    const BAD: DecodeError = DecodeError::MalformedOpen("capability");
    while !buf.is_empty() {
        let mut r = Reader::new(buf);
        let code = r.u8().ok_or(BAD)?;
        let len = r.u8().ok_or(BAD)?;
        let value = r.take(usize::from(len)).ok_or(BAD)?;
        buf = r.rest();
        let mut v = Reader::new(value);
        let cap = match code {
            capability_code::MULTIPROTOCOL if len == 4 => {
                let afi = v.u16().ok_or(BAD)?;
                let _reserved = v.u8();
                let safi = v.u8().ok_or(BAD)?;
                Capability::Multiprotocol(Family { afi, safi })
            }
            capability_code::ROUTE_REFRESH if len == 0 => Capability::RouteRefresh,
            capability_code::FOUR_OCTET_AS if len == 4 => {
                Capability::FourOctetAs(Asn(v.u32().ok_or(BAD)?))
            }
            capability_code::GRACEFUL_RESTART if len >= 2 && (len - 2) % 4 == 0 => {
                let head = v.u16().ok_or(BAD)?;
                let mut families = Vec::new();
                while let (Some(afi), Some(safi), Some(flags)) = (v.u16(), v.u8(), v.u8()) {
                    families.push(GracefulRestartFamily {
                        family: Family { afi, safi },
                        forwarding_preserved: flags & 0x80 != 0,
                    });
                }
                Capability::GracefulRestart(GracefulRestart {
                    restarting: head & 0x8000 != 0,
                    notification: head & 0x4000 != 0,
                    restart_time: head & 0x0fff,
                    families,
                })
            }
            capability_code::ADD_PATH if len % 4 == 0 => {
                let mut families = Vec::new();
                while let (Some(afi), Some(safi), Some(sr)) = (v.u16(), v.u8(), v.u8()) {
                    families.push(AddPathFamily {
                        family: Family { afi, safi },
                        send_receive: sr,
                    });
                }
                Capability::AddPath(families)
            }
            _ => Capability::Unknown {
                code,
                value: value.to_vec(),
            },
        };
        out.push(cap);
    }
    Ok(())
}

impl Capability {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        out.extend_from_slice(&[0, 0]);
        let code = match self {
            Capability::Multiprotocol(f) => {
                out.extend_from_slice(&f.afi.to_be_bytes());
                out.push(0);
                out.push(f.safi);
                capability_code::MULTIPROTOCOL
            }
            Capability::RouteRefresh => capability_code::ROUTE_REFRESH,
            Capability::GracefulRestart(gr) => {
                let mut head = gr.restart_time & 0x0fff;
                if gr.restarting {
                    head |= 0x8000;
                }
                if gr.notification {
                    head |= 0x4000;
                }
                out.extend_from_slice(&head.to_be_bytes());
                for f in &gr.families {
                    out.extend_from_slice(&f.family.afi.to_be_bytes());
                    out.push(f.family.safi);
                    out.push(if f.forwarding_preserved { 0x80 } else { 0 });
                }
                capability_code::GRACEFUL_RESTART
            }
            Capability::FourOctetAs(asn) => {
                out.extend_from_slice(&asn.0.to_be_bytes());
                capability_code::FOUR_OCTET_AS
            }
            Capability::AddPath(families) => {
                for f in families {
                    out.extend_from_slice(&f.family.afi.to_be_bytes());
                    out.push(f.family.safi);
                    out.push(f.send_receive);
                }
                capability_code::ADD_PATH
            }
            Capability::Unknown { code, value } => {
                out.extend_from_slice(value);
                *code
            }
        };
        let len = u8::try_from(out.len() - start - 2)
            .map_err(|_| EncodeError::FieldTooLong("capability"))?;
        if let Some(head) = out.get_mut(start..start + 2) {
            head.copy_from_slice(&[code, len]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::CodecOptions;
    use crate::packet::Message;
    use crate::packet::tests::hex;

    /// OPEN in the shape BIRD 2 sends for `local as 64512; neighbor as 64512; ipv4 { };
    /// ipv6 { }; graceful restart on;`, less its enhanced route refresh, long-lived GR and
    /// hostname capabilities (written by hand from RFC 5492 layouts).
    const BIRD_OPEN: &str = "ffffffffffffffffffffffffffffffff 003f 01
        04 fc00 00f0 0a000001 22
        02 20
          01 04 0001 00 01
          01 04 0002 00 01
          02 00
          40 0a 0078 0001 01 00 0002 01 00
          41 04 0000fc00";

    fn bird_open() -> Open {
        Open {
            version: 4,
            my_as: 64512,
            hold_time: 240,
            bgp_id: Ipv4Addr::new(10, 0, 0, 1),
            capabilities: vec![
                Capability::Multiprotocol(Family::IPV4_UNICAST),
                Capability::Multiprotocol(Family::IPV6_UNICAST),
                Capability::RouteRefresh,
                Capability::GracefulRestart(GracefulRestart {
                    restarting: false,
                    notification: false,
                    restart_time: 120,
                    families: vec![
                        GracefulRestartFamily {
                            family: Family::IPV4_UNICAST,
                            forwarding_preserved: false,
                        },
                        GracefulRestartFamily {
                            family: Family::IPV6_UNICAST,
                            forwarding_preserved: false,
                        },
                    ],
                }),
                Capability::FourOctetAs(Asn(64512)),
            ],
        }
    }

    #[test]
    fn bird_open_round_trips() {
        let bytes = hex(BIRD_OPEN);
        let msg = Message::Open(bird_open());
        assert_eq!(
            Message::decode(&bytes, &CodecOptions::default()),
            Ok(msg.clone())
        );
        assert_eq!(msg.to_bytes(&CodecOptions::default()).unwrap(), bytes);
    }

    #[test]
    fn open_accessors_read_capabilities() {
        let open = bird_open();
        assert_eq!(open.asn(), Asn(64512));
        assert!(open.has_four_octet_as());
        assert!(open.has_route_refresh());
        assert_eq!(
            open.families(),
            vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST]
        );
        assert_eq!(open.graceful_restart().map(|g| g.restart_time), Some(120));
    }

    #[test]
    fn open_without_capabilities_implies_ipv4_unicast_and_2_octet_as() {
        let bytes = hex("ffffffffffffffffffffffffffffffff 001d 01 04 fde8 005a 01020304 00");
        let Ok(Message::Open(open)) = Message::decode(&bytes, &CodecOptions::default()) else {
            panic!("not an open");
        };
        assert_eq!(open.asn(), Asn(65000));
        assert_eq!(open.families(), vec![Family::IPV4_UNICAST]);
        assert!(!open.has_four_octet_as());
    }

    #[test]
    fn version_3_is_unsupported_version_with_4_as_data() {
        let bytes = hex("ffffffffffffffffffffffffffffffff 001d 01 03 fde8 005a 01020304 00");
        let err = Message::decode(&bytes, &CodecOptions::default()).unwrap_err();
        let n = err.notification();
        assert_eq!((n.code, n.subcode, n.data), (2, 1, vec![0, 4]));
    }

    #[test]
    fn unknown_optional_parameter_is_rejected() {
        let bytes =
            hex("ffffffffffffffffffffffffffffffff 0020 01 04 fde8 005a 01020304 03 01 01 00");
        let err = Message::decode(&bytes, &CodecOptions::default()).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedOptionalParameter(1));
        assert_eq!(err.notification().subcode, 4);
    }

    #[test]
    fn capability_overrunning_its_parameter_is_malformed() {
        let bytes =
            hex("ffffffffffffffffffffffffffffffff 0021 01 04 fde8 005a 01020304 04 02 02 41 04");
        let err = Message::decode(&bytes, &CodecOptions::default()).unwrap_err();
        assert_eq!(err, DecodeError::MalformedOpen("capability"));
    }

    #[test]
    fn unknown_capability_is_kept() {
        // Enhanced route refresh (70) and FQDN (73) are not interpreted but survive.
        let bytes = hex(
            "ffffffffffffffffffffffffffffffff 0026 01 04 fde8 005a 01020304 09 02 07 46 00 49 03 01 61 00",
        );
        let Ok(Message::Open(open)) = Message::decode(&bytes, &CodecOptions::default()) else {
            panic!("not an open");
        };
        assert_eq!(
            open.capabilities,
            vec![
                Capability::Unknown {
                    code: 70,
                    value: vec![]
                },
                Capability::Unknown {
                    code: 73,
                    value: vec![1, 0x61, 0]
                },
            ]
        );
    }
}
