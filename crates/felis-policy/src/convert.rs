//! Stored `projectcalico.org/v3` (and Kubernetes) resources into the engine's model, as Calico
//! does it, with Felis's KDD-style namespace profiles:
//!
//! - `NetworkPolicy`/`GlobalNetworkPolicy`: tier (default `default`), order, selectors, types,
//!   rules; names kept as stored (`<tier>.<name>` outside the default tier, `default.` optional
//!   inside it).
//! - `networking.k8s.io/v1` `NetworkPolicy`: through [`crate::k8s`] (`knp.default.<name>`, order
//!   1000, tier `default`).
//! - `Tier`, `NetworkSet`, `GlobalNetworkSet` one to one.
//! - `v1` `Namespace`s give namespace labels. Without one, a stored `kns.<ns>` profile's `pcns.*`
//!   `labelsToApply` give them (Calico's etcd mode).
//! - Every namespace (from a `Namespace` or from a workload endpoint) without a stored profile
//!   `kns.<ns>` gets Calico's KDD one: allow all both ways, `pcns.*` labels. So a pod no policy
//!   selects is open, and the first policy selecting it closes that direction.
//! - Service accounts named by workload endpoints get a `ksa.<ns>.<sa>` profile (no rules) unless
//!   one is stored; a stored one's `pcsa.*` labels are the service account's labels.
//! - `WorkloadEndpoint`: labels, `ipNetworks`, named `ports`, `profiles` (a `k8s` endpoint that
//!   lists none gets `kns.<ns>`, and `ksa.<ns>.<sa>` is appended when it has a service account),
//!   orchestrator, service account, pod/workload name.
//! - `HostEndpoint`: labels, `expectedIPs` (as /32 and /128), named ports, profiles, node and
//!   `interfaceName`. GlobalNetworkPolicies select them; NetworkPolicies never do.
//! - `GlobalNetworkPolicy` `preDNAT`, `doNotTrack` and `applyOnForward` are kept: those
//!   policies only ever apply to host endpoints ([`crate::host`]).
//! - `FelixConfiguration`: `defaultEndpointToHostAction` and the failsafe ports of `default`,
//!   and per node those of `node.<name>` over them ([`PolicySet::host_config`]). `Node`: BGP addresses and
//!   `spec.addresses`, so a node's address stands for that host.
//! - `projectcalico-default-allow`, Calico's built-in allow-all profile, exists unless stored.
//!
//! Rules with a `services` match are refused (the engine cannot resolve Services); `http`
//! matches are ignored, as the dataplane does not enforce them.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use felis_api::Resource;
use felis_api::selector::Selector;
use ipnet::IpNet;

use crate::engine::PolicySet;
use crate::error::Error;
use crate::host::EndpointToHostAction;
use crate::host::FailsafePort;
use crate::host::HostPolicyConfig;
use crate::k8s::NetworkPolicy as K8sPolicy;
use crate::model::Action;
use crate::model::Direction;
use crate::model::Endpoint;
use crate::model::EntityRule;
use crate::model::HostInterface;
use crate::model::IcmpMatch;
use crate::model::IpVersion;
use crate::model::LABEL_NAME;
use crate::model::NamedPort;
use crate::model::Namespace;
use crate::model::NetworkSet;
use crate::model::Policy;
use crate::model::Port;
use crate::model::Profile;
use crate::model::Protocol;
use crate::model::Rule;
use crate::model::ServiceAccount;
use crate::model::ServiceAccountMatch;
use crate::model::Tier;
use crate::model::TierDefaultAction;

/// Calico's built-in allow-all profile, often listed by host endpoints.
pub const DEFAULT_ALLOW_PROFILE: &str = "projectcalico-default-allow";

/// Orchestrator of Kubernetes pods.
const K8S: &str = "k8s";

impl PolicySet {
    /// The policy state the stored `resources` describe (any order; kinds that play no part in
    /// policy are ignored). See [`crate::convert`] for the rules.
    pub fn from_resources(resources: &[Resource]) -> Result<PolicySet, Error> {
        let mut set = PolicySet::new();
        let mut namespaces: BTreeMap<String, Namespace> = BTreeMap::new();
        let mut stored_profiles: BTreeMap<String, Profile> = BTreeMap::new();
        let mut endpoints = Vec::new();
        let mut felix: BTreeMap<String, &felis_api::felix::FelixConfigurationSpec> =
            BTreeMap::new();
        for resource in resources {
            match resource {
                Resource::NetworkPolicy(_)
                | Resource::GlobalNetworkPolicy(_)
                | Resource::K8sNetworkPolicy(_) => {
                    if let Some(policy) = policy_from_resource(resource)? {
                        set.add_policy(policy);
                    }
                }
                Resource::Tier(t) => {
                    set.add_tier(Tier {
                        name: t.metadata.name.clone(),
                        order: t.spec.order,
                        default_action: match t.spec.default_action {
                            felis_api::policy::TierAction::Deny => TierDefaultAction::Deny,
                            felis_api::policy::TierAction::Pass => TierDefaultAction::Pass,
                        },
                    });
                }
                Resource::Profile(p) => {
                    let what = describe("Profile", resource);
                    let conv = Converter { resource: &what };
                    stored_profiles.insert(
                        p.metadata.name.clone(),
                        Profile {
                            name: p.metadata.name.clone(),
                            ingress: conv.rules(&p.spec.ingress, "spec.ingress")?,
                            egress: conv.rules(&p.spec.egress, "spec.egress")?,
                            labels_to_apply: p.spec.labels_to_apply.clone(),
                        },
                    );
                }
                Resource::NetworkSet(n) => {
                    set.add_network_set(NetworkSet {
                        name: n.metadata.name.clone(),
                        namespace: Some(namespace_of(resource)),
                        labels: n.metadata.labels.clone(),
                        nets: n.spec.nets.clone(),
                    });
                }
                Resource::GlobalNetworkSet(n) => {
                    set.add_network_set(NetworkSet {
                        name: n.metadata.name.clone(),
                        namespace: None,
                        labels: n.metadata.labels.clone(),
                        nets: n.spec.nets.clone(),
                    });
                }
                Resource::Namespace(n) => {
                    namespaces.insert(
                        n.metadata.name.clone(),
                        Namespace {
                            name: n.metadata.name.clone(),
                            labels: n.metadata.labels.clone(),
                        },
                    );
                }
                Resource::WorkloadEndpoint(w) => endpoints.push(workload_endpoint(resource, w)),
                Resource::HostEndpoint(h) => endpoints.push(host_endpoint(h)),
                Resource::FelixConfiguration(f) => {
                    felix.insert(f.metadata.name.clone(), &f.spec);
                }
                Resource::Node(n) => {
                    let addresses = node_addresses(n);
                    if !addresses.is_empty() {
                        set.nodes.insert(n.metadata.name.clone(), addresses);
                    }
                }
                _ => {}
            }
        }

        // FelixConfiguration: `node.<name>` fields over `default` fields over Felix's defaults.
        let default = felix.get("default").copied();
        set.host = host_config(default, None);
        for (name, spec) in &felix {
            if let Some(node) = name.strip_prefix("node.") {
                set.host_by_node
                    .insert(node.to_string(), host_config(default, Some(spec)));
            }
        }

        // Namespaces: from v1 Namespaces, else from stored `kns.` profiles, else bare.
        for (name, profile) in &stored_profiles {
            if let Some(ns) = name.strip_prefix("kns.")
                && !namespaces.contains_key(ns)
            {
                namespaces.insert(
                    ns.to_string(),
                    Namespace {
                        name: ns.to_string(),
                        labels: unprefixed_labels(&profile.labels_to_apply, "pcns."),
                    },
                );
            }
        }
        let mut service_accounts: BTreeSet<(String, String)> = BTreeSet::new();
        for endpoint in &endpoints {
            if let Some(ns) = &endpoint.namespace {
                namespaces.entry(ns.clone()).or_insert_with(|| Namespace {
                    name: ns.clone(),
                    labels: BTreeMap::new(),
                });
                if let Some(sa) = &endpoint.service_account {
                    service_accounts.insert((ns.clone(), sa.clone()));
                }
            }
        }
        for name in stored_profiles.keys() {
            if let Some((ns, sa)) = name.strip_prefix("ksa.").and_then(|r| r.split_once('.')) {
                service_accounts.insert((ns.to_string(), sa.to_string()));
            }
        }

        let mut profiles = stored_profiles;
        for namespace in namespaces.values() {
            let synthesized = Profile::for_namespace(namespace);
            profiles
                .entry(synthesized.name.clone())
                .or_insert(synthesized);
            set.add_namespace(namespace.clone());
        }
        for (namespace, name) in service_accounts {
            let key = format!("ksa.{namespace}.{name}");
            let labels = profiles
                .get(&key)
                .map(|p| unprefixed_labels(&p.labels_to_apply, "pcsa."))
                .unwrap_or_default();
            let account = ServiceAccount {
                name,
                namespace,
                labels,
            };
            profiles
                .entry(key)
                .or_insert_with(|| Profile::for_service_account(&account));
            set.add_service_account(account);
        }
        profiles
            .entry(DEFAULT_ALLOW_PROFILE.to_string())
            .or_insert_with(|| Profile::allow_all(DEFAULT_ALLOW_PROFILE));
        for profile in profiles.into_values() {
            set.add_profile(profile);
        }
        for endpoint in endpoints {
            set.add_endpoint(endpoint);
        }
        Ok(set)
    }
}

/// The policy a `NetworkPolicy`, `GlobalNetworkPolicy` or Kubernetes `NetworkPolicy` resource
/// stands for (as [`PolicySet::from_resources`] converts it); `None` for other kinds.
pub fn policy_from_resource(resource: &Resource) -> Result<Option<Policy>, Error> {
    let policy = match resource {
        Resource::NetworkPolicy(p) => {
            let s = &p.spec;
            let what = describe("NetworkPolicy", resource);
            let conv = Converter { resource: &what };
            Policy {
                name: p.metadata.name.clone(),
                namespace: Some(namespace_of(resource)),
                tier: tier_name(&s.tier),
                order: s.order,
                selector: conv.selector(&s.selector, "spec.selector")?,
                namespace_selector: None,
                service_account_selector: conv.optional_selector(
                    &s.service_account_selector,
                    "spec.serviceAccountSelector",
                )?,
                types: s.types.iter().map(|t| direction(*t)).collect(),
                ingress: conv.rules(&s.ingress, "spec.ingress")?,
                egress: conv.rules(&s.egress, "spec.egress")?,
                apply_on_forward: false,
                pre_dnat: false,
                do_not_track: false,
            }
        }
        Resource::GlobalNetworkPolicy(p) => {
            let s = &p.spec;
            let what = describe("GlobalNetworkPolicy", resource);
            let conv = Converter { resource: &what };
            Policy {
                name: p.metadata.name.clone(),
                namespace: None,
                tier: tier_name(&s.tier),
                order: s.order,
                selector: conv.selector(&s.selector, "spec.selector")?,
                namespace_selector: conv
                    .optional_selector(&s.namespace_selector, "spec.namespaceSelector")?,
                service_account_selector: conv.optional_selector(
                    &s.service_account_selector,
                    "spec.serviceAccountSelector",
                )?,
                types: s.types.iter().map(|t| direction(*t)).collect(),
                ingress: conv.rules(&s.ingress, "spec.ingress")?,
                egress: conv.rules(&s.egress, "spec.egress")?,
                apply_on_forward: s.apply_on_forward,
                pre_dnat: s.pre_dnat,
                do_not_track: s.do_not_track,
            }
        }
        Resource::K8sNetworkPolicy(p) => {
            let namespace = namespace_of(resource);
            let decode_error = |source| Error::K8sPolicyDecode {
                namespace: namespace.clone(),
                name: p.metadata.name.clone(),
                source,
            };
            let value = serde_json::to_value(p).map_err(decode_error)?;
            let mut k8s: K8sPolicy = serde_json::from_value(value).map_err(decode_error)?;
            k8s.metadata.namespace = Some(namespace.clone());
            k8s.to_policy()?
        }
        _ => return Ok(None),
    };
    Ok(Some(policy))
}

/// The endpoint a `WorkloadEndpoint` or `HostEndpoint` resource stands for (as
/// [`PolicySet::from_resources`] converts it); `None` for other kinds.
pub fn endpoint_from_resource(resource: &Resource) -> Option<Endpoint> {
    match resource {
        Resource::WorkloadEndpoint(w) => Some(workload_endpoint(resource, w)),
        Resource::HostEndpoint(h) => Some(host_endpoint(h)),
        _ => None,
    }
}

/// `Kind namespace/name` or `Kind name`, for errors.
fn describe(kind: &str, resource: &Resource) -> String {
    match resource.namespace() {
        Some(ns) => format!("{kind} {ns}/{}", resource.name()),
        None => format!("{kind} {}", resource.name()),
    }
}

/// The namespace of a namespaced resource (`default` if the loader left it unset).
fn namespace_of(resource: &Resource) -> String {
    resource.namespace().unwrap_or("default").to_string()
}

fn tier_name(tier: &str) -> String {
    if tier.is_empty() {
        crate::model::DEFAULT_TIER.to_string()
    } else {
        tier.to_string()
    }
}

fn direction(t: felis_api::PolicyType) -> Direction {
    match t {
        felis_api::PolicyType::Ingress => Direction::Ingress,
        felis_api::PolicyType::Egress => Direction::Egress,
    }
}

/// `labels` with `prefix` stripped, without the `projectcalico.org/name` Calico adds.
fn unprefixed_labels(labels: &BTreeMap<String, String>, prefix: &str) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
        .filter(|(k, _)| k != LABEL_NAME)
        .collect()
}

fn protocol(p: felis_api::Protocol) -> Protocol {
    Protocol(p.number())
}

fn named_port(name: &str, protocol_: felis_api::Protocol, port: u16) -> Option<NamedPort> {
    (!name.is_empty()).then(|| NamedPort {
        name: name.to_string(),
        protocol: protocol(protocol_),
        port,
    })
}

fn workload_endpoint(resource: &Resource, w: &felis_api::WorkloadEndpoint) -> Endpoint {
    let s = &w.spec;
    let namespace = namespace_of(resource);
    let non_empty = |v: &str| (!v.is_empty()).then(|| v.to_string());
    let orchestrator = non_empty(&s.orchestrator);
    let service_account = non_empty(&s.service_account_name);
    let mut profiles = s.profiles.clone();
    if orchestrator.as_deref() == Some(K8S) {
        if profiles.is_empty() {
            profiles.push(format!("kns.{namespace}"));
        }
        if let Some(sa) = &service_account {
            let ksa = format!("ksa.{namespace}.{sa}");
            if !profiles.contains(&ksa) {
                profiles.push(ksa);
            }
        }
    }
    Endpoint {
        name: w.metadata.name.clone(),
        namespace: Some(namespace),
        labels: w.metadata.labels.clone(),
        ips: s.ip_networks.clone(),
        profiles,
        ports: s
            .ports
            .iter()
            .filter_map(|p| named_port(&p.name, p.protocol, p.port))
            .collect(),
        service_account,
        orchestrator,
        workload: non_empty(&s.pod).or_else(|| non_empty(&s.workload)),
        node: non_empty(&s.node),
        host_endpoint: None,
    }
}

fn host_endpoint(h: &felis_api::HostEndpoint) -> Endpoint {
    let s = &h.spec;
    Endpoint {
        name: h.metadata.name.clone(),
        namespace: None,
        labels: h.metadata.labels.clone(),
        ips: s.expected_ips.iter().map(|ip| IpNet::from(*ip)).collect(),
        profiles: s.profiles.clone(),
        ports: s
            .ports
            .iter()
            .filter_map(|p| named_port(&p.name, p.protocol, p.port))
            .collect(),
        service_account: None,
        orchestrator: None,
        workload: None,
        node: Some(s.node.clone()),
        host_endpoint: Some(HostInterface {
            interface_name: s.interface_name.clone(),
        }),
    }
}

/// The FelixConfiguration values host policy uses: `node`'s (a `node.<name>` spec) over
/// `default`'s; unset ones take Felix's defaults.
fn host_config(
    default: Option<&felis_api::felix::FelixConfigurationSpec>,
    node: Option<&felis_api::felix::FelixConfigurationSpec>,
) -> HostPolicyConfig {
    let specs = [node, default];
    let failsafe = |field: fn(
        &felis_api::felix::FelixConfigurationSpec,
    ) -> &Option<Vec<felis_api::felix::ProtoPort>>,
                    fallback: fn() -> Vec<FailsafePort>| {
        match specs.iter().flatten().find_map(|s| field(s).as_ref()) {
            None => fallback(),
            Some(ports) => ports
                .iter()
                .map(|p| FailsafePort {
                    protocol: protocol(p.protocol),
                    port: p.port,
                    net: p
                        .net
                        .parse::<IpNet>()
                        .ok()
                        .or_else(|| p.net.parse::<std::net::IpAddr>().ok().map(IpNet::from)),
                })
                .collect(),
        }
    };
    let action = specs
        .iter()
        .flatten()
        .find_map(|s| s.default_endpoint_to_host_action);
    HostPolicyConfig {
        default_endpoint_to_host_action: match action {
            None | Some(felis_api::felix::EndpointToHostAction::Drop) => EndpointToHostAction::Drop,
            Some(felis_api::felix::EndpointToHostAction::Accept) => EndpointToHostAction::Accept,
            Some(felis_api::felix::EndpointToHostAction::Return) => EndpointToHostAction::Return,
        },
        failsafe_inbound: failsafe(
            |s| &s.failsafe_inbound_host_ports,
            HostPolicyConfig::default_inbound,
        ),
        failsafe_outbound: failsafe(
            |s| &s.failsafe_outbound_host_ports,
            HostPolicyConfig::default_outbound,
        ),
    }
}

/// A node's addresses: BGP IPv4/IPv6 addresses and `spec.addresses`.
fn node_addresses(node: &felis_api::Node) -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    if let Some(bgp) = &node.spec.bgp {
        out.extend(bgp.ipv4_address.iter().map(IpNet::addr));
        out.extend(bgp.ipv6_address.iter().map(IpNet::addr));
    }
    for a in &node.spec.addresses {
        let text = a.address.split('/').next().unwrap_or_default();
        if let Ok(ip) = text.parse() {
            out.push(ip);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Converts the parts of one resource, naming it in errors.
struct Converter<'a> {
    resource: &'a str,
}

impl Converter<'_> {
    /// A required selector: empty means `all()`.
    fn selector(&self, source: &str, field: &str) -> Result<Selector, Error> {
        Selector::parse(source).map_err(|source| Error::ResourceSelector {
            resource: self.resource.to_string(),
            field: field.to_string(),
            source,
        })
    }

    /// An optional selector: empty means unset.
    fn optional_selector(&self, source: &str, field: &str) -> Result<Option<Selector>, Error> {
        if source.trim().is_empty() {
            return Ok(None);
        }
        self.selector(source, field).map(Some)
    }

    fn field_error(&self, field: String, reason: impl Into<String>) -> Error {
        Error::ResourceField {
            resource: self.resource.to_string(),
            field,
            reason: reason.into(),
        }
    }

    fn rules(&self, rules: &[felis_api::Rule], field: &str) -> Result<Vec<Rule>, Error> {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| self.rule(r, &format!("{field}[{i}]")))
            .collect()
    }

    fn rule(&self, rule: &felis_api::Rule, field: &str) -> Result<Rule, Error> {
        let ip_version = match rule.ip_version {
            None => None,
            Some(4) => Some(IpVersion::V4),
            Some(6) => Some(IpVersion::V6),
            Some(other) => {
                return Err(self.field_error(
                    format!("{field}.ipVersion"),
                    format!("{other} is not 4 or 6"),
                ));
            }
        };
        Ok(Rule {
            action: match rule.action {
                felis_api::Action::Allow => Action::Allow,
                felis_api::Action::Deny => Action::Deny,
                felis_api::Action::Log => Action::Log,
                felis_api::Action::Pass => Action::Pass,
            },
            protocol: rule.protocol.map(protocol),
            not_protocol: rule.not_protocol.map(protocol),
            icmp: rule.icmp.and_then(icmp),
            not_icmp: rule.not_icmp.and_then(icmp),
            ip_version,
            source: self.entity(&rule.source, &format!("{field}.source"))?,
            destination: self.entity(&rule.destination, &format!("{field}.destination"))?,
        })
    }

    fn entity(&self, e: &felis_api::EntityRule, field: &str) -> Result<EntityRule, Error> {
        if e.services.is_some() {
            return Err(self.field_error(
                format!("{field}.services"),
                "Service matches are not supported by Felis policy",
            ));
        }
        let service_accounts = match &e.service_accounts {
            None => None,
            Some(sa) => Some(ServiceAccountMatch {
                names: sa.names.clone(),
                selector: self.optional_selector(
                    &sa.selector,
                    &format!("{field}.serviceAccounts.selector"),
                )?,
            }),
        };
        Ok(EntityRule {
            nets: e.nets.clone(),
            not_nets: e.not_nets.clone(),
            selector: self.optional_selector(&e.selector, &format!("{field}.selector"))?,
            not_selector: self
                .optional_selector(&e.not_selector, &format!("{field}.notSelector"))?,
            namespace_selector: self
                .optional_selector(&e.namespace_selector, &format!("{field}.namespaceSelector"))?,
            ports: e.ports.iter().map(port).collect(),
            not_ports: e.not_ports.iter().map(port).collect(),
            service_accounts,
        })
    }
}

fn icmp(fields: felis_api::IcmpFields) -> Option<IcmpMatch> {
    fields.icmp_type.map(|icmp_type| IcmpMatch {
        icmp_type,
        code: fields.code,
    })
}

fn port(p: &felis_api::Port) -> Port {
    match p {
        felis_api::Port::Number(n) => Port::Number(*n),
        felis_api::Port::Range { first, last } => Port::Range(*first, *last),
        felis_api::Port::Named(name) => Port::Named(name.clone()),
    }
}
