//! Payloads and results are the user's JSON text end to end: `rota job submit` sends it as
//! given (key order, integers beyond 64 bits, `1.0`), the worker's command gets those bytes
//! on stdin and its JSON stdout is stored as written, and `rota job get`/`ls -o json` print
//! the server's bytes. A tree (`serde_json::Value`) anywhere on the way sorts keys and turns
//! big integers into rounded floats.

use std::time::Duration;

use crate::harness::{Kind, Server};
use crate::http::{self, Request};
use crate::jobs_util::{api, args, rota, rota_with_stdin, script, try_get_queue, wait_until, Proc};

/// Unsorted keys, an integer beyond 64 bits, a `1.0`, an escape: all changed by a re-encode.
const PAYLOAD: &str = r#"{"z":1,"a":123456789012345678901234567890,"f":1.0,"s":"caf\u00e9"}"#;

/// `GET /v1/jobs/{id}` as the server wrote it.
fn job_text(server: &Server, id: u64) -> String {
    let response = api(server, "GET", &format!("/v1/jobs/{id}"), None, None);
    assert_eq!(response.status(), 200, "GET job {id}: {}", response.text());
    response.text()
}

/// The id in `job 7 queued in q (priority 0)`.
fn submitted_id(stdout: &str) -> u64 {
    stdout
        .split_whitespace()
        .nth(1)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("not `job N ...`: {stdout:?}"))
}

/// A `/v1` request whose body is sent exactly as given (as curl `-d` sends it).
fn post_text(server: &Server, target: &str, body: &str, key: &str) -> http::Response {
    let request = Request::new("POST", target)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", key)
        .raw_body(body.as_bytes().to_vec());
    http::send(server.addr(), &request).unwrap_or_else(|e| panic!("POST {target}: {e}"))
}

#[test]
fn jobs_cli_submits_and_prints_the_payload_text_as_given() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let expected = format!("\"payload\":{PAYLOAD},");

    let flag = rota(
        dir.path(),
        &args(&server, &["job", "submit", "raw", "--payload", PAYLOAD]),
    )
    .expect_success();
    let file = dir.path().join("payload.json");
    std::fs::write(&file, format!("\n  {PAYLOAD}\n")).expect("write payload");
    let from_file = rota(
        dir.path(),
        &args(
            &server,
            &[
                "job",
                "submit",
                "raw",
                "--payload-file",
                &file.display().to_string(),
            ],
        ),
    )
    .expect_success();
    let from_stdin = rota_with_stdin(
        dir.path(),
        &args(&server, &["job", "submit", "raw"]),
        format!("{PAYLOAD}\n").as_bytes(),
    )
    .expect_success();
    for out in [&flag, &from_file, &from_stdin] {
        let id = submitted_id(&out.stdout);
        let text = job_text(&server, id);
        assert!(
            text.contains(&expected),
            "job {id} stored another payload: {text}"
        );

        let shown = rota(
            dir.path(),
            &args(&server, &["job", "get", &id.to_string(), "-o", "json"]),
        )
        .expect_success();
        assert!(
            shown.stdout.contains(&expected),
            "job get -o json: {shown:?}"
        );
        let table =
            rota(dir.path(), &args(&server, &["job", "get", &id.to_string()])).expect_success();
        assert!(
            table.stdout.contains(&format!("payload:      {PAYLOAD}\n")),
            "job get: {table:?}"
        );
    }
    let listed = rota(
        dir.path(),
        &args(&server, &["job", "ls", "raw", "-o", "json"]),
    )
    .expect_success();
    assert_eq!(
        listed.stdout.matches(&expected).count(),
        3,
        "job ls -o json: {listed:?}"
    );

    // Empty: refused too (an unset shell variable), not queued as a job without payload.
    for empty in ["", "  "] {
        let refused = rota(dir.path(), &args(&server, &["job", "submit", "refused", "--payload", empty]));
        assert_eq!(refused.code(), 1, "{empty:?}: {refused:?}");
        assert!(refused.stderr.contains("the payload is empty"), "{refused:?}");
    }
    // Not JSON: refused before anything is sent.
    for bad in [r#"{"a":"#, "{'a': 1}", "1 2"] {
        let refused = rota(
            dir.path(),
            &args(&server, &["job", "submit", "refused", "--payload", bad]),
        );
        assert_eq!(refused.code(), 1, "{bad}: {refused:?}");
        assert!(
            refused.stderr.contains("the payload is not JSON"),
            "{bad}: {refused:?}"
        );
    }
    // JSON the server refuses: said so, not called "not JSON".
    for (unreadable, words) in [("1e400", "beyond what a 64-bit float holds"), (r#""\ud800""#, "lone UTF-16 surrogate")] {
        let refused = rota(dir.path(), &args(&server, &["job", "submit", "refused", "--payload", unreadable]));
        assert_eq!(refused.code(), 1, "{unreadable}: {refused:?}");
        assert!(refused.stderr.contains(words) && !refused.stderr.contains("not JSON"), "{unreadable}: {refused:?}");
    }
    // Longer than the CLI reads: refused as too long, not cut off into "not JSON".
    let long = dir.path().join("long.json");
    std::fs::write(&long, format!("\"{}\"", "x".repeat(2 << 20))).expect("write long payload");
    let refused = rota(
        dir.path(),
        &args(
            &server,
            &["job", "submit", "refused", "--payload-file", long.to_str().expect("utf-8 path")],
        ),
    );
    assert_eq!(refused.code(), 1, "{refused:?}");
    assert!(refused.stderr.contains("the payload is over"), "{refused:?}");
    // JSON nested deeper than the server takes: refused as such, not as "not JSON".
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    let refused = rota(
        dir.path(),
        &args(&server, &["job", "submit", "refused", "--payload", &deep]),
    );
    assert_eq!(refused.code(), 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("Error:  the payload nests deeper than 64 levels, the server's limit"),
        "{refused:?}"
    );
    assert_eq!(
        try_get_queue(&server, "refused"),
        None,
        "nothing was submitted"
    );
}

#[test]
fn jobs_worker_gives_the_command_the_payload_text_and_stores_its_json_stdout_as_written() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    // Submitted over HTTP, so that this checks the worker alone. Two jobs: the first one's
    // complete leases the second (`lease_next`), the second's complete leases nothing.
    let payloads = [PAYLOAD, r#"[-0,1E2,{"b":[],"a":null},"\ud83d\ude00"]"#];
    let ids: Vec<u64> = payloads
        .iter()
        .enumerate()
        .map(|(n, payload)| {
            let submitted = post_text(
                &server,
                "/v1/queues/echo/jobs",
                &format!("{{\"payload\":{payload}}}"),
                &format!("echo-{n}"),
            );
            assert_eq!(submitted.status(), 202, "{}", submitted.text());
            submitted.json()["id"].as_u64().expect("id")
        })
        .collect();

    // `tee`: the command's stdin is kept in a file and is its stdout, so the result.
    let tee = script(
        dir.path(),
        "tee.sh",
        &format!(
            "exec tee '{}/stdin.'\"$ROTA_JOB_ID\"\n",
            dir.path().display()
        ),
    );
    let mut worker_args = args(
        &server,
        &[
            "worker",
            "--queue",
            "echo",
            "--max-jobs",
            "2",
            "--poll-wait",
            "1s",
        ],
    );
    worker_args.extend(["--".into(), tee.display().to_string()]);
    let mut worker = Proc::spawn(dir.path(), "worker", &worker_args, &[]);
    assert!(
        worker.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        worker.stderr()
    );
    for (id, payload) in ids.iter().zip(payloads) {
        let text = wait_until(Duration::from_secs(10), "the job to succeed", || {
            let text = job_text(&server, *id);
            text.contains("\"state\":\"succeeded\"").then_some(text)
        });
        let stdin = dir.path().join(format!("stdin.{id}"));
        assert_eq!(
            std::fs::read_to_string(&stdin).expect("stdin copy"),
            payload,
            "job {id}: the command's stdin"
        );
        assert!(text.contains(&format!("\"payload\":{payload},")), "{text}");
        assert!(text.contains(&format!("\"result\":{payload},")), "{text}");

        let shown = rota(
            dir.path(),
            &args(&server, &["job", "get", &id.to_string(), "-o", "json"]),
        )
        .expect_success();
        assert!(
            shown.stdout.contains(&format!("\"result\":{payload}")),
            "job get -o json: {shown:?}"
        );
    }
}

#[test]
fn jobs_cli_and_curl_with_the_same_idempotency_key_give_the_same_job() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");

    // curl first (with its own spacing), then the CLI with the same key and payload.
    let curl = post_text(
        &server,
        "/v1/queues/idem/jobs",
        &format!("{{\"payload\": {PAYLOAD}}}"),
        "curl-then-cli",
    );
    assert_eq!(curl.status(), 202, "{}", curl.text());
    let id = curl.json()["id"].as_u64().expect("id");
    let cli = rota(
        dir.path(),
        &args(
            &server,
            &[
                "job",
                "submit",
                "idem",
                "--payload",
                PAYLOAD,
                "--idempotency-key",
                "curl-then-cli",
            ],
        ),
    )
    .expect_success();
    assert_eq!(submitted_id(&cli.stdout), id, "{cli:?}");
    assert!(cli.stdout.contains("replayed"), "{cli:?}");

    // The CLI first, twice, then curl.
    let command = args(
        &server,
        &[
            "job",
            "submit",
            "idem",
            "--payload",
            PAYLOAD,
            "--idempotency-key",
            "cli-then-curl",
        ],
    );
    let first = rota(dir.path(), &command).expect_success();
    let again = rota(dir.path(), &command).expect_success();
    let id = submitted_id(&first.stdout);
    assert_eq!(submitted_id(&again.stdout), id, "{again:?}");
    assert!(again.stdout.contains("replayed"), "{again:?}");
    let curl = post_text(
        &server,
        "/v1/queues/idem/jobs",
        &format!("{{\"payload\":{PAYLOAD},\"priority\":0}}"),
        "cli-then-curl",
    );
    assert_eq!(curl.status(), 202, "{}", curl.text());
    assert_eq!(curl.header("idempotent-replayed"), Some("true"));
    assert_eq!(curl.json()["id"].as_u64(), Some(id));

    let queue = try_get_queue(&server, "idem").expect("queue");
    assert_eq!(queue["counts"]["queued"], 2, "two keys, two jobs: {queue}");
}

/// A command that starts a process outside its group (`setsid`) which keeps its stdout and
/// stderr open: the job's output is what the command wrote, not lost. It was: the worker
/// waited 5 s per pipe for end of file, then stored `null` as the result (and no stderr
/// tail in a failure), 5–10 s late.
#[test]
fn jobs_worker_keeps_the_output_of_a_command_whose_pipes_a_detached_process_holds() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("temp dir");
    let pids = dir.path().join("detached.pids");
    let held = script(
        dir.path(),
        "held.sh",
        &format!(
            "setsid sleep 30 &\necho $! >> '{}'\nsleep 0.2\nif [ \"$ROTA_JOB_ATTEMPT\" = 1 ] && [ \"$(cat)\" = '\"fail\"' ]; then echo 'bad things' >&2; exit 3; fi\necho out\n",
            pids.display()
        ),
    );
    let ok = post_text(&server, "/v1/queues/held/jobs", r#"{"payload":"ok"}"#, "held-ok");
    let fail = post_text(&server, "/v1/queues/held/jobs", r#"{"payload":"fail","max_attempts":1}"#, "held-fail");
    let ids = [ok.json()["id"].as_u64().expect("id"), fail.json()["id"].as_u64().expect("id")];
    let mut worker_args = args(&server, &["worker", "--queue", "held", "--max-jobs", "2", "--poll-wait", "1s"]);
    worker_args.extend(["--".into(), held.display().to_string()]);
    let started = std::time::Instant::now();
    let mut worker = Proc::spawn(dir.path(), "worker", &worker_args, &[]);
    let exited = worker.wait_exit(Duration::from_secs(30));
    let took = started.elapsed();
    // The detached sleeps are not the job's: stop them here.
    for pid in std::fs::read_to_string(&pids).unwrap_or_default().split_whitespace() {
        let _ = std::process::Command::new("kill").arg(pid).status();
    }
    assert!(exited.success(), "{}", worker.stderr());
    let succeeded = job_text(&server, ids[0]);
    assert!(succeeded.contains("\"state\":\"succeeded\"") && succeeded.contains("\"result\":\"out\""), "{succeeded}");
    let dead = job_text(&server, ids[1]);
    assert!(dead.contains("\"state\":\"dead\"") && dead.contains("exit status 3: bad things"), "{dead}");
    assert!(worker.stderr().contains("stayed open after the command exited"), "{}", worker.stderr());
    assert!(took < Duration::from_secs(8), "two jobs took {took:?}");
}
