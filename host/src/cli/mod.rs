//! The command line: subcommands, their options, and the defaults as named
//! constants with the reason for each value.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::admission::WhenFull;
use crate::cache::CACHE_DIR_ENV;
use crate::limits::parse_size;
use crate::sandbox::Preopen;

/// Where `serve` listens unless told otherwise: the textbook thread server's
/// port, on loopback so that a fresh install exposes nothing to the network.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50007";

/// How long open connections may run on after SIGINT or SIGTERM: long enough
/// for a request in flight to finish, short enough for a service manager's
/// stop timeout (systemd's default is 90 s).
pub const DEFAULT_DRAIN_TIMEOUT: &str = "10s";

/// Most linear memory one connection's instance may have. The default echo
/// handler needs about 1 MiB; 64 MiB leaves ample room for real handlers while
/// a thousand runaway ones cannot exhaust a small server.
pub const DEFAULT_MAX_MEMORY: &str = "64MiB";

/// Most CPU time a handler may use between two reads or writes on its
/// connection. Far above what answering a message takes, far below what a
/// client would wait for.
pub const DEFAULT_CPU_BUDGET: &str = "1s";

/// Longest a `read` or `write` waits for the client. Long enough for a person
/// typing into `nc`, short enough that silent clients do not hold a thread
/// and an instance forever.
pub const DEFAULT_IDLE_TIMEOUT: &str = "5m";

/// Most connections served at once; it also sizes the instance pool.
/// wasmtime's own pool default, and comfortably within one machine's threads.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1000;

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
    Serve(Box<ServeArgs>),
    /// Check that a file is a handler component this hotsock can serve, without serving it.
    Check(CheckArgs),
    /// Swap a new handler component into a running server (needs `serve --admin`).
    Swap(SwapArgs),
    /// Print a running server's handler versions and their connections (needs `serve --admin`).
    Status(StatusArgs),
    /// Return a running server to its previous handler version (needs `serve --admin`).
    Rollback(AdminArgs),
    /// Precompile a handler to native code (.cwasm), which `serve` and `swap` load without compiling.
    Compile(CompileArgs),
    /// Talk to a line-based server: send each line typed (or piped in), print each reply.
    Client(ClientArgs),
    /// Create a new handler project that builds to a component with one command.
    New(NewArgs),
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

    /// Most linear memory a connection's handler instance may use (e.g.
    /// 16MiB, 1GiB). A handler that needs more fails with "memory limit
    /// exceeded"; only its own connection is affected.
    #[arg(long, value_name = "SIZE", default_value = DEFAULT_MAX_MEMORY, value_parser = parse_size, help_heading = "Limits")]
    pub max_memory: usize,

    /// Most CPU time a handler may use between two reads or writes on its
    /// connection. Waiting (for the client, or in a sleep) uses none and is
    /// never charged. A handler over budget is stopped and its connection
    /// closed.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_CPU_BUDGET, value_parser = parse_duration, help_heading = "Limits")]
    pub cpu_budget: Duration,

    /// Longest a read waits for the client to send something, or a write for
    /// it to take data; then the handler gets `timed-out`.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_IDLE_TIMEOUT, value_parser = parse_duration, help_heading = "Limits")]
    pub idle_timeout: Duration,

    /// Longest a connection may stay open, however active (off by default).
    /// Stops clients that trickle a byte now and then from holding a
    /// connection forever.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Limits")]
    pub max_connection_time: Option<Duration>,

    /// Most connections served at once. It also sizes the pool of handler
    /// instances, so the two always agree.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..=100_000), help_heading = "Limits")]
    pub max_connections: u32,

    /// What happens to a new client while all --max-connections are busy:
    /// `wait` leaves it in the listen backlog until a slot frees, `close`
    /// accepts and closes it at once.
    #[arg(long, value_name = "POLICY", value_enum, default_value_t = WhenFull::Wait, help_heading = "Limits")]
    pub when_full: WhenFull,

    /// Give handlers an environment variable, as KEY=VALUE. Repeatable.
    /// Handlers get no environment unless granted.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env, help_heading = "Capabilities")]
    pub env: Vec<(String, String)>,

    /// Let handlers read a host directory, as HOST::GUEST (or just HOST, seen
    /// under the same path). Read-only. Repeatable. Handlers get no files
    /// unless granted.
    #[arg(long = "dir", value_name = "HOST::GUEST", value_parser = parse_read_only_dir, help_heading = "Capabilities")]
    pub dirs: Vec<Preopen>,

    /// Like --dir, but handlers may also create, change and delete files there.
    #[arg(long = "dir-rw", value_name = "HOST::GUEST", value_parser = parse_writable_dir, help_heading = "Capabilities")]
    pub dirs_rw: Vec<Preopen>,

    /// Where compiled handlers are cached.
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Where compiled handler code is cached between runs.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Directory for compiled handler code, so a second start with the same
    /// handler skips compiling [default: $XDG_CACHE_HOME/hotsock, else ~/.cache/hotsock]
    #[arg(long, value_name = "DIR", env = CACHE_DIR_ENV, help_heading = "Cache")]
    pub cache_dir: Option<PathBuf>,

    /// Compile every handler afresh, without reading or writing the cache.
    #[arg(long, conflicts_with = "cache_dir", help_heading = "Cache")]
    pub no_cache: bool,
}

impl CacheArgs {
    /// The cache directory to use, if any.
    pub fn dir(&self) -> Option<PathBuf> {
        match self.no_cache {
            true => None,
            false => self.cache_dir.clone().or_else(crate::cache::default_dir),
        }
    }
}

/// Options of `hotsock check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The handler component (.wasm, or .cwasm from `hotsock compile`) to validate.
    #[arg(value_name = "HANDLER")]
    pub handler: PathBuf,

    /// Where compiled handlers are cached.
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Options of `hotsock compile`.
#[derive(Debug, Args)]
#[command(after_help = "\
A .cwasm file is native code for this hotsock version and its default engine settings; \
load only .cwasm files you compiled yourself.")]
pub struct CompileArgs {
    /// The handler component (.wasm) to compile. It is fully validated first.
    #[arg(value_name = "HANDLER")]
    pub handler: PathBuf,

    /// Where to write the compiled handler [default: HANDLER with the extension .cwasm].
    #[arg(short, long, value_name = "FILE.cwasm")]
    pub output: Option<PathBuf>,

    /// Where compiled handlers are cached.
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Options of `hotsock client`.
#[derive(Debug, Args)]
#[command(after_help = "\
With a terminal, it prompts `-> ` for each line; typing `quit` ends the session. \
With stdin from a pipe or file, it sends each line and prints each reply, without prompts.")]
pub struct ClientArgs {
    /// The server, as HOST:PORT.
    #[arg(value_name = "ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,

    /// Send this message to the server before closing when `quit` is typed,
    /// e.g. `--quit-message --quit--` for the classic interactive server.
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub quit_message: Option<String>,

    /// Send each line with its newline (by default a line goes without it,
    /// like the classic client).
    #[arg(long)]
    pub newline: bool,

    /// Longest to wait for a reply before giving up.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// The languages `hotsock new` can scaffold a handler in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate built with cargo and wit-bindgen.
    Rust,
    /// A Python module built with componentize-py.
    Python,
}

/// Options of `hotsock new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The handler's name; the project is created in a directory of that name.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// The language to write the handler in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
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

/// Parses `--env KEY=VALUE`.
fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

fn parse_read_only_dir(text: &str) -> Result<Preopen, String> {
    parse_dir(text, false)
}

fn parse_writable_dir(text: &str) -> Result<Preopen, String> {
    parse_dir(text, true)
}

/// Parses `HOST::GUEST`, or `HOST` alone for the same path on both sides.
fn parse_dir(text: &str, writable: bool) -> Result<Preopen, String> {
    let (host, guest) = text.split_once("::").unwrap_or((text, text));
    if host.is_empty() || guest.is_empty() {
        return Err(format!("`{text}` is not HOST::GUEST"));
    }
    Ok(Preopen {
        host: host.into(),
        guest: guest.to_string(),
        writable,
    })
}

/// Parses a human duration such as `10s`, `500ms` or `1m 30s`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 2m)"))
}
