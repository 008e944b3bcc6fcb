//! What hotsock's integration tests (`tests/`) and its bench (`bench/`) both
//! need, written once: a server started as a child process, an HTTP client
//! for its admin API, HAProxy in front of a fleet, and a free port. Not
//! published; errors are `anyhow` results with messages that say where to
//! look, and the tests add panicking helpers on top.
//!
//! # Layout
//!
//! - [`process`]: a server as a child process: started with [`Launch`], its
//!   addresses read from the lines it announces them with
//!   ([`hotsock::server::LISTENING`], [`hotsock::server::ADMIN_LISTENING`]),
//!   its stderr kept ([`Stderr`]), its memory read, killed when dropped
//!   ([`ServerProcess`]).
//! - [`http`]: hotsock's own HTTP/1.1 client, on hyper
//!   ([`hotsock::server::http::Client`], the one `hotsock swap`, `status`
//!   and `rollback` use), for the admin API over TCP or a Unix socket:
//!   never through a proxy, every status code returned rather than turned
//!   into an error, one timeout for the whole request.
//! - [`haproxy`]: deploy/haproxy.cfg with its ports replaced, run by a real
//!   `haproxy` ([`haproxy::Haproxy`]), for the fleet tests and bench.
//! - [`free_port`]: a port for a program that must be told one.

pub mod haproxy;
pub mod http;
pub mod process;

use std::net::TcpListener;

use anyhow::{Context as _, Result};

pub use process::{Launch, ServerProcess, Stderr};

/// A TCP port on 127.0.0.1 that was free a moment ago: bound to port 0,
/// then closed. Another process may take it before the caller binds it, so
/// it is only for a program that must be told a port rather than binding
/// port 0 and announcing it (HAProxy's frontend, systemd-socket-activate,
/// processes sharing a port with `--reuse-port`), or for an address where
/// nothing listens.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    let addr = listener
        .local_addr()
        .context("cannot read the address of a socket bound to 127.0.0.1:0")?;
    Ok(addr.port())
}
