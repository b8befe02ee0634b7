//! `/v1` metrics, in the server's registry: lease long-polls (waiting now, how each ended,
//! how long), wait-for-result requests waiting now, open event streams.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// How a lease long-poll ended; a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LeaseWaitEnd {
    /// It got jobs.
    Served,
    /// `wait` ran out with nothing leased.
    TimedOut,
    /// The client went away, or the request failed while waiting.
    Abandoned,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    outcome: &'static str,
}

pub(crate) struct V1Metrics {
    pub lease_waiters: Gauge,
    lease_waits: Family<EndLabels, Counter>,
    lease_wait_seconds: Histogram,
    pub result_waiters: Gauge,
    pub watch_streams: Gauge,
}

impl V1Metrics {
    pub(crate) fn register(registry: &mut Registry) -> V1Metrics {
        let lease_waiters = Gauge::default();
        registry.register("rota_v1_lease_waiters", "Lease requests long-polling now", lease_waiters.clone());
        let lease_waits = Family::<EndLabels, Counter>::default();
        registry.register("rota_v1_lease_waits", "Lease long-polls by how they ended", lease_waits.clone());
        // 1 ms .. ~65 s: a wait ends within the 60 s maximum.
        let lease_wait_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "rota_v1_lease_wait_seconds",
            "How long lease long-polls waited (capacity, rate tokens or jobs)",
            lease_wait_seconds.clone(),
        );
        let result_waiters = Gauge::default();
        registry.register("rota_v1_result_waiters", "Requests waiting for a job to finish now", result_waiters.clone());
        let watch_streams = Gauge::default();
        registry.register("rota_v1_watch_streams", "Open /v1/watch event streams", watch_streams.clone());
        V1Metrics { lease_waiters, lease_waits, lease_wait_seconds, result_waiters, watch_streams }
    }

    pub(crate) fn lease_wait_ended(&self, end: LeaseWaitEnd, waited: Duration) {
        let outcome = match end {
            LeaseWaitEnd::Served => "served",
            LeaseWaitEnd::TimedOut => "timed_out",
            LeaseWaitEnd::Abandoned => "abandoned",
        };
        self.lease_waits.get_or_create(&EndLabels { outcome }).inc();
        self.lease_wait_seconds.observe(waited.as_secs_f64());
    }
}
