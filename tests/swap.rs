//! Hot swap: new connections get the new handler, open ones keep theirs,
//! nothing is dropped, and bad candidates never replace a good handler.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use libc::SIGHUP;

use crate::util::{Server, TIMEOUT, ask, connect, is_closed, wasm};

/// Which handler answered `ping\n`: the default echo or the probe fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replier {
    Echo,
    Probe,
}

fn who_answers(stream: &mut TcpStream, message: &str) -> Replier {
    let reply = ask(stream, &format!("{message}\n"));
    if reply.starts_with(&format!("Echo=>{message} at ")) {
        Replier::Echo
    } else if reply == message {
        Replier::Probe
    } else {
        panic!("reply {reply:?} is from neither handler")
    }
}

fn who_answers_new(addr: SocketAddr) -> Replier {
    who_answers(&mut connect(addr), "ping")
}

/// `hotsock swap`: the exit status and stderr.
fn swap(server: &Server, guest: &Path) -> (bool, String) {
    let output = server
        .admin_command("swap")
        .arg(guest)
        .output()
        .expect("hotsock swap runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn swap_ok(server: &Server, guest: &str) {
    let (ok, stderr) = swap(server, &wasm(guest));
    assert!(ok, "swap to {guest} failed: {stderr}");
}

fn version<'a>(status: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    status["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("no version {id} in {status:#}"))
}

#[test]
fn twenty_swaps_under_load_drop_no_connection_and_never_mix_versions() {
    const CLIENTS: usize = 4;
    let server = Server::start_with("guest_handler", &["--admin", "127.0.0.1:0"]);
    let addr = server.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, failures, seen) =
                (Arc::clone(&stop), Arc::clone(&failures), Arc::clone(&seen));
            thread::spawn(move || {
                // Bounded, in case the stop flag is never set.
                for i in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // Three round trips per connection, all from one version.
                    let result = std::panic::catch_unwind(|| {
                        let mut stream = connect(addr);
                        let repliers: Vec<_> = (0..3)
                            .map(|r| who_answers(&mut stream, &format!("c{c} n{i} r{r}")))
                            .collect();
                        assert!(
                            repliers.iter().all(|r| *r == repliers[0]),
                            "mixed versions: {repliers:?}"
                        );
                        repliers[0]
                    });
                    match result {
                        Ok(replier) => seen[replier as usize].fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            let message = e.downcast_ref::<String>().cloned().unwrap_or_default();
                            failures.lock().unwrap().push(message);
                            0
                        }
                    };
                }
            })
        })
        .collect();

    for round in 1..=20 {
        thread::sleep(Duration::from_millis(50));
        swap_ok(
            &server,
            if round % 2 == 1 {
                "probe"
            } else {
                "guest_handler"
            },
        );
    }
    thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed connections, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    let (echo, probe) = (
        seen[0].load(Ordering::Relaxed),
        seen[1].load(Ordering::Relaxed),
    );
    assert!(
        echo > 0 && probe > 0,
        "both handlers must have answered: echo {echo}, probe {probe}"
    );
    // The last swap went from the probe to the echo: new connections must get the echo.
    assert_eq!(who_answers_new(addr), Replier::Echo);
    assert_eq!(server.status()["current"].as_str().unwrap()[..4], *"v21-");
}

#[test]
fn an_open_connection_keeps_its_version_and_status_counts_it() {
    let server = Server::start_with("guest_handler", &["--admin", "127.0.0.1:0"]);
    let mut old = server.connect();
    assert_eq!(who_answers(&mut old, "before"), Replier::Echo);
    let v1 = server.status()["current"].as_str().unwrap().to_string();

    swap_ok(&server, "probe");
    let mut new = server.connect();
    assert_eq!(who_answers(&mut new, "new"), Replier::Probe);
    // The connection opened before the swap still runs the old handler.
    assert_eq!(who_answers(&mut old, "after"), Replier::Echo);

    let status = server.status();
    let v2 = status["current"].as_str().unwrap().to_string();
    assert_ne!(v1, v2);
    assert_eq!(status["previous"], v1.as_str());
    assert_eq!(version(&status, &v1)["active_connections"], 1);
    assert_eq!(version(&status, &v1)["state"], "previous");
    assert_eq!(version(&status, &v2)["active_connections"], 1);
    assert_eq!(version(&status, &v2)["state"], "current");

    drop(old);
    let deadline = Instant::now() + TIMEOUT;
    while version(&server.status(), &v1)["active_connections"] != 0 {
        assert!(
            Instant::now() < deadline,
            "v1 never showed 0 active connections"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(version(&server.status(), &v1)["connections_served"], 1);
    server.wait_for_log(&[&v1, "connected"]);
    server.wait_for_log(&[&v2, "connected"]);
}

/// Files that must never replace a working handler, and the stable reason
/// each is rejected with.
fn bad_candidates(dir: &Path) -> Vec<(std::path::PathBuf, &'static str)> {
    let garbage = dir.join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm at all").unwrap();
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    vec![
        (garbage, "not-a-component"),
        (core, "core-module"),
        (wasm("not-a-handler"), "missing-export"),
    ]
}

#[test]
fn hotsock_swap_rejects_bad_candidates_and_the_old_handler_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with("guest_handler", &["--admin", "127.0.0.1:0"]);
    let mut open = server.connect();
    for (candidate, reason) in bad_candidates(dir.path()) {
        let (ok, stderr) = swap(&server, &candidate);
        assert!(!ok, "{} was accepted", candidate.display());
        assert!(
            stderr.contains("swap rejected") && stderr.contains(&format!("({reason})")),
            "{stderr}"
        );
        let bytes = std::fs::read(&candidate).unwrap();
        let (code, body) = server.http("POST", "/handler", &bytes);
        assert_eq!(
            (code, body["reason"].as_str()),
            (422, Some(reason)),
            "{body}"
        );
        assert_eq!(who_answers(&mut open, "still"), Replier::Echo);
        assert_eq!(who_answers_new(server.addr()), Replier::Echo);
    }
    assert_eq!(server.status()["current"].as_str().unwrap()[..3], *"v1-");
}

/// Serves a copy of the echo handler from a file the test may overwrite.
fn serve_from_copy(dir: &Path, extra: &[&str]) -> (Server, std::path::PathBuf) {
    let path = dir.join("handler.wasm");
    std::fs::copy(wasm("guest_handler"), &path).unwrap();
    let mut args = vec!["--admin", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = Server::start_path(&path, &args);
    (server, path)
}

#[test]
fn sighup_reloads_the_file_and_rejects_bad_content() {
    let dir = tempfile::tempdir().unwrap();
    let (server, path) = serve_from_copy(dir.path(), &[]);
    for (candidate, reason) in bad_candidates(dir.path()) {
        std::fs::copy(&candidate, &path).unwrap();
        server.signal(SIGHUP);
        server.wait_for_log(&[&format!(
            "SIGHUP: swap rejected ({reason}), still serving v1-"
        )]);
        assert_eq!(who_answers_new(server.addr()), Replier::Echo);
    }
    std::fs::copy(wasm("probe"), &path).unwrap();
    server.signal(SIGHUP);
    server.wait_for_log(&["swapped handler v1-", " -> v2-"]);
    assert_eq!(who_answers_new(server.addr()), Replier::Probe);
}

#[test]
fn watch_reloads_on_change_and_rejects_bad_content() {
    let dir = tempfile::tempdir().unwrap();
    let (server, path) = serve_from_copy(dir.path(), &["--watch"]);
    server.wait_for_log(&["watching"]);
    for (candidate, reason) in bad_candidates(dir.path()) {
        std::fs::write(&path, std::fs::read(&candidate).unwrap()).unwrap();
        server.wait_for_log(&[&format!(
            "--watch: swap rejected ({reason}), still serving v1-"
        )]);
        assert_eq!(who_answers_new(server.addr()), Replier::Echo);
    }
    // Written in two steps, like a slow build: only the whole file is loaded.
    let probe = std::fs::read(wasm("probe")).unwrap();
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&probe[..probe.len() / 2]).unwrap();
    file.flush().unwrap();
    thread::sleep(Duration::from_millis(50));
    file.write_all(&probe[probe.len() / 2..]).unwrap();
    drop(file);
    server.wait_for_log(&["swapped handler v1-", " -> v2-"]);
    assert_eq!(who_answers_new(server.addr()), Replier::Probe);
    assert!(
        !server.log().contains("rejected, still serving v2"),
        "{}",
        server.log()
    );
}

#[test]
fn rollback_returns_to_the_previous_version() {
    let server = Server::start_with("guest_handler", &["--admin", "127.0.0.1:0"]);
    let rollback = || server.admin_command("rollback").output().unwrap();
    let refused = rollback();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no previous version"));

    swap_ok(&server, "probe");
    assert_eq!(who_answers_new(server.addr()), Replier::Probe);
    let done = rollback();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).starts_with("rolled back: v2-"));
    assert_eq!(who_answers_new(server.addr()), Replier::Echo);
    let status = server.status();
    assert_eq!(status["current"].as_str().unwrap()[..3], *"v1-");
    let reason = status["rollbacks"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("manual: POST /rollback by token from 127.0.0.1:"),
        "{reason}"
    );
}

#[test]
fn a_new_version_that_traps_is_rolled_back_automatically() {
    let server = Server::start_with(
        "guest_handler",
        &["--admin", "127.0.0.1:0", "--rollback-on-traps", "2"],
    );
    swap_ok(&server, "probe");
    for _ in 0..2 {
        let mut victim = server.connect();
        victim.write_all(b"trap").unwrap();
        assert!(is_closed(&mut victim));
    }
    server.wait_for_log(&[
        "rolled back v2-",
        " -> v1-",
        "automatic: 2 of its first 100 connections trapped",
    ]);
    assert_eq!(who_answers_new(server.addr()), Replier::Echo);
    let status = server.status();
    assert_eq!(status["current"].as_str().unwrap()[..3], *"v1-");
    assert!(
        status["rollbacks"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("automatic")
    );
    assert_eq!(
        version(&status, status["previous"].as_str().unwrap())["traps"],
        2
    );
}

#[test]
fn connections_the_operators_limits_stop_never_roll_back_a_good_version() {
    let server = Server::start_with(
        "guest_handler",
        &[
            "--admin",
            "127.0.0.1:0",
            "--rollback-on-traps",
            "1",
            "--max-connection-time",
            "1s",
            "--idle-timeout",
            "300ms",
            "--cpu-budget",
            "30s",
        ],
    );
    swap_ok(&server, "probe");
    let v2 = server.status()["current"].as_str().unwrap().to_string();
    // Computing when the connection's time is up: stopped by the host.
    let mut busy = server.connect();
    busy.write_all(b"loop").unwrap();
    assert!(is_closed(&mut busy));
    server.wait_for_log(&["(--max-connection-time)"]);
    // Silent past the idle timeout, with a handler that panics when its read
    // fails: the panic follows the host's decision, so it is not the
    // handler's fault either.
    let mut quiet = server.connect();
    quiet.write_all(b"await").unwrap();
    assert!(is_closed(&mut quiet));
    server.wait_for_log(&["(--idle-timeout)"]);

    let status = server.status();
    assert_eq!(status["current"], v2.as_str(), "rolled back: {status:#}");
    assert_eq!(status["rollbacks"].as_array().unwrap().len(), 0);
    assert_eq!(version(&status, &v2)["traps"], 0, "{status:#}");
    // A fault of the handler's own still counts, and rolls it back.
    let mut victim = server.connect();
    victim.write_all(b"trap").unwrap();
    assert!(is_closed(&mut victim));
    server.wait_for_log(&["rolled back", "automatic: 1 of its first 100"]);
}

#[test]
fn drain_deadline_closes_connections_left_on_a_replaced_version() {
    let server = Server::start_with(
        "guest_handler",
        &["--admin", "127.0.0.1:0", "--drain-deadline", "300ms"],
    );
    let mut old = server.connect();
    assert_eq!(who_answers(&mut old, "old"), Replier::Echo);
    swap_ok(&server, "probe");
    let mut new = server.connect();
    assert_eq!(who_answers(&mut new, "new"), Replier::Probe);
    let started = Instant::now();
    assert!(
        is_closed(&mut old),
        "the connection on the replaced version was not closed"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed before the deadline"
    );
    server.wait_for_log(&["its version was replaced more than 300ms ago (--drain-deadline)"]);
    // The new version's connection is untouched.
    assert_eq!(who_answers(&mut new, "still"), Replier::Probe);
}

#[test]
fn the_drain_deadline_stops_a_computing_handler_without_holding_it_against_it() {
    // A CPU budget far beyond the test: only the deadline can stop the loop.
    let server = Server::start_with(
        "probe",
        &[
            "--admin",
            "127.0.0.1:0",
            "--drain-deadline",
            "300ms",
            "--cpu-budget",
            "60s",
        ],
    );
    let v1 = server.status()["current"].as_str().unwrap().to_string();
    let mut busy = server.connect();
    let name = format!("conn {} ", ask(&mut busy, "whoami"));
    busy.write_all(b"loop").unwrap();
    swap_ok(&server, "guest_handler");
    let started = Instant::now();
    assert!(is_closed(&mut busy));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "stopped after {took:?}");
    server.wait_for_log(&[&name, "(--drain-deadline)", "closed after"]);
    let status = server.status();
    assert_eq!(version(&status, &v1)["traps"], 0, "{status:#}");
    assert_eq!(version(&status, &v1)["active_connections"], 0, "{status:#}");
}

#[test]
fn two_hundred_swaps_do_not_grow_memory() {
    // A bound with room for allocator noise, far below what keeping 200
    // compiled versions (or their code mappings) alive would cost.
    const MAX_GROWTH_KIB: u64 = 16 * 1024;
    let server = Server::start_with("guest_handler", &["--admin", "127.0.0.1:0"]);
    // Two small components: the probe now carries DWARF (2.6 MB), and the
    // allocator noise of compiling it 100 times under a busy suite alone
    // came near the bound (22 MB once), which says nothing about retention.
    let components = [
        std::fs::read(wasm("whoami")).unwrap(),
        std::fs::read(wasm("guest_handler")).unwrap(),
    ];
    let mut swap_to = |i: usize| {
        let (code, body) = server.http("POST", "/handler", &components[i % 2]);
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["swapped"], true, "{body}");
        // A connection on each version, so versions are used, not only loaded.
        let reply = ask(&mut connect(server.addr()), "ping\n");
        assert!(
            reply.starts_with("Echo=>ping at ") || reply.ends_with(": ping"),
            "reply {reply:?} is from neither handler"
        );
    };
    // Warm up allocator pools and wasmtime's caches before measuring.
    (0..20).for_each(&mut swap_to);
    let before = server.rss_kib();
    (20..220).for_each(&mut swap_to);
    let after = server.rss_kib();
    assert!(
        after <= before + MAX_GROWTH_KIB,
        "200 swaps grew resident memory from {before} KiB to {after} KiB"
    );
    let status = server.status();
    assert_eq!(
        status["versions"].as_array().unwrap().len(),
        2,
        "old versions are still loaded: {status:#}"
    );
}

/// A Rust handler (one memory, a few KiB of initial data, copied into each
/// instance) and a Python one (megabytes, mapped copy-on-write) run in
/// instance pools of their own: swapping from one to the other reserves the
/// second pool, and connections of both are served side by side.
#[test]
fn small_and_large_handlers_serve_side_by_side_from_pools_of_their_own() {
    for (guest, initial_data, mappings) in [
        ("probe", "copied into each instance", 4),
        ("python_echo", "mapped copy-on-write", 6),
    ] {
        let output = crate::util::hotsock()
            .arg("check")
            .arg(wasm(guest))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let expected = format!("(initial data {initial_data}), up to {mappings} memory mappings");
        assert!(stdout.contains(&expected), "{guest}: {stdout}");
    }

    let server = Server::start_with("probe", &["--admin", "127.0.0.1:0"]);
    let mut small = server.connect();
    assert_eq!(who_answers(&mut small, "one"), Replier::Probe);
    swap_ok(&server, "python_echo");
    let mut large = server.connect();
    assert_eq!(who_answers(&mut large, "two"), Replier::Echo);
    assert_eq!(who_answers(&mut small, "three"), Replier::Probe);
    swap_ok(&server, "probe");
    assert_eq!(who_answers_new(server.addr()), Replier::Probe);
    assert_eq!(who_answers(&mut large, "four"), Replier::Echo);
    assert_eq!(who_answers(&mut small, "five"), Replier::Probe);
}
