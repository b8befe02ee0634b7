//! The one error type of the job queue: a stable machine-readable `code`, a message for
//! people and the input `field` at fault. Every error leaves the state exactly as it was.

use serde::{Deserialize, Serialize};

/// `{"error": {"code", "message", "field"}}` on the wire. The codes and the HTTP status the
/// server should answer with:
///
/// | code                | status | meaning                                               |
/// |---------------------|--------|-------------------------------------------------------|
/// | `invalid`           | 400    | a value is out of range or malformed (`field` says which) |
/// | `too_large`         | 413    | a payload, result, error text or batch is over its limit |
/// | `not_found`         | 404    | no such job or queue                                  |
/// | `stale_lease`       | 409    | the lease token is not the job's current lease        |
/// | `invalid_state`     | 409    | the job's state does not allow this (e.g. cancel a finished job) |
/// | `queue_not_empty`   | 409    | delete without `force` of a queue with unfinished jobs |
/// | `capacity_exceeded` | 507    | too many queues, counters or stored jobs              |
/// | `counter_overflow`  | 422    | the increment would overflow a u64                    |
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct JobError {
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

impl JobError {
    pub const INVALID: &'static str = "invalid";
    pub const TOO_LARGE: &'static str = "too_large";
    pub const NOT_FOUND: &'static str = "not_found";
    pub const STALE_LEASE: &'static str = "stale_lease";
    pub const INVALID_STATE: &'static str = "invalid_state";
    pub const QUEUE_NOT_EMPTY: &'static str = "queue_not_empty";
    pub const CAPACITY_EXCEEDED: &'static str = "capacity_exceeded";
    pub const COUNTER_OVERFLOW: &'static str = "counter_overflow";

    pub fn new(code: &str, message: impl Into<String>, field: Option<&str>) -> JobError {
        JobError { code: code.to_owned(), message: message.into(), field: field.map(str::to_owned) }
    }

    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> JobError {
        JobError::new(Self::INVALID, message, Some(field))
    }

    pub(crate) fn too_large(field: &str, message: impl Into<String>) -> JobError {
        JobError::new(Self::TOO_LARGE, message, Some(field))
    }

    pub(crate) fn job_not_found(id: u64) -> JobError {
        JobError::new(Self::NOT_FOUND, format!("job {id} not found"), None)
    }

    pub(crate) fn queue_not_found(queue: &str) -> JobError {
        JobError::new(Self::NOT_FOUND, format!("queue {queue:?} not found"), None)
    }

    /// `why`: what became of the lease, from the job's state.
    pub(crate) fn stale_lease(id: u64, token: u64, why: &str) -> JobError {
        JobError::new(
            Self::STALE_LEASE,
            format!("lease token {token} is not the current lease of job {id}: {why}"),
            Some("lease_token"),
        )
    }

    pub(crate) fn invalid_state(message: impl Into<String>) -> JobError {
        JobError::new(Self::INVALID_STATE, message, None)
    }

    pub(crate) fn capacity_exceeded(message: impl Into<String>) -> JobError {
        JobError::new(Self::CAPACITY_EXCEEDED, message, None)
    }
}
