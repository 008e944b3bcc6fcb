//! A server under test as a child process: started, its addresses read from
//! the lines it prints on stdout, its stderr kept where it can be read, its
//! resident memory read from /proc, and killed when dropped.
//!
//! The address lines are hotsock's interface to scripts ([`LISTENING`],
//! [`ADMIN_LISTENING`]); the bench's native and Python echo servers print
//! the same `LISTENING` line so that one reader serves all of them.

use std::fs::OpenOptions;
use std::io::{BufRead as _, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use hotsock::server::http::Endpoint;
use hotsock::server::{ADMIN_LISTENING, LISTENING, METRICS_LISTENING};

/// Longest a server may take to announce its addresses unless
/// [`Launch::timeout`] says otherwise: hotsock compiles its handler before it
/// listens, which takes a fraction of a second for the echo handler.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the waits here look again: often enough that a test does not
/// notice, rarely enough to cost nothing.
const POLL: Duration = Duration::from_millis(20);

/// How long a server that closed its stdout gets to finish exiting, and its
/// stderr to be read to the end, before an error reports on it: the error
/// is only useful with the exit status and the last lines in it.
const SETTLE: Duration = Duration::from_secs(1);

/// Where a server's stderr goes.
#[derive(Debug, Clone)]
pub enum Stderr {
    /// Into memory, for [`ServerProcess::log`] and
    /// [`ServerProcess::wait_for_log`]: tests look for lines in it, and a
    /// failing test shows it.
    Capture,
    /// Appended to this file (created if need be), which outlives the
    /// server: the bench keeps its servers' logs next to its results.
    Append(PathBuf),
}

/// How to start a server: its command line, what it announces, where its
/// stderr goes. [`Launch::start`] starts it.
#[derive(Debug)]
pub struct Launch {
    command: Command,
    name: String,
    listeners: usize,
    admin: bool,
    metrics: bool,
    stderr: Stderr,
    timeout: Duration,
    die_with_parent: bool,
}

impl Launch {
    /// Starts `command` with stdin closed and stdout read here; by default it
    /// must announce one listener within [`DEFAULT_START_TIMEOUT`], and its
    /// stderr is captured. `command` should bind port 0 so that runs in
    /// parallel do not collide.
    pub fn new(command: Command) -> Self {
        let program = Path::new(command.get_program());
        let name = program
            .file_name()
            .unwrap_or(program.as_os_str())
            .to_string_lossy()
            .into_owned();
        Launch {
            command,
            name,
            listeners: 1,
            admin: false,
            metrics: false,
            stderr: Stderr::Capture,
            timeout: DEFAULT_START_TIMEOUT,
            die_with_parent: false,
        }
    }

    /// What errors call the server; the program's file name by default.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How many [`LISTENING`] lines to wait for: one per `--addr`; none for
    /// a program that announces nothing, such as HAProxy, which is then
    /// running, not necessarily listening, when [`Launch::start`] returns.
    pub fn listeners(mut self, count: usize) -> Self {
        self.listeners = count;
        self
    }

    /// Whether to wait for an [`ADMIN_LISTENING`] line too (`--admin`).
    pub fn admin(mut self, admin: bool) -> Self {
        self.admin = admin;
        self
    }

    /// Whether to wait for a [`METRICS_LISTENING`] line too (`--metrics`).
    pub fn metrics(mut self, metrics: bool) -> Self {
        self.metrics = metrics;
        self
    }

    /// Where its stderr goes.
    pub fn stderr(mut self, stderr: Stderr) -> Self {
        self.stderr = stderr;
        self
    }

    /// Longest it may take to print every address it was asked for.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether the kernel kills the server (`PR_SET_PDEATHSIG`) when the
    /// thread that started it exits, even if this process is killed
    /// outright and no `Drop` runs: the bench's servers must not linger and
    /// skew the next run. Only for servers started from a thread that
    /// outlives them, such as `main`.
    pub fn die_with_parent(mut self, die: bool) -> Self {
        self.die_with_parent = die;
        self
    }

    /// Starts the server and waits until it has announced every address
    /// asked for. Fails if it cannot start, exits first, prints anything
    /// else on stdout first, or takes longer than the timeout; the server
    /// is killed then.
    pub fn start(self) -> Result<ServerProcess> {
        let Launch {
            mut command,
            name,
            listeners,
            admin,
            metrics,
            stderr,
            timeout,
            die_with_parent,
        } = self;
        let (stderr, log) = match stderr {
            Stderr::Capture => (
                Stdio::piped(),
                Log::Captured {
                    text: Arc::default(),
                    reader: None,
                },
            ),
            Stderr::Append(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot open the log file {}", path.display()))?;
                // Where this server's part of the file starts, for `log()`.
                let start = file.metadata().map_or(0, |m| m.len());
                (Stdio::from(file), Log::File { path, start })
            }
        };
        if die_with_parent {
            let die_with_us = || {
                // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on
                // the calling process.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
                Ok(())
            };
            // SAFETY: the closure runs in the child between fork and exec,
            // and only makes one async-signal-safe system call.
            unsafe { command.pre_exec(die_with_us) };
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {name} (`{}`)",
                    command.get_program().to_string_lossy()
                )
            })?;
        let stdout = child.stdout.take();
        let captured = child.stderr.take();
        // From here on the server is killed on every way out.
        let mut server = ServerProcess {
            name,
            child,
            addrs: Vec::new(),
            names: Vec::new(),
            admin: None,
            metrics: None,
            log,
        };
        if let (Log::Captured { text, reader }, Some(stderr)) = (&mut server.log, captured) {
            let thread = capture(stderr, Arc::clone(text))
                .context("cannot start a thread to read its stderr")?;
            *reader = Some(thread);
        }
        let Some(stdout) = stdout else {
            bail!("{} started without a stdout pipe", server.name);
        };
        let lines = read_lines(stdout).context("cannot start a thread to read its stdout")?;
        let deadline = Instant::now() + timeout;
        while server.addrs.len() < listeners
            || admin && server.admin.is_none()
            || metrics && server.metrics.is_none()
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let missing = match (server.addrs.len() < listeners, server.admin.is_none()) {
                        (true, _) => LISTENING,
                        (false, true) if admin => ADMIN_LISTENING,
                        _ => METRICS_LISTENING,
                    };
                    bail!(
                        "{} printed no `{}` line within {timeout:?}; {}",
                        server.name,
                        missing.trim_end(),
                        server.where_stderr_is()
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Its stdout is closed: it has exited, or is about to.
                    let status = server.wait_settled(SETTLE);
                    bail!(
                        "{} exited before listening ({}); {}",
                        server.name,
                        status.map_or_else(|| "its stdout closed".into(), |s| s.to_string()),
                        server.where_stderr_is()
                    );
                }
            };
            if let Some(endpoint) = line.strip_prefix(ADMIN_LISTENING) {
                server.admin = Some(server.parse_endpoint(endpoint)?);
            } else if let Some(addr) = line.strip_prefix(METRICS_LISTENING) {
                server.metrics = Some(server.parse_addr(addr)?);
            } else if let Some(rest) = line.strip_prefix(LISTENING) {
                // `IP:PORT`, or `IP:PORT (listener NAME)` with a config.
                let (addr, name) = match rest.split_once(" (listener ") {
                    Some((addr, name)) => (addr, name.strip_suffix(')').map(str::to_string)),
                    None => (rest, None),
                };
                let addr = server.parse_addr(addr)?;
                server.addrs.push(addr);
                server.names.push(name);
            } else {
                // stdout is the interface scripts read: nothing else belongs there.
                bail!(
                    "{} printed {line:?} on stdout before it was listening, where only its address lines belong",
                    server.name
                );
            }
        }
        Ok(server)
    }
}

/// A running server, started by [`Launch::start`]. Dropping it kills the
/// process and waits for it.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Child,
    addrs: Vec<SocketAddr>,
    /// The listener each address belongs to, when the server names them.
    names: Vec<Option<String>>,
    admin: Option<Endpoint>,
    metrics: Option<SocketAddr>,
    log: Log,
}

/// Where [`ServerProcess::log`] reads from.
#[derive(Debug)]
enum Log {
    /// Stderr read into memory by `reader`.
    Captured {
        text: Arc<Mutex<String>>,
        reader: Option<JoinHandle<()>>,
    },
    /// Stderr appended to `path`; this server's part starts at `start`.
    File { path: PathBuf, start: u64 },
}

impl ServerProcess {
    /// What errors call it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The addresses it announced with [`LISTENING`] lines, in order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The address announced for the listener `name` (`listening on ADDR
    /// (listener NAME)`), if any.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.names
            .iter()
            .position(|n| n.as_deref() == Some(name))
            .map(|i| self.addrs[i])
    }

    /// Where it announced its metrics with a [`METRICS_LISTENING`] line, if
    /// it was asked to wait for one ([`Launch::metrics`]).
    pub fn metrics(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Where it announced its admin API with an [`ADMIN_LISTENING`] line (a
    /// TCP address or a Unix socket), if it was asked to wait for one
    /// ([`Launch::admin`]).
    pub fn admin(&self) -> Option<&Endpoint> {
        self.admin.as_ref()
    }

    /// Everything it has written to stderr so far: captured, or read back
    /// from its part of the log file.
    pub fn log(&self) -> String {
        match &self.log {
            Log::Captured { text, .. } => {
                text.lock().unwrap_or_else(PoisonError::into_inner).clone()
            }
            Log::File { path, start } => match std::fs::read(path) {
                Ok(bytes) => {
                    let start = usize::try_from(*start)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    String::from_utf8_lossy(&bytes[start..]).into_owned()
                }
                Err(e) => format!("(cannot read {}: {e})", path.display()),
            },
        }
    }

    /// Waits until its stderr has a line containing every one of `needles`,
    /// and returns that line.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return Ok(line.to_string());
            }
            if Instant::now() >= deadline {
                bail!(
                    "no line of {}'s stderr has all of {needles:?} after {timeout:?}; its stderr:\n{log}",
                    self.name
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Its resident memory, VmRSS in /proc/PID/status, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {path}: has {} exited?", self.name))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS line in {path}"))
    }

    /// Sends it `signal` (`libc::SIGTERM`, ...).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = i32::try_from(self.pid()).context("a pid that is not a pid_t")?;
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!(
                "cannot send signal {signal} to {} (pid {pid}): {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Waits for it to exit on its own, and for its stderr to be read to
    /// the end, so that [`ServerProcess::log`] has its last words.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        match self.wait_settled(timeout) {
            Some(status) => Ok(status),
            None => bail!(
                "{} did not exit within {timeout:?}; {}",
                self.name,
                self.where_stderr_is()
            ),
        }
    }

    /// Fails if it has exited: a server that died mid-run makes whatever was
    /// measured or tested meaningless.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} has exited ({status}); {}",
                self.name,
                self.where_stderr_is()
            ),
            Err(e) => bail!("cannot check on {}: {e}", self.name),
        }
    }

    /// Waits up to `timeout` for it to exit and then for its captured
    /// stderr to reach its end; its exit status, if it exited.
    fn wait_settled(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
                _ => break None,
            }
        };
        if let (
            Some(_),
            Log::Captured {
                reader: Some(reader),
                ..
            },
        ) = (status, &self.log)
        {
            // Bounded, since a child of the server could hold the pipe open.
            let deadline = Instant::now() + SETTLE;
            while !reader.is_finished() && Instant::now() < deadline {
                thread::sleep(POLL);
            }
        }
        status
    }

    /// Where to read its stderr, for the end of an error message.
    fn where_stderr_is(&self) -> String {
        match &self.log {
            Log::File { path, .. } => format!("its stderr is in {}", path.display()),
            Log::Captured { .. } => match self.log() {
                log if log.is_empty() => "its stderr is empty".into(),
                log => format!("its stderr:\n{log}"),
            },
        }
    }

    fn parse_endpoint(&self, text: &str) -> Result<Endpoint> {
        text.trim().parse().map_err(|e| {
            anyhow::anyhow!(
                "{} announced an admin API it cannot be reached at: {e}",
                self.name
            )
        })
    }

    fn parse_addr(&self, text: &str) -> Result<SocketAddr> {
        text.trim().parse().with_context(|| {
            format!(
                "{} announced an address that is not IP:PORT: {text:?}",
                self.name
            )
        })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Errors mean it has already exited and been waited for: nothing to do.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the child's stdout lines on a thread of their own and sends them on
/// a channel. It goes on reading after the address lines, when nobody
/// listens, so that the server never blocks on, or dies of, a full or closed
/// pipe.
fn read_lines(stdout: impl Read + Send + 'static) -> std::io::Result<mpsc::Receiver<String>> {
    let (send, receive) = mpsc::channel();
    thread::Builder::new()
        .name("server-stdout".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                // Once the addresses are known nobody receives: drop the rest.
                let _ = send.send(line);
            }
        })?;
    Ok(receive)
}

/// Appends the child's stderr to `text` as it comes, on a thread of its own
/// that ends at its end. Bytes that are not UTF-8 are replaced, not a reason
/// to stop reading.
fn capture(
    stderr: impl Read + Send + 'static,
    text: Arc<Mutex<String>>,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("server-stderr".into())
        .spawn(move || {
            let mut stderr = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(stderr.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let mut text = text.lock().unwrap_or_else(PoisonError::into_inner);
                text.push_str(&String::from_utf8_lossy(&line));
                if !line.ends_with(b"\n") {
                    text.push('\n');
                }
                line.clear();
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in server: a shell script that prints what `script` says.
    fn sh(script: &str) -> Launch {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        Launch::new(command).timeout(Duration::from_secs(10))
    }

    #[test]
    fn reads_the_announced_addresses_and_keeps_stderr() {
        let script = format!(
            "echo starting >&2; echo '{LISTENING}127.0.0.1:7001'; echo '{LISTENING}[::1]:7002'; \
             echo '{ADMIN_LISTENING}127.0.0.1:7003'; echo up >&2; exec sleep 60"
        );
        let mut server = sh(&script)
            .name("stand-in")
            .listeners(2)
            .admin(true)
            .start()
            .expect("it starts");
        assert_eq!(server.name(), "stand-in");
        let addrs: Vec<String> = server.addrs().iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:7001", "[::1]:7002"]);
        assert_eq!(
            server.admin(),
            Some(&Endpoint::Tcp("127.0.0.1:7003".parse().unwrap()))
        );
        assert_eq!(
            server
                .wait_for_log(&["up"], Duration::from_secs(5))
                .unwrap(),
            "up"
        );
        assert!(server.log().starts_with("starting\n"));
        assert!(server.rss_kib().unwrap() > 0);
        server.check_alive().unwrap();
        server.signal(libc::SIGTERM).unwrap();
        let status = server.wait_exit(Duration::from_secs(5)).unwrap();
        assert!(!status.success());
        let died = server.check_alive().unwrap_err().to_string();
        assert!(died.contains("stand-in has exited"), "{died}");
        assert!(died.contains("starting\nup\n"), "{died}");
    }

    #[test]
    fn says_why_a_server_that_exits_first_did_not_start() {
        let error = sh("echo 'no handler here' >&2; exit 3")
            .start()
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("sh exited before listening (exit status: 3)"),
            "{error}"
        );
        assert!(error.ends_with("its stderr:\nno handler here\n"), "{error}");
    }

    #[test]
    fn gives_up_on_a_silent_server() {
        let started = Instant::now();
        let error = sh("exec sleep 60")
            .timeout(Duration::from_millis(200))
            .start()
            .unwrap_err()
            .to_string();
        let expected = format!(
            "sh printed no `{}` line within 200ms; its stderr is empty",
            LISTENING.trim_end()
        );
        assert_eq!(error, expected);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn waits_for_the_admin_line_when_asked() {
        let error = sh(&format!("echo '{LISTENING}127.0.0.1:7001'; exec sleep 60"))
            .admin(true)
            .timeout(Duration::from_millis(200))
            .start()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("no `{}` line", ADMIN_LISTENING.trim_end())),
            "{error}"
        );
    }

    #[test]
    fn refuses_other_output_before_the_addresses() {
        let error = sh("echo 'Serving on port 7001'; exec sleep 60")
            .start()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("printed \"Serving on port 7001\" on stdout"),
            "{error}"
        );
    }

    #[test]
    fn appends_stderr_to_a_file_and_reads_back_its_own_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.stderr");
        std::fs::write(&path, "an earlier run\n").unwrap();
        let script =
            format!("echo 'this run' >&2; echo '{LISTENING}127.0.0.1:7001'; exec sleep 60");
        let server = sh(&script)
            .stderr(Stderr::Append(path.clone()))
            .die_with_parent(true)
            .start()
            .expect("it starts");
        server
            .wait_for_log(&["this run"], Duration::from_secs(5))
            .unwrap();
        assert_eq!(server.log(), "this run\n");
        drop(server);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "an earlier run\nthis run\n"
        );
        let error = sh("exit 1")
            .stderr(Stderr::Append(path.clone()))
            .start()
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with(&format!("its stderr is in {}", path.display())),
            "{error}"
        );
    }

    #[test]
    fn says_when_a_program_does_not_exist() {
        let error = Launch::new(Command::new("/nonexistent/server"))
            .start()
            .unwrap_err();
        assert!(
            error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound),
            "{error:#}"
        );
        assert!(format!("{error:#}").starts_with("cannot start server (`/nonexistent/server`): "));
    }
}
