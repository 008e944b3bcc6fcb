//! The admin API, off unless `serve --admin` is given: a small HTTP interface
//! to the [`Registry`], and the client that `hotsock status`, `swap` and
//! `rollback` use.
//!
//! | request          | what it does                                          |
//! |------------------|-------------------------------------------------------|
//! | `GET /status`    | the versions and their connections, as JSON           |
//! | `POST /handler`  | swaps in the component in the body (`curl --data-binary @h.wasm`) |
//! | `POST /rollback` | returns to the previous version                       |
//!
//! Answers are JSON; failures carry `{"error": "..."}` with a 4xx status.
//! The API has no authentication, so it listens on loopback unless the
//! operator explicitly allows otherwise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use log::{debug, warn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tiny_http::{Header, Method, Request, Response};

use crate::admission::{Admission, AdmissionStatus};
use crate::registry::{Registry, Status, Swapped};
use crate::sandbox::background_priority;

/// Largest component `POST /handler` accepts. Rust handlers are around
/// 100 KiB and Python ones around 20 MiB; this leaves room while keeping a
/// stray upload from eating the server's memory.
pub const MAX_UPLOAD: usize = 128 * 1024 * 1024;

/// Optional request header naming where an uploaded component came from, so
/// logs and `/status` can say more than `upload`. `hotsock swap` sends the path.
pub const SOURCE_HEADER: &str = "X-Hotsock-Source";

/// How long the client waits for an answer: a large component can take a
/// while to compile before the server replies.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// What `GET /status` answers: connection counts, and the handler versions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Open, admitted and refused connections.
    pub connections: AdmissionStatus,
    /// The handler versions and rollbacks.
    #[serde(flatten)]
    pub handlers: Status,
}

/// Binds the admin listener, refusing non-loopback addresses unless `allow_remote`.
pub fn bind(addr: &str, allow_remote: bool) -> Result<TcpListener> {
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| {
            format!("--admin {addr} is not an address (expected IP:PORT, e.g. 127.0.0.1:50008)")
        })?
        .collect();
    if !allow_remote && resolved.iter().any(|a| !a.ip().is_loopback()) {
        bail!(
            "--admin {addr} is not a loopback address: the admin API can replace the server's code and has \
             no authentication, so it only listens on loopback (e.g. 127.0.0.1:50008) unless you also pass \
             --admin-allow-remote"
        );
    }
    crate::server::bind_one(addr, "--admin")
}

/// Serves the admin API on `listener` from a thread of its own, and each
/// request from a thread of its own, so a slow upload never delays `/status`.
pub fn spawn(
    listener: TcpListener,
    registry: Arc<Registry>,
    admission: Arc<Admission>,
) -> Result<()> {
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| anyhow!("cannot start the admin API: {e}"))?;
    thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (registry, admission) = (Arc::clone(&registry), Arc::clone(&admission));
                let spawned =
                    thread::Builder::new()
                        .name("admin-request".into())
                        .spawn(move || {
                            // A swap validates and compiles on this thread.
                            background_priority();
                            respond(&registry, &admission, request)
                        });
                if let Err(e) = spawned {
                    warn!("admin: cannot start a thread for a request: {e}");
                }
            }
        })
        .context("cannot start the admin thread")?;
    Ok(())
}

fn respond(registry: &Arc<Registry>, admission: &Admission, mut request: Request) {
    let (code, body) = route(registry, admission, &mut request);
    let json = Header::from_bytes("Content-Type", "application/json").expect("a valid header");
    let response = Response::from_string(format!("{body:#}\n"))
        .with_status_code(code)
        .with_header(json);
    if let Err(e) = request.respond(response) {
        debug!("admin: the client left before the answer: {e}");
    }
}

fn route(registry: &Arc<Registry>, admission: &Admission, request: &mut Request) -> (u16, Value) {
    let path = request
        .url()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    match (request.method(), path.as_str()) {
        (Method::Get, "/status") => {
            let status = ServerStatus {
                connections: admission.status(),
                handlers: registry.status(),
            };
            (200, json!(status))
        }
        (Method::Post, "/handler") => upload(registry, request),
        (Method::Post, "/rollback") => match registry.rollback("manual: POST /rollback") {
            Ok((current, replaced)) => (
                200,
                json!({"current": current.id(), "replaced": replaced.id()}),
            ),
            Err(e) => error(409, format!("{e:#}")),
        },
        (_, "/status" | "/handler" | "/rollback") => error(
            405,
            "method not allowed: use GET /status, POST /handler, POST /rollback".into(),
        ),
        _ => error(
            404,
            format!("no such endpoint {path}: use GET /status, POST /handler, POST /rollback"),
        ),
    }
}

fn upload(registry: &Arc<Registry>, request: &mut Request) -> (u16, Value) {
    let too_large = || {
        error(
            413,
            format!("the component is larger than the {MAX_UPLOAD}-byte upload limit"),
        )
    };
    if request.body_length().is_some_and(|n| n > MAX_UPLOAD) {
        return too_large();
    }
    let source = request
        .headers()
        .iter()
        .find(|h| h.field.equiv(SOURCE_HEADER))
        .map_or_else(|| "upload".to_string(), |h| h.value.to_string());
    let mut bytes = Vec::new();
    if let Err(e) = request
        .as_reader()
        .take(MAX_UPLOAD as u64 + 1)
        .read_to_end(&mut bytes)
    {
        return error(400, format!("cannot read the upload: {e}"));
    }
    if bytes.len() > MAX_UPLOAD {
        return too_large();
    }
    if bytes.is_empty() {
        return error(
            400,
            "the body is empty: send the component's bytes, e.g. curl --data-binary @handler.wasm"
                .into(),
        );
    }
    match registry.swap(source, &bytes) {
        Ok(Swapped::Unchanged(current)) => {
            (200, json!({"swapped": false, "current": current.id()}))
        }
        Ok(Swapped::Replaced { new, old }) => (
            200,
            json!({"swapped": true, "current": new.id(), "replaced": old.id()}),
        ),
        Err(e) => {
            let current = registry.current();
            warn!(
                "admin: swap rejected, still serving {}: {e:#}",
                current.id()
            );
            error(422, format!("{e:#}"))
        }
    }
}

fn error(code: u16, message: String) -> (u16, Value) {
    (code, json!({ "error": message }))
}

/// The client side, for `hotsock status`, `swap` and `rollback`.
pub struct Client {
    addr: String,
}

impl Client {
    /// A client of the admin API at `addr` (as given to `serve --admin`).
    pub fn new(addr: String) -> Self {
        Client { addr }
    }

    /// `GET /status`.
    pub fn status(&self) -> Result<ServerStatus> {
        let body = self.call("GET", "/status", None)?;
        serde_json::from_value(body)
            .context("the server's /status answer is not what this hotsock expects")
    }

    /// `POST /handler`: the server's answer, `{"swapped", "current", "replaced"}`.
    pub fn swap(&self, source: &str, component: &[u8]) -> Result<Value> {
        self.call("POST", "/handler", Some((source, component)))
    }

    /// `POST /rollback`: the server's answer, `{"current", "replaced"}`.
    pub fn rollback(&self) -> Result<Value> {
        self.call("POST", "/rollback", None)
    }

    /// One HTTP/1.1 request on a fresh connection. The server is ours and
    /// answers with a `Content-Length`, so a minimal client is enough.
    fn call(&self, method: &str, path: &str, upload: Option<(&str, &[u8])>) -> Result<Value> {
        let addr = &self.addr;
        let mut stream = TcpStream::connect(addr).with_context(|| {
            format!(
                "cannot reach the admin API at {addr}: is `hotsock serve --admin {addr}` running?"
            )
        })?;
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        let (source, body) = upload.unwrap_or(("", &[]));
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !source.is_empty() {
            head.push_str(&format!(
                "{SOURCE_HEADER}: {}\r\n",
                source.replace(['\r', '\n'], " ")
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .with_context(|| format!("no answer from the admin API at {addr}"))?;
        let (code, body) = parse_response(&response)
            .with_context(|| format!("{addr} did not answer like a hotsock admin API"))?;
        if code >= 400 {
            let message = body["error"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_string);
            bail!("{message}");
        }
        Ok(body)
    }
}

/// Splits an HTTP response into its status code and JSON body.
fn parse_response(response: &[u8]) -> Result<(u16, Value)> {
    let text = std::str::from_utf8(response)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let body = &body[..length.unwrap_or(body.len()).min(body.len())];
    Ok((code, serde_json::from_str(body)?))
}

/// `hotsock status` as a table, for people; `--json` gives the raw answer.
pub fn render_status(status: &ServerStatus) -> String {
    let c = &status.connections;
    let mut out = format!(
        "connections: {} open of {} max, {} accepted, {} refused, full {} time(s)\n",
        c.active, c.max, c.accepted, c.refused, c.saturated
    );
    let status = &status.handlers;
    out.push_str(&format!("current: {}\n", status.current));
    out.push_str(&format!(
        "{:<14} {:<9} {:<21} {:>7} {:>8} {:>6}  SOURCE\n",
        "VERSION", "STATE", "LOADED AT", "ACTIVE", "SERVED", "TRAPS"
    ));
    for v in &status.versions {
        out.push_str(&format!(
            "{:<14} {:<9} {:<21} {:>7} {:>8} {:>6}  {}\n",
            v.id,
            v.state,
            v.loaded_at,
            v.active_connections,
            v.connections_served,
            v.traps,
            v.source
        ));
    }
    for r in &status.rollbacks {
        out.push_str(&format!(
            "rolled back {} -> {} at {}: {}\n",
            r.from, r.to, r.at, r.reason
        ));
    }
    out
}
