//! One accepted client, as the `connection` resource a handler reads and writes.
//!
//! The handler only ever holds a `borrow<connection>`; the host owns the socket
//! and closes it when `handle` returns, whatever the guest did. Reads and
//! writes block the guest, never longer than the idle timeout (the
//! [`crate::watchdog`] sees to that), and data goes straight between the guest
//! and the socket: the host buffers nothing.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::watchdog::{Expiry, Verdict, Wait, Watch};

/// The most one `read` hands to a guest, whatever `max` it asks for, so a guest
/// cannot make the host allocate an arbitrary buffer. `read` may return fewer
/// bytes than asked for, so this is invisible to a correct guest.
pub const MAX_READ: u32 = 64 * 1024;

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
    /// The watchdog's hold on the socket. Declared before `stream` so that it
    /// is dropped (unwatched) before the socket is closed.
    watch: Option<Watch>,
    stream: TcpStream,
    /// Where its bytes are counted.
    traffic: Arc<Traffic>,
    /// Where `read` receives, reused so that a round trip neither allocates
    /// nor zeroes a buffer of the guest's `max`; it grows to the largest
    /// `max` asked for, at most [`MAX_READ`].
    buf: Vec<u8>,
}

impl Connection {
    /// Wraps an accepted, blocking socket; `id` must be unique within the
    /// process. With a `watch`, the watchdog's limits apply to it; its bytes
    /// are counted in `traffic`.
    pub fn new(
        id: u64,
        peer: SocketAddr,
        stream: TcpStream,
        watch: Option<Watch>,
        traffic: Arc<Traffic>,
    ) -> Self {
        Connection {
            id,
            peer,
            watch,
            stream,
            traffic,
            buf: Vec::new(),
        }
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
        if max == 0 {
            // An empty list means end of stream, so a zero-byte read has no
            // honest answer: refuse it rather than fake an EOF.
            return Err(IoError::Refused);
        }
        self.check_expiry()?;
        let want = max.min(MAX_READ) as usize;
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let buf = &mut self.buf[..want];
        let read = {
            let _waiting = self.watch.as_ref().map(|w| w.waiting(Wait::Read));
            loop {
                match self.stream.read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    read => break read,
                }
            }
        };
        match read {
            // Data that made it in before a timeout is still the client's.
            Ok(n) if n > 0 => {
                self.traffic.received.fetch_add(n as u64, Ordering::Relaxed);
                Ok(buf[..n].to_vec())
            }
            // The watchdog's shutdown ends a read like end of stream or an error.
            _ if self.expired().is_some() => self.check_expiry().map(|()| Vec::new()),
            Ok(_) => Ok(Vec::new()),
            Err(_) => Err(IoError::Closed),
        }
    }

    /// Writes all of `data`, blocking until the client has taken it.
    pub fn write(&mut self, data: &[u8]) -> Result<(), IoError> {
        self.check_expiry()?;
        let written = {
            let _waiting = self.watch.as_ref().map(|w| w.waiting(Wait::Write));
            self.stream.write_all(data)
        };
        match written {
            Ok(()) => {
                self.traffic
                    .sent
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
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
