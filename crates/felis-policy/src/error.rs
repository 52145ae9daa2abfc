//! The crate's error type.

use felis_api::selector::ParseError;

/// What went wrong turning input into the engine's model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A protocol that is neither a known name nor a number 1–255.
    #[error("invalid protocol {0:?}: expected TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1-255")]
    InvalidProtocol(String),
    /// A port that is neither a number, a `start:end` range nor a port name.
    #[error("invalid port {0:?}: expected a number, \"start:end\" or a port name")]
    InvalidPort(String),
    /// A selector that does not parse.
    #[error("invalid selector in {field} of policy {policy}")]
    InvalidSelector {
        /// Policy name.
        policy: String,
        /// Field path, e.g. `spec.ingress[0].from[1].podSelector`.
        field: String,
        /// Why it does not parse.
        #[source]
        source: ParseError,
    },
    /// A label-selector expression with an unknown operator.
    #[error("unknown label selector operator {operator:?} in {field} of policy {policy}")]
    InvalidSelectorOperator {
        /// Policy name.
        policy: String,
        /// Field path.
        field: String,
        /// The operator found.
        operator: String,
    },
    /// A CIDR that does not parse.
    #[error("invalid CIDR {value:?} in {field} of policy {policy}")]
    InvalidCidr {
        /// Policy name.
        policy: String,
        /// Field path.
        field: String,
        /// The text found.
        value: String,
        /// Why it does not parse.
        #[source]
        source: ipnet::AddrParseError,
    },
    /// A port of a Kubernetes NetworkPolicy that is invalid.
    #[error("invalid port in {field} of policy {policy}")]
    InvalidPolicyPort {
        /// Policy name.
        policy: String,
        /// Field path.
        field: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// A `policyTypes` entry that is neither `Ingress` nor `Egress`.
    #[error("invalid policy type {value:?} in {field} of policy {policy}")]
    InvalidPolicyType {
        /// Policy name.
        policy: String,
        /// Field path.
        field: String,
        /// The text found.
        value: String,
    },
    /// A selector of a stored resource that does not parse.
    #[error("invalid selector in {field} of {resource}")]
    ResourceSelector {
        /// Kind and name, e.g. `Profile kns.prod`.
        resource: String,
        /// Field path, e.g. `spec.ingress[0].source.selector`.
        field: String,
        /// Why it does not parse.
        #[source]
        source: ParseError,
    },
    /// A field of a stored resource with a value the engine cannot use.
    #[error("invalid {field} of {resource}: {reason}")]
    ResourceField {
        /// Kind and name.
        resource: String,
        /// Field path.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A stored Kubernetes NetworkPolicy that does not translate.
    #[error("failed to read Kubernetes NetworkPolicy {namespace}/{name}")]
    K8sPolicyDecode {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// `felis policy trace` named a workload that has no endpoint.
    #[error("no workload endpoint {namespace}/{name} (by endpoint, pod or workload name)")]
    UnknownWorkload {
        /// Namespace.
        namespace: String,
        /// Name given.
        name: String,
    },
    /// A trace query whose fields do not fit together.
    #[error("invalid trace query: {0}")]
    InvalidQuery(String),
    /// A trace peer that is neither `NS/WORKLOAD`, `WORKLOAD` nor an IP address.
    #[error("invalid peer {0:?}: expected NS/WORKLOAD, WORKLOAD or an IP address")]
    InvalidPeer(String),
    /// An endpoint without an address of the family the trace needs.
    #[error("endpoint {endpoint} has no {family} address")]
    NoAddress {
        /// `namespace/name`.
        endpoint: String,
        /// `IPv4` or `IPv6`.
        family: &'static str,
    },
    /// The two ends of a trace share no address family.
    #[error("{from} and {to} have no address family in common")]
    MixedFamilies {
        /// Source, as given.
        from: String,
        /// Destination, as given.
        to: String,
    },
    /// Neither end of a trace is an endpoint of the cluster: no policy applies.
    #[error("neither {from} nor {to} is an endpoint of the cluster")]
    NoEndpoint {
        /// Source, as given.
        from: String,
        /// Destination, as given.
        to: String,
    },
    /// A scenario file that does not parse.
    #[error("invalid scenario {field}: {reason}")]
    Scenario {
        /// Where: document, probe index or field.
        field: String,
        /// Why.
        reason: String,
    },
}
