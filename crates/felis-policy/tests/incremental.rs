//! The incremental compiler against compilation from scratch: after any sequence of endpoint
//! puts (new, relabelled, readdressed, moved on or off the node), endpoint deletes, policy puts
//! (new, rules changed, reordered, reselected) and policy deletes, its program has the same
//! canonical form as [`PolicySet::compile_for_node`] of the same state, and the deltas it
//! reports account for every change.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use common::labels;
use common::tiered_cluster;
use felis_policy::Endpoint;
use felis_policy::HostInterface;
use felis_policy::IncrementalCompiler;
use felis_policy::NamedPort;
use felis_policy::Policy;
use felis_policy::PolicySet;
use felis_policy::Program;
use felis_policy::Protocol;
use felis_policy::k8s::NetworkPolicy;
use felis_policy::program::IpSetId;
use proptest::prelude::*;
use serde_json::json;

const NODE: &str = "n1";

fn policy_pool() -> Vec<Policy> {
    let values = [
        json!({"name": "security.a", "tier": "security", "order": 1, "ingress": [
            {"action": "Log"},
            {"action": "Pass", "source": {"namespaceSelector": "team == 'ops'"}},
            {"action": "Deny", "protocol": "UDP"},
        ]}),
        json!({"name": "security.b", "tier": "security", "order": 1, "selector": "app == 'db'", "ingress": [
            {"action": "Allow", "source": {"selector": "app == 'web'"}, "destination": {"ports": [5432]}, "protocol": "TCP"},
        ]}),
        // security.b again: reordered and reselected.
        json!({"name": "security.b", "tier": "security", "order": 0.5, "selector": "app in {'db', 'web'}", "ingress": [
            {"action": "Allow", "source": {"selector": "app == 'web'"}, "destination": {"ports": [5432]}, "protocol": "TCP"},
        ]}),
        // security.b again: same order, another selector.
        json!({"name": "security.b", "tier": "security", "order": 1, "selector": "app == 'prometheus'", "ingress": [
            {"action": "Allow", "source": {"selector": "app == 'web'"}, "destination": {"ports": [5432]}, "protocol": "TCP"},
        ]}),
        // y again: another selector and both directions.
        json!({"name": "y", "namespace": "prod", "order": 10, "selector": "app == 'web'", "ingress": [{"action": "Allow"}],
               "egress": [{"action": "Deny", "destination": {"selector": "app == 'db'"}}]}),
        json!({"name": "security.c", "tier": "security", "types": ["Egress"], "egress": [
            {"action": "Deny", "destination": {"nets": ["8.8.8.8/32"]}},
            {"action": "Pass"},
        ]}),
        json!({"name": "x", "namespace": "prod", "order": 10, "ingress": [
            {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}},
            {"action": "Deny", "source": {"notSelector": "has(app)"}},
        ]}),
        json!({"name": "y", "namespace": "prod", "order": 10, "ingress": [{"action": "Allow"}]}),
        // y again: one rule changed, one added (same selection).
        json!({"name": "y", "namespace": "prod", "order": 10, "ingress": [
            {"action": "Deny", "source": {"selector": "app == 'db'"}},
            {"action": "Allow", "source": {"selector": "app == 'web'", "notSelector": "app == 'db'"}},
        ]}),
        json!({"name": "z", "ingress": [{"action": "Allow", "source": {"selector": "trust == 'yes'"}}],
               "egress": [{"action": "Allow", "destination": {"ports": ["http"]}, "protocol": "TCP"}]}),
        // z again: another named port, and notPorts.
        json!({"name": "z", "ingress": [{"action": "Allow", "source": {"selector": "trust == 'yes'"}}],
               "egress": [{"action": "Allow", "destination": {"ports": ["postgres"], "notPorts": ["http"]}, "protocol": "TCP"}]}),
        json!({"name": "audit.log", "tier": "audit", "ingress": [{"action": "Log"}], "egress": [{"action": "Log"}]}),
        json!({"name": "hosts", "selector": "has(node)", "ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [443]}}]}),
        json!({"name": "sa", "namespaceSelector": "env == 'prod'", "ingress": [
            {"action": "Allow", "source": {"serviceAccounts": {"names": ["web"]}, "namespaceSelector": "global()"}},
            {"action": "Allow", "source": {"serviceAccounts": {"selector": "role == 'database'"}}},
            {"action": "Deny", "source": {"namespaceSelector": "env == 'dev'", "selector": "app == 'web'"}},
        ]}),
        json!({"name": "pre", "preDNAT": true, "applyOnForward": true, "selector": "has(node)", "ingress": [
            {"action": "Deny", "source": {"selector": "app == 'db'"}},
        ]}),
        json!({"name": "fwd", "applyOnForward": true, "selector": "has(node)", "egress": [
            {"action": "Allow", "destination": {"selector": "app == 'web'", "ports": ["http"]}},
        ]}),
    ];
    let mut pool: Vec<Policy> = values
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    let np = |name: &str, ns: &str, spec: serde_json::Value| {
        let value = json!({"metadata": {"name": name, "namespace": ns}, "spec": spec});
        serde_json::from_value::<NetworkPolicy>(value)
            .unwrap()
            .to_policy()
            .unwrap()
    };
    pool.push(np("deny-all", "prod", json!({"podSelector": {}})));
    pool.push(np(
        "db-from-web",
        "prod",
        json!({
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}],
        }),
    ));
    pool.push(np(
        "from-ops",
        "dev",
        json!({
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}, "podSelector": {"matchLabels": {"app": "prometheus"}}}]}],
        }),
    ));
    pool.push(np(
        "web-http",
        "prod",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": "http"}]}]}),
    ));
    pool
}

fn base() -> PolicySet {
    let mut set = tiered_cluster();
    set.add_endpoint(Endpoint {
        name: "hep1".to_string(),
        labels: labels(&[("node", "n1")]),
        ips: vec!["192.168.0.11/32".parse().unwrap()],
        profiles: vec!["projectcalico-default-allow".to_string()],
        node: Some(NODE.to_string()),
        host_endpoint: Some(HostInterface {
            interface_name: "eth0".to_string(),
        }),
        ..Endpoint::default()
    });
    // As `from_resources` derives them: every service account an endpoint names is known.
    for (ns, sa) in [
        ("prod", "web"),
        ("dev", "default"),
        ("monitoring", "prom"),
        ("monitoring", "default"),
    ] {
        set.add_service_account(felis_policy::ServiceAccount {
            name: sa.to_string(),
            namespace: ns.to_string(),
            labels: BTreeMap::new(),
        });
    }
    for p in policy_pool().into_iter().step_by(3) {
        set.add_policy(p);
    }
    set
}

/// The endpoint slots a test puts: (namespace, name, service account).
const SLOTS: &[(&str, &str, &str)] = &[
    ("prod", "web", "web"),
    ("dev", "db", "default"),
    ("prod", "s2", "db"),
    ("dev", "s3", "default"),
    ("monitoring", "s4", "prom"),
    ("monitoring", "s5", "default"),
];
const APPS: &[&str] = &["web", "db", "prometheus", "other"];
const ADDRESSES: &[&str] = &[
    "10.0.0.1/32",
    "10.0.9.1/32",
    "10.0.9.2/32",
    "10.0.9.3/32",
    "fd00::9/128",
];

#[derive(Debug, Clone)]
enum Op {
    PutEndpoint {
        slot: usize,
        app: usize,
        address: usize,
        port: Option<bool>,
        local: bool,
    },
    DeleteEndpoint(usize),
    PutPolicy(usize),
    DeletePolicy(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let pool = policy_pool().len();
    prop_oneof![
        3 => (0..SLOTS.len(), 0..APPS.len(), 0..ADDRESSES.len(), proptest::option::of(any::<bool>()), any::<bool>())
            .prop_map(|(slot, app, address, port, local)| Op::PutEndpoint { slot, app, address, port, local }),
        1 => (0..SLOTS.len()).prop_map(Op::DeleteEndpoint),
        3 => (0..pool).prop_map(Op::PutPolicy),
        1 => (0..pool).prop_map(Op::DeletePolicy),
    ]
}

fn slot_endpoint(slot: usize, app: usize, address: usize, port: Option<bool>) -> Endpoint {
    let (ns, name, sa) = SLOTS[slot];
    let ports = match port {
        None => Vec::new(),
        Some(http) => vec![NamedPort {
            name: if http { "http" } else { "postgres" }.to_string(),
            protocol: Protocol::TCP,
            port: if http { 8080 } else { 5432 },
        }],
    };
    Endpoint {
        name: name.to_string(),
        namespace: Some(ns.to_string()),
        labels: labels(&[("app", APPS[app])]),
        ips: vec![ADDRESSES[address].parse().unwrap()],
        profiles: vec![format!("kns.{ns}"), format!("ksa.{ns}.{sa}")],
        ports,
        service_account: Some(sa.to_string()),
        orchestrator: Some("k8s".to_string()),
        ..Endpoint::default()
    }
}

fn key_of(endpoint: &Endpoint) -> String {
    format!(
        "{}/{}",
        endpoint.namespace.as_deref().unwrap_or(""),
        endpoint.name
    )
}

fn policy_key(policy: &Policy) -> String {
    match &policy.namespace {
        Some(ns) => format!("{ns}/{}", policy.name),
        None => policy.name.clone(),
    }
}

/// What compiling `set` from scratch gives.
fn from_scratch(set: &PolicySet, local: &BTreeSet<String>) -> Program {
    let endpoints = set
        .endpoints
        .iter()
        .filter(|e| e.namespace.is_some() && local.contains(&key_of(e)));
    set.compile_for_node(endpoints, NODE)
}

/// The sets a chain of `program` refers to, by id, with their members.
fn members(program: &Program) -> BTreeMap<IpSetId, Vec<String>> {
    let ip = program
        .ip_sets
        .iter()
        .map(|(id, nets)| (*id, nets.iter().map(|n| n.to_string()).collect()));
    let named = program.named_port_sets.iter().map(|(id, members)| {
        (
            *id,
            members
                .iter()
                .map(|m| format!("{} {} {}", m.net, m.protocol.0, m.port))
                .collect(),
        )
    });
    ip.chain(named).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn changes_give_what_compiling_from_scratch_gives(ops in prop::collection::vec(op(), 1..25)) {
        let pool = policy_pool();
        let mut reference = base();
        let mut local: BTreeSet<String> =
            ["prod/web", "dev/web", "monitoring/prom"].map(String::from).into();
        let mut compiler = IncrementalCompiler::new(NODE);
        compiler.rebuild(reference.clone(), local.clone());
        prop_assert_eq!(compiler.program().canonical(), from_scratch(&reference, &local).canonical());
        prop_assert!(compiler.take_delta().full);
        // A mirror of the sets, kept only from the deltas.
        let mut mirror: BTreeMap<IpSetId, BTreeSet<String>> = members(compiler.program())
            .into_iter()
            .map(|(id, m)| (id, m.into_iter().collect()))
            .collect();
        for op in &ops {
            let before = compiler.program().clone();
            match op {
                Op::PutEndpoint { slot, app, address, port, local: on_node } => {
                    let endpoint = slot_endpoint(*slot, *app, *address, *port);
                    let key = key_of(&endpoint);
                    prop_assert!(compiler.can_put_endpoint(&endpoint));
                    match reference.endpoints.iter_mut().find(|e| key_of(e) == key) {
                        Some(slot) => *slot = endpoint.clone(),
                        None => { reference.add_endpoint(endpoint.clone()); }
                    }
                    if *on_node { local.insert(key); } else { local.remove(&key); }
                    compiler.put_endpoint(endpoint, *on_node);
                }
                Op::DeleteEndpoint(slot) => {
                    let (ns, name, _) = SLOTS[*slot];
                    let key = format!("{ns}/{name}");
                    reference.endpoints.retain(|e| key_of(e) != key);
                    local.remove(&key);
                    compiler.delete_endpoint(&key);
                }
                Op::PutPolicy(i) => {
                    let policy = pool[*i].clone();
                    let key = policy_key(&policy);
                    match reference.policies.iter_mut().find(|p| policy_key(p) == key) {
                        Some(slot) => *slot = policy.clone(),
                        None => { reference.add_policy(policy.clone()); }
                    }
                    compiler.put_policy(policy);
                }
                Op::DeletePolicy(i) => {
                    let key = policy_key(&pool[*i]);
                    reference.policies.retain(|p| policy_key(p) != key);
                    compiler.delete_policy(&key);
                }
            }
            let delta = compiler.take_delta();
            let program = compiler.program();
            prop_assert_eq!(program.canonical(), from_scratch(&reference, &local).canonical(), "after {:?}", op);
            // The delta accounts for every change.
            prop_assert!(!delta.full);
            for (key, endpoint) in &program.endpoints {
                if before.endpoints.get(key) != Some(endpoint) {
                    prop_assert!(delta.endpoints.contains(key), "endpoint {} after {:?}", key, op);
                }
            }
            for key in before.endpoints.keys().filter(|k| !program.endpoints.contains_key(*k)) {
                prop_assert!(delta.endpoints.contains(key), "endpoint {} after {:?}", key, op);
            }
            let policy_keys: BTreeSet<&String> =
                program.policies.keys().chain(before.policies.keys()).collect();
            for key in policy_keys {
                if before.policies.get(key) != program.policies.get(key) {
                    prop_assert!(delta.policies.contains(key), "policy {} after {:?}", key, op);
                }
            }
            let profile_keys: BTreeSet<&String> =
                program.profiles.keys().chain(before.profiles.keys()).collect();
            for key in profile_keys {
                if before.profiles.get(key) != program.profiles.get(key) {
                    prop_assert!(delta.profiles.contains(key), "profile {} after {:?}", key, op);
                }
            }
            prop_assert!(before.host == program.host || delta.host);
            for (id, change) in &delta.ip_sets {
                let entry = mirror.entry(*id).or_default();
                for m in &change.removed {
                    prop_assert!(entry.remove(&m.to_string()), "{} was not in set {:?}", m, id);
                }
                for m in &change.added {
                    prop_assert!(entry.insert(m.to_string()), "{} was already in set {:?}", m, id);
                }
            }
            for (id, change) in &delta.named_port_sets {
                let entry = mirror.entry(*id).or_default();
                for m in &change.removed {
                    let text = format!("{} {} {}", m.net, m.protocol.0, m.port);
                    prop_assert!(entry.remove(&text));
                }
                for m in &change.added {
                    let text = format!("{} {} {}", m.net, m.protocol.0, m.port);
                    prop_assert!(entry.insert(text));
                }
            }
            mirror.retain(|_, m| !m.is_empty());
            let expected: BTreeMap<IpSetId, BTreeSet<String>> = members(program)
                .into_iter()
                .filter(|(_, m)| !m.is_empty())
                .map(|(id, m)| (id, m.into_iter().collect()))
                .collect();
            prop_assert_eq!(&mirror, &expected, "sets after {:?}", op);
        }
    }
}

#[test]
fn set_ids_stay_while_members_change() {
    let mut set = base();
    set.add_policy(policy_pool()[1].clone()); // security.b: db from web
    let local: BTreeSet<String> = ["prod/db".to_string()].into();
    let mut compiler = IncrementalCompiler::new(NODE);
    compiler.rebuild(set, local);
    let program = compiler.program().clone();
    let ids = |p: &Program| p.ip_sets.keys().copied().collect::<Vec<_>>();
    compiler.take_delta();
    // A new web pod elsewhere: one member more in one set, nothing renamed, no chain changed.
    compiler.put_endpoint(slot_endpoint(3, 0, 2, None), false);
    let delta = compiler.take_delta();
    assert_eq!(ids(compiler.program()), ids(&program));
    assert!(delta.policies.is_empty(), "{delta:?}");
    assert_eq!(
        delta
            .ip_sets
            .values()
            .map(|c| (c.added.len(), c.removed.len()))
            .collect::<Vec<_>>(),
        [(1, 0)]
    );
    assert_eq!(compiler.program().policies, program.policies);
    // And gone again.
    compiler.delete_endpoint("dev/s3");
    assert_eq!(compiler.program(), &program);
}

#[test]
fn a_rebuild_keeps_the_ids_of_sets_defined_as_before() {
    let mut set = base();
    let local: BTreeSet<String> = ["prod/web".to_string(), "prod/db".to_string()].into();
    let mut compiler = IncrementalCompiler::new(NODE);
    compiler.rebuild(set.clone(), local.clone());
    let before = compiler.program().clone();
    set.add_policy(
        serde_json::from_value(json!({"name": "more", "ingress": [
            {"action": "Allow", "source": {"selector": "app == 'grafana'"}},
        ]}))
        .unwrap(),
    );
    compiler.rebuild(set.clone(), local);
    let after = compiler.program();
    for (id, members) in &before.ip_sets {
        assert_eq!(after.ip_sets.get(id), Some(members), "set {id:?}");
    }
    assert!(after.ip_sets.len() > before.ip_sets.len());
    assert_eq!(
        after.canonical(),
        from_scratch(&set, &["prod/web", "prod/db"].map(String::from).into()).canonical()
    );
}
