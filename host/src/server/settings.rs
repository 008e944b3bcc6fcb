//! What a listener's connections run under, as one value per generation:
//! the limits and grants of their instances ([`Profile`]), how the listener
//! treats its clients ([`Rules`]) and what swaps must respect ([`Policy`]).
//!
//! A reload builds the next [`ListenerSettings`] whole and checks it before
//! installing it together with the handler version it was checked against
//! (see `registry`): a connection never runs one generation's handler under
//! another generation's settings.

use std::sync::Arc;
use std::time::Duration;

use crate::runtime::{DEFAULT_MAX_CONNECTIONS, DEFAULT_ROOM_BACKLOG, Profile};
use crate::server::admission::WhenFull;
use crate::server::proxy::Proxy;
use crate::server::tls::Tls;

/// Longest a `read` or `write` waits for the client, by default. Long enough
/// for a person typing into `nc`, short enough that silent clients do not
/// hold a thread and an instance forever.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Everything a connection takes from its listener besides the handler
/// version: one generation of the listener's settings.
#[derive(Debug, Clone, Default)]
pub struct ListenerSettings {
    /// Limits and grants of each connection's instance.
    pub profile: Profile,
    /// How the listener treats its clients.
    pub rules: Rules,
    /// What swaps must respect.
    pub policy: Policy,
    /// TLS on the listener, certificates loaded: `None` speaks plaintext.
    /// Loaded from its [`TlsSettings`](crate::server::TlsSettings) by
    /// [`ListenerConfig::load_settings`](crate::server::ListenerConfig::load_settings),
    /// at start and at each reload, so every generation serves the files
    /// as they were when it was made.
    pub tls: Option<Arc<Tls>>,
}

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

/// What the operator asked of swaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Roll back a new version if this many of its first
    /// [`PROBATION_CONNECTIONS`](crate::server::PROBATION_CONNECTIONS)
    /// connections end by the handler's own fault.
    pub rollback_on_traps: Option<u64>,
    /// Close connections still pinned to a replaced version this long after the swap.
    pub drain_deadline: Option<Duration>,
}
