//! The embedded backend: one SQLite file in WAL mode, shared safely by many processes.
//!
//! ```text
//! felis_meta(name, value)   revision, compact_revision, schema_version
//! kv(key BLOB, value, create_revision, mod_revision)          the current state
//! changelog(id, revision, key, value|NULL, create_revision)  the watch stream; NULL = delete
//! ```
//!
//! Writers take the write lock up front (`BEGIN IMMEDIATE`, waiting up to [`BUSY_TIMEOUT`]),
//! read the revision, check every precondition, apply every op with revision + 1 and append one
//! changelog row per op, all in one SQLite transaction. Because writers are serialised, changelog
//! ids grow in revision order and a reader that sees revision R has seen everything up to R.
//!
//! A watch owns its own connection and polls: `PRAGMA data_version` (which changes when another
//! connection commits) tells it cheaply when to read the changelog again.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::{
    Current, Datastore, Durability, Error, KeyValue, Listing, Revision, TxnOp, Watch, WatchEvent,
    check_precondition, check_transaction, prefix_end,
};

/// How long a connection waits for another process' write lock before failing.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// `PRAGMA application_id` of a Felis store ("FELS").
const APPLICATION_ID: i64 = 0x4645_4c53;

/// The schema version written to `felis_meta`.
const SCHEMA_VERSION: i64 = 1;

/// How many changelog rows a watch reads per query.
const WATCH_BATCH: i64 = 512;

/// The shortest and longest pause between two polls of an idle watch.
const POLL_MIN: Duration = Duration::from_micros(500);
const POLL_MAX: Duration = Duration::from_millis(2);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS felis_meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO felis_meta (name, value) VALUES
    ('schema_version', 1), ('revision', 1), ('compact_revision', 0);
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changelog (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    revision INTEGER NOT NULL,
    key BLOB NOT NULL,
    value BLOB,
    create_revision INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS changelog_revision ON changelog (revision);
";

/// The embedded datastore backed by one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    durability: Durability,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating when missing, with its parent directories) the store file at `path`,
    /// with every commit fsynced ([`Durability::Full`]).
    pub fn open(path: &Path) -> Result<Self, Error> {
        Self::open_with(path, Durability::Full)
    }

    /// [`SqliteStore::open`] with a choice of [`Durability`].
    pub fn open_with(path: &Path, durability: Durability) -> Result<Self, Error> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::backend(
                    format!("creating directory {} for the datastore", parent.display()),
                    e,
                )
            })?;
        }
        let conn = connect(path, true, durability)?;
        init_schema(&conn, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            durability,
            conn: Mutex::new(conn),
        })
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave the connection inside a transaction
        // (rusqlite rolls back on drop), so a poisoned lock is still usable.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn context(&self, what: &str) -> String {
        format!("{what} in {}", self.path.display())
    }
}

/// Opens one connection with the settings every Felis connection uses.
fn connect(path: &Path, create: bool, durability: Durability) -> Result<Connection, Error> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let context = || format!("opening datastore file {}", path.display());
    let conn = Connection::open_with_flags(path, flags).map_err(|e| sql_error(context(), e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| sql_error(context(), e))?;
    // journal_mode needs a brief exclusive lock the first time; the busy handler covers it,
    // but a racing process can still make it report the old mode, so retry a few times.
    let mut mode = String::new();
    for _ in 0..50 {
        mode = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| {
                row.get::<_, String>(0)
            })
            .map_err(|e| sql_error(context(), e))?;
        if mode.eq_ignore_ascii_case("wal") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::backend(
            context(),
            format!("could not enable WAL mode (mode is {mode})"),
        ));
    }
    // WAL + FULL: a commit is durable once it returns (fsync of the WAL per commit).
    // WAL + NORMAL: fsync only at checkpoints; a crash of the process loses nothing.
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(|e| sql_error(context(), e))?;
    conn.pragma_update(None, "foreign_keys", "OFF")
        .map_err(|e| sql_error(context(), e))?;
    Ok(conn)
}

/// Creates the tables on a new file and checks that an existing file is a Felis store.
fn init_schema(conn: &Connection, path: &Path) -> Result<(), Error> {
    let context = || format!("initialising datastore file {}", path.display());
    // Fast path, without the write lock: a file that is already a Felis store of this schema
    // needs nothing. Under many busy writers (CNI processes) a write lock at open can wait long.
    let app_id: i64 = conn
        .query_row("PRAGMA application_id", [], |row| row.get(0))
        .map_err(|e| sql_error(context(), e))?;
    if app_id == APPLICATION_ID && meta(conn, "schema_version").ok() == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| sql_error(context(), e))?;
    let result = (|| -> Result<(), Error> {
        let app_id: i64 = conn
            .query_row("PRAGMA application_id", [], |row| row.get(0))
            .map_err(|e| sql_error(context(), e))?;
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
            .map_err(|e| sql_error(context(), e))?;
        if app_id == 0 && tables > 0 {
            return Err(Error::backend(
                context(),
                "the file is an SQLite database but not a Felis datastore",
            ));
        }
        if app_id != 0 && app_id != APPLICATION_ID {
            return Err(Error::backend(
                context(),
                format!("the file is an SQLite database of another application (id {app_id:#x})"),
            ));
        }
        conn.execute_batch(SCHEMA)
            .map_err(|e| sql_error(context(), e))?;
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(|e| sql_error(context(), e))?;
        let version = meta(conn, "schema_version").map_err(|e| sql_error(context(), e))?;
        if version != SCHEMA_VERSION {
            return Err(Error::backend(
                context(),
                format!("unsupported schema version {version} (this build knows {SCHEMA_VERSION})"),
            ));
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn
            .execute_batch("COMMIT")
            .map_err(|e| sql_error(context(), e)),
        Err(e) => {
            // The original error is the one worth reporting.
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Maps a SQLite error, naming a corrupt or foreign file plainly.
fn sql_error(context: String, e: rusqlite::Error) -> Error {
    let code = e.sqlite_error_code();
    match code {
        Some(ErrorCode::NotADatabase) => {
            Error::backend(format!("{context}: the file is not an SQLite database"), e)
        }
        Some(ErrorCode::DatabaseCorrupt) => {
            Error::backend(format!("{context}: the database file is corrupt"), e)
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::backend(
            format!(
                "{context}: the database stayed locked by another process for {BUSY_TIMEOUT:?}"
            ),
            e,
        ),
        _ => Error::backend(context, e),
    }
}

fn meta(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT value FROM felis_meta WHERE name = ?1")?
        .query_row([name], |row| row.get(0))
}

fn set_meta(conn: &Connection, name: &str, value: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE felis_meta SET value = ?2 WHERE name = ?1")?
        .execute(params![name, value])?;
    Ok(())
}

fn current(conn: &Connection, key: &str) -> rusqlite::Result<Option<Current>> {
    conn.prepare_cached("SELECT create_revision, mod_revision FROM kv WHERE key = ?1")?
        .query_row([key.as_bytes()], |row| {
            Ok(Current {
                create_revision: row.get(0)?,
                mod_revision: row.get(1)?,
            })
        })
        .optional()
}

fn key_string(bytes: Vec<u8>) -> rusqlite::Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn row_to_kv(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: key_string(row.get(0)?)?,
        value: row.get(1)?,
        create_revision: Revision(row.get(2)?),
        mod_revision: Revision(row.get(3)?),
    })
}

/// Applies `op` at `revision`; its precondition held against `found`.
fn apply(
    conn: &Connection,
    op: &TxnOp,
    found: Option<&Current>,
    revision: i64,
) -> rusqlite::Result<()> {
    let key = op.key().as_bytes();
    match op {
        TxnOp::Create { value, .. } | TxnOp::Update { value, .. } | TxnOp::Put { value, .. } => {
            let create_revision = found.map_or(revision, |c| c.create_revision);
            conn.prepare_cached(
                "INSERT INTO kv (key, value, create_revision, mod_revision) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                     mod_revision = excluded.mod_revision",
            )?
            .execute(params![key, value, create_revision, revision])?;
            conn.prepare_cached(
                "INSERT INTO changelog (revision, key, value, create_revision)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![revision, key, value, create_revision])?;
        }
        TxnOp::Delete { .. } => {
            conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?
                .execute([key])?;
            let create_revision = found.map_or(0, |c| c.create_revision);
            conn.prepare_cached(
                "INSERT INTO changelog (revision, key, value, create_revision)
                 VALUES (?1, ?2, NULL, ?3)",
            )?
            .execute(params![revision, key, create_revision])?;
        }
    }
    Ok(())
}

impl Datastore for SqliteStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        let conn = self.lock();
        conn.prepare_cached(
            "SELECT key, value, create_revision, mod_revision FROM kv WHERE key = ?1",
        )
        .and_then(|mut stmt| stmt.query_row([key.as_bytes()], row_to_kv).optional())
        .map_err(|e| sql_error(self.context(&format!("reading {key}")), e))
    }

    fn list(&self, prefix: &str) -> Result<Listing, Error> {
        let mut conn = self.lock();
        let context = || self.context(&format!("listing {prefix}"));
        let tx = conn.transaction().map_err(|e| sql_error(context(), e))?;
        let result = (|| -> rusqlite::Result<Listing> {
            let revision = Revision(meta(&tx, "revision")?);
            let start = prefix.as_bytes();
            let items = match prefix_end(start) {
                Some(end) => tx
                    .prepare_cached(
                        "SELECT key, value, create_revision, mod_revision FROM kv
                         WHERE key >= ?1 AND key < ?2 ORDER BY key",
                    )?
                    .query_map(params![start, end], row_to_kv)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
                None => tx
                    .prepare_cached(
                        "SELECT key, value, create_revision, mod_revision FROM kv
                         WHERE key >= ?1 ORDER BY key",
                    )?
                    .query_map(params![start], row_to_kv)?
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            };
            Ok(Listing { items, revision })
        })();
        let listing = result.map_err(|e| sql_error(context(), e))?;
        tx.finish().map_err(|e| sql_error(context(), e))?;
        Ok(listing)
    }

    fn commit(&self, ops: &[TxnOp]) -> Result<Revision, Error> {
        check_transaction(ops)?;
        if ops.is_empty() {
            return self.revision();
        }
        let mut conn = self.lock();
        let context = || match ops {
            [op] => self.context(&format!("writing {}", op.key())),
            [first, ..] => self.context(&format!(
                "committing {} ops starting with {}",
                ops.len(),
                first.key()
            )),
            [] => self.context("committing"),
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error(context(), e))?;
        let revision = meta(&tx, "revision").map_err(|e| sql_error(context(), e))? + 1;
        let mut found = Vec::with_capacity(ops.len());
        for op in ops {
            let cur = current(&tx, op.key()).map_err(|e| sql_error(context(), e))?;
            check_precondition(op, cur.as_ref())?; // dropping `tx` rolls back
            found.push(cur);
        }
        for (op, cur) in ops.iter().zip(&found) {
            apply(&tx, op, cur.as_ref(), revision).map_err(|e| sql_error(context(), e))?;
        }
        set_meta(&tx, "revision", revision).map_err(|e| sql_error(context(), e))?;
        tx.commit().map_err(|e| sql_error(context(), e))?;
        Ok(Revision(revision))
    }

    fn watch(&self, prefix: &str, from: Revision) -> Result<Box<dyn Watch>, Error> {
        let conn = connect(&self.path, false, self.durability)?;
        Ok(Box::new(SqliteWatch {
            path: self.path.clone(),
            conn,
            start: prefix.as_bytes().to_vec(),
            end: prefix_end(prefix.as_bytes()),
            from: from.0.max(1),
            cursor: None,
            next_revision: from.0.max(1),
            data_version: None,
            buffer: VecDeque::new(),
            ended: false,
        }))
    }

    fn revision(&self) -> Result<Revision, Error> {
        let conn = self.lock();
        meta(&conn, "revision")
            .map(Revision)
            .map_err(|e| sql_error(self.context("reading the revision"), e))
    }

    fn compact(&self, revision: Revision) -> Result<(), Error> {
        let mut conn = self.lock();
        let context = || self.context(&format!("compacting to revision {revision}"));
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error(context(), e))?;
        let current = meta(&tx, "revision").map_err(|e| sql_error(context(), e))?;
        if revision.0 > current {
            return Err(Error::backend(
                context(),
                format!("revision {revision} is beyond the current revision {current}"),
            ));
        }
        let compacted = meta(&tx, "compact_revision").map_err(|e| sql_error(context(), e))?;
        if revision.0 <= compacted {
            return Ok(());
        }
        tx.prepare_cached("DELETE FROM changelog WHERE revision < ?1")
            .and_then(|mut stmt| stmt.execute([revision.0]))
            .map_err(|e| sql_error(context(), e))?;
        set_meta(&tx, "compact_revision", revision.0).map_err(|e| sql_error(context(), e))?;
        tx.commit().map_err(|e| sql_error(context(), e))?;
        Ok(())
    }
}

/// A polling watch on its own connection.
struct SqliteWatch {
    path: PathBuf,
    conn: Connection,
    /// The key range watched: `start <= key < end` (no end: unbounded).
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    /// The first revision asked for.
    from: i64,
    /// The last changelog id examined; `None` until the first poll.
    cursor: Option<i64>,
    /// Every event before this revision has been queued; compaction beyond it loses events.
    next_revision: i64,
    /// `PRAGMA data_version` at the last poll; unchanged means nothing was committed since.
    data_version: Option<i64>,
    buffer: VecDeque<WatchEvent>,
    ended: bool,
}

impl SqliteWatch {
    /// Reads new changelog rows into the buffer (if anything was committed since last time).
    fn poll(&mut self) -> Result<(), Error> {
        let context = || {
            format!(
                "watching {} from revision {}",
                self.path.display(),
                self.from
            )
        };
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .map_err(|e| sql_error(context(), e))?;
        if self.data_version == Some(version) {
            return Ok(());
        }
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| sql_error(context(), e))?;
        let compact_revision =
            meta(&tx, "compact_revision").map_err(|e| sql_error(context(), e))?;
        if self.next_revision < compact_revision {
            self.buffer.push_back(WatchEvent::Compacted {
                compact_revision: Revision(compact_revision),
            });
            self.ended = true;
            return Ok(());
        }
        let store_revision = meta(&tx, "revision").map_err(|e| sql_error(context(), e))?;
        let max_id: i64 = tx
            .query_row("SELECT coalesce(max(id), 0) FROM changelog", [], |row| {
                row.get(0)
            })
            .map_err(|e| sql_error(context(), e))?;
        let cursor = match self.cursor {
            Some(cursor) => cursor,
            None => tx
                .query_row(
                    "SELECT coalesce(min(id) - 1, ?2) FROM changelog WHERE revision >= ?1",
                    params![self.from, max_id],
                    |row| row.get(0),
                )
                .map_err(|e| sql_error(context(), e))?,
        };
        let rows = tx
            .prepare_cached(
                "SELECT id, revision, key, value, create_revision FROM changelog
                 WHERE id > ?1 AND id <= ?2 AND revision >= ?3
                   AND key >= ?4 AND (?5 IS NULL OR key < ?5)
                 ORDER BY id LIMIT ?6",
            )
            .and_then(|mut stmt| {
                stmt.query_map(
                    params![cursor, max_id, self.from, self.start, self.end, WATCH_BATCH],
                    |row| {
                        let id: i64 = row.get(0)?;
                        let revision: i64 = row.get(1)?;
                        let key = key_string(row.get(2)?)?;
                        let value: Option<Vec<u8>> = row.get(3)?;
                        let event = match value {
                            Some(value) => WatchEvent::Put(KeyValue {
                                key,
                                value,
                                create_revision: Revision(row.get(4)?),
                                mod_revision: Revision(revision),
                            }),
                            None => WatchEvent::Delete {
                                key,
                                revision: Revision(revision),
                            },
                        };
                        Ok((id, revision, event))
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| sql_error(context(), e))?;
        tx.finish().map_err(|e| sql_error(context(), e))?;
        let complete = rows.len() < usize::try_from(WATCH_BATCH).unwrap_or(usize::MAX);
        let mut last = None;
        for (id, revision, event) in rows {
            last = Some((id, revision));
            self.buffer.push_back(event);
        }
        if complete {
            // Everything up to max_id (and so up to store_revision) has been examined.
            self.cursor = Some(max_id);
            self.next_revision = self.next_revision.max(store_revision + 1);
            self.data_version = Some(version);
        } else if let Some((id, revision)) = last {
            // More rows wait; poll again without waiting for data_version to change.
            self.cursor = Some(id);
            self.next_revision = self.next_revision.max(revision);
        }
        Ok(())
    }
}

impl Watch for SqliteWatch {
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchEvent>, Error> {
        let deadline = Instant::now() + timeout;
        let mut pause = POLL_MIN;
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(Some(event));
            }
            if self.ended {
                return Ok(None);
            }
            self.poll()?;
            if !self.buffer.is_empty() {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(POLL_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_sqlite_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("not an SQLite database"), "{text}");
        assert!(text.contains("garbage.db"), "{text}");
    }

    #[test]
    fn foreign_sqlite_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        drop(conn);
        let err = SqliteStore::open(&path).unwrap_err();
        let chain = chain(&err);
        assert!(chain.contains("not a Felis datastore"), "{chain}");
        assert!(chain.contains("other.db"), "{chain}");
    }

    #[test]
    fn open_creates_parent_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c/felis.db");
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.revision().unwrap(), Revision(1));
        assert!(path.exists());
    }

    #[test]
    fn truncated_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("felis.db");
        let store = SqliteStore::open(&path).unwrap();
        for i in 0..200 {
            store.create(&format!("/k/{i}"), &[7u8; 1000]).unwrap();
        }
        drop(store);
        // Checkpoint the WAL into the main file, then damage the main file's pages.
        let conn = Connection::open(&path).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        drop(conn);
        let mut bytes = std::fs::read(&path).unwrap();
        for b in bytes.iter_mut().skip(4096).take(16384) {
            *b = 0xA5;
        }
        std::fs::write(&path, bytes).unwrap();
        let result = SqliteStore::open(&path).and_then(|s| s.list("/k/").map(|_| ()));
        let err = result.unwrap_err();
        let chain = chain(&err);
        assert!(chain.contains("felis.db"), "{chain}");
        assert!(
            chain.contains("corrupt") || chain.contains("malformed"),
            "{chain}"
        );
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
}
