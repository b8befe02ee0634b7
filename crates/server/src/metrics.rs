//! `/metrics`: requests by route and status, a latency histogram per route, the store
//! index, the watcher count and the jobs per queue and state, plus whatever the backend
//! registers (the Raft node adds `rota_raft_*`: term, indexes, leader changes, fsync
//! latency, batch sizes). One registry per server, so in-process test clusters don't mix
//! their numbers.
//!
//! The registry renders OpenMetrics; [`prometheus_text`] turns that into the Prometheus
//! text format (0.0.4) that etcd serves and that a scraper gets unless it asks for
//! OpenMetrics.

use std::collections::HashSet;
use std::time::Duration;

use rota_core::jobs::{JobCounts, QueueTally};

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
    V1RetryDead,
    V1Jobs,
    V1Heartbeat,
    V1Complete,
    V1Fail,
    V1Release,
    V1Retry,
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
            (Some("queues"), Some("retry")) => Route::V1RetryDead,
            (Some("queues"), _) => Route::V1Queues,
            (Some("jobs"), Some("heartbeat")) => Route::V1Heartbeat,
            (Some("jobs"), Some("complete")) => Route::V1Complete,
            (Some("jobs"), Some("fail")) => Route::V1Fail,
            (Some("jobs"), Some("release")) => Route::V1Release,
            (Some("jobs"), Some("retry")) => Route::V1Retry,
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
            Route::V1RetryDead => "/v1/queues/{q}/retry",
            Route::V1Jobs => "/v1/jobs",
            Route::V1Heartbeat => "/v1/jobs/{id}/heartbeat",
            Route::V1Complete => "/v1/jobs/{id}/complete",
            Route::V1Fail => "/v1/jobs/{id}/fail",
            Route::V1Release => "/v1/jobs/{id}/release",
            Route::V1Retry => "/v1/jobs/{id}/retry",
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueStateLabels {
    queue: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueEventLabels {
    queue: String,
    event: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency_seconds: HistogramFamily,
    etcd_index: Gauge,
    watchers: Gauge,
    queue_jobs: Family<QueueStateLabels, Gauge>,
    queue_leases_held: Family<QueueLabels, Gauge>,
    queue_paused: Family<QueueLabels, Gauge>,
    queue_rate_tokens: Family<QueueLabels, Gauge>,
    queue_job_events: Family<QueueEventLabels, Counter>,
    v2_expires: Counter,
    idempotency_records: Gauge,
    idempotency_bytes: Gauge,
    idempotency_evicted: Counter,
    idempotency_evicted_remaining_seconds: Gauge,
}

/// One queue's numbers at scrape time.
#[derive(Clone, Debug, Default)]
pub struct QueueSample {
    pub name: String,
    pub counts: JobCounts,
    pub leases_held: u64,
    pub paused: bool,
    pub rate_tokens: Option<u64>,
    /// What happened to its jobs since this process started.
    pub tally: QueueTally,
}

/// Store numbers, read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct NodeSample {
    pub etcd_index: u64,
    /// Keys and directories the v2 store expired (the count `/v2/stats/store` reports).
    pub v2_expires: u64,
    pub watchers: usize,
    /// Every queue: its jobs per state, the leases it holds, whether it is paused and its
    /// rate tokens (`None` without a rate).
    pub queues: Vec<QueueSample>,
    /// The idempotency table: records, approximate bytes, records dropped before their
    /// expiry since the process started.
    pub idempotency: (usize, usize, u64),
    /// How long the last record dropped before its expiry still had to live (ms).
    pub idempotency_evicted_remaining_ms: u64,
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
        let queue_jobs = Family::<QueueStateLabels, Gauge>::default();
        registry.register(
            "rota_queue_jobs",
            "Jobs in each queue by state (queued and scheduled are the queue's depth)",
            queue_jobs.clone(),
        );
        let queue_leases_held = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "rota_queue_leases_held",
            "Concurrency slots each queue's leases take (leased jobs, and jobs cancelled while leased until their workers let go)",
            queue_leases_held.clone(),
        );
        let queue_paused = Family::<QueueLabels, Gauge>::default();
        registry.register("rota_queue_paused", "1 while a queue is paused (it leases nothing)", queue_paused.clone());
        let queue_rate_tokens = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "rota_queue_rate_tokens",
            "Whole rate-limit tokens each queue with a rate has now (0: leases wait for the next)",
            queue_rate_tokens.clone(),
        );
        let queue_job_events = Family::<QueueEventLabels, Counter>::default();
        registry.register(
            "rota_queue_job_events",
            "What happened to each queue's jobs since this member started (submitted, leased, succeeded, failed, \
             lease_expired, released, dead, cancelled, retried), as this member applied it",
            queue_job_events.clone(),
        );
        let v2_expires = Counter::default();
        registry.register(
            "rota_v2_store_expires",
            "Keys and directories of /v2/keys that expired by their TTL",
            v2_expires.clone(),
        );
        let idempotency_records = gauge(
            &mut registry,
            "rota_idempotency_records",
            "Outcomes kept under an Idempotency-Key",
        );
        let idempotency_bytes = gauge(
            &mut registry,
            "rota_idempotency_bytes",
            "Approximate bytes of the outcomes kept under an Idempotency-Key",
        );
        let idempotency_evicted = Counter::default();
        registry.register(
            "rota_idempotency_evicted",
            "Idempotency-Key outcomes dropped before their expiry because the table was full (a retry of one is applied again)",
            idempotency_evicted.clone(),
        );
        let idempotency_evicted_remaining_seconds = gauge(
            &mut registry,
            "rota_idempotency_evicted_remaining_seconds",
            "How long the last Idempotency-Key outcome dropped early still had to live: up to 600 only the lease calls' 10 minutes were shortened; hours, and keyed submits lose their 24 h",
        );
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
            queue_jobs,
            queue_leases_held,
            queue_paused,
            queue_rate_tokens,
            queue_job_events,
            v2_expires,
            idempotency_records,
            idempotency_bytes,
            idempotency_evicted,
            idempotency_evicted_remaining_seconds,
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
            axum::http::Method::PATCH => "PATCH",
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

    /// The OpenMetrics exposition, after sampling the node.
    pub fn render(&self, sample: NodeSample) -> String {
        let as_i64 = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.etcd_index.set(as_i64(sample.etcd_index));
        self.watchers
            .set(i64::try_from(sample.watchers).unwrap_or(i64::MAX));
        let (records, bytes, evicted) = sample.idempotency;
        self.idempotency_records.set(i64::try_from(records).unwrap_or(i64::MAX));
        self.idempotency_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        // The state counts since start; the counter only moves forward.
        catch_up(&self.idempotency_evicted, evicted);
        // Counted by the state, which a snapshot from the leader may set back.
        catch_up(&self.v2_expires, sample.v2_expires);
        self.idempotency_evicted_remaining_seconds
            .set(as_i64(sample.idempotency_evicted_remaining_ms / 1000));
        // Rebuilt on every scrape, so a deleted queue's series go away.
        self.queue_jobs.clear();
        self.queue_leases_held.clear();
        self.queue_paused.clear();
        self.queue_rate_tokens.clear();
        self.queue_job_events.clear();
        for QueueSample { name: queue, counts, leases_held, paused, rate_tokens, tally } in sample.queues {
            for (event, count) in tally.events() {
                self.queue_job_events.get_or_create(&QueueEventLabels { queue: queue.clone(), event }).inc_by(count);
            }
            let labels = QueueLabels { queue: queue.clone() };
            self.queue_leases_held.get_or_create(&labels).set(as_i64(leases_held));
            self.queue_paused.get_or_create(&labels).set(i64::from(paused));
            if let Some(tokens) = rate_tokens {
                self.queue_rate_tokens.get_or_create(&labels).set(as_i64(tokens));
            }
            let states = [
                ("scheduled", counts.scheduled),
                ("queued", counts.queued),
                ("leased", counts.leased),
                ("succeeded", counts.succeeded),
                ("dead", counts.dead),
                ("cancelled", counts.cancelled),
            ];
            for (state, count) in states {
                self.queue_jobs
                    .get_or_create(&QueueStateLabels {
                        queue: queue.clone(),
                        state,
                    })
                    .set(as_i64(count));
            }
        }
        let mut text = String::with_capacity(8192);
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        // The process's own numbers, under the names every Prometheus client library (and
        // etcd) uses, before the closing `# EOF`.
        let process = process_metrics();
        match text.strip_suffix("# EOF\n") {
            Some(body) => text = format!("{body}{process}# EOF\n"),
            None => text.push_str(&process),
        }
        text
    }
}

/// Brings `counter` up to `total`, a count kept elsewhere; a counter only moves forward, so
/// a lower `total` leaves it as it is.
fn catch_up(counter: &Counter, total: u64) {
    let counted = counter.get();
    if total > counted {
        counter.inc_by(total - counted);
    }
}

/// `process_*` metrics from `/proc/self` (Linux), in OpenMetrics form; what cannot be read
/// is left out.
fn process_metrics() -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let sample = if kind == "counter" { format!("{name}_total") } else { name.to_owned() };
        let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} {kind}\n{sample} {value}\n");
    };
    // Linux reports CPU times in USER_HZ ticks, 100 a second on every architecture rota runs on.
    const TICKS_PER_SECOND: f64 = 100.0;
    const PAGE_BYTES: f64 = 4096.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|value| value.parse::<f64>().ok());
    if let (Some(user), Some(system)) = (field(14), field(15)) {
        metric("process_cpu_seconds", "counter", "Total user and system CPU time spent in seconds.", (user + system) / TICKS_PER_SECOND);
    }
    if let Some(pages) = field(24) {
        metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", pages * PAGE_BYTES);
    }
    if let Some(bytes) = field(23) {
        metric("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", bytes);
    }
    if let (Some(start_ticks), Some(boot)) = (field(22), boot_time_seconds()) {
        metric("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", boot + start_ticks / TICKS_PER_SECOND);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metric("process_open_fds", "gauge", "Number of open file descriptors.", fds.count() as f64);
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let max_fds = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3)?.parse::<f64>().ok());
    if let Some(max_fds) = max_fds {
        metric("process_max_fds", "gauge", "Maximum number of open file descriptors.", max_fds);
    }
    text
}

/// When the machine booted (`btime` of `/proc/stat`), in seconds since the epoch.
fn boot_time_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition as `prometheus-client`
/// writes it: a counter's `HELP` and `TYPE` lines name its `_total` sample, and the
/// OpenMetrics-only `UNIT` and `EOF` lines go. Everything else reads the same in both.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let metadata = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match metadata {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                text.push_str(prefix);
                text.push_str(name);
                if counters.contains(name) {
                    text.push_str("_total");
                }
                text.push(' ');
                text.push_str(tail);
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{prometheus_text, Route};

    #[test]
    fn prometheus_text_names_counters_by_their_samples_and_drops_openmetrics_lines() {
        let openmetrics = "# HELP rota_http_requests HTTP requests.\n\
                           # TYPE rota_http_requests counter\n\
                           rota_http_requests_total{route=\"/v2/keys\"} 3\n\
                           # HELP rota_etcd_index etcd v2 store index.\n\
                           # TYPE rota_etcd_index gauge\n\
                           rota_etcd_index 7\n\
                           # HELP rota_sync_seconds Sync time.\n\
                           # TYPE rota_sync_seconds histogram\n\
                           # UNIT rota_sync_seconds seconds\n\
                           rota_sync_seconds_sum 0.5\n\
                           # EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP rota_http_requests_total HTTP requests.\n\
             # TYPE rota_http_requests_total counter\n\
             rota_http_requests_total{route=\"/v2/keys\"} 3\n\
             # HELP rota_etcd_index etcd v2 store index.\n\
             # TYPE rota_etcd_index gauge\n\
             rota_etcd_index 7\n\
             # HELP rota_sync_seconds Sync time.\n\
             # TYPE rota_sync_seconds histogram\n\
             rota_sync_seconds_sum 0.5\n"
        );
    }

    #[test]
    fn v1_paths_get_one_bounded_label_per_endpoint_family() {
        assert_eq!(Route::of_v1_path("/v1/queues"), Route::V1Queues);
        assert_eq!(Route::of_v1_path("/v1/queues/api"), Route::V1Queues);
        assert_eq!(Route::of_v1_path("/v1/queues/api/jobs"), Route::V1Submit);
        assert_eq!(Route::of_v1_path("/v1/queues/api/lease"), Route::V1Lease);
        assert_eq!(Route::of_v1_path("/v1/queues/api/retry"), Route::V1RetryDead);
        assert_eq!(Route::of_v1_path("/v1/jobs/17"), Route::V1Jobs);
        assert_eq!(Route::of_v1_path("/v1/jobs/17/complete"), Route::V1Complete);
        assert_eq!(Route::of_v1_path("/v1/jobs/17/heartbeat"), Route::V1Heartbeat);
        assert_eq!(Route::of_v1_path("/v1/jobs/17/fail"), Route::V1Fail);
        assert_eq!(Route::of_v1_path("/v1/jobs/17/release"), Route::V1Release);
        assert_eq!(Route::of_v1_path("/v1/jobs/17/retry"), Route::V1Retry);
        assert_eq!(Route::of_v1_path("/v1/jobs/17/explode"), Route::V1Jobs);
        assert_eq!(Route::of_v1_path("/v1/counters/hits"), Route::V1Counters);
        assert_eq!(Route::of_v1_path("/v1/watch"), Route::V1Watch);
        assert_eq!(Route::of_v1_path("/v1/nope"), Route::Other);
        assert_eq!(Route::of_v1_path("/v1"), Route::Other);
    }
}
