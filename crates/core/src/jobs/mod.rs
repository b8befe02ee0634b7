//! The durable priority job queue: queues with concurrency and rate limits, jobs, fenced
//! leases, retries with backoff, dead letters, counters.
//!
//! Pure and deterministic like the rest of `core`: time is the `now_ms` of the applied Raft
//! entry, nothing is random (backoff has no jitter), nothing does I/O. User-facing semantics
//! are in `docs/jobs.md`; the bounds in [`limits`].
//!
//! Layout: [`Jobs`] holds the job records (`jobs`, keyed by id) and the global deadline
//! indexes that [`Jobs::advance_time`] walks in time order; each [`queue::Queue`] holds its
//! own indexes (ready set in lease order, ids per state, its scheduled jobs and leases).
//! Every operation is O(log n) in the number of jobs, except deleting a whole queue
//! (O(jobs of that queue)). Invariants, for every stored job `j` with id `i`:
//! - `j` is in exactly the indexes its state puts it in (see `queue.rs`), and globally:
//!   scheduled ⇔ `(run_at_ms, i)` ∈ `scheduled`; `j.lease` is `Some` ⇔ `(expires_at_ms, i)`
//!   ∈ `lease_deadlines`; finished without a lease ⇔ `(purge_at_ms, i)` ∈ `purge_deadlines`.
//!   All index changes go through `set_indexed`, called around every state change.
//! - `j.lease` is `Some` when `j` is leased, and when `j` was cancelled while leased and
//!   its holder has not let go yet (a *held* lease: until the holder releases it or the
//!   lease ends, the worker may still be at work, so the slot stays taken); `None`
//!   otherwise. Its token is ≤ `last_lease_token`, and tokens are never reused. A job with a
//!   lease is in the lease indexes (`lease_deadlines`), not in `purge_deadlines`.
//! - a queue never has more leases (held ones included) than its concurrency as a result of
//!   a lease (a lowered concurrency lets the surplus run out), and never takes more tokens
//!   than its bucket holds.
//! - `attempts ≤ max_attempts`.
//! - an error leaves the state exactly as it was: commands validate everything first.

mod error;
mod job;
mod json_text;
pub mod limits;
mod queue;
mod rate;
mod time;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

pub use error::JobError;
pub use job::{AttemptError, Job, JobId, JobState, LeaseInfo, NewJob};
pub use json_text::{check_json_depth, compact_json, unreadable_json_reason, TooDeep};
pub use queue::{
    check_name, format_duration_ms, format_limit_ms, Backoff, JobCounts, Nullable, QueueConfig, QueueInfo, QueuePatch, QueueTally,
    RateLimit, RatePatch,
};
pub use time::{parse_rfc3339_ms, RFC3339_EXPECTED};

use job::{Lease, StoredJob};
use limits::*;
use queue::{check_lease_ttl, check_max_attempts, check_range, check_range_ms, Queue, QueueId};

use crate::sharded::ShardedMap;

/// A mutation of the job queue, one per client request (a batch submit is one command).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobCommand {
    /// `PUT /v1/queues/{q}`: create, or replace the whole configuration.
    PutQueue { queue: String, config: QueueConfig },
    /// `DELETE /v1/queues/{q}`: removes the queue and all its jobs. Without `force` it is
    /// refused (`queue_not_empty`) while the queue has scheduled, queued or leased jobs.
    DeleteQueue { queue: String, force: bool },
    /// `POST /v1/queues/{q}/jobs`: one job or a batch; all accepted or none. Creates the
    /// queue with defaults if it does not exist.
    Submit { queue: String, jobs: Vec<NewJob> },
    /// `POST /v1/queues/{q}/lease`: up to `max` jobs, highest priority first, FIFO within a
    /// priority, within the queue's concurrency and rate.
    Lease { queue: String, worker: String, max: u32, lease_ttl_ms: Option<u64> },
    /// Extends the lease to `now + ttl` (its own ttl unless given).
    Heartbeat { id: JobId, lease_token: u64, lease_ttl_ms: Option<u64> },
    /// `result` is JSON text; `None` stores none.
    Complete { id: JobId, lease_token: u64, result: Option<String> },
    /// A failed attempt: retried after `retry_after_ms` (or the queue's backoff) unless
    /// `retry` is false or the attempts are used up, then `dead`.
    Fail { id: JobId, lease_token: u64, error: String, retry: bool, retry_after_ms: Option<u64> },
    /// Gives the job back: queued again at once, the attempt not counted.
    Release { id: JobId, lease_token: u64 },
    /// `DELETE /v1/jobs/{id}`: any unfinished job → cancelled (a lease's token goes stale).
    Cancel { id: JobId },
    /// `POST /v1/jobs/{id}/retry`: dead → queued with the queue's `max_attempts` more attempts.
    Retry { id: JobId },
    /// `POST /v1/counters/{name}`.
    IncrementCounter { name: String, by: u64 },
    /// `POST /v1/jobs/{id}/complete` with `lease_next`: [`JobCommand::Complete`], then a
    /// [`JobCommand::Lease`] of up to `max` jobs from the completed job's queue, in one
    /// command, so a worker finishes a job and takes the next in one durable round trip.
    /// The lease's fields are checked first: a refused command changes nothing.
    CompleteAndLease {
        id: JobId,
        lease_token: u64,
        result: Option<String>,
        worker: String,
        max: u32,
        lease_ttl_ms: Option<u64>,
    },
    /// `PATCH /v1/queues/{q}`: changes the settings the patch gives and keeps the others,
    /// merged here against the configuration current when the entry applies (so a patch
    /// never undoes a change it did not see); creates the queue from the defaults if it
    /// does not exist, as `PutQueue` and `Submit` do.
    ///
    /// Added after the others: commands are stored in the Raft log as bincode, which
    /// numbers variants by position, so new variants go last and old ones never change.
    PatchQueue { queue: String, patch: QueuePatch },
    /// `DELETE /v1/counters/{name}`: the counter is gone (it reads 0 again, and no longer
    /// counts against the bound on counters). Answers the value it had.
    DeleteCounter { name: String },
    /// `POST /v1/queues/{q}/retry`: up to `max` of the queue's dead jobs with ids after
    /// `after` (0: from the first), oldest first, are queued again as by
    /// [`JobCommand::Retry`] (a dead-letter queue emptied in rounds, each after the last
    /// id of the one before, so a job that dies again meanwhile is not taken twice).
    RetryDead { queue: String, max: u32, after: JobId },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobResponse {
    /// The queue after `PutQueue` or `PatchQueue`.
    Queue(QueueInfo),
    QueueDeleted {
        queue: String,
        jobs_removed: u64,
    },
    /// The new jobs, in id order.
    Submitted {
        jobs: Vec<Job>,
    },
    /// The leased jobs in lease order; `blocked` is `Some` exactly when fewer than `max`.
    Leased {
        jobs: Vec<Job>,
        blocked: Option<LeaseBlocked>,
    },
    /// The job after heartbeat, complete, fail, release, cancel or retry.
    Job(Job),
    Counter {
        name: String,
        value: u64,
    },
    /// The completed job, then the leased ones as in [`JobResponse::Leased`].
    CompletedAndLeased {
        job: Job,
        jobs: Vec<Job>,
        blocked: Option<LeaseBlocked>,
    },
    /// The ids of the jobs [`JobCommand::RetryDead`] queued again, ascending, and how many
    /// of the queue's jobs are still dead.
    RetriedDead {
        queue: String,
        ids: Vec<JobId>,
        dead_left: u64,
    },
}

/// One page of [`Jobs::list_jobs`].
#[derive(Debug, Clone, PartialEq)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Jobs past this page match too.
    pub more: bool,
}

/// Why a lease returned fewer jobs than asked, and when trying again may help.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBlocked {
    pub reason: LeaseBlockReason,
    /// The earliest time the limit lifts by itself (a token refills, a lease expires, a
    /// scheduled job comes due); earlier events (a complete, a submit) may lift it sooner.
    /// `None` when nothing already known will lift it.
    pub retry_at_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseBlockReason {
    /// The queue is paused.
    Paused,
    /// No queued jobs (left); `retry_at_ms` is the next scheduled job's time.
    Empty,
    /// `concurrency` jobs are leased; `retry_at_ms` is the earliest lease expiry.
    Concurrency,
    /// The rate bucket is empty; `retry_at_ms` is when the next token is there.
    Rate,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Jobs {
    /// Boxed: the tables then hold 16 bytes per slot, so their spare capacity and their
    /// growth (which moves every slot) stay cheap with millions of jobs. Sharded and shared
    /// copy-on-write, so a snapshot takes it without copying (see `sharded`).
    jobs: ShardedMap<JobId, Box<StoredJob>>,
    queues: BTreeMap<QueueId, Queue>,
    queue_ids: BTreeMap<String, QueueId>,
    counters: BTreeMap<String, u64>,
    /// The latest id given; ids start at 1.
    last_job_id: JobId,
    /// The latest fencing token given; tokens start at 1.
    last_lease_token: u64,
    last_queue_id: QueueId,
    /// Scheduled jobs by `run_at_ms`.
    scheduled: BTreeSet<(u64, JobId)>,
    /// Leased jobs by lease expiry.
    lease_deadlines: BTreeSet<(u64, JobId)>,
    /// Finished jobs by removal time.
    purge_deadlines: BTreeSet<(u64, JobId)>,
    /// [`JOBS_MAX`], lowered by tests.
    jobs_max: u64,
    /// The latest job changes as (sequence number, job id), oldest first, at most
    /// [`JOB_CHANGES_KEPT_MAX`]: what `/v1/watch` streams tail, whatever made the change (a
    /// request on any node, a lease expiring, a scheduled job coming due).
    changes: VecDeque<(u64, JobId)>,
    /// The sequence number of the latest change; numbers start at 1.
    last_change_seq: u64,
    /// Set while re-applying the log at start-up (see `State::apply_batch_unobserved`):
    /// submit and lease then leave the jobs out of their answers, which nobody reads. Not
    /// state: never serialized, false otherwise.
    #[serde(skip)]
    pub(crate) unobserved: bool,
    /// Set for the whole re-application of the log at start-up: the queues' tallies (what
    /// `/metrics` counts since this process started) leave those entries out. Not state.
    #[serde(skip)]
    pub(crate) replaying: bool,
}

/// Job changes after a sequence number (see [`Jobs::changes_after`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobChanges {
    /// Changed job ids in change order, each with the sequence number of its change.
    pub changes: Vec<(u64, JobId)>,
    /// Some changes after the asked number are no longer kept.
    pub missed: bool,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            jobs: ShardedMap::new(),
            queues: BTreeMap::new(),
            queue_ids: BTreeMap::new(),
            counters: BTreeMap::new(),
            last_job_id: 0,
            last_lease_token: 0,
            last_queue_id: 0,
            scheduled: BTreeSet::new(),
            lease_deadlines: BTreeSet::new(),
            purge_deadlines: BTreeSet::new(),
            jobs_max: JOBS_MAX,
            changes: VecDeque::new(),
            last_change_seq: 0,
            unobserved: false,
            replaying: false,
        }
    }
}

impl Jobs {
    /// Empty, storing at most `jobs_max` jobs instead of [`JOBS_MAX`].
    pub fn with_jobs_max(jobs_max: u64) -> Jobs {
        Jobs { jobs_max, ..Jobs::default() }
    }

    pub fn apply(&mut self, now_ms: u64, command: &JobCommand) -> Result<JobResponse, JobError> {
        // What is due happens first, so a command always sees the state at `now_ms` (a no-op
        // when the caller already advanced time, as `State::apply_batch` does).
        self.advance_time(now_ms);
        match command {
            JobCommand::PutQueue { queue, config } => self.put_queue(now_ms, queue, config),
            JobCommand::DeleteQueue { queue, force } => self.delete_queue(queue, *force),
            JobCommand::Submit { queue, jobs } => self.submit(now_ms, queue, jobs),
            JobCommand::Lease { queue, worker, max, lease_ttl_ms } => {
                self.lease(now_ms, queue, worker, *max, *lease_ttl_ms)
            }
            JobCommand::Heartbeat { id, lease_token, lease_ttl_ms } => {
                self.heartbeat(now_ms, *id, *lease_token, *lease_ttl_ms)
            }
            JobCommand::Complete { id, lease_token, result } => {
                self.complete(now_ms, *id, *lease_token, result.as_deref())
            }
            JobCommand::Fail { id, lease_token, error, retry, retry_after_ms } => {
                self.fail(now_ms, *id, *lease_token, error, *retry, *retry_after_ms)
            }
            JobCommand::Release { id, lease_token } => self.release(*id, *lease_token),
            JobCommand::Cancel { id } => self.cancel(now_ms, *id),
            JobCommand::Retry { id } => self.retry(now_ms, *id),
            JobCommand::IncrementCounter { name, by } => self.increment_counter(name, *by),
            JobCommand::DeleteCounter { name } => {
                check_name("name", name)?;
                let value = self.counters.remove(name.as_str()).unwrap_or(0);
                Ok(JobResponse::Counter { name: name.clone(), value })
            }
            JobCommand::CompleteAndLease { id, lease_token, result, worker, max, lease_ttl_ms } => {
                check_lease_request(worker, *max, *lease_ttl_ms)?;
                let JobResponse::Job(job) = self.complete(now_ms, *id, *lease_token, result.as_deref())? else {
                    unreachable!("complete answers the job")
                };
                let queue = self.queues[&self.jobs[id].queue].name.clone();
                match self.lease(now_ms, &queue, worker, *max, *lease_ttl_ms)? {
                    JobResponse::Leased { jobs, blocked } => Ok(JobResponse::CompletedAndLeased { job, jobs, blocked }),
                    _ => unreachable!("lease answers leased jobs"),
                }
            }
            JobCommand::PatchQueue { queue, patch } => self.patch_queue(now_ms, queue, patch),
            JobCommand::RetryDead { queue, max, after } => self.retry_dead(now_ms, queue, *max, *after),
        }
    }

    /// Moves time forward: expires leases (a failed attempt each), queues scheduled jobs that
    /// are due, drops finished jobs past retention. Events are handled in time order, so a
    /// lease that expired long ago and whose retry is due by now is queued again in one call.
    pub fn advance_time(&mut self, now_ms: u64) {
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        enum Due {
            // At equal times, leases expire before scheduled jobs start before purges.
            LeaseExpiry,
            ScheduledRun,
            Purge,
        }
        loop {
            let next = [
                self.lease_deadlines.first().map(|&(at_ms, id)| (at_ms, Due::LeaseExpiry, id)),
                self.scheduled.first().map(|&(at_ms, id)| (at_ms, Due::ScheduledRun, id)),
                self.purge_deadlines.first().map(|&(at_ms, id)| (at_ms, Due::Purge, id)),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some((at_ms, due, id)) = next else { break };
            if at_ms > now_ms {
                break;
            }
            match due {
                // A cancelled job's held lease just ends: the job is finished already.
                Due::LeaseExpiry if self.jobs[&id].state == JobState::Cancelled => {
                    self.update(id, |job| job.lease = None)
                }
                Due::LeaseExpiry => {
                    let queue_id = self.jobs[&id].queue;
                    self.tally(queue_id, |tally| tally.lease_expired += 1);
                    self.fail_attempt(id, at_ms, "lease expired".to_owned(), true, None)
                }
                Due::ScheduledRun => self.update(id, |job| job.state = JobState::Queued),
                Due::Purge => self.remove_job(id),
            }
        }
    }

    /// Renews every lease to end no earlier than its ttl after `now_ms`, as etcd's lessor
    /// renews its leases when a new leader takes over: lease time runs on while no leader
    /// can be reached, and a worker whose heartbeats could not get through during an
    /// outage (a restart, an election) must not lose its lease to it.
    pub fn renew_leases(&mut self, now_ms: u64) {
        let leased: Vec<JobId> = self.lease_deadlines.iter().map(|&(_, id)| id).collect();
        for id in leased {
            self.update(id, |job| {
                let lease = job.lease.as_mut().expect("a leased job has a lease");
                lease.expires_at_ms = lease.expires_at_ms.max(now_ms.saturating_add(lease.ttl_ms));
            });
        }
    }

    /// The earliest lease expiry, scheduled run or purge. Rate refills are not deadlines:
    /// leases happen on request, and the server retries blocked leases at `retry_at_ms`.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        [self.lease_deadlines.first(), self.scheduled.first(), self.purge_deadlines.first()]
            .into_iter()
            .flatten()
            .map(|&(at_ms, _)| at_ms)
            .min()
    }

    // ---- reads (for the server; `now_ms` only renders the rate tokens) ----

    pub fn queue(&self, name: &str, now_ms: u64) -> Option<QueueInfo> {
        let queue_id = self.queue_ids.get(name)?;
        Some(self.queues[queue_id].info(now_ms))
    }

    /// All queues in name order (at most [`QUEUES_MAX`]).
    pub fn queues(&self, now_ms: u64) -> Vec<QueueInfo> {
        self.queue_ids.values().map(|queue_id| self.queues[queue_id].info(now_ms)).collect()
    }

    pub fn job(&self, id: JobId) -> Option<Job> {
        self.jobs.get(&id).map(|job| self.view(id, job))
    }

    /// The name of the queue job `id` belongs to (without building the job's view).
    pub fn queue_of(&self, id: JobId) -> Option<&str> {
        self.jobs.get(&id).map(|job| self.queues[&job.queue].name.as_str())
    }

    /// Jobs of `queue` in id order, those in `state` or all, with ids after `after`: one
    /// page of at most `limit` (1 to [`LIST_LIMIT_MAX`]), and whether more follow it.
    pub fn list_jobs(
        &self,
        queue: &str,
        state: Option<JobState>,
        after: Option<JobId>,
        limit: usize,
    ) -> Result<JobPage, JobError> {
        check_range("limit", limit as u64, 1, LIST_LIMIT_MAX as u64)?;
        let queue_id = self.queue_ids.get(queue).ok_or_else(|| JobError::queue_not_found(queue))?;
        let queue = &self.queues[queue_id];
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let states: &[JobState] = match &state {
            Some(state) => std::slice::from_ref(state),
            None => &JobState::ALL,
        };
        // At most `limit` + 1 from each state's set, merged: O(limit) whatever the queue's
        // size; the one past the page tells whether another page follows.
        let mut ids: Vec<JobId> = states
            .iter()
            .flat_map(|state| queue.ids_by_state[state.index()].range((start, Bound::Unbounded)).take(limit + 1))
            .copied()
            .collect();
        ids.sort_unstable();
        let more = ids.len() > limit;
        ids.truncate(limit);
        Ok(JobPage { jobs: ids.into_iter().map(|id| self.view(id, &self.jobs[&id])).collect(), more })
    }

    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters.get(name).copied()
    }

    /// Jobs stored, finished ones included.
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    // ---- commands ----

    fn put_queue(&mut self, now_ms: u64, name: &str, config: &QueueConfig) -> Result<JobResponse, JobError> {
        check_name("queue", name)?;
        config.validate()?;
        let queue_id = match self.queue_ids.get(name) {
            Some(&queue_id) => {
                self.queues.get_mut(&queue_id).expect("interned queue exists").reconfigure(config.clone(), now_ms);
                queue_id
            }
            None => {
                self.check_can_create_queue()?;
                self.create_queue(name, config.clone(), now_ms)
            }
        };
        Ok(JobResponse::Queue(self.queues[&queue_id].info(now_ms)))
    }

    fn patch_queue(&mut self, now_ms: u64, name: &str, patch: &QueuePatch) -> Result<JobResponse, JobError> {
        check_name("queue", name)?;
        let config = match self.queue_ids.get(name) {
            Some(queue_id) => patch.apply_to(&self.queues[queue_id].config)?,
            None => patch.apply_to(&QueueConfig::default())?,
        };
        self.put_queue(now_ms, name, &config)
    }

    fn delete_queue(&mut self, name: &str, force: bool) -> Result<JobResponse, JobError> {
        check_name("queue", name)?;
        let &queue_id = self.queue_ids.get(name).ok_or_else(|| JobError::queue_not_found(name))?;
        let queue = &self.queues[&queue_id];
        let unfinished = queue.unfinished_count();
        // Not even with force: a worker may still be calling out for a leased job, and a
        // queue of the same name made afterwards would not count its slot.
        let held = queue.leases_held();
        if held > 0 {
            let leased = queue.count(JobState::Leased);
            let cancelled = held - leased;
            let jobs = |n: u64| if n == 1 { "1 job".to_owned() } else { format!("{n} jobs") };
            let (what, todo) = match (leased, cancelled) {
                (_, 0) => (format!("{} leased", jobs(leased)), "cancel them, and delete the queue"),
                (0, _) => (format!("{} cancelled while leased", jobs(cancelled)), "delete the queue"),
                _ => (format!("{} leased and {} cancelled while leased", jobs(leased), jobs(cancelled)), "cancel the leased ones, and delete the queue"),
            };
            let also = if !force && unfinished > leased {
                format!("; and {} unfinished, which takes force", jobs(unfinished - leased))
            } else {
                String::new()
            };
            return Err(JobError::new(
                JobError::QUEUE_NOT_EMPTY,
                format!(
                    "queue {name:?} has {what} that workers may still be running, which even force does not \
                     delete{also}: {todo} once their workers have let go of them (or their leases ended)"
                ),
                None,
            ));
        }
        if !force && unfinished > 0 {
            return Err(JobError::new(
                JobError::QUEUE_NOT_EMPTY,
                format!(
                    "queue {name:?} has {} unfinished; cancel them, or delete with force (?force=true; rota queue rm --force)",
                    if unfinished == 1 { "1 job".to_owned() } else { format!("{unfinished} jobs") }
                ),
                None,
            ));
        }
        let ids: Vec<JobId> = queue.ids_by_state.iter().flatten().copied().collect();
        for &id in &ids {
            self.remove_job(id);
        }
        self.queues.remove(&queue_id);
        self.queue_ids.remove(name);
        Ok(JobResponse::QueueDeleted { queue: name.to_owned(), jobs_removed: ids.len() as u64 })
    }

    fn submit(&mut self, now_ms: u64, queue_name: &str, new_jobs: &[NewJob]) -> Result<JobResponse, JobError> {
        check_name("queue", queue_name)?;
        if new_jobs.is_empty() {
            return Err(JobError::invalid("jobs", "submit at least one job"));
        }
        if new_jobs.len() > SUBMIT_BATCH_JOBS_MAX {
            return Err(JobError::too_large(
                "jobs",
                format!("at most {SUBMIT_BATCH_JOBS_MAX} jobs per submit, got {}", new_jobs.len()),
            ));
        }
        let is_batch = new_jobs.len() > 1;
        let mut payload_bytes = 0usize;
        for (index, new_job) in new_jobs.iter().enumerate() {
            let field = |name: &str| if is_batch { format!("jobs[{index}].{name}") } else { name.to_owned() };
            validate_new_job(new_job, now_ms, &field)?;
            payload_bytes += new_job.payload.len();
        }
        if payload_bytes > SUBMIT_BATCH_PAYLOAD_BYTES_MAX {
            return Err(JobError::too_large(
                "jobs",
                format!("at most {SUBMIT_BATCH_PAYLOAD_BYTES_MAX} payload bytes per submit, got {payload_bytes}"),
            ));
        }
        let existing_queue = self.queue_ids.get(queue_name).copied();
        if existing_queue.is_none() {
            self.check_can_create_queue()?;
        }
        // The last check: it may drop finished jobs, so nothing may fail after it.
        self.make_room(new_jobs.len() as u64)?;
        let queue_id = match existing_queue {
            Some(queue_id) => queue_id,
            None => self.create_queue(queue_name, QueueConfig::default(), now_ms),
        };
        let max_attempts_default = self.queues[&queue_id].config.max_attempts;
        let mut submitted = Vec::with_capacity(new_jobs.len());
        for new_job in new_jobs {
            self.last_job_id += 1;
            let id = self.last_job_id;
            let run_at_ms = match (new_job.delay_ms, new_job.run_at_ms) {
                (Some(delay_ms), _) => now_ms.saturating_add(delay_ms),
                (None, Some(run_at_ms)) => run_at_ms.max(now_ms),
                (None, None) => now_ms,
            };
            let max_attempts = new_job.max_attempts.unwrap_or(max_attempts_default);
            let job = Box::new(StoredJob::new(queue_id, new_job, max_attempts, now_ms, run_at_ms));
            self.jobs.insert(id, job);
            self.set_indexed(id, true);
            self.note_change(id);
            if !self.unobserved {
                submitted.push(self.view(id, &self.jobs[&id]));
            }
        }
        self.tally(queue_id, |tally| tally.submitted += new_jobs.len() as u64);
        Ok(JobResponse::Submitted { jobs: submitted })
    }

    fn lease(
        &mut self,
        now_ms: u64,
        queue_name: &str,
        worker: &str,
        max: u32,
        lease_ttl_ms: Option<u64>,
    ) -> Result<JobResponse, JobError> {
        check_name("queue", queue_name)?;
        check_lease_request(worker, max, lease_ttl_ms)?;
        let blocked = |reason, retry_at_ms| Some(LeaseBlocked { reason, retry_at_ms });
        // Leasing never creates a queue: an unknown queue simply has nothing to lease.
        let Some(&queue_id) = self.queue_ids.get(queue_name) else {
            return Ok(JobResponse::Leased { jobs: Vec::new(), blocked: blocked(LeaseBlockReason::Empty, None) });
        };
        let queue = self.queues.get_mut(&queue_id).expect("interned queue exists");
        if queue.config.paused {
            return Ok(JobResponse::Leased { jobs: Vec::new(), blocked: blocked(LeaseBlockReason::Paused, None) });
        }
        let lease_ttl_ms = lease_ttl_ms.unwrap_or(queue.config.lease_ttl_ms);
        let ready_count = queue.ready.len() as u64;
        let room_count = queue
            .config
            .concurrency
            .map_or(u64::MAX, |concurrency| u64::from(concurrency).saturating_sub(queue.leases_held()));
        let token_count = queue.rate_tokens_at(now_ms).unwrap_or(u64::MAX);
        let lease_count = u64::from(max).min(ready_count).min(room_count).min(token_count);
        if let (Some(rate), Some(bucket)) = (&queue.config.rate, &mut queue.bucket) {
            bucket.take(rate, now_ms, lease_count);
        }
        let mut leased = Vec::with_capacity(lease_count as usize);
        for _ in 0..lease_count {
            let &(_, id) = self.queues[&queue_id].ready.first().expect("counted ready jobs");
            self.last_lease_token += 1;
            let lease = Lease {
                worker: worker.into(),
                token: self.last_lease_token,
                expires_at_ms: now_ms.saturating_add(lease_ttl_ms),
                ttl_ms: lease_ttl_ms,
            };
            self.update(id, |job| {
                job.state = JobState::Leased;
                job.attempts += 1;
                job.lease = Some(Box::new(lease));
            });
            if !self.unobserved {
                leased.push(self.view(id, &self.jobs[&id]));
            }
        }
        let queue = &self.queues[&queue_id];
        let blocked = if lease_count == u64::from(max) {
            None
        } else if lease_count == ready_count {
            blocked(LeaseBlockReason::Empty, queue.scheduled.first().map(|&(at_ms, _)| at_ms))
        } else if lease_count == room_count {
            blocked(LeaseBlockReason::Concurrency, queue.lease_deadlines.first().map(|&(at_ms, _)| at_ms))
        } else {
            let (rate, bucket) = (queue.config.rate.as_ref(), queue.bucket.as_ref());
            let retry_at_ms = rate.zip(bucket).map(|(rate, bucket)| bucket.next_token_at_ms(rate, now_ms));
            blocked(LeaseBlockReason::Rate, retry_at_ms)
        };
        Ok(JobResponse::Leased { jobs: leased, blocked })
    }

    fn heartbeat(
        &mut self,
        now_ms: u64,
        id: JobId,
        lease_token: u64,
        lease_ttl_ms: Option<u64>,
    ) -> Result<JobResponse, JobError> {
        if let Some(lease_ttl_ms) = lease_ttl_ms {
            check_lease_ttl("lease_ttl", lease_ttl_ms)?;
        }
        self.check_lease(id, lease_token)?;
        self.update(id, |job| {
            let lease = job.lease.as_mut().expect("checked: leased");
            lease.ttl_ms = lease_ttl_ms.unwrap_or(lease.ttl_ms);
            lease.expires_at_ms = now_ms.saturating_add(lease.ttl_ms);
        });
        Ok(JobResponse::Job(self.view(id, &self.jobs[&id])))
    }

    fn complete(
        &mut self,
        now_ms: u64,
        id: JobId,
        lease_token: u64,
        result: Option<&str>,
    ) -> Result<JobResponse, JobError> {
        if let Some(result) = result {
            if result.len() > RESULT_BYTES_MAX {
                return Err(JobError::too_large("result", format!("result is over {RESULT_BYTES_MAX} bytes")));
            }
        }
        self.check_lease(id, lease_token)?;
        let retention_ms = self.retention_ms_of(id);
        self.update(id, |job| {
            job.outcome_mut().result = result.map(Into::into);
            finish(job, JobState::Succeeded, now_ms, retention_ms);
        });
        Ok(JobResponse::Job(self.view(id, &self.jobs[&id])))
    }

    fn fail(
        &mut self,
        now_ms: u64,
        id: JobId,
        lease_token: u64,
        error: &str,
        retry: bool,
        retry_after_ms: Option<u64>,
    ) -> Result<JobResponse, JobError> {
        if error.len() > ERROR_MESSAGE_BYTES_MAX {
            return Err(JobError::too_large("error", format!("error is over {ERROR_MESSAGE_BYTES_MAX} bytes")));
        }
        if let Some(retry_after_ms) = retry_after_ms {
            check_range("retry_after", retry_after_ms, 0, DELAY_MS_MAX)?;
        }
        self.check_lease(id, lease_token)?;
        let queue_id = self.jobs[&id].queue;
        self.tally(queue_id, |tally| tally.failed += 1);
        self.fail_attempt(id, now_ms, error.to_owned(), retry, retry_after_ms);
        Ok(JobResponse::Job(self.view(id, &self.jobs[&id])))
    }

    fn release(&mut self, id: JobId, lease_token: u64) -> Result<JobResponse, JobError> {
        let job = self.jobs.get(&id).ok_or_else(|| JobError::job_not_found(id))?;
        if job.state == JobState::Cancelled && job.lease.as_ref().is_some_and(|lease| lease.token == lease_token) {
            // The holder of a cancelled job lets go: its slot is free again.
            self.update(id, |job| job.lease = None);
            return Ok(JobResponse::Job(self.view(id, &self.jobs[&id])));
        }
        self.check_lease(id, lease_token)?;
        let queue_id = self.jobs[&id].queue;
        self.tally(queue_id, |tally| tally.released += 1);
        self.update(id, |job| {
            job.lease = None;
            // The attempt is given back: releasing is not failing (a worker shutting down).
            job.attempts -= 1;
            job.state = JobState::Queued;
        });
        Ok(JobResponse::Job(self.view(id, &self.jobs[&id])))
    }

    fn cancel(&mut self, now_ms: u64, id: JobId) -> Result<JobResponse, JobError> {
        let job = self.jobs.get(&id).ok_or_else(|| JobError::job_not_found(id))?;
        if job.state.is_terminal() {
            return Err(JobError::invalid_state(format!("job {id} {} already", job.state.in_words())));
        }
        let retention_ms = self.retention_ms_of(id);
        self.update(id, |job| {
            // A leased job's worker learns of the cancel at its next call and may still be at
            // work until then: the lease stays, held, and keeps its slot taken until the
            // worker releases it or it ends (a heartbeat no longer extends it).
            let held = job.lease.take();
            finish(job, JobState::Cancelled, now_ms, retention_ms);
            job.lease = held;
        });
        Ok(JobResponse::Job(self.view(id, &self.jobs[&id])))
    }

    fn retry(&mut self, now_ms: u64, id: JobId) -> Result<JobResponse, JobError> {
        let job = self.jobs.get(&id).ok_or_else(|| JobError::job_not_found(id))?;
        if job.state != JobState::Dead {
            return Err(JobError::invalid_state(format!(
                "only a dead job can be retried; job {id} is {}",
                job.state.as_str()
            )));
        }
        self.requeue_dead(now_ms, id);
        Ok(JobResponse::Job(self.view(id, &self.jobs[&id])))
    }

    /// A dead job queued again, with its queue's `max_attempts` more attempts.
    fn requeue_dead(&mut self, now_ms: u64, id: JobId) {
        let extra_attempts = self.queues[&self.jobs[&id].queue].config.max_attempts;
        self.update(id, |job| {
            debug_assert_eq!(job.state, JobState::Dead);
            // Attempts and errors stay as history; the job gets a fresh allowance on top.
            job.max_attempts = job.attempts.saturating_add(extra_attempts);
            job.run_at_ms = now_ms;
            job.state = JobState::Queued;
        });
    }

    fn retry_dead(&mut self, now_ms: u64, name: &str, max: u32, after: JobId) -> Result<JobResponse, JobError> {
        check_name("queue", name)?;
        check_range("max", u64::from(max), 1, LIST_LIMIT_MAX as u64)?;
        let &queue_id = self.queue_ids.get(name).ok_or_else(|| JobError::queue_not_found(name))?;
        let dead = &self.queues[&queue_id].ids_by_state[JobState::Dead.index()];
        let ids: Vec<JobId> = dead.range((Bound::Excluded(after), Bound::Unbounded)).take(max as usize).copied().collect();
        for &id in &ids {
            self.requeue_dead(now_ms, id);
        }
        let dead_left = self.queues[&queue_id].count(JobState::Dead);
        Ok(JobResponse::RetriedDead { queue: name.to_owned(), ids, dead_left })
    }

    fn increment_counter(&mut self, name: &str, by: u64) -> Result<JobResponse, JobError> {
        check_name("name", name)?;
        check_range("by", by, 1, u64::MAX)?;
        let current = self.counters.get(name).copied();
        if current.is_none() && self.counters.len() >= COUNTERS_MAX {
            return Err(JobError::capacity_exceeded(format!("at most {COUNTERS_MAX} counters")));
        }
        let value = current.unwrap_or(0).checked_add(by).ok_or_else(|| {
            JobError::new(JobError::COUNTER_OVERFLOW, format!("counter {name:?} would overflow"), Some("by"))
        })?;
        self.counters.insert(name.to_owned(), value);
        Ok(JobResponse::Counter { name: name.to_owned(), value })
    }

    // ---- transitions and indexes ----

    /// A failed attempt of a leased job at `at_ms` (a `fail`, or the lease's expiry): dead if
    /// `retry` is false or the attempts are used up, else scheduled after the backoff.
    fn fail_attempt(&mut self, id: JobId, at_ms: u64, message: String, retry: bool, retry_after_ms: Option<u64>) {
        let config = &self.queues[&self.jobs[&id].queue].config;
        let (retention_ms, backoff) = (config.retention_ms, config.backoff.clone());
        self.update(id, |job| {
            debug_assert_eq!(job.state, JobState::Leased);
            job.lease = None;
            job.push_error(at_ms, message);
            if !retry || job.attempts >= job.max_attempts {
                finish(job, JobState::Dead, at_ms, retention_ms);
            } else {
                let delay_ms = retry_after_ms.unwrap_or_else(|| backoff.delay_ms(job.attempts));
                job.run_at_ms = at_ms.saturating_add(delay_ms);
                // A run time already past is picked up by `advance_time` in the same call.
                job.state = if delay_ms == 0 { JobState::Queued } else { JobState::Scheduled };
            }
        });
    }

    /// The job exists and `lease_token` is its current lease.
    fn check_lease(&self, id: JobId, lease_token: u64) -> Result<(), JobError> {
        let job = self.jobs.get(&id).ok_or_else(|| JobError::job_not_found(id))?;
        match &job.lease {
            Some(lease) if lease.token == lease_token && job.state == JobState::Leased => Ok(()),
            Some(lease) if lease.token == lease_token => Err(JobError::new(
                JobError::STALE_LEASE,
                format!(
                    "job {id} was cancelled: stop its work, then release it (POST /v1/jobs/{id}/release with \
                     this token) to free its slot; the slot is freed anyway when the lease ends"
                ),
                Some("lease_token"),
            )),
            // Tokens only grow: every earlier lease of this job had a smaller token than its
            // current one, so a larger token was never this job's.
            Some(lease) if lease_token > lease.token => Err(JobError::stale_lease(
                id,
                lease_token,
                &format!("the job is leased under token {}, and a later token was never a lease of this job", lease.token),
            )),
            Some(lease) => Err(JobError::stale_lease(
                id,
                lease_token,
                &format!(
                    "the job is leased under token {} now (the lease under this token ended, expired or released, \
                     or it was never this job's)",
                    lease.token
                ),
            )),
            None if job.state.is_terminal() => {
                Err(JobError::stale_lease(id, lease_token, &format!("the job {} already", job.state.in_words())))
            }
            None => Err(JobError::stale_lease(
                id,
                lease_token,
                &format!(
                    "the job has no lease: it is {}, waiting for its next attempt",
                    job.state.as_str()
                ),
            )),
        }
    }

    fn retention_ms_of(&self, id: JobId) -> u64 {
        self.queues[&self.jobs[&id].queue].config.retention_ms
    }

    /// Changes a stored job, keeping every index in step with it.
    fn update(&mut self, id: JobId, change: impl FnOnce(&mut StoredJob)) {
        self.set_indexed(id, false);
        let job = self.jobs.get_mut(&id).expect("updated job exists");
        let before = job.state;
        change(job);
        let (after, queue_id) = (job.state, job.queue);
        self.set_indexed(id, true);
        if before != after {
            self.tally(queue_id, |tally| tally.note_move(before, after));
        }
        self.note_change(id);
    }

    /// Counts something that happened in a queue, unless the log is being re-applied.
    fn tally(&mut self, queue_id: QueueId, count: impl FnOnce(&mut QueueTally)) {
        if !self.replaying {
            if let Some(queue) = self.queues.get_mut(&queue_id) {
                count(&mut queue.tally);
            }
        }
    }

    /// Each queue's tally, in name order: what happened to its jobs since this process
    /// started.
    pub fn queue_tallies(&self) -> Vec<(String, QueueTally)> {
        self.queue_ids.iter().map(|(name, queue_id)| (name.clone(), self.queues[queue_id].tally)).collect()
    }

    fn note_change(&mut self, id: JobId) {
        self.last_change_seq += 1;
        if self.changes.len() >= JOB_CHANGES_KEPT_MAX {
            self.changes.pop_front();
        }
        self.changes.push_back((self.last_change_seq, id));
    }

    /// The sequence number of the latest job change (0 before any).
    pub fn last_change_seq(&self) -> u64 {
        self.last_change_seq
    }

    /// Up to `max` job changes with sequence numbers above `after`, oldest first.
    pub fn changes_after(&self, after: u64, max: usize) -> JobChanges {
        let oldest = self.changes.front().map_or(self.last_change_seq + 1, |&(seq, _)| seq);
        let missed = after + 1 < oldest;
        let skip = after.saturating_add(1).saturating_sub(oldest) as usize;
        let changes = self.changes.iter().skip(skip).take(max).copied().collect();
        JobChanges { changes, missed }
    }

    /// Removes a job (retention ended, room made for new jobs, its queue deleted with
    /// force): a change too, so that streams following the change log can drop it.
    fn remove_job(&mut self, id: JobId) {
        self.set_indexed(id, false);
        self.jobs.remove(&id);
        self.note_change(id);
    }

    /// Adds the job to (`present`) or removes it from every index its current state puts
    /// it in. The only place indexes change.
    fn set_indexed(&mut self, id: JobId, present: bool) {
        let Jobs { jobs, queues, scheduled, lease_deadlines, purge_deadlines, .. } = self;
        let job = &jobs[&id];
        let queue = queues.get_mut(&job.queue).expect("a job's queue exists");
        toggle(&mut queue.ids_by_state[job.state.index()], id, present);
        match (job.state, &job.lease) {
            (JobState::Scheduled, _) => {
                toggle(&mut queue.scheduled, (job.run_at_ms, id), present);
                toggle(scheduled, (job.run_at_ms, id), present);
            }
            (JobState::Queued, _) => toggle(&mut queue.ready, (Reverse(job.priority), id), present),
            // Leased, or cancelled with its lease still held.
            (_, Some(lease)) => {
                toggle(&mut queue.lease_deadlines, (lease.expires_at_ms, id), present);
                toggle(lease_deadlines, (lease.expires_at_ms, id), present);
            }
            (JobState::Leased, None) => unreachable!("a leased job has a lease"),
            (JobState::Succeeded | JobState::Dead | JobState::Cancelled, None) => {
                toggle(purge_deadlines, (job.purge_at_ms(), id), present);
            }
        }
    }

    fn check_can_create_queue(&self) -> Result<(), JobError> {
        if self.queue_ids.len() >= QUEUES_MAX || self.last_queue_id == QueueId::MAX {
            return Err(JobError::capacity_exceeded(format!("at most {QUEUES_MAX} queues")));
        }
        Ok(())
    }

    /// Call `check_can_create_queue` first.
    fn create_queue(&mut self, name: &str, config: QueueConfig, now_ms: u64) -> QueueId {
        self.last_queue_id += 1;
        let queue_id = self.last_queue_id;
        self.queues.insert(queue_id, Queue::new(name.to_owned(), config, now_ms));
        self.queue_ids.insert(name.to_owned(), queue_id);
        queue_id
    }

    /// Makes room for `count` more jobs under `jobs_max`, dropping the finished jobs due to
    /// be purged first. Fails, changing nothing, if unfinished jobs alone leave no room.
    fn make_room(&mut self, count: u64) -> Result<(), JobError> {
        let stored = self.jobs.len() as u64;
        if stored + count <= self.jobs_max {
            return Ok(());
        }
        let unfinished = stored - self.purge_deadlines.len() as u64;
        if unfinished + count > self.jobs_max {
            return Err(JobError::capacity_exceeded(format!(
                "{unfinished} unfinished jobs stored, at most {} jobs",
                self.jobs_max
            )));
        }
        while self.jobs.len() as u64 + count > self.jobs_max {
            let &(_, id) = self.purge_deadlines.first().expect("counted finished jobs");
            self.remove_job(id);
        }
        Ok(())
    }

    fn view(&self, id: JobId, job: &StoredJob) -> Job {
        job.view(id, &self.queues[&job.queue].name)
    }

    /// Checks every index against the job records (tests only: O(n)).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut expected = Jobs { jobs: self.jobs.clone(), ..Jobs::default() };
        expected.queues = self.queues.clone();
        for queue in expected.queues.values_mut() {
            queue.ready.clear();
            queue.scheduled.clear();
            queue.lease_deadlines.clear();
            queue.ids_by_state.iter_mut().for_each(BTreeSet::clear);
        }
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            let job = &self.jobs[&id];
            assert!(id <= self.last_job_id && id > 0);
            match job.state {
                JobState::Leased => assert!(job.lease.is_some(), "job {id}: leased without a lease"),
                JobState::Cancelled => {}
                _ => assert!(job.lease.is_none(), "job {id}: a lease while {}", job.state.as_str()),
            }
            assert!(job.attempts <= job.max_attempts, "job {id}: attempts within max");
            if let Some(lease) = &job.lease {
                assert!(lease.token <= self.last_lease_token);
            }
            expected.set_indexed(id, true);
        }
        assert_eq!(expected.queues, self.queues, "per-queue indexes");
        assert_eq!(expected.scheduled, self.scheduled, "scheduled index");
        assert_eq!(expected.lease_deadlines, self.lease_deadlines, "lease index");
        assert_eq!(expected.purge_deadlines, self.purge_deadlines, "purge index");
        assert_eq!(self.queue_ids.len(), self.queues.len());
        for (name, queue_id) in &self.queue_ids {
            assert_eq!(&self.queues[queue_id].name, name);
        }
    }
}

/// Moves a job to a terminal state at `at_ms`.
fn finish(job: &mut StoredJob, state: JobState, at_ms: u64, retention_ms: u64) {
    debug_assert!(state.is_terminal() && !job.state.is_terminal());
    job.state = state;
    job.lease = None;
    let outcome = job.outcome_mut();
    outcome.finished_at_ms = at_ms;
    outcome.purge_at_ms = at_ms.saturating_add(retention_ms);
}

fn toggle<T: Ord>(set: &mut BTreeSet<T>, key: T, present: bool) {
    let changed = if present { set.insert(key) } else { set.remove(&key) };
    debug_assert!(changed, "an index is out of step with the job records");
}

fn validate_new_job(new_job: &NewJob, now_ms: u64, field: &dyn Fn(&str) -> String) -> Result<(), JobError> {
    if new_job.payload.len() > PAYLOAD_BYTES_MAX {
        return Err(JobError::too_large(&field("payload"), format!("payload is over {PAYLOAD_BYTES_MAX} bytes")));
    }
    if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&new_job.priority) {
        return Err(JobError::invalid(
            &field("priority"),
            format!("priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}"),
        ));
    }
    match (new_job.delay_ms, new_job.run_at_ms) {
        (Some(_), Some(_)) => return Err(JobError::invalid(&field("run_at"), "give delay or run_at, not both")),
        (Some(delay_ms), None) => check_range_ms(&field("delay"), delay_ms, 0, DELAY_MS_MAX)?,
        (None, Some(run_at_ms)) => {
            let latest_ms = now_ms.saturating_add(DELAY_MS_MAX);
            if run_at_ms > latest_ms {
                return Err(JobError::invalid(
                    &field("run_at"),
                    format!("run_at must be at most {} from now", format_limit_ms(DELAY_MS_MAX)),
                ));
            }
        }
        (None, None) => {}
    }
    if let Some(max_attempts) = new_job.max_attempts {
        check_max_attempts(&field("max_attempts"), max_attempts)?;
    }
    Ok(())
}

/// The fields of a lease request other than its queue.
fn check_lease_request(worker: &str, max: u32, lease_ttl_ms: Option<u64>) -> Result<(), JobError> {
    if worker.is_empty() || worker.len() > WORKER_BYTES_MAX {
        return Err(JobError::invalid("worker", format!("worker must be 1 to {WORKER_BYTES_MAX} bytes")));
    }
    check_range("max", u64::from(max), 1, u64::from(LEASE_BATCH_MAX))?;
    if let Some(lease_ttl_ms) = lease_ttl_ms {
        check_lease_ttl("lease_ttl", lease_ttl_ms)?;
    }
    Ok(())
}
