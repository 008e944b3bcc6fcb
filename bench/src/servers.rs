//! The three servers under test, as child processes: the command line that
//! starts each on 127.0.0.1:0, and its log file. Starting it, learning its
//! address from the line it announces it with, reading its resident memory
//! and stopping it is testkit's [`ServerProcess`].

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use testkit::http::Endpoint;
use testkit::{Launch, ServerProcess, Stderr};

/// Longest a server may take to print its address. hotsock compiles its
/// handler first (`--no-cache`), which takes a fraction of a second here.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

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

/// Where the servers and handlers are: the bench's command line, each path
/// relative to the current directory (the repository root).
#[derive(Debug, Clone, clap::Args)]
pub struct Programs {
    /// hotsock binary
    #[arg(long, value_name = "PATH", default_value = "target/release/hotsock")]
    pub hotsock: PathBuf,
    /// native-echo binary
    #[arg(
        long,
        value_name = "PATH",
        default_value = "target/release/native-echo"
    )]
    pub native: PathBuf,
    /// the echo handler component hotsock serves and the instantiate
    /// micro-benchmark compiles
    #[arg(
        long,
        value_name = "PATH",
        default_value = "target/wasm32-wasip2/release/guest_handler.wasm"
    )]
    pub handler: PathBuf,
    /// the component swapped in during the hot swap
    #[arg(
        long,
        value_name = "PATH",
        default_value = "target/wasm32-wasip2/release/slow_echo.wasm"
    )]
    pub swap_handler: PathBuf,
    /// the test fixture that answers `incr NAME KEY` (`make guests` builds
    /// it), served for the key-value scenario
    #[arg(
        long,
        value_name = "PATH",
        default_value = "target/wasm32-wasip2/release/kit.wasm"
    )]
    pub kit: PathBuf,
    /// Python 3 interpreter
    #[arg(long, value_name = "PATH", default_value = "python3")]
    pub python: PathBuf,
    /// the Python server
    #[arg(
        long,
        value_name = "PATH",
        default_value = "bench/python_echo_server.py"
    )]
    pub python_server: PathBuf,
}

impl Programs {
    /// Checks that every file is there before anything starts, and says
    /// what builds it if not.
    pub fn check(&self) -> Result<()> {
        let build = "run `make build`";
        let bench = "run `cargo build --release -p hotsock-bench` (`make bench` does)";
        self.check_hotsock()?;
        require_file(&self.native, "the native-echo binary (--native)", bench)?;
        require_file(
            &self.swap_handler,
            "the handler to swap in (--swap-handler)",
            build,
        )?;
        require_file(
            &self.python_server,
            "the Python server (--python-server)",
            "run the bench from the repository root",
        )?;
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

    /// Checks that hotsock and its handler are there: all the fleet bench
    /// runs.
    pub fn check_hotsock(&self) -> Result<()> {
        let build = "run `make build`";
        require_file(&self.hotsock, "the hotsock binary (--hotsock)", build)?;
        require_file(&self.handler, "the echo handler (--handler)", build)
    }

    /// Checks that hotsock and the kit fixture are there: what the
    /// key-value scenario serves.
    pub fn check_kit(&self) -> Result<()> {
        let build = "run `make build`";
        require_file(&self.hotsock, "the hotsock binary (--hotsock)", build)?;
        require_file(
            &self.kit,
            "the kit fixture (--kit)",
            "run `make guests` (`make bench` builds it)",
        )
    }

    /// hotsock as the bench runs it, listening on `addr`, with its admin
    /// API on the Unix socket `admin`: one command line for every hotsock
    /// the bench starts, so that they are measured alike.
    pub fn hotsock_command(&self, addr: &str, admin: &Path) -> Command {
        let mut command = Command::new(&self.hotsock);
        command
            .args(["serve", "--addr", addr, "--admin"])
            // A Unix socket, private to this user: the admin API's
            // recommended form, which needs no token.
            .arg(admin)
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

    /// The command line that starts `kind`, and the environment it needs.
    pub fn command(&self, kind: Kind) -> Command {
        match kind {
            Kind::Hotsock => self.hotsock_command("127.0.0.1:0", &admin_socket()),
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
        command_line(&self.command(kind))
    }
}

/// `command` as it would be typed, environment first, for the JSON.
pub fn command_line(command: &Command) -> String {
    let env = command
        .get_envs()
        .filter_map(|(key, value)| Some(format!("{}={}", key.to_str()?, value?.to_str()?)));
    let words = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| word.to_string_lossy().into_owned());
    env.chain(words).collect::<Vec<_>>().join(" ")
}

/// Fails unless `path` is a file, saying `what` is missing and `fix`.
fn require_file(path: &Path, what: &str, fix: &str) -> Result<()> {
    if path.is_file() {
        return Ok(());
    }
    let cwd = std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string());
    let relative = match path.is_relative() {
        true => format!(" (relative to {cwd}: run from the repository root)"),
        false => String::new(),
    };
    bail!(
        "{what} is missing: no file at {}{relative}; {fix}",
        path.display()
    )
}

/// A running server. Dropping it kills the process and waits for it.
pub struct Server {
    /// Which server this is.
    pub kind: Kind,
    /// Where it accepts clients.
    pub addr: SocketAddr,
    /// hotsock's admin API.
    pub admin: Option<Endpoint>,
    process: ServerProcess,
}

impl Server {
    /// Starts `kind` on 127.0.0.1:0 with its stderr appended to `log`, and
    /// waits until it prints where it listens.
    pub fn start(kind: Kind, programs: &Programs, log: &Path) -> Result<Server> {
        Self::start_with(kind, programs, log, &[])
    }

    /// Like [`Server::start`], with `extra` arguments after the usual ones.
    pub fn start_with(
        kind: Kind,
        programs: &Programs,
        log: &Path,
        extra: &[String],
    ) -> Result<Server> {
        let mut command = programs.command(kind);
        command.args(extra);
        let process = Launch::new(command)
            .name(kind.name())
            .admin(kind == Kind::Hotsock)
            .stderr(Stderr::Append(log.to_path_buf()))
            .timeout(STARTUP_TIMEOUT)
            // The server dies with the bench, even one killed outright
            // (say, by `timeout`), instead of lingering and skewing the
            // next run. Servers are started from the main thread, whose
            // exit is what the kernel watches.
            .die_with_parent(true)
            .start()?;
        let Some(&addr) = process.addrs().first() else {
            bail!("{} announced no address", kind.name());
        };
        Ok(Server {
            kind,
            addr,
            admin: process.admin().cloned(),
            process,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The server's resident memory, VmRSS in /proc/PID/status, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        self.process.rss_kib()
    }

    /// Whether the process is still running: a server that died mid-scenario
    /// makes its numbers meaningless, and the bench says so.
    pub fn check_alive(&mut self) -> Result<()> {
        self.process.check_alive()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The server is killed, not stopped, so it cannot remove its socket.
        if let Some(Endpoint::Unix(path)) = &self.admin {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The Unix socket the bench's hotsock serves its admin API on: one at a
/// time, so one path per bench process (a stale one is replaced by hotsock).
fn admin_socket() -> PathBuf {
    std::env::temp_dir().join(format!("hotsock-bench-{}.sock", std::process::id()))
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

/// The log file of each server, of the hot swap's hotsock and of the
/// key-value scenario's.
pub fn log_names() -> [&'static str; 5] {
    [
        "hotsock.stderr",
        "native.stderr",
        "python.stderr",
        "hotsock-swap.stderr",
        crate::keyvalue::LOG,
    ]
}

/// The log file of `kind` in `dir`.
pub fn log_path(dir: &Path, kind: Kind) -> PathBuf {
    dir.join(format!("{}.stderr", kind.name()))
}
