//! `hotsock client`: send lines, print whatever the server sends as it
//! arrives; scriptable through stdin.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::fleet::certificates;
use crate::util::{
    Server, TIMEOUT, connect, error_of, free_port, hotsock, is_ctime, read_until, system_tool,
};

/// `hotsock client` against `server`, with every stream piped.
fn spawn(server: &Server, args: &[&str]) -> Child {
    hotsock()
        .args(["client", &server.addr().to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs `hotsock client` against `server` with `input` on stdin.
fn client(server: &Server, args: &[&str], input: &str) -> Output {
    let mut child = spawn(server, args);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Its stdout, after checking that it succeeded.
fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Asserts that `text` has each of `parts`, in this order.
fn assert_in_order(text: &str, parts: &[&str]) {
    let mut rest = text;
    for part in parts {
        let at = rest
            .find(part)
            .unwrap_or_else(|| panic!("{part:?} missing, or out of order, in {text:?}"));
        rest = &rest[at + part.len()..];
    }
}

#[test]
fn piped_lines_are_sent_and_replies_printed() {
    let server = Server::start("guest_handler");
    let output = client(&server, &[], "hello\nworld\n");
    let stdout = stdout_of(&output);
    // Each line went on its own (the second waited for the first's reply),
    // and each reply is on a line of its own.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (line, word) in lines.iter().zip(["hello", "world"]) {
        let time = line
            .strip_prefix(&format!("Echo=>{word} at "))
            .unwrap_or_else(|| panic!("{line}"));
        assert!(is_ctime(time.as_bytes()), "{line}");
    }
    // Without a terminal there is no prompt to clutter the output.
    assert!(!stdout.contains("-> "));
    assert!(output.stderr.is_empty(), "{output:?}");
}

#[test]
fn piped_input_shows_the_reply_to_the_last_line() {
    let server = Server::start("guest_handler");
    let output = client(&server, &["--newline"], "one\ntwo\n");
    let stdout = stdout_of(&output);
    assert_in_order(&stdout, &["Echo=>one at ", "\n", "Echo=>two at ", "\n"]);
}

#[test]
fn a_greeting_and_every_reply_are_shown() {
    let server = Server::start_with("chat", &["--keyvalue", "chat"]);
    let output = client(&server, &["--newline"], "alice\n/who\n/quit\n");
    let stdout = stdout_of(&output);
    assert_in_order(
        &stdout,
        &["nickname? ", "welcome, alice", "1 online: alice", "bye"],
    );
    // The server closing after the last line is the usual end of a script.
    assert!(output.stderr.is_empty(), "{output:?}");
}

#[test]
fn messages_pushed_by_the_server_are_shown_while_waiting_for_input() {
    let server = Server::start_with("chat", &["--keyvalue", "chat"]);
    let mut alice = Running::start(&server, &["--newline"]);
    alice.send("alice\n");
    alice.wait_for("welcome, alice");

    // Bob joins and talks while alice's client waits for her next line.
    let mut bob = connect(server.addr());
    read_until(&mut bob, |b| b.ends_with(b"nickname? "));
    bob.write_all(b"bob\n").unwrap();
    read_until(&mut bob, |b| b.ends_with(b"\n"));
    bob.write_all(b"hi alice\n").unwrap();
    alice.wait_for("<bob> hi alice");

    let output = alice.finish();
    assert_in_order(
        &String::from_utf8_lossy(&output.stdout),
        &[
            "nickname? ",
            "welcome, alice",
            "* bob joined",
            "<bob> hi alice",
        ],
    );
}

#[test]
fn a_line_based_server_sent_no_newline_gets_a_hint() {
    let server = Server::start_with("chat", &["--keyvalue", "chat"]);
    let mut client = Running::start(&server, &["--wait", "500ms"]);
    // Typed after the greeting, as a person would: the line is what went
    // unanswered, not the greeting.
    client.wait_for("nickname? ");
    client.send("alice\n");
    let output = client.finish();
    // Nothing more: chat still waits for the end of the line.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.trim_end(), "nickname?", "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("try --newline"), "{stderr}");
}

#[test]
fn the_help_explains_the_newline_choice() {
    let output = hotsock().args(["client", "--help"]).output().unwrap();
    let help = stdout_of(&output);
    assert!(help.contains("--newline"), "{help}");
    assert!(help.contains("whole lines"), "{help}");
    assert!(help.contains("--wait"), "{help}");
}

#[test]
fn quit_ends_the_session_and_can_send_a_quit_message() {
    let server = Server::start("probe");
    let output = client(
        &server,
        &["--quit-message", "print bye from the client"],
        "one\nquit\nnever sent\n",
    );
    // The reply to the quit message is shown too.
    assert_eq!(stdout_of(&output), "one\nprinted\n");
    server.wait_for_log(&["stdout: bye from the client"]);
    assert!(!server.log().contains("never sent"));
}

#[test]
fn a_server_that_closes_is_reported() {
    let server = Server::start("probe");
    let started = Instant::now();
    let output = client(&server, &[], "fail\nnever sent\n");
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("connection closed by the server"),
        "{stderr}"
    );
    // At once, without waiting for replies that cannot come.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!server.log().contains("never sent"));
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    let stderr = error_of(hotsock().args(["client", &format!("127.0.0.1:{}", free_port())]));
    assert!(stderr.contains("cannot connect to 127.0.0.1:"), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(!stderr.contains("os error"), "{stderr}");
}

/// A `hotsock client` still running, its stdin open, its stdout collected
/// as it arrives.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Running {
    fn start(server: &Server, args: &[&str]) -> Self {
        let mut child = spawn(server, args);
        let stdin = child.stdin.take();
        let mut pipe = child.stdout.take().unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&stdout);
        let reader = thread::spawn(move || {
            let mut chunk = [0; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                collected.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Running {
            child,
            stdin,
            stdout,
            reader: Some(reader),
        }
    }

    fn send(&mut self, input: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits until the client has printed `needle`.
    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let stdout = String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned();
            if stdout.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the client did not print {needle:?} within {TIMEOUT:?}: {stdout:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends the input and waits for the client to exit, successfully.
    fn finish(mut self) -> Output {
        drop(self.stdin.take());
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let mut stderr = Vec::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            pipe.read_to_end(&mut stderr).unwrap();
        }
        let status = self.child.wait().unwrap();
        let stdout = std::mem::take(&mut *self.stdout.lock().unwrap());
        let output = Output {
            status,
            stdout,
            stderr,
        };
        assert!(output.status.success(), "{output:?}");
        output
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed test must not leave the client behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_server -quiet` on a free port of 127.0.0.1, serving
/// `server.pem` from the test certificates in `dir` (see
/// [`certificates`]), with `args` added: what a client sends is printed on
/// its stdout, its stdin is sent to the client. Killed when dropped.
struct SServer {
    child: Child,
    port: u16,
    /// Kept open: s_server ends a session when its stdin ends.
    _stdin: ChildStdin,
}

impl SServer {
    /// `None` (the test skips) when the `openssl` CLI is missing.
    fn start(dir: &Path, args: &[&str], to_client: &str) -> Option<Self> {
        let tool = system_tool("openssl", "openssl")?;
        let port = free_port();
        let mut child = Command::new(tool)
            .args([
                "s_server",
                "-quiet",
                "-accept",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["-cert", "server.pem", "-key", "server.key"])
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read once a client is connected.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(to_client.as_bytes()).unwrap();
        let server = SServer {
            child,
            port,
            _stdin: stdin,
        };
        // s_server says nothing when it listens with -quiet, and a probe
        // connection would take what its stdin sends: wait until the kernel
        // lists the port as listening.
        let listening = format!(" 0100007F:{port:04X} 00000000:0000 0A ");
        let started = Instant::now();
        while !std::fs::read_to_string("/proc/net/tcp")
            .unwrap()
            .contains(&listening)
        {
            assert!(started.elapsed() < TIMEOUT, "s_server did not listen");
            thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops it; what it printed on stdout and stderr.
    fn finish(mut self) -> (String, String) {
        let _ = self.child.kill();
        let mut stdout = String::new();
        let mut stderr = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (stdout, stderr)
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test certificates of [`certificates`] in a new temporary directory;
/// `None` (the test skips) when the `openssl` CLI is missing.
fn test_certificates() -> Option<tempfile::TempDir> {
    let tool = system_tool("openssl", "openssl")?;
    let dir = tempfile::tempdir().unwrap();
    certificates(&tool, dir.path());
    Some(dir)
}

/// `hotsock client ARGS ADDR` with `input` on stdin, bounded by a timeout.
fn tls_client(addr: &str, args: &[&str], dir: &Path, input: &str) -> Output {
    let mut child = hotsock()
        .args(["client", "--wait", "500ms", "--timeout", "10s"])
        .args(args)
        .arg(addr)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    // Bounded: its output is small enough to wait in the pipes meanwhile.
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn tls_exchanges_lines_both_ways() {
    let Some(dir) = test_certificates() else {
        return;
    };
    let Some(server) = SServer::start(dir.path(), &[], "from-server\n") else {
        return;
    };
    let output = tls_client(
        &server.addr(),
        &[
            "--tls",
            "--cafile",
            "ca.pem",
            "--servername",
            "localhost",
            "--newline",
        ],
        dir.path(),
        "from-client\n",
    );
    let stdout = stdout_of(&output);
    assert!(stdout.contains("from-server"), "{stdout}");
    let (received, log) = server.finish();
    assert!(received.contains("from-client\n"), "{received}\n{log}");
}

#[test]
fn tls_with_the_wrong_ca_fails_the_handshake_clearly() {
    let Some(dir) = test_certificates() else {
        return;
    };
    let Some(server) = SServer::start(dir.path(), &[], "") else {
        return;
    };
    let output = tls_client(
        &server.addr(),
        &["--tls", "--cafile", "other-ca.pem"],
        dir.path(),
        "hello\n",
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "TLS handshake with {} failed: invalid peer certificate: UnknownIssuer",
        server.addr()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn tls_presents_a_client_certificate() {
    let Some(dir) = test_certificates() else {
        return;
    };
    // -Verify: a client without a certificate is refused.
    let Some(server) = SServer::start(dir.path(), &["-Verify", "1", "-CAfile", "ca.pem"], "hi\n")
    else {
        return;
    };
    // No --servername: 127.0.0.1 verifies against the certificate's IP SAN.
    let args = [
        "--tls",
        "--cafile",
        "ca.pem",
        "--cert",
        "device.pem",
        "--key",
        "device.key",
        "--newline",
    ];
    let output = tls_client(&server.addr(), &args, dir.path(), "signed\n");
    let stdout = stdout_of(&output);
    assert!(stdout.contains("hi"), "{stdout}");
    let (received, log) = server.finish();
    assert!(received.contains("signed\n"), "{received}\n{log}");
    assert!(log.contains("CN = device-42"), "{log}");
}

#[test]
fn tls_without_a_cafile_is_refused() {
    let stderr =
        error_of(hotsock().args(["client", "--tls", &format!("127.0.0.1:{}", free_port())]));
    assert!(stderr.contains("--tls needs --cafile"), "{stderr}");
}
