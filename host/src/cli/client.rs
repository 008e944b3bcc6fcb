//! `hotsock client`: the classic interactive line client, made to show
//! everything the server says, when it says it.
//!
//! Three threads share the work. One copies whatever the server sends to
//! stdout as it arrives: a greeting before anything was typed, each reply,
//! several replies to one line, messages other clients send to a room. One
//! reads stdin. The main thread sends the lines, each after the reply to the
//! one before has arrived (or `--wait` has passed), prints the `-> ` prompt
//! when the server falls quiet, and decides when the session is over. With
//! stdin from a pipe or file it sends every line without prompts, then waits
//! until the server closes or falls quiet, so no reply is lost.
//!
//! With `--tls` the handshake is done before the threads start, and the one
//! rustls session is shared under a mutex: the thread that shows replies
//! waits for the socket to be readable without holding it, then reads and
//! decrypts; the main thread encrypts and sends under it.

use std::collections::VecDeque;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;
use hotsock::units::parse_duration;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::cli::args::DEFAULT_ADDR;

/// How long the server must be quiet before a reply counts as complete: a
/// reply may arrive in several segments, and a person cannot tell 20 ms.
const REPLY_SETTLE: Duration = Duration::from_millis(20);

/// How long a typed line sent without a newline may go unanswered before the
/// client suggests `--newline`: longer than a person waits for a round trip.
const HINT_AFTER: Duration = Duration::from_secs(2);

/// What a line-based server that never saw a newline is told about.
const NEWLINE_HINT: &str = "if the server expects whole lines, try --newline";

/// The prompt before each line typed.
const PROMPT: &[u8] = b"-> ";

/// Carriage return and ANSI "erase line": takes the prompt away before
/// printing what the server sent in its place.
const ERASE_LINE: &[u8] = b"\r\x1b[K";

/// Shown after the options in `--help`.
const AFTER_HELP: &str = "\
Whatever the server sends is printed as soon as it arrives: a greeting, each reply, messages \
from other clients.

Newlines: a server that takes each read as one message (the echo handler, greet, the classic \
Python servers) wants the default, each line without its newline. A server that reads whole \
lines (chat, most text protocols) waits for a newline that never comes unless you give \
--newline. When a line sent without a newline gets no reply, the client says so on stderr and \
suggests --newline.

Each line is sent once the reply to the one before has arrived (or after --wait without one), \
so replies come in order and two lines never arrive as one message.

With a terminal, it prompts `-> `; `quit` or Ctrl-D ends the session. With stdin from a pipe or \
file, it sends the lines without prompts, then waits until the server closes or has been quiet \
for --wait, so the last replies are printed too. If the server closes first, the client says so \
on stderr and exits 0.";

/// Options of `hotsock client`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct ClientArgs {
    /// The server, as HOST:PORT.
    #[arg(value_name = "ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,

    /// Send this message to the server before closing when `quit` is typed,
    /// e.g. `--quit-message --quit--` for the classic interactive server.
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub quit_message: Option<String>,

    /// Send each line with a newline (`\n`), for servers that read whole
    /// lines. Without it a line goes without its newline, like the classic
    /// Python client, for servers that take each read as one message.
    #[arg(long)]
    pub newline: bool,

    /// How long the server may stay quiet before the client moves on: to the
    /// next line when the last one got no reply, and to exiting once piped
    /// input has ended. Raise it for a slow server.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub wait: humantime::Duration,

    /// Longest to wait to connect, for the server to take a line, and for it
    /// to finish once the input has ended.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: humantime::Duration,

    /// Speak TLS to the server, verifying its certificate with `--cafile`.
    #[arg(long)]
    pub tls: bool,

    /// PEM file of the certificate authorities to verify the server's
    /// certificate with; needed with `--tls` (no system roots are bundled).
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub cafile: Option<PathBuf>,

    /// PEM file of a client certificate (chain) to present; needs `--key`.
    #[arg(long, value_name = "FILE", requires_all = ["tls", "key"])]
    pub cert: Option<PathBuf>,

    /// PEM file of the private key of `--cert`.
    #[arg(long, value_name = "FILE", requires_all = ["tls", "cert"])]
    pub key: Option<PathBuf>,

    /// The name sent in SNI and that the server's certificate must be for;
    /// default: the host part of ADDR (an IP address matches an IP SAN).
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub servername: Option<String>,

    /// An application protocol to offer in ALPN; repeatable, most preferred
    /// first.
    #[arg(long, value_name = "PROTO", requires = "tls")]
    pub alpn: Vec<String>,
}

/// Runs the client until `quit`, the end of the input, or the server closing.
pub fn run(args: &ClientArgs) -> Result<()> {
    let tls = if args.tls {
        Some(tls_config(args)?)
    } else {
        None
    };
    let stream = connect(&args.addr, *args.timeout)?;
    // A server that stops reading must not hang the client on a full buffer.
    stream
        .set_write_timeout(Some(*args.timeout))
        .context("cannot set the connection's write timeout")?;
    let link = match tls {
        None => Link::Plain(stream),
        Some((config, name)) => {
            let session = handshake(&stream, config, name, &args.addr, *args.timeout)?;
            Link::Tls(stream, Arc::new(Mutex::new(session)))
        }
    };
    let interactive = io::stdin().is_terminal();
    let terminal = io::stdout().is_terminal();
    let screen = Arc::new(Mutex::new(Screen {
        prompting: interactive && terminal,
        terminal,
        prompt_shown: false,
        line_open: false,
    }));
    let (events, inbox) = mpsc::channel();

    let from_server = link
        .try_clone()
        .context("cannot share the connection with the thread that shows replies")?;
    let (shown_on, told) = (Arc::clone(&screen), events.clone());
    thread::Builder::new()
        .name("replies".into())
        .spawn(move || match from_server {
            Link::Plain(stream) => show_replies(stream, &shown_on, &told),
            Link::Tls(stream, session) => show_tls_replies(&stream, &session, &shown_on, &told),
        })
        .context("cannot start the thread that shows replies")?;
    // Never joined: blocked on stdin, it ends with the process.
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || read_lines(&events))
        .context("cannot start the thread that reads stdin")?;

    Session {
        args,
        stream: link,
        screen,
        inbox,
        interactive,
        pending: VecDeque::new(),
        last_sent: None,
        last_received: None,
        hinted: false,
    }
    .run()
}

/// Connects to `addr`, trying each address it resolves to for up to `timeout`.
fn connect(addr: &str, timeout: Duration) -> Result<TcpStream> {
    let candidates: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| anyhow!("cannot connect to {addr}: {}", reason(&e)))?
        .collect();
    let mut last_error = None;
    for candidate in candidates {
        match TcpStream::connect_timeout(&candidate, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            anyhow!(
                "cannot connect to {addr}: no answer within {} (see --timeout)",
                humantime::format_duration(timeout)
            )
        }
        Some(e) => anyhow!("cannot connect to {addr}: {}", reason(&e)),
        None => anyhow!("cannot connect to {addr}: it resolves to no address"),
    })
}

/// An I/O error as a person reads it: `Connection refused`, without the
/// `(os error 111)` that follows in Rust's own wording.
fn reason(error: &io::Error) -> String {
    let text = error.to_string();
    match text.split_once(" (os error ") {
        Some((reason, _)) => reason.to_string(),
        None => text,
    }
}

/// The TLS client configuration `args` ask for, and the name to verify the
/// server's certificate against.
fn tls_config(args: &ClientArgs) -> Result<(Arc<ClientConfig>, ServerName<'static>)> {
    let Some(cafile) = &args.cafile else {
        bail!(
            "--tls needs --cafile FILE: the PEM certificate authorities to verify the server \
             with (no system roots are bundled)"
        );
    };
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(cafile, "--cafile")? {
        roots
            .add(cert)
            .map_err(|e| anyhow!("--cafile {}: {e}", cafile.display()))?;
    }
    let provider = Arc::new(hotsock::server::tls_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_root_certificates(roots);
    let mut config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certificates(cert, "--cert")?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| anyhow!("cannot read the key in --key {}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                anyhow!(
                    "--cert {} with --key {}: {e}",
                    cert.display(),
                    key.display()
                )
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("--cert and --key go together: give both or neither"),
    };
    config.alpn_protocols = args.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let host = match &args.servername {
        Some(name) => name.clone(),
        None => host_of(&args.addr).to_string(),
    };
    let name = ServerName::try_from(host.clone())
        .map_err(|_| anyhow!("{host:?} is not a valid server name (see --servername)"))?;
    Ok((Arc::new(config), name))
}

/// The certificates in the PEM file `path`, given as `option`; at least one.
fn read_certificates(path: &Path, option: &str) -> Result<Vec<CertificateDer<'static>>> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("cannot read {option} {shown}: {e}"))?;
    if certs.is_empty() {
        bail!("{option} {shown} holds no PEM certificate");
    }
    Ok(certs)
}

/// The host part of `HOST:PORT` (`[::1]:80` gives `::1`).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host)
}

/// Does the TLS handshake on `stream`, within `timeout`.
fn handshake(
    stream: &TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    addr: &str,
    timeout: Duration,
) -> Result<ClientConnection> {
    let mut session =
        ClientConnection::new(config, name).context("cannot start the TLS handshake")?;
    stream
        .set_read_timeout(Some(timeout))
        .context("cannot set the connection's read timeout")?;
    let mut socket = stream;
    while session.is_handshaking() {
        if let Err(e) = session.complete_io(&mut socket) {
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                bail!(
                    "TLS handshake with {addr} failed: no answer within {} (see --timeout)",
                    humantime::format_duration(timeout)
                );
            }
            if e.kind() == io::ErrorKind::UnexpectedEof || is_gone(&e) {
                bail!("TLS handshake with {addr} failed: the server closed the connection");
            }
            bail!("TLS handshake with {addr} failed: {}", reason(&e));
        }
    }
    // The thread that shows replies waits with poll, for as long as it takes.
    stream
        .set_read_timeout(None)
        .context("cannot set the connection's read timeout")?;
    Ok(session)
}

/// The connection to the server: plain TCP, or TLS over it with the session
/// shared by the thread that shows replies and the one that sends.
enum Link {
    Plain(TcpStream),
    Tls(TcpStream, Arc<Mutex<ClientConnection>>),
}

impl Link {
    fn try_clone(&self) -> io::Result<Link> {
        Ok(match self {
            Link::Plain(stream) => Link::Plain(stream.try_clone()?),
            Link::Tls(stream, session) => Link::Tls(stream.try_clone()?, Arc::clone(session)),
        })
    }

    /// Sends all of `bytes`.
    fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Link::Plain(stream) => (&*stream).write_all(bytes),
            Link::Tls(stream, session) => {
                let mut session = hotsock::sys::lock(session);
                let mut rest = bytes;
                while !rest.is_empty() {
                    let n = session.writer().write(rest)?;
                    rest = &rest[n..];
                    flush_tls(&mut session, stream)?;
                }
                Ok(())
            }
        }
    }

    /// Says the client is done sending: TLS `close_notify`, then a TCP
    /// half-close.
    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Link::Plain(stream) => stream.shutdown(Shutdown::Write),
            Link::Tls(stream, _) => {
                self.close_notify();
                stream.shutdown(Shutdown::Write)
            }
        }
    }

    /// Sends TLS `close_notify`, best effort; nothing on plain TCP.
    fn close_notify(&self) {
        if let Link::Tls(stream, session) = self {
            let mut session = hotsock::sys::lock(session);
            session.send_close_notify();
            let _ = flush_tls(&mut session, stream);
        }
    }
}

/// Writes what the TLS session has to send to `stream`.
fn flush_tls(session: &mut ClientConnection, mut stream: &TcpStream) -> io::Result<()> {
    while session.wants_write() {
        session.write_tls(&mut stream)?;
    }
    Ok(())
}

/// [`show_replies`] over TLS: waits for the socket to be readable without
/// holding the session, then reads and decrypts what came, and shows it.
fn show_tls_replies(
    stream: &TcpStream,
    session: &Mutex<ClientConnection>,
    screen: &Mutex<Screen>,
    events: &Sender<Event>,
) {
    let mut buffer = vec![0; 64 * 1024];
    let last = 'session: loop {
        let mut fds = [libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Err(e) = hotsock::sys::poll(&mut fds, None) {
            break Event::Closed(Some(e));
        }
        let mut plaintext = Vec::new();
        let mut closed = None;
        {
            let mut session = hotsock::sys::lock(session);
            let mut socket = stream;
            match session.read_tls(&mut socket) {
                Ok(0) => closed = Some(None),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_gone(&e) => closed = Some(None),
                Err(e) => break Event::Closed(Some(e)),
            }
            if let Err(e) = session.process_new_packets() {
                // Tell the server why, as TLS asks.
                let _ = flush_tls(&mut session, stream);
                break 'session Event::Closed(Some(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
            loop {
                match session.reader().read(&mut buffer) {
                    Ok(0) => {
                        closed = Some(None); // close_notify
                        break;
                    }
                    Ok(n) => plaintext.extend_from_slice(&buffer[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // The server closed without close_notify: closed all the same.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        closed = Some(None);
                        break;
                    }
                    Err(e) => break 'session Event::Closed(Some(e)),
                }
            }
            let _ = flush_tls(&mut session, stream);
        }
        if !plaintext.is_empty() {
            let at = Instant::now();
            if let Err(e) = lock(screen).show(&plaintext) {
                break Event::OutputError(e);
            }
            if events.send(Event::Received(at)).is_err() {
                return; // the session is over
            }
        }
        if let Some(cause) = closed {
            break Event::Closed(cause);
        }
    };
    let _ = events.send(last);
}

/// What the main thread hears from the other two.
enum Event {
    /// A line from stdin, without its line ending.
    Line(Vec<u8>),
    /// Stdin has ended.
    InputEnd,
    /// Stdin could not be read.
    InputError(io::Error),
    /// The server sent something, now on stdout; read at that instant.
    Received(Instant),
    /// What the server sent could not be written to stdout.
    OutputError(io::Error),
    /// The server closed the connection (`None`), or it broke.
    Closed(Option<io::Error>),
}

/// Copies what the server sends to the screen as it arrives, until the
/// connection ends.
fn show_replies(mut stream: TcpStream, screen: &Mutex<Screen>, events: &Sender<Event>) {
    let mut buffer = vec![0; 64 * 1024];
    let last = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break Event::Closed(None),
            Ok(n) => {
                let at = Instant::now();
                if let Err(e) = lock(screen).show(&buffer[..n]) {
                    break Event::OutputError(e);
                }
                if events.send(Event::Received(at)).is_err() {
                    return; // the session is over
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A server that closes with data unread gets a reset: closed all the same.
            Err(e) if is_gone(&e) => break Event::Closed(None),
            Err(e) => break Event::Closed(Some(e)),
        }
    };
    let _ = events.send(last);
}

/// Reads stdin line by line (bytes, UTF-8 or not) for the main thread.
fn read_lines(events: &Sender<Event>) {
    let mut stdin = io::stdin().lock();
    loop {
        let mut line = Vec::new();
        let event = match stdin.read_until(b'\n', &mut line) {
            Ok(0) => Event::InputEnd,
            Ok(_) => {
                if line.ends_with(b"\n") {
                    line.pop();
                    if line.ends_with(b"\r") {
                        line.pop();
                    }
                }
                Event::Line(line)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Event::InputError(e),
        };
        let more = matches!(event, Event::Line(_));
        if events.send(event).is_err() || !more {
            return;
        }
    }
}

/// Whether a socket error means the server has gone away.
fn is_gone(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// How the conversation part of a session ended.
enum Ended {
    /// `quit`, or the end of the input.
    ByClient,
    /// The server closed the connection (`None`), or it broke.
    ByServer(Option<io::Error>),
    /// The server closed the connection once the input had ended and every
    /// line was sent: the usual end of a script, which needs no comment.
    AfterInput,
    /// A line could not be sent: the server has gone.
    SendFailed,
}

/// One connection, from the main thread's side.
struct Session<'a> {
    args: &'a ClientArgs,
    stream: Link,
    screen: Arc<Mutex<Screen>>,
    inbox: Receiver<Event>,
    /// Stdin is a terminal: a person is typing.
    interactive: bool,
    /// Lines read but not sent yet: each waits for the reply to the one before.
    pending: VecDeque<Vec<u8>>,
    /// When the last line was sent, taken just before sending it.
    last_sent: Option<Instant>,
    /// When the server last sent something.
    last_received: Option<Instant>,
    /// The `--newline` hint has been given.
    hinted: bool,
}

impl Session<'_> {
    fn run(mut self) -> Result<()> {
        let closed = match self.talk()? {
            Ended::ByClient => {
                // Say we are done sending, and let the server answer the last
                // lines and close: nothing is lost, and neither side sees a reset.
                let _ = self.stream.shutdown_write();
                self.drain()?;
                None
            }
            Ended::ByServer(cause) => Some(cause),
            Ended::AfterInput => None,
            Ended::SendFailed => {
                // Show what the server said before it went.
                self.drain()?;
                Some(None)
            }
        };
        if closed.is_some() {
            self.stream.close_notify();
        }
        self.finish_screen()?;
        match closed {
            None if self.unanswered() && !self.hinted => {
                self.say(&format!("no reply to the last line: {NEWLINE_HINT}"))?;
            }
            None => {}
            Some(None) => self.say("connection closed by the server")?,
            Some(Some(e)) => return Err(e).context("the connection to the server broke"),
        }
        Ok(())
    }

    /// Sends the lines, each once the reply to the one before has arrived,
    /// until `quit`, the end of the input, or the server closing.
    fn talk(&mut self) -> Result<Ended> {
        let mut input_ended = false;
        loop {
            let now = Instant::now();
            while !self.awaiting_reply(now)
                && let Some(line) = self.pending.pop_front()
            {
                if let Some(ended) = self.send_line(line)? {
                    return Ok(ended);
                }
            }
            if input_ended && self.pending.is_empty() && !self.awaiting_reply(now) {
                return Ok(Ended::ByClient);
            }
            if self.interactive
                && !self.hinted
                && self.unanswered()
                && self.last_sent.is_some_and(|sent| now >= sent + HINT_AFTER)
            {
                self.hinted = true;
                self.say(&format!("no reply yet: {NEWLINE_HINT}"))?;
            }
            self.tidy_screen(now, true)?;

            match self.next_event(self.deadline(now)) {
                None => {} // a deadline passed: look again
                Some(Event::Line(line)) => {
                    if self.interactive {
                        self.screen().typed();
                    }
                    self.pending.push_back(line);
                }
                Some(Event::InputEnd) => input_ended = true,
                Some(Event::InputError(e)) => return Err(e).context("cannot read stdin"),
                Some(Event::Received(at)) => self.last_received = Some(at),
                Some(Event::OutputError(e)) => return Err(e).context("cannot write to stdout"),
                Some(Event::Closed(None)) if input_ended && self.pending.is_empty() => {
                    return Ok(Ended::AfterInput);
                }
                Some(Event::Closed(cause)) => return Ok(Ended::ByServer(cause)),
            }
        }
    }

    /// Shows what the server still sends until it closes or has been quiet
    /// for `--wait`; `--timeout` at most.
    fn drain(&mut self) -> Result<()> {
        let started = Instant::now();
        let give_up = started + *self.args.timeout;
        loop {
            let now = Instant::now();
            self.tidy_screen(now, false)?;
            let quiet_from = self.last_received.map_or(started, |at| at.max(started));
            let quiet_until = quiet_from + *self.args.wait;
            if now >= quiet_until {
                return Ok(());
            }
            if now >= give_up {
                return self.say(&format!(
                    "stopped waiting after {} (--timeout): the server was still sending",
                    self.args.timeout
                ));
            }
            let settled = self.last_received.map(|at| at + REPLY_SETTLE);
            let deadline = [Some(quiet_until), Some(give_up), settled]
                .into_iter()
                .flatten()
                .filter(|&at| at > now)
                .min();
            match self.next_event(deadline) {
                Some(Event::Received(at)) => self.last_received = Some(at),
                Some(Event::Closed(_)) => return Ok(()),
                Some(Event::OutputError(e)) => return Err(e).context("cannot write to stdout"),
                // Too late for more input.
                _ => {}
            }
        }
    }

    /// Sends one line as the options say; `Some` when the session ends here.
    fn send_line(&mut self, mut line: Vec<u8>) -> Result<Option<Ended>> {
        if String::from_utf8_lossy(&line)
            .trim()
            .eq_ignore_ascii_case("quit")
        {
            if let Some(message) = &self.args.quit_message
                && let Some(ended) = self.send(message.as_bytes())?
            {
                return Ok(Some(ended));
            }
            return Ok(Some(Ended::ByClient));
        }
        if line.is_empty() && !self.args.newline {
            return Ok(None); // sending nothing would wait for a reply that never comes
        }
        if self.args.newline {
            line.push(b'\n');
        } else {
            // Each reply to a message on a line of its own, as the classic client prints it.
            self.screen().end_line().context("cannot write to stdout")?;
        }
        self.last_sent = Some(Instant::now());
        self.send(&line)
    }

    /// Sends `bytes`; `Some` when the server has gone.
    fn send(&mut self, bytes: &[u8]) -> Result<Option<Ended>> {
        match self.stream.write_all(bytes) {
            Ok(()) => Ok(None),
            Err(e) if is_gone(&e) => Ok(Some(Ended::SendFailed)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                bail!(
                    "the server has taken nothing for {} (see --timeout): it does not read",
                    self.args.timeout
                )
            }
            Err(e) => Err(e).context("cannot send to the server"),
        }
    }

    /// Whether the last line sent still waits for its reply: nothing came
    /// back yet, or it is still arriving. The next line waits for it, so that
    /// replies come in order and two lines never arrive as one message.
    fn awaiting_reply(&self, now: Instant) -> bool {
        let Some(sent) = self.last_sent else {
            return false;
        };
        match self.last_received.filter(|&at| at > sent) {
            Some(at) => now < at + REPLY_SETTLE,
            None => now < sent + *self.args.wait,
        }
    }

    /// Whether the last line went without a newline and nothing has come
    /// back since: what a line-based server does.
    fn unanswered(&self) -> bool {
        !self.args.newline
            && self
                .last_sent
                .is_some_and(|sent| self.last_received.is_none_or(|at| at < sent))
    }

    /// When the main thread next has something to do if nothing happens.
    fn deadline(&self, now: Instant) -> Option<Instant> {
        let settled = self.last_received.map(|at| at + REPLY_SETTLE);
        let waited = self.last_sent.map(|sent| sent + *self.args.wait);
        let hint = self
            .last_sent
            .filter(|_| self.interactive && !self.hinted)
            .map(|sent| sent + HINT_AFTER);
        [settled, waited, hint]
            .into_iter()
            .flatten()
            .filter(|&at| at > now)
            .min()
    }

    /// The next event, or `None` once `deadline` has passed.
    fn next_event(&self, deadline: Option<Instant>) -> Option<Event> {
        let received = match deadline {
            None => self.inbox.recv().ok(),
            Some(at) => match self
                .inbox
                .recv_timeout(at.saturating_duration_since(Instant::now()))
            {
                Ok(event) => Some(event),
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => None,
            },
        };
        // Both threads gone: the one that shows replies saw the end.
        Some(received.unwrap_or(Event::Closed(None)))
    }

    /// Once the server has been quiet for a moment: ends the line of a reply
    /// to a message, and prompts again if `may_prompt`.
    fn tidy_screen(&self, now: Instant, may_prompt: bool) -> Result<()> {
        if self.last_received.is_some_and(|at| now < at + REPLY_SETTLE) {
            return Ok(()); // still arriving
        }
        let mut screen = self.screen();
        if !self.args.newline {
            screen.end_line().context("cannot write to stdout")?;
        }
        if may_prompt && !self.awaiting_reply(now) {
            screen.prompt().context("cannot write to stdout")?;
        }
        Ok(())
    }

    /// Leaves the screen ready for the shell: no prompt, no half line.
    fn finish_screen(&self) -> Result<()> {
        let mut screen = self.screen();
        screen.erase_prompt().context("cannot write to stdout")?;
        if !self.args.newline || screen.terminal {
            screen.end_line().context("cannot write to stdout")?;
        }
        Ok(())
    }

    /// Tells the user `message` on stderr, on a line of its own.
    fn say(&self, message: &str) -> Result<()> {
        let mut screen = self.screen();
        screen.erase_prompt().context("cannot write to stdout")?;
        if screen.terminal {
            screen.end_line().context("cannot write to stdout")?;
        }
        // Nothing better to do if stderr is gone.
        let _ = writeln!(io::stderr().lock(), "{message}");
        Ok(())
    }

    fn screen(&self) -> MutexGuard<'_, Screen> {
        lock(&self.screen)
    }
}

/// The screen, locked: a thread that panicked while holding it left nothing
/// half done that matters.
fn lock(screen: &Mutex<Screen>) -> MutexGuard<'_, Screen> {
    screen.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stdout, shared by what the server sends and the prompt.
struct Screen {
    /// A person types on a terminal and reads on one: prompt.
    prompting: bool,
    /// Stdout is a terminal.
    terminal: bool,
    /// The prompt is the last thing on the screen.
    prompt_shown: bool,
    /// What the server sent last did not end its line.
    line_open: bool,
}

impl Screen {
    /// Shows what the server sent, in place of the prompt if it is there.
    fn show(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.erase_prompt()?;
        let mut out = io::stdout().lock();
        out.write_all(bytes)?;
        out.flush()?;
        self.line_open = !bytes.ends_with(b"\n");
        Ok(())
    }

    /// Prompts for the next line, on a line of its own, unless it is there.
    fn prompt(&mut self) -> io::Result<()> {
        if !self.prompting || self.prompt_shown {
            return Ok(());
        }
        self.end_line()?;
        let mut out = io::stdout().lock();
        out.write_all(PROMPT)?;
        out.flush()?;
        self.prompt_shown = true;
        Ok(())
    }

    /// A line was typed: the terminal has moved to the next line.
    fn typed(&mut self) {
        self.prompt_shown = false;
        self.line_open = false;
    }

    /// Ends the line the server left open.
    fn end_line(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.line_open) {
            let mut out = io::stdout().lock();
            out.write_all(b"\n")?;
            out.flush()?;
        }
        Ok(())
    }

    /// Takes the prompt away, if it is there.
    fn erase_prompt(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.prompt_shown) {
            let mut out = io::stdout().lock();
            out.write_all(ERASE_LINE)?;
            out.flush()?;
        }
        Ok(())
    }
}
