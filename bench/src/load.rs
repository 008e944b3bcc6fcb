//! The load generator: blocking `std::net` clients, one thread per
//! connection, sending 64-byte messages and reading the 98-byte replies.
//!
//! Blocking clients on threads are the same design as the servers under test,
//! and cost the same for all three of them; an interpreter-bound or async
//! client would put its own limits into the numbers. Every loop is bounded by
//! a deadline, and every read and write by [`IO_TIMEOUT`], so a server that
//! stops answering ends the scenario with failures instead of hanging it.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::cpu::{self, CpuUse};
use crate::report::percentile;

/// The message every round trip sends: 64 bytes, no line ending, so every
/// server replies with exactly `Echo=>` + message + ` at ` + 24-byte time.
pub const MESSAGE: &[u8; 64] = b"hotsock-bench: sixty-four bytes of payload, no line ending.....!";

/// Length of the reply to [`MESSAGE`]: `Echo=>` (6), the message (64), ` at `
/// (4) and a `time.ctime()` timestamp (24).
pub const REPLY_LEN: usize = 6 + MESSAGE.len() + 4 + 24;

/// Longest a connect, read or write may take before it counts as failed.
/// Far above any healthy round trip on loopback, and it bounds every wait.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Time each throughput scenario runs before measuring starts: connection
/// threads get scheduled, caches and allocators warm up, the pool fills.
pub const WARMUP: Duration = Duration::from_millis(500);

/// Pause after a failed connection attempt: a refused connect fails at once,
/// and retrying without a pause would only spin.
pub const RETRY_PAUSE: Duration = Duration::from_millis(1);

/// How long to wait for every client thread to be connected and ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects to `addr` with `TCP_NODELAY` (as all three servers set it) and
/// [`IO_TIMEOUT`] on every operation.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Sends [`MESSAGE`] and reads until the whole reply is in (TCP may deliver
/// it in pieces), then checks it is the echo of the message. Any stream:
/// a socket, or TLS over one.
pub fn round_trip(stream: &mut (impl Read + Write)) -> io::Result<()> {
    stream.write_all(MESSAGE)?;
    let mut reply = [0; REPLY_LEN];
    let mut have = 0;
    while have < REPLY_LEN {
        match stream.read(&mut reply[have..]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => have += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let expected_start = [&b"Echo=>"[..], MESSAGE, b" at "].concat();
    if !reply.starts_with(&expected_start) {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            "the reply is not `Echo=>MESSAGE at TIME`",
        ));
    }
    Ok(())
}

/// A new connection's whole life: connect, one round trip, close.
///
/// The close is abortive (a reset), so the client's port does not linger in
/// TIME_WAIT. A normal close leaves one port per connection there for a
/// while; at 14,000 connections/s the 28,000 ports of the usual ephemeral
/// range are all taken within two seconds, and `connect` then stalls for
/// tens of milliseconds at a time searching for a free one, about once a
/// second. That measured the client's kernel rather than the server, and
/// hurt the fastest server most. The reply has been read in full by then,
/// and every server sees the reset as the end of the connection.
pub fn connect_once(addr: SocketAddr) -> io::Result<()> {
    let mut stream = connect(addr)?;
    round_trip(&mut stream)?;
    reset_on_close(&stream)
}

/// Makes closing `stream` send a reset instead of a FIN (`SO_LINGER` with a
/// zero timeout); std's `set_linger` is not stable yet.
pub fn reset_on_close(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from `linger`,
    // which lives across the call; the descriptor is open (we borrow its stream).
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if set == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Throughput and latency of one scenario against one server.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Client threads, each with its own connection (or connection loop).
    pub clients: usize,
    /// Operations completed inside the measured time, per second.
    pub per_s: f64,
    /// Operations completed inside the measured time.
    pub completed: usize,
    /// Median latency of one operation, in microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, in microseconds.
    pub p99_us: f64,
    /// Operations that failed (a connect, read or write error, a wrong or
    /// missing reply), warm-up included.
    pub failed: u64,
    /// Operations completed over the whole run, warm-up included: the span
    /// the CPU use covers.
    pub completed_total: u64,
    /// Where the CPU went over the whole run, if measured.
    pub cpu: Option<CpuUse>,
    /// The server's CPU time per operation over the whole run, microseconds.
    pub server_cpu_us_per_op: Option<f64>,
}

impl Throughput {
    /// Adds the CPU use measured over the run.
    pub fn with_cpu(mut self, cpu: Option<CpuUse>) -> Self {
        self.server_cpu_us_per_op = cpu
            .filter(|_| self.completed_total > 0)
            .map(|cpu| cpu.server_s * 1e6 / self.completed_total as f64);
        self.cpu = cpu;
        self
    }
}

/// When a scenario measures: from the end of its warm-up until its deadline.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// When every client was ready and the run began.
    pub start: Instant,
    /// When measuring begins (after the warm-up).
    pub from: Instant,
    /// When the run ends: no operation starts after this.
    pub until: Instant,
}

/// What one client thread saw.
#[derive(Debug, Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    failed: u64,
    completed_total: u64,
}

impl Tally {
    /// Counts a completed operation, and keeps its latency if it completed
    /// inside the window.
    fn record(&mut self, window: &Window, began: Instant) {
        self.completed_total += 1;
        let done = Instant::now();
        if done >= window.from && done <= window.until {
            self.latencies_ns.push(nanos(done - began));
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Round trips over `clients` persistent connections, each on its own
/// thread, one message in flight per connection.
pub fn persistent(addr: SocketAddr, clients: usize, duration: Duration) -> Result<Throughput> {
    persistent_with(addr, clients, duration, round_trip)
}

/// Like [`persistent`], with `operation` as the round trip: it sends one
/// request on the stream, reads its whole answer and checks it. An error
/// counts as a failure and ends that connection's loop.
pub fn persistent_with(
    addr: SocketAddr,
    clients: usize,
    duration: Duration,
    operation: impl Fn(&mut TcpStream) -> io::Result<()> + Send + Sync + 'static,
) -> Result<Throughput> {
    persistent_over(clients, duration, move || connect(addr), operation)
}

/// Like [`persistent_with`], over any stream `open` makes (TLS over a
/// socket, say): each client opens its own before the run starts, and a
/// client whose `open` fails counts one failure and sits the run out.
pub fn persistent_over<S: 'static>(
    clients: usize,
    duration: Duration,
    open: impl Fn() -> io::Result<S> + Send + Sync + 'static,
    operation: impl Fn(&mut S) -> io::Result<()> + Send + Sync + 'static,
) -> Result<Throughput> {
    let tallies = run_clients(
        clients,
        WARMUP,
        duration,
        open,
        move |stream, window| {
            let mut tally = Tally::default();
            let Ok(mut stream) = stream else {
                tally.failed += 1;
                return tally;
            };
            while Instant::now() < window.until {
                let began = Instant::now();
                match operation(&mut stream) {
                    Ok(()) => tally.record(&window, began),
                    // This connection is broken: count it and stop using it.
                    Err(_) => {
                        tally.failed += 1;
                        break;
                    }
                }
            }
            tally
        },
        |_| {},
    )?;
    Ok(summarise(clients, duration, tallies))
}

/// New connections (connect, one round trip, close) from `clients` threads
/// that each open the next as soon as the last is done.
pub fn new_connections(addr: SocketAddr, clients: usize, duration: Duration) -> Result<Throughput> {
    new_connections_with(clients, duration, move || connect_once(addr))
}

/// Like [`new_connections`], with `once` as a new connection's whole life
/// (connect, a TLS handshake, one round trip, close, say).
pub fn new_connections_with(
    clients: usize,
    duration: Duration,
    once: impl Fn() -> io::Result<()> + Send + Sync + 'static,
) -> Result<Throughput> {
    let tallies = run_clients(
        clients,
        WARMUP,
        duration,
        || (),
        move |(), window| {
            let mut tally = Tally::default();
            while Instant::now() < window.until {
                let began = Instant::now();
                match once() {
                    Ok(()) => tally.record(&window, began),
                    Err(_) => {
                        tally.failed += 1;
                        thread::sleep(RETRY_PAUSE);
                    }
                }
            }
            tally
        },
        |_| {},
    )?;
    Ok(summarise(clients, duration, tallies))
}

/// One new connection of the hot-swap scenario.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it began, in seconds since the run started.
    pub t: f64,
    /// Connect to reply (or to failure), in microseconds.
    pub latency_us: f64,
    /// Whether it got its reply.
    pub ok: bool,
}

/// The new-connection loop of [`new_connections`] for `duration` with no
/// warm-up, recording every connection; `during` runs on the calling thread
/// once the clients have started (the hot swap scenario swaps from there).
pub fn timeline(
    addr: SocketAddr,
    clients: usize,
    duration: Duration,
    during: impl FnOnce(Instant),
) -> Result<Vec<Sample>> {
    let per_client = run_clients(
        clients,
        Duration::ZERO,
        duration,
        || (),
        move |(), window| {
            let mut samples = Vec::new();
            while Instant::now() < window.until {
                let began = Instant::now();
                let ok = connect_once(addr).is_ok();
                samples.push(Sample {
                    t: (began - window.start).as_secs_f64(),
                    latency_us: began.elapsed().as_secs_f64() * 1e6,
                    ok,
                });
                if !ok {
                    thread::sleep(RETRY_PAUSE);
                }
            }
            samples
        },
        during,
    )?;
    let mut samples: Vec<Sample> = per_client.into_iter().flatten().collect();
    samples.sort_by(|a, b| a.t.total_cmp(&b.t));
    Ok(samples)
}

fn summarise(clients: usize, duration: Duration, tallies: Vec<Tally>) -> Throughput {
    let failed = tallies.iter().map(|t| t.failed).sum();
    let completed_total = tallies.iter().map(|t| t.completed_total).sum();
    let mut latencies: Vec<u64> = tallies.into_iter().flat_map(|t| t.latencies_ns).collect();
    latencies.sort_unstable();
    let us = |p| percentile(&latencies, p).map_or(f64::NAN, |ns| ns as f64 / 1000.0);
    Throughput {
        clients,
        per_s: latencies.len() as f64 / duration.as_secs_f64(),
        completed: latencies.len(),
        p50_us: us(50.0),
        p99_us: us(99.0),
        failed,
        completed_total,
        cpu: None,
        server_cpu_us_per_op: None,
    }
}

/// Holds every client thread back until all of them are ready, then lets
/// them go together with one shared [`Window`]. A condition variable rather
/// than a `Barrier`, so that the main thread can also release the threads it
/// did start when starting another one fails.
#[derive(Default)]
struct Gate {
    window: Mutex<Option<Window>>,
    opened: Condvar,
}

impl Gate {
    fn open(&self, window: Window) {
        *self.window.lock().unwrap_or_else(PoisonError::into_inner) = Some(window);
        self.opened.notify_all();
    }

    /// Opens the gate onto an empty window, so every thread finishes at once.
    fn close(&self) {
        let now = Instant::now();
        self.open(Window {
            start: now,
            from: now,
            until: now,
        });
    }

    fn wait(&self) -> Window {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(window) = *window {
                return window;
            }
            window = self
                .opened
                .wait(window)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Runs `clients` threads: each calls `prepare` (say, connects), and once all
/// have, `work` with the shared window, `warmup` then `duration` long.
/// Returns what each `work` returned.
fn run_clients<S: 'static, T: Send + 'static>(
    clients: usize,
    warmup: Duration,
    duration: Duration,
    prepare: impl Fn() -> S + Send + Sync + 'static,
    work: impl Fn(S, Window) -> T + Send + Sync + 'static,
    during: impl FnOnce(Instant),
) -> Result<Vec<T>> {
    let gate = Arc::new(Gate::default());
    let prepare = Arc::new(prepare);
    let work = Arc::new(work);
    let (ready, readies) = mpsc::channel();
    let mut threads = Vec::with_capacity(clients);
    for i in 0..clients {
        let (shared_gate, prepare, work, ready) = (
            Arc::clone(&gate),
            Arc::clone(&prepare),
            Arc::clone(&work),
            ready.clone(),
        );
        let spawned = thread::Builder::new()
            .name(format!("client-{i}"))
            // Client threads only shuffle small buffers.
            .stack_size(256 * 1024)
            .spawn(move || {
                let state = prepare();
                let _ = ready.send(());
                work(state, shared_gate.wait())
            });
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                // Let the threads already started finish at once.
                gate.close();
                for thread in threads {
                    let _ = thread.join();
                }
                bail!("cannot start client thread {i} of {clients}: {e}");
            }
        }
    }
    for _ in 0..clients {
        if readies.recv_timeout(READY_TIMEOUT).is_err() {
            // Those that are ready leave at once; the rest when their
            // connect times out.
            gate.close();
            bail!("the client threads were not connected after {READY_TIMEOUT:?}");
        }
    }
    let start = Instant::now();
    let from = start + warmup;
    gate.open(Window {
        start,
        from,
        until: from + duration,
    });
    during(start);
    threads
        .into_iter()
        .map(|thread| {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))
        })
        .collect()
}

/// Opens `n` connections, one round trip each so that the server has really
/// taken each one on, and hands them back still open. Returns the open ones
/// and how many failed.
pub fn open_idle(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, u64) {
    let mut open = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        match connect(addr).and_then(|mut stream| round_trip(&mut stream).map(|()| stream)) {
            Ok(stream) => open.push(stream),
            Err(_) => failed += 1,
        }
    }
    (open, failed)
}

/// What one set-up of a side-by-side bench (`--fleet`, `--tls`) did in one
/// round: its two scenarios.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SetupRound {
    /// Round trips over the scenario's persistent connections.
    pub round_trips: Option<Throughput>,
    /// New connections from the scenario's clients.
    pub new_connections: Option<Throughput>,
}

/// One round of a side-by-side bench: its set-ups `S`, started afresh,
/// each through both scenarios.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Round<S: Ord> {
    /// 1, 2, ...
    pub round: usize,
    /// The order the set-ups were measured in.
    pub order: Vec<S>,
    /// What each did.
    pub setups: std::collections::BTreeMap<S, SetupRound>,
}

/// The note naming every run of `rounds` that shared the machine with other
/// busy processes, as `round N SETUP SCENARIO (P%)` with `name` naming a
/// set-up, counted as `runs` ("run(s)", "TLS run(s)"); none if no run did.
pub fn disturbed_note<S: Ord + Copy>(
    rounds: &[Round<S>],
    name: impl Fn(S) -> &'static str,
    runs: &str,
) -> Option<String> {
    let disturbed: Vec<String> = rounds
        .iter()
        .flat_map(|round| {
            round.setups.iter().flat_map(|(&setup, result)| {
                [
                    ("round trips", &result.round_trips),
                    ("new connections", &result.new_connections),
                ]
                .into_iter()
                .filter_map(|(scenario, run)| {
                    let cpu = run.as_ref()?.cpu.filter(CpuUse::disturbed)?;
                    Some(format!(
                        "round {} {} {scenario} ({:.0}%)",
                        round.round,
                        name(setup),
                        cpu.other_share * 100.0
                    ))
                })
                .collect::<Vec<_>>()
            })
        })
        .collect();
    (!disturbed.is_empty()).then(|| {
        format!(
            "{} {runs} shared the machine with other busy processes (over {:.0}% of its CPU): {}",
            disturbed.len(),
            cpu::DISTURBED_SHARE * 100.0,
            disturbed.join("; ")
        )
    })
}
