//! Admission control: at most `--max-connections` connections at once.
//!
//! The same number sizes the instance pool, so a connection that is admitted
//! always finds an instance slot. A [`Slot`] is a guard value: whichever way a
//! connection ends, dropping its slot frees it, so the count cannot leak.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::warn;
use mio::Waker;
use serde::{Deserialize, Serialize};

use crate::sys;

/// What to do with a new client while every slot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Leave it in the listen backlog until a slot frees up.
    Wait,
    /// Accept it and close it at once, so it fails fast.
    Close,
}

/// Least time between two "server is full" log lines: a flood of clients
/// must not become a flood of log lines.
const FULL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Counts open connections against the limit.
pub struct Admission {
    max: usize,
    policy: WhenFull,
    open: Mutex<usize>,
    idle: Condvar,
    /// Wakes the accept loop when a slot frees up while it is waiting for one.
    wake_accept: Arc<Waker>,
    accepted: AtomicU64,
    refused: AtomicU64,
    saturated: AtomicU64,
    last_full_log: Mutex<Option<Instant>>,
}

/// One admitted connection's place; dropping it frees the place.
pub struct Slot(Arc<Admission>);

impl Admission {
    /// Admits up to `max` connections; `wake_accept` wakes the accept loop.
    pub fn new(max: u32, policy: WhenFull, wake_accept: Arc<Waker>) -> Self {
        Admission {
            max: max as usize,
            policy,
            open: Mutex::new(0),
            idle: Condvar::new(),
            wake_accept,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            saturated: AtomicU64::new(0),
            last_full_log: Mutex::new(None),
        }
    }

    /// What to do with new clients while full.
    pub fn policy(&self) -> WhenFull {
        self.policy
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        // Every change to the count is a single `+= 1` or `-= 1`.
        sys::lock(&self.open)
    }

    /// Takes a slot for a new connection, or `None` if all are taken.
    pub fn try_admit(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.lock();
        if *open >= self.max {
            return None;
        }
        *open += 1;
        if *open == self.max {
            self.saturated.fetch_add(1, Ordering::Relaxed);
        }
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Some(Slot(Arc::clone(self)))
    }

    /// Whether every slot is taken.
    pub fn is_full(&self) -> bool {
        *self.lock() >= self.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        *self.lock()
    }

    /// Notes a client turned away by `--when-full close`.
    pub fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.log_full();
    }

    /// Logs that the server is full, at most once per [`FULL_LOG_INTERVAL`].
    pub fn log_full(&self) {
        let mut last = sys::lock(&self.last_full_log);
        if last.is_some_and(|at| at.elapsed() < FULL_LOG_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        let what = match self.policy {
            WhenFull::Wait => "new clients wait in the listen backlog",
            WhenFull::Close => "new clients are closed at once (--when-full close)",
        };
        warn!(
            "all {} connection slots are busy (--max-connections): {what}; {} turned away so far",
            self.max,
            self.refused.load(Ordering::Relaxed)
        );
    }

    /// Waits until no connection is open or `timeout` passes; returns how many are still open.
    pub fn wait_idle(&self, timeout: Duration) -> usize {
        let (open, _) = self
            .idle
            .wait_timeout_while(self.lock(), timeout, |open| *open > 0)
            .unwrap_or_else(|e| e.into_inner());
        *open
    }

    /// The counters `/status` reports.
    pub fn status(&self) -> AdmissionStatus {
        AdmissionStatus {
            active: self.open(),
            max: self.max,
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            saturated: self.saturated.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let admission = &self.0;
        let mut open = admission.lock();
        let was_full = *open >= admission.max;
        *open -= 1;
        if *open == 0 {
            admission.idle.notify_all();
        }
        drop(open);
        if was_full && admission.policy == WhenFull::Wait {
            // Only fails if the accept loop is gone, i.e. the server stopped.
            let _ = admission.wake_accept.wake();
        }
    }
}

/// Connection counts, as `GET /status` reports them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdmissionStatus {
    /// Connections open now.
    pub active: usize,
    /// `--max-connections`.
    pub max: usize,
    /// Connections admitted since start.
    pub accepted: u64,
    /// Clients closed at once because every slot was busy (`--when-full close`).
    pub refused: u64,
    /// Times every slot became busy.
    pub saturated: u64,
}
