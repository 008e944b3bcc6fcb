//! Many connections: what `--max-connections` needs of the machine is checked
//! at start, one address cannot take every slot, each connection costs a
//! bounded number of memory mappings, and a connection that cannot get a
//! thread is refused while the server carries on.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::util::{Server, TIMEOUT, echo, error_of, hotsock, is_closed, wasm};

/// Runs `serve` with `args` and returns its one line of error, checking it
/// failed before listening.
fn refused_at_start(command: &mut std::process::Command) -> String {
    let stderr = error_of(command);
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, please:\n{stderr}");
    stderr
}

#[test]
fn a_million_connections_fail_at_start_naming_the_limits_to_raise() {
    let started = Instant::now();
    let stderr = refused_at_start(
        hotsock()
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--max-connections",
                "1000000",
            ])
            .arg(wasm("guest_handler")),
    );
    assert!(
        stderr.contains("--max-connections 1000000 needs"),
        "{stderr}"
    );
    assert!(
        stderr.contains("raise it with") && stderr.contains("or lower --max-connections"),
        "{stderr}"
    );
    assert!(started.elapsed() < TIMEOUT, "took {:?}", started.elapsed());
}

#[test]
fn a_low_open_file_limit_is_named_with_its_fix() {
    let mut command = hotsock();
    command
        .args(["serve", "--addr", "127.0.0.1:0", "--max-connections", "500"])
        .arg(wasm("guest_handler"));
    let lower_limit = || {
        let limit = libc::rlimit {
            rlim_cur: 256,
            rlim_max: 256,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        match unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    // SAFETY: only async-signal-safe setrlimit between fork and exec.
    unsafe { command.pre_exec(lower_limit) };
    let stderr = refused_at_start(&mut command);
    assert!(
        stderr.contains("564 open files, but the limit is 256 (raise it with `ulimit -n 564`"),
        "{stderr}"
    );
}

/// Memory mappings of process `pid` now.
fn mappings(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .expect("/proc/PID/maps")
        .lines()
        .count()
}

#[test]
fn a_thousand_idle_connections_all_answer_at_four_mappings_each() {
    const CONNECTIONS: usize = 1000;
    // The default kernel limit of 65,530 mappings holds 16,000 connections at
    // four each (the thread's stack and guard, the linear memory and the
    // reserve after it); with the handler's initial data mapped
    // copy-on-write it was six (10,900), with threads from std and two
    // signal stacks ten (6,500). Half a mapping of slack for allocator arenas.
    const MAX_PER_CONNECTION: f64 = 4.5;
    hotsock::sys::raise_open_file_limit().expect("the open files limit");
    let server = Server::start_with("guest_handler", &["--max-connections", "1000"]);
    drop((0..8).map(|_| server.connect()).collect::<Vec<_>>());
    thread::sleep(Duration::from_millis(500));
    let before = mappings(server.pid());
    let mut open: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|i| {
            let mut stream = server.connect();
            assert_eq!(echo(&mut stream, format!("hi {i}").as_bytes()).len(), 1);
            stream
        })
        .collect();
    let per_connection = (mappings(server.pid()) - before) as f64 / CONNECTIONS as f64;
    assert!(
        per_connection <= MAX_PER_CONNECTION,
        "{per_connection} memory mappings per connection"
    );
    // All of them at once, still served.
    for (i, stream) in open.iter_mut().enumerate() {
        assert_eq!(echo(stream, format!("again {i}").as_bytes()).len(), 1);
    }
}

/// A connection to `server` from the loopback address `from`.
fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect_timeout(&server.into(), TIMEOUT).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

#[test]
fn one_address_cannot_hold_every_slot() {
    let server = Server::start_with(
        "guest_handler",
        &["--max-connections-per-ip", "2", "--admin", "127.0.0.1:0"],
    );
    let mut first = server.connect();
    let mut second = server.connect();
    assert_eq!(echo(&mut first, b"one"), [b"one"]);
    assert_eq!(echo(&mut second, b"two"), [b"two"]);
    let mut third = server.connect();
    assert!(is_closed(&mut third), "a third connection from 127.0.0.1");
    server.wait_for_log(&[
        "127.0.0.1 already has 2 connections",
        "(--max-connections-per-ip)",
    ]);
    // Another address is not held back by this one's share...
    let mut other = connect_from("127.0.0.2", server.addr());
    assert_eq!(echo(&mut other, b"other"), [b"other"]);
    // ...and the address gets its place back as its connections close.
    drop(first);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut next = server.connect();
        if next.write_all(b"next").is_ok() && !is_closed_quickly(&mut next) {
            break;
        }
        assert!(Instant::now() < deadline, "no place freed up");
        thread::sleep(Duration::from_millis(50));
    }
    let connections = &server.status()["connections"];
    assert_eq!(connections["max_per_ip"], 2, "{connections}");
    assert!(
        connections["refused_by"]["per_ip"].as_u64().unwrap() >= 1,
        "{connections}"
    );
}

/// Whether the server closes `stream` rather than answering it.
fn is_closed_quickly(stream: &mut TcpStream) -> bool {
    let mut buf = [0; 64];
    matches!(std::io::Read::read(stream, &mut buf), Ok(0) | Err(_))
}

/// `VmSize` of process `pid`, in bytes.
fn address_space(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize");
    kib * 1024
}

/// Sets the soft `RLIMIT_AS` of process `pid`; `None` lifts it.
fn limit_address_space(pid: u32, bytes: Option<u64>) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let pid = pid as libc::pid_t;
    // SAFETY: prlimit only writes the struct it is given (no new limit).
    let read = unsafe { libc::prlimit(pid, libc::RLIMIT_AS, std::ptr::null(), &mut limit) };
    assert_eq!(read, 0);
    limit.rlim_cur = bytes.unwrap_or(libc::RLIM_INFINITY).min(limit.rlim_max);
    // SAFETY: prlimit only reads the struct it is given (the old limit is
    // not asked for).
    let set = unsafe { libc::prlimit(pid, libc::RLIMIT_AS, &limit, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn a_connection_that_cannot_get_a_thread_is_refused_and_the_server_carries_on() {
    let server = Server::start_with("guest_handler", &["--admin", "127.0.0.1:0"]);
    let mut served = server.connect();
    assert_eq!(echo(&mut served, b"before"), [b"before"]);
    // No room left for another thread's stack: the next connection's thread
    // cannot start, as when a machine runs out of memory or mappings.
    let pid = server.pid();
    limit_address_space(pid, Some(address_space(pid) + 64 * 1024));
    let mut refused = server.connect();
    assert!(
        is_closed(&mut refused),
        "served without a thread of its own"
    );
    server.wait_for_log(&["cannot start a thread for it", "closing it"]);
    // The open connection and the process carry on.
    assert_eq!(echo(&mut served, b"after"), [b"after"]);
    limit_address_space(pid, None);
    let connections = &server.status()["connections"];
    assert!(
        connections["refused_by"]["no_thread"].as_u64().unwrap() >= 1,
        "{connections}"
    );
    let mut later = server.connect();
    assert_eq!(echo(&mut later, b"later"), [b"later"]);
    assert!(!server.log().contains("panicked"), "{}", server.log());
}
