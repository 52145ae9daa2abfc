//! The datastore conformance suite: every case runs against the embedded SQLite store and
//! against a private etcd (Debian `etcd-server`, started by `felis_store::testing::EtcdServer`).
//! etcd cases fail, not skip, when etcd is missing.
//!
//! Multi-process cases re-execute this test binary with `FELIS_STORE_CHILD_URL` set; the child
//! runs only `child_counter_worker`.

// Test code: the shared cases are plain functions, which clippy's allow-*-in-tests misses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use felis_store::memory::MemoryStore;
use felis_store::testing::EtcdServer;
use felis_store::{Datastore, Error, KeyValue, Revision, TxnOp, Watch, WatchEvent};

/// A backend under test that can be restarted in place.
trait Fixture {
    /// The URL a second process uses to reach the same store.
    fn url(&self) -> Option<String>;
    /// Stops the store and starts it again on the same data; returns a fresh handle.
    fn restart(&mut self) -> Arc<dyn Datastore>;
    /// Opens a new handle on the store.
    fn open(&self) -> Arc<dyn Datastore> {
        let url = self.url().expect("a fixture without a URL overrides open");
        felis_store::open(&url).unwrap_or_else(|e| panic!("opening {url}: {e:?}"))
    }
}

struct SqliteFixture {
    dir: tempfile::TempDir,
    options: &'static str,
}

impl SqliteFixture {
    fn new() -> Self {
        Self::with_options("")
    }
    fn with_options(options: &'static str) -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("felis-store-test-")
                .tempdir()
                .unwrap(),
            options,
        }
    }
}

impl Fixture for SqliteFixture {
    fn url(&self) -> Option<String> {
        Some(format!(
            "file://{}/sub/dir/felis.db{}",
            self.dir.path().display(),
            self.options
        ))
    }
    fn restart(&mut self) -> Arc<dyn Datastore> {
        self.open()
    }
}

#[derive(Default)]
struct MemoryFixture {
    store: MemoryStore,
}

impl Fixture for MemoryFixture {
    fn url(&self) -> Option<String> {
        None
    }
    fn open(&self) -> Arc<dyn Datastore> {
        Arc::new(self.store.clone())
    }
    fn restart(&mut self) -> Arc<dyn Datastore> {
        self.open()
    }
}

struct EtcdFixture {
    server: EtcdServer,
}

impl EtcdFixture {
    fn new() -> Self {
        match EtcdServer::start() {
            Ok(server) => Self { server },
            Err(e) => panic!("etcd conformance tests need a local etcd: {}", chain(&e)),
        }
    }
}

impl Fixture for EtcdFixture {
    fn url(&self) -> Option<String> {
        Some(self.server.url())
    }
    fn restart(&mut self) -> Arc<dyn Datastore> {
        self.server
            .restart()
            .unwrap_or_else(|e| panic!("restarting etcd: {}", chain(&e)));
        self.open()
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

const WAIT: Duration = Duration::from_secs(10);

/// Reads `n` events, failing if they do not come within [`WAIT`] each.
fn take(watch: &mut dyn Watch, n: usize) -> Vec<WatchEvent> {
    (0..n)
        .map(|i| match watch.next(WAIT) {
            Ok(Some(event)) => event,
            Ok(None) => panic!("event {i} of {n} did not arrive within {WAIT:?}"),
            Err(e) => panic!("watch failed at event {i}: {}", chain(&e)),
        })
        .collect()
}

/// Asserts that no event arrives within `quiet`.
fn assert_quiet(watch: &mut dyn Watch, quiet: Duration) {
    let event = watch.next(quiet).unwrap();
    assert_eq!(event, None, "unexpected event");
}

fn put_event(event: &WatchEvent) -> &KeyValue {
    match event {
        WatchEvent::Put(kv) => kv,
        other => panic!("expected a put, got {other:?}"),
    }
}

fn keys(items: &[KeyValue]) -> Vec<&str> {
    items.iter().map(|kv| kv.key.as_str()).collect()
}

// ─── cases ─────────────────────────────────────────────────────────────────────────────────────

fn get_create_and_revisions(f: &mut dyn Fixture) {
    let store = f.open();
    assert_eq!(store.get("/calico/x").unwrap(), None);
    let before = store.revision().unwrap();
    let rev = store.create("/calico/x", b"one").unwrap();
    assert_eq!(rev, Revision(before.0 + 1));
    assert_eq!(store.revision().unwrap(), rev);
    let kv = store.get("/calico/x").unwrap().unwrap();
    assert_eq!(
        kv,
        KeyValue {
            key: "/calico/x".into(),
            value: b"one".to_vec(),
            create_revision: rev,
            mod_revision: rev,
        }
    );
    // Empty values are values.
    let rev2 = store.create("/calico/empty", b"").unwrap();
    assert_eq!(
        store.get("/calico/empty").unwrap().unwrap().value,
        Vec::<u8>::new()
    );
    assert_eq!(
        store.get("/calico/empty").unwrap().unwrap().mod_revision,
        rev2
    );
}

fn list_by_prefix_is_sorted_and_bounded(f: &mut dyn Fixture) {
    let store = f.open();
    let all = [
        "/a/c", "/a/b/c", "/b", "/a/a", "/a/bc", "/a0", "/a/b", "/a/é", "/a/~",
    ];
    for key in all {
        store.create(key, key.as_bytes()).unwrap();
    }
    let listing = store.list("/a/").unwrap();
    assert_eq!(
        keys(&listing.items),
        ["/a/a", "/a/b", "/a/b/c", "/a/bc", "/a/c", "/a/~", "/a/é"]
    );
    assert_eq!(listing.revision, store.revision().unwrap());
    assert_eq!(
        keys(&store.list("/a/b").unwrap().items),
        ["/a/b", "/a/b/c", "/a/bc"]
    );
    assert_eq!(keys(&store.list("/a/b/").unwrap().items), ["/a/b/c"]);
    assert_eq!(keys(&store.list("/a/é").unwrap().items), ["/a/é"]);
    assert!(store.list("/nothing/").unwrap().items.is_empty());
    let everything = store.list("").unwrap();
    let mut sorted: Vec<&str> = all.to_vec();
    sorted.sort_unstable();
    assert_eq!(keys(&everything.items), sorted);
    for kv in &everything.items {
        assert_eq!(kv.value, kv.key.as_bytes());
    }
}

fn list_many_keys(f: &mut dyn Fixture) {
    let store = f.open();
    // More than one etcd page (1000 keys), written in batches of the largest allowed commit.
    let batch_size = felis_store::MAX_TXN_OPS;
    for batch in 0..2500usize.div_ceil(batch_size) {
        let ops: Vec<TxnOp> = (batch * batch_size..((batch + 1) * batch_size).min(2500))
            .map(|i| TxnOp::Create {
                key: format!("/many/{i:05}"),
                value: vec![1; 10],
            })
            .collect();
        store.commit(&ops).unwrap();
    }
    let listing = store.list("/many/").unwrap();
    assert_eq!(listing.items.len(), 2500);
    let expected: Vec<String> = (0..2500).map(|i| format!("/many/{i:05}")).collect();
    assert_eq!(
        keys(&listing.items),
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(listing.revision, store.revision().unwrap());
}

fn create_existing_fails_naming_the_key(f: &mut dyn Fixture) {
    let store = f.open();
    store.create("/k", b"1").unwrap();
    let rev = store.revision().unwrap();
    match store.create("/k", b"2") {
        Err(Error::AlreadyExists { key }) => assert_eq!(key, "/k"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.get("/k").unwrap().unwrap().value, b"1");
    assert_eq!(
        store.revision().unwrap(),
        rev,
        "a failed write must not bump the revision"
    );
}

fn update_is_compare_and_swap(f: &mut dyn Fixture) {
    let store = f.open();
    let created = store.create("/u", b"1").unwrap();
    let updated = store.update("/u", b"2", Some(created)).unwrap();
    assert!(updated > created);
    let kv = store.get("/u").unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"2"[..], created, updated)
    );
    match store.update("/u", b"3", Some(created)) {
        Err(Error::Conflict {
            key,
            expected,
            actual,
        }) => {
            assert_eq!(
                (key.as_str(), expected, actual),
                ("/u", created, Some(updated))
            );
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    // Unconditional update of an existing key.
    let forced = store.update("/u", b"4", None).unwrap();
    assert_eq!(store.get("/u").unwrap().unwrap().mod_revision, forced);
    match store.update("/missing", b"x", None) {
        Err(Error::NotFound { key }) => assert_eq!(key, "/missing"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    match store.update("/missing", b"x", Some(forced)) {
        Err(Error::Conflict {
            key, actual: None, ..
        }) => assert_eq!(key, "/missing"),
        other => panic!("expected Conflict with actual None, got {other:?}"),
    }
    // A CAS on revision 0 never creates.
    assert!(matches!(
        store.update("/missing", b"x", Some(Revision(0))),
        Err(Error::Conflict { .. })
    ));
    assert_eq!(store.get("/missing").unwrap(), None);
    assert_eq!(store.revision().unwrap(), forced);
}

fn delete_checks_existence_and_revision(f: &mut dyn Fixture) {
    let store = f.open();
    match store.delete("/d", None) {
        Err(Error::NotFound { key }) => assert_eq!(key, "/d"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let first = store.create("/d", b"1").unwrap();
    let second = store.update("/d", b"2", None).unwrap();
    match store.delete("/d", Some(first)) {
        Err(Error::Conflict {
            key,
            expected,
            actual,
        }) => {
            assert_eq!(
                (key.as_str(), expected, actual),
                ("/d", first, Some(second))
            );
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let deleted = store.delete("/d", Some(second)).unwrap();
    assert_eq!(deleted, Revision(second.0 + 1));
    assert_eq!(store.get("/d").unwrap(), None);
    assert!(matches!(
        store.delete("/d", Some(second)),
        Err(Error::Conflict { actual: None, .. })
    ));
    // A re-created key starts a new incarnation.
    let again = store.create("/d", b"3").unwrap();
    let kv = store.get("/d").unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (again, again));
    // Unconditional delete.
    store.delete("/d", None).unwrap();
    assert_eq!(store.get("/d").unwrap(), None);
}

fn put_creates_or_replaces(f: &mut dyn Fixture) {
    let store = f.open();
    let first = store
        .commit(&[TxnOp::Put {
            key: "/p".into(),
            value: b"1".to_vec(),
        }])
        .unwrap();
    let second = store
        .commit(&[TxnOp::Put {
            key: "/p".into(),
            value: b"2".to_vec(),
        }])
        .unwrap();
    let kv = store.get("/p").unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"2"[..], first, second)
    );
}

fn commit_is_atomic(f: &mut dyn Fixture) {
    let store = f.open();
    let existing = store.create("/t/existing", b"e").unwrap();
    let stale = store.create("/t/stale", b"s0").unwrap();
    let current = store.update("/t/stale", b"s1", None).unwrap();
    let before = store.revision().unwrap();
    let attempts: Vec<(Vec<TxnOp>, &str)> = vec![
        (
            vec![
                TxnOp::Create {
                    key: "/t/new".into(),
                    value: b"n".to_vec(),
                },
                TxnOp::Create {
                    key: "/t/existing".into(),
                    value: b"x".to_vec(),
                },
            ],
            "/t/existing",
        ),
        (
            vec![
                TxnOp::Put {
                    key: "/t/put".into(),
                    value: b"p".to_vec(),
                },
                TxnOp::Update {
                    key: "/t/stale".into(),
                    value: b"x".to_vec(),
                    expected: Some(stale),
                },
            ],
            "/t/stale",
        ),
        (
            vec![
                TxnOp::Delete {
                    key: "/t/existing".into(),
                    expected: Some(existing),
                },
                TxnOp::Delete {
                    key: "/t/absent".into(),
                    expected: None,
                },
            ],
            "/t/absent",
        ),
        (
            vec![
                TxnOp::Update {
                    key: "/t/stale".into(),
                    value: b"ok".to_vec(),
                    expected: Some(current),
                },
                TxnOp::Update {
                    key: "/t/absent".into(),
                    value: b"x".to_vec(),
                    expected: None,
                },
            ],
            "/t/absent",
        ),
    ];
    for (ops, culprit) in attempts {
        let err = store.commit(&ops).unwrap_err();
        let named = match &err {
            Error::AlreadyExists { key }
            | Error::NotFound { key }
            | Error::Conflict { key, .. } => key,
            other => panic!("unexpected error {other:?}"),
        };
        assert_eq!(named, culprit, "{err}");
        assert_eq!(
            store.revision().unwrap(),
            before,
            "failed commit {ops:?} bumped the revision"
        );
    }
    assert_eq!(store.get("/t/new").unwrap(), None);
    assert_eq!(store.get("/t/put").unwrap(), None);
    assert_eq!(store.get("/t/existing").unwrap().unwrap().value, b"e");
    assert_eq!(store.get("/t/stale").unwrap().unwrap().value, b"s1");

    // A successful commit applies every op at one new revision.
    let rev = store
        .commit(&[
            TxnOp::Create {
                key: "/t/new".into(),
                value: b"n".to_vec(),
            },
            TxnOp::Update {
                key: "/t/stale".into(),
                value: b"s2".to_vec(),
                expected: Some(current),
            },
            TxnOp::Delete {
                key: "/t/existing".into(),
                expected: Some(existing),
            },
            TxnOp::Put {
                key: "/t/put".into(),
                value: b"p".to_vec(),
            },
        ])
        .unwrap();
    assert_eq!(rev, Revision(before.0 + 1));
    assert_eq!(store.revision().unwrap(), rev);
    let listing = store.list("/t/").unwrap();
    assert_eq!(keys(&listing.items), ["/t/new", "/t/put", "/t/stale"]);
    assert!(listing.items.iter().all(|kv| kv.mod_revision == rev));
}

fn commit_rejects_duplicate_keys_and_accepts_empty(f: &mut dyn Fixture) {
    let store = f.open();
    let before = store.revision().unwrap();
    let err = store
        .commit(&[
            TxnOp::Put {
                key: "/dup".into(),
                value: b"1".to_vec(),
            },
            TxnOp::Put {
                key: "/dup".into(),
                value: b"2".to_vec(),
            },
        ])
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidTransaction { key, .. } if key == "/dup"),
        "{err:?}"
    );
    assert_eq!(store.commit(&[]).unwrap(), before);
    let too_many: Vec<TxnOp> = (0..=felis_store::MAX_TXN_OPS)
        .map(|i| TxnOp::Put {
            key: format!("/many/{i}"),
            value: vec![],
        })
        .collect();
    let err = store.commit(&too_many).unwrap_err();
    assert!(matches!(err, Error::InvalidTransaction { .. }), "{err:?}");
    // Exactly the limit, with a CAS update per key, is accepted by every backend.
    let at_limit: Vec<TxnOp> = (0..felis_store::MAX_TXN_OPS)
        .map(|i| TxnOp::Put {
            key: format!("/limit/{i}"),
            value: vec![],
        })
        .collect();
    let rev = store.commit(&at_limit).unwrap();
    let updates: Vec<TxnOp> = (0..felis_store::MAX_TXN_OPS)
        .map(|i| TxnOp::Update {
            key: format!("/limit/{i}"),
            value: vec![1],
            expected: Some(rev),
        })
        .collect();
    store.commit(&updates).unwrap();
    let before = store.revision().unwrap();
    assert_eq!(store.revision().unwrap(), before);
    assert_eq!(store.get("/dup").unwrap(), None);
}

fn revisions_increase_by_one_per_write(f: &mut dyn Fixture) {
    let store = f.open();
    assert!(store.revision().unwrap().0 >= 1);
    let mut last = store.create("/r/sentinel", b"s").unwrap();
    for i in 0..20 {
        let key = format!("/r/{}", i % 3);
        let rev = match store.get(&key).unwrap() {
            Some(kv) if i % 4 == 0 => store.delete(&key, Some(kv.mod_revision)).unwrap(),
            Some(kv) => store.update(&key, b"v", Some(kv.mod_revision)).unwrap(),
            None => store.create(&key, b"v").unwrap(),
        };
        assert_eq!(rev, Revision(last.0 + 1), "write {i}");
        last = rev;
        // Failed writes leave the revision alone.
        assert!(store.create("/r/sentinel", b"again").is_err());
        assert!(store.update("/r/none", b"x", None).is_err());
        assert_eq!(store.revision().unwrap(), last);
    }
}

fn watch_is_ordered_and_resumes_from_the_middle(f: &mut dyn Fixture) {
    let store = f.open();
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(
            store
                .commit(&[TxnOp::Put {
                    key: format!("/w/{}", i % 4),
                    value: vec![i],
                }])
                .unwrap(),
        );
        store
            .commit(&[TxnOp::Put {
                key: format!("/other/{i}"),
                value: vec![i],
            }])
            .unwrap();
    }
    // From the start: all ten, in order.
    let mut watch = store.watch("/w/", revs[0]).unwrap();
    let events = take(watch.as_mut(), 10);
    for (i, event) in events.iter().enumerate() {
        let kv = put_event(event);
        assert_eq!(
            (kv.key.clone(), kv.value.clone(), kv.mod_revision),
            (format!("/w/{}", i % 4), vec![i as u8], revs[i])
        );
    }
    assert_quiet(watch.as_mut(), Duration::from_millis(200));
    // From the middle (revision of the 6th write): writes 6..10, then live writes.
    let mut middle = store.watch("/w/", revs[5]).unwrap();
    let events = take(middle.as_mut(), 5);
    let seen: Vec<Revision> = events.iter().map(|e| put_event(e).mod_revision).collect();
    assert_eq!(seen, revs[5..].to_vec());
    // From a revision that touched only /other/: starts at the next /w/ event.
    let mut between = store.watch("/w/", Revision(revs[2].0 + 1)).unwrap();
    assert_eq!(
        put_event(&take(between.as_mut(), 1)[0]).mod_revision,
        revs[3]
    );
    let live = store.create("/w/live", b"l").unwrap();
    store.create("/other/live", b"l").unwrap();
    for w in [&mut watch, &mut middle] {
        let kv = put_event(&take(w.as_mut(), 1)[0]).clone();
        assert_eq!(
            (kv.key.as_str(), kv.mod_revision, kv.create_revision),
            ("/w/live", live, live)
        );
        assert_quiet(w.as_mut(), Duration::from_millis(100));
    }
    // Revision 0 means the whole retained history.
    let mut zero = store.watch("/w/", Revision(0)).unwrap();
    assert_eq!(put_event(&take(zero.as_mut(), 1)[0]).mod_revision, revs[0]);
    // An empty prefix watches everything.
    let mut all = store.watch("", revs[0]).unwrap();
    let events = take(all.as_mut(), 2);
    assert_eq!(put_event(&events[0]).key, "/w/0");
    assert_eq!(put_event(&events[1]).key, "/other/0");
}

fn watch_from_the_future_waits(f: &mut dyn Fixture) {
    let store = f.open();
    let now = store.revision().unwrap();
    let mut watch = store.watch("/f/", Revision(now.0 + 2)).unwrap();
    store.create("/f/a", b"skipped").unwrap();
    let rev = store.create("/f/b", b"seen").unwrap();
    let kv = put_event(&take(watch.as_mut(), 1)[0]).clone();
    assert_eq!((kv.key.as_str(), kv.mod_revision), ("/f/b", rev));
}

fn watch_sees_deletes_and_transactions(f: &mut dyn Fixture) {
    let store = f.open();
    let start = Revision(store.revision().unwrap().0 + 1);
    let mut watch = store.watch("/x/", start).unwrap();
    let a = store.create("/x/a", b"a").unwrap();
    let deleted = store.delete("/x/a", Some(a)).unwrap();
    let txn = store
        .commit(&[
            TxnOp::Create {
                key: "/x/b".into(),
                value: b"b".to_vec(),
            },
            TxnOp::Create {
                key: "/x/c".into(),
                value: b"c".to_vec(),
            },
            TxnOp::Create {
                key: "/y/ignored".into(),
                value: b"y".to_vec(),
            },
        ])
        .unwrap();
    let events = take(watch.as_mut(), 4);
    assert_eq!(put_event(&events[0]).mod_revision, a);
    assert_eq!(
        events[1],
        WatchEvent::Delete {
            key: "/x/a".into(),
            revision: deleted
        }
    );
    let mut txn_keys: Vec<(&str, Revision)> = events[2..]
        .iter()
        .map(|e| (put_event(e).key.as_str(), put_event(e).mod_revision))
        .collect();
    txn_keys.sort_unstable();
    assert_eq!(txn_keys, [("/x/b", txn), ("/x/c", txn)]);
    assert_quiet(watch.as_mut(), Duration::from_millis(200));
}

fn watch_timeout_returns_none(f: &mut dyn Fixture) {
    let store = f.open();
    let mut watch = store
        .watch("/quiet/", Revision(store.revision().unwrap().0 + 1))
        .unwrap();
    let started = Instant::now();
    assert_eq!(watch.next(Duration::from_millis(300)).unwrap(), None);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

fn compaction_signals_compacted(f: &mut dyn Fixture) {
    let store = f.open();
    let first = store.create("/c/a", b"1").unwrap();
    store.update("/c/a", b"2", None).unwrap();
    let middle = store.update("/c/a", b"3", None).unwrap();
    let last = store.create("/c/b", b"4").unwrap();
    store.compact(middle).unwrap();
    // Compacting again, or to an older revision, is a no-op; beyond the store's revision fails.
    store.compact(middle).unwrap();
    store.compact(first).unwrap();
    let beyond = store.compact(Revision(last.0 + 100)).unwrap_err();
    assert!(matches!(beyond, Error::Backend { .. }), "{beyond:?}");
    // Watching from before the compaction point says so, then ends.
    let mut old = store.watch("/c/", first).unwrap();
    assert_eq!(
        take(old.as_mut(), 1)[0],
        WatchEvent::Compacted {
            compact_revision: middle
        }
    );
    assert_eq!(old.next(Duration::from_millis(100)).unwrap(), None);
    // From the compaction point on, history is intact.
    let mut kept = store.watch("/c/", middle).unwrap();
    let events = take(kept.as_mut(), 2);
    assert_eq!(put_event(&events[0]).mod_revision, middle);
    assert_eq!(put_event(&events[1]).mod_revision, last);
    // Data is untouched by compaction.
    let listing = store.list("/c/").unwrap();
    assert_eq!(keys(&listing.items), ["/c/a", "/c/b"]);
    assert_eq!(listing.items[0].value, b"3");
}

fn compaction_overtakes_a_slow_watcher(f: &mut dyn Fixture) {
    let store = f.open();
    let start = store.create("/s/a", b"1").unwrap();
    let mut watch = store.watch("/s/", start).unwrap();
    assert_eq!(put_event(&take(watch.as_mut(), 1)[0]).mod_revision, start);
    // The watcher is idle while history it has not read yet is compacted away... unless it
    // already buffered it. Either way it must never skip silently.
    for i in 0..5 {
        store.update("/s/a", &[i], None).unwrap();
    }
    let end = store.update("/s/a", b"end", None).unwrap();
    store.compact(end).unwrap();
    let mut seen = Vec::new();
    loop {
        match watch.next(Duration::from_secs(2)).unwrap() {
            Some(WatchEvent::Put(kv)) => seen.push(kv.mod_revision),
            Some(WatchEvent::Compacted { compact_revision }) => {
                assert_eq!(compact_revision, end);
                break;
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {
                // Everything was delivered before compaction could matter.
                let expected: Vec<Revision> = (start.0 + 1..=end.0).map(Revision).collect();
                assert_eq!(seen, expected);
                break;
            }
        }
    }
    // Whatever was seen is a gap-free run from start + 1.
    for (i, rev) in seen.iter().enumerate() {
        assert_eq!(*rev, Revision(start.0 + 1 + i as i64));
    }
}

fn large_values(f: &mut dyn Fixture) {
    let store = f.open();
    let value: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let start = Revision(store.revision().unwrap().0 + 1);
    let mut watch = store.watch("/big/", start).unwrap();
    let rev = store.create("/big/one", &value).unwrap();
    store.create("/big/two", &value).unwrap();
    store.create("/big/three", &value).unwrap();
    assert_eq!(store.get("/big/one").unwrap().unwrap().value, value);
    let listing = store.list("/big/").unwrap();
    assert_eq!(listing.items.len(), 3);
    assert!(listing.items.iter().all(|kv| kv.value == value));
    let events = take(watch.as_mut(), 3);
    assert_eq!(put_event(&events[0]).mod_revision, rev);
    assert!(events.iter().all(|e| put_event(e).value == value));
}

fn restart_keeps_data_and_watches_resume(f: &mut dyn Fixture) {
    let store = f.open();
    let first = store.create("/rs/a", b"1").unwrap();
    let second = store.create("/rs/b", b"2").unwrap();
    let mut long_lived = store.watch("/rs/", first).unwrap();
    assert_eq!(take(long_lived.as_mut(), 2).len(), 2);
    let before = store.revision().unwrap();
    drop(store);

    let store = f.restart();
    assert_eq!(store.revision().unwrap(), before);
    assert_eq!(store.get("/rs/a").unwrap().unwrap().mod_revision, first);
    let third = store.create("/rs/c", b"3").unwrap();
    assert_eq!(third, Revision(before.0 + 1));
    // A new watch resumes from a revision written before the restart.
    let mut resumed = store.watch("/rs/", second).unwrap();
    let events = take(resumed.as_mut(), 2);
    assert_eq!(put_event(&events[0]).mod_revision, second);
    assert_eq!(put_event(&events[1]).mod_revision, third);
    // A watch opened before the restart carries on, exactly once.
    let events = take(long_lived.as_mut(), 1);
    assert_eq!(put_event(&events[0]).mod_revision, third);
    assert_quiet(long_lived.as_mut(), Duration::from_millis(300));
}

/// The key every multi-writer case increments.
const COUNTER: &str = "/counter";

/// Increments [`COUNTER`] `times` times with read-modify-CAS, retrying on conflict.
fn increment(store: &dyn Datastore, times: u32) -> u32 {
    let mut conflicts = 0;
    for _ in 0..times {
        loop {
            let current = store.get(COUNTER).unwrap().expect("counter exists");
            let n: u64 = std::str::from_utf8(&current.value)
                .unwrap()
                .parse()
                .unwrap();
            match store.update(
                COUNTER,
                (n + 1).to_string().as_bytes(),
                Some(current.mod_revision),
            ) {
                Ok(_) => break,
                Err(Error::Conflict { .. }) => conflicts += 1,
                Err(e) => panic!("increment failed: {}", chain(&e)),
            }
        }
    }
    conflicts
}

fn concurrent_writers_in_threads(f: &mut dyn Fixture) {
    let store = f.open();
    store.create(COUNTER, b"0").unwrap();
    let start = store.revision().unwrap();
    let (threads, times) = (4, 25);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || increment(store.as_ref(), times))
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let total = u64::from(threads * times);
    assert_eq!(
        store.get(COUNTER).unwrap().unwrap().value,
        total.to_string().as_bytes()
    );
    // The watch saw every value exactly once, in order.
    let mut watch = store.watch(COUNTER, Revision(start.0 + 1)).unwrap();
    let values: Vec<u64> = take(watch.as_mut(), total as usize)
        .iter()
        .map(|e| {
            std::str::from_utf8(&put_event(e).value)
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(values, (1..=total).collect::<Vec<_>>());
}

/// Child processes: killed if the test fails before they finish.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn concurrent_writers_in_processes(f: &mut dyn Fixture) {
    let Some(url) = f.url() else {
        return; // an in-process store cannot be shared with other processes
    };
    let store = f.open();
    store.create(COUNTER, b"0").unwrap();
    let start = store.revision().unwrap();
    let (processes, times) = (4u32, 25u32);
    let exe = std::env::current_exe().unwrap();
    let mut children = Children(Vec::new());
    for _ in 0..processes {
        let child = Command::new(&exe)
            .args([
                "--exact",
                "child_counter_worker",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FELIS_STORE_CHILD_URL", &url)
            .env("FELIS_STORE_CHILD_TIMES", times.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        children.0.push(child);
    }
    // Watch live while they run.
    let mut watch = store.watch(COUNTER, Revision(start.0 + 1)).unwrap();
    let total = u64::from(processes * times);
    let values: Vec<u64> = take(watch.as_mut(), total as usize)
        .iter()
        .map(|e| {
            std::str::from_utf8(&put_event(e).value)
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(values, (1..=total).collect::<Vec<_>>());
    for child in &mut children.0 {
        let status = child.wait().unwrap();
        assert!(status.success(), "a writer process failed: {status}");
    }
    assert_eq!(
        store.get(COUNTER).unwrap().unwrap().value,
        total.to_string().as_bytes()
    );
    assert_eq!(store.revision().unwrap(), Revision(start.0 + total as i64));
}

/// Not a test on its own: the body of each writer process of `concurrent_writers_in_processes`.
#[test]
fn child_counter_worker() {
    let Ok(url) = std::env::var("FELIS_STORE_CHILD_URL") else {
        return;
    };
    let times: u32 = std::env::var("FELIS_STORE_CHILD_TIMES")
        .unwrap()
        .parse()
        .unwrap();
    let store = felis_store::open(&url).unwrap();
    let conflicts = increment(store.as_ref(), times);
    eprintln!(
        "child {}: {times} increments, {conflicts} conflicts",
        std::process::id()
    );
}

/// Not a test on its own: the body of each writer killed by `killed_writers_leave_the_store_consistent`.
#[test]
fn child_endless_writer() {
    let Ok(url) = std::env::var("FELIS_STORE_CHILD_ENDLESS_URL") else {
        return;
    };
    let store = felis_store::open(&url).unwrap();
    for i in 0u64.. {
        let value = i.to_string().into_bytes();
        store
            .commit(&[
                TxnOp::Put {
                    key: "/kill/a".into(),
                    value: value.clone(),
                },
                TxnOp::Put {
                    key: "/kill/b".into(),
                    value,
                },
            ])
            .unwrap();
    }
}

fn killed_writers_leave_the_store_consistent(f: &mut dyn Fixture) {
    let Some(url) = f.url() else {
        return; // an in-process store cannot be shared with other processes
    };
    let store = f.open();
    let start = Revision(store.revision().unwrap().0 + 1);
    let exe = std::env::current_exe().unwrap();
    let mut children = Children(Vec::new());
    for _ in 0..2 {
        let child = Command::new(&exe)
            .args([
                "--exact",
                "child_endless_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FELIS_STORE_CHILD_ENDLESS_URL", &url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        children.0.push(child);
    }
    // Let them write for a while, then SIGKILL them wherever they are.
    let deadline = Instant::now() + WAIT;
    while store.revision().unwrap().0 < start.0 + 20 {
        assert!(Instant::now() < deadline, "the writers made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    drop(children);

    // Every commit is whole: both keys carry the same value and revision.
    let store = f.open();
    let a = store.get("/kill/a").unwrap().unwrap();
    let b = store.get("/kill/b").unwrap().unwrap();
    assert_eq!((&a.value, a.mod_revision), (&b.value, b.mod_revision));
    let end = store.revision().unwrap();
    assert_eq!(a.mod_revision, end);
    // The history holds exactly two events per revision, with no gaps.
    let mut watch = store.watch("/kill/", start).unwrap();
    let events = take(watch.as_mut(), 2 * (end.0 - start.0 + 1) as usize);
    for (i, pair) in events.chunks(2).enumerate() {
        let (x, y) = (put_event(&pair[0]), put_event(&pair[1]));
        assert_eq!(
            (x.mod_revision, y.mod_revision),
            (Revision(start.0 + i as i64), Revision(start.0 + i as i64))
        );
        assert_eq!(x.value, y.value);
    }
    assert_quiet(watch.as_mut(), Duration::from_millis(200));
    // And the store still takes writes.
    assert_eq!(
        store.create("/kill/after", b"ok").unwrap(),
        Revision(end.0 + 1)
    );
}

fn usable_inside_a_tokio_runtime(f: &mut dyn Fixture) {
    let fixture: &dyn Fixture = f;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        // Open, use and drop the store from inside an async task: must not panic.
        let store = fixture.open();
        let rev = store.create("/rt/a", b"1").unwrap();
        let mut watch = store.watch("/rt/", rev).unwrap();
        assert_eq!(put_event(&take(watch.as_mut(), 1)[0]).mod_revision, rev);
        let store2 = Arc::clone(&store);
        let got = tokio::task::spawn_blocking(move || store2.get("/rt/a").unwrap())
            .await
            .unwrap();
        assert_eq!(got.unwrap().mod_revision, rev);
        drop(watch);
        drop(store);
    });
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    mt.block_on(async move {
        let store = fixture.open();
        let handle = tokio::spawn(async move {
            store.update("/rt/a", b"2", None).unwrap();
            store.list("/rt/").unwrap()
        });
        assert_eq!(handle.await.unwrap().items.len(), 1);
    });
}

fn many_watchers(f: &mut dyn Fixture) {
    let store = f.open();
    let start = Revision(store.revision().unwrap().0 + 1);
    let mut watches: Vec<Box<dyn Watch>> = (0..20)
        .map(|_| store.watch("/mw/", start).unwrap())
        .collect();
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(store.create(&format!("/mw/{i}"), b"v").unwrap());
    }
    for watch in &mut watches {
        let seen: Vec<Revision> = take(watch.as_mut(), 10)
            .iter()
            .map(|e| put_event(e).mod_revision)
            .collect();
        assert_eq!(seen, revs);
    }
}

macro_rules! conformance {
    ($backend:ident, $fixture:expr) => {
        mod $backend {
            use super::*;

            fn run(case: fn(&mut dyn Fixture)) {
                let mut fixture = $fixture;
                case(&mut fixture);
            }

            #[test]
            fn get_create_and_revisions() {
                run(super::get_create_and_revisions)
            }
            #[test]
            fn list_by_prefix_is_sorted_and_bounded() {
                run(super::list_by_prefix_is_sorted_and_bounded)
            }
            #[test]
            fn list_many_keys() {
                run(super::list_many_keys)
            }
            #[test]
            fn create_existing_fails_naming_the_key() {
                run(super::create_existing_fails_naming_the_key)
            }
            #[test]
            fn update_is_compare_and_swap() {
                run(super::update_is_compare_and_swap)
            }
            #[test]
            fn delete_checks_existence_and_revision() {
                run(super::delete_checks_existence_and_revision)
            }
            #[test]
            fn put_creates_or_replaces() {
                run(super::put_creates_or_replaces)
            }
            #[test]
            fn commit_is_atomic() {
                run(super::commit_is_atomic)
            }
            #[test]
            fn commit_rejects_duplicate_keys_and_accepts_empty() {
                run(super::commit_rejects_duplicate_keys_and_accepts_empty)
            }
            #[test]
            fn revisions_increase_by_one_per_write() {
                run(super::revisions_increase_by_one_per_write)
            }
            #[test]
            fn watch_is_ordered_and_resumes_from_the_middle() {
                run(super::watch_is_ordered_and_resumes_from_the_middle)
            }
            #[test]
            fn watch_from_the_future_waits() {
                run(super::watch_from_the_future_waits)
            }
            #[test]
            fn watch_sees_deletes_and_transactions() {
                run(super::watch_sees_deletes_and_transactions)
            }
            #[test]
            fn watch_timeout_returns_none() {
                run(super::watch_timeout_returns_none)
            }
            #[test]
            fn compaction_signals_compacted() {
                run(super::compaction_signals_compacted)
            }
            #[test]
            fn compaction_overtakes_a_slow_watcher() {
                run(super::compaction_overtakes_a_slow_watcher)
            }
            #[test]
            fn large_values() {
                run(super::large_values)
            }
            #[test]
            fn restart_keeps_data_and_watches_resume() {
                run(super::restart_keeps_data_and_watches_resume)
            }
            #[test]
            fn concurrent_writers_in_threads() {
                run(super::concurrent_writers_in_threads)
            }
            #[test]
            fn concurrent_writers_in_processes() {
                run(super::concurrent_writers_in_processes)
            }
            #[test]
            fn killed_writers_leave_the_store_consistent() {
                run(super::killed_writers_leave_the_store_consistent)
            }
            #[test]
            fn usable_inside_a_tokio_runtime() {
                run(super::usable_inside_a_tokio_runtime)
            }
            #[test]
            fn many_watchers() {
                run(super::many_watchers)
            }
        }
    };
}

conformance!(sqlite, SqliteFixture::new());
conformance!(memory, MemoryFixture::default());
conformance!(sqlite_sync_full, SqliteFixture::with_options("?sync=full"));
conformance!(etcd, EtcdFixture::new());

// Backend-specific checks that don't fit the shared cases.

#[test]
fn open_rejects_bad_urls_clearly() {
    for url in ["", "file://rel.db", "mysql://x", "etcd://", "etcd://h:port"] {
        match felis_store::open(url) {
            Err(Error::InvalidUrl { url: named, .. }) => assert_eq!(named, url),
            Err(other) => panic!("{url}: expected InvalidUrl, got {other:?}"),
            Ok(_) => panic!("{url}: opened"),
        }
    }
}

#[test]
fn etcd_unreachable_is_a_clear_error() {
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = match felis_store::open(&format!("etcd://127.0.0.1:{port}")) {
        Err(e) => e,
        Ok(_) => panic!("connected to nothing"),
    };
    let text = chain(&err);
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn etcd_with_several_endpoints_uses_any_live_one() {
    let server = EtcdServer::start().unwrap_or_else(|e| panic!("{}", chain(&e)));
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let live = server.url().trim_start_matches("etcd://").to_string();
    let store = felis_store::open(&format!("etcd://127.0.0.1:{dead},{live}")).unwrap();
    for i in 0..10 {
        store.create(&format!("/ep/{i}"), b"x").unwrap();
    }
    assert_eq!(store.list("/ep/").unwrap().items.len(), 10);
}

#[test]
fn sqlite_file_is_shared_between_handles() {
    let fixture = SqliteFixture::new();
    let a = fixture.open();
    let b = fixture.open();
    let rev = a.create("/shared", b"1").unwrap();
    assert_eq!(b.get("/shared").unwrap().unwrap().mod_revision, rev);
    let mut watch = b.watch("/", rev).unwrap();
    let rev2 = a.update("/shared", b"2", Some(rev)).unwrap();
    let events = take(watch.as_mut(), 2);
    assert_eq!(put_event(&events[1]).mod_revision, rev2);
}

/// Not a test on its own: each process of `sqlite_fresh_file_opened_by_many_processes_at_once`.
#[test]
fn child_open_and_create() {
    let Ok(url) = std::env::var("FELIS_STORE_CHILD_OPEN_URL") else {
        return;
    };
    let store = felis_store::open(&url).unwrap();
    store
        .create(&format!("/proc/{}", std::process::id()), b"here")
        .unwrap();
}

#[test]
fn sqlite_fresh_file_opened_by_many_processes_at_once() {
    let fixture = SqliteFixture::new();
    let url = fixture.url().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut children = Children(Vec::new());
    for _ in 0..6 {
        let child = Command::new(&exe)
            .args([
                "--exact",
                "child_open_and_create",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FELIS_STORE_CHILD_OPEN_URL", &url)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        children.0.push(child);
    }
    for child in &mut children.0 {
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "a process failed to open or write: {status}"
        );
    }
    let store = fixture.open();
    let listing = store.list("/proc/").unwrap();
    assert_eq!(listing.items.len(), 6);
    assert_eq!(listing.revision, Revision(7));
}
