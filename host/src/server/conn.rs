//! One connection's job, from the accepted socket to the close, on the
//! connection's own thread: the counterpart of mini-redis's `Handler`.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::runtime::{Connection, Outcome};
use crate::server::admission::Slot;
use crate::server::registry::{Pinned, Registry};
use crate::watchdog::{Expiry, Watchdog};

/// What every connection's job shares, built once by the server.
pub struct Shared {
    /// The handler versions, and the runtime they run in.
    pub registry: Arc<Registry>,
    /// Enforces the idle timeout, the time limit and the drain deadline.
    pub watchdog: Watchdog,
    /// `--idle-timeout`, for log lines.
    pub idle_timeout: Duration,
    /// `--max-connection-time`, for log lines.
    pub max_connection_time: Option<Duration>,
}

/// One accepted client and everything it holds until it closes.
pub struct Conn {
    /// Unique within the process; the guest sees it as `id()`.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The accepted socket.
    pub stream: TcpStream,
    /// The handler version it was accepted under.
    pub version: Pinned,
    /// Its place under `--max-connections`, freed when this job ends.
    pub slot: Slot,
    /// What every connection shares.
    pub shared: Arc<Shared>,
}

impl Conn {
    /// Serves the client on the current thread, from the first byte to the
    /// close, with the handler version it was pinned to when accepted. The
    /// slot and the version are released when this returns, whatever
    /// happened.
    pub fn run(self) {
        let Conn {
            id,
            peer,
            stream,
            version,
            slot: _slot,
            shared,
        } = self;
        // Every log line of the connection names it, its client and its version.
        let label = format!("conn {id} {peer} {}", version.id());
        // Accepted sockets inherit non-blocking mode from the listener on some
        // platforms; the guest's `read` and `write` are meant to block.
        if let Err(e) = stream.set_nonblocking(false) {
            warn!("{label}: cannot make the socket blocking ({e}); closing it");
            return;
        }
        // Replies are usually one small write each: do not hold them back waiting
        // for an ACK that delayed-ACK on the client holds back in turn.
        if let Err(e) = stream.set_nodelay(true) {
            warn!("{label}: cannot set TCP_NODELAY ({e}); replies may be delayed");
        }
        info!("{label}: connected");
        let started = Instant::now();
        let watch = shared.watchdog.watch(&stream, version.drain());
        let conn = Connection::new(id, peer, stream, Some(watch));
        let registry = &shared.registry;
        let outcome = version.handler().serve(registry.runtime(), &label, conn);
        let elapsed = started.elapsed();
        match outcome {
            Outcome::Finished => info!("{label}: closed after {elapsed:.1?}"),
            Outcome::HandlerError(message) => {
                warn!("{label}: handler returned an error: {message}; closed after {elapsed:.1?}")
            }
            Outcome::Stopped { expiry, then } => {
                let why = shared.stop_reason(expiry);
                match then {
                    None => info!("{label}: {why}; closed after {elapsed:.1?}"),
                    Some(then) => {
                        info!("{label}: {why}; then {then}; closed after {elapsed:.1?}")
                    }
                }
            }
            Outcome::Faulted { fault, backtrace } => {
                match backtrace {
                    Some(frames) => warn!("{label}: {fault}\nguest backtrace:\n{frames}"),
                    None => warn!("{label}: {fault}"),
                }
                registry.record_fault(&version);
            }
        }
    }
}

impl Shared {
    /// Why the host closed a connection, in the operator's words, naming the
    /// option that made it.
    fn stop_reason(&self, expiry: Expiry) -> String {
        match expiry {
            Expiry::Idle => format!(
                "client idle for {:?}: timed out (--idle-timeout)",
                self.idle_timeout
            ),
            Expiry::TimeUp => format!(
                "connection time limit reached: open for {:?} (--max-connection-time)",
                self.max_connection_time.unwrap_or_default()
            ),
            Expiry::Drained => format!(
                "closed: its version was replaced more than {:?} ago (--drain-deadline)",
                self.registry.policy().drain_deadline.unwrap_or_default()
            ),
        }
    }
}
