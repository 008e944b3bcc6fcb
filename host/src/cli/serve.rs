//! `hotsock serve`: reads the options and the config file into the server's
//! [`Config`](hotsock::server::Config), starts the server, and wires the
//! signals and `--watch` to it.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::{ArgMatches, Args};
use hotsock::server::{Control, Reloader, Server, Takeover, Trigger};
use log::{info, warn};

use crate::cli::args::CacheArgs;
use crate::cli::config::Plan;
use crate::cli::logging::{self, LogFormat};
use crate::cli::options::ServeOptions;
use crate::cli::signals;

/// Options of `hotsock serve`.
#[derive(Debug, Args)]
#[command(after_help = "\
Every option is also a --config key of the same name. Those under Process, Admin API and Cache
are the whole process's (the file's top level); any other may be set per [[listener]] table too.
The command line wins over a listener's table, which wins over the top level, then the default.
Log verbosity follows RUST_LOG (default: info), e.g. RUST_LOG=warn.
SIGINT or SIGTERM stops accepting and lets open connections finish; a second one exits at once.
SIGHUP reloads HANDLER from its path and the TLS certificates, keys and CAs from theirs, or re-reads
--config (certificates too); open connections finish on the version and TLS session they started with.
SIGUSR2 upgrades the binary: the hotsock now at this one's path starts with the same options, the
listening sockets, each listener's handler versions, the rooms (bridged while both serve), the next
connection id and the counters; once it serves, this process stops accepting and serves its open
connections until they end (--upgrade-drain-timeout caps it). If the new one fails to start, this
one keeps serving.
Sockets passed in by systemd (LISTEN_FDS, LISTEN_FDNAMES) replace --addr: matched to listeners by
name, `admin` and `metrics` to those. With NOTIFY_SOCKET set, systemd hears READY=1 and STOPPING=1.")]
pub struct ServeArgs {
    /// Read settings from this TOML file: a key for every option here, of
    /// the same name (`max-connections = 100`), and `[[listener]]` tables to
    /// serve several ports with different handlers. Options given here win
    /// over the file. SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Every other option, the same as the config file's keys.
    #[command(flatten)]
    pub options: ServeOptions,
}

/// Serves until SIGINT or SIGTERM, then drains; or, after SIGUSR2, until
/// the upgraded binary serves, then drains.
pub fn run(args: ServeArgs, matches: &ArgMatches) -> Result<()> {
    let takeover = Takeover::from_env()?;
    let given = ServeOptions::given(matches)?;
    let default_cache = CacheArgs::default_dir();
    let plan = Plan::new(args.config.as_deref(), &given, default_cache.clone())?;
    logging::init(plan.log_format);
    // Under --watch: each listener's handler file, and its TLS files.
    let watched: Vec<(Trigger, PathBuf)> = (plan.config.listeners.iter().enumerate())
        .filter(|(_, l)| l.watch)
        .flat_map(|(index, l)| {
            let handler = (Trigger::FileChanged(index), l.handler.clone());
            let tls = l.tls_files().into_iter();
            std::iter::once(handler).chain(tls.map(move |file| (Trigger::TlsChanged(index), file)))
        })
        .collect();
    let server = Server::start(plan.config, takeover)?;
    let control = server.control();
    let on_sighup = OnSighup {
        file: plan.file,
        given,
        default_cache,
        log_format: plan.log_format,
        control: Arc::clone(&control),
    };
    let on_change = Arc::clone(&control);
    let reloader = Reloader::spawn(
        move || on_sighup.signal(),
        move |changed| match changed {
            Trigger::FileChanged(index) => on_change.reload_handler(index, "--watch"),
            Trigger::TlsChanged(index) => on_change.reload_tls(index, "--watch"),
            Trigger::Signal => on_change.reload("--watch"),
        },
    )?;
    // Kept alive for as long as the server runs: dropping one ends its watch.
    let _watchers = watched
        .iter()
        .map(|(trigger, path)| reloader.watch(*trigger, path))
        .collect::<Result<Vec<_>>>()?;
    signals::handle(control, reloader)?;
    let mut stdout = std::io::stdout().lock();
    for line in server.announcements() {
        writeln!(stdout, "{line}")?;
    }
    // Scripts wait for these lines before connecting; do not leave them in a buffer.
    stdout.flush()?;
    drop(stdout);
    server.run()
}

/// What SIGHUP does: re-read the config file and apply it, all of it or
/// nothing; without one, reload each handler and its TLS files.
struct OnSighup {
    file: Option<PathBuf>,
    given: ServeOptions,
    default_cache: Option<PathBuf>,
    log_format: LogFormat,
    control: Arc<Control>,
}

impl OnSighup {
    fn signal(&self) {
        let Some(file) = &self.file else {
            return self.control.reload("SIGHUP");
        };
        let shown = file.display();
        let plan = Plan::new(Some(file), &self.given, self.default_cache.clone());
        let applied = plan.and_then(|plan| {
            if plan.log_format != self.log_format {
                warn!("SIGHUP: log-format applies only at start: restart the server to change it");
            }
            self.control.reconfigure(plan.config)
        });
        match applied {
            Ok(done) => info!("SIGHUP: re-read {shown}: {done}"),
            Err(e) => warn!("SIGHUP: {shown} not applied, nothing changed: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::{CommandFactory as _, FromArgMatches as _};
    use hotsock::server::{Rules, WhenFull};
    use std::time::Duration;

    fn plan(args: &[&str]) -> Plan {
        let matches = Cli::command().get_matches_from(args);
        let Command::Serve(_) = Cli::from_arg_matches(&matches).unwrap().command else {
            panic!("not serve");
        };
        let matches = matches.subcommand_matches("serve").unwrap();
        Plan::new(None, &ServeOptions::given(matches).unwrap(), None).unwrap()
    }

    #[test]
    fn the_defaults_are_the_librarys_defaults() {
        let plan = plan(&["hotsock", "serve", "h.wasm"]);
        let listener = &plan.config.listeners[0];
        assert_eq!(listener.settings.rules, Rules::default());
        assert_eq!(plan.log_format, LogFormat::Text);
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
            "--watch",
        ]);
        let listener = &plan.config.listeners[0];
        let settings = &listener.settings;
        assert_eq!(settings.rules.max_connections, 7);
        assert_eq!(settings.rules.when_full, WhenFull::Close);
        assert_eq!(
            settings.profile.limits.cpu_budget,
            Duration::from_millis(250)
        );
        assert_eq!(
            settings.profile.capabilities.env,
            [("A".into(), "b".into())]
        );
        assert!(listener.watch);
    }

    #[test]
    fn options_left_out_are_not_given() {
        let matches = Cli::command().get_matches_from(["hotsock", "serve", "h.wasm"]);
        let matches = matches.subcommand_matches("serve").unwrap();
        let given = ServeOptions::given(matches).unwrap();
        assert_eq!(given.max_connections, None);
        assert_eq!(given.addrs, None);
        assert_eq!(given.watch, None);
        assert!(given.handler.is_some());
    }
}
