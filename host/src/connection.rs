//! One accepted client: the `connection` resource a handler reads and writes.
//!
//! The handler only ever holds a `borrow<connection>`; the host owns the socket
//! and closes it when `handle` returns, whatever the guest did.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

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
}

impl Connection {
    /// Wraps an accepted socket; `id` must be unique within the process.
    pub fn new(id: u64, peer: SocketAddr, stream: TcpStream) -> Self {
        Connection { id, peer, stream }
    }

    /// Host-assigned id, unique within this server process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn read(&mut self, max: u32) -> Result<Vec<u8>, ErrorCode> {
        if max == 0 {
            // An empty list means end of stream, so a zero-byte read has no
            // honest answer: refuse it rather than fake an EOF.
            return Err(ErrorCode::Refused);
        }
        let mut buf = vec![0; max.min(MAX_READ) as usize];
        loop {
            match self.stream.read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(error_code(&e)),
            }
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<(), ErrorCode> {
        self.stream.write_all(data).map_err(|e| error_code(&e))
    }
}

/// Maps a socket error to what the guest can act on. A socket timeout shows up
/// as `WouldBlock` or `TimedOut` depending on the platform; anything else means
/// the peer is gone as far as the handler is concerned.
fn error_code(e: &io::Error) -> ErrorCode {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ErrorCode::TimedOut,
        _ => ErrorCode::Closed,
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
