//! A crash reads well in the log: the handler's own frames with `file:line`,
//! std's panic machinery folded away, no false advice, the handler's prints
//! at INFO, and the same `closed after` line as every other connection.
//!
//! The `probe` fixture is built with line tables (`[profile.release.package.probe]`
//! in the workspace's Cargo.toml), as the log advises for any handler.

use std::io::Write;
use std::net::TcpStream;

use crate::util::{Server, ask, is_closed};

/// How the server's log lines name this client's connection: `conn ID PEER `.
fn log_name(client: &mut TcpStream) -> String {
    format!("conn {} ", ask(client, "whoami"))
}

/// The line of the probe's source that holds `needle`, counted from 1.
fn probe_line(needle: &str) -> usize {
    let source = include_str!("fixtures/probe/src/lib.rs");
    let index = source
        .lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in the probe's source"));
    index + 1
}

/// Whether `text` has a Rust symbol hash in it: 16 hex digits after `::h`
/// or `[`.
fn has_hash(text: &str) -> bool {
    let hex16 = |s: &str| s.len() >= 16 && s.as_bytes()[..16].iter().all(u8::is_ascii_hexdigit);
    text.match_indices("::h")
        .any(|(i, _)| hex16(&text[i + 3..]))
        || text.match_indices('[').any(|(i, _)| hex16(&text[i + 1..]))
}

/// Sends `command`, which ends the connection, and returns the log record
/// that says how it ended: its first line, then the backtrace under it.
fn crash(server: &Server, command: &str) -> (String, Vec<String>) {
    let mut client = server.connect();
    let name = log_name(&mut client);
    client.write_all(command.as_bytes()).unwrap();
    assert!(is_closed(&mut client), "{command} did not close it");
    let first = server.wait_for_log(&[&name, "WARN", "closed after"]);
    let log = server.log();
    let rest = log
        .lines()
        .skip_while(|line| *line != first.trim_end())
        .skip(1)
        // Every record starts with its `[TIMESTAMP LEVEL]`.
        .take_while(|line| !line.starts_with('['))
        .map(String::from)
        .collect();
    (first, rest)
}

#[test]
fn a_panic_backtrace_names_the_handlers_line_and_folds_std() {
    let server = Server::start("probe");
    let (first, backtrace) = crash(&server, "panic");
    assert!(first.contains("handler trapped"), "{first}");
    let text = backtrace.join("\n");
    assert_eq!(
        backtrace.first().map(String::as_str),
        Some("guest backtrace:"),
        "{text}"
    );
    let line = probe_line("\"panic\" => panic!");
    assert!(
        text.contains(&format!("tests/fixtures/probe/src/lib.rs:{line}:")),
        "no src/lib.rs:{line} in:\n{text}"
    );
    assert!(
        text.contains("<probe::Probe as probe::exports::hotsock::plugin::handler::Guest>::handle"),
        "{text}"
    );
    assert!(text.contains("frames of std and panic plumbing"), "{text}");
    assert!(text.contains("of wit-bindgen glue"), "{text}");
    for plumbing in [
        "std::",
        "core::",
        "__rust",
        "rust_panic",
        "panic_abort",
        "#handle",
    ] {
        assert!(!text.contains(plumbing), "{plumbing} is shown:\n{text}");
    }
    // No hashes: neither `::h85121401ccbe97ef` nor `std[d123b7a1a2ed1472]`.
    assert!(!has_hash(&text), "{text}");
    assert!(!text.contains("no debug info"), "{text}");
    assert!(backtrace.len() <= 6, "{text}");
}

#[test]
fn a_trap_backtrace_names_the_line_that_trapped() {
    let server = Server::start("probe");
    let (first, backtrace) = crash(&server, "trap");
    assert!(
        first.contains("handler trapped: wasm trap: wasm `unreachable` instruction executed"),
        "{first}"
    );
    let text = backtrace.join("\n");
    let line = probe_line("\"trap\" => trap()");
    assert!(text.contains(&format!("src/lib.rs:{line}:")), "{text}");
}

#[test]
fn the_guests_advice_to_set_rust_backtrace_is_not_logged() {
    // Unset, std advises `RUST_BACKTRACE=1`; set, it prints an empty
    // `stack backtrace:` and advises `RUST_BACKTRACE=full`.
    for args in [&[][..], &["--env", "RUST_BACKTRACE=1"]] {
        let server = Server::start_with("probe", args);
        let mut client = server.connect();
        let name = log_name(&mut client);
        client.write_all(b"panic").unwrap();
        assert!(is_closed(&mut client));
        // The panic's message stays; the note that ends it is false under hotsock.
        server.wait_for_log(&[&name, "stderr: ", "probe was asked to panic"]);
        server.wait_for_log(&[&name, "closed after"]);
        let log = server.log();
        assert!(!log.contains("RUST_BACKTRACE"), "{args:?}:\n{log}");
    }
}

#[test]
fn stderr_is_logged_at_info_like_stdout() {
    let server = Server::start("probe");
    let mut client = server.connect();
    let name = log_name(&mut client);
    assert_eq!(ask(&mut client, "eprint a debug print"), "printed");
    assert_eq!(ask(&mut client, "print an answer"), "printed");
    let stderr = server.wait_for_log(&[&name, " stderr: a debug print"]);
    assert!(stderr.contains(" INFO "), "{stderr}");
    let stdout = server.wait_for_log(&[&name, " stdout: an answer"]);
    assert!(stdout.contains(" INFO "), "{stdout}");
}

#[test]
fn every_ending_says_closed_after_with_its_reason() {
    let server = Server::start("probe");
    let (first, _) = crash(&server, "exit 1");
    assert!(
        first.contains("the handler called exit(1); closed after "),
        "{first}"
    );
    let (first, _) = crash(&server, "recurse");
    assert!(first.contains("stack overflow"), "{first}");
    let mut client = server.connect();
    let name = log_name(&mut client);
    drop(client);
    server.wait_for_log(&[&name, "INFO", ": closed after "]);
}
