//! Rooms across a fleet: `--rooms-store redis://HOST:PORT[/DB]` or
//! `unix:///PATH/TO/redis.sock`, so that every process naming one Redis 7
//! (or Valkey) serves one set of rooms per listener name.
//!
//! Local delivery never waits for Redis: a publish reaches this process's
//! members at once (as with `--rooms-store local`) and is queued for the
//! others, and joins and leaves are queued too. One thread, the link, sends
//! what is queued, in order, over one connection, as pipelines: every
//! message of one publisher goes out in the order it was published, and
//! Redis hands each subscriber a channel's messages in that order. Another
//! thread holds a subscription to each listener's channel and delivers what
//! other processes publish; it skips what this process published, so no
//! member hears a message twice, or its own.
//!
//! Presence: each process claims a node number (1 to 65,535) when it starts,
//! which it holds with a key that expires [`NODE_TTL`] after its last
//! heartbeat. Its connection ids carry it in their top 16 bits, so `id()` is
//! unique across the fleet. Which of its connections are in which room is
//! kept per node and room; `members` lists only the live nodes' members,
//! so a process killed with `-9` drops out within [`NODE_TTL`], and one that
//! exits takes its members out at once.
//!
//! Faults: a Redis that stops answering costs at most [`TIMEOUT`] (a
//! `members` call then answers with this process's members only); messages
//! for other processes published meanwhile are dropped and counted, never
//! queued without bound nor retried (one that may have gone out is not sent
//! twice). Both threads reconnect by themselves; once back, the subscription
//! is made again and this node's presence rebuilt from what is true here,
//! after a Redis restarted empty too.
//!
//! Keys (all under `hotsock:`; `S` is a room's `LEN:LISTENER:ROOM`, the
//! listener name's length first so that no room reads as another's):
//! `node:N` (the holder's token, expiring), `nodes` (the counter numbers
//! are drawn from), `rnodes:S` (the nodes with members in a room),
//! `rmembers:N:S` (node N's members of a room), `nrooms:N` (the rooms node
//! N has members in), and the channel `rooms:DB:LEN:LISTENER` (pub/sub
//! ignores the database, so the channel names it). The scripts
//! name keys they compute, so Redis Cluster is not supported.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use redis::{Client, Connection, RedisError, Value};

use crate::runtime::bucket::Health;
use crate::runtime::redis_store::{self, TIMEOUT, lost};
use crate::runtime::rooms::{Elsewhere, Local, Rooms};
use crate::sys;

/// Where a listener's rooms live: `--rooms-store`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RoomsStore {
    /// `local`: in this process only.
    #[default]
    Local,
    /// `redis://HOST:PORT[/DB]` or `unix:///PATH/TO/redis.sock`: shared by
    /// every process that names the same server.
    Redis(String),
}

impl FromStr for RoomsStore {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "local" => Ok(RoomsStore::Local),
            Some(("redis" | "unix", rest)) if rest.starts_with("//") => {
                Ok(RoomsStore::Redis(text.to_string()))
            }
            _ => Err(format!(
                "`{text}` is not a rooms store: use local, redis://HOST:PORT[/DB] or \
                 unix:///PATH/TO/redis.sock"
            )),
        }
    }
}

impl fmt::Display for RoomsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoomsStore::Local => f.write_str("local"),
            RoomsStore::Redis(url) => f.write_str(url),
        }
    }
}

impl<'de> serde::Deserialize<'de> for RoomsStore {
    /// `"local"` or a Redis URL, as on the command line.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Bits of a connection id below the node number.
pub const NODE_SHIFT: u32 = 48;

/// Most node numbers: the top 16 bits of a connection id.
const MAX_NODES: u64 = (1 << (64 - NODE_SHIFT)) - 1;

/// How long a node's claim outlives its last heartbeat: a process killed
/// with `-9` leaves `members` within this.
pub const NODE_TTL: Duration = Duration::from_secs(15);

/// How often the link renews this node's claim.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long the subscription waits for a message before it asks Redis for a
/// `PING`, and then for the answer: a half-open connection is found within
/// twice this.
const QUIET: Duration = Duration::from_secs(1);

/// Wait between two attempts to reach a Redis that did not answer.
const RETRY: Duration = Duration::from_millis(500);

/// Most bytes of messages waiting for the link: past it, messages for other
/// processes are dropped rather than held without bound.
const MAX_QUEUED_BYTES: usize = 64 << 20;

/// Most joins and leaves waiting for the link: past it they are dropped and
/// the node's presence is rebuilt instead, which says the same.
const MAX_QUEUED_PRESENCE: usize = 100_000;

/// Most operations sent in one pipeline.
const BATCH: usize = 512;

/// Takes every key node `n` holds for its members, kept in front of the
/// scripts that need it.
const CLEAR: &str = r"
local function clear(n)
  local rooms = 'hotsock:nrooms:' .. n
  for _, s in ipairs(redis.call('SMEMBERS', rooms)) do
    redis.call('DEL', 'hotsock:rmembers:' .. n .. ':' .. s)
    redis.call('SREM', 'hotsock:rnodes:' .. s, n)
  end
  redis.call('DEL', rooms)
end
";

/// Claims the next free node number. ARGV: token, time to live (ms), most
/// nodes. The number, or 0 when every one is held.
const CLAIM: &str = r"
local most = tonumber(ARGV[3])
for _ = 1, most do
  local n = (redis.call('INCR', 'hotsock:nodes') - 1) % most + 1
  if redis.call('SET', 'hotsock:node:' .. n, ARGV[1], 'NX', 'PX', ARGV[2]) then
    clear(n)
    return n
  end
end
return 0
";

/// Renews a claim. ARGV: node, token, time to live (ms). 1: renewed; 0: it
/// had expired (or Redis lost it) and is taken again, its presence cleared
/// for rebuilding; -1: another process holds it now.
const HEARTBEAT_SCRIPT: &str = r"
local key = 'hotsock:node:' .. ARGV[1]
local holder = redis.call('GET', key)
if holder == ARGV[2] then
  redis.call('PEXPIRE', key, ARGV[3])
  return 1
end
if holder then return -1 end
redis.call('SET', key, ARGV[2], 'PX', ARGV[3])
clear(ARGV[1])
return 0
";

/// Gives up a claim and its presence. ARGV: node, token.
const RELEASE: &str = r"
if redis.call('GET', 'hotsock:node:' .. ARGV[1]) == ARGV[2] then
  clear(ARGV[1])
  redis.call('DEL', 'hotsock:node:' .. ARGV[1])
end
return 0
";

/// Clears a node's presence, to rebuild it. ARGV: node.
const RESET: &str = r"
clear(ARGV[1])
return 0
";

/// Adds members of a room. ARGV: node, the room (`S`), then ids.
const JOIN: &str = r"
local set = 'hotsock:rmembers:' .. ARGV[1] .. ':' .. ARGV[2]
for i = 3, #ARGV do redis.call('SADD', set, ARGV[i]) end
redis.call('SADD', 'hotsock:rnodes:' .. ARGV[2], ARGV[1])
redis.call('SADD', 'hotsock:nrooms:' .. ARGV[1], ARGV[2])
return 0
";

/// Takes a member out of a room. ARGV: node, the room (`S`), the id.
const LEAVE: &str = r"
local set = 'hotsock:rmembers:' .. ARGV[1] .. ':' .. ARGV[2]
redis.call('SREM', set, ARGV[3])
if redis.call('EXISTS', set) == 0 then
  redis.call('SREM', 'hotsock:rnodes:' .. ARGV[2], ARGV[1])
  redis.call('SREM', 'hotsock:nrooms:' .. ARGV[1], ARGV[2])
end
return 0
";

/// The members of a room on live nodes, as decimal text; a dead node's are
/// removed on the way. ARGV: the room (`S`).
const MEMBERS: &str = r"
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', 'hotsock:rnodes:' .. ARGV[1])) do
  local set = 'hotsock:rmembers:' .. n .. ':' .. ARGV[1]
  if redis.call('EXISTS', 'hotsock:node:' .. n) == 1 then
    for _, id in ipairs(redis.call('SMEMBERS', set)) do out[#out + 1] = id end
  else
    redis.call('DEL', set)
    redis.call('SREM', 'hotsock:rnodes:' .. ARGV[1], n)
  end
end
return out
";

/// A listener's name, and its rooms.
type Attached = (String, Weak<dyn Local>);

/// One operation waiting for the link.
enum Op {
    /// `PUBLISH` a message (encoded by [`encode`]) on a listener's channel.
    Publish { channel: String, payload: Vec<u8> },
    /// A connection joined a room (`S`); `done` hears when Redis has it.
    Join {
        room: String,
        id: u64,
        done: SyncSender<()>,
    },
    /// A connection left a room (`S`).
    Leave { room: String, id: u64 },
    /// Who is in a room (`S`), answered on `reply`.
    Members {
        room: String,
        reply: SyncSender<Vec<u64>>,
    },
}

/// What waits for the link.
#[derive(Default)]
struct Queue {
    ops: VecDeque<Op>,
    /// Bytes of messages in `ops`.
    bytes: usize,
    /// Joins and leaves in `ops`.
    presence: usize,
    /// This node's presence must be rebuilt from what is true here.
    resync: bool,
    /// The process is stopping: send what is queued, release the claim.
    closing: bool,
}

/// Counts of what went through the store, for metrics.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Messages handed to Redis for the other processes.
    pub sent: AtomicU64,
    /// Messages from other processes delivered here.
    pub received: AtomicU64,
    /// Messages for other processes not sent: Redis down or too slow, or a
    /// connection lost with the message maybe sent (never sent twice).
    pub dropped: AtomicU64,
    /// Store operations (publish, join, leave, members, heartbeat) that
    /// got an answer.
    pub ok: AtomicU64,
    /// Store operations that failed.
    pub failed: AtomicU64,
}

/// This process's place in a fleet's rooms.
pub struct Fleet {
    shared: Arc<Shared>,
    link: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("url", &self.shared.url)
            .field("node", &self.shared.node)
            .finish()
    }
}

struct Shared {
    url: String,
    client: Client,
    /// The database the URL selects, which pub/sub would otherwise ignore.
    db: i64,
    node: u64,
    /// What this process's claim on its node number holds, so that it never
    /// renews or releases another's.
    token: String,
    /// Each listener's name and rooms, by channel.
    listeners: Mutex<HashMap<String, Attached>>,
    queue: Mutex<Queue>,
    /// Woken when something is queued, or the process stops.
    queued: Condvar,
    /// The link's connection.
    link: Health,
    /// The subscription's connection.
    subscription: Health,
    stats: FleetStats,
    stopping: AtomicBool,
}

impl Fleet {
    /// Connects to the Redis at `url` and claims a node number: a process
    /// cannot serve its part of the fleet's rooms without one, so a Redis
    /// that cannot be reached now is an error.
    pub fn join(url: &str) -> Result<Arc<Self>, String> {
        let client =
            Client::open(url).map_err(|e| format!("`{url}` is not a Redis address: {e}"))?;
        let token = format!("{}:{:016x}", std::process::id(), random());
        let mut conn =
            connect(&client).map_err(|e| format!("cannot reach the rooms store {url}: {e}"))?;
        let node: u64 = script(CLAIM, true)
            .arg(&token)
            .arg(NODE_TTL.as_millis() as u64)
            .arg(MAX_NODES)
            .query(&mut conn)
            .map_err(|e| format!("the rooms store {url} refused a node number: {e}"))?;
        if node == 0 {
            return Err(format!(
                "the rooms store {url} has all {MAX_NODES} node numbers held by live processes"
            ));
        }
        info!("rooms store {url}: this process is node {node}");
        let shared = Arc::new(Shared {
            url: url.to_string(),
            db: client.get_connection_info().redis_settings().db(),
            client,
            node,
            token,
            listeners: Mutex::new(HashMap::new()),
            queue: Mutex::new(Queue::default()),
            queued: Condvar::new(),
            link: Health::new(format!("rooms store {url}")),
            subscription: Health::new(format!("rooms store {url} (subscription)")),
            stats: FleetStats::default(),
            stopping: AtomicBool::new(false),
        });
        let link = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("rooms-link".into())
                .spawn(move || shared.run_link(conn))
                .map_err(|e| format!("cannot start the rooms store's thread: {e}"))?
        };
        Ok(Arc::new(Fleet {
            shared,
            link: Mutex::new(Some(link)),
        }))
    }

    /// The first connection id of this process: its node number in the top
    /// bits.
    pub fn first_id(&self) -> u64 {
        (self.shared.node << NODE_SHIFT) | 1
    }

    /// This process's node number.
    pub fn node(&self) -> u64 {
        self.shared.node
    }

    /// The store's URL.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// Whether both connections to the store answer.
    pub fn is_up(&self) -> bool {
        self.shared.link.is_up() && self.shared.subscription.is_up()
    }

    /// What went through the store.
    pub fn stats(&self) -> &FleetStats {
        &self.shared.stats
    }

    /// The rooms of the listener called `listener`, spanning the fleet; a
    /// member may have `backlog` bytes waiting.
    pub fn rooms_for(self: &Arc<Self>, listener: &str, backlog: usize) -> Arc<Rooms> {
        let rooms = Rooms::spanning(backlog, self.clone(), listener);
        let entry = (listener.to_string(), rooms.local());
        let channel = channel(self.shared.db, listener);
        sys::lock(&self.shared.listeners).insert(channel, entry);
        rooms
    }

    /// Subscribes to every attached listener's channel, waiting up to
    /// 2 s for Redis to confirm, so that a process that says it
    /// listens hears the fleet; after that, it goes on trying by itself.
    pub fn listen(&self) -> Result<(), String> {
        let channels: Vec<String> = sys::lock(&self.shared.listeners).keys().cloned().collect();
        let (ready, subscribed) = mpsc::sync_channel(1);
        let shared = Arc::clone(&self.shared);
        thread::Builder::new()
            .name("rooms-subscription".into())
            .spawn(move || shared.run_subscription(&channels, ready))
            .map_err(|e| format!("cannot start the rooms store's thread: {e}"))?;
        if subscribed.recv_timeout(TIMEOUT).is_err() {
            warn!(
                "rooms store {}: not subscribed within {TIMEOUT:?}; messages from other \
                 processes arrive once it is",
                self.shared.url
            );
        }
        Ok(())
    }

    /// Queues `data`, published by the connection `from` to `room` of the
    /// listener whose channel is `channel`, for the other processes.
    fn queue_publish(&self, channel: String, from: u64, room: &str, data: &[u8]) {
        let payload = encode(self.shared.node, from, room, data);
        let mut queue = sys::lock(&self.shared.queue);
        let stats = &self.shared.stats;
        // A store that is down takes nothing: the link would drop it anyway.
        if !self.shared.link.is_up() || queue.bytes + payload.len() > MAX_QUEUED_BYTES {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.bytes += payload.len();
        queue.ops.push_back(Op::Publish { channel, payload });
        drop(queue);
        self.shared.queued.notify_one();
    }

    /// Adds `id` to `room` (`S`) for the whole fleet, waiting up to
    /// [`TIMEOUT`] for Redis to have it, so that a join a client was told
    /// of counts in `members` on every process; a store that is down is
    /// not waited for (the presence is rebuilt when it is back).
    fn add(&self, room: String, id: u64) {
        let (done, applied) = mpsc::sync_channel(1);
        if self.queue_presence(Op::Join { room, id, done }) && self.shared.link.is_up() {
            let _ = applied.recv_timeout(TIMEOUT);
        }
    }

    /// Takes `id` out of `room` (`S`) for the whole fleet, without waiting.
    fn remove(&self, room: String, id: u64) {
        self.queue_presence(Op::Leave { room, id });
    }

    /// Queues a join or a leave, unless too many wait: then the presence is
    /// rebuilt instead.
    fn queue_presence(&self, op: Op) -> bool {
        let mut queue = sys::lock(&self.shared.queue);
        if queue.presence >= MAX_QUEUED_PRESENCE {
            queue.resync = true;
            return false;
        }
        queue.presence += 1;
        queue.ops.push_back(op);
        drop(queue);
        self.shared.queued.notify_one();
        true
    }

    /// The members of `room` (`S`) on other processes, or `None` when the
    /// store does not answer within [`TIMEOUT`]. Answered after every join
    /// and leave queued before it.
    fn members_of(&self, room: String) -> Option<Vec<u64>> {
        if !self.shared.link.is_up() {
            return None;
        }
        let (reply, answer) = mpsc::sync_channel(1);
        sys::lock(&self.shared.queue)
            .ops
            .push_back(Op::Members { room, reply });
        self.shared.queued.notify_one();
        let node = self.shared.node;
        let members = answer.recv_timeout(TIMEOUT).ok()?;
        Some(
            members
                .into_iter()
                .filter(|id| id >> NODE_SHIFT != node)
                .collect(),
        )
    }

    /// Sends what is queued, takes this process's members out of every room
    /// and gives up its node number: for a process that stops.
    pub fn close(&self) {
        sys::lock(&self.shared.queue).closing = true;
        self.shared.queued.notify_one();
        self.shared.stopping.store(true, Ordering::Relaxed);
        if let Some(link) = sys::lock(&self.link).take() {
            let _ = link.join();
        }
    }
}

impl Elsewhere for Fleet {
    fn publish(&self, listener: &str, from: u64, room: &str, data: &[u8]) {
        self.queue_publish(channel(self.shared.db, listener), from, room, data);
    }

    fn presence(&self, listener: &str, room: &str, id: u64, joined: bool) {
        match joined {
            true => self.add(room_key(listener, room), id),
            false => self.remove(room_key(listener, room), id),
        }
    }

    fn members(&self, listener: &str, room: &str) -> Option<Vec<u64>> {
        self.members_of(room_key(listener, room))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    /// The link: sends what is queued, renews the claim, rebuilds the
    /// presence after Redis was away, until the process stops.
    fn run_link(&self, conn: Connection) {
        let mut conn = Some(conn);
        let mut next_beat = Instant::now() + HEARTBEAT;
        let mut last_attempt: Option<Instant> = None;
        loop {
            let wait = match conn {
                Some(_) => next_beat.saturating_duration_since(Instant::now()),
                None => RETRY,
            };
            let (batch, mut resync, closing) = self.take(wait);
            if conn.is_none() {
                // A Redis that is away is asked again twice a second, not
                // once per operation queued meanwhile.
                if let Some(at) = last_attempt {
                    thread::sleep(RETRY.saturating_sub(at.elapsed()));
                }
                last_attempt = Some(Instant::now());
                match connect(&self.client) {
                    // Whatever happened while it was away, presence is rebuilt.
                    Ok(connected) => {
                        conn = Some(connected);
                        resync = true;
                    }
                    Err(e) => {
                        self.link.failed(&format!("cannot connect: {e}"));
                        self.drop_batch(batch);
                        sys::lock(&self.queue).resync = true;
                        if closing {
                            return;
                        }
                        continue;
                    }
                }
            }
            let Some(link) = conn.as_mut() else {
                continue;
            };
            let mut done = Ok(());
            if resync || Instant::now() >= next_beat {
                next_beat = Instant::now() + HEARTBEAT;
                done = self.beat(link, resync);
            }
            match done {
                Ok(()) => done = self.send(link, batch),
                Err(_) => self.drop_batch(batch),
            }
            if closing {
                if done.is_ok()
                    && let Err(e) = script(RELEASE, true)
                        .arg(self.node)
                        .arg(&self.token)
                        .query::<()>(link)
                {
                    warn!(
                        "rooms store {}: cannot give node {} up: {e}",
                        self.url, self.node
                    );
                }
                return;
            }
            match done {
                Ok(()) => self.link.answered(),
                Err(e) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    self.lost(&self.link, &e);
                    conn = None;
                    sys::lock(&self.queue).resync = true;
                }
            }
        }
    }

    /// Waits up to `wait` for work; takes a batch of it, whether the
    /// presence must be rebuilt, and whether the process stops.
    fn take(&self, wait: Duration) -> (Vec<Op>, bool, bool) {
        let mut queue = sys::lock(&self.queue);
        if queue.ops.is_empty() && !queue.closing && !queue.resync {
            queue = match self.queued.wait_timeout(queue, wait) {
                Ok((queue, _)) => queue,
                Err(e) => e.into_inner().0,
            };
        }
        let n = queue.ops.len().min(BATCH);
        let batch: Vec<Op> = queue.ops.drain(..n).collect();
        for op in &batch {
            match op {
                Op::Publish { payload, .. } => queue.bytes -= payload.len(),
                Op::Join { .. } | Op::Leave { .. } => queue.presence -= 1,
                Op::Members { .. } => {}
            }
        }
        let resync = std::mem::take(&mut queue.resync);
        // Closing waits until everything queued is sent.
        let closing = queue.closing && queue.ops.is_empty();
        (batch, resync, closing)
    }

    /// Renews the claim, and with `resync` (or when the claim had lapsed)
    /// rebuilds this node's presence from what is true here.
    fn beat(&self, link: &mut Connection, mut resync: bool) -> Result<(), RedisError> {
        let held: i64 = script(HEARTBEAT_SCRIPT, true)
            .arg(self.node)
            .arg(&self.token)
            .arg(NODE_TTL.as_millis() as u64)
            .query(link)?;
        self.stats.ok.fetch_add(1, Ordering::Relaxed);
        match held {
            -1 => {
                // Only while Redis lost our claim (a restart empty) could
                // another process have drawn this number.
                error!(
                    "rooms store {}: another process holds node {} now, so connection ids may \
                     repeat across the fleet: restart this process",
                    self.url, self.node
                );
                return Ok(());
            }
            0 => resync = true,
            _ => {}
        }
        if !resync {
            return Ok(());
        }
        let rooms: Vec<(String, Arc<dyn Local>)> = sys::lock(&self.listeners)
            .values()
            .filter_map(|(name, rooms)| Some((name.clone(), rooms.upgrade()?)))
            .collect();
        let mut pipe = redis::pipe();
        pipe.add_command(script(RESET, true).arg(self.node).clone())
            .ignore();
        let mut memberships = 0;
        for (listener, rooms) in rooms {
            for (room, ids) in rooms.memberships() {
                let room = room_key(&listener, &room);
                memberships += ids.len();
                for chunk in ids.chunks(BATCH) {
                    pipe.add_command(
                        script(JOIN, false)
                            .arg(self.node)
                            .arg(&room)
                            .arg(chunk)
                            .clone(),
                    )
                    .ignore();
                }
            }
        }
        pipe.query::<()>(link)?;
        info!(
            "rooms store {}: node {}'s presence rebuilt ({memberships} membership(s))",
            self.url, self.node
        );
        Ok(())
    }

    /// Sends `batch` as one pipeline, and answers its `members` calls.
    fn send(&self, link: &mut Connection, batch: Vec<Op>) -> Result<(), RedisError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for op in &batch {
            match op {
                Op::Publish { channel, payload } => {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload.as_slice());
                }
                Op::Join { room, id, .. } => {
                    pipe.add_command(
                        script(JOIN, false)
                            .arg(self.node)
                            .arg(room)
                            .arg(*id)
                            .clone(),
                    );
                }
                Op::Leave { room, id } => {
                    pipe.add_command(
                        script(LEAVE, false)
                            .arg(self.node)
                            .arg(room)
                            .arg(*id)
                            .clone(),
                    );
                }
                Op::Members { room, .. } => {
                    pipe.add_command(script(MEMBERS, false).arg(room).clone());
                }
            }
        }
        let answers: Vec<Value> = match pipe.query(link) {
            Ok(answers) => answers,
            Err(e) => {
                let lost = lost(&e);
                self.drop_batch(batch);
                if lost {
                    return Err(e);
                }
                // Refused (out of memory, say): the presence may be off.
                self.link.failed(&format!("refused: {e}"));
                sys::lock(&self.queue).resync = true;
                return Ok(());
            }
        };
        let n = batch.len() as u64;
        self.stats.ok.fetch_add(n, Ordering::Relaxed);
        for (op, answer) in batch.into_iter().zip(answers) {
            match op {
                Op::Publish { .. } => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                Op::Members { reply, .. } => {
                    let ids: Vec<String> = redis::from_redis_value(answer).unwrap_or_default();
                    let _ = reply.try_send(ids.iter().filter_map(|id| id.parse().ok()).collect());
                }
                Op::Join { done, .. } => {
                    let _ = done.try_send(());
                }
                Op::Leave { .. } => {}
            }
        }
        Ok(())
    }

    /// Counts what `batch` will never do: its messages are dropped and its
    /// `members` callers answer from this process alone.
    fn drop_batch(&self, batch: Vec<Op>) {
        for op in batch {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            if let Op::Publish { .. } = op {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Logs a lost connection, at most once a second.
    fn lost(&self, health: &Health, e: &RedisError) {
        match e.is_timeout() {
            true => health.timed_out(&format!("no answer within {TIMEOUT:?}: {e}")),
            false => health.failed(&format!("connection lost: {e}")),
        }
    }

    /// The subscription: delivers other processes' messages until the
    /// process stops, subscribing again whenever the connection is lost.
    fn run_subscription(&self, channels: &[String], ready: SyncSender<()>) {
        let mut first = true;
        while !self.stopping.load(Ordering::Relaxed) {
            let mut conn = match connect(&self.client) {
                Ok(conn) => conn,
                Err(e) => {
                    self.subscription.failed(&format!("cannot connect: {e}"));
                    thread::sleep(RETRY);
                    continue;
                }
            };
            if let Err(e) = conn.set_read_timeout(Some(QUIET)) {
                self.lost(&self.subscription, &e);
                continue;
            }
            let mut pubsub = conn.as_pubsub();
            if let Err(e) = pubsub.subscribe(channels) {
                self.lost(&self.subscription, &e);
                thread::sleep(RETRY);
                continue;
            }
            self.subscription.answered();
            if first {
                first = false;
                let _ = ready.try_send(());
            } else {
                // Redis may have restarted empty meanwhile.
                sys::lock(&self.queue).resync = true;
                self.queued.notify_one();
                info!("rooms store {}: subscribed again", self.url);
            }
            while !self.stopping.load(Ordering::Relaxed) {
                match pubsub.get_message() {
                    Ok(message) => {
                        let channel = message.get_channel_name();
                        self.deliver(channel, message.get_payload_bytes());
                    }
                    // Quiet: ask, to tell a quiet Redis from a half-open
                    // connection, which would otherwise block forever.
                    Err(e) if e.is_timeout() => {
                        if let Err(e) = pubsub.ping::<Value>() {
                            self.lost(&self.subscription, &e);
                            break;
                        }
                    }
                    Err(e) => {
                        self.lost(&self.subscription, &e);
                        break;
                    }
                }
            }
        }
    }

    /// Delivers a message another process published on `channel`.
    fn deliver(&self, channel: &str, payload: &[u8]) {
        let Some((node, _from, room, data)) = decode(payload) else {
            warn!(
                "rooms store {}: a message on {channel} that no hotsock sent; ignored",
                self.url
            );
            return;
        };
        if node == self.node {
            return;
        }
        let rooms = sys::lock(&self.listeners)
            .get(channel)
            .and_then(|(_, rooms)| rooms.upgrade());
        if let Some(rooms) = rooms {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            rooms.deliver(room, data);
        }
    }
}

/// A Redis connection that answers within [`TIMEOUT`] or fails.
fn connect(client: &Client) -> Result<Connection, RedisError> {
    redis_store::connect(client, TIMEOUT)
}

/// An `EVAL` of `body`, with [`CLEAR`] in front when it calls it.
fn script(body: &str, clears: bool) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    match clears {
        true => cmd.arg(format!("{CLEAR}{body}")),
        false => cmd.arg(body),
    };
    cmd.arg(0);
    cmd
}

/// A number no other process is likely to draw, for claim tokens.
fn random() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// A message on the wire: node, publisher, room length (2 bytes) and room,
/// then the message; numbers big-endian.
fn encode(node: u64, from: u64, room: &str, data: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(18 + room.len() + data.len());
    payload.extend_from_slice(&node.to_be_bytes());
    payload.extend_from_slice(&from.to_be_bytes());
    payload.extend_from_slice(&(room.len() as u16).to_be_bytes());
    payload.extend_from_slice(room.as_bytes());
    payload.extend_from_slice(data);
    payload
}

/// The parts of an [`encode`]d message, if it is one.
fn decode(payload: &[u8]) -> Option<(u64, u64, &str, &[u8])> {
    let node = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let from = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    let len = u16::from_be_bytes(payload.get(16..18)?.try_into().ok()?) as usize;
    let room = std::str::from_utf8(payload.get(18..18 + len)?).ok()?;
    Some((node, from, room, &payload[18 + len..]))
}

/// A room's `S`: the listener name's length, the name and the room, so that
/// no listener's room reads as another's.
fn room_key(listener: &str, room: &str) -> String {
    format!("{}:{listener}:{room}", listener.len())
}

/// The channel a listener's messages go out on. Pub/sub ignores the
/// database a connection selected, so the channel names it: fleets on two
/// databases of one server stay apart, as their keys do.
fn channel(db: i64, listener: &str) -> String {
    format!("hotsock:rooms:{db}:{}:{listener}", listener.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_are_named_as_on_the_command_line() {
        assert_eq!("local".parse(), Ok(RoomsStore::Local));
        let redis: RoomsStore = "redis://127.0.0.1:6379/2".parse().unwrap();
        assert_eq!(redis.to_string(), "redis://127.0.0.1:6379/2");
        assert!("unix:///run/redis.sock".parse::<RoomsStore>().is_ok());
        let wrong = "memory:".parse::<RoomsStore>().unwrap_err();
        assert!(wrong.contains("use local, redis://"), "{wrong}");
        assert!("redis:localhost".parse::<RoomsStore>().is_err());
    }

    #[test]
    fn messages_read_back_and_garbage_does_not() {
        let payload = encode(7, (7 << NODE_SHIFT) | 3, "lobby", b"hi\n");
        assert_eq!(
            decode(&payload),
            Some((7, (7 << NODE_SHIFT) | 3, "lobby", &b"hi\n"[..]))
        );
        assert_eq!(decode(b"short"), None);
        let mut cut = payload.clone();
        cut.truncate(20);
        assert_eq!(decode(&cut), None);
    }

    #[test]
    fn room_keys_keep_listeners_apart() {
        assert_ne!(room_key("a:b", "c"), room_key("a", "b:c"));
        assert_eq!(channel(0, "default"), "hotsock:rooms:0:7:default");
        assert_ne!(channel(1, "x"), channel(2, "x"));
    }
}
