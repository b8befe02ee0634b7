//! Leases held by real `rota worker` processes: a SIGKILLed worker's job is leased again
//! after the lease ttl with a greater (fencing) token and the old token is refused; a
//! SIGTERMed worker lets a running job finish within its grace period, and past it kills
//! the command and releases the job; a worker whose lease is taken away (the job cancelled)
//! kills its command.
//!
//! The scripts here block until the test creates a "go" file (bounded, so a leftover never
//! runs for long), which makes "while the job is running" a state the test controls rather
//! than a timing guess.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::harness::{Kind, Server};
use crate::jobs_util::{
    api, args, get_job, process_alive, read_lines, rota, script, unix_ms, wait_until, Proc,
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
    read_lines(log)
        .iter()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.first() == Some(&"start")).then(|| Start {
                job: fields[1].parse().expect("job id"),
                token: fields[2].parse().expect("token"),
                lease_expires_ms: unix_ms(fields[3]),
                pid: fields[4].parse().expect("pid"),
            })
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
    // The first script is an orphan now, still "working"; a second worker takes over.
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
    // Still running after the signal: the worker waits for its job.
    wait_until(
        Duration::from_secs(10),
        "the worker to log that it is stopping",
        || worker.stderr().contains("stopping").then_some(()),
    );
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
    assert!(
        !process_alive(run.pid),
        "the command (pid {}) outlived the worker",
        run.pid
    );
    let job = get_job(&server, id);
    assert_eq!(job["state"], "queued", "released: {job}");
    assert_eq!(
        job["attempts"], 0,
        "a release does not count the attempt: {job}"
    );
    assert_eq!(job["errors"], json!([]), "{job}");
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
        "--lease-ttl",
        "600ms",
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
    // The next heartbeat (every 200 ms) is refused; the worker kills the command.
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
