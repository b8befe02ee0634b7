//! `/v1` jobs: submit (single and batch), get, cancel, retry, the paged listing, leases and
//! the calls a lease holder makes, counters.

use serde_json::{json, Value};

use crate::support::app;
use crate::v1_support::*;

fn is_rfc3339_millis(value: &Value) -> bool {
    value.as_str().is_some_and(|text| text.len() == 24 && text.ends_with('Z') && humantime::parse_rfc3339(text).is_ok())
}

#[tokio::test]
async fn submit_answers_202_with_location_and_the_job() {
    let app = app();
    let reply = post(&app, "/v1/queues/api/jobs", json!({"payload": {"url": "https://x", "n": [1, 2.5, null]}, "priority": 7})).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let job = reply.json();
    let id = job["id"].as_u64().expect("id");
    assert!(id > 0);
    assert_eq!(reply.header("location"), Some(format!("/v1/jobs/{id}").as_str()));
    assert_eq!(job["queue"], "api");
    assert_eq!(job["state"], "queued");
    assert_eq!(job["priority"], 7);
    assert_eq!(job["payload"], json!({"url": "https://x", "n": [1, 2.5, null]}));
    assert_eq!(job["attempts"], 0);
    assert_eq!(job["max_attempts"], 5);
    assert!(is_rfc3339_millis(&job["created_at"]), "{}", job["created_at"]);
    assert_eq!(job["run_at"], job["created_at"]);
    assert_eq!(job["result"], json!(null));
    assert_eq!(job["errors"], json!([]));
    assert_eq!(job["finished_at"], json!(null));
    for absent in ["worker", "lease_token", "lease_expires_at"] {
        assert!(job.get(absent).is_none(), "{absent} only while leased");
    }
    assert_eq!(get(&app, &format!("/v1/jobs/{id}")).await.json(), job);
    assert_eq!(get(&app, "/v1/queues/api").await.json()["counts"]["queued"], 1, "the queue was created");
}

#[tokio::test]
async fn the_payload_is_kept_as_given_json() {
    let app = app();
    for payload in [json!("text"), json!(12), json!(null), json!([{"a": {"b": "\u{e9}\"<"}}])] {
        let job = submit(&app, "q", json!({"payload": payload})).await;
        assert_eq!(job["payload"], payload);
    }
    let job = submit(&app, "q", json!({})).await;
    assert_eq!(job["payload"], json!(null), "no payload is null");
}

#[tokio::test]
async fn a_batch_is_one_raft_entry_with_ascending_ids() {
    let app = app();
    let before = applied_index(&app);
    let reply = post(&app, "/v1/queues/q/jobs", json!({"jobs": [{"payload": 1}, {"payload": 2, "priority": 9}, {}]})).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(applied_index(&app), before + 1);
    let jobs = reply.json()["jobs"].as_array().expect("jobs").clone();
    let ids: Vec<u64> = jobs.iter().map(|job| job["id"].as_u64().expect("id")).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|pair| pair[1] == pair[0] + 1), "{ids:?}");
    assert_eq!(jobs[1]["priority"], 9);
}

#[tokio::test]
async fn a_batch_with_one_bad_job_is_refused_whole() {
    let app = app();
    let before = snapshot(&app);
    let reply = post(&app, "/v1/queues/q/jobs", json!({"jobs": [{"payload": 1}, {"priority": "high"}]})).await;
    assert_error(&reply, 400, "invalid", Some("jobs[1].priority"));
    assert_eq!(snapshot(&app), before);
}

#[tokio::test]
async fn delay_and_run_at_schedule_the_job() {
    let app = app();
    let job = submit(&app, "q", json!({"delay": "10s"})).await;
    assert_eq!(job["state"], "scheduled");
    let created = humantime::parse_rfc3339(job["created_at"].as_str().expect("created")).expect("time");
    let run_at = humantime::parse_rfc3339(job["run_at"].as_str().expect("run_at")).expect("time");
    assert_eq!(run_at.duration_since(created).expect("later").as_millis(), 10_000);
    let job = submit(&app, "q", json!({"run_at": "2000-01-01T00:00:00.000Z"})).await;
    assert_eq!(job["state"], "queued", "a run_at in the past means now");
}

#[tokio::test]
async fn run_at_takes_z_or_an_offset_in_any_rfc3339_spelling() {
    let app = app();
    // A whole second a day ahead, so the job is scheduled at exactly the time given.
    let unix_s = app.backend().now_ms() / 1000 + 86_400;
    let at = |unix_s: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_s)).to_string()
    };
    let utc = at(unix_s);
    let expected = format!("{}.000Z", utc.trim_end_matches('Z'));
    let ahead = at(unix_s + 2 * 3600).replace('Z', "+02:00");
    let behind = at(unix_s - 4 * 3600 - 30 * 60).replace('Z', "-04:30");
    let spellings = [
        utc.clone(),
        utc.to_lowercase(),
        utc.replace('T', " "),
        utc.replace('Z', ".000Z"),
        utc.replace('Z', "+00:00"),
        ahead,
        behind,
    ];
    for run_at in spellings {
        let job = submit(&app, "q", json!({"run_at": run_at})).await;
        assert_eq!(
            (job["state"].as_str(), job["run_at"].as_str()),
            (Some("scheduled"), Some(expected.as_str())),
            "{run_at}"
        );
    }
}

#[tokio::test]
async fn lease_complete_stores_the_result() {
    let app = app();
    let id = submit(&app, "q", json!({"payload": "p"})).await["id"].as_u64().expect("id");
    let reply = post(&app, "/v1/queues/q/lease", json!({"worker": "host/1", "max": 5, "lease_ttl": "1m"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let jobs = reply.json()["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!((job["id"].as_u64(), job["state"].as_str(), job["worker"].as_str()), (Some(id), Some("leased"), Some("host/1")));
    assert_eq!(job["attempts"], 1);
    assert!(is_rfc3339_millis(&job["lease_expires_at"]));
    let token = job["lease_token"].as_u64().expect("token");
    let reply = post(&app, &format!("/v1/jobs/{id}/heartbeat"), json!({"lease_token": token, "lease_ttl": "2m"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["lease_token"], token, "a heartbeat keeps the token");
    let reply = post(&app, &format!("/v1/jobs/{id}/complete"), json!({"lease_token": token, "result": {"ok": [1]}})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let done = reply.json();
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["result"], json!({"ok": [1]}));
    assert!(is_rfc3339_millis(&done["finished_at"]) && is_rfc3339_millis(&done["purge_at"]));
    assert!(done.get("lease_token").is_none());
    // A second complete with the same token is stale and changes nothing.
    let before = snapshot(&app);
    let reply = post(&app, &format!("/v1/jobs/{id}/complete"), json!({"lease_token": token, "result": 2})).await;
    assert_error(&reply, 409, "stale_lease", Some("lease_token"));
    assert_eq!(snapshot(&app), before);
}

#[tokio::test]
async fn complete_with_lease_next_takes_the_next_job_in_the_same_entry() {
    let app = app();
    put_json(&app, "/v1/queues/q", json!({"concurrency": 1})).await;
    for priority in [1, 9, 5] {
        submit(&app, "q", json!({"priority": priority})).await;
    }
    let first = lease(&app, "q", 1).await.remove(0);
    assert_eq!(first["id"], 2, "priority 9 first");
    let before = applied_index(&app);
    let uri = format!("/v1/jobs/{}/complete", first["id"]);
    let body = json!({"lease_token": first["lease_token"], "result": "r2", "lease_next": {"worker": "w2", "lease_ttl": "1m"}});
    let reply = post(&app, &uri, body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(applied_index(&app), before + 1, "one Raft entry");
    let answer = reply.json();
    assert_eq!((answer["job"]["id"].as_u64(), answer["job"]["state"].as_str()), (Some(2), Some("succeeded")));
    assert_eq!(answer["job"]["result"], "r2");
    let next = answer["jobs"].as_array().expect("jobs");
    assert_eq!(next.len(), 1, "the complete freed the only slot: {answer}");
    assert_eq!((next[0]["id"].as_u64(), next[0]["worker"].as_str()), (Some(3), Some("w2")), "then priority 5");
    assert!(next[0]["lease_token"].as_u64() > first["lease_token"].as_u64(), "a newer token");
    // The last job, then nothing left: the complete still happens, with an empty list.
    let uri = format!("/v1/jobs/{}/complete", next[0]["id"]);
    let body = json!({"lease_token": next[0]["lease_token"], "lease_next": {"worker": "w2", "max": 5}});
    let answer = post(&app, &uri, body).await.json();
    assert_eq!(answer["jobs"].as_array().map(Vec::len), Some(1));
    let last = answer["jobs"][0].clone();
    let uri = format!("/v1/jobs/{}/complete", last["id"]);
    let answer = post(&app, &uri, json!({"lease_token": last["lease_token"], "lease_next": {"worker": "w2"}})).await.json();
    assert_eq!((answer["job"]["state"].as_str(), answer["jobs"].clone()), (Some("succeeded"), json!([])));
    assert_eq!(get(&app, "/v1/queues/q").await.json()["counts"]["succeeded"], 3);
}

#[tokio::test]
async fn complete_with_lease_next_refused_changes_nothing() {
    let app = app();
    submit(&app, "q", json!({})).await;
    submit(&app, "q", json!({})).await;
    let job = lease(&app, "q", 1).await.remove(0);
    let uri = format!("/v1/jobs/{}/complete", job["id"]);
    let token = job["lease_token"].clone();
    let before = snapshot(&app);
    let cases = [
        (json!({"lease_token": token, "lease_next": {"worker": ""}}), 400, "invalid", Some("lease_next.worker")),
        (json!({"lease_token": token, "lease_next": {"worker": "w", "max": 0}}), 400, "invalid", Some("lease_next.max")),
        (json!({"lease_token": token, "lease_next": {"worker": "w", "lease_ttl": "-1s"}}), 400, "invalid", Some("lease_next.lease_ttl")),
        (json!({"lease_token": token, "lease_next": {"worker": "w", "wait": "1s"}}), 400, "invalid", None),
        (json!({"lease_token": token, "lease_next": "w"}), 400, "invalid", None),
        (json!({"lease_token": 999, "lease_next": {"worker": "w"}}), 409, "stale_lease", Some("lease_token")),
    ];
    for (body, status, code, field) in cases {
        let reply = post(&app, &uri, body.clone()).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert_eq!(reply.json()["error"]["code"], code, "{body}: {}", reply.body);
        if field.is_some() {
            assert_error(&reply, status, code, field);
        }
        assert_eq!(snapshot(&app), before, "{body} changed the state");
    }
}

#[tokio::test]
async fn complete_with_lease_next_replays_under_its_idempotency_key() {
    let app = app();
    submit(&app, "q", json!({})).await;
    submit(&app, "q", json!({})).await;
    let job = lease(&app, "q", 1).await.remove(0);
    let uri = format!("/v1/jobs/{}/complete", job["id"]);
    let body = json!({"lease_token": job["lease_token"], "lease_next": {"worker": "w"}}).to_string();
    let first = call(&app, "POST", &uri, Some(&body), &[("idempotency-key", "c1")]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let before = snapshot(&app);
    let again = call(&app, "POST", &uri, Some(&body), &[("idempotency-key", "c1")]).await;
    assert_eq!((again.status, again.header("idempotent-replayed")), (200, Some("true")));
    assert_eq!(again.json(), first.json(), "the same job leased, not a second one");
    assert_eq!(snapshot(&app).jobs.queue("q", 0).expect("q").counts.leased, 1);
    let _ = before;
}

#[tokio::test]
async fn leases_take_the_highest_priority_then_the_oldest() {
    let app = app();
    for priority in [1, 5, 5, 3] {
        submit(&app, "q", json!({"priority": priority})).await;
    }
    let ids: Vec<u64> = lease(&app, "q", 10).await.iter().map(|job| job["id"].as_u64().expect("id")).collect();
    assert_eq!(ids, [2, 3, 4, 1]);
    assert_eq!(lease(&app, "q", 1).await, Vec::<Value>::new(), "nothing left: an empty list at once");
}

#[tokio::test]
async fn fail_records_the_error_and_schedules_a_retry_then_dead() {
    let app = app();
    put_json(&app, "/v1/queues/q", json!({"max_attempts": 2, "backoff": {"base": "0s", "max": "0s"}})).await;
    let id = submit(&app, "q", json!({})).await["id"].as_u64().expect("id");
    let token = lease(&app, "q", 1).await[0]["lease_token"].as_u64().expect("token");
    let reply = post(&app, &format!("/v1/jobs/{id}/fail"), json!({"lease_token": token, "error": "boom"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let job = reply.json();
    assert_eq!(job["state"], "queued", "zero backoff queues it again at once");
    assert_eq!(job["errors"][0]["attempt"], 1);
    assert_eq!(job["errors"][0]["error"], "boom");
    let token = lease(&app, "q", 1).await[0]["lease_token"].as_u64().expect("token");
    let reply = post(&app, &format!("/v1/jobs/{id}/fail"), json!({"lease_token": token, "error": "again"})).await;
    assert_eq!(reply.json()["state"], "dead");
    // Retry from dead; retrying a queued job is invalid_state.
    let reply = post(&app, &format!("/v1/jobs/{id}/retry"), json!({})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["state"], "queued");
    assert_eq!(reply.json()["max_attempts"], 4);
    assert_error(&post(&app, &format!("/v1/jobs/{id}/retry"), json!({})).await, 409, "invalid_state", None);
}

/// `POST /v1/queues/{q}/retry` queues the dead letters again in rounds, oldest first.
#[tokio::test]
async fn a_queues_dead_jobs_are_retried_in_rounds() {
    let app = app();
    put_json(&app, "/v1/queues/q", json!({"max_attempts": 1})).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(&app, "q", json!({})).await["id"].as_u64().expect("id"));
    }
    for _ in 0..3 {
        let leased = lease(&app, "q", 1).await;
        let (id, token) = (leased[0]["id"].as_u64().expect("id"), leased[0]["lease_token"].as_u64().expect("token"));
        let reply = post(&app, &format!("/v1/jobs/{id}/fail"), json!({"lease_token": token})).await;
        assert_eq!(reply.json()["state"], "dead", "{}", reply.body);
    }
    let reply = post(&app, "/v1/queues/q/retry", json!({"max": 1})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json(), json!({"queue": "q", "retried": [ids[0]], "dead": 2}));
    // After a job id: the next round does not start from the first dead job again.
    let reply = post(&app, "/v1/queues/q/retry", json!({"max": 1, "after": ids[1]})).await;
    assert_eq!(reply.json(), json!({"queue": "q", "retried": [ids[2]], "dead": 1}), "{}", reply.body);
    // No body: the default round (up to 1,000), from the first; null is left out.
    let reply = call(&app, "POST", "/v1/queues/q/retry", None, &[]).await;
    assert_eq!(reply.json(), json!({"queue": "q", "retried": [ids[1]], "dead": 0}), "{}", reply.body);
    let reply = post(&app, "/v1/queues/q/retry", json!({"max": null, "after": null})).await;
    assert_eq!(reply.json(), json!({"queue": "q", "retried": [], "dead": 0}), "{}", reply.body);
    let queue = get(&app, "/v1/queues/q").await.json();
    assert_eq!((queue["counts"]["queued"].as_u64(), queue["counts"]["dead"].as_u64()), (Some(3), Some(0)));
    let reply = post(&app, "/v1/queues/q/retry", json!({})).await;
    assert_eq!(reply.json(), json!({"queue": "q", "retried": [], "dead": 0}));
    // Bad input changes nothing.
    let before = snapshot(&app);
    assert_error(&post(&app, "/v1/queues/q/retry", json!({"max": 0})).await, 400, "invalid", Some("max"));
    assert_error(&post(&app, "/v1/queues/q/retry", json!({"max": 1001})).await, 400, "invalid", Some("max"));
    assert_error(&post(&app, "/v1/queues/q/retry", json!({"after": -1})).await, 400, "invalid", Some("after"));
    assert_error(&post(&app, "/v1/queues/q/retry", json!({"state": "dead"})).await, 400, "invalid", Some("state"));
    assert_error(&post(&app, "/v1/queues/none/retry", json!({})).await, 404, "not_found", None);
    let get_retry = get(&app, "/v1/queues/q/retry").await;
    assert_error(&get_retry, 405, "method_not_allowed", None);
    assert_eq!(get_retry.header("allow"), Some("POST"));
    assert_eq!(snapshot(&app), before);
}

#[tokio::test]
async fn fail_without_retry_is_dead_and_retry_after_schedules() {
    let app = app();
    let first = submit(&app, "q", json!({})).await["id"].as_u64().expect("id");
    let second = submit(&app, "q", json!({})).await["id"].as_u64().expect("id");
    let tokens: Vec<u64> = lease(&app, "q", 2).await.iter().map(|job| job["lease_token"].as_u64().expect("token")).collect();
    assert!(tokens[1] > tokens[0], "tokens increase");
    let reply = post(&app, &format!("/v1/jobs/{first}/fail"), json!({"lease_token": tokens[0], "error": "x", "retry": false})).await;
    assert_eq!(reply.json()["state"], "dead");
    let reply = post(&app, &format!("/v1/jobs/{second}/fail"), json!({"lease_token": tokens[1], "retry_after": "5s"})).await;
    assert_eq!(reply.json()["state"], "scheduled");
}

#[tokio::test]
async fn fail_without_an_error_records_that_none_was_given() {
    let app = app();
    put_json(&app, "/v1/queues/q", json!({"backoff": {"base": "0s", "max": "0s"}})).await;
    let id = submit(&app, "q", json!({})).await["id"].as_u64().expect("id");
    for body in [json!({}), json!({"error": ""})] {
        let token = lease(&app, "q", 1).await[0]["lease_token"].as_u64().expect("token");
        let mut body = body;
        body["lease_token"] = token.into();
        let reply = post(&app, &format!("/v1/jobs/{id}/fail"), body).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let job = get(&app, &format!("/v1/jobs/{id}")).await.json();
    let errors: Vec<&str> = job["errors"].as_array().expect("errors").iter().map(|error| error["error"].as_str().unwrap_or_default()).collect();
    assert_eq!(errors, ["failed (no error given)"; 2], "{job}");
}

#[tokio::test]
async fn release_queues_the_job_again_without_counting_the_attempt() {
    let app = app();
    let id = submit(&app, "q", json!({})).await["id"].as_u64().expect("id");
    let token = lease(&app, "q", 1).await[0]["lease_token"].as_u64().expect("token");
    let reply = post(&app, &format!("/v1/jobs/{id}/release"), json!({"lease_token": token})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!((reply.json()["state"].as_str(), reply.json()["attempts"].as_u64()), (Some("queued"), Some(0)));
}

#[tokio::test]
async fn cancel_makes_a_job_cancelled_and_its_lease_stale() {
    let app = app();
    let id = submit(&app, "q", json!({})).await["id"].as_u64().expect("id");
    let token = lease(&app, "q", 1).await[0]["lease_token"].as_u64().expect("token");
    let reply = call(&app, "DELETE", &format!("/v1/jobs/{id}"), None, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["state"], "cancelled");
    let before = snapshot(&app);
    assert_error(&post(&app, &format!("/v1/jobs/{id}/heartbeat"), json!({"lease_token": token})).await, 409, "stale_lease", Some("lease_token"));
    assert_error(&call(&app, "DELETE", &format!("/v1/jobs/{id}"), None, &[]).await, 409, "invalid_state", None);
    assert_eq!(snapshot(&app), before);
    assert_error(&call(&app, "DELETE", "/v1/jobs/999", None, &[]).await, 404, "not_found", None);
}

#[tokio::test]
async fn the_listing_pages_by_id_within_a_state() {
    let app = app();
    for _ in 0..5 {
        submit(&app, "q", json!({})).await;
    }
    call(&app, "DELETE", "/v1/jobs/2", None, &[]).await;
    let page = get(&app, "/v1/queues/q/jobs?state=queued&limit=2").await.json();
    let ids = |page: &Value| page["jobs"].as_array().expect("jobs").iter().map(|job| job["id"].as_u64().expect("id")).collect::<Vec<_>>();
    assert_eq!(ids(&page), [1, 3]);
    assert_eq!(page["next"], 3);
    let page = get(&app, "/v1/queues/q/jobs?state=queued&limit=2&after=3").await.json();
    assert_eq!(ids(&page), [4, 5]);
    assert_eq!(page["next"], json!(null), "a full page that ends the listing has nothing after it");
    let page = get(&app, "/v1/queues/q/jobs?state=queued&limit=2&after=5").await.json();
    assert_eq!(ids(&page), Vec::<u64>::new());
    assert_eq!(page["next"], json!(null));
    assert_eq!(ids(&get(&app, "/v1/queues/q/jobs").await.json()), [1, 2, 3, 4, 5], "all states");
    assert_eq!(ids(&get(&app, "/v1/queues/q/jobs?state=cancelled").await.json()), [2]);
    assert_error(&get(&app, "/v1/queues/q/jobs?state=done").await, 400, "invalid", Some("state"));
    assert_error(&get(&app, "/v1/queues/q/jobs?limit=1001").await, 400, "invalid", Some("limit"));
    assert_error(&get(&app, "/v1/queues/none/jobs").await, 404, "not_found", None);
}

#[tokio::test]
async fn counters_add_and_read_back() {
    let app = app();
    assert_eq!(get(&app, "/v1/counters/hits").await.json(), json!({"name": "hits", "value": 0}));
    assert_eq!(post(&app, "/v1/counters/hits", json!({"by": 2})).await.json(), json!({"name": "hits", "value": 2}));
    assert_eq!(post(&app, "/v1/counters/hits", json!({"by": 5})).await.json()["value"], 7);
    assert_eq!(get(&app, "/v1/counters/hits").await.json()["value"], 7);
    post(&app, "/v1/counters/big", json!({"by": u64::MAX})).await;
    let before = snapshot(&app);
    assert_error(&post(&app, "/v1/counters/big", json!({"by": 1})).await, 422, "counter_overflow", Some("by"));
    assert_eq!(snapshot(&app), before);

    // A body with fields is refused, as for the other DELETEs.
    assert_error(&call(&app, "DELETE", "/v1/counters/hits", Some(r#"{"by": 1}"#), &[]).await, 400, "invalid", Some("by"));
    assert_eq!(get(&app, "/v1/counters/hits").await.json()["value"], 7);
    let deleted = call(&app, "DELETE", "/v1/counters/hits", None, &[]).await;
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.json(), json!({"name": "hits", "value": 7}), "the value it had");
    assert_eq!(get(&app, "/v1/counters/hits").await.json()["value"], 0);
    let put = call(&app, "PUT", "/v1/counters/hits", None, &[]).await;
    assert_error(&put, 405, "method_not_allowed", None);
    assert_eq!(put.header("allow"), Some("DELETE, GET, HEAD, POST"));
}

#[tokio::test]
async fn unknown_endpoints_and_methods_answer_json_errors() {
    let app = app();
    assert_error(&get(&app, "/v1/nothing").await, 404, "not_found", None);
    let reply = call(&app, "POST", "/v1/queues/q", None, &[]).await;
    assert_error(&reply, 405, "method_not_allowed", None);
    assert_eq!(reply.header("allow"), Some("GET, HEAD, PUT, PATCH, DELETE"));
    assert_error(&post(&app, "/v1/jobs/1/explode", json!({})).await, 404, "not_found", None);
    assert_error(&get(&app, "/v1/jobs/1/explode").await, 404, "not_found", None);
    assert_error(&get(&app, "/v1/jobs/1/complete").await, 405, "method_not_allowed", None);
    assert_error(&get(&app, "/v1/jobs/abc").await, 400, "invalid", Some("id"));
    let too_large = get(&app, "/v1/jobs/99999999999999999999999").await;
    assert_error(&too_large, 400, "invalid", Some("id"));
    assert!(too_large.body.contains("is too large"), "{}", too_large.body);
    // OPTIONS is a method /v1 does not take (no CORS here), with the methods it does.
    let options = call(&app, "OPTIONS", "/v1/jobs/1", None, &[]).await;
    assert_error(&options, 405, "method_not_allowed", None);
    assert_eq!(options.header("allow"), Some("GET, HEAD, DELETE"));
}

/// An encoded `/` in a name is refused as the name rule refuses a `/`: it was routed as a
/// separator, so `pa%2Fjobs` submitted to queue `pa` and `pa%2Flease` leased from it. A
/// broken escape gets the same JSON error shape (it was a plain-text 400).
#[tokio::test]
async fn encoded_slashes_and_broken_escapes_in_v1_paths_are_refused_and_change_nothing() {
    let app = app();
    submit(&app, "pa", json!({})).await;
    let before = snapshot(&app);
    for (method, path) in [
        ("POST", "/v1/queues/pa%2Fjobs"),
        ("POST", "/v1/queues/pa%2flease"),
        ("PUT", "/v1/queues/pa%2Fb"),
        ("POST", "/v1/counters/e%G1"),
        ("GET", "/v1/jobs/1%"),
    ] {
        let reply = call(&app, method, path, Some(r#"{"payload": 1, "worker": "w", "by": 1}"#), &[]).await;
        assert_error(&reply, 400, "invalid", Some("path"));
        assert_eq!(reply.header("content-type"), Some("application/json"), "{path}");
    }
    assert_eq!(snapshot(&app), before);
}

#[tokio::test]
async fn dot_segments_in_v1_paths_lead_nowhere_else() {
    // A queue named `../jobs/1` sent raw (curl --path-as-is, a client that does not check)
    // must not reach `/v1/jobs/1`: `/v1` is not redirected to a cleaned path as `/v2` is.
    let app = app();
    let id = submit(&app, "q", json!({})).await["id"].as_u64().expect("id");
    let before = snapshot(&app);
    // An encoded `/` is refused as such (400, field `path`); the others route nowhere (404).
    let paths = [
        (format!("/v1/queues/../jobs/{id}"), 404),
        (format!("/v1/queues/..%2Fjobs%2F{id}"), 400),
        (format!("/v1//jobs/{id}"), 404),
    ];
    for (path, status) in paths {
        let reply = call(&app, "DELETE", &path, None, &[]).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        assert_eq!(snapshot(&app), before, "{path} changed the state");
    }
    assert_eq!(get(&app, &format!("/v1/jobs/{id}")).await.json()["state"], "queued");
}

#[tokio::test]
async fn a_short_lease_says_why_and_when_to_ask_again() {
    let app = app();
    let blocked = |reply: &crate::support::Reply| reply.json()["blocked"].clone();
    let reply = post(&app, "/v1/queues/q/lease", json!({"worker": "w"})).await;
    assert_eq!(blocked(&reply), json!({"reason": "empty", "retry_at": null}), "{}", reply.body);
    put_json(&app, "/v1/queues/q", json!({"concurrency": 1, "rate": {"limit": 1, "per": "1h", "burst": 2}})).await;
    let scheduled = submit(&app, "q", json!({"delay": "1m"})).await;
    let reply = post(&app, "/v1/queues/q/lease", json!({"worker": "w"})).await;
    assert_eq!(blocked(&reply), json!({"reason": "empty", "retry_at": scheduled["run_at"]}), "the next scheduled job");
    submit(&app, "q", json!({})).await;
    submit(&app, "q", json!({})).await;
    let reply = post(&app, "/v1/queues/q/lease", json!({"worker": "w", "max": 2})).await;
    let leased = reply.json()["jobs"][0].clone();
    assert_eq!(blocked(&reply)["reason"], "concurrency", "{}", reply.body);
    assert_eq!(blocked(&reply)["retry_at"], leased["lease_expires_at"], "the lease's expiry");
    complete_job(&app, &leased).await;
    let reply = post(&app, "/v1/queues/q/lease", json!({"worker": "w"})).await;
    assert_eq!(reply.json()["jobs"].as_array().map(Vec::len), Some(1), "{}", reply.body);
    assert!(reply.json().get("blocked").is_none(), "not short: {}", reply.body);
    complete_job(&app, &reply.json()["jobs"][0]).await;
    submit(&app, "q", json!({})).await;
    let reply = post(&app, "/v1/queues/q/lease", json!({"worker": "w"})).await;
    assert_eq!(blocked(&reply)["reason"], "rate", "burst 2 used: {}", reply.body);
    assert!(blocked(&reply)["retry_at"].is_string(), "{}", reply.body);
    put_json(&app, "/v1/queues/q", json!({"paused": true})).await;
    let reply = post(&app, "/v1/queues/q/lease", json!({"worker": "w", "wait": "20ms"})).await;
    assert_eq!(blocked(&reply), json!({"reason": "paused", "retry_at": null}), "also after a wait: {}", reply.body);
}

async fn complete_job(app: &crate::support::TestApp, job: &Value) {
    let reply = post(app, &format!("/v1/jobs/{}/complete", job["id"]), json!({"lease_token": job["lease_token"]})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}
