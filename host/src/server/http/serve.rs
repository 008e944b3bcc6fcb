//! Serving a control-plane API: one thread, a tokio runtime of its own, hyper
//! for HTTP/1.1, and every request's body limited before it is read.
//!
//! A service looks at each request twice: [`Routes::admit`] sees the head
//! (method, path, headers, who is asking) and refuses the request or says
//! how large a body it may carry; [`Routes::answer`] sees the whole request,
//! on a blocking thread, where it may take its time (compiling a handler).
//! A body over its limit is refused with 413 as soon as that is known, from
//! `Content-Length` or as it arrives, and is never held in memory whole.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{Context as _, Result};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, warn};
use serde_json::{Value, json};

use crate::server::http::endpoint::{HttpListener, Peer};
use crate::sys;

/// Longest a client may take to send a request's head: a client that
/// connects and dawdles costs a task and a socket, and only this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a client may take to send a body: room for a large component
/// over a slow link, and a bound on how long an upload can hold memory.
const BODY_TIMEOUT: Duration = Duration::from_secs(300);

/// Largest request head (request line and headers) read into memory.
const MAX_HEAD: usize = 64 * 1024;

/// How long to wait before accepting again after `accept` failed, for a
/// reason other than the client (out of file descriptors, typically).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a service answers: a status, a body, and any extra headers.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Body,
    /// Extra headers, such as `WWW-Authenticate`.
    pub headers: Vec<(&'static str, String)>,
}

/// A reply's body.
#[derive(Debug, Clone)]
pub enum Body {
    /// JSON, sent pretty-printed.
    Json(Value),
    /// Text of the given content type.
    Text {
        /// Its `Content-Type`.
        content_type: &'static str,
        /// The text.
        text: String,
    },
}

impl Reply {
    /// A JSON answer with `status`.
    pub fn json(status: u16, body: Value) -> Self {
        Reply {
            status,
            body: Body::Json(body),
            headers: Vec::new(),
        }
    }

    /// A 200 answer with a JSON body.
    pub fn ok(body: Value) -> Self {
        Reply::json(200, body)
    }

    /// A failure: `{"error": message}` with `status`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Reply::json(status, json!({ "error": message.into() }))
    }

    /// A text answer of `content_type`.
    pub fn text(status: u16, content_type: &'static str, text: String) -> Self {
        Reply {
            status,
            body: Body::Text { content_type, text },
            headers: Vec::new(),
        }
    }

    /// The `error` of a JSON failure, for log lines.
    pub fn message(&self) -> &str {
        match &self.body {
            Body::Json(value) => value["error"].as_str().unwrap_or_default(),
            Body::Text { .. } => "",
        }
    }

    /// The same, with a header added.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let (content_type, body) = match self.body {
            Body::Json(value) => ("application/json", format!("{value:#}\n")),
            Body::Text { content_type, text } => (content_type, text),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        response
    }
}

/// A service: what it admits, and how it answers.
pub trait Routes: Send + Sync + 'static {
    /// Looks at a request before its body is read: refuses it, or says how
    /// many bytes of body it may carry.
    fn admit(&self, head: &Parts, peer: &Peer) -> Result<usize, Reply>;

    /// Answers an admitted request, whose body is in. Runs on a thread that
    /// may block.
    fn answer(&self, head: Parts, body: Bytes, peer: &Peer) -> Reply;

    /// The answer to a body over the `limit` that [`Routes::admit`] gave.
    fn too_large(&self, limit: usize) -> Reply {
        Reply::error(
            413,
            format!("the body is larger than the {limit} bytes allowed"),
        )
    }
}

/// Stops a [`serve`]d API from accepting; cheap to clone.
#[derive(Clone)]
pub struct Closer(Arc<tokio::sync::Notify>);

impl Closer {
    /// Closes the listening socket: no new connections are accepted, while
    /// requests already in progress are answered. Used when another process
    /// takes over the same socket (an upgrade), so that every new request
    /// reaches the process that serves from now on.
    pub fn close(&self) {
        self.0.notify_one();
    }
}

/// Serves `routes` on `listener` from a thread of its own named `name`,
/// until the process exits or the returned [`Closer`] is used.
pub fn serve(listener: HttpListener, name: &str, routes: Arc<dyn Routes>) -> Result<Closer> {
    // Work here is background work: swaps compile on the blocking threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(sys::background_priority)
        .thread_name(format!("{name}-blocking"))
        .build()
        .with_context(|| format!("cannot start the {name} API's runtime"))?;
    let label = name.to_string();
    let closer = Closer(Arc::new(tokio::sync::Notify::new()));
    let closed = Arc::clone(&closer.0);
    thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    () = accept_forever(listener, &label, routes) => {}
                    () = closed.notified() => debug!("{label}: closed its listening socket"),
                }
                // The listener is closed; requests in progress carry on,
                // on this runtime, until the process exits.
                std::future::pending::<()>().await
            })
        })
        .with_context(|| format!("cannot start the {name} API's thread"))?;
    Ok(closer)
}

async fn accept_forever(listener: HttpListener, name: &str, routes: Arc<dyn Routes>) {
    let listener = match Accepting::new(listener) {
        Ok(listener) => listener,
        Err(e) => return warn!("{name}: cannot listen: {e}"),
    };
    loop {
        match listener.accept().await {
            Ok((io, peer)) => {
                let routes = Arc::clone(&routes);
                tokio::spawn(connection(io, peer, routes));
            }
            Err(e) => {
                warn!("{name}: accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// A listener registered with the runtime.
enum Accepting {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// An accepted connection, either kind.
enum Io {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Accepting {
    fn new(listener: HttpListener) -> io::Result<Self> {
        Ok(match listener {
            HttpListener::Tcp(listener) => {
                listener.set_nonblocking(true)?;
                Accepting::Tcp(tokio::net::TcpListener::from_std(listener)?)
            }
            HttpListener::Unix(listener, _) => {
                listener.set_nonblocking(true)?;
                Accepting::Unix(tokio::net::UnixListener::from_std(listener)?)
            }
        })
    }

    async fn accept(&self) -> io::Result<(Io, Peer)> {
        match self {
            Accepting::Tcp(listener) => {
                let (stream, addr) = listener.accept().await?;
                let local = stream.local_addr()?;
                Ok((Io::Tcp(stream), Peer::Tcp { addr, local }))
            }
            Accepting::Unix(listener) => {
                let (stream, _) = listener.accept().await?;
                let cred = stream.peer_cred()?;
                let peer = Peer::Unix {
                    uid: cred.uid(),
                    pid: cred.pid(),
                };
                Ok((Io::Unix(stream), peer))
            }
        }
    }
}

async fn connection(io: Io, peer: Peer, routes: Arc<dyn Routes>) {
    let service = service_fn(move |request| {
        let (routes, peer) = (Arc::clone(&routes), peer.clone());
        async move { Ok::<_, Infallible>(respond(routes, peer, request).await) }
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD);
    let served = match io {
        Io::Tcp(stream) => http.serve_connection(TokioIo::new(stream), service).await,
        Io::Unix(stream) => http.serve_connection(TokioIo::new(stream), service).await,
    };
    if let Err(e) = served {
        // A client that sent garbage, or left: hyper answered what it could.
        debug!("admin connection ended: {e}");
    }
}

async fn respond(
    routes: Arc<dyn Routes>,
    peer: Peer,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (head, body) = request.into_parts();
    let limit = match routes.admit(&head, &peer) {
        Ok(limit) => limit,
        Err(reply) => return reply.into_response(),
    };
    let declared = head
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return routes.too_large(limit).into_response();
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect()).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return routes.too_large(limit).into_response();
        }
        Ok(Err(e)) => {
            return Reply::error(400, format!("cannot read the body: {e}")).into_response();
        }
        Err(_) => {
            let message = format!("the body did not arrive within {BODY_TIMEOUT:?}");
            return Reply::error(408, message).into_response();
        }
    };
    let answered = tokio::task::spawn_blocking(move || routes.answer(head, body, &peer)).await;
    answered
        .unwrap_or_else(|e| Reply::error(500, format!("the request failed: {e}")))
        .into_response()
}
