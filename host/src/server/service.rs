//! One listener's shared state: its handler versions, admission, rules for
//! clients and metrics. Every connection's job reads it; the admin API,
//! metrics and reloads reach the listener through it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use arc_swap::ArcSwap;

use crate::runtime::{DEFAULT_MAX_CONNECTIONS, DEFAULT_ROOM_BACKLOG, Rooms};
use crate::server::admission::{Admission, WhenFull};
use crate::server::proxy::Proxy;
use crate::server::registry::Registry;
use crate::server::stats::ListenerMetrics;
use crate::watchdog::{Expiry, Watchdog};

/// Longest a `read` or `write` waits for the client, by default. Long enough
/// for a person typing into `nc`, short enough that silent clients do not
/// hold a thread and an instance forever.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// How one listener treats its clients. All but `max_connections` may change
/// while serving (a config reload); new connections get the new rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Most connections served at once. It sized the instance pool, so it
    /// cannot change while serving.
    pub max_connections: u32,
    /// Most connections from one client address at once, if limited.
    pub max_connections_per_ip: Option<u32>,
    /// What to do with new clients while every connection slot is taken.
    pub when_full: WhenFull,
    /// Longest a read or write waits for the client.
    pub idle_timeout: Duration,
    /// Longest a connection may stay open, if limited.
    pub max_connection_time: Option<Duration>,
    /// Whether each connection starts with a PROXY protocol header, and
    /// from which sources (`--proxy-protocol`, `--proxy-from`).
    pub proxy: Option<Proxy>,
    /// Most bytes of room messages waiting for one member before it is
    /// disconnected (`--room-backlog`).
    pub room_backlog: usize,
}

impl Default for Rules {
    /// The defaults of `hotsock serve`.
    fn default() -> Self {
        Rules {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: None,
            when_full: WhenFull::Wait,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connection_time: None,
            proxy: None,
            room_backlog: DEFAULT_ROOM_BACKLOG,
        }
    }
}

/// One listener, as it serves.
pub struct Service {
    name: String,
    registry: Arc<Registry>,
    admission: Arc<Admission>,
    rules: ArcSwap<Rules>,
    metrics: Arc<ListenerMetrics>,
    watchdog: Arc<Watchdog>,
    /// Its rooms: they outlive every connection, swap and reload.
    rooms: Arc<Rooms>,
}

impl Service {
    /// A listener called `name`, serving `registry`'s versions under `rules`.
    pub(crate) fn new(
        name: String,
        registry: Arc<Registry>,
        admission: Arc<Admission>,
        rules: Rules,
        watchdog: Arc<Watchdog>,
    ) -> Self {
        Service {
            name,
            registry,
            admission,
            rooms: Arc::new(Rooms::new(rules.room_backlog)),
            rules: ArcSwap::from_pointee(rules),
            metrics: Arc::default(),
            watchdog,
        }
    }

    /// Its name, in log lines, metrics and the admin API.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its handler versions.
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

    /// The rules new connections get.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// Changes the rules for new connections. `max_connections` cannot
    /// change: it sized the instance pool.
    pub fn set_rules(&self, rules: Rules) -> Result<()> {
        let current = self.rules();
        if rules.max_connections != current.max_connections {
            bail!(
                "listener {}: --max-connections cannot change from {} to {} while serving: it \
                 sized the instance pool; restart the server",
                self.name,
                current.max_connections,
                rules.max_connections
            );
        }
        self.admission
            .set_rules(rules.max_connections_per_ip, rules.when_full);
        self.rooms.set_backlog(rules.room_backlog);
        self.rules.store(Arc::new(rules));
        Ok(())
    }

    /// The watchdog its connections are watched by.
    pub(crate) fn watchdog(&self) -> &Watchdog {
        &self.watchdog
    }

    /// Why the host closed a connection that ran under `rules`, in the
    /// operator's words, naming the option that made it.
    pub(crate) fn stop_reason(&self, rules: &Rules, expiry: Expiry) -> String {
        match expiry {
            Expiry::Idle => format!(
                "client idle for {:?}: timed out (--idle-timeout)",
                rules.idle_timeout
            ),
            Expiry::TimeUp => format!(
                "connection time limit reached: open for {:?} (--max-connection-time)",
                rules.max_connection_time.unwrap_or_default()
            ),
            Expiry::Drained => format!(
                "closed: its version was replaced more than {:?} ago (--drain-deadline)",
                self.registry.policy().drain_deadline.unwrap_or_default()
            ),
        }
    }
}
