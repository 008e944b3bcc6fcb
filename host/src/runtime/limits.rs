//! The limits a connection's store runs under: typed values with their
//! defaults, and [`Limits::apply`], the one function that applies them.
//!
//! Memory and CPU are limited here, per store. How long a client may be idle
//! or connected, and when a replaced version's connections are closed, is
//! the watchdog's to decide (see [`crate::watchdog`]); a store only learns
//! of it, through a [`Verdict`], so that a guest computing when its
//! connection is closed for good is stopped too.

use std::fmt;
use std::time::Duration;

use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};

use crate::sys;
use crate::watchdog::{Expiry, Verdict};

/// Most linear memory one connection's instance may have, by default. The
/// default echo handler needs about 1 MiB; 64 MiB leaves ample room for real
/// handlers while a thousand runaway ones cannot exhaust a small server.
pub const DEFAULT_MAX_MEMORY: usize = 64 << 20;

/// Most CPU time a handler may use between two reads or writes on its
/// connection, by default. Far above what answering a message takes, far
/// below what a client would wait for.
pub const DEFAULT_CPU_BUDGET: Duration = Duration::from_secs(1);

/// Most connections served at once, and so instances alive at once, by
/// default; it sizes the instance pool. wasmtime's own pool default, and
/// comfortably within one machine's threads.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1000;

/// Deepest a guest's stack may grow before it traps with a stack overflow:
/// wasmtime's default, which ordinary recursive code stays well inside.
pub const MAX_WASM_STACK: usize = 512 * 1024;

/// Stack of each thread a guest runs on. It needs [`MAX_WASM_STACK`] plus
/// room for the host frames around and beneath the guest (wasmtime, WASI,
/// logging). Untouched pages cost no memory.
pub const GUEST_THREAD_STACK: usize = MAX_WASM_STACK + 1024 * 1024;

/// How often the epoch ticker advances the engine's epoch, and so how often
/// a computing guest's CPU budget is looked at. A runaway guest is stopped
/// within its budget plus three ticks; 100 wakeups a second cost nothing
/// measurable.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The limits every connection's store runs under.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most linear memory one instance may have, in bytes.
    pub max_memory: usize,
    /// Most CPU time a guest may use between two reads or writes on its
    /// connection.
    pub cpu_budget: Duration,
}

impl Default for Limits {
    /// The defaults of `hotsock serve`.
    fn default() -> Self {
        Limits {
            max_memory: DEFAULT_MAX_MEMORY,
            cpu_budget: DEFAULT_CPU_BUDGET,
        }
    }
}

/// What the limits keep per store, in the store's data.
#[derive(Debug, Default)]
pub struct Usage {
    meter: Meter,
    cpu: CpuBudget,
    /// Whether the watchdog has closed the connection, if there is one.
    verdict: Option<Verdict>,
}

impl Usage {
    /// Notes a read or write on the connection: the CPU budget starts over.
    pub fn count_io(&mut self) {
        self.cpu.io += 1;
    }

    /// Whether the guest was denied memory: what its trap, if any, is really about.
    pub fn memory_denied(&self) -> bool {
        self.meter.memory_denied
    }
}

/// The error the epoch callback stops a guest with when the watchdog has
/// closed its connection for good.
#[derive(Debug)]
pub struct HardStop(pub Expiry);

impl fmt::Display for HardStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the host closed the connection ({:?})", self.0)
    }
}

impl std::error::Error for HardStop {}

impl Limits {
    /// Applies every limit to a new store, whose data holds a `Usage` that
    /// `usage` finds: memory, the CPU budget and, with a `verdict`, the
    /// watchdog's decisions while the guest computes.
    pub fn apply<T: 'static>(
        &self,
        store: &mut Store<T>,
        verdict: Option<Verdict>,
        usage: fn(&mut T) -> &mut Usage,
    ) {
        *usage(store.data_mut()) = Usage {
            meter: Meter {
                max_memory: self.max_memory,
                memory_denied: false,
            },
            cpu: CpuBudget::default(),
            verdict,
        };
        store.limiter(move |data| &mut usage(data).meter);

        // The CPU budget and the watchdog's verdict are looked at once a tick,
        // and only while the guest runs: an epoch check in its code calls back
        // here. A guest blocked in `read`, `write` or a sleep is not running,
        // so it costs nothing and is charged nothing. Nothing is done per host
        // call: a call hook on every crossing between guest and host would
        // cost each round trip more than all of this costs a second.
        let budget = self.cpu_budget;
        store.epoch_deadline_callback(move |mut store| {
            let usage = usage(store.data_mut());
            let verdict = usage.verdict.as_ref().and_then(Verdict::expired);
            if let Some(expiry) = verdict.filter(|e| e.is_final()) {
                return Err(HardStop(expiry).into());
            }
            if usage.cpu.exceeded(budget, sys::thread_cpu_time) {
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
struct CpuBudget {
    /// Reads and writes so far.
    io: u64,
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

/// Per-store memory accounting: denies growth past the limit and remembers
/// that it did, so the trap that usually follows (an allocation failure
/// aborts) is reported as the memory limit, not as a generic trap.
#[derive(Debug, Default)]
struct Meter {
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

#[cfg(test)]
mod tests {
    use super::*;

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
