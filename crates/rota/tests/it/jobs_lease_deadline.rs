//! Lease-bounded execution: a job's command never outlives its lease, even when its worker
//! cannot act. A worker frozen (SIGSTOP) past the lease ttl, or cut off from the server, has
//! its command and the command's children killed by the job supervisor before the lease
//! ends, so the job's next attempt (or the next job of a `concurrency: 1` queue) never runs
//! beside it; a command whose heartbeats get through runs as long as it needs.
//!
//! The script records each attempt's start and end and, at its start, whether any process
//! of an earlier attempt is still alive ("overlap"): the overlap is checked at the moment it
//! would happen, not inferred from timestamps.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::harness::{Kind, Server};
use crate::jobs_util::{
    api, args, get_job, log_records, process_alive, KillOnDrop, read_lines, script, unix_ms, wait_until, Proc,
};

/// A script whose first attempt of a job sleeps the payload's seconds (later attempts
/// 0.2 s) in a child `sleep`, appending `<its pid> <the sleep's pid>` to `$PIDS_FILE` and
/// `start JOB ATTEMPT MS PID CHILD_PID` / `end JOB ATTEMPT MS` to `$RUN_LOG`, after an
/// `overlap JOB PID` line for each process of an earlier attempt still alive.
fn sleeping_script(dir: &Path) -> PathBuf {
    script(
        dir,
        "sleeper.sh",
        r#"payload=$(cat)
now() { date +%s%3N; }
for pid in $(cat "$PIDS_FILE" 2>/dev/null); do
  state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)
  if [ -n "$state" ] && [ "$state" != Z ]; then echo "overlap $ROTA_JOB_ID $pid" >> "$RUN_LOG"; fi
done
if [ "$ROTA_JOB_ATTEMPT" = 1 ]; then seconds=$payload; else seconds=0.2; fi
sleep "$seconds" &
echo "$$ $!" >> "$PIDS_FILE"
echo "start $ROTA_JOB_ID $ROTA_JOB_ATTEMPT $(now) $$ $!" >> "$RUN_LOG"
wait
echo "end $ROTA_JOB_ID $ROTA_JOB_ATTEMPT $(now)" >> "$RUN_LOG"
"#,
    )
}

/// One `start` line of the log.
struct Start {
    job: u64,
    attempt: u64,
    pids: [u32; 2],
}

fn starts(log: &Path) -> Vec<Start> {
    log_records(log, "start")
        .into_iter()
        .map(|fields| Start {
            job: fields[0].parse().expect("job id"),
            attempt: fields[1].parse().expect("attempt"),
            pids: [fields[3].parse().expect("pid"), fields[4].parse().expect("child pid")],
        })
        .collect()
}

/// Whether the log has the end of `job`'s `attempt`.
fn ended(log: &Path, job: u64, attempt: u64) -> bool {
    let prefix = format!("end {job} {attempt} ");
    read_lines(log).iter().any(|line| line.starts_with(&prefix))
}

fn wait_for_start(log: &Path, count: usize) -> Start {
    wait_until(
        Duration::from_secs(30),
        &format!("{count} script start(s) in the log"),
        || starts(log).into_iter().nth(count - 1),
    )
}

struct Setup {
    server: Server,
    dir: tempfile::TempDir,
    log: PathBuf,
    pids_file: PathBuf,
    command: PathBuf,
}

fn setup(queue: &str, config: Value) -> Setup {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let set = api(
        &server,
        "PUT",
        &format!("/v1/queues/{queue}"),
        Some(&config),
        None,
    );
    assert_eq!(set.status(), 200, "{}", set.text());
    let log = dir.path().join("runs.log");
    let pids_file = dir.path().join("pids");
    let command = sleeping_script(dir.path());
    Setup {
        server,
        dir,
        log,
        pids_file,
        command,
    }
}

impl Setup {
    fn submit(&self, queue: &str, seconds: f64) -> u64 {
        let response = api(
            &self.server,
            "POST",
            &format!("/v1/queues/{queue}/jobs"),
            Some(&json!({ "payload": seconds })),
            None,
        );
        assert!(
            (200..300).contains(&response.status()),
            "{}",
            response.text()
        );
        response.json()["id"].as_u64().expect("job id")
    }

    /// A worker whose lease requests wait up to `poll_wait` on the server.
    fn worker(&self, name: &str, queue: &str, poll_wait: &str) -> Proc {
        let mut worker_args = args(
            &self.server,
            &["worker", "--queue", queue, "--poll-wait", poll_wait],
        );
        worker_args.extend(["--".into(), self.command.display().to_string()]);
        let envs = [
            ("RUN_LOG", self.log.display().to_string()),
            ("PIDS_FILE", self.pids_file.display().to_string()),
        ];
        Proc::spawn(self.dir.path(), name, &worker_args, &envs)
    }

    fn overlaps(&self) -> Vec<String> {
        read_lines(&self.log)
            .into_iter()
            .filter(|line| line.starts_with("overlap"))
            .collect()
    }
}


fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn wait_for_state(server: &Server, id: u64, state: &str) -> Value {
    wait_until(
        Duration::from_secs(30),
        &format!("job {id} to be {state}"),
        || {
            let job = get_job(server, id);
            (job["state"] == state).then_some(job)
        },
    )
}

#[test]
fn jobs_frozen_worker_command_dies_before_its_lease_ends() {
    let queue = "c1";
    let setup = setup(
        queue,
        json!({"concurrency": 1, "lease_ttl": "1500ms", "backoff": {"base": "100ms"}}),
    );
    let long = setup.submit(queue, 20.0);
    let next = setup.submit(queue, 0.2);
    let mut first = setup.worker("worker1", queue, "1s");
    let run = wait_for_start(&setup.log, 1);
    assert_eq!(
        (run.job, run.attempt),
        (long, 1),
        "the older job goes first"
    );
    let _leftovers = KillOnDrop(run.pids.to_vec());
    // The second worker waits in the queue's line: `concurrency: 1` holds it back while the
    // first lease lasts.
    let mut second = setup.worker("worker2", queue, "1s");
    first.signal("STOP");
    let token = get_job(&setup.server, long)["lease_token"].clone();
    // Wait out the lease (a heartbeat in flight at the SIGSTOP may still have renewed it).
    loop {
        let job = get_job(&setup.server, long);
        if job["state"] != "leased" || job["lease_token"] != token {
            break;
        }
        let expires_ms = unix_ms(job["lease_expires_at"].as_str().expect("lease expiry"));
        let left_ms = expires_ms - now_unix_ms();
        if left_ms < 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(left_ms.clamp(1, 50) as u64));
    }
    // The supervisor kills 150 ms before the end, but on a loaded machine the kill and the
    // reaping can land a little after it by this test's clock: allow 500 ms past the end.
    // What must never happen, a next attempt beside this one, is the overlap check below.
    let kill_grace = std::time::Instant::now() + Duration::from_millis(500);
    let alive = loop {
        let alive: Vec<u32> = run
            .pids
            .iter()
            .copied()
            .filter(|&pid| process_alive(pid))
            .collect();
        if alive.is_empty() || std::time::Instant::now() >= kill_grace {
            break alive;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        alive.is_empty(),
        "the frozen worker's command or its child {alive:?} outlived the lease by 500 ms"
    );

    // The second worker takes over: the next job, and the killed one again after backoff.
    let done = wait_for_state(&setup.server, long, "succeeded");
    wait_for_state(&setup.server, next, "succeeded");
    assert_eq!(done["attempts"], 2, "{done}");
    let first_error = done["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(
        first_error.contains("lease expired"),
        "the frozen worker's attempt expired: {done}"
    );
    assert!(
        second.stderr().contains(&format!("job {long} succeeded")),
        "{}",
        second.stderr()
    );
    assert_eq!(
        setup.overlaps(),
        Vec::<String>::new(),
        "an attempt started while an earlier one still ran"
    );
    assert!(
        !ended(&setup.log, long, 1),
        "the frozen worker's attempt was killed, not finished"
    );

    // Thawed, the first worker learns the lease is gone, stores nothing, and stops cleanly.
    first.signal("CONT");
    wait_until(
        Duration::from_secs(10),
        "the thawed worker to log the lost lease",
        || {
            first
                .stderr()
                .contains(&format!("job {long} lease lost"))
                .then_some(())
        },
    );
    assert_eq!(
        get_job(&setup.server, long)["attempts"],
        2,
        "nothing reported for the lost lease"
    );
    for worker in [&mut first, &mut second] {
        worker.terminate();
        let status = worker.wait_exit(Duration::from_secs(20));
        assert!(status.success(), "exit {status}: {}", worker.stderr());
    }
}

#[test]
fn jobs_command_runs_past_the_ttl_while_heartbeats_get_through_and_dies_when_cut_off() {
    let queue = "renewed";
    let mut setup = setup(
        queue,
        // 3 s: a heartbeat (one fsynced write each second) may stall for well over a second
        // on a loaded machine before the supervisor would kill the command.
        json!({"lease_ttl": "3s", "backoff": {"base": "100ms"}}),
    );
    let long = setup.submit(queue, 8.0);
    let mut worker = setup.worker("worker", queue, "1s");
    let done = wait_for_state(&setup.server, long, "succeeded");
    assert_eq!(done["attempts"], 1, "renewed, never killed: {done}");
    assert!(
        ended(&setup.log, long, 1),
        "the 8 s command ran to its end under a 3 s lease"
    );

    // Cut off from the server, the worker cannot renew: the command dies within the ttl.
    let cut_off = setup.submit(queue, 30.0);
    let run = wait_for_start(&setup.log, 2);
    assert_eq!(run.job, cut_off);
    let _leftovers = KillOnDrop(run.pids.to_vec());
    setup.server.kill();
    wait_until(
        Duration::from_secs(8),
        "the cut-off command and its child to be killed",
        || {
            run.pids
                .iter()
                .all(|&pid| !process_alive(pid))
                .then_some(())
        },
    );
    // Back, the server has renewed the lease; the worker's report (if it gets through
    // before that renewal ends) says why the attempt failed, and the job runs again.
    setup.server.restart();
    let done = wait_for_state(&setup.server, cut_off, "succeeded");
    let first_error = done["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(
        first_error.starts_with("killed: the lease ended before the job finished")
            || first_error.contains("lease expired"),
        "{done}"
    );
    assert_eq!(setup.overlaps(), Vec::<String>::new());
    worker.terminate();
    let status = worker.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit {status}: {}", worker.stderr());
}

/// The number of lease requests long-polling on `server` now.
fn lease_waiters(server: &Server) -> f64 {
    let text = api(server, "GET", "/metrics", None, None).text();
    text.lines()
        .find_map(|line| line.strip_prefix("rota_v1_lease_waiters ")?.trim().parse().ok())
        .expect("metric rota_v1_lease_waiters")
}

/// A worker frozen with a lease request out is granted a job it cannot take up; by the
/// time it runs again the lease has ended and the server may have given the job (or, on a
/// `concurrency: 1` queue, the slot) to another worker. It must not start the command then.
#[test]
fn jobs_a_lease_granted_to_a_frozen_worker_is_not_started_after_it_ends() {
    let queue = "c2";
    let setup = setup(
        queue,
        json!({"concurrency": 1, "lease_ttl": "1s", "backoff": {"base": "100ms"}}),
    );
    let mut worker = setup.worker("worker", queue, "5s");
    wait_until(
        Duration::from_secs(30),
        "the worker's lease request to wait on the server",
        || (lease_waiters(&setup.server) >= 1.0).then_some(()),
    );
    worker.signal("STOP");
    let id = setup.submit(queue, 0.2);
    // The frozen worker's request takes the job; its lease runs out unused.
    let expired = wait_until(Duration::from_secs(30), "the first lease to expire", || {
        let job = get_job(&setup.server, id);
        (job["state"] != "leased" && job["attempts"] == 1).then_some(job)
    });
    assert_eq!(
        expired["errors"][0]["error"], "lease expired",
        "the frozen worker held the first lease: {expired}"
    );
    worker.signal("CONT");

    let done = wait_for_state(&setup.server, id, "succeeded");
    let runs: Vec<(u64, u64)> = starts(&setup.log).iter().map(|s| (s.job, s.attempt)).collect();
    assert_eq!(
        runs,
        vec![(id, 2)],
        "only the second lease ran the command: {done}\n{}",
        worker.stderr()
    );
    assert!(
        worker.stderr().contains("before the command could start"),
        "{}",
        worker.stderr()
    );
    // Idle again, with a lease request out: the signal says what the worker waits for.
    wait_until(Duration::from_secs(30), "the worker to ask for work again", || {
        (lease_waiters(&setup.server) >= 1.0).then_some(())
    });
    worker.terminate();
    let status = worker.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit {status}: {}", worker.stderr());
    assert!(
        worker.stderr().contains(
            "stopping: no new jobs; the lease request out is awaited (at most 7s) and any job it brings released"
        ),
        "{}",
        worker.stderr()
    );
}
