//! `GET /v1/watch?prefix=&since=`: Server-Sent Events of v2 key events and job changes.
//!
//! Key events come from the v2 store's event history, exactly as a `/v2/keys` stream watch
//! sees them (`since` is an etcd index within the history window). Job events tail the
//! state's job change log (`Jobs::changes_after`), so they include changes from every node
//! and changes made by time alone (a lease expiring, a scheduled job coming due); each
//! event carries the job as it is when the stream reads it, so several quick changes of
//! one job may show as one. A stream that falls behind the log's bound says so
//! (`event: lagged`) and continues with the oldest kept change.
//!
//! Resuming: each key event carries its etcd index as its SSE `id`, and a stream with keys
//! also sends an `event: index` with an empty `data` when it opens, on keep-alives and
//! every [`ID_EVERY_INDEXES`] indexes it has looked past, whose `id` says how far it has
//! looked (an `id` alone would do by the standard, but some EventSource libraries drop a
//! block without data, `id` and all: npm `eventsource` 4). An
//! EventSource that reconnects sends the last `id` back (`Last-Event-ID`), which wins over
//! the URL's `since` (the URL it reconnects to is the one it was opened with), so it resumes
//! where it stopped even before any event under its prefix, and without falling out of the
//! history while its prefix is quiet and the store busy.
//!
//! A stream holds a slot of the server's watcher bound (shared with `/v2/keys` watches),
//! ends on shutdown, and releases everything when the client goes away (all it holds lives
//! in its body stream), noticed at once from its socket, as a `/v2/keys` watch does.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::Response;
use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use rota_core::v2::{render_json, WatchLookup};
use std::collections::VecDeque;

use super::json;
use super::limits::{JOB_CHANGES_PER_READ_MAX, SSE_KEEPALIVE};
use super::{ApiError, Call};
use crate::app::App;
use crate::backend::{Applied, Backend};
use crate::watch::WatcherGuard;

/// A stream with keys sends how far it has looked (an `id` alone) at least this often, in
/// etcd indexes, besides on opening and on keep-alives.
const ID_EVERY_INDEXES: u64 = 100;

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
    jobs: Option<JobFilter>,
    /// The job change sequence number read up to.
    job_seq: u64,
    /// Rendered job events read but not sent yet.
    pending_jobs: VecDeque<String>,
    applied: tokio::sync::watch::Receiver<Applied>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    keepalive: tokio::time::Interval,
    /// The last `id` sent; `None` before the first.
    id_sent: Option<u64>,
    client_gone: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    _watcher: WatcherGuard,
    _gauge: OwnedGaugeGuard,
}

struct OwnedGaugeGuard(Gauge);

impl Drop for OwnedGaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `last_event_id`: the `Last-Event-ID` header of a reconnecting EventSource: the stream
/// resumes after that index, whatever the URL's `since` says.
pub(crate) async fn watch<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    last_event_id: Option<u64>,
    client: Option<crate::client_gone::ClientSocket>,
) -> Result<Response<Body>, ApiError> {
    let params = json::parse_query(call.query.as_deref(), &["prefix", "since"])?;
    let since = json::query_u64(&params, "since")?;
    let since = match last_event_id {
        Some(id) => id.saturating_add(1),
        None => since.unwrap_or(0),
    };
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
    // An index ahead of this member's store: behind the leader by a little (an EventSource
    // that reconnected to another member), the stream waits for it; but an index the cluster
    // never reached (a store restored from an older copy, another cluster's stream) would
    // hold a silent stream until the store got there. After catching up with the leader,
    // such an index is refused.
    if key.is_some() && since > app.backend.read(|state| state.v2.index()).saturating_add(1) {
        let caught_up = app.backend.linearizable_read().await;
        let index = app.backend.read(|state| state.v2.index());
        if caught_up.is_ok() && since > index.saturating_add(1) {
            let (field, given) = match last_event_id {
                Some(id) => ("Last-Event-ID", format!("Last-Event-ID {id}")),
                None => ("since", format!("since {since}")),
            };
            return Err(ApiError::invalid(
                field,
                format!(
                    "{given} is ahead of the store, whose index is {index}: an index this cluster has not \
                     reached (a stream of another cluster, or of a store since restored from an older copy?); \
                     leave it out to watch from now"
                ),
            ));
        }
    }
    // Subscribe before the first lookup, so an entry applied in between wakes the stream.
    let applied = app.backend.subscribe();
    let job_seq = app.backend.read(|state| state.jobs.last_change_seq());
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
        job_seq,
        pending_jobs: VecDeque::new(),
        applied,
        shutdown: app.shutdown.subscribe(),
        keepalive,
        id_sent: None,
        client_gone: crate::client_gone::gone(client),
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

/// How far a stream with keys has looked: an `event: index` whose `id` is that etcd index,
/// after `comment` (a keep-alive's).
fn index_event(looked: u64, comment: &str) -> String {
    format!("{comment}id: {looked}\nevent: index\ndata:\n\n")
}

fn chunk(text: String) -> Result<Bytes, Infallible> {
    Ok(Bytes::from(text))
}

/// The next event (or keep-alive comment) of a stream, or `None` to end it.
async fn next_chunk<B: Backend>(mut stream: Stream<B>) -> Option<(Result<Bytes, Infallible>, Stream<B>)> {
    loop {
        if let Some(key) = &stream.key {
            // How far the stream has looked, first thing and then every so many indexes.
            let looked = stream.since_index.saturating_sub(1);
            if stream.id_sent.is_none_or(|sent| looked >= sent.saturating_add(ID_EVERY_INDEXES)) {
                stream.id_sent = Some(looked);
                return Some((chunk(index_event(looked, "")), stream));
            }
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
                        stream.id_sent = Some(event.etcd_index);
                        // More may be waiting in the history: scan again before sleeping.
                        stream.keys_to_scan = true;
                        let data = render_json(&event);
                        let text = format!("id: {}\nevent: key\ndata: {}\n\n", event.etcd_index, data.trim_end());
                        return Some((chunk(text), stream));
                    }
                    Ok(WatchLookup::Pending { index }) => {
                        stream.since_index = stream.since_index.max(index + 1);
                        // Back to the top: an `id` may be due (`keys_to_scan` is false now).
                        continue;
                    }
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
        if let Some(text) = stream.pending_jobs.pop_front() {
            return Some((chunk(text), stream));
        }
        if let Some(filter) = &stream.jobs {
            let job_seq = stream.job_seq;
            let (read_up_to, missed, events) = stream.app.backend.read(|state| read_job_changes(state, filter, job_seq));
            stream.job_seq = read_up_to;
            stream.pending_jobs.extend(events);
            if missed {
                // An event, not a comment: EventSource and most SSE libraries drop comments.
                let text = "event: lagged\ndata: {\"message\":\"some job changes were not kept; list the jobs again\"}\n\n";
                return Some((chunk(text.to_owned()), stream));
            }
            if !stream.pending_jobs.is_empty() {
                continue;
            }
        }
        let Stream { applied, shutdown, keepalive, since_index, keys_to_scan, client_gone, .. } = &mut stream;
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return None;
                }
                if applied.borrow_and_update().etcd_index >= *since_index {
                    *keys_to_scan = true;
                }
            }
            _ = keepalive.tick() => {
                // With how far the stream has looked, if that moved since the last `id`.
                let looked = stream.since_index.saturating_sub(1);
                let text = if stream.key.is_some() && stream.id_sent != Some(looked) {
                    stream.id_sent = Some(looked);
                    index_event(looked, ": keepalive\n")
                } else {
                    ": keepalive\n\n".to_owned()
                };
                return Some((chunk(text), stream));
            }
            () = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => return None,
            () = client_gone.as_mut() => return None,
        }
    }
}

/// Reads the job changes after `after_seq`: the sequence number read up to, whether some
/// were no longer kept, and the events to send (each changed job that passes the filter,
/// once per read, as it is now; each one removed, as `job_removed`).
fn read_job_changes(state: &rota_core::State, filter: &JobFilter, after_seq: u64) -> (u64, bool, Vec<String>) {
    let changes = state.jobs.changes_after(after_seq, JOB_CHANGES_PER_READ_MAX);
    let read_up_to = changes.changes.last().map_or(after_seq, |&(seq, _)| seq);
    let mut seen = std::collections::HashSet::new();
    let mut events = Vec::new();
    // Newest first, so a job changed several times is sent once with its latest change's
    // place; then back to change order.
    for &(_, id) in changes.changes.iter().rev() {
        if !seen.insert(id) {
            continue;
        }
        let Some(job) = state.jobs.job(id) else {
            // Removed (retention, its queue deleted): which queue it was in is gone with
            // it, so every job stream is told; a client drops the id if it has it.
            events.push(format!("event: job_removed\ndata: {{\"id\":{id}}}\n\n"));
            continue;
        };
        if let JobFilter::Queue(queue) = filter {
            if job.queue != *queue {
                continue;
            }
        }
        let mut data = Vec::with_capacity(256 + job.payload.len());
        json::push_job(&mut data, &job);
        events.push(format!("event: job\ndata: {}\n\n", String::from_utf8_lossy(&data)));
    }
    events.reverse();
    (read_up_to, changes.missed, events)
}
