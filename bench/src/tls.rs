//! The TLS scenario: what native TLS on a listener costs, against the same
//! hotsock in plaintext and against HAProxy terminating TLS in front of
//! plaintext hotsock (the anchor: what operators ran before issue 23).
//!
//! Three set-ups ([`Setup`]), each one hotsock process serving the echo
//! handler as the main bench runs it:
//!
//! - `plaintext`: no TLS, the baseline;
//! - `native`: `--tls-cert`/`--tls-key`, hotsock's own TLS (rustls, ring);
//! - `haproxy`: HAProxy in TCP mode with `bind ... ssl crt` in front of a
//!   hotsock with `--proxy-protocol`, its server line as in
//!   deploy/haproxy-tls.cfg (`send-proxy-v2-ssl-cn`, `proxy-v2-options
//!   ssl-cipher,authority`), without the health checks of a fleet.
//!
//! Two scenarios: new connections from [`NEW_CONNECTION_CLIENTS`] clients
//! (connect, a full handshake, one echo round trip, close), and echo round
//! trips over [`PERSISTENT_CLIENTS`] persistent connections. The client is
//! rustls with the ring provider, as hotsock's server side, with session
//! resumption off, so that every new connection is a full handshake (each
//! is checked to be one). The certificates are made afresh for each run:
//! a CA of the bench's own and a server certificate it issued, both ECDSA
//! P-256.
//!
//! Each round starts the three afresh and measures them back to back,
//! scenario by scenario, in an order that rotates from round to round, as
//! the main bench does: the shared machine drifts, and a ratio within a
//! round compares set-ups under the same conditions. CPU per operation is
//! that of every serving process: hotsock's, and HAProxy's.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, NamedGroup, RootCertStore, StreamOwned,
};
use serde::Serialize;
use testkit::haproxy::{self, Haproxy};
use testkit::{Launch, ServerProcess, Stderr};

use crate::cpu::CpuMeter;
use crate::load::{self, SetupRound, Throughput};
use crate::report::{self, median};
use crate::servers::{self, Programs};

/// Rounds of `--tls` alone unless `--rounds` is given, and the most the
/// full bench runs: each starts three hotsock processes and HAProxy, and
/// five paired ratios already give a steady median.
pub const DEFAULT_ROUNDS: usize = 5;

/// Persistent connections in the round-trip scenario: as in the fleet
/// bench, enough to keep both cores busy.
pub const PERSISTENT_CLIENTS: usize = 10;

/// Client threads in the new-connection scenario, as in the main bench.
pub const NEW_CONNECTION_CLIENTS: usize = crate::NEW_CONNECTION_CLIENTS;

/// The name the client asks for (SNI) and checks the certificate against.
const SERVER_NAME: &str = "localhost";

/// How long the server certificate is valid from now: a usual lifetime,
/// well past the 14 days under which hotsock warns that it expires soon.
const CERTIFICATE_DAYS: i64 = 90;

/// Round trips in a row through a set-up before it counts as ready.
const READY_ECHOES: usize = 3;

/// Longest a set-up may take to answer those round trips.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Most calls into rustls one handshake may take: a TLS 1.3 handshake
/// needs two or three; this bounds the loop whatever the server does.
const MAX_HANDSHAKE_STEPS: usize = 32;

/// How hotsock is reached: in plaintext, by its own TLS, or through HAProxy
/// terminating TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    /// hotsock without TLS: the baseline.
    Plaintext,
    /// hotsock with `--tls-cert` and `--tls-key`.
    Native,
    /// HAProxy terminating TLS in front of plaintext hotsock: the anchor.
    Haproxy,
}

impl Setup {
    /// All three, in the order of the first round and of the table.
    pub const ALL: [Setup; 3] = [Setup::Plaintext, Setup::Native, Setup::Haproxy];

    /// The name in the JSON and the log file names.
    pub fn name(self) -> &'static str {
        match self {
            Setup::Plaintext => "plaintext",
            Setup::Native => "native",
            Setup::Haproxy => "haproxy",
        }
    }

    /// The table's column heading.
    fn heading(self) -> &'static str {
        match self {
            Setup::Plaintext => "plaintext",
            Setup::Native => "native TLS",
            Setup::Haproxy => "HAProxy TLS",
        }
    }

    /// Whether clients speak TLS to it.
    fn tls(self) -> bool {
        self != Setup::Plaintext
    }
}

/// One round: every set-up, started afresh, each through both scenarios.
pub type Round = load::Round<Setup>;

/// One row of the summary: a metric for each set-up, medians over rounds,
/// and the two ratios that matter, each the median of the rounds' ratios.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Stable name, for the JSON.
    pub key: String,
    /// What the table calls it.
    pub metric: String,
    /// Unit, for the JSON.
    pub unit: &'static str,
    /// hotsock in plaintext.
    pub plaintext: Option<f64>,
    /// hotsock's own TLS.
    pub native: Option<f64>,
    /// HAProxy terminating TLS in front of hotsock.
    pub haproxy: Option<f64>,
    /// native / plaintext.
    pub native_over_plaintext: Option<f64>,
    /// native / HAProxy.
    pub native_over_haproxy: Option<f64>,
    /// Decimals to print.
    #[serde(skip)]
    decimals: usize,
}

/// What the scenario found: the set-up, every round, the summary.
#[derive(Debug, Serialize)]
pub struct Tls {
    /// Persistent connections in the round-trip scenario.
    pub persistent_clients: usize,
    /// Client threads in the new-connection scenario.
    pub new_connection_clients: usize,
    /// Measured time of each run, after [`load::WARMUP`], seconds.
    pub duration_s: f64,
    /// The certificates served.
    pub certificate: String,
    /// What a client and each TLS set-up agreed on: version, cipher suite,
    /// key exchange group.
    pub negotiated: BTreeMap<Setup, String>,
    /// `HAProxy version ...`, if HAProxy ran.
    pub haproxy_version: Option<String>,
    /// HAProxy's configuration as run (its ports those of the first round).
    pub haproxy_config: Option<String>,
    /// The command lines of the first round, by set-up.
    pub commands: BTreeMap<Setup, Vec<String>>,
    /// Each round's runs.
    pub rounds: Vec<Round>,
    /// Medians over rounds.
    pub summary: Vec<Row>,
    /// What a reader must know to read the numbers right.
    pub notes: Vec<String>,
}

/// The log files the scenario writes, in the logs directory.
pub fn log_names() -> [&'static str; 4] {
    [
        "tls-plaintext.stderr",
        "tls-native.stderr",
        "tls-haproxy-hotsock.stderr",
        "tls-haproxy.stderr",
    ]
}

/// Runs the scenario: `rounds` rounds of every set-up available, each run
/// `duration` long after the warm-up; logs go to `out/logs`.
pub fn run(programs: &Programs, rounds: usize, duration: Duration, out: &Path) -> Result<Tls> {
    programs.check_hotsock()?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    for name in log_names() {
        let path = logs.join(name);
        File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    }
    let mut notes = Vec::new();
    let haproxy = match haproxy::find() {
        Ok(binary) => Some(binary),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            return Err(e.context("under CI the TLS bench needs HAProxy"));
        }
        Err(e) => {
            eprintln!("SKIPPED: {e:#}; the HAProxy TLS column is left out");
            notes.push(
                "HAProxy is not installed: its column, and native / HAProxy, are left out".into(),
            );
            None
        }
    };
    let scratch = Scratch::create()?;
    let certificates = Certificates::make(scratch.path())?;
    let client = Client::new(&certificates)?;
    let context = Context {
        programs,
        haproxy: haproxy.as_deref(),
        scratch: &scratch,
        logs: &logs,
        certificates: &certificates,
        client: &client,
    };
    let setups: Vec<Setup> = Setup::ALL
        .into_iter()
        .filter(|&s| s != Setup::Haproxy || haproxy.is_some())
        .collect();
    let mut measured = Vec::new();
    let mut commands = BTreeMap::new();
    let mut negotiated = BTreeMap::new();
    let mut haproxy_config = None;
    for index in 0..rounds {
        let order: Vec<Setup> = (0..setups.len())
            .map(|i| setups[(i + index) % setups.len()])
            .collect();
        eprintln!(
            "TLS round {}/{rounds}: {}",
            index + 1,
            order
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut running = order
            .iter()
            .map(|&setup| Running::start(setup, &context))
            .collect::<Result<Vec<_>>>()?;
        if index == 0 {
            for serving in &running {
                commands.insert(serving.setup, serving.commands.clone());
                if let Some(text) = &serving.negotiated {
                    negotiated.insert(serving.setup, text.clone());
                }
                if let Some(haproxy) = &serving.haproxy {
                    haproxy_config = std::fs::read_to_string(haproxy.config()).ok();
                }
            }
        }
        let mut results: BTreeMap<Setup, SetupRound> =
            order.iter().map(|&s| (s, SetupRound::default())).collect();
        for serving in &running {
            let run = serving.measure(|| serving.round_trips(duration))?;
            progress(
                &format!("round trips, {PERSISTENT_CLIENTS} conns"),
                serving.setup,
                &run,
            );
            results.entry(serving.setup).or_default().round_trips = Some(run);
        }
        for serving in &running {
            let run = serving.measure(|| serving.new_connections(duration))?;
            progress("new connections", serving.setup, &run);
            results.entry(serving.setup).or_default().new_connections = Some(run);
        }
        for serving in &mut running {
            serving.check_alive()?;
        }
        measured.push(Round {
            round: index + 1,
            order,
            setups: results,
        });
    }
    let summary = summarise(&measured);
    notes.extend(summary_notes(&summary, &measured));
    Ok(Tls {
        persistent_clients: PERSISTENT_CLIENTS,
        new_connection_clients: NEW_CONNECTION_CLIENTS,
        duration_s: duration.as_secs_f64(),
        certificate: format!(
            "ECDSA P-256, SHA-256 signatures: a server certificate for {SERVER_NAME} and 127.0.0.1 issued by a CA of the bench's own (both made at start with rcgen), the leaf alone served"
        ),
        negotiated,
        haproxy_version: haproxy.as_deref().map(haproxy::version),
        haproxy_config,
        commands,
        rounds: measured,
        summary,
        notes,
    })
}

/// A rough time for the scenario, seconds: two runs per set-up and round,
/// and starting the set-ups.
pub fn estimate_seconds(rounds: usize, duration: Duration) -> f64 {
    let runs = 2.0 * Setup::ALL.len() as f64;
    (runs * (duration + load::WARMUP).as_secs_f64() + 3.0) * rounds as f64
}

/// What starting a set-up needs, made once per run.
struct Context<'a> {
    programs: &'a Programs,
    haproxy: Option<&'a Path>,
    scratch: &'a Scratch,
    logs: &'a Path,
    certificates: &'a Certificates,
    client: &'a Client,
}

/// The bench's own CA and the server certificate it issued, written as PEM
/// files in a private directory: `server.crt` and `server.key` for hotsock,
/// `haproxy.pem` (both in one file) for HAProxy.
struct Certificates {
    /// The CA's certificate, which the client trusts.
    ca: rustls::pki_types::CertificateDer<'static>,
    cert: PathBuf,
    key: PathBuf,
    haproxy: PathBuf,
}

impl Certificates {
    /// Makes the CA and the server certificate in `dir`.
    fn make(dir: &Path) -> Result<Certificates> {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "hotsock-bench CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![SERVER_NAME.into(), "127.0.0.1".into()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(CERTIFICATE_DAYS);
        let cert = params.signed_by(&key, &issuer)?;

        let certificates = Certificates {
            ca: ca.der().clone(),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            haproxy: dir.join("haproxy.pem"),
        };
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
        };
        write(&certificates.cert, cert.pem())?;
        write(&certificates.key, key.serialize_pem())?;
        write(&certificates.haproxy, cert.pem() + &key.serialize_pem())?;
        Ok(certificates)
    }
}

/// The load generator's TLS client: rustls with hotsock's own provider
/// (ring), TLS 1.3 and 1.2 as rustls offers them by default, X25519 first,
/// trusting the bench's CA alone, with session resumption off.
#[derive(Clone)]
struct Client {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

/// A client's TLS session over its socket.
type TlsStream = StreamOwned<ClientConnection, TcpStream>;

impl Client {
    fn new(certificates: &Certificates) -> Result<Client> {
        let mut roots = RootCertStore::empty();
        roots
            .add(certificates.ca.clone())
            .context("the bench's CA certificate is refused by rustls")?;
        let mut provider = hotsock::server::tls_provider();
        // X25519 first, as OpenSSL, browsers, Go and Python offer it: the
        // ring provider lists secp384r1 first, and a client sends a key
        // share for its first group only, so hotsock's own order would make
        // every handshake here a P-384 one, slower on both sides.
        provider
            .kx_groups
            .sort_by_key(|group| group.name() != NamedGroup::X25519);
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .context("rustls's default protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every new connection a full handshake: no tickets or session ids
        // kept, none offered.
        config.resumption = Resumption::disabled();
        Ok(Client {
            config: Arc::new(config),
            name: ServerName::try_from(SERVER_NAME)?,
        })
    }

    /// Connects to `addr` (as [`load::connect`]) and completes the
    /// handshake.
    fn connect(&self, addr: SocketAddr) -> io::Result<TlsStream> {
        let mut socket = load::connect(addr)?;
        let mut session = ClientConnection::new(Arc::clone(&self.config), self.name.clone())
            .map_err(io::Error::other)?;
        let mut steps = 0;
        while session.is_handshaking() {
            steps += 1;
            if steps > MAX_HANDSHAKE_STEPS {
                return Err(io::Error::other(format!(
                    "no handshake after {MAX_HANDSHAKE_STEPS} steps"
                )));
            }
            session.complete_io(&mut socket)?;
        }
        Ok(StreamOwned::new(session, socket))
    }

    /// A new TLS connection's whole life: connect, a full handshake (checked
    /// to be one), one round trip, `close_notify`, then the abortive close
    /// of [`load::connect_once`], for the same reason.
    fn connect_once(&self, addr: SocketAddr) -> io::Result<()> {
        let mut stream = self.connect(addr)?;
        if stream.conn.handshake_kind() != Some(HandshakeKind::Full) {
            return Err(io::Error::other(format!(
                "a {:?} handshake, not a full one",
                stream.conn.handshake_kind()
            )));
        }
        load::round_trip(&mut stream)?;
        stream.conn.send_close_notify();
        flush(&mut stream)?;
        load::reset_on_close(&stream.sock)
    }
}

/// Writes what the session has to send (a `close_notify`, say) without
/// reading anything.
fn flush(stream: &mut TlsStream) -> io::Result<()> {
    while stream.conn.wants_write() {
        if stream.conn.write_tls(&mut stream.sock)? == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
    }
    Ok(())
}

/// What a client and a server agreed on, as `TLSv1_3 TLS13_AES_256_GCM_SHA384
/// X25519`.
fn negotiated(stream: &TlsStream) -> String {
    let conn = &stream.conn;
    let text = |v: Option<String>| v.unwrap_or_else(|| "?".into());
    format!(
        "{} {} {}",
        text(conn.protocol_version().map(|v| format!("{v:?}"))),
        text(
            conn.negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
        ),
        text(
            conn.negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
        )
    )
}

/// One set-up, running: where clients connect, and every process serving
/// them. Dropping it kills them all and waits for them.
struct Running {
    setup: Setup,
    /// Where clients connect: hotsock, or HAProxy's frontend.
    addr: SocketAddr,
    /// HAProxy, for the `haproxy` set-up; declared first, so dropped first.
    haproxy: Option<Haproxy>,
    hotsock: ServerProcess,
    /// The command lines started, as they would be typed.
    commands: Vec<String>,
    /// What a TLS client and the set-up agreed on.
    negotiated: Option<String>,
    client: Client,
}

impl Running {
    fn start(setup: Setup, context: &Context) -> Result<Running> {
        let certificates = context.certificates;
        let extra: Vec<&Path> = match setup {
            Setup::Plaintext => vec![],
            Setup::Native => vec![
                Path::new("--tls-cert"),
                &certificates.cert,
                Path::new("--tls-key"),
                &certificates.key,
            ],
            Setup::Haproxy => vec![Path::new("--proxy-protocol")],
        };
        let label = match setup {
            Setup::Haproxy => "haproxy-hotsock",
            other => other.name(),
        };
        let admin = context.scratch.path().join(format!("{label}.sock"));
        let mut command = context.programs.hotsock_command("127.0.0.1:0", &admin);
        command.args(extra);
        let mut commands = vec![servers::command_line(&command)];
        let hotsock = Launch::new(command)
            .name(format!("hotsock ({})", setup.name()))
            .admin(true)
            .stderr(Stderr::Append(
                context.logs.join(format!("tls-{label}.stderr")),
            ))
            .timeout(servers::STARTUP_TIMEOUT)
            // As the main bench's servers: gone with the bench, even one
            // killed outright. Started from the main thread, which outlives them.
            .die_with_parent(true)
            .start()?;
        let Some(&backend) = hotsock.addrs().first() else {
            bail!("hotsock ({}) announced no address", setup.name());
        };
        let mut running = Running {
            setup,
            addr: backend,
            haproxy: None,
            hotsock,
            commands: Vec::new(),
            negotiated: None,
            client: context.client.clone(),
        };
        if setup == Setup::Haproxy {
            let binary = context
                .haproxy
                .context("the haproxy set-up needs HAProxy")?;
            let config = context.scratch.path().join("haproxy.cfg");
            let haproxy = Haproxy::start_with(
                binary,
                |frontend| Ok(haproxy_config(frontend, backend, &certificates.haproxy)),
                &config,
                &context.logs.join("tls-haproxy.stderr"),
            )?;
            commands.push(servers::command_line(&haproxy::command(binary, &config)));
            running.addr = haproxy.frontend();
            running.haproxy = Some(haproxy);
        }
        running.commands = commands;
        running.negotiated = running.wait_ready()?;
        Ok(running)
    }

    /// Waits until [`READY_ECHOES`] round trips in a row have been answered
    /// (through HAProxy, for that set-up: it is listening and forwarding);
    /// returns what TLS agreed on, for a TLS set-up.
    fn wait_ready(&mut self) -> Result<Option<String>> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut answered = 0;
        let mut agreed = None;
        while answered < READY_ECHOES {
            self.check_alive()?;
            let echo = match self.setup.tls() {
                true => self.client.connect(self.addr).and_then(|mut stream| {
                    load::round_trip(&mut stream)?;
                    Ok(Some(negotiated(&stream)))
                }),
                false => load::connect(self.addr)
                    .and_then(|mut stream| load::round_trip(&mut stream))
                    .map(|()| None),
            };
            match echo {
                Ok(text) => {
                    answered += 1;
                    agreed = text;
                }
                Err(e) => {
                    answered = 0;
                    ensure!(
                        Instant::now() < deadline,
                        "{} on {}: no echo within {READY_TIMEOUT:?}: {e}; its processes' stderr is in the logs directory (tls-*.stderr)",
                        self.setup.name(),
                        self.addr
                    );
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(agreed)
    }

    /// Every process serving: hotsock, and HAProxy.
    fn pids(&self) -> Vec<u32> {
        std::iter::once(self.hotsock.pid())
            .chain(self.haproxy.iter().map(Haproxy::pid))
            .collect()
    }

    /// Runs `scenario`, with the CPU of every process serving.
    fn measure(&self, scenario: impl FnOnce() -> Result<Throughput>) -> Result<Throughput> {
        let meter = CpuMeter::start_all(&self.pids());
        let run = scenario()?;
        Ok(run.with_cpu(meter.finish()))
    }

    /// Round trips over [`PERSISTENT_CLIENTS`] connections, TLS or not.
    fn round_trips(&self, duration: Duration) -> Result<Throughput> {
        let addr = self.addr;
        if !self.setup.tls() {
            return load::persistent(addr, PERSISTENT_CLIENTS, duration);
        }
        let client = self.client.clone();
        load::persistent_over(
            PERSISTENT_CLIENTS,
            duration,
            move || client.connect(addr),
            load::round_trip,
        )
    }

    /// New connections from [`NEW_CONNECTION_CLIENTS`] clients, TLS or not.
    fn new_connections(&self, duration: Duration) -> Result<Throughput> {
        let addr = self.addr;
        if !self.setup.tls() {
            return load::new_connections(addr, NEW_CONNECTION_CLIENTS, duration);
        }
        let client = self.client.clone();
        load::new_connections_with(NEW_CONNECTION_CLIENTS, duration, move || {
            client.connect_once(addr)
        })
    }

    /// Fails if a process has exited: the numbers would mean nothing.
    fn check_alive(&mut self) -> Result<()> {
        self.hotsock.check_alive()?;
        if let Some(haproxy) = &mut self.haproxy {
            haproxy.check_alive()?;
        }
        Ok(())
    }
}

/// HAProxy terminating TLS on `frontend` with the certificate and key in
/// `pem`, passing connections to the one hotsock at `backend` with a PROXY
/// v2 header, as deploy/haproxy-tls.cfg does for a fleet.
fn haproxy_config(frontend: SocketAddr, backend: SocketAddr, pem: &Path) -> String {
    format!(
        "\
# hotsock-bench's TLS scenario: HAProxy terminating TLS in front of one
# plaintext hotsock (--proxy-protocol), its server line as in
# deploy/haproxy-tls.cfg, without health checks (one server, always up).
global
    log stderr format short local0 notice

defaults
    mode tcp
    log global
    option dontlognull
    timeout connect 2s
    timeout client 1m
    timeout server 1m

frontend hotsock_tls
    bind {frontend} ssl crt {pem}
    default_backend hotsock

backend hotsock
    server hotsock1 {backend} send-proxy-v2-ssl-cn proxy-v2-options ssl-cipher,authority
",
        pem = pem.display()
    )
}

/// One run's result on stderr, as it comes.
fn progress(scenario: &str, setup: Setup, run: &Throughput) {
    crate::progress(&format!("TLS: {scenario}"), setup.heading(), run);
}

/// The CPU the bench's own clients used per operation, microseconds: the
/// TLS client's handshakes cost as much as the server's, on the same cores.
fn client_cpu_us_per_op(run: &Throughput) -> Option<f64> {
    let cpu = run.cpu?;
    (run.completed_total > 0).then(|| cpu.bench_s * 1e6 / run.completed_total as f64)
}

/// The summary rows: medians over `rounds`, and each ratio the median of
/// the rounds' ratios.
fn summarise(rounds: &[Round]) -> Vec<Row> {
    type Metric<'a> = &'a dyn Fn(&SetupRound) -> Option<f64>;
    let row = |key: &str, metric: &str, unit, decimals, f: Metric| {
        let of = |setup: Setup| {
            median(
                rounds
                    .iter()
                    .filter_map(|r| r.setups.get(&setup).and_then(f)),
            )
        };
        let over = |a: Setup, b: Setup| {
            median(rounds.iter().filter_map(|r| {
                let a = f(r.setups.get(&a)?)?;
                let b = f(r.setups.get(&b)?)?;
                (b != 0.0).then(|| a / b)
            }))
        };
        Row {
            key: key.to_string(),
            metric: metric.to_string(),
            unit,
            plaintext: of(Setup::Plaintext),
            native: of(Setup::Native),
            haproxy: of(Setup::Haproxy),
            native_over_plaintext: over(Setup::Native, Setup::Plaintext),
            native_over_haproxy: over(Setup::Native, Setup::Haproxy),
            decimals,
        }
    };
    let new = |s: &SetupRound| s.new_connections.clone();
    let trips = |s: &SetupRound| s.round_trips.clone();
    let mut rows = vec![
        row(
            "new_connections_per_s",
            &format!("new connections/s, {NEW_CONNECTION_CLIENTS} clients"),
            "1/s",
            0,
            &|s| new(s).map(|t| t.per_s),
        ),
        row(
            "new_connection_p50_us",
            "  connect→reply p50 µs",
            "µs",
            1,
            &|s| new(s).map(|t| t.p50_us),
        ),
        row(
            "new_connection_p99_us",
            "  connect→reply p99 µs",
            "µs",
            1,
            &|s| new(s).map(|t| t.p99_us),
        ),
        row(
            "new_connection_server_cpu_us",
            "  server CPU µs/op",
            "µs",
            1,
            &|s| new(s).and_then(|t| t.server_cpu_us_per_op),
        ),
        row(
            "new_connection_client_cpu_us",
            "  client CPU µs/op",
            "µs",
            1,
            &|s| new(s).as_ref().and_then(client_cpu_us_per_op),
        ),
        row(
            "round_trips_per_s",
            &format!("round trips/s, {PERSISTENT_CLIENTS} conns"),
            "1/s",
            0,
            &|s| trips(s).map(|t| t.per_s),
        ),
        row("round_trip_p50_us", "  p50 latency µs", "µs", 1, &|s| {
            trips(s).map(|t| t.p50_us)
        }),
        row("round_trip_p99_us", "  p99 latency µs", "µs", 1, &|s| {
            trips(s).map(|t| t.p99_us)
        }),
        row(
            "round_trip_server_cpu_us",
            "  server CPU µs/op",
            "µs",
            1,
            &|s| trips(s).and_then(|t| t.server_cpu_us_per_op),
        ),
    ];
    // Failures are summed, not a median: any one matters.
    let failed = |setup: Setup| {
        let runs = rounds.iter().filter_map(|r| r.setups.get(&setup));
        let mut any = false;
        let sum: u64 = runs
            .flat_map(|s| [&s.round_trips, &s.new_connections])
            .flatten()
            .inspect(|_| any = true)
            .map(|t| t.failed)
            .sum();
        any.then_some(sum as f64)
    };
    rows.push(Row {
        key: "failed".into(),
        metric: "failed ops, all rounds".into(),
        unit: "count",
        plaintext: failed(Setup::Plaintext),
        native: failed(Setup::Native),
        haproxy: failed(Setup::Haproxy),
        native_over_plaintext: None,
        native_over_haproxy: None,
        decimals: 0,
    });
    rows
}

/// What the table does not say: what a handshake costs each side, and the
/// runs other processes disturbed.
fn summary_notes(summary: &[Row], rounds: &[Round]) -> Vec<String> {
    let mut notes = Vec::new();
    let cpu = summary
        .iter()
        .find(|r| r.key == "new_connection_server_cpu_us");
    if let Some(row) = cpu
        && let Some(plaintext) = row.plaintext
    {
        let extra =
            |v: Option<f64>| v.map_or_else(|| "–".into(), |v| format!("{:.0}", v - plaintext));
        notes.push(format!(
            "a full handshake costs the serving side about {} µs of CPU natively and {} µs through HAProxy, beyond a plaintext connection's {:.0} µs (medians' differences)",
            extra(row.native),
            extra(row.haproxy),
            plaintext
        ));
    }
    notes.extend(load::disturbed_note(rounds, Setup::name, "TLS run(s)"));
    notes
}

/// The summary as a plain-text table.
pub fn table(tls: &Tls) -> String {
    let header = [
        "TLS (ECDSA P-256)",
        Setup::Plaintext.heading(),
        Setup::Native.heading(),
        Setup::Haproxy.heading(),
        "native/plaintext",
        "native/HAProxy",
    ];
    let rows: Vec<[String; 6]> = tls
        .summary
        .iter()
        .map(|row| {
            let value = |v: Option<f64>| {
                v.map_or_else(|| "–".to_string(), |v| report::number(v, row.decimals))
            };
            let ratio = |r: Option<f64>| r.map_or_else(|| "–".to_string(), |r| format!("{r:.2}×"));
            [
                row.metric.clone(),
                value(row.plaintext),
                value(row.native),
                value(row.haproxy),
                ratio(row.native_over_plaintext),
                ratio(row.native_over_haproxy),
            ]
        })
        .collect();
    report::aligned(&header, &rows, |i| i == 0)
}

/// The notes every TLS report carries, whatever the run found.
pub fn method_notes(tls: &Tls) -> Vec<String> {
    let mut notes = vec![
        format!(
            "TLS: medians over {} round(s); a ratio is the median of each round's ratio (the set-ups measured back to back, started afresh each round); every round is in the JSON",
            tls.rounds.len()
        ),
        format!(
            "TLS: one hotsock process each; HAProxy TLS is HAProxy ({}) terminating TLS in front of hotsock --proxy-protocol, its CPU counted with hotsock's",
            tls.haproxy_version.as_deref().unwrap_or("not run")
        ),
        "TLS: the client is rustls with hotsock's provider (ring), offering X25519 first as OpenSSL and browsers do, with resumption off, so every new connection is a full handshake (checked); a new connection sends close_notify, then resets as the plaintext one does".into(),
        format!("TLS: certificates: {}", tls.certificate),
    ];
    for (setup, agreed) in &tls.negotiated {
        notes.push(format!("TLS: {} agreed on {agreed}", setup.heading()));
    }
    notes.extend(tls.notes.iter().map(|n| format!("TLS: {n}")));
    notes
}

/// A private directory for the certificates, the admin sockets and
/// HAProxy's configuration, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn create() -> Result<Scratch> {
        let path = std::env::temp_dir().join(format!("hotsock-bench-tls-{}", std::process::id()));
        // Left over by an earlier bench that had this pid and was killed.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", path.display()))?;
        Ok(Scratch(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn throughput(per_s: f64, cpu_us: f64) -> Option<Throughput> {
        Some(Throughput {
            clients: 1,
            per_s,
            completed: 1,
            p50_us: 1.0,
            p99_us: 1.0,
            failed: 0,
            completed_total: 1,
            cpu: None,
            server_cpu_us_per_op: Some(cpu_us),
        })
    }

    #[test]
    fn ratios_are_medians_of_each_rounds_ratio() {
        // The machine slows down in round 2: the paired ratios stay put.
        let rounds: Vec<Round> = [
            (1000.0, 500.0, 250.0),
            (400.0, 200.0, 100.0),
            (900.0, 450.0, 225.0),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (plaintext, native, haproxy))| Round {
            round: i + 1,
            order: Setup::ALL.to_vec(),
            setups: BTreeMap::from([
                (
                    Setup::Plaintext,
                    SetupRound {
                        new_connections: throughput(plaintext, 50.0),
                        round_trips: None,
                    },
                ),
                (
                    Setup::Native,
                    SetupRound {
                        new_connections: throughput(native, 150.0),
                        round_trips: None,
                    },
                ),
                (
                    Setup::Haproxy,
                    SetupRound {
                        new_connections: throughput(haproxy, 600.0),
                        round_trips: None,
                    },
                ),
            ]),
        })
        .collect();
        let rows = summarise(&rounds);
        let rate = &rows[0];
        assert_eq!(rate.key, "new_connections_per_s");
        assert_eq!(rate.native, Some(450.0));
        assert_eq!(rate.native_over_plaintext, Some(0.5));
        assert_eq!(rate.native_over_haproxy, Some(2.0));
        let cpu = rows
            .iter()
            .find(|r| r.key == "new_connection_server_cpu_us")
            .unwrap();
        assert_eq!(cpu.native_over_plaintext, Some(3.0));
        assert_eq!(cpu.native_over_haproxy, Some(0.25));
        let trips = rows.iter().find(|r| r.key == "round_trips_per_s").unwrap();
        assert_eq!(trips.native, None);
        assert_eq!(rows.last().unwrap().native, Some(0.0));
        let notes = summary_notes(&rows, &rounds);
        assert!(
            notes[0].contains("about 100 µs of CPU natively and 550 µs"),
            "{notes:?}"
        );
    }

    /// The client against an in-process rustls server holding the bench's
    /// certificates: a full TLS 1.3 handshake every time, and the files
    /// are what a server loads.
    #[test]
    fn the_client_makes_full_handshakes_with_the_bench_certificates() {
        use rustls::ServerConfig;
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let dir = tempfile::tempdir().unwrap();
        let certificates = Certificates::make(dir.path()).unwrap();
        let chain: Vec<CertificateDer> = CertificateDer::pem_file_iter(&certificates.cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&certificates.key).unwrap();
        let haproxy = std::fs::read_to_string(&certificates.haproxy).unwrap();
        assert!(haproxy.contains("BEGIN CERTIFICATE") && haproxy.contains("PRIVATE KEY"));
        let provider = Arc::new(hotsock::server::tls_provider());
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let server = Arc::new(server);
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        const CONNECTIONS: usize = 3;
        let echo = thread::spawn(move || {
            for _ in 0..CONNECTIONS {
                let (socket, _) = listener.accept().unwrap();
                let session = rustls::ServerConnection::new(Arc::clone(&server)).unwrap();
                let mut stream = StreamOwned::new(session, socket);
                let mut message = [0; load::MESSAGE.len()];
                io::Read::read_exact(&mut stream, &mut message).unwrap();
                let reply = [&b"Echo=>"[..], &message, b" at Sat Dec  5 04:58:57 2026"].concat();
                io::Write::write_all(&mut stream, &reply).unwrap();
                // The client resets after its close_notify: whatever comes.
                let _ = io::Read::read(&mut stream, &mut message);
            }
        });
        let client = Client::new(&certificates).unwrap();
        for _ in 0..CONNECTIONS - 1 {
            client.connect_once(addr).unwrap();
        }
        let mut stream = client.connect(addr).unwrap();
        assert_eq!(stream.conn.handshake_kind(), Some(HandshakeKind::Full));
        load::round_trip(&mut stream).unwrap();
        assert!(
            negotiated(&stream).starts_with("TLSv1_3 TLS13_")
                && negotiated(&stream).ends_with(" X25519"),
            "{}",
            negotiated(&stream)
        );
        drop(stream);
        echo.join().unwrap();
    }

    #[test]
    fn the_haproxy_config_names_what_it_is_given() {
        let config = haproxy_config(
            (Ipv4Addr::LOCALHOST, 41443).into(),
            (Ipv4Addr::LOCALHOST, 41007).into(),
            Path::new("/tmp/x/haproxy.pem"),
        );
        assert!(config.contains("    bind 127.0.0.1:41443 ssl crt /tmp/x/haproxy.pem\n"));
        assert!(config.contains(
            "server hotsock1 127.0.0.1:41007 send-proxy-v2-ssl-cn proxy-v2-options ssl-cipher,authority\n"
        ));
        // The server line deploy/haproxy-tls.cfg gives a fleet.
        assert!(
            haproxy::TLS_SHIPPED
                .contains("send-proxy-v2-ssl-cn proxy-v2-options ssl-cipher,authority")
        );
    }
}
