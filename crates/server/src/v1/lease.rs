//! Leases: `POST /v1/queues/{q}/lease` (with its long-poll) and the calls a lease holder
//! makes, `POST /v1/jobs/{id}/heartbeat|complete|fail|release`.
//!
//! The hot path, a lease that can be served at once, is one proposal and no waiting
//! machinery beyond an atomic load. A lease that gets nothing and may `wait` joins its
//! queue's line ([`super::waiters`]) and proposes again only when the local state says a
//! lease can succeed and its place in line is within the leases available.
//!
//! Idempotency of a long-poll: one request may take several attempts. Attempt `n` is
//! proposed under the request's key (`n = 0`) or the derived key `{key} {n}`, all with the
//! request's fingerprint, and a stored empty attempt is walked past at once. A retry of
//! the request (same key) therefore replays the attempts that happened, in order, and
//! answers the jobs the first request leased if it leased any, instead of leasing more.
//! The space keeps derived keys apart from every key a client can send (visible ASCII
//! only): with `~`, a client's own key `K~1` collided with a long-poll keyed `K`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response};
use rota_core::jobs::{limits as core_limits, Job, JobCommand, JobId, JobResponse, LeaseBlockReason, LeaseBlocked};
use rota_core::State;
use serde::Deserialize;

use super::json::{self, DurationMs, Raw};
use super::jobs::{job_command, GaugeGuard};
use super::limits::{LEASE_ATTEMPTS_REPLAYED_MAX, LEASE_WAIT_MS_MAX};
use super::metrics::LeaseWaitEnd;
use super::queues::unexpected;
use super::{error_reply, fingerprint, propose, reply, ApiError, Call};
use crate::app::{unix_now_ms, App};
use crate::backend::{Backend, ProposeError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseBody {
    worker: String,
    #[serde(default)]
    max: Option<u32>,
    #[serde(default)]
    wait: Option<DurationMs>,
    #[serde(default)]
    lease_ttl: Option<DurationMs>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatBody {
    lease_token: u64,
    #[serde(default)]
    lease_ttl: Option<DurationMs>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody<'a> {
    lease_token: u64,
    #[serde(borrow, default)]
    result: Option<Raw<'a>>,
    #[serde(default)]
    lease_next: Option<LeaseNextBody>,
}

/// `lease_next` of a complete: a lease from the same queue in the same entry (no `wait`:
/// a worker that gets nothing asks the queue's lease endpoint, which long-polls in line).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseNextBody {
    worker: String,
    #[serde(default)]
    max: Option<u32>,
    #[serde(default)]
    lease_ttl: Option<DurationMs>,
}

/// The error recorded for a `fail` whose `error` is missing or empty.
const FAIL_ERROR_NONE_GIVEN: &str = "failed (no error given)";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailBody {
    lease_token: u64,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    retry: Option<bool>,
    #[serde(default)]
    retry_after: Option<DurationMs>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    lease_token: u64,
}

fn check_lease_ttl(field: &str, lease_ttl: Option<DurationMs>) -> Result<Option<u64>, ApiError> {
    let Some(DurationMs(ms)) = lease_ttl else { return Ok(None) };
    json::check_range_ms(field, ms, core_limits::LEASE_TTL_MIN_MS, core_limits::LEASE_TTL_MAX_MS)?;
    Ok(Some(ms))
}

/// `POST /v1/jobs/{id}/heartbeat|complete|fail|release`.
pub(crate) async fn on_lease<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    id: JobId,
    action: &str,
    request: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    json::parse_query(call.query.as_deref(), &[])?;
    let body = json::read_body(request, &app.body_budget).await?;
    let command = match action {
        "heartbeat" => {
            let body: HeartbeatBody = json::decode(&body)?;
            JobCommand::Heartbeat { id, lease_token: body.lease_token, lease_ttl_ms: check_lease_ttl("lease_ttl", body.lease_ttl)? }
        }
        "complete" => {
            let body: CompleteBody<'_> = json::decode(&body)?;
            // Stored without the whitespace between its tokens, and measured so.
            let result = body.result.map(|raw| json::portable("result", raw.get())).transpose()?;
            if let Some(result) = &result {
                if result.len() > core_limits::RESULT_BYTES_MAX {
                    return Err(ApiError::too_large(
                        Some("result"),
                        format!("result is {} bytes without whitespace, at most {}", result.len(), core_limits::RESULT_BYTES_MAX),
                    ));
                }
            }
            if let Some(next) = body.lease_next {
                check_worker("lease_next.worker", &next.worker)?;
                let max = next.max.unwrap_or(1);
                json::check_range("lease_next.max", u64::from(max), 1, u64::from(core_limits::LEASE_BATCH_MAX))?;
                let lease_ttl_ms = check_lease_ttl("lease_next.lease_ttl", next.lease_ttl)?;
                let command = JobCommand::CompleteAndLease {
                    id,
                    lease_token: body.lease_token,
                    result,
                    worker: next.worker,
                    max,
                    lease_ttl_ms,
                };
                return complete_and_lease(app, call, command).await;
            }
            JobCommand::Complete { id, lease_token: body.lease_token, result }
        }
        "fail" => {
            let body: FailBody = json::decode(&body)?;
            // An attempt's error is what a person reads to learn why it failed: none at all
            // would show as an empty line.
            let error = body.error.filter(|error| !error.is_empty()).unwrap_or_else(|| FAIL_ERROR_NONE_GIVEN.to_owned());
            if error.len() > core_limits::ERROR_MESSAGE_BYTES_MAX {
                return Err(ApiError::too_large(
                    Some("error"),
                    format!("error is {} bytes, at most {}", error.len(), core_limits::ERROR_MESSAGE_BYTES_MAX),
                ));
            }
            if let Some(DurationMs(ms)) = body.retry_after {
                json::check_range_ms("retry_after", ms, 0, core_limits::DELAY_MS_MAX)?;
            }
            JobCommand::Fail {
                id,
                lease_token: body.lease_token,
                error,
                retry: body.retry.unwrap_or(true),
                retry_after_ms: body.retry_after.map(|after| after.0),
            }
        }
        _ => {
            let body: ReleaseBody = json::decode(&body)?;
            JobCommand::Release { id, lease_token: body.lease_token }
        }
    };
    job_command(app, call, command).await
}

fn check_worker(field: &str, worker: &str) -> Result<(), ApiError> {
    if worker.is_empty() || worker.len() > core_limits::WORKER_BYTES_MAX {
        return Err(ApiError::invalid(field, format!("worker must be 1 to {} bytes", core_limits::WORKER_BYTES_MAX)));
    }
    Ok(())
}

/// A complete with `lease_next`: `{"job": the completed job, "jobs": [leased...]}`.
///
/// The lease is left out (`"jobs": []`, the job only completed) when workers wait in the
/// queue's line, so a worker finishing a job never overtakes one that has been waiting, and
/// when the disk is short of space (a complete is still taken then, a lease is not). Both
/// forms are proposed under the request's key with the fingerprint of the whole request,
/// so a retry replays whichever took effect.
async fn complete_and_lease<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    command: JobCommand,
) -> Result<Response<Body>, ApiError> {
    let JobCommand::CompleteAndLease { id, lease_token, result, .. } = &command else {
        unreachable!("called with a complete-and-lease")
    };
    let complete_only = JobCommand::Complete { id: *id, lease_token: *lease_token, result: result.clone() };
    let fingerprint = if call.idempotency_key.is_some() { fingerprint(call, &command) } else { 0 };
    let key = call.idempotency_key.as_deref();
    let queue = app.backend.read(|state| state.jobs.queue_of(*id).map(str::to_owned));
    let line_waiting = queue.is_some_and(|queue| app.v1.waiters.has_waiters(&queue));
    let first = if line_waiting { complete_only.clone() } else { command };
    let outcome = match propose(app, call, key, fingerprint, first).await {
        Err((error, false)) if error.code == super::errors::NO_SPACE && !line_waiting => {
            propose(app, call, key, fingerprint, complete_only).await
        }
        other => other,
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err((error, replayed)) => return Ok(error_reply(&error, replayed)),
    };
    let body = match &outcome.response {
        JobResponse::CompletedAndLeased { job, jobs, blocked } => {
            json::completed_and_leased_body(job, jobs, blocked.as_ref())
        }
        JobResponse::Job(job) => json::completed_and_leased_body(job, &[], None),
        other => return Err(unexpected(other)),
    };
    Ok(reply(200, body, outcome.replayed))
}

/// `POST /v1/queues/{q}/lease`.
pub(crate) async fn lease<B: Backend>(
    app: &Arc<App<B>>,
    call: &Call<'_>,
    queue: &str,
    request: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    json::parse_query(call.query.as_deref(), &[])?;
    json::check_name("queue", queue)?;
    let body = json::read_body(request, &app.body_budget).await?;
    let body: LeaseBody = json::decode(&body)?;
    check_worker("worker", &body.worker)?;
    let max = body.max.unwrap_or(1);
    json::check_range("max", u64::from(max), 1, u64::from(core_limits::LEASE_BATCH_MAX))?;
    let wait_ms = body.wait.map_or(0, |wait| wait.0);
    json::check_range_ms("wait", wait_ms, 0, LEASE_WAIT_MS_MAX)?;
    let lease_ttl_ms = check_lease_ttl("lease_ttl", body.lease_ttl)?;
    let command = JobCommand::Lease { queue: queue.to_owned(), worker: body.worker, max, lease_ttl_ms };
    let mut attempts = Attempts {
        fingerprint: if call.idempotency_key.is_some() { fingerprint(call, &command) } else { 0 },
        next: 0,
        command,
    };
    let answer = |jobs: &[Job], blocked: Option<&LeaseBlocked>, replayed: bool| {
        reply(200, json::lease_body(jobs, blocked), replayed)
    };

    // Why the last attempt came back empty, for the answer if the wait runs out.
    let mut last_blocked: Option<LeaseBlocked> = None;
    // At once: nobody waits on this queue, or this request won't wait anyway.
    let waiters = &app.v1.waiters;
    if wait_ms == 0 || !waiters.has_waiters(queue) {
        match attempts.attempt(app, call).await {
            Ok(Attempt::Leased { jobs, blocked, replayed }) => return Ok(answer(&jobs, blocked.as_ref(), replayed)),
            Ok(Attempt::Blocked(blocked)) if wait_ms == 0 => return Ok(answer(&[], blocked.as_ref(), false)),
            Ok(Attempt::Blocked(blocked)) => last_blocked = blocked,
            Err((error, replayed)) => return Ok(error_reply(&error, replayed)),
        }
    }

    // Long-poll in this queue's line.
    let Some(place) = waiters.join(queue) else {
        return Err(ApiError::new(503, super::errors::UNAVAILABLE, "too many lease requests waiting", None));
    };
    let _waiting = GaugeGuard::new(&app.v1.metrics.lease_waiters);
    let mut record = WaitRecord { app, started: Instant::now(), end: LeaseWaitEnd::Abandoned };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let mut applied = app.backend.subscribe();
    // After an attempt that the local state said would succeed came back empty, no new
    // attempt before the token's exact time if the rate blocked it, and in any case not
    // before a short backoff that doubles with each such miss: the local clock may run
    // ahead of the leader's, or other nodes' leases may not be applied here yet, and an
    // attempt is a Raft entry whose own apply wakes this loop again.
    let mut not_before_ms = 0u64;
    let mut miss_backoff_ms = 0u64;
    // On shutdown a waiting lease is answered as its wait running out would be (no jobs),
    // not cut off: a worker then asks again, elsewhere or once the server is back.
    let mut shutdown = app.shutdown.subscribe();
    loop {
        if tokio::time::Instant::now() >= deadline || *shutdown.borrow_and_update() {
            record.end = LeaseWaitEnd::TimedOut;
            if app.backend.status().leader_id.is_none() {
                // A wait that never got to try (its queue full, others ahead of it) would
                // otherwise end empty without a reason while the cluster cannot lease at
                // all: say why, as an attempt would have.
                return Ok(error_reply(&ApiError::from_propose_error(&ProposeError::NoLeader), false));
            }
            return Ok(answer(&[], last_blocked.as_ref(), false));
        }
        applied.borrow_and_update();
        let now_ms = unix_now_ms();
        let position = place.position();
        let room = app.backend.read(|state| room_for_leases(state, queue, now_ms));
        if !room.exists {
            // Deleted while this waited (or never made yet): what an attempt would say now,
            // not why the last one, on the old queue, came back empty.
            last_blocked = Some(LeaseBlocked { reason: LeaseBlockReason::Empty, retry_at_ms: None });
        }
        if position < room.leases && now_ms >= not_before_ms {
            if position == 0 {
                place.wake_followers(room.leases);
            }
            match attempts.attempt(app, call).await {
                Ok(Attempt::Leased { jobs, blocked, replayed }) => {
                    record.end = LeaseWaitEnd::Served;
                    return Ok(answer(&jobs, blocked.as_ref(), replayed));
                }
                Ok(Attempt::Blocked(blocked)) => {
                    last_blocked.clone_from(&blocked);
                    miss_backoff_ms = (miss_backoff_ms * 2).clamp(1, MISS_BACKOFF_MS_MAX);
                    not_before_ms = unix_now_ms().saturating_add(miss_backoff_ms);
                    if let Some(LeaseBlocked { reason: LeaseBlockReason::Rate, retry_at_ms: Some(at_ms) }) = blocked {
                        not_before_ms = not_before_ms.max(at_ms);
                    }
                }
                Err((error, replayed)) => return Ok(error_reply(&error, replayed)),
            }
        }
        // Only the head watches the state and the clock; the others wait to be woken.
        let is_head = position == 0;
        let now_ms = unix_now_ms();
        let timer_ms = match room.next_token_at_ms.filter(|_| is_head) {
            Some(at_ms) => Some(at_ms.max(not_before_ms)),
            None if not_before_ms > now_ms && position < room.leases => Some(not_before_ms),
            None => None,
        };
        let timer = timer_ms.map(|at_ms| tokio::time::Instant::now() + Duration::from_millis(at_ms.saturating_sub(unix_now_ms())));
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            changed = applied.changed(), if is_head => {
                if changed.is_err() {
                    record.end = LeaseWaitEnd::TimedOut;
                    return Ok(answer(&[], last_blocked.as_ref(), false));
                }
            }
            () = async { if let Some(timer) = timer { tokio::time::sleep_until(timer).await } }, if timer.is_some() => {}
            () = place.woken() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The longest pause after a lease attempt that the local state expected to succeed but
/// that came back empty.
const MISS_BACKOFF_MS_MAX: u64 = 50;

enum Attempt {
    Leased { jobs: Vec<Job>, blocked: Option<LeaseBlocked>, replayed: bool },
    Blocked(Option<LeaseBlocked>),
}

/// The attempts of one lease request, each under its own derived idempotency key.
struct Attempts {
    command: JobCommand,
    fingerprint: u64,
    /// The next attempt's number.
    next: u32,
}

impl Attempts {
    /// Proposes the next attempt; a replayed empty attempt is walked past at once (up to
    /// [`LEASE_ATTEMPTS_REPLAYED_MAX`]).
    async fn attempt<B: Backend>(&mut self, app: &App<B>, call: &Call<'_>) -> Result<Attempt, (ApiError, bool)> {
        loop {
            let number = self.next;
            self.next = self.next.saturating_add(1);
            let key = match (&call.idempotency_key, number) {
                (Some(key), 1..) => Some(format!("{key} {number}")),
                _ => None,
            };
            let outcome = propose(app, call, key.as_deref(), self.fingerprint, self.command.clone()).await?;
            let JobResponse::Leased { jobs, blocked } = outcome.response else {
                return Err((unexpected(&outcome.response), false));
            };
            if !jobs.is_empty() {
                return Ok(Attempt::Leased { jobs, blocked, replayed: outcome.replayed });
            }
            if !(outcome.replayed && number < LEASE_ATTEMPTS_REPLAYED_MAX) {
                return Ok(Attempt::Blocked(blocked));
            }
        }
    }
}

/// What the local state says about leasing from `queue` now.
struct Room {
    /// How many single-job leases would succeed now (queued jobs, free concurrency, tokens).
    leases: usize,
    /// When the next rate token arrives, if the rate is all that blocks a lease.
    next_token_at_ms: Option<u64>,
    /// Whether the queue exists (a waiter's queue may be deleted under it).
    exists: bool,
}

fn room_for_leases(state: &State, queue: &str, now_ms: u64) -> Room {
    let now_ms = now_ms.max(state.time_ms());
    let Some(info) = state.jobs.queue(queue, now_ms) else {
        return Room { leases: 0, next_token_at_ms: None, exists: false };
    };
    if info.config.paused {
        return Room { leases: 0, next_token_at_ms: None, exists: true };
    }
    let free = info.config.concurrency.map_or(u64::MAX, |concurrency| u64::from(concurrency).saturating_sub(info.leases_held));
    let tokens = info.rate_tokens.unwrap_or(u64::MAX);
    let leases = info.counts.queued.min(free).min(tokens);
    let next_token_at_ms = match &info.config.rate {
        Some(rate) if tokens == 0 && info.counts.queued > 0 && free > 0 => {
            // The bucket gains a token within per/limit ms; search that span for the first
            // instant it holds one (the bucket is exact, so this is the leader's answer too).
            let (mut low_ms, mut high_ms) = (now_ms, now_ms.saturating_add(rate.per_ms.div_ceil(rate.limit.max(1))));
            while high_ms - low_ms > 1 {
                let middle_ms = low_ms + (high_ms - low_ms) / 2;
                let tokens = state.jobs.queue(queue, middle_ms).and_then(|info| info.rate_tokens).unwrap_or(0);
                if tokens > 0 { high_ms = middle_ms } else { low_ms = middle_ms }
            }
            Some(high_ms)
        }
        _ => None,
    };
    Room { leases: usize::try_from(leases).unwrap_or(usize::MAX), next_token_at_ms, exists: true }
}

/// Records how a long-poll ended, whichever way the handler's future ends.
struct WaitRecord<'a, B> {
    app: &'a App<B>,
    started: Instant,
    end: LeaseWaitEnd,
}

impl<B> Drop for WaitRecord<'_, B> {
    fn drop(&mut self) {
        self.app.v1.metrics.lease_wait_ended(self.end, self.started.elapsed());
    }
}
