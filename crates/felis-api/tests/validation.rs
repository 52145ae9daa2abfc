//! Defaulting and validation, one claim per test; each error names its field path.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers

use felis_api::Resource;
use felis_api::ValidationError;
use serde_json::Value;
use serde_json::json;

fn parse(v: Value) -> Result<Resource, ValidationError> {
    Resource::from_value(v)
}

fn error(v: Value) -> ValidationError {
    match parse(v) {
        Ok(r) => panic!("expected an error, got {r:?}"),
        Err(e) => e,
    }
}

fn pool(spec: Value) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
           "metadata": {"name": "p"}, "spec": spec})
}

fn gnp(spec: Value) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
           "metadata": {"name": "p"}, "spec": spec})
}

fn ingress(rule: Value) -> Value {
    gnp(json!({"ingress": [rule]}))
}

fn assert_error(v: Value, path: &str, reason_contains: &str) {
    let e = error(v);
    assert_eq!(e.path, path, "wrong path for {e}");
    assert!(
        e.reason.contains(reason_contains),
        "{e:?} does not mention {reason_contains:?}"
    );
}

// ---- IPPool ----

#[test]
fn ipv4_pool_defaults_like_calico() {
    let r = parse(pool(json!({"cidr": "10.1.2.3/16"}))).unwrap();
    let v = r.to_value();
    assert_eq!(v["spec"]["cidr"], "10.1.0.0/16");
    assert_eq!(v["spec"]["blockSize"], 26);
    assert_eq!(v["spec"]["ipipMode"], "Never");
    assert_eq!(v["spec"]["vxlanMode"], "Never");
    assert_eq!(v["spec"]["nodeSelector"], "all()");
    assert_eq!(v["spec"]["allowedUses"], json!(["Workload", "Tunnel"]));
    assert!(
        v["spec"].get("natOutgoing").is_none(),
        "false is omitted like Calico"
    );
}

#[test]
fn ipv6_pool_defaults_to_block_122() {
    let r = parse(pool(json!({"cidr": "fd00::/48"}))).unwrap();
    assert_eq!(r.to_value()["spec"]["blockSize"], 122);
}

#[test]
fn pool_with_bad_cidr_is_rejected() {
    assert_error(
        pool(json!({"cidr": "10.0.0.0/33"})),
        "spec.cidr",
        "invalid CIDR",
    );
    assert_error(pool(json!({"cidr": "banana"})), "spec.cidr", "banana");
}

#[test]
fn pool_without_cidr_is_rejected() {
    assert_error(pool(json!({})), "spec.cidr", "required");
}

#[test]
fn pool_smaller_than_its_block_is_rejected() {
    assert_error(
        pool(json!({"cidr": "10.0.0.0/28"})),
        "spec.blockSize",
        "smaller than one /26",
    );
}

#[test]
fn block_size_out_of_range_is_rejected() {
    assert_error(
        pool(json!({"cidr": "10.0.0.0/8", "blockSize": 19})),
        "spec.blockSize",
        "20-32",
    );
    assert_error(
        pool(json!({"cidr": "10.0.0.0/8", "blockSize": 33})),
        "spec.blockSize",
        "20-32",
    );
    assert_error(
        pool(json!({"cidr": "fd00::/48", "blockSize": 115})),
        "spec.blockSize",
        "116-128",
    );
    assert!(parse(pool(json!({"cidr": "10.0.0.0/8", "blockSize": 20}))).is_ok());
    assert!(parse(pool(json!({"cidr": "fd00::/48", "blockSize": 128}))).is_ok());
}

#[test]
fn ipip_on_ipv6_pool_is_rejected() {
    assert_error(
        pool(json!({"cidr": "fd00::/48", "ipipMode": "Always"})),
        "spec.ipipMode",
        "IPv6",
    );
}

#[test]
fn ipip_and_vxlan_together_are_rejected() {
    assert_error(
        pool(json!({"cidr": "10.0.0.0/16", "ipipMode": "CrossSubnet", "vxlanMode": "Always"})),
        "spec.vxlanMode",
        "both",
    );
}

#[test]
fn invalid_encap_mode_is_rejected() {
    assert_error(
        pool(json!({"cidr": "10.0.0.0/16", "ipipMode": "always"})),
        "spec.ipipMode",
        "always",
    );
}

#[test]
fn invalid_allowed_use_names_its_index() {
    assert_error(
        pool(json!({"cidr": "10.0.0.0/16", "allowedUses": ["Workload", "Pets"]})),
        "spec.allowedUses[1]",
        "Pets",
    );
}

#[test]
fn invalid_node_selector_reports_its_column() {
    let e = error(pool(
        json!({"cidr": "10.0.0.0/16", "nodeSelector": "zone == "}),
    ));
    assert_eq!(e.path, "spec.nodeSelector");
    assert!(e.reason.contains("column"), "{e}");
}

// ---- strictness and envelope ----

#[test]
fn unknown_spec_field_is_rejected_with_its_path() {
    assert_error(
        pool(json!({"cidr": "10.0.0.0/16", "natOutgoin": true})),
        "spec.natOutgoin",
        "unknown field",
    );
}

#[test]
fn unknown_nested_field_is_rejected_with_its_path() {
    assert_error(
        ingress(json!({"action": "Allow", "destination": {"port": [80]}})),
        "spec.ingress[0].destination.port",
        "unknown field",
    );
}

#[test]
fn unknown_top_level_and_metadata_fields_are_rejected() {
    let mut v = pool(json!({"cidr": "10.0.0.0/16"}));
    v["status"] = json!({});
    assert_error(v, "status", "unknown field");
    let mut v = pool(json!({"cidr": "10.0.0.0/16"}));
    v["metadata"]["lables"] = json!({});
    assert_error(v, "metadata.lables", "unknown field");
}

#[test]
fn wrong_api_version_for_kind_is_rejected() {
    let mut v = pool(json!({"cidr": "10.0.0.0/16"}));
    v["apiVersion"] = json!("crd.projectcalico.org/v1");
    assert_error(v, "apiVersion", "projectcalico.org/v3");
}

#[test]
fn unknown_kind_is_rejected() {
    let mut v = pool(json!({"cidr": "10.0.0.0/16"}));
    v["kind"] = json!("IPPools");
    assert_error(v, "kind", "unknown kind");
}

#[test]
fn missing_kind_is_rejected() {
    assert_error(
        json!({"apiVersion": "projectcalico.org/v3", "metadata": {"name": "x"}}),
        "kind",
        "required",
    );
}

#[test]
fn name_must_be_a_dns_subdomain() {
    let mut v = pool(json!({"cidr": "10.0.0.0/16"}));
    v["metadata"]["name"] = json!("My_Pool");
    assert_error(v, "metadata.name", "not a valid name");
    let mut v = pool(json!({"cidr": "10.0.0.0/16"}));
    v["metadata"]["name"] = json!("");
    assert_error(v, "metadata.name", "required");
}

#[test]
fn namespace_is_forbidden_on_cluster_scoped_kinds() {
    let mut v = pool(json!({"cidr": "10.0.0.0/16"}));
    v["metadata"]["namespace"] = json!("default");
    assert_error(v, "metadata.namespace", "not namespaced");
}

#[test]
fn namespaced_kinds_default_to_the_default_namespace() {
    let v = json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkSet",
                   "metadata": {"name": "s"}, "spec": {"nets": ["10.0.0.0/8"]}});
    let r = Resource::from_value(v.clone()).unwrap();
    assert_eq!(r.namespace(), Some("default"));
    let r = Resource::from_value_in(v, Some("prod")).unwrap();
    assert_eq!(r.namespace(), Some("prod"));
    assert_eq!(
        r.key(),
        "/calico/resources/v3/projectcalico.org/networksets/prod/s"
    );
}

#[test]
fn invalid_namespace_name_is_rejected() {
    let v = json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkSet",
                   "metadata": {"name": "s", "namespace": "Prod.x"}});
    assert_error(v, "metadata.namespace", "namespace");
}

#[test]
fn singletons_must_be_named_default() {
    for kind in [
        "IPAMConfiguration",
        "KubeControllersConfiguration",
        "ClusterInformation",
    ] {
        let v = json!({"apiVersion": "projectcalico.org/v3", "kind": kind,
                       "metadata": {"name": "mine"}, "spec": {}});
        assert_error(v, "metadata.name", "\"default\"");
        let v = json!({"apiVersion": "projectcalico.org/v3", "kind": kind,
                       "metadata": {"name": "default"}, "spec": {}});
        assert!(parse(v).is_ok(), "{kind} default");
    }
}

#[test]
fn felix_and_bgp_configuration_accept_default_and_per_node_names() {
    for kind in ["FelixConfiguration", "BGPConfiguration"] {
        for (name, ok) in [
            ("default", true),
            ("node.node-a", true),
            ("node.", false),
            ("mine", false),
        ] {
            let v = json!({"apiVersion": "projectcalico.org/v3", "kind": kind,
                           "metadata": {"name": name}, "spec": {}});
            assert_eq!(parse(v.clone()).is_ok(), ok, "{kind} {name}");
            if !ok {
                assert_eq!(error(v).path, "metadata.name");
            }
        }
    }
}

// ---- rules ----

#[test]
fn port_without_protocol_is_rejected() {
    assert_error(
        ingress(json!({"action": "Allow", "destination": {"ports": [80]}})),
        "spec.ingress[0].destination.ports[0]",
        "protocol",
    );
}

#[test]
fn port_with_icmp_protocol_is_rejected() {
    assert_error(
        ingress(json!({"action": "Allow", "protocol": "ICMP", "source": {"notPorts": [80]}})),
        "spec.ingress[0].source.notPorts[0]",
        "TCP, UDP or SCTP",
    );
}

#[test]
fn named_port_with_sctp_is_rejected() {
    assert_error(
        ingress(
            json!({"action": "Allow", "protocol": "SCTP", "destination": {"ports": [80, "http"]}}),
        ),
        "spec.ingress[0].destination.ports[1]",
        "named port",
    );
}

#[test]
fn ports_with_tcp_udp_sctp_and_numbers_are_accepted() {
    for proto in [
        json!("TCP"),
        json!("udp"),
        json!("SCTP"),
        json!(6),
        json!(17),
        json!(132),
    ] {
        let v = ingress(
            json!({"action": "Allow", "protocol": proto, "destination": {"ports": [80, "1:2"]}}),
        );
        assert!(parse(v).is_ok(), "{proto}");
    }
}

#[test]
fn reversed_port_range_is_rejected() {
    assert_error(
        ingress(
            json!({"action": "Allow", "protocol": "TCP", "destination": {"ports": [80, "90:80"]}}),
        ),
        "spec.ingress[0].destination.ports[1]",
        "first port",
    );
}

#[test]
fn port_out_of_range_is_rejected() {
    assert_error(
        ingress(json!({"action": "Allow", "protocol": "TCP", "destination": {"ports": [65536]}})),
        "spec.ingress[0].destination.ports[0]",
        "65536",
    );
}

#[test]
fn port_range_round_trips_as_string_and_single_port_as_number() {
    let r = parse(ingress(json!({"action": "Allow", "protocol": "TCP",
                                 "destination": {"ports": ["8000:8080", "443", "http"]}})))
    .unwrap();
    assert_eq!(
        r.to_value()["spec"]["ingress"][0]["destination"]["ports"],
        json!(["8000:8080", 443, "http"])
    );
}

#[test]
fn icmp_code_without_type_is_rejected() {
    assert_error(
        ingress(json!({"action": "Allow", "protocol": "ICMP", "icmp": {"code": 0}})),
        "spec.ingress[0].icmp.code",
        "type",
    );
}

#[test]
fn icmp_type_255_is_rejected() {
    assert_error(
        ingress(json!({"action": "Allow", "protocol": "ICMP", "notICMP": {"type": 255}})),
        "spec.ingress[0].notICMP.type",
        "0-254",
    );
}

#[test]
fn icmp_code_above_255_is_rejected() {
    let e = error(ingress(
        json!({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 3, "code": 256}}),
    ));
    assert_eq!(e.path, "spec.ingress[0].icmp.code");
}

#[test]
fn icmp_without_icmp_protocol_is_rejected() {
    assert_error(
        ingress(json!({"action": "Allow", "protocol": "TCP", "icmp": {"type": 8}})),
        "spec.ingress[0].icmp",
        "ICMP",
    );
}

#[test]
fn protocol_numbers_must_be_1_to_255() {
    assert_error(
        ingress(json!({"action": "Allow", "protocol": 0})),
        "spec.ingress[0].protocol",
        "1-255",
    );
    assert_error(
        ingress(json!({"action": "Allow", "protocol": 256})),
        "spec.ingress[0].protocol",
        "1-255",
    );
    assert_error(
        ingress(json!({"action": "Allow", "notProtocol": "GRE"})),
        "spec.ingress[0].notProtocol",
        "GRE",
    );
    assert!(parse(ingress(json!({"action": "Allow", "protocol": 47}))).is_ok());
    assert!(parse(ingress(json!({"action": "Allow", "protocol": "UDPLite"}))).is_ok());
}

#[test]
fn mixed_ipv4_and_ipv6_nets_in_one_rule_are_rejected() {
    assert_error(
        ingress(
            json!({"action": "Allow", "source": {"nets": ["10.0.0.0/8"]},
                       "destination": {"notNets": ["fd00::/8"]}}),
        ),
        "spec.ingress[0].destination.notNets[0]",
        "mix",
    );
}

#[test]
fn nets_must_match_ip_version() {
    assert_error(
        ingress(json!({"action": "Allow", "ipVersion": 6, "source": {"nets": ["10.0.0.0/8"]}})),
        "spec.ingress[0].source.nets[0]",
        "ipVersion 6",
    );
    assert_error(
        ingress(json!({"action": "Allow", "ipVersion": 5})),
        "spec.ingress[0].ipVersion",
        "4 or 6",
    );
}

#[test]
fn bad_net_names_its_index() {
    assert_error(
        ingress(json!({"action": "Allow", "source": {"nets": ["10.0.0.0/8", "10.0.0.0/40"]}})),
        "spec.ingress[0].source.nets[1]",
        "invalid CIDR",
    );
}

#[test]
fn invalid_rule_selector_reports_path_and_column() {
    let e = error(ingress(
        json!({"action": "Allow", "source": {"selector": "a == 'x' &&"}}),
    ));
    assert_eq!(e.path, "spec.ingress[0].source.selector");
    assert!(e.reason.contains("column"), "{e}");
}

#[test]
fn invalid_action_is_rejected() {
    assert_error(
        ingress(json!({"action": "allow"})),
        "spec.ingress[0].action",
        "allow",
    );
    assert_error(ingress(json!({})), "spec.ingress[0].action", "required");
}

#[test]
fn services_exclude_other_selectors() {
    assert_error(
        gnp(json!({"egress": [{"action": "Allow",
            "destination": {"services": {"name": "dns"}, "selector": "a == 'b'"}}]})),
        "spec.egress[0].destination.services",
        "cannot be combined",
    );
}

// ---- policies and tiers ----

#[test]
fn policy_types_default_from_rules() {
    let types = |spec: Value| parse(gnp(spec)).unwrap().to_value()["spec"]["types"].clone();
    assert_eq!(types(json!({})), json!(["Ingress"]));
    assert_eq!(
        types(json!({"ingress": [{"action": "Allow"}]})),
        json!(["Ingress"])
    );
    assert_eq!(
        types(json!({"egress": [{"action": "Allow"}]})),
        json!(["Egress"])
    );
    assert_eq!(
        types(json!({"ingress": [{"action": "Allow"}], "egress": [{"action": "Deny"}]})),
        json!(["Ingress", "Egress"])
    );
}

#[test]
fn policy_tier_defaults_to_default() {
    let r = parse(gnp(json!({}))).unwrap();
    assert_eq!(r.to_value()["spec"]["tier"], "default");
}

#[test]
fn policy_in_non_default_tier_needs_tier_prefix() {
    assert_error(
        gnp(json!({"tier": "security"})),
        "metadata.name",
        "security.",
    );
    let v = json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                   "metadata": {"name": "security.p"}, "spec": {"tier": "security"}});
    assert!(parse(v).is_ok());
}

#[test]
fn egress_rules_without_egress_type_are_rejected() {
    assert_error(
        gnp(json!({"types": ["Ingress"], "egress": [{"action": "Allow"}]})),
        "spec.types",
        "Egress",
    );
}

#[test]
fn invalid_policy_type_is_rejected() {
    assert_error(
        gnp(json!({"types": ["Inbound"]})),
        "spec.types[0]",
        "Inbound",
    );
}

#[test]
fn pre_dnat_needs_apply_on_forward() {
    assert_error(
        gnp(json!({"preDNAT": true})),
        "spec.applyOnForward",
        "preDNAT",
    );
    assert_error(
        gnp(json!({"preDNAT": true, "doNotTrack": true, "applyOnForward": true})),
        "spec.preDNAT",
        "doNotTrack",
    );
}

#[test]
fn tier_defaults_to_deny_and_rejects_dotted_names() {
    let v = json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier",
                   "metadata": {"name": "security"}, "spec": {"order": 100}});
    assert_eq!(
        parse(v).unwrap().to_value()["spec"]["defaultAction"],
        "Deny"
    );
    let v = json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier",
                   "metadata": {"name": "sec.urity"}});
    assert_error(v, "metadata.name", "Tier");
    let v = json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier",
                   "metadata": {"name": "x"}, "spec": {"defaultAction": "Allow"}});
    assert_error(v, "spec.defaultAction", "Allow");
}

// ---- endpoints ----

#[test]
fn host_endpoint_needs_node_and_interface_or_ips() {
    let hep = |spec: Value| {
        json!({"apiVersion": "projectcalico.org/v3", "kind": "HostEndpoint",
                                  "metadata": {"name": "h"}, "spec": spec})
    };
    assert_error(
        hep(json!({"interfaceName": "eth0"})),
        "spec.node",
        "required",
    );
    assert_error(
        hep(json!({"node": "n"})),
        "spec.interfaceName",
        "expectedIPs",
    );
    assert!(parse(hep(json!({"node": "n", "expectedIPs": ["10.0.0.1"]}))).is_ok());
    assert_error(
        hep(json!({"node": "n", "expectedIPs": ["10.0.0.300"]})),
        "spec.expectedIPs[0]",
        "",
    );
}

#[test]
fn workload_endpoint_checks_mac_and_ports() {
    let wep = |spec: Value| {
        json!({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
                                  "metadata": {"name": "w", "namespace": "ns"}, "spec": spec})
    };
    assert_error(wep(json!({"mac": "ee:ee"})), "spec.mac", "MAC");
    assert_error(
        wep(json!({"ports": [{"name": "x", "protocol": "ICMP", "port": 1}]})),
        "spec.ports[0].protocol",
        "TCP",
    );
}

// ---- BGP ----

#[test]
fn bgp_peer_needs_as_number_with_peer_ip() {
    let peer = |spec: Value| {
        json!({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                                   "metadata": {"name": "p"}, "spec": spec})
    };
    assert_error(
        peer(json!({"peerIP": "10.0.0.1"})),
        "spec.asNumber",
        "required",
    );
    assert_error(
        peer(json!({"peerIP": "10.0.0.1:0", "asNumber": 1})),
        "spec.peerIP",
        "invalid",
    );
    assert_error(
        peer(json!({"peerSelector": "all()", "peerIP": "10.0.0.1", "asNumber": 1})),
        "spec.peerSelector",
        "peerIP",
    );
    assert_error(
        peer(json!({"node": "a", "nodeSelector": "all()", "peerIP": "10.0.0.1", "asNumber": 1})),
        "spec.nodeSelector",
        "both",
    );
    let r = parse(peer(
        json!({"peerIP": "[fd00::1]:1179", "asNumber": "1.10"}),
    ))
    .unwrap();
    assert_eq!(r.to_value()["spec"]["asNumber"], 65546);
}

#[test]
fn bgp_filter_rule_family_and_prefix_lengths_are_checked() {
    let f = |spec: Value| {
        json!({"apiVersion": "projectcalico.org/v3", "kind": "BGPFilter",
                                "metadata": {"name": "f"}, "spec": spec})
    };
    assert_error(
        f(json!({"exportV4": [{"action": "Accept", "cidr": "fd00::/8", "matchOperator": "In"}]})),
        "spec.exportV4[0].cidr",
        "IPv4",
    );
    assert_error(
        f(json!({"importV6": [{"action": "Accept", "prefixLength": {"min": 64, "max": 48}}]})),
        "spec.importV6[0].prefixLength",
        "exceeds",
    );
    assert_error(
        f(json!({"importV4": [{"action": "Maybe"}]})),
        "spec.importV4[0].action",
        "Maybe",
    );
}

#[test]
fn bgp_configuration_checks_communities() {
    let c = |spec: Value| {
        json!({"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
                                "metadata": {"name": "default"}, "spec": spec})
    };
    assert_error(
        c(json!({"communities": [{"name": "x", "value": "70000:1"}]})),
        "spec.communities[0].value",
        "community",
    );
    assert_error(
        c(json!({"prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["nope"]}]})),
        "spec.prefixAdvertisements[0].communities[0]",
        "nope",
    );
}

// ---- Felix ----

#[test]
fn felix_configuration_accepts_known_untyped_fields_and_rejects_typos() {
    let fc = |spec: Value| {
        json!({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                                 "metadata": {"name": "default"}, "spec": spec})
    };
    let r = parse(fc(json!({"bpfLogLevel": "Debug", "vxlanVNI": 4096}))).unwrap();
    assert_eq!(r.to_value()["spec"]["bpfLogLevel"], "Debug");
    assert_error(
        fc(json!({"vxlanVNi": 4096})),
        "spec.vxlanVNi",
        "unknown field",
    );
    assert_error(
        fc(json!({"awsSrcDstCheck": "Off"})),
        "spec.awsSrcDstCheck",
        "Off",
    );
    assert_error(
        fc(json!({"routeRefreshInterval": "90"})),
        "spec.routeRefreshInterval",
        "duration",
    );
    assert_error(
        fc(json!({"failsafeInboundHostPorts": [{"protocol": "icmp", "port": 1}]})),
        "spec.failsafeInboundHostPorts[0].protocol",
        "TCP",
    );
}

#[test]
fn felix_untyped_field_list_does_not_shadow_typed_fields() {
    // A typed field listed as untyped would be silently moved aside and never read.
    for name in felis_api::felix::KNOWN_UNTYPED_FIELDS {
        let typed: Result<felis_api::felix::FelixConfigurationSpec, _> =
            serde_json::from_value(json!({ *name: null }));
        assert!(
            typed.is_err(),
            "{name} is typed and must not be in KNOWN_UNTYPED_FIELDS"
        );
    }
}

// ---- Kubernetes kinds ----

#[test]
fn k8s_network_policy_checks_ip_block_and_end_port() {
    let knp = |spec: Value| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                  "metadata": {"name": "k", "namespace": "ns"}, "spec": spec})
    };
    assert_error(
        knp(
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}),
        ),
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "within",
    );
    assert_error(
        knp(json!({"egress": [{"ports": [{"port": 90, "endPort": 80}]}]})),
        "spec.egress[0].ports[0].endPort",
        "below",
    );
    let r = parse(knp(json!({}))).unwrap();
    assert_eq!(r.kind(), felis_api::Kind::K8sNetworkPolicy);
    assert_eq!(r.to_value()["apiVersion"], "networking.k8s.io/v1");
}

#[test]
fn calico_kind_with_k8s_api_version_is_the_k8s_kind() {
    let v = json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                   "metadata": {"name": "k"}, "spec": {"podSelector": {}}});
    // A Calico NetworkPolicy has no podSelector: strictness catches the mix-up.
    assert_error(v, "spec.podSelector", "unknown field");
}

#[test]
fn namespace_parses_with_labels() {
    let v = json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "prod", "labels": {"env": "prod"}}});
    let r = parse(v).unwrap();
    assert_eq!(r.key(), "/calico/resources/v3/core/namespaces/prod");
    assert_eq!(r.metadata().labels["env"], "prod");
}

#[test]
fn to_value_has_no_nulls() {
    fn has_null(v: &Value) -> bool {
        match v {
            Value::Null => true,
            Value::Array(a) => a.iter().any(has_null),
            Value::Object(o) => o.values().any(has_null),
            _ => false,
        }
    }
    let r = parse(ingress(json!({"action": "Allow", "protocol": "TCP"}))).unwrap();
    assert!(!has_null(&r.to_value()));
}

#[test]
fn pool_overlapping_link_local_is_rejected() {
    assert_error(
        pool(json!({"cidr": "169.254.0.0/24"})),
        "spec.cidr",
        "link-local",
    );
    assert_error(
        pool(json!({"cidr": "128.0.0.0/1"})),
        "spec.cidr",
        "link-local",
    );
    assert_error(
        pool(json!({"cidr": "fe80::/64"})),
        "spec.cidr",
        "link-local",
    );
}

#[test]
fn resource_serde_impls_use_the_manifest_form() {
    let v = pool(json!({"cidr": "10.0.0.0/16"}));
    let r: Resource = serde_json::from_value(v).unwrap();
    let back = serde_json::to_value(&r).unwrap();
    assert_eq!(back, r.to_value());
    let bad: Result<Resource, _> = serde_json::from_value(pool(json!({"cidr": "x"})));
    assert!(bad.unwrap_err().to_string().contains("spec.cidr"));
}

#[test]
fn icmp_protocol_must_match_the_family_of_the_nets() {
    assert_error(
        ingress(json!({"action": "Allow", "protocol": "ICMP", "source": {"nets": ["fd00::/8"]}})),
        "spec.ingress[0].protocol",
        "IPv6",
    );
    assert_error(
        ingress(
            json!({"action": "Allow", "protocol": "ICMPv6", "destination": {"nets": ["10.0.0.0/8"]}}),
        ),
        "spec.ingress[0].protocol",
        "IPv4",
    );
    assert_error(
        ingress(json!({"action": "Allow", "protocol": "ICMP", "ipVersion": 6})),
        "spec.ingress[0].protocol",
        "ICMPv6",
    );
}

#[test]
fn labels_must_be_kubernetes_labels() {
    let mut v = pool(json!({"cidr": "10.0.0.0/16"}));
    v["metadata"]["labels"] = json!({"projectcalico.org/name": "ok", "app": "web-1", "empty": ""});
    assert!(parse(v).is_ok());
    let mut v = pool(json!({"cidr": "10.0.0.0/16"}));
    v["metadata"]["labels"] = json!({"bad key!": "x"});
    assert_error(v, "metadata.labels.bad key!", "label key");
    let mut v = pool(json!({"cidr": "10.0.0.0/16"}));
    v["metadata"]["labels"] = json!({"app": "-web"});
    assert_error(v, "metadata.labels.app", "label value");
    let profile = json!({"apiVersion": "projectcalico.org/v3", "kind": "Profile",
        "metadata": {"name": "p"}, "spec": {"labelsToApply": {"a": "x y"}}});
    assert_error(profile, "spec.labelsToApply.a", "label value");
}

#[test]
fn revalidated_catches_changes_made_in_code() {
    let mut r = parse(pool(json!({"cidr": "10.0.0.0/16"}))).unwrap();
    r.metadata_mut().labels.insert("zone".into(), "a".into());
    assert_eq!(r.revalidated().unwrap(), r);
    r.metadata_mut().labels.insert("bad key".into(), "a".into());
    assert_eq!(r.revalidated().unwrap_err().path, "metadata.labels.bad key");
}

fn calico(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": kind,
           "metadata": {"name": name}, "spec": spec})
}

#[test]
fn node_addresses_must_match_their_family() {
    assert_error(
        calico("Node", "n1", json!({"bgp": {"ipv4Address": "fd00::1/64"}})),
        "spec.bgp.ipv4Address",
        "IPv4",
    );
    assert_error(
        calico("Node", "n1", json!({"bgp": {"ipv6Address": "10.0.0.1/24"}})),
        "spec.bgp.ipv6Address",
        "IPv6",
    );
    assert_error(
        calico(
            "Node",
            "n1",
            json!({"bgp": {"routeReflectorClusterID": "abc"}}),
        ),
        "spec.bgp.routeReflectorClusterID",
        "IPv4",
    );
    assert_error(
        calico(
            "Node",
            "n1",
            json!({"vxlanTunnelMACAddr": "zz:zz:zz:zz:zz:zz"}),
        ),
        "spec.vxlanTunnelMACAddr",
        "MAC",
    );
    let r = parse(calico(
        "Node",
        "n1",
        json!({"bgp": {"ipv4Address": "10.0.1.5/24"}}),
    ))
    .unwrap();
    // The host bits are the node's address: kept as written.
    assert_eq!(r.to_value()["spec"]["bgp"]["ipv4Address"], "10.0.1.5/24");
}

#[test]
fn host_endpoint_interface_names_are_checked() {
    assert_error(
        calico(
            "HostEndpoint",
            "h",
            json!({"node": "n1", "interfaceName": "a/b"}),
        ),
        "spec.interfaceName",
        "interface",
    );
    assert_error(
        calico(
            "HostEndpoint",
            "h",
            json!({"node": "n1", "interfaceName": "0123456789abcdef"}),
        ),
        "spec.interfaceName",
        "interface",
    );
}

#[test]
fn workload_gateways_must_match_their_family() {
    let v = json!({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
                   "metadata": {"name": "w", "namespace": "ns"},
                   "spec": {"ipv4Gateway": "fe80::1"}});
    assert_error(v, "spec.ipv4Gateway", "IPv4");
}

#[test]
fn bgp_configuration_listen_port_and_log_level_are_checked() {
    assert_error(
        calico("BGPConfiguration", "default", json!({"listenPort": 0})),
        "spec.listenPort",
        "1-65535",
    );
    assert_error(
        calico(
            "BGPConfiguration",
            "default",
            json!({"logSeverityScreen": "Loud"}),
        ),
        "spec.logSeverityScreen",
        "log level",
    );
    assert_error(
        calico("BGPConfiguration", "default", json!({"bindMode": "All"})),
        "spec.bindMode",
        "All",
    );
}

#[test]
fn felix_numbers_are_range_checked() {
    let fc = |spec: Value| calico("FelixConfiguration", "default", spec);
    assert_error(fc(json!({"vxlanMTU": 20})), "spec.vxlanMTU", "68-65535");
    assert_error(fc(json!({"vxlanVNI": 0})), "spec.vxlanVNI", "VNI");
    assert_error(
        fc(json!({"routeTableRanges": [{"min": 1, "max": 254}]})),
        "spec.routeTableRanges[0]",
        "reserved",
    );
    assert_error(
        fc(json!({"natPortRange": "http"})),
        "spec.natPortRange",
        "range",
    );
    assert!(
        parse(fc(
            json!({"vxlanMTU": 0, "routeTableRanges": [{"min": 1, "max": 250}]})
        ))
        .is_ok()
    );
}

#[test]
fn kube_controllers_values_are_checked() {
    let kcc = |spec: Value| calico("KubeControllersConfiguration", "default", spec);
    assert_error(
        kcc(json!({"healthChecks": "On"})),
        "spec.healthChecks",
        "Enabled",
    );
    assert_error(
        kcc(json!({"controllers": {"node": {"leakGracePeriod": "soon"}}})),
        "spec.controllers.node.leakGracePeriod",
        "duration",
    );
    assert_error(
        kcc(json!({"controllers": {"loadBalancer": {"assignIPs": "Some"}}})),
        "spec.controllers.loadBalancer.assignIPs",
        "AllServices",
    );
}

#[test]
fn k8s_selectors_and_peers_are_checked() {
    let knp = |spec: Value| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                  "metadata": {"name": "k"}, "spec": spec})
    };
    assert_error(
        knp(json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}})),
        "spec.podSelector.matchExpressions[0].values",
        "needs values",
    );
    assert_error(
        knp(json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}})),
        "spec.podSelector.matchExpressions[0].operator",
        "Has",
    );
    assert_error(
        knp(
            json!({"ingress": [{"from": [{"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}]}]}),
        ),
        "spec.ingress[0].from[0].ipBlock",
        "cannot be combined",
    );
    assert_error(
        knp(json!({"ingress": [{"from": [{}]}]})),
        "spec.ingress[0].from[0]",
        "podSelector",
    );
}

#[test]
fn bgp_peer_with_selector_and_filters_is_accepted() {
    let r = parse(calico(
        "BGPPeer",
        "rr",
        json!({"nodeSelector": "!has(rr)", "peerSelector": "has(rr)", "filters": ["f1"]}),
    ))
    .unwrap();
    assert_eq!(
        felis_api::table::row(&r, false),
        ["rr", "has(rr)", "!has(rr)", ""]
    );
}
