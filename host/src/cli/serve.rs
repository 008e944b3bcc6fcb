//! `hotsock serve`: its options, turned into the runtime's and the server's
//! settings; the start-up order; and the signals.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;

use anyhow::{Context as _, Result};
use clap::Args;
use hotsock::runtime::{
    self, Capabilities, DEFAULT_CPU_BUDGET, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MEMORY, Limits,
    Preopen, Runtime, read_component,
};
use hotsock::server::admin::{self, DEFAULT_MAX_UPLOAD, Token};
use hotsock::server::http::Endpoint;
use hotsock::server::{
    self, ADMIN_LISTENING, Capacity, DEFAULT_DRAIN_TIMEOUT, DEFAULT_IDLE_TIMEOUT, LISTENING,
    Policy, Registry, Reloader, Server, Stopper, Trigger, WhenFull,
};
use hotsock::sys;
use hotsock::units::{Size, parse_duration};
use humantime::Duration;
use log::{info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::args::{
    CacheArgs, DEFAULT_ADDR, parse_env, parse_read_only_dir, parse_writable_dir,
};

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
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_DRAIN_TIMEOUT.into(), value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Reload HANDLER whenever its file changes (after it has been quiet for a
    /// moment, so a build writing it in steps is read once, whole).
    #[arg(long)]
    pub watch: bool,

    /// Serve the admin API (status, swap, rollback over HTTP) on a Unix
    /// socket at this path (recommended: created private to this user,
    /// removed on exit), or on IP:PORT with --admin-token-file. Off by
    /// default. Printed on stdout as `admin listening on PATH|IP:PORT`.
    #[arg(long, value_name = "PATH|IP:PORT", help_heading = "Admin API")]
    pub admin: Option<Endpoint>,

    /// The token every admin request must carry (`Authorization: Bearer`):
    /// required with --admin IP:PORT. The file must be private to this user.
    #[arg(
        long,
        value_name = "FILE",
        requires = "admin",
        help_heading = "Admin API"
    )]
    pub admin_token_file: Option<PathBuf>,

    /// Let --admin IP:PORT be other than a loopback address. The token
    /// then travels over the network in the clear: put it behind TLS.
    #[arg(long, requires = "admin", help_heading = "Admin API")]
    pub admin_allow_remote: bool,

    /// Largest component `POST /handler` accepts; a larger body is refused
    /// before it is read.
    #[arg(long, value_name = "SIZE", default_value_t = Size(DEFAULT_MAX_UPLOAD), help_heading = "Admin API")]
    pub admin_max_upload: Size,

    /// After a swap, close connections still on the replaced version once
    /// this much time has passed (e.g. 30s). Off by default: they run until
    /// they finish.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_deadline: Option<Duration>,

    /// Roll a newly swapped-in version back automatically if N of its first
    /// 100 connections end by the handler's own fault: a trap or panic, its
    /// memory, CPU or stack limit, a non-zero exit. Connections the idle
    /// timeout, the connection time limit or the drain deadline stop never
    /// count, nor does an error returned from `handle`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub rollback_on_traps: Option<u64>,

    /// Most linear memory a connection's handler instance may use (e.g.
    /// 16MiB, 1GiB). A handler that needs more fails with "memory limit
    /// exceeded"; only its own connection is affected.
    #[arg(long, value_name = "SIZE", default_value_t = Size(DEFAULT_MAX_MEMORY), help_heading = "Limits")]
    pub max_memory: Size,

    /// Most CPU time a handler may use between two reads or writes on its
    /// connection. Waiting (for the client, or in a sleep) uses none and is
    /// never charged. A handler over budget is stopped and its connection
    /// closed.
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_CPU_BUDGET.into(), value_parser = parse_duration, help_heading = "Limits")]
    pub cpu_budget: Duration,

    /// Longest a read waits for the client to send something, or a write for
    /// it to take data; then the handler gets `timed-out`.
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_IDLE_TIMEOUT.into(), value_parser = parse_duration, help_heading = "Limits")]
    pub idle_timeout: Duration,

    /// Longest a connection may stay open, however active (off by default).
    /// Stops clients that trickle a byte now and then from holding a
    /// connection forever.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Limits")]
    pub max_connection_time: Option<Duration>,

    /// Most connections served at once. It also sizes the pool of handler
    /// instances, so the two always agree. Checked at start against what the
    /// machine allows (open files, threads, memory mappings, address space).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    pub max_connections: u32,

    /// Most connections one client address may have open at once (off by
    /// default). A connection over it is closed at once, so that one address
    /// cannot hold every slot; behind a proxy or NAT, many clients share one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    pub max_connections_per_ip: Option<u32>,

    /// What happens to a new client while all --max-connections are busy:
    /// `wait` leaves it in the listen backlog until a slot frees, `close`
    /// accepts and closes it at once.
    #[arg(long, value_name = "POLICY", value_enum, default_value_t = WhenFullArg::Wait, help_heading = "Limits")]
    pub when_full: WhenFullArg,

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

/// `--when-full`, as the command line spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WhenFullArg {
    /// Leave new clients in the listen backlog until a slot frees up.
    Wait,
    /// Accept new clients and close them at once, so they fail fast.
    Close,
}

impl From<WhenFullArg> for WhenFull {
    fn from(arg: WhenFullArg) -> Self {
        match arg {
            WhenFullArg::Wait => WhenFull::Wait,
            WhenFullArg::Close => WhenFull::Close,
        }
    }
}

impl ServeArgs {
    /// What the runtime needs: limits, pool size, grants, cache.
    fn runtime_settings(&self) -> runtime::Settings {
        runtime::Settings {
            limits: Limits {
                max_memory: self.max_memory.0,
                cpu_budget: *self.cpu_budget,
            },
            max_instances: self.max_connections,
            capabilities: Capabilities {
                env: self.env.clone(),
                dirs: self.dirs.iter().chain(&self.dirs_rw).cloned().collect(),
            },
            cache_dir: self.cache.dir(),
        }
    }

    /// What the server needs: admission, the watchdog's limits, the drain.
    fn server_settings(&self) -> server::Settings {
        server::Settings {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            when_full: self.when_full.into(),
            idle_timeout: *self.idle_timeout,
            max_connection_time: self.max_connection_time.map(|d| *d),
            drain_timeout: *self.drain_timeout,
        }
    }

    /// What swaps must respect.
    fn policy(&self) -> Policy {
        Policy {
            rollback_on_traps: self.rollback_on_traps,
            drain_deadline: self.drain_deadline.map(|d| *d),
        }
    }
}

/// Serves until SIGINT or SIGTERM, then drains.
pub fn run(args: ServeArgs) -> Result<()> {
    if let Err(e) = sys::raise_open_file_limit() {
        warn!("cannot raise the open file limit: {e}");
    }
    // Everything --max-connections needs of the machine is checked before
    // anything listens: files and threads here, address space by the
    // runtime, memory mappings with the handler.
    let capacity = Capacity::check(args.max_connections)?;
    runtime::compile_in_background();
    let runtime = Arc::new(Runtime::new(args.runtime_settings())?);
    // Validate the handler before binding, so a bad file fails fast and a
    // script never sees `listening on` for a server that cannot serve.
    let bytes = read_component(&args.handler)?;
    let source = args.handler.display().to_string();
    let registry = Registry::new(runtime, args.policy(), Some(capacity), source, &bytes)?;
    let registry = Arc::new(registry);
    let listeners = server::bind(&args.addrs)?;
    let admin = match &args.admin {
        Some(endpoint) => Some(admin::bind(admin::Options {
            endpoint: endpoint.clone(),
            token: args
                .admin_token_file
                .as_deref()
                .map(Token::read)
                .transpose()?,
            allow_remote: args.admin_allow_remote,
            max_upload: args.admin_max_upload.0,
        })?),
        None => None,
    };

    let reloader = Reloader::spawn(Arc::clone(&registry), args.handler.clone())?;
    // Kept alive for as long as the server runs: dropping it ends the watch.
    let _watcher = match args.watch {
        true => Some(reloader.watch(&args.handler)?),
        false => None,
    };
    let mut announce = Vec::new();
    for listener in &listeners {
        announce.push(format!("{LISTENING}{}", listener.local_addr()?));
    }
    if let Some(admin) = &admin {
        announce.push(format!("{ADMIN_LISTENING}{}", admin.endpoint()?));
    }
    let server = Server::new(Arc::clone(&registry), listeners, args.server_settings())?;
    handle_signals(server.stopper(), reloader)?;
    // Held until the server has drained: dropping it removes the socket file.
    let _admin_socket = match admin {
        Some(admin) => admin::spawn(admin, Arc::clone(&registry), server.admission())?,
        None => None,
    };

    info!(
        "serving handler {} as {}",
        args.handler.display(),
        registry.current().id()
    );
    let mut stdout = std::io::stdout().lock();
    for line in announce {
        writeln!(stdout, "{line}")?;
    }
    // Scripts wait for these lines before connecting; do not leave them in a buffer.
    stdout.flush()?;
    drop(stdout);
    server.run()
}

/// SIGHUP reloads the handler. The first SIGINT or SIGTERM drains the server;
/// a second one exits at once, for an operator who does not want to wait.
fn handle_signals(stopper: Stopper, reloader: Reloader) -> Result<()> {
    let mut signals =
        Signals::new([SIGHUP, SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                let name = signal_name(signal);
                match signal {
                    SIGHUP => {
                        info!("received SIGHUP: reloading the handler");
                        reloader.request(Trigger::Signal);
                    }
                    _ if !stopping => {
                        info!("received {name}: shutting down");
                        stopper.stop();
                        stopping = true;
                    }
                    _ => {
                        warn!(
                            "received {name} again: exiting without waiting for open connections"
                        );
                        std::process::exit(128 + signal);
                    }
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGHUP => "SIGHUP",
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    #[test]
    fn the_defaults_are_the_librarys_defaults() {
        let cli = Cli::parse_from(["hotsock", "serve", "h.wasm"]);
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        let runtime = args.runtime_settings();
        let defaults = runtime::Settings::default();
        assert_eq!(runtime.limits.max_memory, defaults.limits.max_memory);
        assert_eq!(runtime.limits.cpu_budget, defaults.limits.cpu_budget);
        assert_eq!(runtime.max_instances, defaults.max_instances);
        let server = args.server_settings();
        let defaults = server::Settings::default();
        assert_eq!(server.max_connections, defaults.max_connections);
        assert_eq!(
            server.max_connections_per_ip,
            defaults.max_connections_per_ip
        );
        assert_eq!(server.idle_timeout, defaults.idle_timeout);
        assert_eq!(server.drain_timeout, defaults.drain_timeout);
        assert_eq!(server.when_full, defaults.when_full);
        assert_eq!(args.addrs, [DEFAULT_ADDR]);
    }
}
