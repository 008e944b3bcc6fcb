//! One listener as it serves: its handler versions and settings (the
//! registry), admission, metrics and rooms. Every connection's job reads it;
//! the admin API, metrics and reloads reach the listener through it.

use std::sync::Arc;

use crate::runtime::{Bridge, Fleet, Rooms};
use crate::server::admission::Admission;
use crate::server::registry::Registry;
use crate::server::settings::ListenerSettings;
use crate::server::stats::ListenerMetrics;
use crate::watchdog::{Expiry, Watchdog};

/// Where the listeners' rooms reach beyond this process.
#[derive(Debug, Clone)]
pub enum Reach {
    /// Every process on one Redis (`--rooms-store redis://…`).
    Fleet(Arc<Fleet>),
    /// The processes of a binary upgrade that overlap this one.
    Bridge(Arc<Bridge>),
}

/// One listener, as it serves.
pub struct Listener {
    name: String,
    registry: Arc<Registry>,
    admission: Arc<Admission>,
    metrics: Arc<ListenerMetrics>,
    watchdog: Arc<Watchdog>,
    /// Its rooms: they outlive every connection, swap and reload.
    rooms: Arc<Rooms>,
}

impl Listener {
    /// A listener serving `registry`'s snapshots, its rooms spanning
    /// `reach`.
    pub(crate) fn new(
        registry: Arc<Registry>,
        admission: Arc<Admission>,
        watchdog: Arc<Watchdog>,
        reach: &Reach,
    ) -> Self {
        let settings = registry.settings();
        let backlog = settings.rules.room_backlog;
        let rooms = match reach {
            Reach::Fleet(fleet) => fleet.rooms_for(registry.name(), backlog),
            Reach::Bridge(bridge) => bridge.rooms_for(registry.name(), backlog),
        };
        Listener {
            name: registry.name().to_string(),
            rooms,
            registry,
            admission,
            metrics: Arc::default(),
            watchdog,
        }
    }

    /// Its name, in log lines, metrics and the admin API.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its handler versions, and the settings they run under.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Its connection counts.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// What its connections are measured by.
    pub fn metrics(&self) -> &Arc<ListenerMetrics> {
        &self.metrics
    }

    /// Its rooms, shared by every connection on it.
    pub fn rooms(&self) -> &Arc<Rooms> {
        &self.rooms
    }

    /// The watchdog its connections are watched by.
    pub(crate) fn watchdog(&self) -> &Watchdog {
        &self.watchdog
    }
}

/// Why the host closed a connection that ran under `settings`, in the
/// operator's words, naming the option that made it.
pub(crate) fn stop_reason(settings: &ListenerSettings, expiry: Expiry) -> String {
    match expiry {
        Expiry::Idle => format!(
            "client idle for {:?}: timed out (--idle-timeout)",
            settings.rules.idle_timeout
        ),
        Expiry::TimeUp => format!(
            "connection time limit reached: open for {:?} (--max-connection-time)",
            settings.rules.max_connection_time.unwrap_or_default()
        ),
        Expiry::Drained => format!(
            "closed: its version was replaced more than {:?} ago (--drain-deadline)",
            settings.policy.drain_deadline.unwrap_or_default()
        ),
    }
}
