//! What one key-value bucket does ([`Backend`]), its limits and errors, and
//! the bucket kept in this process's memory ([`MemoryBucket`], for
//! `--keyvalue-store memory:`). The SQLite bucket (`sqlite`) implements the
//! same trait; `keyvalue` chooses between them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{info, warn};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::sys;

/// Longest key, in bytes.
pub const MAX_KEY: usize = 256;

/// Largest value, in bytes.
pub const MAX_VALUE: usize = 1 << 20;

/// Most keys one `list-keys` call returns; the cursor gets the rest.
pub(crate) const KEYS_PER_PAGE: usize = 1000;

/// Why an operation on a bucket failed: the contract's `other(...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvError(pub String);

/// One page of keys, and where the next begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Keys in this page, in order.
    pub keys: Vec<String>,
    /// Pass it back for the next page; `None` after the last.
    pub cursor: Option<u64>,
}

/// What a bucket's storage does. Every call is atomic with respect to the
/// others on the same bucket.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The value of `key`, if it has one.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Sets `key` to `value`.
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError>;
    /// Removes `key`; removing a missing key is not an error.
    fn delete(&self, key: &str) -> Result<(), KvError>;
    /// Whether `key` has a value.
    fn exists(&self, key: &str) -> Result<bool, KvError>;
    /// A page of keys, from `cursor` (`None`: the first page).
    fn list_keys(&self, cursor: Option<u64>) -> Result<Keys, KvError>;
    /// Adds `delta` to the number in `key` (0 if it has none) and returns the
    /// sum. The number is stored as decimal ASCII text, as wasmtime's own
    /// keyvalue host does, so `get` of a counter returns e.g. `b"5"`.
    fn increment(&self, key: &str, delta: u64) -> Result<u64, KvError>;
}

/// A bucket in this process's memory, with a size quota.
#[derive(Debug)]
pub struct MemoryBucket {
    name: String,
    max_bytes: usize,
    map: Mutex<Contents>,
}

#[derive(Debug, Default)]
struct Contents {
    entries: BTreeMap<String, Vec<u8>>,
    /// Keys plus values, in bytes.
    bytes: usize,
}

impl MemoryBucket {
    /// An empty bucket called `name` holding at most `max_bytes` of keys
    /// and values.
    pub fn new(name: &str, max_bytes: usize) -> Self {
        MemoryBucket {
            name: name.to_string(),
            max_bytes,
            map: Mutex::new(Contents::default()),
        }
    }

    /// Stores `value` under `key`, within the quota.
    fn put(&self, contents: &mut Contents, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        check_key(key)?;
        check_value(&value)?;
        let old = contents.entries.get(key).map_or(0, |v| key.len() + v.len());
        let bytes = contents.bytes - old + key.len() + value.len();
        if bytes > self.max_bytes {
            return Err(quota_error(&self.name, bytes, self.max_bytes));
        }
        contents.bytes = bytes;
        contents.entries.insert(key.to_string(), value);
        Ok(())
    }
}

/// The refusal of a write that would make bucket `name` `bytes` long.
pub(crate) fn quota_error(name: &str, bytes: usize, max_bytes: usize) -> KvError {
    KvError(format!(
        "bucket `{name}` is full: this would make it {bytes} bytes, over its quota of \
         {max_bytes} (--keyvalue-max-bytes)"
    ))
}

pub(crate) fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE {
        return Err(KvError(format!(
            "a value is at most {MAX_VALUE} bytes, not {}",
            value.len()
        )));
    }
    Ok(())
}

/// The refusal of an increment of `key`, which holds something else.
pub(crate) fn not_a_counter(key: &str) -> KvError {
    KvError(format!(
        "`{key}` holds something other than a number in decimal text; increment only counts \
         in keys it (or nothing) wrote"
    ))
}

/// The counter in `key`, whose value is `current`, plus `delta`.
pub(crate) fn counter_value(key: &str, current: Option<&[u8]>, delta: u64) -> Result<u64, KvError> {
    let current = match current {
        None => 0,
        Some(value) => std::str::from_utf8(value)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| not_a_counter(key))?,
    };
    current
        .checked_add(delta)
        .ok_or_else(|| KvError(format!("`{key}` would overflow a u64")))
}

pub(crate) fn check_key(key: &str) -> Result<(), KvError> {
    if key.len() > MAX_KEY {
        return Err(KvError(format!(
            "a key is at most {MAX_KEY} bytes, not {}",
            key.len()
        )));
    }
    Ok(())
}

impl Backend for MemoryBucket {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(sys::lock(&self.map).entries.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        let mut contents = sys::lock(&self.map);
        self.put(&mut contents, key, value.to_vec())
    }

    fn delete(&self, key: &str) -> Result<(), KvError> {
        let mut contents = sys::lock(&self.map);
        if let Some(value) = contents.entries.remove(key) {
            contents.bytes -= key.len() + value.len();
        }
        Ok(())
    }

    fn exists(&self, key: &str) -> Result<bool, KvError> {
        Ok(sys::lock(&self.map).entries.contains_key(key))
    }

    fn list_keys(&self, cursor: Option<u64>) -> Result<Keys, KvError> {
        // The cursor is a position in key order: a page boundary shifts if
        // keys before it are added or removed meanwhile, as the contract allows.
        let skip = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX);
        let contents = sys::lock(&self.map);
        let keys: Vec<String> = contents
            .entries
            .keys()
            .skip(skip)
            .take(KEYS_PER_PAGE)
            .cloned()
            .collect();
        let next = skip + keys.len();
        let cursor = (next < contents.entries.len()).then_some(next as u64);
        Ok(Keys { keys, cursor })
    }

    fn increment(&self, key: &str, delta: u64) -> Result<u64, KvError> {
        let mut contents = sys::lock(&self.map);
        let sum = counter_value(key, contents.entries.get(key).map(Vec::as_slice), delta)?;
        self.put(&mut contents, key, sum.to_string().into_bytes())?;
        Ok(sum)
    }
}

/// The operations a bucket does, as metrics name them.
pub const OPERATIONS: [&str; 6] = ["get", "set", "delete", "exists", "list_keys", "increment"];

/// How a store's operations have gone since start, for metrics.
#[derive(Debug)]
pub struct StoreStats {
    /// By operation (in [`OPERATIONS`] order), those that succeeded and
    /// those that failed (an error the handler saw, whatever its cause).
    counts: [[AtomicU64; 2]; OPERATIONS.len()],
    /// How long each took, in seconds.
    pub latency: Histogram,
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            counts: Default::default(),
            // 20 µs to about 5 s: a SQLite commit is a disk sync, a Redis
            // call a network round trip, and every call is cut at 2 s.
            latency: Histogram::new(exponential_buckets(20e-6, 2.0, 18)),
        }
    }
}

impl StoreStats {
    /// `(operation, result, count)` for every operation and result.
    pub fn counts(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut counts = Vec::new();
        for (op, [ok, failed]) in OPERATIONS.iter().zip(&self.counts) {
            counts.push((*op, "ok", ok.load(Ordering::Relaxed)));
            counts.push((*op, "error", failed.load(Ordering::Relaxed)));
        }
        counts
    }

    fn record<T>(&self, op: usize, started: Instant, result: &Result<T, KvError>) {
        let failed = usize::from(result.is_err());
        self.counts[op][failed].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(started.elapsed().as_secs_f64());
    }
}

/// A bucket whose every operation is counted and timed in [`StoreStats`].
#[derive(Debug)]
pub struct Measured {
    /// The bucket itself.
    pub inner: Arc<dyn Backend>,
    /// Where its operations are counted.
    pub stats: Arc<StoreStats>,
}

impl Measured {
    fn time<T>(
        &self,
        op: usize,
        call: impl FnOnce(&dyn Backend) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        let started = Instant::now();
        let result = call(&*self.inner);
        self.stats.record(op, started, &result);
        result
    }
}

impl Backend for Measured {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.time(0, |b| b.get(key))
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.time(1, |b| b.set(key, value))
    }

    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.time(2, |b| b.delete(key))
    }

    fn exists(&self, key: &str) -> Result<bool, KvError> {
        self.time(3, |b| b.exists(key))
    }

    fn list_keys(&self, cursor: Option<u64>) -> Result<Keys, KvError> {
        self.time(4, |b| b.list_keys(cursor))
    }

    fn increment(&self, key: &str, delta: u64) -> Result<u64, KvError> {
        self.time(5, |b| b.increment(key, delta))
    }
}

/// Whether a shared store answers, and its failures in the log at most once
/// a second: a store that is down must not become a flood of log lines.
#[derive(Debug)]
pub struct Health {
    /// What the log calls the store: `key-value store redis://…`.
    name: String,
    down: AtomicBool,
    /// When a call last waited out its whole timeout.
    last_timeout: Mutex<Option<Instant>>,
    /// When a failure was last logged.
    last_logged: Mutex<Option<Instant>>,
    /// Failures since then, not logged.
    unlogged: AtomicU64,
}

/// After a call to a store got no answer, how long other calls fail at once
/// rather than try: a store that is down costs each waiting connection one
/// timeout at most, not one per connection queued before it. The first call
/// after it tries again.
pub const FAIL_FAST: Duration = Duration::from_secs(1);

/// Least time between two log lines about a store's failures.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(1);

impl Health {
    /// A store the log calls `name` (`key-value store redis://…`), up until
    /// a call fails.
    pub fn new(name: String) -> Self {
        Health {
            name,
            down: AtomicBool::new(false),
            last_timeout: Mutex::new(None),
            last_logged: Mutex::new(None),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Whether the last call that reached for the store got an answer.
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// A call got an answer: logs that the store is back if it was down.
    pub fn answered(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            info!("{}: answering again", self.name);
        }
    }

    /// Whether a call waited out its whole timeout less than [`FAIL_FAST`]
    /// ago, with no answer since: then the calls queued behind it fail at
    /// once instead of each waiting out a timeout of its own, so that none
    /// waits much longer than one timeout.
    pub fn timed_out_recently(&self) -> bool {
        !self.is_up() && sys::lock(&self.last_timeout).is_some_and(|at| at.elapsed() < FAIL_FAST)
    }

    /// A call waited out its whole timeout (`why`): logged as a failure.
    pub fn timed_out(&self, why: &str) {
        *sys::lock(&self.last_timeout) = Some(Instant::now());
        self.failed(why);
    }

    /// A call got no answer (`why`): logs it, at most once a second.
    pub fn failed(&self, why: &str) {
        self.down.store(true, Ordering::Relaxed);
        let mut last = sys::lock(&self.last_logged);
        if last.is_some_and(|at| at.elapsed() < FAILURE_LOG_INTERVAL) {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        drop(last);
        let more = self.unlogged.swap(0, Ordering::Relaxed);
        match more {
            0 => warn!("{}: {why}", self.name),
            n => warn!(
                "{}: {why} ({n} more failure(s) since the last line)",
                self.name
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_decimal_text_and_values_are_kept() {
        let bucket = MemoryBucket::new("b", 1 << 20);
        assert_eq!(bucket.increment("n", 2), Ok(2));
        assert_eq!(bucket.increment("n", 3), Ok(5));
        assert_eq!(bucket.get("n"), Ok(Some(b"5".to_vec())));
        bucket.set("s", b"text").unwrap();
        assert!(bucket.increment("s", 1).is_err());
        assert!(bucket.exists("s").unwrap());
        bucket.delete("s").unwrap();
        assert!(!bucket.exists("s").unwrap());
        bucket.set("max", u64::MAX.to_string().as_bytes()).unwrap();
        assert!(bucket.increment("max", 1).is_err());
    }

    #[test]
    fn quotas_hold() {
        let bucket = MemoryBucket::new("b", 100);
        assert!(bucket.set(&"k".repeat(MAX_KEY + 1), b"").is_err());
        bucket.set("a", &[0; 90]).unwrap();
        let full = bucket.set("b", &[0; 20]).unwrap_err();
        assert!(full.0.contains("--keyvalue-max-bytes"), "{full:?}");
        // Replacing a value counts only the difference.
        bucket.set("a", &[0; 95]).unwrap();
        bucket.delete("a").unwrap();
        bucket.set("b", &[0; 90]).unwrap();
        let big = MemoryBucket::new("big", usize::MAX);
        assert!(big.set("v", &vec![0; MAX_VALUE + 1]).is_err());
    }

    #[test]
    fn keys_come_in_pages() {
        let bucket = MemoryBucket::new("b", usize::MAX);
        for i in 0..2500 {
            bucket.set(&format!("k{i:05}"), b"").unwrap();
        }
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let page = bucket.list_keys(cursor).unwrap();
            all.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(all.len(), 2500);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
    }
}
