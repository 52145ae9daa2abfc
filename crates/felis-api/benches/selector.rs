//! Selector benchmarks: parsing, and matching a typical policy selector against an endpoint's
//! labels. Run with `cargo bench -p felis-api --bench selector`.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::Criterion;
use criterion::criterion_group;
use criterion::criterion_main;
use felis_api::selector::Selector;

const TYPICAL: &str = "role == 'db' && has(tier) && env in {'prod','staging'}";
const COMPLEX: &str = "(role == 'db' || role starts with 'cache') && has(tier) \
                       && env not in {'dev','test'} && !has(quarantine) && zone != 'b'";

fn ten_labels() -> BTreeMap<String, String> {
    [
        ("app", "billing"),
        ("env", "prod"),
        ("projectcalico.org/namespace", "payments"),
        ("projectcalico.org/orchestrator", "k8s"),
        ("projectcalico.org/serviceaccount", "default"),
        ("release", "stable"),
        ("role", "db"),
        ("team", "finance"),
        ("tier", "backend"),
        ("zone", "a"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn parse(c: &mut Criterion) {
    c.bench_function("selector/parse/typical", |b| {
        b.iter(|| Selector::parse(black_box(TYPICAL)))
    });
    c.bench_function("selector/parse/complex", |b| {
        b.iter(|| Selector::parse(black_box(COMPLEX)))
    });
}

fn matches(c: &mut Criterion) {
    let labels = ten_labels();
    let mut miss = ten_labels();
    miss.insert("env".to_string(), "dev".to_string());
    for (name, source) in [("typical", TYPICAL), ("complex", COMPLEX)] {
        let selector = match Selector::parse(source) {
            Ok(selector) => selector,
            Err(e) => {
                eprintln!("{source}: {e}");
                return;
            }
        };
        assert!(selector.matches(&labels), "{name} should match");
        c.bench_function(&format!("selector/match/{name}/hit"), |b| {
            b.iter(|| black_box(&selector).matches(black_box(&labels)))
        });
        c.bench_function(&format!("selector/match/{name}/miss"), |b| {
            b.iter(|| black_box(&selector).matches(black_box(&miss)))
        });
    }
}

criterion_group!(benches, parse, matches);
criterion_main!(benches);
