//! Key-value buckets in Redis 7 (or Valkey): `--keyvalue-store
//! redis://HOST:PORT[/DB]` or `unix:///PATH/TO/redis.sock`, shared by every
//! process of a fleet that names the same server.
//!
//! A bucket's keys are `hotsock:kv:LEN:BUCKET:KEY` (the bucket name's
//! length first, so that no bucket's keys can be read as another's), and its
//! size in bytes is `hotsock:kvsize:LEN:BUCKET`. Every write is one Lua
//! script, so the size, the quota and the write are one atomic step for
//! every process on the server; `increment` is Redis's own `INCRBY`, so a
//! counter is decimal text as in every other store.
//!
//! Calls share a small pool of connections ([`MAX_CONNECTIONS`]), so that
//! connections' writes reach Redis side by side and share its syncs
//! (`appendfsync always` syncs once per pass of its event loop for every
//! client in it), where one connection made them wait in turn.
//!
//! Every call has [`TIMEOUT`] to connect, send and answer, waiting for a
//! free connection included. A call that fails is never retried: one that
//! failed after it was sent may or may not have been applied, and its error
//! says so rather than apply it twice. A lost connection empties the pool:
//! the next calls connect afresh.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use log::warn;
use redis::{Client, Connection, RedisError, Script};

use crate::runtime::bucket::{
    Backend, Health, Keys, KvError, check_key, check_value, not_a_counter, quota_error,
};
use crate::sys;

/// Longest a call to Redis may take, connecting included: a stopped or
/// unreachable Redis costs a handler an error, never a hung connection.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Most connections one process holds to the store at once.
pub const MAX_CONNECTIONS: usize = 8;

/// Most keys `SCAN` is asked to look at per call when listing.
const SCAN_COUNT: usize = 1000;

/// Sets a key within the bucket's quota. KEYS: the key, the bucket's size.
/// ARGV: the value, the key's length, the quota. `{OK, size}`, or
/// `{OVER_QUOTA, the size it would have made}`.
const SET: &str = r"
local old = redis.call('STRLEN', KEYS[1])
local had = redis.call('EXISTS', KEYS[1])
local size = tonumber(redis.call('GET', KEYS[2]) or '0')
local klen = tonumber(ARGV[2])
if had == 1 then size = size - klen - old end
local new = size + klen + string.len(ARGV[1])
if new > tonumber(ARGV[3]) then return {1, new} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], new)
return {0, new}
";

/// Deletes a key and takes it off the bucket's size. KEYS: the key, the
/// size. ARGV: the key's length.
const DELETE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local gone = tonumber(ARGV[1]) + redis.call('STRLEN', KEYS[1])
  redis.call('DEL', KEYS[1])
  local size = tonumber(redis.call('GET', KEYS[2]) or '0') - gone
  if size < 0 then size = 0 end
  redis.call('SET', KEYS[2], size)
end
return 0
";

/// Adds to a counter within the quota. KEYS: the key, the size. ARGV: the
/// delta, the key's length, the quota. `{OK, size, sum}` with the sum as
/// text (Lua numbers would round it), `{OVER_QUOTA, size, sum}` with the
/// size it would have made (undone), or `{NOT_A_COUNTER, 0, ''}`.
const INCREMENT: &str = r"
local had = redis.call('EXISTS', KEYS[1])
local old = 0
if had == 1 then
  local current = redis.call('GET', KEYS[1])
  if not string.match(current, '^%d+$') then return {2, 0, ''} end
  old = string.len(current)
end
redis.call('INCRBY', KEYS[1], ARGV[1])
local sum = redis.call('GET', KEYS[1])
local klen = tonumber(ARGV[2])
local size = tonumber(redis.call('GET', KEYS[2]) or '0')
if had == 1 then size = size - klen - old end
local new = size + klen + string.len(sum)
if new > tonumber(ARGV[3]) then
  if had == 1 then redis.call('DECRBY', KEYS[1], ARGV[1]) else redis.call('DEL', KEYS[1]) end
  return {1, new, sum}
end
redis.call('SET', KEYS[2], new)
return {0, new, sum}
";

/// What the write scripts answer first (the Lua above writes them as
/// numbers): the write was refused by the bucket's quota, or (`INCREMENT`)
/// because the key holds something else than a counter; 0 is done.
const OVER_QUOTA: i64 = 1;
const NOT_A_COUNTER: i64 = 2;

/// The connections not in use, and how many there are in all.
#[derive(Default)]
struct Pool {
    idle: Vec<Connection>,
    open: usize,
}

/// A Redis server holding every bucket of this process (and of every
/// process that names it).
pub struct RedisStore {
    url: String,
    client: Client,
    pool: Mutex<Pool>,
    /// Woken when a connection is put back or given up.
    freed: Condvar,
    set: Script,
    delete: Script,
    increment: Script,
    health: Health,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .finish()
    }
}

impl RedisStore {
    /// Connects to the Redis at `url` and checks it answers; warns when its
    /// settings would lose acknowledged writes.
    pub fn open(url: &str) -> Result<Self, String> {
        let client =
            Client::open(url).map_err(|e| format!("`{url}` is not a Redis address: {e}"))?;
        let store = RedisStore {
            url: url.to_string(),
            client,
            pool: Mutex::new(Pool::default()),
            freed: Condvar::new(),
            set: Script::new(SET),
            delete: Script::new(DELETE),
            increment: Script::new(INCREMENT),
            health: Health::new(format!("key-value store {url}")),
        };
        let settings = store
            .call(|conn| {
                let append: Vec<String> = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("appendonly")
                    .query(conn)?;
                let policy: Vec<String> = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query(conn)?;
                Ok((append, policy))
            })
            .map_err(|e| e.0);
        match settings {
            Ok((append, policy)) => {
                if append.get(1).is_some_and(|v| v != "yes") {
                    warn!(
                        "key-value store {url}: appendonly is off, so Redis loses what it \
                         acknowledged since its last snapshot when it stops: set `appendonly yes`"
                    );
                }
                if let Some(policy) = policy.get(1).filter(|p| *p != "noeviction") {
                    warn!(
                        "key-value store {url}: maxmemory-policy is {policy}, so Redis may evict \
                         buckets' keys when full: set `maxmemory-policy noeviction`"
                    );
                }
                Ok(store)
            }
            // CONFIG can be renamed away on managed servers: check it answers.
            Err(why) if why.contains("unknown command") || why.contains("NOPERM") => {
                store
                    .call(|conn| redis::cmd("PING").query::<String>(conn))
                    .map_err(|e| e.0)?;
                warn!(
                    "key-value store {url}: cannot read its settings ({why}); make sure appendonly is on and nothing is evicted"
                );
                Ok(store)
            }
            Err(why) => Err(why),
        }
    }

    /// Whether it answers.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Runs `call` on a connection of the pool, connecting one if none is
    /// free and fewer than [`MAX_CONNECTIONS`] are open. A failure drops the
    /// connection (and the idle ones, likely lost too), and is never retried.
    fn call<T>(
        &self,
        call: impl FnOnce(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, KvError> {
        let not_tried = |why: &str| {
            KvError(format!(
                "the key-value store {} {why}: not tried, nothing changed",
                self.url
            ))
        };
        // The whole call, waiting for a connection and connecting
        // included, has TIMEOUT: a stopped store costs no call more.
        let deadline = Instant::now() + TIMEOUT;
        let mut pool = sys::lock(&self.pool);
        let idle = loop {
            // Checked again after each wait: another call may just have
            // waited out the timeout.
            if self.health.timed_out_recently() {
                return Err(not_tried("did not answer a moment ago"));
            }
            if let Some(conn) = pool.idle.pop() {
                break Some(conn);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(not_tried(&format!(
                    "had no free connection within {TIMEOUT:?}"
                )));
            }
            if pool.open < MAX_CONNECTIONS {
                pool.open += 1;
                break None;
            }
            pool = match self.freed.wait_timeout(pool, left) {
                Ok((pool, _)) => pool,
                Err(e) => e.into_inner().0,
            };
        };
        drop(pool);
        let mut conn = match idle {
            Some(conn) => conn,
            None => self.connect(deadline).map_err(|e| {
                self.give_up(None);
                let why = format!("cannot connect: {e}");
                match e.is_timeout() {
                    true => self.health.timed_out(&why),
                    false => self.health.failed(&why),
                }
                KvError(format!(
                    "cannot reach the key-value store {}: {e}",
                    self.url
                ))
            })?,
        };
        let answer = call(&mut conn);
        match answer.as_ref().err().filter(|e| lost(e)) {
            None => {
                if answer.is_ok() {
                    self.health.answered();
                }
                sys::lock(&self.pool).idle.push(conn);
                self.freed.notify_one();
            }
            Some(e) => {
                let why = format!("no answer within {TIMEOUT:?}: {e}");
                match e.is_timeout() {
                    true => self.health.timed_out(&why),
                    false => self.health.failed(&why),
                }
                self.give_up(Some(conn));
            }
        }
        answer.map_err(|e| match lost(&e) {
            true => KvError(format!(
                "the key-value store {} did not answer within {TIMEOUT:?} ({e}): a write may \
                     or may not have been applied, and was not retried",
                self.url
            )),
            false => KvError(format!("the key-value store {} refused: {e}", self.url)),
        })
    }

    /// Gives up `conn` (or a connection that never opened), and the idle
    /// ones with it: what lost one connection has likely lost them all.
    fn give_up(&self, conn: Option<Connection>) {
        let mut pool = sys::lock(&self.pool);
        let dropped = pool.idle.len() + 1;
        pool.idle.clear();
        pool.open = pool.open.saturating_sub(dropped);
        drop(pool);
        drop(conn);
        self.freed.notify_all();
    }

    /// A new connection, set up before `deadline` or failed: a setup that
    /// gets no answer in time fails as a timeout.
    fn connect(&self, deadline: Instant) -> Result<Connection, RedisError> {
        connect(
            &self.client,
            deadline.saturating_duration_since(Instant::now()),
        )
    }
}

/// One bucket in a [`RedisStore`], with a size quota.
#[derive(Debug)]
pub struct RedisBucket {
    store: std::sync::Arc<RedisStore>,
    name: String,
    max_bytes: usize,
    /// `hotsock:kv:LEN:NAME:`, before every key.
    prefix: String,
    /// Where the bucket's size is kept.
    size_key: String,
}

impl RedisBucket {
    /// The bucket called `name` in `store`, holding at most `max_bytes` of
    /// keys and values.
    pub fn new(store: std::sync::Arc<RedisStore>, name: &str, max_bytes: usize) -> Self {
        RedisBucket {
            store,
            name: name.to_string(),
            max_bytes,
            prefix: format!("hotsock:kv:{}:{name}:", name.len()),
            size_key: format!("hotsock:kvsize:{}:{name}", name.len()),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// A connection to `client`'s Redis, set up within `within`, each later call
/// on it answered within [`TIMEOUT`] or failed.
pub(crate) fn connect(client: &Client, within: Duration) -> Result<Connection, RedisError> {
    if within.is_zero() {
        return Err(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        )));
    }
    let conn = client.get_connection_with_timeout(within)?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    Ok(conn)
}

/// Whether `e` lost the connection (rather than being refused on it): the
/// call may or may not have been applied.
pub(crate) fn lost(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// `text` with the characters `SCAN MATCH` reads as a pattern escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

impl Backend for RedisBucket {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let key = self.key(key);
        self.store
            .call(|conn| redis::cmd("GET").arg(&key).query(conn))
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        check_key(key)?;
        check_value(value)?;
        let full = self.key(key);
        let (status, size): (i64, usize) = self.store.call(|conn| {
            self.store
                .set
                .key(&full)
                .key(&self.size_key)
                .arg(value)
                .arg(key.len())
                .arg(self.max_bytes)
                .invoke(conn)
        })?;
        match status {
            OVER_QUOTA => Err(quota_error(&self.name, size, self.max_bytes)),
            _ => Ok(()),
        }
    }

    fn delete(&self, key: &str) -> Result<(), KvError> {
        let full = self.key(key);
        self.store.call(|conn| {
            self.store
                .delete
                .key(&full)
                .key(&self.size_key)
                .arg(key.len())
                .invoke::<i64>(conn)
        })?;
        Ok(())
    }

    fn exists(&self, key: &str) -> Result<bool, KvError> {
        let key = self.key(key);
        self.store
            .call(|conn| redis::cmd("EXISTS").arg(&key).query(conn))
    }

    fn list_keys(&self, cursor: Option<u64>) -> Result<Keys, KvError> {
        // The cursor is Redis's own; SCAN may give a key twice if the bucket
        // changes meanwhile, as the contract allows.
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut next = cursor.unwrap_or(0);
        let mut keys = Vec::new();
        // SCAN may answer with no keys before it is done: a bounded number
        // of calls, so a huge keyspace costs pages, not a hung connection.
        for _ in 0..16 {
            let (after, found): (u64, Vec<String>) = self.store.call(|conn| {
                redis::cmd("SCAN")
                    .arg(next)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query(conn)
            })?;
            keys.extend(
                found
                    .iter()
                    .filter_map(|k| k.strip_prefix(&self.prefix))
                    .map(str::to_string),
            );
            next = after;
            if next == 0 || !keys.is_empty() {
                break;
            }
        }
        keys.sort();
        Ok(Keys {
            keys,
            cursor: (next != 0).then_some(next),
        })
    }

    fn increment(&self, key: &str, delta: u64) -> Result<u64, KvError> {
        check_key(key)?;
        let delta = i64::try_from(delta)
            .map_err(|_| KvError(format!("a Redis counter adds at most {} at once", i64::MAX)))?;
        let full = self.key(key);
        let (status, size, sum): (i64, usize, String) = self.store.call(|conn| {
            self.store
                .increment
                .key(&full)
                .key(&self.size_key)
                .arg(delta)
                .arg(key.len())
                .arg(self.max_bytes)
                .invoke(conn)
        })?;
        match status {
            NOT_A_COUNTER => Err(not_a_counter(key)),
            OVER_QUOTA => Err(quota_error(&self.name, size, self.max_bytes)),
            _ => sum
                .parse()
                .map_err(|_| KvError(format!("`{key}` went past what a u64 holds"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buckets_keys_match_only_its_own() {
        assert_eq!(glob_escape("hotsock:kv:3:a*[b:"), "hotsock:kv:3:a\\*\\[b:");
        let store = std::sync::Arc::new(RedisStore {
            url: "unix:///nowhere".into(),
            client: Client::open("unix:///nowhere").unwrap(),
            pool: Mutex::new(Pool::default()),
            freed: Condvar::new(),
            set: Script::new(SET),
            delete: Script::new(DELETE),
            increment: Script::new(INCREMENT),
            health: Health::new("test".into()),
        });
        // Bucket `a:b` with key `c`, and bucket `a` with key `b:c`: apart.
        let ab = RedisBucket::new(std::sync::Arc::clone(&store), "a:b", 1);
        let a = RedisBucket::new(store, "a", 1);
        assert_ne!(ab.key("c"), a.key("b:c"));
    }
}
