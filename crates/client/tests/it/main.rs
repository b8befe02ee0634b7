//! The client against a real rota HTTP server (on a fake backend, no Raft), on ports
//! 25200-25249.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use rota_client::{Client, Error, GetOptions, RmOptions, SetOptions, WatchOptions};
use rota_core::Config;
use rota_server::backend::fake::FakeBackend;
use rota_server::{App, ServerConfig};

static NEXT_PORT: AtomicU16 = AtomicU16::new(25200);

/// A served app and its URL; the server stops with the test's runtime.
async fn server() -> (Arc<App<FakeBackend>>, String) {
    server_with(ServerConfig::single("default")).await
}

async fn server_with(config: ServerConfig) -> (Arc<App<FakeBackend>>, String) {
    let app = App::new(FakeBackend::new(Config::default()), config);
    let (listener, port) = bind_free();
    tokio::spawn(rota_server::serve(
        Arc::clone(&app),
        vec![listener],
        std::future::pending(),
    ));
    (app, format!("http://127.0.0.1:{port}"))
}

/// A listener on the next free port of the range (each test runs in a process of its own,
/// all counting from the range's start, so a port may be taken by another test).
fn bind_free() -> (tokio::net::TcpListener, u16) {
    loop {
        let port = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 25249, "out of test ports");
        if let Ok(listener) = rota_server::bind(([127, 0, 0, 1], port).into()) {
            return (listener, port);
        }
    }
}

/// A port in the range with nothing listening.
fn dead_endpoint() -> String {
    "http://127.0.0.1:25249".to_string()
}

#[tokio::test]
async fn a_dead_endpoint_is_skipped_for_the_next_one() {
    let (_app, url) = server().await;
    let client = Client::new([dead_endpoint(), url]).expect("client");
    let set = client
        .kv_set("/a", "1", SetOptions::default())
        .await
        .expect("set");
    assert_eq!(set.action, "set");
    assert_eq!(set.node.value.as_deref(), Some("1"));
    assert!(set.etcd_index > 0);
    let got = client
        .kv_get("/a", GetOptions::default())
        .await
        .expect("get");
    assert_eq!(got.node.value.as_deref(), Some("1"));
}

#[tokio::test]
async fn no_reachable_endpoint_is_unavailable() {
    let client = Client::new([dead_endpoint()]).expect("client");
    let error = client
        .kv_get("/a", GetOptions::default())
        .await
        .expect_err("unreachable");
    assert!(matches!(error, Error::Unavailable { .. }), "{error}");
}

#[tokio::test]
async fn server_errors_come_back_typed() {
    let (_app, url) = server().await;
    let client = Client::new([url]).expect("client");
    let error = client
        .kv_get("/missing", GetOptions::default())
        .await
        .expect_err("missing");
    assert_eq!(error.code(), Some(100));
    assert!(
        error
            .to_string()
            .starts_with("100: Key not found (/missing) ["),
        "{error}"
    );
    client.kv_mk("/m", "1", None).await.expect("mk");
    assert_eq!(
        client
            .kv_mk("/m", "2", None)
            .await
            .expect_err("exists")
            .code(),
        Some(105)
    );
}

#[tokio::test]
async fn ls_rm_in_order_and_watch_work_end_to_end() {
    let (_app, url) = server().await;
    let client = Client::new([url]).expect("client");
    let first = client
        .kv_mk_in_order("/queue", "job1", None)
        .await
        .expect("post");
    client
        .kv_mk_in_order("/queue", "job2", None)
        .await
        .expect("post");
    let listing = client.kv_ls("/queue", false).await.expect("ls");
    let values: Vec<_> = listing
        .node
        .nodes
        .iter()
        .filter_map(|node| node.value.clone())
        .collect();
    assert_eq!(values, ["job1", "job2"], "sorted listing is FIFO");
    let removed = client
        .kv_rm(
            first.node.key.as_deref().expect("key"),
            RmOptions::default(),
        )
        .await
        .expect("rm");
    assert_eq!(removed.action, "delete");
    assert_eq!(
        removed.prev_node.and_then(|node| node.value).as_deref(),
        Some("job1")
    );
    let from_history = client
        .kv_watch(
            "/queue",
            WatchOptions {
                recursive: true,
                wait_index: Some(first.node.modified_index),
            },
        )
        .await;
    assert_eq!(
        from_history.expect("watch").node.value.as_deref(),
        Some("job1")
    );
}

#[tokio::test]
async fn keys_with_special_characters_round_trip() {
    let (_app, url) = server().await;
    let client = Client::new([url]).expect("client");
    let key = "/sp ace/a+b&c%d?e";
    client
        .kv_set(key, "v & w=x", SetOptions::default())
        .await
        .expect("set");
    let got = client
        .kv_get(key, GetOptions::default())
        .await
        .expect("get");
    assert_eq!(got.node.key.as_deref(), Some(key));
    assert_eq!(got.node.value.as_deref(), Some("v & w=x"));
}

/// A proxy that forwards each connection to `upstream`, but for the first one swallows the
/// server's answer and closes: the write is applied, the client never hears of it.
async fn answer_losing_proxy(upstream: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (listener, port) = bind_free();
    let upstream = upstream.trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let lose_answer = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                if lose_answer {
                    let mut request = vec![0u8; 64 * 1024];
                    let Ok(read) = client.read(&mut request).await else {
                        return;
                    };
                    let _ = server.write_all(&request[..read]).await;
                    let mut answer = [0u8; 4096];
                    let _ = server.read(&mut answer).await; // applied; the answer is dropped
                    return; // both sockets close: the client sees a broken connection
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// A member that answers a watch's head and then goes away (as a stopping member cuts its
/// watches off: the body never ends).
async fn head_then_gone_endpoint() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (listener, port) = bind_free();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut request = vec![0u8; 16 * 1024];
            let _ = client.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Etcd-Index: 9\r\n\
                        Transfer-Encoding: chunked\r\n\r\n";
            let _ = client.write_all(head.as_bytes()).await;
            // Dropped: the connection closes without the body's last chunk.
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn a_watch_cut_off_by_its_member_goes_on_at_the_next_endpoint() {
    let (_app, url) = server().await;
    let first = Client::new([url.clone()]).expect("client");
    first.kv_set("/w", "1", SetOptions::default()).await.expect("set");
    let client = Client::new([head_then_gone_endpoint().await, url]).expect("client");
    let event = client
        .kv_watch("/w", WatchOptions { recursive: false, wait_index: Some(1) })
        .await
        .expect("the watch is answered by the next endpoint");
    assert_eq!(event.action, "set");
    assert_eq!(event.node.value.as_deref(), Some("1"));
}

#[tokio::test]
async fn a_mutation_retried_after_a_lost_answer_applies_once() {
    use rota_server::Backend as _;
    let (app, url) = server().await;
    let proxy = answer_losing_proxy(url).await;
    let client = Client::new([proxy]).expect("client");
    let created = client
        .kv_mk_in_order("/queue", "job", None)
        .await
        .expect("post after retry");
    assert!(
        created.replayed,
        "the retry was answered from the idempotency record"
    );
    let applied_index = app.backend().read(|state| state.v2.index());
    assert_eq!(
        created.node.modified_index, applied_index,
        "one in-order key, not two"
    );
    let listing = client.kv_ls("/queue", false).await.expect("ls");
    assert_eq!(listing.node.nodes.len(), 1);
}

/// A client of a server that takes 2 requests a second from it; the server's app kept.
async fn rate_limited_client() -> (Arc<App<FakeBackend>>, Client) {
    let (app, url) = server_with(ServerConfig {
        client_rate_limit: 2,
        ..ServerConfig::single("default")
    })
    .await;
    (app, Client::new([url.as_str()]).expect("client"))
}

/// Five calls at 2 a second: two pass at once, the others each wait for a refill (1 s per
/// Retry-After), so together they take about a second.
fn assert_rate_held(started: std::time::Instant, what: &str) {
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "five {what} at 2 per second passed in {:?}: the limit did not hold",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_v1_call_over_the_client_rate_waits_its_retry_after_and_goes_through() {
    let (_app, client) = rate_limited_client().await;
    let started = std::time::Instant::now();
    for n in 0..5 {
        client
            .list_queues()
            .await
            .unwrap_or_else(|error| panic!("call {n}: {error}"));
    }
    assert_rate_held(started, "calls");
}

/// The keys API too: a 429 is waited out (its `Retry-After`), not reported (`rota kv`
/// failed at once with "429: Too many requests").
#[tokio::test]
async fn a_keys_call_over_the_client_rate_waits_its_retry_after_and_goes_through() {
    let (_app, client) = rate_limited_client().await;
    let started = std::time::Instant::now();
    for n in 0..5 {
        client
            .kv_set(&format!("/rated/{n}"), "1", SetOptions::default())
            .await
            .unwrap_or_else(|error| panic!("set {n}: {error}"));
    }
    assert_rate_held(started, "sets");
    let listing = client.kv_ls("/rated", false).await.expect("ls");
    assert_eq!(listing.node.nodes.len(), 5, "each set once");
}

#[tokio::test]
async fn payloads_and_results_travel_as_the_text_given() {
    use rota_client::jobs::{LeaseNext, LeaseRequest, NewJob, RawJson};
    let (_app, url) = server().await;
    let client = Client::new([url]).expect("client");
    let text = |json: &str| RawJson::from_text(json).expect("json");
    let payloads = [
        text(r#"{"z":1,"a":123456789012345678901234567890,"f":1.0}"#),
        text(r#"[-0,1E2,"caf\u00e9"]"#),
    ];
    let mut ids = Vec::new();
    for payload in &payloads {
        let submitted = client
            .submit("raw", &NewJob::new(payload.clone()), None)
            .await
            .expect("submit");
        assert_eq!(&submitted.job.payload, payload);
        ids.push(submitted.job.id);
    }
    let request = LeaseRequest {
        worker: "w".into(),
        max: 1,
        wait: std::time::Duration::ZERO,
        lease_ttl: None,
    };
    let leased = client.lease("raw", &request).await.expect("lease").jobs;
    assert_eq!(leased[0].payload, payloads[0]);

    // A complete that leases the next job: its payload comes back as text too.
    let result = text(r#"{"y":[1.50],"b":123456789012345678901234567891}"#);
    let next = LeaseNext {
        worker: "w".into(),
        max: 1,
        lease_ttl: None,
    };
    let token = leased[0].lease_token.expect("token");
    let completed = client
        .complete_next_keyed(
            &rota_client::idempotency_key(),
            ids[0],
            token,
            &result,
            &next,
        )
        .await
        .expect("complete");
    assert_eq!(completed.job.result, result);
    assert_eq!(completed.leased.jobs[0].payload, payloads[1]);
    let second = &completed.leased.jobs[0];
    let done = client
        .complete(second.id, second.lease_token.expect("token"), &payloads[1])
        .await
        .expect("complete");
    assert_eq!(done.result, payloads[1]);
    assert_eq!(client.get_job(ids[0]).await.expect("get").result, result);
}

/// A member that takes connections and reads requests but never answers (a stopped
/// process: the kernel still accepts for it).
fn silent_endpoint() -> String {
    use tokio::io::AsyncReadExt;
    let (listener, port) = bind_free();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut client, _)) = listener.accept().await {
            let mut request = vec![0u8; 16 * 1024];
            let _ = client.read(&mut request).await;
            held.push(client);
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// The first endpoint is frozen: requests go on to the next after the attempt timeout (5
/// s), not after 30 s (longer than a job's lease: heartbeats and outcomes of a worker whose
/// first endpoint froze came too late; found by the rate-limited-API audit). A mutation
/// carries its idempotency key there, and is applied once.
#[tokio::test]
async fn a_frozen_endpoint_is_given_up_for_the_next_after_the_attempt_timeout() {
    use rota_client::jobs::NewJob;
    use rota_server::Backend as _;
    let (app, url) = server().await;
    let silent = silent_endpoint();
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let observer = {
        let told = told.clone();
        move |event: rota_client::Reachability<'_>| {
            if let rota_client::Reachability::Switched { from, error, to } = event {
                told.lock().unwrap().push(format!("{from} {error} {to}"));
            }
        }
    };
    let client = Client::new([silent.clone(), url.clone()]).expect("client").on_reachability(observer);
    let started = std::time::Instant::now();
    let submitted = client.submit("frozen", &NewJob::new(rota_client::jobs::RawJson::from_text("1").expect("json")), None).await.expect("submit");
    client.kv_set("/after-frozen", "1", SetOptions::default()).await.expect("set");
    let elapsed = started.elapsed();
    assert!(elapsed >= rota_client::REQUEST_TIMEOUT, "the first endpoint was tried first: {elapsed:?}");
    // Two calls: each waited out the frozen endpoint once at most (the client prefers the
    // endpoint that answered last), far below the 30 s each used to take.
    assert!(elapsed < 4 * rota_client::REQUEST_TIMEOUT, "{elapsed:?}");
    let jobs = app.backend().read(|state| state.jobs.job_count());
    assert_eq!((submitted.job.id, jobs), (1, 1), "applied once");
    assert_eq!(*told.lock().unwrap(), [format!("{silent} timed out {url}")], "the switch is told, once");
}
