//! Datastore benchmarks for both backends: sequential single-key writes, CAS commits and watch
//! latency (from a write returning to a watcher seeing it). Short on purpose (well under a
//! minute): `cargo bench -p felis-store`. `FELIS_BENCH_BACKENDS=sqlite` (or `etcd`) picks one.

// Bench code: failing loudly is the right thing here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use felis_store::testing::EtcdServer;
use felis_store::{Datastore, Revision, TxnOp, WatchEvent};

/// How long each throughput measurement runs.
const RUN: Duration = Duration::from_secs(2);
/// Writes observed for watch latency, and the pause between them.
const LATENCY_SAMPLES: usize = 300;
const LATENCY_GAP: Duration = Duration::from_millis(3);

fn main() {
    let only = std::env::var("FELIS_BENCH_BACKENDS").unwrap_or_default();
    let wants = |name: &str| only.is_empty() || only.split(',').any(|b| b == name);
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>12} {:>10} {:>10}",
        "backend", "create/s", "update/s", "CAS/s", "10-op txn/s", "watch p50", "watch p99"
    );
    if wants("sqlite") {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/bench.db", dir.path().display());
        let store = felis_store::open(&url).unwrap();
        report("sqlite", &store);
        let url = format!(
            "file://{}/bench-normal.db?sync=normal",
            dir.path().display()
        );
        let store = felis_store::open(&url).unwrap();
        report("sqlite?sync=normal", &store);
    }
    if wants("etcd") {
        match EtcdServer::start() {
            Ok(server) => {
                let store = felis_store::open(&server.url()).unwrap();
                report("etcd", &store);
            }
            Err(e) => println!("etcd skipped: {e}: {:?}", std::error::Error::source(&e)),
        }
    }
}

fn report(name: &str, store: &Arc<dyn Datastore>) {
    let creates = rate(|i| {
        store
            .create(&format!("/bench/create/{i:08}"), b"{\"v\":1}")
            .unwrap();
    });
    store.create("/bench/update", b"0").unwrap();
    let updates = rate(|i| {
        store
            .update("/bench/update", i.to_string().as_bytes(), None)
            .unwrap();
    });
    store.create("/bench/cas", b"0").unwrap();
    let cas = rate(|_| {
        let current = store.get("/bench/cas").unwrap().unwrap();
        let n: u64 = std::str::from_utf8(&current.value)
            .unwrap()
            .parse()
            .unwrap();
        store
            .update(
                "/bench/cas",
                (n + 1).to_string().as_bytes(),
                Some(current.mod_revision),
            )
            .unwrap();
    });
    let txn = rate(|i| {
        let ops: Vec<TxnOp> = (0..10)
            .map(|k| TxnOp::Put {
                key: format!("/bench/txn/{k}"),
                value: i.to_string().into_bytes(),
            })
            .collect();
        store.commit(&ops).unwrap();
    });
    let (p50, p99) = watch_latency(store);
    println!(
        "{name:<20} {creates:>10.0} {updates:>10.0} {cas:>10.0} {txn:>12.0} {:>10} {:>10}",
        format!("{:.2} ms", p50.as_secs_f64() * 1e3),
        format!("{:.2} ms", p99.as_secs_f64() * 1e3),
    );
}

/// Calls `op(0), op(1), ...` for [`RUN`] and returns calls per second.
fn rate(mut op: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < RUN {
        op(n);
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// p50 and p99 of the time from the start of a write call to a watcher (on another thread)
/// seeing it: commit time plus delivery time.
fn watch_latency(store: &Arc<dyn Datastore>) -> (Duration, Duration) {
    let from = Revision(store.revision().unwrap().0 + 1);
    let mut watch = store.watch("/bench/latency/", from).unwrap();
    let (seen_tx, seen_rx) = mpsc::channel();
    let watcher = std::thread::spawn(move || {
        for _ in 0..LATENCY_SAMPLES {
            match watch.next(Duration::from_secs(10)).unwrap() {
                Some(WatchEvent::Put(kv)) => {
                    let i: usize = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                    seen_tx.send((i, Instant::now())).unwrap();
                }
                other => panic!("unexpected watch result {other:?}"),
            }
        }
    });
    let mut written = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES {
        written.push(Instant::now());
        store
            .commit(&[TxnOp::Put {
                key: "/bench/latency/key".to_string(),
                value: i.to_string().into_bytes(),
            }])
            .unwrap();
        std::thread::sleep(LATENCY_GAP);
    }
    watcher.join().unwrap();
    let mut latencies: Vec<Duration> = seen_rx
        .iter()
        .map(|(i, seen)| seen.saturating_duration_since(written[i]))
        .collect();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (at(0.50), at(0.99))
}
