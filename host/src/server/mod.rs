//! TCP: binding and accepting, admission, connection threads, one
//! connection's job, the registry of handler versions, reloading, and the
//! admin API.
//!
//! - `listener`: [`Server`], the accept loop over every [`Listener`]'s
//!   sockets, and its [`Settings`]; [`bind`]; a [`Stopper`] that starts the drain.
//! - `admission`: `--max-connections` and `--max-connections-per-ip`, as
//!   slots that free themselves.
//! - `capacity`: what `--max-connections` needs of the machine, checked at start.
//! - `workers`: connection threads, reused once their connection closes.
//! - `service`: [`Service`], one listener's shared state, and its [`Rules`].
//! - `conn`: one connection's job, from the accepted socket to the close.
//! - `registry`: [`Registry`], the handler versions: the current one,
//!   swapping, rollback, per-version statistics, pinning; no sockets.
//! - `reload`: [`Reloader`], reloading the handler file on SIGHUP and with `--watch`.
//! - `stats`: [`ListenerMetrics`], what a listener's connections are measured by.
//! - `metrics`: Prometheus metrics, `/healthz` and `/readyz` (`--metrics`).
//! - `admin`: the optional admin API (status, swap, rollback), on a Unix
//!   socket or a TCP address with a token.
//! - `http`: HTTP/1.1 for the control plane: endpoints, serving, the client.
//! - `proxy`: the PROXY protocol header a load balancer sends first
//!   (`--proxy-protocol`), and which sources may send it.
//! - `inherited`: listening sockets passed in by systemd or by the process
//!   an upgrade replaces, matched to listeners by name.
//! - `upgrade`: starting the hotsock binary now on disk with this
//!   process's sockets, and waiting until it is ready (SIGUSR2).
//! - `notify`: `READY=1` and `STOPPING=1` for systemd (`NOTIFY_SOCKET`).

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
mod service;
mod stats;
mod workers;

pub mod admin;
pub mod http;
pub mod upgrade;

pub use admission::{AdmissionStatus, Refusal, WhenFull};
pub use capacity::{Capacity, THREAD_MAPPINGS};
pub use inherited::{ADMIN_SOCKET, Inherited, METRICS_SOCKET, Source};
pub use listener::{
    ADMIN_LISTENING, DEFAULT_DRAIN_TIMEOUT, LISTENING, Listener, Server, Settings, Stopper, bind,
};
pub use metrics::{HealthRoutes, METRICS_LISTENING, Metrics};
pub use notify::{is_supervised, notify};
pub use proxy::{HEADER_TIMEOUT, Proxy};
pub use registry::{
    DEFAULT_LISTENER, PROBATION_CONNECTIONS, Policy, Prepared, Registry, Setup, Status, Swapped,
    VersionStatus,
};
pub use reload::{Reloader, Trigger, WATCH_QUIET, reload_handler};
pub use service::{DEFAULT_IDLE_TIMEOUT, Rules, Service};
pub use stats::ListenerMetrics;
