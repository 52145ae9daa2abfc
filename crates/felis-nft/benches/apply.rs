//! `cargo bench -p felis-nft`: a program of 10,000 rules over 1,000 endpoints, rendered and
//! applied in a throwaway namespace; then 50 one-endpoint changes to the kernel, per transport.
//! Needs root (skips otherwise).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use felis_nft::Config;
use felis_nft::PolicyDataplane;
use felis_nft::Transport;
use felis_nft::render;
use felis_policy::Endpoint;
use felis_policy::Policy;
use felis_policy::PolicySet;
use felis_policy::Profile;

const NAMESPACES: usize = 100;
const PODS_PER_NAMESPACE: usize = 10;
const RULES_PER_POLICY: usize = 10;
const CHANGES: usize = 50;

fn pod(index: usize) -> Endpoint {
    let namespace = format!("ns{}", index % NAMESPACES);
    Endpoint {
        name: format!("pod{index}"),
        namespace: Some(namespace.clone()),
        labels: [("app".to_string(), format!("app{}", index % 50))].into(),
        ips: vec![
            format!("10.100.{}.{}/32", index >> 8, index & 255)
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

fn policy(index: usize) -> Policy {
    // One policy per pod, each selecting its pod by name-ish label, 10 rules with selectors.
    let rules: Vec<serde_json::Value> = (0..RULES_PER_POLICY)
        .map(|r| {
            serde_json::json!({
                "action": if r % 4 == 3 { "Deny" } else { "Allow" },
                "protocol": "TCP",
                "source": {"selector": format!("app == 'app{}'", (index + r) % 50)},
                "destination": {"ports": [8000 + r]}
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "name": format!("p{index}"),
        "namespace": format!("ns{}", index % NAMESPACES),
        "selector": format!("app == 'app{}'", index % 50),
        "types": ["Ingress"],
        "ingress": rules
    }))
    .unwrap()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if felis_testns::skip_unless_root("felis-nft apply bench") {
        return;
    }
    let endpoints = NAMESPACES * PODS_PER_NAMESPACE;
    let mut set = PolicySet::new();
    for n in 0..NAMESPACES {
        set.add_profile(Profile::allow_all(format!("kns.ns{n}")));
    }
    for i in 0..endpoints {
        set.add_endpoint(pod(i));
        set.add_policy(policy(i));
    }
    let interfaces: BTreeMap<String, String> = (0..endpoints + CHANGES)
        .map(|i| (key(i), format!("cali{i:08x}")))
        .collect();

    let start = Instant::now();
    let program = set.compile(set.endpoints.iter());
    let compile = start.elapsed();
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
    println!("compile (felis-policy): {}", ms(compile));
    println!("render: {}", ms(rendering));
    let mut cache = render::RenderCache::default();
    render::render_cached(&program, &interfaces, &Config::default(), &mut cache);
    let start = Instant::now();
    let again = render::render_cached(&program, &interfaces, &Config::default(), &mut cache);
    let warm = start.elapsed();
    let start = Instant::now();
    let (noop, _) = render::delta_script(&ruleset, &again);
    println!(
        "render again with a warm cache: {}; diff of two renderings of the same program: {} ({} bytes)",
        ms(warm),
        ms(start.elapsed()),
        noop.len()
    );

    let ns = felis_testns::TestNetns::new().unwrap();
    for transport in [Transport::ProcessPerApply, Transport::Persistent] {
        let mut dataplane = PolicyDataplane::with_config(Config::default(), transport);
        let (full, stats) = ns.run(|| {
            let start = Instant::now();
            let stats = dataplane.apply(&program, &interfaces).unwrap();
            (start.elapsed(), stats)
        });
        println!(
            "\n[{transport:?}] full apply (render + resync transaction, {} KiB script): {}",
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

        // One-endpoint changes: a pod appears (its IP joins selector sets, its chains and
        // vmap entries appear), compiled outside the timing.
        let mut changing = set.clone();
        let mut deltas = Vec::new();
        let mut diffs = Vec::new();
        let mut applies = Vec::new();
        let mut previous = program.clone();
        for c in 0..CHANGES {
            changing.add_endpoint(pod(endpoints + c));
            let next = changing.compile(changing.endpoints.iter());
            let mut cache = render::RenderCache::default();
            let old = render::render_cached(&previous, &interfaces, &Config::default(), &mut cache);
            let start = Instant::now();
            let new = render::render_cached(&next, &interfaces, &Config::default(), &mut cache);
            let (script, _) = render::delta_script(&old, &new);
            diffs.push(start.elapsed());
            deltas.push(script.len());
            if let Ok(dir) = std::env::var("FELIS_NFT_BENCH_DUMP")
                && c == 0
            {
                let (full, _) = render::full_script(&old, &[]);
                std::fs::write(format!("{dir}/full.nft"), full).unwrap();
                std::fs::write(format!("{dir}/delta.nft"), &script).unwrap();
            }
            let elapsed = ns.run(|| {
                let start = Instant::now();
                let stats = dataplane.apply(&next, &interfaces).unwrap();
                assert!(!stats.full && stats.chains_added == 2, "{stats:?}");
                start.elapsed()
            });
            applies.push(elapsed);
            previous = next;
        }
        println!(
            "[{transport:?}] one-endpoint change to kernel (apply: render + diff + nft), {CHANGES} changes: p50 {}, p99 {}, max {} (delta script ~{} bytes; render (warm cache) + diff alone p50 {})",
            ms(percentile(&mut applies, 0.5)),
            ms(percentile(&mut applies, 0.99)),
            ms(percentile(&mut applies, 1.0)),
            deltas.iter().sum::<usize>() / deltas.len(),
            ms(percentile(&mut diffs, 0.5)),
        );
        // The floor: a one-element transaction with the whole ruleset installed.
        let mut floor = ns.run(|| {
            let mut session = felis_nft::nft::NftSession::start().unwrap();
            (0..20)
                .map(|i| {
                    let script = format!("add element inet felis pol-s0-4h {{ 10.200.0.{i} }}\n");
                    let start = Instant::now();
                    match transport {
                        Transport::ProcessPerApply => {
                            felis_nft::nft::apply_script(&script).unwrap()
                        }
                        Transport::Persistent => session.apply(&script).unwrap(),
                    }
                    start.elapsed()
                })
                .collect::<Vec<_>>()
        });
        println!(
            "[{transport:?}] floor: one set element per transaction with the ruleset installed: p50 {}, max {}",
            ms(percentile(&mut floor, 0.5)),
            ms(percentile(&mut floor, 1.0)),
        );
        ns.run(|| dataplane.remove()).unwrap();
    }
}
