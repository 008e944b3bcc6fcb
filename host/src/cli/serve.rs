//! `hotsock serve`: its options and config file, turned into the runtime's
//! and the server's settings; the start-up order; reloads; and the signals.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use hotsock::runtime::{
    self, ConnectGrant, DEFAULT_CPU_BUDGET, DEFAULT_MAX_BUCKET_BYTES, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_MEMORY, DEFAULT_RECORD_MAX_BYTES, DEFAULT_ROOM_BACKLOG, Preopen, Runtime,
    read_component,
};
use hotsock::server::admin::{self, DEFAULT_MAX_UPLOAD, Token};
use hotsock::server::http::{self, Endpoint};
use hotsock::server::upgrade::{Invocation, Upgrading};
use hotsock::server::{
    self, ADMIN_LISTENING, ADMIN_SOCKET, Capacity, DEFAULT_DRAIN_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    HealthRoutes, Inherited, LISTENING, Listener, METRICS_LISTENING, METRICS_SOCKET, Metrics,
    Registry, Reloader, Server, Setup, Source, WhenFull, notify,
};
use hotsock::sys;
use hotsock::units::{Size, parse_duration};
use ipnet::IpNet;
use log::{info, warn};

use crate::cli::args::{
    CacheArgs, DEFAULT_ADDR, parse_bucket_name, parse_cidr, parse_env, parse_read_only_dir,
    parse_writable_dir,
};
use crate::cli::config::{Overrides, Plan};
use crate::cli::logging::{self, LogFormat};
use crate::cli::reloads::Reloads;
use crate::cli::signals::{self, Upgrader};

/// Options of `hotsock serve`.
#[derive(Debug, Args)]
#[command(after_help = "\
Log verbosity follows RUST_LOG (default: info), e.g. RUST_LOG=warn.
SIGINT or SIGTERM stops accepting and lets open connections finish; a second one exits at once.
SIGHUP reloads HANDLER from its path, or re-reads --config; open connections finish on the version they started with.
SIGUSR2 upgrades the binary: the hotsock now at this one's path starts with the same options, the
listening sockets and each listener's current handler; once it serves, this process stops accepting,
lets its open connections finish and exits. If the new one fails to start, this one keeps serving.
Sockets passed in by systemd (LISTEN_FDS, LISTEN_FDNAMES) replace --addr: matched to listeners by
name, `admin` and `metrics` to those. With NOTIFY_SOCKET set, systemd hears READY=1 and STOPPING=1.")]
pub struct ServeArgs {
    /// The handler component (.wasm) that serves each connection, built for
    /// wasm32-wasip2 against wit/plugin.wit. Not needed with a --config that
    /// names handlers.
    #[arg(value_name = "HANDLER", required_unless_present = "config")]
    pub handler: Option<PathBuf>,

    /// Read settings from this TOML file: a key for every option here, of
    /// the same name (`max-connections = 100`), and `[[listener]]` tables to
    /// serve several ports with different handlers. Options given here win
    /// over the file. SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on, as IP:PORT or HOST:PORT. Repeat the option to
    /// listen on several addresses; port 0 picks a free port. Each bound address
    /// is printed on stdout as `listening on IP:PORT`.
    #[arg(long = "addr", value_name = "ADDR", default_value = DEFAULT_ADDR)]
    pub addrs: Vec<String>,

    /// After SIGINT or SIGTERM, how long open connections may run on before
    /// hotsock exits anyway (e.g. 500ms, 10s, 2m).
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_DRAIN_TIMEOUT.into(), value_parser = parse_duration)]
    pub drain_timeout: humantime::Duration,

    /// Serve Prometheus metrics (GET /metrics), /healthz and /readyz on this
    /// address: read-only, without authentication. Printed on stdout as
    /// `metrics listening on IP:PORT`.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<SocketAddr>,

    /// After SIGINT or SIGTERM, keep accepting this long while /readyz
    /// answers 503, so that load balancers stop sending before the
    /// listeners close (e.g. 5s; longer than their health-check interval).
    #[arg(long, value_name = "DURATION", default_value_t = Duration::ZERO.into(), value_parser = parse_duration)]
    pub stop_delay: humantime::Duration,

    /// How log lines are written: `text` for people, `json` (one object per
    /// line, a connection's lines with `conn`, `peer`, `listener` and
    /// `version` fields) for log shippers.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

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
    #[arg(long, value_name = "FILE", help_heading = "Admin API")]
    pub admin_token_file: Option<PathBuf>,

    /// Let --admin IP:PORT be other than a loopback address. The token
    /// then travels over the network in the clear: put it behind TLS.
    #[arg(long, help_heading = "Admin API")]
    pub admin_allow_remote: bool,

    /// Largest component `POST /handler` accepts; a larger body is refused
    /// before it is read.
    #[arg(long, value_name = "SIZE", default_value_t = Size(DEFAULT_MAX_UPLOAD), help_heading = "Admin API")]
    pub admin_max_upload: Size,

    /// After a swap, close connections still on the replaced version once
    /// this much time has passed (e.g. 30s). Off by default: they run until
    /// they finish.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_deadline: Option<humantime::Duration>,

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
    pub cpu_budget: humantime::Duration,

    /// Longest a read waits for the client to send something, or a write for
    /// it to take data; then the handler gets `timed-out`.
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_IDLE_TIMEOUT.into(), value_parser = parse_duration, help_heading = "Limits")]
    pub idle_timeout: humantime::Duration,

    /// Longest a connection may stay open, however active (off by default).
    /// Stops clients that trickle a byte now and then from holding a
    /// connection forever.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Limits")]
    pub max_connection_time: Option<humantime::Duration>,

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

    /// Expect a PROXY protocol header (v1 or v2, as HAProxy's send-proxy
    /// and send-proxy-v2 send) at the start of every connection, from a
    /// load balancer in front: the handler's peer-addr(), the logs and
    /// --max-connections-per-ip then see the real client. A connection
    /// without a valid header within 3s is closed and logged.
    #[arg(long, help_heading = "Load balancing")]
    pub proxy_protocol: bool,

    /// Accept PROXY headers only from this address range (e.g. 10.0.0.0/8,
    /// or one address); connections from anywhere else are closed.
    /// Repeatable. [default: 127.0.0.0/8 and ::1, a balancer on this machine]
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr, requires = "proxy_protocol", help_heading = "Load balancing")]
    pub proxy_from: Vec<IpNet>,

    /// Let several hotsock processes listen on the same addresses
    /// (SO_REUSEPORT): the kernel spreads new connections over them. Every
    /// process sharing a port needs it, and must run as the same user.
    #[arg(long, help_heading = "Load balancing")]
    pub reuse_port: bool,

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

    /// Let handlers open the key-value bucket NAME (`wasi:keyvalue`): one per
    /// process, shared by every connection and handler version, kept across
    /// swaps, in memory. Repeatable. Opening any other is `access-denied`.
    #[arg(long = "keyvalue", value_name = "NAME", value_parser = parse_bucket_name, help_heading = "Capabilities")]
    pub keyvalue: Vec<String>,

    /// Most bytes (keys plus values) each key-value bucket may hold; a `set`
    /// or `increment` past it fails with an error saying so.
    #[arg(long, value_name = "SIZE", default_value_t = Size(DEFAULT_MAX_BUCKET_BYTES), help_heading = "Capabilities")]
    pub keyvalue_max_bytes: Size,

    /// Let handlers open TCP connections to HOST:PORT (WASI sockets, e.g.
    /// Rust's TcpStream::connect): HOST an IP address, a CIDR range or a
    /// name (resolved at start and on reload), PORT a number or `*`.
    /// Repeatable. Everything else (other destinations, binding, listening,
    /// UDP) is denied, and each denied attempt is logged.
    #[arg(
        long = "allow-connect",
        value_name = "HOST:PORT",
        help_heading = "Capabilities"
    )]
    pub allow_connect: Vec<ConnectGrant>,

    /// Record every connection to a transcript file in DIR (made if missing,
    /// private to this user): what the client sent, what the handler wrote,
    /// and the clock readings and random bytes it got, so that `hotsock test`
    /// can replay it. It keeps what clients send: mind their privacy.
    #[arg(long, value_name = "DIR", help_heading = "Recording")]
    pub record: Option<PathBuf>,

    /// Most bytes kept in one connection's transcript; the rest of the
    /// connection is not recorded, and the transcript says so.
    #[arg(long, value_name = "SIZE", default_value_t = Size(DEFAULT_RECORD_MAX_BYTES), help_heading = "Recording")]
    pub record_max_bytes: Size,

    /// Most bytes of room messages waiting for one member's client before
    /// it is disconnected: publishing never waits for a slow reader.
    #[arg(long, value_name = "SIZE", default_value_t = Size(DEFAULT_ROOM_BACKLOG), help_heading = "Limits")]
    pub room_backlog: Size,

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
    /// What was given on the command line (not left at its default), which
    /// wins over the config file.
    fn overrides(&self, matches: &ArgMatches) -> Overrides {
        let given = |id: &str| {
            matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        let when = |id: &str| given(id).then_some(());
        let dirs = (given("dirs") || given("dirs_rw"))
            .then(|| self.dirs.iter().chain(&self.dirs_rw).cloned().collect());
        Overrides {
            handler: self.handler.clone(),
            addrs: when("addrs").map(|()| self.addrs.clone()),
            drain_timeout: when("drain_timeout").map(|()| *self.drain_timeout),
            stop_delay: when("stop_delay").map(|()| *self.stop_delay),
            watch: when("watch").map(|()| self.watch),
            admin: self.admin.clone(),
            admin_token_file: self.admin_token_file.clone(),
            admin_allow_remote: when("admin_allow_remote").map(|()| self.admin_allow_remote),
            admin_max_upload: when("admin_max_upload").map(|()| self.admin_max_upload.0),
            metrics: self.metrics,
            log_format: when("log_format").map(|()| self.log_format),
            drain_deadline: self.drain_deadline.map(|d| *d),
            rollback_on_traps: self.rollback_on_traps,
            max_memory: when("max_memory").map(|()| self.max_memory.0),
            cpu_budget: when("cpu_budget").map(|()| *self.cpu_budget),
            idle_timeout: when("idle_timeout").map(|()| *self.idle_timeout),
            max_connection_time: self.max_connection_time.map(|d| *d),
            max_connections: when("max_connections").map(|()| self.max_connections),
            max_connections_per_ip: self.max_connections_per_ip,
            when_full: when("when_full").map(|()| self.when_full.into()),
            proxy_protocol: when("proxy_protocol").map(|()| self.proxy_protocol),
            proxy_from: given("proxy_from").then(|| self.proxy_from.clone()),
            reuse_port: when("reuse_port").map(|()| self.reuse_port),
            env: given("env").then(|| self.env.clone()),
            dirs,
            keyvalue: given("keyvalue").then(|| self.keyvalue.clone()),
            keyvalue_max_bytes: when("keyvalue_max_bytes").map(|()| self.keyvalue_max_bytes.0),
            allow_connect: given("allow_connect").then(|| self.allow_connect.clone()),
            room_backlog: when("room_backlog").map(|()| self.room_backlog.0),
            record: self.record.clone(),
            record_max_bytes: when("record_max_bytes").map(|()| self.record_max_bytes.0),
            cache_dir: match (self.cache.no_cache, &self.cache.cache_dir) {
                (true, _) => Some(None),
                (false, Some(dir)) if given("cache_dir") => Some(Some(dir.clone())),
                _ => None,
            },
        }
    }
}

/// Serves until SIGINT or SIGTERM, then drains; or, after SIGUSR2, until
/// the upgraded binary serves, then drains.
pub fn run(args: ServeArgs, matches: &ArgMatches) -> Result<()> {
    // Where this binary is, read before anything could replace it.
    let invocation = Invocation::current();
    let overrides = args.overrides(matches);
    let default_cache = CacheArgs::default_dir();
    let plan = Plan::new(args.config.as_deref(), &overrides, default_cache.clone())?;
    logging::init(plan.log_format);
    // What a process being upgraded, or systemd, handed this one.
    let mut upgrading = Upgrading::from_env()?;
    let mut inherited = Inherited::from_env(upgrading.as_ref().map(Upgrading::parent))?;
    if let Some(upgrading) = &upgrading {
        info!("upgrade: taking over from process {}", upgrading.parent());
    }
    if let Err(e) = sys::raise_open_file_limit() {
        warn!("cannot raise the open file limit: {e}");
    }
    // Everything the listeners need of the machine is checked before anything
    // listens: files and threads here, address space by the runtime, memory
    // mappings with each handler.
    let capacity = Arc::new(Capacity::check(plan.total_connections())?);
    runtime::compile_in_background();
    let runtime = Arc::new(Runtime::new(runtime::Settings {
        max_instances: plan.total_connections(),
        max_memory: plan.max_memory(),
        cache_dir: plan.cache_dir.clone(),
        keyvalue_max_bytes: plan.keyvalue_max_bytes,
    })?);
    // Every handler is validated before anything binds, so a bad file fails
    // fast and a script never sees `listening on` for a server that cannot serve.
    let mut registries = Vec::new();
    for listener in &plan.listeners {
        let named = |e: anyhow::Error| match plan.named {
            true => e.context(format!("listener {}", listener.name)),
            false => e,
        };
        // After an upgrade, each listener starts on the handler it served in
        // the old process, which a swap may have changed since its file.
        let handed = upgrading
            .as_mut()
            .and_then(|u| u.take_handler(&listener.name));
        let (source, bytes) = match handed {
            Some(handed) => handed,
            None => (
                listener.handler.display().to_string(),
                read_component(&listener.handler).map_err(|e| named(e.into()))?,
            ),
        };
        let setup = Setup {
            name: listener.name.clone(),
            runtime: Arc::clone(&runtime),
            profile: listener.profile.clone(),
            policy: listener.policy.clone(),
            capacity: Some(Arc::clone(&capacity)),
            max_connections: listener.rules.max_connections,
        };
        let registry = Registry::new(setup, source, &bytes).map_err(named)?;
        registries.push(Arc::new(registry));
    }

    let mut announce = Vec::new();
    let mut listeners = Vec::new();
    // A copy of every listening socket, by name, for a binary upgrade.
    let mut handover = Vec::new();
    let only = plan.listeners.len() == 1;
    for (listener, registry) in plan.listeners.iter().zip(registries) {
        let mut sockets = inherited.take_listener(&listener.name, only)?;
        match (sockets.is_empty(), inherited.source()) {
            (true, _) => sockets = server::bind(&listener.addrs, listener.reuse_port)?,
            (false, source) => info!(
                "listener {}: {} socket(s) from {}, instead of binding {}",
                listener.name,
                sockets.len(),
                source.map_or_else(String::new, |s| s.to_string()),
                listener.addrs.join(", ")
            ),
        }
        for socket in &sockets {
            let addr = socket.local_addr()?;
            announce.push(match plan.named {
                true => format!("{LISTENING}{addr} (listener {})", listener.name),
                false => format!("{LISTENING}{addr}"),
            });
            handover.push((listener.name.clone(), socket.as_fd().try_clone_to_owned()?));
        }
        listeners.push(Listener {
            name: listener.name.clone(),
            sockets,
            registry,
            rules: listener.rules.clone(),
        });
    }
    let inherited_admin = inherited.take_http(ADMIN_SOCKET)?;
    // A socket systemd passed in is systemd's, file and all.
    let leave_file = inherited_admin.is_some() && inherited.source() == Some(Source::Activation);
    let mut admin = match (&plan.admin, inherited_admin) {
        (Some(options), inherited) => Some(admin::bind(
            admin::Options {
                endpoint: options.endpoint.clone(),
                token: options.token_file.as_deref().map(Token::read).transpose()?,
                allow_remote: options.allow_remote,
                max_upload: options.max_upload,
            },
            inherited,
        )?),
        (None, Some(_)) => {
            bail!("an `{ADMIN_SOCKET}` socket was passed in, but the admin API is off: set --admin")
        }
        (None, None) => None,
    };
    if let Some(admin) = admin.as_mut().filter(|_| leave_file) {
        admin.leave_file();
    }
    let metrics = match (plan.metrics, inherited.take_http(METRICS_SOCKET)?) {
        (_, Some(inherited)) => Some(inherited),
        (Some(addr), None) => Some(http::bind(&Endpoint::Tcp(addr), "--metrics")?.0),
        (None, None) => None,
    };
    let names: Vec<&str> = plan.listeners.iter().map(|l| l.name.as_str()).collect();
    inherited.finish(&names)?;
    if let Some(admin) = &admin {
        announce.push(format!("{ADMIN_LISTENING}{}", admin.endpoint()?));
        handover.push((ADMIN_SOCKET.into(), admin.as_fd().try_clone_to_owned()?));
    }
    if let Some(listener) = &metrics {
        announce.push(format!("{METRICS_LISTENING}{}", listener.endpoint()?));
        handover.push((
            METRICS_SOCKET.into(),
            listener.as_fd().try_clone_to_owned()?,
        ));
    }

    let settings = server::Settings {
        stop_delay: plan.stop_delay,
        drain_timeout: plan.drain_timeout,
    };
    let server = Server::new(listeners, settings)?;
    let services = server.services();
    let reloads = Arc::new(Reloads::new(
        &plan,
        overrides,
        default_cache,
        services.clone(),
    ));
    let reloader = {
        let (on_signal, on_change) = (Arc::clone(&reloads), Arc::clone(&reloads));
        Reloader::spawn(
            move || on_signal.signal(),
            move |i| on_change.file_changed(i),
        )?
    };
    // Kept alive for as long as the server runs: dropping one ends its watch.
    let mut _watchers = Vec::new();
    for (index, listener) in plan.listeners.iter().enumerate() {
        if listener.watch {
            _watchers.push(reloader.watch(index, &listener.handler)?);
        }
    }
    let mut closers = Vec::new();
    // Held until the server has drained: dropping it removes the socket file.
    let mut admin_socket = None;
    if let Some(admin) = admin {
        let running = admin::spawn(admin, services.clone())?;
        closers.push(running.closer);
        admin_socket = running.file;
    }
    if let Some(listener) = metrics {
        let metrics = Metrics::new(Arc::clone(&runtime), services.clone());
        let routes = HealthRoutes::new(metrics, server.stopper());
        closers.push(http::serve(listener, "metrics", Arc::new(routes))?);
    }
    let upgrader = Arc::new(Upgrader::new(
        invocation,
        handover,
        services.clone(),
        server.stopper(),
        closers,
    ));
    signals::handle(server.stopper(), reloader, upgrader)?;

    for (listener, service) in plan.listeners.iter().zip(&services) {
        let on = match plan.named {
            true => format!(" on listener {}", listener.name),
            false => String::new(),
        };
        let version = service.registry().current();
        info!(
            "serving handler {} as {}{on}",
            version.source(),
            version.id()
        );
    }
    let mut stdout = std::io::stdout().lock();
    for line in announce {
        writeln!(stdout, "{line}")?;
    }
    // Scripts wait for these lines before connecting; do not leave them in a buffer.
    stdout.flush()?;
    drop(stdout);
    match &mut upgrading {
        // The old process stops accepting once it hears this: every socket
        // is served here from now on.
        Some(upgrading) => {
            if let Err(e) = upgrading.report_ready() {
                warn!(
                    "upgrade: cannot tell process {} that this one is ready: {e}",
                    upgrading.parent()
                );
            }
        }
        None => notify("READY=1"),
    }
    let stopper = server.stopper();
    let served = server.run();
    if stopper.is_handed_over()
        && let Some(file) = admin_socket.take()
    {
        // The new process serves the admin socket from the same file.
        file.keep();
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::{CommandFactory as _, FromArgMatches as _};

    fn plan(args: &[&str]) -> Plan {
        let matches = Cli::command().get_matches_from(args);
        let Command::Serve(serve) = Cli::from_arg_matches(&matches).unwrap().command else {
            panic!("not serve");
        };
        let matches = matches.subcommand_matches("serve").unwrap();
        Plan::new(None, &serve.overrides(matches), None).unwrap()
    }

    #[test]
    fn the_defaults_are_the_librarys_defaults() {
        let plan = plan(&["hotsock", "serve", "h.wasm"]);
        let [listener] = &plan.listeners[..] else {
            panic!("{plan:?}");
        };
        assert_eq!(listener.name, server::DEFAULT_LISTENER);
        assert_eq!(listener.addrs, [DEFAULT_ADDR]);
        assert_eq!(listener.profile.limits.max_memory, DEFAULT_MAX_MEMORY);
        assert_eq!(listener.profile.limits.cpu_budget, DEFAULT_CPU_BUDGET);
        assert_eq!(listener.rules, server::Rules::default());
        assert_eq!(plan.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(plan.log_format, LogFormat::Text);
        assert!(!plan.named);
    }

    #[test]
    fn options_given_reach_the_plan() {
        let plan = plan(&[
            "hotsock",
            "serve",
            "h.wasm",
            "--max-connections",
            "7",
            "--cpu-budget",
            "250ms",
            "--when-full",
            "close",
            "--env",
            "A=b",
        ]);
        let listener = &plan.listeners[0];
        assert_eq!(listener.rules.max_connections, 7);
        assert_eq!(listener.rules.when_full, WhenFull::Close);
        assert_eq!(
            listener.profile.limits.cpu_budget,
            Duration::from_millis(250)
        );
        assert_eq!(
            listener.profile.capabilities.env,
            [("A".into(), "b".into())]
        );
        let _ = (
            DEFAULT_IDLE_TIMEOUT,
            DEFAULT_MAX_CONNECTIONS,
            DEFAULT_MAX_UPLOAD,
        );
    }
}
