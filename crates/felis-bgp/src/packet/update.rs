//! UPDATE message and path attributes (RFC 4271 §4.3, §5; RFC 4760; RFC 1997; RFC 4456;
//! RFC 6793; RFC 7606 error handling).
//!
//! ```text
//! +-----------------------------------------------------+
//! |   Withdrawn Routes Length (2 octets)                |
//! |   Withdrawn Routes (variable)                       |
//! |   Total Path Attribute Length (2 octets)            |
//! |   Path Attributes (variable):                       |
//! |     flags(1) type(1) length(1, or 2 if flags&0x10)  |
//! |     value                                           |
//! |   Network Layer Reachability Information (variable) |
//! +-----------------------------------------------------+
//! ```
//!
//! [`UpdateView::parse`] validates a whole UPDATE once and then hands out iterators over the
//! NLRI wire bytes, so learning a prefix costs no allocation; [`Update`] is the owned form
//! used to build messages and in tests.

use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;

use ipnet::IpNet;
use ipnet::Ipv4Net;
use ipnet::Ipv6Net;
use serde::Deserialize;
use serde::Serialize;

use crate::error::DecodeError;
use crate::error::EncodeError;
use crate::packet::Asn;
use crate::packet::CodecOptions;
use crate::packet::Family;
use crate::packet::HEADER_LEN;
use crate::packet::Ipv4Prefixes;
use crate::packet::Ipv6Prefixes;
use crate::packet::MAX_MESSAGE_LEN;
use crate::packet::Reader;
use crate::packet::ipv4_prefix_size;
use crate::packet::ipv6_prefix_size;
use crate::packet::put_ipv4_prefix;
use crate::packet::put_ipv6_prefix;
use crate::packet::validate_prefixes;

/// Path attribute type codes.
pub mod attr_code {
    /// ORIGIN.
    pub const ORIGIN: u8 = 1;
    /// AS_PATH.
    pub const AS_PATH: u8 = 2;
    /// NEXT_HOP.
    pub const NEXT_HOP: u8 = 3;
    /// MULTI_EXIT_DISC.
    pub const MED: u8 = 4;
    /// LOCAL_PREF.
    pub const LOCAL_PREF: u8 = 5;
    /// ATOMIC_AGGREGATE.
    pub const ATOMIC_AGGREGATE: u8 = 6;
    /// AGGREGATOR.
    pub const AGGREGATOR: u8 = 7;
    /// COMMUNITIES (RFC 1997).
    pub const COMMUNITIES: u8 = 8;
    /// ORIGINATOR_ID (RFC 4456).
    pub const ORIGINATOR_ID: u8 = 9;
    /// CLUSTER_LIST (RFC 4456).
    pub const CLUSTER_LIST: u8 = 10;
    /// MP_REACH_NLRI (RFC 4760).
    pub const MP_REACH_NLRI: u8 = 14;
    /// MP_UNREACH_NLRI (RFC 4760).
    pub const MP_UNREACH_NLRI: u8 = 15;
    /// AS4_PATH (RFC 6793).
    pub const AS4_PATH: u8 = 17;
    /// AS4_AGGREGATOR (RFC 6793).
    pub const AS4_AGGREGATOR: u8 = 18;
}

/// Attribute flag bits.
pub mod attr_flag {
    /// Optional.
    pub const OPTIONAL: u8 = 0x80;
    /// Transitive.
    pub const TRANSITIVE: u8 = 0x40;
    /// Partial.
    pub const PARTIAL: u8 = 0x20;
    /// Extended length (2-octet length field).
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

const WELL_KNOWN: u8 = attr_flag::TRANSITIVE;
const OPTIONAL_NON_TRANSITIVE: u8 = attr_flag::OPTIONAL;
const OPTIONAL_TRANSITIVE: u8 = attr_flag::OPTIONAL | attr_flag::TRANSITIVE;

/// ORIGIN values (RFC 4271 §5.1.1); lower is preferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Origin {
    /// Learned from an IGP (0).
    Igp,
    /// Learned from EGP (1).
    Egp,
    /// Learned some other way (2).
    Incomplete,
}

/// AS_PATH segment types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SegmentType {
    /// AS_SET (1).
    Set,
    /// AS_SEQUENCE (2).
    Sequence,
    /// AS_CONFED_SEQUENCE (3, RFC 5065).
    ConfedSequence,
    /// AS_CONFED_SET (4, RFC 5065).
    ConfedSet,
}

/// One AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AsSegment {
    /// The segment type.
    pub kind: SegmentType,
    /// The ASNs, in order.
    pub asns: Vec<Asn>,
}

/// AS_PATH attribute value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct AsPath {
    /// Segments in order.
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    /// A path of one AS_SEQUENCE.
    pub fn sequence(asns: impl IntoIterator<Item = u32>) -> Self {
        let asns: Vec<Asn> = asns.into_iter().map(Asn).collect();
        if asns.is_empty() {
            return AsPath::default();
        }
        AsPath {
            segments: vec![AsSegment {
                kind: SegmentType::Sequence,
                asns,
            }],
        }
    }

    /// Path length for best-path selection (RFC 4271 §9.1.2.2 a): an AS_SET counts as one,
    /// confederation segments count zero (RFC 5065 §5.3).
    pub fn len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                SegmentType::Sequence => s.asns.len(),
                SegmentType::Set => 1,
                SegmentType::ConfedSequence | SegmentType::ConfedSet => 0,
            })
            .sum()
    }

    /// Whether the path has no ASNs.
    pub fn is_empty(&self) -> bool {
        self.segments.iter().all(|s| s.asns.is_empty())
    }

    /// Whether `asn` appears anywhere in the path (loop detection, RFC 4271 §9.1.2).
    pub fn contains(&self, asn: Asn) -> bool {
        self.segments.iter().any(|s| s.asns.contains(&asn))
    }

    /// The neighbouring AS: the first ASN of a leading AS_SEQUENCE (RFC 4271 §9.1.2.2 c).
    pub fn first_asn(&self) -> Option<Asn> {
        match self.segments.first() {
            Some(AsSegment {
                kind: SegmentType::Sequence,
                asns,
            }) => asns.first().copied(),
            _ => None,
        }
    }

    /// Prepends `asn` as the eBGP export rule of RFC 4271 §5.1.2 requires.
    pub fn prepend(&mut self, asn: Asn) {
        match self.segments.first_mut() {
            Some(seg) if seg.kind == SegmentType::Sequence && seg.asns.len() < 255 => {
                seg.asns.insert(0, asn);
            }
            _ => self.segments.insert(
                0,
                AsSegment {
                    kind: SegmentType::Sequence,
                    asns: vec![asn],
                },
            ),
        }
    }
}

/// AGGREGATOR attribute value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Aggregator {
    /// ASN of the aggregating speaker.
    pub asn: Asn,
    /// Its BGP identifier.
    pub address: Ipv4Addr,
}

/// A community (RFC 1997): high 16 bits ASN, low 16 bits value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Community(pub u32);

impl Community {
    /// NO_EXPORT: do not advertise outside the AS (or confederation).
    pub const NO_EXPORT: Community = Community(0xFFFF_FF01);
    /// NO_ADVERTISE: do not advertise to any peer.
    pub const NO_ADVERTISE: Community = Community(0xFFFF_FF02);
    /// NO_EXPORT_SUBCONFED: do not advertise to eBGP peers.
    pub const NO_EXPORT_SUBCONFED: Community = Community(0xFFFF_FF03);
}

/// An attribute this codec does not interpret, kept as received (optional transitive ones are
/// passed on, RFC 4271 §5).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RawAttribute {
    /// Flags as received, without the extended-length bit.
    pub flags: u8,
    /// Type code.
    pub code: u8,
    /// Value octets.
    pub value: Vec<u8>,
}

/// Path attributes of an UPDATE, except MP_REACH_NLRI/MP_UNREACH_NLRI which carry NLRI and
/// live in [`Update`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct PathAttributes {
    /// ORIGIN.
    pub origin: Option<Origin>,
    /// AS_PATH.
    pub as_path: Option<AsPath>,
    /// NEXT_HOP (IPv4 NLRI only).
    pub next_hop: Option<Ipv4Addr>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF.
    pub local_pref: Option<u32>,
    /// ATOMIC_AGGREGATE.
    pub atomic_aggregate: bool,
    /// AGGREGATOR.
    pub aggregator: Option<Aggregator>,
    /// COMMUNITIES.
    pub communities: Vec<Community>,
    /// ORIGINATOR_ID (RFC 4456).
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST (RFC 4456).
    pub cluster_list: Vec<Ipv4Addr>,
    /// Unrecognised attributes, sorted by type code.
    pub other: Vec<RawAttribute>,
}

impl PathAttributes {
    /// Whether no attribute is set (End-of-RIB and pure withdrawals carry none).
    pub fn is_empty(&self) -> bool {
        *self == PathAttributes::default()
    }

    /// Whether `community` is attached.
    pub fn has_community(&self, community: Community) -> bool {
        self.communities.contains(&community)
    }
}

/// MP_REACH_NLRI (RFC 4760 §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpReach {
    /// Address family of the NLRI.
    pub family: Family,
    /// Next hop (global address).
    pub next_hop: IpAddr,
    /// IPv6 link-local next hop (RFC 2545), when 32 octets were sent.
    pub link_local: Option<Ipv6Addr>,
    /// Reachable prefixes.
    pub nlri: Vec<IpNet>,
}

/// MP_UNREACH_NLRI (RFC 4760 §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpUnreach {
    /// Address family of the withdrawn prefixes.
    pub family: Family,
    /// Withdrawn prefixes.
    pub withdrawn: Vec<IpNet>,
}

/// An owned UPDATE.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Update {
    /// Withdrawn IPv4 prefixes.
    pub withdrawn: Vec<Ipv4Net>,
    /// Path attributes.
    pub attrs: PathAttributes,
    /// Reachable IPv4 prefixes.
    pub nlri: Vec<Ipv4Net>,
    /// MP_REACH_NLRI.
    pub mp_reach: Option<MpReach>,
    /// MP_UNREACH_NLRI.
    pub mp_unreach: Option<MpUnreach>,
}

/// MP_REACH_NLRI as read from the wire, NLRI not yet expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReachView<'a> {
    /// Address family.
    pub family: Family,
    /// Next hop (global address).
    pub next_hop: IpAddr,
    /// IPv6 link-local next hop.
    pub link_local: Option<Ipv6Addr>,
    nlri: &'a [u8],
}

/// MP_UNREACH_NLRI as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpUnreachView<'a> {
    /// Address family.
    pub family: Family,
    withdrawn: &'a [u8],
}

/// A validated UPDATE borrowing its wire bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateView<'a> {
    withdrawn: &'a [u8],
    nlri: &'a [u8],
    /// Path attributes (empty when the UPDATE only withdraws).
    pub attrs: PathAttributes,
    /// MP_REACH_NLRI, if present and of IPv4 or IPv6 unicast.
    pub mp_reach: Option<MpReachView<'a>>,
    /// MP_UNREACH_NLRI, if present and of IPv4 or IPv6 unicast.
    pub mp_unreach: Option<MpUnreachView<'a>>,
    /// RFC 7606 §2 treat-as-withdraw: an attribute error that makes every prefix announced
    /// here count as withdrawn instead of resetting the session.
    pub attribute_error: Option<DecodeError>,
    /// AS4_PATH / AS4_AGGREGATOR from a 2-octet (OLD) speaker, merged after parsing.
    as4_path: Option<AsPath>,
    as4_aggregator: Option<Aggregator>,
}

/// A prefix of either family yielded by the MP iterators.
fn prefixes_of(family: Family, buf: &[u8]) -> Box<dyn Iterator<Item = IpNet> + '_> {
    if family.afi == Family::IPV6_UNICAST.afi {
        Box::new(Ipv6Prefixes::new(buf).map(IpNet::V6))
    } else {
        Box::new(Ipv4Prefixes::new(buf).map(IpNet::V4))
    }
}

impl MpReachView<'_> {
    /// Iterates the reachable prefixes.
    pub fn prefixes(&self) -> impl Iterator<Item = IpNet> + '_ {
        prefixes_of(self.family, self.nlri)
    }

    /// Iterates IPv6 prefixes without boxing (empty for other families).
    pub fn ipv6_prefixes(&self) -> Ipv6Prefixes<'_> {
        if self.family.afi == Family::IPV6_UNICAST.afi {
            Ipv6Prefixes::new(self.nlri)
        } else {
            Ipv6Prefixes::new(&[])
        }
    }
}

impl MpUnreachView<'_> {
    /// Iterates the withdrawn prefixes.
    pub fn prefixes(&self) -> impl Iterator<Item = IpNet> + '_ {
        prefixes_of(self.family, self.withdrawn)
    }
}

impl<'a> UpdateView<'a> {
    /// Parses and validates an UPDATE body (the bytes after the header).
    ///
    /// Errors that RFC 7606 handles by treat-as-withdraw or attribute-discard do not fail
    /// the parse: see [`UpdateView::attribute_error`]. An `Err` means the session must be
    /// reset with [`DecodeError::notification`].
    pub fn parse(body: &'a [u8], opts: &CodecOptions) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let wlen = r.u16().ok_or(DecodeError::MalformedAttributeList(
            "withdrawn routes length",
        ))?;
        let withdrawn = r
            .take(usize::from(wlen))
            .ok_or(DecodeError::MalformedAttributeList(
                "withdrawn routes length",
            ))?;
        // RFC 7606 §5.3: a malformed prefix in withdrawn or NLRI resets the session.
        validate_prefixes(withdrawn, 32)
            .ok_or(DecodeError::InvalidNetworkField("withdrawn routes"))?;
        let alen = r.u16().ok_or(DecodeError::MalformedAttributeList(
            "total path attribute length",
        ))?;
        let attr_bytes = r
            .take(usize::from(alen))
            .ok_or(DecodeError::MalformedAttributeList(
                "total path attribute length",
            ))?;
        let nlri = r.rest();
        validate_prefixes(nlri, 32).ok_or(DecodeError::InvalidNetworkField("nlri"))?;
        let mut view = UpdateView {
            withdrawn,
            nlri,
            attrs: PathAttributes::default(),
            mp_reach: None,
            mp_unreach: None,
            attribute_error: None,
            as4_path: None,
            as4_aggregator: None,
        };
        view.parse_attributes(attr_bytes, opts)?;
        view.merge_as4();
        view.check_mandatory();
        Ok(view)
    }

    /// Withdrawn IPv4 prefixes.
    pub fn withdrawn(&self) -> Ipv4Prefixes<'a> {
        Ipv4Prefixes::new(self.withdrawn)
    }

    /// Announced IPv4 prefixes (check [`UpdateView::is_treat_as_withdraw`] first).
    pub fn nlri(&self) -> Ipv4Prefixes<'a> {
        Ipv4Prefixes::new(self.nlri)
    }

    /// Whether the announced prefixes must be handled as withdrawn (RFC 7606).
    pub fn is_treat_as_withdraw(&self) -> bool {
        self.attribute_error.is_some()
    }

    /// The family this UPDATE ends the initial table transfer of (RFC 4724 §2), if it is an
    /// End-of-RIB marker.
    pub fn end_of_rib(&self) -> Option<Family> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() || self.mp_reach.is_some() {
            return None;
        }
        if !self.attrs.is_empty() {
            return None;
        }
        match &self.mp_unreach {
            None => Some(Family::IPV4_UNICAST),
            Some(u) if u.withdrawn.is_empty() => Some(u.family),
            Some(_) => None,
        }
    }

    /// Converts to an owned [`Update`]; under treat-as-withdraw every announced prefix
    /// becomes a withdrawal and the attributes are dropped.
    pub fn to_update(&self) -> Update {
        let mut update = Update {
            withdrawn: self.withdrawn().collect(),
            attrs: PathAttributes::default(),
            nlri: Vec::new(),
            mp_reach: None,
            mp_unreach: self.mp_unreach.as_ref().map(|u| MpUnreach {
                family: u.family,
                withdrawn: u.prefixes().collect(),
            }),
        };
        if self.is_treat_as_withdraw() {
            update.withdrawn.extend(self.nlri());
            if let Some(reach) = &self.mp_reach {
                let unreach = update.mp_unreach.get_or_insert_with(|| MpUnreach {
                    family: reach.family,
                    withdrawn: Vec::new(),
                });
                if unreach.family == reach.family {
                    unreach.withdrawn.extend(reach.prefixes());
                }
            }
            return update;
        }
        update.attrs = self.attrs.clone();
        update.nlri = self.nlri().collect();
        update.mp_reach = self.mp_reach.as_ref().map(|m| MpReach {
            family: m.family,
            next_hop: m.next_hop,
            link_local: m.link_local,
            nlri: m.prefixes().collect(),
        });
        update
    }

    /// RFC 6793 §4.2.3: rebuilds the 4-octet path of an UPDATE from a 2-octet speaker.
    fn merge_as4(&mut self) {
        let (as4_path, as4_aggregator) = (self.as4_path.take(), self.as4_aggregator.take());
        if let Some(agg) = self.attrs.aggregator {
            if agg.asn != Asn::TRANS {
                // The AGGREGATOR is not from a NEW speaker: AS4_* are stale, ignore both.
                return;
            }
            if let Some(as4) = as4_aggregator {
                self.attrs.aggregator = Some(as4);
            }
        }
        let (Some(path), Some(as4)) = (self.attrs.as_path.as_mut(), as4_path) else {
            return;
        };
        if as4
            .segments
            .iter()
            .any(|s| matches!(s.kind, SegmentType::ConfedSequence | SegmentType::ConfedSet))
        {
            return;
        }
        let (n, m) = (path.len(), as4.len());
        if n < m {
            return;
        }
        // Keep the first n - m ASes of AS_PATH (the OLD speakers' part), then AS4_PATH.
        let mut keep = n - m;
        let mut merged: Vec<AsSegment> = Vec::new();
        let mut split_sequence = false;
        for seg in &path.segments {
            let confed = matches!(
                seg.kind,
                SegmentType::ConfedSequence | SegmentType::ConfedSet
            );
            // Confederation segments are prepended when leading or adjacent to a prepended one.
            if keep == 0 && !confed {
                break;
            }
            match seg.kind {
                SegmentType::Sequence => {
                    let take = keep.min(seg.asns.len());
                    let asns = seg.asns.iter().take(take).copied().collect();
                    merged.push(AsSegment {
                        kind: SegmentType::Sequence,
                        asns,
                    });
                    split_sequence = take < seg.asns.len();
                    keep -= take;
                }
                SegmentType::Set => {
                    merged.push(seg.clone());
                    split_sequence = false;
                    keep -= 1;
                }
                SegmentType::ConfedSequence | SegmentType::ConfedSet => merged.push(seg.clone()),
            }
        }
        let mut rest = as4.segments.into_iter().peekable();
        if split_sequence {
            // A sequence cut in two by the OLD/NEW boundary continues in AS4_PATH.
            if let (Some(last), Some(first)) = (
                merged.last_mut(),
                rest.next_if(|s| s.kind == SegmentType::Sequence),
            ) {
                last.asns.extend(first.asns);
            }
        }
        merged.extend(rest);
        *path = AsPath { segments: merged };
    }

    fn treat_as_withdraw(&mut self, err: DecodeError) {
        if self.attribute_error.is_none() {
            self.attribute_error = Some(err);
        }
    }

    fn has_announcements(&self) -> bool {
        !self.nlri.is_empty() || self.mp_reach.as_ref().is_some_and(|m| !m.nlri.is_empty())
    }

    /// RFC 4271 §6.3 / RFC 7606 §3 d: a missing mandatory attribute is treat-as-withdraw.
    fn check_mandatory(&mut self) {
        if !self.has_announcements() {
            return;
        }
        if self.attrs.origin.is_none() {
            self.treat_as_withdraw(DecodeError::MissingWellKnownAttribute(attr_code::ORIGIN));
        } else if self.attrs.as_path.is_none() {
            self.treat_as_withdraw(DecodeError::MissingWellKnownAttribute(attr_code::AS_PATH));
        } else if !self.nlri.is_empty() && self.attrs.next_hop.is_none() {
            self.treat_as_withdraw(DecodeError::MissingWellKnownAttribute(attr_code::NEXT_HOP));
        }
    }

    fn parse_attributes(&mut self, buf: &'a [u8], opts: &CodecOptions) -> Result<(), DecodeError> {
        let mut seen = [0u64; 4];
        let mut r = Reader::new(buf);
        while !r.is_empty() {
            let start = r.rest();
            let (Some(flags), Some(code)) = (r.u8(), r.u8()) else {
                return Err(DecodeError::MalformedAttributeList("attribute header"));
            };
            let len = if flags & attr_flag::EXTENDED_LENGTH != 0 {
                r.u16().map(usize::from)
            } else {
                r.u8().map(usize::from)
            };
            let value =
                len.and_then(|len| r.take(len))
                    .ok_or(DecodeError::MalformedAttributeList(
                        "attribute length overruns",
                    ))?;
            let whole = start.get(..start.len() - r.remaining()).unwrap_or_default();
            let (word, bit) = (usize::from(code / 64), code % 64);
            let Some(slot) = seen.get_mut(word) else {
                continue;
            };
            if *slot & (1 << bit) != 0 {
                // RFC 7606 §3 g: repeated MP attributes reset; others keep the first.
                if code == attr_code::MP_REACH_NLRI || code == attr_code::MP_UNREACH_NLRI {
                    return Err(DecodeError::MalformedAttributeList("repeated MP attribute"));
                }
                continue;
            }
            *slot |= 1 << bit;
            self.parse_attribute(flags, code, value, whole, opts)?;
        }
        // Encoding writes attributes in type-code order; keep the unknown ones that way too.
        self.attrs.other.sort_by_key(|a| a.code);
        Ok(())
    }

    fn parse_attribute(
        &mut self,
        flags: u8,
        code: u8,
        value: &'a [u8],
        whole: &[u8],
        opts: &CodecOptions,
    ) -> Result<(), DecodeError> {
        let class = flags & (attr_flag::OPTIONAL | attr_flag::TRANSITIVE);
        let expect = |want: u8| {
            if class == want {
                Ok(())
            } else {
                Err(DecodeError::AttributeFlags { code, flags })
            }
        };
        let bad_len = DecodeError::AttributeLength {
            code,
            len: value.len(),
        };
        let mut v = Reader::new(value);
        match code {
            attr_code::ORIGIN => {
                let parsed = expect(WELL_KNOWN).and(match value {
                    [0] => Ok(Origin::Igp),
                    [1] => Ok(Origin::Egp),
                    [2] => Ok(Origin::Incomplete),
                    [other] => Err(DecodeError::InvalidOrigin(*other)),
                    _ => Err(bad_len),
                });
                match parsed {
                    Ok(origin) => self.attrs.origin = Some(origin),
                    Err(e) => self.treat_as_withdraw(e),
                }
            }
            attr_code::AS_PATH => {
                match expect(WELL_KNOWN).and_then(|()| decode_as_path(value, opts.four_octet_asn))
                {
                    Ok(path) => self.attrs.as_path = Some(path),
                    Err(e) => self.treat_as_withdraw(e),
                }
            }
            attr_code::NEXT_HOP => {
                let parsed = expect(WELL_KNOWN).and_then(|()| match v.ipv4() {
                    Some(nh) if v.is_empty() => {
                        if nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() {
                            Err(DecodeError::InvalidNextHop(IpAddr::V4(nh)))
                        } else {
                            Ok(nh)
                        }
                    }
                    _ => Err(bad_len),
                });
                match parsed {
                    Ok(nh) => self.attrs.next_hop = Some(nh),
                    Err(e) => self.treat_as_withdraw(e),
                }
            }
            attr_code::MED | attr_code::LOCAL_PREF => {
                let want = if code == attr_code::MED { OPTIONAL_NON_TRANSITIVE } else { WELL_KNOWN };
                let parsed = expect(want).and_then(|()| match v.u32() {
                    Some(x) if v.is_empty() => Ok(x),
                    _ => Err(bad_len),
                });
                match parsed {
                    Ok(x) if code == attr_code::MED => self.attrs.med = Some(x),
                    Ok(x) => self.attrs.local_pref = Some(x),
                    Err(e) => self.treat_as_withdraw(e),
                }
            }
            attr_code::ATOMIC_AGGREGATE
                // RFC 7606 §7.6: malformed ATOMIC_AGGREGATE is discarded.
                if expect(WELL_KNOWN).is_ok() && value.is_empty() => {
                    self.attrs.atomic_aggregate = true;
                }
            attr_code::AGGREGATOR => {
                // RFC 7606 §7.7: malformed AGGREGATOR is discarded.
                let asn = if opts.four_octet_asn { v.u32() } else { v.u16().map(u32::from) };
                if let (Ok(()), Some(asn), Some(address), true) =
                    (expect(OPTIONAL_TRANSITIVE), asn, v.ipv4(), v.is_empty())
                {
                    self.attrs.aggregator = Some(Aggregator { asn: Asn(asn), address });
                }
            }
            attr_code::COMMUNITIES => {
                if expect(OPTIONAL_TRANSITIVE).is_err() || !value.len().is_multiple_of(4) {
                    self.treat_as_withdraw(bad_len);
                } else {
                    self.attrs.communities =
                        value.chunks_exact(4).filter_map(be_u32).map(Community).collect();
                }
            }
            attr_code::ORIGINATOR_ID => {
                match (expect(OPTIONAL_NON_TRANSITIVE), v.ipv4(), v.is_empty()) {
                    (Ok(()), Some(id), true) => self.attrs.originator_id = Some(id),
                    _ => self.treat_as_withdraw(bad_len),
                }
            }
            attr_code::CLUSTER_LIST => {
                if expect(OPTIONAL_NON_TRANSITIVE).is_err() || !value.len().is_multiple_of(4) {
                    self.treat_as_withdraw(bad_len);
                } else {
                    self.attrs.cluster_list =
                        value.chunks_exact(4).filter_map(be_u32).map(Ipv4Addr::from).collect();
                }
            }
            attr_code::MP_REACH_NLRI => {
                expect(OPTIONAL_NON_TRANSITIVE)?;
                self.mp_reach = parse_mp_reach(value)?;
            }
            attr_code::MP_UNREACH_NLRI => {
                expect(OPTIONAL_NON_TRANSITIVE)?;
                self.mp_unreach = parse_mp_unreach(value)?;
            }
            attr_code::AS4_PATH | attr_code::AS4_AGGREGATOR if opts.four_octet_asn => {
                // RFC 6793 §4.1: a NEW speaker discards AS4_* from another NEW speaker.
            }
            attr_code::AS4_PATH => {
                // RFC 6793 §6: a malformed AS4_PATH is discarded.
                self.as4_path = expect(OPTIONAL_TRANSITIVE)
                    .ok()
                    .and_then(|()| decode_as_path(value, true).ok());
            }
            attr_code::AS4_AGGREGATOR => {
                if let (true, Some(asn), Some(address), true) =
                    (class == OPTIONAL_TRANSITIVE, v.u32(), v.ipv4(), v.is_empty())
                {
                    self.as4_aggregator = Some(Aggregator { asn: Asn(asn), address });
                }
            }
            _ if flags & attr_flag::OPTIONAL == 0 => {
                return Err(DecodeError::UnrecognizedWellKnownAttribute {
                    code,
                    data: whole.to_vec(),
                });
            }
            _ if flags & attr_flag::TRANSITIVE != 0 => {
                self.attrs.other.push(RawAttribute {
                    flags: flags & !attr_flag::EXTENDED_LENGTH,
                    code,
                    value: value.to_vec(),
                });
            }
            // Unknown optional non-transitive attributes are quietly dropped (RFC 4271 §5).
            _ => {}
        }
        Ok(())
    }
}

fn be_u32(chunk: &[u8]) -> Option<u32> {
    chunk.try_into().ok().map(u32::from_be_bytes)
}

fn decode_as_path(value: &[u8], four_octet: bool) -> Result<AsPath, DecodeError> {
    let mut r = Reader::new(value);
    let mut segments = Vec::new();
    while !r.is_empty() {
        let (Some(kind), Some(count)) = (r.u8(), r.u8()) else {
            return Err(DecodeError::MalformedAsPath);
        };
        let kind = match kind {
            1 => SegmentType::Set,
            2 => SegmentType::Sequence,
            3 => SegmentType::ConfedSequence,
            4 => SegmentType::ConfedSet,
            _ => return Err(DecodeError::MalformedAsPath),
        };
        if count == 0 {
            return Err(DecodeError::MalformedAsPath);
        }
        let width = if four_octet { 4 } else { 2 };
        let bytes = r
            .take(usize::from(count) * width)
            .ok_or(DecodeError::MalformedAsPath)?;
        let asns = if four_octet {
            bytes.chunks_exact(4).filter_map(be_u32).map(Asn).collect()
        } else {
            bytes
                .chunks_exact(2)
                .filter_map(|c| c.try_into().ok().map(u16::from_be_bytes))
                .map(|a| Asn(u32::from(a)))
                .collect()
        };
        segments.push(AsSegment { kind, asns });
    }
    Ok(AsPath { segments })
}

fn supported(family: Family) -> bool {
    family == Family::IPV4_UNICAST || family == Family::IPV6_UNICAST
}

fn max_prefix_len(family: Family) -> u8 {
    if family.afi == Family::IPV6_UNICAST.afi {
        128
    } else {
        32
    }
}

fn parse_mp_reach(value: &[u8]) -> Result<Option<MpReachView<'_>>, DecodeError> {
    let bad = |reason| DecodeError::OptionalAttribute {
        code: attr_code::MP_REACH_NLRI,
        reason,
    };
    let mut r = Reader::new(value);
    let (Some(afi), Some(safi), Some(nh_len)) = (r.u16(), r.u8(), r.u8()) else {
        return Err(bad("truncated header"));
    };
    let family = Family { afi, safi };
    let nh = r.take(usize::from(nh_len)).ok_or(bad("next hop length"))?;
    let _reserved = r.u8().ok_or(bad("reserved octet"))?;
    let nlri = r.rest();
    if !supported(family) {
        // RFC 4760 §7: families we did not negotiate are ignored.
        return Ok(None);
    }
    let mut n = Reader::new(nh);
    let (next_hop, link_local) = match nh_len {
        4 => (IpAddr::V4(n.ipv4().ok_or(bad("next hop"))?), None),
        16 => (IpAddr::V6(n.ipv6().ok_or(bad("next hop"))?), None),
        32 => (
            IpAddr::V6(n.ipv6().ok_or(bad("next hop"))?),
            Some(n.ipv6().ok_or(bad("next hop"))?),
        ),
        _ => return Err(bad("next hop length")),
    };
    validate_prefixes(nlri, max_prefix_len(family)).ok_or(bad("nlri"))?;
    Ok(Some(MpReachView {
        family,
        next_hop,
        link_local,
        nlri,
    }))
}

fn parse_mp_unreach(value: &[u8]) -> Result<Option<MpUnreachView<'_>>, DecodeError> {
    let bad = |reason| DecodeError::OptionalAttribute {
        code: attr_code::MP_UNREACH_NLRI,
        reason,
    };
    let mut r = Reader::new(value);
    let (Some(afi), Some(safi)) = (r.u16(), r.u8()) else {
        return Err(bad("truncated header"));
    };
    let family = Family { afi, safi };
    let withdrawn = r.rest();
    if !supported(family) {
        return Ok(None);
    }
    validate_prefixes(withdrawn, max_prefix_len(family)).ok_or(bad("withdrawn routes"))?;
    Ok(Some(MpUnreachView { family, withdrawn }))
}

impl Update {
    /// An End-of-RIB marker for `family` (RFC 4724 §2).
    pub fn end_of_rib(family: Family) -> Self {
        if family == Family::IPV4_UNICAST {
            return Update::default();
        }
        Update {
            mp_unreach: Some(MpUnreach {
                family,
                withdrawn: Vec::new(),
            }),
            ..Update::default()
        }
    }

    /// The family this UPDATE marks the End-of-RIB of, if it is such a marker.
    pub fn end_of_rib_family(&self) -> Option<Family> {
        if !self.withdrawn.is_empty()
            || !self.nlri.is_empty()
            || self.mp_reach.is_some()
            || !self.attrs.is_empty()
        {
            return None;
        }
        match &self.mp_unreach {
            None => Some(Family::IPV4_UNICAST),
            Some(u) if u.withdrawn.is_empty() => Some(u.family),
            Some(_) => None,
        }
    }

    /// Decodes an UPDATE body into the owned form (see [`UpdateView::to_update`]).
    pub fn decode(body: &[u8], opts: &CodecOptions) -> Result<Self, DecodeError> {
        Ok(UpdateView::parse(body, opts)?.to_update())
    }

    pub(crate) fn encode_body(
        &self,
        opts: &CodecOptions,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let wstart = out.len();
        out.extend_from_slice(&[0, 0]);
        for p in &self.withdrawn {
            put_ipv4_prefix(p, out);
        }
        patch_u16(out, wstart, "withdrawn routes")?;
        let astart = out.len();
        out.extend_from_slice(&[0, 0]);
        encode_attributes(&self.attrs, opts, out, |out| {
            if let Some(reach) = &self.mp_reach {
                put_attribute(
                    out,
                    OPTIONAL_NON_TRANSITIVE,
                    attr_code::MP_REACH_NLRI,
                    |out| {
                        out.extend_from_slice(&reach.family.afi.to_be_bytes());
                        out.push(reach.family.safi);
                        put_next_hop(out, reach.next_hop, reach.link_local);
                        out.push(0);
                        for p in &reach.nlri {
                            put_prefix(p, out);
                        }
                    },
                );
            }
            if let Some(unreach) = &self.mp_unreach {
                put_attribute(
                    out,
                    OPTIONAL_NON_TRANSITIVE,
                    attr_code::MP_UNREACH_NLRI,
                    |out| {
                        out.extend_from_slice(&unreach.family.afi.to_be_bytes());
                        out.push(unreach.family.safi);
                        for p in &unreach.withdrawn {
                            put_prefix(p, out);
                        }
                    },
                );
            }
        });
        patch_u16(out, astart, "path attributes")?;
        for p in &self.nlri {
            put_ipv4_prefix(p, out);
        }
        Ok(())
    }
}

fn put_next_hop(out: &mut Vec<u8>, next_hop: IpAddr, link_local: Option<Ipv6Addr>) {
    match (next_hop, link_local) {
        (IpAddr::V4(a), _) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        (IpAddr::V6(a), None) => {
            out.push(16);
            out.extend_from_slice(&a.octets());
        }
        (IpAddr::V6(a), Some(ll)) => {
            out.push(32);
            out.extend_from_slice(&a.octets());
            out.extend_from_slice(&ll.octets());
        }
    }
}

fn put_prefix(p: &IpNet, out: &mut Vec<u8>) {
    match p {
        IpNet::V4(p) => put_ipv4_prefix(p, out),
        IpNet::V6(p) => put_ipv6_prefix(p, out),
    }
}

fn patch_u16(out: &mut [u8], at: usize, field: &'static str) -> Result<(), EncodeError> {
    let len = out.len() - at - 2;
    let len = u16::try_from(len).map_err(|_| EncodeError::FieldTooLong(field))?;
    if let Some(slot) = out.get_mut(at..at + 2) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

/// Writes one attribute, choosing the extended-length form only when the value needs it.
fn put_attribute(out: &mut Vec<u8>, flags: u8, code: u8, value: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[flags | attr_flag::EXTENDED_LENGTH, code, 0, 0]);
    value(out);
    let len = out.len() - start - 4;
    if let Ok(short) = u8::try_from(len) {
        out.copy_within(start + 4.., start + 3);
        out.truncate(out.len() - 1);
        if let Some(head) = out.get_mut(start..start + 3) {
            head.copy_from_slice(&[flags & !attr_flag::EXTENDED_LENGTH, code, short]);
        }
    } else if let Some(slot) = out.get_mut(start + 2..start + 4) {
        // Attribute values are bounded by the 4096-octet message; an overflow is caught by
        // the message length check.
        slot.copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    }
}

/// Writes all attributes in type-code order; `mp` writes MP_REACH/MP_UNREACH (codes 14, 15).
fn encode_attributes(
    attrs: &PathAttributes,
    opts: &CodecOptions,
    out: &mut Vec<u8>,
    mp: impl FnOnce(&mut Vec<u8>),
) {
    if let Some(origin) = attrs.origin {
        put_attribute(out, WELL_KNOWN, attr_code::ORIGIN, |out| {
            out.push(match origin {
                Origin::Igp => 0,
                Origin::Egp => 1,
                Origin::Incomplete => 2,
            });
        });
    }
    if let Some(path) = &attrs.as_path {
        put_attribute(out, WELL_KNOWN, attr_code::AS_PATH, |out| {
            for seg in &path.segments {
                for chunk in seg.asns.chunks(255) {
                    out.push(match seg.kind {
                        SegmentType::Set => 1,
                        SegmentType::Sequence => 2,
                        SegmentType::ConfedSequence => 3,
                        SegmentType::ConfedSet => 4,
                    });
                    out.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
                    for asn in chunk {
                        put_asn(out, *asn, opts);
                    }
                }
            }
        });
    }
    if let Some(nh) = attrs.next_hop {
        put_attribute(out, WELL_KNOWN, attr_code::NEXT_HOP, |out| {
            out.extend_from_slice(&nh.octets());
        });
    }
    if let Some(med) = attrs.med {
        put_attribute(out, OPTIONAL_NON_TRANSITIVE, attr_code::MED, |out| {
            out.extend_from_slice(&med.to_be_bytes());
        });
    }
    if let Some(lp) = attrs.local_pref {
        put_attribute(out, WELL_KNOWN, attr_code::LOCAL_PREF, |out| {
            out.extend_from_slice(&lp.to_be_bytes());
        });
    }
    if attrs.atomic_aggregate {
        put_attribute(out, WELL_KNOWN, attr_code::ATOMIC_AGGREGATE, |_| {});
    }
    if let Some(agg) = attrs.aggregator {
        put_attribute(out, OPTIONAL_TRANSITIVE, attr_code::AGGREGATOR, |out| {
            put_asn(out, agg.asn, opts);
            out.extend_from_slice(&agg.address.octets());
        });
    }
    if !attrs.communities.is_empty() {
        put_attribute(out, OPTIONAL_TRANSITIVE, attr_code::COMMUNITIES, |out| {
            for c in &attrs.communities {
                out.extend_from_slice(&c.0.to_be_bytes());
            }
        });
    }
    if let Some(id) = attrs.originator_id {
        put_attribute(
            out,
            OPTIONAL_NON_TRANSITIVE,
            attr_code::ORIGINATOR_ID,
            |out| {
                out.extend_from_slice(&id.octets());
            },
        );
    }
    if !attrs.cluster_list.is_empty() {
        put_attribute(
            out,
            OPTIONAL_NON_TRANSITIVE,
            attr_code::CLUSTER_LIST,
            |out| {
                for id in &attrs.cluster_list {
                    out.extend_from_slice(&id.octets());
                }
            },
        );
    }
    if !opts.four_octet_asn {
        encode_as4(attrs, out);
    }
    let (before, after): (Vec<&RawAttribute>, Vec<&RawAttribute>) = attrs
        .other
        .iter()
        .partition(|a| a.code < attr_code::MP_REACH_NLRI);
    for a in before {
        put_attribute(out, a.flags, a.code, |out| out.extend_from_slice(&a.value));
    }
    mp(out);
    for a in after {
        put_attribute(out, a.flags, a.code, |out| out.extend_from_slice(&a.value));
    }
}

/// RFC 6793 §4.2.2: toward a 2-octet (OLD) speaker, 4-octet ASNs travel in AS4_PATH and
/// AS4_AGGREGATOR next to the AS_TRANS-substituted AS_PATH and AGGREGATOR.
fn encode_as4(attrs: &PathAttributes, out: &mut Vec<u8>) {
    let wide = |asn: &Asn| asn.0 > u32::from(u16::MAX);
    if let Some(path) = &attrs.as_path {
        let segments: Vec<&AsSegment> = path
            .segments
            .iter()
            .filter(|s| matches!(s.kind, SegmentType::Sequence | SegmentType::Set))
            .collect();
        if segments.iter().any(|s| s.asns.iter().any(wide)) {
            put_attribute(out, OPTIONAL_TRANSITIVE, attr_code::AS4_PATH, |out| {
                for seg in segments {
                    for chunk in seg.asns.chunks(255) {
                        out.push(if seg.kind == SegmentType::Set { 1 } else { 2 });
                        out.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
                        for asn in chunk {
                            out.extend_from_slice(&asn.0.to_be_bytes());
                        }
                    }
                }
            });
        }
    }
    if let Some(agg) = attrs.aggregator.filter(|a| wide(&a.asn)) {
        put_attribute(out, OPTIONAL_TRANSITIVE, attr_code::AS4_AGGREGATOR, |out| {
            out.extend_from_slice(&agg.asn.0.to_be_bytes());
            out.extend_from_slice(&agg.address.octets());
        });
    }
}

fn put_asn(out: &mut Vec<u8>, asn: Asn, opts: &CodecOptions) {
    if opts.four_octet_asn {
        out.extend_from_slice(&asn.0.to_be_bytes());
    } else {
        let short = u16::try_from(asn.0).unwrap_or(23456);
        out.extend_from_slice(&short.to_be_bytes());
    }
}

/// Octets of attributes as encoded (without MP attributes).
pub fn encoded_attributes_len(attrs: &PathAttributes, opts: &CodecOptions) -> usize {
    let mut out = Vec::new();
    encode_attributes(attrs, opts, &mut out, |_| {});
    out.len()
}

/// Room for NLRI/withdrawn bytes once the header and both length fields are counted.
const UPDATE_ROOM: usize = MAX_MESSAGE_LEN - HEADER_LEN - 4;

/// Builds UPDATEs announcing `prefixes` with `attrs`, each within 4096 octets.
///
/// IPv4 prefixes go in the NLRI field (`attrs.next_hop` must be set); IPv6 prefixes go in
/// MP_REACH_NLRI with `v6_next_hop`.
pub fn announcements(
    attrs: &PathAttributes,
    prefixes: &[IpNet],
    v6_next_hop: Option<(Ipv6Addr, Option<Ipv6Addr>)>,
    opts: &CodecOptions,
) -> Vec<Update> {
    let attrs_len = encoded_attributes_len(attrs, opts);
    let mut updates = Vec::new();
    let v4: Vec<Ipv4Net> = prefixes
        .iter()
        .filter_map(|p| match p {
            IpNet::V4(p) => Some(*p),
            IpNet::V6(_) => None,
        })
        .collect();
    let v6: Vec<Ipv6Net> = prefixes
        .iter()
        .filter_map(|p| match p {
            IpNet::V6(p) => Some(*p),
            IpNet::V4(_) => None,
        })
        .collect();
    let room = UPDATE_ROOM.saturating_sub(attrs_len);
    for chunk in chunk_by_size(&v4, room, ipv4_prefix_size) {
        updates.push(Update {
            attrs: attrs.clone(),
            nlri: chunk.to_vec(),
            ..Update::default()
        });
    }
    if let Some((next_hop, link_local)) = v6_next_hop {
        // MP_REACH: 4 header + afi(2) safi(1) nh_len(1) nh(16|32) reserved(1).
        let nh_len = if link_local.is_some() { 32 } else { 16 };
        let room = UPDATE_ROOM.saturating_sub(attrs_len + 4 + 5 + nh_len);
        let mut v6_attrs = attrs.clone();
        v6_attrs.next_hop = None;
        for chunk in chunk_by_size(&v6, room, ipv6_prefix_size) {
            updates.push(Update {
                attrs: v6_attrs.clone(),
                mp_reach: Some(MpReach {
                    family: Family::IPV6_UNICAST,
                    next_hop: IpAddr::V6(next_hop),
                    link_local,
                    nlri: chunk.iter().copied().map(IpNet::V6).collect(),
                }),
                ..Update::default()
            });
        }
    }
    updates
}

/// Builds UPDATEs withdrawing `prefixes`, each within 4096 octets.
pub fn withdrawals(prefixes: &[IpNet]) -> Vec<Update> {
    let mut updates = Vec::new();
    let v4: Vec<Ipv4Net> = prefixes
        .iter()
        .filter_map(|p| match p {
            IpNet::V4(p) => Some(*p),
            IpNet::V6(_) => None,
        })
        .collect();
    let v6: Vec<Ipv6Net> = prefixes
        .iter()
        .filter_map(|p| match p {
            IpNet::V6(p) => Some(*p),
            IpNet::V4(_) => None,
        })
        .collect();
    for chunk in chunk_by_size(&v4, UPDATE_ROOM, ipv4_prefix_size) {
        updates.push(Update {
            withdrawn: chunk.to_vec(),
            ..Update::default()
        });
    }
    for chunk in chunk_by_size(&v6, UPDATE_ROOM - 4 - 3, ipv6_prefix_size) {
        updates.push(Update {
            mp_unreach: Some(MpUnreach {
                family: Family::IPV6_UNICAST,
                withdrawn: chunk.iter().copied().map(IpNet::V6).collect(),
            }),
            ..Update::default()
        });
    }
    updates
}

fn chunk_by_size<T>(items: &[T], room: usize, size: fn(&T) -> usize) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, item) in items.iter().enumerate() {
        let s = size(item);
        if used + s > room && i > start {
            chunks.extend(items.get(start..i));
            start = i;
            used = 0;
        }
        used += s;
    }
    if start < items.len() {
        chunks.extend(items.get(start..));
    }
    chunks
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::packet::Message;
    use crate::packet::tests::hex;

    const OPTS: CodecOptions = CodecOptions::FOUR_OCTET;

    /// 10.0.0.0/24 from AS 64512 via 10.0.0.1, origin IGP, in the attribute order and
    /// encoding BIRD 2 uses toward an eBGP peer with 4-octet ASNs.
    const ANNOUNCE_V4: &str = "ffffffffffffffffffffffffffffffff 002f 02
        0000
        0014
          40 01 01 00
          40 02 06 02 01 0000fc00
          40 03 04 0a000001
        18 0a0000";

    fn announce_v4() -> Update {
        Update {
            attrs: PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::sequence([64512])),
                next_hop: Some(Ipv4Addr::new(10, 0, 0, 1)),
                ..PathAttributes::default()
            },
            nlri: vec!["10.0.0.0/24".parse().unwrap()],
            ..Update::default()
        }
    }

    /// fd00:0:0:1::/64 via fd00::1 in MP_REACH_NLRI (RFC 4760).
    const ANNOUNCE_V6: &str = "ffffffffffffffffffffffffffffffff 0045 02
        0000
        002e
          40 01 01 00
          40 02 06 02 01 0000fc00
          80 0e 1e 0002 01 10 fd000000000000000000000000000001 00 40 fd00000000000001";

    fn announce_v6() -> Update {
        Update {
            attrs: PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::sequence([64512])),
                ..PathAttributes::default()
            },
            mp_reach: Some(MpReach {
                family: Family::IPV6_UNICAST,
                next_hop: "fd00::1".parse().unwrap(),
                link_local: None,
                nlri: vec!["fd00:0:0:1::/64".parse().unwrap()],
            }),
            ..Update::default()
        }
    }

    fn decode(s: &str) -> Result<Message, DecodeError> {
        Message::decode(&hex(s), &OPTS)
    }

    fn body(attrs: &str, nlri: &str) -> Vec<u8> {
        let attrs = hex(attrs);
        let mut b = vec![0, 0];
        b.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
        b.extend_from_slice(&attrs);
        b.extend_from_slice(&hex(nlri));
        b
    }

    const ORIGIN_PATH_NH: &str = "40 01 01 00  40 02 06 02 01 0000fc00  40 03 04 0a000001";

    #[test]
    fn ipv4_announcement_round_trips() {
        assert_eq!(decode(ANNOUNCE_V4), Ok(Message::Update(announce_v4())));
        assert_eq!(
            Message::Update(announce_v4()).to_bytes(&OPTS).unwrap(),
            hex(ANNOUNCE_V4)
        );
    }

    #[test]
    fn ipv6_announcement_round_trips() {
        assert_eq!(decode(ANNOUNCE_V6), Ok(Message::Update(announce_v6())));
        assert_eq!(
            Message::Update(announce_v6()).to_bytes(&OPTS).unwrap(),
            hex(ANNOUNCE_V6)
        );
    }

    #[test]
    fn view_iterates_nlri_without_collecting() {
        let bytes = hex(ANNOUNCE_V4);
        let view = UpdateView::parse(&bytes[HEADER_LEN..], &OPTS).unwrap();
        assert_eq!(view.nlri().collect::<Vec<_>>(), announce_v4().nlri);
        assert_eq!(view.withdrawn().count(), 0);
        assert!(!view.is_treat_as_withdraw());
    }

    #[test]
    fn two_octet_as_path_reads_with_two_octet_options() {
        let b = body(
            "40 01 01 02  40 02 04 02 01 fde8  40 03 04 0a000001",
            "08 0a",
        );
        let u = Update::decode(&b, &CodecOptions::default()).unwrap();
        assert_eq!(u.attrs.as_path, Some(AsPath::sequence([65000])));
        assert_eq!(u.attrs.origin, Some(Origin::Incomplete));
        let mut out = Vec::new();
        u.encode_body(&CodecOptions::default(), &mut out).unwrap();
        assert_eq!(out, b);
    }

    #[test]
    fn all_known_attributes_round_trip() {
        let attrs = "40 01 01 01
            40 02 10 02 02 0000fc00 0000fde8 01 01 00000001
            40 03 04 0a000001
            80 04 04 00000064
            40 05 04 000000c8
            40 06 00
            c0 07 08 0000fde8 0a000009
            c0 08 08 fde80001 ffffff01
            80 09 04 0a000002
            80 0a 08 f4000001 f4000002
            c0 10 08 0002fde800000001";
        let b = body(attrs, "20 0a000005");
        let u = Update::decode(&b, &OPTS).unwrap();
        let a = &u.attrs;
        assert_eq!(a.origin, Some(Origin::Egp));
        assert_eq!(a.as_path.as_ref().map(AsPath::len), Some(3));
        assert_eq!(a.med, Some(100));
        assert_eq!(a.local_pref, Some(200));
        assert!(a.atomic_aggregate);
        assert_eq!(
            a.aggregator,
            Some(Aggregator {
                asn: Asn(65000),
                address: Ipv4Addr::new(10, 0, 0, 9)
            })
        );
        assert_eq!(
            a.communities,
            vec![Community(0xfde8_0001), Community::NO_EXPORT]
        );
        assert_eq!(a.originator_id, Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(
            a.cluster_list,
            vec![Ipv4Addr::new(244, 0, 0, 1), Ipv4Addr::new(244, 0, 0, 2)]
        );
        // Extended communities (16) are not interpreted but kept for re-advertisement.
        assert_eq!(
            a.other,
            vec![RawAttribute {
                flags: 0xc0,
                code: 16,
                value: hex("0002fde800000001")
            }]
        );
        let mut out = Vec::new();
        u.encode_body(&OPTS, &mut out).unwrap();
        assert_eq!(out, b);
    }

    #[test]
    fn end_of_rib_markers_are_recognised() {
        let v4 = hex("ffffffffffffffffffffffffffffffff 0017 02 0000 0000");
        let Ok(Message::Update(u)) = Message::decode(&v4, &OPTS) else {
            panic!()
        };
        assert_eq!(u.end_of_rib_family(), Some(Family::IPV4_UNICAST));
        assert_eq!(
            Message::Update(Update::end_of_rib(Family::IPV4_UNICAST))
                .to_bytes(&OPTS)
                .unwrap(),
            v4
        );
        let v6 = hex("ffffffffffffffffffffffffffffffff 001d 02 0000 0006 80 0f 03 0002 01");
        let view = UpdateView::parse(&v6[HEADER_LEN..], &OPTS).unwrap();
        assert_eq!(view.end_of_rib(), Some(Family::IPV6_UNICAST));
        let eor = Message::Update(Update::end_of_rib(Family::IPV6_UNICAST));
        assert_eq!(eor.to_bytes(&OPTS).unwrap(), v6);
        assert_eq!(announce_v4().end_of_rib_family(), None);
    }

    #[test]
    fn withdrawn_length_overrun_is_malformed_attribute_list() {
        let err = Update::decode(&hex("0005 1800"), &OPTS).unwrap_err();
        let n = err.notification();
        assert_eq!((n.code, n.subcode), (3, 1));
    }

    #[test]
    fn attribute_length_overrun_resets_with_malformed_attribute_list() {
        let b = body("40 01 05 00", "");
        let err = Update::decode(&b, &OPTS).unwrap_err();
        assert_eq!(
            err,
            DecodeError::MalformedAttributeList("attribute length overruns")
        );
    }

    #[test]
    fn bad_nlri_prefix_length_is_invalid_network_field() {
        let b = body(ORIGIN_PATH_NH, "21 0a000001 00");
        let n = Update::decode(&b, &OPTS).unwrap_err().notification();
        assert_eq!((n.code, n.subcode), (3, 10));
    }

    #[test]
    fn invalid_origin_is_treat_as_withdraw() {
        let b = body(
            "40 01 01 07  40 02 06 02 01 0000fc00  40 03 04 0a000001",
            "18 0a0000",
        );
        let view = UpdateView::parse(&b, &OPTS).unwrap();
        assert_eq!(view.attribute_error, Some(DecodeError::InvalidOrigin(7)));
        let u = view.to_update();
        assert_eq!(u.withdrawn, vec!["10.0.0.0/24".parse::<Ipv4Net>().unwrap()]);
        assert!(u.nlri.is_empty());
        assert!(u.attrs.is_empty());
    }

    #[test]
    fn malformed_as_path_is_treat_as_withdraw() {
        // Segment claims 2 ASNs, carries 1.
        let b = body(
            "40 01 01 00  40 02 06 02 02 0000fc00  40 03 04 0a000001",
            "18 0a0000",
        );
        let view = UpdateView::parse(&b, &OPTS).unwrap();
        assert_eq!(view.attribute_error, Some(DecodeError::MalformedAsPath));
        assert_eq!(view.attribute_error.unwrap().notification().subcode, 11);
    }

    #[test]
    fn missing_next_hop_is_treat_as_withdraw() {
        let b = body("40 01 01 00  40 02 00", "18 0a0000");
        let view = UpdateView::parse(&b, &OPTS).unwrap();
        assert_eq!(
            view.attribute_error,
            Some(DecodeError::MissingWellKnownAttribute(attr_code::NEXT_HOP))
        );
    }

    #[test]
    fn missing_attributes_on_a_pure_withdrawal_are_fine() {
        let b = hex("0004 18 0a0000 0000");
        let view = UpdateView::parse(&b, &OPTS).unwrap();
        assert!(view.attribute_error.is_none());
        assert_eq!(view.withdrawn().count(), 1);
    }

    #[test]
    fn wrong_flags_on_next_hop_are_treat_as_withdraw() {
        let b = body("40 01 01 00  40 02 00  80 03 04 0a000001", "18 0a0000");
        let view = UpdateView::parse(&b, &OPTS).unwrap();
        assert_eq!(
            view.attribute_error,
            Some(DecodeError::AttributeFlags {
                code: 3,
                flags: 0x80
            })
        );
    }

    #[test]
    fn zero_next_hop_is_treat_as_withdraw() {
        let b = body("40 01 01 00  40 02 00  40 03 04 00000000", "18 0a0000");
        let view = UpdateView::parse(&b, &OPTS).unwrap();
        assert!(matches!(
            view.attribute_error,
            Some(DecodeError::InvalidNextHop(_))
        ));
    }

    #[test]
    fn malformed_aggregator_is_discarded_not_withdrawn() {
        let b = body(&format!("{ORIGIN_PATH_NH} c0 07 03 000000"), "18 0a0000");
        let view = UpdateView::parse(&b, &OPTS).unwrap();
        assert!(view.attribute_error.is_none());
        assert_eq!(view.attrs.aggregator, None);
    }

    #[test]
    fn communities_of_odd_length_are_treat_as_withdraw() {
        let b = body(&format!("{ORIGIN_PATH_NH} c0 08 03 000000"), "18 0a0000");
        let view = UpdateView::parse(&b, &OPTS).unwrap();
        assert!(view.is_treat_as_withdraw());
    }

    #[test]
    fn unrecognized_well_known_attribute_resets_with_attribute_as_data() {
        let b = body(&format!("{ORIGIN_PATH_NH} 40 63 01 aa"), "18 0a0000");
        let n = Update::decode(&b, &OPTS).unwrap_err().notification();
        assert_eq!((n.code, n.subcode, n.data), (3, 2, hex("40 63 01 aa")));
    }

    #[test]
    fn unknown_optional_non_transitive_is_dropped() {
        let b = body(&format!("{ORIGIN_PATH_NH} 80 63 01 aa"), "18 0a0000");
        let u = Update::decode(&b, &OPTS).unwrap();
        assert!(u.attrs.other.is_empty());
    }

    #[test]
    fn repeated_mp_reach_resets_session() {
        let mp = "80 0e 1e 0002 01 10 fd000000000000000000000000000001 00 40 fd00000000000001";
        let b = body(&format!("40 01 01 00 40 02 00 {mp} {mp}"), "");
        let err = Update::decode(&b, &OPTS).unwrap_err();
        assert_eq!(err.notification().subcode, 1);
    }

    #[test]
    fn repeated_plain_attribute_keeps_the_first() {
        let b = body(&format!("{ORIGIN_PATH_NH} 40 01 01 02"), "18 0a0000");
        let u = Update::decode(&b, &OPTS).unwrap();
        assert_eq!(u.attrs.origin, Some(Origin::Igp));
    }

    #[test]
    fn mp_reach_with_bad_next_hop_length_is_optional_attribute_error() {
        let b = body("40 01 01 00 40 02 00 80 0e 08 0002 01 03 aabbcc 00 00", "");
        let n = Update::decode(&b, &OPTS).unwrap_err().notification();
        assert_eq!((n.code, n.subcode, n.data), (3, 9, vec![14]));
    }

    #[test]
    fn mp_reach_with_link_local_next_hop_is_read() {
        let b = body(
            "40 01 01 00 40 02 00 80 0e 2e 0002 01 20
             fd000000000000000000000000000001 fe800000000000000000000000000001 00
             40 fd00000000000001",
            "",
        );
        let u = Update::decode(&b, &OPTS).unwrap();
        let reach = u.mp_reach.unwrap();
        assert_eq!(reach.link_local, Some("fe80::1".parse().unwrap()));
    }

    #[test]
    fn treat_as_withdraw_covers_mp_reach_prefixes() {
        let b = body(
            "40 01 01 09 40 02 00 80 0e 1e 0002 01 10 fd000000000000000000000000000001 00 40 fd00000000000001",
            "",
        );
        let u = Update::decode(&b, &OPTS).unwrap();
        assert_eq!(
            u.mp_unreach,
            Some(MpUnreach {
                family: Family::IPV6_UNICAST,
                withdrawn: vec!["fd00:0:0:1::/64".parse().unwrap()],
            })
        );
        assert_eq!(u.mp_reach, None);
    }

    #[test]
    fn unsupported_family_in_mp_reach_is_ignored() {
        // AFI 1 SAFI 133 (flowspec).
        let b = body("40 01 01 00 40 02 00 80 0e 06 0001 85 00 00 00", "");
        let u = Update::decode(&b, &OPTS).unwrap();
        assert_eq!(u.mp_reach, None);
    }

    #[test]
    fn as4_path_from_a_2_octet_speaker_restores_4_octet_asns() {
        // AS_PATH [65001 23456 23456] (2-octet), AS4_PATH [4200000001 4200000002]:
        // the merged path is [65001 4200000001 4200000002] (RFC 6793 §4.2.3).
        let b = body(
            "40 01 01 00
             40 02 08 02 03 fde9 5ba0 5ba0
             40 03 04 0a000001
             c0 11 0a 02 02 fa56ea01 fa56ea02",
            "18 0a0000",
        );
        let u = Update::decode(&b, &CodecOptions::default()).unwrap();
        assert_eq!(
            u.attrs.as_path,
            Some(AsPath::sequence([65001, 4_200_000_001, 4_200_000_002]))
        );
        assert!(u.attrs.other.is_empty());
        // Re-encoding toward a 2-octet speaker carries the whole path in AS4_PATH again.
        let mut out = Vec::new();
        u.encode_body(&CodecOptions::default(), &mut out).unwrap();
        assert_eq!(Update::decode(&out, &CodecOptions::default()).unwrap(), u);
    }

    #[test]
    fn as4_path_longer_than_as_path_is_ignored() {
        let b = body(
            "40 01 01 00 40 02 04 02 01 5ba0 40 03 04 0a000001 c0 11 0a 02 02 fa56ea01 fa56ea02",
            "18 0a0000",
        );
        let u = Update::decode(&b, &CodecOptions::default()).unwrap();
        assert_eq!(u.attrs.as_path, Some(AsPath::sequence([23456])));
    }

    #[test]
    fn long_attribute_uses_extended_length() {
        let attrs = PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence(0..100)),
            next_hop: Some(Ipv4Addr::new(10, 0, 0, 1)),
            ..PathAttributes::default()
        };
        let u = Update {
            attrs,
            nlri: vec!["10.0.0.0/8".parse().unwrap()],
            ..Update::default()
        };
        let bytes = Message::Update(u.clone()).to_bytes(&OPTS).unwrap();
        // AS_PATH: flags 0x50 (well-known + extended length), length 0x0192 = 2 + 400.
        assert_eq!(&bytes[HEADER_LEN + 8..HEADER_LEN + 12], &hex("50 02 0192"));
        assert_eq!(Message::decode(&bytes, &OPTS), Ok(Message::Update(u)));
    }

    #[test]
    fn announcements_split_to_fit_4096_octets() {
        let prefixes: Vec<IpNet> = (0..2000u32)
            .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap()))
            .collect();
        let updates = announcements(&announce_v4().attrs, &prefixes, None, &OPTS);
        assert!(updates.len() > 1);
        let mut seen = 0;
        for u in &updates {
            let bytes = Message::Update(u.clone()).to_bytes(&OPTS).unwrap();
            assert!(bytes.len() <= MAX_MESSAGE_LEN);
            seen += u.nlri.len();
        }
        assert_eq!(seen, 2000);
        let w = withdrawals(&prefixes);
        assert_eq!(w.iter().map(|u| u.withdrawn.len()).sum::<usize>(), 2000);
        for u in &w {
            assert!(Message::Update(u.clone()).to_bytes(&OPTS).is_ok());
        }
    }

    #[test]
    fn as_path_helpers() {
        let mut p = AsPath::sequence([65001, 65002]);
        p.prepend(Asn(64512));
        assert_eq!(p.first_asn(), Some(Asn(64512)));
        assert_eq!(p.len(), 3);
        assert!(p.contains(Asn(65002)));
        p.segments.push(AsSegment {
            kind: SegmentType::Set,
            asns: vec![Asn(1), Asn(2)],
        });
        assert_eq!(p.len(), 4);
        assert!(AsPath::default().is_empty());
    }

    fn ipv4_net() -> impl Strategy<Value = Ipv4Net> {
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, l)| Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc())
    }

    fn ipv6_net() -> impl Strategy<Value = IpNet> {
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, l)| IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), l).unwrap().trunc()))
    }

    fn unicast_v4() -> impl Strategy<Value = Ipv4Addr> {
        (0x0100_0000u32..0xe000_0000).prop_map(Ipv4Addr::from)
    }

    fn segment() -> impl Strategy<Value = AsSegment> {
        (
            prop_oneof![
                Just(SegmentType::Set),
                Just(SegmentType::Sequence),
                Just(SegmentType::ConfedSequence),
                Just(SegmentType::ConfedSet)
            ],
            prop::collection::vec(any::<u32>().prop_map(Asn), 1..12),
        )
            .prop_map(|(kind, asns)| AsSegment { kind, asns })
    }

    prop_compose! {
        fn path_attributes()(
            origin in prop_oneof![Just(Origin::Igp), Just(Origin::Egp), Just(Origin::Incomplete)],
            segments in prop::collection::vec(segment(), 0..4),
            next_hop in unicast_v4(),
            med in any::<Option<u32>>(),
            local_pref in any::<Option<u32>>(),
            atomic_aggregate in any::<bool>(),
            aggregator in proptest::option::of((any::<u32>(), any::<u32>())),
            communities in prop::collection::vec(any::<u32>().prop_map(Community), 0..5),
            originator_id in proptest::option::of(any::<u32>().prop_map(Ipv4Addr::from)),
            cluster_list in prop::collection::vec(any::<u32>().prop_map(Ipv4Addr::from), 0..4),
            other in prop::collection::btree_map(
                prop_oneof![Just(11u8), Just(16), Just(19), Just(32), Just(40)],
                prop::collection::vec(any::<u8>(), 0..300),
                0..3,
            ),
        ) -> PathAttributes {
            PathAttributes {
                origin: Some(origin),
                as_path: Some(AsPath { segments }),
                next_hop: Some(next_hop),
                med,
                local_pref,
                atomic_aggregate,
                aggregator: aggregator
                    .map(|(a, b)| Aggregator { asn: Asn(a), address: Ipv4Addr::from(b) }),
                communities,
                originator_id,
                cluster_list,
                other: other
                    .into_iter()
                    .map(|(code, value)| RawAttribute { flags: 0xc0, code, value })
                    .collect(),
            }
        }
    }

    prop_compose! {
        fn update()(
            withdrawn in prop::collection::vec(ipv4_net(), 0..20),
            attrs in path_attributes(),
            nlri in prop::collection::vec(ipv4_net(), 0..20),
            mp_reach in proptest::option::of((
                any::<u128>(),
                proptest::option::of(any::<u128>()),
                prop::collection::vec(ipv6_net(), 0..10),
            )),
            mp_unreach in proptest::option::of(prop::collection::vec(ipv6_net(), 0..10)),
        ) -> Update {
            Update {
                withdrawn,
                attrs,
                nlri,
                mp_reach: mp_reach.map(|(nh, ll, nlri)| MpReach {
                    family: Family::IPV6_UNICAST,
                    next_hop: IpAddr::V6(Ipv6Addr::from(nh)),
                    link_local: ll.map(Ipv6Addr::from),
                    nlri,
                }),
                mp_unreach: mp_unreach
                    .map(|withdrawn| MpUnreach { family: Family::IPV6_UNICAST, withdrawn }),
            }
        }
    }

    proptest! {
        #[test]
        fn update_round_trips(u in update(), four_octet in any::<bool>()) {
            let opts = CodecOptions { four_octet_asn: four_octet };
            let mut u = u;
            if !four_octet {
                // Toward a 2-octet speaker large ASNs travel in AS4_PATH/AS4_AGGREGATOR
                // (RFC 6793), except in confederation segments, which become AS_TRANS.
                for seg in u.attrs.as_path.iter_mut().flat_map(|p| p.segments.iter_mut()) {
                    if matches!(seg.kind, SegmentType::ConfedSequence | SegmentType::ConfedSet) {
                        for asn in &mut seg.asns {
                            asn.0 &= 0xffff;
                        }
                    }
                }
                // RFC 5065: confederation segments only ever lead the path.
                if let Some(path) = &mut u.attrs.as_path {
                    path.segments.sort_by_key(|s| {
                        !matches!(s.kind, SegmentType::ConfedSequence | SegmentType::ConfedSet)
                    });
                }
                // AS_TRANS itself in a 2-octet AGGREGATOR means "see AS4_AGGREGATOR".
                if let Some(agg) = &mut u.attrs.aggregator
                    && agg.asn == Asn::TRANS {
                        agg.asn = Asn(1);
                    }
            }
            let msg = Message::Update(u);
            match msg.to_bytes(&opts) {
                Ok(bytes) => prop_assert_eq!(Message::decode(&bytes, &opts), Ok(msg)),
                Err(EncodeError::TooLong { .. }) => {}
                Err(e) => prop_assert!(false, "encode failed: {e}"),
            }
        }

        #[test]
        fn decoding_random_bodies_never_panics(kind in 1u8..=5, body in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode_body(kind, &body, &OPTS);
            let _ = Message::decode_body(kind, &body, &CodecOptions::default());
        }

        #[test]
        fn decoding_mutated_updates_never_panics(
            u in update(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let Ok(mut bytes) = Message::Update(u).to_bytes(&OPTS) else { return Ok(()) };
            for (i, b) in flips {
                let at = i.index(bytes.len() - HEADER_LEN) + HEADER_LEN;
                bytes[at] = b;
            }
            let _ = Message::decode(&bytes, &OPTS);
        }
    }
}
