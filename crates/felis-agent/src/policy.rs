//! Network policy on this host: the policy-relevant resources of the datastore, compiled into a
//! [`Program`] for this node's workload endpoints, and the nftables dataplane that enforces it.
//!
//! [`PolicyState`] is pure: it keeps every policy-relevant resource by key (from the same
//! snapshot, put and delete events as the calculation graph) and turns them into a
//! [`DesiredPolicy`]: the program plus each local endpoint's interface. [`PolicyPlane`] adds the
//! [`PolicyDataplane`] and decides when to apply (after a change, after a failure, on resync).
//!
//! Changes are compiled incrementally: [`PolicyState`] feeds workload-endpoint and policy puts
//! and deletes to a [`felis_policy::IncrementalCompiler`] (only what changed is compiled
//! again), and [`PolicyPlane`] hands the resulting [`ProgramDelta`] to
//! [`PolicyDataplane::apply_delta`] (one netlink batch, no whole-ruleset render or diff).
//! Any other change (tiers, profiles, namespaces, network sets, host endpoints,
//! FelixConfiguration, a snapshot) rebuilds the compiler from every resource.
//!
//! Nothing is programmed before the first snapshot: an agent that has not seen the datastore yet
//! would otherwise install an empty program, and `felis-nft` drops every `cali*` interface whose
//! device group has no dispatch-map entry, cutting off running workloads until the snapshot
//! arrives.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Instant;

use felis_api::Kind;
use felis_api::Resource;
use felis_nft::ApplyStats;
use felis_nft::PolicyDataplane;
use felis_nft::Transport;
use felis_policy::IncrementalCompiler;
use felis_policy::PolicySet;
use felis_policy::Program;
use felis_policy::ProgramDelta;
use felis_policy::convert::endpoint_from_resource;
use felis_policy::convert::policy_from_resource;
use felis_policy::incremental::endpoint_key_of;
use felis_policy::incremental::policy_key_of;

use crate::sync::Undecodable;

/// The kinds whose resources decide policy (Calico's policy calculation inputs).
pub const POLICY_KINDS: [Kind; 11] = [
    Kind::NetworkPolicy,
    Kind::GlobalNetworkPolicy,
    Kind::Tier,
    Kind::Profile,
    Kind::NetworkSet,
    Kind::GlobalNetworkSet,
    Kind::HostEndpoint,
    Kind::WorkloadEndpoint,
    Kind::K8sNetworkPolicy,
    Kind::Namespace,
    Kind::FelixConfiguration,
];

/// Whether `key` holds a policy-relevant resource.
pub fn is_policy_key(key: &str) -> bool {
    POLICY_KINDS
        .iter()
        .any(|kind| key.starts_with(&kind.key_prefix()))
}

/// What this host's policy dataplane should enforce.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredPolicy {
    /// The compiled policy of the local workload endpoints.
    pub program: Program,
    /// Endpoint key (`<namespace>/<name>`) to host-side interface, for local endpoints that
    /// have one.
    pub interfaces: BTreeMap<String, String>,
    /// Resources left out because the engine refused them: key and reason.
    pub skipped: Vec<(String, String)>,
}

/// Every policy-relevant resource, by datastore key, and the program they compile to
/// (incrementally). Pure.
#[derive(Debug, Clone)]
pub struct PolicyState {
    node: String,
    /// Key to (raw value, decoded resource); the raw value tells a real change from a replay.
    resources: BTreeMap<String, (Vec<u8>, Resource)>,
    /// Whether a snapshot has been seen.
    synced: bool,
    /// The program, compiled change by change.
    incremental: Incremental,
    /// This host's addresses and the interfaces holding them: a local host endpoint naming no
    /// interface applies to the interface that holds one of its `expectedIPs` (as in Calico).
    host_addresses: BTreeMap<IpAddr, String>,
}

/// Where a datastore key went in the incremental compiler.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Model {
    /// A workload endpoint, by endpoint key.
    Endpoint(String),
    /// A policy, by policy key.
    Policy(String),
}

/// The incremental compiler and what the agent keeps beside it.
#[derive(Debug, Clone)]
struct Incremental {
    compiler: IncrementalCompiler,
    /// Datastore keys of the workload endpoints and policies in the compiler.
    models: BTreeMap<String, Model>,
    /// The other way round.
    owners: BTreeMap<Model, String>,
    /// Endpoint key to interface, for local endpoints that have one.
    interfaces: BTreeMap<String, String>,
    /// Resources the engine refused: key and reason.
    skipped: BTreeMap<String, String>,
    /// Something changed that the compiler cannot take change by change: rebuild it.
    stale: bool,
    /// Time spent compiling since the last [`PolicyState::compile`].
    compile_time: std::time::Duration,
}

impl PolicyState {
    /// Empty state for node `node`; not [`synced`](PolicyState::synced) until a snapshot.
    pub fn new(node: impl Into<String>) -> PolicyState {
        let node = node.into();
        PolicyState {
            incremental: Incremental {
                compiler: IncrementalCompiler::new(node.clone()),
                models: BTreeMap::new(),
                owners: BTreeMap::new(),
                interfaces: BTreeMap::new(),
                skipped: BTreeMap::new(),
                stale: true,
                compile_time: std::time::Duration::ZERO,
            },
            node,
            resources: BTreeMap::new(),
            synced: false,
            host_addresses: BTreeMap::new(),
        }
    }

    /// Whether a local host endpoint names no interface but `expectedIPs`, so its interface
    /// comes from [`PolicyState::set_host_addresses`].
    pub fn wants_host_addresses(&self) -> bool {
        self.local_host_endpoints()
            .any(|h| h.spec.interface_name.is_empty() && !h.spec.expected_ips.is_empty())
    }

    fn local_host_endpoints(&self) -> impl Iterator<Item = &felis_api::HostEndpoint> {
        let prefix = Kind::HostEndpoint.key_prefix();
        self.resources
            .range(prefix.clone()..)
            .take_while(move |(key, _)| key.starts_with(&prefix))
            .filter_map(|(_, (_, resource))| match resource {
                Resource::HostEndpoint(h) if h.spec.node == self.node => Some(h),
                _ => None,
            })
    }

    /// Records this host's addresses (address → interface). Returns whether that changes an
    /// interface a host endpoint applies to (the program is then rebuilt).
    pub fn set_host_addresses(&mut self, addresses: BTreeMap<IpAddr, String>) -> bool {
        if addresses == self.host_addresses {
            return false;
        }
        let before: Vec<Option<String>> = self
            .resolved_host_interfaces()
            .map(|i| i.cloned())
            .collect();
        self.host_addresses = addresses;
        let changed = self
            .resolved_host_interfaces()
            .zip(&before)
            .any(|(now, was)| now != was.as_ref());
        if changed {
            self.incremental.stale = true;
        }
        changed
    }

    /// For each local host endpoint naming no interface, the interface holding the first of
    /// its `expectedIPs` that this host has.
    fn resolved_host_interfaces(&self) -> impl Iterator<Item = Option<&String>> {
        self.local_host_endpoints()
            .filter(|h| h.spec.interface_name.is_empty())
            .map(|h| {
                h.spec
                    .expected_ips
                    .iter()
                    .find_map(|ip| self.host_addresses.get(ip))
            })
    }

    /// Whether a snapshot has been applied.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Number of resources kept.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// Whether no resource is kept.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Replaces everything with a snapshot's `(key, value)` pairs. Returns whether anything
    /// changed, and the values that could not be decoded (skipped).
    pub fn snapshot<'a>(
        &mut self,
        items: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> (bool, Vec<Undecodable>) {
        let mut next = BTreeMap::new();
        let mut errors = Vec::new();
        for (key, value) in items {
            if !is_policy_key(key) {
                continue;
            }
            match decode(key, value) {
                Ok(resource) => {
                    next.insert(key.to_string(), (value.to_vec(), resource));
                }
                Err(e) => errors.push(e),
            }
        }
        let changed = !self.synced || !same_keys_and_values(&self.resources, &next);
        if changed {
            self.incremental.stale = true;
        }
        self.resources = next;
        self.synced = true;
        (changed, errors)
    }

    /// Records a put. Returns whether anything changed; a value that cannot be decoded is
    /// skipped (and an older value under its key forgotten).
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<bool, Undecodable> {
        if !is_policy_key(key) {
            return Ok(false);
        }
        if self.resources.get(key).is_some_and(|(old, _)| old == value) {
            return Ok(false);
        }
        match decode(key, value) {
            Ok(resource) => {
                let start = Instant::now();
                self.incremental.put(&self.node, key, &resource);
                self.incremental.compile_time += start.elapsed();
                self.resources
                    .insert(key.to_string(), (value.to_vec(), resource));
                Ok(true)
            }
            Err(e) => {
                if self.resources.remove(key).is_some() {
                    self.incremental.delete(key);
                }
                Err(e)
            }
        }
    }

    /// Records a delete. Returns whether anything changed.
    pub fn delete(&mut self, key: &str) -> bool {
        let deleted = self.resources.remove(key).is_some();
        if deleted {
            let start = Instant::now();
            self.incremental.delete(key);
            self.incremental.compile_time += start.elapsed();
        }
        deleted
    }

    /// Brings the incrementally compiled program up to date (rebuilding it from every resource
    /// after a change it cannot take change by change) and returns what changed since the last
    /// call, and the time spent compiling since then (in puts and deletes, and here), in
    /// milliseconds. The program: [`PolicyState::program`]; the same as
    /// [`PolicyState::desired`] gives but for set numbering.
    pub fn compile(&mut self) -> Result<(ProgramDelta, f64), felis_policy::Error> {
        let start = Instant::now();
        let before = std::mem::take(&mut self.incremental.compile_time);
        if self.incremental.stale {
            let input = self.input()?;
            let mut models = BTreeMap::new();
            for (key, (_, resource)) in &self.resources {
                if let Some(endpoint) = endpoint_from_resource(resource)
                    && matches!(resource, Resource::WorkloadEndpoint(_))
                {
                    models.insert(key.clone(), Model::Endpoint(endpoint_key_of(&endpoint)));
                } else if !input.skipped.iter().any(|(k, _)| k == key)
                    && let Ok(Some(policy)) = policy_from_resource(resource)
                {
                    models.insert(key.clone(), Model::Policy(policy_key_of(&policy)));
                }
            }
            let incremental = &mut self.incremental;
            incremental.compiler.rebuild(input.set, input.local);
            incremental.owners = models
                .iter()
                .map(|(key, model)| (model.clone(), key.clone()))
                .collect();
            incremental.models = models;
            incremental.interfaces = input.interfaces;
            incremental.skipped = input.skipped.into_iter().collect();
            incremental.stale = false;
        }
        let spent = before + start.elapsed();
        Ok((
            self.incremental.compiler.take_delta(),
            spent.as_secs_f64() * 1000.0,
        ))
    }

    /// The program as of the last [`compile`](PolicyState::compile).
    pub fn program(&self) -> &Program {
        self.incremental.compiler.program()
    }

    /// Endpoint key to interface of the local endpoints, as of the last
    /// [`compile`](PolicyState::compile).
    pub fn interfaces(&self) -> &BTreeMap<String, String> {
        &self.incremental.interfaces
    }

    /// Resources left out as of the last [`compile`](PolicyState::compile) (key, reason).
    pub fn skipped(&self) -> Vec<(String, String)> {
        self.incremental
            .skipped
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The program for this node's workload endpoints and their interfaces.
    ///
    /// A resource the engine refuses (say, a rule with a `services` match) is left out and
    /// named in [`DesiredPolicy::skipped`]: one bad policy must not freeze every other update
    /// (new endpoints would stay unreachable). The rest is enforced as if it were not stored.
    pub fn desired(&self) -> Result<DesiredPolicy, felis_policy::Error> {
        let input = self.input()?;
        let local_endpoints = input.set.endpoints.iter().filter(|e| {
            e.namespace
                .as_ref()
                .is_some_and(|ns| input.local.contains(&format!("{ns}/{}", e.name)))
        });
        let program = input.set.compile_for_node(local_endpoints, &self.node);
        Ok(DesiredPolicy {
            program,
            interfaces: input.interfaces,
            skipped: input.skipped,
        })
    }

    /// Every resource into the engine's model (leaving out, and naming, those it refuses),
    /// with the local endpoints and their interfaces.
    fn input(&self) -> Result<Input, felis_policy::Error> {
        let mut resources: Vec<Resource> =
            self.resources.values().map(|(_, r)| r.clone()).collect();
        let mut skipped = Vec::new();
        let set = match PolicySet::from_resources(&resources) {
            Ok(set) => set,
            Err(whole) => {
                resources.clear();
                for (key, (_, resource)) in &self.resources {
                    match PolicySet::from_resources(std::slice::from_ref(resource)) {
                        Ok(_) => resources.push(resource.clone()),
                        Err(e) => skipped.push((key.clone(), error_chain(&e))),
                    }
                }
                if skipped.is_empty() {
                    return Err(whole);
                }
                PolicySet::from_resources(&resources)?
            }
        };
        let mut interfaces = BTreeMap::new();
        let mut local = BTreeSet::new();
        for resource in &resources {
            if let Resource::WorkloadEndpoint(wep) = resource
                && wep.spec.node == self.node
            {
                let key = format!(
                    "{}/{}",
                    resource.namespace().unwrap_or("default"),
                    wep.metadata.name
                );
                if !wep.spec.interface_name.is_empty() {
                    interfaces.insert(key.clone(), wep.spec.interface_name.clone());
                }
                local.insert(key);
            }
        }
        for hep in self.local_host_endpoints() {
            if hep.spec.interface_name.is_empty()
                && let Some(ifname) = hep
                    .spec
                    .expected_ips
                    .iter()
                    .find_map(|ip| self.host_addresses.get(ip))
            {
                interfaces.insert(hep.metadata.name.clone(), ifname.clone());
            }
        }
        Ok(Input {
            set,
            local,
            interfaces,
            skipped,
        })
    }
}

/// The engine's model of every resource, for this node.
struct Input {
    set: PolicySet,
    /// Keys of this node's workload endpoints.
    local: BTreeSet<String>,
    interfaces: BTreeMap<String, String>,
    skipped: Vec<(String, String)>,
}

impl Incremental {
    /// Takes a put of `resource` under `key`, or marks the compiler stale.
    fn put(&mut self, node: &str, key: &str, resource: &Resource) {
        if self.stale {
            return;
        }
        match resource {
            Resource::WorkloadEndpoint(wep) => {
                let Some(endpoint) = endpoint_from_resource(resource) else {
                    self.stale = true;
                    return;
                };
                let model = Model::Endpoint(endpoint_key_of(&endpoint));
                if !self.compiler.can_put_endpoint(&endpoint)
                    || self.models.get(key).is_some_and(|m| *m != model)
                {
                    self.stale = true;
                    return;
                }
                let Model::Endpoint(endpoint_key) = &model else {
                    return;
                };
                let local = wep.spec.node == node;
                if local && !wep.spec.interface_name.is_empty() {
                    self.interfaces
                        .insert(endpoint_key.clone(), wep.spec.interface_name.clone());
                } else {
                    self.interfaces.remove(endpoint_key);
                }
                self.compiler.put_endpoint(endpoint, local);
                self.owners.insert(model.clone(), key.to_string());
                self.models.insert(key.to_string(), model);
            }
            Resource::NetworkPolicy(_)
            | Resource::GlobalNetworkPolicy(_)
            | Resource::K8sNetworkPolicy(_) => match policy_from_resource(resource) {
                Ok(Some(policy)) => {
                    let model = Model::Policy(policy_key_of(&policy));
                    let taken = self.owners.get(&model).is_some_and(|owner| owner != key);
                    if taken || self.models.get(key).is_some_and(|m| *m != model) {
                        // Two resources as one policy: as from scratch, or not at all.
                        self.stale = true;
                        return;
                    }
                    self.skipped.remove(key);
                    self.compiler.put_policy(policy);
                    self.owners.insert(model.clone(), key.to_string());
                    self.models.insert(key.to_string(), model);
                }
                Ok(None) => self.stale = true,
                Err(e) => {
                    if let Some(model) = self.models.remove(key) {
                        self.owners.remove(&model);
                        if let Model::Policy(policy) = model {
                            self.compiler.delete_policy(&policy);
                        }
                    }
                    self.skipped.insert(key.to_string(), error_chain(&e));
                }
            },
            _ => self.stale = true,
        }
    }

    /// Takes a delete of `key`, or marks the compiler stale.
    fn delete(&mut self, key: &str) {
        if self.stale {
            return;
        }
        let model = self.models.remove(key);
        if let Some(model) = &model {
            self.owners.remove(model);
        }
        match model {
            Some(Model::Endpoint(endpoint)) => {
                self.interfaces.remove(&endpoint);
                self.compiler.delete_endpoint(&endpoint);
            }
            Some(Model::Policy(policy)) => self.compiler.delete_policy(&policy),
            None => {
                if self.skipped.remove(key).is_none() {
                    self.stale = true;
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn same_keys_and_values(
    a: &BTreeMap<String, (Vec<u8>, Resource)>,
    b: &BTreeMap<String, (Vec<u8>, Resource)>,
) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, (va, _)), (kb, (vb, _)))| ka == kb && va == vb)
}

fn decode(key: &str, value: &[u8]) -> Result<Resource, Undecodable> {
    let bad = |reason: String| Undecodable {
        key: key.to_string(),
        reason,
    };
    let json: serde_json::Value = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
    Resource::from_value(json).map_err(|e| bad(e.to_string()))
}

/// Why applying policy failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The resources could not be compiled (the dataplane keeps its last program).
    #[error("compiling policy")]
    Compile(#[source] felis_policy::Error),
    /// nftables refused the ruleset (the next pass resyncs).
    #[error("programming nftables")]
    Nft(#[source] felis_nft::Error),
}

/// Periodic resyncs closer than this to the last full one are skipped.
pub const MIN_RESYNC_GAP: std::time::Duration = std::time::Duration::from_secs(5);

/// The outcome of one [`PolicyPlane::apply`] that did something.
#[derive(Debug, Clone)]
pub struct Applied {
    /// What was sent.
    pub stats: ApplyStats,
    /// Local endpoints programmed.
    pub endpoints: usize,
    /// Policies in the program.
    pub policies: usize,
    /// Compile time (the incremental compiler's, or a rebuild's), milliseconds.
    pub compile_ms: f64,
    /// Transaction time (netlink batch, or `nft` for structural changes and resyncs),
    /// milliseconds.
    pub apply_ms: f64,
    /// Resources left out (key, reason); see [`PolicyState::desired`].
    pub skipped: Vec<(String, String)>,
}

/// The policy state and its nftables dataplane, with the bookkeeping of when to apply.
#[derive(Debug)]
pub struct PolicyPlane {
    /// The resources.
    pub state: PolicyState,
    dataplane: PolicyDataplane,
    /// Something changed since the last successful apply.
    dirty: bool,
    /// The next apply must be a full resync.
    resync: bool,
    /// When the last full resync succeeded: a periodic resync asked for right after one (the
    /// resync timer's first tick at start-up) is skipped.
    last_full: Option<Instant>,
    /// A program has been applied since the first snapshot.
    applied_once: bool,
}

impl PolicyPlane {
    /// A plane for node `node`.
    pub fn new(node: impl Into<String>) -> PolicyPlane {
        PolicyPlane {
            state: PolicyState::new(node),
            // Deltas of elements and endpoint chains go as one netlink batch (sub-millisecond);
            // other deltas through a long-lived `nft -i`; resyncs as one `nft -f` transaction.
            dataplane: PolicyDataplane::with_config(
                felis_nft::Config::default(),
                Transport::Netlink,
            )
            .with_stable_set_ids(),
            dirty: true,
            resync: true,
            last_full: None,
            applied_once: false,
        }
    }

    /// Marks the state changed.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Asks for a full resync on the next apply (the periodic resync); none is done when one
    /// succeeded less than [`MIN_RESYNC_GAP`] ago.
    pub fn invalidate(&mut self) {
        if self
            .last_full
            .is_none_or(|at| at.elapsed() >= MIN_RESYNC_GAP)
        {
            self.resync = true;
        }
    }

    /// Whether a workload interface of the program did not exist when its device group was
    /// set (see [`retry_missing_links`](PolicyPlane::retry_missing_links)).
    pub fn has_missing_links(&self) -> bool {
        self.dataplane.has_missing_links()
    }

    /// Sets the device groups of interfaces that did not exist when theirs were set (they
    /// appear at the kernel's pace, not with a datastore event); returns how many now have
    /// theirs. On failure the next apply resyncs.
    pub fn retry_missing_links(&mut self) -> Result<usize, PolicyError> {
        self.dataplane.retry_missing_links().map_err(|e| {
            self.resync = true;
            PolicyError::Nft(e)
        })
    }

    /// Whether policy has been programmed from a datastore snapshot at least once.
    pub fn ready(&self) -> bool {
        self.applied_once
    }

    /// Compiles and applies when something changed (or a resync is due); `Ok(None)` when there
    /// was nothing to do. Blocking: it talks to the kernel (netlink) or runs `nft`.
    pub fn apply(&mut self) -> Result<Option<Applied>, PolicyError> {
        if !self.state.synced() || !(self.dirty || self.resync) {
            return Ok(None);
        }
        let (delta, compile_ms) = self.state.compile().map_err(|e| {
            // Nothing to retry until the resources change.
            self.dirty = false;
            PolicyError::Compile(e)
        })?;
        let compiled = Instant::now();
        let (program, interfaces) = (self.state.program(), self.state.interfaces());
        let result = if self.resync {
            self.dataplane.resync(program, interfaces)
        } else {
            self.dataplane.apply_delta(program, &delta, interfaces)
        };
        let stats = result.map_err(|e| {
            self.resync = true;
            PolicyError::Nft(e)
        })?;
        let done = Instant::now();
        if self.resync {
            self.last_full = Some(done);
        }
        self.dirty = false;
        self.resync = false;
        self.applied_once = true;
        Ok(Some(Applied {
            stats,
            endpoints: self.state.interfaces().len(),
            policies: self.state.program().policies.len(),
            compile_ms,
            apply_ms: (done - compiled).as_secs_f64() * 1000.0,
            skipped: self.state.skipped(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use felis_api::key_for;
    use felis_policy::Packet;
    use felis_policy::Verdict;

    fn wep(node: &str, name: &str, ip: &str, iface: &str, labels: &str) -> (String, Vec<u8>) {
        let wep_name = format!("{node}-k8s-{name}-eth0");
        let value = format!(
            r#"{{"apiVersion":"projectcalico.org/v3","kind":"WorkloadEndpoint",
            "metadata":{{"name":"{wep_name}","namespace":"default","labels":{{{labels}}}}},
            "spec":{{"node":"{node}","interfaceName":"{iface}","ipNetworks":["{ip}/32"],
            "endpoint":"eth0","orchestrator":"k8s","pod":"{name}","profiles":["kns.default"]}}}}"#
        );
        (
            key_for(Kind::WorkloadEndpoint, Some("default"), &wep_name),
            value.into_bytes(),
        )
    }

    fn deny_db_allow_web() -> (String, Vec<u8>) {
        let value = br#"{"apiVersion":"projectcalico.org/v3","kind":"NetworkPolicy",
            "metadata":{"name":"db","namespace":"default"},
            "spec":{"selector":"role == 'db'","types":["Ingress"],
                    "ingress":[{"action":"Allow","source":{"selector":"role == 'web'"}}]}}"#;
        (
            key_for(Kind::NetworkPolicy, Some("default"), "db"),
            value.to_vec(),
        )
    }

    fn cluster() -> Vec<(String, Vec<u8>)> {
        vec![
            wep("a", "web", "10.0.0.1", "caliweb", r#""role":"web""#),
            wep("a", "db", "10.0.0.2", "calidb", r#""role":"db""#),
            wep("b", "other", "10.0.1.1", "caliother", ""),
            (
                "/calico/resources/v3/projectcalico.org/nodes/a".to_string(),
                br#"{"apiVersion":"projectcalico.org/v3","kind":"Node","metadata":{"name":"a"},"spec":{}}"#.to_vec(),
            ),
        ]
    }

    fn state(items: &[(String, Vec<u8>)]) -> PolicyState {
        let mut s = PolicyState::new("a");
        let (changed, errors) = s.snapshot(items.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        assert!(changed);
        assert!(errors.is_empty(), "{errors:?}");
        s
    }

    fn icmp(from: &str, to: &str) -> Packet {
        Packet::icmp(from.parse().unwrap(), to.parse().unwrap(), 8, 0)
    }

    #[test]
    fn a_host_endpoint_with_only_expected_ips_applies_to_the_interface_holding_one() {
        let hep = (
            key_for(Kind::HostEndpoint, None, "a-eth0"),
            br#"{"apiVersion":"projectcalico.org/v3","kind":"HostEndpoint",
                "metadata":{"name":"a-eth0","labels":{"role":"node"}},
                "spec":{"node":"a","expectedIPs":["192.0.2.10"]}}"#
                .to_vec(),
        );
        let mut items = cluster();
        items.push(hep);
        let mut s = state(&items);
        assert!(s.wants_host_addresses());
        s.compile().unwrap();
        assert!(!s.interfaces().contains_key("a-eth0"));
        // Addresses that are not its own change nothing.
        let other: BTreeMap<IpAddr, String> =
            [("192.0.2.99".parse().unwrap(), "eth1".to_string())].into();
        assert!(!s.set_host_addresses(other.clone()));
        let mut mine = other;
        mine.insert("192.0.2.10".parse().unwrap(), "eth0".to_string());
        assert!(s.set_host_addresses(mine.clone()));
        s.compile().unwrap();
        assert_eq!(
            s.interfaces().get("a-eth0").map(String::as_str),
            Some("eth0")
        );
        assert_eq!(s.desired().unwrap().interfaces, s.interfaces().clone());
        assert!(!s.set_host_addresses(mine));
    }

    #[test]
    fn keeps_only_policy_kinds_and_compiles_local_endpoints() {
        let s = state(&cluster());
        assert_eq!(s.len(), 3, "the node is not policy-relevant");
        let desired = s.desired().unwrap();
        assert_eq!(
            desired.interfaces,
            BTreeMap::from([
                ("default/a-k8s-db-eth0".to_string(), "calidb".to_string()),
                ("default/a-k8s-web-eth0".to_string(), "caliweb".to_string()),
            ])
        );
        let keys: Vec<&String> = desired.program.endpoints.keys().collect();
        assert_eq!(keys, ["default/a-k8s-db-eth0", "default/a-k8s-web-eth0"]);
        assert!(desired.program.policies.is_empty());
        // No policy: the namespace profile allows.
        let trace = desired.program.verdict(
            &icmp("10.0.1.1", "10.0.0.2"),
            None,
            Some("default/a-k8s-db-eth0"),
        );
        assert_eq!(trace.verdict, Verdict::Allow);
    }

    #[test]
    fn a_policy_put_and_delete_change_the_program() {
        let mut s = state(&cluster());
        let (key, value) = deny_db_allow_web();
        assert!(s.put(&key, &value).unwrap());
        assert!(!s.put(&key, &value).unwrap(), "a replay is no change");
        let desired = s.desired().unwrap();
        assert_eq!(desired.program.policies.len(), 1);
        let db = Some("default/a-k8s-db-eth0");
        let p = &desired.program;
        assert_eq!(
            p.verdict(&icmp("10.0.1.1", "10.0.0.2"), None, db).verdict,
            Verdict::Deny
        );
        assert_eq!(
            p.verdict(
                &icmp("10.0.0.1", "10.0.0.2"),
                Some("default/a-k8s-web-eth0"),
                db
            )
            .verdict,
            Verdict::Allow
        );
        assert!(s.delete(&key));
        assert!(!s.delete(&key));
        assert!(s.desired().unwrap().program.policies.is_empty());
    }

    #[test]
    fn snapshots_report_change_only_when_something_differs() {
        let items = cluster();
        let mut s = state(&items);
        let again = s.snapshot(items.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        assert!(!again.0);
        let mut more = items.clone();
        more.push(deny_db_allow_web());
        let next = s.snapshot(more.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        assert!(next.0);
    }

    #[test]
    fn undecodable_values_are_reported_and_skipped() {
        let mut s = state(&cluster());
        let key = key_for(Kind::NetworkPolicy, Some("default"), "bad");
        assert!(s.put(&key, b"not json").is_err());
        assert_eq!(s.len(), 3);
        assert!(!is_policy_key("/calico/ipam/v2/assignment/ipv4/block/x"));
        assert!(is_policy_key(&key_for(Kind::Namespace, None, "ns")));
        assert!(is_policy_key(&key_for(
            Kind::K8sNetworkPolicy,
            Some("ns"),
            "k"
        )));
    }

    #[test]
    fn an_endpoint_rescheduled_elsewhere_leaves_this_node() {
        let mut s = state(&cluster());
        // The db pod is rescheduled: a's endpoint goes, b gets one (names carry the node).
        let (key, value) = wep("b", "db", "10.0.1.2", "calidb2", r#""role":"db""#);
        assert!(s.put(&key, &value).unwrap());
        let (db_key, _) = wep("a", "db", "10.0.0.2", "calidb", "");
        assert!(s.delete(&db_key));
        let desired = s.desired().unwrap();
        assert_eq!(
            desired.interfaces.keys().collect::<Vec<_>>(),
            ["default/a-k8s-web-eth0"]
        );
    }

    #[test]
    fn a_refused_policy_is_skipped_and_the_rest_still_compiles() {
        let mut s = state(&cluster());
        let (key, value) = deny_db_allow_web();
        assert!(s.put(&key, &value).unwrap());
        let bad_key = key_for(Kind::GlobalNetworkPolicy, None, "svc");
        let bad = br#"{"apiVersion":"projectcalico.org/v3","kind":"GlobalNetworkPolicy",
            "metadata":{"name":"svc"},
            "spec":{"selector":"all()","types":["Egress"],
                    "egress":[{"action":"Deny","destination":{"services":{"name":"kubernetes","namespace":"default"}}}]}}"#;
        assert!(s.put(&bad_key, bad).unwrap());
        let desired = s.desired().unwrap();
        assert_eq!(desired.skipped.len(), 1, "{:?}", desired.skipped);
        assert_eq!(desired.skipped[0].0, bad_key);
        assert_eq!(desired.program.policies.len(), 1, "the good policy stays");
        assert_eq!(
            desired.interfaces.len(),
            2,
            "endpoints are still programmed"
        );
    }

    #[test]
    fn the_plane_waits_for_a_snapshot() {
        let mut plane = PolicyPlane::new("a");
        // No snapshot: nothing is programmed (no nft is run).
        assert!(plane.apply().unwrap().is_none());
        assert!(!plane.ready());
    }

    /// `nft list table inet felis` in `ns`, with chains, sets and elements sorted.
    fn listing(ns: &felis_testns::TestNetns) -> Vec<String> {
        let text = ns.exec("nft", &["list", "table", "inet", "felis"]);
        let mut blocks: Vec<String> = text
            .split("\n\n")
            .map(|block| {
                let lines: Vec<String> = block
                    .replace(",\n", ", ")
                    .lines()
                    .map(|l| {
                        let l = l.trim();
                        match l.strip_prefix("elements = { ") {
                            Some(items) => {
                                let mut items: Vec<&str> =
                                    items.trim_end_matches(" }").split(", ").collect();
                                items.sort();
                                format!("elements {}", items.join(","))
                            }
                            None => l.to_string(),
                        }
                    })
                    .filter(|l| !l.is_empty() && l != "}" && !l.starts_with("table "))
                    .collect();
                lines.join("\n")
            })
            .collect();
        blocks.sort();
        blocks
    }

    #[test]
    fn events_reach_the_kernel_by_netlink_and_leave_what_a_resync_installs() {
        if felis_testns::skip_unless_root("events_reach_the_kernel_by_netlink") {
            return;
        }
        let ns = felis_testns::TestNetns::new().unwrap();
        let mut plane = PolicyPlane::new("a");
        let items = cluster();
        plane
            .state
            .snapshot(items.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        let first = ns.run(|| plane.apply()).unwrap().unwrap();
        assert!(first.stats.full);
        let (policy_key, policy_value) = deny_db_allow_web();
        let changed_policy = br#"{"apiVersion":"projectcalico.org/v3","kind":"NetworkPolicy",
            "metadata":{"name":"db","namespace":"default"},
            "spec":{"selector":"role == 'db'","types":["Ingress"],
                    "ingress":[{"action":"Allow","protocol":"TCP","destination":{"ports":[5432]},
                                "source":{"selector":"role == 'web'"}}]}}"#;
        let events: Vec<(String, Option<Vec<u8>>)> = vec![
            (policy_key.clone(), Some(policy_value)),
            {
                let (k, v) = wep("a", "cache", "10.0.0.3", "calicache", r#""role":"web""#);
                (k, Some(v))
            },
            {
                let (k, v) = wep("a", "web", "10.0.0.1", "caliweb", r#""role":"db""#);
                (k, Some(v))
            },
            (policy_key.clone(), Some(changed_policy.to_vec())),
            (wep("a", "cache", "", "", "").0, None),
            (policy_key, None),
        ];
        for (key, value) in events {
            let changed = match &value {
                Some(v) => plane.state.put(&key, v).unwrap(),
                None => plane.state.delete(&key),
            };
            assert!(changed, "{key}");
            plane.mark_dirty();
            let applied = ns.run(|| plane.apply()).unwrap().unwrap();
            assert!(
                applied.stats.netlink && !applied.stats.full,
                "{key}: {:?}",
                applied.stats
            );
        }
        let before = listing(&ns);
        assert!(before.iter().any(|b| b.contains("cali")), "{before:?}");
        plane.resync = true;
        let resynced = ns.run(|| plane.apply()).unwrap().unwrap();
        assert!(resynced.stats.full);
        assert_eq!(listing(&ns), before);
    }

    mod order {
        use proptest::prelude::*;

        use super::*;

        /// Puts and deletes of a small universe of resources, in any order, with replays.
        #[derive(Debug, Clone)]
        enum Op {
            Put(usize),
            Delete(usize),
        }

        fn universe() -> Vec<(String, Vec<u8>)> {
            let mut items = cluster();
            items.push(deny_db_allow_web());
            items.push(wep(
                "a",
                "cache",
                "10.0.0.3",
                "calicache",
                r#""role":"web""#,
            ));
            // The same keys again, changed: a relabelled pod, a moved pod, another rule.
            items.push(wep("a", "web", "10.0.0.1", "caliweb", r#""role":"db""#));
            items.push(wep(
                "a",
                "other",
                "10.0.1.1",
                "caliother",
                r#""role":"web""#,
            ));
            let (key, _) = deny_db_allow_web();
            items.push((
                key,
                br#"{"apiVersion":"projectcalico.org/v3","kind":"NetworkPolicy",
                "metadata":{"name":"db","namespace":"default"},
                "spec":{"selector":"role == 'db'","types":["Ingress","Egress"],
                        "ingress":[{"action":"Allow","protocol":"TCP","destination":{"ports":[5432]},
                                    "source":{"selector":"role == 'web'"}}],
                        "egress":[{"action":"Deny","destination":{"notSelector":"role == 'web'"}}]}}"#
                    .to_vec(),
            ));
            // One the engine refuses, and one that rebuilds (a namespace with labels).
            items.push((
                key_for(Kind::GlobalNetworkPolicy, None, "svc"),
                br#"{"apiVersion":"projectcalico.org/v3","kind":"GlobalNetworkPolicy",
                "metadata":{"name":"svc"},
                "spec":{"selector":"all()","types":["Egress"],
                        "egress":[{"action":"Deny","destination":{"services":{"name":"k","namespace":"default"}}}]}}"#
                    .to_vec(),
            ));
            items.push((
                key_for(Kind::Namespace, None, "default"),
                br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"default","labels":{"env":"x"}}}"#
                    .to_vec(),
            ));
            items
        }

        proptest! {
            #[test]
            fn events_in_any_order_give_what_a_snapshot_of_the_result_gives(
                ops in proptest::collection::vec(
                    prop_oneof![(0usize..11).prop_map(Op::Put), (0usize..11).prop_map(Op::Delete)],
                    0..30,
                ),
                compile_every in 1usize..4,
            ) {
                let all = universe();
                let mut incremental = PolicyState::new("a");
                incremental.snapshot(std::iter::empty());
                let mut present = BTreeMap::new();
                for (n, op) in ops.iter().enumerate() {
                    match op {
                        Op::Put(i) => {
                            let (k, v) = &all[*i];
                            incremental.put(k, v).unwrap();
                            present.insert(k.clone(), v.clone());
                        }
                        Op::Delete(i) => {
                            let (k, _) = &all[*i];
                            incremental.delete(k);
                            present.remove(k);
                        }
                    }
                    if n % compile_every == 0 {
                        incremental.compile().unwrap();
                    }
                }
                let mut fresh = PolicyState::new("a");
                fresh.snapshot(present.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
                let expected = fresh.desired().unwrap();
                prop_assert_eq!(incremental.desired().unwrap(), expected.clone());
                // The incrementally compiled program is the same, but for set numbering.
                incremental.compile().unwrap();
                prop_assert_eq!(incremental.program().canonical(), expected.program.canonical());
                prop_assert_eq!(incremental.interfaces(), &expected.interfaces);
                prop_assert_eq!(incremental.skipped(), expected.skipped);
                // And a snapshot of the same content is no change.
                let (changed, _) = incremental
                    .snapshot(present.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
                prop_assert!(!changed);
            }
        }
    }
}
