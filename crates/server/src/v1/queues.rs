//! `PUT|PATCH|GET|DELETE /v1/queues/{q}` and `GET /v1/queues`.
//!
//! `PUT` replaces the whole configuration (a field left out gets its default); `PATCH`
//! changes the fields given and keeps the others, merged by the state machine against the
//! configuration current when it applies ([`JobCommand::PatchQueue`]).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response};
use rota_core::jobs::{
    limits as core_limits, Backoff, JobCommand, JobResponse, Nullable, QueueConfig, QueuePatch, RateLimit, RatePatch,
};
use serde::Deserialize;

use super::json::{self, DurationMs, Object};
use super::{propose_once, read_point, reply, ApiError, Call};
use crate::app::{unix_now_ms, App};
use crate::backend::Backend;

/// `PUT /v1/queues/{q}`: every field optional; a left-out field gets its default (the whole
/// configuration is replaced).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueBody {
    #[serde(default)]
    concurrency: Option<u32>,
    #[serde(default)]
    rate: Option<Object<RateBody>>,
    #[serde(default)]
    lease_ttl: Option<DurationMs>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    backoff: Option<Object<BackoffBody>>,
    #[serde(default)]
    retention: Option<DurationMs>,
    #[serde(default)]
    paused: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateBody {
    limit: u64,
    per: DurationMs,
    /// Defaults to `limit`: one period's worth of leases at once after a quiet spell.
    #[serde(default)]
    burst: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackoffBody {
    #[serde(default)]
    base: Option<DurationMs>,
    #[serde(default)]
    max: Option<DurationMs>,
}

/// `PATCH /v1/queues/{q}`: the fields to change. `null` turns off `concurrency` or
/// `rate`; no other field takes it. `rate` and `backoff` are merged into the current ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueuePatchBody {
    #[serde(default, deserialize_with = "json::nullable")]
    concurrency: Option<Nullable<u32>>,
    #[serde(default, deserialize_with = "json::nullable")]
    rate: Option<Nullable<Object<RatePatchBody>>>,
    #[serde(default, deserialize_with = "json::not_null")]
    lease_ttl: Option<DurationMs>,
    #[serde(default, deserialize_with = "json::not_null")]
    max_attempts: Option<u32>,
    #[serde(default, deserialize_with = "json::not_null")]
    backoff: Option<Object<BackoffPatchBody>>,
    #[serde(default, deserialize_with = "json::not_null")]
    retention: Option<DurationMs>,
    #[serde(default, deserialize_with = "json::not_null")]
    paused: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RatePatchBody {
    #[serde(default, deserialize_with = "json::not_null")]
    limit: Option<u64>,
    #[serde(default, deserialize_with = "json::not_null")]
    per: Option<DurationMs>,
    #[serde(default, deserialize_with = "json::not_null")]
    burst: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackoffPatchBody {
    #[serde(default, deserialize_with = "json::not_null")]
    base: Option<DurationMs>,
    #[serde(default, deserialize_with = "json::not_null")]
    max: Option<DurationMs>,
}

impl QueuePatchBody {
    fn into_patch(self) -> QueuePatch {
        let (backoff_base, backoff_max) = match self.backoff {
            Some(Object(BackoffPatchBody { base, max })) => (base, max),
            None => (None, None),
        };
        QueuePatch {
            concurrency: self.concurrency,
            rate: self.rate.map(|rate| match rate {
                Nullable::Null => Nullable::Null,
                Nullable::Value(Object(rate)) => Nullable::Value(RatePatch {
                    limit: rate.limit,
                    per_ms: rate.per.map(|per| per.0),
                    burst: rate.burst,
                }),
            }),
            lease_ttl_ms: self.lease_ttl.map(|ttl| ttl.0),
            max_attempts: self.max_attempts,
            backoff_base_ms: backoff_base.map(|base| base.0),
            backoff_max_ms: backoff_max.map(|max| max.0),
            retention_ms: self.retention.map(|retention| retention.0),
            paused: self.paused,
        }
    }
}

impl QueueBody {
    fn into_config(self) -> QueueConfig {
        let defaults = QueueConfig::default();
        let backoff = match self.backoff {
            None => defaults.backoff,
            Some(Object(BackoffBody { base, max })) => {
                let base_ms = base.map_or(core_limits::BACKOFF_BASE_DEFAULT_MS, |base| base.0);
                // A base above the default max raises the default max with it.
                let max_ms = max.map_or(core_limits::BACKOFF_MAX_DEFAULT_MS.max(base_ms), |max| max.0);
                Backoff { base_ms, max_ms }
            }
        };
        QueueConfig {
            concurrency: self.concurrency,
            rate: self.rate.map(|Object(rate)| RateLimit { limit: rate.limit, per_ms: rate.per.0, burst: rate.burst.unwrap_or(rate.limit) }),
            lease_ttl_ms: self.lease_ttl.map_or(defaults.lease_ttl_ms, |ttl| ttl.0),
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            backoff,
            retention_ms: self.retention.map_or(defaults.retention_ms, |retention| retention.0),
            paused: self.paused.unwrap_or(defaults.paused),
        }
    }
}

pub(crate) async fn put<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    name: &str,
    request: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    json::parse_query(call.query.as_deref(), &[])?;
    json::check_name("queue", name)?;
    let body = json::read_body(request, &app.body_budget).await?;
    let config = json::decode::<QueueBody>(&body)?.into_config();
    // The state machine checks this too; checking first keeps a bad request out of the log.
    config.validate().map_err(|error| ApiError::from_job_error(&error))?;
    configure(app, call, JobCommand::PutQueue { queue: name.to_owned(), config }).await
}

pub(crate) async fn patch<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    name: &str,
    request: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    json::parse_query(call.query.as_deref(), &[])?;
    json::check_name("queue", name)?;
    let body = json::read_body(request, &app.body_budget).await?;
    let patch = json::decode::<QueuePatchBody>(&body)?.into_patch();
    // Each value on its own; the state machine checks the merged configuration.
    patch.validate().map_err(|error| ApiError::from_job_error(&error))?;
    configure(app, call, JobCommand::PatchQueue { queue: name.to_owned(), patch }).await
}

/// Proposes a `PutQueue` or `PatchQueue` and answers the queue as it is after it.
async fn configure<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    command: JobCommand,
) -> Result<Response<Body>, ApiError> {
    let outcome = match propose_once(app, call, command).await {
        Ok(outcome) => outcome,
        Err(response) => return Ok(response),
    };
    match outcome.response {
        JobResponse::Queue(info) => Ok(reply(200, json::queue_body(&info), outcome.replayed)),
        other => Err(unexpected(&other)),
    }
}

pub(crate) async fn get<B: Backend>(app: &Arc<App<B>>, call: &Call<'_>, name: &str) -> Result<Response<Body>, ApiError> {
    let params = json::parse_query(call.query.as_deref(), &["consistency"])?;
    json::check_name("queue", name)?;
    read_point(app, json::query_local(&params)?).await?;
    let info = app.backend.read(|state| state.jobs.queue(name, unix_now_ms().max(state.time_ms())));
    match info {
        Some(info) => Ok(reply(200, json::queue_body(&info), false)),
        None => Err(ApiError::not_found(format!("queue {name:?} not found"))),
    }
}

pub(crate) async fn list<B: Backend>(app: &Arc<App<B>>, call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let params = json::parse_query(call.query.as_deref(), &["consistency"])?;
    read_point(app, json::query_local(&params)?).await?;
    let queues = app.backend.read(|state| state.jobs.queues(unix_now_ms().max(state.time_ms())));
    let mut out = Vec::with_capacity(16 + queues.len() * 384);
    out.extend_from_slice(b"{\"queues\":[");
    for (index, queue) in queues.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        json::push_queue(&mut out, queue);
    }
    out.extend_from_slice(b"]}\n");
    Ok(reply(200, out, false))
}

pub(crate) async fn delete<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    name: &str,
    request: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let params = json::parse_query(call.query.as_deref(), &["force"])?;
    let force = json::query_bool(&params, "force")?;
    if let Err(error) = json::read_no_fields(request, &app.body_budget).await {
        if error.field.as_deref() == Some("force") {
            return Err(ApiError::invalid("force", format!("force goes in the query: DELETE /v1/queues/{name}?force=true")));
        }
        return Err(error);
    }
    json::check_name("queue", name)?;
    let command = JobCommand::DeleteQueue { queue: name.to_owned(), force };
    let outcome = match propose_once(app, call, command).await {
        Ok(outcome) => outcome,
        Err(response) => return Ok(response),
    };
    match outcome.response {
        JobResponse::QueueDeleted { queue, jobs_removed } => {
            let mut out = Vec::with_capacity(64 + queue.len());
            out.extend_from_slice(b"{\"queue\":");
            json::push_string(&mut out, &queue);
            out.extend_from_slice(format!(",\"jobs_removed\":{jobs_removed}}}\n").as_bytes());
            Ok(reply(200, out, outcome.replayed))
        }
        other => Err(unexpected(&other)),
    }
}

/// `POST /v1/queues/{q}/retry`: `{"max": n, "after": id}` (`max` 1 to 1,000, default
/// 1,000; `after` a job id, default none: from the first dead job).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryDeadBody {
    #[serde(default)]
    max: Option<u32>,
    #[serde(default)]
    after: Option<u64>,
}

/// `POST /v1/queues/{q}/retry`: up to `max` of the queue's dead jobs with ids after
/// `after`, oldest first, queued again (as `POST /v1/jobs/{id}/retry` each) in one command.
/// Answers `{"queue", "retried": [ids], "dead": n}`, `dead` being how many are still dead.
/// To empty the dead letters, repeat with `after` = the last id retried until none is.
pub(crate) async fn retry_dead<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    name: &str,
    request: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    json::parse_query(call.query.as_deref(), &[])?;
    let body = json::read_body(request, &app.body_budget).await?;
    let body: RetryDeadBody = json::decode(&body)?;
    json::check_name("queue", name)?;
    let max = body.max.unwrap_or(core_limits::LIST_LIMIT_MAX as u32);
    json::check_range("max", u64::from(max), 1, core_limits::LIST_LIMIT_MAX as u64)?;
    let command = JobCommand::RetryDead { queue: name.to_owned(), max, after: body.after.unwrap_or(0) };
    let outcome = match propose_once(app, call, command).await {
        Ok(outcome) => outcome,
        Err(response) => return Ok(response),
    };
    match outcome.response {
        JobResponse::RetriedDead { queue, ids, dead_left } => {
            let mut out = Vec::with_capacity(64 + queue.len() + ids.len() * 8);
            out.extend_from_slice(b"{\"queue\":");
            json::push_string(&mut out, &queue);
            out.extend_from_slice(b",\"retried\":[");
            for (at, id) in ids.iter().enumerate() {
                if at > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(id.to_string().as_bytes());
            }
            out.extend_from_slice(format!("],\"dead\":{dead_left}}}\n").as_bytes());
            Ok(reply(200, out, outcome.replayed))
        }
        other => Err(unexpected(&other)),
    }
}

/// A state machine answer of the wrong kind for its command: a bug in this server, never
/// the client's input, answered as a 500 rather than a panic.
pub(crate) fn unexpected(response: &JobResponse) -> ApiError {
    tracing::error!(?response, "a /v1 command got an answer of another kind");
    ApiError::new(500, super::errors::INTERNAL, "unexpected answer from the state machine", None)
}
