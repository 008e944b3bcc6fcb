//! Operations: Prometheus metrics read by Prometheus's own parser and checked
//! against the traffic the test made, health and readiness while draining,
//! JSON logs, and config files with several listeners.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use libc::{SIGHUP, SIGTERM};
use serde_json::Value;

use crate::util::{
    Server, TIMEOUT, TestCa, ask, connect, echo, error_of, hotsock, is_closed, repo_root, request,
    wasm,
};

/// One sample of `/metrics`, as Prometheus's parser read it.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: serde_json::Map<String, Value>,
    pub value: f64,
}

/// `/metrics` of `server`, parsed by `prometheus_client` (which `make setup`
/// installs into .venv), strictly: a format error fails the test.
pub fn metrics(server: &Server) -> Vec<Sample> {
    let endpoint = testkit::http::Endpoint::Tcp(server.metrics());
    let response = request(&endpoint, "GET", "/metrics", &[], b"");
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        response.headers
    );
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make test`, which installs prometheus_client",
        python.display()
    );
    let mut parser = Command::new(python)
        .arg(repo_root().join("tests/clients/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    let mut stdin = parser.stdin.take().unwrap();
    let body = response.body.clone();
    let writer = thread::spawn(move || stdin.write_all(&body));
    let output = parser.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        output.status.success(),
        "Prometheus's parser refused /metrics: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&response.body)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let sample: Value = serde_json::from_str(line).unwrap();
            Sample {
                name: sample["name"].as_str().unwrap().to_string(),
                labels: sample["labels"].as_object().unwrap().clone(),
                value: sample["value"].as_f64().unwrap(),
            }
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels`; 0 if none.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k) == Some(&Value::from(*v)))
        })
        .map(|s| s.value)
        .sum()
}

/// Waits until no connection of `server` is open, by its metrics.
fn metrics_when_idle(server: &Server) -> Vec<Sample> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let samples = metrics(server);
        if value(&samples, "hotsock_connections_active", &[]) == 0.0 {
            return samples;
        }
        assert!(Instant::now() < deadline, "connections never closed");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_count_the_traffic_exactly_and_parse() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let server = Server::start_with(
        "probe",
        &[
            "--metrics",
            "127.0.0.1:0",
            "--admin",
            socket.to_str().unwrap(),
        ],
    );
    let (mut sent, mut received) = (0, 0);
    for message in ["hello", "metrics"] {
        let mut client = server.connect();
        let request = format!("{message}\n");
        let reply = ask(&mut client, &request);
        sent += request.len();
        received += reply.len() + 1;
    }
    let mut trapped = server.connect();
    trapped.write_all(b"trap").unwrap();
    sent += 4;
    assert!(is_closed(&mut trapped));
    let swapped = server
        .admin_command("swap")
        .arg(wasm("guest_handler"))
        .output()
        .unwrap();
    assert!(swapped.status.success());
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not wasm").unwrap();
    assert!(
        !server
            .admin_command("swap")
            .arg(&garbage)
            .output()
            .unwrap()
            .status
            .success()
    );

    let m = metrics_when_idle(&server);
    let listener = [("listener", "default")];
    assert_eq!(
        value(&m, "hotsock_connections_accepted_total", &listener),
        3.0
    );
    assert_eq!(
        value(&m, "hotsock_bytes_received_total", &listener),
        sent as f64
    );
    assert_eq!(
        value(&m, "hotsock_bytes_sent_total", &listener),
        received as f64
    );
    let v1 = &server.status()["versions"][1]["id"];
    let v1 = v1.as_str().unwrap();
    let trap = [("version", v1), ("kind", "trap")];
    assert_eq!(value(&m, "hotsock_connection_failures_total", &trap), 1.0);
    assert_eq!(
        value(&m, "hotsock_connection_duration_seconds_count", &listener),
        3.0
    );
    assert_eq!(
        value(&m, "hotsock_instantiate_seconds_count", &listener),
        3.0
    );
    assert_eq!(value(&m, "hotsock_swaps_total", &[("result", "ok")]), 1.0);
    assert_eq!(
        value(&m, "hotsock_swaps_total", &[("result", "rejected")]),
        1.0
    );
    assert_eq!(
        value(&m, "hotsock_handler_info", &[("state", "current")]),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "hotsock_handler_info",
            &[("version", v1), ("state", "previous")]
        ),
        1.0
    );
    let cache = value(&m, "hotsock_compile_cache_total", &[]);
    assert!(
        cache >= 1.0,
        "the start and the swap looked in the cache: {cache}"
    );
    for reason in ["full", "per_ip", "no_thread"] {
        let refused = [("listener", "default"), ("reason", reason)];
        assert_eq!(
            value(&m, "hotsock_connections_refused_total", &refused),
            0.0
        );
    }
}

#[test]
fn readyz_fails_from_the_moment_a_drain_starts_and_healthz_does_not() {
    let mut server = Server::start_with(
        "guest_handler",
        &["--metrics", "127.0.0.1:0", "--stop-delay", "1s"],
    );
    let health = testkit::http::Endpoint::Tcp(server.metrics());
    let get = |path: &str| request(&health, "GET", path, &[], b"").status;
    assert_eq!((get("/healthz"), get("/readyz")), (200, 200));
    assert_eq!(request(&health, "POST", "/readyz", &[], b"").status, 405);
    let mut open = server.connect();
    server.signal(SIGTERM);
    let deadline = Instant::now() + TIMEOUT;
    while get("/readyz") != 503 {
        assert!(Instant::now() < deadline, "/readyz never failed");
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(get("/healthz"), 200);
    // While load balancers take the hint, clients are still served.
    assert_eq!(echo(&mut server.connect(), b"late"), [b"late"]);
    assert_eq!(echo(&mut open, b"open"), [b"open"]);
    server.wait_for_log(&["/readyz now fails", "(--stop-delay)"]);
    drop(open);
    assert!(server.wait_exit(TIMEOUT).success());
}

#[test]
fn json_logs_are_one_object_a_line_with_the_connections_fields() {
    let server = Server::start_with("probe", &["--log-format", "json"]);
    let mut client = server.connect();
    assert_eq!(ask(&mut client, "print from the guest\n"), "printed");
    drop(client);
    server.wait_for_log(&["closed after"]);
    let lines: Vec<Value> = server
        .log()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    for line in &lines {
        for field in ["timestamp", "level", "message"] {
            assert!(line[field].is_string(), "{line}");
        }
    }
    let connected = lines.iter().find(|l| l["message"] == "connected").unwrap();
    assert!(connected["conn"].is_u64(), "{connected}");
    assert!(
        connected["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(connected["version"].as_str().unwrap().starts_with("v1-"));
    assert_eq!(connected["listener"], "default");
    let printed = lines
        .iter()
        .find(|l| l["message"] == "from the guest")
        .expect("the guest's stdout line");
    assert_eq!(printed["stream"], "stdout");
    assert_eq!(printed["conn"], connected["conn"]);
}

/// Writes `text` as `hotsock.toml` in `dir`.
fn config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("hotsock.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn two_listeners(echo: &Path, probe: &Path) -> String {
    format!(
        r#"
        max-connections = 20
        cpu-budget = "500ms"
        [[listener]]
        name = "echo"
        addr = "127.0.0.1:0"
        handler = "{}"
        [[listener]]
        name = "probe"
        addr = ["127.0.0.1:0", "127.0.0.1:0"]
        handler = "{}"
        max-connections = 5
        env = {{ GREETING = "hi" }}
        "#,
        echo.display(),
        probe.display()
    )
}

#[test]
fn a_config_with_two_listeners_serves_two_handlers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let path = config(
        dir.path(),
        &two_listeners(&wasm("guest_handler"), &wasm("probe")),
    );
    let server = Server::start_config(
        &path,
        3,
        &[
            "--metrics",
            "127.0.0.1:0",
            "--admin",
            socket.to_str().unwrap(),
        ],
    );
    assert_eq!(
        echo(&mut connect(server.listener("echo")), b"one"),
        [b"one"]
    );
    let mut probe = connect(server.listener("probe"));
    assert_eq!(ask(&mut probe, "env GREETING\n"), "hi");
    // Both of the probe listener's addresses serve the probe.
    assert_eq!(ask(&mut connect(server.addrs[2]), "two\n"), "two");

    // Each listener has its own versions: a swap needs to say which.
    let ambiguous = error_of(server.admin_command("swap").arg(wasm("whoami")));
    assert!(
        ambiguous.contains("several listeners (echo, probe)"),
        "{ambiguous}"
    );
    let swapped = server
        .admin_command("swap")
        .args(["--listener", "probe"])
        .arg(wasm("guest_handler"))
        .output()
        .unwrap();
    assert!(
        swapped.status.success(),
        "{}",
        String::from_utf8_lossy(&swapped.stderr)
    );
    assert_eq!(
        echo(&mut connect(server.listener("probe")), b"now"),
        [b"now"]
    );
    assert_eq!(ask(&mut probe, "still the probe\n"), "still the probe");
    let status = server.admin_command("status").output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("listener echo: connections: ") && status.contains("of 5 max"),
        "{status}"
    );
    drop(probe);
    let m = metrics_when_idle(&server);
    assert_eq!(
        value(
            &m,
            "hotsock_connections_accepted_total",
            &[("listener", "echo")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "hotsock_connections_accepted_total",
            &[("listener", "probe")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            "hotsock_swaps_total",
            &[("listener", "probe"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "hotsock_swaps_total",
            &[("listener", "echo"), ("result", "ok")]
        ),
        0.0
    );
}

#[test]
fn misspelt_keys_and_bad_values_are_named_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        (
            "handler = \"h.wasm\"\nmax-conections = 5\n",
            &["max-conections", "line 2"][..],
        ),
        (
            "[[listener]]\nname = \"a\"\naddr = \"127.0.0.1:0\"\nhandler = \"a.wasm\"\nidle = \"1s\"\n",
            &["`idle`", "line 5"],
        ),
        (
            "handler = \"h.wasm\"\ncpu-budget = \"soon\"\n",
            &["cpu-budget", "expected e.g. 500ms"],
        ),
        (
            "handler = \"h.wasm\"\nwhen-full = \"drop\"\n",
            &["`wait` or `close`"],
        ),
        (
            "[[listener]]\nname = \"a\"\naddr = \"127.0.0.1:0\"\nhandler = \"a.wasm\"\n[[listener]]\nname = \"a\"\naddr = \"127.0.0.1:0\"\nhandler = \"b.wasm\"\n",
            &["two listeners are called `a`"],
        ),
        (
            "handler = \"h.wasm\"\nproxy-from = \"10.0.0.0/8\"\n",
            &["proxy-from", "without proxy-protocol"],
        ),
        (
            "handler = \"h.wasm\"\nproxy-protocol = true\nproxy-from = [\"10.1.2.3/8\"]\n",
            &["did you mean 10.0.0.0/8?", "line 3"],
        ),
        (
            "handler = \"h.wasm\"\nproxy-protocol = true\nproxy-from = \"ten\"\n",
            &["`ten` is not an address range"],
        ),
        (
            "[[listener]]\nname = \"metrics\"\naddr = \"127.0.0.1:0\"\nhandler = \"a.wasm\"\n",
            &["listener name `metrics` is reserved"],
        ),
    ] {
        let path = config(dir.path(), text);
        for check in [&["serve", "--config"][..], &["check", "--config"]] {
            let stderr = error_of(hotsock().args(check).arg(&path));
            for expected in expected {
                assert!(stderr.contains(expected), "{check:?} {text:?}:\n{stderr}");
            }
        }
    }
}

#[test]
fn the_command_line_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let text = format!(
        "handler = \"{}\"\naddr = \"127.0.0.1:0\"\nmax-connections = 5\n",
        wasm("guest_handler").display()
    );
    let path = config(dir.path(), &text);
    let server = Server::start_config(
        &path,
        1,
        &[
            "--max-connections",
            "3",
            "--admin",
            socket.to_str().unwrap(),
        ],
    );
    assert_eq!(server.status()["connections"]["max"], 3);
    assert_eq!(echo(&mut server.connect(), b"hi"), [b"hi"]);
}

#[test]
fn check_validates_the_example_config_and_names_a_bad_listener() {
    let example = repo_root().join("deploy/hotsock.toml");
    let output = hotsock()
        .args(["check", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("ok: listener echo on 127.0.0.1:50007"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok: listener greet on 127.0.0.1:50009"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok: listener chat on 127.0.0.1:50010"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0").unwrap();
    let path = config(dir.path(), &two_listeners(&wasm("guest_handler"), &bad));
    let stderr = error_of(hotsock().args(["check", "--config"]).arg(&path));
    assert!(
        stderr.contains("listener probe") && stderr.contains("core WebAssembly module"),
        "{stderr}"
    );
    let mut text = two_listeners(&wasm("guest_handler"), &wasm("probe"));
    text = text.replacen("addr = \"127.0.0.1:0\"", "addr = \"127.0.0.1:notaport\"", 1);
    let path = config(dir.path(), &text);
    let stderr = error_of(hotsock().args(["check", "--config"]).arg(&path));
    assert!(
        stderr.contains("`127.0.0.1:notaport` is not an address"),
        "{stderr}"
    );
}

#[test]
fn the_example_configs_tls_listener_checks_once_uncommented() {
    let example = std::fs::read_to_string(repo_root().join("deploy/hotsock.toml")).unwrap();
    let start = example
        .find("# [[listener]]")
        .expect("deploy/hotsock.toml has a commented TLS listener");
    let handler = wasm("whoami").display().to_string();
    let listener: String = example[start..]
        .lines()
        .map(|line| line.strip_prefix('#').unwrap_or(line))
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .map(|line| line.replace("../target/wasm32-wasip2/release/whoami.wasm", &handler))
        .map(|line| line + "\n")
        .collect();
    assert!(listener.contains("tls-cert = "), "{listener}");
    // Its certificates, where it names them.
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let ca = TestCa::new();
    ca.write_ca(&tls.join("ca.pem"));
    ca.issue(
        &["localhost"],
        &tls.join("server.pem"),
        &tls.join("server.key"),
    );
    ca.issue(
        &["api.example.com"],
        &tls.join("api.pem"),
        &tls.join("api.key"),
    );
    let path = config(dir.path(), &listener);
    let output = hotsock()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{listener}\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("ok: listener devices on 127.0.0.1:50443"),
        "{stdout}"
    );
}

#[test]
fn sighup_rereads_the_config_and_a_bad_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let write = |handler: &Path, extra: &str| {
        let text = format!(
            "[[listener]]\nname = \"main\"\naddr = \"127.0.0.1:0\"\nhandler = \"{}\"\nmax-connections = 4\n{extra}",
            handler.display()
        );
        config(dir.path(), &text)
    };
    let path = write(&wasm("guest_handler"), "");
    let server = Server::start_config(&path, 1, &[]);
    assert_eq!(echo(&mut server.connect(), b"v1"), [b"v1"]);

    // A new handler and a new limit: both apply to new connections.
    write(&wasm("probe"), "cpu-budget = \"100ms\"\n");
    server.signal(SIGHUP);
    server.wait_for_log(&["SIGHUP: re-read", "listener main: v1-", " -> v2-"]);
    assert_eq!(ask(&mut server.connect(), "v2\n"), "v2");
    let mut looping = server.connect();
    looping.write_all(b"loop").unwrap();
    assert!(is_closed(&mut looping));
    server.wait_for_log(&["CPU budget exceeded: the handler computed for 100ms"]);

    // A misspelt key, a handler that is not one, or a pool-size change:
    // each is refused whole, and the server carries on as it was.
    let cases = [
        (
            wasm("guest_handler"),
            "cpu-budgit = \"1s\"\n",
            "unknown field `cpu-budgit`",
        ),
        (dir.path().join("missing.wasm"), "", "cannot read handler"),
        (
            wasm("guest_handler"),
            "max-connections = 9\n",
            "max-connections cannot change",
        ),
    ];
    for (refusals, (handler, extra, why)) in (1..).zip(cases) {
        let text = std::fs::read_to_string(write(&handler, extra)).unwrap();
        let text = text.replace(
            "max-connections = 4\nmax-connections = 9",
            "max-connections = 9",
        );
        std::fs::write(&path, text).unwrap();
        server.signal(SIGHUP);
        let deadline = Instant::now() + TIMEOUT;
        while server.log().matches("not applied, nothing changed").count() < refusals {
            assert!(
                Instant::now() < deadline,
                "no refusal logged:\n{}",
                server.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        assert!(server.log().contains(why), "{why}:\n{}", server.log());
        assert_eq!(ask(&mut server.connect(), "still v2\n"), "still v2");
    }
}

/// A copy of the component at `from`, written to `to` with a custom
/// section appended: the same code, another sha256, so another version.
fn variant(from: &Path, to: &Path, tag: &str) {
    let mut bytes = std::fs::read(from).unwrap();
    let payload = tag.as_bytes();
    let size = 1 + payload.len() + payload.len();
    assert!(payload.len() < 128 && size < 128, "one-byte LEB128 lengths");
    bytes.extend([0, size as u8, payload.len() as u8]);
    bytes.extend(payload);
    bytes.extend(payload);
    std::fs::write(to, bytes).unwrap();
}

#[test]
fn reloads_under_load_never_serve_a_version_with_another_generations_settings() {
    // Two generations, alternated by SIGHUP while clients connect: probe A
    // granted GREETING=alpha, and probe B (the same code, another version)
    // granted GREETING=beta. Each connection asks its handler for the
    // variable; the log says which version served it.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.wasm"), dir.path().join("b.wasm"));
    variant(&wasm("probe"), &a, "generation-a");
    variant(&wasm("probe"), &b, "generation-b");
    let write = |handler: &Path, greeting: &str| {
        let text = format!(
            "handler = \"{}\"\naddr = \"127.0.0.1:0\"\nmax-connections = 8\n\
             env = {{ GREETING = \"{greeting}\" }}\n",
            handler.display()
        );
        config(dir.path(), &text)
    };
    let path = write(&a, "alpha");
    let server = Server::start_config(&path, 1, &["--log-format", "json"]);
    let addr = server.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            thread::spawn(move || {
                let mut seen = Vec::new();
                // Bounded: stops when told, or after 10,000 connections
                // (at least ten seconds, paced as they are).
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && seen.len() < 10_000 {
                    thread::sleep(Duration::from_millis(1));
                    let mut client = connect(addr);
                    let whoami = ask(&mut client, "whoami\n");
                    let id: u64 = whoami.split(' ').next().unwrap().parse().unwrap();
                    seen.push((id, ask(&mut client, "env GREETING\n")));
                }
                seen
            })
        })
        .collect();
    for round in 1..=40 {
        let (handler, greeting) = match round % 2 {
            1 => (&b, "beta"),
            _ => (&a, "alpha"),
        };
        write(handler, greeting);
        server.signal(SIGHUP);
        let deadline = Instant::now() + TIMEOUT;
        while server.log().matches("SIGHUP: re-read").count() < round {
            assert!(Instant::now() < deadline, "no reload:\n{}", server.log());
            thread::sleep(Duration::from_millis(1));
        }
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen: Vec<(u64, String)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();

    let sha = |path: &Path| hotsock::runtime::sha256_hex(&std::fs::read(path).unwrap());
    let (sha_a, sha_b) = (sha(&a), sha(&b));
    let log = server.log();
    let versions: std::collections::HashMap<u64, String> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "connected")
        .map(|line| {
            let version = line["version"].as_str().unwrap().to_string();
            (line["conn"].as_u64().unwrap(), version)
        })
        .collect();
    let mut served = [0, 0];
    for (id, greeting) in &seen {
        let version = &versions[id];
        let prefix = version.split_once('-').unwrap().1;
        let (expected, count) = match prefix {
            p if sha_a.starts_with(p) => ("alpha", &mut served[0]),
            p if sha_b.starts_with(p) => ("beta", &mut served[1]),
            _ => panic!("conn {id}: version {version} is neither a nor b"),
        };
        assert_eq!(greeting, expected, "conn {id} on {version}");
        *count += 1;
    }
    assert!(
        served[0] > 0 && served[1] > 0,
        "both generations served: {served:?}"
    );
    println!("connections served by generation a and b: {served:?}");
}
