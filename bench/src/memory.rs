//! Memory per idle connection: what a server holds for a client that is
//! connected but quiet, which is what bounds how many clients one machine
//! can keep. Three figures, each read before and after opening the
//! connections: resident memory (RSS), proportional set size (PSS), and
//! memory mappings, which the kernel caps per process (`vm.max_map_count`).

use std::fs;
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::load::open_idle;
use crate::servers::Server;

/// Idle connections held open at once: enough that per-process costs vanish
/// in the average, and within hotsock's default `--max-connections` (1000).
pub const IDLE_CONNECTIONS: usize = 1000;

/// Connections opened and closed first, so that one-time costs (the first
/// connection thread, allocator arenas, lazily built state) fall before the
/// first reading rather than into the per-connection figure.
const WARM_CONNECTIONS: usize = 8;

/// Time given to the server after opening or closing connections: threads
/// to start or finish, freed memory to be returned.
pub const SETTLE: Duration = Duration::from_secs(1);

/// A server's memory at one moment, as /proc shows it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Footprint {
    /// VmRSS (/proc/PID/status), KiB: every resident page, a page mapped
    /// many times (a file's code mapped once per connection) counted each
    /// time.
    pub rss_kib: u64,
    /// `Pss:` of /proc/PID/smaps_rollup, KiB: each resident page divided by
    /// the number of times it is mapped, so a shared page counts once in all.
    pub pss_kib: u64,
    /// Memory mappings: the lines of /proc/PID/maps.
    pub maps: u64,
}

impl Footprint {
    /// Reads `server`'s footprint now.
    pub fn read(server: &Server) -> Result<Footprint> {
        let pid = server.pid();
        let rollup = format!("/proc/{pid}/smaps_rollup");
        let text = fs::read_to_string(&rollup)
            .with_context(|| format!("cannot read {rollup}: has the server exited?"))?;
        Ok(Footprint {
            rss_kib: server.rss_kib()?,
            pss_kib: pss_kib(&text).with_context(|| format!("no Pss line in {rollup}"))?,
            maps: maps(pid)?,
        })
    }
}

/// What the idle-memory scenario measured on one server.
#[derive(Debug, Clone, Serialize)]
pub struct IdleMemory {
    /// Connections opened and held.
    pub connections: usize,
    /// Connections that could not be opened.
    pub failed: u64,
    /// The server's VmRSS before opening them, KiB.
    pub rss_before_kib: u64,
    /// VmRSS with all of them open and idle, KiB.
    pub rss_after_kib: u64,
    /// RSS: (after − before) / connections, KiB.
    pub per_connection_kib: f64,
    /// The server's PSS before opening them, KiB.
    pub pss_before_kib: u64,
    /// PSS with all of them open and idle, KiB.
    pub pss_after_kib: u64,
    /// PSS: (after − before) / connections, KiB.
    pub pss_per_connection_kib: f64,
    /// Memory mappings before opening them.
    pub maps_before: u64,
    /// Memory mappings with all of them open and idle.
    pub maps_after: u64,
    /// Mappings: (after − before) / connections.
    pub maps_per_connection: f64,
}

/// Reads the server's footprint, opens [`IDLE_CONNECTIONS`] connections
/// that each make one round trip and then stay idle, reads it again, and
/// closes them; returns once the server has had [`SETTLE`] to clean up.
pub fn idle_memory(server: &Server) -> Result<IdleMemory> {
    let (warm, _) = open_idle(server.addr, WARM_CONNECTIONS);
    drop(warm);
    thread::sleep(SETTLE);
    let before = Footprint::read(server)?;
    let (open, failed) = open_idle(server.addr, IDLE_CONNECTIONS);
    thread::sleep(SETTLE);
    let after = Footprint::read(server);
    let connections = open.len();
    drop(open);
    thread::sleep(SETTLE);
    let after = after?;
    let per = |after: u64, before: u64| (after as f64 - before as f64) / connections.max(1) as f64;
    Ok(IdleMemory {
        connections,
        failed,
        rss_before_kib: before.rss_kib,
        rss_after_kib: after.rss_kib,
        per_connection_kib: per(after.rss_kib, before.rss_kib),
        pss_before_kib: before.pss_kib,
        pss_after_kib: after.pss_kib,
        pss_per_connection_kib: per(after.pss_kib, before.pss_kib),
        maps_before: before.maps,
        maps_after: after.maps,
        maps_per_connection: per(after.maps, before.maps),
    })
}

/// The memory mappings of process `pid`: the lines of /proc/PID/maps.
pub fn maps(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/maps");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    Ok(count_maps(&text))
}

/// The mappings /proc/PID/maps lists in `text`: one a line.
pub fn count_maps(text: &str) -> u64 {
    text.lines().filter(|line| !line.trim().is_empty()).count() as u64
}

/// The `Pss:` figure of /proc/PID/smaps_rollup's `text`, in KiB (`kB`);
/// not `Pss_Anon:`, `Pss_File:` and the like, which are parts of it.
pub fn pss_kib(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        line.strip_prefix("Pss:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::{count_maps, pss_kib};

    /// /proc/PID/smaps_rollup as Linux 6.18 writes it (a python3's).
    const ROLLUP: &str = "\
5559c0587000-7fffa6c64000 ---p 00000000 00:00 0                          [rollup]
Rss:               14048 kB
Pss:               12183 kB
Pss_Dirty:          7340 kB
Pss_Anon:           7340 kB
Pss_File:           4843 kB
Pss_Shmem:             0 kB
Shared_Clean:       2160 kB
Shared_Dirty:          0 kB
Private_Clean:      4548 kB
Private_Dirty:      7340 kB
Referenced:        14048 kB
Anonymous:          7340 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
";

    #[test]
    fn pss_is_the_pss_line_not_its_parts() {
        assert_eq!(pss_kib(ROLLUP), Some(12183));
        // The parts alone are not the whole.
        let parts: String = ROLLUP
            .lines()
            .filter(|l| !l.starts_with("Pss:"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(pss_kib(&parts), None);
        assert_eq!(pss_kib(""), None);
        assert_eq!(pss_kib("Pss: lots kB\n"), None);
        assert_eq!(pss_kib("Pss:  12 kB"), Some(12));
    }

    #[test]
    fn maps_are_lines() {
        let maps = "\
55d0c8a6e000-55d0c8c1a000 r--p 00000000 08:01 1311   /usr/bin/hotsock
7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0
7ffd2b9d7000-7ffd2b9f8000 rw-p 00000000 00:00 0      [stack]
";
        assert_eq!(count_maps(maps), 3);
        assert_eq!(count_maps(""), 0);
        assert_eq!(count_maps("a\n\nb"), 2);
    }
}
