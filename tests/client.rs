//! `hotsock client`: send lines, print replies; scriptable through stdin.

use std::io::Write;
use std::process::{Output, Stdio};

use crate::util::{Server, error_of, hotsock, is_ctime, unused_port};

/// Runs `hotsock client` against `server` with `input` on stdin.
fn client(server: &Server, args: &[&str], input: &str) -> Output {
    let mut child = hotsock()
        .args(["client", &server.addr().to_string()])
        .args(args)
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
    child.wait_with_output().unwrap()
}

#[test]
fn piped_lines_are_sent_and_replies_printed() {
    let server = Server::start("guest_handler");
    let output = client(&server, &[], "hello\nworld\n");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
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
}

#[test]
fn quit_ends_the_session_and_can_send_a_quit_message() {
    let server = Server::start("probe");
    let output = client(
        &server,
        &["--quit-message", "print bye from the client"],
        "one\nquit\nnever sent\n",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "one\n");
    server.wait_for_log(&["stdout: bye from the client"]);
    assert!(!server.log().contains("never sent"));
}

#[test]
fn a_server_that_closes_is_reported() {
    let server = Server::start("probe");
    let output = client(&server, &[], "fail\n");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("the server closed the connection"));
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    let stderr = error_of(hotsock().args(["client", &format!("127.0.0.1:{}", unused_port())]));
    assert!(stderr.contains("cannot connect to 127.0.0.1:"), "{stderr}");
}
