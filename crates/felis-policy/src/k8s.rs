//! Kubernetes `networking.k8s.io/v1` NetworkPolicy, and its translation into the engine's
//! model the way Calico's `K8sNetworkPolicyToCalico` does it: tier `default`, order 1000, name
//! `knp.default.<name>`, one Allow rule per (peer × protocol), `ipBlock.except` → `notNets`,
//! `endPort` → port ranges, podSelector AND namespaceSelector within one peer, and explicit
//! `types` (Ingress, plus Egress when egress rules are present, unless `policyTypes` says).

use std::collections::BTreeMap;

use felis_api::selector::Selector;
use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;

use crate::error::Error;
use crate::model::Action;
use crate::model::DEFAULT_TIER;
use crate::model::Direction;
use crate::model::EntityRule;
use crate::model::LABEL_ORCHESTRATOR;
use crate::model::Policy;
use crate::model::Port;
use crate::model::Protocol;
use crate::model::Rule;

/// Order Calico gives every Kubernetes NetworkPolicy.
pub const K8S_POLICY_ORDER: f64 = 1000.0;

/// Prefix of the Calico name of a Kubernetes NetworkPolicy.
pub const K8S_POLICY_PREFIX: &str = "knp.default.";

/// A `networking.k8s.io/v1` NetworkPolicy (the fields that matter for policy).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    /// `networking.k8s.io/v1`.
    #[serde(default)]
    pub api_version: Option<String>,
    /// `NetworkPolicy`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default)]
    pub spec: NetworkPolicySpec,
}

/// The metadata a NetworkPolicy translation needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Name.
    pub name: String,
    /// Namespace (`default` when absent, as kubectl does).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `spec` of a NetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Pods the policy applies to (`{}`: all pods of the namespace).
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// Ingress rules (ORed).
    #[serde(default)]
    pub ingress: Vec<NetworkPolicyIngressRule>,
    /// Egress rules (ORed).
    #[serde(default)]
    pub egress: Vec<NetworkPolicyEgressRule>,
    /// `Ingress` and/or `Egress`.
    #[serde(default)]
    pub policy_types: Option<Vec<String>>,
}

/// One ingress rule: traffic from any of `from` to any of `ports`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkPolicyIngressRule {
    /// Sources (empty: any source).
    #[serde(default)]
    pub from: Vec<NetworkPolicyPeer>,
    /// Destination ports (empty: any port).
    #[serde(default)]
    pub ports: Vec<NetworkPolicyPort>,
}

/// One egress rule: traffic to any of `to` on any of `ports`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkPolicyEgressRule {
    /// Destinations (empty: any destination).
    #[serde(default)]
    pub to: Vec<NetworkPolicyPeer>,
    /// Destination ports (empty: any port).
    #[serde(default)]
    pub ports: Vec<NetworkPolicyPort>,
}

/// A peer: pods (by pod and/or namespace selector, ANDed) or an IP block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    /// Pods (in the policy's namespace unless `namespace_selector` is set).
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces.
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    /// A CIDR with exceptions.
    #[serde(default)]
    pub ip_block: Option<IpBlock>,
}

/// `ipBlock`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpBlock {
    /// The CIDR.
    pub cidr: String,
    /// CIDRs inside it that are excluded.
    #[serde(default)]
    pub except: Vec<String>,
}

/// A port (or range with `endPort`) and protocol.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Number or named port (absent: all ports of the protocol).
    #[serde(default)]
    pub port: Option<IntOrString>,
    /// Last port of a range starting at `port`.
    #[serde(default)]
    pub end_port: Option<u16>,
}

/// Kubernetes `IntOrString`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A string (a named port).
    String(String),
}

/// A Kubernetes label selector: `matchLabels` and `matchExpressions`, ANDed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// `key: value` equalities.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelSelectorRequirement {
    /// Label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values for `In`/`NotIn`.
    #[serde(default)]
    pub values: Vec<String>,
}

impl NetworkPolicy {
    /// The Calico name: `knp.default.<name>`.
    pub fn calico_name(&self) -> String {
        format!("{K8S_POLICY_PREFIX}{}", self.metadata.name)
    }

    /// Translates into the engine's model, as Calico does.
    pub fn to_policy(&self) -> Result<Policy, Error> {
        let name = self.calico_name();
        let namespace = self
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let context = Translation { policy: &name };
        let selector = context.pod_selector(&self.spec.pod_selector, "spec.podSelector")?;
        let types = match &self.spec.policy_types {
            Some(types) if !types.is_empty() => types
                .iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    "Ingress" => Ok(Direction::Ingress),
                    "Egress" => Ok(Direction::Egress),
                    other => Err(Error::InvalidPolicyType {
                        policy: name.clone(),
                        field: format!("spec.policyTypes[{i}]"),
                        value: other.to_string(),
                    }),
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ if self.spec.egress.is_empty() => vec![Direction::Ingress],
            _ => vec![Direction::Ingress, Direction::Egress],
        };
        let mut ingress = Vec::new();
        for (i, rule) in self.spec.ingress.iter().enumerate() {
            let field = format!("spec.ingress[{i}]");
            ingress.extend(context.rules(&rule.from, &rule.ports, Direction::Ingress, &field)?);
        }
        let mut egress = Vec::new();
        for (i, rule) in self.spec.egress.iter().enumerate() {
            let field = format!("spec.egress[{i}]");
            egress.extend(context.rules(&rule.to, &rule.ports, Direction::Egress, &field)?);
        }
        Ok(Policy {
            name,
            namespace: Some(namespace),
            tier: DEFAULT_TIER.to_string(),
            order: Some(K8S_POLICY_ORDER),
            selector,
            namespace_selector: None,
            service_account_selector: None,
            types,
            ingress,
            egress,
            apply_on_forward: false,
            pre_dnat: false,
            do_not_track: false,
        })
    }
}

impl LabelSelector {
    /// The selector in Calico's syntax (`""` for the empty selector, which is `all()`).
    pub fn to_selector_source(&self) -> Result<String, String> {
        let mut terms: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k} == '{v}'"))
            .collect();
        for expression in &self.match_expressions {
            let values = || {
                let quoted: Vec<String> =
                    expression.values.iter().map(|v| format!("'{v}'")).collect();
                quoted.join(", ")
            };
            let key = &expression.key;
            terms.push(match expression.operator.as_str() {
                "In" => format!("{key} in {{{}}}", values()),
                "NotIn" => format!("{key} not in {{{}}}", values()),
                "Exists" => format!("has({key})"),
                "DoesNotExist" => format!("!has({key})"),
                other => return Err(other.to_string()),
            });
        }
        Ok(terms.join(" && "))
    }
}

/// Translation of one policy: carries its name for error messages.
struct Translation<'a> {
    policy: &'a str,
}

impl Translation<'_> {
    fn selector(&self, source: &str, field: &str) -> Result<Selector, Error> {
        Selector::parse(source).map_err(|source| Error::InvalidSelector {
            policy: self.policy.to_string(),
            field: field.to_string(),
            source,
        })
    }

    fn label_selector(&self, selector: &LabelSelector, field: &str) -> Result<String, Error> {
        selector
            .to_selector_source()
            .map_err(|operator| Error::InvalidSelectorOperator {
                policy: self.policy.to_string(),
                field: field.to_string(),
                operator,
            })
    }

    /// Calico's `k8sSelectorToCalico(_, SelectorPod)`: pods only, via the orchestrator label.
    fn pod_selector(&self, selector: &LabelSelector, field: &str) -> Result<Selector, Error> {
        let terms = self.label_selector(selector, field)?;
        let pods = format!("{LABEL_ORCHESTRATOR} == 'k8s'");
        let source = if terms.is_empty() {
            pods
        } else {
            format!("{pods} && {terms}")
        };
        self.selector(&source, field)
    }

    fn namespace_selector(&self, selector: &LabelSelector, field: &str) -> Result<Selector, Error> {
        let terms = self.label_selector(selector, field)?;
        self.selector(&terms, field)
    }

    fn cidr(&self, value: &str, field: &str) -> Result<IpNet, Error> {
        // Kubernetes accepts a bare address in ipBlock.cidr's place only as a /32 or /128.
        value
            .parse::<IpNet>()
            .or_else(|e| {
                value
                    .parse::<std::net::IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| e)
            })
            .map_err(|source| Error::InvalidCidr {
                policy: self.policy.to_string(),
                field: field.to_string(),
                value: value.to_string(),
                source,
            })
    }

    /// The peer's half of an entity rule (selector, namespace selector, nets).
    fn peer(&self, peer: &NetworkPolicyPeer, field: &str) -> Result<EntityRule, Error> {
        let mut entity = EntityRule::default();
        if let Some(block) = &peer.ip_block {
            entity.nets = vec![self.cidr(&block.cidr, &format!("{field}.ipBlock.cidr"))?];
            for (i, except) in block.except.iter().enumerate() {
                let field = format!("{field}.ipBlock.except[{i}]");
                entity.not_nets.push(self.cidr(except, &field)?);
            }
            return Ok(entity);
        }
        let pods = peer.pod_selector.clone().unwrap_or_default();
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            entity.selector = Some(self.pod_selector(&pods, &format!("{field}.podSelector"))?);
        }
        if let Some(namespaces) = &peer.namespace_selector {
            let field = format!("{field}.namespaceSelector");
            entity.namespace_selector = Some(self.namespace_selector(namespaces, &field)?);
        }
        Ok(entity)
    }

    /// The ports grouped by protocol, in order of first appearance; an empty port list for a
    /// protocol means all its ports.
    fn ports(
        &self,
        ports: &[NetworkPolicyPort],
        field: &str,
    ) -> Result<Vec<(Protocol, Vec<Port>)>, Error> {
        let mut groups: Vec<(Protocol, Option<Vec<Port>>)> = Vec::new();
        for (i, entry) in ports.iter().enumerate() {
            let field = format!("{field}.ports[{i}]");
            let invalid = |source: Error| Error::InvalidPolicyPort {
                policy: self.policy.to_string(),
                field: field.clone(),
                source: Box::new(source),
            };
            let protocol: Protocol = entry
                .protocol
                .as_deref()
                .unwrap_or("TCP")
                .parse()
                .map_err(invalid)?;
            let port = match (&entry.port, entry.end_port) {
                (None, _) => None,
                (Some(IntOrString::Int(n)), end) => {
                    let start = u16::try_from(*n)
                        .map_err(|_| invalid(Error::InvalidPort(n.to_string())))?;
                    match end {
                        Some(end) if end < start => {
                            return Err(invalid(Error::InvalidPort(format!("{start}:{end}"))));
                        }
                        Some(end) => Some(Port::Range(start, end)),
                        None => Some(Port::Number(start)),
                    }
                }
                (Some(IntOrString::String(s)), _) => Some(s.parse::<Port>().map_err(invalid)?),
            };
            let index = match groups.iter().position(|(p, _)| *p == protocol) {
                Some(index) => index,
                None => {
                    groups.push((protocol, Some(Vec::new())));
                    groups.len() - 1
                }
            };
            if let Some((_, group)) = groups.get_mut(index) {
                match (group.as_mut(), port) {
                    (Some(list), Some(port)) => list.push(port),
                    // A protocol entry without a port opens all its ports.
                    (_, None) => *group = None,
                    (None, Some(_)) => {}
                }
            }
        }
        Ok(groups
            .into_iter()
            .map(|(protocol, ports)| (protocol, ports.unwrap_or_default()))
            .collect())
    }

    fn rules(
        &self,
        peers: &[NetworkPolicyPeer],
        ports: &[NetworkPolicyPort],
        direction: Direction,
        field: &str,
    ) -> Result<Vec<Rule>, Error> {
        let peer_word = match direction {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        let mut entities = Vec::new();
        for (i, peer) in peers.iter().enumerate() {
            entities.push(self.peer(peer, &format!("{field}.{peer_word}[{i}]"))?);
        }
        if entities.is_empty() {
            // No peers: any source/destination.
            entities.push(EntityRule::default());
        }
        let groups = self.ports(ports, field)?;
        let mut rules = Vec::new();
        for entity in entities {
            let mut emit = |protocol: Option<Protocol>, ports: Vec<Port>| {
                let mut rule = Rule::new(Action::Allow);
                rule.protocol = protocol;
                match direction {
                    Direction::Ingress => rule.source = entity.clone(),
                    Direction::Egress => rule.destination = entity.clone(),
                }
                rule.destination.ports = ports;
                rules.push(rule);
            };
            if groups.is_empty() {
                emit(None, Vec::new());
            }
            for (protocol, ports) in &groups {
                emit(Some(*protocol), ports.clone());
            }
        }
        Ok(rules)
    }
}
