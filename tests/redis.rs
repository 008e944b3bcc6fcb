//! Key-value buckets in a real Redis (Debian's redis-server, started here on
//! a Unix socket in a temporary directory and stopped by pid): a counter
//! exact across two processes, a stopped Redis costing an error within the
//! timeout and never a hung connection, a restarted Redis used again without
//! restarting hotsock, and a bucket moved from SQLite to Redis.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::state::{increment_from_both, keyvalue_ok};
use crate::util::{Server, TIMEOUT, ask, request, system_tool};

/// A redis-server of the test's own, on a Unix socket; killed when dropped.
pub struct Redis {
    child: Child,
    dir: PathBuf,
    binary: PathBuf,
}

impl Redis {
    /// Starts redis-server in `dir`, or `None` where it is not installed
    /// (a failure under CI).
    pub fn start(dir: &Path) -> Option<Redis> {
        let binary = system_tool("redis-server", "redis-server")?;
        let mut redis = Redis {
            child: Self::spawn(&binary, dir),
            dir: dir.to_path_buf(),
            binary,
        };
        redis.wait_ready();
        Some(redis)
    }

    fn spawn(binary: &Path, dir: &Path) -> Child {
        Command::new(binary)
            .args(["--port", "0", "--appendonly", "yes", "--save", ""])
            .arg("--unixsocket")
            .arg(dir.join("redis.sock"))
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        while std::os::unix::net::UnixStream::connect(self.dir.join("redis.sock")).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "redis-server exited"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `unix:///…/redis.sock`, for `--keyvalue-store`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.dir.join("redis.sock").display())
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill only sends a signal to the child this test started.
        let sent = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(sent, 0, "kill redis-server");
    }

    /// Kills it (`SIGKILL`) and starts it again on the same socket and
    /// directory: what it had appended is read back.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Kills it (`SIGKILL`), leaving it down until [`Redis::start_again`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.dir.join("redis.sock"));
    }

    /// Starts it again after [`Redis::kill`], on the same socket.
    pub fn start_again(&mut self) {
        self.child = Self::spawn(&self.binary, &self.dir);
        self.wait_ready();
    }

    /// Kills it and starts it again with nothing: no file kept.
    pub fn restart_empty(&mut self) {
        self.kill();
        for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let path = entry.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("appendonly"))
            {
                let _ = std::fs::remove_dir_all(&path);
                let _ = std::fs::remove_file(&path);
            }
        }
        self.start_again();
    }

    /// Runs `redis-cli` on it with `args`; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let cli =
            system_tool("redis-cli", "redis-tools").expect("redis-cli comes with redis-server");
        let output = Command::new(cli)
            .arg("-s")
            .arg(self.dir.join("redis.sock"))
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "redis-cli {args:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn counter(redis: &Redis) -> Server {
    Server::start_with(
        "kit",
        &["--keyvalue", "visits", "--keyvalue-store", &redis.url()],
    )
}

#[test]
fn a_counter_is_exact_across_two_processes_on_one_redis() {
    let dir = tempfile::tempdir().unwrap();
    let Some(redis) = Redis::start(dir.path()) else {
        return;
    };
    let (a, b) = (counter(&redis), counter(&redis));
    increment_from_both([a.addr(), b.addr()]);
    assert_eq!(ask(&mut a.connect(), "incr visits n\n"), "value 1001");
    assert_eq!(ask(&mut b.connect(), "get visits n\n"), "value 1001");
    a.wait_for_log(&[&format!("key-value store: {}", redis.url())]);
}

#[test]
fn a_stopped_redis_costs_an_error_within_the_timeout_and_a_restarted_one_is_used_again() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut redis) = Redis::start(dir.path()) else {
        return;
    };
    let server = Server::start_with(
        "kit",
        &[
            "--keyvalue",
            "visits",
            "--keyvalue-store",
            &redis.url(),
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let metrics = || {
        let endpoint = hotsock::server::http::Endpoint::Tcp(server.metrics());
        let response = request(&endpoint, "GET", "/metrics", &[], b"");
        String::from_utf8(response.body.to_vec()).unwrap()
    };
    let mut client = server.connect();
    assert_eq!(ask(&mut client, "incr visits n\n"), "value 1");

    // Our connection killed (CLIENT KILL): the call on it fails, saying
    // so, and the next one connects afresh.
    let cli = system_tool("redis-cli", "redis-tools").expect("redis-cli comes with redis-server");
    let killed = Command::new(cli)
        .arg("-s")
        .arg(dir.path().join("redis.sock"))
        .args(["CLIENT", "KILL", "TYPE", "normal"])
        .output()
        .unwrap();
    assert!(killed.status.success());
    let answer = ask(&mut client, "incr visits n\n");
    assert!(answer.contains("not retried"), "{answer}");
    assert_eq!(ask(&mut client, "incr visits n\n"), "value 2");

    // Stopped: the increment fails, with why, within the 2 s timeout.
    redis.signal(libc::SIGSTOP);
    let started = Instant::now();
    let answer = ask(&mut client, "incr visits n\n");
    let took = started.elapsed();
    redis.signal(libc::SIGCONT);
    assert!(answer.contains("did not answer within 2s"), "{answer}");
    assert!(answer.contains("not retried"), "{answer}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let scraped = metrics();
    let down = format!("hotsock_keyvalue_store_up{{store=\"{}\"}} 0", redis.url());
    assert!(scraped.contains(&down), "{scraped}");
    assert!(
        scraped.contains("operation=\"increment\",result=\"error\"} 2"),
        "{scraped}"
    );
    server.wait_for_log(&["WARN", "key-value store unix://", "no answer within 2s"]);

    // Killed and started again: the next call connects afresh, and what
    // was acknowledged (appendonly) is there, the unknown one maybe too.
    redis.restart();
    // For a second after a timeout, calls fail at once (FAIL_FAST).
    thread::sleep(Duration::from_millis(1100));
    let answer = ask(&mut client, "incr visits n\n");
    assert!(answer == "value 3" || answer == "value 4", "{answer}");
    let up = format!("hotsock_keyvalue_store_up{{store=\"{}\"}} 1", redis.url());
    assert!(metrics().contains(&up));
    server.wait_for_log(&["answering again"]);
}

#[test]
fn a_bucket_moves_from_sqlite_to_redis_and_reads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let Some(redis) = Redis::start(dir.path()) else {
        return;
    };
    let state = dir.path().join("state");
    let server = Server::start_with(
        "kit",
        &[
            "--keyvalue",
            "visits",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    assert_eq!(ask(&mut server.connect(), "incr visits n\n"), "value 1");
    assert_eq!(ask(&mut server.connect(), "incr visits n\n"), "value 2");
    drop(server);
    let sqlite = ["--state-dir", state.to_str().unwrap()];
    let url = redis.url();
    let to = ["--keyvalue-store", url.as_str()];
    let value = keyvalue_ok(&sqlite, &["get", "visits", "n"]);
    keyvalue_ok(&to, &["set", "visits", "n", value.trim_end()]);
    // The counter goes on in Redis as it would have in SQLite.
    let server = counter(&redis);
    assert_eq!(ask(&mut server.connect(), "incr visits n\n"), "value 3");
    assert_eq!(keyvalue_ok(&to, &["list", "visits"]), "n\n");
    assert_eq!(keyvalue_ok(&to, &["get", "visits", "n"]), "3\n");
}

#[test]
fn a_stopped_redis_holds_no_connection_longer_than_about_one_timeout_however_many_wait() {
    let dir = tempfile::tempdir().unwrap();
    let Some(redis) = Redis::start(dir.path()) else {
        return;
    };
    let server = counter(&redis);
    // More clients than the pool has connections (8).
    let mut clients: Vec<_> = (0..20).map(|_| server.connect()).collect();
    for client in &mut clients {
        assert!(ask(client, "incr visits n\n").starts_with("value "));
    }
    redis.signal(libc::SIGSTOP);
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            thread::spawn(move || {
                let started = Instant::now();
                let answer = ask(&mut client, "incr visits n\n");
                (answer, started.elapsed(), client)
            })
        })
        .collect();
    let answers: Vec<_> = waits.into_iter().map(|w| w.join().unwrap()).collect();
    redis.signal(libc::SIGCONT);
    // Up to 8 calls wait out the 2 s timeout side by side; the others wait
    // for a free connection no longer than that, then fail, instead of 2 s
    // each in turn (40 s for the last of 20 on one connection).
    for (answer, took, _) in &answers {
        assert!(answer.contains("key-value store"), "{answer}");
        assert!(
            *took < Duration::from_millis(4500),
            "took {took:?}: {answer}"
        );
    }
    thread::sleep(Duration::from_millis(1100));
    let (_, _, mut client) = answers.into_iter().next().unwrap();
    let answer = ask(&mut client, "incr visits n\n");
    assert!(answer.starts_with("value "), "{answer}");
}

#[test]
fn the_quota_holds_in_redis_and_says_by_how_much() {
    let dir = tempfile::tempdir().unwrap();
    let Some(redis) = Redis::start(dir.path()) else {
        return;
    };
    let url = redis.url();
    let server = Server::start_with(
        "kit",
        &[
            "--keyvalue",
            "small",
            "--keyvalue-max-bytes",
            "1KiB",
            "--keyvalue-store",
            &url,
        ],
    );
    let mut client = server.connect();
    // `a` and its 1,021 bytes: 1,022 of the 1,024.
    assert_eq!(ask(&mut client, "setsize small a 1021\n"), "ok");
    let full = ask(&mut client, "setsize small b 200\n");
    assert!(full.contains("would make it 1223 bytes"), "{full}");
    assert_eq!(ask(&mut client, "incr small c\n"), "value 1");
    let over = ask(&mut client, "incr small d\n");
    assert!(over.contains("would make it 1026 bytes"), "{over}");
    assert!(over.contains("--keyvalue-max-bytes"), "{over}");
    assert_eq!(ask(&mut client, "keys small\n"), "keys a,c");
    let not_a_counter = ask(&mut client, "incr small a\n");
    assert!(
        not_a_counter.contains("something other than a number"),
        "{not_a_counter}"
    );
}
