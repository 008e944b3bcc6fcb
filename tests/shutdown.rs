//! SIGINT and SIGTERM stop accepting, let open connections finish, exit 0.

use std::net::TcpStream;
use std::time::Duration;

use libc::{SIGINT, SIGTERM};

use crate::util::{Server, TIMEOUT, echo};

#[test]
fn sigterm_lets_an_open_connection_finish_then_exits_zero() {
    let mut server = Server::start("guest_handler");
    let mut client = server.connect();
    assert_eq!(echo(&mut client, b"before"), [b"before"]);

    server.signal(SIGTERM);
    server.wait_for_log(&["stopped accepting", "1 open connection"]);
    assert!(
        TcpStream::connect_timeout(&server.addr(), TIMEOUT).is_err(),
        "a new client was accepted after SIGTERM"
    );
    // The open connection is still served...
    assert_eq!(echo(&mut client, b"after"), [b"after"]);
    // ...and the server exits once it closes.
    drop(client);
    assert!(server.wait_exit(TIMEOUT).success());
    server.wait_for_log(&["all connections finished"]);
}

#[test]
fn the_drain_timeout_bounds_the_wait_for_idle_clients() {
    let mut server = Server::start_with("guest_handler", &["--drain-timeout", "300ms"]);
    let _idle = server.connect();
    server.wait_for_log(&["connected"]);
    server.signal(SIGINT);
    assert!(server.wait_exit(TIMEOUT).success());
    server.wait_for_log(&["drain timeout", "1 connection(s) still open"]);
}

#[test]
fn sigint_with_no_connections_exits_zero_at_once() {
    let mut server = Server::start("guest_handler");
    server.signal(SIGINT);
    assert!(server.wait_exit(Duration::from_secs(2)).success());
}
