//! The admin API: off by default, loopback only unless allowed, and plain
//! HTTP + JSON that curl and scripts can use.

use crate::util::{Server, error_of, hotsock, http, unused_port, wasm};

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

    let output = hotsock()
        .args(["status", "--admin", &server.admin().to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        table.contains(&format!("current: {current}")) && table.contains("ACTIVE"),
        "{table}"
    );
}

#[test]
fn bad_requests_get_clear_errors() {
    let server = Server::start_with("guest_handler", &["--admin", "127.0.0.1:0"]);
    let admin = server.admin();
    let (code, body) = http(admin, "GET", "/nowhere", b"");
    assert_eq!(code, 404);
    assert!(body["error"].as_str().unwrap().contains("POST /handler"));
    assert_eq!(http(admin, "GET", "/handler", b"").0, 405);
    let (code, body) = http(admin, "POST", "/handler", b"");
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("--data-binary"));
    let (code, body) = http(admin, "POST", "/handler", b"garbage");
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
fn a_non_loopback_admin_address_needs_explicit_consent() {
    let stderr = error_of(
        hotsock()
            .args(["serve", "--addr", "127.0.0.1:0", "--admin", "0.0.0.0:0"])
            .arg(wasm("guest_handler")),
    );
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("--admin-allow-remote"),
        "{stderr}"
    );

    let server = Server::start_with(
        "guest_handler",
        &["--admin", "0.0.0.0:0", "--admin-allow-remote"],
    );
    assert!(server.admin().ip().is_unspecified());
}

#[test]
fn client_commands_explain_an_unreachable_server() {
    let stderr =
        error_of(hotsock().args(["status", "--admin", &format!("127.0.0.1:{}", unused_port())]));
    assert!(
        stderr.contains("cannot reach the admin API") && stderr.contains("hotsock serve --admin"),
        "{stderr}"
    );
}
