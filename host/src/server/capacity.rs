//! What `--max-connections` needs of the machine, checked before anything
//! listens, so that a server that could not hold its connections refuses to
//! start and names the limit to raise, instead of failing at the 6,800th
//! client.
//!
//! Each connection is a socket (an open file), a thread (a task id, and two
//! memory mappings: its stack and the stack's guard page) and an instance
//! (its linear memories' mappings: [`Handler::mappings_per_instance`]). The
//! instance pool's address space is the runtime's to check.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::sync::Mutex;

use anyhow::{Result, bail};

use crate::runtime::Handler;
use crate::sys;

/// Memory mappings of one connection thread: its stack and its guard page
/// (the signal stack is inside the stack, see [`sys::spawn_thread`]).
pub const THREAD_MAPPINGS: u64 = 2;

/// What the process needs besides its connections' share, with room to
/// spare. Measured with the default handler: about 20 open files, 10 threads
/// and 80 mappings; compiling a swapped-in handler briefly adds compiler
/// threads and the new version's code.
const BASE_FILES: u64 = 64;
const BASE_THREADS: u64 = 64;
const BASE_MAPPINGS: u64 = 1024;

/// The machine's limits that connections count against, and the memory
/// mappings each listener's connections may take of them.
#[derive(Debug)]
pub struct Capacity {
    /// `vm.max_map_count`, if it could be read.
    max_map_count: Option<u64>,
    /// Mappings set aside per listener: its connections times what one
    /// connection of its current handler takes.
    reserved: Mutex<HashMap<String, u64>>,
}

impl Capacity {
    /// Checks that `max_connections` connections, on all listeners, fit this
    /// machine's open files and threads; mappings are checked per handler,
    /// with [`Capacity::reserve`]. The error is one line naming each limit
    /// that is too low and how to raise it.
    pub fn check(max_connections: u32) -> Result<Self> {
        let connections = u64::from(max_connections);
        let mut short = Vec::new();
        let files = connections + BASE_FILES;
        if let Some(limit) = sys::open_file_limit()?.filter(|&limit| limit < files) {
            short.push(format!(
                "{files} open files, but the limit is {limit} (raise it with `ulimit -n {files}`, \
                 or LimitNOFILE={files} under systemd)"
            ));
        }
        let threads = connections + BASE_THREADS;
        for limit in thread_limits()? {
            if limit.max.saturating_sub(limit.used) < threads {
                short.push(format!(
                    "{threads} threads, but {} is {} with {} in use (raise it with {})",
                    limit.name,
                    limit.max,
                    limit.used,
                    limit.fix.replace("{}", &(limit.used + threads).to_string())
                ));
            }
        }
        if !short.is_empty() {
            bail!(
                "--max-connections {max_connections} needs {}; or lower --max-connections",
                short.join("; ")
            );
        }
        Ok(Capacity {
            max_map_count: read_number("/proc/sys/vm/max_map_count"),
            reserved: Mutex::new(HashMap::new()),
        })
    }

    /// Sets aside the memory mappings of `max_connections` instances of
    /// `handler`, each on a thread of its own, for `listener`, in place of
    /// what it had: if they fit `vm.max_map_count` with every other
    /// listener's; if not, says why and what to do, and changes nothing.
    pub fn reserve(
        &self,
        listener: &str,
        max_connections: u32,
        handler: &Handler,
    ) -> Result<(), String> {
        let per_connection = THREAD_MAPPINGS + handler.mappings_per_instance() as u64;
        let own = u64::from(max_connections) * per_connection;
        let mut reserved = sys::lock(&self.reserved);
        let others: u64 = reserved
            .iter()
            .filter(|(name, _)| *name != listener)
            .map(|(_, n)| n)
            .sum();
        if let Some(limit) = self.max_map_count {
            let needed = BASE_MAPPINGS + others + own;
            if needed > limit {
                let room = limit.saturating_sub(BASE_MAPPINGS + others) / per_connection;
                return Err(format!(
                    "--max-connections {max_connections} with this handler needs up to {needed} \
                     memory mappings ({per_connection} per connection), but vm.max_map_count is \
                     {limit}: raise it with `sysctl -w vm.max_map_count={needed}`, or lower \
                     --max-connections to at most {room}"
                ));
            }
        }
        reserved.insert(listener.to_string(), own);
        Ok(())
    }
}

/// A limit on threads, and how many count against it now.
struct ThreadLimit {
    name: &'static str,
    max: u64,
    used: u64,
    /// How to raise it; `{}` is where the number goes.
    fix: &'static str,
}

/// The limits on how many threads this process may start.
fn thread_limits() -> io::Result<Vec<ThreadLimit>> {
    let running = running_tasks();
    let mut limits = Vec::new();
    for (name, path, fix) in [
        (
            "kernel.threads-max",
            "/proc/sys/kernel/threads-max",
            "`sysctl -w kernel.threads-max={}`",
        ),
        (
            "kernel.pid_max",
            "/proc/sys/kernel/pid_max",
            "`sysctl -w kernel.pid_max={}`, at most 4194304",
        ),
    ] {
        if let Some(max) = read_number(path) {
            let used = running;
            limits.push(ThreadLimit {
                name,
                max,
                used,
                fix,
            });
        }
    }
    if let Some(max) = sys::process_limit()? {
        limits.push(ThreadLimit {
            name: "ulimit -u",
            max,
            used: user_tasks().unwrap_or(running),
            fix: "`ulimit -u {}`, or TasksMax= under systemd",
        });
    }
    Ok(limits)
}

/// Threads running on the whole machine now, from `/proc/loadavg`.
fn running_tasks() -> u64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| {
            let field = text.split_whitespace().nth(3)?;
            field.split_once('/')?.1.parse().ok()
        })
        .unwrap_or(0)
}

/// Threads of this user's processes now, which `ulimit -u` counts.
fn user_tasks() -> Option<u64> {
    let uid = sys::effective_uid().to_string();
    let mut tasks = 0;
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue; // not a process, or gone meanwhile
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
        };
        let mine = field("Uid:").and_then(|ids| ids.split_whitespace().next()) == Some(&uid);
        if mine {
            tasks += field("Threads:")
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(1);
        }
    }
    Some(tasks)
}

/// A number from a `/proc` file, if it can be read.
fn read_number(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}
