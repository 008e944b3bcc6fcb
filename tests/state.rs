//! State that outlives the process: the default key-value store, a SQLite
//! file in `--state-dir`, kept across a restart and a `kill -9`, exact with
//! two processes on one state directory; `--keyvalue-store memory:` as
//! before; and a store that cannot change while serving.

use std::net::SocketAddr;
use std::path::Path;
use std::thread;

use libc::{SIGHUP, SIGKILL, SIGTERM};

use crate::util::{Server, TIMEOUT, ask, connect, error_of, hotsock, wasm};

fn counter(state: &Path) -> Server {
    let state = state.to_str().unwrap();
    Server::start_with("kit", &["--keyvalue", "visits", "--state-dir", state])
}

fn visit(server: &Server) -> String {
    ask(&mut server.connect(), "incr visits n\n")
}

/// 40 connections, half to each address, each incrementing `visits n` 25
/// times at once: 1,000 increments, which two processes sharing a store
/// must count exactly.
pub fn increment_from_both(addrs: [SocketAddr; 2]) {
    let clients: Vec<_> = (0..40)
        .map(|i| {
            let addr = addrs[i % 2];
            thread::spawn(move || {
                let mut client = connect(addr);
                for _ in 0..25 {
                    let answer = ask(&mut client, "incr visits n\n");
                    assert!(answer.starts_with("value "), "{answer}");
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
}

/// `hotsock keyvalue` on the store its flags `store` name, doing `args`:
/// its exit status, stdout and stderr.
pub fn keyvalue(store: &[&str], args: &[&str]) -> (Option<i32>, String, String) {
    let output = hotsock()
        .arg("keyvalue")
        .args(store)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stdout, stderr)
}

/// Like [`keyvalue`], for a command that must succeed: its stdout.
pub fn keyvalue_ok(store: &[&str], args: &[&str]) -> String {
    let (code, stdout, stderr) = keyvalue(store, args);
    assert_eq!(code, Some(0), "hotsock keyvalue {args:?}: {stderr}");
    stdout
}

#[test]
fn a_counter_is_kept_across_a_restart_and_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut server = counter(&state);
    assert_eq!(visit(&server), "value 1");
    assert_eq!(visit(&server), "value 2");
    server.signal(SIGKILL);
    server.wait_exit(TIMEOUT);

    // Every increment a client was told about is on disk.
    let mut server = counter(&state);
    assert_eq!(visit(&server), "value 3");
    server.signal(SIGTERM);
    server.wait_exit(TIMEOUT);
    let server = counter(&state);
    assert_eq!(visit(&server), "value 4");

    // Created private to this user.
    let mode = std::os::unix::fs::PermissionsExt::mode(&state.metadata().unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    assert!(state.join(hotsock::runtime::KEYVALUE_FILE).is_file());
}

#[test]
fn increments_are_exact_across_two_processes_on_one_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (counter(dir.path()), counter(dir.path()));
    increment_from_both([a.addr(), b.addr()]);
    assert_eq!(visit(&a), "value 1001");
    assert_eq!(visit(&b), "value 1002");
}

#[test]
fn the_memory_store_starts_empty_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let args = [
        "--keyvalue",
        "visits",
        "--keyvalue-store",
        "memory:",
        "--state-dir",
        state,
    ];
    for _ in 0..2 {
        let server = Server::start_with("kit", &args);
        assert_eq!(visit(&server), "value 1");
        server.wait_for_log(&["key-value store: memory:"]);
    }
    assert!(!dir.path().join(hotsock::runtime::KEYVALUE_FILE).exists());
}

#[test]
fn a_store_is_named_clearly_and_cannot_change_while_serving() {
    // On the command line, clap's usage error (exit status 2); in a file,
    // the file's error with its line (1).
    for (store, why) in [
        ("redis:localhost", "use sqlite:PATH, redis://"),
        ("leveldb:x", "is not a key-value store"),
    ] {
        let output = hotsock()
            .args(["serve", "--keyvalue-store", store])
            .arg(wasm("kit"))
            .output()
            .unwrap();
        let error = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{error}");
        assert!(error.contains(why), "{error}");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hotsock.toml");
    std::fs::write(
        &config,
        "handler = \"h.wasm\"\nkeyvalue-store = \"memory\"\n",
    )
    .unwrap();
    let error = error_of(hotsock().arg("serve").arg("--config").arg(&config));
    assert!(
        error.contains("line 2") && error.contains("memory:"),
        "{error}"
    );

    // A SIGHUP that changes the store is refused whole.
    let write = |store: &str| {
        let text = format!(
            "handler = \"{}\"\naddr = \"127.0.0.1:0\"\nkeyvalue = \"visits\"\n\
             keyvalue-store = \"{store}\"\n",
            wasm("kit").display()
        );
        std::fs::write(&config, text).unwrap();
    };
    write("sqlite:kv.sqlite3");
    let server = Server::start_config(&config, 1, &[]);
    assert_eq!(visit(&server), "value 1");
    assert!(
        dir.path().join("kv.sqlite3").is_file(),
        "relative to the file"
    );
    write("memory:");
    server.signal(SIGHUP);
    server.wait_for_log(&["not applied, nothing changed", "restart to change it"]);
    assert_eq!(visit(&server), "value 2");
}

#[test]
fn hotsock_keyvalue_reads_and_mends_a_serving_servers_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let server = counter(&state);
    assert_eq!(visit(&server), "value 1");
    let store = ["--state-dir", state.to_str().unwrap()];
    assert_eq!(keyvalue_ok(&store, &["get", "visits", "n"]), "1\n");
    // Atomic with the server: both count on the same file.
    assert_eq!(
        keyvalue_ok(&store, &["increment", "visits", "n", "5"]),
        "6\n"
    );
    assert_eq!(visit(&server), "value 7");
    keyvalue_ok(&store, &["set", "visits", "greeting", "hello"]);
    assert_eq!(keyvalue_ok(&store, &["list", "visits"]), "greeting\nn\n");
    keyvalue_ok(&store, &["delete", "visits", "greeting"]);
    assert_eq!(keyvalue_ok(&store, &["list", "visits"]), "n\n");
    let (code, _, error) = keyvalue(&store, &["get", "visits", "nope"]);
    assert_eq!(code, Some(1));
    assert!(
        error.contains("bucket `visits` has no key `nope`"),
        "{error}"
    );

    // Private to this user, database and log alike.
    for file in ["keyvalue.sqlite3", "keyvalue.sqlite3-wal"] {
        let metadata = state.join(file).metadata().unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions());
        assert_eq!(mode & 0o077, 0, "{file}: {mode:o}");
    }
    let empty = dir.path().join("empty");
    let error = error_of(
        hotsock()
            .arg("keyvalue")
            .arg("--state-dir")
            .arg(&empty)
            .args(["list", "visits"]),
    );
    assert!(error.contains("there is no key-value store at"), "{error}");
    assert!(!empty.exists(), "looking creates nothing");
}
