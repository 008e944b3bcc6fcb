//! hotsock-bench, run by `make bench`: hotsock against the same
//! thread-per-connection echo server in plain Rust (`native-echo`) and in
//! Python (`socketserver.ThreadingTCPServer`), on loopback, in one run; then
//! increments per second through each key-value store, against
//! `redis-benchmark` on the same machine; then native TLS against plaintext
//! and against HAProxy terminating TLS.
//!
//! # Layout
//!
//! - [`cpu`]: where the CPU went during a run: server, clients, anything else.
//! - [`servers`]: the three servers as child processes: their command lines
//!   and logs; started, watched and stopped through testkit.
//! - [`load`]: the load generator: blocking clients, one thread per
//!   connection; round trips and new connections.
//! - [`memory`]: memory per idle connection: RSS, PSS and mappings.
//! - [`instantiate`]: the in-process per-connection instantiate micro-benchmark.
//! - [`instructions`]: user-space instructions per round trip, under callgrind.
//! - [`swap`]: the hot swap under load, hotsock only.
//! - [`keyvalue`]: increments per second through each key-value store,
//!   against `redis-benchmark -t incr` on the same machine.
//! - [`tls`]: new TLS connections and round trips over TLS: hotsock's own
//!   TLS against plaintext, and against HAProxy terminating TLS.
//! - [`report`]: statistics, the summary rows and their targets, the table.
//! - [`soak`]: `--soak`: many idle connections held at once.
//! - [`fleet`]: `--fleet`: one hotsock process, two sharing a port, three
//!   behind HAProxy; a binary upgrade under load.
//!
//! A shared two-core machine is noisy, so each round starts the three
//! servers afresh and measures them one after the other, scenario by
//! scenario, in an order that rotates from round to round; the summary is
//! the median over rounds.

mod cpu;
mod fleet;
mod instantiate;
mod instructions;
mod keyvalue;
mod load;
mod memory;
mod report;
mod servers;
mod soak;
mod swap;
mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use hotsock::units::parse_duration;
use serde::Serialize;
use serde_json::json;

use cpu::{CpuMeter, CpuUse};
use instantiate::{InstantiateTime, Instantiator};
use instructions::Instructions;
use load::Throughput;
use memory::IdleMemory;
use report::{Machine, Row, Target, median};
use servers::{Kind, Programs, Server};
use swap::HotSwap;

/// Persistent connections in the round-trip scenarios.
const PERSISTENT: [usize; 3] = [1, 10, 100];

/// Client threads in the new-connection scenario: enough to keep two cores
/// busy accepting, few enough not to measure the client's own scheduling.
const NEW_CONNECTION_CLIENTS: usize = 8;

/// Open files the bench needs at once: the idle connections, plus the
/// servers' listeners and pipes, plus room.
const OPEN_FILES_NEEDED: u64 = memory::IDLE_CONNECTIONS as u64 + 200;

/// Most memory an idle connection may cost hotsock beyond what it costs
/// native-echo, as RSS and as PSS, KiB (issue 24): a third of what it was,
/// so that one machine holds three times the idle clients.
const IDLE_MEMORY_BEYOND_NATIVE_KIB: f64 = 14.0;

/// Most memory mappings an idle connection may add to hotsock (issue 24):
/// under the default `vm.max_map_count` (65,530) that leaves room for
/// 14,000 connections, as `make soak` holds.
const IDLE_MAPPINGS: f64 = 4.5;

/// Most user-space instructions an echo round trip may cost hotsock
/// (issue 24): about 1,900 fewer than the 6,900 it took, the sandbox's
/// crossings made cheaper; native-echo takes about 900.
const INSTRUCTIONS_PER_ROUND_TRIP: f64 = 5000.0;

/// Longest `--duration` accepted: every loop here stays bounded.
const MAX_DURATION: Duration = Duration::from_secs(600);

/// Where the results go unless `--out` is given ([`fleet::DEFAULT_OUT`]
/// with `--fleet`).
const DEFAULT_OUT: &str = "target/bench";

/// Rounds unless `--rounds` is given ([`fleet::DEFAULT_ROUNDS`] with
/// `--fleet`). Many short rounds rather than a few long ones: on a shared
/// machine the noise comes and goes over seconds, and the median of ten
/// paired ratios rides it out better than that of five.
const DEFAULT_ROUNDS: usize = 10;

/// What `--help` shows after the options.
const AFTER_HELP: &str = "\
Paths are relative to the current directory: run from the repository root.
`make build` builds hotsock and the handlers; `cargo build --release -p
hotsock-bench` builds this and native-echo.

Scenarios, per server and round:
  idle memory        RSS (VmRSS), PSS (smaps_rollup) and memory mappings
                     (lines of /proc/PID/maps) before and after opening 1000
                     connections that each make one round trip and then
                     stay idle
  round trips        1, 10 and 100 persistent connections, one 64-byte
                     message in flight on each: rate, p50 and p99 latency
  new connections    8 clients, each connect + one round trip + close, in a loop
and once:
  instantiate        in process: hotsock's per-connection store + instance,
                     20,000 samples (each round)
  instructions       hotsock and native-echo under valgrind's callgrind: one
                     connection, 500 round trips of a 64-byte line, then
                     3000 counted; user-space instructions per round trip.
                     hotsock with --max-connections 4 and a code cache filled
                     first; dumps in OUT/callgrind. Skipped, with a note,
                     without valgrind
  hot swap           hotsock only: the new-connection loop for 6 s, swapping
                     to slow-echo at 2 s and back at 4 s via the admin API;
                     every connection goes to OUT/swap.csv
then, in --rounds rounds of its own:
  key-value          hotsock serving the kit fixture with each store (memory:,
                     the default SQLite, Redis with appendfsync always and
                     everysec), 16 connections each sending `incr bench KEY`;
                     then `redis-benchmark -t incr -c 16` on each Redis, the
                     anchor; in an order that rotates; the counter read
                     back is checked against the increments acknowledged.
                     Needs redis-server and redis-benchmark (skipped without,
                     unless CI=true)
then, in --rounds rounds of its own (at most 5):
  TLS                hotsock in plaintext, hotsock with --tls-cert/--tls-key,
                     and HAProxy terminating TLS in front of hotsock
                     --proxy-protocol, started afresh each round: 10
                     persistent connections' round trips, then 8 clients'
                     new connections (connect, full handshake, one round
                     trip, close), in an order that rotates. ECDSA P-256
                     certificates made at start; a rustls client with
                     resumption off. HAProxy's column is skipped without it,
                     unless CI=true

With --soak, per server: open N connections one after the other, each with a
round trip; once all are open, a round trip on every one again; report the
time to open, RSS, memory mappings and threads per connection. Writes
OUT/soak.json; fails if any connection was not answered.

With --fleet, per round: the three set-ups started afresh, each through 10
persistent connections' round trips and 8 clients' new connections, in an
order that rotates; CPU per operation is that of every hotsock process and
HAProxy. Then once, behind HAProxy: SIGUSR2 to each process in turn under
load, counting failed operations. HAProxy runs deploy/haproxy.cfg with its
ports replaced. Writes OUT/fleet.json.

With --keyvalue, only the key-value scenario: 5 rounds unless --rounds says
otherwise. Writes OUT/keyvalue.json.

With --tls, only the TLS scenario: 5 rounds unless --rounds says otherwise.
Writes OUT/tls.json.

Targets are reported with ✓ or ✗; a miss does not fail the run.";

/// hotsock against the same thread-per-connection echo server in plain Rust
/// (native-echo) and in Python (socketserver.ThreadingTCPServer). Talks to
/// 127.0.0.1 only. `make bench` builds everything and runs it.
#[derive(Debug, Parser)]
#[command(name = "hotsock-bench", after_help = AFTER_HELP)]
struct Options {
    /// where bench.json, swap.csv and the servers' stderr (logs/) go
    #[arg(long, value_name = "DIR", default_value = DEFAULT_OUT)]
    out: PathBuf,
    /// rounds; each starts the three servers afresh and measures them in
    /// turn, in an order that rotates from round to round; the table shows
    /// medians, and the median of each round's ratios
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ROUNDS, value_parser = at_least_one)]
    rounds: usize,
    /// measured time of each throughput run, after a 0.5s warm-up: 3s,
    /// 500ms, 1.5s
    #[arg(long, value_name = "TIME", default_value = "1.5s", value_parser = duration)]
    duration: Duration,
    #[command(flatten)]
    programs: Programs,
    /// run only the soak instead: N idle connections held at once on each
    /// server (`make soak` holds 14000)
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    soak: Option<usize>,
    /// run only the fleet bench instead (`make bench-fleet`): hotsock as one
    /// process, two with --reuse-port, three behind HAProxy; then a binary
    /// upgrade under load. Its --out defaults to target/bench-fleet,
    /// --rounds to 5
    #[arg(long, conflicts_with = "soak")]
    fleet: bool,
    /// run only the key-value scenario instead: increments/s through each
    /// store against redis-benchmark. --rounds defaults to 5
    #[arg(long, conflicts_with_all = ["soak", "fleet"])]
    keyvalue: bool,
    /// run only the TLS scenario instead: hotsock's own TLS against
    /// plaintext and against HAProxy terminating TLS. --rounds defaults to 5
    #[arg(long, conflicts_with_all = ["soak", "fleet", "keyvalue"])]
    tls: bool,
}

impl Options {
    /// Parses `args`, the program's name first. The fleet bench has
    /// defaults of its own for `--out` and `--rounds`, unless they are given.
    fn parse_args<I, T>(args: I) -> Result<Options, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Options::command().try_get_matches_from(args)?;
        let mut options = Options::from_arg_matches(&matches)?;
        let defaulted = |id| matches.value_source(id) == Some(ValueSource::DefaultValue);
        if options.fleet {
            if defaulted("out") {
                options.out = fleet::DEFAULT_OUT.into();
            }
            if defaulted("rounds") {
                options.rounds = fleet::DEFAULT_ROUNDS;
            }
        }
        if options.keyvalue && defaulted("rounds") {
            options.rounds = keyvalue::DEFAULT_ROUNDS;
        }
        if options.tls && defaulted("rounds") {
            options.rounds = tls::DEFAULT_ROUNDS;
        }
        Ok(options)
    }
}

/// `--rounds` and `--soak`: a whole number, at least 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    text.parse()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| "expected a whole number, at least 1".into())
}

/// `--duration`: `3s`, `500ms`, `1.5s`, `1m` (hotsock's
/// [`parse_duration`]); a bare number is seconds. Above zero, and at most
/// [`MAX_DURATION`].
fn duration(text: &str) -> Result<Duration, String> {
    let text = match text.trim().parse::<f64>() {
        Ok(_) => format!("{}s", text.trim()),
        Err(_) => text.to_string(),
    };
    let duration: Duration = parse_duration(&text)?.into();
    if duration.is_zero() || duration > MAX_DURATION {
        return Err(format!(
            "expected a time above zero and at most {}s, such as 3s or 500ms",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(duration)
}

fn main() -> ExitCode {
    let options = Options::parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hotsock-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the open files limit as hotsock does: the bench holds 1000+
/// sockets at once (more in the soak), and so do the servers, which inherit
/// the limit.
fn raise_open_files_limit(needed: u64) -> Result<u64> {
    let soft =
        hotsock::sys::raise_open_file_limit().context("cannot raise the open files limit")?;
    ensure!(
        soft >= needed,
        "the open files limit is {soft} (`ulimit -Hn`), and the bench needs {needed}: raise the hard limit"
    );
    Ok(soft)
}

/// `--soak N`: each server in turn holds N idle connections.
fn run_soak(options: &Options, connections: usize) -> Result<()> {
    let programs = &options.programs;
    programs.check()?;
    let logs = options.out.join("logs");
    servers::reset_logs(&logs)?;
    let open_files = raise_open_files_limit(connections as u64 + 200)?;
    let machine = Machine::detect(open_files);
    let mut soaks = Vec::new();
    for kind in Kind::ALL {
        eprintln!("soak: {connections} connections held by {}", kind.name());
        let extra = ["--max-connections".to_string(), connections.to_string()];
        let extra: &[String] = match kind {
            Kind::Hotsock => &extra,
            _ => &[],
        };
        let mut server =
            Server::start_with(kind, programs, &servers::log_path(&logs, kind), extra)?;
        let soak = soak::run(&mut server, connections)?;
        eprint!("{}", soak::table(std::slice::from_ref(&soak)));
        soaks.push(soak);
    }
    println!();
    println!(
        "hotsock soak, {}; {connections} idle connections per server",
        machine.describe()
    );
    print!("{}", soak::table(&soaks));
    for (path, lines) in stderr_lines(&logs, servers::log_names()) {
        println!("note: {path} has {lines} line(s) of server stderr");
    }
    let json = json!({ "machine": machine, "connections": connections, "servers": soaks });
    let path = report::write_json(&options.out, "soak.json", &json)?;
    println!("wrote {}", path.display());
    let short: Vec<_> = soaks
        .iter()
        .filter(|s| s.fell_short())
        .map(|s| s.server.name())
        .collect();
    ensure!(
        short.is_empty(),
        "not every connection was opened and answered on: {}",
        short.join(", ")
    );
    Ok(())
}

/// What one round measured on one server.
#[derive(Debug, Default, Serialize)]
struct ServerRound {
    idle_memory: Option<IdleMemory>,
    /// One per entry of [`PERSISTENT`].
    round_trips: Vec<Throughput>,
    new_connections: Option<Throughput>,
}

/// One round: every server through every scenario, and the micro-benchmark.
#[derive(Debug, Serialize)]
struct Round {
    round: usize,
    order: Vec<Kind>,
    instantiate: InstantiateTime,
    servers: BTreeMap<Kind, ServerRound>,
}

fn run(options: &Options) -> Result<()> {
    if let Some(connections) = options.soak {
        return run_soak(options, connections);
    }
    if options.fleet {
        return fleet::run(options);
    }
    if options.keyvalue {
        return run_keyvalue(options);
    }
    if options.tls {
        return run_tls(options);
    }
    let programs = &options.programs;
    programs.check()?;
    programs.check_kit()?;
    let logs = options.out.join("logs");
    servers::reset_logs(&logs)?;
    let open_files = raise_open_files_limit(OPEN_FILES_NEEDED)?;
    let machine = Machine::detect(open_files);
    eprintln!(
        "hotsock-bench: {} round(s), {:?} per throughput run; about {} minutes",
        options.rounds,
        options.duration,
        estimate_minutes(options)
    );
    eprintln!(
        "compiling {} for the instantiate micro-benchmark",
        programs.handler.display()
    );
    let instantiator = Instantiator::load(&programs.handler)?;
    let mut rounds = Vec::new();
    for index in 0..options.rounds {
        rounds.push(round(index, options, &instantiator, &logs)?);
    }
    // Its instance pool is sized for 1000 connections: free it before the swap.
    drop(instantiator);
    eprintln!("instructions per round trip, under callgrind");
    let instructions = instructions::run(programs, &options.out.join("callgrind"), &logs)?;
    eprintln!("hot swap under load (hotsock only)");
    let swap = swap::run(
        programs,
        &logs.join("hotsock-swap.stderr"),
        &options.out.join("swap.csv"),
    )?;
    eprintln!("key-value increments, {} round(s)", options.rounds);
    let keyvalue = keyvalue::run(programs, options.rounds, options.duration, &options.out)?;
    let tls_rounds = options.rounds.min(tls::DEFAULT_ROUNDS);
    eprintln!("TLS, {tls_rounds} round(s)");
    let tls = tls::run(programs, tls_rounds, options.duration, &options.out)?;

    let rows = summary(&rounds, &swap, &instructions);
    let (met, targets) = rows
        .iter()
        .flat_map(|row| row.targets.iter().map(|&t| row.met(t)))
        .fold((0, 0), |(met, all), m| {
            (met + usize::from(m == Some(true)), all + 1)
        });
    let notes = notes(options, &rounds, &instructions);
    let stderr_lines = stderr_lines(
        &logs,
        servers::log_names().into_iter().chain(tls::log_names()),
    );
    print_report(
        &machine,
        &rows,
        (met, targets),
        &swap,
        &notes,
        &stderr_lines,
        options,
    );
    print_keyvalue(&keyvalue);
    print_tls(&tls);

    let json = json!({
        "machine": machine,
        "config": {
            "rounds": options.rounds,
            "duration_s": options.duration.as_secs_f64(),
            "warmup_s": load::WARMUP.as_secs_f64(),
            "message_bytes": load::MESSAGE.len(),
            "reply_bytes": load::REPLY_LEN,
            "persistent_connections": PERSISTENT,
            "new_connection_clients": NEW_CONNECTION_CLIENTS,
            "idle_connections": memory::IDLE_CONNECTIONS,
            "commands": Kind::ALL.map(|k| (k.name(), programs.command_line(k))).into_iter().collect::<BTreeMap<_, _>>(),
        },
        "notes": notes,
        "summary": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "targets_met": met,
        "targets": targets,
        "rounds": rounds,
        "swap": swap,
        "instructions": instructions,
        "keyvalue": keyvalue,
        "tls": tls,
        "server_stderr_lines": stderr_lines.into_iter().collect::<BTreeMap<_, _>>(),
    });
    let path = report::write_json(&options.out, "bench.json", &json)?;
    println!("\nwrote {} and {}", path.display(), swap.timeline_csv);
    Ok(())
}

/// `--keyvalue`: the key-value scenario alone.
fn run_keyvalue(options: &Options) -> Result<()> {
    let open_files = raise_open_files_limit(keyvalue::CLIENTS as u64 + 200)?;
    let machine = Machine::detect(open_files);
    eprintln!(
        "hotsock-bench --keyvalue: {} round(s), {:?} per hotsock run; about {} minute(s)",
        options.rounds,
        options.duration,
        (keyvalue_seconds(options) / 60.0).ceil()
    );
    let keyvalue = keyvalue::run(
        &options.programs,
        options.rounds,
        options.duration,
        &options.out,
    )?;
    println!();
    println!("hotsock key-value bench, {}", machine.describe());
    print_keyvalue(&keyvalue);
    for (path, lines) in stderr_lines(&options.out.join("logs"), [keyvalue::LOG]) {
        println!("note: {path} has {lines} line(s) of server stderr");
    }
    let json = json!({ "machine": machine, "keyvalue": keyvalue });
    let path = report::write_json(&options.out, "keyvalue.json", &json)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// `--tls`: the TLS scenario alone.
fn run_tls(options: &Options) -> Result<()> {
    let open_files = raise_open_files_limit(200)?;
    let machine = Machine::detect(open_files);
    eprintln!(
        "hotsock-bench --tls: {} round(s), {:?} per run; about {} minute(s)",
        options.rounds,
        options.duration,
        (tls::estimate_seconds(options.rounds, options.duration) / 60.0).ceil()
    );
    let tls = tls::run(
        &options.programs,
        options.rounds,
        options.duration,
        &options.out,
    )?;
    println!();
    println!("hotsock TLS bench, {}", machine.describe());
    print_tls(&tls);
    for (path, lines) in stderr_lines(&options.out.join("logs"), tls::log_names()) {
        println!("note: {path} has {lines} line(s) of server stderr");
    }
    let json = json!({ "machine": machine, "tls": tls });
    let path = report::write_json(&options.out, "tls.json", &json)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The TLS table and its notes, after the key-value one.
fn print_tls(tls: &tls::Tls) {
    println!();
    print!("{}", tls::table(tls));
    println!();
    for note in tls::method_notes(tls) {
        println!("note: {note}");
    }
}

/// The key-value table and its notes, after the main report.
fn print_keyvalue(keyvalue: &keyvalue::KeyValue) {
    println!();
    print!("{}", keyvalue::table(keyvalue));
    println!();
    println!(
        "note: key-value: medians over {} round(s); ÷ redis-benchmark is the median of each round's ratio to `redis-benchmark -t incr -c {}` on the Redis with appendfsync always",
        keyvalue.rounds.len(),
        keyvalue.clients
    );
    for note in &keyvalue.notes {
        println!("note: key-value: {note}");
    }
}

/// A rough time for the key-value scenario: four hotsock runs (with a
/// start each) and two redis-benchmark runs a round.
fn keyvalue_seconds(options: &Options) -> f64 {
    let hotsock = 4.0 * ((options.duration + load::WARMUP).as_secs_f64() + 0.5);
    let benchmark = 2.0 * (options.duration + load::WARMUP).as_secs_f64();
    (hotsock + benchmark) * options.rounds as f64
}

/// A rough run time, so whoever started it knows what to expect.
fn estimate_minutes(options: &Options) -> u64 {
    let throughput_runs = (PERSISTENT.len() + 1) as f64 * 3.0;
    let per_round = throughput_runs * (options.duration + load::WARMUP).as_secs_f64()
        + 3.0 * 3.0 * memory::SETTLE.as_secs_f64()
        + 5.0;
    let tls = tls::estimate_seconds(options.rounds.min(tls::DEFAULT_ROUNDS), options.duration);
    // hotsock starts in about 20 s under callgrind, native-echo in a few.
    let instructions = 40.0;
    ((per_round * options.rounds as f64 + 10.0 + instructions + keyvalue_seconds(options) + tls)
        / 60.0)
        .ceil() as u64
}

/// One round: start the servers, run each scenario on each in turn, stop them.
fn round(
    index: usize,
    options: &Options,
    instantiator: &Instantiator,
    logs: &std::path::Path,
) -> Result<Round> {
    let order: Vec<Kind> = (0..Kind::ALL.len())
        .map(|i| Kind::ALL[(i + index) % Kind::ALL.len()])
        .collect();
    let names: Vec<&str> = order.iter().map(|k| k.name()).collect();
    eprintln!(
        "round {}/{}: {}",
        index + 1,
        options.rounds,
        names.join(", ")
    );
    let mut servers = order
        .iter()
        .map(|&kind| Server::start(kind, &options.programs, &servers::log_path(logs, kind)))
        .collect::<Result<Vec<_>>>()?;
    let mut results: BTreeMap<Kind, ServerRound> =
        order.iter().map(|&k| (k, ServerRound::default())).collect();

    // The three servers sit idle meanwhile, as they do between scenarios.
    let instantiate = instantiator.measure()?;
    eprintln!(
        "  instantiate: p50 {:.2} µs, p99 {:.2} µs",
        instantiate.p50_us, instantiate.p99_us
    );
    // Memory first, on fresh servers: the reading before is the server's
    // own, not what earlier scenarios left behind.
    for server in &servers {
        let idle = memory::idle_memory(server)?;
        eprintln!(
            "  idle memory, {}: {:.1} KiB RSS, {:.1} KiB PSS, {:.2} mappings per connection ({} open, {} failed)",
            server.kind.name(),
            idle.per_connection_kib,
            idle.pss_per_connection_kib,
            idle.maps_per_connection,
            idle.connections,
            idle.failed
        );
        results.entry(server.kind).or_default().idle_memory = Some(idle);
    }
    for clients in PERSISTENT {
        for server in &servers {
            let meter = CpuMeter::start(server.pid());
            let run = load::persistent(server.addr, clients, options.duration)?;
            let run = run.with_cpu(meter.finish());
            progress(
                &format!("round trips, {clients} conn(s)"),
                server.kind.name(),
                &run,
            );
            results
                .entry(server.kind)
                .or_default()
                .round_trips
                .push(run);
        }
    }
    for server in &servers {
        let meter = CpuMeter::start(server.pid());
        let run = load::new_connections(server.addr, NEW_CONNECTION_CLIENTS, options.duration)?;
        let run = run.with_cpu(meter.finish());
        progress("new connections", server.kind.name(), &run);
        results.entry(server.kind).or_default().new_connections = Some(run);
    }
    for server in &mut servers {
        server.check_alive()?;
    }
    Ok(Round {
        round: index + 1,
        order,
        instantiate,
        servers: results,
    })
}

/// One throughput run's result on stderr, as it comes, flagged if other
/// processes took a share of the CPU meanwhile; `server` names what ran.
fn progress(scenario: &str, server: &str, run: &Throughput) {
    let cpu = run
        .server_cpu_us_per_op
        .map_or_else(String::new, |us| format!(", server CPU {us:.1} µs/op"));
    let disturbed = match run.cpu {
        Some(cpu) if cpu.disturbed() => format!(
            "  [disturbed: other processes used {:.0}% of the machine]",
            cpu.other_share * 100.0
        ),
        _ => String::new(),
    };
    eprintln!(
        "  {scenario}, {server}: {:.0}/s, p50 {:.1} µs, p99 {:.1} µs, {} failed{cpu}{disturbed}",
        run.per_s, run.p50_us, run.p99_us, run.failed
    );
}

/// Throughput runs during which other processes took a share of the CPU:
/// (round, server, scenario, share).
fn disturbed_runs(rounds: &[Round]) -> Vec<(usize, Kind, String, f64)> {
    let mut found = Vec::new();
    for round in rounds {
        for (&kind, result) in &round.servers {
            let runs = PERSISTENT
                .iter()
                .map(|c| format!("round trips, {c} conn(s)"))
                .zip(&result.round_trips)
                .chain(
                    result
                        .new_connections
                        .iter()
                        .map(|r| ("new connections".to_string(), r)),
                );
            for (scenario, run) in runs {
                if let Some(cpu) = run.cpu.filter(CpuUse::disturbed) {
                    found.push((round.round, kind, scenario, cpu.other_share));
                }
            }
        }
    }
    found
}

/// The summary rows: the median over rounds of each metric, with targets.
fn summary(rounds: &[Round], swap: &HotSwap, instructions: &Instructions) -> Vec<Row> {
    let per_server = |f: &dyn Fn(&ServerRound) -> Option<f64>| {
        Kind::ALL.map(|kind| {
            median(
                rounds
                    .iter()
                    .filter_map(|r| r.servers.get(&kind).and_then(f)),
            )
        })
    };
    // Each round measures the servers back to back, so a ratio within a round
    // compares them under that round's conditions: the median of those
    // ratios is steadier on a noisy machine than the ratio of the medians.
    let paired = |f: &dyn Fn(&ServerRound) -> Option<f64>| {
        [Kind::Native, Kind::Python].map(|other| {
            median(rounds.iter().filter_map(|r| {
                let hotsock = r.servers.get(&Kind::Hotsock).and_then(f)?;
                let other = r.servers.get(&other).and_then(f)?;
                (other != 0.0).then(|| hotsock / other)
            }))
        })
    };
    let row = |key: String, label: &str, unit, f: &dyn Fn(&ServerRound) -> Option<f64>| {
        Row::new(key, label, unit, per_server(f)).ratios(paired(f))
    };
    let hotsock_only = |v: Option<f64>| [v, None, None];
    let mut rows = Vec::new();
    for (i, clients) in PERSISTENT.into_iter().enumerate() {
        let trips = move |s: &ServerRound| s.round_trips.get(i).cloned();
        let label = |what: &str| match clients {
            1 => format!("{what}, 1 conn"),
            n => format!("{what}, {n} conns"),
        };
        let mut rate = row(
            format!("round_trips_per_s_{clients}"),
            &label("round trips/s"),
            "1/s",
            &|s| trips(s).map(|t| t.per_s),
        );
        // Issue 24 asks 0.95× native at 10 connections; 100 keeps 0.90×.
        match clients {
            10 => rate = rate.target(Target::OverNativeAtLeast(0.95)),
            100 => rate = rate.target(Target::OverNativeAtLeast(0.90)),
            _ => {}
        }
        if clients >= 10 {
            rate = rate.target(Target::OverPythonAtLeast(5.0));
        }
        rows.push(rate);
        rows.push(
            row(
                format!("round_trip_p50_us_{clients}"),
                &label("  p50 latency µs"),
                "µs",
                &|s| trips(s).map(|t| t.p50_us),
            )
            .decimals(1),
        );
        rows.push(
            row(
                format!("round_trip_p99_us_{clients}"),
                &label("  p99 latency µs"),
                "µs",
                &|s| trips(s).map(|t| t.p99_us),
            )
            .decimals(1),
        );
        let mut cpu = row(
            format!("round_trip_server_cpu_us_{clients}"),
            &label("  server CPU µs/op"),
            "µs",
            &|s| trips(s).and_then(|t| t.server_cpu_us_per_op),
        )
        .decimals(1);
        if clients == 10 {
            cpu = cpu.target(Target::OverNativeAtMost(1.10));
        }
        rows.push(cpu);
    }
    let new = |s: &ServerRound| s.new_connections.clone();
    rows.push(
        row(
            "new_connections_per_s".into(),
            &format!("new connections/s, {NEW_CONNECTION_CLIENTS} clients"),
            "1/s",
            &|s| new(s).map(|t| t.per_s),
        )
        .target(Target::OverNativeAtLeast(1.5))
        .target(Target::OverPythonAtLeast(5.0)),
    );
    rows.push(
        row(
            "new_connection_p50_us".into(),
            "  connect→reply p50 µs",
            "µs",
            &|s| new(s).map(|t| t.p50_us),
        )
        .decimals(1),
    );
    rows.push(
        row(
            "new_connection_p99_us".into(),
            "  connect→reply p99 µs",
            "µs",
            &|s| new(s).map(|t| t.p99_us),
        )
        .decimals(1),
    );
    rows.push(
        row(
            "new_connection_server_cpu_us".into(),
            "  server CPU µs/op",
            "µs",
            &|s| new(s).and_then(|t| t.server_cpu_us_per_op),
        )
        .decimals(1),
    );
    // Failures are summed, not a median: any one matters.
    let failed = Kind::ALL.map(|kind| {
        let sum: u64 = rounds
            .iter()
            .filter_map(|r| r.servers.get(&kind))
            .map(|s| {
                s.round_trips.iter().map(|t| t.failed).sum::<u64>()
                    + s.new_connections.as_ref().map_or(0, |t| t.failed)
                    + s.idle_memory.as_ref().map_or(0, |m| m.failed)
            })
            .sum();
        Some(sum as f64)
    });
    rows.push(Row::new(
        "failed",
        "failed ops, all rounds (count)",
        "count",
        failed,
    ));
    let idle = |f: fn(&IdleMemory) -> f64| per_server(&|s| s.idle_memory.as_ref().map(f));
    // Beyond native: the sandbox's own cost per connection, which is what
    // the target bounds (native's thread and socket buffers are the floor).
    let beyond =
        |values: [Option<f64>; 3]| hotsock_only(values[0].zip(values[1]).map(|(h, n)| h - n));
    let rss = idle(|m| m.per_connection_kib);
    rows.push(
        Row::new(
            "idle_memory_kib",
            "memory per idle conn, RSS KiB",
            "KiB",
            rss,
        )
        .decimals(1),
    );
    rows.push(
        Row::new(
            "idle_memory_beyond_native_kib",
            "  beyond native KiB/conn",
            "KiB",
            beyond(rss),
        )
        .decimals(1)
        .target(Target::AtMost(IDLE_MEMORY_BEYOND_NATIVE_KIB)),
    );
    let pss = idle(|m| m.pss_per_connection_kib);
    rows.push(
        Row::new(
            "idle_memory_pss_kib",
            "memory per idle conn, PSS KiB",
            "KiB",
            pss,
        )
        .decimals(1),
    );
    rows.push(
        Row::new(
            "idle_memory_pss_beyond_native_kib",
            "  beyond native KiB/conn",
            "KiB",
            beyond(pss),
        )
        .decimals(1)
        .target(Target::AtMost(IDLE_MEMORY_BEYOND_NATIVE_KIB)),
    );
    rows.push(
        Row::new(
            "idle_mappings",
            "mappings per idle conn",
            "mappings",
            idle(|m| m.maps_per_connection),
        )
        .decimals(2)
        .target(Target::AtMost(IDLE_MAPPINGS)),
    );
    rows.push(
        Row::new(
            "instructions_per_round_trip",
            "instructions per round trip",
            "instructions",
            Kind::ALL.map(|kind| instructions.per_round_trip(kind)),
        )
        .target(Target::AtMost(INSTRUCTIONS_PER_ROUND_TRIP)),
    );
    let instantiate =
        |f: fn(&InstantiateTime) -> f64| median(rounds.iter().map(|r| f(&r.instantiate)));
    rows.push(
        Row::new(
            "instantiate_p50_us",
            "instantiate p50 µs",
            "µs",
            hotsock_only(instantiate(|i| i.p50_us)),
        )
        .decimals(2)
        .target(Target::AtMost(6.0)),
    );
    rows.push(
        Row::new(
            "instantiate_p99_us",
            "instantiate p99 µs",
            "µs",
            hotsock_only(instantiate(|i| i.p99_us)),
        )
        .decimals(2),
    );
    rows.push(
        Row::new(
            "swap_failed",
            "hot swap: failed conns",
            "count",
            hotsock_only(Some(swap.failed as f64)),
        )
        .target(Target::AtMost(0.0)),
    );
    rows.push(
        Row::new(
            "swap_steady_p99_us",
            "  steady-state p99 µs",
            "µs",
            hotsock_only(Some(swap.steady.p99_us)),
        )
        .decimals(1),
    );
    rows.push(
        Row::new(
            "swap_window_p99_us",
            "  p99 during swaps µs",
            "µs",
            hotsock_only(Some(swap.in_windows.p99_us)),
        )
        .decimals(1),
    );
    rows.push(
        Row::new(
            "swap_p99_ratio",
            "  during / steady p99",
            "ratio",
            hotsock_only(Some(swap.p99_ratio)),
        )
        .decimals(2)
        .target(Target::AtMost(2.0)),
    );
    rows
}

/// What a reader needs to know to read the numbers right.
fn notes(options: &Options, rounds: &[Round], instructions: &Instructions) -> Vec<String> {
    let mut notes = vec![
        format!(
            "medians over {} round(s); a ratio is the median of each round's ratio (the servers measured back to back); every round's values are in bench.json",
            options.rounds
        ),
        "hotsock runs with RUST_LOG=warn: its per-connection info logging is off, as the other two servers log nothing per connection".into(),
        "the load generator shares the machine's cores with the server under test, alike for all three servers".into(),
        format!(
            "throughput runs: {:?} warm-up, then {:?} measured; 64-byte messages, 98-byte replies",
            load::WARMUP,
            options.duration
        ),
        "hot swap windows: from 0.25 s before a swap request to 0.5 s after its answer; steady state is the rest".into(),
        "server CPU µs/op: the server process's CPU time over the run, warm-up included, per operation completed".into(),
        "memory per idle conn: RSS counts a page mapped by many connections (the compiled handler's code) once per mapping, PSS once in all".into(),
    ];
    notes.extend(instructions.notes());
    let disturbed = disturbed_runs(rounds);
    if !disturbed.is_empty() {
        notes.push(format!(
            "{} run(s) shared the machine with other busy processes (over {:.0}% of its CPU): {}",
            disturbed.len(),
            cpu::DISTURBED_SHARE * 100.0,
            disturbed
                .iter()
                .map(|(round, kind, scenario, share)| format!(
                    "round {round} {} {scenario} ({:.0}%)",
                    kind.name(),
                    share * 100.0
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    notes
}

/// Lines each server wrote to its stderr log (`names` in `logs`), for
/// those that wrote any: errors there may explain odd numbers.
fn stderr_lines(
    logs: &std::path::Path,
    names: impl IntoIterator<Item = impl AsRef<std::path::Path>>,
) -> Vec<(String, usize)> {
    names
        .into_iter()
        .filter_map(|name| {
            let path = logs.join(name);
            let lines = std::fs::read_to_string(&path).ok()?.lines().count();
            (lines > 0).then(|| (path.display().to_string(), lines))
        })
        .collect()
}

fn print_report(
    machine: &Machine,
    rows: &[Row],
    (met, targets): (usize, usize),
    swap: &HotSwap,
    notes: &[String],
    stderr_lines: &[(String, usize)],
    options: &Options,
) {
    println!();
    println!("hotsock bench, {}", machine.describe());
    println!(
        "servers: {}",
        Kind::ALL
            .map(|k| options.programs.command_line(k))
            .join(" | ")
    );
    println!();
    print!("{}", report::table(rows));
    println!();
    println!("targets met: {met} of {targets}");
    for swap in &swap.swaps {
        println!(
            "swap to {}: {:.3}s → {:.3}s, HTTP {}: {}",
            swap.handler, swap.start_s, swap.end_s, swap.http_status, swap.response
        );
    }
    for note in notes {
        println!("note: {note}");
    }
    for (path, lines) in stderr_lines {
        println!("note: {path} has {lines} line(s) of server stderr");
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_DURATION, Options, duration};
    use std::path::PathBuf;
    use std::time::Duration;

    /// The options `args` give, or clap's error as text.
    fn parse(args: &[&str]) -> Result<Options, String> {
        let args = std::iter::once("hotsock-bench").chain(args.iter().copied());
        Options::parse_args(args).map_err(|e| e.to_string())
    }

    #[test]
    fn durations() {
        assert_eq!(duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(duration("10m"), Ok(MAX_DURATION));
        assert!(duration("0s").is_err());
        assert!(duration("3h").unwrap_err().contains("at most 600s"));
        assert!(duration("-1s").is_err());
        assert!(duration("soon").is_err());
    }

    #[test]
    fn options() {
        let options = parse(&["--rounds", "5", "--duration=2s", "--out", "x"]).unwrap();
        assert_eq!(options.rounds, 5);
        assert_eq!(options.duration, Duration::from_secs(2));
        assert_eq!(options.out, PathBuf::from("x"));
        assert!(
            parse(&["--rounds", "0"])
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(parse(&["--soak", "0"]).is_err());
        assert!(parse(&["--duration", "0s"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        let help = Options::parse_args(["hotsock-bench", "--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
    }

    #[test]
    fn defaults() {
        let options = parse(&[]).unwrap();
        assert_eq!(options.out, PathBuf::from("target/bench"));
        assert_eq!(options.rounds, 10);
        assert_eq!(options.duration, Duration::from_millis(1500));
        assert_eq!(options.soak, None);
        assert!(!options.fleet);
        let programs = &options.programs;
        assert_eq!(programs.hotsock, PathBuf::from("target/release/hotsock"));
        assert_eq!(programs.native, PathBuf::from("target/release/native-echo"));
        assert_eq!(
            programs.handler,
            PathBuf::from("target/wasm32-wasip2/release/guest_handler.wasm")
        );
        assert_eq!(
            programs.swap_handler,
            PathBuf::from("target/wasm32-wasip2/release/slow_echo.wasm")
        );
        assert_eq!(programs.python, PathBuf::from("python3"));
        assert_eq!(
            programs.python_server,
            PathBuf::from("bench/python_echo_server.py")
        );
        assert_eq!(parse(&["--soak", "10000"]).unwrap().soak, Some(10000));
    }

    #[test]
    fn fleet_options() {
        // The fleet bench has its own defaults...
        let options = parse(&["--fleet"]).unwrap();
        assert!(options.fleet);
        assert_eq!(options.rounds, super::fleet::DEFAULT_ROUNDS);
        assert_eq!(options.out, PathBuf::from(super::fleet::DEFAULT_OUT));
        // ... which the options given override, wherever they come.
        let options = parse(&["--rounds", "2", "--fleet", "--out=y"]).unwrap();
        assert_eq!(options.rounds, 2);
        assert_eq!(options.out, PathBuf::from("y"));
        // Given as the main bench's defaults, they are still given.
        let options = parse(&["--fleet", "--rounds", "10", "--out", "target/bench"]).unwrap();
        assert_eq!(options.rounds, 10);
        assert_eq!(options.out, PathBuf::from("target/bench"));
        assert!(!parse(&["--rounds", "2"]).unwrap().fleet);
        assert!(parse(&["--fleet", "--soak", "10"]).is_err());
        assert!(parse(&["--fleet=1"]).is_err());
    }

    #[test]
    fn keyvalue_options() {
        let options = parse(&["--keyvalue"]).unwrap();
        assert!(options.keyvalue);
        assert_eq!(options.rounds, super::keyvalue::DEFAULT_ROUNDS);
        assert_eq!(options.out, PathBuf::from("target/bench"));
        assert_eq!(
            options.programs.kit,
            PathBuf::from("target/wasm32-wasip2/release/kit.wasm")
        );
        let options = parse(&["--rounds", "2", "--keyvalue", "--kit", "k.wasm"]).unwrap();
        assert_eq!(options.rounds, 2);
        assert_eq!(options.programs.kit, PathBuf::from("k.wasm"));
        assert!(!parse(&[]).unwrap().keyvalue);
        assert!(parse(&["--keyvalue", "--fleet"]).is_err());
        assert!(parse(&["--keyvalue", "--soak", "10"]).is_err());
    }

    #[test]
    fn tls_options() {
        let options = parse(&["--tls"]).unwrap();
        assert!(options.tls);
        assert_eq!(options.rounds, super::tls::DEFAULT_ROUNDS);
        assert_eq!(options.out, PathBuf::from("target/bench"));
        assert_eq!(parse(&["--tls", "--rounds", "2"]).unwrap().rounds, 2);
        assert!(!parse(&[]).unwrap().tls);
        assert!(parse(&["--tls", "--keyvalue"]).is_err());
        assert!(parse(&["--tls", "--fleet"]).is_err());
        assert!(parse(&["--tls", "--soak", "10"]).is_err());
    }

    #[test]
    fn the_help_says_what_the_fleet_defaults_are() {
        let help = <Options as clap::CommandFactory>::command()
            .render_help()
            .to_string();
        let fleet = format!(
            "Its --out defaults to {}, --rounds to {}",
            super::fleet::DEFAULT_OUT,
            super::fleet::DEFAULT_ROUNDS
        );
        assert!(help.contains(&fleet), "{help}");
        assert!(help.contains("[default: target/bench]"), "{help}");
    }

    #[test]
    fn the_help_names_issue_24s_figures() {
        let help = <Options as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for figure in [
            "RSS",
            "PSS",
            "memory mappings",
            "callgrind",
            "--max-connections 4",
        ] {
            assert!(help.contains(figure), "{figure} is not in:\n{help}");
        }
        assert!(help.contains("[default: 10]"), "{help}");
    }
}
