//! Long-poll watches (`GET /v2/keys/..?wait=true`).
//!
//! A watch answers its headers at once (etcd flushes them before any event) and streams the
//! body: one event, or one line per event with `stream=true`. Between events it sleeps on
//! the node's applied-index channel and rescans the store's history only when the etcd index
//! moved past what it already scanned. Everything a watch holds lives in its body stream, so
//! a client that disconnects drops the stream and, with it, the [`WatcherGuard`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{HeaderValue, CONTENT_TYPE};
use axum::http::Response;
use bytes::Bytes;
use rota_core::v2::{render_json, WatchLookup};

use crate::app::App;
use crate::backend::{Applied, Backend};
use crate::limits;
use crate::respond::{self, APPLICATION_JSON, X_ETCD_INDEX, X_RAFT_INDEX, X_RAFT_TERM};

/// One slot of the bounded watcher count; the slot is given back on drop, whichever way the
/// watch ends (event sent, client gone, shutdown).
pub struct WatcherGuard {
    watchers: Arc<AtomicUsize>,
}

impl WatcherGuard {
    pub fn acquire(watchers: &Arc<AtomicUsize>, watchers_max: usize) -> Option<WatcherGuard> {
        let mut current = watchers.load(Ordering::SeqCst);
        loop {
            if current >= watchers_max {
                return None;
            }
            match watchers.compare_exchange(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    return Some(WatcherGuard {
                        watchers: Arc::clone(watchers),
                    })
                }
                Err(actual) => current = actual,
            }
        }
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

struct WatchState<B: Backend> {
    app: Arc<App<B>>,
    key: String,
    recursive: bool,
    stream: bool,
    /// The next event index this watch may report.
    since_index: u64,
    /// The lookup made before the headers were sent, answered first.
    first: Option<WatchLookup>,
    /// Whether a node is at `key` as of the last lookup or event: the removal of a directory
    /// around `key` wakes this watch only if one is (etcd's watcher hub).
    key_exists: bool,
    applied: tokio::sync::watch::Receiver<Applied>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Resolves when the client is gone (see `client_gone`): the watch ends then, not at
    /// the next event, which may never come.
    client_gone: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    done: bool,
    _guard: WatcherGuard,
}

impl<B: Backend> App<B> {
    pub(crate) async fn watch(
        self: &Arc<Self>,
        key: String,
        recursive: bool,
        stream: bool,
        wait_index: u64,
        client: Option<crate::client_gone::ClientSocket>,
    ) -> Response<Body> {
        let Some(guard) = WatcherGuard::acquire(&self.watchers, self.watchers_max) else {
            let index = self.backend.read(|state| state.v2.index());
            let cause = format!("limit {} concurrent watches", self.watchers_max);
            let mut response = respond::rota_error(
                503,
                limits::TOO_MANY_WATCHERS_CODE,
                "Too many watchers",
                &cause,
                index,
            );
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static("1"),
            );
            return response;
        };
        // Subscribe before the first lookup, so an entry applied in between wakes us.
        let mut applied = self.backend.subscribe();
        let (start_index, since_index, lookup, key_exists) = self.backend.read(|state| {
            let start_index = state.v2.index();
            // etcd: waitIndex 0 (or absent) means "from the next index".
            let since_index = if wait_index == 0 {
                start_index + 1
            } else {
                wait_index
            };
            (
                start_index,
                since_index,
                state.v2.watch(&key, recursive, since_index, false),
                state.v2.exists(&key),
            )
        });
        let first = match lookup {
            Ok(first) => first,
            Err(error) => return respond::v2_error(&error),
        };
        let position = *applied.borrow_and_update();
        let state = WatchState {
            app: Arc::clone(self),
            key,
            recursive,
            stream,
            since_index,
            first: Some(first),
            key_exists,
            applied,
            shutdown: self.shutdown.subscribe(),
            client_gone: crate::client_gone::gone(client),
            done: false,
            _guard: guard,
        };
        let body = Body::from_stream(futures::stream::unfold(state, next_event));
        let mut response = respond::with_status(200, body);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, APPLICATION_JSON);
        headers.insert(X_ETCD_INDEX.clone(), HeaderValue::from(start_index));
        headers.insert(X_RAFT_INDEX.clone(), HeaderValue::from(position.raft_index));
        headers.insert(X_RAFT_TERM.clone(), HeaderValue::from(position.raft_term));
        response
    }
}

/// What ends a watch when its member stops serving (shutdown, removal, a lost data dir): the
/// connection is cut without the body's last chunk, as etcd's is. Clients take that for a
/// failed connection and watch again at another member (python-etcd's `allow_reconnect`,
/// `EtcdConnectionFailed`); a complete empty body would read as a bad answer instead.
fn cut_off() -> std::io::Error {
    std::io::Error::other("the member stopped serving; the watch is cut off")
}

/// The next chunk of a watch body, an error to cut the connection off, or `None` to end it.
async fn next_event<B: Backend>(
    mut watch: WatchState<B>,
) -> Option<(Result<Bytes, std::io::Error>, WatchState<B>)> {
    if watch.done {
        return None;
    }
    loop {
        let lookup = match watch.first.take() {
            Some(first) => Ok(first),
            None => {
                let (key, recursive, since_index, key_exists) =
                    (&watch.key, watch.recursive, watch.since_index, watch.key_exists);
                let (lookup, exists_now) = watch.app.backend.read(|state| {
                    let lookup = state.v2.watch_live(key, recursive, since_index, key_exists);
                    // Nothing matched up to now: whether the node is there is as it is now.
                    let pending = matches!(lookup, Ok(WatchLookup::Pending { .. }));
                    let exists_now = pending.then(|| state.v2.exists(key));
                    (lookup, exists_now)
                });
                if let Some(exists_now) = exists_now {
                    watch.key_exists = exists_now;
                }
                lookup
            }
        };
        match lookup {
            Ok(WatchLookup::Found(event)) => {
                watch.since_index = event.etcd_index + 1;
                watch.key_exists = rota_core::v2::Store::exists_after(&event, &watch.key);
                watch.done = !watch.stream;
                return Some((Ok(Bytes::from(render_json(&event))), watch));
            }
            Ok(WatchLookup::Pending { index }) => {
                // Nothing up to `index` matched: rescan only what comes after it.
                watch.since_index = watch.since_index.max(index + 1);
                loop {
                    tokio::select! {
                        changed = watch.applied.changed() => {
                            if changed.is_err() {
                                // The node is gone.
                                watch.done = true;
                                return Some((Err(cut_off()), watch));
                            }
                            if watch.applied.borrow_and_update().etcd_index > index {
                                break;
                            }
                        }
                        () = async { let _ = watch.shutdown.wait_for(|stopping| *stopping).await; } => {
                            watch.done = true;
                            return Some((Err(cut_off()), watch));
                        }
                        () = watch.client_gone.as_mut() => {
                            watch.done = true;
                            return Some((Err(std::io::Error::other("the client is gone")), watch));
                        }
                    }
                }
            }
            Err(error) => {
                // A live watch that fell behind the history's slack, whose first event may
                // have been dropped (the core goes on where its key proves none was). A
                // stream ends, as etcd ends a stream watcher that can't keep up. A one-event
                // watch is cut off: etcd never ends one without its event, and an empty
                // answer is a bad answer to clients (python-etcd: "not valid JSON"), while a
                // broken connection makes them watch again (with a `waitIndex`: 401, re-list).
                tracing::debug!(code = error.code, stream = watch.stream, "a watch fell behind the event history");
                watch.done = true;
                if watch.stream {
                    return None;
                }
                return Some((Err(std::io::Error::other("the watch fell behind the event history")), watch));
            }
        }
    }
}
