//! `serve --config FILE`: a TOML file with a key for every `serve` option, of
//! the same name, and `[[listener]]` tables for serving several ports with
//! different handlers; and the plan that the file and the command line make
//! together.
//!
//! What wins, for each setting of each listener: the command line, if the
//! option was given there; else the listener's own table; else the file's
//! top level; else the default. Unknown or misspelt keys are errors that name
//! the key and its line. Relative paths in the file are relative to the
//! file's directory, so a config and its handlers can move together.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use hotsock::runtime::{
    Capabilities, ConnectGrant, DEFAULT_CPU_BUDGET, DEFAULT_MAX_BUCKET_BYTES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MEMORY, DEFAULT_RECORD_MAX_BYTES, DEFAULT_ROOM_BACKLOG,
    Limits, Preopen, Profile, Recording,
};
use hotsock::server::admin::DEFAULT_MAX_UPLOAD;
use hotsock::server::http::Endpoint;
use hotsock::server::{
    ADMIN_SOCKET, DEFAULT_DRAIN_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_LISTENER, METRICS_SOCKET,
    Policy, Proxy, Rules, WhenFull,
};
use hotsock::units::{parse_duration, parse_size};
use ipnet::IpNet;
use serde::Deserialize;

use crate::cli::args::{DEFAULT_ADDR, parse_bucket_name, parse_cidr, parse_dir, parse_env};
use crate::cli::logging::LogFormat;

/// Settings given on the command line, each `None` unless given there: they
/// override the file.
#[derive(Debug, Default)]
pub struct Overrides {
    pub handler: Option<PathBuf>,
    pub addrs: Option<Vec<String>>,
    pub drain_timeout: Option<Duration>,
    pub stop_delay: Option<Duration>,
    pub watch: Option<bool>,
    pub admin: Option<Endpoint>,
    pub admin_token_file: Option<PathBuf>,
    pub admin_allow_remote: Option<bool>,
    pub admin_max_upload: Option<usize>,
    pub metrics: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub drain_deadline: Option<Duration>,
    pub rollback_on_traps: Option<u64>,
    pub max_memory: Option<usize>,
    pub cpu_budget: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_connection_time: Option<Duration>,
    pub max_connections: Option<u32>,
    pub max_connections_per_ip: Option<u32>,
    pub when_full: Option<WhenFull>,
    pub proxy_protocol: Option<bool>,
    pub proxy_from: Option<Vec<IpNet>>,
    pub reuse_port: Option<bool>,
    pub env: Option<Vec<(String, String)>>,
    pub dirs: Option<Vec<Preopen>>,
    pub keyvalue: Option<Vec<String>>,
    pub keyvalue_max_bytes: Option<usize>,
    pub allow_connect: Option<Vec<ConnectGrant>>,
    pub room_backlog: Option<usize>,
    pub record: Option<PathBuf>,
    pub record_max_bytes: Option<usize>,
    /// `Some(None)` for `--no-cache`.
    pub cache_dir: Option<Option<PathBuf>>,
}

/// What `serve` runs.
#[derive(Debug)]
pub struct Plan {
    /// The config file, if any: what SIGHUP re-reads.
    pub config: Option<PathBuf>,
    /// Whether the listeners were named in a config file, so that each
    /// `listening on` line says which it is.
    pub named: bool,
    pub listeners: Vec<ListenerPlan>,
    pub drain_timeout: Duration,
    pub stop_delay: Duration,
    pub admin: Option<AdminPlan>,
    pub metrics: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub cache_dir: Option<PathBuf>,
    /// Most bytes in each key-value bucket: for the whole process.
    pub keyvalue_max_bytes: usize,
}

/// One listener of a [`Plan`].
#[derive(Debug, Clone)]
pub struct ListenerPlan {
    pub name: String,
    pub addrs: Vec<String>,
    /// `SO_REUSEPORT` on its sockets: fixed once bound.
    pub reuse_port: bool,
    pub handler: PathBuf,
    pub watch: bool,
    pub profile: Profile,
    pub policy: Policy,
    pub rules: Rules,
}

/// The admin API of a [`Plan`].
#[derive(Debug)]
pub struct AdminPlan {
    pub endpoint: Endpoint,
    pub token_file: Option<PathBuf>,
    pub allow_remote: bool,
    pub max_upload: usize,
}

impl Plan {
    /// The plan of `overrides` and, if given, the config file at `config`.
    /// `default_cache` is where compiled code goes unless told otherwise.
    pub fn new(
        config: Option<&Path>,
        overrides: &Overrides,
        default_cache: Option<PathBuf>,
    ) -> Result<Self> {
        let file = match config {
            Some(path) => File::load(path)?,
            None => File::default(),
        };
        let named = !file.listener.is_empty();
        if named && overrides.handler.is_some() {
            bail!(
                "HANDLER cannot be given with a config that has [[listener]] tables: set each \
                 listener's `handler` in the file"
            );
        }
        if named && overrides.addrs.is_some() {
            bail!(
                "--addr cannot be given with a config that has [[listener]] tables: set each \
                 listener's `addr` in the file"
            );
        }
        if named && (file.handler.is_some() || file.addr.is_some()) {
            bail!(
                "{}: with [[listener]] tables, `handler` and `addr` belong in each table, not at \
                 the top level",
                shown(config)
            );
        }
        let listeners = match named {
            true => file
                .listener
                .iter()
                .map(|table| table.plan(&file, overrides))
                .collect::<Result<Vec<_>>>()?,
            false => {
                let handler = overrides
                    .handler
                    .clone()
                    .or_else(|| file.handler.clone())
                    .with_context(|| {
                        format!(
                            "no handler to serve: pass HANDLER, or set `handler` (or \
                             [[listener]] tables) in {}",
                            shown(config)
                        )
                    })?;
                let addrs = overrides
                    .addrs
                    .clone()
                    .or_else(|| file.addr.clone().map(OneOrMany::into_vec))
                    .unwrap_or_else(|| vec![DEFAULT_ADDR.to_string()]);
                let table = ListenerTable {
                    name: DEFAULT_LISTENER.to_string(),
                    addr: OneOrMany::Many(addrs),
                    handler,
                    ..ListenerTable::default()
                };
                vec![table.plan(&file, overrides)?]
            }
        };
        let top = &file;
        let admin = overrides
            .admin
            .clone()
            .or_else(|| top.admin.clone())
            .map(|endpoint| AdminPlan {
                endpoint,
                token_file: overrides
                    .admin_token_file
                    .clone()
                    .or_else(|| top.admin_token_file.clone()),
                allow_remote: pick(overrides.admin_allow_remote, top.admin_allow_remote, false),
                max_upload: pick(
                    overrides.admin_max_upload,
                    top.admin_max_upload.map(|s| s.0),
                    DEFAULT_MAX_UPLOAD,
                ),
            });
        let cache_dir = match (&overrides.cache_dir, top.no_cache, &top.cache_dir) {
            (Some(given), _, _) => given.clone(),
            (None, Some(true), _) => None,
            (None, _, Some(dir)) => Some(dir.clone()),
            (None, _, None) => default_cache,
        };
        Ok(Plan {
            config: config.map(Path::to_path_buf),
            named,
            listeners,
            drain_timeout: pick(
                overrides.drain_timeout,
                top.drain_timeout.map(|d| d.0),
                DEFAULT_DRAIN_TIMEOUT,
            ),
            stop_delay: pick(
                overrides.stop_delay,
                top.stop_delay.map(|d| d.0),
                Duration::ZERO,
            ),
            admin,
            metrics: overrides.metrics.or(top.metrics),
            log_format: pick(overrides.log_format, top.log_format, LogFormat::Text),
            cache_dir,
            keyvalue_max_bytes: pick(
                overrides.keyvalue_max_bytes,
                top.keyvalue_max_bytes.map(|s| s.0),
                DEFAULT_MAX_BUCKET_BYTES,
            ),
        })
    }

    /// Connections on all listeners at once.
    pub fn total_connections(&self) -> u32 {
        self.listeners
            .iter()
            .map(|l| l.rules.max_connections)
            .fold(0, u32::saturating_add)
    }

    /// The most linear memory any listener's instances may have.
    pub fn max_memory(&self) -> usize {
        self.listeners
            .iter()
            .map(|l| l.profile.limits.max_memory)
            .max()
            .unwrap_or(DEFAULT_MAX_MEMORY)
    }
}

/// The command line's value if given there, else the file's, else `default`.
fn pick<T>(given: Option<T>, file: Option<T>, default: T) -> T {
    given.or(file).unwrap_or(default)
}

fn shown(config: Option<&Path>) -> String {
    config.map_or_else(|| "the config file".into(), |p| p.display().to_string())
}

/// A config file, read and checked: at its top level, every `serve` option.
/// What a listener may set is repeated in [`ListenerTable`]: serde cannot
/// refuse unknown keys and share fields (`flatten`) at once.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    handler: Option<PathBuf>,
    addr: Option<OneOrMany>,
    drain_timeout: Option<Dur>,
    stop_delay: Option<Dur>,
    watch: Option<bool>,
    admin: Option<Endpoint>,
    admin_token_file: Option<PathBuf>,
    admin_allow_remote: Option<bool>,
    admin_max_upload: Option<Size>,
    metrics: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    cache_dir: Option<PathBuf>,
    no_cache: Option<bool>,
    drain_deadline: Option<Dur>,
    rollback_on_traps: Option<u64>,
    max_memory: Option<Size>,
    cpu_budget: Option<Dur>,
    idle_timeout: Option<Dur>,
    max_connection_time: Option<Dur>,
    max_connections: Option<u32>,
    max_connections_per_ip: Option<u32>,
    when_full: Option<WhenFullName>,
    proxy_protocol: Option<bool>,
    proxy_from: Option<Cidrs>,
    reuse_port: Option<bool>,
    env: Option<Env>,
    dir: Option<OneOrMany>,
    dir_rw: Option<OneOrMany>,
    keyvalue: Option<Buckets>,
    keyvalue_max_bytes: Option<Size>,
    allow_connect: Option<Grants>,
    room_backlog: Option<Size>,
    record: Option<PathBuf>,
    record_max_bytes: Option<Size>,
    #[serde(default)]
    listener: Vec<ListenerTable>,
}

/// One `[[listener]]` table: what a listener may set for itself, over the
/// top level.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ListenerTable {
    name: String,
    addr: OneOrMany,
    handler: PathBuf,
    watch: Option<bool>,
    drain_deadline: Option<Dur>,
    rollback_on_traps: Option<u64>,
    max_memory: Option<Size>,
    cpu_budget: Option<Dur>,
    idle_timeout: Option<Dur>,
    max_connection_time: Option<Dur>,
    max_connections: Option<u32>,
    max_connections_per_ip: Option<u32>,
    when_full: Option<WhenFullName>,
    proxy_protocol: Option<bool>,
    proxy_from: Option<Cidrs>,
    reuse_port: Option<bool>,
    env: Option<Env>,
    dir: Option<OneOrMany>,
    dir_rw: Option<OneOrMany>,
    keyvalue: Option<Buckets>,
    allow_connect: Option<Grants>,
    room_backlog: Option<Size>,
    record: Option<PathBuf>,
    record_max_bytes: Option<Size>,
}

impl File {
    /// Reads and checks the file at `path`; relative paths in it become
    /// relative to its directory.
    fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let mut file: File =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        file.resolve(base);
        file.check(path)?;
        Ok(file)
    }

    fn resolve(&mut self, base: &Path) {
        let at = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let top = self;
        top.handler.as_mut().map(at);
        top.record.as_mut().map(at);
        top.admin_token_file.as_mut().map(at);
        top.cache_dir.as_mut().map(at);
        if let Some(Endpoint::Unix(path)) = &mut top.admin {
            at(path);
        }
        for dirs in [&mut top.dir, &mut top.dir_rw].into_iter().flatten() {
            dirs.resolve_dirs(base);
        }
        for table in &mut top.listener {
            at(&mut table.handler);
            table.record.as_mut().map(at);
            for dirs in [&mut table.dir, &mut table.dir_rw].into_iter().flatten() {
                dirs.resolve_dirs(base);
            }
        }
    }

    fn check(&self, path: &Path) -> Result<()> {
        let mut seen = BTreeMap::new();
        for table in &self.listener {
            let name = &table.name;
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                bail!(
                    "{}: listener name `{name}`: use letters, digits, `-` and `_`",
                    path.display()
                );
            }
            if name == ADMIN_SOCKET || name == METRICS_SOCKET {
                bail!(
                    "{}: listener name `{name}` is reserved: it names the {name} socket when \
                     sockets are passed in (systemd); choose another",
                    path.display()
                );
            }
            if seen.insert(name.clone(), ()).is_some() {
                bail!("{}: two listeners are called `{name}`", path.display());
            }
            if table.addr.clone().into_vec().is_empty() {
                bail!("{}: listener `{name}` has no `addr`", path.display());
            }
        }
        Ok(())
    }
}

impl ListenerTable {
    /// This listener's plan: the command line over this table over the top level.
    fn plan(&self, top: &File, given: &Overrides) -> Result<ListenerPlan> {
        let own = self;
        let dur = |g: Option<Duration>, o: Option<Dur>, t: Option<Dur>| {
            g.or(o.map(|d| d.0)).or(t.map(|d| d.0))
        };
        let env = match &given.env {
            Some(env) => env.clone(),
            None => own
                .env
                .as_ref()
                .or(top.env.as_ref())
                .map(Env::pairs)
                .transpose()?
                .unwrap_or_default(),
        };
        let dirs = match &given.dirs {
            Some(dirs) => dirs.clone(),
            None => {
                let read = own.dir.as_ref().or(top.dir.as_ref());
                let write = own.dir_rw.as_ref().or(top.dir_rw.as_ref());
                let mut dirs = read
                    .map(|d| d.preopens(false))
                    .transpose()?
                    .unwrap_or_default();
                dirs.extend(
                    write
                        .map(|d| d.preopens(true))
                        .transpose()?
                        .unwrap_or_default(),
                );
                dirs
            }
        };
        let size = |g: Option<usize>, o: &Option<Size>, t: &Option<Size>| {
            g.or(o.map(|s| s.0)).or(t.map(|s| s.0))
        };
        let proxy_protocol = given
            .proxy_protocol
            .or(own.proxy_protocol)
            .or(top.proxy_protocol)
            .unwrap_or(false);
        let proxy_from = given
            .proxy_from
            .clone()
            .or_else(|| own.proxy_from.as_ref().map(Cidrs::nets))
            .or_else(|| top.proxy_from.as_ref().map(Cidrs::nets));
        let proxy = match (proxy_protocol, proxy_from) {
            (true, from) => Some(Proxy {
                trusted: from.unwrap_or_else(Proxy::loopback),
            }),
            (false, None) => None,
            (false, Some(_)) => bail!(
                "listener `{}`: proxy-from (--proxy-from) is set without proxy-protocol \
                 (--proxy-protocol): the sources it trusts would send nothing to trust",
                self.name
            ),
        };
        let keyvalue = given
            .keyvalue
            .clone()
            .or_else(|| {
                own.keyvalue
                    .as_ref()
                    .or(top.keyvalue.as_ref())
                    .map(|b| b.0.clone())
            })
            .unwrap_or_default();
        let mut connect = given
            .allow_connect
            .clone()
            .or_else(|| {
                own.allow_connect
                    .as_ref()
                    .or(top.allow_connect.as_ref())
                    .map(|g| g.0.clone())
            })
            .unwrap_or_default();
        for grant in &mut connect {
            grant
                .resolve()
                .map_err(|why| anyhow::anyhow!("listener `{}`: {why}", self.name))?;
        }
        let record = given
            .record
            .clone()
            .or_else(|| own.record.clone())
            .or_else(|| top.record.clone())
            .map(|dir| Recording {
                dir,
                max_bytes: size(
                    given.record_max_bytes,
                    &own.record_max_bytes,
                    &top.record_max_bytes,
                )
                .unwrap_or(DEFAULT_RECORD_MAX_BYTES),
            });
        if let Some(recording) = &record {
            recording
                .prepare()
                .with_context(|| format!("listener `{}`", self.name))?;
        }
        Ok(ListenerPlan {
            name: self.name.clone(),
            addrs: self.addr.clone().into_vec(),
            reuse_port: given
                .reuse_port
                .or(own.reuse_port)
                .or(top.reuse_port)
                .unwrap_or(false),
            handler: self.handler.clone(),
            watch: given.watch.or(own.watch).or(top.watch).unwrap_or(false),
            profile: Profile {
                limits: Limits {
                    max_memory: size(given.max_memory, &own.max_memory, &top.max_memory)
                        .unwrap_or(DEFAULT_MAX_MEMORY),
                    cpu_budget: dur(given.cpu_budget, own.cpu_budget, top.cpu_budget)
                        .unwrap_or(DEFAULT_CPU_BUDGET),
                },
                capabilities: Capabilities {
                    env,
                    dirs,
                    keyvalue: keyvalue.into(),
                    connect: connect.into(),
                },
                record,
            },
            policy: Policy {
                rollback_on_traps: given
                    .rollback_on_traps
                    .or(own.rollback_on_traps)
                    .or(top.rollback_on_traps),
                drain_deadline: dur(given.drain_deadline, own.drain_deadline, top.drain_deadline),
            },
            rules: Rules {
                max_connections: given
                    .max_connections
                    .or(own.max_connections)
                    .or(top.max_connections)
                    .unwrap_or(DEFAULT_MAX_CONNECTIONS),
                max_connections_per_ip: given
                    .max_connections_per_ip
                    .or(own.max_connections_per_ip)
                    .or(top.max_connections_per_ip),
                when_full: given
                    .when_full
                    .or(own.when_full.map(|w| w.0))
                    .or(top.when_full.map(|w| w.0))
                    .unwrap_or(WhenFull::Wait),
                idle_timeout: dur(given.idle_timeout, own.idle_timeout, top.idle_timeout)
                    .unwrap_or(DEFAULT_IDLE_TIMEOUT),
                max_connection_time: dur(
                    given.max_connection_time,
                    own.max_connection_time,
                    top.max_connection_time,
                ),
                proxy,
                room_backlog: size(given.room_backlog, &own.room_backlog, &top.room_backlog)
                    .unwrap_or(DEFAULT_ROOM_BACKLOG),
            },
        })
    }
}

/// Checks that every listener's addresses are addresses, without binding.
pub fn check_addresses(plan: &Plan) -> Result<()> {
    for listener in &plan.listeners {
        for addr in &listener.addrs {
            addr.to_socket_addrs().with_context(|| {
                format!(
                    "listener `{}`: `{addr}` is not an address (expected IP:PORT or HOST:PORT)",
                    listener.name
                )
            })?;
        }
    }
    Ok(())
}

/// Address ranges (`10.0.0.0/8`, or a single address): one, or a list.
#[derive(Debug, Clone)]
struct Cidrs(Vec<IpNet>);

impl Cidrs {
    fn nets(&self) -> Vec<IpNet> {
        self.0.clone()
    }
}

impl<'de> Deserialize<'de> for Cidrs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        each(deserializer, parse_cidr).map(Cidrs)
    }
}

/// One string or a list, each read with `parse`. Read as strings first, so
/// that a bad one is named with its line (an untagged enum would only say
/// that nothing matched).
fn each<'de, D, T, E>(
    deserializer: D,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    E: std::fmt::Display,
{
    OneOrMany::deserialize(deserializer)?
        .into_vec()
        .iter()
        .map(|text| parse(text).map_err(serde::de::Error::custom))
        .collect()
}

/// Key-value bucket names: one, or a list.
#[derive(Debug, Clone)]
struct Buckets(Vec<String>);

impl<'de> Deserialize<'de> for Buckets {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        each(deserializer, parse_bucket_name).map(Buckets)
    }
}

/// Outbound TCP grants, `HOST:PORT`: one, or a list.
#[derive(Debug, Clone)]
struct Grants(Vec<ConnectGrant>);

impl<'de> Deserialize<'de> for Grants {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        each(deserializer, str::parse).map(Grants)
    }
}

/// A string, or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl Default for OneOrMany {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }

    fn preopens(&self, writable: bool) -> Result<Vec<Preopen>> {
        self.clone()
            .into_vec()
            .iter()
            .map(|text| parse_dir(text, writable).map_err(anyhow::Error::msg))
            .collect()
    }

    /// Makes the host side of each `HOST::GUEST` relative to `base`.
    fn resolve_dirs(&mut self, base: &Path) {
        let resolve = |text: &mut String| {
            let (host, rest) = match text.split_once("::") {
                Some((host, guest)) => (host.to_string(), format!("::{guest}")),
                // `--dir /srv/data` alone keeps the same path on both sides.
                None => (text.clone(), format!("::{text}")),
            };
            if Path::new(&host).is_relative() {
                *text = format!("{}{rest}", base.join(host).display());
            }
        };
        match self {
            OneOrMany::One(one) => resolve(one),
            OneOrMany::Many(many) => many.iter_mut().for_each(resolve),
        }
    }
}

/// Environment variables: a table, or a list of `KEY=VALUE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Env {
    Table(BTreeMap<String, String>),
    List(Vec<String>),
}

impl Env {
    fn pairs(&self) -> Result<Vec<(String, String)>> {
        match self {
            Env::Table(table) => Ok(table.clone().into_iter().collect()),
            Env::List(list) => list
                .iter()
                .map(|text| parse_env(text).map_err(anyhow::Error::msg))
                .collect(),
        }
    }
}

/// A duration written as people write it: `"500ms"`, `"10s"`, `"2m"`.
#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(|d| Dur(d.into()))
            .map_err(serde::de::Error::custom)
    }
}

/// A size: `"64MiB"`, or a number of bytes.
#[derive(Debug, Clone, Copy)]
struct Size(usize);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(usize),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bytes(n) => Ok(Size(n)),
            Written::Text(text) => parse_size(&text)
                .map(Size)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `"wait"` or `"close"`.
#[derive(Debug, Clone, Copy)]
struct WhenFullName(WhenFull);

impl<'de> Deserialize<'de> for WhenFullName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match String::deserialize(deserializer)?.as_str() {
            "wait" => Ok(WhenFullName(WhenFull::Wait)),
            "close" => Ok(WhenFullName(WhenFull::Close)),
            other => Err(serde::de::Error::custom(format!(
                "when-full is `wait` or `close`, not `{other}`"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str, overrides: &Overrides) -> Result<Plan> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("hotsock.toml");
        std::fs::write(&path, text)?;
        Plan::new(Some(&path), overrides, None)
    }

    #[test]
    fn listeners_inherit_the_top_level_and_the_command_line_wins() {
        let text = r#"
            cpu-budget = "200ms"
            max-connections = 50
            [[listener]]
            name = "echo"
            addr = "127.0.0.1:0"
            handler = "/echo.wasm"
            [[listener]]
            name = "greet"
            addr = ["127.0.0.1:0", "[::1]:0"]
            handler = "greet.wasm"
            max-connections = 5
            env = { GREETING = "hi" }
        "#;
        let plan = plan(text, &Overrides::default()).unwrap();
        assert!(plan.named);
        let [echo, greet] = &plan.listeners[..] else {
            panic!("{plan:?}")
        };
        assert_eq!(echo.rules.max_connections, 50);
        assert_eq!(greet.rules.max_connections, 5);
        assert_eq!(greet.profile.limits.cpu_budget, Duration::from_millis(200));
        assert_eq!(greet.addrs.len(), 2);
        assert!(greet.handler.is_absolute(), "relative to the file");
        assert_eq!(
            greet.profile.capabilities.env,
            [("GREETING".into(), "hi".into())]
        );
        assert_eq!(plan.total_connections(), 55);
        let overrides = Overrides {
            max_connections: Some(3),
            ..Overrides::default()
        };
        let plan = super::tests::plan(text, &overrides).unwrap();
        assert!(plan.listeners.iter().all(|l| l.rules.max_connections == 3));
    }

    #[test]
    fn a_misspelt_key_is_named_with_its_line() {
        let error = plan("max-conections = 5\n", &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("max-conections") && error.contains("line 1"),
            "{error}"
        );
        let error = plan(
            "[[listener]]\nname = \"a\"\naddr = \"127.0.0.1:0\"\nhandler = \"a.wasm\"\nidle = \"1s\"\n",
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("`idle`") && error.contains("line"),
            "{error}"
        );
        let error = plan(
            "cpu-budget = \"soon\"\nhandler = \"h.wasm\"\n",
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("expected e.g. 500ms"), "{error}");
    }
}
