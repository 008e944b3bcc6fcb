//! Hostile handlers and hostile clients cost only their own connection, while
//! a bystander on another connection keeps getting prompt answers.

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{Bystander, Server, TIMEOUT, ask, connect, echo, is_closed};

/// Starts the probe with tight limits, sends `command` on one connection, and
/// checks that it ends that connection with a log line containing `cause`
/// while a bystander is served throughout. Returns how long the end took.
fn only_its_own_connection_ends(command: &str, cause: &str) -> Duration {
    let server = Server::start_with("probe", &["--cpu-budget", "200ms", "--max-memory", "16MiB"]);
    let bystander = Bystander::start(server.addr());
    let mut victim = server.connect();
    let name = format!("conn {} ", ask(&mut victim, "whoami"));
    let started = Instant::now();
    victim.write_all(command.as_bytes()).unwrap();
    assert!(
        is_closed(&mut victim),
        "`{command}` did not end its connection"
    );
    let took = started.elapsed();
    server.wait_for_log(&[&name, cause]);
    // The server still accepts and serves.
    assert_eq!(ask(&mut server.connect(), "hello"), "hello");
    bystander.finish();
    took
}

#[test]
fn an_infinite_loop_is_stopped_by_the_cpu_budget() {
    let took = only_its_own_connection_ends("loop", "CPU budget exceeded");
    // 200 ms of budget plus three 10 ms ticks; the rest is slack for a loaded machine.
    assert!(took < Duration::from_secs(3), "the loop ran for {took:?}");
    assert!(
        took >= Duration::from_millis(190),
        "stopped after only {took:?}"
    );
}

#[test]
fn a_loop_calling_the_host_is_stopped_by_the_cpu_budget_too() {
    // Host calls other than reads and writes do not reset the budget: a
    // guest can not keep itself alive by asking for the time.
    let took = only_its_own_connection_ends("loop-clock", "CPU budget exceeded");
    assert!(took < Duration::from_secs(3), "the loop ran for {took:?}");
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    only_its_own_connection_ends(
        "alloc",
        "memory limit exceeded: the handler tried to grow its memory past 16 MiB",
    );
}

#[test]
fn unbounded_recursion_overflows_only_its_stack() {
    only_its_own_connection_ends("recurse", "stack overflow");
}

#[test]
fn a_panic_ends_only_its_connection() {
    only_its_own_connection_ends("panic", "unreachable");
}

#[test]
fn unreachable_ends_only_its_connection() {
    only_its_own_connection_ends(
        "trap",
        "handler trapped: wasm trap: wasm `unreachable` instruction executed",
    );
}

#[test]
fn exit_ends_only_its_connection_not_the_server() {
    only_its_own_connection_ends("exit 1", "the handler called exit(1)");
}

#[test]
fn memory_under_the_limit_is_fine() {
    let server = Server::start_with("probe", &["--max-memory", "16MiB"]);
    assert_eq!(ask(&mut server.connect(), "grow 8"), "grew 8");
}

#[test]
fn waiting_is_not_charged_to_the_cpu_budget() {
    let server = Server::start_with("probe", &["--cpu-budget", "100ms"]);
    let mut client = server.connect();
    // Sleeping and idling far past the budget are not computing.
    assert_eq!(ask(&mut client, "sleep 500"), "slept 500");
    assert_eq!(ask(&mut client, "naps 300"), "napped 300");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(ask(&mut client, "still here"), "still here");
}

#[test]
fn a_silent_client_is_closed_after_the_idle_timeout() {
    let server = Server::start_with("guest_handler", &["--idle-timeout", "500ms"]);
    let bystander = Bystander::start(server.addr());
    let started = Instant::now();
    let mut silent = server.connect();
    assert!(is_closed(&mut silent));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(450),
        "closed after only {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "closed only after {waited:?}"
    );
    server.wait_for_log(&["client idle for 500ms: timed out (--idle-timeout)"]);
    bystander.finish();
}

#[test]
fn a_slow_drip_client_is_cut_off_by_the_connection_time_limit() {
    let server = Server::start_with("guest_handler", &["--max-connection-time", "1s"]);
    let mut dripper = server.connect();
    let mut writer = dripper.try_clone().unwrap();
    let started = Instant::now();
    // A byte every 200 ms: never idle long enough to time out, never done.
    let drip = thread::spawn(move || {
        for _ in 0..50 {
            if writer.write_all(b"x").is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
    });
    assert!(
        is_closed(&mut dripper),
        "the dripping client was never cut off"
    );
    let open_for = started.elapsed();
    assert!(
        open_for >= Duration::from_millis(900),
        "cut off after only {open_for:?}"
    );
    assert!(
        open_for < Duration::from_secs(4),
        "cut off only after {open_for:?}"
    );
    // Seen by whichever comes first: the host's read, or the guest's next tick.
    server.wait_for_log(&["conn 1 ", "(--max-connection-time)"]);
    drip.join().unwrap();
}

#[test]
fn a_client_that_never_reads_cannot_make_the_server_buffer() {
    const MAX_GROWTH_KIB: u64 = 32 * 1024;
    let server = Server::start_with("probe", &["--idle-timeout", "1s"]);
    let bystander = Bystander::start(server.addr());
    let before = server.rss_kib();
    let mut hog = server.connect();
    let name = format!("conn {} ", ask(&mut hog, "whoami"));
    hog.write_all(b"flood").unwrap();
    // Never read: the handler's writes can only fill the socket buffers,
    // then block until the idle timeout ends them.
    server.wait_for_log(&[&name, "timed out (--idle-timeout)"]);
    let after = server.rss_kib();
    assert!(
        after <= before + MAX_GROWTH_KIB,
        "memory grew from {before} KiB to {after} KiB"
    );
    server.wait_for_log(&[&name, "closed after"]);
    bystander.finish();
}

#[test]
fn extra_clients_wait_in_the_backlog_until_a_slot_frees() {
    let server = Server::start_with(
        "guest_handler",
        &["--max-connections", "3", "--admin", "127.0.0.1:0"],
    );
    let bystander = Bystander::start(server.addr());
    let mut first = server.connect();
    let mut second = server.connect();
    assert_eq!(echo(&mut first, b"one"), [b"one"]);
    assert_eq!(echo(&mut second, b"two"), [b"two"]);

    // Connected (the kernel completes the handshake) but not served yet.
    let mut third = server.connect();
    third.write_all(b"three").unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0; 64];
    assert!(
        third.read(&mut buf).is_err(),
        "a fourth connection was served while three were open"
    );
    server.wait_for_log(&[
        "all 3 connection slots are busy",
        "wait in the listen backlog",
    ]);

    drop(first);
    third.set_read_timeout(Some(TIMEOUT)).unwrap();
    let n = third.read(&mut buf).expect("served once a slot freed");
    assert!(
        buf[..n].starts_with(b"Echo=>three at "),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let connections = &server.status()["connections"];
    assert_eq!(connections["max"], 3);
    assert!(
        connections["saturated"].as_u64().unwrap() >= 1,
        "{connections}"
    );
    assert_eq!(echo(&mut second, b"two again"), [b"two again"]);
    bystander.finish();
}

#[test]
fn with_when_full_close_extra_clients_are_closed_at_once() {
    let server = Server::start_with(
        "guest_handler",
        &[
            "--max-connections",
            "2",
            "--when-full",
            "close",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let bystander = Bystander::start(server.addr());
    let mut first = server.connect();
    assert_eq!(echo(&mut first, b"one"), [b"one"]);
    let started = Instant::now();
    let mut extra = server.connect();
    assert!(is_closed(&mut extra));
    assert!(started.elapsed() < Duration::from_secs(2));
    server.wait_for_log(&["all 2 connection slots are busy", "closed at once"]);
    assert!(server.status()["connections"]["refused"].as_u64().unwrap() >= 1);

    drop(first);
    // The slot frees once the server sees the close; retry until it has.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut next = connect(server.addr());
        next.write_all(b"next").unwrap();
        let mut buf = [0; 64];
        if matches!(next.read(&mut buf), Ok(n) if n > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no client was served after a slot freed"
        );
        thread::sleep(Duration::from_millis(50));
    }
    bystander.finish();
}
