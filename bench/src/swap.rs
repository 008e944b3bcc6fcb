//! The hot swap under load (hotsock only): new connections from several
//! threads for a few seconds, while the admin API swaps the handler to
//! slow-echo and back. Every connection is recorded, so the run shows both
//! whether any connection failed and what the swaps did to latency.

use std::fmt::Write as _;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::Value;
use testkit::http::{Client, Endpoint};

use crate::cpu::{CpuMeter, CpuUse};
use crate::load::{self, Sample};
use crate::report::percentile;
use crate::servers::{Kind, Programs, Server};

/// Length of the run.
const RUN: Duration = Duration::from_secs(6);

/// When the two swaps start: to slow-echo, then back to the echo handler,
/// each with steady state before and after.
const SWAP_AT: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(4)];

/// Client threads in the new-connection loop, as in the new connections
/// scenario.
const CLIENTS: usize = 8;

/// A swap's window starts this long before its request, so connections
/// already slowed by the upload are counted in it, not in the steady state.
const WINDOW_BEFORE: f64 = 0.25;

/// ... and ends this long after the answer, for the aftermath: the new
/// version's first instances in the pool, the old one being freed.
const WINDOW_AFTER: f64 = 0.5;

/// Longest the admin API may take to answer: it compiles the handler first.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(120);

/// One `POST /handler`.
#[derive(Debug, Clone, Serialize)]
pub struct SwapEvent {
    /// The component sent.
    pub handler: String,
    /// When the request started, seconds since the run started.
    pub start_s: f64,
    /// When the answer arrived.
    pub end_s: f64,
    /// The HTTP status, 200 for a swap done; 0 if there was no answer.
    pub http_status: u16,
    /// The admin API's JSON answer, or the error.
    pub response: Value,
}

/// The time around one swap that the steady state leaves out.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SwapWindow {
    /// Start, seconds since the run started.
    pub from_s: f64,
    /// End.
    pub to_s: f64,
}

/// Latency of successful connections in one part of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Successful connections counted.
    pub connections: usize,
    /// Median, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
}

/// What the hot swap scenario found.
#[derive(Debug, Clone, Serialize)]
pub struct HotSwap {
    /// Client threads.
    pub clients: usize,
    /// Length of the run, seconds.
    pub duration_s: f64,
    /// Connections attempted.
    pub connections: usize,
    /// Connections that failed, anywhere in the run.
    pub failed: usize,
    /// Connections that failed inside a swap window.
    pub failed_in_windows: usize,
    /// Outside every swap window.
    pub steady: Latency,
    /// Inside the swap windows.
    pub in_windows: Latency,
    /// p99 in the windows over p99 in the steady state.
    pub p99_ratio: f64,
    /// The two swaps.
    pub swaps: Vec<SwapEvent>,
    /// The windows left out of the steady state.
    pub windows: Vec<SwapWindow>,
    /// Where every connection is listed: `t_seconds,latency_us,ok`.
    pub timeline_csv: String,
    /// Where the CPU went during the run, if measured.
    pub cpu: Option<CpuUse>,
}

/// Starts a fresh hotsock, runs the scenario, and writes the per-connection
/// timeline to `csv`.
pub fn run(programs: &Programs, log: &Path, csv: &Path) -> Result<HotSwap> {
    let mut server = Server::start(Kind::Hotsock, programs, log)?;
    let admin = server
        .admin
        .clone()
        .context("hotsock did not print its admin address")?;
    let uploads = [&programs.swap_handler, &programs.handler].map(|path| {
        std::fs::read(path)
            .map(|bytes| (path.display().to_string(), bytes))
            .with_context(|| format!("cannot read {}", path.display()))
    });
    let uploads = uploads.into_iter().collect::<Result<Vec<_>>>()?;
    let mut swaps = Vec::new();
    let meter = CpuMeter::start(server.pid());
    let samples = load::timeline(server.addr, CLIENTS, RUN, |start| {
        for (at, (source, bytes)) in SWAP_AT.iter().zip(&uploads) {
            thread::sleep((start + *at).saturating_duration_since(Instant::now()));
            let start_s = start.elapsed().as_secs_f64();
            let (http_status, response) = match post_handler(&admin, source, bytes) {
                Ok(answer) => answer,
                Err(e) => (0, Value::String(format!("{e:#}"))),
            };
            swaps.push(SwapEvent {
                handler: source.clone(),
                start_s,
                end_s: start.elapsed().as_secs_f64(),
                http_status,
                response,
            });
        }
    })?;
    let cpu = meter.finish();
    server.check_alive()?;
    drop(server);
    write_csv(csv, &samples)?;
    Ok(analyse(samples, swaps, csv, cpu))
}

fn analyse(
    samples: Vec<Sample>,
    swaps: Vec<SwapEvent>,
    csv: &Path,
    cpu: Option<CpuUse>,
) -> HotSwap {
    let windows: Vec<SwapWindow> = swaps
        .iter()
        .map(|swap| SwapWindow {
            from_s: swap.start_s - WINDOW_BEFORE,
            to_s: swap.end_s + WINDOW_AFTER,
        })
        .collect();
    let in_window = |s: &Sample| windows.iter().any(|w| s.t >= w.from_s && s.t <= w.to_s);
    let latency = |inside: bool| {
        let mut us: Vec<f64> = samples
            .iter()
            .filter(|s| s.ok && in_window(s) == inside)
            .map(|s| s.latency_us)
            .collect();
        us.sort_by(f64::total_cmp);
        Latency {
            connections: us.len(),
            p50_us: percentile(&us, 50.0).unwrap_or(f64::NAN),
            p99_us: percentile(&us, 99.0).unwrap_or(f64::NAN),
        }
    };
    let (steady, in_windows) = (latency(false), latency(true));
    HotSwap {
        clients: CLIENTS,
        duration_s: RUN.as_secs_f64(),
        connections: samples.len(),
        failed: samples.iter().filter(|s| !s.ok).count(),
        failed_in_windows: samples.iter().filter(|s| !s.ok && in_window(s)).count(),
        p99_ratio: in_windows.p99_us / steady.p99_us,
        steady,
        in_windows,
        swaps,
        windows,
        timeline_csv: csv.display().to_string(),
        cpu,
    }
}

/// `POST /handler` to hotsock's admin API: the status and the JSON answer
/// (or its text, if it is not JSON).
fn post_handler(admin: &Endpoint, source: &str, component: &[u8]) -> Result<(u16, Value)> {
    let source = source.replace(['\r', '\n'], " ");
    let headers = [
        ("Content-Type", "application/wasm"),
        ("X-Hotsock-Source", source.as_str()),
    ];
    let response = Client::new(admin.clone(), ADMIN_TIMEOUT)
        .request("POST", "/handler", &headers, component)
        .context("no answer from hotsock's admin API")?;
    let body = response
        .json()
        .unwrap_or_else(|_| Value::String(testkit::http::text(&response)));
    Ok((response.status, body))
}

fn write_csv(path: &Path, samples: &[Sample]) -> Result<()> {
    let mut csv = String::from("t_seconds,latency_us,ok\n");
    for s in samples {
        let _ = writeln!(csv, "{:.6},{:.1},{}", s.t, s.latency_us, u8::from(s.ok));
    }
    std::fs::write(path, csv).with_context(|| format!("cannot write {}", path.display()))
}
