//! Telling a service manager how the server is doing: systemd's `sd_notify`
//! protocol (`READY=1`, `STOPPING=1`, `MAINPID=`), a datagram to the socket
//! named by `NOTIFY_SOCKET`, when it is set.
//!
//! Written out rather than taken from the `sd-notify` crate because the
//! socket may be in Linux's abstract namespace (`@/org/...`, as in
//! containers), which that crate cannot reach; the protocol itself is one
//! datagram of `KEY=VALUE` lines.

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use log::{debug, warn};

/// The variable systemd sets, with `Type=notify`, to the socket it listens on.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (one `KEY=VALUE` per line) to the service manager, if there
/// is one. A failure is logged and otherwise ignored: the server serves the
/// same either way, and systemd reports a unit that never said `READY=1`.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    match send(&socket, state) {
        Ok(()) => debug!("told the service manager: {}", state.replace('\n', " ")),
        Err(e) => warn!(
            "cannot tell the service manager ({NOTIFY_SOCKET}={}) `{}`: {e}",
            socket.to_string_lossy(),
            state.replace('\n', " ")
        ),
    }
}

/// Whether a service manager is listening for notifications.
pub fn is_supervised() -> bool {
    std::env::var_os(NOTIFY_SOCKET).is_some()
}

fn send(socket: &OsString, state: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let datagram = UnixDatagram::unbound()?;
    datagram.connect_addr(&addr)?;
    let sent = datagram.send(state.as_bytes())?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the notification was cut short",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_and_an_abstract_name_both_receive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(&path.clone().into_os_string(), "READY=1\n").unwrap();
        let mut buf = [0; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");

        let name = format!("hotsock-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}").into(), "STOPPING=1\n").unwrap();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\n");
    }
}
