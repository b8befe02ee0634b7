//! `/v2/keys` requests end to end through the handlers: where parameters come from,
//! headers, statuses, idempotency.

use axum::body::Body;
use axum::http::Request;

use crate::support::*;

#[tokio::test]
async fn a_write_answers_etcds_headers_and_status() {
    let app = app();
    let created = put(&app, "/v2/keys/frontends/fe1", "value=10.0.1.1").await;
    assert_eq!(created.status, 201);
    assert_eq!(created.header("content-type"), Some("application/json"));
    assert_eq!(created.etcd_index(), store_index(&app));
    assert_eq!(created.json()["node"]["modifiedIndex"], store_index(&app));
    assert!(created.header("x-raft-index").is_some());
    assert!(created.header("x-raft-term").is_some());
    assert_eq!(created.header("x-etcd-cluster-id").map(str::len), Some(16));
    assert_eq!(created.header("access-control-allow-origin"), Some("*"));
    assert!(created.body.ends_with("}\n"));

    let replaced = put(&app, "/v2/keys/frontends/fe1", "value=10.0.1.2").await;
    assert_eq!(replaced.status, 200, "a set over an existing key is 200");
    assert_eq!(replaced.json()["prevNode"]["value"], "10.0.1.1");
}

#[tokio::test]
async fn a_get_reports_the_current_index() {
    let app = app();
    put(&app, "/v2/keys/a", "value=1").await;
    let reply = get(&app, "/v2/keys/a").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["action"], "get");
    assert_eq!(reply.etcd_index(), store_index(&app));
    assert!(reply.header("x-raft-index").is_some());
}

#[tokio::test]
async fn a_store_error_has_the_current_index_and_no_raft_headers() {
    let app = app();
    put(&app, "/v2/keys/a", "value=1").await;
    let reply = get(&app, "/v2/keys/missing/deeper").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["errorCode"], 100);
    assert_eq!(reply.etcd_index(), store_index(&app));
    assert!(reply.header("x-raft-index").is_none());
    assert!(reply.header("x-etcd-cluster-id").is_some());
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let app = app();
    put(&app, "/v2/keys/a", "value=1").await;
    let reply = send(&app, "HEAD", "/v2/keys/a", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.etcd_index(), store_index(&app));
}

#[tokio::test]
async fn the_form_body_wins_over_the_query() {
    let app = app();
    put(&app, "/v2/keys/a?value=query", "value=body").await;
    assert_eq!(
        get(&app, "/v2/keys/a").await.json()["node"]["value"],
        "body"
    );
}

#[tokio::test]
async fn a_body_that_is_not_a_form_is_ignored() {
    let app = app();
    let request = Request::put("/v2/keys/a")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"value":"json"}"#))
        .expect("request");
    let reply = send_request(&app, request).await;
    assert_eq!(reply.status, 201);
    assert_eq!(
        reply.json()["node"]["value"],
        "",
        "the JSON body is ignored, value is empty"
    );
}

#[tokio::test]
async fn delete_takes_its_parameters_only_from_the_query() {
    let app = app();
    put(&app, "/v2/keys/d", "dir=true").await;
    let with_body = send(&app, "DELETE", "/v2/keys/d", Some("dir=true")).await;
    assert_eq!(
        with_body.json()["errorCode"],
        102,
        "dir=true in a DELETE body is ignored"
    );
    let with_query = send(&app, "DELETE", "/v2/keys/d?dir=true", None).await;
    assert_eq!(with_query.status, 200);
    assert_eq!(with_query.json()["action"], "delete");
}

#[tokio::test]
async fn post_creates_in_order_keys() {
    let app = app();
    let reply = send(&app, "POST", "/v2/keys/queue", Some("value=Job1")).await;
    assert_eq!(reply.status, 201);
    let key = reply.json()["node"]["key"]
        .as_str()
        .expect("key")
        .to_string();
    assert_eq!(key, format!("/queue/{:020}", store_index(&app)));
}

#[tokio::test]
async fn no_value_on_success_answers_only_the_action() {
    let app = app();
    let reply = put(&app, "/v2/keys/nv", "value=1&noValueOnSuccess=true").await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.body, "{\"action\":\"set\"}\n");
}

fn keyed_put(uri: &str, form: &str, key: &str) -> Request<Body> {
    Request::put(uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("idempotency-key", key)
        .body(Body::from(form.to_string()))
        .expect("request")
}

#[tokio::test]
async fn a_repeated_idempotent_write_is_replayed_not_reapplied() {
    let app = app();
    let first = send_request(&app, keyed_put("/v2/keys/i", "value=1", "k-1")).await;
    assert_eq!(first.status, 201);
    let index = store_index(&app);
    let again = send_request(&app, keyed_put("/v2/keys/i", "value=1", "k-1")).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        again.body, first.body,
        "the stored response is answered again"
    );
    assert_eq!(store_index(&app), index, "the replay applied nothing");
}

#[tokio::test]
async fn an_idempotency_key_reused_for_another_request_is_422() {
    let app = app();
    send_request(&app, keyed_put("/v2/keys/i", "value=1", "k-2")).await;
    let index = store_index(&app);
    let reused = send_request(&app, keyed_put("/v2/keys/i", "value=2", "k-2")).await;
    assert_eq!(reused.status, 422);
    assert_eq!(reused.json()["errorCode"], 422);
    assert!(reused.json()["cause"]
        .as_str()
        .unwrap_or_default()
        .contains("k-2"));
    assert_eq!(store_index(&app), index);
    assert_eq!(get(&app, "/v2/keys/i").await.json()["node"]["value"], "1");
}

#[tokio::test]
async fn an_invalid_idempotency_key_is_400() {
    let app = app();
    let long = "k".repeat(rota_server::limits::IDEMPOTENCY_KEY_BYTES_MAX + 1);
    let reply = send_request(&app, keyed_put("/v2/keys/i", "value=1", &long)).await;
    assert_eq!(reply.status, 400);
    assert_eq!(store_index(&app), 0);
}

/// Keys and values are text here: bytes that are not UTF-8 would all read U+FFFD, so two
/// different keys would be one, and a `prevValue` would match a value it differs from (a
/// lock won with the wrong token). Such writes are refused; nothing changes.
#[tokio::test]
async fn keys_and_values_that_are_not_utf8_are_refused_not_merged() {
    let app = app();
    // A real U+FFFD (valid UTF-8) is an ordinary key and value.
    let real = put(&app, "/v2/keys/u/k%EF%BF%BD", "value=x%EF%BF%BDy").await;
    assert_eq!(real.status, 201, "{}", real.body);
    let before = store_index(&app);

    for (uri, form, what) in [
        ("/v2/keys/u/k%FF", "value=a", "the key"),
        ("/v2/keys/u/k%FE", "value=b", "the key"),
        ("/v2/keys/u/k%EF%BF%BD", "value=x%FEy", "\"value\""),
        ("/v2/keys/u/k%EF%BF%BD", "value=z&prevValue=x%FEy", "\"prevValue\""),
    ] {
        let reply = put(&app, uri, form).await;
        assert_eq!(reply.status, 400, "{uri} {form}: {}", reply.body);
        assert_eq!(reply.json()["errorCode"], 209, "{uri} {form}");
        let cause = reply.json()["cause"].as_str().unwrap_or_default().to_string();
        assert!(cause.starts_with(what) && cause.contains("not UTF-8"), "{cause}");
    }
    let posted = send(&app, "POST", "/v2/keys/u/q%FF", Some("value=1")).await;
    assert_eq!(posted.json()["errorCode"], 209, "{}", posted.body);
    let cad = send(&app, "DELETE", "/v2/keys/u/k%EF%BF%BD?prevValue=x%FEy", None).await;
    assert_eq!(cad.json()["errorCode"], 209, "{}", cad.body);
    let watch = get(&app, "/v2/keys/u/k%FF?wait=true").await;
    assert_eq!(watch.json()["errorCode"], 209, "{}", watch.body);
    assert_eq!(store_index(&app), before, "nothing was written");

    // No such key can exist: reading or deleting one finds nothing (not the U+FFFD key).
    for method in ["GET", "DELETE"] {
        let reply = send(&app, method, "/v2/keys/u/k%FF", None).await;
        assert_eq!(reply.status, 404, "{method}: {}", reply.body);
        assert_eq!(reply.json()["errorCode"], 100);
        assert_eq!(reply.etcd_index(), before);
    }
    let still = get(&app, "/v2/keys/u/k%EF%BF%BD").await;
    assert_eq!(still.json()["node"]["value"], "x\u{FFFD}y");
    // Fields that are not keys or values are read as before.
    let ignored = get(&app, "/v2/keys/u/k%EF%BF%BD?value=%FF").await;
    assert_eq!(ignored.status, 200, "{}", ignored.body);
}
