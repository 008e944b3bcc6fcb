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

/// The environment variable `swap`, `status` and `rollback` read the admin
/// address from when `--admin` is not given.
pub const ADMIN_ENV: &str = "HOTSOCK_ADMIN";

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
    /// Swap a new handler component into a running server (needs `serve --admin`).
    Swap(SwapArgs),
    /// Print a running server's handler versions and their connections (needs `serve --admin`).
    Status(StatusArgs),
    /// Return a running server to its previous handler version (needs `serve --admin`).
    Rollback(AdminArgs),
}

/// Options of `hotsock serve`.
#[derive(Debug, Args)]
#[command(after_help = "\
Log verbosity follows RUST_LOG (default: info), e.g. RUST_LOG=warn.
SIGINT or SIGTERM stops accepting and lets open connections finish; a second one exits at once.
SIGHUP reloads HANDLER from its path; open connections finish on the version they started with.")]
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

    /// Reload HANDLER whenever its file changes (after it has been quiet for a
    /// moment, so a build writing it in steps is read once, whole).
    #[arg(long)]
    pub watch: bool,

    /// Serve the admin API (status, swap, rollback over HTTP) on this address.
    /// Off by default; only loopback addresses unless --admin-allow-remote.
    /// The bound address is printed on stdout as `admin listening on IP:PORT`.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,

    /// Let --admin listen on a non-loopback address. The admin API has no
    /// authentication and can replace the server's code: put it behind
    /// something that does.
    #[arg(long, requires = "admin")]
    pub admin_allow_remote: bool,

    /// After a swap, close connections still on the replaced version once
    /// this much time has passed (e.g. 30s). Off by default: they run until
    /// they finish.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_deadline: Option<Duration>,

    /// Roll a newly swapped-in version back automatically if N of its first
    /// 100 connections trap.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub rollback_on_traps: Option<u64>,
}

/// Options of `hotsock check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The handler component (.wasm) to validate.
    #[arg(value_name = "HANDLER")]
    pub handler: PathBuf,
}

/// Where to find a running server's admin API.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The address `hotsock serve --admin` listens on.
    #[arg(long, value_name = "ADDR", env = ADMIN_ENV)]
    pub admin: String,
}

/// Options of `hotsock swap`.
#[derive(Debug, Args)]
pub struct SwapArgs {
    /// The server to talk to.
    #[command(flatten)]
    pub admin: AdminArgs,

    /// The new handler component (.wasm). The server validates and compiles it
    /// before swapping; if it is rejected, the current handler keeps serving.
    #[arg(value_name = "HANDLER")]
    pub handler: PathBuf,
}

/// Options of `hotsock status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The server to talk to.
    #[command(flatten)]
    pub admin: AdminArgs,

    /// Print the raw JSON of `GET /status` instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Parses a human duration such as `10s`, `500ms` or `1m 30s`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 2m)"))
}
