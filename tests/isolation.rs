//! A guest that traps, panics or fails loses only its own connection.

use std::io::Write;

use crate::util::{Server, ask, is_closed};

/// How the server's log lines name this client's connection: `conn ID PEER `
/// (the handler version follows).
fn log_name(client: &mut std::net::TcpStream) -> String {
    format!("conn {} ", ask(client, "whoami"))
}

#[test]
fn a_trapping_guest_does_not_disturb_other_connections() {
    let server = Server::start("probe");
    let mut bystander = server.connect();
    assert_eq!(ask(&mut bystander, "before"), "before");

    let mut victim = server.connect();
    let name = log_name(&mut victim);
    victim.write_all(b"trap").unwrap();
    assert!(
        is_closed(&mut victim),
        "the trapped connection was not closed"
    );
    server.wait_for_log(&[&name, "unreachable"]);

    assert_eq!(ask(&mut bystander, "still here"), "still here");
    let mut newcomer = server.connect();
    assert_eq!(ask(&mut newcomer, "hello"), "hello");
}

#[test]
fn a_panic_is_logged_with_its_message_and_closes_only_that_connection() {
    let server = Server::start("probe");
    let mut bystander = server.connect();
    let mut victim = server.connect();
    let name = log_name(&mut victim);
    victim.write_all(b"panic").unwrap();
    assert!(is_closed(&mut victim));
    server.wait_for_log(&[&name, "stderr: ", "probe was asked to panic"]);
    server.wait_for_log(&[&name, "unreachable"]);
    assert_eq!(ask(&mut bystander, "fine"), "fine");
}

#[test]
fn a_handler_error_is_logged_and_closes_only_that_connection() {
    let server = Server::start("probe");
    let mut bystander = server.connect();
    let mut victim = server.connect();
    let name = log_name(&mut victim);
    victim.write_all(b"fail").unwrap();
    assert!(is_closed(&mut victim));
    server.wait_for_log(&[
        &name,
        ": handler returned an error: probe was asked to fail",
    ]);
    assert_eq!(ask(&mut bystander, "fine"), "fine");
}
