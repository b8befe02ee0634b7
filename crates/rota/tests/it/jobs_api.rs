//! The job API end to end through the CLI and raw `/v1` requests: idempotent submits,
//! waiting for a result, retries with backoff into `dead`, retry from dead, cancel, pause.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{Kind, Server};
use crate::jobs_util::{
    api, args, get_job, rota, script, try_get_queue, unix_ms, wait_until, Proc,
};

#[test]
fn jobs_submit_with_the_same_idempotency_key_gives_the_same_job() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let body = json!({"payload": {"order": 1}, "priority": 3});
    let first = api(
        &server,
        "POST",
        "/v1/queues/idem/jobs",
        Some(&body),
        Some("key-1"),
    );
    assert_eq!(first.status(), 202, "{}", first.text());
    assert_eq!(first.header("idempotent-replayed"), None);
    let id = first.json()["id"].as_u64().expect("id");
    assert_eq!(
        first.header("location"),
        Some(format!("/v1/jobs/{id}").as_str())
    );

    let again = api(
        &server,
        "POST",
        "/v1/queues/idem/jobs",
        Some(&body),
        Some("key-1"),
    );
    assert_eq!(again.status(), 202, "{}", again.text());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        again.json()["id"],
        json!(id),
        "a replay answers the same job"
    );

    let different = json!({"payload": {"order": 2}, "priority": 3});
    let reused = api(
        &server,
        "POST",
        "/v1/queues/idem/jobs",
        Some(&different),
        Some("key-1"),
    );
    assert_eq!(reused.status(), 422, "{}", reused.text());
    assert_eq!(reused.json()["error"]["code"], "idempotency_key_reused");

    // The CLI with an explicit key: running the command twice submits once.
    let command = args(
        &server,
        &[
            "job",
            "submit",
            "idem",
            "--payload",
            r#"{"order": 3}"#,
            "--idempotency-key",
            "key-2",
        ],
    );
    let out = rota(dir.path(), &command).expect_success();
    assert!(!out.stdout.contains("replayed"), "{out:?}");
    let out_again = rota(dir.path(), &command).expect_success();
    assert!(out_again.stdout.contains("replayed"), "{out_again:?}");
    let cli_id = |stdout: &str| {
        stdout
            .split_whitespace()
            .nth(1)
            .and_then(|id| id.parse::<u64>().ok())
            .expect("job N ...")
    };
    assert_eq!(cli_id(&out.stdout), cli_id(&out_again.stdout));
    // Also while it waits for the job (no worker here: the wait ends first).
    let mut waiting = command.clone();
    waiting.push("--wait=1s".into());
    let out_waited = rota(dir.path(), &waiting);
    assert!(
        out_waited
            .stderr
            .contains("(replayed: submitted before with this key); waiting up to 1s"),
        "{out_waited:?}"
    );

    let queue = try_get_queue(&server, "idem").expect("queue");
    assert_eq!(queue["counts"]["queued"], 2, "two keys, two jobs: {queue}");
}

#[test]
fn jobs_submit_wait_returns_the_result_once_a_worker_finished_it() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let echo = script(
        dir.path(),
        "echo.sh",
        "payload=$(cat)\nprintf '{\"doubled\": [%s, %s]}\\n' \"$payload\" \"$payload\"\n",
    );
    let mut worker_args = args(
        &server,
        &[
            "worker",
            "--queue",
            "waiting",
            "--max-jobs",
            "1",
            "--poll-wait",
            "1s",
        ],
    );
    worker_args.extend(["--".into(), echo.display().to_string()]);
    let mut worker = Proc::spawn(dir.path(), "worker", &worker_args, &[]);

    let out = rota(
        dir.path(),
        &args(
            &server,
            &[
                "job",
                "submit",
                "waiting",
                "--payload",
                "7",
                "--wait=30s",
                "-o",
                "json",
            ],
        ),
    );
    assert_eq!(out.code(), 0, "{out:?}");
    let job = out.json();
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"], json!({"doubled": [7, 7]}));
    let id = job["id"].as_u64().expect("id");
    // --max-jobs 1: the worker exits by itself after its job.
    assert!(
        worker.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        worker.stderr()
    );

    let got = rota(
        dir.path(),
        &args(&server, &["job", "get", &id.to_string(), "--wait=5s"]),
    );
    assert_eq!(got.code(), 0, "{got:?}");
    assert!(
        got.stdout.contains("succeeded") && got.stdout.contains(r#"{"doubled":[7,7]}"#),
        "{got:?}"
    );

    // Nobody works this queue: the wait ends with the job still queued, exit status 3.
    let unserved = rota(
        dir.path(),
        &args(
            &server,
            &[
                "job",
                "submit",
                "nobody",
                "--payload",
                "1",
                "--wait=1s",
                "-o",
                "json",
            ],
        ),
    );
    assert_eq!(unserved.code(), 3, "{unserved:?}");
    assert_eq!(unserved.json()["state"], "queued");
}

#[test]
fn jobs_failing_attempts_back_off_then_die_and_retry_from_dead_runs_again() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    rota(
        dir.path(),
        &args(
            &server,
            &[
                "queue",
                "set",
                "flaky",
                "--max-attempts",
                "3",
                "--backoff-base",
                "200ms",
                "--backoff-max",
                "1s",
            ],
        ),
    )
    .expect_success();
    let failing = script(
        dir.path(),
        "fail.sh",
        "cat > /dev/null\necho 'starting'\necho 'boom: upstream said no' >&2\nexit 3\n",
    );
    let mut worker_args = args(
        &server,
        &[
            "worker",
            "--queue",
            "flaky",
            "--max-jobs",
            "3",
            "--poll-wait",
            "1s",
        ],
    );
    worker_args.extend(["--".into(), failing.display().to_string()]);
    let mut worker = Proc::spawn(dir.path(), "failing-worker", &worker_args, &[]);
    let submitted = rota(
        dir.path(),
        &args(
            &server,
            &["job", "submit", "flaky", "--payload", "{}", "-o", "json"],
        ),
    )
    .expect_success();
    let id = submitted.json()["id"].as_u64().expect("id");

    let waited = rota(
        dir.path(),
        &args(
            &server,
            &["job", "get", &id.to_string(), "--wait=30s", "-o", "json"],
        ),
    );
    assert_eq!(waited.code(), 3, "a dead job is not a success: {waited:?}");
    let job = waited.json();
    assert_eq!(job["state"], "dead", "{job}");
    assert_eq!(job["attempts"], 3);
    let errors = job["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 3, "{job}");
    for (n, error) in errors.iter().enumerate() {
        assert_eq!(error["attempt"], json!(n + 1));
        let text = error["error"].as_str().unwrap_or_default();
        assert!(
            text.starts_with("exit status 3") && text.contains("boom: upstream said no"),
            "{text:?}"
        );
    }
    // Retry n comes no earlier than base × 2^(n-1) after failure n: the next failure is later still.
    for (n, pair) in errors.windows(2).enumerate() {
        let gap_ms = unix_ms(pair[1]["at"].as_str().expect("at"))
            - unix_ms(pair[0]["at"].as_str().expect("at"));
        let backoff_ms = 200 << n;
        assert!(
            gap_ms >= backoff_ms,
            "failure {} came {gap_ms} ms after failure {}, backoff is {backoff_ms} ms",
            n + 2,
            n + 1
        );
    }
    assert!(
        worker.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        worker.stderr()
    );

    let dead = rota(
        dir.path(),
        &args(
            &server,
            &["job", "ls", "flaky", "--state", "dead", "-o", "json"],
        ),
    )
    .expect_success();
    assert_eq!(dead.json()["jobs"][0]["id"], json!(id), "{dead:?}");

    let retried = rota(
        dir.path(),
        &args(&server, &["job", "retry", &id.to_string(), "-o", "json"]),
    )
    .expect_success()
    .json();
    assert_eq!(retried["state"], "queued");
    assert_eq!(retried["attempts"], 3, "history is kept");
    assert_eq!(
        retried["max_attempts"], 6,
        "a fresh allowance of the queue's max_attempts"
    );
    let not_dead = rota(
        dir.path(),
        &args(&server, &["job", "retry", &id.to_string()]),
    );
    assert_eq!(not_dead.code(), 4, "{not_dead:?}");
    assert!(not_dead.stderr.contains("invalid_state"), "{not_dead:?}");

    let succeeding = script(dir.path(), "ok.sh", "cat > /dev/null\necho fixed\n");
    let mut worker_args = args(
        &server,
        &[
            "worker",
            "--queue",
            "flaky",
            "--max-jobs",
            "1",
            "--poll-wait",
            "1s",
        ],
    );
    worker_args.extend(["--".into(), succeeding.display().to_string()]);
    let mut worker = Proc::spawn(dir.path(), "fixed-worker", &worker_args, &[]);
    assert!(
        worker.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        worker.stderr()
    );
    let job = get_job(&server, id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        job["result"],
        json!("fixed"),
        "non-JSON stdout is stored as a string"
    );
    assert_eq!(job["attempts"], 4);
}

#[test]
fn jobs_cancel_ends_an_unfinished_job_once() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = rota(
        dir.path(),
        &args(
            &server,
            &[
                "job",
                "submit",
                "later",
                "--payload",
                "{}",
                "--delay",
                "1h",
                "-o",
                "json",
            ],
        ),
    )
    .expect_success();
    let job = out.json();
    assert_eq!(job["state"], "scheduled", "{job}");
    let id = job["id"].as_u64().expect("id").to_string();
    let cancelled = rota(
        dir.path(),
        &args(&server, &["job", "cancel", &id, "-o", "json"]),
    )
    .expect_success()
    .json();
    assert_eq!(cancelled["state"], "cancelled");
    let again = rota(dir.path(), &args(&server, &["job", "cancel", &id]));
    assert_eq!(again.code(), 4, "{again:?}");
    assert!(again.stderr.contains("invalid_state"), "{again:?}");
    let missing = rota(dir.path(), &args(&server, &["job", "get", "999999"]));
    assert_eq!(missing.code(), 4, "{missing:?}");
    assert!(missing.stderr.contains("not_found"), "{missing:?}");
}

#[test]
fn jobs_paused_queue_leases_nothing_until_resumed_and_keeps_its_settings() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    rota(
        dir.path(),
        &args(
            &server,
            &[
                "queue",
                "set",
                "held",
                "--concurrency",
                "2",
                "--rate",
                "100/1s",
            ],
        ),
    )
    .expect_success();
    let paused = rota(
        dir.path(),
        &args(&server, &["queue", "set", "held", "--paused", "-o", "json"]),
    )
    .expect_success()
    .json();
    assert_eq!(paused["config"]["paused"], true, "{paused}");
    assert_eq!(
        paused["config"]["concurrency"], 2,
        "`queue set` changes only what it is given: {paused}"
    );
    assert_eq!(paused["config"]["rate"]["limit"], 100, "{paused}");
    let burst = rota(
        dir.path(),
        &args(
            &server,
            &["queue", "set", "held", "--burst", "7", "-o", "json"],
        ),
    )
    .expect_success()
    .json();
    assert_eq!(
        burst["config"]["rate"],
        json!({"limit": 100, "per": "1s", "burst": 7}),
        "--burst alone changes the burst: {burst}"
    );
    assert_eq!(burst["config"]["paused"], true, "{burst}");
    let no_rate = rota(
        dir.path(),
        &args(&server, &["queue", "set", "rateless", "--burst", "2"]),
    );
    assert_eq!(no_rate.code(), 1, "{no_rate:?}");
    assert!(
        no_rate.stderr.contains("--burst needs a rate"),
        "{no_rate:?}"
    );
    assert_eq!(
        try_get_queue(&server, "rateless"),
        None,
        "a refused set creates nothing"
    );

    rota(
        dir.path(),
        &args(&server, &["job", "submit", "held", "--payload", "{}"]),
    )
    .expect_success();
    let lease = json!({"worker": "test", "max": 1, "wait": "1s"});
    let held = api(
        &server,
        "POST",
        "/v1/queues/held/lease",
        Some(&lease),
        Some("lease-1"),
    );
    assert_eq!(held.status(), 200, "{}", held.text());
    assert_eq!(
        held.json()["jobs"],
        json!([]),
        "a paused queue leases nothing within the wait"
    );

    let stats = rota(dir.path(), &args(&server, &["queue", "stats", "held"])).expect_success();
    assert!(
        stats.stdout.contains("paused:       true") && stats.stdout.contains("1 queued"),
        "{stats:?}"
    );
    rota(
        dir.path(),
        &args(&server, &["queue", "set", "held", "--resume"]),
    )
    .expect_success();
    let leased = api(
        &server,
        "POST",
        "/v1/queues/held/lease",
        Some(&lease),
        Some("lease-2"),
    );
    assert_eq!(leased.status(), 200, "{}", leased.text());
    assert_eq!(
        leased.json()["jobs"].as_array().map(Vec::len),
        Some(1),
        "{}",
        leased.text()
    );

    let listed = rota(dir.path(), &args(&server, &["queue", "ls"])).expect_success();
    assert!(
        listed
            .stdout
            .lines()
            .any(|line| line.starts_with("held ") && line.contains(" 2 ")),
        "{listed:?}"
    );
    wait_until(
        Duration::from_secs(5),
        "the queue to show the lease",
        || {
            let queue = try_get_queue(&server, "held")?;
            (queue["counts"]["leased"] == 1).then_some(())
        },
    );
    // The operator's view of a lease: who holds it and until when, and the slots taken.
    let stats = rota(dir.path(), &args(&server, &["queue", "stats", "held"])).expect_success();
    assert!(stats.stdout.contains("leases held:  1\n"), "{stats:?}");
    let jobs = rota(dir.path(), &args(&server, &["job", "ls", "held"])).expect_success();
    let header = jobs.stdout.lines().next().unwrap_or_default();
    assert!(header.contains(" LEASE "), "{jobs:?}");
    let expires = leased.json()["jobs"][0]["lease_expires_at"].as_str().unwrap_or("?").to_owned();
    assert!(
        jobs.stdout.contains(&format!("test until {expires}")),
        "{jobs:?}"
    );
}

#[test]
fn jobs_submit_refuses_a_run_at_without_a_time_zone_before_sending() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    for zoneless in [
        "2026-12-06T15:00:00",
        "2026-12-06 15:00:00",
        "2026-12-06T15:00:00.5",
    ] {
        let out = rota(
            dir.path(),
            &args(
                &server,
                &[
                    "job",
                    "submit",
                    "zoned",
                    "--payload",
                    "1",
                    "--run-at",
                    zoneless,
                ],
            ),
        );
        assert_eq!(out.code(), 1, "{zoneless}: {out:?}");
        assert!(
            out.stderr.contains("--run-at") && out.stderr.contains("2026-01-02T03:04:05Z"),
            "{zoneless}: says what is expected: {out:?}"
        );
    }
    assert_eq!(try_get_queue(&server, "zoned"), None, "nothing was sent");
    // In the past, so queued at once whatever today is.
    for zoned in [
        "2020-01-02T03:04:05Z",
        "2020-01-02t05:04:05.5+02:00",
        "2020-01-01 22:34:05-04:30",
    ] {
        rota(
            dir.path(),
            &args(
                &server,
                &[
                    "job",
                    "submit",
                    "zoned",
                    "--payload",
                    "1",
                    "--run-at",
                    zoned,
                ],
            ),
        )
        .expect_success();
    }
    let queue = try_get_queue(&server, "zoned").expect("queue");
    assert_eq!(queue["counts"]["queued"], 3, "{queue}");
}

#[test]
fn worker_stops_at_once_on_a_bad_queue_name_and_at_sigterm_while_no_server_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Port 1 on loopback: nothing listens. A bad name is refused before anything is sent.
    let out = rota(
        dir.path(),
        &["worker", "--queue", "bad name", "--endpoints", "http://127.0.0.1:1", "--", "true"].map(String::from),
    );
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.contains("(field: queue)") && out.stderr.contains("stopping"), "{}", out.stderr);

    // A command that cannot run is refused at start, not found out by each job in turn
    // (each attempt failed with "No such file or directory" until the job was dead).
    let missing = rota(
        dir.path(),
        &["worker", "--queue", "q", "--endpoints", "http://127.0.0.1:1", "--", "./call-api.sh"].map(String::from),
    );
    assert_eq!(missing.code(), 1, "{missing:?}");
    assert!(missing.stderr.contains("cannot run \"./call-api.sh\"") && missing.stderr.contains("relative to"), "{}", missing.stderr);
    std::fs::write(dir.path().join("plain.sh"), "#!/bin/sh\n").expect("script");
    let plain = dir.path().join("plain.sh").display().to_string();
    let not_executable = rota(dir.path(), &["worker", "--queue", "q", "--endpoints", "http://127.0.0.1:1", "--", &plain].map(String::from));
    assert_eq!(not_executable.code(), 1, "{not_executable:?}");
    assert!(not_executable.stderr.contains("not executable (chmod +x"), "{}", not_executable.stderr);
    let unknown = rota(dir.path(), &["worker", "--queue", "q", "--endpoints", "http://127.0.0.1:1", "--", "no-such-program-here"].map(String::from));
    assert!(unknown.code() == 1 && unknown.stderr.contains("not found in PATH"), "{unknown:?}");

    let worker_args = ["worker", "--queue", "q", "--endpoints", "http://127.0.0.1:1", "--", "true"].map(String::from);
    let mut worker = Proc::spawn(dir.path(), "worker-no-server", &worker_args, &[]);
    wait_until(Duration::from_secs(20), "the worker says it is still trying", || {
        worker.stderr().contains("no answer yet from http://127.0.0.1:1; still trying").then_some(())
    });
    worker.terminate();
    // The client alone would retry for 30 s before giving up.
    let status = worker.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}: {}", worker.stderr());
}

#[test]
fn worker_on_a_queue_that_does_not_exist_yet_says_so_and_runs_its_first_job() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut worker_args = args(&server, &["worker", "--queue", "later", "--max-jobs", "1", "--poll-wait", "1s"]);
    worker_args.extend(["--".into(), "cat".into()]);
    let mut worker = Proc::spawn(dir.path(), "later-worker", &worker_args, &[]);
    wait_until(Duration::from_secs(20), "the worker's note", || worker.stderr().contains("leasing from").then_some(()));
    let stderr = worker.stderr();
    assert!(stderr.contains("queue later does not exist yet") && stderr.contains("rota queue ls"), "{stderr}");
    let submitted = api(&server, "POST", "/v1/queues/later/jobs", Some(&json!({"payload": "first"})), None);
    assert_eq!(submitted.status(), 202, "{}", submitted.text());
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", worker.stderr());
    assert_eq!(get_job(&server, submitted.json()["id"].as_u64().expect("id"))["result"], "first");
}

#[test]
fn worker_completes_each_job_and_takes_the_next_in_one_request() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let jobs: Vec<Value> = (0..5).map(|i| json!({"payload": i, "priority": i})).collect();
    let submitted = api(&server, "POST", "/v1/queues/chain/jobs", Some(&json!({"jobs": jobs})), None);
    assert_eq!(submitted.status(), 202, "{}", submitted.text());
    let ids: Vec<u64> = submitted.json()["jobs"].as_array().expect("jobs").iter().map(|job| job["id"].as_u64().expect("id")).collect();
    let mut worker_args = args(&server, &["worker", "--queue", "chain", "--max-jobs", "5", "--poll-wait", "1s"]);
    worker_args.extend(["--".into(), "cat".into()]);
    let mut worker = Proc::spawn(dir.path(), "chain-worker", &worker_args, &[]);
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", worker.stderr());
    for &id in &ids {
        let job = get_job(&server, id);
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["result"], job["payload"], "cat echoes the payload: {job}");
    }
    // The worker logs each start: highest priority (the last id) first along the chain.
    let stderr = worker.stderr();
    let started: Vec<u64> = stderr
        .lines()
        .filter_map(|line| line.split("job ").nth(1)?.split_once(" attempt ")?.0.parse().ok())
        .collect();
    let expected: Vec<u64> = ids.iter().rev().copied().collect();
    assert_eq!(started, expected, "{stderr}");
    assert!(!stderr.contains("does not exist yet"), "{stderr}");
    // One lease request; each complete leased the next job (the last one asked for none:
    // --max-jobs was spent).
    let metrics = api(&server, "GET", "/metrics", None, None).text();
    let lease_requests: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("rota_http_requests_total") && line.contains("route=\"/v1/queues/{q}/lease\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(lease_requests, 1.0, "{metrics}");
}

#[test]
fn worker_stores_stdout_nested_deeper_than_the_server_takes_as_a_string() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    // One attempt: a refused result would make the job dead.
    let queue = api(&server, "PUT", "/v1/queues/deep", Some(&json!({"max_attempts": 1, "lease_ttl": "10m"})), None);
    assert_eq!(queue.status(), 200, "{}", queue.text());
    let submitted = api(&server, "POST", "/v1/queues/deep/jobs", Some(&json!({"payload": "x"})), None);
    assert_eq!(submitted.status(), 202, "{}", submitted.text());
    let id = submitted.json()["id"].as_u64().expect("id");
    // Valid JSON, 100 levels deep: over the server's nesting limit (64), so not JSON it
    // takes, like `1e400`: the text is the result, as a string.
    let deep = "BEGIN { for (i = 0; i < 100; i++) printf \"[\"; for (i = 0; i < 100; i++) printf \"]\" }";
    let mut worker_args = args(&server, &["worker", "--queue", "deep", "--max-jobs", "1", "--poll-wait", "1s"]);
    worker_args.extend(["--".into(), "awk".into(), deep.into()]);
    let mut worker = Proc::spawn(dir.path(), "deep-worker", &worker_args, &[]);
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", worker.stderr());
    let job = get_job(&server, id);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", worker.stderr());
    assert_eq!(job["result"], json!(format!("{}{}", "[".repeat(100), "]".repeat(100))), "{job}");
}

#[test]
fn worker_fails_an_attempt_whose_stdout_is_over_the_result_limit_once_saying_so() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    // One attempt and a lease far longer than the test: only the worker's `fail` can end it.
    let queue = api(&server, "PUT", "/v1/queues/big", Some(&json!({"max_attempts": 1, "lease_ttl": "10m"})), None);
    assert_eq!(queue.status(), 200, "{}", queue.text());
    let jobs = json!({"jobs": [{"payload": "long"}, {"payload": "quotes"}]});
    let submitted = api(&server, "POST", "/v1/queues/big/jobs", Some(&jobs), None);
    assert_eq!(submitted.status(), 202, "{}", submitted.text());
    let ids: Vec<u64> = submitted.json()["jobs"].as_array().expect("jobs").iter().map(|job| job["id"].as_u64().expect("id")).collect();
    // 1100000 bytes: over the 1 MiB the worker reads. 140000 quotes: within the 256 KiB
    // result limit as text, but not JSON, and 280002 bytes once escaped into a JSON string.
    let command = script(
        dir.path(),
        "big.sh",
        "case \"$(cat)\" in\n\
         '\"long\"') head -c 1100000 /dev/zero | tr '\\0' x ;;\n\
         *) head -c 140000 /dev/zero | tr '\\0' '\"' ;;\n\
         esac\n",
    );
    let mut worker_args = args(&server, &["worker", "--queue", "big", "--max-jobs", "2", "--poll-wait", "1s"]);
    worker_args.extend(["--".into(), command.display().to_string()]);
    let mut worker = Proc::spawn(dir.path(), "big-worker", &worker_args, &[]);
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", worker.stderr());
    let expected = [
        "stdout is over 1048576 bytes; the result limit is 262144 bytes (of JSON without the whitespace between its tokens)",
        "stdout is not JSON and is 280002 bytes as a JSON string, over the 262144 byte result limit",
    ];
    for (id, expected) in ids.iter().zip(expected) {
        let job = get_job(&server, *id);
        assert_eq!(job["state"], "dead", "{job}\n{}", worker.stderr());
        assert_eq!(job["attempts"], 1, "{job}");
        assert_eq!(job["errors"][0]["error"], expected, "{job}");
    }
}

/// `-o json` of the read commands prints what the server answered, byte for byte: nulls
/// kept (`"concurrency": null`), numbers as written (`"rate_tokens": 5`), fields in order.
#[test]
fn cli_json_output_is_the_servers_answer() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let limited = api(&server, "PUT", "/v1/queues/limited", Some(&json!({"rate": {"limit": 5, "per": "1s"}})), None);
    assert_eq!(limited.status(), 200, "{}", limited.text());
    for queue in ["limited", "plain"] {
        let submitted = api(&server, "POST", &format!("/v1/queues/{queue}/jobs"), Some(&json!({"payload": {"n": 1}, "priority": 3})), None);
        assert_eq!(submitted.status(), 202, "{}", submitted.text());
    }
    let cases = [
        (vec!["queue", "stats", "limited"], "/v1/queues/limited"),
        (vec!["queue", "stats", "plain"], "/v1/queues/plain"),
        (vec!["queue", "ls"], "/v1/queues"),
        (vec!["job", "ls", "plain"], "/v1/queues/plain/jobs"),
        (vec!["job", "get", "1"], "/v1/jobs/1"),
    ];
    for (command, target) in cases {
        let mut command_args = command.clone();
        command_args.extend(["-o", "json"]);
        let printed = rota(dir.path(), &args(&server, &command_args));
        assert!(printed.status.success(), "{printed:?}");
        let answered = api(&server, "GET", target, None, None);
        assert_eq!(answered.status(), 200, "{}", answered.text());
        assert_eq!(printed.stdout.trim_end(), answered.text().trim_end(), "rota {}", command.join(" "));
    }
}

/// A dead-letter queue emptied from the command line: `rota queue retry` in rounds of up
/// to 1,000 (`--max` stops early), and `job retry|cancel` with several ids, each refusal
/// reported and the others done.
#[test]
fn jobs_a_queues_dead_jobs_are_retried_from_the_cli_and_several_jobs_at_once() {
    const JOBS: usize = 2_500;
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let queue = api(&server, "PUT", "/v1/queues/dlq", Some(&json!({"max_attempts": 1})), None);
    assert_eq!(queue.status(), 200, "{}", queue.text());
    for chunk in 0..JOBS / 500 {
        let jobs: Vec<Value> = (0..500).map(|n| json!({"payload": chunk * 500 + n})).collect();
        let submitted = api(&server, "POST", "/v1/queues/dlq/jobs", Some(&json!({"jobs": jobs})), None);
        assert_eq!(submitted.status(), 202, "{}", submitted.text());
    }
    // Leases that end at once: with one attempt each, every job is dead.
    let mut leased = 0;
    while leased < JOBS {
        let lease = api(&server, "POST", "/v1/queues/dlq/lease", Some(&json!({"worker": "w", "max": 1000, "lease_ttl": "1ms"})), None);
        leased += lease.json()["jobs"].as_array().map_or(0, Vec::len);
    }
    wait_until(Duration::from_secs(20), "every job dead", || {
        let queue = try_get_queue(&server, "dlq")?;
        (queue["counts"]["dead"] == json!(JOBS)).then_some(())
    });

    let first = rota(dir.path(), &args(&server, &["queue", "retry", "dlq", "--max", "1500"])).expect_success();
    assert!(first.stdout.contains("queue dlq: 1500 dead jobs queued again; 1000 still dead"), "{first:?}");
    let counts = try_get_queue(&server, "dlq").expect("queue")["counts"].clone();
    assert_eq!((counts["queued"].as_u64(), counts["dead"].as_u64()), (Some(1500), Some(1000)), "{counts}");
    // The oldest first.
    let page = api(&server, "GET", "/v1/queues/dlq/jobs?state=dead&limit=1", None, None).json();
    assert_eq!(page["jobs"][0]["payload"], json!(1500), "{page}");
    let rest = rota(dir.path(), &args(&server, &["queue", "retry", "dlq", "-o", "json"])).expect_success();
    assert_eq!(rest.json(), json!({"queue": "dlq", "retried": 1000, "dead": 0}), "{rest:?}");
    let again = rota(dir.path(), &args(&server, &["queue", "retry", "dlq"])).expect_success();
    assert!(again.stdout.contains("0 dead jobs queued again; 0 still dead"), "{again:?}");
    let none = rota(dir.path(), &args(&server, &["job", "ls", "dlq", "--state", "dead"])).expect_success();
    assert!(none.stderr.contains("no jobs on this page"), "{none:?}");
    let missing = rota(dir.path(), &args(&server, &["queue", "retry", "nope"]));
    assert_eq!(missing.code(), 4, "{missing:?}");

    // Several ids: one already cancelled is refused, the others are cancelled.
    let ids: Vec<String> = (1..=3).map(|id| id.to_string()).collect();
    rota(dir.path(), &args(&server, &["job", "cancel", &ids[0]])).expect_success();
    let cancel = rota(dir.path(), &args(&server, &["job", "cancel", &ids[0], &ids[1], &ids[2], "-o", "json"]));
    assert_eq!(cancel.code(), 4, "{cancel:?}");
    assert!(cancel.stderr.contains("job 1: ") && cancel.stderr.contains("job 1 was cancelled already"), "{cancel:?}");
    let cancelled: Vec<Value> = cancel.stdout.lines().map(|line| serde_json::from_str(line).expect("json")).collect();
    assert_eq!(cancelled.iter().map(|job| job["id"].clone()).collect::<Vec<_>>(), [json!(2), json!(3)]);
    assert!(cancelled.iter().all(|job| job["state"] == "cancelled"), "{cancelled:?}");
}

/// `rota worker --timeout`: a command running longer is killed (its whole process group)
/// and its attempt fails with what it wrote to stderr, although its heartbeats kept the
/// lease; a lease ttl alone is no run timeout.
#[test]
fn jobs_a_worker_kills_a_command_past_its_timeout_and_fails_the_attempt() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let queue = api(&server, "PUT", "/v1/queues/slow", Some(&json!({"max_attempts": 1, "lease_ttl": "1s"})), None);
    assert_eq!(queue.status(), 200, "{}", queue.text());
    let marker = dir.path().join("still-running");
    let slow = script(
        dir.path(),
        "slow.sh",
        &format!(
            "cat > /dev/null\necho 'calling the API' >&2\n(sleep 3; touch {}) &\nsleep 30\n",
            marker.display()
        ),
    );
    let mut worker_args = args(&server, &["worker", "--queue", "slow", "--max-jobs", "1", "--timeout", "2s", "--poll-wait", "1s"]);
    worker_args.extend(["--".into(), slow.display().to_string()]);
    let mut worker = Proc::spawn(dir.path(), "timeout-worker", &worker_args, &[]);
    let submitted = api(&server, "POST", "/v1/queues/slow/jobs", Some(&json!({"payload": 1})), None);
    let id = submitted.json()["id"].as_u64().expect("id");
    let started = std::time::Instant::now();
    let done = api(&server, "GET", &format!("/v1/jobs/{id}?wait=30s"), None, None).json();
    assert_eq!(done["state"], "dead", "{done}");
    // Past the lease ttl (heartbeats kept it), ended by the timeout.
    assert!(started.elapsed() >= Duration::from_millis(2_000), "{:?}", started.elapsed());
    assert_eq!(
        done["errors"][0]["error"],
        json!("timed out: killed after 2s (--timeout): calling the API"),
        "{done}"
    );
    assert!(worker.wait_exit(Duration::from_secs(30)).success(), "{}", worker.stderr());
    assert!(worker.stderr().contains("timed out"), "{}", worker.stderr());
    // The background process of its group died with it.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!marker.exists(), "a process of the command's group outlived the timeout");

    let zero = rota(dir.path(), &args(&server, &["worker", "--queue", "slow", "--timeout", "0s", "--", "true"]));
    assert_eq!(zero.code(), 2, "{zero:?}");
    assert!(zero.stderr.contains("a timeout must be longer than 0"), "{zero:?}");
}

/// A worker on a paused queue says so once (an idle worker is explained), and that the
/// queue was resumed when it leases again.
#[test]
fn jobs_a_worker_says_when_its_queue_is_paused_and_resumed() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let queue = api(&server, "PUT", "/v1/queues/held", Some(&json!({"paused": true})), None);
    assert_eq!(queue.status(), 200, "{}", queue.text());
    let submitted = api(&server, "POST", "/v1/queues/held/jobs", Some(&json!({"payload": 1})), None);
    let id = submitted.json()["id"].as_u64().expect("id");
    let mut worker_args = args(&server, &["worker", "--queue", "held", "--max-jobs", "1", "--poll-wait", "200ms"]);
    worker_args.extend(["--".into(), "cat".into()]);
    let mut worker = Proc::spawn(dir.path(), "paused-worker", &worker_args, &[]);
    wait_until(Duration::from_secs(20), "the worker saying the queue is paused", || {
        worker.stderr().contains("queue held is paused: waiting until it is resumed").then_some(())
    });
    rota(dir.path(), &args(&server, &["queue", "set", "held", "--resume"])).expect_success();
    let done = api(&server, "GET", &format!("/v1/jobs/{id}?wait=30s"), None, None).json();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(worker.wait_exit(Duration::from_secs(30)).success(), "{}", worker.stderr());
    let log = worker.stderr();
    assert_eq!(log.matches("is paused").count(), 1, "said once: {log}");
    assert!(log.contains("queue held is no longer paused"), "{log}");
}

/// At SIGTERM, requests that wait are answered as if their wait ran out, not cut off: a
/// lease with no jobs, a job not finished yet as it is now (an audit saw the connection
/// close without an answer, which a client must take as a failure of unknown outcome).
#[test]
fn waiting_leases_and_result_waits_are_answered_at_sigterm() {
    let mut server = Server::start(Kind::Rota);
    let submitted = api(&server, "POST", "/v1/queues/other/jobs", Some(&json!({"payload": 1})), None);
    assert_eq!(submitted.status(), 202, "{}", submitted.text());
    let id = submitted.json()["id"].as_u64().expect("id");
    let addr = server.addr();
    let lease = std::thread::spawn(move || {
        let body = json!({"worker": "w", "wait": "30s"}).to_string();
        let request = crate::http::Request::new("POST", "/v1/queues/empty/lease")
            .header("Content-Type", "application/json")
            .raw_body(body.into_bytes());
        crate::http::send_with_timeout(addr, &request, Duration::from_secs(40))
    });
    let result = std::thread::spawn(move || {
        let request = crate::http::Request::new("GET", &format!("/v1/jobs/{id}?wait=30s"));
        crate::http::send_with_timeout(addr, &request, Duration::from_secs(40))
    });
    wait_until(Duration::from_secs(10), "both requests waiting", || {
        let text = api(&server, "GET", "/metrics", None, None).text();
        let gauge = |name: &str| {
            text.lines().find(|line| line.split_whitespace().next() == Some(name)).and_then(|line| line.split_whitespace().nth(1).map(str::to_string))
        };
        (gauge("rota_v1_lease_waiters").as_deref() == Some("1") && gauge("rota_v1_result_waiters").as_deref() == Some("1")).then_some(())
    });
    let status = server.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|status| status.success()), "{status:?}: {}", server.stderr_tail());
    let lease = lease.join().expect("lease thread").expect("an answer to the lease");
    assert_eq!((lease.status(), lease.json()["jobs"].clone()), (200, json!([])), "{}", lease.text());
    let result = result.join().expect("result thread").expect("an answer to the wait");
    assert_eq!((result.status(), result.json()["state"].clone()), (200, json!("queued")), "{}", result.text());
}
