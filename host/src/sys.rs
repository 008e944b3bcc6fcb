//! Every call into libc, each behind a safe function that says what it does
//! and why it is sound, and the poison-tolerant lock the host uses.
//!
//! Kept in one leaf so that `unsafe` is in one place to review, and so that
//! no layer has to reach past its neighbours for a system call.

use std::io;
use std::net::Shutdown;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How much lower than serving threads compiling threads run: enough that
/// the scheduler gives serving nearly all of a busy CPU, while an idle
/// server still compiles at full speed.
const BACKGROUND_NICE: libc::c_int = 10;

/// Locks a mutex whose data stays consistent even if a holder panicked.
///
/// Use it only where every critical section leaves the data valid between
/// statements (a counter, a queue, a map insert or remove): then a panic
/// elsewhere in the holder's thread is no reason to take the server down too.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lowers the calling thread to background priority (nice 10): for threads
/// that compile and validate handlers, which must not take CPU from serving.
/// Best effort: if the system refuses, the thread keeps its priority.
pub fn background_priority() {
    // SAFETY: gettid and setpriority have no memory-safety preconditions; on
    // Linux a thread id names just that thread.
    unsafe {
        let thread = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread, BACKGROUND_NICE);
    }
}

/// The CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if read != 0 {
        // Not seen on Linux. Callers use this to stop runaway guests, and
        // charging nothing would let one run forever, so fall back to the
        // wall clock, which charges too much.
        return wall_clock_since_start();
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Time since the first call, for [`thread_cpu_time`]'s fallback.
fn wall_clock_since_start() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// Shuts down one or both directions of the socket `fd`, which wakes a
/// thread blocked reading or writing it. A failure (the peer already gone)
/// leaves nothing to wake, so it is ignored.
///
/// # Safety
///
/// `fd` must be an open socket for the duration of the call: if it has been
/// closed, the number may name an unrelated file opened since.
pub unsafe fn shutdown(fd: RawFd, side: Shutdown) {
    let how = match side {
        Shutdown::Read => libc::SHUT_RD,
        Shutdown::Write => libc::SHUT_WR,
        Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: the caller guarantees that `fd` is an open socket.
    unsafe { libc::shutdown(fd, how) };
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Raises the soft limit on open files to the hard limit, and returns the
/// limit now in force. Each connection is a socket, so the usual soft limit
/// of 1024 would cap a server set up for `--max-connections 1000` well below
/// that; servers (and Go's runtime) raise it the same way.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        // An unlimited hard limit still cannot exceed the kernel's nr_open.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(1 << 20);
        limit.rlim_cur = limit.rlim_max.min(nr_open);
        // SAFETY: setrlimit reads the struct we pass, nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}
