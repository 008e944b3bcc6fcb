//! Where the CPU went during a run: the server under test, the bench's own
//! clients, and everything else on the machine.
//!
//! The bench shares two cores with whatever else runs there (builds, other
//! people's benchmarks). A run during which other processes took a real share
//! of the CPU measured them as much as the server, so it is flagged. The
//! server's CPU per operation is also the cleanest efficiency figure on a
//! saturated machine, where throughput depends on how client and server
//! split the cores.

use std::time::Instant;

use serde::Serialize;

/// Other processes using more than this share of the machine during a run
/// mark it as disturbed. Idle servers' background ticking and kernel threads
/// stay around 1%; a build or another benchmark takes far more than 10%.
pub const DISTURBED_SHARE: f64 = 0.10;

/// CPU time counters at one moment, in clock ticks.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    at: Instant,
    machine_busy: u64,
    machine_steal: u64,
    bench: u64,
    server: u64,
}

/// Measures CPU use from [`CpuMeter::start`] to [`CpuMeter::finish`].
pub struct CpuMeter {
    server_pids: Vec<u32>,
    start: Option<Snapshot>,
}

/// CPU seconds used during a run, by whom.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuUse {
    /// Wall-clock length of the run, seconds.
    pub wall_s: f64,
    /// CPU seconds used by the server under test: every process of it.
    pub server_s: f64,
    /// CPU seconds used by the bench (its client threads).
    pub bench_s: f64,
    /// CPU seconds used by every other process (interrupt handling aside).
    pub other_s: f64,
    /// CPU seconds the hypervisor gave to other machines.
    pub steal_s: f64,
    /// `other_s` as a share of the machine's capacity over the run.
    pub other_share: f64,
}

impl CpuUse {
    /// Whether other processes took enough CPU to skew this run.
    pub fn disturbed(&self) -> bool {
        self.other_share > DISTURBED_SHARE
    }
}

impl CpuMeter {
    /// Starts measuring; `server_pid` is the server under test.
    pub fn start(server_pid: u32) -> Self {
        Self::start_all(&[server_pid])
    }

    /// Starts measuring a server made of several processes (a fleet, and
    /// the balancer in front of it): their CPU time counts as the server's.
    pub fn start_all(server_pids: &[u32]) -> Self {
        CpuMeter {
            server_pids: server_pids.to_vec(),
            start: snapshot(server_pids),
        }
    }

    /// CPU use since [`CpuMeter::start`]; `None` if /proc could not be read
    /// (for the server, if any of its processes has exited).
    pub fn finish(self) -> Option<CpuUse> {
        let (start, end) = (self.start?, snapshot(&self.server_pids)?);
        // SAFETY: sysconf only reads a configuration value.
        let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let seconds =
            |f: fn(&Snapshot) -> u64| f(&end).saturating_sub(f(&start)) as f64 / ticks_per_s;
        let (busy, server_s, bench_s) = (
            seconds(|s| s.machine_busy),
            seconds(|s| s.server),
            seconds(|s| s.bench),
        );
        let wall_s = (end.at - start.at).as_secs_f64();
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        // Ticks are sampled, per process and machine-wide alike: the
        // difference can come out a little below zero.
        let other_s = (busy - server_s - bench_s).max(0.0);
        Some(CpuUse {
            wall_s,
            server_s,
            bench_s,
            other_s,
            steal_s: seconds(|s| s.machine_steal),
            other_share: other_s / (wall_s * cores).max(f64::MIN_POSITIVE),
        })
    }
}

fn snapshot(server_pids: &[u32]) -> Option<Snapshot> {
    let at = Instant::now();
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // cpu  user nice system idle iowait irq softirq steal guest guest_nice
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
    Some(Snapshot {
        at,
        // User, nice and system time. Interrupt and softirq time is left
        // out: the bench's own loopback traffic causes most of it, and no
        // process is charged for it. Guest time is already in user time.
        machine_busy: field(0) + field(1) + field(2),
        machine_steal: field(7),
        bench: process_ticks("self")?,
        server: server_pids
            .iter()
            .map(|pid| process_ticks(&pid.to_string()))
            .sum::<Option<u64>>()?,
    })
}

/// utime + stime of a process, all its threads, in clock ticks.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}
