//! The example handlers in `handlers/` do what their module docs promise,
//! under the real server: `slow-echo`'s delay holds up only its own client,
//! `greet` talks to its interactive Python client through the server log, and
//! `whoami` names each connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{Server, TIMEOUT, echo, echo_chunks, read_until};

/// The `ECHO_DELAY` the slow-echo tests grant: long enough to measure, short
/// enough that five of them in a row would clearly show.
const DELAY: Duration = Duration::from_millis(500);

/// Serves slow-echo with `ECHO_DELAY` set to [`DELAY`].
fn slow_echo() -> Server {
    let delay = format!("ECHO_DELAY={}", DELAY.as_secs_f64());
    Server::start_with("slow_echo", &["--env", &delay])
}

/// ` PEER `: how the server log names the connection `client` is on.
fn peer(client: &TcpStream) -> String {
    format!(" {} ", client.local_addr().unwrap())
}

#[test]
fn slow_echo_replies_like_the_echo_handler_after_the_delay() {
    let server = slow_echo();
    let mut client = server.connect();
    let started = Instant::now();
    // `echo` checks the whole `Echo=>hello at TIME\n` format.
    assert_eq!(echo(&mut client, b"hello\n"), [b"hello\n"]);
    let took = started.elapsed();
    assert!(took >= DELAY, "replied after only {took:?}");
}

#[test]
fn slow_echo_serves_concurrent_clients_at_the_same_time() {
    const CLIENTS: usize = 5;
    let server = slow_echo();
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| server.connect()).collect();
    let started = Instant::now();
    // Every message is sent before any reply is read: one client after the
    // other this would take five delays, one thread per client about one.
    for (i, client) in clients.iter_mut().enumerate() {
        client.write_all(format!("client {i}").as_bytes()).unwrap();
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let reply = read_until(client, |b| echo_chunks(b).is_some_and(|c| c.len() == 1));
        assert_eq!(
            echo_chunks(&reply).unwrap(),
            [format!("client {i}").as_bytes()]
        );
    }
    let took = started.elapsed();
    assert!(
        took < DELAY * CLIENTS as u32 / 2,
        "{CLIENTS} clients with a {DELAY:?} delay each took {took:?}"
    );
}

#[test]
fn slow_echo_reports_an_unusable_delay_in_the_log() {
    let server = Server::start_with("slow_echo", &["--env", "ECHO_DELAY=soon"]);
    let client = server.connect();
    // Read when the connection starts, so no message (and no 5 s wait) is needed.
    server.wait_for_log(&[
        &peer(&client),
        "stderr: ECHO_DELAY=\"soon\" is not a number of seconds; using the default, 5s",
    ]);
}

#[test]
fn greet_logs_hello_and_the_input_upper_cased_and_replies_a_dash() {
    let server = Server::start("greet");
    let mut client = server.connect();
    for (input, logged) in [("world", "Hello WORLD"), ("again\n", "Hello AGAIN")] {
        client.write_all(input.as_bytes()).unwrap();
        assert_eq!(read_until(&mut client, |b| !b.is_empty()), b"-");
        server.wait_for_log(&[&peer(&client), &format!("stdout: {logged}")]);
    }
}

/// Sends `message` to greet and returns its reply.
fn greet(client: &mut TcpStream, message: &str) -> Vec<u8> {
    client.write_all(message.as_bytes()).unwrap();
    read_until(client, |b| !b.is_empty())
}

#[test]
fn greet_closes_the_connection_after_quit_in_any_case() {
    let server = Server::start("greet");
    let mut client = server.connect();
    assert_eq!(greet(&mut client, "hello"), b"-");
    client.write_all(b"bye --QuIt--").unwrap();
    // The classic server closes without a reply: its client never reads one.
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .expect("--QuIt-- ends the connection");
    assert_eq!(rest, b"", "a reply to --QuIt--");
    server.wait_for_log(&[&peer(&client), "stdout: Hello BYE --QUIT--"]);
    server.wait_for_log(&[&peer(&client), "closed after"]);
}

#[test]
fn greet_reports_an_input_longer_than_its_buffer_in_the_log() {
    let server = Server::start("greet");
    let mut client = server.connect();
    // 6000 bytes in one write: a full 5120-byte read of `a`, then the `b`s.
    let rest = "b".repeat(880);
    client
        .write_all(format!("{}{rest}", "a".repeat(5120)).as_bytes())
        .unwrap();
    assert_eq!(read_until(&mut client, |b| b.len() == 2), b"--");
    server.wait_for_log(&[
        &peer(&client),
        "stderr: a message filled the whole 5120-byte buffer; \
         if it was longer, the rest follows as further messages",
    ]);
    let rest = format!("stdout: Hello {}", rest.to_uppercase());
    server.wait_for_log(&[&peer(&client), &rest]);
}

#[test]
fn greet_talks_to_the_classic_python_client() {
    let server = Server::start("greet");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/clients/greet_client.py"
    );
    let mut python = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &server.addr().port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    // Dropped once written, so the client sees the end of its input too.
    python
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nthere\nquit\n")
        .unwrap();
    // Its output is a few lines, far from filling a pipe, so it can finish
    // before anything reads it.
    let deadline = Instant::now() + TIMEOUT;
    while python.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = python.kill();
            panic!("the Python client did not finish within {TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let output = python.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the client failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.matches("Received from server: -\n").count(),
        2,
        "the client printed:\n{stdout}"
    );

    // The conversation is in the server log, on the client's connection.
    let hello = server.wait_for_log(&["stdout: Hello HELLO"]);
    let conn = hello
        .split_once("conn ")
        .and_then(|(_, rest)| rest.split(' ').nth(1).map(|peer| format!(" {peer} ")))
        .expect("a connection's log line names its peer");
    server.wait_for_log(&[&conn, "stdout: Hello THERE"]);
    server.wait_for_log(&[&conn, "closed after"]);
}

/// Sends `data` to whoami and returns the name it answered with.
fn whoami(client: &mut TcpStream, data: &[u8]) -> String {
    client.write_all(data).unwrap();
    let reply = read_until(client, |b| b.ends_with(data));
    let name = reply
        .strip_suffix(data)
        .and_then(|r| r.strip_suffix(b": "))
        .unwrap_or_else(|| panic!("unexpected reply {:?}", String::from_utf8_lossy(&reply)));
    String::from_utf8(name.to_vec()).unwrap()
}

#[test]
fn whoami_answers_with_the_connection_id() {
    let server = Server::start("whoami");
    let mut client = server.connect();
    let name = whoami(&mut client, b"hello\n");
    // The id is the one the server logs the connection under.
    let id = name.strip_prefix("conn-").expect("named conn-ID");
    server.wait_for_log(&[&format!("conn {id}{}", peer(&client)), "connected"]);
    // The same name for every message on the connection; bytes as they came.
    assert_eq!(whoami(&mut client, b"\xff\x00bytes"), name);
}

#[test]
fn whoami_gives_two_simultaneous_connections_different_names() {
    let server = Server::start("whoami");
    let (mut first, mut second) = (server.connect(), server.connect());
    let (one, two) = (whoami(&mut first, b"one"), whoami(&mut second, b"two"));
    assert_ne!(one, two);
    // Both still open, both still answering under their own names.
    assert_eq!(whoami(&mut first, b"one again"), one);
    assert_eq!(whoami(&mut second, b"two again"), two);
}
