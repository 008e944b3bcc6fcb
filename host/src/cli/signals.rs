//! What signals do to `hotsock serve`: SIGHUP reloads; SIGINT and SIGTERM
//! drain (a second one exits at once); SIGUSR2 upgrades the binary, handing
//! every socket to the hotsock binary now on disk.

use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread;

use anyhow::{Context as _, Result};
use hotsock::server::http::Closer;
use hotsock::server::upgrade::{self, CurrentHandler, Invocation, READY_TIMEOUT};
use hotsock::server::{Reloader, Service, Stopper, Trigger, is_supervised, notify};
use hotsock::sys;
use log::{info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::Signals;

/// Installs the signal handlers, on a thread of their own.
pub fn handle(stopper: Stopper, reloader: Reloader, upgrader: Arc<Upgrader>) -> Result<()> {
    let mut signals = Signals::new([SIGHUP, SIGINT, SIGTERM, SIGUSR2])
        .context("cannot install signal handlers")?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                let name = signal_name(signal);
                match signal {
                    SIGHUP => {
                        info!("received SIGHUP: reloading");
                        reloader.request(Trigger::Signal);
                    }
                    SIGUSR2 => Upgrader::spawn(&upgrader),
                    _ if !stopping => {
                        info!("received {name}: shutting down");
                        notify("STOPPING=1");
                        // A listening socket kept for an upgrade would hold
                        // new clients in a backlog nobody reads.
                        upgrader.release();
                        stopper.stop();
                        stopping = true;
                    }
                    _ => {
                        warn!(
                            "received {name} again: exiting without waiting for open connections"
                        );
                        std::process::exit(128 + signal);
                    }
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGHUP => "SIGHUP",
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGUSR2 => "SIGUSR2",
        _ => "a signal",
    }
}

/// Everything a binary upgrade hands over, and how far one has got.
pub struct Upgrader {
    /// How this process was started, if that can be told.
    invocation: Result<Invocation, String>,
    /// Copies of every listening socket, by the name the new process
    /// matches them by; emptied once this process stops.
    sockets: Mutex<Vec<(String, OwnedFd)>>,
    services: Vec<Arc<Service>>,
    stopper: Stopper,
    /// The control-plane APIs to close once the new process serves.
    closers: Vec<Closer>,
    state: Mutex<State>,
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
    /// An upgrader for a server whose listening sockets are `sockets`.
    pub fn new(
        invocation: Result<Invocation>,
        sockets: Vec<(String, OwnedFd)>,
        services: Vec<Arc<Service>>,
        stopper: Stopper,
        closers: Vec<Closer>,
    ) -> Self {
        Upgrader {
            invocation: invocation.map_err(|e| format!("{e:#}")),
            sockets: Mutex::new(sockets),
            services,
            stopper,
            closers,
            state: Mutex::new(State::Idle),
        }
    }

    /// Drops the copies of the listening sockets: this process is stopping.
    pub fn release(&self) {
        sys::lock(&self.sockets).clear();
    }

    /// Upgrades on a thread of its own, so that signals are still handled
    /// while the new process starts.
    fn spawn(this: &Arc<Self>) {
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
        let handlers: Vec<CurrentHandler> = self
            .services
            .iter()
            .map(|service| {
                let version = service.registry().current();
                CurrentHandler {
                    listener: service.name().to_string(),
                    source: version.source().to_string(),
                    component: Arc::clone(version.component()),
                }
            })
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
            upgrade::start(&invocation.exe, &invocation.args, &borrowed, &handlers)
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
        let open: usize = self.services.iter().map(|s| s.admission().open()).sum();
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
