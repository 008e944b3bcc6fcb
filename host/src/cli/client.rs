//! `hotsock client`: the classic interactive line client. It sends each line
//! typed after the `-> ` prompt and prints the server's reply; `quit` ends the
//! session. With stdin from a pipe or file it does the same without prompts,
//! so scripts and tests can drive any line-based server with it.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use hotsock::units::parse_duration;

use crate::cli::args::DEFAULT_ADDR;

/// How long after the first bytes of a reply the client keeps collecting more:
/// a reply may arrive in several segments, and a person cannot tell 20 ms.
const REPLY_SETTLE: Duration = Duration::from_millis(20);

/// How long to wait for the server to close after we are done sending.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Options of `hotsock client`.
#[derive(Debug, Args)]
#[command(after_help = "\
With a terminal, it prompts `-> ` for each line; typing `quit` ends the session. \
With stdin from a pipe or file, it sends each line and prints each reply, without prompts.")]
pub struct ClientArgs {
    /// The server, as HOST:PORT.
    #[arg(value_name = "ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,

    /// Send this message to the server before closing when `quit` is typed,
    /// e.g. `--quit-message --quit--` for the classic interactive server.
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub quit_message: Option<String>,

    /// Send each line with its newline (by default a line goes without it,
    /// like the classic client).
    #[arg(long)]
    pub newline: bool,

    /// Longest to wait for a reply before giving up.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: humantime::Duration,
}

/// Runs the client until `quit`, end of input, or the server closing.
pub fn run(args: &ClientArgs) -> Result<()> {
    let mut stream = TcpStream::connect(&args.addr).with_context(|| {
        format!(
            "cannot connect to {}: is a server listening there?",
            args.addr
        )
    })?;
    let interactive = io::stdin().is_terminal();
    let mut stdout = io::stdout().lock();
    let mut lines = io::stdin().lock().lines();
    loop {
        if interactive {
            write!(stdout, "-> ")?;
            stdout.flush()?;
        }
        let Some(line) = lines.next().transpose()? else {
            break; // end of input
        };
        if line.trim().eq_ignore_ascii_case("quit") {
            if let Some(message) = &args.quit_message {
                stream.write_all(message.as_bytes())?;
            }
            break;
        }
        // Sending nothing would wait for a reply that never comes.
        if line.is_empty() && !args.newline {
            continue;
        }
        let mut message = line.into_bytes();
        if args.newline {
            message.push(b'\n');
        }
        stream
            .write_all(&message)
            .context("cannot send to the server")?;
        match read_reply(&mut stream, *args.timeout)? {
            Some(reply) => writeln!(
                stdout,
                "{}",
                String::from_utf8_lossy(&reply).trim_end_matches(['\r', '\n'])
            )?,
            None => {
                writeln!(stdout, "the server closed the connection")?;
                return Ok(());
            }
        }
    }
    close(stream);
    Ok(())
}

/// Reads one reply: waits up to `timeout` for its first bytes, then takes
/// whatever follows within [`REPLY_SETTLE`]. `None` if the server closed.
fn read_reply(stream: &mut TcpStream, timeout: Duration) -> Result<Option<Vec<u8>>> {
    let mut reply = vec![0; 64 * 1024];
    stream.set_read_timeout(Some(timeout))?;
    let n = match stream.read(&mut reply) {
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            bail!("no reply within {timeout:?} (see --timeout)")
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
        Err(e) => return Err(e).context("cannot read from the server"),
    };
    if n == 0 {
        return Ok(None);
    }
    reply.truncate(n);
    stream.set_read_timeout(Some(REPLY_SETTLE))?;
    let mut more = [0; 64 * 1024];
    while let Ok(n @ 1..) = stream.read(&mut more) {
        reply.extend_from_slice(&more[..n]);
    }
    Ok(Some(reply))
}

/// Closes politely: says we are done sending and lets the server finish, so
/// neither side sees a reset.
fn close(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(CLOSE_WAIT));
    let _ = io::copy(&mut stream, &mut io::sink());
}
