//! Guest stdout and stderr, forwarded to the host log one line at a time, and
//! the fields that tie a log line to its connection.
//!
//! WASI drops guest output unless the host supplies streams of its own. Each
//! connection gets a [`Console`] per stream whose lines are logged with the
//! connection's [`Fields`], so a plugin author's `println!` is never lost and
//! a log shipper sees which connection printed it.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use log::kv::{Key, Value};
use log::{Level, Record};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept before it is logged without waiting for its newline, so a
/// guest that never prints `\n` cannot make the host buffer without bound.
pub const MAX_LINE: usize = 4096;

/// Most bytes the guest may hand over in one `write`: it is logged at once, so
/// this only bounds the size of a single copy.
const WRITE_PERMIT: usize = 64 * 1024;

/// What ties log lines to one connection, as key-value pairs on each line:
/// `conn`, `peer`, `version`, `listener`. The text log shows them as the
/// line's prefix (`conn 7 127.0.0.1:50275 v1-1d2e8999: ...`), the JSON log
/// as fields.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    /// Shared: a connection's console streams, socket check and store each
    /// hold the same fields, and a clone is a reference count.
    pairs: Arc<Vec<(&'static str, FieldValue)>>,
}

/// A field's value: connection ids stay numbers in JSON.
#[derive(Debug, Clone)]
enum FieldValue {
    Number(u64),
    Text(String),
}

impl Fields {
    /// No fields: for what is not a connection's (a handler being checked).
    pub fn none() -> Self {
        Fields::default()
    }

    /// Adds a numeric field.
    pub fn number(mut self, key: &'static str, value: u64) -> Self {
        Arc::make_mut(&mut self.pairs).push((key, FieldValue::Number(value)));
        self
    }

    /// Adds a text field.
    pub fn text(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        Arc::make_mut(&mut self.pairs).push((key, FieldValue::Text(value.to_string())));
        self
    }

    /// Logs `message` at `level` with these fields, if the log takes `level`.
    pub fn log(&self, level: Level, message: fmt::Arguments<'_>) {
        let logger = log::logger();
        let metadata = log::Metadata::builder()
            .level(level)
            .target(module_path!())
            .build();
        if !log::log_enabled!(level) || !logger.enabled(&metadata) {
            return;
        }
        let pairs: Vec<(Key<'_>, Value<'_>)> = self
            .pairs
            .iter()
            .map(|(key, value)| {
                let value = match value {
                    FieldValue::Number(n) => Value::from(*n),
                    FieldValue::Text(text) => Value::from(text.as_str()),
                };
                (Key::from_str(key), value)
            })
            .collect();
        logger.log(
            &Record::builder()
                .metadata(metadata)
                .args(message)
                .key_values(&pairs.as_slice())
                .build(),
        );
    }
}

/// The level guest output is logged at, stderr included: a handler's stderr
/// is its debug prints as often as its errors, and when it fails the host
/// logs that itself, at WARN, with the guest backtrace.
const GUEST_OUTPUT_LEVEL: Level = Level::Info;

/// What the note that ends a Rust panic's report on stderr advises setting:
/// `RUST_BACKTRACE=1`, or `=full` once it is set. Under hotsock the advice is
/// false: std cannot walk a wasm stack (its `stack backtrace:` comes out
/// empty), and hotsock logs the guest backtrace itself when the connection
/// closes.
const RUST_BACKTRACE_ADVICE: &[u8] = b"`RUST_BACKTRACE=";

/// One guest output stream (stdout or stderr) of one connection.
#[derive(Clone)]
pub struct Console(Arc<Mutex<Lines>>);

struct Lines {
    /// Who printed it: the connection's fields, and `stream`.
    fields: Fields,
    /// Whether this is stderr, where a panic's report goes.
    stderr: bool,
    pending: Vec<u8>,
}

impl Console {
    /// The stream `stream` (`stdout` or `stderr`) of the connection with
    /// `fields`, whose lines are logged at INFO.
    pub fn new(fields: &Fields, stream: &'static str) -> Self {
        Console(Arc::new(Mutex::new(Lines {
            fields: fields.clone().text("stream", stream),
            stderr: stream == "stderr",
            pending: Vec::new(),
        })))
    }

    fn push(&self, bytes: &[u8]) {
        // A poisoned lock only means another write panicked mid-line; the
        // buffer is still valid bytes, so keep logging.
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.push(bytes);
    }
}

impl Lines {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&bytes[..end]);
            self.emit();
            bytes = &bytes[end + 1..];
        }
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            self.emit();
            self.pending = rest;
        }
    }

    fn emit(&mut self) {
        let line = self.pending.strip_suffix(b"\r").unwrap_or(&self.pending);
        // Blank lines carry nothing and only split up a guest's panic report.
        let advice = self.stderr
            && line.starts_with(b"note: ")
            && line
                .windows(RUST_BACKTRACE_ADVICE.len())
                .any(|w| w == RUST_BACKTRACE_ADVICE);
        if !line.is_empty() && !advice {
            let line = String::from_utf8_lossy(line);
            self.fields.log(GUEST_OUTPUT_LEVEL, format_args!("{line}"));
        }
        self.pending.clear();
    }
}

impl Drop for Lines {
    /// The last line of a guest that exits without a newline still counts.
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for Console {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Console {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        // Overridden so guest writes are logged synchronously instead of going
        // through the default adapter's background task.
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Console {
    async fn ready(&mut self) {}
}

impl OutputStream for Console {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for Console {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
