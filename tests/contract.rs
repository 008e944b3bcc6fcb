//! Contracts 0.2.0 and 0.3.0: rooms, the shared key-value store, outbound TCP
//! grants, `read-within` and `tls`, through the `kit` fixture (line commands,
//! see tests/fixtures/kit) and the example handlers; and 0.1.0 and 0.2.0
//! handlers still served beside them.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{Server, ask, connect, echo_line, is_closed, read_until, reply, wasm};

/// `line`, sent with its newline, and the one-line answer.
fn kit(stream: &mut TcpStream, line: &str) -> String {
    ask(stream, &format!("{line}\n"))
}

/// A copy of the component at `path` that differs only by a custom section
/// naming `tag`: another version to swap in, with the same code.
fn variant(path: &Path, tag: &str, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(path).unwrap();
    let name = b"hotsock-test";
    let payload = [&[name.len() as u8][..], name, tag.as_bytes()].concat();
    assert!(payload.len() < 128, "one LEB128 byte of length");
    bytes.push(0); // a custom section
    bytes.push(payload.len() as u8);
    bytes.extend_from_slice(&payload);
    let out = dir.join(format!("{tag}.wasm"));
    std::fs::write(&out, bytes).unwrap();
    out
}

fn admin_socket(dir: &Path) -> String {
    dir.join("admin.sock").display().to_string()
}

fn swap(server: &Server, handler: &Path) {
    let output = server.admin_command("swap").arg(handler).output().unwrap();
    assert!(
        output.status.success(),
        "swap: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn read_within_times_out_and_the_connection_carries_on() {
    let server = Server::start("kit");
    let mut client = server.connect();
    let started = Instant::now();
    assert_eq!(kit(&mut client, "within 300"), "timed-out");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // Data that arrives in time is read.
    client.write_all(b"within 5000\n").unwrap();
    thread::sleep(Duration::from_millis(100));
    client.write_all(b"late\n").unwrap();
    assert_eq!(reply(&mut client), "got late");
    assert_eq!(kit(&mut client, "id"), "id 1");
}

#[test]
fn rooms_deliver_to_idle_members_and_forget_closed_ones() {
    let server = Server::start("kit");
    let mut a = server.connect();
    let mut b = server.connect();
    let mut c = server.connect();
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(kit(client, "join lobby"), "ok");
    }
    assert_eq!(kit(&mut a, "members lobby"), "members 1,2,3");
    // b and c are idle, waiting in `read`: the host writes to them anyway.
    assert_eq!(kit(&mut a, "publish lobby hello from a"), "published 2");
    assert_eq!(reply(&mut b), "hello from a");
    assert_eq!(reply(&mut c), "hello from a");
    // A member that leaves hears no more; one that closes leaves every room.
    assert_eq!(kit(&mut b, "leave lobby"), "ok");
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    while kit(&mut a, "members lobby") != "members 1" {
        assert!(Instant::now() < deadline, "closed member never left");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(kit(&mut a, "publish lobby anyone?"), "published 0");
    // Limits are refused, and said why in the log.
    let long = "r".repeat(200);
    assert_eq!(kit(&mut a, &format!("join {long}")), "error refused");
    server.wait_for_log(&["room", "join refused", "at most 128 bytes"]);
}

#[test]
fn a_member_that_never_reads_is_cut_off_while_the_others_get_30_mb_whole() {
    const MESSAGES: usize = 30_000;
    const TEXT: usize = 1000;
    let server = Server::start_with(
        "kit",
        &["--room-backlog", "2MiB", "--metrics", "127.0.0.1:0"],
    );
    let mut stuck = server.connect();
    assert_eq!(kit(&mut stuck, "join fan"), "ok");
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut reader = server.connect();
            assert_eq!(kit(&mut reader, "join fan"), "ok");
            thread::spawn(move || {
                let want = MESSAGES * (TEXT + 1);
                let mut got = 0;
                let mut buf = vec![0; 256 * 1024];
                let mut line = Vec::new();
                while got < want {
                    let n = reader.read(&mut buf).expect("a reader keeps receiving");
                    assert!(n > 0, "a reader was disconnected after {got} bytes");
                    got += n;
                    // Every message arrives whole: lines of exactly TEXT bytes.
                    for &byte in &buf[..n] {
                        if byte == b'\n' {
                            assert_eq!(line.len(), TEXT, "a message arrived in pieces");
                            line.clear();
                        } else {
                            line.push(byte);
                        }
                    }
                }
                got
            })
        })
        .collect();
    let mut publisher = server.connect();
    let mut acks = publisher.try_clone().unwrap();
    let counting = thread::spawn(move || {
        let mut published = 0;
        let mut seen = 0;
        let mut text = Vec::new();
        while seen < MESSAGES {
            text.extend(read_until(&mut acks, |b| b.ends_with(b"\n")));
            for line in String::from_utf8_lossy(&text).lines() {
                let n: u32 = line.strip_prefix("published ").unwrap().parse().unwrap();
                published += n;
                seen += 1;
            }
            text.clear();
        }
        published
    });
    let body = "x".repeat(TEXT);
    let line = format!("publish fan {body}\n");
    for _ in 0..MESSAGES {
        publisher.write_all(line.as_bytes()).unwrap();
    }
    let received: Vec<usize> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(received, vec![MESSAGES * (TEXT + 1); 2]);
    let published = counting.join().unwrap();
    // Every message went to both readers, and to the stuck member until it was cut off.
    assert!(
        published as usize >= 2 * MESSAGES && (published as usize) < 3 * MESSAGES,
        "{published}"
    );
    server.wait_for_log(&["disconnected", "--room-backlog"]);
    let metrics = crate::util::request(
        &hotsock::server::http::Endpoint::Tcp(server.metrics()),
        "GET",
        "/metrics",
        &[],
        b"",
    );
    let text = testkit::http::text(&metrics);
    assert!(
        text.contains("hotsock_room_disconnects_total{listener=\"default\"} 1"),
        "{text}"
    );
    assert!(
        is_closed(&mut stuck),
        "the member that never read is closed"
    );
}

#[test]
fn a_counter_loses_nothing_under_40_connections_and_two_swaps() {
    const CONNECTIONS: usize = 40;
    const EACH: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let admin = admin_socket(dir.path());
    let server = Server::start_with("kit", &["--keyvalue", "counters", "--admin", &admin]);
    let second = variant(&wasm("kit"), "second", dir.path());
    let third = variant(&wasm("kit"), "third", dir.path());
    let done = Arc::new(AtomicU64::new(0));
    let addr = server.addr();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let done = Arc::clone(&done);
            thread::spawn(move || {
                // A new connection every 5 increments: the later ones are
                // served by the versions swapped in meanwhile.
                for _ in 0..EACH / 5 {
                    let mut client = connect(addr);
                    for _ in 0..5 {
                        let answer = kit(&mut client, "incr counters hits");
                        assert!(answer.starts_with("value "), "{answer}");
                        done.fetch_add(1, Ordering::Relaxed);
                        thread::sleep(Duration::from_millis(4));
                    }
                }
            })
        })
        .collect();
    // Two swaps while the increments go on.
    while done.load(Ordering::Relaxed) < (CONNECTIONS * EACH / 3) as u64 {
        thread::sleep(Duration::from_millis(5));
    }
    swap(&server, &second);
    let mut late = server.connect();
    assert!(kit(&mut late, "incr counters hits").starts_with("value "));
    while done.load(Ordering::Relaxed) < (CONNECTIONS * EACH * 2 / 3) as u64 {
        thread::sleep(Duration::from_millis(5));
    }
    swap(&server, &third);
    for worker in workers {
        worker.join().unwrap();
    }
    let mut after = server.connect();
    let total = CONNECTIONS * EACH + 1;
    // `increment` keeps its number as decimal text.
    assert_eq!(
        kit(&mut after, "get counters hits"),
        format!("value {total}")
    );
    assert_eq!(
        kit(&mut after, "incr counters hits"),
        format!("value {}", total + 1)
    );
    let status = server.status();
    let current = status["current"].as_str().unwrap_or_default();
    assert!(current.starts_with("v3-"), "{status:#}");
}

#[test]
fn a_bucket_not_granted_is_denied_and_the_log_names_the_flag() {
    let server = Server::start_with("kit", &["--keyvalue", "mine"]);
    let mut client = server.connect();
    assert_eq!(kit(&mut client, "open mine"), "ok");
    assert_eq!(kit(&mut client, "open theirs"), "error access-denied");
    server.wait_for_log(&["denied", "bucket `theirs`", "--keyvalue theirs"]);
    // Quotas answer with what went wrong.
    let big = kit(&mut client, &format!("setsize mine k {}", (1 << 20) + 1));
    assert!(big.starts_with("error other: a value is at most"), "{big}");
    let key = "k".repeat(257);
    let long = kit(&mut client, &format!("set mine {key} v"));
    assert!(
        long.starts_with("error other: a key is at most 256"),
        "{long}"
    );
}

#[test]
fn the_bucket_quota_holds() {
    let server = Server::start_with(
        "kit",
        &["--keyvalue", "small", "--keyvalue-max-bytes", "1KiB"],
    );
    let mut client = server.connect();
    assert_eq!(kit(&mut client, "setsize small a 900"), "ok");
    let full = kit(&mut client, "setsize small b 200");
    assert!(full.contains("--keyvalue-max-bytes"), "{full}");
    assert_eq!(kit(&mut client, "keys small"), "keys a");
}

/// A backend on loopback that answers each line with `pong LINE`.
fn backend() -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        for _ in 0..4 {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            thread::spawn(move || {
                let mut buf = [0; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).trim_end().to_string();
                    if stream
                        .write_all(format!("pong {text}\n").as_bytes())
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    (port, handle)
}

#[test]
fn a_granted_backend_answers_and_any_other_port_is_refused_with_a_log_line() {
    let (port, _backend) = backend();
    let other = crate::util::free_port();
    let grant = format!("127.0.0.1:{port}");
    let server = Server::start_with("kit", &["--allow-connect", &grant]);
    let mut client = server.connect();
    assert_eq!(
        kit(&mut client, &format!("connect 127.0.0.1:{port}")),
        "connected pong ping"
    );
    let refused = kit(&mut client, &format!("connect 127.0.0.1:{other}"));
    assert!(refused.starts_with("error PermissionDenied"), "{refused}");
    server.wait_for_log(&[
        &format!("connect to 127.0.0.1:{other}"),
        &format!("--allow-connect 127.0.0.1:{other}"),
    ]);
}

#[test]
fn the_gateway_relays_to_its_backend_and_counts_visits() {
    let (port, _backend) = backend();
    let grant = format!("127.0.0.1:{port}");
    let env = format!("BACKEND={grant}");
    let server = Server::start_with(
        "gateway",
        &[
            "--allow-connect",
            &grant,
            "--env",
            &env,
            "--keyvalue",
            "gateway",
        ],
    );
    for visit in 1..=2 {
        let mut client = server.connect();
        assert_eq!(echo_line(&mut client, "hello"), "pong hello");
        drop(client);
        server.wait_for_log(&[&format!("visit {visit}")]);
    }
    // Without the grant it says which flag is missing.
    let denied = Server::start_with("gateway", &["--env", &env]);
    let mut client = denied.connect();
    let answer = reply(&mut client);
    assert!(answer.contains("--allow-connect"), "{answer}");
    denied.wait_for_log(&[&format!("--allow-connect {grant}")]);
}

#[test]
fn tls_is_none_on_a_plaintext_connection() {
    let server = Server::start("kit");
    let mut client = server.connect();
    assert_eq!(kit(&mut client, "tls"), "tls none");
}

#[test]
fn a_handler_of_contract_0_1_0_is_served_and_swaps_with_0_3_0() {
    let dir = tempfile::tempdir().unwrap();
    let admin = admin_socket(dir.path());
    // The probe is built against wit/0.1.0 on purpose.
    let server = Server::start_with("probe", &["--admin", &admin]);
    let mut old = server.connect();
    assert!(ask(&mut old, "whoami").starts_with("1 "));
    swap(&server, &wasm("kit"));
    let mut new = server.connect();
    assert_eq!(kit(&mut new, "id"), "id 2");
    assert_eq!(kit(&mut new, "tls"), "tls none");
    // The 0.1.0 connection carries on under its own version.
    assert!(ask(&mut old, "whoami").starts_with("1 "));
    // And back: 0.3.0 for 0.1.0.
    swap(&server, &wasm("probe"));
    let mut newest = server.connect();
    assert!(ask(&mut newest, "whoami").starts_with("3 "));
    assert_eq!(kit(&mut new, "id"), "id 2");
}

#[test]
fn a_handler_of_contract_0_2_0_is_served_and_swaps_with_0_3_0() {
    let dir = tempfile::tempdir().unwrap();
    let admin = admin_socket(dir.path());
    // kit-0-2 is the kit built against wit/0.2.0: rooms and buckets, no `tls`.
    let server = Server::start_with("kit_0_2", &["--admin", &admin, "--keyvalue", "shared"]);
    let mut old = server.connect();
    assert_eq!(kit(&mut old, "join r"), "ok");
    assert_eq!(kit(&mut old, "incr shared n"), "value 1");
    assert_eq!(kit(&mut old, "tls"), "unknown tls");
    swap(&server, &wasm("kit"));
    let mut new = server.connect();
    assert_eq!(kit(&mut new, "tls"), "tls none");
    // Both versions share the rooms and the buckets.
    assert_eq!(kit(&mut new, "incr shared n"), "value 2");
    assert_eq!(kit(&mut new, "members r"), "members 1");
    assert_eq!(kit(&mut new, "publish r hello"), "published 1");
    assert_eq!(reply(&mut old), "hello");
    // The 0.2.0 connection carries on under its own version.
    assert_eq!(kit(&mut old, "tls"), "unknown tls");
    // And back: 0.3.0 for 0.2.0.
    swap(&server, &wasm("kit_0_2"));
    let mut newest = server.connect();
    assert_eq!(kit(&mut newest, "tls"), "unknown tls");
    assert_eq!(kit(&mut newest, "incr shared n"), "value 3");
}

#[test]
fn each_listener_of_a_config_has_its_own_grants_and_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hotsock.toml");
    std::fs::write(
        &config,
        format!(
            "keyvalue = \"shared\"\n\
             [[listener]]\nname = \"a\"\naddr = \"127.0.0.1:0\"\nhandler = \"{0}\"\n\
             keyvalue = [\"shared\", \"a-only\"]\nroom-backlog = \"64KiB\"\n\
             [[listener]]\nname = \"b\"\naddr = \"127.0.0.1:0\"\nhandler = \"{0}\"\n",
            wasm("kit").display()
        ),
    )
    .unwrap();
    let server = Server::start_config(&config, 2, &[]);
    let mut a = connect(server.listener("a"));
    let mut b = connect(server.listener("b"));
    assert_eq!(kit(&mut a, "open a-only"), "ok");
    assert_eq!(kit(&mut b, "open a-only"), "error access-denied");
    // A bucket is one per process: both listeners see the same one.
    assert_eq!(kit(&mut a, "incr shared n"), "value 1");
    assert_eq!(kit(&mut b, "incr shared n"), "value 2");
    // Rooms are one listener's.
    assert_eq!(kit(&mut a, "join r"), "ok");
    assert_eq!(kit(&mut b, "join r"), "ok");
    assert_eq!(kit(&mut a, "members r"), "members 1");
}

#[test]
fn bad_grants_are_refused_at_start_with_what_to_write() {
    let kit_wasm = wasm("kit");
    let cases: [(&[&str], &str); 4] = [
        (&["--allow-connect", "127.0.0.1"], "write HOST:PORT"),
        (
            &["--allow-connect", "10.0.0.1/8:80"],
            "did you mean 10.0.0.0/8",
        ),
        (
            &["--allow-connect", "no-such-host.invalid:80"],
            "cannot resolve",
        ),
        (
            &["--keyvalue", "has space"],
            "cannot name a key-value bucket",
        ),
    ];
    for (args, expected) in cases {
        let output = crate::util::hotsock()
            .arg("serve")
            .args(args)
            .arg(&kit_wasm)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} started");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hotsock.toml");
    std::fs::write(
        &config,
        format!(
            "handler = \"{}\"\nallow-connect = [\"db:*\", \"db\"]\n",
            kit_wasm.display()
        ),
    )
    .unwrap();
    let stderr = crate::util::error_of(
        crate::util::hotsock()
            .arg("serve")
            .arg("--config")
            .arg(&config),
    );
    assert!(stderr.contains("`db`: no port"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
}

/// A chat client that has picked `nick` and read its welcome.
fn chatter(server: &Server, nick: &str) -> TcpStream {
    let mut client = server.connect();
    read_until(&mut client, |b| b.ends_with(b"nickname? "));
    client.write_all(format!("{nick}\n").as_bytes()).unwrap();
    let welcome = reply(&mut client);
    assert!(
        welcome.starts_with(&format!("welcome, {nick}: ")),
        "{welcome}"
    );
    client
}

#[test]
fn chat_between_three_clients_a_leave_and_a_new_version_joining() {
    let dir = tempfile::tempdir().unwrap();
    let admin = admin_socket(dir.path());
    let server = Server::start_with("chat", &["--keyvalue", "chat", "--admin", &admin]);
    let mut alice = chatter(&server, "alice");
    let mut bob = chatter(&server, "bob");
    assert_eq!(reply(&mut alice), "* bob joined");
    let mut carol = chatter(&server, "carol");
    assert_eq!(reply(&mut alice), "* carol joined");
    assert_eq!(reply(&mut bob), "* carol joined");

    alice.write_all(b"hi all\n").unwrap();
    assert_eq!(reply(&mut bob), "<alice> hi all");
    assert_eq!(reply(&mut carol), "<alice> hi all");
    assert_eq!(echo_line(&mut carol, "/who"), "3 online: alice, bob, carol");

    assert_eq!(echo_line(&mut bob, "/quit"), "bye");
    assert!(is_closed(&mut bob));
    assert_eq!(reply(&mut alice), "* bob left");
    assert_eq!(reply(&mut carol), "* bob left");

    // A new version: dave is served by it, alice and carol by the old one,
    // and the room is the same room.
    swap(&server, &variant(&wasm("chat"), "chat-v2", dir.path()));
    let mut dave = chatter(&server, "dave");
    assert_eq!(reply(&mut alice), "* dave joined");
    assert_eq!(reply(&mut carol), "* dave joined");
    dave.write_all(b"hello from v2\n").unwrap();
    assert_eq!(reply(&mut alice), "<dave> hello from v2");
    carol.write_all(b"welcome dave\n").unwrap();
    assert_eq!(reply(&mut dave), "<carol> welcome dave");
    assert_eq!(echo_line(&mut dave, "/who"), "3 online: alice, carol, dave");
    let status = server.status();
    assert!(
        status["current"].as_str().unwrap().starts_with("v2-"),
        "{status:#}"
    );
}
