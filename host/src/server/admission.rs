//! Admission control: at most `--max-connections` connections at once, and
//! at most `--max-connections-per-ip` from one client address.
//!
//! The same maximum sizes the instance pool, so a connection that is admitted
//! always finds an instance slot. A [`Slot`] is a guard value: whichever way a
//! connection ends, dropping its slot frees it, and its address's share, so
//! the counts cannot leak.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::warn;
use mio::Waker;
use serde::{Deserialize, Serialize};

use crate::sys;

/// What to do with a new client while every slot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Leave it in the listen backlog until a slot frees up.
    Wait,
    /// Accept it and close it at once, so it fails fast.
    Close,
}

impl std::str::FromStr for WhenFull {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "wait" => Ok(WhenFull::Wait),
            "close" => Ok(WhenFull::Close),
            other => Err(format!("when-full is `wait` or `close`, not `{other}`")),
        }
    }
}

impl std::fmt::Display for WhenFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WhenFull::Wait => "wait",
            WhenFull::Close => "close",
        })
    }
}

impl<'de> Deserialize<'de> for WhenFull {
    /// `"wait"` or `"close"`, as on the command line.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a client was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot was taken (`--when-full close`).
    Full,
    /// Its address already had `--max-connections-per-ip` connections.
    PerIp,
    /// No thread could be started for it: the machine ran out of something.
    NoThread,
    /// It came from a source not trusted to send a PROXY header
    /// (`--proxy-from`), on a `--proxy-protocol` listener.
    Untrusted,
    /// Its PROXY header was missing, invalid or too slow.
    ProxyHeader,
    /// It did not finish the TLS handshake within
    /// `--tls-handshake-timeout`: most often a client that says nothing.
    TlsTimeout,
    /// It spoke plaintext to a TLS listener.
    TlsPlaintext,
    /// It sent no client certificate where one is required, or one the
    /// client CA did not sign.
    TlsClientCertificate,
    /// Its TLS handshake failed otherwise: no protocol version or cipher in
    /// common, a client that refused our certificate, a broken record.
    TlsHandshake,
}

impl Refusal {
    const ALL: [Refusal; 9] = [
        Refusal::Full,
        Refusal::PerIp,
        Refusal::NoThread,
        Refusal::Untrusted,
        Refusal::ProxyHeader,
        Refusal::TlsTimeout,
        Refusal::TlsPlaintext,
        Refusal::TlsClientCertificate,
        Refusal::TlsHandshake,
    ];

    /// The stable name `/status` counts it under.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::PerIp => "per_ip",
            Refusal::NoThread => "no_thread",
            Refusal::Untrusted => "untrusted",
            Refusal::ProxyHeader => "proxy_header",
            Refusal::TlsTimeout => "tls_timeout",
            Refusal::TlsPlaintext => "tls_plaintext",
            Refusal::TlsClientCertificate => "tls_client_certificate",
            Refusal::TlsHandshake => "tls_handshake",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Least time between two log lines about refused clients, per reason: a
/// flood of clients must not become a flood of log lines.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Counts open connections against the limits. The total is fixed (it
/// sized the instance pool); the per-address limit is each connection's
/// own, from the settings it was accepted under, so a reload never applies
/// half of one generation's rules.
pub struct Admission {
    max: usize,
    open: Mutex<Open>,
    idle: Condvar,
    /// Wakes the accept loop when a slot frees up while it is waiting for one.
    wake_accept: Arc<Waker>,
    accepted: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    saturated: AtomicU64,
    last_logged: Mutex<[Option<Instant>; Refusal::ALL.len()]>,
}

/// The open connections, in all and per address.
#[derive(Default)]
struct Open {
    total: usize,
    /// Only with a per-address limit; an address leaves when its last
    /// connection closes, so this holds no more entries than connections.
    by_ip: HashMap<IpAddr, u32>,
}

/// One admitted connection's place; dropping it frees the place.
pub struct Slot {
    admission: Arc<Admission>,
    /// The address whose share it counts in, with a per-address limit.
    ip: Option<IpAddr>,
}

impl Admission {
    /// Admits up to `max` connections; `wake_accept` wakes the accept loop.
    pub fn new(max: u32, wake_accept: Arc<Waker>) -> Self {
        Admission {
            max: max as usize,
            open: Mutex::new(Open::default()),
            idle: Condvar::new(),
            wake_accept,
            accepted: AtomicU64::new(0),
            refused: Default::default(),
            saturated: AtomicU64::new(0),
            last_logged: Mutex::new([None; Refusal::ALL.len()]),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        // Every change is a count going up or down by one.
        sys::lock(&self.open)
    }

    /// Takes a slot for a new connection from `ip`, at most `per_ip` from
    /// one address, or says why not. `None` when the client's address is not
    /// known yet (a PROXY header will tell): [`Slot::claim`] counts it
    /// against its address then.
    pub fn try_admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        per_ip: Option<u32>,
    ) -> Result<Slot, Refusal> {
        let mut open = self.lock();
        if open.total >= self.max {
            return Err(Refusal::Full);
        }
        let ip = match ip {
            Some(ip) => count_ip(&mut open, ip, per_ip)?,
            None => None,
        };
        open.total += 1;
        if open.total == self.max {
            self.saturated.fetch_add(1, Ordering::Relaxed);
        }
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            admission: Arc::clone(self),
            ip,
        })
    }

    /// Whether every slot is taken.
    pub fn is_full(&self) -> bool {
        self.lock().total >= self.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Counts a client closed at once, and says so at most once a second
    /// per reason; `detail` is what went wrong, for [`Refusal::NoThread`],
    /// [`Refusal::PerIp`] (the limit) and [`Refusal::ProxyHeader`].
    pub fn refuse(&self, why: Refusal, peer: SocketAddr, detail: &str) {
        let refused = self.refused[why.index()].fetch_add(1, Ordering::Relaxed) + 1;
        if why == Refusal::Full {
            return self.log_full(WhenFull::Close);
        }
        {
            let mut last = sys::lock(&self.last_logged);
            let last = &mut last[why.index()];
            if last.is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        match why {
            Refusal::Full => {}
            Refusal::PerIp => warn!(
                "{} already has {detail} connections, the most one address may have \
                 (--max-connections-per-ip): closing its new ones; {refused} closed so far",
                peer.ip(),
            ),
            Refusal::NoThread => warn!(
                "conn from {peer}: cannot start a thread for it ({detail}): closing it; \
                 {refused} closed so far for want of a thread"
            ),
            Refusal::Untrusted => warn!(
                "{} may not send a PROXY header (not in --proxy-from): closing its \
                 connection; {refused} closed so far",
                peer.ip()
            ),
            Refusal::ProxyHeader => warn!(
                "conn from {peer}: {detail}: closing it; {refused} closed so far for their \
                 PROXY header"
            ),
            Refusal::TlsTimeout
            | Refusal::TlsPlaintext
            | Refusal::TlsClientCertificate
            | Refusal::TlsHandshake => warn!(
                "conn from {peer}: {detail}: closing it; {refused} closed so far for this \
                 reason ({})",
                why.name()
            ),
        }
    }

    /// Logs that the server is full, and what new clients get `when_full`,
    /// at most once per [`REFUSAL_LOG_INTERVAL`].
    pub fn log_full(&self, when_full: WhenFull) {
        let mut last = sys::lock(&self.last_logged);
        let full = &mut last[Refusal::Full.index()];
        if full.is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL) {
            return;
        }
        *full = Some(Instant::now());
        drop(last);
        let what = match when_full {
            WhenFull::Wait => "new clients wait in the listen backlog",
            WhenFull::Close => "new clients are closed at once (--when-full close)",
        };
        warn!(
            "all {} connection slots are busy (--max-connections): {what}; {} turned away so far",
            self.max,
            self.refused[Refusal::Full.index()].load(Ordering::Relaxed)
        );
    }

    /// Waits until no connection is open or `timeout` passes; returns how many are still open.
    pub fn wait_idle(&self, timeout: Duration) -> usize {
        let (open, _) = self
            .idle
            .wait_timeout_while(self.lock(), timeout, |open| open.total > 0)
            .unwrap_or_else(|e| e.into_inner());
        open.total
    }

    /// The counters `/status` reports; `per_ip` is the current limit.
    pub fn status(&self, per_ip: Option<u32>) -> AdmissionStatus {
        let refused = |why: Refusal| self.refused[why.index()].load(Ordering::Relaxed);
        AdmissionStatus {
            active: self.open(),
            max: self.max,
            max_per_ip: per_ip,
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: Refusal::ALL.into_iter().map(refused).sum(),
            refused_by: Refusal::ALL
                .into_iter()
                .map(|why| (why.name().to_string(), refused(why)))
                .collect(),
            saturated: self.saturated.load(Ordering::Relaxed),
        }
    }
}

/// Counts one more connection from `ip` under the per-address limit, if
/// there is one: the address to uncount when it closes.
fn count_ip(open: &mut Open, ip: IpAddr, per_ip: Option<u32>) -> Result<Option<IpAddr>, Refusal> {
    let Some(limit) = per_ip else {
        return Ok(None);
    };
    let count = open.by_ip.entry(ip).or_insert(0);
    if *count >= limit {
        return Err(Refusal::PerIp);
    }
    *count += 1;
    Ok(Some(ip))
}

impl Slot {
    /// Counts this connection against `ip`'s share of at most `per_ip`, now
    /// that its address is known; `Err` if the address already has all it
    /// may have (the slot is then freed when dropped, as always).
    pub fn claim(&mut self, ip: IpAddr, per_ip: Option<u32>) -> Result<(), Refusal> {
        if self.ip.is_some() {
            return Ok(()); // already counted
        }
        let mut open = self.admission.lock();
        self.ip = count_ip(&mut open, ip, per_ip)?;
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let admission = &self.admission;
        let mut open = admission.lock();
        let was_full = open.total >= admission.max;
        open.total -= 1;
        if let Some(ip) = self.ip
            && let Some(count) = open.by_ip.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                open.by_ip.remove(&ip);
            }
        }
        if open.total == 0 {
            admission.idle.notify_all();
        }
        drop(open);
        if was_full {
            // A listener that waits for a slot is woken; one that closes
            // clients when full looks again and finds nothing to do. Only
            // fails if the accept loop is gone, i.e. the server stopped.
            let _ = admission.wake_accept.wake();
        }
    }
}

/// Connection counts, as `GET /status` reports them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdmissionStatus {
    /// Connections open now.
    pub active: usize,
    /// `--max-connections`.
    pub max: usize,
    /// `--max-connections-per-ip`, if set.
    pub max_per_ip: Option<u32>,
    /// Connections admitted since start.
    pub accepted: u64,
    /// Clients closed as soon as they were accepted, for any reason.
    pub refused: u64,
    /// The same by reason: `full` (`--when-full close`), `per_ip`
    /// (`--max-connections-per-ip`), `no_thread` (the machine ran out),
    /// `untrusted` (not in `--proxy-from`), `proxy_header` (a missing,
    /// invalid or slow PROXY header).
    pub refused_by: std::collections::BTreeMap<String, u64>,
    /// Times every slot became busy.
    pub saturated: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: u32) -> Arc<Admission> {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        Arc::new(Admission::new(max, waker))
    }

    #[test]
    fn one_address_cannot_take_every_slot_and_its_share_frees_on_drop() {
        let (admission, per_ip) = (admission(10), Some(2));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = admission.try_admit(Some(a), per_ip).unwrap();
        let _second = admission.try_admit(Some(a), per_ip).unwrap();
        assert_eq!(
            admission.try_admit(Some(a), per_ip).err(),
            Some(Refusal::PerIp)
        );
        let _other = admission.try_admit(Some(b), per_ip).unwrap();
        drop(first);
        let _again = admission.try_admit(Some(a), per_ip).unwrap();
        assert_eq!(admission.open(), 3);
    }

    #[test]
    fn the_total_comes_first_and_addresses_leave_no_trace() {
        let (admission, per_ip) = (admission(1), Some(5));
        let ip: IpAddr = "::1".parse().unwrap();
        let slot = admission.try_admit(Some(ip), per_ip).unwrap();
        assert_eq!(
            admission.try_admit(Some(ip), per_ip).err(),
            Some(Refusal::Full)
        );
        drop(slot);
        assert!(admission.lock().by_ip.is_empty());
    }

    #[test]
    fn an_address_learnt_later_counts_like_one_known_at_once() {
        let (admission, per_ip) = (admission(10), Some(1));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut first = admission.try_admit(None, per_ip).unwrap();
        first.claim(ip, per_ip).unwrap();
        let mut second = admission.try_admit(None, per_ip).unwrap();
        assert_eq!(second.claim(ip, per_ip), Err(Refusal::PerIp));
        assert_eq!(
            admission.try_admit(Some(ip), per_ip).err(),
            Some(Refusal::PerIp)
        );
        drop(second);
        drop(first);
        assert!(admission.lock().by_ip.is_empty());
        assert_eq!(admission.open(), 0);
    }
}
