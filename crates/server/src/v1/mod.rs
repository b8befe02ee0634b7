//! The `/v1` API: queues, jobs, leases, counters and the SSE watch (docs/api-v1.md).
//!
//! Like the `/v2/keys` handlers, these map HTTP to `rota_core` commands and answers back;
//! semantics live in `rota_core::jobs`. What this layer adds is waiting: lease long-polls
//! served in arrival order per queue ([`waiters`]), wait-for-result, and the event stream.
//!
//! Invariants:
//! - a rejected request changes nothing: everything that can be checked without the state
//!   is checked before proposing, and the state machine checks the rest atomically;
//! - each mutating request is at most one proposal, except a lease long-poll, which
//!   proposes only when the local state says a lease can succeed;
//! - nothing a handler registers (a lease waiter, a result waiter, a stream) outlives the
//!   handler's future: it is released by a `Drop` guard when a client disconnects.
//!
//! Module map: [`errors`] (error envelope and status mapping), [`json`] (decoding,
//! rendering, query strings), [`limits`], [`queues`] (replace, patch, read, delete),
//! [`jobs`] (submit, get, cancel, retry, list, wait-for-result), [`lease`] (lease,
//! heartbeat, complete, fail, release), [`waiters`] (per-queue FIFO of long-polling
//! leases), [`counters`], [`sse`] (`/v1/watch` and the job event hub), `metrics`.

mod counters;
pub(crate) mod errors;
mod jobs;
mod json;
mod lease;
pub mod limits;
mod metrics;
mod queues;
mod sse;
mod waiters;

use std::sync::Arc;

use axum::body::Body;
use axum::http::header::HeaderValue;
use axum::http::{Method, Request, Response};
use prometheus_client::registry::Registry;
use rota_core::jobs::{JobCommand, JobResponse};
use rota_core::Command;

use crate::app::App;
use crate::backend::Backend;
use crate::respond::{self, IDEMPOTENT_REPLAYED};

pub(crate) use errors::ApiError;

/// The `/v1` layer's own state, one per server: lease waiters, the job event hub, metrics.
pub(crate) struct V1 {
    pub(crate) waiters: waiters::LeaseWaiters,
    pub(crate) metrics: metrics::V1Metrics,
    pub(crate) result_waiters: waiters::Slots,
}

impl V1 {
    /// Registers the `/v1` metrics into the server's registry.
    pub(crate) fn new(registry: &mut Registry) -> V1 {
        V1 {
            waiters: waiters::LeaseWaiters::default(),
            metrics: metrics::V1Metrics::register(registry),
            result_waiters: waiters::Slots::new(limits::RESULT_WAITERS_MAX),
        }
    }
}

/// Lease requests long-polling on `app` now (all queues); for tests and diagnostics.
pub fn lease_waiter_count<B>(app: &App<B>) -> usize {
    app.v1.waiters.count()
}

/// Requests waiting for a job to finish on `app` now.
pub fn result_waiter_count<B>(app: &App<B>) -> usize {
    app.v1.result_waiters.used()
}

/// Everything a handler needs about its request besides the body.
pub(crate) struct Call<'a> {
    pub method: Method,
    pub path: &'a str,
    pub query: Option<String>,
    /// The `Idempotency-Key`, for mutating requests.
    pub idempotency_key: Option<String>,
}

/// Answers a request under `/v1` (`path` is percent-decoded and clean).
pub(crate) async fn handle<B: Backend>(app: &Arc<App<B>>, request: Request<Body>, path: &str) -> Response<Body> {
    match route(app, request, path).await {
        Ok(response) => response,
        Err(error) => error.to_response(),
    }
}

async fn route<B: Backend>(app: &Arc<App<B>>, request: Request<Body>, path: &str) -> Result<Response<Body>, ApiError> {
    let method = request.method().clone();
    let mutating = matches!(method, Method::PUT | Method::PATCH | Method::POST | Method::DELETE);
    let idempotency_key = if mutating { json::idempotency_key(&request)? } else { None };
    let call = Call { method: method.clone(), path, query: request.uri().query().map(str::to_owned), idempotency_key };
    let rest = path.strip_prefix("/v1/").unwrap_or("");
    let segments: Vec<&str> = rest.split('/').collect();
    let get = method == Method::GET || method == Method::HEAD;
    match segments.as_slice() {
        ["queues"] | ["queues", ""] if get => queues::list(app, &call).await,
        ["queues"] => Err(ApiError::method_not_allowed("GET, HEAD")),
        ["queues", name] => match method {
            Method::PUT => queues::put(app, &call, name, request).await,
            Method::PATCH => queues::patch(app, &call, name, request).await,
            Method::DELETE => queues::delete(app, &call, name, request).await,
            _ if get => queues::get(app, &call, name).await,
            _ => Err(ApiError::method_not_allowed("GET, HEAD, PUT, PATCH, DELETE")),
        },
        ["queues", name, "jobs"] => match method {
            Method::POST => jobs::submit(app, &call, name, request).await,
            _ if get => jobs::list(app, &call, name).await,
            _ => Err(ApiError::method_not_allowed("GET, HEAD, POST")),
        },
        ["queues", name, "retry"] if method == Method::POST => queues::retry_dead(app, &call, name, request).await,
        ["queues", _, "retry"] => Err(ApiError::method_not_allowed("POST")),
        ["queues", name, "lease"] if method == Method::POST => lease::lease(app, &call, name, request).await,
        ["queues", _, "lease"] => Err(ApiError::method_not_allowed("POST")),
        ["jobs", id] => {
            let id = job_id(id)?;
            match method {
                Method::DELETE => jobs::cancel(app, &call, id, request).await,
                _ if get => jobs::get(app, &call, id).await,
                _ => Err(ApiError::method_not_allowed("GET, HEAD, DELETE")),
            }
        }
        ["jobs", id, action] => {
            let id = job_id(id)?;
            let known = matches!(*action, "heartbeat" | "complete" | "fail" | "release" | "retry");
            if !known {
                return Err(ApiError::not_found(format!("no such endpoint: {path}")));
            }
            if method != Method::POST {
                return Err(ApiError::method_not_allowed("POST"));
            }
            match *action {
                "retry" => jobs::retry(app, &call, id, request).await,
                _ => lease::on_lease(app, &call, id, action, request).await,
            }
        }
        ["counters", name] => match method {
            Method::POST => counters::increment(app, &call, name, request).await,
            Method::DELETE => counters::delete(app, &call, name, request).await,
            _ if get => counters::get(app, &call, name).await,
            _ => Err(ApiError::method_not_allowed("DELETE, GET, HEAD, POST")),
        },
        ["watch"] if get => {
            // EventSource's reconnection: the `id:` of the last event it got (an etcd index:
            // a key event's, or how far the stream had looked).
            let last_event_id = match request.headers().get("last-event-id") {
                None => None,
                Some(value) => match value.to_str().map(str::trim) {
                    Ok("") => None,
                    Ok(text) => Some(text.parse::<u64>().map_err(|_| {
                        ApiError::invalid("Last-Event-ID", format!("Last-Event-ID is an index this stream sent, got {text:?}"))
                    })?),
                    Err(_) => return Err(ApiError::invalid("Last-Event-ID", "Last-Event-ID is not text")),
                },
            };
            let socket = request.extensions().get::<crate::client_gone::ClientSocket>().copied();
            sse::watch(app, &call, last_event_id, socket).await
        }
        ["watch"] => Err(ApiError::method_not_allowed("GET, HEAD")),
        _ => Err(ApiError::not_found(format!("no such endpoint: {path}"))),
    }
}

fn job_id(text: &str) -> Result<u64, ApiError> {
    match text.parse::<u64>() {
        Ok(id) if id > 0 && !text.starts_with('+') => Ok(id),
        Err(error) if *error.kind() == std::num::IntErrorKind::PosOverflow && text.bytes().all(|b| b.is_ascii_digit()) => {
            Err(ApiError::invalid("id", format!("job id {text} is too large (ids are at most {})", u64::MAX)))
        }
        _ => Err(ApiError::invalid("id", format!("a job id is a positive integer, got {text:?}"))),
    }
}

/// A JSON answer, with `Idempotent-Replayed: true` when it is a stored first outcome.
pub(crate) fn reply(status: u16, body: Vec<u8>, replayed: bool) -> Response<Body> {
    let mut response = respond::json(status, body);
    if replayed {
        response.headers_mut().insert(IDEMPOTENT_REPLAYED.clone(), HeaderValue::from_static("true"));
    }
    response
}

/// A command's outcome: the state machine's answer and whether it was a replay.
pub(crate) struct Outcome {
    pub response: JobResponse,
    pub replayed: bool,
    /// The Raft index the command was applied at (by the leader: a follower that forwarded
    /// it may not have applied it yet).
    pub raft_index: u64,
}

/// Proposes `command`, under the request's idempotency key if it has one (`key` overrides
/// it: a long-poll derives one key per attempt). An error answer keeps its replay flag so a
/// replayed error carries the header too.
pub(crate) async fn propose<B: Backend>(
    app: &App<B>,
    call: &Call<'_>,
    key: Option<&str>,
    fingerprint: u64,
    command: JobCommand,
) -> Result<Outcome, (ApiError, bool)> {
    let key = key.or(call.idempotency_key.as_deref());
    let command = match key {
        Some(key) => Command::Idempotent { key: key.to_owned(), fingerprint, command: Box::new(Command::Jobs(command)) },
        None => Command::Jobs(command),
    };
    let proposed = app.backend.propose(command).await.map_err(|error| (ApiError::from_propose_error(&error), false))?;
    let raft_index = proposed.raft_index;
    let (response, replayed) = match proposed.response {
        rota_core::Response::Replayed(inner) => (*inner, true),
        other => (other, false),
    };
    match response {
        rota_core::Response::Jobs(Ok(response)) => Ok(Outcome { response, replayed, raft_index }),
        rota_core::Response::Jobs(Err(error)) => Err((ApiError::from_job_error(&error), replayed)),
        rota_core::Response::IdempotencyKeyReused { key } => Err((ApiError::idempotency_key_reused(&key), false)),
        other => {
            // The key was first used on a /v2/keys request: a different request.
            tracing::debug!(?other, "a /v1 command got an answer of another kind");
            Err((ApiError::idempotency_key_reused(key.unwrap_or_default()), false))
        }
    }
}

/// [`propose`] for handlers that answer an error as is (with the replay header if replayed).
pub(crate) async fn propose_once<B: Backend>(
    app: &App<B>,
    call: &Call<'_>,
    command: JobCommand,
) -> Result<Outcome, Response<Body>> {
    let fingerprint = if call.idempotency_key.is_some() { fingerprint(call, &command) } else { 0 };
    propose(app, call, None, fingerprint, command).await.map_err(|(error, replayed)| error_reply(&error, replayed))
}

pub(crate) fn error_reply(error: &ApiError, replayed: bool) -> Response<Body> {
    let mut response = error.to_response();
    if replayed {
        response.headers_mut().insert(IDEMPOTENT_REPLAYED.clone(), HeaderValue::from_static("true"));
    }
    response
}

/// Waits for a linearizable read point unless the query says `consistency=local`.
pub(crate) async fn read_point<B: Backend>(app: &App<B>, local: bool) -> Result<(), ApiError> {
    if !local {
        app.backend.linearizable_read().await.map_err(|error| ApiError::from_propose_error(&error))?;
    }
    Ok(())
}

/// The identity of a request for idempotency: a stable 64-bit FNV-1a hash of the method,
/// the path and the parsed command (its JSON form, whose field order is fixed by the type),
/// so a retried request matches its first attempt whatever its JSON spacing or field order.
pub(crate) fn fingerprint(call: &Call<'_>, command: &JobCommand) -> u64 {
    let mut hash = crate::fnv::Fnv1a::default();
    hash.text(call.method.as_str());
    hash.text(call.path);
    // Serializing plain data into a hasher cannot fail.
    let _ = serde_json::to_writer(&mut hash, command);
    hash.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_depends_on_path_and_command() {
        let call = |path| Call { method: Method::POST, path, query: None, idempotency_key: None };
        let cancel = |id| JobCommand::Cancel { id };
        assert_eq!(fingerprint(&call("/v1/jobs/1"), &cancel(1)), fingerprint(&call("/v1/jobs/1"), &cancel(1)));
        assert_ne!(fingerprint(&call("/v1/jobs/1"), &cancel(1)), fingerprint(&call("/v1/jobs/2"), &cancel(2)));
        assert_ne!(fingerprint(&call("/v1/jobs/1"), &cancel(1)), fingerprint(&call("/v1/jobs/1"), &cancel(2)));
    }

    #[test]
    fn job_ids_are_positive_integers() {
        assert_eq!(job_id("7"), Ok(7));
        for bad in ["0", "-1", "+1", "x", "", "18446744073709551616"] {
            assert_eq!(job_id(bad).map_err(|error| error.field), Err(Some("id".to_owned())), "{bad}");
        }
    }
}
