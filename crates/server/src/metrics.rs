//! `/metrics`: requests by route and status, a latency histogram per route, the store
//! index and the watcher count, plus whatever the backend registers (the Raft node adds
//! `rota_raft_*`: term, indexes, leader changes, fsync latency, batch sizes). One registry
//! per server, so in-process test clusters don't mix their numbers.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Which handler answered; a closed set keeps the label cardinality bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Keys,
    Watch,
    Version,
    Health,
    Members,
    Machines,
    Stats,
    Metrics,
    V1Queues,
    V1Submit,
    V1Lease,
    V1Jobs,
    V1Counters,
    V1Watch,
    Ui,
    Other,
}

impl Route {
    /// The label of a `/v1` path: one per endpoint family, never the ids or names in it, so
    /// the label set stays bounded.
    pub fn of_v1_path(path: &str) -> Route {
        let mut parts = path.trim_start_matches('/').split('/').skip(1);
        match (parts.next(), parts.nth(1)) {
            (Some("queues"), Some("lease")) => Route::V1Lease,
            (Some("queues"), Some("jobs")) => Route::V1Submit,
            (Some("queues"), _) => Route::V1Queues,
            (Some("jobs"), _) => Route::V1Jobs,
            (Some("counters"), _) => Route::V1Counters,
            (Some("watch"), _) => Route::V1Watch,
            _ => Route::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Route::Keys => "/v2/keys",
            Route::Watch => "/v2/keys?wait",
            Route::Version => "/version",
            Route::Health => "/health",
            Route::Members => "/v2/members",
            Route::Machines => "/v2/machines",
            Route::Stats => "/v2/stats",
            Route::Metrics => "/metrics",
            Route::V1Queues => "/v1/queues",
            Route::V1Submit => "/v1/queues/{q}/jobs",
            Route::V1Lease => "/v1/queues/{q}/lease",
            Route::V1Jobs => "/v1/jobs",
            Route::V1Counters => "/v1/counters",
            Route::V1Watch => "/v1/watch",
            Route::Ui => "/ui",
            Route::Other => "other",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency_seconds: HistogramFamily,
    etcd_index: Gauge,
    watchers: Gauge,
}

/// Store numbers, read at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeSample {
    pub etcd_index: u64,
    pub watchers: usize,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s: an fsynced write takes a few ms; a bad disk takes hundreds.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "rota_http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let latency_seconds: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "rota_http_request_duration_seconds",
            "Time from request to response headers, by route",
            latency_seconds.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let etcd_index = gauge(
            &mut registry,
            "rota_etcd_index",
            "etcd v2 store index (X-Etcd-Index)",
        );
        let watchers = gauge(&mut registry, "rota_watchers", "Open /v2/keys watches");
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "rota_build_info",
            "rota's version (the value is always 1)",
            build_info,
        );
        Metrics {
            registry,
            requests,
            latency_seconds,
            etcd_index,
            watchers,
        }
    }

    /// Lets other layers (the Raft node: fsync latency, leader changes) add their metrics
    /// before the server starts.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn observe(
        &self,
        route: Route,
        method: &axum::http::Method,
        status: u16,
        elapsed: Duration,
    ) {
        let method = match *method {
            axum::http::Method::GET => "GET",
            axum::http::Method::HEAD => "HEAD",
            axum::http::Method::PUT => "PUT",
            axum::http::Method::POST => "POST",
            axum::http::Method::DELETE => "DELETE",
            axum::http::Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        self.requests
            .get_or_create(&RequestLabels {
                route: route.as_str(),
                method,
                status,
            })
            .inc();
        self.latency_seconds
            .get_or_create(&RouteLabels {
                route: route.as_str(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition, after sampling the node.
    pub fn render(&self, sample: NodeSample) -> String {
        let as_i64 = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.etcd_index.set(as_i64(sample.etcd_index));
        self.watchers
            .set(i64::try_from(sample.watchers).unwrap_or(i64::MAX));
        let mut text = String::with_capacity(8192);
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::Route;

    #[test]
    fn v1_paths_get_one_bounded_label_per_endpoint_family() {
        assert_eq!(Route::of_v1_path("/v1/queues"), Route::V1Queues);
        assert_eq!(Route::of_v1_path("/v1/queues/api"), Route::V1Queues);
        assert_eq!(Route::of_v1_path("/v1/queues/api/jobs"), Route::V1Submit);
        assert_eq!(Route::of_v1_path("/v1/queues/api/lease"), Route::V1Lease);
        assert_eq!(Route::of_v1_path("/v1/jobs/17/complete"), Route::V1Jobs);
        assert_eq!(Route::of_v1_path("/v1/counters/hits"), Route::V1Counters);
        assert_eq!(Route::of_v1_path("/v1/watch"), Route::V1Watch);
        assert_eq!(Route::of_v1_path("/v1/nope"), Route::Other);
        assert_eq!(Route::of_v1_path("/v1"), Route::Other);
    }
}
