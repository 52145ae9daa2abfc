//! Several threads on 4 nodes allocating and releasing through one store: no address twice,
//! `check` clean, `show` exact. Runs on the in-memory store, on SQLite (`file://`), and on a
//! throw-away etcd when Debian's `etcd-server` is installed.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Mutex;

use common::*;
use felis_ipam::AutoAssignRequest;
use felis_ipam::Ipam;
use felis_store::Datastore;
use felis_store::memory::MemoryStore as MemStore;

const NODES: [&str; 4] = ["node-a", "node-b", "node-c", "node-d"];
const THREADS_PER_NODE: usize = 2;

/// Each thread allocates `rounds` single addresses (handle per allocation) and releases every
/// third one right away. The pool (/24 in /27 blocks: 8 blocks for 4 nodes) ends up ~85% full,
/// so nodes claim, race for blocks and borrow.
fn run_concurrency(store: &dyn Datastore, rounds: usize) {
    put_pool(store, &pool("pool", "10.20.0.0/24", 27));
    for n in NODES {
        put_node(store, n, &[]);
    }
    let kept: Mutex<Vec<IpAddr>> = Mutex::new(Vec::new());
    let everything: Mutex<Vec<(usize, usize, IpAddr)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for t in 0..NODES.len() * THREADS_PER_NODE {
            let kept = &kept;
            let everything = &everything;
            scope.spawn(move || {
                let ipam = Ipam::new(store);
                let node = NODES[t % NODES.len()];
                let mut rng = rng(t as u64);
                for i in 0..rounds {
                    let handle = format!("k8s-pod-network.t{t}-{i}");
                    let got = ipam
                        .auto_assign(&AutoAssignRequest::v4(node, &handle, 1), now(), &mut rng)
                        .unwrap_or_else(|e| panic!("thread {t} round {i}: {e}"));
                    let addr = got.v4[0].addr();
                    everything.lock().unwrap().push((t, i, addr));
                    if i % 3 == 2 {
                        assert_eq!(ipam.release_by_handle(&handle).unwrap(), vec![addr]);
                    } else {
                        kept.lock().unwrap().push(addr);
                    }
                }
            });
        }
    });
    let ipam = Ipam::new(store);
    let kept = kept.into_inner().unwrap();
    let unique: HashSet<IpAddr> = kept.iter().copied().collect();
    assert_eq!(unique.len(), kept.len(), "an address was handed out twice");
    assert_eq!(allocated(&ipam), unique);
    let report = ipam.check().unwrap();
    assert_eq!(report.problems(), 0, "{}", report.summary());
    assert_eq!(report.allocations, kept.len());
    assert_eq!(report.handles, kept.len());
    let pools = ipam.show().unwrap();
    assert_eq!(pools[0].in_use, kept.len() as u128);
    assert_eq!(pools[0].free(), 256 - kept.len() as u128);
    // Release everything: nothing left, no problem.
    let everything = everything.into_inner().unwrap();
    for (t, i, _) in &everything {
        ipam.release_by_handle(&format!("k8s-pod-network.t{t}-{i}"))
            .unwrap();
    }
    assert!(allocated(&ipam).is_empty());
    assert_eq!(ipam.check().unwrap().problems(), 0);
}

#[test]
fn threads_on_four_nodes_memstore() {
    let store = MemStore::new();
    run_concurrency(&store, 40);
}

#[test]
fn threads_on_four_nodes_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/felis.db", dir.path().display());
    let store = felis_store::open(&url).unwrap();
    run_concurrency(&*store, 40);
}

#[test]
fn threads_on_four_nodes_etcd() {
    let server = match felis_store::testing::EtcdServer::start() {
        Ok(server) => server,
        Err(e) => {
            eprintln!("skipping: {e}");
            return;
        }
    };
    let store = felis_store::open(&server.url()).unwrap();
    run_concurrency(&*store, 40);
}
