//! The three servers under test, as child processes: starting each on
//! 127.0.0.1:0, learning its address from its `listening on` line, reading
//! its resident memory, and stopping it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

/// Longest a server may take to print its address. hotsock compiles its
/// handler first (`--no-cache`), which takes a fraction of a second here.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// One of the three servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// hotsock, serving the default echo handler component.
    Hotsock,
    /// `native-echo`: the same server in plain Rust, no sandbox.
    Native,
    /// `python_echo_server.py`: `socketserver.ThreadingTCPServer`.
    Python,
}

impl Kind {
    /// All three, in the order of the first round.
    pub const ALL: [Kind; 3] = [Kind::Hotsock, Kind::Native, Kind::Python];

    /// The name used in the table, the JSON and log file names.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hotsock => "hotsock",
            Kind::Native => "native",
            Kind::Python => "python",
        }
    }
}

/// Where the servers and handlers are: the bench's command line.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The hotsock binary (release build).
    pub hotsock: PathBuf,
    /// The `native-echo` binary.
    pub native: PathBuf,
    /// The handler hotsock serves: the default echo component.
    pub handler: PathBuf,
    /// The handler swapped in during the hot swap scenario.
    pub swap_handler: PathBuf,
    /// The Python interpreter.
    pub python: PathBuf,
    /// The Python server script.
    pub python_server: PathBuf,
}

impl Programs {
    /// Checks that every file is there before anything starts, and says
    /// what builds it if not.
    pub fn check(&self) -> Result<()> {
        let build = "run `make build`";
        let bench = "run `cargo build --release -p hotsock-bench` (`make bench` does)";
        for (path, what, fix) in [
            (&self.hotsock, "the hotsock binary (--hotsock)", build),
            (&self.native, "the native-echo binary (--native)", bench),
            (&self.handler, "the echo handler (--handler)", build),
            (
                &self.swap_handler,
                "the handler to swap in (--swap-handler)",
                build,
            ),
            (
                &self.python_server,
                "the Python server (--python-server)",
                "run the bench from the repository root",
            ),
        ] {
            if !path.is_file() {
                let cwd = std::env::current_dir()
                    .map_or_else(|_| "?".into(), |d| d.display().to_string());
                let relative = match path.is_relative() {
                    true => format!(" (relative to {cwd}: run from the repository root)"),
                    false => String::new(),
                };
                bail!(
                    "{what} is missing: no file at {}{relative}; {fix}",
                    path.display()
                );
            }
        }
        // Fail now rather than minutes into the run.
        let python = Command::new(&self.python)
            .args(["-c", "import socketserver"])
            .stdin(Stdio::null())
            .output();
        match python {
            Ok(output) if output.status.success() => Ok(()),
            Ok(output) => bail!(
                "`{} -c 'import socketserver'` failed ({}): pass a Python 3 interpreter with --python",
                self.python.display(),
                output.status
            ),
            Err(e) => bail!(
                "cannot run `{}`: {e}; pass a Python 3 interpreter with --python",
                self.python.display()
            ),
        }
    }

    /// The command line that starts `kind`, and the environment it needs.
    fn command(&self, kind: Kind) -> Command {
        match kind {
            Kind::Hotsock => {
                let mut command = Command::new(&self.hotsock);
                command
                    .args(["serve", "--addr", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
                    // The hot swap swaps in slow-echo, which then replies at once.
                    .args(["--env", "ECHO_DELAY=0"])
                    // Every start, and every swap, really compiles.
                    .arg("--no-cache")
                    .arg(&self.handler)
                    // No per-connection info lines: the other two servers log
                    // nothing per connection either.
                    .env("RUST_LOG", "warn");
                command
            }
            Kind::Native => {
                let mut command = Command::new(&self.native);
                command.args(["--addr", "127.0.0.1:0"]);
                command
            }
            Kind::Python => {
                let mut command = Command::new(&self.python);
                // -u: unbuffered, as a second safeguard for the address line.
                command.arg("-u").arg(&self.python_server);
                command
            }
        }
    }

    /// The command line that starts `kind`, as it would be typed, for the JSON.
    pub fn command_line(&self, kind: Kind) -> String {
        let command = self.command(kind);
        let env = command
            .get_envs()
            .filter_map(|(key, value)| Some(format!("{}={}", key.to_str()?, value?.to_str()?)));
        let words = std::iter::once(command.get_program())
            .chain(command.get_args())
            .map(|word| word.to_string_lossy().into_owned());
        env.chain(words).collect::<Vec<_>>().join(" ")
    }

    /// The program `kind` runs, for error messages.
    fn program(&self, kind: Kind) -> &Path {
        match kind {
            Kind::Hotsock => &self.hotsock,
            Kind::Native => &self.native,
            Kind::Python => &self.python,
        }
    }
}

/// A running server. Dropping it kills the process and waits for it.
pub struct Server {
    /// Which server this is.
    pub kind: Kind,
    /// Where it accepts clients.
    pub addr: SocketAddr,
    /// hotsock's admin API.
    pub admin: Option<SocketAddr>,
    child: Child,
}

impl Server {
    /// Starts `kind` on 127.0.0.1:0 with its stderr appended to `log`, and
    /// waits until it prints where it listens.
    pub fn start(kind: Kind, programs: &Programs, log: &Path) -> Result<Server> {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open the log file {}", log.display()))?;
        let mut command = programs.command(kind);
        // SAFETY: the closure runs in the child between fork and exec, and
        // only makes one async-signal-safe system call.
        unsafe {
            command.pre_exec(|| {
                // The server dies with the bench, even one killed outright
                // (say, by `timeout`), instead of lingering and skewing the
                // next run. Servers are started from the main thread, whose
                // exit is what the kernel watches.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound if kind == Kind::Python => anyhow!(
                    "cannot run `{}`: {e}; pass a Python 3 interpreter with --python",
                    programs.python.display()
                ),
                _ => anyhow!(
                    "cannot start {} (`{}`): {e}",
                    kind.name(),
                    programs.program(kind).display()
                ),
            })?;
        let Some(stdout) = child.stdout.take() else {
            bail!("{} started without a stdout pipe", kind.name());
        };
        let mut server = Server {
            kind,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            child,
        };
        let lines = read_lines(stdout).context("cannot start a thread to read its stdout")?;
        let needs_admin = kind == Kind::Hotsock;
        loop {
            let line = match lines.recv_timeout(STARTUP_TIMEOUT) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "{} printed no `listening on` line within {STARTUP_TIMEOUT:?}; see {}",
                    kind.name(),
                    log.display()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Its stdout is closed: it has exited, or is about to.
                    thread::sleep(Duration::from_millis(100));
                    let status = match server.child.try_wait() {
                        Ok(Some(status)) => status.to_string(),
                        _ => "its stdout closed".to_string(),
                    };
                    bail!(
                        "{} exited before listening ({status}); its stderr is in {}",
                        kind.name(),
                        log.display()
                    );
                }
            };
            if let Some(addr) = line.strip_prefix("admin listening on ") {
                server.admin = Some(parse_addr(kind, addr)?);
            } else if let Some(addr) = line.strip_prefix("listening on ") {
                server.addr = parse_addr(kind, addr)?;
            }
            if server.addr.port() != 0 && (server.admin.is_some() || !needs_admin) {
                return Ok(server);
            }
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory, VmRSS in /proc/PID/status, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {path}: has {} exited?", self.kind.name()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS line in {path}"))
    }

    /// Whether the process is still running: a server that died mid-scenario
    /// makes its numbers meaningless, and the bench says so.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("{} exited during the bench ({status})", self.kind.name()),
            Err(e) => bail!("cannot check on {}: {e}", self.kind.name()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Nothing to drain: every scenario has closed its connections.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_addr(kind: Kind, text: &str) -> Result<SocketAddr> {
    text.trim().parse().with_context(|| {
        format!(
            "{} printed an address the bench cannot read: {text:?}",
            kind.name()
        )
    })
}

/// Forwards the child's stdout lines on a channel, and keeps reading after
/// the address lines so the child never blocks on (or dies of) a full or
/// closed pipe.
fn read_lines(
    stdout: impl std::io::Read + Send + 'static,
) -> std::io::Result<mpsc::Receiver<String>> {
    let (send, receive) = mpsc::channel();
    thread::Builder::new()
        .name("server-stdout".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                // Once the address is known nobody listens: drop the rest.
                let _ = send.send(line);
            }
        })?;
    Ok(receive)
}

/// Creates (or empties) the stderr log of each server in `dir`.
pub fn reset_logs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for name in log_names() {
        let path = dir.join(name);
        File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    }
    Ok(())
}

/// The log file of each server, and of the hot swap's hotsock.
pub fn log_names() -> [&'static str; 4] {
    [
        "hotsock.stderr",
        "native.stderr",
        "python.stderr",
        "hotsock-swap.stderr",
    ]
}

/// The log file of `kind` in `dir`.
pub fn log_path(dir: &Path, kind: Kind) -> PathBuf {
    dir.join(format!("{}.stderr", kind.name()))
}
