//! The command line: subcommands, their options, and the defaults as named
//! constants with the reason for each value.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Where `serve` listens unless told otherwise: the textbook thread server's
/// port, on loopback so that a fresh install exposes nothing to the network.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50007";

/// How long open connections may run on after SIGINT or SIGTERM: long enough
/// for a request in flight to finish, short enough for a service manager's
/// stop timeout (systemd's default is 90 s).
pub const DEFAULT_DRAIN_TIMEOUT: &str = "10s";

/// hotsock: a thread-per-connection TCP server whose per-client logic is a
/// sandboxed, hot-swappable WebAssembly component.
#[derive(Debug, Parser)]
#[command(name = "hotsock", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `hotsock`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve TCP clients: one thread and one fresh handler instance per connection.
    Serve(ServeArgs),
    /// Check that a file is a handler component this hotsock can serve, without serving it.
    Check(CheckArgs),
}

/// Options of `hotsock serve`.
#[derive(Debug, Args)]
#[command(
    after_help = "Log verbosity follows RUST_LOG (default: info), e.g. RUST_LOG=warn.\n\
    SIGINT or SIGTERM stops accepting and lets open connections finish; a second one exits at once."
)]
pub struct ServeArgs {
    /// The handler component (.wasm) that serves each connection, built for
    /// wasm32-wasip2 against wit/plugin.wit.
    #[arg(value_name = "HANDLER")]
    pub handler: PathBuf,

    /// Address to listen on, as IP:PORT or HOST:PORT. Repeat the option to
    /// listen on several addresses; port 0 picks a free port. Each bound address
    /// is printed on stdout as `listening on IP:PORT`.
    #[arg(long = "addr", value_name = "ADDR", default_value = DEFAULT_ADDR)]
    pub addrs: Vec<String>,

    /// After SIGINT or SIGTERM, how long open connections may run on before
    /// hotsock exits anyway (e.g. 500ms, 10s, 2m).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_DRAIN_TIMEOUT, value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// Options of `hotsock check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The handler component (.wasm) to validate.
    #[arg(value_name = "HANDLER")]
    pub handler: PathBuf,
}

/// Parses a human duration such as `10s`, `500ms` or `1m 30s`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 2m)"))
}
