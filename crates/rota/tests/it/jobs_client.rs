//! `rota-client`'s typed `/v1` methods against a real `rota serve`: the calls the CLI does
//! not make (batch submit, counters, fail/release/heartbeat by hand, queue delete), and a
//! call that rides out a server restart with its idempotency key.

use std::time::Duration;

use rota_client::jobs::{
    FailRequest, JobFilter, JobState, LeaseRequest, NewJob, QueueConfig, Rate,
};
use rota_client::Client;
use serde_json::json;

use crate::harness::{Kind, Server};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn lease_request(max: u32) -> LeaseRequest {
    LeaseRequest {
        worker: "client-test".into(),
        max,
        wait: Duration::from_secs(2),
        lease_ttl: Some(Duration::from_secs(30)),
    }
}

#[test]
fn jobs_client_covers_batch_lease_fail_release_heartbeat_counters_and_delete() {
    let server = Server::start(Kind::Rota);
    let client = Client::new([server.client_url()]).expect("client");
    runtime().block_on(async {
        let config = QueueConfig {
            concurrency: Some(2),
            rate: Some(Rate {
                limit: 100,
                per: "1s".into(),
                burst: 100,
            }),
            max_attempts: Some(2),
            ..QueueConfig::default()
        };
        let queue = client.put_queue("typed", &config).await.expect("put queue");
        assert_eq!(queue.config.concurrency, Some(2));
        assert_eq!(queue.config.rate.as_ref().map(|rate| rate.burst), Some(100));

        let batch: Vec<NewJob> = (0..3)
            .map(|n| NewJob {
                priority: n,
                ..NewJob::new(json!({"n": n}))
            })
            .collect();
        let jobs = client.submit_batch("typed", &batch).await.expect("batch");
        assert_eq!(jobs.len(), 3);
        assert!(
            jobs.windows(2).all(|pair| pair[0].id < pair[1].id),
            "ids in acceptance order"
        );

        // Concurrency 2: asking for 3 gets the two highest priorities.
        let leased = client
            .lease("typed", &lease_request(3))
            .await
            .expect("lease")
            .jobs;
        let priorities: Vec<i64> = leased.iter().map(|job| job.priority).collect();
        assert_eq!(priorities, [2, 1]);
        let (top, second) = (&leased[0], &leased[1]);
        let (top_token, second_token) = (
            top.lease_token.expect("token"),
            second.lease_token.expect("token"),
        );
        assert!(second_token > top_token);

        let beat = client
            .heartbeat(top.id, top_token, Some(Duration::from_secs(60)))
            .await
            .expect("heartbeat");
        assert_eq!(beat.state, JobState::Leased);
        let stale = client
            .heartbeat(top.id, top_token + 1000, None)
            .await
            .expect_err("stale");
        assert_eq!(
            (stale.status(), stale.code()),
            (Some(409), Some("stale_lease"))
        );

        let released = client
            .release(second.id, second_token)
            .await
            .expect("release");
        assert_eq!((released.state, released.attempts), (JobState::Queued, 0));
        let fail = FailRequest {
            error: "no".into(),
            retry: Some(false),
            retry_after: None,
        };
        let dead = client.fail(top.id, top_token, &fail).await.expect("fail");
        assert_eq!(dead.state, JobState::Dead);
        assert_eq!(
            dead.errors.last().map(|error| error.error.as_str()),
            Some("no")
        );
        let page = client
            .list_jobs(
                "typed",
                &JobFilter {
                    state: Some(JobState::Dead),
                    ..JobFilter::default()
                },
            )
            .await;
        assert_eq!(
            page.expect("list")
                .jobs
                .iter()
                .map(|job| job.id)
                .collect::<Vec<_>>(),
            [top.id]
        );

        // Counters: concurrent increments all count.
        let shared = std::sync::Arc::new(Client::new([server.client_url()]).expect("client"));
        let adds: Vec<_> = (0..10)
            .map(|_| {
                let shared = std::sync::Arc::clone(&shared);
                tokio::spawn(async move { shared.counter_add("calls", 3).await })
            })
            .collect();
        let mut values = Vec::new();
        for add in adds {
            values.push(add.await.expect("task").expect("increment"));
        }
        values.sort_unstable();
        values.dedup();
        assert_eq!(
            values.len(),
            10,
            "each increment saw its own new value: {values:?}"
        );
        assert_eq!(client.counter_get("calls").await.expect("counter"), 30);
        assert_eq!(client.counter_get("never").await.expect("counter"), 0);
        assert_eq!(client.counter_delete("calls").await.expect("delete"), 30, "the value it had");
        assert_eq!(client.counter_get("calls").await.expect("counter"), 0, "gone");
        assert_eq!(client.counter_delete("calls").await.expect("delete again"), 0);

        let refused = client
            .delete_queue("typed", false)
            .await
            .expect_err("unfinished jobs");
        assert_eq!(refused.code(), Some("queue_not_empty"));
        let deleted = client
            .delete_queue("typed", true)
            .await
            .expect("force delete");
        assert_eq!(deleted.jobs_removed, 3);
        let gone = client.get_queue("typed").await.expect_err("deleted");
        assert_eq!(gone.code(), Some("not_found"));
    });
}

#[test]
fn jobs_client_rides_out_a_server_restart_without_submitting_twice() {
    let mut server = Server::start(Kind::Rota);
    let client = Client::new([server.client_url()]).expect("client");
    let runtime = runtime();
    let key = rota_client::idempotency_key();
    let job = NewJob::new(json!({"once": true}));
    let first = runtime
        .block_on(client.submit_keyed(&key, "restart", &job, None))
        .expect("submit");
    assert!(!first.replayed);

    // The same logical submit again, sent while the server is down: the client keeps
    // retrying until the restarted server answers, and the answer is the stored one.
    server.kill();
    let retry = runtime.spawn({
        let client = Client::new([server.client_url()]).expect("client");
        let (key, job) = (key.clone(), job.clone());
        async move { client.submit_keyed(&key, "restart", &job, None).await }
    });
    server.restart();
    let again = runtime
        .block_on(retry)
        .expect("task")
        .expect("submit after restart");
    assert_eq!(again.job.id, first.job.id);
    assert!(again.replayed, "answered from the stored outcome");
    let queue = runtime
        .block_on(client.get_queue("restart"))
        .expect("queue");
    assert_eq!(queue.counts.queued, 1, "one job, not two");
}
