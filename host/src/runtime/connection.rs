//! One accepted client, as the `connection` resource a handler reads and writes.
//!
//! The handler only ever holds a `borrow<connection>`; the host owns the socket
//! and closes it when `handle` returns, whatever the guest did. Reads and
//! writes block the guest, never longer than the idle timeout (the
//! [`crate::watchdog`] sees to that), and data goes straight between the guest
//! and the socket: the host buffers nothing of the guest's own.
//!
//! A connection that joins a room (contract 0.2.0) gets a [`Mailbox`], and
//! from then on waits for its client with `poll`, so that room messages are
//! delivered while its handler waits for input; one that never joins reads
//! and writes exactly as before.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::runtime::record::{Recorder, Replay};
use crate::runtime::rooms::{MAX_ROOMS_PER_CONNECTION, Mailbox, Refused, Rooms};
use crate::runtime::transcript::Entry;
use crate::sys;
use crate::watchdog::{Expiry, Verdict, Wait, Watch};
use crate::wire::Wire;

/// The most one `read` hands to a guest, whatever `max` it asks for, so a guest
/// cannot make the host allocate an arbitrary buffer. `read` may return fewer
/// bytes than asked for, so this is invisible to a correct guest.
pub const MAX_READ: u32 = 64 * 1024;

/// How long a client must send nothing, while its handler waits to read,
/// before its thread hands back the stack it no longer needs. A client in
/// the middle of an exchange answers well within it; a client that waits
/// longer is idle, and may stay so for hours.
const QUIET: Duration = Duration::from_millis(50);

/// How many of a connection's first reads look for [`QUIET`]. Each costs a
/// `poll` before the read; a client that never goes quiet within them keeps
/// its thread's stack as it is, and its reads their one system call.
const QUIET_CHECKS: u8 = 16;

/// Why a read or write failed, as the guest is told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoError {
    /// The client is gone, or the host closed the connection.
    Closed,
    /// The host cut the connection off: idle too long, or open too long.
    TimedOut,
    /// The request itself cannot be honoured.
    Refused,
}

/// Bytes moved by many connections, counted as they go: what metrics read.
/// Two relaxed atomic additions per round trip, and nothing else.
#[derive(Debug, Default)]
pub struct Traffic {
    received: AtomicU64,
    sent: AtomicU64,
}

impl Traffic {
    /// Bytes read from clients so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Bytes written to clients so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// A client connection as the host sees it.
pub struct Connection {
    id: u64,
    peer: SocketAddr,
    /// The connection's registration with the watchdog, which shares the
    /// socket until it is dropped.
    watch: Option<Watch>,
    /// Shared with its mailbox, if it joins a room; or a transcript.
    io: Io,
    /// Where its traffic is written down, under `serve --record`.
    recorder: Option<Arc<Recorder>>,
    /// Where its bytes are counted.
    traffic: Arc<Traffic>,
    /// Its listener's rooms, and its place in them.
    rooms: Arc<Rooms>,
    membership: Option<Membership>,
    /// Where `read` receives, reused so that a round trip neither allocates
    /// nor zeroes a buffer of the guest's `max`; it grows to the largest
    /// `max` asked for, at most [`MAX_READ`].
    buf: Vec<u8>,
    /// What TLS established for it, if it came over TLS: contract 0.3.0's
    /// `tls()`.
    tls: Option<TlsInfo>,
    /// How many more reads may first wait [`QUIET`] to learn whether the
    /// client went quiet, so that its idle thread can hand back stack.
    quiet_checks: u8,
}

/// What a TLS handshake established for a connection, by this listener or
/// by a trusted PROXY-protocol balancer that terminated TLS: contract
/// 0.3.0's `tls-info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// The cipher suite, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: String,
    /// The server name the client asked for (SNI), if any.
    pub server_name: Option<String>,
    /// The protocol agreed by ALPN, if any.
    pub alpn: Option<String>,
    /// The client's certificate chain, leaf first, DER; empty when it sent
    /// none, or a balancer terminated TLS.
    pub peer_certificates: Vec<Vec<u8>>,
    /// The verified client certificate's subject, RFC 4514
    /// (`CN=device-42,O=Acme`); `None` when no certificate was verified.
    pub peer_subject: Option<String>,
}

impl Connection {
    /// Wraps an accepted, blocking socket, or TLS over it; `id` must be
    /// unique within the process. With a `watch` of the same socket, the
    /// watchdog's limits apply to it; its bytes are counted in `traffic`; it
    /// may join `rooms`.
    pub fn new(
        id: u64,
        peer: SocketAddr,
        wire: Arc<Wire>,
        watch: Option<Watch>,
        traffic: Arc<Traffic>,
        rooms: Arc<Rooms>,
    ) -> Self {
        Connection {
            id,
            peer,
            watch,
            io: Io::Wire(wire),
            recorder: None,
            traffic,
            rooms,
            membership: None,
            buf: Vec::new(),
            tls: None,
            quiet_checks: QUIET_CHECKS,
        }
    }

    /// The same connection, with what TLS established for it.
    pub fn with_tls(mut self, tls: Option<TlsInfo>) -> Self {
        self.tls = tls;
        self
    }

    /// What TLS established for it, if it came over TLS.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// A connection whose client is a transcript being replayed: reads
    /// return what it recorded the client sending, writes are kept in
    /// `replay`. No socket, no watchdog; rooms are `rooms`, with nobody else in them.
    pub fn replay(id: u64, peer: SocketAddr, replay: Arc<Replay>, rooms: Arc<Rooms>) -> Self {
        Connection {
            id,
            peer,
            watch: None,
            io: Io::Replay(replay),
            recorder: None,
            traffic: Arc::default(),
            rooms,
            membership: None,
            buf: Vec::new(),
            tls: None,
            quiet_checks: QUIET_CHECKS,
        }
    }

    /// Writes what the client sends and the handler writes to `recorder`.
    pub fn record(&mut self, recorder: Arc<Recorder>) {
        self.recorder = Some(recorder);
    }

    /// Host-assigned id, unique within this server process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether, and why, the watchdog has cut the connection off.
    pub fn expired(&self) -> Option<Expiry> {
        self.watch.as_ref().and_then(Watch::expired)
    }

    /// The same, readable from the epoch callback while the guest computes.
    pub fn verdict(&self) -> Option<Verdict> {
        self.watch.as_ref().map(Watch::verdict)
    }

    /// Up to `max` bytes from the client, blocking until some arrive; empty
    /// at end of stream.
    pub fn read(&mut self, max: u32) -> Result<Vec<u8>, IoError> {
        self.read_until(max, None)
    }

    /// Like [`Connection::read`], but gives up with [`IoError::TimedOut`]
    /// after `timeout` without data, leaving the connection as it was.
    pub fn read_within(&mut self, max: u32, timeout: Duration) -> Result<Vec<u8>, IoError> {
        self.read_until(max, Some(Instant::now() + timeout))
    }

    fn read_until(&mut self, max: u32, deadline: Option<Instant>) -> Result<Vec<u8>, IoError> {
        if max == 0 {
            // An empty list means end of stream, so a zero-byte read has no
            // honest answer: refuse it rather than fake an EOF.
            return Err(IoError::Refused);
        }
        self.check_expiry()?;
        let want = max.min(MAX_READ) as usize;
        let wire = match &self.io {
            Io::Wire(wire) => wire,
            Io::Replay(replay) => return Ok(replay.read(want)),
        };
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let read = {
            let _waiting = self.watch.as_ref().map(|w| w.waiting(Wait::Read));
            if self.quiet_checks > 0 && self.membership.is_none() && deadline.is_none() {
                self.quiet_checks -= 1;
                if went_quiet(wire) {
                    // Instantiating the handler went deeper into this
                    // thread's stack than serving it does: a client that
                    // idles should not keep those pages.
                    self.quiet_checks = 0;
                    sys::release_stack_below();
                }
            }
            let mailbox = self.membership.as_ref().map(|m| &*m.mailbox);
            let buf = &mut self.buf[..want];
            match (wire.is_tls(), mailbox, deadline) {
                // A plain read blocks in `read` itself, as it always has.
                (false, None, None) => read_socket(wire, buf),
                // A room member, or a read with a deadline, waits with poll first.
                (false, mailbox, deadline) => match wait_readable(wire, mailbox, deadline) {
                    Ok(true) => read_socket(wire, buf),
                    Ok(false) => Err(io::ErrorKind::TimedOut.into()),
                    Err(e) => Err(e),
                },
                (true, mailbox, deadline) => read_tls(wire, mailbox, deadline, buf),
            }
        };
        match read {
            // Data that made it in before a timeout is still the client's.
            Ok(n) if n > 0 => {
                self.traffic.received.fetch_add(n as u64, Ordering::Relaxed);
                if let Some(recorder) = &self.recorder {
                    recorder.push(Entry::Client(self.buf[..n].to_vec()));
                }
                Ok(self.buf[..n].to_vec())
            }
            // The watchdog's shutdown ends a read like end of stream or an error.
            _ if self.expired().is_some() => self.check_expiry().map(|()| Vec::new()),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(IoError::TimedOut),
            Ok(_) => Ok(Vec::new()),
            Err(_) => Err(IoError::Closed),
        }
    }

    /// Writes all of `data`, blocking until the client has taken it.
    pub fn write(&mut self, data: &[u8]) -> Result<(), IoError> {
        self.check_expiry()?;
        let wire = match &self.io {
            Io::Wire(wire) => wire,
            Io::Replay(replay) => {
                replay.write(data);
                return Ok(());
            }
        };
        let written = {
            let _waiting = self.watch.as_ref().map(|w| w.waiting(Wait::Write));
            match &self.membership {
                // Room messages waiting go out first, and none inside this write.
                Some(membership) => membership.mailbox.write(data),
                None => wire.write_all(data),
            }
        };
        match written {
            Ok(()) => {
                self.traffic
                    .sent
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Some(recorder) = &self.recorder {
                    recorder.push(Entry::Handler(data.to_vec()));
                }
                Ok(())
            }
            Err(_) if self.expired().is_some() => self.check_expiry(),
            // Anything else means the peer is gone as far as the handler is concerned.
            Err(_) => Err(IoError::Closed),
        }
    }

    /// The error a cut-off connection answers every read and write with.
    fn check_expiry(&self) -> Result<(), IoError> {
        match self.expired() {
            None => Ok(()),
            Some(Expiry::Idle | Expiry::TimeUp) => Err(IoError::TimedOut),
            // As the client would see it: the connection was closed.
            Some(Expiry::Drained) => Err(IoError::Closed),
        }
    }
}

/// What a connection reads from and writes to.
enum Io {
    /// A client's socket, or TLS over it.
    Wire(Arc<Wire>),
    /// A recorded client.
    Replay(Arc<Replay>),
}

/// A connection's mailbox and the rooms it is in.
struct Membership {
    mailbox: Arc<Mailbox>,
    joined: Vec<String>,
}

impl Connection {
    /// Joins `room` of its listener: from now on, what others publish there
    /// is written to this client.
    pub fn join(&mut self, room: &str) -> Result<(), Refused> {
        let wire = match &self.io {
            Io::Wire(wire) => wire,
            // A replayed client is alone: there is no one to hear from.
            Io::Replay(_) => return Ok(()),
        };
        let membership = match &mut self.membership {
            Some(membership) => membership,
            None => {
                let mailbox = Mailbox::new(self.id, Arc::clone(wire))
                    .map_err(|e| Refused(format!("cannot make a mailbox: {e}")))?;
                self.membership.insert(Membership {
                    mailbox: Arc::new(mailbox),
                    joined: Vec::new(),
                })
            }
        };
        if membership.mailbox.is_closed() {
            return Err(Refused("the connection is closed".into()));
        }
        if membership.joined.iter().any(|r| r == room) {
            return Ok(());
        }
        if membership.joined.len() >= MAX_ROOMS_PER_CONNECTION {
            return Err(Refused(format!(
                "a connection may be in at most {MAX_ROOMS_PER_CONNECTION} rooms"
            )));
        }
        self.rooms.join(room, &membership.mailbox)?;
        membership.joined.push(room.to_string());
        Ok(())
    }

    /// Leaves `room`, if it is in it.
    pub fn leave(&mut self, room: &str) {
        if let Some(membership) = self.membership.as_mut() {
            membership.joined.retain(|r| r != room);
            self.rooms.leave(room, self.id);
        }
    }

    /// Its listener's rooms.
    pub fn rooms(&self) -> &Arc<Rooms> {
        &self.rooms
    }

    /// Publishes `data` to the other members of `room`.
    pub fn publish(&self, room: &str, data: &[u8]) -> Result<u32, Refused> {
        self.rooms.publish(self.id, room, data)
    }

    /// The ids of the members of `room` now.
    pub fn members(&self, room: &str) -> Vec<u64> {
        self.rooms.members(room)
    }
}

impl Drop for Connection {
    /// Leaves every room, so no one publishes to a closed connection; ends
    /// TLS with `close_notify`; and, for a room member, shuts the socket
    /// down at once: a publisher may hold its mailbox a moment longer, and
    /// with it the socket.
    fn drop(&mut self) {
        let membership = self.membership.take();
        if let Some(membership) = &membership {
            for room in &membership.joined {
                self.rooms.leave(room, self.id);
            }
        }
        if let Io::Wire(wire) = &self.io {
            if self.expired().is_none() {
                wire.close();
            }
            if membership.is_some() {
                wire.shutdown();
            }
        }
    }
}

/// Whether the client sent nothing for [`QUIET`]: no data, no end of
/// stream, nothing TLS holds already. A failed poll counts as not quiet:
/// the read that follows will say what is wrong.
fn went_quiet(wire: &Wire) -> bool {
    if wire.has_buffered() {
        return false;
    }
    let mut fds = [libc::pollfd {
        fd: wire.fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    matches!(sys::poll(&mut fds, Some(QUIET)), Ok(0))
}

/// Reads from the socket itself, blocking until something arrives.
fn read_socket(wire: &Wire, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match (&**wire.socket()).read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            read => return read,
        }
    }
}

/// Reads plaintext through TLS: what the session holds already, else what
/// the client sends next, waiting for it with poll (and delivering room
/// messages meanwhile) until `deadline`.
fn read_tls(
    wire: &Wire,
    mailbox: Option<&Mailbox>,
    deadline: Option<Instant>,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        if let Some(read) = wire.read_buffered(buf) {
            return read;
        }
        if !wait_readable(wire, mailbox, deadline)? {
            return Err(io::ErrorKind::TimedOut.into());
        }
        wire.receive()?;
    }
}

/// Waits until `wire` has something to read (or is closed), or `deadline`
/// passes: then false. Meanwhile sends the room messages waiting in
/// `mailbox`, and the records TLS has waiting, whenever the socket can take
/// them.
fn wait_readable(
    wire: &Wire,
    mailbox: Option<&Mailbox>,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    loop {
        let sending = match mailbox {
            Some(mailbox) => mailbox.has_waiting(),
            None => wire.has_output(),
        };
        let mut fds = [
            libc::pollfd {
                fd: wire.fd().as_raw_fd(),
                events: libc::POLLIN | if sending { libc::POLLOUT } else { 0 },
                revents: 0,
            },
            libc::pollfd {
                fd: mailbox.map_or(-1, |m| m.wakeup().fd().as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = deadline.map(|at| at.saturating_duration_since(Instant::now()));
        if sys::poll(&mut fds, timeout)? == 0 {
            return Ok(false);
        }
        if let Some(mailbox) = mailbox
            && fds[1].revents != 0
        {
            mailbox.wakeup().clear();
        }
        if fds[0].revents & libc::POLLOUT != 0 {
            match mailbox {
                Some(mailbox) => mailbox.send_waiting(),
                // What is left goes with the next write, or the next wait.
                None => {
                    let _ = wire.drain();
                }
            }
        }
        // Data, end of stream, or an error: `read` will say which.
        if fds[0].revents & !libc::POLLOUT != 0 {
            return Ok(true);
        }
    }
}
