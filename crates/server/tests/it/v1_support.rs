//! Helpers for the `/v1` tests: JSON requests in-process, state snapshots.

use axum::body::Body;
use axum::http::Request;
use rota_core::State;
use rota_server::Backend as _;
use serde_json::Value;

use crate::support::{send_request, Reply, TestApp};

/// Sends `body` (raw text, so malformed JSON can be sent too) with optional headers.
pub async fn call(app: &TestApp, method: &str, uri: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Reply {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = match body {
        Some(body) => {
            builder = builder.header("content-type", "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    send_request(app, builder.body(body).expect("request")).await
}

pub async fn post(app: &TestApp, uri: &str, body: Value) -> Reply {
    call(app, "POST", uri, Some(&body.to_string()), &[]).await
}

pub async fn put_json(app: &TestApp, uri: &str, body: Value) -> Reply {
    call(app, "PUT", uri, Some(&body.to_string()), &[]).await
}

pub async fn patch_json(app: &TestApp, uri: &str, body: Value) -> Reply {
    call(app, "PATCH", uri, Some(&body.to_string()), &[]).await
}

pub async fn get(app: &TestApp, uri: &str) -> Reply {
    call(app, "GET", uri, None, &[]).await
}

/// The whole replicated state, to check that a rejected request changed nothing.
pub fn snapshot(app: &TestApp) -> State {
    app.backend().read(State::clone)
}

/// Raft entries applied so far (a request rejected before proposing adds none).
pub fn applied_index(app: &TestApp) -> u64 {
    app.backend().status().applied_index
}

/// Submits one job and returns its JSON.
pub async fn submit(app: &TestApp, queue: &str, body: Value) -> Value {
    let reply = post(app, &format!("/v1/queues/{queue}/jobs"), body).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.json()
}

/// Leases up to `max` jobs without waiting and returns them.
pub async fn lease(app: &TestApp, queue: &str, max: u32) -> Vec<Value> {
    let reply = post(app, &format!("/v1/queues/{queue}/lease"), serde_json::json!({"worker": "w", "max": max})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["jobs"].as_array().expect("jobs").clone()
}

/// Asserts an error answer's status, code and field.
#[track_caller]
pub fn assert_error(reply: &Reply, status: u16, code: &str, field: Option<&str>) {
    assert_eq!(reply.status, status, "{}", reply.body);
    let json = reply.json();
    assert_eq!(json["error"]["code"], code, "{}", reply.body);
    assert_eq!(json["error"]["field"].as_str(), field, "{}", reply.body);
    assert!(json["error"]["message"].as_str().is_some_and(|message| !message.is_empty()), "{}", reply.body);
}
