//! A fleet: hotsock behind a real HAProxy (PROXY protocol v2, health checks
//! on /readyz), rolling swaps, a binary upgrade under load, SO_REUSEPORT,
//! systemd socket activation and notifications, and the files in deploy/.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::haproxy::{self, Haproxy};

use crate::util::{
    Server, TIMEOUT, ask, connect, free_port, hotsock, is_closed, reply, repo_root, system_tool,
    wasm,
};

/// Waits until something accepts connections on `addr`.
fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + TIMEOUT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A process this test started indirectly (an upgrade's new hotsock),
/// killed when dropped, so that no test leaves one behind.
pub struct Reap(pub u32);

impl Drop for Reap {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// Whether `pid` runs (a zombie has exited).
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid as i32, 0) == 0 };
    // A zombie has exited; it waits for a parent that may be gone.
    exists
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')))
}

/// The process that took over from `server` on SIGUSR2, once it has.
pub fn taken_over_by(server: &Server) -> u32 {
    let line = server.wait_for_log(&["upgrade: process", "serves now"]);
    line.split("upgrade: process ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// A copy of the hotsock binary in `dir`, as an installed one: an upgrade
/// starts whatever is at its path, which a test may replace.
fn installed_copy(dir: &Path) -> PathBuf {
    let binary = dir.join("hotsock");
    std::fs::copy(env!("CARGO_BIN_EXE_hotsock"), &binary).unwrap();
    binary
}

/// systemd-socket-activate (`activate`) listening on `addr`, naming its
/// socket `fdname`, to start `hotsock serve ARGS` on the first connection.
/// It passes on only the environment it is told to (`env`), as systemd does.
fn activated(
    activate: &Path,
    addr: SocketAddr,
    fdname: &str,
    env: &[String],
    args: &[&OsStr],
) -> Child {
    let mut command = Command::new(activate);
    command
        .arg("--listen")
        .arg(addr.to_string())
        .arg(format!("--fdname={fdname}"));
    for variable in env {
        command.arg(format!("--setenv={variable}"));
    }
    let child = command
        .arg(env!("CARGO_BIN_EXE_hotsock"))
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate starts");
    wait_listening(addr);
    child
}

/// The process behind a server's admin API now (it changes on an upgrade).
fn pid_of(server: &Server) -> u32 {
    server.status()["pid"].as_u64().expect("a pid") as u32
}

/// HAProxy running deploy/haproxy.cfg in front of `servers` (started by
/// [`three`]), its configuration and log in `dir`.
fn start_haproxy(haproxy: &Path, servers: &[Server], dir: &Path) -> Haproxy {
    let backends: Vec<_> = servers.iter().map(|s| (s.addr(), s.metrics())).collect();
    let config = dir.join("haproxy.cfg");
    let log = dir.join("haproxy.log");
    Haproxy::start(haproxy, &backends, &config, &log).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Three hotsock processes serving `guest` with the PROXY protocol, each
/// with metrics (for HAProxy's health checks) and an admin socket.
fn three(binary: Option<&Path>, guest: &str, dir: &Path) -> Vec<Server> {
    (1..=3)
        .map(|n| {
            let admin = dir.join(format!("admin{n}.sock"));
            let args = [
                "--proxy-protocol",
                "--metrics",
                "127.0.0.1:0",
                "--admin",
                admin.to_str().unwrap(),
                "--drain-timeout",
                "20s",
            ];
            match binary {
                Some(binary) => Server::start_binary(binary, &wasm(guest), &args),
                None => Server::start_with(guest, &args),
            }
        })
        .collect()
}

#[test]
fn a_client_behind_haproxy_is_seen_with_its_own_address() {
    let Some(haproxy) = system_tool("haproxy", "haproxy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let servers = three(None, "probe", dir.path());
    let proxy = start_haproxy(&haproxy, &servers, dir.path());
    // Every process gets some: leastconn spreads idle connections evenly.
    let mut clients = Vec::new();
    for _ in 0..6 {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 9], 0)).into())
            .unwrap();
        socket.connect(&proxy.frontend().into()).unwrap();
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let me = stream.local_addr().unwrap();
        let answer = ask(&mut stream, "whoami\n");
        let (_, peer) = answer.split_once(' ').expect("`ID ADDR`");
        assert_eq!(peer, me.to_string(), "haproxy log:\n{}", proxy.log());
        clients.push(stream);
    }
    for server in &servers {
        let status = server.status();
        assert_eq!(status["connections"]["active"], 2, "{status}");
        // The log names the client, and the balancer it came through.
        server.wait_for_log(&["127.0.0.9:", " via 127.0.0.1:", "connected"]);
    }
}

/// Runs `openssl ARGS` in `dir`; fails the test if it fails.
pub fn openssl(openssl: &Path, dir: &Path, args: &[&str]) {
    let out = Command::new(openssl)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Certificates for deploy/haproxy-tls.cfg, made in `dir` with the openssl
/// CLI (ECDSA P-256, quick to make): a CA (`ca.pem`, also `clients-ca.pem`),
/// HAProxy's `server.pem` (certificate and key, for localhost and
/// 127.0.0.1, issued by the CA), a client `device` (`CN=device-42`, issued
/// by the CA) and a client `stranger` (`CN=device-42` too, issued by
/// another CA).
pub fn certificates(tool: &Path, dir: &Path) {
    let ec = crate::tls::EC;
    for (name, cn) in [("ca", "hotsock test CA"), ("other-ca", "another CA")] {
        let subject = format!("/CN={cn}");
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subject];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &pem]);
        openssl(tool, dir, &args);
    }
    // X.509 v3 certificates (any extension makes one): rustls refuses v1.
    let server = "subjectAltName=DNS:localhost,IP:127.0.0.1";
    let client = "extendedKeyUsage=clientAuth";
    for (name, cn, ext, ca) in [
        ("server", "localhost", server, "ca"),
        ("device", "device-42", client, "ca"),
        ("stranger", "device-42", client, "other-ca"),
    ] {
        crate::tls::issue_by(tool, dir, name, cn, ext, ca, &ec);
    }
    // HAProxy takes the certificate and its key in one file.
    let bundle = [dir.join("server.pem"), dir.join("server.key")]
        .map(|path| std::fs::read_to_string(path).unwrap())
        .concat();
    std::fs::write(dir.join("server.pem"), bundle).unwrap();
    std::fs::copy(dir.join("ca.pem"), dir.join("clients-ca.pem")).unwrap();
}

/// What the probe answers `whoami` with (`ID ADDR`), asked over TLS
/// through `frontend` by `openssl s_client`, with the client certificate
/// `NAME.pem` in `dir` if `cert` names one; `None` if the connection closes
/// first.
fn whoami_over_tls(
    tool: &Path,
    frontend: SocketAddr,
    dir: &Path,
    cert: Option<&str>,
) -> Option<String> {
    ask_over_tls(tool, frontend, dir, cert, "whoami\n")
}

/// Sends `request` through `openssl s_client` to `frontend`, with the
/// client certificate `cert` if any; the first line answered.
pub fn ask_over_tls(
    tool: &Path,
    frontend: SocketAddr,
    dir: &Path,
    cert: Option<&str>,
    request: &str,
) -> Option<String> {
    let mut command = Command::new(tool);
    command
        .args(["s_client", "-quiet", "-verify_return_error", "-CAfile"])
        .arg(dir.join("ca.pem"))
        .args(["-servername", "localhost", "-alpn", "hotsock/1", "-connect"])
        .arg(frontend.to_string());
    if let Some(name) = cert {
        command
            .arg("-cert")
            .arg(dir.join(format!("{name}.pem")))
            .arg("-key")
            .arg(dir.join(format!("{name}.key")));
    }
    let mut client = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    client
        .stdin
        .as_mut()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let stdout = client.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(TIMEOUT);
    let _ = client.kill();
    let _ = client.wait();
    let line = line.expect("s_client answers or closes");
    Some(line.trim_end().to_string()).filter(|line| !line.is_empty())
}

/// The message of connection `id`'s "connected" line, in a JSON log.
fn connected_message(server: &Server, id: &str) -> String {
    let line = server.wait_for_log(&[&format!("\"conn\":{id},"), "\"connected"]);
    let line: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    line["message"].as_str().expect("a message").to_string()
}

/// HAProxy and openssl, and the test certificates made in `dir`; `None`
/// where either is not installed (a failure under CI).
fn tls_tools(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let binary = system_tool("haproxy", "haproxy")?;
    let tool = system_tool("openssl", "openssl")?;
    certificates(&tool, dir);
    Some((binary, tool))
}

#[test]
fn a_contract_0_3_0_handler_sees_the_tls_haproxy_terminated() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let Some((binary, tool)) = tls_tools(dir) else {
        return;
    };
    let server = Server::start_with("kit", &["--proxy-protocol"]);
    let backends = [(server.addr(), server.addr()); 3];
    let proxy = Haproxy::start_with(
        &binary,
        |frontend| haproxy::tls_config(haproxy::TLS_SHIPPED, frontend, &backends, dir),
        &dir.join("haproxy.cfg"),
        &dir.join("haproxy.log"),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let tls = |cert| {
        let answer = ask_over_tls(&tool, proxy.frontend(), dir, cert, "tls\n");
        answer.unwrap_or_else(|| panic!("no answer; haproxy:\n{}", proxy.log()))
    };
    // `tls VERSION CIPHER sni=NAME alpn=PROTO certs=N subject=SUBJECT`.
    let device = tls(Some("device"));
    assert!(device.starts_with("tls TLSv1.3 TLS_"), "{device}");
    assert!(
        device.ends_with(" sni=localhost alpn=hotsock/1 certs=0 subject=CN=device-42"),
        "{device}"
    );
    let anonymous = tls(None);
    assert!(anonymous.ends_with(" certs=0 subject=-"), "{anonymous}");
    // Straight to hotsock, past HAProxy: plaintext, whatever it claims.
    let mut direct = crate::util::connect(server.addr());
    direct
        .write_all(b"PROXY TCP4 192.0.2.5 127.0.0.1 5 6\r\ntls\n")
        .unwrap();
    assert_eq!(crate::util::reply(&mut direct), "tls none");
}

#[test]
fn haproxy_terminating_tls_passes_on_only_a_verified_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let Some((binary, tool)) = tls_tools(dir) else {
        return;
    };
    let server = Server::start_with(
        "probe",
        &[
            "--proxy-protocol",
            "--metrics",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
    );
    let backends = [(server.addr(), server.metrics()); 3];
    let start = |name: &str, shipped: &str| {
        Haproxy::start_with(
            &binary,
            |frontend| haproxy::tls_config(shipped, frontend, &backends, dir),
            &dir.join(format!("{name}.cfg")),
            &dir.join(format!("{name}.log")),
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let proxy = start("haproxy", haproxy::TLS_SHIPPED);
    let id = |answer: Option<String>| {
        let answer = answer.unwrap_or_else(|| panic!("no answer; haproxy:\n{}", proxy.log()));
        answer.split(' ').next().unwrap().to_string()
    };

    // A certificate HAProxy verified: its CN is the subject.
    let device = id(whoami_over_tls(
        &tool,
        proxy.frontend(),
        dir,
        Some("device"),
    ));
    assert_eq!(
        connected_message(&server, &device),
        "connected, tls TLSv1.3 CN=device-42"
    );
    // None (`verify optional`): TLS, no subject.
    let anonymous = id(whoami_over_tls(&tool, proxy.frontend(), dir, None));
    assert_eq!(
        connected_message(&server, &anonymous),
        "connected, tls TLSv1.3"
    );
    // Another CA's: HAProxy 2.6 refuses it in the handshake, even with
    // `verify optional`, before connecting to hotsock, which never hears of
    // the client.
    assert_eq!(
        whoami_over_tls(&tool, proxy.frontend(), dir, Some("stranger")),
        None
    );
    let connected = server.log().matches("\"message\":\"connected").count();
    assert_eq!(connected, 2, "{}", server.log());

    // Told to let it in all the same, HAProxy says it did not verify it
    // (verify != 0): the CN is not taken as the client's subject.
    let lenient = haproxy::TLS_SHIPPED.replace(
        "verify optional",
        "verify optional ca-ignore-err all crt-ignore-err all",
    );
    let lenient = start("lenient", &lenient);
    let stranger = id(whoami_over_tls(
        &tool,
        lenient.frontend(),
        dir,
        Some("stranger"),
    ));
    assert_eq!(
        connected_message(&server, &stranger),
        "connected, tls TLSv1.3"
    );
}

#[test]
fn haproxy_passes_tls_through_to_hotsock_processes_that_terminate_it() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let Some((binary, tool)) = tls_tools(dir) else {
        return;
    };
    let file = |name: &str| dir.join(name).display().to_string();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
    let args = [
        "--proxy-protocol",
        "--metrics",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca,
        "--tls-client-auth",
        "optional",
        "--tls-alpn",
        "hotsock/1",
    ];
    let servers: Vec<Server> = (0..3).map(|_| Server::start_with("kit", &args)).collect();
    let backends: Vec<_> = servers.iter().map(|s| (s.addr(), s.metrics())).collect();
    let proxy = Haproxy::start_with(
        &binary,
        |frontend| {
            haproxy::tls_passthrough_config(haproxy::TLS_PASSTHROUGH_SHIPPED, frontend, &backends)
        },
        &dir.join("haproxy.cfg"),
        &dir.join("haproxy.log"),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let tls = |cert| ask_over_tls(&tool, proxy.frontend(), dir, cert, "tls\n");
    // hotsock did the handshake: the client's certificates reached it
    // whole (s_client sends its own and the CA it chains to, from -CAfile).
    let device =
        tls(Some("device")).unwrap_or_else(|| panic!("no answer; haproxy:\n{}", proxy.log()));
    assert!(device.starts_with("tls TLSv1.3 TLS13_"), "{device}");
    assert!(
        device.contains(" sni=localhost alpn=hotsock/1 certs=")
            && !device.contains(" certs=0 ")
            && device.ends_with(" subject=CN=device-42"),
        "{device}"
    );
    let anonymous = tls(None).expect("a client without a certificate is served");
    assert!(anonymous.ends_with(" certs=0 subject=-"), "{anonymous}");
    // Another CA's certificate: hotsock refuses it, HAProxy only passed it on.
    assert_eq!(tls(Some("stranger")), None);
    // Each came through HAProxy's PROXY v2 header.
    let through: usize = servers
        .iter()
        .map(|s| s.log().matches(" via 127.0.0.1:").count())
        .sum();
    assert!(
        through >= 2,
        "{}",
        servers.iter().map(|s| s.log()).collect::<String>()
    );
}

#[test]
fn a_proxy_listener_serves_only_trusted_sources_with_a_header() {
    let server = Server::start_with(
        "probe",
        &[
            "--proxy-protocol",
            "--proxy-from",
            "127.0.0.1/32",
            "--max-connections-per-ip",
            "1",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    // v1, as a balancer writes it, then the client's own bytes.
    let mut first = server.connect();
    first
        .write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 41000 50007\r\nwhoami\n")
        .unwrap();
    assert!(reply(&mut first).ends_with(" 192.0.2.1:41000"));
    // The per-address limit counts the client, not the balancer: the same
    // client again is refused, another one is served.
    let mut again = server.connect();
    again
        .write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 41001 50007\r\nwhoami\n")
        .unwrap();
    assert!(is_closed(&mut again));
    let mut other = server.connect();
    other
        .write_all(b"PROXY TCP4 192.0.2.2 127.0.0.1 41002 50007\r\nwhoami\n")
        .unwrap();
    assert!(reply(&mut other).ends_with(" 192.0.2.2:41002"));
    // One that connects and says nothing, to be timed out.
    let mut silent = server.connect();
    // A client that connects directly is closed at its first byte.
    let mut direct = server.connect();
    direct.write_all(b"whoami\n").unwrap();
    assert!(is_closed(&mut direct));
    server.wait_for_log(&["no PROXY header", "closing it"]);
    // So is one from a source not in --proxy-from, whatever it sends.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    socket.connect(&server.addr().into()).unwrap();
    let mut stranger: TcpStream = socket.into();
    stranger.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = stranger.write_all(b"PROXY TCP4 192.0.2.3 127.0.0.1 1 2\r\nwhoami\n");
    assert!(is_closed(&mut stranger));
    server.wait_for_log(&["127.0.0.2 may not send a PROXY header"]);
    // A source that sends nothing holds its slot for the header timeout only.
    let started = Instant::now();
    assert!(is_closed(&mut silent));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let refused = &server.status()["connections"]["refused_by"];
    assert_eq!(refused["per_ip"], 1, "{refused}");
    assert_eq!(refused["untrusted"], 1, "{refused}");
    assert_eq!(refused["proxy_header"], 2, "{refused}");
}

/// What the load generator saw.
#[derive(Default)]
struct Load {
    new_connections: AtomicU64,
    round_trips: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Load {
    fn fail(&self, what: String) {
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 20 {
            failures.push(what);
        }
    }
}

/// One round trip of a `ping N` line, against the probe or the echo handler.
fn ping(stream: &mut TcpStream, n: u64) -> Result<(), String> {
    let message = format!("ping {n}\n");
    stream
        .write_all(message.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut line = Vec::new();
    let mut byte = [0];
    while !line.ends_with(b"\n") {
        match stream.read(&mut byte) {
            Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&line))),
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&line);
    match line.contains(message.trim_end()) {
        true => Ok(()),
        false => Err(format!("answered {line:?} to {message:?}")),
    }
}

/// Clients through `frontend` until `stop`: `fresh` of them open a new
/// connection for every round trip, `steady` keep one open for 40 round
/// trips (about a second) before opening the next.
fn generate(
    frontend: SocketAddr,
    fresh: usize,
    steady: usize,
    stop: &Arc<AtomicBool>,
    load: &Arc<Load>,
) -> Vec<thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    for client in 0..fresh + steady {
        let (stop, load) = (Arc::clone(stop), Arc::clone(load));
        let trips_per_connection = if client < fresh { 1 } else { 40 };
        threads.push(thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut stream = match TcpStream::connect_timeout(&frontend, TIMEOUT) {
                    Ok(stream) => stream,
                    Err(e) => {
                        load.fail(format!("connect: {e}"));
                        continue;
                    }
                };
                stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                load.new_connections.fetch_add(1, Ordering::Relaxed);
                for _ in 0..trips_per_connection {
                    n += 1;
                    if let Err(e) = ping(&mut stream, n) {
                        load.fail(format!("client {client}, trip {n}: {e}"));
                        break;
                    }
                    load.round_trips.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(match trips_per_connection {
                        1 => 5,
                        _ => 25,
                    }));
                }
            }
        }));
    }
    threads
}

#[test]
fn a_rolling_swap_and_a_binary_upgrade_under_load_fail_no_connection() {
    let Some(haproxy) = system_tool("haproxy", "haproxy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let binary = installed_copy(dir.path());
    let servers = three(Some(&binary), "probe", dir.path());
    let proxy = start_haproxy(&haproxy, &servers, dir.path());
    let (stop, load) = (Arc::new(AtomicBool::new(false)), Arc::new(Load::default()));
    let clients = generate(proxy.frontend(), 4, 4, &stop, &load);
    thread::sleep(Duration::from_millis(500));

    // A rolling swap of the three to the echo handler, one at a time.
    let echo = wasm("guest_handler");
    let mut swap = hotsock();
    swap.arg("swap");
    for server in &servers {
        swap.arg("--admin").arg(server.admin_endpoint().to_string());
    }
    let swapped = swap
        .arg(&echo)
        .arg("--pause")
        .arg("300ms")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&swapped.stdout);
    assert!(
        swapped.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&swapped.stderr)
    );
    assert_eq!(said.matches("swapped: v1-").count(), 3, "{said}");
    thread::sleep(Duration::from_millis(500));

    // A binary upgrade of the second, under the same load.
    let upgraded = &servers[1];
    let old = upgraded.pid();
    upgraded.signal(libc::SIGUSR2);
    let new = taken_over_by(upgraded);
    let _reap = Reap(new);
    assert_ne!(new, old);
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    let failures = load.failures.lock().unwrap();
    let (connections, trips) = (
        load.new_connections.load(Ordering::Relaxed),
        load.round_trips.load(Ordering::Relaxed),
    );
    assert!(
        failures.is_empty(),
        "{} failure(s) in {connections} connections, {trips} round trips: {failures:#?}\nhaproxy:\n{}",
        failures.len(),
        proxy.log()
    );
    assert!(
        connections > 100 && trips > 300,
        "{connections} connections, {trips} trips"
    );
    eprintln!("through haproxy: {connections} connections, {trips} round trips, 0 failed");

    // The new process serves the swapped-in handler, from the same socket;
    // the old one drained and left.
    let status = upgraded.status();
    assert_eq!(status["pid"], new, "{status}");
    assert_eq!(
        status["versions"][0]["source"],
        std::path::absolute(&echo).unwrap().display().to_string(),
        "{status}"
    );
    let deadline = Instant::now() + TIMEOUT;
    while alive(old) {
        assert!(
            Instant::now() < deadline,
            "the old process {old} is still running"
        );
        thread::sleep(Duration::from_millis(50));
    }
    upgraded.wait_for_log(&["all connections finished"]);
    assert!(upgraded.admin_endpoint().to_string().ends_with(".sock"));
    assert!(
        Path::new(&upgraded.admin_endpoint().to_string()).exists(),
        "the admin socket's file must outlive the old process"
    );
    let mut direct = TcpStream::connect_timeout(&upgraded.addr(), TIMEOUT).unwrap();
    direct.set_read_timeout(Some(TIMEOUT)).unwrap();
    direct
        .write_all(b"PROXY TCP4 192.0.2.5 127.0.0.1 5 6\r\nhello\n")
        .unwrap();
    let echoed = reply(&mut direct);
    assert!(echoed.starts_with("Echo=>hello at "), "{echoed}");
}

#[test]
fn a_failed_upgrade_leaves_the_old_process_serving() {
    let dir = tempfile::tempdir().unwrap();
    let binary = installed_copy(dir.path());
    let admin = dir.path().join("admin.sock");
    let server = Server::start_binary(
        &binary,
        &wasm("probe"),
        &["--admin", admin.to_str().unwrap()],
    );
    let mut open = server.connect();
    assert_eq!(ask(&mut open, "hello\n"), "hello");

    // The file on disk is not a hotsock that can start.
    std::fs::remove_file(&binary).unwrap();
    std::fs::write(&binary, "#!/bin/sh\necho 'broken build' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    server.signal(libc::SIGUSR2);
    server.wait_for_log(&["upgrade failed", "exit status: 3", "keeps serving"]);
    assert_eq!(ask(&mut open, "still here\n"), "still here");
    assert_eq!(ask(&mut server.connect(), "new\n"), "new");
    assert_eq!(pid_of(&server), server.pid());

    // A working binary again: the upgrade goes through.
    std::fs::remove_file(&binary).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_hotsock"), &binary).unwrap();
    server.signal(libc::SIGUSR2);
    let new = taken_over_by(&server);
    let _reap = Reap(new);
    // The open connection finishes on the old process; new ones go to the new.
    assert_eq!(ask(&mut open, "on the old one\n"), "on the old one");
    assert_eq!(pid_of(&server), new);
    assert_eq!(ask(&mut server.connect(), "new\n"), "new");
    drop(open);
    server.wait_for_log(&["all connections finished"]);
}

#[test]
fn two_processes_share_a_port_with_reuse_port() {
    let first = Server::start_with("probe", &["--reuse-port", "--admin", "127.0.0.1:0"]);
    let addr = first.addr().to_string();
    let second = Server::start_with(
        "probe",
        &["--reuse-port", "--addr", &addr, "--admin", "127.0.0.1:0"],
    );
    assert_eq!(second.addr(), first.addr());
    // Connections from many source ports spread over both.
    for i in 0..64 {
        assert_eq!(
            ask(&mut connect(first.addr()), &format!("{i}\n")),
            i.to_string()
        );
    }
    let accepted = |server: &Server| server.status()["connections"]["accepted"].as_u64().unwrap();
    let (a, b) = (accepted(&first), accepted(&second));
    assert_eq!(a + b, 64);
    assert!(a > 0 && b > 0, "{a} and {b}");

    // Without the option, the port is taken, and the error says why.
    let output = hotsock()
        .args(["serve", "--addr", &addr])
        .arg(wasm("probe"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("Address already in use"), "{stderr}");
}

#[test]
fn systemd_socket_activation_and_notifications() {
    let Some(activate) = system_tool("systemd-socket-activate", "systemd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notifications = UnixDatagram::bind(&notify_path).unwrap();
    notifications.set_read_timeout(Some(TIMEOUT)).unwrap();
    let addr: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()).into();
    // systemd-socket-activate binds the port and starts hotsock on the
    // first connection, with the socket as descriptor 3 (LISTEN_FDS=1).
    let env = [
        format!("NOTIFY_SOCKET={}", notify_path.display()),
        "RUST_LOG=info".to_string(),
    ];
    let probe = wasm("probe");
    let args = ["--addr".as_ref(), "127.0.0.1:1".as_ref(), probe.as_os_str()];
    let mut child = activated(&activate, addr, "hotsock.socket", &env, &args);
    let pid = child.id();
    let _reap = Reap(pid);
    // Clients wait in the backlog while hotsock starts.
    let mut client = connect(addr);
    assert_eq!(ask(&mut client, "whoami\n").split(' ').count(), 2);
    let mut said = [0; 256];
    let n = notifications.recv(&mut said).expect("READY=1");
    assert_eq!(&said[..n], b"READY=1");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim_end(),
        format!("listening on {addr}"),
        "not --addr: the socket given"
    );

    // SIGTERM: STOPPING=1, then a drain, as always.
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let n = notifications.recv(&mut said).expect("STOPPING=1");
    assert_eq!(&said[..n], b"STOPPING=1");
    drop(client);
    let status = child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("1 socket(s) from socket activation"), "{log}");
}

#[test]
fn sockets_passed_in_must_match_a_listener() {
    let Some(activate) = system_tool("systemd-socket-activate", "systemd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("two.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"a\"\naddr = \"127.0.0.1:0\"\nhandler = \"{0}\"\n\
             [[listener]]\nname = \"b\"\naddr = \"127.0.0.1:0\"\nhandler = \"{0}\"\n",
            wasm("probe").display()
        ),
    )
    .unwrap();
    let addr: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()).into();
    let args = ["--config".as_ref(), config.as_os_str()];
    let mut child = activated(&activate, addr, "web", &[], &args);
    let _reap = Reap(child.id());
    let _client = TcpStream::connect(addr).unwrap();
    let status = child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(!status.success());
    assert!(
        log.contains("named \"web\", which matches no listener (there are: a, b"),
        "{log}"
    );
}

#[test]
fn the_deploy_files_are_valid() {
    let deploy = repo_root().join("deploy");
    if let Some(haproxy) = system_tool("haproxy", "haproxy") {
        let checked = Command::new(&haproxy)
            .arg("-c")
            .arg("-f")
            .arg(deploy.join("haproxy.cfg"))
            .output()
            .unwrap();
        assert!(
            checked.status.success(),
            "{}",
            String::from_utf8_lossy(&checked.stderr)
        );
        // The TLS one needs its certificates: made here, as in
        // haproxy_terminating_tls_passes_on_only_a_verified_client_certificate.
        if let Some(tool) = system_tool("openssl", "openssl") {
            let dir = tempfile::tempdir().unwrap();
            certificates(&tool, dir.path());
            let shipped = std::fs::read_to_string(deploy.join("haproxy-tls.cfg")).unwrap();
            let config = shipped.replace(haproxy::TLS_DIR, &format!("{}/", dir.path().display()));
            let file = dir.path().join("haproxy-tls.cfg");
            std::fs::write(&file, config).unwrap();
            let checked = Command::new(&haproxy)
                .arg("-c")
                .arg("-f")
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                checked.status.success(),
                "{}",
                String::from_utf8_lossy(&checked.stderr)
            );
        }
    }
    if let Some(analyze) = system_tool("systemd-analyze", "systemd") {
        // Verified as installed, with ExecStart= pointing at this build.
        let dir = tempfile::tempdir().unwrap();
        let service = std::fs::read_to_string(deploy.join("hotsock.service")).unwrap();
        std::fs::write(
            dir.path().join("hotsock.service"),
            service.replace("/usr/local/bin/hotsock", env!("CARGO_BIN_EXE_hotsock")),
        )
        .unwrap();
        std::fs::copy(
            deploy.join("hotsock.socket"),
            dir.path().join("hotsock.socket"),
        )
        .unwrap();
        let verified = Command::new(analyze)
            .arg("verify")
            .arg(dir.path().join("hotsock.socket"))
            .arg(dir.path().join("hotsock.service"))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&verified.stderr);
        assert!(
            verified.status.success() && said.trim().is_empty(),
            "{said}"
        );
    }
    // The Kubernetes manifest, on paper: it parses, and has the parts
    // docs/scaling.md describes.
    let python = repo_root().join(".venv/bin/python");
    let parsed = Command::new(python)
        .arg("-c")
        .arg("import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))")
        .arg(deploy.join("kubernetes.yaml"))
        .output()
        .expect("run `make test`, which installs PyYAML into .venv");
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let documents: Vec<Value> = serde_json::from_slice(&parsed.stdout).unwrap();
    let kinds: Vec<&str> = documents
        .iter()
        .filter_map(|d| d["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "StatefulSet",
            "Service",
            "NetworkPolicy"
        ]
    );
    let container = &documents[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["lifecycle"]["preStop"].is_object());
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--watch") && args.contains(&"/handlers/handler.wasm"));
    // One fleet through the Redis of the same file, which keeps what it
    // acknowledged and every key.
    for store in ["--rooms-store", "--keyvalue-store"] {
        let at = args.iter().position(|a| *a == store).unwrap();
        assert_eq!(args[at + 1], "redis://redis:6379");
    }
    assert_eq!(documents[4]["metadata"]["name"], "redis");
    let redis = documents[3]["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        redis.contains(r#""--appendonly","yes""#)
            && redis.contains(r#""--maxmemory-policy","noeviction""#),
        "{redis}"
    );
    // Every option the manifest passes is one `hotsock serve` has.
    let help = hotsock().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for option in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(option), "serve has no {option}");
    }
}

#[test]
fn watch_sees_a_kubernetes_volume_update() {
    // A ConfigMap volume: handler.wasm -> ..data/handler.wasm, and ..data
    // -> a timestamped directory, swapped by a rename.
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path();
    let publish = |stamp: &str, guest: &str| {
        let version = volume.join(stamp);
        std::fs::create_dir(&version).unwrap();
        std::fs::copy(wasm(guest), version.join("handler.wasm")).unwrap();
        let tmp = volume.join("..data_tmp");
        std::os::unix::fs::symlink(stamp, &tmp).unwrap();
        std::fs::rename(&tmp, volume.join("..data")).unwrap();
    };
    publish("..2026_11_23_01", "probe");
    std::os::unix::fs::symlink("..data/handler.wasm", volume.join("handler.wasm")).unwrap();
    let server = Server::start_path(&volume.join("handler.wasm"), &["--watch"]);
    assert_eq!(ask(&mut server.connect(), "hi\n"), "hi");
    publish("..2026_11_23_02", "guest_handler");
    server.wait_for_log(&["swapped handler v1-"]);
    let mut client = server.connect();
    client.write_all(b"hi\n").unwrap();
    assert!(reply(&mut client).starts_with("Echo=>hi at "));
}

#[test]
fn a_rolling_swap_stops_at_the_first_server_that_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers: Vec<Option<Server>> = (1..=3)
        .map(|n| {
            let admin = dir.path().join(format!("admin{n}.sock"));
            Some(Server::start_with(
                "probe",
                &["--admin", admin.to_str().unwrap()],
            ))
        })
        .collect();
    let admins: Vec<String> = servers
        .iter()
        .flatten()
        .map(|s| s.admin_endpoint().to_string())
        .collect();
    let swap = |handler: &Path| {
        let mut command = hotsock();
        command.arg("swap");
        for admin in &admins {
            command.arg("--admin").arg(admin);
        }
        command.arg(handler).output().unwrap()
    };
    let current = |server: &Server| server.status()["current"].as_str().unwrap().to_string();

    // Rejected by the first: nobody is touched.
    let rejected = swap(&wasm("not-a-handler"));
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(!rejected.status.success());
    assert!(
        stderr.contains(&format!(
            "stopped at {}: already done: none; not touched: {}, {}",
            admins[0], admins[1], admins[2]
        )),
        "{stderr}"
    );
    // The second is down: the first is swapped, the third left alone.
    servers[1] = None;
    let partial = swap(&wasm("guest_handler"));
    let stderr = String::from_utf8_lossy(&partial.stderr);
    assert!(!partial.status.success());
    assert!(
        stderr.contains(&format!(
            "stopped at {}: already done: {}; not touched: {}",
            admins[1], admins[0], admins[2]
        )) && stderr.contains("cannot reach the admin API"),
        "{stderr}"
    );
    let (first, third) = (servers[0].as_ref().unwrap(), servers[2].as_ref().unwrap());
    assert!(current(first).starts_with("v2-"));
    assert!(current(third).starts_with("v1-"));
}

#[test]
fn each_listener_of_a_config_chooses_the_proxy_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hotsock.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"behind\"\naddr = \"127.0.0.1:0\"\nhandler = \"{0}\"\n\
             proxy-protocol = true\nproxy-from = [\"127.0.0.0/8\"]\n\
             [[listener]]\nname = \"direct\"\naddr = \"127.0.0.1:0\"\nhandler = \"{0}\"\n",
            wasm("probe").display()
        ),
    )
    .unwrap();
    let server = Server::start_config(&config, 2, &[]);
    let mut behind = connect(server.listener("behind"));
    behind
        .write_all(b"PROXY TCP6 2001:db8::7 ::1 7000 50007\r\nwhoami\n")
        .unwrap();
    assert!(reply(&mut behind).ends_with(" [2001:db8::7]:7000"));
    let mut direct = connect(server.listener("direct"));
    let me = direct.local_addr().unwrap();
    assert!(ask(&mut direct, "whoami\n").ends_with(&format!(" {me}")));
}

#[test]
fn proxy_options_are_checked_on_the_command_line() {
    let probe = wasm("probe");
    let output = hotsock()
        .args(["serve", "--proxy-from", "10.0.0.0/8"])
        .arg(&probe)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--proxy-protocol"), "{stderr}");
    let output = hotsock()
        .args(["serve", "--proxy-protocol", "--proxy-from", "10.1.2.3/8"])
        .arg(&probe)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("did you mean 10.0.0.0/8?"), "{stderr}");
}

#[test]
fn a_binary_upgrade_keeps_every_key_value_bucket() {
    // The default store is a file in --state-dir, which the new process
    // opens too: a counter goes on from where it was.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let server = Server::start_with("kit", &["--keyvalue", "visits", "--state-dir", state]);
    let mut client = server.connect();
    assert_eq!(ask(&mut client, "incr visits n\n"), "value 1");
    assert_eq!(ask(&mut client, "incr visits n\n"), "value 2");
    drop(client);
    let old = server.pid();
    server.signal(libc::SIGUSR2);
    let new = taken_over_by(&server);
    let _reap = Reap(new);
    assert_ne!(new, old);
    // The old process stopped accepting: this one is the new one's.
    let mut client = server.connect();
    assert_eq!(ask(&mut client, "incr visits n\n"), "value 3");
}
