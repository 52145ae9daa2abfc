//! Policy rules shared by NetworkPolicy, GlobalNetworkPolicy and Profile: `Rule`, `EntityRule`,
//! ports, protocols and ICMP matches, with Calico's validation.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;

use crate::error::ValidationError;
use crate::net;
use crate::validate;

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Accept the packet.
    Allow,
    /// Drop the packet.
    Deny,
    /// Log the packet and go on to the next rule.
    Log,
    /// Skip the rest of this tier.
    Pass,
}

/// One policy rule. All criteria are ANDed; entries within one list are ORed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// What to do on a match.
    pub action: Action,
    /// Restrict the rule to IPv4 (4) or IPv6 (6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
    /// Annotations of the rule (rendered as comments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RuleMetadata>,
    /// The IP protocol the packet must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// ICMP type and code the packet must have (with protocol ICMP or ICMPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpFields>,
    /// The IP protocol the packet must not have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<Protocol>,
    /// ICMP type and code the packet must not have.
    #[serde(default, rename = "notICMP", skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<IcmpFields>,
    /// Match on the source.
    #[serde(default, skip_serializing_if = "EntityRule::is_empty")]
    pub source: EntityRule,
    /// Match on the destination.
    #[serde(default, skip_serializing_if = "EntityRule::is_empty")]
    pub destination: EntityRule,
    /// HTTP match (application layer policy; accepted, not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpMatch>,
}

impl Rule {
    /// A rule with just an action (matches everything).
    pub fn new(action: Action) -> Rule {
        Rule {
            action,
            ip_version: None,
            metadata: None,
            protocol: None,
            icmp: None,
            not_protocol: None,
            not_icmp: None,
            source: EntityRule::default(),
            destination: EntityRule::default(),
            http: None,
        }
    }
}

/// Annotations of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleMetadata {
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Source or destination criteria of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntityRule {
    /// The address must be in one of these CIDRs.
    #[serde(default, with = "net::cidr_vec", skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<IpNet>,
    /// Endpoints or network sets matching this selector.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Namespaces (by their labels) whose endpoints `selector` applies to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace_selector: String,
    /// Kubernetes Services matched by their endpoints (exclusive with other selectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<ServiceMatch>,
    /// The port must be one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// The address must not be in any of these CIDRs.
    #[serde(default, with = "net::cidr_vec", skip_serializing_if = "Vec::is_empty")]
    pub not_nets: Vec<IpNet>,
    /// Anything except endpoints or network sets matching this selector.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub not_selector: String,
    /// The port must not be any of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<Port>,
    /// Pods running as these service accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<ServiceAccountMatch>,
}

impl EntityRule {
    /// Whether no criterion is set (matches everything).
    pub fn is_empty(&self) -> bool {
        self == &EntityRule::default()
    }
}

/// Match on service accounts: by names and/or by labels (ANDed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountMatch {
    /// Service account names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Selector over service account labels.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
}

/// Match on a Kubernetes Service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMatch {
    /// Service name.
    pub name: String,
    /// Service namespace (the policy's namespace when empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// HTTP match criteria.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatch {
    /// HTTP methods (`GET`, `PUT`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Paths, each exact or a prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<HttpPath>,
}

/// One HTTP path match: exactly one of `exact` and `prefix`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPath {
    /// The path must equal this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The path must start with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// ICMP type and code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpFields {
    /// ICMP type, 0–254.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// ICMP code, 0–255; needs a type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

/// An IP protocol: a well-known name or a number 1–255.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP (1).
    Icmp,
    /// ICMPv6 (58).
    IcmpV6,
    /// SCTP (132).
    Sctp,
    /// UDP-Lite (136).
    UdpLite,
    /// Any other protocol by number (1–255).
    Number(u8),
}

impl Protocol {
    /// Parses `TCP`, `udp`, `ICMPv6`, `"47"`, ... (names case-insensitively).
    pub fn parse(s: &str) -> Result<Protocol, String> {
        let t = s.trim();
        let p = match t.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "icmp" => Protocol::Icmp,
            "icmpv6" => Protocol::IcmpV6,
            "sctp" => Protocol::Sctp,
            "udplite" => Protocol::UdpLite,
            _ => match t.parse::<u16>() {
                Ok(n) => return Protocol::from_number(u64::from(n)),
                Err(_) => {
                    return Err(format!(
                        "invalid protocol {s:?}: expected TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite \
                         or a number 1-255"
                    ));
                }
            },
        };
        Ok(p)
    }

    /// The protocol with number `n` (1–255), as a name when it has one.
    pub fn from_number(n: u64) -> Result<Protocol, String> {
        match u8::try_from(n) {
            Ok(0) | Err(_) => Err(format!("invalid protocol number {n}: expected 1-255")),
            Ok(n) => Ok(Protocol::Number(n)),
        }
    }

    /// The protocol number.
    pub fn number(&self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
            Protocol::IcmpV6 => 58,
            Protocol::Sctp => 132,
            Protocol::UdpLite => 136,
            Protocol::Number(n) => *n,
        }
    }

    /// Whether rules with this protocol may match ports (TCP, UDP, SCTP).
    pub fn supports_ports(&self) -> bool {
        matches!(self.number(), 6 | 17 | 132)
    }

    /// Whether named ports may be used with this protocol (TCP, UDP).
    pub fn supports_named_ports(&self) -> bool {
        matches!(self.number(), 6 | 17)
    }

    /// Whether this is ICMP (IPv4) or ICMPv6.
    pub fn is_icmp(&self) -> bool {
        matches!(self.number(), 1 | 58)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Icmp => f.write_str("ICMP"),
            Protocol::IcmpV6 => f.write_str("ICMPv6"),
            Protocol::Sctp => f.write_str("SCTP"),
            Protocol::UdpLite => f.write_str("UDPLite"),
            Protocol::Number(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Protocol::Number(n) => s.serialize_u8(*n),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Protocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a protocol name or number")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Protocol, E> {
                Protocol::from_number(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Protocol, E> {
                Protocol::from_number(u64::try_from(v).unwrap_or(0)).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Protocol, E> {
                Protocol::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A port match: a number, an inclusive range `"first:last"`, or a named port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Port {
    /// One port.
    Number(u16),
    /// An inclusive range, `first <= last`.
    Range {
        /// First port of the range.
        first: u16,
        /// Last port of the range.
        last: u16,
    },
    /// A named port, resolved per endpoint from its `ports`.
    Named(String),
}

impl Port {
    /// Parses `80`, `"8000:8080"` or `"http"`.
    pub fn parse(s: &str) -> Result<Port, String> {
        let t = s.trim();
        if let Some((a, b)) = t.split_once(':') {
            let first = parse_port_number(a).ok_or_else(|| format!("invalid port range {s:?}"))?;
            let last = parse_port_number(b).ok_or_else(|| format!("invalid port range {s:?}"))?;
            if first > last {
                return Err(format!(
                    "invalid port range {s:?}: the first port must not exceed the last"
                ));
            }
            return Ok(if first == last {
                Port::Number(first)
            } else {
                Port::Range { first, last }
            });
        }
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return parse_port_number(t)
                .map(Port::Number)
                .ok_or_else(|| format!("invalid port {s:?}: expected 0-65535"));
        }
        let valid_name = !t.is_empty()
            && t.len() <= 128
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if valid_name {
            Ok(Port::Named(t.to_string()))
        } else {
            Err(format!(
                "invalid port {s:?}: expected a number, a range \"first:last\" or a name"
            ))
        }
    }

    /// Whether this is a named port.
    pub fn is_named(&self) -> bool {
        matches!(self, Port::Named(_))
    }
}

fn parse_port_number(s: &str) -> Option<u16> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok()
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Number(n) => write!(f, "{n}"),
            Port::Range { first, last } => write!(f, "{first}:{last}"),
            Port::Named(name) => f.write_str(name),
        }
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Port::Number(n) => s.serialize_u16(*n),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Port, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number, a range \"first:last\" or a port name")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Port, E> {
                u16::try_from(v)
                    .map(Port::Number)
                    .map_err(|_| E::custom(format!("invalid port {v}: expected 0-65535")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Port, E> {
                u16::try_from(v)
                    .map(Port::Number)
                    .map_err(|_| E::custom(format!("invalid port {v}: expected 0-65535")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Port, E> {
                Port::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Validates a list of rules at `path` (e.g. `spec.ingress`).
pub(crate) fn validate_rules(path: &str, rules: &[Rule]) -> Result<(), ValidationError> {
    for (i, rule) in rules.iter().enumerate() {
        validate_rule(&format!("{path}[{i}]"), rule)?;
    }
    Ok(())
}

/// Validates one rule as Calico does.
pub(crate) fn validate_rule(path: &str, rule: &Rule) -> Result<(), ValidationError> {
    let at = |field: &str| format!("{path}.{field}");
    if let Some(v) = rule.ip_version
        && v != 4
        && v != 6
    {
        return Err(ValidationError::new(
            at("ipVersion"),
            format!("must be 4 or 6, not {v}"),
        ));
    }
    for (field, icmp) in [("icmp", &rule.icmp), ("notICMP", &rule.not_icmp)] {
        let Some(icmp) = icmp else { continue };
        if icmp.icmp_type == Some(255) {
            return Err(ValidationError::new(
                at(&format!("{field}.type")),
                "ICMP type must be 0-254, not 255",
            ));
        }
        if icmp.code.is_some() && icmp.icmp_type.is_none() {
            return Err(ValidationError::new(
                at(&format!("{field}.code")),
                "an ICMP code needs an ICMP type",
            ));
        }
        if !rule.protocol.is_some_and(|p| p.is_icmp()) {
            return Err(ValidationError::new(
                at(field),
                "ICMP matches need protocol ICMP or ICMPv6",
            ));
        }
    }
    if let Some(p) = rule.protocol {
        let v = rule.ip_version;
        if (p == Protocol::Icmp || p.number() == 1) && v == Some(6) {
            return Err(ValidationError::new(
                at("protocol"),
                "ICMP cannot be used with ipVersion 6; use ICMPv6",
            ));
        }
        if (p == Protocol::IcmpV6 || p.number() == 58) && v == Some(4) {
            return Err(ValidationError::new(
                at("protocol"),
                "ICMPv6 cannot be used with ipVersion 4; use ICMP",
            ));
        }
    }
    for (side, entity) in [("source", &rule.source), ("destination", &rule.destination)] {
        validate_entity(&at(side), entity, rule.protocol)?;
    }
    validate_families(path, rule)?;
    if let Some(http) = &rule.http {
        for (i, p) in http.paths.iter().enumerate() {
            if p.exact.is_some() == p.prefix.is_some() {
                return Err(ValidationError::new(
                    at(&format!("http.paths[{i}]")),
                    "set exactly one of exact and prefix",
                ));
            }
        }
    }
    Ok(())
}

fn validate_entity(
    path: &str,
    entity: &EntityRule,
    protocol: Option<Protocol>,
) -> Result<(), ValidationError> {
    let at = |field: &str| format!("{path}.{field}");
    for (field, sel) in [
        ("selector", &entity.selector),
        ("notSelector", &entity.not_selector),
        ("namespaceSelector", &entity.namespace_selector),
    ] {
        if !sel.is_empty() {
            validate::selector(&at(field), sel)?;
        }
    }
    if let Some(sa) = &entity.service_accounts {
        if !sa.selector.is_empty() {
            validate::selector(&at("serviceAccounts.selector"), &sa.selector)?;
        }
        for (i, name) in sa.names.iter().enumerate() {
            validate::subdomain(&at(&format!("serviceAccounts.names[{i}]")), name)?;
        }
    }
    if let Some(svc) = &entity.services {
        if svc.name.is_empty() {
            return Err(ValidationError::new(
                at("services.name"),
                "service name is required",
            ));
        }
        let others = !entity.selector.is_empty()
            || !entity.not_selector.is_empty()
            || !entity.namespace_selector.is_empty()
            || entity.service_accounts.is_some()
            || !entity.nets.is_empty()
            || !entity.not_nets.is_empty();
        if others {
            return Err(ValidationError::new(
                at("services"),
                "services cannot be combined with selectors, service accounts or nets",
            ));
        }
    }
    for (field, ports) in [("ports", &entity.ports), ("notPorts", &entity.not_ports)] {
        for (i, port) in ports.iter().enumerate() {
            let port_path = at(&format!("{field}[{i}]"));
            match protocol {
                None => {
                    return Err(ValidationError::new(
                        port_path,
                        "ports need protocol TCP, UDP or SCTP",
                    ));
                }
                Some(p) if !p.supports_ports() => {
                    return Err(ValidationError::new(
                        port_path,
                        format!("ports need protocol TCP, UDP or SCTP, not {p}"),
                    ));
                }
                Some(p) if port.is_named() && !p.supports_named_ports() => {
                    return Err(ValidationError::new(
                        port_path,
                        format!("named port {port} needs protocol TCP or UDP, not {p}"),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// All CIDRs of a rule must be of one family, and agree with `ipVersion`.
fn validate_families(path: &str, rule: &Rule) -> Result<(), ValidationError> {
    let mut first: Option<bool> = rule.ip_version.map(|v| v == 6);
    let from_version = rule.ip_version.is_some();
    for (side, entity) in [("source", &rule.source), ("destination", &rule.destination)] {
        for (field, nets) in [("nets", &entity.nets), ("notNets", &entity.not_nets)] {
            for (i, n) in nets.iter().enumerate() {
                let is_v6 = matches!(n, IpNet::V6(_));
                match first {
                    None => first = Some(is_v6),
                    Some(f) if f != is_v6 => {
                        let reason = if from_version {
                            format!(
                                "{n} does not match ipVersion {}",
                                rule.ip_version.unwrap_or(4)
                            )
                        } else {
                            format!("{n}: a rule cannot mix IPv4 and IPv6 networks")
                        };
                        return Err(ValidationError::new(
                            format!("{path}.{side}.{field}[{i}]"),
                            reason,
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    // ICMP is IPv4's and ICMPv6 is IPv6's: the nets must agree.
    if !from_version
        && let (Some(is_v6), Some(p)) = (first, rule.protocol)
        && ((p.number() == 1 && is_v6) || (p.number() == 58 && !is_v6))
    {
        let family = if is_v6 { "IPv6" } else { "IPv4" };
        return Err(ValidationError::new(
            format!("{path}.protocol"),
            format!("{p} cannot match {family} networks"),
        ));
    }
    Ok(())
}
