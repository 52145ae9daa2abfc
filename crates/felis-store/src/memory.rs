//! An in-memory [`Datastore`] for unit tests of the crates above (IPAM, the agent, the CLI).
//!
//! It has the same semantics as the real backends (it runs the same conformance suite, minus
//! restarts and multiple processes), records every successful commit, and can inject failures:
//! backend errors, or a concurrent writer that changes a key just before the next commit (to
//! drive compare-and-swap retry loops).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{
    Current, Datastore, Error, KeyValue, Listing, Revision, TxnOp, Watch, WatchEvent,
    check_precondition, check_transaction,
};

/// An in-process store; cheap to clone (clones share the data).
#[derive(Clone, Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("MemoryStore")
            .field("revision", &state.revision)
            .field("keys", &state.kv.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct State {
    revision: i64,
    compact_revision: i64,
    kv: BTreeMap<String, KeyValue>,
    /// The watch stream: (sequence number, event), oldest first.
    log: VecDeque<(u64, WatchEvent)>,
    next_seq: u64,
    commits: Vec<(Revision, Vec<TxnOp>)>,
    /// Fail this many upcoming commits with a backend error.
    failures: usize,
    /// Keys a "concurrent writer" rewrites just before the next commit checks preconditions.
    interference: Vec<String>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            revision: 1,
            compact_revision: 0,
            kv: BTreeMap::new(),
            log: VecDeque::new(),
            next_seq: 0,
            commits: Vec::new(),
            failures: 0,
            interference: Vec::new(),
        }
    }
}

impl State {
    /// Applies `ops` (preconditions already checked) at a new revision.
    fn apply(&mut self, ops: &[TxnOp]) -> Revision {
        self.revision += 1;
        let revision = Revision(self.revision);
        for op in ops {
            let event = match op {
                TxnOp::Create { key, value }
                | TxnOp::Update { key, value, .. }
                | TxnOp::Put { key, value } => {
                    let create_revision =
                        self.kv.get(key).map_or(revision, |kv| kv.create_revision);
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision,
                        mod_revision: revision,
                    };
                    self.kv.insert(key.clone(), kv.clone());
                    WatchEvent::Put(kv)
                }
                TxnOp::Delete { key, .. } => {
                    self.kv.remove(key);
                    WatchEvent::Delete {
                        key: key.clone(),
                        revision,
                    }
                }
            };
            self.log.push_back((self.next_seq, event));
            self.next_seq += 1;
        }
        revision
    }
}

impl MemoryStore {
    /// An empty store at revision 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every successful commit so far (single-key writes included), with its revision.
    pub fn commits(&self) -> Vec<(Revision, Vec<TxnOp>)> {
        self.shared.lock().commits.clone()
    }

    /// Makes the next `count` writes fail with [`Error::Backend`] without changing anything.
    pub fn fail_next_writes(&self, count: usize) {
        self.shared.lock().failures = count;
    }

    /// Simulates another writer: just before the next write checks its preconditions, `key`
    /// is rewritten with its current value (or created, empty), so a CAS on it fails with
    /// [`Error::Conflict`] and the caller must re-read.
    pub fn interfere_before_next_write(&self, key: &str) {
        self.shared.lock().interference.push(key.to_string());
    }
}

/// The revision an event happened at.
fn event_revision(event: &WatchEvent) -> i64 {
    match event {
        WatchEvent::Put(kv) => kv.mod_revision.0,
        WatchEvent::Delete { revision, .. } => revision.0,
        WatchEvent::Compacted { compact_revision } => compact_revision.0,
    }
}

fn event_key(event: &WatchEvent) -> &str {
    match event {
        WatchEvent::Put(kv) => &kv.key,
        WatchEvent::Delete { key, .. } => key,
        WatchEvent::Compacted { .. } => "",
    }
}

impl Datastore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        Ok(self.shared.lock().kv.get(key).cloned())
    }

    fn list(&self, prefix: &str) -> Result<Listing, Error> {
        let state = self.shared.lock();
        let items = state
            .kv
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok(Listing {
            items,
            revision: Revision(state.revision),
        })
    }

    fn commit(&self, ops: &[TxnOp]) -> Result<Revision, Error> {
        check_transaction(ops)?;
        let mut state = self.shared.lock();
        if ops.is_empty() {
            return Ok(Revision(state.revision));
        }
        if state.failures > 0 {
            state.failures -= 1;
            let key = ops.first().map(TxnOp::key).unwrap_or_default();
            return Err(Error::backend(format!("writing {key}"), "injected failure"));
        }
        let interference = std::mem::take(&mut state.interference);
        if !interference.is_empty() {
            let puts: Vec<TxnOp> = interference
                .into_iter()
                .map(|key| {
                    let value = state
                        .kv
                        .get(&key)
                        .map(|kv| kv.value.clone())
                        .unwrap_or_default();
                    TxnOp::Put { key, value }
                })
                .collect();
            state.apply(&puts);
        }
        for op in ops {
            let found = state.kv.get(op.key()).map(|kv| Current {
                create_revision: kv.create_revision.0,
                mod_revision: kv.mod_revision.0,
            });
            check_precondition(op, found.as_ref())?;
        }
        let revision = state.apply(ops);
        state.commits.push((revision, ops.to_vec()));
        drop(state);
        self.shared.changed.notify_all();
        Ok(revision)
    }

    fn watch(&self, prefix: &str, from: Revision) -> Result<Box<dyn Watch>, Error> {
        Ok(Box::new(MemoryWatch {
            shared: Arc::clone(&self.shared),
            prefix: prefix.to_string(),
            from: from.0.max(1),
            cursor: 0,
            next_revision: from.0.max(1),
            ended: false,
        }))
    }

    fn revision(&self) -> Result<Revision, Error> {
        Ok(Revision(self.shared.lock().revision))
    }

    fn compact(&self, revision: Revision) -> Result<(), Error> {
        let mut state = self.shared.lock();
        if revision.0 > state.revision {
            return Err(Error::backend(
                format!("compacting to revision {revision}"),
                format!(
                    "revision {revision} is beyond the current revision {}",
                    state.revision
                ),
            ));
        }
        if revision.0 <= state.compact_revision {
            return Ok(());
        }
        state.compact_revision = revision.0;
        while state
            .log
            .front()
            .is_some_and(|(_, e)| event_revision(e) < revision.0)
        {
            state.log.pop_front();
        }
        drop(state);
        self.shared.changed.notify_all();
        Ok(())
    }
}

struct MemoryWatch {
    shared: Arc<Shared>,
    prefix: String,
    from: i64,
    /// The first log sequence number not yet examined.
    cursor: u64,
    /// Every event before this revision was delivered or skipped; compaction past it loses
    /// events.
    next_revision: i64,
    ended: bool,
}

impl Watch for MemoryWatch {
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchEvent>, Error> {
        if self.ended {
            return Ok(None);
        }
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if self.next_revision < state.compact_revision {
                self.ended = true;
                return Ok(Some(WatchEvent::Compacted {
                    compact_revision: Revision(state.compact_revision),
                }));
            }
            // Sequence numbers are contiguous, so the cursor maps to an index.
            let front = state.log.front().map_or(state.next_seq, |(seq, _)| *seq);
            let start = usize::try_from(self.cursor.saturating_sub(front)).unwrap_or(usize::MAX);
            let mut found = None;
            for (index, (seq, event)) in state.log.iter().enumerate().skip(start) {
                self.cursor = seq + 1;
                if event_revision(event) >= self.from && event_key(event).starts_with(&self.prefix)
                {
                    found = Some((index, event.clone()));
                    break;
                }
            }
            match found {
                Some((index, event)) => {
                    self.next_revision = state
                        .log
                        .get(index + 1)
                        .map_or(state.revision + 1, |(_, e)| event_revision(e));
                    return Ok(Some(event));
                }
                None => {
                    self.cursor = state.next_seq;
                    self.next_revision = self.next_revision.max(state.revision + 1);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_successful_commits_only() {
        let store = MemoryStore::new();
        let rev = store.create("/a", b"1").unwrap();
        assert!(store.create("/a", b"2").is_err());
        assert_eq!(
            store.commits(),
            vec![(
                rev,
                vec![TxnOp::Create {
                    key: "/a".into(),
                    value: b"1".to_vec()
                }]
            )]
        );
    }

    #[test]
    fn injected_failures_change_nothing() {
        let store = MemoryStore::new();
        store.fail_next_writes(2);
        assert!(matches!(
            store.create("/a", b"1"),
            Err(Error::Backend { .. })
        ));
        assert!(matches!(
            store.create("/a", b"1"),
            Err(Error::Backend { .. })
        ));
        assert_eq!(store.revision().unwrap(), Revision(1));
        assert_eq!(store.create("/a", b"1").unwrap(), Revision(2));
    }

    #[test]
    fn interference_makes_the_next_cas_conflict() {
        let store = MemoryStore::new();
        let rev = store.create("/a", b"1").unwrap();
        store.interfere_before_next_write("/a");
        match store.update("/a", b"2", Some(rev)) {
            Err(Error::Conflict {
                key,
                expected,
                actual,
            }) => {
                assert_eq!(
                    (key.as_str(), expected, actual),
                    ("/a", rev, Some(Revision(3)))
                );
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        // The retry, with the fresh revision, goes through.
        let fresh = store.get("/a").unwrap().unwrap();
        assert_eq!(fresh.value, b"1");
        assert_eq!(
            store.update("/a", b"2", Some(fresh.mod_revision)).unwrap(),
            Revision(4)
        );
    }

    #[test]
    fn watch_wakes_on_a_write_from_another_thread() {
        let store = MemoryStore::new();
        let mut watch = store.watch("/w/", Revision(2)).unwrap();
        let writer = store.clone();
        let handle = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            writer.create("/w/x", b"1").unwrap()
        });
        let event = watch.next(Duration::from_secs(5)).unwrap();
        let rev = handle.join().unwrap();
        assert!(matches!(event, Some(WatchEvent::Put(kv)) if kv.mod_revision == rev));
    }
}
