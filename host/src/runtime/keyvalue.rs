//! The shared key-value store behind `wasi:keyvalue/store` and `atomics`
//! (contract 0.2.0): buckets that every instance of every handler version in
//! the process sees, kept across swaps, each opened only where the operator
//! granted it (`--keyvalue NAME`).
//!
//! wasmtime-wasi-keyvalue's own in-memory host copies its map into each
//! bucket a guest opens, which is one private map per connection; here a
//! bucket is one [`Backend`] per name per process, in the store the operator
//! chose ([`KeyValueStore`]): a SQLite file by default (`sqlite`), or this
//! process's memory ([`MemoryBucket`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use crate::runtime::bucket::{Backend, KvError, Measured, MemoryBucket, StoreStats};
use crate::runtime::redis_store::{RedisBucket, RedisStore};
use crate::runtime::sqlite::{SqliteBucket, SqliteStore};
use crate::sys;

/// Default most bytes (keys plus values) one bucket holds:
/// `--keyvalue-max-bytes`.
pub const DEFAULT_MAX_BUCKET_BYTES: usize = 64 << 20;

/// The file the default store keeps in the state directory.
pub const KEYVALUE_FILE: &str = "keyvalue.sqlite3";

/// Where key-value buckets live: `--keyvalue-store URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValueStore {
    /// `sqlite:PATH`: a SQLite file, durable, shared by the processes that
    /// open it. The default is `keyvalue.sqlite3` in `--state-dir`.
    Sqlite(PathBuf),
    /// `redis://HOST:PORT[/DB]` or `unix:///PATH/TO/redis.sock`: a Redis
    /// (or Valkey) server, shared by every process that names it.
    Redis(String),
    /// `memory:`: this process's memory, gone when it exits.
    Memory,
}

impl KeyValueStore {
    /// The default store: [`KEYVALUE_FILE`] in `state_dir`.
    pub fn in_state_dir(state_dir: &Path) -> Self {
        KeyValueStore::Sqlite(state_dir.join(KEYVALUE_FILE))
    }

    /// Makes a relative `sqlite:` path relative to `base`.
    pub fn resolve(&mut self, base: &Path) {
        if let KeyValueStore::Sqlite(path) = self
            && path.is_relative()
        {
            *path = base.join(&*path);
        }
    }
}

impl FromStr for KeyValueStore {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("memory", "")) => Ok(KeyValueStore::Memory),
            Some(("sqlite", "")) => {
                Err("`sqlite:` needs a path, as in sqlite:state/kv.sqlite3".into())
            }
            Some(("sqlite", path)) => Ok(KeyValueStore::Sqlite(path.into())),
            Some(("redis" | "unix", rest)) if rest.starts_with("//") => {
                Ok(KeyValueStore::Redis(text.to_string()))
            }
            _ => Err(format!(
                "`{text}` is not a key-value store: use sqlite:PATH, redis://HOST:PORT[/DB], \
                 unix:///PATH/TO/redis.sock or memory:"
            )),
        }
    }
}

impl fmt::Display for KeyValueStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValueStore::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            KeyValueStore::Redis(url) => f.write_str(url),
            KeyValueStore::Memory => f.write_str("memory:"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for KeyValueStore {
    /// `"sqlite:PATH"` or `"memory:"`, as on the command line.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Every bucket of the process, by name, made on first open.
#[derive(Debug)]
pub struct Buckets {
    max_bytes: usize,
    /// Where buckets live.
    config: KeyValueStore,
    /// The store, once opened: when a listener is first granted a bucket,
    /// so that a server without any makes no state directory and needs no
    /// Redis.
    store: Mutex<Option<Opened>>,
    buckets: Mutex<HashMap<String, Arc<dyn Backend>>>,
    /// How its operations have gone.
    stats: Arc<StoreStats>,
    /// Names whose denial was logged already: a handler that tries an
    /// ungranted bucket on every connection is worth one warning, not one
    /// per connection.
    denied: Mutex<HashSet<String>>,
}

impl Buckets {
    /// No buckets open yet; each will hold at most `max_bytes`, in `store`.
    pub fn new(max_bytes: usize, store: KeyValueStore) -> Self {
        Buckets {
            max_bytes,
            config: store,
            store: Mutex::new(None),
            stats: Arc::default(),
            buckets: Mutex::new(HashMap::new()),
            denied: Mutex::new(HashSet::new()),
        }
    }

    /// Opens the store (a SQLite file is created if missing), unless it is
    /// open already: called when a listener is granted a bucket, so that a
    /// store that cannot be opened fails the start or the reload, with why.
    pub fn prepare(&self) -> Result<(), String> {
        self.opened().map(drop)
    }

    /// Where buckets live.
    pub fn store(&self) -> &KeyValueStore {
        &self.config
    }

    /// How the store's operations have gone.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Whether the store answered its last call: `None` until it is opened
    /// (and always for memory, which cannot be down).
    pub fn is_up(&self) -> Option<bool> {
        match &*sys::lock(&self.store) {
            None => None,
            Some(Opened::Sqlite(store)) => Some(store.health().is_up()),
            Some(Opened::Redis(store)) => Some(store.health().is_up()),
        }
    }

    /// The store, opened on first use; `None` for memory.
    fn opened(&self) -> Result<Option<Opened>, String> {
        let mut store = sys::lock(&self.store);
        if store.is_none() {
            *store = match &self.config {
                KeyValueStore::Memory => return Ok(None),
                KeyValueStore::Sqlite(path) => {
                    Some(Opened::Sqlite(Arc::new(SqliteStore::open(path)?)))
                }
                KeyValueStore::Redis(url) => Some(Opened::Redis(Arc::new(RedisStore::open(url)?))),
            };
        }
        Ok(store.clone())
    }

    /// Whether a denied open of `name` is the first: the one to warn about.
    pub fn first_denial(&self, name: &str) -> bool {
        let mut denied = sys::lock(&self.denied);
        // Bounded, so that a handler inventing names cannot grow it forever.
        denied.len() < 1024 && denied.insert(name.to_string())
    }

    /// The bucket called `name`, made empty if it is new. Whether the caller
    /// may open it is the caller's to check.
    pub fn open(&self, name: &str) -> Result<Arc<dyn Backend>, KvError> {
        let mut buckets = sys::lock(&self.buckets);
        if let Some(bucket) = buckets.get(name) {
            return Ok(Arc::clone(bucket));
        }
        let max = self.max_bytes;
        let inner: Arc<dyn Backend> = match self.opened().map_err(KvError)? {
            None => Arc::new(MemoryBucket::new(name, max)),
            Some(Opened::Sqlite(store)) => Arc::new(SqliteBucket::new(store, name, max)),
            Some(Opened::Redis(store)) => Arc::new(RedisBucket::new(store, name, max)),
        };
        let stats = Arc::clone(&self.stats);
        let bucket: Arc<dyn Backend> = Arc::new(Measured { inner, stats });
        buckets.insert(name.to_string(), Arc::clone(&bucket));
        Ok(bucket)
    }
}

/// A store that is not memory, once open.
#[derive(Debug, Clone)]
enum Opened {
    Sqlite(Arc<SqliteStore>),
    Redis(Arc<RedisStore>),
}

/// An open bucket, as the guest's `bucket` resource.
#[derive(Debug)]
pub struct Bucket {
    /// Its storage, shared with every other instance that opened it.
    pub backend: Arc<dyn Backend>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_read_and_print_as_urls() {
        for text in [
            "memory:",
            "sqlite:state/kv.sqlite3",
            "redis://10.0.0.7:6379/2",
            "unix:///run/redis.sock",
        ] {
            let store: KeyValueStore = text.parse().unwrap();
            assert_eq!(store.to_string(), text);
        }
        for bad in ["sqlite:", "redis:host", "leveldb:x", "memory"] {
            assert!(bad.parse::<KeyValueStore>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bucket_is_one_per_name() {
        let buckets = Buckets::new(1 << 20, KeyValueStore::Memory);
        buckets.open("x").unwrap().increment("n", 1).unwrap();
        assert_eq!(buckets.open("x").unwrap().get("n"), Ok(Some(b"1".to_vec())));
        assert_eq!(buckets.open("y").unwrap().get("n"), Ok(None));
    }
}
