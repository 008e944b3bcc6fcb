//! The admin API, off unless `serve --admin` is given: a small HTTP interface
//! to the [`Registry`] and the connection counts.
//!
//! | request          | what it does                                          |
//! |------------------|-------------------------------------------------------|
//! | `GET /status`    | the versions and their connections, as JSON           |
//! | `POST /handler`  | swaps in the component in the body (`curl --data-binary @h.wasm`) |
//! | `POST /rollback` | returns to the previous version                       |
//!
//! Answers are JSON; failures carry `{"error": "..."}` with a 4xx status, and
//! a rejected handler also `"reason"`, a stable name for what was wrong.
//! The API has no authentication, so it listens on loopback unless the
//! operator explicitly allows otherwise.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::thread;

use anyhow::{Context as _, Result, anyhow, bail};
use log::{debug, warn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tiny_http::{Header, Method, Request, Response};

use crate::server::admission::{Admission, AdmissionStatus};
use crate::server::listener::bind_one;
use crate::server::registry::{Registry, Status, Swapped};
use crate::sys;

/// Largest component `POST /handler` accepts. Rust handlers are around
/// 100 KiB and Python ones around 20 MiB; this leaves room while keeping a
/// stray upload from eating the server's memory.
pub const MAX_UPLOAD: usize = 128 * 1024 * 1024;

/// Optional request header naming where an uploaded component came from, so
/// logs and `/status` can say more than `upload`. `hotsock swap` sends the path.
pub const SOURCE_HEADER: &str = "X-Hotsock-Source";

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
    bind_one(addr, "--admin")
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
                            sys::background_priority();
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

fn respond(registry: &Registry, admission: &Admission, mut request: Request) {
    let (code, body) = route(registry, admission, &mut request);
    let response = Response::from_string(format!("{body:#}\n"))
        .with_status_code(code)
        .with_header(Header {
            field: "Content-Type".parse().expect("a valid header name"),
            value: "application/json".parse().expect("a valid header value"),
        });
    if let Err(e) = request.respond(response) {
        debug!("admin: the client left before the answer: {e}");
    }
}

fn route(registry: &Registry, admission: &Admission, request: &mut Request) -> (u16, Value) {
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
            Some((current, replaced)) => (
                200,
                json!({"current": current.id(), "replaced": replaced.id()}),
            ),
            None => error(409, "there is no previous version to roll back to".into()),
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

fn upload(registry: &Registry, request: &mut Request) -> (u16, Value) {
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
                "admin: swap rejected ({}), still serving {}: {e}",
                e.reason(),
                current.id()
            );
            (422, json!({ "error": e.to_string(), "reason": e.reason() }))
        }
    }
}

fn error(code: u16, message: String) -> (u16, Value) {
    (code, json!({ "error": message }))
}
