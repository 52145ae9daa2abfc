//! Properties of the verdict engine over random policy sets and packets:
//! - the verdict does not depend on the order policies were added in;
//! - for Kubernetes NetworkPolicies alone, a side allows exactly when no policy selects the
//!   endpoint in that direction or some rule of a selecting policy matches (the Kubernetes
//!   "union of allows" model), checked against that naive oracle;
//! - the compiled [`Program`] interpreted on a packet gives exactly the engine's trace.

#![allow(clippy::unwrap_used)]

mod common;

use common::tiered_cluster;
use common::trace;
use felis_policy::Direction;
use felis_policy::Endpoint;
use felis_policy::Packet;
use felis_policy::Policy;
use felis_policy::PolicySet;
use felis_policy::Program;
use felis_policy::Verdict;
use felis_policy::k8s::NetworkPolicy;
use proptest::prelude::*;
use serde_json::json;

const ENDS: &[&str] = &[
    "prod/web",
    "prod/db",
    "dev/web",
    "dev/db",
    "monitoring/prom",
    "monitoring/grafana",
    "host1",
    "8.8.8.8",
    "203.0.113.5",
    "172.16.1.1",
    "198.51.100.3",
];
const PROTOCOLS: &[&str] = &["tcp", "udp", "icmp:8:0", "icmp:0:0", "sctp"];
const PORTS: &[u16] = &[53, 80, 443, 5432, 8080, 9187];

fn calico_pool() -> Vec<Policy> {
    let values = [
        json!({"name": "security.a", "tier": "security", "order": 1, "ingress": [
            {"action": "Log"},
            {"action": "Pass", "source": {"namespaceSelector": "team == 'ops'"}},
            {"action": "Deny", "protocol": "UDP"},
        ]}),
        json!({"name": "security.b", "tier": "security", "order": 1, "selector": "app == 'db'", "ingress": [
            {"action": "Allow", "source": {"selector": "app == 'web'"}, "destination": {"ports": [5432]}, "protocol": "TCP"},
        ]}),
        json!({"name": "security.c", "tier": "security", "types": ["Egress"], "egress": [
            {"action": "Deny", "destination": {"nets": ["8.8.8.8/32"]}},
            {"action": "Pass"},
        ]}),
        json!({"name": "x", "namespace": "prod", "order": 10, "ingress": [
            {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}},
            {"action": "Deny", "source": {"notSelector": "has(app)"}},
        ]}),
        json!({"name": "y", "namespace": "prod", "order": 10, "ingress": [{"action": "Allow"}]}),
        json!({"name": "z", "ingress": [{"action": "Allow", "source": {"selector": "trust == 'yes'"}}],
               "egress": [{"action": "Allow", "destination": {"ports": ["http"]}, "protocol": "TCP"}]}),
        json!({"name": "audit.log", "tier": "audit", "ingress": [{"action": "Log"}], "egress": [{"action": "Log"}]}),
        json!({"name": "hosts", "selector": "has(node)", "ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [443]}}]}),
    ];
    values
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

fn k8s_pool() -> Vec<Policy> {
    let np = |name: &str, ns: &str, spec: serde_json::Value| {
        let value = json!({"metadata": {"name": name, "namespace": ns}, "spec": spec});
        serde_json::from_value::<NetworkPolicy>(value)
            .unwrap()
            .to_policy()
            .unwrap()
    };
    vec![
        np("deny-all", "prod", json!({"podSelector": {}})),
        np(
            "deny-egress",
            "dev",
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
        ),
        np(
            "db-from-web",
            "prod",
            json!({
                "podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}],
            }),
        ),
        np(
            "from-ops",
            "prod",
            json!({
                "podSelector": {},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}, "podSelector": {"matchLabels": {"app": "prometheus"}}}]}],
            }),
        ),
        np(
            "web-http",
            "prod",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": "http"}]}]}),
        ),
        np(
            "dns",
            "dev",
            json!({
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}, {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["8.8.8.0/24"]}}]}],
            }),
        ),
        np(
            "mon-in",
            "monitoring",
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}]}),
        ),
    ]
}

fn with_policies(policies: Vec<Policy>) -> PolicySet {
    let mut set = tiered_cluster();
    for policy in policies {
        set.add_policy(policy);
    }
    set
}

fn subset(pool: Vec<Policy>, picks: &[bool]) -> Vec<Policy> {
    pool.into_iter()
        .zip(picks)
        .filter(|(_, keep)| **keep)
        .map(|(p, _)| p)
        .collect()
}

/// The Kubernetes model: no selecting policy ⇒ allow; else allow iff some rule matches.
fn k8s_oracle(
    set: &PolicySet,
    endpoint: &Endpoint,
    direction: Direction,
    packet: &Packet,
) -> Verdict {
    let selecting: Vec<&Policy> = set
        .policies
        .iter()
        .filter(|p| p.applies_in(direction) && set.policy_selects(p, endpoint))
        .collect();
    let allowed = selecting.is_empty()
        || selecting.iter().any(|p| {
            p.rules(direction)
                .iter()
                .any(|r| set.rule_matches(r, p.namespace.as_deref(), packet))
        });
    if allowed {
        Verdict::Allow
    } else {
        Verdict::Deny
    }
}

proptest! {
    #[test]
    fn verdict_does_not_depend_on_policy_insertion_order(
        picks in prop::collection::vec(any::<bool>(), 8),
        seed_order in Just((0..8usize).collect::<Vec<_>>()).prop_shuffle(),
        from in prop::sample::select(ENDS),
        to in prop::sample::select(ENDS),
        protocol in prop::sample::select(PROTOCOLS),
        port in prop::sample::select(PORTS),
    ) {
        let chosen = subset(calico_pool(), &picks);
        let mut shuffled: Vec<Policy> = Vec::new();
        for index in &seed_order {
            if let Some(p) = chosen.get(*index) {
                shuffled.push(p.clone());
            }
        }
        let a = trace(&with_policies(chosen), from, to, protocol, port);
        let b = trace(&with_policies(shuffled), from, to, protocol, port);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn kubernetes_policies_are_a_union_of_allows(
        picks in prop::collection::vec(any::<bool>(), 7),
        from in prop::sample::select(ENDS),
        to in prop::sample::select(ENDS),
        protocol in prop::sample::select(PROTOCOLS),
        port in prop::sample::select(PORTS),
    ) {
        let set = with_policies(subset(k8s_pool(), &picks));
        let t = trace(&set, from, to, protocol, port);
        let (_, from_endpoint) = common::address(&set, from);
        let (_, to_endpoint) = common::address(&set, to);
        let packet = common::packet(&set, from, to, protocol, port);
        // host1 carries projectcalico-default-allow and pods kns.<ns>: both allow-all.
        if let (Some(side), Some(endpoint)) = (&t.egress, from_endpoint) {
            prop_assert_eq!(side.verdict, k8s_oracle(&set, endpoint, Direction::Egress, &packet), "{}", t);
        }
        if let (Some(side), Some(endpoint)) = (&t.ingress, to_endpoint) {
            prop_assert_eq!(side.verdict, k8s_oracle(&set, endpoint, Direction::Ingress, &packet), "{}", t);
        }
    }
}

fn endpoint_key(endpoint: &Endpoint) -> String {
    match &endpoint.namespace {
        Some(ns) => format!("{ns}/{}", endpoint.name),
        None => endpoint.name.clone(),
    }
}

fn compiled_trace(
    set: &PolicySet,
    program: &Program,
    from: &str,
    to: &str,
    protocol: &str,
    port: u16,
) -> felis_policy::Trace {
    let (_, from_endpoint) = common::address(set, from);
    let (_, to_endpoint) = common::address(set, to);
    let packet = common::packet(set, from, to, protocol, port);
    let from_key = from_endpoint.map(endpoint_key);
    let to_key = to_endpoint.map(endpoint_key);
    program.verdict(&packet, from_key.as_deref(), to_key.as_deref())
}

proptest! {
    #[test]
    fn compiled_program_agrees_with_the_engine(
        calico in prop::collection::vec(any::<bool>(), 8),
        k8s in prop::collection::vec(any::<bool>(), 7),
        flows in prop::collection::vec(
            (prop::sample::select(ENDS), prop::sample::select(ENDS), prop::sample::select(PROTOCOLS), prop::sample::select(PORTS)),
            1..8,
        ),
    ) {
        let mut policies = subset(calico_pool(), &calico);
        policies.extend(subset(k8s_pool(), &k8s));
        let set = with_policies(policies);
        let program = set.compile(&set.endpoints);
        for (from, to, protocol, port) in flows {
            let engine = trace(&set, from, to, protocol, port);
            let compiled = compiled_trace(&set, &program, from, to, protocol, port);
            prop_assert_eq!(&compiled, &engine, "{} -> {} {}/{}\n{}", from, to, protocol, port, engine);
        }
    }
}

#[test]
fn compiled_sets_are_shared_and_only_used_policies_are_compiled() {
    let mut set = with_policies(calico_pool());
    set.add_policy(serde_json::from_value(json!({"name": "unused", "selector": "app == 'nothing'", "ingress": [{"action": "Allow"}]})).unwrap());
    let prod_db = common::endpoint(&set, "prod/db").clone();
    let program = set.compile([&prod_db]);
    assert!(!program.policies.contains_key("unused"));
    assert!(program.policies.contains_key("security.b"));
    assert_eq!(
        program.endpoints.keys().collect::<Vec<_>>(),
        vec!["prod/db"]
    );
    let ingress = &program.endpoints["prod/db"].ingress;
    let tiers: Vec<&str> = ingress.tiers.iter().map(|t| t.tier.as_str()).collect();
    assert_eq!(tiers, vec!["security", "default", "audit"]);
    assert_eq!(
        ingress.profiles,
        vec!["kns.prod".to_string(), "ksa.prod.db".to_string()]
    );
    assert!(program.profiles.contains_key("kns.prod"));
    // The JSON form is what a renderer (or a golden file) reads.
    let json = serde_json::to_string(&program).unwrap();
    let back: Program = serde_json::from_str(&json).unwrap();
    assert_eq!(back, program);
}
