//! Starting the real server and talking to it.

#![allow(dead_code)] // each test module uses its own subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use testkit::http::{Client, Endpoint, Response};
use testkit::{Launch, ServerProcess};

/// Upper bound on any single wait in the tests, so a broken server fails a
/// test instead of hanging it.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound on a server's start: compiling an 18 MB Python handler takes
/// tens of seconds on a busy two-core machine when it is not cached yet.
pub const START_TIMEOUT: Duration = Duration::from_secs(180);

/// The path of a guest component, built by `make test` into the workspace's
/// target directory (found from this test binary's own path, so a custom
/// `CARGO_TARGET_DIR` works too).
pub fn wasm(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/tests-<hash>
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary is inside a target directory");
    let path = target
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `make test`, which builds the guest components before the tests",
        path.display()
    );
    path
}

/// The `hotsock` binary under test.
pub fn hotsock() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hotsock"))
}

/// A running `hotsock serve`, killed when dropped.
pub struct Server {
    process: ServerProcess,
    /// The addresses it printed as [`hotsock::server::LISTENING`] lines, in order.
    pub addrs: Vec<SocketAddr>,
    /// The address it printed as an [`hotsock::server::ADMIN_LISTENING`]
    /// line, with `--admin`.
    pub admin: Option<Endpoint>,
    /// The admin token, made up for a TCP `--admin` given no token file.
    pub token: Option<String>,
    /// Holds the token file.
    _token_dir: Option<tempfile::TempDir>,
    /// Its `--state-dir`, unless the test chose one: every server starts
    /// with empty key-value buckets of its own.
    _state_dir: tempfile::TempDir,
}

/// The token a test server's TCP admin API gets unless the test brings its own.
const TEST_TOKEN: &str = "test-token-0123456789abcdef";

impl Server {
    /// Serves the named guest component on 127.0.0.1:0.
    pub fn start(guest: &str) -> Self {
        Self::start_with(guest, &[])
    }

    /// Serves the named guest with extra `serve` options; listens on
    /// 127.0.0.1:0 unless `args` has an `--addr` of its own.
    pub fn start_with(guest: &str, args: &[&str]) -> Self {
        Self::start_path(&wasm(guest), args)
    }

    /// Serves the handler component at `handler`, like [`Server::start_with`].
    /// A TCP `--admin` without `--admin-token-file` gets a token file made up
    /// here, which [`Server::http`], [`Server::status`] and
    /// [`Server::admin_command`] then send.
    pub fn start_path(handler: &Path, args: &[&str]) -> Self {
        let listeners = args.iter().filter(|a| **a == "--addr").count();
        Self::launch(hotsock(), Some(handler), args, listeners.max(1))
    }

    /// Like [`Server::start_path`], with the `hotsock` binary at `binary`
    /// (a copy, for a test that replaces it on disk).
    pub fn start_binary(binary: &Path, handler: &Path, args: &[&str]) -> Self {
        let listeners = args.iter().filter(|a| **a == "--addr").count();
        Self::launch(Command::new(binary), Some(handler), args, listeners.max(1))
    }

    /// Serves the config file `config`, with extra `serve` options, waiting
    /// for its `listeners` addresses to be announced.
    pub fn start_config(config: &Path, listeners: usize, args: &[&str]) -> Self {
        let config = config.to_str().expect("a UTF-8 path");
        let mut all = vec!["--config", config];
        all.extend_from_slice(args);
        Self::launch(hotsock(), None, &all, listeners)
    }

    fn launch(mut cmd: Command, handler: Option<&Path>, args: &[&str], listeners: usize) -> Self {
        cmd.arg("serve").args(args);
        let tcp_admin = args
            .windows(2)
            .any(|w| w[0] == "--admin" && w[1].parse::<SocketAddr>().is_ok());
        let (token, token_dir) = match tcp_admin && !args.contains(&"--admin-token-file") {
            true => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let file = dir.path().join("admin.token");
                std::fs::write(&file, TEST_TOKEN).expect("write the token");
                let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
                std::fs::set_permissions(&file, private).expect("chmod the token");
                cmd.arg("--admin-token-file").arg(&file);
                (Some(TEST_TOKEN.to_string()), Some(dir))
            }
            false => (None, None),
        };
        let addr_given = args.contains(&"--addr");
        if let Some(handler) = handler {
            if !addr_given {
                cmd.args(["--addr", "127.0.0.1:0"]);
            }
            cmd.arg(handler);
        }
        cmd.env("RUST_LOG", "info");
        let state_dir = tempfile::tempdir().expect("a temporary directory");
        cmd.env("STATE_DIRECTORY", state_dir.path());
        let process = must(
            Launch::new(cmd)
                .listeners(listeners)
                .admin(args.contains(&"--admin"))
                .metrics(args.contains(&"--metrics"))
                .timeout(START_TIMEOUT)
                .start(),
        );
        Server {
            addrs: process.addrs().to_vec(),
            admin: process.admin().cloned(),
            token,
            _token_dir: token_dir,
            _state_dir: state_dir,
            process,
        }
    }

    /// The address of the listener called `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.process
            .listener(name)
            .unwrap_or_else(|| panic!("no listener {name} in {:?}", self.addrs))
    }

    /// The metrics listener's address; the server must have been started
    /// with `--metrics`.
    pub fn metrics(&self) -> SocketAddr {
        self.process.metrics().expect("started with --metrics")
    }

    /// The first listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// A new client connection to the first listener.
    pub fn connect(&self) -> TcpStream {
        connect(self.addr())
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Waits until the log has a line containing every one of `needles`, and
    /// returns that line.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        must(self.process.wait_for_log(needles, TIMEOUT))
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, signal: i32) {
        must(self.process.signal(signal));
    }

    /// Waits for the server to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        must(self.process.wait_exit(timeout))
    }
}

/// The value of a testkit result, or a test failure with its whole chain of
/// causes (testkit's errors end with the server's stderr, or where it is).
fn must<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Connects with timeouts, so a silent server fails the test instead of hanging it.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect to hotsock");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// Reads until `done` holds for everything read so far; panics on EOF or timeout first.
pub fn read_until(stream: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0; 64 * 1024];
    while !done(&buf) {
        let n = stream
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("reading a reply failed after {} bytes: {e}", buf.len()));
        assert!(
            n > 0,
            "connection closed after {} bytes: {:?}",
            buf.len(),
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    buf
}

/// True once the peer has closed the connection (EOF or reset), after
/// discarding anything it sent first.
pub fn is_closed(stream: &mut TcpStream) -> bool {
    let mut chunk = [0; 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Sends a message to the `probe` fixture and returns its reply.
pub fn ask(stream: &mut TcpStream, message: &str) -> String {
    stream
        .write_all(message.as_bytes())
        .expect("send to hotsock");
    reply(stream)
}

/// Reads one reply of the `probe` fixture, without its newline.
pub fn reply(stream: &mut TcpStream) -> String {
    let reply = read_until(stream, |b| b.ends_with(b"\n"));
    String::from_utf8(reply)
        .expect("probe replies in UTF-8")
        .trim_end()
        .to_string()
}

/// Sends `payload` to the default echo handler and returns what it echoed,
/// unwrapped from its `Echo=>... at ...` replies, once all of it is back.
pub fn echo(stream: &mut TcpStream, payload: &[u8]) -> Vec<Vec<u8>> {
    let mut writer = stream.try_clone().expect("clone the socket");
    let payload_len = payload.len();
    let payload = payload.to_vec();
    // Write from another thread: the replies to a large payload would fill
    // the socket buffers while we are still writing.
    let sending = thread::spawn(move || writer.write_all(&payload));
    let replies = read_until(stream, |b| {
        echo_chunks(b)
            .is_some_and(|chunks| chunks.iter().map(|c| c.len()).sum::<usize>() == payload_len)
    });
    sending.join().unwrap().expect("send to hotsock");
    echo_chunks(&replies).expect("whole replies")
}

/// Splits a stream of `Echo=>{chunk} at {ctime}` replies into their chunks.
/// A chunk's trailing line ending comes after the time, and is put back.
/// `None` unless it is a whole number of well-formed replies.
pub fn echo_chunks(mut stream: &[u8]) -> Option<Vec<Vec<u8>>> {
    const SUFFIX: usize = " at ".len() + CTIME_LEN;
    let mut chunks = Vec::new();
    while !stream.is_empty() {
        stream = stream.strip_prefix(b"Echo=>")?;
        let (end, eol) = (0..=stream.len().checked_sub(SUFFIX)?).find_map(|i| {
            let rest = &stream[i + SUFFIX..];
            let eol = [&b"\r\n"[..], b"\n", b""]
                .into_iter()
                .find(|eol| rest.starts_with(eol))?;
            let after = &rest[eol.len()..];
            (stream[i..].starts_with(b" at ")
                && is_ctime(&stream[i + 4..i + SUFFIX])
                && (after.is_empty() || after.starts_with(b"Echo=>")))
            .then_some((i, eol))
        })?;
        chunks.push([&stream[..end], eol].concat());
        stream = &stream[end + SUFFIX + eol.len()..];
    }
    Some(chunks)
}

const CTIME_LEN: usize = "Mon Nov 23 04:12:00 2026".len();

/// True for a time formatted like Python's `time.ctime()`: `Mon Nov  3 04:12:00 2026`.
pub fn is_ctime(text: &[u8]) -> bool {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let Ok(text) = std::str::from_utf8(text) else {
        return false;
    };
    let digits = |range: std::ops::Range<usize>| text[range].bytes().all(|b| b.is_ascii_digit());
    text.len() == CTIME_LEN
        && text.is_ascii()
        && DAYS.contains(&&text[0..3])
        && MONTHS.contains(&&text[4..7])
        && text.as_bytes()[8].is_ascii_digit() | (text.as_bytes()[8] == b' ')
        && digits(9..10)
        && digits(11..13)
        && digits(14..16)
        && digits(17..19)
        && digits(20..24)
        && [3, 7, 10, 19].iter().all(|&i| text.as_bytes()[i] == b' ')
        && [13, 16].iter().all(|&i| text.as_bytes()[i] == b':')
}

impl Server {
    /// The admin API's TCP address; the server must have been started with
    /// `--admin IP:PORT`.
    pub fn admin(&self) -> SocketAddr {
        match self.admin_endpoint() {
            Endpoint::Tcp(addr) => addr,
            unix => panic!("the admin API is on a Unix socket, {unix}"),
        }
    }

    /// Where the admin API listens; the server must have been started with `--admin`.
    pub fn admin_endpoint(&self) -> Endpoint {
        self.admin.clone().expect("started with --admin")
    }

    /// `hotsock SUBCOMMAND --admin ...`, with the token if there is one.
    pub fn admin_command(&self, subcommand: &str) -> Command {
        let mut command = hotsock();
        command
            .arg(subcommand)
            .arg("--admin")
            .arg(self.admin_endpoint().to_string());
        if let Some(token) = &self.token {
            command.env("HOTSOCK_ADMIN_TOKEN", token);
        } else {
            command.env_remove("HOTSOCK_ADMIN_TOKEN");
        }
        command
    }

    /// One request to the admin API, as a well-behaved client sends it (with
    /// the token, and `Content-Type: application/wasm` for `POST /handler`):
    /// the status code and JSON body.
    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let authorization = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if let Some(authorization) = &authorization {
            headers.push(("authorization", authorization.as_str()));
        }
        if (method, path) == ("POST", "/handler") {
            headers.push(("content-type", "application/wasm"));
        }
        let response = request(&self.admin_endpoint(), method, path, &headers, body);
        assert!(
            response
                .header("content-type")
                .is_some_and(|t| t.to_ascii_lowercase().starts_with("application/json")),
            "{} {:?}: {}",
            response.status,
            response.headers,
            testkit::http::text(&response)
        );
        (response.status, must(response.json()))
    }

    /// `GET /status` of the admin API.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.http("GET", "/status", b"");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        must(self.process.rss_kib())
    }
}

/// One request to `endpoint`, exactly as given: for tests of what the admin
/// API refuses.
pub fn request(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    must(Client::new(endpoint.clone(), TIMEOUT).request(method, path, headers, body))
}

/// A client doing a round trip every 50 ms on a connection of its own, for as
/// long as a test runs, to show that what happens elsewhere does not touch it.
pub struct Bystander {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: thread::JoinHandle<(usize, Duration, Vec<String>)>,
}

impl Bystander {
    /// Connects to `addr` and starts the round trips. Works with the default
    /// echo handler and the probe fixture alike: both answer `ping N\n` with a
    /// line containing `ping N`.
    pub fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let mut stream = connect(addr);
        let thread = thread::spawn(move || {
            let (mut trips, mut slowest, mut errors) = (0, Duration::ZERO, Vec::new());
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) && errors.is_empty() {
                let message = format!("ping {trips}");
                let started = Instant::now();
                match round_trip_line(&mut stream, &message) {
                    Ok(reply) if reply.contains(&message) => {}
                    Ok(reply) => errors.push(format!("{message:?} got {reply:?}")),
                    Err(e) => errors.push(format!("{message:?} failed: {e}")),
                }
                slowest = slowest.max(started.elapsed());
                trips += 1;
                thread::sleep(Duration::from_millis(50));
            }
            (trips, slowest, errors)
        });
        Bystander { stop, thread }
    }

    /// Stops, and asserts that every round trip succeeded within a second.
    pub fn finish(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (trips, slowest, errors) = self.thread.join().expect("the bystander thread");
        assert!(errors.is_empty(), "the bystander saw errors: {errors:?}");
        assert!(trips > 0, "the bystander made no round trip");
        assert!(
            slowest < Duration::from_secs(1),
            "the bystander's slowest round trip took {slowest:?}"
        );
    }
}

/// Sends `message` and a newline, and reads one reply line, without panicking.
fn round_trip_line(stream: &mut TcpStream, message: &str) -> std::io::Result<String> {
    stream.write_all(format!("{message}\n").as_bytes())?;
    let mut reply = Vec::new();
    let mut byte = [0; 1];
    while !reply.ends_with(b"\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        reply.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// A program from a Debian package that a test runs as a real component
/// (HAProxy, systemd's tools), which `make setup` installs. Missing, it
/// fails the test under CI (`CI=true`); elsewhere the test says loudly that
/// it is skipped, and returns `None`.
pub fn system_tool(name: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        let message = format!(
            "{name} is not installed: `make setup` installs Debian's {package} (as root), or run \
             `sudo apt-get install {package}`"
        );
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{message}; under CI a missing test component is a failure, not a skip"
        );
        eprintln!("SKIPPED: {message}");
    }
    found
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is inside the repository")
        .to_path_buf()
}

/// componentize-py, installed into the repository's `.venv` by `make setup`.
pub fn componentize_py() -> PathBuf {
    let path = repo_root().join(".venv/bin/componentize-py");
    assert!(
        path.exists(),
        "{} is missing: run `make test`, which installs it",
        path.display()
    );
    path
}

/// Sends `line` with a newline to a handler that echoes bytes back unchanged
/// (the scaffolds' template), and returns the echoed line without its newline.
pub fn echo_line(stream: &mut TcpStream, line: &str) -> String {
    stream
        .write_all(format!("{line}\n").as_bytes())
        .expect("send to hotsock");
    reply(stream)
}

/// Runs `command` (a `hotsock` invocation) with stdin closed, expects it to
/// fail with exit status 1, and returns what it printed on stderr.
pub fn error_of(command: &mut Command) -> String {
    let output = command.stdin(Stdio::null()).output().expect("hotsock runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{command:?} did not fail as expected:\n{stderr}"
    );
    stderr
}

/// [`testkit::free_port`]: a port on 127.0.0.1 that was free a moment ago,
/// for a program that must be told one or an address nobody listens on.
pub fn free_port() -> u16 {
    must(testkit::free_port())
}

/// A certificate authority made for one test with rcgen (ECDSA P-256, no
/// openssl needed), which issues server certificates as PEM files: for
/// config examples that name certificate files.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hotsock test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// Writes the CA's own certificate, as a client CA file, to `path`.
    pub fn write_ca(&self, path: &Path) {
        write_creating(path, &self.pem);
    }

    /// Issues a server certificate for `names` (DNS names, `*.` wildcards or
    /// IP addresses), in date for 30 days, and writes it to `cert` and its
    /// key to `key`.
    pub fn issue(&self, names: &[&str], cert: &Path, key: &Path) {
        let pair = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().map_or("", String::as_str),
        );
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(30);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let issued = params.signed_by(&pair, &self.issuer).unwrap();
        write_creating(cert, &issued.pem());
        write_creating(key, &pair.serialize_pem());
    }
}

/// Writes `text` to `path`, creating its directory first.
fn write_creating(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, text).unwrap();
}
