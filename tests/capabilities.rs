//! Handlers get no files, no environment and no sockets unless the operator
//! grants them.

use crate::util::{Server, ask, error_of, hotsock, wasm};

#[test]
fn files_environment_and_sockets_are_denied_by_default() {
    let server = Server::start("probe");
    let mut client = server.connect();
    for (request, denied) in [
        ("open /etc/passwd".to_string(), "error: "),
        ("write /tmp/hotsock-probe-was-here".to_string(), "error: "),
        (
            "env HOME".to_string(),
            "error: environment variable not found",
        ),
        (
            "env PATH".to_string(),
            "error: environment variable not found",
        ),
        (format!("connect {}", server.addr()), "error: "),
    ] {
        let reply = ask(&mut client, &request);
        assert!(reply.starts_with(denied), "`{request}` got {reply:?}");
    }
    assert!(!std::path::Path::new("/tmp/hotsock-probe-was-here").exists());
}

#[test]
fn granted_environment_and_directories_are_reachable() {
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("hello.txt"), "hello").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let read_only = format!("{}::/data", shared.path().display());
    let writable = format!("{}::/scratch", scratch.path().display());
    let server = Server::start_with(
        "probe",
        &[
            "--env",
            "GREETING=hi there",
            "--dir",
            &read_only,
            "--dir-rw",
            &writable,
        ],
    );
    let mut client = server.connect();
    assert_eq!(ask(&mut client, "env GREETING"), "hi there");
    assert_eq!(
        ask(&mut client, "env HOME"),
        "error: environment variable not found"
    );
    assert_eq!(ask(&mut client, "open /data/hello.txt"), "read 5 bytes");
    assert!(
        ask(&mut client, "write /data/new.txt").starts_with("error: "),
        "--dir is read-only"
    );
    assert!(!shared.path().join("new.txt").exists());
    assert_eq!(ask(&mut client, "write /scratch/new.txt"), "wrote");
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("new.txt")).unwrap(),
        "written by probe"
    );
    // Nothing outside the granted directories.
    assert!(ask(&mut client, "open /etc/passwd").starts_with("error: "));
    assert!(ask(&mut client, "open /data/../../etc/passwd").starts_with("error: "));
}

#[test]
fn a_missing_granted_directory_is_a_clear_error() {
    let stderr = error_of(
        hotsock()
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--dir",
                "/nonexistent/dir::/data",
            ])
            .arg(wasm("probe")),
    );
    assert!(
        stderr.contains("--dir /nonexistent/dir: no such directory"),
        "{stderr}"
    );
}
