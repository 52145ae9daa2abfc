//! Policy resources: `NetworkPolicy`, `GlobalNetworkPolicy`, `Tier` and `Profile`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use crate::error::ValidationError;
use crate::meta::ObjectMeta;
use crate::rule::Rule;
use crate::rule::validate_rules;
use crate::validate;
use crate::validate::Normalize;

/// The tier policies are in when they name none.
pub const DEFAULT_TIER: &str = "default";

/// The direction a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyType {
    /// Traffic to the endpoint.
    Ingress,
    /// Traffic from the endpoint.
    Egress,
}

/// Hints about how a policy is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PerformanceHint {
    /// Program the policy on every node up front.
    AssumeNeededOnEveryNode,
}

/// A Calico `NetworkPolicy` (namespaced).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    /// Name (`<tier>.<name>` outside the default tier) and namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default)]
    pub spec: NetworkPolicySpec,
}

/// The spec of a Calico `NetworkPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// The tier (default `default`).
    #[serde(default = "default_tier")]
    pub tier: String,
    /// Order within the tier: lower first; none = last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// The endpoints (pods in the policy's namespace) it applies to; empty = all.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Directions; defaulted from the rules present.
    #[serde(default)]
    pub types: Vec<PolicyType>,
    /// Ingress rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Egress rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    /// Selects endpoints by their service account's labels.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_selector: String,
    /// Performance hints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub performance_hints: Vec<PerformanceHint>,
}

impl Default for NetworkPolicySpec {
    fn default() -> NetworkPolicySpec {
        NetworkPolicySpec {
            tier: default_tier(),
            order: None,
            selector: String::new(),
            types: Vec::new(),
            ingress: Vec::new(),
            egress: Vec::new(),
            service_account_selector: String::new(),
            performance_hints: Vec::new(),
        }
    }
}

impl Normalize for NetworkPolicy {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        let s = &mut self.spec;
        if s.tier.is_empty() {
            s.tier = default_tier();
        }
        default_types(&mut s.types, &s.ingress, &s.egress);
        check_common(
            &self.metadata.name,
            &PolicyParts {
                tier: &s.tier,
                order: s.order,
                selector: &s.selector,
                service_account_selector: &s.service_account_selector,
                types: &s.types,
                ingress: &s.ingress,
                egress: &s.egress,
            },
        )
    }
}

/// A `GlobalNetworkPolicy` (cluster-scoped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalNetworkPolicy {
    /// Name (`<tier>.<name>` outside the default tier).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default)]
    pub spec: GlobalNetworkPolicySpec,
}

/// The spec of a `GlobalNetworkPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalNetworkPolicySpec {
    /// The tier (default `default`).
    #[serde(default = "default_tier")]
    pub tier: String,
    /// Order within the tier: lower first; none = last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// The endpoints (workloads and hosts) it applies to; empty = all.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Directions; defaulted from the rules present.
    #[serde(default)]
    pub types: Vec<PolicyType>,
    /// Ingress rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Egress rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    /// Restricts the policy to endpoints in namespaces matching this selector.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace_selector: String,
    /// Selects endpoints by their service account's labels.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_selector: String,
    /// Untracked policy (host endpoints; needs applyOnForward).
    #[serde(default, skip_serializing_if = "validate::is_false")]
    pub do_not_track: bool,
    /// Applied before DNAT (host endpoint ingress; needs applyOnForward).
    #[serde(
        default,
        rename = "preDNAT",
        skip_serializing_if = "validate::is_false"
    )]
    pub pre_dnat: bool,
    /// Also applies to traffic forwarded through host endpoints.
    #[serde(default, skip_serializing_if = "validate::is_false")]
    pub apply_on_forward: bool,
    /// Performance hints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub performance_hints: Vec<PerformanceHint>,
}

impl Default for GlobalNetworkPolicySpec {
    fn default() -> GlobalNetworkPolicySpec {
        GlobalNetworkPolicySpec {
            tier: default_tier(),
            order: None,
            selector: String::new(),
            types: Vec::new(),
            ingress: Vec::new(),
            egress: Vec::new(),
            namespace_selector: String::new(),
            service_account_selector: String::new(),
            do_not_track: false,
            pre_dnat: false,
            apply_on_forward: false,
            performance_hints: Vec::new(),
        }
    }
}

impl Normalize for GlobalNetworkPolicy {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        let s = &mut self.spec;
        if s.tier.is_empty() {
            s.tier = default_tier();
        }
        default_types(&mut s.types, &s.ingress, &s.egress);
        check_common(
            &self.metadata.name,
            &PolicyParts {
                tier: &s.tier,
                order: s.order,
                selector: &s.selector,
                service_account_selector: &s.service_account_selector,
                types: &s.types,
                ingress: &s.ingress,
                egress: &s.egress,
            },
        )?;
        if !s.namespace_selector.is_empty() {
            validate::selector("spec.namespaceSelector", &s.namespace_selector)?;
        }
        if s.do_not_track && s.pre_dnat {
            return Err(ValidationError::new(
                "spec.preDNAT",
                "preDNAT and doNotTrack cannot both be true",
            ));
        }
        if (s.do_not_track || s.pre_dnat) && !s.apply_on_forward {
            let field = if s.pre_dnat { "preDNAT" } else { "doNotTrack" };
            return Err(ValidationError::new(
                "spec.applyOnForward",
                format!("applyOnForward must be true when {field} is true"),
            ));
        }
        if s.pre_dnat && (!s.egress.is_empty() || s.types.contains(&PolicyType::Egress)) {
            return Err(ValidationError::new(
                "spec.egress",
                "a preDNAT policy cannot have egress rules or type Egress",
            ));
        }
        Ok(())
    }
}

/// A `Tier`: an ordered group of policies with a default action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Name (a DNS label).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Order and default action.
    #[serde(default)]
    pub spec: TierSpec,
}

/// The spec of a `Tier`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TierSpec {
    /// Order among tiers: lower first; none = last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// What happens to traffic no policy in the tier decided (default Deny).
    #[serde(default)]
    pub default_action: TierAction,
}

/// The action at the end of a tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TierAction {
    /// Drop ("end of tier drop"), the default.
    #[default]
    Deny,
    /// Go on to the next tier.
    Pass,
}

impl Normalize for Tier {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        check_order("spec.order", self.spec.order)
    }
}

/// A `Profile`: rules and labels inherited by the endpoints that list it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Name.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Rules and labels.
    #[serde(default)]
    pub spec: ProfileSpec,
}

/// The spec of a `Profile`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileSpec {
    /// Ingress rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Egress rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    /// Labels endpoints inherit (their own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels_to_apply: BTreeMap<String, String>,
}

impl Normalize for Profile {
    fn normalize(&mut self) -> Result<(), ValidationError> {
        validate::labels("spec.labelsToApply", &self.spec.labels_to_apply)?;
        validate_rules("spec.ingress", &self.spec.ingress)?;
        validate_rules("spec.egress", &self.spec.egress)
    }
}

fn default_tier() -> String {
    DEFAULT_TIER.to_string()
}

/// Calico's defaulting of `types`: both when both rule lists are present, Egress when only
/// egress rules are, else Ingress.
fn default_types(types: &mut Vec<PolicyType>, ingress: &[Rule], egress: &[Rule]) {
    if !types.is_empty() {
        return;
    }
    *types = match (ingress.is_empty(), egress.is_empty()) {
        (false, false) => vec![PolicyType::Ingress, PolicyType::Egress],
        (true, false) => vec![PolicyType::Egress],
        _ => vec![PolicyType::Ingress],
    };
}

struct PolicyParts<'a> {
    tier: &'a str,
    order: Option<f64>,
    selector: &'a str,
    service_account_selector: &'a str,
    types: &'a [PolicyType],
    ingress: &'a [Rule],
    egress: &'a [Rule],
}

fn check_common(name: &str, p: &PolicyParts<'_>) -> Result<(), ValidationError> {
    if !validate::is_dns1123_label(p.tier) {
        return Err(ValidationError::new(
            "spec.tier",
            format!("{:?} is not a valid tier name", p.tier),
        ));
    }
    if p.tier != DEFAULT_TIER {
        let prefix = format!("{}.", p.tier);
        if !name.starts_with(&prefix) || name.len() == prefix.len() {
            return Err(ValidationError::new(
                "metadata.name",
                format!(
                    "policy {name:?} is in tier {:?}: its name must be \"{prefix}<name>\"",
                    p.tier
                ),
            ));
        }
    }
    check_order("spec.order", p.order)?;
    if !p.selector.is_empty() {
        validate::selector("spec.selector", p.selector)?;
    }
    if !p.service_account_selector.is_empty() {
        validate::selector("spec.serviceAccountSelector", p.service_account_selector)?;
    }
    for (i, t) in p.types.iter().enumerate() {
        if p.types[..i].contains(t) {
            return Err(ValidationError::new(
                format!("spec.types[{i}]"),
                format!("{t:?} is listed twice"),
            ));
        }
    }
    if !p.ingress.is_empty() && !p.types.contains(&PolicyType::Ingress) {
        return Err(ValidationError::new(
            "spec.types",
            "the policy has ingress rules but types does not include Ingress",
        ));
    }
    if !p.egress.is_empty() && !p.types.contains(&PolicyType::Egress) {
        return Err(ValidationError::new(
            "spec.types",
            "the policy has egress rules but types does not include Egress",
        ));
    }
    validate_rules("spec.ingress", p.ingress)?;
    validate_rules("spec.egress", p.egress)
}

fn check_order(path: &str, order: Option<f64>) -> Result<(), ValidationError> {
    match order {
        Some(o) if !o.is_finite() => Err(ValidationError::new(
            path,
            format!("order must be a finite number, not {o}"),
        )),
        _ => Ok(()),
    }
}
