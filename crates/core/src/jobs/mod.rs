//! The durable priority job queue: queues with concurrency and rate limits, jobs, fenced
//! leases, retries with backoff, dead letters, counters. (Skeleton: being written.)

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobCommand {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobResponse {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Jobs {}

impl Jobs {
    pub fn apply(&mut self, now_ms: u64, command: &JobCommand) -> Result<JobResponse, JobError> {
        let _ = now_ms;
        match *command {}
    }

    /// Moves time forward: expires leases, queues scheduled jobs that are due, drops finished
    /// jobs past retention.
    pub fn advance_time(&mut self, now_ms: u64) {
        let _ = now_ms;
    }

    pub fn next_deadline_ms(&self) -> Option<u64> {
        None
    }
}
