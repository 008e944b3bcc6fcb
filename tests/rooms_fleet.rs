//! Rooms across a fleet (`--rooms-store` on a real redis-server, started on
//! a Unix socket in a temporary directory): chat between clients of two
//! processes, each message once and in order, `members` and ids fleet-wide,
//! a stopped or `kill -9`'d process's members gone, and the faults: Redis
//! stopped, killed and restarted empty, our subscription killed.

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::fleet::{Reap, taken_over_by};
use crate::redis::Redis;
use crate::util::{Server, ask, hotsock, request, wasm};

/// `kit`, with its rooms in `redis`.
fn member(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--rooms-store", url.as_str()];
    args.extend_from_slice(extra);
    Server::start_with("kit", &args)
}

/// A client of `server` in `room`, and a line reader of what it is sent.
pub fn joined(server: &Server, room: &str) -> (TcpStream, BufReader<TcpStream>) {
    let mut client = server.connect();
    assert_eq!(ask(&mut client, &format!("join {room}\n")), "ok");
    let lines = BufReader::new(client.try_clone().unwrap());
    (client, lines)
}

/// The next line `lines` is sent, within `within`; `None` if none comes.
pub fn heard(lines: &mut BufReader<TcpStream>, within: Duration) -> Option<String> {
    lines.get_ref().set_read_timeout(Some(within)).unwrap();
    let mut line = String::new();
    let got = match lines.read_line(&mut line) {
        Ok(n) if n > 0 => Some(line.trim_end().to_string()),
        _ => None,
    };
    lines
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    got
}

/// `members ROOM` as ids.
pub fn members(client: &mut TcpStream, room: &str) -> Vec<u64> {
    let answer = ask(client, &format!("members {room}\n"));
    let ids = answer
        .strip_prefix("members")
        .unwrap_or_else(|| panic!("not a members answer: {answer:?}"));
    ids.trim()
        .split(',')
        .filter(|id| !id.is_empty())
        .map(|id| id.parse().unwrap())
        .collect()
}

pub fn id(client: &mut TcpStream) -> u64 {
    let answer = ask(client, "id\n");
    answer.strip_prefix("id ").unwrap().parse().unwrap()
}

/// Publishes from `publisher` (not in the room) until `lines` hears it, for
/// up to `within`; how long that took.
fn until_heard(
    publisher: &mut TcpStream,
    lines: &mut BufReader<TcpStream>,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        assert!(
            ask(publisher, "publish lobby probe\n").starts_with("published"),
            "publish answers"
        );
        if heard(lines, Duration::from_millis(200)).is_some() {
            // What went out before it was heard may still come: drain it.
            while heard(lines, Duration::from_millis(300)).is_some() {}
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "not heard within {within:?}");
    }
}

/// Polls `members` on `client` until `want` holds, for up to `within`.
fn members_until(
    client: &mut TcpStream,
    within: Duration,
    want: impl Fn(&[u64]) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let now = members(client, "lobby");
        if want(&now) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "members {now:?} after {within:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn chat_spans_two_processes_each_message_once_in_order_never_back_to_its_sender() {
    let dir = tempfile::tempdir().unwrap();
    let Some(redis) = Redis::start(dir.path()) else {
        return;
    };
    let (a, b) = (member(&redis, &[]), member(&redis, &[]));
    let (mut la, mut la_lines) = joined(&a, "lobby");
    let (mut lb, mut lb_lines) = joined(&b, "lobby");
    let (ida, idb) = (id(&mut la), id(&mut lb));
    // Ids are unique across the fleet: each process's node in the top bits.
    assert_ne!(ida >> 48, idb >> 48);
    assert!(ida >> 48 > 0 && idb >> 48 > 0);
    let mut fleet = members(&mut la, "lobby");
    fleet.sort_unstable();
    let mut want = vec![ida, idb];
    want.sort_unstable();
    assert_eq!(fleet, want, "members lists both processes' members");
    assert_eq!(members(&mut lb, "lobby").len(), 2);

    // A member's own message comes back to no one but the others.
    assert_eq!(ask(&mut la, "publish lobby from la\n"), "published 0");
    assert_eq!(
        heard(&mut lb_lines, Duration::from_secs(5)).as_deref(),
        Some("from la")
    );
    assert_eq!(heard(&mut la_lines, Duration::from_millis(500)), None);

    // Two publishers, one on each process, not in the room: every member
    // hears each message once, each publisher's in order.
    let (mut pa, mut pb) = (a.connect(), b.connect());
    let publish = |publisher: &mut TcpStream, name: &str| {
        for i in 0..100 {
            let answer = ask(publisher, &format!("publish lobby {name} {i}\n"));
            assert!(answer.starts_with("published "), "{answer}");
        }
    };
    thread::scope(|s| {
        s.spawn(|| publish(&mut pa, "a"));
        s.spawn(|| publish(&mut pb, "b"));
    });
    for lines in [&mut la_lines, &mut lb_lines] {
        let mut next = [0, 0];
        for _ in 0..200 {
            let line = heard(lines, Duration::from_secs(5)).expect("all 200 messages");
            let (who, i) = line.split_once(' ').unwrap();
            let at = usize::from(who == "b");
            assert_eq!(
                i.parse::<usize>().unwrap(),
                next[at],
                "{line}: out of order"
            );
            next[at] += 1;
        }
        assert_eq!(heard(lines, Duration::from_millis(500)), None, "each once");
    }

    // A listener's rooms are its own: another listener name hears nothing.
    let config = dir.path().join("other.toml");
    std::fs::write(
        &config,
        format!(
            "rooms-store = \"{}\"\n[[listener]]\nname = \"other\"\naddr = \"127.0.0.1:0\"\n\
             handler = \"{}\"\n",
            redis.url(),
            wasm("kit").display()
        ),
    )
    .unwrap();
    let other = Server::start_config(&config, 1, &[]);
    let (mut lo, mut lo_lines) = joined(&other, "lobby");
    assert_eq!(members(&mut lo, "lobby").len(), 1);
    assert!(ask(&mut pa, "publish lobby to default\n").starts_with("published"));
    assert_eq!(
        heard(&mut lb_lines, Duration::from_secs(5)).as_deref(),
        Some("to default")
    );
    assert_eq!(heard(&mut lo_lines, Duration::from_millis(500)), None);
}

#[test]
fn a_stopped_process_leaves_at_once_and_a_killed_one_within_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let Some(redis) = Redis::start(dir.path()) else {
        return;
    };
    let a = member(&redis, &[]);
    let mut b = member(&redis, &["--drain-timeout", "1s"]);
    let c = member(&redis, &[]);
    let (mut la, _la_lines) = joined(&a, "lobby");
    let (mut lb, _lb_lines) = joined(&b, "lobby");
    let (mut lc, _lc_lines) = joined(&c, "lobby");
    let (idb, idc) = (id(&mut lb), id(&mut lc));
    assert_eq!(members(&mut la, "lobby").len(), 3);

    // A client that leaves is gone from the fleet's members at once.
    let (mut gone, _) = joined(&c, "lobby");
    assert_eq!(members(&mut la, "lobby").len(), 4);
    assert_eq!(ask(&mut gone, "quit\n"), "bye");
    members_until(&mut la, Duration::from_secs(2), |m| m.len() == 3);

    // Stopped (SIGTERM): its members go as it exits, not when its claim
    // expires.
    b.signal(libc::SIGTERM);
    assert!(b.wait_exit(Duration::from_secs(10)).success());
    let now = members(&mut la, "lobby");
    assert!(!now.contains(&idb), "{now:?}");
    assert_eq!(now.len(), 2);

    // Killed: its members go once its claim expires, within a minute.
    let killed = Instant::now();
    c.signal(libc::SIGKILL);
    members_until(&mut la, Duration::from_secs(60), |m| !m.contains(&idc));
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(60), "took {took:?}");
    eprintln!("a killed process's members were gone after {took:.1?}");
}

#[test]
fn rooms_come_back_after_our_subscription_is_killed_and_redis_restarts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut redis) = Redis::start(dir.path()) else {
        return;
    };
    let a = member(&redis, &["--metrics", "127.0.0.1:0"]);
    let b = member(&redis, &[]);
    let (mut la, mut la_lines) = joined(&a, "lobby");
    let (_lb, mut lb_lines) = joined(&b, "lobby");
    let mut pb = b.connect();
    until_heard(&mut pb, &mut la_lines, Duration::from_secs(5));
    while heard(&mut lb_lines, Duration::from_millis(200)).is_some() {}

    // Our subscriptions killed: both processes subscribe again by themselves.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let took = until_heard(&mut pb, &mut la_lines, Duration::from_secs(10));
    eprintln!("heard again {took:.1?} after CLIENT KILL TYPE pubsub");
    a.wait_for_log(&["rooms store unix://", "subscribed again"]);
    while heard(&mut lb_lines, Duration::from_millis(200)).is_some() {}

    // Redis killed: local delivery goes on, and `members` answers within
    // its timeout with this process's members alone.
    redis.kill();
    let mut pa = a.connect();
    assert_eq!(ask(&mut pa, "publish lobby while down\n"), "published 1");
    assert_eq!(
        heard(&mut la_lines, Duration::from_secs(2)).as_deref(),
        Some("while down")
    );
    let started = Instant::now();
    assert_eq!(members(&mut la, "lobby"), vec![id(&mut la)]);
    assert!(started.elapsed() < Duration::from_millis(2500));
    a.wait_for_log(&["WARN", "rooms store unix://"]);
    let scrape = || {
        let endpoint = hotsock::server::http::Endpoint::Tcp(a.metrics());
        let response = request(&endpoint, "GET", "/metrics", &[], b"");
        String::from_utf8(response.body.to_vec()).unwrap()
    };
    let down = format!("hotsock_rooms_store_up{{store=\"{}\"}} 0", redis.url());
    assert!(scrape().contains(&down), "{}", scrape());

    // Started again with nothing: subscriptions and presence come back
    // without a restart of hotsock.
    redis.restart_empty();
    let took = until_heard(&mut pb, &mut la_lines, Duration::from_secs(10));
    eprintln!("heard again {took:.1?} after Redis restarted empty");
    let took = members_until(&mut la, Duration::from_secs(10), |m| m.len() == 2);
    eprintln!("members back {took:.1?} later");
    let up = format!("hotsock_rooms_store_up{{store=\"{}\"}} 1", redis.url());
    assert!(scrape().contains(&up), "{}", scrape());
    assert!(scrape().contains("hotsock_rooms_fleet_messages_total{store="));
}

#[test]
fn a_stopped_redis_costs_members_a_timeout_and_delivery_here_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(redis) = Redis::start(dir.path()) else {
        return;
    };
    let (a, b) = (member(&redis, &[]), member(&redis, &[]));
    let (mut la, mut la_lines) = joined(&a, "lobby");
    let (_lb, mut lb_lines) = joined(&b, "lobby");
    let mut pa = a.connect();
    assert_eq!(members(&mut la, "lobby").len(), 2);

    redis.signal(libc::SIGSTOP);
    // Local delivery never waits for the store.
    for i in 0..20 {
        let started = Instant::now();
        assert_eq!(
            ask(&mut pa, &format!("publish lobby local {i}\n")),
            "published 1"
        );
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(
            heard(&mut la_lines, Duration::from_secs(1)),
            Some(format!("local {i}"))
        );
    }
    // `members` waits out one timeout at most, then answers with what is here.
    let started = Instant::now();
    let now = members(&mut la, "lobby");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert_eq!(now.len(), 1, "{now:?}");
    let started = Instant::now();
    members(&mut la, "lobby");
    assert!(started.elapsed() < Duration::from_millis(2500));
    redis.signal(libc::SIGCONT);

    // Back: the fleet hears each other again, and counts both members.
    while heard(&mut lb_lines, Duration::from_millis(100)).is_some() {}
    until_heard(&mut pa, &mut lb_lines, Duration::from_secs(10));
    // `la` heard every probe too, at once.
    while heard(&mut la_lines, Duration::from_millis(300)).is_some() {}
    members_until(&mut la, Duration::from_secs(10), |m| m.len() == 2);
}

#[test]
fn the_rooms_store_is_named_fixed_while_serving_and_must_answer_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // A store that is not there: a clear error, before anything listens.
    let missing = format!("unix://{}", dir.path().join("none.sock").display());
    let output = hotsock()
        .args(["serve", "--addr", "127.0.0.1:0", "--rooms-store", &missing])
        .arg(wasm("kit"))
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(error.contains("cannot reach the rooms store"), "{error}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"));
    let output = hotsock()
        .args(["serve", "--rooms-store", "memory:"])
        .arg(wasm("kit"))
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("not a rooms store"), "{error}");

    let Some(redis) = Redis::start(dir.path()) else {
        return;
    };
    let config = dir.path().join("hotsock.toml");
    let write = |store: &str| {
        let text = format!(
            "handler = \"{}\"\naddr = \"127.0.0.1:0\"\nrooms-store = \"{store}\"\n",
            wasm("kit").display()
        );
        std::fs::write(&config, text).unwrap();
    };
    write(&redis.url());
    let server = Server::start_config(&config, 1, &[]);
    server.wait_for_log(&["this process is node"]);
    write("local");
    server.signal(libc::SIGHUP);
    server.wait_for_log(&["rooms-store cannot change", "restart to change it"]);
    let check = hotsock()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("ok: rooms store local"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn a_binary_upgrade_joins_the_same_fleet_rooms_and_its_old_clients_stay_in_them() {
    let dir = tempfile::tempdir().unwrap();
    let Some(redis) = Redis::start(dir.path()) else {
        return;
    };
    let a = member(&redis, &[]);
    let b = member(&redis, &[]);
    let (mut la, mut la_lines) = joined(&a, "lobby");
    // A long-lived client of the old process.
    let (mut old, mut old_lines) = joined(&b, "lobby");
    let old_id = id(&mut old);
    b.signal(libc::SIGUSR2);
    let _reap = Reap(taken_over_by(&b));
    // The new process is a node of its own, in the same rooms.
    let (mut new, mut new_lines) = joined(&b, "lobby");
    let new_id = id(&mut new);
    assert_ne!(new_id >> 48, old_id >> 48);
    let mut now = members(&mut la, "lobby");
    now.sort_unstable();
    let mut want = vec![id(&mut la), old_id, new_id];
    want.sort_unstable();
    assert_eq!(now, want);
    assert_eq!(
        ask(&mut la, "publish lobby after the upgrade\n"),
        "published 0"
    );
    for lines in [&mut old_lines, &mut new_lines] {
        let got = heard(lines, Duration::from_secs(5));
        assert_eq!(got.as_deref(), Some("after the upgrade"));
    }
    // `old` is the old process's: no member of the new one hears it.
    assert_eq!(
        ask(&mut new, "publish lobby from the new one\n"),
        "published 0"
    );
    assert_eq!(
        heard(&mut old_lines, Duration::from_secs(5)).as_deref(),
        Some("from the new one")
    );
    assert_eq!(
        heard(&mut la_lines, Duration::from_secs(5)).as_deref(),
        Some("from the new one")
    );
}

#[test]
fn fleets_on_two_databases_of_one_redis_never_hear_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let Some(redis) = Redis::start(dir.path()) else {
        return;
    };
    let on = |db: u32| {
        let url = format!("{}?db={db}", redis.url());
        Server::start_with("kit", &["--rooms-store", &url])
    };
    let (one, two, two_again) = (on(1), on(2), on(2));
    let (mut l1, mut l1_lines) = joined(&one, "lobby");
    let (mut l2, mut l2_lines) = joined(&two, "lobby");
    let (_l2b, mut l2b_lines) = joined(&two_again, "lobby");
    assert_eq!(members(&mut l1, "lobby").len(), 1);
    assert_eq!(members(&mut l2, "lobby").len(), 2);
    assert!(ask(&mut l2, "publish lobby for db 2\n").starts_with("published"));
    assert_eq!(
        heard(&mut l2b_lines, Duration::from_secs(5)).as_deref(),
        Some("for db 2")
    );
    assert!(ask(&mut l1, "publish lobby for db 1\n").starts_with("published"));
    assert_eq!(heard(&mut l2_lines, Duration::from_millis(500)), None);
    assert_eq!(heard(&mut l2b_lines, Duration::from_millis(100)), None);
    assert_eq!(heard(&mut l1_lines, Duration::from_millis(100)), None);
}
