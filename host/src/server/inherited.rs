//! Listening sockets this process was started with instead of binding its
//! own: from systemd (socket activation) or from the hotsock process it
//! replaces (a binary upgrade). Both use systemd's convention: descriptors
//! 3, 4, ... with `LISTEN_FDS` saying how many and `LISTEN_FDNAMES` their
//! names, colon-separated.
//!
//! A socket is matched to a listener by name: `FileDescriptorName=` in a
//! `.socket` unit, the listener's name in a config file (`default` without
//! one). `admin` and `metrics` name the admin API's and the metrics
//! listener's. With a single listener, sockets of any other name are its
//! own, so a plain `hotsock.socket` needs no names at all.

use std::collections::BTreeMap;
use std::fmt;
use std::net::TcpListener;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Socket, Type};

use crate::server::http::HttpListener;
use crate::sys;

/// The name of the admin API's socket.
pub const ADMIN_SOCKET: &str = "admin";

/// The name of the metrics listener's socket.
pub const METRICS_SOCKET: &str = "metrics";

/// systemd's variables: how many descriptors, their names, and the process
/// they are meant for.
const LISTEN_FDS: &str = "LISTEN_FDS";
const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
const LISTEN_PID: &str = "LISTEN_PID";

/// The most inherited descriptors believed: a bound on a corrupt variable.
const MAX_INHERITED: usize = 1024;

/// Where inherited sockets came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// systemd, or another socket activator (`LISTEN_PID` is this process).
    Activation,
    /// The hotsock process this one is replacing.
    Upgrade,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Activation => "socket activation",
            Source::Upgrade => "the process being upgraded",
        })
    }
}

/// The inherited sockets not yet claimed, by name.
#[derive(Debug, Default)]
pub struct Inherited {
    source: Option<Source>,
    sockets: BTreeMap<String, Vec<Socket>>,
}

impl Inherited {
    /// No inherited sockets: every listener binds its own.
    pub fn none() -> Self {
        Inherited::default()
    }

    /// The sockets passed to this process, if any. `upgrade_from` is the
    /// process id of the hotsock process that started this one to replace
    /// it, which passes sockets without `LISTEN_PID` (it cannot know its
    /// child's process id before starting it).
    ///
    /// Descriptors that are not listening stream sockets are an error, not
    /// something to serve badly.
    pub fn from_env(upgrade_from: Option<u32>) -> Result<Self> {
        let source = match (std::env::var(LISTEN_PID), upgrade_from) {
            (_, Some(parent)) if parent == sys::parent_pid() => Source::Upgrade,
            (Ok(pid), _) if pid.trim() == std::process::id().to_string() => Source::Activation,
            // Meant for another process (a parent that did not clear it).
            _ => return Ok(Inherited::none()),
        };
        let Ok(count) = std::env::var(LISTEN_FDS) else {
            return Ok(Inherited::none());
        };
        let count: usize = count
            .trim()
            .parse()
            .ok()
            .filter(|&n| n <= MAX_INHERITED)
            .with_context(|| format!("{LISTEN_FDS}={count} from {source} is not a count"))?;
        let names: Vec<String> = match std::env::var(LISTEN_FDNAMES) {
            Ok(names) if !names.is_empty() => names.split(':').map(str::to_string).collect(),
            _ => vec![String::new(); count],
        };
        if names.len() != count {
            bail!(
                "{LISTEN_FDNAMES} from {source} names {} socket(s), {LISTEN_FDS} says {count}",
                names.len()
            );
        }
        let mut inherited = Inherited {
            source: Some(source),
            sockets: BTreeMap::new(),
        };
        for (i, name) in names.into_iter().enumerate() {
            let fd = sys::FIRST_INHERITED_FD + i as RawFd;
            // SAFETY: by the protocol, descriptors 3 .. 3 + LISTEN_FDS are
            // open and were passed to this process to take; nothing in this
            // process has opened them before this runs, at start.
            let owned = unsafe { sys::adopt_inherited(fd) }
                .with_context(|| format!("descriptor {fd} ({name:?}) from {source} is not open"))?;
            let socket = listening_stream(owned)
                .with_context(|| format!("descriptor {fd} ({name:?}) from {source}"))?;
            inherited.sockets.entry(name).or_default().push(socket);
        }
        Ok(inherited)
    }

    /// Where the sockets came from, if any were passed in.
    pub fn source(&self) -> Option<Source> {
        self.source
    }

    /// Takes the TCP sockets of listener `name`; with `only` (the server has
    /// one listener), also those of any name that is not `admin` or
    /// `metrics`. Empty if none were inherited: the listener binds its own.
    pub fn take_listener(&mut self, name: &str, only: bool) -> Result<Vec<TcpListener>> {
        let names: Vec<String> = self
            .sockets
            .keys()
            .filter(|n| *n == name || (only && *n != ADMIN_SOCKET && *n != METRICS_SOCKET))
            .cloned()
            .collect();
        let mut listeners = Vec::new();
        for shown in names {
            for socket in self.sockets.remove(&shown).unwrap_or_default() {
                match socket.domain()? {
                    Domain::IPV4 | Domain::IPV6 => listeners.push(socket.into()),
                    _ => bail!(
                        "the inherited socket {shown:?} for listener {name} is not a TCP socket"
                    ),
                }
            }
        }
        Ok(listeners)
    }

    /// Takes the socket named `name` (`admin` or `metrics`), TCP or Unix.
    pub fn take_http(&mut self, name: &str) -> Result<Option<HttpListener>> {
        let Some(mut sockets) = self.sockets.remove(name) else {
            return Ok(None);
        };
        if sockets.len() > 1 {
            bail!(
                "{} inherited sockets are named {name:?}: one is used",
                sockets.len()
            );
        }
        let Some(socket) = sockets.pop() else {
            return Ok(None);
        };
        Ok(Some(match socket.domain()? {
            Domain::IPV4 | Domain::IPV6 => HttpListener::Tcp(socket.into()),
            Domain::UNIX => {
                let listener: UnixListener = socket.into();
                let path = listener
                    .local_addr()?
                    .as_pathname()
                    .map(|p| p.to_path_buf())
                    .with_context(|| format!("the inherited socket {name:?} has no path"))?;
                HttpListener::Unix(listener, path)
            }
            _ => bail!("the inherited socket {name:?} is neither TCP nor a Unix socket"),
        }))
    }

    /// Checks that every inherited socket found its listener: one that did
    /// not would be a port nobody serves.
    pub fn finish(self, listeners: &[&str]) -> Result<()> {
        if let Some(name) = self.sockets.keys().next() {
            bail!(
                "an inherited socket is named {name:?}, which matches no listener (there are: \
                 {}; and `{ADMIN_SOCKET}`, `{METRICS_SOCKET}`): name it after one \
                 (FileDescriptorName= in the .socket unit)",
                listeners.join(", ")
            );
        }
        Ok(())
    }
}

/// `fd` as a socket, if it is a stream socket that is listening.
fn listening_stream(fd: OwnedFd) -> Result<Socket> {
    let socket = Socket::from(fd);
    let kind = socket
        .r#type()
        .context("not a socket: socket activation passes listening sockets")?;
    if kind != Type::STREAM {
        bail!("not a stream socket: hotsock serves TCP (ListenStream= in the .socket unit)");
    }
    if !socket.is_listener()? {
        bail!("the socket is not listening (Accept=no in the .socket unit passes listening ones)");
    }
    Ok(socket)
}
