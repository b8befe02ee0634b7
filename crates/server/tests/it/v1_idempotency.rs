//! `Idempotency-Key` on `/v1` mutations: a repeat replays the first outcome, a different
//! request under the same key is 422, and a long-poll lease retried with its key answers the
//! jobs the first attempt leased.

use serde_json::json;

use crate::support::app;
use crate::v1_support::*;

#[tokio::test]
async fn a_repeated_submit_with_the_same_key_returns_the_same_job() {
    let app = app();
    let body = r#"{"payload": {"a": 1}, "priority": 3}"#;
    let first = call(&app, "POST", "/v1/queues/q/jobs", Some(body), &[("idempotency-key", "k1")]).await;
    assert_eq!(first.status, 202);
    assert_eq!(first.header("idempotent-replayed"), None);
    // The same request spelled differently (order, spacing) is the same request.
    let again = r#"{ "priority": 3, "payload": {"a":1} }"#;
    let second = call(&app, "POST", "/v1/queues/q/jobs", Some(again), &[("idempotency-key", "k1")]).await;
    assert_eq!(second.status, 202);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.json()["id"], first.json()["id"]);
    assert_eq!(second.header("location"), first.header("location"));
    assert_eq!(get(&app, "/v1/queues/q").await.json()["counts"]["queued"], 1, "one job, not two");
    // A zero delay is no delay: a client that always sends one retries as one that never does.
    let first = call(&app, "POST", "/v1/queues/q/jobs", Some(r#"{"payload": 1, "delay": "0s"}"#), &[("idempotency-key", "k2")]).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let again = call(&app, "POST", "/v1/queues/q/jobs", Some(r#"{"payload": 1}"#), &[("idempotency-key", "k2")]).await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn the_same_key_with_a_different_request_is_422() {
    let app = app();
    call(&app, "POST", "/v1/queues/q/jobs", Some(r#"{"payload": 1}"#), &[("idempotency-key", "k")]).await;
    let before = snapshot(&app);
    let reply = call(&app, "POST", "/v1/queues/q/jobs", Some(r#"{"payload": 2}"#), &[("idempotency-key", "k")]).await;
    assert_error(&reply, 422, "idempotency_key_reused", None);
    let reply = call(&app, "POST", "/v1/queues/other/jobs", Some(r#"{"payload": 1}"#), &[("idempotency-key", "k")]).await;
    assert_error(&reply, 422, "idempotency_key_reused", None);
    assert_eq!(snapshot(&app), before, "a conflicting request changes nothing");
}

#[tokio::test]
async fn a_replayed_error_is_the_stored_error() {
    let app = app();
    submit(&app, "q", json!({})).await;
    lease(&app, "q", 1).await;
    let headers = [("idempotency-key", "c1")];
    let first = call(&app, "POST", "/v1/jobs/1/complete", Some(r#"{"lease_token": 1, "result": 1}"#), &headers).await;
    assert_eq!(first.status, 200);
    let second = call(&app, "POST", "/v1/jobs/1/complete", Some(r#"{"lease_token": 1, "result": 1}"#), &headers).await;
    assert_eq!(second.status, 200, "a retried complete is answered as the first, not 409");
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.json(), first.json());
}

#[tokio::test]
async fn keys_on_other_mutations_replay_too() {
    let app = app();
    let headers = [("idempotency-key", "ctr")];
    let first = call(&app, "POST", "/v1/counters/c", Some(r#"{"by": 2}"#), &headers).await;
    let second = call(&app, "POST", "/v1/counters/c", Some(r#"{"by": 2}"#), &headers).await;
    assert_eq!((first.json()["value"].as_u64(), second.json()["value"].as_u64()), (Some(2), Some(2)));
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    let headers = [("idempotency-key", "qput")];
    call(&app, "PUT", "/v1/queues/q", Some(r#"{"paused": true}"#), &headers).await;
    let reply = call(&app, "PUT", "/v1/queues/q", Some(r#"{"paused": true}"#), &headers).await;
    assert_eq!(reply.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn a_retried_lease_answers_the_jobs_the_first_attempt_leased() {
    let app = app();
    submit(&app, "q", json!({})).await;
    submit(&app, "q", json!({})).await;
    let headers = [("idempotency-key", "lease-1")];
    let body = r#"{"worker": "w", "max": 1, "wait": "1s"}"#;
    let first = call(&app, "POST", "/v1/queues/q/lease", Some(body), &headers).await;
    let second = call(&app, "POST", "/v1/queues/q/lease", Some(body), &headers).await;
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.json(), first.json());
    assert_eq!(get(&app, "/v1/queues/q").await.json()["counts"]["leased"], 1, "the retry leased nothing more");
}

#[tokio::test]
async fn a_bad_idempotency_key_is_400() {
    let app = app();
    let long = "k".repeat(257);
    for key in ["", long.as_str(), "has space"] {
        let reply = call(&app, "POST", "/v1/queues/q/jobs", Some("{}"), &[("idempotency-key", key)]).await;
        assert_error(&reply, 400, "invalid", Some("Idempotency-Key"));
    }
}

/// Two `Idempotency-Key` headers: which one names the request? Using the first silently
/// let a retry that sent only the second run again. Refused, on `/v1` and `/v2` alike.
#[tokio::test]
async fn two_idempotency_keys_are_refused_and_change_nothing() {
    let app = app();
    let keys = [("idempotency-key", "a"), ("idempotency-key", "b")];
    let v1 = call(&app, "POST", "/v1/counters/c", Some(r#"{"by": 1}"#), &keys).await;
    assert_error(&v1, 400, "invalid", Some("Idempotency-Key"));
    assert!(v1.body.contains("more than one"), "{}", v1.body);
    let counter = call(&app, "GET", "/v1/counters/c", None, &[]).await;
    assert_eq!(counter.json()["value"], 0, "nothing counted: {}", counter.body);

    let mut v2 = axum::http::Request::builder().method("PUT").uri("/v2/keys/k");
    for (name, value) in keys {
        v2 = v2.header(name, value);
    }
    let v2 = v2
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from("value=1"))
        .expect("request");
    let reply = crate::support::send_request(&app, v2).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("more than one Idempotency-Key"), "{}", reply.body);
    assert_eq!(crate::support::get(&app, "/v2/keys/k").await.status, 404);
}
