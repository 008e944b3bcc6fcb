//! The idle timeout and the connection time limit, enforced by one thread.
//!
//! A socket timeout would arm and cancel a kernel timer on every blocking
//! `read` and `write`, a cost on every round trip. Instead, a connection only
//! notes, in an atomic, the tick at which it started waiting for its client;
//! the watchdog thread looks at every connection once a tick and shuts down
//! the socket of one that has waited too long (or whose time is up), which
//! wakes the blocked call. The connection then reports `timed-out` to its
//! handler. Precision is one tick, a tenth of the idle timeout at most.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// Finest tick: a shorter one buys nothing a client could notice.
const MIN_TICK: Duration = Duration::from_millis(10);
/// Coarsest tick: timeouts fire at most this late.
const MAX_TICK: Duration = Duration::from_secs(1);

/// Why the watchdog cut a connection off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The client sent nothing (or took nothing) for the idle timeout.
    Idle,
    /// The connection reached `--max-connection-time`.
    TimeUp,
}

/// What a connection is waiting for, if anything; kept with the tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Blocked in `read`: the client must send.
    Read,
    /// Blocked in `write`: the client must take data.
    Write,
}

/// The watchdog of one server process.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    tick: Duration,
    idle_timeout: Duration,
    time_limit: Option<Duration>,
    idle_ticks: u64,
    time_limit_ticks: Option<u64>,
    /// Ticks since the watchdog started; what connections stamp their waits with.
    now: AtomicU64,
    next_key: AtomicU64,
    watched: Mutex<HashMap<u64, Watched>>,
    stop: AtomicBool,
}

/// What the watchdog knows of one connection.
struct Watched {
    fd: RawFd,
    state: Arc<WatchState>,
    /// The tick at which `--max-connection-time` ends it, if set.
    deadline: Option<u64>,
}

/// Shared between a connection and the watchdog.
#[derive(Default)]
struct WatchState {
    /// 0 when not waiting; else the tick the wait started, shifted left one
    /// bit, with the low bit set for a write.
    waiting: AtomicU64,
    /// 0, or the [`Expiry`] (as 1 + its index) once the watchdog acted.
    expired: AtomicU8,
}

impl Watchdog {
    /// Starts the watchdog thread for these limits.
    pub fn start(idle_timeout: Duration, time_limit: Option<Duration>) -> Result<Self> {
        let shortest = time_limit.map_or(idle_timeout, |t| t.min(idle_timeout));
        let tick = (shortest / 10).clamp(MIN_TICK, MAX_TICK);
        let ticks = |d: Duration| (d.as_nanos() / tick.as_nanos()).max(1) as u64;
        let shared = Arc::new(Shared {
            tick,
            idle_timeout,
            time_limit,
            idle_ticks: ticks(idle_timeout),
            time_limit_ticks: time_limit.map(ticks),
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

    /// Starts watching a connection's socket; it is unwatched when the
    /// returned [`Watch`] is dropped, which must happen before the socket is
    /// closed.
    pub fn watch(&self, stream: &TcpStream) -> Watch {
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(WatchState::default());
        let now = self.shared.now.load(Ordering::Relaxed);
        let deadline = self.shared.time_limit_ticks.map(|limit| now + limit);
        let watched = Watched {
            fd: stream.as_raw_fd(),
            state: Arc::clone(&state),
            deadline,
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
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Watched>> {
        // The map stays consistent even if a holder panicked: every change is
        // one insert or remove.
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        let started = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            thread::sleep(self.tick);
            // Counted from the start, not by adding up sleeps, so that a late
            // wakeup does not make every timeout later.
            let now = 1 + (started.elapsed().as_nanos() / self.tick.as_nanos()) as u64;
            self.now.store(now, Ordering::Relaxed);
            for watched in self.lock().values() {
                watched.check(now, self.idle_ticks);
            }
        }
    }
}

impl Watched {
    /// Cuts the connection off if it has waited too long or its time is up.
    /// Runs with the map locked, so the socket cannot be closed meanwhile.
    fn check(&self, now: u64, idle_ticks: u64) {
        if self.state.expired.load(Ordering::Relaxed) != 0 {
            return;
        }
        if self.deadline.is_some_and(|deadline| now >= deadline) {
            self.cut(Expiry::TimeUp, Shutdown::Both);
            return;
        }
        let waiting = self.state.waiting.load(Ordering::Relaxed);
        if waiting != 0 && now.saturating_sub(waiting >> 1) >= idle_ticks {
            // Only the side that is stuck: after an idle read the handler may
            // still say goodbye.
            let side = if waiting & 1 == 1 {
                Shutdown::Write
            } else {
                Shutdown::Read
            };
            self.cut(Expiry::Idle, side);
        }
    }

    fn cut(&self, why: Expiry, side: Shutdown) {
        self.state.expired.store(why as u8 + 1, Ordering::Relaxed);
        let how = match side {
            Shutdown::Read => libc::SHUT_RD,
            Shutdown::Write => libc::SHUT_WR,
            Shutdown::Both => libc::SHUT_RDWR,
        };
        // SAFETY: the descriptor is open: a connection unwatches itself (under
        // the lock held by our caller) before its socket is closed. A failure
        // (the client already gone) leaves nothing to wake.
        unsafe { libc::shutdown(self.fd, how) };
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

    /// The idle timeout and the connection time limit, for log lines.
    pub fn limits(&self) -> (Duration, Option<Duration>) {
        (self.shared.idle_timeout, self.shared.time_limit)
    }

    /// Whether, and why, the watchdog cut the connection off.
    pub fn expired(&self) -> Option<Expiry> {
        match self.state.expired.load(Ordering::Relaxed) {
            0 => None,
            1 => Some(Expiry::Idle),
            _ => Some(Expiry::TimeUp),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.lock().remove(&self.key);
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

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener.accept().unwrap().0, client)
    }

    #[test]
    fn a_read_that_waits_too_long_is_woken_and_marked_idle() {
        let watchdog = Watchdog::start(Duration::from_millis(100), None).unwrap();
        let (mut server, _client) = pair();
        let watch = watchdog.watch(&server);
        let started = Instant::now();
        let waiting = watch.waiting(Wait::Read);
        let n = server.read(&mut [0; 16]).unwrap();
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
        let watchdog = Watchdog::start(Duration::from_millis(50), None).unwrap();
        let (server, _client) = pair();
        let watch = watchdog.watch(&server);
        thread::sleep(Duration::from_millis(200));
        assert_eq!(watch.expired(), None);
    }

    #[test]
    fn the_time_limit_ends_a_busy_connection() {
        let watchdog =
            Watchdog::start(Duration::from_secs(60), Some(Duration::from_millis(100))).unwrap();
        let (mut server, _client) = pair();
        let watch = watchdog.watch(&server);
        let _waiting = watch.waiting(Wait::Read);
        assert_eq!(server.read(&mut [0; 16]).unwrap(), 0);
        assert_eq!(watch.expired(), Some(Expiry::TimeUp));
    }
}
