//! The default handler behaves like the textbook thread server's echo, and
//! so do its Python and JavaScript twins (`handlers/python-echo`,
//! `handlers/js-echo`): every check here runs against all three.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::util::{Server, connect, echo, echo_chunks, is_ctime, read_until};

/// One `Echo=>DATA at TIME` reply per message, TIME like `time.ctime()`.
fn replies_echo_data_at_time(server: &Server) {
    let mut client = server.connect();
    client.write_all(b"hello").unwrap();
    let reply = read_until(&mut client, |b| {
        echo_chunks(b).is_some_and(|c| c.len() == 1)
    });
    let reply = String::from_utf8(reply).unwrap();
    let time = reply
        .strip_prefix("Echo=>hello at ")
        .unwrap_or_else(|| panic!("unexpected reply {reply:?}"));
    assert!(
        is_ctime(time.as_bytes()),
        "not a ctime()-style time: {time:?}"
    );
}

/// A trailing line ending moves to the end of the reply: a line in, a line out.
fn a_line_gets_a_line_back(server: &Server) {
    let mut client = server.connect();
    for (line, eol) in [("hello\n", "\n"), ("dos\r\n", "\r\n")] {
        client.write_all(line.as_bytes()).unwrap();
        let reply = read_until(&mut client, |b| b.ends_with(b"\n"));
        let reply = String::from_utf8(reply).unwrap();
        let word = line.trim_end();
        let time = reply
            .strip_prefix(&format!("Echo=>{word} at "))
            .and_then(|rest| rest.strip_suffix(eol))
            .unwrap_or_else(|| panic!("unexpected reply {reply:?}"));
        assert!(
            is_ctime(time.as_bytes()),
            "not a ctime()-style time: {time:?}"
        );
    }
}

fn answers_every_message_on_one_connection(server: &Server) {
    let mut client = server.connect();
    for i in 0..20 {
        let message = format!("message {i}");
        assert_eq!(echo(&mut client, message.as_bytes()), [message.as_bytes()]);
    }
}

fn echoes_binary_data_byte_for_byte(server: &Server) {
    let mut client = server.connect();
    // Every byte value, so invalid UTF-8 and NULs included.
    let payload: Vec<u8> = (0..=255).collect();
    assert_eq!(echo(&mut client, &payload).concat(), payload);
}

fn echoes_all_of_a_message_larger_than_1024_bytes(server: &Server) {
    let mut client = server.connect();
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let chunks = echo(&mut client, &payload);
    assert!(
        chunks.len() >= payload.len() / 1024,
        "{} replies",
        chunks.len()
    );
    assert!(
        chunks.iter().all(|c| c.len() <= 1024),
        "a reply echoed more than 1024 bytes"
    );
    assert_eq!(chunks.concat(), payload);
}

/// Every echo check, on one server.
fn passes_the_echo_tests(server: &Server) {
    replies_echo_data_at_time(server);
    a_line_gets_a_line_back(server);
    answers_every_message_on_one_connection(server);
    echoes_binary_data_byte_for_byte(server);
    echoes_all_of_a_message_larger_than_1024_bytes(server);
}

#[test]
fn rust_replies_echo_data_at_time() {
    replies_echo_data_at_time(&Server::start("guest_handler"));
}

#[test]
fn rust_gives_a_line_back_for_a_line_like_nc_users_expect() {
    a_line_gets_a_line_back(&Server::start("guest_handler"));
}

#[test]
fn rust_answers_every_message_on_one_connection() {
    answers_every_message_on_one_connection(&Server::start("guest_handler"));
}

#[test]
fn rust_echoes_binary_data_byte_for_byte() {
    echoes_binary_data_byte_for_byte(&Server::start("guest_handler"));
}

#[test]
fn rust_echoes_all_of_a_message_larger_than_1024_bytes() {
    echoes_all_of_a_message_larger_than_1024_bytes(&Server::start("guest_handler"));
}

/// `guest` passes the echo tests from a cold start, which compiles it; a
/// second start loads the compiled code from the cache and must take well
/// under a second.
fn passes_the_echo_tests_and_starts_fast_from_the_cache(guest: &str) {
    let cache = tempfile::tempdir().unwrap();
    let args = ["--cache-dir", cache.path().to_str().unwrap()];
    let cold = Server::start_with(guest, &args);
    passes_the_echo_tests(&cold);
    drop(cold);

    let started = Instant::now();
    let warm = Server::start_with(guest, &args);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the second start took {took:?}"
    );
    replies_echo_data_at_time(&warm);
}

/// The Python handler passes the same tests, under the unchanged host. Its
/// first start compiles 18 MB of component (seconds).
#[test]
fn python_passes_the_echo_tests_and_starts_fast_from_the_cache() {
    passes_the_echo_tests_and_starts_fast_from_the_cache("python_echo");
}

/// The JavaScript handler (componentize-js) passes the same tests. Its first
/// start compiles 12 MB of component (7 to 14 s on two busy cores).
#[test]
fn javascript_passes_the_echo_tests_and_starts_fast_from_the_cache() {
    passes_the_echo_tests_and_starts_fast_from_the_cache("js_echo");
}

#[test]
fn serves_every_listener() {
    let server = Server::start_with(
        "guest_handler",
        &["--addr", "127.0.0.1:0", "--addr", "127.0.0.1:0"],
    );
    assert_eq!(server.addrs.len(), 2);
    assert_ne!(server.addrs[0], server.addrs[1]);
    for addr in &server.addrs {
        let mut client = connect(*addr);
        assert_eq!(echo(&mut client, b"which port?"), [b"which port?"]);
    }
}
