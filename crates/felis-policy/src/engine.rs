//! The cluster's policy state and the verdict of a packet (the reference §3 "Evaluation order"
//! and "Scoping of selectors in rules").
//!
//! ```text
//!   packet ──► egress of `from` ──► ingress of `to` ──► verdict
//!              │
//!              ├─ participating tiers (≥1 policy selecting the endpoint in this direction),
//!              │  by order (nil last) then name
//!              │    └─ policies by order then name ─► rules in order:
//!              │         Allow/Deny: done · Log: continue · Pass: next tier
//!              │    └─ no rule matched: tier default action (Deny, or Pass)
//!              └─ no tier, or the last one passed: profiles in order; none allowed ⇒ deny
//! ```

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::net::IpAddr;

use felis_api::selector::Labels;
use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;

use crate::host::HostPolicyConfig;
use crate::host::Stage;
use crate::model::Action;
use crate::model::Direction;
use crate::model::Endpoint;
use crate::model::EntityRule;
use crate::model::IpVersion;
use crate::model::LABEL_NAMESPACE;
use crate::model::LABEL_ORCHESTRATOR;
use crate::model::LABEL_SERVICE_ACCOUNT;
use crate::model::NamedLabels;
use crate::model::Namespace;
use crate::model::NetworkSet;
use crate::model::Packet;
use crate::model::Policy;
use crate::model::Port;
use crate::model::Profile;
use crate::model::Rule;
use crate::model::ServiceAccount;
use crate::model::Tier;
use crate::model::TierDefaultAction;
use crate::resolve::EndpointLabels;
use crate::resolve::EntityScope;
use crate::trace::Decision;
use crate::trace::DirectionTrace;
use crate::trace::RuleRef;
use crate::trace::Step;
use crate::trace::Trace;
use crate::trace::Verdict;

/// The whole cluster's policy state: what a verdict depends on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySet {
    /// Tiers by name. Calico's built-in tiers are used for names missing here.
    #[serde(default)]
    pub tiers: BTreeMap<String, Tier>,
    /// NetworkPolicies and GlobalNetworkPolicies, in any order.
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// Profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    /// NetworkSets and GlobalNetworkSets.
    #[serde(default)]
    pub network_sets: Vec<NetworkSet>,
    /// Namespaces by name.
    #[serde(default)]
    pub namespaces: BTreeMap<String, Namespace>,
    /// Service accounts.
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccount>,
    /// Known endpoints: rule selectors resolve to their addresses.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// FelixConfiguration values for host endpoints and workload→host traffic.
    #[serde(default, skip_serializing_if = "HostPolicyConfig::is_default")]
    pub host: HostPolicyConfig,
    /// Per-node FelixConfiguration (`node.<name>`) values, merged over [`PolicySet::host`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_by_node: BTreeMap<String, HostPolicyConfig>,
    /// Node addresses by node name: a packet to or from one is to or from that host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, Vec<IpAddr>>,
}

/// A participating tier with the policies in it that apply, both in evaluation order.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedTier<'a> {
    /// The tier.
    pub tier: Tier,
    /// The policies of the tier that select the endpoint in the direction, in order.
    pub policies: Vec<&'a Policy>,
}

impl PolicySet {
    /// An empty policy state.
    pub fn new() -> PolicySet {
        PolicySet::default()
    }

    /// Adds or replaces a tier.
    pub fn add_tier(&mut self, tier: Tier) -> &mut Self {
        self.tiers.insert(tier.name.clone(), tier);
        self
    }

    /// Adds a policy.
    pub fn add_policy(&mut self, policy: Policy) -> &mut Self {
        self.policies.push(policy);
        self
    }

    /// Adds or replaces a profile.
    pub fn add_profile(&mut self, profile: Profile) -> &mut Self {
        self.profiles.insert(profile.name.clone(), profile);
        self
    }

    /// Adds a network set.
    pub fn add_network_set(&mut self, network_set: NetworkSet) -> &mut Self {
        self.network_sets.push(network_set);
        self
    }

    /// Adds or replaces a namespace.
    pub fn add_namespace(&mut self, namespace: Namespace) -> &mut Self {
        self.namespaces.insert(namespace.name.clone(), namespace);
        self
    }

    /// Adds a service account.
    pub fn add_service_account(&mut self, service_account: ServiceAccount) -> &mut Self {
        self.service_accounts.push(service_account);
        self
    }

    /// Adds a known endpoint.
    pub fn add_endpoint(&mut self, endpoint: Endpoint) -> &mut Self {
        self.endpoints.push(endpoint);
        self
    }

    /// The tier named `name`: configured, else built-in, else order nil with default Deny.
    pub fn tier(&self, name: &str) -> Tier {
        if let Some(tier) = self.tiers.get(name) {
            return tier.clone();
        }
        Tier::builtins()
            .into_iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| Tier {
                name: name.to_string(),
                order: None,
                default_action: TierDefaultAction::Deny,
            })
    }

    /// The known endpoint owning `ip`, if any.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.ips.iter().any(|net| net.contains(&ip)))
    }

    /// The labels selectors see on `endpoint`: its own, then `projectcalico.org/namespace`,
    /// `/orchestrator` and `/serviceaccount`, then labels inherited from its profiles.
    pub fn effective_labels(&self, endpoint: &Endpoint) -> BTreeMap<String, String> {
        let view = EndpointLabels {
            set: self,
            endpoint,
        };
        let mut keys: Vec<&str> = endpoint.labels.keys().map(String::as_str).collect();
        keys.extend([LABEL_NAMESPACE, LABEL_ORCHESTRATOR, LABEL_SERVICE_ACCOUNT]);
        for profile in endpoint
            .profiles
            .iter()
            .filter_map(|p| self.profiles.get(p))
        {
            keys.extend(profile.labels_to_apply.keys().map(String::as_str));
        }
        keys.iter()
            .filter_map(|k| view.label(k).map(|v| (k.to_string(), v.to_string())))
            .collect()
    }

    /// Whether `policy` applies to `endpoint` (in whichever direction): namespace, selector,
    /// GNP `namespaceSelector` and `serviceAccountSelector`.
    pub fn policy_selects(&self, policy: &Policy, endpoint: &Endpoint) -> bool {
        let in_namespace = match (&policy.namespace, &policy.namespace_selector) {
            (Some(ns), _) => endpoint.namespace.as_deref() == Some(ns.as_str()),
            (None, None) => true,
            (None, Some(selector)) if selector.is_global() => endpoint.namespace.is_none(),
            // "Restricts GNP to namespaces": host endpoints are in none.
            (None, Some(selector)) => {
                endpoint.namespace.is_some()
                    && selector.matches(&self.namespace_labels(endpoint.namespace.as_deref()))
            }
        };
        in_namespace
            && policy.selector.matches(&EndpointLabels {
                set: self,
                endpoint,
            })
            && policy
                .service_account_selector
                .as_ref()
                .is_none_or(|selector| {
                    self.service_account_labels(endpoint)
                        .is_some_and(|sa| selector.matches(&sa))
                })
    }

    /// The tiers that participate for `endpoint` in `direction`, with their applying policies,
    /// in evaluation order (tiers and policies by order, nil last, then name).
    pub fn applicable_tiers(
        &self,
        endpoint: &Endpoint,
        direction: Direction,
    ) -> Vec<AppliedTier<'_>> {
        self.applicable_tiers_in(endpoint, direction, Stage::Normal)
    }

    /// [`PolicySet::applicable_tiers`] for the policies of one [`Stage`] (untracked, pre-DNAT,
    /// normal, or applyOnForward for forwarded traffic).
    pub fn applicable_tiers_in(
        &self,
        endpoint: &Endpoint,
        direction: Direction,
        stage: Stage,
    ) -> Vec<AppliedTier<'_>> {
        let mut by_tier: BTreeMap<&str, Vec<&Policy>> = BTreeMap::new();
        for policy in &self.policies {
            if stage.includes(policy, direction)
                && policy.applies_in(direction)
                && self.policy_selects(policy, endpoint)
            {
                by_tier
                    .entry(policy.tier.as_str())
                    .or_default()
                    .push(policy);
            }
        }
        let mut tiers: Vec<AppliedTier<'_>> = by_tier
            .into_iter()
            .map(|(name, mut policies)| {
                policies.sort_by(|a, b| {
                    order_cmp(a.order, b.order).then_with(|| policy_key(a).cmp(&policy_key(b)))
                });
                AppliedTier {
                    tier: self.tier(name),
                    policies,
                }
            })
            .collect();
        tiers.sort_by(|a, b| {
            order_cmp(a.tier.order, b.tier.order).then_with(|| a.tier.name.cmp(&b.tier.name))
        });
        tiers
    }

    /// The verdict for `packet` leaving `from` and entering `to` (`None`: outside the cluster).
    pub fn verdict(
        &self,
        packet: &Packet,
        from: Option<&Endpoint>,
        to: Option<&Endpoint>,
    ) -> Trace {
        let extra: Vec<&Endpoint> = from.into_iter().chain(to).collect();
        let context = Context {
            set: self,
            packet,
            extra: &extra,
        };
        let egress = from.map(|e| context.evaluate(e, Direction::Egress));
        let ingress = to.map(|e| context.evaluate(e, Direction::Ingress));
        let allowed = [&egress, &ingress]
            .into_iter()
            .flatten()
            .all(|side| side.verdict == Verdict::Allow);
        Trace {
            verdict: if allowed {
                Verdict::Allow
            } else {
                Verdict::Deny
            },
            egress,
            ingress,
            forward: Vec::new(),
        }
    }

    /// Whether `rule` (of a policy in `policy_namespace`, `None` for global policies and
    /// profiles) matches `packet`. Selectors resolve against the known endpoints.
    pub fn rule_matches(
        &self,
        rule: &Rule,
        policy_namespace: Option<&str>,
        packet: &Packet,
    ) -> bool {
        Context {
            set: self,
            packet,
            extra: &[],
        }
        .rule_matches(rule, policy_namespace)
    }

    pub(crate) fn namespace_labels<'a>(&'a self, namespace: Option<&'a str>) -> NamedLabels<'a> {
        NamedLabels {
            name: namespace,
            labels: namespace
                .and_then(|ns| self.namespaces.get(ns))
                .map(|ns| &ns.labels),
        }
    }

    pub(crate) fn service_account_labels<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> Option<NamedLabels<'a>> {
        let name = endpoint.service_account.as_deref()?;
        let namespace = endpoint.namespace.as_deref();
        let labels = self
            .service_accounts
            .iter()
            .find(|sa| sa.name == name && Some(sa.namespace.as_str()) == namespace)
            .map(|sa| &sa.labels);
        Some(NamedLabels {
            name: Some(name),
            labels,
        })
    }
}

/// Orders optional orders: lower first, `None` last.
fn order_cmp(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// The name Felix sorts policies by on equal order: `<namespace>/<name>` for a
/// NetworkPolicy, `<name>` for a GlobalNetworkPolicy.
pub(crate) fn policy_key(policy: &Policy) -> Cow<'_, str> {
    match &policy.namespace {
        Some(ns) => Cow::Owned(format!("{ns}/{}", policy.name)),
        None => Cow::Borrowed(&policy.name),
    }
}

pub(crate) fn endpoint_key(endpoint: &Endpoint) -> String {
    match &endpoint.namespace {
        Some(ns) => format!("{ns}/{}", endpoint.name),
        None => endpoint.name.clone(),
    }
}

/// One evaluation: the packet and the endpoints given by the caller.
pub(crate) struct Context<'a> {
    pub(crate) set: &'a PolicySet,
    pub(crate) packet: &'a Packet,
    /// `from`/`to`, which may be missing from `set.endpoints`.
    pub(crate) extra: &'a [&'a Endpoint],
}

/// Which end of the packet an entity rule looks at.
#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

impl Context<'_> {
    pub(crate) fn evaluate(&self, endpoint: &Endpoint, direction: Direction) -> DirectionTrace {
        let applied = self.set.applicable_tiers(endpoint, direction);
        let mut steps = Vec::new();
        let (verdict, decided_by) = match self.run_tiers(&applied, direction, true, &mut steps) {
            Some(decision) => decision,
            None => self.run_profiles(endpoint, direction, &mut steps),
        };
        DirectionTrace {
            endpoint: endpoint_key(endpoint),
            verdict,
            decided_by,
            tiers: applied.iter().map(|t| t.tier.name.clone()).collect(),
            steps,
            stage: Stage::Normal,
        }
    }

    /// Runs the participating tiers `applied`; `None` when every tier passed (or, without
    /// `end_of_tier_drop`, ended with no matching rule).
    pub(crate) fn run_tiers(
        &self,
        applied: &[AppliedTier<'_>],
        direction: Direction,
        end_of_tier_drop: bool,
        steps: &mut Vec<Step>,
    ) -> Option<(Verdict, Decision)> {
        'tiers: for tier in applied {
            for policy in &tier.policies {
                for (index, rule) in policy.rules(direction).iter().enumerate() {
                    if !self.rule_matches(rule, policy.namespace.as_deref()) {
                        continue;
                    }
                    let at = RuleRef::Policy {
                        tier: tier.tier.name.clone(),
                        namespace: policy.namespace.clone(),
                        policy: policy.name.clone(),
                        index,
                    };
                    match rule.action {
                        Action::Allow => {
                            let decided_by = Decision::Rule {
                                rule: at,
                                action: Action::Allow,
                            };
                            return Some((Verdict::Allow, decided_by));
                        }
                        Action::Deny => {
                            let decided_by = Decision::Rule {
                                rule: at,
                                action: Action::Deny,
                            };
                            return Some((Verdict::Deny, decided_by));
                        }
                        Action::Log => steps.push(Step::Log(at)),
                        Action::Pass => {
                            steps.push(Step::Pass(at));
                            continue 'tiers;
                        }
                    }
                }
            }
            match tier.tier.default_action {
                TierDefaultAction::Deny if end_of_tier_drop => {
                    let decided_by = Decision::EndOfTier {
                        tier: tier.tier.name.clone(),
                    };
                    return Some((Verdict::Deny, decided_by));
                }
                TierDefaultAction::Deny | TierDefaultAction::Pass => {
                    steps.push(Step::EndOfTierPass {
                        tier: tier.tier.name.clone(),
                    });
                }
            }
        }
        None
    }

    /// Runs the endpoint's profiles, in order; none allowing ⇒ deny.
    pub(crate) fn run_profiles(
        &self,
        endpoint: &Endpoint,
        direction: Direction,
        steps: &mut Vec<Step>,
    ) -> (Verdict, Decision) {
        for name in &endpoint.profiles {
            let Some(profile) = self.set.profiles.get(name) else {
                steps.push(Step::MissingProfile {
                    profile: name.clone(),
                });
                continue;
            };
            for (index, rule) in profile.rules(direction).iter().enumerate() {
                if !self.rule_matches(rule, None) {
                    continue;
                }
                let at = RuleRef::Profile {
                    profile: name.clone(),
                    index,
                };
                match rule.action {
                    Action::Allow => {
                        let decided_by = Decision::Rule {
                            rule: at,
                            action: Action::Allow,
                        };
                        return (Verdict::Allow, decided_by);
                    }
                    Action::Deny => {
                        let decided_by = Decision::Rule {
                            rule: at,
                            action: Action::Deny,
                        };
                        return (Verdict::Deny, decided_by);
                    }
                    Action::Log => steps.push(Step::Log(at)),
                    // A Pass in a profile ends that profile: the next one is tried.
                    Action::Pass => {
                        steps.push(Step::Pass(at));
                        break;
                    }
                }
            }
        }
        (Verdict::Deny, Decision::NoProfileMatched)
    }

    fn rule_matches(&self, rule: &Rule, policy_namespace: Option<&str>) -> bool {
        let packet = self.packet;
        let family = IpVersion::of(packet.src_ip);
        if rule.ip_version.is_some_and(|v| v != family) {
            return false;
        }
        // A rule is rendered only for the family of its CIDRs.
        let nets = [&rule.source, &rule.destination]
            .into_iter()
            .flat_map(|e| e.nets.iter().chain(&e.not_nets));
        if nets.into_iter().any(|net| IpVersion::of_net(net) != family) {
            return false;
        }
        if rule.protocol.is_some_and(|p| p != packet.protocol) {
            return false;
        }
        if rule.not_protocol.is_some_and(|p| p == packet.protocol) {
            return false;
        }
        let icmp_matches = |m: &crate::model::IcmpMatch| {
            packet.protocol.is_icmp() && m.matches(packet.icmp_type, packet.icmp_code)
        };
        if rule.icmp.as_ref().is_some_and(|m| !icmp_matches(m)) {
            return false;
        }
        if rule.not_icmp.as_ref().is_some_and(icmp_matches) {
            return false;
        }
        self.entity_matches(&rule.source, policy_namespace, Side::Source)
            && self.entity_matches(&rule.destination, policy_namespace, Side::Destination)
    }

    fn entity_matches(
        &self,
        entity: &EntityRule,
        policy_namespace: Option<&str>,
        side: Side,
    ) -> bool {
        let packet = self.packet;
        let (ip, port) = match side {
            Side::Source => (packet.src_ip, packet.src_port),
            Side::Destination => (packet.dst_ip, packet.dst_port),
        };
        if !entity.nets.is_empty() && !entity.nets.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        if entity.not_nets.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        let scope = EntityScope::new(self.set, entity, policy_namespace);
        if scope.is_restricted() {
            let selected = self.endpoints_with(ip).any(|e| scope.selects_endpoint(e))
                || self
                    .network_sets_with(ip)
                    .any(|n| scope.selects_network_set(n));
            if !selected {
                return false;
            }
        }
        let excluded = self.endpoints_with(ip).any(|e| scope.excludes_endpoint(e))
            || self
                .network_sets_with(ip)
                .any(|n| scope.excludes_network_set(n));
        if excluded {
            return false;
        }
        let port_matches = |entry: &Port| match (entry, port) {
            (_, None) => false,
            (Port::Named(name), Some(port)) => self.endpoints_with(ip).any(|e| {
                scope.named_port_candidate(e)
                    && e.ports
                        .iter()
                        .any(|p| p.name == *name && p.protocol == packet.protocol && p.port == port)
            }),
            (entry, Some(port)) => entry.contains(port),
        };
        // Ports only exist for TCP, UDP, SCTP and UDP-Lite: a port condition fails otherwise.
        let has_ports = packet.protocol.has_ports();
        let ports_ok =
            entity.ports.is_empty() || (has_ports && entity.ports.iter().any(port_matches));
        if !ports_ok {
            return false;
        }
        !(has_ports && entity.not_ports.iter().any(port_matches))
    }

    fn endpoints_with(&self, ip: IpAddr) -> impl Iterator<Item = &Endpoint> {
        self.set
            .endpoints
            .iter()
            .chain(self.extra.iter().copied())
            .filter(move |e| e.ips.iter().any(|net: &IpNet| net.contains(&ip)))
    }

    fn network_sets_with(&self, ip: IpAddr) -> impl Iterator<Item = &NetworkSet> {
        self.set
            .network_sets
            .iter()
            .filter(move |n| n.nets.iter().any(|net| net.contains(&ip)))
    }
}
