//! The admin API, off unless `serve --admin` is given: status, swap and
//! rollback over HTTP, on a Unix socket (recommended) or a TCP address.
//!
//! | request          | what it does                                          |
//! |------------------|-------------------------------------------------------|
//! | `GET /status`    | the versions and their connections, as JSON           |
//! | `POST /handler`  | swaps in the component in the body (`Content-Type: application/wasm`) |
//! | `POST /rollback` | returns to the previous version                       |
//!
//! It can replace the code that serves every client, so no web page and no
//! other user may drive it. A Unix socket is private to the user running the
//! server (mode 0600), and the kernel names who connects. A TCP address needs
//! a token, sent as `Authorization: Bearer`. Either way, a request from a
//! browser is refused: one with an `Origin` header or a `Sec-Fetch-Site`
//! other than `none`, or whose `Host` is not this API's own address or
//! `localhost` (DNS rebinding). Answers are JSON; failures carry
//! `{"error": "..."}`, and a rejected handler also `"reason"`.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hyper::Method;
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use hyper::http::request::Parts;
use log::{debug, info, warn};
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq as _;

use crate::server::admission::AdmissionStatus;
use crate::server::http::{
    Closer, Endpoint, HttpListener, Peer, Reply, Routes, SocketFile, bind as bind_endpoint, serve,
};
use crate::server::listener::Listener;
use crate::server::registry::{Registry, Status, Swapped};
use crate::sys;

/// Largest component `POST /handler` accepts by default. Rust handlers are
/// around 100 KiB and Python ones around 20 MiB; a body over the limit is
/// refused before it is read.
pub const DEFAULT_MAX_UPLOAD: usize = 64 << 20;

/// Optional request header naming where an uploaded component came from, so
/// logs and `/status` can say more than `upload`. `hotsock swap` sends the path.
pub const SOURCE_HEADER: &str = "X-Hotsock-Source";

/// The environment variable `swap`, `status` and `rollback` take the token
/// from when `--admin-token-file` is not given.
pub const TOKEN_ENV: &str = "HOTSOCK_ADMIN_TOKEN";

/// Shortest token accepted: long enough that guessing is hopeless.
const MIN_TOKEN_LEN: usize = 16;

/// Least time between two log lines about refused requests: a web page that
/// keeps trying must not flood the log.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What `GET /status[?listener=NAME]` answers: one listener's connection
/// counts and handler versions, and the names of all listeners.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The process answering: after a binary upgrade (SIGUSR2), a new one.
    #[serde(default)]
    pub pid: u32,
    /// The listener this is about: the one asked for, else the first.
    pub listener: String,
    /// Every listener's name, in the order they were configured.
    pub listeners: Vec<String>,
    /// Open, admitted and refused connections.
    pub connections: AdmissionStatus,
    /// The handler versions and rollbacks.
    #[serde(flatten)]
    pub handlers: Status,
}

/// The secret a TCP admin API wants in `Authorization: Bearer`.
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads the token from `path`, which must be private to this user.
    pub fn read(path: &Path) -> Result<Self> {
        let shown = path.display();
        let meta = fs::metadata(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the admin token file {shown}: {e}; create it with \
                 `(umask 077; head -c 32 /dev/urandom | base64 > {shown})`"
            )
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!("the admin token file {shown} can be read by other users: `chmod 600 {shown}`");
        }
        let text = fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the admin token file {shown}: {e}"))?;
        Token::new(text.trim()).map_err(|why| anyhow::anyhow!("the admin token in {shown} {why}"))
    }

    /// A token from text, such as `HOTSOCK_ADMIN_TOKEN`; `Err` says what is wrong.
    pub fn new(text: &str) -> Result<Self, String> {
        if text.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "is {} characters long: use at least {MIN_TOKEN_LEN}, such as \
                 `head -c 32 /dev/urandom | base64`",
                text.len()
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("has spaces or characters a header cannot carry".into());
        }
        Ok(Token(text.to_string()))
    }

    /// The token, for a client to send.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the token, compared in constant time.
    fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

/// How the admin API runs, from `serve`'s options.
#[derive(Debug)]
pub struct Options {
    /// Where it listens.
    pub endpoint: Endpoint,
    /// The token every request must carry: required on a TCP address.
    pub token: Option<Token>,
    /// Let a TCP address be other than loopback.
    pub allow_remote: bool,
    /// Largest body `POST /handler` accepts.
    pub max_upload: usize,
}

/// A bound admin API, ready to [`spawn`].
pub struct Bound {
    listener: HttpListener,
    options: Options,
    /// The socket's file, removed when this (or what `spawn` returns) is dropped.
    file: Option<SocketFile>,
}

impl Bound {
    /// Where it listens, as bound.
    pub fn endpoint(&self) -> std::io::Result<Endpoint> {
        self.listener.endpoint()
    }

    /// Leaves the Unix socket's file in place on exit: whoever created it
    /// (systemd, for a socket it passed in) keeps it.
    pub fn leave_file(&mut self) {
        if let Some(file) = self.file.take() {
            file.keep();
        }
    }
}

impl AsFd for Bound {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

/// Binds the admin API, refusing a TCP address without a token, or a
/// non-loopback one unless allowed. An `inherited` socket (from systemd, or
/// the process an upgrade replaces) is used instead of binding, under the
/// same rules.
pub fn bind(mut options: Options, inherited: Option<HttpListener>) -> Result<Bound> {
    if let Some(listener) = &inherited {
        options.endpoint = listener.endpoint()?;
    }
    if let Endpoint::Tcp(addr) = &options.endpoint {
        if options.token.is_none() {
            bail!(
                "--admin {addr} needs --admin-token-file FILE: on a TCP address, anyone who can \
                 connect could replace the server's code. Create a token with \
                 `(umask 077; head -c 32 /dev/urandom | base64 > admin.token)`, or use a Unix \
                 socket instead, e.g. --admin ./hotsock.sock"
            );
        }
        if !options.allow_remote && !addr.ip().is_loopback() {
            bail!(
                "--admin {addr} is not a loopback address: the admin API can replace the server's \
                 code, so it only listens on loopback (e.g. 127.0.0.1:50008) or a Unix socket \
                 unless you also pass --admin-allow-remote"
            );
        }
    }
    let (listener, file) = match inherited {
        Some(listener) => {
            let file = match &listener {
                HttpListener::Unix(_, path) => Some(SocketFile::adopt(path.clone())),
                HttpListener::Tcp(_) => None,
            };
            (listener, file)
        }
        None => bind_endpoint(&options.endpoint, "--admin")?,
    };
    Ok(Bound {
        listener,
        options,
        file,
    })
}

/// A running admin API.
pub struct Running {
    /// Closes its listening socket.
    pub closer: Closer,
    /// Its socket's file, if any: removed when dropped, so keep it while
    /// serving, and [`SocketFile::keep`] it when handing the socket over.
    pub file: Option<SocketFile>,
}

/// Serves the admin API from a thread of its own.
pub fn spawn(bound: Bound, listeners: Vec<Arc<Listener>>) -> Result<Running> {
    let Bound {
        listener,
        options,
        file,
    } = bound;
    let admin = Admin {
        listeners,
        token: options.token,
        max_upload: options.max_upload,
        refusals: AtomicU64::new(0),
        last_refusal_log: Mutex::new(None),
    };
    let closer = serve(listener, "admin", Arc::new(admin))?;
    Ok(Running { closer, file })
}

/// The admin API's state.
struct Admin {
    listeners: Vec<Arc<Listener>>,
    token: Option<Token>,
    max_upload: usize,
    refusals: AtomicU64,
    last_refusal_log: Mutex<Option<Instant>>,
}

impl Routes for Admin {
    fn admit(&self, head: &Parts, peer: &Peer) -> Result<usize, Reply> {
        self.check_sender(head, peer)
            .inspect_err(|reply| self.log_refusal(head, peer, reply))?;
        match (&head.method, head.uri.path()) {
            (&Method::POST, "/handler") => {
                let wasm = head
                    .headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(';').next())
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/wasm"));
                match wasm {
                    true => Ok(self.max_upload),
                    false => Err(Reply::error(
                        415,
                        "POST /handler takes a component with Content-Type: application/wasm \
                         (curl -H 'Content-Type: application/wasm' --data-binary @handler.wasm)",
                    )),
                }
            }
            _ => Ok(0),
        }
    }

    fn answer(&self, head: Parts, body: Bytes, peer: &Peer) -> Reply {
        let who = self.who(peer);
        let changes = head.method != Method::GET;
        let target = match self.target(&head, changes) {
            Ok(target) => target,
            Err(reply) => return reply,
        };
        let registry = target.registry();
        match (&head.method, head.uri.path()) {
            (&Method::GET, "/status") => {
                debug!("admin: GET /status by {who}");
                let status = ServerStatus {
                    pid: std::process::id(),
                    listener: target.name().to_string(),
                    listeners: self
                        .listeners
                        .iter()
                        .map(|s| s.name().to_string())
                        .collect(),
                    connections: target
                        .admission()
                        .status(target.registry().settings().rules.max_connections_per_ip),
                    handlers: registry.status(),
                };
                Reply::ok(json!(status))
            }
            (&Method::POST, "/handler") => self.swap(registry, &head, &body, &who),
            (&Method::POST, "/rollback") => {
                match registry.rollback(&format!("manual: POST /rollback by {who}")) {
                    Some((current, replaced)) => {
                        info!(
                            "admin: rollback by {who}: {} -> {}",
                            replaced.id(),
                            current.id()
                        );
                        Reply::ok(json!({"current": current.id(), "replaced": replaced.id()}))
                    }
                    None => Reply::error(409, "there is no previous version to roll back to"),
                }
            }
            (_, "/status" | "/handler" | "/rollback") => Reply::error(
                405,
                "method not allowed: use GET /status, POST /handler, POST /rollback",
            ),
            (_, path) => Reply::error(
                404,
                format!("no such endpoint {path}: use GET /status, POST /handler, POST /rollback"),
            ),
        }
    }

    fn too_large(&self, limit: usize) -> Reply {
        Reply::error(
            413,
            format!(
                "the component is larger than the {limit}-byte upload limit (--admin-max-upload)"
            ),
        )
    }
}

impl Admin {
    /// Refuses requests a browser sent, or that lack the token.
    fn check_sender(&self, head: &Parts, peer: &Peer) -> Result<(), Reply> {
        if let Some(origin) = head.headers.get(ORIGIN) {
            let origin = String::from_utf8_lossy(origin.as_bytes());
            return Err(Reply::error(
                403,
                format!("requests from web pages are refused (Origin: {origin})"),
            ));
        }
        if let Some(site) = head.headers.get("sec-fetch-site")
            && site.as_bytes() != b"none"
        {
            let site = String::from_utf8_lossy(site.as_bytes());
            return Err(Reply::error(
                403,
                format!("requests from web pages are refused (Sec-Fetch-Site: {site})"),
            ));
        }
        let mut hosts = head.headers.get_all(HOST).iter();
        let host = hosts.next().and_then(|h| h.to_str().ok());
        if hosts.next().is_some() {
            return Err(Reply::error(400, "more than one Host header"));
        }
        match host {
            None => return Err(Reply::error(400, "a Host header is required")),
            Some(host) if !host_is_ours(host, peer) => {
                return Err(Reply::error(
                    403,
                    format!("Host {host} is not this admin API's address or localhost"),
                ));
            }
            Some(_) => {}
        }
        let Some(token) = &self.token else {
            return Ok(());
        };
        let presented = head
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        match presented {
            Some(presented) if token.matches(presented) => Ok(()),
            Some(_) => Err(unauthorized("the token is not this server's")),
            None => Err(unauthorized(
                "this admin API needs its token: send Authorization: Bearer <the token in \
                 --admin-token-file> (hotsock swap|status|rollback take --admin-token-file or \
                 HOTSOCK_ADMIN_TOKEN)",
            )),
        }
    }

    /// Who asked, for the log: the kernel's word on a Unix socket, else the
    /// token holder at an address.
    fn who(&self, peer: &Peer) -> String {
        match (peer, &self.token) {
            (Peer::Unix { .. }, _) => peer.to_string(),
            (Peer::Tcp { addr, .. }, Some(_)) => format!("token from {addr}"),
            (Peer::Tcp { addr, .. }, None) => addr.to_string(),
        }
    }

    /// The listener a request is about: `?listener=NAME`, or else the only
    /// one; with several, a change must say which.
    fn target(&self, head: &Parts, changes: bool) -> Result<&Arc<Listener>, Reply> {
        let asked = head.uri.query().and_then(|query| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("listener="))
        });
        let names = || {
            let names: Vec<_> = self.listeners.iter().map(|s| s.name()).collect();
            names.join(", ")
        };
        match asked {
            Some(name) => self
                .listeners
                .iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| {
                    Reply::error(404, format!("no listener {name}: there are {}", names()))
                }),
            None if changes && self.listeners.len() > 1 => Err(Reply::error(
                400,
                format!(
                    "this server has several listeners ({}): say which with ?listener=NAME \
                     (hotsock swap --listener NAME)",
                    names()
                ),
            )),
            None => self
                .listeners
                .first()
                .ok_or_else(|| Reply::error(500, "no listeners")),
        }
    }

    fn swap(&self, registry: &Registry, head: &Parts, body: &Bytes, who: &str) -> Reply {
        if body.is_empty() {
            return Reply::error(
                400,
                "the body is empty: send the component's bytes, e.g. curl --data-binary @handler.wasm",
            );
        }
        let source = head
            .headers
            .get(SOURCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| "upload".to_string(), str::to_string);
        let on = match self.listeners.len() {
            1 => String::new(),
            _ => format!(" on listener {}", registry.name()),
        };
        match registry.swap(source.clone(), body) {
            Ok(Swapped::Unchanged(current)) => {
                info!(
                    "admin: swap by {who}{on}: {source} is already serving as {}",
                    current.id()
                );
                Reply::ok(json!({"swapped": false, "current": current.id()}))
            }
            Ok(Swapped::Replaced { new, old }) => {
                info!(
                    "admin: swap by {who}{on}: {} -> {} ({source})",
                    old.id(),
                    new.id()
                );
                Reply::ok(json!({"swapped": true, "current": new.id(), "replaced": old.id()}))
            }
            Err(e) => {
                warn!(
                    "admin: swap by {who}{on}: rejected ({}), still serving {}: {e}",
                    e.reason(),
                    registry.current().id()
                );
                Reply::json(422, json!({ "error": e.to_string(), "reason": e.reason() }))
            }
        }
    }

    /// Logs a refused request, at most once per [`REFUSAL_LOG_INTERVAL`].
    fn log_refusal(&self, head: &Parts, peer: &Peer, reply: &Reply) {
        let refused = self.refusals.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = sys::lock(&self.last_refusal_log);
        if last.is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        warn!(
            "admin: refused {} {} from {peer} ({}): {}; {refused} refused so far",
            head.method,
            head.uri.path(),
            reply.status,
            reply.message()
        );
    }
}

fn unauthorized(message: &str) -> Reply {
    Reply::error(401, message).with_header("www-authenticate", "Bearer")
}

/// Whether a request's `Host` names this API: `localhost` (any port), or,
/// over TCP, the very address the client connected to. Anything else is a
/// name that resolved here by someone else's choice: DNS rebinding.
fn host_is_ours(host: &str, peer: &Peer) -> bool {
    let host = host.trim();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let Peer::Tcp { local, .. } = peer else {
        return false;
    };
    host.parse::<SocketAddr>().is_ok_and(|addr| addr == *local)
        || host.parse::<IpAddr>().is_ok_and(|ip| ip == local.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(local: &str) -> Peer {
        Peer::Tcp {
            addr: "127.0.0.1:40000".parse().unwrap(),
            local: local.parse().unwrap(),
        }
    }

    #[test]
    fn only_our_own_address_or_localhost_is_a_host() {
        let peer = tcp("127.0.0.1:50008");
        for host in [
            "127.0.0.1:50008",
            "localhost:50008",
            "LOCALHOST",
            "127.0.0.1",
        ] {
            assert!(host_is_ours(host, &peer), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:50008",
            "127.0.0.1:50009",
            "10.0.0.1:50008",
        ] {
            assert!(!host_is_ours(host, &peer), "{host}");
        }
        assert!(host_is_ours("[::1]:8", &tcp("[::1]:8")));
        let unix = Peer::Unix { uid: 0, pid: None };
        assert!(host_is_ours("localhost", &unix));
        assert!(!host_is_ours("evil.example", &unix));
    }

    #[test]
    fn tokens_are_long_and_compared_whole() {
        assert!(Token::new("short").is_err());
        assert!(
            Token::new("sixteen chars!!!").is_err(),
            "spaces cannot be sent"
        );
        let token = Token::new("0123456789abcdef").unwrap();
        assert!(token.matches(b"0123456789abcdef"));
        assert!(!token.matches(b"0123456789abcdeg"));
        assert!(!token.matches(b"0123456789abcdef0"));
        assert!(!token.matches(b""));
    }
}
