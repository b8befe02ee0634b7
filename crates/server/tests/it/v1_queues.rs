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
