//! The soak: many idle connections held at once (14,000 in `make soak`),
//! which is where a thread-per-connection server meets the machine's limits
//! (threads, open files, memory mappings) rather than its CPU.
//!
//! For each server: open the connections one after the other, each with a
//! round trip so the server has really taken it on; once all are open, make
//! a round trip on every one of them again, so all are shown to be served at
//! the same time; read the process's memory, mappings and threads; check it
//! is still alive.

use std::fs;
use std::thread;
use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::load::{open_idle, round_trip};
use crate::memory::{SETTLE, maps};
use crate::servers::{Kind, Server};

/// What the soak found on one server.
#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    /// Which server.
    pub server: Kind,
    /// Connections asked for.
    pub connections: usize,
    /// Connections opened, each with a round trip.
    pub opened: usize,
    /// Time to open them all, one after the other, seconds.
    pub open_s: f64,
    /// Round trips that succeeded on the open connections once all were open.
    pub answered: usize,
    /// VmRSS before, and with all connections open, KiB.
    pub rss_before_kib: u64,
    /// VmRSS with all connections open, KiB.
    pub rss_after_kib: u64,
    /// Memory mappings (lines of /proc/PID/maps) before, and with all open.
    pub maps_before: u64,
    /// Memory mappings with all connections open.
    pub maps_after: u64,
    /// Threads with all connections open.
    pub threads: u64,
    /// Whether the process was still running at the end.
    pub alive: bool,
}

impl Soak {
    /// Resident memory per open connection, KiB.
    pub fn rss_per_connection(&self) -> f64 {
        per(self.rss_after_kib, self.rss_before_kib, self.opened)
    }

    /// Whether anything fell short: a connection not opened or not
    /// answered, or the server gone.
    pub fn fell_short(&self) -> bool {
        self.opened < self.connections || self.answered < self.opened || !self.alive
    }

    /// Memory mappings per open connection.
    pub fn maps_per_connection(&self) -> f64 {
        per(self.maps_after, self.maps_before, self.opened)
    }
}

fn per(after: u64, before: u64, n: usize) -> f64 {
    (after as f64 - before as f64) / n.max(1) as f64
}

/// Runs the soak with `connections` on `server`.
pub fn run(server: &mut Server, connections: usize) -> Result<Soak> {
    // One-time costs (the first thread, allocator arenas) before the baseline.
    let (warm, _) = open_idle(server.addr, 8);
    drop(warm);
    thread::sleep(SETTLE);
    let rss_before_kib = server.rss_kib()?;
    let maps_before = maps(server.pid())?;
    let began = Instant::now();
    let (mut open, _failed) = open_idle(server.addr, connections);
    let open_s = began.elapsed().as_secs_f64();
    thread::sleep(SETTLE);
    let rss_after_kib = server.rss_kib()?;
    let maps_after = maps(server.pid())?;
    let threads = threads(server.pid())?;
    let mut answered = 0;
    for stream in &mut open {
        answered += usize::from(round_trip(stream).is_ok());
    }
    let alive = server.check_alive().is_ok();
    let opened = open.len();
    drop(open);
    thread::sleep(SETTLE);
    Ok(Soak {
        server: server.kind,
        connections,
        opened,
        open_s,
        answered,
        rss_before_kib,
        rss_after_kib,
        maps_before,
        maps_after,
        threads,
        alive,
    })
}

/// The table `make soak` prints.
pub fn table(soaks: &[Soak]) -> String {
    let mut out = format!(
        "{:<8} {:>9} {:>9} {:>9} {:>12} {:>14} {:>8} {:>6}\n",
        "server",
        "opened",
        "answered",
        "open s",
        "RSS KiB/conn",
        "mappings/conn",
        "threads",
        "alive"
    );
    for s in soaks {
        out.push_str(&format!(
            "{:<8} {:>9} {:>9} {:>9.1} {:>12.1} {:>14.1} {:>8} {:>6}\n",
            s.server.name(),
            s.opened,
            s.answered,
            s.open_s,
            s.rss_per_connection(),
            s.maps_per_connection(),
            s.threads,
            if s.alive { "yes" } else { "NO" }
        ));
    }
    out
}

fn threads(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no Threads line in {path}"))
}
