//! The default handler behaves like the textbook thread server's echo.

use std::io::Write;

use crate::util::{Server, echo, echo_chunks, is_ctime, read_until};

#[test]
fn replies_echo_data_at_time() {
    let server = Server::start("guest_handler");
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

#[test]
fn a_line_gets_a_line_back_like_nc_users_expect() {
    let server = Server::start("guest_handler");
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

#[test]
fn answers_every_message_on_one_connection() {
    let server = Server::start("guest_handler");
    let mut client = server.connect();
    for i in 0..20 {
        let message = format!("message {i}");
        assert_eq!(echo(&mut client, message.as_bytes()), [message.as_bytes()]);
    }
}

#[test]
fn echoes_binary_data_byte_for_byte() {
    let server = Server::start("guest_handler");
    let mut client = server.connect();
    // Every byte value, so invalid UTF-8 and NULs included.
    let payload: Vec<u8> = (0..=255).collect();
    assert_eq!(echo(&mut client, &payload).concat(), payload);
}

#[test]
fn echoes_all_of_a_message_larger_than_1024_bytes() {
    let server = Server::start("guest_handler");
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

#[test]
fn serves_every_listener() {
    let server = Server::start_with(
        "guest_handler",
        &["--addr", "127.0.0.1:0", "--addr", "127.0.0.1:0"],
    );
    assert_eq!(server.addrs.len(), 2);
    assert_ne!(server.addrs[0], server.addrs[1]);
    for addr in &server.addrs {
        let mut client = crate::util::connect(*addr);
        assert_eq!(echo(&mut client, b"which port?"), [b"which port?"]);
    }
}
