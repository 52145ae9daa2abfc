//! The engine's input model: a flattened view of Calico's resources (field names follow
//! `projectcalico.org/v3`), independent of how they were stored or loaded.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use felis_api::selector::Labels;
use felis_api::selector::Selector;
use ipnet::IpNet;
use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;

use crate::error::Error;

/// Label Calico puts on every namespaced endpoint and network set: its namespace.
pub const LABEL_NAMESPACE: &str = "projectcalico.org/namespace";
/// Label naming the orchestrator of a workload (`k8s` for pods).
pub const LABEL_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
/// Label naming a workload's service account.
pub const LABEL_SERVICE_ACCOUNT: &str = "projectcalico.org/serviceaccount";
/// Label carrying the name of a namespace or service account (for `namespaceSelector`s).
pub const LABEL_NAME: &str = "projectcalico.org/name";

/// Name of the tier policies land in when they name none.
pub const DEFAULT_TIER: &str = "default";

/// A workload or host endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Endpoint name (WorkloadEndpoint or HostEndpoint name).
    pub name: String,
    /// Namespace of a workload endpoint; `None` for host endpoints.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The endpoint's own labels (they win over labels inherited from profiles).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// WEP `ipNetworks` or HEP `expectedIPs`.
    #[serde(default)]
    pub ips: Vec<IpNet>,
    /// Profiles in evaluation order (KDD: `kns.<ns>`, `ksa.<ns>.<sa>`).
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Named ports (WEP/HEP `ports`).
    #[serde(default)]
    pub ports: Vec<NamedPort>,
    /// Service account of a pod.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Orchestrator (`k8s` for pods); exposed as `projectcalico.org/orchestrator`.
    #[serde(default)]
    pub orchestrator: Option<String>,
    /// The pod (or other workload) behind a workload endpoint: the name `felis policy trace`
    /// accepts besides the endpoint's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The node the endpoint is on (WEP and HEP `node`): workload→host and host→workload
    /// traffic, and which host endpoint forwarded traffic crosses, depend on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Set for a host endpoint: the interface it stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_endpoint: Option<HostInterface>,
}

impl Endpoint {
    /// Whether this is a host endpoint.
    pub fn is_host_endpoint(&self) -> bool {
        self.host_endpoint.is_some()
    }
}

/// The interface of a host endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostInterface {
    /// `interfaceName`: an interface, `*` for all of the node's interfaces, or empty when the
    /// endpoint only names `expectedIPs` (the interface holding them).
    #[serde(default)]
    pub interface_name: String,
}

impl HostInterface {
    /// Whether the endpoint covers every interface of its node (`interfaceName: "*"`).
    pub fn is_all_interfaces(&self) -> bool {
        self.interface_name == "*"
    }
}

/// A named port of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    /// Port name (referenced from rules).
    pub name: String,
    /// Protocol the port is for.
    pub protocol: Protocol,
    /// Port number.
    pub port: u16,
}

/// Which way traffic crosses an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    /// Traffic into the endpoint.
    Ingress,
    /// Traffic out of the endpoint.
    Egress,
}

/// A NetworkPolicy (namespaced) or GlobalNetworkPolicy (`namespace: None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Policy name as stored (e.g. `default.allow-db`, `knp.default.deny-all`).
    pub name: String,
    /// Namespace of a NetworkPolicy; `None` for a GlobalNetworkPolicy.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Tier name (`default` when unset in the resource).
    #[serde(default = "default_tier")]
    pub tier: String,
    /// Order within the tier: lower first, `None` last.
    #[serde(default)]
    pub order: Option<f64>,
    /// Endpoints the policy applies to.
    #[serde(default)]
    pub selector: Selector,
    /// GNP only: restricts the policy to endpoints in matching namespaces.
    #[serde(default, deserialize_with = "optional_selector")]
    pub namespace_selector: Option<Selector>,
    /// Restricts the policy to endpoints whose service account matches.
    #[serde(default, deserialize_with = "optional_selector")]
    pub service_account_selector: Option<Selector>,
    /// Directions the policy applies in; empty means defaulted from the rules present.
    #[serde(default)]
    pub types: Vec<Direction>,
    /// Ingress rules, in order.
    #[serde(default)]
    pub ingress: Vec<Rule>,
    /// Egress rules, in order.
    #[serde(default)]
    pub egress: Vec<Rule>,
    /// GNP only: applies to forwarded traffic crossing a host endpoint, too.
    #[serde(default, skip_serializing_if = "is_false")]
    pub apply_on_forward: bool,
    /// GNP only: a pre-DNAT policy (host endpoint ingress, before DNAT).
    #[serde(default, skip_serializing_if = "is_false", rename = "preDNAT")]
    pub pre_dnat: bool,
    /// GNP only: an untracked policy (host endpoints, raw table, no conntrack).
    #[serde(default, skip_serializing_if = "is_false")]
    pub do_not_track: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An optional selector where `""`, as Calico writes an unset selector, means unset (and not
/// `all()`, which is what an empty selector means where one is required).
fn optional_selector<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Selector>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        None => Ok(None),
        Some(source) if source.trim().is_empty() => Ok(None),
        Some(source) => Selector::parse(&source)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

fn default_tier() -> String {
    DEFAULT_TIER.to_string()
}

impl Policy {
    /// A policy with no rules in the default tier, selecting `all()`.
    pub fn new(name: impl Into<String>, namespace: Option<&str>) -> Policy {
        Policy {
            name: name.into(),
            namespace: namespace.map(str::to_string),
            tier: default_tier(),
            order: None,
            selector: Selector::all(),
            namespace_selector: None,
            service_account_selector: None,
            types: Vec::new(),
            ingress: Vec::new(),
            egress: Vec::new(),
            apply_on_forward: false,
            pre_dnat: false,
            do_not_track: false,
        }
    }

    /// Whether the policy applies in `direction`: its `types`, or when empty the reference
    /// §3.9 default (`[Ingress]` unless only egress rules are present; both if both are).
    pub fn applies_in(&self, direction: Direction) -> bool {
        if !self.types.is_empty() {
            return self.types.contains(&direction);
        }
        match direction {
            Direction::Ingress => !self.ingress.is_empty() || self.egress.is_empty(),
            Direction::Egress => !self.egress.is_empty(),
        }
    }

    /// The rules for `direction`.
    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// What a tier does with traffic no policy rule in it decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TierDefaultAction {
    /// End-of-tier drop.
    #[default]
    Deny,
    /// Continue with the next tier (or profiles).
    Pass,
}

/// A policy tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tier {
    /// Tier name.
    pub name: String,
    /// Order among tiers: lower first, `None` last.
    #[serde(default)]
    pub order: Option<f64>,
    /// Verdict when no rule in the tier matched.
    #[serde(default)]
    pub default_action: TierDefaultAction,
}

impl Tier {
    /// Calico's built-in tiers: `adminnetworkpolicy` (1,000, Pass), `default` (1,000,000,
    /// Deny) and `baselineadminnetworkpolicy` (10,000,000, Pass).
    pub fn builtins() -> [Tier; 3] {
        [
            Tier {
                name: "adminnetworkpolicy".to_string(),
                order: Some(1_000.0),
                default_action: TierDefaultAction::Pass,
            },
            Tier {
                name: DEFAULT_TIER.to_string(),
                order: Some(1_000_000.0),
                default_action: TierDefaultAction::Deny,
            },
            Tier {
                name: "baselineadminnetworkpolicy".to_string(),
                order: Some(10_000_000.0),
                default_action: TierDefaultAction::Pass,
            },
        ]
    }
}

/// A profile: rules evaluated when no tier decides, and labels endpoints inherit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Profile name (e.g. `kns.default`).
    pub name: String,
    /// Ingress rules, in order.
    #[serde(default)]
    pub ingress: Vec<Rule>,
    /// Egress rules, in order.
    #[serde(default)]
    pub egress: Vec<Rule>,
    /// Labels applied to endpoints using the profile (the endpoint's own labels win).
    #[serde(default)]
    pub labels_to_apply: BTreeMap<String, String>,
}

impl Profile {
    /// A profile with one Allow rule each way, like Calico's `kns.<ns>` and
    /// `projectcalico-default-allow`.
    pub fn allow_all(name: impl Into<String>) -> Profile {
        Profile {
            name: name.into(),
            ingress: vec![Rule::new(Action::Allow)],
            egress: vec![Rule::new(Action::Allow)],
            labels_to_apply: BTreeMap::new(),
        }
    }

    /// Calico's KDD namespace profile `kns.<ns>`: allow-all both ways, with the namespace's
    /// labels (and `projectcalico.org/name`) inherited as `pcns.<key>`.
    pub fn for_namespace(namespace: &Namespace) -> Profile {
        let mut profile = Profile::allow_all(format!("kns.{}", namespace.name));
        profile.labels_to_apply = prefixed_labels("pcns.", &namespace.name, &namespace.labels);
        profile
    }

    /// Calico's KDD service-account profile `ksa.<ns>.<sa>`: no rules, the service account's
    /// labels (and `projectcalico.org/name`) inherited as `pcsa.<key>`.
    pub fn for_service_account(service_account: &ServiceAccount) -> Profile {
        Profile {
            name: format!("ksa.{}.{}", service_account.namespace, service_account.name),
            ingress: Vec::new(),
            egress: Vec::new(),
            labels_to_apply: prefixed_labels(
                "pcsa.",
                &service_account.name,
                &service_account.labels,
            ),
        }
    }

    /// The rules for `direction`.
    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

fn prefixed_labels(
    prefix: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
        .collect();
    out.insert(format!("{prefix}{LABEL_NAME}"), name.to_string());
    out
}

/// A NetworkSet (namespaced) or GlobalNetworkSet (`namespace: None`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSet {
    /// Name.
    pub name: String,
    /// Namespace of a NetworkSet; `None` for a GlobalNetworkSet.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Labels rule selectors match.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Member CIDRs.
    #[serde(default)]
    pub nets: Vec<IpNet>,
}

/// A namespace and its labels (what rule and policy `namespaceSelector`s match).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    /// Name (also visible to selectors as `projectcalico.org/name`).
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A service account and its labels (what `serviceAccountSelector`s match).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceAccount {
    /// Name (also visible to selectors as `projectcalico.org/name`).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A rule's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Accept the packet: evaluation ends.
    Allow,
    /// Drop the packet: evaluation ends.
    Deny,
    /// Log and continue with the next rule.
    Log,
    /// Skip the rest of this tier.
    Pass,
}

/// An IP protocol number; parses Calico's names (TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite) and
/// numbers 1–255.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(pub u8);

impl Protocol {
    /// ICMP (1).
    pub const ICMP: Protocol = Protocol(1);
    /// TCP (6).
    pub const TCP: Protocol = Protocol(6);
    /// UDP (17).
    pub const UDP: Protocol = Protocol(17);
    /// ICMPv6 (58).
    pub const ICMPV6: Protocol = Protocol(58);
    /// SCTP (132).
    pub const SCTP: Protocol = Protocol(132);
    /// UDP-Lite (136).
    pub const UDPLITE: Protocol = Protocol(136);

    /// Whether the protocol carries ports (TCP, UDP, SCTP, UDP-Lite).
    pub fn has_ports(self) -> bool {
        matches!(
            self,
            Protocol::TCP | Protocol::UDP | Protocol::SCTP | Protocol::UDPLITE
        )
    }

    /// Whether this is ICMP or ICMPv6.
    pub fn is_icmp(self) -> bool {
        matches!(self, Protocol::ICMP | Protocol::ICMPV6)
    }
}

impl FromStr for Protocol {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let by_name = match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::TCP),
            "udp" => Some(Protocol::UDP),
            "icmp" => Some(Protocol::ICMP),
            "icmpv6" => Some(Protocol::ICMPV6),
            "sctp" => Some(Protocol::SCTP),
            "udplite" => Some(Protocol::UDPLITE),
            _ => None,
        };
        match by_name {
            Some(protocol) => Ok(protocol),
            None => match s.parse::<u8>() {
                Ok(n) if n >= 1 => Ok(Protocol(n)),
                _ => Err(Error::InvalidProtocol(s.to_string())),
            },
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Protocol::TCP => f.write_str("TCP"),
            Protocol::UDP => f.write_str("UDP"),
            Protocol::ICMP => f.write_str("ICMP"),
            Protocol::ICMPV6 => f.write_str("ICMPv6"),
            Protocol::SCTP => f.write_str("SCTP"),
            Protocol::UDPLITE => f.write_str("UDPLite"),
            Protocol(n) => write!(f, "{n}"),
        }
    }
}

/// Calico's int-or-string form.
#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Str(String),
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Protocol::TCP
            | Protocol::UDP
            | Protocol::ICMP
            | Protocol::ICMPV6
            | Protocol::SCTP
            | Protocol::UDPLITE => serializer.collect_str(self),
            Protocol(n) => serializer.serialize_u8(n),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = match IntOrString::deserialize(deserializer)? {
            IntOrString::Int(n) => n.to_string(),
            IntOrString::Str(s) => s,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One entry of `ports`/`notPorts`: a number, an inclusive range, or a named port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Port {
    /// A single port.
    Number(u16),
    /// `"start:end"`, inclusive.
    Range(u16, u16),
    /// A named port, resolved against the endpoint owning the address.
    Named(String),
}

impl Port {
    /// Whether `port` is a numeric match (named ports never match here).
    pub fn contains(&self, port: u16) -> bool {
        match *self {
            Port::Number(p) => p == port,
            Port::Range(start, end) => (start..=end).contains(&port),
            Port::Named(_) => false,
        }
    }
}

impl FromStr for Port {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || Error::InvalidPort(s.to_string());
        if let Some((start, end)) = s.split_once(':') {
            let start: u16 = start.trim().parse().map_err(|_| invalid())?;
            let end: u16 = end.trim().parse().map_err(|_| invalid())?;
            if start > end {
                return Err(invalid());
            }
            return Ok(Port::Range(start, end));
        }
        if let Ok(n) = s.parse::<u16>() {
            return Ok(Port::Number(n));
        }
        let is_name = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && s.bytes().any(|b| b.is_ascii_alphabetic());
        if is_name {
            Ok(Port::Named(s.to_string()))
        } else {
            Err(invalid())
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Number(p) => write!(f, "{p}"),
            Port::Range(start, end) => write!(f, "{start}:{end}"),
            Port::Named(name) => f.write_str(name),
        }
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Port::Number(p) => serializer.serialize_u16(*p),
            other => serializer.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = match IntOrString::deserialize(deserializer)? {
            IntOrString::Int(n) => n.to_string(),
            IntOrString::Str(s) => s,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An ICMP type, optionally with a code (`icmp`/`notICMP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IcmpMatch {
    /// ICMP type (0–254).
    #[serde(rename = "type")]
    pub icmp_type: u8,
    /// ICMP code (0–255); only meaningful with a type.
    #[serde(default)]
    pub code: Option<u8>,
}

impl IcmpMatch {
    /// Whether the packet's type and code match.
    pub fn matches(&self, icmp_type: Option<u8>, code: Option<u8>) -> bool {
        icmp_type == Some(self.icmp_type) && self.code.is_none_or(|c| code == Some(c))
    }
}

/// IP family of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpVersion {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> IpVersion {
        if ip.is_ipv4() {
            IpVersion::V4
        } else {
            IpVersion::V6
        }
    }

    /// The family of `net`.
    pub fn of_net(net: &IpNet) -> IpVersion {
        match net {
            IpNet::V4(_) => IpVersion::V4,
            IpNet::V6(_) => IpVersion::V6,
        }
    }
}

impl Serialize for IpVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(match self {
            IpVersion::V4 => 4,
            IpVersion::V6 => 6,
        })
    }
}

impl<'de> Deserialize<'de> for IpVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match u8::deserialize(deserializer)? {
            4 => Ok(IpVersion::V4),
            6 => Ok(IpVersion::V6),
            other => Err(serde::de::Error::custom(format!(
                "ipVersion {other} is not 4 or 6"
            ))),
        }
    }
}

/// A policy or profile rule. All criteria are ANDed; entries within a list are ORed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// What to do when the rule matches.
    pub action: Action,
    /// Required protocol.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Excluded protocol.
    #[serde(default)]
    pub not_protocol: Option<Protocol>,
    /// Required ICMP type/code.
    #[serde(default)]
    pub icmp: Option<IcmpMatch>,
    /// Excluded ICMP type/code.
    #[serde(default, rename = "notICMP")]
    pub not_icmp: Option<IcmpMatch>,
    /// Required IP family.
    #[serde(default)]
    pub ip_version: Option<IpVersion>,
    /// Conditions on the packet's source.
    #[serde(default)]
    pub source: EntityRule,
    /// Conditions on the packet's destination.
    #[serde(default)]
    pub destination: EntityRule,
}

impl Rule {
    /// A rule with `action` and no criteria (matches every packet).
    pub fn new(action: Action) -> Rule {
        Rule {
            action,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            ip_version: None,
            source: EntityRule::default(),
            destination: EntityRule::default(),
        }
    }
}

/// Service-account match of an entity rule: names and selector ANDed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceAccountMatch {
    /// Accepted service account names (any when empty).
    #[serde(default)]
    pub names: Vec<String>,
    /// Selector over the service account's labels.
    #[serde(default, deserialize_with = "optional_selector")]
    pub selector: Option<Selector>,
}

/// Conditions on one end (source or destination) of a packet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityRule {
    /// The address must be in one of these.
    #[serde(default)]
    pub nets: Vec<IpNet>,
    /// The address must be in none of these.
    #[serde(default)]
    pub not_nets: Vec<IpNet>,
    /// The address must belong to a known endpoint or network set (in scope) that matches.
    #[serde(default, deserialize_with = "optional_selector")]
    pub selector: Option<Selector>,
    /// The address must not belong to a known endpoint or network set (in scope) that matches.
    #[serde(default, deserialize_with = "optional_selector")]
    pub not_selector: Option<Selector>,
    /// Namespaces `selector`/`notSelector` resolve in (`global()`: non-namespaced objects).
    #[serde(default, deserialize_with = "optional_selector")]
    pub namespace_selector: Option<Selector>,
    /// The port must be one of these.
    #[serde(default)]
    pub ports: Vec<Port>,
    /// The port must be none of these.
    #[serde(default)]
    pub not_ports: Vec<Port>,
    /// The address must belong to a pod running as a matching service account.
    #[serde(default)]
    pub service_accounts: Option<ServiceAccountMatch>,
}

/// The packet whose fate is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Packet {
    /// Source address.
    pub src_ip: IpAddr,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// IP protocol.
    pub protocol: Protocol,
    /// Source port (TCP, UDP, SCTP).
    #[serde(default)]
    pub src_port: Option<u16>,
    /// Destination port (TCP, UDP, SCTP).
    #[serde(default)]
    pub dst_port: Option<u16>,
    /// ICMP type.
    #[serde(default)]
    pub icmp_type: Option<u8>,
    /// ICMP code.
    #[serde(default)]
    pub icmp_code: Option<u8>,
}

impl Packet {
    /// A TCP packet.
    pub fn tcp(src_ip: IpAddr, src_port: u16, dst_ip: IpAddr, dst_port: u16) -> Packet {
        Packet::with_ports(Protocol::TCP, src_ip, src_port, dst_ip, dst_port)
    }

    /// A UDP packet.
    pub fn udp(src_ip: IpAddr, src_port: u16, dst_ip: IpAddr, dst_port: u16) -> Packet {
        Packet::with_ports(Protocol::UDP, src_ip, src_port, dst_ip, dst_port)
    }

    /// A packet of a protocol with ports.
    pub fn with_ports(
        protocol: Protocol,
        src_ip: IpAddr,
        src_port: u16,
        dst_ip: IpAddr,
        dst_port: u16,
    ) -> Packet {
        Packet {
            src_ip,
            dst_ip,
            protocol,
            src_port: Some(src_port),
            dst_port: Some(dst_port),
            icmp_type: None,
            icmp_code: None,
        }
    }

    /// An ICMP (or ICMPv6, by address family) packet.
    pub fn icmp(src_ip: IpAddr, dst_ip: IpAddr, icmp_type: u8, icmp_code: u8) -> Packet {
        let protocol = if src_ip.is_ipv4() {
            Protocol::ICMP
        } else {
            Protocol::ICMPV6
        };
        Packet {
            src_ip,
            dst_ip,
            protocol,
            src_port: None,
            dst_port: None,
            icmp_type: Some(icmp_type),
            icmp_code: Some(icmp_code),
        }
    }
}

/// Labels of an object under a namespace-selector, with `projectcalico.org/name` added.
pub(crate) struct NamedLabels<'a> {
    /// The object's name; `None` stands for "no namespace", which has no labels at all.
    pub(crate) name: Option<&'a str>,
    pub(crate) labels: Option<&'a BTreeMap<String, String>>,
}

impl Labels for NamedLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        if let Some(value) = self.labels.and_then(|l| l.get(key)) {
            return Some(value);
        }
        if key == LABEL_NAME { self.name } else { None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_by_name_and_number() {
        assert_eq!("TCP".parse::<Protocol>().unwrap(), Protocol::TCP);
        assert_eq!("udp".parse::<Protocol>().unwrap(), Protocol::UDP);
        assert_eq!("ICMPv6".parse::<Protocol>().unwrap(), Protocol::ICMPV6);
        assert_eq!("UDPLite".parse::<Protocol>().unwrap(), Protocol::UDPLITE);
        assert_eq!("SCTP".parse::<Protocol>().unwrap(), Protocol::SCTP);
        assert_eq!("47".parse::<Protocol>().unwrap(), Protocol(47));
        assert!("0".parse::<Protocol>().is_err());
        assert!("256".parse::<Protocol>().is_err());
        assert!(
            "GRE"
                .parse::<Protocol>()
                .unwrap_err()
                .to_string()
                .contains("\"GRE\"")
        );
    }

    #[test]
    fn protocols_serialize_as_calico_writes_them() {
        assert_eq!(serde_json::to_string(&Protocol::TCP).unwrap(), "\"TCP\"");
        assert_eq!(serde_json::to_string(&Protocol(47)).unwrap(), "47");
        assert_eq!(
            serde_json::from_str::<Protocol>("6").unwrap(),
            Protocol::TCP
        );
        assert_eq!(
            serde_json::from_str::<Protocol>("\"ICMP\"").unwrap(),
            Protocol::ICMP
        );
    }

    #[test]
    fn ports_parse_numbers_ranges_and_names() {
        assert_eq!("80".parse::<Port>().unwrap(), Port::Number(80));
        assert_eq!(
            "8000:8080".parse::<Port>().unwrap(),
            Port::Range(8000, 8080)
        );
        assert_eq!(
            "http-alt".parse::<Port>().unwrap(),
            Port::Named("http-alt".to_string())
        );
        for bad in ["", "90:80", "1:", "70000", "a_b", "-"] {
            assert!(bad.parse::<Port>().is_err(), "{bad:?}");
        }
        assert!(Port::Range(10, 20).contains(10) && Port::Range(10, 20).contains(20));
        assert!(!Port::Range(10, 20).contains(21));
        assert!(!Port::Named("x".to_string()).contains(1));
        let json: Vec<Port> = serde_json::from_str(r#"[80, "1:2", "dns"]"#).unwrap();
        assert_eq!(serde_json::to_string(&json).unwrap(), r#"[80,"1:2","dns"]"#);
    }

    #[test]
    fn icmp_code_needs_the_type() {
        let echo = IcmpMatch {
            icmp_type: 8,
            code: None,
        };
        assert!(echo.matches(Some(8), Some(0)));
        assert!(!echo.matches(Some(0), Some(0)));
        assert!(!echo.matches(None, None));
        let unreachable = IcmpMatch {
            icmp_type: 3,
            code: Some(4),
        };
        assert!(unreachable.matches(Some(3), Some(4)));
        assert!(!unreachable.matches(Some(3), Some(1)));
    }

    #[test]
    fn kdd_profiles_carry_prefixed_labels() {
        let ns = Namespace {
            name: "prod".to_string(),
            labels: [("env".to_string(), "prod".to_string())].into(),
        };
        let kns = Profile::for_namespace(&ns);
        assert_eq!(kns.name, "kns.prod");
        assert_eq!(kns.ingress, vec![Rule::new(Action::Allow)]);
        assert_eq!(kns.egress, vec![Rule::new(Action::Allow)]);
        assert_eq!(
            kns.labels_to_apply.get("pcns.env").map(String::as_str),
            Some("prod")
        );
        assert_eq!(
            kns.labels_to_apply
                .get("pcns.projectcalico.org/name")
                .map(String::as_str),
            Some("prod")
        );
        let sa = ServiceAccount {
            name: "db".to_string(),
            namespace: "prod".to_string(),
            labels: [("role".to_string(), "database".to_string())].into(),
        };
        let ksa = Profile::for_service_account(&sa);
        assert_eq!(ksa.name, "ksa.prod.db");
        assert!(ksa.ingress.is_empty() && ksa.egress.is_empty());
        assert_eq!(ksa.labels_to_apply.len(), 2);
        assert_eq!(
            ksa.labels_to_apply.get("pcsa.role").map(String::as_str),
            Some("database")
        );
    }

    #[test]
    fn policy_types_default_from_rules() {
        let mut p = Policy::new("p", None);
        assert!(p.applies_in(Direction::Ingress) && !p.applies_in(Direction::Egress));
        p.egress.push(Rule::new(Action::Allow));
        assert!(!p.applies_in(Direction::Ingress) && p.applies_in(Direction::Egress));
        p.ingress.push(Rule::new(Action::Allow));
        assert!(p.applies_in(Direction::Ingress) && p.applies_in(Direction::Egress));
        p.types = vec![Direction::Egress];
        assert!(!p.applies_in(Direction::Ingress));
    }

    #[test]
    fn policies_read_calico_field_names() {
        let json = r#"{
            "name": "default.p", "namespace": "prod", "order": 10.5, "selector": "app == 'x'",
            "types": ["Ingress"],
            "ingress": [{"action": "Allow", "protocol": "TCP", "ipVersion": 4,
                         "notICMP": {"type": 8, "code": 0},
                         "source": {"nets": ["10.0.0.0/8"], "namespaceSelector": "global()", "selector": ""},
                         "destination": {"ports": [80, "http"], "notPorts": ["1:2"]}}]
        }"#;
        let policy: Policy = serde_json::from_str(json).unwrap();
        assert_eq!(policy.tier, "default");
        assert_eq!(policy.order, Some(10.5));
        let rule = &policy.ingress[0];
        assert_eq!(rule.ip_version, Some(IpVersion::V4));
        assert_eq!(
            rule.not_icmp,
            Some(IcmpMatch {
                icmp_type: 8,
                code: Some(0)
            })
        );
        assert!(rule.source.namespace_selector.as_ref().unwrap().is_global());
        assert!(rule.source.selector.is_none(), "\"\" is an unset selector");
        let back: Policy = serde_json::from_str(&serde_json::to_string(&policy).unwrap()).unwrap();
        assert_eq!(back, policy);
        assert!(serde_json::from_str::<IpVersion>("5").is_err());
    }
}
