//! `/v1/queues`: create/replace, read, list, delete (with and without force).

use serde_json::json;

use crate::support::app;
use crate::v1_support::*;

#[tokio::test]
async fn put_queue_answers_the_queue_object_with_humantime_durations() {
    let app = app();
    let body = json!({"concurrency": 1, "rate": {"limit": 5, "per": "1s", "burst": 2}, "lease_ttl": "45s",
        "max_attempts": 3, "backoff": {"base": "500ms", "max": "1h30m"}, "retention": "168h", "paused": true});
    let reply = put_json(&app, "/v1/queues/api", body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let queue = reply.json();
    assert_eq!(queue["name"], "api");
    assert_eq!(
        queue["config"],
        json!({"concurrency": 1, "rate": {"limit": 5, "per": "1s", "burst": 2}, "lease_ttl": "45s", "max_attempts": 3,
            "backoff": {"base": "500ms", "max": "1h30m"}, "retention": "168h", "paused": true})
    );
    assert_eq!(queue["counts"], json!({"queued": 0, "scheduled": 0, "leased": 0, "succeeded": 0, "dead": 0, "cancelled": 0}));
    assert_eq!(queue["rate_tokens"], 2, "a new rate starts full");
    assert_eq!(get(&app, "/v1/queues/api").await.json(), queue);
}

#[tokio::test]
async fn put_queue_replaces_the_whole_configuration_with_defaults_for_left_out_fields() {
    let app = app();
    put_json(&app, "/v1/queues/q", json!({"concurrency": 4, "max_attempts": 9})).await;
    let reply = put_json(&app, "/v1/queues/q", json!({"paused": true})).await;
    assert_eq!(
        reply.json()["config"],
        json!({"concurrency": null, "rate": null, "lease_ttl": "30s", "max_attempts": 5,
            "backoff": {"base": "1s", "max": "1h"}, "retention": "168h", "paused": true})
    );
    let reply = put_json(&app, "/v1/queues/q", json!({"rate": {"limit": 10, "per": "1m"}})).await;
    assert_eq!(reply.json()["config"]["rate"], json!({"limit": 10, "per": "1m", "burst": 10}), "burst defaults to limit");
}

#[tokio::test]
async fn an_empty_put_body_creates_a_queue_with_defaults() {
    let app = app();
    let reply = crate::v1_support::call(&app, "PUT", "/v1/queues/plain", None, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["config"]["concurrency"], json!(null));
}

#[tokio::test]
async fn an_unknown_queue_is_404_and_a_bad_name_is_400() {
    let app = app();
    assert_error(&get(&app, "/v1/queues/nope").await, 404, "not_found", None);
    assert_error(&get(&app, "/v1/queues/bad%20name").await, 400, "invalid", Some("queue"));
}

#[tokio::test]
async fn queues_are_listed_in_name_order_with_their_counts() {
    let app = app();
    submit(&app, "b", json!({})).await;
    put_json(&app, "/v1/queues/a", json!({})).await;
    let reply = get(&app, "/v1/queues").await;
    assert_eq!(reply.status, 200);
    let queues = reply.json()["queues"].as_array().expect("queues").clone();
    let names: Vec<&str> = queues.iter().map(|queue| queue["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(queues[1]["counts"]["queued"], 1);
}

#[tokio::test]
async fn delete_refuses_a_queue_with_unfinished_jobs_unless_forced() {
    let app = app();
    submit(&app, "q", json!({})).await;
    let before = snapshot(&app);
    let reply = crate::v1_support::call(&app, "DELETE", "/v1/queues/q", None, &[]).await;
    assert_error(&reply, 409, "queue_not_empty", None);
    assert_eq!(snapshot(&app), before, "a refused delete changes nothing");
    let reply = crate::v1_support::call(&app, "DELETE", "/v1/queues/q?force=true", None, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json(), json!({"queue": "q", "jobs_removed": 1}));
    assert_error(&get(&app, "/v1/queues/q").await, 404, "not_found", None);
    assert_error(&get(&app, "/v1/jobs/1").await, 404, "not_found", None);
}

#[tokio::test]
async fn reads_are_served_locally_with_consistency_local() {
    let app = app();
    put_json(&app, "/v1/queues/q", json!({})).await;
    assert_eq!(get(&app, "/v1/queues/q?consistency=local").await.status, 200);
    assert_error(&get(&app, "/v1/queues/q?consistency=eventual").await, 400, "invalid", Some("consistency"));
}

#[tokio::test]
async fn the_queue_list_answers_with_a_trailing_slash_too() {
    let app = app();
    put_json(&app, "/v1/queues/api", serde_json::json!({"concurrency": 1})).await;
    let plain = get(&app, "/v1/queues").await;
    let slashed = get(&app, "/v1/queues/").await;
    assert_eq!((plain.status, slashed.status), (200, 200), "{}", slashed.body);
    assert_eq!(plain.body, slashed.body);
}

/// The configuration every PATCH test starts from: nothing at its default.
fn configured() -> serde_json::Value {
    json!({"concurrency": 2, "rate": {"limit": 5, "per": "1s", "burst": 3}, "lease_ttl": "45s", "max_attempts": 3,
        "backoff": {"base": "2s", "max": "10m"}, "retention": "24h", "paused": false})
}

async fn configured_app() -> crate::support::TestApp {
    let app = app();
    let reply = put_json(&app, "/v1/queues/api", configured()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    app
}

/// `configured()` with `changes` merged in (top-level fields only).
fn configured_with(changes: serde_json::Value) -> serde_json::Value {
    let mut config = configured();
    for (name, value) in changes.as_object().expect("an object") {
        config[name] = value.clone();
    }
    config
}

#[tokio::test]
async fn patch_paused_keeps_concurrency_rate_and_every_other_setting() {
    let app = configured_app().await;
    let reply = patch_json(&app, "/v1/queues/api", json!({"paused": true})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let queue = reply.json();
    assert_eq!(queue["name"], "api");
    assert_eq!(queue["config"], configured_with(json!({"paused": true})));
    assert_eq!(get(&app, "/v1/queues/api").await.json()["config"], queue["config"], "the answer is the stored queue");
    let reply = patch_json(&app, "/v1/queues/api", json!({"paused": false})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["config"], configured(), "unpausing gives the limits back untouched");
}

#[tokio::test]
async fn patch_changes_each_field_given_and_keeps_the_others() {
    let app = configured_app().await;
    let changes = [
        json!({"concurrency": 7}),
        json!({"lease_ttl": "1m", "max_attempts": 9}),
        json!({"retention": "0s"}),
        json!({"rate": {"limit": 20, "per": "1m", "burst": 4}}),
    ];
    for change in changes {
        let before = get(&app, "/v1/queues/api").await.json()["config"].clone();
        let reply = patch_json(&app, "/v1/queues/api", change.clone()).await;
        assert_eq!(reply.status, 200, "{change}: {}", reply.body);
        let mut expected = before;
        for (name, value) in change.as_object().expect("object") {
            expected[name] = value.clone();
        }
        assert_eq!(reply.json()["config"], expected, "{change}");
    }
}

#[tokio::test]
async fn patch_with_null_removes_the_concurrency_limit_and_the_rate() {
    let app = configured_app().await;
    let reply = patch_json(&app, "/v1/queues/api", json!({"concurrency": null})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["config"], configured_with(json!({"concurrency": null})));
    let reply = patch_json(&app, "/v1/queues/api", json!({"rate": null})).await;
    assert_eq!(reply.json()["config"], configured_with(json!({"concurrency": null, "rate": null})));
    assert_eq!(reply.json()["rate_tokens"], json!(null));
}

#[tokio::test]
async fn patch_merges_rate_and_backoff_into_their_current_values() {
    let app = configured_app().await;
    let config = |reply: &crate::support::Reply| reply.json()["config"].clone();
    let reply = patch_json(&app, "/v1/queues/api", json!({"rate": {"per": "2s"}})).await;
    assert_eq!(config(&reply)["rate"], json!({"limit": 5, "per": "2s", "burst": 3}), "{}", reply.body);
    let reply = patch_json(&app, "/v1/queues/api", json!({"rate": {"burst": 1}})).await;
    assert_eq!(config(&reply)["rate"], json!({"limit": 5, "per": "2s", "burst": 1}), "{}", reply.body);
    let reply = patch_json(&app, "/v1/queues/api", json!({"rate": {"limit": 8}})).await;
    assert_eq!(
        config(&reply)["rate"],
        json!({"limit": 8, "per": "2s", "burst": 8}),
        "a new limit without a burst sets the burst as PUT does"
    );
    let reply = patch_json(&app, "/v1/queues/api", json!({"backoff": {"max": "1h"}})).await;
    assert_eq!(config(&reply)["backoff"], json!({"base": "2s", "max": "1h"}), "{}", reply.body);
    let reply = patch_json(&app, "/v1/queues/api", json!({"backoff": {"base": "5s"}})).await;
    assert_eq!(config(&reply)["backoff"], json!({"base": "5s", "max": "1h"}), "{}", reply.body);
    let reply = patch_json(&app, "/v1/queues/api", json!({"backoff": {"base": "2h"}})).await;
    assert_eq!(config(&reply)["backoff"], json!({"base": "2h", "max": "2h"}), "a base over the max raises the max");
    assert_eq!(config(&reply)["concurrency"], 2, "everything else kept: {}", reply.body);
}

#[tokio::test]
async fn patch_of_an_unknown_queue_creates_it_from_the_defaults() {
    let app = app();
    let reply = patch_json(&app, "/v1/queues/fresh", json!({"concurrency": 1})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.json()["config"],
        json!({"concurrency": 1, "rate": null, "lease_ttl": "30s", "max_attempts": 5,
            "backoff": {"base": "1s", "max": "1h"}, "retention": "168h", "paused": false})
    );
    let reply = crate::v1_support::call(&app, "PATCH", "/v1/queues/empty", None, &[]).await;
    assert_eq!(reply.status, 200, "an empty body changes nothing (and creates the queue): {}", reply.body);
    assert_eq!(reply.json()["config"]["concurrency"], json!(null));
}

#[tokio::test]
async fn patch_is_idempotent_under_a_key_and_null_is_not_the_same_request_as_absent() {
    let app = configured_app().await;
    let headers = [("idempotency-key", "p1")];
    let first = crate::v1_support::call(&app, "PATCH", "/v1/queues/api", Some("{}"), &headers).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let again = crate::v1_support::call(&app, "PATCH", "/v1/queues/api", Some(" { } "), &headers).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"), "{}", again.body);
    let before = snapshot(&app);
    let other =
        crate::v1_support::call(&app, "PATCH", "/v1/queues/api", Some(r#"{"concurrency": null}"#), &headers).await;
    assert_error(&other, 422, "idempotency_key_reused", None);
    assert_eq!(snapshot(&app), before);
    let put = crate::v1_support::call(&app, "PUT", "/v1/queues/api", Some("{}"), &headers).await;
    assert_error(&put, 422, "idempotency_key_reused", None);
}
