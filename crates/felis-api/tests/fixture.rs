//! The realistic cluster manifest parses, fills defaults and round-trips.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::collections::BTreeMap;

use felis_api::EncapMode;
use felis_api::Kind;
use felis_api::Resource;
use felis_api::load::parse_documents;
use felis_api::policy::PolicyType;

const CLUSTER: &str = include_str!("fixtures/cluster.yaml");

fn cluster() -> Vec<Resource> {
    match parse_documents(CLUSTER, Some("staging")) {
        Ok(r) => r,
        Err(e) => panic!("fixture does not parse: {e}"),
    }
}

#[test]
fn fixture_parses_every_kind() {
    let resources = cluster();
    let mut counts: BTreeMap<Kind, usize> = BTreeMap::new();
    for r in &resources {
        *counts.entry(r.kind()).or_default() += 1;
    }
    for kind in Kind::all() {
        assert!(counts.contains_key(kind), "fixture has no {kind}");
    }
    assert_eq!(counts[&Kind::IpPool], 4);
    assert_eq!(counts[&Kind::NetworkPolicy], 3);
    assert_eq!(resources.len(), 34);
}

#[test]
fn fixture_round_trips_through_to_value() {
    for r in cluster() {
        let v = r.to_value();
        let again = Resource::from_value(v.clone())
            .unwrap_or_else(|e| panic!("{} {} does not re-parse: {e}\n{v:#}", r.kind(), r.name()));
        assert_eq!(
            again,
            r,
            "{} {} changed in a round trip",
            r.kind(),
            r.name()
        );
        assert_eq!(again.to_value(), v);
    }
}

#[test]
fn fixture_round_trips_through_json_text() {
    let values: Vec<serde_json::Value> = cluster().iter().map(Resource::to_value).collect();
    let text = serde_json::to_string_pretty(&values).unwrap();
    let again = parse_documents(&text, None).unwrap();
    assert_eq!(again, cluster());
}

#[test]
fn fixture_defaults_are_filled() {
    let resources = cluster();
    let find = |kind: Kind, name: &str| {
        resources
            .iter()
            .find(|r| r.kind() == kind && r.name() == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let Resource::IpPool(v6) = find(Kind::IpPool, "default-ipv6-ippool") else {
        panic!()
    };
    assert_eq!(v6.spec.block_size, Some(122));
    assert_eq!(v6.spec.ipip_mode, EncapMode::Never);
    assert_eq!(v6.spec.node_selector, "all()");
    let v = find(Kind::IpPool, "default-ipv6-ippool").to_value();
    assert_eq!(
        v["spec"]["allowedUses"],
        serde_json::json!(["Workload", "Tunnel"])
    );

    let Resource::NetworkPolicy(egress) = find(Kind::NetworkPolicy, "egress-only") else {
        panic!()
    };
    assert_eq!(egress.spec.types, vec![PolicyType::Egress]);
    assert_eq!(egress.spec.tier, "default");
    assert_eq!(egress.metadata.namespace.as_deref(), Some("staging"));

    let Resource::GlobalNetworkPolicy(dns) = find(Kind::GlobalNetworkPolicy, "untracked-dns")
    else {
        panic!()
    };
    assert_eq!(
        dns.spec.types,
        vec![PolicyType::Ingress, PolicyType::Egress]
    );

    let fc = find(Kind::FelixConfiguration, "default").to_value();
    assert_eq!(
        fc["spec"]["featureDetectOverride"],
        "ChecksumOffloadBroken=true"
    );
    assert_eq!(fc["spec"]["reportingInterval"], "0s");
}

#[test]
fn fixture_keys_follow_calico_layout() {
    let resources = cluster();
    let keys: Vec<String> = resources.iter().map(Resource::key).collect();
    assert!(keys.contains(
        &"/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool".to_string()
    ));
    assert!(keys.contains(
        &"/calico/resources/v3/projectcalico.org/networkpolicies/production/platform.everything"
            .to_string()
    ));
    assert!(keys.contains(
        &"/calico/resources/v3/networking.k8s.io/networkpolicies/production/allow-frontend-to-db"
            .to_string()
    ));
    assert!(keys.contains(&"/calico/resources/v3/core/namespaces/production".to_string()));
}

#[test]
fn fixture_round_trips_through_yaml_text() {
    let mut text = String::new();
    for r in cluster() {
        text.push_str("---\n");
        text.push_str(&serde_saphyr::to_string(&r.to_value()).unwrap());
    }
    let again = parse_documents(&text, None).unwrap();
    assert_eq!(again, cluster());
}

#[test]
fn yaml_look_alike_strings_survive_a_yaml_round_trip() {
    let v = serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkSet",
        "metadata": {"name": "s", "namespace": "ns", "labels": {
            "a": "true", "b": "y", "c": "n", "d": "no", "e": "on", "f": "1", "g": "1.5",
            "h": "null", "i": "0x10", "j": "1e3", "k": "12_3", "l": "Off"}}});
    let r = Resource::from_value(v).unwrap();
    let text = serde_saphyr::to_string(&r.to_value()).unwrap();
    let again = parse_documents(&text, None).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(again[0], r, "{text}");
}
