//! The key-value scenario: increments per second through the kit fixture's
//! `incr` command with each store hotsock offers, side by side with
//! `redis-benchmark -t incr` against the same Redis (the anchor).
//!
//! hotsock serves `kit.wasm` with `--keyvalue bench` and, in turn,
//! `--keyvalue-store memory:`, the default SQLite file (`--state-dir`), and
//! a real `redis-server` on a Unix socket, once with `appendfsync always`
//! (every acknowledged write synced, as SQLite's `synchronous = FULL`) and
//! once with `appendfsync everysec`. [`CLIENTS`] persistent connections each
//! send `incr bench KEY` and wait for `value N`, one in flight at a time.
//! Then `redis-benchmark` runs INCR with as many clients against each Redis.
//! Each round measures all of them back to back, in an order that rotates;
//! a ratio is the median of each round's ratio to the anchor.
//!
//! After each hotsock run the counter is read back and compared with the
//! increments acknowledged (`value N` answers, warm-up included): a
//! difference is printed loudly. It is a check on the stores, not a test;
//! the tests assert it.
//!
//! redis-server and redis-benchmark are Debian's `redis-server` and
//! `redis-tools`; where either is missing its rows are skipped with a note,
//! except under `CI=true`, where that is an error.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::cpu::CpuMeter;
use crate::load::{self, Throughput};
use crate::report::{self, median};
use crate::servers::{self, Kind, Programs, Server};

/// Concurrent connections (and redis-benchmark clients): enough that a
/// store which serialises its writes shows it, as a busy server would.
pub const CLIENTS: usize = 16;

/// The bucket every run increments in (`--keyvalue bench`).
pub const BUCKET: &str = "bench";

/// Rounds of `--keyvalue` alone, unless `--rounds` is given: a quick look.
pub const DEFAULT_ROUNDS: usize = 5;

/// The log file of the hotsock serving kit.wasm, in the logs directory.
pub const LOG: &str = "hotsock-keyvalue.stderr";

/// Longest redis-server may take to listen on its socket.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest one redis-benchmark run may take beyond the time it is sized for.
const BENCHMARK_SLACK: Duration = Duration::from_secs(60);

/// redis-benchmark's rate guessed before its first run, per second; each
/// run's `-n` is then sized from the last rate measured.
const FIRST_GUESS_PER_S: f64 = 10_000.0;

/// Fewest and most requests one redis-benchmark run makes.
const BENCHMARK_REQUESTS: (u64, u64) = (1_000, 5_000_000);

/// What a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subject {
    /// hotsock with `--keyvalue-store memory:`.
    Memory,
    /// hotsock with its default store: SQLite under `--state-dir`.
    Sqlite,
    /// hotsock with the Redis that syncs every write (`appendfsync always`).
    RedisAlways,
    /// hotsock with the Redis that syncs once a second.
    RedisEverysec,
    /// `redis-benchmark -t incr` against the `always` Redis: the anchor.
    BenchmarkAlways,
    /// `redis-benchmark -t incr` against the `everysec` Redis.
    BenchmarkEverysec,
}

impl Subject {
    /// Every row, in the table's order.
    pub const ALL: [Subject; 6] = [
        Subject::Memory,
        Subject::Sqlite,
        Subject::RedisAlways,
        Subject::RedisEverysec,
        Subject::BenchmarkAlways,
        Subject::BenchmarkEverysec,
    ];

    /// The row every ratio is taken to.
    pub const ANCHOR: Subject = Subject::BenchmarkAlways;

    /// What the table calls it.
    pub fn label(self) -> &'static str {
        match self {
            Subject::Memory => "hotsock, memory:",
            Subject::Sqlite => "hotsock, SQLite (default)",
            Subject::RedisAlways => "hotsock, Redis fsync always",
            Subject::RedisEverysec => "hotsock, Redis fsync everysec",
            Subject::BenchmarkAlways => "redis-benchmark incr, always",
            Subject::BenchmarkEverysec => "redis-benchmark incr, everysec",
        }
    }

    /// The Redis it needs, if any.
    fn fsync(self) -> Option<Fsync> {
        match self {
            Subject::Memory | Subject::Sqlite => None,
            Subject::RedisAlways | Subject::BenchmarkAlways => Some(Fsync::Always),
            Subject::RedisEverysec | Subject::BenchmarkEverysec => Some(Fsync::Everysec),
        }
    }

    /// Whether redis-benchmark measures it, rather than hotsock.
    fn is_benchmark(self) -> bool {
        matches!(self, Subject::BenchmarkAlways | Subject::BenchmarkEverysec)
    }
}

/// Redis's `appendfsync`: when its append-only file is synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Before the answers of each event-loop pass go out: a write is on
    /// disk when it is acknowledged, as with SQLite's `synchronous = FULL`.
    Always,
    /// Once a second, in the background: up to a second of acknowledged
    /// writes can be lost to a power cut.
    Everysec,
}

impl Fsync {
    fn name(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Everysec => "everysec",
        }
    }
}

/// One measured run of one subject.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Increments acknowledged inside the measured time, per second.
    pub per_s: f64,
    /// Median latency of one increment, microseconds.
    pub p50_us: Option<f64>,
    /// 99th percentile latency, microseconds.
    pub p99_us: Option<f64>,
    /// Server CPU time per increment, microseconds: hotsock's, plus
    /// redis-server's where it is the store; redis-server's alone under
    /// redis-benchmark.
    pub server_cpu_us_per_op: Option<f64>,
    /// The share of the machine's CPU other processes took meanwhile
    /// (hotsock rows only: redis-benchmark is such a process itself). The
    /// kernel's threads that write a synced file's blocks count as others.
    pub other_share: Option<f64>,
    /// Whether that share was over [`crate::cpu::DISTURBED_SHARE`].
    pub disturbed: bool,
    /// Operations that failed (hotsock rows; redis-benchmark stops instead).
    pub failed: u64,
    /// Increments acknowledged over the whole run, warm-up included.
    pub acknowledged: u64,
    /// The counter read back afterwards (hotsock rows), if it could be.
    pub counter: Option<u64>,
    /// Why the counter could not be read back, if it could not.
    pub counter_error: Option<String>,
}

impl Run {
    /// Whether the counter read back differs from the increments
    /// acknowledged; `None` where it was not read.
    pub fn counter_mismatch(&self) -> Option<bool> {
        self.counter.map(|c| c != self.acknowledged)
    }
}

/// One round: every subject once, in `order`.
#[derive(Debug, Serialize)]
pub struct Round {
    /// 1-based.
    pub round: usize,
    /// The order the subjects ran in.
    pub order: Vec<Subject>,
    /// What each measured.
    pub runs: BTreeMap<Subject, Run>,
}

/// One row of the summary: medians over rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// What was measured.
    pub subject: Subject,
    /// Its label.
    pub label: &'static str,
    /// Increments per second.
    pub per_s: Option<f64>,
    /// Median of each round's rate over the anchor's rate.
    pub over_anchor: Option<f64>,
    /// p50 latency, microseconds.
    pub p50_us: Option<f64>,
    /// p99 latency, microseconds.
    pub p99_us: Option<f64>,
    /// Server CPU per increment, microseconds.
    pub server_cpu_us_per_op: Option<f64>,
    /// Failed operations, all rounds.
    pub failed: u64,
    /// Rounds whose counter read back differed from what was acknowledged.
    pub counter_mismatches: usize,
    /// Rounds whose counter was read back.
    pub counters_checked: usize,
    /// Rounds whose counter could not be read back (hotsock rows).
    pub counters_unread: usize,
}

/// What the scenario found: every round, the summary, what was skipped.
#[derive(Debug, Serialize)]
pub struct KeyValue {
    /// Concurrent connections and redis-benchmark clients.
    pub clients: usize,
    /// Measured time of each hotsock run, after [`load::WARMUP`], seconds.
    pub duration_s: f64,
    /// Where SQLite's file and Redis's append-only files were.
    pub data_dir: String,
    /// The command lines, by subject.
    pub commands: BTreeMap<Subject, String>,
    /// Each round's runs.
    pub rounds: Vec<Round>,
    /// Medians over rounds, one per subject measured.
    pub summary: Vec<Summary>,
    /// Why rows are missing, and anything else a reader must know.
    pub notes: Vec<String>,
}

/// A redis-server of the bench's own on a Unix socket, with its
/// append-only file in a directory of its own; killed when dropped.
struct Redis {
    child: Child,
    socket: PathBuf,
    fsync: Fsync,
}

impl Redis {
    /// Starts redis-server with `appendfsync` `fsync`, its files in `dir`,
    /// its socket at `socket`, its log in `log`; waits until it listens.
    fn start(binary: &Path, fsync: Fsync, dir: &Path, socket: &Path, log: &Path) -> Result<Redis> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let _ = std::fs::remove_file(socket);
        let log_file =
            File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(binary);
        command
            .args(["--port", "0", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", fsync.name()])
            .arg("--unixsocket")
            .arg(socket)
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let die_with_us = || {
            // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on the
            // calling process.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            Ok(())
        };
        // SAFETY: the closure runs in the child between fork and exec, and
        // only makes one async-signal-safe system call: redis-server dies
        // with the bench, even one killed outright, rather than lingering.
        unsafe { command.pre_exec(die_with_us) };
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut redis = Redis {
            child,
            socket: socket.to_path_buf(),
            fsync,
        };
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Some(status) = redis.child.try_wait()? {
                bail!(
                    "redis-server (appendfsync {}) exited ({status}) before it listened; see {}",
                    fsync.name(),
                    log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server did not listen on {} within {REDIS_START_TIMEOUT:?}; see {}",
                    socket.display(),
                    log.display()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }

    /// `unix:///…/redis.sock`, for `--keyvalue-store`.
    fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if it has exited.
    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!(
                "redis-server (appendfsync {}) has exited ({status})",
                self.fsync.name()
            ),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A directory of the scenario's own, removed with everything in it when
/// dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(path: PathBuf) -> Result<Scratch> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Looks for `name` on PATH and in the system directories; if it is missing,
/// says so and returns `None`, or fails under `CI=true`.
fn system_tool(name: &str, package: &str) -> Result<Option<PathBuf>> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        let message = format!(
            "{name} is not installed: `make setup` installs Debian's {package} (as root), or run \
             `sudo apt-get install {package}`"
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            bail!("{message}; under CI the key-value bench needs it");
        }
        eprintln!("SKIPPED: {message}; its key-value rows are left out");
    }
    Ok(found)
}

/// The scenario's inputs that do not change from round to round.
struct Setup<'a> {
    programs: Programs,
    logs: &'a Path,
    duration: Duration,
    data: &'a Path,
    redis: BTreeMap<Fsync, Redis>,
    benchmark: Option<PathBuf>,
    /// The last rate redis-benchmark measured, to size its next run.
    benchmark_rate: BTreeMap<Fsync, f64>,
}

/// Runs the scenario: `rounds` rounds of every subject available, each
/// hotsock run `duration` long after the warm-up. SQLite's file and Redis's
/// append-only files go in `out/keyvalue-data` (removed afterwards): the
/// disk the results go to, like the default `.hotsock` in the working
/// directory, not a temporary file system that would make syncing free.
pub fn run(programs: &Programs, rounds: usize, duration: Duration, out: &Path) -> Result<KeyValue> {
    programs.check_kit()?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs)?;
    File::create(logs.join(LOG))?;
    let mut notes = Vec::new();
    let data = std::path::absolute(out.join("keyvalue-data"))?;
    let scratch = Scratch::new(data.clone())?;
    if on_tmpfs(&data) {
        notes.push(format!(
            "{} is on tmpfs: syncing to it costs nothing, so SQLite's and Redis's durable rows read too fast",
            data.display()
        ));
    }
    // Unix socket paths are short (108 bytes): the sockets go in /tmp.
    let sockets = Scratch::new(
        std::env::temp_dir().join(format!("hotsock-bench-kv-{}", std::process::id())),
    )?;
    let mut redis = BTreeMap::new();
    let mut benchmark = None;
    match system_tool("redis-server", "redis-server")? {
        None => notes.push(
            "redis-server is not installed: the Redis and redis-benchmark rows are skipped".into(),
        ),
        Some(binary) => {
            for fsync in [Fsync::Always, Fsync::Everysec] {
                let server = Redis::start(
                    &binary,
                    fsync,
                    &data.join(format!("redis-{}", fsync.name())),
                    &sockets.0.join(format!("redis-{}.sock", fsync.name())),
                    &logs.join(format!("redis-{}.log", fsync.name())),
                )?;
                redis.insert(fsync, server);
            }
            benchmark = system_tool("redis-benchmark", "redis-tools")?;
            if benchmark.is_none() {
                notes.push(
                    "redis-benchmark is not installed: the anchor rows, and every ratio, are skipped"
                        .into(),
                );
            }
        }
    }
    let mut setup = Setup {
        programs: Programs {
            handler: programs.kit.clone(),
            ..programs.clone()
        },
        logs: &logs,
        duration,
        data: &data,
        redis,
        benchmark,
        benchmark_rate: BTreeMap::new(),
    };
    let subjects: Vec<Subject> = Subject::ALL
        .into_iter()
        .filter(|s| setup.available(*s))
        .collect();
    let commands = subjects
        .iter()
        .map(|&s| (s, setup.command_line(s)))
        .collect();
    let mut measured = Vec::new();
    for index in 0..rounds {
        let order: Vec<Subject> = (0..subjects.len())
            .map(|i| subjects[(i + index) % subjects.len()])
            .collect();
        eprintln!(
            "key-value round {}/{rounds}: {}",
            index + 1,
            order
                .iter()
                .map(|s| s.label())
                .collect::<Vec<_>>()
                .join("; ")
        );
        let mut runs = BTreeMap::new();
        for &subject in &order {
            let run = setup.measure(subject, index + 1)?;
            progress(subject, &run);
            runs.insert(subject, run);
        }
        for redis in setup.redis.values_mut() {
            redis.check_alive()?;
        }
        measured.push(Round {
            round: index + 1,
            order,
            runs,
        });
    }
    drop(setup);
    drop(scratch);
    drop(sockets);
    let summary = summarise(&subjects, &measured);
    notes.extend(summary_notes(&summary, &measured));
    Ok(KeyValue {
        clients: CLIENTS,
        duration_s: duration.as_secs_f64(),
        data_dir: data.display().to_string(),
        commands,
        rounds: measured,
        summary,
        notes,
    })
}

impl Setup<'_> {
    fn available(&self, subject: Subject) -> bool {
        match subject.fsync() {
            None => true,
            Some(fsync) if subject.is_benchmark() => {
                self.benchmark.is_some() && self.redis.contains_key(&fsync)
            }
            Some(fsync) => self.redis.contains_key(&fsync),
        }
    }

    /// The arguments after hotsock's usual ones that choose `subject`'s store.
    fn store_args(&self, subject: Subject) -> Vec<String> {
        let mut args = vec!["--keyvalue".to_string(), BUCKET.to_string()];
        match subject {
            Subject::Memory => args.extend(["--keyvalue-store".into(), "memory:".into()]),
            Subject::Sqlite => args.extend([
                "--state-dir".into(),
                self.data.join("state").display().to_string(),
            ]),
            _ => {
                let redis = subject.fsync().and_then(|f| self.redis.get(&f));
                if let Some(redis) = redis {
                    args.extend(["--keyvalue-store".into(), redis.url()]);
                }
            }
        }
        args
    }

    /// `subject`'s command line as it would be typed, for the JSON.
    fn command_line(&self, subject: Subject) -> String {
        if subject.is_benchmark() {
            let socket = subject
                .fsync()
                .and_then(|f| self.redis.get(&f))
                .map_or_else(String::new, |r| r.socket.display().to_string());
            let binary = self
                .benchmark
                .as_deref()
                .map_or_else(String::new, |b| b.display().to_string());
            return format!("{binary} -s {socket} -t incr -c {CLIENTS} -n N --csv");
        }
        let mut command = self
            .programs
            .hotsock_command("127.0.0.1:0", Path::new("ADMIN.sock"));
        command.args(self.store_args(subject));
        servers::command_line(&command)
    }

    /// One run of `subject` in round `round`.
    fn measure(&mut self, subject: Subject, round: usize) -> Result<Run> {
        match subject.fsync() {
            Some(fsync) if subject.is_benchmark() => self.benchmark(fsync),
            _ => self.hotsock(subject, round),
        }
    }

    /// hotsock serving kit.wasm with `subject`'s store, started afresh:
    /// [`CLIENTS`] connections incrementing one key of the round's own.
    fn hotsock(&mut self, subject: Subject, round: usize) -> Result<Run> {
        let mut server = Server::start_with(
            Kind::Hotsock,
            &self.programs,
            &self.logs.join(LOG),
            &self.store_args(subject),
        )?;
        let key = format!("round-{round}");
        let request: Arc<[u8]> = format!("incr {BUCKET} {key}\n").into_bytes().into();
        let mut pids = vec![server.pid()];
        let redis = subject.fsync().and_then(|f| self.redis.get(&f));
        pids.extend(redis.map(Redis::pid));
        let meter = CpuMeter::start_all(&pids);
        let run = load::persistent_with(server.addr, CLIENTS, self.duration, move |stream| {
            increment(stream, &request).map(drop)
        })?;
        let run: Throughput = run.with_cpu(meter.finish());
        let counter = read_counter(server.addr, &key);
        server
            .check_alive()
            .with_context(|| format!("hotsock with {}", subject.label()))?;
        Ok(Run {
            per_s: run.per_s,
            p50_us: Some(run.p50_us),
            p99_us: Some(run.p99_us),
            server_cpu_us_per_op: run.server_cpu_us_per_op,
            other_share: run.cpu.map(|c| c.other_share),
            disturbed: run.cpu.is_some_and(|c| c.disturbed()),
            failed: run.failed,
            acknowledged: run.completed_total,
            counter: counter.as_ref().ok().copied(),
            counter_error: counter.err().map(|e| e.to_string()),
        })
    }

    /// `redis-benchmark -t incr` against the Redis with `fsync`: a short
    /// warm-up run, then one sized to take about the measured time.
    fn benchmark(&mut self, fsync: Fsync) -> Result<Run> {
        let (Some(binary), Some(redis)) = (&self.benchmark, self.redis.get(&fsync)) else {
            bail!("redis-benchmark or its redis-server is missing");
        };
        let guess = self
            .benchmark_rate
            .get(&fsync)
            .copied()
            .unwrap_or(FIRST_GUESS_PER_S);
        let warmup = run_benchmark(binary, &redis.socket, requests(guess, load::WARMUP))?;
        let guess = self.benchmark_rate.get(&fsync).copied().unwrap_or(warmup.0);
        let meter = CpuMeter::start(redis.pid());
        let n = requests(guess, self.duration);
        let (per_s, p50_us, p99_us) = run_benchmark(binary, &redis.socket, n)?;
        let cpu = meter.finish();
        self.benchmark_rate.insert(fsync, per_s);
        Ok(Run {
            per_s,
            p50_us,
            p99_us,
            server_cpu_us_per_op: cpu.map(|c| c.server_s * 1e6 / n as f64),
            other_share: None,
            disturbed: false,
            failed: 0,
            acknowledged: n,
            counter: None,
            counter_error: None,
        })
    }
}

/// Requests for redis-benchmark to take about `time` at `per_s`.
fn requests(per_s: f64, time: Duration) -> u64 {
    let (least, most) = BENCHMARK_REQUESTS;
    ((per_s * time.as_secs_f64()) as u64).clamp(least, most)
}

/// Runs `redis-benchmark -s SOCKET -t incr -c CLIENTS -n N --csv`, killed if
/// it runs far longer than it should; its rate, p50 and p99 (µs).
fn run_benchmark(binary: &Path, socket: &Path, n: u64) -> Result<(f64, Option<f64>, Option<f64>)> {
    let mut child = Command::new(binary)
        .arg("-s")
        .arg(socket)
        .args(["-t", "incr", "-c", &CLIENTS.to_string()])
        .args(["-n", &n.to_string(), "--csv"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let deadline = Instant::now() + BENCHMARK_SLACK;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("redis-benchmark -n {n} was still running after {BENCHMARK_SLACK:?}: killed");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "redis-benchmark failed ({}): {}{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let result =
        parse_benchmark_csv(&stdout).map_err(|e| anyhow::anyhow!("redis-benchmark: {e}"))?;
    Ok((result.per_s, result.p50_us, result.p99_us))
}

/// What `redis-benchmark --csv` reported for INCR.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchmarkCsv {
    /// Requests per second.
    pub per_s: f64,
    /// p50 latency in µs, where the version reports it (Redis 7 does).
    pub p50_us: Option<f64>,
    /// p99 latency in µs, where the version reports it.
    pub p99_us: Option<f64>,
}

/// Reads the INCR line of `redis-benchmark --csv`'s output: a header line
/// naming the columns (`"test","rps",…,"p99_latency_ms",…`; older versions
/// print only `"test","rps"`), and one line per test.
pub fn parse_benchmark_csv(text: &str) -> Result<BenchmarkCsv, String> {
    let fields = |line: &str| -> Vec<String> {
        line.trim()
            .split(',')
            .map(|f| f.trim().trim_matches('"').to_string())
            .collect()
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty()).map(fields);
    let header = lines
        .find(|f| f.first().is_some_and(|f| f == "test"))
        .ok_or_else(|| format!("no header line in {:?}", text.trim()))?;
    let column = |name: &str| header.iter().position(|h| h == name);
    let row = lines
        .find(|f| f.first().is_some_and(|f| f.eq_ignore_ascii_case("incr")))
        .ok_or_else(|| format!("no INCR line in {:?}", text.trim()))?;
    let number = |name: &str| -> Option<f64> {
        row.get(column(name)?)?
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
    };
    let per_s = number("rps").ok_or_else(|| format!("no rps in {:?}", text.trim()))?;
    Ok(BenchmarkCsv {
        per_s,
        p50_us: number("p50_latency_ms").map(|ms| ms * 1000.0),
        p99_us: number("p99_latency_ms").map(|ms| ms * 1000.0),
    })
}

/// Reads the answer of a kit command: one line. Exactly one command is in
/// flight, so nothing follows the line.
fn read_line(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(32);
    let mut buffer = [0; 64];
    loop {
        let n = match stream.read(&mut buffer) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        line.extend_from_slice(&buffer[..n]);
        if line.ends_with(b"\n") {
            return Ok(line);
        }
        if line.len() > 4096 {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "an answer over 4 KiB",
            ));
        }
    }
}

/// Sends `request` (`incr bench KEY\n`) and reads its `value N`.
fn increment(stream: &mut TcpStream, request: &[u8]) -> io::Result<u64> {
    stream.write_all(request)?;
    let line = read_line(stream)?;
    parse_value(&line).ok_or_else(|| {
        io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "`{}` is not `value N`",
                String::from_utf8_lossy(&line).trim()
            ),
        )
    })
}

/// The N of kit's `value N` answer (its line ending included or not).
pub fn parse_value(line: &[u8]) -> Option<u64> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    line.strip_prefix("value ")?.parse().ok()
}

/// The counter `key` in the bucket, read on a connection of its own: 0 if
/// it was never incremented.
fn read_counter(addr: std::net::SocketAddr, key: &str) -> io::Result<u64> {
    let mut stream = load::connect(addr)?;
    stream.write_all(format!("get {BUCKET} {key}\n").as_bytes())?;
    let line = read_line(&mut stream)?;
    if line.trim_ascii() == b"none" {
        return Ok(0);
    }
    parse_value(&line).ok_or_else(|| {
        io::Error::new(
            ErrorKind::InvalidData,
            format!("`{}` answered get", String::from_utf8_lossy(&line).trim()),
        )
    })
}

/// One run's result on stderr, as it comes, with a loud line if the
/// counter is not what was acknowledged.
fn progress(subject: Subject, run: &Run) {
    let us = |v: Option<f64>| v.map_or_else(|| "–".into(), |v| format!("{v:.1}"));
    let cpu = run
        .server_cpu_us_per_op
        .map_or_else(String::new, |us| format!(", server CPU {us:.1} µs/op"));
    let disturbed = match run.other_share {
        Some(share) if run.disturbed => format!(
            "  [disturbed: other processes used {:.0}% of the machine]",
            share * 100.0
        ),
        _ => String::new(),
    };
    eprintln!(
        "  {}: {:.0}/s, p50 {} µs, p99 {} µs, {} failed{cpu}{disturbed}",
        subject.label(),
        run.per_s,
        us(run.p50_us),
        us(run.p99_us),
        run.failed
    );
    if run.counter_mismatch() == Some(true) {
        eprintln!(
            "  !!! {}: the counter reads {} after {} acknowledged increments",
            subject.label(),
            run.counter.unwrap_or(0),
            run.acknowledged
        );
    } else if let Some(error) = &run.counter_error {
        eprintln!(
            "  !!! {}: the counter could not be read back: {error}",
            subject.label()
        );
    }
}

/// The median of each subject's figures, and of each round's ratio to the
/// anchor.
fn summarise(subjects: &[Subject], rounds: &[Round]) -> Vec<Summary> {
    subjects
        .iter()
        .map(|&subject| {
            let runs = || rounds.iter().filter_map(move |r| r.runs.get(&subject));
            let over_anchor = median(rounds.iter().filter_map(|r| {
                let anchor = r.runs.get(&Subject::ANCHOR)?.per_s;
                let run = r.runs.get(&subject)?.per_s;
                (anchor > 0.0).then(|| run / anchor)
            }));
            Summary {
                subject,
                label: subject.label(),
                per_s: median(runs().map(|r| r.per_s)),
                over_anchor,
                p50_us: median(runs().filter_map(|r| r.p50_us)),
                p99_us: median(runs().filter_map(|r| r.p99_us)),
                server_cpu_us_per_op: median(runs().filter_map(|r| r.server_cpu_us_per_op)),
                failed: runs().map(|r| r.failed).sum(),
                counter_mismatches: runs()
                    .filter(|r| r.counter_mismatch() == Some(true))
                    .count(),
                counters_checked: runs().filter(|r| r.counter.is_some()).count(),
                counters_unread: runs().filter(|r| r.counter_error.is_some()).count(),
            }
        })
        .collect()
}

/// What the summary says beyond its table: what SQLite's commit costs, and
/// any counter that did not add up.
fn summary_notes(summary: &[Summary], rounds: &[Round]) -> Vec<String> {
    let mut notes = Vec::new();
    let rate = |subject| {
        summary
            .iter()
            .find(|s| s.subject == subject)
            .and_then(|s| s.per_s)
    };
    if let (Some(memory), Some(sqlite)) = (rate(Subject::Memory), rate(Subject::Sqlite)) {
        let paired = median(rounds.iter().filter_map(|r| {
            let memory = r.runs.get(&Subject::Memory)?.per_s;
            let sqlite = r.runs.get(&Subject::Sqlite)?.per_s;
            (memory > 0.0).then(|| sqlite / memory)
        }));
        notes.push(format!(
            "SQLite commits each increment on its own, synced (WAL, synchronous = FULL): {} µs of wall time per increment against memory's {} µs ({:.2}× memory's rate)",
            report::number(1e6 / sqlite, 1),
            report::number(1e6 / memory, 1),
            paired.unwrap_or(f64::NAN)
        ));
    }
    for s in summary {
        if s.counter_mismatches > 0 {
            notes.push(format!(
                "!!! {}: in {} of {} round(s) the counter read back was not the number of increments acknowledged (see rounds in the JSON)",
                s.label, s.counter_mismatches, s.counters_checked
            ));
        }
        if s.counters_unread > 0 {
            notes.push(format!(
                "!!! {}: in {} round(s) the counter could not be read back (counter_error in the JSON's rounds)",
                s.label, s.counters_unread
            ));
        }
        if s.failed > 0 {
            notes.push(format!("{}: {} increment(s) failed", s.label, s.failed));
        }
    }
    let disturbed: Vec<String> = rounds
        .iter()
        .flat_map(|r| {
            r.runs
                .iter()
                .filter(|(_, run)| run.disturbed)
                .map(move |(s, run)| {
                    let share = run.other_share.unwrap_or(f64::NAN) * 100.0;
                    format!("round {} {} ({share:.0}%)", r.round, s.label())
                })
        })
        .collect();
    if !disturbed.is_empty() {
        notes.push(format!(
            "{} key-value run(s) shared the machine with other busy processes: {}",
            disturbed.len(),
            disturbed.join("; ")
        ));
    }
    notes
}

/// The summary as a plain-text table.
pub fn table(keyvalue: &KeyValue) -> String {
    let header = [
        "key-value increments, 16 conns",
        "incr/s",
        "÷ redis-benchmark",
        "p50 µs",
        "p99 µs",
        "server CPU µs/op",
        "counter = acks",
    ];
    let value =
        |v: Option<f64>, decimals| v.map_or_else(|| "–".into(), |v| report::number(v, decimals));
    let rows: Vec<[String; 7]> = keyvalue
        .summary
        .iter()
        .map(|s| {
            let checked = match (s.counters_checked, s.counter_mismatches) {
                (0, _) => "–".to_string(),
                (n, 0) => format!("✓ {n}/{n}"),
                (n, bad) => format!("✗ {}/{n}", n - bad),
            };
            [
                s.label.to_string(),
                value(s.per_s, 0),
                s.over_anchor
                    .map_or_else(|| "–".into(), |r| format!("{r:.2}×")),
                value(s.p50_us, 1),
                value(s.p99_us, 1),
                value(s.server_cpu_us_per_op, 1),
                checked,
            ]
        })
        .collect();
    report::aligned(&header, &rows, |i| i == 0 || i == 6)
}

/// Whether `path` is on a tmpfs, where syncing costs nothing.
fn on_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value of a plain C struct.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs reads the NUL-terminated path and writes only into
    // `stat`, both alive for the call.
    let done = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    done == 0 && stat.f_type == libc::TMPFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::{BenchmarkCsv, Subject, parse_benchmark_csv, parse_value, requests};
    use std::time::Duration;

    #[test]
    fn kit_values() {
        assert_eq!(parse_value(b"value 42\n"), Some(42));
        assert_eq!(parse_value(b"value 7\r\n"), Some(7));
        assert_eq!(parse_value(b"value 18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_value(b"value -1\n"), None);
        assert_eq!(parse_value(b"error other: down\n"), None);
        assert_eq!(parse_value(b"none\n"), None);
        assert_eq!(parse_value(b"value \n"), None);
    }

    #[test]
    fn redis_benchmark_csv_of_redis_7() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                    \"INCR\",\"38789.76\",\"0.389\",\"0.144\",\"0.383\",\"0.495\",\"0.583\",\"3.215\"\n";
        let csv = parse_benchmark_csv(text).unwrap();
        assert_eq!(csv.per_s, 38789.76);
        assert!((csv.p50_us.unwrap() - 383.0).abs() < 1e-9);
        assert!((csv.p99_us.unwrap() - 583.0).abs() < 1e-9);
    }

    #[test]
    fn redis_benchmark_csv_without_percentiles() {
        // Redis 6 and older print the rate alone.
        let text = "\"test\",\"rps\"\r\n\"INCR\",\"51546.39\"\r\n";
        assert_eq!(
            parse_benchmark_csv(text),
            Ok(BenchmarkCsv {
                per_s: 51546.39,
                p50_us: None,
                p99_us: None
            })
        );
    }

    #[test]
    fn redis_benchmark_csv_that_says_nothing() {
        assert!(parse_benchmark_csv("").is_err());
        assert!(parse_benchmark_csv("Could not connect to Redis at /x.sock").is_err());
        let no_incr = "\"test\",\"rps\"\n\"SET\",\"1000.00\"\n";
        assert!(parse_benchmark_csv(no_incr).unwrap_err().contains("INCR"));
        let no_rate = "\"test\",\"rps\"\n\"INCR\",\"fast\"\n";
        assert!(parse_benchmark_csv(no_rate).unwrap_err().contains("rps"));
    }

    #[test]
    fn benchmark_runs_are_sized_from_the_last_rate() {
        assert_eq!(requests(40_000.0, Duration::from_millis(1500)), 60_000);
        assert_eq!(requests(100.0, Duration::from_secs(1)), 1_000);
        assert_eq!(requests(1e9, Duration::from_secs(10)), 5_000_000);
    }

    #[test]
    fn the_anchor_is_durable_redis_benchmark() {
        assert!(Subject::ANCHOR.is_benchmark());
        assert_eq!(Subject::ANCHOR.fsync(), Some(super::Fsync::Always));
        assert_eq!(Subject::ALL.iter().filter(|s| s.is_benchmark()).count(), 2);
    }
}
