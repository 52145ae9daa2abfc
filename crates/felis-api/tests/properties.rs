//! Property tests: text forms round-trip, resources round-trip, the loader never panics.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test helpers

use felis_api::Asn;
use felis_api::Port;
use felis_api::Protocol;
use felis_api::Resource;
use felis_api::load::parse_documents;
use proptest::prelude::*;
use serde_json::json;

proptest! {
    #[test]
    fn ports_round_trip_through_text_and_json(a in 0u16.., b in 0u16.., name in "[a-z][a-z0-9-]{0,14}") {
        let (lo, hi) = (a.min(b), a.max(b));
        for port in [Port::Number(a), Port::parse(&format!("{lo}:{hi}")).unwrap(), Port::Named(name.clone())] {
            prop_assert_eq!(Port::parse(&port.to_string()).unwrap(), port.clone());
            let v = serde_json::to_value(&port).unwrap();
            prop_assert_eq!(serde_json::from_value::<Port>(v).unwrap(), port);
        }
    }

    #[test]
    fn protocols_round_trip(n in 1u8..) {
        let p = Protocol::from_number(u64::from(n)).unwrap();
        prop_assert_eq!(p.number(), n);
        let v = serde_json::to_value(p).unwrap();
        prop_assert_eq!(serde_json::from_value::<Protocol>(v).unwrap(), p);
        prop_assert_eq!(Protocol::parse(&p.to_string()).unwrap().number(), n);
    }

    #[test]
    fn asdot_and_plain_asns_agree(hi in 0u16.., lo in 0u16..) {
        let plain = (u32::from(hi) << 16) | u32::from(lo);
        prop_assert_eq!(Asn::parse(&format!("{hi}.{lo}")).unwrap(), Asn(plain));
        prop_assert_eq!(Asn::parse(&plain.to_string()).unwrap(), Asn(plain));
    }

    #[test]
    fn valid_pools_round_trip_with_defaults(
        addr in any::<[u8; 4]>(),
        prefix in 8u8..=26,
        block in proptest::option::of(26u8..=32),
        nat in any::<bool>(),
        mode in prop_oneof![Just("Never"), Just("Always"), Just("CrossSubnet")],
        vxlan in any::<bool>(),
    ) {
        prop_assume!(addr[0] != 169); // link-local pools are refused
        let cidr = format!("{}.{}.{}.{}/{prefix}", addr[0], addr[1], addr[2], addr[3]);
        let mut spec = json!({"cidr": cidr, "natOutgoing": nat});
        if vxlan { spec["vxlanMode"] = json!(mode) } else { spec["ipipMode"] = json!(mode) }
        if let Some(b) = block { spec["blockSize"] = json!(b) }
        let v = json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                       "metadata": {"name": "p"}, "spec": spec});
        let r = Resource::from_value(v).unwrap();
        let out = r.to_value();
        prop_assert_eq!(&out["spec"]["blockSize"], &json!(block.unwrap_or(26)));
        prop_assert_eq!(Resource::from_value(out).unwrap(), r);
    }

    #[test]
    fn loader_never_panics(text in "\\PC{0,200}") {
        let _ = parse_documents(&text, None);
    }

    #[test]
    fn loader_never_panics_on_yaml_like_text(
        lines in proptest::collection::vec(
            prop_oneof![
                Just("---".to_string()),
                Just("apiVersion: projectcalico.org/v3".to_string()),
                Just("kind: IPPool".to_string()),
                Just("metadata:".to_string()),
                Just("  name: p".to_string()),
                Just("spec:".to_string()),
                "  [a-z]{1,8}: [a-z0-9./]{0,10}",
                "  - [a-z0-9]{0,5}",
                "\\PC{0,20}",
            ],
            0..20,
        )
    ) {
        let _ = parse_documents(&lines.join("\n"), None);
    }
}

fn arb_port() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        any::<u16>().prop_map(|p| json!(p)),
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| json!(format!("{}:{}", a.min(b), a.max(b)))),
        "[a-z][a-z0-9]{0,8}".prop_map(|n| json!(n)),
    ]
}

fn arb_entity(v6: bool) -> impl Strategy<Value = serde_json::Value> {
    let net = if v6 {
        (any::<u16>(), 16u8..=128)
            .prop_map(|(a, p)| format!("fd00:{a:x}::/{p}"))
            .boxed()
    } else {
        (any::<[u8; 4]>(), 0u8..=32)
            .prop_map(|(a, p)| format!("{}.{}.{}.{}/{p}", a[0], a[1], a[2], a[3]))
            .boxed()
    };
    (
        proptest::collection::vec(net.clone(), 0..3),
        proptest::collection::vec(net, 0..2),
        proptest::option::of(Just("app == 'web'")),
        proptest::option::of(Just("has(quarantine)")),
        proptest::option::of(Just("projectcalico.org/name == 'prod'")),
        proptest::collection::vec(arb_port(), 0..3),
        proptest::collection::vec(arb_port(), 0..2),
    )
        .prop_map(|(nets, not_nets, sel, not_sel, ns_sel, ports, not_ports)| {
            let mut e = serde_json::Map::new();
            if !nets.is_empty() {
                e.insert("nets".into(), json!(nets));
            }
            if !not_nets.is_empty() {
                e.insert("notNets".into(), json!(not_nets));
            }
            if let Some(s) = sel {
                e.insert("selector".into(), json!(s));
            }
            if let Some(s) = not_sel {
                e.insert("notSelector".into(), json!(s));
            }
            if let Some(s) = ns_sel {
                e.insert("namespaceSelector".into(), json!(s));
            }
            if !ports.is_empty() {
                e.insert("ports".into(), json!(ports));
            }
            if !not_ports.is_empty() {
                e.insert("notPorts".into(), json!(not_ports));
            }
            serde_json::Value::Object(e)
        })
}

fn arb_rule() -> impl Strategy<Value = serde_json::Value> {
    (
        prop_oneof![Just("Allow"), Just("Deny"), Just("Log"), Just("Pass")],
        any::<bool>(),
        prop_oneof![Just("TCP"), Just("udp"), Just(" UDP"), Just("6")],
        any::<bool>(),
    )
        .prop_flat_map(|(action, v6, protocol, explicit_version)| {
            (arb_entity(v6), arb_entity(v6)).prop_map(move |(source, destination)| {
                let mut rule =
                    json!({"action": action, "protocol": protocol.trim(), "source": source,
                           "destination": destination});
                if explicit_version {
                    rule["ipVersion"] = json!(if v6 { 6 } else { 4 });
                }
                rule
            })
        })
}

proptest! {
    #[test]
    fn valid_policies_round_trip(
        ingress in proptest::collection::vec(arb_rule(), 0..3),
        egress in proptest::collection::vec(arb_rule(), 0..3),
        order in proptest::option::of(-1000.0f64..1000.0),
    ) {
        let mut spec = json!({"selector": "all()", "ingress": ingress, "egress": egress});
        if let Some(o) = order {
            spec["order"] = json!(o);
        }
        let v = json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                       "metadata": {"name": "p", "namespace": "ns"}, "spec": spec});
        let r = Resource::from_value(v).unwrap();
        let out = r.to_value();
        prop_assert_eq!(Resource::from_value(out.clone()).unwrap(), r);
        let text = serde_saphyr::to_string(&out).unwrap();
        prop_assert_eq!(parse_documents(&text, None).unwrap().remove(0).to_value(), out);
    }
}
