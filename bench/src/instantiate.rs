//! The per-connection instantiate micro-benchmark, in process, with the
//! hotsock library: what every connection pays before `handle` runs (a store
//! with its limits and WASI context, and an instance), without any TCP.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow};
use hotsock::runtime::{Fields, Handler, Profile, Runtime, RuntimeConfig};
use serde::Serialize;

use crate::report::percentile;

/// Instantiations before timing: page faults in fresh pool slots, allocator
/// and cache warm-up.
const WARMUP: usize = 1000;

/// Timed instantiations: enough for a stable p99 (200 samples above it).
const SAMPLES: usize = 20_000;

/// Instantiate time percentiles.
#[derive(Debug, Clone, Serialize)]
pub struct InstantiateTime {
    /// Timed instantiations.
    pub samples: usize,
    /// Median, in microseconds.
    pub p50_us: f64,
    /// 99th percentile, in microseconds.
    pub p99_us: f64,
}

/// A runtime as `hotsock serve` builds it by default, and the handler
/// compiled in it: built once, measured once per round.
pub struct Instantiator {
    // Declared first so it is dropped before the runtime it was compiled in.
    handler: Handler,
    runtime: Runtime,
}

impl Instantiator {
    /// Builds the default runtime (default limits, no capabilities, no code
    /// cache) and compiles the handler at `path` in it.
    pub fn load(path: &Path) -> Result<Self> {
        let runtime =
            Runtime::new(RuntimeConfig::default()).context("cannot build hotsock's runtime")?;
        let handler = Handler::load(&runtime, &Profile::default(), path)?;
        Ok(Instantiator { handler, runtime })
    }

    /// One instantiation, as a connection's.
    fn instantiate(&self) -> Result<()> {
        self.handler
            .instantiate(&self.runtime, &Profile::default(), &Fields::none())
            .map_err(|why| anyhow!("cannot instantiate the handler: {why}"))
    }

    /// Warms up, then times [`SAMPLES`] instantiations one by one.
    pub fn measure(&self) -> Result<InstantiateTime> {
        for _ in 0..WARMUP {
            self.instantiate()?;
        }
        let mut nanos = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let began = Instant::now();
            self.instantiate()?;
            nanos.push(u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        nanos.sort_unstable();
        let us = |p| percentile(&nanos, p).map_or(f64::NAN, |ns| ns as f64 / 1000.0);
        Ok(InstantiateTime {
            samples: SAMPLES,
            p50_us: us(50.0),
            p99_us: us(99.0),
        })
    }
}
