//! Resident memory per idle connection: what a server holds for a client
//! that is connected but quiet, which is what bounds how many clients one
//! machine can keep.

use std::thread;
use std::time::Duration;

use anyhow::Result;
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
    /// (after − before) / connections, KiB.
    pub per_connection_kib: f64,
}

/// Reads the server's VmRSS, opens [`IDLE_CONNECTIONS`] connections that
/// each make one round trip and then stay idle, reads it again, and closes
/// them; returns once the server has had [`SETTLE`] to clean up.
pub fn idle_memory(server: &Server) -> Result<IdleMemory> {
    let (warm, _) = open_idle(server.addr, WARM_CONNECTIONS);
    drop(warm);
    thread::sleep(SETTLE);
    let before = server.rss_kib()?;
    let (open, failed) = open_idle(server.addr, IDLE_CONNECTIONS);
    thread::sleep(SETTLE);
    let after = server.rss_kib();
    let connections = open.len();
    drop(open);
    thread::sleep(SETTLE);
    let after = after?;
    Ok(IdleMemory {
        connections,
        failed,
        rss_before_kib: before,
        rss_after_kib: after,
        per_connection_kib: (after as f64 - before as f64) / connections as f64,
    })
}
