//! hotsock: the classic thread-per-connection TCP server, with the per-client
//! logic in a sandboxed WebAssembly component.
//!
//! # Layout
//!
//! - [`config`]: the command line, and every default as a named constant.
//! - [`server`]: listening sockets, the accept loop, one thread per
//!   connection, and draining on shutdown.
//! - [`admission`]: `--max-connections`, as slots that free themselves.
//! - [`workers`]: connection threads, reused once their connection closes.
//! - [`registry`]: handler versions: the current one, swapping, rollback,
//!   per-version statistics, and pinning each connection to one version.
//! - [`reload`]: reloading the handler file on SIGHUP and with `--watch`.
//! - [`admin`]: the optional HTTP admin API (status, swap, rollback) and its client.
//! - [`sandbox`]: the wasmtime engine, instance pool and linker, the epoch
//!   ticker, and the per-connection store that decides what a guest can reach.
//! - [`limits`]: every per-connection limit, applied in one function, and how
//!   hitting one is reported.
//! - [`watchdog`]: the idle timeout and connection time limit, for every
//!   connection from one thread.
//! - [`handler`]: loading and validating a handler component, with errors that
//!   say what to do.
//! - [`connection`]: one client, as the `connection` resource the guest reads
//!   and writes.
//! - [`console`]: guest stdout and stderr, forwarded to the host log.
//! - [`cache`]: compiled handler code on disk, so a second start is fast.
//! - [`client`]: `hotsock client`, the classic interactive line client.
//! - [`scaffold`]: `hotsock new`, a handler project to start from.
//! - [`bindings`]: the `bindgen!` of `wit/plugin.wit`, nothing else.
//!
//! A connection's life: [`server`] accepts it, pins the [`registry`]'s current
//! version to it, and starts its thread, which asks [`sandbox`] to instantiate
//! that version's [`handler`] in a fresh store holding the [`connection`], and
//! calls `handle`. When `handle` returns or traps, the store is dropped and the
//! socket closed with it; a swap meanwhile only affects later connections.

#![warn(missing_docs)]

pub mod admin;
pub mod admission;
#[allow(missing_docs)]
pub mod bindings;
pub mod cache;
pub mod client;
pub mod config;
pub mod connection;
pub mod console;
pub mod handler;
pub mod limits;
pub mod registry;
pub mod reload;
pub mod sandbox;
pub mod scaffold;
pub mod server;
pub mod watchdog;
pub mod workers;
