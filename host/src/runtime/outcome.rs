//! How a connection's guest stopped, in the words an operator needs, and
//! whose doing it was: the guest's own fault, or the host's decision.
//!
//! The difference matters beyond the log: only a guest's own faults may
//! count against its version (`--rollback-on-traps`), never a limit the
//! operator set for clients.
//!
//! A fault comes with the guest's backtrace, which `backtrace` renders.

use std::fmt;
use std::time::Duration;

use wasmtime::{Trap, WasmBacktrace};
use wasmtime_wasi::I32Exit;

use crate::runtime::backtrace::guest_backtrace;
use crate::runtime::limits::{HardStop, Limits, MAX_WASM_STACK};
use crate::units::format_size;
use crate::watchdog::Expiry;

/// How one connection ended.
#[derive(Debug)]
pub enum Outcome {
    /// `handle` returned `Ok`, or the guest called `exit(0)`.
    Finished,
    /// `handle` returned an error message.
    HandlerError(String),
    /// The host closed the connection (idle timeout, time limit, drain
    /// deadline), and the guest ended after that.
    Stopped {
        /// Why the host closed it.
        expiry: Expiry,
        /// How the guest ended, when it did not simply return: a trap that
        /// followed, say. Not held against it: the host's decision came first.
        then: Option<String>,
    },
    /// The guest's own fault: a trap, a panic, a limit of its own, an exit.
    Faulted {
        /// What went wrong.
        fault: Fault,
        /// The guest's backtrace, if one was captured and can help.
        backtrace: Option<String>,
    },
}

/// A guest's own fault, which ended its instance.
#[derive(Debug)]
pub enum Fault {
    /// The guest tried to grow its memory past `--max-memory`.
    MemoryLimit(usize),
    /// The guest used more than `--cpu-budget` of CPU without reading or writing.
    CpuBudget(Duration),
    /// The guest's stack overflowed.
    StackOverflow,
    /// An out-of-bounds access while one function kept calling itself: what
    /// runaway recursion looks like when the guest keeps its stack in linear
    /// memory, as Rust and C do for locals whose address is taken.
    RunawayRecursion,
    /// The guest called `exit` with a non-zero status.
    Exit(i32),
    /// Any other trap: `unreachable` (which is what a Rust panic ends in),
    /// an out-of-bounds access, and so on.
    Trap(Trap),
    /// Anything else, such as a failed instantiation.
    Error(String),
}

impl Fault {
    /// A short stable name for the kind of fault: `memory`, `cpu`, `stack`,
    /// `exit`, `trap` or `error`.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::MemoryLimit(_) => "memory",
            Fault::CpuBudget(_) => "cpu",
            Fault::StackOverflow | Fault::RunawayRecursion => "stack",
            Fault::Exit(_) => "exit",
            Fault::Trap(_) => "trap",
            Fault::Error(_) => "error",
        }
    }

    /// Classifies the error a guest call ended with; `None` is a clean
    /// `exit(0)`. `memory_denied` says whether the store refused the guest
    /// memory, which is what its trap is then really about.
    pub fn classify(error: &wasmtime::Error, limits: &Limits, memory_denied: bool) -> Option<Self> {
        if let Some(exit) = error.downcast_ref::<I32Exit>() {
            return (exit.0 != 0).then_some(Fault::Exit(exit.0));
        }
        Some(match error.downcast_ref::<Trap>() {
            // Running out of memory ends in an abort, whatever trap it takes.
            Some(_) if memory_denied => Fault::MemoryLimit(limits.max_memory),
            Some(Trap::Interrupt) => Fault::CpuBudget(limits.cpu_budget),
            Some(Trap::StackOverflow) => Fault::StackOverflow,
            Some(Trap::MemoryOutOfBounds) if recursing(error) => Fault::RunawayRecursion,
            Some(trap) => Fault::Trap(*trap),
            None if memory_denied => Fault::MemoryLimit(limits.max_memory),
            None => Fault::Error(without_backtrace(error)),
        })
    }
}

impl Outcome {
    /// The outcome of a call to `handle`: `result` as wasmtime returned it,
    /// and `expired`, whether the watchdog had closed the connection.
    pub fn of(
        result: wasmtime::Result<Result<(), String>>,
        expired: Option<Expiry>,
        limits: &Limits,
        memory_denied: bool,
    ) -> Self {
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(message)) => Some(Err(message)),
            Err(error) => Some(Ok(error)),
        };
        if let Some(expiry) = expired {
            let then = match error {
                None => None,
                Some(Err(message)) => Some(format!("the handler returned an error: {message}")),
                Some(Ok(e)) if e.downcast_ref::<HardStop>().is_some() => None,
                Some(Ok(e)) => Fault::classify(&e, limits, memory_denied).map(|f| f.to_string()),
            };
            return Outcome::Stopped { expiry, then };
        }
        match error {
            None => Outcome::Finished,
            Some(Err(message)) => Outcome::HandlerError(message),
            Some(Ok(e)) => match Fault::classify(&e, limits, memory_denied) {
                None => Outcome::Finished,
                Some(fault) => {
                    // An exit is a choice, not a place in the code to look at.
                    let backtrace = match fault {
                        Fault::Exit(_) => None,
                        _ => guest_backtrace(&e),
                    };
                    Outcome::Faulted { fault, backtrace }
                }
            },
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::MemoryLimit(bytes) => write!(
                f,
                "memory limit exceeded: the handler tried to grow its memory past {} (--max-memory)",
                format_size(*bytes)
            ),
            Fault::CpuBudget(budget) => write!(
                f,
                "CPU budget exceeded: the handler computed for {budget:?} without reading or writing its connection (--cpu-budget)"
            ),
            Fault::StackOverflow => write!(
                f,
                "stack overflow: the handler used more than its {} KiB of stack",
                MAX_WASM_STACK / 1024
            ),
            Fault::RunawayRecursion => write!(
                f,
                "stack overflow: out-of-bounds memory access after the handler recursed deeper and deeper \
                 (its stack in linear memory ran out)"
            ),
            Fault::Exit(status) => write!(f, "the handler called exit({status})"),
            Fault::Trap(trap) => write!(f, "handler trapped: {trap}"),
            Fault::Error(message) => write!(f, "handler failed: {message}"),
        }
    }
}

/// The error's chain of causes, as `{:#}` shows it, without the guest
/// backtrace wasmtime adds as one of them: that is logged on lines of its own.
fn without_backtrace(error: &wasmtime::Error) -> String {
    let backtrace = error.downcast_ref::<WasmBacktrace>().map(|b| b.to_string());
    let causes: Vec<String> = error
        .chain()
        .map(|cause| cause.to_string())
        .filter(|cause| Some(cause) != backtrace.as_ref())
        .collect();
    causes.join(": ")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn the_hosts_decision_comes_before_what_the_guest_did_next() {
        let trapped = Err(wasmtime::Error::from(Trap::UnreachableCodeReached));
        match Outcome::of(trapped, Some(Expiry::Idle), &limits(), false) {
            Outcome::Stopped { expiry, then } => {
                assert_eq!(expiry, Expiry::Idle);
                assert!(then.unwrap().contains("unreachable"));
            }
            other => panic!("{other:?}"),
        }
        let stopped = Err(wasmtime::Error::from(HardStop(Expiry::TimeUp)));
        assert!(matches!(
            Outcome::of(stopped, Some(Expiry::TimeUp), &limits(), false),
            Outcome::Stopped {
                expiry: Expiry::TimeUp,
                then: None
            }
        ));
    }

    #[test]
    fn faults_are_named_by_kind() {
        let out_of_memory = Err(wasmtime::Error::from(Trap::UnreachableCodeReached));
        match Outcome::of(out_of_memory, None, &limits(), true) {
            Outcome::Faulted { fault, .. } => assert_eq!(fault.kind(), "memory"),
            other => panic!("{other:?}"),
        }
        let budget = Err(wasmtime::Error::from(Trap::Interrupt));
        match Outcome::of(budget, None, &limits(), false) {
            Outcome::Faulted { fault, .. } => assert_eq!(fault.kind(), "cpu"),
            other => panic!("{other:?}"),
        }
        let exit0 = Err(wasmtime::Error::from(I32Exit(0)));
        assert!(matches!(
            Outcome::of(exit0, None, &limits(), false),
            Outcome::Finished
        ));
        assert!(matches!(
            Outcome::of(Ok(Err("no".into())), None, &limits(), false),
            Outcome::HandlerError(_)
        ));
    }

    #[test]
    fn a_failure_message_leaves_the_backtrace_to_its_own_lines() {
        let store = wasmtime::Store::new(&wasmtime::Engine::default(), ());
        let backtrace = WasmBacktrace::force_capture(&store);
        let error = wasmtime::Error::msg("unknown handle index 7")
            .context("failed to write")
            .context(backtrace);
        assert!(error.downcast_ref::<WasmBacktrace>().is_some());
        assert_eq!(
            without_backtrace(&error),
            "failed to write: unknown handle index 7"
        );
    }
}
