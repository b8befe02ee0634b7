//! The `/v1` API (queues, jobs, leases, counters) as typed async methods on [`Client`].
//!
//! The wire contract is `docs/api-v1.md`; this module only shapes requests and answers.
//!
//! Retries: a request that could not reach a server (connect refused, reset, timeout, a
//! broken answer) or that a server answered `503` (no leader yet, shutting down), `504
//! outcome_unknown` (its leader failed before it answered) or `429` (over
//! `--client-rate-limit`) is tried again on the next endpoint, and after a full round
//! over the endpoints, after a backoff (100 ms doubling to 1 s; a 429's `Retry-After`), until [`V1_RETRY_FOR`] has passed since the first attempt. That
//! is long enough to ride out a restart of the server. The first failed round is told to
//! the client's [`Client::on_reachability`] observer, and a call that gives up names every
//! endpoint with its own failure ([`Unreachable`]). Every mutation carries an
//! `Idempotency-Key` made once per logical operation and sent unchanged on every retry, so
//! the server applies it at most once and answers a repeat with the first outcome
//! (`Idempotent-Replayed: true`). The `*_keyed` methods take the key from the caller, who
//! can then retry beyond this module's budget (the worker runner does) without the
//! operation ever applying twice. Other answers are never retried.
//!
//! Payloads and results are [`RawJson`]: JSON text sent and kept exactly as given (key
//! order, big integers, number spelling), never re-encoded through a `serde_json::Value`.
//! So the same job sent again with the same key is the same request to the server, byte
//! for byte, and a user's payload reaches the worker's command as the user wrote it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use percent_encoding::utf8_percent_encode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{idempotency_key, transport_error, Client, EndpointFailure, Unreachable, FORM_KEEP};

pub use crate::raw_json::RawJson;

/// How long one call keeps retrying unreachable endpoints and `503`s before giving up,
/// unless [`set_v1_retry_for`] changed it.
pub const V1_RETRY_FOR: Duration = Duration::from_secs(30);
/// The budget in force, process-wide (a command line sets it once from a flag).
static V1_RETRY_FOR_MS: AtomicU64 = AtomicU64::new(V1_RETRY_FOR.as_millis() as u64);

/// Sets how long every `/v1` call of this process keeps retrying (default [`V1_RETRY_FOR`]).
pub fn set_v1_retry_for(budget: Duration) {
    V1_RETRY_FOR_MS.store(
        u64::try_from(budget.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// The budget in force (see [`set_v1_retry_for`]).
pub fn v1_retry_for() -> Duration {
    Duration::from_millis(V1_RETRY_FOR_MS.load(Ordering::Relaxed))
}
/// Backoff after a failed round over the endpoints: doubles from here, capped below.
const V1_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const V1_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A long-poll (`wait`) gets this much longer than its wait before the client gives up on it.
const LONG_POLL_MARGIN: Duration = Duration::from_secs(10);
/// Waits longer than this are split into several server-side waits (servers cap theirs).
pub const SERVER_WAIT_MAX: Duration = Duration::from_secs(30);
/// Answers larger than this are refused (a page of 1000 jobs with 256 KiB payloads is the
/// worst legitimate case and stays well below).
const ANSWER_BYTES_MAX: usize = 512 << 20;

pub type JobId = u64;

/// The server's error envelope: `{"error": {"code", "message", "field"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ApiError {
    /// HTTP status of the answer.
    #[serde(skip)]
    pub status: u16,
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub field: Option<String>,
}

impl fmt::Display for ApiError {
    /// `409 stale_lease: the lease token is not current (field: lease_token)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)?;
        if let Some(field) = &self.field {
            write!(f, " (field: {field})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// The server refused the request.
    #[error("{0}")]
    Api(ApiError),
    /// No endpoint took the request (each failed, or answered 503 or 429) within the retry
    /// budget: each endpoint's failure in the last round.
    #[error("cluster unreachable: {0}")]
    Unavailable(Unreachable),
    /// An answer that is neither the expected JSON nor an error envelope.
    #[error("unexpected answer: HTTP {status}: {body}")]
    Unexpected { status: u16, body: String },
    #[error("{0}")]
    Client(String),
}

impl JobsError {
    /// The server's error code (`stale_lease`, `not_found`, ...), if it answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            JobsError::Api(error) => Some(error.code.as_str()),
            _ => None,
        }
    }

    /// HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            JobsError::Api(error) => Some(error.status),
            _ => None,
        }
    }
}

/// A job's state: the state machine's own type (same wire form).
pub use rota_core::jobs::JobState;

/// One failed attempt as the server records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptError {
    pub attempt: u32,
    /// RFC 3339 time.
    pub at: String,
    pub error: String,
}

/// A job as the server renders it. Times are RFC 3339 strings as sent; `payload` and
/// `result` are the server's JSON text, unchanged (`null` for none); fields this client
/// does not know are kept in `extra` (and printed again by `rota job ... -o json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub queue: String,
    pub state: JobState,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub payload: RawJson,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub max_attempts: u32,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub run_at: Option<String>,
    #[serde(default)]
    pub result: RawJson,
    #[serde(default)]
    pub errors: Vec<AttemptError>,
    /// Only while leased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub purge_at: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Job {
    /// The payload decoded into `T` (the text itself is `self.payload.get()`).
    pub fn payload_json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.payload.decode()
    }

    /// The result decoded into `T` (`null` while there is none).
    pub fn result_json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.result.decode()
    }
}

/// A job to submit. `delay` and `run_at` are exclusive (the server refuses both).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewJob {
    /// Sent as this text (`null` by default).
    pub payload: RawJson,
    pub priority: i64,
    pub delay: Option<Duration>,
    /// RFC 3339 time.
    pub run_at: Option<String>,
    pub max_attempts: Option<u32>,
}

impl NewJob {
    /// A job with this payload: a [`RawJson`] (sent as its text) or a `serde_json::Value`
    /// (encoded as a tree is: keys sorted).
    pub fn new(payload: impl Into<RawJson>) -> NewJob {
        NewJob {
            payload: payload.into(),
            ..NewJob::default()
        }
    }

    /// The body as sent: fields at their default are left out, as a person writing it by
    /// hand would, so a job with only a payload is `{"payload":<its text>}`.
    fn to_body(&self) -> NewJobBody<'_> {
        NewJobBody {
            payload: &self.payload,
            priority: self.priority,
            delay: self.delay.map(duration_text),
            run_at: self.run_at.as_deref(),
            max_attempts: self.max_attempts,
        }
    }
}

#[derive(Serialize)]
struct NewJobBody<'a> {
    payload: &'a RawJson,
    #[serde(skip_serializing_if = "is_zero")]
    priority: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
}

/// A batch submit's body.
#[derive(Serialize)]
struct NewJobsBody<'a> {
    jobs: Vec<NewJobBody<'a>>,
}

fn is_zero(number: &i64) -> bool {
    *number == 0
}

/// A rate limit: `limit` leases every `per`, at most `burst` at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub limit: u64,
    /// A duration string (`"1s"`).
    pub per: String,
    pub burst: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub base: String,
    pub max: String,
}

/// A queue's configuration. `PUT` replaces the whole configuration: a `None` is the
/// default (unlimited concurrency, no rate, 30s lease ttl, 5 attempts, backoff 1s..1h,
/// retention 168h, not paused). Durations are strings. `concurrency` and `rate` are written
/// as `null` when `None` (the server's own "unlimited" and "no rate", as it answers them),
/// the others are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    #[serde(default)]
    pub concurrency: Option<u64>,
    #[serde(default)]
    pub rate: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// The settings a `PATCH` changes ([`Client::patch_queue`]); the others keep their current
/// values. Only the fields that are `Some` are sent; `concurrency: Some(None)` and
/// `rate: Some(None)` send `null` (no concurrency limit, no rate).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueuePatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Option<RatePatch>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffPatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// The parts of a rate to change, merged by the server into the queue's rate (a queue
/// without one needs `limit` and `per`). Without `burst`, a new `limit` is also the burst.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RatePatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// A duration string (`"1s"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// The parts of a backoff to change. A `base` over the current max raises the max with it
/// unless `max` is given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BackoffPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounts {
    #[serde(default)]
    pub queued: u64,
    #[serde(default)]
    pub scheduled: u64,
    #[serde(default)]
    pub leased: u64,
    #[serde(default)]
    pub succeeded: u64,
    #[serde(default)]
    pub dead: u64,
    #[serde(default)]
    pub cancelled: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    pub name: String,
    #[serde(default)]
    pub config: QueueConfig,
    #[serde(default)]
    pub counts: JobCounts,
    /// Rate tokens available now (`None` without a rate), as the server wrote the number.
    #[serde(default)]
    pub rate_tokens: Option<serde_json::Number>,
    /// Leases taking a concurrency slot (a job cancelled while leased holds one until its
    /// worker lets go or the lease ends). `None` from a server that does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leases_held: Option<u64>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDeleted {
    pub queue: String,
    pub jobs_removed: u64,
}

/// The answer to `POST /v1/queues/{q}/retry`: the dead jobs queued again, and how many of
/// the queue's jobs are still dead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetriedDead {
    pub queue: String,
    pub retried: Vec<JobId>,
    pub dead: u64,
}

/// An answer to a submit.
#[derive(Clone, Debug, PartialEq)]
pub struct Submitted {
    pub job: Job,
    /// `/v1/jobs/{id}` from `Location`.
    pub location: Option<String>,
    /// The server answered a stored outcome (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

/// One page of a job listing; `next` is the `after` of the next page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    #[serde(default)]
    pub next: Option<JobId>,
}

/// `lease_next` of a complete: the next lease, taken in the same entry as the complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseNext {
    pub worker: String,
    /// Jobs wanted, 1 to 1000.
    pub max: u32,
    /// The lease's ttl; `None` takes the queue's.
    pub lease_ttl: Option<Duration>,
}

/// A complete with `lease_next`: the completed job and what was leased after it (`leased`
/// is empty, with the reason in `leased.extra["blocked"]` when there is one, if nothing
/// could be leased at once).
#[derive(Clone, Debug, PartialEq)]
pub struct CompletedNext {
    pub job: Job,
    pub leased: Leased,
}

impl<'de> Deserialize<'de> for CompletedNext {
    /// Not `#[serde(flatten)] leased`: serde buffers a flattened value before decoding it,
    /// and the leased jobs' payloads ([`RawJson`]) cannot be read from that buffer.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Answer {
            job: Job,
            jobs: Vec<Job>,
            #[serde(flatten)]
            extra: serde_json::Map<String, Value>,
        }
        let Answer { job, jobs, extra } = Answer::deserialize(deserializer)?;
        Ok(CompletedNext {
            job,
            leased: Leased { jobs, extra },
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub limit: Option<u32>,
    pub after: Option<JobId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRequest {
    /// Who holds the lease (shown in the job), e.g. `host/pid`.
    pub worker: String,
    /// Jobs wanted, 1 to 1000.
    pub max: u32,
    /// How long the server may hold the request waiting for a job (at most 60 s).
    pub wait: Duration,
    /// The lease's ttl; `None` takes the queue's.
    pub lease_ttl: Option<Duration>,
}

/// The leased jobs (each with `lease_token` and `lease_expires_at`); empty when nothing
/// could be leased within the wait. Other fields of the answer (why it came back short)
/// are kept in `extra`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Leased {
    pub jobs: Vec<Job>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailRequest {
    pub error: String,
    /// `false` makes the job dead at once.
    pub retry: Option<bool>,
    /// Retry after this instead of the queue's backoff.
    pub retry_after: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Counter {
    pub name: String,
    pub value: u64,
}

/// `30s` for whole seconds, else `1500ms` (rounded down to milliseconds): both parse as
/// humantime durations.
pub fn duration_text(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// One request before it is sent (and as it is re-sent on a retry).
struct V1Request {
    method: reqwest::Method,
    /// Path and query, already escaped.
    target: String,
    body: Option<Vec<u8>>,
    idempotency_key: Option<String>,
    timeout: Duration,
}

/// An answer that made it back (any status but 503).
struct V1Answer {
    status: u16,
    body: Vec<u8>,
    replayed: bool,
    location: Option<String>,
    /// `Retry-After` in seconds, when given.
    retry_after: Option<Duration>,
}

impl V1Answer {
    fn parse<T: DeserializeOwned>(&self) -> Result<T, JobsError> {
        if !(200..300).contains(&self.status) {
            return Err(self.to_error());
        }
        serde_json::from_slice(&self.body).map_err(|_| self.unexpected())
    }

    /// `504 outcome_unknown`: the request may or may not have been applied (its leader
    /// failed before it answered). Sent again with its idempotency key, as every request
    /// of this client is, it is applied at most once.
    fn is_outcome_unknown(&self) -> bool {
        self.status == 504 && matches!(self.to_error(), JobsError::Api(ref error) if error.code == "outcome_unknown")
    }

    fn to_error(&self) -> JobsError {
        #[derive(Deserialize)]
        struct Envelope {
            error: ApiError,
        }
        match serde_json::from_slice::<Envelope>(&self.body) {
            Ok(Envelope { mut error }) => {
                error.status = self.status;
                JobsError::Api(error)
            }
            Err(_) => self.unexpected(),
        }
    }

    fn unexpected(&self) -> JobsError {
        let body = String::from_utf8_lossy(&self.body);
        let shown: String = body.chars().take(512).collect();
        JobsError::Unexpected {
            status: self.status,
            body: shown,
        }
    }
}

/// A queue or counter name as a path segment, refused here by the server's own rule (the
/// answer the server would give) so that a name such as `../jobs/7` never reaches a URL.
fn name_segment(field: &str, name: &str) -> Result<String, JobsError> {
    match rota_core::jobs::check_name(field, name) {
        Ok(()) => Ok(segment(name)),
        Err(error) => Err(JobsError::Api(ApiError {
            status: 400,
            code: error.code,
            message: error.message,
            field: error.field,
        })),
    }
}

fn segment(text: &str) -> String {
    utf8_percent_encode(text, FORM_KEEP).to_string()
}

/// A request body as JSON text. [`RawJson`] fields go in as their text; nothing here
/// passes through a `serde_json::Value` that would re-encode them.
fn json_body<T: Serialize + ?Sized>(body: &T) -> Result<Vec<u8>, JobsError> {
    serde_json::to_vec(body)
        .map_err(|error| JobsError::Client(format!("cannot encode the request: {error}")))
}

/// `complete`'s body.
#[derive(Serialize)]
struct CompleteBody<'a> {
    lease_token: u64,
    result: &'a RawJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_next: Option<Value>,
}

fn query_string(fields: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (name, value) in fields {
        out.push(if out.is_empty() { '?' } else { '&' });
        out.push_str(name);
        out.push('=');
        out.push_str(&segment(value));
    }
    out
}

impl Client {
    // ---- queues -------------------------------------------------------------------------

    /// `PUT /v1/queues/{q}`: creates the queue or replaces its whole configuration.
    pub async fn put_queue(&self, queue: &str, config: &QueueConfig) -> Result<Queue, JobsError> {
        let request = self.mutation(
            reqwest::Method::PUT,
            format!("/v1/queues/{}", name_segment("queue", queue)?),
            Some(json_body(config)?),
            &idempotency_key(),
        );
        self.send_v1(request).await?.parse()
    }

    /// `PATCH /v1/queues/{q}`: changes the settings `patch` gives and keeps the others, in
    /// one step on the server (two patches of different settings never undo each other);
    /// creates the queue from the defaults if it does not exist.
    pub async fn patch_queue(&self, queue: &str, patch: &QueuePatch) -> Result<Queue, JobsError> {
        let request = self.mutation(
            reqwest::Method::PATCH,
            format!("/v1/queues/{}", name_segment("queue", queue)?),
            Some(json_body(patch)?),
            &idempotency_key(),
        );
        self.send_v1(request).await?.parse()
    }

    /// `GET /v1/queues/{q}`.
    pub async fn get_queue(&self, queue: &str) -> Result<Queue, JobsError> {
        self.send_v1(self.read(
            format!("/v1/queues/{}", name_segment("queue", queue)?),
            None,
        ))
        .await?
        .parse()
    }

    /// `GET /v1/queues`.
    pub async fn list_queues(&self) -> Result<Vec<Queue>, JobsError> {
        #[derive(Deserialize)]
        struct Queues {
            queues: Vec<Queue>,
        }
        let queues: Queues = self
            .send_v1(self.read("/v1/queues".into(), None))
            .await?
            .parse()?;
        Ok(queues.queues)
    }

    /// `DELETE /v1/queues/{q}`: with `force`, also while it has unfinished jobs.
    pub async fn delete_queue(&self, queue: &str, force: bool) -> Result<QueueDeleted, JobsError> {
        let mut target = format!("/v1/queues/{}", name_segment("queue", queue)?);
        if force {
            target.push_str("?force=true");
        }
        let request = self.mutation(reqwest::Method::DELETE, target, None, &idempotency_key());
        self.send_v1(request).await?.parse()
    }

    // ---- jobs ---------------------------------------------------------------------------

    /// Submits one job. With `wait`, also waits (up to `wait`) for it to finish and returns
    /// it as it is then; check `job.state`.
    pub async fn submit(
        &self,
        queue: &str,
        job: &NewJob,
        wait: Option<Duration>,
    ) -> Result<Submitted, JobsError> {
        self.submit_keyed(&idempotency_key(), queue, job, wait)
            .await
    }

    /// [`Client::submit`] with the caller's idempotency key: the same key and job always
    /// give the same job, however often it is sent.
    pub async fn submit_keyed(
        &self,
        key: &str,
        queue: &str,
        job: &NewJob,
        wait: Option<Duration>,
    ) -> Result<Submitted, JobsError> {
        let started = Instant::now();
        let mut target = format!("/v1/queues/{}/jobs", name_segment("queue", queue)?);
        let server_wait = wait.map(|wait| wait.min(SERVER_WAIT_MAX));
        if let Some(server_wait) = server_wait {
            target.push_str(&query_string(&[("wait", duration_text(server_wait))]));
        }
        let mut request = self.mutation(
            reqwest::Method::POST,
            target,
            Some(json_body(&job.to_body())?),
            key,
        );
        request.timeout += server_wait.unwrap_or_default();
        let answer = self.send_v1(request).await?;
        let mut submitted = Submitted {
            job: answer.parse()?,
            location: answer.location.clone(),
            replayed: answer.replayed,
        };
        if let Some(wait) = wait {
            let left = wait.saturating_sub(started.elapsed());
            if !submitted.job.state.is_terminal() && !left.is_zero() {
                submitted.job = self.wait_job(submitted.job.id, left).await?;
            }
        }
        Ok(submitted)
    }

    /// Submits up to 1000 jobs in one entry: all are accepted or none.
    pub async fn submit_batch(&self, queue: &str, jobs: &[NewJob]) -> Result<Vec<Job>, JobsError> {
        #[derive(Deserialize)]
        struct Jobs {
            jobs: Vec<Job>,
        }
        let body = NewJobsBody {
            jobs: jobs.iter().map(NewJob::to_body).collect(),
        };
        let request = self.mutation(
            reqwest::Method::POST,
            format!("/v1/queues/{}/jobs", name_segment("queue", queue)?),
            Some(json_body(&body)?),
            &idempotency_key(),
        );
        let jobs: Jobs = self.send_v1(request).await?.parse()?;
        Ok(jobs.jobs)
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn get_job(&self, id: JobId) -> Result<Job, JobsError> {
        self.send_v1(self.read(format!("/v1/jobs/{id}"), None))
            .await?
            .parse()
    }

    /// Waits up to `wait` for the job to finish (in server-side waits of at most
    /// [`SERVER_WAIT_MAX`]) and returns it as it is then.
    pub async fn wait_job(&self, id: JobId, wait: Duration) -> Result<Job, JobsError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let server_wait = left.min(SERVER_WAIT_MAX);
            let target = format!(
                "/v1/jobs/{id}{}",
                query_string(&[("wait", duration_text(server_wait))])
            );
            let job: Job = self
                .send_v1(self.read(target, Some(server_wait)))
                .await?
                .parse()?;
            if job.state.is_terminal()
                || Instant::now() >= deadline
                || server_wait < Duration::from_millis(1)
            {
                return Ok(job);
            }
        }
    }

    /// `DELETE /v1/jobs/{id}`: the job becomes `cancelled`.
    pub async fn cancel_job(&self, id: JobId) -> Result<Job, JobsError> {
        let request = self.mutation(
            reqwest::Method::DELETE,
            format!("/v1/jobs/{id}"),
            None,
            &idempotency_key(),
        );
        self.send_v1(request).await?.parse()
    }

    /// `POST /v1/jobs/{id}/retry`: a dead job is queued again.
    pub async fn retry_job(&self, id: JobId) -> Result<Job, JobsError> {
        let request = self.mutation(
            reqwest::Method::POST,
            format!("/v1/jobs/{id}/retry"),
            None,
            &idempotency_key(),
        );
        self.send_v1(request).await?.parse()
    }

    /// `POST /v1/queues/{q}/retry`: up to `max` (default and at most 1,000) of the queue's
    /// dead jobs with ids after `after` (from the first without), oldest first, queued again
    /// in one command.
    pub async fn retry_dead(&self, queue: &str, max: Option<u32>, after: Option<JobId>) -> Result<RetriedDead, JobsError> {
        let target = format!("/v1/queues/{}/retry", name_segment("queue", queue)?);
        let body = serde_json::json!({ "max": max, "after": after });
        let request = self.mutation(reqwest::Method::POST, target, Some(json_body(&body)?), &idempotency_key());
        self.send_v1(request).await?.parse()
    }

    /// One page of a queue's jobs, ids ascending.
    pub async fn list_jobs(&self, queue: &str, filter: &JobFilter) -> Result<JobPage, JobsError> {
        let mut query = Vec::new();
        if let Some(state) = filter.state {
            query.push(("state", state.as_str().to_string()));
        }
        if let Some(limit) = filter.limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(after) = filter.after {
            query.push(("after", after.to_string()));
        }
        let target = format!(
            "/v1/queues/{}/jobs{}",
            name_segment("queue", queue)?,
            query_string(&query)
        );
        self.send_v1(self.read(target, None)).await?.parse()
    }

    // ---- leases -------------------------------------------------------------------------

    /// Leases up to `request.max` jobs, long-polling up to `request.wait`.
    pub async fn lease(&self, queue: &str, request: &LeaseRequest) -> Result<Leased, JobsError> {
        self.lease_keyed(&idempotency_key(), queue, request).await
    }

    /// [`Client::lease`] with the caller's key: a repeat answers the same leased jobs.
    pub async fn lease_keyed(
        &self,
        key: &str,
        queue: &str,
        request: &LeaseRequest,
    ) -> Result<Leased, JobsError> {
        let mut body = serde_json::json!({
            "worker": request.worker,
            "max": request.max,
            "wait": duration_text(request.wait),
        });
        if let Some(lease_ttl) = request.lease_ttl {
            body["lease_ttl"] = duration_text(lease_ttl).into();
        }
        let mut http = self.mutation(
            reqwest::Method::POST,
            format!("/v1/queues/{}/lease", name_segment("queue", queue)?),
            Some(json_body(&body)?),
            key,
        );
        http.timeout += request.wait;
        self.send_v1(http).await?.parse()
    }

    /// Extends a lease by its ttl (or `lease_ttl`, which then sticks).
    pub async fn heartbeat(
        &self,
        id: JobId,
        lease_token: u64,
        lease_ttl: Option<Duration>,
    ) -> Result<Job, JobsError> {
        let mut body = serde_json::json!({ "lease_token": lease_token });
        if let Some(lease_ttl) = lease_ttl {
            body["lease_ttl"] = duration_text(lease_ttl).into();
        }
        let request = self.mutation(
            reqwest::Method::POST,
            format!("/v1/jobs/{id}/heartbeat"),
            Some(json_body(&body)?),
            &idempotency_key(),
        );
        self.send_v1(request).await?.parse()
    }

    /// The job succeeded with `result` (stored as its text).
    pub async fn complete(
        &self,
        id: JobId,
        lease_token: u64,
        result: &RawJson,
    ) -> Result<Job, JobsError> {
        self.complete_keyed(&idempotency_key(), id, lease_token, result)
            .await
    }

    pub async fn complete_keyed(
        &self,
        key: &str,
        id: JobId,
        lease_token: u64,
        result: &RawJson,
    ) -> Result<Job, JobsError> {
        let body = CompleteBody {
            lease_token,
            result,
            lease_next: None,
        };
        self.send_complete(key, id, &body).await
    }

    /// The job succeeded with `result`, and the next lease from its queue is taken in the
    /// same Raft entry (one round trip where a complete and a lease take two). The lease
    /// never waits: with nothing leased, ask [`Client::lease`] with a `wait`.
    pub async fn complete_next_keyed(
        &self,
        key: &str,
        id: JobId,
        lease_token: u64,
        result: &RawJson,
        next: &LeaseNext,
    ) -> Result<CompletedNext, JobsError> {
        let mut lease_next = serde_json::json!({ "worker": next.worker, "max": next.max });
        if let Some(lease_ttl) = next.lease_ttl {
            lease_next["lease_ttl"] = duration_text(lease_ttl).into();
        }
        let body = CompleteBody {
            lease_token,
            result,
            lease_next: Some(lease_next),
        };
        self.send_complete(key, id, &body).await
    }

    async fn send_complete<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        id: JobId,
        body: &CompleteBody<'_>,
    ) -> Result<T, JobsError> {
        let request = self.mutation(
            reqwest::Method::POST,
            format!("/v1/jobs/{id}/complete"),
            Some(json_body(body)?),
            key,
        );
        self.send_v1(request).await?.parse()
    }

    /// A failed attempt: retried later, or dead.
    pub async fn fail(
        &self,
        id: JobId,
        lease_token: u64,
        fail: &FailRequest,
    ) -> Result<Job, JobsError> {
        self.fail_keyed(&idempotency_key(), id, lease_token, fail)
            .await
    }

    pub async fn fail_keyed(
        &self,
        key: &str,
        id: JobId,
        lease_token: u64,
        fail: &FailRequest,
    ) -> Result<Job, JobsError> {
        let mut body = serde_json::json!({ "lease_token": lease_token, "error": fail.error });
        if let Some(retry) = fail.retry {
            body["retry"] = retry.into();
        }
        if let Some(retry_after) = fail.retry_after {
            body["retry_after"] = duration_text(retry_after).into();
        }
        let request = self.mutation(
            reqwest::Method::POST,
            format!("/v1/jobs/{id}/fail"),
            Some(json_body(&body)?),
            key,
        );
        self.send_v1(request).await?.parse()
    }

    /// Gives the job back (queued at once, the attempt not counted).
    pub async fn release(&self, id: JobId, lease_token: u64) -> Result<Job, JobsError> {
        self.release_keyed(&idempotency_key(), id, lease_token)
            .await
    }

    pub async fn release_keyed(
        &self,
        key: &str,
        id: JobId,
        lease_token: u64,
    ) -> Result<Job, JobsError> {
        let body = serde_json::json!({ "lease_token": lease_token });
        let request = self.mutation(
            reqwest::Method::POST,
            format!("/v1/jobs/{id}/release"),
            Some(json_body(&body)?),
            key,
        );
        self.send_v1(request).await?.parse()
    }

    // ---- counters -----------------------------------------------------------------------

    /// Adds `by` (≥ 1) and returns the new value.
    pub async fn counter_add(&self, name: &str, by: u64) -> Result<u64, JobsError> {
        let body = serde_json::json!({ "by": by });
        let request = self.mutation(
            reqwest::Method::POST,
            format!("/v1/counters/{}", name_segment("name", name)?),
            Some(json_body(&body)?),
            &idempotency_key(),
        );
        let counter: Counter = self.send_v1(request).await?.parse()?;
        Ok(counter.value)
    }

    /// Deletes the counter (it reads 0 again) and returns the value it had.
    pub async fn counter_delete(&self, name: &str) -> Result<u64, JobsError> {
        let request = self.mutation(
            reqwest::Method::DELETE,
            format!("/v1/counters/{}", name_segment("name", name)?),
            None,
            &idempotency_key(),
        );
        let counter: Counter = self.send_v1(request).await?.parse()?;
        Ok(counter.value)
    }

    /// The counter's value (0 if never incremented).
    pub async fn counter_get(&self, name: &str) -> Result<u64, JobsError> {
        let counter: Counter = self
            .send_v1(self.read(
                format!("/v1/counters/{}", name_segment("name", name)?),
                None,
            ))
            .await?
            .parse()?;
        Ok(counter.value)
    }

    // ---- transport ----------------------------------------------------------------------

    fn read(&self, mut target: String, long_poll: Option<Duration>) -> V1Request {
        let timeout = crate::REQUEST_TIMEOUT
            + long_poll
                .map(|wait| wait + LONG_POLL_MARGIN)
                .unwrap_or_default();
        if self.local_reads {
            target.push(if target.contains('?') { '&' } else { '?' });
            target.push_str("consistency=local");
        }
        V1Request {
            method: reqwest::Method::GET,
            target,
            body: None,
            idempotency_key: None,
            timeout,
        }
    }

    /// `body` is JSON text ([`json_body`]).
    fn mutation(
        &self,
        method: reqwest::Method,
        target: String,
        body: Option<Vec<u8>>,
        key: &str,
    ) -> V1Request {
        V1Request {
            method,
            target,
            body,
            idempotency_key: Some(key.to_string()),
            timeout: crate::REQUEST_TIMEOUT,
        }
    }

    /// Sends `request` until some server answers it with anything but 503 or 429 (neither
    /// handled it), retrying over the endpoints with backoff, or after a 429's `Retry-After`,
    /// for up to the retry budget. The request is re-sent unchanged (same body, same
    /// idempotency key).
    async fn send_v1(&self, request: V1Request) -> Result<V1Answer, JobsError> {
        let retry_for = v1_retry_for();
        let mut deadline = None;
        let mut backoff = V1_BACKOFF_FIRST;
        let mutation = request.idempotency_key.is_some();
        let mut maybe_applied = false;
        // Each endpoint's failure in the latest round that reached it.
        let mut latest: Vec<Option<String>> = vec![None; self.endpoints.len()];
        loop {
            let first = self.preferred.load(Ordering::Relaxed);
            let mut told_to_wait = None;
            let mut unreachable = Unreachable::default();
            for offset in 0..self.endpoints.len() {
                // Past the budget, the round ends with the endpoint it was on: a member that
                // has no leader holds each request for its leader wait, and trying the rest
                // too overran `--retry-for` by a round.
                if offset > 0 && deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    // The rest are named with what they answered last time.
                    for rest in offset..self.endpoints.len() {
                        let at = (first + rest) % self.endpoints.len();
                        if let Some(error) = latest[at].clone() {
                            unreachable.failures.push(EndpointFailure { endpoint: self.endpoints[at].clone(), error });
                        }
                    }
                    break;
                }
                let at = (first + offset) % self.endpoints.len();
                let sent_at = Instant::now();
                let error = match self.send_once(&self.endpoints[at], &request).await {
                    Ok(answer) if answer.is_outcome_unknown() => {
                        maybe_applied |= mutation;
                        answer.to_error().to_string()
                    }
                    Ok(answer) if answer.status == 503 => answer.to_error().to_string(),
                    Ok(answer) if answer.status == 429 => {
                        told_to_wait = told_to_wait.max(answer.retry_after);
                        answer.to_error().to_string()
                    }
                    Ok(answer) => {
                        let passed_over = (offset > 0)
                            .then(|| unreachable.failures.first().map(|failure| (first, failure.error.as_str())))
                            .flatten();
                        self.answered(at, sent_at, passed_over);
                        return Ok(answer);
                    }
                    Err(failure) => {
                        maybe_applied |= mutation && failure.after_sending;
                        failure.error
                    }
                };
                latest[at] = Some(error.clone());
                unreachable.failures.push(EndpointFailure {
                    endpoint: self.endpoints[at].clone(),
                    error,
                });
            }
            let now = Instant::now();
            // The budget runs from the first failure: a lease long-poll cut off after it
            // waited longer than the budget (its server stopped) was not retried at all, and
            // its worker said "no server answers" before "no answer from".
            let deadline = *deadline.get_or_insert(now + retry_for);
            if now >= deadline {
                unreachable.maybe_applied = maybe_applied;
                return Err(JobsError::Unavailable(unreachable));
            }
            self.lost(&unreachable, retry_for);
            tokio::time::sleep(told_to_wait.unwrap_or(backoff).min(deadline - now)).await;
            backoff = (backoff * 2).min(V1_BACKOFF_MAX);
        }
    }

    /// One exchange with one endpoint; `Err` is a transport failure worth retrying.
    async fn send_once(&self, endpoint: &str, request: &V1Request) -> Result<V1Answer, SendFailure> {
        let url = format!("{endpoint}{}", request.target);
        let mut http = self
            .http
            .request(request.method.clone(), &url)
            .timeout(request.timeout);
        if let Some(body) = &request.body {
            http = http
                .header("content-type", "application/json")
                .body(body.clone());
        }
        if let Some(key) = &request.idempotency_key {
            http = http.header("idempotency-key", key.as_str());
        }
        let mut response = http.send().await.map_err(|error| SendFailure {
            error: transport_error(&error),
            // A refused or failed connection never carried the request.
            after_sending: !error.is_connect(),
        })?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string)
        };
        let replayed = header("idempotent-replayed").as_deref() == Some("true");
        let location = header("location");
        let retry_after = crate::retry_after(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| SendFailure { error: transport_error(&error), after_sending: true })?
        {
            if body.len() + chunk.len() > ANSWER_BYTES_MAX {
                return Err(SendFailure { error: format!("answer over {ANSWER_BYTES_MAX} bytes"), after_sending: true });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(V1Answer {
            status,
            body,
            replayed,
            location,
            retry_after,
        })
    }
}

/// A request that got no answer from one endpoint.
struct SendFailure {
    error: String,
    /// The request may have reached the server (the connection was made).
    after_sending: bool,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::Reachability;

    #[test]
    fn durations_are_sent_in_humantime_form() {
        assert_eq!(duration_text(Duration::from_secs(30)), "30s");
        assert_eq!(duration_text(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration_text(Duration::ZERO), "0s");
    }

    fn body_text<T: Serialize>(body: &T) -> String {
        String::from_utf8(json_body(body).expect("body")).expect("utf-8")
    }

    #[test]
    fn new_jobs_send_only_what_is_set() {
        let job = NewJob {
            priority: 5,
            delay: Some(Duration::from_secs(10)),
            ..NewJob::new(serde_json::json!({"a": 1}))
        };
        assert_eq!(
            body_text(&job.to_body()),
            r#"{"payload":{"a":1},"priority":5,"delay":"10s"}"#
        );
        assert_eq!(
            body_text(&NewJob::default().to_body()),
            r#"{"payload":null}"#
        );
    }

    #[test]
    fn new_jobs_send_the_payload_text_as_given() {
        let text = r#"{"z":1,"a":123456789012345678901234567890,"f":1.0}"#;
        let job = NewJob::new(RawJson::from_text(text).expect("json"));
        assert_eq!(
            body_text(&job.to_body()),
            format!(r#"{{"payload":{text}}}"#)
        );
        let batch = [
            job.clone(),
            NewJob {
                priority: -1,
                ..job
            },
        ];
        let batch = NewJobsBody {
            jobs: batch.iter().map(NewJob::to_body).collect(),
        };
        assert_eq!(
            body_text(&batch),
            format!(r#"{{"jobs":[{{"payload":{text}}},{{"payload":{text},"priority":-1}}]}}"#)
        );
    }

    #[test]
    fn completes_send_the_result_text_as_given() {
        let result = RawJson::from_text(r#"{"z":[1E2],"a":-0}"#).expect("json");
        let body = CompleteBody {
            lease_token: 7,
            result: &result,
            lease_next: None,
        };
        assert_eq!(
            body_text(&body),
            r#"{"lease_token":7,"result":{"z":[1E2],"a":-0}}"#
        );
    }

    #[test]
    fn queue_config_omits_defaults_so_put_replaces_with_defaults() {
        let config = QueueConfig {
            concurrency: Some(1),
            paused: Some(true),
            ..QueueConfig::default()
        };
        // `rate: null` is the server's "no rate", its default, as the server writes it.
        assert_eq!(
            serde_json::to_value(&config).expect("json"),
            serde_json::json!({"concurrency": 1, "rate": null, "paused": true})
        );
        assert_eq!(
            serde_json::to_string(&QueueConfig::default()).expect("json"),
            r#"{"concurrency":null,"rate":null}"#
        );
    }

    #[test]
    fn queue_patch_sends_only_its_fields_and_null_for_no_limit() {
        let patch = QueuePatch {
            concurrency: Some(None),
            rate: Some(Some(RatePatch {
                burst: Some(2),
                ..RatePatch::default()
            })),
            paused: Some(true),
            ..QueuePatch::default()
        };
        assert_eq!(
            serde_json::to_string(&patch).expect("json"),
            r#"{"concurrency":null,"rate":{"burst":2},"paused":true}"#
        );
        assert_eq!(
            serde_json::to_string(&QueuePatch::default()).expect("json"),
            "{}"
        );
    }

    #[test]
    fn jobs_decode_from_the_documented_shape_and_keep_unknown_fields() {
        let body = r#"{"id": 7, "queue": "api", "state": "leased", "priority": 5, "payload": {"any": "json"},
            "attempts": 1, "max_attempts": 5, "created_at": "2026-11-23T19:05:00.123Z", "run_at": "2026-11-23T19:05:00.123Z",
            "result": null, "errors": [{"attempt": 1, "at": "2026-11-23T19:05:01.000Z", "error": "exit status 1"}],
            "worker": "host-a/123", "lease_token": 42, "lease_expires_at": "2026-11-23T19:05:30.123Z",
            "finished_at": null, "purge_at": null, "future_field": true}"#;
        let job: Job = serde_json::from_str(body).expect("decode");
        assert_eq!(job.state, JobState::Leased);
        assert_eq!(job.lease_token, Some(42));
        assert_eq!(job.payload.get(), r#"{"any": "json"}"#);
        assert!(job.result.is_null());
        assert_eq!(job.errors[0].error, "exit status 1");
        assert_eq!(job.extra.get("future_field"), Some(&Value::Bool(true)));
    }

    /// A job as the server writes it: `payload` and `result` are the stored text.
    const SERVER_JOB: &str = r#"{"id":3,"queue":"q","state":"succeeded","priority":0,"payload":{"z":1,"a":123456789012345678901234567890},"attempts":1,"max_attempts":5,"created_at":"2026-11-23T19:05:00.123Z","run_at":"2026-11-23T19:05:00.123Z","result":[1.0,"caf\u00e9"],"errors":[],"finished_at":"2026-11-23T19:05:01.000Z","purge_at":"2026-11-30T19:05:01.000Z"}"#;

    #[test]
    fn jobs_keep_the_server_payload_and_result_text() {
        let job: Job = serde_json::from_str(SERVER_JOB).expect("decode");
        assert_eq!(
            job.payload.get(),
            r#"{"z":1,"a":123456789012345678901234567890}"#
        );
        assert_eq!(job.result.get(), r#"[1.0,"caf\u00e9"]"#);
        // `-o json` prints the job as it came (fields in the server's order).
        assert_eq!(serde_json::to_string(&job).expect("encode"), SERVER_JOB);
        #[derive(Debug, PartialEq, Deserialize)]
        struct Payload {
            z: u8,
        }
        assert_eq!(
            job.payload_json::<Payload>().expect("payload"),
            Payload { z: 1 }
        );
        let result: (f64, String) = job.result_json().expect("result");
        assert_eq!(result, (1.0, "café".to_string()));
    }

    #[test]
    fn completed_next_keeps_the_leased_jobs_payload_text_and_the_rest() {
        let leased = SERVER_JOB.replace(r#""state":"succeeded""#, r#""state":"leased""#);
        let body = format!(r#"{{"job":{SERVER_JOB},"jobs":[{leased}],"blocked":"concurrency"}}"#);
        let completed: CompletedNext = serde_json::from_str(&body).expect("decode");
        assert_eq!(completed.job.state, JobState::Succeeded);
        assert_eq!(completed.leased.jobs.len(), 1);
        assert_eq!(
            completed.leased.jobs[0].payload.get(),
            r#"{"z":1,"a":123456789012345678901234567890}"#
        );
        assert_eq!(
            completed.leased.extra.get("blocked"),
            Some(&Value::String("concurrency".into()))
        );
        let leased: Leased =
            serde_json::from_str(&format!(r#"{{"jobs":[{leased}]}}"#)).expect("decode");
        assert_eq!(leased.jobs[0].result.get(), r#"[1.0,"caf\u00e9"]"#);
    }

    #[test]
    fn error_envelopes_keep_status_code_and_field() {
        let answer = V1Answer {
            status: 409,
            body: br#"{"error": {"code": "stale_lease", "message": "lease token 3 is stale", "field": "lease_token"}}"#.to_vec(),
            replayed: false,
            location: None,
            retry_after: None,
        };
        let error = answer.parse::<Job>().expect_err("409");
        assert_eq!(error.code(), Some("stale_lease"));
        assert_eq!(
            error.to_string(),
            "409 stale_lease: lease token 3 is stale (field: lease_token)"
        );
    }

    #[tokio::test]
    async fn bad_names_are_refused_before_anything_is_sent() {
        // Port 1 refuses at once: a request sent would be Unavailable, not a 400.
        let client = Client::new(["http://127.0.0.1:1"]).expect("client");
        for name in ["../jobs/7", "..", ".", "", "a/b", "a b", &"q".repeat(129)] {
            let error = client.delete_queue(name, true).await.expect_err(name);
            assert_eq!(
                (error.status(), error.code()),
                (Some(400), Some("invalid")),
                "{name:?}: {error}"
            );
            assert!(error.to_string().contains("(field: queue)"), "{error}");
            let error = client.counter_add(name, 1).await.expect_err(name);
            assert_eq!(error.code(), Some("invalid"), "{name:?}: {error}");
        }
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(
            query_string(&[("wait", "30s".into()), ("after", "7".into())]),
            "?wait=30s&after=7"
        );
    }

    /// A one-connection-at-a-time HTTP server: `first` (status line, body) to its first
    /// request, then `200` with [`SERVER_JOB`].
    async fn first_then_the_job(first: (&'static str, &'static str)) -> String {
        serve_answers(move |answered| if answered == 0 { first } else { ("200 OK", SERVER_JOB) }).await
    }

    /// An HTTP server that answers every request with `status` and `body`.
    async fn always_answer(status: &'static str, body: &'static str) -> String {
        serve_answers(move |_| (status, body)).await
    }

    /// A one-connection-at-a-time HTTP server answering its nth request (from 0) with
    /// `answer(n)`: a status line and a JSON body.
    async fn serve_answers(answer: impl Fn(usize) -> (&'static str, &'static str) + Send + 'static) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            for answered in 0.. {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|end| end == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let (status, body) = answer(answered);
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        url
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_told_once_and_each_endpoint_named_when_given_up() {
        // Port 1 on loopback refuses at once; the budget bounds the whole call. (The only
        // test here that sends anything, so the process-wide budget is ours to set.)
        set_v1_retry_for(Duration::from_millis(400));
        let told = Arc::new(std::sync::Mutex::new(Vec::new()));
        let observer = {
            let told = Arc::clone(&told);
            move |event: Reachability<'_>| {
                let line = match event {
                    Reachability::Lost {
                        unreachable,
                        retry_for,
                    } => format!("lost {unreachable} for {retry_for:?}"),
                    Reachability::Regained { endpoint, .. } => format!("regained {endpoint}"),
                    Reachability::Switched { from, to, .. } => format!("switched from {from} to {to}"),
                };
                told.lock().expect("lock").push(line);
            }
        };
        let refused = ["http://127.0.0.1:1", "http://127.0.0.1:2"];
        let client = Client::new(refused)
            .expect("client")
            .on_reachability(observer.clone());
        let started = Instant::now();
        let error = client.get_job(1).await.expect_err("unreachable");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(5),
            "{elapsed:?}"
        );
        let JobsError::Unavailable(unreachable) = &error else {
            panic!("{error}")
        };
        let endpoints: Vec<&str> = unreachable
            .failures
            .iter()
            .map(|failure| failure.endpoint.as_str())
            .collect();
        assert_eq!(endpoints, refused);
        assert_eq!(
            error.to_string(),
            "cluster unreachable: http://127.0.0.1:1 (connection refused), http://127.0.0.1:2 (connection refused)"
        );
        // Told at the first failed round, once for the whole call.
        assert_eq!(
            *told.lock().expect("lock"),
            [format!("lost {unreachable} for 400ms")]
        );

        // One endpoint refuses, the other has no leader at first: both are named, and the
        // call goes through once the second answers.
        told.lock().expect("lock").clear();
        let answering = first_then_the_job((
            "503 Service Unavailable",
            r#"{"error":{"code":"no_leader","message":"no leader yet"}}"#,
        ))
        .await;
        let client = Client::new(["http://127.0.0.1:1", answering.as_str()])
            .expect("client")
            .on_reachability(observer.clone());
        let job = client.get_job(3).await.expect("answered on a later round");
        assert_eq!(job.id, 3);
        assert_eq!(
            *told.lock().expect("lock"),
            [
                format!("lost http://127.0.0.1:1 (connection refused), {answering} (503 no_leader: no leader yet) for 400ms"),
                format!("regained {answering}"),
            ]
        );

        // A leader that failed before it answered: the request may have been applied, so it
        // goes again with the same key (applied at most once), not given up.
        let answering = first_then_the_job((
            "504 Gateway Timeout",
            r#"{"error":{"code":"outcome_unknown","message":"request timed out"}}"#,
        ))
        .await;
        let client = Client::new([answering.as_str()]).expect("client");
        assert_eq!(client.get_job(3).await.expect("answered when asked again").id, 3);
        // Any other 504 is an answer.
        let answering = first_then_the_job(("504 Gateway Timeout", r#"{"error":{"code":"x","message":"y"}}"#)).await;
        let client = Client::new([answering.as_str()]).expect("client");
        assert!(client.get_job(3).await.is_err());

        // A request cut off after it waited longer than the budget (a long poll whose server
        // stopped): retried for the whole budget from that failure, and told as lost first.
        told.lock().expect("lock").clear();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let cut = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let mut buffer = [0u8; 1024];
            let _ = socket.read(&mut buffer).await;
            tokio::time::sleep(Duration::from_millis(600)).await;
            // The socket and the listener close: later connections are refused.
        });
        let client = Client::new([cut.as_str()]).expect("client").on_reachability(observer);
        let started = Instant::now();
        assert!(matches!(client.get_job(3).await, Err(JobsError::Unavailable(_))));
        assert!(started.elapsed() >= Duration::from_millis(1000), "{:?}", started.elapsed());
        let told = told.lock().expect("lock").clone();
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(told[0].starts_with(&format!("lost {cut}")), "{told:?}");

        // Given up, a mutation that a member took (504 outcome_unknown every time) may have
        // been applied, and says so; one that never reached a server, or a read, does not.
        let unknown = always_answer("504 Gateway Timeout", r#"{"error":{"code":"outcome_unknown","message":"request timed out"}}"#).await;
        let maybe_applied = |result: Result<Job, JobsError>| match result {
            Err(JobsError::Unavailable(unreachable)) => unreachable.maybe_applied,
            other => panic!("{other:?}"),
        };
        assert!(maybe_applied(Client::new([unknown.as_str()]).expect("client").cancel_job(3).await));
        assert!(!maybe_applied(Client::new(["http://127.0.0.1:1"]).expect("client").cancel_job(3).await));
        assert!(!maybe_applied(Client::new([unknown.as_str()]).expect("client").get_job(3).await));
    }
}
