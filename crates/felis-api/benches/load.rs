//! Manifest loading: YAML parse + strict decode + defaulting + validation.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)] // bench harness

use criterion::Criterion;
use criterion::criterion_group;
use criterion::criterion_main;
use felis_api::Resource;
use felis_api::load::parse_documents;

const CLUSTER: &str = include_str!("../tests/fixtures/cluster.yaml");

fn many_workload_endpoints(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "---\napiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  \
             name: node1-k8s-pod{i}-eth0\n  namespace: prod\n  labels:\n    app: web\n    \
             pod: p{i}\nspec:\n  node: node1\n  pod: pod{i}\n  endpoint: eth0\n  \
             interfaceName: cali{i:011x}\n  ipNetworks: [10.{}.{}.{}/32]\n  \
             profiles: [kns.prod]\n",
            i / 65536 % 256,
            i / 256 % 256,
            i % 256
        ));
    }
    text
}

fn bench_load(c: &mut Criterion) {
    c.bench_function("parse_documents(cluster.yaml, 34 docs)", |b| {
        b.iter(|| parse_documents(CLUSTER, None).unwrap())
    });
    let weps = many_workload_endpoints(1000);
    c.bench_function("parse_documents(1000 WorkloadEndpoints)", |b| {
        b.iter(|| parse_documents(&weps, None).unwrap())
    });
    let one = many_workload_endpoints(1);
    c.bench_function("serde_saphyr::from_str::<Value>(1 WorkloadEndpoint)", |b| {
        b.iter(|| serde_saphyr::from_str::<serde_json::Value>(&one).unwrap())
    });
    c.bench_function("parse_documents(1 WorkloadEndpoint)", |b| {
        b.iter(|| parse_documents(&one, None).unwrap())
    });
    let values: Vec<serde_json::Value> = parse_documents(CLUSTER, None)
        .unwrap()
        .iter()
        .map(Resource::to_value)
        .collect();
    c.bench_function("from_value(cluster, 34 resources)", |b| {
        b.iter(|| {
            values
                .iter()
                .map(|v| Resource::from_value(v.clone()).unwrap())
                .collect::<Vec<_>>()
        })
    });
}

criterion_group!(benches, bench_load);
criterion_main!(benches);
