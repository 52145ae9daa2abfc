//! The answer to "what happens to this packet, and why": per direction, the verdict, what
//! decided it, the tiers that took part and the Log/Pass rules met on the way. Serializes for
//! `felis policy trace -o json`; `Display` gives the one-line-per-side human form.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

use crate::host::EndpointToHostAction;
use crate::host::Stage;
use crate::model::Action;
use crate::model::Protocol;

mod report;

pub use report::Peer;
pub use report::Query;
pub use report::Reason;
pub use report::SideReport;
pub use report::TRACE_SOURCE_PORT;
pub use report::TraceReport;
pub use report::trace;

/// Whether a packet may pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// Accepted.
    Allow,
    /// Dropped.
    Deny,
}

/// A rule, by where it sits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RuleRef {
    /// Rule `index` of a policy's rules for the direction.
    Policy {
        /// Tier name.
        tier: String,
        /// Namespace of a NetworkPolicy.
        namespace: Option<String>,
        /// Policy name.
        policy: String,
        /// 0-based rule index.
        index: usize,
    },
    /// Rule `index` of a profile's rules for the direction.
    Profile {
        /// Profile name.
        profile: String,
        /// 0-based rule index.
        index: usize,
    },
}

/// What decided one direction's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Decision {
    /// An Allow or Deny rule of a policy or profile matched.
    Rule {
        /// The rule.
        rule: RuleRef,
        /// Its action (Allow or Deny).
        action: Action,
    },
    /// A participating tier had no matching rule and its default action is Deny.
    EndOfTier {
        /// Tier name.
        tier: String,
    },
    /// No profile rule allowed the packet (including: the endpoint has no profiles).
    NoProfileMatched,
    /// A failsafe port of the host (FelixConfiguration `failsafeInbound/OutboundHostPorts`)
    /// allowed the packet before any policy.
    Failsafe {
        /// The failsafe entry's protocol.
        protocol: Protocol,
        /// The failsafe entry's port.
        port: u16,
    },
    /// Workload → its own host: after the workload's egress policy,
    /// `defaultEndpointToHostAction` decided.
    EndpointToHost {
        /// The configured action.
        action: EndpointToHostAction,
    },
    /// Host → a workload on the same host: always allowed.
    HostToWorkload,
    /// Workload → its host: IPv6 neighbour discovery or MLD, always allowed.
    NeighborDiscovery,
    /// Forwarded traffic crossing a host endpoint that no applyOnForward policy decided:
    /// allowed.
    ForwardNotPoliced,
}

/// Something that happened on the way to a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// A Log rule matched; evaluation continued.
    Log(RuleRef),
    /// A Pass rule matched: the rest of its tier was skipped.
    Pass(RuleRef),
    /// A tier whose default action is Pass had no matching rule.
    EndOfTierPass {
        /// Tier name.
        tier: String,
    },
    /// The endpoint names a profile that does not exist; it was skipped.
    MissingProfile {
        /// Profile name.
        profile: String,
    },
}

/// The verdict for one endpoint in one direction, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectionTrace {
    /// `namespace/name` (or `name` for host endpoints).
    pub endpoint: String,
    /// The verdict.
    pub verdict: Verdict,
    /// What decided it.
    pub decided_by: Decision,
    /// Participating tiers, in evaluation order (empty: no policy applies, profiles decided).
    pub tiers: Vec<String>,
    /// Log and Pass rules met on the way, in order.
    pub steps: Vec<Step>,
    /// The policy stage that decided (host endpoints: untracked, pre-DNAT, normal, forward).
    #[serde(default, skip_serializing_if = "Stage::is_normal")]
    pub stage: Stage,
}

impl DirectionTrace {
    /// Whether profiles decided because no policy applied at all.
    pub fn is_profile_only(&self) -> bool {
        self.tiers.is_empty()
    }
}

/// The verdict of a packet: the egress side of the source endpoint, then the ingress side of
/// the destination endpoint. A side is `None` when that end is outside the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    /// Allow when every side present allows.
    pub verdict: Verdict,
    /// Egress policy of the source endpoint.
    pub egress: Option<DirectionTrace>,
    /// Ingress policy of the destination endpoint.
    pub ingress: Option<DirectionTrace>,
    /// Host endpoints forwarded traffic crosses (applyOnForward policy): the source's host
    /// endpoint (egress) first, then the destination's (ingress).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward: Vec<DirectionTrace>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleRef::Policy {
                tier,
                namespace: Some(ns),
                policy,
                index,
            } => {
                write!(f, "tier {tier} policy {ns}/{policy} rule {index}")
            }
            RuleRef::Policy {
                tier,
                namespace: None,
                policy,
                index,
            } => {
                write!(f, "tier {tier} policy {policy} rule {index}")
            }
            RuleRef::Profile { profile, index } => write!(f, "profile {profile} rule {index}"),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Rule { rule, action } => write!(f, "{action:?} by {rule}"),
            Decision::EndOfTier { tier } => write!(f, "end of tier {tier} (default action Deny)"),
            Decision::NoProfileMatched => f.write_str("no profile allowed it"),
            Decision::Failsafe { protocol, port } => {
                write!(f, "failsafe port {protocol}:{port}")
            }
            Decision::EndpointToHost { action } => {
                write!(f, "workload to host: defaultEndpointToHostAction {action}")
            }
            Decision::HostToWorkload => f.write_str("host to local workload: always allowed"),
            Decision::NeighborDiscovery => {
                f.write_str("workload to host: ICMPv6 neighbour discovery, always allowed")
            }
            Decision::ForwardNotPoliced => {
                f.write_str("forwarded, and no applyOnForward policy decided")
            }
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Log(rule) => write!(f, "log at {rule}"),
            Step::Pass(rule) => write!(f, "pass at {rule}"),
            Step::EndOfTierPass { tier } => write!(f, "end of tier {tier} passes"),
            Step::MissingProfile { profile } => write!(f, "profile {profile} does not exist"),
        }
    }
}

impl fmt::Display for DirectionTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.endpoint, self.verdict, self.decided_by
        )?;
        if self.stage != Stage::Normal {
            write!(f, "; stage {}", self.stage)?;
        }
        if self.is_profile_only() {
            f.write_str("; no policy applies")?;
        } else {
            write!(f, "; tiers {}", self.tiers.join(", "))?;
        }
        for step in &self.steps {
            write!(f, "; {step}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.egress {
            Some(side) => writeln!(f, "egress  {side}")?,
            None => writeln!(f, "egress  (source outside the cluster)")?,
        }
        match &self.ingress {
            Some(side) => writeln!(f, "ingress {side}")?,
            None => writeln!(f, "ingress (destination outside the cluster)")?,
        }
        for side in &self.forward {
            writeln!(f, "forward {side}")?;
        }
        write!(f, "verdict {}", self.verdict)
    }
}
