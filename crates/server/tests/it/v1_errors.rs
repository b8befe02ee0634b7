//! `/v1` bad input: each case answers its status, code and field, writes no Raft entry
//! when the server can tell by itself, and leaves the state exactly as it was.

use serde_json::json;

use crate::support::{app, send_request, TestApp};
use crate::v1_support::*;

/// Sends `body` raw and checks the error and that nothing changed (no entry, same state).
async fn assert_refused(app: &TestApp, method: &str, uri: &str, body: &str, status: u16, code: &str, field: Option<&str>) {
    let (state, index) = (snapshot(app), applied_index(app));
    let reply = call(app, method, uri, Some(body), &[]).await;
    assert_error(&reply, status, code, field);
    assert_eq!(applied_index(app), index, "{method} {uri} {body}: refused before proposing");
    assert_eq!(snapshot(app), state, "{method} {uri} {body}: state unchanged");
}

/// A queue `q` with one leased job (id 1, token 1).
async fn leased_app() -> TestApp {
    let app = app();
    submit(&app, "q", json!({})).await;
    assert_eq!(lease(&app, "q", 1).await.len(), 1);
    app
}

#[tokio::test]
async fn malformed_json_is_400_malformed_json() {
    let app = app();
    for body in ["{", "{\"payload\": }", "not json", "{\"payload\": 1} trailing", "{\"payload\":1,}", "{\"a\":", "{\"bogus\": 1, \"payload\": ]"] {
        assert_refused(&app, "POST", "/v1/queues/q/jobs", body, 400, "malformed_json", None).await;
    }
    // A form (curl -d name=value) is told that /v1 takes JSON; JSON that is not is not.
    let form = call(&app, "POST", "/v1/queues/q/jobs", Some("payload=1&priority=2"), &[("Content-Type", "application/x-www-form-urlencoded")]).await;
    assert_error(&form, 400, "malformed_json", None);
    assert!(form.body.contains("looks form-encoded"), "{}", form.body);
    let text = call(&app, "POST", "/v1/queues/q/jobs", Some("not json"), &[]).await;
    assert!(!text.body.contains("form-encoded"), "{}", text.body);
}

#[tokio::test]
async fn unknown_fields_are_refused_by_name() {
    let app = app();
    assert_refused(&app, "PUT", "/v1/queues/q", r#"{"concurrency": 1, "concurrency": 2}"#, 400, "invalid", Some("concurrency")).await;
    assert_refused(&app, "POST", "/v1/queues/q/jobs", r#"{"payload": 1, "prio": 2}"#, 400, "invalid", Some("prio")).await;
    assert_refused(&app, "POST", "/v1/queues/q/jobs", r#"{"jobs": [{}, {"bogus": 1}]}"#, 400, "invalid", Some("jobs[1].bogus")).await;
    assert_refused(&app, "PUT", "/v1/queues/q", r#"{"rate": {"limit": 1, "per": "1s", "brust": 1}}"#, 400, "invalid", Some("rate.brust")).await;
    assert_refused(&app, "POST", "/v1/counters/c", r#"{"by": 1, "and": 2}"#, 400, "invalid", Some("and")).await;
    assert_refused(&app, "POST", "/v1/queues/q/jobs", r#"{"payload": 1, "jobs": [{}]}"#, 400, "invalid", Some("jobs")).await;
}

#[tokio::test]
async fn wrong_types_name_the_field() {
    let app = leased_app().await;
    assert_refused(&app, "POST", "/v1/queues/q/jobs", r#"{"priority": "high"}"#, 400, "invalid", Some("priority")).await;
    assert_refused(&app, "POST", "/v1/queues/q/jobs", r#"{"priority": 1.5}"#, 400, "invalid", Some("priority")).await;
    assert_refused(&app, "PUT", "/v1/queues/q", r#"{"concurrency": "1"}"#, 400, "invalid", Some("concurrency")).await;
    assert_refused(&app, "PUT", "/v1/queues/q", r#"{"concurrency": -1}"#, 400, "invalid", Some("concurrency")).await;
    assert_refused(&app, "PUT", "/v1/queues/q", r#"{"paused": "yes"}"#, 400, "invalid", Some("paused")).await;
    assert_refused(&app, "POST", "/v1/queues/q/lease", r#"{"worker": 7}"#, 400, "invalid", Some("worker")).await;
    assert_refused(&app, "POST", "/v1/queues/q/lease", r#"{"worker": "w", "max": -1}"#, 400, "invalid", Some("max")).await;
    assert_refused(&app, "POST", "/v1/jobs/1/complete", r#"{"lease_token": "1"}"#, 400, "invalid", Some("lease_token")).await;
    assert_refused(&app, "POST", "/v1/counters/c", r#"{"by": "1"}"#, 400, "invalid", Some("by")).await;
    assert_refused(&app, "POST", "/v1/queues/q/jobs", r#"[1, 2]"#, 400, "invalid", None).await;
    assert_refused(&app, "PUT", "/v1/queues/q", r#"{"rate": [1, "1s", 1]}"#, 400, "invalid", Some("rate")).await;
    assert_refused(&app, "POST", "/v1/queues/q/jobs", r#"{"jobs": [[1]]}"#, 400, "invalid", Some("jobs[0]")).await;
    // Values the decoder cannot hold name their field too (they were `malformed_json`).
    assert_refused(&app, "POST", "/v1/queues/q/jobs", r#"{"payload": 1, "priority": 1e400}"#, 400, "invalid", Some("priority")).await;
    assert_refused(&app, "POST", "/v1/counters/c", r#"{"by": -1e400}"#, 400, "invalid", Some("by")).await;
    assert_refused(&app, "POST", "/v1/queues/q/jobs", r#"{"payload": 1, "delay": "\ud800"}"#, 400, "invalid", Some("delay")).await;
    assert_refused(&app, "POST", "/v1/queues/q/jobs", r#"{"jobs": [{"priority": 2e999}]}"#, 400, "invalid", Some("jobs[0].priority")).await;
    // And say what is wrong with them (serde_json's words alone read as a syntax error).
    for (body, field, words) in [
        (r#"{"payload": 1, "priority": 1e400}"#, "priority", "beyond what a 64-bit float holds"),
        (r#"{"payload": "\ud800"}"#, "payload", "lone UTF-16 surrogate"),
        (r#"{"payload": "\udc00x"}"#, "payload", "lone UTF-16 surrogate"),
    ] {
        let reply = call(&app, "POST", "/v1/queues/q/jobs", Some(body), &[]).await;
        assert_error(&reply, 400, "invalid", Some(field));
        assert!(reply.body.contains(words), "{body}: {}", reply.body);
    }
    // Bytes that are not UTF-8 in a string (serde_json's words for them are those of a bad
    // escape, and the answer blamed a lone surrogate).
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/queues/q/jobs")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(b"{\"payload\":\"\xff\xfe\"}".to_vec()))
        .expect("request");
    let reply = send_request(&app, request).await;
    assert_error(&reply, 400, "malformed_json", None);
    assert!(reply.body.contains("not UTF-8") && !reply.body.contains("surrogate"), "{}", reply.body);
}

#[tokio::test]
async fn missing_required_fields_are_named() {
    let app = leased_app().await;
    assert_refused(&app, "POST", "/v1/queues/q/lease", r#"{"max": 1}"#, 400, "invalid", Some("worker")).await;
    assert_refused(&app, "POST", "/v1/jobs/1/complete", r#"{"result": 1}"#, 400, "invalid", Some("lease_token")).await;
    assert_refused(&app, "POST", "/v1/counters/c", "{}", 400, "invalid", Some("by")).await;
    assert_refused(&app, "PUT", "/v1/queues/q", r#"{"rate": {"limit": 1}}"#, 400, "invalid", Some("rate.per")).await;
}

#[tokio::test]
async fn durations_must_be_strings_within_their_field_maximum() {
    let app = leased_app().await;
    let cases = [
        ("PUT", "/v1/queues/q", r#"{"lease_ttl": 30}"#, "lease_ttl"),
        ("PUT", "/v1/queues/q", r#"{"lease_ttl": "-5s"}"#, "lease_ttl"),
        ("PUT", "/v1/queues/q", r#"{"lease_ttl": "soon"}"#, "lease_ttl"),
        ("PUT", "/v1/queues/q", r#"{"lease_ttl": "25h"}"#, "lease_ttl"),
        ("PUT", "/v1/queues/q", r#"{"lease_ttl": "0s"}"#, "lease_ttl"),
        ("PUT", "/v1/queues/q", r#"{"lease_ttl": "1500us"}"#, "lease_ttl"),
        ("POST", "/v1/queues/q/jobs", r#"{"delay": "1ms 1ns"}"#, "delay"),
        ("PUT", "/v1/queues/q", r#"{"retention": "91days"}"#, "retention"),
        ("PUT", "/v1/queues/q", r#"{"backoff": {"base": "8days"}}"#, "backoff.base"),
        ("PUT", "/v1/queues/q", r#"{"rate": {"limit": 1, "per": "32days"}}"#, "rate.per"),
        ("PUT", "/v1/queues/q", r#"{"concurrency": 0}"#, "concurrency"),
        ("POST", "/v1/queues/q/jobs", r#"{"delay": "366days"}"#, "delay"),
        ("POST", "/v1/queues/q/jobs", r#"{"delay": "99999999999999999999years"}"#, "delay"),
        ("POST", "/v1/queues/q/jobs", r#"{"run_at": "tomorrow"}"#, "run_at"),
        ("POST", "/v1/queues/q/jobs", r#"{"delay": "1s", "run_at": "2030-01-01T00:00:00Z"}"#, "run_at"),
        ("POST", "/v1/queues/q/lease", r#"{"worker": "w", "wait": "61s"}"#, "wait"),
        ("POST", "/v1/queues/q/lease", r#"{"worker": "w", "wait": 5}"#, "wait"),
        ("POST", "/v1/queues/q/lease", r#"{"worker": "w", "lease_ttl": "2days"}"#, "lease_ttl"),
        ("POST", "/v1/jobs/1/fail", r#"{"lease_token": 1, "retry_after": "400days"}"#, "retry_after"),
        ("POST", "/v1/jobs/1/heartbeat", r#"{"lease_token": 1, "lease_ttl": "-1s"}"#, "lease_ttl"),
    ];
    for (method, uri, body, field) in cases {
        assert_refused(&app, method, uri, body, 400, "invalid", Some(field)).await;
    }
}

#[tokio::test]
async fn counts_and_sizes_over_their_limits_are_refused() {
    let app = leased_app().await;
    assert_refused(&app, "POST", "/v1/queues/q/lease", r#"{"worker": "w", "max": 1001}"#, 400, "invalid", Some("max")).await;
    assert_refused(&app, "POST", "/v1/queues/q/lease", r#"{"worker": "w", "max": 0}"#, 400, "invalid", Some("max")).await;
    assert_refused(&app, "POST", "/v1/queues/q/lease", r#"{"worker": ""}"#, 400, "invalid", Some("worker")).await;
    assert_refused(&app, "POST", "/v1/queues/q/jobs", r#"{"max_attempts": 1001}"#, 400, "invalid", Some("max_attempts")).await;
    assert_refused(&app, "POST", "/v1/queues/q/jobs", r#"{"priority": 9007199254740992}"#, 400, "invalid", Some("priority")).await;
    assert_refused(&app, "POST", "/v1/queues/q/jobs", r#"{"jobs": []}"#, 400, "invalid", Some("jobs")).await;
    // `null` is not a batch (it read as one job with no payload).
    assert_refused(&app, "POST", "/v1/queues/q/jobs", r#"{"jobs": null}"#, 400, "invalid", Some("jobs")).await;
    assert_refused(&app, "POST", "/v1/counters/c", r#"{"by": 0}"#, 400, "invalid", Some("by")).await;
    let big = format!(r#"{{"payload": "{}"}}"#, "x".repeat(256 * 1024));
    assert_refused(&app, "POST", "/v1/queues/q/jobs", &big, 413, "too_large", Some("payload")).await;
    // The limit is on the payload as stored, without the whitespace between its tokens.
    let spaced = format!(r#"{{"payload": [{}1]}}"#, " ".repeat(300 * 1024));
    let accepted = crate::v1_support::call(&app, "POST", "/v1/queues/q/jobs", Some(&spaced), &[]).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert!(accepted.body.contains(r#""payload":[1]"#), "{}", accepted.body);
    let big_result = format!(r#"{{"lease_token": 1, "result": "{}"}}"#, "x".repeat(256 * 1024));
    assert_refused(&app, "POST", "/v1/jobs/1/complete", &big_result, 413, "too_large", Some("result")).await;
    let big_error = format!(r#"{{"lease_token": 1, "error": "{}"}}"#, "x".repeat(8 * 1024 + 1));
    assert_refused(&app, "POST", "/v1/jobs/1/fail", &big_error, 413, "too_large", Some("error")).await;
    let many = format!(r#"{{"jobs": [{}]}}"#, vec!["{}"; 1001].join(","));
    assert_refused(&app, "POST", "/v1/queues/q/jobs", &many, 413, "too_large", Some("jobs")).await;
    // More payload than one Raft entry holds (13 × 250 KiB): refused naming the batch.
    let one = format!(r#"{{"payload": "{}"}}"#, "x".repeat(250 * 1024));
    let heavy = format!(r#"{{"jobs": [{}]}}"#, vec![one.as_str(); 13].join(","));
    assert_refused(&app, "POST", "/v1/queues/q/jobs", &heavy, 413, "too_large", Some("jobs")).await;
    let huge = " ".repeat(rota_server::v1::limits::BODY_BYTES_MAX + 1);
    assert_refused(&app, "POST", "/v1/queues/q/jobs", &huge, 413, "too_large", None).await;
}

#[tokio::test]
async fn bad_names_and_query_parameters_are_refused() {
    let app = app();
    assert_refused(&app, "POST", "/v1/queues/no%20spaces/jobs", "{}", 400, "invalid", Some("queue")).await;
    assert_refused(&app, "POST", &format!("/v1/queues/{}/jobs", "q".repeat(129)), "{}", 400, "invalid", Some("queue")).await;
    assert_refused(&app, "POST", "/v1/counters/a*b", r#"{"by": 1}"#, 400, "invalid", Some("name")).await;
    assert_refused(&app, "POST", "/v1/queues/q/jobs?wiat=1s", "{}", 400, "invalid", Some("wiat")).await;
    assert_refused(&app, "POST", "/v1/queues/q/jobs?wait=61s", "{}", 400, "invalid", Some("wait")).await;
    assert_refused(&app, "POST", "/v1/queues/q/jobs?wait=1s", r#"{"jobs": [{}]}"#, 400, "invalid", Some("wait")).await;
    assert_error(&get(&app, "/v1/jobs/1?wait=forever").await, 400, "invalid", Some("wait"));
}

#[tokio::test]
async fn stale_and_unknown_leases_change_nothing() {
    let app = leased_app().await;
    for action in ["heartbeat", "complete", "fail", "release"] {
        assert_refused_after_propose(&app, &format!("/v1/jobs/1/{action}"), r#"{"lease_token": 99}"#, 409, "stale_lease").await;
        assert_refused_after_propose(&app, &format!("/v1/jobs/42/{action}"), r#"{"lease_token": 1}"#, 404, "not_found").await;
    }
}

/// Errors only the state can decide: one entry is written, the state is unchanged.
async fn assert_refused_after_propose(app: &TestApp, uri: &str, body: &str, status: u16, code: &str) {
    let state = snapshot(app);
    let reply = call(app, "POST", uri, Some(body), &[]).await;
    assert_eq!(reply.status, status, "{uri}: {}", reply.body);
    assert_eq!(reply.json()["error"]["code"], code);
    assert_eq!(snapshot(app), state, "{uri}: state unchanged");
}

#[tokio::test]
async fn json_that_decoders_cannot_read_back_is_refused_as_payload_or_result() {
    let app = leased_app().await;
    let deep = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    let unreadable = [deep(65), deep(100_000), "1e400".to_owned(), "[-1e400]".to_owned(), r#""\ud800""#.to_owned(), r#"{"a":"\udc00x"}"#.to_owned()];
    for payload in &unreadable {
        let body = format!(r#"{{"payload": {payload}}}"#);
        assert_refused(&app, "POST", "/v1/queues/q/jobs", &body, 400, "invalid", Some("payload")).await;
        let body = format!(r#"{{"jobs": [{{}}, {{"payload": {payload}}}]}}"#);
        assert_refused(&app, "POST", "/v1/queues/q/jobs", &body, 400, "invalid", Some("jobs[1].payload")).await;
        let body = format!(r#"{{"lease_token": 1, "result": {payload}}}"#);
        assert_refused(&app, "POST", "/v1/jobs/1/complete", &body, 400, "invalid", Some("result")).await;
    }
    // What decoders do read is kept: 64 levels, large and tiny numbers, paired surrogates.
    for payload in [deep(64), "1e300".to_owned(), "123456789012345678901234567890".to_owned(), r#""\ud83d\ude00""#.to_owned()] {
        let sent = call(&app, "POST", "/v1/queues/q/jobs", Some(&format!(r#"{{"payload": {payload}}}"#)), &[]).await;
        assert_eq!(sent.status, 202, "{payload}: {}", sent.body);
        assert!(serde_json::from_str::<serde_json::Value>(&sent.body).is_ok(), "the answer decodes: {}", sent.body);
    }
}

#[tokio::test]
async fn a_bad_patch_is_refused_like_a_bad_put_and_changes_nothing() {
    let app = app();
    let reply = put_json(&app, "/v1/queues/q", json!({"concurrency": 2, "rate": {"limit": 5, "per": "1s"}})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let cases = [
        (r#"{"pasued": true}"#, "pasued"),
        (r#"{"paused": true, "concurrency": 1, "concurency": 2}"#, "concurency"),
        (r#"{"concurrency": "1"}"#, "concurrency"),
        (r#"{"concurrency": -1}"#, "concurrency"),
        (r#"{"concurrency": 0}"#, "concurrency"),
        (r#"{"paused": "yes"}"#, "paused"),
        (r#"{"lease_ttl": "soon"}"#, "lease_ttl"),
        (r#"{"lease_ttl": 30}"#, "lease_ttl"),
        (r#"{"lease_ttl": "25h"}"#, "lease_ttl"),
        (r#"{"retention": "91days"}"#, "retention"),
        (r#"{"rate": {"limit": 1, "brust": 1}}"#, "rate.brust"),
        (r#"{"rate": {"per": "32days"}}"#, "rate.per"),
        (r#"{"rate": {"limit": 0}}"#, "rate.limit"),
        (r#"{"rate": [1, "1s", 1]}"#, "rate"),
        (r#"{"backoff": {"base": "8days"}}"#, "backoff.base"),
        (r#"{"backoff": {"base": "1h", "max": "1m"}}"#, "backoff.max"),
        (r#"{"backoff": {"bsae": "1s"}}"#, "backoff.bsae"),
        // null means "no limit", so only the two limits take it.
        (r#"{"paused": null}"#, "paused"),
        (r#"{"lease_ttl": null}"#, "lease_ttl"),
        (r#"{"max_attempts": null}"#, "max_attempts"),
        (r#"{"backoff": null}"#, "backoff"),
        (r#"{"retention": null}"#, "retention"),
        (r#"{"rate": {"limit": null}}"#, "rate.limit"),
        (r#"{"rate": {"burst": null}}"#, "rate.burst"),
    ];
    for (body, field) in cases {
        assert_refused(&app, "PATCH", "/v1/queues/q", body, 400, "invalid", Some(field)).await;
    }
    assert_refused(&app, "PATCH", "/v1/queues/q", "{", 400, "malformed_json", None).await;
    assert_refused(&app, "PATCH", "/v1/queues/bad%20name", "{}", 400, "invalid", Some("queue")).await;
    assert_refused(&app, "PATCH", "/v1/queues/q?force=true", "{}", 400, "invalid", Some("force")).await;
}

#[tokio::test]
async fn a_patch_only_the_state_can_refuse_changes_nothing() {
    let app = app();
    let reply = put_json(&app, "/v1/queues/q", json!({"concurrency": 2, "backoff": {"base": "1s", "max": "1m"}})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // No rate yet: a rate must be given whole. A max under the current base.
    for (body, field) in [
        (r#"{"paused": true, "rate": {"burst": 3}}"#, "rate.limit"),
        (r#"{"paused": true, "rate": {"limit": 3}}"#, "rate.per"),
        (r#"{"paused": true, "backoff": {"max": "500ms"}}"#, "backoff.max"),
    ] {
        let state = snapshot(&app);
        let reply = call(&app, "PATCH", "/v1/queues/q", Some(body), &[]).await;
        assert_error(&reply, 400, "invalid", Some(field));
        assert_eq!(snapshot(&app), state, "{body}: state unchanged");
    }
    assert_eq!(get(&app, "/v1/queues/q").await.json()["config"]["paused"], false);
}

#[tokio::test]
async fn a_run_at_without_a_time_zone_is_refused() {
    let app = app();
    for zoneless in ["2026-12-06T14:09:00", "2026-12-06 14:09:00", "2026-12-06T14:09:00.250", "2026-12-06t14:09:00"] {
        let body = json!({"run_at": zoneless}).to_string();
        let (state, index) = (snapshot(&app), applied_index(&app));
        let reply = call(&app, "POST", "/v1/queues/q/jobs", Some(&body), &[]).await;
        assert_error(&reply, 400, "invalid", Some("run_at"));
        let message = reply.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(
            message.contains("2026-01-02T03:04:05Z") && message.contains("+02:00"),
            "{zoneless}: says the form expected: {message}"
        );
        assert_eq!((applied_index(&app), snapshot(&app)), (index, state), "{zoneless}: nothing proposed");
        let batch = json!({"jobs": [{}, {"run_at": zoneless}]}).to_string();
        assert_refused(&app, "POST", "/v1/queues/q/jobs", &batch, 400, "invalid", Some("jobs[1].run_at")).await;
    }
}

#[tokio::test]
async fn a_query_wait_takes_whole_milliseconds_as_a_body_duration_does() {
    let app = app();
    let id = submit(&app, "q", json!({})).await["id"].clone();
    for wait in ["1500us", "1ns", "0.5ms", "1.0001s"] {
        assert_refused(&app, "GET", &format!("/v1/jobs/{id}?wait={wait}"), "", 400, "invalid", Some("wait")).await;
        assert_refused(&app, "POST", &format!("/v1/queues/q/jobs?wait={wait}"), "{}", 400, "invalid", Some("wait")).await;
    }
}

#[tokio::test]
async fn a_delete_refuses_a_body_it_would_ignore() {
    let app = app();
    let id = submit(&app, "q", json!({})).await["id"].clone();
    // `force` belongs in the query: in the body it would have been dropped silently.
    assert_refused(&app, "DELETE", "/v1/queues/q", r#"{"force": true}"#, 400, "invalid", Some("force")).await;
    assert_refused(&app, "DELETE", "/v1/queues/q", "not json", 400, "malformed_json", None).await;
    assert_refused(&app, "DELETE", &format!("/v1/jobs/{id}"), r#"{"reason": "typo", "bogus": ["#, 400, "malformed_json", None).await;
    assert_refused(&app, "DELETE", &format!("/v1/jobs/{id}"), r#"{"x": 1}"#, 400, "invalid", Some("x")).await;
    // An empty object is no fields at all.
    let cancelled = call(&app, "DELETE", &format!("/v1/jobs/{id}"), Some("{}"), &[]).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
}

/// A number of the wrong kind for a field with a documented range says that range.
#[tokio::test]
async fn a_fractional_number_is_refused_with_the_fields_documented_range() {
    let app = app();
    for (uri, body, field, range) in [
        ("/v1/queues/q/jobs", r#"{"priority": 1.5}"#, "priority", "from -9007199254740991 to 9007199254740991"),
        ("/v1/queues/q/jobs", r#"{"jobs": [{"max_attempts": 2.5}]}"#, "jobs[0].max_attempts", "from 1 to 1000"),
        ("/v1/queues/q/lease", r#"{"worker": "w", "max": 1e2}"#, "max", "from 1 to 1000"),
        ("/v1/queues/q", r#"{"concurrency": "1"}"#, "concurrency", "from 1 to 1000000 (or null: no limit)"),
        ("/v1/queues/q", r#"{"concurrency": -1}"#, "concurrency", "from 1 to 1000000 (or null: no limit)"),
    ] {
        let (state, index) = (snapshot(&app), applied_index(&app));
        let method = if uri == "/v1/queues/q" { "PUT" } else { "POST" };
        let reply = call(&app, method, uri, Some(body), &[]).await;
        assert_error(&reply, 400, "invalid", Some(field));
        assert!(reply.body.contains(&format!("expected a whole number {range}")), "{body}: {}", reply.body);
        assert_eq!((snapshot(&app), applied_index(&app)), (state, index), "{body}: nothing changed");
    }
}

/// Every bad `limit` of a job listing says the same range (`-1` said "non-negative
/// integer", `0` "between 1 and 1000").
#[tokio::test]
async fn a_listing_limit_out_of_range_says_its_range_whatever_is_wrong() {
    let app = app();
    submit(&app, "q", json!({})).await;
    for limit in ["-1", "", "0", "1001", "ten"] {
        let reply = get(&app, &format!("/v1/queues/q/jobs?limit={limit}")).await;
        assert_error(&reply, 400, "invalid", Some("limit"));
        assert!(reply.body.contains("between 1 and 1000"), "limit={limit}: {}", reply.body);
    }
}
