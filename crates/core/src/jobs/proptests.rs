//! Property tests of the job queue: random histories of every command and of time passing,
//! run against [`Jobs`] and against a small model that does everything the obvious way
//! (linear scans over a map of jobs). After every step:
//! - every job looks exactly as the model says (so the model's simple rules hold);
//! - the indexes agree with the job records (`check_invariants`);
//! - a rejected command left the state exactly as it was (stale tokens change nothing);
//!
//! and, checked from the history alone rather than the model:
//! - leases held (leased jobs, and cancelled ones not let go yet) ≤ concurrency (a lowered
//!   concurrency may leave a surplus, but no lease is granted while there is one);
//! - leases in every window `[t1, t2]` ≤ `burst + limit × (t2 − t1) / per` (per config);
//! - each lease takes the highest-priority, oldest queued jobs;
//! - a job reaches a terminal state at most once per explicit retry plus one;
//! - lease tokens strictly increase;
//! - no job disappears before its retention is over (or its queue was deleted).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const QUEUES: [&str; 3] = ["a", "b", "c"];
const START_MS: u64 = 1_000;

#[derive(Clone, Debug)]
enum TokenPick {
    /// The job's current token if leased, else its latest one.
    Current,
    /// One of the tokens the job ever had.
    Old(usize),
    /// Any number.
    Made(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Submit { queue: usize, jobs: Vec<(i64, Option<u64>)> },
    Lease { queue: usize, max: u32, lease_ttl_ms: Option<u64> },
    Heartbeat { job: usize, token: TokenPick, lease_ttl_ms: Option<u64> },
    Complete { job: usize, token: TokenPick },
    CompleteAndLease { job: usize, token: TokenPick, max: u32 },
    Fail { job: usize, token: TokenPick, retry: bool, retry_after_ms: Option<u64> },
    Release { job: usize, token: TokenPick },
    Cancel { job: usize },
    Retry { job: usize },
    RetryDead { queue: usize, max: u32, after: usize },
    Advance { ms: u64 },
    PutQueue { queue: usize, config: QueueConfig },
    PatchQueue { queue: usize, patch: QueuePatch },
    DeleteQueue { queue: usize, force: bool },
}

fn config_strategy() -> impl Strategy<Value = QueueConfig> {
    (
        proptest::option::weighted(0.6, 1u32..4),
        proptest::option::weighted(0.6, (1u64..4, 1u64..60, 1u64..4)),
        5u64..80,
        1u32..5,
        (0u64..30, 0u64..60),
        0u64..200,
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(concurrency, rate, lease_ttl_ms, max_attempts, (base_ms, extra_ms), retention_ms, paused)| {
            QueueConfig {
                concurrency,
                rate: rate.map(|(limit, per_ms, burst)| RateLimit { limit, per_ms, burst }),
                lease_ttl_ms,
                max_attempts,
                backoff: Backoff { base_ms, max_ms: base_ms + extra_ms },
                retention_ms,
                paused,
            }
        })
}

/// `None` (left out), `null`, or the value.
fn nullable<T>(null: Option<bool>, value: T) -> Option<Nullable<T>> {
    null.map(|null| if null { Nullable::Null } else { Nullable::Value(value) })
}

/// Values in range, as the server sends them; a rate without a limit or a period (for a
/// queue without a rate) or a backoff max under the base are refused by the state.
fn patch_strategy() -> impl Strategy<Value = QueuePatch> {
    let null_or_value = || proptest::option::weighted(0.3, proptest::bool::weighted(0.3));
    (
        (null_or_value(), 1u32..4),
        (null_or_value(), proptest::option::of(1u64..4), proptest::option::of(1u64..60), proptest::option::of(1u64..4)),
        proptest::option::weighted(0.2, 5u64..80),
        proptest::option::weighted(0.2, 1u32..5),
        (proptest::option::weighted(0.2, 0u64..30), proptest::option::weighted(0.2, 0u64..60)),
        proptest::option::weighted(0.2, 0u64..200),
        proptest::option::weighted(0.4, proptest::bool::ANY),
    )
        .prop_map(
            |(
                (concurrency_null, concurrency),
                (rate_null, limit, per_ms, burst),
                lease_ttl_ms,
                max_attempts,
                (base_ms, max_ms),
                retention_ms,
                paused,
            )| {
                QueuePatch {
                    concurrency: nullable(concurrency_null, concurrency),
                    rate: nullable(rate_null, RatePatch { limit, per_ms, burst }),
                    lease_ttl_ms,
                    max_attempts,
                    backoff_base_ms: base_ms,
                    backoff_max_ms: max_ms,
                    retention_ms,
                    paused,
                }
            },
        )
}

fn token_strategy() -> impl Strategy<Value = TokenPick> {
    prop_oneof![
        6 => Just(TokenPick::Current),
        2 => (0usize..8).prop_map(TokenPick::Old),
        1 => (0u64..40).prop_map(TokenPick::Made),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let queue = 0usize..QUEUES.len();
    let job = 0usize..64;
    prop_oneof![
        8 => (queue.clone(), proptest::collection::vec((-2i64..3, proptest::option::weighted(0.3, 0u64..40)), 1..4))
            .prop_map(|(queue, jobs)| Op::Submit { queue, jobs }),
        8 => (queue.clone(), 1u32..4, proptest::option::weighted(0.2, 1u64..60))
            .prop_map(|(queue, max, lease_ttl_ms)| Op::Lease { queue, max, lease_ttl_ms }),
        2 => (job.clone(), token_strategy(), proptest::option::weighted(0.3, 1u64..60))
            .prop_map(|(job, token, lease_ttl_ms)| Op::Heartbeat { job, token, lease_ttl_ms }),
        5 => (job.clone(), token_strategy()).prop_map(|(job, token)| Op::Complete { job, token }),
        3 => (job.clone(), token_strategy(), 1u32..3)
            .prop_map(|(job, token, max)| Op::CompleteAndLease { job, token, max }),
        4 => (job.clone(), token_strategy(), proptest::bool::weighted(0.8), proptest::option::weighted(0.3, 0u64..40))
            .prop_map(|(job, token, retry, retry_after_ms)| Op::Fail { job, token, retry, retry_after_ms }),
        2 => (job.clone(), token_strategy()).prop_map(|(job, token)| Op::Release { job, token }),
        1 => job.clone().prop_map(|job| Op::Cancel { job }),
        2 => job.prop_map(|job| Op::Retry { job }),
        1 => (queue.clone(), 0u32..4, 0usize..64).prop_map(|(queue, max, after)| Op::RetryDead { queue, max, after }),
        8 => prop_oneof![0u64..10, 0u64..100].prop_map(|ms| Op::Advance { ms }),
        1 => (queue.clone(), config_strategy()).prop_map(|(queue, config)| Op::PutQueue { queue, config }),
        1 => (queue.clone(), patch_strategy()).prop_map(|(queue, patch)| Op::PatchQueue { queue, patch }),
        1 => (queue, proptest::bool::weighted(0.5)).prop_map(|(queue, force)| Op::DeleteQueue { queue, force }),
    ]
}

// ---- the model ----

#[derive(Clone, Debug)]
struct ModelQueue {
    config: QueueConfig,
    /// (units, updated_ms), as in `rate.rs`: a token is `per_ms` units.
    bucket: Option<(u64, u64)>,
}

#[derive(Clone, Debug)]
struct ModelLease {
    worker: String,
    token: u64,
    expires_at_ms: u64,
    ttl_ms: u64,
}

#[derive(Clone, Debug)]
struct ModelJob {
    queue: String,
    state: JobState,
    priority: i64,
    payload: String,
    attempts: u32,
    max_attempts: u32,
    created_at_ms: u64,
    run_at_ms: u64,
    result: Option<String>,
    errors: Vec<AttemptError>,
    lease: Option<ModelLease>,
    finished_at_ms: u64,
    purge_at_ms: u64,
}

#[derive(Default)]
struct Model {
    queues: BTreeMap<String, ModelQueue>,
    jobs: BTreeMap<JobId, ModelJob>,
    last_id: JobId,
    last_token: u64,
}

type ModelResult = Result<Vec<JobId>, &'static str>;

/// A patch the obvious way: each field given replaces the current one; a rate is merged
/// (its burst following a new limit); a backoff base over the max raises the max.
fn model_patch(current: &QueueConfig, patch: &QueuePatch) -> Result<QueueConfig, &'static str> {
    let mut config = current.clone();
    match patch.concurrency {
        Some(Nullable::Null) => config.concurrency = None,
        Some(Nullable::Value(concurrency)) => config.concurrency = Some(concurrency),
        None => {}
    }
    match &patch.rate {
        Some(Nullable::Null) => config.rate = None,
        Some(Nullable::Value(change)) => {
            let old = current.rate.clone();
            let limit = change.limit.or(old.as_ref().map(|rate| rate.limit)).ok_or(JobError::INVALID)?;
            let per_ms = change.per_ms.or(old.as_ref().map(|rate| rate.per_ms)).ok_or(JobError::INVALID)?;
            let burst = match (change.burst, change.limit, old) {
                (Some(burst), _, _) => burst,
                (None, Some(limit), _) => limit,
                (None, None, old) => old.expect("limit came from it").burst,
            };
            config.rate = Some(RateLimit { limit, per_ms, burst });
        }
        None => {}
    }
    config.lease_ttl_ms = patch.lease_ttl_ms.unwrap_or(config.lease_ttl_ms);
    config.max_attempts = patch.max_attempts.unwrap_or(config.max_attempts);
    match (patch.backoff_base_ms, patch.backoff_max_ms) {
        (Some(base_ms), None) => config.backoff = Backoff { base_ms, max_ms: config.backoff.max_ms.max(base_ms) },
        (base_ms, Some(max_ms)) => {
            config.backoff = Backoff { base_ms: base_ms.unwrap_or(config.backoff.base_ms), max_ms }
        }
        (None, None) => {}
    }
    if config.backoff.max_ms < config.backoff.base_ms {
        return Err(JobError::INVALID);
    }
    config.retention_ms = patch.retention_ms.unwrap_or(config.retention_ms);
    config.paused = patch.paused.unwrap_or(config.paused);
    Ok(config)
}

fn bucket_level(bucket: (u64, u64), rate: &RateLimit, now_ms: u64) -> u64 {
    let (units, updated_ms) = bucket;
    (units + now_ms.saturating_sub(updated_ms) * rate.limit).min(rate.burst * rate.per_ms)
}

impl Model {
    fn advance(&mut self, now_ms: u64) {
        loop {
            let next = self
                .jobs
                .iter()
                .map(|(&id, job)| match (job.state, &job.lease) {
                    (_, Some(lease)) => (lease.expires_at_ms, 0, id),
                    (JobState::Scheduled, _) => (job.run_at_ms, 1, id),
                    (JobState::Queued, _) => (u64::MAX, 3, id),
                    _ => (job.purge_at_ms, 2, id),
                })
                .min();
            let Some((at_ms, kind, id)) = next else { return };
            if at_ms > now_ms || kind == 3 {
                return;
            }
            match kind {
                // A cancelled job's held lease just ends.
                0 if self.jobs[&id].state == JobState::Cancelled => self.jobs.get_mut(&id).unwrap().lease = None,
                0 => self.fail_attempt(id, at_ms, "lease expired", true, None),
                1 => self.jobs.get_mut(&id).unwrap().state = JobState::Queued,
                _ => {
                    self.jobs.remove(&id);
                }
            }
        }
    }

    fn finish(&mut self, id: JobId, state: JobState, at_ms: u64) {
        let retention_ms = self.queues[&self.jobs[&id].queue].config.retention_ms;
        let job = self.jobs.get_mut(&id).unwrap();
        job.state = state;
        job.lease = None;
        job.finished_at_ms = at_ms;
        job.purge_at_ms = at_ms + retention_ms;
    }

    fn fail_attempt(&mut self, id: JobId, at_ms: u64, message: &str, retry: bool, retry_after_ms: Option<u64>) {
        let backoff = self.queues[&self.jobs[&id].queue].config.backoff.clone();
        let job = self.jobs.get_mut(&id).unwrap();
        job.lease = None;
        if job.errors.len() == limits::ERRORS_KEPT_MAX {
            job.errors.remove(0);
        }
        job.errors.push(AttemptError { attempt: job.attempts, at_ms, message: message.into() });
        if !retry || job.attempts >= job.max_attempts {
            self.finish(id, JobState::Dead, at_ms);
        } else {
            // base × 2^(attempt − 1), capped: small numbers here, so plain multiplication.
            let delay_ms = retry_after_ms.unwrap_or_else(|| {
                let mut delay_ms = backoff.base_ms;
                for _ in 1..job.attempts {
                    delay_ms = (delay_ms * 2).min(backoff.max_ms);
                }
                delay_ms.min(backoff.max_ms)
            });
            job.run_at_ms = at_ms + delay_ms;
            job.state = if delay_ms == 0 { JobState::Queued } else { JobState::Scheduled };
        }
    }

    fn check_lease(&self, id: JobId, token: u64) -> Result<(), &'static str> {
        match self.jobs.get(&id) {
            None => Err(JobError::NOT_FOUND),
            Some(job)
                if job.state == JobState::Leased && job.lease.as_ref().is_some_and(|lease| lease.token == token) =>
            {
                Ok(())
            }
            Some(_) => Err(JobError::STALE_LEASE),
        }
    }

    /// Queued jobs of `queue` in the order they must be leased.
    fn lease_order(&self, queue: &str) -> Vec<JobId> {
        let mut ready: Vec<(Reverse<i64>, JobId)> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.queue == queue && job.state == JobState::Queued)
            .map(|(&id, job)| (Reverse(job.priority), id))
            .collect();
        ready.sort();
        ready.into_iter().map(|(_, id)| id).collect()
    }

    /// Leases taking a slot: leased jobs, and cancelled ones whose lease is still held.
    fn leases_held(&self, queue: &str) -> u64 {
        self.jobs.values().filter(|job| job.queue == queue && job.lease.is_some()).count() as u64
    }

    fn requeue_dead(&mut self, id: JobId, now_ms: u64) {
        let extra = self.queues[&self.jobs[&id].queue].config.max_attempts;
        let job = self.jobs.get_mut(&id).unwrap();
        job.max_attempts = job.attempts + extra;
        job.run_at_ms = now_ms;
        job.state = JobState::Queued;
    }

    fn apply(&mut self, now_ms: u64, command: &JobCommand) -> ModelResult {
        self.advance(now_ms);
        self.apply_now(now_ms, command)
    }

    /// `command` at `now_ms`, time already advanced.
    fn apply_now(&mut self, now_ms: u64, command: &JobCommand) -> ModelResult {
        match command {
            JobCommand::PutQueue { queue, config } => {
                let bucket = match (self.queues.get(queue), &config.rate) {
                    (_, None) => None,
                    (
                        Some(ModelQueue { config: QueueConfig { rate: Some(old), .. }, bucket: Some(bucket) }),
                        Some(new),
                    ) => {
                        let tokens = (bucket_level(*bucket, old, now_ms) / old.per_ms).min(new.burst);
                        Some((tokens * new.per_ms, now_ms.max(bucket.1)))
                    }
                    (_, Some(new)) => Some((new.burst * new.per_ms, now_ms)),
                };
                self.queues.insert(queue.clone(), ModelQueue { config: config.clone(), bucket });
                Ok(vec![])
            }
            JobCommand::PatchQueue { queue, patch } => {
                let current = self.queues.get(queue).map_or_else(QueueConfig::default, |queue| queue.config.clone());
                let config = model_patch(&current, patch)?;
                self.apply_now(now_ms, &JobCommand::PutQueue { queue: queue.clone(), config })
            }
            JobCommand::DeleteQueue { queue, force } => {
                if !self.queues.contains_key(queue) {
                    return Err(JobError::NOT_FOUND);
                }
                let ids: Vec<JobId> =
                    self.jobs.iter().filter(|(_, job)| &job.queue == queue).map(|(&id, _)| id).collect();
                // Never while a lease is held, not even with force.
                if ids.iter().any(|id| self.jobs[id].lease.is_some()) {
                    return Err(JobError::QUEUE_NOT_EMPTY);
                }
                if !force && ids.iter().any(|id| !self.jobs[id].state.is_terminal()) {
                    return Err(JobError::QUEUE_NOT_EMPTY);
                }
                for id in &ids {
                    self.jobs.remove(id);
                }
                self.queues.remove(queue);
                Ok(ids)
            }
            JobCommand::Submit { queue, jobs } => {
                let config = self
                    .queues
                    .entry(queue.clone())
                    .or_insert(ModelQueue { config: QueueConfig::default(), bucket: None })
                    .config
                    .clone();
                let mut ids = Vec::new();
                for new_job in jobs {
                    self.last_id += 1;
                    let run_at_ms = now_ms + new_job.delay_ms.unwrap_or(0);
                    self.jobs.insert(
                        self.last_id,
                        ModelJob {
                            queue: queue.clone(),
                            state: if run_at_ms > now_ms { JobState::Scheduled } else { JobState::Queued },
                            priority: new_job.priority,
                            payload: new_job.payload.clone(),
                            attempts: 0,
                            max_attempts: new_job.max_attempts.unwrap_or(config.max_attempts),
                            created_at_ms: now_ms,
                            run_at_ms,
                            result: None,
                            errors: vec![],
                            lease: None,
                            finished_at_ms: 0,
                            purge_at_ms: 0,
                        },
                    );
                    ids.push(self.last_id);
                }
                Ok(ids)
            }
            JobCommand::Lease { queue, worker, max, lease_ttl_ms } => {
                let Some(model_queue) = self.queues.get(queue) else { return Ok(vec![]) };
                let config = model_queue.config.clone();
                if config.paused {
                    return Ok(vec![]);
                }
                let ready = self.lease_order(queue);
                let room =
                    config.concurrency.map_or(u64::MAX, |c| u64::from(c).saturating_sub(self.leases_held(queue)));
                let tokens = match (&config.rate, model_queue.bucket) {
                    (Some(rate), Some(bucket)) => bucket_level(bucket, rate, now_ms) / rate.per_ms,
                    _ => u64::MAX,
                };
                let count = (u64::from(*max)).min(room).min(tokens).min(ready.len() as u64) as usize;
                if let (Some(rate), Some(bucket)) = (&config.rate, self.queues.get_mut(queue).unwrap().bucket.as_mut())
                {
                    *bucket = (bucket_level(*bucket, rate, now_ms) - count as u64 * rate.per_ms, now_ms.max(bucket.1));
                }
                let ttl_ms = lease_ttl_ms.unwrap_or(config.lease_ttl_ms);
                for &id in &ready[..count] {
                    self.last_token += 1;
                    let job = self.jobs.get_mut(&id).unwrap();
                    job.state = JobState::Leased;
                    job.attempts += 1;
                    job.lease = Some(ModelLease {
                        worker: worker.clone(),
                        token: self.last_token,
                        expires_at_ms: now_ms + ttl_ms,
                        ttl_ms,
                    });
                }
                Ok(ready[..count].to_vec())
            }
            JobCommand::Heartbeat { id, lease_token, lease_ttl_ms } => {
                self.check_lease(*id, *lease_token)?;
                let lease = self.jobs.get_mut(id).unwrap().lease.as_mut().unwrap();
                lease.ttl_ms = lease_ttl_ms.unwrap_or(lease.ttl_ms);
                lease.expires_at_ms = now_ms + lease.ttl_ms;
                Ok(vec![*id])
            }
            JobCommand::Complete { id, lease_token, result } => {
                self.check_lease(*id, *lease_token)?;
                self.jobs.get_mut(id).unwrap().result = result.clone();
                self.finish(*id, JobState::Succeeded, now_ms);
                Ok(vec![*id])
            }
            JobCommand::Fail { id, lease_token, error, retry, retry_after_ms } => {
                self.check_lease(*id, *lease_token)?;
                self.fail_attempt(*id, now_ms, error, *retry, *retry_after_ms);
                Ok(vec![*id])
            }
            JobCommand::Release { id, lease_token } => {
                if let Some(job) = self.jobs.get_mut(id) {
                    if job.state == JobState::Cancelled && job.lease.as_ref().is_some_and(|l| l.token == *lease_token) {
                        job.lease = None;
                        return Ok(vec![*id]);
                    }
                }
                self.check_lease(*id, *lease_token)?;
                let job = self.jobs.get_mut(id).unwrap();
                job.lease = None;
                job.attempts -= 1;
                job.state = JobState::Queued;
                Ok(vec![*id])
            }
            JobCommand::Cancel { id } => {
                let job = self.jobs.get(id).ok_or(JobError::NOT_FOUND)?;
                if job.state.is_terminal() {
                    return Err(JobError::INVALID_STATE);
                }
                let held = job.lease.clone();
                self.finish(*id, JobState::Cancelled, now_ms);
                self.jobs.get_mut(id).unwrap().lease = held;
                Ok(vec![*id])
            }
            JobCommand::Retry { id } => {
                let job = self.jobs.get(id).ok_or(JobError::NOT_FOUND)?;
                if job.state != JobState::Dead {
                    return Err(JobError::INVALID_STATE);
                }
                self.requeue_dead(*id, now_ms);
                Ok(vec![*id])
            }
            JobCommand::RetryDead { queue, max, after } => {
                if *max == 0 || *max > 1_000 {
                    return Err(JobError::INVALID);
                }
                if !self.queues.contains_key(queue) {
                    return Err(JobError::NOT_FOUND);
                }
                let ids: Vec<JobId> = self
                    .jobs
                    .iter()
                    .filter(|(&id, job)| id > *after && job.queue == *queue && job.state == JobState::Dead)
                    .map(|(&id, _)| id)
                    .take(*max as usize)
                    .collect();
                for &id in &ids {
                    self.requeue_dead(id, now_ms);
                }
                Ok(ids)
            }
            JobCommand::IncrementCounter { .. } | JobCommand::DeleteCounter { .. } => {
                unreachable!("counters are not part of these histories")
            }
            JobCommand::CompleteAndLease { id, lease_token, result, worker, max, lease_ttl_ms } => {
                let complete = JobCommand::Complete { id: *id, lease_token: *lease_token, result: result.clone() };
                let mut ids = self.apply_now(now_ms, &complete)?;
                let queue = self.jobs[id].queue.clone();
                let lease =
                    JobCommand::Lease { queue, worker: worker.clone(), max: *max, lease_ttl_ms: *lease_ttl_ms };
                ids.extend(self.apply_now(now_ms, &lease)?);
                Ok(ids)
            }
        }
    }

    fn view(&self, id: JobId) -> Option<Job> {
        let job = self.jobs.get(&id)?;
        let finished = job.state.is_terminal();
        Some(Job {
            id,
            queue: job.queue.clone(),
            state: job.state,
            priority: job.priority,
            payload: job.payload.clone(),
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            created_at_ms: job.created_at_ms,
            run_at_ms: job.run_at_ms,
            result: job.result.clone(),
            errors: job.errors.clone(),
            lease: job.lease.as_ref().map(|lease| LeaseInfo {
                worker: lease.worker.clone(),
                lease_token: lease.token,
                lease_expires_at_ms: lease.expires_at_ms,
            }),
            finished_at_ms: finished.then_some(job.finished_at_ms),
            purge_at_ms: finished.then_some(job.purge_at_ms),
        })
    }
}

// ---- the history checks ----

/// What the checks remember about the history so far.
#[derive(Default)]
struct History {
    /// Per queue: the lease times since its configuration last changed.
    lease_times_ms: BTreeMap<String, Vec<u64>>,
    /// Per queue: leased jobs above a lowered concurrency, allowed to run out.
    surplus_allowed: BTreeMap<String, bool>,
    /// Per job: every token it was leased with.
    tokens: BTreeMap<JobId, Vec<u64>>,
    last_token: u64,
    /// Per job: (terminal states reached, explicit retries).
    terminal_entries: BTreeMap<JobId, (u32, u32)>,
    /// Per job: the last view seen (to tell a purge from a loss).
    last_seen: BTreeMap<JobId, Job>,
    /// Jobs removed with their queue.
    deleted: Vec<JobId>,
}

fn pick_job(history: &History, pick: usize) -> JobId {
    let ids: Vec<&JobId> = history.last_seen.keys().collect();
    // No job yet: an id that does not exist.
    ids.get(pick % ids.len().max(1)).map_or(1, |&&id| id)
}

fn pick_token(history: &History, jobs: &Jobs, id: JobId, pick: &TokenPick) -> u64 {
    let tokens = history.tokens.get(&id).cloned().unwrap_or_default();
    match pick {
        TokenPick::Current => jobs
            .job(id)
            .and_then(|job| job.lease.map(|lease| lease.lease_token))
            .or(tokens.last().copied())
            .unwrap_or(1),
        TokenPick::Old(index) => tokens.get(index % tokens.len().max(1)).copied().unwrap_or(0),
        TokenPick::Made(token) => *token,
    }
}

fn to_command(op: &Op, history: &History, jobs: &Jobs) -> Option<JobCommand> {
    let command = match op {
        Op::Submit { queue, jobs: new_jobs } => JobCommand::Submit {
            queue: QUEUES[*queue].into(),
            jobs: new_jobs
                .iter()
                .map(|&(priority, delay_ms)| NewJob {
                    priority,
                    delay_ms,
                    payload: format!("[{priority}]"),
                    ..NewJob::default()
                })
                .collect(),
        },
        Op::Lease { queue, max, lease_ttl_ms } => JobCommand::Lease {
            queue: QUEUES[*queue].into(),
            worker: format!("w{queue}"),
            max: *max,
            lease_ttl_ms: *lease_ttl_ms,
        },
        Op::Heartbeat { job, token, lease_ttl_ms } => {
            let id = pick_job(history, *job);
            JobCommand::Heartbeat { id, lease_token: pick_token(history, jobs, id, token), lease_ttl_ms: *lease_ttl_ms }
        }
        Op::Complete { job, token } => {
            let id = pick_job(history, *job);
            JobCommand::Complete {
                id,
                lease_token: pick_token(history, jobs, id, token),
                result: Some(format!("{id}")),
            }
        }
        Op::CompleteAndLease { job, token, max } => {
            let id = pick_job(history, *job);
            JobCommand::CompleteAndLease {
                id,
                lease_token: pick_token(history, jobs, id, token),
                result: Some(format!("{id}")),
                worker: "next".into(),
                max: *max,
                lease_ttl_ms: None,
            }
        }
        Op::Fail { job, token, retry, retry_after_ms } => {
            let id = pick_job(history, *job);
            JobCommand::Fail {
                id,
                lease_token: pick_token(history, jobs, id, token),
                error: format!("failed {id}"),
                retry: *retry,
                retry_after_ms: *retry_after_ms,
            }
        }
        Op::Release { job, token } => {
            let id = pick_job(history, *job);
            JobCommand::Release { id, lease_token: pick_token(history, jobs, id, token) }
        }
        Op::Cancel { job } => JobCommand::Cancel { id: pick_job(history, *job) },
        Op::Retry { job } => JobCommand::Retry { id: pick_job(history, *job) },
        Op::RetryDead { queue, max, after } => {
            // Half the time from the first dead job, else after some job id.
            let after = if after % 2 == 0 { 0 } else { pick_job(history, *after) };
            JobCommand::RetryDead { queue: QUEUES[*queue].into(), max: *max, after }
        }
        Op::Advance { .. } => return None,
        Op::PutQueue { queue, config } => JobCommand::PutQueue { queue: QUEUES[*queue].into(), config: config.clone() },
        Op::PatchQueue { queue, patch } => {
            JobCommand::PatchQueue { queue: QUEUES[*queue].into(), patch: patch.clone() }
        }
        Op::DeleteQueue { queue, force } => JobCommand::DeleteQueue { queue: QUEUES[*queue].into(), force: *force },
    };
    Some(command)
}

fn run_history(configs: Vec<QueueConfig>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut jobs = Jobs::default();
    let mut model = Model::default();
    let mut history = History::default();
    let mut now_ms = START_MS;
    // Queues a and b start configured; c is created with defaults by its first submit.
    let setup = configs.into_iter().enumerate().map(|(queue, config)| Op::PutQueue { queue, config });
    for (step, op) in setup.chain(ops).enumerate() {
        let command = to_command(&op, &history, &jobs);
        if let Op::Advance { ms } = op {
            now_ms += ms;
        }
        jobs.advance_time(now_ms);
        let before = jobs.clone();
        let model_queued_before: BTreeMap<&str, Vec<JobId>> =
            QUEUES.iter().map(|&q| (q, model.lease_order(q))).collect();
        let (result, expected) = match &command {
            Some(command) => (Some(jobs.apply(now_ms, command)), model.apply(now_ms, command)),
            None => {
                model.advance(now_ms);
                (None, Ok(vec![]))
            }
        };
        let context = format!("step {step}: {op:?} → {command:?} at {now_ms}");

        // The response agrees with the model.
        match (&result, &expected) {
            (None, _) => {}
            (Some(Err(error)), Err(code)) => {
                prop_assert_eq!(&error.code, code, "{}", context);
                prop_assert!(jobs == before, "a rejected command changed the state: {}", context);
            }
            (Some(Ok(response)), Ok(expected_ids)) => {
                let ids = match response {
                    JobResponse::Submitted { jobs } | JobResponse::Leased { jobs, .. } => {
                        jobs.iter().map(|job| job.id).collect()
                    }
                    JobResponse::Job(job) => vec![job.id],
                    JobResponse::CompletedAndLeased { job, jobs, .. } => {
                        std::iter::once(job.id).chain(jobs.iter().map(|job| job.id)).collect()
                    }
                    JobResponse::QueueDeleted { jobs_removed, .. } => {
                        prop_assert_eq!(*jobs_removed as usize, expected_ids.len(), "{}", context);
                        history.deleted.extend(expected_ids);
                        expected_ids.clone()
                    }
                    JobResponse::RetriedDead { ids, dead_left, queue } => {
                        let dead = model.jobs.values().filter(|job| job.queue == *queue && job.state == JobState::Dead);
                        prop_assert_eq!(*dead_left as usize, dead.count(), "{}", context);
                        ids.clone()
                    }
                    JobResponse::Queue(_) | JobResponse::Counter { .. } => vec![],
                };
                prop_assert_eq!(&ids, expected_ids, "{}", context);
            }
            (Some(result), expected) => prop_assert!(false, "{}: got {:?}, model says {:?}", context, result, expected),
        }

        // History checks of leases.
        let lease_outcome = match (&command, &result) {
            (Some(JobCommand::Lease { queue, max, .. }), Some(Ok(JobResponse::Leased { jobs: leased, blocked }))) => {
                Some((queue, max, leased, blocked))
            }
            (
                Some(JobCommand::CompleteAndLease { max, .. }),
                Some(Ok(JobResponse::CompletedAndLeased { job, jobs: leased, blocked })),
            ) => Some((&job.queue, max, leased, blocked)),
            _ => None,
        };
        if let Some((queue, max, leased, blocked)) = lease_outcome {
            let leased_ids: Vec<JobId> = leased.iter().map(|job| job.id).collect();
            let eligible = &model_queued_before[queue.as_str()];
            prop_assert_eq!(
                &leased_ids[..],
                &eligible[..leased_ids.len()],
                "highest priority, oldest first: {}",
                context
            );
            prop_assert_eq!(blocked.is_some(), leased.len() < *max as usize, "blocked iff short: {}", context);
            for job in leased {
                let token = job.lease.as_ref().unwrap().lease_token;
                prop_assert!(token > history.last_token, "tokens strictly increase: {}", context);
                history.last_token = token;
                history.tokens.entry(job.id).or_default().push(token);
            }
            if !leased.is_empty() {
                let info = jobs.queue(queue, now_ms).unwrap();
                history.surplus_allowed.insert(queue.clone(), false);
                if let Some(concurrency) = info.config.concurrency {
                    prop_assert!(info.leases_held <= u64::from(concurrency), "leases held ≤ concurrency: {}", context);
                }
                if let Some(rate) = &info.config.rate {
                    let times = history.lease_times_ms.entry(queue.clone()).or_default();
                    times.extend(std::iter::repeat_n(now_ms, leased.len()));
                    // Every window ending now: count × per ≤ burst × per + limit × length.
                    for (index, &start_ms) in times.iter().enumerate() {
                        let count = (times.len() - index) as u64;
                        prop_assert!(
                            count * rate.per_ms <= rate.burst * rate.per_ms + rate.limit * (now_ms - start_ms),
                            "{} leases in [{}, {}] over rate {:?}: {}",
                            count,
                            start_ms,
                            now_ms,
                            rate,
                            context
                        );
                    }
                }
            }
        }
        if let (Some(JobCommand::PutQueue { queue, .. } | JobCommand::PatchQueue { queue, .. }), Some(Ok(_))) =
            (&command, &result)
        {
            // A new configuration starts new windows; a lowered concurrency may leave a surplus.
            history.lease_times_ms.remove(queue);
            let info = jobs.queue(queue, now_ms).unwrap();
            let surplus = info.config.concurrency.is_some_and(|c| info.leases_held > u64::from(c));
            history.surplus_allowed.insert(queue.clone(), surplus);
        }
        if let (Some(JobCommand::Retry { id }), Some(Ok(_))) = (&command, &result) {
            history.terminal_entries.entry(*id).or_default().1 += 1;
        }
        if let Some(Ok(JobResponse::RetriedDead { ids, .. })) = &result {
            for id in ids {
                history.terminal_entries.entry(*id).or_default().1 += 1;
            }
        }
        if let (Some(JobCommand::DeleteQueue { queue, .. }), Some(Ok(_))) = (&command, &result) {
            history.lease_times_ms.remove(queue);
        }

        // Every job looks as the model says; none vanished early; terminal at most once.
        jobs.check_invariants();
        for info in jobs.queues(now_ms) {
            if let Some(concurrency) = info.config.concurrency {
                let surplus = history.surplus_allowed.get(&info.name).copied().unwrap_or(false);
                prop_assert!(
                    surplus || info.leases_held <= u64::from(concurrency),
                    "leases held ≤ concurrency: {}",
                    context
                );
            }
        }
        for id in 1..=model.last_id {
            let actual = jobs.job(id);
            prop_assert_eq!(&actual, &model.view(id), "job {}: {}", id, context);
            match actual {
                Some(job) => {
                    let was_terminal = history.last_seen.get(&id).is_some_and(|seen| seen.state.is_terminal());
                    if job.state.is_terminal() && !was_terminal {
                        let (entries, retries) = history.terminal_entries.entry(id).or_default();
                        *entries += 1;
                        prop_assert!(*entries <= *retries + 1, "job {} finished twice: {}", id, context);
                    }
                    history.last_seen.insert(id, job);
                }
                None => {
                    let deleted = history.deleted.contains(&id);
                    let seen = history.last_seen.get(&id);
                    // Gone: deleted with its queue, or finished and past retention. A job
                    // that finished and was purged inside one time step was last seen
                    // unfinished; the model (compared above) vouches for it.
                    let purged_in_time =
                        seen.is_none_or(|job| job.purge_at_ms.is_none_or(|purge_at_ms| purge_at_ms <= now_ms));
                    prop_assert!(deleted || purged_in_time, "job {} vanished before retention: {}", id, context);
                }
            }
        }
        prop_assert_eq!(jobs.next_deadline_ms(), model_next_deadline(&model), "{}", context);
    }
    Ok(())
}

fn model_next_deadline(model: &Model) -> Option<u64> {
    model
        .jobs
        .values()
        .filter_map(|job| match (job.state, &job.lease) {
            (JobState::Scheduled, _) => Some(job.run_at_ms),
            (JobState::Queued, _) => None,
            // Leased, or cancelled and still held: its purge waits for the lease's end.
            (_, Some(lease)) => Some(lease.expires_at_ms),
            _ => Some(job.purge_at_ms),
        })
        .min()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_match_the_model_and_keep_every_guarantee(
        configs in proptest::collection::vec(config_strategy(), 2),
        ops in proptest::collection::vec(op_strategy(), 1..150),
    ) {
        run_history(configs, ops)?;
    }
}
