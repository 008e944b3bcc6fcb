//! TCP: binding and accepting, admission, connection threads, one
//! connection's job, the registry of handler versions, reloading, and the
//! admin API.
//!
//! - `listener`: [`Server`], the accept loop over bound listeners, and its
//!   [`Settings`]; [`bind`]; a [`Stopper`] that starts the drain.
//! - `admission`: `--max-connections` and `--max-connections-per-ip`, as
//!   slots that free themselves.
//! - `capacity`: what `--max-connections` needs of the machine, checked at start.
//! - `workers`: connection threads, reused once their connection closes.
//! - `conn`: one connection's job, from the accepted socket to the close.
//! - `registry`: [`Registry`], the handler versions: the current one,
//!   swapping, rollback, per-version statistics, pinning; no sockets.
//! - `reload`: [`Reloader`], reloading the handler file on SIGHUP and with `--watch`.
//! - `admin`: the optional admin API (status, swap, rollback), on a Unix
//!   socket or a TCP address with a token.
//! - `http`: HTTP/1.1 for the control plane: endpoints, serving, the client.

mod admission;
mod capacity;
mod conn;
mod listener;
mod registry;
mod reload;
mod workers;

pub mod admin;
pub mod http;

pub use admission::{AdmissionStatus, Refusal, WhenFull};
pub use capacity::{Capacity, THREAD_MAPPINGS};
pub use listener::{
    ADMIN_LISTENING, DEFAULT_DRAIN_TIMEOUT, DEFAULT_IDLE_TIMEOUT, LISTENING, Server, Settings,
    Stopper, bind,
};
pub use registry::{PROBATION_CONNECTIONS, Policy, Registry, Status, Swapped, VersionStatus};
pub use reload::{Reloader, Trigger, WATCH_QUIET};
