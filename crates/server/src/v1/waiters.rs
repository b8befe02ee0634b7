//! Long-polling lease requests, in a FIFO per queue, and bounded waiter counts.
//!
//! Arrival order: waiters of a queue stand in a line ordered by arrival. Only the first
//! `n` may propose a lease, where `n` is how many leases the local state says can succeed
//! now (queued jobs, free concurrency, rate tokens), so a later arrival never takes the job
//! an earlier one was waiting for, and an applied entry costs one state read per queue
//! with waiters rather than a proposal per waiter.
//!
//! Who watches: only the head of a line wakes on every applied entry and on rate-token
//! timers; when it sees capacity for `n` leases it wakes the next `n − 1` waiters. When
//! the head leaves, the new head is woken to take over. A waiter is woken through its own
//! [`Notify`], whose stored permit means a wake-up is never lost between checks.
//!
//! Cancel-safety: a [`Place`] leaves the line in `Drop`, so a client that disconnects (the
//! handler future is dropped) leaves nothing behind.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::limits::LEASE_WAITERS_MAX;

#[derive(Default)]
pub(crate) struct LeaseWaiters {
    /// Lines by queue name; a line is removed when its last waiter leaves, so the map holds
    /// at most one entry per waiting request. A std mutex: held for a few steps, never
    /// across an await.
    lines: Mutex<HashMap<String, VecDeque<Entry>>>,
    next_seq: AtomicU64,
    /// Waiters on all lines, for the bound and the cheap "anyone waiting?" check.
    count: AtomicUsize,
}

struct Entry {
    /// Arrival order: sequence numbers increase along a line.
    seq: u64,
    wake: Arc<Notify>,
}

impl LeaseWaiters {
    fn lines(&self) -> MutexGuard<'_, HashMap<String, VecDeque<Entry>>> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether lease requests are waiting on `queue` (a new request then lines up behind them).
    pub(crate) fn has_waiters(&self, queue: &str) -> bool {
        // The common case, nobody waiting anywhere, takes no lock.
        self.count.load(Ordering::SeqCst) > 0 && self.lines().contains_key(queue)
    }

    /// Waiters on all queues.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Stands at the end of `queue`'s line; `None` when [`LEASE_WAITERS_MAX`] already wait.
    pub(crate) fn join(&self, queue: &str) -> Option<Place<'_>> {
        let mut lines = self.lines();
        if self.count.load(Ordering::SeqCst) >= LEASE_WAITERS_MAX {
            return None;
        }
        self.count.fetch_add(1, Ordering::SeqCst);
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let wake = Arc::new(Notify::new());
        lines.entry(queue.to_owned()).or_default().push_back(Entry { seq, wake: Arc::clone(&wake) });
        Some(Place { waiters: self, queue: queue.to_owned(), seq, wake })
    }
}

/// One waiter's place in its queue's line; leaving (drop) hands the watch to the next.
pub(crate) struct Place<'a> {
    waiters: &'a LeaseWaiters,
    queue: String,
    seq: u64,
    wake: Arc<Notify>,
}

impl Place<'_> {
    /// How many waiters are ahead (0: this one is the head).
    pub(crate) fn position(&self) -> usize {
        let lines = self.waiters.lines();
        let line = lines.get(&self.queue).expect("a place's line exists while it is in it");
        line.binary_search_by_key(&self.seq, |entry| entry.seq).expect("a place is in its line")
    }

    /// Wakes the waiters at positions `1..count` (the head saw room for `count` leases).
    pub(crate) fn wake_followers(&self, count: usize) {
        let lines = self.waiters.lines();
        if let Some(line) = lines.get(&self.queue) {
            for entry in line.iter().skip(1).take(count.saturating_sub(1)) {
                entry.wake.notify_one();
            }
        }
    }

    /// Resolves when another waiter wakes this one (it may have become the head).
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut lines = self.waiters.lines();
        if let Some(line) = lines.get_mut(&self.queue) {
            if let Ok(position) = line.binary_search_by_key(&self.seq, |entry| entry.seq) {
                line.remove(position);
                if position == 0 {
                    if let Some(head) = line.front() {
                        head.wake.notify_one();
                    }
                }
            }
            if line.is_empty() {
                lines.remove(&self.queue);
            }
        }
        self.waiters.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A bounded count of things in progress (requests waiting for a result), each held by a
/// [`Slot`] that gives its place back on drop.
pub(crate) struct Slots {
    used: Arc<AtomicUsize>,
    max: usize,
}

impl Slots {
    pub(crate) fn new(max: usize) -> Slots {
        Slots { used: Arc::new(AtomicUsize::new(0)), max }
    }

    pub(crate) fn acquire(&self) -> Option<Slot> {
        let mut current = self.used.load(Ordering::SeqCst);
        loop {
            if current >= self.max {
                return None;
            }
            match self.used.compare_exchange(current, current + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(Slot { used: Arc::clone(&self.used) }),
                Err(actual) => current = actual,
            }
        }
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }
}

pub(crate) struct Slot {
    used: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.used.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_line_up_in_arrival_order_and_leave_cleanly() {
        let waiters = LeaseWaiters::default();
        let first = waiters.join("q").expect("room");
        let second = waiters.join("q").expect("room");
        let other = waiters.join("r").expect("room");
        assert_eq!((first.position(), second.position(), other.position()), (0, 1, 0));
        assert!(waiters.has_waiters("q"));
        drop(first);
        assert_eq!(second.position(), 0, "the next in line becomes the head");
        drop(second);
        assert!(!waiters.has_waiters("q"), "an empty line is removed");
        drop(other);
        assert_eq!(waiters.count(), 0);
        assert!(waiters.lines().is_empty());
    }

    #[tokio::test]
    async fn a_leaving_head_wakes_the_next_waiter() {
        let waiters = LeaseWaiters::default();
        let head = waiters.join("q").expect("room");
        let next = waiters.join("q").expect("room");
        drop(head);
        tokio::time::timeout(std::time::Duration::from_secs(5), next.woken()).await.expect("woken");
    }

    #[test]
    fn slots_are_bounded_and_given_back() {
        let slots = Slots::new(1);
        let held = slots.acquire().expect("room");
        assert!(slots.acquire().is_none());
        drop(held);
        assert_eq!(slots.used(), 0);
        assert!(slots.acquire().is_some());
    }
}
