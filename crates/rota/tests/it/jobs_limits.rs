//! A queue with `concurrency: 1` and `rate: 5/1s` (burst 1) fed by three submitting threads
//! (each running `rota job submit` processes one after the other, mixed priorities) and
//! drained by four `rota worker` processes (each asking for two jobs at a time, so the
//! server, not the workers, has to enforce the limits). The workers run a script that
//! appends its start and end times (ns) and the job's lease to a log. Then:
//!
//! - **intervals never overlap**: the script starts after its lease was granted and ends
//!   before its `complete` is sent; with concurrency 1 the next lease is only granted after
//!   that complete, so sorted by start, each run ends before the next one starts. Both
//!   times come from the same clock (`date +%s%N`), so no allowance is needed.
//! - **the rate holds**: checked on the lease grant times, which the server stamps (its own
//!   integer-ms clock): `lease_expires_at - lease_ttl`, the worker asking for a fixed ttl
//!   and handing the expiry to the script. For any two leases i < j (in grant order) the
//!   window [t_i, t_j] holds j - i + 1 leases, so burst + 5 × (t_j - t_i + 1 ms)/1 s must
//!   allow that many; the 1 ms is the rendering granularity (a time shown as t ms is in
//!   [t, t+1)). The script's own start times are not used for the rate: process start-up
//!   adds a variable delay that can bring two starts closer than their leases were.
//! - **priority order**: whenever job b was leased while a job a that should go first
//!   (higher priority, or equal priority and lower id) was already queued (created at a
//!   strictly earlier ms than b's lease), a was leased before b. Lease order is the order
//!   of the fencing tokens.
//! - **every result is stored**: each job is `succeeded` with the result its run printed,
//!   computed here from the submitted payload.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::crash::{seed, Rng};
use crate::harness::{Kind, Server};
use crate::jobs_util::{
    args, get_job, read_lines, rota, script, try_get_queue, unix_ms, wait_until, Proc,
};

const QUEUE: &str = "limited";
const SUBMITTERS: u64 = 3;
const JOBS_PER_SUBMITTER: u64 = 6;
const WORKERS: usize = 4;
const LEASE_TTL_MS: i64 = 10_000;
const RATE_PER_SECOND: i64 = 5;
const BURST: i64 = 1;
const PRIORITIES: [i64; 4] = [0, 1, 5, 10];

/// One run of the script, as logged.
#[derive(Debug, Clone)]
struct Run {
    start_ns: u128,
    end_ns: Option<u128>,
    token: u64,
    /// The server's grant time of the lease (ms).
    leased_ms: i64,
}

#[test]
fn jobs_one_at_a_time_within_the_rate_in_priority_order_with_results_stored() {
    let seed = seed();
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("runs.log");
    let worker_script = script(
        dir.path(),
        "work.sh",
        r#"payload=$(cat)
echo "start $(date +%s%N) $ROTA_JOB_ID $ROTA_LEASE_TOKEN $ROTA_LEASE_EXPIRES_AT" >> "$RUN_LOG"
sleep 0.03
echo "end $(date +%s%N) $ROTA_JOB_ID" >> "$RUN_LOG"
printf '{"id": %s, "echo": %s}\n' "$ROTA_JOB_ID" "$payload"
"#,
    );
    rota(
        dir.path(),
        &args(
            &server,
            &[
                "queue",
                "set",
                QUEUE,
                "--concurrency",
                "1",
                "--rate",
                "5/1s",
                "--burst",
                "1",
            ],
        ),
    )
    .expect_success();

    let lease_ttl = format!("{LEASE_TTL_MS}ms");
    let mut workers: Vec<Proc> = (0..WORKERS)
        .map(|n| {
            let worker_args = args(
                &server,
                &[
                    "worker",
                    "--queue",
                    QUEUE,
                    "--concurrency",
                    "2",
                    "--lease-ttl",
                    &lease_ttl,
                    "--poll-wait",
                    "2s",
                ],
            );
            let mut worker_args = worker_args;
            worker_args.extend(["--".into(), worker_script.display().to_string()]);
            Proc::spawn(
                dir.path(),
                &format!("worker{n}"),
                &worker_args,
                &[("RUN_LOG", log.display().to_string())],
            )
        })
        .collect();

    // Submit from three threads at once; remember each job's payload and priority.
    let submitted: BTreeMap<u64, (Value, i64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..SUBMITTERS)
            .map(|submitter| {
                let server = &server;
                let dir = dir.path();
                scope.spawn(move || {
                    let mut rng = Rng::new(seed ^ submitter.wrapping_mul(0x9E37_79B9));
                    let mut mine = Vec::new();
                    for n in 0..JOBS_PER_SUBMITTER {
                        let payload = json!({"submitter": submitter, "n": n});
                        let priority =
                            PRIORITIES[rng.range(0, PRIORITIES.len() as u64 - 1) as usize];
                        let out = rota(
                            dir,
                            &args(
                                server,
                                &[
                                    "job",
                                    "submit",
                                    QUEUE,
                                    "--payload",
                                    &payload.to_string(),
                                    "--priority",
                                    &priority.to_string(),
                                    "-o",
                                    "json",
                                ],
                            ),
                        )
                        .expect_success();
                        let job = out.json();
                        assert_eq!(job["state"], "queued", "seed {seed}: {job}");
                        mine.push((job["id"].as_u64().expect("job id"), (payload, priority)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("submitter"))
            .collect()
    });
    let total = SUBMITTERS * JOBS_PER_SUBMITTER;
    assert_eq!(
        submitted.len() as u64,
        total,
        "seed {seed}: job ids must be distinct"
    );

    // Five leases a second with burst 1: about (total - 1) / 5 s; allow generously.
    wait_until(Duration::from_secs(60), "every job to succeed", || {
        let queue = try_get_queue(&server, QUEUE)?;
        (queue["counts"]["succeeded"].as_u64() == Some(total)).then_some(())
    });
    // Idle workers stop on SIGTERM, promptly and cleanly.
    for worker in &workers {
        worker.terminate();
    }
    for worker in &mut workers {
        let status = worker.wait_exit(Duration::from_secs(20));
        assert!(
            status.success(),
            "seed {seed}: {} exited with {status}; stderr:\n{}",
            worker.name,
            worker.stderr()
        );
    }

    let runs = parse_runs(&read_lines(&log), seed);
    check_each_job_ran_once(&runs, &submitted, seed);
    check_runs_never_overlap(&runs, seed);
    check_rate_on_lease_times(&runs, seed);
    let jobs: BTreeMap<u64, Value> = submitted
        .keys()
        .map(|&id| (id, get_job(&server, id)))
        .collect();
    check_priority_order(&runs, &jobs, seed);
    for (id, (payload, _)) in &submitted {
        let job = &jobs[id];
        assert_eq!(job["state"], "succeeded", "seed {seed}: job {id}: {job}");
        assert_eq!(
            job["result"],
            json!({"id": id, "echo": payload}),
            "seed {seed}: job {id}'s result"
        );
        assert_eq!(job["attempts"], 1, "seed {seed}: job {id}");
    }
}

fn parse_runs(lines: &[String], seed: u64) -> BTreeMap<u64, Vec<Run>> {
    let mut runs: BTreeMap<u64, Vec<Run>> = BTreeMap::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let number = |at: usize| -> u128 {
            fields
                .get(at)
                .and_then(|f| f.parse().ok())
                .unwrap_or_else(|| panic!("seed {seed}: bad log line {line:?}"))
        };
        match fields.first() {
            Some(&"start") => {
                let expires = fields
                    .get(4)
                    .unwrap_or_else(|| panic!("seed {seed}: no lease expiry in {line:?}"));
                runs.entry(number(2) as u64).or_default().push(Run {
                    start_ns: number(1),
                    end_ns: None,
                    token: number(3) as u64,
                    leased_ms: unix_ms(expires) - LEASE_TTL_MS,
                });
            }
            Some(&"end") => {
                let run = runs
                    .get_mut(&(number(2) as u64))
                    .and_then(|runs| runs.last_mut())
                    .unwrap_or_else(|| panic!("seed {seed}: end without start: {line:?}"));
                run.end_ns = Some(number(1));
            }
            _ => panic!("seed {seed}: bad log line {line:?}"),
        }
    }
    runs
}

fn check_each_job_ran_once(
    runs: &BTreeMap<u64, Vec<Run>>,
    submitted: &BTreeMap<u64, (Value, i64)>,
    seed: u64,
) {
    let ran: Vec<u64> = runs.keys().copied().collect();
    let expected: Vec<u64> = submitted.keys().copied().collect();
    assert_eq!(ran, expected, "seed {seed}: the jobs that ran");
    for (id, job_runs) in runs {
        assert_eq!(
            job_runs.len(),
            1,
            "seed {seed}: job {id} ran {} times: {job_runs:?}",
            job_runs.len()
        );
    }
}

fn sorted_runs(runs: &BTreeMap<u64, Vec<Run>>) -> Vec<(u64, Run)> {
    let mut all: Vec<(u64, Run)> = runs
        .iter()
        .flat_map(|(id, runs)| runs.iter().map(|run| (*id, run.clone())))
        .collect();
    all.sort_by_key(|(_, run)| run.token);
    all
}

fn check_runs_never_overlap(runs: &BTreeMap<u64, Vec<Run>>, seed: u64) {
    let mut all = sorted_runs(runs);
    all.sort_by_key(|(_, run)| run.start_ns);
    for pair in all.windows(2) {
        let (a_id, a) = &pair[0];
        let (b_id, b) = &pair[1];
        let a_end = a
            .end_ns
            .unwrap_or_else(|| panic!("seed {seed}: job {a_id}'s run never ended"));
        assert!(
            a_end < b.start_ns,
            "seed {seed}: job {b_id} started at {} before job {a_id} ended at {a_end}",
            b.start_ns
        );
    }
}

fn check_rate_on_lease_times(runs: &BTreeMap<u64, Vec<Run>>, seed: u64) {
    let all = sorted_runs(runs);
    let times: Vec<i64> = all.iter().map(|(_, run)| run.leased_ms).collect();
    for pair in times.windows(2) {
        assert!(
            pair[0] <= pair[1],
            "seed {seed}: lease times go backwards in token order: {times:?}"
        );
    }
    for i in 0..times.len() {
        for j in i + 1..times.len() {
            let leases = (j - i + 1) as i64;
            let window_ms = times[j] - times[i] + 1;
            // leases <= BURST + RATE × window / 1000, in integers.
            assert!(
                leases * 1000 <= BURST * 1000 + RATE_PER_SECOND * window_ms,
                "seed {seed}: {leases} leases within {window_ms} ms (leases {i}..={j} at {times:?})"
            );
        }
    }
}

/// `a` should run before `b`: higher priority, or the same priority and an earlier id.
fn goes_first(a: (i64, u64), b: (i64, u64)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

fn check_priority_order(runs: &BTreeMap<u64, Vec<Run>>, jobs: &BTreeMap<u64, Value>, seed: u64) {
    let all = sorted_runs(runs);
    let created: BTreeMap<u64, i64> = jobs
        .iter()
        .map(|(id, job)| {
            (
                *id,
                unix_ms(
                    job["created_at"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no created_at: {job}")),
                ),
            )
        })
        .collect();
    let priority = |id: u64| jobs[&id]["priority"].as_i64().unwrap_or(0);
    let mut decided_pairs = 0;
    for (position, (b, b_run)) in all.iter().enumerate() {
        for (a, _) in &all[position + 1..] {
            // a was leased after b. It must not have been waiting (already queued) and
            // ahead of b in line when b was leased.
            let a_was_queued = created[a] < b_run.leased_ms;
            if !a_was_queued {
                continue;
            }
            decided_pairs += 1;
            assert!(
                !goes_first((priority(*a), *a), (priority(*b), *b)),
                "seed {seed}: job {b} (priority {}) was leased at {} ms while job {a} (priority {}, created at {} ms) waited",
                priority(*b),
                b_run.leased_ms,
                priority(*a),
                created[a]
            );
        }
    }
    // The backlog builds up behind the rate limit, so many leases were real choices.
    assert!(
        decided_pairs >= 20,
        "seed {seed}: only {decided_pairs} lease decisions had a waiting job to pass over"
    );
}
