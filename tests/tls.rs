//! Native TLS on listeners (issue 23), with real clients: `openssl
//! s_client`, Python's `ssl` module, `hotsock client --tls`, a rustls
//! client for sessions that stay open, and HAProxy passing TLS through with
//! a PROXY v2 header. Echo (TLS 1.3 and 1.2, a megabyte each way);
//! plaintext, silent, dribbling and distrusting clients refused and
//! counted by reason; certificates chosen by SNI; client certificates
//! required or optional, through an intermediate CA; every key format;
//! reloads by SIGHUP (with and without a config) and `--watch`, bad files
//! refused at start and at reload; rooms, large and small; ALPN; one
//! deadline for the PROXY header and the handshake; handler timeouts over
//! TLS; the expiry metric.
//!
//! The certificates are made at test time (no fixture to expire): the test
//! PKI of [`certificates`] by the openssl CLI, further ones by [`issue`],
//! and those with dates openssl 3.0 cannot set by rcgen ([`dated`]).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{Value, json};
use testkit::haproxy::Haproxy;

use crate::fleet::{Reap, ask_over_tls, certificates, openssl, taken_over_by};
use crate::operations::metrics;
use crate::util::{Server, TIMEOUT, connect, echo_chunks, hotsock, system_tool, wasm};

/// Longest a `hotsock serve` that should refuse to start may run: it loads
/// the handler (cached, or compiled on a busy machine) before or after the
/// certificates, and must exit on its own well within this.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The programs the tests run as clients, and the test PKI they share.
struct Tools {
    /// `ca.pem`, `server.pem` (with its key, for localhost and 127.0.0.1),
    /// `device.pem` and `stranger.pem` (`CN=device-42` by `ca` and by
    /// `other-ca`), and whatever a test issues besides.
    dir: tempfile::TempDir,
    openssl: PathBuf,
    python: PathBuf,
}

/// The openssl CLI and python3, and the test PKI of [`certificates`] made
/// in a new directory; `None` where either program is missing, which
/// [`system_tool`] makes a failure under CI and a loud skip elsewhere.
fn tools() -> Option<Tools> {
    let openssl = system_tool("openssl", "openssl")?;
    let python = system_tool("python3", "python3")?;
    let dir = tempfile::tempdir().unwrap();
    certificates(&openssl, dir.path());
    Some(Tools {
        dir,
        openssl,
        python,
    })
}

impl Tools {
    /// The file `name` of the test PKI.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `--tls-cert server.pem --tls-key server.key`: the certificate every
    /// client of these tests verifies against `ca.pem` as `localhost`.
    /// server.pem holds the key too, as HAProxy wants it: the certificate is
    /// its first PEM section.
    fn tls_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path("server.pem").display().to_string(),
            "--tls-key".into(),
            self.path("server.key").display().to_string(),
        ]
    }
}

/// `args` as the `&str`s [`Server::start_with`] takes.
fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The `openssl req` options for a new ECDSA P-256 key, quick to make (as
/// [`certificates`] makes them).
pub const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// Issues `{name}.pem` and `{name}.key` in `dir` with the openssl CLI, as
/// [`certificates`] issues `server.pem`: ECDSA P-256, subject `CN=cn`, the
/// subject alternative names `san` (`DNS:api.test,IP:127.0.0.1`), signed by
/// `ca.pem`. For the certificates a test needs besides the shared ones
/// (SNI names, a second certificate to reload).
fn issue(tool: &Path, dir: &Path, name: &str, cn: &str, san: &str) {
    let ext = format!("subjectAltName={san}");
    issue_by(tool, dir, name, cn, &ext, "ca", &EC);
}

/// Issues `{name}.pem` and `{name}.key` in `dir` with the openssl CLI:
/// subject `CN=cn`, the extensions `ext` (lines of an openssl extension
/// file), signed by `{ca}.pem` with `{ca}.key`, for a new key made by the
/// `openssl req` options `newkey`. For the certificates [`issue`] does not
/// make: an intermediate CA, an RSA key.
pub fn issue_by(
    tool: &Path,
    dir: &Path,
    name: &str,
    cn: &str,
    ext: &str,
    ca: &str,
    newkey: &[&str],
) {
    let ext_file = format!("{name}.ext");
    std::fs::write(dir.join(&ext_file), format!("{ext}\n")).unwrap();
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let subject = format!("/CN={cn}");
    let mut args = vec!["req", "-new", "-subj", &subject];
    args.extend(newkey);
    args.extend(["-keyout", &key, "-out", &csr]);
    openssl(tool, dir, &args);
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        tool,
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-extfile",
            &ext_file,
            "-out",
            &pem,
        ],
    );
}

/// Concatenates the files `parts` of `dir` into `dir/name`: a chain, leaf
/// first.
fn chain(dir: &Path, name: &str, parts: &[&str]) -> PathBuf {
    let text: String = parts
        .iter()
        .map(|part| std::fs::read_to_string(dir.join(part)).unwrap())
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A self-signed certificate for localhost valid from `not_before` to
/// `not_after` (Unix seconds), written as `{name}.pem` and `{name}.key` in
/// `dir`, made with rcgen: for dates openssl 3.0's `x509` cannot set (an
/// expired certificate, one not valid yet) or that a test must know to the
/// second (the expiry metric). Returns the two paths.
fn dated(dir: &Path, name: &str, not_before: i64, not_after: i64) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (pem, key_file) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&pem, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (pem, key_file)
}

/// Now, in Unix seconds.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

const DAY: i64 = 24 * 60 * 60;

/// The first certificate in the PEM file `path`, DER: what a server
/// serving that file sends as its leaf.
fn leaf(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .next()
        .unwrap_or_else(|| panic!("no certificate in {}", path.display()))
        .unwrap()
        .to_vec()
}

/// What a finished client process left: its exit status and its output.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `command` with `input` on stdin (then closed) until it exits, for
/// at most `limit`: a client that hangs is killed and fails the test rather
/// than hanging it. If `abort_on` is in its stdout before it exits, it is
/// killed at once and the test fails (a server that should not have
/// started, announcing its address).
fn run_bounded(
    command: &mut Command,
    input: &[u8],
    limit: Duration,
    abort_on: Option<&str>,
) -> Finished {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let collect = |mut pipe: Box<dyn std::io::Read + Send>| {
        let text = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&text);
        let reader = thread::spawn(move || {
            let mut chunk = [0; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                into.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        (text, reader)
    };
    let (stdout, out_reader) = collect(Box::new(child.stdout.take().unwrap()));
    let (stderr, err_reader) = collect(Box::new(child.stderr.take().unwrap()));
    let text = |buffer: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
    };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let aborted = abort_on.is_some_and(|needle| text(&stdout).contains(needle));
        if aborted || started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} {} after {:?}\nstdout:\n{}\nstderr:\n{}",
                match aborted {
                    true => format!("printed {abort_on:?}"),
                    false => "was still running".to_string(),
                },
                started.elapsed(),
                text(&stdout),
                text(&stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    out_reader.join().unwrap();
    err_reader.join().unwrap();
    Finished {
        status,
        stdout: text(&stdout),
        stderr: text(&stderr),
    }
}

/// One client of Python's `ssl` module, by its options: Python is the
/// other TLS stack users have (OpenSSL underneath, with its own defaults),
/// and tells precisely what it was served.
#[derive(Clone, Copy)]
struct Py<'a> {
    /// SNI sent; `None` sends none.
    server_name: Option<&'a str>,
    /// Whether the served certificate must be for `server_name`; it is
    /// always verified against `ca.pem`.
    check_hostname: bool,
    /// The CAs it trusts, a file of the test PKI.
    cafile: &'a str,
    /// Whether it offers TLS 1.2 at most, as older clients do.
    tls12: bool,
    /// `NAME` for a client certificate `NAME.pem` with `NAME.key`.
    cert: Option<&'a str>,
    /// Protocols offered in ALPN.
    alpn: &'a [&'a str],
    /// The local address to connect from (a loopback one).
    source: Option<&'a str>,
    /// Lines sent, each followed by reading one reply line.
    send: &'a [&'a str],
}

impl Default for Py<'_> {
    fn default() -> Self {
        Py {
            server_name: Some("localhost"),
            check_hostname: true,
            cafile: "ca.pem",
            tls12: false,
            cert: None,
            alpn: &[],
            source: None,
            send: &[],
        }
    }
}

/// The client [`python`] runs: its options as JSON in argv[1], what
/// happened as one JSON object on stdout: `ok`, `stage` (how far it got:
/// connect, handshake, exchange), `error`, and from the handshake on
/// `version`, `cipher`, `alpn`, `cn` (the served certificate's subject CN),
/// `der` (the served certificate, hex), then `replies`.
const PYTHON_CLIENT: &str = r#"
import json, socket, ssl, sys
a = json.loads(sys.argv[1])
out = {"ok": False, "stage": "connect"}
try:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(a["cafile"])
    ctx.check_hostname = a["check_hostname"]
    if a["tls12"]:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if a["cert"]:
        ctx.load_cert_chain(a["cert"], a["key"])
    if a["alpn"]:
        ctx.set_alpn_protocols(a["alpn"])
    source = (a["source"], 0) if a["source"] else None
    raw = socket.create_connection((a["host"], a["port"]), timeout=a["timeout"], source_address=source)
    out["stage"] = "handshake"
    s = ctx.wrap_socket(raw, server_hostname=a["server_name"])
    out["version"] = s.version()
    out["cipher"] = s.cipher()[0]
    out["alpn"] = s.selected_alpn_protocol()
    out["der"] = s.getpeercert(binary_form=True).hex()
    out["cn"] = [v for rdn in s.getpeercert()["subject"] for (k, v) in rdn if k == "commonName"][0]
    out["stage"] = "exchange"
    replies, pending = [], b""
    for line in a["send"]:
        s.sendall(line.encode() + b"\n")
        while b"\n" not in pending:
            chunk = s.recv(65536)
            if not chunk:
                raise EOFError("the server closed the connection")
            pending += chunk
        reply, pending = pending.split(b"\n", 1)
        replies.append(reply.decode())
    out["replies"] = replies
    s.close()
    out["ok"] = True
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"#;

/// Runs one Python `ssl` client ([`PYTHON_CLIENT`]) against `addr` with
/// the options `py`, and returns what it reported. Bounded: its socket has
/// a 10 s timeout, and the process is killed past twice that.
fn python(tools: &Tools, addr: SocketAddr, py: Py<'_>) -> Value {
    let cert = py.cert.map(|name| tools.path(&format!("{name}.pem")));
    let key = py.cert.map(|name| tools.path(&format!("{name}.key")));
    let options = json!({
        "host": addr.ip().to_string(),
        "port": addr.port(),
        "cafile": tools.path(py.cafile),
        "tls12": py.tls12,
        "server_name": py.server_name,
        "check_hostname": py.check_hostname && py.server_name.is_some(),
        "cert": cert,
        "key": key,
        "alpn": py.alpn,
        "source": py.source,
        "send": py.send,
        "timeout": TIMEOUT.as_secs(),
    });
    let finished = run_bounded(
        Command::new(&tools.python)
            .arg("-c")
            .arg(PYTHON_CLIENT)
            .arg(options.to_string()),
        b"",
        TIMEOUT * 2,
        None,
    );
    serde_json::from_str(finished.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the Python client printed no report ({e}):\n{}\n{}",
            finished.stdout, finished.stderr
        )
    })
}

/// The replies of a Python client that must have been served, which fails
/// the test with the client's report and the server's log otherwise.
fn served(report: &Value, server: &Server) -> Vec<String> {
    assert_eq!(
        report["ok"],
        true,
        "the Python client was not served: {report}\nserver log:\n{}",
        server.log()
    );
    report["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

/// The subject of the certificate `openssl s_client` is served when it
/// sends `server_name` as SNI (`None`: `-noservername`), as s_client
/// prints it but without spaces (`CN=api.test`): the CLI operators check
/// their servers with.
fn s_client_subject(tools: &Tools, addr: SocketAddr, server_name: Option<&str>) -> String {
    let mut command = Command::new(&tools.openssl);
    command
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile"])
        .arg(tools.path("ca.pem"));
    match server_name {
        Some(name) => command.args(["-servername", name]),
        None => command.arg("-noservername"),
    };
    // Its stdin ends at once: it prints the session, then closes.
    let finished = run_bounded(&mut command, b"", TIMEOUT, None);
    finished
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("subject="))
        .map(|subject| subject.replace(' ', ""))
        .unwrap_or_else(|| {
            panic!(
                "s_client printed no subject:\n{}\n{}",
                finished.stdout, finished.stderr
            )
        })
}

/// A TLS session that stays open, on rustls's client side: for what a
/// one-shot client cannot show, a session kept across a certificate reload
/// and room messages arriving between answers. It trusts `ca.pem` and asks
/// for `localhost`.
struct Session {
    stream: StreamOwned<ClientConnection, TcpStream>,
    /// Bytes read past the last line returned.
    pending: Vec<u8>,
}

impl Session {
    /// Connects to `addr` and completes the handshake; panics if it fails.
    fn open(addr: SocketAddr, ca: &Path) -> Session {
        Session::over(connect(addr), ca)
    }

    /// Completes a handshake over `socket`, already connected (and past
    /// whatever the test sent first); panics if it fails.
    fn over(socket: TcpStream, ca: &Path) -> Session {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(leaf(ca))).unwrap();
        // The crypto hotsock itself runs on (ring), as `hotsock client --tls` does.
        let provider = Arc::new(hotsock::server::tls_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(Arc::new(config), name).unwrap();
        let mut stream = StreamOwned::new(conn, socket);
        while stream.conn.is_handshaking() {
            if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                panic!(
                    "TLS handshake with {:?} failed: {e}",
                    stream.sock.peer_addr()
                );
            }
        }
        Session {
            stream,
            pending: Vec::new(),
        }
    }

    /// The certificate the server presented, DER.
    fn leaf(&self) -> Vec<u8> {
        self.stream
            .conn
            .peer_certificates()
            .expect("a server certificate")[0]
            .to_vec()
    }

    /// Sends `line` and a newline, and returns the next line received.
    fn ask(&mut self, line: &str) -> String {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| self.stream.flush())
            .unwrap_or_else(|e| panic!("sending {line:?}: {e}"));
        self.line_within(TIMEOUT)
            .unwrap_or_else(|| panic!("no answer to {line:?} within {TIMEOUT:?}"))
    }

    /// The next line received (without its newline), if one comes within
    /// `within`; panics if the connection fails or closes.
    fn line_within(&mut self, within: Duration) -> Option<String> {
        self.stream.sock.set_read_timeout(Some(within)).unwrap();
        let line = loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                break Some(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            let mut chunk = [0; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the server closed the session"),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => break None,
                Err(e) => panic!("reading the session failed: {e}"),
            }
        };
        self.stream.sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        line
    }

    /// Reads to the end of the session, and whether it ended with the
    /// server's close_notify (rustls reports an end without one as an
    /// error: a truncation attack cannot pass for the end).
    fn ends_with_close_notify(&mut self) -> bool {
        self.end().is_ok()
    }

    /// Reads to the end of the session (bounded by the socket's read
    /// timeout, which fails the test): `Ok` if it ended with close_notify,
    /// else how it ended. Nothing may arrive before the end.
    fn end(&mut self) -> std::io::Result<()> {
        let mut rest = Vec::new();
        let ended = self.stream.read_to_end(&mut rest);
        assert!(self.pending.is_empty() && rest.is_empty(), "{rest:?}");
        if let Err(e) = &ended {
            assert!(!is_timeout(e), "the session is still open: {e}");
        }
        ended.map(|_| ())
    }
}

/// Sends `payload` to the echo handler over a new TLS session and returns
/// what it echoed, unwrapped (see [`echo_chunks`]), once all of it is back.
/// Writes and reads in one loop on a non-blocking socket: a large
/// payload's echo fills the buffers both ways while it is still being sent,
/// and a rustls session cannot be split between two threads.
fn echo_big(addr: SocketAddr, ca: &Path, payload: &[u8]) -> Vec<u8> {
    let mut session = Session::open(addr, ca);
    let StreamOwned { conn, sock } = &mut session.stream;
    sock.set_nonblocking(true).unwrap();
    let (mut sent, mut received) = (0, Vec::new());
    let deadline = Instant::now() + TIMEOUT * 3;
    let mut chunk = vec![0; 64 * 1024];
    loop {
        let mut progressed = false;
        if sent < payload.len() && !conn.wants_write() {
            let end = payload.len().min(sent + 16 * 1024);
            let n = conn.writer().write(&payload[sent..end]).unwrap();
            sent += n;
            progressed |= n > 0;
        }
        while conn.wants_write() {
            match conn.write_tls(sock) {
                Ok(n) => progressed |= n > 0,
                Err(e) if is_timeout(&e) => break,
                Err(e) => panic!("sending after {sent} bytes: {e}"),
            }
        }
        match conn.read_tls(sock) {
            Ok(0) => panic!("the server closed the session after {sent} bytes sent"),
            Ok(_) => {
                conn.process_new_packets().unwrap();
                progressed = true;
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => panic!("receiving: {e}"),
        }
        loop {
            match conn.reader().read(&mut chunk) {
                Ok(0) => panic!("the session ended after {} bytes", received.len()),
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => break,
                Err(e) => panic!("receiving: {e}"),
            }
        }
        if let Some(chunks) = echo_chunks(&received)
            && chunks.iter().map(Vec::len).sum::<usize>() == payload.len()
        {
            return chunks.concat();
        }
        assert!(
            Instant::now() < deadline,
            "{sent} bytes sent, {} received, after {:?}",
            received.len(),
            TIMEOUT * 3
        );
        if !progressed {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Whether a read failed only because its timeout passed.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Reads what `stream` is sent until the server closes it (EOF or a
/// reset), and how long that took from `since`; panics if it is still open
/// `limit` after `since`. For clients a TLS listener must cut off.
fn until_closed(stream: &mut TcpStream, since: Instant, limit: Duration) -> (Vec<u8>, Duration) {
    let mut got = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        let left = limit.saturating_sub(since.elapsed());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                break;
            }
            Err(e) => panic!(
                "still open {:?} after it connected ({e}); it was sent {:?}",
                since.elapsed(),
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (got, since.elapsed())
}

/// How many clients `server` (with `--admin`) counts as refused for
/// `reason` in `/status`.
fn refused(server: &Server, reason: &str) -> u64 {
    let status = server.status();
    status["connections"]["refused_by"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("no refused_by.{reason} in {status}"))
}

/// Waits until `server` counts `expected` clients refused for `reason`
/// (a refusal is counted as the connection's thread ends, a moment after
/// the client sees it closed); fails on more, or on fewer after
/// [`TIMEOUT`].
fn wait_refused(server: &Server, reason: &str, expected: u64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let n = refused(server, reason);
        assert!(
            n <= expected,
            "{n} refused for {reason}, not {expected}: {}\n{}",
            server.status(),
            server.log()
        );
        if n == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} refused for {reason} after {TIMEOUT:?}, not {expected}: {}\n{}",
            server.status(),
            server.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The samples of the metric `name` on `server`'s `--metrics` endpoint,
/// each its labels and value, as Prometheus's own parser reads them
/// ([`metrics`]: a format error fails the test).
fn samples(server: &Server, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    metrics(server)
        .into_iter()
        .filter(|sample| sample.name == name)
        .map(|sample| {
            let labels = sample.labels.iter().map(|(key, value)| {
                let value = value.as_str().expect("label values are strings");
                (key.clone(), value.to_string())
            });
            (labels.collect(), sample.value)
        })
        .collect()
}

/// `hotsock ARGS` that must refuse to start: it exits non-zero on its own
/// (bounded) and never announces a listener. Returns its stderr.
fn refused_to_start(args: &[&str]) -> String {
    let finished = run_bounded(
        hotsock().args(args).env("RUST_LOG", "info"),
        b"",
        REFUSE_TIMEOUT,
        Some("listening on"),
    );
    assert!(
        !finished.status.success(),
        "hotsock {args:?} succeeded:\n{}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert!(
        !finished.stdout.contains("listening on"),
        "{}",
        finished.stdout
    );
    finished.stderr
}

/// A config file `name` in `dir` with `text`, returned as a path string.
fn config_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A TOML string: `path` quoted, as a config file names a file.
fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

#[test]
fn clients_echo_over_tls_and_a_plaintext_client_is_closed() {
    let Some(tools) = tools() else {
        return;
    };
    let mut args = tools.tls_args();
    args.extend(["--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0"].map(String::from));
    let server = Server::start_with("guest_handler", &strs(&args));
    let mut kept = Session::open(server.addr(), &tools.path("ca.pem"));
    assert!(kept.ask("kept").starts_with("Echo=>kept at "));

    // openssl s_client, and Python's ssl.
    let answer = ask_over_tls(
        &tools.openssl,
        server.addr(),
        tools.dir.path(),
        None,
        "hello\n",
    )
    .unwrap_or_else(|| panic!("s_client got no answer:\n{}", server.log()));
    assert!(answer.starts_with("Echo=>hello at "), "{answer}");
    let report = python(
        &tools,
        server.addr(),
        Py {
            send: &["one", "two"],
            ..Py::default()
        },
    );
    let replies = served(&report, &server);
    assert!(replies[0].starts_with("Echo=>one at "), "{replies:?}");
    assert!(replies[1].starts_with("Echo=>two at "), "{replies:?}");
    assert_eq!(report["version"], "TLSv1.3", "{report}");
    assert_eq!(report["cn"], "localhost", "{report}");

    // A plaintext client is closed at its first bytes, never echoed.
    let mut plain = connect(server.addr());
    let started = Instant::now();
    plain.write_all(b"hello\n").unwrap();
    let (got, took) = until_closed(&mut plain, started, Duration::from_secs(5));
    let got = String::from_utf8_lossy(&got);
    assert!(!got.contains("hello") && !got.contains("Echo"), "{got:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    wait_refused(&server, "tls_plaintext", 1);
    // Five more: counted, and logged at most once a second.
    for _ in 0..5 {
        let mut plain = connect(server.addr());
        let started = Instant::now();
        plain.write_all(b"hello\n").unwrap();
        until_closed(&mut plain, started, Duration::from_secs(5));
    }
    wait_refused(&server, "tls_plaintext", 6);
    let counted: Vec<f64> = samples(&server, "hotsock_connections_refused_total")
        .into_iter()
        .filter(|(labels, _)| {
            labels.get("listener").map(String::as_str) == Some("default")
                && labels.get("reason").map(String::as_str) == Some("tls_plaintext")
        })
        .map(|(_, value)| value)
        .collect();
    assert_eq!(counted, [6.0]);
    let logged = server.log().matches("tls_plaintext").count();
    assert!(
        (1..=2).contains(&logged),
        "{logged} lines:\n{}",
        server.log()
    );

    // A client that does not trust the certificate ends the handshake:
    // counted apart.
    let distrusting = python(
        &tools,
        server.addr(),
        Py {
            cafile: "other-ca.pem",
            send: &["hi"],
            ..Py::default()
        },
    );
    assert_eq!(distrusting["ok"], false, "{distrusting}");
    wait_refused(&server, "tls_handshake", 1);

    // TLS 1.2 is served too.
    let report = python(
        &tools,
        server.addr(),
        Py {
            tls12: true,
            send: &["twelve"],
            ..Py::default()
        },
    );
    assert!(served(&report, &server)[0].starts_with("Echo=>twelve at "));
    assert_eq!(report["version"], "TLSv1.2", "{report}");

    // Everyone else is still served.
    assert!(kept.ask("still").starts_with("Echo=>still at "));
    let report = python(
        &tools,
        server.addr(),
        Py {
            send: &["after"],
            ..Py::default()
        },
    );
    assert!(served(&report, &server)[0].starts_with("Echo=>after at "));
    // And hotsock's own client.
    let client = run_bounded(
        hotsock()
            .args(["client", "--tls", "--cafile"])
            .arg(tools.path("ca.pem"))
            .args([
                "--servername",
                "localhost",
                "--wait",
                "500ms",
                "--timeout",
                "10s",
            ])
            .arg(server.addr().to_string()),
        b"ours\n",
        TIMEOUT * 2,
        None,
    );
    assert!(
        client.status.success() && client.stdout.contains("Echo=>ours at "),
        "{}{}",
        client.stdout,
        client.stderr
    );
    // A megabyte each way, through TLS records of at most 16 KiB.
    let payload: Vec<u8> = b"0123456789abcdef".repeat(64 * 1024);
    let echoed = echo_big(server.addr(), &tools.path("ca.pem"), &payload);
    assert!(echoed == payload, "the echo differs from what was sent");
    // The "connected" line says TLS; server.pem expires in 2 days, which
    // the log warned about at start.
    server.wait_for_log(&["connected, tls TLSv1.3"]);
    server.wait_for_log(&["WARN", "server.pem", "expires", "renew"]);
}

#[test]
fn sni_chooses_the_certificate_exact_then_wildcard_then_the_default() {
    let Some(tools) = tools() else {
        return;
    };
    let dir = tools.dir.path();
    issue(&tools.openssl, dir, "api", "api.test", "DNS:api.test");
    issue(
        &tools.openssl,
        dir,
        "fleet",
        "any.fleet.test",
        "DNS:*.fleet.test",
    );
    // Paths relative to the file, as an operator writes them.
    let config = config_file(
        dir,
        "sni.toml",
        &format!(
            "[[listener]]\nname = \"sni\"\naddr = \"127.0.0.1:0\"\nhandler = {}\n\
             tls-cert = \"server.pem\"\ntls-key = \"server.key\"\n\
             [[listener.tls-sni]]\nname = \"api.test\"\ncert = \"api.pem\"\nkey = \"api.key\"\n\
             [[listener.tls-sni]]\nname = \"*.fleet.test\"\ncert = \"fleet.pem\"\nkey = \"fleet.key\"\n",
            toml_path(&wasm("kit"))
        ),
    );
    let server = Server::start_config(Path::new(&config), 1, &["--metrics", "127.0.0.1:0"]);
    let addr = server.listener("sni");

    for (name, cn, file) in [
        (Some("api.test"), "api.test", "api.pem"),
        (Some("device-7.fleet.test"), "any.fleet.test", "fleet.pem"),
        // Names are compared without case, as DNS does.
        (Some("API.Test"), "api.test", "api.pem"),
        (Some("Device-8.FLEET.test"), "any.fleet.test", "fleet.pem"),
        // A wildcard covers one label only.
        (Some("a.b.fleet.test"), "localhost", "server.pem"),
        (Some("fleet.test"), "localhost", "server.pem"),
        (Some("unknown.test"), "localhost", "server.pem"),
        (None, "localhost", "server.pem"),
    ] {
        let report = python(
            &tools,
            addr,
            Py {
                server_name: name,
                check_hostname: false,
                send: &["tls"],
                ..Py::default()
            },
        );
        let replies = served(&report, &server);
        assert_eq!(report["cn"], cn, "{name:?}: {report}");
        let der = hex(&leaf(&tools.path(file)));
        assert_eq!(report["der"], der, "{name:?} was not served {file}");
        // The handler sees the name asked for, matched or not (in
        // whichever case).
        let sni = format!(" sni={} ", name.unwrap_or("-")).to_ascii_lowercase();
        assert!(
            replies[0].to_ascii_lowercase().contains(&sni),
            "{name:?}: {replies:?}"
        );
    }

    // openssl s_client, as an operator checks a server.
    assert_eq!(
        s_client_subject(&tools, addr, Some("api.test")),
        "CN=api.test"
    );
    assert_eq!(
        s_client_subject(&tools, addr, Some("x.fleet.test")),
        "CN=any.fleet.test"
    );
    assert_eq!(s_client_subject(&tools, addr, None), "CN=localhost");

    // Each certificate has its expiry metric.
    let expiries = samples(&server, "hotsock_tls_certificate_expiry_timestamp_seconds");
    let mut files: Vec<String> = expiries
        .iter()
        .filter(|(labels, _)| labels.get("listener").map(String::as_str) == Some("sni"))
        .map(|(labels, _)| {
            let path = Path::new(&labels["certificate"]);
            path.file_name().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["api.pem", "fleet.pem", "server.pem"],
        "{expiries:?}"
    );

    // SIGHUP with --config re-reads the SNI certificates too.
    issue(
        &tools.openssl,
        dir,
        "api2",
        "api-renewed.test",
        "DNS:api.test",
    );
    std::fs::copy(dir.join("api2.key"), dir.join("api.key")).unwrap();
    std::fs::copy(dir.join("api2.pem"), dir.join("api.pem")).unwrap();
    server.signal(libc::SIGHUP);
    wait_for_cn(&tools, &server, addr, Some("api.test"), "api-renewed.test");

    // A new default certificate, and a bad SNI key: all are checked before
    // any is used, so nothing changes, and the warning names the bad file.
    let san = "DNS:localhost,IP:127.0.0.1";
    issue(&tools.openssl, dir, "default2", "localhost-renewed", san);
    std::fs::copy(dir.join("default2.key"), dir.join("server.key")).unwrap();
    std::fs::copy(dir.join("default2.pem"), dir.join("server.pem")).unwrap();
    std::fs::copy(dir.join("device.key"), dir.join("api.key")).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log(&["WARN", "api.key"]);
    assert_eq!(cn_for(&tools, &server, addr, None), "localhost");
    assert_eq!(
        cn_for(&tools, &server, addr, Some("api.test")),
        "api-renewed.test"
    );
    // Mended: both go in together.
    std::fs::copy(dir.join("api2.key"), dir.join("api.key")).unwrap();
    server.signal(libc::SIGHUP);
    wait_for_cn(&tools, &server, addr, None, "localhost-renewed");
    assert_eq!(
        cn_for(&tools, &server, addr, Some("api.test")),
        "api-renewed.test"
    );
}

/// The subject CN of the certificate a Python client is served by `addr`
/// when it sends `server_name` (`None`: no SNI).
fn cn_for(tools: &Tools, server: &Server, addr: SocketAddr, server_name: Option<&str>) -> String {
    let report = python(
        tools,
        addr,
        Py {
            server_name,
            check_hostname: false,
            ..Py::default()
        },
    );
    served(&report, server);
    report["cn"].as_str().unwrap().to_string()
}

/// Waits until a client sending `server_name` is served the certificate
/// with the CN `cn` (a reload has taken effect), for at most [`TIMEOUT`].
fn wait_for_cn(
    tools: &Tools,
    server: &Server,
    addr: SocketAddr,
    server_name: Option<&str>,
    cn: &str,
) {
    eventually(
        || cn_for(tools, server, addr, server_name) == cn,
        || {
            format!(
                "{server_name:?} is not served {cn} after {TIMEOUT:?}:\n{}",
                server.log()
            )
        },
    );
}

/// Asks `done` every 100 ms until it says yes; fails the test with
/// `failure()` if it has not within [`TIMEOUT`]: what a reload has to do
/// before new connections show it.
fn eventually(mut done: impl FnMut() -> bool, failure: impl Fn() -> String) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "{}", failure());
        thread::sleep(Duration::from_millis(100));
    }
}

/// `bytes` in lowercase hexadecimal, as Python's `bytes.hex()` writes them.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The kit fixture over TLS, asking clients for certificates of the test
/// CA as `mode` (`require`, `optional`) says, with an admin API for
/// `/status`.
fn client_auth_server(tools: &Tools, mode: &str) -> Server {
    let mut args = tools.tls_args();
    let ca = tools.path("ca.pem").display().to_string();
    let more = ["--tls-client-auth", mode, "--tls-client-ca", &ca];
    args.extend(more.map(String::from));
    args.extend(["--admin", "127.0.0.1:0"].map(String::from));
    Server::start_with("kit", &strs(&args))
}

#[test]
fn required_client_certificates_name_the_device_and_refuse_the_rest() {
    let Some(tools) = tools() else {
        return;
    };
    let server = client_auth_server(&tools, "require");

    // A device of the fleet's CA: verified, and the handler knows it.
    let report = python(
        &tools,
        server.addr(),
        Py {
            cert: Some("device"),
            send: &["tls"],
            ..Py::default()
        },
    );
    let tls = &served(&report, &server)[0];
    assert!(tls.starts_with("tls TLSv1.3 TLS13_"), "{tls}");
    assert!(tls.contains(" sni=localhost alpn=- "), "{tls}");
    assert!(tls.ends_with(" subject=CN=device-42"), "{tls}");
    assert!(!tls.contains(" certs=0 "), "no peer certificates: {tls}");
    server.wait_for_log(&["connected, tls TLSv1.3 CN=device-42"]);
    // The same with openssl s_client.
    let tls = ask_over_tls(
        &tools.openssl,
        server.addr(),
        tools.dir.path(),
        Some("device"),
        "tls\n",
    )
    .unwrap_or_else(|| panic!("s_client was not served:\n{}", server.log()));
    assert!(tls.ends_with(" subject=CN=device-42"), "{tls}");

    // No certificate, or one of another CA (with the same CN): refused
    // before the handler runs.
    for cert in [None, Some("stranger")] {
        let report = python(
            &tools,
            server.addr(),
            Py {
                cert,
                send: &["tls"],
                ..Py::default()
            },
        );
        assert_eq!(report["ok"], false, "{cert:?} was served: {report}");
    }
    wait_refused(&server, "tls_client_certificate", 2);
    assert_eq!(
        server.log().matches("connected, tls").count(),
        2,
        "only the device's two connections reached the handler:\n{}",
        server.log()
    );
}

#[test]
fn optional_client_certificates_serve_anonymous_clients_but_not_strangers() {
    let Some(tools) = tools() else {
        return;
    };
    let server = client_auth_server(&tools, "optional");
    let tls = |cert| {
        python(
            &tools,
            server.addr(),
            Py {
                cert,
                send: &["tls"],
                ..Py::default()
            },
        )
    };
    let anonymous = served(&tls(None), &server)[0].clone();
    assert!(
        anonymous.starts_with("tls TLSv1.3 ") && anonymous.ends_with(" certs=0 subject=-"),
        "{anonymous}"
    );
    let device = served(&tls(Some("device")), &server)[0].clone();
    assert!(device.ends_with(" subject=CN=device-42"), "{device}");
    let stranger = tls(Some("stranger"));
    assert_eq!(stranger["ok"], false, "{stranger}");
    wait_refused(&server, "tls_client_certificate", 1);
}

/// Writes `from.pem` and `from.key` of `tools`'s directory over the files
/// `cert` and `key`, in place (as `cp` does), the key first.
fn install(tools: &Tools, from: &str, cert: &Path, key: &Path) {
    std::fs::write(
        key,
        std::fs::read(tools.path(&format!("{from}.key"))).unwrap(),
    )
    .unwrap();
    std::fs::write(
        cert,
        std::fs::read(tools.path(&format!("{from}.pem"))).unwrap(),
    )
    .unwrap();
}

/// Opens new sessions to `addr` until one is served the certificate of the
/// file `expected` (a reload has taken effect), for at most [`TIMEOUT`].
fn wait_for_certificate(server: &Server, tools: &Tools, expected: &str) {
    let want = leaf(&tools.path(expected));
    eventually(
        || Session::open(server.addr(), &tools.path("ca.pem")).leaf() == want,
        || {
            format!(
                "new connections still do not get {expected} after {TIMEOUT:?}:\n{}",
                server.log()
            )
        },
    );
}

#[test]
fn sighup_reloads_certificates_and_keeps_open_sessions() {
    let Some(tools) = tools() else {
        return;
    };
    let dir = tools.dir.path();
    let san = "DNS:localhost,IP:127.0.0.1";
    issue(&tools.openssl, dir, "a", "reload-a", san);
    issue(&tools.openssl, dir, "b", "reload-b", san);
    let (cert, key) = (dir.join("live.pem"), dir.join("live.key"));
    install(&tools, "a", &cert, &key);
    let args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let server = Server::start_with("guest_handler", &args);
    let ca = tools.path("ca.pem");
    let mut open = Session::open(server.addr(), &ca);
    assert_eq!(open.leaf(), leaf(&tools.path("a.pem")));
    assert!(open.ask("before").starts_with("Echo=>before at "));

    // Certificate B: new connections get it, the open one carries on.
    install(&tools, "b", &cert, &key);
    server.signal(libc::SIGHUP);
    wait_for_certificate(&server, &tools, "b.pem");
    assert!(open.ask("after").starts_with("Echo=>after at "));
    let mut new = Session::open(server.addr(), &ca);
    assert!(new.ask("new").starts_with("Echo=>new at "));

    // A key of another certificate: one warning naming the key file, and B
    // still served.
    std::fs::copy(tools.path("server.key"), &key).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log(&["WARN", "live.key"]);
    let warnings = |needle: &str| {
        let log = server.log();
        let lines = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(needle));
        lines.count()
    };
    assert_eq!(warnings("live.key"), 1, "{}", server.log());
    assert_eq!(
        Session::open(server.addr(), &ca).leaf(),
        leaf(&tools.path("b.pem"))
    );
    assert!(open.ask("mismatched").starts_with("Echo=>mismatched at "));

    // An expired certificate (with its own key): refused the same way.
    let (expired, expired_key) = dated(dir, "expired", unix_now() - 10 * DAY, unix_now() - DAY);
    std::fs::copy(&expired_key, &key).unwrap();
    std::fs::copy(&expired, &cert).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log(&["WARN", "live.pem", "expired"]);
    assert_eq!(
        Session::open(server.addr(), &ca).leaf(),
        leaf(&tools.path("b.pem"))
    );
    assert!(open.ask("expired").starts_with("Echo=>expired at "));
    assert!(new.ask("last").starts_with("Echo=>last at "));
}

#[test]
fn watch_reloads_certificates_when_their_files_change() {
    let Some(tools) = tools() else {
        return;
    };
    let dir = tools.dir.path();
    let san = "DNS:localhost,IP:127.0.0.1";
    issue(&tools.openssl, dir, "a", "watch-a", san);
    issue(&tools.openssl, dir, "b", "watch-b", san);
    let (cert, key) = (dir.join("live.pem"), dir.join("live.key"));
    install(&tools, "a", &cert, &key);
    let args = [
        "--watch",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let server = Server::start_with("guest_handler", &args);
    let mut open = Session::open(server.addr(), &tools.path("ca.pem"));
    assert_eq!(open.leaf(), leaf(&tools.path("a.pem")));
    // No signal: the files changing is enough.
    install(&tools, "b", &cert, &key);
    wait_for_certificate(&server, &tools, "b.pem");
    assert!(open.ask("kept").starts_with("Echo=>kept at "));
}

#[test]
fn watch_reloads_the_client_ca() {
    let Some(tools) = tools() else {
        return;
    };
    let clients = tools.path("clients.pem");
    std::fs::copy(tools.path("ca.pem"), &clients).unwrap();
    let mut args = tools.tls_args();
    args.extend(["--watch", "--tls-client-auth", "require", "--tls-client-ca"].map(String::from));
    args.push(clients.display().to_string());
    let server = Server::start_with("kit", &strs(&args));
    let subject = |cert| {
        let report = python(
            &tools,
            server.addr(),
            Py {
                cert: Some(cert),
                send: &["tls"],
                ..Py::default()
            },
        );
        report["replies"][0].as_str().map(str::to_string)
    };
    assert!(subject("device").is_some_and(|tls| tls.ends_with(" subject=CN=device-42")));
    assert_eq!(subject("stranger"), None);
    // The other CA now signs the clients: the stranger gets in, the device
    // no longer does.
    std::fs::copy(tools.path("other-ca.pem"), &clients).unwrap();
    eventually(
        || subject("stranger").is_some(),
        || {
            format!(
                "the new client CA is not used after {TIMEOUT:?}:\n{}",
                server.log()
            )
        },
    );
    assert_eq!(subject("device"), None);
}

#[test]
fn bad_certificate_files_stop_serve_and_check_before_listening() {
    let Some(tools) = tools() else {
        return;
    };
    let dir = tools.dir.path();
    let kit = wasm("kit");
    let (expired, expired_key) = dated(dir, "expired", unix_now() - 10 * DAY, unix_now() - DAY);
    let (future, future_key) = dated(dir, "future", unix_now() + DAY, unix_now() + 10 * DAY);
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let (server_pem, device_key) = (tools.path("server.pem"), tools.path("device.key"));
    let server_key = tools.path("server.key");
    // (certificate, key, the file the error must name)
    let cases: [(&Path, &Path, &str); 4] = [
        (&server_pem, &device_key, "device.key"),
        (&expired, &expired_key, "expired.pem"),
        (&future, &future_key, "future.pem"),
        (&garbage, &server_key, "garbage.pem"),
    ];
    for (cert, key, named) in cases {
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let flags = ["--tls-cert", cert, "--tls-key", key];
        let serve = [
            &["serve", "--addr", "127.0.0.1:0"][..],
            &flags,
            &[kit.to_str().unwrap()],
        ]
        .concat();
        let stderr = refused_to_start(&serve);
        assert!(stderr.contains(named), "serve {named}:\n{stderr}");

        let config = config_file(
            dir,
            "bad.toml",
            &format!(
                "addr = \"127.0.0.1:0\"\nhandler = {}\ntls-cert = {cert:?}\ntls-key = {key:?}\n",
                toml_path(&kit)
            ),
        );
        let stderr = refused_to_start(&["serve", "--config", &config]);
        assert!(stderr.contains(named), "serve --config {named}:\n{stderr}");
        // `hotsock check` takes a handler or a config, not serve's options.
        let stderr = refused_to_start(&["check", "--config", &config]);
        assert!(stderr.contains(named), "check --config {named}:\n{stderr}");
    }

    // A bad SNI entry stops the start as well.
    issue(&tools.openssl, dir, "api", "api.test", "DNS:api.test");
    let config = config_file(
        dir,
        "bad-sni.toml",
        &format!(
            "addr = \"127.0.0.1:0\"\nhandler = {}\n\
             tls-cert = \"server.pem\"\ntls-key = \"server.key\"\n\
             [[tls-sni]]\nname = \"api.test\"\ncert = \"api.pem\"\nkey = \"device.key\"\n",
            toml_path(&kit)
        ),
    );
    for command in ["serve", "check"] {
        let stderr = refused_to_start(&[command, "--config", &config]);
        assert!(stderr.contains("device.key"), "{command}:\n{stderr}");
    }
    // So does a client CA file that is not PEM.
    let mut serve = vec!["serve".to_string(), "--addr".into(), "127.0.0.1:0".into()];
    serve.extend(tools.tls_args());
    serve.extend(["--tls-client-auth", "require", "--tls-client-ca"].map(String::from));
    serve.push(garbage.display().to_string());
    serve.push(kit.display().to_string());
    let stderr = refused_to_start(&strs(&serve));
    assert!(stderr.contains("garbage.pem"), "{stderr}");

    // Client certificates asked for with no CA to check them against.
    let mut serve = vec!["serve".to_string(), "--addr".into(), "127.0.0.1:0".into()];
    serve.extend(tools.tls_args());
    serve.extend(["--tls-client-auth".into(), "require".into()]);
    serve.push(kit.display().to_string());
    let stderr = refused_to_start(&strs(&serve));
    assert!(stderr.contains("tls-client-ca"), "{stderr}");
}

#[test]
fn a_silent_client_is_cut_at_the_handshake_timeout_while_others_are_served() {
    let Some(tools) = tools() else {
        return;
    };
    let mut args = tools.tls_args();
    args.extend(["--tls-handshake-timeout", "1s", "--admin", "127.0.0.1:0"].map(String::from));
    let server = Server::start_with("guest_handler", &strs(&args));

    // One says nothing; one starts a TLS record and dribbles a byte every
    // 300 ms (each read is quick, the handshake never ends: the timeout is
    // for the whole handshake, not per read). Each is watched from the
    // moment it connects, by a thread of its own.
    let watch = |mut stream: TcpStream| {
        let since = Instant::now();
        thread::spawn(move || until_closed(&mut stream, since, Duration::from_secs(4)).1)
    };
    let silent = watch(connect(server.addr()));
    let dribbler = connect(server.addr());
    let mut writer = dribbler.try_clone().unwrap();
    let dribbler = watch(dribbler);
    let dribbling = thread::spawn(move || {
        // A handshake record header announcing 512 bytes, then zeros.
        for byte in [0x16, 0x03, 0x01, 0x02, 0x00].into_iter().chain([0; 20]) {
            if writer.write_all(&[byte]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(300));
        }
    });
    // Meanwhile others are served.
    let report = python(
        &tools,
        server.addr(),
        Py {
            send: &["meanwhile"],
            ..Py::default()
        },
    );
    assert!(served(&report, &server)[0].starts_with("Echo=>meanwhile at "));
    for (who, watched) in [("silent", silent), ("dribbling", dribbler)] {
        let took = watched.join().unwrap();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "the {who} client was closed after {took:?}"
        );
    }
    dribbling.join().unwrap();
    wait_refused(&server, "tls_timeout", 2);
    assert_eq!(refused(&server, "tls_plaintext"), 0);
}

#[test]
fn one_deadline_covers_the_proxy_header_and_the_handshake() {
    let Some(tools) = tools() else {
        return;
    };
    let mut args = tools.tls_args();
    args.extend(
        [
            "--proxy-protocol",
            "--tls-handshake-timeout",
            "2s",
            "--admin",
            "127.0.0.1:0",
        ]
        .map(String::from),
    );
    let server = Server::start_with("kit", &strs(&args));
    // The header comes late, then nothing: closed 2 s after connecting,
    // not 2 s after the header.
    let since = Instant::now();
    let mut late = connect(server.addr());
    thread::sleep(Duration::from_millis(1500));
    late.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 41000 50007\r\n")
        .unwrap();
    let (_, took) = until_closed(&mut late, since, Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(3000),
        "closed after {took:?}"
    );
    wait_refused(&server, "tls_timeout", 1);
    // A header in time, then a handshake: served.
    let mut client = connect(server.addr());
    client
        .write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 41000 50007\r\n")
        .unwrap();
    let mut session = Session::over(client, &tools.path("ca.pem"));
    let tls = session.ask("tls");
    assert!(tls.starts_with("tls TLSv1.3 "), "{tls}");
}

#[test]
fn room_messages_reach_tls_members_readable() {
    let Some(tools) = tools() else {
        return;
    };
    let args = tools.tls_args();
    let server = Server::start_with("kit", &strs(&args));
    let ca = tools.path("ca.pem");
    let mut alice = Session::open(server.addr(), &ca);
    let mut bob = Session::open(server.addr(), &ca);
    assert_eq!(alice.ask("join lobby"), "ok");
    assert_eq!(bob.ask("join lobby"), "ok");
    assert_eq!(bob.ask("publish lobby hello over tls"), "published 1");
    assert_eq!(
        alice.line_within(TIMEOUT).as_deref(),
        Some("hello over tls")
    );
    // Messages and the member's own answers, each whole, in one session.
    for n in 0..20 {
        assert_eq!(
            bob.ask(&format!("publish lobby message {n}")),
            "published 1"
        );
    }
    // The answer to `id` comes among them, after those already sent.
    let mut lines = vec![alice.ask("id")];
    while lines.len() < 21 {
        let line = alice
            .line_within(TIMEOUT)
            .unwrap_or_else(|| panic!("only {lines:?} arrived"));
        lines.push(line);
    }
    let (ids, heard): (Vec<String>, Vec<String>) =
        lines.into_iter().partition(|line| line.starts_with("id "));
    assert_eq!(ids.len(), 1, "{ids:?} {heard:?}");
    let expected: Vec<String> = (0..20).map(|n| format!("message {n}")).collect();
    assert_eq!(heard, expected);
    assert_eq!(alice.line_within(Duration::from_millis(300)), None);
    // A handler that returns ends the session with close_notify.
    assert_eq!(bob.ask("quit"), "bye");
    assert!(bob.ends_with_close_notify(), "no close_notify");
}

#[test]
fn alpn_is_agreed_and_a_client_without_a_common_protocol_is_still_served() {
    let Some(tools) = tools() else {
        return;
    };
    let mut args = tools.tls_args();
    args.extend(["--tls-alpn", "hotsock/1", "--tls-alpn", "h2"].map(String::from));
    let server = Server::start_with("kit", &strs(&args));
    for (offered, agreed) in [
        (&["hotsock/1"][..], Some("hotsock/1")),
        (&["other", "h2"], Some("h2")),
        (&["other"], None),
        (&[], None),
    ] {
        let report = python(
            &tools,
            server.addr(),
            Py {
                alpn: offered,
                send: &["tls"],
                ..Py::default()
            },
        );
        let tls = &served(&report, &server)[0];
        assert_eq!(report["alpn"].as_str(), agreed, "{offered:?}: {report}");
        let alpn = format!(" alpn={} ", agreed.unwrap_or("-"));
        assert!(tls.contains(&alpn), "{offered:?}: {tls}");
    }
}

#[test]
fn a_proxy_v2_header_then_tls_gives_the_handler_the_client_and_its_tls() {
    let Some(haproxy) = system_tool("haproxy", "haproxy") else {
        return;
    };
    let Some(tools) = tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut args = tools.tls_args();
    let ca = tools.path("ca.pem").display().to_string();
    args.extend(
        [
            "--proxy-protocol",
            "--tls-client-auth",
            "optional",
            "--tls-client-ca",
            &ca,
        ]
        .map(String::from),
    );
    let server = Server::start_with("kit", &strs(&args));
    // HAProxy in TCP mode: the TLS bytes pass through, after a PROXY v2
    // header naming the client.
    let backend = server.addr();
    let proxy = Haproxy::start_with(
        &haproxy,
        |frontend| {
            Ok(format!(
                "global\n    log stderr format short local0 notice\n\
                 defaults\n    mode tcp\n    log global\n    timeout connect 2s\n\
                 \x20   timeout client 30s\n    timeout server 30s\n\
                 frontend tls_through\n    bind {frontend}\n    default_backend hotsock\n\
                 backend hotsock\n    server hotsock1 {backend} send-proxy-v2\n"
            ))
        },
        &dir.path().join("haproxy.cfg"),
        &dir.path().join("haproxy.log"),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    for cert in [None, Some("device")] {
        let report = python(
            &tools,
            proxy.frontend(),
            Py {
                cert,
                source: Some("127.0.0.9"),
                send: &["tls", "id"],
                ..Py::default()
            },
        );
        let replies = served(&report, &server);
        let subject = match cert {
            None => " certs=0 subject=-",
            Some(_) => " subject=CN=device-42",
        };
        assert!(
            replies[0].starts_with("tls TLSv1.3 ")
                && replies[0].contains(" sni=localhost ")
                && replies[0].ends_with(subject),
            "{replies:?}; haproxy:\n{}",
            proxy.log()
        );
        // The log names the client, the balancer it came through, and TLS.
        let id = replies[1].strip_prefix("id ").expect("`id N`");
        let line = server.wait_for_log(&[&format!("conn {id} "), "connected, tls"]);
        assert!(
            line.contains(" 127.0.0.9:") && line.contains(" via 127.0.0.1:"),
            "{line}"
        );
    }
}

#[test]
fn the_certificate_expiry_is_a_metric() {
    let dir = tempfile::tempdir().unwrap();
    // To the second, so that the metric can be compared exactly.
    let not_after = unix_now() + 30 * DAY;
    let (cert, key) = dated(dir.path(), "expiring", unix_now() - DAY, not_after);
    let server = Server::start_with(
        "kit",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let expiries = samples(&server, "hotsock_tls_certificate_expiry_timestamp_seconds");
    let found: Vec<_> = expiries
        .iter()
        .filter(|(labels, _)| {
            labels.get("listener").map(String::as_str) == Some("default")
                && labels.get("certificate").map(String::as_str) == cert.to_str()
        })
        .collect();
    assert_eq!(found.len(), 1, "{expiries:?}");
    assert_eq!(found[0].1, not_after as f64, "{expiries:?}");

    // Renewed in place and reloaded: the metric follows.
    let renewed = unix_now() + 60 * DAY;
    let (new_cert, new_key) = dated(dir.path(), "renewed", unix_now() - DAY, renewed);
    std::fs::copy(new_key, &key).unwrap();
    std::fs::copy(new_cert, &cert).unwrap();
    server.signal(libc::SIGHUP);
    let now = std::cell::RefCell::new(Vec::new());
    eventually(
        || {
            let expiries = samples(&server, "hotsock_tls_certificate_expiry_timestamp_seconds");
            let mut now = now.borrow_mut();
            *now = expiries
                .iter()
                .filter(|(labels, _)| {
                    labels.get("certificate").map(String::as_str) == cert.to_str()
                })
                .map(|(_, value)| *value)
                .collect();
            *now == [renewed as f64]
        },
        || {
            format!(
                "{:?}, not {renewed}, after SIGHUP:\n{}",
                now.borrow(),
                server.log()
            )
        },
    );
}

#[test]
fn every_key_format_is_served() {
    let Some(tools) = tools() else {
        return;
    };
    let dir = tools.dir.path();
    // The same EC key as SEC1 ("EC PRIVATE KEY"); an RSA one as PKCS#1.
    openssl(
        &tools.openssl,
        dir,
        &[
            "pkey",
            "-in",
            "server.key",
            "-traditional",
            "-out",
            "sec1.key",
        ],
    );
    let san = "subjectAltName=DNS:localhost,IP:127.0.0.1";
    let rsa = ["-newkey", "rsa:2048", "-nodes"];
    issue_by(&tools.openssl, dir, "rsa", "localhost", san, "ca", &rsa);
    openssl(
        &tools.openssl,
        dir,
        &["pkey", "-in", "rsa.key", "-traditional", "-out", "rsa1.key"],
    );
    for (cert, key, header) in [
        ("server.pem", "server.key", "-----BEGIN PRIVATE KEY-----"),
        ("server.pem", "sec1.key", "-----BEGIN EC PRIVATE KEY-----"),
        ("rsa.pem", "rsa1.key", "-----BEGIN RSA PRIVATE KEY-----"),
    ] {
        let text = std::fs::read_to_string(dir.join(key)).unwrap();
        assert!(text.starts_with(header), "{key}: {text}");
        let (cert, key) = (tools.path(cert), tools.path(key));
        let args = [
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        let server = Server::start_with("guest_handler", &args);
        let report = python(
            &tools,
            server.addr(),
            Py {
                send: &["keyed"],
                ..Py::default()
            },
        );
        let replies = served(&report, &server);
        assert!(
            replies[0].starts_with("Echo=>keyed at "),
            "{header}: {replies:?}"
        );
    }
}

#[test]
fn a_chain_through_an_intermediate_ca_is_sent_and_verified_both_ways() {
    let Some(tools) = tools() else {
        return;
    };
    let dir = tools.dir.path();
    let ca_ext = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign";
    issue_by(
        &tools.openssl,
        dir,
        "int",
        "hotsock intermediate",
        ca_ext,
        "ca",
        &EC,
    );
    let san = "subjectAltName=DNS:localhost,IP:127.0.0.1";
    issue_by(
        &tools.openssl,
        dir,
        "leaf",
        "leaf.localhost",
        san,
        "int",
        &EC,
    );
    let client = "extendedKeyUsage=clientAuth";
    issue_by(
        &tools.openssl,
        dir,
        "device99",
        "device-99",
        client,
        "int",
        &EC,
    );
    // Leaf first; clients trust only the root, ca.pem.
    let served_chain = chain(dir, "leaf-chain.pem", &["leaf.pem", "int.pem"]);
    chain(dir, "device-chain.pem", &["device99.pem", "int.pem"]);
    std::fs::copy(dir.join("device99.key"), dir.join("device-chain.key")).unwrap();
    let (ca, key) = (tools.path("ca.pem"), tools.path("leaf.key"));
    let server = Server::start_with(
        "kit",
        &[
            "--tls-cert",
            served_chain.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-auth",
            "require",
            "--tls-client-ca",
            ca.to_str().unwrap(),
        ],
    );
    let report = python(
        &tools,
        server.addr(),
        Py {
            cert: Some("device-chain"),
            send: &["tls"],
            ..Py::default()
        },
    );
    let tls = &served(&report, &server)[0];
    assert_eq!(report["cn"], "leaf.localhost", "{report}");
    // The handler gets the client's whole chain, leaf first.
    assert!(tls.ends_with(" certs=2 subject=CN=device-99"), "{tls}");
}

#[test]
fn a_config_without_listener_tables_takes_every_tls_key_at_its_top_level() {
    let Some(tools) = tools() else {
        return;
    };
    let dir = tools.dir.path();
    issue(&tools.openssl, dir, "api", "api.test", "DNS:api.test");
    let config = config_file(
        dir,
        "top.toml",
        &format!(
            "addr = \"127.0.0.1:0\"\nhandler = {}\n\
             tls-cert = \"server.pem\"\ntls-key = \"server.key\"\n\
             tls-client-auth = \"optional\"\ntls-client-ca = \"ca.pem\"\n\
             tls-alpn = \"hotsock/1\"\ntls-handshake-timeout = \"1s\"\n\
             [[tls-sni]]\nname = \"api.test\"\ncert = \"api.pem\"\nkey = \"api.key\"\n",
            toml_path(&wasm("kit"))
        ),
    );
    let server = Server::start_config(Path::new(&config), 1, &[]);
    let report = python(
        &tools,
        server.addr(),
        Py {
            server_name: Some("api.test"),
            cert: Some("device"),
            alpn: &["h2", "hotsock/1"],
            send: &["tls"],
            ..Py::default()
        },
    );
    let tls = &served(&report, &server)[0];
    assert_eq!(report["cn"], "api.test", "{report}");
    // OpenSSL sends the device's certificate and, found in its trust
    // store, the CA's: `certs` is not checked.
    assert!(
        tls.contains(" sni=api.test alpn=hotsock/1 certs=")
            && tls.ends_with(" subject=CN=device-42"),
        "{tls}"
    );
    // The handshake timeout too: a silent client is cut after 1 s.
    let since = Instant::now();
    let (_, took) = until_closed(&mut connect(server.addr()), since, Duration::from_secs(5));
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn large_room_messages_reach_tls_members_whole_between_their_answers() {
    const MESSAGES: usize = 30_000;
    const TEXT: usize = 1000;
    let Some(tools) = tools() else {
        return;
    };
    let mut args = tools.tls_args();
    args.extend(["--room-backlog", "256KiB"].map(String::from));
    let server = Server::start_with("kit", &strs(&args));
    let ca = tools.path("ca.pem");
    // One member never reads: cut off at the backlog, the others unhurt.
    // A small receive buffer, so that its backlog builds up soon.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr().into()).unwrap();
    let mut stuck = Session::over(socket.into(), &ca);
    assert_eq!(stuck.ask("join fan"), "ok");
    let body = "x".repeat(TEXT);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut reader = Session::open(server.addr(), &ca);
            assert_eq!(reader.ask("join fan"), "ok");
            let body = body.clone();
            thread::spawn(move || {
                // Every 100 messages it asks for its id: the answer arrives
                // whole among them, and every message arrives whole.
                let (mut heard, mut asked, mut answered) = (0, 0, 0);
                while heard < MESSAGES || answered < asked {
                    if heard / 100 > asked && heard < MESSAGES {
                        reader.stream.write_all(b"id\n").unwrap();
                        reader.stream.flush().unwrap();
                        asked += 1;
                    }
                    let line = reader.line_within(TIMEOUT).unwrap_or_else(|| {
                        panic!("a reader heard {heard}, {answered} of {asked} answers")
                    });
                    match line.strip_prefix("id ") {
                        Some(id) => {
                            assert!(id.parse::<u64>().is_ok(), "{line:?}");
                            answered += 1;
                        }
                        None => {
                            assert_eq!(line, body, "message {heard} arrived broken");
                            heard += 1;
                        }
                    }
                }
                (heard, answered)
            })
        })
        .collect();
    let mut publisher = Session::open(server.addr(), &ca);
    let line = format!("publish fan {body}\n");
    let mut published = 0;
    // In batches, reading the answers between them: neither side's buffers
    // fill while the other waits.
    for _ in 0..MESSAGES / 100 {
        for _ in 0..100 {
            publisher.stream.write_all(line.as_bytes()).unwrap();
        }
        publisher.stream.flush().unwrap();
        for _ in 0..100 {
            let answer = publisher.line_within(TIMEOUT).expect("an answer");
            let n: usize = answer
                .strip_prefix("published ")
                .unwrap_or_else(|| panic!("{answer:?}"))
                .parse()
                .unwrap();
            published += n;
        }
    }
    for reader in readers {
        assert_eq!(reader.join().unwrap(), (MESSAGES, MESSAGES / 100 - 1));
    }
    // Every message went to both readers, and to the stuck member until it
    // was cut off.
    assert!(
        (2 * MESSAGES..3 * MESSAGES).contains(&published),
        "{published}"
    );
    server.wait_for_log(&["disconnected", "--room-backlog"]);
    drop(stuck);
}

#[test]
fn watch_with_a_config_reloads_an_sni_certificate() {
    let Some(tools) = tools() else {
        return;
    };
    let dir = tools.dir.path();
    issue(&tools.openssl, dir, "api", "api.test", "DNS:api.test");
    issue(
        &tools.openssl,
        dir,
        "api2",
        "api-renewed.test",
        "DNS:api.test",
    );
    let config = config_file(
        dir,
        "watched.toml",
        &format!(
            "addr = \"127.0.0.1:0\"\nhandler = {}\n\
             tls-cert = \"server.pem\"\ntls-key = \"server.key\"\n\
             [[tls-sni]]\nname = \"api.test\"\ncert = \"api.pem\"\nkey = \"api.key\"\n",
            toml_path(&wasm("kit"))
        ),
    );
    let server = Server::start_config(Path::new(&config), 1, &["--watch"]);
    let api = Some("api.test");
    assert_eq!(cn_for(&tools, &server, server.addr(), api), "api.test");
    std::fs::copy(dir.join("api2.key"), dir.join("api.key")).unwrap();
    std::fs::copy(dir.join("api2.pem"), dir.join("api.pem")).unwrap();
    wait_for_cn(&tools, &server, server.addr(), api, "api-renewed.test");
}

#[test]
fn handler_reads_keep_their_timeouts_over_tls() {
    let Some(tools) = tools() else {
        return;
    };
    let mut args = tools.tls_args();
    args.extend(["--idle-timeout", "1s"].map(String::from));
    let server = Server::start_with("kit", &strs(&args));
    let mut session = Session::open(server.addr(), &tools.path("ca.pem"));
    // read-within: nothing comes, then something comes in time.
    let started = Instant::now();
    assert_eq!(session.ask("within 300"), "timed-out");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    session.stream.write_all(b"within 5000\n").unwrap();
    session.stream.flush().unwrap();
    thread::sleep(Duration::from_millis(200));
    assert_eq!(session.ask("late"), "got late");
    // Then silence: closed at the idle timeout. Without close_notify: the
    // host skips it for a connection it cut off (as nginx does on a
    // timeout), so either end is accepted here.
    let started = Instant::now();
    let _ = session.end();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    server.wait_for_log(&["timed out (--idle-timeout)"]);
}

#[test]
fn a_binary_upgrade_serves_tls_from_the_new_process_and_keeps_old_sessions() {
    let Some(tools) = tools() else {
        return;
    };
    let admin = tools.path("admin.sock").display().to_string();
    let mut args = tools.tls_args();
    args.extend(["--admin".to_string(), admin]);
    let server = Server::start_with("kit", &strs(&args));
    let ca = tools.path("ca.pem");
    let mut old = Session::open(server.addr(), &ca);
    assert!(old.ask("tls").starts_with("tls TLSv1.3 "));

    server.signal(libc::SIGUSR2);
    let new = taken_over_by(&server);
    let _reap = Reap(new);
    assert_ne!(new, server.pid());
    // The new process reads the certificates and serves TLS on the socket
    // it was given; the old one finishes its session.
    let mut session = Session::open(server.addr(), &ca);
    assert!(session.ask("tls").starts_with("tls TLSv1.3 "));
    assert_eq!(server.status()["pid"], new);
    assert!(old.ask("tls").starts_with("tls TLSv1.3 "));
}
