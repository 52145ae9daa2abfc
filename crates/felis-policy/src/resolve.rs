//! Resolving an entity rule's selectors to the known objects (endpoints and network sets) they
//! cover, per the reference §3 "Scoping of selectors in rules". The verdict engine asks this
//! about one address; a rule compiler asks for the whole IP sets ([`PolicySet::resolve_entity`]).
//! Both go through the same predicates, so they cannot disagree.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use felis_api::selector::Labels;
use felis_api::selector::Selector;
use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;

use crate::engine::PolicySet;
use crate::model::Endpoint;
use crate::model::EntityRule;
use crate::model::LABEL_NAMESPACE;
use crate::model::LABEL_ORCHESTRATOR;
use crate::model::LABEL_SERVICE_ACCOUNT;
use crate::model::NetworkSet;
use crate::model::Port;
use crate::model::Protocol;

/// The IP sets an entity rule's selectors and named ports stand for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedEntity {
    /// `None`: the entity has no selector, namespaceSelector or serviceAccounts, so any address
    /// passes; otherwise the address must be in one of these (possibly none).
    pub selected: Option<Vec<IpNet>>,
    /// The address must be in none of these (`notSelector`).
    pub excluded: Vec<IpNet>,
    /// Members of each named port in `ports`/`notPorts`, by port name.
    pub named_ports: BTreeMap<String, Vec<NamedPortMember>>,
}

/// One `address:protocol:port` member of a named-port set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NamedPortMember {
    /// The endpoint address.
    pub net: IpNet,
    /// The port's protocol.
    pub protocol: Protocol,
    /// The port number on that endpoint.
    pub port: u16,
}

impl PolicySet {
    /// The IP sets behind `entity` of a rule in a policy of `policy_namespace` (`None` for
    /// global policies and profiles), resolved against the known endpoints and network sets.
    pub fn resolve_entity(
        &self,
        entity: &EntityRule,
        policy_namespace: Option<&str>,
    ) -> ResolvedEntity {
        let scope = EntityScope::new(self, entity, policy_namespace);
        let endpoints = self.endpoints.iter();
        let network_sets = self.network_sets.iter();
        let selected = scope.is_restricted().then(|| {
            let from_endpoints = endpoints
                .clone()
                .filter(|e| scope.selects_endpoint(e))
                .flat_map(|e| e.ips.iter().copied());
            let from_sets = network_sets
                .clone()
                .filter(|n| scope.selects_network_set(n))
                .flat_map(|n| n.nets.iter().copied());
            sorted(from_endpoints.chain(from_sets))
        });
        let excluded_endpoints = endpoints
            .clone()
            .filter(|e| scope.excludes_endpoint(e))
            .flat_map(|e| e.ips.iter().copied());
        let excluded_sets = network_sets
            .filter(|n| scope.excludes_network_set(n))
            .flat_map(|n| n.nets.iter().copied());
        let excluded = sorted(excluded_endpoints.chain(excluded_sets));
        let mut named_ports = BTreeMap::new();
        for entry in entity.ports.iter().chain(&entity.not_ports) {
            let Port::Named(name) = entry else { continue };
            let members: BTreeSet<NamedPortMember> = endpoints
                .clone()
                .filter(|e| scope.named_port_candidate(e))
                .flat_map(|e| {
                    e.ports.iter().filter(|p| p.name == *name).flat_map(|p| {
                        e.ips.iter().map(|net| NamedPortMember {
                            net: *net,
                            protocol: p.protocol,
                            port: p.port,
                        })
                    })
                })
                .collect();
            named_ports.insert(name.clone(), members.into_iter().collect());
        }
        ResolvedEntity {
            selected,
            excluded,
            named_ports,
        }
    }
}

fn sorted(nets: impl Iterator<Item = IpNet>) -> Vec<IpNet> {
    let set: BTreeSet<IpNet> = nets.collect();
    set.into_iter().collect()
}

/// Which objects a rule's selectors range over.
enum Scope<'a> {
    /// Every endpoint and network set (GNP or profile without `namespaceSelector`).
    Everything,
    /// Objects in this namespace (NP without `namespaceSelector`).
    SameNamespace(&'a str),
    /// Namespaced objects whose namespace's labels match. Non-namespaced objects are in no
    /// namespace, so only `global()` reaches them (the reference §3 "Scoping").
    Namespaces(&'a Selector),
    /// Non-namespaced objects only (`namespaceSelector: global()`).
    NonNamespaced,
}

/// An entity rule bound to its policy's namespace: which objects it selects and excludes.
pub(crate) struct EntityScope<'a> {
    set: &'a PolicySet,
    entity: &'a EntityRule,
    scope: Scope<'a>,
}

impl<'a> EntityScope<'a> {
    pub(crate) fn new(
        set: &'a PolicySet,
        entity: &'a EntityRule,
        policy_namespace: Option<&'a str>,
    ) -> Self {
        let scope = match &entity.namespace_selector {
            Some(selector) if selector.is_global() => Scope::NonNamespaced,
            Some(selector) => Scope::Namespaces(selector),
            None => match policy_namespace {
                Some(ns) => Scope::SameNamespace(ns),
                None => Scope::Everything,
            },
        };
        EntityScope { set, entity, scope }
    }

    /// Whether the address must belong to a selected object: any of selector,
    /// namespaceSelector or serviceAccounts is set (a namespaceSelector alone means `all()`
    /// in those namespaces).
    pub(crate) fn is_restricted(&self) -> bool {
        let entity = self.entity;
        entity.selector.is_some()
            || entity.namespace_selector.is_some()
            || entity.service_accounts.is_some()
    }

    fn in_scope(&self, namespace: Option<&str>) -> bool {
        match &self.scope {
            Scope::Everything => true,
            Scope::SameNamespace(ns) => namespace == Some(*ns),
            Scope::Namespaces(selector) => {
                namespace.is_some() && selector.matches(&self.set.namespace_labels(namespace))
            }
            Scope::NonNamespaced => namespace.is_none(),
        }
    }

    /// Whether the rule's selector (and service-account match) covers endpoint `e`.
    pub(crate) fn selects_endpoint(&self, e: &Endpoint) -> bool {
        self.in_scope(e.namespace.as_deref())
            && self.entity.selector.as_ref().is_none_or(|s| {
                s.matches(&EndpointLabels {
                    set: self.set,
                    endpoint: e,
                })
            })
            && self.service_account_matches(e)
    }

    /// Whether the rule's selector covers network set `n` (never with serviceAccounts).
    pub(crate) fn selects_network_set(&self, n: &NetworkSet) -> bool {
        self.entity.service_accounts.is_none()
            && self.in_scope(n.namespace.as_deref())
            && self
                .entity
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&NetworkSetLabels(n)))
    }

    /// Whether the rule's notSelector excludes endpoint `e`.
    pub(crate) fn excludes_endpoint(&self, e: &Endpoint) -> bool {
        self.entity.not_selector.as_ref().is_some_and(|s| {
            self.in_scope(e.namespace.as_deref())
                && s.matches(&EndpointLabels {
                    set: self.set,
                    endpoint: e,
                })
        })
    }

    /// Whether the rule's notSelector excludes network set `n`.
    pub(crate) fn excludes_network_set(&self, n: &NetworkSet) -> bool {
        self.entity.not_selector.as_ref().is_some_and(|s| {
            self.in_scope(n.namespace.as_deref()) && s.matches(&NetworkSetLabels(n))
        })
    }

    /// Whether `e`'s named ports count for this rule: any endpoint when the rule has no
    /// selector (Calico uses `all()`), else the selected ones.
    pub(crate) fn named_port_candidate(&self, e: &Endpoint) -> bool {
        !self.is_restricted() || self.selects_endpoint(e)
    }

    fn service_account_matches(&self, endpoint: &Endpoint) -> bool {
        let Some(wanted) = &self.entity.service_accounts else {
            return true;
        };
        let Some(name) = endpoint.service_account.as_deref() else {
            return false;
        };
        if !wanted.names.is_empty() && !wanted.names.iter().any(|n| n == name) {
            return false;
        }
        wanted.selector.as_ref().is_none_or(|selector| {
            self.set
                .service_account_labels(endpoint)
                .is_some_and(|labels| selector.matches(&labels))
        })
    }
}

/// An endpoint's labels as selectors see them (see [`PolicySet::effective_labels`]).
pub(crate) struct EndpointLabels<'a> {
    pub(crate) set: &'a PolicySet,
    pub(crate) endpoint: &'a Endpoint,
}

impl Labels for EndpointLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        let endpoint = self.endpoint;
        if let Some(value) = endpoint.labels.get(key) {
            return Some(value);
        }
        let special = match key {
            LABEL_NAMESPACE => endpoint.namespace.as_deref(),
            LABEL_ORCHESTRATOR => endpoint.orchestrator.as_deref(),
            LABEL_SERVICE_ACCOUNT => endpoint.service_account.as_deref(),
            _ => None,
        };
        if special.is_some() {
            return special;
        }
        endpoint
            .profiles
            .iter()
            .filter_map(|name| self.set.profiles.get(name))
            .find_map(|profile| profile.labels_to_apply.get(key).map(String::as_str))
    }
}

/// A network set's labels, with `projectcalico.org/namespace` for namespaced ones.
struct NetworkSetLabels<'a>(&'a NetworkSet);

impl Labels for NetworkSetLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        if let Some(value) = self.0.labels.get(key) {
            return Some(value);
        }
        if key == LABEL_NAMESPACE {
            self.0.namespace.as_deref()
        } else {
            None
        }
    }
}
