//! `felis policy trace`: a query by workload names or addresses, and the report it prints.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;
use serde::Serialize;

use crate::engine::PolicySet;
use crate::error::Error;
use crate::host::EndpointToHostAction;
use crate::host::PathEnd;
use crate::host::Stage;
use crate::model::Endpoint;
use crate::model::IpVersion;
use crate::model::Packet;
use crate::model::Protocol;
use crate::trace::Decision;
use crate::trace::DirectionTrace;
use crate::trace::RuleRef;
use crate::trace::Step;
use crate::trace::Verdict;

/// The source port traced packets carry (an ephemeral port; rules rarely match source ports).
pub const TRACE_SOURCE_PORT: u16 = 40000;

/// One end of a traced packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Peer {
    /// A workload endpoint, by its name or its pod's (workload's) name.
    Workload {
        /// Namespace.
        namespace: String,
        /// Endpoint, pod or workload name.
        name: String,
    },
    /// An address: the endpoint that has it, or else a host outside the cluster.
    Ip(IpAddr),
}

impl FromStr for Peer {
    type Err = Error;

    /// `NS/WORKLOAD`, `WORKLOAD` (namespace `default`) or an IP address.
    fn from_str(s: &str) -> Result<Peer, Error> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Peer::Ip(ip));
        }
        let (namespace, name) = s.split_once('/').unwrap_or(("default", s));
        let valid = |part: &str| {
            !part.is_empty()
                && !part.contains('/')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        if valid(namespace) && valid(name) {
            Ok(Peer::Workload {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
        } else {
            Err(Error::InvalidPeer(s.to_string()))
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Workload { namespace, name } => write!(f, "{namespace}/{name}"),
            Peer::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// What `felis policy trace` asks: a packet from one peer to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Query {
    /// Source.
    pub from: Peer,
    /// Destination.
    pub to: Peer,
    /// IP protocol.
    pub protocol: Protocol,
    /// Destination port (protocols with ports).
    #[serde(default)]
    pub port: Option<u16>,
    /// ICMP type (ICMP and ICMPv6).
    #[serde(default)]
    pub icmp_type: Option<u8>,
    /// ICMP code.
    #[serde(default)]
    pub icmp_code: Option<u8>,
}

impl Query {
    /// A query from the CLI's flags: `--from`, `--to` (`NS/WORKLOAD`, `WORKLOAD` or an IP),
    /// `--protocol` (`TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6` or a number), `--port`,
    /// `--icmp-type`, `--icmp-code`. [`trace`] checks that they fit together.
    pub fn from_args(
        from: &str,
        to: &str,
        protocol: &str,
        port: Option<u16>,
        icmp_type: Option<u8>,
        icmp_code: Option<u8>,
    ) -> Result<Query, Error> {
        Ok(Query {
            from: from.parse()?,
            to: to.parse()?,
            protocol: protocol.parse()?,
            port,
            icmp_type,
            icmp_code,
        })
    }

    /// Whether the fields fit together: a port for protocols with ports and only for them,
    /// ICMP type and code only for ICMP and ICMPv6, a code only with a type.
    pub fn check(&self) -> Result<(), Error> {
        let invalid = |reason: String| Err(Error::InvalidQuery(reason));
        let protocol = self.protocol;
        match (protocol.has_ports(), self.port) {
            (true, None) => return invalid(format!("a {protocol} query needs a port")),
            (false, Some(port)) => {
                return invalid(format!("port {port} given, but {protocol} has no ports"));
            }
            _ => {}
        }
        if !protocol.is_icmp() && (self.icmp_type.is_some() || self.icmp_code.is_some()) {
            return invalid(format!(
                "ICMP type or code given, but the protocol is {protocol}"
            ));
        }
        if self.icmp_code.is_some() && self.icmp_type.is_none() {
            return invalid("an ICMP code needs an ICMP type".to_string());
        }
        Ok(())
    }

    /// A TCP query to `port`.
    pub fn tcp(from: Peer, to: Peer, port: u16) -> Query {
        Query {
            from,
            to,
            protocol: Protocol::TCP,
            port: Some(port),
            icmp_type: None,
            icmp_code: None,
        }
    }
}

/// Why one direction got its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// An Allow or Deny rule of a policy (`tier`, `policy`, `rule`).
    Policy,
    /// A participating tier had no matching rule; its default action is Deny (`tier`).
    EndOfTier,
    /// Every participating tier passed; a profile rule decided (`profile`, `rule`).
    Profile,
    /// No policy applies; a profile rule decided (`profile`, `rule`): "no policy, profile allow".
    NoPolicyProfile,
    /// No profile rule allowed the packet (or the endpoint has no profiles; for a host
    /// endpoint: its default deny).
    NoProfileAllowed,
    /// A failsafe port of the host allowed it (`failsafe`).
    Failsafe,
    /// Workload → its own host: `defaultEndpointToHostAction` (`endpointToHostAction`).
    EndpointToHost,
    /// Host → a local workload: always allowed.
    HostToWorkload,
    /// Workload → its host: IPv6 neighbour discovery or MLD, always allowed.
    NeighborDiscovery,
    /// Forwarded across a host endpoint, and no applyOnForward policy decided: allowed.
    ForwardNotPoliced,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Policy => "policy",
            Reason::EndOfTier => "end-of-tier",
            Reason::Profile => "profile",
            Reason::NoPolicyProfile => "no-policy-profile",
            Reason::NoProfileAllowed => "no-profile-allowed",
            Reason::Failsafe => "failsafe",
            Reason::EndpointToHost => "endpoint-to-host",
            Reason::HostToWorkload => "host-to-workload",
            Reason::NeighborDiscovery => "neighbor-discovery",
            Reason::ForwardNotPoliced => "forward-not-policed",
        })
    }
}

/// The verdict of one direction and what decided it, as `-o json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SideReport {
    /// `allow` or `deny`.
    #[serde(with = "lowercase_verdict")]
    pub verdict: Verdict,
    /// Deciding tier (a policy rule or end of tier); `null` otherwise.
    pub tier: Option<String>,
    /// Deciding policy; `null` otherwise.
    pub policy: Option<String>,
    /// 0-based index of the deciding rule, in its policy or profile; `null` otherwise.
    pub rule: Option<usize>,
    /// Why.
    pub reason: Reason,
    /// Namespace of the deciding NetworkPolicy (`null` for global policies and profiles).
    pub namespace: Option<String>,
    /// Deciding profile; `null` otherwise.
    pub profile: Option<String>,
    /// The endpoint evaluated: `namespace/name`, or a host endpoint's name.
    pub endpoint: String,
    /// Participating tiers, in order (empty: no policy applies).
    pub tiers: Vec<String>,
    /// Log and Pass rules met on the way, and skipped profiles, in order.
    pub steps: Vec<String>,
    /// The deciding stage: `untracked`, `pre-dnat`, `normal` (left out) or `forward`.
    #[serde(default, skip_serializing_if = "Stage::is_normal")]
    pub stage: Stage,
    /// The failsafe port that allowed it (`failsafe`), as `PROTOCOL:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe: Option<String>,
    /// The `defaultEndpointToHostAction` that decided (`endpoint-to-host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_to_host_action: Option<EndpointToHostAction>,
}

/// The answer to a [`Query`]: `-o json` serializes it; `Display` is the text form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceReport {
    /// `allow` when every side in the cluster allows.
    #[serde(with = "lowercase_verdict")]
    pub verdict: Verdict,
    /// Egress of the source endpoint; `null` when the source is outside the cluster.
    pub egress: Option<SideReport>,
    /// Ingress of the destination endpoint; `null` when it is outside the cluster.
    pub ingress: Option<SideReport>,
    /// Host endpoints the packet is forwarded across (applyOnForward policy), in path order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward: Vec<SideReport>,
    /// The source as asked.
    pub from: String,
    /// The destination as asked.
    pub to: String,
    /// The packet evaluated (addresses chosen from the endpoints).
    pub packet: Packet,
}

impl PolicySet {
    /// The endpoint `peer` stands for: a workload by name (an error if there is none), or the
    /// endpoint owning an address (workload endpoints first; `None`: outside the cluster).
    pub fn peer_endpoint(&self, peer: &Peer) -> Result<Option<&Endpoint>, Error> {
        match peer {
            Peer::Workload { namespace, name } => {
                let mut matches: Vec<&Endpoint> = self
                    .endpoints
                    .iter()
                    .filter(|e| e.namespace.as_deref() == Some(namespace.as_str()))
                    .filter(|e| e.name == *name || e.workload.as_deref() == Some(name.as_str()))
                    .collect();
                // The endpoint named exactly wins; several interfaces of one pod: by name.
                matches.sort_by_key(|e| (e.name != *name, e.name.as_str()));
                match matches.first() {
                    Some(endpoint) => Ok(Some(*endpoint)),
                    None => Err(Error::UnknownWorkload {
                        namespace: namespace.clone(),
                        name: name.clone(),
                    }),
                }
            }
            Peer::Ip(ip) => {
                let owns = |e: &&Endpoint| e.ips.iter().any(|net| net.contains(ip));
                Ok(self
                    .endpoints
                    .iter()
                    .filter(owns)
                    .find(|e| e.namespace.is_some())
                    .or_else(|| self.endpoints.iter().find(owns)))
            }
        }
    }
}

impl PolicySet {
    /// What `peer` stands for on a packet's path: a workload endpoint, a host (by a node's
    /// address or a host endpoint's `expectedIPs`, with the host endpoint the traffic crosses)
    /// or the outside. Workload addresses win over host addresses.
    pub fn peer_end(&self, peer: &Peer) -> Result<PathEnd<'_>, Error> {
        if let Some(endpoint) = self.peer_endpoint(peer)?
            && !endpoint.is_host_endpoint()
        {
            return Ok(PathEnd::Workload(endpoint));
        }
        let host = match peer {
            Peer::Ip(ip) => self.host_of(*ip),
            Peer::Workload { .. } => None,
        };
        Ok(match (host, self.peer_endpoint(peer)?) {
            (Some(host), _) => host,
            // A host endpoint of no node: judged as a plain endpoint.
            (None, Some(endpoint)) => PathEnd::Workload(endpoint),
            (None, None) => PathEnd::Outside,
        })
    }
}

/// Evaluates `query` against `set`: `felis policy trace`.
///
/// ```
/// use felis_policy::PolicySet;
/// use felis_policy::trace::{trace, Query};
///
/// let resources = felis_api::load::parse_documents(
///     "apiVersion: projectcalico.org/v3
/// kind: WorkloadEndpoint
/// metadata: {name: node1-k8s-web-eth0, namespace: prod, labels: {app: web}}
/// spec: {orchestrator: k8s, pod: web, node: node1, endpoint: eth0, ipNetworks: [10.0.0.1/32]}
/// ",
///     None,
/// )
/// .unwrap();
/// let set = PolicySet::from_resources(&resources).unwrap();
/// let query = Query::tcp("8.8.8.8".parse().unwrap(), "prod/web".parse().unwrap(), 80);
/// let report = trace(&set, &query).unwrap();
/// let json = serde_json::to_value(&report).unwrap();
/// assert_eq!(json["verdict"], "allow");
/// assert_eq!(json["egress"], serde_json::Value::Null); // 8.8.8.8 is outside the cluster
/// assert_eq!(json["ingress"]["reason"], "no-policy-profile");
/// println!("{report}");
/// ```
pub fn trace(set: &PolicySet, query: &Query) -> Result<TraceReport, Error> {
    query.check()?;
    let from_end = set.peer_end(&query.from)?;
    let to_end = set.peer_end(&query.to)?;
    let known = |end: &PathEnd<'_>| !matches!(end, PathEnd::Outside);
    let (from, to) = (from_end.endpoint(), to_end.endpoint());
    if !known(&from_end) && !known(&to_end) {
        return Err(Error::NoEndpoint {
            from: query.from.to_string(),
            to: query.to.to_string(),
        });
    }
    let (src_ip, dst_ip) = addresses(query, from, to)?;
    let has_ports = query.protocol.has_ports();
    let packet = Packet {
        src_ip,
        dst_ip,
        protocol: query.protocol,
        src_port: has_ports.then_some(TRACE_SOURCE_PORT),
        dst_port: query.port,
        icmp_type: query.icmp_type,
        icmp_code: query.icmp_code,
    };
    let result = set.path_verdict(&packet, from_end, to_end);
    Ok(TraceReport {
        verdict: result.verdict,
        egress: result.egress.as_ref().map(SideReport::from),
        ingress: result.ingress.as_ref().map(SideReport::from),
        forward: result.forward.iter().map(SideReport::from).collect(),
        from: query.from.to_string(),
        to: query.to.to_string(),
        packet,
    })
}

/// The packet's addresses: given ones, else the endpoints', in a family both ends have
/// (IPv4 first; the protocol's for ICMP and ICMPv6).
fn addresses(
    query: &Query,
    from: Option<&Endpoint>,
    to: Option<&Endpoint>,
) -> Result<(IpAddr, IpAddr), Error> {
    let given = |peer: &Peer| match peer {
        Peer::Ip(ip) => Some(*ip),
        Peer::Workload { .. } => None,
    };
    let (given_from, given_to) = (given(&query.from), given(&query.to));
    let families: Vec<IpVersion> = match (given_from, given_to) {
        (Some(a), Some(b)) if IpVersion::of(a) != IpVersion::of(b) => {
            return Err(mixed(query));
        }
        (Some(ip), _) | (_, Some(ip)) => vec![IpVersion::of(ip)],
        // ICMP is IPv4's, ICMPv6 IPv6's; other protocols run over either.
        (None, None) if query.protocol == Protocol::ICMP => vec![IpVersion::V4],
        (None, None) if query.protocol == Protocol::ICMPV6 => vec![IpVersion::V6],
        (None, None) => vec![IpVersion::V4, IpVersion::V6],
    };
    let address = |endpoint: Option<&Endpoint>, family: IpVersion| {
        endpoint.and_then(|e| {
            e.ips
                .iter()
                .find(|net| IpVersion::of_net(net) == family)
                .map(|net| net.addr())
        })
    };
    for &family in &families {
        let src = given_from.or_else(|| address(from, family));
        let dst = given_to.or_else(|| address(to, family));
        if let (Some(src), Some(dst)) = (src, dst) {
            return Ok((src, dst));
        }
    }
    // Say which endpoint lacks what.
    let family = match families.as_slice() {
        [IpVersion::V4] => "IPv4",
        [IpVersion::V6] => "IPv6",
        _ => "IPv4 or IPv6",
    };
    for (endpoint, given) in [(from, given_from), (to, given_to)] {
        if let Some(e) = endpoint
            && given.is_none()
            && families.iter().all(|f| address(Some(e), *f).is_none())
        {
            return Err(Error::NoAddress {
                endpoint: crate::engine::endpoint_key(e),
                family,
            });
        }
    }
    Err(mixed(query))
}

fn mixed(query: &Query) -> Error {
    Error::MixedFamilies {
        from: query.from.to_string(),
        to: query.to.to_string(),
    }
}

impl From<&DirectionTrace> for SideReport {
    fn from(side: &DirectionTrace) -> SideReport {
        let mut report = SideReport {
            verdict: side.verdict,
            tier: None,
            policy: None,
            rule: None,
            reason: Reason::NoProfileAllowed,
            namespace: None,
            profile: None,
            endpoint: side.endpoint.clone(),
            tiers: side.tiers.clone(),
            steps: side.steps.iter().map(Step::to_string).collect(),
            stage: side.stage,
            failsafe: None,
            endpoint_to_host_action: None,
        };
        match &side.decided_by {
            Decision::Rule {
                rule:
                    RuleRef::Policy {
                        tier,
                        namespace,
                        policy,
                        index,
                    },
                ..
            } => {
                report.reason = Reason::Policy;
                report.tier = Some(tier.clone());
                report.policy = Some(policy.clone());
                report.namespace = namespace.clone();
                report.rule = Some(*index);
            }
            Decision::Rule {
                rule: RuleRef::Profile { profile, index },
                ..
            } => {
                report.reason = if side.is_profile_only() {
                    Reason::NoPolicyProfile
                } else {
                    Reason::Profile
                };
                report.profile = Some(profile.clone());
                report.rule = Some(*index);
            }
            Decision::EndOfTier { tier } => {
                report.reason = Reason::EndOfTier;
                report.tier = Some(tier.clone());
            }
            Decision::NoProfileMatched => {}
            Decision::Failsafe { protocol, port } => {
                report.reason = Reason::Failsafe;
                report.failsafe = Some(format!("{protocol}:{port}"));
            }
            Decision::EndpointToHost { action } => {
                report.reason = Reason::EndpointToHost;
                report.endpoint_to_host_action = Some(*action);
            }
            Decision::HostToWorkload => report.reason = Reason::HostToWorkload,
            Decision::NeighborDiscovery => report.reason = Reason::NeighborDiscovery,
            Decision::ForwardNotPoliced => report.reason = Reason::ForwardNotPoliced,
        }
        report
    }
}

impl fmt::Display for SideReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.endpoint, self.verdict)?;
        let rule = self.rule.unwrap_or_default();
        let profile = self.profile.as_deref().unwrap_or_default();
        let tier = self.tier.as_deref().unwrap_or_default();
        match self.reason {
            Reason::Policy => {
                let policy = self.policy.as_deref().unwrap_or_default();
                match &self.namespace {
                    Some(ns) => write!(f, "tier {tier}, policy {ns}/{policy}, rule {rule}")?,
                    None => write!(f, "tier {tier}, global policy {policy}, rule {rule}")?,
                }
            }
            Reason::EndOfTier => write!(f, "end of tier {tier} (no rule matched, default Deny)")?,
            Reason::Profile => write!(
                f,
                "profile {profile}, rule {rule} (after tiers {})",
                self.tiers.join(", ")
            )?,
            Reason::NoPolicyProfile => {
                let what = match self.verdict {
                    Verdict::Allow => "allow",
                    Verdict::Deny => "deny",
                };
                write!(f, "no policy, profile {what} ({profile}, rule {rule})")?;
            }
            Reason::NoProfileAllowed if self.tiers.is_empty() => {
                f.write_str("no policy, and no profile allowed it")?;
            }
            Reason::NoProfileAllowed => write!(
                f,
                "every tier passed ({}), and no profile allowed it",
                self.tiers.join(", ")
            )?,
            Reason::Failsafe => write!(
                f,
                "failsafe port {}",
                self.failsafe.as_deref().unwrap_or_default()
            )?,
            Reason::EndpointToHost => {
                let action = self.endpoint_to_host_action.unwrap_or_default();
                write!(
                    f,
                    "workload to its host: defaultEndpointToHostAction {action}"
                )?;
            }
            Reason::HostToWorkload => f.write_str("host to a local workload: always allowed")?,
            Reason::NeighborDiscovery => {
                f.write_str("workload to its host: ICMPv6 neighbour discovery, always allowed")?;
            }
            Reason::ForwardNotPoliced => {
                f.write_str("forwarded, no applyOnForward policy decided: allowed")?;
            }
        }
        if self.stage != Stage::Normal {
            write!(f, " [stage {}]", self.stage)?;
        }
        for step in &self.steps {
            write!(f, "\n    {step}")?;
        }
        Ok(())
    }
}

impl fmt::Display for TraceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.packet;
        write!(
            f,
            "{} -> {}: {} {} -> {}",
            self.from, self.to, p.protocol, p.src_ip, p.dst_ip
        )?;
        if let Some(port) = p.dst_port {
            write!(f, " port {port}")?;
        }
        if let Some(icmp_type) = p.icmp_type {
            write!(f, " type {icmp_type}")?;
            if let Some(code) = p.icmp_code {
                write!(f, " code {code}")?;
            }
        }
        writeln!(f)?;
        match &self.egress {
            Some(side) => writeln!(f, "  egress  {side}")?,
            None => writeln!(
                f,
                "  egress  -: source {} is outside the cluster",
                self.from
            )?,
        }
        match &self.ingress {
            Some(side) => writeln!(f, "  ingress {side}")?,
            None => writeln!(
                f,
                "  ingress -: destination {} is outside the cluster",
                self.to
            )?,
        }
        for side in &self.forward {
            writeln!(f, "  forward {side}")?;
        }
        write!(f, "verdict: {}", self.verdict)
    }
}

/// `Verdict` as `"allow"`/`"deny"`.
mod lowercase_verdict {
    use serde::Deserialize;
    use serde::Deserializer;
    use serde::Serializer;

    use crate::trace::Verdict;

    pub(super) fn serialize<S: Serializer>(v: &Verdict, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Verdict, D::Error> {
        match String::deserialize(d)?.as_str() {
            "allow" => Ok(Verdict::Allow),
            "deny" => Ok(Verdict::Deny),
            other => Err(serde::de::Error::custom(format!(
                "verdict {other:?} is not allow or deny"
            ))),
        }
    }
}
