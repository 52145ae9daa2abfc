//! A [`ProgramDelta`] straight to netlink operations, without rendering or diffing the whole
//! ruleset: the hot path of one endpoint change.
//!
//! [`plan`] looks only at what the delta names: the set members that came and went (as elements
//! of their component sets, which are created when they get their first element and deleted
//! when they lose their last), the policy and profile chains compiled again (and those that
//! refer to a set that appeared or went: their rules render differently), and the endpoints put
//! or deleted (their chains, rendered again, shared with other endpoints when the rules are
//! equal; their device groups). A delta that needs more (an interval set changed, a rule shape
//! the encoder does not know, the host side, a chain-name collision) gives `None`: the caller
//! renders the whole program and diffs it ([`crate::PolicyDataplane::apply`]).
//!
//! [`Plan::apply_to`] then brings the in-memory [`Ruleset`] and [`RenderCache`] to what the
//! kernel holds after the batch, exactly what a full rendering of the new program would give.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;

use felis_policy::ProgramDelta;
use felis_policy::program::CompiledRule;
use felis_policy::program::IpSetId;
use felis_policy::program::Program;
use felis_policy::program::set_references;

use crate::fast::pair_elements;
use crate::netlink::Element;
use crate::netlink::EndpointRule;
use crate::netlink::Op;
use crate::netlink::PolicyRule;
use crate::render::ApplyStats;
use crate::render::CachedEndpoint;
use crate::render::NftSet;
use crate::render::RenderCache;
use crate::render::Ruleset;
use crate::render::SetKind;
use crate::render::ip_element;
use crate::render::ip_set_name;
use crate::render::named_port_element;
use crate::render::named_port_set_name;
use crate::render::pair_group;
use crate::render::policy_chains;
use crate::render::profile_chains;

/// Interface names whose verdict-map entries go, and entries set.
type MapChanges = (Vec<String>, Vec<(String, String)>);

/// The netlink operations of one delta, and the bookkeeping that follows their commit.
#[derive(Debug)]
pub(crate) struct Plan {
    /// What to send, in order, before the interfaces' device groups change.
    pub(crate) ops: Vec<Op>,
    /// What to send after: gone pairs, then removed chains and sets.
    pub(crate) cleanup: Vec<Op>,
    /// Interfaces whose device group changes (0: no endpoint any more).
    pub(crate) links: Vec<(String, u32)>,
    /// What it changes.
    pub(crate) stats: ApplyStats,
    /// Set name, elements added, elements removed.
    elements: Vec<(String, Vec<String>, Vec<String>)>,
    /// Sets created.
    created_sets: Vec<(String, SetKind)>,
    /// Sets deleted (emptied).
    removed_sets: Vec<String>,
    /// Endpoint key and its new rendering (`None`: no longer rendered).
    endpoints: Vec<(String, Option<CachedEndpoint>)>,
    new_chains: Vec<(String, Arc<[String]>)>,
    removed_chains: Vec<String>,
    /// Per direction (ingress, egress): interface names to remove, entries to set.
    maps: [MapChanges; 2],
    /// Pairs new to the maps, and groups whose pair goes.
    new_pairs: Vec<(u32, (String, String))>,
    removed_pairs: Vec<u32>,
}

/// The operations that apply `delta` (which led to `program`) to `installed`; `None` when the
/// delta needs a full rendering (see the module documentation).
pub(crate) fn plan(
    installed: &Ruleset,
    cache: &RenderCache,
    program: &Program,
    delta: &ProgramDelta,
    interfaces: &BTreeMap<String, String>,
) -> Option<Plan> {
    if delta.full || delta.host {
        return None;
    }
    let mut plan = Plan {
        ops: Vec::new(),
        cleanup: Vec::new(),
        links: Vec::new(),
        new_pairs: Vec::new(),
        removed_pairs: Vec::new(),
        stats: ApplyStats::default(),
        elements: Vec::new(),
        created_sets: Vec::new(),
        removed_sets: Vec::new(),
        endpoints: Vec::new(),
        new_chains: Vec::new(),
        removed_chains: Vec::new(),
        maps: Default::default(),
    };
    let moved = plan_elements(&mut plan, installed, program, delta)?;
    let created: BTreeSet<String> = plan.created_sets.iter().map(|(n, _)| n.clone()).collect();
    let removed: BTreeSet<String> = plan.removed_sets.iter().cloned().collect();
    let present = |name: &str| {
        created.contains(name) || (installed.sets.contains_key(name) && !removed.contains(name))
    };
    let gone = plan_chains(&mut plan, installed, program, delta, &moved, &present)?;
    plan_endpoints(&mut plan, installed, cache, program, delta, interfaces)?;
    // Removed endpoint chains, and policy and profile chains that left the program, go last,
    // once nothing jumps to them: everything removed is flushed before anything is deleted.
    plan.stats.chains_removed += gone.len();
    plan.removed_chains.extend(gone);
    let removed = &plan.removed_chains;
    plan.cleanup
        .extend(removed.iter().map(|c| Op::FlushChain(c.clone())));
    plan.cleanup
        .extend(removed.iter().map(|c| Op::DeleteChain(c.clone())));
    // Emptied sets, once no rule refers to them.
    plan.cleanup
        .extend(plan.removed_sets.iter().map(|s| Op::DeleteSet(s.clone())));
    Some(plan)
}

/// Set members as element changes of the component sets that hold them (sets created first,
/// emptied ones left for [`plan`] to delete); returns the program sets whose components came
/// or went (the rules that refer to them render differently).
fn plan_elements(
    plan: &mut Plan,
    installed: &Ruleset,
    program: &Program,
    delta: &ProgramDelta,
) -> Option<BTreeSet<IpSetId>> {
    // Component set name to (program set, kind, added, removed).
    let mut components: BTreeMap<String, (IpSetId, SetKind, BTreeSet<String>, BTreeSet<String>)> =
        BTreeMap::new();
    let mut note = |id: IpSetId, name: String, kind: SetKind, element: String, added: bool| {
        let entry = components
            .entry(name)
            .or_insert_with(|| (id, kind, BTreeSet::new(), BTreeSet::new()));
        if added {
            entry.2.insert(element);
        } else {
            entry.3.insert(element);
        }
    };
    for (id, change) in &delta.ip_sets {
        for (nets, added) in [(&change.added, true), (&change.removed, false)] {
            for net in nets {
                let (kind, element) = ip_element(net);
                note(*id, ip_set_name(*id, kind), kind, element, added);
            }
        }
    }
    for (id, change) in &delta.named_port_sets {
        let remaining: BTreeSet<String> = program
            .named_port_sets
            .get(id)
            .into_iter()
            .flatten()
            .map(|m| named_port_element(m).1)
            .collect();
        for member in &change.added {
            let (kind, element) = named_port_element(member);
            note(*id, named_port_set_name(*id, kind), kind, element, true);
        }
        for member in &change.removed {
            let (kind, element) = named_port_element(member);
            // Another member may render as the same element (same address, other prefix).
            if !remaining.contains(&element) {
                note(*id, named_port_set_name(*id, kind), kind, element, false);
            }
        }
    }
    let mut moved = BTreeSet::new();
    let mut creates = Vec::new();
    let mut changes = Vec::new();
    for (name, (id, kind, added, removed)) in components {
        if kind.is_interval() || added.intersection(&removed).next().is_some() {
            return None;
        }
        let (existing, added, removed): (usize, Vec<String>, Vec<String>) =
            match installed.sets.get(&name) {
                Some(set) if set.kind != kind => return None,
                Some(set) => (
                    set.elements.len(),
                    added
                        .into_iter()
                        .filter(|e| !set.elements.contains(e))
                        .collect(),
                    removed
                        .into_iter()
                        .filter(|e| set.elements.contains(e))
                        .collect(),
                ),
                None => (0, added.into_iter().collect(), Vec::new()),
            };
        if added.is_empty() && removed.is_empty() {
            continue;
        }
        plan.stats.elements_added += added.len();
        plan.stats.elements_removed += removed.len();
        if existing == 0 {
            // A new component set.
            moved.insert(id);
            let set_id = u32::try_from(creates.len() + 1).unwrap_or(u32::MAX);
            creates.push(Op::AddSet {
                set: name.clone(),
                kind,
                id: set_id,
            });
            plan.stats.sets_added += 1;
            plan.created_sets.push((name.clone(), kind));
        } else if existing + added.len() == removed.len() {
            // Emptied: the set goes (after the rules that refer to it).
            moved.insert(id);
            plan.stats.sets_removed += 1;
            plan.removed_sets.push(name);
            continue;
        }
        if !removed.is_empty() {
            let elements = removed
                .iter()
                .map(|e| Element::of_set(kind, e))
                .collect::<Option<Vec<_>>>()?;
            changes.push(Op::DeleteElements {
                set: name.clone(),
                elements,
            });
        }
        if !added.is_empty() {
            let elements = added
                .iter()
                .map(|e| Element::of_set(kind, e))
                .collect::<Option<Vec<_>>>()?;
            changes.push(Op::AddElements {
                set: name.clone(),
                elements,
            });
        }
        plan.elements.push((name, added, removed));
    }
    plan.ops.extend(creates);
    plan.ops.extend(changes);
    Some(moved)
}

/// Policy and profile chains of the delta, and those referring to sets in `moved`: created,
/// refilled (flushed, rules appended) or, the returned names, to remove.
fn plan_chains(
    plan: &mut Plan,
    installed: &Ruleset,
    program: &Program,
    delta: &ProgramDelta,
    moved: &BTreeSet<IpSetId>,
    present: &dyn Fn(&str) -> bool,
) -> Option<Vec<String>> {
    // A set that came into the program in this delta is referred to only by the policies and
    // profiles compiled again in it: the others need looking at only for sets that existed.
    let moved: BTreeSet<IpSetId> = moved.difference(&delta.created_sets).copied().collect();
    let refers = |rules: [&[CompiledRule]; 2]| {
        !moved.is_empty()
            && rules
                .iter()
                .any(|r| set_references(r).any(|id| moved.contains(&id)))
    };
    let mut policies: BTreeSet<&String> = delta.policies.iter().collect();
    policies.extend(
        program
            .policies
            .iter()
            .filter(|(_, p)| refers([&p.ingress, &p.egress]))
            .map(|(k, _)| k),
    );
    let mut profiles: BTreeSet<&String> = delta.profiles.iter().collect();
    profiles.extend(
        program
            .profiles
            .iter()
            .filter(|(_, p)| refers([&p.ingress, &p.egress]))
            .map(|(k, _)| k),
    );
    let mut wanted: Vec<(String, Option<Vec<String>>)> = Vec::new();
    for key in policies {
        match program.policies.get(key) {
            Some(policy) => wanted.extend(
                policy_chains(key, policy, present).map(|(name, rules)| (name, Some(rules))),
            ),
            None => wanted.extend(
                ["pi-", "po-"].map(|prefix| (crate::render::object_name(prefix, key), None)),
            ),
        }
    }
    for name in profiles {
        match program.profiles.get(name) {
            Some(profile) => wanted.extend(
                profile_chains(name, profile, present).map(|(chain, rules)| (chain, Some(rules))),
            ),
            None => wanted.extend(
                ["pri-", "pro-"].map(|prefix| (crate::render::object_name(prefix, name), None)),
            ),
        }
    }
    let mut gone = Vec::new();
    for (name, rules) in wanted {
        let existing = installed.chains.get(&name);
        let Some(rules) = rules else {
            if existing.is_some() {
                gone.push(name);
            }
            continue;
        };
        match existing {
            Some(old) if old.as_ref() == rules.as_slice() => continue,
            Some(_) => {
                plan.ops.push(Op::FlushChain(name.clone()));
                plan.stats.chains_replaced += 1;
            }
            None => {
                plan.ops.push(Op::AddChain(name.clone()));
                plan.stats.chains_added += 1;
            }
        }
        for rule in &rules {
            plan.ops.push(Op::AddPolicyRule {
                chain: name.clone(),
                rule: PolicyRule::parse(rule)?,
            });
        }
        plan.new_chains.push((name, rules.into()));
    }
    Some(gone)
}

/// Endpoint chains and verdict-map elements of the endpoints the delta names.
fn plan_endpoints(
    plan: &mut Plan,
    installed: &Ruleset,
    cache: &RenderCache,
    program: &Program,
    delta: &ProgramDelta,
    interfaces: &BTreeMap<String, String>,
) -> Option<()> {
    // Interface names whose entries may change, and their entries after the change.
    let mut touched: BTreeSet<String> = BTreeSet::new();
    let mut after: [BTreeMap<String, String>; 2] = Default::default();
    let maps = [&installed.to_workload, &installed.from_workload];
    let mut fresh_chains: BTreeMap<String, Arc<[String]>> = BTreeMap::new();
    for key in &delta.endpoints {
        let old = cache.endpoints.get(key);
        let new = match (program.endpoints.get(key), interfaces.get(key)) {
            (Some(endpoint), Some(ifname)) => {
                if old.is_some_and(|o| o.ifname == *ifname && o.is_current(endpoint, program)) {
                    continue;
                }
                Some(CachedEndpoint::render(ifname, endpoint, program))
            }
            _ => None,
        };
        if old.is_none() && new.is_none() {
            continue;
        }
        if let Some(old) = old {
            touched.insert(old.ifname.clone());
        }
        if let Some(new) = &new {
            touched.insert(new.ifname.clone());
            for (i, name) in new.names.iter().enumerate() {
                let rules = &new.rendered[i];
                let exists = match installed.chains.get(name).or(fresh_chains.get(name)) {
                    Some(existing) if existing == rules => true,
                    // A hash collision: the full rendering suffixes the name.
                    Some(_) => return None,
                    None => false,
                };
                if !exists {
                    fresh_chains.insert(name.clone(), rules.clone());
                }
                if after[i].insert(new.ifname.clone(), name.clone()).is_some() {
                    return None; // two endpoints on one interface
                }
            }
        }
        plan.endpoints.push((key.clone(), new));
    }
    // An interface of an endpoint that did not change stays as it is: no other endpoint may
    // take it here.
    let changed_ifnames: BTreeSet<&String> = plan
        .endpoints
        .iter()
        .filter_map(|(key, _)| cache.endpoints.get(key).map(|o| &o.ifname))
        .collect();
    for ifname in &touched {
        if !changed_ifnames.contains(ifname) && maps.iter().any(|m| m.contains_key(ifname)) {
            return None;
        }
    }
    // New chains first, then the pairs of new groups; the interfaces' groups change after the
    // batch; then gone pairs and the chains nothing jumps to any more (in `cleanup`).
    for (name, rules) in &fresh_chains {
        plan.ops.push(Op::AddChain(name.clone()));
        for rule in rules.iter() {
            plan.ops.push(Op::AddRule {
                chain: name.clone(),
                rule: EndpointRule::parse(rule)?,
            });
        }
        plan.stats.chains_added += 1;
    }
    plan.new_chains.extend(fresh_chains);
    for (i, map) in maps.iter().enumerate() {
        let mut stale = Vec::new();
        let mut fresh = Vec::new();
        for ifname in &touched {
            let before = map.get(ifname);
            let now = after[i].get(ifname);
            if before == now {
                continue;
            }
            if before.is_some() {
                stale.push(ifname.clone());
            }
            if let Some(chain) = now {
                fresh.push((ifname.clone(), chain.clone()));
            }
        }
        plan.maps[i] = (stale, fresh);
    }
    // Groups of the touched interfaces, new pairs given a group none has now.
    let mut candidates: BTreeSet<u32> = BTreeSet::new();
    for ifname in &touched {
        let before = installed.groups.get(ifname).copied();
        let now = match (after[1].get(ifname), after[0].get(ifname)) {
            (Some(egress), Some(ingress)) => {
                let pair = (egress.clone(), ingress.clone());
                let known = cache.groups.get(&pair).copied().or_else(|| {
                    plan.new_pairs
                        .iter()
                        .find(|(_, p)| *p == pair)
                        .map(|(g, _)| *g)
                });
                Some(match known {
                    Some(group) => group,
                    None => {
                        let group = pair_group(egress, ingress, &|g| {
                            installed.pairs.contains_key(&g)
                                || plan.new_pairs.iter().any(|(n, _)| *n == g)
                        });
                        plan.new_pairs.push((group, pair));
                        group
                    }
                })
            }
            _ => None,
        };
        if before == now {
            continue;
        }
        candidates.extend(before);
        plan.links.push((ifname.clone(), now.unwrap_or(0)));
    }
    plan.stats.links_changed = plan.links.len();
    // A pair goes when no interface has its group any more.
    let in_use = |group: u32| {
        plan.links.iter().any(|(_, g)| *g == group)
            || installed
                .groups
                .iter()
                .any(|(ifname, g)| *g == group && !plan.links.iter().any(|(i, _)| i == ifname))
    };
    let removed_pairs: Vec<u32> = candidates.into_iter().filter(|g| !in_use(*g)).collect();
    let (add_ops, remove_ops) = pair_elements(&plan.new_pairs, &removed_pairs);
    plan.stats.map_changes += 2 * (plan.new_pairs.len() + removed_pairs.len());
    plan.ops.extend(add_ops);
    plan.cleanup.extend(remove_ops);
    // A chain of a gone pair is removed unless a remaining pair still goes to it.
    let remaining = |chain: &String| {
        installed
            .pairs
            .iter()
            .filter(|(g, _)| !removed_pairs.contains(g))
            .chain(plan.new_pairs.iter().map(|(g, p)| (g, p)))
            .any(|(_, (e, i))| e == chain || i == chain)
    };
    let mut removed: Vec<String> = removed_pairs
        .iter()
        .filter_map(|g| installed.pairs.get(g))
        .flat_map(|(e, i)| [e.clone(), i.clone()])
        .filter(|c| installed.chains.contains_key(c) && !remaining(c))
        .collect();
    removed.sort();
    removed.dedup();
    plan.stats.chains_removed += removed.len();
    plan.removed_chains = removed;
    plan.removed_pairs = removed_pairs;
    Some(())
}

impl Plan {
    /// Records in `installed` and `cache` what the kernel holds once the plan's batch has
    /// been committed.
    pub(crate) fn apply_to(self, installed: &mut Ruleset, cache: &mut RenderCache) {
        for (name, kind) in self.created_sets {
            installed.sets.insert(
                name,
                NftSet {
                    kind,
                    elements: BTreeSet::new(),
                },
            );
        }
        for name in self.removed_sets {
            installed.sets.remove(&name);
        }
        for (name, added, removed) in self.elements {
            if let Some(set) = installed.sets.get_mut(&name) {
                for e in &removed {
                    set.elements.remove(e);
                }
                set.elements.extend(added);
            }
        }
        for (name, rules) in self.new_chains {
            installed.chains.insert(name, rules);
        }
        for group in self.removed_pairs {
            if let Some(pair) = installed.pairs.remove(&group) {
                cache.groups.remove(&pair);
            }
        }
        for (group, pair) in self.new_pairs {
            cache.groups.insert(pair.clone(), group);
            installed.pairs.insert(group, pair);
        }
        for (ifname, group) in self.links {
            if group == 0 {
                installed.groups.remove(&ifname);
            } else {
                installed.groups.insert(ifname, group);
            }
        }
        let [(to_stale, to_fresh), (from_stale, from_fresh)] = self.maps;
        for (map, stale, fresh) in [
            (&mut installed.to_workload, to_stale, to_fresh),
            (&mut installed.from_workload, from_stale, from_fresh),
        ] {
            for ifname in stale {
                map.remove(&ifname);
            }
            map.extend(fresh);
        }
        for name in self.removed_chains {
            installed.chains.remove(&name);
        }
        for (key, rendering) in self.endpoints {
            match rendering {
                Some(rendering) => cache.endpoints.insert(key, rendering),
                None => cache.endpoints.remove(&key),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use felis_policy::Endpoint;
    use felis_policy::IncrementalCompiler;
    use felis_policy::NamedPort;
    use felis_policy::Namespace;
    use felis_policy::Policy;
    use felis_policy::PolicySet;
    use felis_policy::Profile;
    use felis_policy::Protocol;

    use super::*;
    use crate::render::Config;
    use crate::render::render_cached;

    const APPS: [&str; 4] = ["web", "db", "cache", "other"];

    fn pod(i: usize, app: usize, address: usize, named: bool) -> Endpoint {
        let ns = format!("ns{}", i % 2);
        Endpoint {
            name: format!("pod{i}"),
            namespace: Some(ns.clone()),
            labels: [("app".to_string(), APPS[app].to_string())].into(),
            ips: vec![format!("10.0.0.{address}/32").parse().unwrap()],
            profiles: vec![format!("kns.{ns}")],
            ports: if named {
                vec![NamedPort {
                    name: "http".to_string(),
                    protocol: Protocol::TCP,
                    port: 8080,
                }]
            } else {
                Vec::new()
            },
            orchestrator: Some("k8s".to_string()),
            ..Endpoint::default()
        }
    }

    fn policy(value: serde_json::Value) -> Policy {
        serde_json::from_value(value).unwrap()
    }

    /// Policy `i % 3` of a small pool, in variant `v`: ports, actions, rules and selections
    /// that change.
    fn policy_variant(i: usize, v: usize) -> Policy {
        let name = ["db", "web", "extra"][i % 3];
        let port = 8000 + v as u16;
        match name {
            "db" => policy(serde_json::json!({
                "name": "db", "namespace": "ns0", "selector": if v == 3 { "app == 'web'" } else { "app == 'db'" },
                "ingress": [{"action": if v.is_multiple_of(2) { "Allow" } else { "Deny" }, "protocol": "TCP",
                             "source": {"selector": "app == 'web'"}, "destination": {"ports": [port]}},
                            {"action": "Deny", "source": {"notSelector": "app == 'cache'"}}]
            })),
            "web" => policy(serde_json::json!({
                "name": "web", "selector": "app == 'web'",
                "egress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http", port]}},
                           {"action": "Log", "protocol": "ICMP", "icmp": {"type": 8}}]
            })),
            _ => policy(serde_json::json!({
                "name": "extra", "namespace": "ns1", "order": v,
                "ingress": [{"action": "Allow", "protocol": "UDP", "source": {"selector": "app == 'cache'"},
                             "destination": {"ports": [format!("{port}:{}", port + 10)]}}]
            })),
        }
    }

    fn policy_key(i: usize) -> String {
        ["ns0/db", "web", "ns1/extra"][i % 3].to_string()
    }

    fn base() -> PolicySet {
        let mut set = PolicySet::new();
        for ns in ["ns0", "ns1"] {
            set.add_namespace(Namespace {
                name: ns.to_string(),
                labels: Default::default(),
            });
            set.add_profile(Profile::allow_all(format!("kns.{ns}")));
        }
        set.add_policy(policy(serde_json::json!({
            "name": "db", "namespace": "ns0", "selector": "app == 'db'",
            "ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}},
                        {"action": "Deny", "source": {"notSelector": "app == 'cache'"}}]
        })));
        set.add_policy(policy(serde_json::json!({
            "name": "web", "selector": "app == 'web'",
            "egress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}}]
        })));
        set.add_policy(policy(serde_json::json!({
            "name": "all", "selector": "all()", "order": 1,
            "ingress": [{"action": "Pass", "source": {"selector": "has(app)"}}]
        })));
        for i in 0..6 {
            set.add_endpoint(pod(i, i % 4, i + 1, i % 3 == 0));
        }
        set
    }

    fn interfaces() -> BTreeMap<String, String> {
        (0..8)
            .map(|i| (format!("ns{}/pod{i}", i % 2), format!("cali{i}")))
            .collect()
    }

    fn fresh(program: &Program) -> Ruleset {
        let mut cache = RenderCache::stable();
        render_cached(program, &interfaces(), &Config::default(), &mut cache)
    }

    proptest! {
        #[test]
        fn planned_deltas_keep_the_ruleset_a_full_rendering_would_give(
            ops in prop::collection::vec((0usize..8, 0usize..4, 1usize..9, any::<bool>(), 0usize..7), 1..30)
        ) {
            let set = base();
            let local: BTreeSet<String> = set
                .endpoints
                .iter()
                .map(|e| format!("{}/{}", e.namespace.as_deref().unwrap_or(""), e.name))
                .collect();
            let mut compiler = IncrementalCompiler::new("n");
            compiler.rebuild(set, local);
            compiler.take_delta();
            let mut cache = RenderCache::stable();
            let config = Config::default();
            let mut installed = render_cached(compiler.program(), &interfaces(), &config, &mut cache);
            let mut planned = 0;
            for (i, app, address, named, what) in ops {
                let key = format!("ns{}/pod{i}", i % 2);
                match what {
                    4 | 5 => compiler.put_policy(policy_variant(i, app)),
                    6 => compiler.delete_policy(&policy_key(i)),
                    0 => compiler.delete_endpoint(&key),
                    // Off the node: only set members change.
                    1 => compiler.put_endpoint(pod(i, app, address, named), false),
                    _ => compiler.put_endpoint(pod(i, app, address, named), true),
                }
                let delta = compiler.take_delta();
                let program = compiler.program();
                match plan(&installed, &cache, program, &delta, &interfaces()) {
                    Some(plan) => {
                        planned += 1;
                        // Every op encodes.
                        let _ = crate::netlink::Batch::encode(&plan.ops, 1);
                        plan.apply_to(&mut installed, &mut cache);
                    }
                    None => {
                        installed = render_cached(program, &interfaces(), &config, &mut cache);
                    }
                }
                prop_assert_eq!(&installed, &fresh(program));
            }
            let _ = planned;
            // The kernel would have what the plans sent: checked in tests/netns.rs.
        }
    }

    #[test]
    fn a_new_pod_like_others_is_set_elements_and_a_device_group() {
        let set = base();
        let local: BTreeSet<String> = ["ns0/pod0".to_string(), "ns1/pod1".to_string()].into();
        let mut compiler = IncrementalCompiler::new("n");
        compiler.rebuild(set, local);
        compiler.take_delta();
        let mut cache = RenderCache::stable();
        let mut installed = render_cached(
            compiler.program(),
            &interfaces(),
            &Config::default(),
            &mut cache,
        );
        // pod6: a web pod in ns0, like pod0: the same chains, so pod0's pair and group.
        compiler.put_endpoint(pod(6, 0, 7, false), true);
        let delta = compiler.take_delta();
        let plan = plan(
            &installed,
            &cache,
            compiler.program(),
            &delta,
            &interfaces(),
        )
        .unwrap();
        let described: Vec<String> = plan.ops.iter().map(Op::describe).collect();
        assert!(
            described
                .iter()
                .all(|d| d.starts_with("add 1 element(s) to pol-s")),
            "{described:?}"
        );
        assert!(!described.is_empty());
        assert_eq!(plan.cleanup, []);
        assert_eq!(
            plan.links,
            [("cali6".to_string(), installed.groups["cali0"])]
        );
        plan.apply_to(&mut installed, &mut cache);
        assert_eq!(installed, fresh(compiler.program()));
    }
}
