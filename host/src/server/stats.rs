//! What one listener's connections are measured by, besides what is counted
//! elsewhere anyway: the metrics `server::metrics` reports.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::runtime::Traffic;

/// What one listener's connections are measured by, besides what is counted
/// elsewhere anyway.
#[derive(Debug)]
pub struct ListenerMetrics {
    pub(super) duration: Histogram,
    pub(super) instantiate: Histogram,
    traffic: Arc<Traffic>,
}

impl Default for ListenerMetrics {
    fn default() -> Self {
        ListenerMetrics {
            // 1 ms to about 4.6 hours: a quick exchange to a long session.
            duration: Histogram::new(exponential_buckets(0.001, 4.0, 12)),
            // 2 µs to about 8 ms: a fresh instance takes about 6 µs.
            instantiate: Histogram::new(exponential_buckets(0.000_002, 2.0, 12)),
            traffic: Arc::default(),
        }
    }
}

impl ListenerMetrics {
    /// Where the listener's connections count their bytes.
    pub fn traffic(&self) -> Arc<Traffic> {
        Arc::clone(&self.traffic)
    }

    /// Notes a connection that was open for `open_for`, whose instance took
    /// `instantiated_in` to create.
    pub fn connection_ended(&self, open_for: Duration, instantiated_in: Option<Duration>) {
        self.duration.observe(open_for.as_secs_f64());
        if let Some(took) = instantiated_in {
            self.instantiate.observe(took.as_secs_f64());
        }
    }
}
