//! The admin API: off by default; on a Unix socket only its owner can use,
//! or on TCP with a token; never driven by a web page; plain HTTP + JSON
//! that curl and scripts can use; every action logged with who asked.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;

use libc::SIGTERM;

use crate::util::{Server, TIMEOUT, error_of, free_port, hotsock, request, wasm};

#[test]
fn status_is_json_with_the_current_version() {
    let server = Server::start_with("guest_handler", &["--admin", "127.0.0.1:0"]);
    let status = server.status();
    let current = status["current"].as_str().unwrap();
    assert!(
        current.starts_with("v1-") && current.len() == "v1-".len() + 8,
        "{current}"
    );
    let v1 = &status["versions"][0];
    assert_eq!(v1["id"], current);
    assert_eq!(v1["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(v1["state"], "current");
    for field in [
        "loaded_at",
        "active_connections",
        "connections_served",
        "traps",
        "source",
    ] {
        assert!(!v1[field].is_null(), "no {field} in {status:#}");
    }

    let output = server.admin_command("status").output().unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        table.contains(&format!("current: {current}")) && table.contains("ACTIVE"),
        "{table}"
    );
}

#[test]
fn bad_requests_get_clear_errors() {
    let server = Server::start_with("guest_handler", &["--admin", "127.0.0.1:0"]);
    let (code, body) = server.http("GET", "/nowhere", b"");
    assert_eq!(code, 404);
    assert!(body["error"].as_str().unwrap().contains("POST /handler"));
    assert_eq!(server.http("GET", "/handler", b"").0, 405);
    let (code, body) = server.http("POST", "/handler", b"");
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("--data-binary"));
    let (code, body) = server.http("POST", "/handler", b"garbage");
    assert_eq!(code, 422);
    assert_eq!(body["reason"], "not-a-component", "{body}");
    assert!(body["error"].as_str().unwrap().contains("upload"), "{body}");
}

#[test]
fn the_admin_api_is_off_unless_asked_for() {
    let server = Server::start("guest_handler");
    assert!(server.admin.is_none());
    assert!(!server.log().contains("admin"));
}

#[test]
fn tcp_needs_a_token_file_and_a_private_long_token() {
    let stderr = error_of(
        hotsock()
            .args(["serve", "--addr", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg(wasm("guest_handler")),
    );
    assert!(
        stderr.contains("--admin 127.0.0.1:0 needs --admin-token-file FILE")
            && stderr.contains("--admin ./hotsock.sock"),
        "{stderr}"
    );
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    for (text, mode, expected) in [
        (
            "0123456789abcdef0123",
            0o644,
            "can be read by other users: `chmod 600",
        ),
        ("short", 0o600, "is 5 characters long: use at least 16"),
    ] {
        std::fs::write(&token, text).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        let stderr = error_of(
            hotsock()
                .args(["serve", "--addr", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
                .arg("--admin-token-file")
                .arg(&token)
                .arg(wasm("guest_handler")),
        );
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn a_non_loopback_tcp_address_needs_explicit_consent() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let stderr = error_of(
        hotsock()
            .args(["serve", "--addr", "127.0.0.1:0", "--admin", "0.0.0.0:0"])
            .arg("--admin-token-file")
            .arg(&token)
            .arg(wasm("guest_handler")),
    );
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("--admin-allow-remote"),
        "{stderr}"
    );
    let token = token.to_str().unwrap();
    let server = Server::start_with(
        "guest_handler",
        &[
            "--admin",
            "0.0.0.0:0",
            "--admin-allow-remote",
            "--admin-token-file",
            token,
        ],
    );
    assert!(server.admin().ip().is_unspecified());
}

#[test]
fn without_the_right_token_nothing_is_answered() {
    let server = Server::start_with("guest_handler", &["--admin", "127.0.0.1:0"]);
    let admin = server.admin_endpoint();
    for headers in [&[][..], &[("authorization", "Bearer not-the-token-at-all")]] {
        let answer = request(&admin, "GET", "/status", headers, b"");
        assert_eq!(answer.status, 401, "{headers:?}");
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
        let swap = [headers, &[("content-type", "application/wasm")]].concat();
        let component = std::fs::read(wasm("whoami")).unwrap();
        let answer = request(&admin, "POST", "/handler", &swap, &component);
        assert_eq!(answer.status, 401);
    }
    assert_eq!(server.status()["current"].as_str().unwrap()[..3], *"v1-");
    server.wait_for_log(&["admin: refused GET /status from 127.0.0.1:", "(401)"]);
    // The command line says where a token comes from.
    let mut without = hotsock();
    without
        .args(["status", "--admin", &admin.to_string()])
        .env_remove("HOTSOCK_ADMIN_TOKEN");
    let stderr = error_of(&mut without);
    assert!(
        stderr.contains("--admin-token-file") && stderr.contains("HOTSOCK_ADMIN_TOKEN"),
        "{stderr}"
    );
    let mut wrong = server.admin_command("status");
    wrong.env("HOTSOCK_ADMIN_TOKEN", "0123456789abcdef-wrong");
    assert!(error_of(&mut wrong).contains("the token is not this server's"));
}

#[test]
fn web_pages_cannot_drive_it_even_with_the_token() {
    let server = Server::start_with("guest_handler", &["--admin", "127.0.0.1:0"]);
    let admin = server.admin_endpoint();
    let auth = ("authorization", "Bearer test-token-0123456789abcdef");
    let wasm_type = ("content-type", "application/wasm");
    let component = std::fs::read(wasm("whoami")).unwrap();
    for (header, refused) in [
        (("origin", "http://evil.example"), 403),
        (("origin", "null"), 403),
        (("sec-fetch-site", "cross-site"), 403),
        (("sec-fetch-site", "same-origin"), 403),
        (("host", "evil.example"), 403),
        (("host", "evil.example:50008"), 403),
    ] {
        // Sent in place of the client's own Host, as a browser would.
        let answer = request(
            &admin,
            "POST",
            "/handler",
            &[auth, wasm_type, header],
            &component,
        );
        assert_eq!(answer.status, refused, "{header:?}");
    }
    // What a browser sends cross-origin without a preflight.
    let answer = request(
        &admin,
        "POST",
        "/handler",
        &[auth, ("content-type", "text/plain")],
        &component,
    );
    assert_eq!(answer.status, 415);
    assert_eq!(server.status()["current"].as_str().unwrap()[..3], *"v1-");
    // A person's own tools are fine: curl sends no Origin, and a browser's
    // address bar says Sec-Fetch-Site: none.
    for header in [("sec-fetch-site", "none"), ("host", "localhost")] {
        assert_eq!(
            request(&admin, "GET", "/status", &[auth, header], b"").status,
            200
        );
    }
}

#[test]
fn an_upload_over_the_limit_is_refused_unread() {
    let server = Server::start_with(
        "guest_handler",
        &["--admin", "127.0.0.1:0", "--admin-max-upload", "64KiB"],
    );
    // Small enough for the socket buffers: the refusal comes before the body
    // is read, and a client still writing a larger one would see a broken pipe.
    let component = std::fs::read(wasm("guest_handler")).unwrap();
    assert!(component.len() > 64 * 1024);
    let (code, body) = server.http("POST", "/handler", &component);
    assert_eq!(code, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--admin-max-upload")
    );
    // 1 GiB announced, nothing sent: refused at once from Content-Length.
    let answer = request(
        &server.admin_endpoint(),
        "POST",
        "/handler",
        &[
            ("authorization", "Bearer test-token-0123456789abcdef"),
            ("content-type", "application/wasm"),
            ("content-length", "1073741824"),
        ],
        b"",
    );
    assert_eq!(answer.status, 413);
    assert_eq!(server.status()["current"].as_str().unwrap()[..3], *"v1-");
}

#[test]
fn malformed_requests_are_refused_and_the_api_carries_on() {
    use std::io::{Read, Write};
    let server = Server::start_with("guest_handler", &["--admin", "127.0.0.1:0"]);
    for garbage in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"GET /status HTTP/1.1\r\nHost: localhost\r\nBad Header Without Colon\r\n\r\n",
        b"POST /handler HTTP/1.1\r\nHost: localhost\r\nContent-Length: nope\r\n\r\n",
        b"GET /status HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n",
        &[0xff; 100_000],
    ] {
        let mut stream = crate::util::connect(server.admin());
        let _ = stream.write_all(garbage);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{answer}"
        );
    }
    assert_eq!(server.status()["current"].as_str().unwrap()[..3], *"v1-");
}

#[test]
fn a_unix_socket_is_private_logged_and_removed_on_exit() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let path = socket.to_str().unwrap();
    let mut server = Server::start_with("guest_handler", &["--admin", path]);
    assert_eq!(server.admin_endpoint().to_string(), path);
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let swapped = server
        .admin_command("swap")
        .arg(wasm("probe"))
        .output()
        .unwrap();
    assert!(
        swapped.status.success(),
        "{}",
        String::from_utf8_lossy(&swapped.stderr)
    );
    // `::hotsock`, the library: `hotsock` here is util's command builder.
    let uid = ::hotsock::sys::effective_uid();
    server.wait_for_log(&[&format!("admin: swap by uid {uid} (pid "), " -> v2-"]);
    let status = server.admin_command("status").output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("current: v2-"));
    let rolled = server.admin_command("rollback").output().unwrap();
    assert!(rolled.status.success());
    server.wait_for_log(&[&format!("admin: rollback by uid {uid}")]);

    server.signal(SIGTERM);
    assert!(server.wait_exit(TIMEOUT).success());
    assert!(!socket.exists(), "the socket outlived the server");
}

#[test]
fn a_stale_socket_is_replaced_but_a_live_one_or_a_file_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let path = socket.to_str().unwrap();
    // Left behind by a server that was killed.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let server = Server::start_with("guest_handler", &["--admin", path]);
    assert!(
        server
            .admin_command("status")
            .output()
            .unwrap()
            .status
            .success()
    );
    let live = error_of(
        hotsock()
            .args(["serve", "--addr", "127.0.0.1:0", "--admin", path])
            .arg(wasm("guest_handler")),
    );
    assert!(
        live.contains("another process is serving on this socket"),
        "{live}"
    );
    drop(server);
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "precious").unwrap();
    let stderr = error_of(
        hotsock()
            .args(["serve", "--addr", "127.0.0.1:0", "--admin"])
            .arg(&file)
            .arg(wasm("guest_handler")),
    );
    assert!(stderr.contains("exists and is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
}

#[test]
fn client_commands_explain_an_unreachable_server() {
    let stderr = error_of(
        hotsock()
            .args(["status", "--admin", &format!("127.0.0.1:{}", free_port())])
            .env("HOTSOCK_ADMIN_TOKEN", "0123456789abcdef0123"),
    );
    assert!(
        stderr.contains("cannot reach the admin API") && stderr.contains("hotsock serve --admin"),
        "{stderr}"
    );
    let missing = Path::new("/nonexistent/admin.sock");
    let stderr = error_of(hotsock().args(["status", "--admin"]).arg(missing));
    assert!(stderr.contains("cannot reach the admin API"), "{stderr}");
    let usage = hotsock()
        .args(["status", "--admin", "localhost:50008"])
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("names a host"));
}
