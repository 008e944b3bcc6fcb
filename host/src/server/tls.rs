//! Native TLS on a listener (`--tls-cert`): what the operator asks for
//! ([`TlsSettings`]), the certificates and keys read from PEM files and
//! checked ([`Certificates`]), the rustls `ServerConfig` made of them
//! (certificates chosen by SNI, client certificates verified, ALPN), held
//! in one settings generation as [`Tls`], and the handshake each
//! connection's thread runs ([`Tls::handshake`]) before its handler.
//!
//! Everything is read and checked before anything is installed, so a bad
//! file on a reload leaves the old certificates serving and yields one error
//! that names the file. Errors are strings, as the config file's are: the
//! caller only reports them, it never branches on them.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    Error as TlsError, InconsistentKeys, ProtocolVersion, RootCertStore, ServerConfig,
    ServerConnection,
};
use rustls_pki_types::pem::{Error as PemError, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use x509_parser::objects::{oid_registry, oid2abbrev};

use crate::runtime::TlsInfo;
use crate::server::proxy::dn_value;
use crate::sys;
use crate::wire::Now;

/// Longest a client may take to complete the TLS handshake, by default
/// (`--tls-handshake-timeout`). A real client needs a few round trips; ten
/// seconds covers a slow mobile link, and a client that sends nothing does
/// not hold a connection thread for the whole idle timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate that expires sooner than this after a load or reload is
/// served, with a warning: two weeks leaves time to renew it before clients
/// start failing.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 60 * 60);

/// What a listener's TLS is made of, as the operator wrote it: file names
/// and choices, nothing read yet. [`Certificates::load`] reads and checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate served to clients that send no server name, or one
    /// that no entry of `sni` matches (`--tls-cert`, `--tls-key`).
    pub default: CertFiles,
    /// Further certificates, each served to clients that ask for a name its
    /// pattern matches.
    pub sni: Vec<SniCert>,
    /// PEM file of the certificate authorities that client certificates must
    /// chain to (`--tls-client-ca`).
    pub client_ca: Option<PathBuf>,
    /// Whether clients must, may or may not present a certificate
    /// (`--tls-client-auth`).
    pub client_auth: ClientAuth,
    /// Application protocols offered in ALPN, most preferred first
    /// (`--tls-alpn`, repeatable). Empty: no ALPN.
    pub alpn: Vec<String>,
    /// Longest a client may take to complete the handshake
    /// (`--tls-handshake-timeout`).
    pub handshake_timeout: Duration,
}

impl TlsSettings {
    /// One certificate for every client, with the defaults of issue 23: no
    /// SNI entries, no client certificates, no ALPN, a 10 s handshake.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsSettings {
            default: CertFiles {
                cert: cert.into(),
                key: key.into(),
            },
            sni: Vec::new(),
            client_ca: None,
            client_auth: ClientAuth::Off,
            alpn: Vec::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// A certificate and its private key, as two PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertFiles {
    /// The certificate chain: the server's own certificate first, then the
    /// intermediates that lead to a root clients trust.
    pub cert: PathBuf,
    /// The private key of the first certificate in `cert` (PKCS#8, PKCS#1 or
    /// SEC1).
    pub key: PathBuf,
}

/// A certificate served to clients asking for the names `name` matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    /// An exact host name (`api.example.com`) or a wildcard over one label
    /// (`*.example.com` matches `a.example.com`, not `a.b.example.com` nor
    /// `example.com`), as certificates' own wildcards do. Compared without
    /// regard to case.
    pub name: String,
    /// The certificate and key served for it.
    pub files: CertFiles,
}

/// Whether a listener asks its clients for a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Clients are not asked for a certificate.
    #[default]
    Off,
    /// Clients are asked; one that sends none is served, one that sends a
    /// certificate the client CA did not sign is refused.
    Optional,
    /// Clients without a certificate signed by the client CA are refused.
    Require,
}

impl FromStr for ClientAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(ClientAuth::Off),
            "optional" => Ok(ClientAuth::Optional),
            "require" => Ok(ClientAuth::Require),
            _ => Err(format!(
                "unknown TLS client auth `{s}`: expected off, optional or require"
            )),
        }
    }
}

impl fmt::Display for ClientAuth {
    /// The name `FromStr` and the config file read.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientAuth::Off => "off",
            ClientAuth::Optional => "optional",
            ClientAuth::Require => "require",
        })
    }
}

/// Everything [`TlsSettings`] names, read and checked: each key matches its
/// certificate, each certificate is in date, the client CA parses, the SNI
/// names are well formed. Made by [`Certificates::load`]; turned into what
/// rustls serves by [`Certificates::server_config`].
#[derive(Debug)]
pub struct Certificates {
    /// The crypto provider the keys were loaded with, and that the
    /// `ServerConfig` must use: a key is only usable with its own provider.
    provider: Arc<CryptoProvider>,
    /// The certificates, by the server name clients ask for.
    chooser: Chooser<Arc<CertifiedKey>>,
    /// The authorities client certificates must chain to, when asked for.
    client_roots: Option<Arc<RootCertStore>>,
    client_auth: ClientAuth,
    alpn: Vec<Vec<u8>>,
    expiries: Vec<(String, i64)>,
    warnings: Vec<String>,
}

impl Certificates {
    /// Reads every file `settings` names and checks it, so that nothing
    /// fails later on the accept path or half way through a reload. The
    /// error names the file at fault.
    pub fn load(settings: &TlsSettings) -> Result<Certificates, String> {
        let provider = Arc::new(provider());
        let now = unix_now();
        let mut warnings = Vec::new();
        let mut expiries = Vec::new();
        // A pair named by several entries (one certificate for many names)
        // is read once, and has one expiry.
        let mut pairs: HashMap<CertFiles, Arc<CertifiedKey>> = HashMap::new();
        let mut load = |files: &CertFiles, warnings: &mut Vec<String>| {
            if let Some(key) = pairs.get(files) {
                return Ok::<_, String>(Arc::clone(key));
            }
            let (key, not_after) = load_pair(files, &provider, now, warnings)?;
            let key = Arc::new(key);
            expiries.push((files.cert.display().to_string(), not_after));
            pairs.insert(files.clone(), Arc::clone(&key));
            Ok(key)
        };

        let mut chooser = Chooser::new(load(&settings.default, &mut warnings)?);
        for entry in &settings.sni {
            let pattern = SniPattern::parse(&entry.name)?;
            let key = load(&entry.files, &mut warnings)?;
            if !chooser.insert(&pattern, key) {
                return Err(format!("TLS server name `{}` is given twice", entry.name));
            }
        }

        let client_roots = match &settings.client_ca {
            Some(file) => Some(Arc::new(load_roots(file)?)),
            None => None,
        };
        match (settings.client_auth, &settings.client_ca) {
            (ClientAuth::Optional | ClientAuth::Require, None) => {
                return Err(format!(
                    "TLS client auth `{}` needs the certificate authorities to check client \
                     certificates against: give them with --tls-client-ca FILE",
                    settings.client_auth
                ));
            }
            (ClientAuth::Off, Some(file)) => warnings.push(format!(
                "{}: client certificates are not asked for (TLS client auth is off), so this \
                 client CA is not used",
                file.display()
            )),
            _ => {}
        }

        let alpn = settings
            .alpn
            .iter()
            .map(|protocol| alpn_id(protocol))
            .collect::<Result<Vec<_>, _>>()?;

        Ok(Certificates {
            provider,
            chooser,
            client_roots,
            client_auth: settings.client_auth,
            alpn,
            expiries,
            warnings,
        })
    }

    /// What the caller should log: certificates that expire within
    /// [`EXPIRY_WARNING`], a client CA that is not used.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Each certificate file and when its certificate expires (not-after,
    /// in seconds since the Unix epoch), for the expiry metric.
    pub fn expiries(&self) -> &[(String, i64)] {
        &self.expiries
    }

    /// The rustls configuration serving these certificates: chosen by SNI,
    /// client certificates verified as `client_auth` says, ALPN offered,
    /// TLS 1.2 and 1.3 only, session resumption as rustls does by default
    /// (an in-memory cache of 256 sessions, which TLS 1.3 tickets name). A
    /// reload starts a new cache: clients resume no session across it.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let verifier = self.client_verifier()?;
        // TLS 1.2 stays for older clients; rustls has nothing older.
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SniResolver(self.chooser.clone())));
        config.alpn_protocols = self.alpn.clone();
        Ok(Arc::new(config))
    }

    fn client_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, String> {
        let roots = match (&self.client_roots, self.client_auth) {
            (_, ClientAuth::Off) => return Ok(WebPkiClientVerifier::no_client_auth()),
            (Some(roots), _) => Arc::clone(roots),
            // `load` refuses optional or require without a CA.
            (None, mode) => return Err(format!("TLS client auth `{mode}` without a client CA")),
        };
        let builder =
            WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&self.provider));
        let builder = match self.client_auth {
            ClientAuth::Optional => builder.allow_unauthenticated(),
            _ => builder,
        };
        builder
            .build()
            .map_err(|e| format!("TLS client certificate verifier: {e}"))
    }
}

/// A listener's TLS as loaded: what new connections are served with, in
/// one generation of the listener's settings. A reload (SIGHUP, `--watch`)
/// loads a new one whole and installs it with the next generation, so
/// connections already accepted keep the one they started with.
#[derive(Debug)]
pub struct Tls {
    settings: TlsSettings,
    /// What clients are served with.
    server: Arc<ServerConfig>,
    /// The same without ALPN, for a client that offers only protocols this
    /// listener does not speak: it is served, with no protocol agreed, and
    /// its handler decides, rather than being cut off by a fatal alert.
    without_alpn: Arc<ServerConfig>,
    /// Each certificate file and its not-after, for the expiry metric.
    expiries: Vec<(String, i64)>,
}

impl Tls {
    /// Reads, checks and builds everything `settings` names; the warnings
    /// (a certificate expiring soon, a client CA not used) are the caller's
    /// to log. The error names the file at fault.
    pub fn load(settings: &TlsSettings) -> Result<(Tls, Vec<String>), String> {
        let certificates = Certificates::load(settings)?;
        let server = certificates.server_config()?;
        let mut without_alpn = (*server).clone();
        without_alpn.alpn_protocols.clear();
        let tls = Tls {
            settings: settings.clone(),
            server,
            without_alpn: Arc::new(without_alpn),
            expiries: certificates.expiries,
        };
        Ok((tls, certificates.warnings))
    }

    /// What it was loaded from.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Each certificate file served and when its certificate expires
    /// (not-after, in seconds since the Unix epoch), for the expiry metric.
    pub fn expiries(&self) -> &[(String, i64)] {
        &self.expiries
    }

    /// Longest a client may take to complete the handshake.
    pub fn handshake_timeout(&self) -> Duration {
        self.settings.handshake_timeout
    }

    /// The configuration for a client that offers the ALPN protocols
    /// `offered` (`None`: it uses no ALPN).
    fn config_for<'a>(&self, offered: Option<impl Iterator<Item = &'a [u8]>>) -> Arc<ServerConfig> {
        let ours = &self.server.alpn_protocols;
        let shared = match offered {
            None => true,
            Some(mut offered) => ours.is_empty() || offered.any(|p| ours.iter().any(|o| o == p)),
        };
        Arc::clone(if shared {
            &self.server
        } else {
            &self.without_alpn
        })
    }

    /// Runs the server's side of the handshake on `stream` (blocking, as
    /// accepted), giving up at `deadline`, and returns the session and what
    /// it established. Called on the connection's own thread, after its
    /// PROXY header if any. A failure has sent the client its alert when
    /// there was one to send.
    pub fn handshake(
        &self,
        stream: &TcpStream,
        deadline: Instant,
    ) -> Result<(ServerConnection, TlsInfo), HandshakeError> {
        let fd = stream.as_fd();
        // A TLS client speaks first, with a handshake record (type 22);
        // anything else is a plaintext client on the wrong port.
        wait(fd, libc::POLLIN, deadline)?;
        match sys::peek_byte(fd) {
            Ok(Some(HANDSHAKE_RECORD)) => {}
            Ok(Some(_)) => {
                // Closed with what it sent unread, the socket would reset:
                // read it first, so the client sees a plain end of stream.
                let mut waiting = [0; 4096];
                for _ in 0..16 {
                    if !matches!(sys::recv_now(fd, &mut waiting), Ok(n) if n > 0) {
                        break;
                    }
                }
                return Err(HandshakeError::Plaintext);
            }
            Ok(None) => return Err(HandshakeError::Closed),
            Err(e) => return Err(HandshakeError::Io(e)),
        }
        let mut acceptor = Acceptor::default();
        let accepted = loop {
            match acceptor.read_tls(&mut Now(fd)) {
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(_) => {}
                Err(e) if would_wait(&e) => {}
                Err(e) => return Err(HandshakeError::Io(e)),
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => break accepted,
                Ok(None) => wait(fd, libc::POLLIN, deadline)?,
                Err((error, mut alert)) => {
                    let _ = alert.write(&mut Now(fd));
                    return Err(HandshakeError::Tls(error));
                }
            }
        };
        let config = self.config_for(accepted.client_hello().alpn());
        let mut session = match accepted.into_connection(config) {
            Ok(session) => session,
            Err((error, mut alert)) => {
                let _ = alert.write(&mut Now(fd));
                return Err(HandshakeError::Tls(error));
            }
        };
        loop {
            while session.wants_write() {
                match session.write_tls(&mut Now(fd)) {
                    Ok(_) => {}
                    Err(e) if would_wait(&e) => wait(fd, libc::POLLOUT, deadline)?,
                    Err(e) => return Err(HandshakeError::Io(e)),
                }
            }
            if !session.is_handshaking() {
                break;
            }
            wait(fd, libc::POLLIN, deadline)?;
            match session.read_tls(&mut Now(fd)) {
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(_) => {}
                Err(e) if would_wait(&e) => continue,
                Err(e) => return Err(HandshakeError::Io(e)),
            }
            if let Err(error) = session.process_new_packets() {
                // The alert that says why, if the socket takes it now.
                while session.wants_write() && session.write_tls(&mut Now(fd)).is_ok() {}
                return Err(HandshakeError::Tls(error));
            }
        }
        let info = info(&session);
        Ok((session, info))
    }
}

/// The first byte of a TLS handshake record.
const HANDSHAKE_RECORD: u8 = 22;

/// Why a TLS handshake did not complete.
#[derive(Debug)]
pub enum HandshakeError {
    /// Not complete by the deadline: a client that says nothing, or too
    /// slowly.
    Timeout,
    /// The client's first bytes are not TLS: a plaintext client.
    Plaintext,
    /// The client closed the connection during the handshake.
    Closed,
    /// TLS refused the client, or the client refused us.
    Tls(TlsError),
    /// The socket failed.
    Io(io::Error),
}

impl HandshakeError {
    /// Whether the client's certificate is what failed: none was sent when
    /// one is required, or it does not chain to the client CA.
    pub fn is_client_certificate(&self) -> bool {
        matches!(
            self,
            HandshakeError::Tls(
                TlsError::NoCertificatesPresented | TlsError::InvalidCertificate(_)
            )
        )
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Timeout => write!(f, "TLS handshake not done in time"),
            HandshakeError::Plaintext => {
                write!(f, "the client spoke plaintext to a TLS listener")
            }
            HandshakeError::Closed => write!(f, "the client closed during the TLS handshake"),
            HandshakeError::Tls(TlsError::NoCertificatesPresented) => {
                write!(
                    f,
                    "TLS: the client sent no certificate, and one is required"
                )
            }
            HandshakeError::Tls(TlsError::InvalidCertificate(e)) => {
                write!(f, "TLS: the client's certificate is refused: {e}")
            }
            HandshakeError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            HandshakeError::Io(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

/// Whether `e` only means "not now".
fn would_wait(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Waits for `events` on `fd` until `deadline`.
fn wait(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    deadline: Instant,
) -> Result<(), HandshakeError> {
    let mut fds = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    }];
    let left = deadline.saturating_duration_since(Instant::now());
    match sys::poll(&mut fds, Some(left)) {
        Ok(0) => Err(HandshakeError::Timeout),
        Ok(_) => Ok(()),
        Err(e) => Err(HandshakeError::Io(e)),
    }
}

/// What the handshake of `session` established, as a handler sees it.
fn info(session: &ServerConnection) -> TlsInfo {
    let version = match session.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let cipher = session
        .negotiated_cipher_suite()
        .map(|suite| format!("{:?}", suite.suite()))
        .unwrap_or_default();
    let certificates: Vec<Vec<u8>> = session
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|cert| cert.to_vec())
        .collect();
    // rustls only completes a handshake whose client certificate the
    // verifier accepted: a certificate here is a verified one.
    let peer_subject = certificates.first().and_then(|leaf| subject(leaf));
    TlsInfo {
        version,
        cipher,
        server_name: session.server_name().map(str::to_string),
        alpn: session
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        peer_certificates: certificates,
        peer_subject,
    }
}

/// The subject of the certificate `der`, as RFC 4514 writes it: the last
/// RDN first, `,` between RDNs, `+` within one, short names for the usual
/// attributes and the dotted OID for others, values escaped (`\,`), and
/// values that are not strings as `#` and their DER in hex.
fn subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let rdns: Vec<String> = cert
        .subject()
        .iter_rdn()
        .map(|rdn| {
            let attributes: Vec<String> = rdn
                .iter()
                .map(|attribute| {
                    let oid = attribute.attr_type();
                    let name = match oid2abbrev(oid, oid_registry()) {
                        Ok(name) if RFC4514_NAMES.contains(&name) => name.to_string(),
                        _ => oid.to_id_string(),
                    };
                    let value = match attribute.as_str() {
                        Ok(text) => dn_value(text.as_bytes()),
                        Err(_) => {
                            let der = attribute.attr_value().as_bytes();
                            let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
                            format!("#{hex}")
                        }
                    };
                    format!("{name}={value}")
                })
                .collect();
            attributes.join("+")
        })
        .collect();
    let rdns: Vec<String> = rdns.into_iter().rev().collect();
    Some(rdns.join(","))
}

/// The attribute names RFC 4514 (section 3) lets a string use; others are
/// written as dotted OIDs.
const RFC4514_NAMES: [&str; 9] = ["CN", "L", "ST", "O", "OU", "C", "STREET", "DC", "UID"];

/// The cryptography TLS runs on: *ring*, because it builds with the C
/// compiler alone, where rustls's default (aws-lc) needs more of the
/// machine. rustls 0.23.48 deprecated this provider for lacking
/// post-quantum key exchange (X25519MLKEM768); it still offers X25519 and
/// the NIST curves, which every client supports. Moving to aws-lc-rs is a
/// one-line change here if post-quantum key exchange is wanted. The
/// client (`hotsock client --tls`) uses it too.
#[expect(
    deprecated,
    reason = "ring has no post-quantum key exchange; chosen to build without aws-lc"
)]
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Reads a certificate chain and its key and checks them: the key is the
/// certificate's, and the certificate is in date at `now`. Returns the pair
/// and the certificate's not-after; a certificate that expires within
/// [`EXPIRY_WARNING`] adds a warning.
fn load_pair(
    files: &CertFiles,
    provider: &CryptoProvider,
    now: i64,
    warnings: &mut Vec<String>,
) -> Result<(CertifiedKey, i64), String> {
    let (cert_file, key_file) = (files.cert.display(), files.key.display());
    let chain = read_certificates(&files.cert)?;
    let pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        PemError::NoItemsFound => format!(
            "{key_file}: no private key in it (expected PEM `BEGIN PRIVATE KEY`, \
             `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY`)"
        ),
        e => format!("{key_file}: not a PEM private key: {e}"),
    })?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{key_file}: unusable private key: {e}"))?;
    let pair = CertifiedKey::new(chain, key);
    // rustls's own `from_der` lets a key that cannot tell its public key
    // through; ring's keys all can, so here "unknown" is refused too.
    pair.keys_match().map_err(|e| match e {
        TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch) => format!(
            "{key_file} is not the private key of the certificate in {cert_file}: \
             give the key the certificate was issued for"
        ),
        e => format!("{cert_file} and {key_file}: cannot check that the key matches: {e}"),
    })?;
    let not_after = check_dates(&pair.cert[0], &files.cert, now, warnings)?;
    Ok((pair, not_after))
}

/// Checks that the certificate `der` (read from `file`) is valid at `now`,
/// and warns when it expires within [`EXPIRY_WARNING`]. rustls checks dates
/// only in a handshake, and only the client's side: a server would happily
/// serve an expired certificate that every client then refuses.
fn check_dates(
    der: &CertificateDer<'_>,
    file: &Path,
    now: i64,
    warnings: &mut Vec<String>,
) -> Result<i64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| {
        format!(
            "{}: the first certificate cannot be read: {e}",
            file.display()
        )
    })?;
    let validity = cert.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if now < not_before {
        return Err(format!(
            "{}: the certificate is not valid until {}",
            file.display(),
            date(not_before)
        ));
    }
    if now > not_after {
        return Err(format!(
            "{}: the certificate expired on {}",
            file.display(),
            date(not_after)
        ));
    }
    let left = not_after - now;
    if left < EXPIRY_WARNING.as_secs() as i64 {
        warnings.push(format!(
            "{}: the certificate expires on {}, in {} days: renew it",
            file.display(),
            date(not_after),
            // Rounded: a certificate issued for 5 days reads "in 5 days".
            (left + 12 * 60 * 60) / (24 * 60 * 60)
        ));
    }
    Ok(not_after)
}

/// Reads the PEM certificates in `file`, in order.
fn read_certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(file)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", file.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate in it (expected PEM `BEGIN CERTIFICATE`)",
            file.display()
        ));
    }
    Ok(chain)
}

/// Reads the client CA file: every certificate in it must be usable as a
/// trust anchor, so a damaged bundle is an error rather than a quieter
/// set of trusted authorities.
fn load_roots(file: &Path) -> Result<RootCertStore, String> {
    let certificates = read_certificates(file)?;
    let count = certificates.len();
    let mut roots = RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(certificates);
    if ignored > 0 {
        return Err(format!(
            "{}: {ignored} of its {count} certificates cannot be used as a certificate authority",
            file.display()
        ));
    }
    Ok(roots)
}

/// A file's bytes, or an error that names it.
fn read(file: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))
}

/// An ALPN protocol id as the protocol sends it: 1 to 255 bytes.
fn alpn_id(protocol: &str) -> Result<Vec<u8>, String> {
    match protocol.len() {
        1..=255 => Ok(protocol.as_bytes().to_vec()),
        _ => Err(format!(
            "TLS ALPN protocol `{protocol}`: must be 1 to 255 bytes long"
        )),
    }
}

/// Seconds since the Unix epoch, as certificates' dates are compared.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A Unix time as people read it in an error (`2026-12-05T03:14:15Z`).
fn date(unix: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// An SNI entry's name, checked and in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SniPattern {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`, kept as `example.com`: the name a client's must end
    /// in after its first label.
    Wildcard(String),
}

impl SniPattern {
    fn parse(pattern: &str) -> Result<SniPattern, String> {
        let lower = pattern.to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(parent) => (true, parent),
            None => (false, lower.as_str()),
        };
        if !is_host_name(name) {
            return Err(format!(
                "TLS server name `{pattern}`: expected a host name (`api.example.com`) or a \
                 wildcard over its first label (`*.example.com`)"
            ));
        }
        Ok(match wildcard {
            true => SniPattern::Wildcard(name.to_owned()),
            false => SniPattern::Exact(name.to_owned()),
        })
    }
}

/// Whether `name` is a DNS host name: dot-separated labels of letters,
/// digits and inner hyphens, each 1 to 63 bytes, 253 in all. A `*` anywhere
/// but a wildcard's first label is refused here, as clients refuse it.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The choice of certificate by the server name a client sends: an exact
/// name first, then a wildcard over the name's first label, then the
/// default. Generic so that tests check the choice without keys.
#[derive(Debug, Clone)]
struct Chooser<T> {
    exact: HashMap<String, T>,
    /// By the name a wildcard covers the labels of: `*.example.com` is
    /// under `example.com`.
    wildcard: HashMap<String, T>,
    default: T,
}

impl<T> Chooser<T> {
    fn new(default: T) -> Self {
        Chooser {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        }
    }

    /// Adds an entry; false if its pattern is there already.
    fn insert(&mut self, pattern: &SniPattern, value: T) -> bool {
        let (map, name) = match pattern {
            SniPattern::Exact(name) => (&mut self.exact, name),
            SniPattern::Wildcard(name) => (&mut self.wildcard, name),
        };
        map.insert(name.clone(), value).is_none()
    }

    /// What serves a client that sent `server_name` (or none).
    fn choose(&self, server_name: Option<&str>) -> &T {
        let Some(name) = server_name else {
            return &self.default;
        };
        // Names are case-insensitive, and `example.com.` is `example.com`.
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(value) = self.exact.get(&name) {
            return value;
        }
        // One label only: `a.b.example.com` is under `b.example.com`.
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

/// rustls's hook for choosing a certificate per handshake.
#[derive(Debug)]
struct SniResolver(Chooser<Arc<CertifiedKey>>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.0.choose(client_hello.server_name())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, ServerConnection};
    use tempfile::TempDir;
    use time::OffsetDateTime;

    /// A certificate authority made for one test, and the directory its
    /// files are written to.
    struct Ca {
        dir: TempDir,
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    /// Validity of an issued certificate, in days from now.
    struct Days(i64, i64);

    const VALID: Days = Days(-1, 365);

    impl Ca {
        fn new() -> Ca {
            Ca::named("hotsock test CA")
        }

        fn named(name: &str) -> Ca {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let pem = params.self_signed(&key).unwrap().pem();
            Ca {
                dir: tempfile::tempdir().unwrap(),
                issuer: Issuer::new(params, key),
                pem,
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// The CA's own certificate, as a client CA file.
        fn ca_file(&self) -> PathBuf {
            let path = self.path("ca.pem");
            std::fs::write(&path, &self.pem).unwrap();
            path
        }

        /// A certificate for `names`, written as `{file}.crt` and `{file}.key`.
        fn issue(&self, file: &str, names: &[&str], days: Days, client: bool) -> CertFiles {
            let key = KeyPair::generate().unwrap();
            let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, file);
            let now = OffsetDateTime::now_utc();
            params.not_before = now + time::Duration::days(days.0);
            params.not_after = now + time::Duration::days(days.1);
            params.extended_key_usages = vec![match client {
                true => ExtendedKeyUsagePurpose::ClientAuth,
                false => ExtendedKeyUsagePurpose::ServerAuth,
            }];
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            let files = CertFiles {
                cert: self.path(&format!("{file}.crt")),
                key: self.path(&format!("{file}.key")),
            };
            std::fs::write(&files.cert, cert.pem()).unwrap();
            std::fs::write(&files.key, key.serialize_pem()).unwrap();
            files
        }

        fn server(&self, file: &str, names: &[&str]) -> CertFiles {
            self.issue(file, names, VALID, false)
        }
    }

    fn settings(default: CertFiles) -> TlsSettings {
        TlsSettings::new(default.cert, default.key)
    }

    fn sni(name: &str, files: CertFiles) -> SniCert {
        SniCert {
            name: name.into(),
            files,
        }
    }

    #[test]
    fn a_valid_pair_loads() {
        let ca = Ca::new();
        let loaded = Certificates::load(&settings(ca.server("site", &["localhost"]))).unwrap();
        assert!(loaded.warnings().is_empty(), "{:?}", loaded.warnings());
        assert_eq!(loaded.expiries().len(), 1);
        assert!(loaded.expiries()[0].0.ends_with("site.crt"));
        assert!(loaded.expiries()[0].1 > unix_now() + 300 * 24 * 60 * 60);
        loaded.server_config().unwrap();
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let ca = Ca::new();
        let one = ca.server("one", &["localhost"]);
        let other = ca.server("other", &["localhost"]);
        let err = Certificates::load(&TlsSettings::new(&one.cert, &other.key)).unwrap_err();
        assert!(err.contains("other.key"), "{err}");
        assert!(err.contains("one.crt"), "{err}");
        assert!(err.contains("not the private key"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_pem_is_refused_by_name() {
        let ca = Ca::new();
        let site = ca.server("site", &["localhost"]);
        std::fs::write(&site.cert, "not a certificate\n").unwrap();
        let err = Certificates::load(&settings(site.clone())).unwrap_err();
        assert!(
            err.contains("site.crt") && err.contains("no certificate"),
            "{err}"
        );
        let err =
            Certificates::load(&TlsSettings::new(&site.cert, ca.path("missing.key"))).unwrap_err();
        assert!(err.contains("site.crt"), "{err}");
        let good = ca.server("good", &["localhost"]);
        let err =
            Certificates::load(&TlsSettings::new(&good.cert, ca.path("missing.key"))).unwrap_err();
        assert!(err.contains("missing.key"), "{err}");
    }

    #[test]
    fn an_expired_or_not_yet_valid_certificate_is_refused() {
        let ca = Ca::new();
        let expired = ca.issue("expired", &["localhost"], Days(-30, -1), false);
        let err = Certificates::load(&settings(expired)).unwrap_err();
        assert!(
            err.contains("expired.crt") && err.contains("expired on"),
            "{err}"
        );
        let early = ca.issue("early", &["localhost"], Days(2, 30), false);
        let err = Certificates::load(&settings(early)).unwrap_err();
        assert!(
            err.contains("early.crt") && err.contains("not valid until"),
            "{err}"
        );
    }

    #[test]
    fn a_certificate_expiring_within_two_weeks_loads_with_a_warning() {
        let ca = Ca::new();
        let soon = ca.issue("soon", &["localhost"], Days(-1, 5), false);
        let loaded = Certificates::load(&settings(soon)).unwrap();
        let [warning] = loaded.warnings() else {
            panic!("one warning expected: {:?}", loaded.warnings());
        };
        assert!(
            warning.contains("soon.crt") && warning.contains("in 5 days"),
            "{warning}"
        );
    }

    #[test]
    fn the_certificate_is_chosen_exact_then_one_label_wildcard_then_default() {
        let mut chooser = Chooser::new("default");
        for (pattern, value) in [("api.example.com", "exact"), ("*.example.com", "wild")] {
            assert!(chooser.insert(&SniPattern::parse(pattern).unwrap(), value));
        }
        assert_eq!(*chooser.choose(Some("api.example.com")), "exact");
        assert_eq!(*chooser.choose(Some("API.Example.com.")), "exact");
        assert_eq!(*chooser.choose(Some("www.example.com")), "wild");
        assert_eq!(*chooser.choose(Some("a.b.example.com")), "default");
        assert_eq!(*chooser.choose(Some("example.com")), "default");
        assert_eq!(*chooser.choose(Some("other.test")), "default");
        assert_eq!(*chooser.choose(None), "default");
    }

    #[test]
    fn sni_names_are_checked() {
        assert_eq!(
            SniPattern::parse("*.Example.COM"),
            Ok(SniPattern::Wildcard("example.com".into()))
        );
        for bad in [
            "",
            "*",
            "*.",
            "a.*.example.com",
            "a..b",
            "-a.example.com",
            "a b",
        ] {
            assert!(SniPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        let ca = Ca::new();
        let mut twice = settings(ca.server("site", &["localhost"]));
        let other = ca.server("a", &["a.example.com"]);
        twice.sni = vec![
            sni("a.example.com", other.clone()),
            sni("A.example.com", other),
        ];
        let err = Certificates::load(&twice).unwrap_err();
        assert!(err.contains("given twice"), "{err}");
    }

    #[test]
    fn client_auth_without_a_client_ca_is_refused() {
        let ca = Ca::new();
        for mode in [ClientAuth::Optional, ClientAuth::Require] {
            let mut settings = settings(ca.server("site", &["localhost"]));
            settings.client_auth = mode;
            let err = Certificates::load(&settings).unwrap_err();
            assert!(err.contains("--tls-client-ca"), "{err}");
            settings.client_ca = Some(ca.ca_file());
            Certificates::load(&settings).unwrap();
        }
    }

    #[test]
    fn client_auth_names_round_trip() {
        for mode in [ClientAuth::Off, ClientAuth::Optional, ClientAuth::Require] {
            assert_eq!(mode.to_string().parse(), Ok(mode));
            let toml = format!("mode = \"{mode}\"");
            #[derive(Deserialize)]
            struct Table {
                mode: ClientAuth,
            }
            assert_eq!(toml::from_str::<Table>(&toml).unwrap().mode, mode);
        }
        assert!("required".parse::<ClientAuth>().is_err());
    }

    #[test]
    fn a_bad_file_fails_the_load_naming_it() {
        let ca = Ca::new();
        let site = ca.server("site", &["localhost"]);
        let (tls, warnings) = Tls::load(&settings(site.clone())).unwrap();
        assert!(warnings.is_empty());
        assert!(tls.expiries()[0].0.ends_with("site.crt"));
        std::fs::write(&site.key, "-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap();
        let err = Tls::load(&settings(site)).unwrap_err();
        assert!(err.contains("site.key"), "{err}");
    }

    #[test]
    fn subjects_are_written_as_rfc_4514_says() {
        let ca = Ca::new();
        let device = ca.issue("device", &["device.test"], VALID, true);
        let der = leaf(&device);
        let subject = subject(&der).unwrap();
        assert!(subject.starts_with("CN="), "{subject}");
    }

    /// Runs a handshake between two in-memory connections, passing bytes
    /// until both are done or one fails.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), TlsError> {
        fn pass(
            from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
            to: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
        ) -> Result<(), TlsError> {
            let mut bytes = Vec::new();
            while from.wants_write() {
                from.write_tls(&mut bytes).unwrap();
            }
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                to.read_tls(&mut rest).unwrap();
                to.process_new_packets()?;
            }
            Ok(())
        }
        for _ in 0..10 {
            pass(client, server)?;
            pass(server, client)?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake did not finish");
    }

    fn client(ca: &Ca, alpn: &[&str], cert: Option<&CertFiles>) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(read_certificates(&ca.ca_file()).unwrap());
        let builder = ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match cert {
            None => builder.with_no_client_auth(),
            Some(files) => builder
                .with_client_auth_cert(
                    read_certificates(&files.cert).unwrap(),
                    PrivateKeyDer::from_pem_file(&files.key).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config
    }

    fn connect(
        server: &Arc<ServerConfig>,
        client: ClientConfig,
        name: &str,
    ) -> Result<ClientConnection, TlsError> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut client = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut server = ServerConnection::new(Arc::clone(server)).unwrap();
        handshake(&mut client, &mut server).map(|()| client)
    }

    fn served(client: &ClientConnection) -> CertificateDer<'static> {
        client.peer_certificates().unwrap()[0].clone().into_owned()
    }

    fn leaf(files: &CertFiles) -> CertificateDer<'static> {
        read_certificates(&files.cert).unwrap().remove(0)
    }

    #[test]
    fn a_handshake_gets_the_certificate_sni_chooses_and_the_agreed_alpn() {
        let ca = Ca::new();
        let default = ca.server("default", &["default.test"]);
        let exact = ca.server("exact", &["api.example.com"]);
        let wild = ca.server("wild", &["*.example.com"]);
        let mut settings = settings(default.clone());
        settings.sni = vec![
            sni("api.example.com", exact.clone()),
            sni("*.example.com", wild.clone()),
        ];
        settings.alpn = vec!["h2".into(), "hotsock/1".into()];
        let (tls, _) = Tls::load(&settings).unwrap();
        let server = Arc::clone(&tls.server);

        let conn = connect(
            &server,
            client(&ca, &["hotsock/1"], None),
            "api.example.com",
        )
        .unwrap();
        assert_eq!(served(&conn), leaf(&exact));
        assert_eq!(conn.alpn_protocol(), Some(&b"hotsock/1"[..]));

        let conn = connect(&server, client(&ca, &[], None), "www.example.com").unwrap();
        assert_eq!(served(&conn), leaf(&wild));
        assert_eq!(conn.alpn_protocol(), None);

        // No server name at all: the default certificate.
        let mut no_sni = client(&ca, &["h2"], None);
        no_sni.enable_sni = false;
        let conn = connect(&server, no_sni, "default.test").unwrap();
        assert_eq!(served(&conn), leaf(&default));
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));

        // A client offering only protocols the server does not speak is
        // served without ALPN, not cut off (RFC 7301 would refuse it).
        let offered = [&b"smtp"[..]];
        let config = tls.config_for(Some(offered.into_iter()));
        let conn = connect(&config, client(&ca, &["smtp"], None), "api.example.com").unwrap();
        assert_eq!(conn.alpn_protocol(), None);
        let offered = [&b"smtp"[..], &b"h2"[..]];
        assert!(Arc::ptr_eq(
            &tls.config_for(Some(offered.into_iter())),
            &server
        ));
    }

    #[test]
    fn require_refuses_a_client_without_a_certificate_and_accepts_a_signed_one() {
        let ca = Ca::new();
        let mut settings = settings(ca.server("site", &["localhost"]));
        settings.client_ca = Some(ca.ca_file());
        settings.client_auth = ClientAuth::Require;
        let (tls, _) = Tls::load(&settings).unwrap();
        let server = Arc::clone(&tls.server);

        let refused = connect(&server, client(&ca, &[], None), "localhost").unwrap_err();
        assert_eq!(refused, TlsError::NoCertificatesPresented);
        let alice = ca.issue("alice", &["alice.test"], VALID, true);
        connect(&server, client(&ca, &[], Some(&alice)), "localhost").unwrap();

        // A certificate from another authority is refused.
        let other_ca = Ca::named("another CA");
        let stranger = other_ca.issue("mallory", &["mallory.test"], VALID, true);
        let refused = connect(&server, client(&ca, &[], Some(&stranger)), "localhost").unwrap_err();
        assert!(
            matches!(
                refused,
                TlsError::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            ),
            "{refused}"
        );

        // Optional lets the anonymous client in.
        settings.client_auth = ClientAuth::Optional;
        let (tls, _) = Tls::load(&settings).unwrap();
        connect(&tls.server, client(&ca, &[], None), "localhost").unwrap();
    }
}
