//! Every bound answers a clear 4xx, changes nothing and keeps serving.

use axum::body::Body;
use axum::http::Request;
use rota_server::limits::{
    KEY_BYTES_MAX, QUERY_BYTES_MAX, REQUEST_BODY_BYTES_MAX, VALUE_BYTES_MAX,
};

use crate::support::*;

#[tokio::test]
async fn an_oversized_body_is_413_and_writes_nothing() {
    let app = app();
    let body = format!("value={}", "a".repeat(REQUEST_BODY_BYTES_MAX));
    let reply = put(&app, "/v2/keys/big", &body).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["errorCode"], 413);
    assert_eq!(store_index(&app), 0);
    assert_eq!(
        put(&app, "/v2/keys/small", "value=1").await.status,
        201,
        "still serving"
    );
}

#[tokio::test]
async fn an_oversized_chunked_body_is_413() {
    let app = app();
    let chunks =
        (0..40).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a'; 64 * 1024])));
    let stream = futures::stream::iter(
        std::iter::once(Ok(bytes::Bytes::from_static(b"value="))).chain(chunks),
    );
    let request = Request::put("/v2/keys/big")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from_stream(stream))
        .expect("request");
    let reply = send_request(&app, request).await;
    assert_eq!(reply.status, 413);
    assert_eq!(store_index(&app), 0);
}

#[tokio::test]
async fn an_oversized_value_is_413() {
    let app = app();
    let reply = put(
        &app,
        "/v2/keys/big",
        &format!("value={}", "a".repeat(VALUE_BYTES_MAX + 1)),
    )
    .await;
    assert_eq!(reply.status, 413);
    assert!(reply.json()["cause"]
        .as_str()
        .unwrap_or_default()
        .contains("limit"));
    assert_eq!(store_index(&app), 0);
    let at_limit = put(
        &app,
        "/v2/keys/big",
        &format!("value={}", "a".repeat(VALUE_BYTES_MAX)),
    )
    .await;
    assert_eq!(at_limit.status, 201, "a value at the limit is fine");
}

#[tokio::test]
async fn an_overlong_key_is_414() {
    let app = app();
    let reply = put(
        &app,
        &format!("/v2/keys/{}", "k".repeat(KEY_BYTES_MAX)),
        "value=1",
    )
    .await;
    assert_eq!(reply.status, 414);
    assert_eq!(store_index(&app), 0);
}

#[tokio::test]
async fn an_overlong_query_is_414() {
    let app = app();
    let reply = put(
        &app,
        &format!("/v2/keys/q?value={}", "v".repeat(QUERY_BYTES_MAX)),
        "",
    )
    .await;
    assert_eq!(reply.status, 414);
    assert_eq!(store_index(&app), 0);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let served = serve(
        app(),
        rota_server::ServeOptions {
            header_read_timeout: std::time::Duration::from_millis(200),
            ..Default::default()
        },
    )
    .await;
    let mut stream = connect(served.port).await;
    write_all(&mut stream, "GET /v2/keys/a HTTP/1.1\r\nHost: x\r\n").await;
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut stream, &mut buffer),
    )
    .await
    .expect("the server must close a slow client's connection");
    // hyper may answer 408 before closing; either way the connection ends.
    if let Ok(read) = read {
        let text = String::from_utf8_lossy(&buffer[..read]);
        assert!(read == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    }
}
