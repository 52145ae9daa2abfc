//! The Felis datastore.
//!
//! A [`Datastore`] is a revisioned key-value store with compare-and-swap and ordered, resumable
//! watches, the model of etcd v3. Keys follow Calico's etcd layout
//! (`/calico/resources/v3/projectcalico.org/<plural>/[<namespace>/]<name>`, IPAM under
//! `/calico/ipam/v2/...`); values are opaque bytes (JSON of the v3 resource, written by the layers
//! above). This crate knows nothing of resources: it stores bytes under keys.
//!
//! Backends: embedded (one SQLite file in WAL mode, safe for many processes on one machine) and
//! etcd v3. Both pass the same conformance suite.
//!
//! The trait is synchronous so that short-lived processes (the CLI, the CNI plugin) and pure logic
//! (the IPAM allocator) can use it without an async runtime. Long-running async code calls it from
//! `spawn_blocking` or a dedicated thread; every backend is safe to call from any thread.
//!
//! Open a store with [`open`] and a URL (`file:///var/lib/felis/felis.db` or
//! `etcd://host:2379[,host:2379]`); [`url_from_env`] picks the URL from a flag and the
//! environment the way Felis and Calico do.
//!
//! Semantics shared by both backends (the conformance suite in `tests/conformance.rs` checks them):
//! - an empty store is at revision 1; every successful write or [`Datastore::commit`] that
//!   changes something advances the revision by exactly one (all ops of a commit share it);
//! - `Update`/`Delete` with `expected` on an absent key fail with [`Error::Conflict`] with
//!   `actual: None`; without `expected` they fail with [`Error::NotFound`];
//! - a commit may name each key at most once and hold at most [`MAX_TXN_OPS`] operations
//!   ([`Error::InvalidTransaction`] otherwise); an empty commit changes nothing and returns the
//!   current revision;
//! - a watch from revision 0 is a watch from revision 1 (the whole retained history);
//! - compacting to a revision at or below the current compaction point does nothing; to a
//!   revision above the store's current revision is an error.
//!
//! Layer: an adapter with no Felis dependencies. `rusqlite` lives only in `sqlite.rs`,
//! `etcd-client` and its tokio runtime only in `etcd.rs`. [`memory::MemoryStore`] is an
//! in-process fake for unit tests of the crates above (it records commits and can inject
//! failures). With the `testing` feature, `testing::EtcdServer` runs a throw-away etcd.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

mod etcd;
pub mod memory;
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;
mod url;

pub use crate::etcd::EtcdStore;
pub use crate::sqlite::SqliteStore;
pub use crate::url::{DEFAULT_URL, DatastoreUrl, Durability, url_from_env, url_from_lookup};

/// Opens the datastore named by `url`: `file:///path/to.db[?sync=normal]` (the embedded store;
/// the file and its parent directories are created when missing) or
/// `etcd://host:port[,host:port]`.
pub fn open(url: &str) -> Result<Arc<dyn Datastore>, Error> {
    match DatastoreUrl::parse(url)? {
        DatastoreUrl::File(path, durability) => {
            Ok(Arc::new(SqliteStore::open_with(&path, durability)?))
        }
        DatastoreUrl::Etcd(endpoints) => Ok(Arc::new(EtcdStore::connect(&endpoints)?)),
    }
}

/// A store revision: a counter that increases with every write, global to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision(pub i64);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One stored key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, e.g. `/calico/resources/v3/projectcalico.org/ippools/default-pool`.
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
    /// The revision at which the key was created (its latest incarnation).
    pub create_revision: Revision,
    /// The revision of the last write to the key; the token for compare-and-swap.
    pub mod_revision: Revision,
}

/// The result of a list: the matching keys, sorted by key, and the store revision they were read
/// at (a watch from `revision + 1` misses nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Matching keys in ascending key order.
    pub items: Vec<KeyValue>,
    /// The store revision the listing reflects.
    pub revision: Revision,
}

/// One operation of an atomic transaction ([`Datastore::commit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Create `key`; the transaction fails with [`Error::AlreadyExists`] if it exists.
    Create {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Replace `key`. With `expected`, only if its mod revision is that one
    /// ([`Error::Conflict`] otherwise); without, the key must exist ([`Error::NotFound`]).
    Update {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The mod revision the key must have.
        expected: Option<Revision>,
    },
    /// Create or replace `key` unconditionally.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Delete `key`, which must exist; with `expected`, only at that mod revision.
    Delete {
        /// The key.
        key: String,
        /// The mod revision the key must have.
        expected: Option<Revision>,
    },
}

/// What a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or updated (`kv.mod_revision` is the event's revision).
    Put(KeyValue),
    /// A key was deleted at `revision`.
    Delete {
        /// The deleted key.
        key: String,
        /// The revision of the deletion.
        revision: Revision,
    },
    /// The requested start revision has been compacted away: the watcher must list again and
    /// watch from the listing's revision + 1. The watch ends after this event.
    Compacted {
        /// The oldest revision still available.
        compact_revision: Revision,
    },
}

/// A prefix watch: events in revision order, each exactly once, resumable from any revision
/// not yet compacted.
pub trait Watch: Send {
    /// Waits up to `timeout` for the next event; `Ok(None)` when none arrived in time.
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchEvent>, Error>;
}

/// A revisioned key-value store with compare-and-swap and watches.
pub trait Datastore: Send + Sync {
    /// Reads one key.
    fn get(&self, key: &str) -> Result<Option<KeyValue>, Error>;
    /// Lists every key that starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Listing, Error>;
    /// Creates `key`; fails with [`Error::AlreadyExists`] if it exists. Returns the new revision.
    fn create(&self, key: &str, value: &[u8]) -> Result<Revision, Error> {
        self.commit(&[TxnOp::Create {
            key: key.to_string(),
            value: value.to_vec(),
        }])
    }

    /// Replaces `key`, if `expected` is given only when its mod revision matches
    /// ([`Error::Conflict`] otherwise). Fails with [`Error::NotFound`] if absent.
    fn update(
        &self,
        key: &str,
        value: &[u8],
        expected: Option<Revision>,
    ) -> Result<Revision, Error> {
        self.commit(&[TxnOp::Update {
            key: key.to_string(),
            value: value.to_vec(),
            expected,
        }])
    }

    /// Deletes `key` (optionally only at mod revision `expected`). Returns the revision.
    fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Revision, Error> {
        self.commit(&[TxnOp::Delete {
            key: key.to_string(),
            expected,
        }])
    }
    /// Applies all `ops` atomically or none of them. Returns the new revision.
    fn commit(&self, ops: &[TxnOp]) -> Result<Revision, Error>;
    /// Watches every key under `prefix`, starting with the events at revision `from`.
    fn watch(&self, prefix: &str, from: Revision) -> Result<Box<dyn Watch>, Error>;
    /// The store's current revision.
    fn revision(&self) -> Result<Revision, Error>;
    /// Discards history older than `revision`; watches from before it get
    /// [`WatchEvent::Compacted`].
    fn compact(&self, revision: Revision) -> Result<(), Error>;
}

/// Datastore errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key already exists (create).
    #[error("{key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// The key does not exist (update, delete).
    #[error("{key} does not exist")]
    NotFound {
        /// The key.
        key: String,
    },
    /// Compare-and-swap failed: the key changed since it was read.
    #[error("{key} was modified concurrently (expected revision {expected}, found {actual:?})")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The revision found, `None` if the key is gone.
        actual: Option<Revision>,
    },
    /// The requested revision has been compacted.
    #[error("revision {requested} has been compacted (oldest available {compact_revision})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision available.
        compact_revision: Revision,
    },
    /// A transaction is malformed (e.g. it names the same key twice).
    #[error("invalid transaction on {key}: {reason}")]
    InvalidTransaction {
        /// The key involved.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The datastore URL could not be understood.
    #[error("invalid datastore {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend failed (I/O, connection, corrupt file).
    #[error("datastore backend failed: {context}")]
    Backend {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// A [`Error::Backend`] with `context` and the cause `source`.
    pub(crate) fn backend(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Backend {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// The most operations one [`Datastore::commit`] may hold: etcd's default `--max-txn-ops`.
/// Both backends enforce it, so code tested on the embedded store also works on etcd.
pub const MAX_TXN_OPS: usize = 128;

/// Rejects a commit that names a key more than once (etcd refuses those too) or holds more
/// than [`MAX_TXN_OPS`] operations.
pub(crate) fn check_transaction(ops: &[TxnOp]) -> Result<(), Error> {
    if ops.len() > MAX_TXN_OPS {
        return Err(Error::InvalidTransaction {
            key: ops
                .first()
                .map(|op| op.key().to_string())
                .unwrap_or_default(),
            reason: format!(
                "{} operations, more than the limit of {MAX_TXN_OPS}",
                ops.len()
            ),
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for op in ops {
        let key = op.key();
        if !seen.insert(key) {
            return Err(Error::InvalidTransaction {
                key: key.to_string(),
                reason: "the key appears more than once in one commit".to_string(),
            });
        }
    }
    Ok(())
}

impl TxnOp {
    /// The key this operation writes.
    pub fn key(&self) -> &str {
        match self {
            Self::Create { key, .. }
            | Self::Update { key, .. }
            | Self::Put { key, .. }
            | Self::Delete { key, .. } => key,
        }
    }
}

/// The exclusive end of the key range that holds every key starting with `prefix`, or `None`
/// when no upper bound exists (empty prefix, or all bytes 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A key's current revisions, as preconditions need them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Current {
    pub(crate) create_revision: i64,
    pub(crate) mod_revision: i64,
}

/// Checks `op`'s precondition against the key's current state (`None`: absent). Both backends
/// use this, so they fail the same way (etcd evaluates it after a failed transaction).
pub(crate) fn check_precondition(op: &TxnOp, found: Option<&Current>) -> Result<(), Error> {
    let key = || op.key().to_string();
    match op {
        TxnOp::Create { .. } => match found {
            Some(_) => Err(Error::AlreadyExists { key: key() }),
            None => Ok(()),
        },
        TxnOp::Put { .. } => Ok(()),
        TxnOp::Update { expected, .. } | TxnOp::Delete { expected, .. } => {
            match (expected, found) {
                (None, None) => Err(Error::NotFound { key: key() }),
                (None, Some(_)) => Ok(()),
                (Some(expected), None) => Err(Error::Conflict {
                    key: key(),
                    expected: *expected,
                    actual: None,
                }),
                (Some(expected), Some(cur)) if cur.mod_revision != expected.0 => {
                    Err(Error::Conflict {
                        key: key(),
                        expected: *expected,
                        actual: Some(Revision(cur.mod_revision)),
                    })
                }
                (Some(_), Some(_)) => Ok(()),
            }
        }
    }
}
