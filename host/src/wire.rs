//! A client's byte stream: its socket as it is, or TLS over it (a listener
//! with `--tls-cert`). The connection's own thread reads and writes it, and
//! so do the publishers that deliver room messages to it, so the TLS
//! session is shared under a lock.
//!
//! The session lock is only ever held for work in memory and for calls to
//! the socket that cannot block (`MSG_DONTWAIT`): whoever waits for the
//! socket waits in `poll` without it, so a slow client never holds up a
//! publisher, and a publisher never holds up the client's own thread.
//! Records leave the session in the order they were made, whichever thread
//! sends them, so plaintext put in whole under the lock arrives whole.

use std::io::{self, Read, Write as _};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustls::ServerConnection;

use crate::sys;

/// What a connection's bytes travel through.
#[derive(Debug)]
pub struct Wire {
    socket: Arc<TcpStream>,
    /// The TLS session, if the listener speaks TLS: boxed, since a session
    /// is over a KiB and a plain connection should not carry its room, nor
    /// any frame that moves a `Wire` (stack stays resident per connection).
    tls: Option<Box<Mutex<ServerConnection>>>,
}

impl Wire {
    /// The socket as it is: bytes go straight through.
    pub fn plain(socket: Arc<TcpStream>) -> Self {
        Wire { socket, tls: None }
    }

    /// TLS over `socket`, with `session` past its handshake.
    pub fn tls(socket: Arc<TcpStream>, session: ServerConnection) -> Self {
        Wire {
            socket,
            tls: Some(Box::new(Mutex::new(session))),
        }
    }

    /// The socket underneath.
    pub fn socket(&self) -> &Arc<TcpStream> {
        &self.socket
    }

    /// Whether bytes go through TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The socket's descriptor, to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Shuts both directions of the socket down, which wakes whoever waits
    /// on it.
    pub fn shutdown(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    /// Plaintext the session already holds, without touching the socket:
    /// `None` when it needs more from the client (always, without TLS).
    /// `Some(Ok(0))` is the end of the stream.
    pub fn read_buffered(&self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let mut session = sys::lock(self.tls.as_ref()?);
        match session.reader().read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            // The client closed the socket without close_notify: most do
            // (a killed `openssl s_client`, Python without `unwrap`), and
            // a handler cannot tell a truncation attack apart anyway, since
            // its protocol frames its own messages. An end of stream.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Some(Ok(0)),
            read => Some(read),
        }
    }

    /// Whether the TLS session holds plaintext, or the end of the stream,
    /// that a read would return without the socket.
    pub fn has_buffered(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| {
            let mut session = sys::lock(tls);
            let state = session.process_new_packets();
            state.is_ok_and(|io| io.plaintext_bytes_to_read() > 0 || io.peer_has_closed())
        })
    }

    /// Takes what the client sent into the session, once `poll` said the
    /// socket is readable, and answers what TLS itself asks for (a key
    /// update, an alert). Plaintext, if any came, is then for
    /// [`Wire::read_buffered`]. A fatal TLS error sends its alert and is an
    /// `InvalidData` error.
    pub fn receive(&self) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let mut session = sys::lock(tls);
        match session.read_tls(&mut Now(self.fd())) {
            // At the end of the stream the session makes reads say so.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let processed = session.process_new_packets().map(|_| ());
        // Whatever it must say (an alert above all) goes out now if the
        // socket takes it; what is left goes with the next write or poll.
        let _ = send_records(&mut session, self.fd());
        processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Whether records are waiting for the socket to take them.
    pub fn has_output(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|tls| sys::lock(tls).wants_write())
    }

    /// Sends waiting records without blocking: `WouldBlock` if some are
    /// left.
    pub fn drain(&self) -> io::Result<()> {
        match &self.tls {
            None => Ok(()),
            Some(tls) => send_records(&mut sys::lock(tls), self.fd()),
        }
    }

    /// Takes what of `data` it can now, without blocking: sent (plain), or
    /// encrypted and on its way (TLS). `WouldBlock` if nothing was taken.
    pub fn send_now(&self, data: &[u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            return sys::send_now(self.fd(), data);
        };
        let mut session = sys::lock(tls);
        // Records made earlier go first; the socket must take them before
        // the session takes more, or it would buffer without bound.
        send_records(&mut session, self.fd())?;
        let taken = session.writer().write(data)?;
        match send_records(&mut session, self.fd()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        match taken {
            0 if !data.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            taken => Ok(taken),
        }
    }

    /// Writes all of `data`, blocking until the socket has taken it (and,
    /// with TLS, every record made before it).
    pub fn write_all(&self, data: &[u8]) -> io::Result<()> {
        if self.tls.is_none() {
            return (&*self.socket).write_all(data);
        }
        let mut at = 0;
        loop {
            match self.send_now(&data[at..]) {
                Ok(taken) => at += taken,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if at == data.len() {
                match self.drain() {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            // Woken by space, or by the watchdog's shutdown.
            self.wait_writable(None)?;
        }
    }

    /// Waits until the socket can take more, or `deadline` passes.
    fn wait_writable(&self, deadline: Option<Instant>) -> io::Result<()> {
        let mut fds = [libc::pollfd {
            fd: self.fd().as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        }];
        let timeout = deadline.map(|at| at.saturating_duration_since(Instant::now()));
        match sys::poll(&mut fds, timeout)? {
            0 => Err(io::ErrorKind::TimedOut.into()),
            _ => Ok(()),
        }
    }

    /// Ends TLS as its peer expects (`close_notify`), sent if the socket
    /// takes it now: closing never waits for a client that does not read.
    pub fn close(&self) {
        if let Some(tls) = &self.tls {
            let mut session = sys::lock(tls);
            session.send_close_notify();
            let _ = send_records(&mut session, self.fd());
        }
    }
}

/// Sends `session`'s waiting records without blocking: `WouldBlock` if
/// some are left.
fn send_records(session: &mut ServerConnection, fd: BorrowedFd<'_>) -> io::Result<()> {
    while session.wants_write() {
        match session.write_tls(&mut Now(fd)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The socket, read and written without ever blocking: for the session,
/// which must not wait with its lock held.
pub struct Now<'a>(pub BorrowedFd<'a>);

impl Read for Now<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::recv_now(self.0, buf)
    }
}

impl io::Write for Now<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        sys::send_now(self.0, data)
    }

    /// rustls hands over a flight's records together: they go in one call.
    fn write_vectored(&mut self, data: &[io::IoSlice<'_>]) -> io::Result<usize> {
        sys::send_vectored_now(self.0, data)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
