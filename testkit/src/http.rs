//! One HTTP/1.1 client for the HTTP APIs of servers on loopback (hotsock's
//! admin API): ureq, configured once for what a test or the bench needs.
//!
//! - Never through a proxy: ureq reads `http_proxy` and friends by default,
//!   and a proxy set for the machine would otherwise see, or refuse,
//!   requests to 127.0.0.1.
//! - Every status code is an answer, not an error, and redirects are not
//!   followed: callers check codes such as 404 and 405 themselves.
//! - One timeout for the whole request, so a silent server fails the
//!   caller instead of hanging it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use ureq::http::{Method, Request};

/// The whole request's time limit for [`request`]: ample for a status
/// query; a request that compiles a handler (a swap) wants
/// [`Client::new`] with more.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer: its status code, headers and whole body (ureq refuses a body
/// over 10 MB).
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code, 4xx and 5xx included.
    pub status: u16,
    /// The headers, in the order they came; names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The `Content-Type` header.
    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the answer ({}) is not JSON: {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The body as text, with anything that is not UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client with its own time limit. Connections are kept for reuse for as
/// long as the client lives.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
}

impl Client {
    /// A client whose requests, each from connecting to the end of the
    /// answer, may take up to `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .build()
            .new_agent();
        Client { agent }
    }

    /// Sends `method path` to `addr` with `headers` (besides `Host` and
    /// `Content-Length`, which are set) and `body`, and reads the whole
    /// answer. An error means there was no answer: the server could not be
    /// reached, took too long, or did not speak HTTP.
    pub fn request(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        let url = format!("http://{addr}{path}");
        let what = || format!("{method} {url}");
        let method = Method::from_bytes(method.as_bytes())
            .with_context(|| format!("{method:?} is not an HTTP method"))?;
        let mut request = Request::builder().method(method).uri(url.as_str());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(body)
            .with_context(|| format!("cannot make the request {}", what()))?;
        let mut response = self.agent.run(request).with_context(what)?;
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_string(), value)
            })
            .collect();
        let body = response
            .body_mut()
            .read_to_vec()
            .with_context(|| format!("{}: cannot read the answer's body", what()))?;
        Ok(Response {
            status: response.status().as_u16(),
            headers,
            body,
        })
    }
}

impl Default for Client {
    /// A client with [`DEFAULT_TIMEOUT`].
    fn default() -> Self {
        Client::new(DEFAULT_TIMEOUT)
    }
}

/// One request with a fresh [`Client::default`]; see [`Client::request`].
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    Client::default().request(addr, method, path, headers, body)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// Serves one request with `answer`, and returns what the request was.
    fn one_shot(answer: &'static str) -> (SocketAddr, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            while !head.ends_with("\r\n\r\n") {
                assert!(reader.read_line(&mut head).unwrap() > 0, "{head}");
            }
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .map_or(0, |n| n.parse().unwrap());
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            reader.get_mut().write_all(answer.as_bytes()).unwrap();
            head + &String::from_utf8(body).unwrap()
        });
        (addr, server)
    }

    #[test]
    fn sends_the_headers_and_body_and_returns_an_error_status_as_an_answer() {
        let (addr, server) = one_shot(
            "HTTP/1.1 415 Unsupported Media Type\r\nContent-Type: application/json\r\n\
             Content-Length: 17\r\nConnection: close\r\n\r\n{\"error\":\"nope\"}\n",
        );
        let response = request(
            addr,
            "POST",
            "/handler?x=1",
            &[
                ("Origin", "http://evil.example"),
                ("Content-Type", "text/plain"),
            ],
            b"not wasm",
        )
        .unwrap();
        assert_eq!(response.status, 415);
        assert_eq!(response.content_type(), Some("application/json"));
        assert_eq!(response.json().unwrap()["error"], "nope");
        let sent = server.join().unwrap();
        assert!(sent.starts_with("POST /handler?x=1 HTTP/1.1\r\n"), "{sent}");
        let lower = sent.to_ascii_lowercase();
        assert!(
            lower.contains("\r\norigin: http://evil.example\r\n"),
            "{sent}"
        );
        assert!(lower.contains("\r\ncontent-type: text/plain\r\n"), "{sent}");
        assert!(lower.contains(&format!("\r\nhost: {addr}\r\n")), "{sent}");
        assert!(sent.ends_with("\r\n\r\nnot wasm"), "{sent}");
    }

    #[test]
    fn does_not_follow_redirects() {
        let (addr, server) = one_shot(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
        );
        let response = request(addr, "GET", "/", &[], b"").unwrap();
        assert_eq!(response.status, 302);
        assert_eq!(response.header("location"), Some("http://127.0.0.1:1/"));
        server.join().unwrap();
    }

    #[test]
    fn never_uses_a_proxy() {
        // The environment may name one; the configuration must win over it.
        assert!(Client::default().agent.config().proxy().is_none());
    }

    #[test]
    fn says_when_nothing_answers() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let error = request(addr, "GET", "/status", &[], b"").unwrap_err();
        assert!(
            format!("{error:#}").starts_with(&format!("GET http://{addr}/status: ")),
            "{error:#}"
        );
    }
}
