//! Every `hotsock serve` option, declared once: [`ServeOptions`] is the
//! command line (clap), the config file's top level and each `[[listener]]`
//! table (serde, kebab-case, unknown keys refused with their line), and is
//! merged field by field (command line > listener table > top level >
//! default) without naming a field. Each default is in its `#[arg]` only,
//! so `--help` shows it.
//!
//! Adding an option takes two edits: its field here, and where `config`
//! turns options into the server's settings. An option under one of the
//! [`PROCESS_WIDE`] headings is refused in a `[[listener]]` table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command, FromArgMatches as _};
use hotsock::runtime::{
    ConnectGrant, DEFAULT_CPU_BUDGET, DEFAULT_MAX_BUCKET_BYTES, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_MEMORY, DEFAULT_RECORD_MAX_BYTES, DEFAULT_ROOM_BACKLOG, KeyValueStore, Preopen,
    RoomsStore,
};
use hotsock::server::admin::DEFAULT_MAX_UPLOAD;
use hotsock::server::http::Endpoint;
use hotsock::server::{
    ClientAuth, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, WhenFull,
};
use hotsock::units::{Size, Span};
use ipnet::IpNet;
use merge::Merge;
use serde::{Deserialize, Deserializer};
use std::time::Duration;

use crate::cli::args::{
    DEFAULT_ADDR, parse_bucket_name, parse_cidr, parse_dir, parse_env, parse_read_only_dir,
    parse_writable_dir,
};
use crate::cli::logging::LogFormat;
use hotsock::runtime::CACHE_DIR_ENV;

/// The `--help` heading of options that set up the whole process.
const PROCESS: &str = "Process";
/// The `--help` heading of the admin API's options.
const ADMIN: &str = "Admin API";
/// The `--help` heading of the code cache's options.
const CACHE: &str = "Cache";
/// The `--help` heading of a listener's TLS options.
const TLS: &str = "TLS";

/// Headings whose options are the process's, not a listener's: a
/// `[[listener]]` table may not set them.
pub const PROCESS_WIDE: [&str; 3] = [PROCESS, ADMIN, CACHE];

/// Every option of `hotsock serve`, each `None` unless given. The same type
/// reads the command line, the config file's top level and its
/// `[[listener]]` tables.
#[derive(Debug, Default, Clone, Args, Deserialize, Merge)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[merge(strategy = merge::option::overwrite_none)]
pub struct ServeOptions {
    /// The handler component (.wasm) that serves each connection, built for
    /// wasm32-wasip2 against wit/plugin.wit. Not needed with a --config that
    /// names handlers.
    #[arg(value_name = "HANDLER", required_unless_present = "config")]
    pub handler: Option<PathBuf>,

    /// Address to listen on, as IP:PORT or HOST:PORT. Repeat the option to
    /// listen on several addresses; port 0 picks a free port. Each bound
    /// address is printed on stdout as `listening on IP:PORT`.
    #[arg(long = "addr", value_name = "ADDR", default_value = DEFAULT_ADDR)]
    #[serde(rename = "addr", default, deserialize_with = "strings")]
    pub addrs: Option<Vec<String>>,

    /// Reload HANDLER whenever its file changes (after it has been quiet for a
    /// moment, so a build writing it in steps is read once, whole).
    #[arg(long, action = ArgAction::SetTrue)]
    pub watch: Option<bool>,

    /// After a swap, close connections still on the replaced version once
    /// this much time has passed (e.g. 30s). Off by default: they run until
    /// they finish.
    #[arg(long, value_name = "DURATION")]
    pub drain_deadline: Option<Span>,

    /// Roll a newly swapped-in version back automatically if N of its first
    /// 100 connections end by the handler's own fault: a trap or panic, its
    /// memory, CPU or stack limit, a non-zero exit. Connections the idle
    /// timeout, the connection time limit or the drain deadline stop never
    /// count, nor does an error returned from `handle`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub rollback_on_traps: Option<u64>,

    /// After SIGINT or SIGTERM, how long open connections may run on before
    /// hotsock exits anyway (e.g. 500ms, 10s, 2m).
    #[arg(long, value_name = "DURATION", default_value = Span::from(DEFAULT_DRAIN_TIMEOUT).to_string(), help_heading = PROCESS)]
    pub drain_timeout: Option<Span>,

    /// After a binary upgrade (SIGUSR2) handed the sockets to the new
    /// process, how long the old one may serve its open connections before
    /// it exits anyway, closing them (e.g. 1h). Unset, it serves them until
    /// they end, so that an upgrade disconnects no long-lived client; a
    /// SIGTERM then drains them for --drain-timeout. [default: until they
    /// end]
    #[arg(long, value_name = "DURATION", help_heading = PROCESS)]
    pub upgrade_drain_timeout: Option<Span>,

    /// After SIGINT or SIGTERM, keep accepting this long while /readyz
    /// answers 503, so that load balancers stop sending before the
    /// listeners close (e.g. 5s; longer than their health-check interval).
    #[arg(long, value_name = "DURATION", default_value = Span::from(Duration::ZERO).to_string(), help_heading = PROCESS)]
    pub stop_delay: Option<Span>,

    /// Serve Prometheus metrics (GET /metrics), /healthz and /readyz on this
    /// address: read-only, without authentication. Printed on stdout as
    /// `metrics listening on IP:PORT`.
    #[arg(long, value_name = "IP:PORT", help_heading = PROCESS)]
    pub metrics: Option<SocketAddr>,

    /// How log lines are written: `text` for people, `json` (one object per
    /// line, a connection's lines with `conn`, `peer`, `listener` and
    /// `version` fields) for log shippers.
    #[arg(long, value_name = "FORMAT", value_enum, default_value = "text", help_heading = PROCESS)]
    pub log_format: Option<LogFormat>,

    /// Most bytes (keys plus values) each key-value bucket may hold; a `set`
    /// or `increment` past it fails with an error saying so.
    #[arg(long, value_name = "SIZE", default_value = Size(DEFAULT_MAX_BUCKET_BYTES).to_string(), help_heading = PROCESS)]
    pub keyvalue_max_bytes: Option<Size>,

    /// Where state that outlives the process is kept (the default key-value
    /// store's file), created private to this user if missing. Every process
    /// that should share that state (an upgrade's, --reuse-port pairs) uses
    /// the same one. [default: $STATE_DIRECTORY when systemd sets it, else
    /// .hotsock in the working directory]
    #[arg(long, value_name = "DIR", help_heading = PROCESS)]
    pub state_dir: Option<PathBuf>,

    /// Where key-value buckets live: `sqlite:PATH`, a SQLite file that keeps
    /// every acknowledged write across restarts, crashes and upgrades and is
    /// shared by the processes on this machine that open it;
    /// `redis://HOST:PORT[/DB]` or `unix:///PATH/TO/redis.sock`, a Redis 7
    /// (or Valkey) server shared by a fleet; or `memory:`, this process's
    /// memory, gone when it exits. Cannot change on SIGHUP.
    /// [default: sqlite:STATE_DIR/keyvalue.sqlite3]
    #[arg(long, value_name = "URL", help_heading = PROCESS)]
    pub keyvalue_store: Option<KeyValueStore>,

    /// Where rooms live: `local`, this process alone; or
    /// `redis://HOST:PORT[/DB]` or `unix:///PATH/TO/redis.sock`, a Redis 7
    /// (or Valkey) server through which every process naming it serves
    /// one set of rooms per listener name: messages reach members on every
    /// process, `members` lists them all, connection ids are unique across
    /// them. Redis must answer at start. Cannot change on SIGHUP.
    #[arg(long, value_name = "URL", default_value = "local", help_heading = PROCESS)]
    pub rooms_store: Option<RoomsStore>,

    /// Serve the admin API (status, swap, rollback over HTTP) on a Unix
    /// socket at this path (recommended: created private to this user,
    /// removed on exit), or on IP:PORT with --admin-token-file. Off by
    /// default. Printed on stdout as `admin listening on PATH|IP:PORT`.
    #[arg(long, value_name = "PATH|IP:PORT", help_heading = ADMIN)]
    pub admin: Option<Endpoint>,

    /// The token every admin request must carry (`Authorization: Bearer`):
    /// required with --admin IP:PORT. The file must be private to this user.
    #[arg(long, value_name = "FILE", help_heading = ADMIN)]
    pub admin_token_file: Option<PathBuf>,

    /// Let --admin IP:PORT be other than a loopback address. The token
    /// then travels over the network in the clear: put it behind TLS.
    #[arg(long, action = ArgAction::SetTrue, help_heading = ADMIN)]
    pub admin_allow_remote: Option<bool>,

    /// Largest component `POST /handler` accepts; a larger body is refused
    /// before it is read.
    #[arg(long, value_name = "SIZE", default_value = Size(DEFAULT_MAX_UPLOAD).to_string(), help_heading = ADMIN)]
    pub admin_max_upload: Option<Size>,

    /// Most linear memory a connection's handler instance may use (e.g.
    /// 16MiB, 1GiB). A handler that needs more fails with "memory limit
    /// exceeded"; only its own connection is affected.
    #[arg(long, value_name = "SIZE", default_value = Size(DEFAULT_MAX_MEMORY).to_string(), help_heading = "Limits")]
    pub max_memory: Option<Size>,

    /// Most CPU time a handler may use between two reads or writes on its
    /// connection. Waiting (for the client, or in a sleep) uses none and is
    /// never charged. A handler over budget is stopped and its connection
    /// closed.
    #[arg(long, value_name = "DURATION", default_value = Span::from(DEFAULT_CPU_BUDGET).to_string(), help_heading = "Limits")]
    pub cpu_budget: Option<Span>,

    /// Longest a read waits for the client to send something, or a write for
    /// it to take data; then the handler gets `timed-out`.
    #[arg(long, value_name = "DURATION", default_value = Span::from(DEFAULT_IDLE_TIMEOUT).to_string(), help_heading = "Limits")]
    pub idle_timeout: Option<Span>,

    /// Longest a connection may stay open, however active (off by default).
    /// Stops clients that trickle a byte now and then from holding a
    /// connection forever.
    #[arg(long, value_name = "DURATION", help_heading = "Limits")]
    pub max_connection_time: Option<Span>,

    /// Most connections served at once. It also sizes the pool of handler
    /// instances, so the two always agree. Checked at start against what the
    /// machine allows (open files, threads, memory mappings, address space).
    #[arg(long, value_name = "N", default_value = DEFAULT_MAX_CONNECTIONS.to_string(),
          value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    pub max_connections: Option<u32>,

    /// Most connections one client address may have open at once (off by
    /// default). A connection over it is closed at once, so that one address
    /// cannot hold every slot; behind a proxy or NAT, many clients share one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    pub max_connections_per_ip: Option<u32>,

    /// What happens to a new client while all --max-connections are busy:
    /// `wait` leaves it in the listen backlog until a slot frees, `close`
    /// accepts and closes it at once.
    #[arg(long, value_name = "wait|close", default_value = WhenFull::Wait.to_string(), help_heading = "Limits")]
    pub when_full: Option<WhenFull>,

    /// Most bytes of room messages waiting for one member's client before
    /// it is disconnected: publishing never waits for a slow reader.
    #[arg(long, value_name = "SIZE", default_value = Size(DEFAULT_ROOM_BACKLOG).to_string(), help_heading = "Limits")]
    pub room_backlog: Option<Size>,

    /// Expect a PROXY protocol header (v1 or v2, as HAProxy's send-proxy
    /// and send-proxy-v2 send) at the start of every connection, from a
    /// load balancer in front: the handler's peer-addr(), the logs and
    /// --max-connections-per-ip then see the real client. A connection
    /// without a valid header within 3s is closed and logged.
    #[arg(long, action = ArgAction::SetTrue, help_heading = "Load balancing")]
    pub proxy_protocol: Option<bool>,

    /// Accept PROXY headers only from this address range (e.g. 10.0.0.0/8,
    /// or one address); connections from anywhere else are closed.
    /// Repeatable. [default: 127.0.0.0/8 and ::1, a balancer on this machine]
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr, requires = "proxy_protocol", help_heading = "Load balancing")]
    #[serde(default, deserialize_with = "cidrs")]
    pub proxy_from: Option<Vec<IpNet>>,

    /// Speak TLS on this listener (only TLS), serving the certificate chain
    /// in FILE: PEM, the server's certificate first, then the intermediates
    /// clients need. Needs --tls-key. SIGHUP re-reads it, as --watch does
    /// when it changes; open connections keep their sessions.
    #[arg(long, value_name = "FILE", help_heading = TLS)]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert's certificate (PEM: PKCS#8, PKCS#1 or
    /// SEC1). Checked against the certificate at start and at each reload.
    #[arg(long, value_name = "FILE", help_heading = TLS)]
    pub tls_key: Option<PathBuf>,

    /// The certificate authorities (PEM) that client certificates must chain
    /// to, for --tls-client-auth.
    #[arg(long, value_name = "FILE", help_heading = TLS)]
    pub tls_client_ca: Option<PathBuf>,

    /// Whether clients need a certificate signed by --tls-client-ca:
    /// `off` (not asked for), `optional` (asked for; a client without one is
    /// served, one with a certificate the CA did not sign is refused) or
    /// `require`. Enforced before the handler runs; a handler on contract
    /// 0.3.0 sees the verified subject in `tls()`.
    #[arg(long, value_name = "off|optional|require", default_value = "off", help_heading = TLS)]
    pub tls_client_auth: Option<ClientAuth>,

    /// Offer this protocol in TLS's ALPN; repeatable, most preferred first.
    /// A client that offers none of them is served with no protocol agreed
    /// (its handler sees none), not refused.
    #[arg(long, value_name = "PROTO", help_heading = TLS)]
    #[serde(default, deserialize_with = "strings")]
    pub tls_alpn: Option<Vec<String>>,

    /// Longest a client may take from connecting to the end of its TLS
    /// handshake, its PROXY header included; then it is closed, so a client
    /// that says nothing holds its connection slot no longer.
    #[arg(long, value_name = "DURATION", default_value = Span::from(DEFAULT_HANDSHAKE_TIMEOUT).to_string(), help_heading = TLS)]
    pub tls_handshake_timeout: Option<Span>,

    /// Further certificates, each served to clients asking (SNI) for a name
    /// it matches (config file only: `[[listener.tls-sni]]` tables, or
    /// `[[tls-sni]]` without listener tables, with `name`, `cert`, `key`).
    #[arg(skip)]
    pub tls_sni: Option<Vec<SniEntry>>,

    /// Let several hotsock processes listen on the same addresses
    /// (SO_REUSEPORT): the kernel spreads new connections over them. Every
    /// process sharing a port needs it, and must run as the same user.
    #[arg(long, action = ArgAction::SetTrue, help_heading = "Load balancing")]
    pub reuse_port: Option<bool>,

    /// Give handlers an environment variable, as KEY=VALUE. Repeatable.
    /// Handlers get no environment unless granted. In a config file, a
    /// table (`env = { KEY = "value" }`) or a list of `KEY=VALUE`.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env, help_heading = "Capabilities")]
    #[serde(default, deserialize_with = "env")]
    pub env: Option<Vec<(String, String)>>,

    /// Let handlers read a host directory, as HOST::GUEST (or just HOST, seen
    /// under the same path). Read-only. Repeatable. Handlers get no files
    /// unless granted.
    #[arg(long = "dir", value_name = "HOST::GUEST", value_parser = parse_read_only_dir, help_heading = "Capabilities")]
    #[serde(rename = "dir", default, deserialize_with = "read_only_dirs")]
    pub dirs: Option<Vec<Preopen>>,

    /// Like --dir, but handlers may also create, change and delete files there.
    #[arg(long = "dir-rw", value_name = "HOST::GUEST", value_parser = parse_writable_dir, help_heading = "Capabilities")]
    #[serde(rename = "dir-rw", default, deserialize_with = "writable_dirs")]
    pub dirs_rw: Option<Vec<Preopen>>,

    /// Let handlers open the key-value bucket NAME (`wasi:keyvalue`): one per
    /// process, shared by every connection and handler version, kept across
    /// swaps, in memory. Repeatable. Opening any other is `access-denied`.
    #[arg(long = "keyvalue", value_name = "NAME", value_parser = parse_bucket_name, help_heading = "Capabilities")]
    #[serde(default, deserialize_with = "buckets")]
    pub keyvalue: Option<Vec<String>>,

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
    #[serde(default, deserialize_with = "grants")]
    pub allow_connect: Option<Vec<ConnectGrant>>,

    /// Record every connection to a transcript file in DIR (made if missing,
    /// private to this user): what the client sent, what the handler wrote,
    /// and the clock readings and random bytes it got, so that `hotsock test`
    /// can replay it. It keeps what clients send: mind their privacy.
    #[arg(long, value_name = "DIR", help_heading = "Recording")]
    pub record: Option<PathBuf>,

    /// Most bytes kept in one connection's transcript; the rest of the
    /// connection is not recorded, and the transcript says so.
    #[arg(long, value_name = "SIZE", default_value = Size(DEFAULT_RECORD_MAX_BYTES).to_string(), help_heading = "Recording")]
    pub record_max_bytes: Option<Size>,

    /// Directory for compiled handler code, so a second start with the same
    /// handler skips compiling [default: $XDG_CACHE_HOME/hotsock, else ~/.cache/hotsock]
    #[arg(long, value_name = "DIR", env = CACHE_DIR_ENV, help_heading = CACHE)]
    pub cache_dir: Option<PathBuf>,

    /// Compile every handler afresh, without reading or writing the cache.
    #[arg(long, action = ArgAction::SetTrue, conflicts_with = "cache_dir", help_heading = CACHE)]
    pub no_cache: Option<bool>,

    /// A `[[listener]]` table's name (config file only).
    #[arg(skip)]
    pub name: Option<String>,

    /// The `[[listener]]` tables (config file only).
    #[arg(skip)]
    #[merge(skip)]
    pub listener: Option<Vec<ServeOptions>>,
}

impl ServeOptions {
    /// What was given on the command line (or in an environment variable):
    /// the options left at their default are `None`, so that the file's
    /// values show through.
    pub fn given(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = matches.clone();
        let defaulted: Vec<String> = matches
            .ids()
            .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::DefaultValue))
            .map(|id| id.to_string())
            .collect();
        for id in defaulted {
            // Fails only for an id clap does not know, and these come from it.
            let _ = given.try_clear_id(&id);
        }
        Self::from_arg_matches(&given)
    }

    /// Every option at its default: what clap fills in when nothing is given.
    pub fn defaults() -> Result<Self, clap::Error> {
        // `--config` stands for `serve`'s own, which lets HANDLER be left out.
        let config = clap::Arg::new("config").long("config");
        let command = Self::augment_args(Command::new("serve").no_binary_name(true).arg(config));
        let matches = command.try_get_matches_from(["--config", "none"])?;
        Self::from_arg_matches(&matches)
    }

    /// The `--long` names of the options a `[[listener]]` table may not set.
    pub fn process_wide() -> Vec<String> {
        let command = Self::augment_args(Command::new("serve"));
        command
            .get_arguments()
            .filter(|arg| {
                arg.get_help_heading()
                    .is_some_and(|h| PROCESS_WIDE.contains(&h))
            })
            .filter_map(|arg| arg.get_long().map(str::to_string))
            .collect()
    }

    /// Makes every relative path in these options relative to `base`: a
    /// config file's paths are relative to the file.
    pub fn resolve(&mut self, base: &Path) {
        let at = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for path in [
            &mut self.handler,
            &mut self.record,
            &mut self.admin_token_file,
            &mut self.cache_dir,
            &mut self.state_dir,
            &mut self.tls_cert,
            &mut self.tls_key,
            &mut self.tls_client_ca,
        ] {
            path.as_mut().map(at);
        }
        for entry in self.tls_sni.iter_mut().flatten() {
            at(&mut entry.cert);
            at(&mut entry.key);
        }
        if let Some(Endpoint::Unix(path)) = &mut self.admin {
            at(path);
        }
        if let Some(store) = &mut self.keyvalue_store {
            store.resolve(base);
        }
        for dirs in [&mut self.dirs, &mut self.dirs_rw].into_iter().flatten() {
            dirs.iter_mut().for_each(|dir| at(&mut dir.host));
        }
        for table in self.listener.iter_mut().flatten() {
            table.resolve(base);
        }
    }
}

/// A certificate served to clients asking for `name` (SNI): a
/// `[[listener.tls-sni]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SniEntry {
    /// An exact host name (`api.example.com`), or a wildcard over one label
    /// (`*.example.com`).
    pub name: String,
    /// The certificate chain's PEM file.
    pub cert: PathBuf,
    /// Its private key's PEM file.
    pub key: PathBuf,
}

/// A string, or a list of strings, each read with `parse`. Read as strings
/// first, so that a bad one is named with its line (an untagged enum would
/// only say that nothing matched).
fn each<'de, D, T, E>(
    deserializer: D,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    E: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let texts = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    };
    let parsed = texts
        .iter()
        .map(|text| parse(text).map_err(serde::de::Error::custom));
    parsed.collect::<Result<_, _>>().map(Some)
}

fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    each(d, |text| Ok::<_, String>(text.to_string()))
}

fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
    each(d, parse_cidr)
}

fn buckets<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    each(d, parse_bucket_name)
}

fn grants<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<ConnectGrant>>, D::Error> {
    each(d, str::parse)
}

fn read_only_dirs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Preopen>>, D::Error> {
    each(d, |text| parse_dir(text, false))
}

fn writable_dirs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Preopen>>, D::Error> {
    each(d, |text| parse_dir(text, true))
}

/// Environment variables: a table, or a list of `KEY=VALUE`.
fn env<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<(String, String)>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Env {
        Table(std::collections::BTreeMap<String, String>),
        List(Vec<String>),
    }
    match Env::deserialize(d)? {
        Env::Table(table) => Ok(Some(table.into_iter().collect())),
        Env::List(list) => {
            let pairs = list.iter().map(|text| parse_env(text));
            let pairs = pairs.collect::<Result<_, _>>();
            pairs.map(Some).map_err(serde::de::Error::custom)
        }
    }
}
