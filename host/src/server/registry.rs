//! Handler versions: which one new connections get, swapping in a new one,
//! rolling back, and what each version is doing. No sockets: the registry
//! counts connections, it does not hold them.
//!
//! The current version sits in an [`ArcSwap`]: a connection loads it once when
//! it is accepted and keeps that snapshot (a [`Pinned`] version) until it
//! closes, so a swap never changes the code under an open connection, and the
//! accept path never waits for a swap. The registry keeps the previous version
//! for rollback; any older version lives only as long as its last connection.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::runtime::{Handler, HandlerError, Problem, Profile, Runtime, sha256_hex};
use crate::server::capacity::Capacity;
use crate::sys;
use crate::watchdog::Deadline;

/// The name of the one listener of a server started without a config file:
/// what metrics and logs call it.
pub const DEFAULT_LISTENER: &str = "default";

/// A new version is on probation for this many of its first connections:
/// with `--rollback-on-traps N`, N faults among them roll it back. Long enough
/// to see a bad deploy, short enough that later, unrelated faults (a hostile
/// client, say) do not undo a good one.
pub const PROBATION_CONNECTIONS: u64 = 100;

/// What the operator asked of swaps, from `serve`'s options.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Roll back a new version if this many of its first
    /// [`PROBATION_CONNECTIONS`] connections end by the handler's own fault.
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
    /// The component's bytes, for handing to the process that replaces this
    /// one on a binary upgrade (the compiled handler does not keep them).
    component: Arc<[u8]>,
    /// Whether faults among its first connections can roll it back.
    on_probation: bool,
    connections: AtomicU64,
    active: AtomicUsize,
    faults: AtomicU64,
    early_faults: AtomicU64,
    /// Connections that failed, by kind (a fault's kind, or why the host
    /// stopped it): what `hotsock_connection_failures_total` reports.
    failures: Mutex<BTreeMap<&'static str, u64>>,
    /// When its connections are closed (`--drain-deadline`): set when it is
    /// replaced, unset if it is rolled back to. The watchdog enforces it.
    drain: Arc<Deadline>,
}

impl Version {
    fn new(
        number: u64,
        source: String,
        handler: Handler,
        component: Arc<[u8]>,
        on_probation: bool,
    ) -> Self {
        let sha256 = handler.sha256().to_string();
        Version {
            id: format!("v{number}-{}", &sha256[..8]),
            sha256,
            source,
            loaded_at: SystemTime::now(),
            handler,
            component,
            on_probation,
            connections: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            faults: AtomicU64::new(0),
            early_faults: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
            drain: Arc::new(Deadline::default()),
        }
    }

    /// `v3-1a2b3c4d`: a counter, then the start of the component's sha256.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The compiled handler this version runs.
    pub fn handler(&self) -> &Handler {
        &self.handler
    }

    /// Where its component came from: a path, or what the uploader said.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Its component's bytes.
    pub fn component(&self) -> &Arc<[u8]> {
        &self.component
    }

    /// Counts a connection of this version that failed, by `kind`.
    pub fn count_failure(&self, kind: &'static str) {
        *sys::lock(&self.failures).entry(kind).or_insert(0) += 1;
    }

    /// Connections of this version that failed so far, by kind.
    pub fn failures(&self) -> BTreeMap<&'static str, u64> {
        sys::lock(&self.failures).clone()
    }

    /// The sha256 of its component, in hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Counts a fault of one of this version's connections; returns how
    /// many of its probation connections have faulted so far.
    fn count_fault(&self, ordinal: u64) -> u64 {
        self.faults.fetch_add(1, Ordering::Relaxed);
        match ordinal < PROBATION_CONNECTIONS {
            true => self.early_faults.fetch_add(1, Ordering::Relaxed) + 1,
            false => 0,
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
            traps: self.faults.load(Ordering::Relaxed),
        }
    }
}

/// A connection's hold on the version it was accepted under. It keeps the
/// version alive and counted as active until the connection closes.
pub struct Pinned {
    version: Arc<Version>,
    /// This connection's place in the version's sequence, from 0.
    ordinal: u64,
    /// The version's drain deadline, when the policy has one.
    drain: Option<Arc<Deadline>>,
}

impl Pinned {
    /// The deadline at which this connection must close, under `--drain-deadline`.
    pub fn drain(&self) -> Option<Arc<Deadline>> {
        self.drain.clone()
    }
}

impl Deref for Pinned {
    type Target = Version;

    fn deref(&self) -> &Version {
        &self.version
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
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

/// What a registry is set up with.
pub struct Setup {
    /// The listener's name.
    pub name: String,
    /// The runtime its versions are compiled for and run in.
    pub runtime: Arc<Runtime>,
    /// Limits and grants of its instances.
    pub profile: Profile,
    /// What swaps must respect.
    pub policy: Policy,
    /// The machine's limits every version's connections must fit, if known.
    pub capacity: Option<Arc<Capacity>>,
    /// Most connections the listener serves at once.
    pub max_connections: u32,
}

/// A handler compiled and checked for a registry, not yet serving.
pub struct Prepared {
    source: String,
    component: Arc<[u8]>,
    compiled_in: Duration,
    handler: Handler,
}

/// The handler versions of one listener.
pub struct Registry {
    name: String,
    runtime: Arc<Runtime>,
    /// Limits and grants, loaded once per connection; a reload may change them.
    profile: ArcSwap<Profile>,
    policy: ArcSwap<Policy>,
    capacity: Option<Arc<Capacity>>,
    max_connections: u32,
    current: ArcSwap<Version>,
    /// Locked with [`sys::lock`]: every critical section is a handful of
    /// assignments, so a panic in one leaves it consistent.
    history: Mutex<History>,
    /// Swaps done, rejected, and rollbacks (manual or automatic).
    swaps: SwapCounts,
}

/// How swaps have gone, for metrics.
#[derive(Debug, Default)]
pub struct SwapCounts {
    /// Components swapped in.
    pub ok: AtomicU64,
    /// Components rejected.
    pub rejected: AtomicU64,
    /// Rollbacks, asked for or automatic.
    pub rolled_back: AtomicU64,
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
    /// Starts with the component `bytes`, from `source`, as version 1. With
    /// a capacity, this and every later version must fit it.
    pub fn new(setup: Setup, source: String, bytes: &[u8]) -> anyhow::Result<Self> {
        setup.runtime.admits(&setup.profile)?;
        let sha256 = sha256_hex(bytes);
        let handler = Handler::compile(
            &setup.runtime,
            &setup.profile,
            source.clone(),
            bytes,
            &sha256,
        )?;
        if let Some(capacity) = &setup.capacity {
            capacity
                .reserve(&setup.name, setup.max_connections, &handler)
                .map_err(|why| HandlerError::new(handler.name(), Problem::ExceedsCapacity(why)))?;
        }
        Ok(Registry {
            name: setup.name,
            runtime: setup.runtime,
            profile: ArcSwap::from_pointee(setup.profile),
            policy: ArcSwap::from_pointee(setup.policy),
            capacity: setup.capacity,
            max_connections: setup.max_connections,
            current: ArcSwap::from_pointee(Version::new(1, source, handler, bytes.into(), false)),
            history: Mutex::new(History {
                next_number: 2,
                previous: None,
                retired: Vec::new(),
                rollbacks: Vec::new(),
            }),
            swaps: SwapCounts::default(),
        })
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The runtime every version is compiled for and runs in.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Limits and grants for a new connection's instance.
    pub fn profile(&self) -> Arc<Profile> {
        self.profile.load_full()
    }

    /// Changes the limits and grants of new connections' instances; open
    /// ones keep theirs.
    pub fn set_profile(&self, profile: Profile) -> anyhow::Result<()> {
        self.runtime.admits(&profile)?;
        self.profile.store(Arc::new(profile));
        Ok(())
    }

    /// What the operator asked of swaps.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Changes what later swaps must respect.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// The version new connections get right now.
    pub fn current(&self) -> Arc<Version> {
        self.current.load_full()
    }

    /// Pins the current version for a newly accepted connection.
    pub fn pin(&self) -> Pinned {
        let version = self.current();
        let ordinal = version.connections.fetch_add(1, Ordering::Relaxed);
        version.active.fetch_add(1, Ordering::Relaxed);
        let drain = self
            .policy
            .load()
            .drain_deadline
            .map(|_| Arc::clone(&version.drain));
        Pinned {
            version,
            ordinal,
            drain,
        }
    }

    /// How swaps have gone so far.
    pub fn swap_counts(&self) -> &SwapCounts {
        &self.swaps
    }

    /// Validates and compiles `bytes`, then makes it the current version.
    /// Compiling happens on the caller's thread, without blocking the accept
    /// path or other readers; a rejected component changes nothing.
    pub fn swap(&self, source: String, bytes: &[u8]) -> Result<Swapped, HandlerError> {
        match self.prepare(&self.profile(), source, bytes) {
            Ok(None) => Ok(Swapped::Unchanged(self.current())),
            Ok(Some(prepared)) => Ok(self.install(prepared)),
            Err(e) => {
                self.swaps.rejected.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Validates and compiles `bytes` to run under `profile` (the listener's
    /// own, or the one it is about to get) and within its capacity, without
    /// swapping it in; `None` if it is the component already serving.
    /// Nothing changes either way.
    pub fn prepare(
        &self,
        profile: &Profile,
        source: String,
        bytes: &[u8],
    ) -> Result<Option<Prepared>, HandlerError> {
        let sha256 = sha256_hex(bytes);
        if self.current().sha256 == sha256 {
            return Ok(None);
        }
        let started = Instant::now();
        let handler = Handler::compile(&self.runtime, profile, source.clone(), bytes, &sha256)?;
        if let Some(capacity) = &self.capacity {
            capacity
                .reserve(&self.name, self.max_connections, &handler)
                .map_err(|why| HandlerError::new(handler.name(), Problem::ExceedsCapacity(why)))?;
        }
        Ok(Some(Prepared {
            source,
            component: bytes.into(),
            compiled_in: started.elapsed(),
            handler,
        }))
    }

    /// Makes a prepared handler the current version.
    pub fn install(&self, prepared: Prepared) -> Swapped {
        let Prepared {
            source,
            component,
            compiled_in,
            handler,
        } = prepared;
        let mut history = sys::lock(&self.history);
        let number = history.next_number;
        history.next_number += 1;
        let on_probation = self.policy.load().rollback_on_traps.is_some();
        let size = component.len();
        let new = Arc::new(Version::new(
            number,
            source,
            handler,
            component,
            on_probation,
        ));
        let old = self.current.swap(Arc::clone(&new));
        self.retire(&mut history, &old);
        self.swaps.ok.fetch_add(1, Ordering::Relaxed);
        info!(
            "{}swapped handler {} -> {} ({}, {size} bytes, compiled in {compiled_in:.0?}); {} open connection(s) stay on {}",
            self.log_prefix(),
            old.id,
            new.id,
            new.source,
            old.active.load(Ordering::Relaxed),
            old.id,
        );
        Swapped::Replaced { new, old }
    }

    /// `listener NAME: ` before a line about versions, unless it is the
    /// default listener's.
    fn log_prefix(&self) -> String {
        match self.name == DEFAULT_LISTENER {
            true => String::new(),
            false => format!("listener {}: ", self.name),
        }
    }

    /// Makes the previous version current again; the version it replaces
    /// becomes the previous one, so a second rollback undoes the first.
    /// Returns the version now current and the one replaced, or `None` if
    /// there is no previous version.
    pub fn rollback(&self, reason: &str) -> Option<(Arc<Version>, Arc<Version>)> {
        let mut history = sys::lock(&self.history);
        let previous = history.previous.take()?;
        Some(self.roll_back_to(&mut history, previous, reason))
    }

    fn roll_back_to(
        &self,
        history: &mut History,
        previous: Arc<Version>,
        reason: &str,
    ) -> (Arc<Version>, Arc<Version>) {
        previous.drain.clear();
        self.swaps.rolled_back.fetch_add(1, Ordering::Relaxed);
        let from = self.current.swap(Arc::clone(&previous));
        self.retire(history, &from);
        warn!(
            "{}rolled back {} -> {}: {reason}",
            self.log_prefix(),
            from.id,
            previous.id
        );
        history.rollbacks.push(RollbackRecord {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            from: from.id.clone(),
            to: previous.id.clone(),
            reason: reason.to_string(),
        });
        (previous, from)
    }

    /// Counts a fault of the handler's own on `pinned`'s version, and rolls
    /// the version back if that was one fault too many during its probation.
    /// Connections the operator's limits stopped are not faults: do not call
    /// this for them.
    pub fn record_fault(&self, pinned: &Pinned) {
        let early_faults = pinned.count_fault(pinned.ordinal);
        let Some(limit) = self.policy.load().rollback_on_traps else {
            return;
        };
        if !pinned.on_probation || early_faults != limit {
            return;
        }
        let mut history = sys::lock(&self.history);
        // Only the version still serving can be rolled back, and only to the
        // version it replaced.
        if !Arc::ptr_eq(&self.current.load(), &pinned.version) {
            return;
        }
        let Some(previous) = history.previous.take() else {
            return;
        };
        let reason = format!(
            "automatic: {early_faults} of its first {PROBATION_CONNECTIONS} connections trapped (--rollback-on-traps {limit})"
        );
        self.roll_back_to(&mut history, previous, &reason);
    }

    /// Moves the version that just stopped being current into history, and
    /// starts its drain deadline if there is one.
    fn retire(&self, history: &mut History, old: &Arc<Version>) {
        if let Some(deadline) = self.policy.load().drain_deadline {
            old.drain.set(Instant::now() + deadline);
        }
        if let Some(older) = history.previous.replace(Arc::clone(old)) {
            history.retired.push(Arc::downgrade(&older));
        }
        history.retired.retain(|v| v.strong_count() > 0);
    }

    /// Every live version, with its state (`current`, `previous`, `retired`).
    pub fn versions(&self) -> Vec<(Arc<Version>, &'static str)> {
        let current = self.current();
        let history = sys::lock(&self.history);
        let mut versions = vec![(current, "current")];
        versions.extend(history.previous.iter().map(|v| (Arc::clone(v), "previous")));
        let retired = history.retired.iter().filter_map(Weak::upgrade);
        versions.extend(retired.rev().map(|v| (v, "retired")));
        versions
    }

    /// A snapshot of every live version and the rollbacks so far.
    pub fn status(&self) -> Status {
        let versions = self.versions();
        let history = sys::lock(&self.history);
        Status {
            current: versions[0].0.id.clone(),
            previous: history.previous.as_ref().map(|v| v.id.clone()),
            versions: versions.iter().map(|(v, state)| v.status(state)).collect(),
            rollbacks: history.rollbacks.clone(),
        }
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
    /// Connections that ended by the handler's own fault (a trap or panic,
    /// a memory, CPU or stack limit, a non-zero exit); never those the
    /// operator's limits for clients stopped.
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
