//! hotsock: the classic thread-per-connection TCP server, with the per-client
//! logic in a sandboxed WebAssembly component.
//!
//! # Layout
//!
//! Dependencies point one way, `cli → server → runtime → leaves`, and
//! `make lint` checks that they do (`tools/layers.py`):
//!
//! - the binary (`main.rs` and `cli/`, not part of this library): the command
//!   line, one file per subcommand, turning options into the settings below.
//! - [`server`]: TCP. Binding and accepting for every listener (or taking
//!   sockets passed in by systemd or by the process an upgrade replaces),
//!   the PROXY protocol from a load balancer, admission and per-address
//!   limits, what the machine allows, a thread per connection, one
//!   connection's job, each listener's registry of handler versions,
//!   reloading, the binary upgrade, metrics and health, the admin API, HTTP
//!   for both, and notifications to systemd.
//! - [`runtime`]: WebAssembly only. The engine and its instance pool, loading
//!   a handler of either contract version, the store a guest runs in and the
//!   `connection` it sees, rooms, key-value buckets and outbound grants, the
//!   limits and grants of a listener's instances (a `Profile`), how a guest
//!   stopped, recording and replaying a connection, the code cache, and the
//!   fields that tie guest output to its connection in the log.
//! - leaves, which depend on nothing above them: [`watchdog`] (idle timeout,
//!   time limit and drain deadline for every connection, from one thread),
//!   [`sys`] (every libc call, and the poison-tolerant lock), [`units`]
//!   (sizes and durations).
//!
//! A connection's life: the [`server`] accepts it, pins the registry's
//! current version to it, and runs its job on a thread of its own, which has
//! the [`runtime`] instantiate that version's handler in a fresh store holding
//! the connection, and calls `handle`. When `handle` returns or traps, the
//! store is dropped and the socket closed with it; a swap meanwhile only
//! affects later connections.

#![warn(missing_docs)]

pub mod runtime;
pub mod server;
pub mod sys;
pub mod units;
pub mod watchdog;
