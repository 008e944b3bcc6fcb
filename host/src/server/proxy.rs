//! The PROXY protocol (HAProxy's, v1 text and v2 binary): a load balancer in
//! front says who its client is, in a header before the client's bytes, so
//! that the handler's `peer-addr()`, the logs and `--max-connections-per-ip`
//! see the real client instead of the balancer.
//!
//! Only trusted sources may say so (`--proxy-from`, loopback by default):
//! anyone else could claim any address. The header is read exactly, byte
//! for byte, so the client's first bytes stay in the socket for the handler;
//! and under a deadline, so a source that connects and says nothing holds a
//! connection slot for no longer than [`HEADER_TIMEOUT`].

use std::fmt;
use std::io::{self, Read as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use ppp::{v1, v2};

/// Longest a trusted source may take to send the header. A load balancer
/// sends it with the connection, at once; this only bounds a stuck or
/// hostile one.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest v1 header, `PROXY TCP6 ...\r\n`, by the specification.
const V1_MAX: usize = 107;

/// The first 12 bytes of every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The fixed part of a v2 header: signature, version and command, family,
/// and the length of what follows.
const V2_FIXED: usize = 16;

/// The most address and TLV bytes a v2 header may carry here: the addresses
/// take at most 216 (Unix), HAProxy's TLVs a few hundred more.
const V2_MAX_REST: usize = 4096;

/// This machine's loopback ranges, checked when compiled.
const LOOPBACK: [IpNet; 2] = [
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
    IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
];

/// Whether a listener expects the PROXY protocol, and from whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Sources whose headers are believed (`--proxy-from`).
    pub trusted: Vec<IpNet>,
}

impl Proxy {
    /// The default trusted sources: this machine's loopback addresses, where
    /// a load balancer on the same box connects from.
    pub fn loopback() -> Vec<IpNet> {
        LOOPBACK.to_vec()
    }

    /// Whether `source` may send a header. An IPv4 client of a dual-stack
    /// listener arrives as `::ffff:a.b.c.d`, and is matched as `a.b.c.d`.
    pub fn trusts(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.trusted.iter().any(|net| net.contains(&source))
    }
}

/// Who the header says the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A relayed client, at this address.
    Client(SocketAddr),
    /// The balancer's own connection (a health check: v2 `LOCAL`, or v1
    /// `UNKNOWN`), or a client without an IP address: the connection is
    /// taken as coming from the balancer itself.
    Balancer,
}

/// Why a connection's header could not be read.
#[derive(Debug)]
pub enum HeaderError {
    /// Nothing, or not all of it, arrived within [`HEADER_TIMEOUT`].
    Timeout,
    /// The source closed the connection first.
    Closed,
    /// The connection does not start with a PROXY protocol header.
    Missing,
    /// It starts like one, but is not a valid one.
    Invalid(String),
    /// Reading failed.
    Io(io::Error),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Timeout => write!(f, "no PROXY header within {HEADER_TIMEOUT:?}"),
            HeaderError::Closed => write!(f, "closed before sending a whole PROXY header"),
            HeaderError::Missing => write!(
                f,
                "no PROXY header: the listener expects one first (--proxy-protocol); is the \
                 client connecting directly instead of through the load balancer?"
            ),
            HeaderError::Invalid(why) => write!(f, "invalid PROXY header: {why}"),
            HeaderError::Io(e) => write!(f, "reading the PROXY header failed: {e}"),
        }
    }
}

impl From<io::Error> for HeaderError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HeaderError::Timeout,
            io::ErrorKind::UnexpectedEof => HeaderError::Closed,
            _ => HeaderError::Io(e),
        }
    }
}

/// Reads the PROXY protocol header at the start of `stream` within
/// `timeout`, and nothing after it. The stream must be blocking; its read
/// timeout is cleared again before this returns.
pub fn read_header(stream: &TcpStream, timeout: Duration) -> Result<Origin, HeaderError> {
    let deadline = Instant::now() + timeout;
    let read = read_exactly(stream, deadline);
    // The handler's reads have no socket timeout: the watchdog enforces
    // --idle-timeout. Failing to clear it would only cut reads short.
    let _ = stream.set_read_timeout(None);
    let header = read?;
    parse(&header)
}

/// Reads exactly one header's bytes. Both versions are at least 15 bytes
/// long and start with 5 bytes that tell them apart, so reading those 5
/// never takes a byte of the client's. The first byte alone tells a client
/// that connected directly, which is closed without waiting for more.
fn read_exactly(stream: &TcpStream, deadline: Instant) -> Result<Vec<u8>, HeaderError> {
    let mut header = vec![0; 5];
    read_exact(stream, &mut header[..1], deadline)?;
    if header[0] != b'P' && header[0] != V2_SIGNATURE[0] {
        return Err(HeaderError::Missing);
    }
    read_exact(stream, &mut header[1..], deadline)?;
    if header == b"PROXY" {
        read_v1_line(stream, &mut header, deadline)?;
    } else if header[..] == V2_SIGNATURE[..5] {
        header.resize(V2_FIXED, 0);
        read_exact(stream, &mut header[5..], deadline)?;
        let rest = usize::from(u16::from_be_bytes([header[14], header[15]]));
        if rest > V2_MAX_REST {
            return Err(HeaderError::Invalid(format!(
                "a v2 header of {rest} bytes of addresses and extensions (at most {V2_MAX_REST})"
            )));
        }
        header.resize(V2_FIXED + rest, 0);
        read_exact(stream, &mut header[V2_FIXED..], deadline)?;
    } else {
        return Err(HeaderError::Missing);
    }
    Ok(header)
}

/// Reads the rest of a v1 header, up to and including its `\n`. The line's
/// length is not known in advance, so it peeks at what has arrived and
/// takes only the bytes up to the line's end.
fn read_v1_line(
    stream: &TcpStream,
    header: &mut Vec<u8>,
    deadline: Instant,
) -> Result<(), HeaderError> {
    let mut peeked = [0; V1_MAX];
    loop {
        let room = V1_MAX - header.len();
        if room == 0 {
            return Err(HeaderError::Invalid(format!(
                "a v1 header longer than {V1_MAX} bytes"
            )));
        }
        set_deadline(stream, deadline)?;
        // Blocks until at least one byte is there, like a read.
        let n = stream.peek(&mut peeked[..room])?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let take = match peeked[..n].iter().position(|&b| b == b'\n') {
            Some(end) => end + 1,
            None => n,
        };
        let start = header.len();
        header.resize(start + take, 0);
        read_exact(stream, &mut header[start..], deadline)?;
        if header.ends_with(b"\n") {
            return Ok(());
        }
    }
}

fn read_exact(stream: &TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), HeaderError> {
    let mut filled = 0;
    while filled < buf.len() {
        set_deadline(stream, deadline)?;
        match (&*stream).read(&mut buf[filled..]) {
            Ok(0) => return Err(HeaderError::Closed),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Makes the next read wait no later than `deadline`.
fn set_deadline(stream: &TcpStream, deadline: Instant) -> Result<(), HeaderError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HeaderError::Timeout);
    }
    stream.set_read_timeout(Some(left))?;
    Ok(())
}

/// What a whole header says.
fn parse(header: &[u8]) -> Result<Origin, HeaderError> {
    if header.starts_with(b"PROXY") {
        let parsed =
            v1::Header::try_from(header).map_err(|e| HeaderError::Invalid(e.to_string()))?;
        return Ok(match parsed.addresses {
            v1::Addresses::Tcp4(a) => Origin::Client((a.source_address, a.source_port).into()),
            v1::Addresses::Tcp6(a) => Origin::Client((a.source_address, a.source_port).into()),
            v1::Addresses::Unknown => Origin::Balancer,
        });
    }
    let parsed = v2::Header::try_from(header).map_err(|e| HeaderError::Invalid(e.to_string()))?;
    if parsed.command == v2::Command::Local {
        return Ok(Origin::Balancer);
    }
    Ok(match parsed.addresses {
        v2::Addresses::IPv4(a) => Origin::Client((a.source_address, a.source_port).into()),
        v2::Addresses::IPv6(a) => Origin::Client((a.source_address, a.source_port).into()),
        v2::Addresses::Unix(_) | v2::Addresses::Unspecified => Origin::Balancer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::net::TcpListener;

    /// A connected pair: what the balancer writes, and the server's side.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    /// Sends `bytes`, then reads the header and the rest.
    fn through(bytes: &[u8]) -> (Result<Origin, HeaderError>, Vec<u8>) {
        let (mut client, server) = pair();
        client.write_all(bytes).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let origin = read_header(&server, Duration::from_secs(2));
        let mut rest = Vec::new();
        let _ = (&server).read_to_end(&mut rest);
        (origin, rest)
    }

    fn v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
        v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (source, destination),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn v1_and_v2_give_the_client_and_leave_its_bytes() {
        let (origin, rest) = through(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 50007\r\nhello\n");
        assert_eq!(
            origin.unwrap(),
            Origin::Client("192.0.2.7:40000".parse().unwrap())
        );
        assert_eq!(rest, b"hello\n");

        let (origin, rest) = through(b"PROXY TCP6 2001:db8::1 ::1 40001 50007\r\nPROXY again");
        assert_eq!(
            origin.unwrap(),
            Origin::Client("[2001:db8::1]:40001".parse().unwrap())
        );
        assert_eq!(rest, b"PROXY again");

        let mut bytes = v2(
            "198.51.100.9:1234".parse().unwrap(),
            "127.0.0.1:50007".parse().unwrap(),
        );
        bytes.extend_from_slice(b"\r\n\r\nclient bytes that look like a header");
        let (origin, rest) = through(&bytes);
        assert_eq!(
            origin.unwrap(),
            Origin::Client("198.51.100.9:1234".parse().unwrap())
        );
        assert_eq!(rest, b"\r\n\r\nclient bytes that look like a header");
    }

    #[test]
    fn health_checks_and_unknown_sources_are_the_balancer() {
        let (origin, rest) = through(b"PROXY UNKNOWN\r\nx");
        assert_eq!(origin.unwrap(), Origin::Balancer);
        assert_eq!(rest, b"x");
        let local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(through(&local).0.unwrap(), Origin::Balancer);
    }

    #[test]
    fn anything_else_is_refused() {
        assert!(matches!(
            through(b"hello there\n").0,
            Err(HeaderError::Missing)
        ));
        assert!(matches!(
            through(b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n").0,
            Err(HeaderError::Invalid(_))
        ));
        assert!(matches!(
            through(b"PROXY TCP4 1.2.3.4").0,
            Err(HeaderError::Closed)
        ));
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(matches!(
            through(long.as_bytes()).0,
            Err(HeaderError::Invalid(_))
        ));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(through(&huge).0, Err(HeaderError::Invalid(_))));
    }

    #[test]
    fn a_silent_source_times_out() {
        let (_client, server) = pair();
        let started = Instant::now();
        let origin = read_header(&server, Duration::from_millis(200));
        assert!(matches!(origin, Err(HeaderError::Timeout)), "{origin:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_header_in_pieces_is_put_together() {
        let (mut client, server) = pair();
        let reader = std::thread::spawn(move || {
            let origin = read_header(&server, Duration::from_secs(5));
            let mut rest = [0; 2];
            (&server).read_exact(&mut rest).unwrap();
            (origin, rest)
        });
        for piece in [
            &b"PRO"[..],
            b"XY TCP4 10.1.2.3 ",
            b"127.0.0.1 5 6\r",
            b"\nok",
        ] {
            client.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let (origin, rest) = reader.join().unwrap();
        assert_eq!(
            origin.unwrap(),
            Origin::Client("10.1.2.3:5".parse().unwrap())
        );
        assert_eq!(&rest, b"ok");
    }

    #[test]
    fn only_trusted_sources_and_mapped_v4_matches() {
        let proxy = Proxy {
            trusted: Proxy::loopback(),
        };
        assert!(proxy.trusts("127.0.0.9".parse().unwrap()));
        assert!(proxy.trusts("::1".parse().unwrap()));
        assert!(proxy.trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!proxy.trusts("10.0.0.1".parse().unwrap()));
        let lan = Proxy {
            trusted: vec!["10.0.0.0/8".parse().unwrap()],
        };
        assert!(lan.trusts("10.200.0.1".parse().unwrap()));
        assert!(!lan.trusts("127.0.0.1".parse().unwrap()));
    }
}
