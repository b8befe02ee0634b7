//! The node-wide budget of request-body bytes held in memory at once.
//!
//! Each body limit bounds one request, and the connection bound bounds how many requests
//! there are, but their product is tens of GB: 4,096 clients that each send most of a 17 MiB
//! `/v1` body and then stall hold it all for the body read time. So a request reserves the
//! bytes it is about to buffer (its `Content-Length`, or a chunked body's size so far) from
//! one budget before buffering them; when the budget can't cover them it is answered 503 with
//! `Retry-After` at once and changes nothing.
//!
//! Bodies up to [`limits::BODY_BUDGET_EXEMPT_BYTES`] don't take from the budget, so ordinary
//! requests never wait on big uploads: at most `CONNECTIONS_MAX` of them, 256 MiB in all.
//!
//! A reservation is a guard: whichever way the request ends (answered, refused, timed out, or
//! its future dropped because the client went away) the bytes go back on drop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::limits;

/// The budget; one per server, shared by `/v2` and `/v1`.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    reserved_bytes: AtomicUsize,
    bytes_max: usize,
}

/// Bytes taken from a [`BodyBudget`] for one request body, given back on drop.
#[derive(Debug)]
pub(crate) struct BodyReservation {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl BodyBudget {
    pub(crate) fn new(bytes_max: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            reserved_bytes: AtomicUsize::new(0),
            bytes_max,
        })
    }

    /// The budget's size.
    pub(crate) fn bytes_max(&self) -> usize {
        self.bytes_max
    }

    /// Bytes reserved right now, across requests.
    pub(crate) fn reserved_bytes(&self) -> usize {
        self.reserved_bytes.load(Ordering::SeqCst)
    }

    /// An empty reservation, to [`BodyReservation::cover`] as the body arrives.
    pub(crate) fn reservation(self: &Arc<Self>) -> BodyReservation {
        BodyReservation {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    fn take(&self, bytes: usize) -> bool {
        let mut current = self.reserved_bytes.load(Ordering::SeqCst);
        loop {
            let Some(next) = current
                .checked_add(bytes)
                .filter(|next| *next <= self.bytes_max)
            else {
                return false;
            };
            match self.reserved_bytes.compare_exchange(
                current,
                next,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

impl BodyReservation {
    /// Makes the reservation cover a body of `body_bytes` (a no-op if it already does, or if
    /// the body is small enough to be exempt). `false` when the budget can't: the caller
    /// refuses the request; what was reserved before stays until the guard drops.
    pub(crate) fn cover(&mut self, body_bytes: usize) -> bool {
        if body_bytes <= limits::BODY_BUDGET_EXEMPT_BYTES || body_bytes <= self.bytes {
            return true;
        }
        if !self.budget.take(body_bytes - self.bytes) {
            return false;
        }
        self.bytes = body_bytes;
        true
    }
}

impl Drop for BodyReservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget
                .reserved_bytes
                .fetch_sub(self.bytes, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn small_bodies_take_nothing_from_the_budget() {
        let budget = BodyBudget::new(MIB);
        let mut reservation = budget.reservation();
        assert!(reservation.cover(limits::BODY_BUDGET_EXEMPT_BYTES));
        assert_eq!(budget.reserved_bytes(), 0);
    }

    #[test]
    fn reservations_grow_up_to_the_budget_and_are_given_back_on_drop() {
        let budget = BodyBudget::new(3 * MIB);
        let mut first = budget.reservation();
        assert!(first.cover(MIB));
        assert!(first.cover(2 * MIB), "a chunked body grows its reservation");
        assert!(first.cover(MIB), "never shrinks");
        assert_eq!(budget.reserved_bytes(), 2 * MIB);
        let mut second = budget.reservation();
        assert!(!second.cover(2 * MIB), "over the budget");
        assert_eq!(
            budget.reserved_bytes(),
            2 * MIB,
            "a refused reservation takes nothing"
        );
        assert!(second.cover(MIB));
        drop(first);
        assert_eq!(budget.reserved_bytes(), MIB);
        drop(second);
        assert_eq!(budget.reserved_bytes(), 0);
    }
}
