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
}
