//! One connection's job, from the accepted socket to the close, on the
//! connection's own thread: the counterpart of mini-redis's `Handler`.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{Level, warn};

use crate::runtime::{Connection, Fields, Outcome, Served, TlsInfo};
use crate::server::admission::{Refusal, Slot};
use crate::server::listener::{Listener, stop_reason};
use crate::server::proxy::{self, Origin, Relayed};
use crate::server::registry::Pinned;
use crate::server::settings::ListenerSettings;
use crate::server::tls::HandshakeError;
use crate::watchdog::Expiry;
use crate::wire::Wire;

/// One accepted client and everything it holds until it closes.
pub struct Conn {
    /// Unique within the process, across an upgrade's processes and across
    /// a fleet sharing a rooms store; the guest sees it as `id()`.
    pub id: u64,
    /// The socket's peer: the client, or the load balancer that relays it
    /// (`--proxy-protocol`).
    pub peer: SocketAddr,
    /// The accepted socket.
    pub stream: TcpStream,
    /// The handler version and settings it was accepted under, loaded once
    /// and used for its whole life.
    pub version: Pinned,
    /// Its place under `--max-connections`, freed when this job ends.
    pub slot: Slot,
    /// The listener it came in on.
    pub listener: Arc<Listener>,
}

impl Conn {
    /// Serves the client on the current thread, from the first byte to the
    /// close, with the handler version it was pinned to when accepted. The
    /// slot and the version are released when this returns, whatever
    /// happened.
    pub fn run(self) {
        let Conn {
            id,
            peer: socket_peer,
            stream,
            version,
            mut slot,
            listener,
        } = self;
        // The PROXY header and the TLS handshake share one deadline.
        let accepted = Instant::now();
        let settings = version.settings();
        let rules = &settings.rules;
        // Accepted sockets inherit non-blocking mode from the listener on some
        // platforms; the guest's `read` and `write` are meant to block.
        if let Err(e) = stream.set_nonblocking(false) {
            warn!(
                "conn {id} from {socket_peer}: cannot make the socket blocking ({e}); closing it"
            );
            return;
        }
        let admission = listener.admission();
        let (peer, tls) = match &rules.proxy {
            None => (socket_peer, None),
            Some(_) => match proxy::read_header(&stream, header_timeout(settings)) {
                Ok(Relayed { origin, tls }) => match origin {
                    Origin::Client(client) => (client, tls),
                    Origin::Balancer => (socket_peer, tls),
                },
                Err(e) => {
                    return admission.refuse(Refusal::ProxyHeader, socket_peer, &e.to_string());
                }
            },
        };
        let per_ip = rules.max_connections_per_ip;
        if let Err(why) = slot.claim(peer.ip(), per_ip) {
            return admission.refuse(why, peer, &per_ip.unwrap_or_default().to_string());
        }
        // The handshake runs here, on the connection's own thread, and a
        // client that never finishes it holds its slot until the deadline.
        let (wire, tls) = match &settings.tls {
            None => (Wire::plain(Arc::new(stream)), tls),
            Some(config) => {
                let deadline = accepted + config.handshake_timeout();
                match config.handshake(&stream, deadline) {
                    // What this listener's handshake established is what
                    // the client sees, whatever a balancer said.
                    Ok((session, info)) => (Wire::tls(Arc::new(stream), session), Some(info)),
                    Err(e) => return admission.refuse(refusal(&e), peer, &e.to_string()),
                }
            }
        };
        let registry = listener.registry();
        // Every log line of the connection names it, its client (and the
        // balancer it came through), its listener and its version.
        let mut fields = Fields::none().number("conn", id).text("peer", peer);
        if peer != socket_peer {
            fields = fields.text("via", socket_peer);
        }
        let fields = fields
            .text("listener", listener.name())
            .text("version", version.id());
        let log = |level, message: std::fmt::Arguments<'_>| fields.log(level, message);
        // Replies are usually one small write each: do not hold them back waiting
        // for an ACK that delayed-ACK on the client holds back in turn.
        if let Err(e) = wire.socket().set_nodelay(true) {
            log(
                Level::Warn,
                format_args!("cannot set TCP_NODELAY ({e}); replies may be delayed"),
            );
        }
        match &tls {
            None => log(Level::Info, format_args!("connected")),
            Some(tls) => log(Level::Info, format_args!("connected, {}", TlsSummary(tls))),
        }
        let started = Instant::now();
        // Shared with the watchdog, which shuts it down when time is up.
        let watch = listener.watchdog().watch(
            wire.socket(),
            rules.idle_timeout,
            rules.max_connection_time,
            version.drain(),
        );
        let traffic = listener.metrics().traffic();
        let rooms = Arc::clone(listener.rooms());
        let conn =
            Connection::new(id, peer, Arc::new(wire), Some(watch), traffic, rooms).with_tls(tls);
        let Served {
            outcome,
            instantiated_in,
        } = version
            .handler()
            .serve(registry.runtime(), &settings.profile, &fields, conn);
        let elapsed = started.elapsed();
        listener
            .metrics()
            .connection_ended(elapsed, instantiated_in);
        match outcome {
            Outcome::Finished => log(Level::Info, format_args!("closed after {elapsed:.1?}")),
            Outcome::HandlerError(message) => log(
                Level::Warn,
                format_args!("handler returned an error: {message}; closed after {elapsed:.1?}"),
            ),
            Outcome::Stopped { expiry, then } => {
                version.count_failure(match expiry {
                    Expiry::Idle => "idle",
                    Expiry::TimeUp => "time_limit",
                    Expiry::Drained => "drain",
                });
                let why = stop_reason(settings, expiry);
                match then {
                    None => log(
                        Level::Info,
                        format_args!("{why}; closed after {elapsed:.1?}"),
                    ),
                    Some(then) => log(
                        Level::Info,
                        format_args!("{why}; then {then}; closed after {elapsed:.1?}"),
                    ),
                }
            }
            Outcome::Faulted { fault, backtrace } => {
                version.count_failure(fault.kind());
                // The first line says it all, as for every other ending; the
                // backtrace follows on lines of its own.
                match backtrace {
                    Some(frames) => log(
                        Level::Warn,
                        format_args!(
                            "{fault}; closed after {elapsed:.1?}\nguest backtrace:\n{frames}"
                        ),
                    ),
                    None => log(
                        Level::Warn,
                        format_args!("{fault}; closed after {elapsed:.1?}"),
                    ),
                }
                registry.record_fault(&version);
            }
        }
    }
}

/// How long a PROXY header may take: its own limit, and on a TLS listener
/// no longer than the handshake, which must finish within the same time.
fn header_timeout(settings: &ListenerSettings) -> Duration {
    match &settings.tls {
        None => proxy::HEADER_TIMEOUT,
        Some(tls) => proxy::HEADER_TIMEOUT.min(tls.handshake_timeout()),
    }
}

/// What a failed handshake is counted as.
fn refusal(error: &HandshakeError) -> Refusal {
    match error {
        HandshakeError::Timeout => Refusal::TlsTimeout,
        HandshakeError::Plaintext => Refusal::TlsPlaintext,
        e if e.is_client_certificate() => Refusal::TlsClientCertificate,
        _ => Refusal::TlsHandshake,
    }
}

/// A connection's TLS for its "connected" line, short: `tls TLSv1.3
/// CN=device-42`, the subject only when one was verified. The version comes
/// from a balancer: it is written escaped, so it cannot add lines to a
/// text log (the subject is escaped already, RFC 4514).
struct TlsSummary<'a>(&'a TlsInfo);

impl std::fmt::Display for TlsSummary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tls")?;
        if !self.0.version.is_empty() {
            write!(f, " {}", self.0.version.escape_debug())?;
        }
        match &self.0.peer_subject {
            Some(subject) => write!(f, " {subject}"),
            None => Ok(()),
        }
    }
}
