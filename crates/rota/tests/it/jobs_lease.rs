//! Leases held by real `rota worker` processes: a SIGKILLed worker's job is leased again
//! after the lease ttl with a greater (fencing) token and the old token is refused; a
//! SIGTERMed worker lets a running job finish within its grace period, and past it kills
//! the command and releases the job (SIGHUP alike); a worker whose lease is taken away (the
//! job cancelled) kills its command, and the cancelled job's slot stays taken until then; a SIGKILLed worker's command dies with it, grandchildren
//! included; the job supervisor that guarantees this leaves the command's outcome (exit
//! code, signal, start failure) and signal state as they were.
//!
//! The scripts here block until the test creates a "go" file (bounded, so a leftover never
//! runs for long), which makes "while the job is running" a state the test controls rather
//! than a timing guess.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{Kind, Server};
use crate::jobs_util::{
    api, args, get_job, log_records, process_alive, KillOnDrop, read_lines, rota, script, unix_ms, wait_until, Proc,
};

/// A script that logs `start <job> <token> <lease expiry> <pid>`, waits for `$GO_FILE`
/// (at most ~30 s), logs `end <job>` and prints its lease as the result.
fn blocking_script(dir: &Path) -> PathBuf {
    script(
        dir,
        "block.sh",
        r#"cat > /dev/null
echo "start $ROTA_JOB_ID $ROTA_LEASE_TOKEN $ROTA_LEASE_EXPIRES_AT $$" >> "$RUN_LOG"
i=0
while [ ! -e "$GO_FILE" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
echo "end $ROTA_JOB_ID" >> "$RUN_LOG"
printf '{"token": %s}\n' "$ROTA_LEASE_TOKEN"
"#,
    )
}

struct Start {
    job: u64,
    token: u64,
    lease_expires_ms: i64,
    pid: u32,
}

fn starts(log: &Path) -> Vec<Start> {
    log_records(log, "start")
        .into_iter()
        .map(|fields| Start {
            job: fields[0].parse().expect("job id"),
            token: fields[1].parse().expect("token"),
            lease_expires_ms: unix_ms(&fields[2]),
            pid: fields[3].parse().expect("pid"),
        })
        .collect()
}

fn wait_for_starts(log: &Path, count: usize) -> Vec<Start> {
    wait_until(
        Duration::from_secs(30),
        &format!("{count} script start(s) in the log"),
        || {
            let starts = starts(log);
            (starts.len() >= count).then_some(starts)
        },
    )
}

fn spawn_worker(
    server: &Server,
    dir: &Path,
    name: &str,
    flags: &[&str],
    command: &Path,
    log: &Path,
    go: &Path,
) -> Proc {
    let mut worker_args = args(server, &[&["worker"][..], flags].concat());
    worker_args.extend(["--".into(), command.display().to_string()]);
    let envs = [
        ("RUN_LOG", log.display().to_string()),
        ("GO_FILE", go.display().to_string()),
    ];
    Proc::spawn(dir, name, &worker_args, &envs)
}

fn submit(server: &Server, dir: &Path, queue: &str, payload: &str) -> u64 {
    let out = rota(
        dir,
        &args(
            server,
            &["job", "submit", queue, "--payload", payload, "-o", "json"],
        ),
    )
    .expect_success();
    out.json()["id"].as_u64().expect("job id")
}

#[test]
fn jobs_lease_of_a_sigkilled_worker_expires_and_its_old_token_is_fenced() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, go) = (dir.path().join("runs.log"), dir.path().join("go"));
    let command = blocking_script(dir.path());
    let id = submit(&server, dir.path(), "fenced", r#"{"work": 1}"#);
    let flags = [
        "--queue",
        "fenced",
        "--lease-ttl",
        "1500ms",
        "--poll-wait",
        "1s",
    ];

    let mut first = spawn_worker(&server, dir.path(), "worker1", &flags, &command, &log, &go);
    let first_run = wait_for_starts(&log, 1).remove(0);
    assert_eq!(first_run.job, id);
    first.kill();
    // The first script died with its worker; a second worker takes over once the lease expires.
    let mut second = spawn_worker(&server, dir.path(), "worker2", &flags, &command, &log, &go);
    let second_run = wait_for_starts(&log, 2).remove(1);
    assert_eq!(second_run.job, id, "the same job is leased again");
    assert!(
        second_run.token > first_run.token,
        "new token {} after {}",
        second_run.token,
        first_run.token
    );
    // Granted no earlier than the first lease's expiry (heartbeats only ever extend it).
    let second_granted_ms = second_run.lease_expires_ms - 1500;
    assert!(
        second_granted_ms >= first_run.lease_expires_ms,
        "leased again at {second_granted_ms} ms, before the first lease expired at {} ms",
        first_run.lease_expires_ms
    );
    let job = get_job(&server, id);
    assert_eq!(job["state"], "leased");
    assert_eq!(job["lease_token"], json!(second_run.token));
    assert_eq!(job["attempts"], 2);
    let first_error = job["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(
        first_error.contains("lease expired"),
        "the expired lease is a failed attempt: {job}"
    );

    // While the second lease runs, the old token can neither complete nor heartbeat.
    for action in ["complete", "heartbeat"] {
        let body = json!({"lease_token": first_run.token, "result": "from the dead worker"});
        let body = if action == "heartbeat" {
            json!({"lease_token": first_run.token})
        } else {
            body
        };
        let response = api(
            &server,
            "POST",
            &format!("/v1/jobs/{id}/{action}"),
            Some(&body),
            None,
        );
        assert_eq!(
            response.status(),
            409,
            "{action} with the old token: {}",
            response.text()
        );
        assert_eq!(response.json()["error"]["code"], "stale_lease");
    }
    let job = get_job(&server, id);
    assert_eq!(
        (job["state"].clone(), job["lease_token"].clone()),
        (json!("leased"), json!(second_run.token)),
        "{job}"
    );

    std::fs::write(&go, b"").expect("go file");
    let done = wait_until(Duration::from_secs(30), "the job to succeed", || {
        let job = get_job(&server, id);
        (job["state"] == "succeeded").then_some(job)
    });
    assert_eq!(
        done["result"],
        json!({"token": second_run.token}),
        "the second lease's result is stored"
    );
    // After success too, the old token changes nothing.
    let late = api(
        &server,
        "POST",
        &format!("/v1/jobs/{id}/complete"),
        Some(&json!({"lease_token": first_run.token, "result": 1})),
        None,
    );
    assert_eq!(late.status(), 409, "{}", late.text());
    assert_eq!(
        get_job(&server, id)["result"],
        json!({"token": second_run.token})
    );
    second.terminate();
    assert!(
        second.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        second.stderr()
    );
}

#[test]
fn jobs_worker_sigterm_lets_a_job_finish_within_the_grace_period() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, go) = (dir.path().join("runs.log"), dir.path().join("go"));
    let command = blocking_script(dir.path());
    let id = submit(&server, dir.path(), "graceful", "{}");
    let flags = ["--queue", "graceful", "--grace", "60s", "--poll-wait", "1s"];
    let mut worker = spawn_worker(&server, dir.path(), "worker", &flags, &command, &log, &go);
    wait_for_starts(&log, 1);
    worker.terminate();
    // Still running after the signal: the worker waits for its job, and says so.
    wait_until(
        Duration::from_secs(10),
        "the worker to log that it is stopping and how many jobs run on",
        || worker.stderr().contains("1 running job(s) get 1m to finish").then_some(()),
    );
    assert!(worker.stderr().contains(": stopping: no new jobs"), "{}", worker.stderr());
    assert!(
        worker.try_status().is_none(),
        "the worker exited with a job still running: {}",
        worker.stderr()
    );
    std::fs::write(&go, b"").expect("go file");
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit {status}: {}", worker.stderr());
    let job = get_job(&server, id);
    assert_eq!(job["state"], "succeeded", "{job}");
}

#[test]
fn jobs_worker_sigterm_past_the_grace_period_kills_the_command_and_releases_the_job() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, go) = (dir.path().join("runs.log"), dir.path().join("go"));
    let command = blocking_script(dir.path());
    let id = submit(&server, dir.path(), "impatient", "{}");
    let flags = [
        "--queue",
        "impatient",
        "--grace",
        "500ms",
        "--poll-wait",
        "1s",
    ];
    let mut worker = spawn_worker(&server, dir.path(), "worker", &flags, &command, &log, &go);
    let run = wait_for_starts(&log, 1).remove(0);
    worker.terminate();
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit {status}: {}", worker.stderr());
    assert_released_untouched(&server, id, run.pid);
    assert!(
        !read_lines(&log).iter().any(|line| line.starts_with("end")),
        "the command was killed, not finished"
    );
}

#[test]
fn jobs_worker_kills_the_command_when_its_lease_is_lost() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, go) = (dir.path().join("runs.log"), dir.path().join("go"));
    let command = blocking_script(dir.path());
    let id = submit(&server, dir.path(), "revoked", "{}");
    let flags = [
        "--queue",
        "revoked",
        // Long enough that every heartbeat (a fsynced write) renews it in time on a loaded
        // machine: the lease is lost to the cancel, never to its expiry.
        "--lease-ttl",
        "3s",
        "--poll-wait",
        "1s",
    ];
    let mut worker = spawn_worker(&server, dir.path(), "worker", &flags, &command, &log, &go);
    let run = wait_for_starts(&log, 1).remove(0);
    rota(
        dir.path(),
        &args(&server, &["job", "cancel", &id.to_string()]),
    )
    .expect_success();
    // The next heartbeat (every 1 s) is refused; the worker kills the command.
    wait_until(Duration::from_secs(20), "the command to be killed", || {
        (!process_alive(run.pid)).then_some(())
    });
    wait_until(
        Duration::from_secs(10),
        "the worker to log the lost lease",
        || {
            worker
                .stderr()
                .contains(&format!("job {id} lease lost"))
                .then_some(())
        },
    );
    assert_eq!(get_job(&server, id)["state"], "cancelled");
    worker.terminate();
    assert!(
        worker.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        worker.stderr()
    );
}

/// Cancel of a running job on a `concurrency: 1` queue: the next job starts neither when the
/// cancel is answered nor when the cancelled command is killed (its worker learns of the
/// cancel at its next heartbeat), but just before the cancelled job's lease would end: a
/// call the killed command had sent may still be under way at the API (an audit saw the
/// next job's call start 1 ms after the kill, beside the cancelled one's for 4 s).
#[test]
fn jobs_cancel_of_a_running_job_keeps_its_slot_until_its_lease_would_end() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, go) = (dir.path().join("runs.log"), dir.path().join("go"));
    // Before it starts, each run logs every earlier run whose command can still run code:
    // one that exists, is not a zombie, and has no SIGKILL pending (the SIGKILLed command
    // of a cancelled job is reaped by init, not by the worker, so it may linger as either
    // for a moment).
    let command = script(
        dir.path(),
        "solo.sh",
        r#"cat > /dev/null
for pid in $(awk '$1 == "start" { print $5 }' "$RUN_LOG" 2>/dev/null); do
  state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)
  [ -z "$state" ] || [ "$state" = Z ] || [ "$state" = X ] && continue
  pending=$(awk '$1 == "SigPnd:" || $1 == "ShdPnd:" { printf "%s ", $2 }' "/proc/$pid/status" 2>/dev/null)
  killed=0
  for mask in $pending; do [ $(( 0x$mask & 0x100 )) -ne 0 ] && killed=1; done
  [ $killed = 1 ] && continue
  echo "overlap $ROTA_JOB_ID $pid $state" >> "$RUN_LOG"
done
echo "start $ROTA_JOB_ID $ROTA_LEASE_TOKEN $ROTA_LEASE_EXPIRES_AT $$" >> "$RUN_LOG"
i=0
while [ ! -e "$GO_FILE" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
echo "end $ROTA_JOB_ID" >> "$RUN_LOG"
"#,
    );
    let put = api(&server, "PUT", "/v1/queues/solo", Some(&json!({"concurrency": 1})), None);
    assert_eq!(put.status(), 200, "{}", put.text());
    let first = submit(&server, dir.path(), "solo", "{}");
    let second = submit(&server, dir.path(), "solo", "{}");
    // Renewals every 2 s: the lease ends 4 to 6 s after the cancel, the cancel is noticed
    // within 2 s (and the command killed then), and the slot is held until 0.6 s (the
    // margin, a tenth of the ttl) before the end.
    let ttl_ms = 6_000;
    let flags = ["--queue", "solo", "--concurrency", "2", "--lease-ttl", "6s", "--poll-wait", "1s"];
    let mut worker = spawn_worker(&server, dir.path(), "worker", &flags, &command, &log, &go);
    let run = wait_for_starts(&log, 1).remove(0);
    assert_eq!(run.job, first);

    let cancelled = api(&server, "DELETE", &format!("/v1/jobs/{first}"), None, None);
    assert_eq!(cancelled.status(), 200, "{}", cancelled.text());
    let cancelled = cancelled.json();
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["lease_token"], run.token, "the lease is held: {cancelled}");
    let held_until_ms = unix_ms(cancelled["lease_expires_at"].as_str().expect("lease_expires_at"));
    // The slot stays taken: a lease right now gets nothing.
    let lease = api(&server, "POST", "/v1/queues/solo/lease", Some(&json!({"worker": "probe"})), None);
    assert_eq!(lease.status(), 200, "{}", lease.text());
    assert_eq!(lease.json()["jobs"], json!([]), "{}", lease.text());
    assert_eq!(lease.json()["blocked"]["reason"], "concurrency", "{}", lease.text());

    let starts = wait_for_starts(&log, 2);
    assert_eq!(starts[1].job, second);
    assert!(!process_alive(run.pid), "the cancelled command is gone");
    let second_granted_ms = starts[1].lease_expires_ms - ttl_ms;
    assert!(
        second_granted_ms >= held_until_ms - 1_000,
        "the next job was leased {} ms before the cancelled job's lease would end (margin 600 ms)\nworker:\n{}",
        held_until_ms - second_granted_ms,
        worker.stderr()
    );
    assert!(
        worker.stderr().contains(&format!("job {first}: its command was killed; holding its concurrency slot for")),
        "{}",
        worker.stderr()
    );
    let overlaps = log_records(&log, "overlap");
    assert!(
        overlaps.is_empty(),
        "a run started beside a live one: {overlaps:?}\nlog:\n{}\nworker:\n{}",
        read_lines(&log).join("\n"),
        worker.stderr()
    );
    // The worker gave the slot back itself (the lease would have ended later).
    wait_until(Duration::from_secs(10), "the worker to give the slot back", || {
        worker
            .stderr()
            .contains(&format!("job {first} was cancelled; its concurrency slot given back"))
            .then_some(())
    });
    let first_job = get_job(&server, first);
    assert_eq!(first_job["state"], "cancelled");
    assert!(first_job.get("lease_token").is_none_or(Value::is_null), "{first_job}");

    std::fs::write(&go, b"").expect("go file");
    wait_until(Duration::from_secs(20), "the second job to succeed", || {
        (get_job(&server, second)["state"] == "succeeded").then_some(())
    });
    worker.terminate();
    assert!(worker.wait_exit(Duration::from_secs(20)).success(), "{}", worker.stderr());
}

/// A script that starts a grandchild (`sleep 60`) and waits for it, after writing
/// `<its own pid> <the sleep's pid>` to `$PID_FILE`.
fn parent_of_a_sleep_script(dir: &Path) -> PathBuf {
    script(
        dir,
        "parent.sh",
        r#"cat > /dev/null
sleep 60 &
echo "$$ $!" > "$PID_FILE.tmp"
mv "$PID_FILE.tmp" "$PID_FILE"
wait
"#,
    )
}


#[test]
fn jobs_worker_sigkilled_takes_its_command_and_the_commands_children_with_it() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("pids");
    let command = parent_of_a_sleep_script(dir.path());
    submit(&server, dir.path(), "orphans", "{}");
    let mut worker_args = args(
        &server,
        &["worker", "--queue", "orphans", "--poll-wait", "1s"],
    );
    worker_args.extend(["--".into(), command.display().to_string()]);
    let envs = [("PID_FILE", pid_file.display().to_string())];
    let mut worker = Proc::spawn(dir.path(), "worker", &worker_args, &envs);
    let pids: Vec<u32> = wait_until(Duration::from_secs(30), "the command's pid file", || {
        let text = std::fs::read_to_string(&pid_file).ok()?;
        let pids: Vec<u32> = text
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect();
        (pids.len() == 2).then_some(pids)
    });
    let _leftovers = KillOnDrop(pids.clone());
    assert!(
        pids.iter().all(|&pid| process_alive(pid)),
        "the command and its child {pids:?} run"
    );
    worker.kill();
    // The command's process group dies with the worker, its child (the grandchild) included:
    // otherwise a lease expiry would let the job run again beside its orphan.
    wait_until(
        Duration::from_secs(10),
        "the command and its child to die with the worker",
        || pids.iter().all(|&pid| !process_alive(pid)).then_some(()),
    );
}

#[test]
fn jobs_worker_sighup_past_the_grace_period_kills_the_command_and_releases_the_job() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, go) = (dir.path().join("runs.log"), dir.path().join("go"));
    let command = blocking_script(dir.path());
    let id = submit(&server, dir.path(), "hungup", "{}");
    let flags = ["--queue", "hungup", "--grace", "500ms", "--poll-wait", "1s"];
    let mut worker = spawn_worker(&server, dir.path(), "worker", &flags, &command, &log, &go);
    let run = wait_for_starts(&log, 1).remove(0);
    // The terminal or SSH session went away: the worker stops as at SIGTERM.
    worker.signal("HUP");
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit {status}: {}", worker.stderr());
    assert!(
        worker.stderr().contains("stopping"),
        "the worker drained: {}",
        worker.stderr()
    );
    assert_released_untouched(&server, id, run.pid);
}

/// On a queue with a concurrency limit, a command killed at the end of the grace period
/// keeps the job's slot until just before its lease would end (a call it had in flight may
/// still be under way at the API: an audit's `--grace 500ms` let the same job run again at
/// once, beside it), then the job is released as usual.
#[test]
fn jobs_worker_past_the_grace_period_on_a_limited_queue_holds_the_slot_until_the_lease_ends() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, go) = (dir.path().join("runs.log"), dir.path().join("go"));
    let command = blocking_script(dir.path());
    let put = api(&server, "PUT", "/v1/queues/held", Some(&json!({"concurrency": 1})), None);
    assert_eq!(put.status(), 200, "{}", put.text());
    let id = submit(&server, dir.path(), "held", "{}");
    let flags = ["--queue", "held", "--grace", "500ms", "--lease-ttl", "3s", "--poll-wait", "1s"];
    let mut worker = spawn_worker(&server, dir.path(), "worker", &flags, &command, &log, &go);
    let run = wait_for_starts(&log, 1).remove(0);
    worker.signal("TERM");
    wait_until(Duration::from_secs(10), "the command to be killed", || (!process_alive(run.pid)).then_some(()));
    // Killed, and the slot still taken: the lease is held.
    let held = get_job(&server, id);
    assert_eq!(held["state"], "leased", "{held}\n{}", worker.stderr());
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit {status}: {}", worker.stderr());
    let stderr = worker.stderr();
    let holding = stderr.find(&format!("job {id}: its command was killed; holding its concurrency slot for"));
    let released = stderr.find(&format!("job {id} released (grace period over"));
    assert!(holding.is_some() && released.is_some() && holding < released, "{stderr}");
    assert_released_untouched(&server, id, run.pid);
}

/// The command runs under a job supervisor (see `job_supervisor.rs`), which must be
/// invisible: the same exit code, the same killing signal, the same "cannot run" error, and
/// a command that starts with no signal blocked or ignored.
#[test]
fn worker_reports_the_commands_exit_code_signal_and_start_failure_as_its_own() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    for queue in ["outcomes", "unstartable"] {
        let set = api(
            &server,
            "PUT",
            &format!("/v1/queues/{queue}"),
            Some(&json!({"max_attempts": 1})),
            None,
        );
        assert_eq!(set.status(), 200, "{}", set.text());
    }
    let payloads = ["exit", "signal", "signals"];
    let jobs: Vec<Value> = payloads
        .iter()
        .map(|payload| json!({"payload": payload}))
        .collect();
    let submitted = api(
        &server,
        "POST",
        "/v1/queues/outcomes/jobs",
        Some(&json!({"jobs": jobs})),
        None,
    );
    assert_eq!(submitted.status(), 202, "{}", submitted.text());
    let ids: Vec<u64> = submitted.json()["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| job["id"].as_u64().expect("id"))
        .collect();
    let outcomes = script(
        dir.path(),
        "outcomes.sh",
        r#"payload=$(cat)
case "$payload" in
'"exit"') echo 'went wrong' >&2; exit 7 ;;
'"signal"') echo 'about to die' >&2; kill -USR1 $$ ;;
esac
blocked=$(sed -n 's/^SigBlk:[[:space:]]*//p' /proc/$$/status)
ignored=$(sed -n 's/^SigIgn:[[:space:]]*//p' /proc/$$/status)
printf '{"blocked": "%s", "ignored": "%s"}\n' "$blocked" "$ignored"
"#,
    );
    let mut worker_args = args(
        &server,
        &[
            "worker",
            "--queue",
            "outcomes",
            "--max-jobs",
            "3",
            "--poll-wait",
            "1s",
        ],
    );
    worker_args.extend(["--".into(), outcomes.display().to_string()]);
    let mut worker = Proc::spawn(dir.path(), "outcomes-worker", &worker_args, &[]);
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", worker.stderr());
    let [exited, signalled, signals] = [ids[0], ids[1], ids[2]].map(|id| get_job(&server, id));
    assert_eq!(
        exited["errors"][0]["error"], "exit status 7: went wrong",
        "{exited}"
    );
    assert_eq!(
        signalled["errors"][0]["error"], "killed by signal 10: about to die",
        "{signalled}"
    );
    assert_eq!(signals["state"], "succeeded", "{signals}");
    // The command's signal state is what the worker inherited from us: std unblocks nothing
    // and resets only SIGPIPE (which the Rust runtime ignores) for the programs it starts.
    // Signals 32 and 33 are glibc's own (no program can set them) and left out.
    let standard = |mask: u64| mask & 0x7fff_ffff;
    let sigpipe = 1u64 << (13 - 1);
    let own = |field: &str| standard(signal_mask("/proc/thread-self/status", field));
    let reported = |field: &str| {
        let text = signals["result"][field].as_str().unwrap_or_default();
        standard(u64::from_str_radix(text, 16).unwrap_or_else(|_| panic!("{signals}")))
    };
    assert_eq!(reported("blocked"), own("SigBlk"), "{signals}");
    assert_eq!(reported("ignored"), own("SigIgn") & !sigpipe, "{signals}");

    // A command that cannot start: one that was there when the worker started (it refuses
    // to start on one that is not) and is gone when the job comes.
    let vanishing = dir.path().join("vanishing.sh");
    std::fs::write(&vanishing, "#!/bin/sh\n").expect("script");
    std::fs::set_permissions(&vanishing, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let mut worker_args = args(
        &server,
        &[
            "worker",
            "--queue",
            "unstartable",
            "--max-jobs",
            "1",
            "--poll-wait",
            "1s",
        ],
    );
    worker_args.extend(["--".into(), vanishing.display().to_string()]);
    let mut worker = Proc::spawn(dir.path(), "unstartable-worker", &worker_args, &[]);
    // Once it asks for a job, it has checked its command.
    wait_until(Duration::from_secs(20), "the worker asks for a job", || {
        let text = api(&server, "GET", "/metrics", None, None).text();
        let waiting: f64 = text.lines().find_map(|line| line.strip_prefix("rota_v1_lease_waiters ")?.trim().parse().ok())?;
        (waiting >= 1.0).then_some(())
    });
    std::fs::remove_file(&vanishing).expect("remove the script");
    let submitted = api(
        &server,
        "POST",
        "/v1/queues/unstartable/jobs",
        Some(&json!({"payload": 1})),
        None,
    );
    assert_eq!(submitted.status(), 202, "{}", submitted.text());
    let id = submitted.json()["id"].as_u64().expect("id");
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", worker.stderr());
    let job = get_job(&server, id);
    assert_eq!(
        job["errors"][0]["error"],
        format!("cannot run {}: No such file or directory (os error 2)", vanishing.display()),
        "{job}"
    );
}

/// A signal mask (`SigBlk`, `SigIgn`) from a `/proc/.../status` file.
fn signal_mask(path: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(path).expect("read status");
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in {path}"));
    u64::from_str_radix(value.trim(), 16).expect("a hex mask")
}

/// The worker stopped with job `id` unfinished: its command (`command_pid`) is gone and the
/// job is queued again, the attempt not counted and no error recorded.
fn assert_released_untouched(server: &Server, id: u64, command_pid: u32) {
    assert!(!process_alive(command_pid), "the command (pid {command_pid}) outlived the worker");
    let job = get_job(server, id);
    assert_eq!(job["state"], "queued", "released: {job}");
    assert_eq!(job["attempts"], 0, "a release does not count the attempt: {job}");
    assert_eq!(job["errors"], json!([]), "{job}");
}
