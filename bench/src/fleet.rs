//! `hotsock-bench --fleet`, run by `make bench-fleet`: what running hotsock
//! as more than one process costs, on one machine, for the same echo
//! handler.
//!
//! Three set-ups ([`Setup`]):
//!
//! - `one`: one hotsock process;
//! - `reuse-port`: two processes sharing one port with `--reuse-port`, the
//!   kernel spreading new connections over them;
//! - `haproxy`: three processes with `--proxy-protocol`, behind HAProxy
//!   running deploy/haproxy.cfg with its ports replaced
//!   ([`testkit::haproxy`], as for tests/fleet.rs), so that what is measured
//!   is the configuration users are given.
//!
//! Each round starts the three afresh and measures them back to back,
//! scenario by scenario, in an order that rotates from round to round, as
//! the main bench does: the shared machine drifts by 10-20% over seconds,
//! and a ratio within a round compares set-ups under the same conditions.
//! CPU per operation counts every process that serves: all of hotsock's,
//! and HAProxy's.
//!
//! Then once, the `haproxy` set-up started afresh takes a binary upgrade
//! under load ([`UpgradeUnderLoad`]): SIGUSR2 to each process in turn while
//! clients keep going, counting every failed operation.
//!
//! An upgraded process's successor is not a child of the bench but of the
//! process it replaces; the bench makes itself a child subreaper so that
//! the successor becomes its child once the old process has drained and
//! exited, and can be reaped rather than left a zombie.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde::Serialize;
use serde_json::json;
use testkit::haproxy::{self, Haproxy};
use testkit::http::Endpoint;
use testkit::{Launch, ServerProcess, Stderr};

use crate::cpu::CpuMeter;
use crate::load::{self, SetupRound, Throughput};
use crate::report::{self, Machine, median};
use crate::servers::{self, Programs};
use crate::{NEW_CONNECTION_CLIENTS, Options};

/// Where `--fleet` writes unless `--out` is given.
pub const DEFAULT_OUT: &str = "target/bench-fleet";

/// Rounds `--fleet` runs unless `--rounds` is given: each starts six hotsock
/// processes and HAProxy, so fewer than the main bench's.
pub const DEFAULT_ROUNDS: usize = 5;

/// Persistent connections in the round-trip scenario, and in the upgrade:
/// enough to keep every process of a set-up busy.
const PERSISTENT_CLIENTS: usize = 10;

/// Threads opening new connections during the upgrade: fewer than in the
/// throughput scenario, so that the new processes can start beside them.
const UPGRADE_NEW_CONNECTION_CLIENTS: usize = 4;

/// Successful round trips through HAProxy, in a row, before a set-up counts
/// as ready. deploy/haproxy.cfg's servers start out up (the health checks
/// take `fall 2` failures to mark one down), so what this waits for is
/// HAProxy listening and forwarding.
const READY_ECHOES: usize = 3;

/// Longest HAProxy may take to forward those round trips.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Load before the first SIGUSR2, and after the last new process serves.
const UPGRADE_MARGIN: Duration = Duration::from_secs(1);

/// How often the admin API is asked whether a new process serves.
const UPGRADE_POLL: Duration = Duration::from_millis(10);

/// Longest a new process may take to serve after SIGUSR2. hotsock itself
/// gives the new process 60 s to be ready before giving up on it.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest the upgrade's clients run whatever happens: every loop here
/// stays bounded, even if the bench forgets to stop them.
const LOAD_LIMIT: Duration = Duration::from_secs(300);

/// Error messages kept from the upgrade's failed operations; all are counted.
const KEPT_ERRORS: usize = 5;

/// How long a process gets to exit after being told to: above hotsock's
/// default --drain-timeout (10 s).
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a killed process gets to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the waits for a process to exit look again.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// How hotsock is run: one process, two sharing a port, three behind HAProxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    /// One hotsock process, clients connecting to it.
    One,
    /// Two processes listening on one port with `--reuse-port`.
    ReusePort,
    /// Three processes with `--proxy-protocol` behind HAProxy.
    Haproxy,
}

impl Setup {
    /// All three, in the order of the first round; `One` is what the
    /// others are compared with.
    pub const ALL: [Setup; 3] = [Setup::One, Setup::ReusePort, Setup::Haproxy];

    /// The name in the table, the JSON and the log file names.
    pub fn name(self) -> &'static str {
        match self {
            Setup::One => "one",
            Setup::ReusePort => "reuse-port",
            Setup::Haproxy => "haproxy",
        }
    }

    /// hotsock processes it runs.
    fn processes(self) -> usize {
        match self {
            Setup::One => 1,
            Setup::ReusePort => 2,
            Setup::Haproxy => 3,
        }
    }
}

/// One round: every set-up, started afresh, each through both scenarios.
pub type Round = load::Round<Setup>;

/// One set-up's results over all rounds: medians, and ratios against `one`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The set-up.
    pub setup: Setup,
    /// hotsock processes in it.
    pub processes: usize,
    /// Round trips per second over the persistent connections.
    pub round_trips_per_s: Option<f64>,
    /// That over `one`'s: the median of each round's ratio.
    pub round_trips_over_one: Option<f64>,
    /// Median round-trip latency, microseconds.
    pub round_trip_p50_us: Option<f64>,
    /// New connections per second.
    pub new_connections_per_s: Option<f64>,
    /// That over `one`'s: the median of each round's ratio.
    pub new_connections_over_one: Option<f64>,
    /// Median connect-to-reply latency of a new connection, microseconds.
    pub new_connection_p50_us: Option<f64>,
    /// CPU time of every serving process per round trip, microseconds.
    pub cpu_us_per_round_trip: Option<f64>,
    /// That over `one`'s: the median of each round's ratio.
    pub cpu_per_round_trip_over_one: Option<f64>,
    /// CPU time of every serving process per new connection, microseconds.
    pub cpu_us_per_new_connection: Option<f64>,
    /// That over `one`'s: the median of each round's ratio.
    pub cpu_per_new_connection_over_one: Option<f64>,
    /// Failed operations, summed over every round: any one matters.
    pub failed: u64,
}

/// One process's SIGUSR2 upgrade.
#[derive(Debug, Clone, Serialize)]
pub struct Takeover {
    /// Which of the three, from 1.
    pub process: usize,
    /// The process signalled.
    pub old_pid: u32,
    /// The process that took over.
    pub new_pid: u32,
    /// From the signal to the admin API naming the new process, in
    /// milliseconds, to within [`UPGRADE_POLL`].
    pub ms: f64,
}

/// What the binary upgrade under load found.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeUnderLoad {
    /// hotsock processes upgraded, one after the other.
    pub processes: usize,
    /// Clients with a persistent connection each, round trips back to back.
    pub persistent_clients: usize,
    /// Clients opening new connections back to back.
    pub new_connection_clients: usize,
    /// How long the load ran, seconds.
    pub load_s: f64,
    /// New connections completed: connect, one 64-byte round trip, close.
    pub connections: u64,
    /// Round trips completed on the persistent connections.
    pub round_trips: u64,
    /// Operations that failed: a connect, read or write error, or a wrong
    /// reply, on either kind of client.
    pub failed: u64,
    /// The first [`KEPT_ERRORS`] failures' messages.
    pub errors: Vec<String>,
    /// Each process's upgrade, in order.
    pub takeovers: Vec<Takeover>,
    /// Anything that did not stop as asked afterwards (and was killed).
    pub stop_problems: Vec<String>,
}

/// `--fleet`: the rounds, the upgrade under load, the table and fleet.json.
pub fn run(options: &Options) -> Result<()> {
    let programs = &options.programs;
    programs.check_hotsock()?;
    let haproxy = haproxy::find()?;
    // Fail now, not after the first set-ups have started, if it has changed.
    let placeholder: SocketAddr = (Ipv4Addr::LOCALHOST, 1).into();
    haproxy::config(
        haproxy::SHIPPED,
        placeholder,
        &[(placeholder, placeholder); 3],
    )?;
    let logs = options.out.join("logs");
    reset_logs(&logs)?;
    become_subreaper()?;
    let open_files = crate::raise_open_files_limit(1000)?;
    let machine = Machine::detect(open_files);
    let haproxy_version = haproxy::version(&haproxy);
    let scratch = Scratch::create()?;
    let context = Context {
        programs,
        haproxy: &haproxy,
        scratch: &scratch,
        logs: &logs,
    };
    eprintln!(
        "hotsock-bench --fleet: {} round(s), {:?} per throughput run, then an upgrade under load; about {} minutes",
        options.rounds,
        options.duration,
        estimate_minutes(options)
    );
    let mut rounds = Vec::new();
    let mut commands = BTreeMap::new();
    for index in 0..options.rounds {
        let (round, started) = round(index, options, &context)?;
        if commands.is_empty() {
            commands = started;
        }
        rounds.push(round);
    }
    eprintln!("upgrade under load: SIGUSR2 to each of three processes behind HAProxy");
    let upgrade = upgrade_under_load(&context)?;

    let summaries = summarise(&rounds);
    let notes = notes(options, &rounds, &upgrade);
    let stderr_lines = crate::stderr_lines(&logs, log_names());
    println!();
    println!(
        "hotsock fleet bench, {}; {}",
        machine.describe(),
        haproxy_version
    );
    println!(
        "set-ups: one = 1 hotsock process | reuse-port = 2 with --reuse-port on one port | haproxy = 3 with --proxy-protocol behind HAProxy ({})",
        haproxy::PATH
    );
    println!();
    print!("{}", table(&summaries));
    println!();
    println!("{}", upgrade_line(&upgrade));
    for error in &upgrade.errors {
        println!("  failed: {error}");
    }
    for note in &notes {
        println!("note: {note}");
    }
    for (path, lines) in &stderr_lines {
        println!("note: {path} has {lines} line(s) of server stderr");
    }

    let json = json!({
        "machine": machine,
        "config": {
            "rounds": options.rounds,
            "duration_s": options.duration.as_secs_f64(),
            "warmup_s": load::WARMUP.as_secs_f64(),
            "message_bytes": load::MESSAGE.len(),
            "reply_bytes": load::REPLY_LEN,
            "persistent_connections": PERSISTENT_CLIENTS,
            "new_connection_clients": NEW_CONNECTION_CLIENTS,
            "haproxy": haproxy.display().to_string(),
            "haproxy_version": haproxy_version,
            "haproxy_config": haproxy::PATH,
            "commands_round_1": commands,
        },
        "notes": notes,
        "summary": summaries,
        "rounds": rounds,
        "upgrade": upgrade,
        "server_stderr_lines": stderr_lines.into_iter().collect::<BTreeMap<_, _>>(),
    });
    let path = report::write_json(&options.out, "fleet.json", &json)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// What starting a set-up needs, found once per run.
struct Context<'a> {
    programs: &'a Programs,
    haproxy: &'a Path,
    scratch: &'a Scratch,
    logs: &'a Path,
}

/// A rough run time, so whoever started it knows what to expect.
fn estimate_minutes(options: &Options) -> u64 {
    let runs = 2.0 * Setup::ALL.len() as f64;
    // Starting six processes that each compile the handler, and HAProxy.
    let per_round = runs * (options.duration + load::WARMUP).as_secs_f64() + 5.0;
    ((per_round * options.rounds as f64 + 15.0) / 60.0).ceil() as u64
}

/// One round: start the three set-ups, run each scenario on each in turn,
/// stop them. Returns the round and each set-up's command lines.
fn round(
    index: usize,
    options: &Options,
    context: &Context,
) -> Result<(Round, BTreeMap<Setup, Vec<String>>)> {
    let order: Vec<Setup> = (0..Setup::ALL.len())
        .map(|i| Setup::ALL[(i + index) % Setup::ALL.len()])
        .collect();
    let names: Vec<&str> = order.iter().map(|s| s.name()).collect();
    eprintln!(
        "round {}/{}: {}",
        index + 1,
        options.rounds,
        names.join(", ")
    );
    let mut running = order
        .iter()
        .map(|&setup| Running::start(setup, context, ""))
        .collect::<Result<Vec<_>>>()?;
    let mut results: BTreeMap<Setup, SetupRound> =
        order.iter().map(|&s| (s, SetupRound::default())).collect();
    for fleet in &running {
        let run = measure(fleet, || {
            load::persistent(fleet.addr, PERSISTENT_CLIENTS, options.duration)
        })?;
        crate::progress(
            &format!("round trips, {PERSISTENT_CLIENTS} conns"),
            fleet.setup.name(),
            &run,
        );
        results.entry(fleet.setup).or_default().round_trips = Some(run);
    }
    for fleet in &running {
        let run = measure(fleet, || {
            load::new_connections(fleet.addr, NEW_CONNECTION_CLIENTS, options.duration)
        })?;
        crate::progress("new connections", fleet.setup.name(), &run);
        results.entry(fleet.setup).or_default().new_connections = Some(run);
    }
    for fleet in &mut running {
        fleet.check_alive()?;
    }
    let commands = running
        .iter()
        .map(|fleet| (fleet.setup, fleet.commands.clone()))
        .collect();
    let round = Round {
        round: index + 1,
        order,
        setups: results,
    };
    Ok((round, commands))
}

/// Runs `scenario` against `fleet`, with the CPU of every process serving.
fn measure(fleet: &Running, scenario: impl FnOnce() -> Result<Throughput>) -> Result<Throughput> {
    let meter = CpuMeter::start_all(&fleet.pids());
    let run = scenario()?;
    Ok(run.with_cpu(meter.finish()))
}

/// The `haproxy` set-up, started afresh, through SIGUSR2 to each of its
/// processes in turn while clients keep going through HAProxy.
fn upgrade_under_load(context: &Context) -> Result<UpgradeUnderLoad> {
    let mut fleet = Running::start(Setup::Haproxy, context, "upgrade-")?;
    // Declared after `fleet`, so dropped first on an early return: the
    // clients stop before the processes they talk to are killed.
    let load = UpgradeLoad::start(fleet.addr)?;
    thread::sleep(UPGRADE_MARGIN);
    let mut takeovers = Vec::new();
    for (i, hotsock) in fleet.hotsocks.iter_mut().enumerate() {
        let takeover = hotsock.upgrade(i + 1)?;
        eprintln!(
            "  process {}: {} -> {} serving after {:.0} ms",
            takeover.process, takeover.old_pid, takeover.new_pid, takeover.ms
        );
        takeovers.push(takeover);
    }
    thread::sleep(UPGRADE_MARGIN);
    let counts = load.finish();
    let stop_problems = fleet.stop();
    let upgrade = UpgradeUnderLoad {
        processes: takeovers.len(),
        persistent_clients: PERSISTENT_CLIENTS,
        new_connection_clients: UPGRADE_NEW_CONNECTION_CLIENTS,
        load_s: counts.load_s,
        connections: counts.connections,
        round_trips: counts.round_trips,
        failed: counts.failed,
        errors: counts.errors,
        takeovers,
        stop_problems,
    };
    eprintln!("  {}", upgrade_line(&upgrade));
    Ok(upgrade)
}

/// One set-up, running: where clients connect, and every process serving
/// them. Dropping it kills them all and waits for them.
struct Running {
    setup: Setup,
    /// Where clients connect: the hotsock port, or HAProxy's frontend.
    addr: SocketAddr,
    /// HAProxy, for the `haproxy` set-up. Stopped before the processes
    /// behind it, so that they see their last connections close.
    haproxy: Option<Haproxy>,
    hotsocks: Vec<Hotsock>,
    /// The command lines started, as they would be typed.
    commands: Vec<String>,
}

impl Running {
    /// Starts `setup`; `prefix` goes in front of its log and socket names,
    /// to tell the upgrade's processes from the rounds'.
    fn start(setup: Setup, context: &Context, prefix: &str) -> Result<Running> {
        let label = format!("{prefix}{}", setup.name());
        let (addr, extra): (String, &[&str]) = match setup {
            Setup::One => ("127.0.0.1:0".into(), &[]),
            // Both bind the one port, so it has to be chosen here.
            Setup::ReusePort => (
                format!("127.0.0.1:{}", testkit::free_port()?),
                &["--reuse-port"],
            ),
            Setup::Haproxy => (
                "127.0.0.1:0".into(),
                &["--proxy-protocol", "--metrics", "127.0.0.1:0"],
            ),
        };
        let mut running = Running {
            setup,
            addr: (Ipv4Addr::LOCALHOST, 0).into(),
            haproxy: None,
            hotsocks: Vec::new(),
            commands: Vec::new(),
        };
        for n in 1..=setup.processes() {
            let admin = context.scratch.path().join(format!("{label}-{n}.sock"));
            let log = context.logs.join(format!("{label}-hotsock{n}.stderr"));
            let mut command = context.programs.hotsock_command(&addr, &admin);
            command.args(extra);
            running.commands.push(servers::command_line(&command));
            let name = format!("{label} hotsock {n}");
            let metrics = setup == Setup::Haproxy;
            let hotsock = Hotsock::start(command, &name, admin, &log, metrics)?;
            running.hotsocks.push(hotsock);
        }
        running.addr = running.hotsocks[0].addr;
        if setup == Setup::ReusePort
            && let Some(other) = running.hotsocks.iter().find(|h| h.addr != running.addr)
        {
            bail!(
                "{label}: the processes listen on {} and {}, not on one port",
                running.addr,
                other.addr
            );
        }
        if setup == Setup::Haproxy {
            let backends = running
                .hotsocks
                .iter()
                .map(|h| {
                    let metrics = h.metrics.context("hotsock announced no metrics address")?;
                    Ok((h.addr, metrics))
                })
                .collect::<Result<Vec<_>>>()?;
            let config = context.scratch.path().join(format!("{label}.cfg"));
            let log = context.logs.join(format!("{prefix}haproxy.stderr"));
            let haproxy = Haproxy::start(context.haproxy, &backends, &config, &log)?;
            let command = haproxy::command(context.haproxy, &config);
            running.commands.push(servers::command_line(&command));
            running.addr = haproxy.frontend();
            running.haproxy = Some(haproxy);
            if let Some(haproxy) = &mut running.haproxy {
                wait_ready(haproxy)?;
            }
        }
        Ok(running)
    }

    /// Every process serving now: hotsock's (after an upgrade, the new
    /// ones), and HAProxy.
    fn pids(&self) -> Vec<u32> {
        self.hotsocks
            .iter()
            .map(Hotsock::pid)
            .chain(self.haproxy.iter().map(Haproxy::pid))
            .collect()
    }

    /// Fails if a process has exited: the numbers would mean nothing.
    fn check_alive(&mut self) -> Result<()> {
        for hotsock in &mut self.hotsocks {
            hotsock.process.check_alive()?;
        }
        if let Some(haproxy) = &mut self.haproxy {
            haproxy.check_alive()?;
        }
        Ok(())
    }

    /// Stops an upgraded fleet in order, each process by its pid: HAProxy,
    /// which closes every connection through it; the old processes, which
    /// then finish draining and exit by themselves; the new ones, by
    /// SIGTERM. What did not go as asked is returned (and was killed).
    fn stop(mut self) -> Vec<String> {
        let mut problems = Vec::new();
        drop(self.haproxy.take());
        for hotsock in &mut self.hotsocks {
            if hotsock.successor.is_some()
                && let Err(e) = hotsock.process.wait_exit(EXIT_TIMEOUT)
            {
                problems.push(format!("the old process, drained: {e:#}"));
            }
        }
        for hotsock in &mut self.hotsocks {
            if let Some(pid) = hotsock.successor.take()
                && !terminate(pid)
            {
                problems.push(format!(
                    "process {pid} did not exit within {EXIT_TIMEOUT:?} of SIGTERM: killed"
                ));
            }
        }
        // Dropping kills whatever is left.
        problems
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.haproxy.take());
        let successors: Vec<u32> = self
            .hotsocks
            .iter_mut()
            .filter_map(|h| h.successor.take())
            .collect();
        for &pid in &successors {
            signal(pid, libc::SIGKILL);
        }
        // Killing the old processes hands their children, the successors,
        // to this process (a subreaper), which can then reap them.
        let sockets: Vec<PathBuf> = self.hotsocks.iter().map(|h| h.admin_path.clone()).collect();
        self.hotsocks.clear();
        for pid in successors {
            wait_gone(pid, KILL_TIMEOUT);
        }
        // A killed process cannot remove its socket.
        for path in sockets {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One hotsock process of a set-up, and after SIGUSR2 the one that took
/// over from it.
struct Hotsock {
    /// The process started; killed and waited for when dropped.
    process: ServerProcess,
    /// Where it serves clients.
    addr: SocketAddr,
    /// Where its /readyz is, with `--metrics`.
    metrics: Option<SocketAddr>,
    admin: Endpoint,
    admin_path: PathBuf,
    /// The process that took over after SIGUSR2: not a child of the bench
    /// until `process` has exited.
    successor: Option<u32>,
}

impl Hotsock {
    /// Starts `command`, called `name` in errors, with its admin API on
    /// `admin`, its metrics too if `metrics`, and its stderr appended to `log`.
    fn start(
        command: Command,
        name: &str,
        admin: PathBuf,
        log: &Path,
        metrics: bool,
    ) -> Result<Hotsock> {
        let process = Launch::new(command)
            .name(name)
            .admin(true)
            .metrics(metrics)
            .stderr(Stderr::Append(log.to_path_buf()))
            .timeout(servers::STARTUP_TIMEOUT)
            // As the main bench's servers: gone with the bench, even one
            // killed outright. Started from the main thread, which outlives them.
            .die_with_parent(true)
            .start()?;
        let Some(&addr) = process.addrs().first() else {
            bail!("{name} announced no address");
        };
        Ok(Hotsock {
            addr,
            metrics: process.metrics(),
            admin: process
                .admin()
                .cloned()
                .with_context(|| format!("{name} announced no admin API"))?,
            admin_path: admin,
            process,
            successor: None,
        })
    }

    /// The process serving now.
    fn pid(&self) -> u32 {
        self.successor.unwrap_or_else(|| self.process.pid())
    }

    /// SIGUSR2 to the process serving, then waits until the admin API is
    /// answered by another: `hotsock status`'s `process: PID`, read from
    /// `GET /status` directly, since starting the CLI every 10 ms would
    /// take CPU from the processes being measured.
    fn upgrade(&mut self, n: usize) -> Result<Takeover> {
        let old = status_pid(&self.admin)
            .with_context(|| format!("process {n}: no pid from its admin API"))?;
        ensure!(
            signal(old, libc::SIGUSR2),
            "process {n}: cannot send SIGUSR2 to {old}: {}",
            std::io::Error::last_os_error()
        );
        let sent = Instant::now();
        loop {
            thread::sleep(UPGRADE_POLL);
            // While the new process takes the admin socket over, a request
            // may fail: only an answer naming another process counts.
            if let Ok(new) = status_pid(&self.admin)
                && new != old
            {
                self.successor = Some(new);
                return Ok(Takeover {
                    process: n,
                    old_pid: old,
                    new_pid: new,
                    ms: sent.elapsed().as_secs_f64() * 1e3,
                });
            }
            ensure!(
                sent.elapsed() < UPGRADE_TIMEOUT,
                "process {n} ({old}): no new process serving {UPGRADE_TIMEOUT:?} after SIGUSR2; see {}",
                self.process.name()
            );
        }
    }
}

/// The process answering `admin`'s `GET /status`.
fn status_pid(admin: &Endpoint) -> Result<u32> {
    let response = testkit::http::request(admin, "GET", "/status", &[], &[])?;
    ensure!(
        response.status == 200,
        "GET /status answered {}: {}",
        response.status,
        testkit::http::text(&response)
    );
    response.json()?["pid"]
        .as_u64()
        .and_then(|pid| u32::try_from(pid).ok())
        .context("GET /status has no pid")
}

/// Waits until [`READY_ECHOES`] round trips in a row have gone through
/// `haproxy`: it is listening, and forwarding to hotsock.
fn wait_ready(haproxy: &mut Haproxy) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut answered = 0;
    while answered < READY_ECHOES {
        haproxy.check_alive()?;
        match load::connect(haproxy.frontend()).and_then(|mut s| load::round_trip(&mut s)) {
            Ok(()) => answered += 1,
            Err(e) => {
                answered = 0;
                ensure!(
                    Instant::now() < deadline,
                    "no echo through HAProxy on {} within {READY_TIMEOUT:?}: {e}; its log is {}",
                    haproxy.frontend(),
                    haproxy.log_path().display()
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Ok(())
}

/// A private directory for the admin sockets and HAProxy's configuration,
/// removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn create() -> Result<Scratch> {
        let path = std::env::temp_dir().join(format!("hotsock-bench-fleet-{}", std::process::id()));
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

/// Every log file the fleet bench writes, in `logs`.
fn log_names() -> Vec<String> {
    let mut names = Vec::new();
    for (prefix, setups) in [("", &Setup::ALL[..]), ("upgrade-", &[Setup::Haproxy][..])] {
        for setup in setups {
            for n in 1..=setup.processes() {
                names.push(format!("{prefix}{}-hotsock{n}.stderr", setup.name()));
            }
        }
        names.push(format!("{prefix}haproxy.stderr"));
    }
    names
}

/// Creates (or empties) every log file in `dir`.
fn reset_logs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for name in log_names() {
        let path = dir.join(name);
        File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    }
    Ok(())
}

/// Makes orphaned descendants of this process its children rather than
/// init's: an upgraded process's successor, once the old one exits.
fn become_subreaper() -> Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag on this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
        bail!(
            "cannot become a child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Sends `signal` to `pid`; whether it was delivered.
fn signal(pid: u32, signal: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// SIGTERM to `pid`, then waits for it to exit; SIGKILL if it has not
/// within [`EXIT_TIMEOUT`]. Whether it exited when asked.
fn terminate(pid: u32) -> bool {
    signal(pid, libc::SIGTERM);
    if wait_gone(pid, EXIT_TIMEOUT) {
        return true;
    }
    signal(pid, libc::SIGKILL);
    wait_gone(pid, KILL_TIMEOUT);
    false
}

/// Waits up to `timeout` for `pid` to be gone: reaped here if it is a child
/// of this process, else no longer in /proc. Whether it is.
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return true;
    };
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only into `status`, which outlives the call.
        if unsafe { libc::waitpid(raw, &mut status, libc::WNOHANG) } == raw {
            return true;
        }
        // Not a child (yet): a zombie whose parent is alive is left for
        // that parent, or for this process once it has become the parent.
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(EXIT_POLL);
    }
}

/// What the upgrade's clients counted.
#[derive(Debug, Default)]
struct Counts {
    stop: AtomicBool,
    connections: AtomicU64,
    round_trips: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Counts {
    /// Counts a failure, and keeps its message if it is among the first.
    fn fail(&self, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.len() < KEPT_ERRORS {
            errors.push(error);
        }
    }

    /// Whether a client should go on.
    fn running(&self, deadline: Instant) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < deadline
    }
}

/// What the upgrade's clients did, once stopped.
struct Counted {
    load_s: f64,
    connections: u64,
    round_trips: u64,
    failed: u64,
    errors: Vec<String>,
}

/// The upgrade's clients, running until [`UpgradeLoad::finish`] or drop.
struct UpgradeLoad {
    counts: Arc<Counts>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

impl UpgradeLoad {
    /// Starts [`PERSISTENT_CLIENTS`] clients doing round trips on a
    /// connection each, reconnecting after a failure, and
    /// [`UPGRADE_NEW_CONNECTION_CLIENTS`] opening new connections, all to
    /// `addr`.
    fn start(addr: SocketAddr) -> Result<UpgradeLoad> {
        let started = Instant::now();
        let deadline = started + LOAD_LIMIT;
        // Built first, so that an error starting a thread stops the others.
        let mut load = UpgradeLoad {
            counts: Arc::default(),
            threads: Vec::new(),
            started,
        };
        for i in 0..PERSISTENT_CLIENTS + UPGRADE_NEW_CONNECTION_CLIENTS {
            let counts = Arc::clone(&load.counts);
            let persistent = i < PERSISTENT_CLIENTS;
            let thread = thread::Builder::new()
                .name(format!("upgrade-client-{i}"))
                // Client threads only shuffle small buffers.
                .stack_size(256 * 1024)
                .spawn(move || match persistent {
                    true => persistent_client(addr, &counts, deadline),
                    false => new_connection_client(addr, &counts, deadline),
                })
                .with_context(|| format!("cannot start upgrade client thread {i}"))?;
            load.threads.push(thread);
        }
        Ok(load)
    }

    /// Stops the clients and returns what they counted.
    fn finish(mut self) -> Counted {
        self.stop();
        let counts = &self.counts;
        let errors = counts
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Counted {
            load_s: self.started.elapsed().as_secs_f64(),
            connections: counts.connections.load(Ordering::Relaxed),
            round_trips: counts.round_trips.load(Ordering::Relaxed),
            failed: counts.failed.load(Ordering::Relaxed),
            errors,
        }
    }

    /// Tells every client to stop and waits for them: each stops after its
    /// operation under way, which [`load::IO_TIMEOUT`] bounds.
    fn stop(&mut self) {
        self.counts.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                self.counts.fail("a client thread panicked".into());
            }
        }
    }
}

impl Drop for UpgradeLoad {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Round trips back to back on one connection; after a failure, a new one.
fn persistent_client(addr: SocketAddr, counts: &Counts, deadline: Instant) {
    let mut stream = None;
    while counts.running(deadline) {
        if stream.is_none() {
            match load::connect(addr) {
                Ok(connected) => stream = Some(connected),
                Err(e) => {
                    counts.fail(format!("persistent client: connect: {e}"));
                    thread::sleep(load::RETRY_PAUSE);
                    continue;
                }
            }
        }
        let Some(connection) = &mut stream else {
            continue;
        };
        match load::round_trip(connection) {
            Ok(()) => {
                counts.round_trips.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counts.fail(format!("persistent client: round trip: {e}"));
                stream = None;
            }
        }
    }
}

/// New connections back to back: connect, one round trip, close.
fn new_connection_client(addr: SocketAddr, counts: &Counts, deadline: Instant) {
    while counts.running(deadline) {
        match load::connect_once(addr) {
            Ok(()) => {
                counts.connections.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counts.fail(format!("new connection: {e}"));
                thread::sleep(load::RETRY_PAUSE);
            }
        }
    }
}

/// Each set-up's medians over `rounds`, and its ratios against `one`.
fn summarise(rounds: &[Round]) -> Vec<Summary> {
    Setup::ALL
        .into_iter()
        .map(|setup| {
            let of = |f: &dyn Fn(&SetupRound) -> Option<f64>| {
                median(
                    rounds
                        .iter()
                        .filter_map(|r| r.setups.get(&setup).and_then(f)),
                )
            };
            // Each round measures the set-ups back to back: the median of
            // each round's ratio is steadier than the ratio of the medians.
            let over_one = |f: &dyn Fn(&SetupRound) -> Option<f64>| {
                median(rounds.iter().filter_map(|r| {
                    let value = f(r.setups.get(&setup)?)?;
                    let one = f(r.setups.get(&Setup::One)?)?;
                    (one != 0.0).then(|| value / one)
                }))
            };
            let trips = |s: &SetupRound| s.round_trips.clone();
            let new = |s: &SetupRound| s.new_connections.clone();
            let trips_per_s = |s: &SetupRound| trips(s).map(|t| t.per_s);
            let new_per_s = |s: &SetupRound| new(s).map(|t| t.per_s);
            let trip_cpu = |s: &SetupRound| trips(s).and_then(|t| t.server_cpu_us_per_op);
            let new_cpu = |s: &SetupRound| new(s).and_then(|t| t.server_cpu_us_per_op);
            let failed = rounds
                .iter()
                .filter_map(|r| r.setups.get(&setup))
                .flat_map(|s| [&s.round_trips, &s.new_connections])
                .flatten()
                .map(|t| t.failed)
                .sum();
            Summary {
                setup,
                processes: setup.processes(),
                round_trips_per_s: of(&trips_per_s),
                round_trips_over_one: over_one(&trips_per_s),
                round_trip_p50_us: of(&|s| trips(s).map(|t| t.p50_us)),
                new_connections_per_s: of(&new_per_s),
                new_connections_over_one: over_one(&new_per_s),
                new_connection_p50_us: of(&|s| new(s).map(|t| t.p50_us)),
                cpu_us_per_round_trip: of(&trip_cpu),
                cpu_per_round_trip_over_one: over_one(&trip_cpu),
                cpu_us_per_new_connection: of(&new_cpu),
                cpu_per_new_connection_over_one: over_one(&new_cpu),
                failed,
            }
        })
        .collect()
}

/// The summary as an aligned plain-text table.
fn table(summaries: &[Summary]) -> String {
    let trips = format!("round trips/s, {PERSISTENT_CLIENTS} conns");
    let new = format!("new conns/s, {NEW_CONNECTION_CLIENTS} clients");
    let header = [
        "set-up",
        &trips,
        "ratio",
        &new,
        "ratio",
        "CPU µs/round trip",
        "CPU µs/new conn",
        "failed",
    ];
    let value = |v: Option<f64>, decimals| {
        v.map_or_else(|| "–".to_string(), |v| report::number(v, decimals))
    };
    let ratio = |r: Option<f64>| r.map_or_else(|| "–".to_string(), |r| format!("{r:.2}×"));
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            vec![
                s.setup.name().to_string(),
                value(s.round_trips_per_s, 0),
                ratio(s.round_trips_over_one),
                value(s.new_connections_per_s, 0),
                ratio(s.new_connections_over_one),
                value(s.cpu_us_per_round_trip, 1),
                value(s.cpu_us_per_new_connection, 1),
                s.failed.to_string(),
            ]
        })
        .collect();
    report::aligned(&header, &rows, |i| i == 0)
}

/// The upgrade in one line.
fn upgrade_line(upgrade: &UpgradeUnderLoad) -> String {
    let times: Vec<String> = upgrade
        .takeovers
        .iter()
        .map(|t| format!("{:.0}", t.ms))
        .collect();
    format!(
        "upgrade under load: {} processes, {} connections, {} round trips, {} failed; SIGUSR2 -> new process serving: {} ms",
        upgrade.processes,
        report::number(upgrade.connections as f64, 0),
        report::number(upgrade.round_trips as f64, 0),
        upgrade.failed,
        times.join("/")
    )
}

/// What a reader needs to know to read the numbers right.
fn notes(options: &Options, rounds: &[Round], upgrade: &UpgradeUnderLoad) -> Vec<String> {
    let mut notes = vec![
        format!(
            "medians over {} round(s); a ratio is the median of each round's ratio to `one` (the set-ups measured back to back); every round's values are in fleet.json",
            options.rounds
        ),
        "CPU µs/op: the CPU time of every process serving (each hotsock process, and HAProxy) over the run, warm-up included, per operation completed".into(),
        format!(
            "throughput runs: {:?} warm-up, then {:?} measured; 64-byte messages, 98-byte replies; a new connection is connect, one round trip, close",
            load::WARMUP,
            options.duration
        ),
        "hotsock runs as in `make bench` (RUST_LOG=warn, --no-cache): an upgrade's new process compiles the handler before it serves".into(),
        "the load generator shares the machine's cores with the processes under test, alike for every set-up".into(),
        format!(
            "upgrade: {} persistent and {} new-connection clients through HAProxy, back to back, {:?} before the first SIGUSR2 and after the last; the time runs from the signal until GET /status on the process's admin socket names another pid (polled every {:?}); connections open before an upgrade finish on the old process",
            upgrade.persistent_clients,
            upgrade.new_connection_clients,
            UPGRADE_MARGIN,
            UPGRADE_POLL
        ),
    ];
    notes.extend(load::disturbed_note(rounds, Setup::name, "run(s)"));
    for problem in &upgrade.stop_problems {
        notes.push(format!("after the upgrade: {problem}"));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throughput(per_s: f64, cpu_us: f64, failed: u64) -> Option<Throughput> {
        Some(Throughput {
            clients: 1,
            per_s,
            completed: 1,
            p50_us: 1.0,
            p99_us: 1.0,
            failed,
            completed_total: 1,
            cpu: None,
            server_cpu_us_per_op: Some(cpu_us),
        })
    }

    #[test]
    fn ratios_are_medians_of_each_rounds_ratio() {
        // The machine slows down in round 2: the paired ratio stays 2.
        let rounds: Vec<Round> = [(100.0, 200.0, 0), (50.0, 100.0, 1), (120.0, 240.0, 0)]
            .into_iter()
            .enumerate()
            .map(|(i, (one, haproxy, failed))| Round {
                round: i + 1,
                order: vec![Setup::One, Setup::Haproxy],
                setups: BTreeMap::from([
                    (
                        Setup::One,
                        SetupRound {
                            round_trips: throughput(one, 10.0, 0),
                            new_connections: None,
                        },
                    ),
                    (
                        Setup::Haproxy,
                        SetupRound {
                            round_trips: throughput(haproxy, 30.0, failed),
                            new_connections: throughput(1.0, 5.0, failed),
                        },
                    ),
                ]),
            })
            .collect();
        let summaries = summarise(&rounds);
        let [one, reuse, haproxy] = &summaries[..] else {
            panic!("{summaries:?}");
        };
        assert_eq!(one.round_trips_over_one, Some(1.0));
        assert_eq!(haproxy.round_trips_per_s, Some(200.0));
        assert_eq!(haproxy.round_trips_over_one, Some(2.0));
        assert_eq!(haproxy.cpu_per_round_trip_over_one, Some(3.0));
        assert_eq!(haproxy.new_connections_over_one, None);
        assert_eq!(haproxy.failed, 2);
        assert_eq!(reuse.round_trips_per_s, None);
        let text = table(&summaries);
        assert!(
            text.lines().nth(4).unwrap().starts_with("haproxy "),
            "{text}"
        );
        assert!(text.contains("2.00×"), "{text}");
    }

    #[test]
    fn every_log_is_named_once() {
        let names = log_names();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert!(names.contains(&"reuse-port-hotsock2.stderr".to_string()));
        assert!(names.contains(&"upgrade-haproxy.stderr".to_string()));
    }
}
