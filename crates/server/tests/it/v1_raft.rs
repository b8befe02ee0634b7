//! `/v1` on a real single-node Raft group (`rota_raft::Node` in a temp dir): the full job
//! cycle through group commit and fsync, and a rate-limited long-poll served when the next
//! token arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use rota_raft::{Node, NodeConfig};
use rota_server::{App, ServerConfig};
use serde_json::{json, Value};

use crate::support::{into_reply, Reply};

const PATIENCE: Duration = Duration::from_secs(10);

async fn start(dir: &std::path::Path) -> Arc<App<Node>> {
    let node = Node::start(NodeConfig::single("v1-test", dir)).await.expect("start node");
    let started = Instant::now();
    while !node.status().is_leader {
        assert!(started.elapsed() < PATIENCE, "no leader");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    App::new(node, ServerConfig::single("default"))
}

async fn send(app: &Arc<App<Node>>, method: &str, uri: &str, body: Option<Value>, key: Option<&str>) -> Reply {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    let body = body.map_or_else(Body::empty, |body| Body::from(body.to_string()));
    into_reply(app.handle(builder.body(body).expect("request")).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_goes_submit_lease_complete_through_raft() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = start(dir.path()).await;
    let submitted = send(&app, "POST", "/v1/queues/q/jobs", Some(json!({"payload": {"n": 1}})), Some("s1")).await;
    assert_eq!(submitted.status, 202, "{}", submitted.body);
    let again = send(&app, "POST", "/v1/queues/q/jobs", Some(json!({"payload": {"n": 1}})), Some("s1")).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["id"], submitted.json()["id"]);
    let leased = send(&app, "POST", "/v1/queues/q/lease", Some(json!({"worker": "w"})), None).await;
    let job = leased.json()["jobs"][0].clone();
    assert_eq!(job["id"], submitted.json()["id"]);
    let uri = format!("/v1/jobs/{}/complete", job["id"]);
    let done = send(&app, "POST", &uri, Some(json!({"lease_token": job["lease_token"], "result": [1]})), None).await;
    assert_eq!(done.status, 200, "{}", done.body);
    let read = send(&app, "GET", &format!("/v1/jobs/{}", job["id"]), None, None).await;
    assert_eq!(read.json()["state"], "succeeded");
    assert_eq!(read.json()["result"], json!([1]));
    app.backend().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_long_poll_is_served_when_the_next_token_arrives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = start(dir.path()).await;
    let reply = send(&app, "PUT", "/v1/queues/r", Some(json!({"rate": {"limit": 1, "per": "400ms", "burst": 1}})), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    send(&app, "POST", "/v1/queues/r/jobs", Some(json!({"jobs": [{}, {}]})), None).await;
    let first = send(&app, "POST", "/v1/queues/r/lease", Some(json!({"worker": "w"})), None).await;
    let first_job = first.json()["jobs"][0].clone();
    let first_at = humantime::parse_rfc3339(first_job["lease_expires_at"].as_str().expect("expiry")).expect("time");
    let started = Instant::now();
    let second = send(&app, "POST", "/v1/queues/r/lease", Some(json!({"worker": "w", "wait": "10s"})), None).await;
    let waited = started.elapsed();
    let second_job = second.json()["jobs"][0].clone();
    assert!(second_job["id"].is_u64(), "served within the wait: {}", second.body);
    let second_at = humantime::parse_rfc3339(second_job["lease_expires_at"].as_str().expect("expiry")).expect("time");
    // Both leases have the same ttl, so their expiries are their lease times plus it.
    let gap = second_at.duration_since(first_at).expect("later");
    assert!(gap >= Duration::from_millis(400), "the rate holds: leases {gap:?} apart");
    assert!(waited < Duration::from_secs(3), "woken by the token, not the end of the wait: {waited:?}");
    app.backend().shutdown().await;
}
