//! Unit tests of the job queue, one per rule, named after it.

use super::*;

const Q: &str = "api";

fn config() -> QueueConfig {
    QueueConfig::default()
}

fn with_queue(config: QueueConfig) -> Jobs {
    let mut jobs = Jobs::default();
    put_queue(&mut jobs, 0, Q, config).expect("valid config");
    jobs
}

fn put_queue(jobs: &mut Jobs, now_ms: u64, queue: &str, config: QueueConfig) -> Result<JobResponse, JobError> {
    jobs.apply(now_ms, &JobCommand::PutQueue { queue: queue.into(), config })
}

fn submit_jobs(jobs: &mut Jobs, now_ms: u64, queue: &str, new_jobs: Vec<NewJob>) -> Result<Vec<Job>, JobError> {
    match jobs.apply(now_ms, &JobCommand::Submit { queue: queue.into(), jobs: new_jobs })? {
        JobResponse::Submitted { jobs } => Ok(jobs),
        other => panic!("unexpected {other:?}"),
    }
}

fn submit(jobs: &mut Jobs, now_ms: u64, priority: i64) -> JobId {
    let new_job = NewJob { priority, payload: format!("{{\"p\":{priority}}}"), ..NewJob::default() };
    submit_jobs(jobs, now_ms, Q, vec![new_job]).expect("valid submit")[0].id
}

fn submit_new(jobs: &mut Jobs, now_ms: u64, new_job: NewJob) -> Job {
    submit_jobs(jobs, now_ms, Q, vec![new_job]).expect("valid submit").remove(0)
}

fn lease_with(
    jobs: &mut Jobs,
    now_ms: u64,
    max: u32,
    lease_ttl_ms: Option<u64>,
) -> Result<(Vec<Job>, Option<LeaseBlocked>), JobError> {
    let command = JobCommand::Lease { queue: Q.into(), worker: "w1".into(), max, lease_ttl_ms };
    match jobs.apply(now_ms, &command)? {
        JobResponse::Leased { jobs, blocked } => Ok((jobs, blocked)),
        other => panic!("unexpected {other:?}"),
    }
}

fn lease(jobs: &mut Jobs, now_ms: u64, max: u32) -> (Vec<Job>, Option<LeaseBlocked>) {
    lease_with(jobs, now_ms, max, None).expect("valid lease")
}

fn lease_one(jobs: &mut Jobs, now_ms: u64) -> Job {
    let (mut leased, _) = lease(jobs, now_ms, 1);
    assert_eq!(leased.len(), 1, "expected a job to lease");
    leased.remove(0)
}

fn ids(jobs: &[Job]) -> Vec<JobId> {
    jobs.iter().map(|job| job.id).collect()
}

fn token(job: &Job) -> u64 {
    job.lease.as_ref().expect("leased").lease_token
}

fn job_command(jobs: &mut Jobs, now_ms: u64, command: JobCommand) -> Result<Job, JobError> {
    match jobs.apply(now_ms, &command)? {
        JobResponse::Job(job) => Ok(job),
        other => panic!("unexpected {other:?}"),
    }
}

fn complete(jobs: &mut Jobs, now_ms: u64, id: JobId, lease_token: u64) -> Result<Job, JobError> {
    job_command(jobs, now_ms, JobCommand::Complete { id, lease_token, result: Some("\"ok\"".into()) })
}

fn fail(jobs: &mut Jobs, now_ms: u64, id: JobId, lease_token: u64) -> Result<Job, JobError> {
    job_command(
        jobs,
        now_ms,
        JobCommand::Fail { id, lease_token, error: "boom".into(), retry: true, retry_after_ms: None },
    )
}

fn state(jobs: &Jobs, id: JobId) -> JobState {
    jobs.job(id).expect("job exists").state
}

fn assert_error(result: Result<impl std::fmt::Debug, JobError>, code: &str, field: Option<&str>) {
    let error = result.expect_err("expected an error");
    assert_eq!(error.code, code, "{error:?}");
    assert_eq!(error.field.as_deref(), field, "{error:?}");
}

/// Runs `command`, expects `code`, and checks the state did not change at all.
fn assert_rejected_unchanged(jobs: &mut Jobs, now_ms: u64, command: JobCommand, code: &str) {
    jobs.advance_time(now_ms);
    let before = jobs.clone();
    let error = jobs.apply(now_ms, &command).expect_err("expected an error");
    assert_eq!(error.code, code, "{error:?}");
    assert_eq!(*jobs, before, "a rejected {command:?} changed the state");
}

// ---- queues ----

#[test]
fn submit_to_unknown_queue_creates_it_with_defaults() {
    let mut jobs = Jobs::default();
    assert!(jobs.queue(Q, 0).is_none());
    submit(&mut jobs, 0, 0);
    let info = jobs.queue(Q, 0).expect("created");
    assert_eq!(info.config, QueueConfig::default());
    assert_eq!(info.config.lease_ttl_ms, 30_000);
    assert_eq!(info.config.max_attempts, 5);
    assert_eq!(info.config.backoff, Backoff { base_ms: 1_000, max_ms: 3_600_000 });
    assert_eq!(info.config.retention_ms, 7 * 24 * 3_600_000);
    assert_eq!(info.counts.queued, 1);
}

#[test]
fn put_queue_creates_then_replaces_config() {
    let mut jobs = Jobs::default();
    let created = put_queue(&mut jobs, 0, Q, QueueConfig { concurrency: Some(2), ..config() }).unwrap();
    let JobResponse::Queue(info) = created else { panic!("{created:?}") };
    assert_eq!(info.config.concurrency, Some(2));
    let replaced = put_queue(&mut jobs, 0, Q, QueueConfig { paused: true, ..config() }).unwrap();
    let JobResponse::Queue(info) = replaced else { panic!("{replaced:?}") };
    assert_eq!(info.config.concurrency, None, "replace, not merge");
    assert!(info.config.paused);
    assert_eq!(jobs.queues(0).len(), 1);
}

#[test]
fn put_queue_rejects_each_invalid_field_and_changes_nothing() {
    let rate = |limit, per_ms, burst| Some(RateLimit { limit, per_ms, burst });
    let cases: Vec<(QueueConfig, &str)> = vec![
        (QueueConfig { concurrency: Some(0), ..config() }, "concurrency"),
        (QueueConfig { concurrency: Some(limits::CONCURRENCY_MAX + 1), ..config() }, "concurrency"),
        (QueueConfig { rate: rate(0, 1_000, 1), ..config() }, "rate.limit"),
        (QueueConfig { rate: rate(1, 0, 1), ..config() }, "rate.per"),
        (QueueConfig { rate: rate(1, 1_000, 0), ..config() }, "rate.burst"),
        (QueueConfig { rate: rate(1, limits::RATE_PER_MS_MAX + 1, 1), ..config() }, "rate.per"),
        (QueueConfig { lease_ttl_ms: 0, ..config() }, "lease_ttl"),
        (QueueConfig { lease_ttl_ms: limits::LEASE_TTL_MAX_MS + 1, ..config() }, "lease_ttl"),
        (QueueConfig { max_attempts: 0, ..config() }, "max_attempts"),
        (QueueConfig { max_attempts: limits::MAX_ATTEMPTS_MAX + 1, ..config() }, "max_attempts"),
        (QueueConfig { backoff: Backoff { base_ms: 10, max_ms: 5 }, ..config() }, "backoff.max"),
        (
            QueueConfig { backoff: Backoff { base_ms: limits::BACKOFF_MS_MAX + 1, max_ms: u64::MAX }, ..config() },
            "backoff.base",
        ),
        (QueueConfig { retention_ms: limits::RETENTION_MS_MAX + 1, ..config() }, "retention"),
    ];
    let mut jobs = with_queue(config());
    for (bad, field) in cases {
        let before = jobs.clone();
        assert_error(put_queue(&mut jobs, 0, Q, bad.clone()), JobError::INVALID, Some(field));
        assert_error(put_queue(&mut jobs, 0, "new", bad), JobError::INVALID, Some(field));
        assert_eq!(jobs, before);
    }
}

fn patch_queue(jobs: &mut Jobs, now_ms: u64, queue: &str, patch: QueuePatch) -> Result<QueueConfig, JobError> {
    match jobs.apply(now_ms, &JobCommand::PatchQueue { queue: queue.into(), patch })? {
        JobResponse::Queue(info) => Ok(info.config),
        other => panic!("unexpected {other:?}"),
    }
}

/// Every setting away from its default.
fn configured() -> QueueConfig {
    QueueConfig {
        concurrency: Some(2),
        rate: Some(RateLimit { limit: 5, per_ms: 1_000, burst: 3 }),
        lease_ttl_ms: 45_000,
        max_attempts: 3,
        backoff: Backoff { base_ms: 2_000, max_ms: 600_000 },
        retention_ms: 86_400_000,
        paused: false,
    }
}

#[test]
fn patch_queue_changes_the_settings_given_and_keeps_the_others() {
    let mut jobs = with_queue(configured());
    let paused = patch_queue(&mut jobs, 0, Q, QueuePatch { paused: Some(true), ..QueuePatch::default() }).unwrap();
    assert_eq!(paused, QueueConfig { paused: true, ..configured() });
    let resumed = patch_queue(&mut jobs, 0, Q, QueuePatch { paused: Some(false), ..QueuePatch::default() }).unwrap();
    assert_eq!(resumed, configured(), "pausing and resuming keep the limits");
    let patch = QueuePatch {
        concurrency: Some(Nullable::Value(9)),
        lease_ttl_ms: Some(1_000),
        max_attempts: Some(7),
        retention_ms: Some(0),
        ..QueuePatch::default()
    };
    let changed = patch_queue(&mut jobs, 0, Q, patch).unwrap();
    let expected =
        QueueConfig { concurrency: Some(9), lease_ttl_ms: 1_000, max_attempts: 7, retention_ms: 0, ..configured() };
    assert_eq!(changed, expected);
    assert_eq!(
        patch_queue(&mut jobs, 0, Q, QueuePatch::default()).unwrap(),
        expected,
        "an empty patch changes nothing"
    );
    assert_eq!(jobs.queue(Q, 0).unwrap().config, expected);
}

#[test]
fn patch_queue_null_removes_the_concurrency_limit_and_the_rate() {
    let mut jobs = with_queue(configured());
    let patch = QueuePatch { concurrency: Some(Nullable::Null), rate: Some(Nullable::Null), ..QueuePatch::default() };
    let config = patch_queue(&mut jobs, 0, Q, patch).unwrap();
    assert_eq!(config, QueueConfig { concurrency: None, rate: None, ..configured() });
    assert_eq!(jobs.queue(Q, 0).unwrap().rate_tokens, None);
}

#[test]
fn patch_queue_merges_the_rate_and_a_new_limit_brings_its_burst() {
    let mut jobs = with_queue(configured());
    let rate = |jobs: &mut Jobs, change: RatePatch| {
        patch_queue(jobs, 0, Q, QueuePatch { rate: Some(Nullable::Value(change)), ..QueuePatch::default() })
            .map(|config| config.rate.expect("a rate"))
    };
    let per = rate(&mut jobs, RatePatch { per_ms: Some(2_000), ..RatePatch::default() }).unwrap();
    assert_eq!(per, RateLimit { limit: 5, per_ms: 2_000, burst: 3 });
    let burst = rate(&mut jobs, RatePatch { burst: Some(1), ..RatePatch::default() }).unwrap();
    assert_eq!(burst, RateLimit { limit: 5, per_ms: 2_000, burst: 1 });
    let limit = rate(&mut jobs, RatePatch { limit: Some(8), ..RatePatch::default() }).unwrap();
    assert_eq!(limit, RateLimit { limit: 8, per_ms: 2_000, burst: 8 }, "burst follows a new limit unless given");
    let both = rate(&mut jobs, RatePatch { limit: Some(4), burst: Some(2), ..RatePatch::default() }).unwrap();
    assert_eq!(both, RateLimit { limit: 4, per_ms: 2_000, burst: 2 });
}

#[test]
fn patch_queue_rate_of_a_queue_without_one_needs_limit_and_per() {
    let mut jobs = with_queue(config());
    let rate = |change: RatePatch| JobCommand::PatchQueue {
        queue: Q.into(),
        patch: QueuePatch { rate: Some(Nullable::Value(change)), paused: Some(true), ..QueuePatch::default() },
    };
    for (change, field) in [
        (RatePatch { burst: Some(2), ..RatePatch::default() }, "rate.limit"),
        (RatePatch { per_ms: Some(1_000), ..RatePatch::default() }, "rate.limit"),
        (RatePatch { limit: Some(2), ..RatePatch::default() }, "rate.per"),
    ] {
        let before = jobs.clone();
        assert_error(jobs.apply(0, &rate(change)), JobError::INVALID, Some(field));
        assert_eq!(jobs, before);
    }
    let whole = RatePatch { limit: Some(2), per_ms: Some(1_000), burst: None };
    let config =
        patch_queue(&mut jobs, 0, Q, QueuePatch { rate: Some(Nullable::Value(whole)), ..QueuePatch::default() });
    assert_eq!(config.unwrap().rate, Some(RateLimit { limit: 2, per_ms: 1_000, burst: 2 }));
    assert_eq!(jobs.queue(Q, 0).unwrap().rate_tokens, Some(2), "a new rate starts full");
}

#[test]
fn patch_queue_backoff_base_over_the_max_raises_the_max() {
    let mut jobs = with_queue(configured());
    let backoff = |jobs: &mut Jobs, base_ms, max_ms| {
        patch_queue(
            jobs,
            0,
            Q,
            QueuePatch { backoff_base_ms: base_ms, backoff_max_ms: max_ms, ..QueuePatch::default() },
        )
        .map(|config| config.backoff)
    };
    assert_eq!(backoff(&mut jobs, None, Some(3_600_000)), Ok(Backoff { base_ms: 2_000, max_ms: 3_600_000 }));
    assert_eq!(backoff(&mut jobs, Some(5_000), None), Ok(Backoff { base_ms: 5_000, max_ms: 3_600_000 }));
    assert_eq!(backoff(&mut jobs, Some(7_200_000), None), Ok(Backoff { base_ms: 7_200_000, max_ms: 7_200_000 }));
    let before = jobs.clone();
    assert_error(backoff(&mut jobs, None, Some(1_000)), JobError::INVALID, Some("backoff.max"));
    assert_error(backoff(&mut jobs, Some(2_000), Some(1_000)), JobError::INVALID, Some("backoff.max"));
    assert_eq!(jobs, before);
}

#[test]
fn patch_queue_rejects_each_invalid_value_and_changes_nothing() {
    let patch = QueuePatch::default;
    let rate = |limit, per_ms, burst| Some(Nullable::Value(RatePatch { limit, per_ms, burst }));
    let cases: Vec<(QueuePatch, &str)> = vec![
        (QueuePatch { concurrency: Some(Nullable::Value(0)), ..patch() }, "concurrency"),
        (QueuePatch { concurrency: Some(Nullable::Value(limits::CONCURRENCY_MAX + 1)), ..patch() }, "concurrency"),
        (QueuePatch { rate: rate(Some(0), None, None), ..patch() }, "rate.limit"),
        (QueuePatch { rate: rate(None, Some(0), None), ..patch() }, "rate.per"),
        (QueuePatch { rate: rate(None, None, Some(0)), ..patch() }, "rate.burst"),
        (QueuePatch { lease_ttl_ms: Some(0), ..patch() }, "lease_ttl"),
        (QueuePatch { max_attempts: Some(limits::MAX_ATTEMPTS_MAX + 1), ..patch() }, "max_attempts"),
        (QueuePatch { backoff_base_ms: Some(limits::BACKOFF_MS_MAX + 1), ..patch() }, "backoff.base"),
        (QueuePatch { retention_ms: Some(limits::RETENTION_MS_MAX + 1), ..patch() }, "retention"),
    ];
    let mut jobs = with_queue(configured());
    for (bad, field) in cases {
        assert_error(bad.validate(), JobError::INVALID, Some(field));
        let bad = QueuePatch { paused: Some(true), ..bad };
        let before = jobs.clone();
        assert_error(patch_queue(&mut jobs, 0, Q, bad.clone()), JobError::INVALID, Some(field));
        assert_error(patch_queue(&mut jobs, 0, "new", bad), JobError::INVALID, Some(field));
        assert_eq!(jobs, before);
    }
}

#[test]
fn patch_queue_creates_an_unknown_queue_from_the_defaults() {
    let mut jobs = Jobs::default();
    let config =
        patch_queue(&mut jobs, 0, Q, QueuePatch { concurrency: Some(Nullable::Value(1)), ..QueuePatch::default() });
    assert_eq!(config.unwrap(), QueueConfig { concurrency: Some(1), ..QueueConfig::default() });
    assert_eq!(jobs.queues(0).len(), 1);
}

#[test]
fn patch_queue_keeps_the_rate_tokens_of_an_unchanged_rate() {
    let mut jobs = with_queue(QueueConfig { rate: Some(RateLimit { limit: 1, per_ms: 1_000, burst: 3 }), ..config() });
    submit(&mut jobs, 0, 0);
    submit(&mut jobs, 0, 0);
    lease(&mut jobs, 0, 2);
    assert_eq!(jobs.queue(Q, 0).unwrap().rate_tokens, Some(1));
    patch_queue(&mut jobs, 0, Q, QueuePatch { paused: Some(true), ..QueuePatch::default() }).unwrap();
    assert_eq!(jobs.queue(Q, 0).unwrap().rate_tokens, Some(1), "pausing does not refill the bucket");
}

#[test]
fn queue_names_follow_the_name_rules() {
    let mut jobs = Jobs::default();
    for good in ["a", "A-z_0.9", &"x".repeat(limits::NAME_BYTES_MAX), "..."] {
        put_queue(&mut jobs, 0, good, config()).unwrap_or_else(|e| panic!("{good:?}: {e:?}"));
    }
    for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(limits::NAME_BYTES_MAX + 1)] {
        assert_error(put_queue(&mut jobs, 0, bad, config()), JobError::INVALID, Some("queue"));
        let submit = JobCommand::Submit { queue: bad.into(), jobs: vec![NewJob::default()] };
        assert_rejected_unchanged(&mut jobs, 0, submit, JobError::INVALID);
    }
}

#[test]
fn delete_queue_without_force_refuses_while_jobs_are_unfinished() {
    let mut jobs = with_queue(config());
    let id = submit(&mut jobs, 0, 0);
    let delete = JobCommand::DeleteQueue { queue: Q.into(), force: false };
    assert_rejected_unchanged(&mut jobs, 0, delete.clone(), JobError::QUEUE_NOT_EMPTY);
    let leased = lease_one(&mut jobs, 0);
    assert_rejected_unchanged(&mut jobs, 0, delete.clone(), JobError::QUEUE_NOT_EMPTY);
    complete(&mut jobs, 0, id, token(&leased)).unwrap();
    // Only finished jobs left: they go with the queue.
    let deleted = jobs.apply(0, &delete).unwrap();
    assert_eq!(deleted, JobResponse::QueueDeleted { queue: Q.into(), jobs_removed: 1 });
    assert!(jobs.queue(Q, 0).is_none());
    assert!(jobs.job(id).is_none());
    jobs.check_invariants();
}

#[test]
fn delete_queue_with_force_refuses_while_a_lease_is_held() {
    // A worker may still be calling out for the leased job; a queue made again under the
    // same name would not count its slot.
    let mut jobs = with_queue(QueueConfig { lease_ttl_ms: 1_000, ..config() });
    let leased_id = submit(&mut jobs, 0, 5);
    submit(&mut jobs, 0, 0);
    let leased = lease_one(&mut jobs, 0);
    let force = JobCommand::DeleteQueue { queue: Q.into(), force: true };
    assert_rejected_unchanged(&mut jobs, 0, force.clone(), JobError::QUEUE_NOT_EMPTY);
    let message = |jobs: &mut Jobs, command: &JobCommand| jobs.clone().apply(0, command).expect_err("refused").message;
    let said = message(&mut jobs, &force);
    assert!(said.contains("has 1 job leased") && said.contains("cancel them, and delete the queue once"), "{said}");
    // Cancelled, its lease is still held: still refused, and it says what is left to do.
    job_command(&mut jobs, 0, JobCommand::Cancel { id: leased_id }).unwrap();
    assert_rejected_unchanged(&mut jobs, 0, force.clone(), JobError::QUEUE_NOT_EMPTY);
    let said = message(&mut jobs, &force);
    assert!(said.contains("has 1 job cancelled while leased") && !said.contains("cancel them"), "{said}");
    let without_force = JobCommand::DeleteQueue { queue: Q.into(), force: false };
    let said = message(&mut jobs, &without_force);
    assert!(said.contains("and 1 job unfinished, which takes force"), "{said}");
    // Its worker lets go: the queue can go.
    job_command(&mut jobs, 0, JobCommand::Release { id: leased_id, lease_token: token(&leased) }).unwrap();
    let deleted = jobs.apply(0, &force).unwrap();
    assert_eq!(deleted, JobResponse::QueueDeleted { queue: Q.into(), jobs_removed: 2 });
    jobs.check_invariants();
}

#[test]
fn delete_queue_with_force_removes_all_jobs() {
    let mut jobs = with_queue(config());
    let finished_id = submit(&mut jobs, 0, 5);
    let queued_id = submit(&mut jobs, 0, 0);
    let scheduled = submit_new(&mut jobs, 0, NewJob { delay_ms: Some(1_000), ..NewJob::default() });
    let other_queue_job = submit_jobs(&mut jobs, 0, "other", vec![NewJob::default()]).unwrap()[0].id;
    let leased = lease_one(&mut jobs, 0);
    assert_eq!(leased.id, finished_id);
    complete(&mut jobs, 0, finished_id, token(&leased)).unwrap();
    let deleted = jobs.apply(0, &JobCommand::DeleteQueue { queue: Q.into(), force: true }).unwrap();
    assert_eq!(deleted, JobResponse::QueueDeleted { queue: Q.into(), jobs_removed: 3 });
    for id in [finished_id, queued_id, scheduled.id] {
        assert!(jobs.job(id).is_none(), "job {id} removed");
    }
    assert_eq!(jobs.next_deadline_ms(), None, "no schedule or purge deadline left behind");
    assert!(jobs.job(other_queue_job).is_some(), "other queues untouched");
    jobs.check_invariants();
    assert_rejected_unchanged(
        &mut jobs,
        0,
        JobCommand::DeleteQueue { queue: Q.into(), force: true },
        JobError::NOT_FOUND,
    );
}

#[test]
fn queue_info_counts_jobs_per_state() {
    let mut jobs = with_queue(QueueConfig { max_attempts: 1, ..config() });
    let [a, b, c, d, _e] = [0; 5].map(|_| submit(&mut jobs, 0, 0));
    submit_new(&mut jobs, 0, NewJob { delay_ms: Some(5_000), ..NewJob::default() });
    let leased = lease(&mut jobs, 0, 4).0;
    assert_eq!(ids(&leased), vec![a, b, c, d]);
    complete(&mut jobs, 0, a, token(&leased[0])).unwrap();
    fail(&mut jobs, 0, b, token(&leased[1])).unwrap();
    job_command(&mut jobs, 0, JobCommand::Cancel { id: c }).unwrap();
    let counts = jobs.queue(Q, 0).unwrap().counts;
    assert_eq!(counts, JobCounts { scheduled: 1, queued: 1, leased: 1, succeeded: 1, dead: 1, cancelled: 1 });
}

#[test]
fn list_jobs_pages_in_id_order_by_state_after_a_cursor() {
    let mut jobs = with_queue(config());
    let all: Vec<JobId> = (0..10).map(|i| submit(&mut jobs, 0, i % 3)).collect();
    let first_leased = lease(&mut jobs, 0, 2).0; // priority 2 jobs: ids 3 and 6 (1-based)
    let leased_ids = ids(&first_leased);
    let page = |jobs: &Jobs, state, after, limit| ids(&jobs.list_jobs(Q, state, after, limit).unwrap().jobs);
    let more = |jobs: &Jobs, state, after, limit| jobs.list_jobs(Q, state, after, limit).unwrap().more;
    assert_eq!(page(&jobs, None, None, 100), all);
    assert_eq!(page(&jobs, None, Some(all[3]), 3), all[4..7].to_vec());
    assert_eq!(page(&jobs, Some(JobState::Leased), None, 100), leased_ids);
    let queued: Vec<JobId> = all.iter().copied().filter(|id| !leased_ids.contains(id)).collect();
    assert_eq!(page(&jobs, Some(JobState::Queued), None, 4), queued[..4].to_vec());
    assert_eq!(page(&jobs, Some(JobState::Queued), Some(queued[3]), 100), queued[4..].to_vec());
    assert_eq!(page(&jobs, Some(JobState::Dead), None, 100), Vec::<JobId>::new());
    assert!(more(&jobs, None, Some(all[3]), 3));
    assert!(!more(&jobs, None, Some(all[6]), 3), "a full page that ends the list has no more after it");
    assert!(!more(&jobs, None, None, 100));
    assert!(more(&jobs, Some(JobState::Queued), None, 4));
    assert!(!more(&jobs, Some(JobState::Dead), None, 100));
    assert_error(jobs.list_jobs(Q, None, None, 0), JobError::INVALID, Some("limit"));
    assert_error(jobs.list_jobs(Q, None, None, limits::LIST_LIMIT_MAX + 1), JobError::INVALID, Some("limit"));
    assert_error(jobs.list_jobs("nope", None, None, 10), JobError::NOT_FOUND, None);
}

// ---- submit ----

#[test]
fn job_ids_are_positive_and_in_acceptance_order_across_queues() {
    let mut jobs = Jobs::default();
    let a = submit_jobs(&mut jobs, 0, "a", vec![NewJob::default(), NewJob::default()]).unwrap();
    let b = submit_jobs(&mut jobs, 1, "b", vec![NewJob::default()]).unwrap();
    let c = submit_jobs(&mut jobs, 2, "a", vec![NewJob::default()]).unwrap();
    assert_eq!([ids(&a), ids(&b), ids(&c)].concat(), vec![1, 2, 3, 4]);
}

#[test]
fn batch_submit_is_all_or_nothing() {
    let mut jobs = with_queue(config());
    submit(&mut jobs, 0, 0);
    let bad_batch = vec![NewJob::default(), NewJob { priority: limits::PRIORITY_MAX + 1, ..NewJob::default() }];
    let command = JobCommand::Submit { queue: Q.into(), jobs: bad_batch.clone() };
    assert_rejected_unchanged(&mut jobs, 0, command, JobError::INVALID);
    assert_error(submit_jobs(&mut jobs, 0, Q, bad_batch), JobError::INVALID, Some("jobs[1].priority"));
    // A failed submit to an unknown queue does not create it either.
    let command =
        JobCommand::Submit { queue: "new".into(), jobs: vec![NewJob { priority: i64::MIN, ..NewJob::default() }] };
    assert_rejected_unchanged(&mut jobs, 0, command, JobError::INVALID);
    assert!(jobs.queue("new", 0).is_none());
    // The next accepted job gets the next id: rejected submits use none.
    assert_eq!(submit(&mut jobs, 0, 0), 2);
}

#[test]
fn submit_over_a_limit_is_rejected_with_its_field() {
    let mut jobs = with_queue(config());
    let one = |new_job: NewJob| JobCommand::Submit { queue: Q.into(), jobs: vec![new_job] };
    let cases = [
        (
            one(NewJob { payload: "1".repeat(limits::PAYLOAD_BYTES_MAX + 1), ..NewJob::default() }),
            JobError::TOO_LARGE,
            "payload",
        ),
        (one(NewJob { priority: limits::PRIORITY_MIN - 1, ..NewJob::default() }), JobError::INVALID, "priority"),
        (one(NewJob { delay_ms: Some(1), run_at_ms: Some(1), ..NewJob::default() }), JobError::INVALID, "run_at"),
        (one(NewJob { delay_ms: Some(limits::DELAY_MS_MAX + 1), ..NewJob::default() }), JobError::INVALID, "delay"),
        (one(NewJob { run_at_ms: Some(limits::DELAY_MS_MAX + 101), ..NewJob::default() }), JobError::INVALID, "run_at"),
        (one(NewJob { max_attempts: Some(0), ..NewJob::default() }), JobError::INVALID, "max_attempts"),
        (JobCommand::Submit { queue: Q.into(), jobs: vec![] }, JobError::INVALID, "jobs"),
        (
            JobCommand::Submit { queue: Q.into(), jobs: vec![NewJob::default(); limits::SUBMIT_BATCH_JOBS_MAX + 1] },
            JobError::TOO_LARGE,
            "jobs",
        ),
        (
            JobCommand::Submit {
                queue: Q.into(),
                jobs: vec![NewJob { payload: "1".repeat(limits::PAYLOAD_BYTES_MAX), ..NewJob::default() }; 65],
            },
            JobError::TOO_LARGE,
            "jobs",
        ),
    ];
    for (command, code, field) in cases {
        let before = jobs.clone();
        let error = jobs.apply(100, &command).expect_err("over a limit");
        assert_eq!((error.code.as_str(), error.field.as_deref()), (code, Some(field)));
        assert_eq!(jobs, before);
    }
    // Exactly at the limits is fine.
    submit_new(&mut jobs, 100, NewJob { payload: "1".repeat(limits::PAYLOAD_BYTES_MAX), ..NewJob::default() });
    submit_new(
        &mut jobs,
        100,
        NewJob { priority: limits::PRIORITY_MIN, run_at_ms: Some(limits::DELAY_MS_MAX + 100), ..NewJob::default() },
    );
}

#[test]
fn delayed_job_is_scheduled_until_due() {
    let mut jobs = with_queue(config());
    let job = submit_new(&mut jobs, 1_000, NewJob { delay_ms: Some(500), ..NewJob::default() });
    assert_eq!((job.state, job.run_at_ms), (JobState::Scheduled, 1_500));
    assert_eq!(jobs.next_deadline_ms(), Some(1_500));
    let (leased, blocked) = lease(&mut jobs, 1_499, 1);
    assert!(leased.is_empty());
    assert_eq!(blocked, Some(LeaseBlocked { reason: LeaseBlockReason::Empty, retry_at_ms: Some(1_500) }));
    jobs.advance_time(1_500);
    assert_eq!(state(&jobs, job.id), JobState::Queued);
    assert_eq!(lease_one(&mut jobs, 1_500).id, job.id);
}

#[test]
fn run_at_in_the_past_is_queued_at_once() {
    let mut jobs = with_queue(config());
    let job = submit_new(&mut jobs, 1_000, NewJob { run_at_ms: Some(10), ..NewJob::default() });
    assert_eq!((job.state, job.run_at_ms), (JobState::Queued, 1_000));
    let job = submit_new(&mut jobs, 1_000, NewJob { run_at_ms: Some(2_000), ..NewJob::default() });
    assert_eq!((job.state, job.run_at_ms), (JobState::Scheduled, 2_000));
}

#[test]
fn job_max_attempts_defaults_to_the_queue_and_can_be_set() {
    let mut jobs = with_queue(QueueConfig { max_attempts: 7, ..config() });
    assert_eq!(submit_new(&mut jobs, 0, NewJob::default()).max_attempts, 7);
    assert_eq!(submit_new(&mut jobs, 0, NewJob { max_attempts: Some(2), ..NewJob::default() }).max_attempts, 2);
}

#[test]
fn submitted_job_records_its_fields() {
    let mut jobs = with_queue(config());
    let job = submit_new(&mut jobs, 42, NewJob { payload: "{\"a\":1}".into(), priority: -3, ..NewJob::default() });
    assert_eq!(
        job,
        Job {
            id: 1,
            queue: Q.into(),
            state: JobState::Queued,
            priority: -3,
            payload: "{\"a\":1}".into(),
            attempts: 0,
            max_attempts: 5,
            created_at_ms: 42,
            run_at_ms: 42,
            result: None,
            errors: vec![],
            lease: None,
            finished_at_ms: None,
            purge_at_ms: None,
        }
    );
    assert_eq!(jobs.job(1), Some(job));
}

// ---- lease ----

#[test]
fn higher_priority_leases_first() {
    let mut jobs = with_queue(config());
    let low = submit(&mut jobs, 0, -5);
    let mid = submit(&mut jobs, 0, 0);
    let high = submit(&mut jobs, 0, 10);
    assert_eq!(ids(&lease(&mut jobs, 0, 10).0), vec![high, mid, low]);
}

#[test]
fn equal_priority_is_fifo() {
    let mut jobs = with_queue(config());
    let first: Vec<JobId> = (0..5).map(|_| submit(&mut jobs, 0, 1)).collect();
    let later_high = submit(&mut jobs, 1, 2);
    let later: Vec<JobId> = (0..5).map(|_| submit(&mut jobs, 2, 1)).collect();
    let mut expected = vec![later_high];
    expected.extend(first);
    expected.extend(later);
    let mut got = Vec::new();
    for _ in 0..11 {
        got.push(lease_one(&mut jobs, 3).id);
    }
    assert_eq!(got, expected);
}

#[test]
fn lease_respects_concurrency_one() {
    let mut jobs = with_queue(QueueConfig { concurrency: Some(1), ..config() });
    let a = submit(&mut jobs, 0, 0);
    let b = submit(&mut jobs, 0, 0);
    let (leased, blocked) = lease(&mut jobs, 0, 10);
    assert_eq!(ids(&leased), vec![a]);
    let expires_at_ms = leased[0].lease.as_ref().unwrap().lease_expires_at_ms;
    assert_eq!(blocked, Some(LeaseBlocked { reason: LeaseBlockReason::Concurrency, retry_at_ms: Some(expires_at_ms) }));
    let (none, blocked) = lease(&mut jobs, 10, 1);
    assert!(none.is_empty());
    assert_eq!(blocked.unwrap().reason, LeaseBlockReason::Concurrency);
    complete(&mut jobs, 10, a, token(&leased[0])).unwrap();
    assert_eq!(lease_one(&mut jobs, 10).id, b);
}

#[test]
fn lowering_concurrency_lets_the_surplus_run_out() {
    let mut jobs = with_queue(QueueConfig { concurrency: Some(3), ..config() });
    (0..5).for_each(|_| {
        submit(&mut jobs, 0, 0);
    });
    let leased = lease(&mut jobs, 0, 3).0;
    put_queue(&mut jobs, 0, Q, QueueConfig { concurrency: Some(1), ..config() }).unwrap();
    assert!(lease(&mut jobs, 0, 1).0.is_empty(), "3 leased, concurrency 1");
    complete(&mut jobs, 0, leased[0].id, token(&leased[0])).unwrap();
    complete(&mut jobs, 0, leased[1].id, token(&leased[1])).unwrap();
    assert!(lease(&mut jobs, 0, 1).0.is_empty(), "still 1 leased");
    complete(&mut jobs, 0, leased[2].id, token(&leased[2])).unwrap();
    assert_eq!(lease(&mut jobs, 0, 5).0.len(), 1);
}

#[test]
fn lease_returns_at_most_max_and_rejects_max_over_the_limit() {
    let mut jobs = with_queue(config());
    (0..5).for_each(|_| {
        submit(&mut jobs, 0, 0);
    });
    let (leased, blocked) = lease(&mut jobs, 0, 2);
    assert_eq!((leased.len(), blocked), (2, None));
    for (max, ttl, field) in [(0, None, "max"), (limits::LEASE_BATCH_MAX + 1, None, "max"), (1, Some(0), "lease_ttl")] {
        let before = jobs.clone();
        assert_error(lease_with(&mut jobs, 0, max, ttl), JobError::INVALID, Some(field));
        assert_eq!(jobs, before);
    }
    let bad_worker = JobCommand::Lease { queue: Q.into(), worker: String::new(), max: 1, lease_ttl_ms: None };
    assert_rejected_unchanged(&mut jobs, 0, bad_worker, JobError::INVALID);
    let long_worker = JobCommand::Lease {
        queue: Q.into(),
        worker: "w".repeat(limits::WORKER_BYTES_MAX + 1),
        max: 1,
        lease_ttl_ms: None,
    };
    assert_rejected_unchanged(&mut jobs, 0, long_worker, JobError::INVALID);
}

#[test]
fn rate_limit_bounds_leases_and_says_when_the_next_token_comes() {
    // 2 per second, burst 3.
    let rate = RateLimit { limit: 2, per_ms: 1_000, burst: 3 };
    let mut jobs = with_queue(QueueConfig { rate: Some(rate), ..config() });
    (0..10).for_each(|_| {
        submit(&mut jobs, 0, 0);
    });
    let (leased, blocked) = lease(&mut jobs, 0, 10);
    assert_eq!(leased.len(), 3, "the burst");
    assert_eq!(blocked, Some(LeaseBlocked { reason: LeaseBlockReason::Rate, retry_at_ms: Some(500) }));
    assert_eq!(jobs.queue(Q, 0).unwrap().rate_tokens, Some(0));
    assert!(lease(&mut jobs, 499, 10).0.is_empty());
    assert_eq!(lease(&mut jobs, 500, 10).0.len(), 1);
    assert_eq!(lease(&mut jobs, 1_500, 10).0.len(), 2);
    // A long quiet spell refills only up to the burst.
    assert_eq!(jobs.queue(Q, 100_000).unwrap().rate_tokens, Some(3));
    assert_eq!(lease(&mut jobs, 100_000, 10).0.len(), 3);
}

#[test]
fn rate_refill_is_exact_over_many_small_steps() {
    // 1 token per 3 ms: a float refill would drift; the integer one gives exactly 1000
    // tokens in 3000 ms however the leases are spaced.
    let rate = RateLimit { limit: 1, per_ms: 3, burst: 1 };
    let mut jobs = with_queue(QueueConfig { rate: Some(rate), ..config() });
    submit_jobs(&mut jobs, 0, Q, vec![NewJob::default(); 1_000]).unwrap();
    submit_jobs(&mut jobs, 0, Q, vec![NewJob::default(); 1_000]).unwrap();
    let mut leased = 0;
    for now_ms in 0..3_000 {
        leased += lease(&mut jobs, now_ms, 1).0.len();
    }
    assert_eq!(leased, 1_000, "1 burst token at 0, then one per 3 ms up to 2997");
}

#[test]
fn rate_config_change_never_adds_tokens() {
    let slow = RateLimit { limit: 1, per_ms: 60_000, burst: 1 };
    let mut jobs = with_queue(QueueConfig { rate: Some(slow), ..config() });
    (0..10).for_each(|_| {
        submit(&mut jobs, 0, 0);
    });
    assert_eq!(lease(&mut jobs, 0, 10).0.len(), 1);
    let fast = RateLimit { limit: 10, per_ms: 1_000, burst: 10 };
    put_queue(&mut jobs, 0, Q, QueueConfig { rate: Some(fast), ..config() }).unwrap();
    assert!(lease(&mut jobs, 0, 10).0.is_empty(), "the empty bucket stays empty");
    assert_eq!(lease(&mut jobs, 100, 10).0.len(), 1, "then refills at the new rate");
    // Removing the rate lifts the limit; adding one back starts with a full burst.
    put_queue(&mut jobs, 100, Q, config()).unwrap();
    assert_eq!(jobs.queue(Q, 100).unwrap().rate_tokens, None);
    let burst_two = RateLimit { limit: 1, per_ms: 60_000, burst: 2 };
    put_queue(&mut jobs, 100, Q, QueueConfig { rate: Some(burst_two), ..config() }).unwrap();
    assert_eq!(lease(&mut jobs, 100, 10).0.len(), 2);
}

#[test]
fn rate_waiting_high_priority_job_is_not_overtaken() {
    let rate = RateLimit { limit: 1, per_ms: 1_000, burst: 1 };
    let mut jobs = with_queue(QueueConfig { rate: Some(rate), ..config() });
    submit(&mut jobs, 0, 0);
    lease_one(&mut jobs, 0);
    let low = submit(&mut jobs, 0, 1);
    let high = submit(&mut jobs, 500, 9);
    assert!(lease(&mut jobs, 999, 1).0.is_empty());
    assert_eq!(lease_one(&mut jobs, 1_000).id, high);
    assert_eq!(lease_one(&mut jobs, 2_000).id, low);
}

#[test]
fn paused_queue_leases_nothing() {
    let mut jobs = with_queue(QueueConfig { paused: true, ..config() });
    let id = submit(&mut jobs, 0, 0);
    let (leased, blocked) = lease(&mut jobs, 0, 1);
    assert!(leased.is_empty());
    assert_eq!(blocked, Some(LeaseBlocked { reason: LeaseBlockReason::Paused, retry_at_ms: None }));
    assert_eq!(state(&jobs, id), JobState::Queued);
    put_queue(&mut jobs, 0, Q, config()).unwrap();
    assert_eq!(lease_one(&mut jobs, 0).id, id);
}

#[test]
fn lease_of_an_unknown_queue_is_empty_and_creates_nothing() {
    let mut jobs = Jobs::default();
    let (leased, blocked) = lease(&mut jobs, 0, 1);
    assert!(leased.is_empty());
    assert_eq!(blocked, Some(LeaseBlocked { reason: LeaseBlockReason::Empty, retry_at_ms: None }));
    assert_eq!(jobs, Jobs::default());
}

#[test]
fn lease_tokens_strictly_increase_across_queues_and_releases() {
    let mut jobs = Jobs::default();
    submit_jobs(&mut jobs, 0, Q, vec![NewJob::default(); 3]).unwrap();
    submit_jobs(&mut jobs, 0, "other", vec![NewJob::default(); 3]).unwrap();
    let mut tokens = Vec::new();
    for round in 0..3 {
        let leased = lease_one(&mut jobs, round);
        tokens.push(token(&leased));
        let other = JobCommand::Lease { queue: "other".into(), worker: "w".into(), max: 1, lease_ttl_ms: None };
        let JobResponse::Leased { jobs: other_leased, .. } = jobs.apply(round, &other).unwrap() else { panic!() };
        tokens.push(token(&other_leased[0]));
        job_command(&mut jobs, round, JobCommand::Release { id: leased.id, lease_token: token(&leased) }).unwrap();
    }
    assert!(tokens.windows(2).all(|pair| pair[0] < pair[1]), "{tokens:?}");
    assert!(tokens[0] >= 1);
}

#[test]
fn leased_job_carries_worker_token_expiry_and_attempt() {
    let mut jobs = with_queue(QueueConfig { lease_ttl_ms: 10_000, ..config() });
    submit(&mut jobs, 0, 0);
    submit(&mut jobs, 0, 0);
    let job = lease_one(&mut jobs, 100);
    assert_eq!(job.state, JobState::Leased);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.lease, Some(LeaseInfo { worker: "w1".into(), lease_token: 1, lease_expires_at_ms: 10_100 }));
    let (overridden, _) = lease_with(&mut jobs, 200, 1, Some(500)).unwrap();
    assert_eq!(overridden[0].lease.as_ref().unwrap().lease_expires_at_ms, 700);
}

// ---- heartbeat, complete, fail, release ----

#[test]
fn heartbeat_extends_the_lease_by_its_ttl() {
    let mut jobs = with_queue(QueueConfig { lease_ttl_ms: 1_000, ..config() });
    let id = submit(&mut jobs, 0, 0);
    let leased = lease_one(&mut jobs, 0);
    let beat =
        job_command(&mut jobs, 900, JobCommand::Heartbeat { id, lease_token: token(&leased), lease_ttl_ms: None })
            .unwrap();
    assert_eq!(beat.lease.as_ref().unwrap().lease_expires_at_ms, 1_900);
    assert_eq!(token(&beat), token(&leased), "a heartbeat keeps the token");
    jobs.advance_time(1_899);
    assert_eq!(state(&jobs, id), JobState::Leased);
    let beat = job_command(
        &mut jobs,
        1_000,
        JobCommand::Heartbeat { id, lease_token: token(&leased), lease_ttl_ms: Some(5_000) },
    )
    .unwrap();
    assert_eq!(beat.lease.unwrap().lease_expires_at_ms, 6_000);
    // The new ttl sticks for the next heartbeat.
    let beat =
        job_command(&mut jobs, 2_000, JobCommand::Heartbeat { id, lease_token: token(&leased), lease_ttl_ms: None })
            .unwrap();
    assert_eq!(beat.lease.unwrap().lease_expires_at_ms, 7_000);
    assert_eq!(jobs.next_deadline_ms(), Some(7_000));
    jobs.check_invariants();
}

#[test]
fn complete_stores_the_result_and_finishes_the_job() {
    let mut jobs = with_queue(QueueConfig { retention_ms: 60_000, ..config() });
    let id = submit(&mut jobs, 0, 0);
    let leased = lease_one(&mut jobs, 0);
    let done = complete(&mut jobs, 10, id, token(&leased)).unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.result.as_deref(), Some("\"ok\""));
    assert_eq!((done.finished_at_ms, done.purge_at_ms, &done.lease), (Some(10), Some(60_010), &None));
    assert_eq!(jobs.job(id), Some(done));
}

#[test]
fn stale_token_complete_changes_nothing() {
    let mut jobs = with_queue(QueueConfig { lease_ttl_ms: 1_000, ..config() });
    let id = submit(&mut jobs, 0, 0);
    let first = lease_one(&mut jobs, 0);
    // The lease expires and another worker gets the job with a new token.
    let second = lease_one(&mut jobs, 2_000);
    assert_eq!(second.id, id);
    assert!(token(&second) > token(&first));
    let stale = JobCommand::Complete { id, lease_token: token(&first), result: None };
    assert_rejected_unchanged(&mut jobs, 2_000, stale, JobError::STALE_LEASE);
    let error = complete(&mut jobs, 2_000, id, token(&first)).unwrap_err();
    assert_eq!(error.field.as_deref(), Some("lease_token"));
    // The message says what became of the lease.
    let again = format!("the job is leased under token {} now", token(&second));
    assert!(error.message.contains(&again), "{}", error.message);
    // A token that was never issued is stale too, and the message does not call it an
    // earlier lease of the job.
    let never = JobCommand::Complete { id, lease_token: 999, result: None };
    assert_rejected_unchanged(&mut jobs, 2_000, never, JobError::STALE_LEASE);
    let error = complete(&mut jobs, 2_000, id, 999).unwrap_err();
    assert!(error.message.contains("a later token was never a lease of this job"), "{}", error.message);
    complete(&mut jobs, 2_000, id, token(&second)).unwrap();
    let error = complete(&mut jobs, 2_000, id, token(&second)).unwrap_err();
    assert!(error.message.ends_with("the job has succeeded already"), "{}", error.message);
}

#[test]
fn a_stale_lease_on_a_job_back_in_its_queue_says_its_lease_ended() {
    let mut jobs = with_queue(QueueConfig { lease_ttl_ms: 1_000, ..config() });
    let id = submit(&mut jobs, 0, 0);
    let first = lease_one(&mut jobs, 0);
    jobs.advance_time(2_000);
    let error = complete(&mut jobs, 2_000, id, token(&first)).unwrap_err();
    assert_eq!(error.code, JobError::STALE_LEASE);
    assert!(error.message.contains("the job has no lease: it is"), "{}", error.message);
}

#[test]
fn stale_token_heartbeat_fail_release_change_nothing() {
    let mut jobs = with_queue(config());
    let id = submit(&mut jobs, 0, 0);
    let leased = lease_one(&mut jobs, 0);
    let stale_token = token(&leased) + 1;
    for command in [
        JobCommand::Heartbeat { id, lease_token: stale_token, lease_ttl_ms: None },
        JobCommand::Fail { id, lease_token: stale_token, error: "x".into(), retry: true, retry_after_ms: None },
        JobCommand::Release { id, lease_token: stale_token },
        JobCommand::Complete { id, lease_token: stale_token, result: None },
    ] {
        assert_rejected_unchanged(&mut jobs, 5, command, JobError::STALE_LEASE);
    }
    let unknown = JobCommand::Heartbeat { id: 77, lease_token: 1, lease_ttl_ms: None };
    assert_rejected_unchanged(&mut jobs, 5, unknown, JobError::NOT_FOUND);
}

#[test]
fn second_complete_with_the_same_token_is_stale() {
    let mut jobs = with_queue(config());
    let id = submit(&mut jobs, 0, 0);
    let leased = lease_one(&mut jobs, 0);
    complete(&mut jobs, 0, id, token(&leased)).unwrap();
    let again = JobCommand::Complete { id, lease_token: token(&leased), result: Some("2".into()) };
    assert_rejected_unchanged(&mut jobs, 1, again, JobError::STALE_LEASE);
    assert_eq!(jobs.job(id).unwrap().result.as_deref(), Some("\"ok\""));
}

#[test]
fn complete_fail_and_heartbeat_over_limits_are_rejected() {
    let mut jobs = with_queue(config());
    let id = submit(&mut jobs, 0, 0);
    let lease_token = token(&lease_one(&mut jobs, 0));
    let cases = [
        (
            JobCommand::Complete { id, lease_token, result: Some("1".repeat(limits::RESULT_BYTES_MAX + 1)) },
            JobError::TOO_LARGE,
        ),
        (
            JobCommand::Fail {
                id,
                lease_token,
                error: "e".repeat(limits::ERROR_MESSAGE_BYTES_MAX + 1),
                retry: true,
                retry_after_ms: None,
            },
            JobError::TOO_LARGE,
        ),
        (
            JobCommand::Fail {
                id,
                lease_token,
                error: "e".into(),
                retry: true,
                retry_after_ms: Some(limits::DELAY_MS_MAX + 1),
            },
            JobError::INVALID,
        ),
        (
            JobCommand::Heartbeat { id, lease_token, lease_ttl_ms: Some(limits::LEASE_TTL_MAX_MS + 1) },
            JobError::INVALID,
        ),
    ];
    for (command, code) in cases {
        assert_rejected_unchanged(&mut jobs, 0, command, code);
    }
}

#[test]
fn fail_schedules_a_retry_with_exponential_backoff() {
    let backoff = Backoff { base_ms: 1_000, max_ms: 5_000 };
    let mut jobs = with_queue(QueueConfig { backoff, max_attempts: 10, ..config() });
    let id = submit(&mut jobs, 0, 0);
    let mut now_ms = 0;
    // Failed attempt n waits base × 2^(n-1), capped at max: 1s, 2s, 4s, 5s, 5s.
    for (attempt, delay_ms) in [(1, 1_000), (2, 2_000), (3, 4_000), (4, 5_000), (5, 5_000)] {
        let leased = lease_one(&mut jobs, now_ms);
        assert_eq!(leased.attempts, attempt);
        let failed = fail(&mut jobs, now_ms, id, token(&leased)).unwrap();
        assert_eq!((failed.state, failed.run_at_ms), (JobState::Scheduled, now_ms + delay_ms));
        assert_eq!(failed.errors.last().unwrap(), &AttemptError { attempt, at_ms: now_ms, message: "boom".into() });
        assert!(lease(&mut jobs, now_ms + delay_ms - 1, 1).0.is_empty(), "not before the backoff");
        now_ms += delay_ms;
    }
    assert_eq!(lease_one(&mut jobs, now_ms).id, id);
}

#[test]
fn backoff_delay_is_capped_and_never_overflows() {
    let backoff = Backoff { base_ms: limits::BACKOFF_MS_MAX, max_ms: limits::BACKOFF_MS_MAX };
    assert_eq!(backoff.delay_ms(1), limits::BACKOFF_MS_MAX);
    assert_eq!(backoff.delay_ms(u32::MAX), limits::BACKOFF_MS_MAX);
    let zero = Backoff { base_ms: 0, max_ms: 0 };
    assert_eq!(zero.delay_ms(7), 0);
    assert_eq!(Backoff::default().delay_ms(1), 1_000);
    assert_eq!(Backoff::default().delay_ms(3), 4_000);
    assert_eq!(Backoff::default().delay_ms(13), 3_600_000);
}

#[test]
fn fail_after_max_attempts_is_dead() {
    let backoff = Backoff { base_ms: 0, max_ms: 0 };
    let mut jobs = with_queue(QueueConfig { backoff, max_attempts: 3, ..config() });
    let id = submit(&mut jobs, 0, 0);
    for attempt in 1..=3 {
        let leased = lease_one(&mut jobs, attempt);
        let failed = fail(&mut jobs, attempt, id, token(&leased)).unwrap();
        let expected = if attempt < 3 { JobState::Queued } else { JobState::Dead };
        assert_eq!(failed.state, expected, "after attempt {attempt}");
    }
    let dead = jobs.job(id).unwrap();
    assert_eq!((dead.attempts, dead.errors.len(), dead.finished_at_ms), (3, 3, Some(3)));
    assert!(lease(&mut jobs, 10, 1).0.is_empty());
}

#[test]
fn fail_with_retry_false_is_dead_at_once() {
    let mut jobs = with_queue(config());
    let id = submit(&mut jobs, 0, 0);
    let leased = lease_one(&mut jobs, 0);
    let command = JobCommand::Fail {
        id,
        lease_token: token(&leased),
        error: "bad input".into(),
        retry: false,
        retry_after_ms: None,
    };
    let dead = job_command(&mut jobs, 0, command).unwrap();
    assert_eq!((dead.state, dead.attempts), (JobState::Dead, 1));
}

#[test]
fn fail_retry_after_overrides_the_backoff() {
    let mut jobs = with_queue(config());
    let id = submit(&mut jobs, 0, 0);
    let leased = lease_one(&mut jobs, 0);
    let command = JobCommand::Fail {
        id,
        lease_token: token(&leased),
        error: "429".into(),
        retry: true,
        retry_after_ms: Some(42),
    };
    let failed = job_command(&mut jobs, 100, command).unwrap();
    assert_eq!((failed.state, failed.run_at_ms), (JobState::Scheduled, 142));
    // retry_after 0: queued at once.
    let leased = lease_one(&mut jobs, 142);
    let command =
        JobCommand::Fail { id, lease_token: token(&leased), error: "429".into(), retry: true, retry_after_ms: Some(0) };
    assert_eq!(job_command(&mut jobs, 150, command).unwrap().state, JobState::Queued);
}

#[test]
fn attempt_errors_keep_only_the_latest() {
    let backoff = Backoff { base_ms: 0, max_ms: 0 };
    let attempts = limits::ERRORS_KEPT_MAX as u32 + 5;
    let mut jobs = with_queue(QueueConfig { backoff, max_attempts: attempts, ..config() });
    let id = submit(&mut jobs, 0, 0);
    for _ in 0..attempts {
        let leased = lease_one(&mut jobs, 0);
        fail(&mut jobs, 0, id, token(&leased)).unwrap();
    }
    let errors = jobs.job(id).unwrap().errors;
    assert_eq!(errors.len(), limits::ERRORS_KEPT_MAX);
    assert_eq!(errors.first().unwrap().attempt, 6);
    assert_eq!(errors.last().unwrap().attempt, attempts);
}

#[test]
fn release_requeues_without_counting_an_attempt() {
    let mut jobs = with_queue(QueueConfig { max_attempts: 1, ..config() });
    let id = submit(&mut jobs, 0, 0);
    for _ in 0..3 {
        let leased = lease_one(&mut jobs, 0);
        assert_eq!(leased.attempts, 1);
        let released = job_command(&mut jobs, 0, JobCommand::Release { id, lease_token: token(&leased) }).unwrap();
        assert_eq!((released.state, released.attempts, released.lease), (JobState::Queued, 0, None));
        assert!(released.errors.is_empty());
    }
    let leased = lease_one(&mut jobs, 0);
    complete(&mut jobs, 0, id, token(&leased)).unwrap();
}

#[test]
fn released_job_keeps_its_place_in_line() {
    let mut jobs = with_queue(config());
    let first = submit(&mut jobs, 0, 0);
    let second = submit(&mut jobs, 0, 0);
    let leased = lease_one(&mut jobs, 0);
    assert_eq!(leased.id, first);
    job_command(&mut jobs, 0, JobCommand::Release { id: first, lease_token: token(&leased) }).unwrap();
    assert_eq!(ids(&lease(&mut jobs, 0, 2).0), vec![first, second]);
}

#[test]
fn expired_lease_counts_as_attempt_then_dead() {
    let backoff = Backoff { base_ms: 100, max_ms: 100 };
    let mut jobs = with_queue(QueueConfig { lease_ttl_ms: 1_000, max_attempts: 2, backoff, ..config() });
    let id = submit(&mut jobs, 0, 0);
    let first = lease_one(&mut jobs, 0);
    assert_eq!(jobs.next_deadline_ms(), Some(1_000));
    jobs.advance_time(999);
    assert_eq!(state(&jobs, id), JobState::Leased);
    jobs.advance_time(1_000);
    let job = jobs.job(id).unwrap();
    assert_eq!((job.state, job.run_at_ms, job.lease), (JobState::Scheduled, 1_100, None));
    assert_eq!(job.errors, vec![AttemptError { attempt: 1, at_ms: 1_000, message: "lease expired".into() }]);
    let second = lease_one(&mut jobs, 1_100);
    assert!(token(&second) > token(&first));
    jobs.advance_time(2_100);
    let job = jobs.job(id).unwrap();
    assert_eq!((job.state, job.attempts, job.finished_at_ms), (JobState::Dead, 2, Some(2_100)));
    assert_eq!(job.errors.len(), 2);
}

#[test]
fn lease_is_stale_from_the_instant_it_expires() {
    let mut jobs = with_queue(QueueConfig { lease_ttl_ms: 1_000, ..config() });
    let id = submit(&mut jobs, 0, 0);
    let leased = lease_one(&mut jobs, 0);
    job_command(&mut jobs, 999, JobCommand::Heartbeat { id, lease_token: token(&leased), lease_ttl_ms: Some(1) })
        .unwrap();
    // Expires at 1000: a heartbeat at 1000 is too late, even without a Tick in between.
    let late = JobCommand::Heartbeat { id, lease_token: token(&leased), lease_ttl_ms: None };
    assert_error(jobs.apply(1_000, &late), JobError::STALE_LEASE, Some("lease_token"));
    assert_eq!(state(&jobs, id), JobState::Scheduled);
}

#[test]
fn long_time_gap_is_replayed_in_time_order() {
    // Lease expires at 1000, retry due at 1100, second lease never taken: one advance to
    // 5000 must leave the job queued with one error, the same as stepping through.
    let backoff = Backoff { base_ms: 100, max_ms: 100 };
    let mut jobs = with_queue(QueueConfig { lease_ttl_ms: 1_000, backoff, retention_ms: 0, ..config() });
    let id = submit(&mut jobs, 0, 0);
    lease_one(&mut jobs, 0);
    let mut stepped = jobs.clone();
    for now_ms in (0..=5_000).step_by(50) {
        stepped.advance_time(now_ms);
    }
    jobs.advance_time(5_000);
    assert_eq!(jobs, stepped);
    assert_eq!(state(&jobs, id), JobState::Queued);
    // With max_attempts 1 and retention 0, expiry makes it dead and then purges it at once.
    let mut jobs = with_queue(QueueConfig { lease_ttl_ms: 1_000, max_attempts: 1, retention_ms: 0, ..config() });
    let id = submit(&mut jobs, 0, 0);
    lease_one(&mut jobs, 0);
    jobs.advance_time(5_000);
    assert!(jobs.job(id).is_none());
    assert_eq!(jobs.next_deadline_ms(), None);
    jobs.check_invariants();
}

// ---- cancel and retry ----

#[test]
fn cancel_works_on_every_unfinished_state() {
    let mut jobs = with_queue(config());
    let scheduled = submit_new(&mut jobs, 0, NewJob { delay_ms: Some(100), ..NewJob::default() }).id;
    let leased_id = submit(&mut jobs, 0, 1);
    let queued = submit(&mut jobs, 0, 0);
    let leased = lease_one(&mut jobs, 0);
    assert_eq!(leased.id, leased_id);
    for id in [scheduled, leased_id, queued] {
        let cancelled = job_command(&mut jobs, 5, JobCommand::Cancel { id }).unwrap();
        assert_eq!((cancelled.state, cancelled.finished_at_ms), (JobState::Cancelled, Some(5)));
        // The leased one's lease is held until its worker lets go (see below).
        assert_eq!(cancelled.lease.is_some(), id == leased_id);
    }
    job_command(&mut jobs, 5, JobCommand::Release { id: leased_id, lease_token: token(&leased) }).unwrap();
    assert_eq!(jobs.next_deadline_ms(), Some(5 + limits::RETENTION_DEFAULT_MS), "only purges left");
    jobs.check_invariants();
}

#[test]
fn cancel_of_a_leased_job_keeps_its_slot_until_the_worker_lets_go() {
    let mut jobs = with_queue(QueueConfig { concurrency: Some(1), ..config() });
    let a = submit(&mut jobs, 0, 0);
    let b = submit(&mut jobs, 0, 0);
    let leased = lease_one(&mut jobs, 0);
    let cancelled = job_command(&mut jobs, 5, JobCommand::Cancel { id: a }).unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(cancelled.lease.as_ref().map(|lease| lease.lease_token), Some(token(&leased)), "held");
    // Its worker may still be calling out: nobody else gets the slot.
    let (none, blocked) = lease(&mut jobs, 6, 1);
    assert!(none.is_empty());
    assert_eq!(blocked.map(|blocked| blocked.reason), Some(LeaseBlockReason::Concurrency));
    assert_eq!(jobs.queue(Q, 6).unwrap().leases_held, 1);
    // The token works for nothing but letting go.
    let t = token(&leased);
    for command in [
        JobCommand::Complete { id: a, lease_token: t, result: None },
        JobCommand::Heartbeat { id: a, lease_token: t, lease_ttl_ms: None },
        JobCommand::Fail { id: a, lease_token: t, error: "x".into(), retry: true, retry_after_ms: None },
    ] {
        assert_rejected_unchanged(&mut jobs, 6, command, JobError::STALE_LEASE);
    }
    let stale = JobCommand::Release { id: a, lease_token: t + 100 };
    assert_rejected_unchanged(&mut jobs, 6, stale, JobError::STALE_LEASE);
    let released = job_command(&mut jobs, 7, JobCommand::Release { id: a, lease_token: t }).unwrap();
    assert_eq!((released.state, released.lease, released.attempts), (JobState::Cancelled, None, 1));
    assert_eq!(lease_one(&mut jobs, 8).id, b);
    // Letting go twice is a stale token.
    assert_rejected_unchanged(&mut jobs, 8, JobCommand::Release { id: a, lease_token: t }, JobError::STALE_LEASE);
    jobs.check_invariants();
}

#[test]
fn a_cancelled_jobs_held_lease_ends_at_its_expiry_and_then_its_retention_runs() {
    let retention_ms = 5_000;
    let mut jobs = with_queue(QueueConfig { concurrency: Some(1), lease_ttl_ms: 1_000, retention_ms, ..config() });
    let a = submit(&mut jobs, 0, 0);
    let b = submit(&mut jobs, 0, 0);
    lease_one(&mut jobs, 0);
    job_command(&mut jobs, 100, JobCommand::Cancel { id: a }).unwrap();
    assert_eq!(jobs.next_deadline_ms(), Some(1_000), "the held lease's end");
    assert!(lease(&mut jobs, 999, 1).0.is_empty(), "slot held until the lease ends");
    jobs.advance_time(1_000);
    let job = jobs.job(a).expect("kept for its retention");
    assert_eq!((job.state, job.lease, job.attempts), (JobState::Cancelled, None, 1), "no attempt failed");
    assert!(job.errors.is_empty());
    assert_eq!(lease_one(&mut jobs, 1_000).id, b);
    // Retention counts from the cancel.
    jobs.advance_time(5_099);
    assert!(jobs.job(a).is_some());
    jobs.advance_time(5_100);
    assert!(jobs.job(a).is_none());
    jobs.check_invariants();
}

#[test]
fn a_held_lease_past_its_retention_is_purged_when_it_ends() {
    let mut jobs = with_queue(QueueConfig { lease_ttl_ms: 1_000, retention_ms: 0, ..config() });
    let a = submit(&mut jobs, 0, 0);
    lease_one(&mut jobs, 0);
    job_command(&mut jobs, 100, JobCommand::Cancel { id: a }).unwrap();
    jobs.advance_time(999);
    assert!(jobs.job(a).is_some(), "kept while its lease is held");
    jobs.advance_time(1_000);
    assert!(jobs.job(a).is_none());
    jobs.check_invariants();
}

#[test]
fn a_queued_jobs_cancel_frees_nothing_it_did_not_hold() {
    let mut jobs = with_queue(QueueConfig { concurrency: Some(1), ..config() });
    let a = submit(&mut jobs, 0, 0);
    let b = submit(&mut jobs, 0, 0);
    job_command(&mut jobs, 0, JobCommand::Cancel { id: a }).unwrap();
    assert_eq!(jobs.job(a).unwrap().lease, None);
    assert_eq!(lease_one(&mut jobs, 0).id, b);
}

#[test]
fn cancel_of_a_finished_job_is_invalid_state() {
    let mut jobs = with_queue(config());
    let id = submit(&mut jobs, 0, 0);
    job_command(&mut jobs, 0, JobCommand::Cancel { id }).unwrap();
    assert_rejected_unchanged(&mut jobs, 0, JobCommand::Cancel { id }, JobError::INVALID_STATE);
    let done = submit(&mut jobs, 0, 0);
    let leased = lease_one(&mut jobs, 0);
    complete(&mut jobs, 0, done, token(&leased)).unwrap();
    assert_rejected_unchanged(&mut jobs, 0, JobCommand::Cancel { id: done }, JobError::INVALID_STATE);
    assert_rejected_unchanged(&mut jobs, 0, JobCommand::Cancel { id: 99 }, JobError::NOT_FOUND);
}

#[test]
fn retry_of_a_dead_job_requeues_it_with_fresh_attempts() {
    let mut jobs = with_queue(QueueConfig { max_attempts: 2, backoff: Backoff { base_ms: 0, max_ms: 0 }, ..config() });
    let id = submit(&mut jobs, 0, 0);
    for _ in 0..2 {
        let leased = lease_one(&mut jobs, 0);
        fail(&mut jobs, 0, id, token(&leased)).unwrap();
    }
    assert_eq!(state(&jobs, id), JobState::Dead);
    let retried = job_command(&mut jobs, 10, JobCommand::Retry { id }).unwrap();
    assert_eq!((retried.state, retried.attempts, retried.max_attempts), (JobState::Queued, 2, 4));
    assert_eq!((retried.finished_at_ms, retried.run_at_ms, retried.errors.len()), (None, 10, 2));
    assert_eq!(jobs.next_deadline_ms(), None, "no purge pending for a live job");
    let leased = lease_one(&mut jobs, 10);
    assert_eq!(leased.attempts, 3);
    complete(&mut jobs, 10, id, token(&leased)).unwrap();
    jobs.check_invariants();
}

#[test]
fn retry_dead_requeues_a_queues_dead_jobs_oldest_first_in_rounds() {
    let mut jobs = with_queue(QueueConfig { max_attempts: 1, backoff: Backoff { base_ms: 0, max_ms: 0 }, ..config() });
    let ids: Vec<JobId> = (0..5).map(|_| submit(&mut jobs, 0, 0)).collect();
    // Four die; the fifth stays queued.
    for _ in 0..4 {
        let leased = lease_one(&mut jobs, 0);
        fail(&mut jobs, 0, leased.id, token(&leased)).unwrap();
    }
    assert_eq!(state(&jobs, ids[4]), JobState::Queued);
    let round = |jobs: &mut Jobs, max: u32| match jobs.apply(10, &JobCommand::RetryDead { queue: Q.into(), max, after: 0 }) {
        Ok(JobResponse::RetriedDead { ids, dead_left, .. }) => (ids, dead_left),
        other => panic!("{other:?}"),
    };
    assert_eq!(round(&mut jobs, 3), (ids[..3].to_vec(), 1));
    for &id in &ids[..3] {
        let job = jobs.job(id).unwrap();
        assert_eq!((job.state, job.attempts, job.max_attempts, job.finished_at_ms), (JobState::Queued, 1, 2, None));
    }
    assert_eq!(round(&mut jobs, 3), (vec![ids[3]], 0));
    assert_eq!(round(&mut jobs, 3), (vec![], 0));
    // After a cursor: the first two die again; a round after the last id taken skips them.
    for _ in 0..2 {
        let leased = lease_one(&mut jobs, 10);
        let leased = if leased.id == ids[4] { lease_one(&mut jobs, 10) } else { leased };
        fail(&mut jobs, 10, leased.id, token(&leased)).unwrap();
    }
    let after = |jobs: &mut Jobs, after: JobId| match jobs.apply(10, &JobCommand::RetryDead { queue: Q.into(), max: 5, after }) {
        Ok(JobResponse::RetriedDead { ids, dead_left, .. }) => (ids, dead_left),
        other => panic!("{other:?}"),
    };
    let dead_now: Vec<JobId> = ids.iter().copied().filter(|&id| state(&jobs, id) == JobState::Dead).collect();
    assert_eq!(dead_now.len(), 2, "{dead_now:?}");
    assert_eq!(after(&mut jobs, dead_now[1]), (vec![], 2));
    assert_eq!(after(&mut jobs, dead_now[0]), (vec![dead_now[1]], 1));
    jobs.check_invariants();
    // Bad input changes nothing.
    assert_rejected_unchanged(&mut jobs, 0, JobCommand::RetryDead { queue: Q.into(), max: 0, after: 0 }, JobError::INVALID);
    assert_rejected_unchanged(&mut jobs, 0, JobCommand::RetryDead { queue: Q.into(), max: 1_001, after: 0 }, JobError::INVALID);
    assert_rejected_unchanged(&mut jobs, 0, JobCommand::RetryDead { queue: "nope".into(), max: 1, after: 0 }, JobError::NOT_FOUND);
}

#[test]
fn retry_of_a_job_that_is_not_dead_is_invalid_state() {
    let mut jobs = with_queue(config());
    let id = submit(&mut jobs, 0, 0);
    assert_rejected_unchanged(&mut jobs, 0, JobCommand::Retry { id }, JobError::INVALID_STATE);
    job_command(&mut jobs, 0, JobCommand::Cancel { id }).unwrap();
    assert_rejected_unchanged(&mut jobs, 0, JobCommand::Retry { id }, JobError::INVALID_STATE);
    assert_rejected_unchanged(&mut jobs, 0, JobCommand::Retry { id: 42 }, JobError::NOT_FOUND);
}

// ---- retention and capacity ----

#[test]
fn finished_jobs_are_removed_after_retention() {
    let mut jobs = with_queue(QueueConfig { retention_ms: 1_000, ..config() });
    let id = submit(&mut jobs, 0, 0);
    let leased = lease_one(&mut jobs, 0);
    complete(&mut jobs, 500, id, token(&leased)).unwrap();
    assert_eq!(jobs.next_deadline_ms(), Some(1_500));
    jobs.advance_time(1_499);
    assert!(jobs.job(id).is_some());
    jobs.advance_time(1_500);
    assert!(jobs.job(id).is_none());
    assert_eq!(jobs.queue(Q, 1_500).unwrap().counts, JobCounts::default());
    assert_eq!(jobs.next_deadline_ms(), None);
}

#[test]
fn retention_is_fixed_when_the_job_finishes() {
    let mut jobs = with_queue(QueueConfig { retention_ms: 1_000, ..config() });
    let id = submit(&mut jobs, 0, 0);
    job_command(&mut jobs, 0, JobCommand::Cancel { id }).unwrap();
    put_queue(&mut jobs, 0, Q, QueueConfig { retention_ms: 10, ..config() }).unwrap();
    jobs.advance_time(999);
    assert!(jobs.job(id).is_some());
    jobs.advance_time(1_000);
    assert!(jobs.job(id).is_none());
}

#[test]
fn next_deadline_is_the_earliest_lease_schedule_or_purge() {
    let mut jobs = with_queue(QueueConfig { lease_ttl_ms: 3_000, retention_ms: 5_000, ..config() });
    assert_eq!(jobs.next_deadline_ms(), None);
    submit_new(&mut jobs, 0, NewJob { delay_ms: Some(4_000), ..NewJob::default() });
    assert_eq!(jobs.next_deadline_ms(), Some(4_000));
    submit(&mut jobs, 0, 0);
    lease_one(&mut jobs, 0);
    assert_eq!(jobs.next_deadline_ms(), Some(3_000));
    let cancelled = submit(&mut jobs, 0, 0);
    job_command(&mut jobs, 0, JobCommand::Cancel { id: cancelled }).unwrap();
    assert_eq!(jobs.next_deadline_ms(), Some(3_000));
    jobs.advance_time(3_000);
    assert_eq!(jobs.next_deadline_ms(), Some(4_000), "the retry after expiry, backoff 1s");
}

#[test]
fn full_store_drops_the_finished_job_due_first() {
    let mut jobs = Jobs::with_jobs_max(3);
    put_queue(&mut jobs, 0, Q, QueueConfig { retention_ms: 1_000, ..config() }).unwrap();
    put_queue(&mut jobs, 0, "short", QueueConfig { retention_ms: 10, ..config() }).unwrap();
    let long_kept = submit(&mut jobs, 0, 0);
    job_command(&mut jobs, 0, JobCommand::Cancel { id: long_kept }).unwrap();
    let short_kept = submit_jobs(&mut jobs, 0, "short", vec![NewJob::default()]).unwrap()[0].id;
    job_command(&mut jobs, 0, JobCommand::Cancel { id: short_kept }).unwrap();
    let live = submit(&mut jobs, 0, 0);
    let newest = submit(&mut jobs, 1, 0);
    assert!(jobs.job(short_kept).is_none(), "purge due at 10 goes first");
    assert!(jobs.job(long_kept).is_some());
    let newest2 = submit(&mut jobs, 2, 0);
    assert!(jobs.job(long_kept).is_none());
    assert_eq!(jobs.job_count(), 3);
    // Only unfinished jobs left: the next submit fails and changes nothing.
    let full = JobCommand::Submit { queue: Q.into(), jobs: vec![NewJob::default()] };
    assert_rejected_unchanged(&mut jobs, 3, full, JobError::CAPACITY_EXCEEDED);
    for id in [live, newest, newest2] {
        assert_eq!(state(&jobs, id), JobState::Queued);
    }
    jobs.check_invariants();
}

#[test]
fn queue_count_is_bounded() {
    let mut jobs = Jobs::default();
    for index in 0..limits::QUEUES_MAX {
        put_queue(&mut jobs, 0, &format!("q{index}"), config()).unwrap();
    }
    assert_rejected_unchanged(
        &mut jobs,
        0,
        JobCommand::PutQueue { queue: "one-more".into(), config: config() },
        JobError::CAPACITY_EXCEEDED,
    );
    let submit = JobCommand::Submit { queue: "one-more".into(), jobs: vec![NewJob::default()] };
    assert_rejected_unchanged(&mut jobs, 0, submit, JobError::CAPACITY_EXCEEDED);
    // Existing queues still take jobs and changes.
    put_queue(&mut jobs, 0, "q7", QueueConfig { paused: true, ..config() }).unwrap();
    assert_eq!(jobs.queues(0).len(), limits::QUEUES_MAX);
}

// ---- counters ----

#[test]
fn counter_increments_return_the_new_value() {
    let mut jobs = Jobs::default();
    assert_eq!(jobs.counter("hits"), None);
    let increment = |jobs: &mut Jobs, by| jobs.apply(0, &JobCommand::IncrementCounter { name: "hits".into(), by });
    assert_eq!(increment(&mut jobs, 1).unwrap(), JobResponse::Counter { name: "hits".into(), value: 1 });
    assert_eq!(increment(&mut jobs, 41).unwrap(), JobResponse::Counter { name: "hits".into(), value: 42 });
    assert_eq!(jobs.counter("hits"), Some(42));
}

#[test]
fn counter_by_zero_bad_name_and_overflow_change_nothing() {
    let mut jobs = Jobs::default();
    jobs.apply(0, &JobCommand::IncrementCounter { name: "c".into(), by: u64::MAX - 1 }).unwrap();
    assert_rejected_unchanged(
        &mut jobs,
        0,
        JobCommand::IncrementCounter { name: "c".into(), by: 0 },
        JobError::INVALID,
    );
    assert_rejected_unchanged(
        &mut jobs,
        0,
        JobCommand::IncrementCounter { name: "a/b".into(), by: 1 },
        JobError::INVALID,
    );
    assert_rejected_unchanged(
        &mut jobs,
        0,
        JobCommand::IncrementCounter { name: "c".into(), by: 2 },
        JobError::COUNTER_OVERFLOW,
    );
    jobs.apply(0, &JobCommand::IncrementCounter { name: "c".into(), by: 1 }).unwrap();
    assert_eq!(jobs.counter("c"), Some(u64::MAX));
}

#[test]
fn a_deleted_counter_reads_as_never_incremented_and_frees_its_place() {
    let mut jobs = Jobs::default();
    jobs.apply(0, &JobCommand::IncrementCounter { name: "c".into(), by: 5 }).unwrap();
    let delete = |jobs: &mut Jobs, name: &str| jobs.apply(0, &JobCommand::DeleteCounter { name: name.into() });
    assert_eq!(delete(&mut jobs, "c").unwrap(), JobResponse::Counter { name: "c".into(), value: 5 });
    assert_eq!(jobs.counter("c"), None);
    assert_eq!(delete(&mut jobs, "c").unwrap(), JobResponse::Counter { name: "c".into(), value: 0 }, "again: nothing to delete");
    assert_rejected_unchanged(&mut jobs, 0, JobCommand::DeleteCounter { name: "a/b".into() }, JobError::INVALID);
    for i in 0..COUNTERS_MAX {
        jobs.counters.insert(format!("n{i}"), 1);
    }
    let full = jobs.apply(0, &JobCommand::IncrementCounter { name: "new".into(), by: 1 }).unwrap_err();
    assert_eq!(full.code, JobError::CAPACITY_EXCEEDED);
    delete(&mut jobs, "n0").unwrap();
    assert_eq!(
        jobs.apply(0, &JobCommand::IncrementCounter { name: "new".into(), by: 1 }).unwrap(),
        JobResponse::Counter { name: "new".into(), value: 1 },
        "a deleted counter's place is free for a new one"
    );
}

// ---- serialization ----

#[test]
fn state_survives_a_serde_round_trip() {
    let mut jobs = with_queue(QueueConfig { rate: Some(RateLimit { limit: 1, per_ms: 10, burst: 2 }), ..config() });
    submit(&mut jobs, 0, 3);
    submit_new(&mut jobs, 0, NewJob { delay_ms: Some(50), ..NewJob::default() });
    let leased = lease_one(&mut jobs, 0);
    fail(&mut jobs, 1, leased.id, token(&leased)).unwrap();
    jobs.apply(1, &JobCommand::IncrementCounter { name: "n".into(), by: 3 }).unwrap();
    let json = serde_json::to_string(&jobs).unwrap();
    let back: Jobs = serde_json::from_str(&json).unwrap();
    assert_eq!(back, jobs);
    back.check_invariants();
}

// ---- memory ----

#[test]
#[cfg(target_pointer_width = "64")]
fn stored_job_record_stays_small() {
    // A queued job costs this record plus its payload, a 16-byte map slot and two index
    // entries; growing it is a deliberate choice (docs and the report cite the size).
    assert_eq!(std::mem::size_of::<job::StoredJob>(), 72);
}

#[test]
fn every_job_change_is_logged_in_order_whatever_made_it() {
    let mut jobs = with_queue(QueueConfig { lease_ttl_ms: 1_000, ..config() });
    let start = jobs.last_change_seq();
    let id = submit(&mut jobs, 0, 0);
    let leased = lease_one(&mut jobs, 10);
    assert_eq!(leased.id, id);
    // The lease expires by time alone: that is a change too.
    jobs.advance_time(5_000);
    let changes = jobs.changes_after(start, 100);
    assert!(!changes.missed);
    let logged: Vec<JobId> = changes.changes.iter().map(|&(_, id)| id).collect();
    assert!(logged.len() >= 3, "submit, lease and expiry are logged: {logged:?}");
    assert!(logged.iter().all(|&logged_id| logged_id == id));
    let seqs: Vec<u64> = changes.changes.iter().map(|&(seq, _)| seq).collect();
    assert!(seqs.windows(2).all(|pair| pair[1] == pair[0] + 1), "consecutive: {seqs:?}");
    assert_eq!(*seqs.last().unwrap(), jobs.last_change_seq());
    assert!(jobs.changes_after(jobs.last_change_seq(), 100).changes.is_empty());
}

#[test]
fn job_change_log_is_bounded_and_reports_what_was_missed() {
    let mut jobs = with_queue(config());
    for _ in 0..(JOB_CHANGES_KEPT_MAX + 10) {
        submit(&mut jobs, 0, 0);
    }
    let all = jobs.changes_after(0, usize::MAX);
    assert!(all.missed, "the first changes are gone");
    assert_eq!(all.changes.len(), JOB_CHANGES_KEPT_MAX);
    let recent = jobs.changes_after(jobs.last_change_seq() - 5, usize::MAX);
    assert!(!recent.missed);
    assert_eq!(recent.changes.len(), 5);
    assert_eq!(jobs.changes_after(jobs.last_change_seq() - 5, 2).changes.len(), 2);
}

// ---- the tally /metrics counts ----

fn tally(jobs: &Jobs) -> Vec<(&'static str, u64)> {
    let tallies = jobs.queue_tallies();
    assert_eq!(tallies.len(), 1);
    assert_eq!(tallies[0].0, Q);
    tallies[0].1.events().into_iter().filter(|&(_, count)| count > 0).collect()
}

#[test]
fn the_tally_counts_each_event_once_and_leaves_rejected_commands_out() {
    let mut jobs = with_queue(QueueConfig { max_attempts: 2, lease_ttl_ms: 1_000, ..config() });
    let (a, b, c, d) = (submit(&mut jobs, 0, 4), submit(&mut jobs, 0, 3), submit(&mut jobs, 0, 2), submit(&mut jobs, 0, 1));
    let leased = lease_one(&mut jobs, 0);
    assert_eq!(leased.id, a);
    complete(&mut jobs, 0, a, token(&leased)).unwrap();
    assert!(complete(&mut jobs, 0, a, token(&leased)).is_err(), "a stale token counts nothing");
    let leased = lease_one(&mut jobs, 0);
    assert_eq!(leased.id, b);
    job_command(&mut jobs, 0, JobCommand::Release { id: b, lease_token: token(&leased) }).unwrap();
    let leased = lease_one(&mut jobs, 0);
    job_command(
        &mut jobs,
        0,
        JobCommand::Fail { id: b, lease_token: token(&leased), error: "no".into(), retry: false, retry_after_ms: None },
    )
    .unwrap();
    assert_eq!(state(&jobs, b), JobState::Dead);
    job_command(&mut jobs, 0, JobCommand::Retry { id: b }).unwrap();
    job_command(&mut jobs, 0, JobCommand::Cancel { id: d }).unwrap();
    // b and c are queued; both leases end unanswered.
    let (leased, _) = lease(&mut jobs, 0, 2);
    assert_eq!(ids(&leased), vec![b, c]);
    jobs.advance_time(1_000);
    assert_eq!(
        tally(&jobs),
        vec![
            ("submitted", 4),
            ("leased", 5),
            ("succeeded", 1),
            ("failed", 1),
            ("lease_expired", 2),
            ("released", 1),
            ("dead", 1),
            ("cancelled", 1),
            ("retried", 1),
        ]
    );
    // Each expired lease was a first attempt (a retry from dead starts b's count again).
    assert_eq!((state(&jobs, b), state(&jobs, c)), (JobState::Scheduled, JobState::Scheduled));
}

#[test]
fn the_tally_is_not_state_and_skips_the_log_replayed_at_start() {
    let mut live = crate::State::new(crate::Config::default());
    let batch = crate::Batch {
        time_ms: 1,
        commands: vec![crate::Command::Jobs(JobCommand::Submit { queue: Q.into(), jobs: vec![NewJob::default()] })],
    };
    live.apply_batch(&batch);
    let mut replayed = crate::State::new(crate::Config::default());
    replayed.apply_batch_unobserved(&batch);
    assert_eq!(live.jobs.queue_tallies()[0].1.submitted, 1);
    assert_eq!(replayed.jobs.queue_tallies()[0].1.submitted, 0, "re-applied at start-up: not counted");
    assert_eq!(live, replayed, "the tally is no part of the state");
    replayed.apply_batch(&crate::Batch { time_ms: 2, ..batch });
    assert_eq!(replayed.jobs.queue_tallies()[0].1.submitted, 1, "counted again once live");
}
