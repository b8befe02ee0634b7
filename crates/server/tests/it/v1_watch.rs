//! `GET /v1/watch`: Server-Sent Events of key events and job changes, over a real socket.

use std::time::Duration;

use serde_json::json;

use crate::support::{app, connect, put, read_until, serve, write_all};
use crate::v1_support::*;

const PATIENCE: Duration = Duration::from_secs(5);

/// Opens a stream; also returns what arrived with the headers.
async fn open_with_start(port: u16, uri: &str) -> (tokio::net::TcpStream, String) {
    let mut stream = connect(port).await;
    write_all(&mut stream, &format!("GET {uri} HTTP/1.1\r\nHost: rota\r\n\r\n")).await;
    let seen = read_until(&mut stream, "\r\n\r\n", PATIENCE).await;
    let (head, start) = seen.split_once("\r\n\r\n").expect("a header section");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    (stream, start.to_owned())
}

async fn open(port: u16, uri: &str) -> tokio::net::TcpStream {
    open_with_start(port, uri).await.0
}

#[tokio::test]
async fn the_stream_delivers_key_events_and_job_events() {
    let served = serve(app(), Default::default()).await;
    let mut stream = open(served.port, "/v1/watch").await;
    put(&served.app, "/v2/keys/config/a", "value=one").await;
    let text = read_until(&mut stream, "\n\n", PATIENCE).await;
    assert!(text.contains("event: key\n"), "{text}");
    assert!(text.contains(r#""action":"set""#) && text.contains(r#""value":"one""#), "{text}");
    let id = crate::support::store_index(&served.app);
    assert!(text.contains(&format!("id: {id}\n")), "{text}");
    submit(&served.app, "jobsq", json!({"payload": "hello"})).await;
    let text = read_until(&mut stream, "hello", PATIENCE).await;
    assert!(text.contains("event: job\ndata: {\"id\":1,\"queue\":\"jobsq\",\"state\":\"queued\""), "{text}");
}

#[tokio::test]
async fn a_prefix_filters_keys_and_jobs() {
    let served = serve(app(), Default::default()).await;
    let mut keys = open(served.port, "/v1/watch?prefix=/config").await;
    let mut jobs = open(served.port, "/v1/watch?prefix=jobs/wanted").await;
    put(&served.app, "/v2/keys/other", "value=skip").await;
    submit(&served.app, "unwanted", json!({"payload": "skip"})).await;
    put(&served.app, "/v2/keys/config/x", "value=take").await;
    submit(&served.app, "wanted", json!({"payload": "take"})).await;
    let text = read_until(&mut keys, "take", PATIENCE).await;
    assert!(!text.contains("skip") && !text.contains("event: job"), "{text}");
    let text = read_until(&mut jobs, "take", PATIENCE).await;
    assert!(!text.contains("skip") && !text.contains("event: key"), "{text}");
}

#[tokio::test]
async fn since_replays_key_history_and_a_cleared_index_is_400() {
    let app = app();
    put(&app, "/v2/keys/h", "value=1").await;
    let first = crate::support::store_index(&app);
    put(&app, "/v2/keys/h", "value=2").await;
    let served = serve(app, Default::default()).await;
    let (mut stream, start) = open_with_start(served.port, &format!("/v1/watch?prefix=/h&since={first}")).await;
    let text = if start.contains("\"value\":\"2\"") { start } else { start + &read_until(&mut stream, "\"value\":\"2\"", PATIENCE).await };
    assert!(text.find("\"value\":\"1\"") < text.find("\"value\":\"2\""), "{text}");
    for value in 0..1005 {
        put(&served.app, "/v2/keys/h", &format!("value={value}")).await;
    }
    assert_error(&get(&served.app, "/v1/watch?since=1").await, 400, "invalid", Some("since"));
}

/// An EventSource that reconnects sends the `id:` of the last event it got; the stream
/// resumes after it, whatever `since` the URL it reconnects to has (`since=0` too): the URL
/// is the one it was opened with.
#[tokio::test]
async fn a_reconnecting_event_source_resumes_after_its_last_event_id() {
    let app = app();
    put(&app, "/v2/keys/r", "value=seen").await;
    let seen = crate::support::store_index(&app);
    put(&app, "/v2/keys/r", "value=missed").await;
    let served = serve(app, Default::default()).await;
    for query in ["", "&since=0", "&since=1"] {
        let mut stream = connect(served.port).await;
        let request = format!("GET /v1/watch?prefix=/r{query} HTTP/1.1\r\nHost: rota\r\nLast-Event-ID: {seen}\r\n\r\n");
        write_all(&mut stream, &request).await;
        let text = read_until(&mut stream, "\"value\":\"missed\"", PATIENCE).await;
        assert!(!text.contains(&format!("id: {seen}\nevent: key")), "{query}: the event it had got came again: {text}");
        assert!(text.contains(&format!("id: {}\nevent: key\n", seen + 1)), "{query}: {text}");
    }
    let garbled = call(&served.app, "GET", "/v1/watch", None, &[("last-event-id", "abc")]).await;
    assert_error(&garbled, 400, "invalid", Some("Last-Event-ID"));
}

/// An index the store has not reached (another cluster's, or one from before the store was
/// restored from an older copy) is refused, rather than a stream that stays silent until
/// the store gets there; the next index, what a stream that saw everything resumes from,
/// is fine.
#[tokio::test]
async fn an_index_ahead_of_the_store_is_refused() {
    let app = app();
    put(&app, "/v2/keys/a", "value=1").await;
    let index = crate::support::store_index(&app);
    let ahead = call(&app, "GET", &format!("/v1/watch?prefix=/a&since={}", index + 2), None, &[]).await;
    assert_error(&ahead, 400, "invalid", Some("since"));
    assert!(ahead.body.contains(&format!("whose index is {index}")), "{}", ahead.body);
    let restored = call(&app, "GET", "/v1/watch?prefix=/a", None, &[("last-event-id", "500000")]).await;
    assert_error(&restored, 400, "invalid", Some("Last-Event-ID"));
    let served = serve(app, Default::default()).await;
    let (mut stream, _) = open_with_start(served.port, &format!("/v1/watch?prefix=/a&since={}", index + 1)).await;
    put(&served.app, "/v2/keys/a", "value=next").await;
    read_until(&mut stream, "\"value\":\"next\"", PATIENCE).await;
}

/// A stream with keys says how far it has looked (an `event: index` whose `id` an
/// EventSource records as its last event id) when it opens and as the store moves on,
/// so that a reconnect before any event under its prefix resumes without a gap, and a quiet
/// prefix in a busy store does not fall out of the history.
#[tokio::test]
async fn a_key_stream_sends_how_far_it_has_looked_before_any_event_and_as_the_store_moves() {
    let app = app();
    put(&app, "/v2/keys/busy/0", "value=0").await;
    let opened_at = crate::support::store_index(&app);
    let served = serve(app, Default::default()).await;
    let (mut stream, start) = open_with_start(served.port, "/v1/watch?prefix=/quiet").await;
    let text = if start.contains("\n\n") { start } else { start + &read_until(&mut stream, "\n\n", PATIENCE).await };
    assert!(
        text.contains(&format!("id: {opened_at}\nevent: index\ndata:\n\n")) && !text.contains("event: key"),
        "how far it has looked, first: {text}"
    );
    for n in 1..=150 {
        put(&served.app, &format!("/v2/keys/busy/{n}"), "value=1").await;
    }
    // 150 indexes past: an id at least 100 on, and no event.
    let mut later = String::new();
    let ids = |text: &str| -> Vec<u64> {
        text.lines().filter_map(|line| line.strip_prefix("id: ")?.parse().ok()).collect()
    };
    while !ids(&later).iter().any(|&id| id >= opened_at + 100) {
        later.push_str(&read_until(&mut stream, "\n\n", PATIENCE).await);
    }
    assert!(!later.contains("event: key"), "{later}");
}

#[tokio::test]
async fn a_closed_stream_gives_its_watcher_slot_back() {
    let served = serve(app(), Default::default()).await;
    let stream = open(served.port, "/v1/watch").await;
    assert_eq!(served.app.watcher_count(), 1);
    drop(stream);
    let app = served.app.clone();
    crate::support::eventually(PATIENCE, "the slot is back", move || app.watcher_count() == 0).await;
}

#[tokio::test]
async fn job_changes_made_by_time_alone_reach_the_stream() {
    use rota_server::backend::Backend;
    let served = serve(app(), Default::default()).await;
    put_json(&served.app, "/v1/queues/expiring", json!({"lease_ttl": "1s", "backoff": {"base": "1ms", "max": "1ms"}})).await;
    submit(&served.app, "expiring", json!({"payload": "tick-me"})).await;
    let leased = post(&served.app, "/v1/queues/expiring/lease", json!({"worker": "w"})).await;
    assert_eq!(leased.status, 200);
    let mut stream = open(served.port, "/v1/watch?prefix=jobs/expiring").await;
    // No request touches the job: only time passes and a Tick is applied.
    served.app.backend().advance_ms(5_000);
    served.app.backend().propose(rota_core::Command::Tick).await.expect("tick applies");
    let text = read_until(&mut stream, "lease expired", PATIENCE).await;
    assert!(text.contains("event: job\n"), "{text}");
    assert!(!text.contains("\"state\":\"leased\""), "the expiry is the change reported: {text}");
}

/// A job removed (its queue deleted with force, or its retention over) is a change too:
/// a stream keeping a job list says `job_removed` with its id, else the list kept showing
/// the job (an audit's dashboard showed force-deleted jobs as queued for ever).
#[tokio::test]
async fn removed_jobs_reach_the_stream_as_job_removed() {
    use rota_server::backend::Backend;
    let served = serve(app(), Default::default()).await;
    let mut stream = open(served.port, "/v1/watch?prefix=jobs/doomed").await;
    submit(&served.app, "doomed", json!({"jobs": [{"payload": "a"}, {"payload": "b"}]})).await;
    let text = read_until(&mut stream, "\"b\"", PATIENCE).await;
    assert!(text.contains("\"state\":\"queued\""), "{text}");
    let deleted = call(&served.app, "DELETE", "/v1/queues/doomed?force=true", None, &[]).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let text = read_until(&mut stream, "{\"id\":2}", PATIENCE).await;
    assert!(text.contains("event: job_removed\ndata: {\"id\":1}\n\n"), "{text}");
    assert!(text.contains("event: job_removed\ndata: {\"id\":2}\n\n"), "{text}");

    // Retention: a finished job is removed by a Tick once it is over.
    put_json(&served.app, "/v1/queues/brief", json!({"retention": "1s"})).await;
    let mut stream = open(served.port, "/v1/watch?prefix=jobs/brief").await;
    submit(&served.app, "brief", json!({"payload": "short-lived"})).await;
    let text = read_until(&mut stream, "short-lived", PATIENCE).await;
    let id = text.split("\"id\":").nth(1).and_then(|rest| rest.split(',').next()).expect("the job's id").to_owned();
    let cancelled = call(&served.app, "DELETE", &format!("/v1/jobs/{id}"), None, &[]).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    served.app.backend().advance_ms(5_000);
    served.app.backend().propose(rota_core::Command::Tick).await.expect("tick applies");
    let removed = format!("event: job_removed\ndata: {{\"id\":{id}}}\n\n");
    let text = read_until(&mut stream, &removed, PATIENCE).await;
    assert!(text.contains(&removed), "{text}");
}
