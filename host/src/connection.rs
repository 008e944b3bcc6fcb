//! One accepted client: the `connection` resource a handler reads and writes.
//!
//! The handler only ever holds a `borrow<connection>`; the host owns the socket
//! and closes it when `handle` returns, whatever the guest did. Reads and
//! writes block the guest, never longer than the idle timeout, and data goes
//! straight between the guest and the socket: the host buffers nothing.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use log::info;
use wasmtime::component::Resource;

use crate::bindings::hotsock::plugin::types::{ErrorCode, Host, HostConnection};
use crate::sandbox::ConnState;

/// The most one `read` hands to a guest, whatever `max` it asks for, so a guest
/// cannot make the host allocate an arbitrary buffer. `read` may return fewer
/// bytes than asked for, so this is invisible to a correct guest.
pub const MAX_READ: u32 = 64 * 1024;

/// A client connection as the host sees it.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    peer: SocketAddr,
    stream: TcpStream,
    /// How the log names this connection: `conn 7 127.0.0.1:50275 v1-1d2e8999`.
    label: String,
    idle_timeout: Option<Duration>,
    /// When the connection must be closed, with `--max-connection-time`.
    deadline: Option<Instant>,
}

impl Connection {
    /// Wraps an accepted socket; `id` must be unique within the process.
    pub fn new(id: u64, peer: SocketAddr, stream: TcpStream, label: String) -> Self {
        Connection {
            id,
            peer,
            stream,
            label,
            idle_timeout: None,
            deadline: None,
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

    /// Bounds every wait for the client by `idle`, and the whole connection by
    /// `deadline`. Called once, by [`crate::limits::Limits::confine`].
    pub(crate) fn set_timeouts(
        &mut self,
        idle: Duration,
        deadline: Option<Instant>,
    ) -> io::Result<()> {
        self.stream.set_read_timeout(Some(idle))?;
        self.stream.set_write_timeout(Some(idle))?;
        self.idle_timeout = Some(idle);
        self.deadline = deadline;
        Ok(())
    }

    /// Before a blocking socket call: with a connection deadline, shortens the
    /// socket timeout to what is left of it. Without one there is nothing to
    /// do, and no system call is spent.
    fn before_wait(
        &self,
        set: fn(&TcpStream, Option<Duration>) -> io::Result<()>,
    ) -> Result<(), ErrorCode> {
        let (Some(deadline), Some(idle)) = (self.deadline, self.idle_timeout) else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            info!(
                "{}: connection time is up (--max-connection-time)",
                self.label
            );
            return Err(ErrorCode::TimedOut);
        }
        set(&self.stream, Some(left.min(idle))).map_err(|e| self.error_code(&e))
    }

    fn read(&mut self, max: u32) -> Result<Vec<u8>, ErrorCode> {
        if max == 0 {
            // An empty list means end of stream, so a zero-byte read has no
            // honest answer: refuse it rather than fake an EOF.
            return Err(ErrorCode::Refused);
        }
        self.before_wait(TcpStream::set_read_timeout)?;
        let mut buf = vec![0; max.min(MAX_READ) as usize];
        loop {
            match self.stream.read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.error_code(&e)),
            }
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<(), ErrorCode> {
        self.before_wait(TcpStream::set_write_timeout)?;
        self.stream.write_all(data).map_err(|e| self.error_code(&e))
    }

    /// Maps a socket error to what the guest can act on, and logs a timeout:
    /// it is the host's decision, so the operator should see it.
    fn error_code(&self, e: &io::Error) -> ErrorCode {
        match e.kind() {
            // A socket timeout is `WouldBlock` or `TimedOut` depending on the platform.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                if self.deadline.is_some_and(|d| Instant::now() >= d) {
                    info!(
                        "{}: connection time is up (--max-connection-time)",
                        self.label
                    );
                } else {
                    let idle = self.idle_timeout.unwrap_or_default();
                    info!(
                        "{}: client idle for {idle:?}: timed out (--idle-timeout)",
                        self.label
                    );
                }
                ErrorCode::TimedOut
            }
            // Anything else means the peer is gone as far as the handler is concerned.
            _ => ErrorCode::Closed,
        }
    }
}

impl Host for ConnState {}

impl HostConnection for ConnState {
    fn read(
        &mut self,
        conn: Resource<Connection>,
        max: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, ErrorCode>> {
        Ok(self.table.get_mut(&conn)?.read(max))
    }

    fn write(
        &mut self,
        conn: Resource<Connection>,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), ErrorCode>> {
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
