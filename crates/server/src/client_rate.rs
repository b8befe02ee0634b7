//! `--client-rate-limit`: each client address may send so many requests per second to this
//! member, with a burst of one second's worth; over it a request is answered 429 with
//! `Retry-After` and not handled at all. A token bucket per client IP address.
//!
//! Per member, not cluster-wide: a client that spreads its requests over three members may
//! send three times the rate. `/health`, `/metrics` and the dashboard's files (`/ui`) are not
//! counted (probes and scrapers must see a member that is busy refusing a client).
//!
//! The table of buckets is bounded ([`BUCKETS_MAX`]): when it is full, the buckets that
//! refilled (their clients sent nothing for a second or more) are dropped; if every one of
//! them is still in use, a new client is admitted untracked rather than refused for others'
//! traffic.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Client addresses tracked at once.
pub const BUCKETS_MAX: usize = 65_536;

/// Requests per second per client address, and the buckets.
#[derive(Debug)]
pub struct ClientRate {
    per_second: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// The bucket as of `now`, refilled at `rate` per second up to `burst`.
    fn refilled(self, now: Instant, rate: f64, burst: f64) -> Bucket {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        Bucket { tokens: (self.tokens + elapsed * rate).min(burst), at: now.max(self.at) }
    }
}

impl ClientRate {
    /// `per_second` ≥ 1.
    pub fn new(per_second: u32) -> ClientRate {
        ClientRate { per_second: per_second.max(1), buckets: Mutex::new(HashMap::new()) }
    }

    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Takes one request from `client`'s bucket, or says how long until it may send again.
    pub fn admit(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.per_second);
        let burst = rate;
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= BUCKETS_MAX && !buckets.contains_key(&client) {
            buckets.retain(|_, bucket| bucket.refilled(now, rate, burst).tokens < burst);
            if buckets.len() >= BUCKETS_MAX {
                return Ok(());
            }
        }
        let fresh = Bucket { tokens: burst, at: now };
        let bucket = buckets.entry(client).or_insert(fresh);
        *bucket = bucket.refilled(now, rate, burst);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn a_client_gets_a_burst_of_one_seconds_worth_then_the_rate() {
        let limit = ClientRate::new(4);
        let start = Instant::now();
        for _ in 0..4 {
            assert_eq!(limit.admit(ip(1), start), Ok(()));
        }
        let wait = limit.admit(ip(1), start).expect_err("over the burst");
        assert_eq!(wait, Duration::from_millis(250));
        assert_eq!(limit.admit(ip(1), start + Duration::from_millis(249)).map_err(|_| ()), Err(()));
        assert_eq!(limit.admit(ip(1), start + Duration::from_millis(250)), Ok(()));
        // Refilled to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        for _ in 0..4 {
            assert_eq!(limit.admit(ip(1), later), Ok(()));
        }
        assert!(limit.admit(ip(1), later).is_err());
    }

    #[test]
    fn clients_are_counted_apart() {
        let limit = ClientRate::new(1);
        let now = Instant::now();
        assert_eq!(limit.admit(ip(1), now), Ok(()));
        assert!(limit.admit(ip(1), now).is_err());
        assert_eq!(limit.admit(ip(2), now), Ok(()));
    }

    #[test]
    fn a_full_table_drops_idle_clients_and_never_refuses_a_new_one_for_others() {
        let limit = ClientRate::new(1);
        let start = Instant::now();
        let client = |n: usize| IpAddr::V6(std::net::Ipv6Addr::from(n as u128 + 1));
        for n in 0..BUCKETS_MAX {
            assert_eq!(limit.admit(client(n), start), Ok(()));
        }
        // Every bucket is empty (in use): a new client passes untracked.
        assert_eq!(limit.admit(client(BUCKETS_MAX), start), Ok(()));
        assert_eq!(limit.admit(client(BUCKETS_MAX), start), Ok(()));
        // A second later all refilled: they are dropped and the new client is tracked.
        let later = start + Duration::from_secs(1);
        assert_eq!(limit.admit(client(BUCKETS_MAX), later), Ok(()));
        assert!(limit.admit(client(BUCKETS_MAX), later).is_err());
        assert_eq!(limit.buckets.lock().expect("lock").len(), 1);
    }
}
