//! The job queue's guarantees across leader failover, with real processes: a 3-node
//! cluster whose leader is SIGKILLed every ~7 s (5 times; restarted ~2 s later) while submitters
//! and `rota worker`s use every node (see `docs/testing.md`, "Queue across failover").
//!
//! The queue has `concurrency: 1`, `rate: {limit: 5, per: 1s, burst: 1}` and a 1 s lease
//! ttl. A new leader renews every lease (as etcd's does), so leases held across a failover
//! survive it; between kills a "freezer" SIGSTOPs the worker running a job for longer than
//! the ttl (a GC pause, a swapped-out host), so its lease expires with the leader up, the
//! job is leased again, and the frozen worker's `complete` must be refused: that is the case
//! the fencing tokens exist for. Submitters POST over raw HTTP with
//! an `Idempotency-Key` per job, to every node in turn, and retry a request with no answer
//! (timeout, refused, reset, 503, 504 outcome_unknown) with the same key on the next node. Three workers, each
//! given all endpoints (rotated), run a script that logs its start and end (`date +%s%N`),
//! the job id, the lease token and the lease's expiry as the server granted it, and prints
//! `{"id", "token"}` as the result. A "zombie" thread meanwhile re-sends `complete` with
//! tokens that are provably stale (the job is already `succeeded`) to random nodes.
//!
//! After a drain, the checks (RELIABILITY.md §3.2):
//! - **nothing lost, nothing invented**: the server holds exactly one job per idempotency
//!   key, the ones the submitters were given, each `succeeded` or `dead`;
//! - **completed at most once**: the workers' logs show exactly one accepted `complete`
//!   per succeeded job (none for a dead one), and its result carries the token of the job's
//!   *last* lease: no complete from a superseded lease was accepted, and no lease was
//!   granted after the job succeeded;
//! - **stale tokens refused**: every zombie complete was `409 stale_lease`, during the
//!   faults and, after the drain, for every (job, token) that ever ran;
//! - **concurrency 1** on the server's own lease times: leases in token order (= grant
//!   order), each granted only once the previous one was over: at or after the previous
//!   job's `finished_at` when its complete was accepted, else at or after the previous
//!   lease's first expiry (grant + ttl; heartbeats only push an expiry later, and nothing
//!   else ends a lease in this test: the script never fails and no worker stops before the
//!   drain). Leases whose grant answer was lost in a crash never ran and are not seen; the
//!   bound still holds across them. Also, on the workers' clock, the runs whose lease was
//!   valid throughout (those whose complete was accepted) never overlap;
//! - **rate**: for any two observed leases i < j in grant order, the j - i + 1 leases in
//!   [t_i, t_j] fit `burst + limit × (t_j - t_i + allowance) / per`.
//!
//! Gates (so an idle run cannot pass): ≥ 3 observed leader changes, all planned kills done,
//! ≥ 3 zombie completes refused during the fault phase, ≥ 2 of the workers' own completes
//! refused as stale (the frozen workers'), every key accepted.
//!
//! Seeds: `ROTA_IT_SEED` replays the fault timing (printed).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{Cluster, ClusterConfig, LeaderMonitor};
use crate::crash::{self, Rng};
use crate::http::{self, Request, Response};
use crate::jobs_util::{read_lines, script, unix_ms, wait_until, Proc};

const QUEUE: &str = "failover";
const NODES: usize = 3;
const LEASE_TTL_MS: i64 = 1_000;
const RATE_LIMIT: i64 = 5;
const RATE_PER_MS: i64 = 1_000;
const BURST: i64 = 1;
/// Added to every window of the rate check. The server keeps time in whole milliseconds
/// (`State::time_ms`, monotone), renders it exactly, and counts its bucket in integers
/// (`core/src/jobs/rate.rs`): a window between two stamps t_i, t_j holds at most
/// `burst + limit × (t_j - t_i) / per` leases, so no allowance is due. It is a named 0
/// rather than a silent one.
const CLOCK_GRANULARITY_MS: i64 = 0;
const MAX_ATTEMPTS: u64 = 10;
const WORKERS: usize = 3;
const SUBMITTERS: usize = 3;
const JOBS_PER_SUBMITTER: usize = 34;
/// 3 submissions/s in all: below the ~3.5/s the queue gets through (5/s by the rate, less
/// with the long jobs), so the backlog stays small.
const SUBMIT_EVERY: Duration = Duration::from_millis(1_000);
/// Every `LONG_JOB_EVERY`th job runs 400 ms instead of 100 ms: longer than the 200 ms
/// between rate tokens, so a token is ready while it runs and only the concurrency limit
/// holds the next lease back (without long jobs the rate alone would keep leases apart,
/// and a broken concurrency limit would go unseen).
const LONG_JOB_EVERY: usize = 3;
/// Bound on one HTTP exchange of a submitter or the zombie.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// A submission with no answer within this is a failure (outages last ~2 s).
const SUBMIT_RETRY_FOR: Duration = Duration::from_secs(30);
/// Five kills for a gate of three leader changes: a killed leader that is back before the
/// others elected one (it happens: a split vote can take longer than the 2 s outage) leads
/// again, which is no change.
const KILLS: usize = 5;
const FIRST_KILL_AT: Duration = Duration::from_secs(4);
const KILL_EVERY: Duration = Duration::from_secs(7);
const KILL_JITTER_MS: u64 = 500;
const DOWN_FOR: Duration = Duration::from_secs(2);
/// How long the killer (and the freezer) waits for a run in progress before it goes on
/// anyway. A lease held at the kill outlives its ttl (no leader can grant a heartbeat for an
/// election timeout, 1 s by default), and the next leader renews it.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);
const LEADER_CHANGES_MIN: usize = 3;
const ZOMBIE_REFUSALS_MIN: usize = 3;
/// Leases that outlasted the 200 ms between rate tokens (about every third job is long).
const HELD_BACK_BY_CONCURRENCY_MIN: usize = 10;
/// Completes the workers themselves sent with a lease that expired while they were frozen,
/// and the server refused: the fencing path ran (about one per freeze).
const WORKER_STALE_COMPLETES_MIN: usize = 2;
/// How long the freezer stops a worker that holds a lease: longer than the ttl plus a
/// heartbeat period, and than a renewal by a leader elected meanwhile (a restarted member
/// may start an election) could add.
const FREEZE_FOR: Duration = Duration::from_millis(3_000);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(45);

/// One run of the worker script, from its log.
#[derive(Debug, Clone)]
struct Run {
    job: u64,
    token: u64,
    /// The server's grant time: the lease's first expiry minus the ttl the worker asked for.
    granted_ms: i64,
    start_ns: u128,
    end_ns: Option<u128>,
}

#[test]
fn cluster_jobs_queue_limits_fencing_and_no_loss_across_leader_kills() {
    let seed = crash::seed();
    let name = "cluster-jobs";
    eprintln!("{name}: seed {seed} (ROTA_IT_SEED replays the fault timing)");
    let mut rng = Rng::new(seed);
    let mut cluster = Cluster::start(ClusterConfig::new(NODES, &format!("{name}-{}", std::process::id())));
    let endpoints = cluster.endpoints();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("runs.log");

    let queue_config = json!({
        "concurrency": 1,
        "rate": {"limit": RATE_LIMIT, "per": "1s", "burst": BURST},
        "lease_ttl": format!("{LEASE_TTL_MS}ms"),
        "max_attempts": MAX_ATTEMPTS,
        "backoff": {"base": "100ms", "max": "500ms"},
    });
    let put = retry_request(&endpoints, 0, &json_request("PUT", &format!("/v1/queues/{QUEUE}"), &queue_config, None))
        .unwrap_or_else(|e| panic!("{name}: queue set: {e}"));
    assert_eq!(put.status(), 200, "{name}: queue set: {}", put.text());

    let mut workers = start_workers(dir.path(), &endpoints, &log);
    let monitor = LeaderMonitor::start(endpoints.clone());
    let started = Instant::now();
    let stop_zombie = Arc::new(AtomicBool::new(false));
    let zombie = Zombie::start(endpoints.clone(), log.clone(), stop_zombie.clone(), seed);
    let protocol_errors: Arc<Mutex<Vec<String>>> = Arc::default();

    // Submitters run on their own threads; this thread injects the faults.
    let (accepted, kills, freezes) = std::thread::scope(|scope| {
        let submitters: Vec<_> = (0..SUBMITTERS)
            .map(|submitter| {
                let endpoints = endpoints.clone();
                let errors = protocol_errors.clone();
                scope.spawn(move || submit_all(&endpoints, submitter, seed, &errors))
            })
            .collect();
        let mut kills = 0;
        let mut freezes = 0;
        let mut next_kill = FIRST_KILL_AT;
        for _ in 0..KILLS {
            let jitter = Duration::from_millis(rng.range(0, 2 * KILL_JITTER_MS));
            sleep_until(started + next_kill + jitter - Duration::from_millis(KILL_JITTER_MS));
            let leader = cluster
                .wait_leader(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("{name}: {e} before kill {}\n{}", kills + 1, cluster.logs(30)));
            // Kill while a worker holds a lease, so the outage outlives it (see IN_FLIGHT_WAIT).
            let waited = Instant::now();
            while !run_in_progress(&log) && waited.elapsed() < IN_FLIGHT_WAIT {
                std::thread::sleep(Duration::from_millis(5));
            }
            cluster.kill(leader);
            kills += 1;
            std::thread::sleep(DOWN_FOR);
            cluster.restart(leader);
            // Between kills, freeze the worker running a job: its lease expires under a
            // leader that is up (no renewal), so only the token can refuse its late report.
            let waited = Instant::now();
            let mut holder = None;
            while holder.is_none() && waited.elapsed() < IN_FLIGHT_WAIT {
                holder = worker_in_progress(&log);
                std::thread::sleep(Duration::from_millis(2));
            }
            if let Some(n) = holder {
                let pid = workers[n].pid();
                crate::cluster::send_signal(pid, crate::cluster::SIGSTOP);
                std::thread::sleep(FREEZE_FOR);
                crate::cluster::send_signal(pid, crate::cluster::SIGCONT);
                freezes += 1;
            }
            next_kill += KILL_EVERY;
        }
        let mut accepted: BTreeMap<String, u64> = BTreeMap::new();
        for handle in submitters {
            accepted.extend(handle.join().expect("submitter thread panicked"));
        }
        (accepted, kills, freezes)
    });
    let submitted_by_s = started.elapsed().as_secs_f64();
    let zombie_refused_during_faults = zombie.refused.load(Ordering::SeqCst);
    let (leader_changes, timeline) = monitor.stop();
    let errors = protocol_errors.lock().expect("errors lock").clone();
    assert!(errors.is_empty(), "{name}: submitters got non-retriable answers: {errors:#?}");

    // Drain: every accepted job finishes.
    let total = accepted.len() as u64;
    wait_until(DRAIN_TIMEOUT, "every accepted job to finish (drain)", || {
        let queue = retry_request(&endpoints, 0, &Request::new("GET", &format!("/v1/queues/{QUEUE}"))).ok()?;
        let counts = queue.json()["counts"].clone();
        let finished = counts["succeeded"].as_u64()? + counts["dead"].as_u64()?;
        (finished == total).then_some(())
    });
    let drained_by_s = started.elapsed().as_secs_f64();
    stop_zombie.store(true, Ordering::SeqCst);
    let zombie_report = zombie.join();
    for worker in &workers {
        worker.terminate();
    }
    for worker in &mut workers {
        let status = worker.wait_exit(Duration::from_secs(20));
        assert!(status.success(), "{name}: {} exited with {status}:\n{}", worker.name, worker.stderr());
    }

    let jobs = list_jobs(&endpoints);
    let runs = parse_runs(&read_lines(&log));
    let worker_logs: Vec<String> = workers.iter().map(Proc::stderr).collect();
    let completions = accepted_completions(&worker_logs);
    let discarded = worker_logs
        .iter()
        .flat_map(|text| text.lines())
        .filter(|line| line.contains("lease lost before its result was stored"))
        .count();
    let ran_more_than_once = {
        let mut per_job: BTreeMap<u64, usize> = BTreeMap::new();
        for run in &runs {
            *per_job.entry(run.job).or_default() += 1;
        }
        per_job.values().filter(|count| **count > 1).count()
    };
    eprintln!(
        "{name}: {total} jobs, {} runs ({ran_more_than_once} jobs ran more than once), {discarded} completes refused \
         as stale by the workers' own logs; zombie: {zombie_refused_during_faults} stale completes refused during the \
         faults, {} in all; {kills} kills, {leader_changes} leader changes ({timeline}); submitted by {submitted_by_s:.1} s, \
         drained by {drained_by_s:.1} s",
        runs.len(),
        zombie_report.refused,
    );
    assert!(zombie_report.accepted.is_empty(), "{name}: stale completes were ACCEPTED: {:#?}", zombie_report.accepted);
    assert!(zombie_report.errors.is_empty(), "{name}: zombie completes got unexpected answers: {:#?}", zombie_report.errors);

    check_no_loss(&accepted, &jobs);
    check_completed_once_by_the_last_lease(&jobs, &runs, &completions);
    let accepted_tokens: BTreeSet<u64> = jobs
        .values()
        .filter(|job| job["state"] == "succeeded")
        .filter_map(|job| job["result"]["token"].as_u64())
        .collect();
    check_valid_runs_never_overlap(&runs, &accepted_tokens);
    let held_back_by_concurrency = check_leases_one_at_a_time(&runs, &jobs, &accepted_tokens);
    check_rate(&runs);
    let probed = check_every_old_token_is_stale(&endpoints, &runs);

    // Coverage gates.
    assert_eq!(kills, KILLS, "{name}: coverage: kills done");
    assert!(freezes >= KILLS - 1, "{name}: coverage: only {freezes} workers frozen while running a job");
    assert!(
        leader_changes >= LEADER_CHANGES_MIN,
        "{name}: coverage: {leader_changes} leader changes observed, want ≥ {LEADER_CHANGES_MIN} ({timeline}; seed {seed})"
    );
    assert!(
        zombie_refused_during_faults >= ZOMBIE_REFUSALS_MIN,
        "{name}: coverage: only {zombie_refused_during_faults} stale completes tried during the faults"
    );
    assert!(
        discarded >= WORKER_STALE_COMPLETES_MIN,
        "{name}: coverage: only {discarded} worker completes were refused as stale after {freezes} freezes"
    );
    assert!(
        held_back_by_concurrency >= HELD_BACK_BY_CONCURRENCY_MIN,
        "{name}: coverage: only {held_back_by_concurrency} leases outlasted a rate token: the concurrency limit was barely tested"
    );
    assert_eq!(total as usize, SUBMITTERS * JOBS_PER_SUBMITTER, "{name}: every key was accepted");
    eprintln!(
        "{name}: passed; {held_back_by_concurrency} leases outlasted a rate token; {probed} old (job, token) pairs refused after the drain"
    );
}

// ---- processes -----------------------------------------------------------------------------

fn start_workers(dir: &Path, endpoints: &[SocketAddr], log: &Path) -> Vec<Proc> {
    let worker_script = script(
        dir,
        "work.sh",
        r#"payload=$(cat)
echo "holder $ROTA_JOB_ID $ROTA_LEASE_TOKEN $WORKER_INDEX" >> "$RUN_LOG"
echo "start $(date +%s%N) $ROTA_JOB_ID $ROTA_LEASE_TOKEN $ROTA_LEASE_EXPIRES_AT" >> "$RUN_LOG"
case "$payload" in
  *'"long":true'*) sleep 0.4 ;;
  *) sleep 0.1 ;;
esac
echo "end $(date +%s%N) $ROTA_JOB_ID $ROTA_LEASE_TOKEN" >> "$RUN_LOG"
printf '{"id": %s, "token": %s}\n' "$ROTA_JOB_ID" "$ROTA_LEASE_TOKEN"
"#,
    );
    (0..WORKERS)
        .map(|n| {
            // Each worker tries the endpoints in its own order, so all nodes serve workers.
            let urls: Vec<String> = (0..endpoints.len())
                .map(|k| format!("http://{}", endpoints[(n + k) % endpoints.len()]))
                .collect();
            let args: Vec<String> = [
                "worker",
                "--queue",
                QUEUE,
                // Asks for two: the server, not the worker, must hold the queue to one.
                "--concurrency",
                "2",
                "--lease-ttl",
                &format!("{LEASE_TTL_MS}ms"),
                "--poll-wait",
                "1s",
                "--worker-id",
                &format!("w{n}"),
                "--endpoints",
                &urls.join(","),
                "--",
                &worker_script.display().to_string(),
            ]
            .iter()
            .map(|arg| arg.to_string())
            .collect();
            let envs = [("RUN_LOG", log.display().to_string()), ("WORKER_INDEX", n.to_string())];
            Proc::spawn(dir, &format!("worker{n}"), &args, &envs)
        })
        .collect()
}

// ---- HTTP ----------------------------------------------------------------------------------

fn json_request(method: &str, target: &str, body: &Value, key: Option<&str>) -> Request {
    let mut request = Request::new(method, target)
        .header("Content-Type", "application/json")
        .raw_body(body.to_string().into_bytes());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request
}

/// Whether a `/v1` answer says the request was not handled (503: no leader yet) or may or
/// may not have been (504 `outcome_unknown`: its leader failed first): either way the same
/// request goes again, with its key.
fn is_retriable(response: &Response) -> bool {
    response.status() == 503 || (response.status() == 504 && response.json()["error"]["code"] == "outcome_unknown")
}

/// Sends `request` to the nodes in turn from `first` until one answers other than 503 (no
/// leader yet) or 504 `outcome_unknown`, within [`SUBMIT_RETRY_FOR`]. Only for requests that
/// are safe to repeat (keyed).
fn retry_request(endpoints: &[SocketAddr], first: usize, request: &Request) -> Result<Response, String> {
    let deadline = Instant::now() + SUBMIT_RETRY_FOR;
    let mut node = first;
    loop {
        let last = match http::send_with_timeout(endpoints[node % endpoints.len()], request, REQUEST_TIMEOUT) {
            Ok(response) if !is_retriable(&response) => return Ok(response),
            Ok(response) => format!("{} {}", response.status(), response.text()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("{} {}: no answer within {SUBMIT_RETRY_FOR:?} (last: {last})", request.method, request.target));
        }
        node += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Submits this submitter's jobs (one key each) at a steady pace; every fifth is sent
/// twice, and the repeat must name the same job. Returns key → job id.
fn submit_all(endpoints: &[SocketAddr], submitter: usize, seed: u64, errors: &Mutex<Vec<String>>) -> Vec<(String, u64)> {
    let started = Instant::now();
    let mut accepted = Vec::new();
    for n in 0..JOBS_PER_SUBMITTER {
        sleep_until(started + SUBMIT_EVERY * n as u32);
        let key = format!("job-{seed}-{submitter}-{n}");
        let body = json!({"payload": payload(&key, n)});
        let request = json_request("POST", &format!("/v1/queues/{QUEUE}/jobs"), &body, Some(&key));
        let repeats = if n % 5 == 0 { 2 } else { 1 };
        let mut ids = Vec::new();
        for repeat in 0..repeats {
            let response = match retry_request(endpoints, submitter + n + repeat, &request) {
                Ok(response) => response,
                Err(e) => {
                    errors.lock().expect("errors lock").push(format!("{key}: {e}"));
                    return accepted;
                }
            };
            if response.status() != 202 {
                errors.lock().expect("errors lock").push(format!("{key}: {} {}", response.status(), response.text()));
                return accepted;
            }
            ids.push(response.json()["id"].as_u64().expect("job id"));
        }
        if ids.windows(2).any(|pair| pair[0] != pair[1]) {
            errors.lock().expect("errors lock").push(format!("{key}: one key, several jobs: {ids:?}"));
        }
        accepted.push((key, ids[0]));
    }
    accepted
}

/// Every job of the queue (a linearizable listing, following the pages), by id.
fn list_jobs(endpoints: &[SocketAddr]) -> BTreeMap<u64, Value> {
    let mut jobs = BTreeMap::new();
    let mut after: Option<u64> = None;
    loop {
        let mut target = format!("/v1/queues/{QUEUE}/jobs?limit=1000");
        if let Some(after) = after {
            target.push_str(&format!("&after={after}"));
        }
        let response = retry_request(endpoints, 0, &Request::new("GET", &target)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), 200, "list jobs: {}", response.text());
        let page = response.json();
        for job in page["jobs"].as_array().expect("jobs array") {
            jobs.insert(job["id"].as_u64().expect("id"), job.clone());
        }
        match page["next"].as_u64() {
            Some(next) => after = Some(next),
            None => return jobs,
        }
    }
}

/// The payload of the `n`th job of a submitter, under `key`.
fn payload(key: &str, n: usize) -> Value {
    json!({"key": key, "long": n.is_multiple_of(LONG_JOB_EVERY)})
}

/// `POST /v1/jobs/{id}/complete` with `token` (no idempotency key: each is a new request).
fn complete_request(job: u64, token: u64) -> Request {
    json_request(
        "POST",
        &format!("/v1/jobs/{job}/complete"),
        &json!({"lease_token": token, "result": "zombie"}),
        None,
    )
}

/// Whether an answer is `409 stale_lease`.
fn is_stale_lease(response: &Response) -> bool {
    response.status() == 409
        && serde_json::from_slice::<Value>(&response.body).is_ok_and(|body| body["error"]["code"] == "stale_lease")
}

// ---- the zombie ----------------------------------------------------------------------------

/// What the zombie saw.
#[derive(Debug, Default)]
struct ZombieReport {
    refused: usize,
    accepted: Vec<String>,
    errors: Vec<String>,
}

/// A worker that lost its lease long ago and reports anyway: for runs that ended, it reads
/// the job (linearizable) and, once it is `succeeded`, sends `complete` with that run's
/// token to a random node. Every such complete is stale by then, whatever the token.
struct Zombie {
    refused: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<ZombieReport>,
}

impl Zombie {
    const EVERY: Duration = Duration::from_millis(250);
    const PROBES_PER_ROUND: usize = 2;

    fn start(endpoints: Vec<SocketAddr>, log: std::path::PathBuf, stop: Arc<AtomicBool>, seed: u64) -> Zombie {
        let refused = Arc::new(AtomicUsize::new(0));
        let counter = refused.clone();
        let thread = std::thread::spawn(move || {
            let mut rng = Rng::new(seed ^ 0x5A5A);
            let mut report = ZombieReport::default();
            let mut probed: BTreeSet<(u64, u64)> = BTreeSet::new();
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Self::EVERY);
                let ended: Vec<(u64, u64)> = parse_runs(&read_lines(&log))
                    .into_iter()
                    .filter(|run| run.end_ns.is_some() && !probed.contains(&(run.job, run.token)))
                    .map(|run| (run.job, run.token))
                    .collect();
                for _ in 0..Self::PROBES_PER_ROUND.min(ended.len()) {
                    let (job, token) = ended[rng.range(0, ended.len() as u64 - 1) as usize];
                    let node = rng.range(0, endpoints.len() as u64 - 1) as usize;
                    let Ok(read) = http::send_with_timeout(endpoints[node], &Request::new("GET", &format!("/v1/jobs/{job}")), REQUEST_TIMEOUT)
                    else {
                        continue;
                    };
                    if read.status() != 200 || read.json()["state"] != "succeeded" {
                        continue;
                    }
                    let node = rng.range(0, endpoints.len() as u64 - 1) as usize;
                    match http::send_with_timeout(endpoints[node], &complete_request(job, token), REQUEST_TIMEOUT) {
                        Ok(response) if is_stale_lease(&response) => {
                            probed.insert((job, token));
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        // No leader right now, the leader failed first, or the node is
                        // down: try again later.
                        Ok(response) if is_retriable(&response) => {}
                        Err(_) => {}
                        Ok(response) if response.status() == 200 => {
                            probed.insert((job, token));
                            report.accepted.push(format!("job {job} token {token}: {}", response.text()));
                        }
                        Ok(response) => {
                            probed.insert((job, token));
                            report.errors.push(format!("job {job} token {token}: {} {}", response.status(), response.text()));
                        }
                    }
                }
            }
            report.refused = counter.load(Ordering::SeqCst);
            report
        });
        Zombie { refused, thread }
    }

    fn join(self) -> ZombieReport {
        self.thread.join().expect("zombie thread panicked")
    }
}

fn sleep_until(when: Instant) {
    let now = Instant::now();
    if when > now {
        std::thread::sleep(when - now);
    }
}

// ---- logs ----------------------------------------------------------------------------------

/// The script's runs, in log order.
fn parse_runs(lines: &[String]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A line being appended right now may be cut short: skip it (the final parse runs
        // after every worker exited).
        let number = |at: usize| -> Option<u128> { fields.get(at)?.parse().ok() };
        match (fields.first(), fields.len()) {
            (Some(&"start"), 5) => {
                let (Some(start_ns), Some(job), Some(token)) = (number(1), number(2), number(3)) else { continue };
                runs.push(Run {
                    job: job as u64,
                    token: token as u64,
                    granted_ms: unix_ms(fields[4]) - LEASE_TTL_MS,
                    start_ns,
                    end_ns: None,
                });
            }
            (Some(&"end"), 4) => {
                let (Some(end_ns), Some(job), Some(token)) = (number(1), number(2), number(3)) else { continue };
                if let Some(run) = runs.iter_mut().rev().find(|run| run.job == job as u64 && run.token == token as u64) {
                    run.end_ns = Some(end_ns);
                }
            }
            _ => {}
        }
    }
    runs
}

/// Whether the newest run in the log has started and not ended.
fn run_in_progress(log: &Path) -> bool {
    parse_runs(&read_lines(log)).last().is_some_and(|run| run.end_ns.is_none())
}

/// The index of the worker running the newest run, if it has not ended (from the script's
/// `holder JOB TOKEN WORKER` lines).
fn worker_in_progress(log: &Path) -> Option<usize> {
    let lines = read_lines(log);
    let run = parse_runs(&lines).pop().filter(|run| run.end_ns.is_none())?;
    lines.iter().rev().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["holder", job, token, worker] if *job == run.job.to_string() && *token == run.token.to_string() => worker.parse().ok(),
            _ => None,
        }
    })
}

/// Accepted completes per job, from the workers' `job N succeeded in …` lines (one per
/// `complete` the server accepted; a replayed answer to a retried report is logged once).
fn accepted_completions(worker_logs: &[String]) -> BTreeMap<u64, usize> {
    let mut completions = BTreeMap::new();
    for line in worker_logs.iter().flat_map(|text| text.lines()) {
        let Some((_, event)) = line.split_once(": job ") else { continue };
        let mut words = event.split_whitespace();
        let (Some(id), Some("succeeded")) = (words.next().and_then(|w| w.parse::<u64>().ok()), words.next()) else {
            continue;
        };
        *completions.entry(id).or_default() += 1;
    }
    completions
}

// ---- checks --------------------------------------------------------------------------------

/// One job per key, the one its submitter was given; nothing else on the server; every job
/// finished (`succeeded` or `dead`).
fn check_no_loss(accepted: &BTreeMap<String, u64>, jobs: &BTreeMap<u64, Value>) {
    let ids: BTreeSet<u64> = accepted.values().copied().collect();
    assert_eq!(ids.len(), accepted.len(), "two keys got the same job: {accepted:?}");
    let on_server: BTreeSet<u64> = jobs.keys().copied().collect();
    let lost: Vec<&u64> = ids.difference(&on_server).collect();
    let invented: Vec<&u64> = on_server.difference(&ids).collect();
    assert!(lost.is_empty() && invented.is_empty(), "jobs lost {lost:?}, jobs nobody was given {invented:?}");
    for (key, id) in accepted {
        let n: usize = key.rsplit('-').next().and_then(|n| n.parse().ok()).expect("key ends in its number");
        assert_eq!(jobs[id]["payload"], payload(key, n), "job {id}'s payload");
        let state = jobs[id]["state"].as_str();
        assert!(matches!(state, Some("succeeded" | "dead")), "job {id} ended {state:?}: {}", jobs[id]);
    }
}

/// Exactly one accepted complete per succeeded job (none per dead job), by the job's last
/// lease, and that lease's run ended before it.
fn check_completed_once_by_the_last_lease(jobs: &BTreeMap<u64, Value>, runs: &[Run], completions: &BTreeMap<u64, usize>) {
    let mut tokens: BTreeMap<u64, Vec<&Run>> = BTreeMap::new();
    for run in runs {
        tokens.entry(run.job).or_default().push(run);
    }
    for (id, job) in jobs {
        let accepted = completions.get(id).copied().unwrap_or(0);
        match job["state"].as_str() {
            Some("succeeded") => {
                assert_eq!(accepted, 1, "job {id}: {accepted} accepted completes in the workers' logs");
                let token = job["result"]["token"].as_u64().unwrap_or_else(|| panic!("job {id}'s result: {job}"));
                assert_eq!(job["result"]["id"], json!(id), "job {id}'s result names another job: {job}");
                let job_runs = tokens.get(id).cloned().unwrap_or_default();
                let last = job_runs.iter().map(|run| run.token).max();
                assert_eq!(
                    Some(token),
                    last,
                    "job {id} was completed with token {token}, but its last lease that ran is {last:?}: a stale \
                     complete was accepted, or the job was leased again after it succeeded; runs: {job_runs:?}"
                );
                let run = job_runs.iter().find(|run| run.token == token).expect("the run exists");
                assert!(run.end_ns.is_some(), "job {id}: the completing run never logged its end: {run:?}");
            }
            Some("dead") => assert_eq!(accepted, 0, "dead job {id} was completed"),
            other => panic!("job {id} is {other:?}"),
        }
    }
}

/// On the workers' clock (one machine, one clock): runs whose lease stayed valid until their
/// complete was accepted never overlap.
fn check_valid_runs_never_overlap(runs: &[Run], accepted_tokens: &BTreeSet<u64>) {
    let mut valid: Vec<&Run> = runs.iter().filter(|run| accepted_tokens.contains(&run.token)).collect();
    valid.sort_by_key(|run| run.start_ns);
    for pair in valid.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let a_end = a.end_ns.expect("a completed run logged its end");
        assert!(
            a_end < b.start_ns,
            "concurrency 1 violated: job {} (token {}) started at {} ns before job {} (token {}) ended at {a_end} ns",
            b.job,
            b.token,
            b.start_ns,
            a.job,
            a.token
        );
    }
}

/// On the server's clock: in token order, each lease is granted only once the previous one
/// is over (see the module docs for why these are the only two ways a lease ends here).
/// Returns how many of those leases lasted longer than the interval between rate tokens:
/// pairs where the concurrency limit, not the rate, held the next lease back.
fn check_leases_one_at_a_time(runs: &[Run], jobs: &BTreeMap<u64, Value>, accepted_tokens: &BTreeSet<u64>) -> usize {
    let token_interval_ms = RATE_PER_MS / RATE_LIMIT;
    let mut held_back_by_concurrency = 0;
    let mut leases: Vec<&Run> = runs.iter().collect();
    leases.sort_by_key(|run| run.token);
    leases.dedup_by_key(|run| run.token);
    for pair in leases.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let (a_over_ms, why) = if accepted_tokens.contains(&a.token) {
            let finished = jobs[&a.job]["finished_at"].as_str().unwrap_or_else(|| panic!("job {}: no finished_at", a.job));
            (unix_ms(finished), "its complete was accepted")
        } else {
            (a.granted_ms + LEASE_TTL_MS, "its first expiry (it was never completed)")
        };
        assert!(
            b.granted_ms >= a_over_ms,
            "concurrency 1 violated on the server's clock: lease {} (job {}) granted at {} ms, before lease {} (job {}, \
             granted at {} ms) was over at {a_over_ms} ms ({why})",
            b.token,
            b.job,
            b.granted_ms,
            a.token,
            a.job,
            a.granted_ms
        );
        if a_over_ms - a.granted_ms > token_interval_ms {
            held_back_by_concurrency += 1;
        }
    }
    held_back_by_concurrency
}

/// In any window [t_i, t_j] between two grants, at most `burst + limit × (t_j - t_i) / per`
/// leases (exact integers; [`CLOCK_GRANULARITY_MS`] added to the window).
fn check_rate(runs: &[Run]) {
    let mut leases: Vec<&Run> = runs.iter().collect();
    leases.sort_by_key(|run| run.token);
    leases.dedup_by_key(|run| run.token);
    let times: Vec<i64> = leases.iter().map(|run| run.granted_ms).collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "grant times go backwards in token order: {times:?}");
    for i in 0..times.len() {
        for j in i + 1..times.len() {
            let leases_in_window = (j - i + 1) as i64;
            let window_ms = times[j] - times[i] + CLOCK_GRANULARITY_MS;
            assert!(
                leases_in_window * RATE_PER_MS <= BURST * RATE_PER_MS + RATE_LIMIT * window_ms,
                "rate exceeded: {leases_in_window} leases within {window_ms} ms (grants {i}..={j}: {:?})",
                &times[i..=j]
            );
        }
    }
}

/// After the drain every job is finished, so every token that ever ran is stale: a
/// `complete` with it must be `409 stale_lease` on every node. Returns how many were tried.
fn check_every_old_token_is_stale(endpoints: &[SocketAddr], runs: &[Run]) -> usize {
    let pairs: BTreeSet<(u64, u64)> = runs.iter().map(|run| (run.job, run.token)).collect();
    for (n, &(job, token)) in pairs.iter().enumerate() {
        let response = retry_request(endpoints, n, &complete_request(job, token)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            is_stale_lease(&response),
            "complete of job {job} with old token {token} after the drain: {} {}",
            response.status(),
            response.text()
        );
    }
    pairs.len()
}

/// A submit with `?wait` at a follower waits for the job like one at the leader, even when
/// the job is leased at once: the follower answered before it had applied the submit
/// itself, found no such job and said it was removed (404), though it then ran and
/// succeeded. Each round: a lease long-polls at the leader, the submit waits at a
/// follower, the leased job is completed at the leader; the submit must answer 200 with
/// the job succeeded.
#[test]
fn cluster_jobs_submit_waiting_at_a_follower_sees_its_job_finish() {
    let cluster = Cluster::start(ClusterConfig::new(NODES, "waitfollower"));
    let leader = cluster.wait_leader(Duration::from_secs(20)).expect("a leader");
    let endpoints = cluster.endpoints();
    let (leader_addr, follower_addr) = (endpoints[leader], endpoints[(leader + 1) % NODES]);
    for round in 0..5 {
        let lease = std::thread::spawn(move || {
            let request = json_request("POST", "/v1/queues/waits/lease", &json!({"worker": "t", "wait": "20s"}), None);
            http::send_with_timeout(leader_addr, &request, Duration::from_secs(30)).expect("lease")
        });
        // The lease is waiting (a submit before it is fine too: it is leased right away).
        let submit = json_request("POST", "/v1/queues/waits/jobs?wait=20s", &json!({"payload": round}), None);
        let submitted = std::thread::spawn(move || http::send_with_timeout(follower_addr, &submit, Duration::from_secs(30)).expect("submit"));
        let leased = lease.join().expect("lease thread");
        assert_eq!(leased.status(), 200, "round {round}: {}", leased.text());
        let job = leased.json()["jobs"][0].clone();
        let complete = json_request("POST", &format!("/v1/jobs/{}/complete", job["id"]), &json!({"lease_token": job["lease_token"], "result": round}), None);
        let completed = http::send(leader_addr, &complete).expect("complete");
        assert_eq!(completed.status(), 200, "round {round}: {}", completed.text());
        let answer = submitted.join().expect("submit thread");
        assert_eq!(answer.status(), 200, "round {round}: {}", answer.text());
        assert_eq!(answer.json()["state"], "succeeded", "round {round}: {}", answer.text());
        assert_eq!(answer.json()["result"], json!(round), "round {round}: {}", answer.text());
    }
}

/// A worker whose cluster has no leader says so within seconds, not after its client's
/// whole 30 s retry budget (a user saw nothing for the 20 s two members were down), and
/// goes on: once a majority is back it runs the next job.
#[test]
fn cluster_jobs_a_worker_says_when_no_server_answers_and_goes_on() {
    let name = "worker-no-leader";
    let mut cluster = Cluster::start(ClusterConfig::new(NODES, &format!("{name}-{}", std::process::id())));
    cluster.wait_leader(Duration::from_secs(20)).expect("a leader");
    let endpoints = cluster.endpoints();
    let urls: Vec<String> = endpoints.iter().map(|addr| format!("http://{addr}")).collect();
    let queue = json_request("PUT", "/v1/queues/quiet", &json!({"lease_ttl": "10s"}), None);
    let put = retry_request(&endpoints, 0, &queue).unwrap_or_else(|e| panic!("{name}: queue set: {e}"));
    assert_eq!(put.status(), 200, "{name}: {}", put.text());
    let dir = tempfile::tempdir().expect("temp dir");
    let args: Vec<String> = ["worker", "--queue", "quiet", "--poll-wait", "1s", "--endpoints", &urls.join(","), "--", "cat"]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
    let mut worker = Proc::spawn(dir.path(), "worker", &args, &[]);
    wait_until(Duration::from_secs(20), "the worker started leasing", || {
        worker.stderr().contains("leasing from").then_some(())
    });
    cluster.kill(1);
    cluster.kill(2);
    let down = Instant::now();
    wait_until(Duration::from_secs(20), "the worker saying no server answers", || {
        worker.stderr().contains("no server answers").then_some(())
    });
    assert!(down.elapsed() < Duration::from_secs(20), "{name}: {:?}", down.elapsed());
    cluster.restart(1);
    cluster.restart(2);
    let submit = json_request("POST", "/v1/queues/quiet/jobs?wait=20s", &json!({"payload": "after"}), None);
    let done = retry_request(&endpoints, 0, &submit).unwrap_or_else(|e| panic!("{name}: submit: {e}"));
    assert_eq!(done.status(), 200, "{name}: {}\n{}", done.text(), worker.stderr());
    assert_eq!(done.json()["result"], json!("after"), "{name}: {}", done.text());
    worker.terminate();
    let status = worker.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{name}: {status}: {}", worker.stderr());
}

/// A lease that waits without ever trying (its queue's one slot taken) at a member that
/// loses its quorum meanwhile ends with `503 no_leader`, not with an empty `200` that a
/// worker takes for an idle queue and says nothing about.
#[test]
fn cluster_jobs_a_waiting_lease_at_a_member_without_a_quorum_says_no_leader() {
    let name = "wait-no-leader";
    let mut cluster = Cluster::start(ClusterConfig::new(NODES, &format!("{name}-{}", std::process::id())));
    let leader = cluster.wait_leader(Duration::from_secs(20)).expect("a leader");
    let addr = cluster.endpoints()[leader];
    let send = |request: &Request| http::send_with_timeout(addr, request, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let put = send(&json_request("PUT", "/v1/queues/one", &json!({"concurrency": 1, "lease_ttl": "60s"}), None));
    assert_eq!(put.status(), 200, "{name}: {}", put.text());
    for n in 0..2 {
        let submitted = send(&json_request("POST", "/v1/queues/one/jobs", &json!({"payload": n}), None));
        assert_eq!(submitted.status(), 202, "{name}: {}", submitted.text());
    }
    let held = send(&json_request("POST", "/v1/queues/one/lease", &json!({"worker": "holder"}), None));
    assert_eq!(held.json()["jobs"].as_array().map(Vec::len), Some(1), "{name}: {}", held.text());
    let waiting = std::thread::spawn(move || {
        let request = json_request("POST", "/v1/queues/one/lease", &json!({"worker": "waiter", "wait": "8s"}), None);
        http::send_with_timeout(addr, &request, Duration::from_secs(30)).expect("lease")
    });
    // The lease tried once, found the slot taken and now waits in the queue's line.
    wait_until(Duration::from_secs(10), "the lease waiting in line", || {
        let metrics = http::send_with_timeout(addr, &Request::new("GET", "/metrics"), Duration::from_secs(5)).ok()?;
        let text = metrics.text();
        let line = text.lines().find(|line| line.split_whitespace().next() == Some("rota_v1_lease_waiters"))?;
        (line.split_whitespace().nth(1)? == "1").then_some(())
    });
    for i in (0..NODES).filter(|&i| i != leader) {
        cluster.kill(i);
    }
    let answer = waiting.join().expect("lease thread");
    assert_eq!(answer.status(), 503, "{name}: {}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "no_leader", "{name}: {}", answer.text());
    assert_eq!(answer.header("retry-after"), Some("1"), "{name}");
}
