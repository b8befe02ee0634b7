//! Which connections are waiting for the rest of a request's body, and for how long: at
//! the connection bound, those that have waited long are closed (see `serve`).
//!
//! A client that sends a request's head and then only part of its body holds a connection
//! until the body read timeout (30 s). Thousands of them (an audit opened 9,600) took every
//! connection of the bound, and every other client waited until they timed out: shedding
//! closed only idle connections and let one with a request in progress finish it. A request
//! whose body has not all arrived has done nothing yet, so dropping it is safe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Shared by a connection and the requests it carries (in their extensions).
#[derive(Clone, Debug, Default)]
pub struct BodyWait(Arc<AtomicU64>);

/// Clears the mark when the body is read (or the read abandoned).
pub(crate) struct Reading(BodyWait);

impl Drop for Reading {
    fn drop(&mut self) {
        self.0 .0.store(0, Ordering::Relaxed);
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl BodyWait {
    /// Marks the connection as waiting for a body until the guard is dropped.
    fn start(self) -> Reading {
        // +1: zero means "not waiting".
        let since_epoch_ms = epoch().elapsed().as_millis() as u64 + 1;
        self.0.store(since_epoch_ms, Ordering::Relaxed);
        Reading(self)
    }

    /// How long the body read in progress has waited, if one is.
    pub fn waiting_for(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis((epoch().elapsed().as_millis() as u64 + 1).saturating_sub(since))),
        }
    }
}

/// Marks the request's connection (if it came from the accept loop) as waiting for the
/// request's body until the guard is dropped.
pub(crate) fn reading_body<B>(request: &axum::http::Request<B>) -> Option<Reading> {
    request.extensions().get::<BodyWait>().cloned().map(BodyWait::start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_lasts_as_long_as_its_guard() {
        let wait = BodyWait::default();
        assert_eq!(wait.waiting_for(), None);
        let reading = wait.clone().start();
        assert!(wait.waiting_for().is_some_and(|waited| waited < Duration::from_secs(5)));
        drop(reading);
        assert_eq!(wait.waiting_for(), None);
    }
}
