//! Every per-connection limit in one place: the values ([`Limits`]), the one
//! function that applies them to a connection's store and socket
//! ([`Limits::confine`]), and how hitting one is reported ([`Failure`]).
//!
//! The defaults are named constants in [`crate::config`], each with its reason.

use std::fmt;
use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::I32Exit;

use crate::connection::Connection;
use crate::sandbox::{ConnState, MAX_WASM_STACK};
use crate::watchdog::Watchdog;

/// How often the epoch ticker advances the engine's epoch, and so how often
/// a computing guest's CPU budget is looked at. A runaway guest is stopped
/// within its budget plus three ticks; 100 wakeups a second cost nothing
/// measurable.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The limits every connection runs under.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most linear memory one connection's instance may have, in bytes.
    pub max_memory: usize,
    /// Most CPU time a guest may use between two reads or writes on its
    /// connection.
    pub cpu_budget: Duration,
    /// Longest a `read` or `write` may wait for the client.
    pub idle_timeout: Duration,
    /// Longest a connection may stay open at all, if limited.
    pub max_connection_time: Option<Duration>,
    /// Most connections served at once; also the size of the instance pool.
    pub max_connections: u32,
}

impl Default for Limits {
    /// The defaults of `hotsock serve`.
    fn default() -> Self {
        use crate::config::*;
        Limits {
            max_memory: parse_size(DEFAULT_MAX_MEMORY).expect("a valid default"),
            cpu_budget: humantime::parse_duration(DEFAULT_CPU_BUDGET).expect("a valid default"),
            idle_timeout: humantime::parse_duration(DEFAULT_IDLE_TIMEOUT).expect("a valid default"),
            max_connection_time: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl Limits {
    /// Applies every limit to a new connection's store and, if there is one,
    /// to the connection: memory, CPU budget, idle timeout, connection time.
    pub fn confine(
        &self,
        store: &mut Store<ConnState>,
        conn: Option<(&mut Connection, &Watchdog)>,
    ) {
        let deadline = self.max_connection_time.map(|limit| Instant::now() + limit);
        if let Some((conn, watchdog)) = conn {
            // The idle timeout and the time limit while the guest waits for
            // its client; the watchdog was started with this `Limits`.
            conn.watch_with(watchdog);
        }
        store.data_mut().meter = Meter {
            max_memory: self.max_memory,
            memory_denied: false,
        };
        store.limiter(|state| &mut state.meter);

        // The CPU budget and the connection time are looked at once a tick,
        // and only while the guest runs: an epoch check in its code calls
        // back here. A guest blocked in `read`, `write` or a sleep is not
        // running, so it costs nothing and is charged nothing. Nothing is done
        // per host call: a call hook on every crossing between guest and host
        // would cost each round trip more than all of this costs a second.
        let budget = self.cpu_budget;
        store.epoch_deadline_callback(move |mut store| {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ConnectionTimeUp.into());
            }
            if store.data_mut().cpu.exceeded(budget, thread_cpu_time) {
                return Err(Trap::Interrupt.into());
            }
            Ok(UpdateDeadline::Continue(1))
        });
        store.set_epoch_deadline(1);
    }
}

/// How much CPU a guest has used since its last read or write on its
/// connection, measured lazily, from the epoch callback.
///
/// The host's `read` and `write` count themselves in [`CpuBudget::io`]. When
/// a tick finds the guest running and the count unchanged since the tick
/// before, the guest has gone a whole tick without I/O: the thread's CPU clock
/// is read then, and again at every later tick, until the guest does I/O or
/// the CPU used since the first reading reaches the budget. The time before
/// that first reading (two ticks at most) is not charged, so a runaway guest
/// is stopped within its budget plus three ticks. A guest that keeps calling
/// other host functions (the clock, stdout) is still computing and is
/// stopped too; one that sleeps or waits uses no CPU and never is. The only
/// system call is that clock reading, once a tick, and only for a guest that
/// has stopped doing I/O.
#[derive(Debug, Default)]
pub struct CpuBudget {
    /// Reads and writes so far.
    pub(crate) io: u64,
    /// `io` as the last tick saw it.
    io_seen: u64,
    /// The thread's CPU time when this stretch without I/O was first seen.
    since: Option<Duration>,
}

impl CpuBudget {
    /// Called once a tick while the guest runs: whether it has now used
    /// `budget` of CPU without I/O, by the thread CPU clock `now`.
    fn exceeded(&mut self, budget: Duration, now: impl FnOnce() -> Duration) -> bool {
        if self.io != self.io_seen {
            self.io_seen = self.io;
            self.since = None;
            return false;
        }
        let now = now();
        let since = *self.since.get_or_insert(now);
        now.saturating_sub(since) >= budget
    }
}

/// The CPU time the calling thread has used: its guest's, when called from
/// the epoch callback.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if read != 0 {
        // Not seen on Linux; charging nothing would let a runaway guest run
        // forever, so fall back to the wall clock, which charges too much.
        return wall_clock_since_start();
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Time since the first call, for [`thread_cpu_time`]'s fallback.
fn wall_clock_since_start() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// Per-store memory accounting: denies growth past the limit and remembers
/// that it did, so the trap that usually follows (an allocation failure
/// aborts) is reported as the memory limit, not as a generic trap.
#[derive(Debug, Default)]
pub struct Meter {
    max_memory: usize,
    memory_denied: bool,
}

impl ResourceLimiter for Meter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_memory;
        self.memory_denied |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables are bounded by the instance pool's per-table element limit.
        Ok(true)
    }
}

/// The error the epoch callback raises when the connection's time is up.
#[derive(Debug)]
struct ConnectionTimeUp;

impl fmt::Display for ConnectionTimeUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the connection's time is up")
    }
}

impl std::error::Error for ConnectionTimeUp {}

/// Why a connection's instance was stopped, in the words an operator needs.
#[derive(Debug)]
pub enum Failure {
    /// The guest tried to grow its memory past `--max-memory`.
    MemoryLimit(usize),
    /// The guest used more than `--cpu-budget` of CPU without reading or writing.
    CpuBudget(Duration),
    /// The guest's stack overflowed.
    StackOverflow,
    /// The connection outlived `--max-connection-time`.
    ConnectionTime(Duration),
    /// The guest called `exit` with a non-zero status.
    Exit(i32),
    /// An out-of-bounds access while one function kept calling itself: what
    /// runaway recursion looks like when the guest keeps its stack in linear
    /// memory, as Rust and C do for locals whose address is taken.
    RunawayRecursion,
    /// Any other trap: `unreachable` (which is what a Rust panic ends in),
    /// an out-of-bounds access, and so on.
    Trap(Trap),
    /// Anything else, such as a failed instantiation.
    Other(String),
}

impl Failure {
    /// Classifies what `call` returned. `Ok(None)` is a clean `exit(0)`.
    pub fn classify(error: &wasmtime::Error, limits: &Limits, meter: &Meter) -> Option<Self> {
        if let Some(exit) = error.downcast_ref::<I32Exit>() {
            return (exit.0 != 0).then_some(Failure::Exit(exit.0));
        }
        if error.downcast_ref::<ConnectionTimeUp>().is_some() {
            return Some(Failure::ConnectionTime(
                limits.max_connection_time.unwrap_or_default(),
            ));
        }
        Some(match error.downcast_ref::<Trap>() {
            // Running out of memory ends in an abort, whatever trap it takes.
            Some(_) if meter.memory_denied => Failure::MemoryLimit(limits.max_memory),
            Some(Trap::Interrupt) => Failure::CpuBudget(limits.cpu_budget),
            Some(Trap::StackOverflow) => Failure::StackOverflow,
            Some(Trap::MemoryOutOfBounds) if recursing(error) => Failure::RunawayRecursion,
            Some(trap) => Failure::Trap(*trap),
            None if meter.memory_denied => Failure::MemoryLimit(limits.max_memory),
            None => Failure::Other(format!("{error:#}")),
        })
    }
}

impl Failure {
    /// Whether the guest's code is where to look, so its backtrace helps:
    /// not so for an `exit` it chose, or a connection that simply ran out of time.
    pub fn is_guest_fault(&self) -> bool {
        !matches!(self, Failure::Exit(_) | Failure::ConnectionTime(_))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::MemoryLimit(bytes) => write!(
                f,
                "memory limit exceeded: the handler tried to grow its memory past {} (--max-memory)",
                format_size(*bytes)
            ),
            Failure::CpuBudget(budget) => write!(
                f,
                "CPU budget exceeded: the handler computed for {budget:?} without reading or writing its connection (--cpu-budget)"
            ),
            Failure::StackOverflow => write!(
                f,
                "stack overflow: the handler used more than its {} KiB of stack",
                MAX_WASM_STACK / 1024
            ),
            Failure::ConnectionTime(limit) => {
                write!(
                    f,
                    "connection time limit reached: open for {limit:?} (--max-connection-time)"
                )
            }
            Failure::RunawayRecursion => write!(
                f,
                "stack overflow: out-of-bounds memory access after the handler recursed deeper and deeper \
                 (its stack in linear memory ran out)"
            ),
            Failure::Exit(status) => write!(f, "the handler called exit({status})"),
            Failure::Trap(trap) => write!(f, "handler trapped: {trap}"),
            Failure::Other(message) => write!(f, "handler failed: {message}"),
        }
    }
}

/// Whether the failure's backtrace is one function calling itself all the way
/// down (as far as wasmtime captured it).
fn recursing(error: &wasmtime::Error) -> bool {
    const DEPTH: usize = 16;
    let Some(backtrace) = error.downcast_ref::<WasmBacktrace>() else {
        return false;
    };
    let frames = backtrace.frames();
    frames.len() >= DEPTH
        && frames[..DEPTH]
            .iter()
            .all(|f| f.func_index() == frames[0].func_index())
}

/// The guest's backtrace of a failure, for the plugin author, if wasmtime
/// captured one.
pub fn guest_backtrace(error: &wasmtime::Error) -> Option<String> {
    // wasmtime's rendering knows about inlined frames and DWARF; only its
    // "error while executing at" header line is dropped, and runs of the same
    // frame (runaway recursion) are folded into one line.
    let rendered = error.downcast_ref::<WasmBacktrace>()?.to_string();
    let mut folded: Vec<(&str, usize)> = Vec::new();
    for line in rendered.lines().skip(1) {
        match folded.last_mut() {
            Some((last, repeats)) if frame(last) == frame(line) => *repeats += 1,
            _ => folded.push((line, 0)),
        }
    }
    let lines: Vec<String> = folded
        .into_iter()
        .map(|(line, repeats)| match repeats {
            0 => line.to_string(),
            n => format!("{line}\n       ... and the same frame {n} more time(s)"),
        })
        .collect();
    Some(lines.join("\n"))
}

/// The frame of a backtrace line `  3:   0x3f45 - probe.wasm!f`: what follows the index.
fn frame(line: &str) -> &str {
    line.trim_start()
        .split_once(": ")
        .map_or(line, |(_, frame)| frame.trim_start())
}

/// `64 MiB`: sizes as `--max-memory` takes them.
pub fn format_size(bytes: usize) -> String {
    const UNITS: [(&str, usize); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {unit}", bytes / size);
        }
    }
    format!("{bytes} bytes")
}

/// Parses `64MiB`, `512KiB`, `1GiB`, `1048576` (bytes); `K`, `M`, `G` and
/// `KB`, `MB`, `GB` are read as binary units too, as memory sizes usually are.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (expected e.g. 64MiB, 512KiB, 1GiB)"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown size unit in `{text}` (expected KiB, MiB or GiB)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn sizes_print_in_their_largest_exact_unit() {
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(1536 << 10), "1536 KiB");
        assert_eq!(format_size(1000), "1000 bytes");
    }

    #[test]
    fn the_cpu_budget_charges_only_a_stretch_without_io() {
        let budget = Duration::from_millis(100);
        let ms = Duration::from_millis;
        // A tick with I/O since the last one starts nothing.
        let mut cpu = CpuBudget {
            io: 1,
            ..CpuBudget::default()
        };
        assert!(!cpu.exceeded(budget, || unreachable!("no clock read after I/O")));
        // The stretch is measured from the first tick without I/O...
        assert!(!cpu.exceeded(budget, || ms(500)));
        assert!(!cpu.exceeded(budget, || ms(599)));
        // ...and ends at the budget.
        assert!(cpu.exceeded(budget, || ms(600)));
        // I/O starts a new stretch.
        cpu.io += 1;
        assert!(!cpu.exceeded(budget, || unreachable!()));
        assert!(!cpu.exceeded(budget, || ms(700)));
        assert!(!cpu.exceeded(budget, || ms(750)));
        assert!(cpu.exceeded(budget, || ms(800)));
    }
}
