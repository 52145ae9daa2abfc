//! Differential test: random sequences of commits give the same results (revisions, errors
//! naming the same key, final contents, watch streams) on the in-memory fake, the embedded
//! SQLite store and etcd. Revisions are compared relative to each store's revision at the start
//! of a case, so one etcd serves every case (each case uses its own key prefix).

// Test code: the helpers are plain functions, which clippy's allow-*-in-tests misses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use felis_store::memory::MemoryStore;
use felis_store::testing::EtcdServer;
use felis_store::{Datastore, Error, Revision, TxnOp, WatchEvent};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Which revision an update or delete expects.
#[derive(Debug, Clone, Copy)]
enum Expect {
    None,
    /// The key's current mod revision (read just before the commit).
    Current,
    /// One less than the current mod revision (or 1 when absent).
    Stale,
}

#[derive(Debug, Clone)]
enum Step {
    Create(usize, u8),
    Update(usize, u8, Expect),
    Put(usize, u8),
    Delete(usize, Expect),
}

const KEYS: usize = 4;

fn expect() -> impl Strategy<Value = Expect> {
    prop_oneof![
        Just(Expect::None),
        Just(Expect::Current),
        Just(Expect::Stale)
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..KEYS, any::<u8>()).prop_map(|(k, v)| Step::Create(k, v)),
        (0..KEYS, any::<u8>(), expect()).prop_map(|(k, v, e)| Step::Update(k, v, e)),
        (0..KEYS, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        (0..KEYS, expect()).prop_map(|(k, e)| Step::Delete(k, e)),
    ]
}

/// A case: commits of 1–3 steps each (a key may repeat: then every backend must refuse).
fn case() -> impl Strategy<Value = Vec<Vec<Step>>> {
    prop::collection::vec(prop::collection::vec(step(), 1..=3), 1..25)
}

/// A result with revisions made relative to the case's base revision.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok(i64),
    AlreadyExists(String),
    NotFound(String),
    Conflict(String, Option<i64>),
    InvalidTransaction(String),
}

/// Runs `case` under `prefix` on `store`; returns every outcome, the final listing and the
/// watch stream, all relative to the starting revision.
fn run(store: &dyn Datastore, prefix: &str, case: &[Vec<Step>]) -> (Vec<Outcome>, Vec<String>) {
    let base = store.revision().unwrap().0;
    let key = |k: usize| format!("{prefix}{k}");
    let mut outcomes = Vec::new();
    for commit in case {
        let ops: Vec<TxnOp> = commit
            .iter()
            .map(|step| {
                let expected = |k: usize, e: Expect| {
                    let current = store.get(&key(k)).unwrap().map(|kv| kv.mod_revision.0);
                    match e {
                        Expect::None => None,
                        Expect::Current => Some(Revision(current.unwrap_or(base + 1000))),
                        Expect::Stale => Some(Revision(current.map_or(1, |c| c - 1))),
                    }
                };
                match *step {
                    Step::Create(k, v) => TxnOp::Create {
                        key: key(k),
                        value: vec![v],
                    },
                    Step::Update(k, v, e) => TxnOp::Update {
                        key: key(k),
                        value: vec![v],
                        expected: expected(k, e),
                    },
                    Step::Put(k, v) => TxnOp::Put {
                        key: key(k),
                        value: vec![v],
                    },
                    Step::Delete(k, e) => TxnOp::Delete {
                        key: key(k),
                        expected: expected(k, e),
                    },
                }
            })
            .collect();
        let relative = |r: Revision| r.0 - base;
        outcomes.push(match store.commit(&ops) {
            Ok(rev) => Outcome::Ok(relative(rev)),
            Err(Error::AlreadyExists { key }) => Outcome::AlreadyExists(key),
            Err(Error::NotFound { key }) => Outcome::NotFound(key),
            Err(Error::Conflict { key, actual, .. }) => {
                Outcome::Conflict(key, actual.map(relative))
            }
            Err(Error::InvalidTransaction { key, .. }) => Outcome::InvalidTransaction(key),
            Err(e) => panic!("commit {ops:?} failed: {e:?}"),
        });
    }
    let mut trace = Vec::new();
    for kv in store.list(prefix).unwrap().items {
        trace.push(format!(
            "kv {} {:?} {} {}",
            kv.key,
            kv.value,
            kv.create_revision.0 - base,
            kv.mod_revision.0 - base
        ));
    }
    let end = store.revision().unwrap().0;
    let mut watch = store.watch(prefix, Revision(base + 1)).unwrap();
    // Every revision of the case changed at least one key under the prefix.
    let mut seen_end = base;
    loop {
        // Wait for every revision of the case, then for the rest of the last one's events.
        let wait = if seen_end < end {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(50)
        };
        let Some(event) = watch.next(wait).unwrap() else {
            assert!(seen_end >= end, "watch stalled at {seen_end} of {end}");
            break;
        };
        trace.push(match event {
            WatchEvent::Put(kv) => {
                seen_end = kv.mod_revision.0;
                format!(
                    "put {} {:?} {} {}",
                    kv.key,
                    kv.value,
                    kv.create_revision.0 - base,
                    kv.mod_revision.0 - base
                )
            }
            WatchEvent::Delete { key, revision } => {
                seen_end = revision.0;
                format!("delete {key} {}", revision.0 - base)
            }
            WatchEvent::Compacted { .. } => panic!("unexpected compaction"),
        });
    }
    (outcomes, trace)
}

fn differential(stores: &[(&str, Arc<dyn Datastore>)], cases: u32) {
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    let case_number = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&case(), |case| {
        // A fresh prefix per case (shrinking reruns too) keeps cases apart in shared stores.
        let n = case_number.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("/diff/{n}/");
        let (memory_outcomes, memory_trace) = run(stores[0].1.as_ref(), &prefix, &case);
        for (name, store) in &stores[1..] {
            let (outcomes, trace) = run(store.as_ref(), &prefix, &case);
            prop_assert_eq!(
                &outcomes,
                &memory_outcomes,
                "outcomes differ: memory vs {}",
                name
            );
            prop_assert_eq!(
                &trace,
                &memory_trace,
                "contents or watch differ: memory vs {}",
                name
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn memory_and_sqlite_agree() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/diff.db", dir.path().display());
    let stores: Vec<(&str, Arc<dyn Datastore>)> = vec![
        ("memory", Arc::new(MemoryStore::new())),
        ("sqlite", felis_store::open(&url).unwrap()),
    ];
    differential(&stores, 64);
}

#[test]
fn memory_and_etcd_agree() {
    let server = EtcdServer::start().unwrap_or_else(|e| {
        panic!(
            "the etcd differential test needs a local etcd: {e}: {:?}",
            std::error::Error::source(&e)
        )
    });
    let stores: Vec<(&str, Arc<dyn Datastore>)> = vec![
        ("memory", Arc::new(MemoryStore::new())),
        ("etcd", felis_store::open(&server.url()).unwrap()),
    ];
    differential(&stores, 24);
}
