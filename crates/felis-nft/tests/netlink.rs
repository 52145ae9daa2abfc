//! The netlink writer against a real kernel: what it installs must read back (`nft list`)
//! exactly as the same objects written as `nft` text. Each test in its own namespace.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;

use felis_nft::PolicyDataplane;
use felis_nft::Transport;
use felis_nft::netlink::Element;
use felis_nft::netlink::EndpointRule;
use felis_nft::netlink::NetlinkSession;
use felis_nft::netlink::Op;
use felis_nft::netlink::PolicyRule;
use felis_nft::netlink::Verdict;
use felis_nft::render::SetKind;
use felis_policy::Endpoint;
use felis_policy::Policy;
use felis_policy::PolicySet;
use felis_policy::Profile;
use felis_testns::TestNetns;
use felis_testns::skip_unless_root;

const SETUP: &str = "add table inet felis
add set inet felis pol-s0-4h { type ipv4_addr; }
add set inet felis pol-s0-6h { type ipv6_addr; }
add set inet felis pol-np1-4 { type ipv4_addr . inet_proto . inet_service; }
add set inet felis pol-np1-6 { type ipv6_addr . inet_proto . inet_service; }
add map inet felis pol-to-grp { type devgroup : verdict; }
add chain inet felis pi-a
add chain inet felis pri-b
";

const ENDPOINT_RULES: [&str; 6] = [
    "meta mark set meta mark & 0xffefffff",
    "jump pi-a",
    "meta mark & 0x00100000 == 0 jump pi-a",
    "meta mark & 0x00100000 == 0 drop",
    "jump pri-b",
    "drop",
];

fn nft(args: &[&str]) -> String {
    let output = Command::new("nft").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The body of `nft list` output from its first line containing `{` on, with `name` replaced.
fn body(listing: &str, name: &str) -> String {
    listing.replace(name, "NAME")
}

#[test]
fn netlink_objects_read_back_like_their_nft_text() {
    if skip_unless_root("netlink_objects_read_back_like_their_nft_text") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    ns.run(|| {
        felis_nft::nft::apply_script(SETUP).unwrap();
        // Reference objects, written as text.
        let mut text = String::from("add chain inet felis tw-text\n");
        for rule in ENDPOINT_RULES {
            text.push_str(&format!("add rule inet felis tw-text {rule}\n"));
        }
        felis_nft::nft::apply_script(&text).unwrap();

        let mut session = NetlinkSession::open().unwrap();
        let mut ops = vec![Op::AddChain("tw-netlink".into())];
        for rule in ENDPOINT_RULES {
            ops.push(Op::AddRule {
                chain: "tw-netlink".into(),
                rule: EndpointRule::parse(rule).unwrap(),
            });
        }
        let element = |kind, text| Element::of_set(kind, text).unwrap();
        ops.extend([
            Op::AddElements {
                set: "pol-s0-4h".into(),
                elements: vec![
                    element(SetKind::Hosts4, "10.0.0.1"),
                    element(SetKind::Hosts4, "10.0.0.2"),
                ],
            },
            Op::AddElements {
                set: "pol-s0-6h".into(),
                elements: vec![element(SetKind::Hosts6, "fd00::1")],
            },
            Op::AddElements {
                set: "pol-np1-4".into(),
                elements: vec![element(SetKind::NamedPorts4, "10.0.0.2 . 6 . 8080")],
            },
            Op::AddElements {
                set: "pol-np1-6".into(),
                elements: vec![element(SetKind::NamedPorts6, "fd00::2 . 17 . 53")],
            },
            Op::AddElements {
                set: "pol-to-grp".into(),
                elements: vec![
                    Element::of_group(7, Some(Verdict::Goto("tw-netlink".into()))),
                    Element::of_group(4_000_000_000, Some(Verdict::Jump("tw-text".into()))),
                ],
            },
        ]);
        session.commit(&ops).unwrap();

        let text_chain = nft(&["list", "chain", "inet", "felis", "tw-text"]);
        let netlink_chain = nft(&["list", "chain", "inet", "felis", "tw-netlink"]);
        assert_eq!(
            body(&netlink_chain, "tw-netlink"),
            body(&text_chain, "tw-text")
        );
        assert!(
            netlink_chain.contains("meta mark & 0x00100000 == 0x00000000 jump pi-a"),
            "{netlink_chain}"
        );
        let sets = nft(&["list", "table", "inet", "felis"]);
        for expected in [
            "elements = { 10.0.0.1, 10.0.0.2 }",
            "elements = { fd00::1 }",
            "elements = { 10.0.0.2 . tcp . 8080 }",
            "elements = { fd00::2 . udp . 53 }",
            "7 : goto tw-netlink",
            "4000000000 : jump tw-text",
        ] {
            assert!(sets.contains(expected), "{expected} missing from\n{sets}");
        }

        // Deletions, a flush and a chain removal, in one batch.
        session
            .commit(&[
                Op::DeleteElements {
                    set: "pol-s0-4h".into(),
                    elements: vec![element(SetKind::Hosts4, "10.0.0.1")],
                },
                Op::DeleteElements {
                    set: "pol-to-grp".into(),
                    elements: vec![Element::of_group(7, None)],
                },
                Op::FlushChain("tw-netlink".into()),
                Op::DeleteChain("tw-netlink".into()),
                Op::FlushChain("tw-text".into()),
            ])
            .unwrap();
        let after = nft(&["list", "table", "inet", "felis"]);
        assert!(after.contains("elements = { 10.0.0.2 }"), "{after}");
        assert!(
            !after.contains("7 : goto") && !after.contains("tw-netlink"),
            "{after}"
        );
        assert!(
            !after.contains("jump pi-a"),
            "tw-text was flushed:\n{after}"
        );
    });
}

#[test]
fn a_failing_message_aborts_the_whole_batch_and_names_the_object() {
    if skip_unless_root("a_failing_message_aborts_the_whole_batch_and_names_the_object") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    ns.run(|| {
        felis_nft::nft::apply_script(SETUP).unwrap();
        let mut session = NetlinkSession::open().unwrap();
        let good = Op::AddElements {
            set: "pol-s0-4h".into(),
            elements: vec![Element::of_set(SetKind::Hosts4, "10.0.0.9").unwrap()],
        };
        let bad = Op::AddElements {
            set: "nosuch".into(),
            elements: vec![Element::of_set(SetKind::Hosts4, "10.0.0.8").unwrap()],
        };
        let error = session.commit(&[good.clone(), bad]).unwrap_err();
        assert!(error.to_string().contains("nosuch"), "{error}");
        let listing = nft(&["list", "set", "inet", "felis", "pol-s0-4h"]);
        assert!(!listing.contains("10.0.0.9"), "{listing}");
        // The socket stays usable.
        session.commit(&[good]).unwrap();
        let listing = nft(&["list", "set", "inet", "felis", "pol-s0-4h"]);
        assert!(listing.contains("10.0.0.9"), "{listing}");
        // Deleting what is not there fails too.
        let missing = Op::DeleteElements {
            set: "pol-s0-4h".into(),
            elements: vec![Element::of_set(SetKind::Hosts4, "10.0.0.7").unwrap()],
        };
        assert!(session.commit(&[missing]).is_err());
    });
}

fn pod(index: usize, app: usize) -> Endpoint {
    Endpoint {
        name: format!("pod{index}"),
        namespace: Some("ns".to_string()),
        labels: [("app".to_string(), format!("app{app}"))].into(),
        ips: vec![format!("10.100.0.{index}/32").parse().unwrap()],
        profiles: vec!["kns.ns".to_string()],
        orchestrator: Some("k8s".to_string()),
        ..Endpoint::default()
    }
}

fn policy(app: usize) -> Policy {
    serde_json::from_value(serde_json::json!({
        "name": format!("p{app}"), "namespace": "ns", "selector": format!("app == 'app{app}'"),
        "types": ["Ingress"],
        "ingress": [{"action": "Allow", "protocol": "TCP",
                     "source": {"selector": format!("app == 'app{}'", (app + 1) % 3)},
                     "destination": {"ports": [8080]}}]
    }))
    .unwrap()
}

/// Endpoints come, change labels and go through the netlink path; after each step the kernel
/// holds exactly what a full resync of the same program installs.
#[test]
fn netlink_deltas_leave_the_kernel_as_a_resync_would() {
    if skip_unless_root("netlink_deltas_leave_the_kernel_as_a_resync_would") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    let reference = TestNetns::new().unwrap();
    let mut set = PolicySet::new();
    set.add_profile(Profile::allow_all("kns.ns"));
    for app in 0..3 {
        set.add_policy(policy(app));
    }
    for i in 1..=6 {
        set.add_endpoint(pod(i, i % 3));
    }
    let interfaces: BTreeMap<String, String> = (1..=8)
        .map(|i| (format!("ns/pod{i}"), format!("cali{i}")))
        .collect();
    let mut dataplane = PolicyDataplane::with_config(Default::default(), Transport::Netlink);
    let program = set.compile(set.endpoints.iter());
    assert!(
        ns.run(|| dataplane.apply(&program, &interfaces))
            .unwrap()
            .full
    );

    type Step = Box<dyn Fn(&mut PolicySet)>;
    let steps: Vec<Step> = vec![
        Box::new(|s| {
            s.add_endpoint(pod(7, 1));
        }),
        Box::new(|s| {
            s.add_endpoint(pod(8, 2));
        }),
        Box::new(|s| {
            // Labels changed.
            s.endpoints.retain(|e| e.name != "pod3");
            s.add_endpoint(pod(3, 1));
        }),
        Box::new(|s| {
            s.endpoints.retain(|e| e.name != "pod2");
        }),
    ];
    for (n, step) in steps.iter().enumerate() {
        step(&mut set);
        let program = set.compile(set.endpoints.iter());
        let stats = ns.run(|| dataplane.apply(&program, &interfaces)).unwrap();
        assert!(!stats.full && !stats.is_empty(), "step {n}: {stats:?}");
        let mut fresh = PolicyDataplane::with_config(Default::default(), Transport::Netlink);
        reference
            .run(|| fresh.resync(&program, &interfaces))
            .unwrap();
        let installed = ns.run(|| nft(&["-s", "list", "table", "inet", "felis"]));
        let expected = reference.run(|| nft(&["-s", "list", "table", "inet", "felis"]));
        assert_eq!(normalize(&installed), normalize(&expected), "step {n}");
    }
}

/// A listing with chains in name order (the kernel lists them in creation order).
fn normalize(listing: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in listing.lines().filter(|l| !l.is_empty() && *l != "}") {
        if line.starts_with("\tchain ") || line.starts_with("\tset ") || line.starts_with("\tmap ")
        {
            blocks.push(std::mem::take(&mut current));
        }
        current.push_str(line);
        current.push('\n');
    }
    blocks.push(current);
    blocks.sort();
    blocks
}

/// Policy and profile chain rules as the renderer writes them (one per shape it makes).
const POLICY_RULES: [&str; 28] = [
    "meta nfproto ipv4 meta l4proto 6 ip saddr @pol-s0-4h th dport { 8000 } accept",
    "meta nfproto ipv4 meta l4proto 6 ip saddr != @pol-s0-4h th dport != { 8000-8100 } drop",
    "meta nfproto ipv6 meta l4proto 17 ip6 daddr @pol-s0-6h th sport { 53 } accept",
    "meta nfproto ipv4 meta l4proto 6 ip daddr . meta l4proto . th dport @pol-np1-4 accept",
    "meta nfproto ipv6 meta l4proto 6 ip6 saddr . meta l4proto . th sport != @pol-np1-6 drop",
    "meta nfproto ipv4 meta l4proto 1 icmp type 8 icmp code 0 log prefix \"calico-packet: \"",
    "meta nfproto ipv6 meta l4proto 58 icmpv6 type != 128 accept",
    "meta nfproto ipv4 ip saddr @pol-s0-4h meta mark set meta mark | 0x00100000 return",
    "meta l4proto != 17 return",
    "meta nfproto ipv4 ip saddr != @pol-s0-4h ip daddr @pol-s0-4h drop",
    "accept",
    "drop",
    "return",
    "log prefix \"calico-packet: \"",
    // Anonymous sets: ports, protocols, CIDR lists.
    "meta nfproto ipv4 meta l4proto 6 th dport { 80, 8000-8100 } accept",
    "meta nfproto ipv4 meta l4proto 6 th dport { 80, 443 } accept",
    "meta nfproto ipv4 meta l4proto 17 th sport != { 53, 5353, 0-10 } drop",
    "meta nfproto ipv4 ip saddr != { 192.168.0.0/16 } drop",
    "meta nfproto ipv4 ip daddr { 10.0.0.0/8, 172.16.0.0/12, 10.1.0.0/16, 192.168.1.1 } accept",
    "meta nfproto ipv6 ip6 saddr { fd00::/64, 2001:db8::1, ::/0 } accept",
    "meta nfproto ipv4 ip saddr { 0.0.0.0/0 } accept",
    "meta l4proto { 6, 17, 132, 136 } th dport { 80 } accept",
    "meta l4proto { 6, 17, 132, 136 } th dport { 80, 443, 65535 } accept",
    "meta nfproto ipv4 ip saddr { 255.255.255.255 } th dport { 1-65535 } accept",
    // One-element sets, which nft matches directly.
    "meta nfproto ipv4 ip saddr { 172.16.0.0/12 } accept",
    "meta nfproto ipv6 ip6 daddr != { 2001:db8::/33 } accept",
    "meta nfproto ipv6 ip6 saddr { fd00::/64 } accept",
    "meta l4proto { 6 } accept",
];

#[test]
fn policy_rules_by_netlink_read_back_like_their_nft_text() {
    if skip_unless_root("policy_rules_by_netlink_read_back_like_their_nft_text") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    ns.run(|| {
        felis_nft::nft::apply_script(SETUP).unwrap();
        let mut text = String::from("add chain inet felis pi-text\n");
        for rule in POLICY_RULES {
            text.push_str(&format!("add rule inet felis pi-text {rule}\n"));
        }
        felis_nft::nft::apply_script(&text).unwrap();
        let mut ops = vec![Op::AddChain("pi-netlink".into())];
        for rule in POLICY_RULES {
            ops.push(Op::AddPolicyRule {
                chain: "pi-netlink".into(),
                rule: PolicyRule::parse(rule).unwrap_or_else(|| panic!("{rule}")),
            });
        }
        NetlinkSession::open().unwrap().commit(&ops).unwrap();
        let text_chain = nft(&["list", "chain", "inet", "felis", "pi-text"]);
        let netlink_chain = nft(&["list", "chain", "inet", "felis", "pi-netlink"]);
        assert_eq!(
            netlink_chain.lines().count(),
            POLICY_RULES.len() + 4,
            "{netlink_chain}"
        );
        assert_eq!(
            body(&netlink_chain, "pi-netlink"),
            body(&text_chain, "pi-text")
        );
    });
}

/// `nft list table inet felis` with blocks (chains, sets, maps) and set elements sorted: two
/// tables with the same objects compare equal whatever order they were created in.
fn normalized_table() -> Vec<String> {
    let listing = nft(&["list", "table", "inet", "felis"]);
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    let mut elements: Option<String> = None;
    for line in listing.lines() {
        let trimmed = line.trim();
        if let Some(text) = &mut elements {
            text.push_str(trimmed);
            if trimmed.ends_with('}') {
                let inner = text
                    .trim_start_matches("elements = {")
                    .trim_end_matches('}');
                let mut items: Vec<String> =
                    inner.split(',').map(|i| i.trim().to_string()).collect();
                items.sort();
                if let Some(block) = &mut current {
                    block.push(format!("elements {}", items.join(",")));
                }
                elements = None;
            }
            continue;
        }
        if line.starts_with("\tchain ") || line.starts_with("\tset ") || line.starts_with("\tmap ")
        {
            current = Some(vec![trimmed.to_string()]);
        } else if line == "\t}" {
            if let Some(block) = current.take() {
                blocks.push(block.join("\n"));
            }
        } else if trimmed.starts_with("elements = {") {
            if trimmed.ends_with('}') {
                elements = Some(String::new());
                let text = elements.as_mut().unwrap();
                text.push_str(trimmed);
                let inner = text
                    .trim_start_matches("elements = {")
                    .trim_end_matches('}')
                    .to_string();
                let mut items: Vec<String> =
                    inner.split(',').map(|i| i.trim().to_string()).collect();
                items.sort();
                if let Some(block) = &mut current {
                    block.push(format!("elements {}", items.join(",")));
                }
                elements = None;
            } else {
                elements = Some(trimmed.to_string());
            }
        } else if let Some(block) = &mut current {
            block.push(trimmed.to_string());
        }
    }
    blocks.sort();
    blocks
}

#[test]
fn netlink_deltas_leave_what_a_full_resync_installs() {
    if skip_unless_root("netlink_deltas_leave_what_a_full_resync_installs") {
        return;
    }
    use felis_policy::IncrementalCompiler;
    use felis_policy::Namespace;
    let pod = |i: u64, app: u64| Endpoint {
        name: format!("pod{i}"),
        namespace: Some(format!("ns{}", i % 2)),
        labels: [("app".to_string(), format!("app{app}"))].into(),
        ips: vec![format!("10.0.0.{}/32", i + 1).parse().unwrap()],
        profiles: vec![format!("kns.ns{}", i % 2)],
        orchestrator: Some("k8s".to_string()),
        ports: if (i + app).is_multiple_of(3) {
            vec![felis_policy::NamedPort {
                name: "http".to_string(),
                protocol: felis_policy::Protocol::TCP,
                port: 8080,
            }]
        } else {
            Vec::new()
        },
        ..Endpoint::default()
    };
    let policy = |i: u64, v: u64| -> Policy {
        serde_json::from_value(serde_json::json!({
            "name": format!("p{i}"), "namespace": format!("ns{}", i % 2),
            "selector": format!("app == 'app{}'", (i + v / 3) % 4), "order": v % 2,
            "ingress": [
                {"action": if v.is_multiple_of(2) { "Allow" } else { "Deny" }, "protocol": "TCP",
                 "source": {"selector": format!("app == 'app{}'", i % 4)}, "destination": {"ports": [8000 + v]}},
                {"action": "Pass", "source": {"selector": "app == 'app0'"}},
                {"action": "Allow", "protocol": "TCP", "destination": {"ports": [if v.is_multiple_of(3) { "http" } else { "https" }]}}
            ]
        }))
        .unwrap()
    };
    let mut set = PolicySet::new();
    for ns in ["ns0", "ns1"] {
        set.add_profile(Profile::allow_all(format!("kns.{ns}")));
        set.add_namespace(Namespace {
            name: ns.to_string(),
            labels: BTreeMap::new(),
        });
    }
    for i in 0..8 {
        set.add_endpoint(pod(i, i % 4));
    }
    for i in 0..4 {
        set.add_policy(policy(i, 0));
    }
    let keys = |i: u64| format!("ns{}/pod{i}", i % 2);
    let interfaces: BTreeMap<String, String> =
        (0..10).map(|i| (keys(i), format!("cali{i}"))).collect();
    let mut compiler = IncrementalCompiler::new("n");
    compiler.rebuild(set, (0..10).map(keys).collect());
    let deltas = TestNetns::new().unwrap();
    let full = TestNetns::new().unwrap();
    let mut incremental =
        PolicyDataplane::with_config(Default::default(), Transport::Netlink).with_stable_set_ids();
    let mut reference =
        PolicyDataplane::with_config(Default::default(), Transport::Netlink).with_stable_set_ids();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: u64| {
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (rng >> 33) % n
    };
    let mut by_netlink = 0;
    for step in 0..60 {
        if step > 0 {
            match next(5) {
                0 => compiler.delete_endpoint(&keys(next(10))),
                1 | 2 => compiler.put_endpoint(pod(next(10), next(4)), true),
                3 => compiler.put_policy(policy(next(5), next(6))),
                _ => compiler.delete_policy(&format!("ns{0}/p{1}", next(2), next(5))),
            }
        }
        let delta = compiler.take_delta();
        let program = compiler.program();
        let stats = deltas
            .run(|| incremental.apply_delta(program, &delta, &interfaces))
            .unwrap_or_else(|e| panic!("step {step}: {e}"));
        // No rule here needs nft text: everything after the first apply goes by netlink.
        assert!(step == 0 || !stats.full, "step {step}: {stats:?}");
        if !stats.full && stats.script_bytes > 0 && !stats.is_empty() {
            by_netlink += 1;
        }
        full.run(|| reference.resync(program, &interfaces)).unwrap();
        let (got, want) = (deltas.run(normalized_table), full.run(normalized_table));
        assert!(want.len() > 10, "{want:?}");
        assert_eq!(got, want, "step {step}: {delta:?}");
    }
    eprintln!("{by_netlink} of 60 deltas by netlink");
    assert!(by_netlink > 10, "only {by_netlink} deltas went by netlink");
}
