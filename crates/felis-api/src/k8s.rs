//! Kubernetes kinds Felis reads: `networking.k8s.io/v1` `NetworkPolicy` and `v1` `Namespace`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use crate::error::ValidationError;
use crate::meta::ObjectMeta;
use crate::net;
use crate::rule::Port;
use crate::rule::Protocol;
use crate::validate::Normalize;

/// A Kubernetes `NetworkPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sNetworkPolicy {
    /// Name and namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default)]
    pub spec: K8sNetworkPolicySpec,
}

/// The spec of a Kubernetes `NetworkPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sNetworkPolicySpec {
    /// The pods (of the namespace) it applies to; empty = all.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// Directions; unset means Ingress, plus Egress when egress rules exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<String>,
    /// Allowed incoming traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<K8sIngressRule>,
    /// Allowed outgoing traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<K8sEgressRule>,
}

impl K8sNetworkPolicySpec {
    /// The directions the policy affects, with Kubernetes' defaulting.
    pub fn effective_policy_types(&self) -> Vec<String> {
        if !self.policy_types.is_empty() {
            return self.policy_types.clone();
        }
        let mut types = vec!["Ingress".to_string()];
        if !self.egress.is_empty() {
            types.push("Egress".to_string());
        }
        types
    }
}

/// A Kubernetes label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must equal these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One set-based requirement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values for `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// An ingress rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sIngressRule {
    /// Allowed sources; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<K8sPeer>,
    /// Allowed ports; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<K8sPort>,
}

/// An egress rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sEgressRule {
    /// Allowed destinations; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<K8sPeer>,
    /// Allowed ports; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<K8sPort>,
}

/// A peer: pods (by pod and/or namespace labels) or an IP block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sPeer {
    /// Pods by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// A CIDR with exceptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// A CIDR with exceptions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    /// The block.
    #[serde(with = "net::cidr")]
    pub cidr: ipnet::IpNet,
    /// Sub-ranges excluded.
    #[serde(default, with = "net::cidr_vec", skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<ipnet::IpNet>,
}

/// A port (or range, with `endPort`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sPort {
    /// TCP (default), UDP or SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Number or name; none = all ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// Last port of a range starting at `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

impl Normalize for K8sNetworkPolicy {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        let s = &self.spec;
        check_label_selector("spec.podSelector", &s.pod_selector)?;
        for (i, t) in s.policy_types.iter().enumerate() {
            if t != "Ingress" && t != "Egress" {
                return Err(ValidationError::new(
                    format!("spec.policyTypes[{i}]"),
                    format!("must be Ingress or Egress, not {t:?}"),
                ));
            }
        }
        for (i, r) in s.ingress.iter().enumerate() {
            let path = format!("spec.ingress[{i}]");
            check_peers(&format!("{path}.from"), &r.from)?;
            check_ports(&format!("{path}.ports"), &r.ports)?;
        }
        for (i, r) in s.egress.iter().enumerate() {
            let path = format!("spec.egress[{i}]");
            check_peers(&format!("{path}.to"), &r.to)?;
            check_ports(&format!("{path}.ports"), &r.ports)?;
        }
        Ok(())
    }
}

fn check_label_selector(path: &str, s: &LabelSelector) -> Result<(), ValidationError> {
    for (i, e) in s.match_expressions.iter().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        match e.operator.as_str() {
            "In" | "NotIn" if e.values.is_empty() => {
                return Err(ValidationError::new(
                    format!("{at}.values"),
                    format!("operator {} needs values", e.operator),
                ));
            }
            "Exists" | "DoesNotExist" if !e.values.is_empty() => {
                return Err(ValidationError::new(
                    format!("{at}.values"),
                    format!("operator {} takes no values", e.operator),
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(ValidationError::new(
                    format!("{at}.operator"),
                    format!("must be In, NotIn, Exists or DoesNotExist, not {other:?}"),
                ));
            }
        }
    }
    Ok(())
}

fn check_peers(path: &str, peers: &[K8sPeer]) -> Result<(), ValidationError> {
    for (i, p) in peers.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if let Some(s) = &p.pod_selector {
            check_label_selector(&format!("{at}.podSelector"), s)?;
        }
        if let Some(s) = &p.namespace_selector {
            check_label_selector(&format!("{at}.namespaceSelector"), s)?;
        }
        match &p.ip_block {
            Some(_) if p.pod_selector.is_some() || p.namespace_selector.is_some() => {
                return Err(ValidationError::new(
                    format!("{at}.ipBlock"),
                    "ipBlock cannot be combined with podSelector or namespaceSelector",
                ));
            }
            Some(block) => {
                for (j, e) in block.except.iter().enumerate() {
                    if !block.cidr.contains(e) || e.prefix_len() <= block.cidr.prefix_len() {
                        return Err(ValidationError::new(
                            format!("{at}.ipBlock.except[{j}]"),
                            format!("{e} must be strictly within {}", block.cidr),
                        ));
                    }
                }
            }
            None if p.pod_selector.is_none() && p.namespace_selector.is_none() => {
                return Err(ValidationError::new(
                    at,
                    "set podSelector, namespaceSelector or ipBlock",
                ));
            }
            None => {}
        }
    }
    Ok(())
}

fn check_ports(path: &str, ports: &[K8sPort]) -> Result<(), ValidationError> {
    for (i, p) in ports.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if let Some(proto) = p.protocol
            && !proto.supports_ports()
        {
            return Err(ValidationError::new(
                format!("{at}.protocol"),
                format!("must be TCP, UDP or SCTP, not {proto}"),
            ));
        }
        match (&p.port, p.end_port) {
            (Some(Port::Range { .. }), _) => {
                return Err(ValidationError::new(
                    format!("{at}.port"),
                    "use port and endPort for a range",
                ));
            }
            (Some(Port::Number(start)), Some(end)) if end < *start => {
                return Err(ValidationError::new(
                    format!("{at}.endPort"),
                    format!("endPort {end} is below port {start}"),
                ));
            }
            (Some(Port::Named(_)) | None, Some(_)) => {
                return Err(ValidationError::new(
                    format!("{at}.endPort"),
                    "endPort needs a numeric port",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A Kubernetes `Namespace` (its labels select namespaces in policies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// Name and labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Finalizers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<NamespaceSpec>,
    /// Phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NamespaceStatus>,
}

/// The spec of a `Namespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    /// Finalizers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

/// The status of a `Namespace`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceStatus {
    /// `Active` or `Terminating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Conditions, kept verbatim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<serde_json::Value>,
}

impl Normalize for Namespace {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        Ok(())
    }
}
