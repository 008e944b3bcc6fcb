//! Guest stdout and stderr, forwarded to the host log one line at a time.
//!
//! WASI drops guest output unless the host supplies streams of its own. Each
//! connection gets a [`Console`] per stream whose lines are logged with the
//! connection id and peer, so a plugin author's `println!` is never lost.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use log::Level;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept before it is logged without waiting for its newline, so a
/// guest that never prints `\n` cannot make the host buffer without bound.
pub const MAX_LINE: usize = 4096;

/// Most bytes the guest may hand over in one `write`: it is logged at once, so
/// this only bounds the size of a single copy.
const WRITE_PERMIT: usize = 64 * 1024;

/// One guest output stream (stdout or stderr) of one connection.
#[derive(Clone)]
pub struct Console(Arc<Mutex<Lines>>);

struct Lines {
    /// `conn 7 127.0.0.1:50275 stdout`: who printed it.
    label: String,
    level: Level,
    pending: Vec<u8>,
}

impl Console {
    /// A stream whose lines are logged at `level`, prefixed with `label`.
    pub fn new(label: String, level: Level) -> Self {
        Console(Arc::new(Mutex::new(Lines {
            label,
            level,
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
        if !line.is_empty() {
            let line = String::from_utf8_lossy(line);
            log::log!(self.level, "{}: {line}", self.label);
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
