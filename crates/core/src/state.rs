//! The replicated state and the one function that changes it.
//!
//! A Raft entry carries a [`Batch`]: the leader's wall-clock time and the commands that the
//! proposer packed together. [`State::apply_batch`] first advances time (expiring what is due
//! at that instant), then applies each command in order. The same batches in the same order
//! give the same state and the same responses on every node.

use serde::{Deserialize, Serialize};

use crate::idempotency::{self, IdempotencyOutcome, IdempotencyTable};
use crate::{jobs, v2};

/// How long the answer to a call of a lease's holder (lease, heartbeat, complete, fail,
/// release) under an `Idempotency-Key` is replayed, at most. Only the same call retried
/// soon after needs it: a lease's answer is stale once the lease may have expired, and a
/// late complete or fail is fenced by its lease token anyway. Other keyed requests (a
/// submit above all) keep the configured 24 h. The table drops the records that expire
/// first when it is full, so a busy fleet of workers fills it with records that go before
/// any client's submit keys.
pub const LEASE_CALL_IDEMPOTENCY_TTL_MS: u64 = 10 * 60 * 1000;

/// Limits and defaults that are fixed for the life of a cluster (they shape the state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Events kept for `waitIndex` watches. etcd keeps exactly 1000.
    pub v2_history_max: usize,
    /// How long a stored idempotent outcome is replayed.
    pub idempotency_ttl_ms: u64,
    /// Records kept at most; the one expiring first is dropped when full.
    pub idempotency_records_max: usize,
    /// Approximate bytes of stored responses kept at most, likewise.
    pub idempotency_bytes_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            v2_history_max: 1000,
            idempotency_ttl_ms: 24 * 3600 * 1000,
            idempotency_records_max: 100_000,
            idempotency_bytes_max: 256 << 20,
        }
    }
}

/// One Raft entry's worth of commands, stamped with the leader's time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Unix time in milliseconds, chosen by the leader's proposer. The state never moves
    /// time backwards: a batch older than the state's time is applied at the state's time.
    pub time_ms: u64,
    pub commands: Vec<Command>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Only advances time: expires TTL keys, leases, starts due scheduled jobs.
    Tick,
    V2(v2::V2Command),
    Jobs(jobs::JobCommand),
    /// A client's mutation under an `Idempotency-Key`. `fingerprint` identifies the request
    /// (method, path, body), computed by the server that received it.
    Idempotent { key: String, fingerprint: u64, command: Box<Command> },
    /// Renews every job lease at the batch's time, *before* the batch moves time forward
    /// (see [`Jobs::renew_leases`](crate::jobs::Jobs::renew_leases)): a new leader's first
    /// batch carries it, so leases do not expire for the time no leader could be reached.
    /// Answers [`Response::Tick`].
    RenewLeases,
    /// A command a member forwarded to the leader, marked so that the member knows it when
    /// it applies it (etcd's request id): if the leader's answer is lost (it died after
    /// proposing), the member answers from its own apply instead of "outcome unknown", and
    /// a client that would retry elsewhere does not apply it twice. `seq` is unique per
    /// `origin` (the member's id). Applies as `command`.
    Tagged { origin: u64, seq: u64, command: Box<Command> },
}

impl Command {
    /// The command without its [`Command::Tagged`] mark.
    pub fn untagged(&self) -> &Command {
        match self {
            Command::Tagged { command, .. } => command.untagged(),
            other => other,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Tick,
    V2(Result<v2::V2Response, v2::V2Error>),
    Jobs(Result<jobs::JobResponse, jobs::JobError>),
    /// The stored first outcome of an idempotent request, answered again.
    Replayed(Box<Response>),
    /// The idempotency key was first used with a different request.
    IdempotencyKeyReused { key: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    config: Config,
    /// The latest entry time applied; never decreases.
    time_ms: u64,
    pub v2: v2::Store,
    pub jobs: jobs::Jobs,
    idempotency: IdempotencyTable,
}

impl State {
    pub fn new(config: Config) -> State {
        State {
            v2: v2::Store::new(config.v2_history_max),
            jobs: jobs::Jobs::default(),
            idempotency: IdempotencyTable::default(),
            time_ms: 0,
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The events kept for `waitIndex` watches, from this node's configuration: a state
    /// loaded from a snapshot carries the size it was written with, which a restart with
    /// another `--max-history` changes (it answers only this node's watches).
    pub fn set_v2_history_max(&mut self, history_max: usize) {
        self.config.v2_history_max = history_max;
        self.v2.set_history_max(history_max);
    }

    /// The time of the latest applied entry (Unix ms).
    pub fn time_ms(&self) -> u64 {
        self.time_ms
    }

    /// Applies one Raft entry: advances time, then runs each command in order.
    pub fn apply_batch(&mut self, batch: &Batch) -> Vec<Response> {
        self.renew_leases_if_asked(batch);
        let now_ms = self.advance_time(batch.time_ms);
        batch.commands.iter().map(|command| self.apply(now_ms, command)).collect()
    }

    /// [`apply_batch`](Self::apply_batch) for a batch whose answers nobody waits for (the
    /// log re-applied at start-up): the same state results, but submit and lease answers
    /// leave out the jobs (a third of the time of re-applying a million submitted jobs went
    /// into building and dropping them). Answers an idempotency key stores are complete.
    pub fn apply_batch_unobserved(&mut self, batch: &Batch) {
        self.jobs.replaying = true;
        self.renew_leases_if_asked(batch);
        let now_ms = self.advance_time(batch.time_ms);
        for command in &batch.commands {
            self.jobs.unobserved = !matches!(command.untagged(), Command::Idempotent { .. });
            self.apply(now_ms, command);
        }
        self.jobs.unobserved = false;
        self.jobs.replaying = false;
    }

    /// The earliest instant at which a `Tick` would change something, if any. The leader's
    /// ticker proposes a `Tick` then, so an idle cluster writes nothing.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        [self.v2.next_deadline_ms(), self.jobs.next_deadline_ms()].into_iter().flatten().min()
    }

    fn renew_leases_if_asked(&mut self, batch: &Batch) {
        if batch.commands.iter().any(|command| matches!(command, Command::RenewLeases)) {
            self.jobs.renew_leases(self.time_ms.max(batch.time_ms));
        }
    }

    fn advance_time(&mut self, time_ms: u64) -> u64 {
        self.time_ms = self.time_ms.max(time_ms);
        let now_ms = self.time_ms;
        self.v2.expire_until(now_ms);
        self.jobs.advance_time(now_ms);
        self.idempotency.expire_until(now_ms);
        now_ms
    }

    /// How long `command`'s outcome is kept under its idempotency key.
    fn idempotency_ttl_ms(&self, command: &Command) -> u64 {
        use jobs::JobCommand;
        let ttl = self.config.idempotency_ttl_ms;
        match command {
            Command::Jobs(
                JobCommand::Lease { .. }
                | JobCommand::Heartbeat { .. }
                | JobCommand::Complete { .. }
                | JobCommand::Fail { .. }
                | JobCommand::Release { .. }
                | JobCommand::CompleteAndLease { .. },
            ) => ttl.min(LEASE_CALL_IDEMPOTENCY_TTL_MS),
            _ => ttl,
        }
    }

    /// The idempotency table's size: records, approximate bytes, and records dropped before
    /// their expiry (since this process started).
    pub fn idempotency_stats(&self) -> (usize, usize, u64) {
        (self.idempotency.len(), self.idempotency.bytes(), self.idempotency.evicted())
    }

    /// How long the last idempotency record dropped before its expiry still had to live (ms).
    pub fn idempotency_evicted_remaining_ms(&self) -> u64 {
        self.idempotency.evicted_remaining_ms()
    }

    fn apply(&mut self, now_ms: u64, command: &Command) -> Response {
        match command {
            Command::Tick | Command::RenewLeases => Response::Tick,
            Command::Tagged { command, .. } => self.apply(now_ms, command),
            Command::V2(command) => Response::V2(self.v2.apply(now_ms, command)),
            Command::Jobs(command) => Response::Jobs(self.jobs.apply(now_ms, command)),
            Command::Idempotent { key, fingerprint, command } => {
                match self.idempotency.lookup(key, *fingerprint) {
                    IdempotencyOutcome::Replay(response) => Response::Replayed(Box::new(response)),
                    IdempotencyOutcome::Conflict => Response::IdempotencyKeyReused { key: key.clone() },
                    IdempotencyOutcome::New => {
                        let response = self.apply(now_ms, command);
                        let expires_ms = now_ms.saturating_add(self.idempotency_ttl_ms(command));
                        let limits = idempotency::Limits {
                            records_max: self.config.idempotency_records_max,
                            bytes_max: self.config.idempotency_bytes_max,
                        };
                        self.idempotency.record(key.clone(), *fingerprint, response.clone(), expires_ms, now_ms, limits);
                        response
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v2::{SetCommand, V2Command};

    fn set(key: &str, value: &str) -> Command {
        Command::V2(V2Command::Set(SetCommand { key: key.into(), value: value.into(), ..SetCommand::default() }))
    }

    fn idempotent(key: &str, fingerprint: u64, command: Command) -> Command {
        Command::Idempotent { key: key.into(), fingerprint, command: Box::new(command) }
    }

    #[test]
    fn idempotent_repeat_applies_once_and_replays_the_first_outcome() {
        let mut state = State::new(Config::default());
        let first = state.apply_batch(&Batch { time_ms: 1_000, commands: vec![idempotent("k1", 9, set("/a", "x"))] });
        let index_after_first = state.v2.index();
        let again = state.apply_batch(&Batch { time_ms: 2_000, commands: vec![idempotent("k1", 9, set("/a", "x"))] });
        assert_eq!(state.v2.index(), index_after_first, "a replay must not mutate");
        assert_eq!(again, vec![Response::Replayed(Box::new(first[0].clone()))]);
        let other = state.apply_batch(&Batch { time_ms: 3_000, commands: vec![idempotent("k1", 10, set("/a", "y"))] });
        assert_eq!(other, vec![Response::IdempotencyKeyReused { key: "k1".into() }]);
        assert_eq!(state.v2.index(), index_after_first);
    }

    #[test]
    fn a_full_idempotency_table_drops_lease_calls_before_a_submit_key() {
        use crate::jobs::{JobCommand, NewJob};
        let config = Config { idempotency_records_max: 10, ..Config::default() };
        let mut state = State::new(config);
        let submit = Command::Jobs(JobCommand::Submit {
            queue: "q".into(),
            jobs: vec![NewJob { payload: "1".into(), priority: 0, delay_ms: None, run_at_ms: None, max_attempts: None }],
        });
        let first = state.apply_batch(&Batch { time_ms: 1_000, commands: vec![idempotent("precious", 1, submit.clone())] });
        // A busy worker: many keyed completes (answered 404 here; stored all the same).
        for n in 0..50u64 {
            let complete = Command::Jobs(JobCommand::Complete { id: 1_000 + n, lease_token: 1, result: None });
            state.apply_batch(&Batch { time_ms: 2_000 + n, commands: vec![idempotent(&format!("w{n}"), 2, complete)] });
        }
        assert_eq!(state.idempotency_stats().2, 41, "records dropped before their expiry");
        let again = state.apply_batch(&Batch { time_ms: 3_000, commands: vec![idempotent("precious", 1, submit.clone())] });
        assert_eq!(again, vec![Response::Replayed(Box::new(first[0].clone()))]);
        // A lease call's record expires after 10 minutes, a submit's after 24 hours.
        state.apply_batch(&Batch { time_ms: 2_000 + LEASE_CALL_IDEMPOTENCY_TTL_MS + 100, commands: vec![Command::Tick] });
        assert_eq!(state.idempotency_stats().0, 1);
        // Keyed submits fill it too: the oldest submit key goes first.
        for n in 0..10u64 {
            state.apply_batch(&Batch {
                time_ms: 700_000 + n,
                commands: vec![idempotent(&format!("s{n}"), 3, submit.clone())],
            });
        }
        let late = state.apply_batch(&Batch { time_ms: 800_000, commands: vec![idempotent("precious", 1, submit)] });
        assert!(!matches!(late[0], Response::Replayed(_)), "{late:?}");
    }

    #[test]
    fn idempotency_records_expire_after_the_configured_ttl() {
        let config = Config { idempotency_ttl_ms: 1_000, ..Config::default() };
        let mut state = State::new(config);
        state.apply_batch(&Batch { time_ms: 10_000, commands: vec![idempotent("k", 1, set("/a", "x"))] });
        let index = state.v2.index();
        state.apply_batch(&Batch { time_ms: 11_000, commands: vec![idempotent("k", 1, set("/a", "x"))] });
        assert_eq!(state.v2.index(), index + 1, "after expiry the key is new again");
    }

    /// A new leader's first batch renews leases before its time expires them: time ran on
    /// while no leader could be reached, and the workers' heartbeats could not get through.
    #[test]
    fn renew_leases_takes_effect_before_the_batch_moves_time() {
        use crate::jobs::{JobCommand, JobState, NewJob};
        let submit = Command::Jobs(JobCommand::Submit { queue: "q".into(), jobs: vec![NewJob::default()] });
        let lease = Command::Jobs(JobCommand::Lease { queue: "q".into(), worker: "w".into(), max: 1, lease_ttl_ms: Some(3_000) });
        let mut renewed = State::new(Config::default());
        renewed.apply_batch(&Batch { time_ms: 1_000, commands: vec![submit, lease] });
        let mut plain = renewed.clone();
        // The leader was gone for 9 s; the lease ended at 4 s.
        renewed.apply_batch(&Batch { time_ms: 10_000, commands: vec![set("/a", "x"), Command::RenewLeases] });
        plain.apply_batch(&Batch { time_ms: 10_000, commands: vec![set("/a", "x")] });
        let expires = |state: &State| state.jobs.job(1).expect("job 1").lease.map(|lease| lease.lease_expires_at_ms);
        assert_eq!(renewed.jobs.job(1).expect("job 1").state, JobState::Leased);
        assert_eq!(expires(&renewed), Some(13_000));
        assert_ne!(plain.jobs.job(1).expect("job 1").state, JobState::Leased, "without the renewal it expired");
        // Renewed again at the same time: a lease that ends later keeps its end.
        renewed.apply_batch(&Batch { time_ms: 9_000, commands: vec![Command::RenewLeases] });
        assert_eq!(expires(&renewed), Some(13_000));
    }

    #[test]
    fn time_never_moves_backwards() {
        let mut state = State::new(Config::default());
        state.apply_batch(&Batch { time_ms: 5_000, commands: vec![] });
        state.apply_batch(&Batch { time_ms: 4_000, commands: vec![] });
        assert_eq!(state.time_ms(), 5_000);
    }

    #[test]
    fn unobserved_apply_reaches_the_same_state_and_stores_full_idempotent_answers() {
        use crate::jobs::{JobCommand, JobResponse, NewJob};
        let job = |priority: i64| NewJob { payload: format!("{{\"p\":{priority}}}"), priority, ..NewJob::default() };
        let submit = |jobs: Vec<NewJob>| Command::Jobs(JobCommand::Submit { queue: "q".into(), jobs });
        let lease = |max: u32| Command::Jobs(JobCommand::Lease { queue: "q".into(), worker: "w".into(), max, lease_ttl_ms: None });
        let batches = [
            Batch { time_ms: 1_000, commands: vec![submit(vec![job(1), job(5), job(3)]), set("/a", "x")] },
            Batch { time_ms: 2_000, commands: vec![idempotent("k", 7, submit(vec![job(9)])), lease(2)] },
            Batch {
                time_ms: 3_000,
                commands: vec![Command::Jobs(JobCommand::Complete { id: 4, lease_token: 1, result: None }), lease(5)],
            },
            Batch { time_ms: 9_000_000, commands: vec![Command::Tick] },
        ];
        let mut observed = State::new(Config::default());
        let mut unobserved = State::new(Config::default());
        for batch in &batches {
            let answers = observed.apply_batch(batch);
            unobserved.apply_batch_unobserved(batch);
            assert_eq!(unobserved, observed, "after the batch at {}", batch.time_ms);
            assert!(!unobserved.jobs.unobserved);
            if batch.time_ms == 1_000 {
                assert!(matches!(&answers[0], Response::Jobs(Ok(JobResponse::Submitted { jobs })) if jobs.len() == 3));
            }
        }
        // The answer stored under the idempotency key lists the job in both.
        let repeat = Batch { time_ms: 9_000_001, commands: vec![idempotent("k", 7, submit(vec![job(9)]))] };
        let from_observed = observed.apply_batch(&repeat);
        let from_unobserved = unobserved.apply_batch(&repeat);
        assert_eq!(from_unobserved, from_observed);
        let Response::Replayed(stored) = &from_unobserved[0] else { panic!("{from_unobserved:?}") };
        assert!(matches!(&**stored, Response::Jobs(Ok(JobResponse::Submitted { jobs })) if jobs.len() == 1 && jobs[0].id == 4));
    }
}
