//! Kubernetes NetworkPolicy conformance: classic cases, translated as Calico does and
//! evaluated by the engine. Expected verdicts follow the Kubernetes NetworkPolicy spec and
//! the reference §3 (KDD: every pod carries the allow-all `kns.<ns>` profile, so no policy
//! means allow and any selecting policy means default deny in that direction).

#![allow(clippy::unwrap_used)]

mod common;

use common::Case;
use common::case;
use common::check;
use common::cluster;
use felis_policy::Decision;
use felis_policy::Direction;
use felis_policy::PolicySet;
use felis_policy::Port;
use felis_policy::Protocol;
use felis_policy::k8s::NetworkPolicy;
use serde_json::json;

fn knp(value: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(value).unwrap()
}

fn with(policies: &[serde_json::Value]) -> PolicySet {
    let mut set = cluster();
    for value in policies {
        set.add_policy(knp(value.clone()).to_policy().unwrap());
    }
    set
}

fn np(name: &str, ns: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

struct Table {
    name: &'static str,
    policies: Vec<serde_json::Value>,
    cases: Vec<Case>,
}

fn tables() -> Vec<Table> {
    vec![
        Table {
            name: "no policy: everything allowed",
            policies: vec![],
            cases: vec![
                case("dev/web", "prod/db", "tcp", 5432, true),
                case("8.8.8.8", "prod/web", "tcp", 80, true),
                case("prod/web", "8.8.8.8", "udp", 53, true),
            ],
        },
        Table {
            name: "default deny ingress in prod",
            policies: vec![np(
                "deny-all",
                "prod",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            )],
            cases: vec![
                case("dev/web", "prod/db", "tcp", 5432, false),
                case("prod/web", "prod/db", "tcp", 5432, false),
                case("8.8.8.8", "prod/web", "tcp", 80, false),
                // Egress from prod and traffic into other namespaces are untouched.
                case("prod/db", "dev/web", "tcp", 80, true),
                case("prod/db", "8.8.8.8", "udp", 53, true),
                case("dev/web", "dev/db", "tcp", 5432, true),
            ],
        },
        Table {
            name: "default deny egress in prod",
            policies: vec![np(
                "deny-egress",
                "prod",
                json!({"podSelector": {}, "policyTypes": ["Egress"]}),
            )],
            cases: vec![
                case("prod/web", "prod/db", "tcp", 5432, false),
                case("prod/web", "8.8.8.8", "udp", 53, false),
                case("dev/web", "prod/db", "tcp", 5432, true),
            ],
        },
        Table {
            name: "allow all ingress overrides a deny-all (union)",
            policies: vec![
                np(
                    "deny-all",
                    "prod",
                    json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
                ),
                np(
                    "allow-all",
                    "prod",
                    json!({"podSelector": {}, "ingress": [{}]}),
                ),
            ],
            cases: vec![
                case("dev/web", "prod/db", "tcp", 5432, true),
                case("8.8.8.8", "prod/web", "udp", 1, true),
            ],
        },
        Table {
            name: "allow from a namespace",
            policies: vec![np(
                "db-from-dev",
                "prod",
                json!({
                    "podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "dev"}}}]}],
                }),
            )],
            cases: vec![
                case("dev/web", "prod/db", "tcp", 5432, true),
                case("dev/db", "prod/db", "udp", 53, true),
                case("monitoring/prom", "prod/db", "tcp", 5432, false),
                case("prod/web", "prod/db", "tcp", 5432, false),
                case("8.8.8.8", "prod/db", "tcp", 5432, false),
                case("host1", "prod/db", "tcp", 5432, false),
                // prod/web is not selected: still open.
                case("monitoring/prom", "prod/web", "tcp", 80, true),
            ],
        },
        Table {
            name: "podSelector AND namespaceSelector in one peer",
            policies: vec![np(
                "db-from-prom",
                "prod",
                json!({
                    "podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"from": [{
                        "namespaceSelector": {"matchLabels": {"team": "ops"}},
                        "podSelector": {"matchLabels": {"app": "prometheus"}},
                    }]}],
                }),
            )],
            cases: vec![
                case("monitoring/prom", "prod/db", "tcp", 9187, true),
                case("monitoring/grafana", "prod/db", "tcp", 9187, false),
                case("prod/web", "prod/db", "tcp", 9187, false),
                case("dev/web", "prod/db", "tcp", 9187, false),
            ],
        },
        Table {
            name: "podSelector OR namespaceSelector as two peers",
            policies: vec![np(
                "db-from-ops-or-web",
                "prod",
                json!({
                    "podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"from": [
                        {"namespaceSelector": {"matchLabels": {"team": "ops"}}},
                        {"podSelector": {"matchLabels": {"app": "web"}}},
                    ]}],
                }),
            )],
            cases: vec![
                case("monitoring/prom", "prod/db", "tcp", 5432, true),
                case("monitoring/grafana", "prod/db", "tcp", 5432, true),
                case("prod/web", "prod/db", "tcp", 5432, true),
                // podSelector alone means the policy's own namespace.
                case("dev/web", "prod/db", "tcp", 5432, false),
            ],
        },
        Table {
            name: "empty podSelector peer: all pods of the namespace, not network sets",
            policies: vec![np(
                "same-ns",
                "prod",
                json!({
                    "podSelector": {},
                    "ingress": [{"from": [{"podSelector": {}}]}],
                }),
            )],
            cases: vec![
                case("prod/web", "prod/db", "tcp", 5432, true),
                case("dev/web", "prod/db", "tcp", 5432, false),
                case("172.16.3.4", "prod/db", "tcp", 5432, false),
            ],
        },
        Table {
            name: "empty namespaceSelector peer: all pods of all namespaces, not hosts",
            policies: vec![np(
                "any-pod",
                "prod",
                json!({
                    "podSelector": {},
                    "ingress": [{"from": [{"namespaceSelector": {}}]}],
                }),
            )],
            cases: vec![
                case("dev/web", "prod/db", "tcp", 5432, true),
                case("monitoring/grafana", "prod/db", "tcp", 5432, true),
                case("host1", "prod/db", "tcp", 5432, false),
                case("8.8.8.8", "prod/db", "tcp", 5432, false),
                case("198.51.100.7", "prod/db", "tcp", 5432, false),
            ],
        },
        Table {
            name: "matchExpressions",
            policies: vec![np(
                "exprs",
                "prod",
                json!({
                    "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "cache"]}]},
                    "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                        {"key": "env", "operator": "Exists"},
                        {"key": "env", "operator": "NotIn", "values": ["prod"]},
                    ]}}]}],
                }),
            )],
            cases: vec![
                case("dev/web", "prod/db", "tcp", 1, true),
                case("prod/web", "prod/db", "tcp", 1, false),
                case("monitoring/prom", "prod/db", "tcp", 1, false),
                case("monitoring/prom", "prod/web", "tcp", 1, true),
            ],
        },
        Table {
            name: "ipBlock with except (egress)",
            policies: vec![np(
                "web-egress",
                "prod",
                json!({
                    "podSelector": {"matchLabels": {"app": "web"}},
                    "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.1.0/24"]}}]}],
                }),
            )],
            cases: vec![
                case("prod/web", "prod/db", "tcp", 5432, true),
                case("prod/web", "monitoring/prom", "udp", 9090, true),
                case("prod/web", "dev/web", "tcp", 80, false),
                case("prod/web", "8.8.8.8", "udp", 53, false),
                case("prod/db", "8.8.8.8", "udp", 53, true),
            ],
        },
        Table {
            name: "ipBlock ingress from outside",
            policies: vec![np(
                "web-from-net",
                "prod",
                json!({
                    "podSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 443}]}],
                }),
            )],
            cases: vec![
                case("203.0.113.5", "prod/web", "tcp", 443, true),
                case("203.0.113.5", "prod/web", "tcp", 80, false),
                case("203.0.113.5", "prod/web", "udp", 443, false),
                case("8.8.8.8", "prod/web", "tcp", 443, false),
            ],
        },
        Table {
            name: "named port",
            policies: vec![np(
                "web-http",
                "prod",
                json!({
                    "podSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"ports": [{"port": "http"}]}],
                }),
            )],
            cases: vec![
                case("dev/web", "prod/web", "tcp", 8080, true),
                case("8.8.8.8", "prod/web", "tcp", 8080, true),
                case("dev/web", "prod/web", "tcp", 80, false),
                case("dev/web", "prod/web", "udp", 8080, false),
            ],
        },
        Table {
            name: "named port on egress resolves against the destination",
            policies: vec![np(
                "to-postgres",
                "prod",
                json!({
                    "podSelector": {"matchLabels": {"app": "web"}},
                    "policyTypes": ["Egress"],
                    "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": "postgres", "protocol": "TCP"}]}],
                }),
            )],
            cases: vec![
                case("prod/web", "prod/db", "tcp", 5432, true),
                case("prod/web", "prod/db", "tcp", 5433, false),
                // dev/db has no named port "postgres".
                case("prod/web", "dev/db", "tcp", 5432, false),
                case("prod/web", "8.8.8.8", "tcp", 5432, false),
            ],
        },
        Table {
            name: "port range with endPort",
            policies: vec![np(
                "range",
                "prod",
                json!({
                    "podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"ports": [{"protocol": "UDP", "port": 5000, "endPort": 5010}]}],
                }),
            )],
            cases: vec![
                case("dev/web", "prod/db", "udp", 5000, true),
                case("dev/web", "prod/db", "udp", 5005, true),
                case("dev/web", "prod/db", "udp", 5010, true),
                case("dev/web", "prod/db", "udp", 4999, false),
                case("dev/web", "prod/db", "udp", 5011, false),
                case("dev/web", "prod/db", "tcp", 5005, false),
            ],
        },
        Table {
            name: "egress to CIDRs and DNS",
            policies: vec![np(
                "egress-cidrs",
                "prod",
                json!({
                    "podSelector": {},
                    "policyTypes": ["Egress"],
                    "egress": [
                        {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 443}]},
                        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
                    ],
                }),
            )],
            cases: vec![
                case("prod/web", "203.0.113.5", "tcp", 443, true),
                case("prod/web", "203.0.113.5", "tcp", 80, false),
                case("prod/web", "8.8.8.8", "tcp", 443, false),
                case("prod/web", "8.8.8.8", "udp", 53, true),
                case("prod/db", "8.8.8.8", "tcp", 53, true),
                case("prod/db", "dev/web", "tcp", 80, false),
            ],
        },
        Table {
            name: "multiple policies are a union",
            policies: vec![
                np(
                    "db-from-web",
                    "prod",
                    json!({
                        "podSelector": {"matchLabels": {"app": "db"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}],
                    }),
                ),
                np(
                    "db-from-ops",
                    "prod",
                    json!({
                        "podSelector": {"matchLabels": {"app": "db"}},
                        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}], "ports": [{"port": 9187}]}],
                    }),
                ),
            ],
            cases: vec![
                case("prod/web", "prod/db", "tcp", 5432, true),
                case("prod/web", "prod/db", "tcp", 9187, false),
                case("monitoring/prom", "prod/db", "tcp", 9187, true),
                case("monitoring/prom", "prod/db", "tcp", 5432, false),
                case("dev/web", "prod/db", "tcp", 5432, false),
            ],
        },
        Table {
            name: "ingress and egress policies on both ends",
            policies: vec![
                np(
                    "web-egress-db",
                    "prod",
                    json!({
                        "podSelector": {"matchLabels": {"app": "web"}},
                        "policyTypes": ["Egress"],
                        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}]}],
                    }),
                ),
                np(
                    "db-ingress-none",
                    "prod",
                    json!({"podSelector": {"matchLabels": {"app": "db"}}}),
                ),
            ],
            cases: vec![
                // Egress allows, ingress denies.
                case("prod/web", "prod/db", "tcp", 5432, false),
                case("prod/web", "dev/db", "tcp", 5432, false),
            ],
        },
        Table {
            name: "egress rules without policyTypes imply both types",
            policies: vec![np(
                "implicit",
                "prod",
                json!({
                    "podSelector": {"matchLabels": {"app": "web"}},
                    "egress": [{"to": [{"ipBlock": {"cidr": "8.8.8.8/32"}}]}],
                }),
            )],
            cases: vec![
                case("prod/web", "8.8.8.8", "udp", 53, true),
                case("prod/web", "203.0.113.5", "udp", 53, false),
                case("dev/web", "prod/web", "tcp", 80, false),
            ],
        },
        Table {
            name: "IPv6 ipBlock does not open IPv4",
            policies: vec![np(
                "v6-only",
                "prod",
                json!({
                    "podSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "::/0"}}]}],
                }),
            )],
            cases: vec![
                case("8.8.8.8", "prod/web", "tcp", 80, false),
                case("dev/db", "prod/web", "tcp", 80, false),
            ],
        },
        Table {
            name: "namespaceSelector DoesNotExist",
            policies: vec![np(
                "not-env",
                "prod",
                json!({
                    "podSelector": {},
                    "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}}]}],
                }),
            )],
            cases: vec![
                case("monitoring/prom", "prod/db", "tcp", 1, true),
                case("dev/web", "prod/db", "tcp", 1, false),
                case("prod/web", "prod/db", "tcp", 1, false),
            ],
        },
        Table {
            name: "several ports and protocols in one rule",
            policies: vec![np(
                "mixed",
                "prod",
                json!({
                    "podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{
                        "from": [{"namespaceSelector": {"matchLabels": {"env": "dev"}}}],
                        "ports": [{"port": 5432}, {"protocol": "UDP", "port": 53}, {"port": 6000, "endPort": 6002}],
                    }],
                }),
            )],
            cases: vec![
                case("dev/web", "prod/db", "tcp", 5432, true),
                case("dev/web", "prod/db", "tcp", 6001, true),
                case("dev/web", "prod/db", "udp", 53, true),
                case("dev/web", "prod/db", "udp", 5432, false),
                case("dev/web", "prod/db", "tcp", 53, false),
                case("monitoring/prom", "prod/db", "tcp", 5432, false),
            ],
        },
        Table {
            name: "a policy selecting no pods changes nothing",
            policies: vec![np(
                "nobody",
                "prod",
                json!({"podSelector": {"matchLabels": {"app": "nothing"}}}),
            )],
            cases: vec![case("dev/web", "prod/db", "tcp", 5432, true)],
        },
        Table {
            name: "sctp port",
            policies: vec![np(
                "sctp",
                "prod",
                json!({
                    "podSelector": {"matchLabels": {"app": "db"}},
                    "ingress": [{"ports": [{"protocol": "SCTP", "port": 3868}]}],
                }),
            )],
            cases: vec![
                case("dev/web", "prod/db", "sctp", 3868, true),
                case("dev/web", "prod/db", "tcp", 3868, false),
            ],
        },
    ]
}

#[test]
fn kubernetes_network_policy_tables() {
    for table in tables() {
        let set = with(&table.policies);
        check(table.name, &set, &table.cases);
    }
}

#[test]
fn translation_follows_calico() {
    let policy = knp(np("web", "prod", json!({
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{
            "from": [
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.0.0/16"]}},
                {"podSelector": {"matchLabels": {"role": "fe"}}, "namespaceSelector": {"matchLabels": {"env": "prod"}}},
            ],
            "ports": [{"port": 80}, {"port": 8000, "endPort": 8100}, {"protocol": "UDP", "port": "dns"}],
        }],
    })))
    .to_policy()
    .unwrap();
    assert_eq!(policy.name, "knp.default.web");
    assert_eq!(policy.namespace.as_deref(), Some("prod"));
    assert_eq!(policy.tier, "default");
    assert_eq!(policy.order, Some(1000.0));
    assert_eq!(
        policy.selector.to_string(),
        "projectcalico.org/orchestrator == \"k8s\" && app == \"web\""
    );
    assert_eq!(policy.types, vec![Direction::Ingress]);
    // 2 peers × 2 protocols.
    assert_eq!(policy.ingress.len(), 4);
    let first = &policy.ingress[0];
    assert_eq!(first.protocol, Some(Protocol::TCP));
    assert_eq!(first.source.nets, vec!["10.0.0.0/8".parse().unwrap()]);
    assert_eq!(first.source.not_nets.len(), 2);
    assert_eq!(
        first.destination.ports,
        vec![Port::Number(80), Port::Range(8000, 8100)]
    );
    assert_eq!(policy.ingress[1].protocol, Some(Protocol::UDP));
    assert_eq!(
        policy.ingress[1].destination.ports,
        vec![Port::Named("dns".to_string())]
    );
    let pods = &policy.ingress[2].source;
    assert_eq!(
        pods.selector.as_ref().unwrap().to_string(),
        "projectcalico.org/orchestrator == \"k8s\" && role == \"fe\""
    );
    assert_eq!(
        pods.namespace_selector.as_ref().unwrap().to_string(),
        "env == \"prod\""
    );
    assert!(pods.nets.is_empty());
}

#[test]
fn a_protocol_entry_without_port_opens_all_its_ports() {
    let policy = knp(np(
        "p",
        "prod",
        json!({
            "podSelector": {},
            "ingress": [{"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "UDP"}]}],
        }),
    ))
    .to_policy()
    .unwrap();
    assert_eq!(policy.ingress.len(), 1);
    assert!(policy.ingress[0].destination.ports.is_empty());
    assert_eq!(policy.ingress[0].protocol, Some(Protocol::UDP));
}

#[test]
fn missing_namespace_defaults_to_default() {
    let policy = knp(json!({"metadata": {"name": "x"}, "spec": {"podSelector": {}}}))
        .to_policy()
        .unwrap();
    assert_eq!(policy.namespace.as_deref(), Some("default"));
}

#[test]
fn deny_all_is_an_end_of_tier_drop_in_the_default_tier() {
    let set = with(&[np("deny-all", "prod", json!({"podSelector": {}}))]);
    let t = common::trace(&set, "dev/web", "prod/db", "tcp", 5432);
    let ingress = t.ingress.unwrap();
    assert_eq!(
        ingress.decided_by,
        Decision::EndOfTier {
            tier: "default".to_string()
        }
    );
    assert_eq!(ingress.tiers, vec!["default".to_string()]);
    assert!(!t.egress.unwrap().tiers.iter().any(|_| true));
}

#[test]
fn translation_errors_name_the_field() {
    let bad_cidr = knp(np(
        "bad",
        "prod",
        json!({
            "podSelector": {},
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}],
        }),
    ));
    let err = bad_cidr.to_policy().unwrap_err().to_string();
    assert!(
        err.contains("spec.ingress[0].from[0].ipBlock.cidr"),
        "{err}"
    );
    assert!(err.contains("knp.default.bad"), "{err}");

    let bad_op = knp(np(
        "bad",
        "prod",
        json!({
            "podSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
        }),
    ));
    let err = bad_op.to_policy().unwrap_err().to_string();
    assert!(
        err.contains("Gt") && err.contains("spec.podSelector"),
        "{err}"
    );

    let bad_type = knp(np(
        "bad",
        "prod",
        json!({"podSelector": {}, "policyTypes": ["Sideways"]}),
    ));
    assert!(
        bad_type
            .to_policy()
            .unwrap_err()
            .to_string()
            .contains("spec.policyTypes[0]")
    );

    let bad_range = knp(np(
        "bad",
        "prod",
        json!({
            "podSelector": {},
            "ingress": [{"ports": [{"port": 90, "endPort": 80}]}],
        }),
    ));
    assert!(
        bad_range
            .to_policy()
            .unwrap_err()
            .to_string()
            .contains("spec.ingress[0].ports[0]")
    );
}
