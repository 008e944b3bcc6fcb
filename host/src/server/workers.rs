//! Reusable connection threads. hotsock stays a thread-per-connection server:
//! every open connection has a thread of its own. But a thread whose
//! connection has closed waits a little for the next one instead of exiting,
//! so a new connection usually skips creating a thread, which is a large part
//! of what a new connection costs.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::sys;

/// How long a thread without a connection waits for one before exiting:
/// long enough to carry a busy server from one connection to the next, short
/// enough that a burst's threads do not linger.
pub const IDLE_THREAD_TTL: Duration = Duration::from_secs(10);

/// One connection's work.
pub use crate::sys::Job;

/// The connection threads: busy ones and idle ones waiting for work.
#[derive(Clone)]
pub struct Workers {
    shared: Arc<Shared>,
    stack_size: usize,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
}

#[derive(Default)]
struct State {
    /// Jobs handed over but not yet picked up; never more than `idle`.
    queued: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
}

impl Workers {
    /// Threads with stacks of `stack_size` bytes (the guest runs on them).
    pub fn new(stack_size: usize) -> Self {
        Workers {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                work: Condvar::new(),
            }),
            stack_size,
        }
    }

    /// Runs `job` on an idle thread, or on a new one if none is idle.
    pub fn run(&self, job: Job) -> io::Result<()> {
        let mut state = self.shared.lock();
        // Each queued job needs an idle thread of its own to take it.
        if state.idle > state.queued.len() {
            state.queued.push_back(job);
            drop(state);
            self.shared.work.notify_one();
            return Ok(());
        }
        drop(state);
        let shared = Arc::clone(&self.shared);
        sys::spawn_thread(
            c"connection",
            self.stack_size,
            Box::new(move || shared.work_from(job)),
        )
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a queue and a count, consistent between statements;
        // a job's panic never happens while it is locked.
        sys::lock(&self.state)
    }

    /// A thread's life: run a job, then wait for the next until none comes.
    fn work_from(&self, first: Job) {
        let mut job = first;
        loop {
            job();
            match self.next_job() {
                Some(next) => job = next,
                None => return,
            }
        }
    }

    fn next_job(&self) -> Option<Job> {
        let mut state = self.lock();
        state.idle += 1;
        loop {
            if let Some(job) = state.queued.pop_front() {
                state.idle -= 1;
                return Some(job);
            }
            let (next, wait) = self
                .work
                .wait_timeout(state, IDLE_THREAD_TTL)
                .unwrap_or_else(|e| e.into_inner());
            state = next;
            if wait.timed_out() && state.queued.is_empty() {
                state.idle -= 1;
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    #[test]
    fn a_finished_thread_takes_the_next_job() {
        let workers = Workers::new(256 * 1024);
        let (tx, rx) = mpsc::channel();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let tx = tx.clone();
            workers
                .run(Box::new(move || tx.send(thread::current().id()).unwrap()))
                .unwrap();
            ids.push(rx.recv().unwrap());
            // Let the thread become idle before handing over the next job.
            while workers.shared.lock().idle == 0 {
                thread::yield_now();
            }
        }
        assert!(
            ids.windows(2).all(|w| w[0] == w[1]),
            "jobs ran on different threads: {ids:?}"
        );
    }

    #[test]
    fn jobs_run_at_the_same_time_when_none_is_idle() {
        let workers = Workers::new(256 * 1024);
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let (tx, rx) = mpsc::channel();
        for _ in 0..4 {
            let (barrier, tx) = (Arc::clone(&barrier), tx.clone());
            // Each job waits for all four: they can only finish if each has a thread.
            workers
                .run(Box::new(move || {
                    tx.send(barrier.wait().is_leader()).unwrap()
                }))
                .unwrap();
        }
        let done: Vec<bool> = (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(done.iter().filter(|leader| **leader).count(), 1);
    }
}
