//! SIGKILL the server while submitters and workers run, restart it on the same data dir,
//! and check that nothing was lost or done twice.
//!
//! Submitters run `rota job submit --idempotency-key K` per job and, when a command gives
//! up (no server within its retry budget), run it again with the same key, as a script
//! should: a job is "accepted" once a command for its key exits 0. Three workers run a
//! script that logs each run (job id and lease token) and prints them as the result. The
//! server is killed twice at moments chosen by a seeded RNG (`ROTA_IT_SEED` replays); the
//! second outage lasts longer than the lease ttl.
//!
//! Afterwards: the server holds exactly one job per key (same id for every command of a
//! key, none extra: nothing submitted twice), with its payload; every job ends `succeeded`
//! or `dead` (none lost); each succeeded job's result names a run the log recorded for it;
//! and completions counted from the workers' own logs ("job N succeeded", printed once per
//! accepted `complete`) are exactly one per succeeded job and none for the others: no job
//! was completed twice. A job may *run* more than once (a lease that expired while the
//! server was down is retried): that is at-least-once execution, which the fencing token
//! makes safe, and the test reports how often it happened.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::crash::{seed, Rng};
use crate::harness::{Kind, Server};
use crate::jobs_util::{all_jobs, args, read_lines, rota, script, try_get_queue, wait_until, Proc};

const QUEUE: &str = "crashy";
const SUBMITTERS: u64 = 3;
const JOBS_PER_SUBMITTER: u64 = 20;
const WORKERS: usize = 3;
const KILLS: usize = 2;
/// Longer than the workers' lease ttl (3 s).
const LONG_OUTAGE: Duration = Duration::from_millis(3500);
/// A command for one key is run at most this often (each run rides out 30 s of outage).
const SUBMIT_RUNS_MAX: usize = 5;

#[test]
fn jobs_survive_server_sigkill_none_lost_none_completed_twice() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let mut server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("runs.log");
    let worker_script = script(
        dir.path(),
        "work.sh",
        r#"cat > /dev/null
echo "run $ROTA_JOB_ID $ROTA_LEASE_TOKEN" >> "$RUN_LOG"
sleep 0.02
printf '{"id": %s, "token": %s}\n' "$ROTA_JOB_ID" "$ROTA_LEASE_TOKEN"
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
                "--max-attempts",
                "20",
                "--backoff-base",
                "100ms",
                "--backoff-max",
                "500ms",
            ],
        ),
    )
    .expect_success();
    let mut workers: Vec<Proc> = (0..WORKERS)
        .map(|n| {
            let mut worker_args = args(
                &server,
                &[
                    "worker",
                    "--queue",
                    QUEUE,
                    "--concurrency",
                    "2",
                    "--lease-ttl",
                    "3s",
                    "--poll-wait",
                    "2s",
                ],
            );
            worker_args.extend(["--".into(), worker_script.display().to_string()]);
            Proc::spawn(
                dir.path(),
                &format!("worker{n}"),
                &worker_args,
                &[("RUN_LOG", log.display().to_string())],
            )
        })
        .collect();

    let total = SUBMITTERS * JOBS_PER_SUBMITTER;
    let accepted_count = AtomicU64::new(0);
    let accepted: BTreeMap<(u64, u64), u64> = std::thread::scope(|scope| {
        let submitters: Vec<_> = (0..SUBMITTERS)
            .map(|submitter| {
                let server_url = server.client_url();
                let dir = dir.path();
                let accepted_count = &accepted_count;
                scope.spawn(move || submit_all(dir, &server_url, submitter, seed, accepted_count))
            })
            .collect();
        // The killer: wait for some progress, kill at a random moment, restart.
        for kill in 0..KILLS {
            let progress = 5 + 12 * kill as u64;
            wait_until(
                Duration::from_secs(60),
                "jobs to succeed before a kill",
                || {
                    let queue = try_get_queue(&server, QUEUE)?;
                    (queue["counts"]["succeeded"].as_u64()? >= progress).then_some(())
                },
            );
            std::thread::sleep(Duration::from_millis(rng.range(0, 150)));
            server.kill();
            // Mid-run: submitters were still submitting (and workers working) at the kill.
            let accepted_at_kill = accepted_count.load(Ordering::SeqCst);
            assert!(
                accepted_at_kill < total,
                "seed {seed}: kill {kill} came after every submit was accepted"
            );
            // The last outage outlasts the lease ttl: leases held across it expire, their
            // workers' late reports are refused, and the jobs run again elsewhere.
            if kill + 1 == KILLS {
                std::thread::sleep(LONG_OUTAGE);
            }
            server.restart();
        }
        let mut accepted = BTreeMap::new();
        for handle in submitters {
            accepted.extend(handle.join().expect("submitter"));
        }
        accepted
    });
    assert_eq!(
        accepted.len() as u64,
        total,
        "seed {seed}: every key was accepted"
    );
    let distinct_ids: BTreeSet<u64> = accepted.values().copied().collect();
    assert_eq!(
        distinct_ids.len() as u64,
        total,
        "seed {seed}: two keys got the same job"
    );

    // Everything accepted finishes (a few leases may have to expire first).
    wait_until(Duration::from_secs(60), "every job to finish", || {
        let queue = try_get_queue(&server, QUEUE)?;
        let counts = &queue["counts"];
        let finished = counts["succeeded"].as_u64()? + counts["dead"].as_u64()?;
        (finished == total).then_some(())
    });
    for worker in &workers {
        worker.terminate();
    }
    for worker in &mut workers {
        let status = worker.wait_exit(Duration::from_secs(30));
        assert!(
            status.success(),
            "seed {seed}: {} exited with {status}:\n{}",
            worker.name,
            worker.stderr()
        );
    }

    let jobs: BTreeMap<u64, Value> = all_jobs(&server, QUEUE)
        .into_iter()
        .map(|job| (job["id"].as_u64().expect("id"), job))
        .collect();
    let server_ids: BTreeSet<u64> = jobs.keys().copied().collect();
    assert_eq!(
        server_ids, distinct_ids,
        "seed {seed}: the server's jobs are exactly the accepted ones"
    );
    for ((submitter, n), id) in &accepted {
        assert_eq!(
            jobs[id]["payload"],
            json!({"submitter": submitter, "n": n}),
            "seed {seed}: job {id}'s payload"
        );
    }

    // Runs from the script's log: job id -> lease tokens of its runs.
    let mut runs: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for line in read_lines(&log) {
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().expect("number"))
            .collect();
        runs.entry(fields[0]).or_default().push(fields[1]);
    }
    // Completions as the workers saw them accepted.
    let mut completions: BTreeMap<u64, usize> = BTreeMap::new();
    for worker in &workers {
        for line in worker.stderr().lines() {
            if let Some(id) = succeeded_job(line) {
                *completions.entry(id).or_default() += 1;
            }
        }
    }
    let mut dead = 0;
    for (id, job) in &jobs {
        match job["state"].as_str() {
            Some("succeeded") => {
                let token = job["result"]["token"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("seed {seed}: job {id}: {job}"));
                assert_eq!(
                    job["result"]["id"],
                    json!(id),
                    "seed {seed}: job {id}'s result"
                );
                assert!(
                    runs.get(id).is_some_and(|tokens| tokens.contains(&token)),
                    "seed {seed}: job {id}'s result comes from lease {token}, which never ran: {:?}",
                    runs.get(id)
                );
                assert_eq!(
                    completions.get(id).copied().unwrap_or(0),
                    1,
                    "seed {seed}: job {id} completions seen by workers"
                );
            }
            Some("dead") => {
                dead += 1;
                assert_eq!(
                    completions.get(id),
                    None,
                    "seed {seed}: dead job {id} was completed"
                );
            }
            other => panic!("seed {seed}: job {id} ended {other:?}: {job}"),
        }
    }
    let rerun = runs.values().filter(|tokens| tokens.len() > 1).count();
    eprintln!("seed {seed}: {total} jobs, {dead} dead, {rerun} ran more than once (leases expired during the outage)");
}

/// Submits this submitter's jobs, each under its own key, re-running a command that gave
/// up with the same key. Returns (submitter, n) -> job id.
fn submit_all(
    dir: &std::path::Path,
    server_url: &str,
    submitter: u64,
    seed: u64,
    accepted_count: &AtomicU64,
) -> Vec<((u64, u64), u64)> {
    let mut accepted = Vec::new();
    for n in 0..JOBS_PER_SUBMITTER {
        let key = format!("crash-{seed}-{submitter}-{n}");
        let payload = json!({"submitter": submitter, "n": n}).to_string();
        let priority = ((submitter + n) % 3).to_string();
        let command: Vec<String> = [
            "job",
            "submit",
            QUEUE,
            "--payload",
            &payload,
            "--priority",
            &priority,
            "--idempotency-key",
            &key,
            "-o",
            "json",
            "--endpoints",
            server_url,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        let started = Instant::now();
        let mut ids = Vec::new();
        for _ in 0..SUBMIT_RUNS_MAX {
            let out = rota(dir, &command);
            if out.status.success() {
                ids.push(out.json()["id"].as_u64().expect("id"));
                // Once more with the same key: the same job, replayed.
                let again = rota(dir, &command).expect_success();
                ids.push(again.json()["id"].as_u64().expect("id"));
                break;
            }
            assert_eq!(
                out.code(),
                2,
                "seed {seed}: submit failed other than unreachable: {out:?}"
            );
        }
        assert!(
            !ids.is_empty(),
            "seed {seed}: key {key} never accepted in {:?}",
            started.elapsed()
        );
        assert!(
            ids.windows(2).all(|pair| pair[0] == pair[1]),
            "seed {seed}: key {key} gave jobs {ids:?}"
        );
        accepted.push(((submitter, n), ids[0]));
        accepted_count.fetch_add(1, Ordering::SeqCst);
    }
    accepted
}

/// The job id of a worker's `rota worker W: job 7 succeeded in 12ms` line.
fn succeeded_job(line: &str) -> Option<u64> {
    let (_, event) = line.split_once(": job ")?;
    let mut words = event.split_whitespace();
    let id = words.next()?.parse().ok()?;
    (words.next()? == "succeeded").then_some(id)
}

/// A lease outlives a server outage longer than its ttl, as etcd's leases outlive a leader
/// change: the restarted node's first entry renews every lease before its clock moves, so a
/// worker that finished during the outage stores its result instead of getting
/// `stale_lease` and seeing the job run again (a user audit saw exactly that).
#[test]
fn a_lease_outlives_a_server_restart_longer_than_its_ttl() {
    use crate::jobs_util::api;
    let mut server = Server::start(Kind::Rota);
    // 5 s: the renewed lease must outlast the restart's health polling, the GET and the
    // complete on a loaded machine.
    let queue = api(&server, "PUT", "/v1/queues/outage", Some(&json!({"lease_ttl": "5s"})), None);
    assert_eq!(queue.status(), 200, "{}", queue.text());
    let submitted = api(&server, "POST", "/v1/queues/outage/jobs", Some(&json!({"payload": 1})), None);
    assert_eq!(submitted.status(), 202, "{}", submitted.text());
    let leased = api(&server, "POST", "/v1/queues/outage/lease", Some(&json!({"worker": "w"})), None).json();
    let job = &leased["jobs"][0];
    let (id, token) = (job["id"].as_u64().expect("id"), job["lease_token"].as_u64().expect("token"));
    server.kill();
    // The outage: longer than the lease's 5 s.
    std::thread::sleep(Duration::from_secs(6));
    server.restart();
    let after = crate::jobs_util::get_job(&server, id);
    assert_eq!(after["state"], "leased", "the lease was renewed, not expired: {after}");
    let completed = api(
        &server,
        "POST",
        &format!("/v1/jobs/{id}/complete"),
        Some(&json!({"lease_token": token, "result": "done"})),
        None,
    );
    assert_eq!(completed.status(), 200, "{}", completed.text());
    let done = crate::jobs_util::get_job(&server, id);
    assert_eq!((done["state"].clone(), done["attempts"].clone()), (json!("succeeded"), json!(1)), "{done}");
}
