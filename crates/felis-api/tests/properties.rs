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

/// The real manifests the loader is fuzzed from: the 34-document fixture and the policy
/// scenarios (every kind, every rule field).
fn corpus() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("tests/fixtures/cluster.yaml")];
    let scenarios = root.join("../felis-policy/tests/scenarios");
    if let Ok(dir) = std::fs::read_dir(&scenarios) {
        files.extend(
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml")),
        );
    }
    files.sort();
    files
        .iter()
        .map(|f| {
            // Without the scenario's probes document, which is not a resource.
            std::fs::read_to_string(f)
                .unwrap()
                .split("\n---\n")
                .filter(|doc| !doc.lines().any(|l| l.trim() == "kind: Scenario"))
                .collect::<Vec<_>>()
                .join("\n---\n")
        })
        .collect()
}

#[test]
fn the_fuzz_corpus_loads_unmutated() {
    for text in corpus() {
        parse_documents(&text, None).unwrap();
    }
}

/// One edit of a manifest: delete, duplicate, replace or insert at a byte offset (fractions
/// of the length, so every part of the file gets hit).
#[derive(Debug, Clone)]
enum Mutation {
    Delete(f64, usize),
    Duplicate(f64, usize),
    Replace(f64, char),
    Insert(f64, String),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let at = 0.0f64..1.0;
    prop_oneof![
        (at.clone(), 1usize..40).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (at.clone(), 1usize..80).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        (
            at.clone(),
            prop_oneof![
                Just(':'),
                Just('-'),
                Just(' '),
                Just('\n'),
                Just('{'),
                Just('['),
                Just('"'),
                Just('\''),
                Just('#'),
                Just('&'),
                Just('*'),
                Just('!'),
                Just('|'),
                Just('0'),
                Just('\t'),
                Just('é'),
                Just('\u{0}'),
            ]
        )
            .prop_map(|(a, c)| Mutation::Replace(a, c)),
        (
            at,
            prop_oneof![
                Just("---\n".to_string()),
                Just(": ".to_string()),
                Just("- ".to_string()),
                Just("null".to_string()),
                Just("~".to_string()),
                Just("99999999999999999999".to_string()),
                Just("-1".to_string()),
                Just("::/0".to_string()),
                Just("*a".to_string()),
                Just("&a ".to_string()),
                Just("<<: *a\n".to_string()),
                Just("!!binary ".to_string()),
                Just("\n    ".to_string()),
                "\\PC{0,12}",
            ]
        )
            .prop_map(|(a, s)| Mutation::Insert(a, s)),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for m in mutations {
        let at = |f: f64, len: usize| ((f * len as f64) as usize).min(len);
        match m {
            Mutation::Delete(f, n) => {
                let a = at(*f, chars.len());
                let b = (a + n).min(chars.len());
                chars.drain(a..b);
            }
            Mutation::Duplicate(f, n) => {
                let a = at(*f, chars.len());
                let b = (a + n).min(chars.len());
                let copy: Vec<char> = chars[a..b].to_vec();
                chars.splice(b..b, copy);
            }
            Mutation::Replace(f, c) => {
                let a = at(*f, chars.len());
                if a < chars.len() {
                    chars[a] = *c;
                }
            }
            Mutation::Insert(f, s) => {
                let a = at(*f, chars.len());
                chars.splice(a..a, s.chars());
            }
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Mutated real manifests: the loader returns resources or an error that says where,
    /// never panics.
    #[test]
    fn mutated_manifests_load_or_fail_with_a_located_error(
        pick in 0usize..64,
        mutations in proptest::collection::vec(arb_mutation(), 1..4),
    ) {
        let corpus = corpus();
        let text = &corpus[pick % corpus.len()];
        let mutated = mutate(text, &mutations);
        if let Err(e) = parse_documents(&mutated, None) {
            let message = e.to_string();
            prop_assert!(!message.is_empty());
            prop_assert!(
                message.contains("line") || message.contains("document"),
                "error does not say where: {message}"
            );
        }
    }
}
