//! Calico policy semantics (the reference §3): tiers, Pass, Log, order, profiles, selectors
//! and their scoping, network sets, ports, protocols, ICMP and ipVersion. Policies are written
//! in the engine model's JSON shape, which follows `projectcalico.org/v3` field names.

#![allow(clippy::unwrap_used)]

mod common;

use common::Case;
use common::case;
use common::check;
use common::cluster;
use common::policy;
use common::trace;
use felis_policy::Action;
use felis_policy::Decision;
use felis_policy::Direction;
use felis_policy::PolicySet;
use felis_policy::Profile;
use felis_policy::RuleRef;
use felis_policy::Step;
use felis_policy::Tier;
use felis_policy::TierDefaultAction;
use felis_policy::Verdict;
use serde_json::json;

fn with(tiers: &[Tier], policies: &[serde_json::Value]) -> PolicySet {
    let mut set = cluster();
    for tier in tiers {
        set.add_tier(tier.clone());
    }
    for value in policies {
        set.add_policy(policy(value.clone()));
    }
    set
}

fn tier(name: &str, order: Option<f64>, default_action: TierDefaultAction) -> Tier {
    Tier {
        name: name.to_string(),
        order,
        default_action,
    }
}

fn policy_rule(tier: &str, namespace: Option<&str>, name: &str, index: usize) -> RuleRef {
    RuleRef::Policy {
        tier: tier.to_string(),
        namespace: namespace.map(str::to_string),
        policy: name.to_string(),
        index,
    }
}

struct Table {
    name: &'static str,
    tiers: Vec<Tier>,
    policies: Vec<serde_json::Value>,
    cases: Vec<Case>,
}

fn tables() -> Vec<Table> {
    let security = || tier("security", Some(100.0), TierDefaultAction::Deny);
    vec![
        Table {
            name: "a tier participates only where one of its policies selects",
            tiers: vec![security()],
            policies: vec![json!({
                "name": "security.db-only-prod", "tier": "security",
                "selector": "app == 'db'",
                "ingress": [{"action": "Allow", "source": {"namespaceSelector": "env == 'prod'"}}],
            })],
            cases: vec![
                case("prod/web", "prod/db", "tcp", 5432, true),
                case("dev/web", "prod/db", "tcp", 5432, false),
                case("dev/web", "dev/db", "tcp", 5432, false),
                // Not selected: the tier does not participate, profiles allow.
                case("dev/db", "prod/web", "tcp", 80, true),
            ],
        },
        Table {
            name: "earlier tier's deny wins over later tier's allow",
            tiers: vec![security()],
            policies: vec![
                json!({
                    "name": "security.block-dev", "tier": "security", "order": 1,
                    "ingress": [
                        {"action": "Deny", "source": {"namespaceSelector": "env == 'dev'"}},
                        {"action": "Pass"},
                    ],
                }),
                json!({"name": "allow-all", "order": 1, "ingress": [{"action": "Allow"}]}),
            ],
            cases: vec![
                case("dev/web", "prod/db", "tcp", 5432, false),
                case("prod/web", "prod/db", "tcp", 5432, true),
                case("8.8.8.8", "prod/web", "tcp", 80, true),
            ],
        },
        Table {
            name: "Pass from the last tier falls through to profiles",
            tiers: vec![security()],
            policies: vec![json!({
                "name": "security.pass-ops", "tier": "security",
                "ingress": [
                    {"action": "Pass", "source": {"namespaceSelector": "team == 'ops'"}},
                    {"action": "Deny"},
                ],
            })],
            cases: vec![
                case("monitoring/prom", "prod/db", "tcp", 9187, true),
                case("prod/web", "prod/db", "tcp", 9187, false),
                // host1 has no namespace: not selected by a namespaceSelector.
                case("host1", "prod/db", "tcp", 9187, false),
            ],
        },
        Table {
            name: "Pass skips the rest of the tier, later tier decides",
            tiers: vec![security()],
            policies: vec![
                json!({"name": "security.a-pass", "tier": "security", "order": 1, "ingress": [
                    {"action": "Pass", "protocol": "UDP"},
                ]}),
                json!({"name": "security.b-deny-udp", "tier": "security", "order": 2, "ingress": [
                    {"action": "Deny", "protocol": "UDP"},
                    {"action": "Allow"},
                ]}),
                json!({"name": "deny-udp-53", "ingress": [
                    {"action": "Deny", "protocol": "UDP", "destination": {"ports": [53]}},
                    {"action": "Allow"},
                ]}),
            ],
            cases: vec![
                case("dev/web", "prod/db", "udp", 5353, true),
                case("dev/web", "prod/db", "udp", 53, false),
                case("dev/web", "prod/db", "tcp", 53, true),
            ],
        },
        Table {
            name: "tier default action Pass",
            tiers: vec![tier("audit", Some(10.0), TierDefaultAction::Pass)],
            policies: vec![
                json!({"name": "audit.nothing", "tier": "audit", "ingress": [
                    {"action": "Deny", "protocol": "UDP"},
                ]}),
            ],
            cases: vec![
                case("dev/web", "prod/db", "tcp", 5432, true),
                case("dev/web", "prod/db", "udp", 53, false),
            ],
        },
        Table {
            name: "tiers by order, nil last",
            tiers: vec![
                tier("aaa", None, TierDefaultAction::Deny),
                tier("zzz", Some(5.0), TierDefaultAction::Deny),
            ],
            policies: vec![
                json!({"name": "aaa.allow", "tier": "aaa", "ingress": [{"action": "Allow"}]}),
                json!({"name": "zzz.deny", "tier": "zzz", "ingress": [{"action": "Deny", "protocol": "TCP"}, {"action": "Pass"}]}),
            ],
            cases: vec![
                case("dev/web", "prod/db", "tcp", 1, false),
                case("dev/web", "prod/db", "udp", 1, true),
            ],
        },
        Table {
            name: "policies by order within a tier",
            tiers: vec![],
            policies: vec![
                json!({"name": "allow-late", "order": 200, "ingress": [{"action": "Allow"}]}),
                json!({"name": "deny-early", "order": 100, "ingress": [{"action": "Deny", "protocol": "TCP"}]}),
            ],
            cases: vec![
                case("dev/web", "prod/db", "tcp", 1, false),
                case("dev/web", "prod/db", "udp", 1, true),
            ],
        },
        Table {
            name: "nil order sorts after any order",
            tiers: vec![],
            policies: vec![
                json!({"name": "a-no-order", "ingress": [{"action": "Allow"}]}),
                json!({"name": "z-ordered", "order": 100000, "ingress": [{"action": "Deny", "protocol": "TCP"}]}),
            ],
            cases: vec![
                case("dev/web", "prod/db", "tcp", 1, false),
                case("dev/web", "prod/db", "udp", 1, true),
            ],
        },
        Table {
            name: "equal order: by name",
            tiers: vec![],
            policies: vec![
                json!({"name": "b-allow", "order": 10, "ingress": [{"action": "Allow"}]}),
                json!({"name": "a-deny", "order": 10, "ingress": [{"action": "Deny", "protocol": "TCP"}]}),
            ],
            cases: vec![
                case("dev/web", "prod/db", "tcp", 1, false),
                case("dev/web", "prod/db", "udp", 1, true),
            ],
        },
        Table {
            name: "Log continues to the next rule",
            tiers: vec![],
            policies: vec![json!({"name": "log-then-deny", "ingress": [
                {"action": "Log"},
                {"action": "Deny", "protocol": "TCP"},
                {"action": "Log", "protocol": "UDP"},
            ]})],
            cases: vec![
                case("dev/web", "prod/db", "tcp", 1, false),
                // Log never allows: end of tier drop.
                case("dev/web", "prod/db", "udp", 1, false),
            ],
        },
        Table {
            name: "notSelector matches anything except the selected",
            tiers: vec![],
            policies: vec![
                json!({"name": "not-web", "namespace": "prod", "selector": "app == 'db'", "ingress": [
                    {"action": "Allow", "source": {"notSelector": "app == 'web'"}},
                ]}),
            ],
            cases: vec![
                case("8.8.8.8", "prod/db", "tcp", 5432, true),
                case("prod/web", "prod/db", "tcp", 5432, false),
                case("monitoring/prom", "prod/db", "tcp", 5432, true),
                // notSelector is scoped to the policy's namespace: dev/web is not excluded.
                case("dev/web", "prod/db", "tcp", 5432, true),
            ],
        },
        Table {
            name: "selector !has() matches only known endpoints",
            tiers: vec![],
            policies: vec![
                json!({"name": "no-app", "selector": "app == 'db'", "ingress": [
                    {"action": "Allow", "source": {"selector": "!has(app)"}},
                ]}),
            ],
            cases: vec![
                case("8.8.8.8", "prod/db", "tcp", 5432, false),
                case("prod/web", "prod/db", "tcp", 5432, false),
                case("host1", "prod/db", "tcp", 5432, true),
                // The trusted GlobalNetworkSet has no app label either.
                case("198.51.100.1", "prod/db", "tcp", 5432, true),
            ],
        },
        Table {
            name: "selector all() matches in-scope known objects only",
            tiers: vec![],
            policies: vec![
                json!({"name": "known", "namespace": "prod", "selector": "app == 'db'", "ingress": [
                    {"action": "Allow", "source": {"selector": "all()"}},
                ]}),
            ],
            cases: vec![
                case("prod/web", "prod/db", "tcp", 5432, true),
                case("172.16.9.9", "prod/db", "tcp", 5432, true),
                case("dev/web", "prod/db", "tcp", 5432, false),
                case("8.8.8.8", "prod/db", "tcp", 5432, false),
                case("host1", "prod/db", "tcp", 5432, false),
            ],
        },
        Table {
            name: "network sets: namespaced within their namespace, global via global()",
            tiers: vec![],
            policies: vec![
                json!({"name": "partners", "namespace": "prod", "selector": "app == 'web'", "ingress": [
                    {"action": "Allow", "source": {"selector": "role == 'partner'"}},
                    {"action": "Allow", "source": {"namespaceSelector": "global()", "selector": "trust == 'yes'"}},
                ]}),
                json!({"name": "partners-elsewhere", "namespace": "dev", "selector": "app == 'web'", "ingress": [
                    {"action": "Allow", "source": {"selector": "role == 'partner'"}},
                ]}),
            ],
            cases: vec![
                case("172.16.0.7", "prod/web", "tcp", 443, true),
                case("198.51.100.7", "prod/web", "tcp", 443, true),
                case("8.8.8.8", "prod/web", "tcp", 443, false),
                case("172.16.0.7", "dev/web", "tcp", 443, false),
            ],
        },
        Table {
            name: "global network set from a global policy, egress",
            tiers: vec![],
            policies: vec![
                json!({"name": "egress-trusted", "selector": "has(app)", "types": ["Egress"], "egress": [
                    {"action": "Allow", "destination": {"selector": "trust == 'yes'"}},
                ]}),
            ],
            cases: vec![
                case("prod/web", "198.51.100.200", "tcp", 443, true),
                case("dev/db", "198.51.100.200", "udp", 443, true),
                case("prod/web", "203.0.113.5", "tcp", 443, false),
                case("prod/web", "prod/db", "tcp", 5432, false),
            ],
        },
        Table {
            name: "rule namespaceSelector alone selects every endpoint in those namespaces",
            tiers: vec![],
            policies: vec![json!({"name": "ops", "namespace": "prod", "ingress": [
                {"action": "Allow", "source": {"namespaceSelector": "projectcalico.org/name == 'monitoring'"}},
            ]})],
            cases: vec![
                case("monitoring/grafana", "prod/db", "tcp", 1, true),
                case("dev/web", "prod/db", "tcp", 1, false),
            ],
        },
        Table {
            name: "ICMP type and code",
            tiers: vec![],
            policies: vec![
                json!({"name": "icmp", "selector": "app == 'db'", "ingress": [
                    {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}},
                    {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 3, "code": 4}},
                ]}),
            ],
            cases: vec![
                case("dev/web", "prod/db", "icmp:8:0", 0, true),
                case("dev/web", "prod/db", "icmp:3:4", 0, true),
                case("dev/web", "prod/db", "icmp:3:1", 0, false),
                case("dev/web", "prod/db", "icmp:0:0", 0, false),
                case("dev/web", "prod/db", "tcp", 8, false),
            ],
        },
        Table {
            name: "notICMP and notProtocol",
            tiers: vec![],
            policies: vec![
                json!({"name": "not", "selector": "app == 'db'", "ingress": [
                    {"action": "Deny", "protocol": "ICMP", "notICMP": {"type": 8}},
                    {"action": "Allow", "notProtocol": "TCP"},
                ]}),
            ],
            cases: vec![
                case("dev/web", "prod/db", "icmp:8:0", 0, true),
                case("dev/web", "prod/db", "icmp:0:0", 0, false),
                case("dev/web", "prod/db", "udp", 53, true),
                case("dev/web", "prod/db", "tcp", 53, false),
            ],
        },
        Table {
            name: "protocol numbers",
            tiers: vec![],
            policies: vec![
                json!({"name": "gre", "selector": "app == 'db'", "ingress": [
                    {"action": "Allow", "protocol": 47},
                    {"action": "Allow", "protocol": "sctp", "destination": {"ports": [3868]}},
                ]}),
            ],
            cases: vec![
                case("dev/web", "prod/db", "47", 0, true),
                case("dev/web", "prod/db", "4", 0, false),
                case("dev/web", "prod/db", "132", 3868, true),
                case("dev/web", "prod/db", "sctp", 3869, false),
            ],
        },
        Table {
            name: "port ranges, notPorts and source ports",
            tiers: vec![],
            policies: vec![
                json!({"name": "ports", "selector": "app == 'db'", "ingress": [
                    {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["8000:8080"], "notPorts": [8008]}},
                    {"action": "Allow", "protocol": "UDP", "source": {"ports": ["40000:40010"]}},
                ]}),
            ],
            cases: vec![
                case("dev/web", "prod/db", "tcp", 8000, true),
                case("dev/web", "prod/db", "tcp", 8080, true),
                case("dev/web", "prod/db", "tcp", 8008, false),
                case("dev/web", "prod/db", "tcp", 8081, false),
                // The test packets use source port 40000.
                case("dev/web", "prod/db", "udp", 9999, true),
            ],
        },
        Table {
            name: "ipVersion and nets families",
            tiers: vec![],
            policies: vec![
                json!({"name": "v6-only", "selector": "app == 'db'", "ingress": [
                    {"action": "Allow", "ipVersion": 6},
                    {"action": "Allow", "source": {"notNets": ["2001:db8::/32"]}},
                ]}),
            ],
            cases: vec![
                // A rule with only IPv6 CIDRs never matches IPv4.
                case("dev/web", "prod/db", "tcp", 1, false),
            ],
        },
        Table {
            name: "nets and notNets",
            tiers: vec![],
            policies: vec![
                json!({"name": "nets", "selector": "app == 'db'", "ingress": [
                    {"action": "Allow", "source": {"nets": ["10.0.0.0/16", "203.0.113.0/24"], "notNets": ["10.0.1.0/24"]}},
                ]}),
            ],
            cases: vec![
                case("prod/web", "prod/db", "tcp", 1, true),
                case("203.0.113.5", "prod/db", "tcp", 1, true),
                case("dev/web", "prod/db", "tcp", 1, false),
                case("8.8.8.8", "prod/db", "tcp", 1, false),
            ],
        },
        Table {
            name: "serviceAccounts in rules and serviceAccountSelector on the policy",
            tiers: vec![],
            policies: vec![
                json!({"name": "by-sa", "namespace": "prod", "serviceAccountSelector": "role == 'database'", "ingress": [
                    {"action": "Allow", "source": {"serviceAccounts": {"names": ["web"]}}},
                ]}),
            ],
            cases: vec![
                case("prod/web", "prod/db", "tcp", 5432, true),
                case("prod/db", "prod/db", "tcp", 5432, false),
                case("dev/web", "prod/db", "tcp", 5432, false),
                // prod/web's SA has no labels: the policy does not select it.
                case("dev/web", "prod/web", "tcp", 80, true),
            ],
        },
        Table {
            name: "global policy namespaceSelector restricts the endpoints it applies to",
            tiers: vec![],
            policies: vec![
                json!({"name": "dev-lockdown", "namespaceSelector": "env == 'dev'", "ingress": []}),
            ],
            cases: vec![
                case("prod/web", "dev/web", "tcp", 80, false),
                case("prod/web", "prod/db", "tcp", 80, true),
                case("prod/web", "host1", "tcp", 22, true),
            ],
        },
        Table {
            name: "host endpoint policy",
            tiers: vec![],
            policies: vec![
                json!({"name": "ssh-only", "selector": "has(node)", "ingress": [
                {"action": "Allow", "protocol": "TCP", "destination": {"ports": [22]}},
            ], "egress": [{"action": "Allow"}]}),
            ],
            cases: vec![
                case("203.0.113.5", "host1", "tcp", 22, true),
                case("203.0.113.5", "host1", "tcp", 80, false),
                case("host1", "8.8.8.8", "udp", 53, true),
            ],
        },
        Table {
            name: "GNP namespaceSelector global() applies to host endpoints only",
            tiers: vec![],
            policies: vec![
                json!({"name": "hosts-only", "namespaceSelector": "global()", "ingress": [
                    {"action": "Allow", "protocol": "TCP", "destination": {"ports": [22]}},
                ]}),
            ],
            cases: vec![
                case("203.0.113.5", "host1", "tcp", 22, true),
                case("203.0.113.5", "host1", "tcp", 23, false),
                case("203.0.113.5", "prod/web", "tcp", 23, true),
            ],
        },
        Table {
            name: "serviceAccounts selector in a global rule, with namespaceSelector",
            tiers: vec![],
            policies: vec![
                json!({"name": "db-clients", "selector": "app == 'db'", "ingress": [
                    {"action": "Allow", "source": {
                        "namespaceSelector": "env == 'prod'",
                        "serviceAccounts": {"selector": "role == 'database'"},
                    }},
                ]}),
            ],
            cases: vec![
                // Only prod/db runs as an SA labelled role=database.
                case("prod/db", "dev/db", "tcp", 5432, true),
                case("prod/web", "dev/db", "tcp", 5432, false),
                case("172.16.0.1", "dev/db", "tcp", 5432, false),
            ],
        },
        Table {
            name: "GNP rule selector with namespaceSelector: AND of both",
            tiers: vec![],
            policies: vec![
                json!({"name": "web-in-prod", "selector": "app == 'db'", "ingress": [
                    {"action": "Allow", "source": {"namespaceSelector": "env == 'prod'", "selector": "app == 'web'"}},
                ]}),
            ],
            cases: vec![
                case("prod/web", "dev/db", "tcp", 1, true),
                case("dev/web", "dev/db", "tcp", 1, false),
                case("prod/db", "dev/db", "tcp", 1, false),
            ],
        },
        Table {
            name: "ICMPv6 and UDPLite by name",
            tiers: vec![],
            policies: vec![json!({"name": "v6", "selector": "has(node)", "ingress": [
                {"action": "Allow", "protocol": "ICMPv6", "icmp": {"type": 128}},
                {"action": "Allow", "protocol": "UDPLite", "destination": {"ports": [5000]}},
            ]})],
            cases: vec![
                case("203.0.113.5", "host1", "icmp:8:0", 0, false),
                case("203.0.113.5", "host1", "136", 5000, true),
                case("203.0.113.5", "host1", "udp", 5000, false),
            ],
        },
        Table {
            name: "deny in an earlier policy of the same tier wins; Log does not stop it",
            tiers: vec![],
            policies: vec![
                json!({"name": "a", "order": 1, "selector": "app == 'web'", "ingress": [
                    {"action": "Log", "source": {"nets": ["0.0.0.0/0"]}},
                    {"action": "Deny", "source": {"notNets": ["10.0.0.0/8"]}},
                ]}),
                json!({"name": "b", "order": 2, "selector": "app == 'web'", "ingress": [{"action": "Allow"}]}),
            ],
            cases: vec![
                case("8.8.8.8", "prod/web", "tcp", 80, false),
                case("dev/db", "prod/web", "tcp", 80, true),
            ],
        },
        Table {
            name: "types defaulting: egress-only rules make an egress-only policy",
            tiers: vec![],
            policies: vec![
                json!({"name": "egress-only", "selector": "app == 'web'", "egress": [
                    {"action": "Allow", "destination": {"nets": ["8.8.8.8/32"]}},
                ]}),
            ],
            cases: vec![
                case("prod/web", "8.8.8.8", "udp", 53, true),
                case("prod/web", "8.8.4.4", "udp", 53, false),
                case("dev/db", "prod/web", "tcp", 80, true),
            ],
        },
    ]
}

#[test]
fn calico_policy_tables() {
    for table in tables() {
        let set = with(&table.tiers, &table.policies);
        check(table.name, &set, &table.cases);
    }
}

#[test]
fn no_policy_means_profiles_decide() {
    let set = cluster();
    let t = trace(&set, "dev/web", "prod/db", "tcp", 5432);
    assert_eq!(t.verdict, Verdict::Allow);
    let egress = t.egress.unwrap();
    assert!(egress.is_profile_only());
    assert_eq!(
        egress.decided_by,
        Decision::Rule {
            rule: RuleRef::Profile {
                profile: "kns.dev".to_string(),
                index: 0
            },
            action: Action::Allow
        }
    );
    assert_eq!(t.ingress.unwrap().endpoint, "prod/db");
}

#[test]
fn endpoint_without_profiles_is_denied() {
    let mut set = cluster();
    let mut naked = set.endpoints[0].clone();
    naked.name = "naked".to_string();
    naked.profiles.clear();
    naked.ips = vec!["10.0.0.99/32".parse().unwrap()];
    set.add_endpoint(naked);
    let t = trace(&set, "8.8.8.8", "prod/naked", "tcp", 80);
    assert_eq!(t.verdict, Verdict::Deny);
    assert_eq!(t.ingress.unwrap().decided_by, Decision::NoProfileMatched);
}

#[test]
fn outside_ends_have_no_side() {
    let set = cluster();
    let t = trace(&set, "8.8.8.8", "203.0.113.5", "tcp", 80);
    assert_eq!(t.verdict, Verdict::Allow);
    assert!(t.egress.is_none() && t.ingress.is_none());
    let t = trace(&set, "8.8.8.8", "prod/web", "tcp", 80);
    assert!(t.egress.is_none() && t.ingress.is_some());
}

#[test]
fn profiles_in_order_first_match_wins_and_missing_ones_are_skipped() {
    let mut set = cluster();
    let mut deny = Profile::allow_all("deny-udp");
    deny.ingress = vec![policy_rule_json(
        json!({"action": "Deny", "protocol": "UDP"}),
    )];
    set.add_profile(deny);
    let web = set
        .endpoints
        .iter_mut()
        .find(|e| e.name == "web" && e.namespace.as_deref() == Some("prod"))
        .unwrap();
    web.profiles = vec![
        "ghost".to_string(),
        "deny-udp".to_string(),
        "kns.prod".to_string(),
    ];
    let t = trace(&set, "dev/web", "prod/web", "udp", 53);
    assert_eq!(t.verdict, Verdict::Deny);
    let ingress = t.ingress.unwrap();
    assert_eq!(
        ingress.steps,
        vec![Step::MissingProfile {
            profile: "ghost".to_string()
        }]
    );
    assert_eq!(
        ingress.decided_by,
        Decision::Rule {
            rule: RuleRef::Profile {
                profile: "deny-udp".to_string(),
                index: 0
            },
            action: Action::Deny
        }
    );
    assert_eq!(
        trace(&set, "dev/web", "prod/web", "tcp", 53).verdict,
        Verdict::Allow
    );
}

fn policy_rule_json(value: serde_json::Value) -> felis_policy::Rule {
    serde_json::from_value(value).unwrap()
}

#[test]
fn profile_labels_are_inherited_and_endpoint_labels_win() {
    let mut set = cluster();
    let mut profile = Profile::allow_all("kns.prod");
    profile.labels_to_apply = common::labels(&[("pcns.env", "prod"), ("app", "from-profile")]);
    set.add_profile(profile);
    set.add_policy(policy(
        json!({"name": "inherit", "selector": "pcns.env == 'prod'", "ingress": [
            {"action": "Allow", "source": {"selector": "app == 'from-profile'"}},
        ]}),
    ));
    // prod/db is selected through the inherited label; prod/web's own app label wins.
    check(
        "inherit",
        &set,
        &[
            case("dev/web", "prod/db", "tcp", 1, false),
            case("prod/web", "prod/db", "tcp", 1, false),
            case("dev/web", "dev/db", "tcp", 1, true),
        ],
    );
    let db = common::endpoint(&set, "prod/db");
    let labels = set.effective_labels(db);
    assert_eq!(labels.get("app").map(String::as_str), Some("db"));
    assert_eq!(labels.get("pcns.env").map(String::as_str), Some("prod"));
    assert_eq!(
        labels
            .get("projectcalico.org/namespace")
            .map(String::as_str),
        Some("prod")
    );
    assert_eq!(
        labels
            .get("projectcalico.org/serviceaccount")
            .map(String::as_str),
        Some("db")
    );
}

#[test]
fn trace_records_log_and_pass_steps_and_the_deciding_rule() {
    let set = with(
        &[tier("security", Some(100.0), TierDefaultAction::Deny)],
        &[
            json!({"name": "security.log-pass", "tier": "security", "ingress": [{"action": "Log"}, {"action": "Pass"}]}),
            json!({"name": "np", "namespace": "prod", "order": 5, "ingress": [{"action": "Log"}, {"action": "Allow", "protocol": "TCP"}]}),
        ],
    );
    let t = trace(&set, "dev/web", "prod/db", "tcp", 5432);
    assert_eq!(t.verdict, Verdict::Allow);
    let ingress = t.ingress.unwrap();
    assert_eq!(
        ingress.tiers,
        vec!["security".to_string(), "default".to_string()]
    );
    assert_eq!(
        ingress.steps,
        vec![
            Step::Log(policy_rule("security", None, "security.log-pass", 0)),
            Step::Pass(policy_rule("security", None, "security.log-pass", 1)),
            Step::Log(policy_rule("default", Some("prod"), "np", 0)),
        ]
    );
    assert_eq!(
        ingress.decided_by,
        Decision::Rule {
            rule: policy_rule("default", Some("prod"), "np", 1),
            action: Action::Allow
        }
    );
    // UDP: nothing in the default tier matched → end of tier drop.
    let t = trace(&set, "dev/web", "prod/db", "udp", 53);
    assert_eq!(
        t.ingress.unwrap().decided_by,
        Decision::EndOfTier {
            tier: "default".to_string()
        }
    );
    // The trace serializes for `felis policy trace -o json`.
    let json = serde_json::to_value(&t.egress).unwrap();
    assert_eq!(json["verdict"], "Allow");
}

#[test]
fn applicable_tiers_are_ordered_and_filtered_by_direction() {
    let set = with(
        &[
            tier("security", Some(100.0), TierDefaultAction::Deny),
            tier("late", None, TierDefaultAction::Deny),
        ],
        &[
            json!({"name": "late.x", "tier": "late", "ingress": []}),
            json!({"name": "b", "order": 2, "ingress": []}),
            json!({"name": "a", "order": 2, "ingress": []}),
            json!({"name": "security.egress", "tier": "security", "types": ["Egress"]}),
            json!({"name": "security.ingress", "tier": "security", "selector": "app == 'web'"}),
        ],
    );
    let db = common::endpoint(&set, "prod/db");
    let ingress = set.applicable_tiers(db, Direction::Ingress);
    let names: Vec<(&str, Vec<&str>)> = ingress
        .iter()
        .map(|t| {
            (
                t.tier.name.as_str(),
                t.policies.iter().map(|p| p.name.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![("default", vec!["a", "b"]), ("late", vec!["late.x"])]
    );
    let egress = set.applicable_tiers(db, Direction::Egress);
    assert_eq!(egress.len(), 1);
    assert_eq!(egress[0].tier.name, "security");
}

#[test]
fn ipv6_packets_match_v6_network_sets() {
    let mut set = cluster();
    let mut db = common::endpoint(&set, "prod/db").clone();
    db.name = "db6".to_string();
    db.ips = vec!["fd00::2/128".parse().unwrap()];
    set.add_endpoint(db);
    set.add_policy(policy(
        json!({"name": "v6", "selector": "app == 'db'", "ingress": [
            {"action": "Allow", "ipVersion": 6, "source": {"selector": "trust == 'yes'"}},
        ]}),
    ));
    check(
        "v6",
        &set,
        &[
            case("2001:db8::1", "prod/db6", "tcp", 1, true),
            case("2001:db9::1", "prod/db6", "tcp", 1, false),
        ],
    );
    assert_eq!(
        trace(&set, "2001:db8::1", "prod/db6", "icmp:128:0", 0)
            .ingress
            .unwrap()
            .verdict,
        Verdict::Allow
    );
}

#[test]
fn trace_displays_one_line_per_side() {
    let set = with(
        &[tier("security", Some(100.0), TierDefaultAction::Deny)],
        &[
            json!({"name": "security.log-pass", "tier": "security", "ingress": [{"action": "Log"}, {"action": "Pass"}]}),
        ],
    );
    let t = trace(&set, "dev/web", "prod/db", "tcp", 5432);
    assert_eq!(
        t.to_string(),
        "egress  dev/web: allow (Allow by profile kns.dev rule 0); no policy applies\n\
         ingress prod/db: allow (Allow by profile kns.prod rule 0); tiers security; \
         log at tier security policy security.log-pass rule 0; \
         pass at tier security policy security.log-pass rule 1\n\
         verdict allow"
    );
    let t = trace(&set, "8.8.8.8", "203.0.113.5", "udp", 53);
    assert!(
        t.to_string()
            .starts_with("egress  (source outside the cluster)\n")
    );
}

#[test]
fn equal_order_ties_break_on_namespace_slash_name() {
    // "prod/a-allow" sorts after "b-deny" (GNP), so the GNP decides first.
    let set = with(
        &[],
        &[
            json!({"name": "a-allow", "namespace": "prod", "order": 10, "ingress": [{"action": "Allow"}]}),
            json!({"name": "b-deny", "order": 10, "ingress": [{"action": "Deny"}]}),
            json!({"name": "q-allow", "order": 10, "ingress": [{"action": "Allow"}]}),
        ],
    );
    let t = trace(&set, "dev/web", "prod/db", "tcp", 1);
    assert_eq!(
        t.ingress.unwrap().decided_by,
        Decision::Rule {
            rule: policy_rule("default", None, "b-deny", 0),
            action: Action::Deny
        }
    );
    let db = common::endpoint(&set, "prod/db");
    let order: Vec<String> = set.applicable_tiers(db, Direction::Ingress)[0]
        .policies
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(order, vec!["b-deny", "a-allow", "q-allow"]);
}
