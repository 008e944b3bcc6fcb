//! User-space instructions per echo round trip, counted by valgrind's
//! callgrind, for hotsock and native-echo: the cost of a message that does
//! not move with the load on a shared machine, where round trips per second
//! and CPU time per operation do. Counted once per run, not per round: the
//! same code runs the same instructions.
//!
//! Each server runs under `valgrind --tool=callgrind --dump-instr=no`. One
//! connection (`TCP_NODELAY`) sends 64-byte messages (63 bytes and a line
//! ending), one at a time: [`WARMUP_ROUND_TRIPS`] of them, then
//! `callgrind_control -z` zeroes the counts, [`ROUND_TRIPS`] more, and
//! `callgrind_control -d` dumps the counts since. The dump covers the whole
//! process (callgrind's default `--separate-threads=no`), but only the
//! connection's thread runs meanwhile; the others wait in the kernel, apart
//! from hotsock's epoch ticker waking every 10 ms (with
//! `--separate-threads=yes`, all of them together came to about 5,000
//! instructions over the 3,000 round trips: under 2 a round trip, against
//! the connection thread's 6,860). It goes to the output
//! file's name with `.1` added (`.N` for the Nth dump), while the file itself
//! is written only when the process exits.
//!
//! hotsock runs with `--max-connections 4`, as valgrind cannot reserve the
//! address space of a pool for 1000, and from a code cache filled by the same
//! command run first without valgrind: compiling the handler under valgrind
//! would take minutes.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde::Serialize;
use testkit::{Launch, Stderr};

use crate::load::{self, REPLY_LEN};
use crate::servers::{self, Kind, Programs, STARTUP_TIMEOUT};

/// Round trips counted: enough that the per-process noise of a dump (the
/// ticker, the dump's own bookkeeping) falls below one instruction per round
/// trip, few enough to take a second under valgrind.
pub const ROUND_TRIPS: u64 = 3000;

/// Round trips before the counting starts: the connection's instance is
/// created, its buffers grown and its code paths run once.
pub const WARMUP_ROUND_TRIPS: u64 = 500;

/// The servers counted: the sandbox against the same server without it.
/// CPython's interpreter loop would take minutes under valgrind, and says
/// nothing about hotsock.
pub const COUNTED: [Kind; 2] = [Kind::Hotsock, Kind::Native];

/// hotsock's `--max-connections` under valgrind: a pool of instances for
/// 1000 connections reserves more address space than valgrind can map.
const HOTSOCK_MAX_CONNECTIONS: &str = "4";

/// Longest a server may take to announce its address under valgrind, which
/// translates every instruction it runs: hotsock takes about 20 s on a quiet
/// two-core machine, loading its compiled handler.
const CALLGRIND_STARTUP_TIMEOUT: Duration = Duration::from_secs(180);

/// Longest the dump may take to appear once `callgrind_control -d` returns.
const DUMP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the instructions scenario found.
#[derive(Debug, Clone, Serialize)]
pub struct Instructions {
    /// Round trips counted on each server.
    pub round_trips: u64,
    /// Round trips before counting.
    pub warmup_round_trips: u64,
    /// Why nothing was counted, if so (valgrind is not installed).
    pub skipped: Option<String>,
    /// What each server counted.
    pub counts: BTreeMap<Kind, Count>,
    /// Why a server could not be counted.
    pub errors: BTreeMap<Kind, String>,
}

/// One server's count.
#[derive(Debug, Clone, Serialize)]
pub struct Count {
    /// The command run under valgrind.
    pub command: String,
    /// The dump the count was read from (`callgrind_annotate` reads it).
    pub dump: PathBuf,
    /// Instructions executed in user space over [`ROUND_TRIPS`] round trips.
    pub instructions: u64,
    /// `instructions` / [`ROUND_TRIPS`].
    pub per_round_trip: f64,
}

impl Instructions {
    /// Instructions per round trip on `kind`, if counted.
    pub fn per_round_trip(&self, kind: Kind) -> Option<f64> {
        self.counts.get(&kind).map(|c| c.per_round_trip)
    }

    /// What the report says about how this was counted, or why it was not.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = vec![format!(
            "instructions per round trip: callgrind, the server's whole process in user space, over {} round trips of a 64-byte line on one connection after {} of warm-up; counted once, not per round",
            self.round_trips, self.warmup_round_trips
        )];
        if let Some(why) = &self.skipped {
            notes.push(format!("instructions per round trip not counted: {why}"));
        }
        for (kind, error) in &self.errors {
            notes.push(format!(
                "instructions per round trip not counted on {}: {error}",
                kind.name()
            ));
        }
        notes
    }
}

/// Counts the instructions per round trip of each of [`COUNTED`], keeping
/// the dumps in `dir` (emptied first) and valgrind's stderr in `logs`. A
/// machine without valgrind, or a server that cannot be counted, leaves its
/// figure out and says why; it does not stop the bench.
pub fn run(programs: &Programs, dir: &Path, logs: &Path) -> Result<Instructions> {
    let mut instructions = Instructions {
        round_trips: ROUND_TRIPS,
        warmup_round_trips: WARMUP_ROUND_TRIPS,
        skipped: None,
        counts: BTreeMap::new(),
        errors: BTreeMap::new(),
    };
    if let Err(why) = installed(&["valgrind", "callgrind_control"]) {
        eprintln!("instructions per round trip: skipped, {why}");
        instructions.skipped = Some(why);
        return Ok(instructions);
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for kind in COUNTED {
        match count(kind, programs, dir, logs) {
            Ok(count) => {
                eprintln!(
                    "  instructions, {}: {:.0} per round trip",
                    kind.name(),
                    count.per_round_trip
                );
                instructions.counts.insert(kind, count);
            }
            Err(e) => {
                eprintln!("  instructions, {}: not counted: {e:#}", kind.name());
                instructions.errors.insert(kind, format!("{e:#}"));
            }
        }
    }
    Ok(instructions)
}

/// The log of `kind` under callgrind: valgrind's own lines and the server's.
pub fn log_name(kind: Kind) -> String {
    format!("{}-callgrind.stderr", kind.name())
}

/// Fails, saying how to install valgrind, unless every one of `programs`
/// (valgrind's) runs with `--version`.
fn installed(programs: &[&str]) -> Result<(), String> {
    for &program in programs {
        let ran = Command::new(program)
            .arg("--version")
            .stdin(Stdio::null())
            .output();
        if !ran.is_ok_and(|output| output.status.success()) {
            return Err(format!(
                "`{program}` does not run: install valgrind (`apt-get install valgrind`, which `make setup` does as root)"
            ));
        }
    }
    Ok(())
}

/// The command line `kind` is counted with, before valgrind is put in
/// front; for hotsock, with its code cache in `cache`.
fn server_command(kind: Kind, programs: &Programs, cache: &Path) -> Command {
    match kind {
        Kind::Hotsock => {
            let mut command = Command::new(&programs.hotsock);
            command
                .args(["serve", "--addr", "127.0.0.1:0"])
                .args(["--max-connections", HOTSOCK_MAX_CONNECTIONS])
                .arg("--cache-dir")
                .arg(cache)
                .arg(&programs.handler)
                // As in the rest of the bench: no per-connection info lines.
                .env("RUST_LOG", "warn");
            command
        }
        _ => programs.command(kind),
    }
}

/// `command` run under callgrind, its counts going to `out`.
fn under_callgrind(command: &Command, out: &Path) -> Command {
    let mut valgrind = Command::new("valgrind");
    valgrind
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--dump-instr=no")
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => valgrind.env(key, value),
            None => valgrind.env_remove(key),
        };
    }
    valgrind
}

/// Counts one server's instructions over [`ROUND_TRIPS`] round trips.
fn count(kind: Kind, programs: &Programs, dir: &Path, logs: &Path) -> Result<Count> {
    let log = logs.join(log_name(kind));
    fs::write(&log, "").with_context(|| format!("cannot create {}", log.display()))?;
    let command = server_command(kind, programs, &dir.join("cache"));
    if kind == Kind::Hotsock {
        fill_cache(&command, &dir.join("cache"), &log)?;
    }
    let out = dir.join(format!("{}.callgrind", kind.name()));
    let server = Launch::new(under_callgrind(&command, &out))
        .name(format!("{} under callgrind", kind.name()))
        .stderr(Stderr::Append(log.clone()))
        .timeout(CALLGRIND_STARTUP_TIMEOUT)
        .die_with_parent(true)
        .start()?;
    let Some(&addr) = server.addrs().first() else {
        bail!("{} announced no address", kind.name());
    };
    let pid = server.pid().to_string();
    let mut stream = load::connect(addr).context("cannot connect")?;
    let message = line_message();
    for _ in 0..WARMUP_ROUND_TRIPS {
        line_round_trip(&mut stream, &message).context("a warm-up round trip failed")?;
    }
    callgrind_control("-z", &pid)?;
    for _ in 0..ROUND_TRIPS {
        line_round_trip(&mut stream, &message).context("a counted round trip failed")?;
    }
    callgrind_control("-d", &pid)?;
    let (dump, instructions) = read_dump(&out)?;
    drop(stream);
    drop(server);
    Ok(Count {
        command: servers::command_line(&command),
        dump,
        instructions,
        per_round_trip: instructions as f64 / ROUND_TRIPS as f64,
    })
}

/// Starts `command` (hotsock) without valgrind, so that it compiles its
/// handler into `cache`, and stops it; fails unless the cache then holds
/// compiled code.
fn fill_cache(command: &Command, cache: &Path, log: &Path) -> Result<()> {
    let mut plain = Command::new(command.get_program());
    plain.args(command.get_args());
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            plain.env(key, value);
        }
    }
    let server = Launch::new(plain)
        .name("hotsock (filling the code cache)")
        .stderr(Stderr::Append(log.to_path_buf()))
        .timeout(STARTUP_TIMEOUT)
        .die_with_parent(true)
        .start()?;
    drop(server);
    let compiled = fs::read_dir(cache)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        })
        .unwrap_or(false);
    ensure!(
        compiled,
        "hotsock left no compiled code in {}: under valgrind it would compile its handler for minutes",
        cache.display()
    );
    Ok(())
}

/// `callgrind_control FLAG PID`: `-z` zeroes the counts, `-d` dumps them.
fn callgrind_control(flag: &str, pid: &str) -> Result<()> {
    let output = Command::new("callgrind_control")
        .args([flag, pid])
        .stdin(Stdio::null())
        .output()
        .context("cannot run callgrind_control")?;
    ensure!(
        output.status.success(),
        "`callgrind_control {flag} {pid}` failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// The newest dump of `out` (`out.1`, `out.2`, ...) and its instruction
/// count, once it is there and complete.
fn read_dump(out: &Path) -> Result<(PathBuf, u64)> {
    let dir = out.parent().unwrap_or(Path::new("."));
    let base = out
        .file_name()
        .and_then(|name| name.to_str())
        .context("a dump name that is not UTF-8")?;
    let deadline = Instant::now() + DUMP_TIMEOUT;
    loop {
        let names: Vec<String> = fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        if let Some(name) = latest_dump(base, &names) {
            let path = dir.join(name);
            let text = fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if let Some(total) = total_instructions(&text) {
                return Ok((path, total));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no complete callgrind dump {base}.N in {} after {}s",
                dir.display(),
                DUMP_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Among file `names`, the dump of `base` with the highest sequence number:
/// callgrind writes its Nth dump to `base.N`, and `base` itself at exit.
pub fn latest_dump<'a>(base: &str, names: &'a [String]) -> Option<&'a str> {
    names
        .iter()
        .filter_map(|name| {
            let n: u64 = name.strip_prefix(base)?.strip_prefix('.')?.parse().ok()?;
            Some((n, name.as_str()))
        })
        .max_by_key(|&(n, _)| n)
        .map(|(_, name)| name)
}

/// The instructions a callgrind dump counts (its only event, `Ir`): its
/// `totals:` line, the sum of its cost lines, written last; else its
/// `summary:` line, written first. `None` if it has neither.
pub fn total_instructions(dump: &str) -> Option<u64> {
    let line = |key: &str| {
        dump.lines().find_map(|line| {
            line.strip_prefix(key)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
    };
    line("totals:").or_else(|| line("summary:"))
}

/// The message: the bench's 64 bytes with a line ending for the last, as a
/// line-oriented client (`nc`) sends them.
fn line_message() -> [u8; 64] {
    let mut message = *load::MESSAGE;
    message[63] = b'\n';
    message
}

/// Sends `message` and reads the whole reply: `Echo=>`, the message without
/// its line ending, ` at `, the time, and the line ending; [`REPLY_LEN`]
/// bytes, as for the bench's other messages.
fn line_round_trip(stream: &mut TcpStream, message: &[u8; 64]) -> io::Result<()> {
    stream.write_all(message)?;
    let mut reply = [0; REPLY_LEN];
    stream.read_exact(&mut reply)?;
    let line = &message[..message.len() - 1];
    let echoed = reply.starts_with(b"Echo=>")
        && reply[6..].starts_with(line)
        && reply[6 + line.len()..].starts_with(b" at ")
        && reply.ends_with(b"\n");
    if !echoed {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            "the reply is not `Echo=>LINE at TIME\\n`",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Instructions, installed, latest_dump, line_message, total_instructions};
    use crate::load::REPLY_LEN;
    use crate::servers::Kind;

    /// The head and tail of a dump `callgrind_control -d` had callgrind
    /// 3.19 write for hotsock over 3,000 round trips (most cost lines cut).
    const DUMP: &str = "\
# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 29519
cmd:  target/release/hotsock serve --addr 127.0.0.1:0 --max-connections 4 --cache-dir /tmp/cgx/cache target/wasm32-wasip2/release/guest_handler.wasm
part: 1

desc: Timerange: Basic block 0 - 133001890
desc: Trigger: dump

positions: line
events: Ir
summary: 20585800


ob=(3) /usr/lib/x86_64-linux-gnu/libc.so.6
fl=(287) ./socket/../sysdeps/unix/sysv/linux/recv.c
fn=(6560) recv
28 3000
-4 3000
+4 3000

totals: 20585800
";

    #[test]
    fn a_dump_counts_its_totals() {
        assert_eq!(total_instructions(DUMP), Some(20_585_800));
        // The totals line wins: it is the sum of what the dump attributes.
        let differing = DUMP.replace("totals: 20585800", "totals: 20585900");
        assert_eq!(total_instructions(&differing), Some(20_585_900));
        // Without it, the summary in the header.
        let no_totals = DUMP.replace("totals: 20585800\n", "");
        assert_eq!(total_instructions(&no_totals), Some(20_585_800));
        // With more events than Ir, the first figure is Ir.
        assert_eq!(
            total_instructions("events: Ir Dr\ntotals: 12 7\n"),
            Some(12)
        );
        assert_eq!(total_instructions("# callgrind format\n"), None);
        assert_eq!(total_instructions(""), None);
    }

    #[test]
    fn the_latest_dump_is_the_highest_number() {
        let names: Vec<String> = [
            "hotsock.callgrind",
            "hotsock.callgrind.1",
            "hotsock.callgrind.10",
            "hotsock.callgrind.2",
            "hotsock.callgrind.2.bak",
            "native.callgrind.11",
            "cache",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            latest_dump("hotsock.callgrind", &names),
            Some("hotsock.callgrind.10")
        );
        assert_eq!(
            latest_dump("native.callgrind", &names),
            Some("native.callgrind.11")
        );
        // The file written at exit is not a dump of the counted round trips.
        let at_exit = vec!["hotsock.callgrind".to_string()];
        assert_eq!(latest_dump("hotsock.callgrind", &at_exit), None);
    }

    #[test]
    fn the_message_is_a_line_of_64_bytes() {
        let message = line_message();
        assert_eq!(message.len(), 64);
        assert_eq!(message.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(message[63], b'\n');
        // Echo=> (6), the line (63), " at " (4), the time (24), "\n" (1).
        assert_eq!(6 + 63 + 4 + 24 + 1, REPLY_LEN);
    }

    #[test]
    fn without_valgrind_the_figures_are_missing_and_the_notes_say_why() {
        let why = installed(&["hotsock-bench-no-such-valgrind"]).unwrap_err();
        assert!(
            why.contains("`hotsock-bench-no-such-valgrind` does not run"),
            "{why}"
        );
        assert!(why.contains("apt-get install valgrind"), "{why}");
        let skipped = Instructions {
            round_trips: 3000,
            warmup_round_trips: 500,
            skipped: Some(why.clone()),
            counts: Default::default(),
            errors: Default::default(),
        };
        assert_eq!(skipped.per_round_trip(Kind::Hotsock), None);
        assert_eq!(skipped.per_round_trip(Kind::Native), None);
        let notes = skipped.notes();
        assert!(notes.iter().any(|n| n.ends_with(&why)), "{notes:?}");
    }
}
