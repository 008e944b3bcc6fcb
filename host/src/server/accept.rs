//! The accept loop: listening sockets, one OS thread per connection, and a
//! graceful drain on shutdown.
//!
//! One accept thread waits on every listener at once (`--addr` may be given
//! several times). Each accepted client gets its own thread (a reused one when
//! one is idle), which runs a fresh instance of the handler until the handler
//! returns. A failing connection is logged and closed; it never stops the
//! server.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use log::{info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use crate::runtime::{Bridge, GUEST_THREAD_STACK};
use crate::server::admission::{Admission, Refusal, WhenFull};
use crate::server::conn::Conn;
use crate::server::listener::{Listener, Reach};
use crate::server::registry::{Pinned, Registry};
use crate::server::settings::DEFAULT_IDLE_TIMEOUT;
use crate::server::workers::Workers;
use crate::watchdog::Watchdog;

/// What `hotsock serve` prints on stdout before each listener's bound
/// address, one line each: scripts, tests and the bench wait for these lines
/// before connecting, so they are part of the interface.
pub const LISTENING: &str = "listening on ";

/// What `hotsock serve --admin` prints on stdout before the admin API's address.
pub const ADMIN_LISTENING: &str = "admin listening on ";

/// How long open connections may run on after SIGINT or SIGTERM, by default:
/// long enough for a request in flight to finish, short enough for a service
/// manager's stop timeout (systemd's default is 90 s).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait before accepting again after `accept` failed for a reason
/// other than the client (typically out of file descriptors): long enough for
/// closing connections to free some, short enough that clients barely notice.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often a drain looks whether a stop was asked for meanwhile.
const DRAIN_SLICE: Duration = Duration::from_millis(200);

/// The poll token of the waker, which wakes the accept loop to stop, or to
/// accept again once a connection slot is free. Listeners use their index in
/// the listener list.
const WAKE: Token = Token(usize::MAX);

/// How the server stops, for all its listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    /// How long to keep accepting after a stop is requested, with `/readyz`
    /// failing, so that load balancers stop sending before the listeners close.
    pub stop_delay: Duration,
    /// How long open connections may run on after a stop is requested.
    pub drain_timeout: Duration,
    /// How long open connections may run on after a binary upgrade handed
    /// the sockets over: `None`, until they end (a stop asked for then
    /// caps it at `drain_timeout` from then).
    pub upgrade_drain_timeout: Option<Duration>,
}

impl Default for Drain {
    /// The defaults of `hotsock serve`.
    fn default() -> Self {
        Drain {
            stop_delay: Duration::ZERO,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            upgrade_drain_timeout: None,
        }
    }
}

/// One listener to accept for: its bound sockets, and its handler versions
/// with the settings they run under.
pub struct Bound {
    /// Its bound sockets, all serving the same handler.
    pub sockets: Vec<TcpListener>,
    /// Its handler versions and settings.
    pub registry: Arc<Registry>,
}

/// Binds one listener per address, in order. Port 0 picks a free port; ask the
/// listener for its `local_addr` to learn which. With `reuse_port`, other
/// processes may bind the same addresses (`SO_REUSEPORT`): the kernel then
/// spreads new connections over all of them.
pub fn bind(addrs: &[String], reuse_port: bool) -> Result<Vec<TcpListener>> {
    addrs
        .iter()
        .map(|addr| bind_one(addr, "--addr", reuse_port))
        .collect()
}

/// Clients the kernel may hold, connected, until they are accepted: room for
/// a burst of thousands between two passes of the accept loop. The kernel
/// caps it at `net.core.somaxconn` (4096 by default).
const BACKLOG: i32 = 4096;

/// Binds `addr`, given by the command-line option `option`, with an error that
/// says what to do.
pub fn bind_one(addr: &str, option: &str, reuse_port: bool) -> Result<TcpListener> {
    listen(addr, reuse_port).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse if reuse_port => "; another process is listening there \
                without --reuse-port (or as another user): every process sharing a port needs it"
                .to_string(),
            io::ErrorKind::AddrInUse => {
                format!("; another process is listening there: choose another {option}, or port 0 for any free port")
            }
            io::ErrorKind::PermissionDenied => "; ports below 1024 need privileges: choose a higher port".into(),
            _ => String::new(),
        };
        anyhow::anyhow!("cannot listen on {addr}: {e}{hint}")
    })
}

/// Binds the first of `addr`'s addresses that can be bound, with
/// [`BACKLOG`] (std's `TcpListener::bind` asks for 128) and `SO_REUSEADDR`
/// (as std does, so a restart does not wait for old connections' TIME_WAIT).
fn listen(addr: &str, reuse_port: bool) -> io::Result<TcpListener> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to bind");
    for addr in addr.to_socket_addrs()? {
        let bound = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .and_then(|socket| {
                socket.set_reuse_address(true)?;
                if reuse_port {
                    socket.set_reuse_port(true)?;
                }
                socket.bind(&addr.into())?;
                socket.listen(BACKLOG)?;
                Ok(socket.into())
            });
        match bound {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Asks a running [`Acceptor`] to stop accepting and drain. Cheap to clone.
#[derive(Clone)]
pub struct Stopper {
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    /// Stop accepting at once, without `--stop-delay`: another process
    /// serves the same sockets now.
    handed_over: Arc<AtomicBool>,
    /// A stop was asked for after the first: after a hand-over, a SIGTERM.
    again: Arc<AtomicBool>,
}

impl Stopper {
    /// Whether a stop has been requested: the server is draining, or about to.
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Requests the stop; the server's [`Acceptor::run`] then drains and returns.
    pub fn stop(&self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            self.again.store(true, Ordering::SeqCst);
        }
        self.wake();
    }

    /// Stops accepting at once, and drains: another process (an upgrade)
    /// accepts from the same sockets now, so there is nothing to wait for
    /// and no client to turn away.
    pub fn hand_over(&self) {
        self.handed_over.store(true, Ordering::SeqCst);
        self.stop();
    }

    /// Whether the sockets were handed over to another process.
    pub fn is_handed_over(&self) -> bool {
        self.handed_over.load(Ordering::SeqCst)
    }

    fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            // Only fails if the poll instance is gone, i.e. the server already stopped.
            warn!("cannot wake the accept loop: {e}");
        }
    }
}

/// The accept loop of a thread-per-connection server, over already bound
/// listeners.
pub struct Acceptor {
    /// Every bound socket, with the index of its listener in `listeners`.
    sockets: Vec<(TcpListener, usize)>,
    listeners: Vec<Arc<Listener>>,
    drain: Drain,
    poll: Poll,
    stopper: Stopper,
    workers: Workers,
    /// The next connection's id: shared with an upgrade, which starts the
    /// new process's ids past it.
    next_id: Arc<AtomicU64>,
    /// The bridge an upgrade's processes share rooms over, if rooms are local.
    bridge: Option<Arc<Bridge>>,
}

/// How accepting from one listener's backlog ended.
enum Backlog {
    /// Every queued client was accepted.
    Empty,
    /// Every connection slot is taken; the rest wait in the backlog.
    Full,
    /// `accept` failed; try again after [`ACCEPT_BACKOFF`].
    Failed,
}

impl Acceptor {
    /// Prepares to serve every listener's current handler, and starts the
    /// watchdog; nothing is accepted until [`Acceptor::run`].
    /// Rooms span `reach`; connection ids start at `first_id`.
    pub fn new(bound: Vec<Bound>, drain: Drain, reach: &Reach, first_id: u64) -> Result<Self> {
        let poll = Poll::new().context("cannot create the accept poller")?;
        let waker =
            Arc::new(Waker::new(poll.registry(), WAKE).context("cannot create the accept waker")?);
        let shortest = bound
            .iter()
            .flat_map(|b| {
                let settings = b.registry.settings();
                [
                    Some(settings.rules.idle_timeout),
                    settings.rules.max_connection_time,
                    settings.policy.drain_deadline,
                ]
            })
            .flatten()
            .min()
            .unwrap_or(DEFAULT_IDLE_TIMEOUT);
        let watchdog = Arc::new(Watchdog::start(shortest)?);
        let mut sockets = Vec::new();
        let mut listeners = Vec::new();
        for (
            index,
            Bound {
                sockets: bound,
                registry,
            },
        ) in bound.into_iter().enumerate()
        {
            // An admitted connection must always find an instance slot.
            let instances = registry.runtime().max_instances();
            let max = registry.settings().rules.max_connections;
            anyhow::ensure!(
                max <= instances,
                "{max} connections cannot be served by a runtime sized for {instances} instances"
            );
            let admission = Arc::new(Admission::new(max, Arc::clone(&waker)));
            for socket in bound {
                socket.set_nonblocking(true)?;
                poll.registry()
                    .register(
                        &mut SourceFd(&socket.as_raw_fd()),
                        Token(sockets.len()),
                        Interest::READABLE,
                    )
                    .context("cannot watch a listener")?;
                sockets.push((socket, index));
            }
            listeners.push(Arc::new(Listener::new(
                registry,
                admission,
                Arc::clone(&watchdog),
                reach,
            )));
        }
        Ok(Acceptor {
            sockets,
            listeners,
            drain,
            poll,
            stopper: Stopper {
                waker,
                stop: Arc::new(AtomicBool::new(false)),
                handed_over: Arc::new(AtomicBool::new(false)),
                again: Arc::new(AtomicBool::new(false)),
            },
            workers: Workers::new(GUEST_THREAD_STACK),
            next_id: Arc::new(AtomicU64::new(first_id)),
            bridge: match reach {
                Reach::Bridge(bridge) => Some(Arc::clone(bridge)),
                Reach::Fleet(_) => None,
            },
        })
    }

    /// Every listener, as it serves: for the admin API, metrics and reloads.
    pub fn listeners(&self) -> Vec<Arc<Listener>> {
        self.listeners.clone()
    }

    /// The next connection id, as it moves: for an upgrade.
    pub fn ids(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.next_id)
    }

    /// A handle that makes [`Acceptor::run`] stop accepting and drain.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Accepts and serves clients until stopped, then closes the listeners and
    /// waits up to the drain timeout for open connections to finish.
    pub fn run(mut self) -> Result<()> {
        self.accept_until_stopped()?;
        // Closing the listeners makes new clients fail fast instead of
        // queueing in a backlog nobody will read.
        self.sockets.clear();
        self.drain();
        Ok(())
    }

    fn accept_until_stopped(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(64);
        // Listeners are edge-triggered: clients left in a backlog (after an
        // `accept` error, or while full) raise no new event. So after an
        // error, retry on a timer; when woken (a slot freed up), try every
        // listener.
        let mut retry = false;
        // Once a stop is asked for: when to stop accepting (`--stop-delay`).
        let mut stop_at: Option<Instant> = None;
        loop {
            let until_stop = stop_at.map(|at| at.saturating_duration_since(Instant::now()));
            let timeout = match (retry.then_some(ACCEPT_BACKOFF), until_stop) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match self.poll.poll(&mut events, timeout) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => result.context("waiting for connections failed")?,
            }
            if stop_at.is_none() && self.stopper.is_stopping() {
                if self.drain.stop_delay.is_zero() || self.stopper.is_handed_over() {
                    return Ok(());
                }
                info!(
                    "/readyz now fails; still accepting for {:?} so load balancers stop sending first (--stop-delay)",
                    self.drain.stop_delay
                );
                stop_at = Some(Instant::now() + self.drain.stop_delay);
            }
            if stop_at.is_some_and(|at| Instant::now() >= at) {
                return Ok(());
            }
            let every_listener = events.is_empty() || events.iter().any(|e| e.token() == WAKE);
            let ready: Vec<usize> = match every_listener {
                true => (0..self.sockets.len()).collect(),
                false => events.iter().map(|e| e.token().0).collect(),
            };
            retry = false;
            for i in ready {
                match self.accept_backlog(i) {
                    // A full listener's clients wait until a freed slot wakes us.
                    Backlog::Empty | Backlog::Full => {}
                    Backlog::Failed => retry = true,
                }
            }
        }
    }

    /// Accepts the clients queued on socket `i`, as long as its listener
    /// has room.
    fn accept_backlog(&mut self, i: usize) -> Backlog {
        let Some(&(_, listener)) = self.sockets.get(i) else {
            return Backlog::Empty; // not a socket of ours: nothing to do
        };
        let listener = Arc::clone(&self.listeners[listener]);
        loop {
            let admission = listener.admission();
            let when_full = listener.registry().settings().rules.when_full;
            if when_full == WhenFull::Wait && admission.is_full() {
                admission.log_full(when_full);
                return Backlog::Full;
            }
            match self.sockets[i].0.accept() {
                Ok((stream, peer)) => self.dispatch(&listener, stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Backlog::Empty,
                // The client gave up between connecting and our accept.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    warn!("accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                    return Backlog::Failed;
                }
            }
        }
    }

    /// Pins the listener's current snapshot (handler version and settings)
    /// for the connection, admits it under those settings and starts its own
    /// thread; or, if it may not be served, closes it.
    fn dispatch(&mut self, listener: &Arc<Listener>, stream: TcpStream, peer: SocketAddr) {
        let admission = listener.admission();
        // Loaded once: admission, and the whole connection, use this snapshot.
        let snapshot = listener.registry().snapshot();
        let rules = &snapshot.settings.rules;
        // Behind a PROXY protocol balancer, the socket's peer is the balancer:
        // the client's own address, for its per-address share, comes with
        // the header, which the connection's thread reads.
        let client = match &rules.proxy {
            Some(proxy) if !proxy.trusts(peer.ip()) => {
                // Dropping the socket closes it: the client sees the connection end at once.
                return admission.refuse(Refusal::Untrusted, peer, "");
            }
            Some(_) => None,
            None => Some(peer.ip()),
        };
        let per_ip = rules.max_connections_per_ip;
        let slot = match admission.try_admit(client, per_ip) {
            Ok(slot) => slot,
            Err(why) => {
                return admission.refuse(why, peer, &per_ip.unwrap_or_default().to_string());
            }
        };
        // Only this thread takes ids; an upgrade only reads them.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Conn {
            id,
            peer,
            stream,
            version: Pinned::new(snapshot),
            slot,
            listener: Arc::clone(listener),
        };
        if let Err(e) = self.workers.run(Box::new(move || conn.run())) {
            // The job, with its socket and slot, is dropped: the client sees
            // a close, and the server carries on with the connections it has.
            let detail = format!("conn {id}: {e}");
            admission.refuse(Refusal::NoThread, peer, &detail);
        }
    }

    /// Waits for open connections to finish: up to `--drain-timeout` after
    /// a stop; after an upgrade handed the sockets over, until they end or
    /// `--upgrade-drain-timeout`, whichever is first, so that an upgrade
    /// disconnects no long-lived client. A stop asked for during that caps
    /// what is left at `--drain-timeout` from then.
    fn drain(&self) {
        let open = || -> usize { self.listeners.iter().map(|l| l.admission().open()).sum() };
        let started = open();
        if started == 0 {
            info!("stopped; no open connections");
            return;
        }
        let upgraded = self.stopper.is_handed_over();
        let (mut deadline, why) = match upgraded {
            true => (
                self.drain.upgrade_drain_timeout.map(|t| Instant::now() + t),
                "upgrade drain timeout",
            ),
            false => (
                Some(Instant::now() + self.drain.drain_timeout),
                "drain timeout",
            ),
        };
        match (upgraded, self.drain.upgrade_drain_timeout) {
            (true, None) => info!(
                "handed over: serving {started} open connection(s) until they end \
                 (--upgrade-drain-timeout caps it; SIGTERM drains for --drain-timeout)"
            ),
            (true, Some(timeout)) => info!(
                "handed over: waiting up to {timeout:?} for {started} open connection(s) to \
                 finish (--upgrade-drain-timeout)"
            ),
            (false, _) => info!(
                "stopped accepting; waiting up to {:?} for {started} open connection(s) to finish",
                self.drain.drain_timeout
            ),
        }
        let mut capped = !upgraded;
        let mut told_relaying = false;
        loop {
            // In slices, so that a stop asked for meanwhile is seen.
            let slice = deadline.map_or(DRAIN_SLICE, |at| {
                at.saturating_duration_since(Instant::now())
                    .min(DRAIN_SLICE)
            });
            let left: usize = self
                .listeners
                .iter()
                .map(|l| l.admission().wait_idle(slice))
                .sum();
            // A process between an older one still serving and a newer one
            // carries their rooms to each other: it stays until the older
            // one is gone.
            let relaying = upgraded && self.bridge.as_ref().is_some_and(|b| b.has_older());
            if left == 0 && !relaying {
                return info!("all connections finished");
            }
            if left == 0 {
                if !told_relaying {
                    told_relaying = true;
                    info!(
                        "all connections finished; staying while the process this one \
                         replaced still serves, to pass its rooms on"
                    );
                }
                std::thread::sleep(slice);
            }
            if deadline.is_some_and(|at| Instant::now() >= at) {
                return warn!("{why}: exiting with {left} connection(s) still open");
            }
            if !capped && self.stopper.again.load(Ordering::SeqCst) {
                capped = true;
                let cap = Instant::now() + self.drain.drain_timeout;
                deadline = Some(deadline.map_or(cap, |at| at.min(cap)));
                info!(
                    "stopping: waiting up to {:?} more for {left} open connection(s) (--drain-timeout)",
                    self.drain.drain_timeout
                );
            }
        }
    }
}
