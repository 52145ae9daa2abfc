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

use std::fmt;
use std::time::Duration;

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
    fn create(&self, key: &str, value: &[u8]) -> Result<Revision, Error>;
    /// Replaces `key`, if `expected` is given only when its mod revision matches
    /// ([`Error::Conflict`] otherwise). Fails with [`Error::NotFound`] if absent.
    fn update(&self, key: &str, value: &[u8], expected: Option<Revision>)
    -> Result<Revision, Error>;
    /// Deletes `key` (optionally only at mod revision `expected`). Returns the revision.
    fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Revision, Error>;
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
