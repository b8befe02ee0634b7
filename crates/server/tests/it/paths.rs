//! Paths as Go's mux treats them: decoding, cleaning redirects, 404s and 405s.

use crate::support::*;

#[tokio::test]
async fn unclean_paths_redirect_to_the_cleaned_path_with_the_query() {
    let app = app();
    for (uri, location) in [
        ("/v2/keys//", "/v2/keys/"),
        ("/v2/keys/a//b/", "/v2/keys/a/b/"),
        ("/v2/keys/a/./b", "/v2/keys/a/b"),
        ("/v2/keys/a/../b", "/v2/keys/b"),
        ("/v2/keys/a//b?x=1&y=%20", "/v2/keys/a/b?x=1&y=%20"),
        ("/v2/keys/a%20b//c", "/v2/keys/a%20b/c"),
        ("/v2//keys/a", "/v2/keys/a"),
    ] {
        let reply = get(&app, uri).await;
        assert_eq!(reply.status, 301, "{uri}");
        assert_eq!(reply.header("location"), Some(location), "{uri}");
        assert_eq!(
            reply.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(
            reply.body.starts_with("<a href=\""),
            "{uri}: {}",
            reply.body
        );
    }
    let put = put(&app, "/v2/keys/a//b", "value=1").await;
    assert_eq!(put.status, 301);
    assert_eq!(put.body, "", "Go sends no body for a non-GET redirect");
    assert_eq!(store_index(&app), 0, "a redirected PUT writes nothing");
}

#[tokio::test]
async fn an_undecodable_path_is_a_plain_400() {
    let reply = get(&app(), "/v2/keys/a%zz").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body, "400 Bad Request");
    assert_eq!(reply.header("connection"), Some("close"));
}

#[tokio::test]
async fn unknown_paths_are_go_404s() {
    let app = app();
    for uri in [
        "/v2",
        "/v2/foo",
        "/v2/leader",
        "/nope",
        "/version/",
        "/v2/keysfoo",
    ] {
        let reply = get(&app, uri).await;
        assert_eq!(reply.status, 404, "{uri}");
        assert_eq!(reply.body, "404 page not found\n", "{uri}");
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    }
}

#[tokio::test]
async fn other_methods_on_keys_are_405_with_allow() {
    let reply = send(&app(), "PATCH", "/v2/keys/x", None).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("HEAD,GET,PUT,POST,DELETE"));
    assert_eq!(reply.body, "Method Not Allowed\n");
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn options_answers_cors_headers_only() {
    let reply = send(&app(), "OPTIONS", "/v2/keys/x", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "");
    assert_eq!(
        reply.header("access-control-allow-methods"),
        Some("POST, GET, OPTIONS, PUT, DELETE")
    );
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("accept, content-type, authorization")
    );
}

#[tokio::test]
async fn keys_are_percent_decoded_and_lose_their_trailing_slash() {
    let app = app();
    assert_eq!(put(&app, "/v2/keys/sp%20ace/", "value=1").await.status, 201);
    let reply = get(&app, "/v2/keys/sp%20ace").await;
    assert_eq!(reply.json()["node"]["key"], "/sp ace");
    let plus = put(&app, "/v2/keys/a+b", "value=1").await;
    assert_eq!(
        plus.json()["node"]["key"],
        "/a+b",
        "a + in the path is not a space"
    );
}

#[tokio::test]
async fn options_asterisk_is_answered_by_the_server_without_cors() {
    let reply = send(&app(), "OPTIONS", "*", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "");
    assert!(reply.header("access-control-allow-origin").is_none());
}

/// rota's own API gets none of etcd's CORS headers, so a browser keeps other sites' pages
/// from reading it or sending it JSON; a write a page sends anyway (a form's POST) with an
/// `Origin` other than the `Host` is refused and changes nothing. curl and the rota clients
/// send no `Origin`; the dashboard sends its own.
#[tokio::test]
async fn v1_has_no_cors_and_refuses_writes_from_pages_of_other_origins() {
    let app = app();
    let preflight = send(&app, "OPTIONS", "/v1/queues/q/jobs", None).await;
    assert!(preflight.header("access-control-allow-origin").is_none(), "{:?}", preflight.headers);
    assert!(preflight.header("access-control-allow-methods").is_none());
    // Nor do the dashboard's files.
    for path in ["/ui", "/ui/"] {
        let page = send(&app, "GET", path, None).await;
        assert!(page.header("access-control-allow-origin").is_none(), "{path}: {:?}", page.headers);
    }
    let submit = |origin: Option<&'static str>| {
        let app = app.clone();
        async move {
            let mut headers = vec![("Host", "127.0.0.1:2379")];
            if let Some(origin) = origin {
                headers.push(("Origin", origin));
            }
            crate::v1_support::call(&app, "POST", "/v1/queues/q/jobs", Some(r#"{"payload": 1}"#), &headers).await
        }
    };
    for origin in ["http://evil.example", "null", "http://127.0.0.1:8080"] {
        let refused = submit(Some(origin)).await;
        assert_eq!(refused.status, 403, "{origin}: {}", refused.body);
        assert_eq!(refused.json()["error"]["code"], "cross_origin", "{}", refused.body);
        assert_eq!(refused.json()["error"]["field"], "Origin", "{}", refused.body);
        assert!(refused.header("access-control-allow-origin").is_none());
    }
    let queue = crate::v1_support::call(&app, "GET", "/v1/queues/q", None, &[("Origin", "http://evil.example")]).await;
    assert_eq!(queue.status, 404, "nothing was submitted: {}", queue.body);
    assert!(queue.header("access-control-allow-origin").is_none());
    // The same origin (the dashboard) and no origin (curl, clients) are served; a default
    // port written on one side only names the same server.
    assert_eq!(submit(Some("http://127.0.0.1:2379")).await.status, 202);
    let same = |origin: &'static str, host: &'static str| {
        let app = app.clone();
        async move {
            let headers = [("Host", host), ("Origin", origin)];
            crate::v1_support::call(&app, "POST", "/v1/queues/q/jobs", Some(r#"{"payload": 1}"#), &headers).await.status
        }
    };
    assert_eq!(same("http://localhost", "localhost:80").await, 202);
    assert_eq!(same("https://rota.example", "rota.example:443").await, 202);
    assert_eq!(same("http://[::1]:2379", "[::1]:2379").await, 202);
    assert_eq!(same("http://LOCALHOST:2379/", "localhost:2379").await, 202);
    assert_eq!(same("https://localhost", "localhost:80").await, 403);
    assert_eq!(submit(None).await.status, 202);
    // etcd's API keeps etcd's CORS.
    let key = send(&app, "GET", "/v2/keys/", None).await;
    assert_eq!(key.header("access-control-allow-origin"), Some("*"));
}
