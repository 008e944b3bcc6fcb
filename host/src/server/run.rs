//! A whole server, as a library: its [`Config`], [`Server::start`] (every
//! handler checked, then every socket bound or taken over), [`Server::run`]
//! until stopped, and [`Control`], which reconfigures it while it serves
//! (what SIGHUP does) and upgrades it (SIGUSR2). The binary parses options
//! and files into a [`Config`] and calls this; tests can run it in process.

use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, anyhow, bail};
use log::{info, warn};

use crate::runtime::{
    self, Bridge, Fleet, KeyValueStore, RoomsStore, Runtime, RuntimeConfig, Side, read_component,
};
use crate::server::accept::{self, ADMIN_LISTENING, Acceptor, Bound, Drain, LISTENING, Stopper};
use crate::server::admin;
use crate::server::capacity::Capacity;
use crate::server::http::{self, Endpoint, SocketFile};
use crate::server::inherited::{ADMIN_SOCKET, Inherited, METRICS_SOCKET, Source};
use crate::server::listener::{Listener, Reach};
use crate::server::metrics::{HealthRoutes, METRICS_LISTENING, Metrics};
use crate::server::notify::notify;
use crate::server::registry::{Component, Registry, Setup, Swapped};
use crate::server::reload::reload_handler;
use crate::server::settings::ListenerSettings;
use crate::server::tls::{Tls, TlsSettings};
use crate::server::upgrade::{Continuity, Invocation, Upgrader, Upgrading};
use crate::sys;

/// Everything one server serves: what `hotsock serve` makes of its options
/// and config file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The listeners, each with its addresses, handler and settings.
    pub listeners: Vec<ListenerConfig>,
    /// Whether the listeners were named in a config file, so that each
    /// `listening on` line and log line says which it is.
    pub named: bool,
    /// How the server stops.
    pub drain: Drain,
    /// The admin API, if served.
    pub admin: Option<AdminConfig>,
    /// Where metrics, `/healthz` and `/readyz` are served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Where compiled handlers are cached, if anywhere.
    pub cache_dir: Option<PathBuf>,
    /// Most bytes in each key-value bucket: for the whole process.
    pub keyvalue_max_bytes: usize,
    /// Where key-value buckets live: for the whole process, fixed while it
    /// runs.
    pub keyvalue_store: KeyValueStore,
    /// Where rooms live: this process only, or a fleet's Redis; fixed while
    /// it runs.
    pub rooms_store: RoomsStore,
}

/// One listener of a [`Config`].
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Its name, in log lines, metrics and the admin API.
    pub name: String,
    /// The addresses it listens on, as `IP:PORT` or `HOST:PORT`.
    pub addrs: Vec<String>,
    /// `SO_REUSEPORT` on its sockets: fixed once bound.
    pub reuse_port: bool,
    /// Its handler component's file.
    pub handler: PathBuf,
    /// Reload the handler whenever its file changes.
    pub watch: bool,
    /// What its connections run under; `tls` there is filled from the
    /// field below by [`ListenerConfig::load_settings`].
    pub settings: ListenerSettings,
    /// Its TLS certificates and choices, if it speaks TLS (`--tls-cert`).
    pub tls: Option<TlsSettings>,
}

impl ListenerConfig {
    /// Its settings with the TLS certificates, keys and CAs read and
    /// checked now: what a start or a reload installs. A bad file is an
    /// error naming it; warnings (a certificate expiring soon) are logged.
    pub fn load_settings(&self) -> Result<ListenerSettings> {
        let mut settings = self.settings.clone();
        settings.tls = match &self.tls {
            None => None,
            Some(tls) => {
                let (tls, warnings) = Tls::load(tls).map_err(anyhow::Error::msg)?;
                for warning in warnings {
                    warn!("listener {}: {warning}", self.name);
                }
                Some(Arc::new(tls))
            }
        };
        Ok(settings)
    }

    /// The files its TLS is read from, for `--watch`.
    pub fn tls_files(&self) -> Vec<PathBuf> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        let mut files = vec![tls.default.cert.clone(), tls.default.key.clone()];
        for entry in &tls.sni {
            files.push(entry.files.cert.clone());
            files.push(entry.files.key.clone());
        }
        files.extend(tls.client_ca.clone());
        files
    }
}

/// The admin API of a [`Config`].
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where it listens.
    pub endpoint: Endpoint,
    /// The file holding the token every request must carry.
    pub token_file: Option<PathBuf>,
    /// Let a TCP address be other than loopback.
    pub allow_remote: bool,
    /// Largest body `POST /handler` accepts.
    pub max_upload: usize,
}

impl Config {
    /// Connections on all listeners at once.
    pub fn total_connections(&self) -> u32 {
        self.listeners
            .iter()
            .map(|l| l.settings.rules.max_connections)
            .fold(0, u32::saturating_add)
    }

    /// The most linear memory any listener's instances may have.
    pub fn max_memory(&self) -> usize {
        self.listeners
            .iter()
            .map(|l| l.settings.profile.limits.max_memory)
            .max()
            .unwrap_or(runtime::DEFAULT_MAX_MEMORY)
    }

    /// What a reload cannot change, as text to compare.
    fn fixed(&self) -> String {
        let admin = self.admin.as_ref().map(|a| {
            let endpoint = a.endpoint.to_string();
            (endpoint, &a.token_file, a.allow_remote, a.max_upload)
        });
        format!(
            "{admin:?} {:?} {:?} {:?} {:?}",
            self.metrics, self.drain, self.cache_dir, self.keyvalue_max_bytes
        )
    }

    /// Each listener's name, addresses and `reuse_port`: what cannot change
    /// while serving.
    fn layout(&self) -> Vec<(String, Vec<String>, bool)> {
        let listeners = self.listeners.iter();
        listeners
            .map(|l| (l.name.clone(), l.addrs.clone(), l.reuse_port))
            .collect()
    }
}

/// What another process hands this one at start: listening sockets (from
/// systemd or the process an upgrade replaces) and, after an upgrade, the
/// handler each listener served there.
pub struct Takeover {
    /// Sockets passed in.
    pub inherited: Inherited,
    /// The upgrade under way, if this process replaces another.
    pub upgrading: Option<Upgrading>,
    /// How this binary was started, for upgrading it in turn (SIGUSR2).
    pub invocation: Result<Invocation>,
}

impl Takeover {
    /// Nothing handed over: bind every address, and upgrade by starting the
    /// current executable with the current arguments.
    pub fn none() -> Self {
        Takeover {
            inherited: Inherited::none(),
            upgrading: None,
            invocation: Invocation::current(),
        }
    }

    /// What the environment says was handed over (`LISTEN_FDS`, an upgrade).
    pub fn from_env() -> Result<Self> {
        // Where this binary is, read before anything could replace it.
        let invocation = Invocation::current();
        let upgrading = Upgrading::from_env()?;
        let inherited = Inherited::from_env(upgrading.as_ref().map(Upgrading::parent))?;
        Ok(Takeover {
            inherited,
            upgrading,
            invocation,
        })
    }
}

/// A server whose handlers are checked and whose sockets are bound, ready to
/// [`run`](Server::run).
pub struct Server {
    acceptor: Acceptor,
    control: Arc<Control>,
    announce: Vec<String>,
    upgrading: Option<Upgrading>,
    /// The admin socket's file, removed when the server has drained.
    admin_socket: Option<SocketFile>,
    /// The fleet its rooms span, left when it has drained.
    fleet: Option<Arc<Fleet>>,
}

/// Reconfigures, reloads and upgrades a running [`Server`]; shared with the
/// threads that do so (signals, the reload thread).
pub struct Control {
    listeners: Vec<Arc<Listener>>,
    runtime: Arc<Runtime>,
    /// What the last applied config said: what a reload compares with.
    config: Mutex<Config>,
    upgrader: Arc<Upgrader>,
    stopper: Stopper,
}

impl Server {
    /// Checks every handler, then binds every address (or takes the sockets
    /// handed over), the admin API and metrics. Nothing is accepted until
    /// [`Server::run`]; a bad handler fails before anything listens.
    pub fn start(config: Config, takeover: Takeover) -> Result<Server> {
        let Takeover {
            mut inherited,
            mut upgrading,
            invocation,
        } = takeover;
        if let Some(upgrading) = &upgrading {
            info!("upgrade: taking over from process {}", upgrading.parent());
        }
        if let Err(e) = sys::raise_open_file_limit() {
            warn!("cannot raise the open file limit: {e}");
        }
        // Everything the listeners need of the machine is checked before
        // anything listens: files and threads here, address space by the
        // runtime, memory mappings with each handler.
        let capacity = Arc::new(Capacity::check(config.total_connections())?);
        runtime::compile_in_background();
        let runtime = Arc::new(Runtime::new(RuntimeConfig {
            max_instances: config.total_connections(),
            max_memory: config.max_memory(),
            cache_dir: config.cache_dir.clone(),
            keyvalue_max_bytes: config.keyvalue_max_bytes,
            keyvalue_store: config.keyvalue_store.clone(),
        })?);
        // Every handler is validated before anything binds, so a bad file
        // fails fast and a script never sees `listening on` for a server
        // that cannot serve.
        let mut registries = Vec::new();
        for listener in &config.listeners {
            let named = |e: anyhow::Error| match config.named {
                true => e.context(format!("listener {}", listener.name)),
                false => e,
            };
            // After an upgrade, each listener starts on the handler it served
            // in the old process, which a swap may have changed since its file.
            let handed = upgrading
                .as_mut()
                .and_then(|u| u.take_handler(&listener.name));
            let setup = Setup {
                name: listener.name.clone(),
                runtime: Arc::clone(&runtime),
                settings: listener.load_settings().map_err(named)?,
                capacity: Some(Arc::clone(&capacity)),
            };
            let registry = match handed {
                Some(lineage) => Registry::resume(setup, lineage),
                None => {
                    let source = listener.handler.display().to_string();
                    let bytes = read_component(&listener.handler).map_err(|e| named(e.into()))?;
                    Registry::new(setup, source, &bytes)
                }
            };
            registries.push(Arc::new(registry.map_err(named)?));
        }

        let grants = |l: &ListenerConfig| !l.settings.profile.capabilities.keyvalue.is_empty();
        if config.listeners.iter().any(grants) {
            info!("key-value store: {}", config.keyvalue_store);
        }
        // Before anything listens: a process that cannot take its part in
        // the fleet's rooms must not take clients. Local rooms span the
        // processes of an upgrade, over a bridge.
        let reach = match &config.rooms_store {
            RoomsStore::Local => Reach::Bridge(Bridge::new()),
            RoomsStore::Redis(url) => Reach::Fleet(Fleet::join(url).map_err(anyhow::Error::msg)?),
        };
        let fleet = match &reach {
            Reach::Fleet(fleet) => Some(Arc::clone(fleet)),
            Reach::Bridge(_) => None,
        };
        // Ids go on from the old process's; a fleet's carry the node.
        let first_id = match (&fleet, &upgrading) {
            (Some(fleet), _) => fleet.first_id(),
            (None, Some(upgrading)) => upgrading.first_id().unwrap_or(1),
            (None, None) => 1,
        };

        let mut announce = Vec::new();
        let mut bound = Vec::new();
        // A copy of every listening socket, by name, for a binary upgrade.
        let mut handover = Vec::new();
        let only = config.listeners.len() == 1;
        for (listener, registry) in config.listeners.iter().zip(registries) {
            let mut sockets = inherited.take_listener(&listener.name, only)?;
            match (sockets.is_empty(), inherited.source()) {
                (true, _) => sockets = accept::bind(&listener.addrs, listener.reuse_port)?,
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
                announce.push(match config.named {
                    true => format!("{LISTENING}{addr} (listener {})", listener.name),
                    false => format!("{LISTENING}{addr}"),
                });
                handover.push((listener.name.clone(), socket.as_fd().try_clone_to_owned()?));
            }
            bound.push(Bound { sockets, registry });
        }
        let inherited_admin = inherited.take_http(ADMIN_SOCKET)?;
        // A socket systemd passed in is systemd's, file and all.
        let leave_file =
            inherited_admin.is_some() && inherited.source() == Some(Source::Activation);
        let mut admin = match (&config.admin, inherited_admin) {
            (Some(options), inherited) => Some(admin::bind(
                admin::Options {
                    endpoint: options.endpoint.clone(),
                    token: options
                        .token_file
                        .as_deref()
                        .map(admin::Token::read)
                        .transpose()?,
                    allow_remote: options.allow_remote,
                    max_upload: options.max_upload,
                },
                inherited,
            )?),
            (None, Some(_)) => bail!(
                "an `{ADMIN_SOCKET}` socket was passed in, but the admin API is off: set --admin"
            ),
            (None, None) => None,
        };
        if let Some(admin) = admin.as_mut().filter(|_| leave_file) {
            admin.leave_file();
        }
        let metrics = match (config.metrics, inherited.take_http(METRICS_SOCKET)?) {
            (_, Some(inherited)) => Some(inherited),
            (Some(addr), None) => Some(http::bind(&Endpoint::Tcp(addr), "--metrics")?.0),
            (None, None) => None,
        };
        let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        inherited.finish(&names)?;
        if let Some(admin) = &admin {
            announce.push(format!("{ADMIN_LISTENING}{}", admin.endpoint()?));
            handover.push((ADMIN_SOCKET.into(), admin.as_fd().try_clone_to_owned()?));
        }
        if let Some(listener) = &metrics {
            announce.push(format!("{METRICS_LISTENING}{}", listener.endpoint()?));
            let fd = listener.as_fd().try_clone_to_owned()?;
            handover.push((METRICS_SOCKET.into(), fd));
        }

        let acceptor = Acceptor::new(bound, config.drain.clone(), &reach, first_id)?;
        let listeners = acceptor.listeners();
        match (&reach, upgrading.as_mut().and_then(Upgrading::take_rooms)) {
            (Reach::Fleet(fleet), _) => fleet.listen().map_err(anyhow::Error::msg)?,
            (Reach::Bridge(bridge), Some(socket)) => bridge
                .connect(Side::Older, socket)
                .context("cannot open the rooms bridge to the process this one replaces")?,
            (Reach::Bridge(_), None) => {}
        }
        let mut closers = Vec::new();
        let mut admin_socket = None;
        if let Some(admin) = admin {
            let running = admin::spawn(admin, listeners.clone())?;
            closers.push(running.closer);
            admin_socket = running.file;
        }
        let mut served_metrics = None;
        if let Some(listener) = metrics {
            let mut metrics = Metrics::new(Arc::clone(&runtime), listeners.clone(), fleet.clone());
            // Counters go on from the old process's, never backwards.
            if let Some(text) = upgrading.as_mut().and_then(Upgrading::take_metrics) {
                metrics.carry_on(&text);
            }
            let metrics = Arc::new(metrics);
            served_metrics = Some(Arc::clone(&metrics));
            let routes = HealthRoutes::new(metrics, acceptor.stopper());
            closers.push(http::serve(listener, "metrics", Arc::new(routes))?);
        }
        let bridge = match reach {
            Reach::Bridge(bridge) => Some(bridge),
            Reach::Fleet(_) => None,
        };
        let upgrader = Arc::new(Upgrader::new(
            invocation,
            handover,
            listeners.clone(),
            acceptor.stopper(),
            closers,
            Continuity {
                bridge,
                ids: acceptor.ids(),
                metrics: served_metrics,
            },
        ));
        for listener in &listeners {
            let on = match config.named {
                true => format!(" on listener {}", listener.name()),
                false => String::new(),
            };
            let version = listener.registry().current();
            info!(
                "serving handler {} as {}{on}",
                version.source(),
                version.id()
            );
        }
        let control = Arc::new(Control {
            listeners,
            runtime,
            config: Mutex::new(config),
            upgrader,
            stopper: acceptor.stopper(),
        });
        Ok(Server {
            acceptor,
            control,
            announce,
            upgrading,
            admin_socket,
            fleet,
        })
    }

    /// The lines that say where it listens (`listening on 127.0.0.1:50007`,
    /// `admin listening on ...`), for stdout: scripts wait for them.
    pub fn announcements(&self) -> &[String] {
        &self.announce
    }

    /// Reconfigures, reloads and upgrades it while it runs.
    pub fn control(&self) -> Arc<Control> {
        Arc::clone(&self.control)
    }

    /// A handle that makes [`Server::run`] stop accepting and drain.
    pub fn stopper(&self) -> Stopper {
        self.acceptor.stopper()
    }

    /// Tells the process this one replaces (if any) or else systemd (if it
    /// listens) that this one serves now, then accepts and serves clients
    /// until stopped, and drains.
    pub fn run(mut self) -> Result<()> {
        match &mut self.upgrading {
            // The old process stops accepting once it hears this: every
            // socket is served here from now on.
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
        let stopper = self.acceptor.stopper();
        let served = self.acceptor.run();
        // Every connection has left its rooms: the fleet hears of it at once,
        // not when this node's claim expires.
        if let Some(fleet) = self.fleet.take() {
            fleet.close();
        }
        if stopper.is_handed_over()
            && let Some(file) = self.admin_socket.take()
        {
            // The new process serves the admin socket from the same file.
            file.keep();
        }
        served
    }
}

impl Control {
    /// Every listener, as it serves.
    pub fn listeners(&self) -> &[Arc<Listener>] {
        &self.listeners
    }

    /// The runtime every listener's handlers run in.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// `why`, naming the listener when there are several.
    fn why(&self, index: usize, why: &str) -> String {
        match sys::lock(&self.config).named {
            true => format!("listener {}: {why}", self.listeners[index].name()),
            false => why.to_string(),
        }
    }

    /// Reloads listener `index`'s handler from its file, saying `why` in
    /// the log: what `--watch` does.
    pub fn reload_handler(&self, index: usize, why: &str) {
        let path = sys::lock(&self.config).listeners[index].handler.clone();
        reload_handler(
            self.listeners[index].registry(),
            &path,
            &self.why(index, why),
        );
    }

    /// Reloads every listener's TLS files, then its handler from its file:
    /// what SIGHUP does without a config file.
    pub fn reload(&self, why: &str) {
        for index in 0..self.listeners.len() {
            self.reload_tls(index, why);
            self.reload_handler(index, why);
        }
    }

    /// Re-reads listener `index`'s certificates, keys and CAs and, if all
    /// of them load and check, serves new connections with them; open
    /// connections keep their sessions. Otherwise nothing changes and one
    /// warning says why, naming the file: the old ones keep serving.
    pub fn reload_tls(&self, index: usize, why: &str) {
        let config = sys::lock(&self.config).listeners[index].clone();
        if config.tls.is_none() {
            return;
        }
        let why = self.why(index, why);
        let registry = self.listeners[index].registry();
        // The settings serving now, with only the certificates read again.
        let mut settings = (*registry.settings()).clone();
        let loaded = config.load_settings().and_then(|loaded| {
            settings.tls = loaded.tls;
            registry.stage(settings, None)
        });
        match loaded {
            Ok(staged) => {
                staged.commit();
                info!("{why}: TLS certificates re-read; new connections get them");
            }
            Err(e) => {
                warn!("{why}: TLS certificates not reloaded, the old ones keep serving: {e:#}")
            }
        }
    }

    /// Applies `next` to the running server, all of it or nothing: every
    /// listener's next snapshot (handler and settings) is built and checked
    /// first, every changed handler compiled, and only then is each
    /// installed, with one store per listener. What cannot change while
    /// serving (listeners and their addresses, `max-connections`) is an
    /// error; what applies only at start (admin, metrics, drain, cache) is
    /// a warning. Returns what changed, for the log.
    pub fn reconfigure(&self, next: Config) -> Result<String> {
        let current = sys::lock(&self.config).clone();
        if next.layout() != current.layout() {
            bail!(
                "listeners cannot be added, removed, renamed, moved to other addresses or have \
                 reuse-port changed while serving: restart the server (or upgrade it, SIGUSR2) \
                 for that"
            );
        }
        if next.rooms_store != current.rooms_store {
            bail!(
                "rooms-store cannot change from {} to {} while serving: restart to change it",
                current.rooms_store,
                next.rooms_store
            );
        }
        if next.keyvalue_store != current.keyvalue_store {
            bail!(
                "keyvalue-store cannot change from {} to {} while serving: restart to change it",
                current.keyvalue_store,
                next.keyvalue_store
            );
        }
        let mut staged = Vec::new();
        for (config, listener) in next.listeners.iter().zip(&self.listeners) {
            let name = &config.name;
            let bytes =
                read_component(&config.handler).map_err(|e| anyhow!("listener {name}: {e}"))?;
            let component = Component {
                source: config.handler.display().to_string(),
                bytes: bytes.into(),
            };
            let settings = config
                .load_settings()
                .with_context(|| format!("listener {name}"))?;
            let next = listener
                .registry()
                .stage(settings, Some(component))
                .with_context(|| format!("listener {name}"))?;
            staged.push(next);
        }
        let mut done = Vec::new();
        for ((config, listener), staged) in next.listeners.iter().zip(&self.listeners).zip(staged) {
            let now = match staged.commit() {
                Swapped::Replaced { new, old } => format!("{} -> {}", old.id(), new.id()),
                Swapped::Unchanged(current) => format!("{} unchanged", current.id()),
            };
            // Rooms are the listener's, not a connection's: the new backlog
            // applies to messages published from now on.
            listener
                .rooms()
                .set_backlog(config.settings.rules.room_backlog);
            done.push(format!("listener {}: {now}", config.name));
        }
        if next.fixed() != current.fixed() {
            warn!(
                "admin, metrics, drain-timeout, stop-delay, cache and keyvalue-max-bytes settings \
                 apply only at start: restart the server to change them"
            );
        }
        *sys::lock(&self.config) = next;
        Ok(format!(
            "{}; limits apply to new connections",
            done.join(", ")
        ))
    }

    /// Upgrades the binary on a thread of its own (SIGUSR2): the hotsock now
    /// at this one's path starts with the same arguments, the listening
    /// sockets and each listener's current handler; once it serves, this
    /// server stops accepting and drains.
    pub fn upgrade(&self) {
        Upgrader::spawn(&self.upgrader);
    }

    /// Stops accepting and drains (SIGINT, SIGTERM), dropping the copies of
    /// the sockets kept for an upgrade, which would hold new clients in a
    /// backlog nobody reads.
    pub fn stop(&self) {
        self.upgrader.release();
        self.stopper.stop();
    }
}
