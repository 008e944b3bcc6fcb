//! The idle timeout, the connection time limit and the drain deadline,
//! enforced for every connection by one thread.
//!
//! A socket timeout would arm and cancel a kernel timer on every blocking
//! `read` and `write`, a cost on every round trip. Instead, a connection only
//! notes, in an atomic, the tick at which it started waiting for its client;
//! the watchdog thread looks at every connection once a tick and shuts down
//! the socket of one that has waited too long, whose time is up, or whose
//! [`Deadline`] has passed, which wakes the blocked call. The connection then
//! sees why in [`Watch::expired`]. Precision is one tick, a tenth of the
//! shortest limit, between 10 ms and 1 s.
//!
//! The watchdog shares each watched socket (an [`Arc`] of it, no second
//! descriptor), so the socket stays open while it is watched and shutting it
//! down is plain `TcpStream::shutdown`.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::sys;

/// Finest tick: a shorter one buys nothing a client could notice.
const MIN_TICK: Duration = Duration::from_millis(10);
/// Coarsest tick: timeouts fire at most this late.
const MAX_TICK: Duration = Duration::from_secs(1);

/// Why the watchdog cut a connection off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The client sent nothing (or took nothing) for the idle timeout.
    Idle,
    /// The connection reached its time limit.
    TimeUp,
    /// The connection's [`Deadline`] passed: its handler version was replaced
    /// long enough ago.
    Drained,
}

impl Expiry {
    /// Whether the watchdog closed the connection both ways, so that nothing
    /// the guest does afterwards can matter and it may be stopped outright.
    /// An idle timeout shuts only the side that waited: the handler may still
    /// say goodbye.
    pub fn is_final(self) -> bool {
        self != Expiry::Idle
    }

    fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => None,
            1 => Some(Expiry::Idle),
            2 => Some(Expiry::TimeUp),
            _ => Some(Expiry::Drained),
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Expiry::Idle => 1,
            Expiry::TimeUp => 2,
            Expiry::Drained => 3,
        }
    }
}

/// What a connection is waiting for, if anything; kept with the tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Blocked in `read`: the client must send.
    Read,
    /// Blocked in `write`: the client must take data.
    Write,
}

/// A moment after which every connection watched with it is cut off. Unset
/// at first; it can be set, moved and unset at any time, from any thread
/// (a handler version is replaced, then rolled back to).
#[derive(Debug, Default)]
pub struct Deadline(
    /// 0 when unset; else nanoseconds since [`origin`], plus one.
    AtomicU64,
);

impl Deadline {
    /// Sets the deadline to `at`.
    pub fn set(&self, at: Instant) {
        let nanos = at.saturating_duration_since(origin()).as_nanos();
        self.0.store(
            u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1,
            Ordering::Relaxed,
        );
    }

    /// Unsets the deadline: nobody is cut off by it.
    pub fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Whether the deadline is set and `now` is past it.
    fn passed(&self, now: Instant) -> bool {
        match self.0.load(Ordering::Relaxed) {
            0 => false,
            at => origin() + Duration::from_nanos(at - 1) <= now,
        }
    }
}

/// The moment [`Deadline`]s count from: the first time one is used.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// The watchdog of one server process. Dropping it stops its thread at once.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    tick: Duration,
    /// Ticks since the watchdog started; what connections stamp their waits with.
    now: AtomicU64,
    next_key: AtomicU64,
    watched: Mutex<HashMap<u64, Watched>>,
    stop: AtomicBool,
}

/// What the watchdog knows of one connection.
struct Watched {
    /// Shared with the connection: open as long as it is watched.
    stream: Arc<TcpStream>,
    state: Arc<WatchState>,
    /// Ticks it may wait for its client.
    idle_ticks: u64,
    /// The tick at which the time limit ends it, if there is one.
    time_up: Option<u64>,
    drain: Option<Arc<Deadline>>,
}

/// Shared between a connection and the watchdog.
#[derive(Default)]
struct WatchState {
    /// 0 when not waiting; else the tick the wait started, shifted left one
    /// bit, with the low bit set for a write.
    waiting: AtomicU64,
    /// 0, or the [`Expiry`] once the watchdog acted.
    expired: AtomicU8,
}

impl Watchdog {
    /// Starts the watchdog thread, for limits of which the shortest is
    /// `shortest` (idle timeouts, time limits, and the time from setting a
    /// [`Deadline`] to its passing): it looks at every connection a tenth of
    /// that apart, between 10 ms and 1 s.
    pub fn start(shortest: Duration) -> Result<Self> {
        let tick = (shortest / 10).clamp(MIN_TICK, MAX_TICK);
        let shared = Arc::new(Shared {
            tick,
            // Start at 1: a waiting stamp of 0 means "not waiting".
            now: AtomicU64::new(1),
            next_key: AtomicU64::new(0),
            watched: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        });
        let watcher = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watcher.run())
            .context("cannot start the watchdog thread")?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// Starts watching a connection's socket: cut off after waiting
    /// `idle_timeout` for its client, after `time_limit` in all, and when
    /// `drain` passes. It is unwatched, and the watchdog lets go of the
    /// socket, when the returned [`Watch`] is dropped.
    pub fn watch(
        &self,
        stream: &Arc<TcpStream>,
        idle_timeout: Duration,
        time_limit: Option<Duration>,
        drain: Option<Arc<Deadline>>,
    ) -> Watch {
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(WatchState::default());
        let now = self.shared.now.load(Ordering::Relaxed);
        let tick = self.shared.tick;
        let ticks = |d: Duration| (d.as_nanos() / tick.as_nanos()).max(1) as u64;
        let watched = Watched {
            stream: Arc::clone(stream),
            state: Arc::clone(&state),
            idle_ticks: ticks(idle_timeout),
            time_up: time_limit.map(|limit| now + ticks(limit)),
            drain,
        };
        self.shared.lock().insert(key, watched);
        Watch {
            shared: Arc::clone(&self.shared),
            key,
            state,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // Wake it from its tick's sleep rather than wait the tick out.
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Watched>> {
        // Every change to the map is one insert or remove.
        sys::lock(&self.watched)
    }

    fn run(&self) {
        let started = Instant::now();
        let mut next = started;
        while !self.stop.load(Ordering::Relaxed) {
            next += self.tick;
            // Parked rather than slept, so that dropping the watchdog wakes
            // it. A wakeup for any other reason only means an early look.
            thread::park_timeout(next.saturating_duration_since(Instant::now()));
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let instant = Instant::now();
            // Counted from the start, not by adding up sleeps, so that a late
            // wakeup does not make every timeout later.
            let now =
                1 + (instant.duration_since(started).as_nanos() / self.tick.as_nanos()) as u64;
            self.now.store(now, Ordering::Relaxed);
            for watched in self.lock().values() {
                watched.check(now, instant);
            }
        }
    }
}

impl Watched {
    /// Cuts the connection off if its time is up, its deadline has passed,
    /// or it has waited too long.
    fn check(&self, now: u64, instant: Instant) {
        if self.state.expired.load(Ordering::Relaxed) != 0 {
            return;
        }
        if self.time_up.is_some_and(|at| now >= at) {
            return self.cut(Expiry::TimeUp, Shutdown::Both);
        }
        if self.drain.as_ref().is_some_and(|d| d.passed(instant)) {
            return self.cut(Expiry::Drained, Shutdown::Both);
        }
        let waiting = self.state.waiting.load(Ordering::Relaxed);
        if waiting != 0 && now.saturating_sub(waiting >> 1) >= self.idle_ticks {
            // Only the side that is stuck: after an idle read the handler may
            // still say goodbye.
            let side = match waiting & 1 == 1 {
                true => Shutdown::Write,
                false => Shutdown::Read,
            };
            self.cut(Expiry::Idle, side);
        }
    }

    fn cut(&self, why: Expiry, side: Shutdown) {
        self.state.expired.store(why.to_u8(), Ordering::Relaxed);
        // A failure (the peer already gone) leaves nothing to wake.
        let _ = self.stream.shutdown(side);
    }
}

/// A connection's registration with the watchdog.
pub struct Watch {
    shared: Arc<Shared>,
    key: u64,
    state: Arc<WatchState>,
}

impl Watch {
    /// Notes that the connection starts waiting for its client; the wait
    /// ends when the returned guard is dropped.
    pub fn waiting(&self, wait: Wait) -> Waiting<'_> {
        let tick = self.shared.now.load(Ordering::Relaxed);
        let stamp = tick << 1 | u64::from(wait == Wait::Write);
        self.state.waiting.store(stamp, Ordering::Relaxed);
        Waiting(self)
    }

    /// Whether, and why, the watchdog cut the connection off.
    pub fn expired(&self) -> Option<Expiry> {
        Expiry::from_u8(self.state.expired.load(Ordering::Relaxed))
    }

    /// A handle that tells whether the connection has been cut off, for code
    /// that runs while the connection is busy elsewhere.
    pub fn verdict(&self) -> Verdict {
        Verdict(Arc::clone(&self.state))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let watched = self.shared.lock().remove(&self.key);
        // After the lock is released: if the connection has already let go
        // of the socket, this closes it, which need not hold up every other
        // connection's check.
        drop(watched);
    }
}

/// Whether the watchdog cut one connection off: [`Watch::expired`], readable
/// without the [`Watch`].
#[derive(Clone)]
pub struct Verdict(Arc<WatchState>);

impl std::fmt::Debug for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Verdict").field(&self.expired()).finish()
    }
}

impl Verdict {
    /// Whether, and why, the watchdog cut the connection off.
    pub fn expired(&self) -> Option<Expiry> {
        Expiry::from_u8(self.0.expired.load(Ordering::Relaxed))
    }
}

/// A wait in progress; see [`Watch::waiting`].
pub struct Waiting<'a>(&'a Watch);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.state.waiting.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (Arc::new(listener.accept().unwrap().0), client)
    }

    #[test]
    fn a_read_that_waits_too_long_is_woken_and_marked_idle() {
        let watchdog = Watchdog::start(Duration::from_millis(100)).unwrap();
        let (server, _client) = pair();
        let watch = watchdog.watch(&server, Duration::from_millis(100), None, None);
        let started = Instant::now();
        let waiting = watch.waiting(Wait::Read);
        let n = (&*server).read(&mut [0; 16]).unwrap();
        drop(waiting);
        assert_eq!(n, 0, "the shut-down read ends like end of stream");
        assert_eq!(watch.expired(), Some(Expiry::Idle));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(90) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }

    #[test]
    fn a_connection_that_is_not_waiting_is_left_alone() {
        let watchdog = Watchdog::start(Duration::from_millis(50)).unwrap();
        let (server, _client) = pair();
        let watch = watchdog.watch(&server, Duration::from_millis(50), None, None);
        thread::sleep(Duration::from_millis(200));
        assert_eq!(watch.expired(), None);
    }

    #[test]
    fn the_time_limit_ends_a_busy_connection() {
        let watchdog = Watchdog::start(Duration::from_millis(100)).unwrap();
        let (server, _client) = pair();
        let limit = Some(Duration::from_millis(100));
        let watch = watchdog.watch(&server, Duration::from_secs(60), limit, None);
        let _waiting = watch.waiting(Wait::Read);
        assert_eq!((&*server).read(&mut [0; 16]).unwrap(), 0);
        assert_eq!(watch.expired(), Some(Expiry::TimeUp));
        assert_eq!(watch.verdict().expired(), Some(Expiry::TimeUp));
    }

    #[test]
    fn a_deadline_ends_its_connections_once_set_and_passed() {
        let watchdog = Watchdog::start(Duration::from_millis(100)).unwrap();
        let deadline = Arc::new(Deadline::default());
        let (server, _client) = pair();
        let drain = Some(Arc::clone(&deadline));
        let watch = watchdog.watch(&server, Duration::from_secs(60), None, drain);
        thread::sleep(Duration::from_millis(50));
        assert_eq!(watch.expired(), None, "an unset deadline cuts nothing");
        deadline.set(Instant::now() + Duration::from_secs(3600));
        deadline.clear();
        deadline.set(Instant::now() + Duration::from_millis(50));
        assert_eq!((&*server).read(&mut [0; 16]).unwrap(), 0);
        assert_eq!(watch.expired(), Some(Expiry::Drained));
    }

    #[test]
    fn the_watchdog_holds_the_socket_until_unwatched() {
        let watchdog = Watchdog::start(Duration::from_millis(100)).unwrap();
        let (server, _client) = pair();
        let watch = watchdog.watch(&server, Duration::from_secs(60), None, None);
        assert_eq!(Arc::strong_count(&server), 2);
        drop(watch);
        assert_eq!(Arc::strong_count(&server), 1);
    }

    #[test]
    fn dropping_the_watchdog_does_not_wait_for_its_tick() {
        let watchdog = Watchdog::start(Duration::from_secs(300)).unwrap();
        thread::sleep(Duration::from_millis(20));
        let started = Instant::now();
        drop(watchdog);
        let took = started.elapsed();
        assert!(took < Duration::from_millis(500), "{took:?}");
    }
}
