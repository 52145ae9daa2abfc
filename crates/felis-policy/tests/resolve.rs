//! Resolving rule selectors to IP sets (what a rule compiler needs), and a property: a rule
//! evaluated packet by packet agrees with the same rule checked against its resolved sets.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use common::cluster;
use felis_api::selector::Selector;
use felis_policy::Action;
use felis_policy::EntityRule;
use felis_policy::NamedPortMember;
use felis_policy::Packet;
use felis_policy::Port;
use felis_policy::Protocol;
use felis_policy::ResolvedEntity;
use felis_policy::Rule;
use felis_policy::ServiceAccountMatch;
use ipnet::IpNet;
use proptest::prelude::*;

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn entity(value: serde_json::Value) -> EntityRule {
    serde_json::from_value(value).unwrap()
}

#[test]
fn no_selector_resolves_to_no_restriction() {
    let set = cluster();
    let resolved = set.resolve_entity(&EntityRule::default(), Some("prod"));
    assert_eq!(resolved, ResolvedEntity::default());
}

#[test]
fn namespaced_selector_resolves_within_the_namespace() {
    let set = cluster();
    let e = entity(serde_json::json!({"selector": "all()"}));
    let resolved = set.resolve_entity(&e, Some("prod"));
    assert_eq!(
        resolved.selected,
        Some(nets(&["10.0.0.1/32", "10.0.0.2/32", "172.16.0.0/16"]))
    );
    let global = set.resolve_entity(&e, None);
    assert_eq!(global.selected.unwrap().len(), 10);
}

#[test]
fn global_namespace_selector_resolves_to_non_namespaced_objects() {
    let set = cluster();
    let e = entity(serde_json::json!({"namespaceSelector": "global()"}));
    let resolved = set.resolve_entity(&e, Some("prod"));
    assert_eq!(
        resolved.selected,
        Some(nets(&[
            "192.168.0.10/32",
            "198.51.100.0/24",
            "2001:db8::/32"
        ]))
    );
}

#[test]
fn not_selector_resolves_to_excluded_addresses() {
    let set = cluster();
    let e = entity(serde_json::json!({"notSelector": "app == 'web'"}));
    assert_eq!(
        set.resolve_entity(&e, None).excluded,
        nets(&["10.0.0.1/32", "10.0.1.1/32"])
    );
    assert_eq!(
        set.resolve_entity(&e, Some("dev")).excluded,
        nets(&["10.0.1.1/32"])
    );
}

#[test]
fn named_ports_resolve_to_address_protocol_port_members() {
    let set = cluster();
    let e = EntityRule {
        ports: vec![Port::Named("postgres".to_string())],
        ..EntityRule::default()
    };
    let resolved = set.resolve_entity(&e, Some("prod"));
    assert_eq!(
        resolved.named_ports["postgres"],
        vec![NamedPortMember {
            net: "10.0.0.2/32".parse().unwrap(),
            protocol: Protocol::TCP,
            port: 5432
        }]
    );
    let e = EntityRule {
        selector: Some(Selector::parse("app == 'web'").unwrap()),
        ports: vec![Port::Named("postgres".to_string())],
        ..EntityRule::default()
    };
    assert!(set.resolve_entity(&e, Some("prod")).named_ports["postgres"].is_empty());
}

#[test]
fn service_accounts_resolve_to_pods_only() {
    let set = cluster();
    let e = EntityRule {
        service_accounts: Some(ServiceAccountMatch {
            names: vec!["default".to_string()],
            selector: None,
        }),
        namespace_selector: Some(Selector::parse("all()").unwrap()),
        ..EntityRule::default()
    };
    assert_eq!(
        set.resolve_entity(&e, Some("prod")).selected,
        Some(nets(&["10.0.1.1/32", "10.0.1.2/32", "10.0.2.2/32"]))
    );
}

// ---- property: evaluation == resolved sets ----

const SELECTORS: &[&str] = &[
    "all()",
    "app == 'web'",
    "app in {'db', 'prometheus'}",
    "!has(app)",
    "has(node) || trust == 'yes'",
    "role == 'partner'",
    "projectcalico.org/namespace != 'prod'",
];
const NAMESPACE_SELECTORS: &[&str] = &[
    "global()",
    "env == 'prod'",
    "team == 'ops'",
    "all()",
    "!has(env)",
];
const ADDRESSES: &[&str] = &[
    "10.0.0.1",
    "10.0.0.2",
    "10.0.1.1",
    "10.0.1.2",
    "10.0.2.1",
    "10.0.2.2",
    "192.168.0.10",
    "172.16.4.4",
    "198.51.100.9",
    "8.8.8.8",
    "2001:db8::5",
    "fd00::9",
];

fn arb_selector(list: &'static [&'static str]) -> impl Strategy<Value = Option<Selector>> {
    prop::option::of(prop::sample::select(list).prop_map(|s| Selector::parse(s).unwrap()))
}

fn arb_entity() -> impl Strategy<Value = EntityRule> {
    (
        arb_selector(SELECTORS),
        arb_selector(SELECTORS),
        arb_selector(NAMESPACE_SELECTORS),
        prop::option::of(prop::sample::select(
            &["postgres", "http", "8080", "5000:6000"][..],
        )),
        any::<bool>(),
        prop::option::of(prop::sample::select(&["default", "web", "db"][..])),
    )
        .prop_map(
            |(selector, not_selector, namespace_selector, port, negate_port, sa)| {
                let ports: Vec<Port> = port.map(|p| p.parse().unwrap()).into_iter().collect();
                let (ports, not_ports) = if negate_port {
                    (Vec::new(), ports)
                } else {
                    (ports, Vec::new())
                };
                EntityRule {
                    selector,
                    not_selector,
                    namespace_selector,
                    ports,
                    not_ports,
                    service_accounts: sa.map(|n| ServiceAccountMatch {
                        names: vec![n.to_string()],
                        selector: None,
                    }),
                    ..EntityRule::default()
                }
            },
        )
}

fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

/// What a compiled rule would do with the resolved sets.
fn matches_resolved(
    entity: &EntityRule,
    resolved: &ResolvedEntity,
    ip: IpAddr,
    port: u16,
    protocol: Protocol,
) -> bool {
    if resolved.selected.as_ref().is_some_and(|s| !in_any(s, ip)) || in_any(&resolved.excluded, ip)
    {
        return false;
    }
    let port_matches = |entry: &Port| match entry {
        Port::Named(name) => resolved.named_ports[name]
            .iter()
            .any(|m| m.net.contains(&ip) && m.protocol == protocol && m.port == port),
        other => other.contains(port),
    };
    (entity.ports.is_empty() || entity.ports.iter().any(port_matches))
        && !entity.not_ports.iter().any(port_matches)
}

proptest! {
    #[test]
    fn evaluation_agrees_with_resolved_sets(
        entity in arb_entity(),
        is_source in any::<bool>(),
        policy_namespace in prop::option::of(prop::sample::select(&["prod", "dev", "monitoring"][..])),
        address in prop::sample::select(ADDRESSES),
        port in prop::sample::select(&[5432u16, 8080, 5500, 80][..]),
    ) {
        let set = cluster();
        let ip: IpAddr = address.parse().unwrap();
        let other: IpAddr = if ip.is_ipv4() { "203.0.113.1".parse().unwrap() } else { "2001:db9::1".parse().unwrap() };
        let mut rule = Rule::new(Action::Allow);
        let packet = if is_source {
            rule.source = entity.clone();
            Packet::tcp(ip, port, other, 1)
        } else {
            rule.destination = entity.clone();
            Packet::tcp(other, 1, ip, port)
        };
        let evaluated = set.rule_matches(&rule, policy_namespace, &packet);
        let resolved = set.resolve_entity(&entity, policy_namespace);
        prop_assert_eq!(evaluated, matches_resolved(&entity, &resolved, ip, port, Protocol::TCP), "{:?}", resolved);
    }
}

#[test]
fn namespace_selectors_never_reach_non_namespaced_objects() {
    let set = cluster();
    for source in ["all()", "!has(env)"] {
        let e = EntityRule {
            namespace_selector: Some(Selector::parse(source).unwrap()),
            ..EntityRule::default()
        };
        let selected = set.resolve_entity(&e, None).selected.unwrap();
        assert!(
            !selected.contains(&"192.168.0.10/32".parse().unwrap()),
            "{source}"
        );
        assert!(
            !selected.contains(&"198.51.100.0/24".parse().unwrap()),
            "{source}"
        );
    }
}
