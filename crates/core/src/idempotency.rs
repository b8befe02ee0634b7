//! The idempotency table: the first outcome of each keyed request, replayed on repeats.
//!
//! This is the Raft paper's client-session rule, bounded three ways: every record expires
//! (`idempotency_ttl_ms` after it was written, sooner for the calls of a lease's holder: see
//! [`State`](crate::State)), the table holds at most `idempotency_records_max` records and
//! about `idempotency_bytes_max` bytes of stored responses (a response carries job payloads
//! of up to 256 KiB), dropping the records that expire first when full. A dropped record
//! only means a late retry is no longer recognised; it never changes an answer already
//! given. Records dropped before their expiry are counted ([`IdempotencyTable::evicted`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::sharded::ShardedMap;
use crate::Response;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IdempotencyTable {
    /// Shared copy-on-write, as the state's other big tables: a snapshot takes the state
    /// while applying waits, and a deep copy of a full table (100,000 records, ~58 MB of
    /// stored answers) held writes for 150–680 ms at each snapshot (an audit's soak).
    records: ShardedMap<String, Record>,
    /// Sum of `Record::bytes`.
    bytes: usize,
    /// (expires_ms, key), to expire and evict in order.
    by_expiry: BTreeSet<(u64, String)>,
    /// Records dropped before their expiry because the table was full, since this process
    /// started (not part of the replicated state).
    #[serde(skip)]
    evicted: u64,
    /// How long the last record dropped before its expiry still had to live, in ms: under
    /// the lease calls' 10 minutes, eviction only shortens those; hours, and keyed submits
    /// lose their 24 h (not part of the replicated state).
    #[serde(skip)]
    evicted_remaining_ms: u64,
}

impl PartialEq for IdempotencyTable {
    fn eq(&self, other: &Self) -> bool {
        self.records == other.records && self.bytes == other.bytes && self.by_expiry == other.by_expiry
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    fingerprint: u64,
    response: Response,
    expires_ms: u64,
    /// Approximate memory of the record (its response's JSON size plus the key).
    bytes: usize,
}

/// The table's bounds (from [`crate::Config`]).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub records_max: usize,
    pub bytes_max: usize,
}

/// Fixed cost of a record beyond its response: map and index entries, the fingerprint.
const RECORD_OVERHEAD_BYTES: usize = 128;

fn approximate_bytes(key: &str, response: &Response) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Serializing plain data into a counter cannot fail; if it ever did, count nothing extra.
    let _ = serde_json::to_writer(&mut counter, response);
    counter.0 + key.len() * 2 + RECORD_OVERHEAD_BYTES
}

#[allow(clippy::large_enum_variant, reason = "returned once per keyed request and matched at once; a box would cost an allocation on every replay")]
pub enum IdempotencyOutcome {
    New,
    Replay(Response),
    Conflict,
}

impl IdempotencyTable {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn lookup(&self, key: &str, fingerprint: u64) -> IdempotencyOutcome {
        match self.records.get(key) {
            None => IdempotencyOutcome::New,
            Some(record) if record.fingerprint == fingerprint => {
                IdempotencyOutcome::Replay(record.response.clone())
            }
            Some(_) => IdempotencyOutcome::Conflict,
        }
    }

    /// Approximate bytes held by the stored responses.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records dropped before their expiry because the table was full, since this process
    /// started: late retries of those requests are applied again.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// How long the last record dropped before its expiry still had to live (ms).
    pub fn evicted_remaining_ms(&self) -> u64 {
        self.evicted_remaining_ms
    }

    /// Stores `response` under `key` until `expires_ms`, at `now_ms`.
    pub fn record(
        &mut self,
        key: String,
        fingerprint: u64,
        response: Response,
        expires_ms: u64,
        now_ms: u64,
        limits: Limits,
    ) {
        self.remove(&key);
        let bytes = approximate_bytes(&key, &response);
        while !self.records.is_empty()
            && (self.records.len() >= limits.records_max.max(1) || self.bytes + bytes > limits.bytes_max)
        {
            let Some((expires_ms, oldest)) = self.by_expiry.first().cloned() else { break };
            self.remove(&oldest);
            self.evicted += 1;
            self.evicted_remaining_ms = expires_ms.saturating_sub(now_ms);
        }
        self.by_expiry.insert((expires_ms, key.clone()));
        self.bytes += bytes;
        self.records.insert(key, Record { fingerprint, response, expires_ms, bytes });
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.records.remove(key) {
            self.by_expiry.remove(&(old.expires_ms, key.to_string()));
            self.bytes -= old.bytes;
        }
    }

    /// Drops every record whose expiry is at or before `now_ms`.
    pub fn expire_until(&mut self, now_ms: u64) {
        while let Some((expires_ms, _)) = self.by_expiry.first() {
            if *expires_ms > now_ms {
                break;
            }
            if let Some((_, key)) = self.by_expiry.first().cloned() {
                self.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(records_max: usize, bytes_max: usize) -> Limits {
        Limits { records_max, bytes_max }
    }

    #[test]
    fn repeat_with_same_fingerprint_replays_and_other_fingerprint_conflicts() {
        let mut table = IdempotencyTable::default();
        table.record("k".into(), 7, Response::Tick, 100, 0, limits(10, 1 << 20));
        assert!(matches!(table.lookup("k", 7), IdempotencyOutcome::Replay(Response::Tick)));
        assert!(matches!(table.lookup("k", 8), IdempotencyOutcome::Conflict));
        assert!(matches!(table.lookup("other", 7), IdempotencyOutcome::New));
    }

    #[test]
    fn records_expire_at_their_deadline() {
        let mut table = IdempotencyTable::default();
        table.record("a".into(), 1, Response::Tick, 100, 0, limits(10, 1 << 20));
        table.record("b".into(), 1, Response::Tick, 200, 0, limits(10, 1 << 20));
        table.expire_until(99);
        assert_eq!(table.len(), 2);
        table.expire_until(100);
        assert_eq!(table.len(), 1);
        assert!(matches!(table.lookup("a", 1), IdempotencyOutcome::New));
        table.expire_until(1000);
        assert!(table.is_empty());
        assert_eq!(table.bytes(), 0);
    }

    #[test]
    fn full_table_drops_the_record_that_expires_first() {
        let mut table = IdempotencyTable::default();
        table.record("late".into(), 1, Response::Tick, 300, 0, limits(2, 1 << 20));
        table.record("early".into(), 1, Response::Tick, 100, 0, limits(2, 1 << 20));
        table.record("new".into(), 1, Response::Tick, 200, 40, limits(2, 1 << 20));
        assert_eq!(table.len(), 2);
        assert_eq!((table.evicted(), table.evicted_remaining_ms()), (1, 60), "`early` had 60 ms left");
        assert!(matches!(table.lookup("early", 1), IdempotencyOutcome::New));
        assert!(matches!(table.lookup("late", 1), IdempotencyOutcome::Replay(_)));
    }

    #[test]
    fn byte_bound_evicts_until_the_new_record_fits() {
        let mut table = IdempotencyTable::default();
        let one = approximate_bytes("k0", &Response::Tick);
        for i in 0..10 {
            table.record(format!("k{i}"), 1, Response::Tick, 100 + i, 0, limits(1000, one * 3));
        }
        assert_eq!(table.len(), 3);
        assert!(table.bytes() <= one * 3);
        assert!(matches!(table.lookup("k9", 1), IdempotencyOutcome::Replay(_)));
        assert!(matches!(table.lookup("k0", 1), IdempotencyOutcome::New));
    }

    #[test]
    fn rerecording_a_key_replaces_it_without_leaking_bytes() {
        let mut table = IdempotencyTable::default();
        table.record("k".into(), 1, Response::Tick, 100, 0, limits(10, 1 << 20));
        let bytes = table.bytes();
        table.record("k".into(), 2, Response::Tick, 100, 0, limits(10, 1 << 20));
        assert_eq!(table.len(), 1);
        assert_eq!(table.bytes(), bytes);
        assert!(matches!(table.lookup("k", 2), IdempotencyOutcome::Replay(_)));
    }
}
