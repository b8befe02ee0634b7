//! What the job commands and the worker say when no server answers: at once that they are
//! retrying and what failed (a wrong `--endpoints` must not look like a hang), each
//! endpoint with its own error when they give up, and for the worker, the moment a server
//! answers again.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{free_port_pair, Kind, Server};
use crate::jobs_util::{api, args, get_job, wait_until, Proc};

#[test]
fn jobs_cli_says_at_once_that_it_retries_then_names_each_endpoint_when_it_gives_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Free a moment ago and in the harness's range, below the ephemeral ports: nothing
    // listens there.
    let (first, second) = free_port_pair();
    let (first, second) = (
        format!("http://127.0.0.1:{first}"),
        format!("http://127.0.0.1:{second}"),
    );
    let cases = [
        (vec!["job", "get", "1"], first.clone()),
        (vec!["queue", "ls"], format!("{first},{second}")),
    ];
    for (n, (command, endpoints)) in cases.into_iter().enumerate() {
        let mut cli_args: Vec<String> = command.iter().map(|arg| arg.to_string()).collect();
        cli_args.extend([
            "--endpoints".into(),
            endpoints.clone(),
            "--retry-for".into(),
            "5s".into(),
        ]);
        let started = Instant::now();
        let mut cli = Proc::spawn(dir.path(), &format!("cli{n}"), &cli_args, &[]);
        let named: Vec<String> = endpoints
            .split(',')
            .map(|url| format!("{url} (connection refused)"))
            .collect();
        let retrying = format!(
            "rota: no answer from {}; retrying for up to 5s (--retry-for)",
            named.join(", ")
        );
        wait_until(
            Duration::from_secs(10),
            "the line saying it retries",
            || cli.stderr().contains(&retrying).then_some(()),
        );
        let told_after = started.elapsed();
        assert!(
            cli.try_status().is_none(),
            "{command:?}: told only when it gave up: {}",
            cli.stderr()
        );
        assert!(
            told_after < Duration::from_millis(2500),
            "{command:?}: told after {told_after:?}"
        );

        let status = cli.wait_exit(Duration::from_secs(30));
        assert!(
            started.elapsed() >= Duration::from_secs(5),
            "{command:?}: gave up after {:?}",
            started.elapsed()
        );
        assert_eq!(
            status.code(),
            Some(2),
            "{command:?}: exit status 2, no endpoint reachable: {}",
            cli.stderr()
        );
        assert_eq!(
            cli.stdout(),
            "",
            "{command:?}: stdout is the answer's alone"
        );
        let stderr = cli.stderr();
        assert_eq!(
            stderr.matches("retrying for up to").count(),
            1,
            "{command:?}: told once: {stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "Error:  cluster unreachable: {}\n",
                named.join(", ")
            )),
            "{command:?}: {stderr}"
        );
    }
}

#[test]
fn worker_logs_when_the_server_stops_answering_and_when_it_answers_again() {
    let mut server = Server::start(Kind::Rota);
    let url = server.client_url();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut worker_args = args(
        &server,
        &[
            "worker",
            "--queue",
            "back",
            "--poll-wait",
            "1s",
            "--lease-ttl",
            "30s",
        ],
    );
    worker_args.extend(["--".into(), "cat".into()]);
    let mut worker = Proc::spawn(dir.path(), "worker", &worker_args, &[]);
    wait_until(
        Duration::from_secs(20),
        "the worker to start leasing",
        || worker.stderr().contains("leasing from back").then_some(()),
    );

    server.kill();
    let lost = format!("no answer from {url} (");
    wait_until(
        Duration::from_secs(20),
        "the worker saying no server answers",
        || worker.stderr().contains(&lost).then_some(()),
    );
    server.restart();
    let regained = format!("reconnected: {url} answered after ");
    wait_until(
        Duration::from_secs(30),
        "the worker saying it reconnected",
        || worker.stderr().contains(&regained).then_some(()),
    );
    let stderr = worker.stderr();
    assert_eq!(
        stderr.matches("retrying until a server answers").count(),
        1,
        "one line per outage: {stderr}"
    );

    // And it leases again.
    let submitted = api(
        &server,
        "POST",
        "/v1/queues/back/jobs",
        Some(&json!({"payload": "again"})),
        None,
    );
    assert_eq!(submitted.status(), 202, "{}", submitted.text());
    let id = submitted.json()["id"].as_u64().expect("id");
    wait_until(Duration::from_secs(30), "the job to succeed", || {
        (get_job(&server, id)["state"] == "succeeded").then_some(())
    });
    worker.terminate();
    assert!(
        worker.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        worker.stderr()
    );
}
