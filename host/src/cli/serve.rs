//! `hotsock serve`: its options and config file, turned into the runtime's
//! and the server's settings; the start-up order; reloads; and the signals.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use hotsock::runtime::{
    self, DEFAULT_CPU_BUDGET, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MEMORY, Preopen, Runtime,
    read_component,
};
use hotsock::server::admin::{self, DEFAULT_MAX_UPLOAD, Token};
use hotsock::server::http::{self, Endpoint};
use hotsock::server::{
    self, ADMIN_LISTENING, Capacity, DEFAULT_DRAIN_TIMEOUT, DEFAULT_IDLE_TIMEOUT, HealthRoutes,
    LISTENING, Listener, METRICS_LISTENING, Metrics, Registry, Reloader, Server, Service, Setup,
    Stopper, Trigger, WhenFull, reload_handler,
};
use hotsock::sys;
use hotsock::units::{Size, parse_duration};
use log::{info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::args::{
    CacheArgs, DEFAULT_ADDR, parse_env, parse_read_only_dir, parse_writable_dir,
};
use crate::cli::config::{Overrides, Plan};
use crate::cli::logging::{self, LogFormat};

/// Options of `hotsock serve`.
#[derive(Debug, Args)]
#[command(after_help = "\
Log verbosity follows RUST_LOG (default: info), e.g. RUST_LOG=warn.
SIGINT or SIGTERM stops accepting and lets open connections finish; a second one exits at once.
SIGHUP reloads HANDLER from its path, or re-reads --config; open connections finish on the version they started with.")]
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
            env: given("env").then(|| self.env.clone()),
            dirs,
            cache_dir: match (self.cache.no_cache, &self.cache.cache_dir) {
                (true, _) => Some(None),
                (false, Some(dir)) if given("cache_dir") => Some(Some(dir.clone())),
                _ => None,
            },
        }
    }
}

/// Serves until SIGINT or SIGTERM, then drains.
pub fn run(args: ServeArgs, matches: &ArgMatches) -> Result<()> {
    let overrides = args.overrides(matches);
    let default_cache = CacheArgs::default_dir();
    let plan = Plan::new(args.config.as_deref(), &overrides, default_cache.clone())?;
    logging::init(plan.log_format);
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
    })?);
    // Every handler is validated before anything binds, so a bad file fails
    // fast and a script never sees `listening on` for a server that cannot serve.
    let mut registries = Vec::new();
    for listener in &plan.listeners {
        let named = |e: anyhow::Error| match plan.named {
            true => e.context(format!("listener {}", listener.name)),
            false => e,
        };
        let bytes = read_component(&listener.handler).map_err(|e| named(e.into()))?;
        let setup = Setup {
            name: listener.name.clone(),
            runtime: Arc::clone(&runtime),
            profile: listener.profile.clone(),
            policy: listener.policy.clone(),
            capacity: Some(Arc::clone(&capacity)),
            max_connections: listener.rules.max_connections,
        };
        let source = listener.handler.display().to_string();
        let registry = Registry::new(setup, source, &bytes).map_err(named)?;
        registries.push(Arc::new(registry));
    }

    let mut announce = Vec::new();
    let mut listeners = Vec::new();
    for (listener, registry) in plan.listeners.iter().zip(registries) {
        let sockets = server::bind(&listener.addrs)?;
        for socket in &sockets {
            let addr = socket.local_addr()?;
            announce.push(match plan.named {
                true => format!("{LISTENING}{addr} (listener {})", listener.name),
                false => format!("{LISTENING}{addr}"),
            });
        }
        listeners.push(Listener {
            name: listener.name.clone(),
            sockets,
            registry,
            rules: listener.rules.clone(),
        });
    }
    let admin = match &plan.admin {
        Some(options) => Some(admin::bind(admin::Options {
            endpoint: options.endpoint.clone(),
            token: options.token_file.as_deref().map(Token::read).transpose()?,
            allow_remote: options.allow_remote,
            max_upload: options.max_upload,
        })?),
        None => None,
    };
    let metrics = match plan.metrics {
        Some(addr) => Some(http::bind(&Endpoint::Tcp(addr), "--metrics")?.0),
        None => None,
    };
    if let Some(admin) = &admin {
        announce.push(format!("{ADMIN_LISTENING}{}", admin.endpoint()?));
    }
    if let Some(listener) = &metrics {
        announce.push(format!("{METRICS_LISTENING}{}", listener.endpoint()?));
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
    handle_signals(server.stopper(), reloader)?;
    // Held until the server has drained: dropping it removes the socket file.
    let _admin_socket = match admin {
        Some(admin) => admin::spawn(admin, services.clone())?,
        None => None,
    };
    if let Some(listener) = metrics {
        let metrics = Metrics::new(Arc::clone(&runtime), services.clone());
        let routes = HealthRoutes::new(metrics, server.stopper());
        http::serve(listener, "metrics", Arc::new(routes))?;
    }

    for (listener, service) in plan.listeners.iter().zip(&services) {
        let on = match plan.named {
            true => format!(" on listener {}", listener.name),
            false => String::new(),
        };
        info!(
            "serving handler {} as {}{on}",
            listener.handler.display(),
            service.registry().current().id()
        );
    }
    let mut stdout = std::io::stdout().lock();
    for line in announce {
        writeln!(stdout, "{line}")?;
    }
    // Scripts wait for these lines before connecting; do not leave them in a buffer.
    stdout.flush()?;
    drop(stdout);
    server.run()
}

/// What SIGHUP and `--watch` do: swap handlers in from their files, or
/// re-read the config file and apply it, all of it or nothing.
struct Reloads {
    config: Option<PathBuf>,
    overrides: Overrides,
    default_cache: Option<PathBuf>,
    services: Vec<Arc<Service>>,
    /// Each listener's handler file, as the config last said.
    handlers: Mutex<Vec<PathBuf>>,
    /// Each listener's name and addresses, which cannot change while serving.
    layout: Vec<(String, Vec<String>)>,
    /// What else cannot change while serving, to warn when it does.
    fixed: String,
    named: bool,
}

impl Reloads {
    fn new(
        plan: &Plan,
        overrides: Overrides,
        default_cache: Option<PathBuf>,
        services: Vec<Arc<Service>>,
    ) -> Self {
        Reloads {
            config: plan.config.clone(),
            overrides,
            default_cache,
            services,
            handlers: Mutex::new(plan.listeners.iter().map(|l| l.handler.clone()).collect()),
            layout: plan
                .listeners
                .iter()
                .map(|l| (l.name.clone(), l.addrs.clone()))
                .collect(),
            fixed: fixed(plan),
            named: plan.named,
        }
    }

    /// `why`, naming the listener when there are several.
    fn why(&self, index: usize, why: &str) -> String {
        match self.named {
            true => format!("listener {}: {why}", self.services[index].name()),
            false => why.to_string(),
        }
    }

    /// SIGHUP.
    fn signal(&self) {
        let Some(config) = &self.config else {
            let handlers = sys::lock(&self.handlers).clone();
            for (index, (service, path)) in self.services.iter().zip(&handlers).enumerate() {
                reload_handler(service.registry(), path, &self.why(index, "SIGHUP"));
            }
            return;
        };
        let shown = config.display();
        let plan = Plan::new(Some(config), &self.overrides, self.default_cache.clone());
        match plan.and_then(|plan| self.apply(&plan)) {
            Ok(done) => info!("SIGHUP: re-read {shown}: {done}"),
            Err(e) => warn!("SIGHUP: {shown} not applied, nothing changed: {e:#}"),
        }
    }

    /// `--watch` saw listener `index`'s handler file change.
    fn file_changed(&self, index: usize) {
        let path = sys::lock(&self.handlers)[index].clone();
        reload_handler(
            self.services[index].registry(),
            &path,
            &self.why(index, "--watch"),
        );
    }

    /// Applies a re-read config: every change is checked (and every changed
    /// handler compiled) before any is made.
    fn apply(&self, plan: &Plan) -> Result<String> {
        let layout: Vec<_> = plan
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.addrs.clone()))
            .collect();
        if layout != self.layout {
            bail!(
                "listeners cannot be added, removed, renamed or moved to other addresses while \
                 serving: restart the server for that"
            );
        }
        let mut prepared = Vec::new();
        for (listener, service) in plan.listeners.iter().zip(&self.services) {
            let name = &listener.name;
            let max = service.rules().max_connections;
            if listener.rules.max_connections != max {
                bail!(
                    "listener {name}: max-connections cannot change from {max} to {} while \
                     serving (it sized the instance pool): restart the server for that",
                    listener.rules.max_connections
                );
            }
            let registry = service.registry();
            registry
                .runtime()
                .admits(&listener.profile)
                .with_context(|| format!("listener {name}"))?;
            let bytes =
                read_component(&listener.handler).map_err(|e| anyhow!("listener {name}: {e}"))?;
            let source = listener.handler.display().to_string();
            let handler = registry
                .prepare(&listener.profile, source, &bytes)
                .map_err(|e| anyhow!("listener {name}: swap rejected ({}): {e}", e.reason()))?;
            prepared.push(handler);
        }
        let mut done = Vec::new();
        for ((listener, service), handler) in
            plan.listeners.iter().zip(&self.services).zip(prepared)
        {
            let registry = service.registry();
            registry.set_profile(listener.profile.clone())?;
            registry.set_policy(listener.policy.clone());
            service.set_rules(listener.rules.clone())?;
            let now = match handler {
                Some(handler) => match registry.install(handler) {
                    server::Swapped::Replaced { new, old } => {
                        format!("{} -> {}", old.id(), new.id())
                    }
                    server::Swapped::Unchanged(current) => current.id().to_string(),
                },
                None => format!("{} unchanged", registry.current().id()),
            };
            done.push(format!("listener {}: {now}", listener.name));
        }
        *sys::lock(&self.handlers) = plan.listeners.iter().map(|l| l.handler.clone()).collect();
        if fixed(plan) != self.fixed {
            warn!(
                "SIGHUP: admin, metrics, log-format, drain-timeout, stop-delay and cache settings \
                 apply only at start: restart the server to change them"
            );
        }
        Ok(format!(
            "{}; limits apply to new connections",
            done.join(", ")
        ))
    }
}

/// The settings a reload cannot change, as text to compare.
fn fixed(plan: &Plan) -> String {
    let admin = plan.admin.as_ref().map(|a| {
        (
            a.endpoint.to_string(),
            a.token_file.clone(),
            a.allow_remote,
            a.max_upload,
        )
    });
    format!(
        "{admin:?} {:?} {:?} {:?} {:?} {:?}",
        plan.metrics, plan.log_format, plan.drain_timeout, plan.stop_delay, plan.cache_dir
    )
}

/// SIGHUP reloads. The first SIGINT or SIGTERM drains the server; a second
/// one exits at once, for an operator who does not want to wait.
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
                        info!("received SIGHUP: reloading");
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
