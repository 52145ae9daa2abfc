//! Incremental compilation: the [`Program`] of a node kept up to date as endpoints and
//! policies come, change and go, at a cost that follows what changed rather than the cluster.
//!
//! ```text
//!  put/delete endpoint ─► every live set: does its selector take the endpoint? (members ±)
//!                        └► a local endpoint: its EndpointProgram again (tiers → policy refs)
//!  put/delete policy ───► that policy's chain compiled again (if some endpoint uses it)
//!                        └► endpoints it selects (before or after), when its selection,
//!                           order, tier or types changed; the host side
//! ```
//!
//! Sets are keyed by their *definition* (the selector, notSelector, namespaceSelector,
//! serviceAccounts and scope of an entity rule, or a named port), not their contents, so an
//! [`IpSetId`] stays the same while members come and go: a change never renames a set nor
//! rewrites the chains that refer to it. Sets, policies and profiles are reference counted and
//! leave the program when nothing refers to them.
//!
//! Every change is recorded in a [`ProgramDelta`] ([`IncrementalCompiler::take_delta`]) that a
//! dataplane can apply without diffing whole programs. [`IncrementalCompiler::program`] is
//! always the whole program; its [`Program::canonical`] form equals that of
//! [`PolicySet::compile_for_node`] over the same state (a property test checks it).

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use felis_api::selector::Selector;
use ipnet::IpNet;

use crate::engine::PolicySet;
use crate::engine::endpoint_key;
use crate::engine::policy_key;
use crate::host::Stage;
use crate::model::Direction;
use crate::model::Endpoint;
use crate::model::EntityRule;
use crate::model::NetworkSet;
use crate::model::Policy;
use crate::model::Port;
use crate::model::ServiceAccountMatch;
use crate::program::DirectionProgram;
use crate::program::EndpointProgram;
use crate::program::EntitySets;
use crate::program::HostProgram;
use crate::program::IpSetId;
use crate::program::Program;
use crate::program::SetSource;
use crate::program::compile_policy;
use crate::program::compile_profile;
use crate::program::direction_program;
use crate::program::host_program;
use crate::program::set_references;
use crate::resolve::EntityScope;
use crate::resolve::NamedPortMember;

/// What changed in an [`IncrementalCompiler`]'s program since the last
/// [`take_delta`](IncrementalCompiler::take_delta).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgramDelta {
    /// Everything may have changed (a rebuild): apply the whole program.
    pub full: bool,
    /// Endpoint keys put or deleted: their program (or interface) may differ, they may have
    /// appeared or gone.
    pub endpoints: BTreeSet<String>,
    /// Policy keys whose chain was compiled again, added to or removed from the program.
    pub policies: BTreeSet<String>,
    /// Profiles added to or removed from the program.
    pub profiles: BTreeSet<String>,
    /// Address-set members added and removed, by set; a set created or dropped appears with all
    /// its members added or removed (whether it exists: [`Program::ip_sets`]).
    pub ip_sets: BTreeMap<IpSetId, SetDelta<IpNet>>,
    /// Named-port-set members added and removed, by set.
    pub named_port_sets: BTreeMap<IpSetId, SetDelta<NamedPortMember>>,
    /// Sets (of either kind) that came into the program: nothing refers to them but the
    /// policies and profiles in [`policies`](ProgramDelta::policies) and
    /// [`profiles`](ProgramDelta::profiles), compiled again in this delta.
    pub created_sets: BTreeSet<IpSetId>,
    /// The host side ([`Program::host`]) changed.
    pub host: bool,
}

impl ProgramDelta {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == ProgramDelta::default()
    }

    /// Records `other`, which happened after `self`.
    pub fn merge(&mut self, other: ProgramDelta) {
        self.full |= other.full;
        self.host |= other.host;
        self.endpoints.extend(other.endpoints);
        self.policies.extend(other.policies);
        self.profiles.extend(other.profiles);
        for (id, change) in other.ip_sets {
            self.ip_sets.entry(id).or_default().merge(change);
        }
        for (id, change) in other.named_port_sets {
            self.named_port_sets.entry(id).or_default().merge(change);
        }
        self.created_sets.extend(other.created_sets);
    }
}

/// Members added to and removed from one set (an element is never in both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDelta<T: Ord> {
    /// Members that were not in the set and are now.
    pub added: BTreeSet<T>,
    /// Members that were in the set and are no longer.
    pub removed: BTreeSet<T>,
}

impl<T: Ord> Default for SetDelta<T> {
    fn default() -> Self {
        SetDelta {
            added: BTreeSet::new(),
            removed: BTreeSet::new(),
        }
    }
}

impl<T: Ord> SetDelta<T> {
    fn add(&mut self, member: T) {
        if !self.removed.remove(&member) {
            self.added.insert(member);
        }
    }

    fn remove(&mut self, member: T) {
        if !self.added.remove(&member) {
            self.removed.insert(member);
        }
    }

    fn merge(&mut self, other: SetDelta<T>) {
        for m in other.removed {
            self.remove(m);
        }
        for m in other.added {
            self.add(m);
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The compiled program of one node, kept up to date change by change.
#[derive(Debug, Clone)]
pub struct IncrementalCompiler {
    node: String,
    set: PolicySet,
    /// Index of each endpoint of `set.endpoints`, by endpoint key.
    endpoint_index: BTreeMap<String, usize>,
    /// Index of each policy of `set.policies`, by policy key.
    policy_index: BTreeMap<String, usize>,
    /// Keys of the endpoints compiled into [`Program::endpoints`] (when they exist).
    local: BTreeSet<String>,
    program: Program,
    sets: SetTable,
    /// References to each policy key from endpoint and host programs.
    policy_refs: BTreeMap<String, usize>,
    /// References to each profile name from endpoint and host programs.
    profile_refs: BTreeMap<String, usize>,
    /// What the host program refers to.
    host_refs: Refs,
    delta: ProgramDelta,
}

impl IncrementalCompiler {
    /// An empty program for `node`.
    pub fn new(node: impl Into<String>) -> IncrementalCompiler {
        let mut compiler = IncrementalCompiler {
            node: node.into(),
            set: PolicySet::new(),
            endpoint_index: BTreeMap::new(),
            policy_index: BTreeMap::new(),
            local: BTreeSet::new(),
            program: Program::default(),
            sets: SetTable::default(),
            policy_refs: BTreeMap::new(),
            profile_refs: BTreeMap::new(),
            host_refs: Refs::default(),
            delta: ProgramDelta::default(),
        };
        compiler.rebuild(PolicySet::new(), BTreeSet::new());
        compiler
    }

    /// Compiles `set` from scratch for the endpoints whose keys are in `local` (plus the
    /// node's host endpoints); the next delta is [`full`](ProgramDelta::full). A set defined as
    /// before keeps its id; new ones get ids never used before.
    pub fn rebuild(&mut self, set: PolicySet, local: BTreeSet<String>) {
        self.endpoint_index = set
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (endpoint_key(e), i))
            .collect();
        self.policy_index = set
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| (policy_key(p).into_owned(), i))
            .collect();
        self.set = set;
        self.local = local;
        self.program = Program::default();
        self.sets.clear();
        self.policy_refs.clear();
        self.profile_refs.clear();
        self.host_refs = Refs::default();
        let keys: Vec<String> = self
            .local
            .iter()
            .filter(|k| self.endpoint_index.contains_key(*k))
            .cloned()
            .collect();
        for key in keys {
            self.refresh_endpoint(&key);
        }
        self.refresh_host();
        self.sets.forget_retired();
        self.delta = ProgramDelta {
            full: true,
            ..ProgramDelta::default()
        };
    }

    /// The node this program is for.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The whole program.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The policy state the program was compiled from.
    pub fn policy_set(&self) -> &PolicySet {
        &self.set
    }

    /// Keys of the endpoints compiled for this node.
    pub fn local(&self) -> &BTreeSet<String> {
        &self.local
    }

    /// What changed since the last call (or since creation), and a fresh record.
    pub fn take_delta(&mut self) -> ProgramDelta {
        std::mem::take(&mut self.delta)
    }

    /// Whether [`put_endpoint`](IncrementalCompiler::put_endpoint) can take `endpoint`
    /// without changing anything but the endpoint: a workload endpoint of a known namespace
    /// whose service account, if any, is known. Otherwise the derived state (namespace
    /// profiles, service accounts) changes too: [`rebuild`](IncrementalCompiler::rebuild).
    pub fn can_put_endpoint(&self, endpoint: &Endpoint) -> bool {
        let Some(namespace) = endpoint.namespace.as_deref() else {
            return false;
        };
        !endpoint.is_host_endpoint()
            && self.set.namespaces.contains_key(namespace)
            && endpoint.service_account.as_deref().is_none_or(|sa| {
                self.set
                    .service_accounts
                    .iter()
                    .any(|a| a.name == sa && a.namespace == namespace)
            })
    }

    /// Adds or replaces (by key) a workload endpoint; `local`: it is on this node (its
    /// program is compiled). See [`can_put_endpoint`](IncrementalCompiler::can_put_endpoint).
    pub fn put_endpoint(&mut self, endpoint: Endpoint, local: bool) {
        let key = endpoint_key(&endpoint);
        match self.endpoint_index.get(&key) {
            Some(i) => {
                if let Some(slot) = self.set.endpoints.get_mut(*i) {
                    *slot = endpoint;
                }
            }
            None => {
                self.endpoint_index
                    .insert(key.clone(), self.set.endpoints.len());
                self.set.endpoints.push(endpoint);
            }
        }
        self.update_members(&key);
        if local {
            self.local.insert(key.clone());
        } else {
            self.local.remove(&key);
        }
        self.refresh_endpoint(&key);
    }

    /// Deletes the endpoint with key `key` (`<namespace>/<name>`); no such endpoint: no change.
    pub fn delete_endpoint(&mut self, key: &str) {
        let Some(index) = self.endpoint_index.remove(key) else {
            return;
        };
        if index < self.set.endpoints.len() {
            self.set.endpoints.swap_remove(index);
            if let Some(moved) = self.set.endpoints.get(index) {
                self.endpoint_index.insert(endpoint_key(moved), index);
            }
        }
        self.update_members(key);
        self.local.remove(key);
        self.refresh_endpoint(key);
    }

    /// Adds or replaces (by [policy key](Program::policies)) a policy.
    pub fn put_policy(&mut self, policy: Policy) {
        let key = policy_key(&policy).into_owned();
        let old = match self.policy_index.get(&key) {
            Some(i) => self
                .set
                .policies
                .get_mut(*i)
                .map(|slot| std::mem::replace(slot, policy)),
            None => {
                self.policy_index
                    .insert(key.clone(), self.set.policies.len());
                self.set.policies.push(policy);
                None
            }
        };
        self.policy_changed(&key, old);
    }

    /// Deletes the policy with key `key` (`<namespace>/<name>`, or `<name>` for a global
    /// one); no such policy: no change.
    pub fn delete_policy(&mut self, key: &str) {
        let Some(index) = self.policy_index.remove(key) else {
            return;
        };
        if index >= self.set.policies.len() {
            return;
        }
        let old = self.set.policies.swap_remove(index);
        if let Some(moved) = self.set.policies.get(index) {
            self.policy_index
                .insert(policy_key(moved).into_owned(), index);
        }
        self.policy_changed(key, Some(old));
    }

    fn policy(&self, key: &str) -> Option<&Policy> {
        self.policy_index
            .get(key)
            .and_then(|i| self.set.policies.get(*i))
    }

    fn endpoint(&self, key: &str) -> Option<&Endpoint> {
        self.endpoint_index
            .get(key)
            .and_then(|i| self.set.endpoints.get(*i))
    }

    /// The policy under `key` compiled (its sets interned and referenced once more); `None`
    /// when there is no such policy.
    fn compile_and_acquire(&mut self, key: &str) -> Option<crate::program::PolicyProgram> {
        let policy = self.policy(key).cloned()?;
        let compiled = compile_policy(
            &self.set,
            &policy,
            &mut self.sets.interner(
                &mut self.program.ip_sets,
                &mut self.program.named_port_sets,
                &mut self.delta,
            ),
        );
        self.sets
            .acquire(compiled.ingress.iter().chain(&compiled.egress));
        Some(compiled)
    }

    /// After the policy under `key` changed from `old` (`None`: it is new) to what `set` holds
    /// now (nothing: deleted).
    fn policy_changed(&mut self, key: &str, old: Option<Policy>) {
        // Its chain, if something uses it.
        if self.policy_refs.get(key).is_some_and(|n| *n > 0) {
            let previous = self.program.policies.remove(key);
            let compiled = self.compile_and_acquire(key);
            if previous != compiled {
                self.delta.policies.insert(key.to_string());
            }
            if let Some(compiled) = compiled {
                self.program.policies.insert(key.to_string(), compiled);
            }
            if let Some(previous) = previous {
                self.release_sets(&previous.ingress, &previous.egress);
            }
        }
        // The endpoints it selects, when what decides that (or the order) changed.
        let new = self.policy(key);
        let moved = match (&old, new) {
            (Some(old), Some(new)) => Selection::of(old) != Selection::of(new),
            (None, None) => false,
            _ => true,
        };
        if moved {
            let affected: Vec<String> = self
                .local
                .iter()
                .filter(|k| {
                    self.endpoint(k).is_some_and(|e| {
                        old.as_ref().is_some_and(|p| self.set.policy_selects(p, e))
                            || new.is_some_and(|p| self.set.policy_selects(p, e))
                    })
                })
                .cloned()
                .collect();
            for k in affected {
                self.refresh_endpoint(&k);
            }
        }
        if moved
            || self
                .program
                .host
                .as_ref()
                .is_some_and(|h| !h.endpoints.is_empty())
        {
            self.refresh_host();
        }
    }

    /// Brings every live set's members from object `key` (an endpoint key) up to date.
    fn update_members(&mut self, key: &str) {
        let object = ObjectKey::Endpoint(key.to_string());
        let endpoint = self
            .endpoint_index
            .get(key)
            .and_then(|i| self.set.endpoints.get(*i));
        let set = &self.set;
        for id in self.sets.candidates(key) {
            let Some(live) = self.sets.live.get_mut(&id) else {
                continue;
            };
            let contribution = match endpoint {
                Some(e) => live.endpoint_contribution(set, e),
                None => Contribution::None,
            };
            live.members.update(
                &object,
                contribution,
                id,
                &mut self.program.ip_sets,
                &mut self.program.named_port_sets,
                &mut self.delta,
            );
        }
    }

    /// Compiles the program of endpoint `key` again (or drops it: not local, or gone).
    fn refresh_endpoint(&mut self, key: &str) {
        self.delta.endpoints.insert(key.to_string());
        let new = match self.endpoint(key) {
            Some(endpoint) if self.local.contains(key) => {
                let [ingress, egress] = [Direction::Ingress, Direction::Egress].map(|d| {
                    let (program, _) =
                        direction_program(&self.set, endpoint, d, Stage::Normal, true);
                    program
                });
                Some(EndpointProgram { ingress, egress })
            }
            _ => None,
        };
        let old = self.program.endpoints.get(key);
        if old == new.as_ref() {
            return;
        }
        let new_refs = new.as_ref().map(Refs::of_endpoint).unwrap_or_default();
        let old_refs = old.map(Refs::of_endpoint).unwrap_or_default();
        self.acquire(&new_refs);
        self.release(&old_refs);
        match new {
            Some(program) => self.program.endpoints.insert(key.to_string(), program),
            None => self.program.endpoints.remove(key),
        };
    }

    /// Builds the host side again.
    fn refresh_host(&mut self) {
        let mut refs = Refs::default();
        let host = host_program(&self.set, &self.node, |hep, direction, stage, profiles| {
            let (program, _) = direction_program(&self.set, hep, direction, stage, profiles);
            refs.add(&program);
            program
        });
        if self.program.host.as_ref() == Some(&host) {
            return;
        }
        self.acquire(&refs);
        let old = std::mem::replace(&mut self.host_refs, refs);
        self.release(&old);
        self.program.host = Some(host);
        self.delta.host = true;
    }

    fn acquire(&mut self, refs: &Refs) {
        for key in &refs.policies {
            let n = self.policy_refs.entry(key.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                continue;
            }
            let Some(compiled) = self.compile_and_acquire(key) else {
                continue;
            };
            self.program.policies.insert(key.clone(), compiled);
            self.delta.policies.insert(key.clone());
        }
        for name in &refs.profiles {
            let n = self.profile_refs.entry(name.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                continue;
            }
            let Some(profile) = self.set.profiles.get(name) else {
                continue;
            };
            let compiled = compile_profile(
                &self.set,
                profile,
                &mut self.sets.interner(
                    &mut self.program.ip_sets,
                    &mut self.program.named_port_sets,
                    &mut self.delta,
                ),
            );
            self.sets
                .acquire(compiled.ingress.iter().chain(&compiled.egress));
            self.program.profiles.insert(name.clone(), compiled);
            self.delta.profiles.insert(name.clone());
        }
    }

    fn release(&mut self, refs: &Refs) {
        for key in &refs.policies {
            if drop_ref(&mut self.policy_refs, key)
                && let Some(old) = self.program.policies.remove(key)
            {
                self.release_sets(&old.ingress, &old.egress);
                self.delta.policies.insert(key.clone());
            }
        }
        for name in &refs.profiles {
            if drop_ref(&mut self.profile_refs, name)
                && let Some(old) = self.program.profiles.remove(name)
            {
                self.release_sets(&old.ingress, &old.egress);
                self.delta.profiles.insert(name.clone());
            }
        }
    }

    fn release_sets(
        &mut self,
        ingress: &[crate::program::CompiledRule],
        egress: &[crate::program::CompiledRule],
    ) {
        for id in set_references(ingress).chain(set_references(egress)) {
            self.sets.release(
                id,
                &mut self.program.ip_sets,
                &mut self.program.named_port_sets,
                &mut self.delta,
            );
        }
    }
}

/// What decides which endpoints a policy applies to, where, and in which order.
#[derive(PartialEq)]
struct Selection<'a> {
    tier: &'a str,
    order: Option<f64>,
    selector: &'a Selector,
    namespace_selector: Option<&'a Selector>,
    service_account_selector: Option<&'a Selector>,
    ingress: bool,
    egress: bool,
    stages: [bool; 3],
}

impl Selection<'_> {
    fn of(policy: &Policy) -> Selection<'_> {
        Selection {
            tier: &policy.tier,
            order: policy.order,
            selector: &policy.selector,
            namespace_selector: policy.namespace_selector.as_ref(),
            service_account_selector: policy.service_account_selector.as_ref(),
            ingress: policy.applies_in(Direction::Ingress),
            egress: policy.applies_in(Direction::Egress),
            stages: [
                policy.apply_on_forward,
                policy.pre_dnat,
                policy.do_not_track,
            ],
        }
    }
}

/// The policies and profiles a program refers to (with repeats: one per reference).
#[derive(Debug, Clone, Default)]
struct Refs {
    policies: Vec<String>,
    profiles: Vec<String>,
}

impl Refs {
    fn add(&mut self, program: &DirectionProgram) {
        self.policies.extend(
            program
                .tiers
                .iter()
                .flat_map(|t| t.policies.iter().cloned()),
        );
        self.profiles.extend(program.profiles.iter().cloned());
    }

    fn of_endpoint(program: &EndpointProgram) -> Refs {
        let mut refs = Refs::default();
        refs.add(&program.ingress);
        refs.add(&program.egress);
        refs
    }
}

/// Which set an entity rule needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SetRole {
    /// Addresses of what selector, namespaceSelector and serviceAccounts select.
    Selected,
    /// Addresses of what notSelector excludes.
    Excluded,
    /// `address:protocol:port` of this named port on the candidate endpoints.
    NamedPort(String),
}

/// What a set stands for: its key. Fields that do not matter for the role are blank.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SetDef {
    role: SetRole,
    /// The policy's namespace (when it scopes the rule: no namespaceSelector).
    namespace: Option<String>,
    selector: Option<Selector>,
    not_selector: Option<Selector>,
    namespace_selector: Option<Selector>,
    service_accounts: Option<(Vec<String>, Option<Selector>)>,
}

impl SetDef {
    fn new(role: SetRole, entity: &EntityRule, policy_namespace: Option<&str>) -> SetDef {
        let selects = role != SetRole::Excluded;
        SetDef {
            namespace: if entity.namespace_selector.is_some() {
                None
            } else {
                policy_namespace.map(str::to_string)
            },
            selector: entity.selector.clone().filter(|_| selects),
            not_selector: entity.not_selector.clone().filter(|_| !selects),
            namespace_selector: entity.namespace_selector.clone(),
            service_accounts: entity
                .service_accounts
                .as_ref()
                .filter(|_| selects)
                .map(|s| (s.names.clone(), s.selector.clone())),
            role,
        }
    }

    /// The namespace outside which no endpoint can be a member (an NP rule without
    /// namespaceSelector); `None`: any endpoint may be.
    fn scope(&self) -> Option<&str> {
        let restricted = self.selector.is_some() || self.service_accounts.is_some();
        match self.role {
            // A named port without selector takes every endpoint's ports (Calico's `all()`).
            SetRole::NamedPort(_) if !restricted => None,
            _ if self.namespace_selector.is_some() => None,
            _ => self.namespace.as_deref(),
        }
    }

    /// An entity rule with just the fields of the definition.
    fn entity(&self) -> EntityRule {
        EntityRule {
            selector: self.selector.clone(),
            not_selector: self.not_selector.clone(),
            namespace_selector: self.namespace_selector.clone(),
            service_accounts: self.service_accounts.as_ref().map(|(names, selector)| {
                ServiceAccountMatch {
                    names: names.clone(),
                    selector: selector.clone(),
                }
            }),
            ..EntityRule::default()
        }
    }
}

/// An object whose addresses may be set members.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum ObjectKey {
    Endpoint(String),
    NetworkSet(String),
}

/// What one object puts in one set.
enum Contribution {
    None,
    Nets(Vec<IpNet>),
    NamedPorts(Vec<NamedPortMember>),
}

/// A set some compiled rule refers to, and its members by object.
#[derive(Debug, Clone)]
struct LiveSet {
    def: SetDef,
    entity: EntityRule,
    refs: usize,
    members: Members,
}

impl LiveSet {
    fn endpoint_contribution(&self, set: &PolicySet, e: &Endpoint) -> Contribution {
        let scope = EntityScope::new(set, &self.entity, self.def.namespace.as_deref());
        match &self.def.role {
            SetRole::Selected if scope.selects_endpoint(e) => Contribution::Nets(e.ips.clone()),
            SetRole::Excluded if scope.excludes_endpoint(e) => Contribution::Nets(e.ips.clone()),
            SetRole::NamedPort(name) if scope.named_port_candidate(e) => Contribution::NamedPorts(
                e.ports
                    .iter()
                    .filter(|p| p.name == *name)
                    .flat_map(|p| {
                        e.ips.iter().map(|net| NamedPortMember {
                            net: *net,
                            protocol: p.protocol,
                            port: p.port,
                        })
                    })
                    .collect(),
            ),
            _ => Contribution::None,
        }
    }

    fn network_set_contribution(&self, set: &PolicySet, n: &NetworkSet) -> Contribution {
        let scope = EntityScope::new(set, &self.entity, self.def.namespace.as_deref());
        let member = match &self.def.role {
            SetRole::Selected => scope.selects_network_set(n),
            SetRole::Excluded => scope.excludes_network_set(n),
            SetRole::NamedPort(_) => false,
        };
        if member {
            Contribution::Nets(n.nets.clone())
        } else {
            Contribution::None
        }
    }
}

#[derive(Debug, Clone)]
enum Members {
    Nets(Membership<IpNet>),
    NamedPorts(Membership<NamedPortMember>),
}

impl Members {
    /// Replaces what `object` contributes, keeping the program's copy of set `id` and the
    /// delta in step.
    fn update(
        &mut self,
        object: &ObjectKey,
        contribution: Contribution,
        id: IpSetId,
        ip_sets: &mut BTreeMap<IpSetId, Vec<IpNet>>,
        named_port_sets: &mut BTreeMap<IpSetId, Vec<NamedPortMember>>,
        delta: &mut ProgramDelta,
    ) {
        match self {
            Members::Nets(m) => {
                let new = match contribution {
                    Contribution::Nets(nets) => nets,
                    _ => Vec::new(),
                };
                let (added, removed) = m.update(object, new);
                if added.is_empty() && removed.is_empty() {
                    return;
                }
                let change = delta.ip_sets.entry(id).or_default();
                apply(ip_sets.entry(id).or_default(), change, added, removed);
            }
            Members::NamedPorts(m) => {
                let new = match contribution {
                    Contribution::NamedPorts(members) => members,
                    _ => Vec::new(),
                };
                let (added, removed) = m.update(object, new);
                if added.is_empty() && removed.is_empty() {
                    return;
                }
                let change = delta.named_port_sets.entry(id).or_default();
                apply(
                    named_port_sets.entry(id).or_default(),
                    change,
                    added,
                    removed,
                );
            }
        }
    }
}

/// Applies member changes to a sorted member list and to a delta.
fn apply<T: Ord + Copy>(
    list: &mut Vec<T>,
    change: &mut SetDelta<T>,
    added: Vec<T>,
    removed: Vec<T>,
) {
    for m in removed {
        if let Ok(i) = list.binary_search(&m) {
            list.remove(i);
        }
        change.remove(m);
    }
    for m in added {
        if let Err(i) = list.binary_search(&m) {
            list.insert(i, m);
        }
        change.add(m);
    }
}

/// Members of one set by the object that put them there, counted (two objects may share an
/// address).
#[derive(Debug, Clone)]
struct Membership<T> {
    by_object: BTreeMap<ObjectKey, Vec<T>>,
    counts: BTreeMap<T, u32>,
}

impl<T: Ord + Copy> Membership<T> {
    fn new() -> Membership<T> {
        Membership {
            by_object: BTreeMap::new(),
            counts: BTreeMap::new(),
        }
    }

    /// Sets `object`'s contribution; returns the members that appeared and disappeared.
    fn update(&mut self, object: &ObjectKey, new: Vec<T>) -> (Vec<T>, Vec<T>) {
        let old = if new.is_empty() {
            self.by_object.remove(object).unwrap_or_default()
        } else {
            match self.by_object.insert(object.clone(), new.clone()) {
                Some(old) if old == new => return (Vec::new(), Vec::new()),
                Some(old) => old,
                None => Vec::new(),
            }
        };
        if old.is_empty() && new.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let touched: BTreeSet<T> = old.iter().chain(&new).copied().collect();
        let before: Vec<bool> = touched
            .iter()
            .map(|m| self.counts.contains_key(m))
            .collect();
        for m in &old {
            if let Some(n) = self.counts.get_mut(m) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(m);
                }
            }
        }
        for m in &new {
            *self.counts.entry(*m).or_insert(0) += 1;
        }
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for (m, was) in touched.into_iter().zip(before) {
            match (was, self.counts.contains_key(&m)) {
                (false, true) => added.push(m),
                (true, false) => removed.push(m),
                _ => {}
            }
        }
        (added, removed)
    }
}

/// The live sets, by id and by definition.
#[derive(Debug, Clone, Default)]
struct SetTable {
    ids: BTreeMap<SetDef, IpSetId>,
    live: BTreeMap<IpSetId, LiveSet>,
    next: u32,
    /// During a rebuild: the ids sets had before it, which they keep.
    retired: BTreeMap<SetDef, IpSetId>,
    /// Live sets by [`SetDef::scope`]: an endpoint can only be in those of its namespace and
    /// those of `None`.
    scoped: BTreeMap<Option<String>, BTreeSet<IpSetId>>,
}

impl SetTable {
    /// Drops every set; until [`SetTable::forget_retired`], a set defined as one of them gets
    /// its id back (a rebuild renames nothing that did not change).
    fn clear(&mut self) {
        self.retired = std::mem::take(&mut self.ids);
        self.live.clear();
        self.scoped.clear();
    }

    /// The live sets endpoint `key` (`<namespace>/<name>`, or a host endpoint's name) may be a
    /// member of.
    fn candidates(&self, key: &str) -> Vec<IpSetId> {
        let namespace = key.split_once('/').map(|(ns, _)| ns.to_string());
        let mut ids: Vec<IpSetId> = self
            .scoped
            .get(&None)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        if namespace.is_some() {
            ids.extend(self.scoped.get(&namespace).into_iter().flatten().copied());
        }
        ids
    }

    fn forget_retired(&mut self) {
        self.retired.clear();
    }

    fn interner<'a>(
        &'a mut self,
        ip_sets: &'a mut BTreeMap<IpSetId, Vec<IpNet>>,
        named_port_sets: &'a mut BTreeMap<IpSetId, Vec<NamedPortMember>>,
        delta: &'a mut ProgramDelta,
    ) -> Interner<'a> {
        Interner {
            table: self,
            ip_sets,
            named_port_sets,
            delta,
        }
    }

    /// Counts one reference per set reference of `rules`.
    fn acquire<'a>(&mut self, rules: impl Iterator<Item = &'a crate::program::CompiledRule>) {
        for rule in rules {
            for id in set_references(std::slice::from_ref(rule)) {
                if let Some(live) = self.live.get_mut(&id) {
                    live.refs += 1;
                }
            }
        }
    }

    /// Drops one reference to `id`; the last one drops the set.
    fn release(
        &mut self,
        id: IpSetId,
        ip_sets: &mut BTreeMap<IpSetId, Vec<IpNet>>,
        named_port_sets: &mut BTreeMap<IpSetId, Vec<NamedPortMember>>,
        delta: &mut ProgramDelta,
    ) {
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        live.refs = live.refs.saturating_sub(1);
        if live.refs > 0 {
            return;
        }
        let Some(live) = self.live.remove(&id) else {
            return;
        };
        self.ids.remove(&live.def);
        let scope = live.def.scope().map(str::to_string);
        if let Some(ids) = self.scoped.get_mut(&scope) {
            ids.remove(&id);
            if ids.is_empty() {
                self.scoped.remove(&scope);
            }
        }
        match live.members {
            Members::Nets(_) => {
                let members = ip_sets.remove(&id).unwrap_or_default();
                let change = delta.ip_sets.entry(id).or_default();
                members.into_iter().for_each(|m| change.remove(m));
            }
            Members::NamedPorts(_) => {
                let members = named_port_sets.remove(&id).unwrap_or_default();
                let change = delta.named_port_sets.entry(id).or_default();
                members.into_iter().for_each(|m| change.remove(m));
            }
        }
    }
}

/// Numbers sets by definition, creating (with their members) those not live yet.
struct Interner<'a> {
    table: &'a mut SetTable,
    ip_sets: &'a mut BTreeMap<IpSetId, Vec<IpNet>>,
    named_port_sets: &'a mut BTreeMap<IpSetId, Vec<NamedPortMember>>,
    delta: &'a mut ProgramDelta,
}

impl Interner<'_> {
    fn intern(&mut self, set: &PolicySet, def: SetDef) -> IpSetId {
        if let Some(id) = self.table.ids.get(&def) {
            return *id;
        }
        let id = match self.table.retired.remove(&def) {
            Some(id) => id,
            None => {
                let id = IpSetId(self.table.next);
                self.table.next = self.table.next.saturating_add(1);
                id
            }
        };
        self.delta.created_sets.insert(id);
        let named = matches!(def.role, SetRole::NamedPort(_));
        let mut live = LiveSet {
            entity: def.entity(),
            def: def.clone(),
            refs: 0,
            members: if named {
                Members::NamedPorts(Membership::new())
            } else {
                Members::Nets(Membership::new())
            },
        };
        if named {
            self.named_port_sets.insert(id, Vec::new());
        } else {
            self.ip_sets.insert(id, Vec::new());
        }
        for e in &set.endpoints {
            let contribution = live.endpoint_contribution(set, e);
            if matches!(contribution, Contribution::None) {
                continue;
            }
            live.members.update(
                &ObjectKey::Endpoint(endpoint_key(e)),
                contribution,
                id,
                self.ip_sets,
                self.named_port_sets,
                self.delta,
            );
        }
        for n in &set.network_sets {
            let contribution = live.network_set_contribution(set, n);
            if matches!(contribution, Contribution::None) {
                continue;
            }
            let key = match &n.namespace {
                Some(ns) => format!("{ns}/{}", n.name),
                None => n.name.clone(),
            };
            live.members.update(
                &ObjectKey::NetworkSet(key),
                contribution,
                id,
                self.ip_sets,
                self.named_port_sets,
                self.delta,
            );
        }
        self.table
            .scoped
            .entry(def.scope().map(str::to_string))
            .or_default()
            .insert(id);
        self.table.ids.insert(def, id);
        self.table.live.insert(id, live);
        id
    }
}

impl SetSource for Interner<'_> {
    fn entity_sets(
        &mut self,
        set: &PolicySet,
        entity: &EntityRule,
        policy_namespace: Option<&str>,
    ) -> EntitySets {
        let scope = EntityScope::new(set, entity, policy_namespace);
        let selected = scope.is_restricted().then(|| {
            self.intern(
                set,
                SetDef::new(SetRole::Selected, entity, policy_namespace),
            )
        });
        let excluded = entity.not_selector.is_some().then(|| {
            self.intern(
                set,
                SetDef::new(SetRole::Excluded, entity, policy_namespace),
            )
        });
        let mut named = BTreeMap::new();
        for port in entity.ports.iter().chain(&entity.not_ports) {
            let Port::Named(name) = port else { continue };
            if named.contains_key(name) {
                continue;
            }
            let def = SetDef::new(SetRole::NamedPort(name.clone()), entity, policy_namespace);
            named.insert(name.clone(), self.intern(set, def));
        }
        EntitySets {
            selected,
            excluded,
            named,
        }
    }
}

/// Whether `program` has a host side with host endpoints.
pub fn has_host_endpoints(program: &Program) -> bool {
    program
        .host
        .as_ref()
        .is_some_and(|h: &HostProgram| !h.endpoints.is_empty())
}

/// The key of `policy` in [`Program::policies`]: `<namespace>/<name>`, or `<name>` for a
/// global policy.
pub fn policy_key_of(policy: &Policy) -> String {
    policy_key(policy).into_owned()
}

/// The key of `endpoint` in [`Program::endpoints`]: `<namespace>/<name>`, or `<name>` for a
/// host endpoint.
pub fn endpoint_key_of(endpoint: &Endpoint) -> String {
    endpoint_key(endpoint)
}

/// Takes one reference to `key` away; true when that was the last (the count is removed).
fn drop_ref(counts: &mut BTreeMap<String, usize>, key: &str) -> bool {
    let Some(n) = counts.get_mut(key) else {
        return false;
    };
    *n = n.saturating_sub(1);
    if *n > 0 {
        return false;
    }
    counts.remove(key);
    true
}
