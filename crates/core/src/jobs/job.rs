//! Jobs: the stored record (compact, one per job, possibly millions of them) and the public
//! view handed to the server ([`Job`]), which names its queue and spells out its lease.

use serde::{Deserialize, Serialize};

use super::queue::QueueId;

/// Job ids are positive and assigned in acceptance order, across all queues.
pub type JobId = u64;

/// `scheduled` → `queued` → `leased` → `succeeded` | `dead` | `cancelled`, and back from
/// `leased` to `scheduled`/`queued` on a failed attempt or a release; `dead` → `queued` on
/// an explicit retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for `run_at_ms` (a delay, or a retry's backoff).
    Scheduled,
    /// Ready to be leased.
    Queued,
    /// Held by a worker until `lease_expires_at_ms`.
    Leased,
    Succeeded,
    /// Failed its last allowed attempt, or failed with `retry: false`.
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Leased,
        JobState::Succeeded,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// Succeeded, dead and cancelled jobs are finished: kept for the queue's retention, then
    /// removed.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Dead | JobState::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Leased => "leased",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state said of a job in a sentence: "has succeeded", "is dead", "was cancelled".
    pub fn in_words(self) -> &'static str {
        match self {
            JobState::Scheduled => "is scheduled",
            JobState::Queued => "is queued",
            JobState::Leased => "is leased",
            JobState::Succeeded => "has succeeded",
            JobState::Dead => "is dead",
            JobState::Cancelled => "was cancelled",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(text: &str) -> Result<JobState, String> {
        JobState::ALL.into_iter().find(|state| state.as_str() == text).ok_or_else(|| {
            format!("unknown job state {text:?} (one of scheduled, queued, leased, succeeded, dead, cancelled)")
        })
    }
}

/// A job to submit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJob {
    /// JSON text, validated by the server.
    pub payload: String,
    /// Higher runs first; default 0.
    pub priority: i64,
    /// At most one of `delay_ms` and `run_at_ms`; neither means "now".
    pub delay_ms: Option<u64>,
    /// Unix ms; a time in the past means "now".
    pub run_at_ms: Option<u64>,
    /// Defaults to the queue's `max_attempts` at submission.
    pub max_attempts: Option<u32>,
}

impl Default for NewJob {
    fn default() -> Self {
        NewJob { payload: "null".to_owned(), priority: 0, delay_ms: None, run_at_ms: None, max_attempts: None }
    }
}

/// One failed attempt: a `fail` from the worker or an expired lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The attempt that failed, 1-based (the job's `attempts` when it failed).
    pub attempt: u32,
    pub at_ms: u64,
    pub message: String,
}

/// The current lease of a leased job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub worker: String,
    /// The fencing token: strictly increasing over all leases ever granted.
    pub lease_token: u64,
    pub lease_expires_at_ms: u64,
}

/// A job as the server shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub queue: String,
    pub state: JobState,
    pub priority: i64,
    /// JSON text.
    pub payload: String,
    /// Leases granted so far, minus those given back with `release`.
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at_ms: u64,
    /// When the job became (or, if scheduled, becomes) eligible to run.
    pub run_at_ms: u64,
    /// JSON text of the `complete` result.
    pub result: Option<String>,
    /// The latest [`ERRORS_KEPT_MAX`](super::limits::ERRORS_KEPT_MAX) attempt errors, oldest first.
    pub errors: Vec<AttemptError>,
    /// Present exactly when the job is leased.
    pub lease: Option<LeaseInfo>,
    /// Present exactly when the job is finished.
    pub finished_at_ms: Option<u64>,
    /// When a finished job will be removed.
    pub purge_at_ms: Option<u64>,
}

/// The stored form of a job. Kept small because a queue may hold millions: the queue is an
/// interned id, strings are boxed slices (no spare capacity), and what most queued jobs do
/// not have yet (a lease; errors, a result, finish times) lives behind boxes that only the
/// jobs that have it pay for. The id is the map key and not repeated here. 72 bytes on a
/// 64-bit target (a test pins this).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredJob {
    pub(crate) queue: QueueId,
    pub(crate) state: JobState,
    pub(crate) attempts: u32,
    pub(crate) max_attempts: u32,
    pub(crate) priority: i64,
    pub(crate) created_at_ms: u64,
    pub(crate) run_at_ms: u64,
    pub(crate) payload: Box<str>,
    /// `Some` exactly when the state is `Leased`.
    pub(crate) lease: Option<Box<Lease>>,
    /// `Some` once the job has failed an attempt or finished; always `Some` when finished.
    pub(crate) outcome: Option<Box<Outcome>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    pub(crate) worker: Box<str>,
    pub(crate) token: u64,
    pub(crate) expires_at_ms: u64,
    /// What a heartbeat without its own ttl extends the lease by.
    pub(crate) ttl_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Outcome {
    pub(crate) errors: Vec<AttemptError>,
    pub(crate) result: Option<Box<str>>,
    /// Meaningful only in a terminal state (then also indexed by `purge_at_ms`).
    pub(crate) finished_at_ms: u64,
    pub(crate) purge_at_ms: u64,
}

impl StoredJob {
    pub(crate) fn new(queue: QueueId, new_job: &NewJob, max_attempts: u32, now_ms: u64, run_at_ms: u64) -> StoredJob {
        StoredJob {
            queue,
            state: if run_at_ms > now_ms { JobState::Scheduled } else { JobState::Queued },
            attempts: 0,
            max_attempts,
            priority: new_job.priority,
            created_at_ms: now_ms,
            run_at_ms,
            payload: new_job.payload.as_str().into(),
            lease: None,
            outcome: None,
        }
    }

    pub(crate) fn view(&self, id: JobId, queue_name: &str) -> Job {
        let finished = self.state.is_terminal();
        let outcome = self.outcome.as_deref();
        Job {
            id,
            queue: queue_name.to_owned(),
            state: self.state,
            priority: self.priority,
            payload: String::from(&*self.payload),
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            created_at_ms: self.created_at_ms,
            run_at_ms: self.run_at_ms,
            result: outcome.and_then(|outcome| outcome.result.as_deref()).map(str::to_owned),
            errors: outcome.map(|outcome| outcome.errors.clone()).unwrap_or_default(),
            lease: self.lease.as_ref().map(|lease| LeaseInfo {
                worker: lease.worker.to_string(),
                lease_token: lease.token,
                lease_expires_at_ms: lease.expires_at_ms,
            }),
            finished_at_ms: outcome.filter(|_| finished).map(|outcome| outcome.finished_at_ms),
            purge_at_ms: outcome.filter(|_| finished).map(|outcome| outcome.purge_at_ms),
        }
    }

    pub(crate) fn outcome_mut(&mut self) -> &mut Outcome {
        self.outcome.get_or_insert_with(Box::default)
    }

    /// When a finished job is removed (indexed by it); 0 for an unfinished job.
    pub(crate) fn purge_at_ms(&self) -> u64 {
        self.outcome.as_ref().map_or(0, |outcome| outcome.purge_at_ms)
    }

    /// Records a failed attempt, keeping the latest `ERRORS_KEPT_MAX`.
    pub(crate) fn push_error(&mut self, at_ms: u64, message: String) {
        let attempt = self.attempts;
        let errors = &mut self.outcome_mut().errors;
        if errors.len() >= super::limits::ERRORS_KEPT_MAX {
            errors.remove(0);
        }
        errors.push(AttemptError { attempt, at_ms, message });
    }
}
