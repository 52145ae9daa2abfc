//! Serde helpers for addresses and CIDRs as Calico writes them (strings), with errors that quote
//! the offending text. A bare address is accepted where a CIDR is expected and means a /32 or
//! /128, as in Calico.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde::Deserializer;
use serde::Serializer;

/// Parses a CIDR (`10.0.0.0/16`, `fd00::/64`) or a bare address (as /32 or /128). Host bits are
/// kept: `10.0.1.5/24` stays as written.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!("invalid CIDR {s:?}"))
}

/// Parses an IP address.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse::<IpAddr>()
        .map_err(|_| format!("invalid IP address {s:?}"))
}

/// `#[serde(with = "cidr")]` for one `IpNet`.
pub(crate) mod cidr {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(net: &IpNet, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(net)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let s = String::deserialize(d)?;
        parse_cidr(&s).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "opt_cidr")]` for `Option<IpNet>`.
pub(crate) mod opt_cidr {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(net: &Option<IpNet>, s: S) -> Result<S::Ok, S::Error> {
        match net {
            Some(n) => s.collect_str(n),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpNet>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) if !s.trim().is_empty() => {
                parse_cidr(&s).map(Some).map_err(serde::de::Error::custom)
            }
            _ => Ok(None),
        }
    }
}

/// `#[serde(with = "cidr_vec")]` for `Vec<IpNet>`.
pub(crate) mod cidr_vec {
    use serde::de::SeqAccess;
    use serde::de::Visitor;
    use serde::ser::SerializeSeq;

    use super::*;

    pub(crate) fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(nets.len()))?;
        for n in nets {
            seq.serialize_element(&n.to_string())?;
        }
        seq.end()
    }

    struct NetsVisitor;

    impl<'de> Visitor<'de> for NetsVisitor {
        type Value = Vec<IpNet>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of CIDRs")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<IpNet>, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<CidrString>()? {
                out.push(s.0);
            }
            Ok(out)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Vec<IpNet>, E> {
            Ok(Vec::new())
        }
    }

    /// One element, so that serde_path_to_error reports its index.
    struct CidrString(IpNet);

    impl<'de> Deserialize<'de> for CidrString {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CidrString, D::Error> {
            let s = String::deserialize(d)?;
            parse_cidr(&s)
                .map(CidrString)
                .map_err(serde::de::Error::custom)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        d.deserialize_any(NetsVisitor)
    }
}

/// `#[serde(with = "opt_ip")]` for `Option<IpAddr>`, where `""` also means none.
pub(crate) mod opt_ip {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) if !s.trim().is_empty() => {
                parse_ip(&s).map(Some).map_err(serde::de::Error::custom)
            }
            _ => Ok(None),
        }
    }
}

/// An autonomous system number. Accepts a number, a numeric string, or AS-dot notation
/// (`"1.10"` = 65546); serializes as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Asn(pub u32);

impl Asn {
    /// Parses `64512`, `"64512"` or `"1.10"`.
    pub fn parse(s: &str) -> Result<Asn, String> {
        let t = s.trim();
        let bad = || format!("invalid AS number {s:?}");
        if let Some((hi, lo)) = t.split_once('.') {
            let hi: u16 = hi.parse().map_err(|_| bad())?;
            let lo: u16 = lo.parse().map_err(|_| bad())?;
            return Ok(Asn((u32::from(hi) << 16) | u32::from(lo)));
        }
        t.parse::<u32>().map(Asn).map_err(|_| bad())
    }
}

impl std::fmt::Display for Asn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl serde::Serialize for Asn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for Asn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Asn, D::Error> {
        struct AsnVisitor;
        impl serde::de::Visitor<'_> for AsnVisitor {
            type Value = Asn;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an AS number (0-4294967295 or AS-dot)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Asn, E> {
                u32::try_from(v)
                    .map(Asn)
                    .map_err(|_| E::custom(format!("AS number {v} is too large")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Asn, E> {
                u32::try_from(v)
                    .map(Asn)
                    .map_err(|_| E::custom(format!("invalid AS number {v}")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Asn, E> {
                Asn::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(AsnVisitor)
    }
}
