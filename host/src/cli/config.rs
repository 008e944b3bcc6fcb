//! `serve --config FILE`: a TOML file with a key for every `serve` option,
//! of the same name, and `[[listener]]` tables for serving several ports
//! with different handlers; and the [`Config`] the server runs, made of the
//! command line, the file and the defaults.
//!
//! What wins, for each setting of each listener: the command line, if the
//! option was given there; else the listener's own table; else the file's
//! top level; else the default (see `options`). Unknown or misspelt keys are
//! errors that name the key and its line. Relative paths in the file are
//! relative to the file's directory, so a config and its handlers can move
//! together.

use std::collections::BTreeSet;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use hotsock::runtime::{Capabilities, KeyValueStore, Limits, Profile, Recording};
use hotsock::server::{
    ADMIN_SOCKET, AdminConfig, CertFiles, ClientAuth, Config, DEFAULT_LISTENER, Drain,
    ListenerConfig, ListenerSettings, METRICS_SOCKET, Policy, Proxy, Rules, SniCert, TlsSettings,
};
use merge::Merge as _;
use std::time::Duration;

use crate::cli::logging::LogFormat;
use crate::cli::options::ServeOptions;

/// What `serve` runs: the server's config, and how the log is written.
#[derive(Debug)]
pub struct Plan {
    /// The config file, if any: what SIGHUP re-reads.
    pub file: Option<PathBuf>,
    /// The server's config.
    pub config: Config,
    /// How log lines are written.
    pub log_format: LogFormat,
}

/// A value every option has once the defaults are merged in: `None` only if
/// an option lost its default, which the tests below would catch.
fn set<T>(value: Option<T>, key: &str) -> Result<T> {
    value.with_context(|| format!("`{key}` has no value and no default"))
}

impl Plan {
    /// The plan of the options `given` on the command line and, if given,
    /// the config file at `file`. `default_cache` is where compiled code goes
    /// unless told otherwise.
    pub fn new(
        file: Option<&Path>,
        given: &ServeOptions,
        default_cache: Option<PathBuf>,
    ) -> Result<Self> {
        let mut top = match file {
            Some(path) => load(path)?,
            None => ServeOptions::default(),
        };
        let tables = top.listener.take().unwrap_or_default();
        let named = !tables.is_empty();
        let shown = || file.map_or_else(|| "the config file".into(), |p| p.display().to_string());
        if named && given.handler.is_some() {
            bail!(
                "HANDLER cannot be given with a config that has [[listener]] tables: set each \
                 listener's `handler` in the file"
            );
        }
        if named && given.addrs.is_some() {
            bail!(
                "--addr cannot be given with a config that has [[listener]] tables: set each \
                 listener's `addr` in the file"
            );
        }
        if named && (top.handler.is_some() || top.addrs.is_some()) {
            bail!(
                "{}: with [[listener]] tables, `handler` and `addr` belong in each table, not at \
                 the top level",
                shown()
            );
        }
        if top.name.is_some() {
            bail!("{}: `name` belongs in a [[listener]] table", shown());
        }
        let defaults = ServeOptions::defaults().map_err(|e| anyhow!("{e}"))?;
        // The whole process's options: the command line, the top level, the defaults.
        let mut process = given.clone();
        process.merge(top.clone());
        process.merge(defaults.clone());
        let tables = match named {
            true => tables,
            false => vec![ServeOptions {
                name: Some(DEFAULT_LISTENER.to_string()),
                ..ServeOptions::default()
            }],
        };
        let mut listeners = Vec::new();
        for table in tables {
            let name = table.name.clone().unwrap_or_default();
            if named && table.addrs.as_ref().is_none_or(Vec::is_empty) {
                bail!("{}: listener `{name}` has no `addr`", shown());
            }
            if named && table.handler.is_none() {
                bail!("{}: listener `{name}` has no `handler`", shown());
            }
            let mut options = given.clone();
            options.merge(table);
            options.merge(top.clone());
            options.merge(defaults.clone());
            let listener = listener(options, &name).map_err(|e| match named {
                true => e.context(format!("listener `{name}`")),
                false => e,
            });
            listeners.push(listener.with_context(|| match file {
                Some(_) => shown(),
                None => "the command line".into(),
            })?);
        }
        if !named && listeners[0].handler.as_os_str().is_empty() {
            bail!(
                "no handler to serve: pass HANDLER, or set `handler` (or [[listener]] tables) in {}",
                shown()
            );
        }
        let admin = process.admin.clone().map(|endpoint| -> Result<_> {
            Ok(AdminConfig {
                endpoint,
                token_file: process.admin_token_file.clone(),
                allow_remote: set(process.admin_allow_remote, "admin-allow-remote")?,
                max_upload: set(process.admin_max_upload, "admin-max-upload")?.0,
            })
        });
        // `--cache-dir` on the command line wins over `no-cache` in the file.
        let no_cache = given.cache_dir.is_none() && set(process.no_cache, "no-cache")?;
        let cache_dir = match no_cache {
            true => None,
            false => process.cache_dir.clone().or(default_cache),
        };
        Ok(Plan {
            file: file.map(Path::to_path_buf),
            config: Config {
                listeners,
                named,
                drain: Drain {
                    stop_delay: set(process.stop_delay, "stop-delay")?.into(),
                    drain_timeout: set(process.drain_timeout, "drain-timeout")?.into(),
                    upgrade_drain_timeout: process.upgrade_drain_timeout.map(Into::into),
                },
                admin: admin.transpose()?,
                metrics: process.metrics,
                cache_dir,
                keyvalue_max_bytes: set(process.keyvalue_max_bytes, "keyvalue-max-bytes")?.0,
                keyvalue_store: keyvalue_store(
                    process.keyvalue_store.clone(),
                    process.state_dir.clone(),
                ),
                rooms_store: set(process.rooms_store.clone(), "rooms-store")?,
            },
            log_format: set(process.log_format, "log-format")?,
        })
    }
}

/// `--keyvalue-store` if given, else the default store in the state
/// directory: `--state-dir`, else systemd's, else `.hotsock`.
pub fn keyvalue_store(store: Option<KeyValueStore>, state_dir: Option<PathBuf>) -> KeyValueStore {
    store.unwrap_or_else(|| KeyValueStore::in_state_dir(&self::state_dir(state_dir)))
}

/// `--state-dir`, else the first directory systemd's `StateDirectory=`
/// names, else `.hotsock` in the working directory.
fn state_dir(given: Option<PathBuf>) -> PathBuf {
    let systemd = std::env::var_os("STATE_DIRECTORY").and_then(|dirs| {
        let first = dirs.to_string_lossy().split(':').next().map(PathBuf::from);
        first.filter(|dir| !dir.as_os_str().is_empty())
    });
    given
        .or(systemd)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// Where state is kept without `--state-dir` or systemd's `STATE_DIRECTORY`:
/// beside the server, like a working copy's `.git`.
const DEFAULT_STATE_DIR: &str = ".hotsock";

/// One listener's config, from its options merged whole.
fn listener(options: ServeOptions, name: &str) -> Result<ListenerConfig> {
    let tls = tls(&options)?;
    let proxy = match (
        set(options.proxy_protocol, "proxy-protocol")?,
        options.proxy_from,
    ) {
        (true, from) => Some(Proxy {
            trusted: from.unwrap_or_else(Proxy::loopback),
        }),
        (false, None) => None,
        (false, Some(_)) => bail!(
            "proxy-from (--proxy-from) is set without proxy-protocol (--proxy-protocol): the \
             sources it trusts would send nothing to trust"
        ),
    };
    let mut connect = options.allow_connect.unwrap_or_default();
    for grant in &mut connect {
        grant.resolve().map_err(|why| anyhow!("{why}"))?;
    }
    let record = options.record.map(|dir| -> Result<_> {
        let max_bytes = set(options.record_max_bytes, "record-max-bytes")?.0;
        let recording = Recording { dir, max_bytes };
        recording.prepare()?;
        Ok(recording)
    });
    let mut dirs = options.dirs.unwrap_or_default();
    dirs.extend(options.dirs_rw.unwrap_or_default());
    Ok(ListenerConfig {
        name: name.to_string(),
        addrs: set(options.addrs, "addr")?,
        reuse_port: set(options.reuse_port, "reuse-port")?,
        handler: options.handler.unwrap_or_default(),
        watch: set(options.watch, "watch")?,
        tls,
        settings: ListenerSettings {
            profile: Profile {
                limits: Limits {
                    max_memory: set(options.max_memory, "max-memory")?.0,
                    cpu_budget: set(options.cpu_budget, "cpu-budget")?.into(),
                },
                capabilities: Capabilities {
                    env: options.env.unwrap_or_default(),
                    dirs,
                    keyvalue: options.keyvalue.unwrap_or_default().into(),
                    connect: connect.into(),
                },
                record: record.transpose()?,
            },
            rules: Rules {
                max_connections: set(options.max_connections, "max-connections")?,
                max_connections_per_ip: options.max_connections_per_ip,
                when_full: set(options.when_full, "when-full")?,
                idle_timeout: set(options.idle_timeout, "idle-timeout")?.into(),
                max_connection_time: options.max_connection_time.map(Into::into),
                proxy,
                room_backlog: set(options.room_backlog, "room-backlog")?.0,
            },
            policy: Policy {
                rollback_on_traps: options.rollback_on_traps,
                drain_deadline: options.drain_deadline.map(Into::into),
            },
            // Read from `tls` above when the listener starts or reloads.
            tls: None,
        },
    })
}

/// A listener's TLS, from its options merged whole: `None` without
/// `tls-cert`. TLS options without a certificate are an error rather than
/// a listener that silently speaks plaintext.
fn tls(options: &ServeOptions) -> Result<Option<TlsSettings>> {
    let client_auth = set(options.tls_client_auth, "tls-client-auth")?;
    let timeout: Duration = set(options.tls_handshake_timeout, "tls-handshake-timeout")?.into();
    let (cert, key) = match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        (Some(_), None) => bail!(
            "tls-cert (--tls-cert) is set without tls-key (--tls-key): give the certificate's \
             private key too"
        ),
        (None, Some(_)) => bail!(
            "tls-key (--tls-key) is set without tls-cert (--tls-cert): give the certificate too"
        ),
        (None, None) => {
            let set_alone = [
                ("tls-client-ca", options.tls_client_ca.is_some()),
                ("tls-client-auth", client_auth != ClientAuth::Off),
                ("tls-alpn", options.tls_alpn.is_some()),
                ("tls-sni", options.tls_sni.is_some()),
            ];
            if let Some((key, _)) = set_alone.iter().find(|(_, set)| *set) {
                bail!(
                    "{key} (--{key}) is set, but the listener has no tls-cert (--tls-cert) and \
                     tls-key (--tls-key): it would speak plaintext"
                );
            }
            return Ok(None);
        }
    };
    if timeout.is_zero() {
        bail!("tls-handshake-timeout (--tls-handshake-timeout) must be more than 0s");
    }
    let sni = options.tls_sni.iter().flatten().map(|entry| SniCert {
        name: entry.name.clone(),
        files: CertFiles {
            cert: entry.cert.clone(),
            key: entry.key.clone(),
        },
    });
    Ok(Some(TlsSettings {
        default: CertFiles { cert, key },
        sni: sni.collect(),
        client_ca: options.tls_client_ca.clone(),
        client_auth,
        alpn: options.tls_alpn.clone().unwrap_or_default(),
        handshake_timeout: timeout,
    }))
}

/// Reads and checks the config file at `path`; relative paths in it become
/// relative to its directory.
fn load(path: &Path) -> Result<ServeOptions> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let mut file: ServeOptions =
        toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    check_tables(path, &text)?;
    file.resolve(path.parent().unwrap_or(Path::new(".")));
    Ok(file)
}

/// Checks each `[[listener]]` table: a valid, unique, unreserved name, and
/// none of the options that belong to the whole process.
fn check_tables(path: &Path, text: &str) -> Result<()> {
    let shown = path.display();
    let table: toml::Table = toml::from_str(text).map_err(|e| anyhow!("{shown}: {e}"))?;
    let Some(tables) = table.get("listener").and_then(toml::Value::as_array) else {
        return Ok(());
    };
    let process_wide = ServeOptions::process_wide();
    let mut seen = BTreeSet::new();
    for table in tables.iter().filter_map(toml::Value::as_table) {
        let Some(name) = table.get("name").and_then(toml::Value::as_str) else {
            bail!("{shown}: a [[listener]] table has no `name`");
        };
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            bail!("{shown}: listener name `{name}`: use letters, digits, `-` and `_`");
        }
        if name == ADMIN_SOCKET || name == METRICS_SOCKET {
            bail!(
                "{shown}: listener name `{name}` is reserved: it names the {name} socket when \
                 sockets are passed in (systemd); choose another"
            );
        }
        if !seen.insert(name) {
            bail!("{shown}: two listeners are called `{name}`");
        }
        if table.contains_key("listener") {
            bail!("{shown}: listener `{name}`: [[listener]] tables do not nest");
        }
        if let Some(key) = process_wide
            .iter()
            .find(|key| table.contains_key(key.as_str()))
        {
            bail!(
                "{shown}: listener `{name}`: `{key}` is the whole process's, not a listener's: \
                 set it at the top level"
            );
        }
    }
    Ok(())
}

/// Checks that every listener's addresses are addresses, without binding.
pub fn check_addresses(config: &Config) -> Result<()> {
    for listener in &config.listeners {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use hotsock::runtime::{DEFAULT_CPU_BUDGET, DEFAULT_MAX_MEMORY};
    use hotsock::server::{DEFAULT_DRAIN_TIMEOUT, WhenFull};

    fn plan(text: &str, given: &ServeOptions) -> Result<Plan> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("hotsock.toml");
        std::fs::write(&path, text)?;
        Plan::new(Some(&path), given, None)
    }

    #[test]
    fn every_option_has_its_default_once_merged() {
        let given = ServeOptions {
            handler: Some("h.wasm".into()),
            ..ServeOptions::default()
        };
        let plan = Plan::new(None, &given, None).unwrap();
        let [listener] = &plan.config.listeners[..] else {
            panic!("{plan:?}");
        };
        assert_eq!(listener.name, DEFAULT_LISTENER);
        assert_eq!(listener.addrs, [crate::cli::args::DEFAULT_ADDR]);
        assert_eq!(
            listener.settings.profile.limits.max_memory,
            DEFAULT_MAX_MEMORY
        );
        assert_eq!(
            listener.settings.profile.limits.cpu_budget,
            DEFAULT_CPU_BUDGET
        );
        assert_eq!(listener.settings.rules, Rules::default());
        assert_eq!(plan.config.drain.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(plan.log_format, LogFormat::Text);
        assert!(!plan.config.named);
    }

    #[test]
    fn listeners_inherit_the_top_level_and_the_command_line_wins() {
        let text = r#"
            cpu-budget = "200ms"
            max-connections = 50
            when-full = "close"
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
        let plan = plan(text, &ServeOptions::default()).unwrap();
        assert!(plan.config.named);
        let [echo, greet] = &plan.config.listeners[..] else {
            panic!("{plan:?}")
        };
        assert_eq!(echo.settings.rules.max_connections, 50);
        assert_eq!(echo.settings.rules.when_full, WhenFull::Close);
        assert_eq!(greet.settings.rules.max_connections, 5);
        let limits = &greet.settings.profile.limits;
        assert_eq!(limits.cpu_budget, Duration::from_millis(200));
        assert_eq!(greet.addrs.len(), 2);
        assert!(greet.handler.is_absolute(), "relative to the file");
        let env = &greet.settings.profile.capabilities.env;
        assert_eq!(env, &[("GREETING".into(), "hi".into())]);
        assert_eq!(plan.config.total_connections(), 55);
        let given = ServeOptions {
            max_connections: Some(3),
            ..ServeOptions::default()
        };
        let plan = super::tests::plan(text, &given).unwrap();
        let rules = plan.config.listeners.iter().map(|l| &l.settings.rules);
        assert!(rules.clone().all(|r| r.max_connections == 3));
    }

    #[test]
    fn a_misspelt_key_is_named_with_its_line() {
        let given = ServeOptions::default();
        let error = plan("max-conections = 5\n", &given)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("max-conections") && error.contains("line 1"),
            "{error}"
        );
        let error = plan(
            "[[listener]]\nname = \"a\"\naddr = \"127.0.0.1:0\"\nhandler = \"a.wasm\"\nidle = \"1s\"\n",
            &given,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("`idle`") && error.contains("line"),
            "{error}"
        );
        let error = plan("cpu-budget = \"soon\"\nhandler = \"h.wasm\"\n", &given)
            .unwrap_err()
            .to_string();
        assert!(error.contains("expected e.g. 500ms"), "{error}");
    }

    #[test]
    fn tls_keys_and_sni_tables_make_a_listeners_tls() {
        let text = r#"
            tls-handshake-timeout = "3s"
            [[listener]]
            name = "secure"
            addr = "127.0.0.1:0"
            handler = "h.wasm"
            tls-cert = "certs/site.pem"
            tls-key = "certs/site.key"
            tls-client-ca = "certs/ca.pem"
            tls-client-auth = "require"
            tls-alpn = ["hotsock/1", "h2"]
            [[listener.tls-sni]]
            name = "*.example.com"
            cert = "certs/wild.pem"
            key = "certs/wild.key"
            [[listener]]
            name = "plain"
            addr = "127.0.0.1:0"
            handler = "h.wasm"
        "#;
        let plan = plan(text, &ServeOptions::default()).unwrap();
        let [secure, plain] = &plan.config.listeners[..] else {
            panic!("{plan:?}")
        };
        assert!(plain.tls.is_none());
        let tls = secure.tls.as_ref().unwrap();
        assert!(tls.default.cert.is_absolute() && tls.default.cert.ends_with("certs/site.pem"));
        assert_eq!(tls.client_auth, ClientAuth::Require);
        assert_eq!(tls.alpn, ["hotsock/1", "h2"]);
        assert_eq!(tls.handshake_timeout, Duration::from_secs(3));
        assert_eq!(tls.sni.len(), 1);
        assert_eq!(tls.sni[0].name, "*.example.com");
        assert!(tls.sni[0].files.key.ends_with("certs/wild.key"));
        assert_eq!(secure.tls_files().len(), 5);
    }

    #[test]
    fn tls_options_without_a_certificate_are_refused() {
        let given = ServeOptions::default();
        for (text, expected) in [
            ("tls-cert = \"a.pem\"\n", "without tls-key"),
            ("tls-key = \"a.key\"\n", "without tls-cert"),
            (
                "tls-client-auth = \"require\"\n",
                "tls-client-auth (--tls-client-auth) is set",
            ),
            ("tls-alpn = \"h2\"\n", "it would speak plaintext"),
            (
                "tls-client-auth = \"sometimes\"\n",
                "expected one of `off`, `optional`, `require`",
            ),
        ] {
            let text = format!("handler = \"h.wasm\"\n{text}");
            let error = format!("{:#}", plan(&text, &given).unwrap_err());
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn a_listener_table_cannot_set_the_processs_options() {
        let text = "[[listener]]\nname = \"a\"\naddr = \"127.0.0.1:0\"\nhandler = \"a.wasm\"\n\
                    metrics = \"127.0.0.1:9000\"\n";
        let error = format!("{:#}", plan(text, &ServeOptions::default()).unwrap_err());
        assert!(
            error.contains("`metrics` is the whole process's"),
            "{error}"
        );
    }
}
