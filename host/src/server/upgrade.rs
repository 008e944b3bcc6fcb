//! Replacing the running hotsock binary without dropping a connection, as
//! nginx and HAProxy do: the old process starts the binary now on disk with
//! the same arguments, handing it its listening sockets and the handler each
//! listener serves now; the new process serves from the same sockets (the
//! kernel queues new clients on the socket, not on a process, so none is
//! lost between the two) and says when it is ready; only then does the old
//! one stop accepting, drain its open connections and exit. If the new one
//! fails to start, the old one never stopped.
//!
//! The sockets travel as descriptors 3, 4, ... with systemd's `LISTEN_FDS`
//! and `LISTEN_FDNAMES` (see `inherited`); the rest in [`UPGRADE_ENV`]: the
//! parent's process id, a pipe to report readiness on, each handler as an
//! in-memory file, the first connection id the new process may use, and
//! (with local rooms) one end of the bridge that keeps each room one room
//! while both processes serve.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::runtime::{Bridge, Side};
use crate::server::accept::Stopper;
use crate::server::http::Closer;
use crate::server::listener::Listener;
use crate::server::metrics::Metrics;
use crate::server::notify::{is_supervised, notify};
use crate::server::registry::{Kept, Lineage, RollbackRecord};
use crate::sys;

/// The variable that tells a new process it replaces its parent, and what
/// it was handed besides the sockets (JSON).
pub const UPGRADE_ENV: &str = "HOTSOCK_UPGRADE";

/// How long the new process may take to start serving: loading every
/// handler from the code cache takes well under a second; compiling a large
/// one afresh (a Python handler without a cache) tens of seconds.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What the old process writes into [`UPGRADE_ENV`].
#[derive(Debug, Serialize, Deserialize)]
struct Handed {
    /// The old process's id: only its own child believes the rest.
    from: u32,
    /// Where to write `ready` once serving.
    ready_fd: RawFd,
    /// Each listener's current handler.
    handlers: Vec<HandedHandler>,
    /// The first connection id the new process may use: past every id the
    /// old one can give before it stops accepting. Absent from an older
    /// hotsock's hand-over.
    #[serde(default)]
    first_id: Option<u64>,
    /// The new process's end of the rooms bridge (a Unix stream socket).
    #[serde(default)]
    rooms_fd: Option<RawFd>,
    /// An in-memory file holding the old process's metrics (OpenMetrics
    /// text), which the new one's counters go on from.
    #[serde(default)]
    metrics_fd: Option<RawFd>,
}

/// A listener's versions: the current one (what the new process starts on,
/// so that a swap made through the admin API survives the upgrade), and,
/// from a hotsock that carries them, its number, the rollback target, the
/// next number and the rollbacks so far.
#[derive(Debug, Serialize, Deserialize)]
struct HandedHandler {
    listener: String,
    /// Where the component came from, as the old process's status said.
    source: String,
    /// An in-memory file holding the component.
    fd: RawFd,
    #[serde(default)]
    number: Option<u64>,
    #[serde(default)]
    next_number: Option<u64>,
    #[serde(default)]
    previous: Option<HandedVersion>,
    #[serde(default)]
    rollbacks: Vec<RollbackRecord>,
}

/// A rollback target, handed over.
#[derive(Debug, Serialize, Deserialize)]
struct HandedVersion {
    number: u64,
    source: String,
    /// An in-memory file holding the component.
    fd: RawFd,
}

/// What else an upgrade carries over, besides the sockets and handlers.
#[derive(Debug)]
pub struct Carried<'a> {
    /// The first connection id the new process may use.
    pub first_id: u64,
    /// The new process's end of the rooms bridge, if rooms are local.
    pub rooms: Option<BorrowedFd<'a>>,
    /// This process's metrics now, if it serves them.
    pub metrics: Option<String>,
}

/// How far past the old process's next connection id the new one starts:
/// more connections than the old one can accept before the new one is
/// ready (at most [`READY_TIMEOUT`]; 16.7 million is 140,000 a second for
/// all of it), so that ids never repeat across the two and keep increasing.
pub const ID_RESERVE: u64 = 1 << 24;

/// A new process that was started and has not yet said it is ready.
pub struct Starting {
    child: Child,
    ready: mpsc::Receiver<io::Result<String>>,
}

/// How an upgrade ended, when it did not.
#[derive(Debug)]
pub enum Failed {
    /// The binary could not be started at all.
    Spawn(io::Error),
    /// It exited before saying it was ready (its error is in the log).
    Exited(ExitStatus),
    /// It did not say it was ready in time, and was stopped.
    Timeout(Duration),
    /// Something went wrong on this side.
    Other(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Spawn(e) => write!(f, "cannot start it: {e}"),
            Failed::Exited(status) => write!(
                f,
                "it exited ({status}) before it was ready; its own log lines above say why"
            ),
            Failed::Timeout(after) => {
                write!(f, "it was not ready after {after:?}, so it was stopped")
            }
            Failed::Other(why) => f.write_str(why),
        }
    }
}

/// Starts `exe` with `args`, handing it `sockets` (by name), each
/// listener's versions (`handlers`, by listener name) and what is
/// `carried`. It shares this process's stdout and stderr, so its log
/// continues this one.
pub fn start(
    exe: &Path,
    args: &[OsString],
    sockets: &[(String, BorrowedFd<'_>)],
    handlers: &[(String, Lineage)],
    carried: &Carried<'_>,
) -> Result<Starting, Failed> {
    let other = |e: io::Error| Failed::Other(e.to_string());
    let (ready_read, ready_write) = io::pipe().map_err(other)?;
    // Descriptors in the child: the sockets first, as LISTEN_FDS counts
    // them; then the pipe; then the handlers' files; then the rooms bridge.
    let first_after_sockets = sys::FIRST_INHERITED_FD + sockets.len() as RawFd;
    let mut files = Vec::new();
    let mut file = |listener: &str, kept: &Kept| -> Result<RawFd, Failed> {
        let name = CString::new(format!("hotsock-handler-{listener}-v{}", kept.number))
            .map_err(|e| Failed::Other(e.to_string()))?;
        files.push(sys::memory_file(&name, &kept.component).map_err(other)?);
        Ok(first_after_sockets + files.len() as RawFd)
    };
    let mut handed_handlers = Vec::new();
    for (listener, lineage) in handlers {
        let previous = match &lineage.previous {
            Some(kept) => Some(HandedVersion {
                number: kept.number,
                source: kept.source.clone(),
                fd: file(listener, kept)?,
            }),
            None => None,
        };
        handed_handlers.push(HandedHandler {
            listener: listener.clone(),
            source: lineage.current.source.clone(),
            fd: file(listener, &lineage.current)?,
            number: Some(lineage.current.number),
            next_number: Some(lineage.next_number),
            previous,
            rollbacks: lineage.rollbacks.clone(),
        });
    }
    let after_handlers = first_after_sockets + 1 + files.len() as RawFd;
    let rooms_fd = carried.rooms.map(|_| after_handlers);
    let metrics = match &carried.metrics {
        Some(text) => Some(sys::memory_file(c"hotsock-metrics", text.as_bytes()).map_err(other)?),
        None => None,
    };
    let metrics_fd = metrics
        .as_ref()
        .map(|_| after_handlers + RawFd::from(rooms_fd.is_some()));
    let handed = Handed {
        from: std::process::id(),
        ready_fd: first_after_sockets,
        handlers: handed_handlers,
        first_id: Some(carried.first_id),
        rooms_fd,
        metrics_fd,
    };
    let mut fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| *fd).collect();
    fds.push(ready_write.as_fd());
    fds.extend(files.iter().map(|f| f.as_fd()));
    fds.extend(carried.rooms);
    fds.extend(metrics.as_ref().map(AsFd::as_fd));
    let names: Vec<&str> = sockets.iter().map(|(name, _)| name.as_str()).collect();

    let mut command = Command::new(exe);
    command
        .args(args)
        .env_remove("LISTEN_PID")
        .env("LISTEN_FDS", sockets.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env(
            UPGRADE_ENV,
            serde_json::to_string(&handed).map_err(|e| Failed::Other(e.to_string()))?,
        );
    sys::pass_fds(&mut command, &fds).map_err(other)?;
    let child = command.spawn().map_err(Failed::Spawn)?;
    // Only the child may hold the pipe's writing end: when it exits, the
    // reader sees the end of the pipe instead of waiting for the timeout.
    drop(command);
    drop(ready_write);
    drop(files);
    let (tell, ready) = mpsc::channel();
    let reader = thread::Builder::new()
        .name("upgrade-ready".into())
        .spawn(move || {
            let mut said = String::new();
            let read = (&ready_read).take(64).read_to_string(&mut said);
            let _ = tell.send(read.map(|_| said));
        });
    if let Err(e) = reader {
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        return Err(Failed::Other(format!("cannot start a thread: {e}")));
    }
    Ok(Starting { child, ready })
}

impl Starting {
    /// The new process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the new process to say it is ready; stops
    /// it if it does not. On success, the process is left running: it
    /// outlives this one.
    pub fn wait_ready(mut self, timeout: Duration) -> Result<u32, Failed> {
        let pid = self.child.id();
        match self.ready.recv_timeout(timeout) {
            Ok(Ok(said)) if said.trim() == "ready" => Ok(pid),
            Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The pipe closed without `ready`: the child is exiting.
                let status = self
                    .child
                    .wait()
                    .map_err(|e| Failed::Other(e.to_string()))?;
                Err(Failed::Exited(status))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(Failed::Timeout(timeout))
            }
        }
    }
}

/// What a process started by an upgrade was handed, besides its sockets.
pub struct Upgrading {
    parent: u32,
    ready: Option<File>,
    handlers: BTreeMap<String, Lineage>,
    first_id: Option<u64>,
    rooms: Option<UnixStream>,
    metrics: Option<String>,
}

impl Upgrading {
    /// What the parent handed this process, if it was started by an upgrade
    /// (and [`UPGRADE_ENV`] is not left over from some other process).
    pub fn from_env() -> Result<Option<Self>> {
        let Ok(text) = std::env::var(UPGRADE_ENV) else {
            return Ok(None);
        };
        let handed: Handed = serde_json::from_str(&text)
            .with_context(|| format!("{UPGRADE_ENV} is not what this hotsock writes"))?;
        if handed.from != sys::parent_pid() {
            // Inherited from an ancestor that was upgraded: not for us.
            return Ok(None);
        }
        let adopt = |fd: RawFd, what: &str| {
            // SAFETY: the parent passed these descriptors to this process,
            // and nothing here has opened them before this runs, at start.
            unsafe { sys::adopt_inherited(fd) }
                .with_context(|| format!("the {what} handed over at descriptor {fd} is not open"))
        };
        let ready = File::from(adopt(handed.ready_fd, "readiness pipe")?);
        let read = |fd: RawFd, listener: &str| -> Result<Arc<[u8]>> {
            let mut file = File::from(adopt(fd, "handler")?);
            let mut component = Vec::new();
            file.read_to_end(&mut component)
                .with_context(|| format!("cannot read listener {listener}'s handler"))?;
            Ok(component.into())
        };
        let mut handlers = BTreeMap::new();
        for handler in handed.handlers {
            let listener = handler.listener;
            let previous = match handler.previous {
                Some(v) => Some(Kept {
                    number: v.number,
                    source: v.source,
                    component: read(v.fd, &listener)?,
                }),
                None => None,
            };
            let number = handler.number.unwrap_or(1);
            let lineage = Lineage {
                current: Kept {
                    number,
                    source: handler.source,
                    component: read(handler.fd, &listener)?,
                },
                previous,
                next_number: handler.next_number.unwrap_or(number + 1),
                rollbacks: handler.rollbacks,
            };
            handlers.insert(listener, lineage);
        }
        let rooms = handed
            .rooms_fd
            .map(|fd| adopt(fd, "rooms bridge").map(UnixStream::from))
            .transpose()?;
        let metrics = match handed.metrics_fd {
            Some(fd) => {
                let mut text = String::new();
                File::from(adopt(fd, "metrics")?)
                    .read_to_string(&mut text)
                    .context("cannot read the old process's metrics")?;
                Some(text)
            }
            None => None,
        };
        Ok(Some(Upgrading {
            parent: handed.from,
            ready: Some(ready),
            handlers,
            first_id: handed.first_id,
            rooms,
            metrics,
        }))
    }

    /// The process being replaced.
    pub fn parent(&self) -> u32 {
        self.parent
    }

    /// The versions of listener `name` in the old process, to start on
    /// instead of its file.
    pub fn take_handler(&mut self, name: &str) -> Option<Lineage> {
        self.handlers.remove(name)
    }

    /// The first connection id this process may use, past the old one's.
    pub fn first_id(&self) -> Option<u64> {
        self.first_id
    }

    /// The old process's metrics as it handed over, to go on from.
    pub fn take_metrics(&mut self) -> Option<String> {
        self.metrics.take()
    }

    /// This process's end of the bridge to the old one's rooms, if any.
    pub fn take_rooms(&mut self) -> Option<UnixStream> {
        self.rooms.take()
    }

    /// Tells the old process that this one serves now; it then stops
    /// accepting and drains.
    pub fn report_ready(&mut self) -> io::Result<()> {
        match self.ready.take() {
            Some(mut pipe) => pipe.write_all(b"ready\n"),
            None => Ok(()),
        }
    }
}

/// This process's binary and arguments as it was started, for starting it
/// again: read at start, since once the file is replaced the running
/// binary's path reads as `... (deleted)`.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The binary's path.
    pub exe: PathBuf,
    /// The arguments after the program name.
    pub args: Vec<OsString>,
}

impl Invocation {
    /// This process's own.
    pub fn current() -> Result<Self> {
        let exe = std::env::current_exe().context("cannot tell where the hotsock binary is")?;
        if !exe.exists() {
            bail!("the hotsock binary {} is gone", exe.display());
        }
        Ok(Invocation {
            exe,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

/// Everything a binary upgrade hands over, and how far one has got.
pub struct Upgrader {
    /// How this process was started, if that can be told.
    invocation: Result<Invocation, String>,
    /// Copies of every listening socket, by the name the new process
    /// matches them by; emptied once this process stops.
    sockets: Mutex<Vec<(String, OwnedFd)>>,
    listeners: Vec<Arc<Listener>>,
    stopper: Stopper,
    /// The control-plane APIs to close once the new process serves.
    closers: Vec<Closer>,
    /// What the new process goes on from.
    continuity: Continuity,
    state: Mutex<State>,
}

/// What a new process goes on from, so that clients and operators see one
/// server across the upgrade.
pub struct Continuity {
    /// The bridge the new process's rooms join this one's over, if local.
    pub bridge: Option<Arc<Bridge>>,
    /// The next connection id here.
    pub ids: Arc<AtomicU64>,
    /// The metrics served here, if any, whose counters the new process's
    /// go on from.
    pub metrics: Option<Arc<Metrics>>,
}

/// How far an upgrade has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    /// A new process is starting.
    Starting,
    /// This process handed everything to the new one, and drains.
    HandedOver(u32),
}

impl Upgrader {
    /// An upgrader for a server whose listening sockets are `sockets`,
    /// and whose new process goes on from `continuity`.
    pub fn new(
        invocation: Result<Invocation>,
        sockets: Vec<(String, OwnedFd)>,
        listeners: Vec<Arc<Listener>>,
        stopper: Stopper,
        closers: Vec<Closer>,
        continuity: Continuity,
    ) -> Self {
        Upgrader {
            invocation: invocation.map_err(|e| format!("{e:#}")),
            sockets: Mutex::new(sockets),
            listeners,
            stopper,
            closers,
            continuity,
            state: Mutex::new(State::Idle),
        }
    }

    /// Drops the copies of the listening sockets: this process is stopping.
    pub fn release(&self) {
        sys::lock(&self.sockets).clear();
    }

    /// Upgrades on a thread of its own, so that signals are still handled
    /// while the new process starts.
    pub fn spawn(this: &Arc<Self>) {
        let upgrader = Arc::clone(this);
        let started = thread::Builder::new()
            .name("upgrade".into())
            .spawn(move || upgrader.upgrade());
        if let Err(e) = started {
            warn!("SIGUSR2: cannot start the upgrade ({e}); still serving");
        }
    }

    /// Starts the binary on disk with this process's sockets and handlers,
    /// and hands over once it is ready; or logs why not and carries on.
    fn upgrade(&self) {
        let invocation = match &self.invocation {
            Ok(invocation) => invocation,
            Err(why) => return warn!("SIGUSR2: cannot upgrade: {why}; still serving"),
        };
        {
            let mut state = sys::lock(&self.state);
            match *state {
                State::Idle if !self.stopper.is_stopping() => *state = State::Starting,
                State::Idle => return warn!("SIGUSR2 ignored: this server is stopping"),
                State::Starting => {
                    return warn!("SIGUSR2 ignored: an upgrade is already under way");
                }
                State::HandedOver(pid) => {
                    return warn!("SIGUSR2 ignored: process {pid} has already taken over");
                }
            }
        }
        let outcome = self.start_and_wait(invocation);
        let mut state = sys::lock(&self.state);
        *state = match outcome {
            Some(pid) => State::HandedOver(pid),
            None => State::Idle,
        };
    }

    fn start_and_wait(&self, invocation: &Invocation) -> Option<u32> {
        let exe = invocation.exe.display();
        let handlers: Vec<(String, Lineage)> = self
            .listeners
            .iter()
            .map(|listener| (listener.name().to_string(), listener.registry().lineage()))
            .collect();
        let starting = {
            let sockets = sys::lock(&self.sockets);
            if sockets.is_empty() {
                warn!("SIGUSR2 ignored: this server is stopping");
                return None;
            }
            let borrowed: Vec<_> = sockets
                .iter()
                .map(|(name, fd)| (name.clone(), fd.as_fd()))
                .collect();
            info!(
                "SIGUSR2: starting {exe} to take over {} socket(s); this process serves until \
                 it is ready",
                borrowed.len()
            );
            // Rooms stay one across the two processes: the bridge is open
            // before the new one starts, so it hears every join and message
            // from now on. If it fails to start, its end closes, and so
            // does this one.
            let bridge = match &self.continuity.bridge {
                Some(bridge) => match UnixStream::pair() {
                    Ok((ours, theirs)) => match bridge.connect(Side::Newer, ours) {
                        Ok(()) => Some(theirs),
                        Err(e) => {
                            warn!("SIGUSR2: cannot open the rooms bridge ({e}); still serving");
                            return None;
                        }
                    },
                    Err(e) => {
                        warn!("SIGUSR2: cannot open the rooms bridge ({e}); still serving");
                        return None;
                    }
                },
                None => None,
            };
            let carried = Carried {
                first_id: self.continuity.ids.load(Ordering::Relaxed) + ID_RESERVE,
                rooms: bridge.as_ref().map(AsFd::as_fd),
                metrics: (self.continuity.metrics.as_ref()).and_then(|m| m.encode().ok()),
            };
            start(
                &invocation.exe,
                &invocation.args,
                &borrowed,
                &handlers,
                &carried,
            )
        };
        let pid = match starting.and_then(|s| s.wait_ready(READY_TIMEOUT)) {
            Ok(pid) => pid,
            Err(e) => {
                warn!("upgrade failed: the new hotsock ({exe}): {e}; this process keeps serving");
                return None;
            }
        };
        if self.stopper.is_stopping() {
            // Stopped while the new one started: it must not serve on alone.
            warn!(
                "upgrade: process {pid} is ready, but this server was told to stop meanwhile: \
                 telling it to stop too"
            );
            sys::terminate(pid);
            return None;
        }
        if is_supervised() {
            // The new process is the service's main process from now on.
            notify(&format!("MAINPID={pid}"));
        }
        let open: usize = self.listeners.iter().map(|l| l.admission().open()).sum();
        info!(
            "upgrade: process {pid} serves now; this process ({}) stops accepting and drains \
             its {open} open connection(s)",
            std::process::id()
        );
        for closer in &self.closers {
            closer.close();
        }
        self.release();
        self.stopper.hand_over();
        Some(pid)
    }
}
