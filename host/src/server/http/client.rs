//! The one HTTP client: for `hotsock swap`, `status` and `rollback`, and for
//! the tests and the bench. Blocking, one request per connection, over TCP
//! or a Unix socket; no proxies, no redirects, every status returned.

use std::fmt;
use std::io;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::HOST;
use hyper_util::rt::TokioIo;

use crate::server::http::endpoint::Endpoint;

/// A connection to the server could not be made: nobody listens there, or
/// (for a Unix socket) this user may not use it.
#[derive(Debug)]
pub struct Unreachable(pub io::Error);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot connect: {}", self.0)
    }
}

impl std::error::Error for Unreachable {}

/// A client of one endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    timeout: Duration,
}

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the answer is not JSON: {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl Client {
    /// A client of `endpoint` whose requests give up after `timeout`.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Self {
        Client { endpoint, timeout }
    }

    /// Sends one request and reads the whole answer. `headers` come on top
    /// of `Content-Length` and `Host` (the endpoint's address, `localhost`
    /// for a Unix socket, unless `headers` has one). An error means there was no answer; a connection
    /// that could not be made is an [`Unreachable`] in the chain.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        let host = match &self.endpoint {
            Endpoint::Tcp(addr) => addr.to_string(),
            Endpoint::Unix(_) => "localhost".to_string(),
        };
        let mut request = Request::builder().method(method).uri(path);
        // A caller's own Host (a test of what the server refuses) replaces ours.
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            request = request.header(HOST, host);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .with_context(|| format!("cannot make the request {method} {path}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the HTTP client")?;
        // The timer belongs to the runtime: made inside it.
        let sent = runtime
            .block_on(async { tokio::time::timeout(self.timeout, self.send(request)).await });
        sent.map_err(|_| anyhow!("no answer within {:?}", self.timeout))?
            .with_context(|| format!("{method} {path} on {}", self.endpoint))
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response> {
        match &self.endpoint {
            Endpoint::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(Unreachable)?;
                exchange(TokioIo::new(stream), request).await
            }
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(Unreachable)?;
                exchange(TokioIo::new(stream), request).await
            }
        }
    }
}

async fn exchange<T>(io: T, request: Request<Full<Bytes>>) -> Result<Response>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::handshake(io).await?;
    // Drives the connection; ends with it.
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_string(), value)
        })
        .collect();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    Ok(Response {
        status,
        headers,
        body,
    })
}
