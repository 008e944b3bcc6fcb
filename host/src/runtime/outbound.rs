//! Outbound TCP grants (`--allow-connect HOST:PORT`): where a handler may
//! open connections of its own through WASI sockets, and the check wasmtime
//! calls before every socket operation.
//!
//! Everything else stays denied: binding to an address, listening,
//! accepting, UDP. A denied attempt is logged on the connection's log line
//! with the flag that would grant it, because the guest only sees
//! "access denied" and its author needs to know which grant is missing.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::IpNet;
use log::Level;
use wasmtime_wasi::sockets::SocketAddrUse;

use crate::runtime::console::Fields;

/// Most outbound connections one client connection's handler may open:
/// enough for a relay or a few backends, few enough that one connection
/// cannot turn the server into a port scanner.
pub const MAX_OUTBOUND_PER_CONNECTION: u32 = 16;

/// One `--allow-connect HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectGrant {
    /// As the operator wrote it, for messages.
    text: String,
    target: Target,
    /// `None` for `*`: any port.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// An address or a range.
    Net(IpNet),
    /// A name, and the addresses it resolved to when the grant was made.
    Name(String, Vec<IpAddr>),
}

impl ConnectGrant {
    /// Whether a handler may connect to `addr`.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        if self.port.is_some_and(|port| port != addr.port()) {
            return false;
        }
        let ip = addr.ip().to_canonical();
        match &self.target {
            Target::Net(net) => net.contains(&ip),
            Target::Name(_, ips) => ips.contains(&ip),
        }
    }

    /// Whether the handler must look the host up by name first.
    pub fn is_name(&self) -> bool {
        matches!(self.target, Target::Name(..))
    }

    /// Looks a name grant up (on this machine's resolver, now), so that
    /// connections to the addresses it has now are allowed.
    pub fn resolve(&mut self) -> Result<(), String> {
        let Target::Name(name, ips) = &mut self.target else {
            return Ok(());
        };
        let found = (name.as_str(), 0).to_socket_addrs().map_err(|e| {
            format!(
                "--allow-connect {}: cannot resolve `{name}`: {e}",
                self.text
            )
        })?;
        *ips = found.map(|a| a.ip().to_canonical()).collect();
        ips.sort();
        ips.dedup();
        Ok(())
    }
}

impl fmt::Display for ConnectGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for ConnectGrant {
    type Err = String;

    /// `HOST:PORT`: HOST an IP address, a CIDR range or a name (IPv6 in
    /// brackets, `[::1]:80`), PORT a number or `*`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "`{text}`: {why}; write HOST:PORT, e.g. 127.0.0.1:6379, \
                 10.0.0.0/8:5432, db.internal:*, [::1]:80"
            )
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']').ok_or_else(|| bad("unclosed `[`"))?,
            None if host.contains(':') => return Err(bad("put an IPv6 address in brackets")),
            None => host,
        };
        let port = match port {
            "*" => None,
            port => match port.parse::<u16>() {
                Ok(0) | Err(_) => return Err(bad("the port is a number from 1 to 65535, or *")),
                Ok(port) => Some(port),
            },
        };
        let target = if let Ok(ip) = host.parse::<IpAddr>() {
            Target::Net(IpNet::from(ip.to_canonical()))
        } else if host.contains('/') {
            let net = host
                .parse::<IpNet>()
                .map_err(|_| bad("not an address range"))?;
            if net.trunc() != net {
                return Err(bad(&format!(
                    "the range has host bits set (did you mean {}?)",
                    net.trunc()
                )));
            }
            Target::Net(net)
        } else if is_host_name(host) {
            Target::Name(host.to_ascii_lowercase(), Vec::new())
        } else {
            return Err(bad("not an address, a range or a host name"));
        };
        Ok(ConnectGrant {
            text: text.to_string(),
            target,
            port,
        })
    }
}

/// Letters, digits, `-` and `.`, as DNS names are written.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The socket check for one store: its grants, its connection's log fields,
/// and how many connections it has opened.
pub struct Check {
    grants: Arc<[ConnectGrant]>,
    fields: Fields,
    opened: AtomicU32,
}

impl Check {
    /// The check for a store granted `grants`, logging with `fields`.
    pub fn new(grants: Arc<[ConnectGrant]>, fields: Fields) -> Self {
        Check {
            grants,
            fields,
            opened: AtomicU32::new(0),
        }
    }

    /// Whether the guest may use `addr` for `usage`; a refusal is logged.
    pub fn decide(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        let denied = |why: fmt::Arguments<'_>| {
            self.fields.log(Level::Warn, why);
            false
        };
        match usage {
            // What wasmtime checks before a `connect` on an unbound socket
            // (the OS picks the local port). Harmless by itself (listening is
            // checked on its own), and allowing it lets the connect that
            // follows be the one refused, with its destination in the log.
            SocketAddrUse::TcpBind if addr.ip().is_unspecified() && addr.port() == 0 => true,
            SocketAddrUse::TcpConnect => {
                if !self.grants.iter().any(|g| g.allows(addr)) {
                    return denied(format_args!(
                        "denied: the handler tried to connect to {addr}; grant it with \
                         --allow-connect {addr}"
                    ));
                }
                if self.opened.fetch_add(1, Ordering::Relaxed) >= MAX_OUTBOUND_PER_CONNECTION {
                    return denied(format_args!(
                        "denied: the handler tried to connect to {addr}, but it has opened \
                         {MAX_OUTBOUND_PER_CONNECTION} connections already, the most one \
                         connection may"
                    ));
                }
                true
            }
            SocketAddrUse::TcpBind => denied(format_args!(
                "denied: the handler tried to bind a socket to {addr}; handlers may only \
                 connect out (--allow-connect), never bind"
            )),
            SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => denied(format_args!(
                "denied: the handler tried to listen for connections; only hotsock listens"
            )),
            SocketAddrUse::UdpBind | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
                denied(format_args!(
                    "denied: the handler tried to use UDP ({addr}); handlers may only open TCP \
                 connections granted with --allow-connect"
                ))
            }
        }
    }

    /// The check in the shape wasmtime-wasi takes.
    pub fn into_fn(
        self,
    ) -> impl Fn(SocketAddr, SocketAddrUse) -> Pin<Box<dyn Future<Output = bool> + Send + Sync>>
    + Send
    + Sync
    + 'static {
        move |addr, usage| {
            let allowed = self.decide(addr, usage);
            Box::pin(async move { allowed })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(text: &str) -> ConnectGrant {
        text.parse().unwrap()
    }

    #[test]
    fn grants_parse_and_match() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(grant("127.0.0.1:6379").allows(addr("127.0.0.1:6379")));
        assert!(!grant("127.0.0.1:6379").allows(addr("127.0.0.1:6380")));
        assert!(grant("10.0.0.0/8:*").allows(addr("10.1.2.3:1")));
        assert!(!grant("10.0.0.0/8:*").allows(addr("11.0.0.1:1")));
        assert!(grant("[::1]:80").allows(addr("[::1]:80")));
        // An IPv4-mapped IPv6 address is the IPv4 address.
        assert!(grant("127.0.0.1:80").allows(addr("[::ffff:127.0.0.1]:80")));
        assert!(grant("db.internal:5432").is_name());
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:x",
            "::1:80",
            "[::1:80",
            "10.0.0.1/8:80",
            "bad_name:80",
            ":80",
        ] {
            assert!(bad.parse::<ConnectGrant>().is_err(), "{bad}");
        }
        let host_bits = "10.0.0.1/8:80".parse::<ConnectGrant>().unwrap_err();
        assert!(host_bits.contains("did you mean 10.0.0.0/8"), "{host_bits}");
    }

    #[test]
    fn names_resolve_to_addresses() {
        let mut g = grant("localhost:7000");
        g.resolve().unwrap();
        assert!(g.allows("127.0.0.1:7000".parse().unwrap()));
    }

    #[test]
    fn only_granted_connects_pass() {
        let check = Check::new(Arc::from(vec![grant("127.0.0.1:7000")]), Fields::none());
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(check.decide(any, SocketAddrUse::TcpBind));
        assert!(check.decide("127.0.0.1:7000".parse().unwrap(), SocketAddrUse::TcpConnect));
        assert!(!check.decide("127.0.0.1:7001".parse().unwrap(), SocketAddrUse::TcpConnect));
        assert!(!check.decide("127.0.0.1:7000".parse().unwrap(), SocketAddrUse::TcpBind));
        assert!(!check.decide(any, SocketAddrUse::TcpListen));
        assert!(!check.decide(any, SocketAddrUse::UdpBind));
        let none = Check::new(Arc::from(Vec::new()), Fields::none());
        assert!(none.decide(any, SocketAddrUse::TcpBind));
        assert!(!none.decide("127.0.0.1:7000".parse().unwrap(), SocketAddrUse::TcpConnect));
        for _ in 1..MAX_OUTBOUND_PER_CONNECTION {
            assert!(check.decide("127.0.0.1:7000".parse().unwrap(), SocketAddrUse::TcpConnect));
        }
        assert!(!check.decide("127.0.0.1:7000".parse().unwrap(), SocketAddrUse::TcpConnect));
    }
}
