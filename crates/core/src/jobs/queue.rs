//! Queues: their configuration (validated here), their rate bucket and their indexes.
//!
//! A queue owns the per-queue indexes of its jobs; [`Jobs`](super::Jobs) keeps them in step
//! with the job records (see `Jobs::set_indexed`). Invariants, for every job `j` of queue `q`:
//! - `j` is in `q.ids_by_state[j.state]` and in no other state's set;
//! - queued ⇔ `(Reverse(priority), id)` ∈ `q.ready` (so the first is the next to lease);
//! - scheduled ⇔ `(run_at_ms, id)` ∈ `q.scheduled`;
//! - a lease (leased, or cancelled and held) ⇔ `(lease.expires_at_ms, id)` ∈ `q.lease_deadlines`.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::error::JobError;
use super::job::{JobId, JobState};
use super::limits::*;
use super::rate::TokenBucket;

/// Queues are interned: jobs refer to their queue by this id, never reused.
pub(crate) type QueueId = u32;

/// At most `burst + limit × W / per` leases in any window of length W.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Tokens added per `per_ms`.
    pub limit: u64,
    pub per_ms: u64,
    /// Bucket capacity: the most leases at one instant after a quiet spell.
    pub burst: u64,
}

/// Exponential backoff between attempts: `base_ms × 2^(attempt − 1)`, at most `max_ms`.
/// There is no jitter: the rate limiter already spreads retries out, and exact delays keep
/// the queue's history checkable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// The delay before the retry that follows failed attempt `attempt` (1-based).
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        // u128 holds base (< 2^30) shifted by up to 63 without overflow.
        let doublings = attempt.saturating_sub(1).min(63);
        let delay_ms = u128::from(self.base_ms) << doublings;
        delay_ms.min(u128::from(self.max_ms)) as u64
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base_ms: BACKOFF_BASE_DEFAULT_MS, max_ms: BACKOFF_MAX_DEFAULT_MS }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// Jobs leased at once; `None` is unlimited.
    pub concurrency: Option<u32>,
    pub rate: Option<RateLimit>,
    /// A lease's length unless the lease command asks for another.
    pub lease_ttl_ms: u64,
    /// Given to each job at submission unless the job says otherwise.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// How long finished jobs are kept; fixed per job when it finishes.
    pub retention_ms: u64,
    /// A paused queue leases nothing; everything else goes on (submits, expiries, retries).
    pub paused: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            concurrency: None,
            rate: None,
            lease_ttl_ms: LEASE_TTL_DEFAULT_MS,
            max_attempts: MAX_ATTEMPTS_DEFAULT,
            backoff: Backoff::default(),
            retention_ms: RETENTION_DEFAULT_MS,
            paused: false,
        }
    }
}

impl QueueConfig {
    pub fn validate(&self) -> Result<(), JobError> {
        if let Some(concurrency) = self.concurrency {
            check_range("concurrency", u64::from(concurrency), 1, u64::from(CONCURRENCY_MAX))?;
        }
        if let Some(rate) = &self.rate {
            check_range("rate.limit", rate.limit, 1, RATE_LIMIT_MAX)?;
            check_range_ms("rate.per", rate.per_ms, 1, RATE_PER_MS_MAX)?;
            check_range("rate.burst", rate.burst, 1, RATE_BURST_MAX)?;
        }
        check_lease_ttl("lease_ttl", self.lease_ttl_ms)?;
        check_max_attempts("max_attempts", self.max_attempts)?;
        check_range_ms("backoff.base", self.backoff.base_ms, 0, BACKOFF_MS_MAX)?;
        check_range_ms("backoff.max", self.backoff.max_ms, self.backoff.base_ms, BACKOFF_MS_MAX)?;
        check_range_ms("retention", self.retention_ms, 0, RETENTION_MS_MAX)?;
        Ok(())
    }
}

/// A patch's value for a setting that JSON `null` turns off (`concurrency`, `rate`): an
/// enum rather than `Option<Option<T>>`, whose JSON form (the idempotency fingerprint)
/// would not tell "off" from "left out".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Nullable<T> {
    /// `null`: no limit.
    Null,
    Value(T),
}

/// `PATCH /v1/queues/{q}`: the settings to change; `None` keeps the current value. Applied
/// to the queue's configuration by the state machine ([`QueuePatch::apply_to`]), so two
/// patches of different settings never undo each other.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePatch {
    pub concurrency: Option<Nullable<u32>>,
    pub rate: Option<Nullable<RatePatch>>,
    pub lease_ttl_ms: Option<u64>,
    pub max_attempts: Option<u32>,
    pub backoff_base_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub retention_ms: Option<u64>,
    pub paused: Option<bool>,
}

/// The parts of a rate a patch changes, merged into the queue's rate (a queue without one
/// needs `limit` and `per_ms`). `burst` left out follows a new `limit`, as a rate given
/// whole takes `burst` = `limit`, and is kept otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatePatch {
    pub limit: Option<u64>,
    pub per_ms: Option<u64>,
    pub burst: Option<u64>,
}

impl QueuePatch {
    /// Checks each value given on its own (what can be told without the queue's current
    /// configuration); [`QueuePatch::apply_to`] checks the result as a whole.
    pub fn validate(&self) -> Result<(), JobError> {
        if let Some(Nullable::Value(concurrency)) = self.concurrency {
            check_range("concurrency", u64::from(concurrency), 1, u64::from(CONCURRENCY_MAX))?;
        }
        if let Some(Nullable::Value(rate)) = &self.rate {
            if let Some(limit) = rate.limit {
                check_range("rate.limit", limit, 1, RATE_LIMIT_MAX)?;
            }
            if let Some(per_ms) = rate.per_ms {
                check_range_ms("rate.per", per_ms, 1, RATE_PER_MS_MAX)?;
            }
            if let Some(burst) = rate.burst {
                check_range("rate.burst", burst, 1, RATE_BURST_MAX)?;
            }
        }
        if let Some(lease_ttl_ms) = self.lease_ttl_ms {
            check_lease_ttl("lease_ttl", lease_ttl_ms)?;
        }
        if let Some(max_attempts) = self.max_attempts {
            check_max_attempts("max_attempts", max_attempts)?;
        }
        if let Some(base_ms) = self.backoff_base_ms {
            check_range_ms("backoff.base", base_ms, 0, BACKOFF_MS_MAX)?;
        }
        if let Some(max_ms) = self.backoff_max_ms {
            check_range_ms("backoff.max", max_ms, self.backoff_base_ms.unwrap_or(0), BACKOFF_MS_MAX)?;
        }
        if let Some(retention_ms) = self.retention_ms {
            check_range_ms("retention", retention_ms, 0, RETENTION_MS_MAX)?;
        }
        Ok(())
    }

    /// `current` with the changes made, validated. A backoff `base` given without a `max`
    /// raises the current max to it when it was lower, as a `PUT` raises the default max.
    pub fn apply_to(&self, current: &QueueConfig) -> Result<QueueConfig, JobError> {
        self.validate()?;
        let mut config = current.clone();
        match self.concurrency {
            None => {}
            Some(Nullable::Null) => config.concurrency = None,
            Some(Nullable::Value(concurrency)) => config.concurrency = Some(concurrency),
        }
        match &self.rate {
            None => {}
            Some(Nullable::Null) => config.rate = None,
            Some(Nullable::Value(change)) => config.rate = Some(change.apply_to(current.rate.as_ref())?),
        }
        if let Some(lease_ttl_ms) = self.lease_ttl_ms {
            config.lease_ttl_ms = lease_ttl_ms;
        }
        if let Some(max_attempts) = self.max_attempts {
            config.max_attempts = max_attempts;
        }
        if let Some(base_ms) = self.backoff_base_ms {
            config.backoff.base_ms = base_ms;
            if self.backoff_max_ms.is_none() {
                config.backoff.max_ms = config.backoff.max_ms.max(base_ms);
            }
        }
        if let Some(max_ms) = self.backoff_max_ms {
            config.backoff.max_ms = max_ms;
        }
        if let Some(retention_ms) = self.retention_ms {
            config.retention_ms = retention_ms;
        }
        if let Some(paused) = self.paused {
            config.paused = paused;
        }
        config.validate()?;
        Ok(config)
    }
}

impl RatePatch {
    fn apply_to(&self, current: Option<&RateLimit>) -> Result<RateLimit, JobError> {
        let missing = |field: &str| {
            JobError::invalid(
                field,
                format!("{field} is needed: the queue has no rate to change, so give rate.limit and rate.per"),
            )
        };
        let limit = self.limit.or(current.map(|rate| rate.limit)).ok_or_else(|| missing("rate.limit"))?;
        let per_ms = self.per_ms.or(current.map(|rate| rate.per_ms)).ok_or_else(|| missing("rate.per"))?;
        let burst = self.burst.or(self.limit).or(current.map(|rate| rate.burst)).unwrap_or(limit);
        Ok(RateLimit { limit, per_ms, burst })
    }
}

pub(crate) fn check_range(field: &str, value: u64, min: u64, max: u64) -> Result<(), JobError> {
    if value < min || value > max {
        return Err(JobError::invalid(field, format!("{field} must be between {min} and {max}, got {value}")));
    }
    Ok(())
}

/// [`check_range`] for a duration in milliseconds, written as the API writes durations.
pub(crate) fn check_range_ms(field: &str, ms: u64, min_ms: u64, max_ms: u64) -> Result<(), JobError> {
    if ms < min_ms || ms > max_ms {
        let (min, max, value) = (format_duration_ms(min_ms), format_limit_ms(max_ms), format_duration_ms(ms));
        return Err(JobError::invalid(field, format!("{field} must be between {min} and {max}, got {value}")));
    }
    Ok(())
}

/// A bound for an error message: as the API writes durations, with the days a person
/// thinks in when it is whole days (`2160h (90 days)`).
pub fn format_limit_ms(ms: u64) -> String {
    const DAY_MS: u64 = 86_400_000;
    match ms / DAY_MS {
        days if days >= 2 && ms.is_multiple_of(DAY_MS) => format!("{} ({days} days)", format_duration_ms(ms)),
        _ => format_duration_ms(ms),
    }
}

/// A duration as the API writes it: `1h30m`, `500ms`, `0s`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_owned();
    }
    let (hours, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let (seconds, millis) = (rest / 1_000, rest % 1_000);
    let mut text = String::new();
    for (value, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms")] {
        if value > 0 {
            text.push_str(&value.to_string());
            text.push_str(unit);
        }
    }
    text
}

pub(crate) fn check_lease_ttl(field: &str, lease_ttl_ms: u64) -> Result<(), JobError> {
    check_range_ms(field, lease_ttl_ms, LEASE_TTL_MIN_MS, LEASE_TTL_MAX_MS)
}

pub(crate) fn check_max_attempts(field: &str, max_attempts: u32) -> Result<(), JobError> {
    check_range(field, u64::from(max_attempts), 1, u64::from(MAX_ATTEMPTS_MAX))
}

/// Queue and counter names: 1-128 bytes of `[A-Za-z0-9_.-]`, not `.` or `..` (they would
/// not survive in a URL path).
/// The rule for queue and counter names (they are path segments of the `/v1` API).
pub fn check_name(field: &str, name: &str) -> Result<(), JobError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if name.is_empty() || name.len() > NAME_BYTES_MAX || !name.chars().all(allowed) || name == "." || name == ".." {
        return Err(JobError::invalid(
            field,
            format!("{field} must be 1 to {NAME_BYTES_MAX} characters of A-Z a-z 0-9 _ . - (not . or ..)"),
        ));
    }
    Ok(())
}

/// Jobs per state in one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounts {
    pub scheduled: u64,
    pub queued: u64,
    pub leased: u64,
    pub succeeded: u64,
    pub dead: u64,
    pub cancelled: u64,
}

/// `GET /v1/queues/{q}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    pub config: QueueConfig,
    pub counts: JobCounts,
    /// Whole rate tokens available at the time asked; `None` without a rate.
    pub rate_tokens: Option<u64>,
    /// Leases taking a concurrency slot: `counts.leased`, and jobs cancelled while leased
    /// whose workers have not let go yet.
    pub leases_held: u64,
}

/// What happened to a queue's jobs since this process started, for `/metrics`: counts that
/// only go up. Not part of the replicated state: never serialized, left alone while the log
/// is re-applied at start-up, and ignored when states are compared (a state loaded from a
/// snapshot starts at zero, like any counter after a restart).
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueTally {
    pub submitted: u64,
    pub leased: u64,
    pub succeeded: u64,
    /// Attempts failed by a worker's `fail`.
    pub failed: u64,
    /// Attempts failed because their lease ended with no `complete` or `fail`.
    pub lease_expired: u64,
    /// Leases given back by their worker (`release`), the attempt not counted.
    pub released: u64,
    pub dead: u64,
    pub cancelled: u64,
    /// Dead jobs queued again (`retry`).
    pub retried: u64,
}

impl QueueTally {
    /// Every count with its event name, as `/metrics` labels them.
    pub fn events(&self) -> [(&'static str, u64); 9] {
        [
            ("submitted", self.submitted),
            ("leased", self.leased),
            ("succeeded", self.succeeded),
            ("failed", self.failed),
            ("lease_expired", self.lease_expired),
            ("released", self.released),
            ("dead", self.dead),
            ("cancelled", self.cancelled),
            ("retried", self.retried),
        ]
    }

    /// Counts a job's move from one state to another.
    pub(crate) fn note_move(&mut self, from: JobState, to: JobState) {
        match (from, to) {
            (_, JobState::Leased) => self.leased += 1,
            (_, JobState::Succeeded) => self.succeeded += 1,
            (_, JobState::Dead) => self.dead += 1,
            (_, JobState::Cancelled) => self.cancelled += 1,
            (JobState::Dead, _) => self.retried += 1,
            (JobState::Leased, JobState::Queued | JobState::Scheduled) => {}
            (JobState::Scheduled | JobState::Queued, _) => {}
            (JobState::Succeeded | JobState::Cancelled, _) => {}
        }
    }
}

impl PartialEq for QueueTally {
    /// Always equal: the tally is this process's, not the state's.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for QueueTally {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Queue {
    pub(crate) name: String,
    pub(crate) config: QueueConfig,
    /// `Some` exactly when `config.rate` is.
    pub(crate) bucket: Option<TokenBucket>,
    /// Queued jobs in lease order: highest priority first, then lowest id.
    pub(crate) ready: BTreeSet<(Reverse<i64>, JobId)>,
    /// Every job of the queue, by state, in id order (counts and paged listings).
    pub(crate) ids_by_state: [BTreeSet<JobId>; 6],
    /// Scheduled jobs by `run_at_ms`.
    pub(crate) scheduled: BTreeSet<(u64, JobId)>,
    /// Leased jobs by lease expiry.
    pub(crate) lease_deadlines: BTreeSet<(u64, JobId)>,
    #[serde(skip)]
    pub(crate) tally: QueueTally,
}

impl Queue {
    pub(crate) fn new(name: String, config: QueueConfig, now_ms: u64) -> Queue {
        let bucket = config.rate.as_ref().map(|rate| TokenBucket::full(rate, now_ms));
        Queue {
            name,
            config,
            bucket,
            ready: BTreeSet::new(),
            ids_by_state: Default::default(),
            scheduled: BTreeSet::new(),
            lease_deadlines: BTreeSet::new(),
            tally: QueueTally::default(),
        }
    }

    /// Replaces the configuration. The rate bucket keeps its tokens (never more than the new
    /// burst); a new rate starts full.
    pub(crate) fn reconfigure(&mut self, config: QueueConfig, now_ms: u64) {
        self.bucket = match (&self.config.rate, &config.rate, &self.bucket) {
            (_, None, _) => None,
            (Some(old), Some(new), Some(bucket)) => Some(bucket.rescaled(old, new, now_ms)),
            (_, Some(new), _) => Some(TokenBucket::full(new, now_ms)),
        };
        self.config = config;
    }

    pub(crate) fn count(&self, state: JobState) -> u64 {
        self.ids_by_state[state.index()].len() as u64
    }

    /// Leases taking a concurrency slot: the leased jobs', and the held leases of jobs
    /// cancelled while leased.
    pub(crate) fn leases_held(&self) -> u64 {
        self.lease_deadlines.len() as u64
    }

    pub(crate) fn unfinished_count(&self) -> u64 {
        self.count(JobState::Scheduled) + self.count(JobState::Queued) + self.count(JobState::Leased)
    }

    pub(crate) fn rate_tokens_at(&self, now_ms: u64) -> Option<u64> {
        match (&self.config.rate, &self.bucket) {
            (Some(rate), Some(bucket)) => Some(bucket.tokens_at(rate, now_ms)),
            _ => None,
        }
    }

    pub(crate) fn info(&self, now_ms: u64) -> QueueInfo {
        QueueInfo {
            name: self.name.clone(),
            config: self.config.clone(),
            counts: JobCounts {
                scheduled: self.count(JobState::Scheduled),
                queued: self.count(JobState::Queued),
                leased: self.count(JobState::Leased),
                succeeded: self.count(JobState::Succeeded),
                dead: self.count(JobState::Dead),
                cancelled: self.count(JobState::Cancelled),
            },
            rate_tokens: self.rate_tokens_at(now_ms),
            leases_held: self.leases_held(),
        }
    }
}
