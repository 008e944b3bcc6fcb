//! The default key-value store: one SQLite file, in write-ahead-log mode,
//! every bucket a set of rows in it. A `set` or `increment` is acknowledged
//! only once its transaction is committed and synced to disk, so a client
//! told about it finds it after a crash, a restart or an upgrade; and every
//! process that opens the same file (the two sides of an upgrade, or
//! `--reuse-port` pairs on one machine) shares it, with `increment` atomic
//! across them, as SQLite's write lock serialises their transactions.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};

use crate::runtime::bucket::{
    Backend, Health, KEYS_PER_PAGE, Keys, KvError, check_key, check_value,
};
use crate::runtime::bucket::{counter_value, quota_error};
use crate::sys;

/// Longest an operation waits for another process's write to finish before
/// it fails with an error saying so: an operation fails, it never hangs a
/// connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// One SQLite file holding every bucket, shared by this process's buckets.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    /// One connection, used one transaction at a time: SQLite takes one
    /// writer at a time anyway, and a connection is not `Sync`.
    conn: Mutex<Connection>,
    health: Health,
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`, ready for durable writes.
    pub fn open(path: &Path) -> Result<Self, String> {
        let fail =
            |e: rusqlite::Error| format!("cannot open the key-value store {}: {e}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|e| {
                format!(
                    "cannot create {} for the key-value store: {e}",
                    dir.display()
                )
            })?;
        }
        // Made private before SQLite opens it: SQLite gives its log files
        // the same permissions as the database's.
        create_private_file(path)
            .map_err(|e| format!("cannot create the key-value store {}: {e}", path.display()))?;
        let conn = Connection::open(path).map_err(fail)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
        // WAL: readers never wait for the writer, and two processes share
        // the file. FULL: the log is synced at every commit, so what was
        // acknowledged survives a power cut, not only a crash.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(fail)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!(
                "cannot open the key-value store {}: its file system does not allow SQLite's \
                 write-ahead log (journal mode stayed `{mode}`); put --state-dir on a local disk",
                path.display()
            ));
        }
        conn.execute_batch(
            "PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS entries (
                 bucket TEXT NOT NULL,
                 key TEXT NOT NULL,
                 value BLOB NOT NULL,
                 PRIMARY KEY (bucket, key)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS buckets (
                 name TEXT PRIMARY KEY,
                 bytes INTEGER NOT NULL
             ) WITHOUT ROWID;",
        )
        .map_err(fail)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            health: Health::new(format!("key-value store sqlite:{}", path.display())),
        })
    }
}

impl SqliteStore {
    /// Whether its last operation went through.
    pub fn health(&self) -> &Health {
        &self.health
    }
}

/// Creates `dir` and its parents if missing, the last one readable by this
/// user only: what handlers stored is nobody else's to read.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    match dir.is_dir() {
        true => Ok(()),
        false => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
    }
}

/// Creates `path` empty and readable by this user only, unless it exists.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other.map(drop),
    }
}

/// One bucket of a [`SqliteStore`], with a size quota.
#[derive(Debug)]
pub struct SqliteBucket {
    store: Arc<SqliteStore>,
    name: String,
    max_bytes: usize,
}

impl SqliteBucket {
    /// The bucket called `name` in `store`, holding at most `max_bytes` of
    /// keys and values.
    pub fn new(store: Arc<SqliteStore>, name: &str, max_bytes: usize) -> Self {
        SqliteBucket {
            store,
            name: name.to_string(),
            max_bytes,
        }
    }

    fn error(&self, e: rusqlite::Error) -> KvError {
        let busy = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        match busy {
            true => self.store.health.timed_out(&e.to_string()),
            false => self.store.health.failed(&e.to_string()),
        }
        match busy {
            true => KvError(format!(
                "the key-value store {} stayed locked by another process for {BUSY_TIMEOUT:?}: \
                 nothing was changed",
                self.store.path.display()
            )),
            false => KvError(format!(
                "the key-value store {} failed: {e}",
                self.store.path.display()
            )),
        }
    }

    /// Runs `write` in one immediate transaction (the write lock taken at
    /// once, so two processes never deadlock upgrading a read), committed
    /// and synced before this returns.
    fn write<T>(
        &self,
        write: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<Result<T, KvError>, rusqlite::Error>,
    ) -> Result<T, KvError> {
        let mut conn = sys::lock(&self.store.conn);
        if self.store.health.timed_out_recently() {
            return Err(KvError(format!(
                "the key-value store {} failed a moment ago: not tried, nothing changed",
                self.store.path.display()
            )));
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.error(e))?;
        match write(&tx).map_err(|e| self.error(e))? {
            Ok(value) => {
                tx.commit().map_err(|e| self.error(e))?;
                self.store.health.answered();
                Ok(value)
            }
            // Dropping the transaction rolls it back: nothing changed.
            Err(refused) => Err(refused),
        }
    }

    /// Sets `key` to `value` inside `tx`, within the quota: the refusal, or
    /// the rows written.
    fn put(
        &self,
        tx: &rusqlite::Transaction<'_>,
        key: &str,
        value: &[u8],
    ) -> Result<Result<(), KvError>, rusqlite::Error> {
        let old = tx
            .query_row(
                "SELECT length(value) FROM entries WHERE bucket = ?1 AND key = ?2",
                params![self.name, key],
                length,
            )
            .optional()?;
        let total = self.bytes(tx)?;
        let before = old.map_or(0, |len| key.len() + len);
        let bytes = total - before.min(total) + key.len() + value.len();
        if bytes > self.max_bytes {
            return Ok(Err(quota_error(&self.name, bytes, self.max_bytes)));
        }
        tx.execute(
            "INSERT INTO entries (bucket, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value",
            params![self.name, key, value],
        )?;
        self.set_bytes(tx, bytes)?;
        Ok(Ok(()))
    }

    /// Keys plus values in this bucket, in bytes.
    fn bytes(&self, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<usize> {
        let bytes = tx
            .query_row(
                "SELECT bytes FROM buckets WHERE name = ?1",
                params![self.name],
                length,
            )
            .optional()?;
        Ok(bytes.unwrap_or(0))
    }

    fn set_bytes(&self, tx: &rusqlite::Transaction<'_>, bytes: usize) -> rusqlite::Result<()> {
        // At most --keyvalue-max-bytes, which is far below i64::MAX.
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO buckets (name, bytes) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET bytes = excluded.bytes",
            params![self.name, bytes],
        )?;
        Ok(())
    }
}

/// A length or byte count from a row's first column; never negative.
fn length(row: &rusqlite::Row<'_>) -> rusqlite::Result<usize> {
    row.get::<_, i64>(0)
        .map(|n| usize::try_from(n).unwrap_or(0))
}

impl Backend for SqliteBucket {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let conn = sys::lock(&self.store.conn);
        conn.query_row(
            "SELECT value FROM entries WHERE bucket = ?1 AND key = ?2",
            params![self.name, key],
            |row| row.get(0),
        )
        .optional()
        .map_err(|e| self.error(e))
        .inspect(|_| self.store.health.answered())
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        check_key(key)?;
        check_value(value)?;
        self.write(|tx| self.put(tx, key, value))
    }

    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.write(|tx| {
            let old = tx
                .query_row(
                    "DELETE FROM entries WHERE bucket = ?1 AND key = ?2 RETURNING length(value)",
                    params![self.name, key],
                    length,
                )
                .optional()?;
            if let Some(len) = old {
                let total = self.bytes(tx)?;
                self.set_bytes(tx, total.saturating_sub(key.len() + len))?;
            }
            Ok(Ok(()))
        })
    }

    fn exists(&self, key: &str) -> Result<bool, KvError> {
        self.get(key).map(|value| value.is_some())
    }

    fn list_keys(&self, cursor: Option<u64>) -> Result<Keys, KvError> {
        // As in memory, the cursor is a position in key order.
        let skip = i64::try_from(cursor.unwrap_or(0)).unwrap_or(i64::MAX);
        let conn = sys::lock(&self.store.conn);
        let mut statement = conn
            .prepare_cached(
                "SELECT key FROM entries WHERE bucket = ?1 ORDER BY key LIMIT ?2 OFFSET ?3",
            )
            .map_err(|e| self.error(e))?;
        // One more than a page, to know whether another follows.
        let rows = statement
            .query_map(params![self.name, KEYS_PER_PAGE as i64 + 1, skip], |row| {
                row.get::<_, String>(0)
            })
            .map_err(|e| self.error(e))?;
        let mut keys = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(e))?;
        let more = keys.len() > KEYS_PER_PAGE;
        keys.truncate(KEYS_PER_PAGE);
        let cursor = more.then(|| skip.unsigned_abs() + keys.len() as u64);
        Ok(Keys { keys, cursor })
    }

    fn increment(&self, key: &str, delta: u64) -> Result<u64, KvError> {
        check_key(key)?;
        self.write(|tx| {
            let current: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT value FROM entries WHERE bucket = ?1 AND key = ?2",
                    params![self.name, key],
                    |row| row.get(0),
                )
                .optional()?;
            let sum = match counter_value(key, current.as_deref(), delta) {
                Ok(sum) => sum,
                Err(refused) => return Ok(Err(refused)),
            };
            Ok(self.put(tx, key, sum.to_string().as_bytes())?.map(|()| sum))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(dir: &Path, name: &str, max_bytes: usize) -> SqliteBucket {
        let store = SqliteStore::open(&dir.join("kv.sqlite3")).unwrap();
        SqliteBucket::new(Arc::new(store), name, max_bytes)
    }

    #[test]
    fn values_and_counters_are_kept_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let bucket = bucket(dir.path(), "b", 1 << 20);
            bucket.set("k", b"v").unwrap();
            assert_eq!(bucket.increment("n", 5).unwrap(), 5);
            assert_eq!(bucket.increment("n", 1).unwrap(), 6);
        }
        let bucket = bucket(dir.path(), "b", 1 << 20);
        assert_eq!(bucket.get("k").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(bucket.get("n").unwrap().as_deref(), Some(&b"6"[..]));
        assert!(bucket.increment("k", 1).is_err(), "not a counter");
        bucket.delete("k").unwrap();
        assert!(!bucket.exists("k").unwrap());
    }

    #[test]
    fn quotas_hold_and_a_refused_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = bucket(dir.path(), "small", 10);
        bucket.set("a", b"12345").unwrap();
        assert!(bucket.set("b", b"12345").is_err());
        assert_eq!(bucket.get("b").unwrap(), None);
        bucket.delete("a").unwrap();
        bucket.set("b", b"12345678").unwrap();
    }

    #[test]
    fn keys_come_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = bucket(dir.path(), "many", 1 << 20);
        for i in 0..(KEYS_PER_PAGE + 5) {
            bucket.set(&format!("k{i:05}"), b"").unwrap();
        }
        let first = bucket.list_keys(None).unwrap();
        assert_eq!(first.keys.len(), KEYS_PER_PAGE);
        let rest = bucket.list_keys(first.cursor).unwrap();
        assert_eq!(rest.keys.len(), 5);
        assert_eq!(rest.cursor, None);
    }
}
