//! What a binary upgrade (SIGUSR2) keeps: long-lived clients of the old
//! process, one room across both processes (and a third, when it is
//! upgraded again meanwhile), connection ids that go on, handler version
//! numbers and the rollback target, and counters that never go backwards.

use std::io::BufReader;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::fleet::{Reap, alive};
use crate::rooms_fleet::{self, heard, id};
use crate::util::{Server, TIMEOUT, ask, request, wasm};

/// A client of `server` in `lobby`, and a line reader of what it is sent.
fn joined(server: &Server) -> (TcpStream, BufReader<TcpStream>) {
    rooms_fleet::joined(server, "lobby")
}

fn members(client: &mut TcpStream) -> Vec<u64> {
    rooms_fleet::members(client, "lobby")
}

/// `from` publishes `text`; each of `to` hears it.
fn talk(from: &mut TcpStream, text: &str, to: &mut [&mut BufReader<TcpStream>]) {
    let answer = ask(from, &format!("publish lobby {text}\n"));
    assert!(answer.starts_with("published"), "{answer}");
    for lines in to {
        assert_eq!(heard(lines, Duration::from_secs(5)).as_deref(), Some(text));
    }
}

/// The process that took over the `n`th time (1 for the first upgrade).
fn taken_over(server: &Server, n: usize) -> u32 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let log = server.log();
        let pids: Vec<u32> = log
            .lines()
            .filter(|l| l.contains("serves now"))
            .filter_map(|l| {
                l.split("upgrade: process ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        if let Some(pid) = pids.get(n - 1) {
            return *pid;
        }
        assert!(Instant::now() < deadline, "no upgrade {n} in:\n{log}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` to `pid`, a process this test started (or its upgrade did).
fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
}

fn wait_gone(pid: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still running");
        thread::sleep(Duration::from_millis(50));
    }
}

/// `hotsock_connections_accepted_total` of the process serving `server`'s
/// metrics now.
fn accepted(server: &Server) -> u64 {
    let endpoint = hotsock::server::http::Endpoint::Tcp(server.metrics());
    let response = request(&endpoint, "GET", "/metrics", &[], b"");
    let text = String::from_utf8(response.body.to_vec()).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("hotsock_connections_accepted_total{"))
        .unwrap_or_else(|| panic!("{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn an_upgrade_keeps_long_lived_clients_and_one_room_across_three_generations() {
    let server = Server::start_with(
        "kit",
        &["--drain-timeout", "2s", "--metrics", "127.0.0.1:0"],
    );
    let old = server.pid();
    let (mut a, mut a_lines) = joined(&server);
    let ida = id(&mut a);
    let before = accepted(&server);

    server.signal(libc::SIGUSR2);
    let second = taken_over(&server, 1);
    let _reap_second = Reap(second);
    let (mut b, mut b_lines) = joined(&server);
    let idb = id(&mut b);
    assert!(idb > ida, "ids go on: {ida} then {idb}");
    // 5 s on, past --drain-timeout: the old process still serves a.
    thread::sleep(Duration::from_secs(5));
    assert!(alive(old));
    assert_eq!(members(&mut a), vec![ida, idb]);
    // (`kit` sorts them.)
    assert_eq!(members(&mut b), vec![ida, idb]);
    talk(&mut a, "a to b", &mut [&mut b_lines]);
    talk(&mut b, "b to a", &mut [&mut a_lines]);
    assert_eq!(
        heard(&mut a_lines, Duration::from_millis(300)),
        None,
        "once"
    );
    let after = accepted(&server);
    assert!(after > before, "accepted went from {before} to {after}");

    // Upgraded again while the first process still drains: three processes,
    // one room; the middle one passes messages on.
    signal(second, libc::SIGUSR2);
    let third = taken_over(&server, 2);
    let _reap_third = Reap(third);
    let (mut c, mut c_lines) = joined(&server);
    let idc = id(&mut c);
    assert!(idc > idb);
    assert_eq!(members(&mut c), vec![ida, idb, idc]);
    talk(&mut a, "a to all", &mut [&mut b_lines, &mut c_lines]);
    talk(&mut c, "c to all", &mut [&mut a_lines, &mut b_lines]);
    assert!(accepted(&server) > after);

    // b leaves: the middle process has no client left, but stays while the
    // first one serves, to carry the room.
    assert_eq!(ask(&mut b, "quit\n"), "bye");
    drop((b, b_lines));
    thread::sleep(Duration::from_millis(500));
    assert!(alive(second), "the middle process left the room split");
    talk(&mut a, "still one room", &mut [&mut c_lines]);
    assert_eq!(members(&mut c), vec![ida, idc]);

    // a leaves: the first process exits, then the middle one; a newcomer
    // talks with c.
    assert_eq!(ask(&mut a, "quit\n"), "bye");
    drop((a, a_lines));
    wait_gone(old, TIMEOUT);
    wait_gone(second, TIMEOUT);
    assert_eq!(members(&mut c), vec![idc]);
    let (mut d, mut d_lines) = joined(&server);
    talk(&mut d, "d to c", &mut [&mut c_lines]);
    talk(&mut c, "c to d", &mut [&mut d_lines]);
    server.wait_for_log(&["staying while the process this one replaced still serves"]);
}

#[test]
fn upgrade_drain_timeout_closes_the_old_process_clients_after_it() {
    // The config key of the same name.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hotsock.toml");
    let text = format!(
        "handler = \"{}\"\naddr = \"127.0.0.1:0\"\nupgrade-drain-timeout = \"1s\"\n",
        wasm("kit").display()
    );
    std::fs::write(&config, text).unwrap();
    let server = Server::start_config(&config, 1, &[]);
    let old = server.pid();
    let mut a = server.connect();
    assert!(ask(&mut a, "id\n").starts_with("id "));
    server.signal(libc::SIGUSR2);
    let _reap = Reap(taken_over(&server, 1));
    let started = Instant::now();
    wait_gone(old, TIMEOUT);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "gone after {took:?}");
    assert!(took < Duration::from_secs(5), "gone after {took:?}");
    assert!(crate::util::is_closed(&mut a));
    server.wait_for_log(&["upgrade drain timeout: exiting with 1 connection(s) still open"]);
}

#[test]
fn a_sigterm_caps_an_open_ended_upgrade_drain_at_the_drain_timeout() {
    let server = Server::start_with("kit", &["--drain-timeout", "1s"]);
    let old = server.pid();
    let mut a = server.connect();
    assert!(ask(&mut a, "id\n").starts_with("id "));
    server.signal(libc::SIGUSR2);
    let _reap = Reap(taken_over(&server, 1));
    thread::sleep(Duration::from_secs(2));
    assert!(alive(old), "it serves a until a ends");
    signal(old, libc::SIGTERM);
    wait_gone(old, Duration::from_secs(5));
    assert!(crate::util::is_closed(&mut a));
}

#[test]
fn version_numbers_and_the_rollback_target_survive_an_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let server = Server::start_with("kit", &["--admin", socket.to_str().unwrap()]);
    let swapped = server
        .admin_command("swap")
        .arg(wasm("greet"))
        .output()
        .unwrap();
    assert!(
        swapped.status.success(),
        "{}",
        String::from_utf8_lossy(&swapped.stderr)
    );
    let before = server.status();
    let current = before["current"].as_str().unwrap().to_string();
    assert!(current.starts_with("v2-"), "{before}");

    server.signal(libc::SIGUSR2);
    let _reap = Reap(taken_over(&server, 1));
    let after = server.status();
    assert_ne!(after["pid"], before["pid"], "{after}");
    assert_eq!(after["current"], before["current"], "{after}");
    assert_eq!(after["previous"], before["previous"], "{after}");
    let rolled = server.admin_command("rollback").output().unwrap();
    assert!(
        rolled.status.success(),
        "{}",
        String::from_utf8_lossy(&rolled.stderr)
    );
    let back = server.status();
    assert!(
        back["current"].as_str().unwrap().starts_with("v1-"),
        "{back}"
    );
    assert_eq!(back["rollbacks"].as_array().unwrap().len(), 1, "{back}");
    let swapped = server
        .admin_command("swap")
        .arg(wasm("greet"))
        .output()
        .unwrap();
    assert!(swapped.status.success());
    assert!(
        server.status()["current"]
            .as_str()
            .unwrap()
            .starts_with("v3-")
    );
}
