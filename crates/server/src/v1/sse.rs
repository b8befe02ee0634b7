//! `GET /v1/watch?prefix=&since=`: Server-Sent Events of v2 key events and job changes.
//!
//! Key events come from the v2 store's event history, exactly as a `/v2/keys` stream watch
//! sees them (`since` is an etcd index within the history window). Job events come from
//! [`JobEvents`], a broadcast hub that the `/v1` handlers of this server feed with each job
//! their command changed. Known gap: changes that happen by time alone (a lease expiring, a
//! scheduled job coming due, retention) and changes made through another node are not
//! job events yet; that needs a job event history in `rota_core` like the v2 one.
//!
//! A stream holds a slot of the server's watcher bound (shared with `/v2/keys` watches),
//! ends on shutdown, and releases everything when the client goes away (all it holds lives
//! in its body stream).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::Response;
use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use rota_core::jobs::Job;
use rota_core::v2::{render_json, WatchLookup};
use tokio::sync::broadcast;

use super::json;
use super::limits::{JOB_EVENTS_BUFFERED_MAX, SSE_KEEPALIVE};
use super::{ApiError, Call};
use crate::app::App;
use crate::backend::{Applied, Backend};
use crate::watch::WatcherGuard;

/// One changed job, rendered once for every stream.
pub(crate) struct JobEvent {
    queue: String,
    /// The job object's JSON.
    data: Vec<u8>,
}

/// Fans job changes out to the open streams. Publishing costs one atomic load when nobody
/// watches.
pub(crate) struct JobEvents {
    sender: broadcast::Sender<Arc<JobEvent>>,
}

impl JobEvents {
    pub(crate) fn new() -> JobEvents {
        let (sender, _) = broadcast::channel(JOB_EVENTS_BUFFERED_MAX);
        JobEvents { sender }
    }

    pub(crate) fn publish(&self, job: &Job) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        let mut data = Vec::with_capacity(256 + job.payload.len());
        json::push_job(&mut data, job);
        // No receiver left in between is fine: nobody to tell.
        let _ = self.sender.send(Arc::new(JobEvent { queue: job.queue.clone(), data }));
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<JobEvent>> {
        self.sender.subscribe()
    }
}

/// Which job events a stream wants.
enum JobFilter {
    All,
    Queue(String),
}

struct Stream<B: Backend> {
    app: Arc<App<B>>,
    /// The key prefix whose events are sent, if any.
    key: Option<String>,
    /// The next etcd index a key event may have.
    since_index: u64,
    /// Set when the store index moved past what was scanned.
    keys_to_scan: bool,
    /// The lookup made before answering, sent first.
    first: Option<WatchLookup>,
    jobs: Option<(JobFilter, broadcast::Receiver<Arc<JobEvent>>)>,
    applied: tokio::sync::watch::Receiver<Applied>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    keepalive: tokio::time::Interval,
    _watcher: WatcherGuard,
    _gauge: OwnedGaugeGuard,
}

struct OwnedGaugeGuard(Gauge);

impl Drop for OwnedGaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub(crate) async fn watch<B: Backend>(app: &Arc<App<B>>, call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let params = json::parse_query(call.query.as_deref(), &["prefix", "since"])?;
    let since = json::query_u64(&params, "since")?.unwrap_or(0);
    let prefix = json::query_value(&params, "prefix");
    let (key, jobs) = match prefix {
        None => (Some("/".to_owned()), Some(JobFilter::All)),
        Some("jobs" | "jobs/") => (None, Some(JobFilter::All)),
        Some(prefix) if prefix.starts_with("jobs/") => {
            let queue = &prefix["jobs/".len()..];
            json::check_name("prefix", queue)?;
            (None, Some(JobFilter::Queue(queue.to_owned())))
        }
        Some(prefix) => (Some(crate::path::key_from_suffix(prefix)), None),
    };
    let Some(watcher) = WatcherGuard::acquire(&app.watchers, app.watchers_max) else {
        return Err(ApiError::new(503, super::errors::UNAVAILABLE, "too many open watches", None));
    };
    // Subscribe before the first lookup, so an entry applied in between wakes the stream.
    let applied = app.backend.subscribe();
    let jobs = jobs.map(|filter| (filter, app.v1.events.subscribe()));
    let (since_index, first) = match &key {
        Some(key) => {
            let lookup = app.backend.read(|state| {
                let since_index = if since == 0 { state.v2.index() + 1 } else { since };
                state.v2.watch(key, true, since_index, false).map(|lookup| (since_index, Some(lookup)))
            });
            lookup.map_err(|error| ApiError::invalid("since", format!("since {since}: {}", error.message())))?
        }
        None => (0, None),
    };
    app.v1.metrics.watch_streams.inc();
    let mut keepalive = tokio::time::interval(SSE_KEEPALIVE);
    keepalive.reset();
    let stream = Stream {
        app: Arc::clone(app),
        key,
        since_index,
        keys_to_scan: false,
        first,
        jobs,
        applied,
        shutdown: app.shutdown.subscribe(),
        keepalive,
        _watcher: watcher,
        _gauge: OwnedGaugeGuard(app.v1.metrics.watch_streams.clone()),
    };
    let body = Body::from_stream(futures::stream::unfold(stream, next_chunk));
    let mut response = crate::respond::with_status(200, body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

fn chunk(text: String) -> Result<Bytes, Infallible> {
    Ok(Bytes::from(text))
}

/// The next event (or keep-alive comment) of a stream, or `None` to end it.
async fn next_chunk<B: Backend>(mut stream: Stream<B>) -> Option<(Result<Bytes, Infallible>, Stream<B>)> {
    loop {
        if let Some(key) = &stream.key {
            if stream.first.is_some() || stream.keys_to_scan {
                stream.keys_to_scan = false;
                let lookup = match stream.first.take() {
                    Some(first) => Ok(first),
                    None => {
                        let since_index = stream.since_index;
                        stream.app.backend.read(|state| state.v2.watch(key, true, since_index, true))
                    }
                };
                match lookup {
                    Ok(WatchLookup::Found(event)) => {
                        stream.since_index = event.etcd_index + 1;
                        // More may be waiting in the history: scan again before sleeping.
                        stream.keys_to_scan = true;
                        let data = render_json(&event);
                        let text = format!("id: {}\nevent: key\ndata: {}\n\n", event.etcd_index, data.trim_end());
                        return Some((chunk(text), stream));
                    }
                    Ok(WatchLookup::Pending { index }) => stream.since_index = stream.since_index.max(index + 1),
                    Err(error) => {
                        // Fell out of the history window: say so and end; the client
                        // re-watches from a fresh index.
                        let text = format!("event: error\ndata: {}\n\n", error.to_json().trim_end());
                        stream.key = None;
                        stream.jobs = None;
                        return Some((chunk(text), stream));
                    }
                }
            }
        } else if stream.jobs.is_none() {
            return None;
        }
        let watching_keys = stream.key.is_some();
        let Stream { applied, jobs, shutdown, keepalive, since_index, keys_to_scan, .. } = &mut stream;
        tokio::select! {
            changed = applied.changed(), if watching_keys => {
                if changed.is_err() {
                    return None;
                }
                if applied.borrow_and_update().etcd_index >= *since_index {
                    *keys_to_scan = true;
                }
            }
            event = async { jobs.as_mut().map(|(_, receiver)| receiver).expect("guarded").recv().await }, if jobs.is_some() => {
                match event {
                    Ok(event) => {
                        let wanted = match jobs.as_ref().map(|(filter, _)| filter) {
                            Some(JobFilter::Queue(queue)) => *queue == event.queue,
                            _ => true,
                        };
                        if wanted {
                            let text = format!("event: job\ndata: {}\n\n", String::from_utf8_lossy(&event.data));
                            return Some((chunk(text), stream));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        return Some((chunk(format!(": lagged, {missed} job events dropped\n\n")), stream));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
            _ = keepalive.tick() => return Some((chunk(": keepalive\n\n".to_owned()), stream)),
            () = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => return None,
        }
    }
}
