//! Watches: headers flushed at once, events delivered, cancel-safety, the watcher bound.

use std::time::Duration;

use rota_server::ServerConfig;

use crate::support::*;

const PATIENCE: Duration = Duration::from_secs(5);

async fn open_watch(port: u16, uri: &str) -> tokio::net::TcpStream {
    let mut stream = connect(port).await;
    write_all(
        &mut stream,
        &format!("GET {uri} HTTP/1.1\r\nHost: rota\r\n\r\n"),
    )
    .await;
    stream
}

#[tokio::test]
async fn watch_headers_are_flushed_before_the_event_and_carry_the_start_index() {
    let served = serve(app(), Default::default()).await;
    put(&served.app, "/v2/keys/other", "value=1").await;
    let start_index = store_index(&served.app);
    let mut stream = open_watch(served.port, "/v2/keys/w?wait=true").await;
    let head = read_until(&mut stream, "\r\n\r\n", PATIENCE)
        .await
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(
        head.contains(&format!("x-etcd-index: {start_index}\r\n")),
        "{head}"
    );
    assert!(head.contains("x-raft-index: "), "{head}");
    put(&served.app, "/v2/keys/w", "value=fired").await;
    let body = read_until(&mut stream, "fired", PATIENCE).await;
    assert!(body.contains(r#""action":"set""#), "{body}");
}

#[tokio::test]
async fn a_disconnected_watcher_releases_everything() {
    let served = serve(app(), Default::default()).await;
    let mut stream = open_watch(served.port, "/v2/keys/w?wait=true").await;
    read_until(&mut stream, "\r\n\r\n", PATIENCE).await;
    assert_eq!(served.app.watcher_count(), 1);
    drop(stream);
    let app = served.app.clone();
    eventually(PATIENCE, "the watcher count returns to 0", || {
        app.watcher_count() == 0
    })
    .await;
}

#[tokio::test]
async fn a_dropped_in_process_watch_releases_its_slot() {
    let app = app();
    let response = app
        .handle(
            axum::http::Request::get("/v2/keys/w?wait=true")
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(app.watcher_count(), 1);
    drop(response);
    assert_eq!(app.watcher_count(), 0);
}

#[tokio::test]
async fn watches_over_the_bound_get_503() {
    let app = app_with(ServerConfig {
        watchers_max: 1,
        ..ServerConfig::single("default")
    });
    let held = app
        .handle(
            axum::http::Request::get("/v2/keys/w?wait=true")
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await;
    let refused = get(&app, "/v2/keys/w?wait=true").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["errorCode"], 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    drop(held);
    assert_eq!(app.watcher_count(), 0);
}

#[tokio::test]
async fn a_wait_index_in_the_history_answers_at_once() {
    let app = app();
    put(&app, "/v2/keys/h", "value=1").await;
    let first_index = store_index(&app);
    put(&app, "/v2/keys/h", "value=2").await;
    let reply = get(
        &app,
        &format!("/v2/keys/h?wait=true&waitIndex={first_index}"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["node"]["value"], "1");
    assert_eq!(reply.json()["node"]["modifiedIndex"], first_index);
    assert_eq!(
        reply.etcd_index(),
        store_index(&app),
        "X-Etcd-Index is the index when the watch started"
    );
    assert_eq!(app.watcher_count(), 0);
}

#[tokio::test]
async fn a_cleared_wait_index_is_error_401() {
    let app = app_with(ServerConfig::single("default"));
    for value in 0..1005 {
        put(&app, "/v2/keys/h", &format!("value={value}")).await;
    }
    let reply = get(&app, "/v2/keys/h?wait=true&waitIndex=1").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["errorCode"], 401);
    assert_eq!(reply.etcd_index(), store_index(&app));
    assert_eq!(app.watcher_count(), 0);
}

#[tokio::test]
async fn a_stream_watch_sends_one_line_per_event() {
    let served = serve(app(), Default::default()).await;
    let mut stream = open_watch(served.port, "/v2/keys/s?wait=true&stream=true").await;
    read_until(&mut stream, "\r\n\r\n", PATIENCE).await;
    put(&served.app, "/v2/keys/s", "value=one").await;
    read_until(&mut stream, "one", PATIENCE).await;
    put(&served.app, "/v2/keys/s", "value=two").await;
    read_until(&mut stream, "two", PATIENCE).await;
    assert_eq!(served.app.watcher_count(), 1, "a stream watch stays open");
}

/// From a `waitIndex` in the history, a stream sends every event since, then live ones
/// (etcd 3.4 sends the first and then nothing: docs/limits.md says why rota does not).
#[tokio::test]
async fn a_stream_watch_from_history_sends_what_followed_and_then_live_events() {
    let served = serve(app(), Default::default()).await;
    put(&served.app, "/v2/keys/h", "value=first").await;
    put(&served.app, "/v2/keys/h", "value=second").await;
    let mut stream = open_watch(served.port, "/v2/keys/h?wait=true&stream=true&waitIndex=1").await;
    let history = read_until(&mut stream, "\"second\"", PATIENCE).await;
    let first = history.find("\"first\"").expect("the event at waitIndex");
    assert!(first < history.find("\"second\"").expect("read until it"), "{history}");
    put(&served.app, "/v2/keys/h", "value=third").await;
    read_until(&mut stream, "third", PATIENCE).await;
}

#[tokio::test]
async fn shutdown_ends_open_watches() {
    let app = app();
    let response = app
        .handle(
            axum::http::Request::get("/v2/keys/w?wait=true")
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await;
    app.begin_shutdown();
    let body = tokio::time::timeout(
        PATIENCE,
        axum::body::to_bytes(response.into_body(), usize::MAX),
    )
    .await
    .expect("the watch body ends on shutdown");
    assert!(body.is_err(), "cut off, not a complete empty answer: {body:?}");
    assert_eq!(app.watcher_count(), 0);
}

/// On the wire: the connection closes without the chunked body's last chunk, as etcd's
/// does, so clients see a failed connection (and watch again elsewhere), not an empty 200.
#[tokio::test]
async fn shutdown_cuts_an_open_watch_connection_off_without_a_last_chunk() {
    use tokio::io::AsyncReadExt;
    let served = serve(app(), Default::default()).await;
    let mut stream = open_watch(served.port, "/v2/keys/w?wait=true").await;
    read_until(&mut stream, "\r\n\r\n", PATIENCE).await;
    served.app.begin_shutdown();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("the connection closes on shutdown")
        .expect("read");
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("0\r\n\r\n"), "the body was ended, not cut off: {rest:?}");
}

/// hyper stops reading a connection while a request is answered if bytes follow the
/// request, so it never saw such a client leave: its watch held a watcher slot, a socket
/// and a connection until the key changed (2,048 of them on keys nobody writes and no one
/// could watch). The watch itself now notices the client's end.
#[tokio::test]
async fn a_watcher_that_sent_more_bytes_and_left_releases_everything() {
    let served = serve(app(), Default::default()).await;
    let extras = ["\r\n", "GET /health HTTP/1.1\r\nHost: rota\r\n\r\n", "PUT /v2/keys/x HTTP/1.1\r\nContent-Length: 9\r\n\r\nval"];
    for (at, extra) in extras.iter().enumerate() {
        let mut stream = connect(served.port).await;
        let request = format!("GET /v2/keys/w{at}?wait=true HTTP/1.1\r\nHost: rota\r\n\r\n{extra}");
        write_all(&mut stream, &request).await;
        read_until(&mut stream, "\r\n\r\n", PATIENCE).await;
        assert_eq!(served.app.watcher_count(), 1, "{extra:?}");
        drop(stream);
        let app = served.app.clone();
        eventually(PATIENCE, &format!("the watcher count returns to 0 ({extra:?})"), || {
            app.watcher_count() == 0
        })
        .await;
    }
}

/// More events applied at once than the history keeps for waiting watches (thousands of
/// keys expiring after a pause): a watch on a key that was there all along and not changed
/// goes on waiting, as on etcd; one whose first event may have been dropped is cut off (a
/// broken connection, which clients watch again after), never answered with an empty body.
#[tokio::test]
async fn a_watch_behind_the_history_waits_on_if_nothing_was_for_it_else_is_cut_off() {
    use futures::StreamExt;
    let app = app();
    put(&app, "/v2/keys/quiet", "value=1").await;
    let open = |uri: &'static str| {
        let app = app.clone();
        async move {
            let response = app.handle(axum::http::Request::get(uri).body(axum::body::Body::empty()).expect("request")).await;
            assert_eq!(response.status(), 200);
            response.into_body().into_data_stream()
        }
    };
    let mut quiet = open("/v2/keys/quiet?wait=true").await;
    let mut absent = open("/v2/keys/absent?wait=true").await;
    // Not polled meanwhile, the watches fall behind by more than window and slack hold.
    for i in 0..(1000 + 10_000 + 100) {
        let reply = put(&app, &format!("/v2/keys/fleet/m{i}"), "value=up").await;
        assert_eq!(reply.status, 201);
    }
    let cut = tokio::time::timeout(PATIENCE, absent.next()).await.expect("the watch on /absent ends");
    assert!(matches!(cut, Some(Err(_))), "cut off, not ended with an empty body: {cut:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), quiet.next()).await.is_err(),
        "the watch on /quiet goes on waiting"
    );
    put(&app, "/v2/keys/quiet", "value=2").await;
    let event = tokio::time::timeout(PATIENCE, quiet.next()).await.expect("the event").expect("a chunk").expect("bytes");
    let event: serde_json::Value = serde_json::from_slice(&event).expect("json");
    assert_eq!((event["action"].as_str(), event["node"]["value"].as_str()), (Some("set"), Some("2")), "{event}");
}
