//! Waiting: wait-for-result on submit and get, lease long-polls served in arrival order as
//! capacity returns, and waiters that vanish with their clients.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{app, eventually, Reply, TestApp};
use crate::v1_support::*;

const PATIENCE: Duration = Duration::from_secs(10);

/// Starts a lease long-poll as its own task.
fn spawn_lease(app: &TestApp, queue: &str, worker: &str, wait: &str) -> tokio::task::JoinHandle<Vec<Value>> {
    let (app, uri) = (app.clone(), format!("/v1/queues/{queue}/lease"));
    let body = json!({"worker": worker, "wait": wait});
    tokio::spawn(async move {
        let reply = post(&app, &uri, body).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["jobs"].as_array().expect("jobs").clone()
    })
}

async fn wait_for_waiters(app: &TestApp, count: usize) {
    let app = app.clone();
    eventually(PATIENCE, &format!("{count} lease waiters"), move || rota_server::v1::lease_waiter_count(&app) == count).await;
}

/// Submits a job to `queue` with `?wait=30s` as its own task; returns once the submit
/// waits for the job to finish.
async fn submit_and_wait(app: &TestApp, queue: &str) -> tokio::task::JoinHandle<Reply> {
    let (app, uri) = (app.clone(), format!("/v1/queues/{queue}/jobs?wait=30s"));
    let waiting = {
        let app = app.clone();
        tokio::spawn(async move { post(&app, &uri, json!({"payload": 1})).await })
    };
    eventually(PATIENCE, "the job is submitted", move || rota_server::v1::result_waiter_count(&app) == 1).await;
    waiting
}

async fn complete(app: &TestApp, job: &Value) {
    let uri = format!("/v1/jobs/{}/complete", job["id"]);
    let reply = post(app, &uri, json!({"lease_token": job["lease_token"], "result": "done"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn submit_with_wait_answers_200_once_the_job_finished() {
    let app = app();
    let waiting = submit_and_wait(&app, "q").await;
    let job = lease(&app, "q", 1).await.remove(0);
    complete(&app, &job).await;
    let reply = tokio::time::timeout(PATIENCE, waiting).await.expect("answered").expect("task");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["state"], "succeeded");
    assert_eq!(reply.json()["result"], "done");
    assert!(reply.header("location").is_some());
    assert_eq!(rota_server::v1::result_waiter_count(&app), 0);
}

#[tokio::test]
async fn submit_with_wait_answers_202_when_the_wait_ends_first() {
    let app = app();
    let reply = post(&app, "/v1/queues/q/jobs?wait=50ms", json!({})).await;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.json()["state"], "queued");
}

#[tokio::test]
async fn submit_with_wait_answers_not_found_when_its_queue_is_deleted_meanwhile() {
    let app = app();
    let waiting = submit_and_wait(&app, "gone").await;
    let deleted = call(&app, "DELETE", "/v1/queues/gone?force=true", None, &[]).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let reply = tokio::time::timeout(PATIENCE, waiting).await.expect("answered").expect("task");
    // Not the job as it was ("queued"): it no longer exists, as a GET would say.
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(reply.json()["error"]["code"], "not_found", "{}", reply.body);
    assert_eq!(rota_server::v1::result_waiter_count(&app), 0);
}

#[tokio::test]
async fn get_with_wait_answers_the_finished_job() {
    let app = app();
    let id = submit(&app, "q", json!({})).await["id"].clone();
    let waiting = {
        let app = app.clone();
        let uri = format!("/v1/jobs/{id}?wait=30s");
        tokio::spawn(async move { get(&app, &uri).await })
    };
    let app2 = app.clone();
    eventually(PATIENCE, "the get waits", move || rota_server::v1::result_waiter_count(&app2) == 1).await;
    let reply = call(&app, "DELETE", &format!("/v1/jobs/{id}"), None, &[]).await;
    assert_eq!(reply.status, 200);
    let reply = tokio::time::timeout(PATIENCE, waiting).await.expect("answered").expect("task");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["state"], "cancelled");
}

#[tokio::test]
async fn a_lease_long_poll_ends_empty_when_its_wait_runs_out() {
    let app = app();
    let reply = post(&app, "/v1/queues/q/lease", json!({"worker": "w", "wait": "50ms"})).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"jobs": [], "blocked": {"reason": "empty", "retry_at": null}}));
    assert_eq!(rota_server::v1::lease_waiter_count(&app), 0);
}

#[tokio::test]
async fn a_waiting_lease_is_served_when_a_job_is_submitted() {
    let app = app();
    let waiter = spawn_lease(&app, "q", "w1", "30s");
    wait_for_waiters(&app, 1).await;
    let id = submit(&app, "q", json!({})).await["id"].clone();
    let jobs = tokio::time::timeout(PATIENCE, waiter).await.expect("served").expect("task");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], id);
}

#[tokio::test]
async fn lease_waiters_are_served_in_arrival_order_as_completes_free_capacity() {
    let app = app();
    put_json(&app, "/v1/queues/q", json!({"concurrency": 1})).await;
    submit(&app, "q", json!({"payload": "first"})).await;
    let mut holder = lease(&app, "q", 1).await.remove(0);
    let mut waiters = Vec::new();
    for (index, worker) in ["w1", "w2", "w3"].into_iter().enumerate() {
        waiters.push(spawn_lease(&app, "q", worker, "30s"));
        wait_for_waiters(&app, index + 1).await;
    }
    // Queued behind the full concurrency: a low and then a high priority job.
    submit(&app, "q", json!({"priority": 1})).await;
    submit(&app, "q", json!({"priority": 9})).await;
    submit(&app, "q", json!({"priority": 5})).await;
    let mut served = Vec::new();
    for waiter in waiters {
        complete(&app, &holder).await;
        let jobs = tokio::time::timeout(PATIENCE, waiter).await.expect("served").expect("task");
        assert_eq!(jobs.len(), 1);
        holder = jobs[0].clone();
        served.push((holder["worker"].as_str().expect("worker").to_owned(), holder["priority"].as_i64().expect("priority")));
        assert_eq!(get(&app, "/v1/queues/q").await.json()["counts"]["leased"], 1, "concurrency 1 holds");
    }
    assert_eq!(served, [("w1".to_owned(), 9), ("w2".to_owned(), 5), ("w3".to_owned(), 1)]);
    assert_eq!(rota_server::v1::lease_waiter_count(&app), 0);
}

#[tokio::test]
async fn a_new_lease_does_not_overtake_waiting_ones() {
    let app = app();
    put_json(&app, "/v1/queues/q", json!({"concurrency": 1})).await;
    submit(&app, "q", json!({})).await;
    let holder = lease(&app, "q", 1).await.remove(0);
    let first = spawn_lease(&app, "q", "early", "30s");
    wait_for_waiters(&app, 1).await;
    submit(&app, "q", json!({})).await;
    let late = spawn_lease(&app, "q", "late", "30s");
    wait_for_waiters(&app, 2).await;
    complete(&app, &holder).await;
    let jobs = tokio::time::timeout(PATIENCE, first).await.expect("served").expect("task");
    assert_eq!(jobs[0]["worker"], "early");
    late.abort();
}

#[tokio::test]
async fn a_client_that_goes_away_leaves_no_waiter_behind() {
    let app = app();
    put_json(&app, "/v1/queues/q", json!({"concurrency": 1})).await;
    submit(&app, "q", json!({})).await;
    let holder = lease(&app, "q", 1).await.remove(0);
    // The head of the line goes away while another waits behind it.
    let gone = spawn_lease(&app, "q", "gone", "30s");
    wait_for_waiters(&app, 1).await;
    let stays = spawn_lease(&app, "q", "stays", "30s");
    wait_for_waiters(&app, 2).await;
    gone.abort();
    wait_for_waiters(&app, 1).await;
    submit(&app, "q", json!({})).await;
    complete(&app, &holder).await;
    let jobs = tokio::time::timeout(PATIENCE, stays).await.expect("the next in line took over").expect("task");
    assert_eq!(jobs[0]["worker"], "stays");
    assert_eq!(rota_server::v1::lease_waiter_count(&app), 0);
}

#[tokio::test]
async fn a_dropped_result_wait_releases_its_slot() {
    let app = app();
    submit(&app, "q", json!({})).await;
    let waiting = {
        let app = app.clone();
        tokio::spawn(async move { get(&app, "/v1/jobs/1?wait=30s").await })
    };
    let app2 = app.clone();
    eventually(PATIENCE, "the get waits", move || rota_server::v1::result_waiter_count(&app2) == 1).await;
    waiting.abort();
    let app2 = app.clone();
    eventually(PATIENCE, "the slot is released", move || rota_server::v1::result_waiter_count(&app2) == 0).await;
}

#[tokio::test]
async fn complete_with_lease_next_does_not_overtake_a_waiting_lease() {
    let app = app();
    put_json(&app, "/v1/queues/q", json!({"concurrency": 1})).await;
    submit(&app, "q", json!({"payload": "a"})).await;
    submit(&app, "q", json!({"payload": "b"})).await;
    let held = lease(&app, "q", 1).await.remove(0);
    let waiting = spawn_lease(&app, "q", "patient", "30s");
    wait_for_waiters(&app, 1).await;
    let uri = format!("/v1/jobs/{}/complete", held["id"]);
    let reply = post(&app, &uri, json!({"lease_token": held["lease_token"], "lease_next": {"worker": "eager"}})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["job"]["state"], "succeeded");
    assert_eq!(reply.json()["jobs"], json!([]), "the waiting worker is first in line");
    let served = tokio::time::timeout(PATIENCE, waiting).await.expect("served").expect("task");
    assert_eq!((served.len(), served[0]["worker"].as_str()), (1, Some("patient")));
}


/// A lease long-poll whose client sent a byte more (a CRLF) and left: hyper, no longer
/// reading, did not notice, and the next job was leased to nobody (its attempt lost to the
/// lease's expiry). The waiter now goes with its client, and the job stays queued.
#[tokio::test]
async fn a_lease_waiter_that_sent_more_bytes_and_left_leases_nothing() {
    use tokio::io::AsyncWriteExt;
    let served = crate::support::serve(app(), Default::default()).await;
    let body = r#"{"worker": "ghost", "wait": "30s"}"#;
    let mut stream = crate::support::connect(served.port).await;
    let request = format!(
        "POST /v1/queues/q/lease HTTP/1.1\r\nHost: rota\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    wait_for_waiters(&served.app, 1).await;
    drop(stream);
    wait_for_waiters(&served.app, 0).await;
    let job = submit(&served.app, "q", json!({"payload": 1})).await;
    let id = job["id"].as_u64().expect("id");
    let reply = get(&served.app, &format!("/v1/jobs/{id}")).await;
    assert_eq!(reply.json()["state"], "queued", "{}", reply.body);
}

#[tokio::test]
async fn a_waiting_lease_whose_queue_is_deleted_ends_empty_not_as_the_old_queue_was() {
    let app = app();
    let paused = call(&app, "PUT", "/v1/queues/gone", Some(r#"{"paused": true}"#), &[]).await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    submit(&app, "gone", json!({})).await;
    let waiting = {
        let app = app.clone();
        tokio::spawn(async move { post(&app, "/v1/queues/gone/lease", json!({"worker": "w", "wait": "300ms"})).await })
    };
    let app2 = app.clone();
    eventually(PATIENCE, "the lease waits", move || rota_server::v1::lease_waiter_count(&app2) == 1).await;
    let deleted = call(&app, "DELETE", "/v1/queues/gone?force=true", None, &[]).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let reply = tokio::time::timeout(PATIENCE, waiting).await.expect("answered").expect("task");
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Not "paused": that queue is gone; a lease now would find nothing.
    assert_eq!(reply.json(), json!({"jobs": [], "blocked": {"reason": "empty", "retry_at": null}}), "{}", reply.body);
}

/// A keyed long-poll stores its later attempts under keys derived from its own: none of
/// them can be a key a client sends. With `K~1` as the second attempt's key, a client's
/// own `K~1` (a submit) made a later long-poll keyed `K` fail with 422 naming a key it never
/// sent.
#[tokio::test]
async fn a_keyed_long_poll_does_not_collide_with_keys_clients_send() {
    let app = app();
    let keyed = |key: &'static str| [("Idempotency-Key", key)];
    let submitted = call(&app, "POST", "/v1/queues/lp/jobs", Some(r#"{"payload": "first"}"#), &keyed("col~1")).await;
    assert_eq!(submitted.status, 202, "{}", submitted.body);
    let leased = post(&app, "/v1/queues/lp/lease", json!({"worker": "x"})).await;
    assert_eq!(leased.json()["jobs"].as_array().map(Vec::len), Some(1), "the queue is empty now");
    let poll = {
        let app = app.clone();
        tokio::spawn(async move {
            call(&app, "POST", "/v1/queues/lp/lease", Some(r#"{"worker": "y", "wait": "10s"}"#), &keyed("col")).await
        })
    };
    wait_for_waiters(&app, 1).await;
    let late = submit(&app, "lp", json!({"payload": "late"})).await["id"].clone();
    let reply = tokio::time::timeout(PATIENCE, poll).await.expect("answered").expect("task");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["jobs"][0]["id"], late, "{}", reply.body);
}
