//! IPAM allocation throughput on the embedded (SQLite) store.
//!
//! - `sqlite_sync_normal/one_node_empty_pool`: one node allocating single addresses from an empty /16.
//! - `sqlite/one_node_90pct_full_pool`: the same when 90% of the /16's blocks are full and
//!   affine to other nodes (written directly, as a cluster of 920 busy nodes would have left
//!   them).
//! - `memstore/...`: the allocator's own cost without storage.
//!
//! Each sample starts from a fresh store, so criterion's time per iteration is the time of one
//! allocation (including the block claims every 64 allocations).

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use criterion::Criterion;
use criterion::criterion_group;
use criterion::criterion_main;
use felis_ipam::AutoAssignRequest;
use felis_ipam::Ipam;
use felis_ipam::Pool;
use felis_ipam::model::AllocationAttribute;
use felis_ipam::model::Block;
use felis_ipam::model::Handle;
use felis_ipam::model::POOL_PREFIX;
use felis_ipam::model::handle_key;
use felis_ipam::model::node_key;
use felis_ipam::resources;
use felis_store::Datastore;
use felis_store::TxnOp;
use felis_store::memory::MemoryStore as MemStore;
use rand::SeedableRng;
use rand::rngs::StdRng;

const NODE: &str = "bench-node";

fn setup(store: &dyn Datastore, fill_fraction: f64) {
    let pool = Pool::new(
        "bench",
        "10.128.0.0/16".parse().unwrap_or_else(|e| panic!("{e}")),
    );
    store
        .create(
            &format!("{POOL_PREFIX}{}", pool.name),
            &resources::pool_value(&pool),
        )
        .ok();
    store
        .create(
            &node_key(NODE),
            &resources::node_value(NODE, &BTreeMap::new()),
        )
        .ok();
    let blocks = pool.block_count() as usize;
    let full = (blocks as f64 * fill_fraction) as usize;
    let mut ops = Vec::new();
    for index in 0..full {
        let Some(cidr) = pool.block_at(index as u128) else {
            continue;
        };
        let owner = format!("filler-{index}");
        let mut block = Block::new(cidr, Some(&owner));
        for ordinal in 0..64 {
            let handle = format!("k8s-pod-network.{index}-{ordinal}");
            let mut secondary = BTreeMap::new();
            secondary.insert("node".to_string(), owner.clone());
            secondary.insert("namespace".to_string(), "default".to_string());
            secondary.insert("pod".to_string(), format!("pod-{index}-{ordinal}"));
            secondary.insert("timestamp".to_string(), "2026-11-27T06:00:00Z".to_string());
            block.allocate(
                1,
                AllocationAttribute {
                    handle_id: Some(handle.clone()),
                    secondary,
                },
                |_| true,
            );
            let mut h = Handle::new(&handle);
            h.increment(&cidr, 1);
            ops.push(TxnOp::Put {
                key: handle_key(&handle),
                value: serde_json::to_vec(&h).unwrap_or_default(),
            });
            if ops.len() >= 120 {
                store.commit(&ops).unwrap_or_else(|e| panic!("{e}"));
                ops.clear();
            }
        }
        ops.push(TxnOp::Put {
            key: cidr.key(),
            value: serde_json::to_vec(&block).unwrap_or_default(),
        });
        ops.push(TxnOp::Put {
            key: cidr.affinity_key(&owner),
            value: br#"{"state":"confirmed","deleted":false}"#.to_vec(),
        });
        if ops.len() > 100 {
            store.commit(&ops).unwrap_or_else(|e| panic!("{e}"));
            ops.clear();
        }
    }
    if !ops.is_empty() {
        store.commit(&ops).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn allocate_n(store: &dyn Datastore, n: u64, seed: u64) -> Duration {
    let ipam = Ipam::new(store);
    let mut rng = StdRng::seed_from_u64(seed);
    let start = Instant::now();
    for i in 0..n {
        let handle = format!("k8s-pod-network.bench-{seed}-{i}");
        let got = ipam
            .auto_assign(
                &AutoAssignRequest::v4(NODE, &handle, 1),
                SystemTime::UNIX_EPOCH,
                &mut rng,
            )
            .unwrap_or_else(|e| panic!("allocation {i}: {e}"));
        black_box(got);
    }
    start.elapsed()
}

/// Runs between 640 (ten blocks, so block claims are amortised as in real use) and 5,000
/// allocations (the 90%-full pool has ~6,500 free addresses) and scales to `iters`.
fn scaled(iters: u64, run: impl FnOnce(u64) -> Duration) -> Duration {
    let n = iters.clamp(640, 5_000);
    run(n).mul_f64(iters as f64 / n as f64)
}

fn sqlite(sync: &str, fill: f64, iters: u64, seed: u64) -> Duration {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = felis_store::open(&format!(
        "file://{}/bench.db?sync={sync}",
        dir.path().display()
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    setup(&*store, fill);
    scaled(iters, |run| allocate_n(&*store, run, seed))
}

fn memstore(fill: f64, iters: u64, seed: u64) -> Duration {
    let store = MemStore::new();
    setup(&store, fill);
    scaled(iters, |run| allocate_n(&store, run, seed))
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("ipam_allocation");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    let mut seed = 0;
    for (name, fill) in [("empty_pool", 0.0), ("90pct_full_pool", 0.9)] {
        group.bench_function(format!("memstore/one_node_{name}"), |b| {
            b.iter_custom(|iters| {
                seed += 1;
                memstore(fill, iters, seed)
            })
        });
        group.bench_function(format!("sqlite_sync_normal/one_node_{name}"), |b| {
            b.iter_custom(|iters| {
                seed += 1;
                sqlite("normal", fill, iters, seed)
            })
        });
    }
    group.finish();
}

criterion_group!(ipam, benches);
criterion_main!(ipam);
