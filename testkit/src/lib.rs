//! What hotsock's integration tests (`tests/`) and its bench (`bench/`) both
//! need, written once: a server started as a child process, and an HTTP
//! client for its admin API. Not published; errors are `anyhow` results with
//! messages that say where to look, and the tests add panicking helpers on
//! top.
//!
//! # Layout
//!
//! - [`process`]: a server as a child process: started with [`Launch`], its
//!   addresses read from the lines it announces them with
//!   ([`hotsock::server::LISTENING`], [`hotsock::server::ADMIN_LISTENING`]),
//!   its stderr kept ([`Stderr`]), its memory read, killed when dropped
//!   ([`ServerProcess`]).
//! - [`http`]: one HTTP/1.1 client (ureq) for loopback HTTP APIs: never
//!   through a proxy, every status code returned rather than turned into
//!   an error.

pub mod http;
pub mod process;

pub use process::{Launch, ServerProcess, Stderr};
