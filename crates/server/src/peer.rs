//! The peer listener (`--listen-peer-urls`): Raft and cluster RPCs between members.
//!
//! It only moves bytes: `POST /rota/peer/v1/<rpc>` with the cluster token and sender id
//! headers goes to [`rota_raft::Node::handle_peer`], whose bytes go back as the body. The
//! protocol (paths, headers, encodings, who may call what) is the consensus crate's; this
//! module owns the sockets, the bounds (connections, body size, header timeout) and the
//! mapping of refusals to HTTP statuses. Client requests are not served here, as in etcd.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{HeaderValue, CONTENT_TYPE};
use axum::http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use rota_raft::peer::{
    PeerRpc, PEER_CLUSTER_ID_HEADER, PEER_FROM_HEADER, PEER_PATH_PREFIX, PEER_TOKEN_HEADER, PEER_TO_HEADER,
};
use rota_raft::Node;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::limits;

/// Serves peer RPCs for `node` on `listeners` until `shutdown` resolves.
pub async fn serve_peers(
    node: Node,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(limits::PEER_CONNECTIONS_MAX));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits::HEADER_READ_TIMEOUT)
        .max_header_size(limits::PEER_HEADER_SECTION_BYTES_MAX)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let (stop, _) = tokio::sync::watch::channel(false);
    let mut accept_loops = tokio::task::JoinSet::new();
    for listener in listeners {
        accept_loops.spawn(accept_loop(
            node.clone(),
            listener,
            Arc::clone(&connections),
            Arc::clone(&builder),
            stop.subscribe(),
        ));
    }
    shutdown.await;
    accept_loops.abort_all();
    // Close kept-alive connections too: peers must notice at once that this member is gone
    // (and reach its successor on the same port, after a restart) rather than keep
    // talking to a stopped node over a pooled connection.
    stop.send_replace(true);
    let all = u32::try_from(limits::PEER_CONNECTIONS_MAX).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(limits::SHUTDOWN_GRACE, connections.acquire_many(all)).await;
}

async fn accept_loop(
    node: Node,
    listener: TcpListener,
    connections: Arc<Semaphore>,
    builder: Arc<http1::Builder>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let Ok(permit) = Arc::clone(&connections).acquire_owned().await else {
            return;
        };
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Served on the Raft runtime (see `Node::peer_runtime`); a socket belongs to the
        // runtime it is registered with, so it moves over as a std socket.
        let (stream, runtime) = match (node.peer_runtime(), stream.into_std()) {
            (Some(runtime), Ok(stream)) => (stream, runtime),
            (None, _) => return,
            (_, Err(error)) => {
                tracing::warn!(%error, "peer connection dropped: cannot hand it to the Raft runtime");
                continue;
            }
        };
        let node = node.clone();
        let builder = Arc::clone(&builder);
        let mut stop = stop.clone();
        runtime.spawn(async move {
            let _permit = permit;
            let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                return;
            };
            // Whether a request came: a member sends one as soon as it has connected.
            let used = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let service_used = Arc::clone(&used);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                service_used.store(true, std::sync::atomic::Ordering::Relaxed);
                let node = node.clone();
                async move { Ok::<_, Infallible>(handle(&node, request.map(Body::new)).await) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let first_request = tokio::time::sleep(limits::PEER_FIRST_REQUEST_TIMEOUT);
            tokio::pin!(first_request);
            let mut waiting_for_first = true;
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                        break;
                    }
                    // Connections that never carry a request (256 of them held every
                    // member's forwarded writes off the leader for the header read time).
                    () = &mut first_request, if waiting_for_first => {
                        if !used.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        waiting_for_first = false;
                    }
                }
            }
        });
    }
}

/// The answer to a request for anything but a peer RPC on the peer port.
const NOT_THE_CLIENT_URL: &str = "this is a rota member's peer URL (--listen-peer-urls: the members' own Raft traffic); \
     clients use its client URL (--advertise-client-urls, port 2379 by default)";

/// Answers one peer request.
pub async fn handle(node: &Node, request: Request<Body>) -> Response<Body> {
    // A client pointed at the peer port (2380 for 2379) is told where it is.
    if !request.uri().path().starts_with(PEER_PATH_PREFIX) {
        return text(404, NOT_THE_CLIENT_URL);
    }
    if request.method() != Method::POST {
        return text(405, "peer RPCs are POST");
    }
    let Some(rpc) = request
        .uri()
        .path()
        .strip_prefix(PEER_PATH_PREFIX)
        .and_then(PeerRpc::from_name)
    else {
        return text(404, "no such peer RPC");
    };
    let token = header_text(&request, PEER_TOKEN_HEADER);
    let Ok(from) = u64::from_str_radix(&header_text(&request, PEER_FROM_HEADER), 16) else {
        return text(400, "missing or malformed sender id header");
    };
    let to = match header_text(&request, PEER_TO_HEADER).as_str() {
        "" => 0,
        hex => match u64::from_str_radix(hex, 16) {
            Ok(to) => to,
            Err(_) => return text(400, "malformed target id header"),
        },
    };
    let cluster_id = match header_text(&request, PEER_CLUSTER_ID_HEADER).as_str() {
        "" => 0,
        hex => match u64::from_str_radix(hex, 16) {
            Ok(cluster_id) => cluster_id,
            Err(_) => return text(400, "malformed cluster id header"),
        },
    };
    let body = match axum::body::to_bytes(request.into_body(), limits::PEER_BODY_BYTES_MAX).await {
        Ok(body) => body,
        Err(_) => return text(413, "peer request body too large or unreadable"),
    };
    match node.handle_peer(rpc, &token, from, to, cluster_id, &body).await {
        Ok(reply) => {
            let mut response = Response::new(Body::from(reply));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        Err(error) => text(error.http_status(), &error.to_string()),
    }
}

fn header_text(request: &Request<Body>, name: &str) -> String {
    request
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn text(status: u16, message: &str) -> Response<Body> {
    let mut response = crate::respond::with_status(status, message.to_string());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
