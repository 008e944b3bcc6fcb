//! hotsock: the classic thread-per-connection TCP server, with the per-client
//! logic in a sandboxed WebAssembly component.
//!
//! # Layout
//!
//! Dependencies point one way, `cli → server → runtime → leaves`, and
//! `make lint` checks that they do (`tools/layers.py`):
//!
//! - the binary (`main.rs` and `cli/`, not part of this library): parses the
//!   command line and the config file into a [`server::Config`], and calls
//!   [`server::Server`].
//! - [`server`]: TCP. A whole server as a library: listeners, admission, a
//!   thread per connection, each listener's handler versions and settings,
//!   reloads, the binary upgrade, metrics and the admin API.
//! - [`runtime`]: WebAssembly only. The engine, loading a handler, the store
//!   a guest runs in and everything it can reach, and how it stopped.
//! - leaves, which depend on nothing above them: [`watchdog`], [`sys`],
//!   [`units`], [`wire`] (a client's bytes, through TLS or not).
//!
//! The module map, one line per file, is `docs/architecture.md`; each
//! file's own doc says what it owns.
//!
//! A connection's life: the [`server`] accepts it, loads its listener's
//! current snapshot (a handler version and the settings it was checked
//! under) once, and runs its job on a thread of its own, which has the
//! [`runtime`] instantiate that version's handler in a fresh store holding
//! the connection, and calls `handle`. When `handle` returns or traps, the
//! store is dropped and the socket closed with it; a swap or reload
//! meanwhile only affects later connections.

#![warn(missing_docs)]

pub mod runtime;
pub mod server;
pub mod sys;
pub mod units;
pub mod watchdog;
pub mod wire;
