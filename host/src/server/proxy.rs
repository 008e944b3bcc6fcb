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
//!
//! A balancer that terminated TLS says so in a v2 header's extensions
//! (HAProxy's `send-proxy-v2-ssl-cn`): the version, cipher, server name,
//! ALPN protocol and the client certificate's CN become the connection's
//! [`TlsInfo`]; the CN counts as the client's subject only when the
//! balancer verified its certificate.

use std::fmt::{self, Write as _};
use std::io::{self, Read as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use log::warn;
use ppp::{v1, v2};

use crate::runtime::TlsInfo;
use crate::sys;

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

/// The v2 extensions (TLVs) read here, by the specification's names
/// (HAProxy's doc/proxy-protocol.txt, section 2.2).
const PP2_TYPE_ALPN: u8 = v2::Type::ALPN as u8;
const PP2_TYPE_AUTHORITY: u8 = v2::Type::Authority as u8;
const PP2_TYPE_SSL: u8 = v2::Type::SSL as u8;
/// Inside PP2_TYPE_SSL, after its `client` byte and `verify` word.
const PP2_SUBTYPE_SSL_VERSION: u8 = v2::Type::SSLVersion as u8;
const PP2_SUBTYPE_SSL_CN: u8 = v2::Type::SSLCommonName as u8;
const PP2_SUBTYPE_SSL_CIPHER: u8 = v2::Type::SSLCipher as u8;

/// PP2_TYPE_SSL's `client` bits: the client connected over TLS; it
/// presented a certificate on this connection; on this TLS session (an
/// earlier connection, resumed).
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// Least time between two log lines about malformed TLS extensions: a
/// misconfigured balancer sends them on every connection.
const MALFORMED_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// When a malformed header was last logged, and how many there have been.
static MALFORMED_LOGGED: Mutex<Option<Instant>> = Mutex::new(None);
static MALFORMED: AtomicU64 = AtomicU64::new(0);

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

/// What a trusted source's header says about its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// Who the client is.
    pub origin: Origin,
    /// The TLS the balancer terminated for it, if it says so (v2 only).
    pub tls: Option<TlsInfo>,
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
/// timeout is cleared again before this returns. TLS extensions that
/// cannot be read are logged (at most once a second) and give no
/// [`TlsInfo`]: the client is served, as one without TLS.
pub fn read_header(stream: &TcpStream, timeout: Duration) -> Result<Relayed, HeaderError> {
    let deadline = Instant::now() + timeout;
    let read = read_exactly(stream, deadline);
    // The handler's reads have no socket timeout: the watchdog enforces
    // --idle-timeout. Failing to clear it would only cut reads short.
    let _ = stream.set_read_timeout(None);
    let header = read?;
    let (origin, tls) = parse(&header)?;
    let tls = tls.unwrap_or_else(|why| {
        log_malformed(stream, &why);
        None
    });
    Ok(Relayed { origin, tls })
}

/// Says that a header's TLS extensions were ignored, at most once per
/// [`MALFORMED_LOG_INTERVAL`].
fn log_malformed(stream: &TcpStream, why: &str) {
    let count = MALFORMED.fetch_add(1, Ordering::Relaxed) + 1;
    {
        let mut last = sys::lock(&MALFORMED_LOGGED);
        if last.is_some_and(|at| at.elapsed() < MALFORMED_LOG_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
    }
    let source = match stream.peer_addr() {
        Ok(addr) => addr.to_string(),
        Err(_) => "a balancer".into(),
    };
    warn!(
        "conn from {source}: the PROXY header's TLS extensions are malformed ({why}): serving \
         the client without TLS information; {count} such headers so far"
    );
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

/// What a whole header says: the client, and its TLS (`Err` saying why
/// when the extensions are malformed).
fn parse(header: &[u8]) -> Result<(Origin, Result<Option<TlsInfo>, String>), HeaderError> {
    if header.starts_with(b"PROXY") {
        let parsed =
            v1::Header::try_from(header).map_err(|e| HeaderError::Invalid(e.to_string()))?;
        let origin = match parsed.addresses {
            v1::Addresses::Tcp4(a) => Origin::Client((a.source_address, a.source_port).into()),
            v1::Addresses::Tcp6(a) => Origin::Client((a.source_address, a.source_port).into()),
            v1::Addresses::Unknown => Origin::Balancer,
        };
        return Ok((origin, Ok(None)));
    }
    let parsed = v2::Header::try_from(header).map_err(|e| HeaderError::Invalid(e.to_string()))?;
    // A health check is the balancer's own connection, not a client's.
    if parsed.command == v2::Command::Local {
        return Ok((Origin::Balancer, Ok(None)));
    }
    let origin = match parsed.addresses {
        v2::Addresses::IPv4(a) => Origin::Client((a.source_address, a.source_port).into()),
        v2::Addresses::IPv6(a) => Origin::Client((a.source_address, a.source_port).into()),
        v2::Addresses::Unix(_) | v2::Addresses::Unspecified => Origin::Balancer,
    };
    Ok((origin, tls_info(&parsed)))
}

/// The TLS a balancer terminated, from a v2 header's extensions: `None`
/// unless a PP2_TYPE_SSL extension has PP2_CLIENT_SSL set. Every extension
/// read here is checked whole before any is used, so a malformed header
/// gives an error, never part of its contents.
fn tls_info(header: &v2::Header<'_>) -> Result<Option<TlsInfo>, String> {
    let (mut ssl, mut alpn, mut authority) = (None, None, None);
    for tlv in header.tlvs() {
        let tlv = tlv.map_err(|e| format!("extensions: {e}"))?;
        let slot = match tlv.kind {
            PP2_TYPE_SSL => &mut ssl,
            PP2_TYPE_ALPN => &mut alpn,
            PP2_TYPE_AUTHORITY => &mut authority,
            _ => continue,
        };
        if slot.replace(tlv.value).is_some() {
            return Err(format!("extension {:#04x} twice", tlv.kind));
        }
    }
    let Some(ssl) = ssl else {
        return Ok(None);
    };
    let [client, w0, w1, w2, w3, subs @ ..] = &ssl[..] else {
        return Err(format!(
            "an SSL extension of {} bytes, shorter than its client and verify fields",
            ssl.len()
        ));
    };
    let verify = u32::from_be_bytes([*w0, *w1, *w2, *w3]);
    let mut rest: &[u8] = subs;
    let (mut version, mut cn, mut cipher) = (None, None, None);
    while !rest.is_empty() {
        let [kind, high, low, after @ ..] = rest else {
            return Err(format!(
                "{} stray bytes after the SSL sub-extensions",
                rest.len()
            ));
        };
        let length = usize::from(u16::from_be_bytes([*high, *low]));
        if after.len() < length {
            return Err(format!(
                "SSL sub-extension {kind:#04x} of {length} bytes, with only {} left",
                after.len()
            ));
        }
        let (value, next) = after.split_at(length);
        rest = next;
        let slot = match *kind {
            PP2_SUBTYPE_SSL_VERSION => &mut version,
            PP2_SUBTYPE_SSL_CN => &mut cn,
            PP2_SUBTYPE_SSL_CIPHER => &mut cipher,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(format!("SSL sub-extension {kind:#04x} twice"));
        }
    }
    if client & PP2_CLIENT_SSL == 0 {
        return Ok(None);
    }
    let text = |what: &str, bytes: Option<&[u8]>| -> Result<Option<String>, String> {
        bytes
            .map(|bytes| match std::str::from_utf8(bytes) {
                Ok(text) => Ok(text.to_owned()),
                Err(_) => Err(format!("the {what} is not UTF-8")),
            })
            .transpose()
    };
    // `verify` is 0 when the client presented a certificate and the
    // balancer verified it; HAProxy's `verify optional` lets a client in
    // without one, and `crt-ignore-err` with one it could not verify.
    let presented = client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS) != 0;
    let peer_subject = cn
        .filter(|_| presented && verify == 0)
        .map(|cn| format!("CN={}", dn_value(cn)));
    Ok(Some(TlsInfo {
        version: text("TLS version", version)?.unwrap_or_default(),
        cipher: text("cipher", cipher)?.unwrap_or_default(),
        server_name: text("server name", authority.as_deref())?,
        alpn: text("ALPN protocol", alpn.as_deref())?,
        peer_certificates: Vec::new(),
        peer_subject,
    }))
}

/// `value` as an RFC 4514 attribute value: the characters that would end
/// it or start another attribute escaped with a backslash, and control
/// characters and bytes that are not UTF-8 as `\XX` (hex), so that a
/// certificate's CN can neither add attributes to the subject nor lines to
/// the log.
pub(crate) fn dn_value(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.len().saturating_sub(1);
    let mut at = 0;
    for chunk in value.utf8_chunks() {
        for (i, c) in chunk.valid().char_indices() {
            match c {
                ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                    out.push('\\');
                    out.push(c);
                }
                '#' if at + i == 0 => out.push_str("\\#"),
                ' ' if at + i == 0 || at + i == last => out.push_str("\\ "),
                c if c.is_control() => {
                    for byte in c.encode_utf8(&mut [0; 4]).bytes() {
                        let _ = write!(out, "\\{byte:02X}");
                    }
                }
                c => out.push(c),
            }
        }
        at += chunk.valid().len();
        for byte in chunk.invalid() {
            let _ = write!(out, "\\{byte:02X}");
            at += 1;
        }
    }
    out
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
        let origin = read_header(&server, Duration::from_secs(2)).map(|r| r.origin);
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
            let origin = read_header(&server, Duration::from_secs(5)).map(|r| r.origin);
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

    /// A v2 header from 198.51.100.9 with the extensions `tlvs`.
    fn v2_with(tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut builder = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "198.51.100.9:1234".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:50007".parse::<SocketAddr>().unwrap(),
            ),
        );
        for (kind, value) in tlvs {
            builder = builder.write_tlv(*kind, value).unwrap();
        }
        builder.build().unwrap()
    }

    /// A PP2_TYPE_SSL value: `client` bits, `verify`, and sub-extensions.
    fn ssl(client: u8, verify: u32, subs: &[(u8, &[u8])]) -> (u8, Vec<u8>) {
        let mut value = vec![client];
        value.extend_from_slice(&verify.to_be_bytes());
        for (kind, sub) in subs {
            value.push(*kind);
            value.extend_from_slice(&(sub.len() as u16).to_be_bytes());
            value.extend_from_slice(sub);
        }
        (PP2_TYPE_SSL, value)
    }

    /// What HAProxy's `send-proxy-v2-ssl-cn` sends for a client that
    /// presented a certificate it verified, with a CN of `cn`.
    fn haproxy(client: u8, verify: u32, cn: Option<&[u8]>) -> Vec<u8> {
        let mut subs: Vec<(u8, &[u8])> = vec![
            (PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3"),
            (PP2_SUBTYPE_SSL_CIPHER, b"TLS_AES_256_GCM_SHA384"),
            (0x24, b"ECDSA-SHA256"),
            (0x25, b"EC256"),
        ];
        subs.extend(cn.map(|cn| (PP2_SUBTYPE_SSL_CN, cn)));
        v2_with(&[
            (PP2_TYPE_ALPN, b"hotsock/1".to_vec()),
            (PP2_TYPE_AUTHORITY, b"localhost".to_vec()),
            ssl(client, verify, &subs),
            (0x04, vec![0; 3]),
        ])
    }

    fn tls_of(header: &[u8]) -> Result<Option<TlsInfo>, String> {
        let (origin, tls) = parse(header).unwrap();
        assert_eq!(origin, Origin::Client("198.51.100.9:1234".parse().unwrap()));
        tls
    }

    const VERIFIED: u8 = PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS;

    #[test]
    fn a_balancer_that_verified_a_client_certificate_gives_its_subject() {
        let tls = tls_of(&haproxy(VERIFIED, 0, Some(b"device-42"))).unwrap();
        assert_eq!(
            tls,
            Some(TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "TLS_AES_256_GCM_SHA384".into(),
                server_name: Some("localhost".into()),
                alpn: Some("hotsock/1".into()),
                peer_certificates: Vec::new(),
                peer_subject: Some("CN=device-42".into()),
            })
        );
        // A resumed session: the certificate was presented on an earlier
        // connection of it.
        let resumed = haproxy(PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS, 0, Some(b"device-42"));
        let tls = tls_of(&resumed).unwrap().unwrap();
        assert_eq!(tls.peer_subject.as_deref(), Some("CN=device-42"));
    }

    #[test]
    fn no_subject_without_a_verified_certificate() {
        // No CN sent (`send-proxy-v2-ssl`), or none to send.
        let tls = tls_of(&haproxy(VERIFIED, 0, None)).unwrap().unwrap();
        assert_eq!(tls.version, "TLSv1.3");
        assert_eq!(tls.peer_subject, None);
        // A certificate the balancer could not verify (`crt-ignore-err`).
        let tls = tls_of(&haproxy(VERIFIED, 20, Some(b"device-42")))
            .unwrap()
            .unwrap();
        assert_eq!(tls.peer_subject, None);
        // A CN, but no certificate said to be presented.
        let tls = tls_of(&haproxy(PP2_CLIENT_SSL, 0, Some(b"device-42")))
            .unwrap()
            .unwrap();
        assert_eq!(tls.peer_subject, None);
        assert_eq!(tls.server_name.as_deref(), Some("localhost"));
    }

    #[test]
    fn no_tls_unless_the_header_says_the_client_used_it() {
        // The SSL extension without PP2_CLIENT_SSL: a plain connection.
        assert_eq!(
            tls_of(&haproxy(PP2_CLIENT_CERT_CONN, 0, Some(b"x"))),
            Ok(None)
        );
        // No SSL extension; only an authority.
        let plain = v2_with(&[(PP2_TYPE_AUTHORITY, b"localhost".to_vec())]);
        assert_eq!(tls_of(&plain), Ok(None));
        // v1 has no extensions.
        let (_, tls) = parse(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 50007\r\n").unwrap();
        assert_eq!(tls, Ok(None));
        // Only version and cipher: empty, not missing.
        let bare = v2_with(&[ssl(PP2_CLIENT_SSL, 0, &[])]);
        let tls = tls_of(&bare).unwrap().unwrap();
        assert_eq!((tls.version.as_str(), tls.cipher.as_str()), ("", ""));
        assert_eq!((tls.server_name, tls.alpn), (None, None));
    }

    #[test]
    fn a_hostile_cn_cannot_add_attributes_or_lines() {
        let subject = |cn: &[u8]| {
            tls_of(&haproxy(VERIFIED, 0, Some(cn)))
                .unwrap()
                .unwrap()
                .peer_subject
                .unwrap()
        };
        assert_eq!(subject(b"x,O=Acme"), "CN=x\\,O=Acme");
        assert_eq!(subject(b"a+b;c<d>e\"\\f"), "CN=a\\+b\\;c\\<d\\>e\\\"\\\\f");
        assert_eq!(subject(b"#1 two "), "CN=\\#1 two\\ ");
        assert_eq!(subject(b" lead"), "CN=\\ lead");
        assert_eq!(subject(b"mid#dle"), "CN=mid#dle");
        assert_eq!(subject(b"line\nbreak\0"), "CN=line\\0Abreak\\00");
        assert_eq!(subject("caf\u{e9}".as_bytes()), "CN=caf\u{e9}");
        assert_eq!(subject(b"bad\xff"), "CN=bad\\FF");
    }

    #[test]
    fn malformed_extensions_give_no_tls_and_no_part_of_it() {
        let truncated_sub = v2_with(&[(
            PP2_TYPE_SSL,
            vec![VERIFIED, 0, 0, 0, 0, PP2_SUBTYPE_SSL_CN, 0, 9, b'x'],
        )]);
        assert!(tls_of(&truncated_sub).unwrap_err().contains("only 1 left"));
        let stray = v2_with(&[(PP2_TYPE_SSL, vec![VERIFIED, 0, 0, 0, 0, 0x21, 0])]);
        assert!(tls_of(&stray).is_err());
        let short = v2_with(&[(PP2_TYPE_SSL, vec![VERIFIED, 0, 0])]);
        assert!(tls_of(&short).is_err());
        let twice = v2_with(&[ssl(VERIFIED, 0, &[]), ssl(VERIFIED, 0, &[])]);
        assert!(tls_of(&twice).is_err());
        let cn_twice = v2_with(&[ssl(
            VERIFIED,
            0,
            &[(PP2_SUBTYPE_SSL_CN, b"a"), (PP2_SUBTYPE_SSL_CN, b"b")],
        )]);
        assert!(tls_of(&cn_twice).is_err());
        let not_utf8 = v2_with(&[ssl(VERIFIED, 0, &[(PP2_SUBTYPE_SSL_VERSION, b"\xff")])]);
        assert!(tls_of(&not_utf8).is_err());
        // The last top-level extension cut short: the header's length
        // covers it, its own length says more.
        let mut cut = haproxy(VERIFIED, 0, Some(b"device-42"));
        let end = cut.len();
        cut[end - 5] = 0x40;
        assert!(tls_of(&cut).is_err());
        // Read from a socket: the client is served, without TLS.
        let (relayed, rest) = through_relayed(&[&cut[..], b"hi"].concat());
        let relayed = relayed.unwrap();
        assert_eq!(relayed.tls, None);
        assert_eq!(
            relayed.origin,
            Origin::Client("198.51.100.9:1234".parse().unwrap())
        );
        assert_eq!(rest, b"hi");
    }

    /// Sends `bytes`, then reads the whole header and the rest.
    fn through_relayed(bytes: &[u8]) -> (Result<Relayed, HeaderError>, Vec<u8>) {
        let (mut client, server) = pair();
        client.write_all(bytes).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let relayed = read_header(&server, Duration::from_secs(2));
        let mut rest = Vec::new();
        let _ = (&server).read_to_end(&mut rest);
        (relayed, rest)
    }
}
