//! Parameter errors through HTTP: etcd's 2xx codes with its causes, `index:0`,
//! `X-Etcd-Index: 0`, the cluster id, no Raft headers, and no state change.

use crate::support::*;

async fn assert_param_error(method: &str, uri: &str, form: Option<&str>, code: u64, cause: &str) {
    let app = app();
    let reply = send(&app, method, uri, form).await;
    assert_eq!(reply.status, 400, "{method} {uri} {form:?}: {}", reply.body);
    let body = reply.json();
    assert_eq!(
        body["errorCode"], code,
        "{method} {uri} {form:?}: {}",
        reply.body
    );
    assert_eq!(body["cause"], cause, "{method} {uri} {form:?}");
    assert_eq!(body["index"], 0);
    assert!(reply.body.ends_with("}\n"), "trailing newline");
    assert_eq!(reply.header("x-etcd-index"), Some("0"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(reply.header("x-etcd-cluster-id").is_some());
    assert!(reply.header("x-raft-index").is_none() && reply.header("x-raft-term").is_none());
    assert_eq!(store_index(&app), 0, "a parameter error changes nothing");
}

#[tokio::test]
async fn each_parameter_error_has_etcds_code_and_cause() {
    let cases: &[(&str, &str, Option<&str>, u64, &str)] = &[
        (
            "PUT",
            "/v2/keys/a",
            Some("value=1&prevValue="),
            201,
            r#""prevValue" cannot be empty"#,
        ),
        (
            "DELETE",
            "/v2/keys/a?prevValue=",
            None,
            201,
            r#""prevValue" cannot be empty"#,
        ),
        (
            "PUT",
            "/v2/keys/a",
            Some("value=1&ttl=abc"),
            202,
            r#"invalid value for "ttl""#,
        ),
        (
            "PUT",
            "/v2/keys/a?ttl=-1",
            Some("value=1"),
            202,
            r#"invalid value for "ttl""#,
        ),
        (
            "PUT",
            "/v2/keys/a",
            Some("ttl=%2B5"),
            202,
            r#"invalid value for "ttl""#,
        ),
        (
            "PUT",
            "/v2/keys/a",
            Some("prevIndex=x"),
            203,
            r#"invalid value for "prevIndex""#,
        ),
        (
            "DELETE",
            "/v2/keys/a?prevIndex=-3",
            None,
            203,
            r#"invalid value for "prevIndex""#,
        ),
        (
            "GET",
            "/v2/keys/a?wait=true&waitIndex=abc",
            None,
            203,
            r#"invalid value for "waitIndex""#,
        ),
        (
            "GET",
            "/v2/keys/a?recursive=maybe",
            None,
            209,
            r#"invalid value for "recursive""#,
        ),
        (
            "GET",
            "/v2/keys/a?sorted=2",
            None,
            209,
            r#"invalid value for "sorted""#,
        ),
        (
            "GET",
            "/v2/keys/a?wait=yes",
            None,
            209,
            r#"invalid value for "wait""#,
        ),
        (
            "PUT",
            "/v2/keys/a",
            Some("dir=bogus"),
            209,
            r#"invalid value for "dir""#,
        ),
        (
            "GET",
            "/v2/keys/a?quorum=",
            None,
            209,
            r#"invalid value for "quorum""#,
        ),
        (
            "GET",
            "/v2/keys/a?wait=true&stream=x",
            None,
            209,
            r#"invalid value for "stream""#,
        ),
        (
            "PUT",
            "/v2/keys/a",
            Some("prevExist=bogus"),
            209,
            "invalid value for prevExist",
        ),
        (
            "POST",
            "/v2/keys/q",
            Some("prevExist=bogus"),
            209,
            "invalid value for prevExist",
        ),
        (
            "PUT",
            "/v2/keys/a",
            Some("refresh=bogus"),
            209,
            "invalid value for refresh",
        ),
        (
            "PUT",
            "/v2/keys/a",
            Some("value=1&wait=true"),
            209,
            r#""wait" can only be used with GET requests"#,
        ),
        (
            "PUT",
            "/v2/keys/a",
            Some("value=%zz"),
            210,
            r#"invalid URL escape "%zz""#,
        ),
        (
            "GET",
            "/v2/keys/a?x=%zz",
            None,
            210,
            r#"invalid URL escape "%zz""#,
        ),
        (
            "PUT",
            "/v2/keys/a?a=1;b=2",
            Some("value=1"),
            210,
            "invalid semicolon separator in query",
        ),
        (
            "PUT",
            "/v2/keys/a",
            Some("value=x&refresh=true&ttl=5"),
            211,
            "A value was provided on a refresh",
        ),
        (
            "PUT",
            "/v2/keys/a",
            Some("refresh=true"),
            212,
            "No TTL value set",
        ),
    ];
    for &(method, uri, form, code, cause) in cases {
        assert_param_error(method, uri, form, code, cause).await;
    }
}

#[tokio::test]
async fn an_unparseable_content_type_is_gos_form_error() {
    let app = app();
    for (content_type, cause) in [
        (";", "mime: no media type"),
        ("text/", "mime: expected token after slash"),
        ("text/plain; charset", "mime: invalid media parameter"),
    ] {
        let request = axum::http::Request::put("/v2/keys/f")
            .header("content-type", content_type)
            .body(axum::body::Body::from("value=1"))
            .expect("request");
        let reply = send_request(&app, request).await;
        assert_eq!(reply.status, 400, "{content_type}");
        assert_eq!(reply.json()["errorCode"], 210);
        assert_eq!(reply.json()["cause"], cause);
    }
    assert_eq!(store_index(&app), 0);
}

#[tokio::test]
async fn a_form_over_gos_10_mib_is_gos_post_too_large() {
    let app = app();
    let body = format!("value={}", "a".repeat(10 << 20));
    let reply = put(&app, "/v2/keys/f", &body).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["errorCode"], 210);
    assert_eq!(reply.json()["cause"], "http: POST too large");
    assert_eq!(store_index(&app), 0);
}

#[tokio::test]
async fn parameter_errors_come_before_store_errors() {
    // /missing doesn't exist (a 100), but the bad ttl is reported first.
    assert_param_error(
        "PUT",
        "/v2/keys/missing/deeper?prevExist=true",
        Some("ttl=x"),
        202,
        r#"invalid value for "ttl""#,
    )
    .await;
}
