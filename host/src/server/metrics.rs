//! Prometheus metrics, `/healthz` and `/readyz`, on a read-only listener of
//! their own (`--metrics`), without authentication: nothing here changes
//! anything.
//!
//! Nothing is added to a round trip but the two relaxed atomic additions of
//! [`crate::runtime::Traffic`]: what is already counted elsewhere (admission, the registry,
//! the code cache) is read when Prometheus scrapes, and the histograms are
//! observed once per connection, as it ends. Every metric carries the
//! `listener` it belongs to (`default` for a server without a config file),
//! so that dashboards keep working when a second listener is added.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::Method;
use hyper::body::Bytes;
use hyper::http::request::Parts;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry as Prometheus, Unit};

use crate::runtime::{Fleet, Runtime};
use crate::server::accept::Stopper;
use crate::server::http::{Peer, Reply, Routes};
use crate::server::listener::Listener;

/// What `hotsock serve` prints on stdout before the metrics listener's address.
pub const METRICS_LISTENING: &str = "metrics listening on ";

/// The OpenMetrics text format, which Prometheus reads.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric of the process, encoded on each scrape.
pub struct Metrics {
    prometheus: Prometheus,
    /// What the processes this one replaced counted, by sample (name and
    /// labels), added to this one's counters and histograms so that none
    /// goes backwards across a binary upgrade.
    base: HashMap<String, f64>,
}

impl Metrics {
    /// The metrics of `runtime`, of every listener in `listeners`, and of
    /// the `fleet` its rooms span, if any. Each listener's metric is one
    /// family, with a sample per listener (label `listener`).
    pub fn new(
        runtime: Arc<Runtime>,
        listeners: Vec<Arc<Listener>>,
        fleet: Option<Arc<Fleet>>,
    ) -> Self {
        let mut prometheus = Prometheus::with_prefix("hotsock");
        prometheus.register_collector(Box::new(ProcessCollector {
            runtime,
            listeners,
            fleet,
        }));
        Metrics {
            prometheus,
            base: HashMap::new(),
        }
    }

    /// Goes on from `text`, the metrics of the process this one replaced
    /// (a binary upgrade): its counters and histograms are added to this
    /// one's, so that what Prometheus reads never goes backwards.
    pub fn carry_on(&mut self, text: &str) {
        self.base = cumulative(text).collect();
    }

    /// The OpenMetrics text of every metric now.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.prometheus)?;
        if self.base.is_empty() {
            return Ok(text);
        }
        let mut kind = "";
        let mut carried = String::with_capacity(text.len());
        for line in text.lines() {
            kind = family_kind(line).unwrap_or(kind);
            let sample = sample(line).filter(|_| kind == "counter" || kind == "histogram");
            match sample.and_then(|(key, value)| Some((key, value + self.base.get(key)?))) {
                Some((key, sum)) => carried.push_str(&format!("{key} {}", number(sum))),
                None => carried.push_str(line),
            }
            carried.push('\n');
        }
        Ok(carried)
    }
}

/// `counter` of `# TYPE name counter`.
fn family_kind(line: &str) -> Option<&str> {
    line.strip_prefix("# TYPE ")?.split(' ').nth(1)
}

/// The name and labels of a sample line, and its value; not `_created`
/// samples, which are times.
fn sample(line: &str) -> Option<(&str, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (key, value) = line.rsplit_once(' ')?;
    let name = key.split('{').next()?;
    if name.ends_with("_created") {
        return None;
    }
    Some((key, value.parse().ok()?))
}

/// Every counter and histogram sample in the OpenMetrics `text`.
fn cumulative(text: &str) -> impl Iterator<Item = (String, f64)> + '_ {
    let mut kind = "";
    text.lines().filter_map(move |line| {
        kind = family_kind(line).unwrap_or(kind);
        let (key, value) = sample(line)?;
        (kind == "counter" || kind == "histogram").then(|| (key.to_string(), value))
    })
}

/// A sum as OpenMetrics writes it: whole numbers without a fraction.
fn number(value: f64) -> String {
    match value.fract() == 0.0 && value.abs() < 9e15 {
        true => format!("{}", value as i64),
        false => format!("{value}"),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz`.
pub struct HealthRoutes {
    metrics: Arc<Metrics>,
    stopper: Stopper,
}

impl HealthRoutes {
    /// Routes for `metrics`; `/readyz` fails once `stopper` has been used.
    pub fn new(metrics: Arc<Metrics>, stopper: Stopper) -> Self {
        HealthRoutes { metrics, stopper }
    }
}

impl Routes for HealthRoutes {
    fn admit(&self, head: &Parts, _peer: &Peer) -> Result<usize, Reply> {
        match head.method {
            Method::GET | Method::HEAD => Ok(0),
            _ => Err(Reply::error(
                405,
                "read-only: use GET /metrics, /healthz or /readyz",
            )),
        }
    }

    fn answer(&self, head: Parts, _body: Bytes, _peer: &Peer) -> Reply {
        let text =
            |status, text: &str| Reply::text(status, "text/plain; charset=utf-8", text.into());
        match head.uri.path() {
            "/metrics" => match self.metrics.encode() {
                Ok(metrics) => Reply::text(200, OPENMETRICS, metrics),
                Err(_) => text(500, "cannot encode the metrics\n"),
            },
            "/healthz" => text(200, "ok\n"),
            "/readyz" => match self.stopper.is_stopping() {
                false => text(200, "ready\n"),
                true => text(503, "draining: not taking new connections\n"),
            },
            path => text(
                404,
                &format!("no such endpoint {path}: use /metrics, /healthz or /readyz\n"),
            ),
        }
    }
}

/// A counter or gauge family with the given label sets and values.
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let mut sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Gauge => sample.encode_gauge(&value)?,
            _ => sample.encode_counter::<NoLabelSet, _, u64>(&value, None)?,
        }
    }
    Ok(())
}

/// A histogram family with one histogram per listener.
fn histograms<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (&'a str, &'a Histogram)>,
) -> fmt::Result {
    let unit = Unit::Seconds;
    let mut metric = encoder.encode_descriptor(name, help, Some(&unit), MetricType::Histogram)?;
    for (listener, histogram) in samples {
        histogram.encode(metric.encode_family(&[("listener", listener)])?)?;
    }
    Ok(())
}

/// Every listener's counts, and the runtime's, read on each scrape.
struct ProcessCollector {
    runtime: Arc<Runtime>,
    listeners: Vec<Arc<Listener>>,
    fleet: Option<Arc<Fleet>>,
}

impl fmt::Debug for ProcessCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProcessCollector")
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let listeners = &self.listeners;
        let statuses: Vec<_> = listeners
            .iter()
            .map(|l| {
                let per_ip = l.registry().settings().rules.max_connections_per_ip;
                l.admission().status(per_ip)
            })
            .collect();
        let each = |value: &dyn Fn(usize) -> u64| {
            (0..listeners.len())
                .map(|i| (vec![("listener", listeners[i].name())], value(i)))
                .collect::<Vec<_>>()
        };
        family(
            &mut encoder,
            "connections_active",
            "Connections open now.",
            Gauge,
            each(&|i| statuses[i].active as u64),
        )?;
        family(
            &mut encoder,
            "connections_accepted",
            "Connections admitted since start.",
            Counter,
            each(&|i| statuses[i].accepted),
        )?;
        family(
            &mut encoder,
            "connections_refused",
            "Clients closed before their handler ran, by reason: full, per_ip, no_thread, \
             untrusted, proxy_header, tls_timeout, tls_plaintext, tls_client_certificate, \
             tls_handshake.",
            Counter,
            listeners
                .iter()
                .zip(&statuses)
                .flat_map(|(listener, status)| {
                    status.refused_by.iter().map(|(reason, n)| {
                        (
                            vec![("listener", listener.name()), ("reason", reason.as_str())],
                            *n,
                        )
                    })
                }),
        )?;
        // The certificates new connections are served with now.
        let tls: Vec<_> = listeners
            .iter()
            .map(|l| l.registry().settings().tls.clone())
            .collect();
        family(
            &mut encoder,
            "tls_certificate_expiry_timestamp_seconds",
            "When each certificate a TLS listener serves expires (its not-after), in seconds \
             since the Unix epoch, by listener and certificate file.",
            Gauge,
            listeners.iter().zip(&tls).flat_map(|(listener, tls)| {
                let expiries = tls.iter().flat_map(|tls| tls.expiries());
                expiries.map(|(file, at)| {
                    let labels = vec![
                        ("listener", listener.name()),
                        ("certificate", file.as_str()),
                    ];
                    (labels, (*at).max(0) as u64)
                })
            }),
        )?;
        let versions: Vec<_> = listeners.iter().map(|s| s.registry().versions()).collect();
        let failures: Vec<Vec<_>> = versions
            .iter()
            .map(|versions| {
                versions
                    .iter()
                    .map(|(version, _)| (version.id(), version.failures()))
                    .collect()
            })
            .collect();
        family(
            &mut encoder,
            "connection_failures",
            "Connections that failed, by handler version and kind: trap, memory, cpu, stack, \
             exit, error (the handler's own), idle, time_limit, drain (the host's limits).",
            Counter,
            listeners
                .iter()
                .zip(&failures)
                .flat_map(|(listener, versions)| {
                    versions.iter().flat_map(move |(version, kinds)| {
                        kinds.iter().map(move |(kind, n)| {
                            let labels = vec![
                                ("listener", listener.name()),
                                ("version", *version),
                                ("kind", *kind),
                            ];
                            (labels, *n)
                        })
                    })
                }),
        )?;
        histograms(
            &mut encoder,
            "connection_duration",
            "How long connections stayed open.",
            listeners.iter().map(|s| (s.name(), &s.metrics().duration)),
        )?;
        histograms(
            &mut encoder,
            "instantiate",
            "How long creating a connection's handler instance took.",
            listeners
                .iter()
                .map(|s| (s.name(), &s.metrics().instantiate)),
        )?;
        family(
            &mut encoder,
            "bytes_received",
            "Bytes read from clients.",
            Counter,
            each(&|i| listeners[i].metrics().traffic().received()),
        )?;
        family(
            &mut encoder,
            "bytes_sent",
            "Bytes written to clients.",
            Counter,
            each(&|i| listeners[i].metrics().traffic().sent()),
        )?;
        family(
            &mut encoder,
            "handler_info",
            "The handler versions loaded, 1 each, with their state: current, previous, retired.",
            Gauge,
            listeners
                .iter()
                .zip(&versions)
                .flat_map(|(listener, versions)| {
                    versions.iter().map(|(version, state)| {
                        let labels = vec![
                            ("listener", listener.name()),
                            ("version", version.id()),
                            ("sha256", version.sha256()),
                            ("state", *state),
                        ];
                        (labels, 1)
                    })
                }),
        )?;
        let rooms: Vec<_> = listeners.iter().map(|s| s.rooms().size()).collect();
        family(
            &mut encoder,
            "rooms",
            "Rooms with members now (contract 0.2.0's rooms).",
            Gauge,
            each(&|i| rooms[i].0 as u64),
        )?;
        family(
            &mut encoder,
            "room_members",
            "Memberships of rooms now: a connection in two rooms counts twice.",
            Gauge,
            each(&|i| rooms[i].1 as u64),
        )?;
        family(
            &mut encoder,
            "room_disconnects",
            "Room members disconnected because more than --room-backlog of messages waited for \
             them.",
            Counter,
            each(&|i| listeners[i].rooms().disconnected()),
        )?;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        family(
            &mut encoder,
            "swaps",
            "Handler swaps, by result: ok, rejected, rolled_back.",
            Counter,
            listeners.iter().flat_map(|listener| {
                let swaps = listener.registry().swap_counts();
                [
                    ("ok", load(&swaps.ok)),
                    ("rejected", load(&swaps.rejected)),
                    ("rolled_back", load(&swaps.rolled_back)),
                ]
                .map(|(result, n)| (vec![("listener", listener.name()), ("result", result)], n))
            }),
        )?;
        let buckets = self.runtime.buckets();
        let store = buckets.store().to_string();
        let stats = buckets.stats();
        family(
            &mut encoder,
            "keyvalue_operations",
            "Key-value operations, by store, operation and result: ok, or error (whatever the \
             handler was told: over a quota, not a counter, or the store not answering).",
            Counter,
            stats.counts().into_iter().map(|(operation, result, n)| {
                let labels = vec![
                    ("store", store.as_str()),
                    ("operation", operation),
                    ("result", result),
                ];
                (labels, n)
            }),
        )?;
        family(
            &mut encoder,
            "keyvalue_store_up",
            "1 while the key-value store answers its calls, 0 after one got no answer; absent \
             until a listener is granted a bucket, and for memory:.",
            Gauge,
            buckets
                .is_up()
                .map(|up| (vec![("store", store.as_str())], u64::from(up))),
        )?;
        let unit = Unit::Seconds;
        let mut metric = encoder.encode_descriptor(
            "keyvalue_operation_seconds",
            "How long key-value operations took, by store.",
            Some(&unit),
            MetricType::Histogram,
        )?;
        stats
            .latency
            .encode(metric.encode_family(&[("store", store.as_str())])?)?;
        if let Some(fleet) = &self.fleet {
            let store = fleet.url();
            let stats = fleet.stats();
            family(
                &mut encoder,
                "rooms_store_up",
                "1 while the rooms store (--rooms-store) answers both the link and the \
                 subscription, 0 while either is lost; absent for local.",
                Gauge,
                [(vec![("store", store)], u64::from(fleet.is_up()))],
            )?;
            family(
                &mut encoder,
                "rooms_store_operations",
                "Operations on the rooms store (publish, join, leave, members, heartbeat), by \
                 result: ok, or error (not answered, or refused).",
                Counter,
                [("ok", &stats.ok), ("error", &stats.failed)]
                    .map(|(result, n)| (vec![("store", store), ("result", result)], load(n))),
            )?;
            family(
                &mut encoder,
                "rooms_fleet_messages",
                "Room messages through the rooms store: sent to the other processes, received \
                 from them, or dropped (the store down or too slow: never queued without bound \
                 nor sent twice).",
                Counter,
                [
                    ("sent", &stats.sent),
                    ("received", &stats.received),
                    ("dropped", &stats.dropped),
                ]
                .map(|(direction, n)| (vec![("store", store), ("direction", direction)], load(n))),
            )?;
        }
        let cache = self.runtime.cache_stats();
        family(
            &mut encoder,
            "compile_cache",
            "Handler components looked up in the compiled-code cache: hit, or miss (compiled).",
            MetricType::Counter,
            [
                (vec![("result", "hit")], cache.hits),
                (vec![("result", "miss")], cache.misses),
            ],
        )
    }
}
