//! One accepted client: the `connection` resource a handler reads and writes.
//!
//! The handler only ever holds a `borrow<connection>`; the host owns the socket
//! and closes it when `handle` returns, whatever the guest did. Reads and
//! writes block the guest, never longer than the idle timeout (the
//! [`crate::watchdog`] sees to that), and data goes straight between the guest
//! and the socket: the host buffers nothing.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use log::info;
use wasmtime::component::Resource;

use crate::bindings::hotsock::plugin::types::{ErrorCode, Host, HostConnection};
use crate::sandbox::ConnState;
use crate::watchdog::{Expiry, Wait, Watch, Watchdog};

/// The most one `read` hands to a guest, whatever `max` it asks for, so a guest
/// cannot make the host allocate an arbitrary buffer. `read` may return fewer
/// bytes than asked for, so this is invisible to a correct guest.
pub const MAX_READ: u32 = 64 * 1024;

/// A client connection as the host sees it.
pub struct Connection {
    id: u64,
    peer: SocketAddr,
    /// The watchdog's hold on the socket. Declared before `stream` so that it
    /// is dropped (unwatched) before the socket is closed.
    watch: Option<Watch>,
    stream: TcpStream,
    /// How the log names this connection: `conn 7 127.0.0.1:50275 v1-1d2e8999`.
    label: String,
    /// Whether the timeout has been logged, so it is logged once.
    timeout_logged: bool,
    /// Where `read` receives, reused so that a round trip neither allocates
    /// nor zeroes a buffer of the guest's `max`; it grows to the largest
    /// `max` asked for, at most [`MAX_READ`].
    buf: Vec<u8>,
}

impl Connection {
    /// Wraps an accepted socket; `id` must be unique within the process.
    pub fn new(id: u64, peer: SocketAddr, stream: TcpStream, label: String) -> Self {
        Connection {
            id,
            peer,
            watch: None,
            stream,
            label,
            timeout_logged: false,
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

    /// How log lines name this connection.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Puts the connection under the watchdog's idle timeout and time limit.
    /// Called once, by [`crate::limits::Limits::confine`].
    pub(crate) fn watch_with(&mut self, watchdog: &Watchdog) {
        self.watch = Some(watchdog.watch(&self.stream));
    }

    fn read(&mut self, max: u32) -> Result<Vec<u8>, ErrorCode> {
        if max == 0 {
            // An empty list means end of stream, so a zero-byte read has no
            // honest answer: refuse it rather than fake an EOF.
            return Err(ErrorCode::Refused);
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
            Ok(n) if n > 0 => Ok(buf[..n].to_vec()),
            // The watchdog's shutdown ends a read like end of stream or an error.
            _ if self.check_expiry().is_err() => Err(ErrorCode::TimedOut),
            Ok(_) => Ok(Vec::new()),
            Err(_) => Err(ErrorCode::Closed),
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<(), ErrorCode> {
        self.check_expiry()?;
        let written = {
            let _waiting = self.watch.as_ref().map(|w| w.waiting(Wait::Write));
            self.stream.write_all(data)
        };
        match written {
            Ok(()) => Ok(()),
            Err(_) if self.check_expiry().is_err() => Err(ErrorCode::TimedOut),
            // Anything else means the peer is gone as far as the handler is concerned.
            Err(_) => Err(ErrorCode::Closed),
        }
    }

    /// `Err(timed-out)` once the watchdog has cut the connection off, logged
    /// the first time: it is the host's decision, so the operator should see it.
    fn check_expiry(&mut self) -> Result<(), ErrorCode> {
        let Some(watch) = &self.watch else {
            return Ok(());
        };
        let Some(expiry) = watch.expired() else {
            return Ok(());
        };
        if !self.timeout_logged {
            self.timeout_logged = true;
            let (idle, time_limit) = watch.limits();
            match expiry {
                Expiry::Idle => info!(
                    "{}: client idle for {idle:?}: timed out (--idle-timeout)",
                    self.label
                ),
                Expiry::TimeUp => info!(
                    "{}: connection time is up after {:?} (--max-connection-time)",
                    self.label,
                    time_limit.unwrap_or_default()
                ),
            }
        }
        Err(ErrorCode::TimedOut)
    }
}

impl Host for ConnState {}

impl HostConnection for ConnState {
    fn read(
        &mut self,
        conn: Resource<Connection>,
        max: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, ErrorCode>> {
        self.cpu.io += 1;
        Ok(self.table.get_mut(&conn)?.read(max))
    }

    fn write(
        &mut self,
        conn: Resource<Connection>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
        self.cpu.io += 1;
        Ok(self.table.get_mut(&conn)?.write(&data))
    }

    fn peer_addr(&mut self, conn: Resource<Connection>) -> wasmtime::Result<String> {
        Ok(self.table.get(&conn)?.peer.to_string())
    }

    fn id(&mut self, conn: Resource<Connection>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&conn)?.id)
    }

    fn drop(&mut self, conn: Resource<Connection>) -> wasmtime::Result<()> {
        // Guests only ever borrow the connection, so this runs only if a future
        // contract hands out owned handles; the host still closes the socket.
        self.table.delete(conn)?;
        Ok(())
    }
}
