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
        .keep_alive(true)
        // A client that shut down its sending side after its request (`nc -N`, some proxies)
        // still gets its answer, as from Go's server (etcd): without this, hyper dropped
        // the request at the end of the stream, although a write was applied. Requests that
        // wait (long polls, watches) still end when their client is gone (client_gone.rs).
        .half_close(true);
    let builder = Arc::new(builder);

    let shed = Arc::new(tokio::sync::watch::Sender::new(0u64));
    let mut accept_loops = tokio::task::JoinSet::new();
    for listener in listeners {
        let app = Arc::clone(&app);
        let connections = Arc::clone(&connections);
        let stop = stop.subscribe();
        let builder = Arc::clone(&builder);
        let bound = Bound { connections, connections_max, shed: Arc::clone(&shed), last_warned: None };
        let header_read_timeout = options.header_read_timeout;
        accept_loops.spawn(accept_loop(app, listener, bound, stop, builder, header_read_timeout));
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

/// The connection bound of one server: a permit per open connection, and the signal that
/// asks the idle ones to close when none is left.
struct Bound {
    connections: Arc<Semaphore>,
    connections_max: usize,
    /// Bumped when the bound is reached: every connection then closes once it is idle
    /// (at once if it is idle now, or still reading a request's head: a slowloris).
    shed: Arc<tokio::sync::watch::Sender<u64>>,
    /// When the bound was last logged (a flood would log it on every accept).
    last_warned: Option<std::time::Instant>,
}

/// The bound is logged at most this often.
const BOUND_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// At the bound, idle connections are asked to close at most this often.
const SHED_INTERVAL: Duration = Duration::from_secs(1);

/// At the bound, a connection that has not carried a request yet is dropped only once it
/// has been open this long: time enough for a client to send its first request.
const UNUSED_CONNECTION_GRACE: Duration = Duration::from_secs(1);

impl Bound {
    /// A permit for a new connection. At the bound, it waits (later clients wait in the
    /// backlog), and idle connections (a client's pool of keep-alive connections, or thousands held
    /// open by someone to keep others out) are closed so that they need not wait for the
    /// 120 s idle timeout: a flood of idle sockets no longer takes the node off the
    /// network (etcd, which has no bound, answered 5,000 of them at once).
    async fn permit(&mut self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() {
            return Some(permit);
        }
        if self.last_warned.is_none_or(|at| at.elapsed() >= BOUND_WARNING_INTERVAL) {
            self.last_warned = Some(std::time::Instant::now());
            tracing::warn!(
                connections = self.connections_max,
                "at the connection bound: closing idle connections (new ones wait until one closes)"
            );
        }
        let waiting = Arc::clone(&self.connections).acquire_owned();
        tokio::pin!(waiting);
        loop {
            self.shed.send_modify(|round| *round += 1);
            tokio::select! {
                permit = &mut waiting => return permit.ok(),
                () = tokio::time::sleep(SHED_INTERVAL) => {}
            }
        }
    }
}

async fn accept_loop<B: Backend>(
    app: Arc<App<B>>,
    listener: TcpListener,
    mut bound: Bound,
    stop: tokio::sync::watch::Receiver<bool>,
    builder: Arc<http1::Builder>,
    header_read_timeout: Duration,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Taken after the accept, so that idle connections are closed only when a new
        // client is waiting; meanwhile the next ones wait in the backlog.
        let Some(permit) = bound.permit().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let mut stop = stop.clone();
        let builder = Arc::clone(&builder);
        let socket = ClientSocket(stream.as_raw_fd());
        let mut shed = bound.shed.subscribe();
        let accepted_at = tokio::time::Instant::now();
        tokio::spawn(async move {
            let _permit = permit;
            // An etcd v3 client opens with the HTTP/2 preface: see `v3_refusal`. Until the
            // first bytes come, the connection is closed as hyper would close it (the
            // header read timeout, shutdown, or shedding at the bound; see below).
            let opening = {
                let sniff = crate::v3_refusal::sniff(&stream);
                tokio::pin!(sniff);
                let deadline = tokio::time::sleep_until(accepted_at + header_read_timeout);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        opening = &mut sniff => break opening,
                        () = &mut deadline => return,
                        () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => return,
                        changed = shed.changed() => {
                            if changed.is_err() || accepted_at.elapsed() >= UNUSED_CONNECTION_GRACE {
                                return;
                            }
                        }
                    }
                }
            };
            match opening {
                crate::v3_refusal::Opening::Other => {}
                crate::v3_refusal::Opening::Nothing => return,
                crate::v3_refusal::Opening::Http2 => {
                    return crate::v3_refusal::serve_http2(stream, stop).await;
                }
            }
            // Whether the client has sent a whole request yet (see the shedding below).
            let used = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let service_used = Arc::clone(&used);
            let body_wait = crate::body_wait::BodyWait::default();
            let service_body_wait = body_wait.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                service_used.store(true, std::sync::atomic::Ordering::Relaxed);
                let app = Arc::clone(&app);
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(socket);
                request.extensions_mut().insert(service_body_wait.clone());
                async move {
                    // Go's server, before any handler (etcd's 400): an HTTP/1.1 request must
                    // name its host.
                    if request.version() == axum::http::Version::HTTP_11
                        && !request.headers().contains_key(axum::http::header::HOST)
                    {
                        return Ok(crate::respond::go_server_refusal(400, "400 Bad Request: missing required Host header"));
                    }
                    Ok::<_, Infallible>(app.handle_from(peer.ip(), request).await)
                }
            });
            let stream = crate::write_stall::WriteStall::for_socket(stream, limits::WRITE_STALL_TIMEOUT, socket.0);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let mut shedding = false;
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    () = async { let _ = stop.wait_for(|stopping| *stopping).await; } => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                        break;
                    }
                    // At the bound: close once idle. A connection that has carried a request
                    // closes now if idle, else after the answer in progress (a watch goes on
                    // to its end). One that has carried none yet (nothing sent, or a head that
                    // never ends) is dropped (hyper's graceful shutdown would drop it too),
                    // but only once it has had time to send a request: a connection accepted
                    // a moment ago may hold a whole request not read yet (the accept that
                    // took the last permit asks the others to close), which would go
                    // unanswered. A young one is left for a later round.
                    // A request still waiting for its body (`body_wait`) has done nothing: if
                    // it has waited long, the connection is dropped; if the body is arriving
                    // right now, it is looked at again in the next round.
                    changed = shed.changed(), if !shedding => {
                        if changed.is_err() {
                            shedding = true;
                        } else if used.load(std::sync::atomic::Ordering::Relaxed) {
                            match body_wait.waiting_for() {
                                Some(waited) if waited >= UNUSED_CONNECTION_GRACE => break,
                                Some(_) => {}
                                None => {
                                    shedding = true;
                                    connection.as_mut().graceful_shutdown();
                                }
                            }
                        } else if accepted_at.elapsed() >= UNUSED_CONNECTION_GRACE {
                            break;
                        }
                    }
                }
            }
        });
    }
}
