//! Where a control-plane API listens: a TCP address or a Unix socket, and
//! who is on the other end of a connection.

use std::fmt;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::server::accept::bind_one;

/// Clients a Unix socket holds until accepted: the admin API sees a handful.
const UNIX_BACKLOG: i32 = 128;

/// An address to listen on or connect to: `IP:PORT`, or any other text as
/// the path of a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address.
    Tcp(SocketAddr),
    /// The path of a Unix socket.
    Unix(PathBuf),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse() {
            return Ok(Endpoint::Tcp(addr));
        }
        if text.is_empty() {
            return Err("an empty address: give IP:PORT or the path of a Unix socket".into());
        }
        // `localhost:50008` would otherwise become a socket file of that name.
        let host_port = !text.contains('/')
            && text.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
            });
        if host_port {
            return Err(format!(
                "`{text}` names a host: give an IP address and port (e.g. 127.0.0.1:50008), \
                 or the path of a Unix socket (e.g. ./hotsock.sock)"
            ));
        }
        Ok(Endpoint::Unix(text.into()))
    }
}

impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A process on this machine, as the kernel vouches for it.
    Unix {
        /// Its effective user id.
        uid: u32,
        /// Its process id, if the kernel knows it.
        pid: Option<i32>,
    },
    /// A TCP client.
    Tcp {
        /// Its address.
        addr: SocketAddr,
        /// The address it connected to: ours, as it reached us.
        local: SocketAddr,
    },
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Unix {
                uid,
                pid: Some(pid),
            } => write!(f, "uid {uid} (pid {pid})"),
            Peer::Unix { uid, pid: None } => write!(f, "uid {uid}"),
            Peer::Tcp { addr, .. } => write!(f, "{addr}"),
        }
    }
}

/// A bound, listening socket.
#[derive(Debug)]
pub enum HttpListener {
    /// On a TCP address.
    Tcp(std::net::TcpListener),
    /// On a Unix socket.
    Unix(UnixListener, PathBuf),
}

impl AsFd for HttpListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            HttpListener::Tcp(listener) => listener.as_fd(),
            HttpListener::Unix(listener, _) => listener.as_fd(),
        }
    }
}

impl HttpListener {
    /// Where it listens, as bound (a port 0 becomes the port given).
    pub fn endpoint(&self) -> io::Result<Endpoint> {
        Ok(match self {
            HttpListener::Tcp(listener) => Endpoint::Tcp(listener.local_addr()?),
            HttpListener::Unix(_, path) => Endpoint::Unix(path.clone()),
        })
    }
}

/// A Unix socket's file, removed when this is dropped: keep it for as long as
/// the socket is served.
#[derive(Debug)]
pub struct SocketFile(Option<PathBuf>);

impl SocketFile {
    /// Takes charge of the file of a socket this process was handed (by
    /// systemd, or the process an upgrade replaced), to remove it on exit.
    pub fn adopt(path: PathBuf) -> Self {
        SocketFile(Some(path))
    }

    /// Leaves the file in place: another process serves the socket now.
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            // Already gone (removed by hand) is as good as removed.
            let _ = fs::remove_file(path);
        }
    }
}

/// Binds `endpoint`, given by the command-line option `option`. A Unix socket
/// is created readable and writable by this user only, before anyone can
/// connect to it; a stale one left by a server that died is replaced, a live
/// one or any other file is not.
pub fn bind(endpoint: &Endpoint, option: &str) -> Result<(HttpListener, Option<SocketFile>)> {
    match endpoint {
        Endpoint::Tcp(addr) => Ok((
            HttpListener::Tcp(bind_one(&addr.to_string(), option, false)?),
            None,
        )),
        Endpoint::Unix(path) => {
            let listener = bind_unix(path, option)?;
            Ok((
                HttpListener::Unix(listener, path.clone()),
                Some(SocketFile::adopt(path.clone())),
            ))
        }
    }
}

fn bind_unix(path: &Path, option: &str) -> Result<UnixListener> {
    let shown = path.display();
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{option} {shown}: the file exists and is not a socket: choose another path");
        }
        match UnixStream::connect(path) {
            Ok(_) => bail!(
                "{option} {shown}: another process is serving on this socket: stop it, or \
                 choose another path"
            ),
            // Nobody listens: left by a server that did not exit cleanly.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => fs::remove_file(path)
                .with_context(|| format!("{option} {shown}: cannot remove the stale socket"))?,
            Err(e) => bail!("{option} {shown}: cannot tell whether the socket is in use: {e}"),
        }
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket
        .bind(&SockAddr::unix(path)?)
        .with_context(|| format!("{option} {shown}: cannot create the socket"))?;
    // Before `listen`, connecting is refused, so nobody gets in while the
    // file still has the umask's permissions.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("{option} {shown}: cannot make the socket private"))?;
    socket.listen(UNIX_BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_tcp_and_anything_else_a_path() {
        assert_eq!(
            "127.0.0.1:50008".parse(),
            Ok(Endpoint::Tcp("127.0.0.1:50008".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:0".parse(),
            Ok(Endpoint::Tcp("[::1]:0".parse().unwrap()))
        );
        assert_eq!(
            "run/hotsock.sock".parse(),
            Ok(Endpoint::Unix("run/hotsock.sock".into()))
        );
        assert_eq!("admin".parse(), Ok(Endpoint::Unix("admin".into())));
        let host = "localhost:50008".parse::<Endpoint>().unwrap_err();
        assert!(host.contains("names a host"), "{host}");
        assert!("".parse::<Endpoint>().is_err());
    }
}
