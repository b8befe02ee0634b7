//! Sockets and connections: binding with `SO_REUSEADDR` (so a restart right after a SIGKILL
//! rebinds at once), the accept loop with its connection bound, hyper's HTTP/1 settings
//! (header read timeout against slowloris, header size and count bounds) and graceful
//! shutdown.
//!
//! Each connection is one task that runs hyper's HTTP/1 state machine with the handler
//! inline: a request costs no task hop beyond its connection's.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;

use crate::app::App;
use crate::backend::Backend;
use crate::client_gone::ClientSocket;
use crate::limits;

/// How many connection attempts may wait in the kernel's queue.
const LISTEN_BACKLOG: u32 = 1024;

/// A listening socket with `SO_REUSEADDR`.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `app` on `listeners` until `shutdown` resolves, then stops accepting, ends open
/// watches, lets in-flight requests finish for up to [`limits::SHUTDOWN_GRACE`] and returns.
pub async fn serve<B: Backend>(
    app: Arc<App<B>>,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(app, listeners, shutdown, ServeOptions::default()).await
}

/// Connection-level bounds; the defaults are [`limits`]'s, tests shrink them.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    pub connections_max: usize,
    pub header_read_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            connections_max: limits::CONNECTIONS_MAX,
            header_read_timeout: limits::HEADER_READ_TIMEOUT,
        }
    }
}

/// [`serve`] with explicit connection bounds.
pub async fn serve_with<B: Backend>(
    app: Arc<App<B>>,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) {
    let connections_max = options.connections_max;
    let connections = Arc::new(Semaphore::new(connections_max));
    let (stop, _) = tokio::sync::watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_header_size(limits::HEADER_SECTION_BYTES_MAX)
        // hyper's default bound is limits::HEADERS_MAX; setting it, even to the same
        // number, makes hyper fill a header array per request.
        .keep_alive(true);
    let builder = Arc::new(builder);

    let mut accept_loops = tokio::task::JoinSet::new();
    for listener in listeners {
        let app = Arc::clone(&app);
        let connections = Arc::clone(&connections);
        let stop = stop.subscribe();
        let builder = Arc::clone(&builder);
        accept_loops.spawn(accept_loop(app, listener, connections, stop, builder));
    }

    shutdown.await;
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    accept_loops.abort_all();
    app.begin_shutdown();
    stop.send_replace(true);
    // Every connection holds a permit until it closes: having them all back means idle.
    let all = u32::try_from(connections_max).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits::SHUTDOWN_GRACE, connections.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            "some connections were still busy after {:?}; dropping them",
            limits::SHUTDOWN_GRACE
        );
    }
}

async fn accept_loop<B: Backend>(
    app: Arc<App<B>>,
    listener: TcpListener,
    connections: Arc<Semaphore>,
    stop: tokio::sync::watch::Receiver<bool>,
    builder: Arc<http1::Builder>,
) {
    loop {
        // At the bound, stop accepting: new clients wait in the backlog, nobody fails.
        let Ok(permit) = Arc::clone(&connections).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let mut stop = stop.clone();
        let builder = Arc::clone(&builder);
        let socket = ClientSocket(stream.as_raw_fd());
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let app = Arc::clone(&app);
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(socket);
                async move { Ok::<_, Infallible>(app.handle_from(peer.ip(), request).await) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}
