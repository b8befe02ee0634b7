//! `/version`, `/health`, `/v2/members`, `/v2/machines`, `/v2/stats/*`, `/metrics`.

use crate::support::*;

#[tokio::test]
async fn version_is_exactly_etcds_and_rotas_version_is_in_metrics() {
    let reply = get(&app(), "/version").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["etcdserver"], "3.4.23");
    assert_eq!(body["etcdcluster"], "3.4.0");
    assert_eq!(
        reply.body,
        r#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#
    );
    let metrics = get(&app(), "/metrics").await;
    assert!(
        metrics.body.contains(&format!(
            "rota_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        metrics.body
    );
}

#[tokio::test]
async fn health_is_text_plain_json() {
    let reply = get(&app(), "/health").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, r#"{"health":"true"}"#);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
}

#[tokio::test]
async fn members_list_this_node_with_its_urls() {
    let app = app();
    let reply = get(&app, "/v2/members").await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("x-etcd-cluster-id").is_some());
    let members = reply.json()["members"]
        .as_array()
        .cloned()
        .expect("members");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["name"], "default");
    assert_eq!(members[0]["clientURLs"][0], "http://127.0.0.1:2379");
    assert_eq!(members[0]["peerURLs"][0], "http://127.0.0.1:2380");
    let leader = get(&app, "/v2/members/leader").await;
    assert_eq!(leader.json()["id"], members[0]["id"]);
}

#[tokio::test]
async fn machines_are_the_client_urls_in_text() {
    let reply = get(&app(), "/v2/machines").await;
    assert_eq!(reply.body, "http://127.0.0.1:2379");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
}

#[tokio::test]
async fn stats_have_etcds_fields() {
    let app = app();
    let own = get(&app, "/v2/stats/self").await.json();
    assert_eq!(own["state"], "StateLeader");
    assert_eq!(own["leaderInfo"]["leader"], own["id"]);
    let leader = get(&app, "/v2/stats/leader").await.json();
    assert_eq!(leader["leader"], own["id"]);
    assert_eq!(leader["followers"], serde_json::json!({}));
    put(&app, "/v2/keys/a", "value=1").await;
    get(&app, "/v2/keys/a").await;
    get(&app, "/v2/keys/missing").await;
    let store = get(&app, "/v2/stats/store").await.json();
    assert_eq!(store["setsSuccess"], 1);
    assert_eq!(store["getsSuccess"], 1);
    assert_eq!(store["getsFail"], 1);
    assert_eq!(store["watchers"], 0);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = app();
    get(&app, "/v2/keys/missing").await;
    let reply = get(&app, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .body
            .contains(r#"rota_http_requests_total{route="/v2/keys",method="GET",status="404"} 1"#),
        "{}",
        reply.body
    );
    assert!(
        reply
            .body
            .contains("rota_http_request_duration_seconds_bucket"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("rota_etcd_index 0"), "{}", reply.body);
}

#[tokio::test]
async fn metrics_are_prometheus_text_unless_the_scraper_asks_for_openmetrics() {
    let app = app();
    get(&app, "/v2/keys/missing").await;
    let text = get(&app, "/metrics").await;
    assert_eq!(text.status, 200);
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // In the text format a counter's metadata names its sample.
    assert!(
        text.body
            .contains("# TYPE rota_http_requests_total counter\n"),
        "{}",
        text.body
    );
    assert!(!text.body.contains("# EOF"), "{}", text.body);
    // The process's own numbers, as every Prometheus client library names them.
    for line in ["# TYPE process_cpu_seconds_total counter\n", "\nprocess_resident_memory_bytes ", "\nprocess_open_fds "] {
        assert!(text.body.contains(line), "{line:?} in {}", text.body);
    }

    // What Prometheus sends: OpenMetrics first.
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let request = axum::http::Request::builder()
        .uri("/metrics")
        .header("accept", accept)
        .body(axum::body::Body::empty())
        .expect("request");
    let openmetrics = send_request(&app, request).await;
    assert_eq!(
        openmetrics.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(
        openmetrics
            .body
            .contains("# TYPE rota_http_requests counter\n"),
        "{}",
        openmetrics.body
    );
    assert!(openmetrics.body.ends_with("# EOF\n"), "{}", openmetrics.body);
}

#[tokio::test]
async fn metrics_count_each_queues_jobs_by_state() {
    let app = app();
    crate::v1_support::submit(&app, "api", serde_json::json!({"payload": 1})).await;
    crate::v1_support::submit(&app, "api", serde_json::json!({"payload": 2})).await;
    let leased = crate::v1_support::lease(&app, "api", 1).await;
    let metrics = get(&app, "/metrics").await.body;
    for line in [
        r#"rota_queue_jobs{queue="api",state="queued"} 1"#,
        r#"rota_queue_jobs{queue="api",state="leased"} 1"#,
        r#"rota_queue_jobs{queue="api",state="dead"} 0"#,
        r#"rota_queue_leases_held{queue="api"} 1"#,
        r#"rota_queue_paused{queue="api"} 0"#,
        r#"route="/v1/queues/{q}/lease""#,
        r#"rota_queue_job_events_total{queue="api",event="submitted"} 2"#,
        r#"rota_queue_job_events_total{queue="api",event="leased"} 1"#,
        r#"rota_queue_job_events_total{queue="api",event="succeeded"} 0"#,
        r#"rota_queue_job_events_total{queue="api",event="lease_expired"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // No rate, no tokens; a paused queue with a rate shows both.
    assert!(!metrics.contains(r#"rota_queue_rate_tokens{queue="api"}"#), "{metrics}");
    let put = crate::v1_support::call(&app, "PUT", "/v1/queues/slow", Some(r#"{"paused": true, "rate": {"limit": 3, "per": "1m"}}"#), &[]).await;
    assert_eq!(put.status, 200, "{}", put.body);
    let metrics = get(&app, "/metrics").await.body;
    for line in [r#"rota_queue_paused{queue="slow"} 1"#, r#"rota_queue_rate_tokens{queue="slow"} 3"#] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // A deleted queue's series go with it (a queue with a leased job cannot be deleted).
    let (id, token) = (&leased[0]["id"], &leased[0]["lease_token"]);
    let body = format!(r#"{{"lease_token": {token}}}"#);
    let released = crate::v1_support::call(&app, "POST", &format!("/v1/jobs/{id}/release"), Some(&body), &[]).await;
    assert_eq!(released.status, 200, "{}", released.body);
    let metrics = get(&app, "/metrics").await.body;
    assert!(metrics.contains(r#"rota_queue_job_events_total{queue="api",event="released"} 1"#), "{metrics}");
    let deleted = crate::v1_support::call(&app, "DELETE", "/v1/queues/api?force=true", None, &[]).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let metrics = get(&app, "/metrics").await.body;
    assert!(!metrics.contains(r#"rota_queue_jobs{queue="api""#), "{metrics}");
    assert!(!metrics.contains(r#"rota_queue_leases_held{queue="api"}"#), "{metrics}");
    // Each job call is counted under its own route.
    assert!(metrics.contains(r#"route="/v1/jobs/{id}/release""#), "{metrics}");
}

#[tokio::test]
async fn metrics_count_the_keys_their_ttl_expired() {
    let app = app();
    assert_eq!(put(&app, "/v2/keys/a?ttl=1", "value=1").await.status, 201);
    assert_eq!(put(&app, "/v2/keys/d?dir=true&ttl=2", "").await.status, 201);
    assert_eq!(put(&app, "/v2/keys/d/b", "value=2").await.status, 201);
    let metrics = get(&app, "/metrics").await.body;
    assert!(metrics.contains("rota_v2_store_expires_total 0\n"), "{metrics}");
    app.backend().advance_ms(1_000);
    app.backend().tick();
    let metrics = get(&app, "/metrics").await.body;
    assert!(metrics.contains("rota_v2_store_expires_total 1\n"), "{metrics}");
    // A directory's expiry is one, whatever it holds (etcd's expireCount counts so).
    app.backend().advance_ms(1_000);
    app.backend().tick();
    let metrics = get(&app, "/metrics").await.body;
    assert!(metrics.contains("rota_v2_store_expires_total 2\n"), "{metrics}");
}

#[tokio::test]
async fn metrics_show_the_idempotency_table_and_what_it_dropped_when_full() {
    let config = rota_core::Config { idempotency_records_max: 3, ..rota_core::Config::default() };
    let app = rota_server::App::new(
        rota_server::backend::fake::FakeBackend::new(config),
        rota_server::ServerConfig::single("default"),
    );
    for n in 0..5 {
        let key = format!("k{n}");
        let reply = crate::v1_support::call(&app, "POST", "/v1/counters/c", Some(r#"{"by": 1}"#), &[("Idempotency-Key", &key)]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let metrics = get(&app, "/metrics").await.body;
    for line in ["rota_idempotency_records 3", "rota_idempotency_evicted_total 2"] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(metrics.contains("rota_idempotency_bytes "), "{metrics}");
    // The counter increments' 24 h records were dropped with (nearly) all of it left.
    let remaining: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("rota_idempotency_evicted_remaining_seconds ")?.parse().ok())
        .unwrap_or_else(|| panic!("no rota_idempotency_evicted_remaining_seconds in {metrics}"));
    assert!(remaining > 23 * 3600 && remaining <= 24 * 3600, "{remaining}");
}
