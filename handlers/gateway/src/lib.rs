//! A sandboxed TCP relay: each client is connected to the backend named by
//! the environment variable `BACKEND` (`HOST:PORT`), and bytes go both ways
//! until either side closes. The handler can reach that backend and nothing
//! else, because the operator grants exactly it:
//!
//! ```sh
//! hotsock serve --env BACKEND=127.0.0.1:6379 --allow-connect 127.0.0.1:6379 \
//!     --keyvalue gateway target/wasm32-wasip2/release/gateway.wasm
//! ```
//!
//! With `--keyvalue gateway` it also counts visits: each connection
//! increments the key `visits` in the bucket `gateway`, shared by every
//! connection of the server process, and logs the number (on stdout, which
//! the host logs with the connection). Without the bucket it just relays.
//!
//! An instance is single-threaded and the host's `read-within` cannot be
//! waited on together with a socket, so the relay takes turns: it waits a few
//! milliseconds for the client (`read-within`), then takes whatever the
//! backend has sent without waiting (the backend socket is non-blocking). The
//! wait starts at 1 ms after traffic and doubles to at most 16 ms while both
//! sides are quiet, which is how late a backend's unprompted bytes can be.
//! Right after passing on the client's bytes, it waits for the backend
//! instead (up to 5 ms), so a request's answer comes back at once.
//!
//! When the client closes its side, the backend's write side is shut down and
//! the relay goes on until the backend closes, so `printf 'PING\r\n' | nc -N`
//! gets its answer (a backend silent for 30 s after that is given up on);
//! when the backend closes, the client is closed.

wit_bindgen::generate!({ path: "../../wit", world: "plugin", generate_all });

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use exports::hotsock::plugin::handler::Guest;
use hotsock::plugin::types::{Connection, ErrorCode};
use wasi::keyvalue::{atomics, store};

/// The most bytes moved in one step, each way.
const CHUNK: usize = 64 * 1024;
/// The longest wait for the client in one turn, while nothing moves (ms).
const MAX_WAIT_MS: u32 = 16;
/// How long the relay waits for the backend's answer after passing on the
/// client's bytes, before it looks at the client again.
const REPLY_WAIT: Duration = Duration::from_millis(5);
/// How long a backend may stay silent after the client closed its side,
/// before the relay gives up on it.
const LINGER: Duration = Duration::from_secs(30);

struct Gateway;

impl Guest for Gateway {
    fn handle(conn: &Connection) -> Result<(), String> {
        let Ok(backend_addr) = std::env::var("BACKEND") else {
            return refuse(
                conn,
                "gateway: no backend: serve with --env BACKEND=HOST:PORT --allow-connect HOST:PORT"
                    .into(),
            );
        };
        count_visit(conn, &backend_addr);
        let backend = match TcpStream::connect(&backend_addr) {
            Ok(backend) => backend,
            Err(e) => {
                let hint = match e.kind() {
                    ErrorKind::ConnectionRefused => "is it listening?",
                    _ => "is it granted with --allow-connect?",
                };
                let why = describe(&e);
                return refuse(
                    conn,
                    format!("gateway: cannot reach {backend_addr} ({why}): {hint}"),
                );
            }
        };
        relay(conn, backend).map_err(|e| format!("gateway: relay to {backend_addr}: {e}"))
    }
}

/// Tells the client why it is not served, and returns that as the handler's error.
fn refuse(conn: &Connection, message: String) -> Result<(), String> {
    let _ = conn.write(format!("{message}\n").as_bytes());
    Err(message)
}

/// Increments and logs the visit counter, if the operator granted the bucket.
fn count_visit(conn: &Connection, backend: &str) {
    let Ok(bucket) = store::open("gateway") else {
        return;
    };
    match atomics::increment(&bucket, "visits", 1) {
        Ok(n) => println!("visit {n}: {} to {backend}", conn.peer_addr()),
        Err(e) => eprintln!("cannot count the visit: {e:?}"),
    }
}

/// Moves bytes both ways until one side closes. An error is the backend's
/// (the client going away is the normal end).
fn relay(conn: &Connection, mut backend: TcpStream) -> std::io::Result<()> {
    // The timeout applies only while the socket blocks: in `await_reply`.
    backend.set_read_timeout(Some(REPLY_WAIT))?;
    backend.set_nonblocking(true)?;
    let mut buf = vec![0; CHUNK];
    let mut wait = 1;
    loop {
        let mut moved = false;
        match conn.read_within(CHUNK as u32, wait) {
            Ok(data) if data.is_empty() => return finish(conn, backend, &mut buf),
            Ok(data) => {
                send(conn, &mut backend, &data, &mut buf)?;
                moved = true;
                if let Flow::Done = await_reply(conn, &mut backend, &mut buf)? {
                    return Ok(());
                }
            }
            Err(ErrorCode::TimedOut) => {}
            Err(_) => return Ok(()),
        }
        match drain(conn, &mut backend, &mut buf)? {
            Flow::Moved => moved = true,
            Flow::Idle => {}
            Flow::Done => return Ok(()),
        }
        wait = if moved {
            1
        } else {
            (wait * 2).min(MAX_WAIT_MS)
        };
    }
}

/// Right after the client sent something, its answer is the likeliest next
/// event: wait up to [`REPLY_WAIT`] on the backend alone, so a request and
/// its reply cross the relay without waiting out a turn.
fn await_reply(
    conn: &Connection,
    backend: &mut TcpStream,
    buf: &mut [u8],
) -> std::io::Result<Flow> {
    backend.set_nonblocking(false)?;
    let read = backend.read(buf);
    backend.set_nonblocking(true)?;
    match read {
        Ok(0) => Ok(Flow::Done),
        Ok(n) if conn.write(&buf[..n]).is_err() => Ok(Flow::Done),
        Ok(_) => Ok(Flow::Moved),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(Flow::Idle),
        Err(e) if e.kind() == ErrorKind::Interrupted => Ok(Flow::Idle),
        Err(e) if is_reset(&e) => Ok(Flow::Done),
        Err(e) => Err(e),
    }
}

/// What one pass over the backend's input did.
enum Flow {
    Moved,
    Idle,
    /// The backend or the client closed.
    Done,
}

/// Passes on everything the backend has sent so far, without waiting.
fn drain(conn: &Connection, backend: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<Flow> {
    let mut flow = Flow::Idle;
    loop {
        match backend.read(buf) {
            Ok(0) => return Ok(Flow::Done),
            Ok(n) => {
                if conn.write(&buf[..n]).is_err() {
                    return Ok(Flow::Done);
                }
                flow = Flow::Moved;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(flow),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_reset(&e) => return Ok(Flow::Done),
            Err(e) => return Err(e),
        }
    }
}

/// Writes `data` to the (non-blocking) backend, passing on what the backend
/// sends meanwhile, so two full buffers cannot block each other.
fn send(
    conn: &Connection,
    backend: &mut TcpStream,
    mut data: &[u8],
    buf: &mut [u8],
) -> std::io::Result<()> {
    while !data.is_empty() {
        match backend.write(data) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if let Flow::Done = drain(conn, backend, buf)? {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The client closed its side: tell the backend, and pass on its answer until
/// it closes too, or is silent for [`LINGER`].
fn finish(conn: &Connection, mut backend: TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let _ = backend.shutdown(Shutdown::Write);
    backend.set_nonblocking(false)?;
    backend.set_read_timeout(Some(LINGER))?;
    loop {
        match backend.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                if conn.write(&buf[..n]).is_err() {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_reset(&e) => return Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// An I/O error in words. The numbers in `(os error N)` are WASI's, not the
/// host system's, so they would only mislead.
fn describe(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(_) => e.kind().to_string(),
        None => e.to_string(),
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

export!(Gateway);
