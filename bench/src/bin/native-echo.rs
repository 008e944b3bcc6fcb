//! native-echo: the textbook thread-per-connection echo server in plain Rust,
//! the baseline `make bench` holds hotsock against.
//!
//! It is hotsock with the sandbox taken out: an accept loop, one
//! `std::thread` per connection (no pool, as in the textbook design, and as
//! hotsock does), `TCP_NODELAY` (hotsock sets it too), reads of up to 1024
//! bytes, and the very same reply, built by the default handler's own
//! `echo_reply`. What hotsock costs beyond this is what WebAssembly costs.
//!
//! ```text
//! native-echo [--addr 127.0.0.1:0]    prints `listening on IP:PORT`
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, SystemTime};

// The default handler's reply, compiled natively: sharing the crate means the
// two servers cannot drift apart in what they send.
use ctime::echo_reply;
use hotsock::server::LISTENING;

/// Where to listen unless `--addr` says otherwise: loopback, any free port,
/// which the server prints so the bench can connect.
const DEFAULT_ADDR: &str = "127.0.0.1:0";

/// Largest chunk read at once: the default handler's `conn.read(1024)`, so
/// both servers answer the same chunks with the same replies.
const CHUNK: usize = 1024;

/// Pause after a failed `accept`. Errors such as running out of file
/// descriptors repeat at once; backing off keeps the loop from spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

const USAGE: &str = "\
native-echo: a thread-per-connection echo server in plain Rust (the baseline of `make bench`)

usage: native-echo [--addr ADDR]

  --addr ADDR   address to listen on [default: 127.0.0.1:0]; the bound address
                is printed on stdout as `listening on IP:PORT`
  -h, --help    print this help";

fn main() -> ExitCode {
    let addr = match parse_args(std::env::args().skip(1)) {
        Ok(Some(addr)) => addr,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("native-echo: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(&addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("native-echo: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = announce(&listener) {
        eprintln!("native-echo: cannot print the listening address: {e}");
        return ExitCode::FAILURE;
    }
    for stream in listener.incoming() {
        match stream {
            // `thread::Builder` is `thread::spawn` with the default stack,
            // but reports a failure to start a thread instead of panicking:
            // one connection is lost, the server carries on.
            Ok(stream) => {
                if let Err(e) = thread::Builder::new().spawn(move || serve(stream)) {
                    eprintln!("native-echo: cannot start a connection thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("native-echo: accept failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
    ExitCode::SUCCESS
}

/// `--addr ADDR` or `--addr=ADDR`; `None` for `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<String>, String> {
    let mut addr = DEFAULT_ADDR.to_string();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--addr" => {
                addr = args
                    .next()
                    .ok_or("--addr needs a value, e.g. 127.0.0.1:0")?
            }
            _ => match arg.strip_prefix("--addr=") {
                Some(value) => addr = value.to_string(),
                None => return Err(format!("unexpected argument `{arg}`")),
            },
        }
    }
    Ok(Some(addr))
}

/// Prints the bound address as hotsock does, and flushes it: the bench waits
/// for this line before connecting, and a pipe would otherwise keep it in a
/// buffer.
fn announce(listener: &TcpListener) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{LISTENING}{}", listener.local_addr()?)?;
    stdout.flush()
}

/// One client, on its own thread: a reply per chunk until it closes.
fn serve(mut stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown peer".to_string(), |a| a.to_string());
    if let Err(e) = stream.set_nodelay(true) {
        eprintln!("native-echo: {peer}: cannot set TCP_NODELAY: {e}");
    }
    let mut chunk = [0; CHUNK];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A reset is how the bench's new-connection clients close: the
            // end of this client, as it is for hotsock's handler, not an error.
            Err(e) if gone(&e) => return,
            Err(e) => {
                eprintln!("native-echo: {peer}: read failed: {e}");
                return;
            }
        };
        if let Err(e) = stream.write_all(&echo_reply(&chunk[..n], SystemTime::now())) {
            if !gone(&e) {
                eprintln!("native-echo: {peer}: write failed: {e}");
            }
            return;
        }
    }
}

/// Whether an I/O error only says that the client has gone.
fn gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}
