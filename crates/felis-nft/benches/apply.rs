//! `cargo bench -p felis-nft --bench apply`: a program of 10,000 endpoints and 10,000 rules
//! (1,000 policies of 10 rules), compiled, rendered and applied in a throwaway namespace; then
//! one-endpoint changes to the kernel, per transport: a pod added, removed, relabelled.
//! Needs root (skips otherwise).
//!
//! Knobs (environment): `FELIS_NFT_BENCH_ENDPOINTS` (10000), `FELIS_NFT_BENCH_POLICIES` (1000),
//! `FELIS_NFT_BENCH_CHANGES` (200 transactions), `FELIS_NFT_BENCH_APPLIES` (40 whole applies),
//! `FELIS_NFT_BENCH_TRANSPORTS` (`process,persistent,netlink`).
//!
//! "One endpoint change to the kernel" is measured twice: the transaction alone (the change
//! pre-rendered, ending when `nft` exits or the kernel acks the batch), and
//! [`PolicyDataplane::apply`] of the new program (render with a warm cache + diff +
//! transaction). The program's compilation (`felis-policy`) is measured on its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use felis_testns::bench::knob;
use felis_testns::bench::ms;
use felis_testns::bench::percentile;
use std::time::Instant;

use felis_nft::Config;
use felis_nft::PolicyDataplane;
use felis_nft::Transport;
use felis_nft::render;
use felis_policy::Endpoint;
use felis_policy::Policy;
use felis_policy::PolicySet;
use felis_policy::Profile;
use felis_policy::Program;

const NAMESPACES: usize = 100;
const APPS: usize = 50;
const RULES_PER_POLICY: usize = 10;

/// Pod `index` lives in namespace `index % 100`; its app label cycles through the 50 apps every
/// 100 pods, so each namespace has pods of every app.
fn app_of(index: usize) -> usize {
    (index / NAMESPACES) % APPS
}

fn pod(index: usize, app: usize) -> Endpoint {
    let namespace = format!("ns{}", index % NAMESPACES);
    Endpoint {
        name: format!("pod{index}"),
        namespace: Some(namespace.clone()),
        labels: [("app".to_string(), format!("app{app}"))].into(),
        ips: vec![
            format!(
                "10.{}.{}.{}/32",
                100 + (index >> 16),
                (index >> 8) & 255,
                index & 255
            )
            .parse()
            .unwrap(),
        ],
        profiles: vec![format!("kns.{namespace}")],
        orchestrator: Some("k8s".to_string()),
        ..Endpoint::default()
    }
}

fn key(index: usize) -> String {
    format!("ns{}/pod{index}", index % NAMESPACES)
}

/// Policy `index` (namespace `index % 100`) selects app `index / 100 % 50` of its namespace; its
/// 10 rules allow (or deny) the next 10 apps of the namespace by selector, to one port each.
fn policy(index: usize) -> Policy {
    let rules: Vec<serde_json::Value> = (0..RULES_PER_POLICY)
        .map(|r| {
            serde_json::json!({
                "action": if r % 4 == 3 { "Deny" } else { "Allow" },
                "protocol": "TCP",
                "source": {"selector": format!("app == 'app{}'", (index / NAMESPACES + r) % APPS)},
                "destination": {"ports": [8000 + r]}
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "name": format!("p{index}"),
        "namespace": format!("ns{}", index % NAMESPACES),
        "selector": format!("app == 'app{}'", (index / NAMESPACES) % APPS),
        "types": ["Ingress"],
        "ingress": rules
    }))
    .unwrap()
}

fn main() {
    if felis_testns::skip_unless_root("felis-nft apply bench") {
        return;
    }
    let endpoints = knob("FELIS_NFT_BENCH_ENDPOINTS", 10_000);
    let policies = knob("FELIS_NFT_BENCH_POLICIES", 1_000);
    let changes = knob("FELIS_NFT_BENCH_CHANGES", 200);
    let transports: Vec<Transport> = std::env::var("FELIS_NFT_BENCH_TRANSPORTS")
        .unwrap_or_else(|_| "process,persistent,netlink".to_string())
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|t| match t {
            "process" => Transport::ProcessPerApply,
            "persistent" => Transport::Persistent,
            "netlink" => Transport::Netlink,
            other => panic!("unknown transport {other}"),
        })
        .collect();

    let mut base = PolicySet::new();
    for n in 0..NAMESPACES {
        base.add_profile(Profile::allow_all(format!("kns.ns{n}")));
    }
    for i in 0..policies {
        base.add_policy(policy(i));
    }
    for i in 0..endpoints {
        base.add_endpoint(pod(i, app_of(i)));
    }
    // One more pod (added and removed), and pod 0 relabelled (app0 -> app1): with the default
    // sizes every selector set keeps a member, so no set appears or disappears.
    let mut with_new_pod = base.clone();
    with_new_pod.add_endpoint(pod(endpoints, app_of(endpoints)));
    let mut relabelled = base.clone();
    relabelled.endpoints[0] = pod(0, 1);
    let interfaces: BTreeMap<String, String> = (0..=endpoints)
        .map(|i| (key(i), format!("cali{i:08x}")))
        .collect();

    let start = Instant::now();
    let program = base.compile(base.endpoints.iter());
    let compile = start.elapsed();
    let added = with_new_pod.compile(with_new_pod.endpoints.iter());
    let relabel = relabelled.compile(relabelled.endpoints.iter());
    let rules: usize = program
        .policies
        .values()
        .map(|p| p.ingress.len() + p.egress.len())
        .sum();
    let start = Instant::now();
    let ruleset = render::render(&program, &interfaces, &Config::default());
    let rendering = start.elapsed();
    let nft_rules: usize = ruleset.chains.values().map(|c| c.len()).sum();
    let elements: usize = ruleset.sets.values().map(|s| s.elements.len()).sum();
    println!(
        "program: {} endpoints, {} policies, {rules} rules, {} ip sets; nft: {} chains, {nft_rules} rules, {} sets, {elements} elements",
        program.endpoints.len(),
        program.policies.len(),
        program.ip_sets.len(),
        ruleset.chains.len(),
        ruleset.sets.len(),
    );
    println!(
        "compile of the whole program (felis-policy): {}",
        ms(compile)
    );
    println!("render (cold): {}", ms(rendering));

    if let Ok(dir) = std::env::var("FELIS_NFT_BENCH_DUMP") {
        let config = Config::default();
        for (name, next) in [("add", &added), ("relabel", &relabel)] {
            let new = render::render(next, &interfaces, &config);
            let (script, stats) = render::delta_script(&ruleset, &new);
            println!("delta {name}: {stats:?}");
            std::fs::write(format!("{dir}/delta-{name}.nft"), script).unwrap();
        }
    }

    // The sequence of programs: base, +pod, base, relabelled, base, +pod, ...
    let sequence = |c: usize| -> &Program {
        match c % 4 {
            0 => &added,
            2 => &relabel,
            _ => &program,
        }
    };

    // The same transitions, pre-rendered with one cache (stable set names), as netlink ops and
    // nft text: what each transport sends for one change.
    let config = Config::default();
    let mut cache = render::RenderCache::default();
    let rendered: Vec<render::Ruleset> = [&program, &added, &program, &relabel]
        .iter()
        .map(|p| render::render_cached(p, &interfaces, &config, &mut cache))
        .collect();
    let transitions: Vec<(Vec<felis_nft::netlink::Op>, String)> = (0..4)
        .map(|i| {
            let (old, new) = (&rendered[i], &rendered[(i + 1) % 4]);
            // (The interfaces' device groups, set between the two parts, are not timed here.)
            let (mut ops, cleanup, _) =
                felis_nft::fast::delta_ops(old, new).expect("an element delta");
            ops.extend(cleanup);
            let (script, _) = render::delta_script(old, new);
            (ops, script)
        })
        .collect();
    let ops_count: usize = transitions.iter().map(|(o, _)| o.len()).sum::<usize>() / 4;
    let script_bytes: usize = transitions.iter().map(|(_, s)| s.len()).sum::<usize>() / 4;

    let ns = felis_testns::TestNetns::new().unwrap();
    for transport in transports {
        let mut dataplane = PolicyDataplane::with_config(Config::default(), transport);
        let (full, stats) = ns.run(|| {
            let start = Instant::now();
            let stats = dataplane.apply(&program, &interfaces).unwrap();
            (start.elapsed(), stats)
        });
        println!(
            "\n[{transport:?}] full apply (render + one nft -f transaction, {} KiB script): {}",
            stats.script_bytes / 1024,
            ms(full)
        );
        let (resync, _) = ns.run(|| {
            let start = Instant::now();
            let stats = dataplane.resync(&program, &interfaces).unwrap();
            (start.elapsed(), stats)
        });
        println!(
            "[{transport:?}] full atomic resync over the installed ruleset: {}",
            ms(resync)
        );
        // The transaction alone: from "send this change" to "the kernel has it" (nft exited,
        // or the netlink batch acked). Four changes bring the kernel back to the base program.
        let mut transactions = Vec::with_capacity(changes);
        ns.run(|| {
            let mut netlink = felis_nft::netlink::NetlinkSession::open().unwrap();
            let mut session = felis_nft::nft::NftSession::start().unwrap();
            for c in 0..changes.div_ceil(4) * 4 {
                let (ops, script) = &transitions[c % 4];
                let start = Instant::now();
                match transport {
                    Transport::ProcessPerApply => felis_nft::nft::apply_script(script).unwrap(),
                    Transport::Persistent => session.apply(script).unwrap(),
                    Transport::Netlink => netlink.commit(ops).unwrap(),
                }
                transactions.push(start.elapsed());
            }
        });
        let what = match transport {
            Transport::Netlink => format!("one nfnetlink batch of ~{ops_count} messages"),
            _ => format!("~{script_bytes} bytes of nft text"),
        };
        println!(
            "[{transport:?}] one-endpoint change, transaction only ({what}), {} changes: p50 {}, p99 {}, max {}",
            transactions.len(),
            ms(percentile(&mut transactions, 0.5)),
            ms(percentile(&mut transactions, 0.99)),
            ms(percentile(&mut transactions, 1.0)),
        );
        if transport == Transport::Netlink {
            // The floor: one address into (and out of) a selector set: no verdict, so the kernel
            // skips the table-wide loop validation that every jump/goto map element triggers.
            let set = rendered[0].sets.keys().next().unwrap().clone();
            let element =
                felis_nft::netlink::Element::of_set(rendered[0].sets[&set].kind, "10.255.0.1")
                    .unwrap();
            let mut floor = ns.run(|| {
                let mut netlink = felis_nft::netlink::NetlinkSession::open().unwrap();
                (0..changes)
                    .map(|c| {
                        let elements = vec![element.clone()];
                        let op = if c % 2 == 0 {
                            felis_nft::netlink::Op::AddElements {
                                set: set.clone(),
                                elements,
                            }
                        } else {
                            felis_nft::netlink::Op::DeleteElements {
                                set: set.clone(),
                                elements,
                            }
                        };
                        let start = Instant::now();
                        netlink.commit(&[op]).unwrap();
                        start.elapsed()
                    })
                    .collect::<Vec<_>>()
            });
            println!(
                "[{transport:?}] floor: one address element per batch (no verdict), {changes} batches: p50 {}, p99 {}",
                ms(percentile(&mut floor, 0.5)),
                ms(percentile(&mut floor, 0.99)),
            );
        }
        let mut applies = Vec::with_capacity(changes);
        let mut bytes = Vec::with_capacity(changes);
        let changes = changes.min(knob("FELIS_NFT_BENCH_APPLIES", 40));
        ns.run(|| {
            for c in 0..changes {
                let next = sequence(c);
                let start = Instant::now();
                let stats = dataplane.apply(next, &interfaces).unwrap();
                applies.push(start.elapsed());
                assert!(!stats.full && !stats.is_empty(), "{stats:?}");
                bytes.push(stats.script_bytes);
            }
            // The end state is the base program.
            if changes % 4 == 1 || changes % 4 == 3 {
                dataplane.apply(&program, &interfaces).unwrap();
            }
        });
        println!(
            "[{transport:?}] one-endpoint change to kernel (render + diff + transaction), {changes} changes (add/remove/relabel): p50 {}, p99 {}, max {} (~{} bytes sent)",
            ms(percentile(&mut applies, 0.5)),
            ms(percentile(&mut applies, 0.99)),
            ms(percentile(&mut applies, 1.0)),
            bytes.iter().sum::<usize>() / bytes.len().max(1),
        );
        ns.run(|| dataplane.remove()).unwrap();
    }

    // Where the time of a netlink change goes: render with a warm cache, and the diff.
    let mut cache = render::RenderCache::default();
    let mut previous = render::render_cached(&program, &interfaces, &config, &mut cache);
    let mut renders = Vec::new();
    let mut diffs = Vec::new();
    for c in 0..changes.min(50) {
        let start = Instant::now();
        let next = render::render_cached(sequence(c), &interfaces, &config, &mut cache);
        renders.push(start.elapsed());
        let start = Instant::now();
        let ops = felis_nft::fast::delta_ops(&previous, &next);
        diffs.push(start.elapsed());
        assert!(ops.is_some());
        previous = next;
    }
    println!(
        "\nuserspace part of a change: render (warm cache) p50 {}, netlink diff p50 {}",
        ms(percentile(&mut renders, 0.5)),
        ms(percentile(&mut diffs, 0.5)),
    );
}
