//! Every bound and default of the job queue, named, with its unit last.
//!
//! A command over a bound is answered with a [`JobError`](super::JobError) naming the field
//! and changes nothing. `docs/jobs.md` lists these for users; keep the two in step.

/// Queue and counter names: 1 to this many bytes of `[A-Za-z0-9_.-]` (not `.` or `..`).
pub const NAME_BYTES_MAX: usize = 128;
/// A lease's `worker` identifier: 1 to this many bytes.
pub const WORKER_BYTES_MAX: usize = 256;

/// Queues that may exist at once (submitting to an unknown queue creates one).
pub const QUEUES_MAX: usize = 10_000;
/// Counters that may exist at once.
pub const COUNTERS_MAX: usize = 100_000;
/// Jobs stored at once, finished ones included. When a submit would exceed it, finished
/// jobs are dropped early, the one due to be purged first going first; when only
/// unfinished jobs remain the submit fails with `capacity_exceeded`.
pub const JOBS_MAX: u64 = 4_000_000;

/// Jobs in one submit command (one Raft entry).
pub const SUBMIT_BATCH_JOBS_MAX: usize = 1_000;
/// Payload bytes of all jobs of one submit command together: with the jobs' other fields
/// the command stays within one Raft entry (4 MiB), so a batch over it is refused with this
/// limit named, not as "command too large".
pub const SUBMIT_BATCH_PAYLOAD_BYTES_MAX: usize = 3 * 1024 * 1024;
/// One job's payload (JSON text).
pub const PAYLOAD_BYTES_MAX: usize = 256 * 1024;
/// One job's result (JSON text).
pub const RESULT_BYTES_MAX: usize = 256 * 1024;
/// How deep arrays and objects may nest in a job's payload or result. Answers wrap them in
/// up to three more levels, and common JSON decoders (serde_json, Go's, Python's at its
/// default recursion limit in nested calls) stop at 128 or below. Checked by the HTTP layer
/// ([`check_json_depth`](super::check_json_depth)) and by clients before they send.
pub const JSON_DEPTH_MAX: usize = 64;
/// One attempt's error message.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 8 * 1024;
/// Attempt errors kept per job; the oldest is dropped first.
pub const ERRORS_KEPT_MAX: usize = 20;

/// Jobs handed out by one lease command.
pub const LEASE_BATCH_MAX: u32 = 1_000;
/// Jobs returned by one page of a listing.
pub const LIST_LIMIT_MAX: usize = 1_000;

/// Priorities are the integers a JSON number holds exactly (±(2^53 − 1)), so timestamps fit.
pub const PRIORITY_MAX: i64 = (1 << 53) - 1;
pub const PRIORITY_MIN: i64 = -PRIORITY_MAX;

pub const LEASE_TTL_MIN_MS: u64 = 1;
pub const LEASE_TTL_MAX_MS: u64 = 24 * HOUR_MS;
pub const MAX_ATTEMPTS_MAX: u32 = 1_000;
pub const CONCURRENCY_MAX: u32 = 1_000_000;
/// Bounds of a rate `{limit, per, burst}`: `limit` and `burst` tokens, `per` a duration.
pub const RATE_LIMIT_MAX: u64 = 1_000_000;
pub const RATE_BURST_MAX: u64 = 1_000_000;
pub const RATE_PER_MS_MAX: u64 = 31 * DAY_MS;
/// Both the backoff's `base` and `max`.
pub const BACKOFF_MS_MAX: u64 = 7 * DAY_MS;
pub const RETENTION_MS_MAX: u64 = 90 * DAY_MS;
/// How far ahead a job may be scheduled (`delay`, `run_at`, a failure's `retry_after`).
pub const DELAY_MS_MAX: u64 = 365 * DAY_MS;

pub const LEASE_TTL_DEFAULT_MS: u64 = 30_000;
pub const MAX_ATTEMPTS_DEFAULT: u32 = 5;
pub const BACKOFF_BASE_DEFAULT_MS: u64 = 1_000;
pub const BACKOFF_MAX_DEFAULT_MS: u64 = HOUR_MS;
/// Finished jobs (succeeded, dead, cancelled) are kept a week unless the queue says otherwise.
pub const RETENTION_DEFAULT_MS: u64 = 7 * DAY_MS;

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// Job changes kept for `/v1/watch` streams to tail; a stream further behind is told it
/// missed some.
pub const JOB_CHANGES_KEPT_MAX: usize = 4_096;
