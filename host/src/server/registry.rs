//! Handler versions, and the settings they run under: which version new
//! connections get, swapping in a new one, reloading the settings, rolling
//! back, and what each version is doing. No sockets: the registry counts
//! connections, it does not hold them.
//!
//! What new connections get is one [`Snapshot`] in an [`ArcSwap`]: a
//! version and the [`ListenerSettings`] it was checked under. A connection
//! loads it once when it is accepted and keeps it (a [`Pinned`] snapshot)
//! until it closes, so neither a swap nor a reload changes anything under an
//! open connection, and the accept path never waits for either. Every change
//! builds the next snapshot whole, checks it, and installs it with one store,
//! one change at a time. The registry keeps the previous version for
//! rollback; any older version lives only as long as its last connection.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::runtime::{Handler, HandlerError, Problem, Runtime, sha256_hex};
use crate::server::capacity::Capacity;
use crate::server::settings::ListenerSettings;
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

/// One loaded handler component and what it has served.
pub struct Version {
    number: u64,
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
            number,
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

/// What new connections get: a handler version and the settings it was
/// checked under, installed together and never one without the other.
pub struct Snapshot {
    /// The handler version.
    pub version: Arc<Version>,
    /// Limits, grants, rules and policy, as one generation.
    pub settings: Arc<ListenerSettings>,
}

/// A connection's hold on the snapshot it was accepted under. It keeps the
/// version alive and counted as active until the connection closes.
pub struct Pinned {
    snapshot: Arc<Snapshot>,
    /// This connection's place in the version's sequence, from 0.
    ordinal: u64,
}

impl Pinned {
    /// Pins `snapshot`, loaded once for a newly accepted and admitted
    /// connection: its version and settings for its whole life.
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        let ordinal = snapshot.version.connections.fetch_add(1, Ordering::Relaxed);
        snapshot.version.active.fetch_add(1, Ordering::Relaxed);
        Pinned { snapshot, ordinal }
    }

    /// The settings this connection runs under, for its whole life.
    pub fn settings(&self) -> &ListenerSettings {
        &self.snapshot.settings
    }

    /// The deadline at which this connection must close, under `--drain-deadline`.
    pub fn drain(&self) -> Option<Arc<Deadline>> {
        let drains = self.settings().policy.drain_deadline.is_some();
        drains.then(|| Arc::clone(&self.snapshot.version.drain))
    }
}

impl Deref for Pinned {
    type Target = Version;

    fn deref(&self) -> &Version {
        &self.snapshot.version
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.snapshot.version.active.fetch_sub(1, Ordering::Relaxed);
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
    /// What its connections run under, to begin with.
    pub settings: ListenerSettings,
    /// The machine's limits every version's connections must fit, if known.
    pub capacity: Option<Arc<Capacity>>,
}

/// A handler component, as a swap or reload brings it: where it came from,
/// and its bytes.
pub struct Component {
    /// A path, or what the uploader said.
    pub source: String,
    /// The component (or precompiled `.cwasm`) itself.
    pub bytes: Arc<[u8]>,
}

/// The next snapshot, built and checked whole, not yet serving: what
/// [`Registry::stage`] returns and [`Registry::commit`] installs. While it
/// is held, no other change can start on this registry.
pub struct Staged<'a> {
    registry: &'a Registry,
    /// Held from check to install, so that what was checked is what serves.
    _writer: MutexGuard<'a, ()>,
    settings: Arc<ListenerSettings>,
    /// A new version to serve, or `None` to keep the current one.
    new: Option<New>,
    /// Whether the rollback target was checked under `settings`; if not,
    /// it is dropped on commit.
    keep_previous: bool,
}

/// A handler compiled and checked, not yet a version.
struct New {
    source: String,
    component: Arc<[u8]>,
    compiled_in: Duration,
    handler: Handler,
}

/// The handler versions of one listener.
pub struct Registry {
    name: String,
    runtime: Arc<Runtime>,
    capacity: Option<Arc<Capacity>>,
    /// What new connections get: loaded once per connection.
    current: ArcSwap<Snapshot>,
    /// Held by every change (swap, reload, manual rollback) from its first
    /// check to its install, so changes never interleave. Compiling happens
    /// under it: only other changes wait, never the accept path.
    writer: Mutex<()>,
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
        let lineage = Lineage {
            current: Kept {
                number: 1,
                source,
                component: bytes.into(),
            },
            previous: None,
            next_number: 2,
            rollbacks: Vec::new(),
        };
        Registry::resume(setup, lineage)
    }

    /// Goes on from `lineage`, another process's versions (a binary
    /// upgrade): the same numbers, the same rollback target and history.
    pub fn resume(setup: Setup, lineage: Lineage) -> anyhow::Result<Self> {
        let Setup {
            name,
            runtime,
            settings,
            capacity,
        } = setup;
        runtime.admits(&settings.profile)?;
        let load = |kept: Kept| -> anyhow::Result<Version> {
            let Kept {
                number,
                source,
                component,
            } = kept;
            let handler = compile(
                &runtime,
                &capacity,
                &name,
                &settings,
                source.clone(),
                &component,
            )?;
            Ok(Version::new(number, source, handler, component, false))
        };
        // The rollback target compiles as it did there; if it no longer
        // does (a hotsock that refuses what an older one took), serving
        // goes on without it. First, so that the capacity reserved is the
        // current version's, as after a swap.
        let previous = lineage.previous.and_then(|kept| {
            let number = kept.number;
            load(kept)
                .map_err(|e| {
                    warn!(
                        "listener {name}: version {number} can no longer be rolled back to: {e:#}"
                    )
                })
                .ok()
                .map(Arc::new)
        });
        let version = load(lineage.current)?;
        Ok(Registry {
            name,
            runtime,
            capacity,
            current: ArcSwap::from_pointee(Snapshot {
                version: Arc::new(version),
                settings: Arc::new(settings),
            }),
            writer: Mutex::new(()),
            history: Mutex::new(History {
                next_number: lineage.next_number,
                previous,
                retired: Vec::new(),
                rollbacks: lineage.rollbacks,
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

    /// What new connections get right now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The version new connections get right now.
    pub fn current(&self) -> Arc<Version> {
        Arc::clone(&self.current.load().version)
    }

    /// The settings new connections get right now.
    pub fn settings(&self) -> Arc<ListenerSettings> {
        Arc::clone(&self.current.load().settings)
    }

    /// How swaps have gone so far.
    pub fn swap_counts(&self) -> &SwapCounts {
        &self.swaps
    }

    /// Validates and compiles `bytes` under the current settings, then makes
    /// it the current version. Compiling happens on the caller's thread,
    /// without blocking the accept path; a rejected component changes nothing.
    pub fn swap(&self, source: String, bytes: &[u8]) -> Result<Swapped, HandlerError> {
        let writer = sys::lock(&self.writer);
        let settings = self.settings();
        let sha256 = sha256_hex(bytes);
        if self.current().sha256 == sha256 {
            return Ok(Swapped::Unchanged(self.current()));
        }
        let component = Component {
            source,
            bytes: bytes.into(),
        };
        let new = self.build(&settings, component)?;
        let staged = Staged {
            registry: self,
            _writer: writer,
            settings,
            new: Some(new),
            keep_previous: true,
        };
        Ok(staged.commit())
    }

    /// Builds and checks the next snapshot: `settings` with `component`, or
    /// with the current version if `component` is `None` or the one already
    /// serving. Every version kept is checked under the new settings: the
    /// current one (if it stays) must start under them, and the rollback
    /// target is kept only if it does too. Nothing changes until the result
    /// is committed; dropping it changes nothing.
    pub fn stage(
        &self,
        settings: ListenerSettings,
        component: Option<Component>,
    ) -> anyhow::Result<Staged<'_>> {
        let writer = sys::lock(&self.writer);
        let current = self.snapshot();
        let max = current.settings.rules.max_connections;
        if settings.rules.max_connections != max {
            anyhow::bail!(
                "max-connections cannot change from {max} to {} while serving (it sized the \
                 instance pool): restart the server, or upgrade it (SIGUSR2), for that",
                settings.rules.max_connections
            );
        }
        self.runtime.admits(&settings.profile)?;
        let component = component.filter(|c| sha256_hex(&c.bytes) != current.version.sha256);
        let new = match component {
            Some(component) => Some(
                self.build(&settings, component)
                    .map_err(|e| anyhow::anyhow!("swap rejected ({}): {e}", e.reason()))?,
            ),
            None => {
                current
                    .version
                    .handler
                    .check(&self.runtime, &settings.profile)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "{} cannot run under the new settings: {e}",
                            current.version.id
                        )
                    })?;
                None
            }
        };
        let previous = sys::lock(&self.history).previous.clone();
        let keep_previous = match previous {
            None => true,
            Some(previous) => match previous.handler.check(&self.runtime, &settings.profile) {
                Ok(()) => true,
                Err(e) => {
                    warn!(
                        "{}{} cannot run under the new settings ({e}): it will no longer be \
                         a rollback target",
                        self.log_prefix(),
                        previous.id
                    );
                    false
                }
            },
        };
        Ok(Staged {
            registry: self,
            _writer: writer,
            settings: Arc::new(settings),
            new,
            keep_previous,
        })
    }

    /// Validates and compiles `component` to run under `settings`, timed for
    /// the log; a rejection is counted.
    fn build(
        &self,
        settings: &ListenerSettings,
        component: Component,
    ) -> Result<New, HandlerError> {
        let Component { source, bytes } = component;
        let started = Instant::now();
        let compiled = compile(
            &self.runtime,
            &self.capacity,
            &self.name,
            settings,
            source.clone(),
            &bytes,
        );
        let handler = compiled.inspect_err(|_| {
            self.swaps.rejected.fetch_add(1, Ordering::Relaxed);
        })?;
        Ok(New {
            source,
            component: bytes,
            compiled_in: started.elapsed(),
            handler,
        })
    }

    /// `listener NAME: ` before a line about versions, unless it is the
    /// default listener's.
    fn log_prefix(&self) -> String {
        match self.name == DEFAULT_LISTENER {
            true => String::new(),
            false => format!("listener {}: ", self.name),
        }
    }

    /// Makes the previous version current again, under the current settings
    /// (it was checked under them when they were installed); the version it
    /// replaces becomes the previous one, so a second rollback undoes the
    /// first. Returns the version now current and the one replaced, or
    /// `None` if there is no previous version.
    pub fn rollback(&self, reason: &str) -> Option<(Arc<Version>, Arc<Version>)> {
        let _writer = sys::lock(&self.writer);
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
        let settings = self.settings();
        let from = self.current.swap(Arc::new(Snapshot {
            version: Arc::clone(&previous),
            settings: Arc::clone(&settings),
        }));
        self.retire(history, &from.version, &settings);
        warn!(
            "{}rolled back {} -> {}: {reason}",
            self.log_prefix(),
            from.version.id,
            previous.id
        );
        history.rollbacks.push(RollbackRecord {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            from: from.version.id.clone(),
            to: previous.id.clone(),
            reason: reason.to_string(),
        });
        (previous, Arc::clone(&from.version))
    }

    /// Counts a fault of the handler's own on `pinned`'s version, and rolls
    /// the version back if that was one fault too many during its probation.
    /// Connections the operator's limits stopped are not faults: do not call
    /// this for them.
    pub fn record_fault(&self, pinned: &Pinned) {
        let early_faults = pinned.count_fault(pinned.ordinal);
        let Some(limit) = pinned.settings().policy.rollback_on_traps else {
            return;
        };
        // At the limit or past it: a fault that came while a change was under
        // way (below) must not leave a bad version serving for good.
        if !pinned.on_probation || early_faults < limit {
            return;
        }
        // A connection's thread never waits for a compile: while a swap or
        // reload is under way, it decides what serves next.
        let Ok(_writer) = self.writer.try_lock() else {
            return warn!(
                "{}{}: {early_faults} of its first {PROBATION_CONNECTIONS} connections trapped, \
                 but a swap or reload is under way: not rolled back automatically",
                self.log_prefix(),
                pinned.id
            );
        };
        let mut history = sys::lock(&self.history);
        // Only the version still serving can be rolled back, and only to the
        // version it replaced.
        if !Arc::ptr_eq(&self.current.load().version, &pinned.snapshot.version) {
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
    /// starts its drain deadline if `settings` have one.
    fn retire(&self, history: &mut History, old: &Arc<Version>, settings: &ListenerSettings) {
        if let Some(deadline) = settings.policy.drain_deadline {
            old.drain.set(Instant::now() + deadline);
        }
        if let Some(older) = history.previous.replace(Arc::clone(old)) {
            history.retired.push(Arc::downgrade(&older));
        }
        history.retired.retain(|v| v.strong_count() > 0);
    }

    /// What a binary upgrade carries to the new process: the current
    /// version, the rollback target, the next number, the rollbacks.
    pub fn lineage(&self) -> Lineage {
        let kept = |v: &Version| Kept {
            number: v.number,
            source: v.source.clone(),
            component: Arc::clone(&v.component),
        };
        let current = self.current();
        let history = sys::lock(&self.history);
        Lineage {
            current: kept(&current),
            previous: history.previous.as_deref().map(kept),
            next_number: history.next_number,
            rollbacks: history.rollbacks.clone(),
        }
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

impl Staged<'_> {
    /// Whether committing changes the handler version.
    pub fn swaps(&self) -> bool {
        self.new.is_some()
    }

    /// Installs the staged snapshot with one store: new connections get its
    /// version and settings from now on; open ones keep theirs.
    pub fn commit(self) -> Swapped {
        let registry = self.registry;
        let mut history = sys::lock(&registry.history);
        if !self.keep_previous {
            history.previous = None;
        }
        let current = registry.snapshot();
        let Some(New {
            source,
            component,
            compiled_in,
            handler,
        }) = self.new
        else {
            registry.current.store(Arc::new(Snapshot {
                version: Arc::clone(&current.version),
                settings: self.settings,
            }));
            return Swapped::Unchanged(Arc::clone(&current.version));
        };
        let number = history.next_number;
        history.next_number += 1;
        let on_probation = self.settings.policy.rollback_on_traps.is_some();
        let size = component.len();
        let new = Arc::new(Version::new(
            number,
            source,
            handler,
            component,
            on_probation,
        ));
        let old = registry.current.swap(Arc::new(Snapshot {
            version: Arc::clone(&new),
            settings: Arc::clone(&self.settings),
        }));
        let old = Arc::clone(&old.version);
        registry.retire(&mut history, &old, &self.settings);
        registry.swaps.ok.fetch_add(1, Ordering::Relaxed);
        info!(
            "{}swapped handler {} -> {} ({}, {size} bytes, compiled in {compiled_in:.0?}); {} open connection(s) stay on {}",
            registry.log_prefix(),
            old.id,
            new.id,
            new.source,
            old.active.load(Ordering::Relaxed),
            old.id,
        );
        Swapped::Replaced { new, old }
    }
}

/// Validates and compiles `bytes` to run under `settings` and within the
/// listener's share of the machine, as a version of listener `name`.
fn compile(
    runtime: &Runtime,
    capacity: &Option<Arc<Capacity>>,
    name: &str,
    settings: &ListenerSettings,
    source: String,
    bytes: &[u8],
) -> Result<Handler, HandlerError> {
    let sha256 = sha256_hex(bytes);
    let handler = Handler::compile(runtime, &settings.profile, source, bytes, &sha256)?;
    if let Some(capacity) = capacity {
        capacity
            .reserve(name, settings.rules.max_connections, &handler)
            .map_err(|why| HandlerError::new(handler.name(), Problem::ExceedsCapacity(why)))?;
    }
    Ok(handler)
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

/// A listener's versions as a binary upgrade carries them to the new
/// process, so that numbers go on and a rollback still works there.
#[derive(Debug, Clone)]
pub struct Lineage {
    /// The version serving now.
    pub current: Kept,
    /// The version a rollback goes back to, if any.
    pub previous: Option<Kept>,
    /// The number the next version gets.
    pub next_number: u64,
    /// The rollbacks so far.
    pub rollbacks: Vec<RollbackRecord>,
}

/// One version as a [`Lineage`] carries it.
#[derive(Debug, Clone)]
pub struct Kept {
    /// Its number (`3` of `v3-1a2b3c4d`).
    pub number: u64,
    /// Where the component came from.
    pub source: String,
    /// The component's bytes.
    pub component: Arc<[u8]>,
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
