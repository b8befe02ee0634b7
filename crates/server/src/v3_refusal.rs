//! etcd v3 clients, told in their own protocol that rota speaks etcd's v2 API.
//!
//! etcd serves its v3 gRPC API on the client port beside v2, and etcd 3.4's `etcdctl`
//! speaks v3 unless `ETCDCTL_API=2`. Against an HTTP/1-only server such a client sends the
//! HTTP/2 preface, gets nothing it can read, and retries until its deadline: `etcdctl put`
//! printed "context deadline exceeded" after 5 s, with no word of why. So a connection
//! that opens with the HTTP/2 preface is served by hyper's HTTP/2 server with one answer for
//! every request: a gRPC call gets status `UNIMPLEMENTED` with a message naming the fix
//! (etcdctl prints it at once), anything else 505. Nothing else is served over HTTP/2.
//! The v3 JSON gateway's paths (`/v3/...` over HTTP/1) get the same message as a 501.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

/// What an etcd v3 client is told.
pub const MESSAGE: &str = "rota implements etcd's v2 API (/v2/keys) and its own /v1, not etcd's v3 API: \
     use ETCDCTL_API=2 etcdctl, or an etcd v2 client library";

/// The HTTP/2 connection preface's first line, as a client sends it before anything else.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Streams one HTTP/2 connection may have open at once (a client retrying its call needs
/// few).
const STREAMS_MAX: u32 = 8;

/// What a new connection opens with.
#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    Http2,
    /// Anything else, for the HTTP/1 server (which answers what is not HTTP/1 as it should).
    Other,
    /// Closed, or an error, before a byte was seen.
    Nothing,
}

/// Looks at a new connection's first bytes without consuming them. Waits for the first
/// bytes, and for more only while what came so far is the start of the preface (a client
/// sends it in one write; a partial one is rare).
pub async fn sniff(stream: &TcpStream) -> Opening {
    let mut first = [0u8; PREFACE.len()];
    loop {
        let seen = match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return Opening::Nothing,
            Ok(seen) => seen,
        };
        if first[..seen] != PREFACE[..seen] {
            return Opening::Other;
        }
        if seen == PREFACE.len() {
            return Opening::Http2;
        }
        // The caller bounds the wait (the header read timeout).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serves one HTTP/2 connection until the client closes it or `stop` turns true.
pub async fn serve_http2(stream: TcpStream, mut stop: tokio::sync::watch::Receiver<bool>) {
    let service = hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
        Ok::<_, Infallible>(answer(&request))
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new()).max_concurrent_streams(STREAMS_MAX);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// The answer to any request that came over HTTP/2.
fn answer<B>(request: &Request<B>) -> Response<Body> {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"));
    if !grpc {
        let mut response = Response::new(Body::from(format!(
            "rota serves HTTP/1.1 only. {MESSAGE}\n"
        )));
        *response.status_mut() = StatusCode::HTTP_VERSION_NOT_SUPPORTED;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        return response;
    }
    // gRPC's "trailers-only" answer: the status in the only HEADERS frame, no body.
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static("12")); // UNIMPLEMENTED
    let message = percent_encoding::utf8_percent_encode(MESSAGE, GRPC_MESSAGE).to_string();
    if let Ok(value) = HeaderValue::from_str(&message) {
        headers.insert("grpc-message", value);
    }
    response
}

/// gRPC's `grpc-message` encoding: printable ASCII but `%` as is, the rest percent-encoded.
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// The answer to a request for the v3 JSON gateway (`/v3/...`, `/v3beta/...`,
/// `/v3alpha/...`) over HTTP/1: the gateway's error shape, with the same message.
pub fn gateway_answer() -> Response<Body> {
    let body = serde_json::json!({ "error": MESSAGE, "code": 12, "message": MESSAGE });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::NOT_IMPLEMENTED;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Whether `path` (decoded) is one of the v3 JSON gateway's.
pub fn is_gateway_path(path: &str) -> bool {
    ["/v3/", "/v3beta/", "/v3alpha/"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_call_is_answered_unimplemented_with_the_message_in_its_trailers() {
        let request = Request::builder()
            .uri("/etcdserverpb.KV/Put")
            .header(header::CONTENT_TYPE, "application/grpc")
            .body(())
            .unwrap();
        let response = answer(&request);
        assert_eq!(response.status(), StatusCode::OK, "gRPC carries its status in grpc-status");
        assert_eq!(response.headers()["grpc-status"], "12");
        let message = response.headers()["grpc-message"].to_str().unwrap();
        assert!(message.contains("ETCDCTL_API=2"), "{message}");
    }

    #[test]
    fn another_http2_request_is_505() {
        let request = Request::builder().uri("/v2/keys/").body(()).unwrap();
        assert_eq!(answer(&request).status(), StatusCode::HTTP_VERSION_NOT_SUPPORTED);
    }

    #[test]
    fn the_gateway_paths_are_recognised() {
        assert!(is_gateway_path("/v3/kv/put"));
        assert!(is_gateway_path("/v3beta/kv/range"));
        assert!(!is_gateway_path("/v2/keys/v3/"));
        assert!(!is_gateway_path("/v3"));
    }
}
