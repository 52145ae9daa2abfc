//! Allocation throughput for one node on each store, into an empty and a 90%-full /16 pool,
//! with the store calls per allocation and their cost.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use felis_ipam::AutoAssignRequest;
use felis_ipam::Ipam;
use felis_ipam::Pool;
use felis_ipam::model::POOL_PREFIX;
use felis_ipam::model::node_key;
use felis_ipam::resources;
use felis_store::Datastore;
use felis_store::Error;
use felis_store::KeyValue;
use felis_store::Listing;
use felis_store::Revision;
use felis_store::TxnOp;
use felis_store::Watch;
use felis_store::memory::MemoryStore as MemStore;
use rand::SeedableRng;
use rand::rngs::StdRng;

struct Counting<'a> {
    inner: &'a dyn Datastore,
    stats: Mutex<BTreeMap<&'static str, (u64, Duration)>>,
}

impl Counting<'_> {
    fn time<T>(&self, what: &'static str, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        let mut stats = self.stats.lock().unwrap();
        let entry = stats.entry(what).or_default();
        entry.0 += 1;
        entry.1 += start.elapsed();
        out
    }
}

impl Datastore for Counting<'_> {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        self.time("get", || self.inner.get(key))
    }
    fn list(&self, prefix: &str) -> Result<Listing, Error> {
        self.time("list", || self.inner.list(prefix))
    }
    fn create(&self, key: &str, value: &[u8]) -> Result<Revision, Error> {
        self.time("create", || self.inner.create(key, value))
    }
    fn update(
        &self,
        key: &str,
        value: &[u8],
        expected: Option<Revision>,
    ) -> Result<Revision, Error> {
        self.time("update", || self.inner.update(key, value, expected))
    }
    fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Revision, Error> {
        self.time("delete", || self.inner.delete(key, expected))
    }
    fn commit(&self, ops: &[TxnOp]) -> Result<Revision, Error> {
        self.time("commit", || self.inner.commit(ops))
    }
    fn watch(&self, prefix: &str, from: Revision) -> Result<Box<dyn Watch>, Error> {
        self.inner.watch(prefix, from)
    }
    fn revision(&self) -> Result<Revision, Error> {
        self.inner.revision()
    }
    fn compact(&self, revision: Revision) -> Result<(), Error> {
        self.inner.compact(revision)
    }
}

fn main() {
    // `cargo bench -p felis-ipam --bench throughput [-- N]`
    let n: usize = std::env::args()
        .filter_map(|a| a.parse().ok())
        .next()
        .unwrap_or(2000);
    println!("{n} single-address allocations for one node, /16 pool (1024 /26 blocks)");
    // `FELIS_BENCH_BACKENDS=memstore,etcd` runs some of them.
    let wanted = std::env::var("FELIS_BENCH_BACKENDS").unwrap_or_default();
    for backend in ["memstore", "sqlite sync=normal", "sqlite sync=full", "etcd"] {
        if !wanted.is_empty() && !wanted.split(',').any(|w| backend.starts_with(w.trim())) {
            continue;
        }
        let mut rates = Vec::new();
        for fill_pool in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mem = MemStore::new();
            let opened;
            let etcd;
            let inner: &dyn Datastore = match backend {
                "memstore" => &mem,
                "etcd" => {
                    // A fresh etcd (Debian etcd-server) per case, on free loopback ports.
                    etcd = felis_store::testing::EtcdServer::start().unwrap();
                    opened = felis_store::open(&etcd.url()).unwrap();
                    &*opened
                }
                other => {
                    let sync = other.trim_start_matches("sqlite sync=");
                    opened = felis_store::open(&format!(
                        "file://{}/t.db?sync={sync}",
                        dir.path().display()
                    ))
                    .unwrap();
                    &*opened
                }
            };
            let store = Counting {
                inner,
                stats: Mutex::new(BTreeMap::new()),
            };
            let pool = Pool::new("bench", "10.128.0.0/16".parse().unwrap());
            store
                .create(
                    &format!("{POOL_PREFIX}bench"),
                    &resources::pool_value(&pool),
                )
                .unwrap();
            store
                .create(
                    &node_key("n"),
                    &resources::node_value("n", &BTreeMap::new()),
                )
                .unwrap();
            if fill_pool {
                fill(&store, &pool);
            }
            store.stats.lock().unwrap().clear();
            let ipam = Ipam::new(&store);
            let mut rng = StdRng::seed_from_u64(1);
            let start = Instant::now();
            for i in 0..n {
                let request = AutoAssignRequest::v4("n", &format!("k8s-pod-network.{i}"), 1);
                ipam.auto_assign(&request, SystemTime::UNIX_EPOCH, &mut rng)
                    .unwrap();
            }
            let total = start.elapsed();
            let rate = n as f64 / total.as_secs_f64();
            rates.push(rate);
            let label = if fill_pool {
                "90%-full pool"
            } else {
                "empty pool"
            };
            println!(
                "{backend:20} {label:14} {rate:8.0} allocations/s ({:.0} µs each)",
                1e6 / rate
            );
            for (what, (count, time)) in store.stats.lock().unwrap().iter() {
                println!(
                    "{:37} {what:7} {:5.2}/allocation {:8.1} µs each",
                    "",
                    *count as f64 / n as f64,
                    time.as_secs_f64() * 1e6 / *count as f64
                );
            }
        }
        println!(
            "{backend:20} 90%-full / empty time ratio: {:.2}",
            rates[0] / rates[1]
        );
    }
}

/// Fills 90% of the pool's blocks, each full and affine to another node.
fn fill(store: &dyn Datastore, pool: &Pool) {
    use felis_ipam::model::AllocationAttribute;
    use felis_ipam::model::Block;
    let full = pool.block_count() as usize * 9 / 10;
    for index in 0..full {
        let cidr = pool.block_at(index as u128).unwrap();
        let owner = format!("filler-{index}");
        let mut block = Block::new(cidr, Some(&owner));
        for ordinal in 0..64 {
            let mut secondary = BTreeMap::new();
            secondary.insert("node".to_string(), owner.clone());
            secondary.insert("pod".to_string(), format!("pod-{index}-{ordinal}"));
            let handle = format!("k8s-pod-network.{index}-{ordinal}");
            block.allocate(
                1,
                AllocationAttribute {
                    handle_id: Some(handle),
                    secondary,
                },
                |_| true,
            );
        }
        store
            .commit(&[
                TxnOp::Put {
                    key: cidr.key(),
                    value: serde_json::to_vec(&block).unwrap(),
                },
                TxnOp::Put {
                    key: cidr.affinity_key(&owner),
                    value: br#"{"state":"confirmed","deleted":false}"#.to_vec(),
                },
            ])
            .unwrap();
    }
}
