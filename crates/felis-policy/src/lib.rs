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
//! [`PolicySet::from_resources`] builds that model from stored resources the way Calico does
//! ([`convert`]), and [`trace()`] answers `felis policy trace`. [`scenario`] reads the
//! scenario files (`tests/scenarios/*.yaml`: resources plus probes with expected verdicts) that
//! the trace suite and the lab both replay.
//!
//! [`PolicySet::resolve_entity`] turns a rule's selectors and named ports into the IP sets a
//! dataplane compiler programs; the verdict engine asks the same predicates about one address.
//! [`PolicySet::compile`] builds a host's whole [`Program`] (tiers, policy and profile chains,
//! IP sets), and [`Program::verdict`] interprets it: the reference a renderer must agree with.
//!
//! ```
//! use felis_policy::k8s::NetworkPolicy;
//! use felis_policy::{Endpoint, Packet, PolicySet, Profile, Verdict};
//!
//! let mut set = PolicySet::new();
//! set.add_profile(Profile::allow_all("kns.prod"));
//! let pod = |name: &str, app: &str, ip: &str| Endpoint {
//!     name: name.to_string(),
//!     namespace: Some("prod".to_string()),
//!     labels: [("app".to_string(), app.to_string())].into(),
//!     ips: vec![ip.parse().unwrap()],
//!     profiles: vec!["kns.prod".to_string()],
//!     orchestrator: Some("k8s".to_string()),
//!     ..Endpoint::default()
//! };
//! set.add_endpoint(pod("web", "web", "10.0.0.1/32")).add_endpoint(pod("db", "db", "10.0.0.2/32"));
//! let np: NetworkPolicy = serde_json::from_str(r#"{
//!     "metadata": {"name": "db", "namespace": "prod"},
//!     "spec": {"podSelector": {"matchLabels": {"app": "db"}},
//!              "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
//!                           "ports": [{"port": 5432}]}]}
//! }"#).unwrap();
//! set.add_policy(np.to_policy().unwrap());
//!
//! let (web, db) = (&set.endpoints[0], &set.endpoints[1]);
//! let packet = Packet::tcp("10.0.0.1".parse().unwrap(), 40000, "10.0.0.2".parse().unwrap(), 5432);
//! assert_eq!(set.verdict(&packet, Some(web), Some(db)).verdict, Verdict::Allow);
//! let packet = Packet::tcp("10.0.0.1".parse().unwrap(), 40000, "10.0.0.2".parse().unwrap(), 22);
//! let trace = set.verdict(&packet, Some(web), Some(db));
//! assert_eq!(trace.verdict, Verdict::Deny); // end of tier `default`
//! println!("{trace}");
//! ```
//!
//! `felis policy trace` is [`PolicySet::from_resources`] over every stored resource
//! ([`convert`] says how each kind maps), then [`trace()`] of a [`trace::Query`]; the
//! [`trace::TraceReport`] serializes as `-o json` prints it and displays as the text form:
//!
//! ```
//! use felis_policy::trace::Query;
//! use felis_policy::PolicySet;
//!
//! let stored = felis_api::load::parse_documents(r#"
//! apiVersion: projectcalico.org/v3
//! kind: WorkloadEndpoint
//! metadata: {name: node1-k8s-web-eth0, namespace: prod, labels: {app: web}}
//! spec: {orchestrator: k8s, node: node1, pod: web, endpoint: eth0, ipNetworks: [10.0.0.1/32]}
//! ---
//! apiVersion: projectcalico.org/v3
//! kind: WorkloadEndpoint
//! metadata: {name: node1-k8s-db-eth0, namespace: prod, labels: {app: db}}
//! spec: {orchestrator: k8s, node: node1, pod: db, endpoint: eth0, ipNetworks: [10.0.0.2/32]}
//! ---
//! apiVersion: networking.k8s.io/v1
//! kind: NetworkPolicy
//! metadata: {name: db, namespace: prod}
//! spec:
//!   podSelector: {matchLabels: {app: db}}
//!   ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]
//! "#, None)?;
//! let query = Query {
//!     from: "prod/web".parse()?,          // NS/WORKLOAD, WORKLOAD or an IP
//!     to: "prod/db".parse()?,
//!     protocol: "TCP".parse()?,
//!     port: Some(22),
//!     icmp_type: None,
//!     icmp_code: None,
//! };
//! let report = felis_policy::trace(&PolicySet::from_resources(&stored)?, &query)?;
//! let json = serde_json::to_value(&report)?;
//! assert_eq!(json["verdict"], "deny");
//! assert_eq!(json["egress"]["reason"], "no-policy-profile"); // kns.prod allows
//! assert_eq!(json["ingress"]["reason"], "end-of-tier");
//! assert_eq!(json["ingress"]["tier"], "default");
//! println!("{report}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Semantics, where the reference leaves room:
//! - Selectors see an endpoint's own labels, then `projectcalico.org/namespace`,
//!   `/orchestrator` and `/serviceaccount`, then its profiles' `labelsToApply` (in order).
//! - A rule `namespaceSelector` other than `global()` ranges over namespaced objects only; a GNP
//!   `namespaceSelector` likewise selects only namespaced endpoints.
//! - `notSelector` is scoped like `selector` (NP: the policy's namespace).
//! - Kubernetes pod peers carry Calico's `projectcalico.org/orchestrator == 'k8s'` term, so they
//!   never match network sets or host endpoints.
//! - Equal-order policies sort by `<namespace>/<name>` (GNPs by `<name>`), as Felix does.
//! - A Pass rule in a profile ends that profile; the next profile is tried.
//!
//! [`IncrementalCompiler`] keeps a node's [`Program`] up to date change by change (an endpoint
//! or a policy put or deleted costs what it touches, not the cluster), with sets numbered by
//! definition so that their ids never change while members come and go, and records each
//! change as a [`ProgramDelta`] for the dataplane; [`Program::canonical`] compares it with
//! [`PolicySet::compile_for_node`] (a property test checks random change sequences).
//!
//! [`host`] adds host endpoints and traffic to and from hosts: failsafe ports, the untracked
//! and pre-DNAT stages, applyOnForward, `defaultEndpointToHostAction` and host→workload;
//! [`trace()`] uses it ([`PolicySet::path_verdict`]), and [`PolicySet::compile_for_node`]
//! compiles a node's host endpoints into [`program::HostProgram`].
//!
//! Pure logic in the middle layer: no I/O, no clock, no dataplane. It does not model staged
//! policies, `services` matches or HTTP matches.

pub mod convert;
pub mod engine;
pub mod error;
pub mod host;
pub mod incremental;
pub mod k8s;
pub mod model;
pub mod program;
mod resolve;
pub mod scenario;
pub mod trace;

pub use engine::AppliedTier;
pub use engine::PolicySet;
pub use error::Error;
pub use host::EndpointToHostAction;
pub use host::FailsafePort;
pub use host::HostPolicyConfig;
pub use host::NEIGHBOR_DISCOVERY_TYPES;
pub use host::PathEnd;
pub use host::Stage;
pub use incremental::IncrementalCompiler;
pub use incremental::ProgramDelta;
pub use model::Action;
pub use model::Direction;
pub use model::Endpoint;
pub use model::EntityRule;
pub use model::HostInterface;
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
pub use program::Program;
pub use resolve::NamedPortMember;
pub use resolve::ResolvedEntity;
pub use trace::Decision;
pub use trace::DirectionTrace;
pub use trace::Peer;
pub use trace::Query;
pub use trace::RuleRef;
pub use trace::Step;
pub use trace::Trace;
pub use trace::TraceReport;
pub use trace::Verdict;
pub use trace::trace;
