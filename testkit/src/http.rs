//! HTTP for the tests and the bench: hotsock's own client
//! ([`hotsock::server::http::Client`]), the one `hotsock swap|status|rollback`
//! use, over TCP or a Unix socket. Every status code is an answer, not an
//! error, and one timeout covers the whole request, so a silent server fails
//! the caller instead of hanging it.

use std::time::Duration;

use anyhow::Result;

pub use hotsock::server::http::{Client, Endpoint, Response};

/// The whole request's time limit for [`request`]: ample for a status
/// query; a request that compiles a handler (a swap) wants a [`Client`]
/// with more.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One request to `endpoint` with [`DEFAULT_TIMEOUT`]; `headers` come on top
/// of `Host` and `Content-Length`.
pub fn request(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    Client::new(endpoint.clone(), DEFAULT_TIMEOUT).request(method, path, headers, body)
}

/// The body of `response` as text, anything not UTF-8 replaced.
pub fn text(response: &Response) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread;

    #[test]
    fn reads_any_status_and_sends_the_headers_given() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            let mut body = [0; 5];
            stream.read_exact(&mut body).unwrap();
            stream
                .write_all(b"HTTP/1.1 418 I'm a teapot\r\nContent-Type: application/json\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{\"a\": 1}\n")
                .unwrap();
            (String::from_utf8(head).unwrap(), body)
        });
        let response = request(
            &Endpoint::Tcp(addr),
            "POST",
            "/x",
            &[("x-test", "yes")],
            b"hello",
        )
        .unwrap();
        assert_eq!(response.status, 418);
        assert_eq!(response.header("Content-Type"), Some("application/json"));
        assert_eq!(response.json().unwrap()["a"], 1);
        let (head, body) = server.join().unwrap();
        assert!(head.starts_with("POST /x HTTP/1.1\r\n"), "{head}");
        assert!(head.to_ascii_lowercase().contains("x-test: yes"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains(&format!("host: {addr}")),
            "{head}"
        );
        assert_eq!(&body, b"hello");
    }
}
