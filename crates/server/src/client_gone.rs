//! Noticing that the client of a waiting request went away.
//!
//! hyper notices a closed connection while a request is handled only by reading from it,
//! and it stops reading once the request is read unless the buffered bytes are used up: a
//! client that sent anything after its request (a stray CRLF, a pipelined request, the rest
//! of a body) and then closed was never noticed. Its long poll stayed until it was answered:
//! a watch on a key nobody writes held its watcher slot, its socket and its connection for
//! good (2,048 such watches and no client could watch any more), and a lease that waited
//! for a job leased the job to a client that was gone.
//!
//! So a request that may wait ([`may_wait`]) and is still unanswered after
//! [`QUIET_BEFORE_WATCHING`] also waits, on a duplicate of its connection's socket, for the
//! peer's end of the stream (`EPOLLRDHUP`) or an error, and is dropped then, as hyper drops
//! a request whose connection it saw close (every waiting path is cancel-safe for that); a
//! `/v2/keys` watch's body does the same ([`gone`]) and cuts the connection off.
//! A client that only shut down its sending side is gone too for a waiting request, as Go's
//! server treats it (etcd ends such a watch); a request that does not wait is answered
//! (hyper's `half_close`, set in serve.rs), as etcd answers it.

use std::future::Future;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The socket of the connection a request came on, put into the request's extensions by
/// the accept loop. Valid while the request is handled: the connection owns the socket and
/// outlives its requests.
#[derive(Clone, Copy, Debug)]
pub struct ClientSocket(pub RawFd);

/// Requests answered within this never set up the watch (most requests).
const QUIET_BEFORE_WATCHING: Duration = Duration::from_millis(50);

/// The status a request dropped for its gone client is counted with (nginx's "client closed
/// request"); nobody reads the answer.
pub(crate) const CLIENT_GONE_STATUS: u16 = 499;

/// Whether `request` may wait before its answer's headers: a `/v1` call with `wait` (a
/// lease may wait without it being in the query: its body says). A `/v2/keys` watch answers
/// its headers at once and waits in its body, which watches its client itself ([`gone`]).
pub(crate) fn may_wait(request: &Request<Body>) -> bool {
    let path = request.uri().path();
    let query = request.uri().query().unwrap_or_default();
    path.starts_with("/v1/") && (query.contains("wait=") || path.ends_with("/lease"))
}

/// Runs `handling` to its answer, or until its client is gone (`None` then).
pub(crate) async fn unless_client_gone<T>(
    socket: Option<ClientSocket>,
    handling: impl Future<Output = T>,
) -> Option<T> {
    let Some(ClientSocket(fd)) = socket else {
        return Some(handling.await);
    };
    tokio::pin!(handling);
    if let Ok(answer) = tokio::time::timeout(QUIET_BEFORE_WATCHING, &mut handling).await {
        return Some(answer);
    }
    tokio::select! {
        answer = &mut handling => Some(answer),
        () = peer_gone(fd) => None,
    }
}

/// Resolves when the client on `socket` is gone; never, for a request that came on no
/// socket (handled in-process) or a socket that cannot be watched. For a body that waits
/// (a `/v2/keys` watch answers its headers at once and its event later).
pub(crate) fn gone(socket: Option<ClientSocket>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    match socket {
        Some(ClientSocket(fd)) => Box::pin(peer_gone(fd)),
        None => Box::pin(std::future::pending()),
    }
}

/// Resolves when the peer of socket `fd` closed its end (or the socket failed); never, if
/// the socket cannot be watched.
async fn peer_gone(fd: RawFd) {
    // SAFETY: `fd` is the socket of the connection this request is handled on, open for as
    // long as the request is (see `ClientSocket`); it is only duplicated here.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let watched: Option<AsyncFd<OwnedFd>> = borrowed.try_clone_to_owned().ok().and_then(|duplicate| {
        // SAFETY: the `OwnedFd` is a descriptor of our own, open until the `AsyncFd` (which
        // owns it) is dropped, and always the same one.
        unsafe { AsyncFd::register_with_interest(duplicate, Interest::READABLE) }.ok()
    });
    let Some(watched) = watched else {
        return std::future::pending().await;
    };
    loop {
        let Ok(mut guard) = watched.readable().await else {
            return;
        };
        let ready = guard.ready();
        if ready.is_read_closed() || ready.is_error() {
            return;
        }
        // Bytes hyper has not read yet (a pipelined request): not an end. The next change
        // (more bytes, or the end) wakes this again.
        guard.clear_ready();
    }
}
