//! The hot path to the kernel: nftables deltas as one nfnetlink batch
//! (`NFNL_MSG_BATCH_BEGIN` … `NFNL_MSG_BATCH_END`) sent with one `sendmsg` on a
//! `NETLINK_NETFILTER` socket, then the acks read back. A batch is one nftables transaction: every
//! message commits or none does.
//!
//! Only what the common deltas need is encoded here: set and verdict-map elements
//! (`NFT_MSG_NEWSETELEM` / `NFT_MSG_DELSETELEM`), hash sets (`NFT_MSG_NEWSET` with the key type
//! and user data `nft` 1.0 sends, `NFT_MSG_DELSET`), regular chains (`NFT_MSG_NEWCHAIN`, flush
//! by `NFT_MSG_DELRULE` without a handle, `NFT_MSG_DELCHAIN`), the handful of rule shapes an
//! endpoint chain is made of ([`EndpointRule`]) and the policy/profile rules, with the constant
//! anonymous sets of their port, protocol and CIDR lists ([`PolicyRule`]: the messages `nft`
//! itself sends for them; a test checks they list back identically). Everything else (named
//! interval sets, resyncs) stays with `nft` text, see [`crate::nft`].
//!
//! The kernel handles a batch synchronously inside `sendmsg`, so by the time it returns every ack
//! is queued on the socket: they are read without blocking.

use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::time::Duration;
use std::time::Instant;

use netlink_sys::Socket;
use netlink_sys::SocketAddr;
use netlink_sys::protocols::NETLINK_NETFILTER;

use crate::error::Error;
use crate::render::PASS_MARK;
use crate::render::SetKind;
use crate::render::TABLE;

const NLMSG_HEADER: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
/// Set on an error message that carries extended-ack TLVs.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFPROTO_INET: u8 = 1;
const AF_UNSPEC: u8 = 0;

const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
/// The name template of an anonymous set (the kernel numbers it).
const ANONYMOUS_SET: &str = "__set%d";
/// Batch-local ids of anonymous sets start here (named sets of a batch count from 1).
const FIRST_ANONYMOUS_ID: u32 = 0x4000_0000;
const NFTA_RANGE_SREG: u16 = 1;
const NFTA_RANGE_OP: u16 = 2;
const NFTA_RANGE_FROM_DATA: u16 = 3;
const NFTA_RANGE_TO_DATA: u16 = 4;
const NFTA_LOG_PREFIX: u16 = 2;

const NFT_META_MARK: u32 = 3;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_RANGE_EQ: u32 = 0;
const NFT_RANGE_NEQ: u32 = 1;
const NFT_LOOKUP_F_INV: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG32_00: u32 = 8;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// Longest interface name (`IFNAMSIZ` minus the NUL).
const IFNAME_MAX: usize = 15;
/// Nested attributes carry a 16-bit length: element lists are split well below it.
const MAX_ELEMENT_LIST: usize = 60_000;
/// Largest batch sent in one `sendmsg` (the socket's default send buffer is ~208 KiB).
pub const MAX_BATCH: usize = 150_000;

/// A verdict, as a verdict-map value or a rule's final statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `jump <chain>`.
    Jump(String),
    /// `goto <chain>`.
    Goto(String),
    /// `return`.
    Return,
}

/// One set or map element: its key in kernel byte layout and, in a verdict map, its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The key's bytes (addresses in network order, concatenations padded to 4 bytes a field).
    pub key: Vec<u8>,
    /// The value, for verdict maps.
    pub verdict: Option<Verdict>,
}

impl Element {
    /// The element `text` (as rendered for nft) of a set of `kind`; `None` if it does not parse.
    pub fn of_set(kind: SetKind, text: &str) -> Option<Element> {
        let key = match kind {
            SetKind::Hosts4 => text.parse::<Ipv4Addr>().ok()?.octets().to_vec(),
            SetKind::Hosts6 => text.parse::<Ipv6Addr>().ok()?.octets().to_vec(),
            SetKind::NamedPorts4 | SetKind::NamedPorts6 => {
                let mut parts = text.split(" . ");
                let (address, protocol, port) = (parts.next()?, parts.next()?, parts.next()?);
                if parts.next().is_some() {
                    return None;
                }
                let mut key = if kind == SetKind::NamedPorts4 {
                    address.parse::<Ipv4Addr>().ok()?.octets().to_vec()
                } else {
                    address.parse::<Ipv6Addr>().ok()?.octets().to_vec()
                };
                key.extend([protocol.parse::<u8>().ok()?, 0, 0, 0]);
                key.extend(port.parse::<u16>().ok()?.to_be_bytes());
                key.extend([0, 0]);
                key
            }
            SetKind::Nets4 | SetKind::Nets6 => return None,
        };
        Some(Element { key, verdict: None })
    }

    /// A verdict-map element keyed on interface name `ifname` (`type ifname`: 16 bytes, NUL
    /// padded); `None` if the name is too long or contains a NUL.
    pub fn of_interface(ifname: &str, verdict: Option<Verdict>) -> Option<Element> {
        if ifname.is_empty() || ifname.len() > IFNAME_MAX || ifname.contains('\0') {
            return None;
        }
        let mut key = ifname.as_bytes().to_vec();
        key.resize(IFNAME_MAX + 1, 0);
        Some(Element { key, verdict })
    }

    /// An element of a verdict map keyed on a device group (`type devgroup`: 4 bytes, host
    /// order).
    pub fn of_group(group: u32, verdict: Option<Verdict>) -> Element {
        Element {
            key: group.to_ne_bytes().to_vec(),
            verdict,
        }
    }
}

/// The rule shapes of an endpoint chain (see `render::endpoint_chain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointRule {
    /// `meta mark set meta mark & ~PASS_MARK`.
    ClearPassMark,
    /// `jump <chain>`.
    Jump(String),
    /// `meta mark & PASS_MARK == 0 jump <chain>`.
    JumpUnlessPassed(String),
    /// `meta mark & PASS_MARK == 0 drop`.
    DropUnlessPassed,
    /// `drop`.
    Drop,
}

impl EndpointRule {
    /// Parses one rule as rendered for nft; `None` if it is not an endpoint-chain shape.
    pub fn parse(text: &str) -> Option<EndpointRule> {
        let clear = format!("meta mark set meta mark & {:#010x}", !PASS_MARK);
        let unless_passed = format!("meta mark & {PASS_MARK:#010x} == 0 ");
        if text == clear {
            return Some(EndpointRule::ClearPassMark);
        }
        if text == "drop" {
            return Some(EndpointRule::Drop);
        }
        if let Some(chain) = text.strip_prefix("jump ") {
            return plain_chain(chain).map(|c| EndpointRule::Jump(c.to_string()));
        }
        let rest = text.strip_prefix(&unless_passed)?;
        if rest == "drop" {
            return Some(EndpointRule::DropUnlessPassed);
        }
        let chain = rest.strip_prefix("jump ")?;
        plain_chain(chain).map(|c| EndpointRule::JumpUnlessPassed(c.to_string()))
    }

    /// The rule's expressions.
    fn encode(&self, out: &mut Vec<u8>) {
        let mark_and = |out: &mut Vec<u8>, mask: u32| {
            expr(out, "meta", |o| {
                attr_u32(o, NFTA_META_DREG, NFT_REG_1);
                attr_u32(o, NFTA_META_KEY, NFT_META_MARK);
            });
            expr(out, "bitwise", |o| {
                attr_u32(o, NFTA_BITWISE_SREG, NFT_REG_1);
                attr_u32(o, NFTA_BITWISE_DREG, NFT_REG_1);
                attr_u32(o, NFTA_BITWISE_LEN, 4);
                nest(o, NFTA_BITWISE_MASK, |o| {
                    attr(o, NFTA_DATA_VALUE, &mask.to_ne_bytes());
                });
                nest(o, NFTA_BITWISE_XOR, |o| attr(o, NFTA_DATA_VALUE, &[0; 4]));
            });
        };
        let unless_passed = |out: &mut Vec<u8>| {
            mark_and(out, PASS_MARK);
            expr(out, "cmp", |o| {
                attr_u32(o, NFTA_CMP_SREG, NFT_REG_1);
                attr_u32(o, NFTA_CMP_OP, NFT_CMP_EQ);
                nest(o, NFTA_CMP_DATA, |o| attr(o, NFTA_DATA_VALUE, &[0; 4]));
            });
        };
        match self {
            EndpointRule::ClearPassMark => {
                mark_and(out, !PASS_MARK);
                expr(out, "meta", |o| {
                    attr_u32(o, NFTA_META_KEY, NFT_META_MARK);
                    attr_u32(o, NFTA_META_SREG, NFT_REG_1);
                });
            }
            EndpointRule::Jump(chain) => immediate(out, &Verdict::Jump(chain.clone())),
            EndpointRule::JumpUnlessPassed(chain) => {
                unless_passed(out);
                immediate(out, &Verdict::Jump(chain.clone()));
            }
            EndpointRule::DropUnlessPassed => {
                unless_passed(out);
                immediate(out, &Verdict::Drop);
            }
            EndpointRule::Drop => immediate(out, &Verdict::Drop),
        }
    }
}

/// One expression of a [`PolicyRule`], as `nft` encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    /// `meta load <key> => reg`.
    Meta { key: u32, dreg: u32 },
    /// `meta set <key> with reg`.
    MetaSet { key: u32, sreg: u32 },
    /// `payload load <len>b @ <base> + <offset> => reg`.
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `cmp <op> reg <data>`.
    Cmp { sreg: u32, op: u32, data: Vec<u8> },
    /// `range <op> reg <from> <to>`.
    Range {
        sreg: u32,
        op: u32,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// `lookup reg set <name>` (`invert`: not in it).
    Lookup {
        set: String,
        sreg: u32,
        invert: bool,
    },
    /// `lookup reg` in an anonymous set (`{ 80, 443 }`) created with the rule.
    AnonymousLookup {
        set: AnonymousSet,
        sreg: u32,
        invert: bool,
    },
    /// `bitwise reg = (reg & mask) ^ xor`, on a 32-bit register.
    Bitwise { reg: u32, mask: u32, xor: u32 },
    /// `bitwise reg = (reg & mask) ^ 0`, on `mask.len()` bytes (an address masked to its
    /// prefix).
    Mask { reg: u32, mask: Vec<u8> },
    /// `log prefix <prefix>`.
    Log { prefix: String },
    /// The rule's verdict.
    Verdict(Verdict),
}

/// A policy or profile chain rule (see `render::RuleRenderer`), parsed from its rendering into
/// the expressions `nft` would send for it: a list of ports, protocols or CIDRs becomes an
/// anonymous set created in the same batch (one element is matched directly, as nft does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    exprs: Vec<Expr>,
}

/// The constant anonymous set of a rule (`th dport { 80, 443 }`, `ip saddr { 10.0.0.0/8 }`), as
/// `nft` creates it: elements in kernel layout; in an interval set, each range as its start and
/// (flagged as an interval end) the value after its end, from 0 on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AnonymousSet {
    key_type: u32,
    key_len: u32,
    interval: bool,
    /// Key bytes, and whether it ends an interval.
    elements: Vec<(Vec<u8>, bool)>,
}

impl AnonymousSet {
    /// A set of `width`-byte big-endian values (ports, protocols, addresses) from inclusive
    /// ranges; an interval set when any range holds more than one value or `interval`.
    fn of_ranges(
        key_type: u32,
        width: usize,
        mut ranges: Vec<(u128, u128)>,
        interval: bool,
    ) -> Option<AnonymousSet> {
        if ranges.is_empty() || width == 0 || width > 16 {
            return None;
        }
        let max = if width == 16 {
            u128::MAX
        } else {
            (1u128 << (8 * width)) - 1
        };
        if ranges.iter().any(|(a, b)| a > b || *b > max) {
            return None;
        }
        let bytes = |v: u128| v.to_be_bytes()[16 - width..].to_vec();
        let key_len = u32::try_from(width).ok()?;
        let interval = interval || ranges.iter().any(|(a, b)| a != b);
        ranges.sort_unstable();
        if !interval {
            ranges.dedup();
            let elements = ranges.iter().map(|(a, _)| (bytes(*a), false)).collect();
            return Some(AnonymousSet {
                key_type,
                key_len,
                interval,
                elements,
            });
        }
        // Merged, as nft merges overlapping and adjacent ranges.
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let mut elements = Vec::with_capacity(merged.len() * 2 + 1);
        if merged[0].0 > 0 {
            elements.push((bytes(0), true));
        }
        for (a, b) in &merged {
            elements.push((bytes(*a), false));
            if *b < max {
                elements.push((bytes(b + 1), true));
            }
        }
        Some(AnonymousSet {
            key_type,
            key_len,
            interval,
            elements,
        })
    }
}

/// The tokens between `{` (already read) and `}`, commas dropped.
fn braced<'a>(tokens: &mut impl Iterator<Item = &'a str>) -> Option<Vec<&'a str>> {
    let mut items = Vec::new();
    loop {
        let token = tokens.next()?;
        if token == "}" {
            return Some(items);
        }
        let item = token.trim_end_matches(',');
        if !item.is_empty() {
            items.push(item);
        }
    }
}

/// A port (`80`) or port range (`8000-8100`).
fn port_range(item: &str) -> Option<(u128, u128)> {
    match item.split_once('-') {
        None => {
            let port: u16 = item.parse().ok()?;
            Some((u128::from(port), u128::from(port)))
        }
        Some((from, to)) => {
            let from: u16 = from.parse().ok()?;
            let to: u16 = to.parse().ok()?;
            Some((u128::from(from), u128::from(to)))
        }
    }
}

/// The expressions nft uses to match one CIDR or address of the family at `offset` in the
/// network header: the prefix's whole bytes compared, or the address masked then compared.
fn one_net(item: &str, v6: bool, offset: u32, invert: bool) -> Option<Vec<Expr>> {
    let (low, high) = net_range(item, v6)?;
    let width: usize = if v6 { 16 } else { 4 };
    let bits = u32::try_from(width * 8).ok()?;
    let prefix = bits - (high - low).count_ones();
    let bytes = low.to_be_bytes()[16 - width..].to_vec();
    let mask = (!(high - low)).to_be_bytes()[16 - width..].to_vec();
    let op = if invert { NFT_CMP_NEQ } else { NFT_CMP_EQ };
    let len = u32::try_from(width).ok()?;
    Some(if prefix == bits {
        vec![
            payload(NFT_PAYLOAD_NETWORK_HEADER, offset, len, NFT_REG_1),
            cmp(op, bytes),
        ]
    } else if prefix > 0 && prefix % 8 == 0 {
        let whole = usize::try_from(prefix / 8).ok()?;
        vec![
            payload(NFT_PAYLOAD_NETWORK_HEADER, offset, prefix / 8, NFT_REG_1),
            cmp(op, bytes[..whole].to_vec()),
        ]
    } else {
        vec![
            payload(NFT_PAYLOAD_NETWORK_HEADER, offset, len, NFT_REG_1),
            Expr::Mask {
                reg: NFT_REG_1,
                mask,
            },
            cmp(op, bytes),
        ]
    })
}

/// A CIDR (`10.0.0.0/8`) or address of the family as an inclusive range of addresses.
fn net_range(item: &str, v6: bool) -> Option<(u128, u128)> {
    let (address, prefix) = match item.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix.parse::<u32>().ok()?)),
        None => (item, None),
    };
    let (value, bits) = if v6 {
        (u128::from(address.parse::<Ipv6Addr>().ok()?), 128)
    } else {
        (u128::from(u32::from(address.parse::<Ipv4Addr>().ok()?)), 32)
    };
    let prefix = prefix.unwrap_or(bits);
    if prefix > bits {
        return None;
    }
    let host = 1u128
        .checked_shl(bits - prefix)
        .map_or(u128::MAX, |v| v - 1);
    Some((value & !host, value | host))
}

impl PolicyRule {
    /// Parses one rule as rendered for nft; `None` if it has a shape not encoded here.
    pub fn parse(text: &str) -> Option<PolicyRule> {
        let mut exprs = Vec::new();
        // The log prefix is the only quoted (and space-holding) part; it comes last but for
        // the verdict.
        let (text, log) = match text.split_once("log prefix \"") {
            Some((before, rest)) => {
                let (prefix, after) = rest.split_once('"')?;
                if !after.trim().is_empty() {
                    return None;
                }
                (before, Some(prefix.to_string()))
            }
            None => (text, None),
        };
        let mut tokens = text.split_whitespace().peekable();
        let mut verdict = None;
        while let Some(token) = tokens.next() {
            if verdict.is_some() {
                return None; // nothing after the verdict
            }
            match token {
                "meta" => match tokens.next()? {
                    "nfproto" => {
                        let family = match tokens.next()? {
                            "ipv4" => NFPROTO_IPV4,
                            "ipv6" => NFPROTO_IPV6,
                            _ => return None,
                        };
                        exprs.push(Expr::Meta {
                            key: NFT_META_NFPROTO,
                            dreg: NFT_REG_1,
                        });
                        exprs.push(cmp(NFT_CMP_EQ, vec![family]));
                    }
                    "l4proto" => {
                        let op = negation(&mut tokens);
                        exprs.push(Expr::Meta {
                            key: NFT_META_L4PROTO,
                            dreg: NFT_REG_1,
                        });
                        if tokens.next_if_eq(&"{").is_some() {
                            let protocols = braced(&mut tokens)?
                                .iter()
                                .map(|p| p.parse::<u8>().ok())
                                .collect::<Option<Vec<_>>>()?;
                            if let [protocol] = protocols[..] {
                                // nft matches a one-element set directly.
                                exprs.push(cmp(op, vec![protocol]));
                                continue;
                            }
                            let ranges = protocols
                                .iter()
                                .map(|p| (u128::from(*p), u128::from(*p)))
                                .collect();
                            exprs.push(Expr::AnonymousLookup {
                                set: AnonymousSet::of_ranges(12, 1, ranges, false)?,
                                sreg: NFT_REG_1,
                                invert: op == NFT_CMP_NEQ,
                            });
                            continue;
                        }
                        let protocol: u8 = tokens.next()?.parse().ok()?;
                        exprs.push(cmp(op, vec![protocol]));
                    }
                    "mark" => {
                        // meta mark set meta mark | <bits>
                        for expected in ["set", "meta", "mark", "|"] {
                            if tokens.next()? != expected {
                                return None;
                            }
                        }
                        let bits = tokens.next()?.strip_prefix("0x")?;
                        let bits = u32::from_str_radix(bits, 16).ok()?;
                        exprs.push(Expr::Meta {
                            key: NFT_META_MARK,
                            dreg: NFT_REG_1,
                        });
                        exprs.push(Expr::Bitwise {
                            reg: NFT_REG_1,
                            mask: !bits,
                            xor: bits,
                        });
                        exprs.push(Expr::MetaSet {
                            key: NFT_META_MARK,
                            sreg: NFT_REG_1,
                        });
                    }
                    _ => return None,
                },
                "ip" | "ip6" => {
                    let v6 = token == "ip6";
                    let (len, offset) = match (tokens.next()?, v6) {
                        ("saddr", false) => (4, 12),
                        ("daddr", false) => (4, 16),
                        ("saddr", true) => (16, 8),
                        ("daddr", true) => (16, 24),
                        _ => return None,
                    };
                    if tokens.peek() == Some(&".") {
                        // <address> . meta l4proto . th dport @set
                        for expected in [".", "meta", "l4proto", "."] {
                            if tokens.next()? != expected {
                                return None;
                            }
                        }
                        if tokens.next()? != "th" {
                            return None;
                        }
                        let port_offset = port_offset(tokens.next()?)?;
                        let invert = negation(&mut tokens) == NFT_CMP_NEQ;
                        let set = set_name(tokens.next()?)?;
                        let words = len / 4;
                        exprs.push(payload(NFT_PAYLOAD_NETWORK_HEADER, offset, len, NFT_REG_1));
                        exprs.push(Expr::Meta {
                            key: NFT_META_L4PROTO,
                            dreg: NFT_REG32_00 + words,
                        });
                        exprs.push(payload(
                            NFT_PAYLOAD_TRANSPORT_HEADER,
                            port_offset,
                            2,
                            NFT_REG32_00 + words + 1,
                        ));
                        exprs.push(Expr::Lookup {
                            set,
                            sreg: NFT_REG_1,
                            invert,
                        });
                        continue;
                    }
                    let invert = negation(&mut tokens) == NFT_CMP_NEQ;
                    exprs.push(payload(NFT_PAYLOAD_NETWORK_HEADER, offset, len, NFT_REG_1));
                    if tokens.next_if_eq(&"{").is_some() {
                        let items = braced(&mut tokens)?;
                        if let [item] = items[..] {
                            // nft matches a one-element set directly.
                            exprs.pop();
                            exprs.extend(one_net(item, v6, offset, invert)?);
                            continue;
                        }
                        let ranges = items
                            .iter()
                            .map(|n| net_range(n, v6))
                            .collect::<Option<Vec<_>>>()?;
                        let key_type = if v6 { 8 } else { 7 };
                        let width = usize::try_from(len).ok()?;
                        exprs.push(Expr::AnonymousLookup {
                            set: AnonymousSet::of_ranges(key_type, width, ranges, true)?,
                            sreg: NFT_REG_1,
                            invert,
                        });
                        continue;
                    }
                    let set = set_name(tokens.next()?)?;
                    exprs.push(Expr::Lookup {
                        set,
                        sreg: NFT_REG_1,
                        invert,
                    });
                }
                "th" => {
                    let offset = port_offset(tokens.next()?)?;
                    let negated = negation(&mut tokens) == NFT_CMP_NEQ;
                    if tokens.next()? != "{" {
                        return None;
                    }
                    let items = braced(&mut tokens)?;
                    exprs.push(payload(NFT_PAYLOAD_TRANSPORT_HEADER, offset, 2, NFT_REG_1));
                    if items.len() > 1 {
                        // Several ports: an anonymous set.
                        let ranges = items
                            .iter()
                            .map(|p| port_range(p))
                            .collect::<Option<Vec<_>>>()?;
                        exprs.push(Expr::AnonymousLookup {
                            set: AnonymousSet::of_ranges(13, 2, ranges, false)?,
                            sreg: NFT_REG_1,
                            invert: negated,
                        });
                        continue;
                    }
                    let element = items.first()?;
                    match element.split_once('-') {
                        None => {
                            let port: u16 = element.parse().ok()?;
                            let op = if negated { NFT_CMP_NEQ } else { NFT_CMP_EQ };
                            exprs.push(cmp(op, port.to_be_bytes().to_vec()));
                        }
                        Some((from, to)) => {
                            let from: u16 = from.parse().ok()?;
                            let to: u16 = to.parse().ok()?;
                            exprs.push(Expr::Range {
                                sreg: NFT_REG_1,
                                op: if negated { NFT_RANGE_NEQ } else { NFT_RANGE_EQ },
                                from: from.to_be_bytes().to_vec(),
                                to: to.to_be_bytes().to_vec(),
                            });
                        }
                    }
                }
                "icmp" | "icmpv6" => {
                    let offset = match tokens.next()? {
                        "type" => 0,
                        "code" => 1,
                        _ => return None,
                    };
                    let op = negation(&mut tokens);
                    let value: u8 = tokens.next()?.parse().ok()?;
                    exprs.push(payload(NFT_PAYLOAD_TRANSPORT_HEADER, offset, 1, NFT_REG_1));
                    exprs.push(cmp(op, vec![value]));
                }
                "accept" => verdict = Some(Verdict::Accept),
                "drop" => verdict = Some(Verdict::Drop),
                "return" => verdict = Some(Verdict::Return),
                _ => return None,
            }
        }
        if let Some(prefix) = log {
            if verdict.is_some() {
                return None;
            }
            exprs.push(Expr::Log { prefix });
        }
        exprs.extend(verdict.map(Expr::Verdict));
        Some(PolicyRule { exprs })
    }

    /// The anonymous sets of the rule, in order.
    fn anonymous_sets(&self) -> impl Iterator<Item = &AnonymousSet> {
        self.exprs.iter().filter_map(|e| match e {
            Expr::AnonymousLookup { set, .. } => Some(set),
            _ => None,
        })
    }

    /// The rule's expressions; `anonymous_ids` are the batch ids of its anonymous sets, in
    /// order.
    fn encode(&self, out: &mut Vec<u8>, anonymous_ids: &[u32]) {
        let mut ids = anonymous_ids.iter();
        for e in &self.exprs {
            match e {
                Expr::AnonymousLookup { sreg, invert, .. } => {
                    let id = ids.next().copied().unwrap_or(0);
                    expr(out, "lookup", |o| {
                        attr_str(o, NFTA_LOOKUP_SET, ANONYMOUS_SET);
                        attr_u32(o, NFTA_LOOKUP_SREG, *sreg);
                        attr_u32(o, NFTA_LOOKUP_SET_ID, id);
                        if *invert {
                            attr_u32(o, NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
                        }
                    });
                }
                Expr::Meta { key, dreg } => expr(out, "meta", |o| {
                    attr_u32(o, NFTA_META_DREG, *dreg);
                    attr_u32(o, NFTA_META_KEY, *key);
                }),
                Expr::MetaSet { key, sreg } => expr(out, "meta", |o| {
                    attr_u32(o, NFTA_META_KEY, *key);
                    attr_u32(o, NFTA_META_SREG, *sreg);
                }),
                Expr::Payload {
                    base,
                    offset,
                    len,
                    dreg,
                } => expr(out, "payload", |o| {
                    attr_u32(o, NFTA_PAYLOAD_DREG, *dreg);
                    attr_u32(o, NFTA_PAYLOAD_BASE, *base);
                    attr_u32(o, NFTA_PAYLOAD_OFFSET, *offset);
                    attr_u32(o, NFTA_PAYLOAD_LEN, *len);
                }),
                Expr::Cmp { sreg, op, data } => expr(out, "cmp", |o| {
                    attr_u32(o, NFTA_CMP_SREG, *sreg);
                    attr_u32(o, NFTA_CMP_OP, *op);
                    nest(o, NFTA_CMP_DATA, |o| attr(o, NFTA_DATA_VALUE, data));
                }),
                Expr::Range { sreg, op, from, to } => expr(out, "range", |o| {
                    attr_u32(o, NFTA_RANGE_SREG, *sreg);
                    attr_u32(o, NFTA_RANGE_OP, *op);
                    nest(o, NFTA_RANGE_FROM_DATA, |o| attr(o, NFTA_DATA_VALUE, from));
                    nest(o, NFTA_RANGE_TO_DATA, |o| attr(o, NFTA_DATA_VALUE, to));
                }),
                Expr::Lookup { set, sreg, invert } => expr(out, "lookup", |o| {
                    attr_str(o, NFTA_LOOKUP_SET, set);
                    attr_u32(o, NFTA_LOOKUP_SREG, *sreg);
                    if *invert {
                        attr_u32(o, NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
                    }
                }),
                Expr::Bitwise { reg, mask, xor } => expr(out, "bitwise", |o| {
                    attr_u32(o, NFTA_BITWISE_SREG, *reg);
                    attr_u32(o, NFTA_BITWISE_DREG, *reg);
                    attr_u32(o, NFTA_BITWISE_LEN, 4);
                    nest(o, NFTA_BITWISE_MASK, |o| {
                        attr(o, NFTA_DATA_VALUE, &mask.to_ne_bytes());
                    });
                    nest(o, NFTA_BITWISE_XOR, |o| {
                        attr(o, NFTA_DATA_VALUE, &xor.to_ne_bytes());
                    });
                }),
                Expr::Mask { reg, mask } => expr(out, "bitwise", |o| {
                    attr_u32(o, NFTA_BITWISE_SREG, *reg);
                    attr_u32(o, NFTA_BITWISE_DREG, *reg);
                    attr_u32(o, NFTA_BITWISE_LEN, u32::try_from(mask.len()).unwrap_or(0));
                    nest(o, NFTA_BITWISE_MASK, |o| attr(o, NFTA_DATA_VALUE, mask));
                    nest(o, NFTA_BITWISE_XOR, |o| {
                        attr(o, NFTA_DATA_VALUE, &vec![0; mask.len()]);
                    });
                }),
                Expr::Log { prefix } => expr(out, "log", |o| {
                    attr_str(o, NFTA_LOG_PREFIX, prefix);
                }),
                Expr::Verdict(verdict) => immediate(out, verdict),
            }
        }
    }
}

/// `!=` next: consumed, and the inequality; else equality.
fn negation<'a>(tokens: &mut std::iter::Peekable<impl Iterator<Item = &'a str>>) -> u32 {
    if tokens.next_if_eq(&"!=").is_some() {
        NFT_CMP_NEQ
    } else {
        NFT_CMP_EQ
    }
}

fn cmp(op: u32, data: Vec<u8>) -> Expr {
    Expr::Cmp {
        sreg: NFT_REG_1,
        op,
        data,
    }
}

fn payload(base: u32, offset: u32, len: u32, dreg: u32) -> Expr {
    Expr::Payload {
        base,
        offset,
        len,
        dreg,
    }
}

fn port_offset(token: &str) -> Option<u32> {
    match token {
        "sport" => Some(0),
        "dport" => Some(2),
        _ => None,
    }
}

/// `@<name>` of one of our named sets.
fn set_name(token: &str) -> Option<String> {
    let name = token.strip_prefix('@')?;
    plain_chain(name).map(str::to_string)
}

/// One change in a batch, in table `inet felis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Adds elements to a set or map (existing identical elements are no error).
    AddElements {
        /// Set or map name.
        set: String,
        /// The elements.
        elements: Vec<Element>,
    },
    /// Deletes elements from a set or map (by key).
    DeleteElements {
        /// Set or map name.
        set: String,
        /// The elements.
        elements: Vec<Element>,
    },
    /// Creates a regular chain (an existing one is no error).
    AddChain(String),
    /// Deletes every rule of a chain.
    FlushChain(String),
    /// Deletes a chain (and its rules).
    DeleteChain(String),
    /// Appends a rule to a chain.
    AddRule {
        /// Chain name.
        chain: String,
        /// The rule.
        rule: EndpointRule,
    },
    /// Creates a named hash set of `kind` (not an interval set), as `nft` declares it.
    AddSet {
        /// Set name.
        set: String,
        /// Its type.
        kind: SetKind,
        /// Identifies the set within the batch.
        id: u32,
    },
    /// Deletes a set (and its elements); no rule may refer to it.
    DeleteSet(String),
    /// Appends a policy or profile rule to a chain.
    AddPolicyRule {
        /// Chain name.
        chain: String,
        /// The rule.
        rule: PolicyRule,
    },
}

impl Op {
    /// A short description for error messages.
    pub fn describe(&self) -> String {
        match self {
            Op::AddElements { set, elements } => {
                format!("add {} element(s) to {set}", elements.len())
            }
            Op::DeleteElements { set, elements } => {
                format!("delete {} element(s) from {set}", elements.len())
            }
            Op::AddChain(chain) => format!("add chain {chain}"),
            Op::FlushChain(chain) => format!("flush chain {chain}"),
            Op::DeleteChain(chain) => format!("delete chain {chain}"),
            Op::AddRule { chain, rule } => format!("add rule {rule:?} to chain {chain}"),
            Op::AddPolicyRule { chain, rule } => {
                format!(
                    "add rule of {} expressions to chain {chain}",
                    rule.exprs.len()
                )
            }
            Op::AddSet { set, kind, .. } => format!("add set {set} ({kind:?})"),
            Op::DeleteSet(set) => format!("delete set {set}"),
        }
    }
}

/// An encoded batch: `BATCH_BEGIN`, the messages, `BATCH_END`.
#[derive(Debug, Clone)]
pub struct Batch {
    bytes: Vec<u8>,
    /// Sequence number of the first message after `BATCH_BEGIN`.
    first_seq: u32,
    /// What each acked message does, in sequence order.
    messages: Vec<String>,
    /// Anonymous sets created so far (their batch ids).
    anonymous: u32,
}

impl Batch {
    /// Encodes `ops` with sequence numbers from `seq` on.
    pub fn encode(ops: &[Op], seq: u32) -> Batch {
        let mut batch = Batch {
            bytes: Vec::with_capacity(4096),
            first_seq: seq.wrapping_add(1),
            messages: Vec::new(),
            anonymous: 0,
        };
        message(
            &mut batch.bytes,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            AF_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        for op in ops {
            batch.op(op);
        }
        let end = batch.first_seq.wrapping_add(batch.len());
        message(
            &mut batch.bytes,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            AF_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        batch
    }

    /// The wire bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of messages between begin and end (each acked).
    pub fn len(&self) -> u32 {
        u32::try_from(self.messages.len()).unwrap_or(u32::MAX)
    }

    /// Whether the batch has no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The sequence number following this batch.
    pub fn next_seq(&self) -> u32 {
        self.first_seq.wrapping_add(self.len()).wrapping_add(1)
    }

    fn push(
        &mut self,
        kind: u16,
        flags: u16,
        description: String,
        body: impl FnOnce(&mut Vec<u8>),
    ) {
        let seq = self.first_seq.wrapping_add(self.len());
        message(
            &mut self.bytes,
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            NFPROTO_INET,
            0,
            body,
        );
        self.messages.push(description);
    }

    /// Appends a rule of `exprs` to `chain`.
    fn push_rule(&mut self, chain: &str, description: String, exprs: impl FnOnce(&mut Vec<u8>)) {
        self.push(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            description,
            |o| {
                attr_str(o, NFTA_RULE_TABLE, TABLE);
                attr_str(o, NFTA_RULE_CHAIN, chain);
                nest(o, NFTA_RULE_EXPRESSIONS, exprs);
            },
        );
    }

    fn op(&mut self, op: &Op) {
        match op {
            Op::AddElements { set, elements } | Op::DeleteElements { set, elements } => {
                let (kind, flags) = match op {
                    Op::AddElements { .. } => (NFT_MSG_NEWSETELEM, NLM_F_CREATE),
                    _ => (NFT_MSG_DELSETELEM, 0),
                };
                // Split so that each element list stays within a nested attribute's length.
                let mut start = 0;
                while start < elements.len() {
                    let mut size = 0;
                    let mut end = start;
                    while end < elements.len() && (end == start || size < MAX_ELEMENT_LIST) {
                        size += element_size(&elements[end]);
                        end += 1;
                    }
                    let chunk = &elements[start..end];
                    self.push(kind, flags, op.describe(), |o| {
                        attr_str(o, NFTA_SET_ELEM_LIST_TABLE, TABLE);
                        attr_str(o, NFTA_SET_ELEM_LIST_SET, set);
                        nest(o, NFTA_SET_ELEM_LIST_ELEMENTS, |o| {
                            for element in chunk {
                                nest(o, NFTA_LIST_ELEM, |o| {
                                    nest(o, NFTA_SET_ELEM_KEY, |o| {
                                        attr(o, NFTA_DATA_VALUE, &element.key);
                                    });
                                    if let Some(verdict) = &element.verdict {
                                        nest(o, NFTA_SET_ELEM_DATA, |o| verdict_data(o, verdict));
                                    }
                                });
                            }
                        });
                    });
                    start = end;
                }
            }
            Op::AddChain(chain) => self.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, op.describe(), |o| {
                attr_str(o, NFTA_CHAIN_TABLE, TABLE);
                attr_str(o, NFTA_CHAIN_NAME, chain);
            }),
            Op::FlushChain(chain) => self.push(NFT_MSG_DELRULE, 0, op.describe(), |o| {
                attr_str(o, NFTA_RULE_TABLE, TABLE);
                attr_str(o, NFTA_RULE_CHAIN, chain);
            }),
            Op::DeleteChain(chain) => self.push(NFT_MSG_DELCHAIN, 0, op.describe(), |o| {
                attr_str(o, NFTA_CHAIN_TABLE, TABLE);
                attr_str(o, NFTA_CHAIN_NAME, chain);
            }),
            Op::AddRule { chain, rule } => self.push_rule(chain, op.describe(), |o| rule.encode(o)),
            Op::AddSet { set, kind, id } => {
                // Key type, length and user data exactly as nft 1.0 sends them.
                let (key_type, key_len, userdata): (u32, u32, &[u8]) = match kind {
                    SetKind::Hosts4 => (7, 4, &[0, 4, 2, 0, 0, 0]),
                    SetKind::Hosts6 => (8, 16, &[0, 4, 2, 0, 0, 0]),
                    SetKind::NamedPorts4 => (
                        ((7 << 6 | 12) << 6) | 13,
                        12,
                        &[0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0],
                    ),
                    SetKind::NamedPorts6 => (
                        ((8 << 6 | 12) << 6) | 13,
                        24,
                        &[0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0],
                    ),
                    // Interval sets stay with nft text; an interval-less declaration would
                    // be a different set.
                    SetKind::Nets4 | SetKind::Nets6 => (0, 0, &[]),
                };
                self.push(NFT_MSG_NEWSET, NLM_F_CREATE, op.describe(), |o| {
                    attr_str(o, NFTA_SET_TABLE, TABLE);
                    attr_str(o, NFTA_SET_NAME, set);
                    attr_u32(o, NFTA_SET_FLAGS, 0);
                    attr_u32(o, NFTA_SET_KEY_TYPE, key_type);
                    attr_u32(o, NFTA_SET_KEY_LEN, key_len);
                    attr_u32(o, NFTA_SET_ID, *id);
                    attr(o, NFTA_SET_USERDATA, userdata);
                });
            }
            Op::DeleteSet(set) => self.push(NFT_MSG_DELSET, 0, op.describe(), |o| {
                attr_str(o, NFTA_SET_TABLE, TABLE);
                attr_str(o, NFTA_SET_NAME, set);
            }),
            Op::AddPolicyRule { chain, rule } => {
                // Its anonymous sets first, as nft sends them: created, filled, then bound to
                // the rule by their batch ids.
                let mut ids = Vec::new();
                for set in rule.anonymous_sets() {
                    let id = FIRST_ANONYMOUS_ID.wrapping_add(self.anonymous);
                    self.anonymous = self.anonymous.wrapping_add(1);
                    ids.push(id);
                    let what = format!("add an anonymous set of a rule of chain {chain}");
                    let flags = NFT_SET_ANONYMOUS
                        | NFT_SET_CONSTANT
                        | if set.interval { NFT_SET_INTERVAL } else { 0 };
                    let size = u32::try_from(set.elements.len()).unwrap_or(u32::MAX);
                    self.push(NFT_MSG_NEWSET, NLM_F_CREATE, what.clone(), |o| {
                        attr_str(o, NFTA_SET_TABLE, TABLE);
                        attr_str(o, NFTA_SET_NAME, ANONYMOUS_SET);
                        attr_u32(o, NFTA_SET_FLAGS, flags);
                        attr_u32(o, NFTA_SET_KEY_TYPE, set.key_type);
                        attr_u32(o, NFTA_SET_KEY_LEN, set.key_len);
                        attr_u32(o, NFTA_SET_ID, id);
                        nest(o, NFTA_SET_DESC, |o| attr_u32(o, NFTA_SET_DESC_SIZE, size));
                    });
                    self.push(NFT_MSG_NEWSETELEM, NLM_F_CREATE, what, |o| {
                        attr_str(o, NFTA_SET_ELEM_LIST_TABLE, TABLE);
                        attr_str(o, NFTA_SET_ELEM_LIST_SET, ANONYMOUS_SET);
                        attr_u32(o, NFTA_SET_ELEM_LIST_SET_ID, id);
                        nest(o, NFTA_SET_ELEM_LIST_ELEMENTS, |o| {
                            for (key, end) in &set.elements {
                                nest(o, NFTA_LIST_ELEM, |o| {
                                    if *end {
                                        attr_u32(o, NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                                    }
                                    nest(o, NFTA_SET_ELEM_KEY, |o| attr(o, NFTA_DATA_VALUE, key));
                                });
                            }
                        });
                    });
                }
                self.push_rule(chain, op.describe(), |o| rule.encode(o, &ids));
            }
        }
    }
}

/// A non-blocking netlink socket of `protocol`, connected to the kernel, with extended acks
/// (errors say why) and a 1 MiB receive buffer, in the calling thread's network namespace.
pub(crate) fn open_socket(protocol: isize) -> Result<Socket, Error> {
    let mut socket = Socket::new(protocol).map_err(Error::Netlink)?;
    socket.bind_auto().map_err(Error::Netlink)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(Error::Netlink)?;
    socket.set_ext_ack(true).map_err(Error::Netlink)?;
    socket.set_non_blocking(true).map_err(Error::Netlink)?;
    socket.set_rx_buf_sz(1 << 20).map_err(Error::Netlink)?;
    Ok(socket)
}

/// A `NETLINK_NETFILTER` socket in the network namespace it was opened in.
#[derive(Debug)]
pub struct NetlinkSession {
    socket: Socket,
    seq: u32,
    buffer: Vec<u8>,
}

impl NetlinkSession {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<NetlinkSession, Error> {
        let socket = open_socket(NETLINK_NETFILTER)?;
        // Acks carry only the header of the message they answer.
        socket.set_cap_ack(true).map_err(Error::Netlink)?;
        // Sequence numbers only need to differ between batches of this socket.
        let seq = u32::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() & 0xffff)
                .unwrap_or(0),
        )
        .unwrap_or(0)
            << 16;
        Ok(NetlinkSession {
            socket,
            seq,
            buffer: Vec::with_capacity(64 * 1024),
        })
    }

    /// Sends `ops` as one transaction and waits for the kernel's verdict on each message.
    pub fn commit(&mut self, ops: &[Op]) -> Result<(), Error> {
        let batch = self.batch(ops);
        self.commit_batch(&batch)
    }

    /// Encodes `ops` with this session's next sequence numbers.
    pub fn batch(&self, ops: &[Op]) -> Batch {
        Batch::encode(ops, self.seq)
    }

    /// Encodes two batches to commit one after the other: `second` numbered after `first`.
    pub fn batches(&self, first: &[Op], second: &[Op]) -> (Batch, Batch) {
        let first = self.batch(first);
        let second = Batch::encode(second, first.next_seq());
        (first, second)
    }

    /// Sends a batch from [`batch`](NetlinkSession::batch) as one transaction and waits for the
    /// kernel's verdict on each message.
    pub fn commit_batch(&mut self, batch: &Batch) -> Result<(), Error> {
        self.seq = batch.next_seq();
        if batch.is_empty() {
            return Ok(());
        }
        self.send(batch)?;
        self.receive(batch)
    }

    fn send(&self, batch: &Batch) -> Result<(), Error> {
        let sent = self.socket.send(batch.bytes(), 0).map_err(Error::Netlink)?;
        if sent != batch.bytes().len() {
            return Err(Error::Netlink(std::io::Error::other(format!(
                "sent {sent} of {} bytes",
                batch.bytes().len()
            ))));
        }
        Ok(())
    }

    fn receive(&mut self, batch: &Batch) -> Result<(), Error> {
        let mut acked = vec![false; batch.messages.len()];
        let mut pending = acked.len();
        let mut errors: Vec<String> = Vec::new();
        // The kernel answers inside sendmsg; allow a little slack anyway before giving up.
        let deadline = Instant::now() + Duration::from_secs(2);
        while pending > 0 {
            self.buffer.clear();
            match self.socket.recv(&mut self.buffer, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(Error::Netlink(std::io::Error::other(format!(
                            "{pending} of {} messages were never acknowledged",
                            acked.len()
                        ))));
                    }
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                Err(e) => return Err(Error::Netlink(e)),
            }
            for reply in parse_replies(&self.buffer) {
                let Some(index) = reply
                    .seq
                    .checked_sub(batch.first_seq)
                    .and_then(|i| usize::try_from(i).ok())
                    .filter(|i| *i < acked.len())
                else {
                    continue; // a reply to an earlier batch
                };
                if let Some(slot) = acked.get_mut(index)
                    && !*slot
                {
                    *slot = true;
                    pending -= 1;
                }
                if reply.errno != 0 {
                    let what = batch.messages.get(index).map_or("?", String::as_str);
                    let reason = std::io::Error::from_raw_os_error(reply.errno);
                    let detail = reply.message.map(|m| format!(" ({m})")).unwrap_or_default();
                    errors.push(format!("{what}: {reason}{detail}"));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Refused(errors.join("; ")))
        }
    }
}

/// One `NLMSG_ERROR` reply: the sequence number it answers, `errno` (0: success), and the
/// extended-ack message if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Sequence number of the message answered.
    pub seq: u32,
    /// 0 for an ack, else a positive errno.
    pub errno: i32,
    /// The kernel's explanation.
    pub message: Option<String>,
}

/// The `NLMSG_ERROR` replies in a datagram (other messages and malformed tails are skipped).
pub fn parse_replies(mut bytes: &[u8]) -> Vec<Reply> {
    let mut replies = Vec::new();
    while bytes.len() >= NLMSG_HEADER {
        let length = u32_at(bytes, 0).and_then(|l| usize::try_from(l).ok());
        let Some(length) = length.filter(|l| *l >= NLMSG_HEADER && *l <= bytes.len()) else {
            break;
        };
        let kind = u16_at(bytes, 4);
        let flags = u16_at(bytes, 6).unwrap_or(0);
        let body = bytes.get(NLMSG_HEADER..length).unwrap_or_default();
        if kind == Some(NLMSG_ERROR) && body.len() >= 4 + NLMSG_HEADER {
            let error = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
            let seq = u32_at(body, 4 + 8).unwrap_or(0);
            let original_length = u32_at(body, 4)
                .and_then(|l| usize::try_from(l).ok())
                .unwrap_or(NLMSG_HEADER);
            let mut message = None;
            if flags & NLM_F_ACK_TLVS != 0 {
                // With NETLINK_CAP_ACK only the original header is echoed, else all of it.
                let echoed = if flags & 0x100 != 0 {
                    NLMSG_HEADER
                } else {
                    align(original_length)
                };
                let mut tlvs = body.get(4 + echoed..).unwrap_or_default();
                while tlvs.len() >= 4 {
                    let len = usize::from(u16_at(tlvs, 0).unwrap_or(0));
                    let kind = u16_at(tlvs, 2).unwrap_or(0);
                    if len < 4 || len > tlvs.len() {
                        break;
                    }
                    if kind == NLMSGERR_ATTR_MSG {
                        let text = &tlvs[4..len];
                        let text = text.split(|b| *b == 0).next().unwrap_or_default();
                        message = Some(String::from_utf8_lossy(text).into_owned());
                    }
                    tlvs = tlvs.get(align(len)..).unwrap_or_default();
                }
            }
            replies.push(Reply {
                seq,
                errno: error.saturating_neg(),
                message,
            });
        }
        bytes = bytes.get(align(length)..).unwrap_or_default();
    }
    replies
}

/// `chain` if it is a plain object name (as `render::object_name` makes them).
fn plain_chain(chain: &str) -> Option<&str> {
    let plain = !chain.is_empty()
        && chain.len() < 256
        && chain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    plain.then_some(chain)
}

fn align(length: usize) -> usize {
    (length + 3) & !3
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at + 2)?;
    Some(u16::from_ne_bytes([b[0], b[1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Writes one netlink message: header, `nfgenmsg`, then `body`.
fn message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.extend([0; 4]); // length, patched below
    out.extend(kind.to_ne_bytes());
    out.extend(flags.to_ne_bytes());
    out.extend(seq.to_ne_bytes());
    out.extend(0u32.to_ne_bytes()); // port id: the kernel fills it in
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend(res_id.to_be_bytes());
    body(out);
    patch_length32(out, start);
}

fn patch_length32(out: &mut [u8], start: usize) {
    let length = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    if let Some(slot) = out.get_mut(start..start + 4) {
        slot.copy_from_slice(&length.to_ne_bytes());
    }
}

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let length = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
    out.extend(length.to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend(payload);
    out.resize(align(out.len()), 0);
}

fn attr_str(out: &mut Vec<u8>, kind: u16, value: &str) {
    let mut payload = Vec::with_capacity(value.len() + 1);
    payload.extend(value.as_bytes());
    payload.push(0);
    attr(out, kind, &payload);
}

fn attr_u32(out: &mut Vec<u8>, kind: u16, value: u32) {
    attr(out, kind, &value.to_be_bytes());
}

fn nest(out: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend([0; 2]);
    out.extend((kind | NLA_F_NESTED).to_ne_bytes());
    body(out);
    let length = u16::try_from(out.len() - start).unwrap_or(u16::MAX);
    if let Some(slot) = out.get_mut(start..start + 2) {
        slot.copy_from_slice(&length.to_ne_bytes());
    }
}

fn expr(out: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    nest(out, NFTA_LIST_ELEM, |o| {
        attr_str(o, NFTA_EXPR_NAME, name);
        nest(o, NFTA_EXPR_DATA, data);
    });
}

fn immediate(out: &mut Vec<u8>, verdict: &Verdict) {
    expr(out, "immediate", |o| {
        attr_u32(o, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        nest(o, NFTA_IMMEDIATE_DATA, |o| verdict_data(o, verdict));
    });
}

fn verdict_data(out: &mut Vec<u8>, verdict: &Verdict) {
    nest(out, NFTA_DATA_VERDICT, |o| {
        let (code, chain) = match verdict {
            Verdict::Accept => (NF_ACCEPT, None),
            Verdict::Drop => (NF_DROP, None),
            Verdict::Jump(chain) => (NFT_JUMP, Some(chain)),
            Verdict::Goto(chain) => (NFT_GOTO, Some(chain)),
            Verdict::Return => (NFT_RETURN, None),
        };
        attr(o, NFTA_VERDICT_CODE, &code.to_be_bytes());
        if let Some(chain) = chain {
            attr_str(o, NFTA_VERDICT_CHAIN, chain);
        }
    });
}

/// Upper bound of an element's encoded size.
fn element_size(element: &Element) -> usize {
    let verdict = match &element.verdict {
        Some(Verdict::Jump(c) | Verdict::Goto(c)) => 32 + c.len(),
        Some(_) => 24,
        None => 0,
    };
    16 + align(element.key.len()) + verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn endpoint_rules_parse_from_their_rendering() {
        let cases = [
            (
                "meta mark set meta mark & 0xffefffff",
                EndpointRule::ClearPassMark,
            ),
            ("jump pi-prod/web", EndpointRule::Jump("pi-prod/web".into())),
            (
                "meta mark & 0x00100000 == 0 jump pi-x",
                EndpointRule::JumpUnlessPassed("pi-x".into()),
            ),
            (
                "meta mark & 0x00100000 == 0 drop",
                EndpointRule::DropUnlessPassed,
            ),
            ("drop", EndpointRule::Drop),
        ];
        for (text, rule) in cases {
            assert_eq!(EndpointRule::parse(text), Some(rule), "{text}");
        }
        for text in ["accept", "ip saddr @pol-s0-4h accept", "jump a b", "jump "] {
            assert_eq!(EndpointRule::parse(text), None, "{text}");
        }
    }

    #[test]
    fn elements_encode_in_kernel_layout() {
        let e = Element::of_set(SetKind::Hosts4, "10.0.0.1").unwrap();
        assert_eq!(hex(&e.key), "0a000001");
        let e = Element::of_set(SetKind::NamedPorts4, "10.0.0.2 . 6 . 8080").unwrap();
        assert_eq!(
            hex(&e.key),
            "0a000002".to_string() + "06000000" + "1f900000"
        );
        let e = Element::of_set(SetKind::Hosts6, "fd00::1").unwrap();
        assert_eq!(hex(&e.key), "fd000000000000000000000000000001");
        assert!(Element::of_set(SetKind::Nets4, "10.0.0.0/8").is_none());
        assert!(Element::of_set(SetKind::Hosts4, "fd00::1").is_none());
        let e = Element::of_interface("cali1", None).unwrap();
        assert_eq!(
            hex(&e.key),
            "63616c6931000000".to_string() + "0000000000000000"
        );
        assert!(Element::of_interface("cali0123456789abc", None).is_none());
    }

    #[test]
    fn batch_is_framed_by_begin_and_end_with_consecutive_sequence_numbers() {
        let ops = [Op::AddElements {
            set: "pol-s0-4h".into(),
            elements: vec![Element::of_set(SetKind::Hosts4, "10.0.0.1").unwrap()],
        }];
        let batch = Batch::encode(&ops, 100);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.next_seq(), 103);
        let bytes = batch.bytes();
        // BATCH_BEGIN: 20 bytes, type 0x10, flags REQUEST, seq 100, res_id NFTABLES (big endian).
        assert_eq!(
            hex(&bytes[..20]),
            "14000000".to_string() + "1000" + "0100" + "64000000" + "00000000" + "0000000a"
        );
        // NEWSETELEM: type 0x0a0c, flags REQUEST|ACK|CREATE, seq 101, family inet.
        assert_eq!(hex(&bytes[24..28]), "0c0a0504");
        assert_eq!(u32_at(bytes, 28), Some(101));
        assert_eq!(bytes[36], NFPROTO_INET);
        let tail = &bytes[bytes.len() - 20..];
        assert_eq!(hex(&tail[4..8]), "11000100");
        assert_eq!(u32_at(tail, 8), Some(102));
        let total: usize = 20 + usize::try_from(u32_at(bytes, 20).unwrap()).unwrap() + 20;
        assert_eq!(total, bytes.len());
    }

    #[test]
    fn large_element_lists_are_split_into_several_messages() {
        let elements: Vec<Element> = (0..10_000u32)
            .map(|i| Element {
                key: i.to_be_bytes().to_vec(),
                verdict: None,
            })
            .collect();
        let batch = Batch::encode(
            &[Op::AddElements {
                set: "s".into(),
                elements,
            }],
            0,
        );
        assert!(batch.len() >= 3, "{}", batch.len());
    }

    #[test]
    fn replies_carry_seq_errno_and_the_extended_ack_message() {
        // An ack (error 0) for seq 7, then ENOENT for seq 8 with NLMSGERR_ATTR_MSG "no set".
        let mut bytes = Vec::new();
        for (seq, error, tlv) in [(7u32, 0i32, None), (8, -2, Some("no set"))] {
            let mut body = Vec::new();
            body.extend(error.to_ne_bytes());
            body.extend(20u32.to_ne_bytes());
            body.extend([0u8; 4]);
            body.extend(seq.to_ne_bytes());
            body.extend([0u8; 4]);
            let mut flags = 0x100u16;
            if let Some(text) = tlv {
                attr_str(&mut body, NLMSGERR_ATTR_MSG, text);
                flags |= NLM_F_ACK_TLVS;
            }
            let length = u32::try_from(16 + body.len()).unwrap();
            bytes.extend(length.to_ne_bytes());
            bytes.extend(NLMSG_ERROR.to_ne_bytes());
            bytes.extend(flags.to_ne_bytes());
            bytes.extend([0u8; 8]);
            bytes.extend(body);
        }
        assert_eq!(
            parse_replies(&bytes),
            [
                Reply {
                    seq: 7,
                    errno: 0,
                    message: None
                },
                Reply {
                    seq: 8,
                    errno: 2,
                    message: Some("no set".into())
                }
            ]
        );
        assert!(parse_replies(&bytes[..30]).is_empty());
    }
}
