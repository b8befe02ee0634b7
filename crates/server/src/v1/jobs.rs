//! Jobs: submit (one or a batch, one command either way), get, cancel, retry, the paged
//! listing, and wait-for-result (`?wait=` on submit and get).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{HeaderValue, LOCATION};
use axum::http::{Request, Response};
use rota_core::jobs::{limits as core_limits, Job, JobCommand, JobId, JobResponse, JobState, NewJob};
use serde::Deserialize;

use super::json::{self, DurationMs, Object, Raw, TimeMs};
use super::limits::RESULT_WAIT_MS_MAX;
use super::queues::unexpected;
use super::{propose_once, read_point, reply, ApiError, Call};
use crate::app::App;
use crate::backend::Backend;

/// One job's fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobBody<'a> {
    #[serde(borrow, default)]
    payload: Option<Raw<'a>>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    delay: Option<DurationMs>,
    #[serde(default)]
    run_at: Option<TimeMs>,
    #[serde(default)]
    max_attempts: Option<u32>,
}

/// One job's fields, or `jobs` for a batch (not both).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody<'a> {
    #[serde(borrow, default)]
    payload: Option<Raw<'a>>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    delay: Option<DurationMs>,
    #[serde(default)]
    run_at: Option<TimeMs>,
    #[serde(default)]
    max_attempts: Option<u32>,
    /// `Some(None)`: `"jobs": null`, refused (it read as a single job with no payload).
    #[serde(borrow, default, deserialize_with = "present")]
    jobs: Option<Option<Vec<Object<JobBody<'a>>>>>,
}

/// A field that is there, even as `null` (serde's `default` covers the absent case).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Checks one job's fields (what needs no state; the state machine checks the rest) and
/// makes it a [`NewJob`]. `prefix` is `""` or `"jobs[i]."`.
fn new_job(body: JobBody<'_>, prefix: &str) -> Result<NewJob, ApiError> {
    let field = |name: &str| format!("{prefix}{name}");
    // Stored without the whitespace between its tokens, and measured so (the body's own
    // bound keeps the raw text in check).
    let payload = json::portable(&field("payload"), body.payload.map_or("null", |raw| raw.get()))?;
    if payload.len() > core_limits::PAYLOAD_BYTES_MAX {
        return Err(ApiError::too_large(
            Some(&field("payload")),
            format!(
                "payload is {} bytes without whitespace, at most {}",
                payload.len(),
                core_limits::PAYLOAD_BYTES_MAX
            ),
        ));
    }
    let priority = body.priority.unwrap_or(0);
    if !(core_limits::PRIORITY_MIN..=core_limits::PRIORITY_MAX).contains(&priority) {
        return Err(ApiError::invalid(
            &field("priority"),
            format!("priority must be between {} and {}", core_limits::PRIORITY_MIN, core_limits::PRIORITY_MAX),
        ));
    }
    if body.delay.is_some() && body.run_at.is_some() {
        return Err(ApiError::invalid(&field("run_at"), "give delay or run_at, not both"));
    }
    if let Some(delay) = body.delay {
        json::check_range_ms(&field("delay"), delay.0, 0, core_limits::DELAY_MS_MAX)?;
    }
    if let Some(max_attempts) = body.max_attempts {
        json::check_range(&field("max_attempts"), u64::from(max_attempts), 1, u64::from(core_limits::MAX_ATTEMPTS_MAX))?;
    }
    Ok(NewJob {
        payload,
        priority,
        // `"delay": "0s"` is no delay at all: the same command, so the same request for an
        // Idempotency-Key as leaving it out.
        delay_ms: body.delay.map(|delay| delay.0).filter(|&delay_ms| delay_ms > 0),
        run_at_ms: body.run_at.map(|run_at| run_at.0),
        max_attempts: body.max_attempts,
    })
}

/// The jobs of a submit body and whether it was a batch.
fn new_jobs(body: SubmitBody<'_>) -> Result<(Vec<NewJob>, bool), ApiError> {
    let SubmitBody { payload, priority, delay, run_at, max_attempts, jobs } = body;
    let Some(jobs) = jobs else {
        let single = JobBody { payload, priority, delay, run_at, max_attempts };
        return Ok((vec![new_job(single, "")?], false));
    };
    let Some(jobs) = jobs else {
        return Err(ApiError::invalid("jobs", "jobs must be an array of jobs, not null"));
    };
    if payload.is_some() || priority.is_some() || delay.is_some() || run_at.is_some() || max_attempts.is_some() {
        return Err(ApiError::invalid("jobs", "give one job's fields or jobs, not both"));
    }
    if jobs.is_empty() {
        return Err(ApiError::invalid("jobs", "submit at least one job"));
    }
    if jobs.len() > core_limits::SUBMIT_BATCH_JOBS_MAX {
        return Err(ApiError::too_large(
            Some("jobs"),
            format!("at most {} jobs per submit, got {}", core_limits::SUBMIT_BATCH_JOBS_MAX, jobs.len()),
        ));
    }
    let mut payload_bytes = 0usize;
    let mut new_jobs = Vec::with_capacity(jobs.len());
    for (index, Object(job)) in jobs.into_iter().enumerate() {
        let job = new_job(job, &format!("jobs[{index}]."))?;
        payload_bytes += job.payload.len();
        new_jobs.push(job);
    }
    if payload_bytes > core_limits::SUBMIT_BATCH_PAYLOAD_BYTES_MAX {
        return Err(ApiError::too_large(
            Some("jobs"),
            format!(
                "at most {} payload bytes per submit, got {payload_bytes}",
                core_limits::SUBMIT_BATCH_PAYLOAD_BYTES_MAX
            ),
        ));
    }
    Ok((new_jobs, true))
}

/// `POST /v1/queues/{q}/jobs[?wait=]`.
pub(crate) async fn submit<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    queue: &str,
    request: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let params = json::parse_query(call.query.as_deref(), &["wait"])?;
    let wait_ms = json::query_duration_ms(&params, "wait", RESULT_WAIT_MS_MAX)?;
    json::check_name("queue", queue)?;
    let body = json::read_body(request, &app.body_budget).await?;
    let (jobs, is_batch) = new_jobs(json::decode::<SubmitBody<'_>>(&body)?)?;
    if is_batch && wait_ms.is_some() {
        return Err(ApiError::invalid("wait", "wait is for a single job, not a batch"));
    }
    let command = JobCommand::Submit { queue: queue.to_owned(), jobs };
    let outcome = match propose_once(app, call, command).await {
        Ok(outcome) => outcome,
        Err(response) => return Ok(response),
    };
    let JobResponse::Submitted { jobs } = outcome.response else { return Err(unexpected(&outcome.response)) };
    if is_batch {
        return Ok(reply(202, json::jobs_body(&jobs, None), outcome.replayed));
    }
    let Some(job) = jobs.into_iter().next() else { return Err(ApiError::invalid("jobs", "nothing submitted")) };
    let id = job.id;
    let (status, job) = match wait_ms {
        Some(wait_ms) if wait_ms > 0 && !job.state.is_terminal() => match wait_finished(app, id, wait_ms, Some((outcome.raft_index, &job))).await? {
            Some(job) if job.state.is_terminal() => (200, job),
            Some(job) => (202, job),
            // Removed while we waited: its queue was deleted (or it finished and its queue
            // keeps nothing, and the removal came before we looked). What we saw last would
            // be a state it no longer has; `GET /v1/jobs/{id}?wait` answers this case alike.
            None => {
                return Err(ApiError::not_found(format!(
                    "job {id} was accepted, then removed while the request waited (its queue was deleted, or it finished and its queue's retention is 0)"
                )))
            }
        },
        Some(_) if job.state.is_terminal() => (200, job),
        _ => (202, job),
    };
    let mut response = reply(status, json::job_body(&job), outcome.replayed);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/jobs/{id}")) {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

/// `GET /v1/jobs/{id}[?wait=]`.
pub(crate) async fn get<B: Backend>(app: &Arc<App<B>>, call: &Call<'_>, id: JobId) -> Result<Response<Body>, ApiError> {
    let params = json::parse_query(call.query.as_deref(), &["wait", "consistency"])?;
    let wait_ms = json::query_duration_ms(&params, "wait", RESULT_WAIT_MS_MAX)?;
    read_point(app, json::query_local(&params)?).await?;
    let job = match wait_ms {
        Some(wait_ms) if wait_ms > 0 => wait_finished(app, id, wait_ms, None).await?,
        _ => app.backend.read(|state| state.jobs.job(id)),
    };
    match job {
        Some(job) => Ok(reply(200, json::job_body(&job), false)),
        None => Err(ApiError::not_found(format!("job {id} not found"))),
    }
}

/// Waits until job `id` is finished, or `wait_ms` passed, re-reading it after each applied
/// entry. `None` if it does not exist (or stopped existing).
///
/// `created`: the Raft index of the entry that created the job and the job as that entry
/// answered. A follower that forwarded the submit may not have applied it yet; until it
/// has, the job is as created (not missing, which would read as removed).
async fn wait_finished<B: Backend>(
    app: &App<B>,
    id: JobId,
    wait_ms: u64,
    created: Option<(u64, &Job)>,
) -> Result<Option<Job>, ApiError> {
    let Some(_slot) = app.v1.result_waiters.acquire() else {
        return Err(ApiError::new(503, super::errors::UNAVAILABLE, "too many requests waiting for results", None));
    };
    let waiting = GaugeGuard::new(&app.v1.metrics.result_waiters);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let mut applied = app.backend.subscribe();
    // On shutdown the job is answered as it is now (202 if unfinished), not cut off.
    let mut shutdown = app.shutdown.subscribe();
    let result = loop {
        let applied_index = applied.borrow_and_update().raft_index;
        let job = match created {
            Some((created_at, job)) if applied_index < created_at => Some(job.clone()),
            // Reads the whole job each time; fine for the entries a job's life takes. A
            // cheaper state-only read in core would help if many wait on busy servers.
            _ => app.backend.read(|state| state.jobs.job(id)),
        };
        match job {
            Some(job) if !job.state.is_terminal() => {
                tokio::select! {
                    changed = tokio::time::timeout_at(deadline, applied.changed()) => match changed {
                        Ok(Ok(())) => continue,
                        Ok(Err(_)) | Err(_) => break Some(job),
                    },
                    _ = shutdown.wait_for(|stopping| *stopping) => break Some(job),
                }
            }
            other => break other,
        }
    };
    drop(waiting);
    Ok(result)
}

/// Holds a gauge up by one while alive.
pub(crate) struct GaugeGuard<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> GaugeGuard<'a> {
    pub(crate) fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> GaugeGuard<'a> {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `DELETE /v1/jobs/{id}`: cancel.
pub(crate) async fn cancel<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    id: JobId,
    request: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    json::parse_query(call.query.as_deref(), &[])?;
    json::read_no_fields(request, &app.body_budget).await?;
    job_command(app, call, JobCommand::Cancel { id }).await
}

/// `POST /v1/jobs/{id}/retry`: dead → queued.
pub(crate) async fn retry<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    id: JobId,
    request: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    json::parse_query(call.query.as_deref(), &[])?;
    json::read_no_fields(request, &app.body_budget).await?;
    job_command(app, call, JobCommand::Retry { id }).await
}

/// Proposes a command whose answer is one job, publishes it and answers it with 200.
pub(crate) async fn job_command<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    command: JobCommand,
) -> Result<Response<Body>, ApiError> {
    let outcome = match propose_once(app, call, command).await {
        Ok(outcome) => outcome,
        Err(response) => return Ok(response),
    };
    let JobResponse::Job(job) = outcome.response else { return Err(unexpected(&outcome.response)) };
    Ok(reply(200, json::job_body(&job), outcome.replayed))
}

/// `GET /v1/queues/{q}/jobs?state=&limit=&after=`: one page, ids ascending.
pub(crate) async fn list<B: Backend>(app: &Arc<App<B>>, call: &Call<'_>, queue: &str) -> Result<Response<Body>, ApiError> {
    const LIMIT_DEFAULT: u64 = 100;
    let params = json::parse_query(call.query.as_deref(), &["state", "limit", "after", "consistency"])?;
    json::check_name("queue", queue)?;
    let state = match json::query_value(&params, "state") {
        None => None,
        Some(text) => Some(JobState::ALL.into_iter().find(|state| state.as_str() == text).ok_or_else(|| {
            ApiError::invalid(
                "state",
                format!("state must be one of scheduled, queued, leased, succeeded, dead, cancelled; got {text:?}"),
            )
        })?),
    };
    let max = core_limits::LIST_LIMIT_MAX as u64;
    let limit = match json::query_value(&params, "limit") {
        None => LIMIT_DEFAULT,
        Some(given) => given.parse().ok().filter(|limit| (1..=max).contains(limit)).ok_or_else(|| {
            ApiError::invalid("limit", format!("limit must be a whole number between 1 and {max}, got {given:?}"))
        })?,
    };
    let after = json::query_u64(&params, "after")?;
    read_point(app, json::query_local(&params)?).await?;
    let page = app
        .backend
        .read(|s| s.jobs.list_jobs(queue, state, after, limit as usize))
        .map_err(|error| ApiError::from_job_error(&error))?;
    let next = if page.more { page.jobs.last().map(|job| job.id) } else { None };
    Ok(reply(200, json::jobs_body(&page.jobs, Some(("next", next))), false))
}
