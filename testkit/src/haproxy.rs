//! HAProxy in front of hotsock processes, for the fleet tests
//! (`tests/fleet.rs`) and the fleet bench (`hotsock-bench --fleet`): the
//! configuration users are given, deploy/haproxy.cfg, with its ports
//! replaced ([`config`]), run by a real `haproxy` binary ([`Haproxy`]), so
//! that what is tested and measured is what is shipped.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{Launch, ServerProcess, Stderr};

/// Where HAProxy's configuration is, relative to the repository root.
pub const PATH: &str = "deploy/haproxy.cfg";

/// deploy/haproxy.cfg's text, as built: the tests and the bench run this,
/// wherever they are started from.
pub const SHIPPED: &str = include_str!("../../deploy/haproxy.cfg");

/// deploy/haproxy-tls.cfg, HAProxy terminating TLS in front of the same
/// servers: where it is, its text as built, and the directory its
/// certificates are in (replaced by [`tls_config`]).
pub const TLS_PATH: &str = "deploy/haproxy-tls.cfg";
pub const TLS_SHIPPED: &str = include_str!("../../deploy/haproxy-tls.cfg");
pub const TLS_DIR: &str = "/etc/hotsock/tls/";

/// deploy/haproxy-tls-passthrough.cfg, HAProxy passing TLS through to
/// hotsock processes that terminate it: where it is, and its text as built.
pub const TLS_PASSTHROUGH_PATH: &str = "deploy/haproxy-tls-passthrough.cfg";
pub const TLS_PASSTHROUGH_SHIPPED: &str = include_str!("../../deploy/haproxy-tls-passthrough.cfg");

/// Where HAProxy is when it is not on PATH: Debian installs it there, and
/// /usr/sbin is not on every user's PATH.
const FALLBACK: &str = "/usr/sbin/haproxy";

/// Longest HAProxy may take to accept connections on its frontend: it
/// starts in milliseconds, but the machine may be busy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`Haproxy::start`] tries the frontend again.
const POLL: Duration = Duration::from_millis(50);

/// `shipped` (deploy/haproxy.cfg's text, [`SHIPPED`]) with its frontend on
/// `frontend` and its three servers at `backends`, each (where it serves,
/// where its /readyz is: its `--metrics` address). Fails if the text no
/// longer has exactly one of each line replaced.
pub fn config(
    shipped: &str,
    frontend: SocketAddr,
    backends: &[(SocketAddr, SocketAddr)],
) -> Result<String> {
    ports(PATH, shipped, "bind 127.0.0.1:50007", frontend, backends)
}

/// `shipped` (deploy/haproxy-tls.cfg's text, [`TLS_SHIPPED`]) with its
/// frontend on `frontend`, its three servers at `backends` (as for
/// [`config`]) and its certificates in the directory `certificates`
/// (`server.pem`, `clients-ca.pem`).
pub fn tls_config(
    shipped: &str,
    frontend: SocketAddr,
    backends: &[(SocketAddr, SocketAddr)],
    certificates: &Path,
) -> Result<String> {
    let config = ports(
        TLS_PATH,
        shipped,
        "bind 127.0.0.1:50443",
        frontend,
        backends,
    )?;
    ensure!(
        config.contains(TLS_DIR),
        "{TLS_PATH} should name {TLS_DIR}: the tests replace it (testkit/src/haproxy.rs)"
    );
    Ok(config.replace(TLS_DIR, &format!("{}/", certificates.display())))
}

/// `shipped` (deploy/haproxy-tls-passthrough.cfg's text,
/// [`TLS_PASSTHROUGH_SHIPPED`]) with its frontend on `frontend` and its
/// three servers at `backends` (as for [`config`]).
pub fn tls_passthrough_config(
    shipped: &str,
    frontend: SocketAddr,
    backends: &[(SocketAddr, SocketAddr)],
) -> Result<String> {
    ports(
        TLS_PASSTHROUGH_PATH,
        shipped,
        "bind 127.0.0.1:50443",
        frontend,
        backends,
    )
}

/// `shipped`, the file at `path`, with the line `bind` on `frontend` and
/// its three servers at `backends`.
fn ports(
    path: &str,
    shipped: &str,
    bind: &str,
    frontend: SocketAddr,
    backends: &[(SocketAddr, SocketAddr)],
) -> Result<String> {
    ensure!(
        backends.len() == 3,
        "{path} has three servers, not {}",
        backends.len()
    );
    let mut config = replace_once(path, shipped, bind, &format!("bind {frontend}"))?;
    for (n, (addr, metrics)) in (1..).zip(backends) {
        config = replace_once(
            path,
            &config,
            &format!("127.0.0.1:5010{n} check port 910{n}"),
            &format!("{addr} check port {}", metrics.port()),
        )?;
    }
    Ok(config)
}

fn replace_once(path: &str, text: &str, from: &str, to: &str) -> Result<String> {
    let found = text.matches(from).count();
    ensure!(
        found == 1,
        "{path} should have `{from}` once, and has it {found} times: the fleet tests and \
         bench replace its ports (testkit/src/haproxy.rs)"
    );
    Ok(text.replace(from, to))
}

/// The `haproxy` binary: on PATH, else where Debian puts it.
pub fn find() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("haproxy"))
        .find(|path| path.is_file());
    let fallback = Path::new(FALLBACK);
    match on_path {
        Some(path) => Ok(path),
        None if fallback.is_file() => Ok(fallback.to_path_buf()),
        None => bail!(
            "haproxy is not installed (not on PATH, nor at {FALLBACK}): run `make setup` (as \
             root), which installs Debian's haproxy"
        ),
    }
}

/// `HAProxy version 2.6.12-...`, the first line of `haproxy -v`, for
/// results: a balancer's numbers depend on its version.
pub fn version(binary: &Path) -> String {
    Command::new(binary)
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            // `HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/`
            let first = text.lines().next()?;
            Some(first.split(" - ").next().unwrap_or(first).to_string())
        })
        .unwrap_or_else(|| "HAProxy version unknown".into())
}

/// The command that runs `binary` in the foreground on the file `config`,
/// logging to stderr: what [`Haproxy::start`] starts.
pub fn command(binary: &Path, config: &Path) -> Command {
    let mut command = Command::new(binary);
    command.arg("-db").arg("-f").arg(config);
    command
}

/// HAProxy running deploy/haproxy.cfg with its ports replaced. Dropping it
/// kills it and waits for it.
#[derive(Debug)]
pub struct Haproxy {
    process: ServerProcess,
    frontend: SocketAddr,
    config: PathBuf,
    log: PathBuf,
}

impl Haproxy {
    /// Starts `binary` on [`SHIPPED`] with its frontend on a free port of
    /// 127.0.0.1 and its servers at `backends` (see [`config`]); the
    /// configuration is written to the file `config`, HAProxy's stderr (its
    /// log) appended to `log`. Returns once the frontend accepts
    /// connections. The kernel kills HAProxy when the thread that started
    /// it exits, even if no `Drop` runs: start it from a thread that
    /// outlives it.
    pub fn start(
        binary: &Path,
        backends: &[(SocketAddr, SocketAddr)],
        config: &Path,
        log: &Path,
    ) -> Result<Haproxy> {
        Self::start_with(
            binary,
            |frontend| self::config(SHIPPED, frontend, backends),
            config,
            log,
        )
    }

    /// Starts `binary` as [`Haproxy::start`] does, on the configuration
    /// `text` makes for a frontend on a free port of 127.0.0.1 (as
    /// [`tls_config`] does).
    pub fn start_with(
        binary: &Path,
        text: impl FnOnce(SocketAddr) -> Result<String>,
        config: &Path,
        log: &Path,
    ) -> Result<Haproxy> {
        let frontend: SocketAddr = (Ipv4Addr::LOCALHOST, crate::free_port()?).into();
        let text = text(frontend)?;
        std::fs::write(config, text).with_context(|| {
            format!("cannot write HAProxy's configuration {}", config.display())
        })?;
        // It announces nothing on stdout: readiness is its frontend accepting.
        let process = Launch::new(command(binary, config))
            .name("HAProxy")
            .listeners(0)
            .stderr(Stderr::Append(log.to_path_buf()))
            .die_with_parent(true)
            .start()?;
        let mut haproxy = Haproxy {
            process,
            frontend,
            config: config.to_path_buf(),
            log: log.to_path_buf(),
        };
        haproxy.wait_listening(START_TIMEOUT)?;
        Ok(haproxy)
    }

    /// Where clients connect.
    pub fn frontend(&self) -> SocketAddr {
        self.frontend
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The configuration file it runs.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The file its log (stderr) is appended to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What it has logged since it started.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Fails if it has exited, saying where its log is.
    pub fn check_alive(&mut self) -> Result<()> {
        self.process.check_alive()
    }

    /// Waits until the frontend accepts a connection; fails if HAProxy
    /// exits first (a configuration it refuses) or `timeout` passes.
    fn wait_listening(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            match TcpStream::connect_timeout(&self.frontend, Duration::from_millis(200)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => bail!(
                    "HAProxy does not accept connections on {} after {timeout:?} ({e}); its log is {}",
                    self.frontend,
                    self.log.display()
                ),
                Err(_) => thread::sleep(POLL),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, port).into()
    }

    #[test]
    fn the_shipped_config_gets_the_ports_given() {
        let backends = [
            (addr(41101), addr(41201)),
            (addr(41102), addr(41202)),
            (addr(41103), addr(41203)),
        ];
        let config = config(SHIPPED, addr(41000), &backends).unwrap();
        assert!(config.contains("    bind 127.0.0.1:41000\n"), "{config}");
        for n in 1..=3 {
            let line = format!("server hotsock{n} 127.0.0.1:4110{n} check port 4120{n}\n");
            assert!(config.contains(&line), "{config}");
        }
        // Nothing of the shipped addresses is left outside the comments.
        let settings: Vec<&str> = config
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        for port in ["50007", "5010", "910"] {
            assert!(
                !settings.iter().any(|l| l.contains(port)),
                "{port} in {settings:#?}"
            );
        }
        // Only those lines changed.
        assert_eq!(config.lines().count(), SHIPPED.lines().count());
    }

    #[test]
    fn the_shipped_tls_config_gets_the_ports_and_the_directory_given() {
        let backends = [
            (addr(41101), addr(41201)),
            (addr(41102), addr(41202)),
            (addr(41103), addr(41203)),
        ];
        let config = tls_config(TLS_SHIPPED, addr(41443), &backends, Path::new("/tmp/x")).unwrap();
        assert!(
            config.contains(
                "bind 127.0.0.1:41443 ssl crt /tmp/x/server.pem ca-file /tmp/x/clients-ca.pem"
            ),
            "{config}"
        );
        assert!(config.contains("send-proxy-v2-ssl-cn"), "{config}");
        assert!(!config.contains(TLS_DIR), "{config}");
        assert_eq!(config.lines().count(), TLS_SHIPPED.lines().count());
    }

    #[test]
    fn the_shipped_tls_passthrough_config_gets_the_ports_given() {
        let backends = [
            (addr(41101), addr(41201)),
            (addr(41102), addr(41202)),
            (addr(41103), addr(41203)),
        ];
        let config =
            tls_passthrough_config(TLS_PASSTHROUGH_SHIPPED, addr(41443), &backends).unwrap();
        assert!(config.contains("    bind 127.0.0.1:41443\n"), "{config}");
        assert!(config.contains("send-proxy-v2 check"), "{config}");
        // HAProxy passes TLS through: no certificate of its own.
        let settings: Vec<&str> = config
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        assert!(!settings.iter().any(|l| l.contains("ssl")), "{settings:#?}");
        for n in 1..=3 {
            let line = format!("server hotsock{n} 127.0.0.1:4110{n} check port 4120{n}\n");
            assert!(config.contains(&line), "{config}");
        }
        assert_eq!(
            config.lines().count(),
            TLS_PASSTHROUGH_SHIPPED.lines().count()
        );
    }

    #[test]
    fn a_config_without_the_lines_to_replace_is_refused() {
        let backends = [(addr(1), addr(2)); 3];
        let changed = SHIPPED.replace("bind 127.0.0.1:50007", "bind 127.0.0.1:6000");
        let error = config(&changed, addr(3), &backends).unwrap_err();
        assert!(
            error.to_string().contains("`bind 127.0.0.1:50007` once"),
            "{error}"
        );
        let error = config(SHIPPED, addr(3), &backends[..2]).unwrap_err();
        assert!(error.to_string().contains("three servers"), "{error}");
    }

    #[test]
    fn starts_on_a_free_port_and_is_killed_when_dropped() {
        let Ok(binary) = find() else {
            eprintln!("SKIPPED: haproxy is not installed (`make setup` installs it)");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        // Servers nobody listens on: HAProxy starts all the same.
        let nobody = addr(crate::free_port().unwrap());
        let mut haproxy = Haproxy::start(
            &binary,
            &[(nobody, nobody); 3],
            &dir.path().join("haproxy.cfg"),
            &dir.path().join("haproxy.log"),
        )
        .unwrap();
        haproxy.check_alive().unwrap();
        let written = std::fs::read_to_string(haproxy.config()).unwrap();
        assert!(written.contains(&format!("bind {}\n", haproxy.frontend())));
        assert_eq!(haproxy.log_path(), dir.path().join("haproxy.log"));
        let pid = haproxy.pid();
        drop(haproxy);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
