//! An in-memory [`Datastore`] for tests: a `BTreeMap` and a revision counter behind a mutex,
//! with etcd's semantics (global revision, create/mod revisions, atomic transactions, ordered
//! watches with compaction).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;

use felis_store::Datastore;
use felis_store::Error;
use felis_store::KeyValue;
use felis_store::Listing;
use felis_store::Revision;
use felis_store::TxnOp;
use felis_store::Watch;
use felis_store::WatchEvent;

#[derive(Debug, Default)]
struct State {
    revision: i64,
    compacted: i64,
    kv: BTreeMap<String, KeyValue>,
    log: Vec<(u64, WatchEvent)>,
    next_seq: u64,
    writes: u64,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// An in-memory datastore. Clones share the same data.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    shared: Arc<Shared>,
}

fn poisoned() -> Error {
    Error::Backend {
        context: "memstore mutex poisoned".into(),
        source: "poisoned".into(),
    }
}

fn event_revision(event: &WatchEvent) -> i64 {
    match event {
        WatchEvent::Put(kv) => kv.mod_revision.0,
        WatchEvent::Delete { revision, .. } => revision.0,
        WatchEvent::Compacted { compact_revision } => compact_revision.0,
    }
}

impl MemStore {
    /// An empty store at revision 0.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, Error> {
        self.shared.state.lock().map_err(|_| poisoned())
    }

    /// Number of successful write operations (create/update/delete/commit) so far.
    pub fn writes(&self) -> u64 {
        self.lock().map(|s| s.writes).unwrap_or(0)
    }

    /// Checks every op against `state`, returns an error if any precondition fails.
    fn check(state: &State, ops: &[TxnOp]) -> Result<(), Error> {
        for op in ops {
            match op {
                TxnOp::Create { key, .. } => {
                    if state.kv.contains_key(key) {
                        return Err(Error::AlreadyExists { key: key.clone() });
                    }
                }
                TxnOp::Update { key, expected, .. } | TxnOp::Delete { key, expected } => {
                    let current = state.kv.get(key);
                    match (current, expected) {
                        (None, Some(expected)) => {
                            return Err(Error::Conflict {
                                key: key.clone(),
                                expected: *expected,
                                actual: None,
                            });
                        }
                        (None, None) => return Err(Error::NotFound { key: key.clone() }),
                        (Some(kv), Some(expected)) if kv.mod_revision != *expected => {
                            return Err(Error::Conflict {
                                key: key.clone(),
                                expected: *expected,
                                actual: Some(kv.mod_revision),
                            });
                        }
                        _ => {}
                    }
                }
                TxnOp::Put { .. } => {}
            }
        }
        Ok(())
    }

    fn apply(&self, ops: &[TxnOp]) -> Result<Revision, Error> {
        let mut state = self.lock()?;
        Self::check(&state, ops)?;
        state.revision += 1;
        state.writes += 1;
        let revision = Revision(state.revision);
        for op in ops {
            match op {
                TxnOp::Create { key, value }
                | TxnOp::Update { key, value, .. }
                | TxnOp::Put { key, value } => {
                    let create_revision = state
                        .kv
                        .get(key)
                        .map(|kv| kv.create_revision)
                        .unwrap_or(revision);
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision,
                        mod_revision: revision,
                    };
                    state.kv.insert(key.clone(), kv.clone());
                    let seq = state.next_seq;
                    state.next_seq += 1;
                    state.log.push((seq, WatchEvent::Put(kv)));
                }
                TxnOp::Delete { key, .. } => {
                    state.kv.remove(key);
                    let seq = state.next_seq;
                    state.next_seq += 1;
                    state.log.push((
                        seq,
                        WatchEvent::Delete {
                            key: key.clone(),
                            revision,
                        },
                    ));
                }
            }
        }
        drop(state);
        self.shared.changed.notify_all();
        Ok(revision)
    }
}

impl Datastore for MemStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        Ok(self.lock()?.kv.get(key).cloned())
    }

    fn list(&self, prefix: &str) -> Result<Listing, Error> {
        let state = self.lock()?;
        let items = state
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok(Listing {
            items,
            revision: Revision(state.revision),
        })
    }

    fn create(&self, key: &str, value: &[u8]) -> Result<Revision, Error> {
        self.apply(&[TxnOp::Create {
            key: key.into(),
            value: value.into(),
        }])
    }

    fn update(
        &self,
        key: &str,
        value: &[u8],
        expected: Option<Revision>,
    ) -> Result<Revision, Error> {
        self.apply(&[TxnOp::Update {
            key: key.into(),
            value: value.into(),
            expected,
        }])
    }

    fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Revision, Error> {
        self.apply(&[TxnOp::Delete {
            key: key.into(),
            expected,
        }])
    }

    fn commit(&self, ops: &[TxnOp]) -> Result<Revision, Error> {
        self.apply(ops)
    }

    fn watch(&self, prefix: &str, from: Revision) -> Result<Box<dyn Watch>, Error> {
        Ok(Box::new(MemWatch {
            shared: Arc::clone(&self.shared),
            prefix: prefix.to_string(),
            from: from.0.max(1),
            seq: None,
            done: false,
        }))
    }

    fn revision(&self) -> Result<Revision, Error> {
        Ok(Revision(self.lock()?.revision))
    }

    fn compact(&self, revision: Revision) -> Result<(), Error> {
        let mut state = self.lock()?;
        if revision.0 > state.compacted {
            state.compacted = revision.0;
            state.log.retain(|(_, e)| event_revision(e) >= revision.0);
        }
        Ok(())
    }
}

struct MemWatch {
    shared: Arc<Shared>,
    prefix: String,
    /// The first revision to report, until the first event fixes `seq`.
    from: i64,
    /// Sequence number of the next log entry to look at.
    seq: Option<u64>,
    done: bool,
}

impl Watch for MemWatch {
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchEvent>, Error> {
        if self.done {
            return Ok(None);
        }
        let mut state = self.shared.state.lock().map_err(|_| poisoned())?;
        let mut waited = false;
        loop {
            if self.seq.is_none() && self.from < state.compacted {
                self.done = true;
                return Ok(Some(WatchEvent::Compacted {
                    compact_revision: Revision(state.compacted),
                }));
            }
            let found = state.log.iter().find(|(seq, e)| {
                let wanted = match self.seq {
                    Some(next) => *seq >= next,
                    None => event_revision(e) >= self.from,
                };
                wanted
                    && match e {
                        WatchEvent::Put(kv) => kv.key.starts_with(&self.prefix),
                        WatchEvent::Delete { key, .. } => key.starts_with(&self.prefix),
                        WatchEvent::Compacted { .. } => false,
                    }
            });
            if let Some((seq, event)) = found {
                self.seq = Some(seq + 1);
                return Ok(Some(event.clone()));
            }
            if waited {
                return Ok(None);
            }
            let (guard, _) = self
                .shared
                .changed
                .wait_timeout(state, timeout)
                .map_err(|_| poisoned())?;
            state = guard;
            waited = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &MemStore, key: &str, value: &str) -> Revision {
        store
            .commit(&[TxnOp::Put {
                key: key.into(),
                value: value.into(),
            }])
            .unwrap()
    }

    #[test]
    fn cas_create_update_delete_follow_etcd() {
        let store = MemStore::new();
        let r1 = store.create("/a", b"1").unwrap();
        assert!(matches!(
            store.create("/a", b"2"),
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            store.update("/a", b"2", Some(Revision(99))),
            Err(Error::Conflict { .. })
        ));
        let r2 = store.update("/a", b"2", Some(r1)).unwrap();
        let kv = store.get("/a").unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision), (r1, r2));
        assert!(matches!(
            store.update("/b", b"x", None),
            Err(Error::NotFound { .. })
        ));
        // A failed transaction changes nothing.
        let failed = store.commit(&[
            TxnOp::Put {
                key: "/c".into(),
                value: b"c".to_vec(),
            },
            TxnOp::Delete {
                key: "/a".into(),
                expected: Some(r1),
            },
        ]);
        assert!(failed.is_err());
        assert!(store.get("/c").unwrap().is_none());
        assert_eq!(store.revision().unwrap(), r2);
        store.delete("/a", Some(r2)).unwrap();
        assert!(store.list("/").unwrap().items.is_empty());
    }

    #[test]
    fn watch_reports_every_event_in_order_and_compaction() {
        let store = MemStore::new();
        put(&store, "/x/1", "a");
        let r = store
            .commit(&[
                TxnOp::Put {
                    key: "/x/2".into(),
                    value: b"b".to_vec(),
                },
                TxnOp::Put {
                    key: "/y/1".into(),
                    value: b"c".to_vec(),
                },
                TxnOp::Put {
                    key: "/x/3".into(),
                    value: b"d".to_vec(),
                },
            ])
            .unwrap();
        store.delete("/x/1", None).unwrap();
        let mut watch = store.watch("/x/", Revision(0)).unwrap();
        let mut keys = Vec::new();
        while let Some(event) = watch.next(Duration::from_millis(10)).unwrap() {
            keys.push(match event {
                WatchEvent::Put(kv) => format!("put {} @{}", kv.key, kv.mod_revision),
                WatchEvent::Delete { key, revision } => format!("del {key} @{revision}"),
                WatchEvent::Compacted { .. } => "compacted".into(),
            });
        }
        assert_eq!(
            keys,
            ["put /x/1 @1", "put /x/2 @2", "put /x/3 @2", "del /x/1 @3"]
        );
        // From the middle of history.
        let mut watch = store.watch("/x/", r).unwrap();
        assert!(
            matches!(watch.next(Duration::ZERO).unwrap(), Some(WatchEvent::Put(kv)) if kv.key == "/x/2")
        );
        store.compact(Revision(3)).unwrap();
        let mut old = store.watch("/x/", Revision(1)).unwrap();
        assert!(matches!(
            old.next(Duration::ZERO).unwrap(),
            Some(WatchEvent::Compacted { .. })
        ));
        // A live watch sees later writes.
        let mut live = store.watch("/x/", Revision(4)).unwrap();
        let writer = store.clone();
        let handle = std::thread::spawn(move || put(&writer, "/x/9", "z"));
        let event = live.next(Duration::from_secs(5)).unwrap();
        handle.join().unwrap();
        assert!(matches!(event, Some(WatchEvent::Put(kv)) if kv.key == "/x/9"));
    }
}
