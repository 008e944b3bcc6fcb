//! Handler versions: which one new connections get, swapping in a new one,
//! rolling back, and what each version is doing.
//!
//! The current version sits in an [`ArcSwap`]: a connection loads it once when
//! it is accepted and keeps that snapshot (a [`Pinned`] version) until it
//! closes, so a swap never changes the code under an open connection, and the
//! accept path never waits for a swap. The registry keeps the previous version
//! for rollback; any older version lives only as long as its last connection.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, bail};
use arc_swap::ArcSwap;
use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::handler::{Handler, sha256_hex};
use crate::sandbox::Sandbox;

/// A new version is on probation for this many of its first connections:
/// with `--rollback-on-traps N`, N traps among them roll it back. Long enough
/// to see a bad deploy, short enough that later, unrelated traps (a hostile
/// client, say) do not undo a good one.
pub const PROBATION_CONNECTIONS: u64 = 100;

/// What the operator asked of swaps, from `serve`'s options.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Roll back a new version if this many of its first
    /// [`PROBATION_CONNECTIONS`] connections trap.
    pub rollback_on_traps: Option<u64>,
    /// Close connections still pinned to a replaced version this long after the swap.
    pub drain_deadline: Option<Duration>,
}

/// One loaded handler component and what it has served.
pub struct Version {
    id: String,
    sha256: String,
    source: String,
    loaded_at: SystemTime,
    handler: Handler,
    /// Whether traps among its first connections can roll it back.
    on_probation: bool,
    connections: AtomicU64,
    active: AtomicUsize,
    traps: AtomicU64,
    early_traps: AtomicU64,
    /// When it stopped being current, if it has; for `--drain-deadline`.
    retired_at: Mutex<Option<Instant>>,
    /// Its open connections' sockets, kept only under `--drain-deadline` so
    /// they can be closed from outside their threads.
    open: Mutex<HashMap<u64, TcpStream>>,
}

impl Version {
    /// `v3-1a2b3c4d`: a counter, then the start of the component's sha256.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The compiled handler this version runs.
    pub fn handler(&self) -> &Handler {
        &self.handler
    }

    /// Counts a trap by one of this version's connections.
    fn record_trap(&self, ordinal: u64) -> u64 {
        self.traps.fetch_add(1, Ordering::Relaxed);
        if ordinal < PROBATION_CONNECTIONS {
            self.early_traps.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        }
    }

    fn set_retired(&self, retired: bool) {
        *lock(&self.retired_at) = retired.then(Instant::now);
    }

    /// Closes every open connection of this version; their handlers see the
    /// client disconnect and return.
    fn close_open_connections(&self, why: &str) {
        for (id, stream) in lock(&self.open).drain() {
            warn!("conn {id} {}: closing it: {why}", self.id);
            // The connection may have closed on its own meanwhile; then
            // there is nothing left to shut down.
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn status(&self, state: &str) -> VersionStatus {
        VersionStatus {
            id: self.id.clone(),
            sha256: self.sha256.clone(),
            source: self.source.clone(),
            loaded_at: humantime::format_rfc3339_seconds(self.loaded_at).to_string(),
            state: state.to_string(),
            active_connections: self.active.load(Ordering::Relaxed),
            connections_served: self.connections.load(Ordering::Relaxed),
            traps: self.traps.load(Ordering::Relaxed),
        }
    }
}

/// A connection's hold on the version it was accepted under. It keeps the
/// version alive and counted as active until the connection closes.
pub struct Pinned {
    version: Arc<Version>,
    /// This connection's place in the version's sequence, from 0.
    ordinal: u64,
    conn_id: u64,
    /// Whether its socket is in the version's `open` map (`--drain-deadline`).
    tracked: bool,
}

impl Deref for Pinned {
    type Target = Version;

    fn deref(&self) -> &Version {
        &self.version
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if self.tracked {
            lock(&self.version.open).remove(&self.conn_id);
        }
        self.version.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a successful swap did.
pub enum Swapped {
    /// The component is the one already serving; nothing changed.
    Unchanged(Arc<Version>),
    /// `new` now serves new connections; `old` finishes its open ones.
    Replaced {
        /// The version now current.
        new: Arc<Version>,
        /// The version it replaced, now the rollback target.
        old: Arc<Version>,
    },
}

/// The handler versions of one server.
pub struct Registry {
    sandbox: Arc<Sandbox>,
    policy: Policy,
    current: ArcSwap<Version>,
    history: Mutex<History>,
}

struct History {
    next_number: u64,
    /// The rollback target.
    previous: Option<Arc<Version>>,
    /// Older versions, alive only while connections still use them.
    retired: Vec<Weak<Version>>,
    rollbacks: Vec<RollbackRecord>,
}

impl Registry {
    /// Starts with `handler` as version 1.
    pub fn new(
        sandbox: Arc<Sandbox>,
        policy: Policy,
        source: String,
        bytes: &[u8],
    ) -> Result<Self> {
        let handler = Handler::from_bytes(&sandbox, source.clone(), bytes)?;
        let first = Version::new(1, handler.sha256().to_string(), source, handler, false);
        Ok(Registry {
            sandbox,
            policy,
            current: ArcSwap::from_pointee(first),
            history: Mutex::new(History {
                next_number: 2,
                previous: None,
                retired: Vec::new(),
                rollbacks: Vec::new(),
            }),
        })
    }

    /// The engine and linker versions are compiled for.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The version new connections get right now.
    pub fn current(&self) -> Arc<Version> {
        self.current.load_full()
    }

    /// Pins the current version for a newly accepted connection. With a
    /// drain deadline, `stream` is kept so the connection can be closed if
    /// it outlives its version.
    pub fn pin(&self, conn_id: u64, stream: &TcpStream) -> Pinned {
        let version = self.current();
        let ordinal = version.connections.fetch_add(1, Ordering::Relaxed);
        version.active.fetch_add(1, Ordering::Relaxed);
        // Only pay for a duplicate socket when it may be needed.
        let tracked = self.policy.drain_deadline.is_some()
            && match stream.try_clone() {
                Ok(stream) => lock(&version.open).insert(conn_id, stream).is_none(),
                Err(e) => {
                    warn!("conn {conn_id}: cannot track it for --drain-deadline: {e}");
                    false
                }
            };
        Pinned {
            version,
            ordinal,
            conn_id,
            tracked,
        }
    }

    /// Validates and compiles `bytes`, then makes it the current version.
    /// Compiling happens on the caller's thread, without blocking the accept
    /// path or other readers; a rejected component changes nothing.
    pub fn swap(self: &Arc<Self>, source: String, bytes: &[u8]) -> Result<Swapped> {
        let sha256 = sha256_hex(bytes);
        let current = self.current();
        if current.sha256 == sha256 {
            return Ok(Swapped::Unchanged(current));
        }
        let started = Instant::now();
        let handler = Handler::compile(&self.sandbox, source.clone(), bytes, &sha256)?;
        let compiled_in = started.elapsed();

        let mut history = lock(&self.history);
        let number = history.next_number;
        history.next_number += 1;
        let on_probation = self.policy.rollback_on_traps.is_some();
        let new = Arc::new(Version::new(number, sha256, source, handler, on_probation));
        let old = self.current.swap(Arc::clone(&new));
        self.retire(&mut history, &old);
        info!(
            "swapped handler {} -> {} ({}, {} bytes, compiled in {compiled_in:.0?}); {} open connection(s) stay on {}",
            old.id,
            new.id,
            new.source,
            bytes.len(),
            old.active.load(Ordering::Relaxed),
            old.id,
        );
        Ok(Swapped::Replaced { new, old })
    }

    /// Makes the previous version current again; the version it replaces
    /// becomes the previous one, so a second rollback undoes the first.
    pub fn rollback(self: &Arc<Self>, reason: &str) -> Result<(Arc<Version>, Arc<Version>)> {
        let mut history = lock(&self.history);
        let Some(previous) = history.previous.take() else {
            bail!("there is no previous version to roll back to");
        };
        Ok(self.roll_back_to(&mut history, previous, reason))
    }

    fn roll_back_to(
        self: &Arc<Self>,
        history: &mut History,
        previous: Arc<Version>,
        reason: &str,
    ) -> (Arc<Version>, Arc<Version>) {
        previous.set_retired(false);
        let from = self.current.swap(Arc::clone(&previous));
        self.retire(history, &from);
        warn!("rolled back {} -> {}: {reason}", from.id, previous.id);
        history.rollbacks.push(RollbackRecord {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            from: from.id.clone(),
            to: previous.id.clone(),
            reason: reason.to_string(),
        });
        (previous, from)
    }

    /// Counts a trap on `pinned`'s version, and rolls the version back if
    /// that was one trap too many during its probation.
    pub fn record_trap(self: &Arc<Self>, pinned: &Pinned) {
        let early_traps = pinned.record_trap(pinned.ordinal);
        let Some(limit) = self.policy.rollback_on_traps else {
            return;
        };
        if !pinned.on_probation || early_traps != limit {
            return;
        }
        let mut history = lock(&self.history);
        // Only the version still serving can be rolled back, and only to the
        // version it replaced.
        if !Arc::ptr_eq(&self.current.load(), &pinned.version) {
            return;
        }
        let Some(previous) = history.previous.take() else {
            return;
        };
        let reason = format!(
            "automatic: {early_traps} of its first {PROBATION_CONNECTIONS} connections trapped (--rollback-on-traps {limit})"
        );
        self.roll_back_to(&mut history, previous, &reason);
    }

    /// Moves the version that just stopped being current into history.
    fn retire(self: &Arc<Self>, history: &mut History, old: &Arc<Version>) {
        old.set_retired(true);
        if let Some(older) = history.previous.replace(Arc::clone(old)) {
            history.retired.push(Arc::downgrade(&older));
        }
        history.retired.retain(|v| v.strong_count() > 0);
        if let Some(deadline) = self.policy.drain_deadline {
            enforce_drain_deadline(Arc::downgrade(old), deadline);
        }
    }

    /// A snapshot of every live version and the rollbacks so far.
    pub fn status(&self) -> Status {
        let current = self.current();
        let history = lock(&self.history);
        let mut versions = vec![current.status("current")];
        if let Some(previous) = &history.previous {
            versions.push(previous.status("previous"));
        }
        let retired = history.retired.iter().filter_map(Weak::upgrade);
        versions.extend(retired.rev().map(|v| v.status("retired")));
        Status {
            current: current.id.clone(),
            previous: history.previous.as_ref().map(|v| v.id.clone()),
            versions,
            rollbacks: history.rollbacks.clone(),
        }
    }
}

impl Version {
    fn new(
        number: u64,
        sha256: String,
        source: String,
        handler: Handler,
        on_probation: bool,
    ) -> Self {
        Version {
            id: format!("v{number}-{}", &sha256[..8]),
            sha256,
            source,
            loaded_at: SystemTime::now(),
            handler,
            on_probation,
            connections: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            traps: AtomicU64::new(0),
            early_traps: AtomicU64::new(0),
            retired_at: Mutex::new(None),
            open: Mutex::new(HashMap::new()),
        }
    }
}

/// After `deadline`, closes the connections still on `version` if it is still
/// retired by then. One short-lived thread per swap: swaps are rare, and the
/// thread holds only a weak reference, so it never keeps a version alive.
fn enforce_drain_deadline(version: Weak<Version>, deadline: Duration) {
    let spawned = thread::Builder::new()
        .name("drain-deadline".into())
        .spawn(move || {
            let mut wait = deadline;
            loop {
                thread::sleep(wait);
                let Some(version) = version.upgrade() else {
                    return; // its last connection already closed
                };
                let Some(retired_at) = *lock(&version.retired_at) else {
                    return; // rolled back to: it is current again
                };
                // Retired again since this thread started: wait for the new deadline.
                match deadline.checked_sub(retired_at.elapsed()) {
                    Some(left) if !left.is_zero() => wait = left,
                    _ => {
                        let why = format!(
                            "its version was replaced more than {deadline:?} ago (--drain-deadline)"
                        );
                        version.close_open_connections(&why);
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the --drain-deadline timer: {e}; old connections will not be closed");
    }
}

/// The state `GET /status` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Id of the version new connections get.
    pub current: String,
    /// Id of the version a rollback would return to.
    pub previous: Option<String>,
    /// Every version still loaded, current first.
    pub versions: Vec<VersionStatus>,
    /// Every rollback so far, oldest first.
    pub rollbacks: Vec<RollbackRecord>,
}

/// One version, as `GET /status` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionStatus {
    /// `v3-1a2b3c4d`.
    pub id: String,
    /// The component's sha256, in hex.
    pub sha256: String,
    /// Where it came from: a path, or `upload` for the admin API.
    pub source: String,
    /// When it was loaded, RFC 3339, UTC.
    pub loaded_at: String,
    /// `current`, `previous` (the rollback target) or `retired`.
    pub state: String,
    /// Connections open on it now.
    pub active_connections: usize,
    /// Connections it has accepted, open or closed.
    pub connections_served: u64,
    /// Connections whose handler trapped.
    pub traps: u64,
}

/// One rollback, manual or automatic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackRecord {
    /// When, RFC 3339, UTC.
    pub at: String,
    /// The version rolled back from.
    pub from: String,
    /// The version rolled back to.
    pub to: String,
    /// Who or what asked for it.
    pub reason: String,
}

/// Locks a mutex whose data stays consistent even if a holder panicked:
/// every critical section here is a handful of assignments.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
