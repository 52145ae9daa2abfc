//! Policy resolution and verdicts: which tiers, policies and profiles apply to an endpoint, and
//! what happens to a packet, exactly per Calico's semantics (the reference §3).
//!
//! The engine works on its own input model ([`model`]): a flattened view of the
//! `projectcalico.org/v3` resources (endpoints, policies, tiers, profiles, network sets,
//! namespaces), built by the caller from whatever store it reads. [`k8s`] translates Kubernetes
//! `networking.k8s.io/v1` NetworkPolicies into that model the way Calico does.
//! [`PolicySet::verdict`] is what `felis policy trace` prints; [`PolicySet::applicable_tiers`]
//! is what the rule compiler walks.
//!
//! Pure logic in the middle layer: no I/O, no clock, no dataplane. It does not model
//! untracked/pre-DNAT/applyOnForward policy, failsafe ports or endpoint-to-host defaults.

pub mod engine;
pub mod error;
pub mod k8s;
pub mod model;
mod resolve;
pub mod trace;

pub use engine::AppliedTier;
pub use engine::PolicySet;
pub use error::Error;
pub use model::Action;
pub use model::Direction;
pub use model::Endpoint;
pub use model::EntityRule;
pub use model::IcmpMatch;
pub use model::IpVersion;
pub use model::NamedPort;
pub use model::Namespace;
pub use model::NetworkSet;
pub use model::Packet;
pub use model::Policy;
pub use model::Port;
pub use model::Profile;
pub use model::Protocol;
pub use model::Rule;
pub use model::ServiceAccount;
pub use model::ServiceAccountMatch;
pub use model::Tier;
pub use model::TierDefaultAction;
pub use resolve::NamedPortMember;
pub use resolve::ResolvedEntity;
pub use trace::Decision;
pub use trace::DirectionTrace;
pub use trace::RuleRef;
pub use trace::Step;
pub use trace::Trace;
pub use trace::Verdict;
