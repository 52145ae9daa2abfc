//! `PolicySet::from_resources` over stored resources and `trace` as `felis policy trace` calls
//! it: conversion details, peer resolution, the exact `-o json` shape and the text form.

#![allow(clippy::unwrap_used)]

use felis_api::load::parse_documents;
use felis_policy::Error;
use felis_policy::PolicySet;
use felis_policy::Protocol;
use felis_policy::TierDefaultAction;
use felis_policy::trace::Peer;
use felis_policy::trace::Query;
use felis_policy::trace::trace;
use serde_json::json;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod}}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: node1-k8s-web--1-eth0, namespace: prod, labels: {app: web}}
spec:
  orchestrator: k8s
  node: node1
  pod: web-1
  endpoint: eth0
  serviceAccountName: frontend
  ipNetworks: [10.65.0.1/32, "fd00::1/128"]
  ports: [{name: http, protocol: TCP, port: 8080}, {protocol: TCP, port: 9000}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: node1-k8s-db-eth0, namespace: prod, labels: {app: db}}
spec: {orchestrator: k8s, node: node1, pod: db, endpoint: eth0, ipNetworks: [10.65.0.2/32]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: node1-k8s-x-eth0, namespace: other, labels: {app: x}}
spec: {orchestrator: k8s, node: node1, pod: x, endpoint: eth0, ipNetworks: [10.65.9.1/32], profiles: [kns.other]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node1-eth0, labels: {host: node1}}
spec: {node: node1, interfaceName: eth0, expectedIPs: [192.168.0.1], profiles: [projectcalico-default-allow]}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.no-ssh}
spec:
  tier: security
  selector: all()
  ingress: [{action: Deny, protocol: TCP, destination: {ports: [22]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: raw-thing}
spec: {selector: all(), doNotTrack: true, applyOnForward: true, ingress: [{action: Deny}]}
"#;

fn cluster() -> PolicySet {
    PolicySet::from_resources(&parse_documents(CLUSTER, None).unwrap()).unwrap()
}

fn tcp(from: &str, to: &str, port: u16) -> Query {
    Query::tcp(from.parse().unwrap(), to.parse().unwrap(), port)
}

#[test]
fn resources_convert_as_calico_does() {
    let set = cluster();
    let names: Vec<&str> = set.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["security.no-ssh", "knp.default.db", "raw-thing"]);
    let raw = &set.policies[2];
    assert!(raw.do_not_track && raw.apply_on_forward && !raw.pre_dnat);
    // Untracked policy never applies to workloads: only the normal stage does.
    let web = set
        .peer_endpoint(&"prod/web-1".parse().unwrap())
        .unwrap()
        .unwrap();
    let tiers = set.applicable_tiers(web, felis_policy::Direction::Ingress);
    assert!(
        tiers
            .iter()
            .flat_map(|t| &t.policies)
            .all(|p| p.name != "raw-thing")
    );
    let knp = &set.policies[1];
    assert_eq!(
        (knp.namespace.as_deref(), knp.order, knp.tier.as_str()),
        (Some("prod"), Some(1000.0), "default")
    );
    assert_eq!(
        set.tiers["security"].default_action,
        TierDefaultAction::Pass
    );

    let web = &set.endpoints[0];
    assert_eq!(web.profiles, ["kns.prod", "ksa.prod.frontend"]);
    assert_eq!(web.workload.as_deref(), Some("web-1"));
    assert_eq!(web.orchestrator.as_deref(), Some("k8s"));
    assert_eq!(web.service_account.as_deref(), Some("frontend"));
    assert_eq!(web.ports.len(), 1, "unnamed ports are not named ports");
    assert_eq!(web.ports[0].protocol, Protocol::TCP);
    let labels = set.effective_labels(web);
    assert_eq!(labels["pcns.env"], "prod");
    assert_eq!(labels["pcns.projectcalico.org/name"], "prod");
    assert_eq!(labels["pcsa.projectcalico.org/name"], "frontend");
    assert_eq!(labels["projectcalico.org/namespace"], "prod");
    assert_eq!(labels["projectcalico.org/orchestrator"], "k8s");

    // Synthesized: kns.prod from the Namespace, kns.other from an endpoint alone, ksa from the
    // service account, and Calico's default-allow profile.
    for name in [
        "kns.prod",
        "kns.other",
        "ksa.prod.frontend",
        "projectcalico-default-allow",
    ] {
        assert!(set.profiles.contains_key(name), "{name}");
    }
    assert!(set.namespaces.contains_key("other"));
    let host = &set.endpoints[3];
    assert_eq!(host.namespace, None);
    assert_eq!(host.ips, ["192.168.0.1/32".parse().unwrap()]);
}

#[test]
fn a_stored_namespace_profile_wins_and_names_the_namespace_labels() {
    let text = r#"
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.legacy}
spec:
  labelsToApply: {pcns.env: old, pcns.projectcalico.org/name: legacy}
  ingress: [{action: Deny}]
  egress: [{action: Allow}]
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: ksa.legacy.batch}
spec: {labelsToApply: {pcsa.role: batch}}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: n-k8s-a-eth0, namespace: legacy}
spec: {orchestrator: k8s, pod: a, serviceAccountName: batch, ipNetworks: [10.0.0.1/32], profiles: [kns.legacy]}
"#;
    let set = PolicySet::from_resources(&parse_documents(text, None).unwrap()).unwrap();
    assert_eq!(set.profiles["kns.legacy"].ingress.len(), 1);
    assert_eq!(
        set.namespaces["legacy"].labels,
        [("env".to_string(), "old".to_string())].into()
    );
    assert_eq!(set.service_accounts.len(), 1);
    assert_eq!(set.service_accounts[0].labels["role"], "batch");
    let report = trace(&set, &tcp("8.8.8.8", "legacy/a", 80)).unwrap();
    let ingress = report.ingress.unwrap();
    assert_eq!(ingress.profile.as_deref(), Some("kns.legacy"));
    assert_eq!(report.verdict, felis_policy::Verdict::Deny);
}

#[test]
fn json_report_has_the_shape_the_issue_specifies() {
    let set = cluster();
    let report = trace(&set, &tcp("prod/web-1", "prod/db", 5432)).unwrap();
    let value = serde_json::to_value(&report).unwrap();
    assert_eq!(value["verdict"], "allow");
    assert_eq!(
        value["egress"],
        json!({
            "verdict": "allow", "tier": null, "policy": null, "rule": 0,
            "reason": "no-policy-profile", "namespace": null, "profile": "kns.prod",
            "endpoint": "prod/node1-k8s-web--1-eth0", "tiers": [], "steps": [],
        })
    );
    assert_eq!(
        value["ingress"],
        json!({
            "verdict": "allow", "tier": "default", "policy": "knp.default.db", "rule": 0,
            "reason": "policy", "namespace": "prod", "profile": null,
            "endpoint": "prod/node1-k8s-db-eth0", "tiers": ["security", "default"],
            "steps": ["end of tier security passes"],
        })
    );
    assert_eq!(value["packet"]["srcIp"], "10.65.0.1");
    assert_eq!(value["packet"]["dstPort"], 5432);
    let back: felis_policy::trace::TraceReport = serde_json::from_value(value).unwrap();
    assert_eq!(back, report);

    let denied = trace(&set, &tcp("prod/web-1", "prod/db", 22)).unwrap();
    let value = serde_json::to_value(&denied).unwrap();
    assert_eq!(value["verdict"], "deny");
    assert_eq!(value["ingress"]["tier"], "security");
    assert_eq!(value["ingress"]["policy"], "security.no-ssh");
    assert_eq!(value["ingress"]["rule"], 0);

    let end_of_tier = trace(&set, &tcp("prod/web-1", "prod/db", 80)).unwrap();
    let value = serde_json::to_value(&end_of_tier).unwrap();
    assert_eq!(value["ingress"]["reason"], "end-of-tier");
    let reason = end_of_tier.ingress.as_ref().unwrap().reason;
    assert_eq!(value["ingress"]["reason"], reason.to_string());
    assert_eq!(value["ingress"]["tier"], "default");
    assert_eq!(value["ingress"]["policy"], serde_json::Value::Null);
    assert_eq!(value["ingress"]["rule"], serde_json::Value::Null);
}

#[test]
fn a_side_outside_the_cluster_is_null() {
    let set = cluster();
    let report = trace(&set, &tcp("prod/db", "203.0.113.1", 443)).unwrap();
    let value = serde_json::to_value(&report).unwrap();
    assert_eq!(value["ingress"], serde_json::Value::Null);
    assert_eq!(value["egress"]["verdict"], "allow");
    assert_eq!(value["packet"]["dstIp"], "203.0.113.1");
    let text = report.to_string();
    assert!(
        text.contains("destination 203.0.113.1 is outside the cluster"),
        "{text}"
    );
}

#[test]
fn text_report_names_what_decided_each_side() {
    let set = cluster();
    let text = trace(&set, &tcp("prod/web-1", "prod/db", 22))
        .unwrap()
        .to_string();
    assert_eq!(
        text,
        "prod/web-1 -> prod/db: TCP 10.65.0.1 -> 10.65.0.2 port 22\n  \
         egress  prod/node1-k8s-web--1-eth0 allow: no policy, profile allow (kns.prod, rule 0)\n  \
         ingress prod/node1-k8s-db-eth0 deny: tier security, global policy security.no-ssh, rule 0\n\
         verdict: deny"
    );
    let text = trace(&set, &tcp("prod/web-1", "prod/db", 80))
        .unwrap()
        .to_string();
    assert!(
        text.contains(
            "end of tier default (no rule matched, default Deny)\n    end of tier security passes"
        ),
        "{text}"
    );
}

#[test]
fn peers_resolve_by_endpoint_name_pod_name_and_address() {
    let set = cluster();
    for peer in [
        "prod/node1-k8s-web--1-eth0",
        "prod/web-1",
        "10.65.0.1",
        "fd00::1",
    ] {
        let endpoint = set.peer_endpoint(&peer.parse().unwrap()).unwrap();
        assert_eq!(
            endpoint.map(|e| e.name.as_str()),
            Some("node1-k8s-web--1-eth0"),
            "{peer}"
        );
    }
    let host = set.peer_endpoint(&"192.168.0.1".parse().unwrap()).unwrap();
    assert_eq!(host.map(|e| e.name.as_str()), Some("node1-eth0"));
    assert_eq!(
        set.peer_endpoint(&"8.8.8.8".parse().unwrap()).unwrap(),
        None
    );
    assert_eq!(
        "web".parse::<Peer>().unwrap(),
        Peer::Workload {
            namespace: "default".to_string(),
            name: "web".to_string()
        }
    );
    for bad in ["", "a/b/c", "prod/", "/web", "prod/we b"] {
        assert!(
            matches!(bad.parse::<Peer>(), Err(Error::InvalidPeer(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn unknown_workloads_and_impossible_queries_are_clear_errors() {
    let set = cluster();
    let err = trace(&set, &tcp("prod/nope", "prod/db", 80)).unwrap_err();
    assert!(matches!(err, Error::UnknownWorkload { .. }));
    assert_eq!(
        err.to_string(),
        "no workload endpoint prod/nope (by endpoint, pod or workload name)"
    );
    let err = trace(&set, &tcp("1.1.1.1", "8.8.8.8", 80)).unwrap_err();
    assert!(matches!(err, Error::NoEndpoint { .. }), "{err}");
    let err = trace(&set, &tcp("prod/db", "fd00::9", 80)).unwrap_err();
    assert!(
        err.to_string()
            .contains("prod/node1-k8s-db-eth0 has no IPv6"),
        "{err}"
    );
    let err = trace(&set, &tcp("10.0.0.1", "fd00::1", 80)).unwrap_err();
    assert!(matches!(err, Error::MixedFamilies { .. }), "{err}");
    let bad_queries = [
        (
            Query::from_args("prod/db", "prod/web-1", "TCP", None, None, None),
            "needs a port",
        ),
        (
            Query::from_args("prod/db", "prod/web-1", "ICMP", Some(1), None, None),
            "has no ports",
        ),
        (
            Query::from_args("prod/db", "prod/web-1", "UDP", Some(1), Some(8), None),
            "ICMP type",
        ),
        (
            Query::from_args("prod/db", "prod/web-1", "ICMP", None, None, Some(0)),
            "needs an ICMP type",
        ),
    ];
    for (query, expected) in bad_queries {
        let err = trace(&set, &query.unwrap()).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
    let err = Query::from_args("prod/db", "prod/web-1", "GRE", None, None, None).unwrap_err();
    assert!(err.to_string().contains("\"GRE\""), "{err}");
}

#[test]
fn icmpv6_and_ipv6_queries_use_ipv6_addresses() {
    let set = cluster();
    let query = Query {
        protocol: Protocol::ICMPV6,
        port: None,
        icmp_type: Some(128),
        icmp_code: Some(0),
        ..tcp("prod/web-1", "prod/web-1", 0)
    };
    let report = trace(&set, &query).unwrap();
    assert_eq!(
        report.packet.src_ip,
        "fd00::1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(report.packet.dst_port, None);
    assert_eq!(report.packet.icmp_type, Some(128));
    let report = trace(&set, &tcp("fd00::5", "prod/web-1", 80)).unwrap();
    assert_eq!(
        report.packet.dst_ip,
        "fd00::1".parse::<std::net::IpAddr>().unwrap()
    );
}

#[test]
fn service_matches_are_refused_with_the_field_named() {
    let text = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: svc, namespace: prod}
spec:
  egress: [{action: Allow, destination: {services: {name: kubernetes, namespace: default}}}]
"#;
    let err = PolicySet::from_resources(&parse_documents(text, None).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid spec.egress[0].destination.services of NetworkPolicy prod/svc: Service matches \
         are not supported by Felis policy"
    );
}
