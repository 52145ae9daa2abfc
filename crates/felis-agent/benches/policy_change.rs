//! `cargo bench -p felis-agent --bench policy_change`: one datastore event to the kernel,
//! through the agent's policy path, at 10,000 local endpoints, 1,000 policies and 10,000
//! rules, in a throwaway network namespace. Needs root (skips otherwise).
//!
//! The cluster is that of `felis-nft`'s `apply` bench, as stored resources: 100 namespaces,
//! pods of 50 apps, policy `i` (namespace `i % 100`) selecting one app of its namespace with 10
//! rules allowing (or denying) the next 10 apps by selector to one port each. Every pod is on
//! this node.
//!
//! Each sample starts with the event (`PolicyState::put`/`delete` of the stored JSON value) and
//! ends when `PolicyPlane::apply` returns: the resource decoded, the program compiled
//! incrementally, the delta sent (one netlink batch, or `nft` when it needs one) and acked.
//! Changes cycle: a pod added, the same pod deleted, pod 0 relabelled (app0 ↔ app1), a policy
//! rule modified (port), a policy rule added (a selector no set stands for yet).
//!
//! Knobs (environment): `FELIS_AGENT_BENCH_ENDPOINTS` (10000), `FELIS_AGENT_BENCH_POLICIES`
//! (1000), `FELIS_AGENT_BENCH_CHANGES` (250: 50 of each kind).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use felis_testns::bench::knob;
use felis_testns::bench::ms;
use felis_testns::bench::percentile;
use std::time::Instant;

use felis_agent::policy::PolicyPlane;
use felis_api::Kind;
use felis_api::key_for;

const NODE: &str = "bench";
const NAMESPACES: usize = 100;
const APPS: usize = 50;
const RULES_PER_POLICY: usize = 10;

fn app_of(index: usize) -> usize {
    (index / NAMESPACES) % APPS
}

/// The stored WorkloadEndpoint of pod `index` with app label `app`.
fn pod(index: usize, app: usize) -> (String, Vec<u8>) {
    let namespace = format!("ns{}", index % NAMESPACES);
    let name = format!("{NODE}-k8s-pod{index}-eth0");
    let ip = format!(
        "10.{}.{}.{}/32",
        100 + (index >> 16),
        (index >> 8) & 255,
        index & 255
    );
    let value = serde_json::json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "WorkloadEndpoint",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": format!("app{app}")}},
        "spec": {
            "node": NODE, "orchestrator": "k8s", "pod": format!("pod{index}"), "endpoint": "eth0",
            "interfaceName": format!("cali{index:08x}"), "ipNetworks": [ip],
        }
    });
    (
        key_for(Kind::WorkloadEndpoint, Some(&namespace), &name),
        serde_json::to_vec(&value).unwrap(),
    )
}

/// The stored NetworkPolicy `index`; `variant` 0 is the base, 1+ has rule 0 on another port,
/// and `extra` adds an 11th rule from a selector of app `extra`.
fn policy(index: usize, port_shift: usize, extra: Option<usize>) -> (String, Vec<u8>) {
    let namespace = format!("ns{}", index % NAMESPACES);
    let mut rules: Vec<serde_json::Value> = (0..RULES_PER_POLICY)
        .map(|r| {
            let port = if r == 0 { 8000 + port_shift } else { 8000 + r };
            serde_json::json!({
                "action": if r % 4 == 3 { "Deny" } else { "Allow" },
                "protocol": "TCP",
                "source": {"selector": format!("app == 'app{}'", (index / NAMESPACES + r) % APPS)},
                "destination": {"ports": [port]}
            })
        })
        .collect();
    if let Some(app) = extra {
        rules.push(serde_json::json!({
            "action": "Allow", "protocol": "TCP",
            "source": {"selector": format!("app == 'app{app}' && tier != 'x'")},
            "destination": {"ports": [7000]}
        }));
    }
    let name = format!("p{index}");
    let value = serde_json::json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": format!("app == 'app{}'", (index / NAMESPACES) % APPS),
            "types": ["Ingress"],
            "ingress": rules
        }
    });
    (
        key_for(Kind::NetworkPolicy, Some(&namespace), &name),
        serde_json::to_vec(&value).unwrap(),
    )
}

fn main() {
    if felis_testns::skip_unless_root("felis-agent policy_change bench") {
        return;
    }
    let endpoints = knob("FELIS_AGENT_BENCH_ENDPOINTS", 10_000);
    let policies = knob("FELIS_AGENT_BENCH_POLICIES", 1_000);
    let changes = knob("FELIS_AGENT_BENCH_CHANGES", 250);

    let mut items: Vec<(String, Vec<u8>)> = Vec::new();
    items.extend((0..endpoints).map(|i| pod(i, app_of(i))));
    items.extend((0..policies).map(|i| policy(i, 0, None)));

    let ns = felis_testns::TestNetns::new().unwrap();
    let mut plane = PolicyPlane::new(NODE);
    let start = Instant::now();
    plane
        .state
        .snapshot(items.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    let first = ns.run(|| plane.apply()).unwrap().unwrap();
    println!(
        "snapshot of {} resources to kernel: {} (compile {:.0} ms, apply {:.0} ms, {} endpoints, {} policies)",
        items.len(),
        ms(start.elapsed()),
        first.compile_ms,
        first.apply_ms,
        first.endpoints,
        first.policies,
    );

    const KINDS: [&str; 5] = [
        "endpoint added",
        "endpoint deleted",
        "endpoint relabelled",
        "policy rule modified (port)",
        "policy rule added (new selector)",
    ];
    let mut samples: BTreeMap<usize, Vec<Duration>> = BTreeMap::new();
    let mut split: BTreeMap<usize, Vec<(f64, f64, bool)>> = BTreeMap::new();
    let (new_key, new_value) = pod(endpoints, app_of(endpoints));
    ns.run(|| {
        for c in 0..changes {
            let kind = c % KINDS.len();
            let round = c / KINDS.len();
            let target = (round * 7) % policies.max(1);
            let start = Instant::now();
            let changed = match kind {
                0 => plane.state.put(&new_key, &new_value).unwrap(),
                1 => plane.state.delete(&new_key),
                2 => {
                    let (key, value) = pod(0, if round.is_multiple_of(2) { 1 } else { 0 });
                    plane.state.put(&key, &value).unwrap()
                }
                3 => {
                    let (key, value) = policy(target, 1000 + round, None);
                    plane.state.put(&key, &value).unwrap()
                }
                _ => {
                    let (key, value) = policy(target, 1000 + round, Some(round % APPS));
                    plane.state.put(&key, &value).unwrap()
                }
            };
            assert!(changed);
            plane.mark_dirty();
            let applied = plane.apply().unwrap().unwrap();
            samples.entry(kind).or_default().push(start.elapsed());
            split.entry(kind).or_default().push((
                applied.compile_ms,
                applied.apply_ms,
                applied.stats.netlink,
            ));
        }
    });
    println!(
        "\none event to kernel (decode + incremental compile + delta + transaction), {changes} changes:"
    );
    for (kind, mut durations) in samples {
        let parts = &split[&kind];
        let mean = |f: fn(&(f64, f64, bool)) -> f64| {
            parts.iter().map(f).sum::<f64>() / parts.len().max(1) as f64
        };
        let by_netlink = parts.iter().filter(|p| p.2).count();
        println!(
            "  {:<34} n={:<3} p50 {:>9}  p99 {:>9}  max {:>9}   (mean compile {:.2} ms, apply {:.2} ms; {by_netlink} by netlink)",
            KINDS[kind],
            durations.len(),
            ms(percentile(&mut durations, 0.5)),
            ms(percentile(&mut durations, 0.99)),
            ms(percentile(&mut durations, 1.0)),
            mean(|p| p.0),
            mean(|p| p.1),
        );
    }
}
