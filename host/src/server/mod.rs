//! TCP: the server as a library ([`Server`], configured by a [`Config`] and
//! changed while it runs through [`Control`]), binding and accepting,
//! admission, connection threads, one connection's job, each listener's
//! handler versions and settings, reloading, the binary upgrade, metrics and
//! the admin API. The module map of the whole crate is in
//! `docs/architecture.md`; each file's own doc says what it owns.

mod accept;
mod admission;
mod capacity;
mod conn;
mod inherited;
mod listener;
mod metrics;
mod notify;
mod proxy;
mod registry;
mod reload;
mod run;
mod settings;
mod stats;
mod tls;
mod workers;

pub mod admin;
pub mod http;
pub mod upgrade;

pub use accept::{ADMIN_LISTENING, DEFAULT_DRAIN_TIMEOUT, Drain, LISTENING, Stopper, bind};
pub use admission::{AdmissionStatus, Refusal, WhenFull};
pub use capacity::{Capacity, THREAD_MAPPINGS};
pub use inherited::{ADMIN_SOCKET, Inherited, METRICS_SOCKET, Source};
pub use listener::Listener;
pub use metrics::{HealthRoutes, METRICS_LISTENING, Metrics};
pub use notify::{is_supervised, notify};
pub use proxy::{HEADER_TIMEOUT, Proxy};
pub use registry::{
    Component, DEFAULT_LISTENER, PROBATION_CONNECTIONS, Pinned, Registry, Setup, Snapshot, Staged,
    Status, Swapped, Version, VersionStatus,
};
pub use reload::{Reloader, Trigger, WATCH_QUIET, reload_handler};
pub use run::{AdminConfig, Config, Control, ListenerConfig, Server, Takeover};
pub use settings::{DEFAULT_IDLE_TIMEOUT, ListenerSettings, Policy, Rules};
pub use stats::ListenerMetrics;
pub use tls::{
    CertFiles, Certificates, ClientAuth, DEFAULT_HANDSHAKE_TIMEOUT, EXPIRY_WARNING, HandshakeError,
    SniCert, Tls, TlsSettings, provider as tls_provider,
};
